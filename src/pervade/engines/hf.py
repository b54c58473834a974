"""Hugging Face transformers engine: any local causal-LM folder.

`choose` scores every answer in ONE forward pass per batch: each row holds the prompt
followed by all the candidate answers, and a 4-D attention mask lets each answer see the
prompt and its own earlier tokens only (position ids restart after the prompt for every
answer). Compute is prompt + answers, not prompt × answers. On CUDA, `fast_choose` scores
the same in two passes (prompts, then answers against their cached keys) and `fast_generate`
generates with a static cache and a graph-captured decode step; each falls back to the above.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

# Imported with the module, not at the first load: a worker process forked from a server that
# has imported this module (the local cluster's forkserver) then builds a context in about a
# second instead of paying several seconds of imports after every restart.
from transformers import AutoTokenizer
from transformers import PreTrainedTokenizerFast as _FastTokenizers  # noqa: F401  (same reason)
from transformers.utils import logging as hf_logging

from pervade.core.items import ItemError
from pervade.engines.device import pick_device, pick_dtype
from pervade.engines.fast_choose import TwoPassScorer
from pervade.engines.fast_generate import FastGenerator
from pervade.engines.fast_load import LoadReport, load_causal_lm
from pervade.engines.protocol import Choice, Generation

_R = TypeVar("_R")


def load_engine(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 16,
    max_batch_tokens: int = 16384,
    threads: int | None = None,
    quiet: bool = True,
) -> HFEngine:
    """Context loader: build an engine from a local model folder (`model` is its path).

    `quiet` silences transformers' per-load progress bars, which would interleave on
    the driver's terminal from every worker.
    """
    if quiet:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    return HFEngine.load(
        Path(model),
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
        threads=threads,
    )


class HFEngine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        device: torch.device,
        batch_size: int = 16,
        max_batch_tokens: int = 16384,
    ) -> None:
        if batch_size < 1 or max_batch_tokens < 1:
            raise ValueError("batch_size and max_batch_tokens must be positive")
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.load_seconds = 0.0
        self.load_report: LoadReport | None = None  # how the weights were loaded
        self.oom_splits = 0  # batches halved because the device ran out of memory
        self._pad_id = _pad_token_id(tokenizer, model)
        # Static-cache generation with a graph-captured decode step; None: model.generate.
        self.fast: FastGenerator | None = FastGenerator(model) if device.type == "cuda" else None
        cuda = device.type == "cuda"  # and choice scoring in two passes, prompts then answers
        self.scorer: TwoPassScorer | None = TwoPassScorer(model, self._pad_id) if cuda else None

    @classmethod
    def load(
        cls,
        path: Path,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 16,
        max_batch_tokens: int = 16384,
        threads: int | None = None,
    ) -> HFEngine:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
        if threads is not None:
            torch.set_num_threads(threads)
        started = time.perf_counter()
        dev = pick_device(device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model, report = load_causal_lm(path, dev, pick_dtype(dtype, dev))
        engine = cls(model, tokenizer, dev, batch_size, max_batch_tokens)
        engine.load_seconds = time.perf_counter() - started
        engine.load_report = report
        return engine

    @property
    def device_bytes(self) -> int:
        """Bytes the weights hold on the device (shared tensors once): what the worker
        weighs against its device budget when another context needs room."""
        storages = {
            t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
            for t in (*self.model.parameters(), *self.model.buffers())
        }
        return sum(storages.values())

    @property
    def max_length(self) -> int:
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return int(self.tokenizer.model_max_length)

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._encode(prompts)]

    def _encode(self, texts: Sequence[str], special: bool = True) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), add_special_tokens=special)["input_ids"]
        return [list(ids) for ids in encoded]

    # -- choose ----------------------------------------------------------------------

    def choose(self, prompts: Sequence[str], choices: Sequence[str]) -> list[Choice | ItemError]:
        if len(choices) < 2:
            raise ValueError("choose needs at least two choices")
        choice_ids = self._encode(choices, special=False)
        if any(not ids for ids in choice_ids):
            raise ValueError("every choice must be at least one token long")
        prompt_ids = self._encode(prompts)
        answer_tokens = sum(len(ids) for ids in choice_ids)
        results: list[Choice | ItemError | None] = [
            _too_long(len(ids) + answer_tokens, self.max_length) for ids in prompt_ids
        ]
        fits = [i for i, r in enumerate(results) if r is None]

        def score(batch: list[int]) -> list[Choice]:
            rows = self._score_batch([prompt_ids[i] for i in batch], choice_ids)
            picked = []
            for i, row in zip(batch, rows, strict=True):
                named = {c: s for c, s in zip(choices, row, strict=True)}
                picked.append(Choice(max(named, key=named.__getitem__), named, len(prompt_ids[i])))
            return picked

        for batch in self._batches(fits, [len(prompt_ids[i]) + answer_tokens for i in fits]):
            for i, outcome in zip(batch, self._split_on_oom(batch, score), strict=True):
                results[i] = outcome
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _score_batch(self, prompts: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        scored = self.scorer.score(prompts, choices) if self.scorer is not None else None
        if scored is not None:
            return scored
        # Prompts are left-padded so that they all end in the same column; the answers then
        # sit in the same columns of every row, and only those columns need logits (the
        # output projection over the vocabulary is a fifth of a small model's compute).
        rows, end = len(prompts), max(len(p) for p in prompts)
        starts = [end]
        for choice in choices[:-1]:
            starts.append(starts[-1] + len(choice))
        width = starts[-1] + len(choices[-1])
        ids = torch.full((rows, width), self._pad_id, dtype=torch.long)
        positions = torch.zeros((rows, width), dtype=torch.long)
        mask = torch.zeros((rows, 1, width, width), dtype=torch.bool)
        for r, prompt in enumerate(prompts):
            n = len(prompt)
            begin = end - n
            ids[r, begin:end] = torch.tensor(prompt)
            positions[r, begin:end] = torch.arange(n)
            mask[r, 0, begin:end, begin:end] = torch.ones(n, n, dtype=torch.bool).tril()
            for choice, start in zip(choices, starts, strict=True):
                k = len(choice)
                ids[r, start : start + k] = torch.tensor(choice)
                positions[r, start : start + k] = torch.arange(n, n + k)
                mask[r, 0, start : start + k, begin:end] = True
                mask[r, 0, start : start + k, start : start + k] = torch.ones(
                    k, k, dtype=torch.bool
                ).tril()
            # Padding attends to itself only, so no row of the mask is empty (NaN in softmax).
            pad = torch.arange(begin)
            mask[r, 0, pad, pad] = True
        # Column whose logits predict each answer token: the last prompt column for the
        # first token, the answer's own previous column for the others.
        reads = [
            [end - 1] + [s + j - 1 for j in range(1, len(c))]
            for c, s in zip(choices, starts, strict=True)
        ]
        keep = sorted({col for cols in reads for col in cols})
        where = {col: i for i, col in enumerate(keep)}
        logits = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            logits_to_keep=torch.tensor(keep, device=self.device),
        ).logits
        # Each answer token's log-probability, on the device: only rows x answer tokens come
        # back to the host, not the kept columns' logits over the whole vocabulary.
        column = torch.tensor([where[c] for cols in reads for c in cols], device=self.device)
        token = torch.tensor([t for choice in choices for t in choice], device=self.device)
        picked = (
            logits[:, column, token].float() - torch.logsumexp(logits.float(), dim=-1)[:, column]
        )
        sums = torch.zeros((rows, len(choices)), dtype=torch.float32, device=self.device)
        owner = torch.tensor([k for k, c in enumerate(choices) for _ in c], device=self.device)
        return sums.index_add_(1, owner, picked).tolist()

    # -- generate --------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[str],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[Generation | ItemError]:
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        prompt_ids = self._encode(prompts)
        results: list[Generation | ItemError | None] = [
            _too_long(len(ids) + max_new_tokens, self.max_length) for ids in prompt_ids
        ]
        fits = [i for i, r in enumerate(results) if r is None]
        lengths = [len(prompt_ids[i]) + max_new_tokens for i in fits]

        def make(batch: list[int]) -> list[Generation]:
            if seed is not None:
                torch.manual_seed(seed)
            texts, counts = self._generate_batch(
                [prompt_ids[i] for i in batch], max_new_tokens, temperature, top_p
            )
            return [
                Generation(text, len(prompt_ids[i]), count)
                for i, text, count in zip(batch, texts, counts, strict=True)
            ]

        try:
            for batch in self._batches(fits, lengths):
                for i, outcome in zip(batch, self._split_on_oom(batch, make), strict=True):
                    results[i] = outcome
        finally:
            if self.fast is not None:
                self.fast.release()  # its cache lives for one call's batches only
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(
        self, prompts: list[list[int]], max_new_tokens: int, temperature: float, top_p: float
    ) -> tuple[list[str], list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, prompt in enumerate(prompts):  # left padding: every prompt ends together
            ids[r, width - len(prompt) :] = torch.tensor(prompt)
            attention[r, width - len(prompt) :] = 1
        eos = _eos_ids(self.tokenizer, self.model)
        new = None
        if self.fast is not None:
            new = self.fast.generate(
                ids.to(self.device),
                attention.to(self.device),
                max_new_tokens,
                self._pad_id,
                eos,
                temperature,
                top_p,
            )
        if new is None:
            new = self._plain_generate(ids, attention, max_new_tokens, temperature, top_p)
        texts, counts = [], []
        for row in new.cpu().tolist():
            kept = []
            for token in row:
                if token in eos:
                    break
                kept.append(token)
            texts.append(self.tokenizer.decode(kept, skip_special_tokens=True))
            counts.append(len(kept))
        return texts, counts

    def _plain_generate(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
    ) -> torch.Tensor:
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": temperature, "top_p": top_p}
            if temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        output = self.model.generate(
            input_ids=ids.to(self.device),
            attention_mask=attention.to(self.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=self._pad_id,
            **sampling,
        )
        return output[:, ids.shape[1] :]  # type: ignore[no-any-return]

    # -- batching --------------------------------------------------------------------

    def _split_on_oom(
        self, batch: list[int], run: Callable[[list[int]], Sequence[_R]]
    ) -> list[_R | ItemError]:
        """Run a batch; if the device runs out of memory, run its halves, down to one row.

        A row that does not fit even alone becomes an error of that item; the others of the
        task go on, and the device is not left holding the failed batch's memory.
        """
        try:
            return list(run(batch))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.oom_splits += 1
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                return [ItemError(f"out of memory even alone: {exc}", field="prompt")]
        half = len(batch) // 2
        return self._split_on_oom(batch[:half], run) + self._split_on_oom(batch[half:], run)

    def _batches(self, indices: list[int], lengths: list[int]) -> Iterator[list[int]]:
        """Length-sorted batches of at most batch_size rows and max_batch_tokens padded tokens."""
        order = sorted(range(len(indices)), key=lambda k: lengths[k])
        batch: list[int] = []
        longest = 0
        for k in order:
            grown = max(longest, lengths[k])
            if batch and (
                len(batch) >= self.batch_size or grown * (len(batch) + 1) > self.max_batch_tokens
            ):
                yield batch
                batch, grown = [], lengths[k]
            batch.append(indices[k])
            longest = grown
        if batch:
            yield batch


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _too_long(tokens: int, limit: int) -> ItemError | None:
    if tokens <= limit:
        return None
    return ItemError(
        f"prompt and answer take {tokens} tokens; the model takes at most {limit}",
        field="prompt",
    )


def _pad_token_id(tokenizer: Any, model: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, model.config.eos_token_id):
        if isinstance(candidate, list) and candidate:
            candidate = candidate[0]
        if isinstance(candidate, int):
            return candidate
    return 0


def _eos_ids(tokenizer: Any, model: Any) -> set[int]:
    found: set[int] = set()
    for candidate in (tokenizer.eos_token_id, model.generation_config.eos_token_id):
        if isinstance(candidate, int):
            found.add(candidate)
        elif isinstance(candidate, list):
            found.update(c for c in candidate if isinstance(c, int))
    return found
