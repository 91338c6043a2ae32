"""The fast schema pre-check (hfconv/checks/schema_subset.py): it says "valid" only where jsonschema
finds no error, says it on every real file (else validate gains nothing), and keeps `hfconv validate`
from importing jsonschema on a good folder without changing a word of the findings on a bad one."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hfconv.checks.schema_subset import certainly_valid
from hfconv.checks.schemas import SCHEMA_FILES, load_schema

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
Parts = tuple[str | int, ...]


def oracle(schema_name: str, strict_integers: bool = True) -> Callable[[Any], bool]:
    """jsonschema's answer (valid or not), with hfconv's integer rule as schemas.py applies it."""
    from jsonschema import Draft202012Validator, validators

    cls: Any = Draft202012Validator
    if strict_integers:
        checker = Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
        cls = validators.extend(Draft202012Validator, type_checker=checker)
    validator = cls(load_schema(schema_name))
    return lambda value: next(iter(validator.iter_errors(value)), None) is None


def real_files() -> dict[str, list[tuple[str, Any]]]:
    """Every distinct metadata JSON file under fixtures/, by schema: (relative path, parsed value)."""
    by_schema: dict[str, list[tuple[str, Any]]] = {}
    seen: set[bytes] = set()
    for path in sorted(FIXTURES.rglob("*.json")):
        if path.name not in SCHEMA_FILES or path.stat().st_size > 100_000:
            continue
        raw = path.read_bytes()
        if raw in seen:
            continue
        seen.add(raw)
        by_schema.setdefault(SCHEMA_FILES[path.name][0], []).append(
            (str(path.relative_to(FIXTURES)), json.loads(raw)))
    return by_schema


REAL = real_files()


def nodes(value: Any, parts: Parts = ()) -> Iterator[tuple[Parts, Any]]:
    yield parts, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from nodes(item, (*parts, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            yield from nodes(item, (*parts, index))


_DROP = object()


def replaced(value: Any, parts: Parts, new: Any) -> Any:
    """A copy of ``value`` with the node at ``parts`` replaced (or dropped: ``_DROP``), copying
    only the containers on the way."""
    if not parts:
        return new
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        out = dict(value)
        if rest or new is not _DROP:
            out[head] = replaced(value[head], rest, new)
        else:
            del out[head]
        return out
    out_list = list(value)
    if rest or new is not _DROP:
        out_list[head] = replaced(value[head], rest, new)  # type: ignore[index]
    else:
        del out_list[head]  # type: ignore[arg-type]
    return out_list


def variants(value: Any) -> list[Any]:
    """What a broken file holds instead: another JSON type, an integral float, a negative number,
    a wrong constant, a nested list, a string with a line break."""
    if type(value) is bool:
        return [int(value), str(value).lower(), None]
    if type(value) is int:
        return [float(value), value != 0, str(value), None, -value - 1, 0, [value], value + 0.5]
    if type(value) is float:
        return [-value - 1.0, str(value), True, None, int(value), 0.0, 1e309 - 1e309]
    if type(value) is str:
        return ["", value.upper() + "x", value + "\n", 1, None, [value], {value: value}]
    if value is None:
        return [0, "", False, [], {}]
    if isinstance(value, list):
        return [[], [value], {}, None, [1.0, True, "x"], [*value, None]]
    renamed = {(f"{key}x" if index == 0 else key): item for index, (key, item) in enumerate(value.items())}
    return [[], {}, None, {"x": 1}, renamed]


def mutations(data: Any) -> Iterator[tuple[str, Any]]:
    for parts, value in nodes(data):
        if parts:
            yield f"drop {parts}", replaced(data, parts, _DROP)
        for new in variants(value):
            yield f"{parts} = {new!r}", replaced(data, parts, new)


# --- 1. real files: valid for certain ------------------------------------------------------------
def test_every_real_metadata_file_is_certainly_valid() -> None:
    assert {"config.schema.json", "tokenizer_config.schema.json", "special_tokens_map.schema.json",
            "generation_config.schema.json", "index.schema.json", "tokenizer.schema.json"} <= REAL.keys()
    assert sum(map(len, REAL.values())) >= 40
    for schema_name, files in REAL.items():
        check = oracle(schema_name)
        for name, data in files:
            assert check(data), name  # the fixtures are good files
            assert certainly_valid(load_schema(schema_name), data), f"{name}: the fast check doubts a good file"


# --- 2. differential: never "valid" where jsonschema objects --------------------------------------
def test_never_says_valid_where_jsonschema_finds_an_error() -> None:
    """Every mutation (each key dropped or renamed, each value retyped, negated, ...) of one llama
    config, the tokenizer configs, special tokens maps and generation configs, and a deterministic
    sample of those of the other files (80 configs, indexes, tokenizer.json: all would take half a minute)."""
    sample: list[tuple[str, str, Any]] = []
    others: list[tuple[str, str, Any]] = []
    every = ("tokenizer_config.schema.json", "special_tokens_map.schema.json", "generation_config.schema.json")
    for schema_name, files in REAL.items():
        for name, data in files:
            (sample if schema_name in every or name == "llama-bin/config.json" else others).extend(
                (schema_name, f"{name}: {what}", value) for what, value in mutations(data))
    assert len(sample) > 700
    sample += random.Random(19).sample(others, 400)
    checks = {name: oracle(name) for name in REAL}
    invalid = vouched = 0
    for schema_name, what, value in sample:
        valid = checks[schema_name](value)
        fast = certainly_valid(load_schema(schema_name), value)
        assert valid or not fast, f"{what}: the fast check says valid, jsonschema finds an error"
        invalid += not valid
        vouched += fast
    # The sample has teeth (many real errors) and the fast path still vouches for most harmless edits.
    assert invalid > 500 and vouched > 500, (invalid, vouched)


def test_model_card_metadata_against_jsonschema() -> None:
    """model_card.schema.json, with JSON Schema's own integer rule (as model_card.py validates)."""
    schema, check = load_schema("model_card.schema.json"), oracle("model_card.schema.json", strict_integers=False)
    cards = [
        {"license": "apache-2.0", "base_model": "meta-llama/Llama-3.1-8B", "tags": ["llama", "text"],
         "language": ["en", "fr"], "pipeline_tag": "text-generation", "datasets": ["org/data"],
         "library_name": "transformers"},
        {"license": "other", "license_name": "custom", "license_link": "LICENSE", "language": "en"},
        {"license": "other"},
    ]
    for card in cards:
        assert certainly_valid(schema, card, strict_integers=False) == check(card), card
        for what, value in mutations(card):
            assert check(value) or not certainly_valid(schema, value, strict_integers=False), what


