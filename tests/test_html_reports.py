"""issue 13: the HTML reports of every command (pictures, banner, command line, findings,
escaping, size) and the terminal bars, through the CLI on folders written by safetensors/torch.

The real-browser checks are in tests/test_browser.py."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from helpers import FIXTURES, copy_fixture

HOSTILE = '<script>alert("x")</script>\'</svg>'
HOSTILE_FILE = 'model-<b>"x"&amp;-00001-of-00003.safetensors'
HOSTILE_TENSOR = f"model.layers.0.self_attn.{HOSTILE}.weight"


def hfconv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hfconv", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "HFCONV_PROGRESS_INTERVAL": "3600"})


class Page(HTMLParser):
    """Tags, attributes and the text a reader sees (a name split by <wbr> is one text)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._join = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._join = tag == "wbr"

    def handle_data(self, data):
        if self._join and self.text:
            self.text[-1] += data
        else:
            self.text.append(data)
        self._join = False

    def count(self, tag: str, cls: str) -> int:
        return sum(1 for t, a in self.tags if t == tag and cls in (a.get("class") or "").split())

    @property
    def joined(self) -> str:
        return "".join(self.text)


def check_page(page: str) -> Page:
    """Self-contained, script-free, and a page of this issue: banner, when/how it was made, version."""
    from hfconv.render import package_version

    assert page.startswith("<!DOCTYPE html>")
    parsed = Page(page)
    names = {t for t, _ in parsed.tags}
    assert "script" not in names and not {"link", "img", "iframe", "object", "embed"} & names
    assert not [k for _, a in parsed.tags for k in a if k.startswith("on")]
    assert not [v for _, a in parsed.tags for k, v in a.items() if k in ("src", "href") and v and v[0] != "#"]
    assert "url(" not in page and "default-src 'none'" in page
    assert parsed.count("div", "banner") == 1
    assert re.search(r"Made \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC by hfconv " + re.escape(package_version()), page)
    assert "<code>hfconv " in page  # the command line
    return parsed


