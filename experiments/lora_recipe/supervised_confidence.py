"""Can the stated number learn to rank answers from a gradient that is not a policy gradient?

Probes p1-p22 found that GRPO moves the mean stated confidence to the base rate and never the
ranking, and p21-p22 suspected the policy gradient itself: the expected gradient on a
confidence value is that value's probability times its advantage, so the value a right answer
should state, which the model rarely states, is barely pushed. A cross-entropy gradient
has no such factor. This diagnostic trains the same LoRA adapter, at the same rate and for the
same number of updates as the RL probes, with cross-entropy instead, and asks whether the
greedy stated number then ranks held-out answers:

    python experiments/lora_recipe/supervised_confidence.py [--train-questions 1200] \
        [--steps 80] [--batch 16] [--learning-rate 1e-4] [Hydra overrides, default
        +experiment=scarce_mixed]

1. The base model's greedy answers, with the run's prompt and evaluation engine, to
   `--train-questions` questions of the training pool (the demo's pool; never the held-out
   questions), graded as evaluation grades them; those with a stated number are kept.
2. Each becomes one example: the prompt, the model's own answer line and "Confidence: ", then a
   target value, 90 if the answer is right and 10 if it is wrong (the ends of the prompt's
   few-shot scale). Cross-entropy on the value's tokens alone, through TRL's SFTTrainer
   (`completion_mask`), with the run's LoRA adapter (`entropic.training.peft_config`). Its
   optimum puts P(right | answer) on "90", so greedy decoding says 90 where the model finds
   the answer more likely right than not: a ranking test, not a calibration recipe.
3. The held-out questions are answered greedily with the adapter, as evaluation does it, and
   scored with the project's eval/* metrics, beside the base model's.

About 17 minutes on 2 CPU cores. Findings (2026-11-29, AMD EPYC) are in README.md beside this
file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import datasets
import torch
from peft import get_peft_model
from trl import SFTConfig, SFTTrainer

from entropic.evaluate import evaluate
from entropic.generation import chat_prompt_ids
from entropic.parsing import confidence_key_start
from entropic.prompting import build_messages
from entropic.training import peft_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from correctness_probe import study_context  # noqa: E402

# the target value of a right and of a wrong answer: the ends of the few-shot scale (90, 40, 10)
TARGETS = {True: 90, False: 10}
METRICS = (
    "accuracy",
    "format_rate",
    "auroc",
    "ece",
    "brier",
    "confidence_correct",
    "confidence_wrong",
)


def examples(tokenizer, prompt, predictions) -> datasets.Dataset:
    """Prompt + the model's own answer + "Confidence: " (no loss), then the target value and the
    end of the turn (the loss)."""
    rows = {"input_ids": [], "completion_mask": []}
    for row in predictions.itertuples():
        start = confidence_key_start(row.completion, prompt.format)
        prefix = chat_prompt_ids(tokenizer, [build_messages(row.question, prompt)])[0]
        context = tokenizer(row.completion[:start] + "Confidence: ", add_special_tokens=False)
        value = tokenizer(
            str(TARGETS[bool(row.correct)]) + tokenizer.eos_token, add_special_tokens=False
        )
        ids = prefix + context["input_ids"] + value["input_ids"]
        rows["input_ids"].append(ids)
        rows["completion_mask"].append(
            [0] * (len(ids) - len(value["input_ids"])) + [1] * len(value["input_ids"])
        )
    return datasets.Dataset.from_dict(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-questions", type=int, default=1200)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    args, overrides = parser.parse_known_args()
    context = study_context(overrides)
    config = context.config
    tokenizer = context.policy.tokenizer
    model = context.policy.load_model()
    model.eval()
    held_out = context.splits.eval
    pool = context.splits.train
    train_questions = pool.select(range(min(args.train_questions, len(pool))))

    def scored(model) -> dict[str, float]:
        _, metrics = evaluate(
            model, tokenizer, held_out, config.prompt, config.eval, config.generation.name
        )
        return {name: metrics[name] for name in (*METRICS, "distinct_confidences")}

    before = scored(model)
    predictions, _ = evaluate(
        model, tokenizer, train_questions, config.prompt, config.eval, config.generation.name
    )
    predictions = predictions.dropna(subset=["confidence"]).reset_index(drop=True)
    train = examples(tokenizer, config.prompt, predictions)
    print(
        f"{len(train)} training answers with a stated number, {int(predictions['correct'].sum())} "
        f"right; {args.steps} steps of {args.batch}"
    )

    model = get_peft_model(model, peft_config(config.adapter, context.policy.checkpoint))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=tempfile.mkdtemp(),
            max_steps=args.steps,
            per_device_train_batch_size=args.batch,
            learning_rate=args.learning_rate,
            lr_scheduler_type="constant",
            adam_beta2=0.95,
            completion_only_loss=True,
            use_cpu=True,
            # as the RL probes trained: bf16 autocast where the run picked bf16 weights
            bf16=next(model.parameters()).dtype == torch.bfloat16,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            seed=config.seed,
        ),
        train_dataset=train,
        processing_class=tokenizer,
    )
    trainer.train()
    model.eval()
    after = scored(model)
    print(f"\nheld-out ({len(held_out)} questions), greedy, the run's prompt and engine")
    print(f"  {'metric':22s} {'base':>7s} {'after':>7s}")
    for name in (*METRICS, "distinct_confidences"):
        print(f"  {name:22s} {before[name]:7.3f} {after[name]:7.3f}")


if __name__ == "__main__":
    sys.exit(main())
