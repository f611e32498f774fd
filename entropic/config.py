"""Typed view of the composed Hydra config, validated once before anything expensive runs.

`RunConfig.from_hydra(cfg)` turns the DictConfig composed from `conf/` into dataclasses. Every
`__post_init__` raises `ConfigError` naming the key and the fix, so a bad sweep point fails in
milliseconds instead of after the model has loaded (TRL's `GRPOConfig.__post_init__` is the model).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and how to fix it."""


def _require(condition: bool, key: str, problem: str, fix: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {problem}. Fix: {fix}")


def _one_of(value: str, valid: list[str] | tuple[str, ...], key: str) -> None:
    _require(
        value in valid,
        key,
        f"unknown value {value!r}",
        # a group's name is chosen with the group (adapter=full), any other key by itself
        f"use one of {sorted(valid)} (e.g. {key.removesuffix('.name')}={sorted(valid)[0]})",
    )


def cache_dir() -> Path:
    """Root of entropic's caches ($ENTROPIC_CACHE, default ~/.cache/entropic): converted models,
    question pools, entropy scores."""
    return Path(os.environ.get("ENTROPIC_CACHE", Path.home() / ".cache" / "entropic"))


MODEL_SOURCES = ("gguf_package", "hub", "path", "random")
# architectures a source=random model can take (entropic.models.RANDOM_SHAPES)
RANDOM_SHAPES = ("tiny", "smollm2_135m")
DTYPES = ("float32", "bfloat16", "float16", "auto")


@dataclass
class ModelConfig:
    # registry name shown in MLflow (smollm2_135m, qwen3_4b_instruct, ...)
    name: str
    # where the weights come from: gguf_package | hub | path | random
    source: str
    # hub id (source=hub) or the Python package holding the GGUF (source=gguf_package)
    id: str | None = None
    # GGUF file inside the package (source=gguf_package)
    gguf_file: str | None = None
    # local checkpoint directory (source=path)
    path: str | None = None
    # torch dtype for training and generation (auto: bf16 on CUDA; on CPU bf16 where a
    # matrix-product probe finds it >= 1.25x faster, else float32; entropic.models)
    dtype: str = "auto"
    # source=random: a hub id or directory of the tokenizer (None: the embedded SmolLM2 tokenizer)
    tokenizer: str | None = None
    # source=random: tiny (2 layers, for tests) | smollm2_135m (SmolLM2-135M's architecture)
    shape: str = "tiny"

    def __post_init__(self) -> None:
        _one_of(self.source, MODEL_SOURCES, "model.source")
        _one_of(self.dtype, DTYPES, "model.dtype")
        _one_of(self.shape, RANDOM_SHAPES, "model.shape")
        if self.source == "hub":
            _require(bool(self.id), "model.id", "a hub model needs an id", "set model.id=org/name")
        if self.source == "path":
            _require(
                bool(self.path), "model.path", "is empty", "set model.path=/dir/with/config.json"
            )
        if self.source == "gguf_package":
            _require(
                bool(self.id and self.gguf_file),
                "model.id/model.gguf_file",
                "a GGUF package model needs the package and the file",
                "see conf/model/smollm2_135m.yaml",
            )


ADAPTERS = ("lora", "full")


@dataclass
class CentreConfig:
    """adapter.centre: a LoRA that reads its input centred where the stated number is written,
    and only there (entropic.readout; experiments/lora_recipe/README.md, "a centred read-out")."""

    # the mean is taken over the base model's greedy answers to the first N questions of the
    # training pool (their inputs where the number's first digit is predicted; no labels used)
    questions: int = 400
    # the adapter acts where its input lies within radius x (the median distance of those
    # inputs from their mean) of the mean, and reads zero elsewhere (the answer's tokens lie
    # ~10 medians away on SmolLM2's last down_proj: the answers stay the base model's)
    radius: float = 5.0
    # what is left of the mean, along its direction, in the same medians: 0 centres fully, so
    # the adapter can rank answers but barely move their level; > 0 lets it move the level too
    level: float = 0.0
    # the policy's logits are divided by this where the gate is open (the number's first
    # digit): rollouts sample the digit at this x the rollout temperature, and the loss scores
    # it so; greedy evaluation reads the same number. < 1 pays for the number greedy decoding
    # states (1: the rollout temperature, as every token)
    temperature: float = 1.0
    # a shift of the logits there, the same for every answer, trained from zero at this x the
    # adapter's learning rate: the number's level moves apart from the split the centred
    # read-out learns (0: no shift; the read-out alone barely moves the level, p51-p52;
    # conf/adapter/readout.yaml sets 1.0, readout_mixed's recipe p60)
    shift_rate: float = 0.0
    # two more gates, where the number's first digit was 1 and where it was "10" (the model
    # chooses there between 10-19, 100 and the end), each with its own mean, radius and shift:
    # the digit 1 starts 100 as well, and without them every run pushes it down, a floor of 20
    # (experiments/lora_recipe/README.md, p63: as fitted they open more widely than that).
    # Needs trainer.loss_tokens=number
    after_one: bool = False
    # each further gate's radius: own (radius x its own median distance, as p63 ran) | apart
    # (that, cut to the nearest input of any other token in the fit's answers, so on them the
    # gate opens where it was fitted alone; p64)
    after_radius: str = "apart"

    def __post_init__(self) -> None:
        _require(
            isinstance(self.questions, int) and self.questions > 0,
            "adapter.centre.questions",
            f"{self.questions} is not a positive number of questions",
            "adapter.centre.questions=400",
        )
        _require(self.radius > 0, "adapter.centre.radius", "must be > 0", "adapter.centre.radius=5")
        _require(self.level >= 0, "adapter.centre.level", "must be >= 0", "adapter.centre.level=0")
        _require(
            self.temperature > 0,
            "adapter.centre.temperature",
            f"{self.temperature} is not a positive temperature",
            "adapter.centre.temperature=1",
        )
        _require(
            self.shift_rate >= 0,
            "adapter.centre.shift_rate",
            f"{self.shift_rate} is not a rate >= 0",
            "adapter.centre.shift_rate=0",
        )
        _one_of(self.after_radius, ("own", "apart"), "adapter.centre.after_radius")


@dataclass
class AdapterConfig:
    # what GRPO trains: lora (peft adapters, as the reference's Tinker runs) | full (every weight)
    name: str = "lora"
    # AdamW learning rate that suits this adapter (trainer.learning_rate defaults to it; LoRA's
    # 1e-4 is ~10x full fine-tuning's, experiments/lora_recipe/)
    learning_rate: float = 1.0e-4
    # LoRA rank r
    rank: int = 32
    # LoRA scale alpha (the update is scaled by alpha / rank)
    alpha: float = 32.0
    # dropout on the LoRA input
    dropout: float = 0.0
    # modules that get adapters: "all-linear" (peft's name for every linear layer but the head)
    # or a list of module names such as [q_proj, v_proj]
    target_modules: str | list[str] = "all-linear"
    # adapters on the last N decoder layers only (null, or N >= the model's layers: every layer).
    # The backward pass stops at the lowest adapted layer, so a step costs less
    top_layers: int | None = None
    # a read-out centred at the stated number (null: plain LoRA); adapter=readout sets it
    centre: CentreConfig | None = None

    def __post_init__(self) -> None:
        _one_of(self.name, ADAPTERS, "adapter.name")
        _require(self.learning_rate > 0, "adapter.learning_rate", "must be > 0", "e.g. 1e-4")
        if isinstance(self.centre, dict):
            self.centre = _build(CentreConfig, self.centre, "adapter.centre")
        _require(
            self.centre is None or self.name == "lora",
            "adapter.centre",
            "centres a LoRA's input, and adapter.name is full",
            "adapter=readout (a LoRA), or adapter.centre=null",
        )
        if self.name != "lora":
            return
        _require(
            isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank > 0,
            "adapter.rank",
            f"{self.rank} is not a positive integer",
            "e.g. adapter.rank=32 (Tinker's default; RL works down to rank 1)",
        )
        _require(self.alpha > 0, "adapter.alpha", f"{self.alpha} must be > 0", "adapter.alpha=32")
        _require(
            0.0 <= self.dropout < 1.0,
            "adapter.dropout",
            f"{self.dropout} is outside [0, 1)",
            "adapter.dropout=0.0",
        )
        wanted = self.target_modules
        names = [wanted] if isinstance(wanted, str) else list(wanted)
        _require(
            bool(names) and all(isinstance(n, str) and n for n in names),
            "adapter.target_modules",
            "is empty",
            'adapter.target_modules=all-linear or a list such as "[q_proj,v_proj]"',
        )
        top = self.top_layers
        _require(
            top is None or (isinstance(top, int) and not isinstance(top, bool) and top > 0),
            "adapter.top_layers",
            f"{top} is not a positive number of layers",
            "adapter.top_layers=8 (the last 8 decoder layers), or adapter.top_layers=null (all)",
        )
        _require(
            top is None or wanted == "all-linear" or not isinstance(wanted, str),
            "adapter.top_layers",
            "needs target_modules as all-linear or a list of names (peft cannot combine a "
            "regular expression with a layer choice)",
            "adapter.target_modules=all-linear, or put the layers in the regular expression",
        )


def _require_finite(value: Any, key: str) -> None:
    """Refuse nan and inf anywhere in a value, naming the dotted key that holds them: in a nested
    mapping (trainer.grpo, data.options, eval.sets, compute.cpu_scale) or a list too."""
    if isinstance(value, dict):
        for name, item in value.items():
            _require_finite(item, f"{key}.{name}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _require_finite(item, f"{key}[{index}]")
        return
    _require(
        not isinstance(value, float) or math.isfinite(value),
        key,
        f"{value} is not a finite number",
        f"give a number (nan and inf are never meaningful here), e.g. {key}=0.0",
    )


# The question sources (data.name, eval.sets.<set>.source): the names of entropic.data.DATASETS,
# kept here so that a typo is refused before torch loads (tests/test_data.py holds the two to the
# same names; the loaders and their option checks stay in entropic.data)
DATA_SOURCES = ("geo", "triviaqa", "jsonl", "elements", "arithmetic")


@dataclass
class DataConfig:
    # question source (entropic.data.DATASETS): geo | triviaqa | jsonl | elements | arithmetic
    name: str
    # training pool size (questions)
    train_size: int
    # held-out evaluation questions
    eval_size: int
    # loader-specific options (geo kinds, jsonl path, split_seed, ...)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _one_of(self.name, DATA_SOURCES, "data.name")
        _require(self.train_size > 0, "data.train_size", "must be > 0", "e.g. data.train_size=1600")
        _require(self.eval_size > 0, "data.eval_size", "must be > 0", "e.g. data.eval_size=500")


PROMPT_FORMATS = ("lines", "tags", "reasoning")


@dataclass
class PromptConfig:
    # prompt name (default, calibration_aggressive, ...)
    name: str
    # system message: what to answer and how to state confidence
    system: str
    # answer format the few-shot turns teach: lines (Answer:/Confidence:), tags, or reasoning
    # (a few sentences of thought, then the two lines; the last Answer/Confidence lines count)
    format: str = "lines"
    # few-shot turns, each {question, answer, confidence} (and reasoning, for format=reasoning)
    few_shot: list[dict[str, Any]] = field(default_factory=list)
    # completion tokens this prompt's replies need: rollouts and evaluation get at least this
    # many, whatever trainer.max_completion_length, eval.max_new_tokens or the CPU profile say
    # (null: those keys decide)
    completion_tokens: int | None = None

    def __post_init__(self) -> None:
        _one_of(self.format, PROMPT_FORMATS, "prompt.format")
        needed = {"question", "answer", "confidence"}
        if self.format == "reasoning":
            needed.add("reasoning")
        for i, turn in enumerate(self.few_shot):
            _require(
                needed <= set(turn),
                f"prompt.few_shot[{i}]",
                f"needs {', '.join(sorted(needed))}",
                "see conf/prompt/default.yaml (conf/prompt/reasoning.yaml for format=reasoning)",
            )
        _require(
            self.completion_tokens is None or self.completion_tokens > 0,
            "prompt.completion_tokens",
            f"{self.completion_tokens} is not a count >= 1",
            "e.g. prompt.completion_tokens=256, or null",
        )


@dataclass(frozen=True)
class RewardParameters:
    """What the config needs to know of one reward rule: the reward.* keys it reads and whether it
    needs calibrated targets. The rule's scoring function is entropic.rewards.REWARDS[<name>];
    both registries are keyed by the same names (tests/test_rewards.py), and this one is torch-free
    so that a bad reward setting is refused in seconds."""

    # the reward.* parameters the score reads besides COMMON_REWARD_PARAMETERS; any other keeps
    # the value that means "unused" (`unused_value`), or the run is refused
    reads: tuple[str, ...] = ()
    # the labeled share the rule is defined for when it does not read labeled_fraction (brier
    # needs every label, stability none); None for a rule that reads the mix
    labeled_fraction: float | None = None
    # the dataset must carry a `calibrated_target` column (the entropy -> Platt pipeline, which
    # needs the calibration section)
    needs_target: bool = False

    def unused_value(self, parameter: str) -> Any:
        """The value a parameter the rule does not read must keep: the labeled share the rule
        is defined for, or RewardConfig's default."""
        if parameter == "labeled_fraction":
            return self.labeled_fraction
        return next(f.default for f in dataclasses.fields(RewardConfig) if f.name == parameter)


# reward.* keys every rule reads (TRLReward pays format_penalty for an unparseable completion)
COMMON_REWARD_PARAMETERS = ("name", "format_penalty")
# Every reward rule by name (reward.name), in entropic.rewards.REWARDS's order
REWARD_PARAMETERS: dict[str, RewardParameters] = {
    "brier": RewardParameters(labeled_fraction=1.0),
    "stability": RewardParameters(labeled_fraction=0.0),
    # Brier on that share of the questions, stability on the rest
    "mixed": RewardParameters(reads=("labeled_fraction",)),
    "rlcr": RewardParameters(labeled_fraction=1.0),
    "log_score": RewardParameters(reads=("log_score_floor",), labeled_fraction=1.0),
    # the Platt scaling is fitted on the labeled share
    "calibrated": RewardParameters(reads=("labeled_fraction",), needs_target=True),
}


@dataclass
class RewardConfig:
    # reward registry name: brier | stability | mixed | rlcr | log_score | calibrated
    name: str
    # share of training questions that are labeled (Brier); the rest get stability
    labeled_fraction: float = 1.0
    # reward for a completion whose answer or confidence cannot be parsed
    format_penalty: float = 0.0
    # confidence floor for log_score, so log(0) cannot occur
    log_score_floor: float = 0.01

    def __post_init__(self) -> None:
        _one_of(self.name, tuple(REWARD_PARAMETERS), "reward.name")
        _require(
            0.0 <= self.labeled_fraction <= 1.0 and not math.isnan(self.labeled_fraction),
            "reward.labeled_fraction",
            f"{self.labeled_fraction} is outside [0, 1]",
            "a share, e.g. reward.labeled_fraction=0.5 (1.0: pure Brier, 0.0: pure stability)",
        )
        _require(
            0.0 < self.log_score_floor < 0.5,
            "reward.log_score_floor",
            f"{self.log_score_floor} is outside (0, 0.5)",
            "e.g. reward.log_score_floor=0.01",
        )

    @property
    def needs_target(self) -> bool:
        """The rule pays toward calibrated targets, which the calibration section makes."""
        return REWARD_PARAMETERS[self.name].needs_target


def check_reward_parameters(reward: RewardConfig) -> None:
    """A reward parameter the chosen rule does not read is an error, not a silent run without it
    (reward=brier reward.labeled_fraction=0.5 would run as pure Brier). Checked for a whole run
    (RunConfig), not in RewardConfig itself: a RewardConfig built in code to score a batch (the
    bench, the reward tests) may leave the mix at any value, since the batch carries its labels."""
    rule = REWARD_PARAMETERS[reward.name]
    for parameter in (f.name for f in dataclasses.fields(RewardConfig)):
        if parameter in COMMON_REWARD_PARAMETERS or parameter in rule.reads:
            continue
        unused, value = rule.unused_value(parameter), getattr(reward, parameter)
        if value == unused:
            continue
        readers = [name for name, other in REWARD_PARAMETERS.items() if parameter in other.reads]
        raise ConfigError(
            f"reward.{parameter}: reward={reward.name} does not read it and runs as if it were "
            f"{unused}, not {value}. Fix: reward={readers[0]} reward.{parameter}={value} (the "
            f"rules that read it: {', '.join(readers)}), or drop the override (a rule chosen "
            f"as a group, reward={reward.name}, brings its own values)"
        )


# semantic.method: the names of entropic.semantic.CLUSTERERS (tests/test_semantic.py holds the two
# to the same names); a clusterer's options are checked where it is built
SEMANTIC_METHODS = ("exact", "embedding", "nli")


@dataclass
class SemanticConfig:
    # how sampled answers are grouped by meaning: exact | embedding | nli
    method: str = "exact"
    # further options passed to entropic.semantic.build_clusterer (threshold, model, strict)
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _one_of(self.method, SEMANTIC_METHODS, "semantic.method")


LOSS_TOKENS = ("all", "confidence", "first_digit", "number")
# trl.GRPOConfig fields entropic fills in from another key, and that key: a pass-through
# (trainer.grpo.<field>) of one of them is refused, naming the key that sets it
TRL_FIELDS_SET_ELSEWHERE = {
    "num_train_epochs": "trainer.epochs",
    "warmup_steps": "trainer.warmup_ratio",
    "save_strategy": "trainer.save_steps",
    "output_dir": "output_dir (Hydra's job folder)",
    "seed": "seed",
    "data_seed": "seed",
    "use_cpu": "compute.device",
    "bf16": "model.dtype",
    "model_init_kwargs": "model (conf/model/)",
    "use_vllm": "rollout (conf/rollout/)",
    "report_to": "tracking (entropic logs to MLflow itself)",
    "remove_unused_columns": "a fixed false (the rewards read the dataset's columns)",
    "save_total_limit": "a fixed 2 (two checkpoints to resume from)",
    "disable_tqdm": "a fixed false (the progress bar stays on)",
}
# every trl.GRPOConfig field named vllm_* comes from the rollout group (entropic.rollout)
TRL_PREFIX_SET_ELSEWHERE = ("vllm_", "rollout (conf/rollout/)")


@dataclass
class TrainerConfig:
    """The GRPO settings entropic owns: read by its own code, or set differently from TRL's
    defaults (the reason is beside each; experiments/lora_recipe/README.md has the evidence).
    Every other trl.GRPOConfig field passes through `grpo` and is checked by TRL itself."""

    # passes over the training pool (TRL's num_train_epochs, 3 by default; the reference trains
    # 1, and 2 for its collapse run)
    epochs: float
    # completions sampled per question, the GRPO group size G (read by entropic: the stability
    # reward's groups and the CPU caps)
    num_generations: int
    # AdamW learning rate (the YAML takes the adapter's: "LoRA Without Regret"; TRL's is 1e-6)
    learning_rate: float
    # KL coefficient against the reference model (0: no reference model; Tinker, RLCR), pinned so
    # that a change of TRL's default cannot change the recipe
    beta: float
    # sampling temperature of the rollouts (read by entropic: the CPU cap and the prefix_cache
    # rollout; 1.0 is Tinker's)
    temperature: float
    # most tokens per completion (read by entropic: CPU cap, prompt.completion_tokens; TRL's 512
    # is far more than the answer and confidence lines need)
    max_completion_length: int
    # completions per device per optimisation step (read by entropic: the CPU cap; a multiple of
    # num_generations)
    per_device_train_batch_size: int
    # stop after this many optimisation steps (-1: run all epochs; 0, which TRL would take as
    # "all epochs", is refused; the smoke runs and `make bench` cut runs short with it)
    max_steps: int = -1
    # log TRL's training metrics every N steps (TRL logs every 10; a run here is 8-50 steps)
    logging_steps: int = 1
    # write a resumable checkpoint every N steps (0: never; no checkpoint is written, not even at
    # the end, and a rerun in the same folder trains again from step 0)
    save_steps: int = 50
    # advantage scaling: none = reward minus the group mean (Tinker, RLCR, Dr. GRPO; TRL: group)
    scale_rewards: str = "none"
    # Adam's beta1 and beta2 (Tinker's pair; TRL's beta2 is 0.999)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    # learning-rate schedule (constant: Tinker; TRL decays linearly to 0)
    lr_scheduler_type: str = "constant"
    # share of the steps spent warming the learning rate up (TRL's warmup_steps, which takes a
    # value below 1 as a share; a name of its own says which it is)
    warmup_ratio: float = 0.0
    # recompute activations in the backward pass (our measurement: pure cost on a 135M model;
    # TRL turns it on)
    gradient_checkpointing: bool = False
    # which completion tokens the policy-gradient loss covers: all | confidence (from the
    # `Confidence` key on; the answer tokens then keep the base model's distribution up to the
    # shared weights) | first_digit (the number's first digit alone, for adapter=readout) |
    # number (the first digit, and after a first 1 the tokens that choose 10-19, 100 or the
    # end, for adapter.centre.after_one) (entropic's own)
    loss_tokens: str = "all"
    # confidences sampled after each sampled answer (1: one completion per answer, as the
    # reference). K > 1: the G completions of a question are G / K answers with K confidences
    # each, and the advantage is split: answer tokens compare answers, confidence tokens compare
    # the K confidences of the same answer (entropic's own; experiments/lora_recipe/README.md)
    confidence_samples: int = 1
    # run the periodic held-out evaluation every N steps (0: only before and after; entropic's own)
    eval_every_n_steps: int = 0
    # any other trl.GRPOConfig field, passed through and validated by TRL itself
    grpo: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(
            self.epochs > 0, "trainer.epochs", f"{self.epochs} must be > 0", "trainer.epochs=1"
        )
        _one_of(self.loss_tokens, LOSS_TOKENS, "trainer.loss_tokens")
        for key in ("adam_beta1", "adam_beta2"):
            _require(
                0.0 <= getattr(self, key) < 1.0,
                f"trainer.{key}",
                f"{getattr(self, key)} is outside [0, 1)",
                "e.g. trainer.adam_beta2=0.95",
            )
        _require(
            0.0 <= self.warmup_ratio < 1.0,
            "trainer.warmup_ratio",
            f"{self.warmup_ratio} is outside [0, 1)",
            "e.g. trainer.warmup_ratio=0.1",
        )
        _require(
            self.num_generations >= 2,
            "trainer.num_generations",
            f"{self.num_generations} < 2: GRPO compares completions within a group",
            "trainer.num_generations=4 or more",
        )
        _require(
            self.per_device_train_batch_size > 0
            and self.per_device_train_batch_size % self.num_generations == 0,
            "trainer.per_device_train_batch_size",
            f"{self.per_device_train_batch_size} does not divide into groups of "
            f"num_generations={self.num_generations}",
            "make it a multiple of trainer.num_generations",
        )
        _require(
            self.confidence_samples >= 1
            and self.num_generations % self.confidence_samples == 0
            and self.num_generations // self.confidence_samples >= 2,
            "trainer.confidence_samples",
            f"{self.confidence_samples} does not split a group of num_generations="
            f"{self.num_generations} into 2 or more answers",
            "a divisor of trainer.num_generations (on a CPU, capped by "
            "compute.cpu_scale.num_generations) at most half of it, e.g. 2 (1: off)",
        )
        _require(self.learning_rate > 0, "trainer.learning_rate", "must be > 0", "e.g. 1e-6")
        _require(self.beta >= 0, "trainer.beta", "must be >= 0", "e.g. trainer.beta=0.04")
        _require(self.temperature > 0, "trainer.temperature", "must be > 0", "e.g. 1.0")
        _require(
            self.max_completion_length > 0,
            "trainer.max_completion_length",
            "must be > 0",
            "e.g. 48",
        )
        _require(self.max_steps != 0, "trainer.max_steps", "0 steps", "-1 (all epochs) or > 0")
        _require(
            self.save_steps >= 0,
            "trainer.save_steps",
            f"{self.save_steps} < 0",
            "a step count, or trainer.save_steps=0 for no checkpoints",
        )
        _require(
            isinstance(self.grpo, dict),
            "trainer.grpo",
            f"{self.grpo!r} is not a mapping",
            "trainer.grpo.<field>=<value>, e.g. +trainer.grpo.max_grad_norm=0.5",
        )
        check_pass_through_owners(self)
        # TRL's own judgement (check_with_trl) imports torch, so RunConfig runs it after every
        # other check

    def grpo_arguments(self) -> dict[str, Any]:
        """The trl.GRPOConfig arguments of this section: our keys under TRL's names, then the
        pass-through fields (no key of ours can be among them: `check_with_trl` refuses it)."""
        return {
            **{name: getattr(self, name) for name in TRAINER_KEYS_UNDER_TRL_NAMES},
            "num_train_epochs": self.epochs,
            "warmup_steps": self.warmup_ratio,
            "save_strategy": "steps" if self.save_steps > 0 else "no",
            # TRL refuses save_steps=0 even with saving off
            "save_steps": max(self.save_steps, 1),
            **self.grpo,
        }


# TrainerConfig keys that are trl.GRPOConfig fields of the same name and meaning
TRAINER_KEYS_UNDER_TRL_NAMES = (
    "num_generations",
    "learning_rate",
    "beta",
    "temperature",
    "max_completion_length",
    "per_device_train_batch_size",
    "max_steps",
    "logging_steps",
    "scale_rewards",
    "adam_beta1",
    "adam_beta2",
    "lr_scheduler_type",
    "gradient_checkpointing",
)
# The environment a multi-process launch sets; hidden while the check builds a GRPOConfig, so
# that building it cannot start a process group (TrainingArguments sets up its devices).
LAUNCH_ENVIRONMENT = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "ACCELERATE_USE_CPU")


# a value of each simple type, for the fix of a pass-through value of the wrong type
TYPE_EXAMPLES = {bool: "true", int: "1", float: "0.5", str: "<text>"}


def trl_field_types() -> dict[str, Any]:
    """trl.GRPOConfig's fields and their types (trl is imported here only, so that config stays
    cheap to import)."""
    from trl import GRPOConfig

    return {f.name: f.type for f in dataclasses.fields(GRPOConfig)}


def _type_matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a simple field type (bool, int, float, str, X | None); other
    types are left to TRL."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    if options:
        return any(_type_matches(value, option) for option in options)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def check_pass_through_owners(trainer: TrainerConfig) -> None:
    """Refuse a pass-through (trainer.grpo.<field>) of a field entropic sets from another key,
    naming that key; needs no TRL, so it runs with the section's own checks."""
    ours = {f.name for f in dataclasses.fields(trainer)} - {"grpo"}
    prefix, prefix_owner = TRL_PREFIX_SET_ELSEWHERE
    for name, value in trainer.grpo.items():
        key = f"trainer.grpo.{name}"
        owner = (
            f"trainer.{name}"
            if name in ours
            else TRL_FIELDS_SET_ELSEWHERE.get(name)
            or (prefix_owner if str(name).startswith(prefix) else None)
        )
        _require(
            owner is None,
            key,
            f"entropic sets {name} itself, from {owner}",
            f"drop {key}"
            + (f" and set {owner}={value}" if owner and owner.startswith("trainer.") else ""),
        )


def check_with_trl(trainer: TrainerConfig) -> None:
    """Check the pass-through fields by name and type, then build a trl.GRPOConfig from the whole
    section so that TRL's own `__post_init__` judges the values, all before any model loads.
    Imports trl (and with it torch, transformers and accelerate: ~15 s on a 2-core machine), so
    RunConfig runs it after every cheap check.

    Nothing about the device is decided here (use_cpu, no bf16; the rollout group's vLLM fields
    are checked by entropic.rollout), so the same config validates on a laptop and a cluster.
    """
    fields = trl_field_types()
    ours = {f.name for f in dataclasses.fields(trainer)} - {"grpo"}
    for name, value in trainer.grpo.items():
        key = f"trainer.grpo.{name}"
        close = difflib.get_close_matches(str(name), list(fields), n=3)
        _require(
            name in fields,
            key,
            f"{name!r} is not a trl.GRPOConfig field",
            (f"did you mean {' or '.join(f'trainer.grpo.{c}' for c in close)}? " if close else "")
            + "trl.GRPOConfig's documentation lists the fields",
        )
        _require(
            _type_matches(value, fields[name]),
            key,
            f"{value!r} is not a {getattr(fields[name], '__name__', fields[name])}",
            f"e.g. {key}={TYPE_EXAMPLES.get(fields[name], '<value>')}",
        )
    from trl import GRPOConfig

    hidden = {name: os.environ.pop(name) for name in LAUNCH_ENVIRONMENT if name in os.environ}
    try:
        with warnings.catch_warnings():
            # TRL's and transformers' deprecation notes belong to the real build, not the check
            warnings.simplefilter("ignore")
            GRPOConfig(
                output_dir=tempfile.gettempdir(),
                use_cpu=True,
                bf16=False,
                report_to="none",
                **trainer.grpo_arguments(),
            )
    except (ValueError, TypeError) as err:
        message = str(err).rstrip(".")
        # the keys TRL's message names, by field name or by the value it quotes
        values = {f"trainer.{n}": getattr(trainer, n) for n in sorted(ours)}
        values |= {f"trainer.grpo.{n}": value for n, value in trainer.grpo.items()}
        keys = [
            key
            for key, value in values.items()
            if re.search(rf"\b{key.rsplit('.', 1)[1]}\b", message)
            or (isinstance(value, str) and len(value) > 2 and value in message)
        ] or ["trainer"]
        raise ConfigError(
            f"{', '.join(keys)}: trl.GRPOConfig refuses these settings: {message}. Fix: change "
            "the value TRL names (trl.GRPOConfig's documentation says what each field takes)"
        ) from err
    finally:
        os.environ.update(hidden)
        # the check's GRPOConfig set up accelerate's (single-process, CPU) state; the real one
        # sets it up again for the run, as every GRPOConfig does
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)


