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
(:func:`copies`: ignoring case, whitespace, quotes and backslashes, a run of it covering :data:`COPY_SHARE` of it, or
one of at least :data:`COPY_RUN` characters that the task or call does not also hold), is replaced by the template's and
flagged (``quality_flags``). Naming a few values from it is no copy, and an observation shorter than :data:`MIN_COPY`
characters is never counted as copied.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Callable
from typing import Any

import polars as pl

from ee_middleware.models.protocol import Sampling
from ee_middleware.replay.experience_eval import split_store
from ee_middleware.replay.retrieval import DEFAULT_TOP_K, Transition, expert_transitions
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
"""A run of at least this many characters common to a reasoning and the observation (and not one the teacher was also
shown in the task or call) counts as copied. The values a reasoning may fairly name (a number, a date, an id, a name,
a file name) are shorter: a UUID is 36 characters, an ISO timestamp with its zone 25; 40 are about 10 tokens, a tenth
of the 96 a teacher may write."""
COPY_SHARE = 0.8
"""A run covering this share of the observation counts as copied however short, and even when the task or call
holds it too: a quote of the whole but a few characters."""
_COPY_TRIES = 16
"""At most this many runs the task or call also holds are looked past (bounds the time on a reasoning that restates
its call again and again)."""
_DROPPED = str.maketrans("", "", "\\\"'`\u2018\u2019\u201c\u201d")


def _normal(text: str) -> str:
    """``text`` as :func:`copies` compares it: whitespace runs as one space, no quotes or backslashes (a teacher that
    quotes JSON often re-quotes or unescapes it), case folded."""
    return " ".join(text.split()).translate(_DROPPED).casefold()


def copies(reasoning: str, shown: str, context: str = "") -> bool:
    """Whether ``reasoning`` copies ``shown`` (the part of the observation the teacher saw) in substance. Both
    normalised (:func:`_normal`), they share a run that covers :data:`COPY_SHARE` of the observation, or a run of at
    least :data:`COPY_RUN` characters not counting its longest stretch also found in ``context`` (the task and call the
    teacher saw, which a reasoning may restate). A few values named from the observation (a number, a name) are no
    copy, and an observation shorter than :data:`MIN_COPY` characters is never copied."""
    if len(shown.strip()) < MIN_COPY:
        return False
    observation = _normal(shown)
    most = math.ceil(COPY_SHARE * len(observation))
    need = min(COPY_RUN, most)
    if need < 1:
        return False
    text, seen = _normal(reasoning), _normal(context)
    matcher = difflib.SequenceMatcher(None, "", observation, autojunk=False)  # indexes the observation once
    for _ in range(_COPY_TRIES):
        matcher.set_seq1(text)
        found = matcher.find_longest_match(0, len(text), 0, len(observation))
        if found.size < need:
            return False
        if found.size >= most:
            return True
        run = text[found.a : found.a + found.size]
        restated = difflib.SequenceMatcher(None, run, seen, autojunk=False).find_longest_match(0, len(run), 0, len(seen)).size
        if found.size - restated >= need:
            return True
        text = f"{text[: found.a]}\0{text[found.a + found.size :]}"  # look past this run: the NUL matches no text
    return False


def build_em(
    store: Any,
    *,
    held_out: float = 0.2,
    seed: int = 0,
    top_k: int = DEFAULT_TOP_K,
    teacher: Any = "template",
    teacher_name: str = "template",
    progress: Callable[[int], None] | None = None,
    retriever: Any = None,
) -> pl.DataFrame:
    """The ``em`` rows of ``store`` (see the module docstring), conforming to the dataset schema; ``retriever``
    searches the replay buffer (see :data:`ee_middleware.replay.retrieval.RETRIEVERS`; ``bm25`` by default)."""
    split = split_store(store, share=held_out, seed=seed, retriever=retriever)
    rows = []
    approved = list(store.iter_trajectories(status="approved"))
    # as IWM: no paused run's copy of a call its resumed run holds, nor a state after its call awaiting review
    taught = expert_transitions(approved)
    for trajectory in approved:
        if trajectory.id in split.held_out_ids:
            continue
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
                    "teacher": teacher_name,
                    "quality_flags": json.dumps(flags),
                    "retrieved": [e.id for e in examples],
                }
            )
            if progress is not None:
                progress(1)
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
