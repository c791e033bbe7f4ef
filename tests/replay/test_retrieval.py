"""Replay-buffer retrievers: the built-in BM25, bm25s (the [experience] extra) and user plug-ins, on real BFCL transitions."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import MissingExtraError, SandboxError
from ee_middleware.replay.experience_eval import split_store
from ee_middleware.replay.retrieval import (
    RETRIEVERS,
    BM25Retriever,
    BM25SRetriever,
    Transition,
    TransitionIndex,
    build_retriever,
    tokenize,
    trajectory_transitions,
)
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing import check_retriever

BUILT_INS = ["bm25", "bm25s"]


class KeywordRetriever:
    """A user's retriever (``tests.replay.test_retrieval:KeywordRetriever``): the number of distinct shared words."""

    name = "keywords"

    def __init__(self) -> None:
        self.docs: list[set[str]] = []

    def add(self, texts: Sequence[str]) -> None:
        self.docs.extend(set(tokenize(t)) for t in texts)

    def scores(self, query: str) -> list[float]:
        words = set(tokenize(query))
        return [float(len(words & doc)) for doc in self.docs]


class EveryoneTies(KeywordRetriever):
    """Scores every text alike: not a retriever (the kit must say so)."""

    def scores(self, query: str) -> list[float]:
        return [1.0] * len(self.docs)


@pytest.mark.parametrize("spec", [*BUILT_INS, "tests.replay.test_retrieval:KeywordRetriever"])
def test_the_built_in_retrievers_and_a_plug_in_pass_the_conformance_kit(spec: str) -> None:
    check_retriever(lambda: RETRIEVERS.build(spec))


def test_the_conformance_kit_fails_a_retriever_that_does_not_rank() -> None:
    with pytest.raises(AssertionError, match="own best match"):
        check_retriever(EveryoneTies)


@pytest.mark.parametrize("spec", BUILT_INS)
def test_held_out_and_own_transitions_never_come_back_on_real_bfcl_transitions(bfcl_store_path: Path, spec: str) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    split = split_store(store, share=0.34, seed=0, retriever=spec)
    trajectories = [t for t in store.iter_trajectories() if trajectory_transitions(t)]
    store.close()
    assert split.index.retriever_name == spec and split.held_out
    assert not {t.trajectory_id for t in split.index.transitions} & split.held_out_ids, "held-out transitions are never indexed"

    # a full index (every trajectory) queried with each transition itself: the query's own id, its trajectory
    # and the held-out trajectories never come back, though they are the best matches
    index = TransitionIndex.of(spec)
    index.add([tr for t in trajectories for tr in trajectory_transitions(t)])
    would_leak = 0
    for trajectory in trajectories:
        for probe in trajectory_transitions(trajectory):
            forbidden = split.held_out_ids | {trajectory.id}
            unexcluded = index.search(probe.tool, probe.arguments, probe.state, k=5)
            would_leak += any(h.trajectory_id in forbidden for h in unexcluded)
            hits = index.search(probe.tool, probe.arguments, probe.state, k=5, exclude_ids={probe.id}, exclude_trajectories=forbidden)
            assert hits and all(h.id != probe.id and h.trajectory_id not in forbidden for h in hits), probe.id
    assert would_leak > len(index) // 2, "without the exclusions, most queries would retrieve forbidden transitions"


