"""Prompt templates: Python format fields (``{claim}``), checked before any work starts."""

from __future__ import annotations

import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from pervade.core.config import ConfigError


@dataclass(frozen=True, slots=True)
class Template:
    text: str
    source: str
    fields: tuple[str, ...]

    @classmethod
    def load(cls, path: Path, allowed: Collection[str]) -> Template:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"template {path}: cannot be read ({exc.strerror})") from None
        return cls.parse(text, str(path), allowed)

    @classmethod
    def parse(cls, text: str, source: str, allowed: Collection[str]) -> Template:
        fields: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                parsed = list(string.Formatter().parse(line))
            except ValueError as exc:
                raise ConfigError(
                    f"template {source}:{number}: {exc} (write {{{{ and }}}} for literal braces)"
                ) from None
            for _literal, name, spec, conversion in parsed:
                if name is None:
                    continue
                if name == "" or not name.isidentifier():
                    raise ConfigError(
                        f"template {source}:{number}: field {{{name}}} must be a plain name "
                        f"(known fields: {', '.join(sorted(allowed))})"
                    )
                if name not in allowed:
                    raise ConfigError(
                        f"template {source}:{number}: field {{{name}}} is not an input field "
                        f"(known fields: {', '.join(sorted(allowed))})"
                    )
                if spec or conversion:
                    raise ConfigError(
                        f"template {source}:{number}: field {{{name}}} takes no format spec"
                    )
                fields.append(name)
        if not fields:
            raise ConfigError(f"template {source}: names no input field")
        return cls(text, source, tuple(dict.fromkeys(fields)))

    def render(self, values: Mapping[str, object]) -> str:
        return self.text.format_map({name: values[name] for name in self.fields})
