"""Finding codes a user gives (``--select`` / ``--ignore``, a config file's ``select``, ``ignore`` and
``per-file-ignores``): each must be a registered code or a prefix of one, checked here once for all.

A typo would otherwise select nothing, and a gate would say OK.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import UsageError

__all__ = ["checked_codes", "known_codes"]


def known_codes() -> frozenset[str]:
    """Every registered finding code: the registry is filled by the modules that raise them, and
    findings.all_codes imports each of those (checks, conversion, load, fixing, comparison). None of
    them imports torch."""
    from .findings import all_codes

    return frozenset(all_codes())


def checked_codes(given: Iterable[str], where: str) -> tuple[str, ...]:
    """``given`` codes or prefixes, stripped and upper-cased, blank ones left out.

    Raises:
        UsageError: one matches no registered code: ``{where}: X is not a finding code or a prefix
            of one (...)``, naming each as given (not escaped: a caller that prints it escapes it).
    """
    names = [name.strip() for name in given if name.strip()]
    codes = tuple(name.upper() for name in names)
    if not codes:
        return codes
    known = known_codes()
    unknown = [name for name, code in zip(names, codes) if not any(k.startswith(code) for k in known)]
    if unknown:
        raise UsageError(f"{where}: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a finding code "
                         "or a prefix of one (codes are HFC followed by three digits, e.g. HFC3 or HFC301; "
                         "hfconv codes lists them all)")
    return codes
