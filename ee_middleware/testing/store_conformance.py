"""A conformance kit for experience stores: run it against any implementation.

from ee_middleware.testing import check_store
check_store(lambda: MyStore(tmp_path / "s"))
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from ee_middleware.errors import TrajectoryNotFoundError
from ee_middleware.records import Action, ApprovalEvent, Observation, Step, ToolCall, Trajectory, utcnow


def sample_trajectory(trajectory_id: str, *, steps: int = 2, app: str = "conformance") -> Trajectory:
    """A small valid trajectory with tool-call steps and a final answer."""
    start = utcnow()
    history: list[dict[str, Any]] = [{"role": "user", "content": f"task {trajectory_id} ✓ 日本"}]
    recorded = []
    for i in range(steps):
        call = ToolCall(id=f"call-{i}", name="lookup", arguments={"i": i, "q": "ü"})
        recorded.append(
            Step(
                trajectory_id=trajectory_id,
                index=i,
                decision_index=i,
                state=list(history),
                action=Action(kind="tool_call", tool_call=call),
                observation=Observation(content=f"result {i}"),
                latency_ms=1.5,
                model_latency_ms=2.0,
            )
        )
        history += [
            {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
            {"role": "tool", "tool_call_id": call.id, "content": f"result {i}"},
        ]
    recorded.append(
        Step(
            trajectory_id=trajectory_id,
            index=steps,
            decision_index=steps,
            state=list(history),
            action=Action(kind="answer", content="done"),
        )
    )
    return Trajectory(
        id=trajectory_id,
        app=app,
        task=history[0]["content"],
        messages=[*history, {"role": "assistant", "content": "done"}],
        final_answer="done",
        started_at=start,
        ended_at=start + dt.timedelta(seconds=1),
        steps=recorded,
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look up.",
                    "parameters": {"type": "object", "properties": {"i": {"type": "integer"}}},
                },
            }
        ],
        environment={"seed": 1},
    )


def check_store(make_store: Callable[[], Any]) -> None:
    """Assert the store protocol's behaviour. ``make_store`` must open the *same* store each call."""
    store = make_store()
    assert store.trajectories().height == 0, "a new store must be empty"
    originals = [sample_trajectory(f"t{i}", steps=i + 1) for i in range(3)]
    assert store.write(originals) == 3
    assert store.trajectories()["id"].to_list() == ["t0", "t1", "t2"], "trajectories come back in write order"
    assert store.get("t2") == originals[2], "a trajectory must round-trip exactly"
    assert store.steps(["t1"]).height == 3
    store.write([originals[0]])
    assert store.trajectories().height == 3, "writing a trajectory again must not duplicate it"

    store.set_approval([ApprovalEvent(trajectory_id="t0", status="approved", by="alice", reason="good")])
    store.set_approval([ApprovalEvent(trajectory_id="t1", status="rejected", by="bob")])
    assert store.trajectories(status="approved")["id"].to_list() == ["t0"]
    assert store.trajectories(status="rejected")["id"].to_list() == ["t1"]
    assert store.trajectories(status="pending")["id"].to_list() == ["t2"]
    store.set_approval([ApprovalEvent(trajectory_id="t0", status="rejected", by="carol", reason="changed my mind")])
    assert store.get("t0").approval.status == "rejected", "the latest decision wins"
    assert [t.id for t in store.iter_trajectories(status="rejected")] == ["t0", "t1"]
    try:
        store.set_approval([ApprovalEvent(trajectory_id="nope", status="approved", by="x")])
    except TrajectoryNotFoundError:
        pass
    else:
        raise AssertionError("approving an unknown id must raise TrajectoryNotFoundError")

    before = store.trajectories()
    store.compact()
    reopened = make_store()
    after = reopened.trajectories()
    assert after.equals(before), "compaction must not change what is read"
    assert reopened.get("t1") == store.get("t1")
