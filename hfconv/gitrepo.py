"""A git repository around a folder, read without running git: the top of its working tree.

Used by the config file search (a config file above the model folder is read up to the top of the
repository) and by the Hub checks (git-lfs routing in a working tree).
"""

from __future__ import annotations

import os

__all__ = ["work_tree"]


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
