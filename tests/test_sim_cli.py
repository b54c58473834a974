"""`pervade simulate`: a table on success, exit 2 with the flag named on bad input."""

from __future__ import annotations

import pytest

from pervade.cli.main import EXIT_OK, EXIT_UNUSABLE, main
from pervade.sim.cli import parse_classes, parse_models


def test_simulate_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["simulate", "--items", "2000", "--gpus", "a:4,b:2:2.5", "--churn", "rate:mtbe=600"]
    )
    out = capsys.readouterr().out.splitlines()
    assert code == EXIT_OK
    assert out[0].split()[0] == "scenario"
    assert out[1].startswith("pervade rate:mtbe=600")


def test_naive_is_named_and_slower(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--items", "2000", "--gpus", "a:4"]) == EXIT_OK
    assert main(["simulate", "--items", "2000", "--gpus", "a:4", "--naive"]) == EXIT_OK
    warm, naive = capsys.readouterr().out.splitlines()[1::2]
    assert naive.startswith("naive")
    assert float(naive.split()[1]) > float(warm.split()[1])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus", "a:x"], "--gpus 'a:x'"),
        (["--gpus", "a"], "NAME:COUNT"),
        (["--gpus", "a:0"], "at least one GPU"),
        (["--model-size", "12Q"], "--model-size"),
        (["--items", "0"], "job.items"),
        (["--churn", "trace:no-such-trace"], "no-such-trace"),
        (["--churn", "rate:mtbe=-1"], "mtbe"),
        (["--policy", "static", "--static", "0"], "--static 0"),
        (["--static", "4"], "--static describes the static policy"),
        (["--queue-wait", "60"], "--queue-wait describes the static policy"),
        (["--policy", "static", "--queue-wait", "-1"], "--queue-wait"),
        (["--compare", "pervade,bogus"], "--compare 'pervade,bogus'"),
        (["--compare", "--policy", "naive"], "--compare runs several"),
        (["--naive", "--policy", "reference"], "--naive contradicts"),
        (["--batch", "0"], "--batch"),
        (["--task-overhead", "-1"], "--task-overhead"),
        (["--grace", "-5"], "--grace"),
        (["--models", "a:16GB:0.5"], "--models 'a:16GB:0.5'"),
        (["--models", "a:16QB:0.5:10"], "--models a size"),
        (["--models", "a:1GB:x:10"], "WORK (seconds per item) and ITEMS"),
        (["--models", "a:1GB:0.5:0"], "--models 'a:1GB:0.5:0': job.items"),
        (["--models", "a:1GB:0.5:10,a:2GB:0.1:10"], "'a' is given twice"),
        (["--models", "a:1GB:0.5:10", "--items", "5"], "drop --items"),
        (["--models", "a:100GB:0.5:10", "--gpus", "g:2:1:80GB"], "job 'a'"),
        (["--plot", "out.jpg"], "--plot out.jpg"),
        (["--html", "out.png"], "--html out.png"),
    ],
)
def test_bad_input_exits_2_naming_it(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *flags]) == EXIT_UNUSABLE
    assert message in capsys.readouterr().err


def test_compare_runs_each_policy_on_the_same_pool(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["simulate", "--items", "2000", "--gpus", "a:4,b:2:2.5", "--churn", "rate:mtbe=900",
         "--compare", "--static", "3", "--queue-wait", "120", "--batch", "16"]
    )  # fmt: skip
    assert code == EXIT_OK
    rows = capsys.readouterr().out.splitlines()[1:]
    names = [" ".join(r.split()[:2]) for r in rows]
    assert names == [
        "pervade rate:mtbe=900",
        "reference rate:mtbe=900",
        "naive rate:mtbe=900",
        "static 3",
    ]
    makespan = {name.split()[0]: float(r.split()[-7]) for name, r in zip(names, rows, strict=True)}
    # naive rebuilds per task; static waits 120 s for 3 of the 6 GPUs
    assert makespan["naive"] > makespan["reference"]
    assert makespan["static"] > 120.0


def test_policy_flag_picks_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--items", "500", "--gpus", "a:2", "--policy", "reference"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("reference")


def test_models_flag_runs_several_models(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", "--models", "a:16GB:0.5:600,b:8GB:0.1:600", "--gpus", "g:2:1:20GB"])
    assert code == EXIT_OK
    assert capsys.readouterr().out.splitlines()[1].startswith("pervade")


def test_models_parse() -> None:
    a, b = parse_models("big:16GB:0.5:100000, small:2GB:0.1:50000")
    assert (a.context, a.model_bytes, a.work_seconds, a.items) == ("big", 16 * 10**9, 0.5, 100_000)
    assert (b.context, b.items) == ("small", 50_000)


def test_classes_parse_memory() -> None:
    (gpu,) = parse_classes("h100:16:2.5:80GB")
    assert (gpu.name, gpu.count, gpu.speed, gpu.memory_bytes) == ("h100", 16, 2.5, 80 * 10**9)
