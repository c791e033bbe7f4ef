"""A conformance kit for replay-buffer retrievers: run it against any implementation.

from ee_middleware.testing import check_retriever
check_retriever(lambda: MyRetriever())

It checks the :class:`~ee_middleware.replay.retrieval.Retriever` protocol the way the experience
sandbox, ``ee experience eval`` and the ``em`` dataset use it: one score per added text in order
(none before any text), each a finite real number (no NaN, no infinity), in a sequence (a list, a tuple, a numpy
array; not a generator), a text that matches the query (itself) scores above 0 (replay retrieves nothing scored 0 or
less: a distance must become a similarity) and is its own best match, a text that shares nothing with the query scores
0 or less, texts added after a query are found by the next query, the same query asked again too (the buffer
grows while a replay runs: scores kept per query go stale), and scores are deterministic. Then, through a
:class:`~ee_middleware.replay.retrieval.TransitionIndex`, the rules every query obeys whatever the
retriever: never the transition being predicted, never a transition of an excluded (held-out or
own) trajectory, even when it is the best match; at most k results; transitions of the queried
tool first. A retriever that passes can stand in for the built-in ``bm25``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from ee_middleware.errors import SandboxError
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


RULE = (
    "scores(query) returns a sequence (a list, a tuple, a numpy array) of one finite real number per added text, in "
    "the order they were added: above 0 for a text that matches the query, 0 or less for one that does not"
)
"""The promise every answer of ``scores`` keeps (shown by the kit's failures about what it returned)."""

MATCH_ABOVE_ZERO = (
    "replay retrieves only texts scored above 0 (0 or less means no match), so a retriever that scores matches 0 or "
    "less retrieves nothing. A distance (0 for an exact match, negative further away) must become a similarity, e.g. "
    "1 / (1 + distance)"
)
"""Why a text that matches the query must score above 0."""


class _WrongLength(AssertionError):
    """``scores`` returned ``got`` scores, not one per added text."""

    def __init__(self, message: str, got: int) -> None:
        super().__init__(message)
        self.got = got


def _real(value: Any) -> float | None:
    """``value`` as a float when it is a real number (a Python or numpy number, a bool), else None (a string, a complex
    number, None, an object float() refuses)."""
    if isinstance(value, str | bytes | bytearray) or (isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _scores(retriever: Any, query: str, texts: int, when: str = "") -> list[float]:
    """``retriever.scores(query)`` as floats, checked against :data:`RULE` for ``texts`` added texts (a failure names
    the call, what it returned and the rule; ``when`` tells when it was asked)."""
    call = f"scores({query!r}){when}"
    try:
        raw = retriever.scores(query)
    except Exception as exc:  # the retriever's own failure, named
        raise AssertionError(f"{call} raised {type(exc).__name__}: {exc}; {RULE}") from exc
    if isinstance(raw, str | bytes | bytearray | Mapping) or not (hasattr(raw, "__len__") and hasattr(raw, "__getitem__")):
        raise AssertionError(
            f"{call} returned a {type(raw).__name__}, not a sequence of scores: {RULE} (replay's index takes its length "
            "and reads it more than once, so a generator or an iterator will not do)"
        )
    try:
        values = list(raw)
        count = len(raw)
    except Exception as exc:  # a 0-d array, a broken __len__: named, not the kit's crash
        raise AssertionError(f"{call} returned a {type(raw).__name__} whose length or items cannot be read ({exc}): {RULE}") from exc
    if count != texts or len(values) != texts:
        raise _WrongLength(f"{call} returned {len(values)} scores for {texts} added texts: one score per added text; {RULE}", len(values))
    scores = []
    for doc, value in enumerate(values):
        score = _real(value)
        if score is None:
            raise AssertionError(
                f"{call} returned {value!r} ({type(value).__name__}) as the score of text {doc}, not a real number: {RULE}"
            )
        if not math.isfinite(score):
            raise AssertionError(
                f"{call} returned {value!r} as the score of text {doc}: every score must be finite (no NaN, no infinity). "
                "NaN compares false with every score, so the text is silently never retrieved, and an infinite score ties "
                f"every text scored so, losing their ranking; {RULE}"
            )
        scores.append(score)
    return scores


def _protocol_and_scores(make: MakeRetriever) -> None:
    retriever = make()
    assert isinstance(retriever, Retriever), f"{type(retriever).__name__} lacks 'name', 'add(texts)' or 'scores(query)'"
    assert isinstance(retriever.name, str) and retriever.name, "a retriever has a non-empty name (reports show it)"
    _scores(retriever, "anything", 0, " before any text was added")
    retriever.add([])
    _scores(retriever, "anything", 0, " after add([])")
    retriever.add(_TEXTS)
    for i, text in enumerate(_TEXTS):
        scores = _scores(retriever, text, len(_TEXTS))
        assert scores[i] > 0, (
            f"scores({text!r}) gave text {i}, that same text, the score {scores[i]!r}: a text that matches the query scores "
            f"above 0; {MATCH_ABOVE_ZERO}. Scores: {scores}"
        )
        best = max(range(len(scores)), key=lambda d: (scores[d], -d))
        assert best == i, (
            f"scores({text!r}) gave text {best} ({scores[best]!r}) at least the score of text {i}, that same text "
            f"({scores[i]!r}): a text is its own best match, scoring above texts it shares fewer words with. Scores: {scores}"
        )
        again = _scores(retriever, text, len(_TEXTS), " asked again")
        assert scores == again, (
            f"scores({text!r}) returned {scores}, then {again} for the same query over the same texts: scores are "
            "deterministic (no randomness, nothing kept from one query to the next)"
        )
    unrelated = _scores(retriever, "zebra quantum xylophone", len(_TEXTS))
    assert all(s <= 0 for s in unrelated), (
        f"scores('zebra quantum xylophone') returned {unrelated}: texts sharing nothing with the query score 0 or less "
        "(replay would retrieve them as examples)"
    )


def _grows_after_queries(make: MakeRetriever) -> None:
    """Texts added after a query are scored by the next one, a different query or the same one asked again (a retriever
    that keeps each query's scores must not answer with those from before the add)."""
    retriever = make()
    retriever.add(_TEXTS[:2])
    asked = (_TEXTS[0], _TEXTS[3])  # one about a text added before the add below, one about a text it adds
    for query in asked:
        _scores(retriever, query, 2, " with 2 texts added")
    retriever.add(_TEXTS[2:])
    try:
        _scores(retriever, "zebra " + _TEXTS[3], len(_TEXTS), f" after {len(_TEXTS) - 2} more texts were added")
    except _WrongLength as exc:
        raise AssertionError(f"texts added after a query are scored by the next one: {exc}") from None
    for own, query in zip((0, 3), asked, strict=True):
        try:
            scores = _scores(retriever, query, len(_TEXTS), f" asked again after {len(_TEXTS) - 2} texts were added")
        except _WrongLength as exc:
            raise AssertionError(
                f"the same query asked again after add() must score every text, the new ones too: got {exc.got} scores for "
                f"{len(_TEXTS)} texts ({query!r}, asked before {len(_TEXTS) - 2} texts were added). A retriever that keeps "
                "the scores of the queries it was asked must drop them in add(): replay's buffer grows while it asks"
            ) from None
        assert max(range(len(scores)), key=lambda d: (scores[d], -d)) == own, (
            f"a text added after a query is found, and the others still are, by the same query asked again: {scores} for {query!r}"
        )


def _search(index: TransitionIndex, what: str, *args: Any, **kwargs: Any) -> list[Transition]:
    """``index.search(...)``; the index's refusal of the retriever's answer (a :class:`SandboxError`) is the kit's
    failure, naming ``what`` was searched."""
    try:
        return index.search(*args, **kwargs)
    except SandboxError as exc:
        raise AssertionError(f"searching the replay buffer ({what}): {exc}") from None


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
    best = _search(index, "the best match", "refund_payment", {"q": words}, f"user: {words}", k=1)
    assert best, (
        f"a search for a transition's own words retrieved none of the {len(index)} transitions: the retriever scored none "
        f"above 0; {MATCH_ABOVE_ZERO}"
    )
    assert best[0].id in {own.id, *(h.id for h in held)}, f"a transition is its own best match: got {best[0].id}"
    hits = _search(
        index,
        "with exclusions",
        "refund_payment",
        {"q": words},
        f"user: {words}",
        k=10,
        exclude_ids={own.id},
        exclude_trajectories={"t-held", "t-own"},
    )
    assert hits, "the other trajectories' transitions are found"
    assert all(h.id != own.id and h.trajectory_id not in {"t-held", "t-own"} for h in hits), (
        f"an excluded transition or trajectory was returned: {[h.id for h in hits]}"
    )
    same_tool = [h.tool == "refund_payment" for h in hits]
    assert same_tool == sorted(same_tool, reverse=True), "transitions of the queried tool come first"
    assert len(_search(index, "k=2", "refund_payment", {"q": words}, words, k=2)) == 2, "at most k"
    assert _search(index, "k=0", "refund_payment", {"q": words}, words, k=0) == [], "k=0 retrieves nothing"
