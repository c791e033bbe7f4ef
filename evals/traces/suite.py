"""The ``traces:STORE[:APP][:N]`` regression suite: the app's own approved trajectories, held out of training.

Only trajectories a dataset build held out are used, never ones that were trained on: the split is
read from the ``datasets.json`` that ``ee datasets build --heldout-...`` wrote (``--split
DATA_DIR/datasets.json`` or ``split`` under ``[eval]``): its ``split.heldout_trajectories``, minus
anything it lists under ``split.train_trajectories``, that are still approved in ``STORE`` (of
``APP`` when given).

Each trajectory is a task:

* the user turns are the recorded user messages, in order (the first one is the task); the tools
  are the recorded tool schemas; the system prompt is the recorded one;
* the world is the trajectory's sandbox (``sandbox`` setting: a spec for
  :func:`~ee_middleware.replay.sandboxes.registry.build_sandbox`; default ``bfcl`` for the ``bfcl.*``
  apps that ``ee bfcl record-experts`` writes), reset to the trajectory's environment reference;
* success: the sandbox's :meth:`state_digest` after the candidate's run equals the digest after
  replaying the expert's recorded calls on a fresh world, **and** the facts of the expert's final
  answer appear in the candidate's replies (:func:`answer_facts`: its numbers, dates and identifiers, and the words it
  took from the tools' results, a capital that begins a sentence being no sign of a name unless the results never write
  the word in lower case; :func:`missing_facts` says which do not, reading a fact as a whole word and a number by its
  value and sign, never inside a longer token: the 3 of ``SKU-3``, ``SKU/3``, ``item:3`` or ``3rd``, the 5 of
  ``2025-05-01`` are no number, while ``3-day`` states 3 and a range ``3-5`` both 3 and 5, as ``3 to 5`` does).
  Otherwise the reason says which check failed, with the expert calls the candidate did not make or the facts it did
  not state;
* the expert's calls of tools the sandbox does not provide (``covers()`` false after the reset: a tool that acts outside
  the world, such as paging on-call, which docs/sandboxes.md says to list nowhere) change no world the digest could
  compare, so they are checked as calls (:func:`uncovered_calls_not_made`): the candidate must have made each of them, by
  name and arguments as the tool receives them (replay's :meth:`~ee_middleware.replay.policies.schema.ToolSchemas.call_key`:
  an argument at its schema's default is the argument left out, ``1.0`` is ``1``, a short string as written; free text,
  prose of four words or more, by the numbers, identifiers and content words it states, and its negation: see
  :func:`_states_the_same`), in any order (a maximum matching), else ``uncovered_call_missing``. Such a tool acts
  outside the world, where a call is not undone, so calling it more often than the expert did (a second page) is
  ``uncovered_call_extra``. Neither the expert's calls of such tools nor the candidate's are ever executed (the suite
  asks ``covers()`` before each call, as replay does, whatever the sandbox's ``execute`` would do with it); the
  candidate's are answered that the tool is not available (:func:`~ee_middleware.replay.sandboxes.protocol.refused`),
  and only matched. The result's ``details`` say how many expert calls were checked so (``uncovered_calls``),
  which the candidate did not make (``uncovered_calls_missing``) and which of its calls were beyond the expert's count
  (``uncovered_calls_extra``); a task whose expert made no such call is scored as before, with none of these keys.

Redaction (:mod:`ee_middleware.replay.privacy`, as replay does it): the recorded messages and calls hold the
store's placeholders (``[REDACTED:email:1a2b3c4d]``), and the candidate sees them, never the real values. Every call
that reaches the sandbox, the expert's and the candidate's, has its placeholders swapped for the values of the store's
redaction vault (:meth:`ReplayPrivacy.restore`), and every tool result is redacted with the store's rules and salt before
the candidate sees it (:meth:`ReplayPrivacy.redact_observation`), so it shows the placeholders the recording holds and
no file of the run holds a real value. A placeholder that cannot be restored (no vault, a value the vault lacks)
reaches the sandbox as it is and is reported: in an expert's call, the trajectory is left out (its expected world, and
the candidate's lookups, would not be the recorded ones); in a candidate's call, the result lists it under
``details["unrestored"]`` and its reason names it. The trajectory's environment reference, which the sandbox's world is
rebuilt from, is restored the same way before every reset (values and keys alike); a trajectory whose environment keeps a
placeholder is left out too (its world would not be the recorded one).

A trajectory that gives nothing to check (the expert changed nothing, called no tool the sandbox does not provide, and
its answer states no fact),
whose world cannot be rebuilt, whose expert's redacted arguments cannot be restored, or that is a curriculum
rollout (``source = curriculum``: the policy's own rollout on a model-written task) is left out when
the suite is built; the summary's ``excluded`` counts them and ``excluded_reasons`` says why. A ``sandbox`` setting
that names nothing (a typo in its module or factory) is no such trajectory: it fails when the suite is built, before
anything is written, with the plug-in registry's error (``did you mean ...?``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

from ee_middleware.errors import ConfigError, EEError, StoreError
from ee_middleware.evals.clients import bind
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.evals.matching import normalize
from ee_middleware.evals.tasks import Conversation, EvalTask, Message, TaskResult
from ee_middleware.messages import parse_arguments
from ee_middleware.models.protocol import ChatClient
from ee_middleware.records import Observation, ToolCall, Trajectory, offered_tools, tool_schema_name
from ee_middleware.replay.curriculum import CURRICULUM_SOURCE
from ee_middleware.replay.privacy import NO_PRIVACY, ReplayPrivacy, Unrestored, keys_holding
from ee_middleware.replay.sandboxes.protocol import refused

BFCL_APP_PREFIX = "bfcl."
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
"""Kana, CJK ideographs and Hangul: scripts whose words are not set apart by spaces (``合計は1234円です``): their letters
next to a number or a Latin token do not join it into a longer one (that answer states 1234)."""
_WORD_CHAR = rf"[^\W{_UNSPACED}]"
"""A letter of a script written with spaces (Latin, Cyrillic, Greek...), a digit or ``_``."""
_LETTER_OR_DIGIT = rf"[^\W_{_UNSPACED}]"
_TOKEN = re.compile(rf"(?:{_LETTER_OR_DIGIT}|[$#@])(?:{_WORD_CHAR}|[.\-@/#:$])*{_LETTER_OR_DIGIT}|\d")
_STOPWORDS = frozenset(
    [
        "the",
        "and",
        "for",
        "you",
        "your",
        "are",
        "was",
        "were",
        "with",
        "that",
        "this",
        "have",
        "has",
        "had",
        "not",
        "but",
        "can",
        "will",
        "would",
        "from",
        "into",
        "been",
        "done",
        "here",
        "there",
        "then",
        "than",
        "they",
        "them",
        "their",
        "what",
        "when",
        "which",
        "who",
        "how",
        "all",
        "any",
        "its",
        "our",
        "out",
        "per",
        "via",
        "yes",
    ]
)


def read_split(path: str | Path) -> tuple[set[str], set[str]]:
    """``(held-out ids, trained ids)`` from a ``datasets.json`` (or the folder holding one)."""
    file = Path(path)
    if file.is_dir():
        file = file / "datasets.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Cannot read the dataset split {file}: {exc}. Give the datasets.json that `ee datasets build` wrote.") from exc
    split = data.get("split") if isinstance(data, dict) else None
    if not isinstance(split, dict) or not isinstance(split.get("heldout_trajectories"), list):
        raise ConfigError(
            f"{file} records no held-out split, so every trajectory in it may have been trained on. Rebuild the datasets "
            "with a held-out rule (ee datasets build --heldout-share 0.1, or --heldout-ids/--heldout-app/--heldout-after)."
        )
    return set(split["heldout_trajectories"]), set(split.get("train_trajectories") or [])


def answer_facts(final_answer: str | None, observations: list[str]) -> list[str]:
    """The facts of an expert's final answer: tokens with a digit (amounts, dates, ids), and words of three letters or
    more that the expert's tool results contain, capitalized as a name is (:func:`_capitalised`) or not purely
    alphabetic, or lowercase where a result holds them as values of their own (:func:`_returned_as_value`: a product in
    a list, a quoted status).

    A capital that begins a sentence or a line is no evidence of a name by itself: a word the answer capitalises only
    there (``Moved 2 units ...``) is a name where the tools' results capitalise it where no sentence begins either
    (``shipped to Raleigh``, ``"city": "Raleigh"``) or never write it in lower case (``Smith approved the refund.``),
    and none where they do (``moved 2 SKU-1 ...``), so ``Moved 2 units ...`` and ``I moved 2 units ...`` then have the
    same facts.

    Numbers are read as the candidate's are (:func:`_readings`): a date in words is its ISO date (``May 1, 2025``:
    ``2025-05-01``), a range ``3-5`` its two numbers, ``3-day`` the number 3."""
    if not final_answer:
        return []
    seen = _facts_text(" ".join(observations))
    values = "\n".join(observations).lower()  # as written, list separators kept
    facts: list[str] = []
    judged: set[str] = set()  # a token's verdict does not depend on where it stands: each is judged once
    for reading in _readings(_facts_text(final_answer)):
        for token in reading.facts:
            if token in judged:
                continue
            judged.add(token)
            if any(c.isdigit() for c in token) or (
                len(token) >= 3
                and token not in _STOPWORDS
                and (not token.isalpha() or _returned_as_value(token, values) or _capitalised(token, final_answer, observations))
                and re.search(rf"(?<!\w){re.escape(token)}(?!\w)", seen)
            ):
                facts.append(token)
    return facts


class _Reading(NamedTuple):
    """A token of a text and the facts it states (:func:`_readings`)."""

    start: int
    end: int
    """Where the text that states ``facts`` is: the token's, a written date's, the number of ``3-day``."""
    facts: list[str]


def _readings(text: str) -> Iterator[_Reading]:
    """The tokens of ``text`` (as :func:`_facts_text` wrote it), each with the facts it states, read as :func:`_numbers`
    reads the candidate's numbers, so that a text states every fact read in it:

    * a date written in words (``may 1 2025``, ``1st of may 2025``) is one fact, its ISO date (``2025-05-01``), which any
      common form of it states; its month, day and year are no facts of their own;
    * a number with a minus sign before it is negative (``-250``, :func:`_negative`);
    * a number a hyphen joins to words (``3-day``, ``2.5-hour``, ``3-day-old``) is that number: ``a 3-day wait`` states
      3 as ``3 days`` does;
    * a short range ``3-5`` (:func:`_range`) is both its numbers, as ``3 to 5`` is (``#3-5`` is an id's: itself);
    * any other token is itself, without the punctuation around it (``sku-3``, ``10:30``, ``1.2.3``, ``w5952658``)."""
    dates = [(match.start(), match.end(), iso) for match in _WRITTEN_DATE.finditer(text) if (iso := _written_date(match))]
    date_end = -1  # the end of the date in words the last tokens were part of
    for match in _TOKEN.finditer(text):
        if match.start() < date_end:
            continue
        while dates and dates[0][1] <= match.start():
            dates.pop(0)
        if dates and dates[0][0] <= match.start():  # a date in words is read once, at its first token
            start, date_end, iso = dates.pop(0)
            yield _Reading(start, date_end, [iso])
            continue
        raw = match.group(0)
        token = raw.strip(".:/-$#")
        if not token:
            continue
        lead = raw[: raw.find(token)]
        compound = _COMPOUND.fullmatch(token)
        parts = _range(token) if "#" not in lead else None
        if compound:
            number = compound.group(1)
            sign = "-" if _negative(text, match.start(), raw, number) else ""
            at = match.start() + len(lead)
            yield _Reading(match.start(), at + len(number), [sign + number])
        elif parts:
            yield _Reading(match.start(), match.end(), list(parts))
        elif _negative(text, match.start(), raw, token):
            yield _Reading(match.start(), match.end(), [f"-{token}"])  # the sign is part of the fact, as in _numbers
        else:
            yield _Reading(match.start(), match.end(), [token])


def _capitalised(word: str, answer: str, observations: list[str]) -> bool:
    """Whether ``word`` (lower case) is written as a name is: capitalised in the ``answer`` where no sentence or line
    begins (:func:`_starts_sentence`), or there in capitals throughout (``IBM``: a sentence's start explains one capital,
    not all); or, when the answer capitalises it only where a sentence begins, capitalised in one of the tools'
    ``observations`` where no sentence or line begins either, or, if they too capitalise it only where a sentence begins,
    never written in lower case in them (``Smith approved the refund.``: a name; ``moved 2 SKU-1``: a capital that
    only begins a sentence). A word the answer never capitalises is none."""
    pattern = re.compile(rf"(?<!\w){re.escape(word)}(?!\w)", re.IGNORECASE)
    initial = False
    for match in pattern.finditer(answer):
        written = match.group(0)
        if not written[0].isupper():
            continue
        if written.isupper() or not _starts_sentence(answer, match.start()):
            return True
        initial = True
    if not initial:
        return False
    lowercase = False
    for observation in observations:
        for match in pattern.finditer(observation):
            if not match.group(0)[0].isupper():
                lowercase = True
            elif not _starts_sentence(observation, match.start()):
                return True
    return not lowercase


_OPENERS = frozenset("\"'\u201c\u2018\u00ab([{*\u2022\u00b7-\u2013\u2014>#")
"""What may stand between a sentence's start and its first word: opening quotes and brackets, bullets, dashes, ``>`` and
``#`` (a quoted or a Markdown line)."""


def _starts_sentence(text: str, start: int) -> bool:
    """Whether the word at ``start`` in ``text`` begins a sentence or a line: only whitespace and :data:`_OPENERS` stand
    between it and the text's start, a line break, or a ``.``, ``!`` or ``?`` (with one of them after it: ``3.5`` and
    ``Done.Moved`` are no sentence's end). A colon ends no sentence (``Done: Moved``, ``"city": "Raleigh"``)."""
    at = start
    while at > 0 and text[at - 1] not in "\n\r" and (text[at - 1].isspace() or text[at - 1] in _OPENERS):
        at -= 1
    return at == 0 or text[at - 1] in "\n\r" or (text[at - 1] in ".!?" and at < start)


def _negative(text: str, start: int, raw: str, token: str) -> bool:
    """Whether the token ``raw`` found at ``start`` in ``text`` is a negative amount, ``token`` being it without its
    punctuation: a number (or a number with a unit) with a minus sign before it or before its currency symbol
    (``-250``, ``-$250``, ``$-250``), read as :func:`_numbers` reads the candidate's (a ``-`` after a letter, a digit or
    a dot joins two words, ``A-20`` or ``10-20``, and is no sign)."""
    if not (_NUMBER.fullmatch(token) or _WITH_UNIT.fullmatch(token)):
        return False
    lead = raw[: raw.find(token)]
    # Only the last characters before the token can hold its sign, so the four before it are read, not the whole text
    # before it (which made reading a long text's numbers quadratic); a ``-`` at the cut would be too far to be a sign.
    return "-" in lead or re.search(r"(?:^|[^\w.])-[$€£]?$", text[max(0, start - 4) : start] + lead) is not None


_SIGN_DASHES = re.compile(r"[\u2212\ufe63\uff0d]|(?<![\w.])\u2013(?=[$€£]?\d)")
"""Dashes written as a number's minus sign: the minus sign (U+2212), its small and fullwidth forms (U+FE63, U+FF0D),
and an en dash (U+2013) before a number where a ``-`` would be a sign (not in ``10`` en dash ``20``, a range)."""


_HYPHENS = re.compile(r"[\u2010\u2011]|(?<![\w.])([^\W\d_]+)\u2013(?=\d)")
"""Dashes written as a hyphen: the hyphen (U+2010) and the non-breaking hyphen (U+2011), and an en dash (U+2013) between a
word of letters and a digit (``SKU`` en dash ``3`` is ``SKU-3``; not after a number's unit, ``9am`` en dash ``5pm``, a
range). An em dash is prose's punctuation (``done`` em dash ``3 units moved``), never an id's, and stays one."""


def _facts_text(text: str) -> str:
    """``text`` as facts are read in it: :func:`normalize`, with every minus sign written ``-`` (``250`` after a U+2212
    minus sign is ``-250``), every hyphen written ``-`` (:data:`_HYPHENS`: ``SKU`` U+2011 ``3`` is ``sku-3``) and every
    decimal digit written in ASCII (``١٢٣``, in Arabic-Indic digits, or in fullwidth ones, are ``123``: a number is one
    token, whatever script its digits are in)."""
    ascii_digits = _UNICODE_DIGIT.sub(lambda digit: str(unicodedata.decimal(digit.group(0))), normalize(text))
    return _SIGN_DASHES.sub("-", _HYPHENS.sub(lambda dash: f"{dash.group(1) or ''}-", ascii_digits))


_UNICODE_DIGIT = re.compile(r"(?![0-9])\d")
"""A decimal digit (Unicode category Nd) other than ``0``-``9``."""


_LITERALS = frozenset({"true", "false", "null", "none", "nan"})


def _returned_as_value(word: str, observations: str) -> bool:
    """Whether the tools' results (lowercased) hold ``word`` as a value of its own: quoted and not a key (a JSON string),
    or an item of a list (between brackets, commas, semicolons, line breaks or after a colon), not a word of prose."""
    if word in _LITERALS:  # JSON's and Python's unquoted literals: the tool's syntax, not a value it named
        return False
    quoted = rf"[\"']{re.escape(word)}[\"'](?!\s*:)"
    listed = rf"(?:^|[\[,;]|:[ \t])[ \t]*{re.escape(word)}[ \t]*(?=[,;\]]|$)"
    return re.search(quoted, observations) is not None or re.search(listed, observations, re.MULTILINE) is not None


def missing_facts(facts: list[str], replies: list[str]) -> list[str]:
    """The ``facts`` (from :func:`answer_facts`) that none of the candidate's ``replies`` states.

    A fact is stated as a whole word, never inside a longer one (``ua100`` is not in ``UA1000``, ``2`` not in
    ``DL200``, ``3`` not in ``SKU-3``, ``SKU/3``, ``item:3`` or ``3rd``, ``5`` not in ``2025-05-01``, ``o-104`` not in
    ``O-104-2``; a range ``3-5`` states 3 and 5, as ``3 to 5`` does, and ``3-day`` states 3: see :func:`_numbers`),
    with the case and thousands separators ignored. A number is stated by its value and sign however it is
    written (``1250.00`` by ``$1,250``, ``40.5`` by ``40.50``, ``-250`` by ``-$250`` or with a U+2212 minus sign, not by ``250``), a count up to twenty also in words (``3`` by ``three``), a number
    with a unit by the same number and unit (``21c`` by ``21 °C``), and a date also as ``May 1, 2024`` or
    ``1 May 2024`` (``2024-05-01``).
    """
    texts = [_facts_text(reply) for reply in replies]
    numbers = {value for text in texts for value in _numbers(text)}
    dates = {day for text in texts for day in _dates(text)}
    return [fact for fact in facts if not _stated(fact, texts, numbers, dates)]


def _stated(fact: str, texts: list[str], numbers: set[Decimal], dates: set[dt.date]) -> bool:
    number = _NUMBER.fullmatch(fact)
    # A whole word: not inside a longer one, nor a longer number (12 is not stated by 12.99, nor 3 by 3.5); a fact with a
    # digit (an id, a date) not inside a longer token a hyphen joins either (O-104 is not stated by O-104-2, A1 by SKU-A1).
    joined = rf"(?<!{_LETTER_OR_DIGIT}-)" if any(c.isdigit() for c in fact) else ""
    after = rf"(?!-{_LETTER_OR_DIGIT})" if joined else ""
    whole = rf"(?<!{_LETTER_OR_DIGIT}){joined}(?<!\d\.){re.escape(fact)}(?!{_LETTER_OR_DIGIT}){after}(?!\.\d)"
    if not number and any(re.search(whole, text) for text in texts):
        return True
    if number:
        value = Decimal(number.group(1))
        if value in numbers:
            return True
        word = _COUNT_WORDS.get(int(value)) if value == value.to_integral_value() and 0 <= value <= 20 else None
        # a word of its own: twenty-one does not state 20, as 21-a does not state 21; three-day states 3, as 3-day does
        spelled = rf"(?<![a-z])(?<![a-z0-9]-){word}(?![a-z])(?!-(?!(?!{_UNIT_WORDS}){_HYPHEN_WORDS}))"
        return word is not None and any(re.search(spelled, text) for text in texts)
    with_unit = _WITH_UNIT.fullmatch(fact)
    if with_unit:
        amount, unit = with_unit.groups()
        # the same sign (-5c is not stated by 5 °C), and no '-' before a positive one: a sign, or a hyphen joining it to
        # a longer token (room A-5C), as the number alone in _numbers
        sign = _SIGN if amount.startswith("-") else r"(?<!-)"
        digits = re.escape(amount.lstrip("-"))
        pattern = rf"(?<![\w.]){sign}(?<!\w[/:]){digits}(?:\.0+)?\s*°?\s*{re.escape(unit)}(?![a-z0-9])(?!-[a-z0-9])"
        return any(re.search(pattern, text) for text in texts)
    if _ISO_DATE.fullmatch(fact):
        try:
            return dt.date.fromisoformat(fact) in dates
        except ValueError:
            return False
    return False


def _numbers(text: str) -> set[Decimal]:
    """The numbers ``text`` states, by value and with their sign (``-250``, ``-$250`` and ``$-250`` are all -250).

    A number is a token of its own: digits a hyphen, a slash or a colon joins to a letter or a digit are part of a longer
    token and no number (the 3 of ``SKU-3``, ``SKU/3`` and ``item:3``, the 20 of ``UA-20``, the 2025, 05 and 01 of
    ``2025-05-01`` and ``2025/05/01``, the 10 and 30 of ``10:30``, the 3 of ``3-a1``), nor are an ordinal (``3rd``) or
    digits a dot joins to more digits (``1.2.3``, a version, states no 1.2). A hyphen and a word after a number leave it
    a number (``3-day``, ``2.5-hour``: an adjective, not an id), and so does ``#`` before it (``order #123`` states the
    ``123`` of ``order 123``).

    A range states both its numbers: written with spaces or words (``3 - 5``, ``3 to 5``), an en dash (``3``, U+2013,
    ``5``), or a hyphen where it can be nothing else (:func:`_range`: ``3-5``, ``10-20``, ``2019-2024``; not a date,
    a phone number or its pieces, a score ``2-1``, nor a part of a longer id). A minus sign not after a letter, a digit or
    a dot is a sign (``-3``, ``a change of -3``, ``(-3)``)."""
    found = set()
    for sign, value in _SIGNED_NUMBER.findall(text):
        found.add(-Decimal(value) if "-" in sign else Decimal(value))
    for match in _RANGE.finditer(text):
        found.update(Decimal(part) for part in _range(match.group(0)) or ())
    return found


def _range(token: str) -> tuple[str, str] | None:
    """The two numbers of ``token`` when it is a range written with a hyphen, else None: two parts of digits only, the
    first smaller, without a leading zero, each of one to three digits or both of four (``3-5``, ``10-20``,
    ``2019-2024``). Not a year and a month (``2025-05``), a phone number's pieces (``555-1234``), a score (``2-1``) or
    ``01-05``; a date or a phone number, of three parts, is no two-part token."""
    match = _RANGE_PARTS.fullmatch(token)
    if not match:
        return None
    low, high = match.groups()
    if any(len(part) > 1 and part.startswith("0") for part in (low, high)) or int(low) >= int(high):
        return None
    if (len(low) == 4) != (len(high) == 4):
        return None
    return low, high


def _written_date(match: re.Match[str]) -> str | None:
    """The ISO date (``2025-05-01``) a :data:`_WRITTEN_DATE` match writes, None when it is no date (``may 32 2025``)."""
    month, day, year = match.group("month") or match.group("month2"), match.group("day") or match.group("day2"), match.group("year")
    try:
        return dt.date(int(year), _MONTHS[month[:3]], int(day)).isoformat()
    except (KeyError, ValueError):
        return None


def _dates(text: str) -> set[dt.date]:
    found = {dt.date.fromisoformat(iso) for match in _WRITTEN_DATE.finditer(text) if (iso := _written_date(match))}
    for match in re.finditer(r"\b(\d{4})[-/](\d{1,2})[-/](\d{1,2})\b", text):
        try:
            found.add(dt.date(*(int(part) for part in match.groups())))
        except ValueError:
            continue
    return found


_NUMBER = re.compile(r"[$€£]?(-?\d+(?:\.\d+)?)%?")
_WITH_UNIT = re.compile(r"(-?\d+(?:\.\d+)?)([a-z%°]{1,4})")
_SIGN = rf"(?:(?<!{_WORD_CHAR})(?<!\.)-)"
"""A minus sign: a ``-`` not after a letter, a digit or a dot (``A-20`` and ``10-20`` join words)."""
_HYPHEN_WORDS = r"[^\W\d_]{2,}(?:-[^\W\d_]{2,})*(?![\w-])"
"""What may follow a number and a hyphen, the number staying one: words of two letters or more (``3-day``,
``3-day-old``), not an id's part (``3-a``, ``3-a1``, ``3-ab1``) nor a number (``2025-05``)."""
_UNIT_WORDS = r"(?:one|two|three|four|five|six|seven|eight|nine|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)(?![a-z])"
"""Count words a hyphen joins to a tens word (``twenty-one``), which then states no number of its own."""
_SIGNED_NUMBER = re.compile(
    rf"(?<!{_WORD_CHAR})(?<!\.)(?<!{_WORD_CHAR}-)(?<!\.-)({_SIGN}[$€£]?|[$€£]-|[$€£]?)(?<!{_WORD_CHAR}[/:])(\d+(?:\.\d+)?)"
    rf"(?!\d)(?!\.\d)(?![/:]\d)(?!(?:st|nd|rd|th)(?![^\W\d_]))(?!-(?!{_HYPHEN_WORDS}))"
)
"""A number of its own (:func:`_numbers`): with its sign, not after a letter, a digit or a dot, nor after a hyphen, a
slash or a colon that follows one (``SKU-3``, ``SKU/3``, ``item:3``, ``10:30``), and not followed by
more digits, a dot and a digit (``1.2.3``), a slash or a colon and a digit (``3/5``, ``10:30``), an ordinal's suffix
(``3rd``) or a hyphen and anything but words (``2025-05``, ``3-a1``; ``3-day`` is 3)."""
_RANGE_PARTS = re.compile(r"(\d+)-(\d+)")
_RANGE = re.compile(r"(?<![\w.\-/:#])\d+-\d+(?![\w-])(?!\.\d)(?![/:]\d)")
"""A token of two hyphenated numbers, not part of a longer one (:func:`_range` says whether it is a range)."""
_COMPOUND = re.compile(rf"(\d+(?:\.\d+)?)-{_HYPHEN_WORDS}")
"""A number a hyphen joins to words (``3-day``): the number (:func:`_readings`)."""

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTHS = {
    name: number for number, name in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)
}
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_WRITTEN_DATE = re.compile(
    rf"\b(?:(?P<month>{_MONTH})\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?|(?P<day2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<month2>{_MONTH}))\s*,?\s+(?P<year>\d{{4}})\b"
)
_NUMBER_WORDS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
_COUNT_WORDS = dict(enumerate(_NUMBER_WORDS.split()))


