"""Trajectories are read back with pydantic's JSON parser where it builds exactly what ``json.loads`` builds, else with ``json``."""

from __future__ import annotations

import json
import random

import pytest

from ee_middleware.messages import dumps
from ee_middleware.store.tables import _loads, json_text


def _same(a: object, b: object) -> bool:
    """Equal values of equal types all the way down (NaN included: compared by its JSON text)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    return json.dumps(a) == json.dumps(b)


AWKWARD = [
    "12345678901234567890123",  # past 64 bits: an int, not a float
    "-9223372036854775809",
    '{"a": 1, "a": 2}',  # the last repeated key wins
    '"\\ud800"',  # a lone surrogate: pydantic refuses it, json decodes it
    '"\\ud83d\\ude00 caf\\u00e9 \\u2028"',
    "[NaN, Infinity, -Infinity, 1E400, 1e-400, -0.0, -0]",
    "[0.1, 1e5, 1e-05, 123456789012345678901234567890.5, 5e-324]",
    "[" * 300 + "]" * 300,  # deeper than pydantic's parser goes
    ' {"k" : [true, false, null] } ',
]


@pytest.mark.parametrize("text", AWKWARD)
def test_decoding_builds_what_json_loads_builds(text: str) -> None:
    assert _same(_loads(text), json.loads(text))


def _random_json(rnd: random.Random, alphabet: list[str], scalars: list[object], depth: int = 0) -> object:
    """A random JSON-able value: nested dicts and lists, floats over the whole range, big ints, ``scalars``, strings."""
    c = rnd.random()
    if depth < 4 and c < 0.25:
        return {
            "".join(rnd.choices(alphabet, k=rnd.randint(0, 4))): _random_json(rnd, alphabet, scalars, depth + 1)
            for _ in range(rnd.randint(0, 4))
        }
    if depth < 4 and c < 0.45:
        return [_random_json(rnd, alphabet, scalars, depth + 1) for _ in range(rnd.randint(0, 4))]
    if c < 0.6:
        return rnd.uniform(-1, 1) * 10 ** rnd.randint(-320, 308)
    if c < 0.7:
        return rnd.randint(-(10**30), 10**30)
    if c < 0.75:
        return rnd.choice(scalars)
    return "".join(rnd.choices(alphabet, k=rnd.randint(0, 12)))


ALPHABET = [chr(i) for i in range(0x250)] + ["\u2028", "\U0001f600", "\\", '"']


def test_decoding_random_json_builds_what_json_loads_builds() -> None:
    rnd = random.Random(7)
    for _ in range(3000):
        v = _random_json(rnd, ALPHABET, [True, False, None, float("nan"), float("inf")])
        for ascii_only in (True, False):
            text = json.dumps(v, ensure_ascii=ascii_only)
            assert _same(_loads(text), json.loads(text)), text


@pytest.mark.parametrize("text", ['"a\x01b"', "01", "[1,]", "[1] x", "'a'", ""])
def test_invalid_json_is_refused_as_json_refuses_it(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        _loads(text)


ENCODE_AWKWARD = [
    {"a": 1e-7, "b": 1e16, "c": 1e-5, "d": 2.5e-5, "e": 0.0001, "f": 1e300, "g": 5e-324, "h": -0.0, "i": 1.5},
    {"nan": float("nan"), "inf": [float("inf"), float("-inf")]},
    {"text": "NaN and Infinity and 1e-05 inside strings", "big": 10**40, "neg": -(2**63) - 1},
    {"ctl": "\x00\x01\x08\x0c\n\r\t\x1f\x7f", "quote": '"\\/', "uni": "caf\u00e9 \u2028 \U0001f600 日本", "lone": "a\ud800b"},
    [[[[{"k": [True, False, None, 0, -1, ""]}]]]],
    {"": {"": []}, "dup order": {"z": 1, "a": 2}},
]


@pytest.mark.parametrize("value", ENCODE_AWKWARD)
def test_json_text_writes_what_dumps_writes(value: object) -> None:
    assert json_text(value) == dumps(value)


def test_json_text_of_random_json_writes_what_dumps_writes() -> None:
    rnd = random.Random(11)
    alphabet = [*ALPHABET, "e-", "e+", "0.0000"]
    for _ in range(3000):
        v = _random_json(rnd, alphabet, [True, False, None, float("nan"), float("inf"), 0.1, 100.0, 1e22])
        assert json_text(v) == dumps(v), v
        decoded = json.loads(json.dumps(v))  # what a record decodes to
        assert json_text(decoded) == dumps(decoded), decoded
