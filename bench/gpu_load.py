"""The `load` section of bench/gpu.py: a context's load by tier on the device, worker processes
included.

A random-weight model (bench/tiers.py's Llama-3.1-8B shape: 16 GB in four bf16 shards, with
a word-level tokenizer) is written to local disk and its digest taken (files hashed side by
side). Then, in this process, seconds from a folder to the first logits (bench/tiers.py's
`timed_load`: less a second, steady pass): pervade's fast loader from a HOST (tmpfs) entry,
and `AutoModelForCausalLM.from_pretrained` from the page cache (warm) and after dropping the
files' pages (cold). Then a local Dask cluster of two worker processes, A and B, each with
its own DISK and HOST caches (as two nodes), forked as pervade's local cluster forks them
(a forkserver that has imported torch, transformers and pervade's engine). The model's HOST
entry is put in A's HOST cache before A starts. Each measurement is one `run_task` of the
context (the task pervade submits) with one item whose batch function returns the logits of
a 4-token prompt:
- A, a fresh worker process, finds the model in its HOST tier (and publishes it to peers);
- B, with empty caches, gets it through the PEER tier: pulled from A (pervade.worker.
  peer_pull, sha256 checked) into its DISK cache, copied into HOST, loaded from there;
- A is killed (SIGKILL); its nanny starts a new process; the seconds from the kill to that
  process's first finished task, split into process start, registration, load and first
  pass. Target: under 5 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import tiers
from gpu_host_entry import digest_folder, make_folder, seed_host
from pervade.core.context import Artifact, ContextSpec
from pervade.core.items import Item
from pervade.engines.device import pick_dtype
from pervade.engines.fast_load import load_causal_lm, weight_files

GB = 1e9
FIRST_IDS = [1, 791, 6864, 315]  # in every vocabulary, the tiny one's too


# -- run in the worker processes ---------------------------------------------------------


def first_logits(engine: Any, items: Sequence[Item]) -> list[dict[str, Any]]:
    """The batch function: the last position's logits of a 4-token prompt, as a summary
    (argmax, sum) to compare across workers, with what the worker knows of its start."""
    ids = torch.tensor([FIRST_IDS], device=engine.device)
    with torch.inference_mode():
        logits = engine.model(ids).logits[0, -1].float().cpu()
    report = engine.load_report
    value = {
        "top": int(logits.argmax()),
        "sum": round(float(logits.sum()), 3),
        "pid": os.getpid(),
        "born": born(),
        "engine_s": engine.load_seconds,  # tokenizer + weights, in HFEngine.load
        "weights_s": report.seconds if report else float("nan"),
        "method": report.method if report else "?",
    }
    return [value for _ in items]


def born() -> float:
    """When this process was forked, on the wall clock (10 ms steps; psutil's create_time
    rounds the boot time to a second)."""
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


_LOGGED: list[str] = []


class _Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        _LOGGED.append(record.getMessage())


def capture_logs() -> None:
    """Keep the worker's pervade log messages (the peer pull's seconds among them)."""
    logger = logging.getLogger("pervade")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _Keep) for h in logger.handlers):
        logger.addHandler(_Keep())


def logged() -> list[str]:
    return list(_LOGGED)


def worker_names(dask_scheduler: Any) -> dict[str, str]:
    return {str(ws.name): str(ws.address) for ws in dask_scheduler.workers.values()}


# -- the section -------------------------------------------------------------------------

_START = time.perf_counter()


def progress(text: str) -> None:
    """A line on stdout, outside the tables: where a run that ran out of time stood."""
    print(f"[load {time.perf_counter() - _START:6.1f} s] {text}", flush=True)


def section(bench: Any, tokenizer: Any) -> None:
    device: torch.device = bench.device
    tiny: bool = bench.tiny
    shape = "tiny" if tiny else bench.args.shape
    if tiny:  # bench/gpu.py's tiny config (tiers.py's prompt ids need 8192 tokens)
        tiers.SHAPES.setdefault("tiny", bench.tiny_config | {"vocab_size": 8192})
    dtype = pick_dtype("auto", device)
    bench.args.model_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pervade-load-", dir=bench.args.model_dir))
    shm = Path(tempfile.mkdtemp(prefix="pervade-load-", dir=bench.args.host_dir))
    try:
        began = time.perf_counter()
        folder = make_folder(shape, Path(bench.args.model_dir), device, tokenizer)
        made = time.perf_counter() - began
        progress(f"model ready in {made:.1f} s")
        files = weight_files(folder)
        size = sum(f.stat().st_size for f in files)
        began = time.perf_counter()
        digest, shas = digest_folder(folder)
        hashed = time.perf_counter() - began
        artifact = Artifact("model", str(folder), digest)
        began = time.perf_counter()
        host_a = shm / "A" / "host"
        entry = seed_host(host_a, artifact, folder, shas)
        seeded = time.perf_counter() - began
        progress(f"digest {hashed:.1f} s, HOST entry {seeded:.1f} s")
        bench.say(
            f"### load: Llama {shape} shape, {size / GB:.2f} GB of weights in {len(files)}"
            f" file(s), {str(dtype).removeprefix('torch.')} on {device}\n\n"
            f"Made and written in {made:.0f} s; digest of the folder {hashed:.1f} s (files"
            f" hashed side by side); copied into a HOST (tmpfs) cache entry in {seeded:.1f} s.\n"
        )
        in_process(bench, folder, entry, host_a, files, size, dtype)
        spec = ContextSpec(
            "pervade.engines.hf:load_engine",
            {"device": device.type, "dtype": "auto", "batch_size": 16},
            (artifact,),
            label=folder.name,
        )
        workers(bench, spec, shm, work, size, restarts=1 if tiny else 3)
    finally:
        shutil.rmtree(shm, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def in_process(
    bench: Any,
    folder: Path,
    entry: Path,
    host_root: Path,
    files: list[Path],
    size: int,
    dtype: torch.dtype,
) -> None:
    """Seconds to the first logits in this process (bench/tiers.py's rows, fewer repeats)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    device: torch.device = bench.device
    repeat = 1 if bench.tiny else 3

    def fast() -> tuple[Any, str]:
        model, report = load_causal_lm(entry, device, dtype, host_root=host_root)
        return model, report.method

    def baseline() -> tuple[Any, str]:
        where = str(device) if device.type != "cpu" else None
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, device_map=where)
        return model.eval(), "from_pretrained"

    tiers.timed_load(fast, device, None)  # imports and first-call costs, untimed
    plans: list[tuple[str, Callable[[], tuple[Any, str]], str, int]] = [
        ("HOST (tmpfs) -> device, pervade's fast loader", fast, "host", repeat),
        ("DISK warm (page cache), from_pretrained", baseline, "warm", min(repeat, 2)),
        ("DISK cold (pages dropped), from_pretrained", baseline, "cold", 1),
    ]
    rows, notes = [], []
    for label, load, state, times in plans:
        runs, methods = [], set()
        for _ in range(times):
            if state == "warm":
                tiers.make_warm(files)
            elif state == "cold":
                rate = tiers.make_cold(files)
                notes.append(f"sample read after the drop: {rate:.1f} GB/s")
            seconds, method, _ = tiers.timed_load(load, device, None)
            progress(f"{label}: {seconds:.2f} s")
            runs.append(seconds)
            methods.add(method)
        seconds = statistics.median(runs)
        cells = [f"{seconds:.2f}", f"{size / seconds / GB:.2f}", " ".join(f"{t:.2f}" for t in runs)]
        rows.append([label, ",".join(sorted(methods)), *cells])
    bench.say("#### In one process: seconds to the first logits (less a steady pass)")
    bench.table(["source", "loader", "seconds", "GB/s", "runs (s)"], rows)
    if notes:
        bench.say(f"- DISK cold: {'; '.join(notes)}\n")


