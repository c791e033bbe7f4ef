"""The experience replay buffer: real transitions from the store, searchable by (tool, arguments, state).

DreamGym's experience model predicts the next observation of a tool call with the top-k most similar
*real* transitions as in-context examples. A real transition is an expert step of an approved
trajectory (its recorded observation; pending and rejected trajectories are not read, as dataset builds do not) or a non-synthetic rollout (the sandbox's real observation);
experience-model output is never indexed, so the model is never grounded on its own guesses. The buffer reads
rollouts as dataset builds select them (:func:`transitions_out_of_use`, by the builds' own rule:
:func:`ee_middleware.replay.attempts.rollouts_in_use`), so it also leaves out the rollouts of a replay that a later
attempt superseded (``ee replay run --again``, its sandbox fixed since), and those of a replay whose record reports
fidelity mismatches (the sandbox answered the expert's own recorded call otherwise than production), from its first
mismatching step on, and its configuration's answers to the tools it got wrong, in every trajectory: a sandbox known to
disagree with production is no real example. A rollout indexed before its replay was superseded or found mismatching
(a buffer refreshed while replays run) is never returned again either. Nor are rollouts whose arguments held redaction
placeholders replay could not restore (``Rollout.unrestored``, which builds leave out as their ``unrestored_json`` is
set: :func:`rollout_transition`): the sandbox answered the placeholder (``user not found``), not the value. Of a run
paused for a review or cancelled, it leaves out what IWM leaves out (:func:`paused_steps_left_out`): the rollouts at a
state after its call awaiting review or cut off (a world production never had), the expert steps after that call, and
its turn's calls the next run of the thread not nested in it (the resumed run) holds too (same id, tool and
arguments).

:class:`TransitionIndex` keeps the transitions, reads what the store gained since the last call
(:meth:`TransitionIndex.refresh`) and applies the rules every query obeys; a **retriever** scores
the transitions' search text (tool name, arguments, end of the state) for a query. Retrievers are
plug-ins (:data:`RETRIEVERS`: a built-in name, ``package.module:factory`` or an
``ee_middleware.retrievers`` entry point; :class:`Retriever` is the protocol and
:func:`ee_middleware.testing.check_retriever` the conformance kit). Built in, both Okapi BM25
(k1=1.5, b=0.75, idf ``log(1 + (N - df + 0.5) / (df + 0.5))``) over the same tokens, so they rank alike:

* ``bm25`` (the default): an inverted index written here, no dependency; :meth:`~BM25Retriever.add`
  indexes new transitions in time proportional to their length, never rebuilding.
* ``bm25s``: the `bm25s <https://github.com/xhluo/bm25s>`_ library (``pip install
  'ee-middleware[experience]'``), scoring with numpy; it has no incremental add, so new transitions
  mark the index stale and the next query rebuilds it from the kept tokens (``benchmarks/experience_model.py``
  measures that rebuild and both retrievers' query times).

Exclusions are part of every query and are applied by the index, whatever the retriever: the ids
of the transition being predicted and whole held-out trajectories (``exclude_trajectories``), so
fidelity measured on a held-out set is never helped by retrieving its own answers.
"""

from __future__ import annotations

import json
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ee_middleware.errors import SandboxError
from ee_middleware.messages import content_to_text, parse_arguments
from ee_middleware.plugins import PluginKind
from ee_middleware.records import Rollout, Trajectory

if TYPE_CHECKING:
    import polars as pl