# A set's name becomes a metric prefix (eval/<set>/accuracy) and an artifact folder.
SET_NAME = re.compile(r"[a-z][a-z0-9_]*")
# The held-out split's summary metrics (entropic.evaluate logs them as eval/<name>) and the
# tables' names, kept here, torch-free, because a set named after one is refused with the config.
METRIC_NAMES = (
    "accuracy",
    "confidence",
    "calibration_gap",
    "ece",
    "brier",
    "auroc",
    "format_rate",
)
# The Brier score of the best single confidence on the same (parsed) answers, and the skill
# score against it (1 - brier / brier_constant): positive only when the stated numbers beat
# saying the answers' accuracy to every question.
BASELINE_NAMES = ("brier_constant", "brier_skill")
# How the stated confidence separates right from wrong answers, and whether it is one number
# said to every question (the dead end of group-normalised GRPO): printed and logged beside the
# METRIC_NAMES, which the study reports read.
DISCRIMINATION_NAMES = ("confidence_correct", "confidence_wrong", "distinct_confidences")
# How the answers behave (the reference's "The Pattern" table): the share of all questions whose
# answer abstains ("I don't know", "None") and whose completion puts forward more than one
# candidate (entropic.grading.abstains, mentions_alternatives).
SHARE_NAMES = ("abstain_share", "alternatives_share")
SUMMARY_NAMES = METRIC_NAMES + BASELINE_NAMES + DISCRIMINATION_NAMES + SHARE_NAMES
# The training source's held-out split among the sets a run evaluates. Its metrics stay at
# eval/<metric> and its tables at predictions/<when>.json, where reports and the UI read them.
HELD_OUT = "held_out"
# The behaviour table's title beside the sets' summary tables (summary.md, the printed summary).
BEHAVIOUR = "behaviour"
# Names no set can take: the held-out split's own, the behaviour table's and the held-out
# split's metrics, which eval/<set> would shadow.
RESERVED_SET_NAMES = (HELD_OUT, BEHAVIOUR, *SUMMARY_NAMES)


