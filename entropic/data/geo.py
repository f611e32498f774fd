"""Geography questions built offline from the countrystatecity-countries package (data=geo).

The default source: it needs no network and no hub. Each question comes from one record of the
package (250 countries, 5,328 states or provinces, 152,152 cities):

    capital             What is the capital of Kenya?                   Nairobi
    country_of_capital  Which country has Nairobi as its capital?       Kenya
    currency            What is the currency of Japan?                  Japanese yen | JPY | yen
    continent           Which continent is Peru in?                     South America | Americas
    subregion           Which part of Africa is Kenya in?               Eastern Africa | East Africa
    country_of_state    In which country is the province of Ontario?    Canada
    country_of_city     In which country is the city of Izluchinsk?     Russia
    continent_of_city   Which continent is the city of Tubutama in?     North America | Americas

Gold answers carry the aliases the package provides plus ones derived by rule: for countries the
native name and the Latin-script translations (a 135M English model never writes Arabic or
Cyrillic, and Breton forms such as "Sina" for China are skipped as noise), for currencies the ISO
code and the bare unit ("yen") when no other currency shares it ("dollar" would accept the wrong
dollar), every alias also without diacritics. Short lists below add the few common short forms the
package lacks ("USA", "UK") and fix a few of its spellings ("Tripolis"). A non-canonical alias is
dropped when another country uses it too, or when it is a whole phrase inside another country's
name (German "Island" for Iceland sits inside "Christmas Island"). "UK" is two letters: answer
matching must work on word boundaries, as it must anyway for codes such as "EUR".

Questions that cannot be marked fairly are dropped rather than patched: a place name used in two
countries (a city "Córdoba" in Argentina and Spain), a question that contains its own answer
("What is the capital of Luxembourg?"), and two questions with one text and different answers
(two countries have a capital named Kingston). Cities that share a name with a state or capital
are left to those kinds, and each city serves only one of the two city kinds, so no fact is asked
twice and leaks from the training pool into the eval set. Place names with digits, brackets or
non-Latin letters ("Praha 16", "Marseille 01") are skipped.

Difficulty: the package has no population figures, so cities are a uniform sample (mostly small
towns; the model can only guess from the name's language). Greedy accuracy of
SmolLM2-135M-Instruct ("Answer the question in a few words.", 16 new tokens, right when an alias
appears in the answer), 60 eval questions per kind, measured once:

    capital .18  country_of_capital .32  currency .18  continent .57  subregion .28
    country_of_state .23  country_of_city .08  continent_of_city .35

16 tokens cut off many right answers mid-sentence, so these are lower bounds. DEFAULT_KINDS
keeps every country-level question and samples the bulk kinds so the pool holds ~6,700
questions (5,000 train + 500 eval fit) at roughly 27% base accuracy.

Building a pool reads every city file once per process (~1.5 s on an AVX-512 EPYC, 4 s on a
Zen 3) and only when a city kind is enabled; the default pool took ~3.5 s in all there, 5-8 s
here. A built pool is cached on disk (`candidates`), so later processes read it in 0.04 s.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from countrystatecity_countries import (
    Country,
    get_cities_of_country,
    get_countries,
    get_states_of_country,
)

from entropic import data
from entropic.config import cache_dir
from entropic.data import (
    QuestionSplits,
    check_kind_counts,
    check_split_seed,
    rank_by_seed,
    split_candidates,
)

Row = dict[str, Any]

# Names that read badly inside a question ("What is the capital of Man (Isle of)?"). The
# package's own name stays an accepted alias.
DISPLAY_NAMES = {
    "BS": "Bahamas",
    "FJ": "Fiji",
    "GM": "Gambia",
    "HK": "Hong Kong",
    "IM": "Isle of Man",
    "MF": "Saint Martin",
    "MO": "Macau",
    "PN": "Pitcairn Islands",
    "PS": "Palestine",
    "SJ": "Svalbard and Jan Mayen",
    "SX": "Sint Maarten",
    "VA": "Vatican City",
    "VG": "British Virgin Islands",
    "VI": "United States Virgin Islands",
    "WF": "Wallis and Futuna",
}

# Common short forms the package does not carry; kept deliberately tiny.
COUNTRY_SHORT_FORMS = {
    "AE": ["UAE"],
    "CD": ["DR Congo", "DRC", "Congo-Kinshasa"],
    "CG": ["Republic of the Congo", "Congo-Brazzaville"],
    "CZ": ["Czechia"],
    "GB": ["UK", "Britain", "Great Britain"],
    "MK": ["Macedonia"],
    "MM": ["Burma"],
    "TL": ["East Timor"],
    "US": ["USA", "United States of America"],
    "VA": ["Holy See", "Vatican"],
}

# The package's capital spelling is wrong or unusual here; the fix becomes the canonical answer.
CAPITAL_FIXES = {"IM": "Douglas", "LY": "Tripoli", "MX": "Mexico City", "SG": "Singapore"}

# Other names in common use for a capital.
CAPITAL_ALIASES = {
    "BO": ["La Paz"],  # Sucre is the constitutional capital, La Paz the seat of government
    "KZ": ["Nur-Sultan"],
    "MM": ["Naypyidaw"],
    "MN": ["Ulaanbaatar"],
    "UA": ["Kiev"],
    "US": ["Washington, D.C."],
}

# UN subregions whose everyday name differs by more than the East/Eastern rule below.
SUBREGION_ALIASES = {"Middle Africa": ["Central Africa"], "South-Eastern Asia": ["Southeast Asia"]}

# Countries on two continents: both are accepted for the country, and their cities are not asked
# about because the package gives one continent per country (Vladivostok is not in Europe).
TRANSCONTINENTAL = {
    "AZ": "Europe",
    "EG": "Asia",
    "GE": "Europe",
    "KZ": "Europe",
    "RU": "Asia",
    "TR": "Europe",
}

# Translation languages whose names are worth accepting: Latin script, widely written. Breton
# ("br") is skipped; its forms ("Sina", "Stadoù-Unanet") are noise for an English model.
TRANSLATION_LANGUAGES = ("de", "es", "fr", "hr", "it", "nl", "pl", "pt", "pt-BR", "tr")

# State types that do not read as "the <type> of <name>" ("the country of England").
UNNAMED_STATE_TYPES = {"", "country", "sheadings", "entity", "chain", "area", "geographical unit"}

# Derived aliases shorter than this are dropped (the Isle of Man must not become "Man").
MIN_DERIVED_ALIAS_LENGTH = 4


# Characters NFKD leaves whole; these occur in the package's names.
UNDECOMPOSED = str.maketrans("łŁđĐøØıß", "lLdDoOis")

# Anything outside Basic Latin, Latin-1, Latin Extended (A, B, Additional), the IPA and modifier
# letters (the okina in "Haʻapai") and combining marks is another script.
NON_LATIN = re.compile(r"[^\u0000-\u02FF\u0300-\u036F\u1E00-\u1EFF\u2018\u2019]")


def without_diacritics(text: str) -> str:
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return stripped.translate(UNDECOMPOSED)


def fold(text: str) -> str:
    """Case- and diacritic-insensitive form used to compare names."""
    return " ".join(without_diacritics(text).split()).casefold()


def is_latin(text: str) -> bool:
    """True when every letter is Latin (modifier letters such as the okina are allowed)."""
    return NON_LATIN.search(text) is None


@functools.lru_cache(maxsize=1 << 18)
def words(text: str) -> str:
    """`text` folded to its words, space-separated and space-padded for whole-word search."""
    return " " + " ".join(re.findall(r"\w+", fold(text))) + " "


def mentions(text: str, phrase: str) -> bool:
    """True when `phrase` occurs in `text` as whole words, ignoring case and diacritics."""
    return words(phrase).strip() != "" and words(phrase) in words(text)


def unique(values: list[str]) -> list[str]:
    """Drop empty and repeated (case-insensitive) values, keeping order."""
    seen: set[str] = set()
    kept = []
    for value in values:
        value = " ".join(value.split()) if value else ""
        if value and value.casefold() not in seen:
            seen.add(value.casefold())
            kept.append(value)
    return kept


def with_diacritic_free(values: list[str]) -> list[str]:
    return unique([form for value in values for form in (value, without_diacritics(value))])


CODE_OR_LIST = re.compile(r"[\d()/,]")


def natural_place_name(name: str) -> bool:
    """Skip names that are codes or lists ("Praha 16", "Orroroo/Carrieton")."""
    return bool(name) and is_latin(name) and CODE_OR_LIST.search(name) is None


# --- the package, read once per process -----------------------------------------------------


@functools.lru_cache(maxsize=1)
def countries() -> tuple[Country, ...]:
    """Inhabited countries: those with a UN subregion (drops Antarctica, Bouvet, Heard Island)."""
    return tuple(country for country in get_countries() if country.subregion)


@functools.lru_cache(maxsize=1)
def states() -> tuple[Any, ...]:
    return tuple(state for country in countries() for state in get_states_of_country(country.iso2))


@functools.lru_cache(maxsize=1)
def cities() -> tuple[Any, ...]:
    # The slow part (~150k records in ~4,700 files): read only when a city kind is asked for.
    return tuple(city for country in countries() for city in get_cities_of_country(country.iso2))


def display_name(country: Country) -> str:
    return DISPLAY_NAMES.get(country.iso2, country.name)


def in_sentence(country: Country) -> str:
    """The country's name as it reads mid-sentence, with "the" where English uses it."""
    name = display_name(country)
    plural_or_union = (" Islands", " Republic", " Territory", "Netherlands", "Philippines")
    takes_article = (
        name.startswith(("United ", "Democratic ", "Republic ", "Isle of "))
        or name.endswith(plural_or_union)
        or name in ("Bahamas", "Comoros", "French Southern Territories", "Gambia", "Maldives")
    )
    return f"the {name}" if takes_article else name


