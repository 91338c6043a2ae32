"""``hfconv convert``: fills the options, calls :func:`hfconv.conversion.convert`, renders.

Importing this module must stay cheap (it is imported by ``hfconv.cli``): no torch, and
the conversion library itself is imported only when the command runs.
"""

from __future__ import annotations

import json
import signal
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:  # pragma: no cover
    from .conversion import ConversionError, ConversionResult

__all__ = ["convert", "render_text", "render_json", "render_error_text", "render_error_json"]


# --- renderers: pure functions of the result ------------------------------------------------

def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def render_text(result: ConversionResult) -> str:
    """A short human summary of a successful conversion; every name from a folder escaped."""
    from .render import escape_text as esc
    from .render import finding_lines, human_bytes

    src, dst = esc(result.src), esc(result.dst)
    if result.ok:
        lines = [f"converted {src} -> {dst}"]
    else:
        assert result.validation is not None
        lines = [f"converted {src} -> {dst}: output INVALID ({_plural(result.validation.errors, 'validation error')}"
                 "; written anyway: --allow-invalid-output)"]
    lines.append(f"  tensors   {result.tensors:,}")
    lines.append(f"  bytes     {human_bytes(result.bytes)} ({_plural(result.bytes, 'byte')} of tensor data)")
    lines.append(f"  shards    {_plural(len(result.shards), 'shard')}" + (f" + {result.index}" if result.index else ""))
    for shard in result.shards:
        lines.append(f"            {esc(shard.name)}  {_plural(shard.tensors, 'tensor')}  {human_bytes(shard.bytes)}")
    if result.dtype != "keep":
        lines.append(f"  dtype     {_plural(result.cast, 'tensor')} cast to {result.dtype}")
    if result.dropped_aliases:
        lines.append("  dropped   " + ", ".join(f"{esc(a)} (tied to {esc(k)})"
                                                for a, k in result.dropped_aliases.items()))
    if result.copied_aliases:
        lines.append("  copied    " + ", ".join(f"{esc(a)} (shared storage with {esc(k)})"
                                                for a, k in result.copied_aliases.items()))
    lines.append(f"  files     {len(result.files_copied):,} copied" +
                 (f", {len(result.files_skipped):,} skipped" if result.files_skipped else ""))
    for name, why in result.files_skipped.items():
        lines.append(f"            {esc(name)} {esc(why)}")
    lines.append(f"  time      {result.seconds:.2f} s ({result.mb_per_s:.1f} MB/s)")
    if result.verified and result.ok:
        lines.append("  verified  yes (every tensor bitwise, every .bin storage's CRC-32, output validated)")
    elif result.verified:
        lines.append("  verified  tensors yes (bitwise, with every .bin storage's CRC-32); output INVALID:")
        listed = result.validation.findings if result.validation is not None else ()
        lines.extend(finding_lines(listed[:_MAX_LISTED], indent="            ", fixes=False))
        if len(listed) > _MAX_LISTED:
            lines.append(f"            ... and {len(listed) - _MAX_LISTED} more (--format json lists them all)")
    else:
        lines.append("  verified  no (--no-verify: nothing was checked: no tensor compared, no CRC-32, "
                     "output not validated)")
    if result.manifest:
        lines.append(f"  manifest  {esc(result.manifest)}")
    if result.durable:
        lines.append("  durable   yes (--fsync: on the disk before DST appeared)")
    return "\n".join(lines) + "\n"


def render_json(result: ConversionResult) -> str:
    return json.dumps(result.to_json(), indent=2, ensure_ascii=False) + "\n"


def render_error_text(src: str, dst: str, error: ConversionError) -> str:
    """``conversion failed (CODE): <why>; no DST was created.`` then the findings that explain
    it, as validate lists them; every name from the folder escaped."""
    from .render import escape_text, finding_lines

    message = escape_text(error.message).rstrip(".")
    lines = [f"conversion failed ({error.code}): {message}; no DST was created."]
    listed = [item for item in error.findings if item.message != error.message]
    lines.extend(finding_lines(listed[:_MAX_LISTED]))
    if len(listed) > _MAX_LISTED:
        lines.append(f"  ... and {len(listed) - _MAX_LISTED} more (--format json lists them all)")
    return "\n".join(lines) + "\n"


_MAX_LISTED = 20
"""Findings listed in text (a state dict saved with a 'module.' prefix misses every tensor)."""


