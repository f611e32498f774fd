"""Tests for entropic.data: split rules, geo aliases, the jsonl and triviaqa sources, the
out-of-domain sources (elements, arithmetic) and eval-only loading.

Offline and CPU-only. The default geo pool reads the package's city files once (~4 s); every
other geo test uses country-level kinds only.
"""

from __future__ import annotations

import json
import time

import datasets
import huggingface_hub
import huggingface_hub.constants
import pytest
from omegaconf import OmegaConf

from entropic.config import DATA_SOURCES
from entropic.data import (
    DATASETS,
    FEATURES,
    SOURCE_CHECKS,
    QuestionSplits,
    arithmetic,
    check_eval_source,
    check_source,
    draw_subset,
    elements,
    geo,
    load_eval_questions,
    load_questions,
    rows_to_dataset,
    triviaqa,
)
from entropic.grading import is_correct

# Country-level kinds only: builds in well under a second.
COUNTRY_KINDS = {"capital": None, "currency": None, "continent": None}


@pytest.fixture(scope="module")
def abundant() -> QuestionSplits:
    """The default geo mix at the abundant experiment scale."""
    return load_questions("geo", train_size=5000, eval_size=500, seed=0)


def write_lines(tmp_path, lines: list[str], name: str = "questions.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def column(split, name: str) -> list:
    """A column as a plain list (datasets returns a lazy Column that does not compare by value)."""
    return list(split[name])


def small_geo(**overrides) -> QuestionSplits:
    options = {"train_size": 100, "eval_size": 50, "seed": 0, "kinds": COUNTRY_KINDS}
    return load_questions("geo", **{**options, **overrides})


# --- registry and option validation -------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        # why: a typo at load time must name every valid source and the override that fixes it
        lambda: load_questions("goe", train_size=1, eval_size=1, seed=0),
        # why: the cheap pre-model check must say the same thing
        lambda: check_source("trivia_qa"),
    ],
)
def test_unknown_source_lists_valid_names(call):
    with pytest.raises(ValueError, match=r"geo, triviaqa, jsonl, elements, arithmetic.*data=geo\|"):
        call()


@pytest.mark.parametrize(
    ("name", "options", "message", "why"),
    [
        (
            "jsonl",
            {"pathh": "x"},
            r"data\.pathh.*valid options: data\.path",
            "typo in an option",
        ),
        (
            "geo",
            {"path": "x"},
            r"data=geo has no option\(s\) data\.path",
            "another source's",
        ),
        (
            "geo",
            {"kinds": {"capitals": 5}},
            r"data\.kinds\.capitals.*capital, ",
            "typo in a kind",
        ),
        ("geo", {"kinds": {"capital": 0}}, r"every geo question kind off", "empty mix"),
        (
            "geo",
            {"kinds": {"capital": "all"}},
            r"data\.kinds\.capital='all'",
            "count not a word",
        ),
        ("geo", {"split_seed": "0"}, r"data\.split_seed", "a seed must be an integer"),
        ("geo", {"train_size": 0}, r"data\.train_size=0", "an empty training pool"),
        ("jsonl", {}, r"data\.path=/path/to", "jsonl without a path"),
        (
            "elements",
            {"kinds": {"symbols": None}},
            r"data\.kinds\.symbols is not a elements question kind.*symbol, element_of_symbol",
            "the shared kind check names the source's own kinds",
        ),
        (
            "arithmetic",
            {"kinds": {"mul_1x2digit": 1000}},
            r"data\.kinds\.mul_1x2digit=1000.*only 720 distinct",
            "a generated kind cannot fill more questions than it has (8 x 90 pairs)",
        ),
    ],
)
def test_check_source_names_the_key(name, options, message, why):
    with pytest.raises(ValueError, match=message):
        check_source(name, **options)


def test_registry_lists_the_sources():
    # why: the config group conf/data/ holds exactly these names
    assert list(DATASETS) == ["geo", "triviaqa", "jsonl", "elements", "arithmetic"]
    # why: data.name and eval.sets.<set>.source are checked against the torch-free DATA_SOURCES
    # before torch loads; a source added to the registry alone would be refused there
    assert DATA_SOURCES == tuple(DATASETS) == tuple(SOURCE_CHECKS)


# --- the training subset (compute.cpu_scale.train_mix) -------------------------------------------


