"""The retriever conformance kit names a broken answer of ``scores`` (its type, its length, a NaN or infinite score, a
match scored 0 or less) instead of crashing inside itself or blaming the wrong promise."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import pytest

from ee_middleware.replay.retrieval import tokenize
from ee_middleware.testing import check_retriever


class Overlap:
    """A user's retriever: the share of the text's words the query has (0 when none)."""

    name = "overlap"

    def __init__(self) -> None:
        self.docs: list[set[str]] = []

    def add(self, texts: Sequence[str]) -> None:
        self.docs.extend(set(tokenize(t)) for t in texts)

    def scores(self, query: str) -> list[float]:
        words = set(tokenize(query))
        return [len(words & doc) / (1 + len(doc)) for doc in self.docs]


class NegativeDistance(Overlap):
    """Scores by distance: 0 for an exact match, more negative further away (ranks right, every score <= 0)."""

    name = "negdist"

    def scores(self, query: str) -> list[float]:
        words = set(tokenize(query))
        return [-float(len(words ^ doc)) for doc in self.docs]


class NaNForUnmatched(Overlap):
    name = "nan-unmatched"

    def scores(self, query: str) -> list[float]:
        return [s if s > 0 else math.nan for s in super().scores(query)]


class InfForMatches(Overlap):
    name = "inf-matches"

    def scores(self, query: str) -> list[float]:
        return [math.inf if s > 0 else 0.0 for s in super().scores(query)]


class MinusInfForUnmatched(Overlap):
    name = "minus-inf"

    def scores(self, query: str) -> list[float]:
        return [s if s > 0 else -math.inf for s in super().scores(query)]


class GeneratorScores(Overlap):
    name = "generator"

    def scores(self, query: str) -> Iterator[float]:  # type: ignore[override]
        return (s for s in super().scores(query))


class ComplexScores(Overlap):
    name = "complex"

    def scores(self, query: str) -> list[complex]:  # type: ignore[override]
        return [complex(s, 0) for s in super().scores(query)]


class StringScores(Overlap):
    name = "strings"

    def scores(self, query: str) -> list[str]:  # type: ignore[override]
        return [str(s) for s in super().scores(query)]


class OneScoreShort(Overlap):
    name = "short"

    def scores(self, query: str) -> list[float]:
        return super().scores(query)[:-1]


def _failure(make: type[Overlap]) -> str:
    with pytest.raises(AssertionError) as failed:
        check_retriever(make)
    return str(failed.value)


def test_a_correct_retriever_passes() -> None:
    check_retriever(Overlap)


def test_a_retriever_scoring_by_negative_distance_is_told_a_match_scores_above_0() -> None:
    """It ranked right with every score <= 0: the kit crashed with an IndexError in its index checks, and replay
    retrieved nothing."""
    message = _failure(NegativeDistance)
    assert "scores('send_email to alice subject invoice march')" in message, message
    assert "gave text 0, that same text, the score -0.0" in message, message
    assert "a text that matches the query scores above 0" in message, message
    assert "1 / (1 + distance)" in message, message


def test_nan_scores_are_named_not_blamed_on_determinism() -> None:
    """NaN != NaN: the kit said 'scores are deterministic'."""
    message = _failure(NaNForUnmatched)
    assert "returned nan as the score of text 1" in message, message
    assert "every score must be finite" in message, message
    assert "deterministic" not in message, message


def test_infinite_scores_fail() -> None:
    """+inf for every match lost the ranking, and the kit passed it."""
    message = _failure(InfForMatches)
    assert "returned inf as the score of text 0" in message and "every score must be finite" in message, message
    message = _failure(MinusInfForUnmatched)
    assert "returned -inf as the score of text 1" in message and "every score must be finite" in message, message


def test_scores_returned_as_a_generator_are_named() -> None:
    """The kit crashed with TypeError: object of type 'generator' has no len()."""
    message = _failure(GeneratorScores)
    assert "scores('anything') before any text was added returned a generator, not a sequence of scores" in message, message
    assert "one finite real number per added text" in message, message


@pytest.mark.parametrize(
    ("make", "shown"),
    [(ComplexScores, "(0.8888888888888888+0j) (complex)"), (StringScores, "'0.8888888888888888' (str)")],
)
def test_scores_that_are_not_real_numbers_are_named(make: type[Overlap], shown: str) -> None:
    """Complex scores crashed the kit with a TypeError inside it."""
    message = _failure(make)
    assert f"returned {shown} as the score of text 0, not a real number" in message, message


def test_a_wrong_number_of_scores_is_named() -> None:
    message = _failure(OneScoreShort)
    assert "returned 3 scores for 4 added texts" in message, message
