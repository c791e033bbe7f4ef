"""The ``em`` dataset: training rows for the experience model (DreamGym), from the store's real transitions.

One row per real transition (an expert step with its recorded observation) of an approved trajectory
(what IL, IWM and SR train on; pending and rejected ones are left out) that is not held out, and that IWM teaches: of a
run paused for a review or cancelled, none after its call awaiting review or cut off (its state shows that call without
a result), nor a call of its turn the resumed run holds too (:func:`~ee_middleware.replay.retrieval.expert_transitions`). The prompt is exactly what the experience sandbox sends at serving time
(:func:`ee_middleware.replay.sandboxes.experience.build_prompt`: task, end of the state, the top-k
retrieved real transitions, the call); retrieval never returns the row's own trajectory nor any
held-out trajectory. The held-out split is the one ``ee experience eval`` uses for the same share
and seed (:func:`ee_middleware.replay.experience_eval.split_store`), so fidelity is always measured
on transitions never trained on and never retrieved.

The target is one JSON object, as the sandbox parses it: a short ``reasoning``, the real
``observation``, ``is_error`` and, on a trajectory's last tool step, the outcome ``reward`` (1.0 for
a completed trajectory, 0.0 otherwise). The reasoning is written by a teacher: ``template`` (a
fixed sentence from the call and the outcome) or a chat model (``local:``/``openai:``/factory) that
sees the real observation (its first :data:`TEACHER_SHOWN` characters) and must explain it without copying it; a
model reasoning that is empty, or that copies what the teacher was shown of the observation in substance
(:func:`copies`: ignoring case, whitespace, quotes and backslashes, a run of it of more than one value covering
:data:`COPY_SHARE` of it, or one holding :data:`COPY_RUN` characters of values besides its longest and those the task or
call also holds), is replaced by the template's and flagged (``quality_flags``). A value is what the tool wrote as one
(a key, a number, a field of a line of text, in plain text or in a JSON string), so naming a few values from it, or one long value
(a path, a commit SHA, a URL, a title or commit subject, spaces and all), is no copy, and an observation shorter than
:data:`MIN_COPY` characters is never counted as copied.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

import polars as pl

from ee_middleware.models.protocol import Sampling
from ee_middleware.replay.experience_eval import HeldOutSplit, split_store
from ee_middleware.replay.retrieval import DEFAULT_TOP_K, Transition, approved_trajectories, expert_transitions
from ee_middleware.replay.sandboxes.experience import build_prompt, template_reasoning
from ee_middleware.trainers.datasets.rows import conform, example_id

TEACHER_PROMPT = (
    "A tool-using agent called a tool; you are shown the call and what the tool really returned. In one or two sentences, "
    "explain why the tool returned this (what the call asked for and what state it met), without quoting the result."
)
TEACHER_SHOWN = 1500
"""How many characters of the observation a model teacher is shown (and so can copy)."""
MIN_COPY = 24
"""An observation shorter than this (stripped) is never counted as copied: a result that short (``true``,
``{"status": "ok"}``) can hardly be explained without naming it."""
COPY_RUN = 40
"""A run common to a reasoning and the observation counts as copied when the values it holds, besides its longest one
and those the task or call also holds (the teacher saw them there and may restate them), come to at least this many
characters, each of them counting one more for the separator before it (so a re-indented copy counts the same). One
value named, however long (a path, a 40-character git SHA, a 64-character SHA-256, a URL), is no copy: the teacher is
asked what state the call met, and a state is often one long value. 40 further characters are three or four more
values in the observation's own order (a listing's names and sizes, an error's text around its path), about 10
tokens, a tenth of the 96 a teacher may write; naming two or three short values next to each other (a file name and
its size, a commit and its author) stays under it."""
COPY_SHARE = 0.8
"""A run of more than one value covering this share of the observation counts as copied however short, and even when
the task or call holds it too: a quote of the whole but a few characters."""
_DROPPED = str.maketrans("", "", "\\\"'`\u2018\u2019\u201c\u201d")
_ESCAPED_SPACE = re.compile(r"\\[nrt]")
"""A JSON/Python escape of a line break or tab, read as whitespace (a teacher quoting a JSON observation writes it
escaped or unescaped alike)."""
_PIECE = re.compile(
    r"(?P<space>(?:\s|\\[nrt])+)|(?P<dropped>[\\\"'`\u2018\u2019\u201c\u201d])|[{}\[\],;:|()<>.!?]|[^\s\\\"'`\u2018\u2019\u201c\u201d{}\[\],;:|()<>.!?]+"
)
"""How :func:`_normal_marked` reads an observation: whitespace, a dropped character, a punctuation mark (the only
characters besides whitespace that may separate values), or a stretch of others (never a separator)."""
_LOOKS_JSON = re.compile(
    r"\s*(?:\{\s*[\"'}]|\[\s*(?:[\"'{\[\]]|-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\s*(?:,|\][ \t]*(?:[\n\r,\]}]|$))))"
)
"""An observation that opens like a JSON (or Python-literal) object or list, whole or cut at :data:`TEACHER_SHOWN`. A
list of numbers must be one (``[3, 4]``), not a log line's bracketed time or number (``[2024-03-04 10:00:01] INFO``,
``[12] deployed``)."""
_JSON_STRING = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"?|'(?:[^'\\\n]|\\.)*'?")
_TEXT_STRING = re.compile(r"\"(?:[^\"\\\n]|\\.)*\"")
_JSON_SEPARATOR = re.compile(r"[\s{}\[\],:]+")
"""Between a JSON observation's strings: its punctuation and the whitespace around it, all structure."""
_TEXT_SEPARATOR = re.compile(r"(?P<backslash>\\\\)|[\n\r\t\f\v]|\\[nrt]| {2,}|[,;|{}\[\]()<>]|[:.!?](?=\s)")
"""In plain text: a line break (or its escape), a tab or a column's gap of 2+ spaces, list/bracket punctuation, and
``:`` or a sentence's end before a space (``Error: ...``, ``key: value``). Not a single space, nor ``: / . = & -``
inside a word (paths, URLs, timestamps, dotted keys, query strings), nor an escaped backslash (the ``backslash`` group,
never a separator: in ``C:\\\\Users\\\\nina`` its second backslash does not start ``\\n``)."""
_LINE_BREAK = re.compile(r"(?P<backslash>\\\\)|[\n\r\t\f\v]|\\[nrt]| {2,}")
"""Inside a double-quoted string of plain text: its lines (and tab- or column-separated fields) only."""
_A_VALUE = re.compile(r"0+")


