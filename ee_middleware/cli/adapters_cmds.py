"""``ee adapters``: register, list, show, promote, rollback and retire LoRA adapters.

The registry and the servers live in ``ee_middleware.adapters`` (the top-level ``adapters/``
folder), imported inside the commands.
"""

from __future__ import annotations

from datetime import UTC, date
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from ee_middleware.cli.common import (
    JsonOption,
    actor_name,
    console,
    escape,
    examples,
    positive_seconds,
    print_json,
    server_urls,
    short,
    utc_clock,
)

app = typer.Typer(help="Versioned LoRA adapters: register, promote (hot-swap into the servers), roll back, retire.", no_args_is_help=True)

RegistryOption = typer.Option(
    ...,
    "--registry",
    "-r",
    envvar="EE_ADAPTER_REGISTRY",
    show_envvar=True,
    help="Adapter registry: a folder (created on first register; or local:PATH), NAME:LOCATION for an installed registry plug-in "
    "(an ee_middleware.adapter_registries entry point), or package.module:factory.",
)
ServerOption = typer.Option(
    [],
    "--server",
    envvar="EE_SERVER_URLS",
    show_envvar=True,
    help="A replica's OpenAI API root, e.g. http://127.0.0.1:8000/v1; once per replica (EE_SERVER_URLS: comma-separated).",
)
ByOption = typer.Option(None, "--by", callback=actor_name, help="Who is acting, for the history. [default: EE_USER or the login name]")
RankOption = typer.Option(
    None,
    "--max-lora-rank",
    envvar="EE_MAX_LORA_RANK",
    show_envvar=True,
    min=1,
    help="The servers' --max-lora-rank. [default: 16, vLLM's]",
)


def _backend(spec: str) -> str:
    """``--backend``: a serving backend's spec, checked now (a typo is a usage error listing every accepted form)."""
    from ee_middleware.adapters.serving.backend import BACKENDS
    from ee_middleware.errors import EEError

    try:
        BACKENDS.resolve(spec)
    except EEError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return spec.strip()


BackendOption = typer.Option(
    "vllm",
    "--backend",
    callback=_backend,
    help="What the servers are: vllm, local (ee serve local), or a serving-backend plug-in: package.module:factory or the "
    "name of an ee_middleware.serving_backends entry point (as [improve.serving] backend).",
)
TimeoutOption = typer.Option(
    None,
    "--timeout",
    callback=positive_seconds,
    help="Seconds each request to a server may take (a load, the smoke chat request, an unload, a listing); raise it for a "
    "server busy with long answers. [default: 60]",
)
RegistryOnlyOption = typer.Option(
    False,
    "--registry-only",
    help="Load it on no server: switch the app's alias in the registry alone (as ee improve does without [improve.serving] "
    "servers). Takes no --server.",
)


class StatusChoice(StrEnum):  # the values of ee_middleware.adapters.records.Status (kept out of the CLI's imports)
    candidate = "candidate"
    live = "live"
    retired = "retired"
    failed = "failed"


def _registry(spec: str, *, create: bool = False) -> Any:
    from ee_middleware.adapters.registry import open_registry

    return open_registry(spec, create=create)


def _replicas(urls: list[str], backend: str, max_lora_rank: int | None, timeout_s: float | None = None) -> list[Any]:
    from ee_middleware.adapters.serving.backend import build_backends

    # --timeout goes to the backend only when given: a serving-backend plug-in need not take it
    options = {} if timeout_s is None else {"timeout_s": timeout_s}
    return build_backends(urls, kind=backend, max_lora_rank=max_lora_rank, **options)


