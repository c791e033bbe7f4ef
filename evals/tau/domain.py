"""What a tau-style domain is: tools over a JSON database, a policy text, tasks with ground truth.

* **tools**: functions ``tool(data, **arguments) -> str`` that read and change ``data`` (the
  database, a JSON object) in place, each with an OpenAI tool schema;
* **policy**: the text the agent gets as its system prompt (what it may and may not do);
* **tasks**: per split, :class:`TauTask` items: the user's turns (scripted; each with the ground-truth
  actions the agent should take in that turn and a reply that says what the user must hear), an
  instruction for an LLM user simulator, and the outputs every reply set must contain.

The agent's run is scored by the database it leaves (:mod:`~ee_middleware.evals.tau.suite`), so
the world is a :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox` over a fresh copy of
the data: the same sandbox type replay uses, with its JSON-canonical :meth:`state_digest`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.errors import ConfigError
from ee_middleware.evals.matching import missing_outputs, normalize
from ee_middleware.messages import to_jsonable
from ee_middleware.records import ToolCall, tool_schema_name
from ee_middleware.replay.sandboxes.python import PythonSandbox

Tool = Callable[..., Any]
RESPOND = "respond"
"""tau-bench's name for "say this to the user" in ground-truth actions: not a tool, never replayed."""


