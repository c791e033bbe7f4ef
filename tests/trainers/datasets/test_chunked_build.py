"""Dataset builds in bounded memory (issue 11.4): the rows do not depend on how the build is cut.

A build reads, builds and writes one group of trajectories at a time. These tests build the same
real replayed BFCL store with groups of one trajectory (many parts) and with one group, and check
every written row, its order and the file metadata are the same, and the same as the whole-source
builders give (the build as it was before it was cut into groups). Memory is checked through what
is observable without timing: no whole table is ever loaded, and no group holds more than its
budget of trajectories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.capture.store_redaction import store_redactor
from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets, synthetic_rank
from ee_middleware.trainers.datasets.il import build_il
from ee_middleware.trainers.datasets.iwm import IWMOptions, build_iwm
from ee_middleware.trainers.datasets.privacy import guard_rows
from ee_middleware.trainers.datasets.source import SourceReader, load_source
from ee_middleware.trainers.datasets.split import SplitRule, heldout_ids
from ee_middleware.trainers.datasets.sr import SROptions, build_sr
from ee_middleware.trainers.datasets.teachers import TemplateTeacher

TINY = 1e-6
"""chunk_mb so small that every trajectory is its own group."""


def _files(out: Path) -> list[Path]:
    return sorted(p.relative_to(out) for p in out.rglob("*.parquet"))


def _metadata(path: Path) -> dict[str, str]:
    return {k: v for k, v in pl.read_parquet_metadata(path).items() if k != "ARROW:schema"}


@pytest.fixture(params=["spool", "compacted"])
def store_path(request: pytest.FixtureRequest, replayed_store: Path) -> Path:
    if request.param == "compacted":
        LocalExperienceStore(replayed_store).compact()
        assert not list((replayed_store / "spool").glob("*.jsonl"))
    return replayed_store


def _split(store_path: Path) -> dict:
    """A 0.4 held-out share under the first seed that leaves at least two trajectories on each side: the
    fixture's trajectory ids are random, so a fixed seed sometimes holds out all of them or all but one."""
    frame = LocalExperienceStore(store_path).trajectories(status="approved")
    seed = next(s for s in range(100) if 2 <= len(heldout_ids(frame, SplitRule(share=0.4, seed=s))) <= frame.height - 2)
    return {"heldout_share": 0.4, "seed": seed}


@pytest.mark.parametrize("settings", [{}, {"split": True, "iwm_max_error_share": 0.3}, {"iwm_max_error_share": 1.0}])
def test_many_groups_write_the_same_rows_in_the_same_order_as_one(store_path: Path, tmp_path: Path, settings: dict) -> None:
    settings = {k: v for k, v in settings.items() if k != "split"} | (_split(store_path) if "split" in settings else {})
    many = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "many", chunk_mb=TINY, **settings))
    one = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "one", chunk_mb=1024, **settings))
    trajectories = many["trajectories"]
    assert many["datasets"]["il"]["parts"] >= trajectories - len(many.get("split", {}).get("heldout_trajectories", []))
    assert one["datasets"]["il"]["parts"] == 1
    assert _files(tmp_path / "many") == _files(tmp_path / "one") and _files(tmp_path / "one")
    for rel in _files(tmp_path / "one"):
        a, b = pl.read_parquet(tmp_path / "many" / rel), pl.read_parquet(tmp_path / "one" / rel)
        assert a.height > 0 and a.equals(b), rel  # every column of every row, in order
        assert _metadata(tmp_path / "many" / rel) == _metadata(tmp_path / "one" / rel)
    for kind, info in one["datasets"].items():
        assert {k: v for k, v in info.items() if k not in ("seconds", "parts", "path")} == {
            k: v for k, v in many["datasets"][kind].items() if k not in ("seconds", "parts", "path")
        }
    assert not [p for p in (tmp_path / "many").rglob(".*")], "no part folder or temporary file is left"


def test_grouped_build_gives_the_rows_of_the_whole_source_builders(store_path: Path, tmp_path: Path) -> None:
    """The build before it was cut into groups: each builder on the whole source, then the privacy guard."""
    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "out", chunk_mb=TINY, iwm_max_error_share=0.2))
    store = LocalExperienceStore(store_path)
    source = load_source(store)
    redactor = store_redactor(store, create_salt=False)
    whole = {
        "il": build_il(source),
        "iwm": build_iwm(source, IWMOptions(max_error_share=0.2)),
        "sr": build_sr(source, TemplateTeacher(), SROptions())[0],
    }
    assert summary["source_hash"] == source.source_hash
    for kind, frame in whole.items():
        expected, _ = guard_rows(kind, frame, redactor)
        assert pl.read_parquet(tmp_path / "out" / f"{kind}.parquet").equals(expected), kind
    assert whole["iwm"].height < build_iwm(source, IWMOptions(max_error_share=1.0)).height  # the cap was active


