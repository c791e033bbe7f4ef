"""Fidelity reports of observations nested deeper than Python recurses: a tool returning a tree, a recursive config or
a buggy tool's output thousands of levels deep gets a report like any other, never a ``RecursionError``."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from ee_middleware.replay import fidelity
from ee_middleware.replay.fidelity import KEY_ORDER_HINT, SET_ORDER_HINT, describe_mismatch, order_hint, unified_diff

DEPTH = 2_000  # past json's and this module's recursion at the default limit (1000)


def _nested_text(depth: int, leaf: str, *, tag_first: bool = True) -> str:
    """A JSON text of objects nested ``depth`` levels deep, each with a tag ``"a"`` and a list ``"z"`` holding the next
    level (the tag written after the list where not ``tag_first``), ``leaf`` in the innermost list."""
    if tag_first:
        return "".join(f'{{"a": "a{n}", "z": [' for n in range(depth)) + leaf + "]}" * depth
    return '{"z": [' * depth + leaf + "".join(f'], "a": "a{n}"}}' for n in reversed(range(depth)))


def _deep_object(depth: int, leaf: Any) -> Any:
    value = leaf
    for n in reversed(range(depth)):
        value = {"a": f"a{n}", "z": [value]}
    return value


def _with_recursion(work: Any, *args: Any) -> Any:
    """``work(*args)`` with the recursion limit raised: json's own functions as the reference for deep documents."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(50_000)
    try:
        return work(*args)
    finally:
        sys.setrecursionlimit(limit)


def test_the_texts_are_past_the_default_recursion_limit() -> None:
    """The premise: ``json.loads`` itself gives up on these texts."""
    assert sys.getrecursionlimit() < DEPTH
    with pytest.raises(RecursionError):
        json.loads(_nested_text(DEPTH, "1"))


def test_a_mismatch_deep_inside_a_document_nested_2000_levels_is_described_with_the_value_that_changed() -> None:
    recorded, replayed = _nested_text(DEPTH, '"in stock"'), _nested_text(DEPTH, '"sold out"')
    report = describe_mismatch(recorded, replayed)
    assert report["position"] == recorded.index('"in stock"') + 1
    assert (report["line"], report["column"]) == (1, report["position"] + 1)
    diff = report["diff"].splitlines()
    pad = " " * fidelity.MAX_INDENT
    assert diff[:2] == ["--- recorded", "+++ sandbox"]
    assert diff[3:] == [f' {pad}"z": [', f'-{pad}"in stock"', f'+{pad}"sold out"', f" {pad}]"], diff
    assert all(len(line) <= fidelity.MAX_LINE_CHARS for line in diff)
    assert "hint" not in report


def test_the_diff_of_a_deep_document_shows_the_field_that_changed_with_its_key() -> None:
    recorded = _deep_object(DEPTH, {"status": "ok", "qty": 3})
    replayed = _deep_object(DEPTH, {"status": "ok", "qty": 4})
    recorded_text, replayed_text = _with_recursion(json.dumps, recorded), _with_recursion(json.dumps, replayed)
    parsed = fidelity._json_document(recorded_text)  # at the default recursion limit
    assert _with_recursion(lambda: parsed == recorded)

    def pad(level: int) -> str:
        return " " * min(level, fidelity.MAX_INDENT)

    # json.dumps(indent=1)'s lines (its indenting encoder takes seconds at this depth), indented at most MAX_INDENT
    expected = [line for n in range(DEPTH) for line in (pad(2 * n) + "{", f'{pad(2 * n + 1)}"a": "a{n}",', pad(2 * n + 1) + '"z": [')]
    leaf = 2 * DEPTH
    expected += [pad(leaf) + "{", pad(leaf + 1) + '"status": "ok",', pad(leaf + 1) + '"qty": 3', pad(leaf) + "}"]
    expected += [line for n in reversed(range(DEPTH)) for line in (pad(2 * n + 1) + "]", pad(2 * n) + "}")]
    assert fidelity._diff_lines(recorded_text) == expected
    shallow = _deep_object(20, {"status": "ok"})  # json.dumps's own lines where it can write them
    assert fidelity._diff_lines(json.dumps(shallow)) == json.dumps(shallow, indent=1, ensure_ascii=False).splitlines()
    diff = unified_diff(recorded_text, replayed_text).splitlines()
    assert f'-{" " * fidelity.MAX_INDENT}"qty": 3' in diff and f'+{" " * fidelity.MAX_INDENT}"qty": 4' in diff, diff


