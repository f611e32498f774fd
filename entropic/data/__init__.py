"""Factual question sets with gold answer aliases, split into a training pool and an eval set.

Every source returns a `QuestionSplits` whose two `datasets.Dataset`s share one schema:

    question_id  str        stable across runs and machines, e.g. "capital:FR"
    question     str        the question shown to the model
    answers      list[str]  gold aliases, the first one canonical
    kind         str        question type, e.g. "capital"; metrics can be broken down by it

Sources (the `data` config group; `conf/data/<name>.yaml` holds each one's options):

    geo       questions built offline from the countrystatecity-countries package (default)
    triviaqa  TriviaQA rc.nocontext from the Hugging Face hub (needs network)
    jsonl     a user's own file, one {"question": ..., "answers": [...]} per line

Splits are a pure function of the options and seeds. Each candidate is ranked by a SHA-256 hash of
(seed, question_id) rather than by a shuffled list, so the ranking does not change with the Python
or NumPy version, nor when unrelated candidates are added to or removed from the pool. The eval set
is the `eval_size` best-ranked candidates under `split_seed` and so does not depend on
`train_size`: a 1,600-question and a 5,000-question pool are evaluated on the same questions. The
training pool is the `train_size` best-ranked remaining candidates under the run's `seed`, so a
smaller pool is a subset of a larger one drawn with the same seed.

    from entropic.data import check_source, load_questions
    check_source("jsonl", path="my_questions.jsonl")      # cheap, before any model is loaded
    splits = load_questions("geo", train_size=1600, eval_size=200, seed=0)
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import datasets

from entropic.config import TRAIN_MIXES

FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "kind": datasets.Value("string"),
    }
)

# load_questions passes these itself; every other keyword of a loader is a loader option.
SIZE_ARGUMENTS = ("train_size", "eval_size", "seed")

# Where the composed config keeps each size and the loader options, so that every error names the
# key to change. conf/data/<name>.yaml lists a loader's options next to name and the sizes
# (entropic.config gathers them into DataConfig.options), so an option's key is data.<option>.
SIZE_KEYS = {"train_size": "data.train_size", "eval_size": "data.eval_size", "seed": "seed"}
OPTIONS_KEY = "data"


def option_key(option: str) -> str:
    """The config key of a loader option, e.g. "data.path"."""
    return f"{OPTIONS_KEY}.{option}"


@dataclass(frozen=True)
class QuestionSplits:
    """The training pool and the held-out eval questions; their question_ids never overlap."""

    train: datasets.Dataset
    eval: datasets.Dataset


def rows_to_dataset(rows: Iterable[Mapping[str, Any]]) -> datasets.Dataset:
    """Build a Dataset with the shared schema (explicit features keep an empty set typed)."""
    rows = list(rows)
    return datasets.Dataset.from_dict(
        {column: [row[column] for row in rows] for column in FEATURES}, features=FEATURES
    )


def rank_by_seed(rows: Iterable[Mapping[str, Any]], seed: int | str) -> list[Mapping[str, Any]]:
    """Order rows by SHA-256 of (seed, question_id): a seeded shuffle that never depends on the
    library version or on which other rows are present."""

    def key(row: Mapping[str, Any]) -> bytes:
        return hashlib.sha256(f"{seed}\x00{row['question_id']}".encode()).digest()

    return sorted(rows, key=key)


def take_eval(
    rows: Iterable[Mapping[str, Any]], *, eval_size: int, split_seed: int, source: str
) -> list[Mapping[str, Any]]:
    """The `eval_size` candidates ranked first under `split_seed`."""
    ranked = rank_by_seed(rows, split_seed)
    if eval_size > len(ranked):
        raise ValueError(
            f"data={source} has {len(ranked)} candidate eval questions but "
            f"data.eval_size={eval_size}; lower data.eval_size to at most {len(ranked)}."
        )
    return ranked[:eval_size]


def take_train(
    rows: Iterable[Mapping[str, Any]], *, train_size: int, seed: int, source: str
) -> list[Mapping[str, Any]]:
    """The `train_size` candidates ranked first under the run's `seed`."""
    ranked = rank_by_seed(rows, seed)
    if train_size > len(ranked):
        raise ValueError(
            f"data={source} has {len(ranked)} questions available for training after the eval "
            f"set is held out, but data.train_size={train_size}; lower data.train_size to at "
            f"most {len(ranked)} (or data.eval_size), or widen the source's options."
        )
    return ranked[:train_size]


