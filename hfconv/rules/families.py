"""Tensor names and shapes implied by config.json, one declarative table per architecture family.

Pure data: nothing here imports torch or transformers, so the rule table can be tested with
plain dicts and tuples.

A family's table is a list of :class:`Rule`: a tensor-name template (``{i}`` = layer index,
``{e}`` = expert index, ...) and one *shape expression* per dimension over config fields, e.g.
``("num_key_value_heads * head_dim", "hidden_size")``, evaluated by
:mod:`hfconv.rules.expression`. Defaults and derivations were taken from transformers'
``configuration_<family>.py`` and ``modeling_<family>.py``.

Checkpoint names are those ``save_pretrained`` writes (the on-disk layout, which transformers
keeps stable across versions even where v5 fuses tensors in memory, e.g. Mixtral experts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

PLACEHOLDER = re.compile(r"\{([a-z])\}")
"""A placeholder in a name template: ``{i}``."""


class Rule(NamedTuple):
    """One tensor (or one tensor per layer/expert) of a family."""

    name: str
    """Name template, e.g. ``model.layers.{i}.self_attn.k_proj.weight``."""
    shape: tuple[str, ...]
    """One expression per dimension."""
    when: str | None = None
    """Condition for the tensor to exist at all (e.g. ``attention_bias``)."""
    optional: str | None = None
    """Condition under which the tensor may be absent (e.g. ``tie_word_embeddings``)."""

    @property
    def placeholders(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(PLACEHOLDER.findall(self.name)))


def R(name: str, *shape: str, when: str | None = None, optional: str | None = None) -> Rule:  # noqa: N802
    """Shorthand used by the tables."""
    return Rule(name, tuple(shape), when, optional)


@dataclass(frozen=True)
class Head:
    """A model class of a family: extra tensors beside the base model, and how it names them."""

    rules: tuple[Rule, ...] = ()
    env: Mapping[str, Any] = field(default_factory=dict)
    """Head variables the base rules read (``add_pooling_layer``, ``has_decoder``)."""
    base_prefixed: bool = True
    """False for the bare base-model class, whose state dict drops the base-model prefix."""
    prefix: str = ""
    """Prepended to the base model's names by heads that nest it under an attribute of their own
    where the family's other classes do not (T5ForSequenceClassification: ``transformer.``)."""


@dataclass(frozen=True)
class Family:
    """The rule table of one ``model_type``."""

    model_type: str
    class_prefix: str
    """Class-name stem, e.g. ``Llama`` for ``LlamaForCausalLM``."""
    prefix: str
    """Base-model prefix in checkpoint names (``model.``, ``transformer.``, ``bert.``, or ``""``)."""
    ranges: Mapping[str, tuple[str, str]]
    """Placeholder -> (count expression, noun), e.g. ``{"i": ("num_hidden_layers", "layers")}``."""
    defaults: Mapping[str, Any]
    """Class defaults used when config.json lacks the key."""
    derived: Mapping[str, str]
    """Expressions used when the key is absent (and has no default) or null."""
    rules: tuple[Rule, ...]
    heads: Mapping[str, Head]
    """Class-name suffix (``ForCausalLM``, ``Model``) -> head."""
    default_head: str
    env_defaults: Mapping[str, Any] = field(default_factory=dict)
    trailing: tuple[tuple[str, str, str], ...] = ()
    """Runs of layers a checkpoint carries past the model's own and loaders ignore, as (stem, first
    index expression, count expression): DeepSeek-V3's multi-token-prediction layers
    ``model.layers.{num_hidden_layers}...``. Tolerated (HFC610), not counted as layers."""
    trailing_marker: tuple[str, ...] = ()
    """Name endings only the trailing run holds (DeepSeek-V3: ``.eh_proj.weight``): a run without
    any is not tolerated (checks/shapes.py), so a plain extra layer there is still an extra layer."""

    def head_for(self, architecture: str | None) -> tuple[str, Head] | None:
        """The head of ``architecture`` (exact class name first, then the longest suffix)."""
        if architecture is None:
            return self.default_head, self.heads[self.default_head]
        for suffix, head in self.heads.items():
            if architecture == self.class_prefix + suffix:
                return suffix, head
        matches = [s for s in self.heads if architecture.endswith(s) and s != "Model"]
        if matches:
            suffix = max(matches, key=len)
            return suffix, self.heads[suffix]
        return None


