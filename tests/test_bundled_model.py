"""The real bundled model (SmolLM2-135M-Instruct): engine and the whole bundled job."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pervade.apps.fact_verification.app import BUNDLED_CLAIMS
from pervade.cli.main import main
from pervade.engines.bundled import ensure_smollm2
from pervade.engines.hf import HFEngine, load_engine
from tests.helpers.jobs import ROOT, write_jsonl

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return load_engine(str(ensure_smollm2()), dtype="float32")


def test_choose_prefers_the_right_continuation(engine: HFEngine) -> None:
    picked = engine.choose(
        ["The capital of France is", "Two plus two equals"], [" Paris", " Berlin", " four"]
    )
    assert [p.best for p in picked] == [" Paris", " four"]  # type: ignore[union-attr]


def test_generate_answers_a_simple_question(engine: HFEngine) -> None:
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    first, second = engine.generate([prompt, prompt], max_new_tokens=12)
    assert "Paris" in first.text  # type: ignore[union-attr]
    assert first == second  # greedy decoding is deterministic across a batch


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_the_bundled_job_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "fv.jsonl"
    code = main(
        [
            "run",
            str(ROOT / "examples" / "fact_verification.toml"),
            "--output",
            str(output),
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    results = _lines(output)
    gold = {
        json.loads(line)["id"]: json.loads(line)["label"]
        for line in BUNDLED_CLAIMS.read_text().splitlines()
    }
    assert Counter(r["id"] for r in results) == Counter(list(gold)), "each item exactly once"
    for r in results:
        assert r["verdict"] in ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")
        assert set(r["scores"]) == {"SUPPORTS", "REFUTES", "NOT ENOUGH INFO"}  # type: ignore[arg-type]
        assert r["label"] == gold[r["id"]] and r["correct"] == (r["verdict"] == r["label"])
    correct = sum(1 for r in results if r["correct"])
    assert f"{100 * correct / len(results):.1f}% ({correct} of {len(results)} labelled" in printed
    assert output.with_name("fv.errors.jsonl").read_text() == ""


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_bad_input_lines_become_error_records_and_the_rest_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [json.loads(line) for line in BUNDLED_CLAIMS.read_text().splitlines()[:10]]
    bad_lines: list[object] = [
        '{"id": "broken", "claim": "no closing brace"',
        {"id": "no-claim", "evidence": "Some evidence."},
        {"id": good[0]["id"], "claim": "a duplicate id", "evidence": "x"},
        {"id": "too-long", "claim": "Long.", "evidence": "word " * 9000},
        {"id": "odd-label", "claim": "c", "evidence": "e", "label": "MAYBE"},
    ]
    source = write_jsonl(tmp_path / "claims.jsonl", [*good[:5], *bad_lines, *good[5:]])
    output = tmp_path / "out.jsonl"
    code = main(
        [
            "run",
            "--app",
            "fact-verification",
            "--input",
            str(source),
            "--output",
            str(output),
            "--quiet",
        ]
    )
    capsys.readouterr()
    assert code == 1
    assert sorted(r["id"] for r in _lines(output)) == sorted(g["id"] for g in good)
    errors = {(e["line"], e.get("field")): e for e in _lines(output.with_name("out.errors.jsonl"))}
    assert set(errors) == {(6, None), (7, "claim"), (8, "id"), (9, "prompt"), (10, "label")}
    assert {e["file"] for e in errors.values()} == {str(source)}  # the prompt's too
    assert "not valid JSON" in str(errors[(6, None)]["error"])
    assert "(column 45)" in str(errors[(6, None)]["error"])  # where the line was cut
    assert f"{source}:7" in str(errors[(7, "claim")]["error"])
    assert "first on line 1" in str(errors[(8, "id")]["error"])
    assert "the model takes at most 8192" in str(errors[(9, "prompt")]["error"])
    assert "MAYBE" in str(errors[(10, "label")]["error"])
