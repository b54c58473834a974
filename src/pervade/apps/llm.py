"""Batch functions over an LLM engine context. These run on workers."""

from __future__ import annotations

from collections.abc import Sequence

from pervade.core.items import Item, ItemError, TaskOutputs
from pervade.engines.protocol import Engine


def choose(engine: Engine, items: Sequence[Item], choices: Sequence[str]) -> TaskOutputs:
    """Pick one of `choices` for each item's ``prompt`` by log-likelihood.

    An item may carry a gold ``label``; the result then says whether the verdict is correct.
    """
    prompts = [str(item.data["prompt"]) for item in items]
    picked = engine.choose(prompts, choices)
    values: list[object] = []
    tokens = 0
    for item, outcome in zip(items, picked, strict=True):
        if isinstance(outcome, ItemError):
            values.append(outcome)
            continue
        tokens += outcome.prompt_tokens
        value: dict[str, object] = {
            "verdict": outcome.best,
            "scores": {c: round(s, 4) for c, s in outcome.scores.items()},
        }
        label = item.data.get("label")
        if label is not None:
            value["label"] = label
            value["correct"] = label == outcome.best
        values.append(value)
    return TaskOutputs(values, tokens)


def generate(
    engine: Engine,
    items: Sequence[Item],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> TaskOutputs:
    """Generate a completion for each item's ``prompt``."""
    prompts = [str(item.data["prompt"]) for item in items]
    made = engine.generate(prompts, max_new_tokens, temperature, top_p, seed)
    values: list[object] = []
    tokens = 0
    for outcome in made:
        if isinstance(outcome, ItemError):
            values.append(outcome)
            continue
        tokens += outcome.prompt_tokens + outcome.new_tokens
        values.append({"text": outcome.text, "new_tokens": outcome.new_tokens})
    return TaskOutputs(values, tokens)
