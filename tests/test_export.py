"""Export to fine-tuning formats on a user's own messages: what was stored is what comes out."""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import polars as pl
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import InjectedToolCallId, tool
from langgraph.graph import START, StateGraph
from langgraph.types import Command, Send

from ee_middleware import record_experience
from ee_middleware.errors import OutputError
from ee_middleware.export import export_jsonl, export_parquet
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.store.mounts import nfs_locks_stand_in, no_locks_stand_in, open_fds


def _own_messages(store_path: Path) -> LocalExperienceStore:
    """A trajectory whose messages come from a user's own agent rather than from capture: an assistant
    message with ``content: null`` (as OpenAI sends it next to tool calls), multimodal user content, and
    tool-call arguments given as a JSON object (as Ollama's native API and hand-built records give them)."""
    t = sample_trajectory("own")
    t = t.model_copy(update={"steps": [s.model_copy(update={"tools": None}) for s in t.steps]})  # all offered the run's tools
    messages = [dict(m) for m in t.messages]
    messages[1]["content"] = None
    messages[1]["tool_calls"] = [
        {"id": "c0", "type": "function", "function": {"name": "shop.check-stock", "arguments": {"item": {"name": "pêche", "n": [1, 2]}}}}
    ]
    messages.insert(1, {"role": "user", "content": [{"type": "text", "text": "voilà 日本"}]})
    store = LocalExperienceStore(store_path)
    store.write([t.model_copy(update={"messages": messages})])
    store.approve(["own"], by="alice")
    return store


def test_parquet_export_keeps_null_content_and_object_arguments(store_path: Path, tmp_path: Path):
    store = _own_messages(store_path)
    assert export_parquet(store, tmp_path / "out.parquet") == 1
    messages = pl.read_parquet(tmp_path / "out.parquet")["messages"][0].to_list()
    assert messages[0]["content"] == "task own ✓ 日本"
    assert json.loads(messages[1]["content"]) == [{"type": "text", "text": "voilà 日本"}]
    assert "voilà 日本" in messages[1]["content"], "non-ASCII text stays readable"
    assert messages[2]["content"] is None, "a null content is null, not the string 'null'"
    arguments = messages[2]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"item": {"name": "pêche", "n": [1, 2]}}


def test_jsonl_export_writes_tool_call_arguments_as_json_text(store_path: Path, tmp_path: Path):
    store = _own_messages(store_path)
    assert export_jsonl(store, tmp_path / "out.jsonl") == 1
    (line,) = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    messages = json.loads(line)["messages"]
    assert messages[2]["content"] is None
    call = messages[2]["tool_calls"][0]["function"]
    assert isinstance(call["arguments"], str), "OpenAI's fine-tuning format takes arguments as a JSON string"
    assert json.loads(call["arguments"]) == {"item": {"name": "pêche", "n": [1, 2]}}
    assert messages[3]["tool_call_id"] == "call-0" and messages[1]["content"] == [{"type": "text", "text": "voilà 日本"}]


def test_an_output_path_inside_a_file_says_so(store_path: Path, tmp_path: Path):
    store = _own_messages(store_path)
    (tmp_path / "notes").write_text("mine")
    for export, out in ((export_jsonl, tmp_path / "notes" / "train.jsonl"), (export_parquet, tmp_path / "notes" / "sub" / "train.parquet")):
        with pytest.raises(OutputError, match=r"notes is a file, not a folder"):
            export(store, out)
    assert (tmp_path / "notes").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["experience", "notes"]


