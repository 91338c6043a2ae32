"""Layout checks: which weight files are there, and do their names add up."""

from __future__ import annotations

import dataclasses
import functools
import os
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, cast

from .. import environment
from ..contents import FolderContents
from ..discovery import MAX_DEPTH, MAX_LISTED_FILES, TRAINING_LEFTOVERS, ModelFolder, WeightSet, parse_shard_name
from ..findings import REGISTRY, Finding, Severity, about, finding, register
from ..fsutil import link_problem, open_regular
from ..readers import LFS_POINTER_PREFIX
from ..tensors import FormatError
from ..units import plural

_JSON_LEFTOVERS = frozenset({"trainer_state.json"})

MAX_FINDINGS_PER_CODE = 1000
MAX_SCANNED_LEFTOVERS = 100
"""Pickled training leftovers (optimizer.pt, ...) whose globals one run walks; each walk may take
up to the pickle walker's own budget, so a folder of thousands of them is cut off here."""
"""Findings of one code one check lists for a folder; the rest become one summary finding of
the same code (so --select/--ignore treat it alike), with the worst severity among them."""

register("HFC015", "error", "folder listing cut short",
         f"The folder holds more than {MAX_LISTED_FILES:,} files and folders. hfconv stops listing there "
         "(a hostile folder of millions of entries would otherwise take minutes and gigabytes), so files "
         "past the cap (weights, pickles, custom code) were never checked. A verdict over part of a folder "
         "is no verdict.",
         "Remove the filler (logs, per-step outputs, caches) from the model folder; a model folder holds a "
         "few dozen files.",
         f"the folder holds more than {MAX_LISTED_FILES} files and folders (the listing cap, MAX_LISTED_FILES); "
         "hfconv stopped listing in 'runs/' and did not check the rest")
register("HFC016", "error", "folder nested too deep",
         f"A folder nests more than {MAX_DEPTH} levels below the model folder. hfconv does not descend further "
         "(a folder thousands of levels deep would exhaust recursion and path lengths), so files there were "
         "never checked.",
         "Flatten or remove the deep folders; model repos nest a few levels at most.",
         f"a/a/a/.../a ({MAX_DEPTH} levels down) holds folders deeper than the depth cap ({MAX_DEPTH} levels, "
         "MAX_DEPTH); hfconv did not list them")
register("HFC017", "warning", "names differ only in case",
         "Two files loaders or hfconv read have names that differ only in letter case (or Unicode "
         "normalization), such as model.safetensors and MODEL.safetensors. On a case-insensitive file system "
         "(the macOS and Windows defaults) only one of them survives a download or a clone, so a user there "
         "loads a different file than the one that was checked here.",
         "Delete or rename one of the two; keep the name loaders expect.",
         "config.json and Config.json differ only in letter case: on a case-insensitive file system (macOS, "
         "Windows) one replaces the other, and a loader there may read the one hfconv did not check")

if TYPE_CHECKING:
    from ..readers.torch_checkpoint import ScanResult


def capped(check: Callable[[FolderContents], Iterable[Finding | Uncounted]],
           ) -> Callable[[FolderContents], Iterator[Finding]]:
    """At most MAX_FINDINGS_PER_CODE findings of each code from ``check``, then one summary per code.

    The summary carries the code and the worst severity of the findings it stands for, says how
    many there were and quotes the first of them. A check that is already capped is returned as it
    is (capping it again would hide its summary behind a summary of one)."""
    if getattr(check, _CAPPED, False):
        return cast(Callable[[FolderContents], Iterator[Finding]], check)

    @functools.wraps(check)
    def wrapper(contents: FolderContents) -> Iterator[Finding]:
        shown: Counter[str] = Counter()
        hidden: dict[str, list] = {}  # code -> [count, worst severity, first hidden finding]
        for item in check(contents):
            if isinstance(item, Uncounted):
                entry = hidden.get(item.code)
                if entry is not None:  # (a check says how many more only after one was hidden)
                    entry[0] += item.count
                    if item.severity.rank > entry[1].rank:
                        entry[1] = item.severity
                continue
            if shown[item.code] < MAX_FINDINGS_PER_CODE:
                shown[item.code] += 1
                yield item
                continue
            entry = hidden.setdefault(item.code, [0, item.severity, item])
            entry[0] += 1
            if item.severity is not entry[1] and item.severity.rank > entry[1].rank:
                entry[1] = item.severity
        for code, (count, severity, first) in hidden.items():
            yield summary_finding(code, count, severity, first)
    setattr(wrapper, _CAPPED, True)
    return wrapper


