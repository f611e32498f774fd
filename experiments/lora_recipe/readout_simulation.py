"""Why does every adapter learn the base rate and not the ranking? The inputs it reads.

A linear probe of the hidden state ranks the model's held-out answers at AUROC ~.9
(`correctness_probe.py`), yet every GRPO probe and a supervised run (`supervised_confidence.py`)
moved the stated confidence to the base rate and left it one number. This script looks at what
a LoRA adapter reads where the confidence is written, and replays the policy gradient on that
read-out alone, where it runs in seconds:

    python experiments/lora_recipe/readout_simulation.py [--train-questions 1200] \
        [--steps 16 64] [--rates 1e-3 3e-3 1e-2] [--seeds 3] [Hydra overrides, default
        +experiment=scarce_mixed]

1. The base model's greedy answers, with the run's prompt and engine, to `--train-questions`
   questions of the training pool and to the 200 held-out questions (as `correctness_probe.py`).
   For each answer with a stated number, one forward pass over the prompt, the answer,
   "Confidence:" and the space the model writes next (its most likely token there), keeping the
   inputs of the last decoder layer's Linear modules and of the output head at that last
   position: where the first digit of the number is predicted.
2. How much of each input is one constant vector: |mean| / rms over the training answers (1.0:
   every answer gives the same vector). A LoRA update of a module is B A x; when x is mostly the
   constant, B's gradient is mostly "move every answer's number alike".
3. A replay of the policy gradient on one LoRA adapter, on the last layer's `down_proj` (the
   lowest adapter TRL can train that no later layer reads: TRL 1.16 refuses adapters on the
   output head, whose weight it multiplies directly). The rest of the model is the cached states,
   so the first digit's logits are exact: lm_head(norm(residual + down_proj(x) + B A x')), with
   x' = x (what peft's LoRA does) or x' = x - mean (a centred read-out). Each step draws 4
   training answers and samples 4 first digits from each (digit d states d/10); the reward is
   Brier against the answer's grade, the advantage the reward minus the mean of the same
   answer's 4 samples, and Adam (0.9, 0.95) updates A and B (rank 32, alpha 64, peft's
   initialisation). Scored on the held-out answers: the AUROC of the greedy first digit (what
   evaluation states), of the expected value under its distribution, the number of distinct
   greedy values, and the mean greedy confidence on right and wrong answers.

What it leaves out, on purpose: the answers are the base model's greedy ones (a rollout samples
them), the reward is Brier alone, and the adapter acts only at this position (a real one acts at
every token, the answer's included). About 4 minutes on 2 CPU cores. Findings (2026-11-29, AMD
EPYC) are in README.md beside this file.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from entropic.evaluate import evaluate
from entropic.metrics import auroc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from correctness_probe import probe_inputs, study_context  # noqa: E402


@torch.no_grad()
def last_position_inputs(model, inputs) -> dict[str, torch.Tensor]:
    """Inputs of the last layer's Linear modules, of the final norm's residual and of the output
    head at the position after "Confidence:" + the model's next token, one row per answer."""
    layer = model.model.layers[-1]
    watched = {
        name: module for name, module in layer.named_modules() if type(module).__name__ == "Linear"
    }
    watched["lm_head"] = model.get_output_embeddings()
    caught: dict[str, list[torch.Tensor]] = {name: [] for name in watched}
    caught["residual"] = []

    def keep(name):
        return lambda module, args, output: caught[name].append(args[0][0, -1].float().clone())

    hooks = [module.register_forward_hook(keep(name)) for name, module in watched.items()]
    hooks.append(layer.post_attention_layernorm.register_forward_hook(keep("residual")))
    try:
        for ids in tqdm(inputs, desc="states"):
            next_token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            model(input_ids=torch.tensor([[*ids, next_token]]))
            # the first pass's captures are dropped: only the position after the space counts
            for rows in caught.values():
                del rows[-2]
    finally:
        for hook in hooks:
            hook.remove()
    return {name: torch.stack(rows) for name, rows in caught.items()}


