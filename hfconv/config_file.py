"""Settings from a config file: ``[tool.hfconv]`` in a ``pyproject.toml``, or an ``hfconv.toml``
(its keys at the top level), in the model folder or a folder above it up to its repository root.

    [tool.hfconv]
    select = ["HFC"]                 # codes or prefixes to report (default: all)
    ignore = ["HFC007", "HFC011"]    # codes or prefixes not to report
    strict = true                    # warnings fail the folder too
    reference = "rules"              # auto, rules or transformers
    [tool.hfconv.per-file-ignores]   # like ruff's: glob -> codes, for findings about matching files
    "training_args.bin" = ["HFC011"]
    "legacy/*.bin" = ["HFC2"]

The nearest file wins (looked for in the model folder first, then each folder above it up to the
nearest one holding ``.git``; without a ``.git`` above, only in the model folder); in one folder an
``hfconv.toml`` comes before a ``pyproject.toml``, and a ``pyproject.toml`` without
``[tool.hfconv]`` is passed over. A Hub cache snapshot (``models--org--name/snapshots/REV``) has none:
it is a download, not the user's repository. Options given to the command override the file's. An unknown
key, a bad value or a code that matches no registered finding code is a :class:`ConfigError`
(a :class:`~hfconv.errors.UsageError`: the command cannot run), naming the file and the key.

A per-file pattern without a ``/`` matches a file's name; with one, its path relative to the
folder of the config file (or to the model folder). Glob syntax is :mod:`fnmatch`'s.

A config file can quiet warnings and infos, never an error: the file may lie in the folder being
checked, which whoever wrote the folder controls (SECURITY.md: the folder is the attacker's, the
command line is not), so ``select``, ``ignore`` and ``per-file-ignores`` from a file leave errors
reported. Only ``--select`` / ``--ignore`` on the command line hide an error.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import stat
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import UsageError
from .fsutil import open_regular
from .gitrepo import work_tree
from .tensors import FormatError

if TYPE_CHECKING:  # pragma: no cover
    from .findings import Finding
    from .report import Report

__all__ = ["CONFIG_NAMES", "KEYS", "ConfigError", "Settings", "find_config", "load_settings", "read_config",
           "validate_configured"]

CONFIG_NAMES = ("hfconv.toml", "pyproject.toml")
"""The files looked for in each folder, in this order."""

KEYS = ("select", "ignore", "strict", "reference", "per-file-ignores")
"""The keys a config file may set."""

REFERENCES = ("auto", "rules", "transformers")
_MAX_LEVELS = 64  # folders walked up at most looking for a config file
_MAX_BYTES = 1 << 20  # a config file larger than this is refused, not read


class ConfigError(UsageError):
    """A config file that cannot be used: unreadable, not TOML, an unknown key or code, a bad value."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a config file sets (None: not set, the command's default applies)."""

    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] | None = None
    strict: bool | None = None
    reference: str | None = None
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """(glob pattern, codes or prefixes) pairs, in the file's order."""
    source: str | None = None
    """The config file they were read from; None when no file was found."""
    file_keys: frozenset[str] = frozenset()
    """The keys whose value comes from the file (not overridden): its select and ignore, like its
    per-file-ignores, quiet warnings and infos only."""

    def override(self, *, select: Iterable[str] | None = None, ignore: Iterable[str] | None = None,
                 strict: bool | None = None, reference: str | None = None) -> Settings:
        """These settings with every option that was given (not None) in place of the file's."""
        given = {key for key, value in (("select", select), ("ignore", ignore), ("strict", strict),
                                        ("reference", reference)) if value is not None}
        return dataclasses.replace(
            self,
            file_keys=self.file_keys - given,
            select=tuple(select) if select is not None else self.select,
            ignore=tuple(ignore) if ignore is not None else self.ignore,
            strict=strict if strict is not None else self.strict,
            reference=reference if reference is not None else self.reference,
        )

    def ignored_for(self, file: str | None, folder: str) -> tuple[str, ...]:
        """The codes or prefixes per-file-ignores drops for findings about ``file`` (relative to the
        model ``folder``); none for findings about the folder as a whole."""
        if file is None or not self.per_file_ignores:
            return ()
        relative = [file.replace(os.sep, "/")]
        if self.source is not None:
            full = os.path.join(os.path.abspath(folder), file)
            base = os.path.dirname(os.path.abspath(self.source))
            relative.append(os.path.relpath(full, base).replace(os.sep, "/"))
        name = relative[0].rsplit("/", 1)[-1]
        codes: list[str] = []
        for pattern, pattern_codes in self.per_file_ignores:
            candidates = relative if "/" in pattern else [name]
            if any(fnmatch.fnmatchcase(path, pattern.removeprefix("./")) for path in candidates):
                codes.extend(pattern_codes)
        return tuple(codes)

    def hides(self, finding: Finding, folder: str) -> bool:
        """Whether the file's select, ignore or per-file-ignores drop ``finding`` (never an error)."""
        from .findings import Severity

        if finding.severity is Severity.ERROR:
            return False
        code = finding.code
        if "select" in self.file_keys and not any(code.startswith(c) for c in self.select or ()):
            return True
        if "ignore" in self.file_keys and any(code.startswith(c) for c in self.ignore or ()):
            return True
        return any(code.startswith(c) for c in self.ignored_for(finding.file, folder))

    def filter(self, report: Report) -> Report:
        """``report`` without the findings the file's settings hide (the verdict follows the findings)."""
        if not (self.per_file_ignores or {"select", "ignore"} & self.file_keys):
            return report
        return dataclasses.replace(report, findings=tuple(f for f in report.findings if not self.hides(f, report.path)))


