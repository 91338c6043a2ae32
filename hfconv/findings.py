"""Findings and the one registry of their codes.

Every problem hfconv can report has a stable code here (``HFC`` + three digits), a default
severity, a title, why it matters and how to fix it. The README's code table is generated
from this registry (``python -m hfconv.findings``), so the two cannot drift apart.

Code ranges:
    HFC0xx  folder layout and file discovery
    HFC1xx  safetensors headers
    HFC2xx  torch .bin checkpoints (pickle, zip)
    HFC3xx  weight index vs shards
    HFC4xx  JSON files and schemas (config, tokenizer, generation config)
    HFC5xx  tokenizer and special-token consistency
    HFC6xx  tensor shapes implied by config.json
    HFC7xx  conversion and loading
    HFC8xx  custom code and folder hygiene
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(str, enum.Enum):
    """How bad a finding is. ``error`` fails validation; ``warning`` fails it with --strict."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 2, "warning": 1, "info": 0}[self.value]


@dataclass(frozen=True)
class Code:
    """One registered finding code."""

    code: str
    severity: Severity
    title: str
    """Short name of the problem (a few words)."""
    why: str
    """Why it matters to someone loading the folder."""
    fix: str
    """What to do about it."""
    example: str
    """An example message as hfconv prints it."""
    fixable: str = ""
    """What ``hfconv fix`` repairs of it: "" (nothing), ``safe: ...``, or ``unsafe: ...`` (only
    with --unsafe-fixes); set by :func:`mark_fixable` next to the fix."""


@dataclass(frozen=True)
class Finding:
    """One problem (or remark) about one file, and maybe one tensor in it."""

    code: str
    severity: Severity
    message: str
    """One human sentence; says what is wrong and, where useful, how to fix it."""
    file: str | None = None
    """Path relative to the model folder, or None for the folder as a whole."""
    tensor: str | None = None
    """Tensor name (or global, or JSON path) the finding is about."""

    def to_json(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "file": self.file,
            "tensor": self.tensor,
            "message": self.message,
        }


REGISTRY: dict[str, Code] = {}


def register(code: str, severity: str, title: str, why: str, fix: str, example: str) -> Code:
    if code in REGISTRY:
        raise ValueError(f"finding code {code} registered twice")
    entry = Code(code, Severity(severity), title, why, fix, example)
    REGISTRY[code] = entry
    return entry


def mark_fixable(code: str, safety: str, what: str) -> None:
    """Record in the registry that ``hfconv fix`` repairs ``what`` of ``code`` (``safety``:
    ``safe``, or ``unsafe`` for the fixes that need --unsafe-fixes)."""
    if safety not in ("safe", "unsafe"):
        raise ValueError(f"fix safety {safety!r} is neither 'safe' nor 'unsafe'")
    entry = REGISTRY[code]
    text = f"{safety}: {what}"
    REGISTRY[code] = Code(entry.code, entry.severity, entry.title, entry.why, entry.fix, entry.example,
                          f"{entry.fixable}; {text}" if entry.fixable else text)


_PREDICATES = ("is ", "was ", "cannot be ", "could not be ", "resolves ", "has ", "holds ", "names ", "does ")


def about(name: str, message: str) -> str:
    """``name`` and a reader's message about it as one sentence: ``model.safetensors is a git-lfs
    pointer`` (a message that is a predicate), ``model.safetensors: header length ...`` (one that
    is not); a message that already starts with the name is kept as it is."""
    if message.startswith((f"{name} ", f"{name}: ")):
        return message
    return f"{name} {message}" if message.startswith(_PREDICATES) else f"{name}: {message}"


def finding(
    code: str,
    message: str,
    file: str | None = None,
    tensor: str | None = None,
    severity: Severity | str | None = None,
) -> Finding:
    """Build a Finding with the registered default severity unless one is given."""
    entry = REGISTRY[code]  # KeyError here means an unregistered code: a programming error
    sev = Severity(severity) if severity is not None else entry.severity
    return Finding(code=code, severity=sev, message=message, file=file, tensor=tensor)


# --- HFC0xx: layout --------------------------------------------------------------------------
register("HFC001", "error", "no weights",
         "from_pretrained finds no weight file and fails. Weights of another framework (tf_model.h5, "
         "flax_model.msgpack, *.gguf, *.onnx) are named: hfconv reads PyTorch and safetensors weights.",
         "Add model.safetensors (or pytorch_model.bin), or their sharded form with an index.",
         "no weight files found (expected model.safetensors, pytorch_model.bin or sharded shards)")