def test_the_build_never_loads_a_whole_table_and_groups_stay_within_budget(
    store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def whole_load(self: LocalExperienceStore) -> None:
        raise AssertionError("the build loaded every table of the store at once")

    monkeypatch.setattr(LocalExperienceStore, "_load", whole_load)
    loads: list[tuple[int, int]] = []
    original = SourceReader.load

    def recording(self: SourceReader, ids, content_hash, **options):  # type: ignore[no-untyped-def]
        source = original(self, ids, content_hash, **options)
        loads.append((len(ids), source.steps.height))
        return source

    monkeypatch.setattr(SourceReader, "load", recording)
    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "out", chunk_mb=TINY))
    assert loads and all(n == 1 for n, _ in loads)  # one trajectory per group at this budget
    assert max(steps for _, steps in loads) < summary["steps"]
    index = SourceReader(LocalExperienceStore(store_path)).index()
    assert "state_json" not in index.steps.columns and "observation" not in index.rollouts.columns  # keys only


def _add_curriculum_trajectories(store_path: Path, n: int) -> list[str]:
    store = LocalExperienceStore(store_path)
    base = list(store.iter_trajectories(status="approved"))
    copies = []
    for i in range(n):
        original, new_id = base[i % len(base)], f"curriculum-{i:02d}"
        steps = [s.model_copy(update={"trajectory_id": new_id}) for s in original.steps]
        # a run of its own: its own trace (two trajectories of one trace holding one decision teach it once)
        copies.append(original.model_copy(update={"id": new_id, "source": "curriculum", "steps": steps, "trace_id": f"{i + 1:032x}"}))
    store.write(copies)
    store.approve([c.id for c in copies], by="test")
    store.close()
    return [c.id for c in copies]


def test_max_synthetic_share_caps_curriculum_trajectories_chosen_by_seed(bfcl_store_path: Path, tmp_path: Path) -> None:
    synthetic = _add_curriculum_trajectories(bfcl_store_path, 5)
    real = LocalExperienceStore(bfcl_store_path).trajectories(status="approved").height - len(synthetic)

    def build(name: str, *flags: str) -> tuple[dict, set[str]]:
        out = tmp_path / name
        result = CliRunner().invoke(
            app, ["datasets", "build", "--store", str(bfcl_store_path), "--out", str(out), "--kinds", "il", *flags, "--json"]
        )
        assert result.exit_code == 0, result.output
        ids = set(pl.read_parquet(out / "il.parquet")["trajectory_id"].to_list())
        return json.loads((out / "datasets.json").read_text()), ids & set(synthetic)

    summary, kept = build("uncapped")
    assert kept == set(synthetic) and summary["config"]["max_synthetic_share"] is None
    # without a cap they are still counted: a dataset says how much of it is rollouts on generated tasks
    assert summary["synthetic_tasks"] == {
        "source": "curriculum",
        "max_share": None,
        "synthetic_trajectories": len(synthetic),
        "kept": len(synthetic),
        "left_out": 0,
        "real_trajectories": real,
    }
    said = CliRunner().invoke(app, ["datasets", "build", "--store", str(bfcl_store_path), "--out", str(tmp_path / "told"), "--kinds", "il"])
    assert said.exit_code == 0 and f"{len(synthetic)} trajectories rolled out on generated tasks beside {real} real" in " ".join(
        said.output.split()
    ), said.output

    summary, kept = build("capped", "--max-synthetic-share", "0.25", "--seed", "7")
    allowed = int(0.25 / 0.75 * real)
    assert 0 < allowed < len(synthetic)
    assert kept == set(sorted(synthetic, key=lambda i: synthetic_rank(i, 7))[:allowed])
    assert summary["config"]["max_synthetic_share"] == 0.25
    assert summary["synthetic_tasks"] == {
        "source": "curriculum",
        "max_share": 0.25,
        "synthetic_trajectories": len(synthetic),
        "kept": allowed,
        "left_out": len(synthetic) - allowed,
        "real_trajectories": real,
    }
    assert summary["trajectories"] == real + allowed
    assert build("again", "--max-synthetic-share", "0.25", "--seed", "7")[1] == kept  # the same choice every build

    summary, kept = build("none", "--max-synthetic-share", "0")
    assert not kept and summary["trajectories"] == real
    assert build("all", "--max-synthetic-share", "1")[1] == set(synthetic)

    bad = CliRunner().invoke(
        app, ["datasets", "build", "--store", str(bfcl_store_path), "--out", str(tmp_path / "x"), "--max-synthetic-share", "1.5"]
    )
    assert bad.exit_code != 0 and "max-synthetic-share" in bad.output


