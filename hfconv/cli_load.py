"""``hfconv load-test``: fills the options, calls :func:`hfconv.loading.load_test`, renders.

Importing this module must stay cheap (``hfconv.cli`` imports it): no torch, and the
loading library itself is imported only when the command runs.
"""

from __future__ import annotations

import sys

import click

from .cli_convert import dtype_option

__all__ = ["load_test"]

_MAP_HELP = ("auto (GPUs balanced, then cpu, then disk), balanced (GPUs only, evenly), sequential (fill each "
             "device in order), or a JSON file {module_prefix: device} as from_pretrained(device_map=...) takes it.")


def _parse_memory(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``DEVICE=SIZE`` pairs; the syntax is checked here (exit 2), the sizes by the library."""
    from .device_map import DeviceMapSyntaxError, parse_device
    from .render import escape_text

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
        self.bar = None
        self.lines = None
        if quiet:
            return
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr,
                            desc="load-test: starting", dynamic_ncols=True, leave=False)
        else:
            from .cli_convert import ProgressLines

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


@click.command("load-test", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("path", metavar="PATH")
@click.option("--device-map", "device_map", default="auto", show_default=True, metavar="auto|balanced|sequential|FILE",
              help=_MAP_HELP)
@click.option("--max-memory", "max_memory", multiple=True, callback=_parse_memory, metavar="DEVICE=SIZE",
              help="Limit for one device (repeatable): 0 or cuda:0, cpu, disk; sizes as 20GiB, 64GB, 500MB. "
                   "Devices not named get 90% of their free memory; DEVICE=0 leaves a device out.")
@click.option("--offload-folder", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Where disk tensors of .bin weights are written and read back (a temporary subfolder, removed "
                   "after). Default: the system temp dir. safetensors shards are read back in place.")
@click.option("--dtype", default="keep", show_default=True, metavar="DTYPE", callback=dtype_option,
              help="keep, bfloat16 (bf16), float16 (fp16, half) or float32 (fp32, float): cast floating tensors on "
                   "their device after verification (plans with the cast sizes).")
@click.option("--strict", is_flag=True, help="Refuse a folder with any validation error (by default only errors "
              "in the weights, the index or config.json refuse it; the others are reported as HFC744).")
@click.option("--select", multiple=True, metavar="CODES",
              help="Only consider these validation codes or prefixes, as validate --select.")
@click.option("--ignore", multiple=True, metavar="CODES",
              help="Ignore these validation codes or prefixes, as validate --ignore.")
@click.option("--forward", is_flag=True,
              help="Also build the model with transformers on the same device map and run one forward pass on a few "
                   "tokens from the folder's tokenizer (needs hfconv[transformers]).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="Report format: text, json, or html (one self-contained page).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the report to FILE instead of stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress (a bar on a terminal, else a line every 10 s; "
              "HFCONV_PROGRESS_INTERVAL=SECONDS sets the interval).")
def load_test(path, device_map, max_memory, offload_folder, dtype, strict, select, ignore, forward, fmt, output,
              quiet):
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
    from .cli_common import check_output, require_modules
    from .cli_common import checked_codes as _checked_codes
    from .cli_common import emit as _emit
    from .cli_common import resolve_folder as _resolve_folder
    from .loading import load_test as run_load_test
    from .loading import render_json, render_text
    from .render import escape_text
    from .validation import UsageError

    selected, ignored = _checked_codes(select, "--select"), _checked_codes(ignore, "--ignore")
    folder = _resolve_folder(path)
    reads = [folder] + ([device_map] if device_map not in ("auto", "balanced", "sequential") else [])
    check_output(output, reads=reads)
    if forward:
        require_modules("--forward", ("transformers", "accelerate"))
    progress = _Progress(quiet)
    try:
        result = run_load_test(folder, device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                               dtype=dtype, forward=forward, progress=progress.update, phase=progress.phase,
                               select=selected, ignore=ignored, strict=strict)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        progress.close()
    if fmt == "html":
        from .render.html import render_load_html

        text = render_load_html(result)
    else:
        text = render_json(result) if fmt == "json" else render_text(result)
    _emit(text, output)
    if output is not None or fmt != "text":  # the report is not on the terminal: say the verdict there
        if not result.ok:
            noun = "error" if result.errors == 1 else "errors"
            click.echo(f"load-test {escape_text(path)}: FAILED ({result.errors} {noun})", err=True)
    sys.exit(result.exit_code)