@pytest.mark.parametrize("decision", ["approve", "edit", "reject"])
def test_an_export_never_teaches_a_call_a_reviewer_rejected_or_changed(decision: str, tmp_path: Path) -> None:
    """A run paused for a human review (HumanInTheLoopMiddleware) ends on the model's proposed call, and the resumed
    run's messages hold it again before the reviewer's note. Every assistant message of both was taught by the JSONL
    export once the trajectories were approved: the call a reviewer rejected or edited (500 pears) too. Now only what
    a run decided is taught: the proposed call carries weight 0 in the paused trajectory always, and in the resumed
    one unless the reviewer approved it as made; the resumed run's own answer is taught."""
    from tests.trainers.datasets.test_reviewed_calls import _record_reviewed_run

    store_path = tmp_path / "store"
    _record_reviewed_run(store_path, decision)
    store = LocalExperienceStore(store_path)
    try:
        paused, resumed = sorted(store.iter_trajectories(status="approved"), key=lambda t: t.started_at)
        assert export_jsonl(store, tmp_path / "out.jsonl") == 2
        pq = tmp_path / "out.parquet"
        assert export_parquet(store, pq) == 2
    finally:
        store.close()
    examples = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]

    def taught(messages: list[dict]) -> list[tuple[str, ...]]:
        out = []
        for m in messages:
            if m["role"] == "assistant" and m.get("weight", 1) == 1:
                calls = m.get("tool_calls") or []
                out.append(tuple(f"{c['function']['name']}{json.loads(c['function']['arguments'])}" for c in calls) or (m["content"],))
        return out

    order = "order_item{'item': 'pear', 'quantity': 500}"
    check = "check_stock{'item': 'pear'}"
    table = pl.read_parquet(pq)
    by_id = dict(zip(table["id"].to_list(), examples, strict=True))  # both exports read the store in the same order
    assert taught(by_id[paused.id]["messages"]) == [(check,)], "the paused run teaches its stock check, never the call awaiting review"
    expected = [(order,), ("Done.",)] if decision == "approve" else [("Done.",)]
    assert taught(by_id[resumed.id]["messages"]) == expected
    for row, example in zip(table["messages"].to_list(), examples, strict=True):
        assert [m["weight"] for m in row] == [(m.get("weight", 1) if m["role"] == "assistant" else None) for m in example["messages"]], (
            "Parquet carries the same weights"
        )


