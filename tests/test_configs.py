"""Every experiment composes and validates; bad input is rejected early with the key and the fix."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from entropic import models
from entropic.compute import dotted
from entropic.config import _SECTION_TYPES, JOB_NAMES, ConfigError, RunConfig
from entropic.jobs import JOBS
from entropic.jobs.context import prepare
from entropic.tracking import flatten
from entropic.training import build_grpo_config
from tests.conftest import CONF_DIR, compose_config

EXPERIMENTS = sorted(
    p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")
)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose_config([f"+experiment={experiment}"])
    # why: the reward reads every reward parameter the experiment sets (RunConfig refuses one it
    # does not read)
    config = RunConfig.from_hydra(cfg)
    # why: the MLflow experiment is named after the experiment config
    assert config.tracking.experiment_name == experiment


@pytest.mark.parametrize(
    ("experiment", "train_size", "labeled_fraction", "epochs"),
    [
        ("scarce_brier_1ep", 1600, 1.0, 1),  # Run A
        ("scarce_brier_2ep", 1600, 1.0, 2),  # Run B
        ("scarce_mixed", 1600, 0.5, 2),  # Run C
        ("abundant_brier", 5000, 1.0, 1),
        ("abundant_mixed", 5000, 0.5, 1),
        ("abundant_stability", 5000, 0.0, 1),
    ],
)
def test_reference_runs_have_the_reference_settings(
    experiment, train_size, labeled_fraction, epochs
):
    config = RunConfig.from_hydra(compose_config([f"+experiment={experiment}"]))
    assert config.data.train_size == train_size
    assert config.reward.labeled_fraction == labeled_fraction
    assert config.trainer.epochs == epochs


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("reward.labeled_fraction=1.5", "reward.labeled_fraction"),  # a share above 1
        ("reward.labeled_fraction=-0.1", "reward.labeled_fraction"),  # a negative share
        ("trainer.num_generations=1", "trainer.num_generations"),  # no group to compare
        ("trainer.per_device_train_batch_size=10", "trainer.per_device_train_batch_size"),  # 10 % 8
        ("trainer.epochs=0", "trainer.epochs"),  # nothing to train
        ("trainer.epochs=-1", "trainer.epochs"),
        ("compute.device=tpu", "compute.device"),
        ("adapter.rank=0", "adapter.rank"),  # a rank-0 adapter has no weights
        ("adapter.rank=-4", "adapter.rank"),
        ("adapter.alpha=0", "adapter.alpha"),  # alpha / rank = 0 scales every update away
        ("adapter.dropout=1.0", "adapter.dropout"),  # drops the whole adapter input
        ("adapter.target_modules=[]", "adapter.target_modules"),  # adapters on nothing
        ("adapter.top_layers=0", "adapter.top_layers"),  # adapters on no layer
        ("reward.format_penalty=nan", "reward.format_penalty"),  # NaN rewards poison advantages
        ("trainer.learning_rate=inf", "trainer.learning_rate"),  # inf passes `> 0`, not finite
        ("trainer.adam_beta2=1.0", "trainer.adam_beta2"),  # the second moment would never move
        ("trainer.loss_tokens=answers", "trainer.loss_tokens"),  # only all | confidence
        ("+trainer.grpo.not_a_field=1", "trainer.grpo"),  # a typo TRL would only hit later
        ("+trainer.grpo.seed=3", "trainer.grpo"),  # entropic sets the seed from `seed`
        ("+trainer.grpo.vllm_mode=server", "trainer.grpo"),  # the rollout group's business
        ("+trainer.grpo.warmup_steps=3", "trainer.grpo"),  # set from trainer.warmup_ratio
        # every float key of every section rejects nan and inf, not only the ones listed above
        ("eval.batch_size=nan", "eval.batch_size"),  # a float where an int belongs, and nan
        ("trainer.temperature=inf", "trainer.temperature"),  # passes `> 0`
        ("reward.log_score_floor=nan", "reward.log_score_floor"),
        ("+trainer.grpo.top_p=nan", "trainer.grpo.top_p"),  # a pass-through key, TRL checks no nan
        ("generation.name=vllm", "generation.name"),  # a typo lists the engines
        ("compute.cpu_scale.train_mix=kinds", "compute.cpu_scale.train_mix"),  # pool | by_kind
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, key):
    cfg = compose_config([override])
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(cfg)
    assert key in str(err.value) and "Fix:" in str(err.value)


# (overrides, the key the message starts with, why): names and values the typed config refuses
# itself, before torch is imported (test_cheap_rejections_come_before_torch_is_imported checks
# that in a fresh process)
BEFORE_TORCH = [
    (["reward.name=brierr"], "reward.name", "a typo lists the rewards"),
    (["reward=brier", "reward.labeled_fraction=0.5"], "reward.labeled_fraction",
     "a mix the chosen reward would ignore"),
    (["data.name=geoo"], "data.name", "a typo lists the sources"),
    (["+eval.sets.chem={source: chemistry, size: 5}"], "eval.sets.chem.source",
     "a set's source is one of the same sources"),
    (["+eval.sets.accuracy={source: elements, size: 5}"], "eval.sets.accuracy",
     "eval/accuracy/... would read as the held-out split's accuracy"),
    (["semantic.method=fuzzy"], "semantic.method", "a typo lists the clusterers"),
    (["job=stability_studdy"], "job", "a typo lists the jobs"),
    (["job=stability_study"], "study", "the study job without the study's settings"),
    (["reward.name=calibrated"], "calibration", "calibrated targets without the pipeline"),
    (["+experiment=entropy_platt", "reward.labeled_fraction=0"], "reward.labeled_fraction",
     "no labeled question to fit Platt scaling on"),
    (["+experiment=entropy_platt", "compute.num_processes=2"], "compute.num_processes",
     "the targets are made in one process"),
    (["+experiment=entropy_platt", "calibration.name=isotonic"], "calibration.name",
     "platt is the one method"),
    (["adapter=readout", "rollout=vllm_colocate"], "adapter.centre",
     "vLLM merges the adapter, and a merge cannot hold the read-out's gate"),
    (["adapter=readout", "compute=zero3"], "adapter.centre", "ZeRO-3 shards the gated layer"),
    (["adapter=readout", "adapter.centre.radius=0"], "adapter.centre.radius",
     "a gate that never opens"),
    (["adapter=readout", "adapter.centre.temperature=0"], "adapter.centre.temperature",
     "logits divided by zero"),
    (["adapter=readout", "adapter.centre.shift_rate=-1"], "adapter.centre.shift_rate",
     "a shift that moves against its gradient"),
    (["+trainer.grpo.seed=3"], "trainer.grpo.seed", "entropic sets the seed from `seed`"),
    (["compute.device=tpu"], "compute.device", "a section built after the trainer's"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "key"), [case[:2] for case in BEFORE_TORCH], ids=[c[2] for c in BEFORE_TORCH]
)
def test_cheap_rejections_name_the_key_and_the_fix(overrides, key):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(compose_config(overrides))
    message = str(err.value)
    assert message.startswith(f"{key}:") and "Fix:" in message, message


# Composes each case of BEFORE_TORCH as the CLI does and validates it; prints, for each, what
# refused it and whether torch had been imported by then.
VALIDATE_EACH = """
import json, sys
from hydra import compose, initialize_config_dir
from entropic.config import ConfigError, RunConfig