@dataclasses.dataclass(frozen=True)
class Uncounted:
    """What a capped check may yield instead of ``count`` more findings of ``code`` once it has
    yielded more than MAX_FINDINGS_PER_CODE of them: capped() adds them to the summary without
    the check building each finding (an index of 300,000 bad entries)."""

    code: str
    count: int
    severity: Severity


_CAPPED = "hfconv_capped"
"""Attribute marking a check that ``capped`` wrapped."""


def summary_finding(code: str, count: int, severity: Severity, first: Finding) -> Finding:
    """One finding standing for ``count`` findings of ``code`` that were not listed one by one."""
    return finding(code, f"{count:,} more {code} finding(s) ({REGISTRY[code].title}) are not listed one by one "
                   f"(at most {MAX_FINDINGS_PER_CODE} of one kind are), the first of them: {first.message}",
                   file=first.file, severity=severity)


def some(values: Iterable, limit: int = 10) -> str:
    """At most ``limit`` values joined by commas, and how many there are in all when more."""
    items = list(values)
    text = ", ".join(map(str, items[:limit]))
    return text if len(items) <= limit else f"{text}, ... ({len(items):,} in all)"


def number_ranges(numbers: Iterable[int], limit: int = 20) -> str:
    """Sorted distinct numbers as ranges, ``1..3, 7``, at most ``limit`` ranges shown."""
    ranges: list[str] = []
    ordered = sorted(set(numbers))
    start = 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[i - 1] + 1:
            first, last = ordered[start], ordered[i - 1]
            ranges.append(str(first) if first == last else f"{first}..{last}")
            start = i
    return some(ranges, limit) if len(ranges) <= limit else (
        f"{', '.join(ranges[:limit])}, ... ({len(ordered):,} in all)")


@capped
def check_read_errors(contents: FolderContents) -> Iterator[Finding]:
    """Every file a reader refused becomes a finding naming the file (and tensor); a FIFO, device
    or socket gets one finding saying which it is (not a second one from the reader that refused it)."""
    special = contents.folder.is_special
    for name, error in contents.weight_errors.items():
        if not (error.code == "HFC008" and special(name)):
            yield finding(error.code, about(name, error.message), file=name, tensor=error.tensor)
    for name, weight_file in contents.weights.items():
        for note in weight_file.notes:
            yield finding(note.code, about(name, note.message), file=name, tensor=note.tensor)
    for name, json_error in contents.json_errors.items():
        code = getattr(json_error, "code", None) or "HFC401"
        if not (code == "HFC008" and special(name)):
            yield finding(code, f"{name} {_describe_json_error(json_error)}", file=name,
                          tensor=getattr(json_error, "key", None))
    for name in contents.folder.special_files:
        yield finding("HFC008", f"{name} is {_special_kind(contents.folder.path(name))}, not a regular file; "
                      "it was not opened", file=name)


