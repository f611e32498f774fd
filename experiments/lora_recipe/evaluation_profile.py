"""Where a greedy evaluation's time goes on this machine: the completions' lengths and a
torch.profiler table of the prefix-cached engine.

    python experiments/lora_recipe/evaluation_profile.py RUN_FOLDER [--questions 64] \
        [--experiment scarce_mixed] [--dtype float32]

RUN_FOLDER is a train job's folder whose base evaluation wrote `predictions_before*.parquet`
(`python -m entropic.run +experiment=scarce_mixed train=false` is enough). The script counts
each table's completion tokens, then answers the first `--questions` held-out questions again
with the embedded default under torch.profiler (the same prompt, engine and token cap as the
run's evaluation), checks the answers are the table's, and prints the operators by self time.
About a minute on two cores.

Findings (2026-12-01, twenty-fifth session, "The demo's wall time") are in README.md beside
this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch.profiler import ProfilerActivity, profile

from entropic.config import PromptConfig
from entropic.generation import generate_chats
from entropic.models import EMBEDDED_DEFAULT, load_model, load_tokenizer, resolve_checkpoint
from entropic.prompting import build_messages

CONF = Path(__file__).resolve().parents[2] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--experiment", default="scarce_mixed")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()

    tables = sorted(args.run_folder.glob("predictions_before*.parquet"))
    if not tables:
        raise SystemExit(
            f"{args.run_folder} holds no predictions_before*.parquet. Fix: run "
            "`python -m entropic.run +experiment=scarce_mixed train=false` and pass its folder"
        )
    checkpoint = resolve_checkpoint(EMBEDDED_DEFAULT)
    tokenizer = load_tokenizer(checkpoint)
    for table in tables:
        completions = pd.read_parquet(table)["completion"]
        lengths = pd.Series(
            [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in completions]
        )
        print(
            f"{table.name}: {len(lengths)} answers, {lengths.sum()} tokens, "
            f"mean {lengths.mean():.1f}, {int((lengths >= 47).sum())} at the cap"
        )

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"+experiment={args.experiment}"])
    prompt = PromptConfig(**OmegaConf.to_container(cfg.prompt, resolve=True))
    held_out = pd.read_parquet(args.run_folder / "predictions_before.parquet")
    held_out = held_out.head(args.questions)
    prompts = [build_messages(question, prompt) for question in held_out["question"]]
    model = load_model(checkpoint, getattr(torch, args.dtype), "cpu")
    with profile(activities=[ProfilerActivity.CPU]) as trace:
        texts, _ = generate_chats(
            model,
            tokenizer,
            prompts,
            max_new_tokens=cfg.eval.max_new_tokens,
            engine="prefix_cache",
            batch_size=cfg.eval.batch_size,
        )
    same = sum(a == b for a, b in zip(texts, held_out["completion"], strict=True))
    print(f"answers as in the table: {same} of {len(texts)}")
    print(trace.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