DEFAULT_TOP_K = 3
DEFAULT_RETRIEVER = "bm25"
_TOKEN = re.compile(r"\w+")
_ASCII_PART = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
"""Kana and CJK ideographs: scripts written without spaces between words."""
_CJK = re.compile(f"[{_CJK_CHARS}]")
_CJK_PIECE = re.compile(f"[{_CJK_CHARS}]|[^{_CJK_CHARS}]+")
_STATE_CHARS = 800
"""How much of the end of a state goes into a transition's search text and the experience model's question."""
EXAMPLE_STATE_CHARS = 300
"""How much of the end of its state a retrieved example is shown with: about the last call or two and their results (what
the world looked like: the directory ``ls`` ran in, the order ``pay`` charged), so that two examples of the same call that
answered differently can be told apart."""
_ENTRY_CHARS = 200
"""At most this much of one message's text, or of one tool call's arguments, in a state's text (its beginning kept, ``…``
marks the cut): one long file or search result must not take the whole budget and hide the calls before it."""


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens in any script (``файл`` and ``café`` are words too); ``camelCase`` and
    ``snake_case`` names are also split into their parts. Chinese and Japanese are written without spaces,
    so each of their characters is a token (``決済が完了`` -> ``決 済 が 完 了``), as multilingual QA scoring
    does: a whole clause as one token would only ever match itself. These are the replay buffer's tokens (a query
    finds ``send_email`` by ``email``); fidelity compares :func:`words`, which splits no name."""
    tokens: list[str] = []
    for word in words(text):
        tokens.append(word.lower())
        if _CJK.fullmatch(word) is None:
            parts = [p.lower() for piece in word.split("_") if piece for p in (_ASCII_PART.findall(piece) if piece.isascii() else [piece])]
            if len(parts) > 1:
                tokens.extend(parts)
    return tokens


def words(text: str) -> list[str]:
    """The words of ``text`` as they appear (case kept, names not split: ``payment_status`` is one word), each Chinese
    or Japanese character a word of its own (those scripts have no spaces between words)."""
    out: list[str] = []
    for word in _TOKEN.findall(text):
        if _CJK.search(word) is None:
            out.append(word)
        else:
            out.extend(_CJK_PIECE.findall(word))
    return out


def _clip(text: str, limit: int = _ENTRY_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def state_text(messages: Sequence[dict[str, Any]], max_chars: int = _STATE_CHARS) -> str:
    """The end of a state as text, at most ``max_chars`` characters: one line per message, in order, ``ROLE: TEXT``;
    each tool call the agent made as ``assistant calls NAME ARGUMENTS_JSON`` and each tool result as ``tool NAME: RESULT``
    (the name of the call it answers), so the state shows what was called with what and what it returned: the
    experience model predicts the next observation from the state and the action. Each message's text and each call's
    arguments are clipped to 200 characters; whole lines are kept from the end (only the end of the last line when it
    alone is longer than ``max_chars``)."""
    names: dict[str, str] = {}
    lines: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = str(message.get("role") or "")
        text = " ".join(content_to_text(message.get("content")).split())
        if role == "tool":
            name = names.get(str(message.get("tool_call_id")), "") or str(message.get("name") or "")
            lines.append(f"tool {name}: {_clip(text)}" if name else f"tool: {_clip(text)}")
            continue
        if text:
            lines.append(f"{role}: {_clip(text)}")
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                continue
            name = str(function.get("name") or "")
            if call.get("id") is not None:
                names[str(call["id"])] = name
            arguments = json.dumps(parse_arguments(function.get("arguments")), ensure_ascii=False)
            lines.append(f"{role or 'assistant'} calls {name} {_clip(arguments)}")
    return _end_lines(lines, max_chars)


def _end_lines(lines: Sequence[str], max_chars: int) -> str:
    """The last whole ``lines`` that fit in ``max_chars`` characters (joined by newlines); the end of the last line when
    it alone does not fit."""
    kept: list[str] = []
    size = -1
    for line in reversed(lines):
        if size + 1 + len(line) > max_chars:
            if not kept:
                kept.append(line[-max_chars:] if max_chars > 0 else "")
            break
        kept.append(line)
        size += 1 + len(line)
    return "\n".join(reversed(kept))


STEP_PREFIX, ROLLOUT_PREFIX = "step:", "rollout:"
"""How a :class:`Transition`'s id begins: an expert step's ``step:TRAJECTORY:INDEX``, a real rollout's ``rollout:ID``
(what a synthetic rollout's lineage records as ``retrieved``, which dataset builds read back)."""


@dataclass(frozen=True)
class Transition:
    """One real (state, action) -> observation, with where it came from."""

    id: str
    """``step:TRAJECTORY:INDEX`` for an expert step, ``rollout:ID`` for a real rollout (:data:`STEP_PREFIX`,
    :data:`ROLLOUT_PREFIX`)."""
    trajectory_id: str
    step_index: int
    task: str
    state: str
    """The end of the state's text, calls and results included (see :func:`state_text`)."""
    tool: str
    arguments: dict[str, Any]
    observation: str
    is_error: bool
    reward: float | None = None
    """The trajectory's outcome (1.0 completed, 0.0 error) on its last tool step; ``None`` elsewhere."""
    replay_id: str | None = None
    """The replay a rollout's transition came from; ``None`` for an expert step."""
    truncated_chars: int = 0
    """Characters cut from the end of ``observation`` when it was recorded (``Observation.truncated_chars``): the real
    observation starts with it."""

    @property
    def search_text(self) -> str:
        return f"{self.tool} {json.dumps(self.arguments, ensure_ascii=False, sort_keys=True)} {self.state}"

    def as_example(self, max_chars: int = 400) -> dict[str, Any]:
        """The transition as an in-context example: the end of its state (:data:`EXAMPLE_STATE_CHARS`, whole lines),
        the call and the observation (clipped to ``max_chars``)."""
        return {
            "state": _end_lines(self.state.split("\n"), EXAMPLE_STATE_CHARS) if self.state else "",
            "tool": self.tool,
            "arguments": self.arguments,
            "observation": self.observation[:max_chars],
            "is_error": self.is_error,
        }


def trajectory_transitions(trajectory: Trajectory) -> list[Transition]:
    """The expert tool steps of ``trajectory`` that have a recorded observation."""
    tool_steps = [s for s in trajectory.steps if s.action.tool_call is not None and s.observation is not None]
    out = []
    for position, step in enumerate(tool_steps):
        call, obs = step.action.tool_call, step.observation
        assert call is not None and obs is not None
        last = position == len(tool_steps) - 1
        out.append(
            Transition(
                id=f"{STEP_PREFIX}{trajectory.id}:{step.index}",
                trajectory_id=trajectory.id,
                step_index=step.index,
                task=trajectory.task or "",
                state=state_text(step.state),
                tool=call.name,
                arguments=dict(call.arguments),
                observation=obs.content,
                is_error=obs.is_error,
                reward=(1.0 if trajectory.status == "completed" else 0.0) if last else None,
                truncated_chars=obs.truncated_chars,
            )
        )
    return out


def rollout_transition(rollout: Rollout, trajectory: Trajectory) -> Transition | None:
    """A real rollout as a transition (``None`` for a synthetic one, an answer, the sandbox's own failure:
    ``Observation.sandbox_failure``, which no real tool returns, or one the sandbox answered for a redaction
    placeholder replay could not restore: ``Rollout.unrestored``, which dataset builds leave out too)."""
    call = rollout.action.tool_call
    if rollout.synthetic or call is None or rollout.observation.sandbox_failure or rollout.unrestored:
        return None
    step = next((s for s in trajectory.steps if s.index == rollout.step_index), None)
    return Transition(
        id=f"{ROLLOUT_PREFIX}{rollout.id}",
        trajectory_id=rollout.trajectory_id,
        step_index=rollout.step_index,
        task=trajectory.task or "",
        state=state_text(step.state) if step is not None else "",
        tool=call.name,
        arguments=dict(call.arguments),
        observation=rollout.observation.content,
        is_error=rollout.is_error,
        replay_id=rollout.replay_id,
        truncated_chars=rollout.observation.truncated_chars,
    )


def paused_steps_left_out(trajectories: Iterable[Trajectory]) -> pl.DataFrame:
    """The steps of the paused or cancelled runs among ``trajectories`` that dataset builds never teach from that run, by
    IWM's own rule (:func:`~ee_middleware.replay.paused_turns.paused_turn_steps`, over the trajectories as a build
    reads them: the store's approved ones): a polars frame of ``trajectory_id``, ``step_index``, ``after`` (a state after
    the run's call awaiting review or cut off: no rollout there, no expert step) and ``held_later`` (a call of the paused
    turn the resumed run (the next run of the thread not nested in it) holds too, same id, tool and arguments: that
    run's copy is the example)."""
    import polars as pl

    from ee_middleware.replay.paused_turns import RUNS_SCHEMA, paused_turn_steps, steps_schema

    runs: dict[str, list[Any]] = {k: [] for k in RUNS_SCHEMA}
    steps: dict[str, list[Any]] = {k: [] for k in steps_schema("observed")}
    for trajectory in trajectories:
        for key, value in zip(
            runs,
            (trajectory.id, trajectory.status, trajectory.thread_id, trajectory.started_at, trajectory.ended_at, trajectory.trace_id),
            strict=True,
        ):
            runs[key].append(value)
        if trajectory.status != "interrupted" and trajectory.thread_id is None:
            continue  # neither paused nor on a thread a paused run may have been resumed on
        for step in trajectory.steps:
            call = step.action.tool_call
            row = (
                trajectory.id,
                step.index,
                step.action.kind,
                step.decision_index,
                call.id if call else None,
                call.name if call else None,
                json.dumps(call.arguments, sort_keys=True, default=str) if call else None,
                step.observation is not None,
            )
            for key, value in zip(steps, row, strict=True):
                steps[key].append(value)
    runs_frame = pl.DataFrame(runs, schema=RUNS_SCHEMA)
    steps_frame = pl.DataFrame(steps, schema=steps_schema("observed"))
    return paused_turn_steps(runs_frame, steps_frame, pl.col("observed"))


def approved_trajectories(store: Any, app: str | None = None) -> list[Trajectory]:
    """The store's approved trajectories (what training may use, as dataset builds read), of ``app`` only when given: an
    experience model for one app is grounded, trained and measured on that app's tools alone, as its datasets are."""
    return [t for t in store.iter_trajectories(status="approved") if app is None or t.app == app]


def expert_transitions(trajectories: Sequence[Trajectory]) -> dict[str, list[Transition]]:
    """Each trajectory's expert transitions (:func:`trajectory_transitions`) that dataset builds teach, by trajectory id:
    none of a paused or cancelled run's steps they leave out (:func:`paused_steps_left_out`: after its call awaiting
    review or cut off, or a call of its turn a later run of the thread holds), nor a decision an earlier trajectory of
    its trace holds too (:func:`~ee_middleware.replay.repeated_decisions.repeated_steps`: a recorded graph used as a
    node of another). ``trajectories``: all those a build reads (the store's approved ones), so that a resumed run, and
    the outer run of a subgraph, are found."""
    from ee_middleware.replay.repeated_decisions import repeated_steps

    left_out = {(t, i) for t, i in paused_steps_left_out(trajectories).select("trajectory_id", "step_index").iter_rows()}
    left_out |= repeated_steps(trajectories)
    return {
        trajectory.id: [tr for tr in trajectory_transitions(trajectory) if (tr.trajectory_id, tr.step_index) not in left_out]
        for trajectory in trajectories
    }


def buffer_transitions(
    store: Any,
    trajectories: Sequence[Trajectory],
    *,
    leave_out: Iterable[str] = (),
    taught: dict[str, list[Transition]] | None = None,
) -> list[Transition]:
    """The real transitions of ``trajectories`` (all those a build reads: the store's approved ones), except those of
    the trajectories in ``leave_out`` (a held-out set), that the replay buffer indexes, by IWM's rule: every
    trajectory's expert transitions a build teaches (:func:`expert_transitions`; ``taught`` when already computed)
    and its rollouts a build uses (:func:`rollout_transition`, :func:`transitions_out_of_use`). A paused run whose
    expert steps its resumed run all holds still gives its rollouts at states before its pause, as in IWM and
    :meth:`TransitionIndex.refresh`."""
    trajectories = list(trajectories)
    taught = expert_transitions(trajectories) if taught is None else taught
    skipped = set(leave_out)
    kept = {t.id: t for t in trajectories if t.id not in skipped}
    transitions = [tr for trajectory_id in kept for tr in taught[trajectory_id]]
    if kept:  # the rollouts a build uses: no superseded attempt, none left out for fidelity mismatches or unrestored,
        # none at a state after a paused run's call awaiting review
        rollouts = [rollout_transition(rollout, kept[rollout.trajectory_id]) for rollout in store.iter_rollouts(list(kept))]
        real = [t for t in rollouts if t is not None]
        out_of_use = transitions_out_of_use(store, trajectories, real)
        transitions.extend(t for t in real if t.id not in out_of_use)
    return transitions


def transitions_out_of_use(store: Any, trajectories: Sequence[Trajectory], transitions: Iterable[Transition]) -> set[str]:
    """The ids of the ``transitions`` a dataset build leaves out, by the builds' rules over ``trajectories`` (those the
    buffer reads, as a build reads its source: the store's approved ones) and the store's replay records of them.

    Rollouts, by :func:`~ee_middleware.replay.attempts.rollouts_in_use`: those of a replay a later attempt of its
    configuration superseded (``ee replay run --again``), and those a replay's fidelity mismatches leave out (from its
    first mismatching step on; its configuration's answers to a tool it got wrong, anywhere). Rollouts and expert steps,
    by :func:`paused_steps_left_out` (as IWM): rollouts at a state after a paused or cancelled run's call awaiting
    review or cut off (stored by a replay made before replay stopped there); the expert steps after that call, and
    those of its turn a later run of the thread (the resumed run) holds too. Rollouts and expert steps at a decision an
    earlier trajectory of the trace holds too (:func:`~ee_middleware.replay.repeated_decisions.repeated_steps`)."""
    import polars as pl

    from ee_middleware.replay.attempts import rollouts_in_use
    from ee_middleware.replay.repeated_decisions import repeated_steps

    trajectories = list(trajectories)
    transitions = list(transitions)
    paused = paused_steps_left_out(trajectories)
    repeats = repeated_steps(trajectories)  # expert steps and their rollouts: the decision is taught from its other copy
    after = {(t, i) for t, i in paused.filter(pl.col("after")).select("trajectory_id", "step_index").iter_rows()} | repeats
    left_out = {(t, i) for t, i in paused.select("trajectory_id", "step_index").iter_rows()} | repeats
    out = {
        t.id
        for t in transitions
        if (t.trajectory_id, t.step_index) in (left_out if t.replay_id is None else after)  # expert steps / rollouts
    }
    rollouts = [t for t in transitions if t.replay_id is not None and t.id not in out]
    if not rollouts:
        return out
    records = store.replays()
    ids = pl.Series([t.id for t in trajectories], dtype=pl.String)
    records = records.filter(pl.col("trajectory_id").is_in(ids.implode()))
    keys = pl.DataFrame(
        {
            "id": [t.id for t in rollouts],
            "replay_id": [t.replay_id for t in rollouts],
            "trajectory_id": [t.trajectory_id for t in rollouts],
            "step_index": [t.step_index for t in rollouts],
            "tool_name": [t.tool for t in rollouts],
        },
        schema={"id": pl.String, "replay_id": pl.String, "trajectory_id": pl.String, "step_index": pl.Int64, "tool_name": pl.String},
    )
    return out | set(keys.filter(~rollouts_in_use(records))["id"].to_list())


@runtime_checkable
class Retriever(Protocol):
    """Scores the search texts it was given for a query (see the module docstring).

    ``add`` appends texts (document ``i`` is the ``i``-th text ever added); ``scores`` returns a sequence
    (a list, a tuple, a numpy array) of one finite real number per added text, in that order, higher is
    more similar: above 0 for a text that matches, 0 or less for one that does not match at all (it is
    never returned; so a distance, 0 for an exact match, must become a similarity). A NaN or infinite
    score is refused (:class:`~ee_middleware.errors.SandboxError`), and an index whose first searches
    score nothing above 0 warns (:class:`NothingRetrievedWarning`). Exclusions and the top-k cut are the index's.
    """

    name: str

    def add(self, texts: Sequence[str]) -> None: ...

    def scores(self, query: str) -> Sequence[float]: ...


RETRIEVERS = PluginKind(
    kind="retriever",
    group="ee_middleware.retrievers",
    error=SandboxError,
    builtins={"bm25": "ee_middleware.replay.retrieval:BM25Retriever", "bm25s": "ee_middleware.replay.retrieval:BM25SRetriever"},
    protocol=Retriever,
    requires="a 'name' attribute and 'add(texts)' and 'scores(query) -> one float per added text' methods",
    options_from="--retriever-setting KEY=VALUE or the retriever_settings of [experience_eval] or [experience_dataset] in the "
    "--config file ([replay.sandbox_settings.retriever_settings] for an experience sandbox)",
)


def build_retriever(spec: str | Retriever | None = None, **options: Any) -> Retriever:
    """The retriever ``spec`` names (default ``bm25``), built with the keyword ``options`` (``retriever_settings``: an
    option its factory takes no parameter for is the registry's 'Bad options' error), or ``spec`` itself when it already
    is one (which takes no options: they would be dropped without a word)."""
    if spec is None:
        spec = DEFAULT_RETRIEVER
    if isinstance(spec, Retriever):
        if options:
            raise SandboxError(
                f"Retriever options ({', '.join(sorted(options))}) were given with a retriever already built "
                f"({type(spec).__name__}): they apply only where a retriever is named by its spec. Build it with them, or "
                "name it (package.module:factory) and pass them as retriever_settings."
            )
        return spec
    return RETRIEVERS.build(spec, **options)


def bm25_parameters(k1: Any, b: Any) -> tuple[float, float]:
    """BM25's ``k1`` (term-frequency saturation: a finite number, 0 or more) and ``b`` (length normalisation: from 0 to
    1), as floats; a ``ValueError`` saying which is wrong otherwise. Out of range they give no error but a nonsense
    ranking (``b`` above 1 or ``k1`` below 0 turn scores negative) or a division by zero, after the work that
    preceded the first search."""
    problems = []
    for name, value, low, high in (("k1", k1, 0.0, math.inf), ("b", b, 0.0, 1.0)):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value <= high:
            wanted = "a finite number, 0 or more (1.2 to 2 is usual)" if name == "k1" else "a number from 0 to 1 (0.75 is usual)"
            problems.append(f"{name} must be {wanted}, not {value!r}")
    if problems:
        raise ValueError("; ".join(problems) + " (e.g. --retriever-setting k1=1.5 --retriever-setting b=0.75)")
    return float(k1), float(b)


class BM25Retriever:
    """Okapi BM25 on an inverted index, grown incrementally, no dependency (the ``bm25`` built-in)."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        self.k1, self.b = bm25_parameters(k1, b)
        self._postings: dict[str, dict[int, int]] = {}
        self._lengths: list[int] = []
        self._total = 0

    def add(self, texts: Sequence[str]) -> None:
        for text in texts:
            doc = len(self._lengths)
            counts = Counter(tokenize(text))
            self._lengths.append(sum(counts.values()))
            self._total += self._lengths[-1]
            for term, tf in counts.items():
                self._postings.setdefault(term, {})[doc] = tf

    def scores(self, query: str) -> list[float]:
        n = len(self._lengths)
        out = [0.0] * n
        if not n:
            return out
        avgdl = self._total / n or 1.0
        for term in Counter(tokenize(query)):
            postings = self._postings.get(term)
            if not postings:
                continue
            idf = math.log(1 + (n - len(postings) + 0.5) / (len(postings) + 0.5))
            for doc, tf in postings.items():
                out[doc] += idf * tf * (self.k1 + 1) / (tf + self.k1 * (1 - self.b + self.b * self._lengths[doc] / avgdl))
        return out


class BM25SRetriever:
    """BM25 by the ``bm25s`` library over the same tokens (the ``bm25s`` built-in; ``[experience]`` extra).

    ``bm25s`` builds its index in one go: :meth:`add` keeps the new documents' tokens and marks the
    index stale; the next :meth:`scores` rebuilds it from every kept token list (no re-tokenizing),
    so a burst of adds costs one rebuild. ``bm25s`` sets its logger to DEBUG when imported; building this retriever
    hands that level back to the application's logging configuration (set it again after to see bm25s's lines).
    """

    name = "bm25s"

    def __init__(self, k1: float = 1.5, b: float = 0.75) -> None:
        from ee_middleware._optional import import_optional

        self._bm25s = import_optional("bm25s", extra="experience", purpose="use the bm25s retriever")
        logger = logging.getLogger("bm25s")
        if logger.level == logging.DEBUG:  # bm25s sets DEBUG when imported: its 'Building index' lines went to stderr
            logger.setLevel(logging.NOTSET)  # the application's logging decides (ee: warnings, -v for info)
        self.k1, self.b = bm25_parameters(k1, b)
        self._docs: list[list[str]] = []
        self._model: Any = None
        self.rebuilds = 0

    def add(self, texts: Sequence[str]) -> None:
        if texts:
            self._docs.extend(tokenize(text) for text in texts)
            self._model = None

    def scores(self, query: str) -> list[float]:
        if not self._docs:
            return []
        if self._model is None:
            model = self._bm25s.BM25(k1=self.k1, b=self.b, method="lucene", dtype="float64")
            model.index(self._docs, show_progress=False)
            self._model, self.rebuilds = model, self.rebuilds + 1
        tokens = [t for t in dict.fromkeys(tokenize(query)) if t in self._model.vocab_dict]  # each query term once, as bm25
        if not tokens:
            return [0.0] * len(self._docs)
        return self._model.get_scores(tokens).tolist()


UNMATCHED_SEARCHES_WARNING = 3
"""After this many searches of a non-empty buffer that scored nothing above 0 (and none that did), the index warns once:
its retriever likely scores a match 0 or less (a distance), so nothing is ever retrieved."""


class NothingRetrievedWarning(UserWarning):
    """A :class:`TransitionIndex`'s retriever scored no transition above 0 in its first searches: nothing is retrieved."""