def _special_kind(path: str | os.PathLike[str]) -> str:
    """'a FIFO', 'a character device', ... (stat does not open, so a FIFO does not block)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a special file"
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


@capped
def check_hygiene(contents: FolderContents) -> Iterator[Finding]:
    """Training leftovers, and symlinks (files or folders) that leave the folder."""
    folder = contents.folder
    unscanned: list[str] = []
    scanned = 0
    for name in folder.files:
        base = os.path.basename(name)
        if base in TRAINING_LEFTOVERS:
            if base in _JSON_LEFTOVERS:
                yield finding("HFC011", f"{name} is a training leftover (trainer state); it does not belong in a "
                              "published model folder", file=name)
            elif scanned < MAX_SCANNED_LEFTOVERS:
                scanned += 1
                yield _pickled_leftover(folder, name)
            else:
                unscanned.append(name)
    if unscanned:
        yield finding("HFC011", f"{len(unscanned):,} more pickled training leftovers ({some(unscanned, 3)}) were not "
                      f"scanned: hfconv walks at most {MAX_SCANNED_LEFTOVERS} leftover pickles per folder "
                      "(MAX_SCANNED_LEFTOVERS), so what they import is unknown: do not torch.load them",
                      file=unscanned[0], severity="error")
    # Symlinks leaving the folder. Files a reader refused as such are already reported.
    errors = (*contents.weight_errors.items(), *contents.json_errors.items())
    reported = {name for name, err in errors if getattr(err, "code", None) == "HFC006"}
    for name in folder.symlinks:
        if name not in reported and not folder.contains(name):
            problem = link_problem(folder.path(name))
            effect = ("an upload or a loader finds no file there" if problem.startswith("is a dangling") else
                      "an upload or a loader would use a file the folder does not ship")
            yield finding("HFC006", f"{name} {problem}; hfconv did not read it, and {effect}", file=name)
    for name in folder.linked_dirs:
        if not folder.contains(name):
            yield finding("HFC006", f"{name}/ is a symlink to a folder outside the model folder; hfconv did not "
                          "follow it", file=name)
    yield from _case_collisions(folder)


def _check_listing(folder: ModelFolder) -> Iterator[Finding]:
    """Caps of the folder listing that hid files: the verdict does not cover them."""
    if folder.truncated_listing:
        where = f"'{folder.truncated_in}/'" if folder.truncated_in else "the model folder itself"
        yield finding("HFC015", f"the folder holds more than {MAX_LISTED_FILES:,} files and folders (the listing cap, "
                      f"MAX_LISTED_FILES); hfconv stopped listing in {where}, so the files past the cap were not "
                      "checked", file=folder.truncated_in or None)
    for name in folder.too_deep:
        yield finding("HFC016", f"{name} ({name.count('/') + 1} levels down) holds folders deeper than the depth "
                      f"cap ({MAX_DEPTH} levels, MAX_DEPTH); hfconv did not list them, so their files were not "
                      "checked", file=name)


_READ_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".py", ".model", ".txt", ".jinja",
                  ".tiktoken", ".msgpack", ".h5", ".gguf", ".onnx", ".npz")
"""Names hfconv or a loader (transformers, tokenizers, sentencepiece, peft) reads by suffix."""


def _case_collisions(folder: ModelFolder) -> Iterator[Finding]:
    """Files a loader reads whose names are equal under Unicode normalization and case folding."""
    groups: dict[str, list[str]] = {}
    for name in folder.files:
        groups.setdefault(unicodedata.normalize("NFC", name).casefold(), []).append(name)
    for key, names in groups.items():
        if len(names) > 1 and key.endswith(_READ_SUFFIXES):
            yield finding("HFC017", f"{' and '.join(names)} differ only in letter case: on a case-insensitive file "
                          "system (macOS, Windows) one replaces the other, and a loader there may read the one "
                          "hfconv did not check", file=names[0])


def _describe_json_error(error: Exception) -> str:
    message = getattr(error, "message", str(error))
    return message if message.startswith(("is ", "has ", "was ")) else f"is not valid JSON: {message}"


_SAFETENSORS_FORMATS = ("pt", "tf", "flax", "mlx")
"""__metadata__['format'] values transformers 4.x accepts (any other, or none, is refused)."""


@capped
def check_weight_metadata(contents: FolderContents) -> Iterator[Finding]:
    """safetensors files the loader reads carry a 'format' transformers 4.x accepts.

    A warning, since transformers 5 and plain safetensors load such files; an error where the
    installed transformers is 4.x, whose from_pretrained refuses them."""
    loaded = contents.folder.loaded_set
    for name in contents.shards_of(loaded) if loaded is not None else ():
        weight_file = contents.weights.get(name)
        if weight_file is None or weight_file.format != "safetensors" or weight_file.metadata is None:
            continue  # no __metadata__ at all is fine for every version
        value = weight_file.metadata.get("format")
        if value not in _SAFETENSORS_FORMATS:
            what = "has no 'format' entry" if value is None else f"says format={value!r}"
            installed = environment.installed_transformers_4()
            who = f"the installed transformers {installed}" if installed else "transformers 4.x"
            yield finding("HFC012", f"{name}: __metadata__ {what}; {who} refuses to load it (transformers 5 does not "
                          "check)", file=name, severity="error" if installed else None)


_OTHER_FORMATS = (
    ("TensorFlow", lambda base: base.startswith("tf_model") and base.endswith(".h5")),
    ("Flax", lambda base: base.startswith("flax_model") and base.endswith(".msgpack")),
    ("GGUF", lambda base: base.endswith(".gguf")),
    ("ONNX", lambda base: base.endswith((".onnx", ".onnx_data"))),
)
"""Weight formats hfconv (and a PyTorch from_pretrained) does not read, named when they are all a folder holds."""


def _no_weights(folder: ModelFolder) -> Finding:
    """HFC001, naming the weights of another framework the folder holds instead (tf_model.h5, ...)."""
    found = []
    for label, test in _OTHER_FORMATS:
        names = [name for name in folder.files if test(os.path.basename(name).lower())]
        if names:
            more = f" and {len(names) - 1:,} more" if len(names) > 1 else ""
            found.append((f"{names[0]}{more} ({label})", names[0]))
    if not found:
        nested = _nested_models(folder)
        if nested:  # a diffusers pipeline (text_encoder/, ...), or a folder of several models
            shown = [f"{name}/" for name in nested[:3]] + ([f"{len(nested) - 3:,} more"] if len(nested) > 3 else [])
            named = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]
            many = len(nested) > 1
            return finding("HFC001", f"no weight files in the folder itself, but {named} "
                           f"{'each hold' if many else 'holds'} a model (config.json and weights; a diffusers "
                           "pipeline keeps its text encoder in text_encoder/): validate "
                           f"{'those folders' if many else 'that folder'}, not {'their' if many else 'its'} parent",
                           file=f"{nested[0]}/config.json")
        return finding("HFC001", "no weight files found (expected model.safetensors, pytorch_model.bin, "
                       "or sharded shards with their index json)")
    what = ", ".join(text for text, _ in found)
    return finding("HFC001", f"{what} found: hfconv reads PyTorch and safetensors weights, and the folder has none "
                   "(expected model.safetensors, pytorch_model.bin, or sharded shards with their index json)",
                   file=found[0][1])


def _nested_models(folder: ModelFolder) -> list[str]:
    """Subfolders (listed, in order) holding a config.json beside safetensors or .bin weights."""
    configs = {os.path.dirname(name) for name in folder.files
               if "/" in name and os.path.basename(name) == "config.json"}
    weighed = {os.path.dirname(name) for name in folder.files
               if "/" in name and name.endswith((".safetensors", ".bin")) and os.path.dirname(name) in configs}
    return sorted(weighed)


@capped
def check_layout(contents: FolderContents) -> Iterator[Finding]:
    """Weights present, indexes where shards need them, one weight format, shard numbering."""
    folder = contents.folder
    chosen = folder.loaded_set
    if chosen is None:
        if not (folder.has("adapter_config.json") and any(f.startswith("adapter_model.") for f in folder.files)):
            yield _no_weights(folder)
    if not folder.has("config.json") and not folder.has("adapter_config.json"):
        # A PEFT adapter folder has adapter_config.json instead; the base model's config is elsewhere.
        yield finding("HFC009", "config.json is missing: from_pretrained cannot build the model without it "
                      "(checks against the config are skipped)", file="config.json")
    yield from _check_listing(folder)

    for weight_set in folder.weight_sets.values():
        if weight_set.shard_files and not weight_set.index and not weight_set.single:
            index_name = ("model.safetensors.index.json" if weight_set.format == "safetensors"
                          else "pytorch_model.bin.index.json")
            yield finding("HFC002", f"{len(weight_set.shard_files):,} {weight_set.format} shards "
                          f"({weight_set.shard_files[0]}, ...) but no {index_name}: loaders will not find them",
                          file=weight_set.shard_files[0])
        if weight_set.single and weight_set.index:
            yield finding("HFC007", f"{weight_set.index} sits beside {weight_set.single}; loaders use "
                          f"{weight_set.single} and ignore the index and its shards", file=weight_set.index)
        yield from _check_numbering(contents, weight_set)

    present = [ws for ws in folder.weight_sets.values() if ws.present]
    if len(present) == 2 and chosen is not None:
        other = next(ws for ws in present if ws is not chosen)
        other_name = other.single or other.index or other.shard_files[0]
        chosen_name = chosen.single or chosen.index or chosen.shard_files[0]
        stale = _disagreement(contents, chosen, other)
        if stale is None:
            # Many published repos ship both on purpose (older clients read only .bin).
            yield finding("HFC004", f"{other.format} weights ({other_name}) sit beside {chosen_name} and hold the "
                          f"same tensors; loaders use {chosen.format}, so the {other.format} copy only adds to "
                          "the download", file=other_name, severity="info")
        else:
            yield finding("HFC004", f"{other.format} weights ({other_name}) sit beside {chosen_name} but disagree "
                          f"with them ({stale}); loaders use {chosen.format}, so the {other.format} files are "
                          "stale", file=other_name)


# What Trainer (transformers 4.x-5.x, accelerate, TRL) pickles into training_args.bin (its
# argument classes and their enums) and rng_state.pth, beyond what a state dict uses. Exact names:
# a module-wide allowance would admit functions (transformers.dynamic_module_utils runs remote code).
_TRAINING_GLOBALS = frozenset({
    "torch.device",
    "transformers.training_args.TrainingArguments", "transformers.training_args.OptimizerNames",
    "transformers.training_args.ParallelMode",
    "transformers.training_args_seq2seq.Seq2SeqTrainingArguments",
    "transformers.generation.configuration_utils.GenerationConfig",
    "transformers.trainer_utils.IntervalStrategy", "transformers.trainer_utils.SaveStrategy",
    "transformers.trainer_utils.HubStrategy", "transformers.trainer_utils.SchedulerType",
    "transformers.trainer_utils.EvaluationStrategy", "transformers.trainer_utils.FSDPOption",
    "transformers.trainer_pt_utils.AcceleratorConfig", "transformers.debug_utils.DebugOption",
    "accelerate.state.PartialState", "accelerate.state.AcceleratorState",
    "accelerate.utils.dataclasses.DistributedType",
    # rng_state.pth: numpy's random state, as torch's weights_only loader also allows it
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct", "numpy.ndarray",
    "numpy.dtype", "_codecs.encode",
    *(f"trl.trainer.{module}_config.{cls}Config" for module, cls in (
        ("sft", "SFT"), ("dpo", "DPO"), ("grpo", "GRPO"), ("reward", "Reward"), ("ppo", "PPO"),
        ("orpo", "ORPO"), ("kto", "KTO"), ("cpo", "CPO"))),
})


def _pickled_leftover(folder: ModelFolder, name: str) -> Finding:
    """A training leftover: a warning, unless the pickle in it imports something no training run
    writes (an error naming it) or it is a zip torch might read differently from hfconv."""
    base = f"{name} is a training leftover; it does not belong in a published model folder"
    if not folder.contains(name):
        return finding("HFC011", f"{base} (a symlink leaving the folder: not opened)", file=name)
    if _is_lfs_pointer(folder.path(name)):
        return finding("HFC011", f"{base} (a git-lfs pointer; the file itself was not downloaded)", file=name)
    from ..readers.torch_checkpoint import ALLOWED_GLOBALS, pickle_scan  # the pickle readers: only for a leftover

    scan = pickle_scan(folder.path(name))
    if scan is None:
        return finding("HFC011", f"{base}, and it is a zip hfconv cannot read the way torch would: do not "
                       "torch.load it", file=name, severity="error")
    stranger = next((g for g in scan.globals if g not in _TRAINING_GLOBALS and g not in ALLOWED_GLOBALS), None)
    if stranger is not None:
        return finding("HFC011", f"{base}, and its pickle references {stranger!r}, which no training run writes: "
                       "torch.load on it would run it", file=name, severity="error")
    if not scan.complete:
        return finding("HFC011", f"{base}, and {_walk_stopped(scan)}; what torch.load would import or run past "
                       "that point is unknown: do not torch.load it", file=name, severity="error")
    return finding("HFC011", f"{base} (hfconv listed its pickle's globals without loading it: only what a "
                   "training run writes)", file=name)


def _walk_stopped(scan: ScanResult) -> str:
    """Why hfconv's walk of a pickle did not reach its end, in words."""
    if scan.cap is not None:
        return (f"hfconv's pickle walk stopped at its limit of {scan.cap}, which no training run comes near: "
                f"{scan.problem}")
    if scan.truncated:
        return f"hfconv's pickle walk stopped before the end because the pickle is cut short: {scan.problem}"
    return (f"hfconv's pickle walk stopped before the end because the pickle is malformed (torch.load may read "
            f"it differently): {scan.problem}")


