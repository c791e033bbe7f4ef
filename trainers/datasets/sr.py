"""SR: self-reflection examples. The state -> a rationale for the chosen action, then the action.

For each state with rollouts, a teacher sees the situation (the request the agent is working on there, its latest
user message: :func:`current_request`; and the last messages), the action taken and its real outcome,
and up to K alternatives with their real outcomes (K=3 by default, as the paper finds small K best
for SR), and writes a short first-person rationale. The target is that rationale followed by the
action.

States are the expert's turns, as IL's (:func:`~ee_middleware.trainers.datasets.rows.expert_turns`). When the
expert made several tool calls at once (parallel tool calls: one model response, stored as steps sharing a
``decision_index`` and their state), the turn is one example: its target is the rationale followed by all of the
turn's calls, in order, as IL's target makes them (one row per call would teach one call where the expert made
several). Replay branched each of those steps, so each alternative stands in place of one call: the teacher is
shown every call with its outcome and, under each call, up to K alternatives replayed in its place (picked per
call as for a single call), in a :class:`~ee_middleware.trainers.datasets.teachers.ReflectionCase` whose ``calls``
holds them. An alternative at one call that is another call the turn makes (replay proposes from the shared state)
is left out: the expert made it. So is an alternative whose outcome (observation and error flag) is the one of the call
it stands in place of: it is no contrast (:attr:`SRReport.same_outcome_left_out` counts them; a state left with no
alternative gives no row, counted in ``dropped`` as :data:`SAME_OUTCOME_ONLY`). The turn is an example when any of its
calls has alternatives left; the row's ``step_index`` and id are its first step's. A turn of one call gives exactly the
row it gave before turns were grouped.

Guards keep the data clean, and every row records what they found in ``quality_flags``:

* ``label_leak``: the rationale names labels ("expert", "Action 2", "option 1"): dropped;
* ``recommends_alternative``: it argues for one of the alternatives' tools (one the turn does not call): dropped;
* ``repeated_text``: repeated sentences or paragraphs were removed (kept if text remains);
* ``empty``: nothing usable: dropped;
* ``not_prose``: no text a reader could read (a garbled decode: U+FFFD or control characters; or fewer than ten
  letters: punctuation, digits, symbols): dropped.

A row whose teacher was shown an alternative an experience model predicted the outcome of (a synthetic rollout: only
with ``include_synthetic``) is marked ``synthetic``: its rationale rests on that prediction.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from ee_middleware.messages import content_to_text
from ee_middleware.models.parsing import canonical_call
from ee_middleware.replay.policies.schema import json_numbers
from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA, OFFERED_TOOLS, SYNTHETIC, conform, expert_turns, offered_tools_json
from ee_middleware.trainers.datasets.source import DatasetSource, taught_steps
from ee_middleware.trainers.datasets.teachers import GARBLED, CallReflection, ReflectionCase, Teacher, write_rationales

_LEAK = re.compile(r"\bexpert\b|\b(action|option|alternative|choice)\s*#?\s*\d+\b", re.IGNORECASE)
_RECOMMEND = re.compile(r"\b(should|better|instead|prefer|best|i will|i'll|let me|go with|choose)\b", re.IGNORECASE)
NO_INPUT = "no_input"
"""Why a state gave no row: the model was called with no message at all (an agent invoked with an empty conversation),
so a row would have no prompt, which training refuses (:attr:`SRReport.dropped`)."""
SAME_OUTCOME_ONLY = "same_outcome_only"
"""Why a state with rollouts gave no row: every alternative replayed there had the outcome of the call it stood in
place of (:attr:`SRReport.dropped`)."""


@dataclass(frozen=True)
class SROptions:
    k: int = 3
    """Alternatives shown to the teacher per state (per call at a turn of parallel calls)."""
    context_messages: int = 4
    max_outcome_chars: int = 400
    seed: int = 0
    batch_size: int = 16
    teacher_spec: str | None = None
    """How the teacher was named (``--teacher``), for errors about it; default: its ``name``."""


@dataclass
class SRReport:
    """What the SR builder kept and dropped."""

    states: int = 0
    """States with rollouts (expert turns: parallel calls are one)."""
    rows: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    """States that gave no row, by why: a guard's flag, or :data:`SAME_OUTCOME_ONLY`."""
    flagged: Counter[str] = field(default_factory=Counter)
    same_outcome_left_out: int = 0
    """Rollouts not shown as alternatives because their outcome (observation and error flag) is the one of the call
    they stand in place of."""


