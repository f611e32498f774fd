"""A real GRPOTrainer on a tiny model: two steps change the weights, give finite losses, and log
what our reward gave; the periodic evaluation logs its metrics and seconds at its step."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import datasets
import pytest
import torch
import trl.kernels.chunked_logprob
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM, TrainerState

from entropic import models, tracking
from entropic.config import RunConfig
from entropic.data import load_eval_questions
from entropic.evaluate import HELD_OUT
from entropic.generation import rows_after_prefix
from entropic.prefix_scoring import (
    common_prefix_length,
    real_columns,
    share_prompt_prefix,
    shared_prefix_calls,
)
from entropic.prompting import add_prompts
from entropic.rewards import TRLReward, mark_labeled
from entropic.semantic import build_clusterer
from entropic.training import (
    PeriodicEvalCallback,
    build_trainer,
    mlflow_names,
    score_completions_only_on_cpu,
    trl_head_rule,
)
from tests.conftest import compose_config, sliding_window_model

QUESTIONS = {
    "question_id": [f"q{i}" for i in range(4)],
    "question": [
        "What is the capital of France?",
        "What is the capital of Italy?",
        "What currency is used in Japan?",
        "In which country is the city of Porto?",
    ],
    "answers": [["Paris"], ["Rome"], ["Yen", "JPY"], ["Portugal"]],
    "kind": ["capital", "capital", "currency", "city_country"],
}


# Outside [0, 1], where mixed's Brier and stability scores lie: seen in TRL's logs, it can only be
# our reward's format penalty.
FORMAT_PENALTY = -0.375


# Two GRPO steps of two questions x two completions of eight tokens: seconds on a CPU.
TINY = [
    "model=tiny_random",
    "compute=cpu",
    "trainer.num_generations=2",
    "trainer.per_device_train_batch_size=4",
    "trainer.max_completion_length=8",
    "trainer.max_steps=2",
    "trainer.save_steps=0",
    "reward.labeled_fraction=0.5",
]


def tiny_trainer(tmp_path: Path, overrides: list[str], output_dir: Path | None = None):
    """A real GRPOTrainer on the tiny random model, built the way train_job builds it."""
    config = RunConfig.from_hydra(compose_config([*TINY, *overrides], tmp_path))
    checkpoint = models.resolve_checkpoint(config.model)
    tokenizer = models.load_tokenizer(checkpoint)
    train = mark_labeled(datasets.Dataset.from_dict(QUESTIONS), 0.5, seed=0)
    reward = TRLReward(config.reward, config.trainer.num_generations, build_clusterer("exact"))

    # A random model never writes "Answer:/Confidence:", so our reward is the format penalty for
    # every completion and GRPO's advantages are all zero. A second reward that varies with the
    # text (the mean token id) gives the optimiser something to follow, so a test can see the
    # whole loop (rollout -> our reward -> loss -> update) move the weights.
    def mean_token_id(completion_ids, **_):
        return [sum(ids) / max(len(ids), 1) / len(tokenizer) for ids in completion_ids]

    trainer = build_trainer(
        config,
        checkpoint,
        tokenizer,
        add_prompts(train, config.prompt),
        [reward, mean_token_id],
        str(output_dir or tmp_path),
        "cpu",
        torch.float32,
        client=None,
        run_id=None,
    )
    return trainer, config


def test_two_grpo_steps_on_a_tiny_model_change_the_weights(tmp_path, embedded_checkpoint):
    trainer, _ = tiny_trainer(
        tmp_path, ["trainer.learning_rate=1e-2", f"reward.format_penalty={FORMAT_PENALTY}"]
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(math.isfinite(v) for v in losses)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, "no parameter moved after two GRPO steps"
    # why: TRL logs each reward under its registry name, and what ours gave each step is the
    # format penalty for every completion (mean the penalty, no spread); our reward's own
    # metrics agree that nothing parsed
    logged = [h for h in trainer.state.log_history if "rewards/mixed/mean" in h]
    assert len(logged) == 2
    for entry in logged:
        assert (entry["rewards/mixed/mean"], entry["rewards/mixed/std"]) == (FORMAT_PENALTY, 0.0)
        assert (entry["calibration/format_rate"], entry["calibration/accuracy"]) == (0.0, 0.0)


def fused_tiny_model(tmp_path):
    """The tiny model with TRL's fused LM head, as GRPOTrainer scores with it."""
    config = RunConfig.from_hydra(compose_config(TINY, tmp_path))
    model = AutoModelForCausalLM.from_pretrained(models.resolve_checkpoint(config.model))
    trl_utils.add_fused_lm_head(
        model, temperature=0.7, cast_lm_head_to_fp32=False, outputs=("log_probs", "entropy")
    )
    return model


