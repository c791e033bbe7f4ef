"""The experience model's replay buffer reads rollouts as dataset builds select them.

A replay whose sandbox answered the expert's own recorded call otherwise than production (a fidelity mismatch: here a
misnamed parameter, so every ``cancel_booking`` answers ``bid: Field required``) is left out of dataset builds from its
first mismatching step on, and so are its configuration's answers to the tool it got wrong, in every trajectory. The
buffer (an experience sandbox's index, refreshed as it runs, and ``ee experience eval``'s) indexed them all, so the
experience model was grounded on a sandbox known to disagree with production.

Real parts: trajectories recorded from a real LangGraph agent, the real replay job and ``PythonSandbox`` es into a real
local store, the builds' own :func:`~ee_middleware.trainers.datasets.source.load_source`, and an experience sandbox
asking a scripted model behind a real HTTP server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.replay.retrieval import Transition, TransitionIndex
from ee_middleware.store.local import LocalExperienceStore

pytestmark = pytest.mark.timeout(240)

GOOD = "tests.trainers.datasets.booking_world:make_sandbox"
BROKEN = "tests.trainers.datasets.booking_world:make_broken_sandbox"
POLICY = "tests.trainers.datasets.booking_world:BookingPolicy"
BROKEN_ANSWER = "Field required"


def served(index: TransitionIndex) -> list[Transition]:
    """Every transition a query may return (a query holding every indexed word matches them all)."""
    everything = " ".join(t.search_text for t in index.transitions)
    return index.search("", {}, everything, k=len(index.transitions) + 1)


def served_rollouts(index: TransitionIndex) -> set[str]:
    """The rollout ids the buffer serves."""
    return {t.id.removeprefix("rollout:") for t in served(index) if t.replay_id is not None}


def built_rollouts(root: Path, held_out: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """The rollout ids a dataset build of the store uses (its own reader, default settings), but those of ``held_out``
    trajectories."""
    import polars as pl

    from ee_middleware.trainers.datasets.source import load_source

    store = LocalExperienceStore(root)
    try:
        rollouts = load_source(store).rollouts.filter(~pl.col("trajectory_id").is_in(sorted(held_out)))
        return set(rollouts["id"].to_list())
    finally:
        store.close()


def refreshed(index: TransitionIndex, root: Path) -> TransitionIndex:
    store = LocalExperienceStore(root)
    try:
        index.refresh(store)
    finally:
        store.close()
    return index


def buffers_like_builds(root: Path, running: TransitionIndex) -> dict[str, tuple[TransitionIndex, set[str]]]:
    """A new buffer, ``running`` refreshed now (one that indexed before), and the held-out eval's, each checked to serve
    the rollouts a dataset build uses (the eval's: but those of the trajectory it holds out); with the trajectories
    each holds out."""
    from ee_middleware.replay.experience_eval import split_store

    store = LocalExperienceStore(root)
    try:
        split = split_store(store, share=0.0)  # holds out one trajectory
    finally:
        store.close()
    built = {"a new buffer": built_rollouts(root), "the eval's buffer": built_rollouts(root, split.held_out_ids)}
    built["a buffer refreshed since"] = built["a new buffer"]
    indexes = {"a new buffer": refreshed(TransitionIndex.of(), root), "a buffer refreshed since": refreshed(running, root)}
    indexes["the eval's buffer"] = split.index
    for name, index in indexes.items():
        assert served_rollouts(index) == built[name], f"{name} reads other rollouts than a dataset build"
    return {name: (index, split.held_out_ids if index is split.index else set()) for name, index in indexes.items()}


def _recorded(root: Path) -> dict[str, str]:
    from tests.trainers.datasets.booking_world import books_hopper, cancels_b1, record_trajectory

    books = record_trajectory(root, *books_hopper())
    cancels = record_trajectory(root, *cancels_b1())
    return {"books": books.id, "cancels": cancels.id}


def test_a_replay_with_fidelity_mismatches_is_left_out_of_the_buffer_as_builds_leave_it_out(tmp_path: Path) -> None:
    root = tmp_path / "experience"
    ids = _recorded(root)
    good = run_replay(ReplayConfig.load(store=root, sandbox=GOOD, policy=POLICY, k=2))
    assert good.done == 2 and good.fidelity_mismatches == 0
    # the broken sandbox replays the trajectory that books first: it reproduces that one's expert calls (no mismatch
    # yet), while its cancel_booking alternatives there answer 'Field required', which builds use so far
    first = run_replay(ReplayConfig.load(store=root, sandbox=BROKEN, policy=POLICY, k=2, limit=1))
    store = LocalExperienceStore(root)
    assert store.replays(replay_id=first.replay_id)["trajectory_id"].to_list() == [ids["books"]]
    store.close()
    running = refreshed(TransitionIndex.of(), root)
    assert served_rollouts(running) == built_rollouts(root)
    assert any(BROKEN_ANSWER in t.observation for t in served(running)), "no mismatch is known yet: builds use these too"

    broken = run_replay(ReplayConfig.load(store=root, sandbox=BROKEN, policy=POLICY, k=2))  # the run continues: cancels
    assert (broken.replay_id, broken.done, broken.fidelity_mismatches) == (first.replay_id, 1, 1)
    (example,) = broken.fidelity_examples
    assert (example["trajectory_id"], example["step"], example["tool"]) == (ids["cancels"], 1, "cancel_booking")

    for name, (index, held_out) in buffers_like_builds(root, running).items():
        transitions = served(index)
        assert not [t.observation for t in transitions if BROKEN_ANSWER in t.observation], name
        of_broken = [t for t in transitions if t.replay_id == broken.replay_id]
        before_mismatch = {(ids["books"], 0), (ids["books"], 1), (ids["cancels"], 0)}
        assert {(t.trajectory_id, t.step_index) for t in of_broken} == {k for k in before_mismatch if k[0] not in held_out}, (
            f"{name}: the broken sandbox's other answers before its mismatching step stay in use"
        )
        assert not [t for t in of_broken if t.tool == "cancel_booking"], name
        assert any(t.tool == "cancel_booking" and t.replay_id == good.replay_id for t in transitions), name


def test_an_experience_sandbox_is_not_grounded_on_a_replay_with_fidelity_mismatches(tmp_path: Path, serve: Any) -> None:
    """The experience sandbox's own buffer, end to end: what it shows the model as real examples of cancel_booking."""
    from ee_middleware.records import ToolCall
    from ee_middleware.replay.sandboxes.experience import ExperienceSandbox
    from tests.replay.test_experience import copy_first_example

    root = tmp_path / "experience"
    ids = _recorded(root)
    run_replay(ReplayConfig.load(store=root, sandbox=GOOD, policy=POLICY, k=2))
    broken = run_replay(ReplayConfig.load(store=root, sandbox=BROKEN, policy=POLICY, k=2))
    assert broken.fidelity_mismatches == 1
    store = LocalExperienceStore(root)
    (trajectory,) = [t for t in store.iter_trajectories() if t.id == ids["books"]]
    store.close()
    model = serve(copy_first_example)
    sandbox = ExperienceSandbox(model.spec, store=str(root), top_k=10)
    step = trajectory.steps[1]
    sandbox.reset(trajectory.environment)
    sandbox.at_step(trajectory, step)
    observation = sandbox.execute(ToolCall(id="alt", name="cancel_booking", arguments={"booking_id": "B2"}))
    lineage = sandbox.provenance()
    sandbox.close()
    assert lineage is not None and lineage["retrieved"], "the model was shown real examples"
    shown = [json.loads(m["content"]) for m in model.requests[-1]["messages"][1:-1] if m["role"] == "assistant"]
    assert shown and not [s for s in shown if BROKEN_ANSWER in s["observation"]], "an example from the broken sandbox was shown"
    assert observation.content.startswith("cancelled B") and BROKEN_ANSWER not in observation.content