def test_max_synthetic_share_caps_the_training_side_after_the_split_and_reports_each_side(bfcl_store_path: Path, tmp_path: Path) -> None:
    """The cap is on what is trained on. Before: it was applied before the held-out split, counting held-out real
    trajectories, so holding one out left training 2 curriculum trajectories of 7 (0.29 > 0.25), and datasets.json said
    real_trajectories: 6 (5 were trained on)."""
    store = LocalExperienceStore(bfcl_store_path)
    base = list(store.iter_trajectories(status="approved"))
    variants = []
    for i in range(5):  # rollouts on tasks of their own (no thread, a task no other trajectory asks), as a curriculum run stores
        original, new_id = base[i % len(base)], f"curriculum-{i:02d}"
        steps = [s.model_copy(update={"trajectory_id": new_id}) for s in original.steps]
        # (a trace of their own: runs of one trace, one within the other's time, go to one side)
        update = {"id": new_id, "source": "curriculum", "thread_id": None, "task": f"variant {i}", "steps": steps, "trace_id": None}
        variants.append(original.model_copy(update=update))
    store.write(variants)
    store.approve([v.id for v in variants], by="test")
    store.close()
    real = [t.id for t in base]
    assert len(real) == 6
    (tmp_path / "heldout.txt").write_text(f"{real[0]}\ncurriculum-00\n")
    out = tmp_path / "out"
    args = ["datasets", "build", "--store", str(bfcl_store_path), "--out", str(out), "--kinds", "il", "--seed", "0"]
    result = CliRunner().invoke(app, [*args, "--max-synthetic-share", "0.25", "--heldout-ids", str(tmp_path / "heldout.txt")])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "datasets.json").read_text())
    trained = set(pl.read_parquet(out / "il.parquet")["trajectory_id"].to_list())
    synthetic_trained = {i for i in trained if i.startswith("curriculum-")}
    assert len(synthetic_trained) == int(0.25 / 0.75 * 5) == 1, "at most 1 beside the 5 real trajectories trained on"
    assert synthetic_trained == {sorted([f"curriculum-{i:02d}" for i in range(1, 5)], key=lambda i: synthetic_rank(i, 0))[0]}
    assert set(summary["split"]["train_trajectories"]) == trained == set(real[1:]) | synthetic_trained
    assert set(summary["split"]["heldout_trajectories"]) == {real[0], "curriculum-00"}
    assert set(pl.read_parquet(out / "heldout" / "il.parquet")["trajectory_id"].to_list()) == {real[0], "curriculum-00"}
    assert summary["synthetic_tasks"] == {
        "source": "curriculum",
        "max_share": 0.25,
        "synthetic_trajectories": 4,
        "kept": 1,
        "left_out": 3,
        "real_trajectories": 5,
        "heldout": {"synthetic_trajectories": 1, "real_trajectories": 1},
    }
    assert summary["trajectories"] == 5 + 1 + 2, "the trajectories the build used: training and held out"
    assert "kept 1 of 4 trajectories beside 5 real ones (max share 0.25), left out 3 in training" in " ".join(result.stdout.split())

    only_synthetic = tmp_path / "real.txt"  # every real trajectory held out: the cap leaves nothing to train on
    only_synthetic.write_text("\n".join(real))
    result = CliRunner().invoke(app, [*args, "--max-synthetic-share", "0.25", "--heldout-ids", str(only_synthetic)])
    assert result.exit_code != 0 and "leaves nothing to train on" in result.output, result.output

    # every curriculum trajectory held out, no cap: they are counted all the same (review R13 L4: no synthetic_tasks)
    (tmp_path / "variants.txt").write_text("\n".join(f"curriculum-{i:02d}" for i in range(5)))
    held = tmp_path / "held"
    result = CliRunner().invoke(app, [*args[:5], str(held), *args[6:], "--heldout-ids", str(tmp_path / "variants.txt")])
    assert result.exit_code == 0, result.output
    summary = json.loads((held / "datasets.json").read_text())
    assert summary["synthetic_tasks"]["synthetic_trajectories"] == 0 and summary["synthetic_tasks"]["max_share"] is None
    assert summary["synthetic_tasks"]["heldout"] == {"synthetic_trajectories": 5, "real_trajectories": 0}


