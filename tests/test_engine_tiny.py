"""The HF engine on a tiny random-weight Llama built offline in a fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pervade.core.items import ItemError
from pervade.engines import Choice, Generation
from pervade.engines import device as device_module
from pervade.engines.device import cpu_has_fast_bf16, pick_device, pick_dtype
from pervade.engines.hf import HFEngine

MAX_POSITIONS = 64
CHOICES = ["SUPPORTS", "REFUTES", "NOT ENOUGH INFO"]
# Deliberately not in length order, so length-sorted batches must be put back in order.
PROMPTS = [
    "the claim is that the cat sat on the mat",
    "cat",
    "evidence: the mat is red. claim: the mat",
    "the evidence",
    "a claim about evidence and the cat",
]
SENTENCES = [
    "the cat sat on the mat",
    "the evidence supports the claim",
    "the evidence refutes the claim",
    "there is not enough info to tell",
    "SUPPORTS REFUTES NOT ENOUGH INFO",
    "claim: evidence: answer with one label",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # A model this small gains nothing from intra-op threads, and on a busy machine their
    # synchronisation makes each matmul a hundred times slower than on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(SENTENCES * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", eos_token="<eos>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        # Large random weights make every score depend strongly on context, so a mask or
        # position mistake in the one-pass scoring cannot hide under the 1e-3 tolerance.
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) < 10_000_000
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> HFEngine:
    return HFEngine.load(model_dir, device="cpu", dtype="float32", batch_size=2)


def token_ids(engine: HFEngine, text: str, special: bool = True) -> list[int]:
    return list(engine.tokenizer(text, add_special_tokens=special)["input_ids"])


@torch.inference_mode()
def naive_score(engine: HFEngine, prompt: str, choice: str) -> float:
    """Log-likelihood of `choice` after `prompt`, from a plain forward pass of one sequence."""
    prompt_ids = token_ids(engine, prompt)
    choice_ids = token_ids(engine, choice, special=False)
    logits = engine.model(torch.tensor([prompt_ids + choice_ids])).logits[0]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return sum(
        logprobs[len(prompt_ids) - 1 + j, token].item() for j, token in enumerate(choice_ids)
    )


@torch.inference_mode()
def naive_generate(engine: HFEngine, prompt: str, max_new_tokens: int) -> tuple[str, int]:
    ids = torch.tensor([token_ids(engine, prompt)])
    out = engine.model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=engine.tokenizer.pad_token_id,
    )
    new = out[0, ids.shape[1] :].tolist()
    eos = engine.tokenizer.eos_token_id
    kept = new[: new.index(eos)] if eos in new else new
    return engine.tokenizer.decode(kept, skip_special_tokens=True), len(kept)


@pytest.fixture
def batch_spy(engine: HFEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[int]]]:
    """The prompt lengths of every batch scored, in the order scored."""
    seen: list[list[int]] = []
    original = engine._score_batch

    def spy(prompts: list[list[int]], choices: list[list[int]]) -> list[list[float]]:
        seen.append([len(p) for p in prompts])
        return original(prompts, choices)

    monkeypatch.setattr(engine, "_score_batch", spy)
    yield seen


# -- choose ------------------------------------------------------------------------------


def test_fixture_is_a_real_test_of_scoring(engine: HFEngine) -> None:
    lengths = [len(token_ids(engine, c, special=False)) for c in CHOICES]
    assert max(lengths) > 1, "multi-token choices are needed"
    assert len(set(lengths)) > 1, "choices of different lengths are needed"
    prompt_lengths = [len(token_ids(engine, p)) for p in PROMPTS]
    assert prompt_lengths != sorted(prompt_lengths)
    assert len(set(prompt_lengths)) == len(PROMPTS)
    # The scores depend on the prompt well beyond the tolerance.
    first = [naive_score(engine, p, CHOICES[2]) for p in PROMPTS]
    assert max(first) - min(first) > 0.1
    assert engine.model.dtype == torch.float32


def test_choose_equals_naive_scoring_in_input_order(
    engine: HFEngine, batch_spy: list[list[int]]
) -> None:
    results = engine.choose(PROMPTS, CHOICES)
    assert len(results) == len(PROMPTS)
    for prompt, got in zip(PROMPTS, results, strict=True):
        assert isinstance(got, Choice)
        assert list(got.scores) == CHOICES
        expected = {c: naive_score(engine, prompt, c) for c in CHOICES}
        for choice in CHOICES:
            assert got.scores[choice] == pytest.approx(expected[choice], abs=1e-3), (
                prompt,
                choice,
            )
        assert got.best == max(expected, key=expected.__getitem__)
        assert got.prompt_tokens == len(token_ids(engine, prompt))
    # batch_size=2 over 5 prompts: three batches, shortest prompts first.
    assert [len(b) for b in batch_spy] == [2, 2, 1]
    flat = [n for batch in batch_spy for n in batch]
    assert flat == sorted(len(token_ids(engine, p)) for p in PROMPTS)


def test_choose_is_independent_of_batch_company(engine: HFEngine) -> None:
    together = engine.choose(PROMPTS, CHOICES)
    for prompt, got in zip(PROMPTS, together, strict=True):
        [alone] = engine.choose([prompt], CHOICES)
        assert isinstance(alone, Choice) and isinstance(got, Choice)
        for choice in CHOICES:
            assert got.scores[choice] == pytest.approx(alone.scores[choice], abs=1e-3)


def test_prompt_too_long_is_an_item_error(engine: HFEngine) -> None:
    long_prompt = " ".join(["evidence"] * 80)
    assert len(token_ids(engine, long_prompt)) > MAX_POSITIONS
    prompts = [PROMPTS[0], long_prompt, PROMPTS[1]]
    results = engine.choose(prompts, CHOICES)
    error = results[1]
    assert isinstance(error, ItemError)
    assert error.field == "prompt"
    assert f"at most {MAX_POSITIONS}" in error.message
    for index in (0, 2):
        got = results[index]
        assert isinstance(got, Choice)
        assert got.scores[CHOICES[0]] == pytest.approx(
            naive_score(engine, prompts[index], CHOICES[0]), abs=1e-3
        )
    # Prompt plus the answer tokens must fit, not the prompt alone.
    answer_tokens = sum(len(token_ids(engine, c, special=False)) for c in CHOICES)
    words = ["x"] * 200
    edge = next(
        " ".join(words[:n])
        for n in range(1, 200)
        if len(token_ids(engine, " ".join(words[:n]))) + answer_tokens > MAX_POSITIONS
    )
    assert len(token_ids(engine, edge)) <= MAX_POSITIONS
    assert isinstance(engine.choose([edge], CHOICES)[0], ItemError)


def test_choose_rejects_bad_choices(engine: HFEngine) -> None:
    with pytest.raises(ValueError, match="at least two choices"):
        engine.choose(["cat"], ["SUPPORTS"])
    with pytest.raises(ValueError, match="at least one token"):
        engine.choose(["cat"], ["SUPPORTS", ""])


def test_max_length_and_count_tokens(engine: HFEngine) -> None:
    assert engine.max_length == MAX_POSITIONS
    assert engine.count_tokens(PROMPTS) == [len(token_ids(engine, p)) for p in PROMPTS]


# -- generate ----------------------------------------------------------------------------


def test_generate_greedy_matches_plain_generate(engine: HFEngine) -> None:
    for prompt in (PROMPTS[0], PROMPTS[1]):
        [got] = engine.generate([prompt], max_new_tokens=6)
        assert isinstance(got, Generation)
        text, count = naive_generate(engine, prompt, 6)
        assert (got.text, got.new_tokens) == (text, count)
        assert got.prompt_tokens == len(token_ids(engine, prompt))


def test_generate_is_deterministic_and_in_input_order(engine: HFEngine) -> None:
    first = engine.generate(PROMPTS, max_new_tokens=5)
    assert engine.generate(PROMPTS, max_new_tokens=5) == first
    for prompt, got in zip(PROMPTS, first, strict=True):
        assert isinstance(got, Generation)
        assert 0 <= got.new_tokens <= 5
        # Left padding in a length-sorted batch changes nothing: same as the prompt alone.
        assert engine.generate([prompt], max_new_tokens=5) == [got]
    assert len({g.text for g in first if isinstance(g, Generation)}) > 1


def test_generate_stops_at_eos(engine: HFEngine) -> None:
    # Make a token that greedy decoding emits count as end-of-sequence: the text must stop
    # just before it and new_tokens must not count it.
    prompt = PROMPTS[0]
    ids = torch.tensor([token_ids(engine, prompt)])
    with torch.inference_mode():
        produced = engine.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=engine.tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()
    stop = next(k for k in range(1, len(produced)) if produced[k] not in produced[:k])
    config: Any = engine.model.generation_config
    original = config.eos_token_id
    config.eos_token_id = [engine.tokenizer.eos_token_id, produced[stop]]
    try:
        [got] = engine.generate([prompt], max_new_tokens=8)
    finally:
        config.eos_token_id = original
    assert isinstance(got, Generation)
    assert got.new_tokens == stop
    assert got.text == engine.tokenizer.decode(produced[:stop], skip_special_tokens=True)


def test_generate_too_long_prompt_is_an_item_error(engine: HFEngine) -> None:
    long_prompt = " ".join(["evidence"] * 80)
    results = engine.generate([PROMPTS[1], long_prompt], max_new_tokens=4)
    assert isinstance(results[0], Generation)
    assert isinstance(results[1], ItemError) and results[1].field == "prompt"


def test_generate_rejects_zero_new_tokens(engine: HFEngine) -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate(["cat"], max_new_tokens=0)


def test_load_rejects_a_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        HFEngine.load(tmp_path, device="cpu", dtype="float32")


def test_engine_rejects_bad_batch_settings(engine: HFEngine) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        HFEngine(engine.model, engine.tokenizer, engine.device, batch_size=0)


# -- device and dtype --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpuinfo", "fast"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 amx_bf16 amx_tile\n", True),
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n", False),
        ("processor\t: 0\nbugs\t\t: avx512_bf16\n", False),
        ("Features\t: fp asimd bf16\n", False),
        ("", False),
    ],
)
def test_cpu_has_fast_bf16(cpuinfo: str, fast: bool) -> None:
    assert cpu_has_fast_bf16(cpuinfo) is fast


def test_pick_dtype_explicit() -> None:
    cpu = torch.device("cpu")
    assert pick_dtype("float32", cpu) is torch.float32
    assert pick_dtype("bfloat16", cpu) is torch.bfloat16
    assert pick_dtype("float16", cpu) is torch.float16
    with pytest.raises(ValueError, match="dtype must be auto or one of"):
        pick_dtype("fp8", cpu)


@pytest.mark.parametrize(("fast", "dtype"), [(True, torch.bfloat16), (False, torch.float32)])
def test_pick_dtype_auto_on_cpu(
    monkeypatch: pytest.MonkeyPatch, fast: bool, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(device_module, "cpu_has_fast_bf16", lambda cpuinfo=None: fast)
    assert pick_dtype("auto", torch.device("cpu")) is dtype


@pytest.mark.parametrize(("bf16", "dtype"), [(True, torch.bfloat16), (False, torch.float16)])
def test_pick_dtype_auto_on_cuda(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, dtype: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert pick_dtype("auto", torch.device("cuda")) is dtype


def test_pick_dtype_auto_elsewhere_and_pick_device() -> None:
    assert pick_dtype("auto", torch.device("meta")) is torch.float32
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected


class _RaiseWhenBig:
    """Stands in for the model's forward: out of memory above `limit` rows per batch."""

    def __init__(self, forward: Any, limit: int) -> None:
        self.forward, self.limit, self.rows_seen = forward, limit, []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = kwargs["input_ids"].shape[0]
        self.rows_seen.append(rows)
        if rows > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.forward(*args, **kwargs)