def kinds_pool() -> datasets.Dataset:
    """Ten questions: six of kind a, three of kind b, one of kind c."""
    kinds = ["a"] * 6 + ["b"] * 3 + ["c"]
    return rows_to_dataset(
        {"question_id": f"{kind}{i}", "question": f"q{i}?", "answers": ["x"], "kind": kind}
        for i, kind in enumerate(kinds)
    )


def kind_count(subset) -> dict[str, int]:
    kinds = column(subset, "kind")
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def test_pool_mix_is_the_seeded_sample_runs_always_drew():
    pool = kinds_pool()
    # why: train_mix=pool must keep every earlier run's training questions: the first n of the
    # pool shuffled by the seed
    expected = column(pool.shuffle(seed=3), "question_id")[:4]
    assert column(draw_subset(pool, 4, seed=3), "question_id") == expected
    assert column(draw_subset(pool, 4, seed=3, mix="pool"), "question_id") == expected


@pytest.mark.parametrize(
    ("count", "expected", "why"),
    [
        (3, {"a": 1, "b": 1, "c": 1}, "one round: a question of each kind"),
        (6, {"a": 3, "b": 2, "c": 1}, "c has one question; its later turns go to a and b"),
        (8, {"a": 4, "b": 3, "c": 1}, "b runs out after three, so a takes the remaining turns"),
        (50, {"a": 6, "b": 3, "c": 1}, "more than the pool holds: all of it"),
    ],
)
def test_by_kind_gives_each_kind_its_turn(count, expected, why):
    assert kind_count(draw_subset(kinds_pool(), count, seed=0, mix="by_kind")) == expected, why


def test_by_kind_takes_each_kinds_questions_in_the_seeded_order():
    pool = kinds_pool()
    shuffled_a = [i for i in column(pool.shuffle(seed=5), "question_id") if i.startswith("a")]
    subset = draw_subset(pool, 6, seed=5, mix="by_kind")
    # why: within a kind the seed decides, so seeds stay replicates and a rerun draws the same
    assert [i for i in column(subset, "question_id") if i.startswith("a")] == shuffled_a[:3]
    assert column(draw_subset(pool, 6, seed=5, mix="by_kind"), "question_id") == column(
        subset, "question_id"
    )
    assert len(set(column(subset, "question_id"))) == 6  # no question twice


def test_an_unknown_mix_is_refused():
    with pytest.raises(ValueError, match="by_kind"):
        draw_subset(kinds_pool(), 3, seed=0, mix="balanced")


# --- split rules ---------------------------------------------------------------------------------


def test_schema_and_default_pool_size(abundant):
    # why: trainers and metrics read these columns; 5,000 + 500 must fit the default mix
    for split in (abundant.train, abundant.eval):
        assert split.features == FEATURES
    assert (len(abundant.train), len(abundant.eval)) == (5000, 500)
    assert len(geo.candidates(geo.DEFAULT_KINDS)) >= 6000
    assert set(column(abundant.train, "kind")) == set(geo.KINDS)


def test_same_seed_same_splits_and_new_seed_new_train():
    first, again, other = small_geo(), small_geo(), small_geo(seed=1)
    # why: a rerun must see the very same questions in the same order
    assert column(first.train, "question_id") == column(again.train, "question_id")
    assert column(first.eval, "question_id") == column(again.eval, "question_id")
    # why: seeds are the experiment's replicates; they must draw different pools...
    assert set(column(first.train, "question_id")) != set(column(other.train, "question_id"))
    # ...while the eval set is tied to split_seed alone
    assert column(first.eval, "question_id") == column(other.eval, "question_id")
    assert column(small_geo(split_seed=1).eval, "question_id") != column(first.eval, "question_id")


def test_kinds_from_hydra_config():
    # why: Hydra hands the loader a DictConfig, not a dict; it must give the same pool
    from_config = small_geo(kinds=OmegaConf.create(COUNTRY_KINDS))
    assert column(from_config.train, "question_id") == column(small_geo().train, "question_id")


def test_eval_does_not_depend_on_train_size(abundant):
    scarce = load_questions("geo", train_size=1600, eval_size=500, seed=0)
    # why: scarce and abundant runs are compared on one eval set
    assert column(scarce.eval, "question_id") == column(abundant.eval, "question_id")
    # why: a smaller pool is a subset of a larger one with the same seed
    assert set(column(scarce.train, "question_id")) <= set(column(abundant.train, "question_id"))
    # why: a smaller eval set is a prefix of a larger one
    smaller = load_questions("geo", train_size=1600, eval_size=200, seed=0)
    assert column(smaller.eval, "question_id") == column(abundant.eval, "question_id")[:200]