def _call_text(name: str, arguments_json: str | None) -> str:
    try:
        args = json.loads(arguments_json or "{}")
    except ValueError:
        args = {}
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in args.items())})"


def _message_text(message: dict[str, Any]) -> str:
    role = message.get("role", "?")
    if message.get("tool_calls"):
        calls = [_call_text(c["function"]["name"], c["function"].get("arguments")) for c in message["tool_calls"]]
        return f"{role}: " + "; ".join(calls)
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return f"{role}: {content or ''}"


def current_request(state: list[dict[str, Any]]) -> str:
    """The request the agent is working on at a state: its latest user message, as text ("" when it has none).

    Not the state's first user message: a thread's later run sees the thread's earlier requests first. Nor the
    trajectory's stored ``task``: that is the first user message of the run's input, which is the thread's first request
    when a caller passes the whole history in (and for a run resumed with a ``Command``, which carries no messages)."""
    return next((content_to_text(m.get("content")) for m in reversed(state) if m.get("role") == "user"), "")


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _prose(text: str) -> bool:
    """Whether ``text`` reads as a rationale: no garbled character (:data:`~ee_middleware.trainers.datasets.teachers.GARBLED`), and ten letters or more, of any
    script (a teacher that answers punctuation, digits or symbols wrote nothing to learn from)."""
    return GARBLED.search(text) is None and sum(c.isalpha() for c in text) >= 10


def check_rationale(text: str, chosen_tool: str | Collection[str], alternative_tools: list[str]) -> tuple[str | None, dict[str, Any]]:
    """Apply the guards: the cleaned rationale (``None`` when dropped) and the quality flags. ``chosen_tool``: the
    tool the action taken calls (or the tools, for parallel calls)."""
    flags: dict[str, Any] = {}
    text = (text or "").strip()
    if not text:
        return None, {"empty": True}
    if not _prose(text):
        return None, {"not_prose": True}
    if _LEAK.search(text):
        return None, {"label_leak": True}
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n{2,}", text) if s.strip()]
    seen: set[str] = set()
    kept = []
    for sentence in sentences:
        key = re.sub(r"\W+", " ", sentence.lower()).strip()
        if key in seen:
            flags["repeated_text"] = True
            continue
        seen.add(key)
        kept.append(sentence)
    chosen = {chosen_tool} if isinstance(chosen_tool, str) else set(chosen_tool)
    others = {t for t in alternative_tools if t and t not in chosen}
    verdict = re.compile(r"\b(fail|fails|error|not|wrong|unnecessary|doesn't|won't)\b", re.IGNORECASE)
    for sentence in kept:
        # "Calling X instead fails" argues against X and is fine; "I should call X" is not.
        names_other = any(re.search(rf"\b{re.escape(t)}\b", sentence) for t in others)
        if names_other and _RECOMMEND.search(sentence) and not verdict.search(sentence):
            return None, {**flags, "recommends_alternative": True}
    cleaned = " ".join(kept)
    return (cleaned or None), flags if cleaned else {**flags, "empty": True}


def build_sr(
    source: DatasetSource, teacher: Teacher, options: SROptions | None = None, *, on_batch: Callable[[int], None] | None = None
) -> tuple[pl.DataFrame, SRReport]:
    """SR rows for every expert turn that has rollouts, written by ``teacher`` and checked by the guards."""
    builder = SRBuilder(teacher, options, on_batch=on_batch)
    builder.add(source)
    return builder.finish(), builder.report


