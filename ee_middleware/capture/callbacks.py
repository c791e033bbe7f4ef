"""The LangChain callback handler that turns one graph run's model and tool calls into spans.

On the agent's thread it only notes the time and keeps references to the raw inputs and outputs.
The ``chat`` and ``execute_tool`` spans are created on the :class:`SpanFinisher` thread with those
exact start and end times, as children of the run's ``invoke_agent`` span (which is live, and the current span
while the graph runs where the spans reach the user's own ``tracer_provider``, so that spans the user's own code opens
nest under it there).

When capture offloads to a process (:mod:`ee_middleware.capture.offload`), the handler keeps the
run's calls (``buffered=True``) instead; they are sent to that process with the end of the run and
emitted there by :meth:`RunCapture.emit`, the same code.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import UNKNOWN_TOOL
from ee_middleware.capture.clock import now_ns
from ee_middleware.capture.direct_spans import DirectSpan, DirectTracer, RootIds
from ee_middleware.capture.payloads import captured_error, error_text, state_messages, tool_error_positions
from ee_middleware.errors import CaptureError, ConfigError, RedactFnError
from ee_middleware.messages import message_type

logger = logging.getLogger("ee_middleware.capture")

Call = tuple[str, int, int, tuple[Any, ...], Any, "BaseException | None"]
"""One finished model or tool call: (``"chat"`` or ``"tool"``, start ns, end ns, raw start data,
result (a chat call's :class:`ChatReply`, a tool's output), error)."""

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from ee_middleware.capture.payloads import FragmentCache
    from ee_middleware.capture.recorder import Recorder


class RunCapture(BaseCallbackHandler):
    """Records the model and tool calls of one agent run as children of its ``invoke_agent`` span."""

    run_inline = True
    ignore_chain = False  # the graph's own run: what it returned, whether a node was interrupted
    ignore_retriever = True
    ignore_custom_event = True

    def __init__(
        self, recorder: Recorder, trajectory_id: str, parent: Context | None, *, buffered: bool = False, tracer: Any = None
    ) -> None:
        self.recorder = recorder
        self.tracer = tracer if tracer is not None else recorder.tracer
        """What makes the run's call spans: the run's own tracer (``_Run.tracer``)."""
        self.trajectory_id = trajectory_id
        self.raise_error = recorder.strict
        self.parent_context = parent
        """The context of the run's root span (what its calls' spans start in)."""
        # run id -> (start ns, "chat" or "tool", raw start data)
        self._open: dict[UUID, tuple[int, str, tuple[Any, ...]]] = {}
        self.fragments: FragmentCache = {}  # the run's encoded messages; touched only on the finisher thread
        self.calls: list[Call] | None = [] if buffered else None  # kept for the offload process, in end order
        self._graph_run: UUID | None = None  # the first chain this handler sees: the recorded graph itself
        self.graph_output: Any = None
        """What the graph's run ended with (its final state), whichever way it was run: a stream's
        chunks need not hold it (``stream_mode="updates"`` or ``"messages"``)."""
        self.first_state: Any = None
        """The state the first of the graph's nodes given its state was given: for a resumed run, the thread's state it
        continued (what its record keeps where the graph ended with no output: a resumed stream closed early). A node a
        ``Send`` runs (``create_agent``'s tools, a map-reduce worker) is given the ``Send``'s payload, not the state, and
        is passed over; where no node was given the state, the recorder reads the thread's (``_Run.stopped_state_config``)."""
        self.interrupted = False
        """Whether a node stopped the run with ``interrupt()`` (a stream's chunks need not say so)."""
        self.awaits_calls: bool | None = None
        """Whether the run paused on tool calls (see :func:`awaits_calls`): ``interrupt()`` in a tool, or in a node given a
        state that ends on calls without their tool messages (``HumanInTheLoopMiddleware``, a review node before the
        tools); ``False`` where the node that paused was given one that does not (a review after the model answered, a
        structured-output call between); ``None`` where no node paused, or its input holds no conversation."""
        # the open chains that are LangGraph nodes (given their graph's state), with their task's checkpoint namespace
        self._node_runs: dict[UUID, str] = {}
        # the assistant messages nodes returned, by identity (the graph's state holds those objects), with the checkpoint
        # namespace of the first (innermost) node run that returned each: which node wrote the run's last message
        self._writers: dict[int, tuple[Any, str]] = {}
        self._tool_names: tuple[str, ...] | None = None  # of the tools offered at the run's last model call
        self._tools_offered: Any = None  # that call's tool list itself: a bound model passes the same list every call
        # where a graph runs inside a tool (an agent as a tool): the open chains' parents, and the open tool calls with
        # their checkpoint namespace and the key of the nested run they are in (see _nested_in)
        self._parents: dict[UUID, UUID | None] = {}
        self._chain_namespaces: dict[UUID, str] = {}  # the open chains' checkpoint namespaces (where they have one)
        self._open_tools: dict[UUID, tuple[str | None, str | None]] = {}
        self._hosts: dict[UUID, list[str]] = {}  # tool calls graphs ran inside, with the keys of those graph runs
        self._on_thread: dict[str, bool] = {}  # by key: whether that graph run is on the recorded run's thread
        self.nested_environment: Callable[[], dict[str, Any] | None] | None = None
        """Reads the environment reference again (the recorder's ``environment=`` hook, as the run started), for each graph
        run inside a tool when it starts (set by the run where it has a hook to ask)."""
        self._nested_environments: dict[str, dict[str, Any] | None] = {}  # by key: what it read when that graph run started
        self._nested_outcomes: dict[str, dict[str, str]] = {}  # by key: how that graph run ended (EE_NESTED_OUTCOMES)
        self._ended_tools: set[UUID] = set()  # tool calls that ended: a graph a tool started and left running is below one
        # where another recorded run is in flight (see _elsewhere): the open chains' inputs with the recorded run in flight
        # where each started, and the recorded graphs run as nodes of this run (its subgraphs)
        self._chains: dict[UUID, tuple[Any, RunCapture | None]] = {}
        self._subgraphs: set[RunCapture] = set()

    # --- agent thread: note times and keep references ------------------------------------------

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        running = RECORDING.get()
        if self._graph_run is None:
            self._graph_run = run_id
        else:
            parent = kwargs.get("parent_run_id")
            self._parents[run_id] = parent
            started_in = self._chains.get(parent) if parent is not None else None
            # the first chain of another recorded run (see _elsewhere): a recorded graph run as a node of this run's graph
            # (or of a subgraph of it) is given the node's own input, the graph's state, and its answer is the node's update
            if (
                started_in is not None
                and running is not None
                and running is not self
                and running is not started_in[1]
                and inputs is started_in[0]
                and (started_in[1] is self or started_in[1] in self._subgraphs)
            ):
                self._subgraphs.add(running)
        self._chains[run_id] = (inputs, running)
        metadata = kwargs.get("metadata") or {}
        namespace = metadata.get("langgraph_checkpoint_ns")
        if namespace is not None and self._open_tools:
            self._chain_namespaces[run_id] = str(namespace)
        node = metadata.get("langgraph_node")
        if node is not None and kwargs.get("name") == node:
            self._node_runs[run_id] = str(namespace or node)
            if (
                self.first_state is None
                and self._graph_run is not None
                and kwargs.get("parent_run_id") == self._graph_run
                and not is_send_target(metadata)
            ):
                self.first_state = inputs

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if self._on_thread:  # a graph run inside a tool ended: how, for its own record (not the tool's outcome)
            self._nested_ended(run_id, None)
        self._parents.pop(run_id, None)
        self._chain_namespaces.pop(run_id, None)
        self._chains.pop(run_id, None)
        task = self._node_runs.pop(run_id, None)
        if task is not None:
            for message in _written_replies(outputs):
                self._writers.setdefault(id(message), (message, task))
        if run_id == self._graph_run:
            self.graph_output = outputs

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if self._on_thread:
            self._nested_ended(run_id, error)
        self._parents.pop(run_id, None)
        self._chain_namespaces.pop(run_id, None)
        given = self._chains.pop(run_id, None)
        if is_interrupt(error):
            if run_id in self._node_runs and not self.interrupted:
                # the node that paused (the first to raise it: a subgraph's node before the subgraph's node in its parent)
                self.awaits_calls = awaits_calls(given[0] if given is not None else None)
            self.interrupted = True
        self._node_runs.pop(run_id, None)

    def _nested_ended(self, run_id: UUID, error: BaseException | None) -> None:
        """Note how the graph run inside a tool whose chain ``run_id`` is ended, where it is one (:meth:`_nested_in`):
        ``completed``, or ``error`` with its error; a pause or a cancellation is left to the tool's outcome (the tool
        paused or was cancelled with it)."""
        key = str(run_id)
        if key not in self._on_thread:
            return
        if error is None:
            self._nested_outcomes[key] = {"status": "completed"}
        elif not is_interrupt(error) and not is_cancellation(error):
            self._nested_outcomes[key] = {"status": "error", "error": f"{type(error).__name__}: {error_text(error)}"}

    def unhosted_outcomes(self) -> dict[str, dict[str, str]] | None:
        """How the graph runs inside tool calls that never ended ended themselves (for the run's root), if any did."""
        return dict(self._nested_outcomes) if self._nested_outcomes else None

    def last_reply_task(self, output: Any) -> str | None:
        """The checkpoint namespace of the LangGraph node run that wrote the last reply (an assistant message without
        tool calls) in the graph's final state ``output``, or ``None`` where no node returned that message object."""
        try:
            reply = _last_reply(state_messages(output) or ())
        except Exception:  # an output of a shape capture does not read: unknown, never the agent's error
            logger.debug("ee-middleware: could not read the last reply of a graph's output", exc_info=True)
            return None
        if reply is None:
            return None
        found = self._writers.get(id(reply))
        return found[1] if found is not None and found[0] is reply else None

    def _elsewhere(self) -> bool:
        """Whether a model or tool call made now belongs to another recorder's run, which stores it (its app, store and
        options): one in flight here (:data:`RECORDING`) that is neither this run nor a recorded graph run as a node of
        it. A sub-agent wrapped with ``record_experience`` itself, invoked in a tool or by a node's code on an input of
        its own, is such a run; a recorded graph used as a node is a subgraph of this run, whose steps are this run's too
        (the conversation it returns is the node's update), and its recorder stores its run as well."""
        running = RECORDING.get()
        return running is not None and running is not self and running not in self._subgraphs

    def _nested_in(self, parent: UUID | None, metadata: dict[str, Any] | None) -> str | None:
        """The key of the graph run inside a tool of this run that a model or tool call (child of ``parent``) belongs
        to, or None for a call of the recorded run itself. A graph invoked inside a tool (an agent as a tool) runs its
        nodes in another checkpoint namespace than the tool's (below it, or a root one of its own when invoked with a
        configuration of its own); a model the tool calls directly runs in the tool's, and is the recorded run's. Each
        graph run is one (two invocations in one tool call are two runs): its key is its own run id.
        :data:`RECORDED_ELSEWHERE` for a call below a tool call that another recorder's run made (:meth:`_elsewhere`)."""
        seen, path = 0, []
        while parent is not None and seen < 1000:  # the open chains' parents, up to the nearest open tool call
            if parent in self._ended_tools:
                self._say_detached()
                return RECORDED_ELSEWHERE  # a graph a tool started and did not wait for: not this run's (nor recorded)
            if parent in self._open_tools:
                namespace, outer = self._open_tools[parent]
                if outer == RECORDED_ELSEWHERE:
                    return RECORDED_ELSEWHERE  # its own recorder's run (its app, store and options): not this run's
                mine = (metadata or {}).get("langgraph_checkpoint_ns")
                if mine is None or namespace is None or str(mine) == namespace:
                    return outer  # in the tool's own namespace: its run's
                key = self._nested_graph(path, namespace, parent)
                if key not in self._on_thread:
                    self._hosts.setdefault(parent, []).append(key)
                    # invoked with the tool's configuration (the thread, and the tool's namespace above its own), by a
                    # tool of the recorded run or of a graph run that is itself on the thread
                    self._on_thread[key] = str(mine).startswith(f"{namespace}|") and (outer is None or self._on_thread.get(outer, False))
                    if self.nested_environment is not None:
                        self._read_nested_environment(key)
                return key
            path.append(parent)
            parent = self._parents.get(parent)
            seen += 1
        return None

    def _say_detached(self) -> None:
        if self.recorder.warned_detached_graph:
            return
        self.recorder.warned_detached_graph = True
        logger.warning(
            "ee-middleware: app %r: a tool started a graph run and returned without waiting for it (a background task): "
            "its model and tool calls after the tool returned are not recorded, in this run or as a run of its own. Await "
            "it in the tool, or record that agent with record_experience itself. (Said once.)",
            self.recorder.config.app,
        )

    def _read_nested_environment(self, key: str) -> None:
        """Ask the recorder's ``environment=`` hook again as the graph run ``key`` (inside a tool) starts: the world it
        begins in is the one the outer run's calls so far left, not the one the outer run started in. A hook that raises
        here (given the outer run's input and config, as it was when the run started) leaves it the outer run's
        environment, with a warning (once per recorder); it never fails the tool's call."""
        assert self.nested_environment is not None
        try:
            self._nested_environments[key] = self.nested_environment()
        except Exception as exc:  # the user's hook: whatever it raises, the tool's call goes on
            if self.recorder.strict:
                raise
            if not self.recorder.warned_nested_environment:
                self.recorder.warned_nested_environment = True
                # what went wrong: the hook's own exception, or (ConfigError) what its answer holds that no record can
                raised = exc.__cause__ if isinstance(exc, CaptureError) and exc.__cause__ else exc
                what = str(exc) if isinstance(exc, ConfigError) else f"the environment= hook raised {type(raised).__name__}"
                logger.warning(
                    "ee-middleware: app %r: %s when an agent run inside a tool started; that run keeps the environment of "
                    "the run whose tool ran it (its replay may then start from a world its steps did not see). (Said once.)",
                    self.recorder.config.app,
                    what,
                )

    def _nested_graph(self, path: list[UUID], namespace: str, tool: UUID) -> str:
        """The key of the graph run a call belongs to, from ``path`` (the open chains from the call up to the tool
        call ``tool`` it is below, whose checkpoint namespace is ``namespace``): the chain holding the first one, from
        the tool down, that runs in another namespace (a node of that graph; chains between the tool and the graph run
        in the tool's)."""
        for index in range(len(path) - 1, -1, -1):
            own = self._chain_namespaces.get(path[index])
            if own is not None and own != namespace:
                return str(path[index + 1]) if index + 1 < len(path) else str(path[index])
        return str(path[-1]) if path else str(tool)

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        metadata = metadata or {}
        if is_internal_call(metadata):  # a middleware's own call (a summary, a tool selection): not the agent's decision
            if metadata.get("lc_source") == "tool_emulation" and not self.recorder.warned_emulated_tools:
                self.recorder.warned_emulated_tools = True
                logger.warning(
                    "ee-middleware: app %r runs LLMToolEmulator: a model writes the result of emulated tool calls, and the "
                    "trajectory stores it as the tool's observation. Replay runs the real tools (expert steps will not match) "
                    "and datasets learn the emulated results; record runs without the emulator for training data. (Said once.)",
                    self.recorder.config.app,
                )
            return
        if self._elsewhere():  # a wrapped sub-agent's call: its recorder records it
            return
        params = kwargs.get("invocation_params") or {}
        nested = self._nested_in(kwargs.get("parent_run_id"), metadata) if self._open_tools or self._ended_tools else None
        if nested == RECORDED_ELSEWHERE:  # below a tool call of a wrapped sub-agent's (see on_tool_start)
            return
        structured = bool((kwargs.get("options") or {}).get("ls_structured_output_format"))  # with_structured_output's call
        if nested is not None:  # a graph run inside a tool: a trajectory of its own, with its own tools
            metadata = {**metadata, NESTED_IN_METADATA: nested, NESTED_ON_THREAD_METADATA: self._on_thread.get(nested, False)}
        elif not structured:  # the schema a structured call binds is the reply's form, not a tool offered to act
            self._note_tools(params.get("tools"))
        if structured:
            metadata = {**metadata, STRUCTURED_OUTPUT_METADATA: True}
        if self.calls is not None:  # kept for the capture process: only what its span reads (smaller to send)
            params = {k: params[k] for k in CHAT_PARAMS if k in params}
            metadata = {k: metadata[k] for k in CHAT_METADATA if k in metadata}
        self._open[run_id] = (now_ns(), "chat", (list(messages[0]) if messages else [], params, metadata))

    def _note_tools(self, tools: Any) -> None:
        """Say (once per recorder) when this run's model calls are offered different tools (a middleware that changes
        ``request.tools``, several agents in one graph): each step records the tools offered at it (``Step.tools``)."""
        if self.recorder.warned_tool_lists or (tools is self._tools_offered and tools is not None):
            return  # the same list object as the last call's: the same tools, nothing to compare on the agent's thread
        self._tools_offered = tools
        names = _tool_names(tools)
        before, self._tool_names = self._tool_names, names
        if before is not None and names != before:
            self.recorder.warned_tool_lists = True
            logger.warning(
                "ee-middleware: app %r offers its model different tools from one call to the next in a run (%s, then %s): a "
                "middleware that changes the tools per call (LLMToolSelectorMiddleware, a wrap_model_call setting "
                "request.tools), or several agents in one recorded graph. Each step records the tools offered at it "
                "(step.tools; the trajectory's tools are all of the run's), and dataset rows and replay offer only those. "
                "(Said once.)",
                self.recorder.config.app,
                list(before),
                list(names),
            )

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if run_id not in self._open:  # a call not recorded (a middleware's own, another recorder's)
            self._close(run_id, None, None)
            return
        reply = chat_reply(response)
        if reply.choices_dropped:
            self.recorder.processor.stats.choices_dropped += reply.choices_dropped
        self._close(run_id, reply, None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None, error)

    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, inputs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or UNKNOWN_TOOL
        metadata = kwargs.get("metadata")
        if self._elsewhere():
            nested: str | None = RECORDED_ELSEWHERE
        else:
            nested = self._nested_in(kwargs.get("parent_run_id"), metadata) if self._open_tools or self._ended_tools else None
        namespace = (metadata or {}).get("langgraph_checkpoint_ns")
        self._open_tools[run_id] = (None if namespace is None else str(namespace), nested)
        if nested == RECORDED_ELSEWHERE:  # kept open only so that the calls below it are known as that recorder's too
            return
        on_thread = self._on_thread.get(nested, False) if nested is not None else None
        self._open[run_id] = (
            now_ns(),
            "tool",
            (name, kwargs.get("tool_call_id"), inputs if inputs is not None else input_str, nested, on_thread),
        )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, output, None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        if is_interrupt(error):  # interrupt() in the tool: it has not finished (it runs again when the thread resumes)
            self._open.pop(run_id, None)
            self._end_tool(run_id)
            if not self.interrupted:
                self.awaits_calls = True  # paused in one of the calls: it and its parallel calls await it
            self.interrupted = True
            return
        if is_cancellation(error):  # cancelled with the run: no result, and the model never saw one (no observation)
            self._open.pop(run_id, None)
            self._end_tool(run_id)
            return
        self._close(run_id, None, error)

    def _end_tool(self, run_id: UUID) -> tuple[str, ...] | None:
        """Forget an open tool call; the keys of the graph runs it held (:meth:`_nested_in`), if any ran inside it."""
        self._open_tools.pop(run_id, None)
        self._ended_tools.add(run_id)
        keys = self._hosts.pop(run_id, None)
        return tuple(keys) if keys else None

    def _close(self, run_id: UUID, result: Any, error: BaseException | None) -> None:
        opened = self._open.pop(run_id, None)
        if opened is None:
            self._open_tools.pop(run_id, None)  # a call another recorder's run made (RECORDED_ELSEWHERE)
            return
        start, kind, data = opened
        if kind == "tool":
            namespace = self._open_tools.get(run_id, (None, None))[0]
            hosted = self._end_tool(run_id)
            if hosted is not None:  # (name, call id, arguments, nested in, on thread, its namespace, the keys it held, the
                read = self._nested_environments  # environments read as those graph runs started, and how they ended)
                environments = {key: read.pop(key) for key in hosted if key in read} if read else {}
                ended = self._nested_outcomes
                outcomes = {key: ended.pop(key, {"status": "detached"}) for key in hosted}
                data = (*data, namespace, hosted, environments, outcomes)
        end = now_ns()
        if self.calls is not None:
            self.calls.append((kind, start, end, data, result, error))
        else:
            self.recorder.finisher.submit(lambda: self.emit(kind, start, end, data, result, error))

    def close_open_spans(self) -> int:
        """End the calls whose end callback never came (a cancelled run): a model call as failed (it decided nothing);
        a tool call is dropped, as one cancelled with the run (:meth:`on_tool_error`): it has no result, and the model
        never saw one, so the step has no observation. Returns how many there were."""
        leftovers = list(self._open)
        cancelled = RuntimeError("cancelled: the run ended before this call finished")
        for run_id in leftovers:
            opened = self._open.get(run_id)
            if opened is not None and opened[1] == "tool":
                self._open.pop(run_id, None)
            else:
                self._close(run_id, None, cancelled)
        return len(leftovers)

    # --- finisher thread: build, encode, redact, end -------------------------------------------

    def emit(self, kind: str, start: int, end: int, data: tuple[Any, ...], result: Any, error: BaseException | None) -> None:
        """Make and end the span of one finished call (a :data:`Call`)."""
        (self._emit_chat if kind == "chat" else self._emit_tool)(start, end, data, result, error)

    def _base_attributes(self, operation: str) -> dict[str, Any]:
        return {sc.EE_RECORDER: self.recorder.id, sc.EE_TRAJECTORY_ID: self.trajectory_id, sc.OPERATION_NAME: operation}

    def _emit_chat(self, start: int, end: int, data: tuple[Any, ...], reply: ChatReply | None, error: BaseException | None) -> None:
        inputs, params, metadata = data
        if reply is not None and not isinstance(reply, ChatReply):  # a run sent by an agent process of an older version
            reply = ChatReply(list(reply))
        model = params.get("model") or params.get("model_name") or metadata.get("ls_model_name") or params.get("_type") or "unknown"
        attrs = self._base_attributes(sc.OP_CHAT)
        attrs[sc.REQUEST_MODEL] = str(model)
        attrs[sc.PROVIDER_NAME] = str(metadata.get("ls_provider") or params.get("_type") or "langchain")
        if metadata.get("langgraph_node"):
            attrs[sc.EE_LANGGRAPH_NODE] = str(metadata["langgraph_node"])
        if metadata.get("langgraph_checkpoint_ns"):
            attrs[sc.EE_LANGGRAPH_CHECKPOINT_NS] = str(metadata["langgraph_checkpoint_ns"])
        step = metadata.get("langgraph_step")
        if isinstance(step, int) and not isinstance(step, bool):
            attrs[sc.EE_LANGGRAPH_STEP] = step
        if metadata.get(NESTED_IN_METADATA):
            attrs[sc.EE_NESTED_IN] = str(metadata[NESTED_IN_METADATA])
            attrs[sc.EE_NESTED_ON_THREAD] = bool(metadata.get(NESTED_ON_THREAD_METADATA))
        if metadata.get(STRUCTURED_OUTPUT_METADATA):
            attrs[sc.EE_STRUCTURED_OUTPUT] = True
        if params.get("temperature") is not None:
            attrs[sc.REQUEST_TEMPERATURE] = float(params["temperature"])
        if reply is not None:
            if reply.response_model:
                attrs[sc.RESPONSE_MODEL] = reply.response_model
            if reply.input_tokens is not None:
                attrs[sc.USAGE_INPUT_TOKENS] = reply.input_tokens
            if reply.output_tokens is not None:
                attrs[sc.USAGE_OUTPUT_TOKENS] = reply.output_tokens
            if reply.choices_dropped:
                attrs[sc.EE_CHOICES_DROPPED] = reply.choices_dropped
        # encoded first and given to start_span: one pass over the attributes instead of two
        encoded = False
        try:
            if error is None:
                messages, reason = (reply.messages, reply.finish_reason) if reply is not None else ([], None)
                attrs.update(
                    self.recorder.encoder.chat_attributes(inputs, messages, params.get("tools"), self.fragments, finish_reason=reason)
                )
            else:
                attrs[sc.INPUT_MESSAGES] = self.recorder.encoder.messages(inputs, self.fragments)
                if errors := tool_error_positions(inputs):  # its history may be the one that holds a call's reply
                    attrs[sc.EE_TOOL_ERROR_POSITIONS] = errors
                if cut := self.recorder.encoder.cut_tool_replies(inputs, self.fragments):
                    attrs[sc.EE_TOOL_TRUNCATED] = cut
            encoded = True
        finally:  # the span is made even if encoding failed, with the attributes made so far
            self._span(f"chat {model}", SpanKind.CLIENT, attrs, start, end, error if encoded else None, None, failed=not encoded)

    def _emit_tool(self, start: int, end: int, data: tuple[Any, ...], output: Any, error: BaseException | None) -> None:
        name, call_id, arguments, nested, on_thread, *hosting = data  # for a call graphs ran inside: namespace, keys
        encoder = self.recorder.encoder
        attrs = self._base_attributes(sc.OP_EXECUTE_TOOL)
        # redacted as the chat span's messages give them (the pairing of calls and results needs both the same): raw,
        # an id made from the customer (lookup-jane@example.com) reached a user's own exporter (a privacy sweep)
        attrs[sc.TOOL_NAME] = encoder.text(str(name))
        attrs[sc.TOOL_TYPE] = "function"
        if call_id:
            attrs[sc.TOOL_CALL_ID] = encoder.text(str(call_id))
        if nested:
            attrs[sc.EE_NESTED_IN] = str(nested)
            attrs[sc.EE_NESTED_ON_THREAD] = bool(on_thread)
        if hosting:
            if hosting[0]:
                attrs[sc.EE_LANGGRAPH_CHECKPOINT_NS] = str(hosting[0])
            keys = [str(key) for key in hosting[1]]
            attrs[sc.EE_NESTED_RUN] = keys[0] if len(keys) == 1 else keys
            if hosting[2]:
                attrs[sc.EE_NESTED_ENVIRONMENTS] = encoder.encode({str(key): value for key, value in hosting[2].items()})
            attrs[sc.EE_NESTED_OUTCOMES] = encoder.encode({str(key): value for key, value in hosting[3].items()})
        encoded, status = False, None
        try:
            attrs[sc.TOOL_CALL_ARGUMENTS] = encoder.tool_arguments(arguments)
            if error is not None:
                attrs[sc.TOOL_CALL_RESULT] = encoder.text(f"{type(error).__name__}: {error_text(error)}")
            else:
                text, is_error, truncated = encoder.tool_result(output)
                attrs[sc.TOOL_CALL_RESULT] = text
                if truncated:
                    attrs[sc.EE_OBSERVATION_TRUNCATED] = truncated
                if is_error:
                    attrs[sc.ERROR_TYPE] = "tool_error"
                    status = Status(StatusCode.ERROR, text[:500])
            encoded = True
        finally:  # as for chat spans: made even if encoding failed
            self._span(f"execute_tool {name}", SpanKind.INTERNAL, attrs, start, end, error if encoded else None, status, failed=not encoded)

    def _span(
        self,
        name: str,
        kind: SpanKind,
        attrs: dict[str, Any],
        start: int,
        end: int,
        error: BaseException | None,
        status: Status | None,
        *,
        failed: bool = False,
    ) -> None:
        """Make and end one call's span: ``error`` (recorded as an exception) or else ``status`` set. ``failed``: its
        payload could not be encoded or redacted (the exception on its way up): the span is marked
        (:data:`~ee_middleware.capture.semconv.EE_CAPTURE_FAILED`), and its run is not stored as if whole."""
        if failed:
            attrs[sc.EE_CAPTURE_FAILED] = capture_failed(name.partition(" ")[0])
        span = start_recorded_span(self.recorder, self.tracer, name, self.parent_context, kind=kind, attributes=attrs, start_time=start)
        try:
            if error is not None:
                self._set_error(span, error, end)
            elif status is not None:
                span.set_status(status)
        except Exception:
            span.set_attribute(sc.EE_CAPTURE_FAILED, capture_failed(name.partition(" ")[0]))
            raise
        finally:
            span.end(end_time=end)

    def _set_error(self, span: Any, error: BaseException, at: int) -> None:
        encoder = self.recorder.encoder
        span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
        span.add_event("exception", encoder.exception_attributes(error), timestamp=at)  # (when it ended, on the run's clock)
        span.set_status(Status(StatusCode.ERROR, encoder.text(error_text(error))[:500]))


def _last_reply(messages: Any) -> Any:
    """The last assistant message without tool calls in ``messages``, read from the end (a long thread's state is not
    walked whole at every node's end); ``None`` where there is none."""
    for message in reversed(messages):
        if message_type(message) == "ai" and not getattr(message, "tool_calls", None):
            return message
    return None


def _written_replies(update: Any) -> list[Any]:
    """The assistant message objects a LangGraph node returned that could be the run's last reply: in its update (a
    mapping, a ``Command``'s ``update``, a list of them), under any key (``messages``, a custom state's own list), each
    list's last assistant message (a subgraph's node returns its whole conversation: only its end can be the last reply)."""
    update = getattr(update, "update", update) if type(update).__name__ == "Command" else update
    if isinstance(update, Mapping):
        found: list[Any] = []
        for value in update.values():
            if isinstance(value, (list, tuple)):
                for message in reversed(value):
                    if message_type(message) == "ai" and hasattr(message, "tool_calls"):
                        found.append(message)
                        break
            elif message_type(value) == "ai" and hasattr(value, "tool_calls"):
                found.append(value)
        return found
    if isinstance(update, (list, tuple)):
        return [m for item in update if isinstance(item, Mapping) or type(item).__name__ == "Command" for m in _written_replies(item)]
    return []


def awaits_calls(state: Any) -> bool | None:
    """Whether a graph state's conversation ends on tool calls that not all have their tool message (the calls of its
    last assistant message, after which only tool messages come): a run paused there waits on those calls, and has no
    answer. ``None`` for a state without a conversation."""
    messages = state_messages(state)
    if not messages:
        return None
    tail = 0
    while tail < len(messages) and message_type(messages[-1 - tail]) == "tool":
        tail += 1
    if tail == len(messages):
        return None
    calls = getattr(messages[-1 - tail], "tool_calls", None) or ()
    answered = {getattr(m, "tool_call_id", None) for m in messages[len(messages) - tail :]}
    return len(calls) > tail or any(isinstance(c, Mapping) and c.get("id") and c["id"] not in answered for c in calls)


def is_send_target(metadata: Mapping[str, Any]) -> bool:
    """Whether a LangGraph node run (its callback ``metadata``) was started by a ``Send`` (a push task: its path starts
    with ``__pregel_push``), so that its input is the ``Send``'s payload (a tool call, a map-reduce item), not the graph's
    state."""
    path = metadata.get("langgraph_path")
    return bool(path) and isinstance(path, (tuple, list)) and path[0] == "__pregel_push"


def is_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` is LangGraph's way of pausing a run for a human (``interrupt()``)."""
    return type(exc).__name__ in ("GraphInterrupt", "NodeInterrupt", "Interrupt")


CANCELLATIONS = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt)
"""What stops a run from outside it: its task cancelled (a client that disconnected, ``asyncio.wait_for``'s time-out, a
server shutting down), its stream closed before the end, Ctrl-C. The run is ``interrupted``, with the reason
(:func:`cancelled_reason`) as its error; a tool call cut off has no observation."""


def is_drain(exc: BaseException) -> bool:
    """Whether ``exc`` is LangGraph's ``GraphDrained``: the run was stopped at a step boundary by
    ``RunControl.request_drain()`` (a server shutting down on SIGTERM); its checkpoint is saved and the thread resumes
    later (``invoke(None, config)``)."""
    return type(exc).__name__ == "GraphDrained"


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` stops a run from outside it (:data:`CANCELLATIONS`, a drain: :func:`is_drain`) rather than being
    the run's own failure."""
    return isinstance(exc, CANCELLATIONS) or is_drain(exc)


def cancelled_reason(exc: BaseException) -> str:
    """Why a cancelled run stopped, as its trajectory's ``error`` says (``cancelled: CancelledError``): the exception's
    type alone, since its message is the canceller's own detail (a server's cancel scope, a task's repr); a drained run
    ``drained: REASON``, the reason its caller gave ``request_drain`` (``shutdown`` by default)."""
    if is_drain(exc):
        reason = getattr(exc, "reason", None)
        return f"drained: {reason if isinstance(reason, str) and reason else 'shutdown'}"
    return f"cancelled: {type(exc).__name__}"


INTERNAL_CALL_KEY = "lc_internal_call"
"""The metadata key LangChain's ``internal_call_metadata()`` sets on a model call that a middleware makes for itself."""
INTERNAL_CALL_SOURCES = frozenset({"summarization", "tool_selection", "tool_emulation"})
"""``lc_source`` of the middleware's own model calls in LangChain versions before ``lc_internal_call``."""


def is_internal_call(metadata: dict[str, Any]) -> bool:
    """Whether a model call is a middleware's own rather than the agent's decision: LangChain marks them
    (``SummarizationMiddleware``'s summary, ``LLMToolSelectorMiddleware``'s selection, ``LLMToolEmulator``'s
    emulated result), and so can a custom middleware, with
    ``config={"metadata": langchain.agents.middleware.internal_call_transformer.internal_call_metadata()}``.
    They are not recorded: their text is no action of the agent (a summary recorded as an answer step taught the
    model to answer with summaries), and their effect is in the next state the agent's model is given."""
    return bool(metadata.get(INTERNAL_CALL_KEY)) or metadata.get("lc_source") in INTERNAL_CALL_SOURCES


def _tool_names(tools: Any) -> tuple[str, ...]:
    """The names of a chat call's tools (OpenAI ``{"type": "function", "function": {...}}`` or flat schemas)."""
    names = []
    for tool in tools or ():
        schema = tool.get("function", tool) if isinstance(tool, dict) else tool
        names.append(str(schema.get("name") if isinstance(schema, dict) else getattr(schema, "name", schema)))
    return tuple(names)


class ChatReply(NamedTuple):
    """What a ``chat`` span records of a model call's reply (an ``LLMResult``, read by :func:`chat_reply`): the result of
    a chat :data:`Call`."""

    messages: list[Any]
    """The reply the graph went on with: the first choice's message (one, or none where the reply held no message)."""
    finish_reason: str | None = None
    """Why the model stopped, as its provider said (``length``, ``tool_calls``, ``end_turn``, ...); ``None`` where it
    did not say."""
    response_model: str | None = None
    """The model that answered, as the server named it (a router names the adapter it resolved an alias to)."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    choices_dropped: int = 0
    """The other choices of a request for several (``n`` > 1): never seen by the graph, not recorded."""


FINISH_REASON_KEYS = ("finish_reason", "stop_reason", "done_reason", "stopReason")
"""Where LangChain's chat models put the finish reason in a generation's ``generation_info`` or its message's
``response_metadata``: OpenAI's, Mistral's, Gemini's (``finish_reason``), Anthropic's (``stop_reason``), Ollama's
(``done_reason``), Bedrock Converse's (``stopReason``)."""
RESPONSE_MODEL_KEYS = ("model_name", "model", "model_id")
"""Where they name the model that answered, in ``response_metadata`` or the result's ``llm_output``."""


def chat_reply(response: Any) -> ChatReply:
    """What a model call's reply (an ``LLMResult``) records. Of several choices (a request made with ``n`` > 1: one
    generation each), only the first is the reply: ``BaseChatModel.invoke`` and ``ainvoke`` return
    ``generations[0][0]``'s message, the others never reach the graph (recorded, they were steps no tool ran and a second
    answer). The finish reason, the answering model and the usage are that choice's, else the result's ``llm_output``'s
    (``BaseChatModel`` merges ``llm_output`` into the message's ``response_metadata`` only for a single choice)."""
    generations = [g for g in (response.generations[0] if response.generations else ()) if hasattr(g, "message")]
    if not generations:
        return ChatReply([])
    chosen = generations[0]
    message = chosen.message
    info = chosen.generation_info if isinstance(chosen.generation_info, Mapping) else {}
    metadata = getattr(message, "response_metadata", None)
    metadata = metadata if isinstance(metadata, Mapping) else {}
    output = response.llm_output if isinstance(response.llm_output, Mapping) else {}
    reason = _first_text((info, metadata), FINISH_REASON_KEYS)
    model = _first_text((metadata, output), RESPONSE_MODEL_KEYS)
    usage = getattr(message, "usage_metadata", None)
    if isinstance(usage, Mapping):
        tokens = (_count(usage.get("input_tokens")), _count(usage.get("output_tokens")))
    else:
        given = output.get("token_usage") or output.get("usage")
        given = given if isinstance(given, Mapping) else {}
        tokens = (
            _count(given.get("prompt_tokens", given.get("input_tokens"))),
            _count(given.get("completion_tokens", given.get("output_tokens"))),
        )
    return ChatReply([message], reason, model, *tokens, choices_dropped=len(generations) - 1)


def _first_text(sources: tuple[Mapping[str, Any], ...], keys: tuple[str, ...]) -> str | None:
    for source in sources:
        for key in keys:
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --- one whole run ------------------------------------------------------------------------------


@dataclass(slots=True)
class RunRecord:
    """Everything a finished run's spans are made of, kept raw: what the agent's process sends to
    the offload process (pickled), or emits itself on its finisher thread (:func:`emit_run`)."""

    trajectory_id: str
    start_ns: int
    end_ns: int
    thread_id: Any
    status: str
    error: BaseException | None
    graph_input: Any
    output: Any
    environment: Any
    calls: list[Call]
    tool_lists: dict[int, list[Any]] | None = None
    """Sent to the capture process: tool lists its chat calls name by number (``params["tools"]``)
    the first time each is used; later runs send only the number (see ``ProcessOffload.send``)."""
    reason: str | None = None
    """Why an ``interrupted`` run stopped, when nobody paused it (:func:`cancelled_reason`); ``None`` for a pause."""
    awaits_calls: bool | None = None
    """Whether a paused run paused on tool calls (:attr:`RunCapture.awaits_calls`); ``None`` where no node said."""
    last_reply_task: str | None = None
    """The LangGraph node run that wrote the run's last reply (:meth:`RunCapture.last_reply_task`); ``None`` where unknown."""
    root_ids: RootIds | None = None
    """The ids of the run's root span, decided when the run started (an inner recorded run's root nested under a stand-in
    with them); ``None``: new ones when the root is made."""
    parent_resuming: bool = False
    """The run was invoked with the configuration of a graph that was resuming (:func:`parent_resuming`): it may have
    resumed with it from a checkpoint of its own (see :data:`~ee_middleware.capture.semconv.EE_PARENT_RESUMING`)."""
    nested_outcomes: dict[str, dict[str, str]] | None = None
    """How graph runs inside tool calls that never ended (cancelled with the run) ended themselves, by key (see
    :data:`~ee_middleware.capture.semconv.EE_NESTED_OUTCOMES`: a sub-agent that answered before its tool was cancelled)."""
    first_state: Any = None
    """Where ``output`` is ``None`` (the graph ended without one: a stream closed early), the state its first node was
    given (:attr:`RunCapture.first_state`), or, where no node was given it, the thread's state read from the
    checkpointer (``_Run.stopped_state_config``): a resumed run's conversation is read from it."""


def start_recorded_span(
    recorder: Recorder, tracer: Any, name: str, context: Context | None, *, kind: SpanKind, attributes: dict[str, Any], start_time: int
) -> Any:
    """A span of one of ``recorder``'s runs, made by ``tracer`` (the run's). Where that is the user's own tracer
    provider's: a span its sampler drops (a run it leaves out: ALWAYS_OFF, a ratio, an unsampled request; a call's span
    dropped by name) reaches no processor, capture's included, so it is made directly instead
    (:meth:`~ee_middleware.capture.recorder.Recorder.unsampled_tracer`; their exporters see none of it, as they chose);
    one it keeps has ``attributes`` kept whole for the processor (``keep_whole``): the provider's limits are for their
    exporters, not for capture's payloads."""
    span = tracer.start_span(name, context, kind=kind, attributes=attributes, start_time=start_time)
    if isinstance(span, DirectSpan):
        return span
    if not span.is_recording():
        return recorder.unsampled_tracer().start_span(name, context, kind=kind, attributes=attributes, start_time=start_time)
    recorder.processor.keep_whole(span, attributes)
    return span


def root_span_name(recorder: Recorder) -> str:
    """The name of a run's ``invoke_agent`` span (the OpenTelemetry GenAI convention: the operation, then the agent)."""
    return f"{sc.OP_INVOKE_AGENT} {recorder.config.app}"


def root_attributes(recorder: Recorder, trajectory_id: str, thread_id: Any) -> dict[str, Any]:
    """The attributes of a run's ``invoke_agent`` span known when it starts."""
    app = recorder.config.app
    attrs: dict[str, Any] = {
        sc.OPERATION_NAME: sc.OP_INVOKE_AGENT,
        sc.AGENT_NAME: app,
        sc.EE_APP: app,
        sc.EE_RECORDER: recorder.id,
        sc.EE_TRAJECTORY_ID: trajectory_id,
    }
    if recorder.config.app_version:
        attrs[sc.EE_APP_VERSION] = attrs[sc.AGENT_VERSION] = recorder.config.app_version
    if thread_id is not None:  # ids are often e-mails or phone numbers; pseudonyms keep threads apart
        attrs[sc.CONVERSATION_ID] = recorder.encoder.text(str(thread_id))
    return attrs


def finish_root(recorder: Recorder, span: Any, record: RunRecord, fragments: FragmentCache, end_time: int | None = None) -> None:
    """Set the outcome of a run on its ``invoke_agent`` span and end it (``fragments``: the run's
    messages, encoded by its chat spans)."""
    encoder = recorder.encoder
    try:
        attrs: dict[str, Any] = {sc.EE_STATUS: record.status}
        if record.reason is not None:
            attrs[sc.EE_STATUS_REASON] = record.reason
        attrs.update(encoder.graph_input_attributes(record.graph_input, fragments))
        resumed = resumes_from_checkpoint(record.graph_input)
        if resumed:
            attrs[sc.EE_RESUMED] = True
        elif record.parent_resuming:  # whether it resumed with that graph is read from its spans (assembler)
            attrs[sc.EE_PARENT_RESUMING] = True
        if record.status == "interrupted" and record.reason is None:
            # a pause: where no node said (a breakpoint), the state the graph stopped in tells
            awaiting = record.awaits_calls if record.awaits_calls is not None else awaits_calls(record.output)
            if awaiting is not None:
                attrs[sc.EE_AWAITS_CALLS] = awaiting
        if record.last_reply_task is not None:
            attrs[sc.EE_LAST_REPLY_TASK] = record.last_reply_task
        paused = record.status == "interrupted"
        output = record.output
        if output is None and resumed and (paused or record.status == "error"):
            # a resumed stream closed early, or a resumed run that raised: the state it continued, no outcome
            output = record.first_state
        # a resumed run's input holds no message: it gets the conversation it continued (its turn's task) as its input
        attrs.update(encoder.graph_output_attributes(output, fragments, paused=paused, resumed=resumed, answer_fields=True))
        if record.environment is not None:
            attrs[sc.EE_ENVIRONMENT] = encoder.encode(record.environment)
        if record.nested_outcomes:
            attrs[sc.EE_NESTED_OUTCOMES] = encoder.encode(record.nested_outcomes)
        span.set_attributes(attrs)
        if not isinstance(span, DirectSpan):  # (as RunCapture._span)
            recorder.processor.keep_whole(span, attrs)
        exc = record.error
        if exc is not None and record.status == "error":
            span.set_attribute(sc.ERROR_TYPE, type(exc).__qualname__)
            span.add_event("exception", encoder.exception_attributes(exc), timestamp=record.end_ns)
            span.set_status(Status(StatusCode.ERROR, encoder.text(f"{type(exc).__name__}: {error_text(exc)}")[:1000]))
    except Exception:  # its outcome is not on the span: the run must not be stored as if it were
        span.set_attribute(sc.EE_CAPTURE_FAILED, capture_failed(sc.OP_INVOKE_AGENT))
        raise
    finally:
        span.end(end_time=end_time)


def capture_failed(operation: str) -> str:
    """Why a span is marked :data:`~ee_middleware.capture.semconv.EE_CAPTURE_FAILED`, called while its exception is
    raised: what failed and the exception's type (never its message, which may quote the value a ``redact_fn`` failed on)."""
    exc = sys.exception()
    what = {sc.OP_CHAT: "a model call's messages", sc.OP_EXECUTE_TOOL: "a tool call's arguments or result"}.get(
        operation, "the run's input, output or environment"
    )
    kind = type(exc).__name__ if exc is not None else "failed"
    if isinstance(exc, RedactFnError) and exc.__cause__ is not None:
        kind += f": the redact_fn raised {type(exc.__cause__).__name__}"
    return f"{what} could not be encoded or redacted ({kind})"


def resumes_from_checkpoint(graph_input: Any) -> bool:
    """Whether a graph invoked with ``graph_input`` continues from its checkpoint rather than from new input: LangGraph
    resumes on ``None`` (after a breakpoint) and on a ``Command`` (``Command(resume=...)`` after ``interrupt()``, a
    human review)."""
    if graph_input is None:
        return True
    command = sys.modules.get("langgraph.types")
    return command is not None and isinstance(graph_input, command.Command)


LANGGRAPH_RESUMING = "__pregel_resuming"
"""The ``configurable`` key by which a LangGraph graph that resumes from its checkpoint tells the graphs run in its tasks
(LangGraph's ``CONFIG_KEY_RESUMING``): set in the configuration its nodes and tools are run with, in the step the resume
runs; a graph invoked there that has a checkpoint in its namespace resumes from it and ignores its input."""


def parent_resuming(graph_input: Any, configurable: Mapping[str, Any]) -> bool:
    """Whether a graph invoked with ``graph_input`` and the configuration in effect's ``configurable`` (its own over the
    one handed down to the tool or node running it) runs inside a graph that is resuming (:data:`LANGGRAPH_RESUMING`),
    with input of its own (a ``Command`` or ``None`` says it resumes itself: :func:`resumes_from_checkpoint`)."""
    return bool(configurable.get(LANGGRAPH_RESUMING)) and not resumes_from_checkpoint(graph_input)


def emit_run(recorder: Recorder, record: RunRecord, on_error: Any) -> None:
    """Make every span of a run recorded whole (``RunCapture(buffered=True)``): the root span, its
    calls in the order they ended, then the root's outcome. ``on_error(message, exc)`` hears of a
    call that could not be emitted (the others still are)."""
    name, attrs = root_span_name(recorder), root_attributes(recorder, record.trajectory_id, record.thread_id)
    tracer = recorder.tracer
    if record.root_ids is not None and isinstance(tracer, DirectTracer):
        span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attrs, start_time=record.start_ns, ids=record.root_ids)
    else:  # an SDK tracer (a test's tap in the capture process) picks its own ids
        span = tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attrs, start_time=record.start_ns)
    handler = RunCapture(recorder, record.trajectory_id, trace.set_span_in_context(span))
    try:
        for call in record.calls:
            try:
                handler.emit(*call)
            except Exception as exc:  # noqa: BLE001 - as the finisher does for one job
                on_error(f"could not finish a span: {exc!r}", exc)
    finally:
        finish_root(recorder, span, record, handler.fragments, end_time=record.end_ns)


