"""The model card (README.md's YAML metadata) as the Hub validates it on push: HFC030-HFC034.

Every folder goes through ONE ``hfconv validate --format json`` subprocess; cards written by
huggingface_hub's ModelCard and transformers' Trainer summary must give no finding at all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import copy_fixture

ENTRY = "from hfconv.cli import run; run()"
LAUGHS = "---\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)) + "---\n"

CARDS: dict[str, str | None] = {
    "no-card": None,
    "no-metadata": "# tiny llama\n\nA model card without metadata.\n",
    "empty-metadata": "---\n---\n# tiny\n",
    "duplicate-key": "---\nlicense: mit\ntags:\n- llama\nlicense: apache-2.0\n---\n# tiny\n",
    "duplicate-flow-key": "---\ncardData: {a: 1, a: 2}\n---\n",
    "bad-license": "---\nlicense: Apache 2.0\n---\n",
    "other-without-name": "---\nlicense: other\n---\n",
    "other-with-name": "---\nlicense: other\nlicense_name: tiny-license\nlicense_link: LICENSE\n---\n",
    "bad-base-model": "---\nlicense: mit\nbase_model:\n- meta-llama/Llama-2-7b-hf\n- https://huggingface.co/gpt2\n---\n",
    "bad-pipeline-tag": "---\npipeline_tag: text-gen\n---\n",
    "bad-types": "---\ntags: {a: b}\nlanguage: [en, 7]\ndatasets: 3\nlibrary_name: [transformers]\n---\n",
    "syntax-error": "---\nlicense: mit\n  tags: [x\n---\n",
    "python-tag": "---\nlicense: !!python/object/apply:os.system ['touch hfconv-card-ran']\n---\n",
    "not-a-mapping": "---\n- license\n- mit\n---\n",
    "unclosed": "---\nlicense: mit\n# no closing line\n",
    "laughs": LAUGHS,
    "not-utf8": None,  # written as bytes below
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("cards")
    folders = {}
    for name, card in CARDS.items():
        folder = copy_fixture(root / name, "llama-safetensors")
        if card is not None:
            (folder / "README.md").write_text(card, encoding="utf-8")
        folders[name] = folder
    (folders["not-utf8"] / "README.md").write_bytes(b"---\nlicense: mit\nname: \xff\xfe\n---\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", ENTRY, "validate", "--format", "json", *map(str, folders.values())],
                          capture_output=True, text=True, timeout=120, cwd=root)
    assert time.monotonic() - start < 60
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (root / "hfconv-card-ran").exists()
    documents = json.loads(proc.stdout)
    return {name: document for name, document in zip(folders, documents, strict=True)}


def _card_findings(document: dict) -> list[tuple[str, str, str]]:
    return [(f["code"], f["severity"], f["message"]) for f in document["findings"] if "HFC030" <= f["code"] <= "HFC034"]


def test_no_card_is_an_info_only(reports: dict[str, dict]) -> None:
    [(code, severity, message)] = _card_findings(reports["no-card"])
    assert (code, severity) == ("HFC030", "info") and "README.md" in message
    assert reports["no-card"]["ok"]


def test_card_without_metadata_is_an_info(reports: dict[str, dict]) -> None:
    [(code, severity, _)] = _card_findings(reports["no-metadata"])
    assert (code, severity) == ("HFC034", "info") and reports["no-metadata"]["ok"]
    assert _card_findings(reports["empty-metadata"]) == []


def test_duplicate_keys_are_an_error_naming_the_key_and_lines(reports: dict[str, dict]) -> None:
    [(code, severity, message)] = _card_findings(reports["duplicate-key"])
    assert (code, severity) == ("HFC032", "error") and not reports["duplicate-key"]["ok"]
    assert "'license' twice (lines 2 and 5)" in message
    [(code, _, message)] = _card_findings(reports["duplicate-flow-key"])
    assert code == "HFC032" and "'a' twice (line 2)" in message


@pytest.mark.parametrize(("name", "field"), [
    ("bad-license", "license"), ("other-without-name", "license_name"), ("bad-base-model", "base_model"),
    ("bad-pipeline-tag", "pipeline_tag"),
])
def test_fields_the_hub_refuses_are_errors(reports: dict[str, dict], name: str, field: str) -> None:
    document = reports[name]
    [(code, severity, message)] = _card_findings(document)
    assert (code, severity) == ("HFC033", "error") and not document["ok"]
    assert field in message and "README.md" in message
    [finding] = [f for f in document["findings"] if f["code"] == "HFC033"]
    assert finding["file"] == "README.md" and finding["tensor"] == field


def test_field_messages_say_what_the_hub_accepts(reports: dict[str, dict]) -> None:
    [(_, _, license_message)] = _card_findings(reports["bad-license"])
    assert "'Apache 2.0'" in license_message and "apache-2.0" in license_message
    [(_, _, base_message)] = _card_findings(reports["bad-base-model"])
    assert "'https://huggingface.co/gpt2' (item 2 of its list)" in base_message
    assert {f["tensor"] for f in reports["bad-types"]["findings"] if f["code"] == "HFC033"} == {
        "tags", "language", "datasets", "library_name"}
    assert _card_findings(reports["other-with-name"]) == []


@pytest.mark.parametrize(("name", "words"), [
    ("syntax-error", "line 3"), ("python-tag", "python/object"), ("not-a-mapping", "a list, not a mapping"),
    ("unclosed", "no closing ---"), ("laughs", "more than 1,000,000 values"), ("not-utf8", "not UTF-8"),
])
def test_unreadable_metadata_is_an_error(reports: dict[str, dict], name: str, words: str) -> None:
    [(code, severity, message)] = _card_findings(reports[name])
    assert (code, severity) == ("HFC031", "error"), message
    assert words in message, message


def _tiny_llama(transformers, folder: Path) -> None:
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


def test_cards_written_by_huggingface_hub_and_transformers_pass(transformers, tmp_path: Path) -> None:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData
    from transformers.modelcard import TrainingSummary

    hub_card = tmp_path / "hub-card"
    _tiny_llama(transformers, hub_card)
    data = ModelCardData(language=["en", "fr"], license="llama3.1", library_name="transformers",
                         tags=["llama", "tiny"], datasets=["wikitext", "HuggingFaceFW/fineweb"],
                         base_model="meta-llama/Llama-3.1-8B", pipeline_tag="text-generation", metrics=["perplexity"],
                         eval_results=[EvalResult(task_type="text-generation", dataset_type="wikitext",
                                                  dataset_name="WikiText", metric_type="perplexity",
                                                  metric_value=12.3)], model_name="tiny")
    ModelCard.from_template(data).save(hub_card / "README.md")
    other = tmp_path / "other-license"
    shutil.copytree(hub_card, other)
    ModelCard.from_template(ModelCardData(license="other", license_name="tiny-license", license_link="LICENSE",
                                          base_model=["org/a", "org/b"], base_model_relation="merge")
                            ).save(other / "README.md")
    trainer_card = tmp_path / "trainer-card"
    shutil.copytree(hub_card, trainer_card)
    summary = TrainingSummary(model_name="tiny", language="en", license="apache-2.0", finetuned_from="gpt2",
                              tasks="text-generation", dataset=["wikitext"], dataset_tags=["wikitext"],
                              dataset_args=["wikitext-2-raw-v1"], eval_results={"loss": 1.0},
                              hyperparameters={"learning_rate": 1e-3})
    (trainer_card / "README.md").write_text(summary.to_model_card(), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-c", ENTRY, "validate", "--format", "json", "--strict",
                           str(hub_card), str(other), str(trainer_card)],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    documents = json.loads(proc.stdout)
    assert proc.returncode == 0, [d["findings"] for d in documents]
    assert all(d["findings"] == [] for d in documents), [d["findings"] for d in documents]


def test_convert_carries_a_card_the_hub_would_refuse_without_failing(tmp_path: Path) -> None:
    """The pre-publish checks are validate's: convert's check of its output is about loading."""
    source = copy_fixture(tmp_path, "llama-bin")
    (source / "README.md").write_text(CARDS["bad-license"], encoding="utf-8")
    converted = subprocess.run([sys.executable, "-c", ENTRY, "convert", str(source), str(tmp_path / "out"), "--quiet"],
                               capture_output=True, text=True, timeout=120)
    assert converted.returncode == 0, converted.stderr
    assert (tmp_path / "out" / "README.md").read_text(encoding="utf-8") == CARDS["bad-license"]
    checked = subprocess.run([sys.executable, "-c", ENTRY, "validate", str(tmp_path / "out")], capture_output=True,
                             text=True, timeout=120)
    assert checked.returncode == 1 and "HFC033" in checked.stdout
