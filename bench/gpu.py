"""Engine efficiency on one GPU: pervade's HF engine against plain transformers, in one run.

    python bench/gpu.py [--shape 8b|1b] [--only ceilings,choose,generate,lengths,agree,load]
                        [--out FILE] [--model-dir DIR] [--host-dir TMPFS]
    python bench/gpu.py --tiny        # CPU, tiny shapes: checks that every section runs

A random-weight bf16 model of a real shape (Llama-3.1-8B or Llama-3.2-1B) is built on the
device from a config in this file. Prompts are words of a word-level tokenizer (n words, n
tokens). Sections, as markdown tables on stdout and in --out:
- ceilings: a bf16 matrix product (TFLOP/s) and a device copy (GB/s, read plus written).
- choose: `HFEngine.choose` against a plain forward pass of the same prompt tokens.
- generate: greedy new tokens/s, `model.generate` against `HFEngine.generate`, with each
  decode step against its memory floor and the card's bound on the whole run.
- lengths: `HFEngine.choose` on fact-verification prompts of the bundled generator's length
  spread (bench/gen_claims.py), with length-sorted batches and in arrival order.
- agree: greedy tokens of pervade's decode path against model.generate, float32.
- load: the context's load by tier, worker processes included (bench/gpu_load.py): HOST ->
  device and from_pretrained in one process; two Dask worker processes, one loading from its
  HOST tier, the other through the PEER tier; a killed worker's replacement to its first task.
- e2e (only when named): the fact-verification job over --items synthetic claims three ways,
  static ideal, naive (a model load per task) and pervade, with --churn (bench/gpu_e2e.py):
      python bench/gpu.py --only e2e [--items N] [--churn rate:mtbe=300,...] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import datetime
import math
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

import gpu_decode  # noqa: E402
import gpu_e2e  # noqa: E402
from gpu_text import arrivals, word_tokenizer, words  # noqa: E402
from pervade.apps.fact_verification.app import BUNDLED_TEMPLATE, LABELS  # noqa: E402
from pervade.engines.fast_choose import TwoPassScorer  # noqa: E402
from pervade.engines.fast_generate import FastGenerator  # noqa: E402
from pervade.engines.hf import HFEngine  # noqa: E402


def llama3(hidden: int, layers: int, intermediate: int, tied: bool, rope: float) -> dict[str, Any]:
    scaling = {"rope_type": "llama3", "factor": rope, "low_freq_factor": 1.0}
    scaling |= {"high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    size = {"hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": intermediate}
    heads = {"num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256}
    ropes = {"rope_theta": 500000.0, "rope_scaling": scaling, "max_position_embeddings": 131072}
    ids = {"bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009]}
    return size | heads | ropes | ids | {"tie_word_embeddings": tied, "rms_norm_eps": 1e-5}


TINY = {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096}
SHAPES = {  # Llama-3.2-1B and Llama-3.1-8B
    "1b": llama3(2048, 16, 8192, tied=True, rope=32.0),
    "8b": llama3(4096, 32, 14336, tied=False, rope=8.0),
    "tiny": llama3(64, 2, 128, False, 8.0) | TINY | {"bos_token_id": None, "eos_token_id": 1},
}
SECTIONS = ("ceilings", "choose", "generate", "lengths", "agree", "load", "e2e")
DEFAULT = SECTIONS[:-1]  # e2e runs when named: it is a long run of its own
ENGINE = set(SECTIONS) - {"load", "e2e"}  # the sections that use the model built in memory


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tiny = args.tiny
        self.device = torch.device("cpu" if args.tiny else "cuda")
        self.dtype = torch.float32 if args.tiny else torch.bfloat16
        self.lines: list[str] = []
        self.ceiling_tflops = math.nan
        self.bandwidth = math.nan  # bytes/s, read plus written
        self.model: Any = None
        self.words = 0
        self.tiny_config = SHAPES["tiny"]

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def table(self, head: list[str], rows: list[list[str]]) -> None:
        for row in [head, ["---"] * len(head), *rows]:
            self.say("| " + " | ".join(row) + " |")
        self.say()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def timed(self, run: Callable[[], object], repeat: int = 1) -> float:
        """Median seconds of `repeat` runs after one untimed run."""
        run()
        times = []
        for _ in range(repeat):
            self.sync()
            started = time.perf_counter()
            run()
            self.sync()
            times.append(time.perf_counter() - started)
        return statistics.median(times)

    def build(self, shape: str, dtype: torch.dtype) -> Any:
        from transformers import AutoModelForCausalLM, LlamaConfig

        shape = "tiny" if self.tiny else shape
        config = LlamaConfig(**SHAPES[shape])
        torch.manual_seed(0)
        started = time.perf_counter()
        with torch.device(self.device):
            model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
                config, dtype=dtype, attn_implementation="sdpa"
            ).eval()
        self.sync()
        params = sum(p.numel() for p in model.parameters())
        self.words = min(32000, config.vocab_size - 2)
        self.say(
            f"model: Llama {shape} shape, {params / 1e9:.2f} B parameters, {dtype}, random"
            f" weights, built on {self.device} in {time.perf_counter() - started:.1f} s\n"
        )
        return model

    def engine(self, tokenizer: Any, batch_size: int, max_batch_tokens: int) -> HFEngine:
        engine = HFEngine(self.model, tokenizer, self.device, batch_size, max_batch_tokens)
        if engine.fast is None:  # the CPU: run the fast paths anyway, so that --tiny checks them
            engine.fast = FastGenerator(self.model)
            engine.scorer = TwoPassScorer(self.model, 0)
        return engine

    def prompts(self, count: int, length: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        return [
            " ".join(f"w{rng.randrange(self.words)}" for _ in range(length)) for _ in range(count)
        ]

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def matmul_params(self) -> int:
        """Parameters of the matrix products of a prompt token (no embedding, no output)."""
        skip = {id(self.model.get_input_embeddings()), id(self.model.get_output_embeddings())}
        return sum(
            p.numel()
            for m in self.model.modules()
            if id(m) not in skip
            for p in m.parameters(recurse=False)
        )

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def kv_bytes_per_token(self) -> int:
        c = self.model.config
        head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return int(2 * c.num_hidden_layers * c.num_key_value_heads * head * self.dtype.itemsize)

    def ceilings(self) -> None:
        n = 512 if self.tiny else 8192
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        b = torch.randn(n, n, device=self.device, dtype=self.dtype)
        seconds = self.timed(lambda: [a @ b for _ in range(10)], repeat=3) / 10
        self.ceiling_tflops = 2 * n**3 / seconds / 1e12
        size = (64 << 20) if self.tiny else (4 << 30)
        src = torch.randn(size // 2, device=self.device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        seconds = self.timed(lambda: [dst.copy_(src) for _ in range(10)], repeat=3) / 10
        self.bandwidth = 2 * size / seconds
        self.say("### Ceilings, measured in this run")
        matmul = [f"{self.dtype} matmul {n}x{n}x{n}", f"{self.ceiling_tflops:.0f} TFLOP/s"]
        copy = [f"device copy, {size / 1e9:.1f} GB", f"{self.bandwidth / 1e9:.0f} GB/s"]
        self.table(["what", "measured (copy: bytes read + written)"], [matmul, copy])

    def choose(self) -> None:
        rows, width, batches = (8, 32, 2) if self.tiny else (64, 512, 6)
        tokenizer = word_tokenizer([f"w{i}" for i in range(self.words)])
        engine = self.engine(tokenizer, batch_size=rows, max_batch_tokens=rows * (width + 16))
        prompts = self.prompts(rows * batches, width, seed=1)
        ids = [
            torch.tensor(tokenizer(prompts[i : i + rows])["input_ids"], device=self.device)
            for i in range(0, len(prompts), rows)
        ]
        assert all(t.shape == (rows, width) for t in ids), "a prompt is not `width` tokens"
        ones = torch.ones_like(ids[0])
        tokens = rows * width * batches

        @torch.inference_mode()
        def plain(keep: int) -> None:
            for batch in ids:
                self.model(input_ids=batch, attention_mask=ones, logits_to_keep=keep)

        results = [
            ("plain forward, logits of every position", self.timed(lambda: plain(0))),
            ("plain forward, logits of the last position", self.timed(lambda: plain(1))),
            (
                f"pervade HFEngine.choose ({len(LABELS)} labels)",
                self.timed(lambda: engine.choose(prompts, list(LABELS))),
            ),
        ]
        self.say(f"### choose: {batches} batches of {rows} x {width}-token prompts")
        head = ["path", "prompt tokens/s", "x plain (all logits)", "TFLOP/s", "of ceiling"]
        table = []
        for name, s in results:
            tflops = 2 * self.params * tokens / s / 1e12  # 2 x parameters x prompt tokens
            cells = [f"{tokens / s:,.0f}", f"{results[0][1] / s:.2f}", f"{tflops:.0f}"]
            table.append([name, *cells, f"{tflops / self.ceiling_tflops:.0%}"])
        self.table(head, table)

    def generate(self) -> None:
        gpu_decode.generate(self)

    def lengths(self) -> None:
        from gen_claims import make_claim

        count, rows = (64, 8) if self.tiny else (4096, 128)
        rng = random.Random(0)
        template = BUNDLED_TEMPLATE.read_text(encoding="utf-8")
        texts = [template.format(**make_claim(rng, i)) for i in range(count)]
        vocab = sorted({w for t in texts + list(LABELS) for w in words(t)})
        tokenizer = word_tokenizer(vocab)
        engine = self.engine(tokenizer, batch_size=rows, max_batch_tokens=rows * 512)
        counts = engine.count_tokens(texts)
        label_tokens = sum(engine.count_tokens(list(LABELS)))
        q = statistics.quantiles(counts, n=20)
        sorted_batches = engine._batches
        ways = [("length-sorted (pervade)", sorted_batches), ("arrival order", arrivals(engine))]
        results = []
        for name, batching in ways:
            engine._batches = batching  # type: ignore[method-assign, assignment]
            seconds = self.timed(lambda: engine.choose(texts, list(LABELS)))
            padded = sum(
                len(b) * max(counts[i] + label_tokens for i in b)
                for b in batching(list(range(count)), [c + label_tokens for c in counts])
            )
            real = sum(counts) + count * label_tokens
            cells = [f"{count / seconds:,.0f}", f"{sum(counts) / seconds:,.0f}"]
            results.append([name, *cells, f"{padded / real - 1:.0%}"])
        engine._batches = sorted_batches  # type: ignore[method-assign]
        median = statistics.median(counts)
        self.say(
            f"### Real lengths: {count} fact-verification prompts (bench/gen_claims.py, bundled"
            f" template), word-level tokens: min {min(counts)}, median {median:.0f},"
            f" p95 {q[-1]:.0f}, max {max(counts)}; batches of at most {rows} rows"
        )
        self.table(["batching", "items/s", "prompt tokens/s", "padding computed"], results)

    def agree(self) -> None:
        """Greedy tokens, pervade's path against model.generate, in float32 at a real shape."""
        gpu_decode.agree(self)

    def load(self) -> None:
        import gpu_load

        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # the engine sections' model: the workers need the room
        gpu_load.section(self, word_tokenizer([f"w{i}" for i in range(32000)]))

    def e2e(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        gpu_e2e.section(self, word_tokenizer, words)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=["1b", "8b"], default="8b")
    parser.add_argument("--only", default=",".join(DEFAULT), help="comma-separated sections")
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny shapes: a smoke test")
    parser.add_argument("--out", type=Path, help="also write the tables to this file")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "pervade-bench",
        help="load: where the model is written (local disk) and the workers' DISK caches go",
    )
    parser.add_argument(
        "--host-dir", type=Path, default=Path("/dev/shm"), help="load: a tmpfs for HOST caches"
    )
    gpu_e2e.add_arguments(parser)
    args = parser.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    bench = Bench(args)
    import transformers

    card = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "CPU"
    bench.say(
        f"## bench/gpu.py: {card}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"`python bench/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`; torch"
        f" {torch.__version__}, transformers {transformers.__version__}\n"
    )
    failed = 0
    try:
        if ENGINE & set(only):
            bench.model = bench.build(args.shape, bench.dtype)
        for section in SECTIONS:  # ceilings first: the others are measured against them
            if section in only or (section == "ceilings" and {"choose", "generate"} & set(only)):
                try:
                    getattr(bench, section)()
                except Exception:
                    failed += 1
                    bench.say(f"### {section}: failed\n```\n{traceback.format_exc()}```\n")
    finally:
        if args.out:
            args.out.write_text("\n".join(bench.lines) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