@contextlib.contextmanager
def cluster(shm: Path, work: Path) -> Iterator[Any]:
    """Workers A and B, each with its own DISK and HOST caches, forked from a server that
    has imported what a worker needs (pervade.runtime.cluster does the same)."""
    import dask
    from distributed import Client, Nanny, Scheduler, SpecCluster

    from pervade.runtime.cluster import _preload_forkserver, worker_environment

    names = ("A", "B")
    envs = {}
    for name in names:
        env = {k: str(v) for k, v in worker_environment(len(names)).items()}
        env["PERVADE_ARTIFACT_CACHE"] = str(work / name / "disk")
        env["PERVADE_HOST_CACHE"] = str(shm / name / "host")
        envs[name] = env
    settings = {"distributed.worker.multiprocessing-method": "forkserver"}
    # The workers' INFO lines would bury the tables (the forkserver reads this at its start).
    os.environ["DASK_LOGGING__DISTRIBUTED"] = "warning"
    with dask.config.set(settings):
        _preload_forkserver(["pervade.engines.hf", "gpu_load"])
        spec = {
            name: {"cls": Nanny, "options": {"nthreads": 1, "env": envs[name], "name": name}}
            for name in names
        }
        scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
        with (
            SpecCluster(workers=spec, scheduler=scheduler, silence_logs=logging.ERROR) as local,
            Client(local) as client,
        ):
            client.wait_for_workers(len(names))
            yield client


