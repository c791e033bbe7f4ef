"""``benchmarks/experience_model.py``'s fidelity step (3.) on a served experience model that fails: real BFCL experts
recorded and replayed, a real HTTP server; the throughput step's ``sequential`` and ``batched`` (a local model's
``generate``) are stand-ins, hence the test names."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import experience_model as bench
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox
from tests.replay.test_experience import _serve_failing_some
from tests.replay.test_experience_eval import dies_after


def _run(model: str, out: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str | None, list[str]]:
    """The benchmark's ``main`` on a small store with ``model``: its exit message (``None`` when it ended well) and the
    models of the experience sandboxes it closed."""
    from ee_middleware.models import openai_compat

    monkeypatch.setattr(openai_compat, "_sleep", lambda s: None)  # the client's back-off between retries

    def rate_only(sandbox: ExperienceSandbox, work: list[list[tuple[Any, ...]]]) -> tuple[float, list[str]]:
        return 1.0, ["-"] * sum(len(batch) for batch in work)

    monkeypatch.setattr(bench, "sequential", rate_only)
    monkeypatch.setattr(bench, "batched", rate_only)
    closed: list[str] = []
    close = ExperienceSandbox.close

    def counted_close(self: ExperienceSandbox) -> None:
        closed.append(self.model)
        close(self)

    monkeypatch.setattr(ExperienceSandbox, "close", counted_close)
    args = ["--limit", "5", "--repeats", "1", "--skip-retrievers", "--train-steps", "0", "--eval-limit", "3"]
    monkeypatch.setattr(sys, "argv", ["experience_model.py", "--model", model, *args, "--out", str(out)])
    try:
        bench.main()
    except SystemExit as exc:
        return str(exc), closed
    return None, closed


def test_a_model_that_answers_no_prediction_writes_no_report_stand_in_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark wrote report.json and fidelity.png when every prediction failed: a report that measures nothing,
    the one ``ee experience eval`` refuses to write. It now ends with that error and writes none."""
    # GET /models answers, every chat request is refused (HTTP 400, each one's own: counted, not a server that is down)
    with _serve_failing_some(lambda attempt: True, refusal=(400, "this model cannot take the request")) as down:
        message, closed = _run(down.spec, tmp_path / "bench", monkeypatch)
    assert message is not None and message.startswith(f"error: every prediction of {down.spec} failed"), message
    assert f"no report was written to {tmp_path / 'bench'}" in message
    assert not (tmp_path / "bench").exists()
    assert closed == [down.spec]


def test_a_server_that_dies_mid_eval_closes_the_sandboxes_stand_in_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate() raises when the model's server dies: the benchmark ended in a traceback without closing its experience
    sandboxes. It now closes them and ends with the server's error, writing no report."""
    with dies_after(2) as dying:
        message, closed = _run(dying.spec, tmp_path / "bench", monkeypatch)
    assert message is not None and message.startswith(f"error: No usable answer from {dying.base_url}/chat/completions"), message
    assert "the fidelity evaluation stopped; no report was written" in message
    assert closed == [dying.spec] and not (tmp_path / "bench").exists()