@dataclass
class EvalSetConfig:
    # question source (DATA_SOURCES): elements, arithmetic, geo, jsonl, triviaqa
    source: str
    # questions evaluated (the eval draw of the source, by its split_seed)
    size: int
    # also evaluate it in the periodic evaluations (trainer.eval_every_n_steps), on its first
    # eval.periodic_size questions
    periodic: bool = False
    # the source's own options (split_seed, kinds, path), as under data.* for that source
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalConfig:
    # questions per greedy generation batch
    batch_size: int = 32
    # most tokens of an evaluation answer
    max_new_tokens: int = 48
    # held-out questions used by the periodic evaluation during training
    periodic_size: int = 100
    # other evaluation sets, by name, evaluated before and after training (eval/<name>/<metric>)
    sets: dict[str, EvalSetConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.batch_size > 0, "eval.batch_size", "must be > 0", "eval.batch_size=32")
        _require(self.max_new_tokens > 0, "eval.max_new_tokens", "must be > 0", "e.g. 48")
        self.sets = eval_sets(self.sets)


def eval_sets(raw: Any) -> dict[str, EvalSetConfig]:
    """`eval.sets` checked: set names to sets; a set set to null (`eval.sets.arithmetic=null`) is
    switched off. Names are keys of one mapping, so two sets cannot share one (YAML refuses a
    repeated key, and names are lower-case, so no two differ only in case)."""
    example = "'+eval.sets.mine={source: jsonl, path: /abs/questions.jsonl, size: 200}'"
    if raw is None:
        return {}
    _require(isinstance(raw, dict), "eval.sets", f"{raw!r} is not a mapping", example)
    sets: dict[str, EvalSetConfig] = {}
    for name, values in raw.items():
        if isinstance(values, EvalSetConfig):
            sets[name] = values
            continue
        if values is None:
            continue
        key = f"eval.sets.{name}"
        _require(
            isinstance(name, str) and SET_NAME.fullmatch(name) is not None,
            key,
            "a set's name is a metric prefix: lower-case letters, digits and _, first a letter",
            "rename the set, e.g. eval.sets.my_questions",
        )
        _require(
            name not in RESERVED_SET_NAMES,
            key,
            f"{name!r} names the held-out split, the behaviour table or one of the held-out "
            f"split's metrics (eval/{name})",
            "give the set another name",
        )
        _require(isinstance(values, dict), key, f"{values!r} is not a mapping", example)
        for required in ("source", "size"):
            _require(required in values, f"{key}.{required}", "is required", example)
        _one_of(values["source"], DATA_SOURCES, f"{key}.source")
        size = values["size"]
        _require(
            isinstance(size, int) and not isinstance(size, bool) and size > 0,
            f"{key}.size",
            f"{size!r} is not a count >= 1",
            f"{key}.size=300",
        )
        _require(
            isinstance(values.get("periodic", False), bool),
            f"{key}.periodic",
            "must be true or false",
            f"{key}.periodic=true",
        )
        known = {"source", "size", "periodic"}
        sets[name] = EvalSetConfig(
            source=values["source"],
            size=size,
            periodic=values.get("periodic", False),
            options={k: v for k, v in values.items() if k not in known},
        )
    return sets


