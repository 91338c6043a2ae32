"""The digest manifest (``hfconv-manifest/1``): every output tensor's sha256."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

from ..tensor_bytes import write_all
from .plan import ConversionPlan
from .staging import umask
from .write import ShardOutcome

__all__ = ["MANIFEST_FORMAT", "stage_manifest", "write_manifest_tmp"]


MANIFEST_FORMAT = "hfconv-manifest/1"


def write_manifest_tmp(directory: str, plan: ConversionPlan, outcomes: list[ShardOutcome], durable: bool) -> str:
    """The digest manifest, written to a temporary file in ``directory``; returns its path."""
    tensors: dict[str, dict] = {}
    for shard, outcome in zip(plan.shards, outcomes):
        for t in shard.tensors:
            tensors[t.name] = {"file": shard.name, "dtype": t.dtype, "shape": list(t.shape),
                               "sha256": outcome.digests[t.name]}
    document = {"format": MANIFEST_FORMAT, "total_size": plan.total_size,
                "dropped_aliases": dict(plan.dropped_aliases), "tensors": tensors}
    fd, tmp = tempfile.mkstemp(prefix=".hfconv-manifest-", dir=directory)
    try:
        write_all(fd, (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def stage_manifest(tmp: str, target: str, rel: str | None, plan: ConversionPlan, outcomes: list[ShardOutcome],
                   durable: bool) -> str | None:
    """Write the manifest: into the temporary folder when it goes inside DST (``rel``, its name
    there; returns None), else to a temporary file beside ``target`` (returned: renamed to
    ``target`` once DST is in place). A failure removes the temporary file."""
    final = os.path.join(tmp, rel) if rel else target
    os.makedirs(os.path.dirname(final), exist_ok=True)
    staged = write_manifest_tmp(os.path.dirname(final), plan, outcomes, durable)
    try:
        os.chmod(staged, (0o777 & ~umask()) & 0o666)
        if rel:
            os.replace(staged, final)
            return None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staged)
        raise
    return staged