def test_no_overlap_and_no_repeated_questions(abundant):
    train_ids = column(abundant.train, "question_id")
    eval_ids = column(abundant.eval, "question_id")
    ids = train_ids + eval_ids
    questions = column(abundant.train, "question") + column(abundant.eval, "question")
    texts = [text.casefold() for text in questions]
    # why: an eval question seen in training measures memory, not calibration
    assert not set(train_ids) & set(eval_ids)
    assert len(set(ids)) == len(ids)
    assert len(set(texts)) == len(texts)
    assert all(text.endswith("?") for text in texts)
    assert all(answers and all(answers) for answers in column(abundant.eval, "answers"))


@pytest.mark.parametrize(
    ("sizes", "message", "why"),
    [
        ({"train_size": 500, "eval_size": 50}, r"\b184\b.*data\.train_size=500", "pool too small"),
        ({"train_size": 10, "eval_size": 300}, r"\b234\b.*data\.eval_size=300", "eval too large"),
        ({"train_size": 0, "eval_size": 50}, r"data\.train_size=0", "empty train split"),
        ({"train_size": 10, "eval_size": 0}, r"data\.eval_size=0", "empty eval split"),
    ],
)
def test_sizes_that_do_not_fit(sizes, message, why):
    with pytest.raises(ValueError, match=message):
        load_questions("geo", seed=0, kinds={"capital": None}, **sizes)


# --- geo answers ---------------------------------------------------------------------------------


def geo_row(question_id: str) -> dict | None:
    kind = question_id.split(":")[0]
    rows = {row["question_id"]: row for row in geo.kind_candidates(kind, None)}
    return rows.get(question_id)


@pytest.mark.parametrize(
    ("question_id", "alias", "why"),
    [
        ("country_of_capital:DE", "Deutschland", "the native name is a right answer"),
        ("country_of_capital:ES", "Espana", "aliases also come without diacritics"),
        ("country_of_capital:US", "USA", "a common short form the package lacks"),
        ("country_of_capital:CI", "Côte d'Ivoire", "a Latin-script translation"),
        ("currency:FR", "EUR", "the ISO code of the currency"),
        ("currency:JP", "yen", "the bare unit when no other currency shares it"),
        ("capital:LY", "Tripoli", "a misspelt capital is fixed (package: Tripolis)"),
        ("capital:UA", "Kiev", "an older spelling still in common use"),
        ("continent:BR", "South America", "the Americas are split as people say it"),
        ("subregion:KE", "East Africa", "Eastern Africa in everyday words"),
    ],
)
def test_answers_accept(question_id, alias, why):
    assert alias in geo_row(question_id)["answers"]


@pytest.mark.parametrize(
    ("question_id", "alias", "why"),
    [
        ("currency:US", "dollar", "many currencies are dollars: it would accept the wrong one"),
        ("country_of_capital:IS", "Island", "German for Iceland, but inside 'Christmas Island'"),
        ("country_of_capital:CN", "中国", "a non-Latin native name the model never writes"),
        ("country_of_capital:TN", "Tunis", "Croatian for Tunisia, but the question's own city"),
    ],
)
def test_answers_reject(question_id, alias, why):
    assert alias not in geo_row(question_id)["answers"]


@pytest.mark.parametrize(
    ("question_id", "why"),
    [
        ("capital:LU", "the answer (Luxembourg) is in the question"),
        ("country_of_capital:JM", "Kingston is the capital of Jamaica and of Norfolk Island"),
        ("continent:ZA", "'Which continent is South Africa in?' names Africa"),
        ("capital:AQ", "Antarctica has no capital (and no subregion)"),
    ],
)
def test_unfair_questions_are_dropped(question_id, why):
    assert geo_row(question_id) is None


def test_country_questions_read_naturally():
    # why: the package's "Man (Isle of)" and article-less names read badly in a question
    assert geo_row("capital:IM")["question"] == "What is the capital of the Isle of Man?"
    assert geo_row("capital:US")["question"] == "What is the capital of the United States?"


# --- jsonl ---------------------------------------------------------------------------------------

GOOD_LINES = [
    json.dumps({"question": f"What is {n} plus {n}?", "answers": [str(2 * n), f"two times {n}"]})
    for n in range(30)
] + [json.dumps({"question": "Who wrote Hamlet?", "answers": "Shakespeare", "id": "lit-1"})]


