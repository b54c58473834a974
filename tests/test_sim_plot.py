"""Plots of compared runs: a real PNG, a self-contained HTML page, a clear error without
matplotlib."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from pervade.cli.main import EXIT_OK, EXIT_UNUSABLE, main
from pervade.core.config import ConfigError
from pervade.sim import GpuClass, Job, Pool, Scenario, plot, simulate

PNG = b"\x89PNG\r\n\x1a\n"


def rows() -> list[tuple[str, object]]:
    pool = Pool((GpuClass("g", 4),))
    job = Job(1000, 1.0, 10**9)
    return [
        (policy, simulate(Scenario(job, pool, policy=policy, sample_seconds=20.0)))
        for policy in ("pervade", "naive")
    ]


def test_png_is_an_image_of_every_run() -> None:
    data = plot.png(rows(), "two runs")  # type: ignore[arg-type]
    assert data.startswith(PNG)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (900, 800)


def test_html_holds_the_table_and_the_png_inline() -> None:
    runs = rows()
    page = plot.page(runs, "<two> runs")  # type: ignore[arg-type]
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "&lt;two&gt; runs" in page  # escaped
    assert "makespan s" in page and "pervade" in page and "naive" in page
    (encoded,) = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert base64.b64decode(encoded).startswith(PNG)
    assert "src='http" not in page and 'src="http' not in page  # nothing fetched


def test_cli_writes_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, html = tmp_path / "runs.png", tmp_path / "runs.html"
    code = main(
        ["simulate", "--items", "1000", "--gpus", "g:4", "--compare", "pervade,naive",
         "--plot", str(png), "--html", str(html)]
    )  # fmt: skip
    assert code == EXIT_OK
    assert png.read_bytes().startswith(PNG)
    assert "data:image/png;base64," in html.read_text(encoding="utf-8")
    out = capsys.readouterr().out
    assert str(png) in out and str(html) in out


def test_without_matplotlib_the_error_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ConfigError, match=r"pervade\[sim\]"):
        plot.require()
    out = tmp_path / "runs.png"
    assert main(["simulate", "--items", "100", "--gpus", "g:1", "--plot", str(out)]) == (
        EXIT_UNUSABLE
    )
    assert "matplotlib" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_far_longer_than_the_rest_does_not_squash_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from matplotlib.figure import Figure

    drawn: list[Figure] = []

    class Kept(Figure):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            drawn.append(self)

    monkeypatch.setattr(plot, "_figure_class", lambda: Kept)
    pool, job = Pool((GpuClass("g", 4),)), Job(400, 1.0, 10**9)
    fast = simulate(Scenario(job, pool, sample_seconds=20.0))
    slow = simulate(Scenario(job, pool, policy="naive", batch=1, sample_seconds=20.0))
    assert slow.makespan > 4 * fast.makespan
    plot.png([("pervade", fast), ("naive", slow)])
    (figure,) = drawn
    # the axis ends a little after pervade (in minutes); naive runs off the edge
    assert figure.axes[-1].get_xlim()[1] == pytest.approx(1.15 * fast.makespan / 60.0)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels[1] == f"naive ({slow.makespan / 60.0:.1f} min)"
