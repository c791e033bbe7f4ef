"""The core records of the experience store: trajectories, steps and approvals.

One schema, versioned by :data:`SCHEMA_VERSION`. Messages and tool calls use the OpenAI chat shapes
(``{"role": "assistant", "content": ..., "tool_calls": [...]}``) so that data exports straight to
common fine-tuning formats. Changes to these records are append-only: a new optional field bumps the
minor part of the version, and readers accept every older version.

Field by field:

``Trajectory``
    one run of an agent: ``task`` is the first user message, ``tools`` the tool schemas offered to
    the model (OpenAI ``{"type": "function", "function": {...}}`` form), ``messages`` the whole
    conversation as the model last saw it plus its final reply, ``environment`` what a sandbox needs
    to rebuild the world at step 0 (supplied by the user; ``None`` when unknown).
``Step``
    one decision of the model: ``state`` is the list of messages the model saw when it decided,
    ``action`` the tool call it made (or its answer) with the reasoning it wrote first, if any
    (``action.reasoning``), ``observation`` what the tool returned, ``tools`` the names of the tools
    offered at that decision where they were not all of the trajectory's ``tools`` (``None``), ``NAME#K`` for
    the K-th other schema the run offered under a name (:class:`ToolCatalog`).
    Parallel tool calls from one model response become several steps sharing ``decision_index``.
``Approval``
    whether the trajectory may feed training (``approved``), may not (``rejected``), or waits for a
    person (``pending``); with who decided, when and why. Every decision is kept (``ApprovalEvent``,
    an append-only log); one that overturns an opposite decision records it in ``overrides``.
``Rollout``
    one alternative action executed from a recorded state (Early Experience's s_i -> a_i^j -> s_i^j):
    which trajectory and step it branched from, the branch number, the proposed tool call, who
    proposed it and with what sampling settings, the real observation the sandbox returned, whether
    it was an error, whether it is ``synthetic`` (true only for experience-model output) and then
    where it came from (``synthetic_source``: the model, the retrieved real transitions, its
    reasoning), the sandbox kind and how long it took. An observation the sandbox wrote about its own
    failure (the tool timed out, crashed it or ran out of memory) says so in ``observation.sandbox_failure``.
``ReplayRecord``
    the outcome of replaying one trajectory under one replay configuration (``replay_id``): done,
    skipped (with the reason) or failed, with counts. The replay job uses it to resume.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ee_middleware.errors import RecordError

SCHEMA_VERSION = "1.7"
"""Version of the record schema written by this library (1.1 added ``Rollout.unrestored`` and
``ReplayRecord.unrestorable``: redacted arguments replay could not restore; 1.2 added
``Rollout.synthetic_source``: the experience model's lineage, formerly under
``proposer.settings["experience"]``; 1.3 added ``Observation.sandbox_failure``: an observation the
sandbox wrote about itself, not the tool's answer; 1.4 added ``Action.reasoning``: a reasoning model's
reasoning before the action, and ``Step.tools``: the tools offered at one decision, where they were not all of the
run's; both came in the same unreleased 1.4; 1.5 stores a message's or tool result's text blocks a line apart,
``"\n"``, where older records hold them joined with nothing between them: replay compares those accordingly; 1.6 added
``ToolCall.malformed``: whether capture knew the model wrote the call malformed, where its arguments could be read either
way); 1.7: a tool offered under one name with another schema at a later call (a middleware rewriting its
description or parameters per call) is kept, each such schema once in ``Trajectory.tools`` after the first of its name,
and named ``NAME#K`` in the ``Step.tools`` of the steps offered it, which every step of such a run has: an older version
reading it leaves that tool out of those steps' rows)."""

