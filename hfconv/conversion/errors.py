"""What ``convert`` raises: one exception type per outcome, each carrying its code and findings.

Messages say what happened in words; they do not name command-line flags (the CLI adds those).
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any

from ..errors import UsageError
from ..findings import Finding, finding

__all__ = [
    "ConversionError", "InputRefused", "VerificationError", "DestinationExistsError", "write_failure",
]


class ConversionError(Exception):
    """The conversion ran and failed (exit 1); DST was not created.

    Attributes:
        code: the HFC7xx code.
        message: one human sentence.
        findings: the findings that explain it (e.g. the reader's HFC201).
    """

    def __init__(self, code: str, message: str, findings: Sequence[Finding] = ()):
        super().__init__(message)
        self.code = code
        self.message = message
        self.findings = tuple(findings) or (finding(code, message),)

    def __reduce__(self) -> tuple[Any, tuple[str, str, tuple[Finding, ...]]]:
        # Raised in --jobs worker processes and re-raised in the parent: pickle all fields.
        return (type(self), (self.code, self.message, self.findings))


class InputRefused(ConversionError):
    """SRC holds a weight file hfconv will not convert (broken, hostile, missing)."""


class VerificationError(ConversionError):
    """The written output does not match the source, or fails validation."""


class DestinationExistsError(UsageError):
    """DST exists and ``force`` was not given (exit 2)."""


_ERRNO_WORDS = {
    errno.ENOSPC: "no space left on device",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded",
    errno.EFBIG: "file too large (the file system's or the process's file size limit)",
    errno.EIO: "input/output error",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def write_failure(exc: OSError, doing: str) -> ConversionError:
    """An OSError while writing DST as the one-line HFC714 error: ``no space left on device
    writing model-00002-of-00004.safetensors``."""
    what = _ERRNO_WORDS.get(exc.errno or 0)
    if what is None:
        text = exc.strerror or str(exc) or type(exc).__name__
        what = text[:1].lower() + text[1:]
    return ConversionError("HFC714", f"{what} {doing}".strip())