def _normal(text: str) -> str:
    """``text`` as :func:`copies` compares it: escaped line breaks and tabs and whitespace runs as one space, no quotes
    or backslashes (a teacher that quotes JSON often re-quotes or unescapes it), case folded."""
    return " ".join(_ESCAPED_SPACE.sub(" ", text).translate(_DROPPED).split()).casefold()


def _separators(observation: str) -> bytearray:
    """Which characters of ``observation`` separate two of its values (1) rather than lie inside one (0). A JSON (or
    Python-literal) observation's values are its keys, numbers and the fields of its strings' text; plain text's are its
    lines and the fields in them (:data:`_TEXT_SEPARATOR`), a double-quoted string on one line being one. So a value
    holding spaces (a path with spaces, a title, a commit subject) is one value, as it is for the tool that wrote it,
    and a JSON-wrapped output (a stdout, a file's content, a text part) has the fields its text has plain."""
    marks = bytearray(len(observation))
    json_like = _LOOKS_JSON.match(observation) is not None
    between = _JSON_SEPARATOR if json_like else _TEXT_SEPARATOR
    done = 0
    for string in (_JSON_STRING if json_like else _TEXT_STRING).finditer(observation):
        _mark(marks, between, observation, done, string.start())
        # a JSON string holds what the tool wrote (a stdout, a file, a text part): its text's own fields, as plain text
        _mark(marks, _TEXT_SEPARATOR if json_like else _LINE_BREAK, observation, string.start(), string.end())
        done = string.end()
    _mark(marks, between, observation, done, len(observation))
    return marks


