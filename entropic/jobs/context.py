"""The run context: everything a job reads, checked and loaded once by `prepare(cfg)`.

`prepare` turns the composed Hydra config into the one typed `RunConfig` (entropic.config), checks
everything that can be wrong with it, applies the CPU caps and loads the questions. It loads no
model weights and opens no MLflow run, so a rejected config costs seconds and leaves no run
behind. Only rejected input becomes a `ConfigError` (exit 2, the key and the fix); anything else
raised here is a bug and keeps its type and traceback.

A job then reads the context and adds to it in the open: `open_run` hands back the context with
the open MLflow run (`context.run`), and a stage that changes the training questions returns them
for the job to put in place with `dataclasses.replace`. The base model's handles (`Policy`) are
resolved on first use, after validation: resolving may convert or download the checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import datasets
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from entropic import models, readout, rollout, tracking
from entropic.compute import (
    Changed,
    apply_cpu_scale,
    changed_values,
    check_malloc,
    cpu_malloc,
    keep_freed_memory,
    resolve_device,
    training_mix,
)
from entropic.compute import train_questions as train_question_count
from entropic.config import ConfigError, ModelConfig, RunConfig
from entropic.data import (
    QuestionSplits,
    check_source,
    draw_subset,
    load_eval_questions,
    load_questions,
    rows_to_dataset,
)
from entropic.evaluate import HELD_OUT, check_sets, load_sets
from entropic.prompting import FITTED_KEYS, fit_completion_length
from entropic.rewards import get_rule, mark_labeled
from entropic.semantic import build_clusterer
from entropic.training import check_target_modules, meta_model

# What rejected input raises where it is found: the data sources and the checks raise
# ValueError, a missing model file FileNotFoundError, an offline hub ConnectionError.
REJECTED_INPUT = (ValueError, FileNotFoundError, ConnectionError)


@dataclass
class Policy:
    """The base model a job trains or studies: its checkpoint, tokenizer and dtype."""

    model: ModelConfig
    device: str

    @cached_property
    def checkpoint(self) -> str:
        return models.resolve_checkpoint(self.model)

    @cached_property
    def tokenizer(self):
        return models.load_tokenizer(self.checkpoint)

    @property
    def dtype(self) -> torch.dtype:
        return models.torch_dtype(self.model, self.device)

    def load_model(self):
        """A fresh copy of the base model's weights on the job's device."""
        return models.load_model(self.checkpoint, self.dtype, self.device)


@dataclass(frozen=True)
class TrackedRun:
    """The open MLflow run a job logs to (rank 0 only)."""

    client: MlflowClient
    run_id: str


@dataclass
class RunResult:
    run_id: str
    # eval/* of the held-out split before and after training ({} when it did not train)
    before: dict[str, float]
    after: dict[str, float]
    output_dir: str
    seconds: float
    # each other evaluation set (eval.sets): its name -> {"before": metrics, "after": metrics}
    sets: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class RunContext:
    """Everything checked and loaded that needs no model weights, and the handles jobs share."""

    # the composed config as Hydra gave it: logged as the run's params and config.yaml
    composed: DictConfig
    # the typed config after the CPU caps: what the job runs
    config: RunConfig
    device: str
    # the values the CPU caps changed, (requested, used) by key: logged as the params that ran
    changed: Changed
    splits: QuestionSplits
    # the training questions, with the `labeled` column (and `calibrated_target` once made)
    train: datasets.Dataset
    clusterer: Callable | None
    policy: Policy
    # time.perf_counter() when the job began, for its wall time
    started: float
    # the other evaluation sets (eval.sets), by name
    sets: dict[str, datasets.Dataset] = field(default_factory=dict)
    # the checkpoint training resumes from (None: from step 0)
    resume_from: str | None = None
    # the open MLflow run (None: none yet, or a rank > 0, which leaves MLflow to rank 0)
    run: TrackedRun | None = None

    @property
    def output_dir(self) -> Path:
        return Path(self.config.output_dir)

    def eval_sets(self) -> dict[str, datasets.Dataset]:
        """Every set the run evaluates, the held-out split first."""
        return {HELD_OUT: self.splits.eval, **self.sets}

    def seconds(self) -> float:
        """Wall time since the job began."""
        return time.perf_counter() - self.started


@contextlib.contextmanager
def rejected_input() -> Iterator[None]:
    """Errors of input checks as ConfigError: the CLI prints them without a traceback, exit 2."""
    try:
        yield
    except REJECTED_INPUT as err:
        raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from err


def prepare(cfg: DictConfig) -> RunContext:
    """Validate the config and load the questions; fails fast, before any model or MLflow run."""
    started = time.perf_counter()
    with rejected_input():
        config = checked_config(cfg)
    requested = config
    device = resolve_device(config.compute)
    config, changed = apply_cpu_scale(requested, device)
    malloc = cpu_malloc(config.compute, device)
    check_malloc(malloc, multirun_launcher())
    if malloc == "keep":
        keep_freed_memory()
    config = fit_completion_length(config)
    # what the prompt needed replaces the capped value: the params are the values used
    changed = {**changed, **changed_values(requested, config, FITTED_KEYS)}
    rule = get_rule(config.reward.name)
    with rejected_input():
        rollout.check(config, device)
    policy = Policy(config.model, device)
    if config.train and config.adapter.target_modules != "all-linear":
        with rejected_input():
            check_target_modules(config.adapter, policy.checkpoint)
    centre = config.adapter.centre
    if config.train and centre is not None:
        with rejected_input():
            readout.final_norm(meta_model(policy.checkpoint), centre.temperature, centre.shift_rate)
    clusterer = checked_clusterer(config) if rule.needs_stability else None
    with rejected_input():
        splits = load_splits(config, needs_pool=config.train or config.reward.needs_target)
    n_train = train_question_count(config, device)
    train = draw_subset(splits.train, n_train, config.seed, training_mix(config, device))
    train = mark_labeled(train, config.reward.labeled_fraction, config.seed)
    with rejected_input():
        sets = load_sets(config.eval, set(train["question_id"]))
    return RunContext(cfg, config, device, changed, splits, train, clusterer, policy, started, sets)


def multirun_launcher() -> str | None:
    """The `_target_` of Hydra's launcher when this job is one of a multirun, else None (a single
    run, or `run(cfg)` called outside Hydra)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return HydraConfig.get().launcher.get("_target_", "")