def find_config(folder: str | os.PathLike[str]) -> str | None:
    """The config file that applies to the model ``folder``, or None (see the module docstring)."""
    found = _found_config(folder)
    return found[0] if found is not None else None


def _found_config(folder: str | os.PathLike[str]) -> tuple[str, dict[str, Any] | None] | None:
    """:func:`find_config`'s file and, for a pyproject.toml, its tables (read once, to see whether it
    has ``[tool.hfconv]``, and passed on rather than read again); None when none applies."""
    start = os.path.abspath(os.fspath(folder))
    parts = start.split(os.sep)
    if any(a.startswith("models--") and b == "snapshots" for a, b in zip(parts, parts[1:])):
        return None  # a Hub cache snapshot: a download, not your repository (its files are symlinks)
    root = work_tree(start)
    current = start
    for _ in range(_MAX_LEVELS):
        for name in CONFIG_NAMES:
            candidate = os.path.join(current, name)
            try:
                mode = os.lstat(candidate).st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):  # it may lead out of the folder: never followed (SECURITY.md)
                raise ConfigError(f"{candidate} is a symlink; a config file found beside the folder is read only as a "
                                  "regular file (name it with --config to read it, or --no-config)")
            if not stat.S_ISREG(mode):
                continue
            if name != "pyproject.toml":
                return candidate, None
            tables = _pyproject_tables(candidate, False)
            if "tool" in tables:
                return candidate, tables
        if root is None or current == root:
            return None
        current = os.path.dirname(current)
    return None


def _pyproject_tables(path: str, follow_symlinks: bool) -> dict[str, Any]:
    """The ``[tool.hfconv]`` table of a pyproject.toml, as ``{"tool": table}``, or {} when it has none."""
    data = _read_toml(path, follow_symlinks)
    tool = data.get("tool")
    if isinstance(tool, dict) and "hfconv" in tool:
        return {"tool": tool["hfconv"]}
    return {}