def answer_states(context, model, questions) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The model's greedy answers to `questions` (the run's prompt and engine), graded: the
    `last_position_inputs` of those with a stated number, and whether each is right."""
    config, tokenizer = context.config, context.policy.tokenizer
    predictions, _ = evaluate(
        model, tokenizer, questions, config.prompt, config.eval, config.generation.name
    )
    predictions = predictions.dropna(subset=["confidence"]).reset_index(drop=True)
    inputs, _ = probe_inputs(tokenizer, config.prompt, predictions)
    return last_position_inputs(model, inputs), predictions["correct"].to_numpy(int)


def constant_share(x: torch.Tensor) -> float:
    """|mean| / rms over rows: 1 when every row is the same vector."""
    return float(x.mean(0).norm() / x.pow(2).sum(1).mean().sqrt())


class Readout:
    """The first digit's logits with a LoRA adapter on the last layer's down_proj, from cached
    states: exact at this position, since no later layer reads the adapter's output."""

    def __init__(self, model, states, digits):
        layer = model.model.layers[-1]
        self.down = layer.mlp.down_proj.weight.detach().float()
        norm = model.model.norm
        self.norm_weight, self.eps = norm.weight.detach().float(), norm.variance_epsilon
        self.head = model.get_output_embeddings().weight.detach().float()[digits]
        self.states = states

    def logits(self, split, rows, a, b, scale, centre):
        x = self.states[split]["mlp.down_proj"][rows]
        residual = self.states[split]["residual"][rows] + x @ self.down.T
        residual = residual + scale * ((x - centre) @ a.T) @ b.T
        normed = residual * torch.rsqrt(residual.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.norm_weight * normed) @ self.head.T


def replay(readout, labels, centred, rate, steps, seed, rank=32, alpha=64, answers=4, samples=4):
    generator = torch.Generator().manual_seed(seed)
    width = readout.down.shape[1]
    # peft's initialisation: A uniform(+-1/sqrt(fan_in)) (kaiming, a=sqrt(5)), B zero
    a = ((torch.rand(rank, width, generator=generator) * 2 - 1) / width**0.5).requires_grad_()
    b = torch.zeros(readout.down.shape[0], rank, requires_grad=True)
    optimiser = torch.optim.Adam([a, b], lr=rate, betas=(0.9, 0.95))
    centre = readout.states["train"]["mlp.down_proj"].mean(0) if centred else 0.0
    values = torch.arange(10) / 10
    train_labels = torch.tensor(labels["train"], dtype=torch.float32)
    for _ in range(steps):
        rows = torch.randint(len(train_labels), (answers,), generator=generator)
        logprobs = readout.logits("train", rows, a, b, alpha / rank, centre).log_softmax(-1)
        drawn = torch.multinomial(logprobs.exp().detach(), samples, True, generator=generator)
        reward = 1 - (train_labels[rows, None] - values[drawn]) ** 2
        advantage = reward - reward.mean(1, keepdim=True)
        loss = -(advantage * logprobs.gather(1, drawn)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        held = torch.arange(len(labels["held_out"]))
        logits = readout.logits("held_out", held, a, b, alpha / rank, centre)
    greedy = values[logits.argmax(1)].numpy()
    expected = (logits.softmax(1) * values).sum(1).numpy()
    right = labels["held_out"] == 1
    return {
        "greedy AUROC": auroc(greedy, labels["held_out"]),
        "expected AUROC": auroc(expected, labels["held_out"]),
        "distinct": len(set(greedy.tolist())),
        "right": float(greedy[right].mean()),
        "wrong": float(greedy[~right].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-questions", type=int, default=1200)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--seeds", type=int, default=3)
    args, overrides = parser.parse_known_args()
    context = study_context(overrides)
    model = context.policy.load_model()
    model.eval()
    tokenizer = context.policy.tokenizer
    pool = context.splits.train
    splits = {
        "train": pool.select(range(min(args.train_questions, len(pool)))),
        "held_out": context.splits.eval,
    }
    states, labels = {}, {}
    for name, questions in splits.items():
        states[name], labels[name] = answer_states(context, model, questions)
    print(
        f"{len(labels['train'])} training and {len(labels['held_out'])} held-out answers with a "
        f"stated number ({int(labels['held_out'].sum())} right)"
    )

    print("\n| input at the first digit's position | width | constant share (|mean| / rms) |")
    print("|---|---|---|")
    for name, rows in states["train"].items():
        if name != "residual":
            print(f"| {name} | {rows.shape[1]} | {constant_share(rows):.3f} |")

    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    readout = Readout(model, states, digits)
    print(
        f"\nreplayed GRPO on a LoRA of the last down_proj, {args.seeds} seeds each "
        "(greedy AUROC, expected AUROC, distinct values, greedy confidence right / wrong)"
    )
    print("| input | rate | steps | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " |")
    print("|---|---|---|" + "---|" * args.seeds)
    for centred, steps, rate in itertools.product([False, True], args.steps, args.rates):
        cells = []
        for seed in range(args.seeds):
            r = replay(readout, labels, centred, rate, steps, seed)
            cells.append(
                f"{r['greedy AUROC']:.2f}, {r['expected AUROC']:.2f}, {r['distinct']}, "
                f"{r['right']:.2f} / {r['wrong']:.2f}"
            )
        kind = "x - mean" if centred else "x (peft)"
        print(f"| {kind} | {rate:g} | {steps} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
