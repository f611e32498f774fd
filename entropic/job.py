"""One experiment end to end: validate -> evaluate base model -> GRPO -> evaluate -> MLflow.

`run(cfg)` is what `python -m entropic.run` calls after Hydra composes the config, and what the
tests call. Everything that can be wrong with a config is checked before any model loads, and no
MLflow run is created for a config that is rejected.

Rerunning a job's folder (`hydra.run.dir=<folder>`) reopens the MLflow run that folder's job
opened, whatever stopped it: training resumes from the newest checkpoint, or starts again from
step 0 if there is none. A FINISHED run is left untouched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import datasets
import pandas as pd
import torch
from accelerate import PartialState
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from omegaconf import DictConfig
from transformers.integrations import is_deepspeed_zero3_enabled

from entropic import models, rollout, tracking
from entropic.calibration import CalibrationConfig, add_calibrated_target
from entropic.compute import (
    Changed,
    apply_cpu_scale,
    changed_values,
    resolve_device,
    train_questions,
)
from entropic.config import ConfigError, RunConfig
from entropic.data import (
    QuestionSplits,
    check_source,
    load_eval_questions,
    load_questions,
    rows_to_dataset,
)
from entropic.evaluate import (
    BEHAVIOUR,
    HELD_OUT,
    SUMMARY_NAMES,
    behaviour_table,
    check_sets,
    evaluate_sets,
    figure_path,
    load_sets,
    metric_prefix,
    predictions_path,
    summarize,
)
from entropic.plots import reliability_diagram
from entropic.prompting import FITTED_KEYS, add_prompts, fit_completion_length
from entropic.rewards import TRLReward, check_parameters, get_rule, mark_labeled
from entropic.semantic import build_clusterer
from entropic.study import stability_study
from entropic.training import build_trainer, check_target_modules, last_checkpoint
from entropic.ui import closing_line

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id.txt"


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


@dataclass
class Prepared:
    """Everything checked and loaded that needs no model weights."""

    config: RunConfig
    device: str
    # the values the CPU caps changed, (requested, used) by key: logged as the params that ran
    changed: Changed
    splits: QuestionSplits
    train: datasets.Dataset
    clusterer: Callable | None
    # the other evaluation sets (eval.sets), by name
    sets: dict[str, datasets.Dataset] = field(default_factory=dict)

    def eval_sets(self) -> dict[str, datasets.Dataset]:
        """Every set the run evaluates, the held-out split first."""
        return {HELD_OUT: self.splits.eval, **self.sets}


def prepare(cfg: DictConfig) -> Prepared:
    """Validate the config and load the questions; fails fast, before any model or MLflow run."""
    try:
        requested = config = RunConfig.from_hydra(cfg)
        rule = get_rule(config.reward.name)
        models.check_source(config.model)
        check_source(config.data.name, **config.data.options)
        check_sets(config.eval)
        device = resolve_device(config.compute)
        config, changed = apply_cpu_scale(requested, device)
        config = fit_completion_length(config)
        # what the prompt needed replaces the capped value: the params are the values used
        changed = {**changed, **changed_values(requested, config, FITTED_KEYS)}
        rollout.check(config, device)
        check_parameters(config.reward)
        if rule.needs_target:
            # the entropy -> Platt targets are made in train_job; their config is checked now,
            # and its CPU caps join the values logged as what ran
            calibration = CalibrationConfig.from_hydra(cfg, config)
            changed |= calibration.for_device(device, config.compute.cpu_scale is not None)[1]
        adapter = config.adapter
        if config.train and (adapter.target_modules != "all-linear" or adapter.top_layers):
            check_target_modules(config.adapter, models.resolve_checkpoint(config.model))
        clusterer = (
            build_clusterer(config.semantic.method, **config.semantic.options)
            if rule.needs_stability
            else None
        )
        if config.train or rule.needs_target:
            # (the entropy -> Platt targets are made on the training pool even with train: false)
            splits = load_questions(
                config.data.name,
                train_size=config.data.train_size,
                eval_size=config.data.eval_size,
                seed=config.seed,
                **config.data.options,
            )
        else:
            # an evaluation-only job needs no training pool: a small file of one's own will do
            splits = QuestionSplits(
                train=rows_to_dataset([]),
                eval=load_eval_questions(
                    config.data.name, eval_size=config.data.eval_size, **config.data.options
                ),
            )
        n_train = train_questions(config, device)
        train = splits.train.shuffle(seed=config.seed).select(
            range(min(n_train, len(splits.train)))
        )
        train = mark_labeled(train, config.reward.labeled_fraction, config.seed)
        sets = load_sets(config.eval, set(train["question_id"]))
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        # One exception type for every rejected input, so the CLI prints it without a traceback.
        # A RuntimeError is a bug (a loader that leaks eval questions into training, say): it
        # keeps its traceback and the run is not reported as bad input.
        raise err if isinstance(err, ConfigError) else ConfigError(str(err)) from err
    return Prepared(config, device, changed, splits, train, clusterer, sets)


def run(cfg: DictConfig) -> RunResult:
    """Run the job the config names (`job: train` unless an experiment says otherwise)."""
    name = cfg.get("job", "train")
    if name not in JOBS:
        raise ConfigError(f"job: unknown job {name!r}. Fix: use one of {sorted(JOBS)}")
    return JOBS[name](cfg)


def train_job(cfg: DictConfig) -> RunResult:
    """Evaluate the base model, train with GRPO (unless `train: false`), evaluate again."""
    started = time.perf_counter()
    prepared = prepare(cfg)
    config, device = prepared.config, prepared.device
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # A rerun of the folder continues the MLflow run an earlier job there opened: from its newest
    # checkpoint, or from step 0 when it was stopped before the first one.
    earlier = earlier_run(config.tracking.tracking_uri, output_dir)
    resume_from = last_checkpoint(str(output_dir)) if earlier else None
    # Initialised here with the job's device, so a CPU launch gets gloo; GRPOTrainer reuses it.
    # The timeout is transformers' ddp_timeout: the other ranks wait while rank 0 evaluates.
    state = PartialState(cpu=device == "cpu", timeout=timedelta(seconds=1800))
    if earlier and earlier.info.status == RunStatus.to_string(RunStatus.FINISHED):
        if state.is_main_process:
            print(
                f"run {earlier.info.run_id} in {output_dir} is already FINISHED; nothing to do "
                "(to train again, run it in a new folder)"
            )
        client = tracking.get_client(config.tracking.tracking_uri)
        return logged_result(client, earlier, output_dir, time.perf_counter() - started)
    if not state.is_main_process:
        train_on_other_rank(prepared, output_dir, resume_from)
        return RunResult("", {}, {}, str(output_dir), time.perf_counter() - started)
    if earlier:
        print(reopening_note(earlier, output_dir, resume_from, config.train))

    client = tracking.get_client(config.tracking.tracking_uri)
    tags = {
        "experiment": config.tracking.experiment_name,
        "reward": config.reward.name,
        "labeled_fraction": str(config.reward.labeled_fraction),
        "model": config.model.name,
        "data": config.data.name,
        "prompt": config.prompt.name,
        "device": device,
        "trained": str(config.train),
        **config.tags,
    }
    with tracking.mlflow_run(
        client,
        config.tracking.experiment_name,
        config.tracking.run_name,
        tags,
        resume_run_id=earlier.info.run_id if earlier else None,
        parent_run_id=config.tracking.parent_run_id,
    ) as run_id:
        (output_dir / RUN_ID_FILE).write_text(run_id)
        # a reopened run has its config already (and evaluate_base reuses its step-0 evaluation)
        if not earlier:
            tracking.log_config(client, run_id, cfg, prepared.changed)
            tracking.log_params(
                client,
                run_id,
                {
                    "device": device,
                    "model.resolved_dtype": models.dtype_name(config.model, device),
                    "data.train_questions_used": str(len(prepared.train)),
                    "data.eval_questions_used": str(len(prepared.splits.eval)),
                    **{
                        f"eval.sets.{name}.questions_used": str(len(questions))
                        for name, questions in prepared.sets.items()
                    },
                },
            )
        checkpoint = models.resolve_checkpoint(config.model)
        tokenizer = models.load_tokenizer(checkpoint)
        dtype = models.torch_dtype(config.model, device)
        before = evaluate_base(
            prepared, checkpoint, tokenizer, dtype, client, run_id, resumed=bool(earlier)
        )
        if get_rule(config.reward.name).needs_target:
            prepared.train = add_calibrated_target(
                cfg, prepared, checkpoint, tokenizer, dtype, before[HELD_OUT][0], client, run_id
            )
        after: dict[str, tuple[pd.DataFrame, dict[str, float]]] = {}
        if config.train:
            trainer = train(
                prepared, checkpoint, tokenizer, dtype, client, run_id, resume_from, output_dir
            )
            after, seconds = evaluate_run_sets(
                trainer.model, tokenizer, config, prepared.eval_sets()
            )
            log_evaluations(client, run_id, after, seconds, trainer.state.global_step)
        summaries = log_summaries(client, run_id, before, after)
        if after:
            # the table view's single values beside before/* (evaluate_base logged those)
            for stage in ("after", "change"):
                tracking.log_stage(client, run_id, stage, summaries[HELD_OUT][stage])
        tracking.log_tags(
            client,
            run_id,
            {MLFLOW_RUN_NOTE: description(config, summaries[HELD_OUT], prepared.changed)},
        )
        print_summary(config, summaries, run_id, client.tracking_uri)
    metrics = {
        name: {"before": before[name][1], "after": after[name][1] if name in after else {}}
        for name in before
    }
    held_out = metrics.pop(HELD_OUT)
    return RunResult(
        run_id,
        held_out["before"],
        held_out["after"],
        str(output_dir),
        time.perf_counter() - started,
        metrics,
    )


def earlier_run(tracking_uri: str | None, output_dir: Path) -> Run | None:
    """The MLflow run an earlier job in this folder opened (its id is in RUN_ID_FILE), if any.

    Every rank asks, so that all of them skip a finished run; only a folder with a run id opens
    the store, so the ranks of a new job never race to create a fresh sqlite store.
    """
    run_id_file = output_dir / RUN_ID_FILE
    if not run_id_file.exists():
        return None
    run_id = run_id_file.read_text().strip()
    client = tracking.get_client(tracking_uri)
    try:
        return client.get_run(run_id)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(
            f"output_dir: {output_dir} belongs to MLflow run {run_id}, which is not in "
            f"{client.tracking_uri}. Fix: rerun with the tracking.tracking_uri it was logged to, "
            "or in a new folder"
        ) from err


def reopening_note(earlier: Run, output_dir: Path, resume_from: str | None, train: bool) -> str:
    """The line a rerun prints before it reopens the folder's run: where training starts."""
    note = f"run {earlier.info.run_id} in {output_dir} ended {earlier.info.status}; reopening it"
    if not train:
        return note
    if resume_from:
        return f"{note}, resuming from {Path(resume_from).name}"
    return f"{note}; no checkpoint found, so training starts again from step 0"


