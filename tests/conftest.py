"""Shared fixtures: composed configs, a throwaway MLflow store, the embedded model checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# The suite is offline by contract: nothing may reach for the model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def compose_config(overrides: list[str], tmp_path: Path | None = None, config_name="config"):
    """Compose conf/ like the CLI does; output_dir is normally filled in by Hydra at run time."""
    out = f"output_dir={tmp_path or '/tmp/entropic-test'}"
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=[*overrides, out])


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    """A real sqlite MLflow store of the test's own."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture(scope="session")
def embedded_checkpoint() -> str:
    """The SmolLM2 checkpoint converted from the package's GGUF (cached across runs)."""
    from entropic.models import EMBEDDED_DEFAULT, resolve_checkpoint

    return resolve_checkpoint(EMBEDDED_DEFAULT)
