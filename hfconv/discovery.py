"""Discover what a model folder holds, from file names alone (nothing is parsed here).

The weight-file selection mirrors ``from_pretrained``: ``model.safetensors``, then
``model.safetensors.index.json``, then ``pytorch_model.bin``, then ``pytorch_model.bin.index.json``.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

from .fsutil import is_inside

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

# Hub naming (`-00001-of-00003`) and the older unpadded naming (`-1-of-3`).
SHARD_RE = {
    "safetensors": re.compile(r"^model-(\d+)-of-(\d+)\.safetensors$"),
    "bin": re.compile(r"^pytorch_model-(\d+)-of-(\d+)\.bin$"),
}
SINGLE = {"safetensors": SAFE_SINGLE, "bin": BIN_SINGLE}
INDEX = {"safetensors": SAFE_INDEX, "bin": BIN_INDEX}
ADAPTER = {"safetensors": "adapter_model.safetensors", "bin": "adapter_model.bin"}

JSON_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "added_tokens.json",
    "preprocessor_config.json",
    "adapter_config.json",
)

# Files a training run leaves behind that do not belong in a published model folder.
TRAINING_LEFTOVERS = frozenset(
    {"training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
     "optimizer.bin", "scaler.pt"}
)

MAX_LISTED_FILES = 100_000  # bounds discovery on hostile folders with millions of entries


@dataclass(frozen=True)
class ShardName:
    """A shard file name parsed into its number and the total it claims."""

    name: str
    number: int
    total: int


def parse_shard_name(name: str, fmt: str) -> ShardName | None:
    m = SHARD_RE[fmt].match(name)
    if not m:
        return None
    return ShardName(name, int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True)
class WeightSet:
    """All files of one weight format in the folder, as found on disk."""

    format: str
    """``safetensors`` or ``bin``."""
    single: str | None
    """``model.safetensors`` / ``pytorch_model.bin`` when present."""
    index: str | None
    """The index json when present."""
    shard_files: tuple[str, ...]
    """Files on disk named like shards of this format (either naming), sorted."""

    @property
    def present(self) -> bool:
        return bool(self.single or self.index or self.shard_files)


@dataclass(frozen=True)
class ModelFolder:
    """One model folder: what is there and which weights a loader would pick."""

    root: Path
    files: tuple[str, ...]
    """Every regular file and symlink, relative to root, sorted (bounded)."""
    special_files: tuple[str, ...]
    """FIFOs, sockets and devices: never opened."""
    weight_sets: dict[str, WeightSet]
    truncated_listing: bool = False
    blob_root: Path | None = None
    """For a Hub cache snapshot: the repo's ``blobs/`` folder its symlinks may point into."""
    linked_dirs: tuple[str, ...] = ()
    """Symlinks to directories, relative to root: never followed (their files are not listed)."""

    # -- derived ---------------------------------------------------------------------------
    @property
    def loaded_set(self) -> WeightSet | None:
        """The weight set from_pretrained loads (safetensors first), or None."""
        safe, binary = self.weight_sets["safetensors"], self.weight_sets["bin"]
        if safe.single or safe.index:
            return safe
        if binary.single or binary.index:
            return binary
        # Shards without an index: nothing loads, but report the set that is there.
        if safe.shard_files:
            return safe
        if binary.shard_files:
            return binary
        return None

    @property
    def weight_format(self) -> str:
        present = [fmt for fmt, ws in self.weight_sets.items() if ws.present]
        if len(present) == 2:
            return "mixed"
        return present[0] if present else "none"

    def has(self, name: str) -> bool:
        return name in self._file_set

    @cached_property
    def _file_set(self) -> frozenset[str]:
        return frozenset(self.files)

    def path(self, name: str) -> Path:
        return self.root / name

    def contains(self, name: str) -> bool:
        """True when ``name`` resolves inside the folder (or, in a Hub cache, into its blobs)."""
        candidate = self.root / name
        return is_inside(self.root, candidate) or (
            self.blob_root is not None and is_inside(self.blob_root, candidate)
        )

    def is_regular(self, name: str) -> bool:
        return name in self._file_set and name not in self.special_files

    @property
    def python_files(self) -> tuple[str, ...]:
        return tuple(f for f in self.files if f.endswith(".py"))


