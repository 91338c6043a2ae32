"""Discover what a model folder holds, from file names alone (nothing is parsed here).

The weight-file selection mirrors ``from_pretrained``: ``model.safetensors``, then
``model.safetensors.index.json``, then ``pytorch_model.bin``, then ``pytorch_model.bin.index.json``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from .fsutil import is_safe_relative_name

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

MAX_LISTED_FILES = 100_000
"""Entries (files and folders) discovery lists before it stops: bounds a hostile folder with
millions of entries. A folder past it is reported (HFC015), never silently cut."""
MAX_DEPTH = 32
"""Folder levels below the model folder that discovery enters. Model repos nest a few levels
(``checkpoint-500/``, ``runs/<date>/``); a folder deeper than this is reported (HFC016)."""
_PATH_MAX = 4096
SKIPPED_DIRS = frozenset({".git", ".cache", "__pycache__"})


class ShardName(NamedTuple):
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
    truncated_in: str = ""
    """The folder (relative to root, "" for root) being listed when MAX_LISTED_FILES was hit."""
    blob_root: Path | None = None
    """For a Hub cache snapshot: the repo's ``blobs/`` folder its symlinks may point into."""
    linked_dirs: tuple[str, ...] = ()
    """Symlinks to directories, relative to root: never followed (their files are not listed)."""
    symlinks: tuple[str, ...] = ()
    """The entries of ``files`` that are symlinks."""
    too_deep: tuple[str, ...] = ()
    """Folders at MAX_DEPTH that hold further folders discovery did not enter."""

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
        # Memoized: the readers and checks ask for each file's path several times, and a pathlib
        # join costs about 10 us (a folder of 2,000 shards asked 6,000 times).
        found = self._paths.get(name)
        if found is None:
            found = self._paths[name] = self.root / name
        return found

    @cached_property
    def _paths(self) -> dict[str, Path]:
        return {}

    def is_symlink(self, name: str) -> bool:
        """An entry of ``files`` or ``linked_dirs`` that is a symlink (a set lookup)."""
        return name in self._symlink_set

    @cached_property
    def _symlink_set(self) -> frozenset[str]:
        return frozenset(self.symlinks) | frozenset(self.linked_dirs)

    @cached_property
    def _resolved_roots(self) -> tuple[str, ...]:
        # A Hub cache's blobs may link on into its cache-wide store (``<cache>/blobs``, huggingface_hub's
        # shared Xet blobs): trusted as the repo's own blobs are.
        roots = [self.root] if self.blob_root is None else [self.root, self.blob_root,
                                                              self.blob_root.parent.parent / "blobs"]
        return tuple(os.path.realpath(r) for r in roots)

    def contains(self, name: str) -> bool:
        """True when ``name`` resolves inside the folder (or, in a Hub cache, into its blobs).

        Without a system call where the listing already answers: a plain relative name none of
        whose components discovery saw as a symlink lies inside (the listing saw every folder,
        unless it was cut short). Everything else is resolved."""
        links = self._symlink_set
        if name in self._file_set and name not in links:
            return True  # listed by the walk, which never follows a symlink
        if not is_safe_relative_name(name):
            return self._resolves_inside(name)
        return self._safe_name_inside(name)

    def contains_safe_name(self, name: str) -> bool:
        """``is_safe_relative_name(name) and contains(name)``, checking the name once."""
        if not is_safe_relative_name(name):
            return False
        if name in self._file_set and name not in self._symlink_set:
            return True
        return self._safe_name_inside(name)

    def _safe_name_inside(self, name: str) -> bool:
        links = self._symlink_set
        if self.truncated_listing or self.too_deep or "\\" in name:
            return self._resolves_inside(name)
        if links:
            # The walk lists nothing deeper than MAX_DEPTH folders, so no deeper prefix is a link.
            parts = name.split("/", MAX_DEPTH + 1)[:MAX_DEPTH + 1]
            prefix = ""
            for part in parts:
                prefix = f"{prefix}/{part}" if prefix else part
                if prefix in links:
                    return self._resolves_inside(name)
        return True

    def _resolves_inside(self, name: str) -> bool:
        root = self._resolved_roots[0]
        if len(name) > _PATH_MAX:
            return False  # no system call opens it; and resolving it would cost time quadratic in its length
        try:
            if name in self._symlink_set:
                # The walk saw every folder above it as a folder: resolve from the link's target on.
                parent = os.path.join(root, os.path.dirname(name))
                resolved = os.path.realpath(os.path.join(parent, os.readlink(os.path.join(root, name))))
            else:
                resolved = os.path.realpath(os.path.join(root, name))
        except (OSError, ValueError, RuntimeError):
            return False
        return any(resolved == r or resolved.startswith(r.rstrip(os.sep) + os.sep) for r in self._resolved_roots)

    def is_regular(self, name: str) -> bool:
        return name in self._file_set and not self.is_special(name)

    def is_special(self, name: str) -> bool:
        """A FIFO, socket or device (never opened); a set lookup, where ``special_files`` is a tuple."""
        return name in self._special_set

    @cached_property
    def _special_set(self) -> frozenset[str]:
        return frozenset(self.special_files)

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
    listing = _list_files(root_path)
    files = listing.files
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
        special_files=tuple(listing.special),
        weight_sets=weight_sets,
        truncated_listing=listing.truncated,
        truncated_in=listing.truncated_in,
        blob_root=blob_root,
        linked_dirs=tuple(listing.linked_dirs),
        symlinks=tuple(listing.symlinks),
        too_deep=tuple(listing.too_deep),
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