def test_order_hints_on_documents_nested_2000_levels() -> None:
    recorded = _nested_text(DEPTH, "[1, 2, 3]")
    assert order_hint(recorded, _nested_text(DEPTH, "[3, 1, 2]")) == SET_ORDER_HINT
    assert order_hint(recorded, _nested_text(DEPTH, "[3, 1, 4]")) is None
    reordered_keys = _nested_text(DEPTH, "[1, 2, 3]", tag_first=False)
    assert order_hint(recorded, reordered_keys) == KEY_ORDER_HINT
    assert describe_mismatch(recorded, reordered_keys)["hint"] == KEY_ORDER_HINT


@pytest.mark.parametrize("depth", [995, 10_000, pytest.param(100_000, marks=pytest.mark.heavy)])
def test_lists_nested_at_any_depth_are_described(depth: int) -> None:
    recorded, replayed = "[" * depth + "1" + "]" * depth, "[" * depth + "2" + "]" * depth
    report = describe_mismatch(recorded, replayed, recorded_is_prefix=False)
    assert report["position"] == depth
    assert f"-{' ' * fidelity.MAX_INDENT}1" in report["diff"].splitlines()
    cut = describe_mismatch(recorded, replayed[: depth + 5], recorded_is_prefix=True)  # a cut text is not JSON
    assert cut["position"] == depth


def test_a_deep_text_that_is_not_json_is_compared_as_text() -> None:
    recorded, broken = "[" * DEPTH + "1," + "]" * DEPTH, "[" * DEPTH + "2," + "]" * DEPTH
    assert fidelity._json_document(recorded) is None
    report = describe_mismatch(recorded, broken)
    assert report["position"] == DEPTH
    assert report["diff"].splitlines()[2:] == [
        "@@ -1 +1 @@",
        "-" + recorded[: fidelity.MAX_LINE_CHARS - 2] + "…",
        "+" + broken[: fidelity.MAX_LINE_CHARS - 2] + "…",
    ]


# --- end to end: recorded by a real agent, replayed by `ee replay run`, built by `ee datasets build` ------------------

WIDTH = 1_000_000


def _tree_text(leaf: str) -> str:
    return _nested_text(DEPTH, json.dumps(leaf))


def _listing_text(changed_at: int | None) -> str:
    return "[" + ", ".join(str(-1 if i == changed_at else i % 1000) for i in range(WIDTH)) + "]"


def _sandbox_tree(world: dict[str, Any], depth: int) -> str:
    """Whatever depth is asked, the sandbox's tree is DEPTH levels deep, its leaf not production's."""
    return _tree_text("sandbox leaf")


def _sandbox_tree_as_objects(world: dict[str, Any], depth: int) -> Any:
    """The tree as Python dicts and lists, which neither ``json.dumps`` nor ``str`` can write at this depth."""
    return _deep_object(DEPTH, "sandbox leaf")


def _sandbox_listing(world: dict[str, Any], width: int) -> str:
    return _listing_text(changed_at=100)


def deep_sandbox() -> object:
    """A PythonSandbox whose tools answer with a tree nested DEPTH levels deep and a listing of WIDTH items."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda environment: {}, tools={"tree": _sandbox_tree, "listing": _sandbox_listing})


def deep_objects_sandbox() -> object:
    """As :func:`deep_sandbox`, its tree given as Python objects."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(lambda environment: {}, tools={"tree": _sandbox_tree_as_objects, "listing": _sandbox_listing})


