"""trainer.confidence_samples=K: each answer gets K sampled confidences, and the advantage is
split between the answer (compared with the question's other answers) and its confidence
(compared with the other confidences stated for the same answer). By hand on the split, on the
config checks, and on a real GRPO step of the embedded SmolLM2, which writes the Confidence key."""

from __future__ import annotations

import math

import datasets
import pytest
import torch

from entropic import models, rollout
from entropic.config import ConfigError, RunConfig
from entropic.jobs.context import prepare
from entropic.prompting import add_prompts
from entropic.rewards import TRLReward, mark_labeled
from entropic.semantic import build_clusterer
from entropic.training import (
    AnswerThenConfidenceTrainer,
    build_trainer,
    confidence_start,
    split_advantages,
)
from tests.conftest import compose_config
from tests.test_training import QUESTIONS


def test_split_advantages_by_hand():
    # two runs of K = 2 completions; TRL's advantages (reward minus the question's mean)
    advantages = torch.tensor([0.3, 0.1, -0.2, -0.2])
    # the key starts at token 2 and 3 in the first run; the second run's answer has no key
    # (repeated), then a key at token 1
    split = split_advantages(advantages, [2, 3, None, 1], samples=2, length=5)
    # by hand: run means 0.2 and -0.2; the answer's tokens get the mean, the confidence's the
    # completion's advantage minus it (0.3 - 0.2, 0.1 - 0.2, -0.2 + 0.2)
    expected = torch.tensor(
        [
            [0.2, 0.2, 0.1, 0.1, 0.1],
            [0.2, 0.2, 0.2, -0.1, -0.1],
            [-0.2, -0.2, -0.2, -0.2, -0.2],
            [-0.2, 0.0, 0.0, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(split, expected)


def test_split_advantages_keep_each_completions_total_and_cancel_on_the_answer():
    advantages = torch.tensor([0.5, -0.1, 0.4, -0.8, 0.0, 0.0])
    starts = [1, 2, 4, 3, 2, 2]
    split = split_advantages(advantages, starts, samples=3, length=6)
    for run in (range(0, 3), range(3, 6)):
        # why: a run's K completions share one answer, so the answer's tokens carry one value,
        # the run's mean, and the confidences' parts add up to zero over the run
        answer_parts = [split[i, 0].item() for i in run]
        assert answer_parts == pytest.approx([advantages[list(run)].mean().item()] * 3)
        assert sum(split[i, starts[i]].item() for i in run) == pytest.approx(0.0, abs=1e-6)
        for i in run:
            # why: answer part + confidence part is TRL's advantage of the completion
            assert split[i, 0] + split[i, starts[i]] == pytest.approx(advantages[i].item())


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        (["trainer.num_generations=4", "trainer.confidence_samples=2"], True),
        (
            [
                "trainer.num_generations=8",
                "compute.cpu_scale.num_generations=8",
                "trainer.confidence_samples=4",
            ],
            True,
        ),
        # why: the CPU profile caps G at 4, which leaves one answer of 4 confidences
        (["trainer.num_generations=8", "trainer.confidence_samples=4"], False),
        # why: one answer per question leaves the answers nothing to be compared with (and the
        # stability reward a group of one answer)
        (["trainer.num_generations=4", "trainer.confidence_samples=4"], False),
        (["trainer.num_generations=6", "trainer.confidence_samples=4"], False),
        (["trainer.confidence_samples=0"], False),
    ],
)
def test_confidence_samples_must_split_the_group_into_answers(overrides, accepted, tmp_path):
    cfg = compose_config(
        ["compute=cpu", "trainer.per_device_train_batch_size=24", *overrides], tmp_path
    )
    if accepted:
        assert prepare(cfg).config.trainer.confidence_samples > 1
        return
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert "trainer.confidence_samples" in str(err.value)
    assert "compute.cpu_scale.num_generations" in str(err.value)  # why: the fix names the cap


def test_confidence_samples_refuse_vllm_rollouts_before_any_model_loads():
    config = RunConfig.from_hydra(
        compose_config(["rollout=vllm_colocate", "trainer.confidence_samples=2"])
    )
    with pytest.raises(ValueError, match="rollout=prefix_cache or rollout=hf"):
        rollout.check(config, "cuda")


# One GRPO step of the embedded model: 2 questions x 2 answers x 2 confidences (an fp32 step of
# 16 completions took ~55 s on a Zen 3 EPYC; 8 take half that).
EMBEDDED_STEP = [
    "compute=cpu",
    "compute.cpu_scale.num_generations=4",
    "trainer.num_generations=4",
    "trainer.confidence_samples=2",
    "trainer.per_device_train_batch_size=8",
    "compute.cpu_scale.per_device_train_batch_size=8",
    "trainer.max_completion_length=24",
    "trainer.max_steps=1",
    "trainer.save_steps=0",
    "model.dtype=float32",
]


# the CPU profile's rollout in the default run; transformers' own (the GPU profiles' without
# vLLM) in `make test-slow`: 24 s more on a 2-core Zen 1 EPYC
@pytest.mark.parametrize(
    "rollout_name", ["prefix_cache", pytest.param("hf", marks=pytest.mark.slow)]
)
def test_a_grpo_step_compares_confidences_of_the_same_answer(
    tmp_path, embedded_checkpoint, rollout_name
):
    config = prepare(compose_config([*EMBEDDED_STEP, f"rollout={rollout_name}"], tmp_path)).config
    checkpoint = models.resolve_checkpoint(config.model)
    tokenizer = models.load_tokenizer(checkpoint)
    train = mark_labeled(datasets.Dataset.from_dict(QUESTIONS), 0.5, seed=0)
    reward = TRLReward(config.reward, config.trainer.num_generations, build_clusterer("exact"))
    trainer = build_trainer(
        config,
        checkpoint,
        tokenizer,
        add_prompts(train, config.prompt),
        [reward],
        str(tmp_path),
        "cpu",
        torch.float32,
        client=None,
        run_id=None,
    )
    assert isinstance(trainer, AnswerThenConfidenceTrainer)
    nested_rollout, score = trainer.rollout_func, trainer._generate_and_score_completions
    rollouts, batches = [], []

    def recording_rollout(prompts, grpo_trainer):
        output = nested_rollout(prompts, grpo_trainer)
        rollouts.append((prompts, output))
        return output

    def recording_score(inputs):
        output = score(inputs)
        batches.append(output)
        return output

    # the same functions, recorded: TRL calls whatever the trainer holds
    trainer.rollout_func = recording_rollout
    trainer._generate_and_score_completions = recording_score
    trainer.train()
    assert trainer.state.global_step == 1
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)

    ((prompts, output),) = rollouts
    completions = output["completion_ids"]
    assert len(completions) == len(prompts) == 8
    keyed = 0
    for run in range(0, 8, 2):
        first, second = completions[run], completions[run + 1]
        text = tokenizer.decode(first)
        if "Confidence" not in text:
            # why: an answer without the key cannot be continued: it is repeated
            assert second == first
            continue
        keyed += 1
        # independently of the code's token search: the answer is the text before the key
        answer = text[: text.index("Confidence")]
        start = confidence_start(first, tokenizer)
        assert tokenizer.decode(first[:start]) == answer
        # why: the run's second completion continues the same answer from the key on, sampled
        # by the policy, within the completion length
        assert second[:start] == first[:start]
        assert tokenizer.decode(second[start:]).startswith("Confidence")
        assert len(second) <= config.trainer.max_completion_length
        if output["logprobs"] is not None:
            assert output["logprobs"][run + 1][:start] == output["logprobs"][run][:start]
            assert len(output["logprobs"][run + 1]) == len(second)
    # why: the 3-shot prompt makes SmolLM2 write the key on about 2 of 3 answers (4 answers
    # without one: ~1%); none would mean the rollout lost them
    assert keyed >= 1

    (batch,) = batches
    advantages, mask = batch["advantages"], batch["completion_mask"]
    assert advantages.shape == batch["completion_ids"].shape
    for run in range(0, 8, 2):
        rows = [run, run + 1]
        ids = [batch["completion_ids"][i][: int(mask[i].sum())].tolist() for i in rows]
        starts = [confidence_start(i, tokenizer) for i in ids]
        if starts[0] is None:
            # a repeated answer without the key: one advantage on every token of both
            assert torch.equal(advantages[run], advantages[run + 1])
            assert len(set(advantages[run].tolist())) == 1
            continue
        # why: the shared answer tokens carry one value across the run, so the policy gradient
        # on them is the answer's; the confidences' parts cancel over the run
        answer_parts = [advantages[i, : starts[n]] for n, i in enumerate(rows)]
        assert len({round(v, 6) for part in answer_parts for v in part.tolist()}) <= 1
        confidence_parts = [advantages[i, starts[n]].item() for n, i in enumerate(rows)]
        assert sum(confidence_parts) == pytest.approx(0.0, abs=1e-6)
