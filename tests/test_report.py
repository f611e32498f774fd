"""Study reports: built from the real runs of the smoke sweep, their numbers are the runs' own."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from entropic.evaluate import METRIC_NAMES
from entropic.report import ReportError, main, write_report
from entropic.report.definition import (
    DefinitionError,
    default_studies_dir,
    load_definition,
    study_names,
)
from entropic.report.labels import label_conditions
from entropic.report.numbers import BOUNDS, interval, percent
from entropic.report.runs import find_parents, load_sweep
from entropic.report.sections import BEHAVIOUR_COLUMNS, TRANSFER_METRICS, main_numbers
from entropic.report.traces import moved_most
from entropic.sweeps import SWEEP_TAG

# The studies defined in experiments/<study>/study.yaml.
STUDIES = study_names(default_studies_dir())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0.436, 0.401, 0.470), "43.6% [40.1, 47.0]"),  # mean and 95% interval
        ((0.114, 0.114, 0.114), "11.4%"),  # one seed: no interval to show
        ((-0.05, math.nan, math.nan, True), "-5.0%"),  # a signed gap keeps its sign
        ((0.057, 0.01, 0.1, True), "+5.7% [+1.0, +10.0]"),
        ((math.nan,), "-"),  # no run had the value
    ],
)
def test_percent(args, expected):
    assert percent(*args) == expected


@pytest.mark.parametrize(
    ("values", "metric", "expected"),
    [
        # two seeds: mean 0.2, standard error 0.1, t(0.975, df=1) = 12.706; the interval
        # 0.2 -/+ 1.2706 = [-1.0706, 1.4706] is cut to the accuracy's [0, 1]
        ([0.1, 0.3], "accuracy", (0.2, 0.0, 1.0)),
        # a gap can be negative: cut to [-1, 1] only
        ([0.1, 0.3], "calibration_gap", (0.2, -1.0, 1.0)),
        # three seeds 0.40, 0.45, 0.50: standard error 0.0288675, t(0.975, df=2) = 4.302653;
        # half-width 0.124207, inside [0, 1], so nothing is cut
        ([0.40, 0.45, 0.50], "accuracy", (0.45, 0.325793, 0.574207)),
        ([0.3, math.nan], "accuracy", (0.3, 0.3, 0.3)),  # a run without the value is left out
    ],
)
def test_interval_is_cut_to_the_values_the_metric_can_take(values, metric, expected):
    got = interval(pd.Series(values), BOUNDS[metric])
    assert got == pytest.approx(expected, abs=1e-6)


def predictions(rows):
    return pd.DataFrame(
        rows, columns=["question_id", "question", "gold", "answer", "confidence", "correct"]
    )


def test_moved_most_orders_by_the_size_of_the_change():
    before = predictions(
        [
            ("q1", "Capital of France?", "Paris", "Paris", 0.9, True),
            ("q2", "Capital of Chad?", "N'Djamena", "Abuja", 0.9, False),
            ("q3", "Currency of Japan?", "Yen", "Yen", 0.8, True),
            ("q4", "Capital of Peru?", "Lima", None, None, False),
        ]
    )
    after = predictions(
        [
            ("q1", "Capital of France?", "Paris", "Paris", 0.8, True),  # -10 pts
            ("q2", "Capital of Chad?", "N'Djamena", "Abuja", 0.3, False),  # -60 pts
            ("q3", "Currency of Japan?", "Yen", "Yen", 0.9, True),  # +10 pts, ties with q1
            ("q4", "Capital of Peru?", "Lima", "Lima", 0.7, True),  # before unparsed: left out
        ]
    )
    moved = moved_most(before, after, k=3)
    assert list(moved["Question"]) == [
        "Capital of Chad?",  # the largest change
        "Capital of France?",  # q1 and q3 tie at 10 points: question id order
        "Currency of Japan?",
    ]
    assert list(moved["Change"]) == ["-60 pts", "-10 pts", "+10 pts"]
    assert moved["Before"].iloc[0] == "Abuja (90%, wrong)"
    assert moved["After"].iloc[0] == "Abuja (30%, wrong)"


def test_traces_show_the_reasoning_of_the_reasoning_prompt():
    # why: with prompt=reasoning the traces are where a reader sees how the reasoning changed
    def table(completion, answer, confidence, correct):
        rows = [("q1", "Patron saint of dancers?", "Saint Vitus", answer, confidence, correct)]
        frame = predictions(rows)
        frame["completion"] = completion
        return frame

    before = table(
        "It is Saint Genevieve.\nAnswer: Genevieve\nConfidence: 85", "Genevieve", 0.85, False
    )
    after = table(
        "Saint Vitus is also sometimes associated with dancers.\nAnswer: Genevieve\nConfidence: 60",
        "Genevieve",
        0.6,
        False,
    )
    moved = moved_most(before, after, k=1, fmt="reasoning")
    assert moved["Reasoning before"].iloc[0] == "It is Saint Genevieve."
    assert moved["Reasoning after"].iloc[0].startswith("Saint Vitus is also")
    # why: the short format has no reasoning to show
    assert "Reasoning before" not in moved_most(before, after, k=1).columns


def test_unknown_study_lists_the_valid_ones():
    with pytest.raises(ReportError, match="scarce_collapse"):
        write_report("scarce_colapse", MlflowClient("sqlite:///:memory:"))


def test_a_store_without_the_sweep_says_what_to_run(mlflow_uri, capsys):
    assert main(["mix_ratio", "--tracking-uri", mlflow_uri]) == 2
    assert "make sweep SWEEP=mix_ratio" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smoke_runs(smoke_sweep):
    """The smoke sweep's two runs, read straight from MLflow (independently of the report)."""
    assert smoke_sweep.done.returncode == 0, smoke_sweep.done.stderr[-3000:]
    client = MlflowClient(smoke_sweep.uri)
    experiment = client.get_experiment_by_name("rl_vs_prompting")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    by_name = {r.data.params["name"]: r for r in runs if r is not parent}

    def at_step_zero(run, metric):
        (first,) = [m for m in client.get_metric_history(run.info.run_id, metric) if m.step == 0]
        return first.value

    rl, prompted = by_name["scarce_mixed"], by_name["prompting_baseline"]
    # the held-out split's metrics as <metric>, each evaluation set's as <set>/<metric>
    metrics = [
        f"{prefix}{m}"
        for prefix in ("", *(f"{name}/" for name in SETS))
        for m in (*TRANSFER_METRICS, *BEHAVIOUR_COLUMNS, "confidence")
    ]
    return {
        "parent": parent.info.run_id,
        # the latest value of a metric is its value at the last step
        "rl after": {m: rl.data.metrics[f"eval/{m}"] for m in metrics},
        "rl before": {m: at_step_zero(rl, f"eval/{m}") for m in metrics},
        "prompted": {m: prompted.data.metrics[f"eval/{m}"] for m in metrics},
    }