conf, output_dir, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
seen = []
with initialize_config_dir(config_dir=conf, version_base="1.3"):
    for overrides in cases:
        cfg = compose(config_name="config", overrides=[*overrides, f"output_dir={output_dir}"])
        try:
            RunConfig.from_hydra(cfg)
            refused = None
        except ConfigError as err:
            refused = str(err)
        seen.append({"overrides": overrides, "refused": refused, "torch": "torch" in sys.modules})
print(json.dumps(seen))
"""


def test_cheap_rejections_come_before_torch_is_imported(tmp_path):
    # why: importing torch, transformers and accelerate takes 16-26 s on a 2-core machine; a
    # mistyped name must exit in seconds. One fresh process validates every case in turn (torch,
    # once imported, stays imported, so each case is checked before the next). A valid config
    # is left out: TRL's check would import torch, 12 s of this suite's budget.
    cases = [overrides for overrides, _, _ in BEFORE_TORCH]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    done = subprocess.run(
        [sys.executable, "-c", VALIDATE_EACH, CONF_DIR, str(tmp_path), json.dumps(cases)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(done.stdout)
    late = [case["overrides"] for case in seen if case["torch"] or not case["refused"]]
    assert late == [], seen


def test_the_config_knows_every_job_by_the_registrys_names():
    # why: `job` is checked against the torch-free JOB_NAMES; a job added to JOBS alone would be
    # refused there
    assert tuple(JOBS) == JOB_NAMES


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data=jsonl", "data.path=/nonexistent/questions.jsonl"], "data.path"),
        (["model=local", "model.path=/nonexistent/ckpt"], "model.path"),
    ],
)
def test_prepare_rejects_missing_files(overrides, expected, tmp_path):
    with pytest.raises(ConfigError) as err:
        prepare(compose_config(overrides, tmp_path))
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "accepted"),
    [
        (["reward=brier", "reward.labeled_fraction=0.5"], False),  # would run as pure Brier
        (["reward=stability", "reward.labeled_fraction=0.5"], False),  # as pure stability
        (["reward=rlcr", "reward.labeled_fraction=0.25"], False),
        (["reward=brier"], True),  # the group's own 1.0
        (["reward=stability"], True),  # the group's own 0.0
        (["reward=mixed", "reward.labeled_fraction=0.25"], True),  # mixed reads the mix
    ],
)
def test_a_label_mix_the_reward_ignores_is_rejected(overrides, accepted, tmp_path):
    cfg = compose_config(overrides, tmp_path)
    if accepted:
        prepare(cfg)
        return
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    # why: the message names the key and the reward that reads it
    assert "reward.labeled_fraction" in str(err.value) and "reward=mixed" in str(err.value)


def test_a_loader_bug_is_not_reported_as_bad_input(tmp_path, monkeypatch):
    # why: only rejected input exits 2 without a traceback; a bug (here: a loader whose eval
    # questions leak into training, which data/__init__.py raises as RuntimeError) must keep its
    # type and traceback so the run ends FAILED, not "bad config"
    import entropic.jobs.context

    def leaking_loader(*args, **kwargs):
        raise RuntimeError("data=geo: train and eval share question_ids ['q1']")

    monkeypatch.setattr(entropic.jobs.context, "load_questions", leaking_loader)
    with pytest.raises(RuntimeError) as err:
        prepare(compose_config([], tmp_path))
    assert not isinstance(err.value, ConfigError)


def test_a_value_error_outside_the_input_checks_is_a_bug_too(tmp_path, monkeypatch):
    # why: ValueError is what the input checks and the data sources raise for bad input, but
    # code past them (here the labeled mask) that raises one has a bug: it must not exit 2
    import entropic.jobs.context

    def broken_mask(*args, **kwargs):
        raise ValueError("a bug in the labeled mask")

    monkeypatch.setattr(entropic.jobs.context, "mark_labeled", broken_mask)
    with pytest.raises(ValueError, match="a bug in the labeled mask") as err:
        prepare(compose_config([], tmp_path))
    assert not isinstance(err.value, ConfigError)


def test_model_local_path_is_required():
    with pytest.raises(ConfigError, match="model.path"):
        RunConfig.from_hydra(compose_config(["model=local"]))


def test_cpu_profile_scales_down_but_keeps_the_pool(tmp_path):
    prepared = prepare(compose_config(["+experiment=scarce_mixed", "compute=cpu"], tmp_path))
    scale = prepared.config.compute.cpu_scale
    assert len(prepared.train) == scale.train_questions
    assert len(prepared.splits.train) == 1600  # the subset is drawn from the experiment's pool
    assert len(prepared.splits.eval) >= 200
    assert (
        prepared.config.trainer.per_device_train_batch_size
        % prepared.config.trainer.num_generations
        == 0
    )
    # why: the labeled subset is a seeded share of the questions actually trained on
    assert sum(prepared.train["labeled"]) == round(0.5 * scale.train_questions)


# The demo's caps on a CPU (conf/compute/cpu.yaml) against Run C's config: (requested, used).
CPU_CAPS = {
    "trainer.num_generations": (8, 4),
    "trainer.max_completion_length": (48, 32),
    "trainer.per_device_train_batch_size": (32, 16),
    "trainer.temperature": (1.0, 0.7),
    "data.eval_size": (500, 200),
    # the out-of-domain sets (eval.sets) at compute.cpu_scale.set_questions
    "eval.sets.elements.size": (300, 100),
    "eval.sets.arithmetic.size": (300, 100),
    # the prefix-cached engine for every evaluation on CPU, and for the GRPO rollouts
    "generation.name": ("hf", "prefix_cache"),
    "rollout.name": ("hf", "prefix_cache"),
}


@pytest.mark.parametrize(
    ("overrides", "changed"),
    [
        # why: the demo on a CPU: each value the caps change is logged as used, and as requested
        (["+experiment=scarce_mixed", "compute=cpu"], CPU_CAPS),
        # why: a batch under its cap still shrinks to whole groups of a capped G: 32 -> 30 ran
        (
            ["+experiment=scarce_mixed", "compute=cpu", "compute.cpu_scale.num_generations=6"]
            + ["compute.cpu_scale.per_device_train_batch_size=64"],
            {
                **CPU_CAPS,
                "trainer.num_generations": (8, 6),
                "trainer.per_device_train_batch_size": (32, 30),
            },
        ),
        # why: the entropy -> Platt targets have caps of their own, which also change what ran
        (
            ["+experiment=entropy_platt", "compute=cpu"],
            {**CPU_CAPS, "calibration.eval_questions": (200, 100)}
            | {"calibration.max_new_tokens": (48, 32)},
        ),
        # why: a value already under its cap is not a change; no cpu_scale changes nothing
        (["+experiment=scarce_mixed", "compute=cpu", "compute.cpu_scale=null"], {}),
        # why: rollout=prefix_cache asked for is no change; null keeps transformers' generate
        (
            ["+experiment=scarce_mixed", "compute=cpu", "compute.cpu_scale.rollout=null"],
            {key: pair for key, pair in CPU_CAPS.items() if key != "rollout.name"},
        ),
    ],
)
def test_prepare_reports_each_value_the_cpu_caps_change(overrides, changed, tmp_path):
    prepared = prepare(compose_config(overrides, tmp_path))
    assert prepared.changed == changed
    for key, (_, used) in changed.items():
        if key.split(".")[0] in ("trainer", "data", "eval", "generation", "rollout"):
            # why: the params log these values as what ran; the run must have run with them
            assert dotted(prepared.config, key) == used


@pytest.mark.parametrize(
    "override",
    [
        "adapter.learning_rate=0",
        "adapter.learning_rate=nan",
    ],
)
def test_a_bad_adapter_learning_rate_names_the_adapter_key(override):
    # why: the user set adapter.learning_rate; trainer.learning_rate only follows it
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(compose_config([override]))
    assert "adapter.learning_rate" in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_with_full_fine_tuning(experiment):
    config = RunConfig.from_hydra(compose_config([f"+experiment={experiment}", "adapter=full"]))
    assert config.adapter.name == "full"


def adapter_yaml(name: str):
    return OmegaConf.load(f"{CONF_DIR}/adapter/{name}.yaml")


LEARNING_RATE_CASES = [
    # (overrides, adapter, expected trainer.learning_rate, why)
    ([], "lora", adapter_yaml("lora").learning_rate, "LoRA is the default, with its own rate"),
    (["adapter=full"], "full", adapter_yaml("full").learning_rate, "full brings its own rate"),
    (["adapter.learning_rate=3e-3"], "lora", 3e-3, "the trainer follows the adapter's rate"),
    (["trainer.learning_rate=3e-3"], "lora", 3e-3, "one override away from the adapter's"),
]


@pytest.mark.parametrize(
    ("overrides", "adapter", "learning_rate"),
    [case[:3] for case in LEARNING_RATE_CASES],
    ids=[case[3] for case in LEARNING_RATE_CASES],
)
def test_the_learning_rate_follows_the_adapter(overrides, adapter, learning_rate):
    config = RunConfig.from_hydra(compose_config(overrides))
    assert config.adapter.name == adapter
    assert config.trainer.learning_rate == learning_rate


def test_trainer_grpo_reaches_grpo_config(tmp_path):
    config = RunConfig.from_hydra(compose_config(["+trainer.grpo.max_grad_norm=0.5"]))
    args = build_grpo_config(config, str(tmp_path), "cpu", torch.float32)
    assert args.max_grad_norm == 0.5


# The GRPOConfig the default config builds, field by field: conf/trainer/grpo.yaml's values under
# TRL's names, and TRL's own defaults for the fields the trainer group no longer repeats (they
# held exactly these values before they became pass-through fields).
DEFAULT_GRPO_ARGUMENTS = {
    "num_train_epochs": 1,  # trainer.epochs
    "num_generations": 8,
    "learning_rate": 1e-4,  # the LoRA adapter's rate
    "beta": 0.0,
    "temperature": 1.0,
    "max_completion_length": 48,
    "per_device_train_batch_size": 32,
    "max_steps": -1,
    "logging_steps": 1,
    "save_strategy": "steps",  # trainer.save_steps=50
    "save_steps": 50,
    "scale_rewards": "none",
    "adam_beta1": 0.9,
    "adam_beta2": 0.95,
    "lr_scheduler_type": "constant",
    "warmup_steps": 0.0,  # trainer.warmup_ratio
    "gradient_checkpointing": False,
    # TRL's defaults, once copied into our config by hand
    "top_p": 1.0,
    "loss_type": "dapo",
    "gradient_accumulation_steps": 1,
}


def test_the_default_trainer_group_builds_the_same_grpo_config(tmp_path):
    config = RunConfig.from_hydra(compose_config([]))
    args = build_grpo_config(config, str(tmp_path), "cpu", torch.float32)
    got = {key: getattr(args, key) for key in DEFAULT_GRPO_ARGUMENTS}
    # TrainingArguments turns the enum-valued fields into enums
    got = {key: getattr(value, "value", value) for key, value in got.items()}
    assert got == DEFAULT_GRPO_ARGUMENTS


def test_save_steps_zero_writes_no_checkpoint(tmp_path):
    # why: the one meaning of 0, in config.py and conf/trainer/grpo.yaml alike: saving is off
    config = RunConfig.from_hydra(compose_config(["trainer.save_steps=0"]))
    args = build_grpo_config(config, str(tmp_path), "cpu", torch.float32)
    assert getattr(args.save_strategy, "value", args.save_strategy) == "no"


def test_pass_through_fields_reach_grpo_config_and_the_params(tmp_path):
    overrides = ["+trainer.grpo.top_p=0.9", "+trainer.grpo.mask_truncated_completions=true"]
    cfg = compose_config(overrides)
    args = build_grpo_config(RunConfig.from_hydra(cfg), str(tmp_path), "cpu", torch.float32)
    assert (args.top_p, args.mask_truncated_completions) == (0.9, True)
    # why: MLflow's params are the composed config flattened: the values that ran, by their key
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    assert params["trainer.grpo.top_p"] == "0.9"
    assert params["trainer.grpo.mask_truncated_completions"] == "True"


PASS_THROUGH_CASES = [
    # (override, the key named, a part of the fix, why)
    ("+trainer.grpo.top_pp=0.9", "trainer.grpo.top_pp", "trainer.grpo.top_p", "a typo"),
    (
        "+trainer.grpo.adam_beta2=0.9",
        "trainer.grpo.adam_beta2",
        "set trainer.adam_beta2=0.9",
        "a key we own cannot be set twice",
    ),
    (
        "+trainer.grpo.num_train_epochs=2",
        "trainer.grpo.num_train_epochs",
        "set trainer.epochs=2",
        "TRL's name for a key we own under another name",
    ),
    ("+trainer.grpo.data_seed=3", "trainer.grpo.data_seed", "seed", "the global seed sets it"),
    (
        "+trainer.grpo.mask_truncated_completions=yes",
        "trainer.grpo.mask_truncated_completions",
        "mask_truncated_completions=true",
        "TRL's __post_init__ would take the string 'yes' as is",
    ),
    (
        "+trainer.grpo.generation_batch_size=12",
        "trainer.grpo.generation_batch_size",
        "TRL names",
        "refused by TRL's own __post_init__: 12 is no multiple of the global batch of 32",
    ),
    (
        "trainer.lr_scheduler_type=nope",
        "trainer.lr_scheduler_type",
        "TRL names",
        "a key of ours whose value only TRL knows to check",
    ),
]


@pytest.mark.parametrize(
    ("override", "key", "fix"),
    [case[:3] for case in PASS_THROUGH_CASES],
    ids=[case[3] for case in PASS_THROUGH_CASES],
)
def test_trl_judges_the_trainer_group_before_any_model_loads(override, key, fix):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(compose_config([override]))
    message = str(err.value)
    assert message.startswith(f"{key}:"), message
    assert fix in message.split("Fix:")[1], message


FLOAT_CASES = [
    # (override, the key named): one or two per section, typed float or not, nested or not
    ("reward.format_penalty=nan", "reward.format_penalty"),
    ("reward.labeled_fraction=inf", "reward.labeled_fraction"),
    ("trainer.beta=-inf", "trainer.beta"),
    ("trainer.warmup_ratio=nan", "trainer.warmup_ratio"),
    ("adapter.alpha=inf", "adapter.alpha"),
    ("adapter.dropout=nan", "adapter.dropout"),
    ("+rollout.server_timeout=inf", "rollout.server_timeout"),  # a key hf.yaml leaves out
    ("+semantic.threshold=nan", "semantic.threshold"),  # a clusterer option
    ("compute.cpu_scale.temperature=nan", "compute.cpu_scale.temperature"),  # nested section
    ("+trainer.grpo.max_grad_norm=inf", "trainer.grpo.max_grad_norm"),  # a pass-through field
    ("+data.noise=nan", "data.noise"),  # a loader option
    ("eval.max_new_tokens=inf", "eval.max_new_tokens"),  # an int key given a float
]


@pytest.mark.parametrize(("override", "key"), FLOAT_CASES)
def test_every_float_key_refuses_nan_and_infinity(override, key):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(compose_config([override]))
    assert str(err.value).startswith(f"{key}: ") and "not a finite number" in str(err.value)


TARGET_MODULE_CASES = [
    # (target_modules override, accepted, why)
    ("[q_proj,nonexistent_proj]", False, "a module the Llama does not have"),
    ("[q_proj,v_proj]", True, "the attention projections the original LoRA paper adapted"),
    ("[gate_proj,up_proj,down_proj]", True, "the MLP projections"),
]


@pytest.mark.parametrize(
    ("target_modules", "accepted"),
    [case[:2] for case in TARGET_MODULE_CASES],
    ids=[case[2] for case in TARGET_MODULE_CASES],
)
def test_prepare_checks_lora_target_modules(
    target_modules, accepted, tmp_path, embedded_checkpoint
):
    cfg = compose_config(
        ["model=tiny_random", f"adapter.target_modules={target_modules}"], tmp_path
    )
    if accepted:
        assert prepare(cfg).config.adapter.target_modules == target_modules[1:-1].split(",")
        return
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert "adapter.target_modules" in str(err.value) and "nonexistent_proj" in str(err.value)
    assert "Fix:" in str(err.value)


@pytest.fixture
def weightless_checkpoint(tmp_path, embedded_checkpoint) -> str:
    """The tiny model's config.json and nothing else: any weight load from it fails."""
    tiny = models.resolve_checkpoint(
        RunConfig.from_hydra(compose_config(["model=tiny_random"])).model
    )
    folder = tmp_path / "weightless"
    folder.mkdir()
    shutil.copy(f"{tiny}/config.json", folder / "config.json")
    return str(folder)


