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


# -- what a transition's state shows (the experience model's "interaction so far") ------------------------------------


def _entry(store: LocalExperienceStore, entry_id: str) -> Any:
    return next(t for t in store.iter_trajectories() if (t.environment or {}).get("entry_id") == entry_id)


def test_the_state_shows_the_agents_tool_calls_with_their_results_in_order(bfcl_store_path: Path, serve: Any) -> None:
    """The state text kept only messages with text: an assistant message holding only tool calls vanished, so the
    experience model (and the buffer's search text, and the em prompts) saw 'tool: {...}', 'tool: None' with no call."""
    from ee_middleware.records import ToolCall
    from ee_middleware.replay.retrieval import state_text
    from tests.replay.test_experience import copy_first_example

    store = LocalExperienceStore(bfcl_store_path)
    trajectory = _entry(store, "multi_turn_base_0")
    store.close()
    tool_steps = [s for s in trajectory.steps if s.action.tool_call is not None and s.observation is not None]
    step = tool_steps[-1]  # diff, after cd .., mv, cd temp
    earlier = tool_steps[-4:-1]
    expected = []
    for s in earlier:  # from the step records, not from the messages the state text is made of
        call, observation = s.action.tool_call, s.observation
        assert call is not None and observation is not None and len(observation.content) < 150
        expected += [
            f"assistant calls {call.name} {json.dumps(call.arguments, ensure_ascii=False)}",
            f"tool {call.name}: {observation.content}",
        ]
    assert [line.split(" ")[2] for line in expected[::2]] == ["cd", "mv", "cd"]

    def in_order(text: str) -> None:
        positions = [text.find(line) for line in expected]
        assert -1 not in positions, f"missing {[e for e, p in zip(expected, positions, strict=True) if p < 0]} in:\n{text}"
        assert positions == sorted(positions), "calls and results in the order they happened"

    in_order(state_text(step.state))
    transition = next(t for t in trajectory_transitions(trajectory) if t.step_index == step.index)
    in_order(transition.search_text)  # the replay buffer searches it
    sandbox = ExperienceSandbox(serve(copy_first_example).spec, store=str(bfcl_store_path))
    try:
        sandbox.at_step(trajectory, step)
        call = step.action.tool_call
        assert call is not None
        messages, _ = sandbox.prompt(ToolCall(id="alt", name=call.name, arguments={**call.arguments, "file_name2": "other.pdf"}))
    finally:
        sandbox.close()
    question = messages[-1]["content"]
    in_order(question)  # the experience model is shown them
    assert "\ntool: " not in question, "every result names the call it answers"
    assert len(state_text(step.state)) <= 800


def test_a_long_result_is_clipped_so_the_calls_before_it_stay_in_the_state() -> None:
    from ee_middleware.replay.retrieval import state_text

    messages = [
        {"role": "user", "content": "Find the budget lines."},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "cd", "arguments": '{"folder": "docs"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"current_working_directory": "docs"}'},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "cat", "arguments": {"file_name": "a.txt"}}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "x" * 5000},
    ]  # fmt: skip
    text = state_text(messages)
    assert text.splitlines() == [
        "user: Find the budget lines.",
        'assistant calls cd {"folder": "docs"}',
        'tool cd: {"current_working_directory": "docs"}',
        'assistant calls cat {"file_name": "a.txt"}',
        "tool cat: " + "x" * 199 + "…",
    ]
    last = "tool cat: " + "x" * 199 + "…"
    assert state_text(messages, max_chars=260).splitlines() == ['assistant calls cat {"file_name": "a.txt"}', last], "whole lines"
    assert state_text(messages, max_chars=100) == last[-100:], "the end of a last line longer than the bound"


def test_retrieved_examples_show_the_end_of_their_state_so_two_answers_to_the_same_call_can_be_told_apart(
    bfcl_store_path: Path,
) -> None:
    """Two real `ls {"a": true}` calls answered differently (another directory) were shown as two identical calls with
    two different answers: nothing in the prompt told the model why."""
    from ee_middleware.replay.retrieval import EXAMPLE_STATE_CHARS
    from ee_middleware.replay.sandboxes.experience import build_prompt

    store = LocalExperienceStore(bfcl_store_path)
    index = TransitionIndex()
    index.refresh(store)
    store.close()
    same_call = [t for t in index.transitions if t.tool == "ls" and t.arguments == {"a": True}]
    answers = {t.observation for t in same_call}
    assert len(answers) > 1, "the store holds one call answered differently"
    a, b = next((x, y) for x in same_call for y in same_call if x.observation != y.observation)
    hits = index.search("ls", {"a": True}, k=10)
    assert {a.id, b.id} <= {h.id for h in hits}, "both are retrieved for the same call"

    messages = build_prompt("task", "", "ls", {"a": True}, [a, b])
    demonstrations = [m["content"] for m in messages[1:-1] if m["role"] == "user"]
    assert len(demonstrations) == 2 and demonstrations[0] != demonstrations[1], "each example is shown with its own state"
    for example, shown in ((b, demonstrations[0]), (a, demonstrations[1])):  # the best match (a) is shown last
        state = example.as_example()["state"]
        assert state and state in shown and len(state) <= EXAMPLE_STATE_CHARS
        assert example.state.endswith(state), "the end of the example's state, whole lines"
        assert example.state.splitlines()[-1] in shown, "at least the example's last message"

    deep = next(t for t in index.transitions if t.state.count("\n") > 8)  # a long state is cut to the bound
    assert len(deep.as_example()["state"]) <= EXAMPLE_STATE_CHARS < len(deep.state)
    assert deep.as_example()["state"] == "\n".join(deep.state.splitlines()[-deep.as_example()["state"].count("\n") - 1 :])