@functools.lru_cache(maxsize=1)
def country_answers() -> dict[str, list[str]]:
    """Gold aliases per ISO2 code, canonical (the display name) first."""
    candidates: dict[str, list[str]] = {}
    for country in countries():
        derived = [country.name, country.native or ""]
        derived += [country.translations.get(language, "") for language in TRANSLATION_LANGUAGES]
        # Translations in brackets ("Congo [DRC]") or starting lower-case ("voir Saint", the
        # French entry for the Vatican) are catalogue notes, not names.
        derived = [
            alias
            for alias in derived
            if is_latin(alias)
            and len(alias) >= MIN_DERIVED_ALIAS_LENGTH
            and alias[0].isupper()
            and not re.search(r"[(\[]", alias)
        ]
        derived += COUNTRY_SHORT_FORMS.get(country.iso2, [])
        candidates[country.iso2] = with_diacritic_free([display_name(country), *derived])

    # An alias that is also (part of) another country's name would mark a wrong answer right, so
    # index every run of whole words in every name by the countries it occurs in.
    owners: dict[str, set[str]] = defaultdict(set)
    for code, aliases in candidates.items():
        for alias in aliases:
            tokens = words(alias).split()
            for start in range(len(tokens)):
                for end in range(start + 1, len(tokens) + 1):
                    owners[" ".join(tokens[start:end])].add(code)
    return {
        code: [canonical] + [alias for alias in aliases if owners[words(alias).strip()] == {code}]
        for code, (canonical, *aliases) in candidates.items()
    }


