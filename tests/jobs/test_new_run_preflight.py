"""``ee improve --new-run`` that its start-up checks refuse changes nothing: the unfinished run it would abandon stays
unfinished (to be continued without ``--new-run``) and its candidate stays a candidate, loaded where it was.

The evaluation sandbox's look (a ``traces`` suite needs ``state_digest()``) and the servers' (a wrong port) ran after
the unfinished run was abandoned, which retires its candidate in the registry and unloads it from the servers: the
refused command had already written to both, and the run the user meant to keep was gone.

The real ``run_improve``, TOML file, store, registry and run folder; the sandbox module is the user's own (see
tests/jobs/test_preflight_sandbox.py); the replay policy's server is a port nothing listens on."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.adapters.registry import open_registry
from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.errors import JobError
from ee_middleware.jobs.improve import run_improve
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.test_improve import _down_url
from tests.jobs.test_preflight_sandbox import _config, sandboxes  # noqa: F401 - the fixture, used by name
from tests.jobs.test_preflight_sandbox_continued import _run_done_up_to


def _left_alone(tmp_path: Path, run_id: str, candidate: str) -> None:
    runs = RunsDir(tmp_path / "runs")
    assert runs.get(run_id).status == "failed"  # still unfinished: continued by the next ee improve
    assert "abandoned" not in runs.get(run_id).data.get("outcome", {})
    assert open_registry(str(tmp_path / "r")).get(candidate).status == "candidate"
    assert [run.id for run in runs.list()] == [run_id]  # and no new run


def test_a_new_run_refused_by_the_evaluation_sandbox_check_leaves_the_unfinished_run_and_its_candidate(
    tmp_path: Path,
    sandboxes: str,  # noqa: F811
) -> None:
    path = _config(tmp_path, f"{sandboxes}:make_sandbox")  # no state_digest(): a config error
    run, candidate = _run_done_up_to(path, tmp_path, "register")

    with pytest.raises(ConfigError, match=r"FilesSandbox\) has no state_digest\(\) method"):
        run_improve(ImproveConfig.load(path), report=False, new_run=True)

    _left_alone(tmp_path, run.id, candidate)


def test_a_new_run_refused_because_its_sandbox_cannot_be_built_leaves_the_unfinished_run(tmp_path: Path, sandboxes: str) -> None:  # noqa: F811
    """The old run was left with its promote stage (no sandbox needed to continue it); --new-run needs one now."""
    path = _config(tmp_path, f"{sandboxes}:make_raising")  # the sandbox's service is down
    run, candidate = _run_done_up_to(path, tmp_path, "gate")

    with pytest.raises(ConfigError, match=r"RuntimeError: the files service is down"):
        run_improve(ImproveConfig.load(path), report=False, new_run=True)

    _left_alone(tmp_path, run.id, candidate)


def test_a_new_run_refused_because_its_replay_server_does_not_answer_leaves_the_unfinished_run(
    tmp_path: Path,
    sandboxes: str,  # noqa: F811
) -> None:
    """The old run is past its replay (its server not needed to continue it); a new run replays."""
    down = _down_url()
    path = _config(tmp_path, f"{sandboxes}:make_digest_sandbox")
    path.write_text(path.read_text().replace("[replay]\n", f'[replay]\npolicy = "openai:{down}#base"\n', 1))
    run, candidate = _run_done_up_to(path, tmp_path, "register")

    with pytest.raises(JobError, match=rf"before a run starts: \[replay\] policy = 'openai:{down}#base' did not answer"):
        run_improve(ImproveConfig.load(path), report=False, new_run=True)

    _left_alone(tmp_path, run.id, candidate)


def test_a_new_run_that_passes_its_checks_abandons_the_unfinished_run_and_retires_its_candidate(
    tmp_path: Path,
    sandboxes: str,  # noqa: F811
) -> None:
    """Control: the checks moved, the abandoning did not go (the new run finds no approved trajectory in this store)."""
    path = _config(tmp_path, f"{sandboxes}:make_digest_sandbox")
    run, candidate = _run_done_up_to(path, tmp_path, "register")

    new = run_improve(ImproveConfig.load(path), report=False, new_run=True)

    assert new.id != run.id and new.status == "nothing-new", new.data.get("error")
    assert RunsDir(tmp_path / "runs").get(run.id).status == "abandoned"
    assert open_registry(str(tmp_path / "r")).get(candidate).status == "retired"


def test_the_report_of_a_run_a_new_run_abandons_says_it_was_abandoned(
    tmp_path: Path,
    sandboxes: str,  # noqa: F811
) -> None:
    """Its report still said it stopped and that `ee improve` with the same config continues it, while run.json and
    `ee runs list` said abandoned and its candidate was retired (an improve sweep)."""
    from ee_middleware.jobs.report import write_report

    path = _config(tmp_path, f"{sandboxes}:make_digest_sandbox")
    run, candidate = _run_done_up_to(path, tmp_path, "register")
    outputs = {"candidate": candidate, "content_hash": "0" * 64}  # (what the report shows of a registered candidate)
    run.write_stage("register", {"stage": "register", "status": "done", "attempt": 1, "outputs": outputs})
    write_report(run)
    assert "continues it" in (run.folder / "report.md").read_text()

    run_improve(ImproveConfig.load(path), new_run=True)

    text = " ".join((run.folder / "report.md").read_text().split())
    assert f"ee improve run {run.id}: abandoned" in text, text
    assert "abandoned (--new-run): no call continues it, and its candidate was retired" in text and "continues it." not in text, text
