"""The prefix-cached generation engine against transformers' `generate` and a plain forward pass,
on a tiny random model with the real tokenizer in fp32: the same greedy tokens, the same sampled
log-probabilities, the same samples for a seed, an adapter honoured, bad input refused."""

from __future__ import annotations

from collections import deque

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from entropic import config as config_module
from entropic import generation, models
from entropic.config import RunConfig
from entropic.evaluate import evaluate
from entropic.generation import (
    ENGINES,
    Sampling,
    _admit,
    chat_prompt_ids,
    common_prefix_length,
    generate,
    generated_lengths,
    stop_token_ids,
)
from entropic.models import RANDOM_SHAPES
from entropic.prompting import build_messages
from tests.conftest import compose_config, sliding_window_model

# Questions of different token lengths, so the suffixes after the shared prefix differ.
QUESTIONS = [
    "What is the capital of France?",
    "In which country is the city of Porto?",
    "What currency is used in Japan?",
    "Capital of Peru?",
    "Which ocean borders the country of Mozambique on its east coast?",
]
MAX_NEW_TOKENS = 12


def tiny_model(tokenizer):
    """model=tiny_random's shape (2 layers, fp32) with weights ten times larger and untied.

    tiny_random itself (initialiser std 0.02, tied embeddings) greedily repeats its last input
    token: every answer would be "\n\n\n...", and a wrong mask or position would go unseen. With
    these weights the answers depend on the whole prompt: each question gets its own tokens,
    with clear margins between the top two logits.
    """
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **RANDOM_SHAPES["tiny"],
    )
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def tiny():
    """The tiny model, the real (SmolLM2) tokenizer and the default chat prompts."""
    config = RunConfig.from_hydra(compose_config(["model=tiny_random"]))
    tokenizer = models.load_tokenizer(models.resolve_checkpoint(config.model))
    prompts = chat_prompt_ids(tokenizer, [build_messages(q, config.prompt) for q in QUESTIONS])
    return tiny_model(tokenizer), tokenizer, prompts, config


def run(model, tokenizer, prompts, engine, **settings):
    settings.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    settings.setdefault("stop_ids", stop_token_ids(model, tokenizer))
    return generate(model, prompts, engine=engine, pad_token_id=tokenizer.pad_token_id, **settings)


def stops_seen_mid_answer(reference: list[list[int]]) -> set[int]:
    """Tokens the greedy answers write at different steps: as stop tokens they end rows at
    different steps, so finished rows leave a batch while others go on. (The random model never
    writes its EOS.)"""
    return {reference[0][2], reference[3][6]}


@pytest.mark.parametrize(
    ("batch_size", "stopping"),
    [
        # every row runs to max_new_tokens in one batch
        (32, False),
        # batches of two prompts: one prefix cache serves every suffix prefill
        (2, False),
        # rows stop at different steps: finished rows are dropped mid-batch
        (32, True),
        # both: prompts join the batch as rows stop
        (3, True),
    ],
)
def test_greedy_tokens_equal_transformers_generate(tiny, batch_size, stopping):
    model, tokenizer, prompts, _ = tiny
    stops = stop_token_ids(model, tokenizer)
    if stopping:
        reference = run(model, tokenizer, prompts, "hf", stop_ids=set()).token_ids
        stops = stops_seen_mid_answer(reference)
    expected = run(model, tokenizer, prompts, "hf", stop_ids=stops, batch_size=batch_size)
    got = run(model, tokenizer, prompts, "prefix_cache", stop_ids=stops, batch_size=batch_size)
    assert got.token_ids == expected.token_ids
    # why: the system message and few-shot turns are shared; only the question is not
    assert got.prefix_length > 0.8 * min(len(ids) for ids in prompts)
    if stopping:
        lengths = {len(ids) for ids in got.token_ids}
        assert len(lengths) > 2 and min(lengths) < MAX_NEW_TOKENS  # stopped at different steps


@pytest.mark.parametrize("batch_size", [2, 3])
def test_rows_joining_and_leaving_the_batch_keep_generates_tokens(tiny, monkeypatch, batch_size):
    # why: in a batch smaller than the prompts, a prompt joins as rows stop: padding is inserted
    # after the prefix to align it, and cut again once no row attends to it. Cutting waits for
    # TRIM_COLUMNS unused columns, more than these short answers leave, so it is set to 1 here.
    monkeypatch.setattr(generation, "TRIM_COLUMNS", 1)
    model, tokenizer, prompts, _ = tiny
    stops = stops_seen_mid_answer(run(model, tokenizer, prompts, "hf", stop_ids=set()).token_ids)
    expected = run(model, tokenizer, prompts, "hf", stop_ids=stops, batch_size=batch_size)
    got = run(model, tokenizer, prompts, "prefix_cache", stop_ids=stops, batch_size=batch_size)
    assert got.token_ids == expected.token_ids