class SRBuilder:
    """Builds SR rows a group of trajectories at a time (:meth:`add`, :meth:`take`, :meth:`finish`).

    Cases queue across groups, so the teacher sees the same batches as in one pass; rows come out in
    the order of the turns added. ``on_batch`` is told how many expert steps each written batch covered."""

    def __init__(self, teacher: Teacher, options: SROptions | None = None, *, on_batch: Callable[[int], None] | None = None) -> None:
        self.teacher = teacher
        self.options = options or SROptions()
        self.on_batch = on_batch
        self.report = SRReport()
        self._pending: list[tuple[dict[str, Any], ReflectionCase, str, str, bool]] = []
        self._rows: list[dict[str, Any]] = []

    def add(self, source: DatasetSource) -> None:
        """Queue the cases of ``source``'s turns that have rollouts (writing every full batch)."""
        options = self.options
        calls = ("index", "tool_name", "arguments_json", "observation", "observation_is_error")
        steps = taught_steps(source)[0]  # a turn awaiting a human review is no target (the reviewer may have rejected it)
        turns = expert_turns(steps.filter(pl.col("action_kind") == "tool_call"), _steps=pl.struct(*calls))
        tools = dict(source.trajectories.select("id", "tools_json").iter_rows())
        by_state = source.rollouts.partition_by(["trajectory_id", "step_index"], as_dict=True)
        for turn in turns.iter_rows(named=True):
            steps = turn["_steps"]
            # at parallel calls, an alternative at one call may be another call the turn makes: not an alternative
            made = {_call_key(s["tool_name"], s["arguments_json"]) for s in steps} if len(steps) > 1 else set()
            picks = []
            replayed = False
            for step in steps:
                alternatives = by_state.get((turn["trajectory_id"], step["index"]))
                seed = random.Random(f"{options.seed}:{turn['trajectory_id']}:{step['index']}")
                rollouts = [] if alternatives is None else alternatives.to_dicts()
                if made:
                    rollouts = [r for r in rollouts if _call_key(r["tool_name"], r["arguments_json"]) not in made]
                replayed = replayed or bool(rollouts)
                # an alternative that got the call's own outcome is no contrast: the rationale would call it worse
                outcome = _outcome_key(step["observation"], step["observation_is_error"])
                contrasts = [r for r in rollouts if _outcome_key(r["observation"], r["is_error"]) != outcome]
                self.report.same_outcome_left_out += len(rollouts) - len(contrasts)
                picks.append(_pick(contrasts, options.k, seed) if contrasts else [])
            if not any(picks):
                if replayed:  # a state with rollouts, none of them with another outcome: no example
                    self.report.states += 1
                    self.report.dropped[SAME_OUTCOME_ONLY] += 1
                continue
            self.report.states += 1
            state = json.loads(turn["state_json"])
            if not state:
                self.report.dropped[NO_INPUT] += 1
                continue
            reflections = [
                CallReflection(
                    action=_call_text(step["tool_name"], step["arguments_json"]),
                    outcome=_clip(step["observation"] or "", options.max_outcome_chars),
                    tool=step["tool_name"],
                    alternatives=[
                        (_call_text(r["tool_name"], r["arguments_json"]), _clip(r["observation"] or "", options.max_outcome_chars))
                        for r in picked
                    ],
                    alternative_tools=[r["tool_name"] for r in picked],
                )
                for step, picked in zip(turn["_steps"], picks, strict=True)
            ]
            case = ReflectionCase(
                task=_clip(current_request(state), 600),
                context="\n".join(_clip(_message_text(m), 300) for m in state[-options.context_messages :]),
                chosen="; ".join(r.action for r in reflections),
                chosen_outcome="; ".join(r.outcome for r in reflections),
                alternatives=[a for r in reflections for a in r.alternatives],
                chosen_tool=reflections[0].tool,
                alternative_tools=[t for r in reflections for t in r.alternative_tools],
                calls=reflections if len(reflections) > 1 else [],
            )
            offered = offered_tools_json(tools.get(turn["trajectory_id"]) or "[]", turn.get(OFFERED_TOOLS))  # the turn's (Step.tools)
            synthetic = any(r.get(SYNTHETIC) for picked in picks for r in picked)  # an outcome shown was predicted
            self._pending.append((turn, case, offered or "[]", source.source_hash, synthetic))
            if len(self._pending) >= options.batch_size:
                self._flush()

    def take(self) -> pl.DataFrame:
        """The rows written so far and not taken yet (dataset schema)."""
        rows, self._rows = self._rows, []
        self.report.rows += len(rows)
        frame = pl.DataFrame(rows, schema={k: DATASET_SCHEMA[k] for k in rows[0]}) if rows else pl.DataFrame()
        return conform(frame)

    def finish(self) -> pl.DataFrame:
        """Write the last batch; the rows not taken yet."""
        self._flush()
        return self.take()

    def _flush(self) -> None:
        if not self._pending:
            return
        texts = write_rationales(self.teacher, [pending[1] for pending in self._pending], spec=self.options.teacher_spec)
        for (turn, case, tools, source_hash, synthetic), text in zip(self._pending, texts, strict=True):
            cleaned, flags = check_rationale(text, case.chosen_tools, case.alternative_tools)
            for flag in flags:
                (self.report.flagged if cleaned else self.report.dropped)[flag] += 1
            if cleaned is None:
                continue
            action = {"role": "assistant", "content": cleaned, "tool_calls": turn["_calls"]}  # the turn's calls, as IL's target
            self._rows.append(
                {
                    "id": f"sr:{turn['trajectory_id']}:{turn['index']}",
                    "kind": "sr",
                    "prompt": turn["state_json"],
                    "completion": json.dumps([action], ensure_ascii=False),
                    "tools": tools,
                    "trajectory_id": turn["trajectory_id"],
                    "step_index": turn["index"],
                    "proposer": "expert",
                    SYNTHETIC: synthetic,
                    "teacher": self.teacher.name,
                    "quality_flags": json.dumps(flags),
                    "source_hash": source_hash,
                }
            )
        if self.on_batch is not None:
            self.on_batch(sum(len(pending[0]["_calls"]) for pending in self._pending))
        self._pending.clear()