def checked_config(cfg: DictConfig) -> RunConfig:
    """The typed config (its names and values checked torch-free, entropic.config), with the
    checks that need a source's loader or a file: the model's package or directory, the data
    source's options, the evaluation sets' options."""
    config = RunConfig.from_hydra(cfg)
    models.check_source(config.model)
    check_source(config.data.name, **config.data.options)
    check_sets(config.eval)
    return config


def checked_clusterer(config: RunConfig) -> Callable:
    """The configured `semantic` clusterer; a bad method or option is rejected input."""
    try:
        return build_clusterer(config.semantic.method, **config.semantic.options)
    except ConfigError:
        raise
    except REJECTED_INPUT as err:
        raise ConfigError(f"semantic: {err}") from err


def load_splits(config: RunConfig, needs_pool: bool) -> QuestionSplits:
    """The training pool and the held-out split; a job that neither trains nor makes calibrated
    targets needs no pool, and then a small file of one's own will do."""
    if needs_pool:
        # (the entropy -> Platt targets are made on the training pool even with train: false)
        return load_questions(
            config.data.name,
            train_size=config.data.train_size,
            eval_size=config.data.eval_size,
            seed=config.seed,
            **config.data.options,
        )
    return QuestionSplits(
        train=rows_to_dataset([]),
        eval=load_eval_questions(
            config.data.name, eval_size=config.data.eval_size, **config.data.options
        ),
    )


@contextlib.contextmanager
def open_run(
    context: RunContext, tags: Mapping[str, str], resume_run_id: str | None = None
) -> Iterator[RunContext]:
    """Open (or reopen) the job's MLflow run and hand back the context with it; the run always
    ends FINISHED, FAILED (an exception, a bug included) or KILLED (entropic.tracking)."""
    config = context.config
    client = tracking.get_client(config.tracking.tracking_uri)
    every_job = {
        "experiment": config.tracking.experiment_name,
        "model": config.model.name,
        "data": config.data.name,
        "prompt": config.prompt.name,
        "device": context.device,
    }
    with tracking.mlflow_run(
        client,
        config.tracking.experiment_name,
        config.tracking.run_name,
        {**every_job, **tags, **config.tags},
        resume_run_id=resume_run_id,
        parent_run_id=config.tracking.parent_run_id,
    ) as run_id:
        yield dataclasses.replace(context, run=TrackedRun(client, run_id))


def log_run_config(context: RunContext, params: Mapping[str, Any]) -> None:
    """The composed config as params (the CPU caps' values as used, requested.* as asked), the
    device, and the job's own `params`."""
    run = context.run
    tracking.log_config(run.client, run.run_id, context.composed, context.changed)
    tracking.log_params(
        run.client, run.run_id, {"device": context.device, **{k: str(v) for k, v in params.items()}}
    )
