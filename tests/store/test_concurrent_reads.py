"""Reads are consistent while compaction folds segments and merges parts.

Writer processes record trajectories (each acknowledged id is logged only after ``write`` returned),
a compactor process folds and merges parts as often as it can (merging after 2 parts, so merges are
constant), and readers count every read against the ids acknowledged before it started: a read must
show every one of them, each with all of its steps, and no warning. Small in the default suite,
larger behind ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import os, sys
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing.store_conformance import sample_trajectory
    store = LocalExperienceStore(sys.argv[1])
    prefix, count, acks = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with open(acks, "a") as log:
        for i in range(count):
            store.write([sample_trajectory(f"{prefix}-{i}", steps=1 + i % 4)])
            log.write(f"{prefix}-{i}\\n")
            log.flush()
            if i % 3 == 2:
                store.close()  # as a long-running writer rolls over: the segment can be compacted
    store.close()
    """
)

COMPACTOR = textwrap.dedent(
    """
    import os, sys
    import ee_middleware.store.local as local
    import ee_middleware.store.manifest as manifest
    local.MAX_PARTS_BEFORE_MERGE = 2  # merge on nearly every pass
    manifest.RETIRED_PART_GRACE_S = float(sys.argv[3])  # 0: merged parts are deleted on the next pass
    store = local.LocalExperienceStore(sys.argv[1])
    passes = 0
    while not os.path.exists(sys.argv[2]):
        store.compact()
        passes += 1
    store.compact()
    print(passes + 1)
    """
)


@dataclass
class Counts:
    reads: int = 0
    consistent: int = 0
    acknowledged_checked: int = 0
    missing: int = 0
    incomplete_steps: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _acknowledged(acks: list[Path]) -> set[str]:
    ids: set[str] = set()
    for log in acks:
        if log.exists():
            ids.update(line for line in log.read_text().split("\n")[:-1] if line)  # whole lines only
    return ids


def _read_once(store_path: Path, acks: list[Path], counts: Counts) -> None:
    expected = _acknowledged(acks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            store = LocalExperienceStore(store_path, create=False)
            trajectories = {t.id: t for t in store.iter_trajectories()}
        except Exception as exc:  # counted and reported by the test
            counts.errors.append(f"{type(exc).__name__}: {exc}")
            trajectories = {}
    counts.reads += 1
    counts.acknowledged_checked += len(expected)
    missing = expected - set(trajectories)
    incomplete = [t.id for t in trajectories.values() if len(t.steps) != int(t.id.rsplit("-", 1)[1]) % 4 + 2]
    counts.missing += len(missing)
    counts.incomplete_steps += len(incomplete)
    # a socket or file an earlier test left for the garbage collector is reported wherever it is collected: not the read's
    read_warnings = [w for w in caught if not issubclass(w.category, ResourceWarning)]
    counts.warnings += [str(w.message) for w in read_warnings]
    if not missing and not incomplete and not read_warnings and len(counts.errors) == 0:
        counts.consistent += 1


def run_stress(store_path: Path, work: Path, *, writers: int, per_writer: int, grace_s: float = 0.0) -> tuple[Counts, int]:
    LocalExperienceStore(store_path)
    acks = [work / f"acks-{n}.txt" for n in range(writers)]
    stop = work / "stop"
    env = {**os.environ, "PYTHONWARNINGS": "error::UserWarning"}
    compactor = subprocess.Popen(
        [sys.executable, "-c", COMPACTOR, str(store_path), str(stop), str(grace_s)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(store_path), f"w{n}", str(per_writer), str(acks[n])], cwd=REPO, env=env)
        for n in range(writers)
    ]
    counts = Counts()
    deadline = time.monotonic() + 240
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            _read_once(store_path, acks, counts)
    finally:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        stop.touch()
        out, _ = compactor.communicate(timeout=120)
    assert compactor.returncode == 0 and all(p.returncode == 0 for p in procs), "a writer or the compactor failed"
    _read_once(store_path, acks, counts)  # after everything: all acknowledged, all compacted
    return counts, int(out.strip() or 0)


def _check(counts: Counts, passes: int, store_path: Path, total: int) -> None:
    report = (
        f"{counts.reads} reads, {counts.consistent} consistent, {counts.acknowledged_checked} acknowledged ids checked, "
        f"{counts.missing} missing, {counts.incomplete_steps} without all steps, {len(counts.warnings)} warnings, "
        f"{len(counts.errors)} errors, {passes} compaction passes"
    )
    print(report)
    assert counts.reads >= 2 and passes >= 2, f"too little overlap to prove anything: {report}"
    assert (counts.missing, counts.incomplete_steps, counts.warnings[:3], counts.errors[:3]) == (0, 0, [], []), report
    assert counts.consistent == counts.reads, report
    final = LocalExperienceStore(store_path, create=False)
    assert final.trajectories().height == total and final.trajectories()["id"].n_unique() == total


def test_reads_during_compaction_and_merges_are_consistent(store_path: Path, tmp_path: Path):
    counts, passes = run_stress(store_path, tmp_path, writers=4, per_writer=50)
    _check(counts, passes, store_path, 4 * 50)


@pytest.mark.slow
def test_reads_during_compaction_and_merges_are_consistent_at_size(store_path: Path, tmp_path: Path):
    counts, passes = run_stress(store_path, tmp_path, writers=6, per_writer=300)
    _check(counts, passes, store_path, 6 * 300)


def test_compactions_killed_at_any_moment_lose_nothing(store_path: Path, tmp_path: Path):
    """SIGKILL a merging compactor again and again: parts written before a swap are adopted, never lost."""
    import random
    import signal

    store = LocalExperienceStore(store_path)
    ids: list[str] = []
    rng = random.Random(7)
    stop = tmp_path / "never"
    killed = 0
    for round_ in range(8):
        for n in range(4):  # fresh work for every compactor: finished segments to fold, parts to merge
            batch = [f"k{round_}-{n}-{i}" for i in range(5)]
            store.write([sample_trajectory(i, steps=2) for i in batch])
            store.close()
            ids += batch
        proc = subprocess.Popen([sys.executable, "-c", COMPACTOR, str(store_path), str(stop), "0"], stdout=subprocess.DEVNULL, cwd=REPO)
        time.sleep(rng.uniform(0.3, 1.2))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=30)
    assert killed >= 4, "the compactor was never killed mid-work: the test proved nothing"
    reader = LocalExperienceStore(store_path, create=False)
    assert sorted(reader.trajectories()["id"].to_list()) == sorted(ids)
    assert all(len(t.steps) == 3 for t in reader.iter_trajectories())
    reader.compact()
    final = LocalExperienceStore(store_path, create=False)
    assert final.trajectories().height == len(ids) and final.steps().height == 3 * len(ids)
    assert not list(store_path.rglob("*.tmp")), "temporary files of killed compactions are cleaned up"
