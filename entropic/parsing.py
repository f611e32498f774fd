"""Read the answer and the stated confidence out of a model completion.

The prompt asks for two lines, ``Answer: <answer>`` then ``Confidence: <0-100>``; the tag format
``<answer>...</answer><confidence>...</confidence>`` is read too. Rewards and evaluation both call
`parse_completion`, so whatever it accepts is what training pays for: it is lenient about layout
(case, spacing, markdown bold, a ``%`` sign) and strict about values (anything that is not a
plain number in range gives ``None``, never a clamped guess).

How a confidence value is read:

- with a ``%`` sign it is a percentage: ``85%`` -> 0.85, ``0.5%`` -> 0.005;
- with a decimal point and at most 1 it is a probability: ``0.85`` -> 0.85, ``1.0`` -> 1.0;
- otherwise (an integer, or a decimal above 1) it is a percentage: ``85`` -> 0.85, ``1`` -> 0.01,
  ``50.5`` -> 0.505. The prompt asks for 0-100, so a bare integer is always read on that scale.

Above 100 %, negative, NaN/inf, ranges (``80-90``), fractions (``8/10``) and words give ``None``.

Only the first ``Answer`` and the first ``Confidence`` count: the model must commit, and reading a
later line would let it list several answers and be graded on whichever we happened to pick (a
small model that goes on to invent the next question and answer it is graded on its own answer).

The `reasoning` prompt format (`prompt=reasoning`) is the exception: the model thinks first, and
its reasoning may say "Answer: ..." on the way to the final lines, so the *last* ``Answer`` and the
last ``Confidence`` count there. `reasoning_text` gives what came before the answer that was read.
"""

import math
import re

# After a key: markdown emphasis small models add (`**Confidence:** 85`, `__Answer__:`) and a
# parenthetical echoing the prompt (`Confidence (0-100): 85`). Spaces and emphasis share one
# character class because adjacent `[ \t]*` runs backtrack polynomially on long blank runs.
_KEY_SUFFIX = r"[ \t*_]*(?:\([^)\n]*\)[ \t*_]*)?:[ \t*_]*"
# Keys must not follow a letter or digit; `\b` would miss `__Answer__:`, as `_` is a word character.
_ANSWER_KEY = re.compile(rf"(?<![^\W_])answer{_KEY_SUFFIX}(?P<answer>[^\r\n]*)", re.IGNORECASE)
_CONFIDENCE_KEY = re.compile(rf"(?<![^\W_])confidence{_KEY_SUFFIX}", re.IGNORECASE)
_ANSWER_TAG = re.compile(r"<answer>(?P<answer>.*?)</answer>", re.IGNORECASE | re.DOTALL)
_CONFIDENCE_TAG = re.compile(r"<confidence>(?P<value>.*?)</confidence>", re.IGNORECASE | re.DOTALL)
# An unsigned number that ends the token: a sign, `85-90`, `8/10`, `1e5`, `0.8.5` give no match.
_NUMBER = re.compile(
    r"[ \t]*(?P<number>\d+(?:\.\d+)?|\.\d+)[ \t]*(?P<percent>%)?(?![^\W_]|[/\-]|\.\d)"
)
# Wrapping we take off an answer; `Paris.` ends a sentence, the period is not part of the answer.
_ANSWER_WRAPPING = " \t*_\"'`“”‘’"
_ANSWER_TRAILING = _ANSWER_WRAPPING + ".,;:(|-"


# Prompt formats (PromptConfig.format) whose final Answer/Confidence lines count, not the first.
LAST_COUNTS = frozenset({"reasoning"})


def parse_completion(text: str, fmt: str = "lines") -> tuple[str | None, float | None]:
    """Return ``(answer, confidence)`` from a completion; either is ``None`` when absent or invalid.

    The answer is the rest of the first ``Answer:`` line (cut at a ``Confidence`` key on the same
    line) or the content of the first ``<answer>`` tag, whichever comes first, with whitespace,
    quotes, markdown emphasis and a trailing period stripped. An empty answer is ``None``.
    The confidence is in [0, 1]; see the module docstring for how its value is read. With
    ``fmt="reasoning"`` the last key or tag counts instead of the first.
    """
    last = fmt in LAST_COUNTS
    return _parse_answer(text, last), _parse_confidence(text, last)


def confidence_key_start(text: str, fmt: str = "lines") -> int | None:
    """Character offset where the confidence that `parse_completion` reads begins (its key or
    tag), or None: training uses it to tell the answer tokens from the confidence tokens."""
    match = _key_match(text, fmt in LAST_COUNTS, _CONFIDENCE_KEY, _CONFIDENCE_TAG)
    return None if match is None else match.start()


def reasoning_text(text: str, fmt: str = "lines") -> str:
    """What the completion says before the answer `parse_completion` reads (the whole text when
    there is none): the reasoning of `prompt=reasoning`, usually nothing in the short format."""
    match = _key_match(text, fmt in LAST_COUNTS, _ANSWER_KEY, _ANSWER_TAG)
    return (text if match is None else text[: match.start()]).strip()


def _key_match(text: str, last: bool, *patterns: re.Pattern[str]) -> re.Match[str] | None:
    """The first (or last) match of any of `patterns` in `text`."""
    matches = [match for pattern in patterns for match in pattern.finditer(text)]
    if last:
        return max(matches, key=lambda match: match.start(), default=None)
    return min(matches, key=lambda match: match.start(), default=None)


def _parse_answer(text: str, last: bool) -> str | None:
    match = _key_match(text, last, _ANSWER_KEY, _ANSWER_TAG)
    if match is None:
        return None
    answer = _CONFIDENCE_KEY.split(match["answer"], maxsplit=1)[0]
    answer = " ".join(answer.split())
    # Alternate the two strips until stable: `**"Paris".**` needs emphasis, period, then quotes.
    previous = None
    while answer != previous:
        previous = answer
        answer = answer.strip(_ANSWER_WRAPPING).rstrip(_ANSWER_TRAILING)
    return answer or None


def _parse_confidence(text: str, last: bool) -> float | None:
    match = _key_match(text, last, _CONFIDENCE_KEY, _CONFIDENCE_TAG)
    if match is None:
        return None
    value_text = match["value"] if match.re is _CONFIDENCE_TAG else text[match.end() :]
    number = _NUMBER.match(value_text)
    if number is None:
        return None
    value = float(number["number"])
    if not math.isfinite(value):
        return None
    is_probability = not number["percent"] and "." in number["number"] and value <= 1
    confidence = value if is_probability else value / 100
    return confidence if confidence <= 1 else None
