"""Entry point: `python -m entropic.run` runs one experiment (or a multirun sweep) from `conf/`.

    python -m entropic.run +experiment=scarce_mixed            # Run C of the reference
    python -m entropic.run +experiment=scarce_mixed reward.labeled_fraction=0.25
    python -m entropic.run -m +experiment=scarce_mixed reward.labeled_fraction=0,0.5,1
    python -m entropic.run model=qwen3_4b_instruct data=triviaqa +experiment=abundant_mixed
    python -m entropic.run +experiment=scarce_mixed model=qwen3_4b_instruct compute=multi_gpu

A rejected config exits with status 2 and a message naming the key and the fix.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from entropic.config import ConfigError, RunConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    try:
        # The typed config's own checks first: every name and value they reject (a reward, data
        # source, evaluation set, job, read-out or calibration setting) exits in about two
        # seconds, before torch, transformers, peft and MLflow are imported (16 s on a 2-core
        # Zen 3 EPYC); TRL's judgement of the trainer group comes last and imports them. The
        # checks that need a loader or a file (a jsonl path, a model directory) run in the job
        # (jobs.context), still before any model loads.
        RunConfig.from_hydra(cfg)
        from entropic import launch
        from entropic.jobs import run

        if launch.needs_launch(cfg):
            # Several ranks or a vLLM server: this process starts them and waits (launch.py).
            launch.launch(cfg)
            return None
        result = run(cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    # Returned so Hydra sweepers that optimise (e.g. Optuna) have an objective.
    return result.after.get("ece")


if __name__ == "__main__":
    main()
