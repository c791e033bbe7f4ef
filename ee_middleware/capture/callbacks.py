"""The LangChain callback handler that turns one graph run's model and tool calls into spans.

On the agent's thread it only starts spans (so that timing and parentage are exact) and keeps
references to the raw inputs; everything else happens on the :class:`SpanFinisher` thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ee_middleware.capture import semconv as sc

if TYPE_CHECKING:
    from opentelemetry.context import Context

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
        self._open: dict[UUID, tuple[trace.Span, Any]] = {}
        self._base_attrs = {sc.EE_RECORDER: recorder.id, sc.EE_TRAJECTORY_ID: trajectory_id}

    # --- model calls ---------------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        params = kwargs.get("invocation_params") or {}
        metadata = metadata or {}
        model = params.get("model") or params.get("model_name") or metadata.get("ls_model_name") or params.get("_type") or "unknown"
        attrs = {
            **self._base_attrs,
            sc.OPERATION_NAME: sc.OP_CHAT,
            sc.REQUEST_MODEL: str(model),
            sc.PROVIDER_NAME: str(metadata.get("ls_provider") or params.get("_type") or "langchain"),
        }
        if metadata.get("langgraph_node"):
            attrs[sc.EE_LANGGRAPH_NODE] = str(metadata["langgraph_node"])
        if params.get("temperature") is not None:
            attrs[sc.REQUEST_TEMPERATURE] = float(params["temperature"])
        span = self.recorder.tracer.start_span(f"chat {model}", context=self._parent, kind=SpanKind.CLIENT, attributes=attrs)
        self._open[run_id] = (span, (list(messages[0]) if messages else [], params.get("tools")))

    def on_llm_end(self, response: Any, *, run_id: UUID, **kwargs: Any) -> None:
        opened = self._open.pop(run_id, None)
        if opened is None:
            return
        span, (inputs, tools) = opened
        outputs = [g.message for g in response.generations[0] if hasattr(g, "message")] if response.generations else []
        end = time.time_ns()
        encoder = self.recorder.encoder

        def finish() -> None:
            try:
                span.set_attributes(encoder.chat_attributes(inputs, outputs, tools))
            finally:
                span.end(end_time=end)

        self.recorder.finisher.submit(finish)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._fail(run_id, error)

    # --- tool calls ----------------------------------------------------------------------------

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "unknown_tool"
        attrs = {**self._base_attrs, sc.OPERATION_NAME: sc.OP_EXECUTE_TOOL, sc.TOOL_NAME: str(name), sc.TOOL_TYPE: "function"}
        call_id = kwargs.get("tool_call_id")
        if call_id:
            attrs[sc.TOOL_CALL_ID] = str(call_id)
        span = self.recorder.tracer.start_span(f"execute_tool {name}", context=self._parent, kind=SpanKind.INTERNAL, attributes=attrs)
        self._open[run_id] = (span, inputs if inputs is not None else input_str)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        opened = self._open.pop(run_id, None)
        if opened is None:
            return
        span, arguments = opened
        end = time.time_ns()
        encoder = self.recorder.encoder

        def finish() -> None:
            try:
                text, is_error, truncated = encoder.tool_result(output)
                span.set_attribute(sc.TOOL_CALL_ARGUMENTS, encoder.tool_arguments(arguments))
                span.set_attribute(sc.TOOL_CALL_RESULT, text)
                if truncated:
                    span.set_attribute(sc.EE_OBSERVATION_TRUNCATED, truncated)
                if is_error:
                    span.set_attribute(sc.ERROR_TYPE, "tool_error")
                    span.set_status(Status(StatusCode.ERROR, text[:500]))
            finally:
                span.end(end_time=end)

        self.recorder.finisher.submit(finish)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._fail(run_id, error, tool=True)

    # --- shared --------------------------------------------------------------------------------

    def _fail(self, run_id: UUID, error: BaseException, tool: bool = False) -> None:
        opened = self._open.pop(run_id, None)
        if opened is None:
            return
        span, payload = opened
        end = time.time_ns()
        encoder = self.recorder.encoder

        def finish() -> None:
            try:
                if tool:
                    span.set_attribute(sc.TOOL_CALL_ARGUMENTS, encoder.tool_arguments(payload))
                    span.set_attribute(sc.TOOL_CALL_RESULT, encoder.redactor.redact_text(f"{type(error).__name__}: {error}"))
                span.set_attribute(sc.ERROR_TYPE, type(error).__qualname__)
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, encoder.redactor.redact_text(str(error))[:500]))
            finally:
                span.end(end_time=end)

        self.recorder.finisher.submit(finish)

    def close_open_spans(self) -> Sequence[trace.Span]:
        """End spans whose end callback never came (a cancelled run); returns them."""
        leftovers = [span for span, _ in self._open.values()]
        self._open.clear()
        end = time.time_ns()
        for span in leftovers:
            self.recorder.finisher.submit(lambda s=span: (s.set_status(Status(StatusCode.ERROR, "cancelled")), s.end(end_time=end)))
        return leftovers