def scores(model, input_ids, mask, completion):
    """Log-probabilities, entropies and the gradients of the completion's summed log-probability,
    with the completion (the last `completion` columns) labelled as GRPOTrainer labels it."""
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :-completion] = -100
    model.zero_grad()
    out = model(input_ids=input_ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    out.log_probs[:, -completion:].sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.log_probs.detach(), out.entropy.detach(), grads


def assert_same_scores(after, before):
    for name, old, new in zip(("log_probs", "entropy"), before[:2], after[:2], strict=True):
        torch.testing.assert_close(new, old, msg=name)
    assert before[2].keys() == after[2].keys() and before[2]
    for name in before[2]:
        torch.testing.assert_close(after[2][name], before[2][name], msg=name)


def test_the_fused_head_on_a_cpu_scores_the_completion_alone_with_the_same_results(
    tmp_path, monkeypatch
):
    # why: TRL's fused LM head scores every position on a CPU; scoring only the completion's
    # (training.score_completions_only_on_cpu) must change what is computed, not the
    # log-probabilities, the entropies or the gradients GRPO gets from them
    model = fused_tiny_model(tmp_path)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, model.config.vocab_size, (3, 20), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[0, :4] = 0  # a left-padded prompt
    # the last 6 positions are the completion
    completion = 6
    scored_rows = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def recording_apply(hidden, *args):
        scored_rows.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", recording_apply)
    # TRL's own rule, then ours on top of it
    monkeypatch.setattr(trl_utils, "_use_triton", trl.kernels.chunked_logprob._use_triton)
    every = scores(model, input_ids, mask, completion)
    score_completions_only_on_cpu()
    compact = scores(model, input_ids, mask, completion)
    # why: make bench times TRL's rule beside ours in one process; inside the block the head
    # scores every position again, and ours is back after it
    with trl_head_rule():
        scores(model, input_ids, mask, completion)
    scores(model, input_ids, mask, completion)
    # the shifted sequence's 19 positions of each row, then the 3 x 6 completion positions only
    assert scored_rows == [3 * 19, 3 * completion, 3 * 19, 3 * completion]
    assert_same_scores(compact, every)


def test_scoring_with_the_shared_prefix_computed_once_gives_the_same_results(tmp_path):
    # why: GRPO's scoring forward runs the same system message and few-shot turns in every row;
    # computing that prefix once (prefix_scoring.share_prompt_prefix) must change how many
    # positions the decoder runs, not the log-probabilities, entropies or gradients
    model = fused_tiny_model(tmp_path)
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, model.config.vocab_size, (12,), generator=generator)
    # three rows: the prefix, then 5, 8 and 3 tokens of their own, left-padded to one width as
    # TRL pads prompts; the first row's completion ended a token early (right padding)
    own = [torch.randint(0, model.config.vocab_size, (n,), generator=generator) for n in (5, 8, 3)]
    width = 12 + 8
    input_ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for row, tokens in enumerate(own):
        start = width - 12 - len(tokens)
        input_ids[row, start:] = torch.cat([prefix, tokens])
        mask[row, start:] = 1
    mask[0, -1] = 0
    completion = 3
    positions_run = []
    model.model.embed_tokens.register_forward_hook(
        lambda module, args, out: positions_run.append(args[0].numel())
    )
    plain = scores(model, input_ids, mask, completion)
    assert shared_prefix_calls(model) == 0
    share_prompt_prefix(model.model)
    shared = scores(model, input_ids, mask, completion)
    # 3 rows of 20 columns; then the 12 shared tokens once and 3 rows of the widest own part (8)
    assert positions_run == [3 * width, 12, 3 * 8]
    assert shared_prefix_calls(model) == 1
    assert_same_scores(shared, plain)
    # generation's calls (a cache, use_cache=True) keep the model's own forward
    positions_run.clear()
    model(input_ids=input_ids, attention_mask=mask, use_cache=True)
    assert positions_run == [3 * width]