def _switch_replicas(
    ctx: typer.Context,
    servers: list[str],
    backend: str,
    max_lora_rank: int | None,
    *,
    registry_only: bool,
    timeout_s: float | None = None,
) -> list[Any]:
    """The replicas a promote or rollback loads on: those ``--server`` names, or none with ``--registry-only`` (servers
    from EE_SERVER_URLS are then left out, with a note; given on the command line, they are a usage error)."""
    urls = server_urls(servers)
    if not registry_only:
        if not urls:
            raise typer.BadParameter(
                "no model server given. Pass --server URL once per replica (or set EE_SERVER_URLS=URL,URL), e.g. --server "
                "http://127.0.0.1:8000/v1; or --registry-only to switch the alias in the registry alone, loading it on no server.",
                param_hint="'--server'",
            )
        return _replicas(urls, backend, max_lora_rank, timeout_s)
    if urls:
        if getattr(ctx.get_parameter_source("servers"), "name", None) != "ENVIRONMENT":  # typer's own click: by name
            raise typer.BadParameter(
                f"--registry-only loads the adapter on no server, but --server names {', '.join(urls)}: leave out --server, "
                "or --registry-only to load it there.",
                param_hint="'--registry-only'",
            )
        typer.echo(f"note: --registry-only: the servers in EE_SERVER_URLS ({', '.join(urls)}) are left alone.", err=True)
    return []


def _record_json(record: Any) -> dict[str, Any]:
    return record.to_json()


