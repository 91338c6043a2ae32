"""The README documents every finding code, and its code table is the registry's."""

from pathlib import Path

from hfconv.findings import all_codes, codes_markdown

README = Path(__file__).resolve().parent.parent / "README.md"


def test_every_code_is_documented_in_readme() -> None:
    text = README.read_text()
    missing = [code for code in all_codes() if f"| {code} |" not in text]
    assert not missing, f"run `python -m hfconv.findings README.md`; undocumented: {missing}"


def test_readme_code_table_is_current() -> None:
    text = README.read_text()
    table = text.split("<!-- codes:start -->\n", 1)[1].split("<!-- codes:end -->", 1)[0]
    assert table == codes_markdown(), "run `python -m hfconv.findings README.md`"


def test_every_code_entry_is_complete() -> None:
    for entry in all_codes().values():
        assert entry.code.startswith("HFC") and len(entry.code) == 6
        assert entry.title and entry.why and entry.fix and entry.example, entry.code
