"""Table-driven tests for `entropic.parsing.parse_completion`: each case says why it matters."""

import pytest

from entropic.parsing import confidence_key_start, parse_completion, reasoning_text

ANSWER_CASES = [
    # (completion, expected answer, why)
    ("Answer: Paris\nConfidence: 90", "Paris", "the format the prompt asks for"),
    ("answer:Paris", "Paris", "keys are case-insensitive and the space is optional"),
    ("**Answer:** Paris", "Paris", "markdown bold around the key"),
    ("**Answer**: **Paris**", "Paris", "bold key with the colon outside and a bold value"),
    ("__Answer__: _Paris_", "Paris", "underscore emphasis, where a regex word boundary fails"),
    ("Reanswer: Paris", None, "a key inside a longer word is not the key"),
    ('Answer: "Paris".', "Paris", "surrounding quotes and a sentence-ending period go"),
    ('Answer: **"Paris".**', "Paris", "wrappings nested in any order are all taken off"),
    ("Answer: Washington, D.C.", "Washington, D.C", "only trailing periods go; grading drops dots"),
    ("Answer:   New   York  ", "New York", "inner runs of whitespace collapse"),
    ("Answer: Paris Confidence: 90", "Paris", "a confidence key on the same line ends the answer"),
    ("Answer: Paris (Confidence: 90%)", "Paris", "and so does a parenthesised one"),
    ("Answer: Paris\nAnswer: Lyon", "Paris", "the first answer counts: the model must commit"),
    ("Let me think.\nFinal answer: Paris", "Paris", "a qualifier before the key is fine"),
    ("Answer (one word): Paris", "Paris", "a parenthetical echoing the prompt after the key"),
    ("<answer>Paris</answer><confidence>80</confidence>", "Paris", "the tag format"),
    (
        "<ANSWER> Paris </ANSWER>",
        "Paris",
        "tags are case-insensitive and padded content is stripped",
    ),
    ("<answer>Paris</answer>\nAnswer: Lyon", "Paris", "whichever format comes first counts"),
    ("Answer:\nConfidence: 90", None, "an empty answer is no answer"),
    ("Answer: **  **", None, "an answer that is only wrapping is empty"),
    ("Answer:\nParis", None, "the answer must be on the key's line"),
    ("<answer></answer>", None, "an empty tag is no answer"),
    ("Paris\nConfidence: 90", None, "no key and no tag: nothing to grade"),
    ("The answer is Paris.", None, "prose without the key is not an answer"),
    ("<answer>Paris", None, "an unclosed tag is not read"),
    ("", None, "empty completion"),
]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [case[:2] for case in ANSWER_CASES],
    ids=[case[2] for case in ANSWER_CASES],
)
def test_answer(completion, expected):
    assert parse_completion(completion)[0] == expected


CONFIDENCE_CASES = [
    # (confidence text, expected confidence, why)
    ("Confidence: 85", 0.85, "an integer is a percentage, as the prompt asks for 0-100"),
    ("Confidence: 85%", 0.85, "a percent sign"),
    ("Confidence: 85 %", 0.85, "a percent sign after a space"),
    ("Confidence: 0.85", 0.85, "a decimal in [0, 1] is a probability"),
    ("Confidence: .85", 0.85, "a probability without the leading zero"),
    ("Confidence: 1", 0.01, "the integer 1 is 1 %, not certainty: integers are percentages"),
    ("Confidence: 1.0", 1.0, "a decimal 1.0 is certainty"),
    ("Confidence: 0", 0.0, "zero on either scale is zero"),
    ("Confidence: 100", 1.0, "the top of the percentage scale"),
    ("Confidence: 100%", 1.0, "the top of the scale with a percent sign"),
    ("Confidence: 50.5", 0.505, "a decimal above 1 is a percentage"),
    ("Confidence: 0.5%", 0.005, "a percent sign wins over the decimal point"),
    ("Confidence: 85.", 0.85, "a sentence-ending period is not a decimal point"),
    ("Confidence: 85 out of 100", 0.85, "words after the number are ignored"),
    ("confidence:85", 0.85, "keys are case-insensitive and the space is optional"),
    ("**Confidence:** 85", 0.85, "markdown bold around the key, common in small models"),
    ("**Confidence**: **85%**", 0.85, "bold key with the colon outside and a bold value"),
    ("Confidence (0-100): 85", 0.85, "the prompt's range echoed after the key"),
    ("<confidence>70</confidence>", 0.7, "the tag format"),
    ("<confidence> 0.7 </confidence>", 0.7, "padded tag content"),
    ("Confidence: 90\nConfidence: 10", 0.9, "the first confidence counts, like the answer"),
    ("Confidence: 101", None, "above 100 is garbage, not clamped to 1"),
    ("Confidence: 1.5%", 0.015, "a small percentage with a decimal point"),
    ("Confidence: 100.5", None, "above 100 with a decimal point"),
    ("Confidence: -5", None, "negative is garbage, not clamped to 0"),
    ("Confidence: -0", None, "a sign of any kind is refused"),
    ("Confidence: nan", None, "NaN is not a number we can use"),
    ("Confidence: inf", None, "neither is infinity"),
    ("Confidence: " + "9" * 400, None, "an overflow to infinity is refused, not a crash"),
    ("Confidence: 1e-3", None, "scientific notation is not silently read as 1"),
    ("Confidence: 80-90", None, "a range is a hedge, not 80"),
    ("Confidence: 8/10", None, "a fraction is not silently read as 8"),
    ("Confidence: 0.8.5", None, "a malformed number is not read as 0.8"),
    ("Confidence: high", None, "words are not numbers"),
    ("Confidence:", None, "missing value"),
    ("Confidence:\n85", None, "the value must be on the key's line"),
    ("<confidence>high</confidence>", None, "non-numeric tag content"),
    ("", None, "no confidence at all"),
]