def discover(root: str | os.PathLike) -> ModelFolder:
    """List a model folder and classify its files by name.

    Args:
        root: path of an existing directory.

    Returns:
        The ModelFolder. Nothing inside any file is read.

    Raises:
        NotADirectoryError: root is not a directory.
    """
    root_path = Path(root)
    if not root_path.is_dir():
        raise NotADirectoryError(str(root))
    blob_root = _hub_blob_root(root_path)
    files, special, truncated, linked_dirs = _list_files(root_path)
    top_level = [f for f in files if "/" not in f]
    weight_sets = {fmt: _weight_set(fmt, top_level) for fmt in ("safetensors", "bin")}
    if not any(ws.present for ws in weight_sets.values()) and "adapter_config.json" in top_level:
        # A PEFT adapter folder: PeftModel.from_pretrained reads adapter_model.safetensors first.
        adapter = next((fmt for fmt in ("safetensors", "bin") if ADAPTER[fmt] in top_level), None)
        if adapter is not None:
            weight_sets[adapter] = replace(weight_sets[adapter], single=ADAPTER[adapter])
    return ModelFolder(
        root=root_path,
        files=tuple(files),
        special_files=tuple(special),
        weight_sets=weight_sets,
        truncated_listing=truncated,
        blob_root=blob_root,
        linked_dirs=tuple(linked_dirs),
    )


def _hub_blob_root(root: Path) -> Path | None:
    """Hub cache snapshots are symlinks into ``models--org--name/blobs``; that folder is trusted."""
    resolved = root.resolve()
    if resolved.parent.name == "snapshots" and resolved.parent.parent.name.startswith("models--"):
        return resolved.parent.parent / "blobs"
    return None


def hub_cache_dir() -> Path:
    """The local Hub cache folder, honouring the same variables as huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home) / "hub"


_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_model_path(path: str) -> str:
    """A local folder as given, or a Hub repo id (``org/name``) resolved offline in the Hub cache.

    Returns the path unchanged when it is not a cached repo id, so callers report it as missing.
    """
    if os.path.exists(path) or not _REPO_ID.match(path):
        return path
    repo = hub_cache_dir() / ("models--" + path.replace("/", "--"))
    ref = repo / "refs" / "main"
    snapshots = repo / "snapshots"
    try:
        revision = ref.read_text().strip() if ref.is_file() else ""
    except OSError:
        revision = ""
    if revision and is_safe_revision(revision) and (snapshots / revision).is_dir():
        return str(snapshots / revision)
    if snapshots.is_dir():
        candidates = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
        if candidates:
            return str(candidates[-1])
    return path


def is_safe_revision(revision: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{7,64}", revision))


def _weight_set(fmt: str, names: list[str]) -> WeightSet:
    shards = sorted(n for n in names if SHARD_RE[fmt].match(n))
    return WeightSet(
        format=fmt,
        single=SINGLE[fmt] if SINGLE[fmt] in names else None,
        index=INDEX[fmt] if INDEX[fmt] in names else None,
        shard_files=tuple(shards),
    )


def _list_files(root: Path) -> tuple[list[str], list[str], bool, list[str]]:
    """Walk root without following symlinked directories; skip VCS and cache folders.

    Returns (files, special files, truncated, symlinked directories); all relative to root.
    """
    files: list[str] = []
    special: list[str] = []
    linked_dirs: list[str] = []
    truncated = False
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in (".git", ".cache", "__pycache__"))
        rel_dir = os.path.relpath(dirpath, root)
        # os.walk lists a symlink to a directory among dirnames and does not descend into it.
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):
                linked_dirs.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            try:
                mode = os.lstat(os.path.join(dirpath, name)).st_mode
            except OSError:
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                special.append(rel)
            files.append(rel)
            if len(files) >= MAX_LISTED_FILES:
                truncated = True
                return sorted(files), special, truncated, sorted(linked_dirs)
    return sorted(files), special, truncated, sorted(linked_dirs)
