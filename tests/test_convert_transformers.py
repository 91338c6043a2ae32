"""convert output loads in transformers as the model that was saved: every tie re-made,
every tensor and the logits identical. Sources are ``torch.save(model.state_dict())``, what
transformers 4.x wrote as pytorch_model.bin (shared storages included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hfconv import convert, validate  # noqa: E402

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=100,
            max_position_embeddings=64)
FAMILIES = {
    # lm_head tied to the embedding: dropped, transformers re-ties it
    "llama-tied": ("LlamaForCausalLM", dict(TINY, model_type="llama", tie_word_embeddings=True)),
    # three names on one storage: lm_head dropped, encoder/decoder embeddings written as copies
    "t5": ("T5ForConditionalGeneration", dict(model_type="t5", d_model=32, d_ff=64, num_layers=2, num_heads=4,
                                               d_kv=8, vocab_size=100)),
    # the decoder (and its bias) share storage with names other than lm_head: copies
    "bert": ("BertForMaskedLM", dict(TINY, model_type="bert")),
    # the tied embedding lives in the decoder
    "opt": ("OPTForCausalLM", dict(TINY, model_type="opt", ffn_dim=64, word_embed_proj_dim=32)),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_converted_bin_loads_as_the_saved_model(tmp_path: Path, family: str) -> None:
    arch, kwargs = FAMILIES[family]
    kwargs = dict(kwargs)
    config = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    config.architectures = [arch]
    torch.manual_seed(0)
    model = getattr(transformers, arch)(config).eval()
    src = tmp_path / "src"
    config.save_pretrained(src)
    torch.save(model.state_dict(), src / "pytorch_model.bin")

    result = convert(src, tmp_path / "out", max_shard_size="20KB")
    assert result.is_sharded
    assert not [f for f in validate(tmp_path / "out").findings if f.severity.value != "info"]
    loaded = getattr(transformers, arch).from_pretrained(tmp_path / "out").eval()
    expected, got = model.state_dict(), loaded.state_dict()
    assert sorted(expected) == sorted(got)
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    ids = torch.tensor([[1, 2, 3, 4]])
    extra = {"decoder_input_ids": ids} if config.is_encoder_decoder else {}
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, **extra).logits, loaded(input_ids=ids, **extra).logits)
