"""The decode sections of bench/gpu.py (`generate`, `agree`): greedy new tokens, plain
transformers against pervade's HFEngine, as speed and as agreement of the tokens."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from gpu_text import agreement, word_tokenizer
from pervade.engines.fast_generate import FastGenerator
from pervade.engines.hf import HFEngine, _eos_ids


def generate(bench: Any) -> None:
    width, new = (16, 8) if bench.tiny else (256, 64)
    tokenizer = word_tokenizer([f"w{i}" for i in range(bench.words)])
    rows_list = [4, 8] if bench.tiny else [64, 256]
    table: list[list[str]] = []
    agree: list[str] = []
    notes: list[str] = []
    for rows in rows_list:
        engine = bench.engine(tokenizer, batch_size=rows, max_batch_tokens=rows * (width + new))
        prompts = bench.prompts(rows, width, seed=rows)
        speeds: dict[str, float] = {}
        ids = torch.tensor(tokenizer(prompts)["input_ids"], device=bench.device)
        mask = torch.ones_like(ids)

        @torch.inference_mode()
        def plain(n: int, ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> Any:
            greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            return bench.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=n, pad_token_id=0, **greedy
            )

        def pervade(n: int, engine: HFEngine = engine, prompts: list[str] = prompts) -> Any:
            return engine.generate(prompts, max_new_tokens=n)

        paths: list[tuple[str, Callable[[int], Any]]] = [
            ("plain model.generate", plain),
            ("pervade HFEngine.generate", pervade),
        ]
        for name, run in paths:
            whole, first, second = (
                bench.timed(functools.partial(run, n), repeat=2) for n in (new, 1, 2)
            )
            step = (whole - second) / (new - 2)
            kv = rows * (width + new / 2) * bench.kv_bytes_per_token()  # the mean context
            floor = (bench.weight_bytes + kv) / bench.bandwidth
            speeds[name] = rows * new / whole
            cells = [f"{speeds[name]:,.0f}", f"{first:.2f}", f"{(second - first) * 1e3:.0f}"]
            cells += [f"{step * 1e3:.1f}", f"{rows / step:,.0f}", f"{floor * 1e3:.1f}"]
            table.append([name, str(rows), *cells, f"{floor / step:.0%}"])
        # The card's bound: prefill's matrix products at the matmul ceiling (the output
        # layer for the last position only), then every decode step at its floor.
        prefill = 2 * bench.matmul_params * rows * width / (bench.ceiling_tflops * 1e12)
        bound = rows * new / (prefill + (new - 1) * floor)
        ratio = speeds["pervade HFEngine.generate"] / speeds["plain model.generate"]
        notes.append(
            f"- batch {rows}: pervade / plain new tokens/s = {ratio:.2f}x; the card's bound"
            f" is {bound:,.0f} new tokens/s = {bound / speeds['plain model.generate']:.2f}x"
            f" plain (prefill alone {prefill:.2f} s at the matmul ceiling)"
        )
        # Greedy tokens of the same batch, plain against pervade's path, in this dtype.
        reference = plain(new)[:, width:]
        fast = FastGenerator(bench.model).generate(
            ids, mask, new, 0, _eos_ids(engine.tokenizer, bench.model)
        )
        assert fast is not None, "the fast path declined"
        half = plain(new, ids[: rows // 2], mask[: rows // 2])[:, width:]  # a control
        agree.append(
            f"batch {rows}: {agreement(fast, reference):.1%} (plain on half the batch"
            f" against plain on all of it: {agreement(half, reference[: rows // 2]):.1%})"
        )
    bench.say(f"### generate: greedy, {width}-token prompts, {new} new tokens")
    head = "path,batch,new tokens/s,s to 1st token,2nd token ms,decode step ms,decode tokens/s"
    head += ",step floor ms"
    bench.table([*head.split(","), "floor / step"], table)
    for note in notes:
        bench.say(note)
    bench.say(
        f"- greedy tokens equal to plain generate's up to a row's first difference"
        f" ({bench.dtype}, mean over rows): {'; '.join(agree)}\n"
        "- 2nd token: time for 2 new tokens less time for 1 (pervade: graph capture"
        f" included). Decode step: (time for {new} new tokens - time for 2) / {new - 2}."
        " Step floor: weights plus the keys and values of the mean context, read once at"
        " the measured copy rate (bytes read + written per second); pervade's static cache"
        " also reads its not yet written columns, masked.\n"
    )


def agree(bench: Any) -> None:
    """Greedy tokens, pervade's path against model.generate, in float32 at a real shape."""
    bench.model = None
    if bench.device.type == "cuda":
        torch.cuda.empty_cache()  # the first model's memory, for this one
    model = bench.build("1b", torch.float32)
    rows, new = (6, 8) if bench.tiny else (64, 32)
    gen = torch.Generator().manual_seed(5)
    lengths = torch.randint(1, 17 if bench.tiny else 257, (rows,), generator=gen)
    width = int(lengths.max())
    ids = torch.randint(2, bench.words, (rows, width), generator=gen)
    mask = (torch.arange(width)[None, :] >= width - lengths[:, None]).long()
    ids, mask = (ids * mask).to(bench.device), mask.to(bench.device)  # left padding, id 0
    greedy = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    with torch.inference_mode():
        reference = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=new, pad_token_id=0, **greedy
        )[:, width:]
    fast = FastGenerator(model).generate(ids, mask, new, 0, set())
    assert fast is not None, "the fast path declined"
    rows_equal = int((fast[:, : reference.shape[1]] == reference).all(dim=1).sum())
    bench.say(
        f"### Greedy agreement, float32, Llama-3.2-1B shape: {rows} left-padded prompts of"
        f" {int(lengths.min())} to {width} tokens, {new} new tokens\n"
    )
    cells = [f"{rows_equal} of {rows}", f"{agreement(fast, reference):.2%}"]
    bench.table(
        ["rows equal to model.generate's", "tokens equal up to a row's first difference"],
        [cells],
    )
