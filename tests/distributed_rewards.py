"""Run under `torchrun --nproc_per_node 2`: the rewards of a batch whose groups straddle ranks.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_rewards.py OUT

Each rank takes its half of `BATCH` (as GRPOTrainer hands each process its slice), calls
`group_stability` and the `mixed` TRL reward on it, and rank 0 writes every rank's results to OUT
as JSON, in rank order. tests/test_distributed.py compares them with one process on the whole batch.
"""

from __future__ import annotations

import json
import sys

from accelerate import PartialState
from accelerate.utils import gather_object

from entropic.config import RewardConfig
from entropic.rewards import TRLReward, group_stability
from entropic.semantic import build_clusterer

NUM_GENERATIONS = 4
# Three questions, G=4 each: 12 completions; with two ranks of 6, question q1 straddles them.
BATCH = {
    "question_id": ["q0"] * 4 + ["q1"] * 4 + ["q2"] * 4,
    "completions": [
        "Answer: Paris\nConfidence: 90",
        "Answer: paris\nConfidence: 80",
        "Answer: Lyon\nConfidence: 50",
        "Answer: Paris\nConfidence: 70",
        "Answer: Rome\nConfidence: 60",
        "Answer: Milan\nConfidence: 60",
        "Answer: Rome\nConfidence: 100",
        "Answer: Rome\nConfidence: 20",
        "Answer: Yen\nConfidence: 50",
        "no answer here",
        "Answer: Won\nConfidence: 50",
        "Answer: JPY\nConfidence: 40",
    ],
    "answers": [["Paris"]] * 4 + [["Rome"]] * 4 + [["Yen", "JPY"]] * 4,
    # q0 and q2 labeled (Brier), q1 unlabeled (stability)
    "labeled": [True] * 4 + [False] * 4 + [True] * 4,
}


def score(rows: slice) -> dict[str, list[float]]:
    """Stability and the mixed reward of BATCH[rows], as one rank computes them."""
    part = {key: values[rows] for key, values in BATCH.items()}
    clusterer = build_clusterer("exact")
    answers = [text.split("\n")[0].removeprefix("Answer: ") for text in part["completions"]]
    answers = [None if a == "no answer here" else a for a in answers]
    reward = TRLReward(RewardConfig(name="mixed", labeled_fraction=0.5), NUM_GENERATIONS, clusterer)
    return {
        "stability": group_stability(
            part["question_id"], answers, NUM_GENERATIONS, clusterer
        ).tolist(),
        "mixed": reward(
            prompts=[""] * len(part["completions"]),
            completions=part["completions"],
            answers=part["answers"],
            question_id=part["question_id"],
            labeled=part["labeled"],
        ),
    }


def main(out: str) -> None:
    state = PartialState(cpu=True)
    size = len(BATCH["question_id"]) // state.num_processes
    start = state.process_index * size
    results = gather_object([{"rank": state.process_index, **score(slice(start, start + size))}])
    if state.is_main_process:
        with open(out, "w") as f:
            json.dump({"num_processes": state.num_processes, "ranks": results}, f)
    # A gloo group left to the interpreter's exit can abort the process ("terminate called").
    state.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
