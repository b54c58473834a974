"""Static-cache generation against `model.generate` on small random Llamas."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from pervade.engines.fast_generate import FastGenerator, StaticCache
from pervade.engines.hf import HFEngine

VOCAB = 96
PAD = 0


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_llama(device: str = "cpu", kv_heads: int = 2, seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        intermediate_size=128,
        max_position_embeddings=256,
        pad_token_id=PAD,
        eos_token_id=1,
        bos_token_id=None,
        initializer_range=0.3,  # peaked logits: a position or mask slip changes the argmax
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model: Any = LlamaForCausalLM(config)
    return model.eval()


def left_padded(lengths: list[int], seed: int, device: str = "cpu") -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    attention = torch.zeros((len(lengths), width), dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, width - n :] = torch.randint(2, VOCAB, (n,), generator=gen)
        attention[r, width - n :] = 1
    return ids.to(device), attention.to(device)


def plain(model: Any, ids: torch.Tensor, attention: torch.Tensor, new: int, eos: int) -> Any:
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=attention,
            max_new_tokens=new,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=PAD,
            eos_token_id=eos,
        )
    return out[:, ids.shape[1] :]


def same_tokens(fast: torch.Tensor, reference: torch.Tensor) -> None:
    """Equal where both have columns; past the reference's end (every row finished), pads."""
    n = reference.shape[1]
    assert fast.shape[1] >= n
    assert torch.equal(fast[:, :n].cpu(), reference.cpu())
    assert bool((fast[:, n:] == PAD).all())


@pytest.mark.parametrize("kv_heads", [1, 2, 4])
@pytest.mark.parametrize("lengths", [[7], [5, 12, 1, 9], [16, 16, 16]])
def test_greedy_equals_plain_generate(kv_heads: int, lengths: list[int]) -> None:
    model = tiny_llama(kv_heads=kv_heads)
    ids, attention = left_padded(lengths, seed=len(lengths) + kv_heads)
    reference = plain(model, ids, attention, 20, eos=1)
    fast = FastGenerator(model).generate(ids, attention, 20, PAD, {1})
    assert fast is not None
    same_tokens(fast, reference)


def test_rows_stop_at_their_end_token_and_pad_after() -> None:
    model = tiny_llama(seed=3)
    ids, attention = left_padded([6, 11, 3, 8], seed=7)
    free = plain(model, ids, attention, 24, eos=-1)
    eos = int(free[0, 4])  # a token row 0 emits: make it the end-of-sequence token
    reference = plain(model, ids, attention, 24, eos=eos)
    fast = FastGenerator(model).generate(ids, attention, 24, PAD, {eos})
    assert fast is not None and bool((fast == eos).any())
    same_tokens(fast, reference)


def test_buffers_are_reused_across_batches_of_one_shape() -> None:
    model = tiny_llama(seed=1)
    fast = FastGenerator(model)
    for seed, lengths in enumerate([[4, 9], [9, 2], [30, 30]]):
        ids, attention = left_padded(lengths, seed=seed)
        got = fast.generate(ids, attention, 10, PAD, {1})
        assert got is not None
        same_tokens(got, plain(model, ids, attention, 10, eos=1))
    assert fast._decoder is not None
    fast.release()
    assert fast._decoder is None


def test_sampling_is_seeded_and_tiny_top_p_is_greedy() -> None:
    model = tiny_llama(seed=2)
    ids, attention = left_padded([5, 8, 3], seed=4)
    fast = FastGenerator(model)
    greedy = fast.generate(ids, attention, 12, PAD, set())
    nucleus = fast.generate(ids, attention, 12, PAD, set(), temperature=0.7, top_p=1e-6)
    assert greedy is not None and nucleus is not None and torch.equal(greedy, nucleus)
    draws = []
    for _ in range(2):
        torch.manual_seed(11)
        drawn = fast.generate(ids, attention, 12, PAD, set(), temperature=5.0)
        assert drawn is not None
        draws.append(drawn)
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], greedy)  # a hot temperature leaves the greedy path
    assert bool(((draws[0] >= 0) & (draws[0] < VOCAB)).all())


def test_logits_processors_in_the_generation_config_leave_it_to_generate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = tiny_llama()
    model.generation_config.repetition_penalty = 1.3
    fast = FastGenerator(model)
    ids, attention = left_padded([4], seed=0)
    with caplog.at_level(logging.WARNING, logger="pervade.engines.fast_generate"):
        assert fast.generate(ids, attention, 4, PAD, {1}) is None
        assert fast.generate(ids, attention, 4, PAD, {1}) is None
    assert [r.message for r in caplog.records].count(
        "fast generation not used for this model (generation_config.repetition_penalty)"
    ) == 1


def test_a_failure_falls_back_once_and_out_of_memory_propagates(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_llama()
    ids, attention = left_padded([4, 6], seed=0)
    fast = FastGenerator(model)

    def broken(self: StaticCache, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(StaticCache, "update", broken)
    with caplog.at_level(logging.WARNING, logger="pervade.engines.fast_generate"):
        assert fast.generate(ids, attention, 4, PAD, {1}) is None
    assert not fast.enabled and "boom" in caplog.text
    assert model.config._attn_implementation == "sdpa"  # restored after the failure

    def oom(self: StaticCache, *args: Any, **kwargs: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(StaticCache, "update", oom)
    with pytest.raises(torch.OutOfMemoryError):
        FastGenerator(model).generate(ids, attention, 4, PAD, {1})


def word_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast: Any = PreTrainedTokenizerFast
    return fast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")


def test_engine_generate_is_the_same_with_and_without_the_fast_path() -> None:
    model = tiny_llama(seed=5)
    engine = HFEngine(model, word_tokenizer(), torch.device("cpu"), batch_size=3)
    assert engine.fast is None  # on the CPU the engine uses model.generate
    prompts = [
        " ".join(f"w{(7 * i + j) % 90 + 2}" for j in range(n))
        for i, n in enumerate([3, 11, 6, 1, 8, 14, 2])
    ]
    slow = engine.generate(prompts, max_new_tokens=9)
    engine.fast = FastGenerator(model)
    quick = engine.generate(prompts, max_new_tokens=9)
    assert quick == slow
    assert engine.fast._decoder is None  # released at the end of the call


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_steps_equal_eager_steps_and_plain_generate(dtype: torch.dtype) -> None:
    model = tiny_llama("cuda").to(dtype)
    ids, attention = left_padded([5, 17, 2, 11, 9, 30], seed=9, device="cuda")
    graphed = FastGenerator(model)
    eager = FastGenerator(model, graphs=False)
    got = None
    for _ in range(2):  # the second call replays the step captured by the first
        got = graphed.generate(ids, attention, 16, PAD, {1})
        assert got is not None and graphed._decoder is not None
        assert graphed._decoder.graph is not None
        expected = eager.generate(ids, attention, 16, PAD, {1})
        assert expected is not None and torch.equal(got, expected)
    if dtype == torch.float32 and got is not None:
        same_tokens(got, plain(model, ids, attention, 16, eos=1))