def sandbox_spec(app: str, setting: str | None) -> str | None:
    """The sandbox for trajectories of ``app``: the setting, else ``bfcl`` for BFCL expert apps."""
    if setting:
        return setting
    return "bfcl" if app.startswith(BFCL_APP_PREFIX) else None


def trajectory_task(trajectory: Trajectory, suite: str, sandbox: str, privacy: ReplayPrivacy = NO_PRIVACY) -> EvalTask:
    """A trajectory as a task: recorded user turns and tools, the expert's messages as the oracle's reference.

    ``privacy``: the store's redaction and vault (:meth:`ReplayPrivacy.of_store`), applied at the sandbox when it runs."""
    system: list[str] = []
    turns: list[list[Message]] = []
    reference: list[list[Message]] = []
    for message in run_messages(trajectory):
        role = message.get("role")
        if role in ("system", "developer") and not turns:
            system.append(str(message.get("content") or ""))
        elif role in ("user", "system", "developer"):
            if not turns or reference[-1]:
                turns.append([])
                reference.append([])
            turns[-1].append({"role": role, "content": message.get("content") or ""})
        elif role == "assistant" and turns:
            reference[-1].append({k: message[k] for k in ("role", "content", "tool_calls") if k in message})
    calls = [*earlier_runs_calls(trajectory), *(s.action.tool_call for s in trajectory.steps if s.action.tool_call is not None)]
    observations = [s.observation.content for s in trajectory.steps if s.observation is not None and not s.observation.is_error]
    return EvalTask(
        suite=suite,
        id=trajectory.id,
        category=trajectory.app,
        turns=turns,
        tools=turn_tools(trajectory, len(turns)),
        reference=reference,
        payload={
            "sandbox": sandbox,
            "environment": trajectory.environment,
            "expert_calls": [c.model_dump() for c in calls],
            "final_answer": trajectory.final_answer,
            "facts": answer_facts(trajectory.final_answer, observations),
            "privacy": dataclasses.asdict(privacy),  # plain data: a task crosses to worker processes
        },
        system="\n\n".join(system) or None,
    )


