"""Run hfconv CLI commands in this one process and print what happened as JSON.

The hostile-corpus tests start this script in a subprocess under an address-space limit and
a timeout (set by the parent), with a private working directory, HOME and TMPDIR. Running a
case's commands (validate, convert, load-test) in one process pays the interpreter and torch
start-up once per case instead of once per command. A crash of hfconv is not caught here: the
traceback and a non-JSON stdout make the test fail.

    python tests/hostile/_runner.py '[["validate", "DIR", "--format", "json"], ...]'
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import time


def main(argv: list[str]) -> int:
    commands = json.loads(argv[1])
    from hfconv.cli import main as cli

    results = []
    for args in commands:
        out, err = io.StringIO(), io.StringIO()
        started = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main(args=args, prog_name="hfconv", standalone_mode=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        results.append({"args": args, "exit": code, "stdout": out.getvalue(), "stderr": err.getvalue()[-4000:],
                        "seconds": round(time.perf_counter() - started, 3)})
    sys.stdout.write(json.dumps({"results": results, "peak_rss": _peak_rss()}))
    return 0


def _peak_rss() -> int:
    """Peak resident bytes of this process since exec.

    /proc's VmHWM belongs to this program's memory map; ru_maxrss would also count the RSS
    that the parent (a pytest process with torch loaded) had when it forked this one.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


if __name__ == "__main__":
    sys.exit(main(sys.argv))
