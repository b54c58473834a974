"""`pervade simulate`: a table on success, exit 2 with the flag named on bad input."""

from __future__ import annotations

import pytest

from pervade.cli.main import EXIT_OK, EXIT_UNUSABLE, main
from pervade.sim.cli import parse_classes


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
    ],
)
def test_bad_input_exits_2_naming_it(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *flags]) == EXIT_UNUSABLE
    assert message in capsys.readouterr().err


def test_classes_parse_memory() -> None:
    (gpu,) = parse_classes("h100:16:2.5:80GB")
    assert (gpu.name, gpu.count, gpu.speed, gpu.memory_bytes) == ("h100", 16, 2.5, 80 * 10**9)
