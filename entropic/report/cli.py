"""`python -m entropic.report`: build a study's report from MLflow, write it and log it.

python -m entropic.report scarce_collapse                   # or: make report STUDY=...
python -m entropic.report mix_ratio --parent-run-id <id>    # a particular sweep
python -m entropic.report mix_ratio --all-sweeps            # every sweep of the study, merged
python -m entropic.report --list                            # the studies and their sweeps
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import matplotlib.pyplot as plt
from mlflow.tracking import MlflowClient

from entropic import tracking
from entropic.report.definition import default_studies_dir, load_definition, study_names
from entropic.report.runs import ReportError, SweepRuns, find_parents, load_sweep
from entropic.report.sections import Report, build


def markdown(report: Report, sweep: SweepRuns, study: str) -> str:
    sweeps = ", ".join(
        f"`{sweep.client.get_run(run_id).info.run_name}` (parent run `{run_id}`)"
        for run_id in sweep.parent_run_ids
    )
    skipped = f" Not finished, left out: {', '.join(sweep.skipped)}." if sweep.skipped else ""
    if sweep.superseded:
        skipped += (
            " Replaced by a newer run of the same condition and seed: "
            f"{', '.join(sweep.superseded)}."
        )
    plural = "s" if len(sweep.parent_run_ids) > 1 else ""
    return "\n\n".join(
        [
            f"# {report.title}",
            f"Study `{study}`, built by `python -m entropic.report {study}` from the sweep{plural} "
            f"{sweeps} ({len(sweep.runs)} finished runs) in `{sweep.client.tracking_uri}`."
            f"{skipped} "
            "Ours: mean over seeds with a 95% Student-t interval, cut to the values the metric can "
            "take, where there is more than one seed.",
            report.shown.to_markdown(),
            *report.sections,
        ]
    )


def write_report(
    study: str,
    client: MlflowClient,
    output_dir: Path | None = None,
    parent_run_ids: list[str] | None = None,
    all_sweeps: bool = False,
    studies_dir: Path | None = None,
) -> Report:
    """Build a study's report from MLflow, write it, log it to the (newest) parent run, print its
    table. Reads the given parent runs, or every sweep of the study, or the newest one."""
    definition = load_definition(study, studies_dir)
    if not parent_run_ids:
        found = find_parents(client, definition.sweep)
        parent_run_ids = found if all_sweeps else found[:1]
    sweep = load_sweep(client, parent_run_ids)
    parent_run_id = sweep.parent_run_id
    report = build(definition, sweep)
    output_dir = Path(output_dir or definition.folder / "output")
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, figure in report.figures.items():
        figure.savefig(output_dir / f"{name}.png", dpi=120)
        plt.close(figure)
        written.append(output_dir / f"{name}.png")
    text = markdown(report, sweep, study)
    (output_dir / "report.md").write_text(text + "\n")
    written.append(output_dir / "report.md")
    for path in written:
        client.log_artifact(parent_run_id, str(path), f"report/{study}")
    print(f"\n== {report.title} ==")
    print(report.shown.to_markdown())
    print(f"\nReport: {output_dir / 'report.md'}; MLflow run {parent_run_id}, report/{study}/")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m entropic.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("study", nargs="?", help="a folder of the studies folder (--list)")
    parser.add_argument(
        "--parent-run-id",
        action="append",
        help="a sweep to read; repeat to merge sweeps (default: the newest)",
    )
    parser.add_argument(
        "--all-sweeps",
        action="store_true",
        help="merge every sweep of the study in the store (newest run per condition and seed)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI)")
    parser.add_argument("--output", type=Path, help="default: <studies-dir>/<study>/output")
    parser.add_argument(
        "--studies-dir",
        type=Path,
        help="the folder of study folders (default: experiments/ of the repository)",
    )
    parser.add_argument("--list", action="store_true", help="list the studies")
    args = parser.parse_args(argv)
    # A report downloads two prediction tables per run: one progress bar each would bury the table.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    studies_dir = args.studies_dir or default_studies_dir()
    try:
        if args.list or not args.study:
            for name in study_names(studies_dir):
                definition = load_definition(name, studies_dir)
                print(f"{name}: sweeps/{definition.sweep}.yaml ({definition.title})")
            return 0
        write_report(
            args.study,
            tracking.get_client(args.tracking_uri),
            args.output,
            args.parent_run_id,
            all_sweeps=args.all_sweeps,
            studies_dir=studies_dir,
        )
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