def logged_result(client: MlflowClient, run: Run, output_dir: Path, seconds: float) -> RunResult:
    """A finished run's result as its job returned it, from MLflow: the eval/* metrics at step 0
    (before training) and, when it trained, at its last step (after), per evaluation set."""
    trained = run.data.tags.get("trained") == "True"
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for name in run.data.metrics:
        if not name.startswith("eval/"):
            continue
        *set_name, metric = name.removeprefix("eval/").split("/")
        stages = metrics.setdefault(
            set_name[0] if set_name else HELD_OUT, {"before": {}, "after": {}}
        )
        for logged in client.get_metric_history(run.info.run_id, name):
            if logged.step == 0:
                stages["before"][metric] = logged.value
        if trained:
            stages["after"][metric] = run.data.metrics[name]
    held_out = metrics.pop(HELD_OUT, {"before": {}, "after": {}})
    return RunResult(
        run.info.run_id, held_out["before"], held_out["after"], str(output_dir), seconds, metrics
    )


def evaluate_run_sets(model, tokenizer, config: RunConfig, sets: dict[str, datasets.Dataset]):
    """entropic.evaluate.evaluate_sets as the run's config says to prompt and generate."""
    return evaluate_sets(model, tokenizer, sets, config.prompt, config.eval, config.generation.name)


