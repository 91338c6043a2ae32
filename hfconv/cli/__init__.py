"""The ``hfconv`` command: the click group, its subcommands (one module each) and the console
script :func:`run`, which turns signals and unworded OS errors into exit codes.

Exit codes (all commands): 0 success, 1 problems found / job failed verifiably, 2 could not run,
130/143 interrupted by SIGINT/SIGTERM.
"""

from __future__ import annotations

import atexit
import importlib
import os
import signal
import sys

import click

from ._common import (
    CONTEXT_SETTINGS,
    EXIT_FOR_SIGNAL,
    ProcessExit,
    describe_error,
    known_codes,
    on_signal,
    received_signals,
)

__all__ = ["known_codes", "main", "run"]

COMMANDS: dict[str, tuple[str, str]] = {
    "validate": (".validate", "validate_command"),
    "inspect": (".inspect", "inspect_command"),
    "convert": (".convert", "convert_command"),
    "load-test": (".load_test", "load_test_command"),
    "explain": (".explain", "explain_command"),
    "codes": (".explain", "codes_command"),
    "fix": (".fix", "fix_command"),
    "diff": (".diff", "diff_command"),
}
"""Command name -> (its module in this package, the click command in it)."""


class _Commands(click.Group):
    """The group of :data:`COMMANDS`, each module imported when its command is looked up: a run of
    one command (``hfconv validate``) does not import the others and what they import; ``--help``
    looks every one up, so it lists them all with their short help."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, name = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module, __name__), name), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Commands, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="hfconv")
def main() -> None:
    """Validate, convert and load-test Hugging Face model folders, without trusting them.

    \b
    Examples:
      hfconv validate ./my-model                 # exit 0 when the folder will load
      hfconv validate ./my-model --format github # annotations in a GitHub Actions step
      hfconv inspect ./my-model                  # format, shards, tensors, dtypes, bytes
      hfconv fix ./my-model --diff               # what fix would repair, changing nothing
      hfconv diff ./my-model ./my-model-st       # tensor by tensor: identical, changed, missing
      hfconv explain HFC601                      # what a finding code means and how to fix it

    Nothing in a model folder is ever executed: pickles are read by a restricted reader and
    custom code is only imported with --trust-remote-code.
    """


def _install_signal_exits() -> None:
    for signum in EXIT_FOR_SIGNAL:
        try:
            if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
                signal.signal(signum, on_signal)
        except (ValueError, OSError):  # not the main thread (embedded): keep what is there
            pass


def run() -> None:
    """The console script: :func:`main`, then a prompt exit.

    After the report is written and every output file closed, the interpreter's teardown still
    costs wall time a user and a CI job wait for: torch's module graph, allocators and thread
    pools (~0.3 s), or freeing the 100,000s of tensor records of the largest folders (~0.2 s).
    Skip it: run the atexit handlers, flush stdout and stderr and leave with the exit code.

    SIGINT and SIGTERM end any command with exit code 130 / 143 (not click's 1, which a
    pipeline reads as "problems found"). An OSError that no command turned into a finding or a
    message (a full disk, a file that vanished, a permission) is one line naming the file and
    the system's reason, exit 1: never a traceback.
    """
    _install_signal_exits()
    ProcessExit.follows_command = True
    try:
        main.main(prog_name="hfconv")
    except SystemExit as exc:
        _leave(exc)
    except OSError as exc:
        _fail(exc)


def _leave(exc: SystemExit) -> None:
    """Exit with the command's code (or the signal's), skipping the interpreter's teardown."""
    code = exc.code
    if received_signals and code not in tuple(EXIT_FOR_SIGNAL.values()):
        name = signal.Signals(received_signals[0]).name
        try:
            sys.stderr.write(f"hfconv: interrupted ({name}); nothing partial was written\n")
        except (OSError, ValueError):
            pass
        code = EXIT_FOR_SIGNAL[received_signals[0]]
    if not isinstance(code, (int, type(None))):
        if code is exc.code:
            raise exc
        sys.exit(code)
    # What an interpreter exit does besides the teardown: atexit handlers (a caller's, coverage's),
    # then the flush of the standard streams.
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: let the normal exit report it
        raise SystemExit(code) from None
    os._exit(code or 0)


def _fail(exc: OSError) -> None:
    """One line for an error no command worded (the error map), then its exit code."""
    message, code = describe_error(exc) or (str(exc), 1)
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    try:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if "torch" in sys.modules:
        os._exit(code)
    sys.exit(code)
