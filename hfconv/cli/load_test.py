"""``hfconv load-test``: fills the options, calls :func:`hfconv.load.load_test`, renders (with
:mod:`hfconv.render.load`), sets the exit code.

Importing this module must stay cheap (``hfconv.cli`` imports it): no torch, and the
loading library itself is imported only when the command runs.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from ._common import (
    CONTEXT_SETTINGS,
    ProgressLines,
    check_output,
    checked_codes,
    codes_option,
    dtype_option,
    emit,
    flag_findings,
    format_option,
    output_option,
    require_modules,
    require_torch,
    resolve_folder,
    tqdm_bar,
    usage_errors,
)

__all__ = ["load_test_command"]

_MAP_HELP = ("auto (GPUs balanced, then cpu, then disk), balanced (GPUs only, evenly), sequential (fill each "
             "device in order), or a JSON file {module_prefix: device} as from_pretrained(device_map=...) takes it.")


def _parse_memory(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``DEVICE=SIZE`` pairs; the syntax is checked here (exit 2), the sizes by the library."""
    from ..load.device_map import DeviceMapSyntaxError, parse_device
    from ..render import escape_text

    limits: dict[str, str] = {}
    given: dict[str, str] = {}
    for value in values:
        device, sep, size = value.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise click.BadParameter(f"{escape_text(value)!r} is not DEVICE=SIZE (e.g. cuda:0=20GiB, cpu=64GB, "
                                     "disk=200GB)")
        try:
            name = parse_device(device.strip())
        except DeviceMapSyntaxError:
            name = device.strip()  # the library words a bad device name
        if name in given:
            raise click.BadParameter(f"{name} is given twice ({escape_text(given[name])} and {escape_text(value)}); "
                                     "give one limit per device")
        given[name] = value
        limits[device.strip()] = size.strip()
    return limits


