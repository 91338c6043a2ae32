"""Tokenizer, special-token, chat-template and dtype checks (HFC5xx) on broken copies of real fixtures."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import sentencepiece as spm

from hfconv.checks.tokenizer_files import read_sentencepiece
from hfconv.discovery import discover
from hfconv.findings import REGISTRY
from hfconv.validation import validate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GOOD = sorted(p.name for p in FIXTURES.glob("llama-*") if p.is_dir())
SP_MODEL = FIXTURES / "_src" / "tokenizer.model"
MY_PREFIXES = ("HFC4", "HFC5", "HFC8")


def copy_fixture(tmp_path: Path, name: str = "llama-safetensors") -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def edit_json(path: Path, change) -> None:
    """Apply ``change`` (which mutates the parsed object in place) and write the file back."""
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def found(report, code: str) -> list:
    return [f for f in report.findings if f.code == code]


def pieces() -> list[str]:
    sp = spm.SentencePieceProcessor(model_file=str(SP_MODEL))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def write_tokenizer_json(folder: Path, vocab: list[str] | None = None, added: dict[str, int] | None = None) -> None:
    """A loadable tokenizer.json (BPE over the SentencePiece pieces), as LlamaTokenizerFast writes one."""
    vocab = pieces() if vocab is None else vocab
    added = {"<unk>": 0, "<s>": 1, "</s>": 2} if added is None else added
    data = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t, i in added.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False},
        "post_processor": None, "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {p: i for i, p in enumerate(vocab)}, "merges": []},
    }
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


# --- good folders ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GOOD)
def test_good_fixtures_have_no_warnings_or_errors(name):
    report = validate(FIXTURES / name)
    bad = [f for f in report.findings if f.code.startswith(MY_PREFIXES) and f.severity.value != "info"]
    assert bad == []
    assert report.ok


def test_good_fixture_with_matching_tokenizer_json_stays_clean(tmp_path):
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder)
    report = validate(folder)
    assert [f for f in report.findings if f.code.startswith("HFC5")] == []


def test_codes_are_registered_with_docs():
    for number in (*range(501, 509), *range(510, 518)):
        entry = REGISTRY[f"HFC{number}"]
        assert entry.title and entry.why and entry.fix and entry.example


def test_read_sentencepiece_reads_pieces_and_special_ids():
    model = read_sentencepiece(discover(FIXTURES / "llama-safetensors"), "tokenizer.model")
    assert model.piece_count == 200
    assert (model.unk_id, model.bos_id, model.eos_id, model.pad_id) == (0, 1, 2, -1)
    assert model.pieces[:3] == ("<unk>", "<s>", "</s>")


# --- HFC501 tokenizer.model unreadable ----------------------------------------------------------
def test_garbage_tokenizer_model_is_an_error(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").write_bytes(SP_MODEL.read_bytes()[:700])
    [hit] = found(validate(folder), "HFC501")
    assert hit.severity.value == "error" and hit.file == "tokenizer.model"
    assert "not a valid SentencePiece model" in hit.message


def test_tiktoken_file_named_tokenizer_model(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").write_text("IQ== 0\nIg== 1\nIw== 2\n")
    write_tokenizer_json(folder)
    [hit] = found(validate(folder), "HFC501")
    assert "tiktoken" in hit.message
    assert hit.severity.value == "warning"  # tokenizer.json is there for the fast tokenizer


def test_oversized_tokenizer_model_is_not_read(tmp_path, monkeypatch):
    import hfconv.checks.tokenizer_files as tok

    folder = copy_fixture(tmp_path)
    monkeypatch.setattr(tok, "MAX_SENTENCEPIECE_BYTES", 1000)
    [hit] = found(validate(folder), "HFC501")
    assert "over the 1000-byte limit" in hit.message


# --- HFC502 / HFC503 vocab_size -----------------------------------------------------------------
def test_vocab_size_smaller_than_tokenizer(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(vocab_size=150))
    report = validate(folder)
    [hit] = found(report, "HFC502")
    assert hit.file == "config.json" and "150" in hit.message and "199" in hit.message


def test_added_tokens_count_toward_the_vocabulary(tmp_path):
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder, added={"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_end|>": 200})
    [hit] = found(validate(folder), "HFC502")
    assert "1 added tokens" in hit.message and "ids up to 200" in hit.message


def test_padded_vocab_size_is_info(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(vocab_size=256))
    [hit] = found(validate(folder), "HFC503")
    assert hit.severity.value == "info"


# --- HFC504 special token not in vocabulary -----------------------------------------------------
def test_special_token_missing_from_vocabulary(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(pad_token="<pad>"))
    [hit] = found(validate(folder), "HFC504")
    assert hit.file == "tokenizer_config.json" and hit.severity.value == "error"
    assert "'<pad>'" in hit.message and "id 200" in hit.message


def test_special_tokens_map_token_missing_from_vocabulary(tmp_path):
    # Without added_tokens_decoder every transformers version reads special_tokens_map.json: an error.
    old = copy_fixture(tmp_path / "old")
    edit_json(old / "tokenizer_config.json", lambda c: c.pop("added_tokens_decoder"))
    edit_json(old / "special_tokens_map.json", lambda c: c.update(pad_token="<pad>"))
    [hit] = found(validate(old), "HFC504")
    assert hit.file == "special_tokens_map.json" and hit.severity.value == "error"
    # With it (save_pretrained >= 4.34), transformers 4.34+ and 5 do not read special_tokens_map.json
    # (their pad_token stays None); only older versions would add '<pad>': a warning.
    new = copy_fixture(tmp_path / "new")
    edit_json(new / "special_tokens_map.json", lambda c: c.update(pad_token="<pad>"))
    [hit] = found(validate(new), "HFC504")
    assert hit.file == "special_tokens_map.json" and hit.severity.value == "warning"
    assert "4.34" in hit.message


def test_missing_special_token_inside_padded_embedding_is_a_warning(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(additional_special_tokens=["<tool>"]))
    edit_json(folder / "config.json", lambda c: c.update(vocab_size=256))
    (folder / "model.safetensors").unlink()  # no embedding rows to compare: vocab_size is the limit
    [hit] = found(validate(folder), "HFC504")
    assert hit.severity.value == "warning" and hit.file == "tokenizer_config.json"
    assert "'<tool>'" in hit.message and "untrained" in hit.message


# --- HFC505 / HFC506 token ids ------------------------------------------------------------------
def test_eos_id_out_of_range(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "generation_config.json", lambda c: c.update(eos_token_id=[2, 500]))
    [hit] = found(validate(folder), "HFC505")
    assert hit.file == "generation_config.json" and "500" in hit.message and "vocab_size 200" in hit.message


def test_eos_id_disagrees_with_tokenizer(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "generation_config.json", lambda c: c.update(eos_token_id=7))
    [hit] = found(validate(folder), "HFC506")
    assert hit.file == "generation_config.json" and hit.severity.value == "warning"
    assert "'</s>' has id 2" in hit.message


def test_eos_list_containing_tokenizer_eos_is_fine(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "generation_config.json", lambda c: c.update(eos_token_id=[7, 2]))
    assert found(validate(folder), "HFC506") == []


def test_config_eos_shadowed_by_generation_config_is_info(tmp_path):
    # Llama-3-Instruct's first release: config.json 128001, generation_config.json [128001, 128009],
    # tokenizer eos <|eot_id|> (128009): config.json's id is one generation stops at.
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(eos_token_id=7))
    edit_json(folder / "generation_config.json", lambda c: c.update(eos_token_id=[7, 2]))
    [hit] = found(validate(folder), "HFC506")
    assert hit.file == "config.json" and hit.severity.value == "info"


def test_config_eos_agreeing_with_nothing_is_a_warning_beside_generation_config(tmp_path):
    # A broken copy that edits config.json alone: generation_config.json still says 2.
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(eos_token_id=7))
    [hit] = found(validate(folder), "HFC506")
    assert hit.file == "config.json" and hit.severity.value == "warning"
    assert "not among generation_config.json's eos ids [2]" in hit.message


def test_bos_id_disagrees(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(bos_token_id=5))
    [hit] = found(validate(folder), "HFC506")
    assert hit.severity.value == "warning" and "bos_token" in hit.message


# --- HFC507 file references ---------------------------------------------------------------------
def test_tokenizer_config_names_missing_file(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(vocab_file="spm.model"))
    [hit] = found(validate(folder), "HFC507")
    assert hit.severity.value == "error" and "'spm.model'" in hit.message and hit.tensor == "$.vocab_file"


def test_tokenizer_config_names_path_outside_folder(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(
        sp_model_file="/home/someone/tokenizer.model", special_tokens_map_file="/root/.cache/x.json"))
    [hit] = found(validate(folder), "HFC507")  # special_tokens_map_file is ignored by transformers
    assert hit.severity.value == "warning" and "outside the model folder" in hit.message


def test_vocab_file_recorded_by_save_pretrained_is_info_next_to_tokenizer_json(tmp_path):
    # transformers 5's GemmaTokenizer.save_pretrained writes the absolute path it loaded tokenizer.model
    # from; the fast tokenizer loads from tokenizer.json and transformers 5 ignores the key.
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(
        vocab_file="/root/.cache/huggingface/hub/models--google--gemma/snapshots/abc/tokenizer.model",
        merges_file="src/merges.txt"))
    hits = found(validate(folder), "HFC507")
    assert sorted(h.tensor for h in hits) == ["$.merges_file", "$.vocab_file"]
    assert {h.severity.value for h in hits} == {"info"}
    assert "transformers 5 ignores" in hits[0].message


def test_tokenizer_file_outside_folder_stays_a_warning_next_to_tokenizer_json(tmp_path):
    # transformers 4.x loads the fast tokenizer from tokenizer_file when the config names one.
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(tokenizer_file="/home/someone/tokenizer.json"))
    [hit] = found(validate(folder), "HFC507")
    assert hit.severity.value == "warning" and hit.tensor == "$.tokenizer_file"


# --- HFC508 added tokens ------------------------------------------------------------------------
def test_added_tokens_decoder_disagrees_with_vocabulary(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c["added_tokens_decoder"].update(
        {"5": {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
               "special": True}}))
    hits = found(validate(folder), "HFC508")
    assert hits and all(h.file == "tokenizer_config.json" for h in hits)
    assert "'<s>' id 5" in hits[0].message and "id 1" in hits[0].message


def test_added_tokens_decoder_disagrees_with_tokenizer_json(tmp_path):
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder, added={"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_end|>": 199})
    edit_json(folder / "tokenizer_config.json", lambda c: c["added_tokens_decoder"].update(
        {"198": {"content": "<|im_end|>", "special": True}}))
    [hit] = found(validate(folder), "HFC508")
    assert "tokenizer.json gives it id 199" in hit.message


def test_tokenizer_json_added_token_clashes_with_its_vocab(tmp_path):
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder, added={"<unk>": 0, "<s>": 1, "</s>": 7})
    report = validate(folder)
    # tokenizer.json contradicts itself, and tokenizer_config.json's '</s>' -> 2 now contradicts it too.
    assert sorted(h.file for h in found(report, "HFC508")) == ["tokenizer.json", "tokenizer_config.json"]


# --- HFC510 embeddings -----------------------------------------------------------------
def test_special_token_past_embedding_rows(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: (
        c["added_tokens_decoder"].update({"200": {"content": "<pad>", "special": True}}),
        c.update(pad_token="<pad>")))
    report = validate(folder)
    [hit] = found(report, "HFC510")
    assert "pad_token '<pad>' has id 200" in hit.message and hit.file == "model.safetensors"
    assert found(report, "HFC502")


def test_architecture_outside_the_table_may_embed_more_rows_than_vocab_size(tmp_path):
    """mllama embeds vocab_size + 8 input rows; its image token lives past vocab_size."""
    import torch
    from safetensors.torch import save_file

    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(model_type="mllama_like"))
    save_file({"model.embed_tokens.weight": torch.zeros(208, 4), "lm_head.weight": torch.zeros(200, 4)},
              str(folder / "model.safetensors"))
    write_tokenizer_json(folder, added={"<unk>": 0, "<s>": 1, "</s>": 2, "<|image|>": 200})
    report = validate(folder)
    assert found(report, "HFC502") == []
    # ... but ids past the input embedding are still an error.
    write_tokenizer_json(folder, added={"<unk>": 0, "<s>": 1, "</s>": 2, "<|image|>": 208})
    [hit] = found(validate(folder), "HFC502")
    assert "model.embed_tokens.weight has 208 rows" in hit.message


# --- HFC511 tokenizer.model vs tokenizer.json ---------------------------------------------------
def test_tokenizer_model_and_json_piece_counts_differ(tmp_path):
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder, vocab=pieces() + ["<pad>"])
    [hit] = found(validate(folder), "HFC511")
    assert "200 pieces" in hit.message and "201 entries" in hit.message and hit.severity.value == "warning"


def test_tokenizer_model_and_json_special_ids_differ(tmp_path):
    folder = copy_fixture(tmp_path)
    vocab = pieces()
    vocab[1], vocab[2] = vocab[2], vocab[1]
    write_tokenizer_json(folder, vocab=vocab, added={"<unk>": 0})
    messages = [h.message for h in found(validate(folder), "HFC511")]
    assert any("bos piece '<s>' has id 1" in m for m in messages)
    assert any("eos piece '</s>' has id 2" in m for m in messages)


# --- HFC512 / HFC513 chat template --------------------------------------------------------------
def test_chat_template_syntax_error(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(
        chat_template="{% for m in messages %}\n{{ m['content'] }\n{% endfor %}"))
    [hit] = found(validate(folder), "HFC512")
    assert hit.file == "tokenizer_config.json" and "line 2" in hit.message


def test_chat_template_jinja_file_syntax_error(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "chat_template.jinja").write_text("{% if messages %}{{ messages[0] }}")
    [hit] = found(validate(folder), "HFC512")
    assert hit.file == "chat_template.jinja"


def test_generation_tag_and_transformers_globals_parse(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
        "{% endgeneration %}{{ eos_token }}{% else %}{{ m['content'] | tojson }}{% endif %}{% endfor %}"
        "{{ strftime_now('%Y') if false }}")
    report = validate(folder)
    assert found(report, "HFC512") == [] and found(report, "HFC513") == []


def test_chat_turn_end_not_an_eos_id(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(
        chat_template="{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}<unk>\n{% endfor %}"))
    [hit] = found(validate(folder), "HFC513")
    assert hit.file == "tokenizer_config.json" and "'<unk>' (id 0)" in hit.message and "[2]" not in hit.message
    assert "generation_config.json" in hit.message


def test_chat_turn_end_found_in_jinja_file_takes_priority(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] }}{{ unk_token }}{% endfor %}")
    [hit] = found(validate(folder), "HFC513")
    assert hit.file == "chat_template.jinja"


CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
          "{% endif %}")


def chatml_folder(tmp_path: Path, generation_eos) -> Path:
    """A Qwen2-Instruct-like folder: base vocab + <|endoftext|> <|im_start|> <|im_end|>, ChatML template,
    config.json eos <|endoftext|> (197), tokenizer eos <|im_end|> (199)."""
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").unlink()
    (folder / "special_tokens_map.json").unlink()
    added = {"<|endoftext|>": 197, "<|im_start|>": 198, "<|im_end|>": 199}
    write_tokenizer_json(folder, vocab=pieces()[:197], added=added)
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for t, i in added.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": decoder, "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "chat_template": CHATML, "model_max_length": 32768, "tokenizer_class": "Qwen2Tokenizer",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "errors": "replace", "split_special_tokens": False,
    }))
    edit_json(folder / "config.json", lambda c: c.update(bos_token_id=197, eos_token_id=197))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": 197, "pad_token_id": 197, "eos_token_id": generation_eos, "do_sample": True,
        "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}))
    return folder


def test_chatml_instruct_folder_is_clean(tmp_path):
    report = validate(chatml_folder(tmp_path, [199, 197]))
    assert [f"{f.code} {f.message}" for f in report.findings
            if f.code.startswith("HFC5") and f.severity.value != "info"] == []


def test_chatml_instruct_folder_that_never_stops(tmp_path):
    report = validate(chatml_folder(tmp_path, 197))
    [hit] = found(report, "HFC513")
    assert "'<|im_end|>' (id 199)" in hit.message and "eos_token_id 197" in hit.message
    assert [f.file for f in found(report, "HFC506") if f.severity.value == "warning"] == ["generation_config.json"]


def test_hostile_chat_templates_stay_in_the_sandbox_and_budget(tmp_path):
    folder = copy_fixture(tmp_path)
    templates = [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 1000000000 }}",
        "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    ]
    for template in templates:
        edit_json(folder / "tokenizer_config.json", lambda c, t=template: c.update(chat_template=t))
        start = time.monotonic()
        report = validate(folder)
        assert time.monotonic() - start < 10
        assert found(report, "HFC512") == [] and found(report, "HFC513") == []


# --- HFC514 dtype -------------------------------------------------------------------------------
def test_config_dtype_differs_from_weights(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(torch_dtype="bfloat16"))
    [hit] = found(validate(folder), "HFC514")
    assert hit.severity.value == "info" and "F32" in hit.message and hit.tensor == "$.torch_dtype"


def test_transformers_5_dtype_key(tmp_path):
    folder = copy_fixture(tmp_path, "llama-bf16-safetensors")
    edit_json(folder / "config.json", lambda c: (c.pop("torch_dtype"), c.update(dtype="bfloat16")))
    assert found(validate(folder), "HFC514") == []
    edit_json(folder / "config.json", lambda c: c.update(dtype="float16"))
    [hit] = found(validate(folder), "HFC514")
    assert hit.tensor == "$.dtype" and "BF16" in hit.message


# --- HFC515 / HFC516 / HFC517 -------------------------------------------------------------------
def test_special_token_files_disagree(tmp_path):
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(eos_token="<s>"))
    [hit] = found(validate(folder), "HFC515")
    assert hit.file == "special_tokens_map.json" and "'</s>'" in hit.message and "'<s>'" in hit.message


def _v4_layout_with_special_tokens_map(folder: Path) -> None:
    """tokenizer_config.json with added_tokens_decoder (save_pretrained >= 4.34) beside special_tokens_map.json."""
    write_tokenizer_json(folder)
    assert "added_tokens_decoder" in json.loads((folder / "tokenizer_config.json").read_text())


def test_tokenizer_config_token_outside_vocabulary_is_found_behind_special_tokens_map(tmp_path):
    # transformers 5 ignores special_tokens_map.json when tokenizer_config.json has added_tokens_decoder,
    # so tokenizer_config.json's eos is the one it uses although special_tokens_map.json names a good one.
    folder = copy_fixture(tmp_path)
    _v4_layout_with_special_tokens_map(folder)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(eos_token="<|no_such_token|>"))
    report = validate(folder)
    [hit] = found(report, "HFC504")
    assert hit.file == "tokenizer_config.json" and "'<|no_such_token|>'" in hit.message
    [disagree] = found(report, "HFC515")
    assert "4.34 and later (5 too) use '<|no_such_token|>'" in disagree.message


def test_config_ids_follow_tokenizer_config_json_where_it_has_added_tokens_decoder(tmp_path):
    # transformers 4.34+ and 5 take eos from tokenizer_config.json (it has added_tokens_decoder) and
    # ignore special_tokens_map.json's; the ids must be checked against that token.
    agree = copy_fixture(tmp_path / "agree")
    edit_json(agree / "tokenizer_config.json", lambda c: c.update(eos_token="<s>"))
    for name in ("config.json", "generation_config.json"):
        edit_json(agree / name, lambda c: c.update(eos_token_id=1))
    report = validate(agree)
    assert found(report, "HFC506") == []
    [disagree] = found(report, "HFC515")
    assert "4.34 and later (5 too) use '<s>'" in disagree.message
    # The reverse: special_tokens_map.json's eos matches the ids, the token transformers uses does not.
    wrong = copy_fixture(tmp_path / "wrong")
    edit_json(wrong / "special_tokens_map.json", lambda c: c.update(eos_token="<s>"))
    for name in ("config.json", "generation_config.json"):
        edit_json(wrong / name, lambda c: c.update(eos_token_id=1))
    hits = found(validate(wrong), "HFC506")
    assert hits and all("'</s>' has id 2" in h.message for h in hits)


def test_tokenizer_config_token_overridden_everywhere_only_disagrees(tmp_path):
    # Without added_tokens_decoder every transformers version takes special_tokens_map.json's token.
    folder = copy_fixture(tmp_path)
    edit_json(folder / "tokenizer_config.json", lambda c: (c.pop("added_tokens_decoder"),
                                                            c.update(eos_token="<|no_such_token|>")))
    report = validate(folder)
    assert found(report, "HFC504") == []
    [disagree] = found(report, "HFC515")
    assert "transformers uses '</s>'" in disagree.message


def test_unreadable_vocab_json(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").unlink()
    (folder / "vocab.json").write_text('{"a": 0, "b": }')
    [hit] = found(validate(folder), "HFC516")
    assert hit.file == "vocab.json" and "line 1" in hit.message


def test_vocab_json_is_used_without_tokenizer_model(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").unlink()
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(pieces())}))
    report = validate(folder)
    assert [f for f in report.findings if f.code.startswith("HFC5")] == []
    edit_json(folder / "special_tokens_map.json", lambda c: c.update(pad_token="<pad>"))
    assert found(validate(folder), "HFC504")


def test_no_vocabulary_skips_with_info(tmp_path):
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").unlink()
    report = validate(folder)
    [hit] = found(report, "HFC517")
    assert hit.severity.value == "info"
    assert [f for f in report.findings if f.code.startswith("HFC5") and f.code != "HFC517"] == []


# --- real folders written by transformers -------------------------------------------------------
def _transformers_folders(root: Path) -> dict[str, Path]:
    """Tiny model folders saved by transformers itself (offline), each with a matching tokenizer."""
    transformers = pytest.importorskip("transformers", reason="transformers is not installed")
    import torch

    major = int(transformers.__version__.split(".")[0])
    torch.manual_seed(0)
    sp_pieces = pieces()
    work = root / "_src"
    work.mkdir()
    gpt2_vocab = {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "\u0120": 4, "ab": 5, "\u0120a": 6, "abc": 7}
    (work / "vocab.json").write_text(json.dumps(gpt2_vocab))
    (work / "merges.txt").write_text("#version: 0.2\na b\n\u0120 a\nab c\n")
    bert_vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "##c"]
    (work / "vocab.txt").write_text("\n".join(bert_vocab) + "\n")

    def llama_tokenizer():
        if major >= 5:
            return transformers.LlamaTokenizer(vocab={p: i for i, p in enumerate(sp_pieces)}, merges=[])
        return transformers.LlamaTokenizer(vocab_file=str(SP_MODEL))

    def gpt2_tokenizer():
        return transformers.GPT2Tokenizer(str(work / "vocab.json"), str(work / "merges.txt"))

    def bert_tokenizer():
        if major >= 5:
            return transformers.BertTokenizer(vocab={t: i for i, t in enumerate(bert_vocab)})
        return transformers.BertTokenizer(str(work / "vocab.txt"))

    def t5_tokenizer():
        if major < 5:
            return None  # the slow T5 tokenizer needs a unigram spiece.model this test does not ship
        return transformers.T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581a", -1.0),
                                               ("b", -2.0)], extra_ids=3)

    small = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    cases = {
        "llama": (transformers.LlamaConfig(hidden_size=32, num_key_value_heads=2, vocab_size=200, **small),
                  transformers.LlamaForCausalLM, llama_tokenizer, True),
        "mistral": (transformers.MistralConfig(hidden_size=32, num_key_value_heads=2, vocab_size=200, **small),
                    transformers.MistralForCausalLM, llama_tokenizer, True),
        "qwen2": (transformers.Qwen2Config(hidden_size=32, num_key_value_heads=2, vocab_size=8, bos_token_id=None,
                                           eos_token_id=0, pad_token_id=None, **small),
                  transformers.Qwen2ForCausalLM, None, False),
        "gpt2": (transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=8,
                                         bos_token_id=0, eos_token_id=0),
                 transformers.GPT2LMHeadModel, gpt2_tokenizer, False),
        "bert": (transformers.BertConfig(hidden_size=32, vocab_size=8, pad_token_id=0, **small),
                 transformers.BertForMaskedLM, bert_tokenizer, False),
        "t5": (transformers.T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=8,
                                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
               transformers.T5ForConditionalGeneration, t5_tokenizer, False),
    }
    folders = {}
    for name, (config, model_class, make_tokenizer, copy_sp) in cases.items():
        folder = root / name
        model_class(config).save_pretrained(folder)
        tokenizer = make_tokenizer() if make_tokenizer else None
        if name == "llama":
            tokenizer.chat_template = json.loads(
                (FIXTURES / "llama-safetensors" / "tokenizer_config.json").read_text())["chat_template"]
        if name == "qwen2":
            tokenizer = transformers.Qwen2Tokenizer(str(work / "vocab.json"), str(work / "merges.txt"))
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        if copy_sp:
            shutil.copy(SP_MODEL, folder / "tokenizer.model")
        folders[name] = folder
    return folders


@pytest.mark.transformers
def test_folders_saved_by_transformers_raise_no_warnings(tmp_path):
    folders = _transformers_folders(tmp_path)
    assert set(folders) == {"llama", "mistral", "qwen2", "gpt2", "bert", "t5"}
    for name, folder in folders.items():
        report = validate(folder)
        bad = [f"{f.code} {f.message}" for f in report.findings
               if f.code.startswith(MY_PREFIXES) and f.severity.value != "info"]
        assert bad == [], name


def pegasus_folder(tmp_path: Path, unk_id: int | None = None) -> Path:
    """tokenizer files as transformers 4.x's slow PegasusTokenizer saves them: spiece.model, whose
    piece i has id i + offset, and its own specials at ids 0..offset-1 in added_tokens_decoder."""
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").rename(folder / "spiece.model")
    (folder / "special_tokens_map.json").unlink()
    offset, sp = 103, pieces()
    own = ["<pad>", "</s>", "<mask_1>", "<mask_2>"] + [f"<unk_{i}>" for i in range(2, offset - 2 + 2)][:offset - 4]
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for i, t in enumerate(own)}
    decoder[str(unk_id if unk_id is not None else sp.index("<unk>") + offset)] = dict(decoder["0"], content="<unk>")
    config = {"tokenizer_class": "PegasusTokenizer", "offset": offset, "pad_token": "<pad>", "eos_token": "</s>",
              "unk_token": "<unk>", "mask_token": "<mask_2>", "mask_token_sent": "<mask_1>",
              "additional_special_tokens": own[2:3] + own[4:], "added_tokens_decoder": decoder}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_pegasus_slow_tokenizer_offset(tmp_path):
    assert not found(validate(pegasus_folder(tmp_path / "good")), "HFC508")
    # <unk> declared one past where the shifted spiece.model has it: the files disagree.
    bad = pegasus_folder(tmp_path / "bad", unk_id=pieces().index("<unk>") + 104)
    assert found(validate(bad), "HFC508")


def fairseq_folder(tmp_path: Path, cls: str = "XLMRobertaTokenizer", decoder: bool = True) -> Path:
    """A slow-only folder as transformers 4.x's XLMRobertaTokenizer / CamembertTokenizer saves it:
    sentencepiece.bpe.model, whose pieces are shifted behind the class's fixed fairseq specials."""
    folder = copy_fixture(tmp_path)
    (folder / "tokenizer.model").rename(folder / "sentencepiece.bpe.model")
    (folder / "model.safetensors").unlink()
    n = len(pieces())
    if cls == "CamembertTokenizer":
        fixed = ["<s>NOTUSED", "<pad>", "</s>NOTUSED", "<unk>", "<unk>NOTUSED"]
        layout = {**dict(enumerate(fixed)), 5: "<s>", 6: "</s>", n + 4: "<mask>"}  # spm <s>, </s> at 1, 2
    else:
        layout = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", n + 1: "<mask>"}
    config = {"tokenizer_class": cls, "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
              "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>", "mask_token": "<mask>"}
    if decoder:
        config["added_tokens_decoder"] = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                                   "single_word": False, "special": True} for i, t in layout.items()}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    special_tokens = {k: v for k, v in config.items() if k.endswith("_token")}
    (folder / "special_tokens_map.json").write_text(json.dumps(special_tokens))
    size = max(layout) + 1
    ids = {t: i for i, t in layout.items()}  # camembert-base's config says bos 5, eos 6
    for name in ("config.json", "generation_config.json"):
        edit_json(folder / name, lambda c: c.update(bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=1))
    edit_json(folder / "config.json", lambda c: c.update(vocab_size=size))
    return folder


