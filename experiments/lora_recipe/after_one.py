"""What a read-out with gates after a first 1 (`adapter.centre.after_one`, p63) learned there.

For each run folder it loads the trained read-out as `level_fit.py` does and reads the run's
greedy held-out answers (the `predictions/after.json` artifact of its MLflow run), then, for
every answer that states a number, base model (adapters off) against trained:

- the first digit's distribution where the number starts (the share of 1, and the mean digit);
- with a 1 written there, the next token's distribution (0, 5, the others), and with "10"
  written, the chance it ends (anything but another 0): P(100 | 1) is P(0 | 1) x P(0 | 10);
- where the gates open over the whole prompt + answer: at which positions, by gate.

Nothing is trained or fitted here. Three forward passes over each answer: about 8 minutes a run
in fp32 on a 2-core Zen 1 EPYC (`--answers N` for fewer).

    python experiments/lora_recipe/after_one.py outputs/readout_mixed/<time> [...]

Findings (2026-12-01, twenty-second and twenty-third sessions: p63, p64) are in README.md beside
this file.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import mlflow
import pandas as pd
import torch

from entropic import readout
from entropic.generation import chat_prompt_ids, left_pad
from entropic.prompting import build_messages
from entropic.training import first_digit

sys.path.insert(0, str(Path(__file__).parent))
from level_fit import load_trained  # noqa: E402


@torch.no_grad()
def forward(model, centre, rows: list[list[int]]):
    """Each row's next-token probabilities at its last three positions, (rows, 3, vocabulary),
    and where the gates opened over the row's own positions, (gate or -1, by position) per row.
    Rows are left-padded in batches of `readout.BATCH`."""
    probabilities, gates = [], []
    for start in range(0, len(rows), readout.BATCH):
        batch = rows[start : start + readout.BATCH]
        ids, mask = left_pad(batch, 0)
        out = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=3)
        probabilities.append(out.logits.float().softmax(-1))
        opened = centre.last_open
        if opened is None:  # the adapters are off: no gate runs
            continue
        which = centre.last_which if centre.last_which is not None else torch.zeros_like(mask)
        gate = torch.where(opened[..., 0], which, -1)
        for i, row in enumerate(batch):
            gates.append(gate[i, ids.shape[1] - len(row) :].tolist())
    return torch.cat(probabilities), gates


def summary(probabilities: torch.Tensor, tokenizer) -> dict[str, float]:
    """From rows ending "...Confidence:" + "1" + "0": the first digit's distribution, what
    follows a first 1, and what follows "10"."""
    zero, five = (tokenizer.convert_tokens_to_ids(t) for t in ("0", "5"))
    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    first, after_1, after_10 = probabilities[:, 0], probabilities[:, 1], probabilities[:, 2]
    share = first[:, digits] / first[:, digits].sum(1, keepdim=True)
    return {
        "P(1)": float(share[:, 1].mean()),
        "mean digit": float((share * torch.arange(10)).sum(1).mean()),
        "P(0 | 1)": float(after_1[:, zero].mean()),
        "P(5 | 1)": float(after_1[:, five].mean()),
        "P(0 | 10)": float(after_10[:, zero].mean()),
        "P(100 | 1)": float((after_1[:, zero] * after_10[:, zero]).mean()),
    }


def openings(gates: list[list[int]], marks: list[tuple[int, str]]) -> collections.Counter:
    """Where the gates opened over whole prompt + answer rows, by gate and by what the
    position predicts: the number's first digit, the token after its first digit (after a
    1, or another), after its first two, the end of the answer line, or elsewhere."""
    counts: collections.Counter = collections.Counter()
    for row_gates, (digit_at, number, answer_end) in zip(gates, marks, strict=True):
        for position, gate in enumerate(row_gates):
            if gate < 0:
                continue
            predicted = position + 1
            if predicted == digit_at:
                kind = "first digit"
            elif predicted == digit_at + 1:
                kind = "after a first 1" if number.startswith("1") else "after another digit"
            elif predicted == digit_at + 2:
                kind = "after two digits"
            elif predicted == answer_end:
                kind = "end of the answer line"
            else:
                kind = "elsewhere"
            counts[(gate, kind)] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--answers", type=int, default=None, help="the first N answers only")
    args = parser.parse_args()
    for run_dir in args.runs:
        context, model = load_trained(run_dir, None)
        tokenizer, config = context.policy.tokenizer, context.config
        answers = pd.read_json(
            mlflow.artifacts.download_artifacts(
                run_id=(run_dir / "mlflow_run_id.txt").read_text().strip(),
                artifact_path="predictions/after.json",
                tracking_uri=config.tracking.tracking_uri,
            ),
            orient="split",
        )
        one, zero = (tokenizer.convert_tokens_to_ids(t) for t in ("1", "0"))
        forced, whole, marks = [], [], []
        for question, completion in zip(answers["question"], answers["completion"], strict=True):
            ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
            at = first_digit(ids, tokenizer, config.prompt.format)
            if at is None:
                continue
            prompt = chat_prompt_ids(tokenizer, [build_messages(question, config.prompt)])[0]
            forced.append(prompt + ids[:at] + [one, zero])
            lines = tokenizer.decode(ids[:at]).split("\n")[0]
            answer_end = len(prompt) + len(tokenizer(lines, add_special_tokens=False)["input_ids"])
            whole.append(prompt + ids)
            marks.append((len(prompt) + at, tokenizer.decode(ids[at:]), answer_end))
        forced, whole, marks = forced[: args.answers], whole[: args.answers], marks[: args.answers]
        centre = list(readout.lora_layers(model).values())[-1].lora_dropout["default"]

        # `at_the_number`'s hook takes `open` and `which` as it reads them; keep a copy
        def copy(module, args, output):
            module.last_open, module.last_which = module.open, module.which

        keep = centre.register_forward_hook(copy)
        centre.last_open = centre.last_which = None
        with model.disable_adapter():
            base, _ = forward(model, centre, forced)
        trained, _ = forward(model, centre, forced)
        _, gates = forward(model, centre, whole)
        keep.remove()
        base, trained = summary(base, tokenizer), summary(trained, tokenizer)
        print(f"\n{run_dir.name}: {len(forced)} held-out answers that state a number")
        print("| | " + " | ".join(base) + " |")
        print("|---|" + "---|" * len(base))
        for name, values in (("base", base), ("trained", trained)):
            print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values.values()) + " |")
        print("gate openings over the answers (gate, what the position predicts): count")
        for key, count in sorted(openings(gates, marks).items()):
            print(f"  {key}: {count}")


if __name__ == "__main__":
    main()