# --- 3. the doubtful corners of JSON Schema answer "ask jsonschema" --------------------------------
@pytest.mark.parametrize(("schema", "value", "expected"), [
    ({"type": "integer"}, 32, True),
    ({"type": "integer"}, 32.0, False),              # hfconv: 32.0 is not an integer
    ({"type": "integer"}, True, False),              # nor is true
    ({"type": "number", "minimum": 0}, -0.5, False),
    ({"const": 1}, 1.0, False),                      # equal in JSON Schema: doubt, not a verdict
    ({"const": 1}, True, False),                     # True != 1 in JSON Schema
    ({"not": {"const": 1}}, 1.0, False),             # a doubt is not inverted into "valid"
    ({"not": {"const": 1}}, True, True),
    ({"enum": ["a", 1]}, "a", True),
    ({"enum": [[1]]}, [1], False),                   # containers: doubt
    ({"minLength": 2}, "\U0001F600", False),         # one code point
    ({"pattern": "^[0-9]+$"}, "12", True),
    ({"pattern": "^[0-9]+$"}, "12\n", False),        # Python's $ matches before the newline, ECMA's not
    ({"pattern": "^\\d+$"}, "12", False),            # escapes differ between dialects: doubt
    ({"uniqueItems": True}, [1, 2], False),          # a keyword the subset does not know
    ({"if": {"const": 1}, "then": {"type": "string"}, "else": {"type": "integer"}}, 1.0, False),
    ({"if": {"const": 1}, "then": {"type": "number"}, "else": {"type": "number"}}, 1.0, True),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}}, "x", True),
    ({"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}, "x", False),  # a loop: gives up
    ({"$ref": "other.json#/a"}, "x", False),
    ({"$defs": {"a": {"$id": "urn:x", "type": "string"}}, "$ref": "#/$defs/a"}, "x", False),
])
def test_doubtful_corners(schema: dict[str, Any], value: Any, expected: bool) -> None:
    assert certainly_valid(schema, value) is expected
    if expected:
        from jsonschema import Draft202012Validator

        assert Draft202012Validator(schema).is_valid(value)


