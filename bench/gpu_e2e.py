"""The `e2e` section of bench/gpu.py: the fact-verification job end to end, three ways on the
same card in one call.

N synthetic claims (bench/gen_claims.py, seed 0: the bundled generator's length spread) are
rendered with the bundled template and scored against the bundled labels (`choose`) by a
random-weight model of the run's shape (bench/tiers.py's folder on local disk: bf16
safetensors shards) with a word-level tokenizer of the claims' words (one word, one token).
- static ideal: this process loads the model once (pervade's loader, from the page cache)
  and runs every item through `HFEngine.choose` in length-sorted batches; wall time includes
  the load.
- pervade: the job API (`run_job`, as `pervade run JOB.toml`) on a local Dask cluster of 1
  worker process per GPU (1, and 2 where 2 GPUs are visible), with empty DISK and HOST caches
  at the start: the wall time includes staging the model from its origin folder and loading
  it. Workers have imported torch and transformers before the clock starts (the forkserver).
  Each worker claims a GPU of its own (`pervade.worker.gpus`); the table says which.
  `--staged`: the node's HOST cache holds the model before the run; `--dispatch k=v,...`:
  the job's [dispatch] settings (e.g. min_task_items=512).
- naive: plain Dask tasks (client.submit) on the same cluster of 1 worker, tasks of
  pervade's mean task size, each loading the model itself and dropping it after, once per
  `--naive` loader: pervade's `fast` one and `from_pretrained`, both from a warm page cache
  (kinder to naive than batch jobs that start a process each and read shared storage). At
  most `--naive-tasks` tasks are timed; the rest of a full run is extrapolated at the
  median task's seconds, and the table says so.
- pervade under churn (`--churn SPEC`, the `pervade run --churn` syntax): the churn harness
  evicts and replaces worker processes; goodput is the run's own account.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gpu_e2e_report import Way, report
from pervade.apps.fact_verification.app import BUNDLED_TEMPLATE, LABELS, FactVerification
from pervade.engines.device import pick_device, pick_dtype
from pervade.engines.hf import HFEngine, load_engine

_START = time.perf_counter()


def progress(text: str) -> None:
    print(f"[e2e {time.perf_counter() - _START:6.1f} s] {text}", flush=True)


# -- run in the worker processes ---------------------------------------------------------


def naive_task(
    items: list[tuple[str, str]], model: str, choices: list[str], loader: str, **engine: Any
) -> tuple[list[tuple[str, str, int]], float, float]:
    """A batch job without context reuse: load the model (pervade's `fast` loader, or
    transformers' `from_pretrained`), score the task's prompts, drop the model. Each item's
    (id, verdict, prompt tokens), the load's seconds and the task's."""
    began = time.perf_counter()
    loaded = load_engine(model, **engine) if loader == "fast" else plain_engine(model, **engine)
    try:
        picked = loaded.choose([prompt for _, prompt in items], choices)
        out = [
            (item_id, str(getattr(c, "best", "")), int(getattr(c, "prompt_tokens", 0)))
            for (item_id, _), c in zip(items, picked, strict=True)
        ]
        return out, loaded.load_seconds, time.perf_counter() - began
    finally:
        del loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def plain_engine(model: str, batch_size: int, max_batch_tokens: int) -> HFEngine:
    """pervade's engine around a model that `from_pretrained` loaded, as a batch job would."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # as load_engine's `quiet`
    hf_logging.set_verbosity_error()
    began = time.perf_counter()
    device = pick_device("auto")
    where = str(device) if device.type == "cuda" else None
    dtype = pick_dtype("auto", device)
    loaded = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, device_map=where).eval()
    tokenizer = AutoTokenizer.from_pretrained(model)
    engine = HFEngine(loaded, tokenizer, device, batch_size, max_batch_tokens)
    engine.load_seconds = time.perf_counter() - began
    return engine