def check_kind_counts(
    kinds: Mapping[str, Any] | None,
    valid: Iterable[str],
    *,
    source: str,
    default: Mapping[str, int | None] | None = None,
) -> dict[str, int | None]:
    """A source's `kinds` option (question kind -> most questions, null: all, 0: off) checked,
    with None meaning `default` (every kind, all of its questions, when no default is given).
    Raises ValueError naming the key when a kind is unknown, a count is not one, or every kind
    is off."""
    valid = tuple(valid)
    key = option_key("kinds")
    if kinds is None:
        return dict(default) if default is not None else dict.fromkeys(valid)
    if not isinstance(kinds, Mapping):
        raise ValueError(
            f"{key}={kinds!r} must map question kinds to counts, e.g. "
            f"{{{valid[0]}: null, {valid[-1]}: 100}}; valid kinds: {', '.join(valid)}."
        )
    resolved = {}
    for kind, limit in dict(kinds).items():
        if kind not in valid:
            raise ValueError(
                f"{key}.{kind} is not a {source} question kind; valid kinds: {', '.join(valid)}."
            )
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
            raise ValueError(
                f"{key}.{kind}={limit!r} must be a count of questions (0 to switch the "
                "kind off) or null for all of them."
            )
        if limit is not None and limit < 0:
            raise ValueError(f"{key}.{kind}={limit} must be >= 0 (0 switches the kind off).")
        resolved[kind] = limit
    if not any(limit is None or limit > 0 for limit in resolved.values()):
        raise ValueError(
            f"{key} switches every {source} question kind off; give at least one kind a count "
            f"above 0 or null. Valid kinds: {', '.join(valid)}."
        )
    return resolved


def check_split_seed(split_seed: Any) -> None:
    if isinstance(split_seed, bool) or not isinstance(split_seed, int):
        raise ValueError(
            f"{option_key('split_seed')}={split_seed!r} must be an integer (the eval set's seed)."
        )


def split_candidates(
    rows: Iterable[Mapping[str, Any]],
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    split_seed: int,
    source: str,
) -> QuestionSplits:
    """Carve a single candidate pool into eval (by `split_seed`) and train (by `seed`)."""
    rows = list(rows)
    if not rows:
        raise ValueError(f"data={source} has no questions at all; check its options.")
    eval_rows = take_eval(rows, eval_size=eval_size, split_seed=split_seed, source=source)
    held_out = {row["question_id"] for row in eval_rows}
    rest = [row for row in rows if row["question_id"] not in held_out]
    train_rows = take_train(rest, train_size=train_size, seed=seed, source=source)
    return QuestionSplits(train=rows_to_dataset(train_rows), eval=rows_to_dataset(eval_rows))


def draw_subset(
    pool: datasets.Dataset, count: int, seed: int, mix: str = "pool"
) -> datasets.Dataset:
    """`count` questions of the training pool (all of them when it holds fewer).

    "pool": the first `count` of the pool shuffled by `seed`, so the kinds come in about the
    pool's proportions. "by_kind": the kinds (in name order) take turns, each giving its next
    question in that same shuffled order, so every kind gets count / kinds questions, and a kind
    that runs out leaves its turns to the others. The held-out split is never touched.
    """
    if mix not in TRAIN_MIXES:
        raise ValueError(f"unknown training mix {mix!r}; use one of {', '.join(TRAIN_MIXES)}.")
    shuffled = pool.shuffle(seed=seed)
    count = min(count, len(shuffled))
    if mix == "pool":
        return shuffled.select(range(count))
    queues: dict[str, list[int]] = {}
    for index, kind in enumerate(shuffled["kind"]):
        queues.setdefault(kind, []).append(index)
    turns = [queues[kind] for kind in sorted(queues)]
    # round by round: every kind's first question, then every kind's second, and so on
    chosen = [
        queue[position]
        for position in range(max(map(len, turns), default=0))
        for queue in turns
        if position < len(queue)
    ]
    return shuffled.select(chosen[:count])


# The loaders import the helpers above from this package, so they are imported only once those
# helpers exist.
from entropic.data import arithmetic, elements, geo, jsonl, triviaqa  # noqa: E402

# Each loader takes (*, train_size, eval_size, seed, **its options) and returns QuestionSplits;
# train_size=0 loads the eval set alone (an evaluation set of another run, entropic.evaluate).
# The names are entropic.config.DATA_SOURCES too, which refuses an unknown one before torch loads
# (tests/test_data.py holds the two to the same names).
DATASETS: dict[str, Callable[..., QuestionSplits]] = {
    "geo": geo.load,
    "triviaqa": triviaqa.load,
    "jsonl": jsonl.load,
    "elements": elements.load,
    "arithmetic": arithmetic.load,
}

