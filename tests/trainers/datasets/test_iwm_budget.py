"""The IWM observation budget: kept_chars gives the longest head whose estimated tokens fit, for every row."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from ee_middleware.trainers.datasets.iwm import IWMOptions, estimated_tokens, kept_chars


def _longest_fitting_head(text: str, options: IWMOptions) -> int:
    """The reference: price every head of the text with estimated_tokens, one by one."""
    limit = int(options.max_observation_tokens * options.chars_per_token)
    head = text[:limit]
    heads = pl.Series([head[:n] for n in range(len(head) + 1)]).to_frame("h")
    costs = heads.select(estimated_tokens(pl.col("h"), options))["h"].to_list()
    return max(n for n, cost in enumerate(costs) if cost <= options.max_observation_tokens + 1e-9)


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
    expected = [None if text is None else _longest_fitting_head(text, options) for text in texts]
    assert kept == expected
    assert any(k is not None and t is not None and k < len(t) for k, t in zip(kept, texts, strict=True))  # some were cut
