"""``ee improve``'s look at the evaluation's sandbox (a ``traces`` suite needs its ``state_digest()``) is made only when
the run still has an evaluate stage to run: it may build the sandbox, and a sandbox that cannot be built right now (its
service is down) stopped a run left with only its promote stage, which needs no sandbox any more.

The real ``run_improve``, TOML file, store, registry and run folder; the finished stages' manifests are written as they
write them (their work is not what these tests are about); the sandbox module is the user's own (see
tests/jobs/test_preflight_sandbox.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.adapters.registry import open_registry
from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.improve import CONFIG_COPY, JOB, STAGES, copy_config, run_improve
from ee_middleware.jobs.runs import Run, RunsDir
from tests.jobs.test_preflight_sandbox import _config, sandboxes  # noqa: F401 - the fixture, used by name
from tests.jobs.test_promote_live_changed import _adapter

APP = "shop"  # what tests.jobs.test_config._improve_file writes


def _run_done_up_to(path: Path, tmp_path: Path, last_done: str) -> tuple[Run, str]:
    """A run of the file at ``path`` as ``run_improve`` starts one, every stage up to ``last_done`` finished (the gate
    passed its candidate against the base), and the registry its register stage filled; (run, candidate)."""
    config = ImproveConfig.load(path)
    registry = open_registry(config.registry, create=True)
    candidate = registry.register(_adapter(tmp_path / "cand", 3), APP, by="test").name
    run = RunsDir(config.runs).create(JOB, config.describe(), config.config_hash())
    copy_config(path, run.folder / CONFIG_COPY)
    run.update(stage_order=list(STAGES), force=False)
    outputs = {
        "register": {"candidate": candidate},
        "evaluate": {"baseline": "base", "candidate": candidate, "runs": {"baseline": {"suites": []}, "candidate": {"suites": []}}},
        "gate": {"passed": True, "reasons": [], "likelihood": None},
    }
    for name in STAGES[: STAGES.index(last_done) + 1]:
        run.write_stage(name, {"stage": name, "status": "done", "attempt": 1, "outputs": outputs.get(name, {})})
    run.write_stage("promote" if last_done == "gate" else "evaluate", {"stage": "x", "status": "failed", "attempt": 1})
    run.update(status="failed", error="stopped")
    return run, candidate


def test_a_run_left_with_its_promote_stage_goes_on_while_the_evaluation_sandbox_cannot_be_built(tmp_path: Path, sandboxes: str) -> None:  # noqa: F811
    path = _config(tmp_path, f"{sandboxes}:make_raising")  # a traces suite; the sandbox's service is down
    run, candidate = _run_done_up_to(path, tmp_path, "gate")

    continued = run_improve(ImproveConfig.load(path), report=False)

    assert continued.id == run.id and continued.status == "succeeded", continued.data.get("error")
    assert open_registry(str(tmp_path / "r")).resolve(APP) == candidate
    assert len(RunsDir(tmp_path / "runs").list()) == 1


def test_a_run_whose_evaluate_stage_is_still_to_run_is_stopped_before_it_goes_on(tmp_path: Path, sandboxes: str) -> None:  # noqa: F811
    path = _config(tmp_path, f"{sandboxes}:make_raising")
    run, _ = _run_done_up_to(path, tmp_path, "register")

    with pytest.raises(ConfigError, match=r"building one to look for its state_digest\(\).*RuntimeError: the files service is down"):
        run_improve(ImproveConfig.load(path), report=False)

    assert RunsDir(tmp_path / "runs").get(run.id).data["attempts"] == run.data.get("attempts", 1)  # not continued


def test_a_new_run_is_stopped_before_it_starts(tmp_path: Path, sandboxes: str) -> None:  # noqa: F811
    path = _config(tmp_path, f"{sandboxes}:make_sandbox")

    with pytest.raises(ConfigError, match=r"FilesSandbox\) has no state_digest\(\) method"):
        run_improve(ImproveConfig.load(path), report=False)

    assert RunsDir(tmp_path / "runs").list() == []


def test_a_continued_runs_stages_read_the_users_own_file_not_the_run_folders_copy(
    tmp_path: Path,
    sandboxes: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The copy in the run folder is data whoever can write the runs folder can change: continuing a run, the stages
    read their tables (sandbox, policy, teacher factories; an ``mcp:`` server's command) from it as it was. The user's
    file, whose settings the configuration hash found to be the run's, is copied there again when the run goes on
    (review of the redact_fn trust gate, F1); and the stages keep reading the copy, so an edit of the user's file
    while the run goes on reaches none of them."""
    from ee_middleware.jobs import improve

    path = _config(tmp_path, f"{sandboxes}:make_raising")
    run, _ = _run_done_up_to(path, tmp_path, "gate")
    copy = run.folder / CONFIG_COPY
    copy.write_text(copy.read_text().replace(f"{sandboxes}:make_raising", "mcp:/tmp/planted.json"))
    seen: list[tuple[Path | None, str]] = []
    original = improve._run_stages

    def recording(ctx: object, **kwargs: object) -> None:
        config = ctx.config  # type: ignore[attr-defined]
        path.write_text(path.read_text().replace(f"{sandboxes}:make_raising", f"{sandboxes}:edited_mid_run"))
        seen.append((config.config_path, config.tables()["replay"]["sandbox"]))
        original(ctx, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(improve, "_run_stages", recording)
    continued = run_improve(ImproveConfig.load(path), report=False)
    assert continued.id == run.id
    assert seen == [(copy, f"{sandboxes}:make_raising")]
    assert "mcp:" not in copy.read_text()