# Shared fragments. Names are written as save_pretrained writes them for the ...ForCausalLM
# class; the base-model class drops the prefix (Head.base_prefixed=False).

_L = "model.layers.{i}."


def _llama_attention(q_bias: str | None, o_bias: str | None) -> tuple[Rule, ...]:
    a = _L + "self_attn."
    rules = [
        R(a + "q_proj.weight", "num_attention_heads * head_dim", "hidden_size"),
        R(a + "k_proj.weight", "num_key_value_heads * head_dim", "hidden_size"),
        R(a + "v_proj.weight", "num_key_value_heads * head_dim", "hidden_size"),
        R(a + "o_proj.weight", "hidden_size", "num_attention_heads * head_dim"),
    ]
    if q_bias:
        rules += [
            R(a + "q_proj.bias", "num_attention_heads * head_dim", when=q_bias),
            R(a + "k_proj.bias", "num_key_value_heads * head_dim", when=q_bias),
            R(a + "v_proj.bias", "num_key_value_heads * head_dim", when=q_bias),
        ]
    if o_bias:
        rules.append(R(a + "o_proj.bias", "hidden_size", when=o_bias))
    return tuple(rules)


def _gated_mlp(stem: str, size: str, bias: str | None = None, when: str | None = None) -> tuple[Rule, ...]:
    rules = [
        R(stem + "gate_proj.weight", size, "hidden_size", when=when),
        R(stem + "up_proj.weight", size, "hidden_size", when=when),
        R(stem + "down_proj.weight", "hidden_size", size, when=when),
    ]
    if bias:
        cond = bias if when is None else f"({when}) and ({bias})"
        rules += [
            R(stem + "gate_proj.bias", size, when=cond),
            R(stem + "up_proj.bias", size, when=cond),
            R(stem + "down_proj.bias", "hidden_size", when=cond),
        ]
    return tuple(rules)


_DECODER_ENDS = (
    R("model.embed_tokens.weight", "vocab_size", "hidden_size"),
    R(_L + "input_layernorm.weight", "hidden_size"),
    R(_L + "post_attention_layernorm.weight", "hidden_size"),
    R("model.norm.weight", "hidden_size"),
)

