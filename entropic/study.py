"""The stability study (the `study` config group): does agreement across samples predict accuracy?

    python -m entropic.run +experiment=stability_study
    python -m entropic.run +experiment=stability_study semantic=embedding
    python -m entropic.run +experiment=stability_study model=qwen3_4b_instruct data=triviaqa  # GPU

The reference (Qwen3-4B-Instruct, 150 TriviaQA questions, 8 rollouts each) finds that stability
correlates with accuracy at r = 0.48 and stated confidence at r = 0.12. This job repeats the
measurement on the base model, without training: for each of the first `study.num_questions`
held-out questions it samples K answers (`entropic.sampling`), clusters them with the configured
`semantic` method (gold aliases never used), and scores the question with every estimator of
`ESTIMATORS`. It also answers each question greedily, as the evaluation does.

For each estimator it reports, with percentile-bootstrap 95% intervals over questions:

* **Pearson r with accuracy**: accuracy is the share of the question's K sampled answers that are
  correct (the reference's per-question accuracy).
* **AUROC for correctness of the greedy answer**: how well the estimator, computed from the K
  samples, separates questions the model answers right at temperature 0 from those it answers
  wrong (Farquhar et al.'s protocol: uncertainty from samples, correctness of the most likely
  answer). One score per question for every estimator keeps the two columns comparable; the
  per-sample alternative would favour the per-answer estimators.

"Stability" in the table is the majority share, the share of the K answers in the largest
cluster; `mean_stability` (each answer's stability, averaged) is reported beside it. Entropies are
negated so that higher always means more confident. A question whose estimate is undefined (no
stated confidence parsed) is left out of that estimator's row, whose `questions` column says how
many remain; r or AUROC is NaN where it is undefined (a constant estimate, one class).

On CPU (`compute.cpu_scale` set and no GPU) `study.cpu_scale` caps the questions and the answer
length so that the embedded default runs in minutes; every cap is logged as a param.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from scipy.stats import rankdata

from entropic import models, tracking
from entropic.config import ConfigError, _require
from entropic.evaluate import evaluate
from entropic.metrics import auroc, bootstrap_ci, pearson_r
from entropic.plots import stability_scatter
from entropic.sampling import sample_answers, score_questions
from entropic.semantic import build_clusterer

if TYPE_CHECKING:
    from entropic.job import RunResult


@dataclass
class StudyCpuScale:
    # most questions studied on CPU
    num_questions: int
    # most tokens per sampled answer on CPU
    max_new_tokens: int


@dataclass
class StudyConfig:
    # answers sampled per question (K)
    num_samples: int = 8
    # held-out questions studied, the first ones of the eval split
    num_questions: int = 150
    # sampling temperature
    temperature: float = 1.0
    # most tokens per sampled answer
    max_new_tokens: int = 48
    # questions per generate call, each generating num_samples answers
    batch_size: int = 8
    # bootstrap resamples behind each interval
    bootstrap_resamples: int = 1000
    # coverage of the bootstrap intervals
    ci_level: float = 0.95
    # caps applied on CPU (None: never scale)
    cpu_scale: StudyCpuScale | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cpu_scale, dict):
            self.cpu_scale = StudyCpuScale(**self.cpu_scale)
        _require(
            self.num_samples >= 2,
            "study.num_samples",
            f"{self.num_samples} < 2: one answer cannot disagree with itself",
            "study.num_samples=8",
        )
        for key in ("num_questions", "max_new_tokens", "batch_size", "bootstrap_resamples"):
            value = getattr(self, key)
            _require(value >= 1, f"study.{key}", f"{value} must be >= 1", f"e.g. study.{key}=8")
        _require(self.temperature > 0, "study.temperature", "must be > 0", "study.temperature=1.0")
        _require(0 < self.ci_level < 1, "study.ci_level", "must be in (0, 1)", "e.g. 0.95")

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> StudyConfig:
        raw = cfg.get("study")
        _require(
            raw is not None,
            "study",
            "no study is configured",
            "run +experiment=stability_study (or add study=stability)",
        )
        values: dict[str, Any] = OmegaConf.to_container(raw, resolve=True)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        _require(not unknown, "study", f"unknown keys {unknown}", f"use {sorted(names)}")
        try:
            return cls(**values)
        except TypeError as err:
            raise ConfigError(f"study: {err}. Fix: see conf/study/stability.yaml") from err

    def for_device(self, device: str, scales: bool) -> tuple[StudyConfig, dict[str, str]]:
        """The CPU caps applied (when on CPU with a scaling compute profile) and what changed."""
        if device != "cpu" or not scales or self.cpu_scale is None:
            return self, {}
        changes = {}
        capped = {}
        for key in ("num_questions", "max_new_tokens"):
            value, cap = getattr(self, key), getattr(self.cpu_scale, key)
            if value > cap:
                changes[f"study.{key}"] = f"{value} -> {cap}"
                capped[key] = cap
        return dataclasses.replace(self, **capped), changes


@dataclass(frozen=True)
class Estimator:
    # column of the per-question table
    column: str
    # +1: higher is more confident; -1 for entropies, which are negated
    sign: float
    # what the table's reader needs to know
    description: str


# Every estimator the study reports, in table order.
ESTIMATORS: dict[str, Estimator] = {
    "stability": Estimator(
        "stability", 1.0, "share of the K answers in the largest cluster (majority share)"
    ),
    "mean_stability": Estimator(
        "mean_stability", 1.0, "each answer's share of the group in its cluster, averaged"
    ),
    "semantic_entropy": Estimator(
        "semantic_entropy", -1.0, "-(entropy of the cluster frequencies), Farquhar et al."
    ),
    "likelihood_semantic_entropy": Estimator(
        "likelihood_semantic_entropy",
        -1.0,
        "-(entropy of likelihood-weighted cluster masses), Kuhn et al.",
    ),
    "embedding_entropy": Estimator(
        "embedding_entropy", -1.0, "-(von Neumann entropy of the answers' cosine kernel / K)"
    ),
    "stated_confidence": Estimator(
        "confidence", 1.0, "stated confidence, mean over the K sampled answers"
    ),
    "greedy_confidence": Estimator(
        "greedy_confidence", 1.0, "stated confidence of the greedy answer"
    ),
}


# The numeric columns of the estimator table, each logged as study/<estimator>/<stat>.
TABLE_STATS = ("pearson_r", "pearson_r_low", "pearson_r_high", "auroc", "auroc_low", "auroc_high")


def score_auroc(scores: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of any real-valued score: AUROC depends only on the ranking, and ranks scaled into
    (0, 1] meet `metrics.auroc`'s probability domain (negated entropies are negative)."""
    return auroc(rankdata(scores) / len(scores), correct)


