"""The stability study job: does agreement across samples predict accuracy?

    python -m entropic.run +experiment=stability_study
    python -m entropic.run +experiment=stability_study semantic=embedding
    python -m entropic.run +experiment=stability_study model=qwen3_4b_instruct data=triviaqa  # GPU

The reference (Qwen3-4B-Instruct, 150 TriviaQA questions, 8 rollouts each) finds that stability
correlates with accuracy at r = 0.48 and stated confidence at r = 0.12. This job repeats the
measurement on the base model, without training: for each of the first `study.num_questions`
held-out questions it samples K answers (`entropic.sampling`), clusters them with the configured
`semantic` method (gold aliases never used), and scores the question with every estimator of
`entropic.estimators.ESTIMATORS`, whose table (Pearson r with accuracy, AUROC for the greedy
answer's correctness, bootstrap intervals) it logs and prints. It also answers each question
greedily, as the evaluation does.

On CPU (`compute.cpu_scale` set and no GPU) `study.cpu_scale` caps the questions and the answer
length so that the embedded default runs in minutes; every cap is logged as a param.
"""

from __future__ import annotations

import time

from entropic import tracking
from entropic.config import _require
from entropic.estimators import TABLE_STATS, estimator_table, format_table
from entropic.evaluate import evaluate
from entropic.jobs.context import (
    RunContext,
    RunResult,
    checked_clusterer,
    log_run_config,
    open_run,
)
from entropic.plots import stability_scatter
from entropic.sampling import sample_answers, score_questions
from entropic.ui import closing_line


def run(context: RunContext) -> RunResult:
    """Sample, score and correlate; one MLflow run with the tables and the figure.

    Returns the train job's result type: `before` holds the study's metrics, `after` is empty.
    """
    config = context.config
    # the section as the CPU caps left it (entropic.compute.apply_cpu_scale); RunConfig refuses
    # job=stability_study without one
    study = config.study
    available = len(context.splits.eval)
    _require(
        study.num_questions <= available,
        "study.num_questions",
        f"{study.num_questions} is more than the {available} held-out questions",
        f"lower study.num_questions to {available} or raise data.eval_size",
    )
    # the configured reward may need none, and then prepare() built none
    clusterer = context.clusterer or checked_clusterer(config)
    questions = context.splits.eval.select(range(study.num_questions))

    tags = {"job": "stability_study", "semantic": config.semantic.method}
    with open_run(context, tags) as context:
        client, run_id = context.run.client, context.run.run_id
        log_run_config(context, {"study.questions_used": len(questions)})
        model = context.policy.load_model()
        tokenizer = context.policy.tokenizer
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
        seconds = context.seconds()
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
    print(closing_line(run_id, uri))
