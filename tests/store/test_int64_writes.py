"""A record holding an integer the store's ``Int64`` columns cannot hold (a step index, a token count, a seed or
``truncated_chars`` of 2**64) is refused when written, naming the record, the field and the range, and nothing of its
batch is stored. Before, the write took it: every later read skipped it as a record that fits no schema (and every plain
read failed on it), so what the caller was told was stored was not."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware._limits import INT64_MAX, INT64_MIN
from ee_middleware.errors import RecordError
from ee_middleware.records import Rollout, Step, Trajectory
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.store.replay_spool import ReplaySpool
from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory

RANGE = f"outside the store's 64-bit integer range ({INT64_MIN} to {INT64_MAX})"


def _with_step(t: Trajectory, position: int, **fields: int) -> Trajectory:
    """``t`` with one step's integers set as given (``truncated_chars`` goes to its observation), unvalidated: as a
    caller's own code may build a record (``model_copy``) and as pydantic's ``int`` takes any size anyway."""
    steps = list(t.steps)
    step = steps[position]
    observation = fields.pop("truncated_chars", None)
    update: dict[str, object] = dict(fields)
    if observation is not None:
        update["observation"] = step.observation.model_copy(update={"truncated_chars": observation})
    steps[position] = step.model_copy(update=update)
    return t.model_copy(update={"steps": steps})


def _spool_bytes(root: Path) -> bytes:
    return b"".join(path.read_bytes() for path in spool.list_segments(root / "spool"))


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("truncated_chars", 2**64, "steps[1].observation.truncated_chars"),
        ("truncated_chars", INT64_MIN - 1, "steps[1].observation.truncated_chars"),
        ("index", 2**63, "steps[1].index"),
        ("decision_index", 2**70, "steps[1].decision_index"),
    ],
)
def test_a_trajectory_with_an_integer_outside_64_bits_is_refused_with_its_batch(tmp_path: Path, field: str, value: int, named: str) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("before")])
    bad = _with_step(sample_trajectory("bad"), 1, **{field: value})
    with pytest.raises(RecordError) as refused:
        store.write([sample_trajectory("good"), bad])
    message = str(refused.value)
    assert "record 2 of 2" in message and "'bad'" in message and f"{named} {value}" in message and RANGE in message, message
    assert "Nothing of this batch was written" in message, message
    assert str(value).encode() not in _spool_bytes(store.root)  # the batch is stored whole or not at all
    assert LocalExperienceStore(store.root).trajectories()["id"].to_list() == ["before"]  # what was stored stays


def test_every_refused_record_of_a_batch_is_named(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    batch = [
        _with_step(sample_trajectory("one"), 0, truncated_chars=2**64),
        sample_trajectory("two"),
        _with_step(sample_trajectory("three"), 1, index=2**63),
    ]
    with pytest.raises(RecordError, match=r"2 of the 3 records") as refused:
        store.write(batch)
    message = str(refused.value)
    assert "record 1 of 3" in message and "'one'" in message and "record 3 of 3" in message and "'three'" in message, message
    assert "'two'" not in message
    assert store.trajectories().height == 0


def test_the_64_bit_range_is_taken_whole(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    edges = _with_step(sample_trajectory("edges"), 2, index=INT64_MAX, decision_index=INT64_MAX)  # the answer, last
    edges = _with_step(edges, 1, truncated_chars=INT64_MAX)
    low = _with_step(sample_trajectory("low"), 0, truncated_chars=INT64_MIN)
    assert store.write([edges, low]) == 2
    fresh = LocalExperienceStore(store.root)
    assert fresh.get("edges") == edges and fresh.get("low") == low
    fresh.compact()
    assert LocalExperienceStore(store.root).get("edges") == edges


def _bad_rollout(**fields: int) -> Rollout:
    rollout = sample_rollout("r-bad", "t1", 0, 1)
    observation = fields.pop("truncated_chars", None)
    if observation is not None:
        fields["observation"] = rollout.observation.model_copy(update={"truncated_chars": observation})  # type: ignore[assignment]
    return rollout.model_copy(update=fields)


@pytest.mark.parametrize("writer", ["store", "replay spool"])
@pytest.mark.parametrize(
    ("rollout_fields", "record_fields", "named"),
    [
        ({"truncated_chars": 2**64}, {}, "rollout 'r-bad' (rollout 2 of 2): observation.truncated_chars 18446744073709551616"),
        ({"branch_index": 2**63}, {}, "rollout 'r-bad' (rollout 2 of 2): branch_index 9223372036854775808"),
        ({}, {"seed": -(2**63) - 1}, "its replay record: seed -9223372036854775809"),
        ({}, {"states": 2**64}, "its replay record: states 18446744073709551616"),
    ],
)
def test_a_replay_with_an_integer_outside_64_bits_is_refused_whole(
    tmp_path: Path, writer: str, rollout_fields: dict[str, int], record_fields: dict[str, int], named: str
) -> None:
    store = LocalExperienceStore(tmp_path / "store", fsync=False)
    store.write([sample_trajectory("t1")])
    rollouts = [
        sample_rollout("r-good", "t1", 0, 0),
        _bad_rollout(**rollout_fields) if rollout_fields else sample_rollout("r-bad", "t1", 0, 1),
    ]
    record = sample_replay_record("t1", branches=2).model_copy(update=record_fields)
    target = store if writer == "store" else ReplaySpool(store.root, fsync=False)
    with pytest.raises(RecordError) as refused:
        target.write_replay(record, rollouts)
    target.close()
    message = str(refused.value)
    assert "trajectory 't1'" in message and "replay 'replay-1'" in message and named in message and RANGE in message, message
    assert "Nothing of it was written" in message, message
    fresh = LocalExperienceStore(store.root)
    assert fresh.rollouts().height == 0 and fresh.replays().height == 0  # neither the good rollout nor the record
    assert fresh.trajectories()["id"].to_list() == ["t1"]


def test_a_step_refused_at_write_is_named_on_read_when_an_older_version_stored_it(tmp_path: Path) -> None:
    """A store an older version wrote such a record into is still read (the record skipped, named by id and field)."""
    store = LocalExperienceStore(tmp_path / "store")
    bad = _with_step(sample_trajectory("old"), 1, truncated_chars=2**64)
    writer = spool.SpoolWriter(store.root / "spool")
    writer.append([{"kind": "trajectory", "data": bad.model_dump(mode="json")}])
    writer.seal()
    store.write([sample_trajectory("new")])
    with pytest.warns(Warning, match=r"trajectory 'old': steps\[1\]\.observation\.truncated_chars 18446744073709551616 is outside"):
        assert LocalExperienceStore(store.root).trajectories()["id"].to_list() == ["new"]


def test_a_step_built_valid_and_changed_after_is_checked_too(tmp_path: Path) -> None:
    # pydantic models here do not validate assignment: the check is on the values written, not on the model's validation
    t = sample_trajectory("changed")
    step: Step = t.steps[0]
    step.index = 2**64
    with pytest.raises(RecordError, match=r"steps\[0\]\.index 18446744073709551616"):
        LocalExperienceStore(tmp_path / "store").write([t])