def continent_answers(country: Country) -> list[str]:
    """The package's region, with the Americas split into North and South as people say it."""
    if country.region == "Americas":
        continent = "South America" if country.subregion == "South America" else "North America"
        return [continent, "Americas"]
    second = TRANSCONTINENTAL.get(country.iso2)
    return [country.region, second] if second else [country.region]


def subregion_answers(subregion: str) -> list[str]:
    """Subregion aliases: "Eastern Africa" also as "East Africa", and a few everyday names."""
    short = re.sub(r"\b(North|South|East|West)ern\b", r"\1", subregion)
    return unique([subregion, short, *SUBREGION_ALIASES.get(subregion, [])])


@functools.lru_cache(maxsize=1)
def currency_units() -> dict[str, str]:
    """Currency code -> its bare unit ("JPY" -> "yen") where no other currency shares the unit."""
    names = {country.currency: country.currency_name for country in countries() if country.currency}
    codes_by_unit: dict[str, set[str]] = defaultdict(set)
    for code, name in names.items():
        if name:
            codes_by_unit[fold(name.split()[-1])].add(code)
    return {
        code: name.split()[-1]
        for code, name in names.items()
        if name and len(name.split()) > 1 and len(codes_by_unit[fold(name.split()[-1])]) == 1
    }