class _EagerOnlyStore:
    """A store without lazy reads (only the ExperienceStore protocol's frames), as a plug-in store may be."""

    def __init__(self, store: LocalExperienceStore) -> None:
        self._store = store
        self.root = store.root

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        if name in ("scan", "trajectory_index"):
            raise AttributeError(name)
        return getattr(self._store, name)


def test_a_store_without_lazy_reads_builds_the_same_rows(store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.store import registry

    settings = {"chunk_mb": TINY, **_split(store_path)}
    lazy = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "lazy", **settings))
    monkeypatch.setattr(registry, "open_store", lambda spec, create=True: _EagerOnlyStore(LocalExperienceStore(spec, create=create)))
    eager = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "eager", **settings))
    assert eager["source_hash"] == lazy["source_hash"] and eager["datasets"]["il"]["parts"] > 1
    for rel in _files(tmp_path / "lazy"):
        assert pl.read_parquet(tmp_path / "eager" / rel).equals(pl.read_parquet(tmp_path / "lazy" / rel)), rel


def test_parts_left_by_a_killed_build_are_removed_and_a_running_builds_are_kept(replayed_store: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = out / f".il.parquet.parts-{finished.stdout.strip()}-abc"  # a build killed before it removed its parts
    live = out / f".il.parquet.parts-{os.getpid()}-def"  # a build still running (this process)
    for folder in (dead, live):
        folder.mkdir()
        (folder / "part-000000.parquet").write_bytes(b"x")
    build_datasets(DatasetConfig.load(store=replayed_store, out=out, kinds="il"))
    assert not dead.exists() and live.exists()
    assert pl.read_parquet(out / "il.parquet").height > 0


def _add_rollouts_a_build_leaves_out(store_path: Path) -> str:
    """Rollouts on the first tool-call step: a synthetic one, an unrestored one, and one of another
    replay; returns the store's own replay id."""
    from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout, ToolCall

    store = LocalExperienceStore(store_path)
    (replay_id,) = store.rollouts()["replay_id"].unique().to_list()
    trajectory = next(iter(store.iter_trajectories(status="approved")))
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)

    def rollout(name: str, branch: int, **fields) -> Rollout:  # type: ignore[no-untyped-def]
        return Rollout(
            id=f"left-out-{name}",
            replay_id=fields.pop("replay_id", replay_id),
            trajectory_id=trajectory.id,
            step_index=step.index,
            branch_index=branch,
            action=Action(kind="tool_call", tool_call=ToolCall(id="x", name="ls", arguments={"a": name})),
            proposer=ProposerInfo(policy="test"),
            observation=Observation(content=f"{name} outcome"),
            sandbox="bfcl",
            duration_ms=1.0,
            **fields,
        )

    for record, rollouts in (
        (replay_id, [rollout("synthetic", 90, synthetic=True), rollout("unrestored", 91, unrestored=["a"])]),
        ("other", [rollout("other", 0, replay_id="other")]),
    ):
        store.write_replay(
            ReplayRecord(replay_id=record, trajectory_id=trajectory.id, status="done", policy="t", sandbox="bfcl", k=1, seed=0), rollouts
        )
    store.close()
    return replay_id


@pytest.mark.parametrize("own_replay", [False, True])
def test_grouped_reads_leave_out_the_rollouts_the_whole_source_reader_leaves_out(
    replayed_store: Path, tmp_path: Path, own_replay: bool
) -> None:
    """The group reader filters rollouts as load_source does (replay id, synthetic, unrestored), and
    counts the unrestored ones in the index."""
    own = _add_rollouts_a_build_leaves_out(replayed_store)
    replay_id = own if own_replay else None
    summary = build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / "out", chunk_mb=TINY, replay_id=replay_id))
    store = LocalExperienceStore(replayed_store)
    source = load_source(store, replay_id=replay_id)
    assert source.unrestored_rollouts == 1 and summary["redaction"]["unrestored_rollouts_left_out"] == 1
    assert summary["rollouts"] == source.rollouts.height and summary["source_hash"] == source.source_hash
    assert ("left-out-other" in source.rollouts["id"].to_list()) is not own_replay
    redactor = store_redactor(store, create_salt=False)
    for kind, frame in {"iwm": build_iwm(source), "sr": build_sr(source, TemplateTeacher(), SROptions())[0]}.items():
        expected, _ = guard_rows(kind, frame, redactor)
        assert pl.read_parquet(tmp_path / "out" / f"{kind}.parquet").equals(expected), kind
    iwm = pl.read_parquet(tmp_path / "out" / "iwm.parquet")
    assert not iwm.filter(pl.col("completion").str.contains("synthetic outcome|unrestored outcome")).height


