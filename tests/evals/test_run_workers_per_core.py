"""``ee eval run --workers N`` above the worker processes this machine's cores take (8 per core, the replay job's rule:
``ee_middleware.replay.config.max_workers``) starts that many, with a warning, as ``ee replay run`` does: a job file
written for a larger machine runs on a laptop."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.config import max_workers


def _run(tmp_path: Path, workers: int) -> tuple[dict, str]:
    """The run's recorded job, and what the command said on stderr."""
    out = tmp_path / f"run-{workers}"
    args = ["eval", "run", "--suite", "bfcl:simple:1", "--model-spec", "noop", "--out", str(out), "--workers", str(workers), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads((out / "run.json").read_text())["job"], result.stderr


def test_more_workers_than_this_machine_takes_are_capped_with_a_warning(tmp_path: Path) -> None:
    most = max_workers("local")
    recorded, said = _run(tmp_path, most + 1)
    assert recorded["workers"] == most
    assert re.search(
        rf"^warning: ee eval: workers={most + 1} is more than the {most} worker processes .* \(8 per core\); starting {most}\.$", said, re.M
    ), said


def test_workers_this_machine_takes_are_kept_without_a_warning(tmp_path: Path) -> None:
    recorded, said = _run(tmp_path, max_workers("local"))
    assert recorded["workers"] == max_workers("local")
    assert "per core" not in said, said