def evaluate_base(prepared, checkpoint, tokenizer, dtype, client, run_id, resumed: bool):
    """Greedy evaluation of the untrained model on every evaluation set, logged at step 0
    (reused when resuming). Returns set name -> (prediction table, metrics)."""
    config = prepared.config
    results, pending = {}, {}
    for name, questions in prepared.eval_sets().items():
        saved = before_table_path(config, name)
        if resumed and saved.exists():
            table = pd.read_parquet(saved)
            results[name] = table, summarize(table)
        else:
            pending[name] = questions
    if pending:
        model = models.load_model(checkpoint, dtype, prepared.device)
        log.info("Evaluating the base model on %s", {n: len(q) for n, q in pending.items()})
        fresh, seconds = evaluate_run_sets(model, tokenizer, config, pending)
        for name, (table, _) in fresh.items():
            table.to_parquet(before_table_path(config, name))
        log_evaluations(client, run_id, fresh, seconds, step=0)
        if HELD_OUT in fresh:
            # the table view's single value; eval/* keeps the history (step 0, periodic, last)
            metrics = fresh[HELD_OUT][1]
            tracking.log_stage(client, run_id, "before", {n: metrics[n] for n in SUMMARY_NAMES})
        results.update(fresh)
    return {name: results[name] for name in prepared.eval_sets()}


