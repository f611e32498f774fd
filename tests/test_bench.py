"""`make bench` end to end at toy sizes: every section measured and written, nothing asserted
about speed (that is what the benchmark is for)."""

from __future__ import annotations

import importlib.util
import json
import math

import mlflow
import pytest

from entropic import bench

# why: rows 1, 4 and 9 between them take every value of every StepVariant field (checked in the
# test), so the default suite runs each code path of section 3 in a third of the time of all nine
SOME_VARIANTS = "1,4,9"


@pytest.mark.parametrize(
    "variants", [SOME_VARIANTS, pytest.param(None, marks=pytest.mark.slow, id="all")]
)
def test_bench_measures_every_section_and_writes_json_and_markdown(
    tmp_path, embedded_checkpoint, mlflow_uri, variants
):
    # the caller's own store, which the benchmark's throwaway profiling store must not replace
    mlflow.set_tracking_uri(mlflow_uri)
    results = bench.main(
        [
            "--rollout-prompts=2",
            "--num-generations=3",
            "--max-new-tokens=4",
            "--eval-questions=5",
            "--steps=2",
            "--uncertainty-questions=4",
            "--k=4",
            *([f"--variants={variants}"] if variants else []),
            f"--out={tmp_path / 'results'}",
            "model=tiny_random",
            "compute=cpu",
            "compute.cpu_scale.train_questions=4",
            "compute.cpu_scale.per_device_train_batch_size=4",
            "compute.cpu_scale.eval_questions=8",
        ]
    )
    # why: the timers' throwaway store is gone; the caller's store is back and holds nothing of it
    assert mlflow.get_tracking_uri() == mlflow_uri
    assert [e.name for e in mlflow.MlflowClient(mlflow_uri).search_experiments()] == ["Default"]
    (json_file,) = (tmp_path / "results").glob("bench-*.json")
    (md_file,) = (tmp_path / "results").glob("bench-*.md")
    assert json.loads(json_file.read_text())["rollout"] == json.loads(
        json.dumps(results["rollout"], default=str)
    )

    *engines, vllm = results["rollout"]
    labels = ["transformers fp32", "prefix_cache fp32", "transformers bf16", "prefix_cache bf16"]
    assert [row["backend"] for row in engines] == labels
    # why: fp32 transformers is the baseline every other backend is compared with
    assert engines[0]["vs_fp32"] == 1.0
    for row in engines:
        assert math.isfinite(row["tokens_per_s"]) and row["tokens_per_s"] > 0
    # why: 2 prompts x G=3 share the system message and few-shot turns; the note says how much
    assert "prompt tokens shared" in engines[1]["note"] and not engines[0]["note"]
    if importlib.util.find_spec("vllm") is None:
        # why: an absent backend is reported, not measured as zero
        assert (vllm["tokens_per_s"], vllm["vs_fp32"], vllm["note"]) == (
            None,
            None,
            "not installed",
        )
    else:
        assert vllm["tokens_per_s"] > 0

    evaluation = results["evaluation"]
    assert [row["engine"] for row in evaluation] == labels
    assert evaluation[0]["speedup"] == 1.0
    for row in evaluation:
        assert row["seconds"] > 0 and row["tokens"] > 0
        # why: each engine's answers are held to transformers' in the same dtype, token for token;
        # in fp32 the prefix cache gives exactly generate's answers (bf16 may round differently)
        assert 0 <= row["same_answers"] <= 1 and 0 <= row["same_as_fp32"] <= 1
    assert evaluation[1]["same_answers"] == evaluation[1]["same_as_fp32"] == 1.0

    steps = results["grpo_step"]
    names = list(bench.STEP_VARIANTS)
    chosen = [names[int(i) - 1] for i in variants.split(",")] if variants else names
    assert [step["variant"] for step in steps] == chosen
    # why: the first variant is the baseline the others are compared with
    assert steps[0]["vs_first"] == 1.0
    # why: the subset must still reach every dtype, adapter, trainer setting, rollout and scoring
    for field in bench.StepVariant._fields:
        values = {repr(getattr(bench.STEP_VARIANTS[name], field)) for name in chosen}
        every = {repr(getattr(v, field)) for v in bench.STEP_VARIANTS.values()}
        assert values == every, field
    for step, variant in zip(steps, (bench.STEP_VARIANTS[name] for name in chosen), strict=True):
        # why: the blocks were read back from TRL's profiling timers in MLflow, generation under
        # the timer of the variant's rollout backend
        timer = bench.GENERATION_TIMERS[variant.rollout]
        assert {"_prepare_inputs", timer, "_calculate_rewards"} <= set(step["trl_profiling_s"])
        # why: TRL's blocks nest: generation and the rewards run inside _prepare_inputs, which
        # runs inside the step; timers read from the wrong steps or runs would break the nesting
        assert step["generation_s"] > 0 and step["reward_s"] > 0
        assert step["other_scoring_s"] >= 0
        assert step["optimisation_s"] > 0
        # why: the step's batch, from compute.cpu_scale
        assert step["completions_per_step"] == 4
        # why: TRL's own count of the step's sampled tokens: 4 completions of at least one token
        # and at most the CPU profile's 32 (compute.cpu_scale.max_completion_length) each; a
        # metric read from the wrong key or run would be missing, not a number in this range
        assert 4 <= step["completion_tokens"] <= 4 * 32, step["variant"]
        # why: a row timed with TRL's scoring must not compute the shared prefix once, and one
        # timed with ours must have (2 steps, each scoring the batch at least once)
        if variant.scoring == "ours":
            assert step["shared_prefix_calls"] >= 2, step["variant"]
        else:
            assert step["shared_prefix_calls"] == 0, step["variant"]
    # why: the baseline is the job before LoRA, which scored as TRL does
    assert next(iter(bench.STEP_VARIANTS.values())).scoring == "trl"

    overhead = results["reward_overhead"]
    assert [(r["reward"], r["clusterer"]) for r in overhead] == [
        (name, "-" if name == "brier" else method) for name, method in bench.REWARD_CASES
    ]
    # why: each reward is timed on one step's worth of completions
    assert all(row["completions"] == steps[0]["completions_per_step"] for row in overhead)
    assert all(row["seconds"] > 0 and row["share_of_step"] > 0 for row in overhead)
    # why: every share is of one step (the first variant's), so shares rank as the times do
    assert sorted(overhead, key=lambda r: r["seconds"]) == sorted(
        overhead, key=lambda r: r["share_of_step"]
    )
    assert len(results["uncertainty"]) == 3
    assert all(row["s_per_question"] > 0 for row in results["uncertainty"])

    report = md_file.read_text()
    # why: a row without a note shows an empty cell, not "nan"
    fp32_line = next(line for line in report.splitlines() if line.startswith("| transformers fp32"))
    assert not fp32_line.rstrip(" |").endswith("nan")
    headings = (
        "Rollout throughput",
        "Greedy evaluation",
        "GRPO step",
        "Reward overhead",
        "Test-time uncertainty",
    )
    for heading in headings:
        assert heading in report


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        # why: the Zen 3 EPYC of the eleventh and later sessions: no bf16, so fp32 by rule
        (
            "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
            "flags\t\t: fpu avx2 fma\n",
            "AMD EPYC (family 25 model 1; no bf16 instructions)",
        ),
        # why: the same name with AVX-512 bf16 (the earlier sessions' EPYC) reads differently
        (
            "processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
            "flags\t\t: avx2 avx512f avx512_bf16\n",
            "AMD EPYC (family 25 model 17; bf16: avx512_bf16)",
        ),
        # why: an ARM server lists no family and names its features under another key
        (
            "processor\t: 0\nmodel name\t: Neoverse-V1\nFeatures\t: fp asimd bf16\n",
            "Neoverse-V1 (bf16: bf16)",
        ),
    ],
)
def test_the_benchmark_names_the_processor_so_two_of_one_name_differ(tmp_path, cpuinfo, expected):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    assert bench.processor(str(tmp_path / "cpuinfo")) == expected


@pytest.mark.parametrize(
    ("text", "rows"),
    [
        # why: single rows and a range, in the table's order whatever order they are given in
        ("4,1", [1, 4]),
        ("1-3", [1, 2, 3]),
        # why: overlaps are timed once
        ("2-3,3", [2, 3]),
        ("9", [9]),
    ],
)
def test_variants_are_chosen_by_their_row_numbers(text, rows):
    names = list(bench.STEP_VARIANTS)
    assert bench.parse_args([f"--variants={text}"]).variants == [names[i - 1] for i in rows]


@pytest.mark.parametrize("text", ["0", "10", "3-1", "two", "1,,2"])
def test_a_variant_number_outside_the_table_is_refused_naming_the_rows(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args([f"--variants={text}"])
    # why: argparse's usage error, before anything loads, listing the rows to choose from
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "is not a row of 1-9" in err and "1 full fp32, beta 0.04" in err
