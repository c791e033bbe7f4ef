"""``ee store``: inspect and maintain an experience store."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import typer

from ee_middleware.cli.common import (
    AllowPartialOption,
    JsonOption,
    StoreOption,
    console,
    examples,
    open_existing_store,
    print_json,
    reading_store,
)

app = typer.Typer(help="Inspect and maintain an experience store.", no_args_is_help=True)


@app.command("info", epilog=examples("ee store info --store ./experience"))
def info(store: str = StoreOption, as_json: bool = JsonOption, allow_partial: bool = AllowPartialOption) -> None:
    """Counts of trajectories by approval, spool segments and Parquet parts, and the store's pseudonym form.

    pseudonyms: canonical (a value's tag is that of its canonical form: one per e-mail address, card, IBAN, SSN or phone
    number however it is written), as_written (a store recorded before pseudonyms were canonical keeps the tags of each
    value as written), or off (plain [REDACTED:<kind>] placeholders); as its redaction.json says.

    A file of the store that cannot be read (no permission, a folder in its place, a failed disk) is named with what to do.
    """
    from ee_middleware.errors import StoreError
    from ee_middleware.store.access import store_unreadable
    from ee_middleware.store.metadata import local_folder

    with reading_store(allow_partial=allow_partial):
        opened = open_existing_store(store)
        try:
            data = opened.info()
        except OSError as exc:
            if local_folder(opened) is None:  # a plug-in's own read failed (its backend down, a time-out): no file of ours
                raise StoreError(
                    f"Cannot read the experience store {store}: its info() ({type(opened).__name__}) raised "
                    f"{type(exc).__name__}: {exc}. Try again once the store answers; nothing was changed."
                ) from exc
            raise StoreError(store_unreadable(opened.root, exc)) from exc
        pseudonyms, why = _pseudonym_form(opened)
    data = {**data, "pseudonyms": pseudonyms}
    if as_json:
        print_json(data)
        return
    from rich.table import Table

    table = Table(title=f"Experience store {data['root']}", show_header=False)
    for key, value in data.items():
        if key != "root":
            table.add_row(key.replace("_", " "), why if key == "pseudonyms" else str(value))
    console().print(table)
    if data.get("unfinished_repair"):
        typer.secho(
            "warning: an `ee store repair` (or a compaction) was stopped after it took damaged files out, before it recorded "
            "what they held (trajectories that lost steps may still show as they were, replays that lost rollouts as done): "
            f"run `ee store repair --store {store}` to finish it.",
            err=True,
            fg="yellow",
        )


_PSEUDONYM_FORMS = {
    "canonical": "canonical (one tag per value, however it is written)",
    "as_written": "as written (the tags of each value as written: recorded before pseudonyms were canonical)",
    "off": "off (plain [REDACTED:<kind>] placeholders)",
}


def _pseudonym_form(store: object) -> tuple[str | None, str]:
    """How ``store``'s pseudonym tags are made (its ``redaction.json``): ``canonical``, ``as_written`` or ``off``
    (``None`` where the file cannot be read), and the same in words."""
    from ee_middleware.capture.store_redaction import read_store_redaction
    from ee_middleware.errors import ConfigError

    try:
        settings = read_store_redaction(store)
    except ConfigError as exc:
        return None, f"unknown: {exc}"
    form = settings.pseudonym_form if settings.pseudonyms else "off"
    return form, _PSEUDONYM_FORMS[form]


SAID_SPOOL_BYTES = 16 << 20
"""A spool at least this large is said before it is compacted (a compaction of 350 MB takes about half a minute)."""


def _say_what_compact_does(opened: Any, store: str) -> None:
    """On stderr, before a local store's compaction: that it waits for another one running, and what it folds when that
    is much (the command was silent for minutes)."""
    from ee_middleware.store.local import LocalExperienceStore

    if not isinstance(opened, LocalExperienceStore):
        return
    if opened.compaction_running():
        # (the spool measured now is what that compaction folds: this one folds only what is written meanwhile)
        typer.echo(f"waiting for the compaction of {store} another process runs to finish...", err=True)
        return
    segments, size = opened.spool_size()
    if size >= SAID_SPOOL_BYTES:
        typer.echo(f"compacting {segments} spool segment(s), {size / 2**20:.0f} MB, into Parquet parts...", err=True)


@app.command("compact", epilog=examples("ee store compact --store ./experience"))
def compact(store: str = StoreOption, as_json: bool = JsonOption) -> None:
    """Fold finished spool segments into Parquet parts (safe while agents are recording and reading).

    Exits 1 when it finds a damaged Parquet part: it checks every part's footer (a cut-off file) and reads in
    full the parts it merges. A damaged part is left as it is: `ee store repair` reads every part in full and
    takes damaged ones out. Damaged spool segments are moved to quarantine/ (said on stderr, exit 0).
    A part or spool segment it cannot read (no permission, a folder in its place, a failed disk) is left where it
    is and named, the rest compacted (exit 1); a manifest.json it cannot read stops it before it changes anything.
    With --json: {"store", "segments_folded", "damaged", "unreadable", "warnings"} (the last three: what was said on
    stderr, one text each).
    """
    from ee_middleware.errors import IncompleteReadWarning
    from ee_middleware.store.access import UnreadableFileWarning
    from ee_middleware.store.local import LocalExperienceStore

    with reading_store(allow_partial=True):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            opened = open_existing_store(store)
            _say_what_compact_does(opened, store)
            folded = opened.compact()
        for w in seen:  # to reading_store, which says them; the unreadable files are told apart from damage here
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    hiding = [w for w in seen if issubclass(w.category, IncompleteReadWarning)]
    unreadable = list(dict.fromkeys(str(w.message) for w in hiding if issubclass(w.category, UnreadableFileWarning)))
    damaged = list(dict.fromkeys(str(w.message) for w in hiding if not issubclass(w.category, UnreadableFileWarning)))
    if as_json:  # (each once, as reading_store says them)
        others = list(dict.fromkeys(str(w.message) for w in seen if not issubclass(w.category, IncompleteReadWarning)))
        print_json({"store": store, "segments_folded": folded, "damaged": damaged, "unreadable": unreadable, "warnings": others})
    elif isinstance(opened, LocalExperienceStore):
        typer.echo(f"Compacted {folded} spool segment(s) into Parquet parts.")
    else:  # a plug-in's compact() returns what it counts, in its own layout
        typer.echo(f"Compacted the store {store} ({type(opened).__name__}: compact() returned {folded!r}).")
    if damaged:
        typer.secho(f"error: damaged parts found (above); run `ee store repair --store {store}` to take them out.", err=True, fg="red")
    if unreadable:
        typer.secho(
            "error: files that could not be read were left where they are (above), nothing of them lost; do what is said "
            f"there, then run `ee store compact --store {store}` again.",
            err=True,
            fg="red",
        )
    if damaged or unreadable:
        raise typer.Exit(1)


@app.command("repair", epilog=examples("ee store repair --store ./experience"))
def repair(store: str = StoreOption, as_json: bool = JsonOption) -> None:
    """Take damaged Parquet parts out of the store (moved to quarantine/TABLE/), so reads are complete again.

    Their rows are lost to the store unless you restore the files from a backup. Safe while agents
    are recording. Finished spool segments holding damaged records (a damaged line, an integer outside 64 bits an
    older version stored) are moved to quarantine/ as `ee store compact` moves them, once their whole records
    are in Parquet parts. A missing or damaged
    ee-store.json (the file that marks a folder as a store) is written anew when the folder holds a
    store's files; a damaged one is kept in quarantine/.

    A file it cannot read (no permission, a folder in its place, a failed disk) is not known to be damaged:
    it is left where it is and named with what to do (exit 1); one that is ee-store.json or manifest.json
    stops the repair before it changes anything.
    """
    from ee_middleware.errors import StoreError
    from ee_middleware.store.local import LocalExperienceStore
    from ee_middleware.store.registry import store_config_value

    location = store_config_value(store)
    marker = LocalExperienceStore.restore_marker(location) if isinstance(location, Path) else None
    opened = open_existing_store(store)
    do_repair = getattr(opened, "repair", None)
    if do_repair is None:  # (raised: --json says why, not only that the command failed)
        raise StoreError(f"the store {store} ({type(opened).__name__}) has no repair(); see its own documentation.")
    if isinstance(opened, LocalExperienceStore) and opened.compaction_running():  # repair takes the compaction's lock
        typer.echo(f"waiting for the compaction of {store} another process runs to finish...", err=True)
    report = do_repair()
    if marker is not None:
        report = {**report, "marker_written": marker["marker_written"], "damaged_marker_moved_to": marker["damaged_marker_moved_to"]}
    if not isinstance(report, dict):  # a plug-in's repair() returns what it likes (the protocol has none): as it came
        report = {"report": report}
    unreadable = report.get("unreadable_files", [])
    failed = bool(unreadable or report.get("losses_not_recorded"))
    if as_json:
        print_json(report)
        if failed:
            raise typer.Exit(1)
        return
    if not isinstance(opened, LocalExperienceStore):  # a plug-in's own repair: its report, in its own words
        typer.echo(f"Repaired the store {store} ({type(opened).__name__}); its report:")
        for key, value in report.items():
            typer.echo(f"  {key}: {json.dumps(value, ensure_ascii=False, default=str)}")
        if unreadable:
            raise typer.Exit(1)
        return
    written = marker is not None and marker["marker_written"] is not None
    if written:
        kept = marker["damaged_marker_moved_to"]
        typer.echo(f"Wrote a new {marker['marker_written']}" + (f" (the damaged one is kept as {kept})." if kept else "."))
    if report.get("finished_stopped_repair"):
        typer.echo(
            "Finished an earlier `ee store repair` (or compaction) that was stopped before it recorded what the files it took out held."
        )
    moved, dropped = report["quarantined_parts"], report["missing_parts_dropped"]
    for item in moved:
        typer.echo(f"Moved damaged part {item['part']} to {item['moved_to']} ({item['reason']}).")
    for path in dropped:
        typer.echo(f"Dropped missing part {path} from the manifest.")
    segments = report.get("quarantined_segments", [])
    for item in segments:
        lost = "; the damaged records are kept only in the moved segment" if item["records_lost"] else ""
        typer.echo(
            f"Moved spool segment {item['segment']} to {item['moved_to']} ({item['reason']}): its {item['records_kept']} "
            f"whole record(s) are in the store's Parquet parts{lost}."
        )
    reopened = report.get("replays_reopened", [])
    if reopened:
        configurations = len({item["replay_id"] for item in reopened})
        typer.echo(
            f"{len(reopened)} replayed trajector{'y' if len(reopened) == 1 else 'ies'} of {configurations} replay "
            f"configuration{'' if configurations == 1 else 's'} lost rollouts with those parts: "
            "each is marked failed, and the next `ee replay run` of its configuration replays it again."
        )
    _say_losses(report)
    if not moved and not dropped and not segments:
        typer.echo(f"No damaged parts or spool segments in {store}.")
    elif not unreadable and (moved or dropped):
        typer.echo("Reads are complete again, without those parts' rows; restore them from a backup if you have one.")
    if report.get("losses_not_recorded"):
        typer.secho(f"error: {report['losses_not_recorded']}", err=True, fg="red")
    for item in unreadable:
        typer.secho(f"error: Cannot read {item['path']}: {item['reason']}. Left it where it is. {item['advice']}", err=True, fg="red")
    if unreadable:
        typer.secho("error: reads stay incomplete until these files can be read.", err=True, fg="red")
    if failed:
        raise typer.Exit(1)


def _ids(ids: list[str]) -> str:
    shown = ", ".join(i[:12] for i in ids[:20])
    return shown + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")


def _say_losses(report: dict[str, object]) -> None:
    """Say, per part repair took out, which trajectories lost what, and how the store marked them (``parts_lost``,
    ``steps_lost``, ``decisions_lost``, ``trajectories_lost`` of the report)."""
    for item in report.get("parts_lost", []):  # type: ignore[attr-defined]
        ids = item["trajectories"]
        name = Path(item["part"]).name
        if item["table"] == "steps" and ids:
            typer.echo(
                f"{item['table']}/{name} held steps of {len(ids)} trajector{'y' if len(ids) == 1 else 'ies'} now missing "
                f"some: {_ids(ids)}. Each is rejected by `ee store repair`, saying so (ee traces show): restore the part "
                "from a backup into steps/ and run `ee store compact`, then approve it with --force."
            )
        elif item["table"] == "approvals" and ids:
            typer.echo(
                f"{item['table']}/{name} held approval decisions, which are lost; {len(ids)} trajector"
                f"{'y' if len(ids) == 1 else 'ies'} may have had one in it: {_ids(ids)}. Each is pending again, by "
                "`ee store repair` saying so: check it (ee traces show) and decide again with --force."
            )
        elif item["table"] == "trajectories" and ids:
            typer.echo(
                f"{item['table']}/{name} held trajectory records: {len(ids)} trajector{'y' if len(ids) == 1 else 'ies'} "
                f"lost theirs (their steps, decisions or rollouts are left): {_ids(ids)}."
            )
        elif item["table"] == "replays":
            typer.echo(f"{item['table']}/{name} held replay records: the next `ee replay run` replays their trajectories again.")
        elif not ids and item["table"] in ("steps", "approvals", "trajectories"):
            typer.echo(f"{item['table']}/{name} held {item['lost']}: no trajectory in the store is missing any of them.")