def _is_lfs_pointer(path: str | os.PathLike[str]) -> bool:
    try:
        with open_regular(path) as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except (OSError, FormatError):
        return False


_Signature = tuple[str, tuple[int, ...]]
"""A tensor's (dtype, shape)."""


def _signatures(contents: FolderContents, weight_set: WeightSet) -> tuple[dict[str, _Signature], set[str]] | None:
    """(name -> (dtype, shape), names that alias another tensor's storage) over a weight set;
    None when one of its files could not be read."""
    signatures: dict[str, _Signature] = {}
    aliases: set[str] = set()
    for shard in contents.shards_of(weight_set):
        weight_file = contents.weights.get(shard)
        if weight_file is None:
            return None
        aliases.update(name for names in weight_file.aliases.values() for name in names[1:])
        signatures.update((name, (meta.dtype, meta.shape)) for name, meta in weight_file.tensors.items())
    return signatures, aliases


def _disagreement(contents: FolderContents, chosen: WeightSet, other: WeightSet) -> str | None:
    """How two weight sets differ in tensor names, dtypes or shapes; None when they agree.

    A tied weight (an alias in a ``.bin``) is absent from safetensors by design, so an alias
    on one side only does not count.
    """
    first, second = _signatures(contents, chosen), _signatures(contents, other)
    if first is None or second is None:
        return "one of them could not be read"
    (ours, our_aliases), (theirs, their_aliases) = first, second
    only = sorted((ours.keys() ^ theirs.keys()) - our_aliases - their_aliases)
    differ = sorted(name for name in ours.keys() & theirs.keys() if ours[name] != theirs[name])
    parts = []
    if only:
        parts.append(f"{plural(len(only), 'tensor')} in one only, e.g. {only[0]!r}")
    if differ:
        (dtype, shape), (other_dtype, other_shape) = ours[differ[0]], theirs[differ[0]]
        verb = "differs" if len(differ) == 1 else "differ"
        parts.append(f"{plural(len(differ), 'tensor')} {verb}, e.g. {differ[0]!r} {dtype} {list(shape)} vs "
                     f"{other_dtype} {list(other_shape)}")
    return "; ".join(parts) or None