_DECODER_HEADS: dict[str, Head] = {
    "ForCausalLM": Head((R("lm_head.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),)),
    "Model": Head(base_prefixed=False),
    # transformers' GenericForSequenceClassification / GenericForTokenClassification.
    "ForSequenceClassification": Head((R("score.weight", "num_labels", "hidden_size"),)),
    "ForTokenClassification": Head((
        R("score.weight", "num_labels", "hidden_size"),
        R("score.bias", "num_labels", when="default(token_classification_bias, 1)"),
    )),
}

_LAYERS = {"i": ("num_hidden_layers", "layers")}


def _decoder(model_type: str, class_prefix: str, defaults: dict, derived: dict, rules: tuple[Rule, ...],
             ranges: Mapping[str, tuple[str, str]] = _LAYERS) -> Family:
    return Family(model_type, class_prefix, "model.", ranges, defaults, derived,
                  _DECODER_ENDS + rules, _DECODER_HEADS, "ForCausalLM")


_GQA = {"num_key_value_heads": "num_attention_heads", "head_dim": "hidden_size // num_attention_heads"}

LLAMA = _decoder(
    "llama", "Llama",
    dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
         num_attention_heads=32, attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + _gated_mlp(_L + "mlp.", "intermediate_size", "mlp_bias"),
)

MISTRAL = _decoder(
    "mistral", "Mistral",
    dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    _GQA,
    _llama_attention(None, None) + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

QWEN2 = _decoder(
    "qwen2", "Qwen2",
    dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    _GQA,
    # q/k/v always carry a bias in Qwen2, o_proj never.
    _llama_attention("1", None) + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

QWEN3 = _decoder(
    "qwen3", "Qwen3",
    dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=32, head_dim=128, attention_bias=False,
         tie_word_embeddings=False),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + (
        R(_L + "self_attn.q_norm.weight", "head_dim"),
        R(_L + "self_attn.k_norm.weight", "head_dim"),
    ) + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

_MOE = _L + "block_sparse_moe."
MIXTRAL = _decoder(
    "mixtral", "Mixtral",
    dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    {**_GQA, "num_local_experts": "default(num_experts, 8)"},
    _llama_attention(None, None) + (
        R(_MOE + "gate.weight", "num_local_experts", "hidden_size"),
        R(_MOE + "experts.{e}.w1.weight", "intermediate_size", "hidden_size"),
        R(_MOE + "experts.{e}.w2.weight", "hidden_size", "intermediate_size"),
        R(_MOE + "experts.{e}.w3.weight", "intermediate_size", "hidden_size"),
    ),
    ranges={**_LAYERS, "e": ("num_local_experts", "experts")},
)

# Qwen2MoeDecoderLayer: a sparse block unless the layer is in mlp_only_layers or off the step.
_SPARSE = "not member(i, mlp_only_layers) and num_experts > 0 and (i + 1) % decoder_sparse_step == 0"
QWEN2_MOE = _decoder(
    "qwen2_moe", "Qwen2Moe",
    dict(vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
         num_attention_heads=16, num_key_value_heads=16, decoder_sparse_step=1, moe_intermediate_size=1408,
         shared_expert_intermediate_size=5632, num_experts=60, mlp_only_layers=[], qkv_bias=True,
         tie_word_embeddings=False),
    _GQA,
    _llama_attention("qkv_bias", None) + (
        R(_L + "mlp.gate.weight", "num_experts", "hidden_size", when=_SPARSE),
        R(_L + "mlp.shared_expert_gate.weight", "1", "hidden_size", when=_SPARSE),
    ) + _gated_mlp(_L + "mlp.experts.{e}.", "moe_intermediate_size", when=_SPARSE)
      + _gated_mlp(_L + "mlp.shared_expert.", "shared_expert_intermediate_size", when=_SPARSE)
      + _gated_mlp(_L + "mlp.", "intermediate_size", when=f"not ({_SPARSE})"),
    ranges={**_LAYERS, "e": ("num_experts", "experts")},
)

GEMMA = _decoder(
    "gemma", "Gemma",
    dict(vocab_size=256000, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,
         num_attention_heads=16, num_key_value_heads=16, head_dim=256, attention_bias=False,
         tie_word_embeddings=True),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + _gated_mlp(_L + "mlp.", "intermediate_size"),
)

GEMMA2 = _decoder(
    "gemma2", "Gemma2",
    dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
         num_attention_heads=8, num_key_value_heads=4, head_dim=256, attention_bias=False,
         tie_word_embeddings=True),
    _GQA,
    _llama_attention("attention_bias", "attention_bias") + _gated_mlp(_L + "mlp.", "intermediate_size") + (
        R(_L + "pre_feedforward_layernorm.weight", "hidden_size"),
        R(_L + "post_feedforward_layernorm.weight", "hidden_size"),
    ),
)

PHI3 = _decoder(
    "phi3", "Phi3",
    dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
         num_attention_heads=32, tie_word_embeddings=False),
    _GQA,
    (
        # Fused projections: qkv_proj = [q; k; v] rows, gate_up_proj = [gate; up] rows.
        R(_L + "self_attn.qkv_proj.weight", "num_attention_heads * head_dim + 2 * num_key_value_heads * head_dim",
          "hidden_size"),
        R(_L + "self_attn.o_proj.weight", "hidden_size", "num_attention_heads * head_dim"),
        R(_L + "mlp.gate_up_proj.weight", "2 * intermediate_size", "hidden_size"),
        R(_L + "mlp.down_proj.weight", "hidden_size", "intermediate_size"),
    ),
)

# GPT-2 uses Conv1D, whose weight is stored [in_features, out_features] (transposed vs nn.Linear).
_H = "transformer.h.{i}."
GPT2 = Family(
    "gpt2", "GPT2", "transformer.", {"i": ("n_layer", "layers")},
    dict(vocab_size=50257, add_cross_attention=False, tie_word_embeddings=True),
    # attribute_map: hidden_size -> n_embd, max_position_embeddings -> n_positions, ...
    dict(n_embd="default(hidden_size, 768)", n_layer="default(num_hidden_layers, 12)",
         n_positions="default(max_position_embeddings, 1024)", n_inner="4 * n_embd"),
    (
        R("transformer.wte.weight", "vocab_size", "n_embd"),
        R("transformer.wpe.weight", "n_positions", "n_embd"),
        R(_H + "ln_1.weight", "n_embd"), R(_H + "ln_1.bias", "n_embd"),
        R(_H + "attn.c_attn.weight", "n_embd", "3 * n_embd"), R(_H + "attn.c_attn.bias", "3 * n_embd"),
        R(_H + "attn.c_proj.weight", "n_embd", "n_embd"), R(_H + "attn.c_proj.bias", "n_embd"),
        R(_H + "ln_2.weight", "n_embd"), R(_H + "ln_2.bias", "n_embd"),
        R(_H + "mlp.c_fc.weight", "n_embd", "n_inner"), R(_H + "mlp.c_fc.bias", "n_inner"),
        R(_H + "mlp.c_proj.weight", "n_inner", "n_embd"), R(_H + "mlp.c_proj.bias", "n_embd"),
        R(_H + "crossattention.c_attn.weight", "n_embd", "2 * n_embd", when="add_cross_attention"),
        R(_H + "crossattention.c_attn.bias", "2 * n_embd", when="add_cross_attention"),
        R(_H + "crossattention.q_attn.weight", "n_embd", "n_embd", when="add_cross_attention"),
        R(_H + "crossattention.q_attn.bias", "n_embd", when="add_cross_attention"),
        R(_H + "crossattention.c_proj.weight", "n_embd", "n_embd", when="add_cross_attention"),
        R(_H + "crossattention.c_proj.bias", "n_embd", when="add_cross_attention"),
        R(_H + "ln_cross_attn.weight", "n_embd", when="add_cross_attention"),
        R(_H + "ln_cross_attn.bias", "n_embd", when="add_cross_attention"),
        R("transformer.ln_f.weight", "n_embd"), R("transformer.ln_f.bias", "n_embd"),
    ),
    {
        "LMHeadModel": Head((R("lm_head.weight", "vocab_size", "n_embd", optional="tie_word_embeddings"),)),
        "Model": Head(base_prefixed=False),
        "ForSequenceClassification": Head((R("score.weight", "num_labels", "n_embd"),)),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "n_embd"),
                                        R("classifier.bias", "num_labels"))),
    },
    "LMHeadModel",
)