@pytest.mark.parametrize(
    ("confidence_text", "expected"),
    [case[:2] for case in CONFIDENCE_CASES],
    ids=[case[2] for case in CONFIDENCE_CASES],
)
def test_confidence(confidence_text, expected):
    _, confidence = parse_completion(f"Answer: Paris\n{confidence_text}")
    if expected is None:
        assert confidence is None
    else:
        assert confidence == pytest.approx(expected)


def test_both_fields_parsed_from_a_realistic_completion():
    # Why: the two fields are read independently, so check them together on a chatty completion.
    completion = "I believe it's the capital.\n**Answer:** Paris\n**Confidence:** 85%\nDone."
    assert parse_completion(completion) == ("Paris", 0.85)


def test_long_blank_runs_parse_in_linear_time():
    # Why: RL samples degenerate text; a backtracking regex here once took seconds per 400 spaces.
    blank_run = " " * 100_000
    assert parse_completion(f"Answer:{blank_run}x\nConfidence{blank_run}") == ("x", None)


REASONING_CASES = [
    # (completion, expected (answer, confidence), expected reasoning, why)
    (
        "Gold's Latin name is aurum, so Au.\nAnswer: Au\nConfidence: 90",
        ("Au", 0.9),
        "Gold's Latin name is aurum, so Au.",
        "the format the reasoning prompt teaches: thought, then the two lines",
    ),
    (
        "My first answer: Sucre. But the seat of government is La Paz.\nAnswer: La Paz\n"
        "Confidence: 60",
        ("La Paz", 0.6),
        "My first answer: Sucre. But the seat of government is La Paz.",
        "an answer key inside the reasoning is a step on the way; the last one counts",
    ),
    (
        "I am fairly sure (confidence: 90) it is Paris.\nAnswer: Paris\nConfidence: 70",
        ("Paris", 0.7),
        "I am fairly sure (confidence: 90) it is Paris.",
        "and so is a confidence said in passing",
    ),
    (
        "Paris is the capital of France.",
        (None, None),
        "Paris is the capital of France.",
        "reasoning cut off before the lines: nothing to grade, all of it is reasoning",
    ),
]


@pytest.mark.parametrize(
    ("completion", "expected", "reasoning"),
    [case[:3] for case in REASONING_CASES],
    ids=[case[3] for case in REASONING_CASES],
)
def test_reasoning_format_reads_the_last_lines(completion, expected, reasoning):
    assert parse_completion(completion, "reasoning") == expected
    assert reasoning_text(completion, "reasoning") == reasoning


def test_the_short_format_still_reads_the_first_lines():
    # why: SmolLM2 goes on to invent the next question and answer it; the short format grades
    # the answer it gave to ours, and says it gave no reasoning
    completion = (
        "Answer: Paris\nConfidence: 90\nQuestion: And Spain?\nAnswer: Madrid\nConfidence: 10"
    )
    assert parse_completion(completion) == ("Paris", 0.9)
    assert reasoning_text(completion) == ""
    # why: the confidence-only loss masks from the key the parser reads, in each format
    assert confidence_key_start(completion) == completion.index("Confidence")
    assert confidence_key_start(completion, "reasoning") == completion.rindex("Confidence")
