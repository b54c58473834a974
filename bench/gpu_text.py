"""Words and tokens of bench/gpu.py's sections: a word-level tokenizer, batches in arrival
order, and how far greedy tokens agree with a reference."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import torch

from pervade.engines.hf import HFEngine


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]+", text)


def word_tokenizer(vocab: list[str]) -> Any:
    """One token a word (and a run of punctuation); id 0 pads, id 1 ends."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = {"<pad>": 0, "<eos>": 1} | {w: i + 2 for i, w in enumerate(vocab)}
    raw = Tokenizer(models.WordLevel(ids, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast: Any = PreTrainedTokenizerFast
    return fast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")


def arrivals(engine: HFEngine) -> Callable[[list[int], list[int]], Iterator[list[int]]]:
    """Batches of the engine's size in arrival order (its token limit binds nowhere here)."""
    size = engine.batch_size
    return lambda indices, _lengths: (indices[i : i + size] for i in range(0, len(indices), size))


def agreement(tokens: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean share of a row's tokens equal to the reference's up to the first difference."""
    n = min(tokens.shape[1], reference.shape[1])
    same = (tokens[:, :n] == reference[:, :n]).cumprod(dim=1).sum(dim=1)
    return float(same.float().mean()) / reference.shape[1]