# Where each table row of each study gets its numbers, given the smoke sweep's two runs (Run C,
# trained for two steps, and the prompting baseline, never trained).
ROWS = [
    # why: labeled_fraction 0.5 for 2 epochs is Run C; the untrained baseline is not a run
    ("scarce_collapse", "C", "rl after"),
    # why: mix_ratio rows are labeled shares
    ("mix_ratio", "0.5", "rl after"),
    # why: the ablation's conditions are the labeled share alone
    ("abundant_ablation", "50/50 Mixed", "rl after"),
    # why: the untrained model is step 0 of the RL run, not a run of its own
    ("rl_vs_prompting", "Untrained", "rl before"),
    ("rl_vs_prompting", "Aggressive prompting", "prompted"),
    ("rl_vs_prompting", "RL training", "rl after"),
]


@pytest.fixture(scope="module")
def reports(smoke_sweep, smoke_runs, tmp_path_factory):
    """Every study's report from the smoke sweep: rl_vs_prompting finds its sweep on its own (the
    newest parent run of its experiment); the others are pointed at it."""
    # a plain client: the report must read its own store, whatever the global tracking URI is
    client = MlflowClient(smoke_sweep.uri)
    out = tmp_path_factory.mktemp("reports")
    return {
        study: (
            write_report(
                study,
                client,
                out / study,
                parent_run_ids=None if study == "rl_vs_prompting" else [smoke_runs["parent"]],
            ),
            out / study,
        )
        for study in STUDIES
    }


@pytest.mark.parametrize(("study", "row", "source"), ROWS)
def test_report_numbers_are_the_runs_metrics(reports, smoke_runs, study, row, source):
    report, _ = reports[study]
    expected = smoke_runs[source]
    for metric in ("accuracy", "calibration_gap"):
        assert report.table.loc[row, f"{metric}_mean"] == pytest.approx(expected[metric])
        # the figures' per-seed dots: the one run's own value
        assert report.table.loc[row, f"{metric}_runs"] == pytest.approx([expected[metric]])
    assert report.table.loc[row, "seeds"] == 1


