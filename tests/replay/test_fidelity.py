"""Fidelity reports say where the sandbox's observation parts from the recorded one, with a short diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from ee_middleware.replay.fidelity import MAX_DIFF_LINES, MAX_LINE_CHARS, describe_mismatch, first_difference, unified_diff
from tests.replay.policies_for_tests import FixedCallsPolicy

ORDER = {
    "order_id": "#W7157189",
    "user_id": "liam_smith_2635",
    "ship_to": "489 Birch Street, Apt 4, Boise, ID, 83702",
    "status": "pending",
    "items": [{"product_id": "7389028453", "name": "Packable Rain Jacket", "quantity": 2}],
}


def test_first_difference() -> None:
    assert first_difference("abc", "abd") == 2
    assert first_difference("", "x") == 0
    assert first_difference("same", "same and more") == 4, "a prefix parts where it ends"
    assert first_difference("same", "same") == 4


def test_a_difference_deep_inside_json_is_located_and_diffed_field_by_field() -> None:
    recorded = json.dumps(ORDER)
    replayed = json.dumps({**ORDER, "status": "cancelled"})
    report = describe_mismatch(recorded, replayed)
    assert report["position"] == recorded.index('"pending"') + 1 > 70, "past the old 70-character excerpt"
    assert (report["line"], report["column"]) == (1, report["position"] + 1)
    assert (report["recorded_chars"], report["replayed_chars"]) == (len(recorded), len(replayed))
    lines = report["diff"].splitlines()
    assert lines[:2] == ["--- recorded", "+++ sandbox"] and lines[2].startswith("@@")
    assert [line for line in lines[3:] if line[:1] in "-+"] == ['- "status": "pending",', '+ "status": "cancelled",'], lines
    assert len(lines) == 7, "one line of context on each side"


def test_long_prose_is_diffed_by_clause() -> None:
    words = ", ".join(f"item {i} is fine" for i in range(40))
    recorded = f"Checked the warehouse: {words}; the parcel left Portland on Monday."
    replayed = recorded.replace("Portland", "Denver")
    report = describe_mismatch(recorded, replayed)
    changed = [line for line in report["diff"].splitlines()[3:] if line[:1] in "-+"]
    assert changed == ["-the parcel left Portland on Monday.", "+the parcel left Denver on Monday."]
    assert report["position"] == recorded.index("Portland")


def test_multiline_text_reports_line_and_column() -> None:
    recorded = "total: 3 files\nnotes.txt\nreport.pdf\n"
    replayed = "total: 3 files\nnotes.txt\nreport.docx\n"
    report = describe_mismatch(recorded, replayed)
    assert (report["line"], report["column"]) == (3, len("report.") + 1)
    assert "-report.pdf" in report["diff"] and "+report.docx" in report["diff"]


def test_a_recorded_observation_that_was_cut_compares_as_a_prefix() -> None:
    replayed = "x" * 50 + "DIFFERENT" + "y" * 500
    recorded = "x" * 50 + "SAME-ISH!"
    report = describe_mismatch(recorded, replayed, recorded_is_prefix=True)
    assert report["position"] == 50 and report["replayed_chars"] == len(replayed)
    assert "y" * 100 not in report["diff"], "only the recorded prefix's length of the sandbox's text is compared"


def test_diffs_stay_short() -> None:
    recorded = "\n".join(f"line {i}" for i in range(100))
    replayed = "\n".join(f"line {i}" if i % 3 else f"changed {i}" for i in range(100))
    diff = unified_diff(recorded, replayed).splitlines()
    assert len(diff) == MAX_DIFF_LINES and diff[-1].startswith("… ") and diff[-1].endswith("more diff lines")
    wide = unified_diff("a" * 1000, "b" * 1000).splitlines()
    assert all(len(line) <= MAX_LINE_CHARS for line in wide)


def test_differences_the_line_split_hides_still_show() -> None:
    diff = unified_diff("ok\n", "ok")  # the same lines once split: shown as Python literals
    assert "-'ok\\n'" in diff and "+'ok'" in diff


def fidelity_ref_sandbox() -> object:
    """A sandbox whose ``ref`` answers another 9-digit number than the recorded one (named by spec in the test)."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda env: {}, tools={"ref": lambda world: "123456789"})


def test_a_fidelity_diff_keeps_its_markers_under_the_stores_redaction(tmp_path: object) -> None:
    """The job's report of a mismatch is redacted as a whole by the store's rules: a diff redacted after it was made
    lost its '+' line to the phone pattern ('+123456789'). Both texts are redacted first, then compared."""
    import datetime as dt
    from pathlib import Path

    from ee_middleware.records import Trajectory
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay
    from ee_middleware.store import LocalExperienceStore

    root = Path(str(tmp_path)) / "experience"
    state = [{"role": "user", "content": "What is my reference?"}]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat()
    step = {"trajectory_id": "ref-1", "index": 0, "decision_index": 0, "state": state}
    trajectory = Trajectory.parse(
        {
            "id": "ref-1",
            "app": "refs",
            "task": "reference?",
            "tools": [{"type": "function", "function": {"name": "ref", "parameters": {"type": "object", "properties": {}}}}],
            "messages": state,
            "started_at": now,
            "ended_at": now,
            "steps": [
                {
                    **step,
                    "action": {"kind": "tool_call", "tool_call": {"id": "c1", "name": "ref", "arguments": {}}},
                    "observation": {"content": "471576218"},
                }
            ],
        }
    )
    store = LocalExperienceStore(root)
    store.write([trajectory])
    store.approve([trajectory.id], by="test")
    store.close()
    summary = run_replay(ReplayConfig.load(store=root, sandbox=f"{__name__}:fidelity_ref_sandbox", k=1))
    (example,) = summary.fidelity_examples
    assert example["diff"].splitlines()[-2:] == ["-471576218", "+123456789"], example["diff"]


