"""Runs recorded by a script that never calls ``flush()`` are stored when it exits (the README's example).

The recorder's tracer provider must not shut its span processor down at exit before the recorder's own exit hook
has ended the runs still being finished: those runs were lost (0 of 3 stored) while every test flushed explicitly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore

SCRIPT = textwrap.dedent(
    """
    import sys
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from opentelemetry.sdk.trace import TracerProvider
    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel

    store, offload, own_provider = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    graph = create_agent(ScriptedChatModel(script=[AIMessage(content="hello")]), [], system_prompt="Be brief.")
    options = {"tracer_provider": TracerProvider()} if own_provider else {"offload": offload}
    agent = record_experience(graph, app="exit-test", store=store, **options)
    for i in range(3):
        agent.invoke({"messages": [("user", f"question {i}")]}, {"configurable": {"thread_id": str(i)}})
    if sys.argv[4] == "raise":
        raise SystemExit("the script fails after its runs")
    """
)


@pytest.mark.parametrize(
    ("offload", "own_provider", "ending"),
    [("thread", False, "return"), ("process", False, "return"), ("thread", False, "raise"), ("thread", True, "return")],
)
def test_runs_are_stored_when_the_script_exits_without_flushing(offload: str, own_provider: bool, ending: str, tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(SCRIPT)
    store = tmp_path / "experience"
    done = subprocess.run(
        [sys.executable, str(script), str(store), offload, "1" if own_provider else "0", ending],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == (1 if ending == "raise" else 0), done.stderr
    stored = LocalExperienceStore(store).trajectories()
    assert sorted(stored["task"].to_list()) == ["question 0", "question 1", "question 2"], done.stderr


IN_FLIGHT_AT_EXIT = textwrap.dedent(
    """
    import asyncio, sys, threading
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call

    started = threading.Event()

    @tool
    async def lookup(order_id: str) -> str:
        \"\"\"Look an order up (it never answers).\"\"\"
        started.set()
        await asyncio.Event().wait()

    script = [AIMessage(content="", tool_calls=[tool_call("lookup", order_id="A-1")]), AIMessage(content="never")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [lookup]), app="exit-test", store=sys.argv[1])
    run = agent.ainvoke({"messages": [("user", "where is A-1")]}, {"configurable": {"thread_id": "in-flight"}})
    threading.Thread(target=asyncio.run, args=(run,), daemon=True).start()  # a worker thread's run, in flight at exit
    started.wait(30)
    """
)


def test_a_run_still_in_flight_at_exit_is_stored_as_interrupted(tmp_path: Path) -> None:
    """A daemon thread's run in flight when the script ends was never stored; now the exit flush ends it as
    ``interrupted`` (``terminated: the process exited``), its unanswered tool call without an observation."""
    script = tmp_path / "agent.py"
    script.write_text(IN_FLIGHT_AT_EXIT)
    store = tmp_path / "experience"
    done = subprocess.run([sys.executable, str(script), str(store)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    opened = LocalExperienceStore(store)
    [[trajectory_id, status, error]] = opened.trajectories().select("id", "status", "error").rows()
    assert (status, error) == ("interrupted", "terminated: the process exited")
    assert [(s.action.tool_call.name, s.observation) for s in opened.get(trajectory_id).steps] == [("lookup", None)]  # type: ignore[union-attr]
