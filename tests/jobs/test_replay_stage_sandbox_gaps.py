"""The improve job's replay stage on a user's own app (a ticket desk: not BFCL) when the sandbox cannot replay part of
the work: trajectories it cannot rebuild (recorded without an environment) and a tool it leaves out (``notify_user``
sends e-mail). The agent is a real ``create_agent`` graph driven by a scripted model and recorded with
``record_experience`` into a real store; the stages run on real runs folders."""

from __future__ import annotations

import os
import re
import shlex
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.errors import JobError
from ee_middleware.jobs.improve import STAGES, _run_stage
from ee_middleware.jobs.report import write_report
from ee_middleware.jobs.runs import Run, RunsDir
from ee_middleware.jobs.stages import QuietProgress, StageContext
from ee_middleware.replay.job import FINAL_CALLS_NOT_REPLAYED, refused_tool_text

APP = "ticket-bot"
HERE = "tests.jobs.test_replay_stage_sandbox_gaps"

# --- the app's replay sandbox (its world is the recorded environment's tickets) ---------------------------------------


def _build(environment: Any) -> dict[str, Any]:
    from ee_middleware.errors import EnvironmentUnavailableError

    if not environment or "tickets" not in environment:
        raise EnvironmentUnavailableError("ticket trajectories need {'tickets': {...}} as their environment")
    return {"tickets": {k: dict(v) for k, v in environment["tickets"].items()}}


def _ticket(world: dict[str, Any], ticket_id: str) -> dict[str, Any]:
    if ticket_id not in world["tickets"]:
        raise ValueError(f"no ticket {ticket_id}")
    return world["tickets"][ticket_id]


def _get_ticket(world: dict[str, Any], ticket_id: str) -> dict[str, Any]:
    return _ticket(world, ticket_id)


def _assign_ticket(world: dict[str, Any], ticket_id: str, assignee: str) -> str:
    _ticket(world, ticket_id)["assignee"] = assignee
    return f"assigned {ticket_id} to {assignee}"


def _close_ticket(world: dict[str, Any], ticket_id: str, resolution: str) -> str:
    _ticket(world, ticket_id).update(status="closed", resolution=resolution)
    return f"closed {ticket_id}"


def make_sandbox() -> Any:
    """The ticket tools, without notify_user (it e-mails the requester: left out of replay on purpose)."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(_build, tools={"get_ticket": _get_ticket, "assign_ticket": _assign_ticket, "close_ticket": _close_ticket})


def make_sandbox_missing() -> Any:
    """A sandbox that lacks the expert's assign_ticket and close_ticket."""
    from ee_middleware.replay import PythonSandbox

    return PythonSandbox(_build, tools={"get_ticket": _get_ticket})


def make_sandbox_switchable() -> Any:
    """:func:`make_sandbox`, or :func:`make_sandbox_missing` while ``TICKET_SANDBOX_BROKEN`` is set: the module behind the
    same [replay] sandbox spec lost the expert's tools (the replay id does not change)."""
    return make_sandbox_missing() if os.environ.get("TICKET_SANDBOX_BROKEN") else make_sandbox()


def make_sandbox_unfaithful() -> Any:
    """The ticket tools, but get_ticket answers unlike production (a field production does not have): every replay of
    it reports a fidelity mismatch at its first step, so the datasets leave its rollouts out."""
    from ee_middleware.replay import PythonSandbox

    def get_ticket(world: dict[str, Any], ticket_id: str) -> dict[str, Any]:
        return {**_ticket(world, ticket_id), "priority": "low"}

    return PythonSandbox(_build, tools={"get_ticket": get_ticket, "assign_ticket": _assign_ticket, "close_ticket": _close_ticket})


# --- recording the app -----------------------------------------------------------------------------------------------


