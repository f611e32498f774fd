"""A user's own questions from a JSON Lines file (data=jsonl).

One JSON object per line; blank lines are skipped:

    {"question": "Who wrote Hamlet?", "answers": ["William Shakespeare", "Shakespeare"]}
    {"question": "What is 7 times 8?", "answers": "56", "id": "math-7x8", "kind": "arithmetic"}

answers   a list of gold aliases, canonical first, or one string
id        optional; the question_id. Without it the id is a hash of the question text, so it stays
          stable when lines are reordered or added
kind      optional question type for per-kind metrics; "jsonl" when absent

Other fields are ignored. The eval set is carved out of the file by `split_seed` exactly as for
geo, so it does not depend on train_size:

    python -m entropic.run data=jsonl data.path=/abs/path/questions.jsonl
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from entropic.data import QuestionSplits, check_split_seed, option_key, split_candidates

DEFAULT_KIND = "jsonl"

PATH_KEY = option_key("path")

EXAMPLE_LINE = '{"question": "Who wrote Hamlet?", "answers": ["William Shakespeare"]}'


def resolve_path(path: str | Path | None) -> Path:
    """The file behind the path option; raises ValueError naming its key when it is unusable."""
    if path is None or not str(path).strip():
        raise ValueError(
            f"data=jsonl needs a file: set {PATH_KEY}=/path/to/questions.jsonl "
            f"(one JSON object per line, e.g. {EXAMPLE_LINE})."
        )
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        reason = "is a directory" if resolved.is_dir() else "does not exist"
        raise ValueError(
            f"{PATH_KEY}={path} {reason} (resolved to {resolved}); point {PATH_KEY} at a JSON "
            "Lines file of questions. Relative paths are read from the directory the run starts in."
        )
    return resolved


def parse_line(line: str, number: int, path: Path) -> dict[str, Any]:
    """One question row from line `number` (1-based) of `path`."""
    where = f"{PATH_KEY}={path}, line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{where} is not valid JSON ({err.msg}); each line must be one object like "
            f"{EXAMPLE_LINE}"
        ) from err
    if not isinstance(record, dict):
        raise ValueError(
            f"{where} is a JSON {type(record).__name__}, not an object like {EXAMPLE_LINE}"
        )
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f'{where} has no "question" string; expected e.g. {EXAMPLE_LINE}')
    answers = record.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if (
        not isinstance(answers, list)
        or not answers
        or not all(isinstance(answer, str) and answer.strip() for answer in answers)
    ):
        raise ValueError(
            f'{where} needs "answers": a non-empty string or a list of non-empty strings '
            f"(canonical first); got {record.get('answers')!r}."
        )
    question = " ".join(question.split())
    question_id = record.get("id")
    if question_id is None:
        question_id = "jsonl:" + hashlib.sha256(question.encode()).hexdigest()[:16]
    elif isinstance(question_id, bool) or not isinstance(question_id, (str, int)):
        raise ValueError(f'{where} has an "id" that is neither a string nor an integer.')
    kind = record.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f'{where} has a "kind" that is not a non-empty string.')
    # Repeated aliases (case-insensitively) add nothing to matching.
    seen: set[str] = set()
    unique_answers = []
    for answer in (" ".join(answer.split()) for answer in answers):
        if answer.casefold() not in seen:
            seen.add(answer.casefold())
            unique_answers.append(answer)
    return {
        "question_id": str(question_id),
        "question": question,
        "answers": unique_answers,
        "kind": kind.strip(),
    }


def read_questions(path: str | Path | None) -> list[dict[str, Any]]:
    """Every question in the file, validated; raises ValueError naming the line on bad input."""
    resolved = resolve_path(path)
    rows = []
    first_line_of_id: dict[str, int] = {}
    first_line_of_text: dict[str, int] = {}
    with resolved.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            parsed = parse_line(line, number, resolved)
            # A repeated question could land in both train and eval; ask the user to merge it.
            text = parsed["question"].casefold()
            for seen, value, what in (
                (first_line_of_text, text, "question"),
                (first_line_of_id, parsed["question_id"], "id"),
            ):
                if value in seen:
                    raise ValueError(
                        f"{PATH_KEY}={resolved}, line {number} repeats the {what} of line "
                        f"{seen[value]}; merge the two lines (their answers into one list)."
                    )
                seen[value] = number
            rows.append(parsed)
    if not rows:
        raise ValueError(
            f"{PATH_KEY}={resolved} contains no questions (the file is empty or blank); add one "
            f"JSON object per line, e.g. {EXAMPLE_LINE}"
        )
    return rows


def check_source(*, path: str | None = None, split_seed: int = 0) -> None:
    """Validate the whole file before any model is loaded (reading it is cheap)."""
    check_split_seed(split_seed)
    read_questions(path)


def load(
    *,
    train_size: int,
    eval_size: int,
    seed: int,
    path: str | None = None,
    split_seed: int = 0,
) -> QuestionSplits:
    """Read `path` and split it (eval by `split_seed`, train by `seed`).

    path: the JSON Lines file (required).
    split_seed: picks the eval set; keep it fixed across a study.
    """
    check_split_seed(split_seed)
    return split_candidates(
        read_questions(path),
        train_size=train_size,
        eval_size=eval_size,
        seed=seed,
        split_seed=split_seed,
        source="jsonl",
    )
