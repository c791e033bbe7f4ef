"""Expert trajectories from BFCL: a real LangGraph agent whose chat model replays the ground truth.

For each entry a LangGraph graph is built with one tool per backend method (executing on that
entry's own world), an ``agent`` node whose scripted model emits the ground-truth calls turn by
turn, and a ``user`` node that hands the agent the next user turn. Runs are recorded through
:func:`~ee_middleware.capture.recorder.record_experience` into the store and approved
automatically, with the entry's environment reference, so the replay job can rebuild the world.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ee_middleware._locks import holder_lock
from ee_middleware.bfcl.data import ADDITIONAL_FUNCTIONS_PROMPT, BFCLEntry, load_entries
from ee_middleware.bfcl.world import World, build_world, execute, parse_call
from ee_middleware.errors import EEError
from ee_middleware.messages import message_type
from ee_middleware.records import ToolCall
from ee_middleware.store.metadata import local_folder
from ee_middleware.store.registry import trajectory_columns

EXPERT_MODEL_NAME = "bfcl-ground-truth-expert"
CLARIFY_ANSWER = "I can't complete this with the information and tools I have. Could you give me the missing details?"
DONE_ANSWER = "Done: I have completed the request."


def app_name(category: str) -> str:
    """The ``app`` under which a category's expert trajectories are stored."""
    return f"bfcl.{category}"


def _user_turn_messages(entry: BFCLEntry, turn: int) -> list[dict[str, Any]]:
    messages = entry.turns[turn]
    if not messages and turn in entry.missed_functions:
        return [{"role": "user", "content": ADDITIONAL_FUNCTIONS_PROMPT}]
    return messages


def build_expert_graph(entry: BFCLEntry) -> Any:
    """The compiled LangGraph agent for one entry (unrecorded), with a fresh world of its own."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
    from langgraph.graph import END, START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode

    from ee_middleware.scripted import ScriptedChatModel

    world = build_world(entry.initial_config, entry.involved_classes, long_context=entry.long_context)

    class State(MessagesState):
        turn: int

    def expert(messages: Sequence[Any], _tools: Sequence[Any]) -> AIMessage:
        turn = sum(1 for m in messages if message_type(m) == "human") - 1
        done = 0
        for message in reversed(messages):
            if message_type(message) == "human":
                break
            done += message_type(message) == "tool"
        calls = entry.ground_truth[turn] if 0 <= turn < len(entry.ground_truth) else []
        if done < len(calls):
            call = parse_call(calls[done], world, call_id=f"call_{turn}_{done}")
            return AIMessage(content="", tool_calls=[{"name": call.name, "args": call.arguments, "id": call.id, "type": "tool_call"}])
        return AIMessage(content=DONE_ANSWER if calls else CLARIFY_ANSWER)

    model = ScriptedChatModel(policy=expert, model_name=EXPERT_MODEL_NAME)
    built: dict[str, Any] = {}
    tools_by_turn = [_langchain_tools(entry.tools_at_turn(t), world, built) for t in range(len(entry.turns))]
    all_tools = {tool.name: tool for tools in tools_by_turn for tool in tools}

    def agent(state: Any) -> dict[str, Any]:
        reply = model.bind_tools(tools_by_turn[state["turn"]]).invoke(state["messages"])
        return {"messages": [reply]}

    def route(state: Any) -> str:
        last = state["messages"][-1]
        if getattr(last, "tool_calls", None):
            return "tools"
        return "user" if state["turn"] + 1 < len(entry.turns) else END

    def user(state: Any) -> dict[str, Any]:
        turn = state["turn"] + 1
        return {"turn": turn, "messages": [_to_langchain(m, HumanMessage, SystemMessage) for m in _user_turn_messages(entry, turn)]}

    graph = StateGraph(State)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(list(all_tools.values())))
    graph.add_node("user", user)
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", route, ["tools", "user", END])
    graph.add_edge("tools", "agent")
    graph.add_edge("user", "agent")
    return graph.compile()


def _to_langchain(message: dict[str, Any], human: type, system: type) -> Any:
    return (system if message.get("role") == "system" else human)(content=message.get("content", ""))


def _langchain_tools(schemas: list[dict[str, Any]], world: World, built: dict[str, Any] | None = None) -> list[Any]:
    """One LangChain tool per schema, executing on ``world``; ``built`` (name -> tool) reuses tools across turns."""
    cls = _backend_tool_class()
    tools = []
    for schema in schemas:
        fn = schema["function"]
        tool = built.get(fn["name"]) if built is not None else None
        if tool is None or tool.args_schema != fn["parameters"] or tool.description != fn.get("description", ""):
            tool = cls(name=fn["name"], description=fn.get("description", ""), args_schema=fn["parameters"])
            tool._world = world
            if built is not None:
                built[fn["name"]] = tool
        tools.append(tool)
    return tools


_BACKEND_TOOL: list[type] = []


def _backend_tool_class() -> type:
    """The LangChain tool class for BFCL backend methods, built once (a pydantic model class costs milliseconds)."""
    if not _BACKEND_TOOL:
        from langchain_core.tools import BaseTool
        from pydantic import PrivateAttr

        class BackendTool(BaseTool):
            """One BFCL backend method, executed on the entry's world exactly as the replay sandbox executes it."""

            _world: Any = PrivateAttr(default=None)

            def _run(self, *args: Any, run_manager: Any = None, **kwargs: Any) -> str:
                return execute(self._world, ToolCall(id="", name=self.name, arguments=kwargs)).content

        _BACKEND_TOOL.append(BackendTool)
    return _BACKEND_TOOL[0]