def test_bm25_and_bm25s_rank_real_transitions_alike(bfcl_store_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    transitions = [tr for t in store.iter_trajectories() for tr in trajectory_transitions(t)]
    store.close()
    ours, theirs = BM25Retriever(), BM25SRetriever()
    for retriever in (ours, theirs):
        retriever.add([t.search_text for t in transitions])
    for probe in transitions[::3]:
        a, b = ours.scores(probe.search_text), theirs.scores(probe.search_text)
        # Lucene's BM25 (bm25s) leaves out Okapi's constant (k1 + 1) factor: same ranking, scores in a fixed ratio
        assert all(abs(x - 2.5 * y) <= 1e-9 * max(1.0, x) for x, y in zip(a, b, strict=True)), probe.id


def test_bm25s_rebuilds_once_per_burst_of_new_transitions_and_bm25_never(bfcl_store_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    transitions = [tr for t in store.iter_trajectories() for tr in trajectory_transitions(t)]
    store.close()
    index = TransitionIndex.of("bm25s")
    half = len(transitions) // 2
    for transition in transitions[:half]:
        index.add([transition])
    probe = transitions[-1]
    assert all(h.id != probe.id for h in index.search(probe.tool, probe.arguments, probe.state, k=3))
    index.search(probe.tool, probe.arguments, probe.state)
    assert index.retriever.rebuilds == 1, "many adds, then queries: one rebuild"
    index.add(transitions[half:])
    assert index.search(probe.tool, probe.arguments, probe.state, k=1)[0].id == probe.id, "the new transitions are found"
    assert index.retriever.rebuilds == 2


def test_the_sandbox_and_the_eval_take_a_retriever_by_name_and_refuse_unknown_ones(
    bfcl_store_path: Path, serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from tests.replay.test_experience import copy_first_example

    model = serve(copy_first_example)
    sandbox = ExperienceSandbox(model.spec, store=str(bfcl_store_path), retriever="tests.replay.test_retrieval:KeywordRetriever")
    assert sandbox.index.retriever_name == "keywords" and len(sandbox.index) > 0
    sandbox.close()
    for spec in ("bm25s", "tests.replay.test_retrieval:KeywordRetriever"):
        args = ["experience", "eval", "--model", model.spec, "--store", str(bfcl_store_path), "--held-out", "0.34"]
        result = CliRunner().invoke(app, [*args, "--retriever", spec, "--out", str(tmp_path / spec), "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["retriever"] == build_retriever(spec).name
        assert report["variants"]["retrieval"]["overall"]["token_f1"] > report["variants"]["no-retrieval"]["overall"]["token_f1"]
    requests = len(model.requests)
    with pytest.raises(SandboxError, match=r"Unknown retriever 'nope'.*bm25s"):
        ExperienceSandbox(model.spec, store=str(bfcl_store_path), retriever="nope")
    monkeypatch.setitem(sys.modules, "bm25s", None)
    with pytest.raises(MissingExtraError, match=r"ee-middleware\[experience\]"):
        ExperienceSandbox(model.spec, store=str(bfcl_store_path), retriever="bm25s")
    assert len(model.requests) == requests, "a bad retriever fails before any prediction"


def test_non_latin_text_is_tokenized_so_fidelity_and_retrieval_see_it() -> None:
    from ee_middleware.replay.experience_eval import token_f1

    assert token_f1("東京の天気は晴れ", "Ошибка: файл не найден") == 0.0, "two unrelated non-Latin observations do not match"
    assert token_f1("Ошибка: файл не найден", "Ошибка: файл не найден") == 1.0
    assert token_f1("[]", "{}") == 0.0, "punctuation-only observations that differ do not match"
    assert token_f1(" [] ", "[]") == 1.0
    assert "café" in tokenize("café naïve") and "naïve" in tokenize("café naïve")
    assert tokenize("getUserName snake_case") == ["getusername", "get", "user", "name", "snake_case", "snake", "case"]
    index = TransitionIndex()
    from ee_middleware.replay.retrieval import Transition

    def transition(i: int, city: str) -> Transition:
        return Transition(f"t{i}", f"traj{i}", 0, "", "", "weather", {"city": city}, f"{city}: ok", False)

    index.add([transition(0, "東京"), transition(1, "Москва"), transition(2, "Paris")])
    assert [t.id for t in index.search("weather", {"city": "Москва"}, k=1)] == ["t1"], "a Cyrillic argument finds its own transition"


def test_a_trajectory_rejected_after_it_was_indexed_is_never_retrieved_again(bfcl_store_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    index = TransitionIndex()
    index.refresh(store)
    trajectory = next(iter(store.iter_trajectories()))
    probe = trajectory_transitions(trajectory)[0]

    def hits() -> set[str]:
        return {h.trajectory_id for h in index.search(probe.tool, probe.arguments, probe.state, k=100)}

    assert trajectory.id in hits()
    store.reject([trajectory.id], by="reviewer", reason="wrong answer")
    index.refresh(store)
    assert trajectory.id not in hits(), "a long-running sandbox must not keep grounding on a rejected trajectory"
    store.approve([trajectory.id], by="reviewer", reason="fine after all")
    index.refresh(store)
    assert trajectory.id in hits()
    store.close()


def test_words_of_scripts_written_without_spaces_are_compared_by_character() -> None:
    """Japanese, Chinese and Thai observations have no spaces: a whole clause was one token, so a prediction that differed
    in one word scored token F1 0, and a query for 決済 never retrieved a transition whose text says 決済が完了しました."""
    from ee_middleware.replay.experience_eval import token_f1

    real, predicted = "決済が完了しました。注文番号は12345です", "決済が失敗しました。注文番号は12345です"
    assert 0.6 < token_f1(predicted, real) < 1.0
    assert token_f1(real, real) == 1.0 and token_f1("送信しました", "error: timeout") == 0.0
    assert {"決", "済", "12345", "café", "файл"} <= set(tokenize("決済 12345 café файл")), "other scripts keep their words"
    assert tokenize("send_email東京") == ["send_email", "send", "email", "東", "京"]

    index = TransitionIndex()
    index.add(
        [
            Transition("a", "t1", 0, "", "", "charge", {"memo": "決済が完了しました"}, "ok", False),
            Transition("b", "t2", 0, "", "", "charge", {"memo": "返金を受け付けました"}, "ok", False),
        ]
    )
    assert [t.id for t in index.search("refund", {}, "決済", k=2)] == ["a"], "only the transition sharing 決済 matches"


@pytest.mark.parametrize(
    ("scores", "shown"),
    [(lambda n: [None] * n, "None"), (lambda n: iter([1.0] * n), "list_iterator"), (lambda n: ["high"] * n, "'high'")],
)
def test_a_retriever_plugin_whose_scores_are_not_numbers_is_named_with_the_fix(scores: Any, shown: str) -> None:
    """A plug-in returning None, strings or a one-shot iterator crashed the replay with a bare TypeError."""

    class Buggy:
        name = "buggy"
        added = 0

        def add(self, texts: Any) -> None:
            self.added += len(texts)

        def scores(self, query: str) -> Any:
            return scores(self.added)

    index = TransitionIndex(retriever=Buggy())
    index.add([Transition("a", "t1", 0, "", "", "charge", {}, "ok", False)])
    with pytest.raises(SandboxError, match=rf"retriever 'buggy' .*{shown}.*check_retriever"):
        index.search("charge", {})