_N = "gpt_neox.layers.{i}."
GPT_NEOX = Family(
    "gpt_neox", "GPTNeoX", "gpt_neox.", _LAYERS,
    dict(vocab_size=50432, hidden_size=6144, num_hidden_layers=44, intermediate_size=24576,
         attention_bias=True, tie_word_embeddings=False),
    {},
    (
        R("gpt_neox.embed_in.weight", "vocab_size", "hidden_size"),
        R(_N + "input_layernorm.weight", "hidden_size"), R(_N + "input_layernorm.bias", "hidden_size"),
        R(_N + "post_attention_layernorm.weight", "hidden_size"),
        R(_N + "post_attention_layernorm.bias", "hidden_size"),
        R(_N + "attention.query_key_value.weight", "3 * hidden_size", "hidden_size"),
        R(_N + "attention.query_key_value.bias", "3 * hidden_size", when="attention_bias"),
        R(_N + "attention.dense.weight", "hidden_size", "hidden_size"),
        R(_N + "attention.dense.bias", "hidden_size", when="attention_bias"),
        R(_N + "mlp.dense_h_to_4h.weight", "intermediate_size", "hidden_size"),
        R(_N + "mlp.dense_h_to_4h.bias", "intermediate_size"),
        R(_N + "mlp.dense_4h_to_h.weight", "hidden_size", "intermediate_size"),
        R(_N + "mlp.dense_4h_to_h.bias", "hidden_size"),
        R("gpt_neox.final_layer_norm.weight", "hidden_size"), R("gpt_neox.final_layer_norm.bias", "hidden_size"),
    ),
    {
        # The checkpoint name is embed_out (transformers v5 renames it to lm_head in memory).
        "ForCausalLM": Head((R("embed_out.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),)),
        "Model": Head(base_prefixed=False),
        "ForSequenceClassification": Head((R("score.weight", "num_labels", "hidden_size"),)),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "hidden_size"),
                                        R("classifier.bias", "num_labels"))),
    },
    "ForCausalLM",
)

