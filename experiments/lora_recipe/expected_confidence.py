"""Does the model's distribution over confidence values rank answers better than greedy decoding?

Greedy evaluation reads one confidence: the most likely digit, then the most likely next digit.
A trained run can say "10" to every question while the probabilities under that "10" still
differ from question to question. This script measures that: for each greedy completion a run
logged, it scores every confidence the model could have stated after its greedy answer (the
integers 0-100, each followed by a non-digit token) and takes their mean under the model's own
distribution. It then compares the AUROC, ECE and Brier score of that expected confidence with
the greedy one's, on the same answers.

    python experiments/lora_recipe/expected_confidence.py RUN_FOLDER [--when after] \
        [--tracking-uri sqlite:///mlflow.db]

RUN_FOLDER is a train job's folder (Hydra's run dir: `.hydra/config.yaml`, `mlflow_run_id.txt`
and, for --when after, the last `checkpoint-N` with the adapter, a read-out's gate included).
About 2 minutes for 200 questions on 2 CPU cores. The model must write numbers one digit per
token (SmolLM2 and Qwen do); the script refuses a tokenizer that does not.

Findings (2026-11-28, AMD EPYC, 2 cores) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf
from peft import PeftModel

from entropic import readout
from entropic.config import ModelConfig, PromptConfig
from entropic.generation import chat_prompt_ids
from entropic.metrics import auroc, brier_score, expected_calibration_error
from entropic.models import load_model, load_tokenizer, resolve_checkpoint, torch_dtype
from entropic.parsing import confidence_key_start
from entropic.prompting import build_messages
from entropic.report.traces import load_predictions

# the values a stated confidence can take
VALUES = range(101)


def digit_ids(tokenizer) -> list[int]:
    """Token ids of "0".."9"; refuses a tokenizer that merges digits (then a tree over single
    digits would not cover the numbers the model can write)."""
    ids = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    merged = tokenizer("100", add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id in ids or len(merged) != 3:
        raise SystemExit("this tokenizer does not write numbers one digit per token")
    return ids


@torch.no_grad()
def value_distribution(model, prefix: list[int], digits: list[int]) -> np.ndarray:
    """P(stated confidence = v) for v in 0..100 after `prefix`, renormalised over those values.

    A value is its digits followed by any non-digit token. Two forward passes of one token reuse
    the prefix's cache (cropped back after each), so a question costs one prefill and 12 tokens.
    """
    out = model(input_ids=torch.tensor([prefix]), use_cache=True)
    cache, length = out.past_key_values, len(prefix)
    first = out.logits[0, -1].float().softmax(-1)[digits]
    mass = np.zeros(len(VALUES))

    def after(tokens: list[int]) -> torch.Tensor:
        step = model(
            input_ids=torch.tensor([tokens]),
            past_key_values=cache,
            use_cache=True,
            position_ids=torch.arange(length, length + len(tokens)).unsqueeze(0),
        )
        cache.crop(-len(tokens))
        return step.logits[0, -1].float().softmax(-1)[digits]

    for d in range(10):
        second = after([digits[d]])
        mass[d] = float(first[d] * (1 - second.sum()))
        if d == 0:  # "0" then a digit is not a number anyone parses as a confidence
            continue
        for d2 in range(10):
            mass[10 * d + d2] = float(first[d] * second[d2])
    # "10" may go on to "100": split the mass written above by what follows "10"
    third = after([digits[1], digits[0]])
    ten = mass[10]
    mass[10] = ten * float(1 - third.sum())
    mass[100] = ten * float(third[0])
    # the two-digit values other than 10 are taken to end there ("25" then a digit would be
    # over 100); their small leak is renormalised away with the non-digit first tokens
    return mass / mass.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_folder", type=Path)
    parser.add_argument("--when", choices=("before", "after"), default="after")
    parser.add_argument("--tracking-uri", default="sqlite:///mlflow.db")
    args = parser.parse_args()

    saved = OmegaConf.to_container(OmegaConf.load(args.run_folder / ".hydra" / "config.yaml"))
    model_cfg = ModelConfig(**saved["model"])
    prompt = PromptConfig(**saved["prompt"])
    checkpoint = resolve_checkpoint(model_cfg)
    tokenizer = load_tokenizer(checkpoint)
    model = load_model(checkpoint, torch_dtype(model_cfg, "cpu"), "cpu")
    if args.when == "after":
        adapter = max(args.run_folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        model = PeftModel.from_pretrained(model, str(adapter))
        if saved["adapter"].get("centre") is not None:
            # a read-out (adapter=readout): its gate is not a peft module; put it back in the
            # LoRA layers and fill it from the same adapter file, as the job's resume does
            centre = saved["adapter"]["centre"]
            after = len(readout.AFTER_ONE) if centre.get("after_one") else 0
            centres = readout.install(model, after)
            # the distribution the run trained and sampled: its digit temperature and its
            # level's shift included (the shift is filled from the adapter file, as the rest)
            readout.at_the_number(
                model, centres, centre.get("temperature", 1.0), centre.get("shift_rate", 0.0)
            )
            readout.restore(str(adapter), centres)
    model.eval()
    digits = digit_ids(tokenizer)

    run_id = (args.run_folder / "mlflow_run_id.txt").read_text().strip()
    table = load_predictions(
        MlflowClient(args.tracking_uri), run_id, f"predictions/{args.when}.json"
    )
    table = table.dropna(subset=["confidence"])
    expected, greedy, correct = [], [], []
    for row in table.itertuples():
        start = confidence_key_start(row.completion, prompt.format)
        value_at = start + row.completion[start:].index(":") + 1
        # the completion up to the number, as the model wrote it (its space included)
        text = row.completion[:value_at] + " "
        prefix = chat_prompt_ids(tokenizer, [build_messages(row.question, prompt)])[0]
        prefix += tokenizer(text, add_special_tokens=False)["input_ids"]
        distribution = value_distribution(model, prefix, digits)
        expected.append(float(np.dot(distribution, np.array(VALUES))) / 100)
        greedy.append(float(row.confidence))
        correct.append(int(row.correct))
    expected, greedy, correct = map(np.array, (expected, greedy, correct))
    accuracy = correct.mean()
    print(
        f"{args.run_folder} ({args.when}): {len(correct)} parsed answers, accuracy {accuracy:.3f}"
    )
    print("readout    AUROC   ECE    Brier  mean   right  wrong")
    for name, values in (("greedy", greedy), ("expected", expected)):
        ece = expected_calibration_error(values, correct)
        print(
            f"{name:9s}  {auroc(values, correct):.3f}   {ece:.3f}"
            f"  {brier_score(values, correct):.3f}  {values.mean():.3f}"
            f"  {values[correct == 1].mean():.3f}  {values[correct == 0].mean():.3f}"
        )
    print(f"best constant Brier {accuracy * (1 - accuracy):.3f}")


if __name__ == "__main__":
    main()
