"""What ``fix`` would change, worked out from the folder as read and its validation report.

Every change is provable from the folder itself: an index is regenerated from the tensors the
shards really hold, a config dtype from the dtype every floating tensor is stored in, a
duplicate key is folded only when every copy holds the same value. The unsafe fixes (deleting,
renaming, editing token ids) are planned only when asked for. Nothing here writes.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..contents import FolderContents
from ..discovery import INDEX, SHARD_RE, WeightSet, parse_shard_name
from ..dtypes import CONFIG_DTYPE, FLOAT_DTYPES, TORCH_DTYPE
from ..findings import Finding
from ..jsonutil import JsonError
from ..report import Report
from ..tensors import FormatError, WeightFile
from .jsonedit import DifferingDuplicate, Document, dumps_like, read_document
from .results import Change

__all__ = ["INDEX_CODES", "Plan", "plan_fixes"]

INDEX_CODES = ("HFC301", "HFC302", "HFC303", "HFC306", "HFC307", "HFC406")
"""What a regenerated index clears (HFC406: its metadata and weight_map schema)."""
_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
_TOKEN_ID_RE = re.compile(r" has id (\d+); ")
_TURN_END_RE = re.compile(r" \(id (\d+)\), which is not among generation_config\.json's eos_token_id ")
_SHARD_NAME = {"safetensors": "model-{:05d}-of-{:05d}.safetensors", "bin": "pytorch_model-{:05d}-of-{:05d}.bin"}


@dataclass
class Plan:
    """The changes, in the order they are applied, and why findings are left alone."""

    headers: list[tuple[str, WeightFile, dict[str, str], tuple[str, ...]]] = field(default_factory=list)
    documents: dict[str, Document] = field(default_factory=dict)
    """JSON files edited in place (their value is the new content)."""
    created: dict[str, str] = field(default_factory=dict)
    """New JSON files (an index beside shards that had none): name -> text."""
    codes: dict[str, list[str]] = field(default_factory=dict)
    """JSON file -> the codes its edit clears."""
    notes: dict[str, list[str]] = field(default_factory=dict)
    """JSON file -> what its edit does, in words."""
    unsafe_files: set[str] = field(default_factory=set)
    links: list[tuple[str, str]] = field(default_factory=list)
    """Renames: (old name, new name); the new name is linked first, the old one deleted last."""
    deletions: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)
    """(file, why, codes)."""
    skipped: dict[tuple[str, str | None], str] = field(default_factory=dict)
    """(code, file) -> why a fixable finding is not fixed."""
    unsafe_available: set[tuple[str, str | None]] = field(default_factory=set)
    """(code, file) an unsafe fix would address (when unsafe fixes were not asked for)."""

    def note(self, name: str, codes: Iterable[str], what: str, unsafe: bool = False) -> None:
        self.codes.setdefault(name, [])
        self.codes[name].extend(c for c in codes if c not in self.codes[name])
        self.notes.setdefault(name, []).append(what)
        if unsafe:
            self.unsafe_files.add(name)

    def changes(self) -> list[Change]:
        """The plan as changes, in the order they are applied: headers, JSON files other than
        indexes, new names linked, indexes, then deletions (old names of renamed files last)."""
        out = [Change("header", name, codes, f"__metadata__ gets \"format\": \"pt\" ({_meta_words(meta)}); "
                      "the tensor bytes are copied unchanged and compared") for name, _wf, meta, codes in self.headers]
        indexes = [n for n in (*self.documents, *self.created) if n.endswith(".index.json")]
        for name, document in self.documents.items():
            if name not in indexes:
                out.append(self._rewrite(name, document))
        out.extend(Change("rename", old, (), f"renamed to the Hub's name {new}", unsafe=True, new_name=new)
                   for old, new in self.links)
        for name in indexes:
            if name in self.created:
                out.append(Change("create", name, tuple(self.codes.get(name, ())), "; ".join(self.notes.get(name, ())),
                                  unsafe=name in self.unsafe_files, new_text=self.created[name]))
            else:
                out.append(self._rewrite(name, self.documents[name]))
        out.extend(Change("delete", name, codes, why, unsafe=True) for name, why, codes in self.deletions)
        return [c for c in out if c.action != "rewrite" or c.old_text != c.new_text]

    def _rewrite(self, name: str, document: Document) -> Change:
        return Change("rewrite", name, tuple(self.codes.get(name, ())), "; ".join(self.notes.get(name, ())),
                      unsafe=name in self.unsafe_files, old_text=document.text, new_text=dumps_like(document))


def _meta_words(metadata: dict[str, str]) -> str:
    others = [k for k in metadata if k != "format"]
    return f"keeping {', '.join(others)}" if others else "no other metadata"


class _Planner:
    def __init__(self, contents: FolderContents, report: Report, unsafe: bool) -> None:
        self.contents = contents
        self.folder = contents.folder
        self.findings = report.findings
        self.unsafe = unsafe
        self.plan = Plan()
        self.unreadable: dict[str, str] = {}
        self.claimed_shards: set[str] = set()

    def having(self, code: str, file: str | None = None) -> list[Finding]:
        return [f for f in self.findings if f.code == code and (file is None or f.file == file)]

    def skip(self, code: str, file: str | None, why: str) -> None:
        self.plan.skipped.setdefault((code, file), why)

    def document(self, name: str) -> Document | None:
        """The JSON file being edited (read once, duplicate keys folded); None when it cannot be."""
        if name in self.plan.documents:
            return self.plan.documents[name]
        if name in self.unreadable:
            return None
        try:
            # Python reads Infinity in the files only it reads; tokenizer.json is read by serde, which does not.
            document = read_document(self.folder.path(name), name, allow_nonfinite=name != "tokenizer.json")
        except DifferingDuplicate as exc:
            self.unreadable[name] = f"{exc}: which one loaders should read is not provable from the folder"
            return None
        except (JsonError, FormatError) as exc:
            self.unreadable[name] = f"{name} cannot be read as JSON ({getattr(exc, 'message', exc)})"
            return None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.unreadable[name] = f"{name} cannot be read ({exc})"
            return None
        self.plan.documents[name] = document
        return document

    # --- safe -----------------------------------------------------------------------------------
    def duplicate_keys(self) -> None:
        for name, error in self.contents.json_errors.items():
            if getattr(error, "kind", None) != "duplicate_key":
                continue
            document = self.document(name)
            if document is None:
                self.skip("HFC401", name, self.unreadable[name])
                continue
            keys = ", ".join(repr(k) for k in dict.fromkeys(document.duplicates))
            self.plan.note(name, ("HFC401",), f"duplicate keys written once ({keys}; every copy held the same value)")

    def indexes(self) -> None:
        for weight_set in self.folder.weight_sets.values():
            if weight_set.single:
                continue
            if weight_set.index:
                self._regenerate(weight_set, weight_set.index)
            elif weight_set.shard_files:
                self._create_index(weight_set)

    def _shard_set(self, weight_set: WeightSet, names: Iterable[str]) -> tuple[list[str], str | None]:
        """The complete numbered set ``names`` belong to (each -i-of-N for one N, 1..N all on
        disk, each number once), or why there is none."""
        parsed = [parse_shard_name(n, weight_set.format) for n in names]
        if not parsed or any(p is None for p in parsed):
            return [], "its shard names are not numbered -i-of-N"
        totals = {p.total for p in parsed if p is not None}
        if len(totals) != 1:
            return [], f"its shards claim different totals ({', '.join(map(str, sorted(totals)))})"
        total = totals.pop()
        on_disk: dict[int, list[str]] = {}
        given = {p.name for p in parsed if p is not None}
        for name in weight_set.shard_files:
            p = parse_shard_name(name, weight_set.format)
            if p is not None and p.total == total:
                on_disk.setdefault(p.number, []).append(name)
        for number, names in on_disk.items():
            # Two names of one file (a rename a killed run linked but did not finish): the one given.
            if len(names) > 1 and self._one_file(names):
                on_disk[number] = sorted(names, key=lambda n: (n not in given, n))[:1]
        if sorted(on_disk) != list(range(1, total + 1)):
            missing = [n for n in range(1, total + 1) if n not in on_disk]
            return [], (f"shard {missing[0]} of {total} is not in the folder" if missing else
                        f"shard numbers outside 1..{total} are on disk")
        doubled = [(number, names) for number, names in on_disk.items() if len(names) > 1]
        if doubled:
            return [], f"{' and '.join(doubled[0][1])} both claim shard number {doubled[0][0]}"
        return [on_disk[n][0] for n in range(1, total + 1)], None

    def _one_file(self, names: list[str]) -> bool:
        """True when every name is a link to one and the same file (no symlink among them)."""
        try:
            stats = [os.lstat(self.folder.path(n)) for n in names]
        except OSError:
            return False
        return all(stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (stats[0].st_dev, stats[0].st_ino)
                   for st in stats)

    def _tensors_of(self, shards: list[str]) -> tuple[dict[str, str], int] | str:
        """tensor -> shard over ``shards`` and their total bytes, or why they cannot be indexed."""
        weight_map: dict[str, str] = {}
        total = 0
        for shard in shards:
            weight_file = self.contents.weights.get(shard)
            if weight_file is None:
                return f"{shard} could not be read, so the tensors it holds are unknown"
            for tensor in weight_file.tensors:
                if tensor in weight_map:
                    return (f"{tensor!r} is stored in {weight_map[tensor]} and {shard}: which copy is meant is not "
                            "provable")
                weight_map[tensor] = shard
            total += weight_file.storage_nbytes if weight_file.storages else weight_file.tensor_nbytes
        return dict(sorted(weight_map.items())), total

    def _regenerate(self, weight_set: WeightSet, name: str) -> None:
        index = self.contents.indexes.get(name)
        known = set(index.shard_names) if index is not None else set(weight_set.shard_files)
        codes = [c for c in INDEX_CODES if any(f.file == name or f.file in known for f in self.having(c))]
        error = self.contents.json_errors.get(name)
        if error is not None and getattr(error, "kind", "") != "duplicate_key":
            return
        document = self.document(name)
        if document is None:
            for code in codes:
                self.skip(code, name, self.unreadable.get(name, f"{name} cannot be read"))
            return
        value = document.value
        weight_map = value.get("weight_map")
        referenced: list[str] = []
        if isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values()):
            referenced = list(dict.fromkeys(weight_map.values()))
        missing = [s for s in referenced if not self.folder.has(s)]
        if missing:
            for code in (*codes, "HFC304"):
                self.skip(code, name, f"{name} names {missing[0]}, which is not in the folder: the tensors it should "
                          "hold are unknown (upload it)")
            return
        shards, why = self._shard_set(weight_set, referenced or weight_set.shard_files)
        if why is not None:
            if referenced and all(self.contents.weights.get(s) is not None for s in referenced):
                shards = sorted(referenced, key=lambda s: (parse_shard_name(s, weight_set.format) is None, s))
            else:
                for code in codes:
                    self.skip(code, name, f"the shards of {name} are not one complete set: {why}")
                return
        found = self._tensors_of(shards)
        if isinstance(found, str):
            for code in codes:
                self.skip(code, name, found)
            return
        new_map, total = found
        metadata = value.get("metadata")
        metadata = dict(metadata) if isinstance(metadata, dict) else {}
        old_total = metadata.get("total_size")
        if self.having("HFC306", name) or isinstance(old_total, bool) or not isinstance(old_total, (int, float)):
            metadata["total_size"] = total
        new_value = {**value, "metadata": metadata, "weight_map": new_map}
        self.claimed_shards.update(shards)
        if new_value == value and not document.duplicates:
            return
        words = []
        if not isinstance(weight_map, dict) or new_map != weight_map:
            words.append(f"weight_map regenerated from the {len(new_map):,} tensors the {len(shards)} shards hold")
        if metadata.get("total_size") != old_total:
            words.append(f"metadata.total_size set to {metadata['total_size']} (the shards' tensor bytes)")
        if not isinstance(value.get("metadata"), dict):
            words.append("metadata added")
        stale = [f for f in self.having("HFC007") if f.file in shards]
        document.value = new_value
        document.style = {"indent": 2, "sort_keys": True, "ensure_ascii": True}
        document.trailing_newline = True
        self.plan.note(name, [*codes, *(["HFC007"] if stale else []), *(["HFC005"] if self.having("HFC005", name)
                                                                        else [])],
                       "; ".join(words) or "rewritten as transformers writes it")

    def _create_index(self, weight_set: WeightSet) -> None:
        name = INDEX[weight_set.format]
        shards, why = self._shard_set(weight_set, weight_set.shard_files)
        first = weight_set.shard_files[0]
        if why is not None:
            self.skip("HFC002", first, f"the shards on disk are not one complete set: {why}")
            return
        found = self._tensors_of(shards)
        if isinstance(found, str):
            self.skip("HFC002", first, found)
            return
        new_map, total = found
        self.claimed_shards.update(shards)
        renames = self._renames(weight_set, shards)
        if renames:
            new_map = {tensor: renames.get(shard, shard) for tensor, shard in new_map.items()}
        index = {"metadata": {"total_size": total}, "weight_map": new_map}
        self.plan.created[name] = json.dumps(index, indent=2, sort_keys=True) + "\n"
        self.plan.note(name, ("HFC002",), f"created from the {len(new_map):,} tensors the {len(shards)} shards hold "
                       f"(total_size {total})")

    # --- unsafe: renames -------------------------------------------------------------------------
    def _renames(self, weight_set: WeightSet, shards: list[str]) -> dict[str, str]:
        """Old-style shard names (-1-of-3) -> the Hub's (-00001-of-00003), planned when unsafe
        fixes were asked for and no target name is taken."""
        mapping: dict[str, str] = {}
        for shard in shards:
            parsed = parse_shard_name(shard, weight_set.format)
            if parsed is None:
                return {}
            hub = _SHARD_NAME[weight_set.format].format(parsed.number, parsed.total)
            if hub != shard:
                mapping[shard] = hub
        if not mapping:
            return {}
        if any(self.folder.has(new) and not self._one_file([old, new]) for old, new in mapping.items()):
            return {}
        if not self.unsafe:
            self.plan.unsafe_available.update(("rename", old) for old in mapping)
            return {}
        self.plan.links.extend(mapping.items())
        self.plan.deletions.extend((old, f"the old name of {new}", ()) for old, new in mapping.items())
        return mapping

    def rename_indexed(self) -> None:
        """Old-style names in an index that stays: the index's weight_map follows the renames."""
        for weight_set in self.folder.weight_sets.values():
            if weight_set.single or not weight_set.index:
                continue
            document = self.document(weight_set.index)
            if document is None:
                continue
            weight_map = document.value.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                continue
            shards = list(dict.fromkeys(weight_map.values()))
            if not all(isinstance(s, str) and SHARD_RE[weight_set.format].match(s) and self.folder.has(s)
                       for s in shards):
                continue
            complete, why = self._shard_set(weight_set, shards)
            if why is not None or sorted(complete) != sorted(shards):
                continue
            mapping = self._renames(weight_set, complete)
            if mapping:
                document.value["weight_map"] = {t: mapping.get(s, s) for t, s in weight_map.items()}
                self.plan.note(weight_set.index, (), f"weight_map names the renamed shards ({len(mapping)})",
                               unsafe=True)

    def safetensors_format(self) -> None:
        for item in self.having("HFC012"):
            name = item.file
            weight_file = self.contents.weights.get(name) if name else None
            if name is None or weight_file is None or weight_file.format != "safetensors":
                continue
            metadata = dict(weight_file.metadata or {})
            metadata["format"] = "pt"
            self.plan.headers.append((name, weight_file, metadata, ("HFC012",)))

    def config_dtype(self) -> None:
        if not self.having("HFC514"):
            return
        document = self.document("config.json")
        if document is None:
            self.skip("HFC514", "config.json", self.unreadable.get("config.json", "config.json cannot be read"))
            return
        stored = {t.dtype for t in self.contents.loaded_tensors.values() if t.dtype in FLOAT_DTYPES}
        if len(stored) != 1:
            self.skip("HFC514", "config.json", f"the floating tensors are stored in {len(stored)} dtypes "
                      f"({', '.join(sorted(stored))}): which one the config should name is a choice, not a fact")
            return
        dtype = stored.pop()
        names = {v: k for k, v in CONFIG_DTYPE.items()}
        if dtype not in names:
            self.skip("HFC514", "config.json", f"the weights are stored as {dtype}, which config.json cannot name")
            return
        changed = []
        for key in ("dtype", "torch_dtype"):
            value = document.value.get(key)
            if isinstance(value, str) and TORCH_DTYPE.get(value) != dtype:
                document.value[key] = names[dtype]
                changed.append(f"{key} {value} -> {names[dtype]}")
        if changed:
            self.plan.note("config.json", ("HFC514",), f"{', '.join(changed)} (every floating tensor is stored as "
                           f"{dtype})")

    def tokenizer_file_null(self) -> None:
        hits = [f for f in self.having("HFC507", "tokenizer_config.json") if f.tensor == "$.tokenizer_file"
                and "tokenizer_file to null" in f.message]
        if not hits or not self.folder.has("tokenizer.json") or "tokenizer.json" not in self.contents.json:
            return
        document = self.document("tokenizer_config.json")
        if document is None:
            self.skip("HFC507", "tokenizer_config.json", self.unreadable.get("tokenizer_config.json", "unreadable"))
            return
        if "tokenizer_file" in document.value and document.value["tokenizer_file"] is None:
            del document.value["tokenizer_file"]
            self.plan.note("tokenizer_config.json", ("HFC507",),
                           "\"tokenizer_file\": null removed (tokenizer.json is in the folder)")

    # --- unsafe: ids, deletions ------------------------------------------------------------------
    def generation_ids(self) -> None:
        name = "generation_config.json"
        edits: list[tuple[str, str, int]] = []  # (code, key, id)
        for item in self.having("HFC506", name):
            key = (item.tensor or "")[2:]
            match = _TOKEN_ID_RE.search(item.message)
            if key in _ID_KEYS and match:
                edits.append(("HFC506", key, int(match.group(1))))
        for item in self.having("HFC513"):
            match = _TURN_END_RE.search(item.message)
            if match:
                edits.append(("HFC513", "eos_token_id", int(match.group(1))))
        if not edits:
            return
        if not self.unsafe:
            for code, _key, _id in edits:
                self.plan.unsafe_available.add((code, name if code == "HFC506" else None))
            return
        document = self.document(name)
        if document is None:
            for code, _key, _id in edits:
                self.skip(code, name, self.unreadable.get(name, f"{name} cannot be read"))
            return
        for code, key, token_id in edits:
            value = document.value.get(key)
            if key == "eos_token_id":
                ids = value if isinstance(value, list) else [] if value is None else [value]
                if token_id in ids:
                    continue
                document.value[key] = [*ids, token_id]
                why = ("the chat template ends turns with it" if code == "HFC513" else "the tokenizer's eos token")
                self.plan.note(name, (code,), f"eos_token_id {value!r} -> {document.value[key]!r} ({why})",
                               unsafe=True)
            else:
                document.value[key] = token_id
                self.plan.note(name, (code,), f"{key} {value!r} -> {token_id} (the tokenizer's id of its token)",
                               unsafe=True)

    def deletions(self) -> None:
        targets: dict[str, tuple[str, str]] = {}
        renamed_to = {new for _old, new in self.plan.links}
        for item in self.having("HFC007"):
            if item.file is None or item.file in self.claimed_shards or item.file in renamed_to:
                continue
            if item.file.endswith(".index.json"):
                weight_set = next((ws for ws in self.folder.weight_sets.values() if ws.index == item.file), None)
                if weight_set is None or weight_set.single is None:
                    continue
                targets[item.file] = ("HFC007", f"the index beside {weight_set.single}, which loaders use")
                index = self.contents.indexes.get(item.file)
                for shard in index.shard_names if index is not None else ():
                    if shard != weight_set.single and self.folder.has(shard):
                        targets.setdefault(shard, ("HFC007", f"a shard of {item.file} (loaders use "
                                                   f"{weight_set.single})"))
            else:
                targets.setdefault(item.file, ("HFC007", "a stale shard no index references"))
        for item in self.having("HFC011"):
            if item.file is not None and item.severity.value == "warning":
                targets.setdefault(item.file, ("HFC011", "a training leftover"))
        for name, (code, why) in targets.items():
            if not self.unsafe:
                self.plan.unsafe_available.add((code, name))
                continue
            self.plan.deletions.append((name, why, (code,)))

    def run(self) -> Plan:
        self.duplicate_keys()
        self.indexes()
        self.rename_indexed()
        self.safetensors_format()
        self.config_dtype()
        self.tokenizer_file_null()
        self.generation_ids()
        self.deletions()
        # Files only read (not edited) are not rewritten.
        for name in [n for n in self.plan.documents if n not in self.plan.codes and n not in self.plan.notes]:
            del self.plan.documents[name]
        return self.plan


def plan_fixes(contents: FolderContents, report: Report, unsafe: bool) -> Plan:
    """The changes that fix what ``report`` found in ``contents`` (unsafe ones only when asked)."""
    return _Planner(contents, report, unsafe).run()

