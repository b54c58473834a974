"""Two-pass choice scoring against the engine's one-pass scoring on small random Llamas."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from pervade.engines import Choice
from pervade.engines.fast_choose import TwoPassScorer
from pervade.engines.fast_generate import StaticCache
from pervade.engines.hf import HFEngine
from tests.test_fast_generate import PAD, one_thread, tiny_llama, word_tokenizer

__all__ = ["one_thread"]  # the module fixture, used here too

PROMPTS = [[5, 9, 17, 3], [40], [7, 7, 8, 30, 31, 2, 90, 11, 12], [66, 12], [3, 4, 5, 6, 7, 8]]


def one_pass(model: Any, prompts: list[list[int]], choices: list[list[int]]) -> torch.Tensor:
    engine = HFEngine(model, word_tokenizer(), torch.device("cpu"))
    assert engine.scorer is None  # on the CPU the engine scores in one pass
    return torch.tensor(engine._score_batch(prompts, choices))


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize(
    "choices",
    [
        [[10], [20], [30]],  # single tokens: the prompt pass alone
        [[10, 11, 12], [20], [30, 31]],
        [[44, 45], [44, 46], [47, 48, 49, 50]],  # shared first tokens
    ],
)
def test_two_passes_score_as_one_pass(kv_heads: int, choices: list[list[int]]) -> None:
    model = tiny_llama(kv_heads=kv_heads, seed=kv_heads)
    expected = one_pass(model, PROMPTS, choices)
    got = TwoPassScorer(model, PAD).score(PROMPTS, choices)
    assert got is not None
    assert torch.allclose(torch.tensor(got), expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.5  # scores far apart: a slip in masks or positions shows


def test_engine_choose_with_and_without_two_passes() -> None:
    model = tiny_llama(seed=6)
    engine = HFEngine(model, word_tokenizer(), torch.device("cpu"), batch_size=2)
    prompts = ["w5 w9 w17", "w40", "w7 w8 w30 w31 w2 w90", "w66 w12 w13 w14"]
    labels = ["w10 w11", "w20", "w30 w31 w32"]
    slow = engine.choose(prompts, labels)
    engine.scorer = TwoPassScorer(model, PAD)
    quick = engine.choose(prompts, labels)
    for a, b in zip(slow, quick, strict=True):
        assert isinstance(a, Choice) and isinstance(b, Choice)
        assert a.best == b.best
        for label in labels:
            assert a.scores[label] == pytest.approx(b.scores[label], abs=1e-4)


def test_a_failure_falls_back_to_one_pass_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_llama()
    scorer = TwoPassScorer(model, PAD)

    def broken(self: StaticCache, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(StaticCache, "update", broken)
    with caplog.at_level(logging.WARNING, logger="pervade.engines.fast_choose"):
        assert scorer.score(PROMPTS, [[1], [2]]) is None
        assert scorer.score(PROMPTS, [[1], [2]]) is None
    assert caplog.text.count("boom") == 1 and not scorer.enabled

    def oom(self: StaticCache, *args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(StaticCache, "update", oom)
    with pytest.raises(torch.OutOfMemoryError):
        TwoPassScorer(model, PAD).score(PROMPTS, [[1], [2]])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_passes_on_cuda() -> None:
    model = tiny_llama("cuda")
    choices = [[10, 11, 12], [20], [30, 31]]
    expected = one_pass(model.cpu(), PROMPTS, choices)
    got = TwoPassScorer(model.cuda(), PAD).score(PROMPTS, choices)
    assert got is not None
    assert torch.allclose(torch.tensor(got), expected, atol=1e-3, rtol=0)