def earlier_runs_calls(trajectory: Trajectory) -> list[ToolCall]:
    """The tool calls of the thread's earlier runs that this run's conversation holds (the assistant messages of its
    first decision's history), in order: the world this run started in had them made. A task gives the candidate every
    user turn of the conversation (:func:`trajectory_task`), so the expert's world makes them before the run's own, and
    a candidate is asked to make them again; without them the expert's world lacked what the earlier turns wrote, and no
    answer, the expert's own neither, could match it."""
    if not trajectory.steps:
        return []
    calls = []
    for message in min(trajectory.steps, key=lambda step: step.index).state:
        if message.get("role") != "assistant":
            continue
        for item in message.get("tool_calls") or ():
            function = item.get("function") if isinstance(item, dict) else None
            if isinstance(function, dict) and function.get("name"):
                arguments = parse_arguments(function.get("arguments"))
                calls.append(ToolCall(id=str(item.get("id") or ""), name=str(function["name"]), arguments=arguments))
    return calls


def turn_tools(trajectory: Trajectory, turns: int) -> list[list[dict[str, Any]]]:
    """The tool schemas offered at each of the run's ``turns`` user turns: the trajectory's ``tools`` at every turn, but
    where its steps record their own (``Step.tools``: a tool added at a later turn, as BFCL ``multi_turn_miss_func``
    does; a middleware choosing tools per call) those of the turn's steps, first offer first (a turn without steps is
    offered all; one whose steps were offered none, none). A step's turn is the number of user turns its state holds."""
    every = offered_tools(trajectory.tools, None)  # (the first schema of a tool offered with several)
    if all(step.tools is None for step in trajectory.steps):
        return [list(every)] * turns
    offered: list[dict[str, dict[str, Any]] | None] = [None] * turns  # None: no step of that turn says
    for step in trajectory.steps:
        turn = min(max(_user_turns(step.state) - 1, 0), turns - 1)
        if offered[turn] is None:
            offered[turn] = {}
        for schema in trajectory.step_tools(step):
            # one schema per name: a tool the turn's steps were offered with several (rewritten per call) keeps its first
            key = tool_schema_name(schema) or json.dumps(schema, sort_keys=True)
            offered[turn].setdefault(key, schema)  # type: ignore[union-attr]
    # A turn whose steps were offered no tool at all ([]) is offered none, not all of them.
    return [list(schemas.values()) if schemas is not None else list(every) for schemas in offered]