@pytest.mark.parametrize(
    ("study", "rows"), [(s, [r for t, r, _ in ROWS if t == s]) for s in STUDIES]
)
def test_each_report_has_exactly_its_rows(reports, study, rows):
    # why: the untrained prompting baseline must not land in a training study's table
    assert list(reports[study][0].table.index) == rows


def test_gap_reductions_are_computed_from_the_runs(reports, smoke_runs):
    table = reports["rl_vs_prompting"][0].table
    untrained = smoke_runs["rl before"]["calibration_gap"]
    for row, source in (("Aggressive prompting", "prompted"), ("RL training", "rl after")):
        # by size: a gap that flips sign (RL overshooting to underconfidence) is not > 100% gone
        expected = 1 - abs(smoke_runs[source]["calibration_gap"]) / abs(untrained)
        assert table.loc[row, "reduction_mean"] == pytest.approx(expected)
    # the reference's numbers stand beside ours
    assert table.loc["RL training", "ref_calibration_gap"] == pytest.approx(0.117)
    assert table.loc["Aggressive prompting", "ref_reduction"] == pytest.approx(0.27)


# The smoke sweep evaluates the default evaluation sets (conf/eval/default.yaml), 4 questions each.
SETS = ("elements", "arithmetic")
# Rows of the transfer and behaviour tables, and where their numbers come from.
BEFORE_AFTER_ROWS = [
    # why: the untrained model is step 0 of the trained runs, in every study
    ("scarce_collapse", "Untrained", "rl before"),
    ("scarce_collapse", "C", "rl after"),
    ("rl_vs_prompting", "Untrained", "rl before"),
    # why: the prompt is evaluated once, never trained
    ("rl_vs_prompting", "Aggressive prompting", "prompted"),
    ("rl_vs_prompting", "RL training", "rl after"),
    ("mix_ratio", "0.5", "rl after"),
]


@pytest.mark.parametrize(("study", "row", "source"), BEFORE_AFTER_ROWS[:5])
@pytest.mark.parametrize("eval_set", ["held_out", *SETS])
def test_transfer_numbers_are_each_sets_own(reports, smoke_runs, study, row, source, eval_set):
    numbers = reports[study][0].more[f"transfer/{eval_set}"]
    prefix = "" if eval_set == "held_out" else f"{eval_set}/"
    for metric in TRANSFER_METRICS:
        expected = smoke_runs[source][f"{prefix}{metric}"]
        assert numbers.loc[row, f"{metric}_mean"] == pytest.approx(expected, nan_ok=True)
    assert numbers.loc[row, "seeds"] == 1


@pytest.mark.parametrize(("study", "row", "source"), BEFORE_AFTER_ROWS)
@pytest.mark.parametrize("eval_set", ["held_out", *SETS])
def test_behaviour_numbers_are_the_runs_own(reports, smoke_runs, study, row, source, eval_set):
    numbers = reports[study][0].more[f"behaviour/{eval_set}"]
    prefix = "" if eval_set == "held_out" else f"{eval_set}/"
    for metric in BEHAVIOUR_COLUMNS:
        expected = smoke_runs[source][f"{prefix}{metric}"]
        assert numbers.loc[row, f"{metric}_mean"] == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize(
    ("study", "sections"),
    [
        # why: the issue asks for transfer columns in these two studies...
        ("scarce_collapse", ["## Transfer", "## Behaviour"]),
        ("rl_vs_prompting", ["## Transfer", "## Behaviour"]),
        # ...and for the behaviour table in every training report
        ("mix_ratio", ["## Behaviour"]),
        ("abundant_ablation", ["## Behaviour"]),
    ],
)
def test_reports_have_their_sections(reports, study, sections):
    text = (reports[study][1] / "report.md").read_text()
    for section in sections:
        assert section in text
    for name in SETS:
        assert f"### `{name}` (out of domain" in text


@pytest.mark.parametrize("study", list(STUDIES))
def test_report_is_written_and_logged_to_the_parent_run(reports, smoke_runs, smoke_sweep, study):
    report, out = reports[study]
    text = (out / "report.md").read_text()
    # the table in the markdown shows the runs' numbers, the figures are there
    assert percent(smoke_runs["rl after"]["accuracy"]) in text
    for name in report.figures:
        assert (out / f"{name}.png").stat().st_size > 0
        assert f"({name}.png)" in text
    assert "## Traces" in text
    client = MlflowClient(smoke_sweep.uri)
    logged = {a.path for a in client.list_artifacts(smoke_runs["parent"], f"report/{study}")}
    assert {f"report/{study}/report.md", f"report/{study}/training_curves.png"} <= logged


