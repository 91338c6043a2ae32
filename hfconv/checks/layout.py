"""Layout checks: which weight files are there, and do their names add up."""

from __future__ import annotations

import os
from collections.abc import Iterator

from .. import environment
from ..contents import FolderContents
from ..discovery import TRAINING_LEFTOVERS, parse_shard_name
from ..findings import Finding, finding
from ..fsutil import open_regular
from ..readers import LFS_POINTER_PREFIX
from ..readers.torch_checkpoint import ALLOWED_GLOBALS, pickle_globals
from ..tensors import FormatError

_JSON_LEFTOVERS = frozenset({"trainer_state.json"})


def check_read_errors(contents: FolderContents) -> Iterator[Finding]:
    """Every file a reader refused becomes a finding naming the file (and tensor)."""
    for name, error in contents.weight_errors.items():
        yield finding(error.code, f"{name}: {error.message}", file=name, tensor=error.tensor)
    for name, weight_file in contents.weights.items():
        for note in weight_file.notes:
            yield finding(note.code, f"{name}: {note.message}", file=name, tensor=note.tensor)
    for name, error in contents.json_errors.items():
        code = getattr(error, "code", None) or "HFC401"
        yield finding(code, f"{name} {_describe_json_error(error)}", file=name, tensor=getattr(error, "key", None))
    for name in contents.folder.special_files:
        yield finding("HFC008", f"{name} is not a regular file (FIFO, device or socket); it was not opened", file=name)


def check_hygiene(contents: FolderContents) -> Iterator[Finding]:
    """Training leftovers, and symlinks (files or folders) that leave the folder."""
    folder = contents.folder
    for name in folder.files:
        base = os.path.basename(name)
        if base in TRAINING_LEFTOVERS:
            if base in _JSON_LEFTOVERS:
                yield finding("HFC011", f"{name} is a training leftover (trainer state); it does not belong in a "
                              "published model folder", file=name)
            else:
                yield _pickled_leftover(folder, name)
    # Symlinks leaving the folder. Files a reader refused as such are already reported.
    errors = (*contents.weight_errors.items(), *contents.json_errors.items())
    reported = {name for name, err in errors if getattr(err, "code", None) == "HFC006"}
    for name in folder.files:
        if name not in reported and os.path.islink(folder.path(name)) and not folder.contains(name):
            yield finding("HFC006", f"{name} is a symlink pointing outside the model folder; hfconv did not read "
                          "it, and an upload or a loader would use a file the folder does not ship", file=name)
    for name in folder.linked_dirs:
        if not folder.contains(name):
            yield finding("HFC006", f"{name}/ is a symlink to a folder outside the model folder; hfconv did not "
                          "follow it", file=name)


def _describe_json_error(error: Exception) -> str:
    message = getattr(error, "message", str(error))
    return message if message.startswith(("is ", "has ", "was ")) else f"is not valid JSON: {message}"


_SAFETENSORS_FORMATS = ("pt", "tf", "flax", "mlx")
"""__metadata__['format'] values transformers 4.x accepts (any other, or none, is refused)."""


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