register("HFC002", "error", "shards without index",
         "Sharded weights are only found through their index json; without it from_pretrained "
         "sees no weights.",
         "Recreate model.safetensors.index.json (hfconv convert writes one) or re-save the model.",
         "3 shards model-0000{1..3}-of-00003.safetensors but no model.safetensors.index.json")
register("HFC003", "error", "index without shards",
         "The index promises shard files that are not in the folder.",
         "Upload the shard files, or delete the stale index.",
         "model.safetensors.index.json names 2 shards but none of them exists")
register("HFC004", "warning", "second weight format",
         "Two weight formats side by side: loaders pick one (safetensors first). When both hold "
         "the same tensor names, dtypes and shapes this is info (many repos ship both for old "
         "clients); when they disagree the unused set is stale, a warning: clients that read the "
         "other format get a different model.",
         "Delete the stale format (usually the .bin files), or re-convert it from the one loaders use.",
         "pytorch_model.bin sits beside model.safetensors but disagree with them (1 tensor differs, "
         "e.g. 'lm_head.weight' F32 [200, 32] vs F16 [200, 32]); loaders use safetensors, so the bin "
         "files are stale")
register("HFC005", "error", "shard numbering",
         "Shard names say '-of-0000N' but the set on disk disagrees: a shard is missing or a "
         "stale one from an earlier save is left over.",
         "Re-save or re-upload the complete shard set and delete shards from older saves.",
         "model-00002-of-00003.safetensors is missing from a 3-shard set")
register("HFC006", "error", "path escapes folder",
         "A name from the folder (index shard name, symlink) points outside it; a loader would "
         "read files the publisher never shipped.",
         "Use plain file names inside the folder; replace symlinks by the files.",
         "index names shard '../../etc/passwd', which is outside the model folder")
register("HFC007", "warning", "stale weight files",
         "Weight files that no index references and no loader will read.",
         "Delete them before uploading.",
         "model-00001-of-00004.safetensors is not referenced by model.safetensors.index.json")
register("HFC008", "error", "unreadable file",
         "A file hfconv needs cannot be opened or is not a regular file.",
         "Check permissions; replace special files (FIFOs, devices) and dangling symlinks by regular files.",
         "model.safetensors is not a regular file")
register("HFC009", "error", "no config",
         "Without config.json, from_pretrained cannot build the model (it fails before reading any "
         "weight), and the shape checks are skipped. A PEFT adapter folder (adapter_config.json) needs "
         "none and gets no finding.",
         "Add the model's config.json (model.config.save_pretrained(folder) writes it).",
         "config.json is missing: from_pretrained cannot build the model without it (checks against the "
         "config are skipped)")
register("HFC010", "error", "git-lfs pointer",
         "The file is a git-lfs pointer, not the weights: the LFS object was never pulled.",
         "Run `git lfs pull` (or download with huggingface_hub) before validating.",
         "pytorch_model.bin is a git-lfs pointer (LFS object not pulled)")
register("HFC011", "warning", "training leftover",
         "Files a training run leaves behind (training_args.bin, optimizer.pt, scheduler.pt, rng_state.pth, "
         "trainer_state.json) are not part of the model. Most are pickles: whoever runs torch.load on them "
         "(a resumed Trainer, a curious user) executes whatever they hold, and no loader of the model checks "
         "them. hfconv lists each pickle's globals without loading it: a warning when they are what "
         "Trainer writes (its argument classes, tensors, numpy's random state) or when there is no "
         "pickle in it, an error naming the global when anything else is imported, or for a zip "
         "torch might read differently from hfconv.",
         "Delete them from the folder before publishing (keep them in private storage if you resume "
         "training), or --ignore HFC011 if they must stay. An error means: do not torch.load the file.",
         "optimizer.pt is a training leftover; it does not belong in a published model folder, and its "
         "pickle references 'posix.system', which no training run writes: torch.load on it would run it")
register("HFC012", "warning", "safetensors format metadata",
         "The safetensors header has a __metadata__ block without 'format' (or with a value other than "
         "pt, tf, flax or mlx). transformers 4.x refuses the file ('does not contain the valid "
         "metadata'); transformers 5 and plain safetensors load it. A warning, or an error where the installed "
         "transformers is 4.x.",
         "Re-save with save_pretrained, or convert it (hfconv convert writes format=pt).",
         "model.safetensors: __metadata__ has no 'format' entry; transformers 4.x refuses to load it")
