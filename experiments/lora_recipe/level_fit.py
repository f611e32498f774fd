"""Can a level fitted after training on labelled training-pool questions calibrate a read-out?

`readout_mixed` ranks held-out answers, but its stated level is set in training: on the second
held-out draw (`data.split_seed=1`) it states ~.40 to answers right 17% of the time. This script
asks whether a cheap post-training step, a bias on the first digit's logits fitted on labelled
questions of the training pool that the run did not train on (Platt scaling's place in the
related paper's pipeline), would fix the level without costing the ranking.

For each run folder it loads the base model with the run's adapter, centre and shift as the train
job does (the checkpoint `--checkpoint`, default the newest), answers `--questions` pool questions
outside the run's training draw and the held-out split greedily, reads the first digit's logits
where the number starts, and fits two biases on the pool questions' greedy Brier score:

- `tilt`: b_d = s1 * d + s2 * (d - 4.5)^2 over the digits d (a level and a spread), grid search;
- `per digit`: one bias per digit, coordinate search on a grid (10 parameters).

The held-out answers then state the digit argmax(logits + b), read as d / 10 (the read-out's
scale: 100 shares the digit 1, so a row's own stated number can differ in a few answers; the
`as run` row uses the run's numbers). Labels of the pool questions are used; the held-out split
is only scored. About 3 minutes a run in bf16 on a 2-core Zen 4.

    python experiments/lora_recipe/level_fit.py outputs/readout_mixed/<time> [...] \
        [--questions 400] [--checkpoint checkpoint-128]

Findings (2026-11-30, twenty-first session) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from peft import PeftModel

from entropic import readout
from entropic.evaluate import evaluate
from entropic.generation import chat_prompt_ids, left_pad
from entropic.jobs.context import prepare
from entropic.metrics import auroc, brier_score, expected_calibration_error
from entropic.prompting import build_messages
from entropic.training import first_digit, last_checkpoint

DIGITS = torch.arange(10, dtype=torch.float32)
VALUES = DIGITS / 10


def load_trained(run_dir: Path, checkpoint: str | None):
    """The run's context (its config as run, its questions) and its trained read-out."""
    cfg = OmegaConf.load(run_dir / ".hydra/config.yaml")
    cfg.output_dir = str(run_dir)
    context = prepare(cfg)
    config = context.config
    if config.adapter.centre is None:
        raise SystemExit(f"{run_dir} did not train a read-out (adapter=readout)")
    checkpoint = str(run_dir / checkpoint) if checkpoint else last_checkpoint(str(run_dir))
    # as expected_confidence.py loads one: peft's adapter, then the gate, which is no peft
    # module, put back in the LoRA layers and filled from the same file
    model = PeftModel.from_pretrained(context.policy.load_model(), checkpoint)
    centres = readout.install(model, readout.gates(config.adapter.centre))
    readout.at_the_number(
        model, centres, config.adapter.centre.temperature, config.adapter.centre.shift_rate
    )
    readout.restore(checkpoint, centres)
    return context, model.eval()


@torch.no_grad()
def first_digit_logits(model, tokenizer, questions, config):
    """Greedy answers to `questions`: for each that states a number, the logits of the digits
    0-9 where its first digit is predicted, its grade and the number it stated."""
    predictions, _ = evaluate(
        model, tokenizer, questions, config.prompt, config.eval, config.generation.name
    )
    digit_ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    rows, correct, stated = [], [], []
    for question, completion, right, number in zip(
        predictions["question"],
        predictions["completion"],
        predictions["correct"],
        predictions["confidence"],
        strict=True,
    ):
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        at = first_digit(ids, tokenizer, config.prompt.format)
        if at is None or number is None or np.isnan(number):
            continue
        prompt = chat_prompt_ids(tokenizer, [build_messages(question, config.prompt)])[0]
        rows.append(prompt + ids[:at])
        correct.append(bool(right))
        stated.append(float(number))
    logits = []
    for start in range(0, len(rows), readout.BATCH):
        ids, mask = left_pad(rows[start : start + readout.BATCH], 0)
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
        logits.append(out.logits[:, -1, digit_ids].float())
    return torch.cat(logits), np.array(correct), np.array(stated)


def stated_with(logits: torch.Tensor, bias: torch.Tensor) -> np.ndarray:
    return VALUES[(logits + bias).argmax(1)].numpy()


def fit_tilt(logits: torch.Tensor, correct: np.ndarray) -> torch.Tensor:
    """The level-and-spread bias with the lowest greedy Brier score on these answers."""
    best = (float("inf"), torch.zeros(10))
    for s1 in np.linspace(-6, 6, 61):
        for s2 in np.linspace(-1, 1, 21):
            bias = float(s1) * DIGITS + float(s2) * (DIGITS - 4.5) ** 2
            score = brier_score(stated_with(logits, bias), correct)
            if score < best[0]:
                best = (score, bias)
    return best[1]


def fit_per_digit(logits: torch.Tensor, correct: np.ndarray, rounds: int = 4) -> torch.Tensor:
    """One bias per digit, coordinate search on the greedy Brier score (a small penalty on the
    size keeps unused digits at 0)."""
    bias = torch.zeros(10)
    current = brier_score(stated_with(logits, bias), correct)
    for _ in range(rounds):
        for digit in range(10):
            for value in np.linspace(-4, 4, 33):
                trial = bias.clone()
                trial[digit] = float(value)
                score = brier_score(stated_with(logits, trial), correct) + 1e-4 * abs(value)
                if score < current - 1e-9:
                    bias, current = trial, score
    return bias


def scores(confidence: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    accuracy = correct.mean()
    return {
        "auroc": auroc(confidence, correct),
        "ece": expected_calibration_error(confidence, correct, n_bins=10),
        "brier": brier_score(confidence, correct),
        "constant": accuracy * (1 - accuracy),
        "right": confidence[correct].mean(),
        "wrong": confidence[~correct].mean(),
        "distinct": len(set(np.round(confidence, 2))),
    }


def row(run: str, variant: str, held: dict, pool: dict) -> str:
    return (
        f"| {run} | {variant} | {held['auroc']:.3f} | {held['ece']:.3f} | "
        f"{held['brier']:.3f} ({held['constant']:.3f}) | {held['right']:.3f} / "
        f"{held['wrong']:.3f} | {held['distinct']} | {pool['brier']:.3f} ({pool['constant']:.3f}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()
    print(
        "| run | level | AUROC | ECE | Brier (best const) | right / wrong | distinct | "
        "pool questions: Brier (best const) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run_dir in args.runs:
        context, model = load_trained(run_dir, args.checkpoint)
        trained = set(context.train["question_id"])
        pool = context.splits.train
        unseen = [i for i, q in enumerate(pool["question_id"]) if q not in trained]
        tokenizer, config = context.policy.tokenizer, context.config
        pool_logits, pool_correct, pool_stated = first_digit_logits(
            model, tokenizer, pool.select(unseen[: args.questions]), config
        )
        held_logits, held_correct, held_stated = first_digit_logits(
            model, tokenizer, context.splits.eval, config
        )
        name = f"{run_dir.name} (pool acc {pool_correct.mean():.3f})"
        print(
            row(
                name, "as run", scores(held_stated, held_correct), scores(pool_stated, pool_correct)
            )
        )
        for variant, fit in (("tilt", fit_tilt), ("per digit", fit_per_digit)):
            bias = fit(pool_logits, pool_correct)
            print(
                row(
                    name,
                    variant,
                    scores(stated_with(held_logits, bias), held_correct),
                    scores(stated_with(pool_logits, bias), pool_correct),
                )
            )


if __name__ == "__main__":
    main()
