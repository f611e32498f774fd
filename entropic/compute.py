"""Where a job runs (the `compute` config group): device choice and the CPU scale-down.

Laptop versus cluster is configuration: `compute=auto` (the default) lands on CUDA when it is there
and on the CPU profile otherwise. On CPU, `compute.cpu_scale` shrinks the run so that an experiment
finishes in minutes on two cores while staying real: the same model, a seeded subset of the same
training pool, real GRPO steps, and at least 200 held-out questions (each other evaluation set,
`eval.sets`, is capped at `compute.cpu_scale.set_questions`). On GPU the experiment's own sizes
apply.
"""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Mapping
from typing import Any

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


# A value the run changed from its config, by its dotted key: (requested, used).
Changed = dict[str, tuple[Any, Any]]
# The keys apply_cpu_scale may change; each is logged as the value used, with requested.<key>.
SCALED_KEYS = (
    "trainer.num_generations",
    "trainer.max_completion_length",
    "trainer.per_device_train_batch_size",
    "trainer.temperature",
    "data.eval_size",
    "generation.name",
    "rollout.name",
)
# The optional sections' own caps: each section's cpu_scale caps these keys of it.
SECTION_CAPS = {
    "calibration": ("eval_questions", "max_new_tokens"),
    "study": ("num_questions", "max_new_tokens"),
}


def dotted(config: Any, key: str) -> Any:
    """A value of a nested dataclass by its dotted key (`trainer.temperature`); a mapping's
    entries by name (`eval.sets.elements.size`)."""
    for part in key.split("."):
        config = config[part] if isinstance(config, Mapping) else getattr(config, part)
    return config


def changed_values(requested: Any, used: Any, keys: tuple[str, ...]) -> Changed:
    """The keys whose value differs between two configs of the same shape: (requested, used)."""
    pairs = {key: (dotted(requested, key), dotted(used, key)) for key in keys}
    return {key: pair for key, pair in pairs.items() if pair[0] != pair[1]}


def apply_cpu_scale(cfg: RunConfig, device: str) -> tuple[RunConfig, Changed]:
    """Shrink a run for the CPU; returns the new config and the values it changed, which the job
    logs as the params that ran (with the requested ones as requested.<key>).

    `compute.cpu_scale` caps the training and evaluation keys; the optional `calibration` and
    `study` sections are capped by their own `cpu_scale` (SECTION_CAPS), and only when the run's
    compute profile scales at all (compute=single_gpu never does, whatever those sections say).
    The training subset (`compute.cpu_scale.train_questions`) changes no config key: the pool
    `data.train_size` is loaded whole and the job logs the subset as `data.train_questions_used`.
    """
    scale = cfg.compute.cpu_scale
    if device != "cpu" or scale is None:
        return cfg, {}
    group = min(cfg.trainer.num_generations, scale.num_generations)
    batch = min(cfg.trainer.per_device_train_batch_size, scale.per_device_train_batch_size)
    # Keep whole groups in a batch after shrinking either number.
    batch = max(group, batch - batch % group)
    temperature = cfg.trainer.temperature
    if scale.temperature is not None:
        temperature = min(temperature, scale.temperature)
    # One replace: TrainerConfig validates itself, and a group size without its batch would not
    # divide (a cap of 6 on the experiment's batch of 32).
    trainer = dataclasses.replace(
        cfg.trainer,
        num_generations=group,
        per_device_train_batch_size=batch,
        max_completion_length=min(cfg.trainer.max_completion_length, scale.max_completion_length),
        temperature=temperature,
    )
    data = dataclasses.replace(cfg.data, eval_size=min(cfg.data.eval_size, scale.eval_questions))
    sets = cfg.eval.sets
    if scale.set_questions is not None:
        sets = {
            name: dataclasses.replace(entry, size=min(entry.size, scale.set_questions))
            for name, entry in sets.items()
        }
    evaluation = dataclasses.replace(cfg.eval, sets=sets)
    generation = cfg.generation
    if scale.generation is not None:
        generation = dataclasses.replace(generation, name=scale.generation)
    rollout = cfg.rollout
    # only transformers' generate is replaced: a vLLM backend asked for on CPU keeps its own error
    if scale.rollout is not None and rollout.name == "hf":
        rollout = dataclasses.replace(rollout, name=scale.rollout)
    sections = {name: capped(getattr(cfg, name), keys) for name, keys in SECTION_CAPS.items()}
    scaled = dataclasses.replace(
        cfg,
        trainer=trainer,
        data=data,
        eval=evaluation,
        generation=generation,
        rollout=rollout,
        **sections,
    )
    set_keys = tuple(f"eval.sets.{name}.size" for name in sets)
    section_keys = tuple(
        f"{name}.{key}"
        for name, keys in SECTION_CAPS.items()
        if sections[name] is not None
        for key in keys
    )
    return scaled, changed_values(cfg, scaled, SCALED_KEYS + set_keys + section_keys)