def _mark(marks: bytearray, separator: re.Pattern[str], text: str, start: int, end: int) -> None:
    """Flag in ``marks`` what ``separator`` finds in ``text[start:end]``, read left to right so that an escaped
    backslash (its ``backslash`` group, left unflagged) is one character: ``\\\\n`` is a backslash and an ``n``."""
    for found in separator.finditer(text, start, end):
        if found.lastgroup != "backslash":
            marks[found.start() : found.end()] = b"\x01" * (found.end() - found.start())


def _normal_marked(observation: str) -> tuple[str, str]:
    """``observation`` normalised as :func:`_normal` does it, and a flag for each of its characters: ``1`` where it
    separates two values of the observation (:func:`_separators`), ``0`` inside a value."""
    marks = _separators(observation)
    out: list[str] = []
    flags: list[str] = []
    space = separates = False
    for piece in _PIECE.finditer(observation):
        if piece.lastgroup == "dropped":
            continue
        start, end = piece.span()
        if piece.lastgroup == "space":
            space = True
            separates = separates or marks.find(1, start, end) != -1
            continue
        if space and out:
            out.append(" ")
            flags.append("1" if separates else "0")
        space = separates = False
        folded = piece.group().casefold()
        out.append(folded)
        flags.append(("1" if marks[start] else "0") * len(folded))
    return "".join(out), "".join(flags)


def _suffix_automaton(text: str) -> tuple[list[dict[str, int]], list[int], list[int], list[int]]:
    """The suffix automaton of ``text`` (transitions, suffix links, lengths, and the first end of each state's pieces
    in ``text``), built in O(len(text)): it finds the longest piece of ``text`` ending at each character of another
    text, and where it first is in ``text``, in one pass over that text."""
    moves: list[dict[str, int]] = [{}]
    link, length, first = [-1], [0], [-1]
    last = 0
    for index, char in enumerate(text):
        current = len(moves)
        moves.append({})
        link.append(0)
        length.append(length[last] + 1)
        first.append(index)
        state = last
        while state != -1 and char not in moves[state]:
            moves[state][char] = current
            state = link[state]
        if state != -1:
            follow = moves[state][char]
            if length[state] + 1 == length[follow]:
                link[current] = follow
            else:
                clone = len(moves)
                moves.append(dict(moves[follow]))
                link.append(link[follow])
                length.append(length[state] + 1)
                first.append(first[follow])
                while state != -1 and moves[state].get(char) == follow:
                    moves[state][char] = clone
                    state = link[state]
                link[follow] = link[current] = clone
        last = current
    return moves, link, length, first


def _common_runs(text: str, observation: str) -> dict[str, int]:
    """The maximal runs of ``text`` that ``observation`` also holds (none can grow on either side), each with where it
    first starts in ``observation``, in O(len(text) + len(observation))."""
    moves, link, length, first = _suffix_automaton(observation)
    ends: list[tuple[int, int]] = []  # the longest run of the observation ending at each character of text, and its state
    state = size = 0
    for char in text:
        while state and char not in moves[state]:
            state = link[state]
            size = length[state]
        if char in moves[state]:
            state, size = moves[state][char], size + 1
        ends.append((size, state))
    runs: dict[str, int] = {}
    for end, (size, state) in enumerate(ends):
        if size and (end + 1 == len(ends) or ends[end + 1][0] <= size):
            runs.setdefault(text[end + 1 - size : end + 1], first[state] + 1 - size)
    return runs