@dataclass(frozen=True)
class TauAction:
    """A ground-truth tool call."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TauTurn:
    """One scripted user turn: what the user says, what the agent should do, what it should answer."""

    user: str
    actions: tuple[TauAction, ...] = ()
    reply: str = "Done."


@dataclass(frozen=True)
class TauTask:
    """One task: scripted turns, an instruction for a simulated user, required outputs.

    ``category``: ``action`` (the database must change), ``answer`` (nothing changes, outputs are
    required) or ``refusal`` (the policy forbids what the user asks: nothing may change). The ground truth must
    show it: a domain's tasks are refused when loaded where it does not (:meth:`TauDomain.tasks`).
    """

    id: str
    turns: tuple[TauTurn, ...]
    instruction: str
    outputs: tuple[str, ...] = ()
    category: str = "action"

    @property
    def actions(self) -> list[TauAction]:
        return [action for turn in self.turns for action in turn.actions]

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> TauTask:
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"A task in {where} is {type(data).__name__} {data!r:.80}, not a JSON object: write each task as "
                '{"id": ..., "instruction": ..., "turns": [{"user": ..., "actions": [{"name": ..., "arguments": {...}}], "reply": ...}], '
                '"outputs": [...]}.'
            )
        _known_fields(data, TASK_FIELDS, f"Task {data.get('id', '?')!r} in {where}")
        try:
            for i, turn in enumerate(data["turns"]):
                if isinstance(turn, Mapping):
                    _known_fields(turn, TURN_FIELDS, f"Task {data.get('id', '?')!r} in {where}: turn {i + 1}")
                    for action in turn.get("actions") or []:
                        if isinstance(action, Mapping):
                            name = f"Task {data.get('id', '?')!r} in {where}: the action {action.get('name')!r} of turn {i + 1}"
                            _known_fields(action, ACTION_FIELDS, name)
            turns = tuple(
                TauTurn(
                    user=turn["user"],
                    actions=tuple(TauAction(a["name"], _arguments(a, data, where)) for a in turn.get("actions", [])),
                    reply=turn.get("reply", "Done."),
                )
                for turn in data["turns"]
            )
            return cls(
                id=str(data["id"]),
                turns=turns,
                instruction=data["instruction"],
                outputs=_outputs(data, where),
                category=data.get("category", "action"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"Task {data.get('id', '?')!r} in {where} is malformed ({type(exc).__name__}: {exc}): it needs 'id', 'instruction' "
                "and 'turns', a list of objects with 'user' (and optionally 'actions': [{'name', 'arguments'}] and 'reply')."
            ) from exc


TASK_FIELDS = ("id", "instruction", "turns", "outputs", "category")
TURN_FIELDS = ("user", "actions", "reply")
ACTION_FIELDS = ("name", "arguments")
CATEGORIES = ("action", "answer", "refusal")


def _known_fields(item: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """Refuse a field the format does not have: a misspelt one ('output') would be ignored, and its meaning lost."""
    for key in item:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where} has an unknown field {key!r}{hint}; its fields are: {', '.join(known)}.")


def _arguments(action: Mapping[str, Any], task: Mapping[str, Any], where: str) -> dict[str, Any]:
    arguments = action.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ConfigError(
            f"Task {task.get('id', '?')!r} in {where}: the arguments of its action {action.get('name')!r} are "
            f'{type(arguments).__name__} {arguments!r:.60}, not a JSON object: write them as {{"NAME": VALUE, ...}}.'
        )
    return dict(arguments)


def _outputs(task: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """The required outputs: a list of strings (a number counts as its JSON text: ``5`` is ``"5"``)."""
    outputs = task.get("outputs", [])
    if not isinstance(outputs, list):  # a lone string would be read letter by letter
        raise ConfigError(
            f"Task {task.get('id', '?')!r} in {where}: 'outputs' is {type(outputs).__name__} {outputs!r:.60}, not a list: "
            f"write a list of the texts a reply must hold, e.g. [{json.dumps(str(outputs))[:60]}]."
        )
    return tuple(json.dumps(o) if isinstance(o, (int, float)) and not isinstance(o, bool) else o for o in outputs)


@dataclass
class TauDomain:
    """A domain: ``load_data()`` returns a fresh database (JSON data: dicts with string keys, lists, strings, finite
    numbers, booleans, None, or subclasses of these whose JSON copy compares equal, such as an ``OrderedDict``, an
    ``IntEnum`` or a ``numpy.float64``); ``splits`` name -> loader of its tasks.

    Check your own domain with the conformance kit, in your tests: ``check_tau_domain(factory)`` from
    :mod:`ee_middleware.evals.tau.testing` runs the checks below and what the harness relies on beyond them (a fresh,
    independent database from every ``load_data()`` call, tools that read their ``data`` argument and survive bad
    arguments, schemas that fit their functions, the ``oracle`` passing every task)."""

    name: str
    policy: str
    tools: Mapping[str, Tool]
    schemas: list[dict[str, Any]]
    load_data: Callable[[], dict[str, Any]]
    splits: Mapping[str, Callable[[], list[TauTask]]]
    source: str = "built-in"
    categories_from_ground_truth: bool = False
    """For tasks that name no category (a tau-bench checkout's): each gets the one its ground truth shows instead of
    being checked against it (:meth:`check_category`): ``action`` where it changes the database, else ``answer`` where it
    requires outputs, else ``refusal``. One whose ground truth fails on a fresh database stays an ``action`` task, scored
    as ``task_error`` (the checkout's task is at fault, not the run)."""
    _data_text: str | None = field(default=None, repr=False)
    _effects: dict[str, GroundTruth] = field(default_factory=dict, repr=False)

    def fresh_data(self) -> dict[str, Any]:
        """A fresh, independent copy of the initial database (loaded once, then parsed from its JSON text).

        Raises :class:`ConfigError` naming the domain when ``load_data`` fails or gives no JSON object, or a database
        its JSON copy would change for the tools (a key that is not a string, a tuple, NaN, a set, a date, a defaultdict...:
        the error names the place in the database, what JSON makes of it and the fix; :func:`_json_changes`)."""
        if self._data_text is None:
            self._data_text = self._database_text()
        data: dict[str, Any] = json.loads(self._data_text)
        return data

    def _database_text(self) -> str:
        try:
            data = self.load_data()
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"The tau domain {self.name!r} could not build its database: its load_data() raised {type(exc).__name__}: {exc}. "
                "Fix the data it reads (or the loader) so that it returns the initial database, a JSON object."
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"The database of the tau domain {self.name!r} is a {type(data).__name__}, not a JSON object: load_data() must "
                "return a dict (the tools read and change it in place; runs are scored by its JSON form)."
            )
        changes = _json_changes(data)
        if changes.count:
            raise ConfigError(changes.message(self.name))
        try:
            return json.dumps(data, allow_nan=False)
        except RecursionError as exc:  # all the walk above lets through: nesting deeper than json's recursion allows
            raise ConfigError(
                f"The database of the tau domain {self.name!r} is nested too deeply for JSON ({exc}): runs are scored by the JSON "
                "form of the data, so flatten it (keep records in dicts keyed by id rather than inside each other)."
            ) from exc

    def tasks(self, split: str) -> list[TauTask]:
        loader = self.splits.get(split)
        if loader is None:
            raise ConfigError(f"The tau domain {self.name!r} has no split {split!r}; it has: {', '.join(self.splits)}.")
        try:
            tasks = loader()
        except ConfigError:
            raise
        except Exception as exc:  # the domain's own loader (a user's code): a tasks file cut short, missing, not JSON
            raise ConfigError(
                f"The tau domain {self.name!r} could not load the tasks of its split {split!r}: {type(exc).__name__}: {exc} "
                "(raised by the domain's task loader: check the tasks file it reads)."
            ) from exc
        self.check_schemas()
        seen: set[str] = set()
        for task in tasks:
            self.check_task(task, split)
            if task.id in seen:  # results, resuming and the gate's pairing all go by task id
                raise ConfigError(
                    f"The tau domain {self.name!r} (split {split!r}) has two tasks with the id {task.id!r}: give every task its own id."
                )
            seen.add(task.id)
        if self.categories_from_ground_truth:
            return [self._categorized(task) for task in tasks]
        for task in tasks:
            self.check_category(task, split)
            self.check_ground_truth_runs(task, split)
        return tasks

    def _categorized(self, task: TauTask) -> TauTask:
        effect = self.ground_truth(task)
        if effect.changes or effect.errors:
            return dataclasses.replace(task, category="action")
        return dataclasses.replace(task, category="answer" if task.outputs else "refusal")

    def offered_tools(self) -> list[str]:
        """The names of the tools the agent is offered: those the domain's ``schemas`` name, in their order."""
        return [name for name in (tool_schema_name(schema) for schema in self.schemas or []) if name is not None]

    def check_schemas(self) -> None:
        """Every schema names one of the domain's tools, once (a schema with no tool offers the agent a call that
        can only fail; one offered twice is ambiguous to the model)."""
        where = f"The tau domain {self.name!r}"
        if not isinstance(self.schemas, list):
            raise ConfigError(
                f"{where}'s schemas are {type(self.schemas).__name__} {self.schemas!r:.60}, not a list: give a list of "
                'OpenAI tool schemas, one per tool ({"type": "function", "function": {"name": ..., "parameters": {...}}}).'
            )
        seen: set[str] = set()
        for i, schema in enumerate(self.schemas):
            name = tool_schema_name(schema)
            if name is None:
                raise ConfigError(
                    f"{where}'s schema {i + 1} ({schema!r:.80}) names no tool: write each as an OpenAI tool schema, "
                    '{"type": "function", "function": {"name": TOOL, "description": ..., "parameters": {...}}}.'
                )
            if name not in self.tools:
                raise ConfigError(
                    f"{where} offers the agent the tool {name!r} (schema {i + 1}), which is none of its tools "
                    f"({', '.join(self.tools) or 'none'}), so every call the agent makes to it fails. Add its function "
                    f"to the domain's tools ({name!r}: FUNCTION), or remove the schema."
                )
            if name in seen:
                raise ConfigError(f"{where} has two schemas of the tool {name!r}: keep one.")
            seen.add(name)

    def check_task(self, task: TauTask, split: str) -> None:
        """The task has turns, each with the user's text; its outputs are texts, each said in a turn's reply (the
        ground truth the ``oracle`` replays, scored as a model's replies are); every ground-truth action
        names one of the domain's tools, one the agent is offered (a schema names it), with arguments it takes.

        (A misspelled action would fail on both databases alike, so the task would score every agent
        that changes nothing as right and every agent that does the work as wrong; a task with no turn
        would score every agent as right.)"""
        where = f"Task {task.id!r} of the tau domain {self.name!r} (split {split!r})"
        if task.category not in CATEGORIES:
            raise ConfigError(
                f"{where} has the category {task.category!r}: write action, answer or refusal (action: the database must "
                "change; answer: nothing changes, outputs are required; refusal: the policy forbids it, nothing may change)."
            )
        if not isinstance(task.instruction, str) or not task.instruction.strip():
            shown = f"{type(task.instruction).__name__} {task.instruction!r:.60}" if not isinstance(task.instruction, str) else "empty"
            raise ConfigError(
                f"{where}: its 'instruction' is {shown}, not a text: write what the customer wants and knows, in a few "
                "sentences (a simulated user, --user-model, plays it; it was told 'None' and said nothing, and the agent failed)."
            )
        if not task.turns:
            raise ConfigError(f"{where} has no turns, so any agent would pass it: give it at least one {{'user': TEXT}}.")
        for i, turn in enumerate(task.turns):
            if not isinstance(turn.user, str) or not turn.user.strip():
                raise ConfigError(f"{where}: turn {i + 1} has no user text ('user' is {turn.user!r:.60}): write what the user says.")
            if not isinstance(turn.reply, str):
                raise ConfigError(f"{where}: turn {i + 1}'s 'reply' is {type(turn.reply).__name__} {turn.reply!r:.60}, not a text.")
        wrong = [o for o in task.outputs if not isinstance(o, str)]
        if wrong:
            raise ConfigError(f"{where}: its outputs must be texts; {', '.join(repr(o) for o in wrong[:3])} is not (write it in quotes).")
        empty = [o for o in task.outputs if not normalize(o).strip()]
        if empty:
            raise ConfigError(
                f"{where}: its output {empty[0]!r} is empty, and every reply holds an empty text, so it checks nothing: "
                "write the text a reply must hold, or remove it."
            )
        unsaid = missing_outputs(task.outputs, [turn.reply for turn in task.turns])
        if unsaid:
            listed = ", ".join(repr(o) for o in unsaid[:3]) + (f" (and {len(unsaid) - 3} more)" if len(unsaid) > 3 else "")
            replies = " / ".join(repr(turn.reply[:60]) for turn in task.turns[:3])
            raise ConfigError(
                f"{where}: its required output {listed} appears in no reply of its turns ({replies}), so even the oracle "
                "(its own ground truth, replayed) fails it with missing_output, and the task, not the model, is at fault. A "
                "turn's 'reply' is what the user must hear (the oracle says each turn's 'reply'; a turn without one says 'Done.'): write the "
                "outputs into the reply (ee_middleware.evals.tau.domain.respond_text(outputs) writes one), or fix 'outputs'."
            )
        if task.category == "answer" and not task.outputs:
            raise ConfigError(
                f"{where} is an answer task without outputs: nothing changes in an answer task, so with no required "
                "output any agent (one that does nothing too) passes it. List what a reply must hold "
                '("outputs": ["..."]), or make it a refusal task if the agent must only decline.'
            )
        offered = self.offered_tools()
        for action in task.actions:
            tool = self.tools.get(action.name)
            if tool is None:
                raise ConfigError(
                    f"{where}: its ground-truth action {action.name!r} names no tool of the domain; its tools: {', '.join(self.tools)}."
                )
            if action.name not in offered:
                raise ConfigError(
                    f"{where}: its ground truth calls the tool {action.name!r}, which the agent is never offered: the domain's "
                    f"schemas leave it out (they offer {', '.join(offered) or 'nothing'}), so no agent can make that call and "
                    f"every agent fails the task. Add a schema of {action.name!r} to the domain's schemas "
                    "(ee_middleware.evals.tau.domains.library.tools.schema(FUNCTION) writes one from its signature and docstring)."
                )
            try:
                signature = inspect.signature(tool)
            except (TypeError, ValueError):
                continue
            try:
                signature.bind(None, **action.arguments)
            except TypeError as exc:
                raise ConfigError(
                    f"{where}: its ground-truth action {action.name}({', '.join(action.arguments)}) does not fit the tool: {exc} "
                    f"(it takes {', '.join(list(signature.parameters)[1:]) or 'no argument'})."
                ) from None

    def ground_truth(self, task: TauTask) -> GroundTruth:
        """What ``task``'s ground-truth actions do to a fresh database: whether they change it, and the errors they
        gave (replayed once per distinct list of actions, as the suite's scoring replays them)."""
        key = json.dumps([[a.name, a.arguments] for a in task.actions], sort_keys=True, default=repr)
        known = self._effects.get(key)
        if known is not None:
            return known
        sandbox = self.sandbox()
        try:
            runs = []
            for _ in range(2):  # twice: runs are scored against the database it leaves, which must be the same every time
                sandbox.reset(None)
                fresh = before = sandbox.state_digest()
                errors, failed, failed_changing, seen = [], [], [], [fresh]
                for i, action in enumerate(task.actions):
                    observation = sandbox.execute(ToolCall(id=f"gt_{i}", name=action.name, arguments=action.arguments))
                    after = sandbox.state_digest()
                    if observation.is_error:
                        errors.append(f"{action.name}: {observation.content[:200]}")
                        failed.append(i)
                        if after != before:
                            failed_changing.append(i)
                    before = after
                    seen.append(after)
                runs.append(seen)
            first_change = next((i for i, (a, b) in enumerate(zip(*runs, strict=True)) if a != b), None)
            effect = GroundTruth(
                changes=before != fresh,
                errors=tuple(errors),
                failed=tuple(failed),
                failed_changing=tuple(failed_changing),
                differs_from=first_change,
            )
        finally:
            sandbox.close()
        self._effects[key] = effect
        return effect

    def check_category(self, task: TauTask, split: str) -> None:
        """The task's ground truth shows its category: an ``action`` task's changes the database, an ``answer`` or
        ``refusal`` task's does not (else one category scores like another: an action task that changes nothing is
        passed by an agent that does nothing, a refusal task that changes the database is failed by every agent that
        refuses)."""
        where = f"Task {task.id!r} of the tau domain {self.name!r} (split {split!r})"
        effect = self.ground_truth(task)
        names = ", ".join(dict.fromkeys(a.name for a in task.actions))
        if task.category == "action" and not effect.changes:
            if effect.errors:
                why = f"its actions fail on a fresh database ({'; '.join(effect.errors[:2])})"
            elif task.actions:
                why = f"its actions ({names}) only read"
            else:
                why = "it has no actions"
            raise ConfigError(
                f"{where} is an action task, but its ground truth changes nothing: {why}, so an agent that does nothing "
                "passes it. Fix its actions (the calls that make the change the user asks for), or make it an answer task "
                "(with the outputs a reply must hold) or a refusal task."
            )
        if task.category in ("answer", "refusal") and effect.changes:
            kind = "an answer" if task.category == "answer" else "a refusal"
            raise ConfigError(
                f"{where} is {kind} task, where nothing may change, but its ground truth ({names}) changes the database, "
                "so every agent that leaves the database as it is fails it. Make it an action task (its outputs stay "
                "required), or keep only the actions that read."
            )

    def check_ground_truth_runs(self, task: TauTask, split: str) -> None:
        """No ground-truth action of ``task`` gives an error observation (its tool raises) after changing the database,
        on a fresh database after the actions before it. Runs are scored against the database the ground truth leaves,
        so such an action makes the expected database whatever its tool had changed before it raised, and an agent
        making the same failing call passes (:meth:`check_category` has already refused an action task whose failing
        ground truth changes nothing). An action the tool refuses by design, leaving the database as it was (renewing
        an overdue loan), is a legitimate part of a task and loads. A tau-bench checkout's tasks are not checked here:
        one whose ground truth fails is scored as ``task_error`` (:attr:`categories_from_ground_truth`)."""
        effect = self.ground_truth(task)
        if effect.differs_from is not None:
            # the fresh database is one JSON text (fresh_data): the first difference is after an action
            where = f"they differ from its action {task.actions[effect.differs_from - 1].name} on (action {effect.differs_from})"
            raise ConfigError(
                f"Task {task.id!r} of the tau domain {self.name!r} (split {split!r}): its ground truth, run twice on fresh "
                f"databases, left two different databases: {where}. Runs are scored against the database the ground truth "
                "leaves, so a model doing exactly the same would fail at random (even the `oracle` model spec). Make the "
                "domain deterministic: no random numbers, clock times or fresh ids written into the database unless they come "
                "from the tool's arguments or from a random.Random seeded by the database."
            )
        if not effect.failed_changing:
            if effect.failed:
                _warn_failing_ground_truth(self.name, split, task, effect)
            return
        first = effect.failed_changing[0]
        action = task.actions[first]
        error = effect.error_of(first)
        more = len(effect.failed_changing) - 1
        others = f" (and {more} more of its actions fail after changing it)" if more else ""
        call = f"{action.name}({', '.join(f'{k}={v!r}' for k, v in action.arguments.items())})"
        raise ConfigError(
            f"Task {task.id!r} of the tau domain {self.name!r} (split {split!r}): its ground-truth action {call} gives an "
            f"error on a fresh database: {error}{others}. Runs are scored against the database the ground truth leaves, so "
            "it would be whatever the tool changed before it failed, and an agent making the same failing call would pass. "
            "Fix the action's arguments, or the tool: tau tools receive the arguments as the raw JSON the model wrote (the "
            "domain's sandbox runs them with validate_arguments=False: no pydantic or enum conversion, unlike "
            "PythonSandbox's default), so a parameter typed with a pydantic model gets a dict and one typed with an enum a "
            "string; read them as JSON values (delivery['channel'], not delivery.channel)."
        )

    def sandbox(self) -> PythonSandbox:
        """A sandbox over a fresh database at every ``reset`` (the environment is ignored)."""
        # tau-bench calls a tool with the arguments as the model wrote them (no schema check), and so does the harness
        return PythonSandbox(functools.partial(_fresh, self), tools=dict(self.tools), kind=f"tau:{self.name}", validate_arguments=False)


def _warn_failing_ground_truth(domain: str, split: str, task: TauTask, effect: GroundTruth) -> None:
    """Say (once per process, task and error) that ``task``'s ground-truth actions give errors that leave the database
    as it was: a tool refusing by design (renewing an overdue loan) is part of a task, but a bug in the tool's code (a
    ZeroDivisionError) or a wrong argument would be scored as right for every agent making the same failing call."""
    first = effect.failed[0]
    action = task.actions[first]
    error = effect.error_of(first)
    more = f" (and {len(effect.failed) - 1} more of its actions)" if len(effect.failed) > 1 else ""
    key = (domain, split, task.id, error)
    if key in _WARNED_GROUND_TRUTH:
        return
    _WARNED_GROUND_TRUTH.add(key)
    warnings.warn(
        f"Task {task.id!r} of the tau domain {domain!r} (split {split!r}): its ground-truth action {action.name} gives an "
        f"error on a fresh database, leaving it as it was: {error}{more}. That is right where the tool refuses by design "
        "(the task tests that the agent does not force it); if it is a bug in the tool or a wrong argument, fix it: every "
        "agent making the same failing call is scored as right.",
        UserWarning,
        stacklevel=2,
    )


_WARNED_GROUND_TRUTH: set[tuple[str, str, str, str]] = set()


@dataclass(frozen=True)
class GroundTruth:
    """What a task's ground-truth actions do to a fresh database (:meth:`TauDomain.ground_truth`)."""

    changes: bool
    errors: tuple[str, ...] = ()
    """``TOOL: ERROR`` of each action that gave an error observation, in order."""
    failed: tuple[int, ...] = ()
    """The positions of those actions in :attr:`TauTask.actions`."""
    failed_changing: tuple[int, ...] = ()
    """Those of :attr:`failed` whose action changed the database (its digest differs before and after that action)."""
    differs_from: int | None = None
    """Where two runs on fresh databases first left different databases: after the ``i``-th action (counting from 1);
    ``None`` when both left the same at every step."""

    def error_of(self, action: int) -> str:
        """The error the action at position ``action`` (one of :attr:`failed`) gave, without its tool's name."""
        return self.errors[self.failed.index(action)].split(": ", 1)[-1].removeprefix("Error: ")


_EXACT = frozenset({str, int, bool, type(None)})
"""The types a JSON copy gives back as they were (a float too, where finite)."""
_SHOWN = 3


@dataclass
class _JsonChanges:
    """Where the JSON copy of a database differs from it (:func:`_json_changes`): the first few places, how many in all,
    and what kinds of fix they need."""

    shown: list[str] = field(default_factory=list)
    count: int = 0
    fixes: dict[str, None] = field(default_factory=dict)

    def add(self, parents: _Node | None, segment: Any, what: str, fix: str) -> None:
        self.count += 1
        self.fixes[fix] = None
        if len(self.shown) < _SHOWN:
            self.shown.append(f"at {_path(parents, segment)}, {what}")

    def message(self, domain: str) -> str:
        more = f" (and {self.count - len(self.shown)} more such places)" if self.count > len(self.shown) else ""
        return (
            f"The database of the tau domain {domain!r} is not JSON as load_data() returns it, and every run's tools and ground "
            "truth work on its JSON copy (json.loads(json.dumps(data))), which would differ from it: "
            f"{'; '.join(self.shown)}{more}. {' '.join(self.fixes)}"
        )


_KEY_FIX = (
    'Make the keys strings, in the data ({"1": ...}) or in load_data() ({str(k): v for k, v in ...}), and have the tools '
    'look them up as strings (account_id: str, or data["accounts"][str(account_id)]).'
)
_TUPLE_FIX = "Write lists instead of tuples (or convert them in load_data(): list(...))."
_NUMBER_FIX = "Write NaN and infinities as null (None) or as a string: JSON has no such numbers."
_PLAIN_FIX = "Have load_data() return plain dicts, lists, strings and numbers (dict(...), list(...), str(...), an enum's .value)."
_DEFAULT_FIX = (
    "Have load_data() return plain dicts (dict(...)) instead of dicts with a default for missing keys, and have the "
    "tools add missing keys themselves (data[k].setdefault(key, [])): the JSON copy has no default."
)
_VALUE_FIX = (
    "Write dates, sets, enums and other values as strings, numbers or lists (an enum's .value; runs are scored by the "
    "JSON form of the data)."
)
_CYCLE_FIX = "Remove the circular reference: the database must be a tree of dicts and lists."
_OBJECT_FIX = (
    "A live object (a database connection, a file, a client) cannot be the database: every run is given a fresh JSON "
    "copy of it and scored by its JSON form. Have load_data() return the data itself (for a SQL database, its rows as "
    "dicts keyed by id: {row['id']: dict(row) for row in conn.execute(...)}) and the tools read and change that."
)

_Node = tuple["_Node | None", Any, Any]
"""A container on the walk: (its parent node, its key or index there, the container)."""


def _json_changes(data: dict[str, Any]) -> _JsonChanges:
    """Every place where ``json.loads(json.dumps(data))`` would differ from ``data`` for the tools, or fail: keys whose
    JSON string does not compare (and hash) equal to them (int, float, bool, None keys, at any depth) or that JSON
    refuses (tuples), tuples, NaN and infinities, sets, dates and other values JSON has no form for, subclasses whose
    copy does not compare equal to them or whose copy lacks their default for missing keys (defaultdict, Counter), and
    circular references. Subclasses whose copy compares equal pass: an ``OrderedDict`` (ruamel's ``CommentedMap``), an
    ``IntEnum`` or ``str``-mixin ``Enum`` member, a ``numpy.float64``, a ``str``-subclass key. One walk, in the order of
    the data; plain dicts, lists, strings and numbers cost no more than a type check each."""
    changes = _JsonChanges()
    on_path: set[int] = set()  # the containers that hold the current one: seeing one again is a cycle
    stack: list[_Node | int] = [(None, None, data)]
    while stack:
        node = stack.pop()
        if isinstance(node, int):  # every container done
            on_path.discard(node)
            continue
        parents, segment, value = node
        if id(value) in on_path:
            changes.add(parents, segment, f"the {type(value).__name__} holds itself (a circular reference)", _CYCLE_FIX)
            continue
        on_path.add(id(value))
        stack.append(id(value))
        kind = type(value)
        is_dict = isinstance(value, dict)
        if kind is dict or kind is list:
            copied = value
        elif is_dict:
            copied = dict(value.items())  # what json.dumps writes of a dict subclass (it calls .items())
        elif isinstance(value, list):
            copied = list.copy(value)  # json.dumps reads a list subclass's items directly
        else:
            copied = list(value)
            changes.add(parents, segment, f"the tuple {_short(value)} becomes the list {_short(copied)}", _TUPLE_FIX)
        if copied is not value and not isinstance(value, tuple):
            change = _container_change(value, copied)
            if change is not None:
                changes.add(parents, segment, *change)
        here: _Node = (parents, segment, value)
        children: list[_Node] = []
        for key, item in copied.items() if is_dict else enumerate(copied):
            if is_dict and type(key) is not str:
                what = _key_change(key)
                if what is not None:
                    changes.add(here, key, what, _KEY_FIX)
            child_kind = type(item)
            if child_kind in _EXACT or (child_kind is float and math.isfinite(item)):
                continue
            if isinstance(item, (dict, list, tuple)):
                children.append((here, key if is_dict else [key], item))
            else:
                change = _value_change(item)
                if change is not None:
                    changes.add(here, key if is_dict else [key], *change)
        stack.extend(reversed(children))
    return changes


def _container_change(value: dict[Any, Any] | list[Any], copied: dict[Any, Any] | list[Any]) -> tuple[str, str] | None:
    """How the JSON copy of a dict or list subclass differs from it for the tools (its children are checked on their
    own), and the fix; None where it does not: the plain copy compares equal and, for a dict, neither has a default."""
    name = type(value).__name__
    plain = type(copied).__name__
    if isinstance(value, dict) and getattr(type(value), "__missing__", None) is not None:
        return f"the {name} becomes a plain dict, which has no default for missing keys ({name}.__missing__)", _DEFAULT_FIX
    if not _equal(copied, value):
        return f"the {name} becomes a plain {plain}, which does not compare equal to it", _PLAIN_FIX
    return None


def _equal(copy: Any, value: Any) -> bool:
    """Whether a JSON copy compares equal to the value it was made of (False where comparing them fails)."""
    try:
        return bool(copy == value)
    except Exception:  # noqa: BLE001 - a class whose == raises or gives no truth value (an array): it differs
        return False


def _key_change(key: Any) -> str | None:
    """What JSON makes of a dict key that is not a plain string, or None where its copy, a string, compares and hashes
    equal to it (a str subclass, a str-mixin enum member): a tool's lookup finds it the same."""
    text = _json_key(key)
    if text is None:
        return f"the key {_short(key)} ({_a(type(key).__name__)}) is no JSON key (json.dumps refuses it)"
    if _equal(text, key) and hash(text) == hash(key):
        return None
    return f"the key {_short(key)} ({_a(type(key).__name__)}) becomes the string {json.dumps(text)}"


def _json_key(key: Any) -> str | None:
    """The string JSON makes of a dict key, or None where it refuses the key."""
    try:
        (text,) = json.loads(json.dumps({key: None}))
    except (TypeError, ValueError):
        return None
    return str(text)


def _value_change(value: Any) -> tuple[str, str] | None:
    """What JSON makes of a value that is no dict, list or tuple and not of a type JSON gives back as it is (NaN, a set,
    a date, an enum with no str or int value...), and the fix; None where its copy compares equal to it (an IntEnum or
    str-mixin Enum member, a numpy.float64, a str subclass)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"the number {value!r} is not JSON (json.dumps writes {json.dumps(value)}, which JSON parsers refuse)", _NUMBER_FIX
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        what = "a set" if isinstance(value, (set, frozenset)) else f"the {type(value).__name__} {_short(value)}"
        live: list[Any] = []  # what has no JSON form even as to_jsonable writes values (a connection, a file, a client)
        to_jsonable(value, unknown=live.append)
        fix = _OBJECT_FIX if live else _VALUE_FIX
        return f"{what} has no JSON form ({type(value).__name__} is not JSON serializable)", fix
    copy = json.loads(text)
    if _equal(copy, value):
        return None
    return (
        f"the {type(value).__name__} {_short(value)} becomes the plain {type(copy).__name__} {_short(copy)}, which does "
        "not compare equal to it",
        _PLAIN_FIX,
    )


def _path(parents: _Node | None, segment: Any) -> str:
    """``accounts -> 1 -> tags -> [0]``: the keys down to a place (a list index in brackets), or "the top level"."""
    segments = []
    node: _Node | None = (parents, segment, None)
    while node is not None and node[0] is not None:
        parent, at, _ = node
        segments.append(f"[{at[0]}]" if isinstance(at, list) else at if isinstance(at, str) else repr(at))
        node = parent
    return " -> ".join(reversed(segments)) or "the top level"


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fresh(domain: TauDomain, environment: Any) -> dict[str, Any]:
    return domain.fresh_data()


def respond_text(outputs: tuple[str, ...] | list[str]) -> str:
    """The reply a scripted expert gives when a task's ground truth has no reply text of its own."""
    return "Here is what I found: " + "; ".join(outputs) + "." if outputs else "Done."
