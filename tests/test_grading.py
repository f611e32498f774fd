"""Table-driven tests for `entropic.grading`: normalisation, matching, hedge detection, and the
behaviour rules (abstaining, naming alternatives)."""

import pytest

from entropic.grading import (
    MAX_ANSWER_WORDS,
    abstains,
    is_correct,
    mentions_alternatives,
    normalize_answer,
)

NORMALIZE_CASES = [
    # (text, expected, why)
    ("The Eiffel Tower", "eiffel tower", "lower case and the article goes"),
    ("a cat and an owl", "cat and owl", "all three articles go, other words stay"),
    ("Theatre", "theatre", "articles are whole words only"),
    ("U.S.A.", "usa", "punctuation is deleted, not spaced, so abbreviations stay one word"),
    ("1,000", "1000", "thousands separators vanish"),
    ("O’Neill", "oneill", "Unicode punctuation goes like ASCII"),
    ("São Tomé", "sao tome", "accents are stripped via NFKD"),
    ("  New \t York\n", "new york", "whitespace collapses"),
    ("...", "", "punctuation only normalises to nothing"),
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [case[:2] for case in NORMALIZE_CASES],
    ids=[case[2] for case in NORMALIZE_CASES],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


CORRECT_CASES = [
    # (answer, aliases, expected, why)
    ("Paris", ["Paris"], True, "exact match"),
    ("paris.", ["Paris"], True, "case and punctuation do not matter"),
    ("The Beatles", ["Beatles"], True, "articles do not matter"),
    ("Sao Tome", ["São Tomé"], True, "accents do not matter"),
    ("Lyon", ["Paris"], False, "a wrong answer"),
    ("Pari", ["Paris"], False, "a prefix is not the word"),
    ("Parisian", ["Paris"], False, "containment is by whole words, not characters"),
    ("Paris", ["Lyon", "City of Light", "Paris"], True, "any alias counts"),
    (None, ["Paris"], False, "no parsed answer"),
    ("", ["Paris"], False, "empty answer"),
    ("the", ["The"], False, "an answer and alias that normalise to nothing never match"),
    ("Paris", [], False, "no aliases, nothing can match"),
    ("Paris", ["", "..."], False, "empty aliases are ignored, not matched by everything"),
    ("It is Paris", ["Paris"], True, "containment inside a short answer"),
    ("Paris (France)", ["Paris"], True, "a parenthetical qualifier"),
    ("Paris, France", ["Paris"], True, "city, country names one place, not a list"),
    ("Paris, France", ["France"], False, "the qualifier is not the answer"),
    ("Trinidad and Tobago", ["Trinidad and Tobago"], True, "an alias with 'and' matches whole"),
    ("Trinidad and Tobago, Caribbean", ["Trinidad and Tobago"], True, "'and' inside the alias"),
    ("Hit or Miss (TV series)", ["Hit or Miss"], True, "'or' inside the alias is not a hedge"),
    ("AC/DC", ["AC/DC"], True, "a slash inside the alias"),
    ("It is 1,000", ["1,000"], True, "a thousands comma is not a list separator"),
    ("1,000 metres", ["1,000"], False, "a unit is a word beside the answer: strict, documented"),
    ("Paris or Lyon", ["Paris"], False, "'or' offers two candidates"),
    ("Lyon or Paris", ["Paris"], False, "whichever side the gold is on"),
    ("Either Paris or Rome", ["Paris"], False, "'either ... or' is the same hedge"),
    ("Paris (or maybe Lyon)", ["Paris"], False, "a hedge in parentheses"),
    ("Paris/Lyon", ["Paris"], False, "a slash offers two candidates"),
    ("Paris; Lyon", ["Paris"], False, "a semicolon offers two candidates"),
    ("Paris | Lyon", ["Paris"], False, "a pipe offers two candidates"),
    ("Paris, Lyon, Marseille", ["Paris"], False, "three comma segments are a list"),
    ("Lyon, Paris", ["Paris"], False, "gold in a later comma segment is a list item"),
    ("Lyon and Paris", ["Paris"], False, "gold in a later 'and' segment is a list item"),
    ("Paris, Lyon", ["Paris"], True, "only the first segment can earn, so no gain over 'Paris'"),
    ("Paris and Lyon", ["Paris"], True, "same: the second candidate never adds reward"),
    ("Paris, Lyon", ["Lyon"], False, "and the second candidate earns nothing"),
    ("Paris, Lyon", ["Paris, Lyon"], True, "an answer equal to an alias always counts"),
    ("Paris & Lyon & Nice", ["Paris"], False, "'&' is read as 'and'"),
    ("Paris ,Lyon,Nice", ["Paris"], False, "separators are found whatever the spacing"),
    ("Paris OR Lyon", ["Paris"], False, "separator words are case-insensitive"),
    ("Portland, Oregon", ["Portland"], True, "'or' inside a word is not a separator"),
    # Holes RL finds once training learns (each earned credit before FILLER_WORDS and "?")
    ("France Germany", ["Germany"], False, "a list without separators: the gold is not first"),
    ("France Germany", ["France"], False, "a list without separators: the gold is first"),
    ("Paris Lyon Marseille", ["Paris"], False, "three candidates without separators"),
    ("Paris Lyon Marseille", ["Marseille"], False, "whichever one is gold"),
    ("not Paris", ["Paris"], False, "a negation is not the answer"),
    ("Paris is not right", ["Paris"], False, "a negation after the answer"),
    ("Paris? No, Lyon", ["Paris"], False, "a question mark makes it a second thought"),
    ("Paris? No, Lyon", ["Lyon"], False, "whichever side of it the gold is on"),
    ("Paris! Or Lyon", ["Lyon"], False, "an exclamation mark likewise"),
    ("South Africa", ["Africa"], False, "a country is not its continent: 'south' is a word"),
    ("Paris Paris", ["Paris"], False, "even a repeat is a second word beside the answer"),
    # Near misses a fair grader keeps
    ("Paris (France)", ["France"], False, "a parenthetical qualifier does not earn"),
    ("the Netherlands", ["Netherlands"], True, "an article before a country"),
    ("Kingdom of Denmark", ["Denmark"], True, "a formal name's framing words are filler"),
    ("the Republic of Kenya", ["Kenya"], True, "likewise 'Republic of'"),
    ("The city of Paris", ["Paris"], True, "'the city of' frames one place"),
    ("It is located in Europe", ["Europe"], True, "framing words around a continent"),
    ("Maybe Paris", ["Paris"], True, "one hedged candidate: the confidence says how sure"),
    (
        "I think the answer is probably Paris",
        ["Paris"],
        True,
        "six words is short enough for containment",
    ),
    (
        "well it could be many places but I would say Paris",
        ["Paris"],
        False,
        f"more than {MAX_ANSWER_WORDS} words can mention the gold in passing",
    ),
]


@pytest.mark.parametrize(
    ("answer", "aliases", "expected"),
    [case[:3] for case in CORRECT_CASES],
    ids=[case[3] for case in CORRECT_CASES],
)
def test_is_correct(answer, aliases, expected):
    assert is_correct(answer, aliases) is expected


CITY = "In which country is the city of Fiumicello?"
CAPITAL = "Which country has Nairobi as its capital?"
QUESTION_CASES = [
    # (answer, aliases, question, expected, why)
    ("Fiumicello, Italy", ["Italy"], CITY, True, "the answer after its restated subject"),
    ("Fiumicello (Italy)", ["Italy"], CITY, True, "a bracket after the subject likewise"),
    ("The city of Fiumicello, Italy", ["Italy"], CITY, True, "the subject with framing words"),
    ("Nairobi, Kenya", ["Kenya"], CAPITAL, True, "a capital restated before its country"),
    ("Fiumicello, Italy", ["Italy"], None, False, "without the question it is a list item"),
    ("Fiumicello, France", ["Italy"], CITY, False, "a wrong answer after the subject"),
    ("Fiumicello", ["Italy"], CITY, False, "the subject alone answers nothing"),
    ("Fiumicello, Italy or France", ["Italy"], CITY, False, "a hedge after the subject"),
    ("Fiumicello, France, Italy", ["Italy"], CITY, False, "gold is a later item of the rest"),
    ("Fiumicello or Italy", ["Italy"], CITY, False, "'or' is not a qualifier separator"),
    ("Rome, Italy", ["Italy"], CITY, False, "a first segment the question does not name"),
    ("Italy, Fiumicello", ["Italy"], CITY, True, "the gold first is correct as before"),
    (
        "Mars, Venus",
        ["Venus"],
        "Which is larger, Mars or Venus?",
        False,
        "a question offering candidates: naming both earns nothing",
    ),
]


@pytest.mark.parametrize(
    ("answer", "aliases", "question", "expected"),
    [case[:4] for case in QUESTION_CASES],
    ids=[case[4] for case in QUESTION_CASES],
)
def test_is_correct_after_the_question(answer, aliases, question, expected):
    assert is_correct(answer, aliases, question=question) is expected


@pytest.mark.parametrize(
    ("answer", "aliases", "expected"),
    [case[:3] for case in CORRECT_CASES],
    ids=[case[3] for case in CORRECT_CASES],
)
def test_a_question_that_names_nothing_in_the_answer_changes_nothing(answer, aliases, expected):
    # Why: the question only adds a reading when the answer restates it; these answers do not.
    assert is_correct(answer, aliases, question="What is it called?") is expected


def test_long_answer_is_still_correct_when_it_equals_an_alias():
    # Why: the word limit guards containment only; a long gold title must match itself.
    title = "The Man Who Shot Liberty Valance and Other Stories of the West"
    assert is_correct(title, [title])
    assert not is_correct(title, ["Liberty Valance"])


ABSTAIN_CASES = [
    # (answer, abstains, why)
    ("I don't know", True, "the plainest abstention"),
    ("I do not know.", True, "spelled out, with a full stop"),
    ("None", True, "the reference's trained model answers 'None' for a missing operetta"),
    ("Unknown", True, "a one-word refusal"),
    ("Not sure", True, "a hedge with no candidate"),
    ("There is no such operetta", True, "denying the premise names nothing"),
    ("No one knows", True, "nobody named"),
    ("Paris", False, "an answer"),
    ("Nonetheless, Paris", False, "a word that starts with 'none' is not 'none'"),
    ("Na", False, "sodium's symbol, though 'N/A' normalises to it: N/A is not listed"),
    ("No", False, "nobelium's symbol"),
    ("Nothingham", False, "only whole words"),
    (None, False, "no answer at all is a format failure, not an abstention"),
]


@pytest.mark.parametrize(
    ("answer", "expected"),
    [case[:2] for case in ABSTAIN_CASES],
    ids=[case[2] for case in ABSTAIN_CASES],
)
def test_abstains(answer, expected):
    assert abstains(answer) is expected


ALTERNATIVE_CASES = [
    # (answer, reasoning, mentions alternatives, why)
    ("Paris or Lyon", "", True, "a choice between two candidates"),
    ("Either Paris or Rome", "", True, "either/or"),
    ("Paris/Lyon", "", True, "a slash between candidates"),
    ("Paris? No, Lyon", "", True, "a second thought is a second candidate"),
    ("Paris", "", False, "one candidate"),
    ("Paris, France", "", False, "a qualifier is not a second candidate"),
    ("Trinidad and Tobago", "", False, "a name with 'and' in it is one candidate"),
    ("Paris?", "", False, "a question mark with nothing after it offers nothing else"),
    ("1/2", "", True, "a slash between numbers reads as a choice too (no fraction is asked)"),
    (
        "Saint Genevieve",
        "However, Saint Vitus is also sometimes associated with dancers.",
        True,
        "the reference's trace: the reasoning brings in the right answer, the answer another",
    ),
    (
        "Hieronymus Bosch",
        "That style suggests Bosch, though it could also be Bruegel.",
        True,
        "'could also be' in the reasoning",
    ),
    ("Au", "Gold's Latin name is aurum, so its symbol is Au.", False, "reasoning with no rival"),
    ("Paris", "Neither Lyon nor Marseille is the capital.", False, "'neither' is not 'either'"),
    (None, "", False, "nothing answered, nothing offered"),
]


@pytest.mark.parametrize(
    ("answer", "reasoning", "expected"),
    [case[:3] for case in ALTERNATIVE_CASES],
    ids=[case[3] for case in ALTERNATIVE_CASES],
)
def test_mentions_alternatives(answer, reasoning, expected):
    assert mentions_alternatives(answer, reasoning) is expected