@pytest.mark.parametrize("cls", ["XLMRobertaTokenizer", "CamembertTokenizer"])
@pytest.mark.parametrize("decoder", [True, False], ids=["v4.34+", "older"])
def test_fairseq_sentencepiece_file_is_read_with_its_offset(tmp_path, cls, decoder):
    good = fairseq_folder(tmp_path / "good", cls, decoder)
    report = validate(good)
    assert [f.code for f in report.findings if f.code.startswith("HFC5")] == []  # read (no HFC517), clean
    # The same folder with config ids that disagree with the fixed fairseq ids, and a token outside it.
    bad = fairseq_folder(tmp_path / "bad", cls, decoder)
    edit_json(bad / "generation_config.json", lambda c: c.update(eos_token_id=7))
    assert found(validate(bad), "HFC506")
    edit_json(bad / "tokenizer_config.json", lambda c: c.update(pad_token="<|no_such_token|>"))
    edit_json(bad / "special_tokens_map.json", lambda c: c.update(pad_token="<|no_such_token|>"))
    assert [f.severity.value for f in found(validate(bad), "HFC504")] == ["error"]


def test_fairseq_sentencepiece_file_unreadable_or_class_unknown(tmp_path):
    broken = fairseq_folder(tmp_path / "broken")
    (broken / "sentencepiece.bpe.model").write_bytes(b"\x00garbage\xff" * 8)
    [hit] = found(validate(broken), "HFC501")
    assert hit.file == "sentencepiece.bpe.model" and hit.severity.value == "error"
    # A class whose appended tokens only added_tokens_decoder records is not guessed without it.
    mbart = fairseq_folder(tmp_path / "mbart", "MBartTokenizer", decoder=False)
    assert [f.code for f in validate(mbart).findings if f.code.startswith("HFC5")] == ["HFC517"]


@pytest.mark.parametrize("installed, severity", [("5.24.0", "warning"), (None, "warning"), ("4.57.1", "error")])
def test_null_tokenizer_file_hides_tokenizer_json_from_transformers_4(tmp_path, monkeypatch, installed, severity):
    # transformers 4.x keeps tokenizer_config.json's "tokenizer_file": null over the folder's tokenizer.json
    # and converts the fast tokenizer from the slow files; without them the tokenizer does not load
    # (an error where transformers 4.x is the installed one, as for HFC012).
    from hfconv import environment

    monkeypatch.setattr(environment, "installed_transformers_version", lambda: installed)
    folder = copy_fixture(tmp_path)
    write_tokenizer_json(folder)
    edit_json(folder / "tokenizer_config.json", lambda c: c.update(tokenizer_file=None))
    [hit] = found(validate(folder), "HFC507")
    assert hit.severity.value == "info" and "tokenizer.model" in hit.message
    (folder / "tokenizer.model").unlink()
    [hit] = found(validate(folder), "HFC507")
    assert hit.severity.value == severity and "fails to load" in hit.message
    assert ("the installed transformers 4.57.1 then ignores" in hit.message) is (installed == "4.57.1")