def _read_toml(path: str, follow_symlinks: bool) -> dict[str, Any]:
    """A regular file's TOML (opened without following a symlink unless ``follow_symlinks``; a
    FIFO or device is refused before a byte is read)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    try:
        with open_regular(path, follow_symlinks=follow_symlinks) as handle:
            data = handle.read(_MAX_BYTES + 1)
    except FormatError as exc:  # a symlink not followed, a FIFO or device, a file that cannot be opened
        raise ConfigError(f"{path}: {exc.message}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > _MAX_BYTES:
        raise ConfigError(f"{path}: larger than {_MAX_BYTES // (1 << 20)} MiB; not a config file")
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def read_config(path: str | os.PathLike[str], follow_symlinks: bool = True) -> Settings:
    """The settings of one config file (an ``hfconv.toml``, or a ``pyproject.toml``'s ``[tool.hfconv]``);
    a symlink is followed only with ``follow_symlinks`` (a file the user named, not one found).

    Raises:
        ConfigError: the file cannot be read or parsed, or sets an unknown key, a bad value or a
            code that matches no registered finding code (the message names the file and the key).
    """
    return _settings(os.fspath(path), follow_symlinks)


def _settings(path: str, follow_symlinks: bool, pyproject: dict[str, Any] | None = None) -> Settings:
    """:func:`read_config`; ``pyproject``: the pyproject.toml's tables when already read."""
    if os.path.basename(path) == "pyproject.toml":
        if pyproject is None:
            pyproject = _pyproject_tables(path, follow_symlinks)
        table = pyproject.get("tool")
        where = f"{path} [tool.hfconv]"
        if table is None:
            raise ConfigError(f"{path} has no [tool.hfconv] table")
    else:
        table = _read_toml(path, follow_symlinks)
        where = path
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table of settings")
    unknown = [key for key in table if key not in KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(repr(k) for k in unknown)} "
                          f"(the keys are {', '.join(KEYS)})")
    select = _codes(table, "select", where)
    ignore = _codes(table, "ignore", where)
    strict = table.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ConfigError(f"{where}: strict must be true or false, not {strict!r}")
    reference = table.get("reference")
    if reference is not None and reference not in REFERENCES:
        raise ConfigError(f"{where}: reference must be one of {', '.join(REFERENCES)}, not {reference!r}")
    per_file = table.get("per-file-ignores", {})
    if not isinstance(per_file, Mapping):
        raise ConfigError(f"{where}: per-file-ignores must be a table of glob = [codes]")
    pairs = tuple((str(pattern), _codes(per_file, pattern, f"{where} per-file-ignores") or ())
                  for pattern in per_file)
    return Settings(select=select, ignore=ignore, strict=strict, reference=reference, per_file_ignores=pairs,
                    source=path, file_keys=frozenset(key for key in KEYS if key in table))


def _codes(table: Mapping[str, Any], key: str, where: str) -> tuple[str, ...] | None:
    """A list of finding codes or prefixes under ``key``, each matching a registered code."""
    from .codes import checked_codes

    if key not in table:
        return None
    value = table[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of finding codes, e.g. [\"HFC007\", \"HFC3\"]")
    try:
        return checked_codes(value, f"{where}: {key}")
    except UsageError as exc:
        raise ConfigError(str(exc)) from None


def load_settings(folder: str | os.PathLike[str]) -> Settings:
    """The settings of the config file that applies to ``folder`` (:func:`find_config`), or empty ones."""
    found = _found_config(folder)
    return _settings(found[0], False, found[1]) if found is not None else Settings()


def validate_configured(path: str | os.PathLike[str], settings: Settings, **options: Any) -> Report:
    """:func:`hfconv.validation.validate` with ``settings`` (``options``: its other keyword
    arguments): select and ignore given as options filter every finding; the file's, and its
    per-file-ignores, then hide warnings and infos (:meth:`Settings.filter`)."""
    from .validation import validate

    select = settings.select if "select" not in settings.file_keys else None
    ignore = settings.ignore if "ignore" not in settings.file_keys else None
    report = validate(path, strict=bool(settings.strict), select=select, ignore=ignore,
                      reference=settings.reference or "auto", **options)
    return settings.filter(report)