def test_a_sliding_window_model_keeps_its_own_scoring_forward():
    # why: with padding between prefix and a row's own tokens, a window counted in columns is
    # not the model's, so the shared prefix is not installed on such a model
    model = sliding_window_model(64)
    own_forward = model.model.forward
    share_prompt_prefix(model.model)
    assert model.model.forward == own_forward


@pytest.mark.parametrize(
    ("input_ids", "mask", "expected"),
    [
        # why: rows that agree up to their last token share all but that last token
        ([[1, 2, 3, 4], [1, 2, 3, 4]], [[1, 1, 1, 1], [1, 1, 1, 1]], 3),
        # why: left padding is skipped before comparing; the rows part at their third token
        ([[0, 1, 2, 9, 7], [1, 2, 5, 6, 8]], [[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], 2),
        # why: every row keeps at least one token of its own, the shortest sets the bound
        ([[0, 0, 1, 2], [1, 2, 3, 4]], [[0, 0, 1, 1], [1, 1, 1, 1]], 1),
        # why: right padding is no token of the row's (a completion that ended early)
        ([[1, 2, 3, 0], [1, 2, 3, 4]], [[1, 1, 1, 0], [1, 1, 1, 1]], 2),
        # why: rows that differ at once share nothing
        ([[1, 2, 3], [4, 2, 3]], [[1, 1, 1], [1, 1, 1]], 0),
    ],
)
def test_the_common_prefix_is_counted_on_each_rows_real_tokens(input_ids, mask, expected):
    starts, ends = real_columns(torch.tensor(mask))
    assert common_prefix_length(torch.tensor(input_ids), starts, ends) == expected


def test_rows_after_a_prefix_are_right_aligned_with_positions_counting_on_from_it():
    # why: generation's prefill and the read-out's gates-apart pass run rows on a copied prefix
    # cache; a row's tokens must sit at positions prefix_length.. whatever its padding, and the
    # mask must cover the prefix for every row (worked out by hand for a 3-token prefix)
    ids, mask, positions = rows_after_prefix([[7, 8], [5], [4, 5, 6]], 3, pad_token_id=0)
    assert ids.tolist() == [[0, 7, 8], [0, 0, 5], [4, 5, 6]]
    assert mask.tolist() == [[1, 1, 1, 0, 1, 1], [1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]]
    assert positions.tolist() == [[0, 3, 4], [0, 0, 3], [3, 4, 5]]
    # why: with no prefix the layout is plain left padding, positions from 0
    ids, mask, positions = rows_after_prefix([[7, 8], [5]], 0, pad_token_id=2)
    assert ids.tolist() == [[7, 8], [2, 5]]
    assert mask.tolist() == [[1, 1], [0, 1]]
    assert positions.tolist() == [[0, 1], [0, 0]]


def test_a_mask_with_a_hole_is_not_a_layout_to_share():
    # why: padding inside a row is not TRL's layout; such a call keeps the model's own forward
    assert real_columns(torch.tensor([[1, 0, 1], [1, 1, 1]])) is None


@pytest.mark.parametrize(
    ("logs", "reward_weights", "expected"),
    [
        # why: a per-step metric keeps TRL's name under train/
        ({"loss": 0.1, "entropy": 2.0}, None, {"train/loss": 0.1, "train/entropy": 2.0}),
        # why: the run's mean loss is not the per-step train/loss; its runtime is time/train_seconds
        # (entropic.jobs.train), its steps per second 1 / time/seconds_per_step, its FLOPs always 0
        (
            {"train_loss": 0.2, "train_runtime": 9.0, "train_steps_per_second": 0.2}
            | {"total_flos": 0.0, "train_samples_per_second": 1.5},
            None,
            {"train/mean_loss": 0.2, "time/samples_per_second": 1.5},
        ),
        # why: a wall time belongs with the other wall times
        ({"step_time": 4.0}, None, {"time/step_seconds": 4.0}),
        # why: one reward function of weight 1: its mean and std are reward and reward_std
        (
            {"reward": 0.5, "reward_std": 0.1, "rewards/mixed/mean": 0.5, "rewards/mixed/std": 0.1},
            None,
            {"train/reward": 0.5, "train/reward_std": 0.1},
        ),
        # why: a weighted reward is not the function's own value: both are kept
        (
            {"reward": 1.0, "rewards/mixed/mean": 0.5},
            [2.0],
            {"train/reward": 1.0, "train/rewards/mixed/mean": 0.5},
        ),
        # why: with two functions each one's share is news
        (
            {"reward": 0.7, "rewards/a/mean": 0.5, "rewards/b/mean": 0.2},
            None,
            {"train/reward": 0.7, "train/rewards/a/mean": 0.5, "train/rewards/b/mean": 0.2},
        ),
    ],
)
def test_the_trainer_logs_reach_mlflow_with_one_name_per_quantity(logs, reward_weights, expected):
    assert mlflow_names(logs, reward_weights) == expected


@pytest.mark.parametrize(
    ("global_step", "logged"),
    [
        (2, True),  # every second step
        (3, False),  # not a multiple of every_n_steps
        (4, False),  # the final step: the job's own full evaluation follows
    ],
)
def test_periodic_evaluation_logs_metrics_and_seconds_at_its_step(
    tmp_path, mlflow_uri, global_step, logged
):
    config = RunConfig.from_hydra(compose_config(["model=tiny_random"], tmp_path))
    checkpoint = models.resolve_checkpoint(config.model)
    tokenizer = models.load_tokenizer(checkpoint)
    model = models.load_model(checkpoint, torch.float32, "cpu")
    client = tracking.get_client(mlflow_uri)
    with tracking.mlflow_run(client, "periodic", "run", {}) as run_id:
        callback = PeriodicEvalCallback(
            2,
            tokenizer,
            # the held-out split and one evaluation set asked for periodically
            {
                HELD_OUT: datasets.Dataset.from_dict(QUESTIONS).select(range(2)),
                "elements": load_eval_questions("elements", eval_size=2),
            },
            config.prompt,
            replace(config.eval, max_new_tokens=4),
            "prefix_cache",
            client,
            run_id,
        )
        state = TrainerState(global_step=global_step, max_steps=4, is_world_process_zero=True)
        callback.on_step_end(None, state, None, model=model)
    history = {
        name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
        for name in ("eval/accuracy", "eval/elements/accuracy", "time/eval_seconds")
    }
    if not logged:
        assert all(values == [] for values in history.values())
        return
    # why: each set under its own name; the held-out split where reports read it
    assert [step for step, _ in history["eval/accuracy"]] == [global_step]
    assert [step for step, _ in history["eval/elements/accuracy"]] == [global_step]
    # why: the seconds sit beside the metrics, at the same step, once for all the sets, so a
    # run's evaluations add up
    ((step, seconds),) = history["time/eval_seconds"]
    assert step == global_step and seconds > 0
