"""The model card: ``README.md``'s YAML front matter, as the Hub validates it on every push.

The Hub rejects a push whose README.md metadata is invalid (a license that is not one of its ids,
an unknown pipeline tag, a base model that is not a repo id). The front matter is parsed with
PyYAML's safe loader only (no tags that build objects), with a size cap, a loader that refuses
duplicate keys (plain ``safe_load`` silently keeps the last one) and a bound on what aliases may
expand to (a "billion laughs" document is a few hundred bytes). The fields are then checked
against ``hfconv/schemas/model_card.schema.json``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from ..contents import FolderContents
from ..findings import Finding, finding, register
from .schema_subset import schema_errors
from .schemas import load_schema

if TYPE_CHECKING:  # pragma: no cover
    from jsonschema.protocols import Validator

CARD = "README.md"
MAX_CARD_BYTES = 1024 * 1024
"""Bytes of README.md read; the front matter must end within them (real metadata: a few KB; the
largest, with long ``model-index`` results such as MTEB's, a few hundred KB). Parsing 1 MiB of
YAML takes about a second."""
MAX_METADATA_NODES = 1_000_000
"""Values (scalars, lists, mappings) the front matter may hold once its aliases are expanded."""
MAX_ALIASES = 1000
"""Aliases (``*name``) one front matter may use."""

register("HFC030", "info", "no model card",
         "The folder has no README.md. The Hub shows an empty model card, and nothing tells users the "
         "license, the base model or how to use the model.",
         "Add a README.md with YAML metadata (license, base_model, pipeline_tag, ...): huggingface_hub's "
         "ModelCard.from_template writes one.",
         "no README.md: the Hub shows an empty model card (no license, no base model)")
register("HFC031", "error", "model card metadata unreadable",
         "README.md starts a YAML front matter block (---) that does not parse as a YAML mapping (a syntax "
         "error, a tab in the indentation, a tag that would build an object, text that is not UTF-8, no "
         "closing ---, or aliases that expand beyond any real card). The Hub rejects a push whose model card "
         "metadata does not parse.",
         "Fix the YAML between the two --- lines at the line given (huggingface_hub's ModelCard writes valid "
         "metadata).",
         "README.md: the YAML metadata does not parse: mapping values are not allowed here (line 3, column 9)")
register("HFC032", "error", "duplicate metadata key",
         "The same key appears twice in one mapping of README.md's YAML metadata. YAML forbids it; the Hub "
         "rejects the push, and tools that accept it keep one of the two values silently.",
         "Keep one of the two keys (merge their values).",
         "README.md: the YAML metadata has the key 'license' twice (lines 2 and 5); keep one")
register("HFC033", "error", "invalid model card metadata",
         "A field of README.md's YAML metadata that the Hub validates holds a value it refuses: a license "
         "that is not one of the Hub's ids (or 'other' without license_name), a base_model or dataset that "
         "is not a repo id, an unknown pipeline_tag, tags or language of the wrong type. The Hub rejects the "
         "push.",
         "Use the values listed in the Hub's documentation (https://huggingface.co/docs/hub/model-cards), "
         "e.g. 'license: apache-2.0', or 'license: other' with license_name and license_link.",
         "README.md: metadata license is 'Apache 2.0', but the Hub accepts only one of the Hub's license ids "
         "(apache-2.0, mit, llama3.1, cc-by-4.0, ...) or other")
register("HFC034", "info", "model card without metadata",
         "README.md has no YAML metadata block (--- at its first line). The Hub warns on the model page, and "
         "the model has no license, base model or pipeline tag for search and filters.",
         "Start README.md with a --- block holding at least license (huggingface_hub's ModelCardData writes "
         "one).",
         "README.md has no YAML metadata (no --- block at its start): the Hub shows no license or task")

_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n(.*?)^---[ \t]*(?:\r?\n|\Z)", re.S | re.M)
_EMPTY_FRONT_MATTER = re.compile(r"\A\s*---[ \t]*\r?\n---[ \t]*(?:\r?\n|\Z)")


class CardProblem(Exception):
    """Why the front matter cannot be used: the finding code and its message (after ``README.md: ``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_model_card(contents: FolderContents) -> Iterator[Finding]:
    """HFC030-HFC034: README.md present, its front matter parses and passes the Hub's metadata schema
    (when ``contents.options.publishing``: validate's pre-publish checks)."""
    if not contents.options.publishing:
        return
    folder = contents.folder
    if not folder.has(CARD):
        if not folder.truncated_listing:
            yield finding("HFC030", "no README.md: the Hub shows an empty model card (no license, no base model)")
        return
    if folder.is_special(CARD) or not folder.contains(CARD):
        return  # the layout checks report a FIFO or a link out of the folder; never opened here
    try:
        with open(folder.path(CARD), "rb") as handle:
            raw = handle.read(MAX_CARD_BYTES + 1)
    except OSError as exc:
        yield finding("HFC031", f"README.md cannot be read: {exc.strerror or exc}", file=CARD)
        return
    try:
        metadata = parse_front_matter(raw)
    except CardProblem as problem:
        yield finding(problem.code, f"README.md: {problem.message}", file=CARD)
        return
    if metadata is None:
        yield finding("HFC034", "README.md has no YAML metadata (no --- block at its start): the Hub shows no "
                      "license or task", file=CARD)
        return
    yield from _schema_findings(metadata)


def parse_front_matter(raw: bytes) -> dict[str, Any] | None:
    """The YAML metadata of a README.md's bytes: a mapping, None when there is no front matter.

    Raises:
        CardProblem: it does not parse (HFC031) or repeats a key (HFC032).
    """
    truncated = len(raw) > MAX_CARD_BYTES
    try:
        text = raw[:MAX_CARD_BYTES].decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (truncated and exc.start >= MAX_CARD_BYTES - 4):  # a character cut by the cap is fine
            raise CardProblem("HFC031", f"the file is not UTF-8 text (byte {exc.start:,} is not); "
                                        "the Hub reads model cards as UTF-8") from None
        text = raw[:exc.start].decode("utf-8")
    text = text.removeprefix("\ufeff")
    if not text.lstrip().startswith("---"):
        return None
    if _EMPTY_FRONT_MATTER.match(text):
        return {}
    match = _FRONT_MATTER.match(text)
    if match is None:
        if truncated:
            raise CardProblem("HFC031", f"the YAML metadata does not end within the first {MAX_CARD_BYTES:,} "
                                        "bytes (no closing ---)")
        raise CardProblem("HFC031", "the YAML metadata block has no closing --- line")
    first_line = text[:match.start(1)].count("\n")
    data = _load_yaml(match.group(1), first_line)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CardProblem("HFC031", f"the YAML metadata is a {_yaml_kind(data)}, not a mapping of keys to values")
    _bounded(data)
    return data


def _load_yaml(text: str, first_line: int) -> Any:
    import yaml

    loader = _loader_class()(text)
    loader.offset = first_line
    try:
        return loader.get_single_data()
    except CardProblem:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1 + first_line}, column {mark.column + 1})" if mark is not None else ""
        raise CardProblem("HFC031", f"the YAML metadata does not parse: {exc.problem or exc.context}{where}") from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise CardProblem("HFC031", f"the YAML metadata does not parse: {str(exc)[:200]}") from None
    finally:
        loader.dispose()