# Each check takes the same options as its loader and raises ValueError without reading much.
SOURCE_CHECKS: dict[str, Callable[..., None]] = {
    "geo": geo.check_source,
    "triviaqa": triviaqa.check_source,
    "jsonl": jsonl.check_source,
    "elements": elements.check_source,
    "arithmetic": arithmetic.check_source,
}


def option_names(name: str) -> list[str]:
    """The options (data.<option> keys) that source `name` accepts."""
    parameters = inspect.signature(DATASETS[_known_name(name)]).parameters
    return [key for key in parameters if key not in SIZE_ARGUMENTS]


def load_questions(
    name: str, *, train_size: int, eval_size: int, seed: int, **options: Any
) -> QuestionSplits:
    """Load source `name` and split it; raises ValueError naming the config key on bad input."""
    _check_sizes(train_size=train_size, eval_size=eval_size, seed=seed)
    _check_option_names(name, options)
    splits = DATASETS[name](train_size=train_size, eval_size=eval_size, seed=seed, **options)
    for split_name, split in (("train", splits.train), ("eval", splits.eval)):
        if len(split) == 0:
            # Sizes are checked above, so only a source with no usable questions gets here.
            raise ValueError(
                f"data={name} produced an empty {split_name} split: the source has no usable "
                "questions for it. Check its options."
            )
    overlap = set(splits.train["question_id"]) & set(splits.eval["question_id"])
    if overlap:
        # A loader bug rather than a user error: eval questions must never be trained on.
        raise RuntimeError(f"data={name}: train and eval share question_ids {sorted(overlap)[:5]}")
    return splits


def load_eval_questions(
    name: str, *, eval_size: int, key: str | None = None, **options: Any
) -> datasets.Dataset:
    """Source `name`'s eval draw alone, without a training pool: an evaluation set of a run that
    trains on another source, or the data of a job that only evaluates. `key` is where an
    evaluation set sits in the config ("eval.sets.elements"): errors then name its keys
    (`<key>.size`, `<key>.<option>`) instead of the data group's."""
    try:
        _check_sizes(eval_size=eval_size)
        _check_option_names(name, options)
        questions = DATASETS[name](train_size=0, eval_size=eval_size, seed=0, **options).eval
        if len(questions) == 0:
            raise ValueError(f"data={name} gave no questions; check its options.")
    except ValueError as err:
        raise ValueError(keys_of_set(str(err), name, key) if key else str(err)) from err
    return questions


def check_eval_source(name: str, *, key: str, **options: Any) -> None:
    """`check_source` for an evaluation set at `key`: its errors name the set's keys."""
    try:
        check_source(name, **options)
    except ValueError as err:
        raise ValueError(keys_of_set(str(err), name, key)) from err


def keys_of_set(message: str, name: str, key: str) -> str:
    """A loader's message with the data group's keys it names (data=<source>, data.eval_size,
    data.<option>) rewritten as an evaluation set's (<key>.source=, <key>.size, <key>.<option>),
    so the fix it gives is one the user can type."""
    valid = [*option_names(name), *SIZE_ARGUMENTS] if name in DATASETS else list(SIZE_ARGUMENTS)
    message = re.sub(r"(?<![\w/.])data\.eval_size\b", f"{key}.size", message)
    options = "|".join(re.escape(option) for option in valid)
    message = re.sub(rf"(?<![\w/.])data\.({options})\b", rf"{key}.\1", message)
    return re.sub(r"(?<![\w/.])data=", f"{key}.source=", message)


def check_source(name: str, **options: Any) -> None:
    """Validate source `name` and its options cheaply, before any model is loaded.

    Accepts the loader options and, when the caller keeps them in the same config node,
    train_size / eval_size / seed too.
    """
    sizes = {key: options.pop(key) for key in SIZE_ARGUMENTS if key in options}
    _check_sizes(**sizes)
    _check_option_names(name, options)
    SOURCE_CHECKS[name](**options)


def _known_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(
            f"Unknown data source {name!r}; valid names: {', '.join(DATASETS)}. "
            f"Choose one with data={'|'.join(DATASETS)}."
        )
    return name


def _check_option_names(name: str, options: Mapping[str, Any]) -> None:
    valid = option_names(name)
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise ValueError(
            f"data={name} has no option(s) {', '.join(option_key(key) for key in unknown)}; "
            f"valid options: {', '.join(option_key(key) for key in valid) or 'none'}."
        )


def _check_sizes(**sizes: Any) -> None:
    for name, value in sizes.items():
        minimum = 0 if name == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            what = "an integer >= 0" if minimum == 0 else "a count >= 1 (0 gives an empty split)"
            raise ValueError(f"{SIZE_KEYS[name]}={value!r} must be {what}.")