def record(
    store: Path,
    count: int,
    *,
    first: int = 100,
    environment: bool = True,
    notify: bool = False,
    answer_only: bool = False,
    reads_only: bool = False,
) -> list[str]:
    """Record ``count`` runs of the ticket agent (its tools act on a dict world) and approve them; their ids.
    ``answer_only``: the agent answers without a tool call (nothing to replay; good imitation data). ``reads_only``: it
    only reads the ticket (twice), so a sandbox without assign_ticket/close_ticket still replays it."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import StructuredTool

    from ee_middleware import record_experience
    from ee_middleware.store.registry import open_store
    from ee_middleware.testing import ScriptedChatModel, tool_call

    world: dict[str, Any] = {"tickets": {}}

    def get_ticket(ticket_id: str) -> dict[str, Any]:
        """Read a ticket."""
        return _get_ticket(world, ticket_id)

    def assign_ticket(ticket_id: str, assignee: str) -> str:
        """Assign a ticket."""
        return _assign_ticket(world, ticket_id, assignee)

    def close_ticket(ticket_id: str, resolution: str) -> str:
        """Close a ticket with a resolution."""
        return _close_ticket(world, ticket_id, resolution)

    def notify_user(ticket_id: str, message: str) -> str:
        """E-mail the requester."""
        return "sent"

    tools = [StructuredTool.from_function(f) for f in (get_ticket, assign_ticket, close_ticket, notify_user)]
    for i in range(first, first + count):
        ticket = f"T-{i}"
        env = {"tickets": {ticket: {"title": f"printer {i} broken", "status": "open", "assignee": None}}}
        world["tickets"] = {k: dict(v) for k, v in env["tickets"].items()}
        reads = [AIMessage(content="", tool_calls=[tool_call("get_ticket", ticket_id=ticket)]) for _ in range(2)]
        script = (
            [AIMessage(content=f"Ticket {ticket} needs no action.")]
            if answer_only
            else [*reads, AIMessage(content=f"Ticket {ticket} is open.")]
            if reads_only
            else [
                AIMessage(content="", tool_calls=[tool_call("get_ticket", ticket_id=ticket)]),
                AIMessage(content="", tool_calls=[tool_call("assign_ticket", ticket_id=ticket, assignee="bob")]),
                AIMessage(content="", tool_calls=[tool_call("close_ticket", ticket_id=ticket, resolution="replaced toner")]),
                *([AIMessage(content="", tool_calls=[tool_call("notify_user", ticket_id=ticket, message="done")])] if notify else []),
                AIMessage(content=f"Ticket {ticket} is closed."),
            ]
        )
        graph = create_agent(ScriptedChatModel(script=script), tools, system_prompt="You are a helpdesk agent.")
        agent = record_experience(graph, app=APP, store=store, environment=env if environment else None)
        agent.invoke({"messages": [("user", f"Please handle ticket {ticket}.")]}, {"configurable": {"thread_id": f"th-{i}"}})
        agent.recorder.close()  # the run is written
    opened = open_store(store, create=False)
    try:
        pending = opened.trajectories(status="pending", app=APP)["id"].to_list()
        opened.approve(pending, by="test")
    finally:
        opened.close()
    return pending


def write_config(
    folder: Path, *, schedule: str = "iwm", sandbox: str = "make_sandbox", base: Path | None = None, k: int = 2, heldout: str = ""
) -> Path:
    """The run's improve.toml. ``heldout``: a [datasets] held-out setting (a line of TOML) in place of the job's default
    share, which draws by the (random) trajectory ids: a test that needs some of its few trajectories on the training
    side sets one that cannot draw them all."""
    path = folder / "improve.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [improve]
            store = "{folder / "store"}"
            app = "{APP}"
            registry = "{folder / "registry"}"
            runs = "{folder / "runs"}"
            base_model = "{base or folder / "base"}"
            schedule = "{schedule}"
            likelihood_states = 4

            [replay]
            sandbox = "{HERE}:{sandbox}"
            policy = "mutate"
            k = {k}

            [train]
            max_length = 256
            """
        )
        + (f"\n[datasets]\n{heldout}\n" if heldout else "")
    )
    return path


