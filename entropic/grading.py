"""Decide whether a parsed answer matches any of a question's gold aliases.

Correctness is the label that both the reward and every calibration metric are built on, and RL
finds loopholes fast: a grader that credits "Paris or Lyon" for Paris teaches the model to hedge
inside the answer instead of in its confidence. The rules below are therefore strict about lists
of candidates and lenient only about wording around a single answer ("Paris, France").

Near misses a fair grader keeps (each a case in tests/test_grading.py): "Paris, France" and
"Paris (France)" for Paris (a qualifier after the answer, and only the first candidate can earn);
"the Netherlands" for Netherlands (articles go); "Kingdom of Denmark" or "the Republic of Kenya"
for Denmark or Kenya (framing words, `FILLER_WORDS`); "It is probably Paris"; and, given the
question, "Fiumicello, Italy" for "In which country is the city of Fiumicello?" (the subject
restated before the answer). Refused: any other word beside the answer ("France Germany", "Paris
Lyon Marseille", "South Africa" for the continent Africa), a negation ("not Paris"), and a
question or exclamation mark ("Paris? No, Lyon").
"""

import re
import string
import unicodedata
from collections.abc import Sequence

# Containment credit is for short answers only; a long one can mention the gold in passing.
MAX_ANSWER_WORDS = 8

_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
# The only words that may stand beside the answer inside its own segment: how an answer is framed
# ("it is probably"), and the words of a single place's formal name ("Kingdom of", "the city of").
# No word here can name a candidate, so a list without separators ("France Germany") and a
# negation ("not Paris", "Paris is wrong") earn nothing. After a qualifier separator ("Paris,
# France", "Paris (France)") any words may follow: only the first segment can earn.
# fmt: off
FILLER_WORDS = frozenset({
    "i", "it", "its", "is", "was", "be", "would", "say", "think", "believe", "guess", "my",
    "answer", "probably", "likely", "most", "maybe",
    "located", "in", "on", "of", "at", "called", "named", "known", "as",
    "city", "town", "capital", "country", "nation", "state", "province", "region", "continent",
    "kingdom", "republic", "currency",
})
# fmt: on
# Separators between candidates. A comma between digits is a thousands separator ("1,000").
# No surrounding \s*: normalisation drops the spaces, and \s* runs would backtrack quadratically.
_SEPARATOR = re.compile(r"(\bor\b|\band\b|[&;/|?!(]|(?<!\d),|,(?!\d))", re.IGNORECASE)
# Markers contain punctuation, so they can never collide with a normalised word.
_SEPARATOR_MARKERS = {
    "or": "<or>",
    ";": "<;>",
    "/": "</>",
    "|": "<|>",
    "and": "<and>",
    "&": "<and>",
    ",": "<,>",
    # an opening parenthesis starts a qualifier, as a comma does: "Paris (France)"
    "(": "<,>",
    # a question or exclamation mark ends a claim: "Paris? No, Lyon" offers two
    "?": "<?>",
    "!": "<?>",
}
_MARKERS = frozenset(_SEPARATOR_MARKERS.values())
# "Paris or Lyon", "Paris; Lyon", "Paris/Lyon": always a choice between candidates.
_HEDGE_MARKERS = frozenset({"<or>", "<;>", "</>", "<|>", "<?>"})