def copies(reasoning: str, shown: str, context: str = "") -> bool:
    """Whether ``reasoning`` copies ``shown`` (the part of the observation the teacher saw) in substance. Both
    normalised (:func:`_normal`), they share a run of more than one value of the observation that covers
    :data:`COPY_SHARE` of it, or one whose values besides its longest and besides those also in ``context`` (the task
    and call the teacher saw, which a reasoning may restate) come to :data:`COPY_RUN` characters. A value is what the
    tool wrote as one (:func:`_separators`): a key, a number, a field of a line of text, in plain text or inside a JSON
    string (a stdout, a file's content), so one holding spaces (a path, a title, a commit subject) is one value. Values
    named from the observation (a number, a name, one long path, hash or title) are no copy, and an observation shorter
    than :data:`MIN_COPY` characters is never copied. Costs O(len(reasoning) + len(shown)), plus, when a run may be a
    copy, one split of ``context`` and a search of it for each distinct value holding a space or punctuation."""
    if len(shown.strip()) < MIN_COPY:
        return False
    observation, text = _normal(shown), _normal(reasoning)
    most = math.ceil(COPY_SHARE * len(observation))
    # a run shorter than both bounds cannot be a copy: the observation's values are marked only when one is not
    runs = {run: start for run, start in _common_runs(text, observation).items() if len(run) >= min(most, COPY_RUN)}
    marks = _normal_marked(shown)[1] if runs else ""
    said: _Said | None = None
    for run, start in runs.items():
        inside = marks[start : start + len(run)]
        values = [value for value in (run[m.start() : m.end()].strip() for m in _A_VALUE.finditer(inside)) if value]
        if len(values) < 2:
            continue  # one value named, however long
        if len(run) >= most:
            return True
        if _beyond_one(list(map(len, values))) < COPY_RUN:
            continue
        if said is None:  # the task and call, normalised once per row and only for a run that may be a copy
            said = _Said(_normal(context))
        # the run's first and last values may be cut short: those count as said when the context holds them anywhere
        fresh = [
            len(value) for i, value in enumerate(values) if not (value in said.context if i in (0, len(values) - 1) else said.whole(value))
        ]
        if _beyond_one(fresh) >= COPY_RUN:
            return True
    return False


class _Said:
    """What the normalised task and call (``context``) say whole: not inside a longer word, path or URL (``alex`` is not
    said by ``/home/alex/documents``). Built once per row, lazily: a value without the characters around a value is
    looked up in the set of the context's words (one split of it), any other is searched once and remembered, so a run
    of short values found only inside a large blob costs a lookup each, not a scan of every place they occur."""

    def __init__(self, context: str) -> None:
        self.context = context
        self._words: frozenset[str] | None = None
        self._known: dict[str, bool] = {}

    def whole(self, value: str) -> bool:
        """Whether the context holds ``value`` bounded by a space or punctuation (or its ends) on both sides."""
        if not _AROUND_A_VALUE_RE.search(value):
            if self._words is None:
                self._words = frozenset(self.context.translate(_AROUND_AS_SPACE).split(" "))
            return value in self._words
        known = self._known.get(value)
        if known is None:
            known = self._known[value] = _holds_whole(self.context, value)
        return known


def _holds_whole(context: str, value: str) -> bool:
    """Whether normalised ``context`` holds ``value`` whole: not inside a longer word, path or URL."""
    at = context.find(value)
    while at != -1:
        end = at + len(value)
        if (at == 0 or context[at - 1] in _AROUND_A_VALUE) and (end == len(context) or context[end] in _AROUND_A_VALUE):
            return True
        at = context.find(value, at + 1)
    return False


_AROUND_A_VALUE = frozenset(" ,;:{}[]()<>|=")
_AROUND_A_VALUE_RE = re.compile(r"[ ,;:{}\[\]()<>|=]")
_AROUND_AS_SPACE = str.maketrans(dict.fromkeys(_AROUND_A_VALUE, " "))


def _beyond_one(sizes: list[int]) -> int:
    """How much of a run with values of these lengths is more than one value named: all but the longest, each with one
    character for its separator."""
    return sum(sizes) - max(sizes) + len(sizes) - 1 if sizes else 0