def capped(section: Any, keys: tuple[str, ...]) -> Any:
    """An optional section with each of `keys` at most its own cpu_scale's cap (None: none)."""
    if section is None or section.cpu_scale is None:
        return section
    caps = {key: min(getattr(section, key), getattr(section.cpu_scale, key)) for key in keys}
    return dataclasses.replace(section, **caps)


def train_questions(cfg: RunConfig, device: str) -> int:
    """How many pool questions training uses: all of them, or the CPU subset."""
    scale = cfg.compute.cpu_scale
    if device == "cpu" and scale is not None:
        return min(cfg.data.train_size, scale.train_questions)
    return cfg.data.train_size


def training_mix(cfg: RunConfig, device: str) -> str:
    """How the training questions are drawn from the pool: the CPU subset's `train_mix`, or
    "pool" (the whole pool, or a seeded sample of it, in its own proportions)."""
    scale = cfg.compute.cpu_scale
    if device == "cpu" and scale is not None:
        return scale.train_mix
    return "pool"


# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# free memory at the top of the heap kept before any is given back: mallopt takes an int
KEPT_BYTES = 2**31 - 1


def _mallopt():
    """glibc's mallopt, or None where the C library is not glibc (macOS, musl)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def cpu_malloc(compute: ComputeConfig, device: str) -> str:
    """The allocator mode a run uses: keep when `compute.cpu_scale.malloc` asks for it on a CPU
    with glibc; system otherwise (always on CUDA, without a CPU profile, or off glibc). Logged as
    `compute.resolved_malloc`."""
    scale = compute.cpu_scale
    if device != "cpu" or scale is None or scale.malloc != "keep" or _mallopt() is None:
        return "system"
    return "keep"


# Hydra launchers that run a multirun's jobs one after another in the same process (the basic
# launcher) or in reused worker processes (joblib's loky pool); submitit starts one per job.
SHARED_PROCESS_LAUNCHERS = ("BasicLauncher", "JoblibLauncher")


def check_malloc(malloc: str, multirun_launcher: str | None) -> None:
    """Refuse `keep` for jobs that share a process: `multirun_launcher` is the `_target_` of
    Hydra's launcher in a multirun, None in a single run."""
    if malloc != "keep" or multirun_launcher is None:
        return
    if any(name in multirun_launcher for name in SHARED_PROCESS_LAUNCHERS):
        raise ConfigError(
            f"compute.cpu_scale.malloc=keep: this sweep's launcher ({multirun_launcher}) runs "
            "its jobs in one process, whose heap under keep never shrinks (a sweep grew to 22 GB "
            "by its third job; README, Performance). Fix: compute.cpu_scale.malloc=system for "
            "sweeps, or run each point as a single run"
        )


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse; returns whether it applied (False where
    the C library is not glibc, which then keeps its own behaviour).

    A GRPO step on CPU allocates and frees gigabytes of short-lived tensors (log-probabilities
    over the 49k-token vocabulary, activations). glibc serves every block above its mmap
    threshold (at most 32 MiB) with a fresh mmap and unmaps it on free, so each step faults the
    same memory in again, page by zeroed page: 41 s of a 6-step demo's 248 s of CPU time went to
    the kernel. With mmap off and trimming raised to 2 GiB, freed blocks stay in the heap and the
    next step reuses them. The price: the heap never shrinks, and fragments. One run keeps its
    peak (13.0 GB against 9.3 GB for a 6-step demo); a multirun sweep, whose runs share one
    process, grew to 22 GB by its third run and was killed by the OOM killer. Hence an opt-in
    for single runs. Raising the mmap threshold to its 32 MiB maximum instead changed nothing:
    the blocks that fault are larger.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_BYTES))