class Said(QuietProgress):
    """Keeps the info lines a stage says (what the console shows on stderr)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, text: str) -> None:
        self.lines.append(text)


def stages(path: Path, *names: str, run: Run | None = None, progress: QuietProgress | None = None, **overrides: Any) -> Run:
    """Run ``names`` of a run of ``path`` (a new one unless ``run``) as the job runs them (manifests written)."""
    config = ImproveConfig.load(path, **overrides)
    runs = RunsDir(config.runs)
    if run is None:
        run = runs.create("improve", config.describe(), config.config_hash())
        run.update(stage_order=list(STAGES))
    ctx = StageContext(config, run, runs, progress or QuietProgress())
    for name in names:
        _run_stage(ctx, name)
    return run


# --- trajectories the sandbox cannot rebuild -----------------------------------------------------------------------


def test_a_night_of_only_unrebuildable_trajectories_goes_on_when_the_store_holds_the_apps_branches(tmp_path: Path) -> None:
    """Night 2's only new approvals were recorded without an environment. Was: the replay stage failed, saying the run
    "would train without a single branch" while the store held night 1's branches (and every later night continued the
    failed run and failed again). Now the stage notes the skips, as a batch in which only some were skipped is noted."""
    listed = tmp_path / "heldout.txt"
    path = write_config(tmp_path, heldout=f'heldout_ids = "{listed}"')
    heldout, *_ = record(tmp_path / "store", 3)
    listed.write_text(heldout + "\n")
    night1 = stages(path, "select", "replay")
    branches = night1.outputs("replay")["branches"]
    assert branches > 0 and night1.outputs("replay")["skipped"] == 0

    unrebuildable = record(tmp_path / "store", 2, first=900, environment=False)
    night2 = stages(path, "select", "replay")
    replay = night2.stage("replay")
    assert replay["status"] == "done", replay.get("error")
    assert replay["outputs"]["skipped"] == 2 and "2 trajectories skipped" in replay["summary"]
    note = next(d for d in replay["decisions"] if d.startswith("every one of the 2 selected trajectories was skipped"))
    assert all(i in note for i in unrebuildable) and "2 cannot be replayed from their recording" in note, note
    used = re.search(rf"the datasets would train on (\d+) branches of {APP}'s other trajectories", note)
    assert used is not None and 0 < int(used[1]) < branches, note  # the held-out one's are not counted

    # the same run continued (as the next night does after a failure) judges the stored records alike
    again = stages(path, "replay", run=night2)
    assert again.stage("replay")["status"] == "done" and again.stage("replay")["attempt"] == 2


def test_schedule_il_trains_on_no_branch_so_skips_are_a_note(tmp_path: Path) -> None:
    path = write_config(tmp_path, schedule="il")
    record(tmp_path / "store", 2, environment=False)
    run = stages(path, "select", "replay")
    replay = run.stage("replay")
    assert replay["status"] == "done", replay.get("error")
    assert any("schedule 'il' trains on no branch (imitation only)" in d for d in replay["decisions"]), replay["decisions"]


def test_no_branch_of_the_app_and_a_schedule_that_needs_them_fails_naming_ways_out_that_work(tmp_path: Path) -> None:
    """Every selected trajectory skipped, none of the app's replayed before, schedule iwm: the stage fails, and says
    so truly (the store holds no branch under the replay id) with ways out that work: the `ee traces reject` command it
    prints lets the same run go on, and --schedule il --new-run trains on imitation alone."""
    path = write_config(tmp_path)
    ids = record(tmp_path / "store", 2, environment=False)
    config = ImproveConfig.load(path)
    runs = RunsDir(config.runs)
    run = runs.create("improve", config.describe(), config.config_hash())
    ctx = StageContext(config, run, runs, QuietProgress())
    _run_stage(ctx, "select")
    with pytest.raises(JobError) as raised:
        _run_stage(ctx, "replay")
    error = " ".join(str(raised.value).split())
    assert "without a single branch" not in error
    assert f"The datasets would find no replayed branch of {APP} under replay id {config.replay_config().replay_id}" in error, error
    assert "schedule 'iwm' trains on branches (iwm)" in error
    assert f"`{shlex.join(['ee', 'improve', '--config', str(path), '--schedule', 'il', '--new-run'])}`" in error, error
    [reject] = re.findall(r"`(ee traces reject [^`]+)`", error)
    assert all(i in reject for i in ids)

    result = CliRunner().invoke(app, shlex.split(reject.replace("NAME", "eng"))[1:])
    assert result.exit_code == 0, result.output
    _run_stage(ctx, "replay")  # the run continues without them
    assert run.stage("replay")["status"] == "done"

    # the other way out: imitation alone, in a new run (the skipped ones count as done under the replay id)
    record(tmp_path / "store", 1, first=700, environment=False)
    new = stages(path, "select", "replay", schedule="il")
    assert new.stage("replay")["status"] == "done", new.stage("replay").get("error")


# --- a tool the sandbox leaves out ----------------------------------------------------------------------------------


def test_refused_proposals_and_unreplayed_expert_calls_are_said_per_tool_with_the_replay_hint(tmp_path: Path) -> None:
    """notify_user is not in the sandbox. Was: the stage summary, the console and report.md said nothing of the
    refused proposals and of the expert's calls not replayed (only this_attempt in replay.json held the counts)."""
    path = write_config(tmp_path, schedule="il")
    record(tmp_path / "store", 3, notify=True)
    said = Said()
    run = stages(path, "select", "replay", progress=said)
    replay = run.stage("replay")
    outputs = replay["outputs"]
    refused = outputs["refused_tools"]["notify_user"]
    assert refused > 0 and outputs["final_calls_not_replayed"] == {"notify_user": 3}
    hint = refused_tool_text("notify_user", f"{HERE}:make_sandbox", {})
    assert outputs["refused_hints"] == {"notify_user": hint}
    assert (
        f"{refused} proposals of notify_user refused (not in the sandbox), 3 expert calls not replayed (notify_user)" in replay["summary"]
    )
    assert f"refused {refused} proposal(s) of notify_user: {hint}" in replay["decisions"]
    assert any(line.startswith(f"refused {refused} proposal(s) of notify_user: it has side effects") for line in said.lines)
    assert any("notify_user (3)" in line and FINAL_CALLS_NOT_REPLAYED in line for line in said.lines)

    report = write_report(run)["markdown"].read_text()
    replay_section = report[report.index("## Replay") :]
    assert "| notify_user | " + str(refused) + " | 3 |" in replay_section, replay_section
    assert f"notify_user: {hint}" in replay_section and FINAL_CALLS_NOT_REPLAYED in replay_section
    assert "notify_user" in write_report(run)["html"].read_text().split("Replay", 1)[1]

    # continued with nothing left to replay: the counts and the hint are read from the stored records
    again = stages(path, "replay", run=run)
    assert again.outputs("replay")["refused_tools"] == {"notify_user": refused}
    assert again.outputs("replay")["refused_hints"] == {"notify_user": hint}


