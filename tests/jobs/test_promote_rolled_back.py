"""A candidate that went live and was taken off again (``ee adapters rollback``, or another adapter promoted over it) is
not promoted again when the run continues at its promote stage: the adapter live then is the one its gate measured, so
the live-changed check passed, and the rolled-back candidate went live again without a word.

A real local registry with its history, a real run folder and the real stage runner; the earlier stages' manifests are
written as they write them (see tests/jobs/test_promote_live_changed.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ee_middleware.adapters.promote import promote, retire, rollback
from ee_middleware.adapters.registry import open_registry
from ee_middleware.jobs.deploy import promote_command
from ee_middleware.jobs.errors import LiveAdapterChangedError
from ee_middleware.jobs.improve import _run_stage
from ee_middleware.jobs.report import _outcome
from ee_middleware.jobs.runs import Run, now
from tests.jobs.test_promote_live_changed import APP, _context, _setup

STOPPED = "ee improve (stopped after the switch, before the manifest)"


def test_a_candidate_rolled_back_after_its_promote_was_stopped_is_not_promoted_again(tmp_path: Path) -> None:
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by=STOPPED)
    rollback(registry, APP, [], by="alice")
    rolled_back_at = registry.history(adapter=names["cand"])[-1]["at"]

    with pytest.raises(LiveAdapterChangedError) as caught:
        _run_stage(_context(config, run), "promote")

    message = str(caught.value)
    assert f"rolled back to {names['v1']} by alice at {rolled_back_at}" in message, message
    assert f"{APP} still serves {names['v1']}" in message and "stays retired" in message
    assert f"promote it by hand (`{promote_command(config, names['cand'])}`)" in message and "--new-run" in message
    assert registry.resolve(APP) == names["v1"]  # the operator's rollback stands
    assert registry.get(names["cand"]).status == "retired"
    manifest = run.stage("promote")
    assert manifest is not None and manifest["status"] == "failed"
    assert manifest["live_changed"]["taken_off"] == "rollback" and manifest["live_changed"]["taken_off_by"] == "alice"
    assert manifest["live_changed"]["replaced_by"] == names["v1"]


def test_a_candidate_another_adapter_was_promoted_over_is_not_promoted_again(tmp_path: Path) -> None:
    """Taken off by a promote of the adapter its gate measured (by hand): live is the gated adapter again."""
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by=STOPPED)
    promote(registry, names["v1"], [], by="bob")

    with pytest.raises(LiveAdapterChangedError, match=rf"replaced by {names['v1']}, promote by bob at "):
        _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["v1"]


def test_promoting_the_candidate_by_hand_after_the_refusal_lets_the_run_finish(tmp_path: Path) -> None:
    """What the refusal offers when the candidate should be live after all."""
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by=STOPPED)
    rollback(registry, APP, [], by="alice")
    with pytest.raises(LiveAdapterChangedError):
        _run_stage(_context(config, run), "promote")

    promote(registry, names["cand"], [], by="alice")
    _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["cand"]
    assert run.outputs("promote")["promoted"] is True


def _register_now(run: Run) -> None:
    time.sleep(1.05)  # the run's times are whole seconds
    run.write_stage(
        "register",
        {"stage": "register", "status": "done", "started_at": now(), "outputs": {"candidate": run.outputs("register")["candidate"]}},
    )


def test_the_same_weights_a_person_rolled_back_before_this_run_are_not_promoted_again(tmp_path: Path) -> None:
    """The registry hands back the record of weights it holds already (the same data and seed train the same weights): a
    gate that passes against what is live now does not undo the rollback a person made of them before this run."""
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="ee improve (run an-earlier-run)")
    rollback(registry, APP, [], by="alice")
    rolled_back_at = registry.history(adapter=names["cand"])[-1]["at"]
    _register_now(run)

    _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["v1"]  # alice's rollback stands
    assert registry.get(names["cand"]).status == "retired"
    outputs = run.outputs("promote")
    assert outputs["promoted"] is False and outputs["live"] == names["v1"]
    assert outputs["turned_down"]["by"] == "alice" and outputs["turned_down"]["action"] == "rollback"
    (reason,) = outputs["reasons"]
    assert f"the same weights as an adapter alice took off at {rolled_back_at} (rolled back to {names['v1']})" in reason, reason
    assert f"promote them by hand if they should be live (`{promote_command(config, names['cand'])}`)" in reason
    assert run.stage("promote")["status"] == "done"  # declined, not failed: the run finishes
    outcome = _outcome(run, {"gate": run.outputs("gate"), "promote": outputs})
    assert any(reason in block.text for block in outcome), outcome  # the report says why
    summary = f"not promoted: alice took off these weights (rolled back to {names['v1']}); {APP} still serves {names['v1']}"
    assert run.stage("promote")["summary"] == summary, run.stage("promote")  # was: "(alice rolled back to v1 these weights)"


def test_the_same_weights_a_person_retired_are_not_promoted_again(tmp_path: Path) -> None:
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    retire(registry, names["cand"], [], by="bob", reason="answers in French")
    _register_now(run)

    _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["v1"]
    (reason,) = run.outputs("promote")["reasons"]
    assert "as an adapter bob retired at " in reason and reason.split(" at ", 1)[1].split(";")[0].endswith(" (answers in French)"), reason
    assert (
        run.stage("promote")["summary"] == f"not promoted: bob retired these weights (answers in French); {APP} still serves {names['v1']}"
    )


@pytest.mark.parametrize("earlier", ["a failed gate of an earlier run", "promoted again by a person after the rollback"])
def test_the_same_weights_not_turned_down_by_a_person_are_promoted(tmp_path: Path, earlier: str) -> None:
    """Retired by an earlier run's failed gate (the job's own verdict, which this run's gate measured again), or rolled
    back and then promoted again by a person and superseded by a newer adapter: the gate's verdict decides."""
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    if earlier.startswith("a failed gate"):
        retire(registry, names["cand"], [], by="ee improve (run an-earlier-run)", reason="did not pass the gate in run an-earlier-run")
    else:
        registry.switch_live(names["cand"], by="alice")
        rollback(registry, APP, [], by="alice")
        promote(registry, names["cand"], [], by="alice")
        promote(registry, names["v1"], [], by="bob")
    _register_now(run)

    _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["cand"]
    assert run.outputs("promote")["promoted"] is True and run.outputs("promote")["replaced"] == names["v1"]
