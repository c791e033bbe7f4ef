"""Which replays are in use when a configuration was replayed again (``ee replay run --again``).

A configuration (``replay_id``) replayed again after its sandbox was fixed has several attempts, each with its own
replay id; a trajectory's newest finished attempt supersedes the earlier ones. Dataset builds
(:mod:`ee_middleware.trainers.datasets.source`) and the experience model's replay buffer
(:mod:`ee_middleware.replay.retrieval`) leave the superseded replays' rollouts out, by these functions over the store's
replay records (:meth:`~ee_middleware.store.protocol.ExperienceStore.replays`).
"""

from __future__ import annotations

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
