"""The one check that a path given as the model folder is a folder, and its wording.

Every operation (validate, inspect, convert, load-test, fix, diff) and the CLI refuse a path that
is not a folder with the same message, which says what the path is instead and what to give:

* missing: ``X does not exist`` (after a look-up in the local Hub cache, for a relative name: ``X
  does not exist (and is not a repo id in the local Hub cache)``);
* a dangling symlink: ``X is a dangling symlink (to 'T', which does not exist)``;
* unreadable: ``X cannot be read (Permission denied)``;
* a FIFO, device or socket: ``X is not a folder (a FIFO); give the model folder``;
* a regular file: ``X is a file, not a folder (give the model folder that contains it)``.

The messages hold the path as given (not escaped): a caller that prints them escapes them.
"""

from __future__ import annotations

import errno
import os

from .discovery import resolve_model_path
from .errors import UsageError
from .fsutil import link_problem, special_kind

__all__ = ["check_folder", "resolve_folder"]

_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG)


def check_folder(path: str | os.PathLike[str], what: str = "", looked_up: bool = False) -> None:
    """Raise :class:`UsageError` unless ``path`` is a folder, saying what it is instead (see the
    module docstring). ``what`` prefixes the path in the message (``"SRC "``); ``looked_up``: the
    name was also looked for as a repo id in the local Hub cache (the message says so)."""
    if os.path.isdir(path):
        return
    shown = f"{what}{os.fspath(path)}"
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path) and not os.path.exists(path):
            raise UsageError(f"{shown} {link_problem(path)}") from None
        if exc.errno not in _MISSING:
            raise UsageError(f"{shown} cannot be read ({exc.strerror or exc})") from None
        hub = " (and is not a repo id in the local Hub cache)" if looked_up else ""
        raise UsageError(f"{shown} does not exist{hub}") from None
    kind = special_kind(mode)
    if kind is not None:
        raise UsageError(f"{shown} is not a folder ({kind}); give the model folder")
    raise UsageError(f"{shown} is a file, not a folder (give the model folder that contains it)")


def resolve_folder(path: str | os.PathLike[str]) -> str:
    """The model folder ``path`` names: a folder as given, or a repo id (``org/name[@revision]``)
    resolved offline in the local Hub cache (:func:`~hfconv.discovery.resolve_model_path`).

    Raises:
        UsageError: it is not a folder (:func:`check_folder`'s message), or names a cached repo
            whose revision is not in the cache.
    """
    given = os.fspath(path)
    resolved = resolve_model_path(given)
    # A relative name may have been meant as a repo id: say that the cache was looked in too.
    check_folder(resolved, looked_up=resolved == given and not os.path.isabs(given))
    return resolved
