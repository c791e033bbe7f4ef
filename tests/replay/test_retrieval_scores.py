"""Replay's index refuses a plug-in retriever's NaN or infinite scores, naming it, and warns once when its searches of
a non-empty buffer never score above 0 (a distance retriever: nothing is ever retrieved)."""

from __future__ import annotations

import warnings

import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.replay.retrieval import (
    UNMATCHED_SEARCHES_WARNING,
    NothingRetrievedWarning,
    Transition,
    TransitionIndex,
)
from tests.testing.test_retriever_conformance_scores import InfForMatches, NaNForUnmatched, NegativeDistance, Overlap


class Huge(Overlap):
    """Finite scores whose sum overflows: nothing wrong with them."""

    name = "huge"

    def scores(self, query: str) -> list[float]:
        return [1e308 * s for s in super().scores(query)]


def _index(retriever: Overlap) -> TransitionIndex:
    index = TransitionIndex(retriever=retriever)
    index.add(
        [
            Transition("a", "t1", 0, "", "", "borrow_book", {"title": "dune"}, "ok", False),
            Transition("b", "t2", 0, "", "", "borrow_book", {"title": "emma"}, "ok", False),
            Transition("c", "t3", 0, "", "", "return_book", {"title": "dune"}, "ok", False),
        ]
    )
    return index


@pytest.mark.parametrize(("retriever", "shown"), [(NaNForUnmatched(), "nan for transition 1"), (InfForMatches(), "inf for transition 0")])
def test_non_finite_scores_are_refused_naming_the_retriever(retriever: Overlap, shown: str) -> None:
    """NaN for a non-match was silently never retrieved; +inf for every match lost their ranking."""
    index = _index(retriever)
    with pytest.raises(SandboxError, match=rf"retriever {retriever.name!r} returned the score {shown} of 3: every score must be finite"):
        index.search("dune", {})  # matches transitions 0 and 2, not 1


def test_finite_scores_whose_sum_overflows_are_kept() -> None:
    index = _index(Huge())
    assert [t.id for t in index.search("borrow_book", {"title": "dune"}, k=3)] == ["a", "b", "c"]


def test_a_retriever_that_never_scores_above_0_is_warned_about_once() -> None:
    """A distance retriever (every score <= 0) retrieved nothing, silently: prompts without examples, exit 0."""
    index = _index(NegativeDistance())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(UNMATCHED_SEARCHES_WARNING * 3):
            assert index.search("borrow_book", {"title": "dune"}) == []
    assert [w.category for w in caught] == [NothingRetrievedWarning], [str(w.message) for w in caught]
    message = str(caught[0].message)
    assert (
        f"The retriever 'negdist' scored none of the 3 transitions of the replay buffer above 0 in its first {UNMATCHED_SEARCHES_WARNING} searches"
        in message
    )
    assert "only transitions scored above 0 are retrieved" in message and "check_retriever" in message, message


def test_a_retriever_that_matches_is_not_warned_about_for_some_queries_matching_nothing() -> None:
    index = _index(Overlap())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [t.id for t in index.search("borrow_book", {"title": "dune"}, k=3)] == ["a", "b", "c"]
        for _ in range(UNMATCHED_SEARCHES_WARNING * 2):
            assert index.search("zebra", {}) == []
    assert TransitionIndex(retriever=NegativeDistance()).search("borrow_book", {}) == [], "an empty buffer: no warning"
