"""The output folder of ``ee datasets build`` holds one build: the files ``datasets.json`` describes, and no other.

A rebuild into a folder that holds an earlier build (other kinds, another split) leaves none of the earlier
build's files behind, so ``ee train`` never picks up a stale ``sr.parquet`` and an evaluation never reads a
stale ``heldout/`` whose trajectories are now trained on. A build that fails or is killed midway leaves the
earlier build whole (the new files are written in a hidden folder and moved in at the end). And what a build
leaves out is counted in ``datasets.json`` (the IWM error cap's rows).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, Step, ToolCall, Trajectory
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.trainers.datasets import build as build_module
from ee_middleware.trainers.datasets.build import DatasetBuildRunningError, DatasetConfig, build_datasets
from tests.unreadable import ee_as_held_user, needs_held_user, open_folder

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a key up.", "parameters": {"type": "object"}}}]


def _trajectory(i: int) -> Trajectory:
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
    state = [{"role": "user", "content": f"What is k{i}?"}]
    call = ToolCall(id=f"call_{i}", name="lookup", arguments={"key": f"k{i}"})
    after = [
        *state,
        {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
        {"role": "tool", "tool_call_id": call.id, "content": "1"},
    ]
    return Trajectory(
        id=f"traj-{i}",
        app="kv",
        task=state[0]["content"],
        tools=TOOLS,
        messages=[*after, {"role": "assistant", "content": "1."}],
        final_answer="1.",
        started_at=start,
        ended_at=start,
        steps=[
            Step(
                trajectory_id=f"traj-{i}",
                index=0,
                decision_index=0,
                state=state,
                action=Action(kind="tool_call", tool_call=call),
                observation=Observation(content="1"),
            ),
            Step(trajectory_id=f"traj-{i}", index=1, decision_index=1, state=after, action=Action(kind="answer", content="1.")),
        ],
    )


def _rollout(i: int) -> Rollout:
    call = ToolCall(id="alt", name="lookup", arguments={"key": "nope"})
    return Rollout(
        id=f"r-{i}",
        replay_id="replay-1",
        trajectory_id=f"traj-{i}",
        step_index=0,
        branch_index=0,
        action=Action(kind="tool_call", tool_call=call),
        proposer=ProposerInfo(policy="mutate"),
        observation=Observation(content="no such key", is_error=True),
        is_error=True,
        sandbox="python",
        duration_ms=1.0,
    )


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "experience"
    store = LocalExperienceStore(path)
    store.write([_trajectory(i) for i in range(4)])
    store.approve([f"traj-{i}" for i in range(4)], by="test")
    for i in range(4):
        record = ReplayRecord(
            replay_id="replay-1", trajectory_id=f"traj-{i}", status="done", policy="mutate", sandbox="python", k=1, seed=0
        )
        store.write_replay(record, [_rollout(i)])
    store.close()
    return path


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def _trajectories(path: Path) -> set[str]:
    return set(pl.read_parquet(path)["trajectory_id"].to_list())


def test_a_rebuild_with_fewer_kinds_and_no_split_leaves_no_file_of_the_earlier_build(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    ids = tmp_path / "heldout.txt"
    ids.write_text("traj-0\n")
    build_datasets(DatasetConfig.load(store=store_path, out=out, heldout_ids=ids))
    assert "heldout/il.parquet" in _files(out) and "sr.parquet" in _files(out)

    summary = build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    assert _files(out) == ["datasets.json", "il.parquet"], "no stale iwm/sr file, no stale heldout/ (traj-0 is now trained on)"
    assert not (out / "heldout").exists()
    assert "traj-0" in _trajectories(out / "il.parquet")
    assert sorted(summary["stale_removed"]) == [
        "heldout/il.parquet",
        "heldout/iwm.parquet",
        "heldout/sr.parquet",
        "iwm.parquet",
        "sr.parquet",
    ]
    assert json.loads((out / "datasets.json").read_text())["stale_removed"] == summary["stale_removed"]


def test_a_rebuild_that_adds_a_split_leaves_no_earlier_file_holding_a_heldout_trajectory(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    build_datasets(DatasetConfig.load(store=store_path, out=out))
    ids = tmp_path / "heldout.txt"
    ids.write_text("traj-0\n")
    build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il,iwm", heldout_ids=ids))
    assert "sr.parquet" not in _files(out), "the earlier sr.parquet trains on traj-0, which is now held out"
    for name in ("il.parquet", "iwm.parquet"):
        assert "traj-0" not in _trajectories(out / name) and _trajectories(out / "heldout" / name) == {"traj-0"}


def test_a_build_that_fails_midway_leaves_the_earlier_build_whole_and_a_rerun_finishes(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    build_datasets(DatasetConfig.load(store=store_path, out=out))
    before = {name: (out / name).read_bytes() for name in _files(out)}
    ids = tmp_path / "heldout.txt"
    ids.write_text("traj-0\n")
    real = build_module._build_split

    def killed_in_the_heldout_split(*args: object, **kwargs: object) -> object:
        if kwargs.get("heldout"):
            raise KeyboardInterrupt  # Ctrl-C while the held-out split is built (an SR teacher can take hours on it)
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "_build_split", killed_in_the_heldout_split)
    with pytest.raises(KeyboardInterrupt):
        build_datasets(DatasetConfig.load(store=store_path, out=out, heldout_ids=ids, seed=1))
    assert {name: (out / name).read_bytes() for name in _files(out)} == before, "the earlier build is whole, nothing new mixed in"
    assert not list(out.glob(".*")), "no hidden folder of the failed build is left"

    monkeypatch.setattr(build_module, "_build_split", real)
    summary = build_datasets(DatasetConfig.load(store=store_path, out=out, heldout_ids=ids, seed=1))
    assert summary["config"]["seed"] == 1 and summary["split"]["heldout_trajectories"] == ["traj-0"]
    assert "traj-0" not in _trajectories(out / "il.parquet")


def test_a_build_killed_by_a_signal_leaves_a_hidden_folder_the_next_build_removes(store_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "data"
    out.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = out / f".build-{finished.stdout.strip()}-abc"  # the staging folder of a build killed with SIGKILL
    (dead / "heldout").mkdir(parents=True)
    (dead / "il.parquet").write_bytes(b"x")
    build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    assert _files(out) == ["datasets.json", "il.parquet"]


def test_the_cli_says_which_stale_files_it_removed_and_an_empty_store_creates_no_folder(store_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    runner = CliRunner()
    assert runner.invoke(app, ["datasets", "build", "--store", str(store_path), "--out", str(out)]).exit_code == 0
    result = runner.invoke(app, ["datasets", "build", "--store", str(store_path), "--out", str(out), "--kinds", "il"])
    assert result.exit_code == 0, result.output
    assert "removed 2 file(s) of an earlier build" in " ".join(result.output.split())

    empty = tmp_path / "empty"
    LocalExperienceStore(empty).close()
    result = runner.invoke(app, ["datasets", "build", "--store", str(empty), "--out", str(tmp_path / "never")])
    assert result.exit_code == 1 and "No approved trajectories" in result.output
    assert not (tmp_path / "never").exists(), "a build that refuses to start leaves no empty folder behind"


def test_the_iwm_error_cap_says_how_many_error_rows_it_left_out(store_path: Path, tmp_path: Path) -> None:
    """4 expert steps answered fine, 4 rollouts answered an error: a 0.2 cap keeps 1 error row (1 of 5 rows)."""
    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "data", kinds="iwm", iwm_max_error_share=0.2))
    iwm = summary["datasets"]["iwm"]
    assert iwm["rows"] == 5 and iwm["errors_left_out"] == 3
    rows = pl.read_parquet(tmp_path / "data" / "iwm.parquet")
    assert rows["is_error"].sum() == 1
    uncapped = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "all", kinds="iwm", iwm_max_error_share=1.0))
    assert uncapped["datasets"]["iwm"]["errors_left_out"] == 0 and uncapped["datasets"]["iwm"]["rows"] == 8


@pytest.mark.parametrize("kinds", ["", " , ", []])
def test_empty_kinds_are_refused_and_the_earlier_build_stays(kinds: object, store_path: Path, tmp_path: Path) -> None:
    """An empty --kinds built nothing and exited 0; with stale files removed it would empty the folder."""
    from ee_middleware.errors import ConfigError

    out = tmp_path / "data"
    build_datasets(DatasetConfig.load(store=store_path, out=out))
    before = _files(out)
    with pytest.raises(ConfigError, match=r"kinds is empty.*il, iwm, sr"):
        DatasetConfig.load(store=store_path, out=out, kinds=kinds)
    assert _files(out) == before


def test_a_second_build_into_a_folder_a_build_is_writing_is_refused(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds into one --out both reported success and the one that finished last won: a build with a held-out split
    returned (and its caller trusted) heldout ids while the folder held the other build, traj-0 in il.parquet. A build
    into a folder another build is writing is now refused, naming it; the running one finishes whole."""
    import threading

    out = tmp_path / "data"
    real = build_module._build_split
    started, go_on = threading.Event(), threading.Event()

    def slow(*args: object, **kwargs: object) -> object:
        if threading.current_thread().name == "first":
            started.set()
            assert go_on.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "_build_split", slow)
    results: dict[str, object] = {}
    first = threading.Thread(
        target=lambda: results.update(first=build_datasets(DatasetConfig.load(store=store_path, out=out))), name="first"
    )
    first.start()
    try:
        assert started.wait(30)
        ids = tmp_path / "heldout.txt"
        ids.write_text("traj-0\n")
        # not a ConfigError: --json's error type told scripts that a running job was a mistake in the configuration
        with pytest.raises(
            DatasetBuildRunningError, match=r"Another dataset build \(pid \d+\) is writing .*data.*Wait for it.*another --out"
        ):
            build_datasets(DatasetConfig.load(store=store_path, out=out, heldout_ids=ids))
    finally:
        go_on.set()
        first.join(30)
    assert "first" in results and "split" not in json.loads((out / "datasets.json").read_text())
    assert "traj-0" in _trajectories(out / "il.parquet") and not (out / "heldout").exists()
    assert not list(out.glob(".*")), "nothing hidden is left"
    summary = build_datasets(DatasetConfig.load(store=store_path, out=out, heldout_ids=ids))  # once it is done, a build goes ahead
    assert summary["split"]["heldout_trajectories"] == ["traj-0"] and "traj-0" not in _trajectories(out / "il.parquet")


