"""Plots of compared runs: a real PNG, a self-contained HTML page, a clear error without
matplotlib."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

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