def _check_numbering(contents: FolderContents, weight_set: WeightSet) -> Iterator[Finding]:
    """Shard names `-0000i-of-0000N` must form one complete set 1..N."""
    parsed = [p for p in (parse_shard_name(n, weight_set.format) for n in weight_set.shard_files) if p]
    if not parsed:
        return
    index = contents.indexes.get(weight_set.index) if weight_set.index else None
    referenced = set(index.shard_names) if index is not None else None
    if weight_set.single:
        referenced = {weight_set.single}
    # Files the loader will read (or, with no index, the set on disk) must be complete.
    group = [p for p in parsed if referenced is None or p.name in referenced]
    for name in (p.name for p in parsed if referenced is not None and p.name not in referenced):
        owner = weight_set.single or weight_set.index
        yield finding("HFC007", f"{name} is not referenced by {owner}; no loader reads it (stale shard?)", file=name)
    totals = sorted({p.total for p in group})
    if len(totals) > 1:
        yield finding("HFC005", f"{weight_set.format} shards claim different totals ({some(totals)}): "
                      "shards from several saves are mixed", file=group[0].name)
        return
    if not group:
        return
    total = totals[0]
    by_number: dict[int, list[str]] = {}
    for p in group:
        by_number.setdefault(p.number, []).append(p.name)
    for dup, names in sorted(by_number.items()):
        if len(names) > 1:
            times = "twice" if len(names) == 2 else f"{len(names)} times"
            yield finding("HFC005", f"shard number {dup} exists {times} ({some(names)})", file=names[0])
    if referenced is None:
        # Bounded by the files on disk: a name claiming 10^12 shards does not make a set that big.
        missing = [n for n in range(1, min(total, len(by_number) + MAX_FINDINGS_PER_CODE) + 1)
                   if n not in by_number]
        if missing or total > len(by_number) + MAX_FINDINGS_PER_CODE:
            count = total - sum(1 for n in by_number if 1 <= n <= total)
            yield finding("HFC005", f"{count:,} shard(s) of {total:,} missing from the {weight_set.format} shard set "
                          f"on disk ({number_ranges(missing)}{', ...' if count > len(missing) else ''})",
                          file=group[0].name)
    out_of_range = [p.name for p in group if not 1 <= p.number <= total]
    for name in out_of_range:
        yield finding("HFC005", f"{name} has a number outside 1..{total}", file=name)
    if index is not None and len(index.shard_names) != total and not out_of_range:
        yield finding("HFC005", f"{weight_set.index} references {len(index.shard_names)} shard files but their "
                      f"names say there are {total}", file=weight_set.index)