def _user_turns(state: list[Message]) -> int:
    """How many user turns ``state`` holds, counted as :func:`trajectory_task` counts them: a user (or a later system)
    message after the start or after an assistant message begins one."""
    count, replied = 0, True
    for message in state:
        role = message.get("role")
        if role == "user" or (role in ("system", "developer") and count):
            count, replied = count + (1 if replied else 0), False
        elif role == "assistant":
            replied = True
    return count


def run_messages(trajectory: Trajectory) -> list[Message]:
    """The whole conversation of the run: ``trajectory.messages`` (the history its model last saw, and its reply) when
    each decision's history went on from the one before. A middleware that rewrote the history mid-run
    (``SummarizationMiddleware``: the messages before a point become one user message holding their summary) left
    the last history without the task and the turns before the summary: the conversation is then rebuilt from every
    decision's history, what each one added after the reply of the decision before it. A history that holds no such
    reply adds nothing (its user messages may be a summary)."""
    decisions: dict[int, list[Any]] = {}
    for step in trajectory.steps:
        decisions.setdefault(step.decision_index, []).append(step)
    states = [steps[0].state for steps in decisions.values()]
    if not states:
        return list(trajectory.messages)
    rewritten = any(later[: len(earlier)] != earlier for earlier, later in itertools.pairwise(states))
    if not rewritten and trajectory.messages[: len(states[-1])] == states[-1]:
        return list(trajectory.messages)
    conversation = list(states[0])
    previous, replies = states[0], list(decisions.values())
    for steps, state in zip(replies, states[1:], strict=False):
        if state[: len(previous)] == previous:
            conversation += state[len(previous) :]
        else:
            at = _reply_position(state, steps)
            conversation += state[at:] if at is not None else [_reply(steps)]
        previous = state
    last = states[-1]
    if trajectory.messages[: len(last)] == last:
        conversation += trajectory.messages[len(last) :]
    else:
        conversation.append(_reply(replies[-1]))
    return conversation