register("HFC101", "error", "file too short",
         "A safetensors file starts with an 8-byte header length; this file is shorter.",
         "Re-download the file; it is truncated or not safetensors.",
         "model.safetensors is 5 bytes long, shorter than the 8-byte header length")
register("HFC102", "error", "header too large",
         "The header length is absurd (over 100 MB, or past the end of the file); safetensors "
         "refuses it and hfconv does not allocate it.",
         "Re-create the file with safetensors.",
         "header length 18446744073709551615 exceeds the 100 MB limit")
register("HFC103", "warning", "header over 25 MB",
         "huggingface_hub refuses to parse safetensors headers over 25 MB (metadata API).",
         "Reshard, or move large metadata out of __metadata__.",
         "header is 30.1 MB; huggingface_hub refuses headers over 25 MB")
register("HFC104", "error", "header not valid JSON",
         "The header is not UTF-8 JSON text describing an object.",
         "Re-create the file with safetensors.",
         "header is not valid JSON: Expecting ',' delimiter at line 1 column 80")
register("HFC105", "error", "duplicate header key",
         "The header names a dtype/shape/data_offsets field or __metadata__ twice (safetensors refuses "
         "it), or a tensor twice where the entry safetensors keeps, the last, does not fit the file; two "
         "readers could see different tensors. (A repeated tensor whose last entry fits is HFC114.)",
         "Re-create the file with safetensors.",
         "tensor 'lm_head.weight' appears twice in the header")
register("HFC106", "error", "invalid tensor entry",
         "A tensor entry lacks dtype/shape/data_offsets or has values of the wrong type.",
         "Re-create the file with safetensors.",
         "entry for 'w' has no 'data_offsets'")
register("HFC107", "error", "unknown dtype",
         "The dtype is not one safetensors knows.",
         "Re-create the file with a supported dtype.",
         "tensor 'w' has unknown dtype 'F128'")
register("HFC108", "error", "size mismatch",
         "shape x dtype size differs from the byte range the header gives.",
         "Re-create the file with safetensors.",
         "tensor 'w' has shape [4, 4] F32 = 64 bytes but its byte range holds 60")
register("HFC109", "error", "bad data offsets",
         "Tensor byte ranges overlap, leave gaps, run backwards or past the data section.",
         "Re-create the file with safetensors.",
         "tensor 'b' starts at byte 64 but the previous tensor ended at 60 (gap or overlap)")
register("HFC110", "error", "truncated file",
         "The file is shorter than its header says: the download was cut.",
         "Re-download the file.",
         "data section needs 4096 bytes but the file holds 2048")
register("HFC111", "error", "trailing bytes",
         "Bytes after the last tensor: not covered by the header, a parser differential.",
         "Re-create the file with safetensors.",
         "file has 100 bytes after the last tensor")
register("HFC112", "error", "bad __metadata__",
         "__metadata__ must map strings to strings.",
         "Re-create the file with string metadata values.",
         "__metadata__ value for 'format' is not a string")
register("HFC113", "error", "too many tensors",
         "The header declares more tensors (or holds more JSON arrays and objects) than any real "
         "checkpoint does; parsing it would build gigabytes of objects, so it is refused unparsed.",
         "Re-create the file with safetensors; split the tensors over several shards.",
         "header declares about 1500000 tensors (objects), over the limit of 1000000")
register("HFC114", "warning", "header only serde reads this way",
         "The safetensors crate reads this header, but in a form other readers may read differently "
         "or refuse: a tensor name or __metadata__ key given twice (the crate keeps the last value), "
         "an entry written as an array [dtype, shape, data_offsets], a dtype written as {\"F32\": null}.",
         "Re-save the file with safetensors (save_file writes each key once, entries as objects).",
         "tensor 'lm_head.weight' appears twice in the header; safetensors keeps the last entry, "
         "other readers may keep the first")
register("HFC115", "error", "shape torch cannot build",
         "The header is well formed, but safetensors' get_tensor/load_file fails on this tensor: a "
         "dimension of 2**63 or more, a zero-element shape whose strides overflow int64, or an F4 "
         "tensor with an odd last dimension. load_file refuses the whole file, even where the tensor "
         "is a buffer loaders ignore (attn.masked_bias).",
         "Re-save the tensor with its real shape, or drop it from the file.",
         "tensor 'transformer.h.0.attn.masked_bias' has shape [0, 9223372036854775808]: dimension "
         "9223372036854775808 is over 2**63 - 1, which torch and numpy cannot hold")
