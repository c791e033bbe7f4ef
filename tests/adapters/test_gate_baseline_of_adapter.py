"""``ee eval gate --adapter NAME`` records a gate on NAME only against a baseline that is not NAME itself. Before, it
refused the same run folder as candidate and baseline, but recorded a pass when the baseline was another run of NAME (a
copy of the candidate's run, NAME evaluated again, ``--model NAME`` by mistake, or the app's alias once NAME went live):
the runs tie, a tie passes at min_improvement 0, and the pass let ``ee adapters promote NAME`` through. REAL registry,
REAL local server process serving the adapter by its name, REAL eval runs."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.cli.app import app
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval

from .conftest import train_shaped_adapter

SUITE = "bfcl:irrelevance:2"
SETTINGS = {"max_tokens": 8, "max_steps_per_turn": 1}


def test_a_baseline_that_is_a_run_of_the_adapter_itself_is_refused(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    record = registry.register(train_shaped_adapter(tiny_base, tmp_path / "adapter", seed=77), "bot")
    name = record.name
    backend = LocalBackend(local_server.url)
    backend.load(name, record.path)
    try:
        for out in ("cand", "again"):
            run_eval(EvalJob(suites=[SUITE], model=f"openai:{local_server.url}#{name}", out=str(tmp_path / out), **SETTINGS))
        run_eval(EvalJob(suites=[SUITE], model=f"openai:{local_server.url}#tiny-base", out=str(tmp_path / "live"), **SETTINGS))
    finally:
        backend.unload(name)
    shutil.copytree(tmp_path / "cand", tmp_path / "copy")
    run_eval(EvalJob(suites=[SUITE], model=f"local:{tiny_base}@{record.path}", out=str(tmp_path / "local"), **SETTINGS))

    def gate_on(baseline: str) -> Any:
        args = ["eval", "gate", "--candidate", str(tmp_path / "cand"), "--baseline", str(tmp_path / baseline), "--min-tasks", "1"]
        return CliRunner().invoke(app, [*args, "--json", "--adapter", name, "-r", str(tmp_path / "reg")])

    for baseline, why in (
        ("again", f"its answers came from {name}"),
        ("copy", f"its answers came from {name}"),
        ("local", f"its model is local:{tiny_base}@{record.path}"),
    ):
        refused = gate_on(baseline)
        message = " ".join(refused.output.split())
        assert refused.exit_code == 1, refused.output
        assert f"The baseline run {(tmp_path / baseline).resolve()} evaluated {name} itself ({why})" in message, message
        assert "Give --baseline a run of the live model" in message
    assert registry.get(name).evals == [], "nothing recorded from a gate of the adapter against itself"

    recorded = gate_on("live")
    assert "evaluated" not in recorded.output and "did not evaluate" not in recorded.output, recorded.output
    assert [e["kind"] for e in registry.get(name).evals] == ["gate"]