_F = "transformer.h.{i}."
# FalconDecoderLayer: two parallel layer norms for the new decoder architecture by default.
_FALCON_LN2 = "parallel_attn and num_ln_in_parallel_attn == 2"
FALCON = Family(
    "falcon", "Falcon", "transformer.", _LAYERS,
    dict(vocab_size=65024, num_hidden_layers=32, num_attention_heads=71, new_decoder_architecture=False,
         multi_query=True, parallel_attn=True, bias=False, tie_word_embeddings=True),
    dict(hidden_size="default(n_embed, 4544)", num_kv_heads="num_attention_heads",
         ffn_hidden_size="4 * hidden_size", num_ln_in_parallel_attn="2 if new_decoder_architecture else 0",
         head_dim="hidden_size // num_attention_heads"),
    (
        R("transformer.word_embeddings.weight", "vocab_size", "hidden_size"),
        R(_F + "self_attention.query_key_value.weight",
          "(num_kv_heads * 2 + num_attention_heads) * head_dim if new_decoder_architecture else "
          "(hidden_size + 2 * head_dim if multi_query else 3 * hidden_size)", "hidden_size"),
        R(_F + "self_attention.query_key_value.bias",
          "(num_kv_heads * 2 + num_attention_heads) * head_dim if new_decoder_architecture else "
          "(hidden_size + 2 * head_dim if multi_query else 3 * hidden_size)", when="bias"),
        R(_F + "self_attention.dense.weight", "hidden_size", "hidden_size"),
        R(_F + "self_attention.dense.bias", "hidden_size", when="bias"),
        R(_F + "mlp.dense_h_to_4h.weight", "ffn_hidden_size", "hidden_size"),
        R(_F + "mlp.dense_h_to_4h.bias", "ffn_hidden_size", when="bias"),
        R(_F + "mlp.dense_4h_to_h.weight", "hidden_size", "ffn_hidden_size"),
        R(_F + "mlp.dense_4h_to_h.bias", "hidden_size", when="bias"),
        R(_F + "input_layernorm.weight", "hidden_size", when=f"not ({_FALCON_LN2})"),
        R(_F + "input_layernorm.bias", "hidden_size", when=f"not ({_FALCON_LN2})"),
        R(_F + "post_attention_layernorm.weight", "hidden_size", when="not parallel_attn"),
        R(_F + "post_attention_layernorm.bias", "hidden_size", when="not parallel_attn"),
        R(_F + "ln_attn.weight", "hidden_size", when=_FALCON_LN2),
        R(_F + "ln_attn.bias", "hidden_size", when=_FALCON_LN2),
        R(_F + "ln_mlp.weight", "hidden_size", when=_FALCON_LN2),
        R(_F + "ln_mlp.bias", "hidden_size", when=_FALCON_LN2),
        R("transformer.ln_f.weight", "hidden_size"), R("transformer.ln_f.bias", "hidden_size"),
    ),
    {
        "ForCausalLM": Head((R("lm_head.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),)),
        "Model": Head(base_prefixed=False),
        "ForSequenceClassification": Head((R("score.weight", "num_labels", "hidden_size"),)),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "hidden_size"),
                                        R("classifier.bias", "num_labels"))),
    },
    "ForCausalLM",
)


def _bert_encoder(p: str) -> tuple[Rule, ...]:
    """BERT and RoBERTa share the encoder; ``p`` is the base prefix (``bert.``/``roberta.``)."""
    x = p + "encoder.layer.{i}."
    rules = [
        R(p + "embeddings.word_embeddings.weight", "vocab_size", "hidden_size"),
        R(p + "embeddings.position_embeddings.weight", "max_position_embeddings", "hidden_size"),
        R(p + "embeddings.token_type_embeddings.weight", "type_vocab_size", "hidden_size"),
        R(p + "embeddings.LayerNorm.weight", "hidden_size"), R(p + "embeddings.LayerNorm.bias", "hidden_size"),
    ]
    for block, when in (("attention.", None), ("crossattention.", "add_cross_attention")):
        for proj in ("query", "key", "value"):
            rules += [R(x + block + f"self.{proj}.weight", "hidden_size", "hidden_size", when=when),
                      R(x + block + f"self.{proj}.bias", "hidden_size", when=when)]
        rules += [
            R(x + block + "output.dense.weight", "hidden_size", "hidden_size", when=when),
            R(x + block + "output.dense.bias", "hidden_size", when=when),
            R(x + block + "output.LayerNorm.weight", "hidden_size", when=when),
            R(x + block + "output.LayerNorm.bias", "hidden_size", when=when),
        ]
    rules += [
        R(x + "intermediate.dense.weight", "intermediate_size", "hidden_size"),
        R(x + "intermediate.dense.bias", "intermediate_size"),
        R(x + "output.dense.weight", "hidden_size", "intermediate_size"),
        R(x + "output.dense.bias", "hidden_size"),
        R(x + "output.LayerNorm.weight", "hidden_size"), R(x + "output.LayerNorm.bias", "hidden_size"),
        # The pooler exists with add_pooling_layer; checkpoints saved from a pooled class keep it
        # (bert-base-uncased does), and the unpooled heads tolerate it.
        R(p + "pooler.dense.weight", "hidden_size", "hidden_size", optional="not add_pooling_layer"),
        R(p + "pooler.dense.bias", "hidden_size", optional="not add_pooling_layer"),
    ]
    return tuple(rules)


