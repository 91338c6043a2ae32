"""Tests for hfconv.jsonutil: strict JSON that never disagrees with stricter parsers."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfconv import jsonutil
from hfconv.jsonutil import JsonError, load_json_file, loads_strict
from hfconv.tensors import FormatError


def _error(text, **kw) -> JsonError:
    with pytest.raises(JsonError) as info:
        loads_strict(text, **kw)
    return info.value


def test_valid_object_round_trips():
    doc = {"a": 1, "b": [1.5, -2, None, True, "x\u00e9\U0001f600"], "c": {"d": {}}}
    assert loads_strict(json.dumps(doc)) == doc
    assert loads_strict(json.dumps(doc).encode("utf-8")) == doc


def test_duplicate_key_top_level():
    err = _error('{"a": 1, "b": 2, "a": 3}')
    assert err.kind == "duplicate_key"
    assert err.key == "a"
    assert "'a'" in err.message


def test_duplicate_key_nested():
    err = _error('{"outer": [{"x": {"k": 1, "k": 2}}]}')
    assert err.kind == "duplicate_key"
    assert err.key == "k"


def test_duplicate_key_spelled_with_escape():
    # "\u0061" is "a": the same key in another spelling is still a duplicate.
    err = _error('{"a": 1, "\\u0061": 2}')
    assert err.kind == "duplicate_key" and err.key == "a"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1E400"])
def test_nonfinite_numbers_refused(literal):
    err = _error('{"x": [1, %s]}' % literal)
    assert err.kind == "nonfinite"


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"a":', "}")])
def test_deep_nesting_refused_fast(opener, closer):
    text = '{"k":' + opener * 100_000 + "1" + closer * 100_000 + "}"
    start = time.monotonic()
    err = _error(text)
    assert time.monotonic() - start < 5
    assert err.kind == "too_deep"


def test_ten_million_brackets_never_reach_the_parser():
    err = _error("[" * 10_000_000, require_object=False)
    assert err.kind == "too_deep"


def test_depth_limit_is_exact():
    ok = '{"a":' + "[" * 63 + "]" * 63 + "}"  # depth 64
    assert loads_strict(ok)
    err = _error('{"a":' + "[" * 64 + "]" * 64 + "}")
    assert err.kind == "too_deep"
    assert loads_strict("[[[]]]", max_depth=3, require_object=False) == [[[]]]
    assert _error("[[[[]]]]", max_depth=3, require_object=False).kind == "too_deep"


def test_brackets_inside_strings_do_not_count():
    text = json.dumps({"name": "[" * 10_000 + "{" * 10_000, "q": 'a\\"[[['})
    assert loads_strict(text)["name"].startswith("[[[")


def test_syntax_error_has_line_and_column():
    err = _error('{\n  "a": 1,\n  "b" 2\n}')
    assert err.kind == "syntax"
    assert (err.line, err.column) == (3, 7)
    assert "line 3" in err.message and "column 7" in err.message


def test_trailing_garbage_is_a_syntax_error():
    assert _error('{"a": 1} x').kind == "syntax"
    assert _error(b'{"a": 1}\x00').kind == "syntax"


def test_top_level_must_be_object():
    err = _error("[1, 2]")
    assert err.kind == "not_object"
    assert "array" in err.message
    assert _error('"s"').kind == "not_object"
    assert loads_strict("[1, 2]", require_object=False) == [1, 2]


def test_bom_refused():
    assert _error(b'\xef\xbb\xbf{"a": 1}').kind == "encoding"
    assert _error('\ufeff{"a": 1}').kind == "encoding"


def test_invalid_utf8_refused():
    err = _error(b'{"a": "\xff"}')
    assert err.kind == "encoding"
    assert "UTF-8" in err.message


def test_lone_surrogate_escape_refused():
    # Python decodes "\ud800" happily; serde_json and UTF-8 writers refuse it.
    assert _error('{"a": "\\ud800"}').kind == "encoding"
    assert _error('{"\\udc00x": 1}').kind == "encoding"
    assert _error('{"a": ["ok", ["\\uDBFF"]]}').kind == "encoding"
    # A proper pair is fine.
    assert loads_strict('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}


def test_huge_integer_literal_is_a_json_error():
    err = _error('{"a": ' + "9" * 5000 + "}")
    assert err.kind == "syntax"


def test_unknown_kind_rejected():
    with pytest.raises(ValueError):
        JsonError("bogus", "x")


def test_load_json_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "n": [1, 2]}', encoding="utf-8")
    assert load_json_file(path) == {"model_type": "llama", "n": [1, 2]}


def test_load_json_file_too_large(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b'{"a": "' + b"x" * 2000 + b'"}')
    with pytest.raises(JsonError) as info:
        load_json_file(path, max_bytes=1000)
    assert info.value.kind == "too_large"
    assert load_json_file(path, max_bytes=5000)["a"] == "x" * 2000


def test_load_json_file_passes_options(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1]", encoding="utf-8")
    with pytest.raises(JsonError) as info:
        load_json_file(path)
    assert info.value.kind == "not_object"
    assert load_json_file(path, require_object=False) == [1]


def test_load_json_file_duplicate(tmp_path):
    path = tmp_path / "dup.json"
    path.write_text('{"a": 1, "a": 2}', encoding="utf-8")
    with pytest.raises(JsonError) as info:
        load_json_file(path)
    assert info.value.kind == "duplicate_key"


def test_load_json_file_missing_and_fifo(tmp_path):
    with pytest.raises(FormatError) as info:
        load_json_file(tmp_path / "nope.json")
    assert info.value.code == "HFC008"
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        with pytest.raises(FormatError) as info:
            load_json_file(fifo)  # must not block
        assert info.value.code == "HFC008"


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_random_input_only_raises_json_error(text):
    try:
        loads_strict(text, require_object=False)
    except JsonError:
        pass


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json_values)
def test_valid_json_parses_like_json_module(value):
    text = json.dumps(value)
    parsed = loads_strict(text, require_object=False)
    assert parsed == json.loads(text)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


# Strings full of quotes, backslashes and brackets, to trip up the depth pre-scan.
_tricky_text = st.text(alphabet='[]{}"\\ax\u00e9\n', max_size=8)
_nested = st.recursive(
    st.none() | st.integers() | _tricky_text,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(_tricky_text, children, max_size=3),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(_nested, st.booleans())
def test_depth_limit_matches_real_nesting(value, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only)
    depth = _depth(value)
    assert loads_strict(text, max_depth=depth, require_object=False) == value
    if depth > 0:
        with pytest.raises(JsonError) as info:
            loads_strict(text, max_depth=depth - 1, require_object=False)
        assert info.value.kind == "too_deep"


@pytest.mark.parametrize("literal, value", [("Infinity", math.inf), ("-Infinity", -math.inf)])
def test_nonfinite_literals_allowed_for_python_written_files(literal, value):
    assert loads_strict('{"x": [0.0, %s]}' % literal, allow_nonfinite=True)["x"][1] == value
    # NaN (no default of any config) and an overflowing literal stay refused.
    assert _error('{"x": NaN}', allow_nonfinite=True).kind == "nonfinite"
    assert _error('{"x": 1e999}', allow_nonfinite=True).kind == "nonfinite"


@pytest.mark.parametrize("text", [b'{"a" :1,"a":2}', b'{"a":1,"a":2,"b" :3}', b'{"a":1,"a":":x"}',
                                  b'{"x":{"a" : 1},"y":{"k":1,"k":2,"z"\n:0}}'])
def test_duplicate_keys_are_found_whatever_the_spacing_around_colons(text):
    """The duplicate-key shortcut counts ``":`` against the keys parsed; a key spaced from its
    colon (legal JSON) must not let a duplicate elsewhere pass."""
    with pytest.raises(JsonError) as caught:
        loads_strict(text)
    assert caught.value.kind == "duplicate_key"


def test_brackets_in_strings_never_count_against_the_container_limit():
    """The bracket count that stands in for both numbers under the limit counts brackets inside
    strings too: a text within its limits is never refused for them."""
    text = '{"a": "[[[[{{{{", "b": [1, {"c": 2}]}'  # 3 arrays and objects, 8 brackets in a string
    assert loads_strict(text, max_containers=3)["b"] == [1, {"c": 2}]
    with pytest.raises(JsonError) as info:
        loads_strict(text, max_containers=2)
    assert info.value.kind == "too_large"


@pytest.mark.parametrize(("text", "parses"), [
    ('{"weight_map": {"a.weight": "model-1.safetensors", "b.weight": "model-1.safetensors"}}', 1),
    ('{"model": {"vocab": {":": 0, "a:b": 1}}, "chat_template": "{{ role }}: {{ content }}"}', 1),
    ('{"a": 1, "a": 2}', 2),  # a duplicate: the quick parse, then the hooked one names it
])
def test_one_parse_where_strings_hold_colons(monkeypatch, text, parses):
    """Where a colon follows no quote, a string holds it and the key count cannot settle duplicates:
    the hooked parse comes at once, not after a parse thrown away (every tokenizer.json)."""
    calls = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: calls.append(k.get("object_pairs_hook")) or real(*a, **k))
    bulk = jsonutil.loads_fast  # the bulk parse (orjson) counts as a parse too
    monkeypatch.setattr(jsonutil, "loads_fast", lambda raw: calls.append("bulk") or bulk(raw))
    try:
        loads_strict(text.encode())  # as files are read
    except JsonError as exc:
        assert exc.kind == "duplicate_key"
    assert len(calls) == parses


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12)
_SPLICES = [b"\\ud800", b"\\udc00", b'"', b"\\", b":", b",", b"NaN", b"Infinity", b"1e400", b"-0", b"\xff",
            b"\xed\xa0\x80", b"99999999999999999999999", b"1.5", b"{", b"]", b"\x00", b" "]


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES, st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(_SPLICES)), max_size=2),
       st.booleans())
def test_the_bulk_parse_reads_every_text_as_json_alone_does(value, splices, allow_nonfinite):
    """loads_strict takes orjson's parse only where json's would be the same: on valid texts and
    broken ones (a spliced surrogate escape, a duplicate key, a huge integer, NaN), the value or the
    refusal (kind and message) is the one of json alone."""
    raw = bytearray(json.dumps({"k": value, "k2": [value]}, ensure_ascii=False).encode())
    for at, splice in splices:
        raw[at % (len(raw) + 1):at % (len(raw) + 1)] = splice

    def outcome() -> tuple[str, object]:
        try:
            return "ok", repr(loads_strict(bytes(raw), allow_nonfinite=allow_nonfinite))
        except JsonError as exc:
            return exc.kind, exc.message

    bulk = outcome()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jsonutil, "_orjson_loads", None)  # loads_fast falls back to json
        assert outcome() == bulk