def estimator_table(
    per_question: pd.DataFrame, n_resamples: int, ci_level: float, seed: int
) -> pd.DataFrame:
    """One row per estimator: Pearson r with accuracy and AUROC for greedy correctness, with
    bootstrap intervals; questions where the estimate is NaN are left out of its row."""
    rows = []
    for name, estimator in ESTIMATORS.items():
        values = per_question[estimator.column].to_numpy(float) * estimator.sign
        defined = np.isfinite(values)
        scores = values[defined]
        accuracy = per_question["accuracy"].to_numpy(float)[defined]
        correct = per_question["greedy_correct"].to_numpy(int)[defined]
        row: dict[str, Any] = {"estimator": name, "questions": int(defined.sum())}
        for stat, function, target in (
            ("pearson_r", pearson_r, accuracy),
            ("auroc", score_auroc, correct),
        ):
            if len(scores) < 2:
                row.update({stat: math.nan, f"{stat}_low": math.nan, f"{stat}_high": math.nan})
                continue
            low, high = bootstrap_ci(
                function, scores, target, n_resamples=n_resamples, confidence=ci_level, seed=seed
            )
            row.update({stat: function(scores, target), f"{stat}_low": low, f"{stat}_high": high})
        row["description"] = estimator.description
        rows.append(row)
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> str:
    """The estimator table as markdown: r and AUROC with their intervals in one cell each."""

    def cell(row: pd.Series, stat: str) -> str:
        if math.isnan(row[stat]):
            return "n/a"
        return f"{row[stat]:.2f} [{row[f'{stat}_low']:.2f}, {row[f'{stat}_high']:.2f}]"

    shown = pd.DataFrame(
        {
            "estimator": table["estimator"],
            "r with accuracy [95% CI]": [cell(row, "pearson_r") for _, row in table.iterrows()],
            "AUROC, greedy correct [95% CI]": [cell(row, "auroc") for _, row in table.iterrows()],
            "questions": table["questions"],
            "what it is": table["description"],
        }
    )
    return shown.to_markdown(index=False)