def test_one_pass_over_the_stored_order_feeds_il_sr_and_iwms_expert_steps(
    replayed_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each trajectory's steps are read twice per build of every kind: once with IWM's rollout rows
    (trajectories sorted) and once for IL, SR and IWM's expert-step rows together (storage order)."""
    loads: list[tuple[tuple[str, ...], bool]] = []
    original = SourceReader.load

    def recording(self: SourceReader, ids, content_hash, **options):  # type: ignore[no-untyped-def]
        loads.append((tuple(ids), options.get("rollouts", True)))
        return original(self, ids, content_hash, **options)

    monkeypatch.setattr(SourceReader, "load", recording)
    summary = build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / "out", chunk_mb=TINY))
    read = [i for ids, _ in loads for i in ids]
    assert len(read) == 2 * summary["trajectories"] and set(read) == set(pl.read_parquet(tmp_path / "out" / "il.parquet")["trajectory_id"])
    assert all(rollouts for _, rollouts in loads)  # SR reads the rollouts of the shared pass
    loads.clear()
    build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / "il-iwm", chunk_mb=TINY, kinds="il,iwm"))
    assert len(loads) == 2 * summary["trajectories"] and sum(rollouts for _, rollouts in loads) == summary["trajectories"]


@pytest.mark.parametrize("settings", [{"iwm_max_error_share": 0.2, "split": True}, {"iwm_include_expert_steps": False}])
def test_kinds_built_together_are_the_kinds_built_alone(replayed_store: Path, tmp_path: Path, settings: dict) -> None:
    settings = {k: v for k, v in settings.items() if k != "split"} | (_split(replayed_store) if "split" in settings else {})
    together = build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / "all", chunk_mb=TINY, **settings))
    for kind in ("il", "iwm", "sr"):
        alone = build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / kind, chunk_mb=TINY, kinds=kind, **settings))
        for rel in _files(tmp_path / kind):
            assert pl.read_parquet(tmp_path / kind / rel).equals(pl.read_parquet(tmp_path / "all" / rel)), rel
            assert _metadata(tmp_path / kind / rel) == _metadata(tmp_path / "all" / rel)
        for side in ("train", "heldout"):
            if kind in _kind_infos(alone)[side]:
                assert _kind_infos(alone)[side][kind] == _kind_infos(together)[side][kind], (side, kind)


def _kind_infos(summary: dict) -> dict[str, dict]:
    """What datasets.json records of each kind, of each side of the split, but timings and paths."""
    sides = {"train": summary["datasets"], "heldout": summary.get("split", {}).get("datasets", {})}
    return {
        side: {kind: {k: v for k, v in info.items() if k not in ("seconds", "path")} for kind, info in kinds.items()}
        for side, kinds in sides.items()
    }


def test_a_kinds_parts_are_removed_as_soon_as_they_are_merged(store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the next kind merges, the parts of the kinds already merged are gone (disk: parts + one merge, not all)."""
    from ee_middleware.trainers.datasets import build

    out = tmp_path / "out"
    left_at_each_commit: list[list[str]] = []
    real_commit = build.PartWriter.commit

    def commit(self: build.PartWriter) -> None:
        left_at_each_commit.append(sorted(p.name.split(".parts-")[0] for p in out.glob(".build-*/.*.parts-*")))
        real_commit(self)

    monkeypatch.setattr(build.PartWriter, "commit", commit)
    build_datasets(DatasetConfig.load(store=store_path, out=out, chunk_mb=TINY, kinds=["il", "iwm"]))
    assert left_at_each_commit == [[".il.parquet", ".iwm.parquet"], [".il.parquet"]] or left_at_each_commit == [
        [".il.parquet", ".iwm.parquet"],
        [".iwm.parquet"],
    ], left_at_each_commit