def build_em(
    store: Any,
    *,
    held_out: float = 0.2,
    seed: int = 0,
    top_k: int = DEFAULT_TOP_K,
    teacher: Any = "template",
    teacher_name: str = "template",
    on_progress: Callable[[int, int], None] | None = None,
    retriever: Any = None,
    split: HeldOutSplit | None = None,
    app: str | None = None,
) -> pl.DataFrame:
    """The ``em`` rows of ``store`` (see the module docstring), conforming to the dataset schema; ``retriever``
    searches the replay buffer (see :data:`ee_middleware.replay.retrieval.RETRIEVERS`; ``bm25`` by default).
    ``on_progress(done, total)``: called with ``done`` 0 once the transitions to build are known (``total`` of them),
    then after each row is built (a teacher model answers one request per row), ``done`` ending at ``total``. ``split``:
    the held-out split of ``store`` when the caller made it already (``split_store`` with ``held_out``, ``seed`` and
    ``retriever`` and ``app``), to tell why no row was built (every trajectory held out, or none to build from). ``app``:
    only that app's trajectories are built from and retrieved (a store holding several apps)."""
    if split is None:
        split = split_store(store, share=held_out, seed=seed, retriever=retriever, app=app)
    rows = []
    approved = approved_trajectories(store, app)
    # as IWM: no paused run's copy of a call its resumed run holds, nor a state after its call awaiting review
    taught = expert_transitions(approved)
    built = [trajectory for trajectory in approved if trajectory.id not in split.held_out_ids]
    total = sum(len(taught[trajectory.id]) for trajectory in built)
    if on_progress is not None:
        on_progress(0, total)
    for trajectory in built:
        for transition in taught[trajectory.id]:
            examples = split.index.search(
                transition.tool,
                transition.arguments,
                transition.state,
                k=top_k,
                exclude_ids={transition.id},
                exclude_trajectories=split.held_out_ids | {trajectory.id},
            )
            prompt = build_prompt(transition.task, transition.state, transition.tool, transition.arguments, examples)
            reasoning, flags = _reasoning(teacher, transition)
            target: dict[str, Any] = {"reasoning": reasoning, "observation": transition.observation, "is_error": transition.is_error}
            if transition.reward is not None:
                target["reward"] = transition.reward
            rows.append(
                {
                    "kind": "em",
                    "prompt": json.dumps(prompt, ensure_ascii=False),
                    "completion": json.dumps(
                        [{"role": "assistant", "content": json.dumps(target, ensure_ascii=False)}], ensure_ascii=False
                    ),
                    "tools": "[]",
                    "trajectory_id": trajectory.id,
                    "step_index": transition.step_index,
                    "proposer": "expert",
                    "is_error": transition.is_error,
                    "observation_truncated_chars": transition.truncated_chars,
                    "teacher": teacher_name,
                    "quality_flags": json.dumps(flags),
                    "retrieved": [e.id for e in examples],
                }
            )
            if on_progress is not None:
                on_progress(len(rows), total)
    if not rows:
        return conform(pl.DataFrame(schema={"kind": pl.String()}))
    frame = pl.DataFrame(rows).drop("retrieved")
    frame = frame.with_columns(example_id(pl.col("kind"), pl.col("trajectory_id"), pl.col("step_index")).alias("id"))
    return conform(frame)


def _reasoning(teacher: Any, transition: Transition) -> tuple[str, dict[str, Any]]:
    if teacher == "template" or teacher is None:
        return template_reasoning(transition), {}
    call = json.dumps({"tool": transition.tool, "arguments": transition.arguments}, ensure_ascii=False)
    shown = transition.observation[:TEACHER_SHOWN]
    messages = [
        {"role": "system", "content": TEACHER_PROMPT},
        {"role": "user", "content": f"Task: {transition.task}\nCall: {call}\nThe tool returned: {shown}"},
    ]
    choices = teacher.complete(messages, n=1, sampling=Sampling(temperature=0.0, max_tokens=96))
    text = choices[0].text.strip() if choices and choices[0].problem is None else ""
    if not text:
        return template_reasoning(transition), {"teacher_empty": True}
    if copies(text, shown, context=f"{transition.task}\n{call}"):
        return template_reasoning(transition), {"teacher_copied": True}
    return text, {}
