"""Turn the GenAI spans of one agent run into a :class:`~ee_middleware.records.Trajectory`.

Used by the live span processor and by ``ee traces ingest`` alike. A run is an ``invoke_agent``
span with its descendants (or a whole trace when no agent span exists); inside it:

* every model span (``chat``) is one decision: ``gen_ai.input.messages`` (+ system instructions)
  is the state, each tool call in ``gen_ai.output.messages`` becomes a step, a text reply an answer;
* each tool call's observation comes from the ``execute_tool`` span with the same
  ``gen_ai.tool.call.id`` (or, failing that, from the tool message in a later model input).
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import dataclasses
import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.normalize import normalize, operation_of
from ee_middleware.capture.redaction import PLACEHOLDER, Redactor
from ee_middleware.capture.spandata import SpanData
from ee_middleware.errors import IngestError, RecordError
from ee_middleware.messages import (
    arguments_json,
    content_to_text,
    dumps,
    genai_to_openai,
    message_reasoning,
    openai_tool_schemas,
    parse_arguments,
)
from ee_middleware.records import (
    Action,
    Approval,
    Observation,
    Step,
    ToolCall,
    ToolCatalog,
    Trajectory,
    tool_schema_name,
    utcnow,
)

_ID_NAMESPACE = uuid.UUID("6f1c0f3e-3b1c-4c8e-9f65-2d8b7a1e5c42")


def run_trajectory_id(trace_id: str, root_span_id: str) -> str:
    """The id of the trajectory of a run whose spans carry none (``ee.trajectory.id``): named by its trace and root span,
    so that reading the same spans again gives the same id."""
    return uuid.uuid5(_ID_NAMESPACE, f"{trace_id}:{root_span_id}").hex


CUT_MARGIN = 16_384
"""Characters past the cut that :func:`redact_and_cut` redacts with a long text's kept part (and more where redaction
shrank them): a value the cut falls in is redacted as it is in the whole text when it is shorter than this (a PEM key,
a JWT, a card, an e-mail address all are)."""


def cut_redacted(text: str, max_chars: int) -> str:
    """Redacted ``text`` cut to at most ``max_chars`` characters, never inside a placeholder: one the cut would split
    (``[REDACTED:email:1a2b3c4d]``) is left out whole, so the cut text ends before it (never on ``[RED``)."""
    if len(text) <= max_chars:
        return text
    if "[REDACTED:" in text:
        start = max(0, max_chars - _PLACEHOLDER_MAX)
        for placeholder in PLACEHOLDER.finditer(text, start, max_chars + _PLACEHOLDER_MAX):
            if placeholder.start() < max_chars < placeholder.end():
                return text[: placeholder.start()]
            if placeholder.start() >= max_chars:
                break
    return text[:max_chars]


_PLACEHOLDER_MAX = 256
"""Longer than any placeholder (``[REDACTED:<kind>:<tag>]``, a user pattern's kind a name of a few words)."""


def redact_and_cut(text: str, max_chars: int, redact: Callable[[Any], Any] | None) -> tuple[str, int]:
    """``text`` redacted by ``redact`` (``None``: as it is), then cut to ``max_chars`` characters (:func:`cut_redacted`),
    and how many characters were cut: never cut first and redacted after, which left the value the cut fell in partly in
    plain text (12 of a card's 16 digits, ``jane.doe@gma``).

    A text over ``max_chars`` + :data:`CUT_MARGIN` characters is not redacted whole (5 MB took seconds): only its start
    is, up to that many characters, or more until the redacted start is as long (redaction that shrank it, long tokens
    made placeholders), so that the kept part is what redacting the whole text and then cutting gives for every value
    shorter than :data:`CUT_MARGIN`. The count is then the redacted start's characters cut plus the rest's (not
    redacted)."""
    if redact is None:
        kept = cut_redacted(text, max_chars)
        return kept, len(text) - len(kept)
    end = len(text) if len(text) <= max_chars + CUT_MARGIN else max_chars + CUT_MARGIN
    while True:
        redacted = redact(text[:end] if end < len(text) else text)
        if not isinstance(redacted, str):  # (a redact_fn that returned something else: as the text it was given)
            redacted = str(redacted)
        short = max_chars + CUT_MARGIN - len(redacted)
        if end >= len(text) or short <= 0:
            break
        # as much more as redaction shrank this start by (PEM keys, JWTs), and a margin: read again from the start
        end = min(len(text), end + short * max(1, end // max(len(redacted), 1)) + CUT_MARGIN)
    kept = cut_redacted(redacted, max_chars)
    return kept, len(redacted) - len(kept) + len(text) - end


def redact_tool_schemas(schemas: list[dict[str, Any]], redactor: Redactor | None) -> list[dict[str, Any]]:
    """Tool schemas (OpenAI form, ``{"type": "function", "function": {...}}``) with the text they carry redacted: each
    tool's description (and any other field but its name), and in its parameters' JSON Schema every description,
    title and ``$comment``, the values given as ``default``, ``examples``, ``example``, ``enum`` and ``const``, and
    ``x-`` extensions. A value given for a parameter is redacted as that parameter's value in a call is (below a
    secret name such as ``api_key``, replaced whole). Names (the tool's, its parameters'), types, ``required`` and the
    schema's structure are kept: it stays a JSON Schema the model can call the tool with. A tool built at run time
    (``f"Send mail as {user_email}"``) or an MCP server's tool description otherwise kept the user's data in the
    trajectory's ``tools``, on the user's spans (``gen_ai.tool.definitions``), in exports and in dataset rows."""
    if redactor is None or not redactor.enabled:
        return schemas
    out: list[dict[str, Any]] = []
    for schema in schemas:
        function = schema.get("function") if isinstance(schema, Mapping) else None
        if not isinstance(function, Mapping):
            out.append(schema)
            continue
        redacted: dict[str, Any] = {}
        for key, value in function.items():
            if key in ("name", "strict"):
                redacted[key] = value
            elif key == "parameters":
                redacted[key] = _redact_json_schema(value, redactor, None)
            else:
                redacted[key] = redactor.redact_value(value)
        out.append({**schema, "function": redacted})
    return out


_SCHEMA_TEXT = frozenset({"description", "title", "$comment"})
"""JSON Schema keywords whose value is prose."""
_SCHEMA_DATA = frozenset({"default", "examples", "example", "enum", "const"})
"""JSON Schema keywords whose value is a value of the data the schema describes (a parameter's)."""
_SCHEMA_NAMED = frozenset({"properties", "patternProperties"})
"""JSON Schema keywords mapping parameters' names to their schemas."""
_SCHEMA_MAPS = frozenset({*_SCHEMA_NAMED, "$defs", "definitions", "dependentSchemas"})
"""JSON Schema keywords mapping names to schemas."""
_SCHEMA_PARTS = frozenset(
    {
        *("items", "prefixItems", "additionalItems", "additionalProperties", "unevaluatedItems", "unevaluatedProperties"),
        *("contains", "propertyNames", "not", "if", "then", "else", "anyOf", "oneOf", "allOf", "contentSchema"),
    }
)
"""JSON Schema keywords whose value is a schema or a list of schemas (of the same parameter)."""


def _redact_json_schema(schema: Any, redactor: Redactor, name: str | None) -> Any:
    """:func:`redact_tool_schemas`'s walk of a JSON Schema, the schema of parameter ``name`` (``None``: no parameter's)."""
    if isinstance(schema, list):
        return [_redact_json_schema(item, redactor, name) for item in schema]
    if not isinstance(schema, Mapping):
        return schema  # (true, false: schemas too)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_TEXT and isinstance(value, str):
            out[key] = redactor.redact_value(value)
        elif key in _SCHEMA_DATA:
            # as the parameter's value in a call: {"api_key": ...} replaced whole below a secret name
            out[key] = redactor.redact_value(value) if name is None else next(iter(redactor.redact_value({name: value}).values()))
        elif key in _SCHEMA_MAPS and isinstance(value, Mapping):
            out[key] = {k: _redact_json_schema(v, redactor, k if key in _SCHEMA_NAMED else None) for k, v in value.items()}
        elif key in _SCHEMA_PARTS:
            out[key] = _redact_json_schema(value, redactor, name)
        elif isinstance(key, str) and key.startswith("x-"):
            out[key] = redactor.redact_value(value)
        else:
            out[key] = value  # type, required, format, pattern, bounds, ...
    return out


PausedTools = Callable[[str | None, Sequence[str], int, bool], list[dict[str, Any]] | None]
"""``paused_tools(thread_id, call_ids, before_ns, chosen_per_call)``: the schemas of the tools offered, in the order
offered, at the decision of an interrupted run of thread ``thread_id`` (as the trajectory records it) that started
before ``before_ns`` and made the calls ``call_ids`` (the reviewed turn's: any one of them identifies it), or ``None``
when not known. ``chosen_per_call``: the resuming run shows tools chosen per model call (its calls were offered
different tools, or none offered the reviewed turn's); without that sign a costly lookup (a store read) may be skipped,
the run's own tools being then as good."""


PausedSteps = Callable[[str | None, Sequence[str], int], list[Step] | None]
"""``paused_steps(thread_id, call_ids, before_ns)``: the steps awaiting review of the decision that made any of
``call_ids`` in the latest interrupted run of thread ``thread_id`` started before ``before_ns`` (as its trajectory
records them: the state the model decided in, the calls it made, in order), or ``None`` when not known; for a run that
resumed it and called no model (see :func:`_reviewed_without_model`)."""


@dataclass(frozen=True)
class AssemblyOptions:
    """How spans become a trajectory.

    ``app`` names the app when the spans do not (no ``gen_ai.agent.name``/``ee.app``/``service.name``);
    ``max_observation_chars`` caps stored observations (the cut is recorded in the step).
    """

    app: str | None = None
    redactor: Redactor | None = None
    max_observation_chars: int = 200_000
    source: str = "otlp-ingest"
    model_calls_required: bool = True
    """Whether a run without a model span is an error (ingest: the instrumentation left out the
    messages). ``record_experience`` stores such runs too (a run resumed after a human review that
    only runs tools, one that fails before the model): no steps, their tool results in ``messages``."""
    paused_tools: PausedTools | None = None
    """Where a run resumed after a human review finds the tools offered at the decision that paused its thread (see
    :data:`PausedTools`; the recorder's :class:`~ee_middleware.capture.paused.PausedDecisions`). Without it, or where it
    does not know, a reviewed turn gets the resumed run's own tools, and one calling a tool none of them is is left out."""
    paused_steps: PausedSteps | None = None
    """Where a run resumed after a human review that called no model (a ``return_direct`` tool, a reviewed tool that
    raised) finds the decision its reviewed turn carried out (see :data:`PausedSteps`; the recorder's
    :class:`~ee_middleware.capture.paused.PausedDecisions`). Without it, or where it does not know, that turn is no step."""
    unread_model_calls: bool = False
    """Whether a run's tool spans that ran before its first model span, answering calls that an assistant message in
    that call's history made, are steps, as a resumed run's reviewed turns are (:func:`_reviewed_turns`), also in a run
    that was not resumed: ingest reads a run whose earlier model spans are in a file not read with this one (a rotated
    file, the earlier one lost or read in another ingest), its calls known from the later call's history and their
    results (and errors) from the tool spans. Capture's own spans hold every model call of their run."""


def split_runs(spans: Sequence[SpanData], unread_parents: Mapping[str, str] | None = None) -> list[list[SpanData]]:
    """Group one trace's spans into agent runs (outermost ``invoke_agent`` subtrees).

    ``unread_parents``: the parent of each span of the trace that is not among ``spans`` (a span the live processor did
    not keep, such as a LangGraph node's): a span under one of them belongs under its nearest ancestor that is."""
    by_id = {s.span_id: s for s in spans}
    children: dict[str | None, list[SpanData]] = {}
    for s in spans:
        parent = s.parent_span_id
        if unread_parents:
            seen = 0
            while parent is not None and parent not in by_id and seen <= len(unread_parents):  # (bounded: a cycle ends)
                parent, seen = unread_parents.get(parent), seen + 1
        children.setdefault(parent if parent in by_id else None, []).append(s)

    def subtree(root: SpanData) -> list[SpanData]:
        out, todo = [], [root]
        while todo:
            node = todo.pop()
            out.append(node)
            todo.extend(children.get(node.span_id, []))
        return out

    runs: list[list[SpanData]] = []
    covered: set[str] = set()

    def visit(node: SpanData) -> None:
        if operation_of(node.attributes) == sc.OP_INVOKE_AGENT:
            run = subtree(node)
            runs.append(run)
            covered.update(s.span_id for s in run)
            return
        for child in children.get(node.span_id, []):
            visit(child)

    for root in children.get(None, []):
        visit(root)
    leftover = [s for s in spans if s.span_id not in covered]
    if any(operation_of(s.attributes) in sc.MODEL_OPERATIONS for s in leftover):
        runs.append(leftover)
    return runs


def recorded_spans_only(run: list[SpanData]) -> list[SpanData]:
    """``run`` (its root first) with ee-middleware's own spans alone where its root is capture's (``record_experience``
    exporting to a provider that other instrumentations trace to as well): their spans under it (OpenInference's,
    OpenLLMetry's) are the same graph, model and tool calls traced again, each decision a second time. Any other run
    as it is."""
    root = run[0]
    if sc.EE_RECORDER not in root.attributes or operation_of(root.attributes) != sc.OP_INVOKE_AGENT:
        return run
    return [s for s in run if sc.EE_RECORDER in s.attributes]


def split_nested(spans: Sequence[SpanData]) -> list[list[SpanData]]:
    """One recorded run's spans as the runs they hold: the run itself first (its root, its own model and tool calls,
    and the tool calls a graph ran inside, with the result they returned), then each graph run inside one of its tools
    (an agent used as a tool: spans marked :data:`~ee_middleware.capture.semconv.EE_NESTED_IN`, as capture writes
    them), under a root of its own made from the tool call's span (:func:`_nested_root`). As ``ee traces ingest`` reads
    such a run from another instrumentation's spans. A nested graph that called no model stays in the run."""
    groups: dict[str, list[SpanData]] = {}
    for span in spans:
        key = span.attributes.get(sc.EE_NESTED_IN)
        if key:
            groups.setdefault(str(key), []).append(span)
    nested = {key: group for key, group in groups.items() if any(operation_of(s.attributes) in sc.MODEL_OPERATIONS for s in group)}
    if not nested:
        return [list(spans)]
    outer = [s for s in spans if str(s.attributes.get(sc.EE_NESTED_IN) or "") not in nested]
    root = _root(outer)
    held = {s.span_id: _held_keys(s) for s in spans if s.attributes.get(sc.EE_NESTED_RUN)}
    hosts = {key: s for s in spans if s.span_id in held for key in held[s.span_id]}
    threads = _NestedThreads(outer, groups, hosts)
    return [
        outer,
        *(
            [
                _nested_root(
                    root, hosts.get(key), key, group, threads.inherited(key), held.get(hosts[key].span_id, ()) if key in hosts else ()
                ),
                *group,
            ]
            for key, group in nested.items()
        ),
    ]


def _held_keys(span: SpanData) -> tuple[str, ...]:
    """The keys of the graph runs a tool call's span says ran inside it (:data:`~ee_middleware.capture.semconv.
    EE_NESTED_RUN`: one key, or a list of them where the tool ran several)."""
    value = span.attributes.get(sc.EE_NESTED_RUN)
    return tuple(str(key) for key in value) if isinstance(value, list | tuple) else (str(value),)


def _nested_root(
    outer: SpanData, host: SpanData | None, key: str, spans: list[SpanData], on_outer_thread: bool, siblings: Sequence[str] = ()
) -> SpanData:
    """The root span of a graph run inside the tool call ``host`` of the run rooted at ``outer``: the app, version and
    environment of the outer run; its thread where it ran on it (``on_outer_thread``: invoked with the tool's
    configuration, see :class:`_NestedThreads`), none where it ran in a root namespace of its own (invoked with a
    configuration of its own, whose thread the callbacks do not tell), as ingest reads it; the tool call's time, and its
    outcome: ``error`` where the tool failed, else ``completed``, or the outer run's status where the tool never ended
    (a pause, a cancellation); resumed where the outer run was and the graph resumed with it (:func:`_resumed_inside`).
    Where the tool ran several graph runs (``siblings``, the keys its span holds, in the order they started), each
    has its own spans' time, and only the last the tool's failure (the others returned)."""
    attrs = outer.attributes
    own = {
        sc.OPERATION_NAME: sc.OP_INVOKE_AGENT,
        sc.EE_TRAJECTORY_ID: uuid.uuid5(_ID_NAMESPACE, f"{attrs.get(sc.EE_TRAJECTORY_ID) or outer.span_id}:nested:{key}").hex,
        **{k: attrs[k] for k in _NESTED_INHERITS if k in attrs},
    }
    if attrs.get(sc.CONVERSATION_ID) and on_outer_thread:
        own[sc.CONVERSATION_ID] = attrs[sc.CONVERSATION_ID]
    read = _json_attr(host, sc.EE_NESTED_ENVIRONMENTS, expect=dict) if host is not None else None
    if read and read.get(key) is not None:  # the world as it started (the hook asked again then), not the outer run's
        own[sc.EE_ENVIRONMENT] = json.dumps(read[key])
    if attrs.get(sc.EE_RESUMED) and _resumed_inside(spans):
        # the outer run resumed: its tool ran again, and a graph run inside it that paused (interrupt() in one of its
        # tools) resumed from its own checkpoint, though its input is new. The calls it ran before its first model
        # call are then the reviewed turn (see _reviewed_turns), and its task the turn it resumed. One the tool runs
        # afresh (after a review of the tool's own) is a run from new input: its task is its first user message
        own[sc.EE_RESUMED] = True
    several = len(siblings) > 1
    ended = (_json_attr(host if host is not None else outer, sc.EE_NESTED_OUTCOMES, expect=dict) or {}).get(key)
    own_error: str | None = None
    if isinstance(ended, dict) and ended.get("status") in ("completed", "error", "detached"):
        # how its own graph ended, as capture saw it: a failure the tool caught, a success the tool then failed after
        status = str(ended["status"])
        if status == "detached":  # the tool returned while it ran (a background task): only its calls until then
            own[sc.EE_STATUS], own[sc.EE_STATUS_REASON] = "interrupted", DETACHED_REASON
        else:
            own[sc.EE_STATUS] = status
            own_error = str(ended.get("error") or "the agent run failed") if status == "error" else None
        timed_by_host = host is not None and not several and status != "detached"
        start, end = (host.start_ns, host.end_ns) if timed_by_host else (min(s.start_ns for s in spans), max(s.end_ns for s in spans))
    elif host is not None:
        failed = host.is_error and not (several and key != siblings[-1])
        own[sc.EE_STATUS] = "error" if failed else "completed"
        start, end = (min(s.start_ns for s in spans), max(s.end_ns for s in spans)) if several else (host.start_ns, host.end_ns)
    else:
        own[sc.EE_STATUS] = attrs.get(sc.EE_STATUS) or "interrupted"
        if attrs.get(sc.EE_STATUS_REASON):
            own[sc.EE_STATUS_REASON] = attrs[sc.EE_STATUS_REASON]
        start, end = min(s.start_ns for s in spans), max(s.end_ns for s in spans)
    failed = own[sc.EE_STATUS] == "error" and (host is not None or own_error is not None)
    return SpanData(
        trace_id=outer.trace_id,
        span_id=host.span_id if host is not None and not several else key,
        parent_span_id=outer.span_id,
        name=f"invoke_agent {attrs.get(sc.EE_APP) or attrs.get(sc.AGENT_NAME) or ''}".rstrip(),
        start_ns=start,
        end_ns=end,
        attributes=own,
        status_code="ERROR" if failed else "UNSET",
        status_message=own_error if own_error is not None else host.status_message if failed and host is not None else None,
        events=host.events if failed and host is not None and own_error is None else (),
        resource=outer.resource,
    )


DETACHED_REASON = "detached: the tool that started it returned before it ended (a background task); its later calls are not recorded"
"""Why a graph run inside a tool is ``interrupted`` when the tool did not wait for it (:data:`~ee_middleware.capture.semconv.
EE_NESTED_OUTCOMES`)."""


def _resumed_inside(spans: Sequence[SpanData]) -> bool:
    """Whether a graph run inside a tool of a resumed run (``spans``, its own) resumed with it rather than starting
    afresh: LangGraph runs the task that paused in its checkpoint namespace first (the tool that called
    ``interrupt()``), so before its first model call it ran a call that an assistant message of that call's history
    made. A graph the tool runs afresh asks its model first, from its new input."""
    chats = [s for s in spans if operation_of(s.attributes) in sc.MODEL_OPERATIONS]
    if not chats:
        return False
    first = min(chats, key=lambda s: s.start_ns)
    ran = {
        str(call_id)
        for s in spans
        if operation_of(s.attributes) == sc.OP_EXECUTE_TOOL
        and s.start_ns < first.start_ns
        and (call_id := s.attributes.get(sc.TOOL_CALL_ID))
    }
    if not ran:
        return False
    try:
        history = _messages_attr(first, sc.INPUT_MESSAGES)
    except IngestError:
        return False  # assembling the run says what is wrong with its messages
    made = {str(c.get("id")) for m in history if m.get("role") == "assistant" for c in m.get("tool_calls") or () if isinstance(c, Mapping)}
    return not ran.isdisjoint(made)


def _resumed_with_parent(root: SpanData, spans: Sequence[SpanData]) -> SpanData:
    """``root`` as the root of a resumed run (:data:`~ee_middleware.capture.semconv.EE_RESUMED`) where a recorded run
    invoked inside a graph that was resuming (:data:`~ee_middleware.capture.semconv.EE_PARENT_RESUMING`: an agent
    wrapped with its own ``record_experience``, run in a tool of a run resumed after a review) resumed with it from its
    own checkpoint (:func:`_resumed_inside`, as for a graph run inside a tool that was not wrapped): its first steps are
    then the reviewed turn it paused on, and its task the turn it resumed. The input the tool gave it again was ignored
    by LangGraph: its task and messages are none of the run's. Any other root is returned as it is."""
    attrs = root.attributes
    if attrs.get(sc.EE_RESUMED) or not attrs.get(sc.EE_PARENT_RESUMING) or not _resumed_inside(spans):
        return root
    ignored = (sc.EE_TASK, sc.INPUT_MESSAGES)  # (the messages as one attribute, or flattened under its name)
    kept = {k: v for k, v in attrs.items() if not any(k == name or k.startswith(f"{name}.") for name in ignored)}
    return dataclasses.replace(root, attributes={**kept, sc.EE_RESUMED: True})


class _NestedThreads:
    """Which graph runs inside the tools of one recorded run (:func:`split_nested`: ``groups`` by key, the tool spans
    that held them ``hosts``) ran on the recorded run's thread: invoked with their tool's configuration, which carries
    the thread and the tool's checkpoint namespace, so every namespace of the inner run is below the tool's. One
    invoked with a configuration of its own runs in a root namespace of its own and on a thread the callbacks do not
    tell: it gets none.

    Capture's spans say it (:data:`~ee_middleware.capture.semconv.EE_NESTED_ON_THREAD`, decided while the run ran, from
    the namespaces of the call, of its tool and of the run that made the tool call: also where the tool never ended, or
    the run that made it left no span here, as a run resumed and paused again leaves none). For spans written before
    that: where the tool's span tells its namespace, the inner run is on the thread if its namespaces are below it and the
    tool is the recorded run's, or a tool of another inner run that is on it. A tool that never ended (cancelled with
    the run, or paused on ``interrupt()`` in the inner run) has no span: its namespace is then a task of the recorded
    graph (at the depth of the recorded run's own namespaces, below the same parent) that every namespace of the inner
    run is below. That holds only where no inner run started a root namespace of its own (a tool of one would look
    alike, on that run's thread); where one did, or the recorded run's spans name no namespace, it gets none."""

    def __init__(self, outer: Sequence[SpanData], groups: Mapping[str, list[SpanData]], hosts: Mapping[str, SpanData]) -> None:
        self._groups, self._hosts = groups, hosts
        self._known: dict[str, bool] = {}
        own = [str(ns) for s in outer if not s.attributes.get(sc.EE_NESTED_IN) and (ns := s.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS))]
        self._depth = min((ns.count("|") for ns in own), default=None)  # the recorded graph's tasks: the shallowest
        parents = {ns.rpartition("|")[0] for ns in own if ns.count("|") == self._depth}
        self._parent = parents.pop() if len(parents) == 1 else None
        # an inner run invoked with a configuration of its own (a root namespace, as shallow as the recorded graph's
        # tasks), or one whose namespaces are unknown: its tasks look like the recorded graph's
        self._own_roots = self._depth is None or any(
            not (names := self._namespaces(key)) or min(ns.count("|") for ns in names) <= self._depth for key in groups
        )

    def _namespaces(self, key: str) -> set[str]:
        return {str(ns) for s in self._groups.get(key, ()) if (ns := s.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS))}

    def inherited(self, key: str, seen: frozenset[str] = frozenset()) -> bool:
        """Whether the inner run ``key`` ran on the recorded run's thread."""
        if key not in self._known:
            self._known[key] = key not in seen and self._inherited(key, seen | {key})
        return self._known[key]

    def _inherited(self, key: str, seen: frozenset[str]) -> bool:
        told = [s.attributes[sc.EE_NESTED_ON_THREAD] for s in self._groups.get(key, ()) if sc.EE_NESTED_ON_THREAD in s.attributes]
        if told:  # capture saw it run (spans written before it said so are read as below)
            return all(str(on).lower() == "true" for on in told)
        inner = self._namespaces(key)
        if not inner:
            return False
        host = self._hosts.get(key)
        if host is not None:
            tool_ns = host.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS)
            if not tool_ns or not all(ns.startswith(f"{tool_ns}|") for ns in inner):
                return False
            held_by = str(host.attributes.get(sc.EE_NESTED_IN) or "")
            return not held_by or held_by not in self._groups or self.inherited(held_by, seen)
        if self._own_roots or self._depth is None or self._parent is None:
            return False
        tasks = {"|".join(ns.split("|")[: self._depth + 1]) for ns in inner}
        if len(tasks) != 1:
            return False
        task = tasks.pop()
        return task.rpartition("|")[0] == self._parent and all(ns.startswith(f"{task}|") for ns in inner)


def run_app(attributes: Mapping[str, Any], resource: Mapping[str, Any], default: str | None) -> str:
    """The app a run's top span names: ``ee.app``, else ``gen_ai.agent.name``, else its resource's ``service.name``, else
    ``default`` (else ``unknown-app``), each with the spaces around it dropped and a blank one passed over (an
    instrumentation's ``"shop "`` is the app ``shop``, as ``record_experience(app=...)`` and ``EE_APP`` name it: not a
    second app that ``--app shop`` never finds)."""
    for value in (attributes.get(sc.EE_APP), attributes.get(sc.AGENT_NAME), resource.get("service.name"), default):
        if value is not None and str(value).strip():
            return str(value).strip()
    return "unknown-app"


_NESTED_INHERITS = (sc.EE_APP, sc.AGENT_NAME, sc.EE_APP_VERSION, sc.AGENT_VERSION, sc.EE_RECORDER, sc.EE_ENVIRONMENT)
"""The attributes a graph run inside a tool takes from the run it ran in (:func:`_nested_root`)."""


def assemble(spans: Sequence[SpanData], options: AssemblyOptions | None = None) -> Trajectory:
    """Build one trajectory from the spans of one run. Raises :class:`IngestError` on bad spans."""
    options = options or AssemblyOptions()
    spans = sorted((normalize(s) for s in spans), key=lambda s: (s.start_ns, s.end_ns))
    if not spans:
        raise IngestError("No spans to assemble.")
    root = _resumed_with_parent(_root(spans), spans)
    chats = [s for s in spans if s.attributes.get(sc.OPERATION_NAME) in sc.MODEL_OPERATIONS]
    # a tool that ended on interrupt() has no result (it runs again when the thread resumes), nor has one cut off by a
    # cancellation (the model never saw a result): capture writes no span of either, another instrumentation's span of
    # it is no observation (its error is the pause or the cancellation, not the tool's)
    cancelled = _cancellation(root) if not root.attributes.get(sc.EE_STATUS) else None
    tools = [
        s
        for s in spans
        if s.attributes.get(sc.OPERATION_NAME) == sc.OP_EXECUTE_TOOL and not _interrupted_tool(s) and _cancellation(s, cancelled) is None
    ]
    if not chats and options.model_calls_required:
        raise IngestError(
            f"Trace {root.trace_id}: no model span (gen_ai.operation.name='chat') in run {root.name!r}; "
            "a trajectory needs the model's inputs and outputs. Enable message capture in the instrumentation."
        )
    redact = options.redactor.redact if options.redactor is not None else (lambda v: v)
    memo = _RunMemo(options.redactor)
    decisions = [_decision(chat, redact, memo) for chat in chats]
    _note_tool_runs(decisions, tools)
    formatting = _answer_formatting(root, decisions, tools)
    decisions = [d for index, d in enumerate(decisions) if index not in formatting]
    # a run that ends on tool messages (structured output, return_direct tools) keeps them on its root
    root_output = _messages_attr(root, sc.OUTPUT_MESSAGES)
    final_tool_messages = redact([m for m in root_output if m.get("role") == "tool"])
    final = {"state": final_tool_messages, "errors": _error_positions(root, 0), "cut": _cut_positions(root, 0)}
    final["cut_replies"] = _cut_replies([*decisions, final])
    attrs = root.attributes
    thread_id = _redact_opt(
        redact,
        attrs.get(sc.CONVERSATION_ID)
        or next((c.attributes.get(sc.CONVERSATION_ID) for c in chats if c.attributes.get(sc.CONVERSATION_ID)), None),
    )
    offered = _offered_tools(decisions)
    reviewed, tools_here = _reviewed_turns(
        root, decisions, tools, redact, options.max_observation_chars, options.unread_model_calls, final["cut_replies"]
    )
    if not decisions and attrs.get(sc.EE_RESUMED) and options.paused_steps is not None and tools:
        ran = [str(t.attributes[sc.TOOL_CALL_ID]) for t in tools if t.attributes.get(sc.TOOL_CALL_ID)]
        paused_turn = options.paused_steps(thread_id, ran, root.start_ns) if ran else None
        if paused_turn:
            reviewed, tools_here = _reviewed_without_model(paused_turn, tools, redact, options.max_observation_chars)
    if reviewed:
        paused = options.paused_tools if attrs.get(sc.EE_RESUMED) else None
        own = set(offered.default_refs())
        per_call = len({tuple(offered.refs(d["tools"])) for d in decisions}) > 1 or any(
            s.action.tool_call is not None and s.action.tool_call.name not in own for s in reviewed
        )
        look_up = (lambda ids: paused(thread_id, ids, root.start_ns, per_call)) if paused is not None else (lambda ids: None)
        reviewed = _reviewed_tools(reviewed, offered, look_up)
    steps, final_answer = _steps(decisions, tools_here, redact, options.max_observation_chars, final, offered)
    if reviewed:
        turns = reviewed[-1].decision_index + 1
        steps = [
            *reviewed,
            *(s.model_copy(update={"index": s.index + len(reviewed), "decision_index": s.decision_index + turns}) for s in steps),
        ]
    if decisions:
        # with the tool messages the run ended on that answer its last decision's calls (a return_direct tool's,
        # structured output's): what the graph returned, as a run that paused in a tool keeps them (see below)
        messages = _with_closing_tool_messages(decisions[-1]["state"] + decisions[-1]["outputs"], decisions[-1], root_output, redact)
        # a resumed run's input (Command, None) has no message, nor has any other run whose input did not say (fields
        # none of which reads as the question, another instrumentation's spans): its task is its turn's question, the
        # first user message after the history's last reply (not the thread's first, an earlier turn's; nor what a node
        # added when the run resumed, a human's answer to a clarifying interrupt()), as it was when the run paused
        task = attrs.get(sc.EE_TASK) or turn_question(decisions[0]["state"])
    else:
        messages = _messages_without_model(root, tools, redact, options.max_observation_chars)
        # a resumed run's messages start with the conversation it continued (see graph_output_attributes): its task is
        # the turn it resumed, its question there, not the thread's first
        task = attrs.get(sc.EE_TASK) or turn_question(messages)
    status, error = _status(root, spans)
    if status == "completed" and sc.EE_STATUS not in attrs and _paused(decisions, tools_here, final):
        status = "interrupted"  # another instrumentation's spans, which do not say the run paused (see _paused)
    answer = redact(attrs.get(sc.EE_FINAL_ANSWER)) if attrs.get(sc.EE_FINAL_ANSWER) else final_answer
    if status == "error":
        # it raised: its caller got the exception, no answer, and a reply one of its branches wrote before another's
        # exception (parallel Send branches) is none (a cancelled run keeps the state it stopped in, its reply with it)
        answer = None
    if status == "completed":
        stopped = _stopped_by(root, decisions, redact) or _unfinished_end(decisions, steps, answer)
        if stopped is not None:
            status, error = "stopped", stopped
    if status == "interrupted" and final_tool_messages:
        # paused in a tool (interrupt() in one of parallel calls): the results of the calls that did run are in the
        # state the caller got (the messages hold them), and none of them is the run's answer (spans written before
        # this rule still said so)
        answer = final_answer
    if status == "interrupted":
        # it stopped on calls that never got their results (awaiting a review, or cut off): the run gave no answer, and
        # an assistant message written before those calls (a supervisor's reply before a sub-agent paused) is none. The
        # state it paused in tells (capture's ee.langgraph.awaits_calls): a model call whose calls no state holds (a
        # structured-output grader, a router) before a review node leaves the answer it reviews; where the spans do not
        # say, the last decision that acted tells
        said = attrs.get(sc.EE_AWAITS_CALLS)
        if _awaits_calls(decisions) if said is None else str(said).lower() == "true":
            answer = None
    try:
        trajectory = Trajectory(
            id=str(attrs.get(sc.EE_TRAJECTORY_ID) or run_trajectory_id(root.trace_id, root.span_id)),
            app=run_app(attrs, root.resource, options.app),
            app_version=_opt_str(attrs.get(sc.EE_APP_VERSION) or attrs.get(sc.AGENT_VERSION) or root.resource.get("service.version")),
            thread_id=thread_id,
            task=redact(task) if task else None,
            tools=offered.tools,
            model=_model(chats),
            messages=messages,
            final_answer=answer,
            status=status,
            error=redact(error) if error else None,
            started_at=span_time(root.start_ns),
            ended_at=span_time(max(s.end_ns for s in spans)),
            environment=redact(_json_attr(root, sc.EE_ENVIRONMENT, expect=dict)),
            approval=Approval(),
            source=options.source,
            trace_id=root.trace_id,
            steps=steps,
        )
    except RecordError as exc:
        raise IngestError(f"Trace {root.trace_id}: {exc}") from exc
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise IngestError(f"Trace {root.trace_id}: the spans do not make a valid trajectory: {exc}") from exc
    for step in trajectory.steps:
        step.trajectory_id = trajectory.id
    return trajectory


def _model(chats: list[SpanData]) -> str | None:
    """The model that made the run's first decision: a failed call (a model that ModelFallbackMiddleware or
    ModelRetryMiddleware then replaced) decided nothing. For capture's own spans, the one that answered where the
    provider named it (``gen_ai.response.model``: a router serving an alias answers with the adapter's own name, a
    provider with the dated version of the model asked for), else the one asked for. Another instrumentation's spans
    keep the one asked for: some write a placeholder as the answering model where the reply named none (OpenLLMetry's
    ``unknown``)."""
    if not chats:
        return None
    chat = next((c for c in chats if not c.is_error), chats[0])
    answered = _opt_str(chat.attributes.get(sc.RESPONSE_MODEL)) if sc.EE_RECORDER in chat.attributes else None
    return answered or _span_model(chat)


def _span_model(chat: SpanData) -> str | None:
    """The model a chat span names (asked for, else answering)."""
    return _opt_str(chat.attributes.get(sc.REQUEST_MODEL) or chat.attributes.get(sc.RESPONSE_MODEL))


def _root(spans: Sequence[SpanData]) -> SpanData:
    ids = {s.span_id for s in spans}
    agents = [s for s in spans if s.attributes.get(sc.OPERATION_NAME) == sc.OP_INVOKE_AGENT]
    outer = [s for s in agents if s.parent_span_id not in ids]
    if outer:
        return outer[0]
    tops = [s for s in spans if s.parent_span_id not in ids]
    return tops[0] if tops else spans[0]


class _RunMemo:
    """What the chat spans of one run repeat, decoded once: each span's input holds the whole
    history so far (the previous span's input plus the new messages), and the tool list is the
    same text in every span. Decoding each span whole made assembly quadratic in the run's length."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        self._history: tuple[str, bool, list[dict[str, Any]]] | None = None  # the last input text, whose, its messages
        self._tools: dict[str, list[dict[str, Any]]] = {}
        self._redactor = redactor  # the tool schemas' text redacted by it (:func:`redact_tool_schemas`)

    def input_messages(self, span: SpanData) -> list[dict[str, Any]]:
        raw = span.attributes.get(sc.INPUT_MESSAGES)
        if not isinstance(raw, str):
            return _messages_attr(span, sc.INPUT_MESSAGES)
        own = _captured(span)
        messages = self._extend(raw, own)
        if messages is None:
            messages = _messages_attr(span, sc.INPUT_MESSAGES)
        if raw.endswith("]") and messages:
            self._history = (raw, own, messages)
        return list(messages)

    def _extend(self, raw: str, own: bool) -> list[dict[str, Any]] | None:
        """The messages of ``raw`` when it is the last input text with more items after a comma (of a span of the same
        recorder, ``own``: :func:`_captured`): the known messages plus the new ones decoded alone; None when it is not
        (or they do not decode)."""
        if self._history is None or self._history[1] != own:
            return None
        text, _, messages = self._history
        if raw == text:
            return messages
        prefix = len(text) - 1  # the last text without its closing bracket
        if len(raw) <= prefix + 1 or raw[prefix] != "," or not raw.startswith(text[:prefix]):
            return None
        try:
            tail = json.loads("[" + raw[prefix + 1 :])
            return [*messages, *genai_to_openai(tail, object_arguments=own)] if isinstance(tail, list) else None
        except (ValueError, AttributeError, TypeError, RecursionError):
            return None  # decoded whole again, for the error message with its position

    def tool_schemas(self, span: SpanData) -> list[dict[str, Any]]:
        raw = span.attributes.get(sc.TOOL_DEFINITIONS)
        if isinstance(raw, str) and raw in self._tools:
            return self._tools[raw]
        known = _TOOL_SCHEMAS.get(raw) if isinstance(raw, str) else None
        if known is not None:
            schemas = json.loads(known)  # this run's own copy (its trajectory keeps it)
        else:
            tools = _json_attr(span, sc.TOOL_DEFINITIONS, expect=list) or []
            try:
                schemas = openai_tool_schemas(tools)
            except Exception as exc:
                raise IngestError(f"Span {span.span_id} ({span.name}): {sc.TOOL_DEFINITIONS} is not a list of tool schemas: {exc}") from exc
            if isinstance(raw, str) and _TOOL_SCHEMAS.seen_before(raw):
                _TOOL_SCHEMAS.put(raw, schemas)
        # (the cache above keeps them as the spans gave them: another assembly may redact with other rules)
        schemas = redact_tool_schemas(schemas, self._redactor)
        if isinstance(raw, str):
            self._tools[raw] = schemas
        return schemas


class _ToolSchemaCache:
    """``gen_ai.tool.definitions`` text -> the JSON text of its tool schemas (OpenAI form): an agent offers the same
    tools in every run, whose schemas are normalised once (:func:`~ee_middleware.messages.openai_tool_schemas`, a fifth
    of the tool spans' share of assembly) and decoded from this text by each run after.

    A text is kept the second time it is seen (the first time only its hash is), so that tools that change at every run
    (a description with the date or the user's name, dynamic MCP tools) cost what they cost without a cache: keeping a
    text costs about one more normalisation. The least recently used are dropped past ``max_entries`` sets or
    ``max_chars`` characters of text (64 MCP-sized sets, 100 tools each, would otherwise hold 20 MiB for the life of
    the process); a set over a quarter of ``max_chars`` is not kept. Thread-safe."""

    def __init__(self, max_entries: int = 64, max_chars: int = 4 << 20, max_seen: int = 1024) -> None:
        self.max_entries, self.max_chars, self.max_seen = max_entries, max_chars, max_seen
        self.entries: dict[str, str] = {}  # least recently used first
        self.chars = 0  # of the texts in entries, their keys with them
        self.seen: dict[int, None] = {}  # hashes of the texts seen once and not kept (yet), oldest first
        self._lock = threading.Lock()

    def get(self, raw: str) -> str | None:
        """The kept JSON text of the schemas of the definitions ``raw`` (made the most recently used), or ``None``."""
        if raw not in self.entries:
            return None
        with self._lock:
            known = self.entries.pop(raw, None)
            if known is not None:
                self.entries[raw] = known
            return known

    def seen_before(self, raw: str) -> bool:
        """Whether the definitions text ``raw`` was seen before and not kept; remembers it as seen where it was not."""
        key = hash(raw)
        with self._lock:
            if self.seen.pop(key, 0) is None:
                return True
            while len(self.seen) >= self.max_seen:
                self.seen.pop(next(iter(self.seen)), None)
            self.seen[key] = None
            return False

    def put(self, raw: str, schemas: list[dict[str, Any]]) -> None:
        """Keep ``schemas`` (of the definitions ``raw``) where their JSON text decodes to them exactly (plain JSON data,
        as :func:`~ee_middleware.messages.to_jsonable` makes it) and the pair fits in a quarter of ``max_chars``."""
        if len(raw) > self.max_chars // 4:
            return
        text = dumps(schemas)
        size = len(raw) + len(text)
        if size > self.max_chars // 4:
            return
        try:
            exact = json.loads(text) == schemas and text == dumps(json.loads(text))
        except (ValueError, RecursionError):
            return
        if not exact:
            return
        with self._lock:
            dropped = self.entries.pop(raw, None)
            if dropped is not None:
                self.chars -= len(raw) + len(dropped)
            while self.entries and (len(self.entries) >= self.max_entries or self.chars + size > self.max_chars):
                oldest = next(iter(self.entries))
                self.chars -= len(oldest) + len(self.entries.pop(oldest))
            self.entries[raw] = text
            self.chars += size


_TOOL_SCHEMAS = _ToolSchemaCache()
"""The tool schemas of the definitions texts seen in this process (capture's and ingest's runs)."""


UNKNOWN_TOOL = "unknown_tool"
"""The name of a tool span that has none, and of a call in a history that has none."""
NAMELESS_CALL = "(no name)"
"""The name of a malformed call the model wrote without one (LangChain's ``invalid_tool_calls`` entry whose ``name`` is
``None``): a name no tool can have (providers allow letters, digits, ``_`` and ``-``), so that no dataset teaches it as a
tool's and replay never looks for it in a sandbox (the call is malformed: see :func:`_tool_call`)."""


def _decision(chat: SpanData, redact: Any, memo: _RunMemo) -> dict[str, Any]:
    state = given = memo.input_messages(chat)
    system = chat.attributes.get(sc.SYSTEM_INSTRUCTIONS)
    if system and not (state and state[0].get("role") == "system"):
        state = [{"role": "system", "content": _system_text(system)}, *state]
    outputs = [m for m in _messages_attr(chat, sc.OUTPUT_MESSAGES) if m.get("role") in ("assistant", None)]
    errors = _error_positions(chat, len(state) - len(given))
    # "raw": the state before redaction, whose messages the run's spans share (compared by identity first: see _reply_to)
    return {
        "span": chat,
        "state": redact(state),
        "raw": state,
        "outputs": redact(outputs),
        "raw_outputs": outputs,
        "tools": memo.tool_schemas(chat),
        "told": sc.TOOL_DEFINITIONS in chat.attributes or sc.EE_RECORDER in chat.attributes,
        "errors": errors,
        "cut": _cut_positions(chat, len(state) - len(given)),
        "invalid": _positions(chat, sc.EE_INVALID_TOOL_CALL_POSITIONS),
    }


def _with_closing_tool_messages(
    messages: list[dict[str, Any]], last: dict[str, Any], root_output: list[dict[str, Any]], redact: Any
) -> list[dict[str, Any]]:
    """``messages`` (the last decision's state and its reply) with the tool messages the run ended on that answer the
    reply's calls: those of its root's output (``root_output``, redacted by ``redact``) after the output's last assistant
    message (capture's root holds only those; another instrumentation's may hold the whole conversation). Whether an
    earlier tool message has the same id does not matter: ``messages`` end on the reply, and a model may reuse ids
    across its turns (servers that number calls per reply: ``call_0`` every time)."""
    made = {c.get("id") for m in last["outputs"] for c in m.get("tool_calls") or ()}
    after = next((i + 1 for i in range(len(root_output) - 1, -1, -1) if root_output[i].get("role") == "assistant"), 0)
    closing = [m for m in root_output[after:] if m.get("role") == "tool" and m.get("tool_call_id") in made]
    return messages + redact(closing) if closing else messages


def _messages_without_model(root: SpanData, tools: list[SpanData], redact: Any, max_chars: int) -> list[dict[str, Any]]:
    """The messages of a run that called no model: its input (a resumed run's: the conversation it continued), a tool
    message per tool it ran (the calls were decided in an earlier run of the thread) that its input does not hold,
    then what it ended on."""
    messages = redact(_messages_attr(root, sc.INPUT_MESSAGES))
    given = {m.get("tool_call_id") for m in messages if m.get("role") == "tool" and m.get("tool_call_id")}
    for span in tools:
        if span.attributes.get(sc.TOOL_CALL_ID) and str(span.attributes[sc.TOOL_CALL_ID]) in given:
            continue
        observation, _ = _observation(span, None, redact, max_chars)
        assert observation is not None
        messages.append({"role": "tool", "tool_call_id": str(span.attributes.get(sc.TOOL_CALL_ID) or ""), "content": observation.content})
    known = {m.get("tool_call_id") for m in messages if m.get("role") == "tool"}
    for message in redact(_messages_attr(root, sc.OUTPUT_MESSAGES)):
        if not (message.get("role") == "tool" and message.get("tool_call_id") in known):
            messages.append(message)
    return messages


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        try:
            decoded = json.loads(system)
        except json.JSONDecodeError:
            return system
        system = decoded
    if isinstance(system, list):  # parts: GenAI's {"type": "text", "content"}, OpenAI/Anthropic's {"type": "text", "text"}, media
        return content_to_text(system)
    return str(system)


def _steps(
    decisions: list[dict[str, Any]], tools: list[SpanData], redact: Any, max_chars: int, final: dict[str, Any], catalog: ToolCatalog
) -> tuple[list[Step], str | None]:
    """The steps of the run's decisions; ``final``: the tool messages the run ended on (``state``) and the ids of those
    that report an error (``errors``: their positions there); ``catalog``: every tool schema the run offered (the
    trajectory's ``tools``), for each step's own (:func:`_step_tools`)."""
    tools_by_call: dict[str, list[SpanData]] = {}
    for t in tools:  # in start order; a model may reuse an id across its turns (servers that number calls per reply)
        if t.attributes.get(sc.TOOL_CALL_ID):
            tools_by_call.setdefault(str(t.attributes[sc.TOOL_CALL_ID]), []).append(t)
    unmatched = [t for t in tools if not t.attributes.get(sc.TOOL_CALL_ID)]
    later_tool_messages: dict[str, tuple[dict[str, Any], bool]] = {}
    for d in [*decisions, final]:
        for position, m in enumerate(d["state"]):
            if m.get("role") == "tool" and m.get("tool_call_id"):
                later_tool_messages.setdefault(m["tool_call_id"], (m, position in d["errors"]))
    reused = _reused_call_ids(decisions)
    unnamed = _UnnamedReplies(decisions, final)
    sent: dict[int, Any] = {}  # the arguments of tool spans that name no call id, decoded once (see _call_spans)
    states = _SharedStates()
    steps: list[Step] = []
    answers: list[tuple[int, str]] = []  # (decision, text) of each reply without calls
    for index, d in enumerate(decisions):
        if _discarded(index, decisions):
            continue
        chat: SpanData = d["span"]
        offered = _step_tools(d, catalog)
        until = decisions[index + 1]["span"].start_ns if index + 1 < len(decisions) else None
        written = [call for message in d["outputs"] for call in message.get("tool_calls") or []]
        # an invalid call (LangChain's invalid_tool_calls) gets only a tool span of its own id run for this decision: a
        # middleware repaired it and the graph ran it. One no tool ran (create_agent answers it itself) is malformed.
        # Every other call is one the model wrote well formed (a _raw-only one says so: see _tool_call)
        made = [_tool_call(call) for call in written]
        # an id several calls of the reply share (a server or proxy that gives every call the same one) tells none of
        # them apart: their spans are told by tool and arguments, their results by the tool messages' order after the reply
        ids = [call.id for call in made if call.id]
        shared = {call_id for call_id in ids if ids.count(call_id) > 1}
        matched = _call_spans(made, tools_by_call, unmatched, chat, until, sent, d["invalid"], shared)
        for position in d["invalid"] & set(range(len(written))):
            made[position] = _tool_call(written[position], malformed=matched[position] is None, ran=matched[position], redact=redact)
        spans_made = iter(matched)
        made_calls = iter(made)
        for output, message in enumerate(d["outputs"]):
            calls = message.get("tool_calls") or []
            text = content_to_text(message.get("content"))
            reasoning = message_reasoning(message)  # what a reasoning model wrote first: each of the reply's calls carries it
            turn = [(next(made_calls), next(spans_made)) for _ in calls]
            replies: list[tuple[dict[str, Any], bool] | None] = []
            unnamed_positions = []
            for position, (tool_call, _) in enumerate(turn):
                # ids are optional (Gemini's calls have none): the reply's place in the history tells
                named = tool_call.id and tool_call.id not in shared
                found = _reply_to(tool_call.id, index, decisions, final) if named else unnamed.answer(index, output, position)
                if found is None and named:  # a reused id: the message after this reply, not the first of the id anywhere
                    found = (
                        _reply_after(message, tool_call.id, index, decisions, final)
                        if tool_call.id in reused
                        else later_tool_messages.get(tool_call.id)
                    )
                replies.append(found)
                if not named:
                    unnamed_positions.append(position)
            _pair_by_span_results(replies, [turn[p][1] for p in unnamed_positions], unnamed_positions)
            for position, (tool_call, span) in enumerate(turn):
                reply, failed = replies[position] or (None, False)
                observation, latency = _observation(span, reply, redact, max_chars, failed, final["cut_replies"])
                # what the model said beside its calls ("Let me check both.") is part of its turn: kept with the first call
                action = Action(kind="tool_call", tool_call=tool_call, content=text or None if position == 0 else None, reasoning=reasoning)
                steps.append(_step(len(steps), index, states.of(index, d["state"], d["raw"]), action, observation, latency, chat, offered))
            if not calls and (text or _ended_on_empty_reply(index, output, decisions, chat)):
                # an empty reply that ended the run (after a tool result: the model stopping) is the model's last
                # decision too, an answer with empty content; the run's answer stays empty (None)
                answers.append((index, text))
                answer = Action(kind="answer", content=text, reasoning=reasoning)
                steps.append(_step(len(steps), index, states.of(index, d["state"], d["raw"]), answer, None, None, chat, offered))
    return _numbered_decisions(steps), _last_answer(answers, decisions)


def _pair_by_span_results(replies: list[tuple[dict[str, Any], bool] | None], spans: list[SpanData | None], positions: list[int]) -> None:
    """Pair the tool messages of a turn's calls without ids (``positions``, placed by their order after the reply:
    :class:`_UnnamedReplies`) by what the calls' tool spans say they returned, where that tells otherwise: an app that
    gives the model the results in the order the calls finished (parallel tools) put them out of the calls' order, and a
    call got another's result. Only where every such call's span recorded a result and the messages hold exactly those
    results (in some order) are they re-paired, each call to the message holding its own result."""
    if len(positions) < 2 or any(span is None or span.attributes.get(sc.TOOL_CALL_RESULT) is None for span in spans):
        return
    results = [_text_of(span.attributes[sc.TOOL_CALL_RESULT]) for span in spans if span is not None]
    found = [replies[p] for p in positions]
    texts = [_text_of(f[0].get("content")) if f is not None else None for f in found]
    if texts == results or sorted(map(str, texts)) != sorted(map(str, results)):
        return
    pool = list(range(len(found)))
    for position, result in zip(positions, results, strict=True):
        taken = next(j for j in pool if texts[j] == result)
        pool.remove(taken)
        replies[position] = found[taken]


def _text_of(value: Any) -> str:
    """A tool result or a tool message's content as text, to compare them."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else content_to_text(value)


def _numbered_decisions(steps: list[Step]) -> list[Step]:
    """``steps`` with ``decision_index`` counting the decisions that are steps, 0, 1, ...: a model call that decided
    nothing kept (a failed attempt a retry asked again, a reply a middleware threw away, a router's) takes no number."""
    ranks = {decision: rank for rank, decision in enumerate(dict.fromkeys(s.decision_index for s in steps))}
    if all(rank == decision for decision, rank in ranks.items()):
        return steps
    return [s.model_copy(update={"decision_index": ranks[s.decision_index]}) for s in steps]


def _ended_on_empty_reply(index: int, output: int, decisions: list[dict[str, Any]], chat: SpanData) -> bool:
    """Whether the empty reply ``output`` of decision ``index`` is the run's last decision (the model stopping after a
    tool's result: many do once a tool said it all), and not a failed call's or one a later decision replaced."""
    state = decisions[index]["state"]
    after_a_tool = bool(state) and state[-1].get("role") == "tool"  # an empty first reply to the user teaches nothing
    return after_a_tool and index == len(decisions) - 1 and output == len(decisions[index]["outputs"]) - 1 and not chat.is_error


def _last_answer(answers: list[tuple[int, str]], decisions: list[dict[str, Any]]) -> str | None:
    """The run's answer where its output said none: the last non-empty reply without calls, unless other replies
    without calls came from parallel branches of the same node (:func:`_parallel`: ``Send`` fan-out) and the last one's
    conversation does not hold them: those are several answers, none of which the run gave (picking the last would pick
    whichever branch ended last), and the run has ``None``. Replies of other nodes (a router's label, a chain's draft
    that a later node polishes), of the same node run again later (a retry, an evaluator-optimizer loop) and of branches
    inside subgraphs or Functional API tasks (which cannot be told apart from sequential runs) leave the last reply the
    answer."""
    texts = [(index, text) for index, text in answers if text]
    if not texts:
        return None
    last_index, last_text = texts[-1]
    last = decisions[last_index]["span"]
    said = [content_to_text(m.get("content")) for m in decisions[last_index]["state"]]
    for index, text in texts[:-1]:
        if _parallel(decisions[index]["span"], last) and not any(text in content for content in said if content):
            return None
    return last_text


def _parallel(one: SpanData, other: SpanData) -> bool:
    """Whether two model calls ran in parallel branches of one node of the graph itself (``Send`` fan-out): the same
    node, other tasks of it (their checkpoint namespaces, ``node:task``), in the same graph step (a node run again
    later, a retry, has another). Calls inside subgraphs, an agent a node invokes or Functional API tasks
    (``node:task|inner:task``) do not tell: their steps are their subgraphs' own, the same for a branch run beside
    another and for one run again later, so they are not taken as parallel (the last reply stays the answer). Spans
    that do not say (other instrumentations) are not either."""
    here, there = one.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS), other.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS)
    if not here or not there or "|" in str(here) or "|" in str(there):
        return False
    (node, _, task), (other_node, _, other_task) = (str(ns).partition(":") for ns in (here, there))
    step = one.attributes.get(sc.EE_LANGGRAPH_STEP)
    return node == other_node and task != other_task and step is not None and step == other.attributes.get(sc.EE_LANGGRAPH_STEP)


def _reviewed_turns(
    root: SpanData,
    decisions: list[dict[str, Any]],
    tools: list[SpanData],
    redact: Any,
    max_chars: int,
    unread: bool = False,
    cut_replies: Mapping[tuple[Any, str], int] | None = None,
) -> tuple[list[Step], list[SpanData]]:
    """The turns of an earlier run of the thread that this run carried out, as steps, and the tool spans left for this
    run's own decisions.

    A run resumed after a human review (``HumanInTheLoopMiddleware``, a breakpoint, ``interrupt()`` in a tool: its root
    span says :data:`~ee_middleware.capture.semconv.EE_RESUMED`, the graph's input was ``Command(resume=...)`` or
    ``None``) first runs the calls the paused run's model
    made, as the reviewer decided them; the paused trajectory ends on those calls without an observation, and datasets
    never teach them from there. Here each such turn (the assistant message, found in the history the first model call
    after it was given, of those that start a branch: parallel branches resumed together each have their own) becomes
    steps before this run's own, in the message's order, with the state the model decided in. A call this run ran is taught as it ran: a reviewer's edit (other arguments, or another tool) is the action,
    observed by the tool's own result (the message the model got also holds LangChain's note about the edit); an
    approved call is the model's own. Another call of that turn which this run did not run is kept only where the
    history answers it without an error (it ran before the pause, or the reviewer answered for the tool: ``respond``):
    a call answered with an error and not run (``reject``) is no step. A turn none of whose calls ran here (all rejected
    or answered by the reviewer) is none either, nor is any in a run that calls no model: nothing in it says what prompt
    and tools the model had.

    ``unread``: the same for a run that was not resumed (:attr:`AssemblyOptions.unread_model_calls`): its tool spans
    before its first model span ran calls of a model call whose span was not read (ingest: in a file not read with
    this one)."""
    if not decisions or not (root.attributes.get(sc.EE_RESUMED) or unread):
        # No model call, or a run started from new input: a tool that ran before its first model call is the app's
        # own (a node that calls a tool itself), never a reviewed turn.
        return [], tools
    made_here = {str(c.get("id")) for d in decisions for m in d["raw_outputs"] for c in m.get("tool_calls") or () if c.get("id")}
    runs_of: dict[str, list[SpanData]] = {}
    for span in tools:
        call_id = span.attributes.get(sc.TOOL_CALL_ID)
        if call_id and str(call_id) not in made_here:
            runs_of.setdefault(str(call_id), []).append(span)
    # A carried call's turn is in the history of the first model call after it that was given it, one whose history
    # holds no call of this run's (its branch's first): parallel branches resumed together (two subagents, each paused
    # in a tool) each give theirs only to their own model calls. A call a node wrote later on is no reviewed turn.
    firsts = [
        (number, d)
        for number, d in enumerate(decisions)
        if not any(c.get("id") in made_here for m in d["raw"] if m.get("role") == "assistant" for c in m.get("tool_calls") or ())
    ]
    made_at: dict[tuple[int, int], list[str]] = {}
    carried: dict[str, list[SpanData]] = {}
    for call_id, runs in runs_of.items():
        for number, decision in firsts:
            if decision["span"].start_ns <= runs[0].start_ns:
                continue
            history = decision["state"]
            position = next(
                (
                    i
                    for i in range(len(history) - 1, -1, -1)
                    if history[i].get("role") == "assistant" and any(c.get("id") == call_id for c in history[i].get("tool_calls") or ())
                ),
                None,
            )
            if position is not None:
                made_at.setdefault((number, position), []).append(call_id)
                carried[call_id] = runs
                break
    if not carried:
        return [], tools
    steps: list[Step] = []
    used: set[int] = set()
    for turn, (number, position) in enumerate(sorted(made_at)):
        history, errors = decisions[number]["state"], decisions[number]["errors"]
        message = history[position]
        text = content_to_text(message.get("content")) or None
        taught: list[tuple[ToolCall, Observation | None, float | None]] = []
        changed = False  # a call the reviewer edited, or left out of the turn (rejected, never answered)
        for call in message.get("tool_calls") or ():
            proposed = _tool_call(call)
            found = _tool_reply(history, position + 1, proposed.id) if proposed.id else None
            reply, failed = (found[1], found[0] in errors) if found is not None else (None, False)
            runs = carried.get(proposed.id) if proposed.id in made_at[(number, position)] else None
            if runs:
                span = runs[-1]  # a retried call's result is its last attempt's
                used.update(id(s) for s in runs)
                ran = _as_ran(proposed, span, redact)
                edited = (ran.name, ran.arguments) != (proposed.name, proposed.arguments)
                changed = changed or edited
                observation, latency = _observation(
                    span, None if edited else reply, redact, max_chars, False if edited else failed, cut_replies
                )
                taught.append((ran, observation, latency))
            elif reply is not None and not failed:
                taught.append((proposed, *_observation(None, reply, redact, max_chars, cut_replies=cut_replies)))
            else:
                changed = True  # not run: rejected by the reviewer, or never answered
        # the model's reasoning argued for the turn it proposed: kept only where the turn is taught as proposed
        reasoning = None if changed else message_reasoning(message)
        for i, (tool_call, observation, latency) in enumerate(taught):
            action = Action(kind="tool_call", tool_call=tool_call, content=text if i == 0 else None, reasoning=reasoning)
            steps.append(
                Step(
                    trajectory_id="",
                    index=len(steps),
                    decision_index=turn,
                    state=history[:position],
                    action=action,
                    observation=observation,
                    latency_ms=latency,
                )
            )
    return steps, [t for t in tools if id(t) not in used]


def _reviewed_without_model(paused: list[Step], tools: list[SpanData], redact: Any, max_chars: int) -> tuple[list[Step], list[SpanData]]:
    """The reviewed turn of a run resumed after a human review that called no model (a ``return_direct`` tool ended it;
    a reviewed tool raised and ended it), as steps, and the tool spans left; ``paused``: the paused run's steps awaiting
    review of that turn (see :data:`PausedSteps`). Nothing in such a run's spans says what the model was given (its
    system prompt, its tools), so the turn is the paused decision's: in its state, each call this run ran taught as it
    ran (a reviewer's edit as the reviewer's call), observed by the tool's own result or error, as
    :func:`_reviewed_turns` teaches a turn whose resume called a model; a call it did not run (rejected) is no step."""
    runs_of: dict[str, list[SpanData]] = {}
    for span in tools:
        if span.attributes.get(sc.TOOL_CALL_ID):
            runs_of.setdefault(str(span.attributes[sc.TOOL_CALL_ID]), []).append(span)
    taught: list[tuple[ToolCall, Observation | None, float | None]] = []
    used: set[int] = set()
    changed = False  # a call the reviewer edited, or left out of the turn
    for step in paused:
        proposed = step.action.tool_call
        runs = runs_of.get(proposed.id) if proposed is not None and proposed.id else None
        if proposed is None or not runs:
            changed = True
            continue
        span = runs[-1]  # a retried call's result is its last attempt's
        used.update(id(s) for s in runs)
        ran = _as_ran(proposed, span, redact)
        changed = changed or (ran.name, ran.arguments) != (proposed.name, proposed.arguments)
        taught.append((ran, *_observation(span, None, redact, max_chars)))
    first = paused[0]
    reasoning = None if changed else first.action.reasoning  # it argued for the turn as proposed
    steps = [
        Step(
            trajectory_id="",
            index=i,
            decision_index=0,
            state=first.state,
            action=Action(kind="tool_call", tool_call=call, content=first.action.content if i == 0 else None, reasoning=reasoning),
            observation=observation,
            latency_ms=latency,
        )
        for i, (call, observation, latency) in enumerate(taught)
    ]
    return steps, [t for t in tools if id(t) not in used]


def _reviewed_tools(reviewed: list[Step], offered: ToolCatalog, look_up: Callable[[list[str]], list[dict[str, Any]] | None]) -> list[Step]:
    """The reviewed turns (:func:`_reviewed_turns`), each with the tools its decision was offered; those of their
    schemas the run's tools (``offered``) lack are added to it.

    The paused run's decision was offered what ``look_up(call_ids)`` says (a middleware choosing the tools per call:
    ``LLMToolSelectorMiddleware``, a ``wrap_model_call`` setting ``request.tools``, may have offered it tools none of
    this run's model calls was); a turn calling a tool it was not offered (a reviewer's edit to another tool) is left
    out: it is no decision the model made with those tools. Where that is not known (the paused run was not recorded
    to this store), a turn gets this run's own tools, and is left out if it calls a tool none of them is: a row
    offering them would teach a call of a tool it does not list. ``Step.tools`` is set only where the turn's tools are
    not the run's, so a run whose tools never change is recorded as before. Renumbered."""
    own = offered.default_refs()
    kept: list[tuple[list[Step], list[str]]] = []
    for turn in dict.fromkeys(s.decision_index for s in reviewed):
        steps = [s for s in reviewed if s.decision_index == turn]
        schemas = look_up([s.action.tool_call.id for s in steps if s.action.tool_call is not None and s.action.tool_call.id])
        names = own if schemas is None else _tool_names(schemas)
        if any(s.action.tool_call is not None and s.action.tool_call.name not in names for s in steps):
            continue
        kept.append((steps, own if schemas is None else offered.refs(schemas)))
    out: list[Step] = []
    for turn, (steps, refs) in enumerate(kept):
        # as a record read from JSON: ``tools`` set only where there are some (see _step)
        step_tools = offered.step_tools(refs)
        update: dict[str, Any] = {} if step_tools is None else {"tools": step_tools}
        base = len(out)  # read once: a generator reading len(out) while extend appends counted each step twice
        out.extend(s.model_copy(update={"index": base + i, "decision_index": turn, **update}) for i, s in enumerate(steps))
    return out


def _discarded(index: int, decisions: list[dict[str, Any]]) -> bool:
    """Whether decision ``index``'s reply was thrown away and the model asked again: the first later decision given this
    same history goes on with no assistant message (nothing, or a correction such as "quantities over 100 are not
    allowed"), where a reply that was kept would be. A middleware does this (a guardrail in ``wrap_model_call`` calling
    its handler again; a retry after a check of the reply failed). Such a reply never acted: it is no step (an IL row
    would teach the rejected action). Parallel branches given the same history go on with their own replies; another
    model call on it (a router's, with its own tools or model) is no second ask, nor is a call of another graph task
    (parallel ``Send`` branches asked the same question: best-of-N, self-consistency) or one that started before this
    reply was given."""
    decision = decisions[index]
    seen = decision["raw"]
    start = len(seen)
    if not decision["outputs"]:
        return False
    for later in decisions[index + 1 :]:
        if not _may_ask_again(decision["span"], later["span"]):
            continue
        state = later["raw"]
        if len(state) >= start and state[:start] == seen:
            if any(decision["span"].end_ns <= at < later["span"].start_ns for at in decision.get("ran_at", ())):
                return False  # a tool ran one of its calls before the model was asked again: the reply acted (a handoff)
            asked_again = len(state) == start or state[start].get("role") != "assistant"
            return asked_again and later["tools"] == decision["tools"] and _span_model(later["span"]) == _span_model(decision["span"])
    return False


def _note_tool_runs(decisions: list[dict[str, Any]], tools: Sequence[SpanData]) -> None:
    """Note on each decision when tool spans ran calls of its reply (by call id: ``ran_at``, their start times), which
    :func:`_discarded` reads: a reply a tool acted on was not thrown away, whatever model call comes after it."""
    starts: dict[str, list[int]] = {}
    for span in tools:
        call_id = span.attributes.get(sc.TOOL_CALL_ID)
        if call_id:
            starts.setdefault(str(call_id), []).append(span.start_ns)
    if not starts:
        return
    for decision in decisions:
        ids = {str(c.get("id")) for m in decision["raw_outputs"] for c in m.get("tool_calls") or () if c.get("id")}
        ran = [at for call_id in ids for at in starts.get(call_id, ())]
        if ran:
            decision["ran_at"] = ran


def _may_ask_again(first: SpanData, later: SpanData) -> bool:
    """Whether model call ``later`` may be the same graph task asking again after ``first`` replied: it started once
    ``first`` had ended, in the same LangGraph task (checkpoint namespace) where both spans name theirs."""
    here, there = first.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS), later.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS)
    if here is not None and there is not None and here != there:
        return False
    return later.start_ns >= first.end_ns


