"""Expert trajectories: a real LangGraph agent replays BFCL ground truth, recorded through @record_experience."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES, load_entries
from ee_middleware.bfcl.experts import app_name, record_experts
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.records import Approval
from ee_middleware.store import LocalExperienceStore
from tests.conftest import BFCL_ENTRIES


def test_expert_trajectories_follow_the_ground_truth_turn_by_turn(bfcl_expert_store_template: Path) -> None:
    store = LocalExperienceStore(bfcl_expert_store_template)
    trajectories = list(store.iter_trajectories(status="approved"))
    assert len(trajectories) == BFCL_ENTRIES
    entries = {e.id: e for e in load_entries("multi_turn_base", limit=BFCL_ENTRIES)}
    for trajectory in trajectories:
        entry = entries[trajectory.environment["entry_id"]]
        assert trajectory.app == app_name("multi_turn_base") and trajectory.status == "completed"
        assert trajectory.task == entry.turns[0][0]["content"]
        calls = [s for s in trajectory.steps if s.action.kind == "tool_call"]
        assert len(calls) == sum(len(turn) for turn in entry.ground_truth)
        assert sum(s.action.kind == "answer" for s in trajectory.steps) == len(entry.turns)
        user_turns = [m["content"] for m in trajectory.messages if m["role"] == "user"]
        assert user_turns == [turn[0]["content"] for turn in entry.turns]
        assert {t["function"]["name"] for t in trajectory.tools} >= {s.action.tool_call.name for s in calls}


def test_the_sandbox_reproduces_every_recorded_observation(bfcl_expert_store_template: Path) -> None:
    sandbox = BFCLSandbox()
    for trajectory in LocalExperienceStore(bfcl_expert_store_template).iter_trajectories():
        sandbox.reset(trajectory.environment)
        for step in trajectory.steps:
            if step.action.tool_call is not None:
                assert sandbox.execute(step.action.tool_call).content == step.observation.content


def test_recording_is_idempotent(bfcl_store_path: Path) -> None:
    report = record_experts(bfcl_store_path, "multi_turn_base", limit=BFCL_ENTRIES + 1)
    assert len(report.already) == BFCL_ENTRIES and len(report.recorded) == 1
    assert LocalExperienceStore(bfcl_store_path).trajectories().height == BFCL_ENTRIES + 1


@pytest.mark.parametrize("category", MULTI_TURN_CATEGORIES)
def test_every_multi_turn_category_records(tmp_path: Path, category: str, caplog: pytest.LogCaptureFixture) -> None:
    report = record_experts(tmp_path / "store", category, limit=2)
    assert not report.failed and len(report.recorded) == 2
    # (miss_func offers held-out functions from their turn on, as the task means: capture's warning about a middleware
    # changing the tools per call was said for it)
    assert not [r for r in caplog.records if "different tools from one call to the next" in r.getMessage()]
    trajectories = list(LocalExperienceStore(tmp_path / "store").iter_trajectories(status="approved"))
    assert len(trajectories) == 2
    if category == "multi_turn_miss_func":
        entry = load_entries(category, limit=1)[0]
        trajectory = next(t for t in trajectories if t.environment["entry_id"] == entry.id)
        held_out = {name for names in entry.missed_functions.values() for name in names}
        assert held_out <= {t["function"]["name"] for t in trajectory.tools}
        assert any("updated some more functions" in m.get("content", "") for m in trajectory.messages if m["role"] == "user")


def _per_entry_tool_classes(schemas: list[dict], world: object, built: dict | None = None) -> list:
    """The tools as they were built before issue 11.6: a new pydantic tool class for every entry and turn."""
    from langchain_core.tools import BaseTool

    from ee_middleware.bfcl.world import execute
    from ee_middleware.records import ToolCall

    class BackendTool(BaseTool):
        def _run(self, *args: object, run_manager: object = None, **kwargs: object) -> str:
            return execute(world, ToolCall(id="", name=self.name, arguments=kwargs)).content

    return [
        BackendTool(name=s["function"]["name"], description=s["function"].get("description", ""), args_schema=s["function"]["parameters"])
        for s in schemas
    ]


def _recorded(store_path: Path) -> dict[str, tuple]:
    trajectories = LocalExperienceStore(store_path).iter_trajectories()
    return {
        t.environment["entry_id"]: (
            t.task,
            t.messages,
            t.tools,
            [s.model_dump(exclude={"trajectory_id", "latency_ms", "model_latency_ms"}) for s in t.steps],
        )
        for t in trajectories
    }


def test_tool_classes_built_once_record_the_same_trajectories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ee_middleware.bfcl.experts as experts

    ids = [e.id for e in load_entries("multi_turn_miss_func", limit=2)]
    record_experts(tmp_path / "new", "multi_turn_miss_func", ids=ids)
    monkeypatch.setattr(experts, "_langchain_tools", _per_entry_tool_classes)
    record_experts(tmp_path / "old", "multi_turn_miss_func", ids=ids)
    new, old = _recorded(tmp_path / "new"), _recorded(tmp_path / "old")
    assert sorted(new) == sorted(ids) and new == old
    assert experts._backend_tool_class() is experts._backend_tool_class()


def test_an_unknown_category_makes_no_store(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="nosuch"):
        record_experts(tmp_path / "experience", "nosuch")
    assert not (tmp_path / "experience").exists(), "a store was created for a category that does not exist"


def test_entries_whose_run_capture_could_not_store_are_failures(tmp_path: Path) -> None:
    # A full disk, a read-only store or a file-size limit: every run answered, capture could not write it, and the
    # command said "recorded 2 ... 0 failed" with exit 0. Here a real file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored so
    # that a write fails with EFBIG) lets the store's small files be made and no trajectory be written.
    import json
    import subprocess
    import sys

    store = tmp_path / "store"
    LocalExperienceStore(store)  # made before the limit
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "from ee_middleware.cli.app import main\n"
        f"sys.argv = ['ee', 'bfcl', 'record-experts', '--store', {str(store)!r}, '--limit', '2', '--json']\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    answer = json.loads(done.stdout or "null") or pytest.fail(done.stderr)
    assert answer["recorded"] == [] and len(answer["failed"]) == 2, answer
    assert all("LimitFSIZE" in reason for reason in answer["failed"].values()), answer["failed"]  # (the file-size limit advice)
    # each with its own reason (its record's size): every entry was given the last one's
    assert len(set(answer["failed"].values())) == 2, answer["failed"]
    assert LocalExperienceStore(store).trajectories().height == 0


def test_an_entry_whose_recording_was_interrupted_is_recorded_again(tmp_path: Path) -> None:
    # Ctrl-C or SIGTERM during an entry stores its run as 'interrupted' (pending); the next record-experts counted the
    # entry as recorded and skipped it for good (found by the process sweep: 199 approved experts of 200).
    store_path = tmp_path / "store"
    first = record_experts(store_path, "multi_turn_base", limit=2)
    assert len(first.recorded) == 2
    store = LocalExperienceStore(store_path)
    [done] = [t for t in store.iter_trajectories() if t.environment["entry_id"] == first.recorded[1]]
    interrupted = done.model_copy(
        update={"id": "interrupted-" + done.id, "status": "interrupted", "steps": done.steps[:1], "approval": Approval()}
    )
    third = load_entries("multi_turn_base", limit=3)[2].id
    interrupted.environment = {**done.environment, "entry_id": third}
    store.write([interrupted])
    store.close()
    again = record_experts(store_path, "multi_turn_base", limit=3)
    assert again.recorded == [third] and sorted(again.already) == sorted(first.recorded)
    # and the cut-off recording is rejected, rather than left waiting for a review for good (a sweep)
    assert again.cut_off_rejected == 1
    store = LocalExperienceStore(store_path)
    left = store.trajectories(status="pending")
    assert "interrupted-" + done.id not in left["id"].to_list()
    [rejected] = store.approvals(["interrupted-" + done.id]).to_dicts()
    assert (rejected["status"], rejected["by"]) == ("rejected", "ee bfcl record-experts")
    # an interrupted curriculum variant of a recorded entry (it copies the entry's id) is not the entry's cut-off expert
    variant = interrupted.model_copy(update={"id": "variant-" + done.id, "source": "curriculum"})
    variant.environment = {**done.environment, "entry_id": third}
    store.write([variant])
    store.close()
    assert record_experts(store_path, "multi_turn_base", limit=3).cut_off_rejected == 0
    store = LocalExperienceStore(store_path)
    assert "variant-" + done.id in store.trajectories(status="pending")["id"].to_list()
    store.close()


def test_a_second_recording_of_the_same_category_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    """Two record-experts at once each found the same entries unrecorded and recorded every one twice (a sweep: 80
    approved experts of 40, every example taught twice)."""
    import subprocess
    import sys

    from ee_middleware.bfcl.experts import ExpertsRecordingError

    store_path = tmp_path / "store"
    LocalExperienceStore(store_path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from ee_middleware.bfcl.experts import _recording_alone\n"
            "from ee_middleware.store import LocalExperienceStore\n"
            f"with _recording_alone(LocalExperienceStore({str(store_path)!r}), 'multi_turn_base'):\n"
            "    print('held', flush=True)\n"
            "    sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ExpertsRecordingError, match=r"Another process is recording the multi_turn_base experts.*pid \d+"):
            record_experts(store_path, "multi_turn_base", limit=1)
        assert len(record_experts(store_path, "multi_turn_miss_func", limit=1).recorded) == 1  # another category runs beside it
    finally:
        holder.communicate("", timeout=30)
    assert len(record_experts(store_path, "multi_turn_base", limit=1).recorded) == 1


def test_a_curriculum_variant_of_an_entry_is_not_its_expert(tmp_path: Path) -> None:
    # A curriculum trajectory copies its parent's entry id (its world): record-experts took the entry as recorded.
    from ee_middleware.replay.curriculum import CURRICULUM_SOURCE

    store_path = tmp_path / "store"
    first = record_experts(store_path, "multi_turn_base", limit=1)
    store = LocalExperienceStore(store_path)
    [expert] = list(store.iter_trajectories())
    second = load_entries("multi_turn_base", limit=2)[1].id
    variant = expert.model_copy(update={"id": "variant-" + expert.id, "source": CURRICULUM_SOURCE})
    variant.environment = {**expert.environment, "entry_id": second}
    store.write([variant])
    store.close()
    again = record_experts(store_path, "multi_turn_base", limit=2)
    assert again.recorded == [second] and again.already == first.recorded


def test_recorded_entries_and_cut_off_recordings_are_found_from_their_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Which entries a store holds experts of, and which stopped recordings to reject, are read from the trajectories'
    entry, status and source columns alone: both read the whole trajectories table, conversations included (hundreds of
    MB on a large store), on every ``ee bfcl record-experts``."""
    from ee_middleware.bfcl.experts import RecordReport, _reject_cut_off, recorded_entry_ids
    from ee_middleware.testing.store_conformance import sample_trajectory

    def expert(trajectory_id: str, entry: str, status: str) -> Any:
        update = {"app": app_name("simple_python"), "environment": {"entry_id": entry}, "status": status}
        return sample_trajectory(trajectory_id).model_copy(update=update)

    monkeypatch.setenv("EE_NEW_REDACTION_KEY", "1")  # (records written directly: no recorder made the store's key)
    store = LocalExperienceStore(tmp_path / "store")
    store.write([expert("whole", "simple_python_0", "completed"), expert("cut", "simple_python_0", "interrupted")])
    store.write([expert("other-cut", "simple_python_1", "interrupted")])

    def whole_table(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read the whole trajectories table")

    monkeypatch.setattr(store, "trajectories", whole_table)
    assert recorded_entry_ids(store, "simple_python") == {"simple_python_0"}
    report = RecordReport(category="simple_python")
    _reject_cut_off(store, "simple_python", report)
    assert report.cut_off_rejected == 1
    monkeypatch.undo()
    assert store.trajectories(status="rejected")["id"].to_list() == ["cut"]


def test_allow_partial_is_refused_saying_why(tmp_path: Path) -> None:
    """Was: with part of the store unreadable, the entries in that part were taken for not recorded and recorded again,
    approved; once the part was restored, each was taught twice."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    done = CliRunner().invoke(app, ["bfcl", "record-experts", "--store", str(tmp_path / "s"), "--limit", "1", "--allow-partial"])
    assert done.exit_code == 2, done.output
    said = " ".join(done.output.split())
    assert "it cannot tell which entries the damaged part holds" in said and "ee store repair" in said, said
    assert not (tmp_path / "s").exists()
