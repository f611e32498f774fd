"""TriviaQA questions from the Hugging Face hub (data=triviaqa); needs network access.

Reads `mandarjoshi/trivia_qa`, config `rc.nocontext` (questions and answers without the evidence
documents). The training pool is drawn from TriviaQA's train split by the run's `seed`; the eval
set from its validation split by `split_seed`, so it does not depend on train_size. Answers are
`answer.value` first, then `answer.aliases`, repeats removed. Questions keep TriviaQA's wording;
a few end in "." rather than "?".

    python -m entropic.run data=triviaqa

Offline (HF_HUB_OFFLINE=1 or HF_DATASETS_OFFLINE=1) the loader refuses at once rather than
waiting on retries; an unreachable hub is detected with one short request before the download.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import huggingface_hub
import huggingface_hub.constants

from entropic.data import QuestionSplits, check_split_seed, rows_to_dataset, take_eval, take_train

HUB_DATASET = "mandarjoshi/trivia_qa"
HUB_CONFIG = "rc.nocontext"
KIND = "trivia"

# Seconds to wait for the hub before declaring it unreachable.
HUB_TIMEOUT_S = 10.0

FIX = "run with data=geo (offline default) or set HF_HUB_OFFLINE=0 with network access"


def offline_reason() -> str | None:
    """Why the hub must not be used, or None. Reads the environment at call time because the
    libraries read it once at import."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{variable}={os.environ[variable]} is set"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE was set at import)"
    return None


def check_source(*, split_seed: int = 0) -> None:
    """Refuse early when the hub is switched off; makes no network request."""
    check_split_seed(split_seed)
    reason = offline_reason()
    if reason:
        raise ValueError(
            f"TriviaQA needs the Hugging Face hub ({HUB_DATASET}) but {reason}; {FIX}."
        )


def ping_hub() -> None:
    """One short metadata request, so an unreachable hub fails in seconds, not after retries."""
    try:
        huggingface_hub.HfApi().dataset_info(HUB_DATASET, timeout=HUB_TIMEOUT_S)
    except Exception as err:  # any failure here means the download below cannot work
        raise ConnectionError(
            f"TriviaQA needs the Hugging Face hub ({HUB_DATASET}) but it could not be reached "
            f"({type(err).__name__}: {err}); {FIX}."
        ) from err


def to_row(question_id: str, question: str, value: str, aliases: list[str]) -> dict[str, Any]:
    seen: set[str] = set()
    answers = []
    for alias in [value, *aliases]:
        alias = " ".join(str(alias).split())
        if alias and alias.casefold() not in seen:
            seen.add(alias.casefold())
            answers.append(alias)
    return {
        "question_id": str(question_id),
        "question": " ".join(question.split()),
        "answers": answers,
        "kind": KIND,
    }


def read_split(split: str) -> list[dict[str, Any]]:
    """All questions of one TriviaQA split, first occurrence of each question_id kept."""
    try:
        table = datasets.load_dataset(HUB_DATASET, HUB_CONFIG, split=split)
    except (ConnectionError, OSError) as err:
        raise ConnectionError(
            f"TriviaQA ({HUB_DATASET}, {HUB_CONFIG}, {split}) could not be downloaded "
            f"({type(err).__name__}: {err}); {FIX}."
        ) from err
    # Whole columns, not row dicts: the answer struct carries fields we do not need.
    columns = (
        table.select_columns(["question_id", "question", "answer"])
        .flatten()
        .select_columns(["question_id", "question", "answer.value", "answer.aliases"])
        .to_dict()
    )
    rows: dict[str, dict[str, Any]] = {}
    for fields in zip(*columns.values(), strict=True):
        row = to_row(*fields)
        if row["answers"]:
            rows.setdefault(row["question_id"], row)
    return list(rows.values())


def load(*, train_size: int, eval_size: int, seed: int, split_seed: int = 0) -> QuestionSplits:
    """Download (or reuse the cached) TriviaQA and draw the eval set and training pool.

    split_seed: picks the eval questions from the validation split; keep it fixed in a study.
    """
    check_source(split_seed=split_seed)
    ping_hub()
    eval_rows = take_eval(
        read_split("validation"), eval_size=eval_size, split_seed=split_seed, source="triviaqa"
    )
    if train_size == 0:
        # an evaluation set (entropic.data.load_eval_questions): no need for the train split
        return QuestionSplits(train=rows_to_dataset([]), eval=rows_to_dataset(eval_rows))
    # TriviaQA's splits are disjoint by construction; a repeated wording would still leak.
    held_out_ids = {row["question_id"] for row in eval_rows}
    held_out_texts = {row["question"].casefold() for row in eval_rows}
    train_pool = [
        row
        for row in read_split("train")
        if row["question_id"] not in held_out_ids
        and row["question"].casefold() not in held_out_texts
    ]
    train_rows = take_train(train_pool, train_size=train_size, seed=seed, source="triviaqa")
    return QuestionSplits(train=rows_to_dataset(train_rows), eval=rows_to_dataset(eval_rows))
