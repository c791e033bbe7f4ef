"""A candidate that went live and was taken off again (``ee adapters rollback``, or another adapter promoted over it) is
not promoted again when the run continues at its promote stage: the adapter live then is the one its gate measured, so
the live-changed check passed, and the rolled-back candidate went live again without a word.

A real local registry with its history, a real run folder and the real stage runner; the earlier stages' manifests are
written as they write them (see tests/jobs/test_promote_live_changed.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import open_registry
from ee_middleware.jobs.deploy import promote_command
from ee_middleware.jobs.errors import LiveAdapterChangedError
from ee_middleware.jobs.improve import _run_stage
from ee_middleware.jobs.runs import now
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


def test_the_same_weights_taken_off_before_this_run_registered_them_are_promoted(tmp_path: Path) -> None:
    """The registry hands back the record of weights it holds already: their history before this run's register stage
    is not this run's candidate being rolled back."""
    config, run, names = _setup(tmp_path)
    registry = open_registry(config.registry)
    registry.switch_live(names["cand"], by="an earlier run")
    rollback(registry, APP, [], by="alice")
    time.sleep(1.05)  # the run's times are whole seconds
    run.write_stage("register", {"stage": "register", "status": "done", "started_at": now(), "outputs": {"candidate": names["cand"]}})

    _run_stage(_context(config, run), "promote")

    assert registry.resolve(APP) == names["cand"]
    assert run.outputs("promote")["replaced"] == names["v1"]