# --- 4. through the CLI ----------------------------------------------------------------------------
_WITHOUT_JSONSCHEMA = """
import atexit, runpy, sys
sys.argv = ["hfconv", "validate", sys.argv[1]]
# The console entry leaves through os._exit after the atexit handlers: report from one.
atexit.register(lambda: print("jsonschema imported:", "jsonschema" in sys.modules, file=sys.stderr))
runpy.run_module("hfconv", run_name="__main__")
"""

GOOD_CARD = """---
license: apache-2.0
base_model: meta-llama/Llama-3.1-8B
language: [en]
pipeline_tag: text-generation
library_name: transformers
tags: [llama]
---
# A tiny llama
"""


def test_validate_of_a_good_folder_does_not_import_jsonschema(tmp_path: Path) -> None:
    folder = tmp_path / "llama"
    shutil.copytree(FIXTURES / "llama-bin-sharded", folder)
    (folder / "README.md").write_text(GOOD_CARD, encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", _WITHOUT_JSONSCHEMA, str(folder)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "OK: 0 error(s), 0 warning(s)" in done.stdout, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == "jsonschema imported: False", done.stderr


# The findings as hfconv gave them before the fast path (pinned byte for byte).
_PINNED = [
    "README.md: metadata base_model is 'bad id!' (item 2 of its list), but the Hub accepts only a model repo id "
    "(org/name) or a list of them",
    "README.md: metadata license is 'Apache 2.0', but the Hub accepts only one of the Hub's license ids "
    "(apache-2.0, mit, llama3.1, cc-by-4.0, ...) or other",
    "README.md: metadata tags is 3 (item 2 of its list), but the Hub accepts only a list of strings",
    "config.json: $.num_hidden_layers must be a positive integer (or a list of them, one per stage), or null, "
    "not 2.0; fix that value in config.json (or re-save it with save_pretrained)",
    "config.json: $.rope_scaling.factor must be a scaling factor greater than 0, not -2; fix that value in "
    "config.json (or re-save it with save_pretrained)",
    "config.json: $.vision_config.rope_scaling.factor must be a scaling factor greater than 0, not 'x'; fix that "
    "value in config.json (or re-save it with save_pretrained)",
    "config.json: $.vocab_size must be a positive integer or null, not true; fix that value in config.json (or "
    "re-save it with save_pretrained)",
]


def test_schema_findings_of_a_broken_folder_are_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "llama"
    shutil.copytree(FIXTURES / "llama-bin", folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(num_hidden_layers=float(config["num_hidden_layers"]), vocab_size=True,
                  rope_scaling={"rope_type": "linear", "factor": -2},
                  vision_config={"model_type": "siglip", "rope_scaling": {"rope_type": "linear", "factor": "x"}})
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "README.md").write_text('---\nlicense: Apache 2.0\nbase_model: [meta-llama/Llama-3.1-8B, "bad id!"]\n'
                                      "tags: [a, 3]\npipeline_tag: text-generation\n---\n# hi\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "hfconv", "validate", "--format", "json", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    findings = json.loads(done.stdout)["findings"]
    assert [f["message"] for f in findings if f["code"] in ("HFC402", "HFC033")] == _PINNED