def _reply_position(state: list[Message], steps: list[Any]) -> int | None:
    """Where ``steps``' decision's reply (the assistant message making its calls, or its answer) is in ``state``."""
    ids = {s.action.tool_call.id for s in steps if s.action.tool_call is not None}
    for at in range(len(state) - 1, -1, -1):
        message = state[at]
        if message.get("role") != "assistant":
            continue
        made = {c.get("id") for c in message.get("tool_calls") or ()}
        if (ids and made == ids) or (not ids and not made and message.get("content") == steps[0].action.content):
            return at
    return None


def _reply(steps: list[Any]) -> Message:
    """The assistant message of a decision, from its steps (its calls, or its answer)."""
    calls = [s.action.tool_call.to_openai() for s in steps if s.action.tool_call is not None]
    message: Message = {"role": "assistant", "content": steps[0].action.content or ""}
    if calls:
        message["tool_calls"] = calls
    return message


def expert_digests(sandbox: Any, task: EvalTask) -> tuple[str, str]:
    """``(digest at step 0, digest after the expert's calls)``, replayed on a fresh world (with the vault's values)."""
    expert = _expert_world(sandbox, task)
    return expert.start, expert.end


@dataclasses.dataclass(frozen=True)
class _ExpertWorld:
    """The expert's calls replayed on a fresh world (:func:`_expert_world`)."""

    start: str
    """The world's digest at step 0."""
    end: str
    """Its digest after the expert's calls."""
    unrestored: list[tuple[str, Unrestored]]
    """The placeholders of the expert's calls the sandbox got as they are, with their tools."""
    uncovered: list[dict[str, Any]]
    """The expert's calls of tools the sandbox does not provide (``covers()`` false when the call came), as recorded."""


def _expert_world(sandbox: Any, task: EvalTask) -> _ExpertWorld:
    """:func:`expert_digests`, with the placeholders the sandbox got as they are and the calls of tools it does not
    provide (never executed, as replay never executes them, nor a candidate's: they change no world)."""
    from ee_middleware.replay.sandboxes.protocol import state_digest

    world = _AtTheSandbox(sandbox, task_privacy(task))
    world.reset(task.payload["environment"], task.tools)
    start = state_digest(sandbox)
    uncovered = []
    for call in task.payload["expert_calls"]:
        if _malformed(call, task):
            continue  # no tool ran it in production (the graph answered it): replay leaves it unexecuted too
        if not sandbox.covers(call["name"]):  # asked as replay asks: before the call
            uncovered.append(call)
            continue
        world.execute(ToolCall(**call))
    return _ExpertWorld(start, state_digest(sandbox), world.unrestored, uncovered)


def _malformed(call: dict[str, Any], task: EvalTask) -> bool:
    """Whether ``call`` (a :class:`~ee_middleware.records.ToolCall` dumped) is one the model wrote malformed: capture's
    mark (``malformed``) where it is recorded, else its only argument ``_raw``, whatever it holds, for a tool whose
    offered schema does not declare ``_raw``. The graph answered it itself, no tool ran, so the expert world does not
    execute it, no candidate is asked to make it and a candidate's never counts as made. The one rule replay and IL
    read (:mod:`ee_middleware.replay.malformed`).

    A candidate's calls carry no mark (the model parser holds no call it could not read: that is a parse problem), so a
    ``_raw``-only one is judged by the shape rule, but for a tool production ran with ``_raw`` as its only argument (an
    expert call of it marked well formed: a tool that takes any argument): the same call by the candidate is the
    expert's, not a malformed one."""
    from ee_middleware.replay.malformed import malformed_arguments, malformed_by_the_model

    tools = [schema for turn in task.tools for schema in turn]
    name, arguments, mark = str(call.get("name") or ""), call.get("arguments") or {}, call.get("malformed")
    if mark is None and malformed_arguments(arguments) and name in _tools_run_with_raw(task):
        return False
    return malformed_by_the_model(tools, name, arguments, mark)


def _tools_run_with_raw(task: EvalTask) -> set[str]:
    """The tools of the expert's calls with ``_raw`` as their only argument that capture marked well formed (a tool ran
    them in production)."""
    from ee_middleware.replay.malformed import malformed_arguments

    return {
        str(call.get("name") or "")
        for call in task.payload.get("expert_calls") or []
        if call.get("malformed") is False and malformed_arguments(call.get("arguments") or {})
    }


def task_privacy(task: EvalTask) -> ReplayPrivacy:
    """The store's redaction and vault a task of this suite runs with (none for a task built without)."""
    recorded = task.payload.get("privacy")
    return ReplayPrivacy(**recorded) if recorded else NO_PRIVACY


ENVIRONMENT = "the environment reference"
"""Where an unrestored placeholder was, in :attr:`_AtTheSandbox.unrestored`, when it was in no tool's call."""


class _AtTheSandbox:
    """The sandbox as the agent loop's environment, with the store's redaction at its boundary (as replay's
    ``_Run.execute``): placeholders restored going in, the result redacted coming out; what could not be restored is
    kept, with the tool, in :attr:`unrestored`."""

    def __init__(self, sandbox: Any, privacy: ReplayPrivacy) -> None:
        self.sandbox, self.privacy = sandbox, privacy
        self.unrestored: list[tuple[str, Unrestored]] = []
        """What could not be restored, with the tool whose call held it (:data:`ENVIRONMENT`: the environment)."""

    def reset(self, environment: dict[str, Any] | None, tools: list[list[dict[str, Any]]]) -> None:
        """Reset the sandbox to ``environment`` with its placeholders restored, and have it check the tools the task
        offers (``EvalTask.tools``, by turn), as replay resets it and checks a trajectory's: a production tool listed where
        a function of the world goes raises before anything runs."""
        from ee_middleware.replay.sandboxes.protocol import check_offered_tools

        restored, missing = self.privacy.restore_environment(environment)
        self.unrestored += [(ENVIRONMENT, u) for u in missing]
        self.sandbox.reset(restored)
        check_offered_tools(self.sandbox, [schema for turn in tools for schema in turn])

    def execute(self, call: ToolCall) -> Observation:
        """The sandbox's answer to ``call``; a call of a tool it does not cover is refused here, never executed (a tool
        that acts outside the world: paging on-call, a webhook)."""
        if not self.sandbox.covers(call.name):
            return refused(self.sandbox, call.name)
        restored, missing = self.privacy.restore(call)
        self.unrestored += [(call.name, u) for u in missing]
        observation: Observation = self.sandbox.execute(restored)
        return self.privacy.redact_observation(observation)