@pytest.mark.parametrize(
    ("target_modules", "accepted"),
    [("[q_proj,nonexistent_proj]", False), ("[q_proj,v_proj]", True)],
)
def test_the_target_module_check_loads_no_weights(
    target_modules, accepted, weightless_checkpoint, tmp_path
):
    # why: the check builds the architecture from config.json on the meta device, so it runs
    # (and decides) on a checkpoint that has no weights at all
    overrides = [
        "model=local",
        f"model.path={weightless_checkpoint}",
        f"adapter.target_modules={target_modules}",
    ]
    cfg = compose_config(overrides, tmp_path)
    if accepted:
        prepare(cfg)
        return
    with pytest.raises(ConfigError, match="adapter.target_modules"):
        prepare(cfg)


@pytest.mark.parametrize("target_modules", ["[q_proj,lm_head]", "lm_h.*"])
def test_an_adapter_on_the_output_head_is_rejected_before_any_weights_load(
    target_modules, weightless_checkpoint, tmp_path
):
    # why: TRL 1.16 refuses a LoRA on lm_head (it multiplies the head's weight directly), but
    # only after the model and the base evaluation have run; the check says so from config.json
    overrides = [
        "model=local",
        f"model.path={weightless_checkpoint}",
        f"adapter.target_modules={target_modules}",
    ]
    with pytest.raises(ConfigError, match="output head") as err:
        prepare(compose_config(overrides, tmp_path))
    assert "Fix:" in str(err.value)