class _Progress:
    """load-test's progress on stderr: a tqdm bar labelled with the phase (validating,
    importing torch, loading) on a terminal, ended before the forward pass, which gets a line
    of its own; in a log (not a terminal) a line every HFCONV_PROGRESS_INTERVAL seconds while
    loading; nothing when quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.bar: Any = None
        self.lines: ProgressLines | None = None
        if quiet:
            return
        if self.tty:
            self.bar = tqdm_bar("load-test: starting")
        else:
            self.lines = ProgressLines("load-test: loading")

    def phase(self, name: str) -> None:
        if self.bar is not None:
            if name == "forward pass":  # no bytes to count: end the bar, say what runs
                self.bar.close()
                self.bar = None
                print("load-test: forward pass (building the model with transformers, one pass on a few tokens)...",
                      file=sys.stderr, flush=True)
                return
            self.bar.set_description(f"load-test: {name}")
            self.bar.refresh()

    def update(self, done: int, total: int) -> None:
        if self.bar is not None:
            if self.bar.total != total:
                self.bar.total = total
            self.bar.update(done - self.bar.n)
        elif self.lines is not None:
            self.lines.update(done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None



@click.command("load-test", context_settings=CONTEXT_SETTINGS)
@click.argument("path", metavar="PATH")
@click.option("--device-map", "device_map", default="auto", show_default=True, metavar="auto|balanced|sequential|FILE",
              help=_MAP_HELP)
@click.option("--max-memory", "max_memory", multiple=True, callback=_parse_memory, metavar="DEVICE=SIZE",
              help="Limit for one device (repeatable): 0 or cuda:0, cpu, disk; sizes as 20GiB, 64GB, 500MB. "
                   "Devices not named get 90% of their free memory; DEVICE=0 leaves a device out.")
@click.option("--offload-folder", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Where disk tensors of .bin weights are written and read back (a temporary subfolder, removed "
                   "after). Default: the system temp dir. safetensors shards are read back in place.")
@dtype_option(help="keep, bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float): cast floating tensors on "
                   "their device after verification (plans with the cast sizes).")
@click.option("--strict", is_flag=True, help="Refuse a folder with any validation error (by default only errors "
              "in the weights, the index or config.json refuse it; the others are reported as HFC744).")
@codes_option("--select", help="Only consider these validation codes or prefixes, as validate --select.")
@codes_option("--ignore", help="Ignore these validation codes or prefixes, as validate --ignore.")
@click.option("--forward", is_flag=True,
              help="Also build the model with transformers on the same device map and run one forward pass on a few "
                   "tokens from the folder's tokenizer (needs transformers and accelerate: "
                   "pip install transformers accelerate).")
@format_option(["text", "json", "html"], help="Report format: text, json, or html (one self-contained page).")
@output_option(help="Write the report to FILE instead of stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, else a line every 10 s; "
              "HFCONV_PROGRESS_INTERVAL=SECONDS sets the interval).")
def load_test_command(path: str, device_map: str, max_memory: dict[str, str], offload_folder: str | None, dtype: str,
                      strict: bool, select: tuple[str, ...], ignore: tuple[str, ...], forward: bool, fmt: str,
                      output: str | None, quiet: bool) -> None:
    """Load every tensor onto the devices it will be served from, and prove every byte arrived.

    PATH is a model folder (or an org/name repo id in the local Hub cache). The folder is
    validated first (a folder with errors in its weights, index or config.json is refused:
    nothing hostile reaches torch; --strict refuses any error). Then a
    device map is planned (never splitting a decoder block) or read, every tensor is read onto
    its device shard by shard (disk tensors are written to the offload folder, or stay mapped
    in their safetensors shard, and read back once), and a checksum computed on the device is
    compared with the checksum of the bytes in the file. The report gives the plan, tensors
    and bytes per device, peak memory per device and of the host, and seconds per phase.

    \b
    Examples:
      hfconv load-test ./my-model
      hfconv load-test ./my-model --device-map balanced --max-memory 0=20GiB --max-memory 1=20GiB
      hfconv load-test ./my-model --max-memory cpu=8GB --offload-folder /scratch/offload
      hfconv load-test ./my-model --device-map map.json --dtype bfloat16 --forward
      hfconv load-test ./my-model --format json -o load.json
      hfconv load-test ./my-model --format html -o load.html

    Exit code: 0 every tensor loaded and verified, 1 the folder has errors, the map does not
    fit or a tensor failed to load or verify, 2 could not run (PATH missing, bad map file,
    bad device name or size).
    """
    from ..discovery import hub_snapshot_name
    from ..load import load_test as run_load_test
    from ..render import escape_text
    from ..render.load import render_load_json, render_load_text

    # 1. Check the options, the folder and the map file before any work.
    selected, ignored = checked_codes(select, "--select"), checked_codes(ignore, "--ignore")
    folder = resolve_folder(path)
    reads = [folder] + ([device_map] if device_map not in ("auto", "balanced", "sequential") else [])
    check_output(output, reads=reads)
    require_torch("load-test")
    if forward:
        require_modules("--forward", ("transformers", "accelerate"))
    # 2. Load and verify, with progress.
    progress = _Progress(quiet)
    try:
        with usage_errors():
            result = run_load_test(folder, device_map=device_map, max_memory=max_memory,
                                   offload_folder=offload_folder, dtype=dtype, forward=forward,
                                   progress=progress.update, phase=progress.phase, select=selected, ignore=ignored,
                                   strict=strict)
    finally:
        progress.close()
    # 3. Write the report (the findings name the CLI's flags); the verdict on stderr when it is not on
    #    the terminal; exit.
    result = dataclasses.replace(result, findings=flag_findings(result.findings),
                                 path=hub_snapshot_name(folder) or result.path)  # a Hub repo: org/name@rev
    if fmt == "html":
        from ..render.html import render_load_html

        text = render_load_html(result)
    else:
        # The device bars are for a terminal: drawn when stdout is one, never into an --output file.
        text = render_load_json(result) if fmt == "json" else render_load_text(result, bars=False if output else None)
    emit(text, output)
    if output is not None or fmt != "text":  # the report is not on the terminal: say the verdict there
        if not result.ok:
            noun = "error" if result.errors == 1 else "errors"
            click.echo(f"load-test {escape_text(path)}: FAILED ({result.errors} {noun})", err=True)
    sys.exit(result.exit_code)