RECORDING: ContextVar[RunCapture | None] = ContextVar("ee_middleware_recording", default=None)
"""The handler of the recorded run in flight in this context: set by the recorder while its graph runs
(``_Run.active``), and seen by the callbacks of every call the graph makes (LangChain and LangGraph copy the context
into the threads and tasks that run its nodes and tools). A call made in one recorded run while another recorded run is
in flight (a sub-agent wrapped with ``record_experience`` itself, invoked in a tool or by a node's code) belongs to that
run: its own recorder stores it once, and the outer run keeps its own decisions (the tool call and its result). A
recorded graph used as a node is a subgraph of the outer run: see :meth:`RunCapture._elsewhere`."""
RECORDED_ELSEWHERE = "recorded-elsewhere"
"""What :meth:`RunCapture._nested_in` says of a call below a tool call that another recorder's run made (see
:data:`RECORDING`); such a tool call is kept open, unrecorded, so that calls below it are known as that run's too."""

CHAT_PARAMS = ("model", "model_name", "_type", "temperature", "tools")
"""The invocation parameters a ``chat`` span reads (:meth:`RunCapture._emit_chat`)."""
NESTED_IN_METADATA = "ee_nested_in"
"""Put in a model call's kept metadata by :meth:`RunCapture.on_chat_model_start`: the key of the graph run inside a tool
that made it (:data:`~ee_middleware.capture.semconv.EE_NESTED_IN`)."""
NESTED_ON_THREAD_METADATA = "ee_nested_on_thread"
"""Put beside :data:`NESTED_IN_METADATA`: whether that graph run is on the recorded run's thread
(:data:`~ee_middleware.capture.semconv.EE_NESTED_ON_THREAD`)."""
STRUCTURED_OUTPUT_METADATA = "ee_structured_output"
"""Put in a model call's kept metadata by :meth:`RunCapture.on_chat_model_start` when the call asked for a structured
reply (:data:`~ee_middleware.capture.semconv.EE_STRUCTURED_OUTPUT`)."""
CHAT_METADATA = (
    "ls_model_name",
    "ls_provider",
    "langgraph_node",
    "langgraph_checkpoint_ns",
    "langgraph_step",
    NESTED_IN_METADATA,
    NESTED_ON_THREAD_METADATA,
    STRUCTURED_OUTPUT_METADATA,
)
"""The callback metadata a ``chat`` span reads."""


def sendable_calls(calls: list[Call]) -> list[Call]:
    """A buffered run's calls (already holding only what their spans read, see
    :meth:`RunCapture.on_chat_model_start`) with their errors made picklable, formatted now."""
    return [call if call[5] is None else (*call[:5], captured_error(call[5])) for call in calls]