def test_jsonl_round_trip(tmp_path):
    path = write_lines(tmp_path, GOOD_LINES[:10] + [""] + GOOD_LINES[10:])
    # 31 questions: 26 + 5 uses every line.
    splits = load_questions("jsonl", train_size=26, eval_size=5, seed=0, path=path)
    again = load_questions("jsonl", train_size=10, eval_size=5, seed=3, path=path)
    # why: eval is carved out by split_seed alone, as for geo
    assert column(splits.eval, "question_id") == column(again.eval, "question_id")
    assert not set(column(splits.train, "question_id")) & set(column(splits.eval, "question_id"))
    rows = splits.train.to_list() + splits.eval.to_list()
    # why: a single answer string becomes a one-alias list and the given id is kept
    assert {
        "question_id": "lit-1",
        "question": "Who wrote Hamlet?",
        "answers": ["Shakespeare"],
        "kind": "jsonl",
    } in rows
    # why: without an id, the id is a hash of the text, stable when lines move
    moved = write_lines(tmp_path, list(reversed(GOOD_LINES)), name="reversed.jsonl")
    reversed_ids = load_questions("jsonl", train_size=20, eval_size=5, seed=0, path=moved)
    assert column(reversed_ids.eval, "question_id") == column(splits.eval, "question_id")


@pytest.mark.parametrize(
    ("lines", "message", "why"),
    [
        (
            GOOD_LINES[:2] + ['{"question": "Who?", "answers": ["x"]'],
            r"line 3 is not valid JSON",
            "a truncated object names its line",
        ),
        (GOOD_LINES[:1] + ['["Who?", "x"]'], r"line 2 is a JSON list", "a line must be an object"),
        (['{"question": "Who?"}'], r'line 1 needs "answers"', "answers are required"),
        (['{"question": "Who?", "answers": []}'], r'line 1 needs "answers"', "no empty answers"),
        (['{"answers": ["x"]}'], r'line 1 has no "question"', "a question is required"),
        (
            GOOD_LINES[:3] + GOOD_LINES[1:2],
            r"line 4 repeats the question of line 2",
            "a repeated question could fall in both splits",
        ),
        ([""], r"contains no questions", "an empty file gives empty splits"),
    ],
)
def test_jsonl_bad_files(tmp_path, lines, message, why):
    path = write_lines(tmp_path, lines)
    # why: check_source must catch it before a model is loaded, load_questions too
    for call in (
        lambda: check_source("jsonl", path=path),
        lambda: load_questions("jsonl", train_size=1, eval_size=1, seed=0, path=path),
    ):
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize(
    ("path", "message", "why"),
    [
        (
            "/no/such/questions.jsonl",
            r"data\.path=/no/such/questions\.jsonl does not exist",
            "typo",
        ),
        ("/tmp", r"data\.path=/tmp is a directory", "a folder instead of a file"),
    ],
)
def test_jsonl_missing_path(path, message, why):
    with pytest.raises(ValueError, match=message):
        check_source("jsonl", path=path)


# --- triviaqa ------------------------------------------------------------------------------------


def refuse_download(split):
    raise AssertionError(f"the test tried to download TriviaQA's {split} split")


def test_triviaqa_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(triviaqa, "read_split", refuse_download)
    start = time.perf_counter()
    # why: offline runs must stop before a model loads, with the fix in the message
    for call in (
        lambda: check_source("triviaqa"),
        lambda: load_questions("triviaqa", train_size=10, eval_size=5, seed=0),
    ):
        with pytest.raises(ValueError, match=r"TriviaQA needs the Hugging Face hub.*data=geo"):
            call()
    assert time.perf_counter() - start < 2


