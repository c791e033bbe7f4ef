"""``LocalExperienceStore.get(id, states=False)``: the trajectory with its steps' states left unread (empty), every other
field as ``get(id)`` reads it, from the spool and from Parquet; ``registry.get_trajectory`` asks for it only where the
store's own ``get`` is the local store's (a subclass's ``get``, or one set on the object, is called as it was), and
empties the states of what any other ``get`` returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.registry import get_trajectory
from ee_middleware.testing.store_conformance import sample_trajectory


def _without_states(trajectory: Trajectory) -> Trajectory:
    return trajectory.model_copy(update={"steps": [s.model_copy(update={"state": []}) for s in trajectory.steps]})


@pytest.mark.parametrize("compacted", [False, True])
def test_a_trajectory_read_without_its_states_is_the_same_but_for_them(tmp_path: Path, compacted: bool) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    runs = [sample_trajectory("a", steps=9, tool_variants=True), sample_trajectory("b", steps=2)]
    store.write(runs)
    store.close()
    if compacted:
        LocalExperienceStore(store.root).compact()
    opened = LocalExperienceStore(store.root)
    for run in runs:
        whole = opened.get(run.id)
        assert whole == run and any(step.state for step in whole.steps)
        lean = opened.get(run.id[:1], states=False)  # a prefix, as get takes one
        assert lean == _without_states(whole)
        assert get_trajectory(opened, run.id, states=False) == lean
        assert get_trajectory(opened, run.id) == whole


def test_a_subclass_with_its_own_get_is_called_as_before(tmp_path: Path) -> None:
    calls: list[tuple[Any, ...]] = []

    class Audited(LocalExperienceStore):
        def get(self, trajectory_id: str) -> Trajectory:  # type: ignore[override]  # (written before states=)
            calls.append((trajectory_id,))
            return super().get(trajectory_id)

    store = Audited(tmp_path / "store")
    store.write([sample_trajectory("a")])
    assert get_trajectory(store, "a", states=False) == _without_states(store.get("a"))
    assert calls == [("a",), ("a",)]


def test_a_get_set_on_the_store_object_is_called_as_before_and_its_states_emptied(tmp_path: Path) -> None:
    """Review: an audit hook a plug-in factory sets on the store object (``store.get = audited``, the protocol's
    ``get(trajectory_id)``) was given ``states=False`` and raised TypeError in ``ee traces show``."""
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("a")])
    real_get, calls = store.get, []

    def audited(trajectory_id: str) -> Trajectory:
        calls.append(trajectory_id)
        return real_get(trajectory_id)

    store.get = audited  # type: ignore[method-assign]
    assert get_trajectory(store, "a", states=False) == _without_states(real_get("a"))
    assert calls == ["a"]


def test_a_plug_in_stores_trajectory_has_its_states_emptied_before_a_view_sees_it(tmp_path: Path) -> None:
    """Review: a store that cannot leave the states unread returned them raw, and ``ee traces show --json --no-states``
    redacts no state: a plug-in trajectory with a computed field over the last state printed it unredacted."""
    from pydantic import computed_field

    class WithLastState(Trajectory):
        @computed_field  # type: ignore[prop-decorator]
        @property
        def last_state(self) -> list[Any]:
            return self.steps[-1].state if self.steps else []

    class PlugIn:
        def __init__(self, trajectory: Trajectory) -> None:
            self.trajectory = WithLastState(**trajectory.model_dump())

        def get(self, trajectory_id: str) -> Trajectory:
            return self.trajectory

    got = get_trajectory(PlugIn(sample_trajectory("a")), "a", states=False)
    assert got.last_state == [] and all(step.state == [] for step in got.steps) and len(got.steps) == 3
