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


def _as_the_version_before_wrote_it(run: Path, split: str) -> None:
    """Rewrite ``run``'s run.json as a version before ab49585 wrote it: no ``settings``, the split as typed."""
    record = json.loads((run / RUN_FILE).read_text())
    record.pop("settings", None)
    record["job"]["split"] = split
    (run / RUN_FILE).write_text(json.dumps(record))


def _another_split(tmp_path: Path, heldout: list[str]) -> Path:
    """Another nightly split of the same store, in ``tmp_path/night2/data`` (a folder named ``data`` too)."""
    night2 = tmp_path / "night2"
    night2.mkdir()
    (night2 / "store").symlink_to(tmp_path / "store")
    _build(night2, heldout)
    return night2 / "data"


def test_an_older_runs_relative_split_naming_nothing_from_here_is_another_split_for_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: resumed from another folder with another ``data`` split, a run of the version before (split ``data``)
    holding a traces: suite the command does not name was taken as on the same split (``data`` is the tail of
    ``night2/data``), so that suite kept the results of the old split's held-out trajectories. Now refused, naming the
    fix, and the fix works."""
    ids = _record_store(tmp_path)
    _build(tmp_path, ids[:3])
    whole, app = f"traces:{tmp_path / 'store'}", f"traces:{tmp_path / 'store'}:bfcl.multi_turn_base"
    monkeypatch.chdir(tmp_path)
    run_eval(EvalJob(suites=[whole, app], model="oracle", out="run", split="data"))
    _as_the_version_before_wrote_it(tmp_path / "run", "data")
    night2 = _another_split(tmp_path, ids[3:])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = str(tmp_path / "run")
    with pytest.raises(ConfigError) as refused:
        run_eval(EvalJob(suites=[whole], model="oracle", out=out, split=str(night2)))
    message = str(refused.value)
    assert f"holds results of {app}, evaluated with the split its run.json records as typed" in message
    assert f"'data' names nothing from this folder ({elsewhere})" in message
    assert "Run this command from the folder the run was made in" in message and f"name them too (--suite {app})" in message
    # the same split, named absolutely from elsewhere: still cannot be checked from here, and the fix it names works
    with pytest.raises(ConfigError, match="records as typed"):
        run_eval(EvalJob(suites=[whole], model="oracle", out=out, split=str(tmp_path / "data")))
    monkeypatch.chdir(tmp_path)
    summaries = run_eval(EvalJob(suites=[whole], model="oracle", out=out, split=str(tmp_path / "data")))
    assert [s["tasks"] for s in summaries] == [3, 3]
    # without a readable split, the run's --split is named with the folder it is read from
    monkeypatch.chdir(elsewhere)
    _as_the_version_before_wrote_it(tmp_path / "run", "data")
    with pytest.raises(ConfigError, match=r"give this command the run's split \(--split data, from the folder the run was made in\)"):
        run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="oracle", out=out))
    # naming the suite too re-checks its results against the new split
    summaries = run_eval(EvalJob(suites=[whole, app], model="oracle", out=out, split=str(night2)))
    assert [s["tasks"] for s in summaries] == [3, 3]
    assert set(pl.read_parquet(tmp_path / "run" / "results.parquet")["task_id"]) == set(ids[3:])


def test_the_gate_takes_an_older_relative_split_by_the_folder_it_names_and_still_refuses_other_held_out_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a bare ``datasets.json`` (typed from inside a split's folder) was the tail of every split, so any older
    run's ``datasets.json`` was the same split as any new run's, and :func:`same_split` took ``data`` as every nightly
    split's for the resume too. The gate keeps ``data`` (its tasks are paired by id: another held-out set is refused)."""
    from ee_middleware.evals.job import same_split, split_identity

    ids = _record_store(tmp_path)
    _build(tmp_path, ids[:3])
    store = f"traces:{tmp_path / 'store'}"
    monkeypatch.chdir(tmp_path)
    run_eval(EvalJob(suites=[store], model="noop", out="base", split="data"))
    _as_the_version_before_wrote_it(tmp_path / "base", "data")
    night2 = _another_split(tmp_path, ids[3:])
    run_eval(EvalJob(suites=[store], model="oracle", out="cand", split=str(night2)))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    new = split_identity(str(night2))
    assert not same_split("data", new) and not same_split("datasets.json", new, tasks_paired=True)
    assert not same_split("./datasets.json", new, tasks_paired=True) and not same_split("../data", new, tasks_paired=True)
    assert same_split("data", new, tasks_paired=True) and same_split("night2/data/datasets.json", new, tasks_paired=True)
    assert not same_split("other/data", new, tasks_paired=True)
    base, cand = tmp_path / "base", tmp_path / "cand"
    assert setting_differences(cand, base) == []  # `data` names night2's folder too: the task ids tell the two apart
    reasons = gate(cand, base, POLICY).reasons
    assert _other_settings(reasons) == []
    assert any(r.startswith(f"{store}: the candidate lacks 3 task(s) the baseline ran") for r in reasons), reasons
    _as_the_version_before_wrote_it(base, "datasets.json")  # typed from inside the folder: names no split
    [changed] = setting_differences(cand, base)
    assert changed.startswith(f"[eval] split: datasets.json -> {night2 / 'datasets.json'} (3 held out")