def render_error_json(src: str, dst: str, error: ConversionError) -> str:
    document = {"ok": False, "src": src, "dst": dst, "error": {"code": error.code, "message": error.message},
                "findings": [f.to_json() for f in error.findings]}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _render_html(result: ConversionResult) -> str:
    from .render.html import render_convert_html  # jinja2 only when a page is asked for

    return render_convert_html(result)


def _render_error_html(src: str, dst: str, error: ConversionError) -> str:
    from .render.html import render_convert_error_html

    return render_convert_error_html(src, dst, error)


# --- the command ------------------------------------------------------------------------------

DTYPE_HELP = "keep, bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float)"


def dtype_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """``--dtype`` of convert and load-test: one list of names (conversion.DTYPE_ALIASES)."""
    from .conversion import canonical_dtype
    from .validation import UsageError

    try:
        return canonical_dtype(value)
    except UsageError:
        raise click.BadParameter(f"{value!r} is not a dtype: use {DTYPE_HELP}") from None


def _progress_bar(quiet: bool, verify: bool, what: str = "convert"):
    """Progress on stderr: a tqdm bar over the model's bytes on a terminal, else (CI logs) a
    line every HFCONV_PROGRESS_INTERVAL seconds (default 10); nothing when quiet.

    With verification each byte counts half when written and half when compared, so the
    total is the model's bytes and 100% means written and verified.
    """
    if quiet:
        return None, None
    desc = f"{what} (write+verify)" if verify else f"{what} (write)"
    if not sys.stderr.isatty():
        lines = ProgressLines(desc)
        return lines, lines.update
    from tqdm import tqdm

    bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr,
               desc=desc, dynamic_ncols=True, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return bar, update


class ProgressLines:
    """Progress for a log (stderr not a terminal): one line every ``interval`` seconds with
    the bytes done, the percentage and the rate, so a long run in CI is seen to be alive."""

    def __init__(self, desc: str, interval: float | None = None) -> None:
        import os
        import time

        if interval is None:
            try:
                interval = float(os.environ.get("HFCONV_PROGRESS_INTERVAL", "10"))
            except ValueError:
                interval = 10.0
        self.desc = desc
        self.interval = max(interval, 0.0)
        self._clock = time.monotonic
        self.started = self._clock()
        self.last = self.started
        self.done = 0
        self.total = 0

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        now = self._clock()
        if now - self.last >= self.interval and done < total:
            self.last = now
            self.write(now)

    def write(self, now: float) -> None:
        from .render import human_bytes

        elapsed = max(now - self.started, 1e-9)
        percent = f"{100 * self.done / self.total:.0f}%" if self.total else "?%"
        print(f"{self.desc}: {human_bytes(self.done)} of {human_bytes(self.total)} ({percent}), "
              f"{human_bytes(self.done / elapsed)}/s, {elapsed:.0f} s", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


_EXIT_FOR_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
_received: list[int] = []


def _interrupt(signum, frame):
    """SIGINT or SIGTERM: unwind (the conversion removes its temporary folder on the way)
    and remember which, for the exit code (130 / 143). Further signals are ignored, so the
    cleanup itself is not cut short."""
    _received.append(signum)
    for other in _EXIT_FOR_SIGNAL:
        with _suppress_value_error():
            signal.signal(other, signal.SIG_IGN)
    raise KeyboardInterrupt


def _suppress_value_error():
    import contextlib

    return contextlib.suppress(ValueError, OSError)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="DST", type=click.Path())
@click.option("--max-shard-size", default="5GB", show_default=True, metavar="SIZE",
              help="Largest shard: 5GB = 5*10^9 bytes, 5GiB = 5*2^30, 500MB, 200KB or bytes. A tensor "
                   "larger than SIZE gets a shard of its own.")
@click.option("--dtype", default="keep", show_default=True, metavar="DTYPE", callback=dtype_option,
              help="keep, bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float): cast floating tensors "
                   "(integer, bool and float8 tensors are kept) and update config.json's dtype/torch_dtype.")
@click.option("--no-verify", is_flag=True, help="Skip the byte-for-byte comparison, the CRC-32 check of .bin "
              "storages and the validation of DST (the report then says nothing was checked).")
@click.option("--allow-invalid-output", is_flag=True,
              help="For salvage only: write DST even when it fails validation (errors already in SRC, such as "
                   "a missing tensor). The report still says the output is INVALID and the exit code is 1.")