# compute.cpu_scale.malloc: how the CPU profile's allocator treats freed memory
MALLOC_MODES = ("system", "keep")
# compute.cpu_scale.train_mix: how the CPU training subset is drawn (entropic.data.draw_subset)
TRAIN_MIXES = ("pool", "by_kind")


@dataclass
class CpuScale:
    # most training questions taken (a seeded subset of the pool) when running on CPU
    train_questions: int
    # most held-out questions evaluated on CPU (>= 200 keeps the metrics meaningful)
    eval_questions: int
    # group size on CPU
    num_generations: int
    # completions per optimisation step on CPU
    per_device_train_batch_size: int
    # completion length cap on CPU
    max_completion_length: int
    # rollout temperature cap on CPU (None: the trainer's own); SmolLM2-135M's sampled answers
    # fall apart at 1.0 (experiments/lora_recipe/README.md)
    temperature: float | None = None
    # most questions of each evaluation set (eval.sets) on CPU (None: each set's own size)
    set_questions: int | None = None
    # engine of evaluation and sampled answers on CPU (None: generation.name as configured)
    generation: str | None = None
    # GRPO rollout backend on CPU in place of rollout=hf (None: rollout.name as configured)
    rollout: str | None = None
    # CPU memory allocator: system (glibc's defaults) or keep (glibc keeps freed memory for the
    # next GRPO step instead of unmapping it and faulting it in again: a run ~9% faster, but the
    # heap never shrinks: a sweep whose jobs share a process refuses it; entropic.compute)
    malloc: str = "system"
    # how the training subset is drawn: pool (a seeded sample, kinds in the pool's proportions)
    # or by_kind (equal numbers of each question kind; entropic.data.draw_subset)
    train_mix: str = "pool"

    def __post_init__(self) -> None:
        _one_of(self.train_mix, TRAIN_MIXES, "compute.cpu_scale.train_mix")
        if self.generation is not None:
            _one_of(self.generation, GENERATION_ENGINES, "compute.cpu_scale.generation")
        if self.rollout is not None:
            _one_of(self.rollout, ("hf", "prefix_cache"), "compute.cpu_scale.rollout")
        _one_of(self.malloc, MALLOC_MODES, "compute.cpu_scale.malloc")
        _require(
            self.temperature is None or self.temperature > 0,
            "compute.cpu_scale.temperature",
            "must be > 0",
            "e.g. 0.7, or null for the trainer's own",
        )
        _require(
            self.set_questions is None or self.set_questions > 0,
            "compute.cpu_scale.set_questions",
            "must be > 0",
            "e.g. 100, or null for each set's own size",
        )


