"""What ``fix()`` returns: the changes it made (or would make), what it refused, what remains."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..findings import Finding, Severity
from ..report import Report

__all__ = ["Change", "FixResult", "Remaining"]


@dataclass(frozen=True)
class Change:
    """One file operation of a fix: a JSON file rewritten or created, a safetensors header
    rewritten, a file deleted or renamed. Each is atomic on its own."""

    action: str
    """``rewrite`` (a JSON file), ``create`` (a JSON file), ``header`` (a safetensors header),
    ``delete`` or ``rename``."""
    file: str
    """The file, relative to the folder."""
    codes: tuple[str, ...]
    """The finding codes this change clears (empty for a rename the Hub's names only ask for)."""
    summary: str
    """One sentence: what changes and why it is provable from the folder."""
    unsafe: bool = False
    """Only made with ``unsafe_fixes=True``: it deletes or renames files, or edits ids."""
    old_text: str | None = None
    """A JSON file's text before (None for a file created)."""
    new_text: str | None = None
    """A JSON file's text after."""
    new_name: str | None = None
    """A rename's target name."""

    def to_json(self) -> dict:
        return {"action": self.action, "file": self.file, "codes": list(self.codes), "summary": self.summary,
                "unsafe": self.unsafe, "new_name": self.new_name}


@dataclass(frozen=True)
class Remaining:
    """A finding the folder still has (after the fix, or, for a dry run, that no change addresses)."""

    finding: Finding
    why: str
    """Why it was not fixed, in words."""
    unsafe: bool = False
    """True when an unsafe fix (``unsafe_fixes=True``) would have fixed it."""

    def to_json(self) -> dict:
        return {**self.finding.to_json(), "why_not_fixed": self.why, "unsafe_fix_available": self.unsafe}


@dataclass(frozen=True)
class FixResult:
    """The outcome of ``fix()``."""

    path: str
    changes: tuple[Change, ...]
    """Made (``applied``) or, for a dry run, that would be made; in the order they are applied."""
    applied: bool
    """False for a dry run and for a refused folder: nothing on disk changed."""
    remaining: tuple[Remaining, ...] = ()
    refused: tuple[Finding, ...] = ()
    """Why the folder was refused (HFC950), or a change failed (HFC951)."""
    report: Report | None = None
    """The validation after fixing (a dry run: before)."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Other things the run did, such as removing temporary files an interrupted run left."""

    @property
    def errors(self) -> int:
        return sum(1 for r in self.remaining if r.finding.severity is Severity.ERROR) + len(
            [f for f in self.refused if f.severity is Severity.ERROR])

    @property
    def ok(self) -> bool:
        """No error remains (a dry run: none would remain that a change does not address), nothing refused."""
        return self.errors == 0

    @property
    def exit_code(self) -> int:
        """0 when no error remains (a dry run: when nothing would change), else 1."""
        if not self.applied and not self.refused:
            return 1 if self.changes else 0
        return 0 if self.ok else 1

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "ok": self.ok,
            "applied": self.applied,
            "changes": [c.to_json() for c in self.changes],
            "remaining": [r.to_json() for r in self.remaining],
            "refused": [f.to_json() for f in self.refused],
            "notes": list(self.notes),
        }