def normalize_answer(text: str) -> str:
    """Normalise text the SQuAD / TriviaQA way, plus accent stripping.

    Steps: strip accents (NFKD, then drop combining marks, so "São Tomé" matches "Sao Tome"),
    lower-case, delete punctuation (any Unicode punctuation as well as ASCII symbols, so "U.S."
    becomes "us" and "1,000" becomes "1000"), delete the articles a/an/the, collapse whitespace.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(char for char in decomposed if not unicodedata.combining(char)).lower()
    text = "".join(char for char in text if not _is_punctuation(char))
    return " ".join(_ARTICLES.sub(" ", text).split())


def is_correct(
    answer: str | None,
    aliases: Sequence[str],
    max_answer_words: int = MAX_ANSWER_WORDS,
    question: str | None = None,
) -> bool:
    """Return True when ``answer`` names one of the gold ``aliases`` and nothing else.

    After `normalize_answer`, an answer is correct when it equals an alias, or when it has at most
    ``max_answer_words`` words and contains a non-empty alias as a whole-word sequence that is not
    part of a list of candidates. The answer is cut at separators, except those inside the
    matched alias itself (so "Trinidad and Tobago" still counts as one name):

    - " or ", ";", "/", "|", "?", "!" anywhere outside the alias make it a hedge: "Paris or
      Lyon", "Either Paris or Rome", "Paris/Lyon", "Paris? No, Lyon" earn nothing even when
      Paris is gold.
    - "," and " and " (or "&") make it a list when the alias is not in the first segment or
      when there are more than two segments. "Paris, France" is correct for Paris, and so is
      "Paris, Lyon": since only the first segment can earn credit, a second candidate never
      raises the reward over answering the first alone, so it is not a loophole. "Lyon, Paris"
      and "Paris, Lyon, Marseille" earn nothing. "(" starts a qualifier as "," does.
    - Inside the alias's own segment every other word must be one of `FILLER_WORDS`, so a list
      without separators ("France Germany", "Paris Lyon Marseille") and a negation ("not
      Paris") earn nothing.

    With the ``question``, an answer may first restate what the question is about: "Fiumicello,
    Italy" for "In which country is the city of Fiumicello?", "Nairobi, Kenya" for "Which country
    has Nairobi as its capital?". When the first segment (up to the first "," or "(") holds only
    words of the question and `FILLER_WORDS`, the rest is graded as the answer, by the rules
    above. Naming the subject adds nothing, so it opens no loophole, except in a question that
    offers its own candidates ("Which is larger, Mars or Venus?": "Mars, Venus" would name both),
    so a question with "or" in it gets no such reading.

    A ``None`` or empty answer is wrong.
    """
    if _names_alias(answer, aliases, max_answer_words):
        return True
    rest = _after_restated_subject(answer, question)
    return rest is not None and _names_alias(rest, aliases, max_answer_words)


def _names_alias(answer: str | None, aliases: Sequence[str], max_answer_words: int) -> bool:
    """`is_correct` without the question."""
    if answer is None:
        return False
    normalized_aliases = {normalize_answer(alias) for alias in aliases} - {""}
    normalized_answer = normalize_answer(answer)
    if not normalized_answer:
        return False
    if normalized_answer in normalized_aliases:
        return True
    if len(normalized_answer.split()) > max_answer_words:
        return False
    answer_tokens = _tokens(answer)
    return any(
        _is_single_candidate_match(answer_tokens, start, start + len(alias_tokens))
        for alias_tokens in (_tokens(alias) for alias in aliases)
        if any(token not in _MARKERS for token in alias_tokens)
        for start in _occurrences(alias_tokens, answer_tokens)
    )


def _after_restated_subject(answer: str | None, question: str | None) -> str | None:
    """What follows a first segment that only restates the question, or None if there is none."""
    if not answer or not question:
        return None
    question_words = set(normalize_answer(question).split())
    if "or" in question_words:
        return None
    first_separator = _SEPARATOR.search(answer)
    # only a qualifier separator ("," or "(", both read as "<,>") can follow a restated subject
    if first_separator is None or _SEPARATOR_MARKERS[first_separator.group(0).lower()] != "<,>":
        return None
    subject = normalize_answer(answer[: first_separator.start()]).split()
    named = [word for word in subject if word not in FILLER_WORDS]
    if not named or any(word not in question_words for word in named):
        return None
    return answer[first_separator.end() :]


def _is_punctuation(char: str) -> bool:
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def _tokens(text: str) -> list[str]:
    """Normalised words with each separator kept as a marker such as "<or>" or "<,>"."""
    tokens = []
    # With one capturing group, re.split puts the separators at the odd indices.
    for index, piece in enumerate(_SEPARATOR.split(text)):
        if index % 2:
            tokens.append(_SEPARATOR_MARKERS[piece.lower()])
        else:
            tokens.extend(normalize_answer(piece).split())
    return tokens


def _occurrences(needle: list[str], haystack: list[str]) -> list[int]:
    width = len(needle)
    return [
        start
        for start in range(len(haystack) - width + 1)
        if haystack[start : start + width] == needle
    ]


def _is_single_candidate_match(tokens: list[str], start: int, end: int) -> bool:
    """Whether the alias at ``tokens[start:end]`` is the answer rather than one item of a list."""
    before, after = tokens[:start], tokens[end:]
    if any(token in _HEDGE_MARKERS for token in before + after):
        return False
    separators_before = [token for token in before if token in _MARKERS]
    separators_after = [token for token in after if token in _MARKERS]
    if separators_before or len(separators_after) > 1:
        return False
    segment_end = after.index(separators_after[0]) if separators_after else len(after)
    return all(token in FILLER_WORDS for token in before + after[:segment_end])


# --- behaviour: abstaining and naming alternatives (the reference's "The Pattern" table) -------

# Answers that decline to name anything, after `normalize_answer` ("I don't know." -> "i dont
# know"). An answer that is one of these, or starts with one, abstains. "N/A" is not among them:
# it normalises to "na", the symbol of sodium.
# fmt: off
ABSTENTIONS = (
    "i dont know", "i do not know", "dont know", "do not know", "i am not sure", "im not sure",
    "not sure", "unsure", "unknown", "uncertain", "none", "no answer", "no idea", "nobody",
    "no one", "nothing", "not applicable", "not known", "i cannot", "i cant",
    "cannot be determined", "cannot determine", "it is unclear", "unclear", "there is no",
    "there are no", "no such", "insufficient information", "not enough information",
)
# Words in the reasoning before an answer that bring in another candidate: the reference's
# trained model writes "Saint Vitus is also sometimes associated with dancers" before answering
# Saint Genevieve.
ALTERNATIVE_CUES = (
    "alternatively", "or possibly", "or perhaps", "or maybe", "could also be", "might also be",
    "may also be", "is also sometimes", "also sometimes", "another possibility",
    "other possibilities", "another candidate", "other candidates", "or it could be",
    "either",
)
# fmt: on


def abstains(answer: str | None) -> bool:
    """Whether a parsed answer declines to answer ("I don't know", "None", "Unknown", "There is
    no such operetta"). Graded wrong like any other miss; the behaviour table counts it apart,
    since the reference's trained model learns to do it. No answer at all (a format failure) is
    not an abstention."""
    if answer is None:
        return False
    normalized = normalize_answer(answer)
    return any(
        normalized == phrase or normalized.startswith(phrase + " ") for phrase in ABSTENTIONS
    )


def mentions_alternatives(answer: str | None, reasoning: str = "") -> bool:
    """Whether a completion puts more than one candidate forward: the answer offers a choice
    ("Paris or Lyon", "Paris/Lyon", "Paris? No, Lyon": the separators `is_correct` refuses as
    hedges, with a candidate on each side), or the reasoning before it names another candidate
    ("... could also be Lyon", "Alternatively, ..."). A qualifier ("Paris, France") is one
    candidate; so is a name with "and" in it ("Trinidad and Tobago")."""
    if answer is not None:
        candidates = [[]]
        for token in _tokens(answer):
            if token in _HEDGE_MARKERS:
                candidates.append([])
            else:
                candidates[-1].append(token)
        if sum(1 for words in candidates if any(t not in _MARKERS for t in words)) > 1:
            return True
    text = f" {normalize_answer(reasoning)} "
    return any(f" {normalize_answer(cue)} " in text for cue in ALTERNATIVE_CUES)
