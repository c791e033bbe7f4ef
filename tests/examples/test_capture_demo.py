"""The README's main command runs this demo: it must record every task and exit 0."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ee_middleware import LocalExperienceStore

DEMO = Path(__file__).resolve().parents[2] / "examples" / "capture_demo.py"


def test_capture_demo_records_every_task(tmp_path: Path, capsys):
    spec = importlib.util.spec_from_file_location("capture_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    store_path = tmp_path / "demo" / "experience"
    assert demo.main(["--store", str(store_path)]) == 0
    frame = LocalExperienceStore(store_path).trajectories()
    assert frame.height == len(demo.TASKS)
    counts = dict(frame.group_by("approval").len().iter_rows())
    assert counts == {"approved": 4, "rejected": 1, "pending": 1}, "one tool error stays pending, one run rejected by hand"
    exported = (store_path.parent / "approved.jsonl").read_text().splitlines()
    assert len(exported) == 4 and all("tools" in json.loads(line) for line in exported)
    assert "jane.doe@example.com" not in (store_path.parent / "approved.jsonl").read_text()
    out = capsys.readouterr().out
    assert "What was stored" in out and "Wrote 4 examples" in out


def test_the_demos_refuse_a_folder_they_did_not_make_and_remake_their_own(tmp_path: Path, monkeypatch) -> None:
    """Was: each demo removed the folder it was given whatever it held (capture_demo also the ``workspace`` beside its
    store, end_to_end and retail_db the working folder itself with ``--out .``), then went on."""
    import pytest

    spec = importlib.util.spec_from_file_location("capture_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    project = tmp_path / "project"
    (project / "workspace").mkdir(parents=True)
    (project / "workspace" / "important.txt").write_text("precious")
    with pytest.raises(SystemExit, match=r"Not removing .*workspace \(the workspace beside --store\): it holds files a demo did not make"):
        demo.main(["--store", str(project / "experience")])
    assert (project / "workspace" / "important.txt").read_text() == "precious"
    (project / "experience").mkdir()
    (project / "experience" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"Not removing .*experience \(--store\)"):
        demo.main(["--store", str(project / "experience")])
    assert (project / "experience" / "notes.txt").read_text() == "mine"
    monkeypatch.chdir(project / "experience")
    with pytest.raises(SystemExit, match=r"--store .*experience is the current folder or holds it"):
        demo.main(["--store", "."])

    monkeypatch.chdir(tmp_path)
    own = tmp_path / "demo" / "experience"
    assert demo.main(["--store", str(own)]) == 0
    assert demo.main(["--store", str(own)]) == 0, "its own output is remade"
    assert LocalExperienceStore(own).trajectories().height == len(demo.TASKS)
    assert (tmp_path / "demo" / ".ee-demo-output").is_file(), "the folder it made above its store is the demo's too"


def test_the_demo_folders_take_an_empty_folder_and_each_others_and_refuse_before_removing_any(tmp_path: Path) -> None:
    import pytest

    from ee_middleware._files import clear_demo_folders, make_demo_folder

    empty = tmp_path / "empty"
    empty.mkdir()
    (out,) = clear_demo_folders((empty, "--out"))
    assert make_demo_folder(out).is_dir() and (out / ".ee-demo-output").is_file()  # (it crashed: FileExistsError)
    (out / "experience").mkdir()  # made by ee inside the demo's folder (ee bfcl record-experts' store): no marker
    (out / "experience" / "ee-store.json").write_text("{}")
    assert clear_demo_folders((out / "experience", "--store")) == [out / "experience"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"Not removing .*mine"):
        clear_demo_folders((out, "--out"), (mine, "--other"))
    assert out.is_dir() and (mine / "notes.txt").is_file(), "nothing is removed when one folder is refused"
    link = tmp_path / "link"
    link.symlink_to(out)
    with pytest.raises(SystemExit, match="is a link"):
        clear_demo_folders((link, "--out"))
