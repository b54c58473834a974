"""Turn job-file sections (with command-line overrides) into a runnable plan."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pervade.apps.fact_verification.app import (
    BATCH_FUNCTION,
    BUNDLED_CLAIMS,
    BUNDLED_TEMPLATE,
    LABELS,
    FactVerification,
)
from pervade.cli.jobfile import (
    ClusterPlan,
    generic_parser,
    prompt_parser,
    resolve_path,
    typed,
)
from pervade.core.config import ConfigError, DispatchConfig
from pervade.core.context import ContextSpec
from pervade.engines.bundled import BundledModelError, cache_dir, resolve_model
from pervade.runtime.artifacts import artifact
from pervade.runtime.batch import BatchConfig
from pervade.runtime.inputs import Parser
from pervade.runtime.job import Job
from pervade.runtime.output import errors_path_for
from pervade.traces import load_churn
from pervade.worker.gpus import node_gpus
from pervade.worker.imports import ImportPathError, resolve_import

APPS = ("fact-verification",)
DEFAULT_MODEL = "bundled:smollm2-135m-instruct"
ENGINE_LOADER = "pervade.engines.hf:load_engine"


@dataclass(frozen=True, slots=True)
class Plan:
    job: Job
    input: Path
    parse: Parser
    output: Path
    errors: Path
    journal: Path
    cluster: ClusterPlan
    app: FactVerification | None


def build_plan(
    sections: dict[str, dict[str, Any]], base: Path, status: Callable[[str], None]
) -> Plan:
    job_section = sections.get("job", {})
    function = typed(job_section, "function", str, None, "job")
    app_name = typed(job_section, "app", str, None if function else APPS[0], "job")
    if app_name is not None and function is not None:
        raise ConfigError("job.app and job.function exclude each other: name one")
    if app_name is not None and app_name not in APPS:
        raise ConfigError(f"job.app {app_name!r} is unknown (known: {', '.join(APPS)})")
    cluster = _cluster(sections.get("cluster", {}))
    dispatch = _dispatch(sections.get("dispatch", {}))

    app: FactVerification | None = None
    if app_name == "fact-verification":
        app_section = sections.get("app", {})
        template = _path(app_section, "template", base, BUNDLED_TEMPLATE, "app")
        labels = app_section.get("labels", list(LABELS))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise ConfigError(f"app.labels must be a list of strings, got {labels!r}")
        app = FactVerification.from_files(template, labels)
        function, parse, options = BATCH_FUNCTION, app.parse, app.options
        default_input: Path | None = BUNDLED_CLAIMS
        name = typed(job_section, "name", str, "fact_verification", "job")
    else:
        assert function is not None
        options = sections.get("options", {})
        parse = prompt_parser if function.startswith("pervade.apps.llm:") else generic_parser
        default_input = None
        name = typed(job_section, "name", str, "job", "job")
    _importable(function, "job.function")

    input_path = _path(job_section, "input", base, default_input, "job")
    if not input_path.is_file():
        raise ConfigError(f"job.input {input_path} does not exist or is not a file")
    output = _path(job_section, "output", base, Path("results") / f"{name}.jsonl", "job")
    errors = _path(job_section, "errors", base, errors_path_for(output), "job")
    journal = _path(
        job_section, "journal", base, output.with_name(f"{output.stem}.journal.sqlite"), "job"
    )
    if len({output.resolve(), errors.resolve(), journal.resolve(), input_path.resolve()}) < 4:
        raise ConfigError("job.input, job.output, job.errors and job.journal must all differ")

    context = _context(sections, base, status)
    if context.loader == ENGINE_LOADER and "task_quantum" not in sections.get("dispatch", {}):
        # Tasks in whole engine batches (see DispatchConfig.task_quantum).
        dispatch = dataclasses.replace(dispatch, task_quantum=context.args["batch_size"])
    job = Job(context, function, options, dispatch, name)
    return Plan(job, input_path, parse, output, errors, journal, cluster, app)


def _context(
    sections: dict[str, dict[str, Any]], base: Path, status: Callable[[str], None]
) -> ContextSpec:
    digests = cache_dir() / "digests.json"
    if "context" in sections:
        if "model" in sections:
            raise ConfigError("[context] and [model] exclude each other: a [model] is a context")
        section = sections["context"]
        loader = typed(section, "loader", str, None, "context")
        if loader is None:
            raise ConfigError(
                "context.loader is required (an import path 'package.module:function')"
            )
        _importable(loader, "context.loader")
        args = section.get("args", {})
        paths = section.get("artifacts", {})
        if not isinstance(args, dict) or not isinstance(paths, dict):
            raise ConfigError("context.args and context.artifacts must be tables")
        artifacts = []
        for key, value in sorted(paths.items()):
            path = resolve_path(value, base, f"context.artifacts.{key}")
            if not path.exists():
                raise ConfigError(f"context.artifacts.{key}: {path} does not exist")
            artifacts.append(artifact(key, path, digests))
        label = typed(section, "label", str, "", "context")
        return ContextSpec(loader, args, tuple(artifacts), label)
    section = sections.get("model", {})
    spec = typed(section, "path", str, DEFAULT_MODEL, "model")
    if not spec.startswith("bundled:"):
        spec = str(resolve_path(spec, base, "model.path"))
    try:
        if spec.startswith("bundled:"):
            status(f"Preparing the bundled model {spec} (converted once into the cache)")
        folder = resolve_model(spec)
    except BundledModelError as exc:
        raise ConfigError(f"model.path: {exc}") from None
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model.path {folder} is not a Hugging Face model folder (no config.json)"
        )
    engine_args: dict[str, Any] = {
        "dtype": typed(section, "dtype", str, "auto", "model"),
        "device": typed(section, "device", str, "auto", "model"),
        "batch_size": typed(section, "batch_size", int, 16, "model"),
        "max_batch_tokens": typed(section, "max_batch_tokens", int, 16384, "model"),
    }
    if engine_args["dtype"] not in ("auto", "bfloat16", "float16", "float32"):
        raise ConfigError(
            f"model.dtype must be auto, bfloat16, float16 or float32: {engine_args['dtype']!r}"
        )
    for key in ("batch_size", "max_batch_tokens"):
        if engine_args[key] < 1:
            raise ConfigError(f"model.{key} must be positive, got {engine_args[key]}")
    threads = typed(section, "threads", int, None, "model")
    if threads is not None:
        engine_args["threads"] = threads
    label = spec.removeprefix("bundled:") if spec.startswith("bundled:") else folder.name
    return ContextSpec(ENGINE_LOADER, engine_args, (artifact("model", folder, digests),), label)


def _path(section: dict[str, Any], key: str, base: Path, default: Path | None, where: str) -> Path:
    if key in section:
        return resolve_path(section[key], base, f"{where}.{key}")
    if default is None:
        raise ConfigError(f"{where}.{key} is required")
    return default


# Local workers when the job file and the command line name none, on a machine without GPUs.
CPU_WORKERS = 2


def _cluster(section: dict[str, Any]) -> ClusterPlan:
    workers = typed(section, "workers", int, None, "cluster")
    if workers is None:
        # A local cluster gets one worker per GPU of this machine: a second worker on a GPU
        # would hold a second copy of the model there. Worker jobs are counted by the user.
        local = section.get("kind", "local") == "local" and not section.get("scheduler")
        workers = (node_gpus() if local else 0) or CPU_WORKERS
    if workers < 1:
        raise ConfigError(f"cluster.workers must be at least 1, got {workers}")
    scheduler = typed(section, "scheduler", str, None, "cluster") or None
    churn_text = typed(section, "churn", str, None, "cluster")
    churn = load_churn(churn_text, workers) if churn_text else None
    if churn is not None and scheduler is not None:
        raise ConfigError("cluster.churn drives a local cluster only; drop it or the scheduler")
    grace = typed(section, "grace", float, 60.0, "cluster")
    if grace <= 0:
        raise ConfigError(f"cluster.grace must be positive seconds, got {grace}")
    batch = _batch(section, workers, grace)
    if batch is not None and (scheduler is not None or churn is not None):
        raise ConfigError(
            "cluster.kind = 'slurm' brings its own scheduler and workers: "
            "drop cluster.scheduler and cluster.churn"
        )
    dashboard = bool(section.get("dashboard", False))
    return ClusterPlan(workers, scheduler, dashboard, churn, grace, batch)


BATCH_KEYS = ("partition", "walltime", "cores", "memory", "gpus", "sbatch")
CLUSTER_KINDS = ("local", "slurm")


def _batch(section: dict[str, Any], workers: int, grace: float) -> BatchConfig | None:
    """Worker jobs of Slurm (cluster.kind = "slurm"), or None for the local cluster."""
    kind = typed(section, "kind", str, "local", "cluster")
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"cluster.kind must be one of {', '.join(CLUSTER_KINDS)}, got {kind!r}")
    if kind == "local":
        given = [key for key in BATCH_KEYS if key in section]
        if given:
            raise ConfigError(
                f"cluster.{given[0]} applies to worker jobs: set cluster.kind = 'slurm'"
            )
        return None
    sbatch = section.get("sbatch", [])
    if isinstance(sbatch, str):
        sbatch = [sbatch]
    if not isinstance(sbatch, list) or not all(isinstance(x, str) for x in sbatch):
        raise ConfigError(f"cluster.sbatch must be a list of sbatch options, got {sbatch!r}")
    memory = section.get("memory", "4GB")
    if isinstance(memory, int) and not isinstance(memory, bool):
        memory = f"{memory}B"
    if not isinstance(memory, str):
        raise ConfigError(f"cluster.memory must be an amount like '16GB', got {memory!r}")
    return BatchConfig(
        jobs=workers,
        partition=typed(section, "partition", str, None, "cluster"),
        walltime=typed(section, "walltime", str, None, "cluster"),
        cores=typed(section, "cores", int, 1, "cluster"),
        memory=memory,
        gpus=typed(section, "gpus", int, 0, "cluster"),
        directives=tuple(sbatch),
        grace_seconds=grace,
    )


_DISPATCH_FLAGS = frozenset({"adaptive", "speculate", "prefetch"})
_DISPATCH_SECONDS = frozenset({"task_overhead"})


def _dispatch(section: dict[str, Any]) -> DispatchConfig:
    known = {f.name for f in dataclasses.fields(DispatchConfig)}
    for key, value in section.items():
        if key not in known:
            raise ConfigError(
                f"dispatch.{key}: unknown setting (known: {', '.join(sorted(known))})"
            )
        if key in _DISPATCH_FLAGS:
            if not isinstance(value, bool):
                raise ConfigError(f"dispatch.{key} must be true or false, got {value!r}")
        elif key in _DISPATCH_SECONDS:
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"dispatch.{key} must be a number of seconds, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"dispatch.{key} must be an integer, got {value!r}")
    return DispatchConfig(**section)


def _importable(path: str, key: str) -> None:
    try:
        resolve_import(path)
    except ImportPathError as exc:
        raise ConfigError(f"{key}: {exc}") from None
