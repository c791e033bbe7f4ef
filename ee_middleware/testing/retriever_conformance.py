"""A conformance kit for replay-buffer retrievers: run it against any implementation.

from ee_middleware.testing import check_retriever
check_retriever(lambda: MyRetriever())

It checks the :class:`~ee_middleware.replay.retrieval.Retriever` protocol the way the experience
sandbox, ``ee experience eval`` and the ``em`` dataset use it: one score per added text in order
(none before any text), a text that shares nothing with the query scores 0 or less, a text is its
own best match, texts added after a query are found by the next query, the same query asked again too (the buffer
grows while a replay runs: scores kept per query go stale), and scores are deterministic. Then, through a
:class:`~ee_middleware.replay.retrieval.TransitionIndex`, the rules every query obeys whatever the
retriever: never the transition being predicted, never a transition of an excluded (held-out or
own) trajectory, even when it is the best match; at most k results; transitions of the queried
tool first. A retriever that passes can stand in for the built-in ``bm25``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ee_middleware.replay.retrieval import Retriever, Transition, TransitionIndex

MakeRetriever = Callable[[], Any]

_TEXTS = [
    "send_email to alice subject invoice march",
    "list_orders customer bob status shipped",
    "refund_payment order 1234 amount 20 EUR",
    "weather forecast Paris tomorrow",
]


def _transition(i: int, tool: str, trajectory: str, words: str) -> Transition:
    return Transition(
        id=f"step:{trajectory}:{i}",
        trajectory_id=trajectory,
        step_index=i,
        task="conformance",
        state=f"user: {words}",
        tool=tool,
        arguments={"q": words},
        observation=f"result of {tool} {i}",
        is_error=False,
    )


def check_retriever(make: MakeRetriever) -> None:
    """Run every check on retrievers built by ``make`` (a fresh one per check); raises ``AssertionError``."""
    _protocol_and_scores(make)
    _grows_after_queries(make)
    _index_rules(make)


def _protocol_and_scores(make: MakeRetriever) -> None:
    retriever = make()
    assert isinstance(retriever, Retriever), f"{type(retriever).__name__} lacks 'name', 'add(texts)' or 'scores(query)'"
    assert isinstance(retriever.name, str) and retriever.name, "a retriever has a non-empty name (reports show it)"
    assert len(retriever.scores("anything")) == 0, "no score before any text is added"
    retriever.add([])
    assert len(retriever.scores("anything")) == 0, "adding nothing adds no document"
    retriever.add(_TEXTS)
    for i, text in enumerate(_TEXTS):
        scores = [float(s) for s in retriever.scores(text)]
        assert len(scores) == len(_TEXTS), f"one score per added text: got {len(scores)} for {len(_TEXTS)}"
        assert max(range(len(scores)), key=lambda d: (scores[d], -d)) == i, f"text {i} is its own best match: {scores}"
        assert scores == [float(s) for s in retriever.scores(text)], "scores are deterministic"
    unrelated = [float(s) for s in retriever.scores("zebra quantum xylophone")]
    assert all(s <= 0 for s in unrelated), f"texts sharing nothing with the query score 0 or less: {unrelated}"


def _grows_after_queries(make: MakeRetriever) -> None:
    """Texts added after a query are scored by the next one, a different query or the same one asked again (a retriever
    that keeps each query's scores must not answer with those from before the add)."""
    retriever = make()
    retriever.add(_TEXTS[:2])
    asked = (_TEXTS[0], _TEXTS[3])  # one about a text added before the add below, one about a text it adds
    for query in asked:
        before = retriever.scores(query)
        assert len(before) == 2, f"one score per added text: got {len(before)} for 2 ({query!r})"
    retriever.add(_TEXTS[2:])
    scores = [float(s) for s in retriever.scores("zebra " + _TEXTS[3])]
    assert len(scores) == len(_TEXTS), "texts added after a query are scored by the next one"
    for own, query in zip((0, 3), asked, strict=True):
        scores = [float(s) for s in retriever.scores(query)]
        assert len(scores) == len(_TEXTS), (
            f"the same query asked again after add() must score every text, the new ones too: got {len(scores)} scores for "
            f"{len(_TEXTS)} texts ({query!r}, asked before {len(_TEXTS) - 2} texts were added). A retriever that keeps the "
            "scores of the queries it was asked must drop them in add(): replay's buffer grows while it asks"
        )
        assert max(range(len(scores)), key=lambda d: (scores[d], -d)) == own, (
            f"a text added after a query is found, and the others still are, by the same query asked again: {scores} for {query!r}"
        )


def _index_rules(make: MakeRetriever) -> None:
    index = TransitionIndex(retriever=make())
    words = "refund payment order 1234"
    own = _transition(0, "refund_payment", "t-own", words)
    held = [_transition(i, "refund_payment", "t-held", words) for i in range(3)]
    others = [
        _transition(0, "refund_payment", "t-a", "refund payment order 99"),
        _transition(1, "list_orders", "t-a", "list orders refund payment"),
        _transition(0, "refund_payment", "t-b", "refund payment 1234"),
        _transition(1, "send_email", "t-b", "send email refund"),
    ]
    assert index.add([own, *held, *others]) == 8 and index.add([own]) == 0, "an id is indexed once"
    assert index.search("refund_payment", {"q": words}, f"user: {words}", k=1)[0].id in {own.id, *(h.id for h in held)}
    hits = index.search(
        "refund_payment", {"q": words}, f"user: {words}", k=10, exclude_ids={own.id}, exclude_trajectories={"t-held", "t-own"}
    )
    assert hits, "the other trajectories' transitions are found"
    assert all(h.id != own.id and h.trajectory_id not in {"t-held", "t-own"} for h in hits), (
        f"an excluded transition or trajectory was returned: {[h.id for h in hits]}"
    )
    same_tool = [h.tool == "refund_payment" for h in hits]
    assert same_tool == sorted(same_tool, reverse=True), "transitions of the queried tool come first"
    assert len(index.search("refund_payment", {"q": words}, words, k=2)) == 2, "at most k"
    assert index.search("refund_payment", {"q": words}, words, k=0) == [], "k=0 retrieves nothing"
