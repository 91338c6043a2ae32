"""``fix()``: repair what validation found that is mechanical and provable from the folder.

(The package is ``fixing``, not ``fix``, so that ``hfconv.fix`` stays the lazily exported function.)

Steps:
    1. validate the folder (discover, read, check);
    2. refuse it (HFC950, nothing written) when it holds a hostile pickle, a name leading out
       of the folder, a listing cut short, or when a change would write through a symlink;
    3. plan the changes (:mod:`.plan`): safe ones always, unsafe ones only when asked;
    4. apply them, each file atomically (:mod:`.apply`), unless it is a dry run;
    5. validate again and list what remains, each with why it was not fixed.

The codes a fix clears are marked in the registry (``mark_fixable``): the README's code table
shows them in its "hfconv fix" column.
"""

from __future__ import annotations

import os

from ..contents import FolderContents, read_contents
from ..discovery import discover
from ..findings import REGISTRY, Finding, Severity, finding, mark_fixable, register
from ..jsonutil import JsonError
from ..report import Report
from ..tensors import FormatError, WeightFile
from ..validation import check_contents, check_folder
from .apply import FileOps, VerifyError, remove_stale_temporaries
from .plan import Plan, plan_fixes
from .results import Change, FixResult, Remaining

__all__ = ["Change", "FixResult", "Remaining", "fix"]

register("HFC950", "error", "fix refused",
         "hfconv fix changes nothing in a folder it cannot trust or cannot see whole: a pickle that imports "
         "what no state dict or training run does, a zip torch could read differently, a name or symlink "
         "leading out of the folder, a listing cut short, or a change that would write through a symlink.",
         "Remove the hostile or out-of-folder files by hand (see validate's findings), or replace symlinks by "
         "the files, then run hfconv fix again.",
         "fix refused: optimizer.pt references 'posix.system' (HFC011); hfconv fix does not touch a folder with "
         "a hostile pickle")
register("HFC951", "error", "fix failed",
         "A file could not be replaced (a write error, a full disk) or a rewritten safetensors file did not read "
         "back as the original's tensors; that file was left as it was. Files fixed before it are complete.",
         "Free space or fix permissions and run hfconv fix again; it picks up where it stopped.",
         "model.safetensors could not be rewritten: No space left on device; it was left unchanged")

_SAFE = {
    "HFC002": "writes the missing index of a complete numbered shard set (old -1-of-3 names too)",
    "HFC012": "adds \"format\": \"pt\" to __metadata__ (the header is rewritten, tensor bytes copied and compared)",
    "HFC301": "regenerates the index from the shards' tensors",
    "HFC302": "regenerates the index from the shards' tensors",
    "HFC303": "regenerates the index from the shards' tensors",
    "HFC306": "regenerates the index's metadata.total_size",
    "HFC307": "regenerates the index of a complete numbered shard set",
    "HFC406": "regenerates the index (metadata, weight_map)",
    "HFC401": "writes duplicate keys once when every copy holds the same value",
    "HFC507": "removes \"tokenizer_file\": null beside tokenizer.json",
    "HFC514": "sets torch_dtype / dtype to the dtype every floating tensor is stored in",
}
_UNSAFE = {
    "HFC007": "deletes stale shards (and an index beside the single file loaders use)",
    "HFC011": "deletes training leftovers",
    "HFC506": "sets generation_config.json's bos/pad id to the tokenizer's, adds its eos id",
    "HFC513": "adds the chat template's turn-end token id to generation_config.json's eos_token_id",
}
for _code, _what in _SAFE.items():
    mark_fixable(_code, "safe", _what)
for _code, _what in _UNSAFE.items():
    mark_fixable(_code, "unsafe", _what)

_REFUSING = ("HFC006", "HFC015", "HFC016", "HFC201", "HFC213")
"""Codes of folders fix does not touch (HFC011 too, where it is an error: a pickle to distrust)."""
_MORE_ROUNDS = 2
"""Fix rounds after the first, for findings only a fixed file reveals."""
_ELSEWHERE = frozenset({"HFC002", "HFC005", "HFC007", "HFC301", "HFC302", "HFC513"})
"""Codes a change clears whose finding names another file than the change (a shard, the template)."""


def fix(path: str | os.PathLike[str], *, unsafe_fixes: bool = False, dry_run: bool = False) -> FixResult:
    """Fix what is mechanical in a model folder; every file is replaced atomically.

    Args:
        path: the model folder.
        unsafe_fixes: also delete stale shards and training leftovers, rename old-style shard
            names to the Hub's, and align generation_config.json's token ids with the tokenizer.
        dry_run: work out the changes (with each JSON file's text before and after) and change
            nothing.

    Returns:
        The FixResult: changes, what remains (after fixing: validated again) and any refusal.

    Raises:
        UsageError: path is not a folder.
    """
    check_folder(path)
    root = os.fspath(path)
    notes: tuple[str, ...] = ()
    contents, report = _validated(root)
    refused = _refusals(report)
    plan = plan_fixes(contents, report, unsafe_fixes) if not refused else Plan()
    changes = plan.changes()
    renames = sorted(name for code, name in plan.unsafe_available if code == "rename" and name)
    if renames:
        others = f" and {len(renames) - 1} more" if len(renames) > 1 else ""
        notes += (f"an unsafe fix would rename old-style shard names ({renames[0]}{others}) to the Hub's "
                  "-0000i-of-0000N names",)
    if not refused:
        refused = _symlink_refusals(contents, changes)
    if refused:
        remaining = _remaining(report.findings, plan, ())
        return FixResult(root, tuple(changes), applied=False, remaining=remaining, refused=tuple(refused),
                         report=report, notes=notes)
    if dry_run:
        return FixResult(root, tuple(changes), applied=False, remaining=_remaining(report.findings, plan, changes),
                         report=report, notes=notes)
    notes += tuple(f"removed {name}, a temporary file of an interrupted hfconv fix"
                   for name in remove_stale_temporaries(root))
    done, failure = _apply(root, plan, changes)
    contents, after = _validated(root)
    # A fix can uncover another (config.json with a duplicate key was not checked for its dtype):
    # a few more rounds, each on the folder as it now is.
    for _round in range(_MORE_ROUNDS):
        if failure is not None or not done or _refusals(after):
            break
        plan = plan_fixes(contents, after, unsafe_fixes)
        changes = plan.changes()
        if not changes or _symlink_refusals(contents, changes):
            break
        more, failure = _apply(root, plan, changes)
        done.extend(more)
        contents, after = _validated(root)
    return FixResult(root, tuple(done), applied=True, remaining=_remaining(after.findings, plan, ()),
                     refused=(failure,) if failure else (), report=after, notes=notes)