def hostile_folder(root: Path) -> Path:
    """The sharded fixture with markup in a tensor name, a shard's file name and the config's
    architectures (the shard rewritten by safetensors, the index and config by json)."""
    from safetensors.torch import load_file, save_file

    folder = copy_fixture(root, "llama-safetensors-sharded")
    first = "model-00001-of-00003.safetensors"
    tensors = load_file(str(folder / first))
    renamed = "model.layers.0.self_attn.k_proj.weight"
    tensors[HOSTILE_TENSOR] = tensors.pop(renamed)
    (folder / first).unlink()
    save_file(tensors, str(folder / HOSTILE_FILE), metadata={"format": "pt"})
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {(HOSTILE_TENSOR if name == renamed else name): (HOSTILE_FILE if shard == first else shard)
                           for name, shard in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = [HOSTILE]
    (folder / "config.json").write_text(json.dumps(config))
    return folder


COMMANDS = ("validate", "inspect", "load-test", "convert")


def pages(folder: Path, work: Path, *extra: str, commands: tuple[str, ...] = COMMANDS,
          convert_extra: tuple[str, ...] = (), validate_extra: tuple[str, ...] = ()) -> dict[str, str]:
    """Each command's page for ``folder`` (``extra``: load-test's options)."""
    out = {}
    for command, args in (("validate", [*validate_extra]), ("inspect", []), ("load-test", ["--quiet", *extra]),
                          ("convert", [str(work / f"converted-{folder.name}"), "--quiet", *convert_extra])):
        if command not in commands:
            continue
        page = work / f"{command}-{folder.name}.html"
        run = hfconv(command, str(folder), *args, "--format", "html", "-o", str(page))
        assert run.returncode in (0, 1), (command, run.stderr)
        assert "Traceback" not in run.stderr
        out[command] = page.read_text(encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pages")


@pytest.fixture(scope="module")
def sharded_pages(work: Path) -> dict[str, str]:
    """Every command's page for the sharded fixture; load-test limited to 100 KB of cpu, so it
    offloads to disk."""
    return pages(FIXTURES / "llama-safetensors-sharded", work, "--max-memory", "cpu=100KB")


def test_names_from_the_folder_are_text_in_every_page(tmp_path: Path) -> None:
    """Tensor names, file names and config strings with <script>, quotes and </svg> appear as
    text (in the pictures' hover text, the tables and the findings), never as markup."""
    folder = hostile_folder(tmp_path)
    # (convert --no-verify and validate --reference rules: the same names, without the time transformers takes)
    made = pages(folder, tmp_path, convert_extra=("--no-verify",), validate_extra=("--reference", "rules"),
                 commands=("validate", "inspect", "convert"))
    # load-test's page shows tensor and file names, not the config's architectures; with an unknown
    # architecture first, its validation builds a reference with transformers (seconds). The same hostile
    # names, with a known architecture first (the hostile one still in the config, second):
    loaded = hostile_folder(tmp_path / "load")
    config = json.loads((loaded / "config.json").read_text())
    config["architectures"] = ["LlamaForCausalLM", HOSTILE]
    (loaded / "config.json").write_text(json.dumps(config))
    made.update(pages(loaded, tmp_path, commands=("load-test",)))
    assert set(made) == set(COMMANDS)
    for command, page in made.items():
        assert "<script" not in page and "</svg>'" not in page, command
        parsed = check_page(page)
        assert HOSTILE in parsed.joined, command  # the tensor's name, in the shard map's hover text at least
        assert HOSTILE_FILE in parsed.text, command  # the shard's name, one text
        assert parsed.count("svg", "shard-bar") >= 1, command
    inspect = Page(made["inspect"])
    assert HOSTILE in inspect.text  # the config's architectures in the summary
    assert HOSTILE_TENSOR in inspect.text and HOSTILE_FILE in inspect.text  # the tensor table
    validate = Page(made["validate"])
    assert HOSTILE_TENSOR in validate.text  # the findings table's tensor column
    assert HOSTILE in validate.joined  # the config's architectures, quoted by HFC602/HFC603
    assert validate.count("rect", "marked") == 1  # the segment of the tensor HFC603 names, marked
    assert validate.count("g", "marked") == 1  # and its block in the layer map (HFC602, HFC603: block 0)


def test_pages_show_pictures_rows_and_no_raw_json(tmp_path: Path, sharded_pages: dict[str, str]) -> None:
    """Shard bars, layer rows, device bars and findings rows as many as the results have; human
    numbers; no raw JSON keys, no empty sections."""
    from hfconv.findings import Finding, Severity
    from hfconv.render.html import finding_rows

    broken = copy_fixture(tmp_path, "llama-safetensors-sharded")
    (broken / "model-00002-of-00003.safetensors").unlink()
    page = check_page(pages(broken, tmp_path, commands=("validate",))["validate"])
    report = json.loads(hfconv("validate", str(broken), "--format", "json").stdout)
    report = report[0] if isinstance(report, list) else report
    rows = finding_rows([Finding(f["code"], Severity(f["severity"]), f["message"], f["file"], f["tensor"])
                         for f in report["findings"]])
    assert page.count("tr", "error") + page.count("tr", "warning") + page.count("tr", "info") == len(rows)
    assert page.count("svg", "shard-bar") == 3
    assert page.count("rect", "absent") == 1 and "missing" in page.text  # the missing shard, drawn and said
    assert page.count("g", "layer-row") == 5  # what the two shards left hold: embeddings, blocks 0-1, norm, head

    made = sharded_pages
    inspect = check_page(made["inspect"])
    assert inspect.count("svg", "shard-bar") == 3 and inspect.count("g", "layer-row") == 5
    assert "21" in inspect.text and "31.4K params" in inspect.text and "125.6 KB" in inspect.text
    assert sum(1 for t, a in inspect.tags if t == "tr" and "--b:" in (a.get("style") or "")) == 21  # tensor table
    load = check_page(made["load-test"])
    assert load.count("svg", "device-bar") == 2 and load.count("svg", "device-map") == 1  # cpu and disk
    assert load.count("g", "unit") == 5 and "disk (hatched)" in load.text
    convert = check_page(made["convert"])
    assert convert.count("svg", "shard-bar") == 3 + 1  # before and after, side by side
    assert "every tensor compared byte for byte with its source, and the output passes validation" in \
        convert.joined
    for command, html in made.items():
        for raw in ("mb_per_s", "inherited_errors", "peak_rss_bytes", "(empty)", "(none)", "Dropped aliases"):
            assert raw not in html, (command, raw)
        assert not re.search(r"\d{1,3}(,\d{3}){2,}", Page(html).joined), command  # no raw byte counts
    refused = check_page(pages(FIXTURES / "llama-safetensors-sharded", tmp_path, "--max-memory", "cpu=10KB",
                               commands=("load-test",))["load-test"])
    assert "FAILED" in refused.text and refused.count("svg", "shard-bar") == 3  # a plan that does not fit
    tied = check_page(pages(FIXTURES / "llama-tied-bin", tmp_path, commands=("convert",))["convert"])
    assert "Dropped aliases (re-tied by transformers on load)" in tied.text
    assert "lm_head.weight \u2192 shares model.embed_tokens.weight" in tied.joined


def test_findings_table_json_path_column_and_filter(tmp_path: Path) -> None:
    """A JSON path goes in its own column, not the tensor's; the severity filter (CSS checkboxes)."""
    folder = copy_fixture(tmp_path, "llama-safetensors")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_file"] = "absent.json"
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    page = check_page(pages(folder, tmp_path, commands=("validate",))["validate"])
    headers = [text for text in page.text if text in ("tensor", "JSON path")]
    assert headers == ["tensor", "JSON path"]
    assert "$.tokenizer_file" in page.text
    severities = {a.get("class") for t, a in page.tags if t == "tr" and a.get("class") in ("error", "warning", "info")}
    assert "error" in severities
    boxes = sum(page.count("input", f"show-{s}") for s in ("error", "warning", "info"))
    assert boxes == (len(severities) if len(severities) > 1 else 0)


def test_page_of_a_200_layer_100_shard_folder_stays_small(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "big"
    folder.mkdir()
    weight_map = {}
    names = ["model.embed_tokens.weight"] + [f"model.layers.{i}.{part}" for i in range(200) for part in (
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight",
        "post_attention_layernorm.weight")] + ["model.norm.weight", "lm_head.weight"]
    total = 0
    for shard in range(100):
        file = f"model-{shard + 1:05d}-of-00100.safetensors"
        chunk = {n: torch.zeros(2) for n in names[shard * len(names) // 100:(shard + 1) * len(names) // 100]}
        save_file(chunk, str(folder / file))
        weight_map.update(dict.fromkeys(chunk, file))
        total += 8 * len(chunk)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 200}))
    for command in ("validate", "inspect"):
        page = tmp_path / f"{command}.html"
        run = hfconv(command, str(folder), "--format", "html", "-o", str(page))
        assert run.returncode in (0, 1) and "Traceback" not in run.stderr, run.stderr
        size = page.stat().st_size
        assert size < 2_000_000, (command, size)
        parsed = Page(page.read_text())
        assert parsed.count("svg", "shard-bar") == 100 and parsed.count("g", "layer-row") == 203, command


def _run_in_pty(*args: str) -> str:
    """hfconv with stdout on a pseudo-terminal (as a person runs it); its output."""
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "hfconv", *args], stdout=child, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 120)
        if not ready:
            break
        try:
            data = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(main)
    return b"".join(chunks).decode("utf-8", "replace")


def test_terminal_bars_only_on_a_terminal(tmp_path: Path) -> None:
    broken = copy_fixture(tmp_path, "llama-safetensors-sharded")
    (broken / "model-00002-of-00003.safetensors").unlink()
    shown = _run_in_pty("inspect", str(broken))
    bar = next(line for line in shown.splitlines() if line.startswith("  shards  "))
    assert "\u2588" in bar and "\u2591" in bar and "1 missing or unreadable" in bar, shown
    piped = hfconv("inspect", str(broken))
    assert "\u2588" not in piped.stdout and "shards  " not in piped.stdout

    shown = _run_in_pty("load-test", str(FIXTURES / "llama-safetensors-sharded"), "--quiet", "--max-memory",
                        "cpu=100KB")
    lines = shown.splitlines()
    strip = next(line for line in lines if line.startswith("  map     "))
    assert "\u2588 cpu" in strip and "\u2591 disk" in strip, shown
    memory = [line for line in lines if "[" in line and "]" in line and ("cpu" in line or "disk" in line)]
    assert len(memory) == 2 and "of 100.0 KB" in memory[0], shown
    # (the same want_bars() decides for load-test: not drawn when stdout is not a terminal)