# Token-id prompts whose shared prefix is an edge case (ids from the real vocabulary).
PREFIX_CASES = [
    # nothing shared: no prefix cache at all, every prompt prefilled in full
    ([[5, 6, 7], [8, 6, 7, 9]], 0),
    # one prompt is the start of another: the shorter keeps its last token for its own logits
    ([[5, 6, 7], [5, 6, 7, 8, 9]], 2),
    # identical prompts (TRL repeats each one G times): prefilled once, each row decoded
    ([[5, 6, 7, 8], [5, 6, 7, 8], [5, 6, 9]], 2),
    # a single prompt: everything but its last token is the prefix
    ([[5, 6, 7, 8]], 3),
    # a one-token prompt: nothing left to share
    ([[5], [5, 6]], 0),
]


@pytest.mark.parametrize(("prompts", "prefix_length"), PREFIX_CASES)
def test_shared_prefix_edge_cases_give_generates_tokens(tiny, prompts, prefix_length):
    model, tokenizer, _, _ = tiny
    expected = run(model, tokenizer, prompts, "hf")
    got = run(model, tokenizer, prompts, "prefix_cache", batch_size=2)
    assert got.prefix_length == prefix_length
    assert got.token_ids == expected.token_ids


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ([[1, 2, 3], [1, 2, 4]], 2),  # the common start
        ([[1, 2, 3], [1, 2, 3]], 2),  # identical: one token left to each
        ([[1, 2], [3, 4]], 0),  # nothing in common
        ([[1], [1, 2]], 0),  # the shortest prompt is one token: it keeps it
    ],
)
def test_common_prefix_length(prompts, expected):
    assert common_prefix_length(prompts) == expected


EOS = 2


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ([5, 6, EOS, EOS], 3),  # stops at its first EOS, which counts: its probability is sampled
        ([5, 6, 7, 8], 4),  # never stopped: every position was generated
        ([EOS, EOS, EOS, EOS], 1),  # stopped at once; the padding after it is not generated
        ([5, EOS, 9, EOS], 2),  # only the first stop token ends the sequence
    ],
)
def test_generated_lengths(row, expected):
    assert generated_lengths(torch.tensor([row]), torch.tensor([EOS])).tolist() == [expected]


@pytest.mark.parametrize(
    ("owed", "free", "partial", "admitted", "left"),
    [
        # evaluation: one row per prompt, as many prompts as there are free rows
        ([1, 1, 1], 2, False, [1, 1], [1]),
        # GRPO: whole groups of G only, so each prompt is prefilled once
        ([4, 4, 4], 6, False, [4], [4, 4]),
        # a group that does not fit waits for the batch to shrink further
        ([4, 4], 3, False, [], [4, 4]),
        # ...unless the batch is empty: then a group bigger than a batch starts in part
        ([8, 1], 4, True, [4], [4, 1]),
    ],
)
def test_prompts_join_the_batch_whole_while_they_fit(owed, free, partial, admitted, left):
    waiting = deque((prompt, list(range(count))) for prompt, count in enumerate(owed))
    got = _admit(waiting, free, partial)
    assert [len(rows) for _, rows in got] == admitted
    assert [len(rows) for _, rows in waiting] == left