def test_an_out_of_memory_batch_is_split_and_gives_the_same_answers(model_dir: Path) -> None:
    plain = HFEngine.load(model_dir, device="cpu", dtype="float32", batch_size=8)
    expected = plain.choose(PROMPTS, CHOICES)
    tight = HFEngine.load(model_dir, device="cpu", dtype="float32", batch_size=8)
    guard = _RaiseWhenBig(tight.model.forward, limit=2)
    tight.model.forward = guard
    got = tight.choose(PROMPTS, CHOICES)
    assert [g.best for g in got] == [e.best for e in expected]  # type: ignore[union-attr]
    for g, e in zip(got, expected, strict=True):
        assert g.scores == pytest.approx(e.scores, abs=1e-4)  # type: ignore[union-attr]
    assert guard.rows_seen == [5, 2, 3, 1, 2]  # 5 -> 2 + 3 -> 2 + (1 + 2)
    assert tight.oom_splits >= 1


def test_a_row_that_runs_out_of_memory_alone_fails_alone(model_dir: Path) -> None:
    engine = HFEngine.load(model_dir, device="cpu", dtype="float32", batch_size=8)
    engine.model.forward = _RaiseWhenBig(engine.model.forward, limit=0)
    out = engine.choose(PROMPTS[:2], CHOICES)
    assert all(isinstance(o, ItemError) and "out of memory" in o.message for o in out)


def test_engine_loads_its_weights_through_the_fast_loader(engine: HFEngine) -> None:
    report = engine.load_report
    assert report is not None and report.method == "fast" and report.reason is None
    assert report.bytes > 0 and 0 < report.seconds <= engine.load_seconds


def test_device_bytes_counts_every_weight_once(engine: HFEngine) -> None:
    tensors = {t.data_ptr(): t for t in (*engine.model.parameters(), *engine.model.buffers())}
    expected = sum(t.numel() * t.element_size() for t in tensors.values())
    assert engine.model.config.tie_word_embeddings == (
        engine.model.get_input_embeddings().weight.data_ptr()
        == engine.model.get_output_embeddings().weight.data_ptr()
    )
    assert engine.device_bytes == expected > 0
