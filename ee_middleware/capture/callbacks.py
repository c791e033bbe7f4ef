"""The LangChain callback handler that turns one graph run's model and tool calls into spans.

On the agent's thread it only notes the time and keeps references to the raw inputs and outputs.
The ``chat`` and ``execute_tool`` spans are created on the :class:`SpanFinisher` thread with those
exact start and end times, as children of the run's ``invoke_agent`` span (which is live, so that
spans the user's own code opens nest under it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry.trace import SpanKind, Status, StatusCode

from ee_middleware.capture import semconv as sc

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from ee_middleware.capture.payloads import FragmentCache
    from ee_middleware.capture.recorder import Recorder


class RunCapture(BaseCallbackHandler):
    """Records the model and tool calls of one agent run as children of its ``invoke_agent`` span."""

    run_inline = True
    ignore_chain = True
    ignore_retriever = True
    ignore_custom_event = True

    def __init__(self, recorder: Recorder, trajectory_id: str, parent: Context) -> None:
        self.recorder = recorder
        self.trajectory_id = trajectory_id
        self.raise_error = recorder.strict
        self._parent = parent
        # run id -> (start ns, the finisher-side emitter, raw start data)
        self._open: dict[UUID, tuple[int, Callable[..., None], tuple[Any, ...]]] = {}
        self.fragments: FragmentCache = {}  # the run's encoded messages; touched only on the finisher thread

    # --- agent thread: note times and keep references ------------------------------------------

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, metadata: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self._open[run_id] = (
            time.time_ns(),
            self._emit_chat,
            (list(messages[0]) if messages else [], kwargs.get("invocation_params") or {}, metadata or {}),
        )

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, response, None)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None, error)

    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, inputs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "unknown_tool"
        self._open[run_id] = (
            time.time_ns(),
            self._emit_tool,
            (name, kwargs.get("tool_call_id"), inputs if inputs is not None else input_str),
        )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, output, None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._close(run_id, None, error)

    def _close(self, run_id: UUID, result: Any, error: BaseException | None) -> None:
        opened = self._open.pop(run_id, None)
        if opened is None:
            return
        start, emit, data = opened
        end = time.time_ns()
        self.recorder.finisher.submit(lambda: emit(start, end, data, result, error))

    def close_open_spans(self) -> int:
        """Emit the calls whose end callback never came (a cancelled run) as failed; returns how many."""
        leftovers = list(self._open)
        cancelled = RuntimeError("cancelled: the run ended before this call finished")
        for run_id in leftovers:
            self._close(run_id, None, cancelled)
        return len(leftovers)

    # --- finisher thread: build, encode, redact, end -------------------------------------------

    def _base_attributes(self, operation: str) -> dict[str, Any]:
        return {sc.EE_RECORDER: self.recorder.id, sc.EE_TRAJECTORY_ID: self.trajectory_id, sc.OPERATION_NAME: operation}

    def _emit_chat(self, start: int, end: int, data: tuple[Any, ...], response: Any, error: BaseException | None) -> None:
        inputs, params, metadata = data
        model = params.get("model") or params.get("model_name") or metadata.get("ls_model_name") or params.get("_type") or "unknown"
        attrs = self._base_attributes(sc.OP_CHAT)
        attrs[sc.REQUEST_MODEL] = str(model)
        attrs[sc.PROVIDER_NAME] = str(metadata.get("ls_provider") or params.get("_type") or "langchain")
        if metadata.get("langgraph_node"):
            attrs[sc.EE_LANGGRAPH_NODE] = str(metadata["langgraph_node"])
        if params.get("temperature") is not None:
            attrs[sc.REQUEST_TEMPERATURE] = float(params["temperature"])
        # encoded first and given to start_span: one pass over the attributes instead of two
        encoded = False
        try:
            if error is None:
                outputs = [g.message for g in response.generations[0] if hasattr(g, "message")] if response.generations else []
                attrs.update(self.recorder.encoder.chat_attributes(inputs, outputs, params.get("tools"), self.fragments))
            else:
                attrs[sc.INPUT_MESSAGES] = self.recorder.encoder.messages(inputs, self.fragments)
            encoded = True
        finally:  # the span is made even if encoding failed, with the attributes made so far
            span = self.recorder.tracer.start_span(
                f"chat {model}", context=self._parent, kind=SpanKind.CLIENT, attributes=attrs, start_time=start
            )
            try:
                if encoded and error is not None:
                    self._set_error(span, error)
            finally:
                span.end(end_time=end)

    def _emit_tool(self, start: int, end: int, data: tuple[Any, ...], output: Any, error: BaseException | None) -> None:
        name, call_id, arguments = data
        encoder = self.recorder.encoder
        attrs = self._base_attributes(sc.OP_EXECUTE_TOOL)
        attrs[sc.TOOL_NAME] = str(name)
        attrs[sc.TOOL_TYPE] = "function"
        if call_id:
            attrs[sc.TOOL_CALL_ID] = str(call_id)
        encoded, status = False, None
        try:
            attrs[sc.TOOL_CALL_ARGUMENTS] = encoder.tool_arguments(arguments)
            if error is not None:
                attrs[sc.TOOL_CALL_RESULT] = encoder.text(f"{type(error).__name__}: {error}")
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
            span = self.recorder.tracer.start_span(
                f"execute_tool {name}", context=self._parent, kind=SpanKind.INTERNAL, attributes=attrs, start_time=start
            )
            try:
                if encoded and error is not None:
                    self._set_error(span, error)
                elif status is not None:
                    span.set_status(status)
            finally:
                span.end(end_time=end)

    def _set_error(self, span: Any, error: BaseException) -> None:
        encoder = self.recorder.encoder
        span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
        span.add_event("exception", encoder.exception_attributes(error))
        span.set_status(Status(StatusCode.ERROR, encoder.text(str(error))[:500]))