def test_files_of_a_datasets_name_that_no_build_wrote_are_left_where_they_are(store_path: Path, tmp_path: Path) -> None:
    """A folder holding a user's sr.parquet (a table of theirs) and an iwm.parquet that is text: a build of IL alone
    leaves both (found by a reviewer: both were deleted as "files of an earlier build")."""
    out = tmp_path / "data"
    out.mkdir()
    pl.DataFrame({"x": [1, 2]}).write_parquet(out / "sr.parquet")
    (out / "iwm.parquet").write_text("my notes\n")
    summary = build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    assert summary["stale_removed"] == []
    assert pl.read_parquet(out / "sr.parquet")["x"].to_list() == [1, 2] and (out / "iwm.parquet").read_text() == "my notes\n"


def test_exporting_a_build_folder_asks_for_one_of_its_files(store_path: Path, tmp_path: Path) -> None:
    """Before: "Dataset DIR is not readable Parquet (...). Rebuild it ...", of a build that is fine (found by a reviewer)."""
    from ee_middleware.trainers.datasets.build import read_dataset

    out = tmp_path / "data"
    ids = tmp_path / "heldout.txt"
    ids.write_text("traj-0\n")
    build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il", heldout_ids=ids))
    with pytest.raises(ConfigError, match="is a folder: give one dataset file of it") as raised:
        read_dataset(out)
    assert f"{out / 'il.parquet'}, {out / 'heldout' / 'il.parquet'}" in str(raised.value)
    assert "Rebuild" not in str(raised.value)