def test_the_buffer_reads_approved_trajectories_only(bfcl_store_path: Path) -> None:
    """The buffer (and ee experience eval's split) read pending trajectories too, which dataset builds leave out until a
    person approves them: the experience model was grounded on unreviewed experience (a curriculum rollout, say)."""
    from ee_middleware.records import Approval

    store = LocalExperienceStore(bfcl_store_path)
    source = _entry(store, "multi_turn_base_0")
    pending_id = "pending-copy"
    steps = [
        s.model_copy(
            update={
                "trajectory_id": pending_id,
                "observation": s.observation.model_copy(update={"content": '{"unreviewed": "PENDINGMARK"}'}) if s.observation else None,
            }
        )
        for s in source.steps
    ]
    # a run of its own, in its own trace (two trajectories of one trace holding one decision teach it once)
    store.write(
        [source.model_copy(update={"id": pending_id, "steps": steps, "approval": Approval(status="pending"), "trace_id": "c2" * 16})]
    )
    assert store.get(pending_id).approval.status == "pending"

    index = TransitionIndex()
    index.refresh(store)
    assert not [t for t in index.transitions if t.trajectory_id == pending_id]
    split = split_store(store, share=0.5, seed=0)
    assert pending_id not in split.held_out_ids and not [t for t in split.index.transitions if t.trajectory_id == pending_id]

    store.approve([pending_id], by="reviewer")
    index.refresh(store)
    probe = next(t for t in index.transitions if t.trajectory_id == pending_id)
    assert probe.observation == '{"unreviewed": "PENDINGMARK"}', "indexed once approved"
    assert pending_id in {h.trajectory_id for h in index.search(probe.tool, probe.arguments, probe.state, k=5)}
    store.close()


def test_tied_transitions_come_back_in_the_same_order_whatever_order_they_were_indexed_in() -> None:
    """Ties went by indexing order, which follows the order the store's trajectories were written in: the same store
    written in another order (ingest order, several recording processes) gave an experience model other examples."""
    from ee_middleware.replay.retrieval import Transition

    def transition(i: int) -> Transition:
        return Transition(f"t{i}", f"traj{i}", 0, "", "", "weather", {"city": "Paris"}, "Paris: ok", False)

    found = []
    for order in ([0, 1, 2, 3], [3, 1, 0, 2]):
        index = TransitionIndex()
        index.add([transition(i) for i in order])
        found.append([t.id for t in index.search("weather", {"city": "Paris"}, k=3)])
    assert found[0] == found[1] == ["t0", "t1", "t2"]


@pytest.mark.parametrize("spec", ["bm25", "bm25s"])
@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"k1": "abc"}, r"k1 must be a finite number, 0 or more \(1\.2 to 2 is usual\), not 'abc'"),
        ({"b": None}, r"b must be a number from 0 to 1 \(0\.75 is usual\), not None"),
        ({"k1": -1, "b": 0}, r"k1 must be a finite number, 0 or more .*, not -1 \("),
        ({"k1": -5, "b": 7}, r"k1 must be .*, not -5; b must be a number from 0 to 1 .*, not 7 \(e\.g\. --retriever-setting k1=1\.5"),
        ({"k1": float("inf")}, r"k1 must be .*, not inf"),
        ({"b": True}, r"b must be .*, not True"),
    ],
)
def test_bm25_settings_out_of_range_are_refused_when_the_retriever_is_built(spec: str, options: dict, expected: str) -> None:
    """Sweep: ``k1=abc`` failed at the first search ("unexpected TypeError ... a bug in ee-middleware"), after an eval's
    whole no-retrieval variant had run; ``k1=-1 b=0`` divided by zero there; ``k1=-5 b=7`` ranked nonsense, and was
    recorded as the settings the report's retrieval ran with."""
    with pytest.raises(SandboxError, match=rf"Bad settings for retriever '{spec}': {expected}"):
        build_retriever(spec, **options)


def test_bm25_settings_in_range_are_kept_as_floats() -> None:
    retriever = build_retriever("bm25", k1=0, b=1)
    assert (retriever.k1, retriever.b) == (0.0, 1.0) and isinstance(retriever.k1, float)