register("HFC116", "error", "dtype safetensors cannot load",
         "The dtype is in the safetensors format (F6_E2M3, F6_E3M2), but the installed safetensors "
         "has no torch or numpy dtype for it: get_tensor fails with 'Dtype not understood'.",
         "Store the tensor in a dtype torch has (F8_*, F4 packed, BF16) or as raw U8 bytes.",
         "tensor 'w' has dtype F6_E2M3, which the installed safetensors cannot load into torch or "
         "numpy ('Dtype not understood')")

# --- HFC2xx: torch checkpoints --------------------------------------------------------------
register("HFC201", "error", "forbidden pickle global",
         "The pickle references a global outside the state-dict allow-list; loading it with "
         "torch.load executes code (a classic model-hub attack). hfconv never executes it.",
         "Do not load this file. Rebuild it from a trusted source, or convert trusted weights "
         "to safetensors.",
         "pickle references forbidden global 'os.system'")
register("HFC202", "error", "not a checkpoint",
         "The file is not a weight file at all (neither a torch checkpoint nor safetensors), whatever "
         "its name says: an image, a web page, text, a tar archive, an empty file.",
         "Replace it with the real weight file.",
         "pytorch_model.bin is an HTML page, not a torch checkpoint")
register("HFC203", "error", "malformed pickle",
         "The pickle cannot be parsed or uses opcodes a torch.save state dict never uses.",
         "Re-save the checkpoint with torch.save, or convert it to safetensors from a trusted copy.",
         "data.pkl: unsupported opcode STACK_GLOBAL at byte 12")
register("HFC204", "error", "malformed zip",
         "The zip container is damaged, holds entries torch would misread (duplicate or mismatched "
         "names, compressed storages, bad CRC of data.pkl), holds entries torch never reads "
         "(a hiding place), or is a zip bomb.",
         "Re-download or re-save the checkpoint.",
         "zip entry 'archive/data/0' is DEFLATE-compressed; torch requires stored storages")
register("HFC205", "error", "missing storage",
         "A tensor's storage record is missing from the archive or too small for the tensor.",
         "Re-save the checkpoint.",
         "tensor 'w' needs storage 'archive/data/3', which the zip does not contain")
register("HFC206", "info", "shared storage",
         "Several tensors share one storage (tied weights); safetensors cannot alias, so "
         "conversion drops or copies the alias.",
         "Nothing to do; hfconv convert handles it.",
         "lm_head.weight shares its storage with model.embed_tokens.weight")
register("HFC207", "info", "legacy checkpoint",
         "A pre-1.6 (non-zip) torch checkpoint; modern loaders still read it.",
         "Convert to safetensors: hfconv convert SRC DST.",
         "pytorch_model.bin is a legacy (pre-torch-1.6) checkpoint")
register("HFC208", "error", "not a state dict",
         "The checkpoint holds something other than a mapping of names to tensors.",
         "Save model.state_dict(), not the model object.",
         "top-level object is a list, not a state dict")
register("HFC209", "error", "bad tensor view",
         "A tensor's shape/stride/offset reach outside its storage.",
         "Re-save the checkpoint.",
         "tensor 'w' reads 4096 bytes from a 1024-byte storage")
register("HFC210", "error", "TorchScript archive",
         "A TorchScript archive, not a state dict; it carries code and from_pretrained cannot load it.",
         "Save the state dict (model.state_dict()) instead.",
         "pytorch_model.bin is a TorchScript archive")
register("HFC211", "error", "unsupported dtype",
         "The checkpoint uses a torch dtype or storage type hfconv cannot represent (complex128, "
         "quantized, sub-byte); its tensors cannot be checked or converted.",
         "Cast the tensors to a supported dtype (e.g. float32 or bfloat16) and re-save.",
         "data.pkl: uses torch.complex128, a dtype hfconv does not support")
register("HFC212", "info", "big-endian checkpoint",
         "The checkpoint was saved on a big-endian machine (its byteorder record says 'big'). "
         "torch.load swaps the bytes when it loads on a little-endian machine, so the file is fine; "
         "safetensors is little-endian by definition.",
         "Nothing to do; hfconv convert writes the swapped, little-endian bytes (and verifies them).",
         "pytorch_model.bin is a big-endian checkpoint; loaders swap its bytes on little-endian machines")
register("HFC213", "error", "ambiguous zip (parser differential)",
         "The zip can be read as more than one archive: bytes no central-directory entry covers (an "
         "orphan local header, data between entries), trailing data after the end record, or a comment "
         "that holds zip records (a complete second archive). torch's reader (miniz) takes the last end "
         "record; other readers take another one or stream local headers from the start, so a scanner "
         "and torch.load can see different pickles.",
         "Do not load the file; re-save the checkpoint with torch.save from a trusted copy.",
         "pytorch_model.bin: the zip comment holds a zip record signature b'PK\\x03\\x04' at byte 2101 "
         "(a second archive in the comment?)")

