"""hfconv vs picklescan and modelscan on the hostile corpus and the good fixtures.

    pip install picklescan modelscan           # optional; a missing tool is reported as such
    python benchmarks/compare_scanners.py      # per-case table, then the summary (markdown)
    python benchmarks/compare_scanners.py --json results.json

The cases are every case of tests/hostile/generate.py that puts something in a pickle slot
(``pytorch_model.bin``, a shard, a training leftover, a torch zip named .safetensors): code
execution payloads, and malformed files that two readers read differently. The good cases are
the repository's .bin fixtures plus two real torch.save files with every dtype (zip and
legacy). Each tool scans the case *folder*, as a user points it at a model, in a subprocess
with a memory limit and a timeout. Verdicts:

* ``caught``  the tool flagged the folder (dangerous global, issue, or for hfconv an error);
* ``clean``   the tool scanned the file and passed it (a miss on a hostile case);
* ``error``   the tool failed on the file without flagging anything (exit 2, crash, timeout);
* ``skipped`` the tool scanned nothing (it did not recognise the file as a model).

Only ``caught`` counts as caught; ``error`` and ``skipped`` are listed apart because CI setups
differ in whether they fail on them. On good cases anything but ``clean`` is a false positive. Running the scanners is slow (about a second per case and tool).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile.generate import build_corpus  # noqa: E402

TIMEOUT_S = 120
MEMORY_LIMIT = 4 << 30
TOOLS = ("hfconv", "picklescan", "modelscan")


@dataclass
class Target:
    name: str
    folder: Path
    group: str
    """``payload`` (code execution), ``malformed`` (parser differential / broken), ``good``."""
    expected: str = ""


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.setsid()


def _run(argv: list[str], cwd: Path) -> tuple[int | None, str]:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=_limits,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"})
    except subprocess.TimeoutExpired:
        return None, "timeout"
    return proc.returncode, proc.stdout + proc.stderr


def run_hfconv(folder: Path, cwd: Path) -> tuple[str, str]:
    code, out = _run([sys.executable, "-m", "hfconv.cli", "validate", str(folder), "--format", "json"], cwd)
    if code is None:
        return "error", "timeout"
    try:
        report = json.loads(out[:out.rindex("}") + 1])
    except ValueError:
        return "error", f"exit {code}: {out[-200:]}"
    errors = [f"{f['code']} {f['tensor'] or ''}".strip() for f in report["findings"] if f["severity"] == "error"]
    if code == 1 and errors:
        return "caught", ", ".join(dict.fromkeys(errors))[:80]
    return ("clean", "") if code == 0 else ("error", f"exit {code}")


def run_picklescan(folder: Path, cwd: Path) -> tuple[str, str]:
    if shutil.which("picklescan") is None:
        return "absent", ""
    code, out = _run(["picklescan", "-p", str(folder)], cwd)
    if code is None:
        return "error", "timeout"
    found = re.findall(r"dangerous import '([^']+)'", out)
    scanned = re.search(r"Scanned files: (\d+)", out)
    if found:
        return "caught", ", ".join(dict.fromkeys(g.replace(" ", ".") for g in found))[:80]
    if scanned and int(scanned.group(1)) == 0:
        return "skipped", "0 files scanned"
    if code == 2 or "ERROR" in out:
        line = next((ln for ln in out.splitlines() if "ERROR" in ln), f"exit {code}")
        return "error", line.split("ERROR", 1)[-1].strip(" :-")[:80]
    if code == 1:
        return "caught", "issues"
    return "clean", ""


def run_modelscan(folder: Path, cwd: Path) -> tuple[str, str]:
    if shutil.which("modelscan") is None:
        return "absent", ""
    report_path = cwd / "modelscan.json"
    report_path.unlink(missing_ok=True)
    code, out = _run(["modelscan", "-p", str(folder), "-r", "json", "-o", str(report_path)], cwd)
    if code is None:
        return "error", "timeout"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return "error", f"exit {code}, no report"
    issues = report.get("issues") or []
    if issues:
        names = [f"{i.get('module')}.{i.get('operator')}" for i in issues]
        return "caught", ", ".join(dict.fromkeys(names))[:80]
    if code == 3 or not (report.get("summary", {}).get("scanned") or {}).get("total_scanned"):
        return "skipped", "no supported file"
    if report.get("errors") or code == 2:
        err = (report.get("errors") or [{}])[0]
        return "error", str(err.get("description") or err.get("message") or f"exit {code}")[:80]
    return "clean", ""


RUNNERS = {"hfconv": run_hfconv, "picklescan": run_picklescan, "modelscan": run_modelscan}


def targets(corpus: Path) -> list[Target]:
    out: list[Target] = []
    for case in build_corpus(corpus):
        if case.weight_file is None or not case.codes:
            continue  # safetensors, JSON, containment, templates: no pickle for a pickle scanner
        payload = "HFC201" in case.codes or case.live or "leftover" in case.rule
        out.append(Target(case.name, case.path, "payload" if payload else "malformed", "/".join(case.codes)))
    good_root = corpus.parent / "good"
    good_root.mkdir()
    for fixture in sorted(ROOT.glob("fixtures/*")):
        if any(fixture.glob("*.bin")):
            out.append(Target(f"fixture {fixture.name}", fixture, "good"))
    for legacy in (False, True):
        folder = good_root / f"torch_save_all_dtypes{'_legacy' if legacy else ''}"
        folder.mkdir()
        _save_all_dtypes(folder / "pytorch_model.bin", legacy)
        out.append(Target(folder.name, folder, "good"))
    return out


def _save_all_dtypes(path: Path, legacy: bool) -> None:
    import torch

    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.int16,
              torch.int8, torch.uint8, torch.bool]
    if not legacy:
        dtypes += [torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32, torch.uint64]
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {f"t_{str(dt).removeprefix('torch.')}": (base > 4 if dt == torch.bool else base.to(dt)) for dt in dtypes}
    state["view"] = base.T
    state["param"] = torch.nn.Parameter(torch.ones(2))
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy)
    path.write_bytes(buf.getvalue())


def summarize(rows: list[dict]) -> str:
    """The README's table: caught per group, and false positives on the good cases."""
    groups = {"payload": "code-execution payloads", "malformed": "malformed / parser differentials"}
    lines = ["| tool | " + " | ".join(f"{label}: caught (passed as clean / error / skipped)"
                                    for label in groups.values())
             + " | false positives on good files |",
             "|---|" + "---|" * len(groups) + "---|"]
    for tool in TOOLS:
        if all(r[tool][0] == "absent" for r in rows):
            lines.append(f"| {tool} | " + " | ".join("not installed" for _ in groups) + " | not installed |")
            continue
        cells = []
        for group in groups:
            sel = [r[tool][0] for r in rows if r["group"] == group]
            cells.append(f"{sel.count('caught')}/{len(sel)} ({sel.count('clean')} / {sel.count('error')} / "
                         f"{sel.count('skipped')})")
        good = [r[tool][0] for r in rows if r["group"] == "good"]
        false_pos = sum(1 for v in good if v != "clean")
        cells.append(f"{false_pos}/{len(good)}")
        lines.append(f"| {tool} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the per-case verdicts to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hfconv-compare-") as tmp:
        base = Path(tmp)
        corpus = base / "corpus"
        corpus.mkdir()
        work = base / "cwd"
        work.mkdir()
        rows = []
        print(f"{'case':40} {'group':10} " + " ".join(f"{t:12}" for t in TOOLS), file=sys.stderr)
        for target in targets(corpus):
            row: dict = {"case": target.name, "group": target.group, "expected": target.expected}
            for tool in TOOLS:
                row[tool] = RUNNERS[tool](target.folder, work)
            rows.append(row)
            print(f"{target.name:40} {target.group:10} " + " ".join(f"{row[t][0]:12}" for t in TOOLS)
                  + "  " + " | ".join(f"{t}: {row[t][1]}" for t in TOOLS if row[t][1]), file=sys.stderr)
        sentinels = list((corpus / "_sentinels").iterdir())
        if sentinels:  # a scanner that executes what it scans would show here
            print(f"WARNING: payloads ran during the scans: {[p.name for p in sentinels]}", file=sys.stderr)
    print()
    print("### Per case\n")
    print("| case | group | " + " | ".join(TOOLS) + " |")
    print("|---|---|" + "---|" * len(TOOLS))
    for row in rows:
        print(f"| {row['case']} | {row['group']} | " + " | ".join(
            f"{row[t][0]}{': ' + row[t][1] if row[t][1] else ''}".replace("|", "\\|")
            for t in TOOLS) + " |")
    print("\n### Summary\n")
    print(summarize(rows))
    versions = {t: _version(t) for t in TOOLS[1:]}
    print("Versions: " + ", ".join(f"{t} {v}" for t, v in versions.items()))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "versions": versions}, indent=1))
    return 0


def _version(tool: str) -> str:
    try:
        from importlib.metadata import version

        return version(tool)
    except Exception:  # noqa: BLE001
        return "not installed"


if __name__ == "__main__":
    sys.exit(main())