@dataclass
class ComputeConfig:
    # profile name: auto | cpu | single_gpu | multi_gpu | zero2 | zero3 | server_split
    name: str
    # torch device: auto (cuda when available) | cpu | cuda
    device: str = "auto"
    # training processes accelerate launches (0: one per GPU left after vllm_gpus)
    num_processes: int = 1
    # accelerate config file for multi-process profiles
    accelerate_config: str | None = None
    # CPU scale-down, applied only when the run lands on CPU (None: never scale)
    cpu_scale: CpuScale | None = None
    # GPUs kept for the vLLM server (rollout=vllm_server); the training processes get the rest
    vllm_gpus: int = 0

    def __post_init__(self) -> None:
        _one_of(self.device, ("auto", "cpu", "cuda"), "compute.device")
        if isinstance(self.cpu_scale, dict):
            required = {
                f.name
                for f in dataclasses.fields(CpuScale)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            }
            # Only a profile that never scales (cpu_scale: null) leaves required keys out: an
            # experiment's CPU setting (readout_mixed's train_questions) merged into it. The
            # profile decides: nothing is scaled.
            self.cpu_scale = (
                CpuScale(**self.cpu_scale) if required <= self.cpu_scale.keys() else None
            )
        _require(
            self.num_processes >= 0,
            "compute.num_processes",
            f"{self.num_processes} < 0",
            "a process count, or 0 for every GPU left after compute.vllm_gpus",
        )
        _require(self.vllm_gpus >= 0, "compute.vllm_gpus", "must be >= 0", "e.g. 1")


