"""Span names and attribute keys: the OpenTelemetry GenAI semantic conventions plus our ``ee.*``.

Kept as plain strings (the GenAI conventions are still "Development" upstream and the incubating
module of ``opentelemetry-semantic-conventions`` moves between releases).
"""

from __future__ import annotations

OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
AGENT_NAME = "gen_ai.agent.name"
AGENT_VERSION = "gen_ai.agent.version"
CONVERSATION_ID = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
TOOL_DEFINITIONS = "gen_ai.tool.definitions"
TOOL_NAME = "gen_ai.tool.name"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_DESCRIPTION = "gen_ai.tool.description"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_CALL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"

OP_INVOKE_AGENT = "invoke_agent"
OP_CHAT = "chat"
OP_EXECUTE_TOOL = "execute_tool"
MODEL_OPERATIONS = frozenset({"chat", "text_completion", "generate_content"})

# ee.* extras
EE_RECORDER = "ee.recorder.id"
EE_TRAJECTORY_ID = "ee.trajectory.id"
EE_APP = "ee.app"
EE_APP_VERSION = "ee.app.version"
EE_ENVIRONMENT = "ee.environment"
EE_STATUS = "ee.status"
EE_STATUS_REASON = "ee.status.reason"
"""Set on an ``interrupted`` run's root span when nobody paused it: why it stopped (``cancelled: CancelledError``: its
task was cancelled or its stream closed); the trajectory's ``error``. Absent for a pause (a human review, a breakpoint)."""
EE_TASK = "ee.task"
EE_FINAL_ANSWER = "ee.final_answer"
EE_APPROVAL = "ee.approval"
EE_OBSERVATION_TRUNCATED = "ee.observation.truncated_chars"
EE_SCHEMA_VERSION = "ee.schema_version"
EE_LANGGRAPH_NODE = "ee.langgraph.node"
EE_LANGGRAPH_CHECKPOINT_NS = "ee.langgraph.checkpoint_ns"
"""The LangGraph task a model call ran in (its checkpoint namespace): parallel branches (``Send``) differ."""
EE_LANGGRAPH_STEP = "ee.langgraph.step"
"""The step of its graph a model call's node ran in (``langgraph_step``): parallel branches of one step share it, a
node run again later (a retry, a loop) has another."""
EE_TOOL_ERROR_POSITIONS = "ee.tool_call.error_positions"
"""The positions, in a ``chat`` span's input messages (in the run root's output messages), of the tool messages that
report an error (a ``ToolMessage`` with ``status="error"``), also those no tool span failed for (a middleware that
answered for the tool: ``ToolCallLimitMiddleware``, a guardrail). Positions, not call ids: a model may reuse ids."""
EE_TOOL_TRUNCATED = "ee.tool_call.truncated_chars"
"""The tool messages of a span's messages whose content capture cut to ``max_observation_chars``, as flat
``(position, characters cut)`` pairs: a result the tool span cannot say was cut (ToolNode's text for a tool that raised)."""
EE_INVALID_TOOL_CALL_POSITIONS = "ee.tool_call.invalid_positions"
"""The positions, among a ``chat`` span's output tool calls (every call of its output messages, in order: each
message's valid calls, then its invalid ones, as :func:`~ee_middleware.messages.langchain_to_openai` writes them), of
the calls LangChain held as ``invalid_tool_calls``: the model wrote them, but whatever their arguments parse to (text
that is no JSON, ``null``, a list, an object a parser or schema check refused) no tool runs them (``create_agent``
answers each with an error itself). The assembler records each as a malformed call (``arguments == {"_raw": text}``)."""
EE_LAST_REPLY_TASK = "ee.langgraph.last_reply_task"
"""Set on a run's root span where capture saw which LangGraph node run returned the run's last reply (an assistant
message without tool calls): that run's checkpoint namespace (as :data:`EE_LANGGRAPH_CHECKPOINT_NS` of the model calls
made in it). A structured-output call's node that writes a message built from its reply ended the run normally."""
EE_RESUMED = "ee.langgraph.resumed"
"""Set (true) on a run's root span when the graph was invoked to continue from its checkpoint (``Command(...)`` or
``None`` as its input: resuming after a human review, a breakpoint or ``interrupt()``), not on new input."""
EE_PARENT_RESUMING = "ee.langgraph.parent_resuming"
"""Set (true) on the root span of a recorded run invoked with the configuration a graph that was resuming hands down (an
agent wrapped with its own ``record_experience``, run in a tool or node of a run resumed with ``Command(resume=...)``
or ``None``; LangGraph's ``__pregel_resuming`` flag). Where the agent paused in that tool earlier (``interrupt()`` in
one of its own tools), LangGraph resumes it from its own checkpoint and ignores the input the tool gives it again; the
assembler then reads the run as :data:`EE_RESUMED` (it ran, before its first model call, a call of its history's last
turn). One the tool runs afresh asks its model first: a run from new input."""
EE_AWAITS_CALLS = "ee.langgraph.awaits_calls"
"""Set on a paused run's root span (``interrupted``, no :data:`EE_STATUS_REASON`): whether it paused on tool calls
(``interrupt()`` in a tool, or in a node whose state ends on calls without their tool messages: a review of them), and
so has no answer (true); false where the state it paused in does not (a review node after the model answered, with a
structured-output call between). Absent where capture could not tell (another instrumentation's spans do not say)."""
EE_STRUCTURED_OUTPUT = "ee.structured_output"
"""Set (true) on a ``chat`` span of a model call made for a structured reply (``with_structured_output``: LangChain's
``ls_structured_output_format``): a tool call in its reply is the answer, which the node that asked reads itself (a
grader, an extractor), not a call a tool runs. A run whose last message is that call's answer ended normally; one whose
last message a node wrote after it (a call limit, a guard) was cut off."""
EE_NESTED_IN = "ee.langgraph.nested_in"
"""Set on the model and tool spans of a graph run inside a tool of the recorded run (an agent used as a tool: its nodes
run in another checkpoint namespace than the tool's): the key of that tool call (:data:`EE_NESTED_RUN` on its span).
Such a run becomes a trajectory of its own; the outer run keeps the tool call and the result it returned."""
EE_NESTED_RUN = "ee.langgraph.nested_run"
"""Set on the span of a tool call a graph ran inside (see :data:`EE_NESTED_IN`): the key its spans name (a list of keys
where the tool ran several graph runs, each a trajectory of its own)."""
EE_NESTED_ENVIRONMENTS = "ee.langgraph.nested_environments"
"""Set beside :data:`EE_NESTED_RUN`: JSON ``{key: environment reference}`` of the graph runs inside the tool call whose
environment was read when each started (the recorder's ``environment=`` hook, called again then: the world the inner run
began in, after the outer run's earlier calls changed it); a key not in it takes the outer run's."""
EE_NESTED_OUTCOMES = "ee.langgraph.nested_outcomes"
"""Set beside :data:`EE_NESTED_RUN`: JSON ``{key: {"status": ..., "error": ...}}``, how each graph run inside the tool
call ended as capture saw it (its own graph's end): ``completed``, ``error`` (its error, redacted) or ``detached`` (it had
not ended when the tool returned: a background task). A key not in it takes the tool call's outcome."""
EE_NESTED_ON_THREAD = "ee.langgraph.nested_on_thread"
"""Set beside :data:`EE_NESTED_IN`: whether that graph run is on the recorded run's thread (invoked with its tool's
configuration, by a tool of the recorded run or of a graph run that is itself on it), as capture saw it while it ran;
it tells also where the tool's span does not (a tool that never ended: cancelled, paused inside)."""
EE_CHOICES_DROPPED = "ee.response.choices_dropped"
"""Set on a ``chat`` span whose model call returned several choices (a request made with ``n`` > 1): how many were
left out. The span's output is the first, the reply LangChain's ``invoke`` returns and the graph went on with; the others
never reached the graph (counted in the recorder's ``stats.choices_dropped``)."""
FINISH_REASON_LENGTH = "length"
"""The finish reason (:data:`RESPONSE_FINISH_REASONS`) of a reply cut at the request's ``max_tokens``: a run whose last
reply was cut is ``stopped``, not ``completed``."""
EE_CAPTURE_FAILED = "ee.capture.failed"
"""Set on a span capture could not finish whole (encoding or redacting its payload raised, a ``redact_fn`` that raised):
what failed and the exception's type. A run with such a span is not stored (the failure is counted in ``stats``)."""
