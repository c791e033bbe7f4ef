"""The promote stage's check that its candidate was not taken off as live since the run registered it reads the adapter
registry's history: with a plug-in registry, a history that cannot be read, or whose events give their time (``at``)
as a datetime or epoch seconds rather than the local registry's ISO strings.

A real installed registry plug-in (a module plus a dist-info declaring ``ee_middleware.adapter_registries``, as
tests/jobs/test_preflight.py installs one) over the local registry's folder, a real run folder and the real stage
runner; the earlier stages' manifests are written as they write them (see tests/jobs/test_promote_live_changed.py).
The promote by hand that the refusals name runs as written, through the real ``ee`` CLI in a shell."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ee_middleware.adapters.promote import rollback
from ee_middleware.adapters.registry import open_registry
from ee_middleware.jobs.config import ImproveConfig, Serving
from ee_middleware.jobs.deploy import promote_command
from ee_middleware.jobs.errors import JobError, LiveAdapterChangedError
from ee_middleware.jobs.improve import _run_stage
from ee_middleware.jobs.runs import Run, now
from tests.adapters.helpers import StandInVLLM
from tests.jobs.test_promote_live_changed import APP, _context, _setup

PLUGIN = '''
import os
from datetime import UTC, datetime

from ee_middleware.adapters.registry import LocalAdapterRegistry


class NoHistoryRegistry(LocalAdapterRegistry):
    def history(self, *, app=None, adapter=None):
        raise NotImplementedError("the team registry keeps no history")


class FlakyRegistry(LocalAdapterRegistry):
    """A remote registry whose history endpoint is down while TEAM_REGISTRY_DOWN is set."""

    def history(self, *, app=None, adapter=None):
        if os.environ.get("TEAM_REGISTRY_DOWN"):
            raise ConnectionError("registry.team.example: 503 Service Unavailable")
        return super().history(app=app, adapter=adapter)


def _at(text, form):
    moment = datetime.fromisoformat(text)
    return {
        "aware": moment,
        "naive": moment.astimezone(UTC).replace(tzinfo=None),
        "naive-local": moment.astimezone().replace(tzinfo=None),  # datetime.now(): this machine's wall clock
        "iso-naive-local": moment.astimezone().replace(tzinfo=None).isoformat(),
        "epoch": moment.timestamp(),
        "epoch-int": int(moment.timestamp()),
        "unreadable": "last Tuesday",
        "missing": None,
    }[form]


class TimedRegistry(LocalAdapterRegistry):
    """A registry whose history gives each event's time in the form TEAM_AT_FORM names."""

    def history(self, *, app=None, adapter=None):
        form = os.environ["TEAM_AT_FORM"]
        return [{**event, "at": _at(event["at"], form)} for event in super().history(app=app, adapter=adapter)]


def open_no_history(location, *, create=True):
    return NoHistoryRegistry(location, create=create)


def open_flaky(location, *, create=True):
    return FlakyRegistry(location, create=create)


def open_timed(location, *, create=True):
    return TimedRegistry(location, create=create)
'''

SERVING_PLUGIN = '''
import os
from pathlib import Path

from ee_middleware.adapters.serving.backend import VLLMBackend


class Backend(VLLMBackend):
    """The team's serving backend: vLLM's runtime LoRA API, each load written to TEAM_SERVING_LOG."""

    kind = "team-gpu"

    def load(self, name, path):
        with Path(os.environ["TEAM_SERVING_LOG"]).open("a") as log:
            log.write(f"{self.url} {name}\\n")
        return super().load(name, path)