@functools.lru_cache(maxsize=1)
def named_places() -> dict[str, set[str]]:
    """Folded name -> ISO2 codes of the countries, capitals and states that bear it."""
    places: dict[str, set[str]] = defaultdict(set)
    for country in countries():
        for name in (country.name, display_name(country), country.capital or ""):
            if name:
                places[fold(name)].add(country.iso2)
    for state in states():
        places[fold(state_name(state))].add(state.country_code)
    return places


def state_name(state: Any) -> str:
    # "Famagusta (Mağusa)": the bracket holds a second-language name.
    return re.sub(r"\s*\(.*\)$", "", state.name)


# --- one builder per kind ---------------------------------------------------------------------


def row(kind: str, key: str, question: str, answers: list[str]) -> Row:
    # Rows are cached and many share one country's answer list: treat them as read-only.
    return {
        "question_id": f"{kind}:{key}",
        "question": question,
        "answers": answers,
        "kind": kind,
    }


def capital_name(country: Country) -> str:
    return CAPITAL_FIXES.get(country.iso2, country.capital or "")


def build_capital() -> list[Row]:
    return [
        row(
            "capital",
            country.iso2,
            f"What is the capital of {in_sentence(country)}?",
            with_diacritic_free(
                [capital_name(country), country.capital, *CAPITAL_ALIASES.get(country.iso2, [])]
            ),
        )
        for country in countries()
        if country.capital
    ]


def build_country_of_capital() -> list[Row]:
    return [
        row(
            "country_of_capital",
            country.iso2,
            f"Which country has {capital_name(country)} as its capital?",
            country_answers()[country.iso2],
        )
        for country in countries()
        if country.capital
    ]


def build_currency() -> list[Row]:
    units = currency_units()
    return [
        row(
            "currency",
            country.iso2,
            f"What is the currency of {in_sentence(country)}?",
            with_diacritic_free(
                [country.currency_name, country.currency, units.get(country.currency, "")]
            ),
        )
        for country in countries()
        if country.currency and country.currency_name
    ]


def build_continent() -> list[Row]:
    return [
        row(
            "continent",
            country.iso2,
            f"Which continent is {in_sentence(country)} in?",
            continent_answers(country),
        )
        for country in countries()
        if country.region
    ]


def build_subregion() -> list[Row]:
    rows = []
    for country in countries():
        region = "the Americas" if country.region == "Americas" else country.region
        question = f"Which part of {region} is {in_sentence(country)} in?"
        rows.append(row("subregion", country.iso2, question, subregion_answers(country.subregion)))
    return rows


