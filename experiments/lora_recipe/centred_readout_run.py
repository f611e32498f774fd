"""The demo with a centred read-out: does what `readout_simulation.py` finds hold in a real run?

`readout_simulation.py` finds that the inputs of every adapted module, where the confidence is
written, are ~99% one constant vector, and that a replayed policy gradient on a LoRA of the last
layer's `down_proj` learns to rank held-out answers only when that input is centred. This script
runs the real GRPO job with such an adapter:

    python experiments/lora_recipe/centred_readout_run.py [--first-digit] [--radius R] \
        [--mean-questions 400] \
        +experiment=scarce_mixed 'adapter.target_modules=[down_proj]' adapter.top_layers=1 \
        trainer.loss_tokens=confidence [other overrides of entropic.run]

1. The mean input of the last layer's `down_proj` at the position where the first digit of the
   stated number is predicted, over the base model's greedy answers to `--mean-questions`
   questions of the training pool (never the held-out ones).
2. The train job (`python -m entropic.run` with the overrides), with peft's LoRA on that module
   seeing x - mean instead of x: its dropout slot (an identity at `adapter.dropout=0`) is
   replaced by the subtraction, so the base layer is untouched and peft trains A and B as ever.
   The replacement is not saved with the adapter: the job's own evaluation (same process) uses
   it, a later `PeftModel.from_pretrained` would not.
3. `--radius R`: the read-out acts only where the input is within R of the mean. At the first
   digit's position the base model's inputs lie 15 (median) to 32 from it; at every token of
   the answer and the key they lie 154 or more away (a scratch measurement on the base model's
   greedy answers to 300 training questions, every answer and key position of 60 of them), so
   R = 80 keeps the adapter off the answers.
4. `--first-digit`: the policy-gradient loss on the number's first digit alone (under
   `trainer.loss_tokens=confidence` it covers the key and every digit), since only that
   position's input is centred by this mean.

The project option that grew out of it is `adapter=readout` with
`trainer.loss_tokens=first_digit` (entropic/readout.py: the same read-out, saved with the
adapter, its gate radius in median distances; a completion with a key and no digit there trains
every token, here none). This script stays to rerun p25-p32 as they ran. It patches
`entropic.jobs.train.build_trainer` and `entropic.training.confidence_mask` in this process.
Findings (2026-11-29, AMD EPYC) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

import torch
from torch import nn

import entropic.jobs.train as train_job
import entropic.training as training

sys.path.insert(0, str(Path(__file__).resolve().parent))
from correctness_probe import study_context  # noqa: E402
from readout_simulation import answer_states  # noqa: E402


class Centre(nn.Module):
    """x - mean, in x's dtype: in peft's dropout slot, the LoRA path's input. With a radius,
    zero wherever x is further than that from the mean: the read-out then acts only at states
    like the ones the mean was taken from (the first digit's position), not at the answer's."""

    def __init__(self, mean: torch.Tensor, radius: float | None = None):
        super().__init__()
        self.register_buffer("mean", mean.clone(), persistent=False)
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self.mean.to(x.dtype)
        if self.radius is None:
            return centred
        near = centred.norm(dim=-1, keepdim=True) < self.radius
        return centred * near


def down_proj_mean(overrides: list[str], questions: int) -> torch.Tensor:
    """The mean input of the last layer's down_proj where the first digit is predicted, over the
    base model's greedy answers to the first `questions` of the training pool."""
    context = study_context(overrides)
    model = context.policy.load_model()
    model.eval()
    pool = context.splits.train
    states, _ = answer_states(context, model, pool.select(range(min(questions, len(pool)))))
    return states["mlp.down_proj"].mean(0)


def first_digit_mask(completion_ids: list[int], tokenizer, fmt: str = "lines") -> list[int]:
    """`entropic.training.first_digit_mask` as p25-p32 ran: a completion with the key and no
    digit after it trains no token (the project's trains every token)."""
    if training.first_digit(completion_ids, tokenizer, fmt) is None and (
        training.confidence_start(completion_ids, tokenizer, fmt) is not None
    ):
        return [0] * len(completion_ids)
    return training.first_digit_mask(completion_ids, tokenizer, fmt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-digit", action="store_true")
    parser.add_argument("--mean-questions", type=int, default=400)
    parser.add_argument("--radius", type=float, help="gate the read-out to states this near")
    args, overrides = parser.parse_known_args()
    mean = down_proj_mean([o for o in overrides if not o.startswith("hydra.")], args.mean_questions)
    build = train_job.build_trainer

    def centred(*positional, **named):
        trainer = build(*positional, **named)
        last = trainer.model.get_base_model().model.layers[-1].mlp.down_proj
        if not hasattr(last, "lora_dropout"):
            raise SystemExit(
                "no LoRA on the last layer's down_proj: run with "
                "'adapter.target_modules=[down_proj]' adapter.top_layers=1"
            )
        for name in last.lora_dropout:
            last.lora_dropout[name] = Centre(mean, args.radius)
        return trainer

    train_job.build_trainer = centred
    if args.first_digit:
        training.confidence_mask = first_digit_mask
    sys.argv = [sys.argv[0], *overrides]
    runpy.run_module("entropic.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    sys.exit(main())
