"""The protocol every engine implements, and its result types."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pervade.core.items import ItemError


@dataclass(frozen=True, slots=True)
class Choice:
    """The answer picked for one prompt and the log-likelihood of every candidate."""

    best: str
    scores: Mapping[str, float]
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Generation:
    text: str
    prompt_tokens: int
    new_tokens: int


class Engine(Protocol):
    @property
    def max_length(self) -> int:
        """The most tokens (prompt and answer together) the model takes."""
        ...

    def count_tokens(self, prompts: Sequence[str]) -> list[int]: ...

    def choose(self, prompts: Sequence[str], choices: Sequence[str]) -> list[Choice | ItemError]:
        """Score every choice as a continuation of every prompt, without generating."""
        ...

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation | ItemError]: ...