@dataclass
class RecordReport:
    """What :func:`record_experts` did."""

    category: str
    recorded: list[str] = field(default_factory=list)
    """Entry ids recorded in this call."""
    already: list[str] = field(default_factory=list)
    """Entry ids found in the store already (not recorded again)."""
    failed: dict[str, str] = field(default_factory=dict)
    """Entry id -> what went wrong."""
    cut_off_rejected: int = 0
    """Trajectories a stopped recording had left (``interrupted``, pending) of entries now recorded whole, rejected."""


def recorded_entry_ids(store: Any, category: str) -> set[str]:
    """Entry ids of the category's expert trajectories already in ``store`` that completed: a recording that was
    interrupted (Ctrl-C, SIGTERM) or failed is not one, and the entry is recorded again."""
    import json

    import polars as pl

    from ee_middleware.replay.curriculum import CURRICULUM_SOURCE

    completed = pl.col("environment_json").is_not_null() & (pl.col("status") == "completed")
    # (a curriculum variant copies its parent's entry id: it is not the entry's expert)
    columns = trajectory_columns(store, ["environment_json", "status", "source"], app=app_name(category))  # (not the conversations)
    frame = columns.filter(completed & (pl.col("source").fill_null("") != CURRICULUM_SOURCE))
    return {json.loads(env).get("entry_id") for env in frame["environment_json"].to_list()}


def record_experts(
    store: str | os.PathLike[str] | Any,
    category: str = "multi_turn_base",
    *,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    report: RecordReport | None = None,
) -> RecordReport:
    """Run the ground-truth expert on BFCL entries and record approved trajectories into ``store``.

    Idempotent: entries already recorded for the category are left alone. ``report`` is the record to fill in (a new
    one when None): a caller that gives its own still holds what was recorded when the run is stopped part way.
    """
    from ee_middleware.store.registry import open_store

    entries = load_entries(category, limit=limit, ids=ids)  # an unknown category fails before the store is made
    store_obj = open_store(store)
    report = RecordReport(category=category) if report is None else report
    with _recording_alone(store_obj, category):
        _record(store_obj, category, entries, progress, report)
        _reject_cut_off(store_obj, category, report)
    return report


class ExpertsRecordingError(EEError):
    """Another process records the same category's experts into the store now."""


@contextmanager
def _recording_alone(store: Any, category: str) -> Iterator[None]:
    """Hold the store's lock for recording ``category``'s experts (a file in a local store's folder) for the block; raise
    :class:`ExpertsRecordingError` at once where another process holds it: both would find the same entries not yet
    recorded and record each twice (every expert example then taught twice). A plug-in's store is not locked."""
    folder = local_folder(store)
    if folder is None or not folder.is_dir():
        yield
        return
    lock = folder / f"record-experts-{hashlib.sha256(category.encode()).hexdigest()[:16]}.lock"

    def busy(holder: str) -> ExpertsRecordingError:
        return ExpertsRecordingError(
            f"Another process is recording the {category} experts into {folder} ({holder}): both would record the same "
            "entries, each twice. Wait for it to end, or stop that process (the lock is released when it exits, even if "
            "it is killed); then run this again: it records only what is not stored yet."
        )

    with holder_lock(lock, busy, doing=f"ee bfcl record-experts {category}", remove=True):
        yield