def before_table_path(config: RunConfig, name: str) -> Path:
    """Where a set's step-0 prediction table is kept in the job folder, for a resumed run."""
    suffix = "" if name == HELD_OUT else f"_{name}"
    return Path(config.output_dir) / f"predictions_before{suffix}.parquet"


def log_evaluations(client, run_id, results, seconds: float, step: int) -> None:
    """Evaluations of every set at `step`: metrics at eval/* or eval/<set>/*, their wall time
    as time/eval_seconds, each prediction table as before.json (step 0) or after.json."""
    metrics = {metric_prefix(name): values for name, (_, values) in results.items()}
    tracking.log_evaluation(client, run_id, metrics, seconds, step)
    for name, (table, _) in results.items():
        client.log_table(run_id, table, predictions_path(name, "before" if step == 0 else "after"))


def train(prepared, checkpoint, tokenizer, dtype, client, run_id, resume_from, output_dir):
    """GRPO on the training subset; logs the wall time of training (time/*) next to TRL's own
    metrics (TRL's mean loss is train/mean_loss, entropic.training.TRAINER_NAMES)."""
    config = prepared.config
    reward = TRLReward(
        config.reward, config.trainer.num_generations, prepared.clusterer, config.prompt.format
    )
    periodic = config.eval.periodic_size
    trainer = build_trainer(
        config,
        checkpoint,
        tokenizer,
        add_prompts(prepared.train, config.prompt),
        [reward],
        str(output_dir),
        prepared.device,
        dtype,
        client,
        run_id,
        periodic_questions={
            name: questions.select(range(min(periodic, len(questions))))
            for name, questions in prepared.eval_sets().items()
            if name == HELD_OUT or config.eval.sets[name].periodic
        },
    )
    on_gpu = prepared.device == "cuda"
    if on_gpu:
        # the peak of training alone, not of the base evaluation before it
        torch.cuda.reset_peak_memory_stats()
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - train_started
    step = trainer.state.global_step
    timing = {"train_seconds": seconds, "seconds_per_step": seconds / max(step, 1)}
    if client is not None:
        tracking.log_metrics(client, run_id, timing, step, "time/")
        if on_gpu:
            tracking.log_metrics(client, run_id, gpu_memory(), step, "gpu/")
    return trainer