def _take_tool_span(spans: list[SpanData] | None, chat: SpanData, until: int | None, arguments: dict[str, Any]) -> SpanData | None:
    """The tool span of a call id that gave the model's decision ``chat`` its result (removed from ``spans``, with the
    attempts before it): the last of those that started after the decision and before the next one (``until``), as a
    retried call (``ToolRetryMiddleware``) has a span per attempt and its result is the last one's; else the first
    that started after the decision. A reused id (a model numbering its calls per reply) has one span per turn; where
    branches run at once (``Send``), the spans run with the call's own arguments are preferred."""
    if not spans:
        return None
    after = [i for i, s in enumerate(spans) if s.start_ns >= chat.start_ns]
    if not after:
        return spans.pop(0)
    if len(after) > 1:
        after = [i for i in after if _span_arguments(spans[i]) == arguments] or after
    attempts = [i for i in after if until is None or spans[i].start_ns < until] or after[:1]
    taken = spans[attempts[-1]]
    for i in reversed(attempts):
        del spans[i]
    return taken


def _take_shared_span(
    spans: list[SpanData] | None, chat: SpanData, until: int | None, name: str, arguments: dict[str, Any]
) -> SpanData | None:
    """The first span (removed from ``spans``) of an id several calls of decision ``chat``'s reply share that ran for
    this decision (after it, before the next one: ``until``) with tool ``name`` and ``arguments``; else None."""
    for i, span in enumerate(spans or ()):
        ran = span.start_ns >= chat.start_ns and (until is None or span.start_ns < until)
        if ran and span.attributes.get(sc.TOOL_NAME) == name and _span_arguments(span) == arguments:
            return spans.pop(i)
    return None


