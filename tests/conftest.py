"""Shared fixtures: composed configs, a throwaway MLflow store, the embedded model checkpoint, and
the process-wide state every test starts without (a developer's MLflow variables, MLflow's
tracking URI, Hydra's and accelerate's singletons)."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# The suite is offline by contract: nothing may reach for the model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Nor into a developer's own MLflow store or open sweep parent run (sweeps.PARENT_RUN_ENV).
ISOLATED_VARIABLES = ("MLFLOW_TRACKING_URI", "ENTROPIC_PARENT_RUN_ID")
for _name in ISOLATED_VARIABLES:
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def isolated_process_state():
    """Each test leaves no process-wide state behind for the next.

    tracking.get_client calls mlflow.set_tracking_uri, which also exports MLFLOW_TRACKING_URI: a
    later test would find the first one's deleted store there. HydraConfig (set by a sweep test)
    and accelerate's PartialState/AcceleratorState (set by a job or a trainer) are process-wide
    singletons; they are cleared the way accelerate's own tests clear them. A library nobody
    imported holds no state, so it is not imported here just to be reset.
    """
    yield
    if (mlflow := sys.modules.get("mlflow")) is not None:
        mlflow.set_tracking_uri(None)  # None also unsets the exported MLFLOW_TRACKING_URI
    for name in ISOLATED_VARIABLES:
        os.environ.pop(name, None)
    Singleton._instances.pop(HydraConfig, None)
    if (accelerate_state := sys.modules.get("accelerate.state")) is not None:
        accelerate_state.AcceleratorState._reset_state(reset_partial_state=True)
        accelerate_state.GradientState._reset_state()


@functools.cache
def _scratch() -> tempfile.TemporaryDirectory:
    """The session's folder for default output dirs, removed when the process exits."""
    return tempfile.TemporaryDirectory(prefix="entropic-test-")


def compose_config(overrides: list[str], tmp_path: Path | None = None, config_name="config"):
    """Compose conf/ like the CLI does; output_dir is normally filled in by Hydra at run time.
    Without tmp_path each call gets a fresh folder, so no two tests share one."""
    out = f"output_dir={tmp_path or tempfile.mkdtemp(dir=_scratch().name)}"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=[*overrides, out])


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An empty sqlite MLflow store, made once: a new store runs MLflow's schema migrations
    (3.8 s on a Zen 3 EPYC, in every test and every CLI process that opened one), a copy of a
    migrated one opens in milliseconds."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(tmp_path: Path, empty_store: Path) -> str:
    """A real sqlite MLflow store of the test's own: a copy of the migrated empty store."""
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def embedded_checkpoint() -> str:
    """The SmolLM2 checkpoint converted from the package's GGUF (cached across runs)."""
    from entropic.models import EMBEDDED_DEFAULT, resolve_checkpoint

    return resolve_checkpoint(EMBEDDED_DEFAULT)


# The smoke sweep: rl_vs_prompting for one seed (two points: the prompting baseline, which only
# evaluates, and Run C; the read-out arm's centre fit would add minutes) on a few questions and
# two GRPO steps, with a periodic evaluation at step 1.
SMOKE_SWEEP = [
    "experiment=prompting_baseline,scarce_mixed",
    "seed=0",
    "compute=cpu",
    "compute.cpu_scale.train_questions=4",
    "compute.cpu_scale.eval_questions=6",
    # the out-of-domain sets (eval.sets): a few questions each, enough for the reports' tables
    "compute.cpu_scale.set_questions=4",
    "compute.cpu_scale.per_device_train_batch_size=4",
    "trainer.max_steps=2",
    "trainer.max_completion_length=24",
    "trainer.save_steps=0",
    "trainer.eval_every_n_steps=1",
    "eval.periodic_size=3",
    "eval.max_new_tokens=24",
]


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory, embedded_checkpoint, empty_store):
    """A real sweep through the real CLI into a fresh sqlite store, run once for the session:
    the sweep tests check its MLflow runs, the report tests build reports from them."""
    import subprocess
    import sys
    from types import SimpleNamespace

    root = Path(__file__).resolve().parents[1]
    tmp = tmp_path_factory.mktemp("smoke_sweep")
    shutil.copyfile(empty_store, tmp / "mlflow.db")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "HF_HUB_OFFLINE": "1"}
    env.pop("ENTROPIC_PARENT_RUN_ID", None)
    command = ["-cd", "sweeps", "-cn", "rl_vs_prompting", *SMOKE_SWEEP]
    done = subprocess.run(
        [sys.executable, "-m", "entropic.run", *command, f"hydra.sweep.dir={tmp / 'sweep'}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return SimpleNamespace(uri=uri, sweep_dir=tmp / "sweep", done=done)


def sliding_window_model(vocab_size: int):
    """A 2-layer Qwen2 whose layers attend through a 16-token sliding window: the kind of model
    the prefix-cached engine and the shared-prefix scoring must leave to transformers."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        use_sliding_window=True,
        sliding_window=16,
        max_window_layers=0,
    )
    return AutoModelForCausalLM.from_config(config)