def workers(bench: Any, spec: ContextSpec, shm: Path, work: Path, size: int, restarts: int) -> None:
    from pervade.worker.plugin import STATE_TOPIC, ContextHostPlugin
    from pervade.worker.tasks import run_task

    def task(client: Any, address: str, n: int) -> tuple[float, Any]:
        began = time.perf_counter()
        future = client.submit(
            run_task,
            spec,
            "gpu_load:first_logits",
            {},
            [Item(f"i{n}", {})],
            workers=[address],
            allow_other_workers=False,
            pure=False,
        )
        report = future.result()
        seconds = time.perf_counter() - began
        progress(f"task {n} on {address}: {seconds:.2f} s")
        if not report.outcomes or report.error:
            raise RuntimeError(f"the task on {address} failed: {report.error or report}")
        return seconds, report

    began = time.perf_counter()
    with cluster(shm, work) as client:
        started = time.perf_counter() - began
        progress(f"cluster of A and B started in {started:.1f} s")
        client.register_plugin(ContextHostPlugin())
        client.run(capture_logs)
        names = client.run_on_scheduler(worker_names)
        a_seconds, a_report = task(client, names["A"], 0)
        b_seconds, b_report = task(client, names["B"], 1)
        events = [m for _, m in client.get_events(STATE_TOPIC) if m.get("tier")]
        where = {m["worker"]: m for m in events if m["state"] == "warm"}
        b_logs = client.run(logged, workers=[names["B"]])[names["B"]]
        rows = []
        for label, seconds, report, address in (
            ("A: fresh process, HOST (its tmpfs)", a_seconds, a_report, names["A"]),
            ("B: fresh process, empty caches: PEER (from A)", b_seconds, b_report, names["B"]),
        ):
            state = where.get(address, {})
            value = report.outcomes[0][1]
            cells = [str(state.get("tier", "?")), f"{seconds:.2f}", f"{size / seconds / GB:.2f}"]
            cells += [f"{float(state.get('fetch_seconds') or 0.0):.2f}"]
            cells += [f"{value['weights_s']:.2f} ({value['method']})"]
            rows.append([label, *cells, f"{report.infer_seconds:.2f}"])
        bench.say(
            f"#### Two worker processes (a local Dask cluster, started in {started:.1f} s; each"
            " its own DISK and HOST caches): one task of the context to its first logits"
        )
        head = ["worker", "tier", "seconds", "GB/s", "staging s", "weights to device s"]
        bench.table([*head, "first pass s"], rows)
        pulled = [line for line in b_logs if "pulled" in line]
        bench.say(
            "- seconds: from submitting the task to its result (the tokenizer, engine and"
            " result included); GB/s: weight bytes over those seconds. Staging: the tier's copy"
            " (B: the pull into its HOST cache, sha256 checked; its DISK copy is written"
            " behind the load)."
            " Weights to device: HFEngine's fast load from the HOST entry.\n"
            f"- B's pull (its worker's log): {'; '.join(pulled) or 'not logged'}\n"
        )
        restarted = [restart(client, task, 2 + i) for i in range(restarts)]
    values = [a_report.outcomes[0][1], b_report.outcomes[0][1]]
    values += [r["report"].outcomes[0][1] for r in restarted]
    same = len({(v["top"], v["sum"]) for v in values}) == 1

    rows = []
    for i, r in enumerate(restarted, 1):
        report, value = r["report"], r["report"].outcomes[0][1]
        rest = r["task"] - report.load_seconds - report.infer_seconds
        cells = [f"{r['total']:.2f}", f"{value['born'] - r['killed']:.2f}"]
        cells += [f"{r['registered'] - value['born']:.2f}", f"{report.load_seconds:.2f}"]
        cells += [f"{value['weights_s']:.2f}", f"{report.infer_seconds:.2f}", f"{rest:.2f}"]
        rows.append([str(i), *cells])
    totals = [r["total"] for r in restarted]
    bench.say(
        "#### A restarted worker: SIGKILL to worker A (model in its HOST tier), its nanny"
        " starts a new process; seconds from the kill to that process's first finished task"
    )
    head = ["run", "kill -> first task done", "kill -> new process", "process -> registered"]
    head += ["task: load (HOST hit, tokenizer, weights)", "of it weights to device"]
    bench.table([*head, "first pass", "dispatch and reply"], rows)
    verdict = "met" if statistics.median(totals) < 5 else "not met"
    bench.say(
        f"- median {statistics.median(totals):.2f} s (target under 5 s: {verdict}). New"
        " process: its fork (/proc, 10 ms steps) less the kill; registered: when the"
        " scheduler listed the new worker (polled); the task is submitted then.\n"
        f"- logits of A, B and every restarted A equal: {same}\n"
    )


def restart(client: Any, task: Callable[[Any, str, int], tuple[float, Any]], n: int) -> Any:
    old = client.run_on_scheduler(worker_names)["A"]
    pid = client.run(os.getpid, workers=[old])[old]
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (new := client.run_on_scheduler(worker_names).get("A", old)) == old:
        if time.monotonic() > deadline:
            raise RuntimeError("worker A did not come back within 60 s")
        time.sleep(0.01)
    registered = time.time()
    seconds, report = task(client, new, n)
    done = time.time()
    return {
        "killed": killed,
        "registered": registered,
        "task": seconds,
        "total": done - killed,
        "report": report,
    }


__all__ = ["capture_logs", "first_logits", "logged", "section", "worker_names"]