@cache
def _loader_class() -> type:
    """A safe loader (libyaml's parser where PyYAML has it, ten times faster) that refuses
    duplicate keys and, with the pure-Python parser, counts aliases (built once, on first use)."""
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type, misc]
        aliases = 0
        offset = 0
        """Lines of README.md before the YAML text (messages give README.md's line numbers)."""

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise CardProblem("HFC031", f"the YAML metadata uses more than {MAX_ALIASES:,} aliases (*name); "
                                                "no model card needs them")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: dict[Any, int] = {}
                for key_node, _ in node.value:
                    if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line
                    try:
                        first = seen.get(key)
                        seen.setdefault(key, line)
                    except TypeError:
                        continue  # an unhashable key: the constructor itself refuses it
                    if first is not None:
                        offset = self.offset
                        lines = (f"line {line + 1 + offset}" if first == line
                                 else f"lines {first + 1 + offset} and {line + 1 + offset}")
                        raise CardProblem("HFC032", f"the YAML metadata has the key {str(key)[:80]!r} twice "
                                                    f"({lines}); keep one")
            return super().construct_mapping(node, deep=deep)

    return Loader


def _bounded(data: Any) -> None:
    """Refuse metadata whose aliases expand to more than MAX_METADATA_NODES values (walked
    iteratively, so a deep document is no RecursionError)."""
    stack, seen = [data], 0
    while stack:
        value = stack.pop()
        seen += 1
        if seen > MAX_METADATA_NODES:
            raise CardProblem("HFC031", f"the YAML metadata holds more than {MAX_METADATA_NODES:,} values once its "
                                        "aliases are expanded; no model card is that large")
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def _yaml_kind(value: Any) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "value")


@cache
def _validator() -> Validator:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema("model_card.schema.json"))


def _schema_findings(metadata: dict[str, Any]) -> Iterator[Finding]:
    schema = load_schema("model_card.schema.json")
    properties = schema["properties"]
    reported: set[str] = set()
    checked = {str(k): _json_safe(v) for k, v in metadata.items() if str(k) in properties}  # only these are checked
    errors = schema_errors(schema, checked, _validator, strict_integers=False)  # none: jsonschema not imported
    for error in sorted(errors, key=lambda e: list(map(str, e.path))):
        path = list(error.absolute_path)
        if not path:  # the if/then: license other without license_name
            if "license_name" in reported:
                continue
            reported.add("license_name")
            yield finding("HFC033", "README.md: metadata license is 'other' but there is no license_name; add "
                          "license_name (and license_link to the license text)", file=CARD, tensor="license_name")
            continue
        key = str(path[0])
        if key in reported:
            continue
        reported.add(key)
        value = metadata.get(key)
        expected = properties.get(key, {}).get("x-expected", "another value")
        shown = _short(value)
        index = next((p[0] for p in (list(sub.path) for sub in error.context or ()) if p and isinstance(p[0], int)),
                     path[1] if len(path) > 1 else None)
        if isinstance(value, list) and isinstance(index, int) and 0 <= index < len(value):
            shown = f"{_short(value[index])} (item {index + 1} of its list)"
        yield finding("HFC033", f"README.md: metadata {key} is {shown}, but the Hub accepts only {expected}",
                      file=CARD, tensor=key)


def _json_safe(value: Any) -> Any:
    """YAML values jsonschema can check: dates and other scalars as strings, keys as strings."""
    stack: list[tuple[Any, Any, Any]] = []
    root: list[Any] = [None]
    stack.append((value, root, 0))
    while stack:
        item, parent, slot = stack.pop()
        if isinstance(item, dict):
            out: dict[str, Any] = {}
            parent[slot] = out
            for k, v in item.items():
                out[str(k)] = None
                stack.append((v, out, str(k)))
        elif isinstance(item, list):
            out_list: list[Any] = [None] * len(item)
            parent[slot] = out_list
            for i, v in enumerate(item):
                stack.append((v, out_list, i))
        elif item is None or isinstance(item, (str, int, float, bool)):
            parent[slot] = item
        else:
            parent[slot] = str(item)
    return root[0]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
