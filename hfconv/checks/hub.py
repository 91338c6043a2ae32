"""Hub readiness: what makes an upload to the Hugging Face Hub fail at its end.

* Size limits the Hub states (https://huggingface.co/docs/hub/storage-limits): a file over 50 GB
  is refused, over 20 GB is past the recommended size; more than 10,000 entries in one folder or
  100,000 files in a repository degrade or break it (HFC035-HFC038).
* In a git working tree (a ``.git`` next to or above the folder): a file over 10 MiB that
  ``.gitattributes`` does not route to git-lfs (``filter=lfs``) makes ``git push`` to the Hub fail
  (HFC039). The attributes and ignore rules are read here, without running git: the subset of
  gitattributes(5) and gitignore(5) that decides it (globs, ``**``, patterns without a slash
  matching a name at any depth, later lines and deeper files overriding earlier ones,
  ``info/attributes`` and ``info/exclude`` of the repository, also from a linked worktree or a
  submodule, ``core.attributesFile`` and ``core.excludesFile``: :mod:`hfconv.gitrepo`). Ignored
  files are not pushed and not reported.
* In a Hub cache snapshot, with ``deep``: every blob against the hash that is its file name (the
  sha256 of an LFS file, the git blob id of another), offline (HFC040).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..contents import FolderContents
from ..discovery import MAX_LISTED_FILES, ModelFolder
from ..findings import Finding, finding, register
from ..fsutil import open_regular
from ..gitrepo import read_text, repository, work_tree
from ..tensors import FormatError
from ..units import human_bytes

GB = 1000**3
HUB_MAX_FILE = 50 * GB
"""The Hub refuses a file larger than this (decimal gigabytes, as the Hub's storage limits say)."""
HUB_RECOMMENDED_FILE = 20 * GB
"""The Hub's recommended largest file; weights past it should be sharded."""
HUB_MAX_FOLDER_ENTRIES = 10_000
"""The Hub's recommended most files and folders in one folder."""
HUB_MAX_FILES = 100_000
"""The Hub's recommended most files in one repository."""
LFS_THRESHOLD = 10 * 1024 * 1024
"""The Hub refuses a ``git push`` holding a file larger than 10 MiB that is not stored in git-lfs."""
MAX_RULE_FILES = 256
"""Folders above and inside the model folder whose .gitattributes / .gitignore are read."""
_CHUNK = 8 * 1024 * 1024

register("HFC035", "error", "file too large for the Hub",
         "The Hub refuses files larger than 50 GB: the upload of this file fails.",
         "Split the weights into shards (hfconv convert --max-shard-size 5GB writes them with an index); split or "
         "leave out any other file of that size.",
         "model.safetensors is 64.0 GB, over the 50 GB the Hub accepts per file; reshard it with convert's "
         "max_shard_size (e.g. 5GB)")
register("HFC036", "warning", "file over the Hub's recommended size",
         "The Hub recommends files of at most 20 GB: larger ones upload and download slowly, cannot resume "
         "well, and are close to the 50 GB the Hub refuses.",
         "Reshard the weights (hfconv convert --max-shard-size 5GB); transformers' save_pretrained shards at "
         "5 GB by default.",
         "model.safetensors is 24.0 GB, over the 20 GB the Hub recommends per file; reshard it with convert's "
         "max_shard_size (e.g. 5GB)")
register("HFC037", "warning", "folder with too many entries",
         "The Hub recommends at most 10,000 files and folders in one folder; past that, listing and "
         "uploading the repository slow down or fail.",
         "Group the files into subfolders, or leave logs and per-step outputs out of the model repository.",
         "runs/ holds 12,500 files and folders, over the 10,000 per folder the Hub recommends")
register("HFC038", "warning", "repository with too many files",
         "The Hub recommends at most 100,000 files in one repository; past that, uploads and clones slow "
         "down or fail.",
         "Leave logs, caches and per-step outputs out of the model repository (a model folder holds a few "
         "dozen files).",
         "the folder holds more than 100,000 files and folders, over the 100,000 files the Hub recommends per "
         "repository")
register("HFC039", "error", "large file not in git-lfs",
         "The folder is in a git working tree, and this file is larger than 10 MiB but .gitattributes does not "
         "route it to git-lfs (filter=lfs). The Hub rejects a git push holding it, and git stores the whole "
         "file in every clone's history.",
         "Route it to LFS before committing: git lfs track '*.safetensors' (or the file's own pattern) writes "
         "the line to .gitattributes; the Hub's default .gitattributes covers the usual weight formats.",
         "model.safetensors is 2.1 GB and .gitattributes does not route it to git-lfs (no filter=lfs for "
         "'model.safetensors'); the Hub rejects a git push with it: run git lfs track '*.safetensors'")
register("HFC040", "error", "Hub cache blob does not match its hash",
         "In a Hub cache, each file of a snapshot is a link to a blob named by its hash (the sha256 of an LFS "
         "file, the git blob id of any other). This blob's bytes hash to something else: the download was "
         "cut short or the file was changed or damaged on disk since.",
         "Download the file again (huggingface_hub's hf_hub_download with force_download=True), or delete the "
         "blob and the snapshot's link to it.",
         "model.safetensors: its blob 3a7f...e1 in the Hub cache hashes to 9b02...44 (sha256); the download "
         "is corrupt")


def check_hub(contents: FolderContents) -> Iterator[Finding]:
    """HFC035-HFC040: the Hub's size limits and git-lfs routing in a git working tree (when
    ``contents.options.publishing``: validate's pre-publish checks), cached blobs (with ``deep``)."""
    folder = contents.folder
    if contents.options.publishing:
        yield from _size_limits(folder)
        yield from _lfs_routing(folder)
    if contents.options.deep and folder.blob_root is not None:
        yield from _blob_hashes(folder)


# --- sizes and counts ------------------------------------------------------------------------------
def _size_limits(folder: ModelFolder) -> Iterator[Finding]:
    weights = {n for ws in folder.weight_sets.values() for n in (ws.single, *ws.shard_files) if n}
    for name in folder.files:
        if folder.is_special(name) or not folder.contains(name):
            continue
        try:
            size = os.stat(folder.path(name)).st_size
        except OSError:
            continue  # a dangling link or a vanished file: the layout checks name it
        if size <= HUB_RECOMMENDED_FILE:
            continue
        advice = ("; reshard it with convert's max_shard_size (e.g. 5GB)" if name in weights or
                  name.endswith((".safetensors", ".bin", ".pt", ".pth")) else "; split it or leave it out")
        if size > HUB_MAX_FILE:
            yield finding("HFC035", f"{name} is {human_bytes(size)}, over the 50 GB the Hub accepts per file{advice}",
                          file=name)
        else:
            yield finding("HFC036", f"{name} is {human_bytes(size)}, over the 20 GB the Hub recommends per "
                          f"file{advice}", file=name)
    entries: Counter[str] = Counter()
    folders: set[str] = set()
    for name in (*folder.files, *folder.linked_dirs):
        parent, _, _ = name.rpartition("/")
        entries[parent] += 1
        while parent and parent not in folders:  # each folder is an entry of its own parent, once
            folders.add(parent)
            grand, _, _ = parent.rpartition("/")
            entries[grand] += 1
            parent = grand
    for parent, count in sorted(entries.items()):
        if count > HUB_MAX_FOLDER_ENTRIES:
            where = f"{parent}/" if parent else "the model folder"
            more = "more than " if folder.truncated_listing and parent == folder.truncated_in else ""
            yield finding("HFC037", f"{where} holds {more}{count:,} files and folders, over the "
                          f"{HUB_MAX_FOLDER_ENTRIES:,} per folder the Hub recommends", file=parent or None)
    if folder.truncated_listing or len(folder.files) > HUB_MAX_FILES:
        yield finding("HFC038", f"the folder holds more than {MAX_LISTED_FILES:,} files and folders, over the "
                      f"{HUB_MAX_FILES:,} files the Hub recommends per repository")


# --- git-lfs routing ---------------------------------------------------------------------------------
def _lfs_routing(folder: ModelFolder) -> Iterator[Finding]:
    try:
        resolved = folder.root.resolve()
    except (OSError, RuntimeError):
        return
    found = work_tree(resolved)
    if found is None:
        return
    top = Path(found)
    base = os.path.relpath(resolved, top).replace(os.sep, "/")
    base = "" if base == "." else base + "/"
    rules = GitRules(top)
    links = frozenset(folder.symlinks)
    for name in folder.files:
        if name in links or folder.is_special(name):
            continue  # git stores a symlink as its target's name, never the bytes it points to
        try:
            size = os.lstat(folder.path(name)).st_size
        except OSError:
            continue
        if size <= LFS_THRESHOLD:
            continue
        path = base + name
        if rules.ignored(path):
            continue
        if rules.attribute(path, "filter") == "lfs":
            continue
        suffix = name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
        track = f"'*.{suffix}'" if suffix else repr(name.rsplit("/", 1)[-1])
        yield finding("HFC039", f"{name} is {human_bytes(size)} and .gitattributes does not route it to git-lfs "
                      f"(no filter=lfs for {path!r}); the Hub rejects a git push with it: run git lfs track {track}",
                      file=name)


@dataclass
class _Rule:
    regex: re.Pattern[str]
    base: str
    """The folder (relative to the top of the working tree, ``""`` or ending in ``/``) of the file it is from."""
    basename_only: bool
    must_be_dir: bool = False
    negated: bool = False
    attributes: dict[str, str | bool | None] = field(default_factory=dict)

    def matches(self, path: str, is_dir: bool = False) -> bool:
        if self.must_be_dir and not is_dir:
            return False
        if not path.startswith(self.base):
            return False
        rest = path[len(self.base):]
        if self.basename_only:
            rest = rest.rsplit("/", 1)[-1]
        return self.regex.fullmatch(rest) is not None


class GitRules:
    """The attributes and ignore rules git applies under one working tree, read lazily, per folder."""

    def __init__(self, top: Path) -> None:
        self.top = top
        self._attributes: dict[str, list[_Rule]] = {}
        self._ignores: dict[str, list[_Rule]] = {}
        self._read = 0
        repo = repository(top)
        # Lowest precedence first (the last matching line wins): the system's and the global
        # attribute files, then the tree's .gitattributes (by depth), then info/attributes.
        self._low_attributes = [rule for path in repo.attributes_files
                                for rule in _parse_attributes(read_text(path), "")]
        self._info_attributes = _parse_attributes(read_text(repo.info_attributes), "") if repo.info_attributes else []
        # core.excludesFile, then info/exclude, then the tree's .gitignore files.
        self._info_exclude = [rule for path in (repo.excludes_file, repo.info_exclude) if path
                              for rule in _parse_ignores(read_text(path), "")]

    def _folder_rules(self, folder: str, kind: str) -> list[_Rule]:
        cache_ = self._attributes if kind == ".gitattributes" else self._ignores
        if folder not in cache_:
            self._read += 1
            if self._read > 2 * MAX_RULE_FILES:
                text = ""
            else:
                text = read_text(self.top / folder / kind) if folder else read_text(self.top / kind)
            base = f"{folder}/" if folder else ""
            cache_[folder] = _parse_attributes(text, base) if kind == ".gitattributes" else _parse_ignores(text, base)
        return cache_[folder]

    @staticmethod
    def _folders(path: str) -> list[str]:
        parts = path.split("/")[:-1]
        return ["", *("/".join(parts[:i + 1]) for i in range(len(parts)))]

    def attribute(self, path: str, name: str) -> str | bool | None:
        """The value of attribute ``name`` for ``path`` (relative to the top, ``/`` separated): a
        string, True (set), False (unset) or None (unspecified)."""
        value: str | bool | None = None
        rules = [r for folder in self._folders(path) for r in self._folder_rules(folder, ".gitattributes")]
        for rule in (*self._low_attributes, *rules, *self._info_attributes):
            if name in rule.attributes and rule.matches(path):
                value = rule.attributes[name]
        return value

    def ignored(self, path: str) -> bool:
        """Whether git would leave ``path`` (a file) out of ``git add``: it, or a folder above it, is ignored."""
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            sub = "/".join(parts[:depth])
            is_dir = depth < len(parts)
            verdict = False
            rules = [r for folder in self._folders(sub) for r in self._folder_rules(folder, ".gitignore")]
            for rule in (*self._info_exclude, *rules):
                if rule.matches(sub, is_dir):
                    verdict = not rule.negated
            if verdict:
                return True
        return False


_MACROS = {"binary": {"diff": False, "merge": False, "text": False}}


def _parse_attributes(text: str, base: str) -> list[_Rule]:
    rules: list[_Rule] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith('"'):
            end = _closing_quote(line)
            if end < 0:
                continue
            pattern, rest = _unquote(line[1:end]), line[end + 1:]
        else:
            pattern, _, rest = line.partition(" ") if " " in line else line.partition("\t")
        if pattern.startswith("[attr]") or pattern.startswith("!"):
            continue  # macro definitions (not followed here) and negative patterns (git refuses them)
        attributes: dict[str, str | bool | None] = {}
        for word in rest.split():
            if word.startswith("-"):
                attributes[word[1:]] = False
            elif word.startswith("!"):
                attributes[word[1:]] = None
            elif "=" in word:
                key, _, value = word.partition("=")
                attributes[key] = value
            else:
                attributes.update(_MACROS.get(word, {}))
                attributes[word] = True
        rule = _compile(pattern, base, attributes)
        if rule is not None:
            rules.append(rule)
    return rules


def _parse_ignores(text: str, base: str) -> list[_Rule]:
    rules: list[_Rule] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        stripped = line.rstrip(" \t")
        if stripped.endswith("\\") and len(stripped) < len(line):
            stripped += line[len(stripped)]  # an escaped trailing space stays
        negated = stripped.startswith("!")
        if negated:
            stripped = stripped[1:]
        rule = _compile(stripped, base, {})
        if rule is not None:
            rule.negated = negated
            rules.append(rule)
    return rules


def _compile(pattern: str, base: str, attributes: dict[str, str | bool | None]) -> _Rule | None:
    if not pattern:
        return None
    must_be_dir = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern:
        return None
    basename_only = "/" not in pattern
    pattern = pattern.lstrip("/") if not basename_only else pattern
    try:
        regex = _wildmatch(pattern)
    except re.error:
        return None
    return _Rule(regex, base, basename_only, must_be_dir, False, attributes)


@cache
def _wildmatch(pattern: str) -> re.Pattern[str]:
    """git's wildmatch with WM_PATHNAME as a regular expression: ``*`` and ``?`` stop at ``/``;
    ``**/`` at the start or after a ``/`` matches any folders, ``/**`` at the end everything below."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            j = i
            while j < n and pattern[j] == "*":
                j += 1
            if j - i >= 2 and (i == 0 or pattern[i - 1] == "/") and (j == n or pattern[j] == "/"):
                if j == n:
                    out.append(".*")
                else:
                    out.append("(?:.*/)?")
                    j += 1
            else:
                out.append("[^/]*")
            i = j
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j, klass = _bracket(pattern, i)
            out.append(klass)
            i = j
        elif c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out), re.S)


_CLASSES = {"alnum": "A-Za-z0-9", "alpha": "A-Za-z", "digit": "0-9", "lower": "a-z", "upper": "A-Z",
            "space": r"\s", "xdigit": "0-9A-Fa-f", "blank": r" \t",
            "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")}


def _bracket(pattern: str, start: int) -> tuple[int, str]:
    """A ``[...]`` class at ``start``: (the index after it, its regex); a ``[`` without its ``]`` is literal."""
    i = start + 1
    negate = i < len(pattern) and pattern[i] in "!^"
    if negate:
        i += 1
    items: list[str] = []
    first = True
    while i < len(pattern):
        c = pattern[i]
        if c == "]" and not first:
            body = "".join(items)
            return i + 1, f"[^/{body}]" if negate else f"[{body}]"
        first = False
        if c == "[" and pattern.startswith("[:", i):
            end = pattern.find(":]", i + 2)
            if end > 0 and pattern[i + 2:end] in _CLASSES:
                items.append(_CLASSES[pattern[i + 2:end]])
                i = end + 2
                continue
        if c == "\\" and i + 1 < len(pattern):
            items.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "-" and items and i + 1 < len(pattern) and pattern[i + 1] != "]":
            items.append("-")
        else:
            items.append(re.escape(c) if c != "/" else "")
        i += 1
    return start + 1, re.escape("[")


def _closing_quote(line: str) -> int:
    i = 1
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == '"':
            return i
        i += 1
    return -1


def _unquote(text: str) -> str:
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            out.append(escapes.get(text[i + 1], text[i + 1]))
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


# --- Hub cache blobs -------------------------------------------------------------------------------
_SHA256 = re.compile(r"[0-9a-f]{64}")
_GIT_OID = re.compile(r"[0-9a-f]{40}")


def _blob_hashes(folder: ModelFolder) -> Iterator[Finding]:
    assert folder.blob_root is not None
    blobs = os.path.normpath(os.path.abspath(folder.blob_root))
    checked: dict[str, str | None] = {}
    for name in folder.symlinks:
        link = os.path.join(folder.root, name)
        try:
            target = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(link)), os.readlink(link)))
        except OSError:
            continue
        if os.path.dirname(target) != blobs:
            real = os.path.realpath(link)
            if os.path.dirname(real) != os.path.realpath(blobs):
                continue
            target = real
        blob = os.path.basename(target)
        if blob not in checked:
            checked[blob] = _blob_mismatch(target, blob)
        actual = checked[blob]
        if actual is not None:
            kind = "sha256" if _SHA256.fullmatch(blob) else "git blob id"
            yield finding("HFC040", f"{name}: its blob {blob} in the Hub cache hashes to {actual} ({kind}); the "
                          "download is corrupt or the file changed since", file=name)


def _blob_mismatch(path: str, blob: str) -> str | None:
    """The blob's actual hash when it differs from its name; None when it matches, or when the name is
    no hash (nothing to compare) or the blob cannot be read (the layout checks report that)."""
    import hashlib  # only for a folder in the Hub cache

    if _SHA256.fullmatch(blob):
        digest = hashlib.sha256()
    elif _GIT_OID.fullmatch(blob):
        digest = hashlib.sha1(usedforsecurity=False)
    else:
        return None
    try:
        with open_regular(path) as handle:
            if digest.name == "sha1":
                digest.update(b"blob %d\0" % os.fstat(handle.fileno()).st_size)
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except (OSError, FormatError):
        return None
    actual = digest.hexdigest()
    return None if actual == blob else actual
