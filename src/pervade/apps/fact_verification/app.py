"""The driver side of fact verification: input records, prompt, labels, accuracy.

Input lines are ``{"id", "claim", "evidence", "label"?}``; the worker side is the generic
`pervade.apps.llm:choose`, so each item travels as its rendered prompt and gold label.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pervade.apps.template import Template
from pervade.core.config import ConfigError
from pervade.runtime.inputs import RecordError

DATA = Path(__file__).parent / "data"
BUNDLED_CLAIMS = DATA / "claims.jsonl"
BUNDLED_TEMPLATE = DATA / "prompt.txt"
LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")
FIELDS = ("claim", "evidence")
BATCH_FUNCTION = "pervade.apps.llm:choose"


@dataclass(frozen=True, slots=True)
class FactVerification:
    template: Template
    labels: tuple[str, ...] = LABELS

    @classmethod
    def from_files(cls, template: Path, labels: Sequence[str] = LABELS) -> FactVerification:
        labels = tuple(labels)
        if len(labels) < 2 or len(set(labels)) != len(labels) or not all(labels):
            raise ConfigError(f"app.labels must be two or more distinct non-empty labels: {labels}")
        return cls(Template.load(template, allowed=(*FIELDS, "id")), labels)

    @property
    def options(self) -> dict[str, Any]:
        return {"choices": list(self.labels)}

    def parse(self, record: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        for name in FIELDS:
            value = record.get(name)
            if value is None:
                raise RecordError(name, "missing")
            if not isinstance(value, str) or not value.strip():
                raise RecordError(name, f"must be a non-empty string, got {value!r}")
        label = record.get("label")
        if label is not None and label not in self.labels:
            raise RecordError("label", f"{label!r} is not one of {', '.join(self.labels)}")
        prompt = self.template.render({**record, "id": record["id"]})
        return {"prompt": prompt, "label": label}, len(prompt)


@dataclass(frozen=True, slots=True)
class Accuracy:
    correct: int
    labelled: int

    @property
    def value(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


def accuracy(results: Iterable[Mapping[str, Any]]) -> Accuracy:
    correct = labelled = 0
    for result in results:
        if "correct" in result:
            labelled += 1
            correct += bool(result["correct"])
    return Accuracy(correct, labelled)