def _span_arguments(span: SpanData) -> dict[str, Any] | None:
    raw = span.attributes.get(sc.TOOL_CALL_ARGUMENTS)
    try:
        return parse_arguments(raw)
    except (TypeError, ValueError, RecursionError):
        return None


def _reply_to(call_id: str, index: int, decisions: list[dict[str, Any]], final: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """The tool message answering decision ``index``'s call ``call_id`` in the history a later decision saw: after that
    decision's reply, which sits where its state ended, and whether it reports an error. None when no
    later history holds the reply there (a middleware that rewrote the history; a subagent's own history): then the
    first tool message with the id answers it.

    The run's last calls are answered by the tool messages the run ended on (``final``)."""
    if not call_id:
        return None
    seen = decisions[index]["raw"]
    start = len(decisions[index]["state"])
    for later in decisions[index + 1 :]:
        state = later["state"]
        if (
            len(state) > start
            and any(c.get("id") == call_id for c in state[start].get("tool_calls") or ())
            and later["raw"][:start] == seen  # this history, not a parallel branch's (Send) with a reused id
        ):
            found = _tool_reply(state, start + 1, call_id)
            if found is not None:
                return found[1], found[0] in later["errors"]
    if index == len(decisions) - 1:
        found = _tool_reply(final["state"], 0, call_id)
        return (found[1], found[0] in final["errors"]) if found is not None else None
    return None


class _UnnamedReplies:
    """The tool messages answering calls that have no ids (optional in the GenAI conventions; Gemini's, Ollama's), for
    one run: the tool messages right after a reply in a later history answer its calls, in their order.

    Each reply is looked up once, for all its calls (:meth:`answer`), and each message's calls are decoded once
    (:meth:`_key`, by identity: the histories of a run's decisions share their messages, see :class:`_RunMemo`), with
    each decision's assistant messages indexed by their calls when first needed. Looking a reply up per call, decoding
    every later history's calls each time, made ingest cubic in the run's length (120 decisions: 14.7 s, where 0.14 s
    before calls without ids were paired)."""

    def __init__(self, decisions: list[dict[str, Any]], final: dict[str, Any]) -> None:
        self._decisions = decisions
        self._final = final
        self._keys: dict[int, tuple[dict[str, Any], tuple[Any, ...]]] = {}  # id(message) -> (message, its calls)
        self._last_with: dict[int, dict[tuple[Any, ...], int]] = {}  # decision -> its calls -> last assistant position
        self._assistants: dict[int, list[int]] = {}  # decision -> positions of its history's assistant messages
        self._common: dict[int, int] = {}  # decision i -> how many first messages its history shares with i + 1's
        self._pairs: dict[tuple[int, int], list[tuple[dict[str, Any], bool]] | None] = {}

    def answer(self, index: int, output: int, position: int) -> tuple[dict[str, Any], bool] | None:
        """The tool message answering the call at ``position`` of decision ``index``'s reply ``output`` (its place in
        the decision's outputs), and whether it reports an error; ``None`` where no history says which it is.

        The reply is found in a later history going on from this decision's (right after it), else as the last message
        with these calls (names and arguments) in the nearest later history holding one (an app sending the model its
        last messages only); the run's last reply is answered by the tool messages it ended on alike."""
        key = (index, output)
        if key not in self._pairs:
            self._pairs[key] = self._find(index, output)
        found = self._pairs[key]
        return None if found is None else found[position]

    def _find(self, index: int, output: int) -> list[tuple[dict[str, Any], bool]] | None:
        decisions = self._decisions
        message, raw = decisions[index]["outputs"][output], decisions[index]["raw_outputs"][output]
        calls = self._key(raw)
        seen = decisions[index]["raw"]
        shared = len(seen)  # the fewest first messages the histories from this decision's to the one looked at share
        # where the last history looked at gave nothing: how many of its first messages that depended on, how many of them
        # every history since shares (a history that holds the same ones gives nothing either), and its reply's place
        tried: dict[int, int] = {}
        depended, since, last_at = -1, 0, -1
        for j in range(index + 1, len(decisions)):
            common = self._common_with_next(j - 1)
            shared, since = min(shared, common), min(since, common)
            d = decisions[j]
            # a history going on from this decision's: known from the histories between (each going on from the one
            # before it), else compared (a parallel branch between them)
            if len(d["raw"]) < len(seen) or (shared < len(seen) and d["raw"][: len(seen)] != seen):
                continue
            if 0 <= depended <= since:
                tried[j] = last_at
                continue
            after = self._assistants_of(j)
            at = after[bisect.bisect_left(after, len(seen))] if after and after[-1] >= len(seen) else None
            if at is None:
                depended = -1
                continue
            if self._key(d["raw"][at]) != calls:
                found, depended = None, at + 1
            else:
                found, depended = self._pair(d, at, message)
            if found is not None:
                return found
            tried[j], since, last_at = at, len(d["raw"]), at
        for j in range(index + 1, len(decisions)):
            at = self._last_with_calls(j).get(calls)
            if at is None or tried.get(j) == at:
                continue  # no such reply, or the one the history going on from this decision's gave nothing at
            found, _ = self._pair(decisions[j], at, message)
            if found is not None:
                return found
        if index == len(decisions) - 1 and len(decisions[index]["outputs"]) == 1:
            return self._pair(self._final, -1, message)[0]
        return None

    def _pair(self, d: dict[str, Any], at: int, message: dict[str, Any]) -> tuple[list[tuple[dict[str, Any], bool]] | None, int]:
        """The answers of the calls of reply ``message``, in their order, from the tool messages that follow ``d``'s
        message ``at`` (-1: from its first message on; else the reply's copy), with whether each reports an error; None
        where they do not tell which answers which. There must be one per call before a message of another role; a
        response whose id names one of the reply's calls (here or in the copy) answers that call, the others answer the
        calls without an id in their order. Where a call with an id has no response of its id, or an id is answered
        twice, nothing is guessed. With how many first messages of ``d``'s history that depended on (-1: all of them,
        as it ended on tool messages: a longer history may hold more)."""
        state = d["state"]
        block = []
        for i in range(at + 1, len(state)):
            if state[i].get("role") != "tool":
                break
            block.append(i)
        depended = at + len(block) + 2 if at + len(block) + 1 < len(state) else -1
        calls = message.get("tool_calls") or []
        if len(block) != len(calls):
            return None, depended
        copy = (state[at].get("tool_calls") or []) if at >= 0 else []
        ids = [call.get("id") or (copy[p].get("id") if p < len(copy) else None) or None for p, call in enumerate(calls)]
        ids = [call_id if ids.count(call_id) == 1 else None for call_id in ids]  # one several calls share names none
        named: dict[Any, int] = {}
        for i in block:
            call_id = state[i].get("tool_call_id")
            if call_id and call_id in ids:
                if call_id in named:
                    return None, depended
                named[call_id] = i
        given = [call_id for call_id in ids if call_id]
        if len(named) != len(given) or len(set(given)) != len(given):
            return None, depended
        rest = iter(i for i in block if i not in named.values())
        chosen = [named[call_id] if call_id else next(rest) for call_id in ids]
        return [(state[i], i in d["errors"]) for i in chosen], depended

    def _key(self, message: dict[str, Any]) -> tuple[Any, ...]:
        """``message``'s tool calls as (name, arguments decoded), their ids left out, in a form that can be hashed."""
        known = self._keys.get(id(message))
        if known is not None and known[0] is message:
            return known[1]
        key = tuple((name, _hashable(arguments)) for _, name, arguments in _calls_key(message))
        self._keys[id(message)] = (message, key)
        return key

    def _assistants_of(self, j: int) -> list[int]:
        if j not in self._assistants:
            self._assistants[j] = [i for i, m in enumerate(self._decisions[j]["state"]) if m.get("role") == "assistant"]
        return self._assistants[j]

    def _last_with_calls(self, j: int) -> dict[tuple[Any, ...], int]:
        if j not in self._last_with:
            history = self._decisions[j]["raw"]
            self._last_with[j] = {self._key(history[i]): i for i in self._assistants_of(j)}
        return self._last_with[j]

    def _common_with_next(self, i: int) -> int:
        """How many first messages decision ``i``'s history shares with decision ``i + 1``'s."""
        if i not in self._common:
            here, there = self._decisions[i]["raw"], self._decisions[i + 1]["raw"]
            if len(there) >= len(here) and there[: len(here)] == here:
                self._common[i] = len(here)
            else:
                self._common[i] = next(
                    (n for n, (a, b) in enumerate(zip(here, there, strict=False)) if a is not b and a != b), min(len(here), len(there))
                )
        return self._common[i]


def _hashable(value: Any) -> Any:
    """Decoded JSON as a value that can be hashed, equal where the values are equal (objects as sets of their items)."""
    if isinstance(value, Mapping):
        return frozenset((k, _hashable(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return ("unhashable", repr(value))
    return value


def _reused_call_ids(decisions: list[dict[str, Any]]) -> set[str]:
    """The call ids the run's replies reuse: made by more than one reply, or by a reply whose own history already answers
    a call of that id (a model server or proxy numbering its calls per reply: every reply's first call ``call_0``)."""
    made: dict[str, int] = {}
    reused: set[str] = set()
    for d in decisions:
        ids = {c.get("id") for m in d["outputs"] for c in m.get("tool_calls") or () if c.get("id")}
        answered = {m.get("tool_call_id") for m in d["state"] if m.get("role") == "tool"} if ids else set()
        for call_id in ids:
            made[call_id] = made.get(call_id, 0) + 1
            if made[call_id] > 1 or call_id in answered:
                reused.add(call_id)
    return reused


def _reply_after(
    message: dict[str, Any], call_id: str, index: int, decisions: list[dict[str, Any]], final: dict[str, Any]
) -> tuple[dict[str, Any], bool] | None:
    """The tool message answering call ``call_id`` of decision ``index``'s reply ``message`` where the id is reused
    (:func:`_reused_call_ids`) and no later history goes on with this decision's (:func:`_reply_to`; an app sending the
    model only its last messages): in the nearest later history holding this reply (the same calls: ids, names and
    arguments), the tool message of the id that follows it, before the next assistant message; failing that, in the
    next decision's history, one of the id before any assistant message (the window cut the reply off). Not the first
    message of the id anywhere: that may answer another reply's call of the same id. With whether it reports an error."""
    calls = _calls_key(message)
    for later in [*decisions[index + 1 :], final]:
        state = later["state"]
        for start in range(len(state) - 1, -1, -1):
            if state[start].get("role") == "assistant" and _calls_key(state[start]) == calls:
                found = _tool_reply(state, start + 1, call_id)
                if found is not None and not any(m.get("role") == "assistant" for m in state[start + 1 : found[0]]):
                    return found[1], found[0] in later["errors"]
                break
    if index + 1 < len(decisions):
        following = decisions[index + 1]
        found = _tool_reply(following["state"], 0, call_id)
        if found is not None and not any(m.get("role") == "assistant" for m in following["state"][: found[0]]):
            return found[1], found[0] in following["errors"]
    return None


def _calls_key(message: dict[str, Any]) -> list[tuple[Any, Any, Any]]:
    """An assistant message's tool calls as (id, name, arguments decoded): a reply and its copy in a later history alike."""
    out = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments: Any = parse_arguments(function.get("arguments"))
        except (TypeError, ValueError, RecursionError):
            arguments = function.get("arguments")
        out.append((call.get("id"), function.get("name"), arguments))
    return out


def _tool_reply(messages: list[dict[str, Any]], start: int, call_id: str) -> tuple[int, dict[str, Any]] | None:
    """The position and the first tool message answering ``call_id`` from ``start`` on."""
    return next(
        ((i, m) for i, m in enumerate(messages[start:], start) if m.get("role") == "tool" and m.get("tool_call_id") == call_id), None
    )


def _cut_positions(span: SpanData, shift: int) -> dict[int, int]:
    """The positions of the tool messages capture cut in ``span``'s messages, each with the characters it cut
    (:data:`~ee_middleware.capture.semconv.EE_TOOL_TRUNCATED`), moved by ``shift`` (a system message put before them)."""
    pairs = span.attributes.get(sc.EE_TOOL_TRUNCATED)
    if not isinstance(pairs, Sequence) or isinstance(pairs, str):
        return {}
    cut: dict[int, int] = {}
    for position, chars in zip(pairs[::2], pairs[1::2], strict=False):
        with contextlib.suppress(TypeError, ValueError):
            cut[int(position) + shift] = int(chars)
    return cut


def _reply_key(message: Mapping[str, Any]) -> tuple[Any, str]:
    """A tool message as :func:`_cut_replies` knows it: its call's id and its content (ids alone may repeat)."""
    content = message.get("content")
    return message.get("tool_call_id"), content if isinstance(content, str) else json.dumps(content, sort_keys=True, default=str)


def _cut_replies(parts: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, str], int]:
    """The tool messages capture cut, in the run's decisions' states and the messages it ended on (``parts``: each with
    its ``state`` and ``cut`` positions), by :func:`_reply_key`, each with the characters cut."""
    cut: dict[tuple[Any, str], int] = {}
    for part in parts:
        state = part["state"]
        for position, chars in part.get("cut", {}).items():
            if 0 <= position < len(state) and state[position].get("role") == "tool":
                cut[_reply_key(state[position])] = chars
    return cut


def _error_positions(span: SpanData, shift: int) -> frozenset[int]:
    """The positions of the tool messages that report an error in ``span``'s messages (``ee.tool_call.error_positions``),
    moved by ``shift`` (a system message put before them)."""
    return frozenset(p + shift for p in _positions(span, sc.EE_TOOL_ERROR_POSITIONS))


def _positions(span: SpanData, key: str) -> frozenset[int]:
    """The positions ``span``'s attribute ``key`` lists (integers, or their text)."""
    positions = span.attributes.get(key) or ()
    return frozenset(int(p) for p in positions if isinstance(p, int) or str(p).isdigit())


class _SharedStates:
    """The steps' states, each message's dict one for the run: a decision's state is the one before it and more, and the
    run's spans share their messages' dicts (:meth:`_RunMemo.input_messages`), so steps share them instead of each
    holding copies (a run of 2,000 steps held 2 GiB of copies, growing with the square of its length; ``Step`` would copy
    each dict it validates, so :func:`_step` sets the state as it is). A message is known by its dict before redaction
    (``raw``, shared by the decisions; redaction gives each decision's state new dicts, the same for the same message)."""

    def __init__(self) -> None:
        self._messages: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}  # id of a raw message -> (it, its dict)
        self._states: dict[int, list[dict[str, Any]]] = {}  # decision index -> its state

    def of(self, decision: int, state: list[dict[str, Any]], raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
        shared = self._states.get(decision)
        if shared is None:
            # (redaction keeps a list's length: one that did not is validated alone, as Step would)
            same = len(raw) == len(state)
            shared = [self._message(m, r) for m, r in zip(state, raw, strict=True)] if same else _validated_state(state)
            self._states[decision] = shared
        return shared

    def _message(self, message: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
        known = self._messages.get(id(raw))
        if known is not None and known[0] is raw:  # (the dict kept beside it: its id is no other dict's)
            return known[1]
        if type(message) is not dict or any(type(key) is not str for key in message):  # what Step would make of it
            [message] = _validated_state([message])
        self._messages[id(raw)] = (raw, message)
        return message


def _validated_state(state: list[Any]) -> list[dict[str, Any]]:
    """``state`` as ``Step`` validates it (each message a new dict; what is no message raises as ``Step`` does)."""
    return Step.model_validate({**_STEP_STUB, "state": state}).state


_STEP_STUB: dict[str, Any] = {"trajectory_id": "", "index": 0, "decision_index": 0, "action": {"kind": "answer"}}
"""A step's other fields, to validate a state alone."""


def _step(
    i: int,
    decision: int,
    state: list[dict[str, Any]],
    action: Action,
    obs: Observation | None,
    latency: float | None,
    chat: SpanData,
    offered: list[str] | None,
) -> Step:
    # Step.tools set only where the decision's tools were not the run's, as a record read from JSON (fields set included)
    extra: dict[str, Any] = {} if offered is None else {"tools": offered}
    step = Step(
        trajectory_id="",
        index=i,
        decision_index=decision,
        state=[],
        action=action,
        observation=obs,
        latency_ms=latency,
        model_latency_ms=chat.duration_ms,
        **extra,
    )
    step.state = state  # (as it is: validated, each dict would be copied; see _SharedStates)
    return step


def _step_tools(decision: dict[str, Any], catalog: ToolCatalog) -> list[str] | None:
    """The names of the tools offered at ``decision`` (``Step.tools``), in the order offered; ``None`` where they are
    the run's (:meth:`ToolCatalog.step_tools`), or where its span does not say (an instrumentation that records no tool
    definitions: the capture's own spans leave them out only where the model was offered none)."""
    if not decision["told"]:
        # all of the run's, as far as is known; named where a tool varies (None would offer every schema of its name)
        return catalog.default_refs() if catalog.varies else None
    return catalog.step_tools(catalog.refs(decision["tools"]))


def _tool_names(schemas: list[dict[str, Any]]) -> list[str]:
    """The names of ``schemas`` (a schema without one is left out), in their order."""
    return [name for name in map(tool_schema_name, schemas) if name is not None]


def _tool_call(call: dict[str, Any], *, malformed: bool = False, ran: SpanData | None = None, redact: Any = None) -> ToolCall:
    """A reply's tool call (OpenAI shape) as a step's. A ``malformed`` one (LangChain held it as ``invalid_tool_calls``:
    :data:`~ee_middleware.capture.semconv.EE_INVALID_TOOL_CALL_POSITIONS`, and no tool ran it) keeps the text the model
    wrote under ``_raw`` whatever it parses to (JSON that is no object, or an object a parser or a schema check refused),
    as text that is no JSON is (:func:`~ee_middleware.messages.parse_arguments`), and is marked so
    (``ToolCall.malformed``): replay leaves it to the graph that answered it and IL leaves it out, even where the tool
    declares a ``_raw`` parameter. One without a name is named :data:`NAMELESS_CALL`.

    An invalid call that a tool span of its id ran (``ran``: a ``wrap_model_call`` middleware repaired it, and the graph
    ran it) is the call that tool received: its name and arguments as the span holds them (redacted by ``redact``), where
    its arguments attribute is a JSON object (:func:`_span_object`); else as the model wrote them.

    Any other call is one the model wrote well formed: where its only argument is ``_raw`` and the model wrote an object
    (its arguments text decodes to one: the key is the model's own, not the one :func:`parse_arguments` puts text that
    is no object under), or a tool received that object, it is marked so (``ToolCall.malformed`` ``False``), whether or
    not its tool ran without error or exists: its arguments alone would read as a malformed call's. Capture's own runs
    write every call LangChain held in ``tool_calls`` as its JSON (and every other one at
    :data:`~ee_middleware.capture.semconv.EE_INVALID_TOOL_CALL_POSITIONS`), so each such call is marked; another
    recorder's whose text was no object (``Paris``: the tool got the text) is left unmarked, and judged by its shape."""
    function = call.get("function", {})
    arguments = function.get("arguments")
    if malformed:
        text = arguments if isinstance(arguments, str) else arguments_json(arguments)
        return ToolCall(id=call.get("id") or "", name=function.get("name") or NAMELESS_CALL, arguments={"_raw": text}, malformed=True)
    if ran is not None and redact is not None:
        name = str(ran.attributes.get(sc.TOOL_NAME) or function.get("name") or UNKNOWN_TOOL)
        sent = _span_object(ran)
        # arguments that are no object (OpenInference writes a one-argument tool's input as its value) say nothing
        return (
            ToolCall(id=call.get("id") or "", name=name, arguments=parse_arguments(arguments))
            if sent is None
            else _ran_call(call.get("id") or "", name, redact(sent))
        )
    parsed = parse_arguments(arguments)
    written = list(parsed) == ["_raw"] and _json_object(arguments) is not None
    return ToolCall(
        id=call.get("id") or "",
        name=function.get("name") or UNKNOWN_TOOL,  # a malformed call may have lost it: the call is still kept
        arguments=parsed,
        **({"malformed": False} if written else {}),
    )


def _as_ran(proposed: ToolCall, span: SpanData, redact: Any) -> ToolCall:
    """A reviewed call ``proposed`` as its tool span ``span`` ran it: a reviewer's edit is another name or other
    arguments. Arguments that are no object (OpenInference writes a one-argument tool's input as its value) say no edit."""
    sent = _span_object(span)
    name = str(span.attributes.get(sc.TOOL_NAME) or proposed.name)
    return proposed.model_copy(update={"name": name}) if sent is None else _ran_call(proposed.id, name, redact(sent))


def _ran_call(call_id: str, name: str, arguments: dict[str, Any]) -> ToolCall:
    """The call a tool span ran, with the ``arguments`` object it received: one whose only argument is ``_raw`` is marked
    well formed (the tool got that key, whether or not it then failed)."""
    return ToolCall(id=call_id, name=name, arguments=arguments, **({"malformed": False} if list(arguments) == ["_raw"] else {}))


def _json_object(arguments: Any) -> dict[str, Any] | None:
    """``arguments`` as written (a call's, a tool span's attribute) where they are a JSON object: a mapping, or text that
    decodes to one; ``None`` for any other (text that is no JSON, JSON that is no object, none)."""
    if isinstance(arguments, Mapping):
        return parse_arguments(arguments)
    if not isinstance(arguments, str):
        return None
    try:
        decoded = json.loads(arguments)
    except (ValueError, RecursionError):
        return None
    return decoded if isinstance(decoded, dict) else None


def _span_object(span: SpanData) -> dict[str, Any] | None:
    """The arguments a tool span says its tool received, where its attribute is a JSON object (:func:`_json_object`);
    ``None`` where it is not: no attribute, or a value that is no object (OpenInference writes a one-argument tool's
    input as that value), which :func:`_span_arguments` reads as ``{"_raw": value}``."""
    return _json_object(span.attributes.get(sc.TOOL_CALL_ARGUMENTS))


def _call_spans(
    calls: list[ToolCall],
    tools_by_call: dict[str, list[SpanData]],
    unmatched: list[SpanData],
    chat: SpanData,
    until: int | None,
    sent: dict[int, Any],
    invalid: frozenset[int] = frozenset(),
    shared: Collection[str] = (),
) -> list[SpanData | None]:
    """The tool span of each of decision ``chat``'s calls (taken from the spans left): the span of its id
    (:func:`_take_tool_span`); for a call no span of its id ran, a span that names no id, of its tool and run with its
    arguments, else the first left of its tool. Spans that name no call id (OpenInference's for the OpenAI Agents SDK,
    traceloop-sdk's ``@tool``) are told apart by their arguments, so that each of parallel calls of one tool gets its
    own span (its error and latency), whichever ran first. ``sent``: the arguments of the spans that name no id, decoded
    once per run (by ``id(span)``), as the spans of a tool whose calls never match are compared again at each call. A
    call at one of the ``invalid`` positions (LangChain's ``invalid_tool_calls``, which ``create_agent`` answers itself)
    gets only a span of its own id that ran for this decision (a middleware repaired the call and the graph ran it):
    never one of another call, nor one of a later decision's call that reused its id. A call whose id others of the reply
    share (``shared``) gets the first span of that id run for this decision with its tool and arguments."""
    spans = [
        (_take_tool_span(_ran_for(tools_by_call.get(call.id), chat, until), chat, until, call.arguments) if call.id else None)
        if i in invalid
        else _take_shared_span(tools_by_call.get(call.id), chat, until, call.name, call.arguments)
        if call.id in shared
        else _take_tool_span(tools_by_call.get(call.id), chat, until, call.arguments)
        for i, call in enumerate(calls)
    ]
    for i, call in enumerate(calls):
        if spans[i] is None and i not in invalid:
            spans[i] = _take_by_name(unmatched, call.name, call.arguments, sent)
    for i, call in enumerate(calls):
        if spans[i] is None and i not in invalid:
            spans[i] = _take_by_name(unmatched, call.name)
    return spans


def _ran_for(spans: list[SpanData] | None, chat: SpanData, until: int | None) -> list[SpanData] | None:
    """``spans`` (of one call id) where one of them started after decision ``chat`` and before the next one
    (``until``): a call of this decision ran; else ``None``."""
    if spans and any(s.start_ns >= chat.start_ns and (until is None or s.start_ns < until) for s in spans):
        return spans
    return None


def _take_by_name(
    spans: list[SpanData], name: str, arguments: dict[str, Any] | None = None, sent: dict[int, Any] | None = None
) -> SpanData | None:
    """The first of ``spans`` of tool ``name`` (run with ``arguments``, where given: ``sent`` keeps each span's decoded
    arguments), removed from them."""
    for i, span in enumerate(spans):
        if span.attributes.get(sc.TOOL_NAME) != name:
            continue
        if arguments is not None:
            if sent is None or id(span) not in sent:
                decoded = _span_arguments(span)
                if sent is not None:
                    sent[id(span)] = decoded  # the spans stay in the run's list while it is assembled: ids are not reused
            else:
                decoded = sent[id(span)]
            if decoded != arguments:
                continue
        return spans.pop(i)
    return None


def _observation(
    span: SpanData | None,
    message: dict[str, Any] | None,
    redact: Any,
    max_chars: int,
    reported_error: bool = False,
    cut_replies: Mapping[tuple[Any, str], int] | None = None,
) -> tuple[Observation | None, float | None]:
    """The observation the model saw (the tool message of a later model input) or, for the last
    call of a run, the tool span's result; timing comes from the tool span, the error flag from it or from the tool
    message the model was given (``reported_error``: a middleware that answered for the tool with an error), the
    characters capture cut from it from the tool span or, for a message, ``cut_replies`` (:func:`_cut_replies`: the
    tool span of a tool that raised says nothing of the text ToolNode wrote for the model)."""
    if span is None and message is None:
        return None, None
    latency = span.duration_ms if span is not None else None
    truncated = int(span.attributes.get(sc.EE_OBSERVATION_TRUNCATED) or 0) if span is not None else 0
    if message is not None and cut_replies:
        truncated = cut_replies.get(_reply_key(message)) or truncated
    is_error = reported_error or (span is not None and (span.is_error or bool(span.attributes.get(sc.ERROR_TYPE))))
    if message is not None:
        result: Any = message.get("content", "")
    else:
        assert span is not None
        result = span.attributes.get(sc.TOOL_CALL_RESULT)
        if result is None:
            result = span.exception_message() or span.status_message or ("tool failed" if is_error else "")
    # redacted, then cut (never inside a placeholder): a text capture cut is within the cap already
    text, cut = redact_and_cut(result if isinstance(result, str) else json.dumps(result, ensure_ascii=False), max_chars, redact)
    return Observation(content=text, is_error=is_error, truncated_chars=truncated + cut), latency


def _status(root: SpanData, spans: Sequence[SpanData]) -> tuple[str, str | None]:
    """How the run ended and its error: as capture's ``ee.status`` says; else (another instrumentation's spans) ``error``
    where the root failed, ``interrupted`` where what ended it was a cancellation (:func:`_cancellation`, with capture's
    reason, ``cancelled: CancelledError``), ``completed`` otherwise."""
    status = root.attributes.get(sc.EE_STATUS)
    error = root.exception_message() or root.status_message if root.is_error else None
    if status in ("completed", "error", "interrupted", "stopped"):
        if status == "interrupted" and error is None and root.attributes.get(sc.EE_STATUS_REASON):
            error = str(root.attributes[sc.EE_STATUS_REASON])  # why a run nobody paused stopped (cancelled)
        return str(status), error
    cancelled = _cancellation(root)
    if cancelled is not None:
        return "interrupted", f"cancelled: {cancelled}"
    return ("error", error or "the agent run failed") if root.is_error else ("completed", None)


_CANCELLATION_TYPES = {
    "asyncio.exceptions.CancelledError": "CancelledError",
    "asyncio.CancelledError": "CancelledError",
    "builtins.GeneratorExit": "GeneratorExit",
    "builtins.KeyboardInterrupt": "KeyboardInterrupt",
}
"""The exceptions that stop a run from outside it, by qualified name, and the name capture's reason gives them: capture's
:data:`~ee_middleware.capture.callbacks.CANCELLATIONS` (which imports this module). ``concurrent.futures``'
``CancelledError`` (an ``Exception`` a cancelled future's ``result()`` raises) and an app's own class of that name are
none: the run failed."""
_CANCELLATIONS = frozenset(_CANCELLATION_TYPES.values())
"""The names of :data:`_CANCELLATION_TYPES`."""
_TRACEBACK = "Traceback (most recent call last):"


def _cancellation(span: SpanData, run_cancelled: str | None = None) -> str | None:
    """The name of the cancellation (:data:`_CANCELLATION_TYPES`: its task cancelled, its stream closed, Ctrl-C) that
    ended the failed ``span``, or ``None`` where it failed otherwise or did not fail.

    Decided by the exception's qualified type (:func:`_exception_type`) wherever the span records one. A bare name alone
    (an exporter that dropped the events and the traceback) is ``GeneratorExit`` or ``KeyboardInterrupt`` (builtins, which
    every writer names bare); a bare ``CancelledError`` could be ``concurrent.futures``' or an app's own, and is one only
    on a span below a root that was cancelled so (``run_cancelled``: the same exception on its way up). Taking a failure
    for a cancellation would hide it and drop its call's observation; the other way round keeps both, flagged an error."""
    if not span.is_error and not span.attributes.get(sc.ERROR_TYPE):
        return None
    kind, qualified = _exception_type(span)
    if kind is None:
        return None
    if qualified:
        return _CANCELLATION_TYPES.get(kind)
    if f"builtins.{kind}" in _CANCELLATION_TYPES:
        return kind
    return kind if kind in _CANCELLATIONS and kind == run_cancelled else None


def _exception_type(span: SpanData) -> tuple[str | None, bool]:
    """The type of the exception that ended ``span`` and whether that name is qualified (``asyncio.exceptions.
    CancelledError``, ``builtins.KeyboardInterrupt``), from what instrumentations write: the last ``exception`` event's
    ``exception.type`` (the OpenTelemetry SDK's ``record_exception`` qualifies all but builtins; OpenInference writes a
    ``BaseException``'s bare) and the exception line of its ``exception.stacktrace``, ``error.type`` (OpenLLMetry: bare),
    the status message (OpenInference's: the ``repr``, then the traceback). A qualified name anywhere wins over bare ones;
    a Python traceback's counts as qualified (it leaves the module out for builtins and ``__main__`` only)."""
    events = [event for name, event in span.events if name == "exception"]
    last = events[-1] if events else {}
    status = span.status_message or ""
    head = re.match(r"[A-Za-z_][\w.]*(?=\(|:|$)", status.partition(_TRACEBACK)[0].strip())
    said = [str(kind) for kind in (last.get("exception.type"), span.attributes.get(sc.ERROR_TYPE)) if kind]
    told = (
        *(kind for kind in said if "." in kind),
        _traceback_type(last.get("exception.stacktrace")),
        _traceback_type(status),
        head.group(0) if head and "." in head.group(0) else None,
    )
    qualified = next((kind for kind in told if kind), None)
    if qualified:
        return qualified, True
    bare = [*said, *([head.group(0)] if head else [])]
    return (bare[0], False) if bare else (None, False)


def _traceback_type(text: Any) -> str | None:
    """The qualified type of the exception a Python traceback in ``text`` ends on (its last block's exception line,
    ``asyncio.exceptions.CancelledError`` or ``module.Error: message``); a name Python writes bare is a builtin's
    (``builtins.``) or ``__main__``'s."""
    if not isinstance(text, str) or _TRACEBACK not in text:
        return None
    for line in text.rpartition(_TRACEBACK)[2].splitlines():
        if not line.strip() or line[0].isspace():
            continue  # a frame or its source line
        name = line.partition(":")[0].strip()
        if not all(part.isidentifier() for part in name.split(".")):
            return None
        if "." in name:
            return name
        return f"builtins.{name}" if isinstance(getattr(builtins, name, None), type) else f"__main__.{name}"
    return None


def _paused(decisions: list[dict[str, Any]], tools: list[SpanData], final: dict[str, Any]) -> bool:
    """Whether a run whose spans do not say how it ended (no ``ee.status``: another instrumentation's) paused, as
    capture records a run that stopped at ``interrupt()`` or a breakpoint (``interrupt_before``,
    ``HumanInTheLoopMiddleware``): its last reply that acted asked for a tool call that never ran (no tool span of it,
    or one stopped by ``interrupt()``) and that no tool message answers (structured output, a reviewer's answer).
    Such a run is ``interrupted``: its calls await a review, and datasets must not teach them from it."""
    for index in range(len(decisions) - 1, -1, -1):
        decision = decisions[index]
        if decision["span"].is_error or not decision["outputs"] or _discarded(index, decisions):
            continue  # a failed attempt, or a reply thrown away: no decision acted there
        calls = [c for m in decision["outputs"] for c in m.get("tool_calls") or ()]
        answered = {m.get("tool_call_id") for m in final["state"] if m.get("role") == "tool"}
        after = [t for t in tools if t.start_ns >= decision["span"].start_ns and not _interrupted_tool(t)]
        ran = {str(t.attributes.get(sc.TOOL_CALL_ID)) for t in after if t.attributes.get(sc.TOOL_CALL_ID)}
        by_name = [str(t.attributes.get(sc.TOOL_NAME)) for t in after if not t.attributes.get(sc.TOOL_CALL_ID)]
        for call in calls:
            call_id, name = call.get("id"), (call.get("function") or {}).get("name")
            if call_id in answered or call_id in ran:
                continue
            if name in by_name:
                by_name.remove(name)
                continue
            return True
        return False
    return False


def _awaits_calls(decisions: list[dict[str, Any]]) -> bool:
    """Whether the run's last decision that acted (not a failed attempt, nor a reply thrown away) called tools: a run
    that was interrupted there stopped on those calls, without an answer. Used where the spans do not say whether the
    run paused on calls (:data:`~ee_middleware.capture.semconv.EE_AWAITS_CALLS`: another instrumentation's): a model call
    answering by a tool call no state holds (structured output) before a review node is then taken for one."""
    for index in range(len(decisions) - 1, -1, -1):
        decision = decisions[index]
        if decision["span"].is_error or not decision["outputs"] or _discarded(index, decisions):
            continue
        return any(m.get("tool_calls") for m in decision["outputs"])
    return False


def _interrupted_tool(span: SpanData) -> bool:
    """Whether a tool span ended on LangGraph's ``GraphInterrupt`` (``interrupt()`` in the tool: it runs again on resume)."""
    return any(
        name == "exception" and "Interrupt" in str(event.get("exception.type") or "").rpartition(".")[2] for name, event in span.events
    )


def _stopped_by(root: SpanData, decisions: list[dict[str, Any]], redact: Any) -> str | None:
    """Why a run that returned normally did not end on its model's reply, or None when it did: its last message is a
    reply (an assistant message without tool calls) that no model call wrote, since the last decision that acted
    called tools, or every model call failed. A middleware or a graph node wrote it: ``ModelCallLimitMiddleware`` or
    ``ToolCallLimitMiddleware`` with ``exit_behavior="end"`` ('Model call limits exceeded'), ``ModelRetryMiddleware``
    with ``on_failure="continue"`` ('Model call failed after 3 attempts'). Such a run is ``stopped``, not
    ``completed``: an approval rule on ``completed`` would teach the run that failed. A reply that a middleware edited
    after the model (``after_model``) is still the model's: its decision answered. A run that called no model (resumed
    after a review, a reviewer's node answering) has no decision to end early. Nor did a run end early whose last
    message is the answer of its last decision made for a structured reply
    (:data:`~ee_middleware.capture.semconv.EE_STRUCTURED_OUTPUT`: a node wrote that call's text or arguments as the
    reply), or whose last message the node run that made that call wrote (capture's
    :data:`~ee_middleware.capture.semconv.EE_LAST_REPLY_TASK`: a message built from the reply, a report's summary or a
    grader's "Score 8/10"), or one some model call wrote as its reply (a drafter's, before a grader's structured call
    or a router's call that its node read). A structured call followed by a message another node or a middleware wrote
    (a judge after a call limit ended the run, a planner's loop a guard node ended) is still ``stopped``."""
    if not decisions:
        return None  # a run that called no model (a reviewer's node answering on resume): nothing ended it early
    ended = [m for m in _messages_attr(root, sc.OUTPUT_MESSAGES) if m.get("role") == "assistant" and not m.get("tool_calls")]
    if not ended:
        return None  # it ended on tool messages (structured output, return_direct), or the spans do not say
    text = content_to_text(ended[-1].get("content"))
    for index in range(len(decisions) - 1, -1, -1):
        decision = decisions[index]
        if decision["span"].is_error or not decision["outputs"] or _discarded(index, decisions):
            continue  # a failed attempt, or a reply thrown away: no decision acted there
        if str(decision["span"].attributes.get(sc.EE_STRUCTURED_OUTPUT)).lower() == "true":
            if _structured_answer_is(decision["raw_outputs"], text):
                return None  # its node answered with the structured reply (the call's text or one of its arguments)
            if _written_in(root.attributes.get(sc.EE_LAST_REPLY_TASK), decision["span"]):
                return None  # its node wrote the last message, built from the reply (a summary, "42.50 EUR", a score)
            break  # read by its node (a grader, a planner): whether a model wrote the last message tells, below
        if not any(m.get("tool_calls") for m in decision["outputs"]):
            return None  # the model answered: the run ended on its reply
        break
    replies = (m for d in decisions if not d["span"].is_error for m in d["outputs"] if not m.get("tool_calls"))
    if any(content_to_text(m.get("content")) == redact(text) for m in replies):  # the decisions' replies are redacted
        return None  # a model call wrote it; the calls after it were read by their nodes (a grader, a router)
    quoted = text if len(text) <= 200 else text[:200] + "..."
    return f"a middleware or graph node ended the run, not the model: no model call wrote its last message ({quoted!r})"


def _unfinished_end(decisions: list[dict[str, Any]], steps: list[Step], answer: str | None) -> str | None:
    """Why a run that returned normally on its model's last turn did not finish its work, or None when it did: that turn
    was cut at the request's ``max_tokens`` (its span's finish reason ``length``: an answer cut mid-sentence, which an
    approval rule on ``completed`` would teach), or stopped by the provider's content filter (``content_filter``:
    OpenAI's word, Gemini's ``SAFETY``, Bedrock's ``guardrail_intervened``: an empty or partial answer), or it wrote only malformed tool calls that no tool ran, and the run gave
    no answer (``create_agent`` ends a run whose reply holds only ``invalid_tool_calls``: the user got nothing). Such a
    run is ``stopped``. A turn cut or malformed earlier, that the graph went on from (the model answered after), ended
    nothing."""
    acted = [i for i in range(len(decisions) - 1, -1, -1) if not decisions[i]["span"].is_error and decisions[i]["outputs"]]
    last = next((decisions[i] for i in acted if not _discarded(i, decisions)), None)  # a reply thrown away never acted
    if last is None:
        return None
    reasons = last["span"].attributes.get(sc.RESPONSE_FINISH_REASONS)
    if isinstance(reasons, str):
        reasons = (reasons,)
    # (as the GenAI conventions write them: capture's are; another instrumentation's may be the provider's own words)
    said = {genai_finish_reason(r) for r in reasons if isinstance(r, str)} if isinstance(reasons, Sequence) else set()
    turn = "answer" if not any(m.get("tool_calls") for m in last["outputs"]) else "model turn"
    if sc.FINISH_REASON_LENGTH in said:
        return f"the last {turn} was cut at max_tokens (finish_reason {sc.FINISH_REASON_LENGTH})"
    if FINISH_REASON_CONTENT_FILTER in said:
        return f"the last {turn} was stopped by the provider's content filter (finish_reason {FINISH_REASON_CONTENT_FILTER})"
    if answer is not None or not steps:
        return None
    final = [s for s in steps if s.decision_index == steps[-1].decision_index]
    calls = [s.action.tool_call for s in final]
    if not all(c is not None and c.malformed for c in calls):
        return None
    named = "; ".join(
        f"{c.name} (call {c.id or 'without id'}), arguments {_quoted(c.arguments.get('_raw'))}" for c in calls if c is not None
    )
    if len(calls) == 1:
        return f"the run ended on a model turn whose only tool call was malformed, with no answer: {named} (no tool ran it)"
    return f"the run ended on a model turn whose {len(calls)} tool calls were all malformed, with no answer: {named} (no tool ran them)"


_FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "eos": "stop",
    "length": "length",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "model_length": "length",
    "tool_calls": "tool_call",
    "tool_call": "tool_call",
    "tool_use": "tool_call",
    "function_call": "tool_call",
    "content_filter": "content_filter",
    "safety": "content_filter",
    "recitation": "content_filter",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
    "refusal": "content_filter",
    "error": "error",
}
"""Providers' finish reasons (lower-cased) as the GenAI conventions write them (``stop``, ``length``, ``tool_call``,
``content_filter``, ``error``): OpenAI's ``tool_calls``, Anthropic's ``end_turn``/``max_tokens``/``tool_use``, Gemini's
``STOP``/``MAX_TOKENS``/``SAFETY``, Bedrock's, Ollama's."""


def genai_finish_reason(reason: str) -> str:
    """A provider's finish reason as the GenAI conventions write it (:data:`_FINISH_REASONS`); one they have no word for
    is kept as the provider said it."""
    return _FINISH_REASONS.get(reason.strip().lower(), reason)


FINISH_REASON_CONTENT_FILTER = "content_filter"
"""The finish reason (GenAI conventions) of a reply the provider's content filter stopped: a run whose last reply it
stopped is ``stopped``, not ``completed``, as one cut at ``max_tokens`` is."""


def _quoted(raw: Any) -> str:
    text = raw if isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
    return repr(text if len(text) <= 200 else text[:200] + "...")


def _answer_formatting(root: SpanData, decisions: list[dict[str, Any]], tools: list[SpanData]) -> set[int]:
    """The indices of the decisions that only wrote the run's answer in the form asked for, after the model had
    answered: ``create_react_agent(response_format=...)``'s ``generate_structured_response`` node asks the model once
    more (``with_structured_output``) for the reply it gave as the structured response. Such a call decided nothing (it
    is the framework formatting the answer): no step, and its schema is none of the run's tools.

    A decision is one where its span is marked :data:`~ee_middleware.capture.semconv.EE_STRUCTURED_OUTPUT`, it ran in
    a node named ``generate_structured_response`` (:data:`~ee_middleware.capture.semconv.EE_LANGGRAPH_NODE`, else the
    last node of its checkpoint namespace), it came after the model call that wrote the run's last message (a reply),
    in another node run than the one that wrote it (capture's
    :data:`~ee_middleware.capture.semconv.EE_LAST_REPLY_TASK`), no tool span or tool message answers its calls, and its
    reply (its one call's arguments, or its text) is the run's final answer as JSON. Any other node's structured call
    is a decision, even one whose reply is the run's answer (the last node of a triage graph choosing a team and a
    priority into ``structured_response``), and so are a grader's or a judge's (their reply is not the answer), a node
    answering with a structured reply's text (it wrote the last message) and ``create_agent``'s ``ToolStrategy`` call
    (a tool message answers it, in the model's node). Another instrumentation's spans do not say which node wrote the
    last message: nothing is dropped."""
    attrs = root.attributes
    task, answer = attrs.get(sc.EE_LAST_REPLY_TASK), _json_or_none(attrs.get(sc.EE_FINAL_ANSWER))
    ended = [m for m in _messages_attr(root, sc.OUTPUT_MESSAGES) if m.get("role") == "assistant" and not m.get("tool_calls")]
    if not task or not isinstance(answer, (dict, list)) or not ended:
        return set()  # (a structured response is an object: a plain text answer is the model's own)
    text = content_to_text(ended[-1].get("content"))
    replied = next(
        (
            index
            for index in range(len(decisions) - 1, -1, -1)
            if not decisions[index]["span"].is_error
            and any(not m.get("tool_calls") and content_to_text(m.get("content")) == text for m in decisions[index]["raw_outputs"])
        ),
        None,
    )
    if replied is None:
        return set()
    answered = {str(t.attributes[sc.TOOL_CALL_ID]) for t in tools if t.attributes.get(sc.TOOL_CALL_ID)}
    answered |= {str(m.get("tool_call_id")) for d in decisions for m in d["raw"] if m.get("role") == "tool"}
    answered |= {str(m.get("tool_call_id")) for m in _messages_attr(root, sc.OUTPUT_MESSAGES) if m.get("role") == "tool"}
    named = {str(t.attributes.get(sc.TOOL_NAME)) for t in tools if not t.attributes.get(sc.TOOL_CALL_ID)}
    after = decisions[replied]["span"].end_ns
    formatting = set()
    for index in range(replied + 1, len(decisions)):
        span = decisions[index]["span"]
        if (
            str(span.attributes.get(sc.EE_STRUCTURED_OUTPUT)).lower() != "true"
            or _node_of(span) != _REACT_FORMATTING_NODE
            or span.is_error
            or span.start_ns < after
            or _written_in(task, span)
        ):
            continue
        outputs = decisions[index]["raw_outputs"]
        calls = [c for m in outputs for c in m.get("tool_calls") or () if isinstance(c, Mapping)]
        if any(str(c.get("id")) in answered or (c.get("function") or {}).get("name") in named for c in calls):
            continue  # a tool ran it, or a node answered it with a tool message: a call that acted
        if len(calls) == 1:
            said = parse_arguments((calls[0].get("function") or {}).get("arguments"))
        elif not calls and len(outputs) == 1:
            said = _json_or_none(content_to_text(outputs[0].get("content")))  # a provider's JSON mode: the reply's text
        else:
            continue
        if said == answer:
            formatting.add(index)
    return formatting


_REACT_FORMATTING_NODE = "generate_structured_response"
"""The node in which ``langgraph.prebuilt.create_react_agent(response_format=...)`` asks for the structured response."""


def _node_of(span: SpanData) -> str | None:
    """The name of the LangGraph node a model call ran in: the span's
    :data:`~ee_middleware.capture.semconv.EE_LANGGRAPH_NODE`, else the innermost node of its checkpoint namespace
    (``outer:<task id>|node:<task id>``)."""
    node = span.attributes.get(sc.EE_LANGGRAPH_NODE)
    if node:
        return str(node)
    namespace = span.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS)
    if not namespace:
        return None
    return str(namespace).rsplit("|", 1)[-1].split(":", 1)[0] or None


def _written_in(task: Any, span: SpanData) -> bool:
    """Whether the LangGraph node run ``task`` (a checkpoint namespace) made the model call of ``span``: the call's own
    namespace, or one inside it (a graph the node invoked itself)."""
    made_in = span.attributes.get(sc.EE_LANGGRAPH_CHECKPOINT_NS)
    if not task or not made_in:
        return False
    return str(made_in) == str(task) or str(made_in).startswith(f"{task}|")


def _structured_answer_is(outputs: list[dict[str, Any]], text: str) -> bool:
    """Whether ``text`` (a run's last message) is the answer of a structured-output call that replied ``outputs``: its
    text, its arguments' JSON, or one of the strings in them (``Answer(text=...)`` written out as the reply)."""
    if not text.strip():
        return False
    wanted = _json_or_none(text)
    for message in outputs:
        answers = [content_to_text(message.get("content"))]
        answers += [(c.get("function") or {}).get("arguments") for c in message.get("tool_calls") or () if isinstance(c, Mapping)]
        for answer in answers:
            value = parse_arguments(answer) if isinstance(answer, Mapping) else _json_or_none(answer)
            if answer == text or (wanted is not None and value == wanted) or text in _strings_in(value):
                return True
    return False


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _strings_in(value: Any) -> list[str]:
    """The strings in a decoded JSON value, at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings_in(v)]
    return []


def _messages_attr(span: SpanData, key: str) -> list[dict[str, Any]]:
    raw = _json_attr(span, key, expect=list)
    if raw is None:
        return []
    try:
        return genai_to_openai(raw, object_arguments=_captured(span))
    except (ValueError, AttributeError, TypeError) as exc:
        raise IngestError(f"Span {span.span_id} ({span.name}): {key} does not hold GenAI messages: {exc}") from exc


def _captured(span: SpanData) -> bool:
    """Whether ``span`` is one of ee-middleware's capture (:data:`~ee_middleware.capture.semconv.EE_RECORDER`, on each
    of its spans; also read back from OTLP by ``ee traces ingest``): its messages' calls hold an object only where the
    model wrote one (:func:`~ee_middleware.messages.genai_arguments`), read as its JSON, a real ``{"_raw": ...}``
    included (``genai_to_openai``'s ``object_arguments``)."""
    return sc.EE_RECORDER in span.attributes


def _json_attr(span: SpanData, key: str, *, expect: type) -> Any:
    raw = span.attributes.get(key)
    if raw is None or raw == "":
        return None
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise IngestError(
                f"Span {span.span_id} ({span.name}): attribute {key} is not valid JSON ({exc.msg} at char {exc.pos})."
            ) from exc
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expect):
        raise IngestError(
            f"Span {span.span_id} ({span.name}): attribute {key} must be a JSON {expect.__name__}, got {type(value).__name__}."
        )
    return value


def _last_user_text(state: list[dict[str, Any]]) -> str | None:
    return next((content_to_text(m.get("content")) for m in reversed(state) if m.get("role") == "user"), None)


def turn_question(state: list[dict[str, Any]]) -> str | None:
    """The question of a conversation's current turn: the first user message after its last assistant message (earlier
    turns' history comes before it, the turn's context messages after it); the last user message where none follows a
    reply (a node wrote an assistant message before the model was called); the first user message where no assistant
    message is there."""
    start = next((len(state) - i for i, m in enumerate(reversed(state)) if m.get("role") == "assistant"), 0)
    return next((content_to_text(m.get("content")) for m in state[start:] if m.get("role") == "user"), None) or _last_user_text(state)


def _redact_opt(redact: Any, value: Any) -> str | None:
    text = _opt_str(value)
    return None if text is None else redact(text)


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def span_time(ns: int) -> dt.datetime:
    """The UTC time of a span's nanosecond timestamp (now for none: 0)."""
    if ns <= 0:
        return utcnow()
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)


def _offered_tools(decisions: list[dict[str, Any]]) -> ToolCatalog:
    """Every tool schema offered during the run (tools added mid-run included, and each other schema a tool was offered
    with under its name), first offer first; each step's own are in ``Step.tools`` where they are not all of these
    (:func:`_step_tools`)."""
    catalog = ToolCatalog()
    for decision in decisions:
        for schema in decision["tools"]:
            catalog.ref(schema)
    return catalog