# where a relative compute.accelerate_config is found: the repository root
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def accelerate_config_path(compute: ComputeConfig) -> Path:
    path = Path(compute.accelerate_config)
    return path if path.is_absolute() else PROJECT_ROOT / path


def zero_stage(compute: ComputeConfig) -> int:
    """The DeepSpeed ZeRO stage of the profile's accelerate config (0: no DeepSpeed). Read here,
    torch-free, because the read-out's check needs it (entropic.launch launches with it)."""
    if compute.accelerate_config is None:
        return 0
    path = accelerate_config_path(compute)
    _require(
        path.is_file(),
        "compute.accelerate_config",
        f"{path} does not exist",
        "point it at an accelerate config, e.g. conf/accelerate/multi_gpu.yaml",
    )
    settings = yaml.safe_load(path.read_text())
    return int((settings.get("deepspeed_config") or {}).get("zero_stage", 0))


# engines of evaluation answers and sampled answers (entropic.generation.ENGINES)
GENERATION_ENGINES = ("hf", "prefix_cache")


@dataclass
class GenerationConfig:
    # engine of every greedy evaluation and of the sampled answers of the stability study and
    # the calibration pipeline: hf (transformers' generate) | prefix_cache (one prefill per
    # shared prefix; entropic/generation.py)
    name: str = "hf"

    def __post_init__(self) -> None:
        _one_of(self.name, GENERATION_ENGINES, "generation.name")


