"""``ee traces export`` that selects nothing (no trajectory of ``--status``, or none that decided anything) writes
nothing: an earlier export at ``--out`` is kept as it was (it was replaced by an empty file, exit 0), the command says
so and exits 1, and its hint names the command that gives the store trajectories of the status asked (it said
`ee traces approve` for ``--status rejected`` too). The same for every format, and for the library's writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.cli.app import app
from ee_middleware.export import export_jsonl, export_parquet
from tests.conftest import USER_TASK

runner = CliRunner()
FORMATS = ["jsonl", "parquet"]


def ee(*args: str) -> object:
    return runner.invoke(app, list(args))


@pytest.fixture
def recorded(react_graph, store_path: Path, tracer_provider, inventory) -> Path:
    """Three real runs, recorded through the public API, all pending."""
    agent = record_experience(react_graph, app="shop", store=store_path, tracer_provider=tracer_provider)
    for i in range(3):
        inventory.stock["pear"] = 0
        agent.invoke(USER_TASK, {"configurable": {"thread_id": f"t{i}"}})
    agent.recorder.close()
    return store_path


def _ids(store: Path) -> list[str]:
    result = ee("traces", "list", "--store", str(store), "--json")
    assert result.exit_code == 0, result.output
    return [row["id"] for row in json.loads(result.stdout)]


def _decide(store: Path, verb: str, ids: list[str]) -> None:
    result = ee("traces", verb, *ids, "--store", str(store), "--by", "alice")
    assert result.exit_code == 0, result.output


def _export(store: Path, fmt: str, out: Path, status: str) -> object:
    return ee("traces", "export", "--store", str(store), "--format", fmt, "--out", str(out), "--status", status)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_of_no_rejected_runs_keeps_the_earlier_export_and_names_reject(recorded: Path, tmp_path: Path, fmt: str) -> None:
    _decide(recorded, "approve", _ids(recorded)[:2])
    out = tmp_path / "exports" / f"train.{fmt}"
    first = _export(recorded, fmt, out, "approved")
    assert first.exit_code == 0 and "Wrote 2" in first.stdout, first.output
    before = out.read_bytes()

    result = _export(recorded, fmt, out, "rejected")
    assert result.exit_code == 1, result.output
    assert out.read_bytes() == before, "the earlier export was replaced"
    assert [p.name for p in out.parent.iterdir()] == [out.name], "nothing is left beside it"
    assert "Wrote 0" not in result.output
    assert "nothing exported: no rejected trajectories" in result.output and "(it holds 2 approved, 1 pending)" in result.output
    assert "reject some with `ee traces reject`" in result.output and "ee traces approve" not in result.output
    assert f"{out} was left as it was" in result.output


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    ("decided", "status", "hint"),
    [
        ("reject", "approved", "approve some with `ee traces approve`"),
        ("approve", "rejected", "reject some with `ee traces reject`"),
        ("approve", "pending", "record more: a run is pending until `ee traces approve` or `ee traces reject` decides it"),
    ],
)
def test_the_hint_fits_the_status_asked(recorded: Path, tmp_path: Path, fmt: str, decided: str, status: str, hint: str) -> None:
    _decide(recorded, decided, _ids(recorded))
    out = tmp_path / f"train.{fmt}"
    out.write_bytes(b"an earlier export\n")
    result = _export(recorded, fmt, out, status)
    assert result.exit_code == 1, result.output
    assert out.read_bytes() == b"an earlier export\n"
    assert f"no {status} trajectories in {recorded} (it holds 3 {decided.rstrip('e')}ed); {hint}." in result.output.replace("\n", " ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_of_nothing_to_a_new_path_makes_no_file_or_folder(recorded: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "new" / "sub" / f"train.{fmt}"
    result = _export(recorded, fmt, out, "approved")  # all 3 pending
    assert result.exit_code == 1, result.output
    assert "approve some with `ee traces approve`" in result.output and f"{out} was not written" in result.output
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_export_of_only_runs_that_decided_nothing_names_them_and_keeps_the_file(recorded: Path, tmp_path: Path, fmt: str) -> None:
    store = LocalExperienceStore(recorded)
    some = next(iter(store.iter_trajectories()))
    store.write([some.model_copy(update={"id": "no-model", "steps": []})])  # as a resumed run that called no model
    store.close()
    _decide(recorded, "reject", ["no-model"])
    out = tmp_path / f"train.{fmt}"
    out.write_bytes(b"an earlier export\n")
    result = _export(recorded, fmt, out, "rejected")
    assert result.exit_code == 1, result.output
    assert out.read_bytes() == b"an earlier export\n"
    said = " ".join(result.output.split())
    assert "Left out 1 that teach nothing (each: its run called no model: a resumed run" in said and "no-model" in said, said
    assert "every rejected trajectory" in result.output and "was left out" in result.output and "Wrote 0" not in result.output


def test_a_paused_run_awaiting_review_is_said_to_be_one(recorded: Path, tmp_path: Path) -> None:
    """Was (a sweep): said to be 'a resumed run that called no model', which a paused run is not."""
    store = LocalExperienceStore(recorded)
    some = next(t for t in store.iter_trajectories() if t.steps and t.steps[0].action.tool_call is not None)
    awaiting = some.steps[0].model_copy(update={"observation": None, "trajectory_id": "paused"})
    store.write([some.model_copy(update={"id": "paused", "status": "interrupted", "steps": [awaiting]})])
    store.close()
    _decide(recorded, "reject", ["paused"])
    result = _export(recorded, "jsonl", tmp_path / "train.jsonl", "rejected")
    said = " ".join(result.output.split())
    assert "(each: its run paused on calls awaiting a human review; the resumed run's trajectory holds them" in said, said
    assert "paused" in said and "called no model" not in said, said


@pytest.mark.parametrize("writer", [export_jsonl, export_parquet])
def test_the_library_writers_never_replace_a_file_with_an_empty_export(recorded: Path, tmp_path: Path, writer) -> None:
    store = LocalExperienceStore(recorded)  # every trajectory pending
    out = tmp_path / "exports" / "train.out"
    out.parent.mkdir()
    out.write_bytes(b"an earlier export\n")
    assert writer(store, out, status="rejected") == 0
    assert out.read_bytes() == b"an earlier export\n" and [p.name for p in out.parent.iterdir()] == [out.name]
    missing = tmp_path / "new" / "train.out"
    assert writer(store, missing, status="approved") == 0
    assert not (tmp_path / "new").exists()
    assert writer(store, out, status="pending") == 3  # an export that selects something still replaces it
    assert out.read_bytes() != b"an earlier export\n"
    store.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_run_that_failed_before_any_model_answered_is_named_with_its_error_not_as_a_resumed_run(
    recorded: Path, tmp_path: Path, fmt: str
) -> None:
    # found by a data sweep: a model whose provider was down ended the run at its first call (status error, no step); the
    # export said "a resumed run that the reviewed calls alone ended", of a run that was never paused nor resumed
    store = LocalExperienceStore(recorded)
    some = next(iter(store.iter_trajectories()))
    failed = {"id": "provider-down", "steps": [], "status": "error", "error": "ConnectionError: provider unreachable (HTTP 503)"}
    store.write([some.model_copy(update=failed)])
    store.close()
    _decide(recorded, "reject", ["provider-down"])
    result = _export(recorded, fmt, tmp_path / f"train.{fmt}", "rejected")
    assert result.exit_code == 1, result.output
    said = " ".join(result.output.split())
    assert "its run ended (error) before any model answered: ConnectionError: provider unreachable (HTTP 503)" in said, said
    assert "resumed" not in said, said