ApprovalStatus = Literal["pending", "approved", "rejected"]
APPROVAL_STATUSES: tuple[str, ...] = ("pending", "approved", "rejected")
TrajectoryStatus = Literal["completed", "error", "interrupted", "stopped"]
"""How a run ended: its model's reply ended it (``completed``), it raised (``error``), it paused and its thread may
resume (``interrupted``: a human review, a breakpoint, a stopped process; ``error`` then says why when nobody paused it,
such as ``cancelled: CancelledError``), or it returned normally on a reply that no
model call wrote (``stopped``: a middleware or graph node ended it, such as a call limit with ``exit_behavior="end"`` or a
retry policy giving up with ``on_failure="continue"``; ``error`` then says so and quotes that reply, which is also the
``final_answer``). ``stopped`` is newer than schema 1.3's readers, which read every other status."""
SandboxFailure = Literal["timeout", "crash", "memory"]
"""How a sandbox failed to get a tool's answer: the call ran past its time limit (``timeout``), ended the
sandbox's process (``crash``: a segfault, ``os._exit``, a signal) or hit its memory limit (``memory``)."""
SANDBOX_FAILURES: tuple[str, ...] = ("timeout", "crash", "memory")
Message = dict[str, Any]
ToolSchema = dict[str, Any]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC (every timestamp in the store is UTC)."""
    return dt.datetime.now(dt.UTC)


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)

    @classmethod
    def parse(cls, data: Any, *, where: str = "") -> Any:
        """Validate ``data`` (a dict or JSON text); raise :class:`RecordError` naming the field."""
        try:
            if isinstance(data, (str, bytes)):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecordError(_explain(cls.__name__, exc, where)) from None


def _explain(kind: str, exc: ValidationError, where: str) -> str:
    problems = []
    for err in exc.errors()[:5]:
        field = ".".join(str(p) for p in err["loc"]) or "(record)"
        problems.append(f"{field}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    location = f" in {where}" if where else ""
    return f"Invalid {kind}{location}: " + "; ".join(problems) + more


class ToolCall(_Record):
    """A call of one tool by the model, with arguments already decoded from JSON."""

    id: str
    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)
    malformed: bool | None = Field(None, exclude_if=lambda value: value is None)
    """Whether the model wrote this call malformed, as capture knew it (schema 1.6): ``True`` for a call the graph
    refused and no tool ran (LangChain's ``invalid_tool_calls``: ``create_agent`` answers it itself), whose ``arguments``
    are the text the model wrote, ``{"_raw": text}``; ``False`` for a well-formed call whose only argument is named
    ``_raw``: the model wrote that key itself (an object; in capture's own runs every call LangChain parsed, held in
    ``tool_calls``, whether or not its tool then failed or exists), or a tool received it (an invalid call a
    ``wrap_model_call`` middleware repaired into ``{"_raw": ...}``, which the graph ran). ``None`` where the arguments
    say it: every other call, calls of records older than 1.6 or built by hand, and another recorder's calls whose
    arguments were no JSON object (``Paris``, held as ``{"_raw": "Paris"}``), also where a tool span ran them (the
    tool got the text, not a ``_raw`` argument); replay and IL then read ``{"_raw": ...}`` alone as malformed unless
    the tool declares ``_raw`` (:mod:`ee_middleware.replay.malformed`, which replay and IL share). Left out of dumps
    while ``None``."""

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI chat ``tool_calls`` item for this call."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)},
        }


class Action(_Record):
    """What the model did at a step: call a tool, or answer in text."""

    kind: Literal["tool_call", "answer"]
    tool_call: ToolCall | None = None
    content: str | None = None
    reasoning: str | None = Field(None, exclude_if=lambda value: value is None)
    """The reasoning the model wrote before this action (a reasoning model's ``reasoning_content``: vLLM's reasoning
    parsers, LangChain reasoning blocks, Anthropic thinking, an inline ``<think>`` block), as recorded on its reply;
    the parallel calls of one reply all carry that reply's reasoning. ``None`` for a model that wrote none, and in
    records older than schema 1.4. Left out of dumps while ``None``, so that an action without reasoning serializes as
    it did before 1.4."""

    @model_validator(mode="after")
    def _tool_call_matches_kind(self) -> Action:
        # after the fields, so that an action leaving tool_call out is checked too: the store would take it, and no read
        # could give it back
        if self.kind == "tool_call" and self.tool_call is None:
            raise ValueError("a 'tool_call' action needs its tool_call")
        return self


class Observation(_Record):
    """What the environment returned for a tool call."""

    content: str
    is_error: bool = False
    truncated_chars: int = 0
    sandbox_failure: SandboxFailure | None = Field(None, exclude_if=lambda value: value is None)
    """Set (with ``is_error``) when the sandbox got no answer from the tool and ``content`` describes the sandbox's own
    failure instead (the isolated sandbox's time, crash and memory limits): no production environment returns that
    text, so dataset builders leave such rollouts out. ``None`` for a real answer, error or not. Recorded steps never
    carry it (the store keeps it for rollouts only). Left out of dumps while ``None``, so that a real observation
    serializes as it did before schema 1.3."""

    def capped(self, max_chars: int) -> Observation:
        """This observation cut to ``max_chars`` characters, the cut added to ``truncated_chars``."""
        if len(self.content) <= max_chars:
            return self
        cut = len(self.content) - max_chars
        return self.model_copy(update={"content": self.content[:max_chars], "truncated_chars": self.truncated_chars + cut})


class Step(_Record):
    """One decision of the model inside a trajectory."""

    trajectory_id: str
    index: int = Field(ge=0)
    decision_index: int = Field(ge=0)
    state: list[Message]
    action: Action
    observation: Observation | None = None
    latency_ms: float | None = None
    """Wall time of the tool call (``None`` for answers or when the tool span is missing)."""
    model_latency_ms: float | None = None
    """Wall time of the model call that produced the action."""
    tools: list[str] | None = Field(None, exclude_if=lambda value: value is None)
    """The names of the tools offered to the model at this decision, in the order offered, where they were not all of
    the trajectory's ``tools`` (a middleware choosing tools per call, such as ``LLMToolSelectorMiddleware``; a tool
    added at a later turn; several agents in one graph, each with its own); their schemas are the trajectory's of those
    names (:meth:`Trajectory.step_tools`). A tool offered with another schema than the first one of its name (a
    middleware rewriting its description or parameters per call) is named ``NAME#K``: the K-th other schema of that name
    in the trajectory's ``tools`` (schema 1.7, :class:`ToolCatalog`); every step of such a run has its ``tools``.
    ``None`` means all of the trajectory's ``tools``: every step of a run whose tools never change, and records older
    than schema 1.4. Left out of dumps while ``None``."""


class Approval(_Record):
    """Approval state of a trajectory. ``by``/``at`` are empty while ``pending``."""

    status: ApprovalStatus = "pending"
    by: str | None = None
    at: dt.datetime | None = None
    reason: str | None = None


def approve_if_verdict(verdict: object) -> bool:
    """What an ``approve_if`` rule returned, as a decision: ``True`` approves, ``False`` does not (a NumPy bool as
    well); anything else is a ``TypeError`` saying so, and the caller leaves the trajectory pending as for a rule that
    raised. Taken by its truth, ``lambda t: t.status`` or ``lambda t: t.final_answer`` (a text) approved every run,
    failed ones too, for training, with the reason "approve_if returned True"."""
    if isinstance(verdict, bool):
        return verdict
    kind = type(verdict)
    if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):  # a comparison of array values (NumPy 2, 1.x)
        return bool(verdict)
    raise TypeError(
        f"approve_if returned {kind.__name__} {verdict!r:.80}, not True or False; return a comparison, e.g. "
        "approve_if=lambda t: t.status == 'completed'"
    )


class ApprovalEvent(_Record):
    """An approval decision as stored in the append-only approval log."""

    trajectory_id: str
    status: ApprovalStatus
    by: str
    at: dt.datetime = Field(default_factory=utcnow)
    reason: str | None = None
    overrides: Approval | None = None
    """The opposite decision this one overturned (approving a rejected trajectory or the reverse,
    which needs ``force``), kept so that the history shows both."""

    def as_approval(self) -> Approval:
        return Approval(status=self.status, by=self.by, at=self.at, reason=self.reason)


class ProposerInfo(_Record):
    """Who proposed an alternative action, and with which sampling settings."""

    policy: str = Field(min_length=1)
    """The policy's name: ``mutate``, ``transformers``, ``openai`` or a user policy's name."""
    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    settings: dict[str, Any] = Field(default_factory=dict)
    """Anything else that shaped the proposal (``refill_for`` when it topped up another policy)."""


class SyntheticSource(_Record):
    """Where a synthetic observation came from: the experience model that wrote it (DreamGym)."""

    model: str = Field(min_length=1)
    """The experience model's spec (``local:DIR[@ADAPTER]``, ``openai:BASE_URL#MODEL``, ...)."""
    retrieved: list[str] = Field(default_factory=list)
    """Ids of the real transitions shown to it as examples (``step:TRAJECTORY:INDEX``, ``rollout:ID``)."""
    reasoning: str | None = None
    """The model's reasoning, written before its prediction."""
    reward: float | None = None
    """The outcome reward it predicted, when it predicted one."""


RolloutIdentity = tuple[str, int, int]


class Rollout(_Record):
    """One alternative tool call executed from a recorded state, with the real observation."""

    schema_version: str = SCHEMA_VERSION
    id: str = Field(min_length=1)
    replay_id: str = Field(min_length=1)
    trajectory_id: str = Field(min_length=1)
    step_index: int = Field(ge=0)
    branch_index: int = Field(ge=0)
    action: Action
    proposer: ProposerInfo
    observation: Observation
    is_error: bool = False
    synthetic: bool = False
    unrestored: list[str] = Field(default_factory=list)
    """Redaction placeholders in the proposed arguments that replay could not give the sandbox the real
    values of (no vault, a value missing from it, or an ambiguous tag): the observation is the
    sandbox's answer to the placeholder, not to the value. Dataset builders leave such rollouts out."""
    sandbox: str = Field(min_length=1)
    duration_ms: float = Field(ge=0)
    created_at: dt.datetime = Field(default_factory=utcnow)
    synthetic_source: SyntheticSource | None = None
    """The experience model that wrote a synthetic observation (``None`` for a real one)."""

    @model_validator(mode="before")
    @classmethod
    def _lift_experience_lineage(cls, data: Any) -> Any:
        """Before 1.2 a synthetic rollout kept its lineage under ``proposer.settings["experience"]``: it moves
        to :attr:`synthetic_source` (old stores, and writers that still put it there)."""
        if not isinstance(data, dict) or not data.get("synthetic"):
            return data
        proposer = data.get("proposer")
        settings = (
            proposer.settings if isinstance(proposer, ProposerInfo) else proposer.get("settings") if isinstance(proposer, dict) else None
        )
        if not isinstance(settings, dict) or not isinstance(settings.get("experience"), dict):
            return data
        rest = {k: v for k, v in settings.items() if k != "experience"}
        data = dict(data)
        data["proposer"] = (
            proposer.model_copy(update={"settings": rest}) if isinstance(proposer, ProposerInfo) else {**proposer, "settings": rest}
        )
        if data.get("synthetic_source") is None:
            data["synthetic_source"] = settings["experience"]
        return data

    @model_validator(mode="after")
    def _source_only_when_synthetic(self) -> Rollout:
        if self.synthetic_source is not None and not self.synthetic:
            raise ValueError("synthetic_source is set on a rollout that is not synthetic")
        return self


ReplayStatus = Literal["done", "skipped", "failed"]

FEWER_ANSWERS: tuple[str, ...] = (
    "short_answers",
    "missing_answers",
    "server_short_answers",
    "extra_requests",
    "failed_extra_requests",
)
"""What a replay record's ``details["fewer_answers"]`` counts, for a policy whose model answers fewer alternatives than
asked: ``short_answers``, proposals the policy got fewer than K answers for (the refill supplied the rest);
``missing_answers``, the answers those lacked; ``server_short_answers``, requests a served model answered with fewer
choices than ``n`` (it ignores or refuses ``n``: the client asked again); ``extra_requests``, the further requests sent for
them; ``failed_extra_requests``, those that failed (see :meth:`ReplayRecord.fewer_answers`)."""


class ReplayRecord(_Record):
    """What replaying one trajectory under one configuration produced (the job's resume marker)."""

    schema_version: str = SCHEMA_VERSION
    replay_id: str = Field(min_length=1)
    trajectory_id: str = Field(min_length=1)
    status: ReplayStatus
    reason: str | None = None
    policy: str
    sandbox: str
    k: int = Field(ge=0)
    seed: int
    states: int = 0
    """Recorded states replayed (expert tool-call steps)."""
    branches: int = 0
    """Rollouts stored."""
    errors: int = 0
    """Rollouts whose observation is an error."""
    rejected: int = 0
    """Proposals dropped: unparsable, unknown tool, arguments that fail the schema, duplicates."""
    refused: int = 0
    """Proposals not executed because the tool has side effects and no sandbox provides it."""
    fidelity_mismatches: int = 0
    """Expert steps whose re-executed observation differs from the recorded one (both redacted alike)."""
    unrestorable: int = 0
    """Expert steps whose redacted arguments replay could not restore (listed in ``details["unrestorable_steps"]``):
    their observation is not checked, since the sandbox answered the placeholder."""
    details: dict[str, Any] = Field(default_factory=dict)
    duration_s: float = 0.0
    finished_at: dt.datetime = Field(default_factory=utcnow)

    def fewer_answers(self) -> dict[str, int]:
        """The counts of :data:`FEWER_ANSWERS` in ``details["fewer_answers"]``, each 0 where it is absent (a policy that
        got every answer it asked for, and records written before replay counted them). The worker that replayed this
        trajectory counts what its policy met since its previous record: with proposals asked for ahead (more than one
        request in flight), a few of the next trajectory's may be counted here. A policy rebuilt after a failure is read
        again at every record until the requests it was still answering have ended, so a run's records sum to its
        counts; only a stopped run (Ctrl-C, SIGTERM) leaves out the requests it did not wait for."""
        given = self.details.get("fewer_answers")
        given = given if isinstance(given, dict) else {}
        return {name: int(given.get(name) or 0) for name in FEWER_ANSWERS}


class Trajectory(_Record):
    """One recorded agent run with its steps."""

    schema_version: str = SCHEMA_VERSION
    id: str = Field(min_length=1)
    app: str = Field(min_length=1)
    app_version: str | None = None
    thread_id: str | None = None
    task: str | None = None
    tools: list[ToolSchema] = Field(default_factory=list)
    model: str | None = None
    messages: list[Message] = Field(default_factory=list)
    final_answer: str | None = None
    status: TrajectoryStatus = "completed"
    error: str | None = None
    started_at: dt.datetime
    ended_at: dt.datetime
    environment: dict[str, Any] | None = None
    approval: Approval = Field(default_factory=Approval)
    source: str = "record_experience"
    trace_id: str | None = None
    steps: list[Step] = Field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        """A line a notebook can show: who, what and how many steps, not every step's whole state (the default printed
        each step's messages, so a 31-step run's repr ran to 187 KB)."""
        task = self.task if self.task is None or len(self.task) <= 60 else self.task[:57] + "..."
        return (
            f"Trajectory(id={self.id!r}, app={self.app!r}, status={self.status!r}, approval={self.approval.status!r}, "
            f"task={task!r}, steps={len(self.steps)}, started_at={self.started_at.isoformat()!r})"
        )

    __str__ = __repr__

    @property
    def tool_names(self) -> list[str]:
        return [s.action.tool_call.name for s in self.steps if s.action.tool_call is not None]

    def step_tools(self, step: Step) -> list[ToolSchema]:
        """The schemas of the tools offered at ``step``: the trajectory's ``tools`` where ``step.tools`` is ``None``, else
        those of its names, in its order (a name the trajectory has no schema for is left out)."""
        return offered_tools(self.tools, step.tools)

    def to_openai_chat(self) -> dict[str, Any]:
        """This trajectory as one OpenAI chat fine-tuning example (``messages`` and ``tools``: the first schema of each
        name, where a tool was offered with several)."""
        example: dict[str, Any] = {"messages": self.messages}
        if self.tools:
            example["tools"] = offered_tools(self.tools, None)
        return example


def tool_schema_name(schema: Any) -> str | None:
    """The name of a tool schema (OpenAI ``{"type": "function", "function": {...}}`` or a flat ``{"name": ...}``)."""
    if not isinstance(schema, dict):
        return None
    inner = schema.get("function", schema)
    name = inner.get("name") if isinstance(inner, dict) else None
    return None if name is None else str(name)


def offered_tools(tools: list[ToolSchema], names: list[str] | None) -> list[ToolSchema]:
    """The schemas of ``tools`` (a trajectory's) offered at a step whose ``Step.tools`` is ``names``: all of them where
    ``names`` is ``None`` (the first schema of each name, where a tool was offered with several), else those named, in
    ``names``' order, ``NAME#K`` being the K-th schema of that name after its first (:class:`ToolCatalog`); a name
    without a schema in ``tools`` is left out."""
    by_ref: dict[str, ToolSchema] = {}
    before: dict[str, int] = {}  # name -> how many schemas of that name came before
    firsts: list[ToolSchema] = []
    for schema in tools:
        name = tool_schema_name(schema)
        if name is None:
            firsts.append(schema)
            continue
        k = before[name] = before.get(name, -1) + 1
        if k == 0:
            firsts.append(schema)
        by_ref.setdefault(variant_ref(name, k), schema)  # (a tool itself named like a variant, listed first, stays itself)
    if names is None:
        return firsts if len(firsts) < len(tools) else tools
    return [by_ref[n] for n in names if n in by_ref]


def variant_ref(name: str, k: int) -> str:
    """How ``Step.tools`` names the ``k``-th schema offered under tool ``name`` after its first (``name`` for ``k`` 0)."""
    return name if k == 0 else f"{name}#{k}"


class ToolCatalog:
    """A run's tool schemas as its model calls were offered them, for its trajectory's ``tools`` and its steps'
    ``Step.tools``: every schema once, first offer first, and a reference to each (:meth:`ref`): its name, or ``NAME#K``
    for the K-th schema offered under a name after its first (a middleware that rewrites a tool's description or
    parameters per call: each step is shown the schema its model call was given). Schemas are told apart by value
    (``==``), so one decoded again for every call is one schema."""

    def __init__(self, tools: Iterable[ToolSchema] = ()) -> None:
        self.tools: list[ToolSchema] = []
        """Every schema, in the order first offered (a trajectory's ``tools``)."""
        self._by_name: dict[str, list[ToolSchema]] = {}
        for schema in tools:
            self.ref(schema)

    def ref(self, schema: ToolSchema) -> str | None:
        """The ``Step.tools`` reference of ``schema`` (``None`` for one without a name), added if new."""
        name = tool_schema_name(schema)
        if name is None:
            if schema not in self.tools:
                self.tools.append(schema)
            return None
        same = self._by_name.setdefault(name, [])
        for k, known in enumerate(same):
            if known == schema:
                return variant_ref(name, k)
        same.append(schema)
        self.tools.append(schema)
        return variant_ref(name, len(same) - 1)

    def refs(self, schemas: Iterable[ToolSchema]) -> list[str]:
        """The references of ``schemas`` (one model call's tools), in their order; those without a name left out."""
        return [ref for schema in schemas if (ref := self.ref(schema)) is not None]

    @property
    def varies(self) -> bool:
        """Whether a tool was offered with several schemas: then every step names its tools (``None`` would mean the
        first schema of each name, which a step offered another one was not shown)."""
        return any(len(same) > 1 for same in self._by_name.values())

    def default_refs(self) -> list[str]:
        """What a step whose ``Step.tools`` is ``None`` is offered: the first schema of each name, in order."""
        return list(self._by_name)

    def step_tools(self, refs: list[str]) -> list[str] | None:
        """The ``Step.tools`` of a step offered ``refs``: ``None`` where they are all of the run's tools, in their order,
        and no tool was offered with several schemas (:attr:`varies`), else ``refs``."""
        return None if not self.varies and refs == self.default_refs() else refs
