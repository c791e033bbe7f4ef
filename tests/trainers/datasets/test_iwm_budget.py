"""The IWM observation budget: kept_chars gives the longest head whose estimated tokens fit, for every row."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from ee_middleware.trainers.datasets.iwm import IWMOptions, estimated_tokens, kept_chars


def _longest_fitting_heads(texts: list[str | None], options: IWMOptions) -> list[int | None]:
    """The reference: every head of every text priced by estimated_tokens, one by one (in one frame); None for None."""
    limit = int(options.max_observation_tokens * options.chars_per_token)
    heads = [(i, n, text[:n]) for i, text in enumerate(texts) if text is not None for n in range(min(len(text), limit) + 1)]
    frame = pl.DataFrame({"text": [i for i, _, _ in heads], "n": [n for _, n, _ in heads], "h": [h for _, _, h in heads]})
    fits = frame.filter(estimated_tokens(pl.col("h"), options) <= options.max_observation_tokens + 1e-9)
    longest = dict(fits.group_by("text").agg(pl.col("n").max()).iter_rows())
    return [None if text is None else longest[i] for i, text in enumerate(texts)]


def _texts(seed: int) -> list[str | None]:
    rng = random.Random(seed)
    texts: list[str | None] = [None, "", "ok", "日本語" * 3]
    for _ in range(24):
        n = rng.choice([5, 60, 120, 300, 700])
        kind = rng.random()
        if kind < 0.3:
            text = json.dumps([{"id": rng.randint(1, 10**9), "price": round(rng.random(), 2)} for _ in range(n // 20 + 1)])[:n]
        elif kind < 0.6:
            text = " ".join(rng.choice(["the", "Order", "was", "  shipped", "\n", "to", "Paris,"]) for _ in range(n // 4))
        elif kind < 0.8:
            text = "".join(rng.choice("0123456789abcdef") for _ in range(n))
        else:
            text = "".join(rng.choice("日本語テキストé漢字 ab\t") for _ in range(n // 2))
        texts.append(text)
    return texts


@pytest.mark.parametrize("budget", [8, 40, 150])
def test_kept_chars_is_the_longest_head_that_fits_for_short_and_long_observations_alike(budget):
    """Short observations are kept whole without being priced (no character costs more than a token a byte), long ones
    are searched: both must give what pricing every head one by one gives."""
    options = IWMOptions(max_observation_tokens=budget)
    texts = _texts(budget)
    kept = kept_chars(pl.Series(texts, dtype=pl.String), options)
    assert kept == _longest_fitting_heads(texts, options)
    assert any(k is not None and t is not None and k < len(t) for k, t in zip(kept, texts, strict=True))  # some were cut


def _fuzzed(seed: int, count: int, longest: int) -> list[str]:
    """The r1 review's fuzz (fuzz_kept.py): every ASCII kind, CRLF, tabs, control characters, é, Han and emoji."""
    rng = random.Random(seed)
    alphabet = [*'aZ9 \t\n\r{}":,.-_xyzABC0123é漢字😀\x01', "  ", "ab", "1a", "A1"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, longest))) for _ in range(count)]


@pytest.mark.parametrize("budget", [8, 40, 150])
def test_kept_chars_matches_pricing_every_head_on_fuzzed_text(budget):
    """The search (a guess where the cost would reach the budget, then a walk a character at a time from it, forwards or
    backwards) gives exactly the longest head that pricing every head finds, whichever kinds of character a text mixes."""
    options = IWMOptions(max_observation_tokens=budget)
    texts = _fuzzed(5, 400, 600)
    assert kept_chars(pl.Series(texts), options) == _longest_fitting_heads(texts, options)


def test_kept_chars_matches_pricing_every_head_at_the_default_budget_where_density_changes():
    """Long observations at the default budget whose density changes on the way (prose then digits, digits then prose,
    emoji after JSON, runs of spaces, ones that fit whole at the length cap), where a guess from the head priced so far
    lands far from the answer and the search must narrow it down in several steps."""
    options = IWMOptions()
    rng = random.Random(11)
    prose = " ".join(rng.choice(["the", "order", "was", "shipped", "to", "Paris", "and", "then"]) for _ in range(600))
    digits = "".join(rng.choice("0123456789") for _ in range(3000))
    listing = json.dumps([{"id": rng.randint(1, 10**9), "price": round(rng.random(), 2)} for _ in range(200)])
    texts = [
        prose[:1500] + digits,
        digits[:300] + prose,
        listing[:900] + "😀" * 500,
        " " * 1500 + listing,
        "\n" * 700 + prose,
        prose,
        prose[:2047] + "x",
        *_fuzzed(13, 12, 3000),
    ]
    assert kept_chars(pl.Series(texts), options) == _longest_fitting_heads(texts, options)


def test_an_observation_is_cut_between_the_characters_a_reader_sees() -> None:
    """Sweep B, finding 10: an emoji sequence was cut after its joiner (the target ended ``👩`` + U+200D), and a letter
    could lose its combining accent."""
    import unicodedata

    texts = ["status: " + "👩\u200d💻👍🏽" * 300, "Café " * 400, "e\u0301" * 900]
    for budget in (8, 9, 10, 11, 12, 13):
        for text, keep in zip(texts, kept_chars(pl.Series(texts), IWMOptions(max_observation_tokens=budget)), strict=True):
            assert keep is not None and 0 < keep < len(text)
            assert not text[:keep].endswith("\u200d") and text[keep] not in "\u200d\ufe0f🏽"
            assert not unicodedata.category(text[keep]).startswith("M"), (budget, text[keep - 3 : keep + 1])