def test_replies_of_earlier_runs_are_context_and_a_run_that_decided_nothing_is_left_out(tmp_path: Path) -> None:
    """A thread's second run is given the first run's conversation as history: its export taught the first run's
    replies again (once per later run of the thread). Now they carry weight 0, and a resumed run that called no model
    (it decided nothing) is left out, which `ee traces export` says."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langgraph.checkpoint.memory import InMemorySaver
    from typer.testing import CliRunner

    from ee_middleware import record_experience
    from ee_middleware.cli.app import app
    from ee_middleware.testing import ScriptedChatModel

    store_path = tmp_path / "store"
    replies = ["Hello, Ada.", "You asked about pears."]
    model = ScriptedChatModel(policy=lambda messages, tools: AIMessage(content=replies[sum(m.type == "human" for m in messages) - 1]))
    agent = record_experience(create_agent(model, [], checkpointer=InMemorySaver()), app="chat", store=store_path)
    config = {"configurable": {"thread_id": "t-1"}}
    agent.invoke({"messages": [("user", "Hi, I am Ada.")]}, config)
    agent.invoke({"messages": [("user", "What did I ask?")]}, config)
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    first, second = sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    store.write([second.model_copy(update={"id": "no-model", "steps": []})])  # as a resumed run that called no model
    store.approve([first.id, second.id, "no-model"], by="alice")
    store.close()
    result = CliRunner().invoke(app, ["traces", "export", "--store", str(store_path), "-f", "jsonl", "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Wrote 2 examples" in said and "Left out 1 that teach nothing (each: its run called no model" in said and "no-model" in said
    examples = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    weights = [[(m["content"], m.get("weight", 1)) for m in e["messages"] if m["role"] == "assistant"] for e in examples]
    assert sorted(weights, key=len) == [[("Hello, Ada.", 1)], [("Hello, Ada.", 0), ("You asked about pears.", 1)]]

    def whole_table(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read the whole trajectories table")

    # the steps each left-out run recorded are counted from that column alone, not from the whole trajectories table
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LocalExperienceStore, "trajectories", whole_table)
        again = CliRunner().invoke(
            app, ["traces", "export", "--store", str(store_path), "-f", "jsonl", "-o", str(tmp_path / "again.jsonl")]
        )
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "out.jsonl").read_text()


def test_an_assistant_message_a_tool_wrote_into_the_conversation_is_context_not_taught(tmp_path: Path) -> None:
    """A tool that hands off returns ``Command(update={"messages": [ToolMessage, AIMessage]})``: the note it writes is
    in the conversation the model sees next, but the model never wrote it (capture's steps hold no such decision), so
    neither export teaches it (weight 0); the model's own answer after it is taught."""
    from langchain.agents import create_agent
    from langchain_core.messages import ToolMessage

    @tool
    def escalate(reason: str, tool_call_id: Annotated[str, InjectedToolCallId]) -> Command:
        """Hand the conversation to a human."""
        note = AIMessage(content="[system note] A human agent has been paged.")
        return Command(update={"messages": [ToolMessage(content=f"escalated: {reason}", tool_call_id=tool_call_id), note]})

    def policy(messages: list, tools: list) -> AIMessage:
        if not any(m.type == "tool" for m in messages):
            return AIMessage(content="", tool_calls=[tool_call("escalate", reason="angry")])
        return AIMessage(content="A colleague will join shortly.")

    store_path = tmp_path / "store"
    agent = record_experience(create_agent(ScriptedChatModel(policy=policy), [escalate]), app="desk", store=store_path)
    agent.invoke({"messages": [("user", "I want a human")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    store.approve([t.id for t in store.iter_trajectories()], by="alice")
    assert export_jsonl(store, tmp_path / "out.jsonl") == 1 and export_parquet(store, tmp_path / "out.parquet") == 1
    (line,) = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    taught = {"[system note] A human agent has been paged.": 0, "A colleague will join shortly.": 1, None: 1}
    jsonl = [(m.get("content") or None, m.get("weight", 1)) for m in json.loads(line)["messages"] if m["role"] == "assistant"]
    assert jsonl == [(None, 1), ("[system note] A human agent has been paged.", 0), ("A colleague will join shortly.", 1)]
    parquet = [
        (m["content"] or None, m["weight"]) for m in pl.read_parquet(tmp_path / "out.parquet")["messages"][0] if m["role"] == "assistant"
    ]
    assert parquet == [(text, taught[text]) for text, _ in jsonl]


def _record_tools_chosen_per_call(store_path: Path) -> None:
    """A real ``create_agent`` run whose model is offered one tool per call by a ``wrap_model_call`` middleware (as
    ``LLMToolSelectorMiddleware`` narrows them): check_stock twice, then order_item, then none for the answer."""

    from langchain.agents import create_agent
    from langchain.agents.middleware import wrap_model_call

    from ee_middleware import record_experience
    from tests.capture.test_middleware_shapes import TASK, planned_model, shop_tools

    wanted = {0: "check_stock", 1: "check_stock", 2: "order_item"}

    @wrap_model_call
    def one_tool_per_turn(request: Any, handler: Any) -> Any:
        done = sum(1 for m in request.messages if m.type == "tool")
        return handler(request.override(tools=[t for t in request.tools if t.name == wanted.get(done)]))

    graph = create_agent(planned_model(), shop_tools({"pear": 0, "apple": 3}), middleware=[one_tool_per_turn])
    agent = record_experience(graph, app="shop", store=store_path)
    agent.invoke(TASK)
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    store.approve([t.id for t in store.iter_trajectories()], by="alice")
    store.close()


def _taught_with_tools(messages: list[dict], tools: list[dict]) -> list[tuple[list[str], list[str]]]:
    """(the calls or the answer an example teaches, the tool names it offers) for each taught assistant message."""
    offered = [t["function"]["name"] for t in tools]
    return [
        ([c["function"]["name"] for c in m.get("tool_calls") or []] or [m["content"]], offered)
        for m in messages
        if m["role"] == "assistant" and m.get("weight", 1) == 1
    ]


def test_jsonl_examples_offer_the_tools_each_taught_decision_was_offered(tmp_path: Path) -> None:
    """With tools chosen per model call, the JSONL export gave the whole conversation with the run's union of tools:
    every decision was taught beside tools its model call never saw (the answer, offered none, beside both). One OpenAI
    example has one tool list, so the conversation is now cut into one example per run of decisions offered the same
    tools: each teaches those decisions (earlier ones are context, weight 0) and offers exactly their tools."""
    store_path = tmp_path / "store"
    _record_tools_chosen_per_call(store_path)
    store = LocalExperienceStore(store_path)
    try:
        assert export_jsonl(store, tmp_path / "out.jsonl") == 3
        assert export_parquet(store, tmp_path / "out.parquet") == 1  # one row per trajectory, as before
    finally:
        store.close()
    examples = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    taught = [_taught_with_tools(e["messages"], e.get("tools", [])) for e in examples]
    assert taught == [
        [(["check_stock"], ["check_stock"]), (["check_stock"], ["check_stock"])],
        [(["order_item"], ["order_item"])],
        [(["No pears, 3 apples; I ordered 5 pears."], [])],
    ]
    assert "tools" not in examples[2], "a decision offered no tools: the example offers none"
    assert examples[1]["messages"][-1]["tool_calls"][0]["function"]["name"] == "order_item", "an example ends on what it teaches"
    full = examples[2]["messages"]
    assert [m["role"] for m in full].count("tool") == 3, "the last example holds the whole conversation as its context"
    rows = pl.read_parquet(tmp_path / "out.parquet")["messages"][0].to_list()
    assert [m["tools"] for m in rows if m["role"] == "assistant"] == [["check_stock"], ["check_stock"], ["order_item"], []], (
        "Parquet keeps one row per trajectory and gives each taught message the tools its decision was offered"
    )
    assert [m["tools"] for m in rows if m["role"] != "assistant"] == [None] * 4


def test_a_run_offered_the_same_tools_throughout_exports_as_before(store_path: Path, tmp_path: Path) -> None:
    """Only a run whose tools changed between decisions is cut: any other is one example with the run's tools, and its
    Parquet messages carry no per-message tools (null)."""
    store = _own_messages(store_path)
    assert export_jsonl(store, tmp_path / "out.jsonl") == 1
    assert export_parquet(store, tmp_path / "out.parquet") == 1
    (line,) = (tmp_path / "out.jsonl").read_text().splitlines()
    assert "tools" in json.loads(line)
    assert all(m["tools"] is None for m in pl.read_parquet(tmp_path / "out.parquet")["messages"][0].to_list())


def test_a_step_after_a_trimmed_history_is_exported_with_its_own_tools(tmp_path: Path) -> None:
    """A middleware that trims the history (a summarizer) gives later decisions states that are no prefix of the
    conversation: a call is still found by its id, and an answer, offered no tools, by its text (found by review: the
    answer was exported beside the run's every tool)."""
    store_path = tmp_path / "store"
    _record_tools_chosen_per_call(store_path)
    store = LocalExperienceStore(store_path)
    [trajectory] = list(store.iter_trajectories())
    trimmed = [
        s.model_copy(update={"trajectory_id": "trimmed", **({"state": s.state[-1:]} if s.index >= 2 else {})}) for s in trajectory.steps
    ]
    store.write([trajectory.model_copy(update={"id": "trimmed", "steps": trimmed})])
    store.approve(["trimmed"], by="alice")
    try:
        export_jsonl(store, tmp_path / "out.jsonl")
    finally:
        store.close()
    examples = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    mine = [_taught_with_tools(e["messages"], e.get("tools", [])) for e in examples][3:]
    assert mine == [
        [(["check_stock"], ["check_stock"]), (["check_stock"], ["check_stock"])],
        [(["order_item"], ["order_item"])],
        [(["No pears, 3 apples; I ordered 5 pears."], [])],
    ]


@pytest.mark.parametrize("later_offered", [["order"], None], ids=["some_tools", "all_tools"])
def test_answers_with_the_same_text_after_a_trimmed_history_keep_their_own_tools(tmp_path: Path, later_offered: list[str] | None) -> None:
    """Two answers with the same text ("Done.") in one conversation, each after a history a middleware trimmed: each is
    found by its text, in order. Both were taken for the last one, so the first answer was exported beside every tool
    of the run (no step found at its position) instead of the one tool its model call was offered; and a later answer
    offered every tool (``Step.tools`` None) took no reply, so the first answer's tools went to the last reply."""
    from ee_middleware.records import Action, Step, ToolCall

    t = sample_trajectory("twice")
    lookup, order = {"name": "lookup", "parameters": {"type": "object"}}, {"name": "order", "parameters": {"type": "object"}}
    call = {"type": "function"}
    messages = [
        {"role": "user", "content": "look it up"},
        {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "c1", "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "found"},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "now order it"},
        {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "c2", "function": {"name": "order", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "ordered"},
        {"role": "assistant", "content": "Done."},
    ]

    def step(index: int, state: list[dict], action: Action, tools: list[str] | None) -> Step:
        return Step(trajectory_id="twice", index=index, decision_index=index, state=state, action=action, tools=tools)

    steps = [
        step(0, messages[:1], Action(kind="tool_call", tool_call=ToolCall(id="c1", name="lookup", arguments={})), ["lookup"]),
        step(1, messages[2:3], Action(kind="answer", content="Done."), ["lookup"]),  # trimmed: no prefix of the messages
        step(2, messages[4:5], Action(kind="tool_call", tool_call=ToolCall(id="c2", name="order", arguments={})), later_offered),
        step(3, messages[6:7], Action(kind="answer", content="Done."), later_offered),
    ]
    store = LocalExperienceStore(tmp_path / "store")
    store.write([t.model_copy(update={"messages": messages, "steps": steps, "tools": [lookup, order], "final_answer": "Done."})])
    store.approve(["twice"], by="alice")
    try:
        export_parquet(store, tmp_path / "out.parquet")
    finally:
        store.close()
    rows = pl.read_parquet(tmp_path / "out.parquet")["messages"][0].to_list()
    assert [m["tools"] for m in rows if m["role"] == "assistant"] == [["lookup"], ["lookup"], later_offered, later_offered]


KILLED_EXPORT = """
import os, signal, sys
import polars as pl
from ee_middleware.export import export_jsonl, export_parquet
from ee_middleware.store import LocalExperienceStore
store, out, kind = LocalExperienceStore(sys.argv[1]), sys.argv[2], sys.argv[3]
if kind == "parquet":
    def killed(self, target, *args, **kwargs):
        target.write(b"PAR1 half")  # killed part-way through writing its temporary file (the file polars is given)
        target.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    pl.DataFrame.write_parquet = killed
    export_parquet(store, out)
else:
    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)
    import ee_middleware.export as export
    export._openai_message = killed  # after the temporary file was opened, before anything was written
    export_jsonl(store, out)
"""

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)  # an export still writing its temporary file
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_an_export_removes_what_a_killed_export_left_beside_its_output(kind: str, store_path: Path, tmp_path: Path) -> None:
    """A killed export left its temporary file (.train.jsonl.1a2b3c4d.tmp) beside the output for good. The next export to
    the same output removes it, and keeps one another export still writes (a real process holding it)."""
    import subprocess
    import sys

    _own_messages(store_path).close()
    out = tmp_path / "out" / f"train.{kind}"
    out.parent.mkdir()
    killed = subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(store_path), str(out), kind], timeout=120)
    assert killed.returncode == -9
    (left,) = out.parent.iterdir()
    assert left.name.startswith(f".train.{kind}.") and left.name.endswith(".tmp")
    busy = out.parent / f".train.{kind}.0123abcd.tmp"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(busy)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        export = export_jsonl if kind == "jsonl" else export_parquet
        assert export(LocalExperienceStore(store_path), out) == 1
        assert sorted(p.name for p in out.parent.iterdir()) == sorted([busy.name, out.name]), "the killed export's file is gone"
    finally:
        holder.communicate("", timeout=60)
    assert export(LocalExperienceStore(store_path), out) == 1  # that export gone (its process ended): its file is too
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_an_export_writes_on_a_file_system_without_locks_stand_in_no_locks(
    kind: str, store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``flock`` fails (ENOLCK: NFS without a lock daemon) the export failed ("No locks available") and leaked a
    descriptor, while the store's own writes went on unlocked. It writes now, as they do, and leaves nothing behind."""

    _own_messages(store_path).close()
    out = tmp_path / "out" / f"train.{kind}"
    out.parent.mkdir()
    no_locks_stand_in(monkeypatch, under=out.parent)  # the output's folder; the store's is a local disk
    before = open_fds(tmp_path)  # the store's folder and the output's
    export = export_jsonl if kind == "jsonl" else export_parquet
    assert export(LocalExperienceStore(store_path), out) == 1
    assert open_fds(tmp_path) == before
    assert [p.name for p in out.parent.iterdir()] == [out.name]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_on_nfs_an_export_removes_what_a_killed_export_left_stand_in_nfs_locks(
    kind: str, store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS grants an exclusive lock only on a file open for writing, and the export opened a killed export's temporary
    file read-only to lock it: the lock failed and the file was kept for good. Now it goes."""
    _own_messages(store_path).close()
    out = tmp_path / "out" / f"train.{kind}"
    out.parent.mkdir()
    left = out.parent / f".train.{kind}.1a2b3c4d.tmp"
    left.write_bytes(b"half")
    nfs_locks_stand_in(monkeypatch, under=out.parent)
    export = export_jsonl if kind == "jsonl" else export_parquet
    assert export(LocalExperienceStore(store_path), out) == 1
    assert [p.name for p in out.parent.iterdir()] == [out.name]


class _DigestState(TypedDict):
    topics: list[str]
    results: Annotated[list[str], operator.add]


def test_every_conversation_of_a_send_map_reduce_run_is_exported_and_the_split_is_said(tmp_path: Path) -> None:
    """A real StateGraph fans out with Send: each branch runs its own model and tool loop (3 conversations, 6 decisions
    in one trajectory's steps). The trajectory's messages hold the last branch's conversation only, and the JSONL export
    taught its 2 decisions in 1 example, the other 4 dropped without a word. Now each conversation is an example of its
    own (the history its last decision was given, and that decision), every decision is taught once, and on_split says
    which trajectory was split; the Parquet export keeps its one row and says which decisions it leaves out."""

    @tool
    def summarize(topic: str) -> str:
        """Summarize a topic."""
        return f"summary of {topic}"

    def policy(messages: list, tools: object) -> AIMessage:
        last = messages[-1]
        if last.type == "human":
            return AIMessage("", tool_calls=[tool_call("summarize", topic=last.content)])
        return AIMessage(f"final: {last.content}")

    llm = ScriptedChatModel(policy=policy).bind_tools([summarize])

    def work(state: dict) -> dict:
        messages = [HumanMessage(state["topic"])]
        reply = llm.invoke(messages)
        messages += [reply, *(summarize.invoke(call) for call in reply.tool_calls)]
        return {"results": [llm.invoke(messages).content]}

    graph = StateGraph(_DigestState)
    graph.add_node("work", work)
    graph.add_conditional_edges(START, lambda state: [Send("work", {"topic": t}) for t in state["topics"]], ["work"])
    store_path = tmp_path / "store"
    agent = record_experience(graph.compile(), app="digest", store=store_path)
    agent.invoke({"topics": ["cats", "dogs", "owls"], "results": []})
    agent.flush()
    store = LocalExperienceStore(store_path)
    split: list[tuple[str, str]] = []
    try:
        [trajectory] = list(store.iter_trajectories())
        assert len({s.decision_index for s in trajectory.steps}) == 6
        assert export_jsonl(store, tmp_path / "out.jsonl", status=None, on_split=lambda i, what: split.append((i, what))) == 3
        assert export_parquet(store, tmp_path / "out.parquet", status=None, on_split=lambda i, what: split.append((i, what))) == 1
    finally:
        store.close()
    examples = [json.loads(line)["messages"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    taught = sorted(
        (m["tool_calls"][0]["function"]["arguments"] if m.get("tool_calls") else m["content"])
        for e in examples
        for m in e
        if m["role"] == "assistant" and m.get("weight", 1) == 1
    )
    assert taught == sorted(
        [
            *(json.dumps({"topic": t}, separators=(",", ":")) for t in ("cats", "dogs", "owls")),
            *(f"final: summary of {t}" for t in ("cats", "dogs", "owls")),
        ]
    )
    assert sorted(e[0]["content"] for e in examples) == ["cats", "dogs", "owls"]  # each example is one branch's conversation
    for e in examples:
        topic = e[0]["content"]
        assert [m["role"] for m in e] == ["user", "assistant", "tool", "assistant"] and e[-1]["content"] == f"final: summary of {topic}"
    assert [i for i, _ in split] == [trajectory.id, trajectory.id]
    assert "3 conversations" in split[0][1] and "4 decision(s)" in split[0][1] and "2 more example(s)" in split[0][1]
    assert "not in its row's messages" in split[1][1]
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    args = ["traces", "export", "--store", str(store_path), "--format", "jsonl", "--out", str(tmp_path / "cli.jsonl"), "--status", "all"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "Wrote 3 examples" in result.output
    assert "1 trajectories hold several conversations (each conversation is an example)" in result.output
    assert f"{trajectory.id} (3 conversations in one run" in result.output


@pytest.mark.parametrize("writer", [export_jsonl, export_parquet])
def test_a_store_that_cannot_be_read_raises_the_store_s_error_not_the_output_s(writer, store_path: Path, tmp_path: Path) -> None:
    """An unreadable spool segment (here a folder where the segment was) is the store's failure, named with its file;
    the JSONL export raised OutputError 'Cannot write OUT: Is a directory' before."""
    import re

    from ee_middleware.errors import StoreError

    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("spooled")])
    store.approve(["spooled"], by="alice")
    (segment,) = [p for p in (store_path / "spool").iterdir() if p.name.endswith(".jsonl")]
    segment.unlink()
    segment.mkdir()
    out = tmp_path / "out" / "train.jsonl"
    with pytest.raises(StoreError, match=re.escape(f"Cannot read the experience store {store_path}: {segment}: Is a directory")) as raised:
        writer(store, out)
    assert not isinstance(raised.value, OutputError) and str(out) in str(raised.value)
    assert not out.exists() and not any(out.parent.glob("*"))