# --- the cause of a skip: the sandbox (fail, to replay them once fixed) or the recording (a note) -------------------


def context(path: Path, **overrides: Any) -> StageContext:
    """A new run of ``path`` whose stages a test runs one at a time (a stage's JobError is raised to it)."""
    config = ImproveConfig.load(path, **overrides)
    runs = RunsDir(config.runs)
    run = runs.create("improve", config.describe(), config.config_hash())
    run.update(stage_order=list(STAGES))
    return StageContext(config, run, runs, QuietProgress())


def test_a_sandbox_that_lost_the_experts_tools_after_night_1_fails_the_stage_so_they_are_replayed_once_it_is_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Night 1 stored branches; on night 2 the module behind the same sandbox spec lacks assign_ticket and close_ticket,
    so every new trajectory is skipped. Was (f41b8bf): a note and exit 0, the skipped ones counted as done under the
    replay id and were never replayed once the sandbox was fixed. Now the stage fails, naming the tool and
    `ee replay run --again`; run as printed with the sandbox fixed, the same run continues with them replayed."""
    path = write_config(tmp_path, sandbox="make_sandbox_switchable")
    record(tmp_path / "store", 3)
    assert stages(path, "select", "replay").outputs("replay")["branches"] > 0

    monkeypatch.setenv("TICKET_SANDBOX_BROKEN", "1")
    new = record(tmp_path / "store", 3, first=500)
    ctx = context(path)
    _run_stage(ctx, "select")
    with pytest.raises(JobError) as raised:
        _run_stage(ctx, "replay")
    error = " ".join(str(raised.value).split())
    assert "3 of them because of the sandbox" in error and "the expert calls assign_ticket, which sandbox" in error, error
    assert "traces reject" not in error  # these recordings replay once the sandbox is fixed
    [again] = re.findall(r"`(ee replay run --again [^`]+)`", error)

    monkeypatch.delenv("TICKET_SANDBOX_BROKEN")
    result = CliRunner().invoke(app, shlex.split(again)[1:])
    assert result.exit_code == 0, result.output
    _run_stage(ctx, "replay")  # the run continues with that attempt
    replay = ctx.run.stage("replay")
    assert replay["status"] == "done" and replay["outputs"]["skipped"] == 0 and replay["outputs"]["branches"] > 0, replay
    assert sorted(ctx.run.outputs("replay")["not_finished"]) == [] and len(new) == 3


def test_the_reject_command_names_every_unreplayable_recording_and_never_one_without_a_tool_call(tmp_path: Path) -> None:
    """Six trajectories recorded without an environment and one that answered without a tool call (good imitation data),
    schedule iwm, no branch in the store. Was (f41b8bf): the printed `ee traces reject ... --force` named 5 ids of the 7,
    the one without a tool call among them, and "the other 2" nowhere; the --schedule il advice named `--config FILE`
    and did not say a continuation needs the flag again. Now it names all six and only them, and the run continues."""
    path = write_config(tmp_path)
    unrebuildable = record(tmp_path / "store", 6, environment=False)
    [answered] = record(tmp_path / "store", 1, first=800, answer_only=True)
    ctx = context(path)
    _run_stage(ctx, "select")
    with pytest.raises(JobError) as raised:
        _run_stage(ctx, "replay")
    error = " ".join(str(raised.value).split())
    [reject] = re.findall(r"`(ee traces reject [^`]+)`", error)
    assert all(i in reject.split() for i in unrebuildable) and answered not in reject, reject
    assert "6 cannot be replayed from their recording" in error and "1 have no tool call (nothing to replay)" in error, error
    il = shlex.join(["ee", "improve", "--config", str(path), "--schedule", "il", "--new-run"])
    assert f"`{il}`" in error and "each later ee improve that continues that run needs --schedule il too" in error, error

    result = CliRunner().invoke(app, shlex.split(reject.replace("NAME", "eng"))[1:])
    assert result.exit_code == 0, result.output
    _run_stage(ctx, "replay")  # the run continues without them, the answered one still learned from
    assert ctx.run.stage("replay")["status"] == "done"
    from ee_middleware.store.registry import open_store

    store = open_store(tmp_path / "store", create=False)
    try:
        assert answered in store.trajectories(status="approved", app=APP)["id"].to_list()
    finally:
        store.close()


def test_branches_the_datasets_leave_out_do_not_let_a_night_of_unrebuildable_trajectories_go_on(tmp_path: Path) -> None:
    """Night 1's replays all found fidelity mismatches (the sandbox's get_ticket answers unlike production), so the
    datasets leave every one of their branches out. Was (f41b8bf): night 2, only unrebuildable trajectories, went on
    with "the datasets use the N branches" although they train on none. Now it fails as when the store holds none."""
    path = write_config(tmp_path, sandbox="make_sandbox_unfaithful")
    record(tmp_path / "store", 3)
    night1 = stages(path, "select", "replay").outputs("replay")
    assert night1["branches"] > 0 and night1["fidelity_mismatches"] >= 3, night1

    record(tmp_path / "store", 2, first=900, environment=False)
    ctx = context(path)
    _run_stage(ctx, "select")
    with pytest.raises(JobError) as raised:
        _run_stage(ctx, "replay")
    error = " ".join(str(raised.value).split())
    assert "The datasets would find no replayed branch of" in error and "fidelity mismatches, not counted" in error, error


def test_the_skip_check_reads_no_whole_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was (f41b8bf): the check read the whole store (steps included) once or twice more on every night with a skip:
    for a batch in which only some were skipped, which it then noted as before without using what it read, and for a
    night of only unrebuildable ones (every trajectory, then every rollout). Now a partly skipped batch reads nothing and
    the other reads only the columns it needs. (A tripwire on the local store's whole-store read counts the reads made
    while the check runs.)"""
    from ee_middleware.jobs import stages as stage_code
    from ee_middleware.store.local import LocalExperienceStore

    checking: list[bool] = []
    whole_reads: list[str] = []
    load, check = LocalExperienceStore._load, stage_code._check_skipped

    def counted_load(self: LocalExperienceStore, *args: Any, **kwargs: Any) -> Any:
        if checking:
            whole_reads.append("read")
        return load(self, *args, **kwargs)

    def watched_check(*args: Any) -> Any:
        checking.append(True)
        try:
            return check(*args)
        finally:
            checking.clear()

    monkeypatch.setattr(LocalExperienceStore, "_load", counted_load)
    monkeypatch.setattr(stage_code, "_check_skipped", watched_check)
    path = write_config(tmp_path, heldout='heldout_app = "another-app"')  # night 1's two stay on the training side
    record(tmp_path / "store", 2)
    record(tmp_path / "store", 1, first=900, environment=False)
    mixed = stages(path, "select", "replay").stage("replay")
    assert mixed["status"] == "done" and mixed["outputs"]["skipped"] == 1 and whole_reads == [], whole_reads

    record(tmp_path / "store", 2, first=950, environment=False)
    only = stages(path, "select", "replay").stage("replay")
    assert only["status"] == "done" and any("the datasets would train on" in d for d in only["decisions"]), only["decisions"]
    assert whole_reads == [], whole_reads


