"""Chemical-element questions built offline from the periodictable package (data=elements).

An out-of-domain evaluation set for a run trained on geography: the same kind of short factual
answer, another field of knowledge, and no network (periodictable ships its tables in the
wheel). Each of the 118 elements gives one question of each kind:

    symbol             What is the chemical symbol for iron?             Fe
    element_of_symbol  Which chemical element has the symbol Fe?         Iron
    atomic_number      What is the atomic number of iron?                26
    element_of_number  Which chemical element has atomic number 26?      Iron

Gold answers are the package's name (American spelling: "aluminum", "cesium", "sulfur") plus the
other spellings in use ("aluminium", "caesium", "sulphur") and "wolfram" for tungsten. An atomic
number is also accepted as the sentence the question asks for ("atomic number 26"). The symbol
question for gold is left out: "What is the chemical symbol for gold?" is a few-shot turn of
every prompt we ship (conf/prompt/), so the model would be shown its answer.

Several symbols are English words ("I", "In", "As", "At", "Be", "No"); the grader's framing words
include some of them, so "In" for indium is right only as the whole answer or beside other framing
words, never beside another candidate ("In Fe" earns nothing).

Difficulty for SmolLM2-135M-Instruct (greedy, the default prompt, 48 new tokens), measured once
on the default set's 300 questions: 19.0% in all; symbol 54%, element of symbol 10%, atomic
number 5%, element of number 1% (`experiments/transfer/README.md`). The model writes symbols it
can guess from the name and little else, so the kinds spread from easy to near-impossible.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from entropic.data import (
    QuestionSplits,
    check_kind_counts,
    check_split_seed,
    option_key,
    rank_by_seed,
    split_candidates,
)

Row = dict[str, Any]

KINDS_KEY = option_key("kinds")

# Other spellings and names in common use; the package's own (American) name stays canonical.
OTHER_NAMES = {
    "aluminum": ["aluminium"],
    "cesium": ["caesium"],
    "sulfur": ["sulphur"],
    "tungsten": ["wolfram"],
}

# Questions a prompt we ship shows with their answer (a few-shot turn of conf/prompt/*.yaml).
SHOWN_IN_PROMPTS = frozenset({"symbol:Au"})


def element_names(name: str) -> list[str]:
    """Gold aliases for an element's name, canonical first and capitalised as an answer."""
    return [spelling.capitalize() for spelling in [name, *OTHER_NAMES.get(name, [])]]


@functools.cache
def elements() -> tuple[tuple[int, str, str], ...]:
    """(atomic number, symbol, name) of every element, hydrogen to oganesson; element 0 of the
    package is the neutron, not an element."""
    import periodictable

    return tuple(
        (element.number, element.symbol, element.name)
        for element in periodictable.elements
        if element.number > 0
    )


def questions_of(number: int, symbol: str, name: str) -> dict[str, Row]:
    """The four questions one element gives, by kind."""
    names = element_names(name)
    return {
        "symbol": {
            "question": f"What is the chemical symbol for {name}?",
            "answers": [symbol],
        },
        "element_of_symbol": {
            "question": f"Which chemical element has the symbol {symbol}?",
            "answers": names,
        },
        "atomic_number": {
            "question": f"What is the atomic number of {name}?",
            "answers": [str(number), f"atomic number {number}"],
        },
        "element_of_number": {
            "question": f"Which chemical element has atomic number {number}?",
            "answers": names,
        },
    }


KINDS = ("symbol", "element_of_symbol", "atomic_number", "element_of_number")


@functools.cache
def kind_rows(kind: str) -> tuple[Row, ...]:
    """Every question of `kind`, in atomic-number order."""
    rows = []
    for number, symbol, name in elements():
        question_id = f"{kind}:{symbol}"
        if question_id in SHOWN_IN_PROMPTS:
            continue
        question = questions_of(number, symbol, name)[kind]
        rows.append({"question_id": question_id, "kind": kind, **question})
    return tuple(rows)


def candidates(kinds: Mapping[str, int | None]) -> list[Row]:
    """The pool for a kind mix: up to `limit` questions per kind (all for None), picked by a
    seed-free ranking so the same `kinds` option always gives the same pool."""
    pool = []
    for kind, limit in kinds.items():
        rows = list(kind_rows(kind))
        if limit is not None:
            rows = rank_by_seed(rows, f"kinds:{kind}")[:limit]
        pool.extend(rows)
    return sorted(pool, key=lambda row: row["question_id"])


def check_source(*, kinds: Mapping[str, Any] | None = None, split_seed: int = 0) -> None:
    """Validate the options without reading the package's tables."""
    check_kind_counts(kinds, KINDS, source="elements")
    check_split_seed(split_seed)


def load(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    kinds: Mapping[str, Any] | None = None,
    split_seed: int = 0,
) -> QuestionSplits:
    """Build the element pool for `kinds` and split it (eval by `split_seed`, train by `seed`).

    kinds: question kind -> most questions of that kind (null: all 118, 0: none); None asks
        every kind. Kinds left out of the mapping are not asked.
    split_seed: picks the eval set; keep it fixed across a study.
    """
    resolved = check_kind_counts(kinds, KINDS, source="elements")
    check_split_seed(split_seed)
    return split_candidates(
        candidates(resolved),
        train_size=train_size,
        eval_size=eval_size,
        seed=seed,
        split_seed=split_seed,
        source="elements",
    )
