"""Reading JSONL input, prompt templates, and the fact-verification app's records and data."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pervade.apps.fact_verification.app import (
    BUNDLED_CLAIMS,
    BUNDLED_TEMPLATE,
    LABELS,
    FactVerification,
)
from pervade.apps.template import Template
from pervade.core.config import ConfigError
from pervade.runtime.inputs import (
    InputProblem,
    RecordError,
    SourceItem,
    count_records,
    read_jsonl,
)


def parse_text(record: Mapping[str, Any]) -> tuple[Mapping[str, Any], int]:
    text = record.get("text")
    if not isinstance(text, str):
        raise RecordError("text", "must be a string")
    return {"text": text}, len(text)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# -- read_jsonl --------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    return write_lines(
        tmp_path / "in.jsonl",
        [
            '{"id": "a", "text": "hello"}',  # 1
            "",  # 2: blank, skipped
            '{"id": "b", "text": ',  # 3: torn JSON
            "[1, 2]",  # 4: not an object
            '{"text": "no id"}',  # 5
            '{"id": true, "text": "x"}',  # 6
            '{"id": 1.5, "text": "x"}',  # 7
            '{"id": "", "text": "x"}',  # 8
            '{"id": 7, "text": "seven"}',  # 9: an integer id is fine
            '{"id": "a", "text": "again"}',  # 10: duplicate
            '{"id": "c", "text": 3}',  # 11: the parser refuses it
            '{"id": null, "text": "x"}',  # 12
        ],
    )


def test_read_jsonl_items_and_problems(mixed: Path) -> None:
    out = list(read_jsonl(mixed, parse_text))
    items = [o for o in out if isinstance(o, SourceItem)]
    problems = {o.line: o for o in out if isinstance(o, InputProblem)}
    assert items == [
        SourceItem("a", 1, {"text": "hello"}, 5),
        SourceItem("7", 9, {"text": "seven"}, 5),
    ]
    assert sorted(problems) == [3, 4, 5, 6, 7, 8, 10, 11, 12]
    assert all(p.path == str(mixed) for p in problems.values())
    # Output keeps input order.
    assert [o.line for o in out] == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]


def test_malformed_json_line(mixed: Path) -> None:
    problem = next(p for p in read_jsonl(mixed, parse_text) if p.line == 3)
    assert isinstance(problem, InputProblem)
    assert (problem.id, problem.field) == (None, None)
    assert problem.message.startswith("not valid JSON: ")
    assert "(column " in problem.message
    assert problem.key == "@line:3"
    assert problem.describe().startswith(f"{mixed}:3: not valid JSON")


def test_non_object_line(mixed: Path) -> None:
    problem = next(p for p in read_jsonl(mixed, parse_text) if p.line == 4)
    assert problem == InputProblem(str(mixed), 4, None, None, "expected a JSON object, got list")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (5, "missing"),
        (6, "must be a non-empty string or integer, got True"),
        (7, "must be a non-empty string or integer, got 1.5"),
        (8, "must be a non-empty string or integer, got ''"),
        (12, "missing"),
    ],
)
def test_missing_or_bad_id(mixed: Path, line: int, message: str) -> None:
    problem = next(p for p in read_jsonl(mixed, parse_text) if p.line == line)
    assert problem == InputProblem(str(mixed), line, None, "id", message)
    assert problem.key == f"@line:{line}"
    assert problem.describe() == f"{mixed}:{line}: field 'id': {message}"


def test_duplicate_id(mixed: Path) -> None:
    problem = next(p for p in read_jsonl(mixed, parse_text) if p.line == 10)
    assert isinstance(problem, InputProblem)
    assert problem.field == "id"
    assert problem.id is None  # the id belongs to line 1: the problem must not claim it
    assert problem.message == "duplicate id 'a' (first on line 1); skipped"


def test_int_and_string_ids_collide(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "in.jsonl", ['{"id": 7, "text": "x"}', '{"id": "7", "text": "y"}']
    )
    out = list(read_jsonl(path, parse_text))
    assert isinstance(out[0], SourceItem) and out[0].id == "7"
    assert isinstance(out[1], InputProblem) and "duplicate id '7'" in out[1].message


def test_parser_record_error(mixed: Path) -> None:
    problem = next(p for p in read_jsonl(mixed, parse_text) if p.line == 11)
    assert problem == InputProblem(str(mixed), 11, "c", "text", "must be a string")
    assert problem.key == "c"
    assert f"{mixed}:11" in problem.describe()
    assert "field 'text'" in problem.describe()
    record = problem.as_record()
    assert record == {
        "id": "c",
        "error": problem.describe(),
        "stage": "input",
        "file": str(mixed),
        "line": 11,
        "field": "text",
    }
    json.dumps(record)  # goes into the journal as JSON


def test_count_records_skips_blank_lines(mixed: Path) -> None:
    assert count_records(mixed) == 11


def test_record_error_carries_field_and_message() -> None:
    exc = RecordError("claim", "missing")
    assert isinstance(exc, ValueError)
    assert (exc.field, exc.message, str(exc)) == ("claim", "missing", "missing")


# -- templates ---------------------------------------------------------------------------

ALLOWED = ("claim", "evidence", "id")


def test_template_fields_in_order_without_duplicates() -> None:
    t = Template.parse("E: {evidence}\nC: {claim} {{literal}}\n{evidence}", "p.txt", ALLOWED)
    assert t.fields == ("evidence", "claim")
    assert t.render({"claim": "c", "evidence": "e", "extra": 1}) == "E: e\nC: c {literal}\ne"


def test_template_unknown_field_names_line_and_field() -> None:
    with pytest.raises(ConfigError) as info:
        Template.parse("intro\nClaim: {clam}\n", "prompt.txt", ALLOWED)
    message = str(info.value)
    assert message.startswith("template prompt.txt:2: field {clam} is not an input field")
    assert "known fields: claim, evidence, id" in message


@pytest.mark.parametrize("text", ["ok {claim}\nbroken {claim", "x {claim}}", "}{claim}"])
def test_template_unbalanced_brace(text: str) -> None:
    with pytest.raises(ConfigError, match=r"template p\.txt:\d: .*write \{\{ and \}\}"):
        Template.parse(text, "p.txt", ALLOWED)


def test_template_unbalanced_brace_names_its_line() -> None:
    with pytest.raises(ConfigError, match=r"^template p\.txt:3: "):
        Template.parse("{claim}\nfine\n{evidence", "p.txt", ALLOWED)


@pytest.mark.parametrize("text", ["{claim:>10}", "{claim!r}", "{claim!s:10}"])
def test_template_rejects_format_spec(text: str) -> None:
    with pytest.raises(ConfigError, match=r"template p\.txt:1: field \{claim\} takes no format"):
        Template.parse(text, "p.txt", ALLOWED)


@pytest.mark.parametrize("text", ["{}", "{0}", "{claim.upper}", "{claim[0]}"])
def test_template_rejects_non_plain_names(text: str) -> None:
    with pytest.raises(ConfigError, match="must be a plain name"):
        Template.parse(text, "p.txt", ALLOWED)


@pytest.mark.parametrize("text", ["", "no fields at all", "only {{escaped}} braces"])
def test_template_without_fields(text: str) -> None:
    with pytest.raises(ConfigError, match=r"template p\.txt: names no input field"):
        Template.parse(text, "p.txt", ALLOWED)


def test_template_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        Template.load(tmp_path / "nope.txt", ALLOWED)


# -- fact verification -------------------------------------------------------------------


@pytest.fixture(scope="module")
def app() -> FactVerification:
    return FactVerification.from_files(BUNDLED_TEMPLATE)


def test_fact_verification_parse_renders_prompt(app: FactVerification) -> None:
    record = {"id": "x1", "claim": "Frogs are reptiles.", "evidence": "Frogs are amphibians."}
    data, cost = app.parse({**record, "label": "REFUTES"})
    assert data["label"] == "REFUTES"
    assert "Claim: Frogs are reptiles." in data["prompt"]
    assert "Evidence: Frogs are amphibians." in data["prompt"]
    assert "{" not in data["prompt"]
    assert cost == len(data["prompt"])
    unlabelled, _ = app.parse(record)
    assert unlabelled["label"] is None


@pytest.mark.parametrize(
    ("record", "field", "message"),
    [
        ({"id": "1", "evidence": "e"}, "claim", "missing"),
        ({"id": "1", "claim": None, "evidence": "e"}, "claim", "missing"),
        ({"id": "1", "claim": 5, "evidence": "e"}, "claim", "must be a non-empty string, got 5"),
        ({"id": "1", "claim": "c", "evidence": ""}, "evidence", "must be a non-empty string"),
        ({"id": "1", "claim": "c", "evidence": "  \n"}, "evidence", "must be a non-empty string"),
        ({"id": "1", "claim": "c", "evidence": "e", "label": "TRUE"}, "label", "'TRUE' is not"),
    ],
)
def test_fact_verification_parse_rejects(
    app: FactVerification, record: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(RecordError) as info:
        app.parse(record)
    assert info.value.field == field
    assert info.value.message.startswith(message)


def test_unknown_label_lists_the_labels(app: FactVerification) -> None:
    with pytest.raises(RecordError, match="SUPPORTS, REFUTES, NOT ENOUGH INFO"):
        app.parse({"id": "1", "claim": "c", "evidence": "e", "label": "supports"})


def test_record_error_reaches_input_problem(app: FactVerification, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "c.jsonl", ['{"id": "k", "claim": "c", "evidence": ""}'])
    [problem] = list(read_jsonl(path, app.parse))
    assert isinstance(problem, InputProblem)
    assert (problem.line, problem.id, problem.field) == (1, "k", "evidence")
    assert f"{path}:1: field 'evidence'" in problem.describe()


@pytest.mark.parametrize("labels", [("A",), ("A", "A"), ("A", "")])
def test_fact_verification_rejects_bad_labels(labels: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError, match=r"app\.labels"):
        FactVerification.from_files(BUNDLED_TEMPLATE, labels)


def test_bundled_claims_all_parse(app: FactVerification) -> None:
    assert BUNDLED_TEMPLATE.is_file()
    assert set(app.template.fields) == {"claim", "evidence"}
    raw = [line for line in BUNDLED_CLAIMS.read_text(encoding="utf-8").splitlines() if line]
    assert len(raw) >= 300
    out = list(read_jsonl(BUNDLED_CLAIMS, app.parse))
    problems = [p.describe() for p in out if isinstance(p, InputProblem)]
    assert problems == []
    assert len(out) == len(raw)
    labels = Counter(item.data["label"] for item in out if isinstance(item, SourceItem))
    assert set(labels) == set(LABELS)
    assert min(labels.values()) >= 30  # every class is well represented