SAMPLINGS = [
    # the model's own distribution (GRPO and the stability study at temperature 1)
    Sampling(temperature=1.0),
    # temperature and nucleus: the log-probabilities are of the processed distribution
    Sampling(temperature=0.7, top_p=0.9),
    # top-k as well
    Sampling(temperature=1.3, top_k=50),
]


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_sampled_logprobs_equal_a_forward_pass(tiny, engine, sampling):
    model, tokenizer, prompts, _ = tiny
    prompts = prompts[:3]
    torch.manual_seed(0)
    got = run(
        model,
        tokenizer,
        prompts,
        engine,
        samples_per_prompt=3,
        sampling=sampling,
        # fewer rows than a prompt's samples: one prefill serves two decode batches
        batch_size=2,
        logprobs=True,
    )
    assert len(got.token_ids) == len(got.logprobs) == 9
    warpers = sampling.warpers()
    for row, (completion, logprobs) in enumerate(zip(got.token_ids, got.logprobs, strict=True)):
        prompt = prompts[row // 3]  # prompt-major: a prompt's samples side by side
        assert len(logprobs) == len(completion)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
        scores = warpers(None, logits.float()).log_softmax(dim=-1)
        expected = scores[torch.arange(len(completion)), torch.tensor(completion)]
        torch.testing.assert_close(torch.tensor(logprobs), expected, atol=1e-4, rtol=0)


def test_sampling_is_reproducible_for_a_seed(tiny):
    model, tokenizer, prompts, _ = tiny
    settings = {"samples_per_prompt": 4, "sampling": Sampling(temperature=1.0), "logprobs": True}

    def sampled(seed):
        torch.manual_seed(seed)
        return run(model, tokenizer, prompts, "prefix_cache", batch_size=8, **settings)

    first, again, other = sampled(3), sampled(3), sampled(4)
    assert first.token_ids == again.token_ids and first.logprobs == again.logprobs
    # why: the seed is what decides the samples, not something fixed inside the engine
    assert first.token_ids != other.token_ids
    # why: samples of one prompt differ from each other (each row draws its own tokens)
    assert len({tuple(ids) for ids in first.token_ids[:4]}) > 1


def test_a_lora_adapter_is_honoured(tiny):
    base, tokenizer, prompts, _ = tiny
    base_tokens = run(base, tokenizer, prompts, "prefix_cache").token_ids
    # random B matrices (peft starts them at zero), so the adapter changes the outputs
    adapted = get_peft_model(
        tiny_model(tokenizer),
        LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False),
    )
    expected = run(adapted, tokenizer, prompts, "hf").token_ids
    got = run(adapted, tokenizer, prompts, "prefix_cache").token_ids
    assert got == expected
    assert got != base_tokens  # why: the adapter really took part


def test_the_model_leaves_in_the_mode_it_came_in(tiny):
    # why: TRL generates from the training model mid-step, then trains it
    model, tokenizer, prompts, _ = tiny
    model.train()
    try:
        run(model, tokenizer, prompts[:1], "prefix_cache")
        assert model.training
    finally:
        model.eval()


def test_evaluate_gives_the_same_predictions_with_either_engine(tiny):
    model, tokenizer, _, config = tiny
    questions = datasets.Dataset.from_dict(
        {
            "question_id": [f"q{i}" for i in range(len(QUESTIONS))],
            "question": QUESTIONS,
            "answers": [["Paris"], ["Portugal"], ["Yen"], ["Lima"], ["Indian Ocean"]],
        }
    )
    tables = {
        engine: evaluate(model, tokenizer, questions, config.prompt, config.eval, engine)[0]
        for engine in ENGINES
    }
    assert tables["prefix_cache"].equals(tables["hf"])


def test_the_config_offers_every_engine():
    # why: the config validates names without importing torch; the two lists must agree
    assert set(config_module.GENERATION_ENGINES) == set(ENGINES)


BAD_INPUT = [
    ({"prompts": []}, "prompt_ids"),  # nothing to generate from
    ({"prompts": [[5, 6], []]}, "prompt_ids"),  # an empty prompt has no last token to continue
    ({"samples_per_prompt": 0}, "samples_per_prompt"),  # G < 1
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"batch_size": 0}, "batch_size"),  # a batch of no rows would never finish
    ({"prompts": [[5] * 2040]}, "context"),  # 2040 + 12 new tokens > the tiny model's 2048
    ({"sampling": Sampling(temperature=0.0)}, "temperature"),  # greedy is temperature None
    ({"sampling": Sampling(temperature=1.0, top_p=0.0)}, "top_p"),  # keeps no token
    ({"sampling": Sampling(temperature=1.0, top_k=-1)}, "top_k"),
    ({"engine": "vllm"}, "engine"),  # a typo lists the engines
]


@pytest.mark.parametrize(("change", "named"), BAD_INPUT)
def test_bad_input_is_refused_before_any_forward_pass(tiny, change, named):
    model, tokenizer, prompts, _ = tiny
    change = dict(change)
    prompts = change.pop("prompts", prompts)
    engine = change.pop("engine", "prefix_cache")
    with pytest.raises(ValueError, match=named) as err:
        run(model, tokenizer, prompts, engine, **change)
    assert "Fix:" in str(err.value)


def test_a_sliding_window_model_is_refused_by_the_prefix_engine(tiny):
    # why: with padding inside the sequence, a window counted in columns is not the model's
    _, tokenizer, prompts, _ = tiny
    torch.manual_seed(0)
    model = sliding_window_model(len(tokenizer))
    with pytest.raises(ValueError, match="generation=hf"):
        run(model, tokenizer, prompts, "prefix_cache")
    # transformers' generate still serves it
    assert len(run(model, tokenizer, prompts, "hf").token_ids) == len(prompts)
