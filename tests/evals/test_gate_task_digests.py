"""ee eval gate refuses runs whose tasks share ids but are other tasks (a domain's expected outputs edited between the
runs). Before: the gate paired tasks by id alone and passed such runs with no reason and no note, though each result
line records its task's digest. Two real runs of a user's own tau-style domain, its task file edited in between."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.gate import UNRECORDED, GatePolicy, gate

DOMAIN = """
from ee_middleware.evals.tau.domain import TauDomain, TauTask


def load_data():
    return {"users": {"u1": {"name": "Zoë", "city": "Zürich"}}}


def get_user(data, user_id):
    user = data["users"].get(user_id)
    return f"Error: no user {user_id}" if user is None else f"{user['name']} lives in {user['city']}"


SCHEMAS = [{"type": "function", "function": {"name": "get_user", "description": "Look up a user.", "parameters": {
    "type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]}}}]
TASKS = [
    {"id": f"where-{n}", "category": "answer", "outputs": [CITY], "instruction": "Ask where you live.",
     "turns": [{"user": f"Where do I (u1) live? ({n})", "actions": [{"name": "get_user", "arguments": {"user_id": "u1"}}],
                "reply": f"You live in {CITY}."}]}
    for n in range(4)
]


def domain():
    return TauDomain(name="homes", policy="Answer.", tools={"get_user": get_user}, schemas=SCHEMAS, load_data=load_data,
                     splits={"test": lambda: [TauTask.from_json(t, "homes.py") for t in TASKS]})
"""


def _domain(folder: Path, city: str) -> Path:
    (folder / "gatedomain").mkdir(parents=True)
    (folder / "gatedomain" / "__init__.py").write_text("")
    (folder / "gatedomain" / "homes.py").write_text(f"CITY = {city!r}\n" + DOMAIN)
    return folder


def _run(domain: Path, model: str, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(domain), os.environ.get("PYTHONPATH", "")])}
    args = ["eval", "run", "--suite", "tau:gatedomain.homes:domain", "--model-spec", model, "--out", str(out), "--no-progress"]
    done = subprocess.run([sys.executable, "-m", "ee_middleware.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_runs_whose_tasks_of_one_id_differ_are_refused_naming_them(tmp_path: Path) -> None:
    as_was, edited = _domain(tmp_path / "v1", "Zürich"), _domain(tmp_path / "v2", "Basel")
    _run(as_was, "noop", tmp_path / "base")
    _run(edited, "oracle", tmp_path / "cand")
    _run(as_was, "oracle", tmp_path / "same")

    refused = gate(tmp_path / "cand", tmp_path / "base", GatePolicy(min_tasks=1))
    assert not refused.passed
    [reason] = [r for r in refused.reasons if "other tasks in the two runs" in r]
    assert reason.startswith("tau:gatedomain.homes:domain:test: 4 task(s) of the same id are other tasks in the two runs (where-0, ")
    assert gate(tmp_path / "same", tmp_path / "base", GatePolicy(min_tasks=1)).passed  # the same tasks: gated as before

    shown = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(tmp_path / "cand"), "--baseline", str(tmp_path / "base"), "--min-tasks", "1", "--json"]
    )
    assert shown.exit_code == 1 and any("other tasks in the two runs" in r for r in json.loads(shown.stdout)["reasons"])
    assert set(pl.read_parquet(tmp_path / "base" / "results.parquet")["task_digest"].to_list()) != {None}


def test_a_run_written_before_results_parquet_held_digests_is_read_from_its_journal(tmp_path: Path) -> None:
    as_was, edited = _domain(tmp_path / "v1", "Zürich"), _domain(tmp_path / "v2", "Basel")
    _run(as_was, "noop", tmp_path / "base")
    _run(edited, "oracle", tmp_path / "cand")
    for side in ("base", "cand"):  # as an older version wrote it: no task_digest column (the journal has them)
        path = tmp_path / side / "results.parquet"
        pl.read_parquet(path).drop("task_digest").write_parquet(path)
    assert any("other tasks in the two runs" in r for r in gate(tmp_path / "cand", tmp_path / "base", GatePolicy(min_tasks=1)).reasons)


def test_a_tie_under_a_required_improvement_is_noted_as_failing(tmp_path: Path) -> None:
    """With min_improvement 0.1 a tie fails, and the note said "a tie passes while min_improvement is 0.1" beside that
    reason (and was stored on the adapter)."""
    for side in ("b", "c"):
        (tmp_path / side).mkdir()
        rows = [{"suite": "s", "task_id": f"t{n}", "trial": 0, "success": n % 2 == 0} for n in range(4)]
        pl.DataFrame(rows).write_parquet(tmp_path / side / "results.parquet")
    result = gate(tmp_path / "c", tmp_path / "b", GatePolicy(min_tasks=1, min_improvement=0.1))
    assert not result.passed and result.reasons == ["overall: delta +0.000 is below the required improvement +0.100"]
    [note] = [n for n in result.notes if not n.startswith(UNRECORDED)]  # (run folders written here, no run.json)
    assert note.endswith("a tie fails while min_improvement is 0.1"), note
    [note] = [n for n in gate(tmp_path / "c", tmp_path / "b", GatePolicy(min_tasks=1)).notes if not n.startswith(UNRECORDED)]
    assert note.endswith("a tie passes while min_improvement is 0"), note
    significant = gate(tmp_path / "c", tmp_path / "b", GatePolicy(min_tasks=1, require_significant=True))
    assert not significant.passed and significant.notes[0].endswith("a tie fails: require_significant asks for a significant improvement")


def test_a_run_gated_against_itself_is_refused(tmp_path: Path) -> None:
    """It passed (a tie) unless --adapter was given."""
    (tmp_path / "run").mkdir()
    pl.DataFrame([{"suite": "s", "task_id": "t", "trial": 0, "success": True}]).write_parquet(tmp_path / "run" / "results.parquet")
    shown = CliRunner().invoke(app, ["eval", "gate", "--candidate", str(tmp_path / "run"), "--baseline", str(tmp_path / "run" / ".")])
    assert shown.exit_code == 1 and "are the same run folder" in " ".join(shown.output.split()), shown.output