def build_country_of_state() -> list[Row]:
    capitals = {country.iso2: fold(capital_name(country)) for country in countries()}
    rows = []
    for state in states():
        name = state_name(state)
        state_type = (state.type or "").strip()
        if not natural_place_name(name) or len(named_places()[fold(name)]) > 1:
            continue
        if fold(name) == capitals[state.country_code]:
            # "the division of Dhaka" would repeat the capital questions' fact in another form.
            continue
        if state_type.lower() in UNNAMED_STATE_TYPES or mentions(name, state_type.split()[-1]):
            # "Kunduz Province", "Northern Territory": the type is already in the name.
            place = name
        else:
            state_type = state_type.replace("london", "London")
            place = f"the {state_type} of {name}"
        rows.append(
            row(
                "country_of_state",
                f"{state.country_code}:{state.state_code}",
                f"In which country is {place}?",
                country_answers()[state.country_code],
            )
        )
    return rows


@functools.lru_cache(maxsize=1)
def askable_cities() -> dict[str, list[tuple[str, str]]]:
    """City kind -> (ISO2, name) of the cities it may ask about, each city in one kind only."""
    countries_by_name: dict[str, set[str]] = defaultdict(set)
    spelling: dict[tuple[str, str], str] = {}
    for city in cities():
        if natural_place_name(city.name):
            folded = fold(city.name)
            countries_by_name[folded].add(city.country_code)
            spelling.setdefault((city.country_code, folded), city.name)
    kinds: dict[str, list[tuple[str, str]]] = {"country_of_city": [], "continent_of_city": []}
    for (code, folded), name in sorted(spelling.items()):
        if len(countries_by_name[folded]) > 1 or folded in named_places():
            continue
        # A stable coin flip splits the cities between the two kinds, so no city's country is in
        # the training pool while its continent is in the eval set.
        coin = hashlib.sha256(f"{code}:{folded}".encode()).digest()[0] % 2
        kinds["country_of_city" if coin else "continent_of_city"].append((code, name))
    return kinds


def build_country_of_city() -> list[Row]:
    return [
        row(
            "country_of_city",
            f"{code}:{name}",
            f"In which country is the city of {name}?",
            country_answers()[code],
        )
        for code, name in askable_cities()["country_of_city"]
    ]


def build_continent_of_city() -> list[Row]:
    by_code = {country.iso2: country for country in countries()}
    return [
        row(
            "continent_of_city",
            f"{code}:{name}",
            f"Which continent is the city of {name} in?",
            continent_answers(by_code[code]),
        )
        for code, name in askable_cities()["continent_of_city"]
        if code not in TRANSCONTINENTAL
    ]


# Kind name -> builder of all its candidate questions. Order here is the order in the docs.
KINDS: dict[str, Callable[[], list[Row]]] = {
    "capital": build_capital,
    "country_of_capital": build_country_of_capital,
    "currency": build_currency,
    "continent": build_continent,
    "subregion": build_subregion,
    "country_of_state": build_country_of_state,
    "country_of_city": build_country_of_city,
    "continent_of_city": build_continent_of_city,
}

# Kind -> most questions of that kind in the pool (None: all of them). Chosen so the pool holds
# ~6,700 questions (5,000 train + 500 eval fit) at ~27% base accuracy; see the module docstring.
DEFAULT_KINDS: dict[str, int | None] = {
    "capital": None,
    "country_of_capital": None,
    "currency": None,
    "continent": None,
    "subregion": None,
    "country_of_state": 2000,
    "country_of_city": 1000,
    "continent_of_city": 2500,
}


@functools.lru_cache(maxsize=16)
def unambiguous_candidates(kind: str) -> tuple[Row, ...]:
    """Every question of `kind` whose text has a single answer, in question_id order."""
    by_text: dict[str, list[Row]] = defaultdict(list)
    for candidate in KINDS[kind]():
        by_text[candidate["question"].casefold()].append(candidate)
    # One text with different answers ("Which country has Kingston as its capital?") is ambiguous.
    rows = [
        group[0]
        for group in by_text.values()
        if len({tuple(candidate["answers"]) for candidate in group}) == 1
    ]
    return tuple(sorted(rows, key=lambda candidate: candidate["question_id"]))