def _record(root: Any, name: str, arguments: dict[str, Any]) -> str:
    """One run of a real create_agent graph calling ``name`` once (production's tools answer unchanged), approved."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool("tree")
    def tree_tool(depth: int) -> str:
        """A tree as JSON."""
        return _tree_text("production leaf")

    @tool("listing")
    def listing_tool(width: int) -> str:
        """A listing as JSON."""
        return _listing_text(changed_at=None)

    script = [AIMessage(content="", tool_calls=[tool_call(name, **arguments)]), AIMessage(content="done")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [tree_tool, listing_tool]), app="deep", store=root)
    agent.invoke({"messages": [("user", "show it")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(root)
    try:
        (trajectory_id,) = store.trajectories()["id"].to_list()
        store.approve([trajectory_id], by="test")
    finally:
        store.close()
    return trajectory_id


def _replay_and_build(root: Any, out: Any, sandbox: str, *extra: str) -> tuple[Any, Any]:
    """``ee replay run`` with the mutation policy, then ``ee datasets build`` using the rollouts of replays that found
    fidelity mismatches; both must succeed. Returns the store's replays and rollouts."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.store import LocalExperienceStore

    args = ["replay", "run", "--store", str(root), "--sandbox", sandbox, "--policy", "mutate", "--k", "2", "--no-progress"]
    result = CliRunner().invoke(app, [*args, *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    store = LocalExperienceStore(root)
    replays, rollouts = store.replays(), store.rollouts()
    store.close()
    assert rollouts.height == 2 and replays["branches"].to_list() == [2]
    built = CliRunner().invoke(app, ["datasets", "build", "--store", str(root), "-o", str(out), "--include-fidelity-mismatches"])
    assert built.exit_code == 0, (built.output, built.exception)
    import polars as pl

    assert pl.read_parquet(out / "iwm.parquet").height == 3  # the expert's step and both branches
    return replays, rollouts


def test_a_replay_of_a_tool_that_answers_json_nested_2000_levels_completes_and_builds(tmp_path: Any) -> None:
    """Before, the fidelity report's json.loads raised RecursionError and the trajectory failed (exit 1, no rollouts)."""
    root = tmp_path / "experience"
    _record(root, "tree", {"depth": DEPTH})
    replays, rollouts = _replay_and_build(root, tmp_path / "datasets", f"{__name__}:deep_sandbox")
    (mismatch,) = json.loads(replays["details_json"][0])["fidelity_mismatches"]
    pad = " " * fidelity.MAX_INDENT
    assert f'-{pad}"production leaf"' in mismatch["diff"] and f'+{pad}"sandbox leaf"' in mismatch["diff"], mismatch
    trees = rollouts.filter(rollouts["tool_name"] == "tree")
    assert trees.height and trees["observation"].to_list() == [_tree_text("sandbox leaf")] * trees.height, trees


def test_a_replay_of_a_tool_that_returns_objects_nested_2000_levels_stores_its_failure_as_an_error_observation(tmp_path: Any) -> None:
    """A dict nested deeper than ``json.dumps`` and ``str`` recurse cannot be written as the observation (LangChain's tool
    raises too): before, the sandbox's RecursionError failed the trajectory; now it is the tool's error observation."""
    root = tmp_path / "experience"
    _record(root, "tree", {"depth": DEPTH})
    replays, rollouts = _replay_and_build(root, tmp_path / "datasets", f"{__name__}:deep_objects_sandbox")
    (mismatch,) = json.loads(replays["details_json"][0])["fidelity_mismatches"]
    assert mismatch["replayed"].startswith("Error: RecursionError"), mismatch
    trees = rollouts.filter(rollouts["tool_name"] == "tree")
    assert all(text.startswith("Error: RecursionError") for text in trees["observation"].to_list())
    assert all(trees["is_error"].to_list())


@pytest.mark.heavy
def test_a_replay_of_a_tool_that_answers_a_json_list_of_a_million_items_completes_and_builds(tmp_path: Any, monkeypatch) -> None:
    """Not cut when recorded or replayed (limits raised): the 4.9 MB list goes through capture, the fidelity report,
    the store and the dataset build whole."""
    monkeypatch.setenv("EE_MAX_OBSERVATION_CHARS", "20000000")
    root = tmp_path / "experience"
    _record(root, "listing", {"width": WIDTH})
    config = tmp_path / "replay.toml"
    config.write_text("[replay]\nmax_observation_chars = 20000000\n")
    replays, _ = _replay_and_build(root, tmp_path / "datasets", f"{__name__}:deep_sandbox", "--config", str(config))
    (mismatch,) = json.loads(replays["details_json"][0])["fidelity_mismatches"]
    assert "- 100," in mismatch["diff"] and "+ -1," in mismatch["diff"], mismatch