@click.option("--manifest", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write each output tensor's sha256 to FILE (hfconv-manifest/1).")
@click.option("--force", is_flag=True, help="Replace DST if it exists (only once the new folder is complete); only "
              "an empty folder or one convert could have written (a model.safetensors or its index, no .bin "
              "weights, no dotfiles): a typo cannot delete a home directory.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Write output shards in this many processes.")
@click.option("--fsync", is_flag=True,
              help="Flush DST to the disk before it appears, so it survives a power loss complete (costs "
                   "the disk's write time, like cp -r && sync). Without it DST still appears only once "
                   "complete and verified; after a power loss, check it with hfconv validate --manifest.")
@click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, else a line every 10 s; "
              "HFCONV_PROGRESS_INTERVAL=SECONDS sets the interval).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="Summary format on stdout: text, json, or html (one self-contained page).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the summary to FILE instead of stdout.")
def convert(src, dst, max_shard_size, dtype, no_verify, allow_invalid_output, manifest, force, jobs, fsync, quiet,
            fmt, output):
    """Convert a model folder to safetensors, streaming, and verify every tensor.

    SRC holds .bin weights (single or sharded, with or without an index, old -1-of-3 names)
    or safetensors; DST (and its missing parents) is created with model.safetensors (or model-0000i-of-0000N shards
    and model.safetensors.index.json) and every non-weight file copied unchanged. Pickles
    are read by a restricted reader, never executed. DST is written in a temporary folder
    beside it and renamed only after verification, so it is complete or absent.

    \b
    Examples:
      hfconv convert ./llama-bin ./llama-safetensors
      hfconv convert ./big ./big-2g --max-shard-size 2GB --jobs 4
      hfconv convert ./model ./model-bf16 --dtype bfloat16 --manifest model.manifest.json
      hfconv convert ./model ./out --force --format json > report.json
      hfconv convert ./model ./out --format html -o convert.html

    Exit code: 0 converted (and verified), 1 input refused, conversion/verification failed or
    the output fails validation (also with --allow-invalid-output, which writes it anyway),
    2 could not run (SRC missing, DST exists without --force, --force on a folder convert did
    not write, bad option), 130/143
    interrupted by SIGINT/SIGTERM (no DST is left behind).
    """
    from .cli_common import emit as _emit
    from .cli_common import resolve_folder as _resolve_folder
    from .conversion import ConversionError
    from .conversion import convert as run_convert
    from .sharding import parse_size
    from .validation import UsageError

    try:
        parse_size(max_shard_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--max-shard-size") from None
    folder = _resolve_folder(src)
    from .cli_common import check_output

    check_output(output, reads=[folder], writes=[dst])  # before any work: DST is not created on a bad -o
    bar, update = _progress_bar(quiet, not no_verify)
    previous = {}
    for signum in _EXIT_FOR_SIGNAL:
        try:
            previous[signum] = signal.signal(signum, _interrupt)
        except ValueError:  # not the main thread (e.g. embedded): keep the default
            pass
    try:
        result = run_convert(folder, dst, max_shard_size=max_shard_size, dtype=dtype, verify=not no_verify,
                             manifest=manifest, force=force, jobs=jobs, fsync=fsync,
                             progress=update, allow_invalid_output=allow_invalid_output)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    except ConversionError as exc:
        _fail(src, dst, exc, fmt, output)
    except OSError as exc:  # a step the library does not word itself: one line, never a traceback
        from .conversion import write_failure

        _fail(src, dst, write_failure(exc, ""), fmt, output)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        click.echo("interrupted; no DST was created.", err=True)
        sys.exit(_EXIT_FOR_SIGNAL.get(_received[-1] if _received else signal.SIGINT, 130))
    finally:
        if bar is not None:
            bar.close()
        for signum, handler in previous.items():
            with _suppress_value_error():
                signal.signal(signum, handler)
    renderers = {"text": render_text, "json": render_json, "html": _render_html}
    _emit(renderers[fmt](result), output)
    if not result.ok and (output or fmt != "text"):  # the verdict where the user looks
        from .render import escape_text

        click.echo(f"convert {escape_text(src)} -> {escape_text(dst)}: output INVALID (written anyway: "
                   "--allow-invalid-output).", err=True)
    sys.exit(result.exit_code)


def _fail(src: str, dst: str, error: ConversionError, fmt: str, output: str | None) -> None:
    from .cli_common import emit as _emit

    error_renderers = {"text": render_error_text, "json": render_error_json, "html": _render_error_html}
    text = error_renderers[fmt](src, dst, error)
    if output or fmt != "text":
        _emit(text, output)
    if fmt == "text":
        click.echo(text, nl=False, err=True)
    elif output is None:  # the report is on stdout: one line on stderr too
        click.echo(render_error_text(src, dst, error).splitlines()[0], err=True)
    sys.exit(1)