_BERT_MLM = (
    R("cls.predictions.bias", "vocab_size"),
    R("cls.predictions.transform.dense.weight", "hidden_size", "hidden_size"),
    R("cls.predictions.transform.dense.bias", "hidden_size"),
    R("cls.predictions.transform.LayerNorm.weight", "hidden_size"),
    R("cls.predictions.transform.LayerNorm.bias", "hidden_size"),
    R("cls.predictions.decoder.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),
    R("cls.predictions.decoder.bias", "vocab_size", optional="1"),  # alias of cls.predictions.bias
)
_BERT_NSP = (R("cls.seq_relationship.weight", "2", "hidden_size"), R("cls.seq_relationship.bias", "2"))
_BERT_NSP_LEFTOVER = tuple(Rule(r.name, r.shape, optional="1") for r in _BERT_NSP)
_NO_POOL = {"add_pooling_layer": False}
_ENCODER_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                         max_position_embeddings=512, type_vocab_size=2, add_cross_attention=False,
                         tie_word_embeddings=True)


def _classifier(name: str) -> tuple[Rule, ...]:
    return (R(f"{name}.weight", "num_labels", "hidden_size"), R(f"{name}.bias", "num_labels"))


BERT = Family(
    "bert", "Bert", "bert.", _LAYERS, dict(vocab_size=30522, **_ENCODER_DEFAULTS), {}, _bert_encoder("bert."),
    {
        "Model": Head(base_prefixed=False),
        # Pre-training checkpoints (bert-base-uncased) keep the NSP head: tolerated, not required.
        "ForMaskedLM": Head(_BERT_MLM + _BERT_NSP_LEFTOVER, _NO_POOL),
        "LMHeadModel": Head(_BERT_MLM + _BERT_NSP_LEFTOVER, _NO_POOL),
        "ForPreTraining": Head(_BERT_MLM + _BERT_NSP),
        "ForNextSentencePrediction": Head(_BERT_NSP),
        "ForSequenceClassification": Head(_classifier("classifier")),
        "ForTokenClassification": Head(_classifier("classifier"), _NO_POOL),
        "ForQuestionAnswering": Head(_classifier("qa_outputs"), _NO_POOL),
    },
    "Model",
    env_defaults={"add_pooling_layer": True},
)

_ROBERTA_LM = (
    R("lm_head.dense.weight", "hidden_size", "hidden_size"), R("lm_head.dense.bias", "hidden_size"),
    R("lm_head.layer_norm.weight", "hidden_size"), R("lm_head.layer_norm.bias", "hidden_size"),
    R("lm_head.decoder.weight", "vocab_size", "hidden_size", optional="tie_word_embeddings"),
    R("lm_head.decoder.bias", "vocab_size", optional="1"),  # alias of lm_head.bias
    R("lm_head.bias", "vocab_size"),
)
ROBERTA = Family(
    "roberta", "Roberta", "roberta.", _LAYERS, dict(vocab_size=50265, **_ENCODER_DEFAULTS), {},
    _bert_encoder("roberta."),
    {
        "Model": Head(base_prefixed=False),
        "ForMaskedLM": Head(_ROBERTA_LM, _NO_POOL),
        "ForCausalLM": Head(_ROBERTA_LM, _NO_POOL),
        "ForSequenceClassification": Head((
            R("classifier.dense.weight", "hidden_size", "hidden_size"), R("classifier.dense.bias", "hidden_size"),
        ) + _classifier("classifier.out_proj"), _NO_POOL),
        "ForTokenClassification": Head(_classifier("classifier"), _NO_POOL),
        "ForQuestionAnswering": Head(_classifier("qa_outputs"), _NO_POOL),
    },
    "ForMaskedLM",
    env_defaults={"add_pooling_layer": True},
)


