"""Which replays' rollouts are in use: the rule dataset builds and the experience model's replay buffer share.

A configuration (``replay_id``) replayed again after its sandbox was fixed (``ee replay run --again``) has several
attempts, each with its own replay id; a trajectory's newest finished attempt supersedes the earlier ones
(:func:`superseded_replays`). A replay whose record reports fidelity mismatches (its sandbox answered the expert's own
recorded call otherwise than production) is not trusted from its first mismatching step on, nor is its configuration's
answer to a tool it got wrong, anywhere (:func:`untrusted_replays`, :func:`mark_untrusted`). Dataset builds
(:mod:`ee_middleware.trainers.datasets.source`) and the replay buffer (:mod:`ee_middleware.replay.retrieval`, through
:func:`rollouts_in_use`) leave those rollouts out, by these functions over the store's replay records
(:meth:`~ee_middleware.store.protocol.ExperienceStore.replays`). They live in the light core, which the replay buffer is
part of and which may not import the dataset builders.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl


def superseded_replays(records: pl.DataFrame) -> pl.DataFrame:
    """The replays (a configuration's replay of a trajectory) a later attempt of the same configuration replayed again
    (``ee replay run --again``, after its sandbox was fixed): ``replay_id`` and ``trajectory_id``. A build that uses
    every replay leaves their rollouts out, and does not hold their fidelity mismatches against the configuration. An
    attempt after the first names its configuration and number in its records' details (``attempt_of``, ``attempt``);
    the first names neither (its replay id is the configuration's)."""
    if records.is_empty() or "details_json" not in records.columns:
        return pl.DataFrame(schema={"replay_id": pl.String(), "trajectory_id": pl.String()})
    details = pl.col("details_json")
    keyed = records.select(
        "replay_id",
        "trajectory_id",
        pl.coalesce(details.str.json_path_match("$.attempt_of"), pl.col("replay_id")).alias("_configuration"),
        details.str.json_path_match("$.attempt").cast(pl.Int64, strict=False).fill_null(1).alias("_attempt"),
        pl.col("status"),
    )
    # only a finished replay supersedes: a later attempt that failed, or skipped the trajectory (its environment gone
    # for now), leaves the earlier attempt's rollouts in use
    newest = pl.when(pl.col("status") == "done").then(pl.col("_attempt")).max().over("_configuration", "trajectory_id")
    return keyed.filter(pl.col("_attempt") < newest).select("replay_id", "trajectory_id").unique(maintain_order=True)


def configuration_replays(records: pl.DataFrame, replay_id: str) -> list[str]:
    """The replay ids of every attempt (``ee replay run --again``) of the configuration that ``replay_id`` is an attempt
    of, from replay ``records`` (``replay_id`` itself included, stored or not)."""
    if records.is_empty() or "details_json" not in records.columns:
        return [replay_id]
    of = pl.col("details_json").str.json_path_match("$.attempt_of")
    named = records.filter(pl.col("replay_id") == replay_id).select(of.alias("of")).drop_nulls()["of"]
    configuration = named[0] if len(named) else replay_id
    attempts = records.filter((pl.col("replay_id") == configuration) | (of == configuration))["replay_id"]
    return sorted({replay_id, configuration, *attempts.to_list()})


UNTRUSTED_SCHEMA: dict[str, pl.DataType] = {
    "replay_id": pl.String(),
    "trajectory_id": pl.String(),
    "sandbox": pl.String(),
    "policy": pl.String(),
    "fidelity_mismatches": pl.Int64(),
    "first_step": pl.Int64(),
    "tool": pl.String(),
    "wrong_tools": pl.List(pl.String()),
}


def untrusted_replays(records: pl.DataFrame) -> pl.DataFrame:
    """The replays (a configuration's replay of a trajectory) whose rollouts a build leaves out: those whose newest
    record (``records``: replay records, repeats dropped) reports fidelity mismatches. Columns of
    :data:`UNTRUSTED_SCHEMA`: the replay, its sandbox and policy, how many expert calls mismatched, the first one's
    step and tool (null when the record kept none), and ``wrong_tools``: the tools whose answer differed (the
    mismatches the record lists, leaving out the sandbox's own failures: a time-out says nothing of the tool).

    What a build leaves out (:func:`mark_untrusted`): the rollouts of such a trajectory's replay from its first
    mismatching step on (the whole replay when the record names no step), and in every trajectory that configuration
    replayed, the rollouts calling one of its ``wrong_tools``. A mismatch says the sandbox answers the expert's own call
    unlike production: a tool it gets wrong (a misnamed parameter, a stale fixture) answers every call to it wrongly,
    alternatives at earlier states and in other trajectories included, and from that step on the sandbox's world may
    differ from production's, so which of its other answers there are right cannot be told. Before that step the world
    is the one production recorded (every expert answer matched), so the other tools' rollouts there are kept: a tool
    whose answer holds the time or a fresh id (it never matches) costs its own rollouts and the later steps', not
    the trajectory's."""
    if records.is_empty() or "fidelity_mismatches" not in records.columns:
        return pl.DataFrame(schema=UNTRUSTED_SCHEMA)
    flagged = records.filter(pl.col("fidelity_mismatches").fill_null(0) > 0)
    rows = []
    for record in flagged.iter_rows(named=True):
        listed = _listed_mismatches(record.get("details_json"))
        first = listed[0] if listed else {}
        rows.append(
            {
                "replay_id": record["replay_id"],
                "trajectory_id": record["trajectory_id"],
                "sandbox": record.get("sandbox"),
                "policy": record.get("policy"),
                "fidelity_mismatches": record["fidelity_mismatches"],
                "first_step": first.get("step") if isinstance(first.get("step"), int) else None,
                "tool": first.get("tool") if isinstance(first.get("tool"), str) else None,
                "wrong_tools": sorted({m["tool"] for m in listed if isinstance(m.get("tool"), str) and not m.get("sandbox_failure")}),
            }
        )
    return pl.DataFrame(rows, schema=UNTRUSTED_SCHEMA)


def not_superseded(superseded: pl.DataFrame) -> pl.Expr:
    """True for a row (of rollouts or replay records) of no :func:`superseded_replays` replay."""
    if superseded.is_empty():
        return pl.lit(True)
    return ~_replay_key().is_in(superseded.select(_replay_key())["_replay_key"].implode())


def _listed_mismatches(details_json: str | None) -> list[dict[str, Any]]:
    """The mismatches a replay record lists (the first few, in step order: see the replay runner), or ``[]``."""
    try:
        details = json.loads(details_json or "{}")
    except ValueError:
        return []
    listed = details.get("fidelity_mismatches") if isinstance(details, dict) else None
    return [m for m in listed if isinstance(m, dict)] if isinstance(listed, list) else []


def _replay_key() -> pl.Expr:
    """One key per replay: its configuration and trajectory."""
    return pl.concat_str("replay_id", "trajectory_id", separator="\x00").alias("_replay_key")


def _tool_key() -> pl.Expr:
    """One key per replay configuration and tool called."""
    return pl.concat_str("replay_id", "tool_name", separator="\x00").alias("_tool_key")


def _wrong_tool_keys(untrusted: pl.DataFrame) -> pl.Series:
    tools = untrusted.select("replay_id", pl.col("wrong_tools").alias("tool_name")).explode("tool_name").drop_nulls()
    return tools.select(_tool_key())["_tool_key"].unique()


def mark_untrusted(untrusted: pl.DataFrame) -> pl.Expr:
    """True for a rollout a build leaves out for ``untrusted`` (:func:`untrusted_replays`): of such a replay at or after
    its first mismatching step (the whole replay when its record names no step), or calling a tool its configuration
    answered wrongly anywhere."""
    if untrusted.is_empty():
        return pl.lit(False)
    keys = untrusted.select(_replay_key(), pl.col("first_step").fill_null(-1))
    first_steps = dict(zip(keys["_replay_key"].to_list(), keys["first_step"].to_list(), strict=True))
    first = _replay_key().replace_strict(first_steps, default=None, return_dtype=pl.Int64)
    mark = first.is_not_null() & (pl.col("step_index") >= first)
    tools = _wrong_tool_keys(untrusted)
    return mark | _tool_key().is_in(tools.implode()) if not tools.is_empty() else mark


def rollouts_in_use(records: pl.DataFrame) -> pl.Expr:
    """True for a rollout (a row with ``replay_id``, ``trajectory_id``, ``step_index`` and ``tool_name``) a dataset build
    uses by default, given the replay ``records`` of its source's trajectories (repeats dropped): of no replay a later
    attempt superseded (:func:`superseded_replays`), and not left out for the fidelity mismatches of the replays still in
    use (:func:`untrusted_replays`, :func:`mark_untrusted`), which is how builds apply the two rules."""
    current = not_superseded(superseded_replays(records))
    return current & ~mark_untrusted(untrusted_replays(records.filter(current)))