def stability_study(cfg: DictConfig) -> RunResult:
    """Sample, score and correlate; one MLflow run with the tables and the figure.

    Returns the train job's result type: `before` holds the study's metrics, `after` is empty.
    """
    # job.py lists this function in its JOBS registry, so importing job at module level would be
    # an import cycle.
    from entropic.job import RunResult, prepare

    started = time.perf_counter()
    study = StudyConfig.from_hydra(cfg)
    prepared = prepare(cfg)
    config, device = prepared.config, prepared.device
    study, study_scaled = study.for_device(device, config.compute.cpu_scale is not None)
    available = len(prepared.splits.eval)
    _require(
        study.num_questions <= available,
        "study.num_questions",
        f"{study.num_questions} is more than the {available} held-out questions",
        f"lower study.num_questions to {available} or raise data.eval_size",
    )
    clusterer = prepared.clusterer
    if clusterer is None:  # the configured reward needs none, so prepare() built none
        try:
            clusterer = build_clusterer(config.semantic.method, **config.semantic.options)
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"semantic: {err}") from err
    questions = prepared.splits.eval.select(range(study.num_questions))

    client = tracking.get_client(config.tracking.tracking_uri)
    tags = {
        "experiment": config.tracking.experiment_name,
        "job": "stability_study",
        "model": config.model.name,
        "data": config.data.name,
        "prompt": config.prompt.name,
        "semantic": config.semantic.method,
        "device": device,
        **config.tags,
    }
    with tracking.mlflow_run(
        client,
        config.tracking.experiment_name,
        config.tracking.run_name,
        tags,
        parent_run_id=config.tracking.parent_run_id,
    ) as run_id:
        tracking.log_config(client, run_id, cfg)
        tracking.log_params(
            client,
            run_id,
            {
                "device": device,
                "study.questions_used": str(len(questions)),
                **{f"cpu_scale.{k}": v for k, v in {**prepared.scaled, **study_scaled}.items()},
            },
        )
        checkpoint = models.resolve_checkpoint(config.model)
        tokenizer = models.load_tokenizer(checkpoint)
        model = models.load_model(checkpoint, models.torch_dtype(config.model, device), device)
        greedy, greedy_metrics = evaluate(
            model, tokenizer, questions, config.prompt, config.eval, config.generation.name
        )
        sampling_started = time.perf_counter()
        samples = sample_answers(
            model,
            tokenizer,
            questions,
            config.prompt,
            k=study.num_samples,
            temperature=study.temperature,
            max_new_tokens=study.max_new_tokens,
            batch_size=study.batch_size,
            seed=config.seed,
            engine=config.generation.name,
        )
        sampling_seconds = time.perf_counter() - sampling_started
        per_question = score_questions(samples, clusterer).merge(
            greedy[["question_id", "answer", "confidence", "correct"]].rename(
                columns={
                    "answer": "greedy_answer",
                    "confidence": "greedy_confidence",
                    "correct": "greedy_correct",
                }
            ),
            on="question_id",
            validate="one_to_one",
        )
        table = estimator_table(
            per_question, study.bootstrap_resamples, study.ci_level, config.seed
        )
        metrics = {
            f"study/{row.estimator}/{stat}": getattr(row, stat)
            for row in table.itertuples()
            for stat in TABLE_STATS
        }
        metrics.update(
            {
                "study/questions": float(len(per_question)),
                "study/sample_accuracy": float(per_question["accuracy"].mean()),
                "study/sample_format_rate": float(per_question["format_rate"].mean()),
                "study/greedy_accuracy": greedy_metrics["accuracy"],
                "study/greedy_format_rate": greedy_metrics["format_rate"],
                "time/sampling_seconds": sampling_seconds,
                "time/samples_per_second": len(samples) / sampling_seconds,
            }
        )
        markdown = format_table(table)
        client.log_table(run_id, per_question, "study/per_question.json")
        client.log_table(run_id, samples, "study/samples.json")
        client.log_text(run_id, markdown, "study/estimators.md")
        client.log_text(run_id, table.to_csv(index=False), "study/estimators.csv")
        figure = stability_scatter(
            per_question,
            study.num_samples,
            r_stability=table.set_index("estimator").loc["stability", "pearson_r"],
            r_confidence=table.set_index("estimator").loc["stated_confidence", "pearson_r"],
        )
        client.log_figure(run_id, figure, "study/stability_vs_confidence.png")
        seconds = time.perf_counter() - started
        metrics["time/seconds"] = seconds
        tracking.log_metrics(client, run_id, metrics, step=0)
        print_report(config, study, markdown, metrics, run_id, client.tracking_uri)
    return RunResult(run_id, metrics, {}, config.output_dir, seconds)


def print_report(config, study, markdown, metrics, run_id, uri) -> None:
    print()
    print(
        f"== {config.tracking.experiment_name}: {config.model.name} on "
        f"{int(metrics['study/questions'])} {config.data.name} questions x {study.num_samples} "
        f"samples (T={study.temperature}, semantic={config.semantic.method}) =="
    )
    print(markdown)
    print(
        f"sample accuracy {metrics['study/sample_accuracy']:.3f}, greedy accuracy "
        f"{metrics['study/greedy_accuracy']:.3f}; "
        f"sampling {metrics['time/sampling_seconds']:.0f} s "
        f"({metrics['time/samples_per_second']:.1f} samples/s), "
        f"total {metrics['time/seconds']:.0f} s"
    )
    print(f"MLflow run {run_id} in {uri}  (make ui to browse)")
