"""``ee traces show`` reads no states for its table, and ``--json --no-states`` leaves them out.

Every step of a run holds the conversation before it, so a long run's states are most of its size: the table of a run of
1,000 steps with 1 KB results, which shows no state, read all of them (5.7 s, 2.3 GB for a 17 MB store; 1.5 s, 130 MB
now), and ``--json`` printed 749 MB for a 1.3 MB conversation with no way to leave them out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory


def _show(store: Path, *flags: str) -> str:
    shown = CliRunner().invoke(app, ["traces", "show", "long", "--store", str(store), *flags], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    return shown.stdout


@pytest.mark.parametrize("compacted", [False, True])
def test_the_table_reads_no_state_and_no_states_leaves_them_out_of_the_json(
    tmp_path: Path, compacted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    run = sample_trajectory("long", steps=12)
    store.write([run])
    store.close()
    if compacted:
        LocalExperienceStore(store.root).compact()
    asked: list[bool] = []
    real_get = LocalExperienceStore.get

    def get(self: LocalExperienceStore, trajectory_id: str, *, states: bool = True) -> Any:
        asked.append(states)
        return real_get(self, trajectory_id, states=states)

    monkeypatch.setattr(LocalExperienceStore, "get", get)
    whole = json.loads(_show(store.root, "--json"))
    lean = json.loads(_show(store.root, "--json", "--no-states"))
    table = _show(store.root)
    assert asked == [True, False, False]
    assert len(whole["steps"]) == 13 and whole["steps"][-1]["state"] == run.steps[-1].model_dump(mode="json")["state"]
    for step in whole["steps"]:
        del step["state"]
    assert lean == whole, "--no-states: the same JSON, each step without its state"
    monkeypatch.setattr(LocalExperienceStore, "get", lambda self, trajectory_id, **_: real_get(self, trajectory_id))
    assert _show(store.root) == table, "the table shows the same with the states read"
    assert "lookup" in table and "done" in table


def test_no_states_without_json_is_refused_saying_why(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("long")])
    shown = CliRunner().invoke(app, ["traces", "show", "long", "--store", str(store.root), "--no-states"], env={"COLUMNS": "200"})
    assert shown.exit_code == 2, shown.output
    assert "--no-states is for --json" in " ".join(shown.output.split())