# --- a night only partly skipped because of the sandbox ------------------------------------------------------------


def test_a_night_mostly_skipped_because_the_sandbox_lost_tools_fails_the_stage_so_they_are_replayed_once_it_is_fixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Night 2's batch: 3 trajectories calling the assign_ticket/close_ticket the sandbox lost, and 1 that only reads a
    ticket (replayed). Was (ee0344f): only a batch skipped in full was judged, so this one became a plain note, the stage
    was done, and once the sandbox was fixed the next night replayed 0 of the 3 (done under the replay id). Now the
    sandbox's share (3 of 4) is past SANDBOX_FAULT_SHARE: the stage fails naming the tools and `ee replay run --again`;
    run as printed with the sandbox fixed, the same run continues with them replayed."""
    path = write_config(tmp_path, sandbox="make_sandbox_switchable")
    record(tmp_path / "store", 2)
    assert stages(path, "select", "replay").outputs("replay")["branches"] > 0

    monkeypatch.setenv("TICKET_SANDBOX_BROKEN", "1")
    lost = record(tmp_path / "store", 3, first=500)
    [reader] = record(tmp_path / "store", 1, first=900, reads_only=True)
    ctx = context(path)
    _run_stage(ctx, "select")
    with pytest.raises(JobError) as raised:
        _run_stage(ctx, "replay")
    error = " ".join(str(raised.value).split())
    assert "skipped 3 of the 4 selected trajectories of ticket-bot because of the sandbox ([replay] sandbox = " in error, error
    assert "; it lacks assign_ticket), more than 50% of the 4 with a tool call" in error, error
    assert "traces reject" not in error
    [again] = re.findall(r"`(ee replay run --again [^`]+)`", error)

    monkeypatch.delenv("TICKET_SANDBOX_BROKEN")
    result = CliRunner().invoke(app, shlex.split(again)[1:])
    assert result.exit_code == 0, result.output
    _run_stage(ctx, "replay")  # the run continues with that attempt
    replay = ctx.run.stage("replay")
    assert replay["status"] == "done" and replay["outputs"]["skipped"] == 0, replay
    _assert_replayed(tmp_path / "store", [*lost, reader], replay["outputs"]["replay_id"])


def _assert_replayed(store_path: Path, ids: list[str], replay_id: str) -> None:
    """Each of ``ids`` has a done replay record and rollouts under ``replay_id``."""
    import polars as pl

    from ee_middleware.store.registry import open_store

    store = open_store(store_path, create=False)
    try:
        records = store.replays(replay_id=replay_id).filter(pl.col("trajectory_id").is_in(ids))
        assert sorted(records.filter(pl.col("status") == "done")["trajectory_id"].to_list()) == sorted(ids), records
        assert set(store.rollouts(ids, replay_id=replay_id)["trajectory_id"].to_list()) == set(ids)
    finally:
        store.close()


def test_a_few_skipped_because_the_sandbox_lacks_a_tool_warn_naming_it_and_the_again_command_that_replays_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 of 3 selected trajectories calls the assign_ticket the sandbox lacks (a tool added to the agent, not to the
    sandbox); 2 only read tickets. Was (ee0344f): a plain decision line without `ee replay run --again`, nothing on
    stderr or in the summary, and the skipped one never replayed. Now the run goes on (one trajectory does not stop the
    loop) with a warning on stderr, in the summary, decisions, outputs and report naming the tool and the command; run as
    printed once the sandbox is fixed, the next run trains on the attempt that replayed it."""
    path = write_config(tmp_path, sandbox="make_sandbox_switchable")
    monkeypatch.setenv("TICKET_SANDBOX_BROKEN", "1")
    [lost] = record(tmp_path / "store", 1, first=500)
    readers = record(tmp_path / "store", 2, first=900, reads_only=True)
    said = Said()
    with pytest.warns(UserWarning, match="skipped because of the sandbox") as caught:
        run = stages(path, "select", "replay", progress=said)
    replay = run.stage("replay")
    assert replay["status"] == "done", replay.get("error")
    again = replay["outputs"]["sandbox_skips"]["again"]
    assert again.startswith("ee replay run --again --config ") and shlex.split(again)[-2:] == ["--app", APP]
    fix = replay["outputs"]["sandbox_skips"]["fix"]
    assert replay["outputs"]["sandbox_skips"] == {
        "count": 1,
        "tools": ["assign_ticket"],
        "again": again,
        "trajectories": [lost],
        "command": again,  # the sandbox's own code is fixed: the same replay id's next attempt replays them
        "fix": fix,
    }
    assert "1 skipped because of the sandbox (it lacks assign_ticket), not replayed by later runs" in replay["summary"]
    assert f"`{again}`" in replay["summary"], replay["summary"]
    [warning] = [d for d in replay["decisions"] if "because of the sandbox" in d]
    assert "1 of the 3 selected trajectories of ticket-bot were skipped because of the sandbox (" in warning
    assert "; it lacks assign_ticket)" in warning
    assert f"`{again}`" in warning and fix in warning and "traces reject" not in warning, warning
    assert f"`{again}`" in fix and "--new-run" not in replay["summary"], (fix, replay["summary"])
    assert any(f"`{again}`" in str(w.message) for w in caught)
    assert any(line.startswith("warning: 1 of the 3") for line in said.lines), said.lines
    assert f"`{again}`" in write_report(run)["markdown"].read_text()

    # the sandbox fixed, the printed command replays the configuration's next attempt; the next run trains on it
    monkeypatch.delenv("TICKET_SANDBOX_BROKEN")
    result = CliRunner().invoke(app, shlex.split(again)[1:])
    assert result.exit_code == 0, result.output
    record(tmp_path / "store", 1, first=950, reads_only=True)
    nxt = stages(path, "select", "replay").stage("replay")
    assert nxt["status"] == "done" and nxt["outputs"]["replay_id"] != replay["outputs"]["replay_id"], nxt
    assert "sandbox_skips" not in nxt["outputs"] and nxt["outputs"]["skipped"] == 0, nxt["outputs"]
    _assert_replayed(tmp_path / "store", [lost, *readers], nxt["outputs"]["replay_id"])