@dataclass
class TransitionIndex:
    """Real transitions, searchable through a retriever, grown incrementally (see the module docstring)."""

    retriever: Retriever = field(default_factory=BM25Retriever)
    transitions: list[Transition] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)
    _seen_rollouts: set[str] = field(default_factory=set)
    _seen_trajectories: set[str] = field(default_factory=set)
    _unapproved: set[str] = field(default_factory=set)
    """Indexed trajectories no longer approved (rejected since): their transitions stay in the retriever (it only grows)
    but never come back."""
    _out_of_use: set[str] = field(default_factory=set)
    """Transitions a dataset build would leave out now (:func:`transitions_out_of_use`), also those indexed before
    their replay was superseded or found mismatching, or before a later run of their paused thread was approved: they
    are never returned."""
    _matched: bool = False
    """Whether a search of this index has scored a transition above 0 (then :meth:`_note_match` is no longer called)."""
    _unmatched: int = 0
    """The searches, before the first that matched, that scored no transition above 0."""

    @classmethod
    def of(cls, retriever: str | Retriever | None = None, **options: Any) -> TransitionIndex:
        """An empty index searched by ``retriever`` (a spec, see :data:`RETRIEVERS`, or a built retriever)."""
        return cls(retriever=build_retriever(retriever, **options))

    @property
    def retriever_name(self) -> str:
        return str(getattr(self.retriever, "name", type(self.retriever).__name__))

    def __len__(self) -> int:
        return len(self.transitions)

    def add(self, transitions: Iterable[Transition]) -> int:
        """Index ``transitions`` not indexed yet; how many were added."""
        new = []
        for transition in transitions:
            if transition.id not in self._ids:
                self._ids.add(transition.id)
                new.append(transition)
        if new:
            self.transitions.extend(new)
            self.retriever.add([t.search_text for t in new])
        return len(new)

    def refresh(self, store: Any, *, app: str | None = None) -> int:
        """Add the store's real transitions not indexed yet; how many. Only approved trajectories are read, as dataset
        builds read them: pending ones wait for their review (and are indexed once approved), rejected ones are left
        out, also when they were rejected after they were indexed (and come back when approved again); so are the rollouts a
        dataset build leaves out (:func:`transitions_out_of_use`: a replay a later attempt of its configuration superseded,
        ``ee replay run --again`` once its sandbox was fixed; a replay's fidelity mismatches; a paused run's states
        after its call awaiting review, and its turn's calls the resumed run holds), also when the replay was
        superseded or its mismatches recorded after they were indexed; and, as builds, rollouts the sandbox answered
        for a redaction placeholder replay could not restore (:func:`rollout_transition`). ``app``: only that app's
        trajectories (the replay job's ``--app``)."""
        trajectories: dict[str, Trajectory] = {}
        fresh: list[Transition] = []
        for trajectory in approved_trajectories(store, app):
            trajectories[trajectory.id] = trajectory
            if trajectory.id not in self._seen_trajectories:
                self._seen_trajectories.add(trajectory.id)
                fresh.extend(trajectory_transitions(trajectory))
        self._unapproved = self._seen_trajectories - trajectories.keys()
        if trajectories:
            candidates: list[tuple[str, Transition]] = []
            for rollout in store.iter_rollouts(list(trajectories)):
                if rollout.id in self._seen_rollouts:
                    continue
                transition = rollout_transition(rollout, trajectories[rollout.trajectory_id])
                if transition is None:  # never one (synthetic, an answer, a sandbox failure, unrestored)
                    self._seen_rollouts.add(rollout.id)
                else:
                    candidates.append((rollout.id, transition))
            self._out_of_use = transitions_out_of_use(
                store, list(trajectories.values()), [*self.transitions, *fresh, *(t for _, t in candidates)]
            )
            for rollout_id, transition in candidates:
                if transition.id not in self._out_of_use:  # one left out now is read again by the next refresh
                    self._seen_rollouts.add(rollout_id)
                    fresh.append(transition)
        return self.add(fresh)

    def _scores(self, query: str) -> list[float]:
        """The retriever's scores as floats, one per transition; a plug-in's wrong answer is a SandboxError naming it."""
        raw = self.retriever.scores(query)
        fix = "(check it with ee_middleware.testing.check_retriever)."
        if not hasattr(raw, "__len__"):
            raise SandboxError(
                f"The retriever {self.retriever_name!r} returned a {type(raw).__name__}, not a sequence of scores: it must return "
                f"one float per text it was given {fix}"
            )
        if len(raw) != len(self.transitions):
            raise SandboxError(
                f"The retriever {self.retriever_name!r} returned {len(raw)} scores for {len(self.transitions)} transitions: "
                f"it must score every text it was given {fix}"
            )
        try:
            scores = [float(score) for score in raw]
        except (TypeError, ValueError, OverflowError):
            bad = next(score for score in raw if not _is_number(score))
            raise SandboxError(
                f"The retriever {self.retriever_name!r} returned the score {bad!r} ({type(bad).__name__}): scores are real numbers {fix}"
            ) from None
        if not math.isfinite(sum(scores)):  # one pass: a NaN or an infinity makes the sum one (so does an overflow)
            doc, bad_score = next(((d, s) for d, s in enumerate(scores) if not math.isfinite(s)), (None, 0.0))
            if doc is not None:
                raise SandboxError(
                    f"The retriever {self.retriever_name!r} returned the score {bad_score!r} for transition {doc} of "
                    f"{len(scores)}: every score must be finite. NaN compares false with every score (the transition is "
                    "silently never retrieved) and an infinite score ties every transition scored so (their ranking is "
                    f"lost); score a text that does not match 0 or less, a match a finite number above 0 {fix}"
                )
        return scores

    def _note_match(self, matched: bool) -> None:
        """Count the searches of this index that scored nothing above 0 until one does; after the first
        :data:`UNMATCHED_SEARCHES_WARNING` of them, warn once (:class:`NothingRetrievedWarning`)."""
        if matched:
            self._matched = True
            return
        self._unmatched += 1
        if self._unmatched == UNMATCHED_SEARCHES_WARNING:
            warnings.warn(
                f"The retriever {self.retriever_name!r} scored none of the {len(self.transitions)} transitions of the replay "
                f"buffer above 0 in its first {self._unmatched} searches, so nothing was retrieved: only transitions scored "
                "above 0 are retrieved (0 or less means no match), and the experience model predicts without examples. A "
                "retriever that scores by distance (0 for an exact match, negative further away) must score a match above "
                "0, e.g. 1 / (1 + distance) (check it with ee_middleware.testing.check_retriever).",
                NothingRetrievedWarning,
                stacklevel=3,
            )

    def search(
        self,
        tool: str,
        arguments: dict[str, Any],
        state: str = "",
        *,
        k: int = DEFAULT_TOP_K,
        exclude_ids: Iterable[str] = (),
        exclude_trajectories: Iterable[str] = (),
    ) -> list[Transition]:
        """The ``k`` best transitions for the query, best first; excluded ids and trajectories never come back.

        Transitions of the same tool rank above all others (an example of another tool says little
        about what this one returns); ties go by transition id (not the indexing order, which follows the order the
        store's trajectories were written in: the same store's examples whatever it was written in). Only transitions the retriever
        scores above 0 are returned. A score that is not a finite number is a
        :class:`~ee_middleware.errors.SandboxError` naming the retriever.
        """
        if k <= 0 or not self.transitions:
            return []
        skip_ids, skip_trajectories = set(exclude_ids), set(exclude_trajectories) | self._unapproved
        scores = self._scores(f"{tool} {json.dumps(arguments, ensure_ascii=False, sort_keys=True)} {state}")
        matched = [d for d, score in enumerate(scores) if score > 0]
        if not self._matched:
            self._note_match(bool(matched))
        ranked = sorted(matched, key=lambda d: (self.transitions[d].tool != tool, -scores[d], self.transitions[d].id))
        out = []
        for doc in ranked:
            transition = self.transitions[doc]
            if transition.id in skip_ids or transition.id in self._out_of_use or transition.trajectory_id in skip_trajectories:
                continue
            out.append(transition)
            if len(out) == k:
                break
        return out


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True