def _call_key(name: str, arguments_json: str | None) -> str:
    """A call's identity for comparing calls (arguments compared as values, numbers as replay compares them: ``2.0`` is
    ``2``, :func:`~ee_middleware.replay.policies.schema.json_numbers`; text that is not JSON as it is)."""
    try:
        arguments = json.loads(arguments_json or "{}")
    except ValueError:
        return f"{name}\0{arguments_json}"
    return canonical_call(name, json_numbers(arguments)) if isinstance(arguments, dict) else f"{name}\0{arguments_json}"


def _outcome_key(observation: str | None, is_error: bool | None) -> tuple[str, bool]:
    """What an outcome is compared by: the observation's text and whether it was an error."""
    return observation or "", bool(is_error)


def _pick(rollouts: list[dict[str, Any]], k: int, rng: random.Random) -> list[dict[str, Any]]:
    """Up to ``k`` alternatives with distinct outcomes, errors and successes both represented where possible."""
    rng.shuffle(rollouts)
    distinct: dict[str, dict[str, Any]] = {}
    for r in sorted(rollouts, key=lambda r: r["is_error"]):  # successes first, then errors
        distinct.setdefault(r["observation"] or "", r)
    pool = list(distinct.values())
    successes = [r for r in pool if not r["is_error"]]
    errors = [r for r in pool if r["is_error"]]
    picked: list[dict[str, Any]] = []
    while len(picked) < k and (successes or errors):
        for group in (successes, errors):
            if group and len(picked) < k:
                picked.append(group.pop(0))
    return sorted(picked, key=lambda r: r["branch_index"])