def _t5_stack(stack: str, i: str) -> tuple[Rule, ...]:
    b = f"{stack}.block.{{{i}}}.layer."
    decoder = stack == "decoder"
    when = "has_decoder" if decoder else None
    ff = "2" if decoder else "1"
    rules = [
        R(f"{stack}.embed_tokens.weight", "vocab_size", "d_model", when=when, optional="1"),  # alias of shared
        R(f"{stack}.final_layer_norm.weight", "d_model", when=when),
    ]
    attentions = [("0.SelfAttention.", True)] + ([("1.EncDecAttention.", False)] if decoder else [])
    for attn, relative in attentions:
        rules += [
            R(b + attn + "q.weight", "num_heads * d_kv", "d_model", when=when),
            R(b + attn + "k.weight", "num_heads * d_kv", "d_model", when=when),
            R(b + attn + "v.weight", "num_heads * d_kv", "d_model", when=when),
            R(b + attn + "o.weight", "d_model", "num_heads * d_kv", when=when),
            R(b + attn.split(".")[0] + ".layer_norm.weight", "d_model", when=when),
        ]
        if relative:  # only the first block has the relative position bias
            rules.append(R(b + attn + "relative_attention_bias.weight", "relative_attention_num_buckets",
                           "num_heads", when=f"{i} == 0" + (f" and {when}" if when else "")))
    gated = "is_gated_act" + (f" and {when}" if when else "")
    plain = "not is_gated_act" + (f" and {when}" if when else "")
    rules += [
        R(b + ff + ".DenseReluDense.wi.weight", "d_ff", "d_model", when=plain),
        R(b + ff + ".DenseReluDense.wi_0.weight", "d_ff", "d_model", when=gated),
        R(b + ff + ".DenseReluDense.wi_1.weight", "d_ff", "d_model", when=gated),
        R(b + ff + ".DenseReluDense.wo.weight", "d_model", "d_ff", when=when),
        R(b + ff + ".layer_norm.weight", "d_model", when=when),
    ]
    return tuple(rules)


T5 = Family(
    "t5", "T5", "", {"i": ("num_layers", "encoder layers"), "j": ("num_decoder_layers", "decoder layers")},
    dict(vocab_size=32128, d_ff=2048, relative_attention_num_buckets=32, feed_forward_proj="relu",
         tie_word_embeddings=True),
    # attribute_map: hidden_size -> d_model, num_attention_heads -> num_heads, ...
    dict(d_model="default(hidden_size, 512)", d_kv="default(head_dim, 64)",
         num_layers="default(num_hidden_layers, 6)", num_heads="default(num_attention_heads, 8)",
         num_decoder_layers="num_layers",
         is_gated_act='startswith(feed_forward_proj, "gated-") or feed_forward_proj == "gated"'),
    (R("shared.weight", "vocab_size", "d_model"),) + _t5_stack("encoder", "i") + _t5_stack("decoder", "j"),
    {
        "ForConditionalGeneration": Head((R("lm_head.weight", "vocab_size", "d_model",
                                            optional="tie_word_embeddings"),)),
        "Model": Head(),
        "EncoderModel": Head(env={"has_decoder": False}),
        "ForQuestionAnswering": Head((R("qa_outputs.weight", "num_labels", "d_model"),
                                      R("qa_outputs.bias", "num_labels"))),
        # These two nest the model under transformer. (the other T5 classes store it bare).
        "ForSequenceClassification": Head((
            R("classification_head.dense.weight", "d_model", "d_model"), R("classification_head.dense.bias", "d_model"),
            R("classification_head.out_proj.weight", "num_labels", "d_model"),
            R("classification_head.out_proj.bias", "num_labels"),
        ), prefix="transformer."),
        "ForTokenClassification": Head((R("classifier.weight", "num_labels", "d_model"),
                                        R("classifier.bias", "num_labels")),
                                       env={"has_decoder": False}, prefix="transformer."),
    },
    "ForConditionalGeneration",
    env_defaults={"has_decoder": True},
)

