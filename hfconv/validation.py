"""``validate``: discover -> read -> check -> report."""

from __future__ import annotations

import os
from collections.abc import Iterable

from .checks import CHECKS
from .contents import CheckOptions, FolderContents, read_contents
from .discovery import discover, hub_snapshot_name
from .errors import UsageError
from .findings import Finding
from .folder_check import check_folder, resolve_folder
from .gcpause import gc_paused
from .report import Report
from .weight_map import shard_map

__all__ = ["UsageError", "check_contents", "check_folder", "validate"]  # UsageError: from .errors, as before


def validate(
    path: str | os.PathLike,
    *,
    strict: bool = False,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    trust_remote_code: bool = False,
    reference: str = "auto",
    deep: bool = False,
    manifest: str | None = None,
    publishing: bool = True,
) -> Report:
    """Validate one model folder.

    Args:
        path: the model folder, or a repo id in the local Hub cache (``org/name``, ``name``, either
            with ``@revision``: a branch, tag, commit or commit prefix); a Hub cache snapshot is
            reported as ``org/name@<short commit>``.
        strict: warnings fail the folder too.
        select: only keep findings whose code starts with one of these prefixes.
        ignore: drop findings whose code starts with one of these prefixes.
        trust_remote_code: allow importing the folder's custom code (in a subprocess).
        reference: source of expected shapes: ``auto``, ``rules`` or ``transformers``.
        deep: also read tensor bytes where a check needs them.
        manifest: a digest manifest written by ``hfconv convert --manifest`` to compare with.
        publishing: also check what a push to the Hub refuses (README.md metadata, the Hub's size
            limits, git-lfs routing in a git working tree); convert's check of its output turns it off.

    Returns:
        The Report; ``report.ok`` is the verdict.

    Raises:
        UsageError: path does not exist or is not a folder (the message says which), or names a
            cached repo whose revision is not in the cache.
    """
    path = resolve_folder(path)
    # The cyclic GC stays off for the whole run: the largest folders build millions of acyclic
    # objects (headers, tensor metas, expected shapes), over which each young-generation
    # collection would walk again; reference counting frees them all the same.
    with gc_paused():
        folder = discover(path)
        options = CheckOptions(trust_remote_code=trust_remote_code, reference=reference, deep=deep,
                               manifest=manifest, publishing=publishing)
        contents = read_contents(folder, options)
        shown = hub_snapshot_name(path) or str(path)
        return check_contents(contents, path=shown, strict=strict, select=select, ignore=ignore)


def check_contents(
    contents: FolderContents,
    *,
    path: str | None = None,
    strict: bool = False,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
) -> Report:
    """Run every check over a folder already read, and report.

    ``validate`` is discover + read + this; ``convert`` and ``load-test`` call it on the
    contents they read anyway, so no header is parsed twice.
    """
    findings = [f for check in CHECKS for f in check(contents)]
    matched = None
    if getattr(contents.options, "manifest", None) and not any(f.code in _MANIFEST_CODES for f in findings):
        matched = len(contents.loaded_tensors)  # before --select/--ignore: an ignored mismatch is no match
    findings = _filter(findings, select, ignore)
    findings.sort(key=lambda f: (-f.severity.rank, f.code, f.file or "", f.tensor or ""))
    return Report(
        path=path if path is not None else str(contents.folder.root),
        layout=contents.layout(),
        findings=tuple(dict.fromkeys(findings)),  # identical findings from two checks once
        summary=contents.summary(),
        strict=strict,
        manifest_matched=matched,
        shard_map=shard_map(contents),
    )


_MANIFEST_CODES = frozenset(("HFC720", "HFC721", "HFC722", "HFC723"))
"""Codes of checks/manifest.py: any of them means the folder does not match its manifest."""


def _filter(findings: list[Finding], select: Iterable[str] | None, ignore: Iterable[str] | None) -> list[Finding]:
    selected = tuple(select or ())
    ignored = tuple(ignore or ())
    return [
        f for f in findings
        if (not selected or f.code.startswith(selected)) and not (ignored and f.code.startswith(ignored))
    ]
