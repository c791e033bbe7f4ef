"""The dataset row: a chat-format prompt/completion pair with its lineage.

Every dataset (IL, IWM, SR) has the same columns, so that rows of different kinds can be mixed:

==============================  =============================================================
column                          meaning
==============================  =============================================================
``id``                          stable id of the example (kind, trajectory, step, branch)
``kind``                        ``il``, ``iwm`` or ``sr``
``prompt``                      JSON text: the OpenAI chat messages the model is shown
``completion``                  JSON text: a list with the one assistant message to learn
``tools``                       JSON text: the OpenAI tool schemas offered (for the chat template)
``trajectory_id``, ``step_index``  where the example comes from
``branch_index``                the rollout's branch (null for expert steps)
``replay_id``                   the replay configuration that produced the rollout (IWM)
``proposer``                    who proposed the action (``expert``, ``mutate``, ``openai``, ...)
``synthetic``                   built from an experience model's prediction (``--include-synthetic``): an IWM row whose
                                target it predicted, an SR row whose rationale was shown an alternative's outcome it
                                predicted; false on every other row (IL, em, expert steps, real rollouts)
``is_error``                    the observation was an error (IWM)
``observation_truncated_chars`` characters cut from the observation (recorded and budgeted)
``teacher``                     who wrote the rationale (SR)
``quality_flags``               JSON text: SR guards' findings (empty object when clean)
``source_hash``                 hash of the store content the dataset was built from
==============================  =============================================================

Messages use the OpenAI shapes; an action is ``{"role": "assistant", "content": "", "tool_calls":
[{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}]}`` (in an IL target,
``content`` is the text the expert wrote beside its calls, empty when none, and ``reasoning_content``, after
``content``, the reasoning a reasoning model wrote before them: only when it wrote some, ``Action.reasoning``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import lru_cache

import polars as pl

from ee_middleware import records
from ee_middleware.messages import dumps
from ee_middleware.replay.paused_turns import turn_key

KINDS: tuple[str, ...] = ("il", "iwm", "sr")

DATASET_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "kind": pl.String(),
    "prompt": pl.String(),
    "completion": pl.String(),
    "tools": pl.String(),
    "trajectory_id": pl.String(),
    "step_index": pl.Int64(),
    "branch_index": pl.Int64(),
    "replay_id": pl.String(),
    "proposer": pl.String(),
    "synthetic": pl.Boolean(),
    "is_error": pl.Boolean(),
    "observation_truncated_chars": pl.Int64(),
    "teacher": pl.String(),
    "quality_flags": pl.String(),
    "source_hash": pl.String(),
}

SYNTHETIC = "synthetic"
"""The column marking the rows built from experience-model predictions (synthetic rollouts)."""

IWM_INSTRUCTION = "Predict exactly what the tool call above returns."
"""The last prompt message of an IWM example: the target is the environment's response."""


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with exactly the dataset columns, in order (missing ones as nulls; ``synthetic`` false where a builder
    left it unset: only the builders of rows from synthetic rollouts set it)."""
    missing = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in DATASET_SCHEMA.items() if name not in frame.columns]
    columns = [pl.col(name).cast(dtype) for name, dtype in DATASET_SCHEMA.items()]
    columns = [column.fill_null(False) if name == SYNTHETIC else column for name, column in zip(DATASET_SCHEMA, columns, strict=True)]
    return frame.with_columns(missing).select(columns)


def example_id(*parts: pl.Expr) -> pl.Expr:
    """A stable id from columns (hex of a 64-bit hash; the same inputs give the same id in every run)."""
    return pl.concat_str([p.cast(pl.String).fill_null("-") for p in parts], separator=":").hash(seed=0x5EED).cast(pl.String)


def tool_call_item(call_id: pl.Expr, name: pl.Expr, arguments_json: pl.Expr) -> pl.Expr:
    """One OpenAI ``tool_calls`` item (a struct)."""
    return pl.struct(
        call_id.fill_null("").alias("id"),
        pl.lit("function").alias("type"),
        pl.struct(name.alias("name"), arguments_json.fill_null("{}").alias("arguments")).alias("function"),
    )


def calls_message(calls: pl.Expr, content: pl.Expr | None = None, reasoning: pl.Expr | None = None) -> pl.Expr:
    """JSON text of the assistant message that makes the tool calls ``calls`` (a list of :func:`tool_call_item`), with
    the text the model wrote beside them (``content``; empty when none) and, where ``reasoning`` is not null, the
    reasoning it wrote first (see :func:`with_reasoning`)."""
    text = pl.lit("") if content is None else content.fill_null("")
    role = pl.lit("assistant").alias("role")
    return with_reasoning(
        lambda *middle: pl.struct(role, text.alias("content"), *middle, calls.alias("tool_calls")).struct.json_encode(), reasoning
    )


def with_reasoning(message: Callable[..., pl.Expr], reasoning: pl.Expr | None) -> pl.Expr:
    """``message()`` (an assistant message's JSON text, built from its fields), or where ``reasoning`` is not null
    ``message(reasoning_content)``: the message with the model's reasoning as ``reasoning_content``, after its
    ``content`` as recorded states have it (``ee_middleware.messages``). A message without reasoning has no such key,
    so rows of models that write none are what they were before schema 1.4 recorded reasoning."""
    if reasoning is None:
        return message()
    return pl.when(reasoning.is_null()).then(message()).otherwise(message(reasoning.alias("reasoning_content")))


OFFERED_TOOLS = "offered_tools_json"
"""The steps table's column naming the tools offered at a step (``Step.tools``; null: all of the trajectory's)."""


def offered_tools(frame: pl.DataFrame, tools: str) -> pl.DataFrame:
    """``frame`` with its column ``tools`` (the JSON text of the trajectory's tool schemas) narrowed, on the rows whose
    step was offered only some of them (:data:`OFFERED_TOOLS` not null), to those, in the order offered: a row never
    offers a tool the model could not call at its step (a middleware choosing tools per call, a tool added at a later
    turn). Rows whose column is null (every step of a run whose tools never change, stores before schema 1.4) keep the
    trajectory's text byte for byte; a frame without the column is ``frame``."""
    if OFFERED_TOOLS not in frame.columns or frame[OFFERED_TOOLS].null_count() == frame.height:
        return frame
    values = [offered_tools_json(t, o) for t, o in zip(frame[tools], frame[OFFERED_TOOLS], strict=True)]
    return frame.with_columns(pl.Series(tools, values, dtype=pl.String))


@lru_cache(maxsize=1024)
def offered_tools_json(schemas: str | None, names: str | None) -> str | None:
    """``schemas`` (the JSON text of a trajectory's tool schemas) narrowed to those named in ``names`` (the JSON text of
    a step's ``Step.tools``), in its order; ``schemas`` itself where ``names`` is null (all of them were offered)."""
    if names is None:
        return schemas
    return dumps(records.offered_tools(json.loads(schemas or "[]"), json.loads(names)))


def expert_turns(steps: pl.DataFrame, **lists: pl.Expr) -> pl.DataFrame:
    """``steps`` (expert steps, in storage order) as the turns the expert made, in the same order: the tool calls of
    one model response (parallel tool calls, recorded as steps sharing a ``decision_index`` and their state) are one
    row, every other step is its own. A row has its first step's columns, ``_calls`` (the turn's calls in order, a
    :func:`tool_call_item` each: the ``tool_calls`` of the message that makes them) and, for each name in ``lists``,
    that expression's value at each of its steps (a list)."""
    turn = turn_key()
    collected = ["_calls", *lists]
    return (
        steps.with_columns(
            tool_call_item(pl.col("tool_call_id"), pl.col("tool_name"), pl.col("arguments_json")).alias("_calls"),
            turn.alias("_turn"),
            **lists,
        )
        .group_by("trajectory_id", "_turn", maintain_order=True)
        .agg(pl.all().exclude(collected).first(), pl.col(collected))
    )


def action_message(call_id: pl.Expr, name: pl.Expr, arguments_json: pl.Expr) -> pl.Expr:
    """JSON text of the assistant message that makes one tool call."""
    return calls_message(pl.concat_list([tool_call_item(call_id, name, arguments_json)]))


def tool_result_message(call_id: pl.Expr, content: pl.Expr) -> pl.Expr:
    """JSON text of the tool message answering the call ``call_id`` with ``content``."""
    return pl.struct(
        pl.lit("tool").alias("role"), call_id.fill_null("").alias("tool_call_id"), content.fill_null("").alias("content")
    ).struct.json_encode()


def answer_message(content: pl.Expr, reasoning: pl.Expr | None = None) -> pl.Expr:
    """JSON text of an assistant message with text content (and, where ``reasoning`` is not null, the reasoning the
    model wrote first: see :func:`with_reasoning`)."""
    role = pl.lit("assistant").alias("role")
    return with_reasoning(lambda *middle: pl.struct(role, content.fill_null("").alias("content"), *middle).struct.json_encode(), reasoning)


def user_message(content: str) -> pl.Expr:
    return pl.struct(pl.lit("user").alias("role"), pl.lit(content).alias("content")).struct.json_encode()


def json_list(*items: pl.Expr) -> pl.Expr:
    """JSON text of a list of already-encoded items."""
    return pl.concat_str([pl.lit("["), pl.concat_str(list(items), separator=","), pl.lit("]")])


def append_to_json_list(list_json: pl.Expr, *items: pl.Expr) -> pl.Expr:
    """JSON text of ``list_json`` (a JSON array as text) with encoded ``items`` appended."""
    body = pl.concat_str(list(items), separator=",")
    trimmed = list_json.str.strip_chars_end()
    return (
        pl.when(trimmed.str.strip_chars() == "[]")
        .then(pl.concat_str([pl.lit("["), body, pl.lit("]")]))
        .otherwise(pl.concat_str([trimmed.str.slice(0, trimmed.str.len_chars() - 1), pl.lit(","), body, pl.lit("]")]))
    )
