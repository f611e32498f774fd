"""`make bench` end to end at toy sizes: every section measured and written, nothing asserted
about speed (that is what the benchmark is for)."""

from __future__ import annotations

import importlib.util
import json

import mlflow
import pytest

from entropic import bench


def test_bench_measures_every_section_and_writes_json_and_markdown(tmp_path, embedded_checkpoint):
    uri_before = mlflow.get_tracking_uri()
    results = bench.main(
        [
            "--rollout-prompts=2",
            "--max-new-tokens=4",
            "--steps=2",
            "--uncertainty-questions=4",
            "--k=4",
            f"--out={tmp_path}",
            "model=tiny_random",
            "compute=cpu",
            "compute.cpu_scale.train_questions=4",
            "compute.cpu_scale.per_device_train_batch_size=4",
            "compute.cpu_scale.eval_questions=8",
        ]
    )
    # why: the timers' throwaway store is gone; the caller's MLflow store must be back
    assert mlflow.get_tracking_uri() == uri_before
    (json_file,) = tmp_path.glob("bench-*.json")
    (md_file,) = tmp_path.glob("bench-*.md")
    assert json.loads(json_file.read_text())["rollout"] == json.loads(
        json.dumps(results["rollout"], default=str)
    )

    hf32, hf16, vllm = results["rollout"]
    assert (hf32["backend"], hf16["backend"]) == ("transformers fp32", "transformers bf16")
    assert hf32["vs_fp32"] == 1.0
    assert hf16["vs_fp32"] == pytest.approx(hf16["tokens_per_s"] / hf32["tokens_per_s"])
    if importlib.util.find_spec("vllm") is None:
        assert (vllm["tokens_per_s"], vllm["note"]) == (None, "not installed")
    else:
        assert vllm["vs_fp32"] == pytest.approx(vllm["tokens_per_s"] / hf32["tokens_per_s"])

    fp32, bf16_step = results["grpo_step"]
    assert (fp32["dtype"], bf16_step["dtype"]) == ("fp32", "bf16")
    for step in (fp32, bf16_step):
        # why: TRL's profiling timers were read back from MLflow, and generation is inside
        # _prepare_inputs, which is inside the step
        assert 0 < step["generation_s"] < step["step_s"]
        assert step["generation_s"] + step["reward_s"] + step["other_scoring_s"] == pytest.approx(
            step["trl_profiling_s"]["_prepare_inputs"]
        )
        assert step["optimisation_s"] > 0
    for row in results["reward_overhead"]:
        assert row["share_of_step"] == pytest.approx(row["seconds"] / fp32["step_s"])
    assert [r["reward"] for r in results["reward_overhead"]] == [
        name for name, _ in bench.REWARD_CASES
    ]
    assert len(results["uncertainty"]) == 3
    assert all(row["s_per_question"] > 0 for row in results["uncertainty"])

    report = md_file.read_text()
    # why: a row without a note shows an empty cell, not "nan"
    fp32_line = next(line for line in report.splitlines() if line.startswith("| transformers fp32"))
    assert not fp32_line.rstrip(" |").endswith("nan")
    for heading in ("Rollout throughput", "GRPO step", "Reward overhead", "Test-time uncertainty"):
        assert heading in report