def _reject_cut_off(store: Any, category: str, report: RecordReport) -> None:
    """Reject the category's expert trajectories a stopped recording left (``interrupted``, pending review) whose entry
    is now recorded whole: nobody reviews them, and they would wait in the review queue for good."""
    import json

    import polars as pl

    from ee_middleware.replay.curriculum import CURRICULUM_SOURCE

    done = recorded_entry_ids(store, category)
    frame = trajectory_columns(store, ["id", "environment_json", "status", "source"], app=app_name(category), status="pending").filter(
        (pl.col("status") == "interrupted")
        & pl.col("environment_json").is_not_null()
        & (pl.col("source").fill_null("") != CURRICULUM_SOURCE)  # (a variant copies its parent's entry id)
    )
    cut_off = [row["id"] for row in frame.iter_rows(named=True) if json.loads(row["environment_json"]).get("entry_id") in done]
    if cut_off:
        store.reject(cut_off, by=EXPERTS_REVIEWER, reason="a recording that was stopped; the entry was recorded again whole")
        report.cut_off_rejected = len(cut_off)


EXPERTS_REVIEWER = "ee bfcl record-experts"
"""Who rejects the recordings a stopped ``record-experts`` left (:func:`_reject_cut_off`)."""


def _record(
    store_obj: Any, category: str, entries: list[BFCLEntry], progress: Callable[[int, int], None] | None, report: RecordReport
) -> RecordReport:
    from ee_middleware.capture.recorder import record_experience

    done_before = recorded_entry_ids(store_obj, category)

    # Benchmark data holds no secrets, and redaction would alter arguments (passwords are part of
    # the tasks), which would break the exact re-execution that replay relies on.
    recorded_graph = record_experience(
        build_expert_graph,
        app=app_name(category),
        app_version="bfcl-eval",
        store=store_obj,
        approve_if=lambda t: t.status == "completed",
        redact=False,
    )
    if progress is not None:  # the total from the start: a stop before the first entry ends says "0 of N"
        progress(0, len(entries))
    for i, entry in enumerate(entries):
        if entry.id in done_before:
            report.already.append(entry.id)
        else:
            try:
                graph = recorded_graph(entry)
                # a category with held-out functions offers them from their turn on, as the task means to: capture's
                # warning about tools that change from one call to the next (a middleware, several agents) is not for it
                graph.recorder.warned_tool_lists = True
                first = [_to_openai_user(m) for m in _user_turn_messages(entry, 0)]
                failed_before = graph.recorder.stats.runs_failed
                graph.invoke(
                    {"messages": first, "turn": 0},
                    config={"recursion_limit": 200, "configurable": {"thread_id": entry.id, "ee_environment": entry.environment}},
                )
                # written before the next entry, so that a run capture could not store is told by its own reason (all
                # of them were given the last one's: the record sizes of a file-size limit, say)
                why = _not_stored(graph, failed_before)
                if why is None:
                    report.recorded.append(entry.id)
                else:
                    report.failed[entry.id] = why
            except Exception as exc:  # noqa: BLE001 - one bad entry must not stop the others
                report.failed[entry.id] = f"{type(exc).__name__}: {exc}"
        if progress is not None:
            progress(i + 1, len(entries))
    if report.recorded:
        _keep_only_stored(report, graph, store_obj, category)
    return report


def _not_stored(graph: Any, failed_before: int) -> str | None:
    """Why capture did not store the run just recorded (``failed_before``: its ``runs_failed`` before the run), or
    ``None`` when nothing failed; :func:`_keep_only_stored` checks the store itself once every entry is recorded."""
    from ee_middleware.errors import CaptureError

    try:
        graph.flush()
    except CaptureError as exc:  # strict capture (EE_CAPTURE_STRICT) raises what it could not write
        return f"capture did not store its run: {exc}"
    stats = graph.recorder.stats
    if stats.runs_failed > failed_before:
        return f"capture did not store its run: {stats.errors[-1] if stats.errors else 'no error was reported'}"
    return None


def _keep_only_stored(report: RecordReport, graph: Any, store: Any, category: str) -> None:
    """Move the entries whose run capture could not write (a full disk, a read-only store, a file-size limit) from
    ``recorded`` to ``failed``, with capture's own reason: a run that answered is not yet a stored trajectory."""
    from ee_middleware.errors import CaptureError

    try:
        finished, failure = graph.flush(), None
    except CaptureError as exc:  # strict capture (EE_CAPTURE_STRICT) raises what it could not write
        finished, failure = True, str(exc)
    stored = recorded_entry_ids(store, category)
    lost = [entry_id for entry_id in report.recorded if entry_id not in stored]
    if not lost:
        return
    errors = graph.recorder.stats.errors
    if errors or failure:
        reason = f"capture did not store its run: {errors[-1] if errors else failure}"
    elif not finished:
        reason = "capture did not finish writing its run within 30 s"
    else:
        reason = "capture did not store its run (no error was reported)"
    report.recorded = [entry_id for entry_id in report.recorded if entry_id in stored]
    report.failed.update(dict.fromkeys(lost, reason))


def _to_openai_user(message: dict[str, Any]) -> tuple[str, str]:
    return ("system" if message.get("role") == "system" else "user", message.get("content", ""))
