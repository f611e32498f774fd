"""Arithmetic questions generated in code (data=arithmetic): a different task, not only a
different field.

RLCR (arXiv 2507.16806) reports calibration on math sets beside factual QA; this is the offline
counterpart for a small model. Difficulty is set by the operation and the number of digits:

    add_1digit     What is 7 + 5?       12          (both operands 1-9: 81 questions)
    mul_1digit     What is 7 x 8?       56          (the times table, 2-9: 64 questions)
    add_2digit     What is 47 + 38?     85          (both operands 10-99)
    add_3digit     What is 472 + 389?   861         (both operands 100-999)
    sub_2digit     What is 83 - 47?     36          (the larger first: never negative)
    mul_1x2digit   What is 7 x 38?      266         (2-9 times 10-99)
    mul_2digit     What is 47 x 38?     1786        (both operands 10-99)

The operands of question i of a kind come from SHA-256 of (kind, i), not from `random`, so the
pool is the same on every Python version; a pair drawn twice is skipped. Answers are the number
and the worked equation ("47 + 38 = 85" normalises to "47 38 85"), which small models often
write; a thousands separator ("1,786") is accepted by the grader's normalisation. No result is
negative: normalisation drops the minus sign, so "-36" would pass for 36.

Difficulty for SmolLM2-135M-Instruct (greedy, the default prompt): 21.3% on the default
set's 300 questions, from 50% on 1-digit sums to 0% on 2-digit products
(`experiments/transfer/README.md`).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from entropic.data import (
    QuestionSplits,
    check_kind_counts,
    check_split_seed,
    option_key,
    split_candidates,
)

Row = dict[str, Any]


@dataclass(frozen=True)
class Operation:
    # the sign shown in the question
    sign: str
    # inclusive operand ranges, first and second
    first: tuple[int, int]
    second: tuple[int, int]

    @property
    def distinct(self) -> int:
        """How many different questions the kind has (a difference is asked larger-first)."""
        (low_a, high_a), (low_b, high_b) = self.first, self.second
        if self.sign == "-":
            width = high_a - low_a + 1
            return width * (width + 1) // 2
        return (high_a - low_a + 1) * (high_b - low_b + 1)

    def result(self, a: int, b: int) -> int:
        if self.sign == "+":
            return a + b
        if self.sign == "-":
            return a - b
        return a * b


KINDS: dict[str, Operation] = {
    "add_1digit": Operation("+", (1, 9), (1, 9)),
    "mul_1digit": Operation("x", (2, 9), (2, 9)),
    "add_2digit": Operation("+", (10, 99), (10, 99)),
    "add_3digit": Operation("+", (100, 999), (100, 999)),
    "sub_2digit": Operation("-", (10, 99), (10, 99)),
    "mul_1x2digit": Operation("x", (2, 9), (10, 99)),
    "mul_2digit": Operation("x", (10, 99), (10, 99)),
}

# Questions per kind when the option leaves the count open (null): the pool is generated, so
# "all" means this many, or every question of a kind that has fewer.
QUESTIONS_PER_KIND = 200
# The kind mix when `kinds` is not given (445 questions): every kind, weighted towards the ones
# SmolLM2-135M sometimes gets right, so the set is neither hopeless nor easy for it (21.3% on
# the default set's 300 questions). Greedy accuracy per kind on the default prompt, from a first
# pass (the 1-digit kinds on all 145 of their questions, the others on 50-70 each): add_1digit
# .49, mul_1digit .45, add_2digit .16, mul_1x2digit .10, sub_2digit .05, add_3digit .04,
# mul_2digit .00.
DEFAULT_KINDS: dict[str, int | None] = {
    "add_1digit": None,
    "mul_1digit": None,
    "add_2digit": 100,
    "sub_2digit": 60,
    "mul_1x2digit": 60,
    "add_3digit": 40,
    "mul_2digit": 40,
}


def operands(kind: str, index: int) -> tuple[int, int]:
    """Question `index` of `kind`: two operands from a hash, version-independent."""
    operation = KINDS[kind]
    digest = int.from_bytes(hashlib.sha256(f"{kind}\x00{index}".encode()).digest(), "big")
    (low_a, high_a), (low_b, high_b) = operation.first, operation.second
    a = low_a + digest % (high_a - low_a + 1)
    b = low_b + (digest >> 64) % (high_b - low_b + 1)
    # a difference is asked larger-first so that no result is negative
    return (max(a, b), min(a, b)) if operation.sign == "-" else (a, b)


def question(kind: str, a: int, b: int) -> Row:
    operation = KINDS[kind]
    result = operation.result(a, b)
    equation = f"{a} {operation.sign} {b}"
    answers = [str(result), f"{equation} = {result}"]
    if operation.sign == "x":
        # the same equation as the model may write it, with the other multiplication signs
        answers += [f"{a} * {b} = {result}", f"{a} × {b} = {result}"]
    return {
        "question_id": f"{kind}:{a}{operation.sign}{b}",
        "question": f"What is {equation}?",
        "answers": answers,
        "kind": kind,
    }


@functools.cache
def kind_rows(kind: str, count: int) -> tuple[Row, ...]:
    """The first `count` distinct questions of `kind`."""
    rows: dict[str, Row] = {}
    index = 0
    while len(rows) < count:
        row = question(kind, *operands(kind, index))
        rows.setdefault(row["question_id"], row)
        index += 1
    return tuple(rows.values())


def candidates(kinds: Mapping[str, int | None]) -> list[Row]:
    """The pool for a kind mix, in question_id order."""
    pool = [
        row
        for kind, count in kinds.items()
        for row in kind_rows(
            kind, min(QUESTIONS_PER_KIND, KINDS[kind].distinct) if count is None else count
        )
    ]
    return sorted(pool, key=lambda row: row["question_id"])


def resolve_kinds(kinds: Mapping[str, Any] | None) -> dict[str, int | None]:
    """The `kinds` option checked; a count above a kind's distinct questions would never fill."""
    resolved = check_kind_counts(kinds, KINDS, source="arithmetic", default=DEFAULT_KINDS)
    for kind, count in resolved.items():
        if count is not None and count > KINDS[kind].distinct:
            raise ValueError(
                f"{option_key('kinds')}.{kind}={count}: {kind} has only "
                f"{KINDS[kind].distinct} distinct questions; ask for at most that many."
            )
    return resolved


def check_source(*, kinds: Mapping[str, Any] | None = None, split_seed: int = 0) -> None:
    """Validate the options (nothing to read: the questions are generated)."""
    resolve_kinds(kinds)
    check_split_seed(split_seed)


def load(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    kinds: Mapping[str, Any] | None = None,
    split_seed: int = 0,
) -> QuestionSplits:
    """Generate the pool for `kinds` and split it (eval by `split_seed`, train by `seed`).

    kinds: question kind -> questions of that kind (null: QUESTIONS_PER_KIND, 0: none); None
        uses DEFAULT_KINDS. Kinds left out of the mapping are not asked.
    split_seed: picks the eval set; keep it fixed across a study.
    """
    resolved = resolve_kinds(kinds)
    check_split_seed(split_seed)
    return split_candidates(
        candidates(resolved),
        train_size=train_size,
        eval_size=eval_size,
        seed=seed,
        split_seed=split_seed,
        source="arithmetic",
    )