def _validated(root: str) -> tuple[FolderContents, Report]:
    contents = read_contents(discover(root))
    return contents, check_contents(contents, path=root)


def _refusals(report: Report) -> list[Finding]:
    found = []
    for item in report.findings:
        hostile = item.code in _REFUSING or (item.code == "HFC011" and item.severity is Severity.ERROR)
        if hostile:
            found.append(finding("HFC950", f"fix refused: {item.message} ({item.code}); hfconv fix does not touch a "
                                 "folder with a hostile pickle, a name leading out of it or files it did not list",
                                 file=item.file, tensor=item.tensor))
    return found


def _symlink_refusals(contents: FolderContents, changes: list[Change]) -> list[Finding]:
    folder = contents.folder
    links = set(folder.symlinks)
    found = []
    for change in changes:
        for name in (change.file, change.new_name):
            if name is None:
                continue
            parts = name.split("/")
            prefixes = {"/".join(parts[:i]) for i in range(1, len(parts))}
            if name in links or prefixes & set(folder.linked_dirs) or folder.blob_root is not None:
                found.append(finding("HFC950", f"fix refused: {name} is a symlink (or in a Hub cache snapshot, whose "
                                     "files are links into its blobs); hfconv fix does not write through a symlink",
                                     file=name))
    return found


def _apply(root: str, plan: Plan, changes: list[Change]) -> tuple[list[Change], Finding | None]:
    """Apply ``changes`` in order; stop at the first failure (that file is left as it was, and
    ``plan.skipped`` says why its codes remain)."""
    ops = FileOps(root)
    headers = {name: (weight_file, metadata) for name, weight_file, metadata, _codes in plan.headers}
    done: list[Change] = []
    for change in changes:
        failure = _apply_one(ops, headers, change)
        if failure is not None:
            for code in change.codes:
                plan.skipped[(code, change.file)] = f"its fix failed ({failure.code}), see above"
            return done, failure
        done.append(change)
    return done, None


def _apply_one(ops: FileOps, headers: dict[str, tuple[WeightFile, dict[str, str]]], change: Change) -> Finding | None:
    """Apply one change; the HFC951 finding when it failed."""
    try:
        if change.action == "header":
            weight_file, metadata = headers[change.file]
            ops.rewrite_header(change.file, weight_file, metadata)
        elif change.action in ("rewrite", "create"):
            assert change.new_text is not None
            ops.write_text(change.file, change.new_text, expected=change.old_text)
        elif change.action == "rename":
            assert change.new_name is not None
            ops.link(change.file, change.new_name)
        elif change.action == "delete":
            ops.delete(change.file)
    except VerifyError as exc:
        return finding("HFC951", f"{change.file} was not changed: {exc}; it was left as it was", file=change.file)
    except (OSError, FormatError, JsonError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
        return finding("HFC951", f"{change.file} could not be changed ({change.action}): {reason}; it was "
                       "left as it was, and the files changed before it are complete", file=change.file)
    return None


def _addressed(item: Finding, changes: tuple[Change, ...] | list[Change]) -> bool:
    return any(item.code in c.codes and (c.file == item.file or item.code in _ELSEWHERE) for c in changes)


def _remaining(findings: tuple[Finding, ...], plan: Plan, changes: tuple[Change, ...] | list[Change],
               ) -> tuple[Remaining, ...]:
    """Findings left (errors, warnings, and infos a fix would clear), each with why it was not fixed."""
    out = []
    for item in findings:
        entry = REGISTRY.get(item.code)
        fixable = entry.fixable if entry is not None else ""
        if item.severity is Severity.INFO and not fixable:
            continue
        if _addressed(item, changes):
            continue
        key, anywhere = (item.code, item.file), (item.code, None)
        if key in plan.skipped or anywhere in plan.skipped:
            out.append(Remaining(item, plan.skipped.get(key) or plan.skipped[anywhere]))
        elif key in plan.unsafe_available or anywhere in plan.unsafe_available:
            out.append(Remaining(item, f"only an unsafe fix changes it ({fixable or 'a rename'})", unsafe=True))
        elif fixable:
            out.append(Remaining(item, f"not the case hfconv fix repairs ({fixable}); {entry.fix if entry else ''}"))
        else:
            out.append(Remaining(item, f"not mechanical: {entry.fix if entry else 'see the finding'}"))
    return tuple(out)