class TracesSuite:
    """Held-out approved trajectories of a store (optionally one app) as an eval suite.

    ``sandbox`` (a spec for :func:`~ee_middleware.replay.sandboxes.registry.build_sandbox`) is resolved when the suite is
    built (:func:`~ee_middleware.replay.sandboxes.registry.check_sandbox_spec`: its module imported, its factory found),
    so that one that names nothing raises :class:`~ee_middleware.errors.SandboxError` before anything is written."""

    def __init__(
        self, store: str, app: str | None = None, limit: int | None = None, *, split: str | None = None, sandbox: str | None = None
    ):
        if not split:
            raise ConfigError(
                "traces: suites evaluate only trajectories held out of training. Give the split of the dataset build the model "
                "was trained from: --split DATA_DIR/datasets.json (or split under [eval]); build one with "
                "`ee datasets build --heldout-share 0.1` (or --heldout-ids/--heldout-app/--heldout-after)."
            )
        if sandbox:
            from ee_middleware.replay.sandboxes.registry import check_sandbox_spec

            # A spec that names nothing (a typo in its module or factory) is the command's error, raised here, before
            # any run folder is written, with the plug-in registry's "did you mean"; left to each trajectory, it read as
            # every world being impossible to rebuild, and the run "scored no task" with exit 0. A sandbox that resolves
            # but cannot rebuild a trajectory's world still leaves that trajectory out (_task).
            check_sandbox_spec(sandbox)
        self.store, self.app, self.limit, self.split, self.sandbox = store, app, limit, split, sandbox
        self.name = f"traces:{store}" + (f":{app}" if app else "")
        self.excluded: dict[str, str] = {}

    def tasks(self) -> list[EvalTask]:
        from ee_middleware.store.registry import open_store, said_where_set

        heldout, trained = read_split(self.split)  # type: ignore[arg-type]
        try:
            store = open_store(self.store, create=False)
        except StoreError as exc:
            origin = f"the suite {self.name}"
            if self.store.isdigit():  # traces:2: one part is the store, not N
                origin += f"; to take {self.store} tasks from a store write traces:STORE:{self.store}"
            exc.args = (said_where_set(str(exc), origin),)  # the same error (its class: --json's error type), told where
            raise
        try:
            privacy = ReplayPrivacy.of_store(store)  # the store's redaction rules, salt and vault, as replay reads them
            frame = store.trajectories(status="approved", app=self.app)
            if "started_at" in frame.columns:  # oldest first (the first N of :N), not in the order they were written in
                frame = frame.sort(["started_at", "id"], nulls_last=True)
            ids = [i for i in frame["id"].to_list() if i in heldout and i not in trained]
            if not ids:
                where = f"{self.store}" + (f" (app {self.app})" if self.app else "")
                raise ConfigError(
                    f"None of the {len(heldout)} held-out trajectories of {self.split} is an approved trajectory in {where}. "
                    "Check the store and the app match the dataset build."
                )
            self._check_sandbox_given(dict(zip(frame["id"].to_list(), frame["app"].to_list(), strict=True)), ids)
            tasks: list[EvalTask] = []
            self.excluded = {}
            for trajectory_id in ids:
                if self.limit is not None and len(tasks) >= self.limit:
                    break
                task, why = self._task(store.get(trajectory_id), privacy)
                if task is None:
                    self.excluded[trajectory_id] = why
                else:
                    tasks.append(task)
            return tasks
        finally:
            store.close()

    def _check_sandbox_given(self, apps: dict[str, str], ids: list[str]) -> None:
        """Raise :class:`ConfigError` when no sandbox is set and none of the held-out trajectories ``ids`` (``apps``: id ->
        app) has a default one (:func:`sandbox_spec`: only BFCL expert apps do): every task would be left out, and the
        run would score nothing. A store mixing BFCL and other apps runs its BFCL ones and leaves the others out, saying
        why, as before."""
        if self.sandbox or any(sandbox_spec(apps[i], None) for i in ids):
            return
        names = ", ".join(repr(app) for app in sorted({apps[i] for i in ids}))
        raise ConfigError(
            f"The suite {self.name} has no sandbox to run its {len(ids)} held-out trajectories in: they are of the app(s) "
            f"{names}, and only BFCL expert apps ({BFCL_APP_PREFIX}*) have a default one (bfcl), so every task would be "
            "left out and the run would score nothing. Give the sandbox their tools run in: --sandbox package.module:factory "
            "(sandbox under [eval]; the one `ee replay run --sandbox` takes, docs/sandboxes.md)."
        )

    def _task(self, trajectory: Trajectory, privacy: ReplayPrivacy = NO_PRIVACY) -> tuple[EvalTask | None, str]:
        from ee_middleware.replay.sandboxes.registry import build_sandbox

        if trajectory.status == "interrupted":
            # Paused for a human review (or a breakpoint): it ends on calls the reviewer may still change or reject, so
            # replaying them would expect what may never have happened; the resumed run's trajectory holds the turn.
            return (
                None,
                "it paused before its task was done (interrupted: a human review, a breakpoint); its last calls were not decided yet",
            )
        if trajectory.source == CURRICULUM_SOURCE:
            return None, (
                "a curriculum rollout (source=curriculum): its 'expert' is the policy's own rollout on a task a model wrote, "
                "approved by a judge model, not a recorded run to measure a model against"
            )
        spec = sandbox_spec(trajectory.app, self.sandbox)
        if spec is None:
            return None, f"no sandbox for app {trajectory.app!r}: give --sandbox package.module:factory (sandbox under [eval])"
        task = trajectory_task(trajectory, self.name, spec, privacy)
        if not task.turns:
            return None, "the trajectory has no user message"
        try:
            sandbox = build_sandbox(spec)
            try:
                expert = _expert_world(sandbox, task)
            finally:
                sandbox.close()
        except EEError as exc:
            # (the sandbox got the vault's values: what it says of them is redacted, as its results are)
            return None, f"its world cannot be rebuilt in the {spec!r} sandbox: {privacy.redact_data(str(exc))}"
        unrestored = expert.unrestored
        in_world = [u for where, u in unrestored if where == ENVIRONMENT]
        if in_world:
            # The world was built with the placeholder: as replay flags every expert step of such a trajectory. The
            # reason names the keys, not the placeholders, so that the summary counts trajectories alike together.
            keys = ", ".join(keys_holding(task.payload["environment"], in_world))
            reasons = "; ".join(sorted({u.reason for u in in_world}))
            return None, (
                f"its environment reference holds redacted values the sandbox's world cannot be given ({keys}: {reasons}), "
                "so neither its expected world nor a candidate's calls would be the recorded ones"
            )
        if unrestored:
            # As replay flags such a step unrestorable: the placeholder reached the sandbox as it is, so neither the
            # expected world nor a candidate's lookups are the recorded ones. The reason names no placeholder, so that
            # the summary counts the trajectories left out for one cause together.
            tools = ", ".join(sorted({tool for tool, _ in unrestored}))
            reasons = "; ".join(sorted({u.reason for _, u in unrestored}))
            return None, (
                f"the sandbox cannot be given the real values of its expert's redacted arguments ({tools}: {reasons}), so "
                "neither its expected world nor a candidate's calls would be the recorded ones"
            )
        if expert.start == expert.end and not task.payload["facts"] and not expert.uncovered:
            return None, "nothing to check: the expert changed no state and its final answer states no fact"
        return task, ""

    def run(self, client: ChatClient, task: EvalTask, trial: int, config: LoopConfig) -> TaskResult:
        from ee_middleware.replay.sandboxes.protocol import state_digest
        from ee_middleware.replay.sandboxes.registry import build_sandbox

        started = time.perf_counter()
        privacy = task_privacy(task)
        sandbox = build_sandbox(task.payload["sandbox"])
        try:
            expert = _expert_world(sandbox, task)
            world = _AtTheSandbox(sandbox, privacy)  # the candidate sees placeholders; the sandbox gets the real values
            world.reset(task.payload["environment"], task.tools)
            conversation = run_conversation(bind(client, task), task, world, config, trial=trial)
            actual = state_digest(sandbox) if conversation.error is None else None
        finally:
            sandbox.close()
        if conversation.error is not None:  # a tool that raised may name the value it was given
            conversation.error = privacy.redact_data(conversation.error)
        success, error_type, reason, details = self.score(task, conversation, actual, expert.end, expert.uncovered)
        unrestored = list({u.placeholder: u for _, u in world.unrestored}.values())
        if unrestored:
            details = {**details, "unrestored": [{"placeholder": u.placeholder, "reason": u.reason} for u in unrestored]}
            if not success:
                given = ", ".join(f"{u.placeholder} ({u.reason})" for u in unrestored)
                reason = f"{reason}; the sandbox got these placeholders as they are, their values unknown: {given}"
        return TaskResult(
            self.name, task.category, task.id, trial, success, reason, error_type, conversation, time.perf_counter() - started, details
        )

    @staticmethod
    def score(
        task: EvalTask, conversation: Conversation, actual: str | None, expected: str, uncovered: list[dict[str, Any]] | None = None
    ) -> tuple[bool, str | None, str | None, dict[str, Any]]:
        """``(success, error type, reason, details)`` of a candidate's run: its final world's digest ``actual`` against
        the expert's ``expected``, the facts of the expert's answer in its replies and, for ``uncovered`` (the expert's
        calls of tools the sandbox does not provide), the same calls among its own (:func:`uncovered_calls_not_made`).
        Failures in that order: ``state_mismatch``, ``answer_not_covered``, ``uncovered_call_missing``,
        ``uncovered_call_extra`` (a call of such a tool beyond the expert's count of it)."""
        if conversation.error is not None:
            return False, conversation.error_type, conversation.error, {}
        missing = missing_facts(task.payload["facts"], conversation.replies)
        details = {"digest": actual, "expected_digest": expected, "missing_facts": missing}
        problems = []
        if actual != expected:
            made = [c.model_dump() for c in conversation.calls]
            not_made = _calls_not_made(task.payload["expert_calls"], made)
            instead = _calls_not_made(made, task.payload["expert_calls"])
            hint = f"; expert calls it did not make: {', '.join(not_made)}" if not_made else "; it made every expert call, and others too"
            hint += f"; calls it made that the expert did not: {', '.join(instead)}" if instead else ""
            problems.append(("state_mismatch", f"the final sandbox state differs from the expert's{hint}"))
        if missing:
            said = ", ".join(repr(m) for m in missing)
            problems.append(("answer_not_covered", f"the expert's final answer states {said}, which none of the candidate's replies does"))
        if uncovered:
            match = uncovered_calls_not_made(task, uncovered, conversation.calls)
            details["uncovered_calls"] = len(uncovered)
            details["uncovered_calls_missing"] = [_written(c["name"], c.get("arguments") or {}) for c in match.missing]
            details["uncovered_calls_extra"] = match.extra
            tools = ", ".join(dict.fromkeys(c["name"] for c in uncovered))
            if match.missing:
                listed = _listed(details["uncovered_calls_missing"])
                text = (
                    f"the expert called {tools}, which the sandbox does not provide (calls outside its world are checked as "
                    f"calls: by name and arguments as the tool receives them), and the candidate did not make: {', '.join(listed)}"
                )
                text += f"; its own calls of these tools: {', '.join(_listed(match.own))}" if match.own else ""
                problems.append(("uncovered_call_missing", text))
            if match.extra:
                made = Counter(c.name for c in conversation.calls if not _malformed(c.model_dump(), task))
                expert = Counter(c["name"] for c in uncovered)
                counts = ", ".join(f"{name} {made[name]} times, the expert {n}" for name, n in expert.items() if made[name] > n)
                problems.append(
                    (
                        "uncovered_call_extra",
                        f"the candidate called {counts}: these tools act outside the sandbox's world, where a call is not undone "
                        f"(a second page pages again), so a call beyond the expert's count is one too many: "
                        f"{', '.join(_listed(match.extra))}",
                    )
                )
        if not problems:
            return True, None, None, details
        return False, problems[0][0], "; and ".join(text for _, text in problems), details