def point_params(seed: int, fraction: float, **more) -> dict:
    """The params of a sweep's point that the report reads, as a run logs them, with `more`."""
    return {
        "seed": seed,
        "reward.labeled_fraction": fraction,
        "trainer.epochs": 2,
        "data.train_size": 1600,
        "data.train_questions_used": 32,
        "data.eval_questions_used": 200,
        "eval.periodic_size": 100,
        "train": True,
        "prompt.name": "default",
        **more,
    }


def logged_sweep(client: MlflowClient, experiment_id: str, started: int, points) -> str:
    """A sweep as entropic.sweeps and entropic.jobs.train leave it in MLflow: a parent run, and a
    child per point with the params the report reads and eval/* before (step 0) and after (step
    4)."""
    parent = client.create_run(experiment_id, start_time=started, tags={SWEEP_TAG: "mix_ratio"})
    for i, (seed, fraction, accuracy, status, *more) in enumerate(points, start=1):
        child = client.create_run(
            experiment_id,
            start_time=started + i,
            run_name=f"lf{fraction}-seed{seed}-{started}",
            tags={SWEEP_TAG: "mix_ratio", "mlflow.parentRunId": parent.info.run_id},
        )
        run_id = child.info.run_id
        params = point_params(seed, fraction, **(more[0] if more else {}))
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        for metric in METRIC_NAMES:
            client.log_metric(run_id, f"eval/{metric}", 0.2, step=0)
        client.log_metric(run_id, "eval/accuracy", accuracy, step=4)
        client.set_terminated(run_id, status)
    client.set_terminated(parent.info.run_id, "FINISHED")
    return parent.info.run_id


def test_sweeps_merge_with_the_newest_run_of_each_condition_and_seed(mlflow_uri):
    """Seeds added later by a sweep of their own join the report; a point run twice counts
    once, from its newer run."""
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("mix_ratio")
    first = logged_sweep(
        client, experiment_id, 1_000, [(0, 0.5, 0.10, "FINISHED"), (1, 0.5, 0.20, "FINISHED")]
    )
    second = logged_sweep(
        client,
        experiment_id,
        2_000,
        [(1, 0.5, 0.30, "FINISHED"), (2, 0.5, 0.40, "FINISHED"), (3, 0.5, 0.90, "KILLED")],
    )
    assert find_parents(client, "mix_ratio") == [second, first]

    merged = load_sweep(client, [second, first])
    by_seed = merged.runs.set_index("seed")["after/accuracy"].to_dict()
    # why: seed 1 ran in both sweeps; the second sweep's run (0.30) replaces the first's (0.20)
    assert by_seed == {0: 0.10, 1: 0.30, 2: 0.40}
    assert [name.split(" ")[0] for name in merged.superseded] == ["lf0.5-seed1-1000"]
    assert merged.skipped == ["lf0.5-seed3-2000 (KILLED)"]
    assert merged.parent_run_id == second
    # why: every eval metric is read per run, untouched by the merge
    assert (merged.runs["before/accuracy"] == 0.2).all()

    alone = load_sweep(client, [first])
    assert alone.runs.set_index("seed")["after/accuracy"].to_dict() == {0: 0.10, 1: 0.20}
    assert alone.superseded == []