ROLLOUT_BACKENDS = ("hf", "prefix_cache", "vllm_colocate", "vllm_server")


@dataclass
class RolloutConfig:
    # who generates the GRPO rollouts: hf (the policy's generate) | prefix_cache (the policy
    # through entropic.generation, one prefill per prompt) | vllm_colocate | vllm_server
    name: str = "hf"
    # prefix_cache: most sequences decoded together; a bigger generation batch is decoded in turns
    batch_size: int = 64
    # share of each GPU's memory vLLM may take (colocate: shared with training; server: its own)
    gpu_memory_utilization: float = 0.3
    # GPUs one vLLM engine spans (colocate: must divide the training processes)
    tensor_parallel_size: int = 1
    # colocate: offload vLLM's weights and KV cache during the optimiser step
    enable_sleep_mode: bool = False
    # vLLM context window (None: from the model config; prompt + completion must fit)
    max_model_length: int | None = None
    # an already running vLLM server, e.g. http://node7:8000 (None: the job starts one)
    server_url: str | None = None
    # port of the server the job starts (on 127.0.0.1)
    server_port: int = 8000
    # seconds to wait for a server's /health before giving up
    server_timeout: float = 600.0
    # port of the NCCL group that pushes trained weights into the server
    group_port: int = 51216

    def __post_init__(self) -> None:
        _one_of(self.name, ROLLOUT_BACKENDS, "rollout.name")
        _require(
            0.0 < self.gpu_memory_utilization <= 1.0,
            "rollout.gpu_memory_utilization",
            f"{self.gpu_memory_utilization} is outside (0, 1]",
            "a share of GPU memory, e.g. rollout.gpu_memory_utilization=0.3",
        )
        _require(
            self.tensor_parallel_size >= 1,
            "rollout.tensor_parallel_size",
            "must be >= 1",
            "rollout.tensor_parallel_size=1",
        )
        _require(self.server_timeout > 0, "rollout.server_timeout", "must be > 0", "e.g. 600")
        _require(self.batch_size >= 1, "rollout.batch_size", "must be >= 1", "e.g. 64")


@dataclass
class TrackingConfig:
    # MLflow tracking URI; None: $MLFLOW_TRACKING_URI, else sqlite mlflow.db in the repo root
    tracking_uri: str | None = None
    # MLflow experiment (defaults to the experiment config's name)
    experiment_name: str = "default"
    # run name shown in the MLflow UI (None: generated from the config)
    run_name: str | None = None
    # parent run of a sweep; set by the sweep callback, None for a single job
    parent_run_id: str | None = None


@dataclass
class CalibrationCpuScale:
    # most held-out questions scored on CPU
    eval_questions: int
    # most tokens per sampled answer on CPU
    max_new_tokens: int


CALIBRATION_METHODS = ("platt",)


@dataclass
class CalibrationConfig:
    # calibration method (platt: logistic regression of greedy correctness on the entropy)
    name: str = "platt"
    # answers sampled per question for its entropy (K)
    num_samples: int = 8
    # sampling temperature of those answers
    temperature: float = 1.0
    # most tokens per sampled answer
    max_new_tokens: int = 48
    # questions per generate call, each generating num_samples answers
    batch_size: int = 8
    # held-out questions scored to judge the calibrated score (at most the eval split)
    eval_questions: int = 200
    # equal-width bins of the held-out ECE
    ece_bins: int = 10
    # where the score cache lives (None: $ENTROPIC_CACHE/scores)
    cache_dir: str | None = None
    # caps applied on CPU (None: never scale)
    cpu_scale: CalibrationCpuScale | None = None

    def __post_init__(self) -> None:
        if isinstance(self.cpu_scale, dict):
            self.cpu_scale = CalibrationCpuScale(**self.cpu_scale)
        _require(
            self.name in CALIBRATION_METHODS,
            "calibration.name",
            f"unknown method {self.name!r}",
            "use platt",
        )
        _require(
            self.num_samples >= 2,
            "calibration.num_samples",
            f"{self.num_samples} < 2: the entropy of one answer is always 0",
            "calibration.num_samples=8",
        )
        for key in ("max_new_tokens", "batch_size", "eval_questions", "ece_bins"):
            value = getattr(self, key)
            _require(value >= 1, f"calibration.{key}", f"{value} must be >= 1", "see conf/")
        _require(self.temperature > 0, "calibration.temperature", "must be > 0", "e.g. 1.0")


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