def check_layout(contents: FolderContents) -> Iterator[Finding]:
    """Weights present, indexes where shards need them, one weight format, shard numbering."""
    folder = contents.folder
    chosen = folder.loaded_set
    if chosen is None:
        if not (folder.has("adapter_config.json") and any(f.startswith("adapter_model.") for f in folder.files)):
            yield finding("HFC001", "no weight files found (expected model.safetensors, pytorch_model.bin, "
                          "or sharded shards with their index json)")
    if not folder.has("config.json"):
        yield finding("HFC009", "config.json is missing; checks against the config are skipped", file="config.json")

    for weight_set in folder.weight_sets.values():
        if weight_set.shard_files and not weight_set.index and not weight_set.single:
            index_name = "model.safetensors.index.json" if weight_set.format == "safetensors" else "pytorch_model.bin.index.json"
            yield finding("HFC002", f"{len(weight_set.shard_files)} {weight_set.format} shards "
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
# argument classes and their enums) and rng_state.pth, beyond what a state dict uses. Exact names: a module-wide allowance would admit
# functions (transformers.dynamic_module_utils runs remote code).
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


def _pickled_leftover(folder, name: str) -> Finding:
    """A training leftover: a warning, unless the pickle in it imports something no training run
    writes (an error naming it) or it is a zip torch might read differently from hfconv."""
    base = f"{name} is a training leftover; it does not belong in a published model folder"
    if not folder.contains(name):
        return finding("HFC011", f"{base} (a symlink leaving the folder: not opened)", file=name)
    if _is_lfs_pointer(folder.path(name)):
        return finding("HFC011", f"{base} (a git-lfs pointer; the file itself was not downloaded)", file=name)
    found = pickle_globals(folder.path(name))
    if found is None:
        return finding("HFC011", f"{base}, and it is a zip hfconv cannot read the way torch would: do not "
                       "torch.load it", file=name, severity="error")
    stranger = next((g for g in found if g not in _TRAINING_GLOBALS and g not in ALLOWED_GLOBALS), None)
    if stranger is not None:
        return finding("HFC011", f"{base}, and its pickle references {stranger!r}, which no training run writes: "
                       "torch.load on it would run it", file=name, severity="error")
    return finding("HFC011", f"{base} (hfconv listed its pickle's globals without loading it: only what a "
                   "training run writes)", file=name)


def _is_lfs_pointer(path) -> bool:
    try:
        with open_regular(path) as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except (OSError, FormatError):
        return False


def _signatures(contents: FolderContents, weight_set) -> tuple[dict[str, tuple], set[str]] | None:
    """(name -> (dtype, shape), names that alias another tensor's storage) over a weight set;
    None when one of its files could not be read."""
    signatures: dict[str, tuple] = {}
    aliases: set[str] = set()
    for shard in contents.shards_of(weight_set):
        weight_file = contents.weights.get(shard)
        if weight_file is None:
            return None
        aliases.update(name for names in weight_file.aliases.values() for name in names[1:])
        signatures.update((name, (meta.dtype, meta.shape)) for name, meta in weight_file.tensors.items())
    return signatures, aliases


def _disagreement(contents: FolderContents, chosen, other) -> str | None:
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
        parts.append(f"{len(only)} tensor(s) in one only, e.g. {only[0]!r}")
    if differ:
        (dtype, shape), (other_dtype, other_shape) = ours[differ[0]], theirs[differ[0]]
        parts.append(f"{len(differ)} tensor(s) differ, e.g. {differ[0]!r} {dtype} {list(shape)} vs "
                     f"{other_dtype} {list(other_shape)}")
    return "; ".join(parts) or None


def _check_numbering(contents: FolderContents, weight_set) -> Iterator[Finding]:
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
        yield finding("HFC005", f"{weight_set.format} shards claim different totals ({', '.join(map(str, totals))}): "
                      "shards from several saves are mixed", file=group[0].name)
        return
    if not group:
        return
    total = totals[0]
    numbers = [p.number for p in group]
    for dup in sorted({n for n in numbers if numbers.count(n) > 1}):
        names = [p.name for p in group if p.number == dup]
        yield finding("HFC005", f"shard number {dup} exists twice ({', '.join(names)})", file=names[0])
    if referenced is None:
        missing = sorted(set(range(1, total + 1)) - set(numbers))
        if missing:
            yield finding("HFC005", f"shard(s) {', '.join(map(str, missing))} of {total} missing from the "
                          f"{weight_set.format} shard set on disk", file=group[0].name)
    out_of_range = [p.name for p in group if not 1 <= p.number <= total]
    for name in out_of_range:
        yield finding("HFC005", f"{name} has a number outside 1..{total}", file=name)
    if index is not None and len(index.shard_names) != total and not out_of_range:
        yield finding("HFC005", f"{weight_set.index} references {len(index.shard_names)} shard files but their "
                      f"names say there are {total}", file=weight_set.index)