def test_triviaqa_unreachable_hub_fails_fast(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Could not resolve host: huggingface.co")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(triviaqa, "read_split", refuse_download)
    # why: no network must not mean a hang or a bare socket error
    with pytest.raises(ConnectionError, match=r"could not be reached.*HF_HUB_OFFLINE=0"):
        load_questions("triviaqa", train_size=10, eval_size=5, seed=0)


def test_triviaqa_as_an_evaluation_set_reads_only_the_validation_split(monkeypatch):
    # why: an evaluation set needs no training pool, so it must not download TriviaQA's 138k
    # training questions (the hub itself cannot run offline: its two calls are stood in for)
    read = []

    def one_split(split):
        read.append(split)
        return [triviaqa.to_row(f"{split}{i}", f"Question {i}?", str(i), []) for i in range(5)]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(triviaqa, "ping_hub", lambda: None)
    monkeypatch.setattr(triviaqa, "read_split", one_split)
    assert len(load_eval_questions("triviaqa", eval_size=3)) == 3
    assert read == ["validation"]


def test_triviaqa_rows_put_the_value_first():
    row = triviaqa.to_row("tc_1", " Who  wrote Hamlet? ", "Shakespeare", ["shakespeare", "Bard"])
    # why: answer.value is canonical; repeated aliases add nothing
    assert row == {
        "question_id": "tc_1",
        "question": "Who wrote Hamlet?",
        "answers": ["Shakespeare", "Bard"],
        "kind": "trivia",
    }


# --- out-of-domain sources: elements and arithmetic -----------------------------------------------


def source_row(module, question_id: str) -> dict:
    """One question of an offline source by id, from its whole pool."""
    pool = module.candidates(dict.fromkeys(module.KINDS))
    return {row["question_id"]: row for row in pool}[question_id]


@pytest.mark.parametrize(
    ("module", "question_id", "question", "answer", "right", "why"),
    [
        (elements, "symbol:Fe", "What is the chemical symbol for iron?", "Fe", True, "the symbol"),
        (elements, "symbol:Fe", "What is the chemical symbol for iron?", "FE", True, "any case"),
        (elements, "symbol:Fe", "What is the chemical symbol for iron?", "Iron", False,
         "the name is not the symbol"),
        (elements, "symbol:In", "What is the chemical symbol for indium?", "In", True,
         "a symbol that is also a framing word is right on its own"),
        (elements, "symbol:In", "What is the chemical symbol for indium?", "In Fe", False,
         "but not beside another candidate"),
        (elements, "element_of_symbol:Al", "Which chemical element has the symbol Al?",
         "Aluminium", True, "the British spelling of the package's aluminum"),
        (elements, "element_of_symbol:Cs", "Which chemical element has the symbol Cs?",
         "Caesium", True, "and of cesium"),
        (elements, "element_of_number:W", "Which chemical element has atomic number 74?",
         "Wolfram", True, "tungsten's other name"),
        (elements, "element_of_symbol:Si", "Which chemical element has the symbol Si?", "Si",
         False, "repeating the symbol (SmolLM2's favourite) is not naming the element"),
        (elements, "atomic_number:Fe", "What is the atomic number of iron?", "26", True,
         "the number"),
        (elements, "atomic_number:Fe", "What is the atomic number of iron?", "Atomic number 26",
         True, "the number as the question's own phrase"),
        (elements, "atomic_number:Fe", "What is the atomic number of iron?", "26 or 27", False,
         "a hedge between numbers earns nothing"),
        (elements, "atomic_number:Fe", "What is the atomic number of iron?", "126", False,
         "a number containing the gold is another number"),
        (arithmetic, "add_2digit:32+13", "What is 32 + 13?", "45", True, "the sum"),
        (arithmetic, "add_2digit:32+13", "What is 32 + 13?", "32 + 13 = 45", True,
         "the worked equation small models write"),
        (arithmetic, "add_2digit:32+13", "What is 32 + 13?", "32 + 13 = 46", False,
         "a wrong equation, though it contains the operands"),
        (arithmetic, "mul_1x2digit:3x19", "What is 3 x 19?", "3 * 19 = 57", True,
         "another multiplication sign"),
        (arithmetic, "mul_1x2digit:3x19", "What is 3 x 19?", "57.", True, "a full stop"),
        (arithmetic, "mul_1x2digit:3x19", "What is 3 x 19?", "3", False,
         "an operand is not the result"),
    ],
)  # fmt: skip
def test_out_of_domain_items_grade_as_a_reader_would(module, question_id, question, answer,
                                                      right, why):  # fmt: skip
    row = source_row(module, question_id)
    assert row["question"] == question
    assert is_correct(answer, row["answers"]) is right


def test_out_of_domain_pools():
    element_pool = elements.candidates(dict.fromkeys(elements.KINDS))
    arithmetic_pool = arithmetic.candidates(arithmetic.DEFAULT_KINDS)
    # why: the issue asks for at least 300 questions per set; 4 kinds x 118 elements - 1
    assert len(element_pool) == 4 * 118 - 1
    assert len(arithmetic_pool) == 445
    # why: a kind with fewer questions than QUESTIONS_PER_KIND gives all it has (9 x 9, 8 x 8)
    every_kind = arithmetic.candidates(dict.fromkeys(arithmetic.KINDS))
    assert len(every_kind) == 81 + 64 + 5 * arithmetic.QUESTIONS_PER_KIND
    # why: the symbol of gold is a few-shot turn of every prompt we ship
    assert "symbol:Au" not in {row["question_id"] for row in element_pool}
    for pool in (element_pool, arithmetic_pool):
        ids = [row["question_id"] for row in pool]
        texts = [row["question"] for row in pool]
        # why: a repeated question would be asked twice and could leak across a split
        assert len(set(ids)) == len(ids) and len(set(texts)) == len(texts)
    # why: grading drops the minus sign, so a negative result would accept its absolute value
    assert all(not row["answers"][0].startswith("-") for row in arithmetic_pool)
    for row in arithmetic_pool:
        a, sign, b = row["question"].removeprefix("What is ").removesuffix("?").split()
        result = {"+": int(a) + int(b), "-": int(a) - int(b), "x": int(a) * int(b)}[sign]
        assert row["answers"][0] == str(result), row


def test_arithmetic_is_the_same_everywhere():
    # why: the operands come from SHA-256, not from `random`, so these ids never change (a
    # changed pool would silently change every reported number)
    first = [row["question_id"] for row in arithmetic.kind_rows("add_2digit", 3)]
    assert first == ["add_2digit:42+41", "add_2digit:91+47", "add_2digit:82+52"]


# --- eval-only loading ---------------------------------------------------------------------------


def test_eval_only_load_is_the_eval_split(tmp_path):
    # why: an evaluation set is the same questions the source's eval split would hold, whatever
    # training pool another run draws from it
    for name, options in (("elements", {}), ("geo", {"kinds": COUNTRY_KINDS})):
        alone = load_eval_questions(name, eval_size=40, **options)
        with_pool = load_questions(name, train_size=10, eval_size=40, seed=3, **options)
        assert column(alone, "question_id") == column(with_pool.eval, "question_id")
    # why: an eval-only job needs no training pool, so a file smaller than any pool will do
    path = write_lines(tmp_path, GOOD_LINES[:3])
    assert len(load_eval_questions("jsonl", eval_size=3, path=path)) == 3
    with pytest.raises(ValueError, match="data.train_size"):
        load_questions("jsonl", train_size=1, eval_size=3, seed=0, path=path)


@pytest.mark.parametrize(
    ("call", "message", "why"),
    [
        (
            lambda: load_eval_questions("elements", eval_size=900, key="eval.sets.chem"),
            r"eval\.sets\.chem\.source=elements has 471 .*eval\.sets\.chem\.size=900; lower",
            "the size key of the set, not data.eval_size, is the one to change",
        ),
        (
            lambda: check_eval_source("elements", key="eval.sets.chem", kinds={"mass": 3}),
            r"eval\.sets\.chem\.kinds\.mass is not a elements question kind",
            "an option is named under the set",
        ),
        (
            lambda: check_eval_source("jsonl", key="eval.sets.mine", path="/no/such.jsonl"),
            r"eval\.sets\.mine\.path=/no/such\.jsonl does not exist",
            "a missing file names the set's path key",
        ),
        (
            lambda: check_eval_source("trivia", key="eval.sets.tq"),
            r"Unknown data source 'trivia'.*eval\.sets\.tq\.source=geo\|",
            "an unknown source names the set's source key",
        ),
    ],
)
def test_eval_set_errors_name_the_sets_keys(call, message, why):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_geo_pool_is_built_once_then_read_from_disk(tmp_path, monkeypatch):
    # why: every run's process read ~150k city records to build its pool (5-8 s on a 2-core
    # EPYC); the pool on disk must be the one the code builds, be what later calls read, and
    # never stand in for another kind mix or a file that cannot be read
    monkeypatch.setenv("ENTROPIC_CACHE", str(tmp_path))
    kinds = {"capital": None, "continent": None}
    built = geo.candidates(kinds)
    path = geo.pool_cache_path(kinds)
    assert path.parent == tmp_path / "questions"
    assert json.loads(path.read_text()) == built
    path.write_text(json.dumps(built[:3]))
    assert geo.candidates(kinds) == built[:3]  # read, not built again
    path.write_text('[{"question_id": ')  # cut short
    assert geo.candidates(kinds) == built
    capitals = {"capital": None}
    assert geo.pool_cache_path(capitals) != path
    assert geo.candidates(capitals) == [row for row in built if row["kind"] == "capital"]