def test_only_the_order_of_the_same_items_differing_is_said_with_its_likely_cause() -> None:
    from ee_middleware.replay.fidelity import KEY_ORDER_HINT, SET_ORDER_HINT, order_hint

    assert describe_mismatch("[64, 3, 4, 44, 12]", "[64, 3, 4, 12, 44]")["hint"] == SET_ORDER_HINT
    assert order_hint('{"tags": ["x", "y"], "n": 1}', '{"n": 1, "tags": ["y", "x"]}') == SET_ORDER_HINT
    assert order_hint("{64, 3, 4, 44, 12}", "{64, 3, 4, 12, 44}") == SET_ORDER_HINT, "str() of a set"
    assert order_hint("a.txt\nb.txt\nc.txt", "c.txt\na.txt\nb.txt") == SET_ORDER_HINT, "a line per item"
    assert order_hint('{"a": 1, "b": 2}', '{"b": 2, "a": 1}') == KEY_ORDER_HINT
    # more than the order differs, or words changed places within a sentence: no hint
    assert "hint" not in describe_mismatch("[1, 2, 3]", "[1, 2, 4]")
    assert order_hint("[1, 2, 3]", "[3, 2]") is None
    assert order_hint("Alice paid Bob, then left", "Bob paid Alice, then left") is None
    assert order_hint('{"a": 1}', '{"a":  1}') is None
    assert "hint" not in describe_mismatch("[3, 2, 1]", "[1, 2, 3, 4]", recorded_is_prefix=True)


def _set_add(world: dict[str, Any], n: int) -> str:
    world["s"].add(n)
    return "ok"


def _set_show(world: dict[str, Any]) -> str:
    return json.dumps(list(world["s"]))


def set_world_sandbox() -> object:
    """A PythonSandbox whose world holds a set of ints, and whose ``set_show`` lists it in its own order (spec in a test)."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda environment: {"s": set()}, tools={"set_add": _set_add, "set_show": _set_show})


class AddsNinetyNine(FixedCallsPolicy):
    """Proposes ``set_add(n=99)`` at every state: a branch the world is restored after."""

    calls: ClassVar[list[tuple[str, dict[str, Any]]]] = [("set_add", {"n": 99})]


def test_a_set_listed_in_its_own_order_after_a_restore_is_a_fidelity_error_that_names_set_order(tmp_path: Path) -> None:
    """A restore rebuilds the world's sets (a snapshot is a pickled copy), and a set's iteration order depends on its
    hash table's history, which no copy keeps: {15, 23} built by adding 15 then 23 lists [23, 15], its copy [15, 23].
    Replay cannot keep it, so the fidelity error says that only the order differs and what to do (sorted(s))."""
    import pickle

    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from typer.testing import CliRunner

    from ee_middleware import record_experience
    from ee_middleware.cli.app import app
    from ee_middleware.replay.fidelity import SET_ORDER_HINT
    from ee_middleware.replay.sandboxes.python import WorldSnapshot
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel, tool_call

    world: dict[str, Any] = {"s": set()}

    @tool("set_add")
    def set_add_tool(n: int) -> str:
        """Add a number."""
        return _set_add(world, n)

    @tool("set_show")
    def set_show_tool() -> str:
        """List the numbers."""
        return _set_show(world)

    script = [
        AIMessage(content="", tool_calls=[tool_call("set_add", n=15)]),
        AIMessage(content="", tool_calls=[tool_call("set_add", n=23)]),
        AIMessage(content="", tool_calls=[tool_call("set_show")]),
        AIMessage(content="done"),
    ]
    root = tmp_path / "experience"
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [set_add_tool, set_show_tool]), app="sets", store=root)
    agent.invoke({"messages": [("user", "add 15 and 23, then list them")]})
    agent.flush()
    agent.recorder.close()
    assert _set_show(world) == "[23, 15]"
    assert _set_show(WorldSnapshot(world).materialize()) == _set_show(pickle.loads(pickle.dumps(world))) == "[15, 23]"
    store = LocalExperienceStore(root)
    store.approve(store.trajectories()["id"].to_list(), by="test")
    store.close()

    sandbox, policy = f"{__name__}:set_world_sandbox", f"{__name__}:AddsNinetyNine"
    result = CliRunner().invoke(
        app, ["replay", "run", "--store", str(root), "--sandbox", sandbox, "--policy", policy, "--k", "1", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "fidelity error" in result.output and "(set_show)" in result.output, result.output
    assert "only the order of the same items differs: likely a set" in " ".join(result.output.split()), result.output
    records = LocalExperienceStore(root).replays()
    (mismatch,) = json.loads(records["details_json"][0])["fidelity_mismatches"]
    assert (mismatch["recorded"], mismatch["replayed"], mismatch["hint"]) == ("[23, 15]", "[15, 23]", SET_ORDER_HINT)