def visible_devices() -> str | None:
    """The GPUs a worker process sees. (By reference: `os.environ.get` itself would be
    pickled with the driver's environment and read that.)"""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def add_arguments(parser: Any) -> None:
    """bench/gpu.py's options for this section."""
    parser.add_argument("--items", type=int, default=50_000, help="e2e: claims (--tiny: 300)")
    parser.add_argument("--batch", type=int, default=128, help="e2e: the engine's batch rows")
    parser.add_argument("--naive-tasks", type=int, default=8, help="e2e: naive tasks timed")
    parser.add_argument("--workers", default="", help="e2e: pools, e.g. 1,2 (default: per GPU)")
    parser.add_argument("--churn", help="e2e: also run pervade under this churn spec")
    parser.add_argument(
        "--ways",
        default="static,pervade,naive",
        help="e2e: which of static,pervade,naive run (--churn adds pervade under churn)",
    )
    parser.add_argument(
        "--naive", default="fast,from_pretrained", help="e2e: naive runs by model loader"
    )
    parser.add_argument(
        "--dispatch", default="", help="e2e: the job's [dispatch], e.g. min_task_items=512"
    )
    parser.add_argument(
        "--staged", action="store_true", help="e2e: pervade's node holds the model in HOST"
    )


# -- the section -------------------------------------------------------------------------


def claims(count: int) -> tuple[list[dict[str, str]], list[str]]:
    from gen_claims import make_claim

    rng = random.Random(0)
    records = [make_claim(rng, i) for i in range(count)]
    app = FactVerification.from_files(BUNDLED_TEMPLATE)
    return records, [str(app.parse(r)[0]["prompt"]) for r in records]


def model_folder(bench: Any, shape: str, tokenizer: Any) -> Path:
    """bench/tiers.py's random model of `shape`, with this run's tokenizer: its files are
    replaced only where they differ (an unchanged folder keeps its cached digest)."""
    import tiers

    if bench.tiny:  # bench/gpu.py's tiny config (as the load section makes it)
        tiers.SHAPES.setdefault("tiny", bench.tiny_config | {"vocab_size": 8192})
    bench.args.model_dir.mkdir(parents=True, exist_ok=True)
    folder: Path = tiers.make_model(shape, bench.args.model_dir, bench.device)
    with tempfile.TemporaryDirectory(dir=bench.args.model_dir) as scratch:
        tokenizer.save_pretrained(scratch)
        for made in Path(scratch).iterdir():
            target = folder / made.name
            if not target.is_file() or target.read_bytes() != made.read_bytes():
                shutil.copyfile(made, target)
    return folder


def static(bench: Any, folder: Path, prompts: list[str], ids: list[str], batch: int) -> Way:
    began = time.perf_counter()
    engine = load_engine(str(folder), batch_size=batch, max_batch_tokens=batch * 512)
    way = Way("static ideal: one process, one load", 1, len(prompts), 0.0, 0)
    chunk = 16384  # HFEngine.choose sorts each call's prompts by length
    for start in range(0, len(prompts), chunk):
        picked = engine.choose(prompts[start : start + chunk], list(LABELS))
        for item_id, choice in zip(ids[start : start + chunk], picked, strict=True):
            if hasattr(choice, "best"):
                way.verdicts[item_id] = choice.best
                way.tokens += choice.prompt_tokens
    bench.sync()
    way.wall = time.perf_counter() - began
    way.notes.append(f"load {engine.load_seconds:.2f} s (page cache)")
    del engine
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the workers' room
    return way


