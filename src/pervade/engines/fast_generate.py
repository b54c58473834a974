"""Generation with a static KV cache and, on CUDA, a graph-captured decode step.

`model.generate` of transformers spends most of a decode step outside the matrix units: it
grows its cache by concatenation, expands grouped key/value heads to every query head, and
launches a few hundred small kernels from Python, one step at a time, with a host sync after
each. Here the keys and values of every layer live in buffers allocated once per batch shape;
a decode step reads each grouped key/value head once (the query heads of a group become the
rows of one attention call); and on CUDA the step is captured once as a CUDA graph and then
replayed, one launch per token.

Greedy output equals `model.generate`'s token for token (the tests check it in float32);
sampling follows the same temperature, top-k and top-p rules with its own random draws.
Anything this module does not handle (beam search, logits processors set in the model's
generation config, sliding-window or non-Llama-like models) is left to `model.generate`, and
so is any failure other than running out of memory, logged once.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

log = logging.getLogger(__name__)

ATTENTION = "pervade_sdpa"
# Families whose every layer is full causal attention that calls `cache.update(k, v, layer)`.
FAMILIES = frozenset({"llama", "mistral", "qwen2", "qwen3"})
# Generation-config fields that add logits processors, with their neutral values.
NEUTRAL: dict[str, tuple[object, ...]] = {
    "num_beams": (None, 1),
    "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0),
    "typical_p": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "min_p": (None,),
    "epsilon_cutoff": (None, 0.0),
    "eta_cutoff": (None, 0.0),
    "bad_words_ids": (None,),
    "sequence_bias": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "exponential_decay_length_penalty": (None,),
}
ROUND = 64  # cache length granularity: neighbouring batch shapes share one captured step


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA, except that one query token per row attends per key/value head group.

    transformers repeats every key/value head for each query head of its group before a
    masked SDPA call; in a decode step that copies the whole cache several times over.
    """
    groups = int(getattr(module, "num_key_value_groups", 1))
    plain = (
        query.shape[2] != 1
        or groups == 1
        or dropout != 0.0
        or attention_mask is None
        or attention_mask.shape[1] != 1
        or kwargs.get("softcap") is not None
        or kwargs.get("sliding_window") is not None
    )
    if plain:
        out: tuple[torch.Tensor, None] = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
        return out
    rows, heads, _, dim = query.shape
    folded = query.reshape(rows, heads // groups, groups, dim)
    attended = F.scaled_dot_product_attention(
        folded, key, value, attn_mask=attention_mask, scale=scaling
    )
    return attended.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, _attention)


class StaticCache:
    """Keys and values of every layer in buffers of a fixed length; `at` says where the
    tokens of the next forward pass go (column indices, a device tensor).

    In `prefill`, attention sees only the tokens of the pass itself (the prompt), so that
    transformers builds the padding mask and, where no row is padded, SDPA runs its causal
    flash kernel; otherwise it sees every column, masked by the caller.
    """

    def __init__(self, layers: int, length: int, at: torch.Tensor) -> None:
        self.length = length
        self.at = at
        self.prefill = False
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            rows, heads = key.shape[:2]
            keys = key.new_zeros((rows, heads, self.length, key.shape[-1]))
            values = value.new_zeros((rows, heads, self.length, value.shape[-1]))
            self.keys[layer], self.values[layer] = keys, values
        keys.index_copy_(2, self.at, key)
        values.index_copy_(2, self.at, value)
        return (key, value) if self.prefill else (keys, values)

    def get_seq_length(self, layer: int = 0) -> int:
        return 0  # positions are always passed explicitly

    def get_query_offset(self, layer: int = 0) -> int:
        return 0

    def get_mask_sizes(self, query: int | torch.Tensor, layer: int = 0) -> tuple[int, int]:
        queries = query if isinstance(query, int) else int(query.shape[0])
        return (queries if self.prefill else self.length), 0


def cache_argument(model: Any) -> str:
    """The name under which this transformers version's forward takes a cache."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def unsupported(model: Any) -> str | None:
    """Why `StaticCache` does not fit this model's attention, or None."""
    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES:
        return f"model type {getattr(config, 'model_type', None)!r}"
    if getattr(config, "sliding_window", None) or getattr(config, "use_sliding_window", False):
        return "sliding-window attention"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return "layers other than full attention"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION):
        return f"attention {getattr(config, '_attn_implementation', None)!r}"
    return None


class _Decoder:
    """The state of one batch shape: cache, static step inputs and, on CUDA, the graph."""

    def __init__(self, model: Any, rows: int, length: int, device: torch.device) -> None:
        self.model, self.rows, self.length = model, rows, length
        self.ids = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.mask = torch.zeros((rows, 1, 1, length), dtype=torch.bool, device=device)
        self.at = torch.zeros(1, dtype=torch.long, device=device)
        self.cache = StaticCache(model.config.num_hidden_layers, length, self.at)
        self.cache_arg = cache_argument(model)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> Any:
        return self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: self.cache},
        ).logits[:, -1, :]

    def step(self, capture: bool) -> torch.Tensor:
        """One decode step from the static inputs; the logits of the new token."""
        if self.graph is not None and self.logits is not None:
            self.graph.replay()
            return self.logits
        if not capture:
            return self.forward(self.ids, self.positions, self.mask)  # type: ignore[no-any-return]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: same writes as the step
            self.forward(self.ids, self.positions, self.mask)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.forward(self.ids, self.positions, self.mask)
        self.graph = graph
        graph.replay()
        return self.logits


