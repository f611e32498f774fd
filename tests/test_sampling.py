"""Sampling K answers per question and scoring each group: hand-worked values and the real model."""

from __future__ import annotations

import math

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from entropic import models
from entropic.config import RunConfig
from entropic.generation import chat_prompt_ids
from entropic.prompting import build_messages
from entropic.sampling import (
    group_embedding_entropy,
    sample_answers,
    score_questions,
)
from entropic.semantic import build_clusterer
from tests.conftest import compose_config

# Unit vectors: "x" and "x2" point the same way, "y" is orthogonal to both.
VECTORS = {"x": np.array([1.0, 0.0]), "x2": np.array([1.0, 0.0]), "y": np.array([0.0, 1.0])}


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        # identical embeddings: one meaning, entropy 0
        (["x", "x2"], 0.0),
        # orthogonal embeddings: two equal meanings, log 2
        (["x", "y"], math.log(2)),
        # nothing parsed: K distinct meanings, the maximum log K (not NaN, not 0)
        ([None, None, None], math.log(3)),
        # one parsed answer of two is not certainty: the unparsed one is a meaning of its own
        (["x", None], math.log(2)),
        # "The" normalises to nothing, so it counts as unparsed, as the clusterers treat it
        (["x", "The"], math.log(2)),
        # kernel eigenvalues 1/2 (the two x's), 1/4, 1/4: 0.5 ln 2 + 0.5 ln 4 = 1.5 ln 2
        (["x", "x2", None, None], 1.5 * math.log(2)),
    ],
)
def test_group_embedding_entropy_counts_unparsed_answers_as_distinct(answers, expected):
    assert group_embedding_entropy(answers, VECTORS) == pytest.approx(expected, abs=1e-9)


def sample_row(question_id, answer, confidence, correct, logprob=-1.0, num_tokens=1):
    return {
        "question_id": question_id,
        "question": f"question {question_id}?",
        "sample": 0,
        "completion": "",
        "answer": answer,
        "confidence": confidence,
        "correct": correct,
        "logprob": logprob,
        "num_tokens": num_tokens,
    }


def test_score_questions_on_hand_worked_groups():
    samples = pd.DataFrame(
        [
            # q1: all agree and right -> accuracy 1, stability 1, every entropy 0
            sample_row("q1", "Paris", 0.9, True),
            sample_row("q1", "paris", 0.7, True),
            sample_row("q1", "Paris.", np.nan, True),
            # q2: two meanings 2:1, one right; one confidence missing
            sample_row("q2", "Lyon", 0.6, False, logprob=-2.0, num_tokens=2),
            sample_row("q2", "Lyon", np.nan, False, logprob=-2.0, num_tokens=2),
            sample_row("q2", "Paris", 0.2, True, logprob=-1.0, num_tokens=1),
            # q3: nothing parsed -> three singletons
            sample_row("q3", None, np.nan, False),
            sample_row("q3", None, np.nan, False),
            sample_row("q3", None, np.nan, False),
        ]
    )
    table = score_questions(samples, build_clusterer("exact")).set_index("question_id")
    assert list(table.index) == ["q1", "q2", "q3"]  # order of first appearance
    assert table["accuracy"].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    # mean over the parsed confidences only; NaN where none parsed
    assert table.loc["q1", "confidence"] == pytest.approx(0.8)
    assert table.loc["q2", "confidence"] == pytest.approx(0.4)
    assert math.isnan(table.loc["q3", "confidence"])
    assert table["format_rate"].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0])
    assert table["num_clusters"].tolist() == [1, 2, 3]
    assert table["stability"].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])
    # q2: answers' stabilities 2/3, 2/3, 1/3 -> mean 5/9
    assert table["mean_stability"].tolist() == pytest.approx([1.0, 5 / 9, 1 / 3])
    h_2_1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert table["semantic_entropy"].tolist() == pytest.approx([0.0, h_2_1, math.log(3)])
    # q2 with mean-token log-probs -1, -1, -1: equal weights, so it equals the discrete entropy
    assert table.loc["q2", "likelihood_semantic_entropy"] == pytest.approx(h_2_1)
    assert table.loc["q1", "embedding_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert table.loc["q3", "embedding_entropy"] == pytest.approx(math.log(3))
    # two distinct meanings that are not orthogonal: strictly between 0 and log 2
    assert 0 < table.loc["q2", "embedding_entropy"] < math.log(2)


QUESTIONS = datasets.Dataset.from_dict(
    {
        "question_id": ["fr", "jp"],
        "question": ["What is the capital of France?", "What is the capital of Japan?"],
        "answers": [["Paris"], ["Tokyo"]],
        "kind": ["capital", "capital"],
    }
)


@pytest.fixture(scope="module")
def smollm(embedded_checkpoint):
    tokenizer = models.load_tokenizer(embedded_checkpoint)
    model = models.load_model(embedded_checkpoint, torch.float32, "cpu")
    return model, tokenizer


# why: both engines sample the model's distribution and report the same log-probabilities (the
# CPU profile's engine in the default run, transformers' own in `make test-slow`: 30 s more on a
# 2-core Zen 1 EPYC; tests/test_generation.py holds both to a forward pass on a tiny model)
@pytest.mark.parametrize("engine", [pytest.param("hf", marks=pytest.mark.slow), "prefix_cache"])
def test_sample_answers_on_the_real_model(smollm, tmp_path, engine):
    model, tokenizer = smollm
    prompt = RunConfig.from_hydra(compose_config([], tmp_path)).prompt
    kwargs = {"k": 3, "temperature": 1.0, "max_new_tokens": 16, "batch_size": 2, "seed": 7}
    kwargs["engine"] = engine
    samples = sample_answers(model, tokenizer, QUESTIONS, prompt, **kwargs)
    assert list(samples["question_id"]) == ["fr"] * 3 + ["jp"] * 3
    assert list(samples["sample"]) == [0, 1, 2] * 2
    assert samples["num_tokens"].between(1, 16).all()
    # why: some samples stop early, so the masking after the stop token is exercised below
    assert (samples["num_tokens"] < 16).any()
    assert (samples["logprob"] < 0).all() and np.isfinite(samples["logprob"]).all()
    # why: the same seed must give the same samples (the score cache relies on it)
    again = sample_answers(model, tokenizer, QUESTIONS, prompt, **kwargs)
    pd.testing.assert_frame_equal(samples, again)

    # The sequence log-probability, recomputed by one teacher-forced forward pass over the
    # prompt and the completion's tokens (plus EOS where the sample stopped early): at
    # temperature 1 it is the plain log-softmax of the logits.
    stop = tokenizer.eos_token_id
    for row in samples.itertuples():
        messages = build_messages(QUESTIONS[int(row.question_id == "jp")]["question"], prompt)
        (prompt_ids,) = chat_prompt_ids(tokenizer, [messages])
        completion_ids = tokenizer(row.completion, add_special_tokens=False)["input_ids"]
        if len(completion_ids) < row.num_tokens:
            completion_ids = [*completion_ids, stop]
        assert len(completion_ids) == row.num_tokens  # the text round-trips to the same tokens
        ids = torch.tensor([[*prompt_ids, *completion_ids]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]
        expected = torch.log_softmax(logits.float(), dim=-1)[
            torch.arange(len(completion_ids)), torch.tensor(completion_ids)
        ].sum()
        # padding in the sampled batch (left, or between prefix and question) shifts the float
        # sums by ~1e-3
        assert row.logprob == pytest.approx(float(expected), abs=1e-2)