def test_prepare_accepts_a_dotted_module_name(tmp_path, embedded_checkpoint):
    # why: peft matches a target to any module whose name ends with ".<target>", so
    # self_attn.q_proj adapts q_proj in every layer (the tiny model takes it: 512 weights at r=2)
    overrides = ["model=tiny_random", "adapter.target_modules=[self_attn.q_proj]"]
    prepare(compose_config(overrides, tmp_path))


def test_a_single_module_name_string_is_rejected_early(tmp_path, embedded_checkpoint):
    with pytest.raises(ConfigError, match="adapter.target_modules"):
        prepare(compose_config(["model=tiny_random", "adapter.target_modules=q_proj"], tmp_path))


# --- evaluation sets (eval.sets) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "why"),
    [
        ("eval.sets.elements.size=0", "eval.sets.elements.size", "a set of no questions"),
        ("eval.sets.elements.size=many", "eval.sets.elements.size", "a size that is no count"),
        ("eval.sets.elements.periodic=often", "eval.sets.elements.periodic", "not a switch"),
        ("+eval.sets.mine={size: 5}", "eval.sets.mine.source", "a set needs a source"),
        ("+eval.sets.mine={source: geo}", "eval.sets.mine.size", "and a size"),
        ("+eval.sets.Chem={source: elements, size: 5}", "eval.sets.Chem", "a metric prefix"),
        ("+eval.sets.my-set={source: elements, size: 5}", "eval.sets.my-set", "no dashes"),
        ("+eval.sets.held_out={source: elements, size: 5}", "eval.sets.held_out",
         "the held-out split's own name in reports and summaries"),
        ("+eval.sets.behaviour={source: elements, size: 5}", "eval.sets.behaviour",
         "the behaviour table's title among the summary tables"),
    ],
)  # fmt: skip
def test_bad_eval_sets_name_the_key_and_the_fix(override, key, why):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_hydra(compose_config([override]))
    assert key in str(err.value) and "Fix:" in str(err.value)


