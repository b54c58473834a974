"""Configuration problems stop `pervade run` with exit code 2 before any work starts."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from pervade.cli import main as cli_main
from pervade.cli.main import main
from pervade.runtime import cluster
from tests.helpers.jobs import generic_job, write_jsonl


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["run", *args, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_template_naming_an_unknown_field_names_file_line_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    template = tmp_path / "prompt.txt"
    template.write_text("Evidence: {evidence}\nClaim: {claim}\nContext: {context}\nAnswer:")
    code, text = _run(
        capsys,
        "--app",
        "fact-verification",
        "--template",
        str(template),
        "--output",
        str(tmp_path / "out.jsonl"),
    )
    assert code == 2
    assert f"{template}:3" in text and "{context}" in text and "not an input field" in text
    assert not (tmp_path / "out.jsonl").exists(), "nothing may run on a bad configuration"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("[job]\nfunction = 'x'\ninputt = 'a.jsonl'\n", "unknown key job.inputt"),
        ("[jobs]\n", "unknown section [jobs]"),
        ("[job\n", "not valid TOML"),
        ("[cluster]\nworkers = 0\n", "cluster.workers must be at least 1"),
        ("[dispatch]\nmax_in_flight = 0\n", "dispatch.max_in_flight must be a positive integer"),
        ("[model]\nbatch_size = 'big'\n", "model.batch_size must be int"),
        ("[job]\nfunction = 'no.such.module:f'\ninput = 'a.jsonl'\n", "cannot import module"),
        ("[job]\ninput = 'missing.jsonl'\n", "does not exist"),
        ("[model]\npath = 'no-such-folder'\n", "not a Hugging Face model folder"),
    ],
)
def test_bad_job_files_are_refused_with_the_offending_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, expected: str
) -> None:
    job = tmp_path / "job.toml"
    job.write_text(body)
    code, text = _run(capsys, str(job))
    assert code == 2
    assert expected in text
    assert str(job) in text  # the message names the job file


def test_a_journal_of_another_job_is_refused_and_outputs_stay_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = generic_job(tmp_path, 12)
    assert _run(capsys, str(job))[0] == 0
    results = tmp_path / "out" / "results.jsonl"
    before = results.read_bytes()
    other_input = write_jsonl(tmp_path / "other.jsonl", [{"id": "z", "n": 1}])
    code, text = _run(capsys, str(job), "--input", str(other_input))
    assert code == 2 and "belongs to another job" in text
    assert results.read_bytes() == before


def test_an_existing_output_unknown_to_the_journal_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = generic_job(tmp_path, 5)
    results = tmp_path / "out" / "results.jsonl"
    results.parent.mkdir()
    results.write_text(json.dumps({"id": "precious"}) + "\n")
    code, text = _run(capsys, str(job))
    assert code == 2 and "does not know" in text
    assert json.loads(results.read_text()) == {"id": "precious"}


def test_a_context_that_cannot_be_built_anywhere_stops_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = generic_job(tmp_path, 8)
    text = job.read_text().replace(
        'loader = "tests.helpers.workloads:process_context"\nargs = { tag = "cli" }',
        'loader = "tests.helpers.loaders:broken"\nargs = { key = "cli-broken" }',
    )
    job.write_text(text)
    code, printed = _run(capsys, str(job))
    assert code == 2
    assert "failed to build on every worker" in printed and "cannot build cli-broken" in printed
    assert (tmp_path / "out" / "results.jsonl").read_text() == ""


@pytest.mark.parametrize(("dispatch", "quantum"), [({}, 24), ({"task_quantum": 5}, 5)])
def test_a_model_job_sizes_tasks_in_whole_engine_batches_unless_told_otherwise(
    tmp_path: Path, dispatch: dict[str, int], quantum: int
) -> None:
    from pervade.cli.plan import build_plan

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    claims = tmp_path / "claims.jsonl"
    claims.write_text(json.dumps({"id": "c1", "claim": "x", "evidence": "y"}) + "\n")
    sections = {
        "job": {"input": str(claims)},
        "model": {"path": str(model), "batch_size": 24},
        "dispatch": dispatch,
    }
    plan = build_plan(sections, tmp_path, lambda _text: None)
    assert plan.job.dispatch.task_quantum == quantum


@pytest.mark.parametrize(
    ("visible", "cluster", "workers"),
    [
        ("0,1,2", {}, 3),  # one worker per GPU: a second one would hold a second model copy
        ("3", {}, 1),
        ("", {}, 2),  # no GPU: two CPU workers
        ("0,-1,2", {}, 1),  # CUDA reads up to the first negative entry
        ("0,1,2", {"workers": 5}, 5),  # the user's count wins
        ("0,1,2", {"kind": "slurm"}, 2),  # worker jobs: this machine's GPUs say nothing
        ("0,1,2", {"scheduler": "tcp://h:8786"}, 2),
    ],
)
def test_a_local_cluster_gets_one_worker_per_gpu_by_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    visible: str,
    cluster: dict[str, object],
    workers: int,
) -> None:
    from pervade.cli.jobfile import load_job_file
    from pervade.cli.plan import build_plan

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    sections = load_job_file(generic_job(tmp_path, items=2))
    sections["cluster"] = dict(cluster)  # the helper's job file names 2 workers: not here
    plan = build_plan(sections, tmp_path, lambda _text: None)
    assert plan.cluster.workers == workers


def test_a_scheduler_that_does_not_answer_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_main, "connect", partial(cluster.connect, timeout=2))
    job = generic_job(tmp_path, 4)
    code, text = _run(capsys, str(job), "--scheduler", "tcp://127.0.0.1:1")
    assert code == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in text
    assert "Traceback" not in text
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_a_rerun_exits_1_while_earlier_runs_left_item_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = generic_job(tmp_path, 6)
    write_jsonl(
        tmp_path / "items.jsonl", [{"id": f"g{n}", "n": n, "bad": n == 4} for n in range(6)]
    )
    first, text = _run(capsys, str(job))
    assert first == 1 and "1 items failed" in text, text
    code, text = _run(capsys, str(job))  # nothing left to run; the error is still there
    assert code == 1 and "1 items failed" in text, text
