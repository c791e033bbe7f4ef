"""The retriever conformance kit fails retrievers that break what replay's TransitionIndex relies on.

(The built-in retrievers and a plug-in pass it in ``tests/replay/test_retrieval.py``.)
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.replay.retrieval import Transition, TransitionIndex, tokenize
from ee_middleware.testing import check_retriever


class Overlap:
    """A user's retriever: the share of words a text and the query have in common (Jaccard)."""

    name = "overlap"

    def __init__(self) -> None:
        self.docs: list[set[str]] = []

    def add(self, texts: Sequence[str]) -> None:
        self.docs.extend(set(tokenize(t)) for t in texts)

    def scores(self, query: str) -> list[float]:
        words = set(tokenize(query))
        return [len(words & doc) / (len(words | doc) or 1) for doc in self.docs]


class CachesScoresPerQuery(Overlap):
    """Remembers each query's scores: stale once texts are added after it was asked (the buffer grows during replay)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[str, list[float]] = {}

    def scores(self, query: str) -> list[float]:
        if query not in self.cache:
            self.cache[query] = super().scores(query)
        return self.cache[query]


def _transition(i: int, words: str) -> Transition:
    return Transition(
        id=f"s{i}",
        trajectory_id=f"t{i}",
        step_index=0,
        task="lending",
        state=f"user: {words}",
        tool="borrow_book",
        arguments={"title": words},
        observation="ok",
        is_error=False,
    )


def test_a_retriever_that_scores_by_word_overlap_passes() -> None:
    check_retriever(Overlap)


def test_a_retriever_caching_scores_per_query_fails_the_kit_as_replay_fails_it() -> None:
    """The kit asked a different query after adding texts, so it never saw the stale answer and passed; replay's
    TransitionIndex then rejected the retriever, pointing back at the kit. The kit now asks the same query again."""
    index = TransitionIndex(retriever=CachesScoresPerQuery())
    index.add([_transition(0, "dune")])
    assert len(index.search("borrow_book", {"title": "dune"}, "user: dune", k=3)) == 1
    index.add([_transition(1, "dune"), _transition(2, "emma")])
    with pytest.raises(SandboxError, match=r"returned 1 scores for 3 transitions"):  # what replay meets
        index.search("borrow_book", {"title": "dune"}, "user: dune", k=3)
    with pytest.raises(AssertionError) as failed:
        check_retriever(CachesScoresPerQuery)
    message = str(failed.value)
    assert "the same query asked again after add() must score every text" in message, message
    assert "got 2 scores for 4 texts" in message, message
    assert "drop them in add()" in message, message
