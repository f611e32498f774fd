"""GRPO training (the `trainer` config group): our config -> `trl.GRPOConfig` -> `GRPOTrainer`.

Nothing here subclasses the trainer: the rewards are plain callables, MLflow logging and the
periodic held-out evaluation are documented `TrainerCallback` hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import datasets
import torch
from mlflow.tracking import MlflowClient
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from entropic.config import EvalConfig, PromptConfig, RunConfig
from entropic.evaluate import evaluate
from entropic.rollout import grpo_kwargs
from entropic.tracking import MlflowMetricsCallback, log_metrics


def build_grpo_config(
    cfg: RunConfig, output_dir: str, device: str, dtype: torch.dtype | str
) -> GRPOConfig:
    t = cfg.trainer
    return GRPOConfig(
        output_dir=output_dir,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        beta=t.beta,
        temperature=t.temperature,
        top_p=t.top_p,
        num_generations=t.num_generations,
        max_completion_length=t.max_completion_length,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        loss_type=t.loss_type,
        scale_rewards=t.scale_rewards,
        logging_steps=t.logging_steps,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=max(t.save_steps, 1),
        # A checkpoint with optimiser state is ~3x the weights; two are enough to resume from.
        save_total_limit=2,
        # Our MlflowMetricsCallback logs to the job's run; transformers' own would open another.
        report_to="none",
        use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16,
        model_init_kwargs={"dtype": dtype},
        seed=cfg.seed,
        data_seed=cfg.seed,
        # The reward functions read question_id, answers and labeled from the dataset columns.
        remove_unused_columns=False,
        disable_tqdm=False,
        # hf generation, or vLLM colocated / as a server (entropic/rollout.py)
        **grpo_kwargs(cfg.rollout),
    )


class PeriodicEvalCallback(TrainerCallback):
    """Greedy evaluation on a fixed held-out subset every N steps, logged as eval/* at that step."""

    def __init__(
        self,
        every_n_steps: int,
        tokenizer,
        questions: datasets.Dataset,
        prompt: PromptConfig,
        eval_cfg: EvalConfig,
        client: MlflowClient,
        run_id: str,
    ):
        self.every_n_steps = every_n_steps
        self.tokenizer = tokenizer
        self.questions = questions
        self.prompt = prompt
        self.eval_cfg = eval_cfg
        self.client = client
        self.run_id = run_id

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # The final step gets the full evaluation; other ranks wait at their next collective.
        if state.global_step % self.every_n_steps or state.global_step == state.max_steps:
            return
        if not state.is_world_process_zero:
            return
        _, metrics = evaluate(model, self.tokenizer, self.questions, self.prompt, self.eval_cfg)
        log_metrics(self.client, self.run_id, metrics, step=state.global_step, prefix="eval/")


def build_trainer(
    cfg: RunConfig,
    checkpoint: str,
    tokenizer,
    train_dataset: datasets.Dataset,
    rewards: list[Callable],
    output_dir: str,
    device: str,
    dtype: torch.dtype | str,
    client: MlflowClient | None,
    run_id: str | None,
    periodic_questions: datasets.Dataset | None = None,
) -> GRPOTrainer:
    callbacks: list[TrainerCallback] = []
    if client is not None and run_id is not None:
        callbacks.append(MlflowMetricsCallback(client, run_id))
        if cfg.trainer.eval_every_n_steps > 0 and periodic_questions is not None:
            callbacks.append(
                PeriodicEvalCallback(
                    cfg.trainer.eval_every_n_steps,
                    tokenizer,
                    periodic_questions,
                    cfg.prompt,
                    cfg.eval,
                    client,
                    run_id,
                )
            )
    return GRPOTrainer(
        model=checkpoint,
        reward_funcs=rewards,
        args=build_grpo_config(cfg, output_dir, device, dtype),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def last_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` under output_dir, if any.

    The Trainer writes trainer_state.json last, so a checkpoint interrupted mid-save (Ctrl-C,
    pre-emption) lacks it and is skipped rather than resumed from.
    """
    checkpoints = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if (p / "trainer_state.json").exists()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    return str(checkpoints[-1]) if checkpoints else None