# --- HFC3xx: index vs shards ----------------------------------------------------------------
register("HFC301", "error", "indexed tensor missing",
         "The index maps a tensor to a shard that does not contain it; loading fails or leaves "
         "the weight uninitialised.",
         "Regenerate the index from the shards (hfconv convert rewrites it).",
         "index maps 'lm_head.weight' to model-00002-of-00002.safetensors, which does not contain it")
register("HFC302", "error", "tensor not indexed",
         "A shard holds a tensor the index does not list; loaders never load it.",
         "Regenerate the index from the shards.",
         "model-00001-of-00002.safetensors holds 'model.norm.weight', which the index does not list")
register("HFC303", "error", "tensor in wrong shard",
         "The index names the wrong shard for a tensor that exists in another shard.",
         "Regenerate the index from the shards.",
         "index maps 'w' to shard 1 but it is in model-00002-of-00002.safetensors")
register("HFC304", "error", "shard file missing",
         "The index references a shard file that does not exist.",
         "Upload the missing shard.",
         "model-00002-of-00002.safetensors is named by the index but missing")
register("HFC305", "error", "duplicate tensor",
         "The same tensor name is stored in several shards; which one loads depends on order.",
         "Remove the stale copy and regenerate the index.",
         "'lm_head.weight' is stored in 2 shards")
register("HFC306", "warning", "total_size mismatch",
         "metadata.total_size in the index differs from the real sum of tensor bytes; tools that "
         "plan memory or downloads from it are misled.",
         "Regenerate the index (total_size = sum of tensor bytes).",
         "metadata.total_size is 1000 but the tensors hold 1024 bytes")
register("HFC307", "error", "index malformed",
         "The index json lacks a weight_map mapping tensor names to shard file names.",
         "Regenerate the index.",
         "model.safetensors.index.json has no 'weight_map' object")
register("HFC308", "error", "shard unreadable",
         "A shard could not be read, so the index cannot be checked against it.",
         "Fix the shard (see the other findings on this file).",
         "model-00001-of-00002.safetensors could not be read; its index entries are unchecked")
register("HFC309", "error", "empty weights",
         "A weight file holds no tensors.",
         "Re-save the model.",
         "model.safetensors holds no tensors")

# --- HFC4xx: JSON files and schemas -------------------------------------------------------
register("HFC401", "error", "invalid JSON file",
         "A JSON file of the folder cannot be parsed strictly (syntax error, duplicate key, "
         "NaN, Infinity outside the files Python reads, top level not an object, absurd size or depth); "
         "loaders fail on it or, "
         "worse, two parsers read different values.",
         "Fix the JSON at the line and column given, or re-save the file with save_pretrained.",
         "config.json is not valid JSON: Expecting ',' delimiter at line 12 column 3")


def all_codes() -> dict[str, Code]:
    """Every registered code, importing the modules that register codes next to their checks."""
    import importlib

    # (hfconv.checks imports its custom-code and --deep checks only for a folder that needs them)
    for module in ("hfconv.checks", "hfconv.checks.custom_code", "hfconv.checks.deep", "hfconv.conversion",
                   "hfconv.load", "hfconv.fixing", "hfconv.comparison"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a missing dependency inside a module is a real error
                raise
    return dict(sorted(REGISTRY.items()))


def codes_markdown() -> str:
    """The README's table of finding codes: meaning, example, fix, and what ``hfconv fix`` repairs."""
    lines = ["| code | severity | what it means | example | fix | hfconv fix |", "|---|---|---|---|---|---|"]
    for entry in all_codes().values():
        cells = [entry.code, entry.severity.value, f"**{entry.title}**: {entry.why}", f"`{entry.example}`", entry.fix,
                 entry.fixable]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def update_readme(path: str = "README.md") -> bool:
    """Rewrite the code table between the README's markers; True when it changed."""
    start, end = "<!-- codes:start -->", "<!-- codes:end -->"
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{codes_markdown()}{end}{tail}"
    if new != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(new)
    return new != text


if __name__ == "__main__":  # python -m hfconv.findings [README.md]: regenerate the code table
    import sys

    # Run as __main__, this module is a second copy; the checks register into hfconv.findings.
    from hfconv.findings import update_readme

    changed = update_readme(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    print("README.md code table " + ("updated" if changed else "already up to date"))
