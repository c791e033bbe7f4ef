"""Export trajectories to fine-tuning formats: OpenAI chat JSONL and Parquet.

Each example teaches what its own run decided. An assistant message it did not decide is kept as context with
``"weight": 0`` (OpenAI's fine-tuning format; the Parquet export's ``weight`` field): replies of earlier runs of the
thread that the run was given as history (each is taught by its own trajectory), calls awaiting a human review at the
end of a paused (``interrupted``) run, a message a tool or a node wrote into the conversation (a
``Command(update=...)``'s ``AIMessage``: no answer of the run's model), and a call the reviewer changed or rejected
(the resumed run's trajectory holds the turn as the reviewer decided it; see :func:`decided_by_run`). A trajectory that decided nothing (a resumed
run that called no model) is left out, with ``on_skipped`` told why.

A run whose model calls were offered different tools (a middleware choosing them per call, such as
``LLMToolSelectorMiddleware``; a tool added at a later turn; several agents in one graph: ``Step.tools``) is one JSONL
example per stretch of decisions offered the same tools, since an OpenAI example has one tool list: each holds the
conversation up to its last decision, teaches that stretch (the earlier decisions are context, weight 0) and offers
exactly its tools. The Parquet export keeps one row per trajectory and gives each taught message the names of the
tools its decision was offered (``tools``; null where they were all of the trajectory's), as ``Step.tools`` names them:
a tool offered with several schemas under its name (rewritten per call) is ``NAME#K`` there, the K-th schema of that
name after its first in the row's ``tools``, which lists each schema once, in the order first offered
(:func:`~ee_middleware.records.offered_tools` resolves them). A JSONL example offers one schema per name.

A run holding several conversations (parallel ``Send`` branches each running its own model; an agent run inside a tool,
recorded before capture split those into trajectories of their own) keeps only its last conversation in ``messages``,
while ``steps`` hold every decision. The JSONL export gives each other conversation its own example(s), rebuilt from its
steps (the history its last decision was given, and that decision), so that no decision is left out; ``on_split`` is
told of each such trajectory. The Parquet export keeps its one row and tells ``on_split`` which decisions that row's
messages do not hold.

Everything exported goes through the store's own redaction rules and salt once more
(:func:`~ee_middleware.capture.store_redaction.store_redactor`), the tool schemas as capture redacts them
(:func:`~ee_middleware.capture.assembler.redact_tool_schemas`: their text and values; names and structure kept): what
capture stored is already redacted, and redacting twice changes nothing; anything a later writer left, a run recorded
before capture redacted tool schemas or before a pattern was added, is caught here.

An export that selects nothing (no trajectory of the status asked, or none that decided anything) writes nothing and
returns 0: an existing output file (an earlier export) is kept as it was, never replaced by an empty one, and no file
or folder is made.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from ee_middleware._files import FileTooLargeError, atomic_path, atomic_write_parquet, folders_made, remove_abandoned_temps
from ee_middleware.capture.assembler import redact_tool_schemas
from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.errors import OutputError, StoreError, StoreUnreadableError, os_error_advice
from ee_middleware.messages import content_to_text, one_line, parse_arguments
from ee_middleware.models.parsing import canonical_call
from ee_middleware.records import ApprovalStatus, Message, Step, ToolSchema, Trajectory, offered_tools
from ee_middleware.store.access import read_advice
from ee_middleware.store.metadata import local_folder
from ee_middleware.store.protocol import ExperienceStore
from ee_middleware.store.registry import trajectory_columns


def export_jsonl(
    store: ExperienceStore,
    out: str | os.PathLike[str],
    *,
    status: ApprovalStatus | None = "approved",
    on_skipped: Callable[[str, str], None] | None = None,
    on_split: Callable[[str, str], None] | None = None,
) -> int:
    """One OpenAI chat fine-tuning example per line: ``{"messages": [...], "tools": [...]}``; assistant messages the run
    did not decide carry ``"weight": 0`` (see the module docstring), and a trajectory that decided none is left out
    (``on_skipped(trajectory_id, reason)``). A trajectory whose decisions were offered different tools gives one example
    per stretch of decisions offered the same ones, and one holding several conversations one example per conversation
    (``on_split(trajectory_id, what)``; see the module docstring). Returns the number of examples written.

    The file is replaced whole or not at all (on any failure nothing is left behind and an existing file is kept
    as it was). With no example to write nothing is written and 0 is returned: an existing file is kept as it was
    (an empty export never replaces an earlier one). Raises :class:`~ee_middleware.errors.OutputError` when it cannot be written, and
    :class:`~ee_middleware.errors.StoreError` naming the store's file when the store cannot be read.
    """
    path = _output_path(out, "jsonl")
    redactor = _reading(store, path, lambda: store_redactor(store, create_salt=False))
    redact = redactor.redact_value
    count = 0
    with _unless_empty(), _writing(path), _output_temp(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for trajectory, weights, others in _deciding(store, status, on_skipped, path):
            if others and on_split is not None:
                decisions = sum(len({s.decision_index for s in o.steps}) for o in others)
                on_split(
                    trajectory.id,
                    f"{len(others) + 1} conversations in one run: {decisions} decision(s) not in its messages exported "
                    f"as {len(others)} more example(s)",
                )
            parts = [(trajectory, weights)] if 1 in weights else []
            parts += [(o, decided_by_run(o)) for o in others]
            for messages, example_weights, tools in (e for part, part_weights in parts for e in _examples(part, part_weights)):
                messages = [_openai_message(m) for m in redact(messages)]
                example: dict[str, Any] = {
                    "messages": [{**m, "weight": 0} if w == 0 else m for m, w in zip(messages, example_weights, strict=True)]
                }
                if tools:
                    example["tools"] = redact_tool_schemas(tools, redactor)
                fh.write(json.dumps(example, ensure_ascii=False) + "\n")
                count += 1
        if not count:  # the temporary file and the folders made for it are removed, the output left as it was
            raise _NothingToWrite
    return count


def export_parquet(
    store: ExperienceStore,
    out: str | os.PathLike[str],
    *,
    status: ApprovalStatus | None = "approved",
    on_skipped: Callable[[str, str], None] | None = None,
    on_split: Callable[[str, str], None] | None = None,
) -> int:
    """One row per trajectory: lineage columns, ``messages`` as nested chat structs (``weight``: 1 for an assistant
    message the run decided, 0 for one it did not, null for other roles), ``tools`` as JSON; a trajectory that decided
    nothing is left out (``on_skipped``). Each message's ``tools``: for one the run decided at a decision offered
    only some of the trajectory's tools, their names (``NAME#K``: the K-th schema of NAME after its first in the row's
    ``tools``, where a tool was offered with several); else null. A trajectory holding several conversations keeps its
    last one in its row; ``on_split(trajectory_id, what)`` says which decisions the row leaves out (the JSONL export
    gives them examples of their own).

    The file is written as :func:`export_jsonl` writes it, with the same errors; with no row to write nothing is
    written (an existing file is kept as it was) and 0 is returned."""
    path = _output_path(out, "parquet")
    redactor = _reading(store, path, lambda: store_redactor(store, create_salt=False))
    redact = redactor.redact_value
    rows = []
    for t, weights, others in _deciding(store, status, on_skipped, path):
        if others and on_split is not None:
            decisions = sum(len({s.decision_index for s in o.steps}) for o in others)
            on_split(
                t.id,
                f"{len(others) + 1} conversations in one run: {decisions} decision(s) of {len(others)} other conversation(s) "
                "are not in its row's messages (export --format jsonl gives each an example)",
            )
        offered = _offered_at(t)
        rows.append(
            {
                "id": t.id,
                "app": t.app,
                "app_version": t.app_version,
                "model": t.model,
                "task": redact(t.task),
                "approval": t.approval.status,
                "final_answer": redact(t.final_answer),
                "num_steps": t.num_steps,
                "messages": [
                    _message_struct(_openai_message(m), w, offered.get(p) if w == 1 else None)
                    for p, (m, w) in enumerate(zip(redact(t.messages), weights, strict=True))
                ],
                "tools": json.dumps(redact_tool_schemas(t.tools, redactor), ensure_ascii=False),
            }
        )
    if not rows:  # an empty export never replaces an earlier one
        return 0
    with _writing(path):
        remove_abandoned_temps(path.parent, of={path.name})  # as _output_temp does
        atomic_write_parquet(pl.DataFrame(rows, schema=_EXPORT_SCHEMA), path, locked=True, compression="zstd")
    return len(rows)


def decided_by_run(trajectory: Trajectory) -> list[int | None]:
    """Per message of ``trajectory.messages``: 1 for an assistant message its run decided (a reply it made, a call
    that ran as the model made it), 0 for an assistant message it did not, ``None`` for other roles.

    Not decided by the run: the history it was given (the messages before its first decision's state ends: earlier
    runs' replies), a decision of another agent of the graph (a supervisor's worker: :func:`_own_agent`;
    :func:`other_conversations` teaches it with its own prompt), a turn with a call awaiting a human review (an ``interrupted`` trajectory's call without an
    observation), a call that is no step of the run as written (a reviewer edited or rejected it), and a reply without
    calls that is no answer step of the run (a message a tool or a node wrote into the conversation, such as a
    ``Command(update=...)``'s ``AIMessage``). A trajectory without steps decided nothing."""
    messages = trajectory.messages
    if not trajectory.steps:
        return [0 if m.get("role") == "assistant" else None for m in messages]
    first = trajectory.steps[0].state
    context = len(first) if messages[: len(first)] == first else 0
    awaiting = {
        s.decision_index
        for s in trajectory.steps
        if trajectory.status == "interrupted" and s.action.tool_call is not None and s.observation is None
    }
    own = _own_agent(trajectory)
    taught = {
        (s.action.tool_call.id, canonical_call(s.action.tool_call.name, s.action.tool_call.arguments))
        for s in trajectory.steps
        if s.action.tool_call is not None and s.decision_index not in awaiting and own(s)
    }
    answered: set[int] | None = None  # where the run's answers are, found once a reply without calls needs it
    weights: list[int | None] = []
    for position, message in enumerate(messages):
        if message.get("role") != "assistant":
            weights.append(None)
            continue
        calls = message.get("tool_calls") or []
        if calls:
            made = all(_call_key(call) in taught for call in calls)
        else:  # an answer of the run's model; not one a tool or a node wrote into the conversation (Command(update=...))
            if answered is None:
                answered = {p for p, step in _decision_positions(trajectory).items() if step.action.tool_call is None and own(step)}
            made = position in answered
        weights.append(1 if position >= context and made else 0)
    return weights


def _offered_at(trajectory: Trajectory) -> dict[int, list[str]]:
    """Position in ``trajectory.messages`` -> the tool names offered at the decision that assistant message holds, for
    the decisions offered only some of the trajectory's tools (``Step.tools`` set); the others were offered all."""
    if all(step.tools is None for step in trajectory.steps):
        return {}
    return {position: list(step.tools) for position, step in _decision_positions(trajectory).items() if step.tools is not None}


def _decision_positions(trajectory: Trajectory) -> dict[int, Step]:
    """Position in ``trajectory.messages`` -> the step whose decision the assistant message there holds. A step is found
    at its state's length (the messages its model call was given precede its own); one whose state is no prefix of the
    messages (a middleware that trimmed the history) is found by its tool call's id, or an answer by its text (answers
    with the same text take the last such replies, in order); a step found nowhere is left out."""
    messages = trajectory.messages
    by_call_id: dict[str, int] = {}
    found_at: dict[int, Step] = {}
    by_text: dict[str, list[Step]] = {}  # answers still to find by their text, in order
    for step in trajectory.steps:
        position = len(step.state)
        found = position < len(messages) and messages[position].get("role") == "assistant" and messages[:position] == step.state
        call = step.action.tool_call
        if not found and call is None and step.action.content is not None:  # an answer after a trimmed history: its text
            by_text.setdefault(step.action.content, []).append(step)
            continue
        if not found and call is not None and call.id:
            if not by_call_id:
                by_call_id = {
                    str(c.get("id")): p
                    for p, m in enumerate(messages)
                    if m.get("role") == "assistant"
                    for c in m.get("tool_calls") or []
                    if isinstance(c, dict) and c.get("id")
                }
            position = by_call_id.get(call.id, -1)
            found = position >= 0
        if found:
            found_at[position] = step
    for text, answers in by_text.items():
        replies = [
            p
            for p, m in enumerate(messages)
            if p not in found_at
            and m.get("role") == "assistant"
            and not m.get("tool_calls")
            and (m.get("content") == text or content_to_text(m.get("content")) == text)
        ]
        # the last replies with this text are this run's answers (an earlier one may be history it was given)
        for position, step in zip(replies[-len(answers) :], answers[-len(replies) :] if replies else [], strict=True):
            found_at[position] = step
    return found_at


def _examples(trajectory: Trajectory, weights: list[int | None]) -> Iterator[tuple[list[Message], list[int | None], list[ToolSchema]]]:
    """The JSONL examples of a trajectory with its :func:`decided_by_run` ``weights``: (messages, weights, tool schemas).

    One example (the whole conversation, the trajectory's tools) unless its decisions were offered different tools;
    then one per stretch of taught decisions offered the same tools, holding the conversation up to the stretch's last
    decision, teaching only that stretch, and offering those tools."""
    offered = _offered_at(trajectory)
    if not offered:
        yield trajectory.messages, weights, offered_tools(trajectory.tools, None)
        return
    stretches: list[tuple[tuple[str, ...] | None, list[int]]] = []
    for position, weight in enumerate(weights):
        if weight != 1:
            continue
        names = offered.get(position)
        key = None if names is None else tuple(names)
        if stretches and stretches[-1][0] == key:
            stretches[-1][1].append(position)
        else:
            stretches.append((key, [position]))
    for key, positions in stretches:
        end = positions[-1] + 1
        taught = set(positions)
        stretch_weights = [None if w is None else 1 if p in taught else 0 for p, w in enumerate(weights[:end])]
        tools = offered_tools(trajectory.tools, None if key is None else list(key))
        yield trajectory.messages[:end], stretch_weights, tools


def _call_key(call: Any) -> tuple[str, str]:
    """A message's tool call as (id, :func:`~ee_middleware.models.parsing.canonical_call`), as a step's call is keyed."""
    function = call.get("function") if isinstance(call, dict) else None
    function = function if isinstance(function, dict) else {}
    name, arguments = str(function.get("name") or ""), parse_arguments(function.get("arguments"))
    return str(call.get("id") or "") if isinstance(call, dict) else "", canonical_call(name, arguments)


def _deciding(
    store: ExperienceStore, status: ApprovalStatus | None, on_skipped: Callable[[str, str], None] | None, out: Path
) -> Iterator[tuple[Trajectory, list[int | None], list[Trajectory]]]:
    """The trajectories of ``status`` with their :func:`decided_by_run` weights and their other conversations
    (:func:`other_conversations`); one that decided nothing is left out, ``on_skipped`` told. A failure to read the
    store is raised as the store's (:func:`_from_store`), not as one of writing ``out``."""
    recorded: dict[str, int] | None = None  # each trajectory's steps as recorded, read once, when one is left out
    for trajectory in _from_store(store, out, lambda: store.iter_trajectories(status=status)):
        weights = decided_by_run(trajectory)
        others = other_conversations(trajectory)
        if 1 in weights or others:
            yield trajectory, weights, others
        elif on_skipped is not None:
            if recorded is None:
                table = _reading(store, out, lambda: trajectory_columns(store, ["id", "num_steps"]))  # (not the conversations)
                recorded = {row["id"]: row["num_steps"] or 0 for row in table.iter_rows(named=True)}
            on_skipped(trajectory.id, undecided_reason(trajectory, recorded.get(trajectory.id)))


def undecided_reason(trajectory: Trajectory, recorded_steps: int | None = None) -> str:
    """Why ``trajectory``, whose run decided nothing (:func:`decided_by_run`), teaches nothing: its steps could not be
    read (fewer than the ``recorded_steps`` its row counts: a damaged part the read left out, ``--allow-partial``), a
    paused run whose turn awaits a human review, a run that called no model (a resumed run the reviewed calls alone
    ended), or one whose every assistant message was given to it or changed by a reviewer."""
    if recorded_steps is not None and recorded_steps > len(trajectory.steps):
        return (
            f"{recorded_steps - len(trajectory.steps)} of its {recorded_steps} recorded steps could not be read (a damaged "
            "part of the store left out of this read): `ee store repair` says what was lost"
        )
    if trajectory.status == "interrupted" and trajectory.steps:
        return "its run paused on calls awaiting a human review; the resumed run's trajectory holds them as decided"
    if not trajectory.steps and trajectory.status in ("error", "interrupted"):
        # (not resumed: it ended before any model answered, its model's provider down, a tool schema the model refused)
        error = f": {one_line(trajectory.error, 300)}" if trajectory.error else ""
        return f"its run ended ({trajectory.status}) before any model answered{error}"
    if not trajectory.steps:
        return "its run called no model: a resumed run that the reviewed calls alone ended"
    return "every assistant message of its run was given to it or changed by a reviewer"


def other_conversations(trajectory: Trajectory) -> list[Trajectory]:
    """The conversations of ``trajectory``'s run that its ``messages`` do not hold, each as a trajectory of that
    conversation: its steps, and as messages the history its last decision was given followed by that decision.

    A run can hold several: parallel ``Send`` branches each running its own model and tools, or (recorded before capture
    made them trajectories of their own) an agent run inside a tool; ``messages`` hold the last conversation only. A
    decision is in ``messages`` where one of its calls (id, name and arguments) is in them, where its answer's text is
    (each such reply found once), or where its state starts them and no other reply follows it there (a reviewer's edit
    of its call keeps the call's id). The others (given another history, or the same history as a parallel branch that
    replied otherwise) are chained into conversations in decision order: a decision goes on with the conversation whose
    last decision's state is the longest that starts its own. A call awaiting a human review (an ``interrupted`` run's call without an
    observation) is no decision of the run (:func:`decided_by_run`). A decision of another agent than the one whose
    conversation ``messages`` hold (several agents in one graph sharing it: a supervisor and its workers, a swarm; told
    by another system prompt and other tools, :func:`_own_agent`) is another conversation too, whatever its calls: its
    model was not given that prompt. So is one whose calls'
    results follow its history without them (a handoff tool's ``Command(graph=Command.PARENT)`` carried only its tool
    message to the parent). Empty for a run of one conversation."""
    messages = trajectory.messages
    in_messages = {_call_key(c) for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or []}
    answers: dict[str, int] = {}
    for m in messages:
        if m.get("role") == "assistant" and not m.get("tool_calls") and isinstance(m.get("content"), str):
            answers[m["content"]] = answers.get(m["content"], 0) + 1
    decisions: dict[int, list[Step]] = {}
    for step in trajectory.steps:
        decisions.setdefault(step.decision_index, []).append(step)
    awaiting = trajectory.status == "interrupted"
    own = _own_agent(trajectory)
    left: list[list[Step]] = []
    for _, steps in sorted(decisions.items()):
        steps = [s for s in steps if not (awaiting and s.action.tool_call is not None and s.observation is None)]
        if not steps:
            continue
        if not own(steps[0]):  # another agent's decision, under its own system prompt and tools
            left.append(steps)
            continue
        calls = [s.action.tool_call for s in steps if s.action.tool_call is not None]
        if any((c.id, canonical_call(c.name, c.arguments)) in in_messages for c in calls):
            continue
        texts = [s.action.content for s in steps if s.action.kind == "answer" and s.action.content is not None]
        if texts and answers.get(texts[0], 0) > 0:
            answers[texts[0]] -= 1
            continue
        state = steps[0].state
        at = len(state)
        if messages[:at] == state:  # given this conversation's history: in it, unless another reply follows there
            after = messages[at] if at < len(messages) else {}
            ids = {c.get("id") for c in after.get("tool_calls") or []}
            # (calls whose results follow without them: a handoff's Command(graph=PARENT) carried its tool message up
            # to the parent's conversation, not the reply that made the call)
            dropped = bool(calls) and after.get("role") == "tool" and after.get("tool_call_id") in {c.id for c in calls}
            if not dropped and (after.get("role") != "assistant" or any(c.id in ids for c in calls)):  # an edit keeps the id
                continue
        left.append(steps)
    conversations: list[list[list[Step]]] = []
    for steps in left:
        state = steps[0].state
        going_on = [c for c in conversations if _goes_on(c[-1], state)]
        if going_on:
            max(going_on, key=lambda c: len(c[-1][0].state)).append(steps)
        else:
            conversations.append([steps])
    out = []
    for conversation in conversations:
        last = conversation[-1]
        steps = [s for d in conversation for s in d]
        out.append(trajectory.model_copy(update={"messages": [*last[0].state, _reply_message(last)], "steps": steps}))
    return out


def _goes_on(decision: list[Step], state: list[Message]) -> bool:
    """Whether a decision given ``state`` goes on with the conversation ``decision`` (its steps) ended: ``state`` starts
    with the history ``decision`` was given, followed by its reply (its calls, by id; an answer: an assistant message),
    so that the conversation's example holds both (a reply its history lacks, such as a handoff's that
    ``Command(graph=PARENT)`` left out of the parent's conversation, starts another)."""
    given = decision[0].state
    at = len(given)
    if len(state) <= at or state[:at] != given or state[at].get("role") != "assistant":
        return False
    ids = {s.action.tool_call.id for s in decision if s.action.tool_call is not None and s.action.tool_call.id}
    return not ids or any(isinstance(c, dict) and c.get("id") in ids for c in state[at].get("tool_calls") or [])


def _own_agent(trajectory: Trajectory) -> Callable[[Step], bool]:
    """Whether a step is a decision of the agent whose conversation ``trajectory.messages`` hold: not one of another
    agent of the graph sharing that conversation (a supervisor's worker, a swarm's agent), told by both its system
    prompt and the tools it was offered differing from those of the run's last decision. One agent whose prompt changes
    from call to call (a ``@dynamic_prompt`` with the date or the step; a running summary in the system message) keeps
    its tools, and is one conversation; ``messages`` without a system prompt (a resumed run that called no model) hold
    every decision as before."""
    system = _leading_system(trajectory.messages)
    if system is None or not trajectory.steps:
        return lambda step: True
    last = trajectory.steps[-1].tools
    return lambda step: _leading_system(step.state) == system or step.tools == last


def _leading_system(messages: list[Message]) -> Message | None:
    """The system message a conversation opens with (an agent's system prompt), or ``None``."""
    return messages[0] if messages and messages[0].get("role") == "system" else None


def _reply_message(steps: list[Step]) -> Message:
    """The assistant message of one decision, from its steps: its calls (the text beside them) or its answer."""
    first = steps[0].action
    calls = [s.action.tool_call.to_openai() for s in steps if s.action.tool_call is not None]
    message: dict[str, Any] = {"role": "assistant", "content": first.content or ("" if calls else None)}
    if calls:
        message["tool_calls"] = calls
    if first.reasoning:
        message["reasoning_content"] = first.reasoning
    return message


_T = TypeVar("_T")


def _reading(store: ExperienceStore, out: Path, read: Callable[[], _T]) -> _T:
    """``read()`` of ``store``, an :class:`OSError` it raises told as a failure to read the store (:func:`_store_failure`)."""
    try:
        return read()
    except OSError as exc:
        raise StoreError(_store_failure(store, exc, out)) from exc
    except StoreUnreadableError as exc:  # (the store said which file itself: said again with what the export did not do)
        raise StoreError(_store_failure(store, exc.os_error, out)) from exc.os_error


def _from_store(store: ExperienceStore, out: Path, items: Callable[[], Iterator[_T]]) -> Iterator[_T]:
    """The items ``items()`` reads from ``store``, one at a time (an export streams them into its output file), an
    :class:`OSError` raised while reading them told as the store's (:func:`_store_failure`): the output's own
    failures, raised between the items, are told as :class:`OutputError` by :func:`_writing`. A local store whose
    folder is gone once they are read fails too: removed while it was read, it gave fewer (or none) without an error."""
    iterator = _reading(store, out, lambda: iter(items()))
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            break
        except OSError as exc:
            raise StoreError(_store_failure(store, exc, out)) from exc
        except StoreUnreadableError as exc:
            raise StoreError(_store_failure(store, exc.os_error, out)) from exc.os_error
        yield item
    root = local_folder(store)  # (a plug-in's root may be a file: its own reads say when it is gone)
    if root is not None and not root.is_dir():
        raise StoreError(
            f"The experience store {root} was removed (or moved) while the export read it, so its trajectories may be "
            f"missing from the export: nothing was written to {out}. Restore the store folder (or give the export the "
            "place it was moved to), then export again."
        )


def _store_failure(store: ExperienceStore, exc: OSError, out: Path) -> str:
    """Why reading ``store`` failed, naming its file and what to do about it, and that ``out`` was not written; for a
    store plug-in (no local folder), its own failure at its line, without advice about files and folders it has none of."""
    from ee_middleware.plugins import plugin_that_raised

    if local_folder(store) is None:
        raised = plugin_that_raised(exc)
        text = f"{type(exc).__name__}: {exc}"
        if raised is not None:
            kind, spec, where = raised
            return (
                f"The {kind} {spec!r} failed while the export read it: {text} (at {where}). Nothing was written to {out}. The "
                f"error was raised in the {kind}'s own code, not in ee-middleware: fix it there, or try again once it reads."
            )
        return f"Cannot read the experience store ({type(store).__name__}): {text}. Nothing was written to {out}; try again once it reads."
    root = getattr(store, "root", None)
    where = f"the experience store {root}" if root is not None else f"the experience store ({type(store).__name__})"
    reason = exc.strerror or str(exc)
    file = f"{exc.filename}: " if exc.filename is not None else ""
    if isinstance(exc, FileNotFoundError):
        advice = (
            "A file of the store vanished while it was read (the folder removed or moved, or another process changing "
            "it): check that the store is where the export was told it is (--store), then export again."
        )
    else:  # the store's commands say the same of the file (ee_middleware.store.access)
        root_hint = f" `ee store info --store {root}` tells when the store reads again." if root is not None else ""
        advice = f"{read_advice(exc)}{root_hint}"
    return f"Cannot read {where}: {file}{reason}. Nothing was written to {out}. {advice}"


class _NothingToWrite(Exception):
    """Raised inside :func:`_writing` by an export that found nothing to write: its temporary file and the folders
    made for it are removed as on a failure, and :func:`_unless_empty` ends the export there."""


@contextlib.contextmanager
def _unless_empty() -> Iterator[None]:
    """Where an export writing a temporary file as it reads finds that it wrote nothing (:class:`_NothingToWrite`):
    the export ends cleanly, the output left as it was."""
    with contextlib.suppress(_NothingToWrite):
        yield


def _output_path(out: str | os.PathLike[str], suffix: str) -> Path:
    path = Path(out).expanduser()
    if path.is_dir():
        raise OutputError(f"{path} is a folder; give the file to write, for example {path / f'train.{suffix}'}.")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise OutputError(f"Cannot write {path}: {folder} is a file, not a folder. Give a path in a folder. Nothing was written.")
    return path


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Make the output's missing folders, and turn a failed write into one clear :class:`OutputError` (the atomic
    helpers already removed their temporary file). On any failure (the store's too) the folders made here are removed
    again, so that a failed export leaves nothing behind."""
    try:
        with folders_made(path.parent):
            yield
    except FileTooLargeError as exc:
        raise OutputError(f"Cannot write {path}: it would be larger than {exc.which}. Nothing was written. {exc.advice}") from exc
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}. Nothing was written. {os_error_advice(exc, output=True)}") from exc


@contextlib.contextmanager
def _output_temp(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it whole on a clean exit, held locked while it is written
    (:func:`~ee_middleware._files.atomic_path` with ``locked``), so that an export can tell it from one a killed export
    left beside the same output: those are removed first (a kill leaves no chance to remove one)."""
    remove_abandoned_temps(path.parent, of={path.name})
    with atomic_path(path, locked=True) as tmp:
        yield tmp  # written by name: the same file, still locked


_CALL = pl.Struct({"id": pl.String(), "type": pl.String(), "function": pl.Struct({"name": pl.String(), "arguments": pl.String()})})
_MESSAGE = pl.Struct(
    {
        "role": pl.String(),
        "content": pl.String(),
        "tool_calls": pl.List(_CALL),
        "tool_call_id": pl.String(),
        "name": pl.String(),
        "weight": pl.Int8(),
        "tools": pl.List(pl.String()),
    }
)
_EXPORT_SCHEMA = {
    "id": pl.String(),
    "app": pl.String(),
    "app_version": pl.String(),
    "model": pl.String(),
    "task": pl.String(),
    "approval": pl.String(),
    "final_answer": pl.String(),
    "num_steps": pl.Int64(),
    "messages": pl.List(_MESSAGE),
    "tools": pl.String(),
}


def _openai_message(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with its tool calls' arguments as JSON text, as OpenAI's fine-tuning format takes them (a record built
    by hand, or by an API such as Ollama's own, can hold them as a JSON object)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or all(isinstance(_arguments(c), str) for c in calls):
        return message
    fixed = []
    for call in calls:
        arguments = _arguments(call)
        if not isinstance(arguments, str):
            function = call["function"]
            call = {**call, "function": {**function, "arguments": json.dumps(arguments, ensure_ascii=False)}}
        fixed.append(call)
    return {**message, "tool_calls": fixed}


def _arguments(call: Any) -> Any:
    function = call.get("function") if isinstance(call, dict) else None
    return function.get("arguments", "") if isinstance(function, dict) else ""


def _message_struct(message: dict[str, Any], weight: int | None, tools: list[str] | None = None) -> dict[str, Any]:
    content = message.get("content")
    return {
        "role": message.get("role"),
        "content": content if content is None or isinstance(content, str) else json.dumps(content, ensure_ascii=False),
        "tool_calls": message.get("tool_calls") or [],
        "tool_call_id": message.get("tool_call_id"),
        "name": message.get("name"),
        "weight": weight,
        "tools": tools,
    }
