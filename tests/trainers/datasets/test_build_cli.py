"""``ee datasets build|show|export`` and the build job: files, summary, exports, errors."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.testing.http import serving
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets, read_dataset, to_hf_dataset
from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA

runner = CliRunner()


def test_build_writes_three_parquet_files_with_lineage_and_a_summary(replayed_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = runner.invoke(app, ["datasets", "build", "--store", str(replayed_store), "--kinds", "il,iwm,sr", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary["datasets"]) == {"il", "iwm", "sr"}
    for kind in ("il", "iwm", "sr"):
        frame = pl.read_parquet(out / f"{kind}.parquet")
        assert frame.height == summary["datasets"][kind]["rows"] > 0
        assert dict(frame.schema) == DATASET_SCHEMA
        assert set(frame["source_hash"]) == {summary["source_hash"]}
        assert frame["trajectory_id"].null_count() == 0 and frame["step_index"].null_count() == 0
    assert json.loads((out / "datasets.json").read_text())["source_hash"] == summary["source_hash"]
    assert not list(out.glob(".*.tmp"))

    shown = runner.invoke(app, ["datasets", "show", str(out), "--examples", "1", "--plot", str(tmp_path / "lengths.png")])
    assert shown.exit_code == 0, shown.output
    assert "iwm.parquet" in shown.stdout and "Predict exactly" in shown.stdout and "█" in shown.stdout
    assert (tmp_path / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    # before: "histo" wrote histo.png and reported "histograms: histo"; a missing folder failed after the counting; a
    # .txt suffix was "unexpected ValueError ... a bug in ee-middleware"; the PNG was written in place (a failed write
    # left it cut)
    shown = runner.invoke(app, ["datasets", "show", str(out), "--examples", "0", "--plot", str(tmp_path / "plots" / "histo")])
    assert shown.exit_code == 0 and f"histograms:{tmp_path / 'plots' / 'histo.png'}" in "".join(shown.stdout.split())  # (wrapped)
    assert (tmp_path / "plots" / "histo.png").read_bytes()[:4] == b"\x89PNG" and len(list((tmp_path / "plots").iterdir())) == 1
    for bad, says in (
        (tmp_path / "h.txt", "give a path ending in .png"),
        (tmp_path / "plots", "is a folder"),
        (f"{tmp_path}/new/", "names a folder"),
    ):
        refused = runner.invoke(app, ["datasets", "show", str(out), "--plot", str(bad)])
        assert refused.exit_code == 2 and says in " ".join(refused.output.split()), refused.output
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.png").exists()

    exported = runner.invoke(app, ["datasets", "export", str(out / "il.parquet"), "--out", str(tmp_path / "il.jsonl")])
    assert exported.exit_code == 0, exported.output
    lines = (tmp_path / "il.jsonl").read_text().splitlines()
    assert len(lines) == summary["datasets"]["il"]["rows"]
    example = json.loads(lines[0])
    assert example["messages"][-1]["role"] == "assistant" and example["tools"]


def test_jsonl_export_trains_on_the_completion_only(replayed_store: Path, tmp_path: Path) -> None:
    """Was: ``ee datasets export --format jsonl`` wrote the prompt's assistant messages with no ``"weight": 0``, so OpenAI-style
    fine-tuning trained on every one of them: each IWM example taught the replay policy's alternative call (mutated, some
    deliberately invalid), each IL example the trajectory's earlier turns again. Now they are context (weight 0, as
    ``ee traces export`` marks the turns a run did not decide) and the completion alone is taught, as ``ee train`` trains."""
    out = tmp_path / "data"
    build_datasets(DatasetConfig.load(store=replayed_store, out=out, kinds="il,iwm"))
    context = 0
    for kind in ("il", "iwm"):
        result = runner.invoke(app, ["datasets", "export", str(out / f"{kind}.parquet"), "--out", str(tmp_path / f"{kind}.jsonl")])
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in (tmp_path / f"{kind}.jsonl").read_text().splitlines()]
        frame = pl.read_parquet(out / f"{kind}.parquet")
        assert len(lines) == frame.height
        for example, prompt, completion in zip(lines, frame["prompt"], frame["completion"], strict=True):
            size = len(json.loads(prompt))
            given, taught = example["messages"][:size], example["messages"][size:]
            assert [m["role"] for m in taught] == [m["role"] for m in json.loads(completion)] and all("weight" not in m for m in taught)
            for message in given:
                assert message.get("weight") == (0 if message["role"] == "assistant" else None), (kind, message)
                context += message["role"] == "assistant"
    assert context > 0, "some prompts hold assistant turns (the IWM rows' proposed calls at least)"


def test_an_app_with_no_approved_trajectory_is_named_with_the_apps_that_have_some(replayed_store: Path, tmp_path: Path) -> None:
    """Was: ``--app NAME`` matching no trajectory said 'No approved trajectories in STORE', though the store held some."""
    from collections import Counter

    from ee_middleware.store.registry import open_store

    apps = Counter(open_store(replayed_store).trajectories(status="approved")["app"].to_list())
    assert apps
    result = runner.invoke(app, ["datasets", "build", "--store", str(replayed_store), "--out", str(tmp_path / "d"), "--app", "no-such-app"])
    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "No approved trajectories of app 'no-such-app'" in message, message
    assert all(f"{name} ({n})" in message for name, n in apps.items()), message


def test_a_hugging_face_dataset_holds_every_row(replayed_store: Path, tmp_path: Path) -> None:
    build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path, kinds="il"))
    frame = read_dataset(tmp_path / "il.parquet")
    dataset = to_hf_dataset(frame)
    assert len(dataset) == frame.height
    messages = json.loads(dataset[0]["completion"])
    assert isinstance(messages[0]["tool_calls"][0]["function"]["arguments"], dict)


def test_bad_input_is_named(replayed_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="Unknown dataset kind"):
        DatasetConfig.load(store=replayed_store, out=tmp_path, kinds="il,rl")
    with pytest.raises(ConfigError, match="Unknown teacher"):
        build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path, kinds="sr", teacher="oracle"))
    # a config built in code is checked as one loaded (before: an unknown kind was built as SR, and one written but
    # missing from the folder, and no kinds at all removed the earlier build's files)
    from pydantic import ValidationError

    for kinds in (("il", "iwn"), ()):
        with pytest.raises(ValidationError, match=r"Unknown dataset kind\(s\) iwn|kinds is empty"):
            DatasetConfig(store=replayed_store, out=tmp_path, kinds=kinds)
    assert DatasetConfig(store=replayed_store, out=tmp_path, kinds=("il", "sr", "il")).kinds == ("il", "sr")
    empty = tmp_path / "empty-store"
    from ee_middleware.store import LocalExperienceStore

    LocalExperienceStore(empty)
    with pytest.raises(ConfigError, match="No approved trajectories"):
        build_datasets(DatasetConfig.load(store=empty, out=tmp_path / "x"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ConfigError, match="not readable Parquet"):
        read_dataset(tmp_path / "broken.parquet")
    result = runner.invoke(app, ["datasets", "show", str(tmp_path / "nothing-here")])
    assert result.exit_code == 1 and "No datasets" in result.output


class _ScriptedTeacherServer(BaseHTTPRequestHandler):
    prompts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _ScriptedTeacherServer.prompts.append(body["messages"][0]["content"])
        reply = {"choices": [{"message": {"role": "assistant", "content": "I call this because it returns what the task needs."}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def test_openai_teacher_against_a_scripted_stand_in_server(replayed_store: Path, tmp_path: Path) -> None:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedTeacherServer)) as url:
        summary = build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path, kinds="sr", teacher=f"openai:{url}#teacher-model"))
    assert summary["datasets"]["sr"]["rows"] > 0 and summary["datasets"]["sr"]["teacher"] == "openai:teacher-model"
    assert _ScriptedTeacherServer.prompts and all("expert" not in p.lower() for p in _ScriptedTeacherServer.prompts)
    down = DatasetConfig.load(store=replayed_store, out=tmp_path, kinds="sr", teacher="openai:http://127.0.0.1:9/v1#m")
    from ee_middleware.errors import ModelServerError

    with pytest.raises(ModelServerError, match=r"127\.0\.0\.1:9") as info:
        build_datasets(down)
    assert info.value.url == "http://127.0.0.1:9/v1/chat/completions"


@pytest.mark.parametrize("kinds", [5, ["il", 3], {"il": True}])
def test_kinds_of_the_wrong_type_are_a_config_error(kinds: object, tmp_path: Path) -> None:
    from ee_middleware.errors import ConfigError
    from ee_middleware.trainers.datasets.build import DatasetConfig

    with pytest.raises(ConfigError, match="kinds must be a list of dataset kinds"):
        DatasetConfig.load(store=tmp_path, out=tmp_path / "out", kinds=kinds)
