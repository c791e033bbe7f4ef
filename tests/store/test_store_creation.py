"""Creating a store, and its marker (``ee-store.json``): processes that create one store at once, a creator killed
mid-create, a damaged or missing marker. Real processes, a real folder."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import StoreError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[2]


def _open_each(paths: list[str], barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    """In a worker process: open every store of ``paths`` in turn, each at the moment every other worker opens it."""
    from ee_middleware.store import LocalExperienceStore

    for path in paths:
        barrier.wait()
        try:
            store = LocalExperienceStore(path)
            store.write([sample_trajectory(f"t{multiprocessing.current_process().name}")])  # then records, as a worker does
            store.close()
            results.put(("ok", path))
        except Exception as exc:  # every failure is reported to the test
            results.put((f"{type(exc).__name__}: {exc}", path))


def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Eight processes open one new folder at the same moment (a web app's workers starting), forty times over. The
    emptiness check counted the temporary marker another creator was writing (and the files of a creator that had
    finished meanwhile): most of them failed with 'a non-empty folder without ee-store.json' in every trial."""
    workers, trials = 8, 40
    paths = [str(tmp_path / f"trial-{i}" / "store") for i in range(trials)]
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate workers are
    barrier, results = context.Barrier(workers, timeout=120), context.Queue()
    procs = [context.Process(target=_open_each, args=(paths, barrier, results), name=f"w{n}") for n in range(workers)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=300) for _ in range(workers * trials)]
    for proc in procs:
        proc.join(timeout=60)
    failed = [(why, path) for why, path in outcomes if why != "ok"]
    assert not failed, f"{len(failed)} of {len(outcomes)} opens failed, the first: {failed[0]}"
    for path in paths:
        assert LocalExperienceStore(path).trajectories().height == workers, "every worker recorded into the one store"


KILLED_CREATOR = textwrap.dedent(
    """
    import os, signal, sys
    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # killed as it publishes the marker (by a rename or a link)
    os.replace = os.link = os.rename = die
    from ee_middleware.store import LocalExperienceStore
    LocalExperienceStore(sys.argv[1])
    """
)


def test_a_creator_killed_while_publishing_the_marker_never_blocks_the_store(tmp_path: Path) -> None:
    """The killed creator's temporary marker was the only file in the folder, and it made every later open fail with
    'a non-empty folder without ee-store.json'."""
    root = tmp_path / "store"
    done = subprocess.run([sys.executable, "-c", KILLED_CREATOR, str(root)], cwd=REPO, timeout=120)
    assert done.returncode == -9
    assert [p.name for p in root.iterdir() if p.name.startswith(".ee-store.json.")], "the killed creator left its temporary marker"
    store = LocalExperienceStore(root)
    store.write([sample_trajectory("after")])
    store.close()
    assert LocalExperienceStore(root, create=False).trajectories()["id"].to_list() == ["after"]


def _recorded_store(root: Path) -> None:
    store = LocalExperienceStore(root)
    store.write([sample_trajectory("kept-1"), sample_trajectory("kept-2")])
    store.close()


def test_a_damaged_marker_says_what_it_holds_and_repair_writes_a_new_one(tmp_path: Path) -> None:
    """A zero-length ee-store.json (a crash, a bad copy): the error said 'recreate it as an empty store marker', and
    nothing said what a marker holds."""
    root = tmp_path / "store"
    _recorded_store(root)
    (root / "ee-store.json").write_bytes(b"")
    with pytest.raises(StoreError, match="unreadable") as caught:
        LocalExperienceStore(root)
    message = str(caught.value)
    assert '"format": "ee-experience-store"' in message and f"ee store repair --store {root}" in message
    result = CliRunner().invoke(app, ["store", "repair", "--store", str(root)])
    assert result.exit_code == 0, result.output
    assert "ee-store.json" in result.output
    assert json.loads((root / "ee-store.json").read_text())["format"] == "ee-experience-store"
    assert [p.name for p in (root / "quarantine").iterdir()] == ["ee-store.json.damaged"], "the damaged file is kept"
    assert LocalExperienceStore(root, create=False).trajectories()["id"].to_list() == ["kept-1", "kept-2"]


def test_a_missing_marker_in_a_folder_holding_a_store_says_how_to_recover(tmp_path: Path) -> None:
    """With ee-store.json deleted, reading said 'No experience store ... Record a run into it first' for a folder
    holding runs, and recording into it was refused as 'a non-empty folder without ee-store.json'."""
    root = tmp_path / "store"
    _recorded_store(root)
    (root / "redaction.json").write_text("{}")  # a store's own settings file: the folder is not empty
    (root / "ee-store.json").unlink()
    for create in (False, True):
        with pytest.raises(StoreError, match="holds an experience store's files") as caught:
            LocalExperienceStore(root, create=create)
        assert f"ee store repair --store {root}" in str(caught.value)
    result = CliRunner().invoke(app, ["store", "repair", "--store", str(root), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["marker_written"] == str(root / "ee-store.json")
    assert LocalExperienceStore(root, create=False).trajectories()["id"].to_list() == ["kept-1", "kept-2"]


def test_repair_writes_no_marker_into_a_folder_without_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    result = CliRunner().invoke(app, ["store", "repair", "--store", str(tmp_path / "notes")])
    assert result.exit_code != 0
    assert not (tmp_path / "notes" / "ee-store.json").exists()


def test_a_store_path_that_is_a_link_to_nothing_says_so(tmp_path: Path) -> None:
    """Before: "[Errno 17] File exists ... Check the folder's permissions and free space" (mkdir through a dangling link)."""
    link = tmp_path / "experience"
    link.symlink_to(tmp_path / "mounted" / "experience")
    with pytest.raises(StoreError, match=r"is a symbolic link to .*mounted/experience, which does not exist"):
        LocalExperienceStore(link)
    (tmp_path / "mounted" / "experience").mkdir(parents=True)
    LocalExperienceStore(link).close()  # the folder it points to made: the store is created there
    assert (tmp_path / "mounted" / "experience" / "ee-store.json").exists()
