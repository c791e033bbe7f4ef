"""The replay side of tests/replay/test_raised_fidelity.py: a sandbox raising the exception that ended the recorded run
is no fidelity mismatch. Needs the runner hook (/tmp/s35/f14/runner.patch): ``_reexecute_expert`` takes such a call as
matched where :func:`~ee_middleware.replay.fidelity.raised_as_recorded` says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.capture.redaction import RedactionRules
from ee_middleware.capture.store_redaction import StoreRedaction, record_store_redaction
from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import tool_call
from tests.replay.test_raised_fidelity import _record, _replay


@pytest.mark.parametrize("sandbox", ["same_sandbox", "tool_node_text_sandbox"])
def test_a_sandbox_raising_the_exception_that_ended_the_run_is_no_fidelity_mismatch(tmp_path: Path, sandbox: str) -> None:
    """The default format_error ('Error: RuntimeError: backend down: now') and the docs' ToolNode text
    ("Error: RuntimeError('backend down: now')\\n Please fix your mistakes.") both name the recorded exception."""
    root = tmp_path / "experience"
    _record(root, [tool_call("fail", q="now")])
    assert _replay(root, sandbox) == []


def test_a_parallel_call_beside_the_raising_one_is_compared_as_text(tmp_path: Path) -> None:
    """The run's last turn also held a lookup that answered ('paris: sunny'). A sandbox whose lookup raises the very
    exception that ended the run ('Error: RuntimeError: backend down: now') is a mismatch on the lookup: its recording
    is a result, compared as text, never by the run's exception. The raising call beside it still matches."""
    root = tmp_path / "experience"
    trajectory = _record(root, [tool_call("lookup", city="paris"), tool_call("fail", q="now")])
    observations = {s.action.tool_call.name: s.observation for s in trajectory.steps if s.action.tool_call is not None}
    assert observations["fail"] is not None and observations["fail"].is_error
    assert observations["lookup"] is not None and observations["lookup"].content == "paris: sunny"
    (mismatch,) = _replay(root, "lookup_raising_sandbox")
    assert (mismatch["tool"], mismatch["recorded"], mismatch["replayed"]) == (
        "lookup",
        "paris: sunny",
        "Error: RuntimeError: backend down: now",
    )


def test_a_dataset_build_keeps_the_rollouts_of_a_tool_whose_exception_ended_a_run(tmp_path: Path) -> None:
    """Before, the build left out every rollout of the tool ('wrong_tools') for the expert's own, identical call."""
    root = tmp_path / "experience"
    _record(root, [tool_call("fail", q="now")])
    assert _replay(root, "same_sandbox") == []
    out = tmp_path / "datasets"
    built = CliRunner().invoke(app, ["datasets", "build", "--store", str(root), "-o", str(out), "--kinds", "il,iwm"])
    assert built.exit_code == 0, (built.output, built.exception)
    left_out = json.loads((out / "datasets.json").read_text()).get("fidelity_mismatches_left_out", {})
    assert not left_out.get("rollouts") and not left_out.get("wrong_tools"), left_out


def test_an_exception_recorded_under_older_redaction_rules_is_compared_redacted_with_the_current_ones(tmp_path: Path) -> None:
    """A rule added to the store since capture redacts the sandbox's text ('Error: RuntimeError: backend down:
    [REDACTED...]') while the recording still holds 'now': the recording is compared redacted with the current rules
    too, as replay's text comparison does. Before, the raised exception was compared with the raw recording: 1
    mismatch."""
    root = tmp_path / "experience"
    trajectory = _record(root, [tool_call("fail", q="now")])
    assert trajectory.steps[0].observation is not None and trajectory.steps[0].observation.content == "RuntimeError: backend down: now"
    store = LocalExperienceStore(root)
    try:
        record_store_redaction(store, StoreRedaction(RedactionRules(patterns={"moment": r"\bnow\b"})))
    finally:
        store.close()
    assert _replay(root, "same_sandbox") == []
