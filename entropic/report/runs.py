"""Reading a sweep from MLflow: its finished child runs, their conditions and their eval metrics.

A run's *condition* is what tells it apart from the sweep's other runs except its seed: every
config value (MLflow param) that varies across the runs read, so a sweep of `reward=brier`
against `reward=rlcr` gives two conditions even where nothing else differs. Of two runs with the
same condition and seed (a point run twice, e.g. by two sweeps), the newer counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from mlflow.tracking import MlflowClient

from entropic.evaluate import BEHAVIOUR_NAMES, METRIC_NAMES
from entropic.sweeps import SWEEP_TAG, children


class ReportError(ValueError):
    """There is nothing to report from, or a study is ill defined; the message says the fix."""


# Params that never tell conditions apart: the seed (a condition's runs differ in it) and what
# it draws (each seed's training subset has its own mix of question kinds), and run bookkeeping
# that differs between two runs of one point (where it ran, what it was called, which store and
# parent run it logged to). `tags.*` are free-form labels, and the sweep's own
# `tags.sweep_point` names the seed.
SEED_PARAM = "seed"
BOOKKEEPING_PARAMS = frozenset(
    {
        SEED_PARAM,
        "data.train_kinds_used",
        "output_dir",
        "tracking.run_name",
        "tracking.parent_run_id",
        "tracking.tracking_uri",
        "tracking.experiment_name",
    }
)
BOOKKEEPING_PREFIXES = ("tags.",)
# How a run that never logged a param (it predates the key) shows in a condition that needs it.
NOT_LOGGED = "(not logged)"

# A condition: (param, value) for each param that varies across the runs read, sorted by param.
Condition = tuple[tuple[str, str], ...]


@dataclass
class SweepRuns:
    """The finished child runs of one or more sweeps, one row each, and their eval/* histories."""

    client: MlflowClient
    # the sweeps read (found: newest first; given: in that order); the report is logged to the first
    parent_run_ids: list[str]
    # index run_id; the config values the sections read, the run's `condition`, and
    # before/<metric>, after/<metric> (held-out split) and before/<set>/<metric> (other sets)
    runs: pd.DataFrame
    # run_id -> eval/* per step (rows: steps, columns: METRIC_NAMES)
    histories: dict[str, pd.DataFrame]
    # run_id -> every param the run logged (its whole config, flattened)
    params: dict[str, dict[str, str]] = field(default_factory=dict)
    # the params that tell the runs' conditions apart (vary across the runs, not bookkeeping)
    varying: list[str] = field(default_factory=list)
    # children that did not finish, as "run name (STATUS)"
    skipped: list[str] = field(default_factory=list)
    # finished runs that a newer run of the same condition and seed replaced, as "name (run id)"
    superseded: list[str] = field(default_factory=list)
    # the evaluation sets besides the held-out split (eval.sets) that any run logged
    sets: list[str] = field(default_factory=list)

    @property
    def parent_run_id(self) -> str:
        return self.parent_run_ids[0]


def find_parents(client: MlflowClient, sweep: str) -> list[str]:
    """The parent runs of `sweep` with at least one finished child, newest first."""
    fix = f"Fix: make sweep SWEEP={sweep}, or point MLFLOW_TRACKING_URI at the store that has it"
    experiment = client.get_experiment_by_name(sweep)
    if experiment is None:
        raise ReportError(f"no MLflow experiment {sweep!r} in {client.tracking_uri}. {fix}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.{SWEEP_TAG} = '{sweep}'",
        order_by=["attributes.start_time DESC"],
        max_results=10_000,
    )
    finished_parents = {
        run.data.tags["mlflow.parentRunId"]
        for run in runs
        if run.info.status == "FINISHED" and "mlflow.parentRunId" in run.data.tags
    }
    parents = [run.info.run_id for run in runs if run.info.run_id in finished_parents]
    if not parents:
        raise ReportError(f"no sweep {sweep!r} with a finished run in {client.tracking_uri}. {fix}")
    return parents


def metric_history(client: MlflowClient, run_id: str) -> pd.DataFrame:
    """eval/<metric> of one run per step: step 0, the periodic evaluations, the last step."""
    return metric_frame(client, run_id, {name: f"eval/{name}" for name in METRIC_NAMES})


def metric_frame(client: MlflowClient, run_id: str, keys: dict[str, str]) -> pd.DataFrame:
    """One row per logged step, one column per `keys` entry (column name -> metric key); NaN
    where a step did not log that metric."""
    columns = {
        name: pd.Series(
            {m.step: m.value for m in client.get_metric_history(run_id, key)}, dtype=float
        )
        for name, key in keys.items()
    }
    return pd.DataFrame(columns).sort_index()


def is_bookkeeping(param: str) -> bool:
    return param in BOOKKEEPING_PARAMS or param.startswith(BOOKKEEPING_PREFIXES)


def varying_params(params: list[dict[str, str]]) -> list[str]:
    """The params that tell these runs' conditions apart: those with two or more values among
    the runs that logged them, bookkeeping and the seed left out.

    A param only some runs logged, with one value among them, is a key added to the config
    between two sweeps: it says nothing about the condition, so it does not split old runs from
    new ones.
    """
    values: dict[str, set[str]] = {}
    for run in params:
        for name, value in run.items():
            values.setdefault(name, set()).add(value)
    return sorted(
        name for name, seen in values.items() if len(seen) > 1 and not is_bookkeeping(name)
    )


def condition_of(params: dict[str, str], varying: list[str]) -> Condition:
    return tuple((name, params.get(name, NOT_LOGGED)) for name in varying)


def load_sweep(client: MlflowClient, parent_run_ids: list[str]) -> SweepRuns:
    """The finished children of these parent runs; of runs with the same condition and seed, the
    newest."""
    finished, skipped = [], []
    for parent_run_id in parent_run_ids:
        for child in children(client, parent_run_id):
            if child.info.status == "FINISHED":
                finished.append(child)
            else:
                skipped.append(f"{child.info.run_name} ({child.info.status})")
    varying = varying_params([child.data.params for child in finished])
    rows, histories, kept, superseded, seen = [], {}, {}, [], set()
    for child in sorted(finished, key=lambda run: run.info.start_time, reverse=True):
        run_id, params = child.info.run_id, child.data.params
        condition = condition_of(params, varying)
        if (condition, params[SEED_PARAM]) in seen:
            superseded.append(f"{child.info.run_name} ({run_id})")
            continue
        seen.add((condition, params[SEED_PARAM]))
        kept[run_id] = dict(params)
        histories[run_id] = metric_history(client, run_id)
        rows.append(
            {
                "run_id": run_id,
                "run_name": child.info.run_name,
                "condition": condition,
                **point_values(params),
                **logged_stages(client, child),
            }
        )
    if not rows:
        raise ReportError(
            f"parent run(s) {', '.join(parent_run_ids)} have no finished child run "
            f"(skipped: {skipped}). Fix: wait for the sweep, or pass another --parent-run-id"
        )
    # oldest first, as the runs of one sweep come; a metric a run did not log is NaN
    runs = pd.DataFrame(rows[::-1]).set_index("run_id")
    sets = sorted({column.split("/")[1] for column in runs if column.count("/") == 2})
    expected = [
        f"{when}/{prefix}{metric}"
        for when in ("before", "after")
        for prefix in ["", *(f"{name}/" for name in sets)]
        for metric in (*METRIC_NAMES, *BEHAVIOUR_NAMES)
    ]
    runs = runs.reindex(columns=[*runs.columns, *(c for c in expected if c not in runs)])
    return SweepRuns(
        client, parent_run_ids, runs, histories, kept, varying, skipped, superseded, sets
    )


def point_values(params: dict[str, str]) -> dict[str, object]:
    """The config values the report's sections read, typed (the condition itself is
    `condition`): the seed, the reward mix, the data and evaluation sizes, whether it trained."""
    return {
        "seed": int(params[SEED_PARAM]),
        "labeled_fraction": float(params["reward.labeled_fraction"]),
        "epochs": float(params["trainer.epochs"]),
        "train_size": int(params["data.train_size"]),
        "train_questions": int(params["data.train_questions_used"]),
        "eval_questions": int(params["data.eval_questions_used"]),
        "periodic_size": int(params["eval.periodic_size"]),
        "trained": params["train"] == "True",
        "prompt": params["prompt.name"],
        # with the prompt, what step 0 evaluates: the model and the dtype it ran in
        "model": params.get("model.name", NOT_LOGGED),
        "dtype": params.get("model.resolved_dtype", params.get("model.dtype", NOT_LOGGED)),
        # which Answer/Confidence lines count, and whether completions hold reasoning
        "prompt_format": params.get("prompt.format", "lines"),
    }


def logged_stages(client: MlflowClient, run) -> dict[str, float]:
    """Every eval metric a report reads, of the held-out split (eval/<metric>) and of each
    evaluation set (eval/<set>/<metric>): before/<...> at step 0 and after/<...> at the last
    step (for a run that never trained, both are its one evaluation)."""
    wanted = set(METRIC_NAMES) | set(BEHAVIOUR_NAMES)
    values = {}
    for name in run.data.metrics:
        tail = name.removeprefix("eval/")
        if tail == name or tail.rsplit("/", 1)[-1] not in wanted:
            continue
        history = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
        values[f"before/{tail}"] = history[0].value
        values[f"after/{tail}"] = history[-1].value
    return values
