"""Choice scoring in two passes: the prompts, then the answers against their cached keys.

`HFEngine._score_batch` scores every answer in one pass over prompt + answers, under a 4-D
mask built on the host: SDPA then runs a masked kernel over the whole row, and the mask grows
with the square of the row. Here the prompts go first, alone, with transformers' own padding
mask (the causal flash kernel where no row is padded), writing their keys and values into a
`StaticCache`; the answer tokens that predict later answer tokens then run as a second, small
pass that attends to those cached prompt columns and to their own answer's earlier tokens.
The log-probabilities are the same up to rounding (the tests compare both paths).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pervade.engines.fast_generate import StaticCache, cache_argument, is_oom, unsupported

log = logging.getLogger(__name__)


class TwoPassScorer:
    """`score` returns None where it does not apply: the caller then scores in one pass."""

    def __init__(self, model: Any, pad_id: int) -> None:
        self.model = model
        self.pad_id = pad_id
        self.enabled = True

    def score(self, prompts: list[list[int]], choices: list[list[int]]) -> list[list[float]] | None:
        if not self.enabled:
            return None
        reason = unsupported(self.model)
        if reason is None:
            try:
                return self._score(prompts, choices)
            except Exception as exc:
                if is_oom(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
        self.enabled = False
        log.warning("two-pass scoring not used (%s); scoring in one pass", reason)
        return None

    @torch.inference_mode()
    def _score(self, prompts: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        device = self.model.get_input_embeddings().weight.device
        rows, end = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((rows, end), self.pad_id, dtype=torch.long)
        attention = torch.zeros((rows, end), dtype=torch.long)
        for r, prompt in enumerate(prompts):  # left padding: every prompt ends at `end`
            ids[r, end - len(prompt) :] = torch.tensor(prompt)
            attention[r, end - len(prompt) :] = 1
        ids, attention = ids.to(device), attention.to(device)
        # The second pass holds every answer token but the last: those predict the next one.
        inputs = [c[:-1] for c in choices]
        block = sum(len(c) for c in inputs)
        cache = StaticCache(self.model.config.num_hidden_layers, end + block, torch.arange(0))
        cache.at, cache.prefill = torch.arange(end, device=device), True
        positions = (attention.cumsum(dim=1) - 1).masked_fill(attention == 0, 1)
        first = self._logits(ids, attention, positions, cache, 1)[:, -1]  # (rows, vocab)
        # Log-probability of each answer's first token, then of its later tokens.
        firsts = torch.tensor([c[0] for c in choices], device=device)
        scores = first.float().gather(1, firsts[None].expand(rows, -1))
        scores -= torch.logsumexp(first.float(), dim=-1, keepdim=True)
        if block == 0:
            return scores.tolist()
        lengths = attention.sum(dim=1)
        cols = torch.arange(end + block, device=device)
        answer_ids: list[int] = []
        offsets: list[int] = []
        owners: list[int] = []
        for k, part in enumerate(inputs):
            answer_ids += part
            offsets += range(len(part))
            owners += [k] * len(part)
        offset = torch.tensor(offsets, device=device)
        owner = torch.tensor(owners, device=device)
        # Answer token j of choice k sees the row's real prompt columns and its own answer's
        # tokens 0..j, which sit in the block columns end + start_k .. end + start_k + j.
        sees_prompt = (cols[None, :] >= end - lengths[:, None]) & (cols[None, :] < end)
        block_col = cols - end
        same_answer = (block_col[None, :] >= 0) & (
            owner[block_col.clamp(0, block - 1)][None, :] == owner[:, None]
        )
        causal = block_col[None, :] <= torch.arange(block, device=device)[:, None]
        mask = sees_prompt[:, None, None, :] | (same_answer & causal)[None, None]
        cache.at, cache.prefill = torch.arange(end, end + block, device=device), False
        later = self._logits(
            torch.tensor(answer_ids, device=device).expand(rows, -1),
            mask,
            lengths[:, None] + offset[None, :],
            cache,
            0,
        )  # (rows, block, vocab): block position i predicts the token after it
        wanted = torch.tensor([t for c in choices for t in c[1:]], device=device)
        picked = later.float().gather(2, wanted[None, :, None].expand(rows, -1, 1))[..., 0]
        picked -= torch.logsumexp(later.float(), dim=-1)
        return scores.index_add_(1, owner, picked).tolist()

    def _logits(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any, keep: int
    ) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            **{cache_argument(self.model): cache},
        )
        return out.logits  # type: ignore[no-any-return]