def _calls_not_made(expert: list[dict[str, Any]], made: list[dict[str, Any]], limit: int = 3) -> list[str]:
    """The calls of ``expert`` that ``made`` lacks (equal arguments in any key order, 2.0 as 2), written out."""
    from ee_middleware.replay.sandboxes.digest import canonical

    key = lambda name, arguments: (name, json.dumps(canonical(arguments or {}), sort_keys=True, default=str))  # noqa: E731
    available = Counter(key(c["name"], c.get("arguments")) for c in made)
    missing = []
    for call in expert:
        k = key(call["name"], call.get("arguments", {}))
        if available[k]:
            available[k] -= 1
        else:
            missing.append(_written(call["name"], call.get("arguments", {})))
    return _listed(missing, limit)


class UncoveredMatch(NamedTuple):
    """How the candidate's calls of tools the sandbox does not provide match the expert's (:func:`uncovered_calls_not_made`)."""

    missing: list[dict[str, Any]]
    """The expert's calls that no call of the candidate matched, as recorded."""
    extra: list[str]
    """The candidate's calls of a tool beyond the expert's count of it (a second page where the expert paged once),
    written out: those of its calls of that tool that matched no expert call."""
    own: list[str]
    """The candidate's calls of these tools that matched no expert call, written out (``extra`` among them)."""


def uncovered_calls_not_made(task: EvalTask, uncovered: list[dict[str, Any]], made: list[ToolCall]) -> UncoveredMatch:
    """How the candidate's calls ``made`` match ``uncovered`` (the expert's calls of tools the sandbox does not provide,
    as ``task.payload``'s ``expert_calls`` hold them): the expert's calls it lacks, its calls of a tool beyond the
    expert's count, and its calls of these tools that matched none (:class:`UncoveredMatch`).

    Calls are compared as the tool receives them: replay's :meth:`~ee_middleware.replay.policies.schema.ToolSchemas.call_key`
    over the tools the task offers (an argument at its schema's default is the argument left out, ``1.0`` is ``1``,
    keys in any order, a string exactly as written; a redacted value is compared as its placeholder, which is what both
    the expert's recorded call and the candidate's hold), except free text: an expert argument that is prose
    (:func:`_free_text_arguments`: four words or more, no enum, format or pattern in its schema) is matched by what it
    states (:func:`_states_the_same`): its numbers and identifiers, and every content word, in the candidate's argument
    of the same name, in any wording, case and order.

    The match is a maximum bipartite matching of the expert's calls to the candidate's, in any order: each expert
    call needs a call of its own (an expert that paged twice needs two pages), when it came does not count (a page
    before the ticket is the same page), and the most expert calls are matched that can be (free text matches by
    what it states, so a long page also states a short one's facts: which page stands for which is not first come,
    first served). These tools act outside the world and are not undone (a page pages a person, an e-mail is
    sent), so a candidate that calls one more often than the expert did (a second page) has its calls beyond the
    expert's count listed as ``extra``; its calls of tools the expert did not call here are not counted. A call whose
    arguments are text that is no JSON object (``{"_raw": ...}``, which reached no tool) is never counted as made."""
    from ee_middleware.replay.policies.schema import tool_schemas_for

    schemas = tool_schemas_for([schema for turn in task.tools for schema in turn])
    names = {call["name"] for call in uncovered}
    own = [call for call in made if call.name in names and not _malformed(call.model_dump(), task)]
    free_text = [_free_text_arguments(schemas, call["name"], call.get("arguments") or {}) for call in uncovered]
    keys = [
        schemas.call_key(call["name"], _without(call.get("arguments") or {}, free)) for call, free in zip(uncovered, free_text, strict=True)
    ]
    matches = [
        [
            j
            for j, candidate in enumerate(own)
            if candidate.name == call["name"]
            and schemas.call_key(candidate.name, _without(candidate.arguments, free)) == key
            and all(_states_the_same(call["arguments"][name], candidate.arguments.get(name)) for name in free)
        ]
        for call, free, key in zip(uncovered, free_text, keys, strict=True)
    ]
    paired = _maximum_matching(matches, len(own))
    taken = set(paired.values())
    missing = [call for i, call in enumerate(uncovered) if i not in paired]
    unmatched = [call for j, call in enumerate(own) if j not in taken]
    expected = Counter(call["name"] for call in uncovered)
    beyond = Counter({name: n - expected[name] for name, n in Counter(call.name for call in own).items() if n > expected[name]})
    extra = []
    for call in reversed(unmatched):  # the last calls of a tool are the ones beyond the expert's count
        if beyond[call.name]:
            beyond[call.name] -= 1
            extra.append(call)
    return UncoveredMatch(
        missing, [_written(c.name, c.arguments) for c in reversed(extra)], [_written(c.name, c.arguments) for c in unmatched]
    )


def _maximum_matching(matches: list[list[int]], right: int) -> dict[int, int]:
    """A maximum matching of a bipartite graph, as ``{left: right}``: ``matches[i]`` lists the right nodes (``0 ..
    right - 1``) left node ``i`` may take. Augmenting paths (Kuhn's algorithm), the left nodes in order, each trying its
    right nodes in order (so that equal calls pair in the order they came); iterative, so that no number of calls
    reaches Python's recursion limit."""
    owner: list[int | None] = [None] * right
    for start in range(len(matches)):
        seen = [False] * right
        # A depth-first search for an augmenting path: each frame is (left node, the index of its next right node).
        stack = [[start, 0]]
        came_by: list[int] = []  # the right node each frame after the first was reached by
        found = None
        while stack and found is None:
            frame = stack[-1]
            node, index = frame
            if index >= len(matches[node]):
                stack.pop()
                if came_by:
                    came_by.pop()
                continue
            frame[1] += 1
            target = matches[node][index]
            if seen[target]:
                continue
            seen[target] = True
            holder = owner[target]
            if holder is None:
                found = target
            else:
                came_by.append(target)
                stack.append([holder, 0])
        if found is None:
            continue
        # Flip the path: the last left node takes the free right node, each before it the right node it was reached by.
        targets = [*came_by, found]
        for (node, _), target in zip(stack, targets, strict=True):
            owner[target] = node
    return {node: target for target, node in enumerate(owner) if node is not None}


