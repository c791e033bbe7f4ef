"""A ``traces:`` split is what it holds out, not the text naming it: two spellings of one split are one setting for the
resume and the gate, and a split rebuilt in place with other ids is another (real recorded BFCL experts, real dataset
builds, real run folders)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.evals.gate import GatePolicy, gate, setting_differences
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import JOURNAL, RUN_FILE, read_journal, run_eval

from .test_run_stale_results import _build, _record_store

POLICY = GatePolicy(min_tasks=1, max_regression=1.0, block_significant_regression=False)


def _other_settings(reasons: list[str]) -> list[str]:
    return [r for r in reasons if "other settings" in r]


def test_one_split_named_by_its_folder_and_by_its_absolute_datasets_json_is_one_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the gate refused the pair ("other settings ([eval] split: /.../data/datasets.json -> data)") and the
    resume with the absolute path was refused, though both evaluated the same tasks."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[::2])
    monkeypatch.chdir(tmp_path)
    store = f"traces:{tmp_path / 'store'}"
    run_eval(EvalJob(suites=[store], model="oracle", out="cand", split="data"))
    run_eval(EvalJob(suites=[store], model="noop", out="base", split=str(tmp_path / "data" / "datasets.json")))
    assert setting_differences("cand", "base") == []
    assert _other_settings(gate("cand", "base", POLICY).reasons) == []
    [summary] = run_eval(EvalJob(suites=[store], model="oracle", out="cand", split=str(tmp_path / "data")))
    assert summary["tasks"] == 3 and len(read_journal(tmp_path / "cand" / JOURNAL)) == 3, "resumed: nothing ran again"
    recorded = json.loads((tmp_path / "cand" / RUN_FILE).read_text())["settings"]["split"]
    assert recorded["path"] == str(tmp_path / "data" / "datasets.json") and (recorded["heldout"], recorded["trained"]) == (3, 3)
    # A run.json of the version before "settings": its split as typed, read from the current folder.
    record = json.loads((tmp_path / "cand" / RUN_FILE).read_text())
    del record["settings"]
    record["job"]["split"] = "data"
    (tmp_path / "cand" / RUN_FILE).write_text(json.dumps(record))
    assert setting_differences("cand", "base") == []
    [summary] = run_eval(EvalJob(suites=[store], model="oracle", out="cand", split=str(tmp_path / "data")))
    assert summary["tasks"] == 3


def test_a_split_rebuilt_in_place_with_other_ids_is_another_setting_for_the_gate_and_the_fix_it_names_works(
    tmp_path: Path,
) -> None:
    """Before: both runs recorded ``split: DATA`` and the gate compared a candidate on the new held-out trajectories with
    a baseline on the old ones as runs with the same settings."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[:3])
    store, data = f"traces:{tmp_path / 'store'}", str(tmp_path / "data")
    base, cand = tmp_path / "base", tmp_path / "cand"
    run_eval(EvalJob(suites=[store], model="noop", out=str(base), split=data))
    _build(tmp_path, ids[3:])
    run_eval(EvalJob(suites=[store], model="oracle", out=str(cand), split=data))
    [changed] = setting_differences(cand, base)
    assert changed.startswith(f"[eval] split: {tmp_path / 'data' / 'datasets.json'} (3 held out, 3 trained; ids digest ")
    [reason] = _other_settings(gate(cand, base, POLICY).reasons)
    assert "run `ee eval run` of one of them again with the other's --split" in reason
    run_eval(EvalJob(suites=[store], model="noop", out=str(base), split=data))  # the fix the reason names
    assert setting_differences(cand, base) == []
    assert set(pl.read_parquet(base / "results.parquet")["task_id"]) == set(ids[3:])


def test_a_changed_split_is_refused_while_the_run_holds_a_traces_suite_the_command_does_not_name(tmp_path: Path) -> None:
    """Its results would stay those of the other split's held-out trajectories: the error names the --suite to add,
    and that command works."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[:3])
    whole, app = f"traces:{tmp_path / 'store'}", f"traces:{tmp_path / 'store'}:bfcl.multi_turn_base"
    out, data = tmp_path / "run", str(tmp_path / "data")
    run_eval(EvalJob(suites=[whole, app], model="oracle", out=str(out), split=data))
    split = _build(tmp_path, ids[3:])
    with pytest.raises(ConfigError, match=rf"holds results of {app}, evaluated with another split.*Name them too \(--suite {app}\)"):
        run_eval(EvalJob(suites=[whole], model="oracle", out=str(out), split=data))
    summaries = run_eval(EvalJob(suites=[whole, app], model="oracle", out=str(out), split=data))
    assert [s["tasks"] for s in summaries] == [3, 3]
    assert not set(pl.read_parquet(out / "results.parquet")["task_id"]) & set(split["train_trajectories"])


def test_a_resume_with_the_split_forgotten_names_the_runs_split_and_that_command_works(tmp_path: Path) -> None:
    """Before: adding a suite to a run holding a traces: suite, without --split, said to name the traces: suite too,
    which fails again ('give the split'); the fix that works is the run's --split."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[:3])
    store, out = f"traces:{tmp_path / 'store'}", str(tmp_path / "run")
    run_eval(EvalJob(suites=[store], model="oracle", out=out, split=str(tmp_path / "data")))
    recorded = json.loads((tmp_path / "run" / RUN_FILE).read_text())["settings"]["split"]["path"]
    with pytest.raises(ConfigError) as refused:
        run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="oracle", out=out))
    assert f"give this command the run's split (--split {recorded}" in str(refused.value)
    assert "Name them too" not in str(refused.value)
    summaries = run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="oracle", out=out, split=recorded))  # as it says
    assert [s["tasks"] for s in summaries] == [3, 1]


def test_a_run_of_the_version_before_with_a_relative_split_gates_against_a_new_run_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the older record's ``data`` was read from the gate's folder (nothing there) and the pair was refused as
    "other settings", though two runs of the version before passed from anywhere."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[::2])
    monkeypatch.chdir(tmp_path)
    store = f"traces:{tmp_path / 'store'}"
    run_eval(EvalJob(suites=[store], model="oracle", out="cand", split="data"))
    run_eval(EvalJob(suites=[store], model="noop", out="base", split="data"))
    record = json.loads((tmp_path / "base" / RUN_FILE).read_text())
    del record["settings"]  # as the version before wrote it: the split as typed
    (tmp_path / "base" / RUN_FILE).write_text(json.dumps(record))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert setting_differences(tmp_path / "cand", tmp_path / "base") == []
    assert _other_settings(gate(tmp_path / "cand", tmp_path / "base", POLICY).reasons) == []
    record["job"]["split"] = "other_data"  # a text naming another folder is still another split
    (tmp_path / "base" / RUN_FILE).write_text(json.dumps(record))
    [changed] = setting_differences(tmp_path / "cand", tmp_path / "base")
    assert changed.startswith("[eval] split: other_data -> ")