class FastGenerator:
    """Static-cache generation for one model; `generate` returns None where it does not apply."""

    def __init__(self, model: Any, graphs: bool | None = None) -> None:
        self.model = model
        self.graphs = graphs  # None: on CUDA
        self.enabled = True
        self._decoder: _Decoder | None = None

    def supported(self) -> str | None:
        """Why this model is left to `model.generate`, or None."""
        reason = unsupported(self.model)
        generation = getattr(self.model, "generation_config", None)
        for name, neutral in NEUTRAL.items():
            if reason is None and getattr(generation, name, None) not in neutral:
                reason = f"generation_config.{name}"
        return reason

    def release(self) -> None:
        """Free the cache and the captured step (kept between the batches of one call)."""
        self._decoder = None

    @torch.inference_mode()
    def generate(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        max_new_tokens: int,
        pad_id: int,
        eos_ids: set[int],
        temperature: float = 0.0,
        top_p: float = 1.0,
    ) -> torch.Tensor | None:
        """New tokens (rows × at most max_new_tokens) for left-padded `ids`; after a row's
        end-of-sequence token, `pad_id`. None: use `model.generate` instead."""
        if not self.enabled:
            return None
        reason = self.supported()
        if reason is not None:
            self._disable(f"not used for this model ({reason})")
            return None
        config = self.model.config
        previous = config._attn_implementation
        args = (ids, attention, max_new_tokens, pad_id, eos_ids, temperature, top_p)
        try:
            try:
                return self._generate(*args)
            except Exception as exc:
                if is_oom(exc) or self.graphs is False or ids.device.type != "cuda":
                    raise
                self._decoder = None
                config._attn_implementation = previous
                log.warning("fast generation: no CUDA graph (%s); decode steps run eagerly", exc)
                self.graphs = False
                return self._generate(*args)
        except Exception as exc:
            self._decoder = None
            if is_oom(exc):
                raise
            self._disable(f"failed ({type(exc).__name__}: {exc}); using model.generate")
            return None
        finally:
            config._attn_implementation = previous

    def _disable(self, why: str) -> None:
        self.enabled = False
        log.warning("fast generation %s", why)

    def _generate(
        self,
        ids: torch.Tensor,
        attention: torch.Tensor,
        max_new_tokens: int,
        pad_id: int,
        eos_ids: set[int],
        temperature: float,
        top_p: float,
    ) -> torch.Tensor:
        device = ids.device
        rows, width = ids.shape
        length = -(-(width + max_new_tokens) // ROUND) * ROUND
        capture = self.graphs if self.graphs is not None else device.type == "cuda"
        decoder = self._decoder
        if decoder is None or (decoder.rows, decoder.length) != (rows, length):
            self._decoder = None  # free the old buffers before allocating new ones
            decoder = self._decoder = _Decoder(self.model, rows, length, device)
        attention = attention.to(device=device, dtype=torch.long)
        lengths = attention.sum(dim=1)
        begin = width - lengths  # first real column of each (left-padded) row
        cols = torch.arange(length, device=device)
        # Prefill as model.generate does it (positions count real tokens; padding's are 1),
        # writing the prompt's keys and values into the first `width` columns.
        positions = (attention.cumsum(dim=1) - 1).masked_fill(attention == 0, 1)
        decoder.cache.at = torch.arange(width, device=device)
        decoder.cache.prefill = True
        try:
            logits = decoder.forward(ids, positions, attention)
        finally:
            decoder.cache.prefill = False
        decoder.cache.at = decoder.at  # the step's own index, read by the captured graph
        # Decode steps see every column: each row's real ones, in the mask, and the others not.
        self.model.config._attn_implementation = ATTENTION
        decoder.mask.view(rows, length).copy_(
            (cols[None, :] >= begin[:, None]) & (cols[None, :] < width)
        )
        decoder.positions.copy_(lengths[:, None] - 1)

        eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device)
        out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
        unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        top_k = getattr(self.model.generation_config, "top_k", None)
        top_k = 50 if top_k is None else top_k  # transformers' default where unset
        for t in range(max_new_tokens):
            if t > 0:
                column = width + t - 1  # where the token chosen last goes
                decoder.ids.copy_(out[:, t - 1 : t])
                decoder.positions.add_(1)
                decoder.at.fill_(column)
                decoder.mask[:, :, :, column] = True
                logits = decoder.step(capture)
            token = _pick(logits, temperature, top_p, top_k)
            token = torch.where(unfinished, token, pad_id)
            out[:, t] = token
            if eos.numel():
                unfinished &= ~torch.isin(token, eos)
                if t % 8 == 7 and not bool(unfinished.any()):
                    return out[:, : t + 1]
        return out


def _pick(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int | None
) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[:, -1] = False  # keep at least the most likely token
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), 1)[:, 0]


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )
