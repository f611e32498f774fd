"""A study's definition, `experiments/<study>/study.yaml`, read and validated once.

The file says which sweep the study reads, how its runs become the table's conditions (which runs,
their labels and order, the columns that describe them), the main table's metrics, the
reference's numbers, and the report's sections in order. It is declarative: every computation is
a section kind of `entropic.report.sections`, which the file selects by name. Errors name the
file, the key and the fix, before anything is read from MLflow.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from entropic import tracking
from entropic.evaluate import BEHAVIOUR_NAMES, METRIC_NAMES
from entropic.report.labels import DESCRIPTIONS
from entropic.report.runs import ReportError

# The file that makes a folder of the studies folder a study.
DEFINITION_FILE = "study.yaml"
# Which runs of the sweep a study's conditions are made of.
RUN_SELECTIONS = ("trained", "all")
# What a table column can show: a logged eval metric, or the calibration gap's reduction from the
# untrained model (computed by the table).
TABLE_METRICS = (*METRIC_NAMES, *BEHAVIOUR_NAMES, "reduction")
# Section kinds (entropic.report.sections renders them): their required and optional keys.
SECTION_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "bars": ({"name", "title", "metrics"}, set()),
    "share": ({"name", "metrics", "x", "xlabel"}, set()),
    "paired_differences": ({"metric", "pairs"}, set()),
    "untrained": (set(), set()),
    "text": ({"text"}, set()),
    "transfer": (set(), set()),
    "behaviour": (set(), set()),
    "curves": (set(), set()),
    "traces": (set(), set()),
}
PAIR_KEYS = {"first", "second", "meaning", "reference"}


class DefinitionError(ReportError):
    """A study.yaml that cannot be rendered; the message names the file, the key and the fix."""


@dataclass(frozen=True)
class Label:
    """A condition's name in the table: given to the conditions whose params match all of
    `params` (numbers compared as numbers)."""

    label: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Conditions:
    """How the sweep's runs become the rows of the study's tables."""

    # "trained" (train: true) or "all" (a prompting arm that never trains is a condition too)
    runs: str
    # named conditions, in the reference's order
    labels: list[Label] = field(default_factory=list)
    # the label of any other condition: a template of description fields ({reward_mix})
    otherwise: str = "{condition}"
    # the order of the other conditions: by these params' values (numbers as numbers)
    order_by: list[str] = field(default_factory=list)
    # heading -> description field: columns before the metrics that say what a condition is
    columns: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Table:
    """The main table: one row per condition (after training), its metrics across seeds."""

    # metric -> heading
    metrics: dict[str, str]
    # a first row, the untrained model (step 0 of the trained runs), under this label
    untrained_row: str | None = None


@dataclass(frozen=True)
class Section:
    """One part of the report after the main table, rendered by the section kind `kind`."""

    kind: str
    options: dict[str, Any]


@dataclass(frozen=True)
class StudyDefinition:
    """A study: what it reads, how it groups, what it compares against, what it shows."""

    name: str
    folder: Path
    # the sweep (sweeps/<sweep>.yaml), which is also its MLflow experiment's name
    sweep: str
    title: str
    conditions: Conditions
    table: Table
    # condition label -> metric -> the reference's number (the write-up's table)
    reference: dict[str, dict[str, float]]
    sections: list[Section]


def default_studies_dir() -> Path:
    """`experiments/` of the repository: beside the package in a clone (an editable install), else
    in the working directory (a package installed elsewhere, run from a clone)."""
    for root in (tracking.PROJECT_ROOT, Path.cwd()):
        if (root / "experiments").is_dir():
            return root / "experiments"
    return tracking.PROJECT_ROOT / "experiments"


def study_names(studies_dir: Path) -> list[str]:
    """The studies of a studies folder: its subfolders with a study.yaml."""
    if not studies_dir.is_dir():
        raise ReportError(
            f"no studies folder {studies_dir}. Fix: run from the repository root, or pass "
            "--studies-dir <repository>/experiments"
        )
    return sorted(p.parent.name for p in studies_dir.glob(f"*/{DEFINITION_FILE}"))


def load_definition(name: str, studies_dir: Path | None = None) -> StudyDefinition:
    """The study `name` from `<studies_dir>/<name>/study.yaml`, validated; an unknown name lists
    the valid ones."""
    studies_dir = Path(studies_dir or default_studies_dir())
    valid = study_names(studies_dir)
    if name not in valid:
        raise ReportError(
            f"unknown study {name!r} in {studies_dir}. Fix: use one of {valid}, or add "
            f"{studies_dir / name / DEFINITION_FILE}"
        )
    path = studies_dir / name / DEFINITION_FILE
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return parse(name, path, raw)


def parse(name: str, path: Path, raw: Any) -> StudyDefinition:
    """A study.yaml's contents as a StudyDefinition; raises DefinitionError naming the key."""

    def fail(key: str, problem: str, fix: str) -> DefinitionError:
        return DefinitionError(f"{path}: {key}: {problem}. Fix: {fix}")

    def mapping(value: Any, key: str, required: set[str], optional: set[str]) -> dict:
        if not isinstance(value, dict):
            raise fail(key, f"expected a mapping, got {value!r}", "write it as `key: value` lines")
        for missing in sorted(required - set(value)):
            raise fail(f"{key}.{missing}".lstrip("."), "missing", "add it (see another study.yaml)")
        for unknown in sorted(set(value) - required - optional):
            raise fail(
                f"{key}.{unknown}".lstrip("."),
                "unknown key",
                f"use one of {sorted(required | optional)}",
            )
        return value

    top = mapping(raw, "", {"sweep", "title", "conditions", "table", "sections"}, {"reference"})
    raw_conditions = mapping(
        top["conditions"], "conditions", {"runs"}, {"labels", "otherwise", "order_by", "columns"}
    )
    if raw_conditions["runs"] not in RUN_SELECTIONS:
        raise fail("conditions.runs", f"{raw_conditions['runs']!r}", f"use one of {RUN_SELECTIONS}")
    labels = []
    for i, entry in enumerate(raw_conditions.get("labels") or []):
        entry = mapping(entry, f"conditions.labels[{i}]", {"label", "params"}, set())
        labels.append(Label(str(entry["label"]), dict(entry["params"])))
    conditions = Conditions(
        raw_conditions["runs"],
        labels,
        str(raw_conditions.get("otherwise", Conditions.otherwise)),
        list(raw_conditions.get("order_by") or []),
        {str(k): str(v) for k, v in (raw_conditions.get("columns") or {}).items()},
    )
    templates = {"conditions.otherwise": conditions.otherwise}
    templates |= {f"conditions.columns.{k}": f"{{{v}}}" for k, v in conditions.columns.items()}
    for key, template in templates.items():
        for _, field_name, _, _ in string.Formatter().parse(template):
            if field_name is not None and field_name not in DESCRIPTIONS:
                raise fail(
                    key, f"unknown field {field_name!r}", f"use one of {sorted(DESCRIPTIONS)}"
                )

    raw_table = mapping(top["table"], "table", {"metrics"}, {"untrained_row"})
    table = Table(
        metric_headings(raw_table["metrics"], "table.metrics", fail), raw_table.get("untrained_row")
    )

    reference = {}
    for label, numbers in (top.get("reference") or {}).items():
        numbers = mapping(numbers, f"reference.{label}", set(), set(TABLE_METRICS))
        reference[str(label)] = {metric: float(value) for metric, value in numbers.items()}

    sections = []
    for i, entry in enumerate(top["sections"] or []):
        key = f"sections[{i}]"
        if not isinstance(entry, dict) or "kind" not in entry:
            raise fail(key, "no `kind`", f"start it with `- kind: <one of {sorted(SECTION_KEYS)}>`")
        kind = entry["kind"]
        if kind not in SECTION_KEYS:
            raise fail(
                f"{key}.kind",
                f"unknown section kind {kind!r}",
                f"use one of {sorted(SECTION_KEYS)}",
            )
        required, optional = SECTION_KEYS[kind]
        options = dict(mapping(entry, key, required | {"kind"}, optional))
        options.pop("kind")
        if "metrics" in options:
            options["metrics"] = metric_headings(options["metrics"], f"{key}.metrics", fail)
        for j, pair in enumerate(options.get("pairs", [])):
            mapping(pair, f"{key}.pairs[{j}]", PAIR_KEYS, set())
        sections.append(Section(kind, options))
    return StudyDefinition(
        name,
        path.parent,
        str(top["sweep"]),
        str(top["title"]),
        conditions,
        table,
        reference,
        sections,
    )


def metric_headings(value: Any, key: str, fail) -> dict[str, str]:
    """metric -> heading, every metric one the report can show."""
    if not isinstance(value, dict) or not value:
        raise fail(key, f"expected metric: heading lines, got {value!r}", "list the columns")
    for metric in value:
        if metric not in TABLE_METRICS:
            raise fail(f"{key}.{metric}", "unknown metric", f"use one of {list(TABLE_METRICS)}")
    return {str(k): str(v) for k, v in value.items()}