'''


@pytest.fixture(autouse=True)
def registry_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = tmp_path / "site"
    (site / "team_history_registries-0.1.dist-info").mkdir(parents=True)
    (site / "team_history_registries.py").write_text(PLUGIN)
    (site / "team_serving.py").write_text(SERVING_PLUGIN)
    (site / "team_history_registries-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: team-history-registries\nVersion: 0.1\n"
    )
    (site / "team_history_registries-0.1.dist-info" / "entry_points.txt").write_text(
        "[ee_middleware.adapter_registries]\nteam-nohistory = team_history_registries:open_no_history\n"
        "team-flaky = team_history_registries:open_flaky\nteam-timed = team_history_registries:open_timed\n"
        "[ee_middleware.serving_backends]\nteam-gpu = team_serving:Backend\n"
    )
    monkeypatch.syspath_prepend(str(site))
    for module in ("team_history_registries", "team_serving"):
        sys.modules.pop(module, None)
    yield
    for module in ("team_history_registries", "team_serving"):
        sys.modules.pop(module, None)


def _plugin_setup(tmp_path: Path, plugin: str) -> tuple[ImproveConfig, Run, dict[str, str]]:
    """:func:`_setup`'s registry, run and adapters, the run's config naming the registry through ``plugin``."""
    config, run, names = _setup(tmp_path)
    return config.model_copy(update={"registry": f"{plugin}:{config.registry}"}), run, names


def _promote(config: ImproveConfig, run: Run) -> list[str]:
    """Run the promote stage; the texts of the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run_stage(_context(config, run), "promote")
    return [str(w.message) for w in caught]


def _registered_later(run: Run, names: dict[str, str]) -> None:
    """The run's register stage starts now, after what happened in the registry before (the run's times are whole
    seconds): the registry handed back the record of weights it held already."""
    time.sleep(1.05)
    run.write_stage("register", {"stage": "register", "status": "done", "started_at": now(), "outputs": {"candidate": names["cand"]}})


def test_a_registry_that_keeps_no_history_promotes_with_a_warning_saying_what_was_not_checked(tmp_path: Path) -> None:
    config, run, names = _plugin_setup(tmp_path, "team-nohistory")

    said = _promote(config, run)

    registry = open_registry(config.registry)
    assert registry.resolve(APP) == names["cand"]
    [warning] = [text for text in said if "history" in text]
    assert config.registry in warning and "team_history_registries.NoHistoryRegistry" in warning
    assert "NotImplementedError: the team registry keeps no history" in warning
    assert f"whether {names['cand']} went live since run {run.id} registered it and was taken off again" in warning
    assert "was not checked" in warning
    assert warning in run.stage("promote")["decisions"]  # type: ignore[index]


def test_a_history_that_fails_refuses_the_promote_and_the_next_call_promotes_once_it_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, run, names = _plugin_setup(tmp_path, "team-flaky")
    monkeypatch.setenv("TEAM_REGISTRY_DOWN", "1")

    with pytest.raises(JobError) as caught:
        _run_stage(_context(config, run), "promote")

    message = str(caught.value)
    assert not isinstance(caught.value, LiveAdapterChangedError)
    assert config.registry in message and "team_history_registries.FlakyRegistry" in message
    assert "ConnectionError: registry.team.example: 503 Service Unavailable" in message
    assert f"{names['cand']} is not promoted" in message and "Run `ee improve` with the same config again" in message
    assert "NotImplementedError" in message and f"promote it by hand (`{promote_command(config, names['cand'])}`)" in message
    registry = open_registry(config.registry)
    assert registry.resolve(APP) == names["v1"]  # nothing was switched
    assert run.stage("promote")["status"] == "failed"  # type: ignore[index]

    monkeypatch.delenv("TEAM_REGISTRY_DOWN")
    assert not [text for text in _promote(config, run) if "history" in text]

    assert registry.resolve(APP) == names["cand"]
    assert run.stage("promote")["attempt"] == 2  # type: ignore[index]


@pytest.mark.parametrize("form", ["aware", "epoch", "epoch-int"])
def test_event_times_as_datetimes_or_epoch_seconds_keep_an_old_rollback_of_the_same_weights_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """As tests/jobs/test_promote_rolled_back.py's test of the same weights rolled back before this run registered them,
    through a plug-in whose events give ``at`` as an aware datetime or epoch seconds. (A time without a zone:
    test_a_rollback_whose_time_names_no_zone_is_kept_out_only_when_older_in_every_zone.)"""
    monkeypatch.setenv("TEAM_AT_FORM", form)
    config, run, names = _plugin_setup(tmp_path, "team-timed")
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="an earlier run")
    rollback(registry, APP, [], by="alice")
    _registered_later(run, names)

    said = _promote(config, run)

    _assert_declined_not_refused(config, run, names)
    assert not [text for text in said if "history" in text or "ISO 8601" in text], said


def _assert_declined_not_refused(config: ImproveConfig, run: Run, names: dict[str, str]) -> None:
    """The rollback was read as older than the run's register stage (no refusal naming it as this run's candidate taken
    off); being alice's rollback of the same weights, the promote stage finishes without promoting them (see
    tests/jobs/test_promote_rolled_back.py)."""
    assert open_registry(config.registry).resolve(APP) == names["v1"]
    assert run.stage("promote")["status"] == "done"  # type: ignore[index]
    outputs = run.outputs("promote")
    assert outputs["promoted"] is False and outputs["turned_down"]["by"] == "alice", outputs


@pytest.mark.parametrize("form", ["aware", "naive", "epoch"])
def test_a_rollback_since_the_run_registered_with_a_datetime_or_epoch_time_is_refused_naming_when(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    monkeypatch.setenv("TEAM_AT_FORM", form)
    config, run, names = _plugin_setup(tmp_path, "team-timed")
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="ee improve (stopped after the switch, before the manifest)")
    rollback(registry, APP, [], by="alice")
    stored = open_registry(config.registry.partition(":")[2]).history(adapter=names["cand"])[-1]["at"]  # the folder's own ISO time

    with pytest.raises(LiveAdapterChangedError, match=f"rolled back to {names['v1']} by alice at ") as caught:
        _run_stage(_context(config, run), "promote")

    when = caught.value.details["taken_off_at"]
    assert isinstance(when, str) and f"by alice at {when} " in str(caught.value)
    # the moment the registry stored (a naive one, the plug-in's UTC, shown without a zone), to the microsecond a float
    # of seconds keeps
    moment = datetime.fromisoformat(when)
    assert (moment.tzinfo is None) is (form == "naive")
    assert abs((moment.replace(tzinfo=moment.tzinfo or UTC) - datetime.fromisoformat(stored)).total_seconds()) < 1e-3
    assert ("a time without a zone" in str(caught.value)) is (form == "naive")
    assert registry.resolve(APP) == names["v1"]
    assert run.stage("promote")["live_changed"]["taken_off_at"] == when  # type: ignore[index]


@pytest.mark.parametrize("form", ["unreadable", "missing"])
def test_an_event_time_that_cannot_be_read_is_said_and_the_rollback_still_counts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """Whether the rollback is older than the run cannot be told: it is said, and the promote is refused (the operator's
    rollback may be this run's candidate's), the refusal saying that its time could not be read."""
    monkeypatch.setenv("TEAM_AT_FORM", form)
    config, run, names = _plugin_setup(tmp_path, "team-timed")
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="an earlier run")
    rollback(registry, APP, [], by="alice")
    _registered_later(run, names)

    with warnings.catch_warnings(record=True) as caught, pytest.raises(LiveAdapterChangedError) as refused:
        warnings.simplefilter("always")
        _run_stage(_context(config, run), "promote")

    [warning] = [str(w.message) for w in caught if "ISO 8601" in str(w.message)]
    assert config.registry in warning and "team_history_registries.TimedRegistry" in warning
    assert ("'last Tuesday'" if form == "unreadable" else "no time (`at`)") in warning
    assert "rollback event" in warning and "by alice" in warning and "taken as having come after it" in warning
    assert "no readable time" in str(refused.value)
    assert registry.resolve(APP) == names["v1"]


# --- a time without a zone (a plug-in's datetime.now()) ----------------------------------------------------------------


@pytest.fixture
def west_of_utc() -> Iterator[None]:
    """This machine's local time is America/Los_Angeles (UTC-8 in December, UTC-7 in summer)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/Los_Angeles"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def _age_history(config: ImproveConfig, days: int) -> None:
    """Move every event of the registry's folder ``days`` back: what happened there happened that long ago."""
    path = Path(config.registry.partition(":")[2]) / "history.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert events, "the local registry keeps its history in history.jsonl"
    path.write_text(
        "".join(
            json.dumps({**e, "at": (datetime.fromisoformat(e["at"]) - timedelta(days=days)).isoformat(timespec="milliseconds")}) + "\n"
            for e in events
        )
    )


@pytest.mark.usefixtures("west_of_utc")
@pytest.mark.parametrize("form", ["naive-local", "iso-naive-local", "naive"])
def test_a_rollback_since_the_run_registered_whose_time_names_no_zone_is_refused_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """alice rolls the candidate back after the run registered it; the plug-in gives the time as datetime.now() (local
    wall-clock time, 8 hours behind UTC here), as its ISO text, or as UTC without a zone. Before, a time without a zone
    was read as UTC: the local ones read 8 hours older than the register stage, the rollback was skipped and the promote
    put the candidate live again without a word."""
    monkeypatch.setenv("TEAM_AT_FORM", form)
    config, run, names = _plugin_setup(tmp_path, "team-timed")
    run.write_stage("register", {"stage": "register", "status": "done", "started_at": now(), "outputs": {"candidate": names["cand"]}})
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="ee improve (stopped after the switch, before the manifest)")
    rollback(registry, APP, [], by="alice")
    [given] = [e["at"] for e in registry.history(adapter=names["cand"]) if e["action"] == "rollback"]

    with warnings.catch_warnings(record=True) as caught, pytest.raises(LiveAdapterChangedError) as refused:
        warnings.simplefilter("always")
        _run_stage(_context(config, run), "promote")

    [warning] = [str(w.message) for w in caught if "names no zone" in str(w.message)]
    assert config.registry in warning and "team_history_registries.TimedRegistry" in warning and repr(given) in warning
    assert "rollback event" in warning and "by alice" in warning and "taken as having come after it" in warning
    assert "datetime.now(UTC)" in warning  # how the plug-in gives the zone
    assert f"by alice at {given if isinstance(given, str) else given.isoformat()} " in str(refused.value)
    assert "a time without a zone" in str(refused.value)
    assert registry.resolve(APP) == names["v1"]  # alice's rollback stands


@pytest.mark.usefixtures("west_of_utc")
@pytest.mark.parametrize("form", ["naive-local", "iso-naive-local", "naive"])
def test_a_rollback_whose_time_names_no_zone_is_kept_out_only_when_older_in_every_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    """The same weights rolled back two days before the run registered them: older than the register stage in every
    zone, so no refusal (a person's rollback of those weights: not promoted, the stage done) and no warning."""
    monkeypatch.setenv("TEAM_AT_FORM", form)
    config, run, names = _plugin_setup(tmp_path, "team-timed")
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="an earlier run")
    rollback(registry, APP, [], by="alice")
    _age_history(config, days=2)
    _registered_later(run, names)

    said = _promote(config, run)

    _assert_declined_not_refused(config, run, names)
    assert not [text for text in said if "history" in text or "zone" in text], said


# --- the promote by hand that the refusals name ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _ee_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's PATH has this installation's ``ee`` (an activated virtualenv): the commands name plain ``ee``
    (tests/jobs/test_promote_command_program.py covers a PATH without it)."""
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def _named_promote(message: str) -> str:
    [command] = [c for c in re.findall(r"`([^`]+)`", message) if c.startswith("ee adapters promote ")]
    return command


def _run_as_written(command: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``command`` run in a shell as a user would paste it, with this environment's ``ee`` on PATH and the registry
    plug-in installed."""
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(root)]),
    }
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.parametrize("refusal", ["live-changed", "taken-off", "history-down"])
def test_the_promote_by_hand_each_refusal_names_works_as_written_without_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """No [improve.serving] servers (ee improve then promotes in the registry only), a registry plug-in: the refusal names
    `ee adapters promote NAME -r PLUGIN:LOCATION --registry-only`. Before, a python -c line (`ee adapters promote` took
    no promote in the registry alone), and before that `ee adapters promote NAME -r REGISTRY`, which failed: "No model
    server given"."""
    config, run, names = _plugin_setup(tmp_path, "team-flaky")
    registry = open_registry(config.registry)
    to_promote = names["cand"]
    if refusal == "live-changed":  # another adapter went live since the evaluation: the refusal offers the gated one back
        registry.switch_live(names["v2"], by="bob")
        to_promote = names["v1"]
    elif refusal == "taken-off":
        registry.switch_live(names["cand"], by="ee improve (stopped after the switch, before the manifest)")
        rollback(registry, APP, [], by="alice")
    else:
        monkeypatch.setenv("TEAM_REGISTRY_DOWN", "1")
    with pytest.raises(JobError) as caught:
        _run_stage(_context(config, run), "promote")
    command = _named_promote(str(caught.value))
    assert command == promote_command(config, to_promote)
    assert shlex.split(command) == ["ee", "adapters", "promote", to_promote, "-r", config.registry, "--registry-only"]

    done = _run_as_written(command, tmp_path)

    assert done.returncode == 0, done.stderr
    assert registry.resolve(APP) == to_promote
    _promote(config, run)  # the next ee improve continues the run and finishes it
    assert run.stage("promote")["status"] == "done"  # type: ignore[index]
    assert registry.resolve(APP) == names["cand"]


def test_the_promote_by_hand_names_the_servers_backend_and_rank_ee_improve_used(tmp_path: Path) -> None:
    """With servers: the same --server, --backend (ee improve's default, local, is not the command's, vllm) and
    --max-lora-rank. The server here is not running: the command gets as far as asking it."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{free.getsockname()[1]}/v1"
    config, run, names = _setup(tmp_path)
    config = config.model_copy(update={"serving": Serving(servers=[url], max_lora_rank=32)})
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="ee improve (stopped after the switch, before the manifest)")
    rollback(registry, APP, [], by="alice")
    with pytest.raises(LiveAdapterChangedError) as caught:
        _run_stage(_context(config, run), "promote")
    command = _named_promote(str(caught.value))
    assert shlex.split(command) == [
        "ee", "adapters", "promote", names["cand"], "-r", config.registry, "--server", url, "--backend", "local", "--max-lora-rank", "32"
    ]  # fmt: skip

    done = _run_as_written(command, tmp_path)

    assert done.returncode == 1, done.stderr  # not a usage error (2)
    assert f"server at {url}" in done.stderr and "No model server given" not in done.stderr, done.stderr
    assert registry.resolve(APP) == names["v1"]


@pytest.fixture
def stand_in_vllm() -> Iterator[StandInVLLM]:
    server = StandInVLLM()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("backend", ["team_serving:Backend", "team-gpu"])
def test_the_promote_by_hand_with_a_serving_backend_plug_in_works_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stand_in_vllm: StandInVLLM, backend: str
) -> None:
    """ee improve serving through a serving-backend plug-in (a module:factory, or an installed entry point's name) and a
    registry plug-in: the refusal names `ee adapters promote` with both, which loads the candidate on the server through
    the plug-in and switches the alias. Before, a python -c line: `ee adapters promote --backend` took vllm or local
    only. The plug-in is vLLM's backend under the team's name; the server, the stand-in of vLLM's runtime LoRA API
    (tests/adapters/helpers.py) on a real HTTP server."""
    url = f"http://127.0.0.1:{stand_in_vllm.server_address[1]}/v1"
    monkeypatch.setenv("TEAM_SERVING_LOG", str(tmp_path / "team-serving.log"))
    config, run, names = _plugin_setup(tmp_path, "team-flaky")
    config = config.model_copy(update={"serving": Serving(backend=backend, servers=[url], max_lora_rank=8)})
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="ee improve (stopped after the switch, before the manifest)")
    rollback(registry, APP, [], by="alice")
    with pytest.raises(LiveAdapterChangedError) as caught:
        _run_stage(_context(config, run), "promote")
    command = _named_promote(str(caught.value))
    assert shlex.split(command) == [
        "ee", "adapters", "promote", names["cand"], "-r", config.registry, "--server", url, "--backend", backend, "--max-lora-rank", "8"
    ]  # fmt: skip

    done = _run_as_written(command, tmp_path)

    assert done.returncode == 0, done.stderr
    assert registry.resolve(APP) == names["cand"]
    assert names["cand"] in stand_in_vllm.loaded
    assert (tmp_path / "team-serving.log").read_text() == f"{url} {names['cand']}\n"  # loaded through the plug-in


def test_the_jobs_replicas_take_the_serving_timeout_and_their_advice_names_it() -> None:
    """Review R14 M3: ee improve's promote built its replicas without [improve.serving] timeout_s (60 s, whatever it said)
    and a time-out's advice named `ee adapters promote --timeout`, which does nothing for the job."""
    from ee_middleware.jobs.config import Serving
    from ee_middleware.jobs.deploy import _serving_replicas

    for backend in ("vllm", "local"):
        [replica] = _serving_replicas(Serving(backend=backend, servers=["http://127.0.0.1:9/v1"], timeout_s=900))
        assert replica.timeout_s == 900 and replica.timeout_knob == "[improve.serving] timeout_s"
