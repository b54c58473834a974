"""Job files (TOML) and command-line flags, validated into a plan before any work starts."""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pervade.core.availability import Churn
from pervade.core.config import ConfigError, DispatchConfig
from pervade.runtime.batch import BatchConfig
from pervade.runtime.inputs import Parser, RecordError

_KNOWN: dict[str, set[str]] = {
    "job": {"name", "app", "function", "input", "output", "errors", "journal"},
    "model": {"path", "dtype", "device", "batch_size", "max_batch_tokens", "threads"},
    "app": {"template", "labels"},
    "context": {"loader", "args", "artifacts", "label"},
    "options": set(),  # free-form: passed to the batch function
    "cluster": {"workers", "scheduler", "dashboard", "churn", "grace", "kind"}
    | {"partition", "walltime", "cores", "memory", "gpus", "sbatch"},  # worker jobs
    "dispatch": {f.name for f in fields(DispatchConfig)},
}
PACKAGE_PREFIX = "pervade:"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def load_job_file(path: Path) -> dict[str, dict[str, Any]]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"job file {path}: cannot be read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path}: not valid TOML: {exc}") from None
    return check_sections(raw, str(path))


def check_sections(raw: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    checked: dict[str, dict[str, Any]] = {}
    for section, body in raw.items():
        if section not in _KNOWN:
            raise ConfigError(
                f"{source}: unknown section [{section}] (known: {', '.join(sorted(_KNOWN))})"
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        allowed = _KNOWN[section]
        if allowed:
            unknown = sorted(set(body) - allowed)
            if unknown:
                raise ConfigError(
                    f"{source}: unknown key {section}.{unknown[0]} "
                    f"(known in [{section}]: {', '.join(sorted(allowed))})"
                )
        checked[section] = dict(body)
    return checked


def resolve_path(value: Any, base: Path, key: str) -> Path:
    """A path from a job file: relative to the job file's folder, or inside pervade's
    package with the ``pervade:`` prefix (where the bundled example data lives)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key} must be a path, got {value!r}")
    if value.startswith(PACKAGE_PREFIX):
        return PACKAGE_ROOT / value[len(PACKAGE_PREFIX) :]
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def typed(section: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = section.get(key, default)
    if value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {value!r}")
    return value


def generic_parser(record: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Records of a generic job: every field but the id goes to the batch function."""
    data = {k: v for k, v in record.items() if k != "id"}
    if not data:
        raise RecordError(None, "has no fields besides its id")
    return data, sum(len(str(v)) for v in data.values())


def prompt_parser(record: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Records for the LLM batch functions: a non-empty ``prompt`` string is required."""
    prompt = record.get("prompt")
    if prompt is None:
        raise RecordError("prompt", "missing")
    if not isinstance(prompt, str) or not prompt:
        raise RecordError("prompt", f"must be a non-empty string, got {prompt!r}")
    return generic_parser(record)


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    workers: int
    scheduler: str | None
    dashboard: bool
    churn: Churn | None = None
    grace_seconds: float = 60.0
    batch: BatchConfig | None = None  # worker jobs of a batch system instead of local workers


ParserFactory = Callable[[], Parser]