def gpu_memory() -> dict[str, float]:
    """Rank 0's peak CUDA memory since the last reset, GiB: what torch allocated for tensors,
    and what its caching allocator reserved (with vllm_colocate, vLLM's KV cache is in it)."""
    return {
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def train_on_other_rank(prepared: Prepared, output_dir: Path, resume_from: str | None) -> None:
    """Rank > 0 of a multi-process launch: train in step with rank 0, leave MLflow to it.

    Every rank generates its share of the rollouts and calls the reward, whose group stability
    gathers across ranks. Evaluation is rank 0's, except under ZeRO-3, where the weights are
    sharded and every rank must take part in rank 0's generation after training.
    """
    config = prepared.config
    if not config.train:
        return
    checkpoint = models.resolve_checkpoint(config.model)
    tokenizer = models.load_tokenizer(checkpoint)
    dtype = models.torch_dtype(config.model, prepared.device)
    trainer = train(prepared, checkpoint, tokenizer, dtype, None, None, resume_from, output_dir)
    if is_deepspeed_zero3_enabled():
        evaluate_run_sets(trainer.model, tokenizer, config, prepared.eval_sets())


def summary_table(before: dict[str, float], after: dict[str, float]) -> pd.DataFrame:
    """Before/after/change per eval metric; one column when the job did not train."""
    if not after:
        return pd.DataFrame({"untrained": before}).reindex(list(SUMMARY_NAMES))
    table = pd.DataFrame({"before": before, "after": after}).reindex(list(SUMMARY_NAMES))
    table["change"] = table["after"] - table["before"]
    return table


def headline(config: RunConfig) -> str:
    return (
        f"{config.tracking.experiment_name}: {config.reward.name} "
        f"(labeled_fraction={config.reward.labeled_fraction}) on {config.model.name}"
    )


def description(config: RunConfig, table: pd.DataFrame, changed: Changed) -> str:
    """The run's MLflow description (the top of its page in the UI): the before/after/change
    table, and what the CPU caps changed from the config."""
    shown = table.apply(tracking.cells, form=".3f")
    if "change" in table:
        shown["change"] = tracking.cells(table["change"], "+.3f")
    lines = [f"**{headline(config)}**", "", tracking.markdown_numbers(shown)]
    if changed:
        caps = ", ".join(f"`{key}` {old} -> {new}" for key, (old, new) in changed.items())
        lines += ["", f"Ran with the CPU caps: {caps} (params: the values used; requested.*)."]
    return "\n".join(lines)


def log_summaries(client, run_id, before, after) -> dict[str, pd.DataFrame]:
    """The summary table of every set and the behaviour table, as summary.md and the reliability
    diagrams (reliability_diagram.png for the held-out split, reliability_diagram/<set>.png for
    each other set). Returns the tables by title, as printed."""
    tables = {}
    for name in before:
        tables[name] = summary_table(before[name][1], after[name][1] if name in after else {})
        panels = {"before training": before[name][0]}
        if name in after:
            panels["after training"] = after[name][0]
        figure = reliability_diagram(panels)
        client.log_figure(run_id, figure, figure_path("reliability_diagram", name))
    tables[BEHAVIOUR] = behaviour_table(
        {name: metrics for name, (_, metrics) in before.items()},
        {name: metrics for name, (_, metrics) in after.items()},
    )
    client.log_text(
        run_id,
        "\n\n".join(f"## {title}\n\n{table.to_markdown()}" for title, table in tables.items()),
        "summary.md",
    )
    return tables


def print_summary(
    config: RunConfig, tables: dict[str, pd.DataFrame], run_id: str, uri: str
) -> None:
    """One table per evaluation set, then the behaviour table, then where the run is."""
    print()
    print(f"== {headline(config)} ==")
    for title, table in tables.items():
        shown = f"{config.data.name} held-out split (eval/*)" if title == HELD_OUT else title
        print(f"\n-- {shown} --")
        print(table.to_string(float_format=lambda v: f"{v:+.3f}" if v < 0 else f"{v:.3f}"))
    print(closing_line(run_id, uri))


# Every kind of job `python -m entropic.run` can run; experiments choose one with `job: <name>`.
JOBS: dict[str, Callable[[DictConfig], RunResult]] = {
    "train": train_job,
    "stability_study": stability_study,
}