def fair(candidate: Row) -> Row | None:
    """The question without answers it gives away, or None when it names its canonical answer.

    A question that contains its own answer ("Which continent is South Africa in?") tests
    reading, not knowledge. A secondary alias found in the question (Croatian "Tunis" for
    Tunisia, Sierra Leone's unit "leone") would credit an answer that only repeats the
    question, so it is dropped while the question stays.
    """
    canonical, *aliases = candidate["answers"]
    if mentions(candidate["question"], canonical):
        return None
    kept = [alias for alias in aliases if not mentions(candidate["question"], alias)]
    return candidate if len(kept) == len(aliases) else {**candidate, "answers": [canonical, *kept]}


def kind_candidates(kind: str, limit: int | None) -> list[Row]:
    """Up to `limit` fair questions of `kind` (all for None), picked by a seed-free ranking so the
    same `kinds` option always gives the same pool. Checked lazily: a city kind has ~60k
    candidates and the pool takes ~2k of them."""
    rows = unambiguous_candidates(kind)
    if limit is not None:
        rows = rank_by_seed(rows, f"kinds:{kind}")
    picked: list[Row] = []
    for candidate in rows:
        if limit is not None and len(picked) == limit:
            break
        checked = fair(candidate)
        if checked is not None:
            picked.append(checked)
    return picked


def candidates(kinds: Mapping[str, int | None]) -> list[Row]:
    """The pool for a kind mix, in question_id order: read from `pool_cache_path(kinds)` when
    this code built it from this package version before, else built (reading ~150k city
    records: 5-8 s on a 2-core EPYC, against 0.04 s to read the cached default pool) and
    cached."""
    path = pool_cache_path(kinds)
    with contextlib.suppress(OSError, ValueError):
        return json.loads(path.read_text())
    pool = sorted(
        (row for kind, limit in kinds.items() for row in kind_candidates(kind, limit)),
        key=lambda candidate: candidate["question_id"],
    )
    with contextlib.suppress(OSError):
        # written whole, then renamed: a job reading it meanwhile sees the old file or none
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(pool))
        partial.replace(path)
    return pool


def pool_cache_path(kinds: Mapping[str, int | None]) -> Path:
    """`$ENTROPIC_CACHE/questions/geo-<key>.json`, the key a hash of the kind mix, the package's
    version and the source of the code that builds the pool (this module and `entropic.data`),
    so a change to any of them builds the pool again."""
    key = hashlib.sha256(json.dumps(dict(kinds), sort_keys=True).encode())
    key.update(importlib.metadata.version("countrystatecity-countries").encode())
    for module in (__file__, data.__file__):
        key.update(Path(module).read_bytes())
    return cache_dir() / "questions" / f"geo-{key.hexdigest()[:16]}.json"


def resolve_kinds(kinds: Mapping[str, Any] | None) -> dict[str, int | None]:
    """The `kinds` option validated, with None meaning DEFAULT_KINDS."""
    return check_kind_counts(kinds, KINDS, source="geo", default=DEFAULT_KINDS)


def check_source(*, kinds: Mapping[str, Any] | None = None, split_seed: int = 0) -> None:
    """Validate the options without reading the package's data."""
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
    """Build the geo pool for `kinds` and split it (eval by `split_seed`, train by `seed`).

    kinds: question kind -> most questions of that kind (null: all, 0: none); None uses
        DEFAULT_KINDS. Kinds left out of the mapping are not asked.
    split_seed: picks the eval set; keep it fixed across a study so every run evaluates on the
        same questions.
    """
    check_source(kinds=kinds, split_seed=split_seed)
    return split_candidates(
        candidates(resolve_kinds(kinds)),
        train_size=train_size,
        eval_size=eval_size,
        seed=seed,
        split_seed=split_seed,
        source="geo",
    )
