"""Would evaluating a trained adapter merged into the base weights give the same answers, faster?

After training, a train job evaluates `trainer.model`: the base model with peft's LoRA layers
(adapters in fp32, as TRL leaves them) under accelerate's bf16 autocast, the numerics training
ran with. A merged model skips the 210 LoRA branches of every decoding step. This script
evaluates a run's last checkpoint both ways on the held-out questions, times each, and counts
the greedy completions that differ, and where (in the answer or only in the confidence):

    python experiments/lora_recipe/merged_evaluation.py RUN_FOLDER [--questions 200]

RUN_FOLDER is a LoRA train job's folder (Hydra's run dir: `.hydra/overrides.yaml` and a
`checkpoint-N` with the adapter). About 2 minutes for 200 questions on 2 CPU cores.

Findings (2026-11-28, AMD EPYC, 2 cores) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from peft import PeftModel

from entropic.evaluate import evaluate
from entropic.jobs.context import prepare

CONF = Path(__file__).resolve().parents[2] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("--questions", type=int, default=200)
    args = parser.parse_args()
    overrides = list(OmegaConf.load(args.run_folder / ".hydra" / "overrides.yaml"))
    # the folder's own tracking/output keys are not needed: nothing is logged
    overrides = [o for o in overrides if not o.startswith(("tracking.", "hydra."))]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[*overrides, f"output_dir={args.run_folder}"])
    context = prepare(cfg)
    config, policy = context.config, context.policy
    if config.adapter.name != "lora":
        raise SystemExit(f"{args.run_folder} trained adapter={config.adapter.name}, not lora")
    adapter = max(args.run_folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    questions = context.splits.eval.select(range(min(args.questions, len(context.splits.eval))))
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(policy.dtype, "no")

    def run(name: str, model) -> pd.DataFrame:
        started = time.perf_counter()
        predictions, metrics = evaluate(
            model, policy.tokenizer, questions, config.prompt, config.eval, config.generation.name
        )
        rows.append(
            {
                "model": name,
                "seconds": time.perf_counter() - started,
                "accuracy": metrics["accuracy"],
                "auroc": metrics["auroc"],
                "confidence": predictions["confidence"].mean(),
            }
        )
        return predictions

    rows: list[dict] = []
    trained = PeftModel.from_pretrained(policy.load_model(), adapter)
    # what the trainer's accelerator does to the model it trains (a no-op in fp32)
    trained = Accelerator(mixed_precision=mixed, cpu=True).prepare_model(trained)
    reference = run("trainer's model (peft, fp32 adapters, autocast)", trained)
    variants = {
        f"merged into the {policy.dtype} weights": lambda: PeftModel.from_pretrained(
            policy.load_model(), adapter
        ).merge_and_unload(),
        "merged in fp32, run in fp32": lambda: PeftModel.from_pretrained(
            policy.load_model().float(), adapter
        ).merge_and_unload(),
    }
    for name, build in variants.items():
        predictions = run(name, build())
        same = predictions["completion"] == reference["completion"]
        same_answer = predictions["answer"].fillna("") == reference["answer"].fillna("")
        rows[-1] |= {
            "same_completion": int(same.sum()),
            "answer_differs": int((~same_answer).sum()),
            "only_confidence_differs": int((~same & same_answer).sum()),
        }
    print(f"{adapter}, {len(questions)} held-out questions, {policy.dtype}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
