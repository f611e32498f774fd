"""Where a job runs (the `compute` config group): device choice and the CPU scale-down.

Laptop versus cluster is configuration: `compute=auto` (the default) lands on CUDA when it is there
and on the CPU profile otherwise. On CPU, `compute.cpu_scale` shrinks the run so that an experiment
finishes in minutes on two cores while staying real: the same model, a seeded subset of the same
training pool, real GRPO steps, and at least 200 held-out questions (each other evaluation set,
`eval.sets`, is capped at `compute.cpu_scale.set_questions`). On GPU the experiment's own sizes
apply.
"""

from __future__ import annotations

import dataclasses

import torch

from entropic.config import ComputeConfig, ConfigError, RunConfig


def resolve_device(cfg: ComputeConfig) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"compute={cfg.name} asks for CUDA, but torch sees no GPU. Fix: run with "
            "compute=cpu (or compute=auto), or install a CUDA build of torch"
        )
    return cfg.device


def apply_cpu_scale(cfg: RunConfig, device: str) -> tuple[RunConfig, dict[str, str]]:
    """Shrink a run for the CPU; returns the new config and what changed (logged to MLflow)."""
    scale = cfg.compute.cpu_scale
    if device != "cpu" or scale is None:
        return cfg, {}
    changes: dict[str, str] = {}

    def capped(key: str, value: int, cap: int) -> int:
        if value > cap:
            changes[key] = f"{value} -> {cap}"
            return cap
        return value

    trainer = dataclasses.replace(
        cfg.trainer,
        num_generations=capped(
            "trainer.num_generations", cfg.trainer.num_generations, scale.num_generations
        ),
        max_completion_length=capped(
            "trainer.max_completion_length",
            cfg.trainer.max_completion_length,
            scale.max_completion_length,
        ),
    )
    batch = capped(
        "trainer.per_device_train_batch_size",
        cfg.trainer.per_device_train_batch_size,
        scale.per_device_train_batch_size,
    )
    # Keep whole groups in a batch after shrinking either number.
    batch = max(trainer.num_generations, batch - batch % trainer.num_generations)
    trainer = dataclasses.replace(trainer, per_device_train_batch_size=batch)
    if scale.temperature is not None and trainer.temperature > scale.temperature:
        changes["trainer.temperature"] = f"{trainer.temperature} -> {scale.temperature}"
        trainer = dataclasses.replace(trainer, temperature=scale.temperature)
    data = dataclasses.replace(
        cfg.data, eval_size=capped("data.eval_size", cfg.data.eval_size, scale.eval_questions)
    )
    if cfg.data.train_size > scale.train_questions:
        changes["train_questions"] = f"{cfg.data.train_size} -> {scale.train_questions}"
    sets = {
        name: dataclasses.replace(
            entry, size=capped(f"eval.sets.{name}.size", entry.size, scale.set_questions)
        )
        if scale.set_questions is not None
        else entry
        for name, entry in cfg.eval.sets.items()
    }
    evaluation = dataclasses.replace(cfg.eval, sets=sets)
    return dataclasses.replace(cfg, trainer=trainer, data=data, eval=evaluation), changes


def train_questions(cfg: RunConfig, device: str) -> int:
    """How many pool questions training uses: all of them, or the CPU subset."""
    scale = cfg.compute.cpu_scale
    if device == "cpu" and scale is not None:
        return min(cfg.data.train_size, scale.train_questions)
    return cfg.data.train_size