def small_jsonl(tmp_path, count: int) -> str:
    path = tmp_path / "mine.jsonl"
    lines = [f'{{"question": "What is {n} + {n}?", "answers": ["{2 * n}"]}}' for n in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.mark.parametrize(
    ("overrides", "expected", "why"),
    [
        (
            ["+eval.sets.mine={source: jsonl, path: /nonexistent/q.jsonl, size: 5}"],
            "eval.sets.mine.path=/nonexistent/q.jsonl does not exist",
            "a missing file names the set's path key",
        ),
        (
            ["+eval.sets.caps={source: geo, size: 5, kinds: {capital: 0}}"],
            "switches every geo question kind off",
            "a set empty after its options filter everything out",
        ),
        (
            ["eval.sets.elements.size=600", "compute.cpu_scale.set_questions=null"],
            "eval.sets.elements.size=600",
            "more questions than the source holds: the set's own size key",
        ),
        (
            ["+eval.sets.tq={source: triviaqa, size: 5}"],
            "HF_HUB_OFFLINE=1 is set; run with eval.sets.tq.source=geo",
            "a hub source offline (the suite sets HF_HUB_OFFLINE=1) fails before any download",
        ),
    ],
)
def test_prepare_rejects_bad_eval_sets_before_any_model(overrides, expected, why, tmp_path):
    with pytest.raises(ConfigError) as err:
        prepare(compose_config(overrides, tmp_path))
    assert expected in str(err.value)


def test_a_set_that_overlaps_the_training_questions_is_rejected(tmp_path):
    # why: a set that shares questions with training measures memory, not transfer. The run
    # trains on all 5 pool questions of a 10-line file; a set of 8 of the 10 must share some.
    path = small_jsonl(tmp_path, 10)
    overrides = [
        "data=jsonl",
        f"data.path={path}",
        "data.train_size=5",
        "data.eval_size=2",
        "compute=cpu",
        f"+eval.sets.same={{source: jsonl, path: {path}, size: 8, split_seed: 1}}",
    ]
    with pytest.raises(ConfigError, match=r"eval.sets.same: \d of its 8 questions are in the"):
        prepare(compose_config(overrides, tmp_path))


def test_default_sets_are_loaded_and_capped_on_cpu(tmp_path):
    prepared = prepare(compose_config(["+experiment=scarce_mixed", "compute=cpu"], tmp_path))
    cap = prepared.config.compute.cpu_scale.set_questions
    # why: the embedded default measures transfer on two offline sets outside geography
    assert list(prepared.sets) == ["elements", "arithmetic"]
    assert [len(questions) for questions in prepared.sets.values()] == [cap, cap]
    # why: what was capped is logged, as every CPU change is
    assert prepared.changed["eval.sets.elements.size"] == (300, cap)
    # why: the held-out split comes first, under the name reports read it by
    assert list(prepared.eval_sets()) == ["held_out", "elements", "arithmetic"]


def test_a_set_switched_off_is_not_loaded(tmp_path):
    prepared = prepare(compose_config(["eval.sets.arithmetic=null", "compute=cpu"], tmp_path))
    assert list(prepared.sets) == ["elements"]


def test_an_eval_only_job_needs_no_training_pool(tmp_path):
    # why: a baseline that never trains can evaluate a file smaller than any training pool
    overrides = [
        "+experiment=prompting_baseline",
        "data=jsonl",
        f"data.path={small_jsonl(tmp_path, 3)}",
        "data.eval_size=3",
        f"+eval.sets.mine={{source: jsonl, path: {small_jsonl(tmp_path, 3)}, size: 3}}",
    ]
    prepared = prepare(compose_config(overrides, tmp_path))
    assert len(prepared.train) == 0 and len(prepared.splits.eval) == 3
    assert len(prepared.sets["mine"]) == 3


def test_the_reasoning_prompt_gets_room_to_reason(tmp_path):
    # why: the CPU profile's 32 tokens would cut the reasoning before its Answer line
    prepared = prepare(compose_config(["prompt=reasoning", "compute=cpu"], tmp_path))
    assert prepared.config.trainer.max_completion_length == 256
    assert prepared.config.eval.max_new_tokens == 256
    # why: logged as the values that ran, beside what the config asked for
    assert prepared.changed["trainer.max_completion_length"] == (48, 256)
    assert prepared.changed["eval.max_new_tokens"] == (48, 256)


# Keys whose dataclass default is not the default group's value, on purpose.
DEFAULT_EXCEPTIONS = {
    # RewardConfig's default is the share of the rules that need every label (brier, rlcr,
    # log_score); the default group, mixed, sets its own 0.5
    "reward.labeled_fraction",
}


def test_dataclass_defaults_say_what_the_default_groups_say():
    # why: a default stated twice drifts (save_steps was 0 in config.py and 50 in the YAML), and
    # a reader of either file should learn the value that runs
    config = OmegaConf.to_container(compose_config([]), resolve=True)
    drifts = []
    for section, section_type in _SECTION_TYPES.items():
        if config.get(section) is None:
            # an optional section the default run leaves out (calibration, study)
            continue
        for f in dataclasses.fields(section_type):
            key = f"{section}.{f.name}"
            if f.name not in config[section] or key in DEFAULT_EXCEPTIONS:
                continue
            # None and empty defaults mean "not given" (a model's id, the few-shot turns)
            default = f.default
            if default is dataclasses.MISSING or default is None:
                continue
            if config[section][f.name] != default:
                drifts.append((key, default, config[section][f.name]))
    assert drifts == []
