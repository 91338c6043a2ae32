"""``hfconv load-test``: fills the options, calls :func:`hfconv.loading.load_test`, renders.

Importing this module must stay cheap (``hfconv.cli`` imports it): no torch, and the
loading library itself is imported only when the command runs.
"""

from __future__ import annotations

import sys

import click

__all__ = ["load_test"]

_MAP_HELP = ("auto (GPUs balanced, then cpu, then disk), balanced (GPUs only, evenly), sequential (fill each "
             "device in order), or a JSON file {module_prefix: device} as from_pretrained(device_map=...) takes it.")


def _parse_memory(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    """``DEVICE=SIZE`` pairs; the syntax is checked here (exit 2), the sizes by the library."""
    limits: dict[str, str] = {}
    for value in values:
        device, sep, size = value.partition("=")
        if not sep or not device.strip() or not size.strip():
            raise click.BadParameter(f"{value!r} is not DEVICE=SIZE (e.g. cuda:0=20GiB, cpu=64GB, disk=200GB)")
        limits[device.strip()] = size.strip()
    return limits


def _progress_bar(quiet: bool):
    """A tqdm bar over bytes on stderr, or None when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr, desc="load-test",
               dynamic_ncols=True, leave=False)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    return bar, update


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
@click.option("--dtype", type=click.Choice(["keep", "float32", "float16", "bfloat16"]), default="keep",
              show_default=True, help="Cast floating tensors on their device after verification (plans with the "
                                      "cast sizes).")
@click.option("--forward", is_flag=True,
              help="Also build the model with transformers on the same device map and run one forward pass on a few "
                   "tokens from the folder's tokenizer (needs hfconv[transformers]).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True,
              help="Report format: text, json, or html (one self-contained page).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the report to FILE instead of stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def load_test(path, device_map, max_memory, offload_folder, dtype, forward, fmt, output, quiet):
    """Load every tensor onto the devices it will be served from, and prove every byte arrived.

    PATH is a model folder (or an org/name repo id in the local Hub cache). The folder is
    validated first (a folder with errors is refused: nothing hostile reaches torch). Then a
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
    from .cli import _emit, _resolve_folder, check_output, require_modules
    from .loading import load_test as run_load_test
    from .loading import render_json, render_text
    from .render import escape_text
    from .validation import UsageError

    folder = _resolve_folder(path)
    reads = [folder] + ([device_map] if device_map not in ("auto", "balanced", "sequential") else [])
    check_output(output, reads=reads)
    if forward:
        require_modules("--forward", ("transformers", "accelerate"))
    bar, update = _progress_bar(quiet)
    try:
        result = run_load_test(folder, device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                               dtype=dtype, forward=forward, progress=update)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    if fmt == "html":
        from .render_html import render_load_html

        text = render_load_html(result)
    else:
        text = render_json(result) if fmt == "json" else render_text(result)
    _emit(text, output)
    if output is not None or fmt != "text":  # the report is not on the terminal: say the verdict there
        if not result.ok:
            noun = "error" if result.errors == 1 else "errors"
            click.echo(f"load-test {escape_text(path)}: FAILED ({result.errors} {noun})", err=True)
    sys.exit(result.exit_code)