_STOP_AT = [0]
"""Which build of :func:`make_sandbox_stopped_on_the_way` the stop comes in (counted down)."""


def make_sandbox_stopped_on_the_way() -> Any:
    """A sandbox factory whose library turns a SIGTERM that comes while it loads into an error of its own, as
    transformers' lazy imports do ("Could not import module 'LlamaConfig'")."""
    import signal
    import time

    _STOP_AT[0] -= 1
    if _STOP_AT[0]:  # (the job's checks before it started build one too: the stop comes later, in a stage)
        return make_sandbox()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # a supervisor stops the job now
        time.sleep(0.5)
    except KeyboardInterrupt as exc:
        raise ModuleNotFoundError("Could not import module 'TicketWorld'") from exc
    return make_sandbox()


def test_a_sigterm_a_library_turned_into_its_own_error_stops_the_run_not_fails_it(tmp_path: Path, tiny_base: Path) -> None:
    """Before: the run and its stage were recorded as failed with the library's error (a base model said to be broken), and
    the command said error: ... and exited 1; a supervisor's stop read as a failure to alert on. Now: stopped, exit 130."""
    import json
    import signal

    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.jobs.runs import RunsDir

    record(tmp_path / "store", 2)
    path = write_config(tmp_path, sandbox="make_sandbox_stopped_on_the_way", base=tiny_base)
    # as in a process of its own: capture's SIGTERM handler, which recording above installed in this one, left aside
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        for stop_at in (1, 2):  # in the checks before the run started; in the replay stage
            _STOP_AT[0] = stop_at
            result = CliRunner().invoke(app, ["improve", "--config", str(path)])
            assert result.exit_code == 130, result.output
            assert "interrupted: stopped by SIGTERM" in result.stderr and "error:" not in result.stderr, result.stderr
    finally:
        signal.signal(signal.SIGTERM, before)
    [run] = RunsDir(tmp_path / "runs").list()
    assert run.status == "stopped" and run.data["error"].startswith("KeyboardInterrupt: SIGTERM"), run.data["error"]
    stopped = [m for m in run.stages() if m["status"] != "done"]
    assert [m["status"] for m in stopped] == ["stopped"], json.dumps(stopped)[:500]