_HUB_ID = re.compile(r"^(?:(?P<org>[A-Za-z0-9][A-Za-z0-9._-]*)/)?(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)"
                     r"(?:@(?P<revision>[^\x00-\x20@]{1,256}))?$")
_SAFE_REF = re.compile(r"^[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
MAX_SNAPSHOTS = 10_000
"""Snapshot folders one repo's cache entry lists when a revision is a commit prefix."""


class HubSnapshot(NamedTuple):
    """A repo id resolved offline in the local Hub cache."""

    repo_id: str
    """``org/name`` (or ``name``)."""
    revision: str
    """As asked: a branch, a tag, a commit or a commit prefix (``main`` when none was given)."""
    commit: str
    """The snapshot's commit hash."""
    folder: Path
    """``<cache>/models--org--name/snapshots/<commit>``; reports name it ``org/name@<short commit>``
    (:func:`hub_snapshot_name`)."""


def resolve_hub_id(text: str, cache: Path | None = None) -> HubSnapshot | None:
    """``org/name``, ``name`` or either with ``@revision`` (a branch or tag in ``refs/``, a commit or
    a commit prefix of a snapshot) resolved in the local Hub cache, offline.

    Returns:
        The snapshot; None when ``text`` is no repo id or the cache holds no such repo.

    Raises:
        UsageError: the repo is cached but the revision is not (or, with no revision given, the
            cache has no ``refs/main``: the newest snapshot might be any branch's, so none is guessed).
    """
    from .errors import UsageError

    match = _HUB_ID.match(text)
    if match is None:
        return None
    repo_id = f"{match['org']}/{match['name']}" if match["org"] else match["name"]
    repo = (cache or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    try:
        if not repo.is_dir():
            return None
    except OSError:
        return None
    asked = match["revision"]
    revision = asked or "main"
    if not _SAFE_REF.match(revision) or any(part in (".", "..") for part in revision.split("/")):
        raise UsageError(f"{text}: {revision!r} is not a branch, tag or commit name")
    snapshots = repo / "snapshots"
    ref = repo / "refs" / revision
    commit = ""
    try:
        if ref.is_file():
            with open(ref, "rb") as handle:
                commit = handle.read(256).decode("ascii", "replace").strip()
    except OSError:
        commit = ""
    if commit:
        if not _COMMIT.match(commit) or not (snapshots / commit).is_dir():
            raise UsageError(f"{text}: the Hub cache's refs/{revision} names {commit[:64]!r}, which has no snapshot "
                             "folder (the cache is incomplete); download the repo again")
        return HubSnapshot(repo_id, revision, commit, snapshots / commit)
    cached = _snapshot_names(snapshots)
    if re.fullmatch(r"[0-9a-f]{4,40}", revision):
        found = [name for name in cached if name.startswith(revision)]
        if len(found) == 1:
            return HubSnapshot(repo_id, revision, found[0], snapshots / found[0])
        if len(found) > 1:
            raise UsageError(f"{text}: the commit prefix {revision} matches {len(found)} cached snapshots "
                             f"({', '.join(n[:12] for n in found[:5])}); give more of the hash")
    shown = ", ".join(n[:7] for n in cached[:5]) + (", ..." if len(cached) > 5 else "") if cached else "none"
    if asked is None:
        raise UsageError(f"{repo_id} is in the local Hub cache but it has no refs/main, so which snapshot is the "
                         f"main branch is unknown; name a revision: {repo_id}@<branch, tag or commit> "
                         f"(cached snapshots: {shown})")
    raise UsageError(f"{text}: the local Hub cache has no branch, tag or commit {revision!r} of {repo_id} "
                     f"(cached snapshots: {shown})")


def _snapshot_names(snapshots: Path) -> list[str]:
    names: list[str] = []
    try:
        with os.scandir(snapshots) as entries:
            for entry in entries:
                if len(names) >= MAX_SNAPSHOTS:
                    break
                if _COMMIT.match(entry.name) and entry.is_dir(follow_symlinks=False):
                    names.append(entry.name)
    except OSError:
        return []
    return sorted(names)


def hub_snapshot_name(path: str | os.PathLike) -> str | None:
    """``org/name@<short commit>`` when ``path`` is a snapshot folder of a Hub cache, else None."""
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        return None
    repo = resolved.parent.parent
    if resolved.parent.name != "snapshots" or not repo.name.startswith("models--") or not _COMMIT.match(resolved.name):
        return None
    return f"{repo.name[len('models--'):].replace('--', '/')}@{resolved.name[:7]}"


def resolve_model_path(path: str) -> str:
    """A local folder as given, or a Hub repo id (``org/name[@revision]``, ``name``) resolved offline in
    the Hub cache (:func:`resolve_hub_id`).

    Returns the path unchanged when it is not a cached repo id, so callers report it as missing.

    Raises:
        UsageError: a cached repo whose revision is not in the cache.
    """
    if os.path.exists(path):
        return path
    snapshot = resolve_hub_id(path)
    return str(snapshot.folder) if snapshot is not None else path


def _weight_set(fmt: str, names: list[str]) -> WeightSet:
    shards = sorted(n for n in names if SHARD_RE[fmt].match(n))
    return WeightSet(
        format=fmt,
        single=SINGLE[fmt] if SINGLE[fmt] in names else None,
        index=INDEX[fmt] if INDEX[fmt] in names else None,
        shard_files=tuple(shards),
    )


@dataclass
class _Listing:
    files: list[str]
    special: list[str]
    linked_dirs: list[str]
    symlinks: list[str]
    too_deep: list[str]
    truncated: bool = False
    truncated_in: str = ""


def _list_files(root: Path) -> _Listing:
    """List root breadth first, without following symlinked folders and without recursion.

    The top level (where loaders look) comes first; at most MAX_LISTED_FILES entries (files and
    folders) and MAX_DEPTH levels are listed, and the listing says where it stopped. VCS and
    cache folders are skipped. Folders that cannot be listed (permissions) are skipped, as a
    loader running as the same user would not see their files either. All names are relative
    to root, with ``/`` separators; ``files`` is sorted.
    """
    listing = _Listing([], [], [], [], [])
    entries = 0
    level: list[str] = [""]  # folders of the current depth, relative to root ("" is root)
    for depth in range(MAX_DEPTH + 1):
        next_level: list[str] = []
        for rel_dir in level:
            try:
                with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in children:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_link = entry.is_symlink()
                except OSError:
                    continue
                if is_dir and entry.name in SKIPPED_DIRS:
                    continue
                if entries >= MAX_LISTED_FILES:
                    listing.truncated, listing.truncated_in = True, rel_dir
                    listing.files.sort()
                    listing.linked_dirs.sort()
                    return listing
                entries += 1
                if is_dir:
                    if depth < MAX_DEPTH:
                        next_level.append(rel)
                    elif not listing.too_deep or listing.too_deep[-1] != rel_dir:
                        listing.too_deep.append(rel_dir)
                    continue
                if is_link:
                    if _points_to_dir(entry):
                        listing.linked_dirs.append(rel)
                        continue
                    listing.symlinks.append(rel)
                elif not _is_regular(entry):
                    listing.special.append(rel)
                listing.files.append(rel)
        level = next_level
        if not level:
            break
    listing.files.sort()
    listing.linked_dirs.sort()
    return listing


def _is_regular(entry: os.DirEntry) -> bool:
    """From the directory entry's type where the file system gives one (no system call)."""
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def _points_to_dir(entry: os.DirEntry) -> bool:
    """A symlink whose target is a folder (os.walk lists those among the folders)."""
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False