@app.command("register", epilog=examples("ee adapters register ./out/adapter --app support-bot -r ./registry"))
def register(
    path: Path = typer.Argument(..., help="The adapter folder `ee train` wrote."),
    app_name: str = typer.Option(..., "--app", "-a", help="The app (and alias) it serves, e.g. support-bot."),
    registry: str = RegistryOption,
    max_lora_rank: int | None = RankOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Register an adapter under an immutable versioned name (APP-vN-HASH) as a candidate.

    The same weights registered again return their record; where the registry's copy of them is missing or altered,
    it is copied in again (their content hash checked) and a note says so."""
    from ee_middleware.adapters.registry import LocalAdapterRegistry

    reg = _registry(registry, create=True)
    restored = {"on_restore": lambda text: typer.echo(f"note: {text}", err=True)} if isinstance(reg, LocalAdapterRegistry) else {}
    record = reg.register(path, app_name, by=by, max_lora_rank=max_lora_rank, **restored)
    if as_json:
        print_json(_record_json(record))
    else:
        typer.echo(f"{record.name} ({record.status}, rank {record.rank}, base {record.base_model})")
    if record.status == "failed":  # the same weights, registered before: their failed record stands
        from ee_middleware.adapters.promote import failed_for_rank

        if failed_for_rank(record):
            fix = (
                "It failed because a server refused its LoRA rank, which is the servers' setting, not the adapter's fault: "
                f"start the servers with --max-lora-rank {record.rank} or more and promote it (ee adapters promote {record.name} "
                f"-r {registry} --server URL ...); the promote makes it a candidate again."
            )
        else:
            fix = "A failed adapter is not promoted again. Fix the cause and register a newly trained adapter."
        typer.secho(
            f"error: these weights are registered already as {record.name}, which failed ({record.reason}); the same weights "
            f"keep their record. {fix}",
            err=True,
            fg="red",
        )
        raise typer.Exit(1)


@app.command("list", epilog=examples("ee adapters list -r ./registry --app support-bot"))
def list_adapters(
    registry: str = RegistryOption,
    app_name: str | None = typer.Option(None, "--app", "-a", help="Only this app (one the registry has never held: an error, exit 1)."),
    status: StatusChoice | None = typer.Option(None, "--status", help="Only candidate, live, retired or failed."),
    servers: list[str] = typer.Option(
        [],
        "--server",
        help="Also ask this replica (its OpenAI API root) which adapters it holds: the 'loaded on' column; once per replica. "
        "EE_SERVER_URLS is not read here: a listing asks no server unless told to.",
    ),
    backend: str = BackendOption,
    timeout_s: float | None = TimeoutOption,
    as_json: bool = JsonOption,
) -> None:
    """List registered adapters (--json: one array of records).

    With --server, each replica is asked which adapters it holds (--json: "loaded_on", the replicas holding each):
    an adapter a rollback left (retired, it stays loaded so that requests naming it are still answered) keeps a LoRA
    slot of each replica until `ee adapters retire NAME --server ...` unloads it; a warning names those (not the
    retired adapters a rollback would go back to, kept loaded so that it is an alias switch), and a warning names each
    replica that lacks a live adapter (restarted since the promote). A replica that does not answer is an error (exit 1).

    The status of the retired adapter a rollback of its app would make live again is marked "retired *", the table's
    caption says why (--json: "rollback_target": true); an adapter whose copy in the registry is missing or incomplete (its folder, its
    config or its weights: not their content hash, see ee adapters show) is marked "files missing", with a warning
    (--json: "files_problem", else null).

    An --app the registry has never held (a typo) is an error: the error: line names the app it probably means, and the
    exit status is 1 (--json: {"error": ...}, as for every failure)."""
    reg = _registry(registry)
    records = reg.list(app=app_name, status=status.value if status else None)
    if app_name is not None and not records and app_name not in reg.apps():
        from ee_middleware.adapters.errors import AdapterNotFoundError
        from ee_middleware.adapters.registry import no_app_message

        raise AdapterNotFoundError(no_app_message(app_name, reg.apps()))  # (--json: the {"error": ...} of every failure)
    from ee_middleware.adapters.records import copy_problem

    targets = _rollback_targets(reg, {r.app for r in records if r.status == "retired"})
    problems = {r.name: copy_problem(r, verify=False) for r in records}
    urls = server_urls(servers)
    held = _held_on(_replicas(urls, backend, None, timeout_s)) if urls else None
    loaded_on = {r.name: [url for url, names in held.items() if r.name in names] for r in records} if held is not None else {}
    if as_json:
        print_json(
            [
                {**_record_json(r), "rollback_target": r.name in targets, "files_problem": problems[r.name]}
                | ({"loaded_on": loaded_on[r.name]} if held is not None else {})
                for r in records
            ]
        )
        return
    for name, problem in problems.items():
        if problem:
            typer.secho(f"warning: {name}: {problem}. ee adapters show {name} -r {registry} says how to restore it.", err=True, fg="yellow")
    for folder in reg.leftover_copies() if callable(getattr(reg, "leftover_copies", None)) else []:
        typer.secho(
            f"warning: {folder} is a copy no adapter of the registry names (left by a register that was killed before it "
            "was recorded): remove it if nobody restores it from there.",
            err=True,
            fg="yellow",
        )
    if held is not None:
        _say_live_not_loaded(records, loaded_on, list(held), urls, registry, backend)
    kept = {name for entry in reg.apps().values() for name in entry.get("previous") or []} if held is not None else set()
    resident = [r.name for r in records if r.status in ("retired", "failed") and r.name not in kept and loaded_on.get(r.name)]
    if resident:  # (a retired adapter a rollback could go back to stays loaded on purpose: the rollback is an alias switch)
        them = _server_args(urls, backend)
        typer.secho(
            f"warning: {', '.join(resident)} {'is' if len(resident) == 1 else 'are'} not served by any app but still loaded "
            "(each holds a LoRA slot of the replicas it is loaded on): "
            + "; ".join(f"ee adapters retire {name} -r {registry} {them}" for name in resident)
            + f" unloads {'it' if len(resident) == 1 else 'them'}.",
            err=True,
            fg="yellow",
        )
    from rich import box
    from rich.table import Column, Table

    # The name is what show, promote and rollback take: never cut ("booking…") in a narrow terminal. Short values stay
    # whole; what every adapter shares (app, base model, creator) is said once in the title, the rest folds, never cut.
    shared = {
        label: values.pop()
        for label, values in (
            ("app", {r.app for r in records}),
            ("base", {r.base_model for r in records}),
            ("by", {r.created_by or "" for r in records}),
        )
        if len(values) == 1
    }
    said = ", ".join(f"{label} {value}" for label, value in shared.items() if value)
    title = f"{len(records)} adapters in {registry}" + (f" ({said})" if said else "")
    columns = [Column("name", no_wrap=True, min_width=max((len(r.name) for r in records), default=4))]
    columns += [Column("app", overflow="fold", ratio=1)] if "app" not in shared else []
    columns += [Column("status", no_wrap=True), Column("rank", no_wrap=True, justify="right"), Column("created (UTC)", no_wrap=True)]
    columns += [Column("base model", overflow="fold", ratio=2)] if "base" not in shared else []
    columns += [Column("by", overflow="fold", ratio=1)] if "by" not in shared else []
    columns += [Column("loaded on", overflow="fold", ratio=1)] if held is not None else []
    columns.append(Column("reason", overflow="fold", ratio=2))
    marked = sorted({r.app for r in records if r.name in targets})
    caption = (
        f"* the rollback target: ee adapters rollback {marked[0] if len(marked) == 1 else 'APP'} makes it live again" if marked else None
    )
    table = Table(*columns, title=escape(title), caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for r in records:
        style = {"live": "bold green", "failed": "red", "retired": "dim"}.get(r.status)
        table.add_row(
            escape(r.name),
            *([escape(r.app)] if "app" not in shared else []),
            r.status + (" *" if r.name in targets else "") + (" (files missing)" if problems[r.name] else ""),
            str(r.rank),
            utc_clock(r.created_at, "%Y-%m-%d %H:%M"),
            *([escape(short(r.base_model, 60))] if "base" not in shared else []),
            *([escape(r.created_by or "")] if "by" not in shared else []),
            *([_loaded_on_cell(loaded_on[r.name], len(urls))] if held is not None else []),
            escape(short(r.reason or "", 80)),
            style="red" if problems[r.name] else style,
        )
    console().print(table)


def _say_live_not_loaded(
    records: list[Any], loaded_on: dict[str, list[str]], replicas: list[str], urls: list[str], registry: str, backend: str
) -> None:
    """A warning for each live adapter some replica asked (``replicas``: their API roots, as ``loaded_on`` names them;
    ``urls``: as given) does not hold (a replica restarted since the promote starts with the base alone): the router
    sends that app's requests to the others, and with every replica lacking it the app is not served."""
    for record in records:
        lacking = [url for url in replicas if url not in loaded_on[record.name]] if record.status == "live" else []
        if lacking:
            typer.secho(
                f"warning: {record.name} is live for {record.app} but not loaded on {', '.join(lacking)} (restarted since "
                f"the promote?): ee adapters promote {record.name} -r {registry} {_server_args(urls, backend)} loads it "
                "wherever it is missing.",
                err=True,
                fg="yellow",
            )


def _server_args(urls: list[str], backend: str) -> str:
    """The ``--server`` options (and ``--backend``, unless vLLM's default) a suggested command names these replicas with."""
    return " ".join(f"--server {url}" for url in urls) + ("" if backend == "vllm" else f" --backend {backend}")


def _held_on(replicas: list[Any]) -> dict[str, set[str]]:
    """The models each replica lists (its base model and the adapters it holds), by its URL."""
    from ee_middleware.adapters.errors import ServingError

    held = {}
    for replica in replicas:
        try:
            held[replica.url] = set(replica.list())
        except ServingError as exc:
            raise ServingError(
                f"Could not ask {replica.url} which adapters it holds: {exc} Leave it out of --server (or every --server, to "
                "list the registry alone).",
                url=replica.url,
            ) from exc
    return held


def _loaded_on_cell(urls: list[str], replicas: int) -> str:
    if not urls:
        return "-"
    if len(urls) == replicas:
        return "all" if replicas > 1 else escape(urls[0])
    return escape(", ".join(urls))


def _rollback_targets(reg: Any, apps: set[str]) -> set[str]:
    """The adapters a rollback of each of ``apps`` would make live again (none for an app that has no such adapter)."""
    from ee_middleware.adapters.errors import RegistryError

    targets = set()
    for app_name in sorted(apps):
        try:
            targets.add(reg.rollback_target(app_name).name)
        except RegistryError:  # nothing to roll back to
            continue
    return targets


@app.command("show", epilog=examples("ee adapters show support-bot-v3-1a2b3c -r ./registry"))
def show(name: str = typer.Argument(..., help="An adapter name."), registry: str = RegistryOption, as_json: bool = JsonOption) -> None:
    """An adapter's record, its training manifest and its history.

    The registry's copy of its files is checked (read and hashed): one that is missing or differs from what was
    registered is reported, with how to restore it (--json: "files_problem", else null)."""
    from ee_middleware.adapters.records import copy_problem

    reg = _registry(registry)
    record = reg.get(name)
    history = reg.history(adapter=name)
    problem = copy_problem(record, verify=True)
    if as_json:
        print_json({**_record_json(record), "files_problem": problem, "history": history})
        return
    manifest = record.manifest or {}
    out = console()
    out.print(
        f"[bold]{escape(record.name)}[/bold]  app {escape(record.app)}  version {record.version}  status {record.status}  "
        f"rank {record.rank}"
    )
    out.print(escape(f"base model: {record.base_model}\npath: {record.path} (registered from {record.source_path})"))
    if problem:
        typer.secho(f"warning: {_copy_warning(record, registry, problem)}", err=True, fg="yellow")
    if record.reason:
        out.print(escape(f"reason: {record.reason}"))
    if manifest:
        metrics = manifest.get("metrics", {})
        datasets = ", ".join(
            f"{k} ({v.get('rows', '?')} rows, sha256 {str(v.get('sha256', ''))[:12]})" for k, v in manifest.get("datasets", {}).items()
        )
        from ee_middleware.trainers.training.report import loss_text

        # each stage's own first and last loss, to 4 decimals (it printed the last loss to 16 digits)
        out.print(
            escape(f"trained: schedule {manifest.get('schedule', {}).get('name')}, {metrics.get('steps')} steps, {loss_text(metrics, 4)}")
        )
        out.print(escape(f"datasets: {datasets or '-'}"))
    verdicts = _gate_verdicts(record)
    for position, (_, verdict) in enumerate(verdicts):
        said = "PASS" if verdict["passed"] else "FAIL"
        out.print(escape(f"gate {_when(verdict['at'])}: {said}" + (f" ({verdict['runs']})" if verdict["runs"] else "")))
        for reason in verdict["reasons"]:
            out.print(escape(f"    - {reason}"))
        for note in verdict["notes"]:
            out.print(escape(f"    note: {note}"))
        if position == len(verdicts) - 1 and not verdict["passed"]:
            out.print(escape(f"    its last gate failed: ee adapters promote {name} refuses it unless --ignore-gate"))
    gates = _gate_of_eval_event(record, history)
    unfinished = _unfinished_promotes(history, name)
    for event in history:
        applied = "" if event.get("applied", True) else "  (interrupted: not applied)"
        gate = gates.get(id(event))
        verdict = "" if gate is None else f"  (gate {'PASS' if gate['passed'] else 'FAIL'})"
        overrides = [
            flag for key, flag in (("ignored_gate", "--ignore-gate"), ("ignored_rendering", "--ignore-rendering")) if event.get(key)
        ]
        overridden = f"  (with {' and '.join(overrides)})" if overrides else ""
        line = (
            f"  {_when(event.get('at'))}  {_said(event.get('action')):<16} by {_said(event.get('by'))}"
            f"{_replacement(event, name)}{verdict}{overridden}{applied}"
        )
        out.print(escape(line))
        if id(event) in unfinished:
            out.print(
                escape(
                    "    no outcome recorded: that promote is still running, or was ended without a word (killed), and may "
                    f"have left the adapter loaded on {', '.join(map(str, event.get('replicas') or [])) or 'its replicas'}"
                )
            )
        if isinstance(event.get("reason"), str) and event["reason"]:
            out.print(escape(f"    reason: {event['reason']}"))


_PROMOTE_OUTCOMES = ("promote", "fail", "promote-aborted")
"""The history actions that end a ``promote-started`` of the same adapter (it went live, failed, or was undone)."""


def _unfinished_promotes(history: list[dict[str, Any]], name: str) -> set[int]:
    """The ``id()`` of each ``promote-started`` event of adapter ``name`` in ``history`` that no outcome
    (:data:`_PROMOTE_OUTCOMES`) followed before the adapter's next promote began, or at all: a promote killed (SIGKILL)
    records nothing more (a stopped one records ``promote-aborted``)."""
    mine = [event for event in history if event.get("adapter") == name]
    unfinished = set()
    for position, event in enumerate(mine):
        if event.get("action") != "promote-started":
            continue
        later = (e.get("action") for e in mine[position + 1 :] if e.get("action") in (*_PROMOTE_OUTCOMES, "promote-started"))
        if next(later, "promote-started") == "promote-started":
            unfinished.add(id(event))
    return unfinished


def _copy_warning(record: Any, registry: str, problem: str) -> str:
    """What ``show`` says of an adapter whose registry copy has ``problem`` (:func:`~ee_middleware.adapters.records.copy_problem`):
    where it was looked for and how to restore it."""
    from ee_middleware.adapters.records import missing_copy_message

    if not Path(record.path).is_dir():
        return missing_copy_message(record, registry)
    return (
        f"The registry's copy of the registered adapter {record.name} is damaged: {problem}. Registered adapters are never "
        f"edited: register the same weights again to restore it (ee adapters register {record.source_path} --app {record.app} "
        f"-r {registry}: the registry restores its copy when their content hash matches), or restore the folder from a backup. "
        "A promote refuses it until then."
    )


def _gate_verdicts(record: Any) -> list[tuple[int, dict[str, Any]]]:
    """The gate decisions among ``record``'s evals, oldest first, each with its position in the evals
    (:func:`~ee_middleware.adapters.promote.gate_verdict`)."""
    from ee_middleware.adapters.promote import gate_verdict

    verdicts = [(i, gate_verdict(entry)) for i, entry in enumerate(record.evals or [])]
    return [(i, verdict) for i, verdict in verdicts if verdict is not None]


def _gate_of_eval_event(record: Any, history: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The gate decision each ``eval`` event of ``record``'s history recorded, by the event's ``id()``: the n-th applied
    eval event added the n-th of its evals. Nothing where the two do not pair up (a registry plug-in keeping them
    otherwise): the verdicts are then shown above the history alone."""
    events = [e for e in history if e.get("action") == "eval" and e.get("adapter") == record.name and e.get("applied", True)]
    if len(events) != len(record.evals or []):
        return {}
    return {id(events[i]): verdict for i, verdict in _gate_verdicts(record)}


def _when(value: Any) -> str:
    """A history event's time (``at``) for ``show``, to the second: in UTC, saying so, from every form ee improve's
    promote reads (an ISO 8601 string, a datetime, epoch seconds); a time without a zone as given, saying it names none
    (a registry plug-in's ``datetime.now()`` is local time); an ISO date alone as that date, saying it has no time; any
    other value as the registry gave it."""
    from ee_middleware.jobs.deploy import event_moment, names_no_zone

    moment = event_moment(value)
    if moment is None:
        return "time unknown" if value is None else f"time {value!r}"
    if isinstance(value, str) and _date_only(value):
        return f"{moment.date().isoformat()} (a date, no time)"  # not an invented 00:00:00
    if names_no_zone(value):
        return f"{moment:%Y-%m-%d %H:%M:%S} (no zone)"
    try:
        return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    except OverflowError:  # a time at the calendar's edge (datetime.min with an offset) has no UTC reading
        return moment.isoformat(sep=" ", timespec="seconds")


def _date_only(text: str) -> bool:
    """Whether ``text`` is an ISO 8601 date with no time of day (``2026-11-30``)."""
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _said(value: Any) -> str:
    """A history event's ``action`` or ``by`` for ``show``: ``unknown`` where the registry gives none (missing, null)."""
    return "unknown" if value is None or value == "" else str(value)


def _replacement(event: dict[str, Any], name: str) -> str:
    """What a history event of adapter ``name`` changed as the app's live adapter: which adapter this one replaced,
    or, for an event on another adapter, that it replaced this one (a promote superseded it, a rollback went back from it)."""
    replaced, other = event.get("replaced"), event.get("adapter")
    if not replaced:
        return ""
    if other == name:
        return f"  (replaced {replaced})"
    return f"  (rolled back to {other})" if event.get("action") == "rollback" else f"  (superseded by {other})"


@app.command("promote", epilog=examples("ee adapters promote support-bot-v3-1a2b3c -r ./registry --server http://127.0.0.1:8000/v1"))
def promote(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The adapter to make live."),
    registry: str = RegistryOption,
    servers: list[str] = ServerOption,
    backend: str = BackendOption,
    registry_only: bool = RegistryOnlyOption,
    max_lora_rank: int | None = RankOption,
    timeout_s: float | None = TimeoutOption,
    by: str | None = ByOption,
    ignore_gate: bool = typer.Option(
        False, "--ignore-gate", help="Promote even though its last recorded deploy gate failed (the history records it)."
    ),
    ignore_rendering: bool = typer.Option(
        False,
        "--ignore-rendering",
        help="Promote even though a server renders prompts unlike the adapter's training rows (the history records it).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Load and verify the adapter on every replica, then switch its app's alias to it (all or nothing).

    Given the live adapter, it is loaded again on every replica that lacks it (one restarted since the promote) and
    verified there; the alias and the other replicas are left alone.

    An adapter whose last recorded gate failed (ee eval gate --adapter NAME -r REGISTRY) needs --ignore-gate. A server
    whose chat template (recorded by ee serve vllm / ee serve local) renders prompts unlike the adapter's training rows
    (its manifest's rendering) is refused unless --ignore-rendering; where either is unknown, a note says so. A rank
    above a server's --max-lora-rank (recorded by ee serve vllm / ee serve local, or given here) is refused before any
    load; an adapter an earlier version marked failed for it is made a candidate again and promoted."""
    from ee_middleware.adapters.promote import promote as run_promote

    replicas = _switch_replicas(ctx, servers, backend, max_lora_rank, registry_only=registry_only, timeout_s=timeout_s)
    progress = None if as_json else lambda t: typer.echo(t, err=True)
    result = run_promote(
        _registry(registry), name, replicas, by=by, progress=progress, ignore_gate=ignore_gate, ignore_rendering=ignore_rendering
    )
    if as_json:
        print_json(result.to_json())
    elif result.already_live:
        where = (
            f"loaded again on {', '.join(result.loaded_on)}"
            if result.loaded_on
            else "every replica holds it; nothing loaded"
            if replicas
            else "no server asked (--registry-only)"
        )
        typer.echo(f"{result.live.app} -> {result.live.name} (already live; {where}) in {result.seconds:.3f} s")
    else:
        typer.echo(f"{result.live.app} -> {result.live.name} (was {result.replaced or 'none'}) in {result.seconds:.3f} s")


@app.command("rollback", epilog=examples("ee adapters rollback support-bot -r ./registry --server http://127.0.0.1:8000/v1"))
def rollback(
    ctx: typer.Context,
    app_name: str = typer.Argument(..., help="The app whose previous live adapter comes back."),
    registry: str = RegistryOption,
    servers: list[str] = ServerOption,
    backend: str = BackendOption,
    registry_only: bool = RegistryOnlyOption,
    max_lora_rank: int | None = RankOption,
    timeout_s: float | None = TimeoutOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Make the app's previous live adapter live again (it stayed loaded: an alias switch)."""
    from ee_middleware.adapters.promote import rollback as run_rollback

    progress = None if as_json else lambda t: typer.echo(t, err=True)
    replicas = _switch_replicas(ctx, servers, backend, max_lora_rank, registry_only=registry_only, timeout_s=timeout_s)
    result = run_rollback(_registry(registry), app_name, replicas, by=by, progress=progress)
    if as_json:
        print_json(result.to_json())
        return
    typer.echo(f"{app_name} -> {result.live.name} (was {result.replaced}) in {result.seconds:.3f} s")
    if replicas and result.replaced:
        them = _server_args([replica.url for replica in replicas], backend)
        typer.echo(
            f"note: {result.replaced} is retired and stays loaded, so that requests naming it are still answered; once none "
            f"do, ee adapters retire {result.replaced} -r {registry} {them} unloads it.",
            err=True,
        )


@app.command("retire", epilog=examples("ee adapters retire support-bot-v2-9f8e7d -r ./registry --server http://127.0.0.1:8000/v1"))
def retire(
    name: str = typer.Argument(..., help="The adapter to withdraw."),
    registry: str = RegistryOption,
    servers: list[str] = ServerOption,
    backend: str = BackendOption,
    reason: str | None = typer.Option(None, "--reason", help="Why, for the record."),
    timeout_s: float | None = TimeoutOption,
    by: str | None = ByOption,
    as_json: bool = JsonOption,
) -> None:
    """Retire an adapter that is not live, and unload it from the given replicas."""
    from ee_middleware.adapters.promote import retire as run_retire

    urls = server_urls(servers)
    replicas = _replicas(urls, backend, None, timeout_s) if urls else []
    progress = None if as_json else lambda t: typer.echo(t, err=True)
    record, problems = run_retire(_registry(registry), name, replicas, by=by, reason=reason, progress=progress)
    if as_json:
        print_json({**_record_json(record), "unload_problems": problems})
    else:
        typer.echo(f"{record.name} retired" + (f"; could not unload from: {'; '.join(problems)}" if problems else ""))
    if problems:
        raise typer.Exit(1)