# Runs of one sweep at the same labeled share (1.0), and what the report makes of them: (its seed,
# the params it adds, its accuracy), in start order; the conditions' accuracies; the runs that a
# newer one of the same condition and seed replaced.
CONDITION_CASES = [
    pytest.param(
        [(0, {"reward.name": "brier"}, 0.10), (0, {"reward.name": "rlcr"}, 0.20)],
        [[0.10], [0.20]],
        [],
        # why: the key once had no reward name, so brier against rlcr read as one point run twice
        id="a different reward is another condition",
    ),
    pytest.param(
        [(0, {"reward.name": "brier"}, 0.10), (0, {"reward.name": "brier"}, 0.30)],
        [[0.30]],
        ["lf1.0-seed0-1000"],
        # why: a point run again (a rerun, a second sweep) counts once, from its newer run
        id="a rerun of the same point supersedes",
    ),
    pytest.param(
        [
            (0, {"reward.name": "brier", "output_dir": "a", "tags.sweep_point": "seed=0"}, 0.10),
            (0, {"reward.name": "brier", "output_dir": "b", "tags.sweep_point": "x,seed=0"}, 0.30),
        ],
        [[0.30]],
        ["lf1.0-seed0-1000"],
        # why: where a run ran and what it was tagged differ between two runs of one point
        id="bookkeeping params do not separate conditions",
    ),
    pytest.param(
        [(0, {}, 0.10), (0, {"trainer.new_key": "7"}, 0.30)],
        [[0.30]],
        ["lf1.0-seed0-1000"],
        # why: a key added to the config between two sweeps, with one value, changes nothing
        id="a key only newer runs logged does not split",
    ),
    pytest.param(
        [
            (0, {"reward.name": "brier", "model.name": "a"}, 0.10),
            (0, {"reward.name": "brier", "model.name": "b"}, 0.20),
            (0, {"reward.name": "rlcr", "model.name": "a"}, 0.30),
            (0, {"reward.name": "brier", "model.name": "a"}, 0.40),
        ],
        [[0.20], [0.30], [0.40]],
        ["lf1.0-seed0-1000"],
        # why: any config value that varies counts, not a hand-kept list of names
        id="every varying value is part of the condition",
    ),
    pytest.param(
        [
            (0, {"data.train_kinds_used": "capital=2, continent=2"}, 0.10),
            (1, {"data.train_kinds_used": "capital=3, continent=1"}, 0.30),
        ],
        [[0.10, 0.30]],
        [],
        # why: each seed trains on its own subset, so its kind mix differs between the seeds of
        # one condition; read as a config value it made one row per seed
        id="what the seed draws does not split a condition",
    ),
]


@pytest.mark.parametrize(("points", "conditions", "superseded"), CONDITION_CASES)
def test_runs_are_told_apart_by_every_value_that_varies(mlflow_uri, points, conditions, superseded):
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("mix_ratio")
    parent = logged_sweep(
        client,
        experiment_id,
        1_000,
        [(seed, 1.0, accuracy, "FINISHED", more) for seed, more, accuracy in points],
    )
    sweep = load_sweep(client, [parent])
    by_condition: dict[tuple, list[float]] = {}
    runs = sweep.runs
    for condition, accuracy in zip(runs["condition"], runs["after/accuracy"], strict=True):
        by_condition.setdefault(condition, []).append(accuracy)
    assert sorted(by_condition.values()) == conditions
    assert [name.split(" ")[0] for name in sweep.superseded] == superseded


def test_conditions_that_would_share_a_label_keep_separate_rows(mlflow_uri):
    # why: a study names its rows by labeled share; brier and rlcr at the same share must stay
    # two rows, each named by what tells it apart, rather than one row with both runs as "seeds"
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("abundant_ablation")
    parent = logged_sweep(
        client,
        experiment_id,
        1_000,
        [
            (0, 1.0, 0.10, "FINISHED", {"reward.name": "brier"}),
            (0, 1.0, 0.20, "FINISHED", {"reward.name": "rlcr"}),
            (0, 0.5, 0.30, "FINISHED", {"reward.name": "mixed"}),
        ],
    )
    sweep = load_sweep(client, [parent])
    groups = label_conditions(
        sweep.runs, sweep.params, load_definition("abundant_ablation").conditions
    )
    accuracies = {label: list(runs["after/accuracy"]) for label, runs in groups.items()}
    assert accuracies == {
        "100% Brier (reward.name=brier)": [0.10],
        "100% Brier (reward.name=rlcr)": [0.20],
        "50/50 Mixed": [0.30],
    }


# Three arms as sweeps/rl_vs_prompting.yaml runs them: (name, trained, prompt, dtype, seed, the
# calibration gap at step 0, after training). The two RL arms start from different untrained
# models (their prompts and dtypes differ); the prompt arm evaluates once, in Run C's dtype.
ARMS = [
    ("scarce_mixed", True, "default", "bfloat16", 0, 0.20, 0.05),
    ("scarce_mixed", True, "default", "bfloat16", 1, 0.20, -0.10),
    ("readout_mixed", True, "middle_scale", "float32", 0, 0.04, 0.02),
    ("readout_mixed", True, "middle_scale", "float32", 1, 0.04, 0.06),
    ("prompting_baseline", False, "calibration_aggressive", "bfloat16", 0, 0.15, 0.15),
]


