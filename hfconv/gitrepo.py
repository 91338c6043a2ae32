"""A git repository around a folder, read without running git: the top of its working tree, its
git directories, and the attribute and ignore files git reads besides the tree's own.

Used by the config file search (a config file above the model folder is read up to the top of the
repository) and by the Hub checks (git-lfs routing in a working tree).

Git's rules followed here (gitrepository-layout(5), gitattributes(5), gitignore(5), git-config(1)):

* ``.git`` is the git directory, or a file ``gitdir: PATH`` (a linked worktree, a submodule;
  ``PATH`` relative to the folder holding the file). A git directory holding ``commondir`` shares
  the repository at that path (relative to the git directory): ``info/`` and ``config`` are read
  there, ``config.worktree`` in the git directory itself (with ``extensions.worktreeConfig``).
* ``core.attributesFile`` / ``core.excludesFile``: the last value in the system config
  (``/etc/gitconfig``, ``$GIT_CONFIG_SYSTEM``; none with ``$GIT_CONFIG_NOSYSTEM``), the global one
  (``$XDG_CONFIG_HOME/git/config`` or ``~/.config/git/config``, then ``~/.gitconfig``; or
  ``$GIT_CONFIG_GLOBAL``), the repository's ``config`` and ``config.worktree``. Unset: the file
  ``attributes`` / ``ignore`` in ``$XDG_CONFIG_HOME/git`` (``~/.config/git`` when that is unset or
  empty); empty: none. ``~/`` and ``~user/`` are expanded, a relative path is from the top of the
  working tree.
* ``/etc/gitattributes`` (none with ``$GIT_ATTR_NOSYSTEM``): the lowest of the attribute files.

Not followed: ``include`` / ``includeIf`` sections, ``$GIT_DIR`` / ``$GIT_COMMON_DIR`` from the
environment, ``GIT_CONFIG_COUNT`` pairs, ``%(prefix)/`` paths. Every file is read as a regular file
only (never a FIFO or device), at most :data:`MAX_BYTES` of it; one that cannot be read counts as
empty, as git does with a missing one.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from .fsutil import open_regular
from .tensors import FormatError

__all__ = ["MAX_BYTES", "Repository", "read_text", "repository", "work_tree"]

MAX_BYTES = 1024 * 1024
"""Bytes read of one git file (a config, attributes or ignore file: a few KB)."""


def work_tree(path: str | os.PathLike[str]) -> str | None:
    """The top of the working tree ``path`` lies in: the nearest folder at or above it holding a
    ``.git`` (a folder; or a file, ``gitdir: ...``, in a linked worktree or a submodule), or None.

    The walk is lexical, from ``path`` as given: pass a resolved path to follow symlinks first.
    """
    current = os.fspath(path)
    while True:
        if os.path.lexists(os.path.join(current, ".git")):
            return current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def read_text(path: str | os.PathLike[str]) -> str:
    """A git file's text (at most :data:`MAX_BYTES`); "" when it is missing, unreadable or not a
    regular file."""
    try:
        with open_regular(path) as handle:
            return handle.read(MAX_BYTES).decode("utf-8", "replace")
    except (OSError, FormatError):
        return ""


class Repository(NamedTuple):
    """The git files that apply to one working tree."""

    top: str
    """The top of the working tree."""
    git_dir: str | None
    """``$GIT_DIR``: ``top/.git``, or where its ``gitdir:`` line points; None when that is no folder."""
    common_dir: str | None
    """``$GIT_COMMON_DIR``: the git directory's ``commondir``, else the git directory itself."""
    attributes_files: tuple[str, ...]
    """The attribute files besides the tree's ``.gitattributes``, lowest precedence first: the
    system's, the global one (``core.attributesFile``); ``info/attributes`` (the highest) is
    :attr:`info_attributes`."""
    excludes_file: str | None
    """``core.excludesFile`` (or its default): the lowest-precedence ignore rules."""

    @property
    def info_attributes(self) -> str | None:
        return os.path.join(self.common_dir, "info", "attributes") if self.common_dir else None

    @property
    def info_exclude(self) -> str | None:
        return os.path.join(self.common_dir, "info", "exclude") if self.common_dir else None


def repository(top: str | os.PathLike[str]) -> Repository:
    """The git files of the working tree whose top is ``top`` (see the module docstring)."""
    top = os.fspath(top)
    git_dir = _git_dir(top)
    common_dir = git_dir
    if git_dir is not None:
        common = read_text(os.path.join(git_dir, "commondir")).strip()
        if common:
            common_dir = os.path.normpath(os.path.join(git_dir, common))
    settings = _config(git_dir, common_dir)
    attributes = [] if os.environ.get("GIT_ATTR_NOSYSTEM") else ["/etc/gitattributes"]
    global_attributes = _user_file(settings.get("core.attributesfile"), "attributes", top)
    if global_attributes is not None:
        attributes.append(global_attributes)
    return Repository(top, git_dir, common_dir, tuple(attributes),
                      _user_file(settings.get("core.excludesfile"), "ignore", top))


