"""The train job: evaluate the base model -> GRPO -> evaluate again, all in one MLflow run.

    python -m entropic.run +experiment=scarce_mixed
    python -m entropic.run +experiment=prompting_baseline        # train: false, evaluation only

Every evaluation set (the held-out split and `eval.sets`) is evaluated greedily on the base model
and logged at step 0, then, when `train` is true, GRPO trains on the training questions and the
sets are evaluated again. With `reward.name=calibrated` the entropy -> Platt targets are made
between the two (entropic.jobs.calibrated_target).

Rerunning a job's folder (`hydra.run.dir=<folder>`) reopens the MLflow run that folder's job
opened, whatever stopped it: training resumes from the newest checkpoint, or starts again from
step 0 if there is none. A FINISHED run is left untouched.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
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
from transformers.integrations import is_deepspeed_zero3_enabled

from entropic import models, readout, tracking
from entropic.compute import Changed, cpu_malloc
from entropic.config import ConfigError, RunConfig
from entropic.evaluate import (
    BEHAVIOUR,
    HELD_OUT,
    SUMMARY_NAMES,
    behaviour_table,
    evaluate_sets,
    figure_path,
    metric_prefix,
    predictions_path,
    summarize,
)
from entropic.jobs import calibrated_target
from entropic.jobs.context import RunContext, RunResult, log_run_config, open_run
from entropic.plots import reliability_diagram
from entropic.prompting import add_prompts
from entropic.rewards import TRLReward
from entropic.training import build_trainer, last_checkpoint
from entropic.ui import closing_line

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id.txt"


def run(context: RunContext) -> RunResult:
    """Evaluate the base model, train with GRPO (unless `train: false`), evaluate again."""
    config, device, output_dir = context.config, context.device, context.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    # A rerun of the folder continues the MLflow run an earlier job there opened: from its newest
    # checkpoint, or from step 0 when it was stopped before the first one.
    earlier = earlier_run(config.tracking.tracking_uri, output_dir)
    context = dataclasses.replace(
        context, resume_from=last_checkpoint(str(output_dir)) if earlier else None
    )
    readout.check_resume(config, context.resume_from)
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
        return logged_result(client, earlier, output_dir, context.seconds())
    if not state.is_main_process:
        train_on_other_rank(context)
        return RunResult("", {}, {}, str(output_dir), context.seconds())
    if earlier:
        print(reopening_note(earlier, output_dir, context.resume_from, config.train))

    tags = {
        "reward": config.reward.name,
        "labeled_fraction": str(config.reward.labeled_fraction),
        "trained": str(config.train),
    }
    resume_run_id = earlier.info.run_id if earlier else None
    with open_run(context, tags, resume_run_id) as context:
        client, run_id = context.run.client, context.run.run_id
        (output_dir / RUN_ID_FILE).write_text(run_id)
        # a reopened run has its config already (and evaluate_base reuses its step-0 evaluation)
        if not earlier:
            log_run_config(
                context,
                {
                    "model.resolved_dtype": models.dtype_name(config.model, device),
                    "compute.resolved_malloc": cpu_malloc(config.compute, device),
                    "data.train_questions_used": len(context.train),
                    "data.train_kinds_used": kind_counts(context.train),
                    "data.eval_questions_used": len(context.splits.eval),
                    **{
                        f"eval.sets.{name}.questions_used": len(questions)
                        for name, questions in context.sets.items()
                    },
                },
            )
        before = evaluate_base(context, resumed=bool(earlier))
        if config.reward.needs_target:
            # the one place the training questions change: they gain their calibrated targets
            context = dataclasses.replace(
                context, train=calibrated_target.add(context, before[HELD_OUT][0])
            )
        after: dict[str, tuple[pd.DataFrame, dict[str, float]]] = {}
        if config.train:
            trainer = train(context)
            after, seconds = evaluate_run_sets(
                trainer.model, context.policy.tokenizer, config, context.eval_sets()
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
            {MLFLOW_RUN_NOTE: description(config, summaries[HELD_OUT], context.changed)},
        )
        print_summary(config, summaries, run_id, client.tracking_uri)
    metrics = {
        name: {"before": before[name][1], "after": after[name][1] if name in after else {}}
        for name in before
    }
    held_out = metrics.pop(HELD_OUT)
    return RunResult(
        run_id, held_out["before"], held_out["after"], str(output_dir), context.seconds(), metrics
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


def evaluate_base(context: RunContext, resumed: bool):
    """Greedy evaluation of the untrained model on every evaluation set, logged at step 0
    (reused when resuming). Returns set name -> (prediction table, metrics)."""
    config, client, run_id = context.config, context.run.client, context.run.run_id
    results, pending = {}, {}
    for name, questions in context.eval_sets().items():
        saved = before_table_path(config, name)
        if resumed and saved.exists():
            table = pd.read_parquet(saved)
            results[name] = table, summarize(table)
        else:
            pending[name] = questions
    if pending:
        model = context.policy.load_model()
        log.info("Evaluating the base model on %s", {n: len(q) for n, q in pending.items()})
        fresh, seconds = evaluate_run_sets(model, context.policy.tokenizer, config, pending)
        for name, (table, _) in fresh.items():
            table.to_parquet(before_table_path(config, name))
        log_evaluations(client, run_id, fresh, seconds, step=0)
        if HELD_OUT in fresh:
            # the table view's single value; eval/* keeps the history (step 0, periodic, last)
            metrics = fresh[HELD_OUT][1]
            tracking.log_stage(client, run_id, "before", {n: metrics[n] for n in SUMMARY_NAMES})
        results.update(fresh)
    return {name: results[name] for name in context.eval_sets()}


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


def train(context: RunContext):
    """GRPO on the training subset; logs the wall time of training (time/*) next to TRL's own
    metrics (TRL's mean loss is train/mean_loss, entropic.training.TRAINER_NAMES). Without an
    open run (a rank > 0) nothing is logged."""
    config, policy, tracked = context.config, context.policy, context.run
    client, run_id = (tracked.client, tracked.run_id) if tracked else (None, None)
    reward = TRLReward(
        config.reward, config.trainer.num_generations, context.clusterer, config.prompt.format
    )
    periodic = config.eval.periodic_size
    trainer = build_trainer(
        config,
        policy.checkpoint,
        policy.tokenizer,
        add_prompts(context.train, config.prompt),
        [reward],
        str(context.output_dir),
        context.device,
        policy.dtype,
        client,
        run_id,
        periodic_questions={
            name: questions.select(range(min(periodic, len(questions))))
            for name, questions in context.eval_sets().items()
            if name == HELD_OUT or config.eval.sets[name].periodic
        },
    )
    if config.adapter.centre is not None:
        centre_readout(context, trainer, client, run_id)
    on_gpu = context.device == "cuda"
    if on_gpu:
        # the peak of training alone, not of the base evaluation before it
        torch.cuda.reset_peak_memory_stats()
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=context.resume_from)
    seconds = time.perf_counter() - train_started
    step = trainer.state.global_step
    timing = {"train_seconds": seconds, "seconds_per_step": seconds / max(step, 1)}
    if client is not None:
        tracking.log_metrics(client, run_id, timing, step, "time/")
        if on_gpu:
            tracking.log_metrics(client, run_id, gpu_memory(), step, "gpu/")
    return trainer


def centre_readout(context: RunContext, trainer, client, run_id) -> None:
    """adapter=readout: centre the LoRA layers' input at the stated number (entropic.readout),
    from the base model's greedy answers to the training pool's first questions, or from the
    checkpoint a resumed run continues."""
    centre = context.config.adapter.centre
    centres = readout.install(trainer.model, readout.gates(centre))
    readout.at_the_number(trainer.model, centres, centre.temperature, centre.shift_rate)
    if context.resume_from:
        readout.restore(context.resume_from, centres)
        return
    pool = context.splits.train
    questions = pool.select(range(min(context.config.adapter.centre.questions, len(pool))))
    fitted = readout.fit(
        trainer.model, context.policy.tokenizer, questions, context.config, centres
    )
    print(
        f"read-out centred on {int(fitted['answers'])} greedy answers of {len(questions)} "
        f"training-pool questions: gate radius {fitted['radius']:.1f} "
        f"(median distance {fitted['median_distance']:.1f})"
    )
    if client is not None:
        tracking.log_metrics(client, run_id, fitted, 0, "readout/")


def gpu_memory() -> dict[str, float]:
    """Rank 0's peak CUDA memory since the last reset, GiB: what torch allocated for tensors,
    and what its caching allocator reserved (with vllm_colocate, vLLM's KV cache is in it)."""
    return {
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def kind_counts(questions: datasets.Dataset) -> str:
    """How many questions of each kind, e.g. "capital=4, continent=5" (a run's logged mix)."""
    counts = collections.Counter(questions["kind"])
    return ", ".join(f"{kind}={counts[kind]}" for kind in sorted(counts))


def train_on_other_rank(context: RunContext) -> None:
    """Rank > 0 of a multi-process launch: train in step with rank 0, leave MLflow to it.

    Every rank generates its share of the rollouts and calls the reward, whose group stability
    gathers across ranks. Evaluation is rank 0's, except under ZeRO-3, where the weights are
    sharded and every rank must take part in rank 0's generation after training.
    """
    config = context.config
    if not config.train:
        return
    trainer = train(context)
    if is_deepspeed_zero3_enabled():
        evaluate_run_sets(trainer.model, context.policy.tokenizer, config, context.eval_sets())


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