# The jobs (job: <name>): the names of entropic.jobs.JOBS (tests/test_configs.py holds the two to
# the same names), kept here so that a typo is refused before torch loads
JOB_NAMES = ("train", "stability_study")


@dataclass
class RunConfig:
    model: ModelConfig
    data: DataConfig
    prompt: PromptConfig
    reward: RewardConfig
    semantic: SemanticConfig
    trainer: TrainerConfig
    eval: EvalConfig
    compute: ComputeConfig
    tracking: TrackingConfig
    # who generates the rollouts (hf, prefix_cache, or vLLM on GPUs)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    # engine of evaluation answers and sampled answers (hf or prefix_cache)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # what GRPO trains: LoRA adapters (the default, as the reference) or every weight
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    # the entropy -> Platt targets of reward.name=calibrated (None: not configured)
    calibration: CalibrationConfig | None = None
    # what the stability_study job measures (None: not configured)
    study: StudyConfig | None = None
    # global seed: data subset, labeled subset, sampling, initialisation
    seed: int = 0
    # False: evaluate only (baselines such as the calibration prompt), no GRPO
    train: bool = True
    # which job entropic.jobs.JOBS runs: train (the default) or a study
    job: str = "train"
    # free-form tags recorded on the MLflow run
    tags: dict[str, str] = field(default_factory=dict)
    # where Hydra put this job's outputs
    output_dir: str = "outputs"

    def __post_init__(self) -> None:
        # The checks across sections, each section's own having run. Every one is cheap; TRL's
        # comes last because it imports torch (~15 s on a 2-core machine), so a value any other
        # check refuses exits in about two seconds.
        _one_of(self.job, JOB_NAMES, "job")
        _require(
            self.job != "stability_study" or self.study is not None,
            "study",
            "no study is configured",
            "run +experiment=stability_study (or add study=stability)",
        )
        check_reward_parameters(self.reward)
        if self.reward.needs_target:
            check_calibration_pipeline(self)
        check_readout(self)
        check_with_trl(self.trainer)

    @classmethod
    def from_hydra(cls, cfg: DictConfig) -> RunConfig:
        """Validate a composed config; raises ConfigError on the first bad key."""
        missing = sorted(OmegaConf.missing_keys(cfg))
        _require(not missing, ", ".join(missing), "is required (???)", "set it on the command line")
        raw = OmegaConf.to_container(cfg, resolve=True)
        sections: dict[str, Any] = {}
        # the adapter first: trainer.learning_rate defaults to adapter.learning_rate, so a bad
        # rate is reported under the key the user set
        for f in sorted(dataclasses.fields(cls), key=lambda f: f.name != "adapter"):
            if f.name not in raw:
                continue
            if raw[f.name] is None and f.default is None:
                # an optional section switched off (calibration: null, study: null)
                continue
            section_type = _SECTION_TYPES.get(f.name)
            sections[f.name] = (
                _build(section_type, raw[f.name], f.name) if section_type else raw[f.name]
            )
        return cls(**sections)


def check_calibration_pipeline(config: RunConfig) -> None:
    """The keys the entropy -> Platt targets (entropic.calibration) depend on, for a reward that
    needs them (RewardConfig.needs_target)."""
    _require(
        config.calibration is not None,
        "calibration",
        f"reward.name={config.reward.name} needs calibrated targets, and no calibration "
        "method is configured",
        "run +experiment=entropy_platt (or add calibration=platt)",
    )
    _require(
        config.reward.labeled_fraction > 0,
        "reward.labeled_fraction",
        "0 leaves no labeled question to fit Platt scaling on",
        "e.g. reward.labeled_fraction=0.5",
    )
    # a rank that accelerate launched counts too (WORLD_SIZE), whatever compute.num_processes says
    processes = max(config.compute.num_processes, int(os.environ.get("WORLD_SIZE", "1")))
    _require(
        processes == 1,
        "compute.num_processes",
        f"the entropy -> Platt targets are computed in one process, not {processes}",
        "launch without accelerate/torchrun, with compute=single_gpu or compute=cpu",
    )


def check_readout(config: RunConfig) -> None:
    """Refuse what cannot carry the read-out's gate (adapter.centre, entropic.readout)."""
    if config.adapter.centre is None or not config.train:
        return
    _require(
        not config.rollout.name.startswith("vllm"),
        "adapter.centre",
        f"rollout={config.rollout.name} generates from the adapter merged into the base weights, "
        "and a merge cannot hold the read-out's gate",
        "rollout=hf (or prefix_cache) with adapter=readout",
    )
    _require(
        zero_stage(config.compute) != 3,
        "adapter.centre",
        "ZeRO-3 shards the read-out's layer across ranks",
        "compute=multi_gpu (or zero2) with adapter=readout",
    )
    _require(
        not config.adapter.centre.after_one or config.trainer.loss_tokens == "number",
        "adapter.centre.after_one",
        f"trainer.loss_tokens={config.trainer.loss_tokens} leaves the tokens after a first 1 "
        "out of the loss, so their gates would learn nothing",
        "trainer.loss_tokens=number with adapter.centre.after_one=true",
    )


def _build(section_type: type, values: dict[str, Any], key: str) -> Any:
    """Build one section; keys the dataclass does not know go to its `options` when it has one."""
    names = {f.name for f in dataclasses.fields(section_type)}
    # every float of every section, nested ones too: nan and inf are never a setting
    _require_finite(values, key)
    known = {k: v for k, v in values.items() if k in names}
    extra = {k: v for k, v in values.items() if k not in names}
    if extra and "options" in names:
        known["options"] = {**extra, **known.get("options", {})}
    elif extra:
        raise ConfigError(
            f"{key}: unknown keys {sorted(extra)}. Fix: remove them or use one of {sorted(names)}"
        )
    try:
        return section_type(**known)
    except TypeError as err:
        raise ConfigError(f"{key}: {err}. Fix: see conf/{key}/") from err


_SECTION_TYPES: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "prompt": PromptConfig,
    "reward": RewardConfig,
    "semantic": SemanticConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "compute": ComputeConfig,
    "tracking": TrackingConfig,
    "rollout": RolloutConfig,
    "generation": GenerationConfig,
    "adapter": AdapterConfig,
    "calibration": CalibrationConfig,
    "study": StudyConfig,
}
