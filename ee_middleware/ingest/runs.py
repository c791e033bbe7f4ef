"""Group the spans of one trace into agent runs, as the instrumentation that wrote them meant it.

One run of a LangGraph graph must become one trajectory, whichever instrumentation wrote it:

* ee-middleware writes one ``invoke_agent`` span per run, over model and tool spans marked
  ``ee.langgraph.node``.
* OpenLLMetry writes an ``invoke_agent`` span (and a ``workflow`` span) per graph run over one
  ``task`` span per node.
* OpenInference writes one CHAIN span per graph run ("LangGraph") and one span per node under it.
  A node named like an agent ("agent") becomes an AGENT / ``invoke_agent`` span, so one run has
  several sibling ``invoke_agent`` spans, with the tool spans beside them under the "tools" node.

So a span that runs inside a LangGraph node (its LangGraph metadata names a ``langgraph_node``) is
never a run of its own: an agent or model span inside a node belongs to the run of the graph that
holds the node, the nearest enclosing span outside every node (or, when the graph's span was never
exported, everything under its id). An ``invoke_agent`` span outside any node is a run, as before. A graph run
inside a tool (an agent as a tool: its nodes run in checkpoint namespaces of their own, below the tool's) is a run of
its own, rooted at the tool's child, and left out of the outer run, which keeps the tool call and its result; invoked
with a configuration of its own, it is not on the outer run's thread (:func:`_nested_thread`).
Runs are the outermost such subtrees; model spans left outside every run make one more run per conversation their
messages hold (a request's span over two tool loops traced by a model client's instrumentation alone: see
:func:`conversations`), one run as before when they hold one. A model call with nothing around it, a trace of its own
(:class:`BareCall`), is joined with the calls of other traces it goes on with (:func:`join_bare_calls`).

A trace whose span ids repeat with different contents, or whose parent links loop, cannot be read
as a tree: it gets one problem and is skipped. Exact repeats (a collector retry) count once.

A run whose process died never ended: its root span is missing (exported only when it ends) or written
without an end time. :func:`unfinished_reason` says so, and ingest stores it as ``interrupted``. A span in a graph node
whose parent was not read, under a graph run's span that was (a root read in an earlier file than its children, a
node's span lost), is a step of that run (:meth:`_Tree._adopted`), not a run of its own: the run is ``interrupted``
too, its reason naming the spans between its root and its steps it lacks (:func:`incomplete_reason`), and a later ingest
that reads them completes it (:func:`read_gaps`, :class:`Gaps`).

A model call that returned several choices (``n`` > 1) keeps the one its run went on with (:func:`chosen_replies`):
alternatives are never read as a sequence of messages.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any, NamedTuple

from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import recorded_spans_only
from ee_middleware.capture.normalize import normalize, operation_of, traceloop_metadata_value
from ee_middleware.capture.spandata import SpanData
from ee_middleware.ingest.dialects import OUTPUT_CHOICES, graph_run_attributes, litellm_raw_calls
from ee_middleware.messages import content_to_text, dumps, genai_to_openai, parse_arguments

_NODE_KEYS = (
    sc.EE_LANGGRAPH_NODE,
    "traceloop.association.properties.langgraph_node",
    "langgraph.node",
    "langsmith.metadata.langgraph_node",
    "langfuse.observation.metadata.langgraph_node",
)
_NOT_RUNS = frozenset({"create_agent", "embeddings", "retrieval"})


@dataclass
class TraceRuns:
    """The runs found in one trace, and why none could be read when that is so."""

    runs: list[list[SpanData]] = field(default_factory=list)
    problem: str | None = None
    repeated_spans: int = 0
    agent_related: bool = True
    recognized: bool = True
    """Whether any span names an operation ingest knows (else: a trace of an instrumentation it does not read)."""
    unfinished: list[str | None] = field(default_factory=list)
    """Per run (in the order of ``runs``): why it never ended, or None (see :func:`unfinished_reason`)."""
    missing_roots: list[str | None] = field(default_factory=list)
    """Per run: the id of its root span when that is not among the spans read (see :func:`missing_root`), else None."""
    gaps: list[Gaps] = field(default_factory=list)
    """Per run: what of its spans was read (:func:`run_gaps`)."""
    choices: Choices = field(default_factory=lambda: Choices())
    """The model calls of its runs that returned several choices, and how the one each run went on with was told."""


@dataclass
class Choices:
    """Model calls that returned several choices (:data:`~ee_middleware.ingest.dialects.OUTPUT_CHOICES`), counted by
    :func:`chosen_replies`: ``told`` those whose kept choice the run shows, ``first`` those where nothing did (the first
    kept)."""

    told: int = 0
    first: int = 0

    def __iadd__(self, other: Choices) -> Choices:
        self.told += other.told
        self.first += other.first
        return self

    def __bool__(self) -> bool:
        return bool(self.told or self.first)


def group_runs(trace_id: str, spans: Sequence[SpanData], unended: Collection[str] = ()) -> TraceRuns:
    """Split one trace's spans into runs (each a list of spans whose first item is the run's root).

    ``unended``: the ids of spans written without an end time (their runs never ended)."""
    unique, repeated, problem = _unique(trace_id, spans)
    if problem is None:
        problem = _cycle(trace_id, unique)
    if problem is not None:
        return TraceRuns(problem=problem, repeated_spans=repeated)
    unique = litellm_raw_calls(unique)
    tree = _Tree(unique)
    roots = tree.outermost({r for s in unique if (r := tree.run_root(s)) is not None})
    runs: list[list[SpanData]] = []
    covered: set[str] = set()
    for run in sorted((tree.subtree(root) for root in roots), key=lambda run: (min(s.start_ns for s in run), run[0].span_id)):
        covered.update(s.span_id for s in run)
        runs.append(run)
    leftover = _with_orphan_tools(runs, [s for s in unique if s.span_id not in covered], tree)
    leftover = _without_echoes_of(runs, leftover, tree)
    named_by_first_call: set[int] = set()
    if any(operation_of(s.attributes) in sc.MODEL_OPERATIONS for s in leftover):
        for n, conversation in enumerate(conversations(leftover, tree)):
            if n:  # a later conversation: named after its own first call, whether or not the run's root is read
                named_by_first_call.add(len(runs))
            ids = {s.span_id for s in conversation}
            runs.append(sorted(conversation, key=lambda s: (s.parent_span_id in ids, s.start_ns)))  # its top span first: its name
    ops = {operation_of(s.attributes) for s in unique}
    related = bool(runs) or bool(ops - {None} - _NOT_RUNS)
    recognized = ops != {None}
    unfinished = [unfinished_reason(run, tree, unended) for run in runs]
    missing = [found[0] if n not in named_by_first_call and (found := missing_root(run, tree)) else None for n, run in enumerate(runs)]
    gaps = [run_gaps(run, tree, unended) for run in runs]
    choices = Choices()
    runs = [
        with_task(
            _with_reply_ids(
                _with_replies_from_history(_with_context(chosen_replies(_without_echoes(recorded_spans_only(run), tree), choices), tree))
            )
        )
        for run in runs
    ]
    return TraceRuns(
        runs=runs,
        repeated_spans=repeated,
        agent_related=related,
        recognized=recognized,
        unfinished=unfinished,
        missing_roots=missing,
        gaps=gaps,
        choices=choices,
    )


def _unique(trace_id: str, spans: Sequence[SpanData]) -> tuple[list[SpanData], int, str | None]:
    by_id: dict[str, SpanData] = {}
    repeated = 0
    for span in spans:
        seen = by_id.get(span.span_id)
        if seen is None:
            by_id[span.span_id] = span
        elif seen == span:
            repeated += 1
        else:
            return (
                [],
                repeated,
                (
                    f"trace {trace_id}: span id {span.span_id} is used by two different spans ({seen.name!r} and {span.name!r}); "
                    "span ids must be unique within a trace, so its parent links are ambiguous; trace skipped."
                ),
            )
    return list(by_id.values()), repeated, None


def _cycle(trace_id: str, spans: Sequence[SpanData]) -> str | None:
    parent = {s.span_id: s.parent_span_id for s in spans}
    done: set[str] = set()
    for start in parent:
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node is not None and node in parent and node not in done:
            if node in on_path:
                loop = " -> ".join([*path[path.index(node) :], node])
                return f"trace {trace_id}: parentSpanId links form a loop ({loop}); a span cannot be its own ancestor; trace skipped."
            path.append(node)
            on_path.add(node)
            node = parent[node]
        done.update(path)
    return None


class _Tree:
    """Parent links of one trace. A run's root is a span id, or the id of a parent that was not
    exported (the graph's span of a run cut short): then the run is everything under that id."""

    def __init__(self, spans: Sequence[SpanData]) -> None:
        self.by_id = {s.span_id: s for s in spans}
        self.nested: set[str] = set()
        """Roots of graph runs inside another run's tool (see :meth:`run_root`): runs of their own, left out of the outer."""
        self.children: dict[str, list[str]] = {}
        for s in spans:
            if s.parent_span_id is not None:
                self.children.setdefault(s.parent_span_id, []).append(s.span_id)
        self.adopted: dict[str, str] = self._adopted(spans)
        """Spans in a graph node whose parent is not in the trace, by id, with the graph run's span read that holds them
        (:meth:`_adopted`): its step whose node's span was not read, not a run of its own."""
        for orphan, graph in self.adopted.items():
            self.children.setdefault(graph, []).append(orphan)

    def _adopted(self, spans: Sequence[SpanData]) -> dict[str, str]:
        """The spans that ran in a LangGraph node whose parent (the node's span, a span between it and the graph's) was
        not read while the graph run's span was, each with that span: the span of a graph run (over spans of its nodes,
        or an agent's span; outside every node, or a sub-agent's graph inside a node) whose time holds it, on its thread
        (both name it, the same: runs of two threads at once never join), the innermost where several do and each holds
        the next (else it is left alone: two runs at once). Such a span is a step of that run, whose spans arrived in
        several files or lost one, not a run of its own named after the span it lacks. Left alone too: the spans whose
        missing parent is over node spans (a graph's root: another run whose root was not read, not a middle span), and
        those a span read in a node of that run holds in time while in another checkpoint namespace (a sub-agent's,
        whose graph's span was not told)."""
        orphans = [
            s
            for s in spans
            if s.parent_span_id is not None
            and s.parent_span_id not in self.by_id
            and in_graph_node(s)
            and sc.EE_RECORDER not in s.attributes  # capture writes a run's spans under its root: their parent is the root
        ]
        if not orphans:
            return {}
        under_missing: dict[str, set[tuple[Any, str | None]]] = {}
        for s in orphans:
            under_missing.setdefault(s.parent_span_id or "", set()).add((_node_name(s), _checkpoint_ns(s)))
        graph_roots = {  # missing parents over node spans: a node span named after its node, or spans of several nodes
            parent
            for parent, nodes in under_missing.items()
            if len(nodes) > 1 or any(s.parent_span_id == parent and s.name == _node_name(s) for s in orphans)
        }
        outside = [g for g in spans if not in_graph_node(g)]
        graphs = {
            g.span_id
            for g in outside
            if operation_of(g.attributes) == sc.OP_INVOKE_AGENT
            or any(in_graph_node(self.by_id[c]) for c in self.children.get(g.span_id, ()) if c in self.by_id)
        }
        sub_graphs = [g for g in spans if in_graph_node(g) and self._sub_graph(g)]
        graphs.update(g.span_id for g in sub_graphs)
        in_nodes = [g for g in spans if in_graph_node(g)]
        adopted: dict[str, str] = {}
        for orphan in orphans:
            if orphan.parent_span_id in graph_roots:
                continue
            thread = _thread(orphan)
            holding = [
                g
                for g in [*outside, *sub_graphs]
                if g.start_ns <= orphan.start_ns
                and orphan.end_ns <= g.end_ns
                and (g.span_id in graphs or _same_langchain_run(g, orphan))
                and thread is not None
                and _thread(g) == thread
                and not self._below(g.span_id, orphan.span_id)
            ]
            if not holding:
                continue
            inner = max(holding, key=lambda g: (g.start_ns, -g.end_ns))
            if not all(g.start_ns <= inner.start_ns and inner.end_ns <= g.end_ns for g in holding):
                continue
            ns = _checkpoint_ns(orphan)
            if any(
                g.span_id != inner.span_id
                and g.start_ns <= orphan.start_ns
                and orphan.end_ns <= g.end_ns
                and self._below(g.span_id, inner.span_id)
                and None not in (ns, _checkpoint_ns(g))
                and _checkpoint_ns(g) != ns
                for g in in_nodes
            ):
                continue
            adopted[orphan.span_id] = inner.span_id
        return adopted

    def _sub_graph(self, span: SpanData) -> bool:
        """Whether ``span`` (in a graph node) is the span of a graph run inside it (a sub-agent's): spans of nodes of
        another checkpoint namespace than its own are under it."""
        ns = _checkpoint_ns(span)
        if ns is None:
            return False
        return any(
            c in self.by_id and in_graph_node(self.by_id[c]) and _checkpoint_ns(self.by_id[c]) not in (None, ns)
            for c in self.children.get(span.span_id, ())
        )

    def _below(self, span_id: str, top: str) -> bool:
        """Whether ``span_id`` is ``top`` or under it by the parent links read."""
        seen: set[str] = set()
        node: str | None = span_id
        while node is not None and node not in seen:
            if node == top:
                return True
            seen.add(node)
            node = self.by_id[node].parent_span_id if node in self.by_id else None
        return False

    def up(self, span_id: str) -> str | None:
        """The id of the span above ``span_id`` among those read (its parent, or the graph run's span that adopted it),
        or None."""
        parent = self.by_id[span_id].parent_span_id
        return parent if parent in self.by_id else self.adopted.get(span_id)

    def parent(self, span_id: str) -> str | None:
        return self.up(span_id)

    def run_root(self, span: SpanData) -> str | None:
        """The root of the run ``span`` marks, if it marks one (agent or model spans only)."""
        op = operation_of(span.attributes)
        if op != sc.OP_INVOKE_AGENT and op not in sc.MODEL_OPERATIONS:
            return None
        if not in_graph_node(span):
            if op != sc.OP_INVOKE_AGENT:
                return None
            if self._under_a_tool(span.span_id) and self._calls_a_model(span.span_id):
                self.nested.add(span.span_id)  # an agent used as a tool (ADK's AgentTool, agents-as-tools): its own run
            return span.span_id
        node = span.span_id
        namespaces = {_checkpoint_ns(span)}
        while (up := self.parent(node)) is not None:
            above = self.by_id[up]
            if not in_graph_node(above):
                return up
            if operation_of(above.attributes) == sc.OP_EXECUTE_TOOL and namespaces - {None, _checkpoint_ns(above)}:
                # a graph run inside a tool (an agent as a tool): its nodes run in checkpoint namespaces of their own, below
                # the tool's; its span (the tool's child) is its run's root, not a step of the outer run
                self.nested.add(node)
                return node
            namespaces.add(_checkpoint_ns(above))
            node = up
        return self.by_id[node].parent_span_id or node  # the graph's span missing: its id still joins the run

    def _under_a_tool(self, span_id: str) -> bool:
        """Whether an agent span runs inside a tool call of another run: a tool span above it, below that run's agent
        span (a tool span with no agent above it, an app's own, runs no other run)."""
        tool = False
        for above in self.ancestors(span_id):
            op = operation_of(above.attributes)
            if op == sc.OP_EXECUTE_TOOL:
                tool = True
            elif op == sc.OP_INVOKE_AGENT:
                return tool
        return False

    def _calls_a_model(self, span_id: str) -> bool:
        """Whether a model span is under ``span_id`` (an agent span of its own run holds its decisions; one that holds
        none, an instrumentation's wrapper around a graph it traces otherwise, is no run of its own)."""
        todo = list(self.children.get(span_id, ()))
        while todo:
            child = todo.pop()
            if operation_of(self.by_id[child].attributes) in sc.MODEL_OPERATIONS:
                return True
            todo.extend(self.children.get(child, ()))
        return False

    def ancestors(self, span_id: str) -> Iterator[SpanData]:
        """The spans above ``span_id``, nearest first (as far as the parent links are in the trace, and adopted spans'
        graph runs: :attr:`adopted`)."""
        up = self.up(span_id) if span_id in self.by_id else None
        seen = {span_id}
        while up is not None and up in self.by_id and up not in seen:
            seen.add(up)
            yield self.by_id[up]
            up = self.up(up)

    def outermost(self, roots: set[str]) -> set[str]:
        def nested(root: str) -> bool:
            up = (self.by_id[root].parent_span_id if root not in self.adopted else self.adopted[root]) if root in self.by_id else None
            seen = {root}
            while up is not None and up not in seen:
                if up in roots:
                    return True
                seen.add(up)
                up = self.up(up) if up in self.by_id else None
            return False

        return {r for r in roots if r in self.nested or not nested(r)}

    def subtree(self, root: str) -> list[SpanData]:
        """The spans under ``root`` (itself first), without the runs nested in its tools (:attr:`nested`)."""
        out, todo = [], [root] if root in self.by_id else list(self.children.get(root, ()))
        while todo:
            span_id = todo.pop()
            out.append(self.by_id[span_id])
            todo.extend(c for c in self.children.get(span_id, ()) if c not in self.nested)
        return out


LANGCHAIN_MARKS = ("openinference.span.kind", "traceloop.span.kind", "langsmith.span.kind", "langfuse.observation.type", "mlflow.spanType")
"""The attributes by which each instrumentation of LangChain marks its spans (a LangChain run each)."""


def _same_langchain_run(graph: SpanData, inside: SpanData) -> bool:
    """Whether ``graph`` (a span outside every graph node) may be the span of the graph run that ``inside`` (a span in
    one of its nodes) ran in, where ``graph`` has no node's span under it among the spans read: written by the same
    instrumentation of LangChain (a LangChain run too, not an app's span), on one thread both name."""
    if not any(key in graph.attributes and key in inside.attributes for key in LANGCHAIN_MARKS):
        return False
    threads = [_thread(s) for s in (graph, inside)]
    return None not in threads and threads[0] == threads[1]


def _thread(span: SpanData) -> Any:
    """The thread (conversation) a span names: its conversation id, else its LangChain metadata's ``thread_id``; or
    None."""
    return normalize(span).attributes.get(sc.CONVERSATION_ID) or _metadata_thread(span)


def _node_name(span: SpanData) -> Any:
    """The LangGraph node a span ran in (as each dialect records it), or None."""
    attrs = span.attributes
    for key in _NODE_KEYS:
        if attrs.get(key):
            return attrs[key]
    return _metadata_value(span, "langgraph_node")


def _metadata_thread(span: SpanData) -> Any:
    """The ``thread_id`` of a LangChain run's metadata (OpenInference's ``metadata`` JSON), or None."""
    return _metadata_value(span, "thread_id")


def _metadata_value(span: SpanData, key: str) -> Any:
    """``key`` of a LangChain run's metadata as OpenInference records it (the span's ``metadata`` attribute, JSON) or
    OpenLLMetry before its association properties (in ``traceloop.entity.input``), or None (no such attribute, no such
    key, or no JSON object)."""
    metadata = span.attributes.get("metadata")
    if not isinstance(metadata, str) or key not in metadata:  # most spans: no JSON to decode
        return traceloop_metadata_value(span.attributes, key)
    try:
        decoded = json.loads(metadata)
    except (ValueError, RecursionError):
        return None
    return decoded.get(key) if isinstance(decoded, Mapping) else None


def unfinished_reason(run: list[SpanData], tree: _Tree, unended: Collection[str] = ()) -> str | None:
    """Why ``run`` never ended, or None: a span of it was written without an end time, or its root span is not in the
    trace (an SDK exports a span when it ends, and the root ends last: the process stopped mid-run) while spans of its
    steps (agent, model, tool or graph-node spans) point at it. A run's own root with a parent elsewhere (another
    service's span) is not one: only spans below the missing one count. Nor is a parent the spans mark as remote
    (another process's, which called this one: an LLM gateway's model calls under the agent service's span), unless the
    run's last model call asked for tools: its caller goes on with them, in spans not read yet."""
    ids = {s.span_id for s in run}
    open_spans = [s for s in run if s.span_id in unended]
    if open_spans:
        top = min(open_spans, key=lambda s: (s.parent_span_id in ids, s.start_ns))
        return (
            f"the run never ended: its span {top.name!r} ({top.span_id}) never ended (no endTimeUnixNano: the process stopped "
            "before it did)"
        )
    missing = _missing_parents(run, tree)
    between = [(parent, span) for parent, span in missing if span.span_id in tree.adopted]
    missing = [(parent, span) for parent, span in missing if span.span_id not in tree.adopted]
    local = [(parent, span) for parent, span in missing if span.parent_remote is not True]
    if local:
        parent, span = local[0]
        unknown = (
            "; if that parent is another service's (a caller that continued its trace into this one), an exporter that writes "
            "span flags (the OpenTelemetry SDKs' OTLP exporters) marks it remote, and the run is read as complete"
            if span.parent_remote is None
            else ""
        )
        under = sorted({s.span_id for p, s in local if p == parent})
        return (
            f"the run never ended: its root span ({parent}, the parent of {span.name!r}) is not among the spans read (a span "
            "is exported when it ends, and the root ends last: the process stopped mid-run, or the rest of the trace is in "
            f"files not read with this one){unknown}" + (f"{_READ_UNDER}{', '.join(under)}" if len(under) <= MAX_NAMED_UNDER_ROOT else "")
        )
    if between:
        return incomplete_reason(run[0].name, run[0].span_id, [(parent, span.name) for parent, span in between], ended_ok(run[0]))
    if missing and (asked := _last_reply_tool_calls(run)):
        parent, span = missing[0]
        return (
            f"the run is not complete: its root span ({parent}, the parent of {span.name!r}) is remote (in the service that "
            f"called this one) and its last model call asked for tools ({', '.join(asked)}) that no later call answers: the "
            "caller goes on with them, in spans not among those read"
        )
    return None


def missing_root(run: list[SpanData], tree: _Tree) -> tuple[str, SpanData] | None:
    """The id of ``run``'s root span when it is not in the trace while spans of its steps (agent, model, tool or
    graph-node spans) point at it, with the first such span; else None. A remote parent counts too: the run is named
    after it, as the whole run is once the caller's spans are read."""
    missing = [(parent, span) for parent, span in _missing_parents(run, tree) if span.span_id not in tree.adopted]
    return missing[0] if missing else None


def incomplete_reason(root_name: str | None, root_id: str, between: Sequence[tuple[str, str | None]], ended: bool) -> str:
    """Why a run whose root span was read is still not whole: spans between its root and its steps (``between``: their
    ids, each with the name of a span read below it) are not among the spans read, in files not read with this one (a
    root read in an earlier file than its children) or lost. ``ended``: the root span ended without an error or a
    cancellation (:func:`ended_ok`), as its run's whole version would then have (:func:`read_gaps` reads it back: a
    later ingest that reads the spans completes the run)."""
    named: dict[str, list[str | None]] = {}
    for parent, name in between:
        named.setdefault(parent, []).append(name)
    parts = [
        f"{parent} (the parent of {names[0]!r}{f' and {len(names) - 1} more' if len(names) > 1 else ''})"
        if names[0] is not None
        else f"{parent} (the parent of spans read earlier)"
        for parent, names in named.items()
    ]
    root = f"{root_name!r} ({root_id})" if root_name is not None else f"({root_id})"
    return (
        f"the run is incomplete: its root span {root} was read, but not {len(parts)} span(s) between it and its steps: "
        f"{', '.join(parts)} (an intermediate span, exported when it ends, is in files not read with this one, or its "
        f"exporter lost it: ingesting them completes the run){_ENDED_OK if ended else ''}"
    )


MAX_NAMED_UNDER_ROOT = 64
"""A run whose root span was not read names the spans read right under it (:func:`unfinished_reason`) up to this many:
the spans between the root and its steps that a version holding the root lacks (:func:`read_gaps`)."""
_READ_UNDER = "; read under it: "
_ENDED_OK = "; its root span ended without an error"
_INCOMPLETE = re.compile(r"^the run is incomplete: its root span (?:.*? )?\(([0-9a-f]{16})\) was read, but not \d+ span\(s\) between ")
_GAP = re.compile(r"\b([0-9a-f]{16}) \(the parent of ")
_NEVER_ENDED = re.compile(r"^the run never ended: its root span \(([0-9a-f]{16}), the parent of ")
_UNDER = re.compile(re.escape(_READ_UNDER) + r"((?:[0-9a-f]{16}, )*[0-9a-f]{16})$")


class SaidGaps(NamedTuple):
    """What a stored version's error says of the spans it read (:func:`read_gaps`)."""

    root: str | None
    """The id of its root span, where it read it."""
    lacked: frozenset[str]
    """The ids of the spans it did not read: its root's (where it was not read), the spans between it and its steps."""
    ended: bool
    """Whether its root span (read) ended without an error."""
    read: frozenset[str]
    """Ids of spans it read, as far as it names them (those right under a root it lacked)."""


def read_gaps(error: Any) -> SaidGaps | None:
    """What a stored ``interrupted`` version's error says it lacked (see :class:`SaidGaps`): an
    :func:`incomplete_reason` (its root read, spans between it and its steps not), or :func:`unfinished_reason`'s
    missing root (with the spans it read right under it); None for another reason."""
    if not isinstance(error, str):
        return None
    found = _INCOMPLETE.match(error)
    if found is not None:
        return SaidGaps(found.group(1), frozenset(_GAP.findall(error[found.end() :])), error.endswith(_ENDED_OK), frozenset())
    found = _NEVER_ENDED.match(error)
    if found is not None:
        under = _UNDER.search(error)
        return SaidGaps(None, frozenset({found.group(1)}), False, frozenset(under.group(1).split(", ")) if under else frozenset())
    return None


def ended_ok(root: SpanData) -> bool:
    """Whether a run's root span ended without an error or a cancellation (capture's own: ``ee.status`` completed)."""
    status = root.attributes.get(sc.EE_STATUS)
    if status is not None:
        return status == "completed"
    return not root.is_error and not root.attributes.get(sc.ERROR_TYPE)


@dataclass(frozen=True)
class Gaps:
    """What of a run's spans was read, for completing it across ingests (:func:`read_gaps` reads a stored version's)."""

    read: frozenset[str]
    """The ids of its spans read."""
    missing: frozenset[str]
    """The ids of the spans it lacks: its root's where that was not read, the spans between its root and its steps."""
    root: str | None
    """The id of its root span where it was read."""
    ended_ok: bool
    """Whether that root span ended without an error (:func:`ended_ok`)."""
    only_missing: bool
    """Whether missing spans are all it lacks (no span of it never ended, no remote parent)."""


def run_gaps(run: list[SpanData], tree: _Tree, unended: Collection[str] = ()) -> Gaps:
    """The :class:`Gaps` of one run of a trace (before its spans are rewritten)."""
    missing = _missing_parents(run, tree)
    rootless = any(span.span_id not in tree.adopted for _, span in missing) or run[0].span_id not in tree.by_id
    return Gaps(
        read=frozenset(s.span_id for s in run),
        missing=frozenset(parent for parent, _ in missing),
        root=None if rootless else run[0].span_id,
        ended_ok=not rootless and ended_ok(run[0]),
        only_missing=not any(s.span_id in unended for s in run) and all(span.parent_remote is not True for _, span in missing),
    )


def _missing_parents(run: list[SpanData], tree: _Tree) -> list[tuple[str, SpanData]]:
    root = run[0]
    out = []
    for span in run:
        parent = span.parent_span_id
        if parent is None or parent in tree.by_id or (span is root and operation_of(span.attributes) == sc.OP_INVOKE_AGENT):
            continue
        if operation_of(span.attributes) is not None or in_graph_node(span):
            out.append((parent, span))
    return out


def _last_reply_tool_calls(run: list[SpanData]) -> list[str]:
    """The tools the run's last model call asked for (none when it answered, or its reply cannot be read)."""
    models = [s for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS]
    if not models:
        return []
    last = max(models, key=lambda s: (s.start_ns, s.end_ns))
    replies = _openai_messages(last, sc.OUTPUT_MESSAGES) or []
    return [
        str(c.get("function", {}).get("name") or "?") for m in replies if m.get("role") == "assistant" for c in m.get("tool_calls") or []
    ]


def conversations(spans: list[SpanData], tree: _Tree) -> list[list[SpanData]]:
    """Model spans with no agent span around them (``spans``: those outside every run), split into the conversations
    their calls hold, the one that started first first; ``[spans]`` when they hold one.

    A web request's span over two tool loops (two agents of an ``asyncio.gather``, or one after the other) traced by a
    model client's instrumentation alone holds the calls of both. A call goes on with an earlier one when its history
    starts with that call's history and reply (the tool results after it); failing that, when its history answers a tool
    call id that call's reply made; or it asks again (the same history, nothing of the reply kept: a retry, a correction)
    after that call ended, where that call is still its conversation's last and no tool span ran a call of its reply.
    Else it starts a conversation: a call given the history of a call that was gone on with, or whose reply acted, is
    the same task run again (a batch job running it twice, a conversation started over after an error), not a retry;
    so is a call given exactly the history of a call that answered in text (a task done in one call, run again: that
    answer ended its conversation; a conversation's later call given the same history again still goes on with the
    call before it). A failed call, a reply of tool calls nothing ran, and a text answer asked again with a correction
    appended are still asked again.
    Of several calls it may go on with, it takes the one of the longest history, then the one whose reply's ids it
    answers, ended before it started, not yet continued, started last (the latest reply, where a task run again gave the
    same one): two conversations given the same first messages part at their replies. A call whose history cannot be read
    stays with the call before it. Each tool span goes with the call whose reply asked for it (by call id, tool name and
    arguments), the spans under a call or tool span with it, the rest (the request's span) with the first conversation."""
    calls = _top_model_calls(spans, tree)
    if len(calls) < 2 or _one_history(calls):
        return [spans]
    read = [_read_call(span, tree) for span in calls]
    ran = [_ran(normalize(s)) for s in spans if operation_of(s.attributes) == sc.OP_EXECUTE_TOOL]
    conversation_of = _chain(read, ran)
    if max(conversation_of) == 0:
        return [spans]
    owner: dict[str, int] = {}
    for call, conversation in zip(read, conversation_of, strict=True):
        owner[call.span.span_id] = conversation
    taken: set[tuple[int, int]] = set()
    for span in sorted(spans, key=lambda s: s.start_ns):
        if span.span_id not in owner and operation_of(span.attributes) == sc.OP_EXECUTE_TOOL:
            asker = _asker(normalize(span), read, taken)
            if asker is not None:
                owner[span.span_id] = conversation_of[asker]
    parts: list[list[SpanData]] = [[] for _ in range(max(conversation_of) + 1)]
    for span in spans:
        parts[next((owner[a] for a in _self_and_ancestors(span, tree) if a in owner), 0)].append(span)
    return parts


@dataclass(frozen=True)
class BareCall:
    """A trace that holds one model call and nothing around it (no agent, request or tool span: the model client's
    instrumentation alone, as OpenTelemetry's OpenAI v2 writes an app's calls when no span of the app is active), as
    :func:`join_bare_calls` links it to the calls it goes on with. Digests, not messages: ingest keeps one per trace."""

    trace_id: str
    span_id: str
    service: Any
    start_ns: int
    end_ns: int
    goes_on: bytes | None
    """The digest of its history up to the reply whose tool results end it (None where it ends on no tool result)."""
    answered: tuple[str, ...]
    """The call ids those tool results answer."""
    leads: bytes | None
    """The digest of its history followed by its reply, where the reply asked for tools (None otherwise)."""
    asked: tuple[str, ...]
    """The ids of the tool calls its reply made."""
    signature: bytes | None = None
    """Its :func:`call_signature`: a run's model call traced again by a model client's instrumentation has the same."""
    scope: str | None = None
    """The instrumentation scope of its span, where known."""


def bare_call(trace_id: str, grouped: TraceRuns) -> BareCall | None:
    """``grouped`` (one trace's runs) as a :class:`BareCall`, or None where the trace holds more than one model call
    with the spans under it, an agent or tool span, or a run that never ended."""
    if grouped.problem is not None or len(grouped.runs) != 1 or grouped.unfinished[0] or grouped.missing_roots[0]:
        return None
    run = grouped.runs[0]
    root = run[0]
    if root.parent_span_id is not None or operation_of(root.attributes) not in sc.MODEL_OPERATIONS:
        return None
    if any(operation_of(s.attributes) in (sc.OP_EXECUTE_TOOL, sc.OP_INVOKE_AGENT) for s in run):
        return None
    tree = _Tree(run)
    if len(_top_model_calls(run, tree)) != 1 or any(s.parent_span_id is None for s in run[1:]):
        return None
    call = _read_call(root, tree)
    if call.history is None or call.given is None:
        return None
    given, history = call.given, call.history
    tail = 0
    while tail < len(given) and given[len(given) - 1 - tail].get("role") == "tool":
        tail += 1
    before = given[len(given) - 1 - tail] if tail < len(given) else None
    goes_on = None
    if tail and before is not None and before.get("role") == "assistant" and before.get("tool_calls"):
        goes_on = _digest(history[: len(history) - tail])
    outputs = [m for m in _openai_messages(_carrier(root, tree), sc.OUTPUT_MESSAGES) or [] if m.get("role") == "assistant"]
    leads = None
    if len(outputs) == 1 and outputs[0].get("tool_calls") and not root.is_error:
        leads = _digest([*history, _message_key(outputs[0])])
    return BareCall(
        trace_id=trace_id,
        span_id=root.span_id,
        service=root.resource.get("service.name"),
        start_ns=root.start_ns,
        end_ns=root.end_ns,
        goes_on=goes_on,
        answered=tuple(str(m.get("tool_call_id") or "") for m in given[len(given) - tail :]),
        leads=leads,
        asked=tuple(i for i, _, _ in call.asked if i),
        signature=call_signature(_carrier(root, tree)),
        scope=root.scope,
    )


def _digest(keys: Sequence[Any]) -> bytes:
    return hashlib.blake2b(repr(list(keys)).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def join_bare_calls(calls: Sequence[BareCall]) -> list[list[BareCall]]:
    """The runs that bare calls (each a trace of its own, see :class:`BareCall`) make, each in call order, the run
    that started first first: a call goes on with an earlier one of the same service whose history and reply its own
    history is, followed by the results of tools that reply asked for (by call id, where both name them). Of several
    such earlier calls, one that ended before it started and that no other call went on with, the last to end (the same
    task run again gives the same replies). A call that follows another reply (a new user message after an answer: the
    next turn of a thread, a new graph run) starts a run of its own."""
    ordered = sorted(calls, key=lambda c: (c.start_ns, c.end_ns, c.trace_id))
    leading: dict[tuple[Any, bytes], list[int]] = {}
    previous: dict[int, int] = {}
    taken: set[int] = set()
    for index, call in enumerate(ordered):
        if call.goes_on is not None:
            found = [
                before
                for before in leading.get((call.service, call.goes_on), ())
                if before not in taken and ordered[before].end_ns <= call.start_ns and _answers(call.answered, ordered[before].asked)
            ]
            if found:
                best = max(found, key=lambda before: (ordered[before].end_ns, ordered[before].start_ns))
                previous[index] = best
                taken.add(best)
        if call.leads is not None:
            leading.setdefault((call.service, call.leads), []).append(index)
    runs: list[list[BareCall]] = []
    for index in range(len(ordered)):
        if index in taken:
            continue  # not a run's last call
        chain = [index]
        while chain[-1] in previous:
            chain.append(previous[chain[-1]])
        runs.append([ordered[i] for i in reversed(chain)])
    return sorted(runs, key=lambda run: (run[0].start_ns, run[0].trace_id))


class ModelCalls:
    """The model calls of the runs read from every trace, by service and :func:`call_signature`, with their times: a
    bare call (:class:`BareCall`) within one of them is that call traced again, in a trace of its own, by a model
    client's instrumentation beside the framework's (no span of the app active where the client ran)."""

    def __init__(self) -> None:
        self._times: dict[tuple[Any, bytes], list[tuple[int, int, str | None]]] = {}

    def add(self, run: Sequence[SpanData]) -> None:
        for span in run:
            if operation_of(span.attributes) in sc.MODEL_OPERATIONS and (signature := call_signature(span)) is not None:
                key = (span.resource.get("service.name"), signature)
                self._times.setdefault(key, []).append((span.start_ns, span.end_ns, span.scope))

    def echoed(self, call: BareCall) -> bool:
        """Whether bare ``call`` is one of these calls traced again (:func:`traced_twice`)."""
        if call.signature is None:
            return False
        return any(
            start <= call.start_ns and call.end_ns <= end and (scope is None or scope != call.scope)
            for start, end, scope in self._times.get((call.service, call.signature), ())
        )


def _answers(answered: Sequence[str], asked: Sequence[str]) -> bool:
    """Whether tool results of these call ids can answer a reply that made calls of those (ids missing on either side
    say nothing)."""
    named = [i for i in answered if i]
    return not named or not asked or set(named) <= set(asked)


def joined_run(runs: Sequence[list[SpanData]]) -> list[SpanData]:
    """The runs of bare calls :func:`join_bare_calls` joined, as one run: their spans in order, the first call's root
    first (the run's root, after which it is named)."""
    return _with_reply_ids([span for run in runs for span in run])


@dataclass
class _Call:
    span: SpanData
    given: list[dict[str, Any]] | None
    """Its input messages (OpenAI's shape), None when they cannot be read."""
    offset: int
    """How many keys of ``history`` come before the input messages (the system instructions)."""
    history: list[Any] | None
    """Its input as comparable keys (system instructions first), None when it cannot be read."""
    replies: set[Any]
    asked: list[tuple[str | None, str | None, str | None]]
    """The tool calls its reply made: (id, name, arguments as canonical JSON), ids filled from a later call's history."""
    answered: set[str]
    """The tool call ids its history answers or names."""
    answers: bool = False
    """Whether it replied in text with no tool calls (and did not fail): its conversation may end there."""


def _top_model_calls(spans: list[SpanData], tree: _Tree) -> list[SpanData]:
    """The model calls among ``spans`` in start order: model spans under no other model span (nested ones are the same call
    traced twice, see :func:`_without_echoes`)."""
    ids = {s.span_id for s in spans}
    tops = [
        s
        for s in spans
        if operation_of(s.attributes) in sc.MODEL_OPERATIONS
        and not any(a.span_id in ids and operation_of(a.attributes) in sc.MODEL_OPERATIONS for a in tree.ancestors(s.span_id))
    ]
    return sorted(tops, key=lambda s: (s.start_ns, s.end_ns))


def _carrier(span: SpanData, tree: _Tree) -> SpanData:
    """The span that holds a model call's messages: its own, else the first nested model span's that has them."""
    todo = [span.span_id]
    while todo:
        node = tree.by_id[todo.pop(0)]
        if operation_of(node.attributes) in sc.MODEL_OPERATIONS:
            attrs = normalize(node).attributes
            if attrs.get(sc.INPUT_MESSAGES) or attrs.get(sc.OUTPUT_MESSAGES):
                return node
        todo.extend(tree.children.get(node.span_id, ()))
    return span


def _one_history(calls: list[SpanData]) -> bool:
    """Whether each call's input text goes on the one before's (one conversation, as a JSON serializer writes a list that
    grew): read without decoding any message."""
    texts = [(a.get(sc.SYSTEM_INSTRUCTIONS), a.get(sc.INPUT_MESSAGES)) for a in (normalize(c).attributes for c in calls)]
    for (system, before), (system_after, after) in pairwise(texts):
        if system != system_after or not isinstance(before, str) or not isinstance(after, str) or not before.endswith("]"):
            return False
        if len(after) <= len(before) or not after.startswith(before[:-1]) or after[len(before) - 1] != ",":
            return False
    return True


def _message_key(message: Mapping[str, Any]) -> tuple[Any, ...]:
    """What makes a message the same one in a later call's history, whatever the ids and encodings around it (a reply's
    tool calls without their ids, arguments as text or JSON)."""
    calls = tuple(
        (c.get("function", {}).get("name"), _arguments_key(c.get("function", {}).get("arguments"))) for c in message.get("tool_calls") or []
    )
    return (message.get("role"), content_to_text(message.get("content")).strip(), calls)


def _arguments_key(arguments: Any) -> str | None:
    if arguments is None:
        return None
    try:
        return json.dumps(parse_arguments(arguments), sort_keys=True, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(arguments)


def _read_call(span: SpanData, tree: _Tree) -> _Call:
    carrier = _carrier(span, tree)
    given, outputs = _openai_messages(carrier, sc.INPUT_MESSAGES), _openai_messages(carrier, sc.OUTPUT_MESSAGES) or []
    system = normalize(carrier).attributes.get(sc.SYSTEM_INSTRUCTIONS)
    offset = 1 if system else 0
    history = None if not given else [("system", str(system))] * offset + [_message_key(m) for m in given]
    replies = [m for m in outputs if m.get("role") == "assistant"]
    answered = {str(m["tool_call_id"]) for m in given or [] if m.get("role") == "tool" and m.get("tool_call_id")}
    answered |= {str(c["id"]) for m in given or [] for c in m.get("tool_calls") or [] if c.get("id")}
    asked = [
        (c.get("id") or None, c.get("function", {}).get("name"), _arguments_key(c.get("function", {}).get("arguments")))
        for m in replies
        for c in m.get("tool_calls") or []
    ]
    answers = not (span.is_error or carrier.is_error or asked) and any(content_to_text(m.get("content")).strip() for m in replies)
    return _Call(
        span=span,
        given=given,
        offset=offset,
        history=history,
        replies={_message_key(m) for m in replies},
        asked=asked,
        answered=answered,
        answers=answers,
    )


_Ran = tuple[int, str | None, str | None, str | None]


def _ran(tool: SpanData) -> _Ran:
    """A tool span (normalized) as the call it ran: (start, call id, tool name, arguments as canonical JSON)."""
    attrs = tool.attributes
    raw = attrs.get(sc.TOOL_CALL_ARGUMENTS)
    name = attrs.get(sc.TOOL_NAME)
    return (
        tool.start_ns,
        str(attrs[sc.TOOL_CALL_ID]) if attrs.get(sc.TOOL_CALL_ID) else None,
        str(name) if name else None,
        _arguments_key(raw) if raw not in (None, "") else None,
    )


def _acted(call: _Call, until: int, ran: Sequence[_Ran]) -> bool:
    """Whether a tool span that started after ``call`` did and before ``until`` ran a call its reply made (as far as the
    span names its id, tool and arguments): the reply acted, so it was not thrown away."""
    for start, call_id, name, arguments in ran:
        if not call.span.start_ns <= start <= until:
            continue
        for asked_id, asked_name, asked_arguments in call.asked:
            if call_id and asked_id and call_id != asked_id:
                continue
            if (name and asked_name and name != asked_name) or (arguments and asked_arguments and arguments != asked_arguments):
                continue
            return True
    return False


def _chain(calls: list[_Call], ran: Sequence[_Ran] = ()) -> list[int]:
    """The conversation of each call (in start order; numbered as they start), see :func:`conversations`. ``ran``: the
    tool spans among the calls (:func:`_ran`)."""
    by_history: dict[tuple[int, int], list[int]] = {}
    issued: dict[str, list[int]] = {}
    conversation_of: list[int] = []
    tails: dict[int, int] = {}  # conversation -> its last call
    for index, call in enumerate(calls):
        history = call.history or []
        prefixes = [0]
        for key in history:
            prefixes.append(hash((prefixes[-1], key)))
        found: list[tuple[int, int, int]] = []  # (kind, length of the history shared, the earlier call)
        for length in range(len(history), 0, -1):
            for before in by_history.get((length, prefixes[length]), ()):
                earlier = calls[before]
                if earlier.history != history[:length]:
                    continue
                if length < len(history) and history[length] in earlier.replies:
                    found.append((3, length, before))  # goes on with that call's reply
                elif (
                    earlier.span.end_ns <= call.span.start_ns
                    and (length == len(history) or history[length][0] != "assistant")
                    and tails.get(conversation_of[before]) == before  # nothing went on with its reply
                    and not _acted(earlier, call.span.start_ns, ran)
                    and not (length == len(history) and earlier.answers)  # an answer given again: the task run again
                ):
                    found.append((1, length, before))  # asks again after it
        found += [(2, 0, before) for call_id in call.answered for before in issued.get(call_id, ())]  # answers its reply's calls

        def rank(candidate: tuple[int, int, int], call: _Call = call) -> tuple[Any, ...]:
            kind, length, before = candidate
            earlier = calls[before]
            ties = any(i and i in call.answered for i, _, _ in earlier.asked)
            ended = earlier.span.end_ns <= call.span.start_ns
            return (kind, length, ties, ended, tails.get(conversation_of[before]) == before, before)

        best = max(((rank(c), c[2]) for c in found), default=None)
        if best is not None:
            conversation = conversation_of[best[1]]
            made, length = calls[best[1]], best[0][1]
            if best[0][0] == 3 and not all(i for i, _, _ in made.asked):  # the reply's call ids, as this history gives them
                kept = (call.given or [])[length - call.offset].get("tool_calls") or []
                if [n for _, n, _ in made.asked] == [c.get("function", {}).get("name") for c in kept]:
                    made.asked = [(i or c.get("id") or None, n, a) for (i, n, a), c in zip(made.asked, kept, strict=True)]
                    for i, _, _ in made.asked:
                        if i:
                            issued.setdefault(i, []).append(best[1])
        elif call.history is None and index:
            conversation = conversation_of[index - 1]  # cannot be read: stays with the call before
        else:
            conversation = max(conversation_of, default=-1) + 1
        conversation_of.append(conversation)
        tails[conversation] = index
        if call.history:
            by_history.setdefault((len(history), prefixes[-1]), []).append(index)
        for call_id, _, _ in call.asked:
            if call_id:
                issued.setdefault(call_id, []).append(index)
    return conversation_of


def _asker(tool: SpanData, calls: list[_Call], taken: set[tuple[int, int]]) -> int | None:
    """The call (its index in ``calls``) whose reply asked for the tool call ``tool`` (a normalized tool span) ran: one
    that started before it and made a call of its id, name and arguments, as far as the span names them; of several, one
    whose call no other tool span took, that ended before the tool started, started last."""
    attrs = tool.attributes
    call_id = str(attrs[sc.TOOL_CALL_ID]) if attrs.get(sc.TOOL_CALL_ID) else None
    name = attrs.get(sc.TOOL_NAME)
    raw = attrs.get(sc.TOOL_CALL_ARGUMENTS)
    arguments = _arguments_key(raw) if raw not in (None, "") else None
    best: tuple[tuple[Any, ...], tuple[int, int]] | None = None
    for index, call in enumerate(calls):
        if call.span.start_ns > tool.start_ns:
            break
        for position, (asked_id, asked_name, asked_arguments) in enumerate(call.asked):
            if (call_id and asked_id and call_id != asked_id) or (name and asked_name and name != asked_name):
                continue
            if arguments is not None and asked_arguments is not None and arguments != asked_arguments:
                continue
            rank = ((index, position) not in taken, bool(call_id and asked_id), call.span.end_ns <= tool.start_ns, call.span.start_ns)
            if best is None or rank > best[0]:
                best = (rank, (index, position))
    if best is None:
        return None
    taken.add(best[1])
    return best[1][0]


def _self_and_ancestors(span: SpanData, tree: _Tree) -> Iterator[str]:
    yield span.span_id
    yield from (a.span_id for a in tree.ancestors(span.span_id))


def _without_echoes(run: list[SpanData], tree: _Tree) -> list[SpanData]:
    """``run`` with each model call once: a model span under another model span is the same call traced twice (Google
    ADK's legacy ``call_llm`` over its ``generate_content``; a framework's instrumentation over the model client's, as
    OpenInference's LangChain LLM span over OpenTelemetry's OpenAI ``chat`` span; an app's model client over the LLM
    gateway it calls). Of nested model spans the outermost that carries messages is the call (with the tools a nested
    one lists, where it lists none); the others would be decisions twice, or empty ones."""
    normalized: dict[str, SpanData] = {}

    def attrs(span: SpanData) -> Mapping[str, Any]:
        if span.span_id not in normalized:
            normalized[span.span_id] = normalize(span)
        return normalized[span.span_id].attributes

    def is_model(span: SpanData) -> bool:
        return operation_of(span.attributes) in sc.MODEL_OPERATIONS

    groups: dict[str, list[SpanData]] = {}
    for span in run:
        if is_model(span):
            outer = [a for a in tree.ancestors(span.span_id) if is_model(a)]
            groups.setdefault((outer[-1] if outer else span).span_id, []).append(span)
    # the same call traced by two instrumentations that did not nest their spans: the outer call in time keeps it
    tops = [run_span for run_span in run if run_span.span_id in groups]
    for echo, outer in _contained_echoes(tops).items():
        groups[outer.span_id].extend(groups.pop(echo))
    echoes: set[str] = set()
    tools: dict[str, Any] = {}
    for calls in groups.values():
        if len(calls) == 1:
            continue
        depth = {s.span_id: sum(1 for a in tree.ancestors(s.span_id) if is_model(a)) for s in calls}
        calls.sort(key=lambda s: (depth[s.span_id], s.start_ns))
        keep = next((s for s in calls if attrs(s).get(sc.INPUT_MESSAGES) or attrs(s).get(sc.OUTPUT_MESSAGES)), calls[0])
        echoes.update(s.span_id for s in calls if s is not keep)
        listed = next((v for s in calls if (v := attrs(s).get(sc.TOOL_DEFINITIONS)) not in (None, "", "[]")), None)
        if attrs(keep).get(sc.TOOL_DEFINITIONS) in (None, "", "[]") and listed is not None:
            tools[keep.span_id] = listed
    if not echoes:
        return run
    return [
        replace(s, attributes={**s.attributes, sc.TOOL_DEFINITIONS: tools[s.span_id]}) if s.span_id in tools else s
        for s in run
        if s.span_id not in echoes
    ]


def call_signature(span: SpanData) -> bytes | None:
    """What tells a model call apart from its service's other calls, whichever instrumentation traced it: its reply
    (each message's text and tool calls, their ids included) and the messages it was given (system messages aside: one
    instrumentation writes them as system instructions, another as messages), digested; None where either cannot be
    read. Two instrumentations tracing one call (a framework's and its model client's) write the same."""
    given = [m for m in _openai_messages(span, sc.INPUT_MESSAGES) or [] if m.get("role") != "system"]
    replies = [m for m in _openai_messages(span, sc.OUTPUT_MESSAGES) or [] if m.get("role") == "assistant"]
    if not given or not replies:
        return None
    ids = [tuple(str(c.get("id") or "") for c in m.get("tool_calls") or []) for m in replies]
    return _digest([*(_message_key(m) for m in replies), ids, *(_message_key(m) for m in given)])


def traced_twice(outer: SpanData, inner: SpanData, signatures: dict[str, bytes | None] | None = None) -> bool:
    """Whether model span ``inner`` is the call of model span ``outer`` traced again by another instrumentation, though
    not under it: a model client's instrumentation whose span is a sibling of the framework's (OpenLLMetry's LangChain
    spans are not made current) or in a trace of its own (no span of the app active where the client ran). Both of one
    service, ``inner`` within ``outer``'s time, the same reply to the same messages (:func:`call_signature`), and not of
    one instrumentation scope (where the spans name theirs).
    ``signatures``: the signatures computed so far, by span id."""
    if outer.span_id == inner.span_id or not (outer.start_ns <= inner.start_ns and inner.end_ns <= outer.end_ns):
        return False
    if outer.resource.get("service.name") != inner.resource.get("service.name"):
        return False
    if outer.scope is not None and outer.scope == inner.scope:
        return False  # one instrumentation traces a call once: two calls of it (Send branches asking alike, at once)
    memo = {} if signatures is None else signatures
    for span in (outer, inner):
        if span.span_id not in memo:
            memo[span.span_id] = call_signature(span)
    return memo[outer.span_id] is not None and memo[outer.span_id] == memo[inner.span_id]


def _contained_echoes(models: Sequence[SpanData], among: Sequence[SpanData] | None = None) -> dict[str, SpanData]:
    """The spans of ``among`` (default: ``models``) that are a span of ``models`` traced twice (:func:`traced_twice`),
    each with the span it echoes (the outermost in time). Only spans within another's time are compared (found by a
    sweep over start times: a run's successive calls, none within another, cost no signature at all)."""
    ordered = sorted(models, key=lambda s: (s.start_ns, -s.end_ns))
    starts = [s.start_ns for s in ordered]
    reach = list(itertools.accumulate((s.end_ns for s in ordered), max))  # the latest end among the first i + 1
    signatures: dict[str, bytes | None] = {}
    found: dict[str, SpanData] = {}
    for inner in sorted(models if among is None else among, key=lambda s: (s.start_ns, -s.end_ns)):
        candidates = []
        for j in range(bisect.bisect_right(starts, inner.start_ns) - 1, -1, -1):
            if reach[j] < inner.end_ns:
                break  # no span starting this early ends late enough to hold it
            outer = ordered[j]
            if outer.end_ns >= inner.end_ns and outer.span_id != inner.span_id and outer.span_id not in found:
                candidates.append(outer)
        for outer in reversed(candidates):  # the outermost first
            if traced_twice(outer, inner, signatures):
                found[inner.span_id] = outer
                break
    return found


def _with_orphan_tools(runs: list[list[SpanData]], leftover: list[SpanData], tree: _Tree) -> list[SpanData]:
    """``leftover`` (the spans outside every run) without the tool spans whose parent was not read that ran a call a
    model span of one of ``runs`` made (by its id): each is added to that run, whose step it observes. A file rotated
    between a tool's span and its graph node's span holds the tool's result (and error) apart from the node that links
    it to its run; left out, a later ingest reading the node completes the run without it."""
    orphans = [
        s
        for s in leftover
        if operation_of(s.attributes) == sc.OP_EXECUTE_TOOL and s.parent_span_id is not None and tree.up(s.span_id) is None
    ]
    if not orphans or not runs:
        return leftover
    made: dict[str, list[int]] = {}
    for n, run in enumerate(runs):
        for span in run:
            if operation_of(span.attributes) in sc.MODEL_OPERATIONS:
                for message in _openai_messages(span, sc.OUTPUT_MESSAGES) or ():
                    for call in message.get("tool_calls") or ():
                        if isinstance(call, Mapping) and call.get("id"):
                            made.setdefault(str(call["id"]), []).append(n)
    taken: set[str] = set()
    for span in orphans:
        owners = set(made.get(str(normalize(span).attributes.get(sc.TOOL_CALL_ID) or ""), ()))
        if len(owners) == 1:  # (a call id two runs' replies made says nothing)
            [n] = owners
            subtree = tree.subtree(span.span_id)
            runs[n] = [*runs[n], *subtree]
            taken.update(s.span_id for s in subtree)
    return [s for s in leftover if s.span_id not in taken] if taken else leftover


def _without_echoes_of(runs: Sequence[list[SpanData]], leftover: list[SpanData], tree: _Tree) -> list[SpanData]:
    """``leftover`` (the spans outside every run) without the model calls that are a run's traced again by a model
    client's instrumentation beside the framework's (:func:`traced_twice`: a sibling of the graph's span under the app's
    request span), and the spans under them: they would make a second trajectory of the same decisions."""
    if not runs or not any(operation_of(s.attributes) in sc.MODEL_OPERATIONS for s in leftover):
        return leftover
    models = [s for run in runs for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS]
    echoes = _contained_echoes(models, _top_model_calls(leftover, tree))
    if not echoes:
        return leftover
    return [s for s in leftover if not any(a in echoes for a in _self_and_ancestors(s, tree))]


def _with_context(run: list[SpanData], tree: _Tree) -> list[SpanData]:
    """``run`` with what its spans leave to the spans around them.

    * The thread: when no span of the run names one, the nearest enclosing span's (the OpenAI Agents SDK
      names it on its trace's span, ``group_id``, above the run's ``Task`` span) is the run root's. A graph run inside
      another run's tool that was invoked with a configuration of its own has its own thread, not the one its spans
      inherit from the outer run (see :func:`_nested_thread`).
    * The tools: a model span that lists none is given those its agent (the nearest agent span above it)
      lists (``gen_ai.tool.definitions`` on ``invoke_agent`` only: AWS Strands with
      ``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_tool_definitions``).
    * The resume: a graph run that continued its thread from its checkpoint (``ee.langgraph.resumed``, see
      :func:`~ee_middleware.ingest.dialects.adapt`) says so on the span that holds the graph's input; OpenLLMetry's is its
      workflow span, below the run's ``invoke_agent`` span, and the mark goes to the run's root, where the assembler
      reads it.
    * The graph's input and output: what capture writes on its root from them (the task, the answer, the closing tool
      messages) read from the span that holds them (:func:`_graph_io`).
    """
    changed: dict[str, dict[str, Any]] = {}
    root = run[0]
    own = _nested_thread(run, tree)
    if own is not None:
        run = [replace(s, attributes={k: v for k, v in s.attributes.items() if k not in _THREAD_KEYS}) for s in run]
        root = run[0]
        if own[0]:
            changed[root.span_id] = {sc.CONVERSATION_ID: own[0]}
    normalized = {s.span_id: normalize(s) for s in run}
    if own is None and not any(s.attributes.get(sc.CONVERSATION_ID) for s in normalized.values()):
        thread = next((v for s in tree.ancestors(root.span_id) if (v := normalize(s).attributes.get(sc.CONVERSATION_ID))), None)
        if thread:
            changed[root.span_id] = {sc.CONVERSATION_ID: thread}
    if sc.EE_RESUMED not in root.attributes and any(
        s.parent_span_id == root.span_id and s.attributes.get(sc.EE_RESUMED) and not in_graph_node(s) for s in run
    ):
        changed.setdefault(root.span_id, {})[sc.EE_RESUMED] = True
    graph = _graph_io(run, tree)
    if graph:
        changed.setdefault(root.span_id, {}).update({k: v for k, v in graph.items() if k not in root.attributes})
    for span in run:
        attrs = normalized[span.span_id].attributes
        if operation_of(attrs) not in sc.MODEL_OPERATIONS or attrs.get(sc.TOOL_DEFINITIONS) not in (None, ""):
            continue
        above = (normalized.get(a.span_id) or normalize(a) for a in tree.ancestors(span.span_id))
        agent = next((a for a in above if operation_of(a.attributes) == sc.OP_INVOKE_AGENT), None)  # its own agent's, not an outer one's
        tools = agent.attributes.get(sc.TOOL_DEFINITIONS) if agent is not None else None
        if tools:
            changed.setdefault(span.span_id, {})[sc.TOOL_DEFINITIONS] = tools
    if not changed:
        return run
    return [replace(s, attributes={**s.attributes, **changed[s.span_id]}) if s.span_id in changed else s for s in run]


def _graph_io(run: list[SpanData], tree: _Tree) -> dict[str, Any]:
    """What capture writes on a LangGraph run's root from the graph's input and output
    (:func:`~ee_middleware.ingest.dialects.graph_run_attributes`), read from the span of the graph run another
    instrumentation wrote: the run's root (OpenInference's graph span), else the one span under it outside every node
    that holds them (OpenLLMetry's workflow span, under its ``invoke_agent`` span). Nothing for capture's own runs (their
    root says it), a run of no LangGraph graph (none of its spans ran in a node: a CrewAI crew's inputs are no graph
    state), a run whose graph span was not exported (the span at its top is a node's, whose output is an update, not
    what the graph returned), or a graph run inside a tool (capture's root of one holds none of it either)."""
    root = run[0]
    if root.span_id not in tree.by_id or root.span_id in tree.nested or in_graph_node(root) or sc.EE_STATUS in root.attributes:
        return {}
    if not any(in_graph_node(s) for s in run):
        return {}
    found = graph_run_attributes(root)
    if found:
        return found
    held = [s for s in run if s.parent_span_id == root.span_id and not in_graph_node(s) and _TRACELOOP_IO & s.attributes.keys()]
    return graph_run_attributes(held[0]) if len(held) == 1 else {}


_TRACELOOP_IO = frozenset({"traceloop.entity.input", "traceloop.entity.output"})


_THREAD_KEYS = frozenset({sc.CONVERSATION_ID, "session.id", "traceloop.association.properties.thread_id"})
"""Where a span names its thread, as the dialects and :func:`~ee_middleware.capture.normalize.normalize` read it."""


def _nested_thread(run: list[SpanData], tree: _Tree) -> tuple[str | None] | None:
    """The thread of a graph run inside another run's tool (its root in :attr:`_Tree.nested`) that was invoked with a
    configuration of its own (``agent.invoke(input, {"configurable": {"thread_id": ...}})``), as a 1-tuple (None where
    the spans do not name it); None for any other run.

    Such a graph is a root graph of its own: its nodes run in root checkpoint namespaces (``agent:<id>``), where a graph
    that inherits the tool's configuration (invoked without one, or with the tool's) runs in the tool's namespace
    (``tools:<id>|agent:<id>``) and on the outer run's thread. Its spans still carry the outer run's ``thread_id``:
    LangChain hands a run's metadata down to the runs inside it, and the metadata keeps the first ``thread_id`` it had.
    OpenLLMetry's ``invoke_agent`` span of the inner graph (beside its workflow span, under the tool) names its own
    thread (``gen_ai.conversation.id``); OpenInference and LangSmith write it nowhere, so the run has none."""
    root = run[0]
    tool = tree.by_id.get(root.parent_span_id) if root.span_id in tree.nested and root.parent_span_id else None
    outer = _checkpoint_ns(tool) if tool is not None else None
    if tool is None or outer is None:
        return None
    inner = {ns for s in run if in_graph_node(s) and (ns := _checkpoint_ns(s)) is not None and ns != outer}
    if not inner or all(ns.startswith(f"{outer}|") for ns in inner):
        return None  # it ran in the tool's namespace: on the outer run's thread
    agents = sorted(
        (
            s
            for s in (tree.by_id[c] for c in tree.children.get(tool.span_id, ()))
            if s.span_id != root.span_id
            and operation_of(s.attributes) == sc.OP_INVOKE_AGENT
            and not in_graph_node(s)
            and s.start_ns <= root.start_ns
            and s.end_ns >= root.end_ns
        ),
        key=lambda s: -s.start_ns,
    )
    thread = next((str(v) for s in agents if (v := normalize(s).attributes.get(sc.CONVERSATION_ID))), None)
    return (thread,)


def chosen_replies(run: list[SpanData], counted: Choices | None = None) -> list[SpanData]:
    """``run`` with each model call that returned several choices (alternative replies to one request, ``n`` > 1; see
    :data:`~ee_middleware.ingest.dialects.OUTPUT_CHOICES`) holding the one the run went on with only: the others were
    never acted on, and read as the call's messages they would be steps (a tool call that never ran) or the answer.

    The run tells which: the next call's history holds it after the history this call was given (anywhere in it, where
    the app sends only its last messages); else a tool span between the two ran a call it made; else, for the run's last
    call, the run's root returned its text (the agent's output messages, the graph's answer). Where nothing tells, the
    first is kept, as OpenAI's convention makes the first choice the reply, and ``counted.first`` counts it (the ingest
    report says so); ``counted.told`` counts the others. Choices that cannot be read leave the call as it was."""
    models = sorted((s for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS), key=lambda s: (s.start_ns, s.end_ns))
    if not any(OUTPUT_CHOICES in s.attributes for s in models):
        return run
    counted = Choices() if counted is None else counted
    ran = sorted((_ran(normalize(s)) for s in run if operation_of(s.attributes) == sc.OP_EXECUTE_TOOL), key=lambda r: r[0])
    changed: dict[str, dict[str, Any]] = {}
    for n, span in enumerate(models):
        if OUTPUT_CHOICES not in span.attributes:
            continue
        attrs = {k: v for k, v in span.attributes.items() if k != OUTPUT_CHOICES}
        changed[span.span_id] = attrs
        choices = _choices(span)
        if choices is None:
            continue
        later = next((m for m in models[n + 1 :] if m.start_ns >= span.end_ns), None)
        chosen = _continued(span, later, choices)
        if chosen is None:
            until = later.start_ns if later is not None else None
            chosen = _acted_on(choices, [r for r in ran if span.start_ns <= r[0] and (until is None or r[0] <= until)])
        if chosen is None and later is None:
            chosen = _returned(run, choices)
        if chosen is None:
            counted.first += 1
            chosen = 0
        else:
            counted.told += 1
        attrs[sc.OUTPUT_MESSAGES] = dumps([choices[chosen][0]])
    return [replace(s, attributes=changed[s.span_id]) if s.span_id in changed else s for s in run]


_Choice = tuple[Any, list[tuple[Any, ...]], list[tuple[str | None, str | None, str | None]]]
"""One choice of a reply: its output message (as the span holds it), its messages' keys (:func:`_message_key`) and
the tool calls it made (id, name, arguments as canonical JSON)."""


def _choices(span: SpanData) -> list[_Choice] | None:
    """The choices of a model span's reply (one per output message: :data:`OUTPUT_CHOICES` says how many), or None
    where they cannot be read or are not as many as the span says."""
    raw = normalize(span).attributes.get(sc.OUTPUT_MESSAGES)
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(entries, list) or len(entries) != span.attributes.get(OUTPUT_CHOICES):
            return None
        out: list[_Choice] = []
        for entry in entries:
            converted = genai_to_openai([entry])
            asked = [
                (c.get("id") or None, c.get("function", {}).get("name"), _arguments_key(c.get("function", {}).get("arguments")))
                for m in converted
                if m.get("role") == "assistant"
                for c in m.get("tool_calls") or []
            ]
            out.append((entry, [_message_key(m) for m in converted], asked))
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None  # the span's own check reports it
    return out


def _continued(span: SpanData, later: SpanData | None, choices: list[_Choice]) -> int | None:
    """The choice whose messages the next call's history (``later``'s input) holds: after the history ``span`` was
    given, else anywhere in it; None where it holds none, or several different ones."""
    given = _openai_messages(span, sc.INPUT_MESSAGES)
    history = _openai_messages(later, sc.INPUT_MESSAGES) if later is not None else None
    if given is None or not history:
        return None
    before, keys = [_message_key(m) for m in given], [_message_key(m) for m in history]
    if keys[: len(before)] == before:
        after = keys[len(before) :]
        found = [i for i, (_, mine, _) in enumerate(choices) if mine and after[: len(mine)] == mine]
        if found:
            return found[0]
    found = [i for i, (_, mine, _) in enumerate(choices) if mine and _holds_run(keys, mine)]
    return found[0] if found and all(choices[i][1] == choices[found[0]][1] for i in found) else None


def _holds_run(keys: list[tuple[Any, ...]], run: list[tuple[Any, ...]]) -> bool:
    return any(keys[i : i + len(run)] == run for i in range(len(keys) - len(run) + 1))


def _acted_on(choices: list[_Choice], ran: Sequence[_Ran]) -> int | None:
    """The first choice a tool span of ``ran`` ran a call of (by call id, tool name and arguments, as far as both name
    them), or None."""
    for index, (_, _, asked) in enumerate(choices):
        for _, call_id, name, arguments in ran:
            for asked_id, asked_name, asked_arguments in asked:
                if call_id and asked_id and call_id != asked_id:
                    continue
                if (name and asked_name and name != asked_name) or (arguments and asked_arguments and arguments != asked_arguments):
                    continue
                if (call_id and asked_id) or (name and asked_name):
                    return index
    return None


def _returned(run: list[SpanData], choices: list[_Choice]) -> int | None:
    """The text choice the run's root returned (an agent span's output messages, the answer of the graph its span
    holds), where exactly one choice's text is it: the run ended on that reply."""
    root = run[0]
    if operation_of(root.attributes) in sc.MODEL_OPERATIONS:
        return None
    texts: set[str] = set()
    found = {**normalize(root).attributes, **(graph_run_attributes(root) if not in_graph_node(root) else {})}
    if found.get(sc.EE_FINAL_ANSWER):
        texts.add(str(found[sc.EE_FINAL_ANSWER]).strip())
    raw = found.get(sc.OUTPUT_MESSAGES)
    try:
        messages = genai_to_openai(json.loads(raw) if isinstance(raw, str) else raw or [])
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        messages = []
    texts |= {content_to_text(m.get("content")).strip() for m in messages if m.get("role") == "assistant" and not m.get("tool_calls")}
    texts.discard("")
    matched = [i for i, (_, keys, asked) in enumerate(choices) if not asked and any(key[1] in texts for key in keys)]
    return matched[0] if len(matched) == 1 else None


def _with_replies_from_history(run: list[SpanData]) -> list[SpanData]:
    """``run`` with the reply of each model call whose span holds none read from the history that follows it: the next
    model call's input, else what the graph returned (its root's output messages, :func:`_graph_io`), where that history
    holds this call's input (its system messages aside) followed by an assistant message (the run's last call: the
    assistant message the graph returned, where that call was not given it and goes on with the run's conversation:
    its input starts with the graph's input and with the call before's). OpenLLMetry 0.48's LangChain
    spans with langchain-core 1.x write each call's prompt but not its completion: without this the run had no decision
    and was stored ``stopped``, "a middleware or graph node ended the run". A call that failed, or whose reply no later
    history shows, is left as it is."""
    models = sorted((s for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS), key=lambda s: (s.start_ns, s.end_ns))
    silent = {s.span_id for s in models if not s.is_error and not _reply_written(s)}
    if not silent:
        return run
    graph = run[0] if run[0].span_id not in {s.span_id for s in models} else None  # the span the graph's input and output are on
    returned = _openai_messages(graph, sc.OUTPUT_MESSAGES) if graph is not None else None
    inputs: dict[int, list[dict[str, Any]]] = {}

    def given(n: int) -> list[dict[str, Any]]:
        """Model call ``n``'s input messages (decoded once)."""
        if n not in inputs:
            inputs[n] = _openai_messages(models[n], sc.INPUT_MESSAGES) or []
        return inputs[n]

    def keys(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [_message_key(m) for m in messages if m.get("role") != "system"]

    task = keys(_openai_messages(graph, sc.INPUT_MESSAGES) or []) if graph is not None else []

    def goes_on(asked: list[tuple[Any, ...]], n: int) -> bool:
        """Whether the call ``n`` given ``asked`` is the run's conversation going on: its input starts with the graph's
        input messages and with the call before's input (not a node's own prompt: a title, a summary, a grader)."""
        before = keys(given(n - 1)) if n else []
        return all(asked[: len(prefix)] == prefix for prefix in (task, before))

    changed: dict[str, dict[str, Any]] = {}
    for n, span in enumerate(models):
        if span.span_id not in silent or not given(n):
            continue
        asked = keys(given(n))
        if n + 1 < len(models):
            history = [m for m in given(n + 1) if m.get("role") != "system"]
            if len(history) > len(asked) and keys(history[: len(asked)]) == asked and history[len(asked)].get("role") == "assistant":
                changed[span.span_id] = {sc.OUTPUT_MESSAGES: json.dumps([history[len(asked)]], ensure_ascii=False)}
        elif returned and returned[-1].get("role") == "assistant" and _message_key(returned[-1]) not in asked and goes_on(asked, n):
            # the run's last call, in the run's conversation, and the graph returned an assistant message it was not given
            changed[span.span_id] = {sc.OUTPUT_MESSAGES: json.dumps([returned[-1]], ensure_ascii=False)}
    if not changed:
        return run
    return [replace(s, attributes={**s.attributes, **changed[s.span_id]}) if s.span_id in changed else s for s in run]


_REPLY_KEYS = ("gen_ai.completion", "llm.output_messages")


def _reply_written(span: SpanData) -> bool:
    """Whether a model span holds its reply: an attribute of its dialect's replies named, else its normalized
    ``gen_ai.output.messages`` (normalizing every span of a long run only to find each has one costs seconds)."""
    if any(key.startswith(_REPLY_KEYS) for key in span.attributes) or span.attributes.get(sc.OUTPUT_MESSAGES) not in (None, "", "[]"):
        return True
    return normalize(span).attributes.get(sc.OUTPUT_MESSAGES) not in (None, "", "[]")


def _with_reply_ids(run: list[SpanData]) -> list[SpanData]:
    """``run`` with the ids of tool calls that a reply names without them (LiteLLM's ``gen_ai.completion.{i}.function_call``)
    read from the next model call's history: the message after the history the call was given is that reply."""
    models = sorted((s for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS), key=lambda s: (s.start_ns, s.end_ns))
    changed: dict[str, dict[str, Any]] = {}
    for span, following in pairwise(models):
        outputs = _openai_messages(span, sc.OUTPUT_MESSAGES)
        reply = next((m for m in outputs or [] if m.get("role") == "assistant" and m.get("tool_calls")), None)
        if reply is None or all(c.get("id") for c in reply["tool_calls"]):
            continue
        given, later = _openai_messages(span, sc.INPUT_MESSAGES), _openai_messages(following, sc.INPUT_MESSAGES)
        if given is None or later is None or len(later) <= len(given) or later[: len(given)] != given:
            continue
        seen = later[len(given)].get("tool_calls") or []
        if [c.get("function", {}).get("name") for c in seen] != [c.get("function", {}).get("name") for c in reply["tool_calls"]]:
            continue
        reply["tool_calls"] = [{**c, "id": c.get("id") or s.get("id")} for c, s in zip(reply["tool_calls"], seen, strict=True)]
        changed[span.span_id] = {sc.OUTPUT_MESSAGES: json.dumps(outputs, ensure_ascii=False)}
    if not changed:
        return run
    return [replace(s, attributes={**s.attributes, **changed[s.span_id]}) if s.span_id in changed else s for s in run]


def _openai_messages(span: SpanData, key: str) -> list[dict[str, Any]] | None:
    """A model span's messages (any dialect) in OpenAI's chat shape, or None where they cannot be read."""
    raw = normalize(span).attributes.get(key)
    try:
        return genai_to_openai(json.loads(raw) if isinstance(raw, str) else raw or [])
    except (ValueError, TypeError, AttributeError, KeyError, RecursionError):
        return None  # the span's own check reports it


def _checkpoint_ns(span: SpanData) -> str | None:
    """The LangGraph checkpoint namespace a span ran in (``langgraph_checkpoint_ns`` of its LangChain metadata, as each
    dialect records it), or None."""
    attrs = span.attributes
    for key in (
        "traceloop.association.properties.langgraph_checkpoint_ns",
        "langsmith.metadata.langgraph_checkpoint_ns",
        "langfuse.observation.metadata.langgraph_checkpoint_ns",
    ):
        if attrs.get(key):
            return str(attrs[key])
    value = _metadata_value(span, "langgraph_checkpoint_ns")
    return str(value) if value else None


def lost_model_calls(run: Sequence[SpanData]) -> bool:
    """Whether the spans of ``run`` show a model call of it that was not read: the span of the LangGraph node its model
    calls run in (a node a model span read ran in; its own span, not one inside it) that ended before its first model
    span read, so holding none (the node's model span was in a file not read with this one: a rotated file's earlier
    part). Then the calls that model call made, which the next call's history holds and tool spans ran, are the model's
    decisions (:attr:`~ee_middleware.capture.assembler.AssemblyOptions.unread_model_calls`); without such a span a tool
    call before the first model call is the app's own (a node that writes a call to force a tool), never a step."""
    models = [s for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS]
    if not models:
        return False
    first = min(m.start_ns for m in models)
    nodes = {name for m in models if (name := _node_name(m))}
    by_id = {s.span_id: s for s in run}

    def node_span(span: SpanData) -> bool:  # the node's own span, not one inside it (create_react_agent's prompt step)
        parent = by_id.get(span.parent_span_id or "")
        return parent is None or _node_name(parent) != _node_name(span)

    return any(
        s.end_ns <= first and operation_of(s.attributes) not in sc.MODEL_OPERATIONS and _node_name(s) in nodes and node_span(s) for s in run
    )


def in_graph_node(span: SpanData) -> bool:
    """Whether the span ran inside a LangGraph node (by the node metadata each dialect records: :func:`_node_name`)."""
    return bool(_node_name(span))


def with_task(run: list[SpanData]) -> list[SpanData]:
    """Name the run's task when the spans do not (``ee.task``): the user message that started it.

    On a thread with several turns the first model call of a run sees the whole history; the task of
    this run is its last user message, not the thread's first one.
    """
    ids = {s.span_id for s in run}
    tops = [s for s in run if s.parent_span_id not in ids]
    # (ee.tool_call.error_positions is no sign of one: a dialect marks failed tool results so, dialects.adapt; nor is the
    # answer the graph returned, read from another instrumentation's spans, _graph_io)
    if any(key.startswith("ee.") and key not in _READ_FROM_DIALECTS for s in tops for key in s.attributes):
        return run  # ee-middleware's own run (or a task read from the graph's input): its root says what it knows (ee.task)
    task = _last_user_text(run)
    if not task:
        return run
    return [replace(s, attributes={**s.attributes, sc.EE_TASK: task}) if s.parent_span_id not in ids else s for s in run]


_READ_FROM_DIALECTS = frozenset({sc.EE_TOOL_ERROR_POSITIONS, sc.EE_FINAL_ANSWER, OUTPUT_CHOICES})
"""The ``ee.*`` keys ingest itself puts on another instrumentation's spans that leave the task to :func:`with_task`."""


def _last_user_text(run: Sequence[SpanData]) -> str | None:
    models = sorted((s for s in run if operation_of(s.attributes) in sc.MODEL_OPERATIONS), key=lambda s: (s.start_ns, s.end_ns))
    if not models:
        return None
    raw = normalize(models[0]).attributes.get(sc.INPUT_MESSAGES)
    try:
        messages: Any = json.loads(raw) if isinstance(raw, str) else raw
        converted = genai_to_openai(messages or [])
    except (ValueError, TypeError, AttributeError, RecursionError):
        return None  # the model span's own check reports it
    users = [content_to_text(m.get("content")) for m in converted if m.get("role") == "user"]
    return users[-1] if users and users[-1] else None
