"""Schema checks (HFC402..HFC410): each test breaks one file of a copy of a real fixture."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hfconv.checks.schemas import (
    MAX_FINDINGS_PER_FILE,
    SCHEMA_FILES,
    json_path,
    known_model_types,
    load_schema,
    schema_problems,
)
from hfconv.cli import main
from hfconv.findings import REGISTRY, Severity
from hfconv.validation import validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GOOD = sorted(p.name for p in FIXTURES.glob("llama-*") if p.is_dir())
MY_CODES = ("HFC402", "HFC403", "HFC404", "HFC405", "HFC406", "HFC407", "HFC408", "HFC409", "HFC410")


def copy_fixture(tmp_path: Path, name: str = "llama-safetensors") -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def edit_json(path: Path, change) -> None:
    """Apply ``change`` (which mutates the parsed object in place) and write the file back."""
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def found(report, code: str) -> list:
    return [f for f in report.findings if f.code == code]


def problems_at(schema: str, data) -> dict[str, str]:
    return {p.path: p.message for p in schema_problems(schema, data)}


def fixture_config() -> dict:
    return json.loads((FIXTURES / "llama-safetensors" / "config.json").read_text())


# --- the schemas themselves ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted({schema for schema, _ in SCHEMA_FILES.values()}))
def test_schema_files_are_valid_draft_2020_12(name):
    from jsonschema import Draft202012Validator

    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_every_schema_code_is_registered_with_docs():
    for code in MY_CODES:
        entry = REGISTRY[code]
        assert entry.title and entry.why and entry.fix and entry.example


def test_known_families():
    assert {"llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "gpt2", "gpt_neox",
            "falcon", "bert", "roberta", "t5"} <= known_model_types()


def test_json_path_words():
    assert json_path([]) == "$"
    assert json_path(["rope_scaling", "factor"]) == "$.rope_scaling.factor"
    assert json_path(["eos_token_id", 1]) == "$.eos_token_id[1]"
    assert json_path(["added_tokens_decoder", "5"]) == "$.added_tokens_decoder['5']"
    assert json_path(["a b"]) == "$['a b']"


# --- good folders stay clean --------------------------------------------------------------------
@pytest.mark.parametrize("name", GOOD)
def test_good_fixtures_have_no_schema_findings(name):
    report = validate(FIXTURES / name)
    assert [f for f in report.findings if f.code in MY_CODES] == []


def test_transformers_5_config_shape_is_accepted():
    config = fixture_config()
    config.pop("torch_dtype")
    config.pop("rope_scaling")
    config.update(dtype="bfloat16", pad_token_id=None, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
    assert problems_at("config.schema.json", config) == {}


def test_real_config_variants_are_accepted():
    config = fixture_config()
    variants = [
        dict(config, eos_token_id=[2, 7, 9]),
        dict(config, pad_token_id=-1),
        dict(config, rope_scaling={"type": "linear", "factor": 2.0}),
        dict(config, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        dict(config, rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}),
        dict(config, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
        dict(config, rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
        dict(config, torch_dtype="float8_e4m3fn", quantization_config={"quant_method": "fp8"}),
        dict(config, dtype={"text_config": "bfloat16", "vision_config": "float32"}),
        dict(config, head_dim=None, num_key_value_heads=None, some_future_key={"anything": [1, "x"]}),
        {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 100, "n_inner": None},
        {"model_type": "t5", "d_model": 32, "num_layers": 2, "num_heads": 4, "vocab_size": 100, "d_kv": 8,
         "d_ff": 64, "num_decoder_layers": None},
        {"model_type": "falcon", "n_embed": 32, "n_layer": 2, "n_head": 4, "vocab_size": 100},
        {"model_type": "llava", "text_config": {"model_type": "llama", "vocab_size": 32064},
         "vision_config": {"model_type": "clip_vision_model"}},
        # MusicFlamingoConfig defaults max_position_embeddings to 1200.0 and save_pretrained writes it.
        {"model_type": "musicflamingo", "max_position_embeddings": 1200.0, "text_config": {"model_type": "qwen2"}},
        # SegFormer and PVTv2 give attention heads (and depths) per stage.
        {"model_type": "segformer", "num_attention_heads": [1, 2, 5, 8], "hidden_sizes": [32, 64, 160, 256]},
    ]
    for variant in variants:
        assert problems_at("config.schema.json", variant) == {}, variant


# --- config.json (HFC402, HFC408, HFC409) --------------------------------------------------------
@pytest.mark.parametrize("change, path, words", [
    (lambda c: c.update(hidden_size=32.0), "$.hidden_size", "positive integer"),
    (lambda c: c.update(num_hidden_layers=-2), "$.num_hidden_layers", "positive integer"),
    (lambda c: c.update(num_attention_heads="4"), "$.num_attention_heads", "positive integer"),
    (lambda c: c.pop("vocab_size"), "$.vocab_size", "is missing"),
    (lambda c: c.update(torch_dtype="auto"), "$.torch_dtype", "torch dtype name"),
    (lambda c: c.update(torch_dtype="torch.float16"), "$.torch_dtype", "torch dtype name"),
    (lambda c: c.update(rope_scaling={"rope_type": "linear"}), "$.rope_scaling.factor", "is missing"),
    (lambda c: c.update(rope_scaling={"type": "dynamic", "factor": -2}), "$.rope_scaling.factor", "greater than 0"),
    (lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}),
     "$.rope_scaling.low_freq_factor", "is missing"),
    (lambda c: c.update(rope_scaling=[2.0]), "$.rope_scaling", "RoPE scaling object"),
    (lambda c: c.update(rope_parameters={"full_attention": {"rope_type": "yarn"}}),
     "$.rope_parameters.full_attention.factor", "is missing"),
    (lambda c: c.update(eos_token_id=[2, "x"]), "$.eos_token_id[1]", "token id"),
    (lambda c: c.update(bos_token_id=-3), "$.bos_token_id", "token id"),
    (lambda c: c.update(tie_word_embeddings="no"), "$.tie_word_embeddings", "true or false"),
    (lambda c: c.update(architectures="LlamaForCausalLM"), "$.architectures", "list"),
    (lambda c: c.update(text_config={"hidden_size": "big"}), "$.text_config.hidden_size", "positive integer"),
])
def test_config_violation_is_reported_with_its_path(tmp_path, change, path, words):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", change)
    report = validate(folder)
    hits = [f for f in found(report, "HFC402") if f.tensor == path]
    assert hits, [f.message for f in report.findings]
    assert hits[0].file == "config.json"
    assert hits[0].message.startswith(f"config.json: {path} ")
    assert words in hits[0].message
    assert not report.ok


def test_config_without_model_type_or_architectures(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: (c.pop("model_type"), c.pop("architectures")))
    report = validate(folder)
    hits = found(report, "HFC402")
    assert [h.tensor for h in hits] == ["$"]
    assert "model_type" in hits[0].message and "the top level" in hits[0].message


def test_config_with_architectures_only_warns(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.pop("model_type"))
    report = validate(folder)
    assert found(report, "HFC402") == []
    [hit] = found(report, "HFC409")
    assert hit.severity.value == "warning" and hit.file == "config.json"


def test_unknown_model_type_gets_generic_schema_and_info(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(model_type="olmoe"))
    report = validate(folder)
    [hit] = found(report, "HFC408")
    assert hit.severity.value == "info" and "olmoe" in hit.message
    assert found(report, "HFC402") == []
    # ... but the generic fields still count.
    edit_json(folder / "config.json", lambda c: c.update(hidden_size=0))
    assert [f.tensor for f in found(validate(folder), "HFC402")] == ["$.hidden_size"]


def test_family_alias_groups():
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "vocab_size": 100}
    assert "must set 'n_head'" in problems_at("config.schema.json", gpt2)["$"]
    assert problems_at("config.schema.json", dict(gpt2, num_attention_heads=4)) == {}


def test_many_violations_are_capped(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "generation_config.json",
              lambda c: c.update(eos_token_id=[f"x{i}" for i in range(MAX_FINDINGS_PER_FILE + 5)]))
    hits = found(validate(folder), "HFC405")
    assert len(hits) == MAX_FINDINGS_PER_FILE + 1
    assert any("5 more schema problem(s)" in h.message and h.tensor is None for h in hits)


def test_invalid_json_is_only_hfc401(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,}')
    report = validate(folder)
    assert [f.code for f in report.findings if f.file == "config.json" and f.code.startswith("HFC4")] == ["HFC401"]


def test_infinity_in_config_is_python_json(tmp_path):
    # transformers 4.x wrote Mamba2's time_step_limit (0.0, inf) with json.dumps as Infinity, and
    # reads it back with json.loads: not a defect of config.json.
    folder = copy_fixture(tmp_path)
    text = (folder / "config.json").read_text().rstrip().rstrip("}")
    (folder / "config.json").write_text(text + ', "time_step_limit": [0.0, Infinity], "x_floor": -Infinity}')
    assert not [f for f in validate(folder).findings if f.severity.value in ("error", "warning")]
    # Infinity where a size belongs is still an error (the schema); tokenizer.json stays strict.
    edit_json(folder / "config.json", lambda c: c.update(hidden_size=float("inf")))
    errors = {f.code for f in validate(folder).findings if f.severity.value == "error"}
    assert errors and "HFC401" not in errors
    (folder / "config.json").write_text(text + "}")
    (folder / "tokenizer.json").write_text('{"version": "1.0", "x": [0.0, Infinity]}')
    assert found(validate(folder), "HFC401")


# --- the other files ----------------------------------------------------------------------------
@pytest.mark.parametrize("file, code, change, path, words", [
    ("tokenizer_config.json", "HFC403", lambda c: c.update(eos_token=5), "$.eos_token", "AddedToken"),
    ("tokenizer_config.json", "HFC403",
     lambda c: c["added_tokens_decoder"].update(abc={"content": "x"}), "$.added_tokens_decoder", "'abc'"),
    ("tokenizer_config.json", "HFC403",
     lambda c: c["added_tokens_decoder"]["0"].update(content=0), "$.added_tokens_decoder['0'].content", "string"),
    ("tokenizer_config.json", "HFC403", lambda c: c.update(padding_side="middle"), "$.padding_side", '"left"'),
    ("tokenizer_config.json", "HFC403", lambda c: c.update(chat_template=5), "$.chat_template", "template"),
    ("special_tokens_map.json", "HFC404", lambda c: c["eos_token"].update(id=2), "$.eos_token.id", "remove it"),
    ("special_tokens_map.json", "HFC404", lambda c: c.update(additional_special_tokens="<x>"),
     "$.additional_special_tokens", "list"),
    ("generation_config.json", "HFC405", lambda c: c.update(top_p=1.5), "$.top_p", "between 0 and 1"),
    ("generation_config.json", "HFC405", lambda c: c.update(eos_token_id=[2, -1]), "$.eos_token_id[1]", "token id"),
    ("generation_config.json", "HFC405", lambda c: c.update(max_new_tokens=0), "$.max_new_tokens", "positive"),
])
def test_other_file_violations(tmp_path, file, code, change, path, words):
    folder = copy_fixture(tmp_path)
    edit_json(folder / file, change)
    hits = [f for f in found(validate(folder), code) if f.tensor == path]
    assert hits, path
    assert hits[0].file == file and hits[0].message.startswith(f"{file}: {path} ") and words in hits[0].message


def test_index_schema(tmp_path):
    folder = copy_fixture(tmp_path, "llama-safetensors-sharded")
    edit_json(folder / "model.safetensors.index.json", lambda c: c["metadata"].update(total_size="big"))
    [hit] = found(validate(folder), "HFC406")
    assert hit.tensor == "$.metadata.total_size" and hit.file == "model.safetensors.index.json"
    assert "regenerate the index" in hit.message


@pytest.mark.parametrize("index_file, fixture", [("model.safetensors.index.json", "llama-safetensors-sharded"),
                                                 ("pytorch_model.bin.index.json", "llama-bin-sharded")])
@pytest.mark.parametrize("metadata", ["missing", None, [], "x"])
def test_index_without_metadata_object(tmp_path, index_file, fixture, metadata):
    """transformers' from_pretrained reads index["metadata"] (4.x and 5.x): a KeyError without it,
    a TypeError when it is not an object. An empty object loads."""
    folder = copy_fixture(tmp_path, fixture)
    edit_json(folder / index_file,
              lambda c: c.pop("metadata") if metadata == "missing" else c.update(metadata=metadata))
    [hit] = found(validate(folder), "HFC406")
    assert hit.tensor == "$.metadata" and hit.file == index_file and hit.severity is Severity.ERROR
    assert "from_pretrained" in hit.message
    edit_json(folder / index_file, lambda c: c.update(metadata={}))
    assert not found(validate(folder), "HFC406")


def test_tokenizer_json_structure(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.json").write_text(json.dumps({
        "added_tokens": [{"content": "<s>"}],
        "model": {"type": "BPE", "vocab": [["a", 0.0]]},
    }))
    hits = {f.tensor: f for f in found(validate(folder), "HFC407")}
    assert set(hits) == {"$.added_tokens[0].id", "$.model.vocab"}
    assert hits["$.added_tokens[0].id"].message.startswith("tokenizer.json: $.added_tokens[0].id is missing")


def test_added_tokens_json_schema(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "added_tokens.json").write_text(json.dumps({"<pad>": "200"}))
    [hit] = found(validate(folder), "HFC410")
    assert hit.tensor == "$['<pad>']"


# --- CLI ----------------------------------------------------------------------------------------
def test_cli_reports_schema_finding_and_exit_code(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(rope_scaling={"rope_type": "linear", "factor": 0}))
    result = CliRunner().invoke(main, ["validate", str(folder), "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    [hit] = [f for f in data["findings"] if f["code"] == "HFC402"]
    assert hit["file"] == "config.json" and hit["tensor"] == "$.rope_scaling.factor"
    assert hit["severity"] == "error"
    clean = CliRunner().invoke(main, ["validate", str(FIXTURES / "llama-safetensors")], catch_exceptions=False)
    assert clean.exit_code == 0


@pytest.mark.parametrize("base, extra, shards, index", [
    ("llama-safetensors", "llama-safetensors-sharded", "model-*.safetensors", "model.safetensors.index.json"),
    ("llama-safetensors-sharded", "llama-bin-sharded", "pytorch_model-*.bin", "pytorch_model.bin.index.json"),
])
def test_index_without_metadata_is_fine_where_no_loader_reads_it(tmp_path, base, extra, shards, index):
    """from_pretrained reads the index only when it loads the weights through it (not beside a
    single file, not of the format it does not load): a leftover index without metadata is the
    layout checks' business (HFC007/HFC004), not an HFC406 error."""
    folder = copy_fixture(tmp_path, base)
    for shard in (FIXTURES / extra).glob(shards):
        shutil.copy(shard, folder)
    shutil.copy(FIXTURES / extra / index, folder)
    edit_json(folder / index, lambda c: c.pop("metadata"))
    assert not found(validate(folder), "HFC406")
    edit_json(folder / index, lambda c: c.update(metadata={"total_size": -5}))  # other problems still count
    [hit] = found(validate(folder), "HFC406")
    assert hit.tensor == "$.metadata.total_size"
