"""An eval whose served model takes longer than ``timeout_s`` is told to raise it with the eval's own knob
(``--timeout N``, or ``timeout_s`` under ``[eval]``), not a flag another command has (32bc6de: the client's advice names
the knob its caller gives). Against a real HTTP server that answers too late."""

from __future__ import annotations

from http.server import ThreadingHTTPServer
from pathlib import Path

from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import EVAL_TIMEOUT_KNOB, run_eval
from ee_middleware.testing.http import serving
from tests.replay.test_unusable_policy import _Hanging  # answers after 2 s


def test_an_evals_timeout_advice_names_its_own_flag(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hanging)
    with serving(server) as url:
        job = EvalJob(suites=["bfcl:simple:1"], model=f"openai:{url}#m", out=str(tmp_path / "run"), timeout_s=0.5, retries=0)
        [summary] = run_eval(job)
    rows = (tmp_path / "run" / "results.jsonl").read_text()
    assert f"raise timeout_s ({EVAL_TIMEOUT_KNOB}; now 0.5 s)" in rows, rows[:2000]
    assert summary is not None
