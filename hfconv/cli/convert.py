"""``hfconv convert``: fills the options, calls the conversion library, renders (with
:mod:`hfconv.render.convert`), sets the exit code.

Importing this module must stay cheap (``hfconv.cli`` imports it): no torch, and the
conversion library itself is imported only when the command runs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

import click

from ._common import (
    CONTEXT_SETTINGS,
    EXIT_FOR_SIGNAL,
    check_output,
    check_size,
    dtype_option,
    emit,
    flag_findings,
    flag_wording,
    format_option,
    on_signal,
    output_option,
    progress_bar,
    received_signals,
    require_torch,
    resolve_folder,
    usage_errors,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..conversion import ConversionError, ConversionResult

__all__ = ["convert_command"]


@click.command("convert", context_settings=CONTEXT_SETTINGS)
@click.argument("src", metavar="SRC")
@click.argument("dst", metavar="[DST]", type=click.Path(), required=False)
@click.option("--max-shard-size", default="5GB", show_default=True, metavar="SIZE",
              help="Largest shard: 5GB = 5*10^9 bytes, 5GiB = 5*2^30, 500MB, 200KB or bytes. A tensor "
                   "larger than SIZE gets a shard of its own.")
@dtype_option(help="keep, bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float): cast floating tensors "
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
@click.option("--in-place", is_flag=True,
              help="No DST: write model.safetensors (or shards and their index) into SRC beside its .bin files, "
                   "verified, as the Hub's conversion does; the .bin files stay.")
@click.option("--delete-bin", is_flag=True,
              help="With --in-place: delete the .bin files (and their index) once the safetensors are verified "
                   "and the folder validated; never before.")
@click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, else a line every 10 s; "
              "HFCONV_PROGRESS_INTERVAL=SECONDS sets the interval).")
@format_option(["text", "json", "html"],
               help="Summary format on stdout: text, json, or html (one self-contained page).")
@output_option(help="Write the summary to FILE instead of stdout.")
def convert_command(src: str, dst: str | None, max_shard_size: str, dtype: str, no_verify: bool,
                    allow_invalid_output: bool, manifest: str | None, force: bool, jobs: int, fsync: bool,
                    in_place: bool, delete_bin: bool, quiet: bool, fmt: str, output: str | None) -> None:
    """Convert a model folder to safetensors, streaming, and verify every tensor.

    SRC holds .bin weights (single or sharded, with or without an index, old -1-of-3 names)
    or safetensors; DST (and its missing parents) is created with model.safetensors (or model-0000i-of-0000N shards
    and model.safetensors.index.json) and every non-weight file copied unchanged. Pickles
    are read by a restricted reader, never executed. DST is written in a temporary folder
    beside it and renamed only after verification, so it is complete or absent. With
    --in-place (no DST) the safetensors are written into SRC beside its .bin files, verified,
    and the .bin files stay unless --delete-bin (which deletes them only after verification).

    \b
    Examples:
      hfconv convert ./llama-bin ./llama-safetensors
      hfconv convert ./big ./big-2g --max-shard-size 2GB --jobs 4
      hfconv convert ./model ./model-bf16 --dtype bfloat16 --manifest model.manifest.json
      hfconv convert ./model ./out --force --format json > report.json
      hfconv convert ./model ./out --format html -o convert.html
      hfconv convert ./llama-bin --in-place --delete-bin   # safetensors beside, then no .bin

    Exit code: 0 converted (and verified), 1 input refused, conversion/verification failed or
    the output fails validation (also with --allow-invalid-output, which writes it anyway),
    2 could not run (SRC missing, DST exists without --force, --force on a folder convert did
    not write, bad option), 130/143
    interrupted by SIGINT/SIGTERM (no DST is left behind).
    """
    from ..conversion import ConversionError, write_failure
    from ..conversion import convert as run_convert

    # 1. Check the options and SRC before any work: DST is not created on a bad -o.
    check_size(max_shard_size, "--max-shard-size")
    _check_in_place(dst, in_place, delete_bin, dtype, manifest, force, allow_invalid_output, no_verify)
    folder = resolve_folder(src)
    check_output(output, reads=[folder], writes=[dst] if dst is not None else [])
    if dtype != "keep":
        require_torch("convert --dtype")  # casting is torch's; copying and resharding are not
    # 2. Convert, with progress; a signal unwinds it (the temporary folder is removed) to exit 130/143.
    bar, update = progress_bar(quiet, not no_verify)
    before = _written_state(folder, dst, in_place)
    previous = _catch_signals()
    try:
        with usage_errors():
            if in_place:
                result = run_convert(folder, in_place=True, delete_bin=delete_bin, max_shard_size=max_shard_size,
                                     verify=not no_verify, jobs=jobs, fsync=fsync, progress=update)
            else:
                assert dst is not None
                result = run_convert(folder, dst, max_shard_size=max_shard_size, dtype=dtype,
                                     verify=not no_verify, manifest=manifest, force=force, jobs=jobs, fsync=fsync,
                                     progress=update, allow_invalid_output=allow_invalid_output)
    except ConversionError as exc:
        _fail(src, dst or src, exc, fmt, output)
    except OSError as exc:  # a step the library does not word itself: one line, never a traceback
        _fail(src, dst or src, write_failure(exc, ""), fmt, output)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
            bar = None
        click.echo(_interrupted_line(folder, dst, in_place, before), err=True)
        sys.exit(EXIT_FOR_SIGNAL.get(received_signals[-1] if received_signals else signal.SIGINT, 130))
    finally:
        if bar is not None:
            bar.close()
        _restore_signals(previous)
    # 3. Write the summary; the verdict where the user looks; exit.
    _succeed(src, dst or src, result, fmt, output)


def _check_in_place(dst: str | None, in_place: bool, delete_bin: bool, dtype: str, manifest: str | None,
                    force: bool, allow_invalid_output: bool, no_verify: bool) -> None:
    """DST or --in-place, and the flags that go with each (exit 2 before any work)."""
    if delete_bin and not in_place:
        raise click.UsageError("--delete-bin applies only with --in-place")
    if not in_place:
        if dst is None:
            raise click.UsageError("Missing argument 'DST' (or pass --in-place to write into SRC).")
        return
    if dst is not None:
        raise click.UsageError("--in-place writes into SRC; give no DST")
    given = [flag for flag, on in (("--dtype", dtype != "keep"), ("--manifest", manifest is not None),
                                   ("--force", force), ("--allow-invalid-output", allow_invalid_output)) if on]
    if given:
        raise click.UsageError(f"--in-place cannot be combined with {', '.join(given)} (the .bin files stay beside "
                               "the safetensors and must hold the same weights; convert to another folder instead)")
    if delete_bin and no_verify:
        raise click.UsageError("--delete-bin needs verification: it deletes the .bin files only after it; drop "
                               "--no-verify")


def _written_state(folder: str, dst: str | None, in_place: bool) -> object:
    """What says whether the conversion has been put in place: DST's identity (device and inode,
    None when absent: a new folder is renamed over it), or with ``in_place`` which safetensors
    weights SRC holds (none before: the library refuses a folder that has some)."""
    from ..sharding import INDEX_FILE

    if in_place:
        return tuple(os.path.lexists(os.path.join(folder, name)) for name in ("model.safetensors", INDEX_FILE))
    assert dst is not None
    try:
        st = os.lstat(dst)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _interrupted_line(folder: str, dst: str | None, in_place: bool, before: object) -> str:
    """What an interrupt left, said as it is: a signal can come after the conversion was put in
    place (the last rename is atomic, and the library finishes it before the interrupt)."""
    done = _written_state(folder, dst, in_place) != before
    if in_place:
        return ("interrupted after the conversion was complete: its safetensors are in SRC." if done
                else "interrupted; nothing was written into SRC.")
    return "interrupted after DST was complete and in place." if done else "interrupted; no DST was created."


def _catch_signals() -> dict[int, object]:
    """SIGINT and SIGTERM unwind the conversion; the handlers they replace, to restore."""
    previous: dict[int, object] = {}
    for signum in EXIT_FOR_SIGNAL:
        try:
            previous[signum] = signal.signal(signum, on_signal)
        except ValueError:  # not the main thread (e.g. embedded): keep the default
            pass
    return previous


def _restore_signals(previous: dict[int, object]) -> None:
    for signum, handler in previous.items():
        with contextlib.suppress(ValueError, OSError):
            signal.signal(signum, handler)  # type: ignore[arg-type]


def _succeed(src: str, dst: str, result: ConversionResult, fmt: str, output: str | None) -> NoReturn:
    from ..discovery import hub_snapshot_name
    from ..render import convert as reports
    from ..render import escape_text

    renderers = {"text": reports.render_text, "json": reports.render_json, "html": reports.render_html}
    result = dataclasses.replace(result, findings=flag_findings(result.findings),  # the CLI names its flags
                                 src=hub_snapshot_name(result.src) or result.src)  # a Hub repo: org/name@rev
    text = renderers[fmt](result)
    if fmt == "text" and result.in_place:  # what happened in SRC: the in-place findings (HFC717, HFC718)
        text += "".join(f"  in place  {escape_text(f.message)}\n" for f in result.findings
                        if f.code in ("HFC717", "HFC718"))
    emit(text, output)
    if not result.ok and (output or fmt != "text"):  # the verdict where the user looks
        click.echo(f"convert {escape_text(src)} -> {escape_text(dst)}: output INVALID (written anyway: "
                   "--allow-invalid-output).", err=True)
    sys.exit(result.exit_code)


def _fail(src: str, dst: str, error: ConversionError, fmt: str, output: str | None) -> NoReturn:
    from ..render import convert as reports

    error_renderers = {"text": reports.render_error_text, "json": reports.render_error_json,
                       "html": reports.render_error_html}
    error = _flag_error(error)
    text = error_renderers[fmt](src, dst, error)
    if output or fmt != "text":
        emit(text, output)
    if fmt == "text":
        click.echo(text, nl=False, err=True)
    elif output is None:  # the report is on stdout: one line on stderr too
        click.echo(reports.render_error_text(src, dst, error).splitlines()[0], err=True)
    sys.exit(1)


def _flag_error(error: ConversionError) -> ConversionError:
    """``error`` with its message and findings in CLI wording (the library names its keywords)."""
    worded = copy.copy(error)
    worded.message = flag_wording(error.message, error.code)
    worded.findings = flag_findings(error.findings)
    return worded