def test_arms_that_start_from_different_models_get_an_untrained_row_each(mlflow_uri):
    # why: a mean of two untrained models' step 0 is neither model, and a prompt's reduction
    # measured against it would credit or blame the prompt for the other arm's start
    client = MlflowClient(mlflow_uri)
    experiment_id = client.create_experiment("rl_vs_prompting")
    parent = client.create_run(experiment_id, tags={SWEEP_TAG: "rl_vs_prompting"})
    for i, (name, trained, prompt, dtype, seed, before, after) in enumerate(ARMS):
        child = client.create_run(
            experiment_id,
            start_time=1_000 + i,
            run_name=f"{name}-seed{seed}",
            tags={SWEEP_TAG: "rl_vs_prompting", "mlflow.parentRunId": parent.info.run_id},
        )
        run_id = child.info.run_id
        params = point_params(
            seed,
            0.5,
            name=name,
            train=trained,
            **{"prompt.name": prompt, "model.name": "smollm2_135m", "model.resolved_dtype": dtype},
        )
        for key, value in params.items():
            client.log_param(run_id, key, str(value))
        client.log_metric(run_id, "eval/calibration_gap", before, step=0)
        if trained:
            client.log_metric(run_id, "eval/calibration_gap", after, step=4)
        client.set_terminated(run_id, "FINISHED")
    client.set_terminated(parent.info.run_id, "FINISHED")

    definition = load_definition("rl_vs_prompting")
    sweep = load_sweep(client, [parent.info.run_id])
    groups = label_conditions(sweep.runs, sweep.params, definition.conditions)
    table = main_numbers(definition, groups)
    gaps = table["calibration_gap_mean"].round(6).to_dict()
    reductions = table["reduction_mean"].round(6).dropna().to_dict()
    assert gaps == {
        "Untrained (prompt default, dtype bfloat16)": 0.20,
        "Untrained (prompt middle_scale, dtype float32)": 0.04,
        "Aggressive prompting": 0.15,
        "RL training (read-out)": 0.04,
        "RL training": -0.025,
    }
    assert reductions == {
        # against the untrained model in its own dtype: 1 - .15 / .20 (not the mean of all
        # step 0s, .12, which would make it -.25)
        "Aggressive prompting": 0.25,
        # each run against its own step 0: (1 - .02/.04 + 1 - .06/.04) / 2
        "RL training (read-out)": 0.0,
        # (1 - .05/.20 + 1 - .10/.20) / 2
        "RL training": 0.625,
    }


def test_every_study_folder_defines_its_study():
    # why: the report tests above run once per defined study; a folder that lost its study.yaml
    # must not drop out of them unnoticed
    assert STUDIES == ["abundant_ablation", "mix_ratio", "rl_vs_prompting", "scarce_collapse"]
    for name in STUDIES:
        definition = load_definition(name)
        assert definition.folder == default_studies_dir() / name
        assert (definition.folder / "README.md").exists()


BROKEN_DEFINITIONS = [
    # why: a misspelt key is named with the keys that exist
    ("sectoins: []", "sectoins: unknown key. Fix: use one of"),
    ("sections: [{kind: histogram}]", "sections[0].kind: unknown section kind 'histogram'"),
    ("conditions: {runs: some}", "conditions.runs: 'some'. Fix: use one of ('trained', 'all')"),
    ("conditions: {runs: all, otherwise: '{rewrd}'}", "unknown field 'rewrd'"),
    ("table: {metrics: {acuracy: A}}", "table.metrics.acuracy: unknown metric"),
    ("reference: {A: {acc: 0.5}}", "reference.A.acc: unknown key"),
]


@pytest.mark.parametrize(("change", "message"), BROKEN_DEFINITIONS)
def test_a_broken_study_definition_names_the_key_and_the_fix(tmp_path, change, message):
    from omegaconf import OmegaConf

    good = OmegaConf.load(default_studies_dir() / "mix_ratio" / "study.yaml")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "study.yaml").write_text(
        OmegaConf.to_yaml(OmegaConf.merge(good, OmegaConf.create(change)))
    )
    with pytest.raises(DefinitionError, match="Fix") as raised:
        load_definition("broken", tmp_path)
    assert message in str(raised.value)
    assert "broken/study.yaml" in str(raised.value)


def test_a_missing_studies_folder_says_how_to_find_it(tmp_path, capsys):
    assert main(["mix_ratio", "--studies-dir", str(tmp_path / "nowhere")]) == 2
    assert "--studies-dir <repository>/experiments" in capsys.readouterr().err