_PROSE_WORDS = 4
"""The fewest whitespace-separated words of a string read as free text (prose); a shorter one is a value (``on hold``,
``Refund approved``), compared as written."""
_CODE_LIKE = re.compile(r"[{}<>=`|\\]")
"""Characters of code or markup rather than prose (a query, a template, JSON): a string holding one is compared as written."""


def _free_text_arguments(schemas: Any, name: str, arguments: dict[str, Any]) -> frozenset[str]:
    """The names of ``arguments`` (of a call of ``name``, its schema in ``schemas``) that hold free text, which a
    candidate writes in words of its own (a page's message, an e-mail's body): a string of at least
    :data:`_PROSE_WORDS` words, with no character of code or markup (:data:`_CODE_LIKE`), whose schema does not make it a
    value (an ``enum``, a ``const``, a ``format`` or a ``pattern``, or a ``type`` that is not ``string``). Every other
    argument is compared as the tool receives it, a string exactly as written."""
    properties = schemas.arguments_of(name)[0] if name in schemas else {}
    return frozenset(
        key
        for key, value in arguments.items()
        if isinstance(value, str)
        and len(value.split()) >= _PROSE_WORDS
        and not _CODE_LIKE.search(value)
        and _open_text(properties.get(key))
    )


def _open_text(schema: Any) -> bool:
    """Whether an argument's ``schema`` (None when it has none) leaves its string's wording open."""
    if not isinstance(schema, dict):
        return True
    kind = schema.get("type")
    if kind is not None and kind != "string" and not (isinstance(kind, list) and "string" in kind):
        return False
    return not any(word in schema for word in ("enum", "const", "format", "pattern"))


def _without(arguments: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    return {name: value for name, value in arguments.items() if name not in names} if names else arguments


_ID_CHARACTERS = re.compile(r"[@/#:$._]")
"""Characters that make a token without digits an identifier (an e-mail address, a path, a file name, a placeholder)."""
_WORD = re.compile(r"[^\W\d_]+")
"""A run of letters (any script): a word, hyphens and apostrophes splitting it (``on-call``: ``on``, ``call``)."""
_NEGATION = re.compile(
    r"(?<![^\W\d_])(?:not|no|never|none|nothing|nobody|nowhere|neither|nor|cannot|without)(?![^\W\d_])|n['\u2019]t(?![^\W\d_])"
)
"""A word that negates what the text states (``not``, ``no``, ``never``, ``can't``, ...)."""
_PROSE_STOPWORDS_TEXT = (
    # articles, conjunctions, common prepositions
    "a an the and or but if so as of in on at to for from by with about into onto than then also just"
    # pronouns and determiners
    " i me my we us our you your he him his she her it its they them their this that these those there here"
    " what which who whom whose when where why how"
    # auxiliaries and modals
    " is are was were be been being am do does did have has had will would shall should can could may might must"
    # the stems contractions leave (isn't: isn, t; it's: it, s; we'll: we, ll)
    " isn aren wasn weren don doesn didn hasn haven hadn won wouldn couldn shouldn mustn ain s t d ll ve re m"
    # politeness and greetings, which say nothing of the matter
    " please kindly hi hello hey dear thanks thank fyi"
    # the negations, which are read apart (_NEGATION)
    " not no never none nothing nobody nowhere neither nor cannot without"
)
_PROSE_STOPWORDS = frozenset(_PROSE_STOPWORDS_TEXT.split())
"""Words that state nothing of a text's matter (English function words, greetings): no candidate is asked to repeat them."""


@dataclasses.dataclass(frozen=True)
class _Prose:
    """What a free text states (:func:`_prose`)."""

    facts: list[str]
    """Its numbers and identifiers (tokens with a digit or an identifier's character), as :func:`missing_facts` reads them."""
    words: list[str]
    """Its content words (lower case, not in :data:`_PROSE_STOPWORDS`)."""
    stems: frozenset[str]
    """The stems (:func:`_stem`) of all its words, stop words too."""
    negated: bool
    """Whether it holds a negation (:data:`_NEGATION`) outside its facts (``no-reply@example.com`` negates nothing)."""
    squeezed: str
    """The text as facts are read in it (:func:`_facts_text`), its whitespace runs made one space."""


def _prose(text: str) -> _Prose:
    """Read a free text: its facts (as :func:`answer_facts` reads a number, its sign, a range, a date in words and an
    identifier: :func:`_readings`; the case of no word matters, a capital that starts a sentence least of all), its
    content words (the ``day`` of ``3-day`` too), whether it negates."""
    normal = _facts_text(text)
    facts: list[str] = []
    pieces: list[str] = []  # the text without its facts, whose letters are no words of their own
    end = 0
    for reading in _readings(normal):
        kept = [fact for fact in reading.facts if any(c.isdigit() for c in fact) or _ID_CHARACTERS.search(fact)]
        if not kept:
            continue
        pieces.append(normal[end : reading.start])
        end = reading.end
        facts.extend(fact for fact in kept if fact not in facts)
    pieces.append(normal[end:])
    rest = " ".join(pieces)
    words = [word for word in dict.fromkeys(_WORD.findall(rest)) if word not in _PROSE_STOPWORDS and len(word) > 1]
    return _Prose(
        facts,
        words,
        frozenset(_stem(word) for word in _WORD.findall(normal)),
        _NEGATION.search(rest) is not None,
        " ".join(normal.split()),
    )


def _stem(word: str) -> str:
    """``word`` without one inflection (``-ing``, ``-ed``, ``-es``, ``-s``, a final ``-e``) when three letters or more
    stay, a doubled last consonant then made single: ``delayed``/``delays``/``delay``, ``paging``/``paged``/``page``,
    ``stopped``/``stop`` share a stem. A light suffix strip, not a dictionary: ``said`` is not ``say``."""
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word[-2] in "siu":  # status, address, analysis: no plural s
                continue
            stem = word[: -len(suffix)]
            if suffix in ("ing", "ed") and len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
                stem = stem[:-1]  # stopped, running
            return stem
    return word


def _states_the_same(expected: str, got: Any) -> bool:
    """Whether the candidate's argument ``got`` states what the expert's free text ``expected`` states.

    ``got`` must be a string with some text, and state:

    * every fact of ``expected`` (its numbers, amounts, dates and identifiers, read by :func:`missing_facts`: a number
      by its value and sign however it is written, a count up to twenty also in words);
    * every content word of ``expected``: each word not in :data:`_PROSE_STOPWORDS` (English function words and
      greetings) must be in ``got``, in any case and order, an inflection apart (:func:`_stem`), a count word also as its
      number. The case of a word never counts (a sentence-initial ``Please`` or ``Customer`` is the word, no name), and
      lowercase words are facts as much as capitalised ones: what a page says is mostly in them (``the vpn is down``);
    * a negation when, and only when, ``expected`` holds one (:data:`_NEGATION`): ``not approved`` is not
      ``approved``, either way round.

    A text whose every word is a stop word states no fact to look for (``it is what it is``): ``got`` must then be the
    same text, case, commas and whitespace apart.

    This reads words, not meaning: a synonym or a paraphrase of a content word (``outage`` for ``down``, ``user`` for
    ``customer``) does not state it, so such a candidate fails (a false failure, the safe side for a call that acts
    outside the world); and the candidate's further words are its own, so one that states every word of the expert's
    text and then contradicts it in other words (``..., ignore: all is fine``) is not caught."""
    if not isinstance(got, str) or not got.strip():
        return False
    want, have = _prose(expected), _prose(got)
    if want.negated != have.negated:
        return False
    if not want.facts and not want.words:
        return want.squeezed == have.squeezed
    if missing_facts(want.facts, [got]):
        return False
    numbers = _numbers(_facts_text(got))
    counts = {word: number for number, word in _COUNT_WORDS.items()}
    return all(_stem(word) in have.stems or (word in counts and Decimal(counts[word]) in numbers) for word in want.words)


def _written(name: str, arguments: dict[str, Any]) -> str:
    """A call as reasons write it: ``name(a=1, b='x')``."""
    return f"{name}({', '.join(f'{a}={v!r}' for a, v in arguments.items())})"


def _listed(calls: list[str], limit: int = 3) -> list[str]:
    """The first ``limit`` of ``calls`` written out, and how many more."""
    return calls[:limit] + ([f"and {len(calls) - limit} more"] if len(calls) > limit else [])
