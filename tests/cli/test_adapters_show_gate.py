"""`ee adapters show NAME` prints the deploy-gate verdicts recorded on NAME: PASS or FAIL, the reasons, the runs
compared, and whether the last one blocks a promote. Before, the human form showed only "eval by USER" in the history,
whether the gate passed or failed (only --json's ``evals`` had it), though a failed gate refuses ``ee adapters promote``.

A REAL local registry, REAL eval run folders (results.parquet as ``ee eval run`` writes it), the verdict recorded by the
REAL ``ee eval gate --adapter NAME -r REGISTRY``; the improve job's shape recorded through the registry's add_eval."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from tests.cli.test_adapters_show_event_times import _adapter


def _run(folder: Path, success: bool, served_model: str) -> Path:
    """An eval run folder: 25 tasks of one suite, all passed or all failed, answered by ``served_model``."""
    import polars as pl

    folder.mkdir()
    rows = [{"suite": "s", "task_id": f"t{i}", "trial": 0, "success": success, "served_model": served_model} for i in range(25)]
    pl.DataFrame(rows).write_parquet(folder / "results.parquet")
    return folder


def _show(root: Path, name: str) -> str:
    result = CliRunner().invoke(app, ["adapters", "show", name, "-r", str(root)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    return result.output


def _gate(root: Path, name: str, candidate: Path, baseline: Path) -> int:
    args = ["eval", "gate", "--candidate", str(candidate), "--baseline", str(baseline), "--adapter", name, "-r", str(root)]
    return CliRunner().invoke(app, args).exit_code


def test_show_prints_a_failed_gate_with_its_reasons_runs_and_the_promote_it_blocks(tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "registry")
    name = registry.register(_adapter(tmp_path / "a"), "warehouse", by="alice").name
    good, bad = _run(tmp_path / "good", True, "base"), _run(tmp_path / "bad", False, name)
    assert _gate(registry.root, name, bad, good) == 1

    lines = [" ".join(line.split()) for line in _show(registry.root, name).splitlines()]
    [verdict] = [line for line in lines if line.startswith("gate ")]
    assert "FAIL" in verdict and "PASS" not in verdict, lines
    assert f"candidate run {bad.resolve()}" in verdict and f"baseline run {good.resolve()}" in verdict, verdict
    assert "- s: regression -1.000 exceeds max_regression 0.020" in lines, lines
    assert any("--ignore-gate" in line for line in lines), lines
    [event] = [line for line in lines if " eval by " in line]
    assert event.endswith("(gate FAIL)"), event


def test_show_prints_a_passed_gate_and_an_improve_jobs_verdict(tmp_path: Path) -> None:
    """A later passing gate is the one a promote reads: no --ignore-gate hint; the improve job's shape (gate_passed,
    gate_reasons, its run id) is shown too."""
    registry = LocalAdapterRegistry(tmp_path / "registry")
    name = registry.register(_adapter(tmp_path / "a"), "warehouse", by="alice").name
    registry.add_eval(name, {"run": "20261202-improve", "baseline": "base", "gate_passed": False, "gate_reasons": ["held-out NLL rose"]})
    good, same = _run(tmp_path / "good", True, "base"), _run(tmp_path / "same", True, name)
    assert _gate(registry.root, name, same, good) == 0

    lines = [" ".join(line.split()) for line in _show(registry.root, name).splitlines()]
    verdicts = [line for line in lines if line.startswith("gate ")]
    assert len(verdicts) == 2, lines
    assert "FAIL" in verdicts[0] and "ee improve run 20261202-improve" in verdicts[0] and "baseline base" in verdicts[0]
    assert "- held-out NLL rose" in lines
    assert "PASS" in verdicts[1] and f"candidate run {same.resolve()}" in verdicts[1]
    assert not any("--ignore-gate" in line for line in lines), lines
    assert [line.rsplit("(", 1)[-1] for line in lines if " eval by " in line] == ["gate FAIL)", "gate PASS)"]