def test_a_folder_that_held_a_build_loses_its_stale_files_whatever_version_wrote_them(store_path: Path, tmp_path: Path) -> None:
    """Review R12: builds before the redaction metadata wrote files without it; a folder holding such a build (its
    datasets.json) still loses the files a rebuild does not write, as a held-out file there holds trajectories the new
    training files teach."""
    out = tmp_path / "data"
    (out / "heldout").mkdir(parents=True)
    (out / "datasets.json").write_text("{}")
    pl.DataFrame({"trajectory_id": ["traj-0"]}).write_parquet(out / "heldout" / "il.parquet")
    pl.DataFrame({"trajectory_id": ["traj-1"]}).write_parquet(out / "sr.parquet")
    summary = build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    assert sorted(summary["stale_removed"]) == ["heldout/il.parquet", "sr.parquet"]


def test_a_store_and_output_in_folders_named_in_another_encoding_build(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Sweep W: a store (or ``--out``) in a folder whose name is no UTF-8 (a Latin-1 byte; any non-ASCII name in an
    ASCII-locale Python) failed the build with "unexpected PydanticSerializationError ... (a bug)" as datasets.json
    recorded its settings. ``datasets.json`` keeps the path as Python reads it back (a JSON escape)."""
    import os
    import shutil
    import subprocess
    import sys

    latin = tmp_path / os.fsdecode(b"caf\xe9")
    store = Path(shutil.copytree(bfcl_store_path, latin / "store"))
    out = latin / "ds"
    entry = "import sys; from ee_middleware.cli.app import main; sys.argv[0] = 'ee'; main()"  # a real stdout: its own encoding
    args = ["datasets", "build", "--store", str(store), "--kinds", "il", "--out", str(out), "--no-progress"]
    result = subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    recorded = json.loads((out / "datasets.json").read_text(encoding="utf-8"))
    assert recorded["config"]["store"] == str(store) and recorded["config"]["out"] == str(out)
    with open(out / "il.parquet", "rb") as written:  # (polars opens no name that is not UTF-8)
        assert pl.read_parquet(written).height > 0


def test_a_build_that_fails_removes_the_output_folders_it_made_and_says_its_error_once(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Sweep W: under a file-size limit (or on a full disk) a failed build left its empty ``--out`` folder behind, and its
    error line ended "then try again..". A real limit (``ulimit -f``) set in a real ``ee`` process."""
    import subprocess
    import sys

    entry = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); "
        "from ee_middleware.cli.app import main; sys.argv[0] = 'ee'; main()"
    )
    out = tmp_path / "made" / "ds"
    args = ["datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il", "--out", str(out), "--no-progress"]
    done = subprocess.run([sys.executable, "-c", entry, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert "File too large" in line and line.endswith("then try again.") and not line.endswith(".."), line
    assert not (tmp_path / "made").exists(), "the folders the build made are gone"


@pytest.mark.parametrize("inside", ["", "datasets"])
def test_an_output_folder_that_is_the_store_or_inside_it_is_refused_before_anything_is_written(store_path: Path, inside: str) -> None:
    """Was (a sweep): accepted, the datasets written among the store's own files (and a rebuild's stale-file removal
    working there)."""
    before = sorted(p.relative_to(store_path) for p in store_path.rglob("*"))
    out = store_path / inside if inside else store_path
    result = CliRunner().invoke(app, ["datasets", "build", "--store", str(store_path), "--out", str(out), "--kinds", "il,iwm"])
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert f"--out {out} is" in said and "Give a folder outside it, e.g. --out" in said, said
    assert sorted(p.relative_to(store_path) for p in store_path.rglob("*")) == before


def test_ee_improve_builds_into_its_run_folder_wherever_its_runs_are(store_path: Path) -> None:
    """The review of the refusal above: ee improve's datasets stage writes into its run folder, and a set-up whose runs
    folder is inside the store's worked before; its stage calls the builder without the CLI's refusal."""
    out = store_path / "runs" / "20261206-000000-1" / "data"
    summary = build_datasets(DatasetConfig.load(store=store_path, out=out, kinds="il"))
    assert summary["datasets"]["il"]["rows"] > 0 and (out / "il.parquet").is_file()


@needs_held_user
def test_an_output_folder_the_user_may_not_write_is_named_not_the_hidden_folder_made_in_it(store_path: Path) -> None:
    """Before: "Cannot ... rodir/.build-29141-t5iygcm3: Permission denied", a folder the user never named."""
    import shutil

    with open_folder("ee-datasets-") as folder:
        store = shutil.copytree(store_path, folder / "experience")
        out = folder / "read-only"
        out.mkdir(mode=0o555)
        code, output = ee_as_held_user("datasets", "build", "--store", str(store), "--out", str(out), "--kinds", "il")
        flat = " ".join(output.split())
        assert code == 1 and f"Cannot write the datasets into {out}: Permission denied. Nothing was written." in flat, output
        assert ".build-" not in flat and list(out.iterdir()) == []


def test_an_empty_output_folder_is_refused_not_taken_as_the_working_directory(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `--out "$OUT"` with the variable unset wrote il.parquet, iwm.parquet and datasets.json into the working
    directory (typer reads "" as the path ".")."""
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(app, ["datasets", "build", "--store", str(store_path), "--out", ""])
    assert result.exit_code == 2 and "'' is empty or blank: name the output folder" in " ".join(result.output.split()), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before