class Runner:
    """Local clusters for the pervade and naive runs, with fresh worker caches each time."""

    def __init__(self, bench: Any, folder: Path, source: Path, batch: int) -> None:
        self.staged = bench.args.staged
        self.digest: tuple[str, dict[str, str]] | None = None
        self.dispatch = {
            key: value == "true" if value in ("true", "false") else int(value)
            for key, _, value in (p.partition("=") for p in bench.args.dispatch.split(",") if p)
        }
        self.bench = bench
        self.folder = folder
        self.source = source
        self.batch = batch
        self.work = Path(tempfile.mkdtemp(prefix="pervade-e2e-", dir=bench.args.model_dir))
        self.shm = Path(tempfile.mkdtemp(prefix="pervade-e2e-", dir=bench.args.host_dir))
        # Read by the forkserver at its start, and so by every worker process it forks.
        os.environ["PERVADE_ARTIFACT_CACHE"] = str(self.work / "disk")
        os.environ["PERVADE_HOST_CACHE"] = str(self.shm / "host")
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "error"

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        shutil.rmtree(self.shm, ignore_errors=True)

    @contextlib.contextmanager
    def cluster(self, workers: int, churn: Any = None, stage: bool = False) -> Any:
        from pervade.runtime.churn import ChurnHarness
        from pervade.runtime.cluster import connect

        for cache in (self.work / "disk", self.shm / "host"):
            shutil.rmtree(cache, ignore_errors=True)  # every run starts with empty caches
        if stage:  # the node holds the model already (a HOST entry, as gpu_load seeds one)
            import gpu_host_entry
            from pervade.core.context import Artifact

            if self.digest is None:
                self.digest = gpu_host_entry.digest_folder(self.folder)
            model = Artifact("model", str(self.folder.resolve()), self.digest[0])
            gpu_host_entry.seed_host(self.shm / "host", model, self.folder, self.digest[1])
        preload = ["pervade.engines.hf", "pervade.apps.llm", "gpu_e2e"]
        began = time.perf_counter()
        with contextlib.ExitStack() as stack:
            client = stack.enter_context(connect(None, workers, preload=preload))
            initial = workers
            if churn is not None:
                harness = stack.enter_context(ChurnHarness(client.cluster, client, churn, workers))
                initial = harness.trace.initial if harness.trace is not None else workers
            client.wait_for_workers(max(1, initial))
            progress(f"cluster of {workers} worker(s) up in {time.perf_counter() - began:.1f} s")
            yield client

    def pervade(self, workers: int, churn: Any = None, label: str = "") -> Way:
        from pervade.cli.plan import build_plan
        from pervade.runtime.session import run_job

        run = Path(tempfile.mkdtemp(prefix="run-", dir=self.work))
        sections = {
            "job": {"app": "fact-verification", "input": str(self.source)},
            "model": {
                "path": str(self.folder),
                "batch_size": self.batch,
                "max_batch_tokens": self.batch * 512,
            },
            "cluster": {"workers": workers},
            "dispatch": dict(self.dispatch),
        }
        sections["job"]["output"] = str(run / "out.jsonl")
        plan = build_plan(sections, run, lambda _text: None)  # the model's digest: not timed
        with self.cluster(workers, churn, stage=self.staged) as client:
            began = time.perf_counter()
            stats = run_job(
                client, plan.job, plan.input, plan.parse, plan.output, plan.errors, plan.journal
            )
            wall = time.perf_counter() - began
            gpus = sorted(str(g) for g in client.run(visible_devices).values())
        results = [json.loads(line) for line in plan.output.read_text().splitlines()]
        name = f"pervade{label}, {workers} worker(s)"
        if self.staged:
            name += ", model staged in HOST"
        way = Way(name, workers, len(results), wall, stats.tokens, stats=stats)
        way.verdicts = {r["id"]: r["verdict"] for r in results}
        if len(way.verdicts) != len(results):  # the journal accepts each item once: say so
            way.notes.append(f"{len(results) - len(way.verdicts)} DUPLICATE results")
        loads = ", ".join(f"{t} {n}" for t, n in sorted(stats.load_tiers.items()))
        way.notes.append(
            f"{stats.tasks} tasks, {stats.context_loads} context load(s) ({loads};"
            f" {stats.load_seconds:.1f} s summed), {stats.infer_seconds:.1f} s in batch"
            f" functions, goodput {stats.goodput.share:.0%}; workers' GPUs {'/'.join(gpus)}"
        )
        if churn is not None:
            way.notes.append(
                f"evictions {stats.hard_evictions} hard / {stats.graceful_evictions} graceful,"
                f" {stats.rerun_items} items redone"
            )
        shutil.rmtree(run, ignore_errors=True)
        progress(f"{name}: {wall:.1f} s, {len(results)} items")
        return way

    def naive(self, items: list[tuple[str, str]], task_items: int, loader: str) -> Way:
        """Plain Dask tasks of `task_items` items on 1 worker, a model load in each."""
        options = {"model": str(self.folder), "choices": list(LABELS), "loader": loader}
        options |= {"batch_size": self.batch, "max_batch_tokens": self.batch * 512}
        chunks = [items[i : i + task_items] for i in range(0, len(items), task_items)]
        with self.cluster(1) as client:
            began = time.perf_counter()
            futures = [client.submit(naive_task, c, pure=False, **options) for c in chunks]
            done = client.gather(futures)
            wall = time.perf_counter() - began
        name = f"naive: a model load per task ({loader})"
        way = Way(name, 1, sum(len(c) for c in chunks), wall, 0)
        way.verdicts = {item_id: verdict for out, _, _ in done for item_id, verdict, _ in out}
        way.tokens = sum(n for out, _, _ in done for _, _, n in out)
        way.task_seconds = [seconds for _, _, seconds in done]
        loads = [seconds for _, seconds, _ in done]
        mean = sum(loads) / len(loads)
        way.notes.append(f"{len(loads)} loads of {mean:.2f} s mean (page cache), in tasks of")
        way.notes[-1] += f" {statistics.median(way.task_seconds):.2f} s median"
        progress(f"{name}: {wall:.1f} s, {way.items} items")
        return way


