"""``ee traces list`` on a narrow terminal, ``--limit`` out of range and ``export -o -``.

At 40 columns (a split pane) the table dropped its id column, the one thing a user needs next (``ee traces show/approve
ID``); an id that folded was taken down to nothing by rich. ``--limit 99999999999999999999999`` failed inside polars as
"unexpected OverflowError ... a bug in ee-middleware". ``export -o -`` wrote a file named ``-``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.cli.app import app
from tests.conftest import USER_TASK


@pytest.fixture
def recorded(react_graph: Any, store_path: Path, inventory: Any) -> Path:
    agent = record_experience(react_graph, app="shop", store=store_path)
    for i in range(3):
        inventory.stock["pear"] = 0
        agent.invoke(USER_TASK, {"configurable": {"thread_id": f"t{i}"}})
    agent.recorder.close()
    return store_path


def _listing(store: Path, columns: int) -> str:
    result = CliRunner().invoke(app, ["traces", "list", "-s", str(store)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    assert all(len(line) <= columns for line in result.stdout.splitlines()), result.stdout
    return result.stdout


@pytest.mark.parametrize("columns", [30, 40, 50, 60])
def test_the_id_stays_whole_on_a_narrow_terminal(recorded: Path, columns: int) -> None:
    ids = LocalExperienceStore(recorded).trajectories()["id"].to_list()
    text = _listing(recorded, columns)
    for trajectory_id in ids:
        assert trajectory_id[:12] in text, (columns, text)  # whole, on one line: what `ee traces show` takes
    header = next(line for line in text.splitlines() if line.split()[:1] == ["id"])
    assert "steps" in header, "the step count stays too"
    if columns >= 40:
        assert "approval" in header and "status" in header, header
    if columns < 80:
        assert "(--json has them)" in " ".join(text.split()), "what is left out is said"


def test_a_wide_terminal_shows_every_column(recorded: Path) -> None:
    header = next(line for line in _listing(recorded, 100).splitlines() if line.split()[:1] == ["id"])
    assert header.split() == ["id", "approval", "status", "steps", "task", "started", "UTC"], header


def test_a_limit_too_large_to_count_is_a_usage_error(recorded: Path) -> None:
    result = CliRunner().invoke(app, ["traces", "list", "-s", str(recorded), "--limit", "99999999999999999999999"])
    assert result.exit_code == 2, result.output
    assert "--limit" in result.stderr and "unexpected" not in result.stderr, result.stderr
    most = CliRunner().invoke(app, ["traces", "list", "-s", str(recorded), "--limit", str(2**63 - 1), "--json"])
    assert most.exit_code == 0 and most.stdout.count('"id"') == 3, most.output


def test_export_to_a_dash_is_refused_rather_than_writing_a_file_named_dash(recorded: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["traces", "export", "-s", str(recorded), "-f", "jsonl", "-o", "-", "--status", "all"])
    assert result.exit_code == 2, result.output
    assert "'-' is not stdout" in result.stderr and "--out train.jsonl" in result.stderr, result.stderr
    assert not (tmp_path / "-").exists()


def test_start_times_say_their_year_where_runs_are_of_other_years_and_show_says_utc(tmp_path: Path) -> None:
    """Before: `ee traces list` printed MM-DD HH:MM only, so runs of 1970-01-01, 2027-01-01 and 2100-01-01 (a clock gone
    wrong, an import in microseconds) all read 01-01 00:00; `ee traces show` printed its times without a zone."""
    import datetime as dt

    from ee_middleware import LocalExperienceStore
    from ee_middleware.testing.store_conformance import sample_trajectory

    store = LocalExperienceStore(tmp_path / "experience")
    for name, year in (("old-run", 1970), ("new-run", dt.datetime.now(dt.UTC).year)):
        when = dt.datetime(year, 1, 1, tzinfo=dt.UTC)
        store.write([sample_trajectory(name).model_copy(update={"started_at": when, "ended_at": when})])
    store.approve(["new-run"], by="alice")
    store.close()
    listed = CliRunner().invoke(app, ["traces", "list", "--store", str(tmp_path / "experience")], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "1970-01-01 00:00" in listed.output, listed.output
    narrow = CliRunner().invoke(app, ["traces", "list", "--store", str(tmp_path / "experience")], env={"COLUMNS": "65"})
    flat = " ".join(narrow.output.split())  # the column whole, or left out and said so: never cut to "1970-01-01 00"
    assert "1970-01-01 00:00" in flat or "not shown at 65 columns: started UTC" in flat, narrow.output
    assert "1970-01-01 00 " not in flat and not flat.endswith("1970-01-01 00"), narrow.output
    shown = CliRunner().invoke(app, ["traces", "show", "new-run", "--store", str(tmp_path / "experience")], env={"COLUMNS": "200"})
    assert "00:00:00 UTC" in shown.output and " UTC  tools=" in shown.output, shown.output


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_a_long_listing_goes_out_a_chunk_at_a_time_as_one_table(recorded: Path, columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing longer than ``LIST_CHUNK_ROWS`` is drawn a table of that many rows at a time, its columns as wide in each,
    and reads as the one table it was (to a pipe, 20,000 rows took 11 s before the first line; `| head` now 2 s)."""
    from ee_middleware.cli import traces

    whole = _listing(recorded, columns)
    monkeypatch.setattr(traces, "LIST_CHUNK_ROWS", 1)
    assert _listing(recorded, columns) == whole


@pytest.mark.parametrize("columns", [55, 80, 120, 200])
def test_chunks_of_rows_of_every_width_read_as_one_table(tmp_path: Path, columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) The task column took the widest task of its own chunk (a later, longer task moved the next column), and
    the id column counted characters, not cells (a CJK id was cut to an ellipsis). Tasks, ids and apps of every width,
    wide characters and markup-like text among them, the longest last."""
    from ee_middleware.cli import traces
    from ee_middleware.testing.store_conformance import sample_trajectory

    store = LocalExperienceStore(tmp_path / "store")
    tasks = ["short", "a task of middling length", "表示する 日本語のタスク", "[bold]not markup[/bold] at all", "x", "y" * 90]
    apps = ["shop", "日本語アプリ", "[red]app", "a-very-long-application-name"]
    ids = ["日本語-0001", "r", "run-0003", "run-00000000004", "5", "run-6"]
    store.write(
        [
            sample_trajectory(i).model_copy(update={"task": t, "app": apps[n % len(apps)]})
            for n, (i, t) in enumerate(zip(ids, tasks, strict=True))
        ]
    )
    store.close()
    whole = _listing(store.root, columns)
    monkeypatch.setattr(traces, "LIST_CHUNK_ROWS", 2)
    assert _listing(store.root, columns) == whole
    assert "日本語-0001" in whole or columns < 80