def _git_dir(top: str) -> str | None:
    dot = os.path.join(top, ".git")
    if os.path.isdir(dot):
        return dot
    first = read_text(dot).partition("\n")[0].strip()
    if not first.startswith("gitdir:"):
        return None
    path = os.path.normpath(os.path.join(top, first[len("gitdir:"):].strip()))
    return path if os.path.isdir(path) else None


def _config(git_dir: str | None, common_dir: str | None) -> dict[str, str | None]:
    """``section.key`` (lower case) -> its last value across git's config files, in git's order."""
    env = os.environ
    files: list[str] = []
    if not _true(env.get("GIT_CONFIG_NOSYSTEM")):
        files.append(env.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig")
    if env.get("GIT_CONFIG_GLOBAL"):
        files.append(env["GIT_CONFIG_GLOBAL"])
    else:
        files.append(os.path.join(_xdg_git(), "config"))
        if env.get("HOME"):
            files.append(os.path.join(env["HOME"], ".gitconfig"))
    settings: dict[str, str | None] = {}
    for path in files:
        settings.update(parse_config(read_text(path)))
    if common_dir is not None:
        settings.update(parse_config(read_text(os.path.join(common_dir, "config"))))
        if git_dir is not None and _true(settings.get("extensions.worktreeconfig", "false")):
            settings.update(parse_config(read_text(os.path.join(git_dir, "config.worktree"))))
    return settings


def _true(value: str | None) -> bool:
    """git's boolean: a key without a value, or yes / on / true / 1."""
    return value is None or value.strip().lower() in ("yes", "on", "true", "1")


def _xdg_git() -> str:
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.environ.get("HOME", "/"), ".config")
    return os.path.join(xdg, "git")


def _user_file(value: str | None, default: str, top: str) -> str | None:
    """The file a ``core.attributesFile`` / ``core.excludesFile`` value names (None: not set, its
    default in ``$XDG_CONFIG_HOME/git``); None for an empty value or one git would not expand."""
    if value is None:
        if not os.environ.get("XDG_CONFIG_HOME") and not os.environ.get("HOME"):
            return None
        return os.path.join(_xdg_git(), default)
    if not value or value.startswith("%("):
        return None
    if value.startswith("~"):
        expanded = os.path.expanduser(value)
        if expanded.startswith("~"):  # an unknown user
            return None
        value = expanded
    return os.path.normpath(os.path.join(top, value))


def parse_config(text: str) -> dict[str, str | None]:
    """The ``section.key`` (lower case) -> value pairs of a git config file's text, last value
    kept, for sections without a subsection (``[core]``, ``[extensions]``); a key without ``=``
    is None (true). A line git would refuse (a bad escape, an open quote) sets nothing."""
    values: dict[str, str | None] = {}
    section: str | None = None
    i, n = 0, len(text)
    while i < n:
        end = text.find("\n", i)
        end = n if end < 0 else end
        line = text[i:end].lstrip()  # it ends at text[end]: it starts at text[end - len(line)]
        i = end + 1
        if line.startswith("["):
            close = line.find("]")
            if close < 0:
                section = None
                continue
            header = line[1:close].strip()
            section = header.lower() if header and not any(c in header for c in ' "\t.') else None
            line = line[close + 1:].lstrip()  # a key may follow on the same line
        if not line or line[0] in "#;" or section is None:
            continue
        name, equals, _ = line.partition("=")
        name = name.strip()
        if not name or not (name[0].isalpha() and all(c.isalnum() or c == "-" for c in name)):
            continue
        key = f"{section}.{name.lower()}"
        if not equals:
            values[key] = None
            continue
        value, i = _value(text, end - len(line) + line.index("=") + 1)
        if value is not None:
            values[key] = value
    return values


_ESCAPES = {"t": "\t", "b": "\b", "n": "\n", "\\": "\\", '"': '"'}


def _value(text: str, j: int) -> tuple[str | None, int]:
    """The value that starts at ``text[j]`` (after the ``=``), as git's parse_value reads it, and
    the index after its line; None for a value git refuses."""
    out: list[str] = []
    quoted = comment = False
    spaces = 0
    n = len(text)
    while True:
        if j >= n:
            return (None if quoted else "".join(out)), j
        c = text[j]
        j += 1
        if c == "\n":
            return (None if quoted else "".join(out)), j
        if comment:
            continue
        if c.isspace() and not quoted:
            spaces += 1 if out else 0
            continue
        if not quoted and c in "#;":
            comment = True
            continue
        out.append(" " * spaces)
        spaces = 0
        if c == "\\":
            nxt = text[j] if j < n else ""
            j += 1
            if nxt == "\n":
                continue
            if nxt not in _ESCAPES:
                end = text.find("\n", j)
                return None, n if end < 0 else end + 1
            out.append(_ESCAPES[nxt])
            continue
        if c == '"':
            quoted = not quoted
            continue
        out.append(c)