def section(bench: Any, tokenizer_of: Callable[[list[str]], Any], words: Any) -> None:
    args = bench.args
    count = min(args.items, 300) if bench.tiny and args.items > 300 else args.items
    shape = "tiny" if bench.tiny else args.shape
    batch = 8 if bench.tiny else args.batch
    gpus = torch.cuda.device_count() if bench.device.type == "cuda" else 0
    sizes = [int(w) for w in args.workers.split(",")] if args.workers else [1]
    if not args.workers and gpus >= 2:
        sizes = [1, 2]
    records, prompts = claims(count)
    ids = [r["id"] for r in records]
    tokenizer = tokenizer_of(sorted({w for p in prompts + list(LABELS) for w in words(p)}))
    began = time.perf_counter()
    folder = model_folder(bench, shape, tokenizer)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    progress(f"model folder ready in {time.perf_counter() - began:.1f} s: {folder}")
    runner = Runner(bench, folder, bench.args.model_dir / f"e2e-claims-{count}.jsonl", batch)
    runner.source.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    ways: list[Way] = []
    naive_full: dict[str, float] = {}
    try:
        run = set(args.ways.split(","))
        if "static" in run:
            ways.append(static(bench, folder, prompts, ids, batch))
            progress(f"static: {ways[-1].wall:.1f} s")
        first = None
        if "pervade" in run:
            ways.append(first := runner.pervade(sizes[0]))
            for workers in sizes[1:]:
                ways.append(runner.pervade(workers))
        # Naive tasks are pervade's mean task's size (without a pervade run: 4 engine batches).
        task_items = round(count / max(1, first.stats.tasks)) if first else 4 * batch
        tasks = -(-count // max(1, task_items))
        task_items = -(-count // tasks)
        timed = min(args.naive_tasks, tasks)
        pairs = list(zip(ids, prompts, strict=True))
        for loader in [x for x in args.naive.split(",") if x and "naive" in run]:
            naive = runner.naive(pairs[: timed * task_items], task_items, loader)
            # The rest of the tasks at the median task's seconds (each measured in its task).
            full = naive.wall + (tasks - timed) * statistics.median(naive.task_seconds)
            naive.notes.append(
                f"{timed} of {tasks} tasks of {task_items} items timed"
                + ("" if timed == tasks else f"; full run extrapolated: {full:.1f} s")
            )
            naive_full[naive.name] = full
            ways.append(naive)
        if args.churn:
            from pervade.traces import load_churn

            ways.append(runner.pervade(sizes[0], load_churn(args.churn, sizes[0]), " + churn"))
    finally:
        runner.close()
        report(bench, ways, count, size, shape, batch, naive_full)


__all__ = ["add_arguments", "naive_task", "section", "visible_devices"]