# DeepSeek-V3/R1 (modeling_deepseek_v3.py): multi-head latent attention (q through a low-rank
# q_a/q_b pair unless q_lora_rank is null, k/v through kv_a_proj_with_mqa and kv_b_proj), dense
# MLPs in the first first_k_dense_replace layers, then routed experts, shared experts and a router
# (gate.weight plus e_score_correction_bias). The published checkpoint carries one more layer per
# num_nextn_predict_layers (multi-token prediction: enorm, hnorm, eh_proj, shared_head and a full
# decoder layer) that transformers ignores.
_MLA = _L + "self_attn."
_QK = "(qk_nope_head_dim + qk_rope_head_dim)"  # transformers recomputes qk_head_dim from these two
_DS_MOE = "i >= first_k_dense_replace"
DEEPSEEK_V3 = Family(
    "deepseek_v3", "DeepseekV3", "model.", {**_LAYERS, "e": ("n_routed_experts", "experts")},
    dict(vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
         num_hidden_layers=61, num_attention_heads=128, n_shared_experts=1, n_routed_experts=256, q_lora_rank=1536,
         kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, first_k_dense_replace=3,
         attention_bias=False, tie_word_embeddings=False, num_nextn_predict_layers=1),
    {},
    _DECODER_ENDS + (
        R(_MLA + "q_proj.weight", f"num_attention_heads * {_QK}", "hidden_size", when="not q_lora_rank"),
        R(_MLA + "q_a_proj.weight", "q_lora_rank", "hidden_size", when="q_lora_rank"),
        R(_MLA + "q_a_proj.bias", "q_lora_rank", when="q_lora_rank and attention_bias"),
        R(_MLA + "q_a_layernorm.weight", "q_lora_rank", when="q_lora_rank"),
        R(_MLA + "q_b_proj.weight", f"num_attention_heads * {_QK}", "q_lora_rank", when="q_lora_rank"),
        R(_MLA + "kv_a_proj_with_mqa.weight", "kv_lora_rank + qk_rope_head_dim", "hidden_size"),
        R(_MLA + "kv_a_proj_with_mqa.bias", "kv_lora_rank + qk_rope_head_dim", when="attention_bias"),
        R(_MLA + "kv_a_layernorm.weight", "kv_lora_rank"),
        R(_MLA + "kv_b_proj.weight", "num_attention_heads * (qk_nope_head_dim + v_head_dim)", "kv_lora_rank"),
        R(_MLA + "o_proj.weight", "hidden_size", "num_attention_heads * v_head_dim"),
        R(_MLA + "o_proj.bias", "hidden_size", when="attention_bias"),
        R(_L + "mlp.gate.weight", "n_routed_experts", "hidden_size", when=_DS_MOE),
        R(_L + "mlp.gate.e_score_correction_bias", "n_routed_experts", when=_DS_MOE),
    ) + _gated_mlp(_L + "mlp.", "intermediate_size", when=f"not ({_DS_MOE})")
      + _gated_mlp(_L + "mlp.experts.{e}.", "moe_intermediate_size", when=_DS_MOE)
      + _gated_mlp(_L + "mlp.shared_experts.", "moe_intermediate_size * n_shared_experts", when=_DS_MOE),
    _DECODER_HEADS, "ForCausalLM",
    trailing=(("model.layers.", "num_hidden_layers", "default(num_nextn_predict_layers, 0)"),),
    trailing_marker=(".enorm.weight", ".hnorm.weight", ".eh_proj.weight"),
)

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (LLAMA, MISTRAL, QWEN2, QWEN3, MIXTRAL, QWEN2_MOE, GEMMA, GEMMA2, PHI3, GPT2, GPT_NEOX, FALCON,
              BERT, ROBERTA, T5, DEEPSEEK_V3)
}
"""model_type -> rule table."""

KNOWN_EXTRAS: tuple[tuple[str, str], ...] = (
    (r"(^|\.)rotary_emb\.inv_freq$", "rotary_emb.inv_freq (a rotary-embedding buffer recomputed at load)"),
    (r"(^|\.)(attn|crossattention)\.(bias|masked_bias)$", "attn.bias/masked_bias (GPT-2's causal-mask buffers)"),
    (r"(^|\.)attention\.(bias|masked_bias)$", "attention.bias/masked_bias (GPT-NeoX's causal-mask buffers)"),
    (r"(^|\.)embeddings\.(position_ids|token_type_ids)$", "embeddings.position_ids (a BERT-style index buffer)"),
    (r"(^|\.)decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$",
     "EncDecAttention.relative_attention_bias (unused by T5's cross-attention)"),
)
"""Tensors older checkpoints carry that loaders ignore: (regex, label). Not warned about."""

LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    ("LayerNorm.gamma", "LayerNorm.weight"),
    ("LayerNorm.beta", "LayerNorm.bias"),
)
"""Old TF-era names transformers renames at load."""
