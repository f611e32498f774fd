"""Study reports from MLflow: the tables and figures of `experiments/<study>/`, with error bars.

    python -m entropic.report scarce_collapse                   # or: make report STUDY=...
    python -m entropic.report mix_ratio --parent-run-id <id>    # a particular sweep
    python -m entropic.report mix_ratio --all-sweeps            # every sweep of the study, merged
    python -m entropic.report --list

The code is generic; each study is defined in its folder, `experiments/<study>/study.yaml`, beside
its README. A report reads the finished child runs of the study's sweep (by default the newest
parent run with a finished child; `--parent-run-id` may be repeated and `--all-sweeps` takes every
parent, so seeds run later as sweeps of their own join the table) and never re-runs anything.
It writes `experiments/<study>/output/report.md` and PNGs, logs them to the sweep's parent run
under `report/<study>/`, and prints the main table.

Words, as this package uses them:
- *study*: a folder `experiments/<study>/` that reproduces one table or figure of the reference
  write-up: its README (question, commands, findings) and its definition (`study.yaml`: the sweep
  it reads, its conditions, the reference's numbers, its sections). Not the `stability_study`
  job (`entropic/jobs/stability_study.py`, `conf/study/`), which is a kind of run.
- *sweep*: `sweeps/<sweep>.yaml`, a Hydra multirun; in MLflow, one parent run in the MLflow
  experiment named after the sweep, with one child run per point.
- *point*: one child run's config: a condition and a seed.
- *condition*: the runs that differ only in their seed. Every config value (MLflow param) that
  varies across the runs read tells conditions apart (`runs.varying_params`), bookkeeping left
  out; of two runs with the same condition and seed, the newer counts and the report names the
  older.
- *row*: a line of a table: a condition under the label its study.yaml gives it, or the untrained
  model (step 0 of the trained runs: same model, questions and greedy decoding; a row per prompt
  and dtype where the trained runs start from several).
- *reference*: the write-up's number for a row, shown beside ours.
- "experiment" is said in full: an *MLflow experiment* (a container of runs) or an *experiment
  config* (`conf/experiment/<name>.yaml`, a Hydra delta); `experiments/` is the studies folder.

Modules, in the direction the data flows: `runs` (reading MLflow), `definition` (study.yaml),
`labels` (conditions named and ordered), `numbers` (means, intervals, formatting), `figures`,
`traces`, `sections` (the section kinds a study.yaml selects), `cli` (the entry point).
"""

from entropic.report.cli import main, write_report
from entropic.report.runs import ReportError

__all__ = ["ReportError", "main", "write_report"]
