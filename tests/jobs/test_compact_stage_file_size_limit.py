"""``ee improve``'s compaction after replay (``jobs/stages.py:_compact``) under a file-size limit (``ulimit -f``,
systemd's ``LimitFSIZE=``): the store is left as it is and the run's decisions say why; the stage does not fail. A real
limit set in a child process, a real store, run folder and stage context."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[2]

COMPACT_STAGE = """
import json, resource, sys
from pathlib import Path
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.runs import RunsDir
from ee_middleware.jobs.stages import QuietProgress, StageContext, StageResult, _compact
from ee_middleware.store.registry import open_store
folder, limit = Path(sys.argv[1]), int(sys.argv[2])
config = ImproveConfig(store=str(folder / "experience"), app="support-bot", registry=str(folder / "registry"),
                       runs=folder / "runs", base_model="/models/compact-test-base")
runs = RunsDir(config.runs)
ctx = StageContext(config, runs.create("improve", config.describe(), "hash"), runs, QuietProgress(), None)
store = open_store(config.store, create=False)
result = StageResult()
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # as `ulimit -f` or systemd's LimitFSIZE= set it
_compact(ctx, store, result)
store.close()
print(json.dumps({"decisions": result.decisions, "outputs": result.outputs}))
"""


def test_the_compaction_stage_under_a_file_size_limit_says_so_in_the_decisions_and_does_not_fail(tmp_path: Path) -> None:
    """Was: ``polars.exceptions.ComputeError`` out of the stage (it tolerates only ``EEError``): the nightly run failed at
    replay every night while the spool kept growing."""
    store = LocalExperienceStore(tmp_path / "experience")
    ids = [f"t{i}" for i in range(300)]
    store.write([sample_trajectory(i, steps=4) for i in ids])
    store.close()
    limit = 4096
    done = subprocess.run(
        [sys.executable, "-c", COMPACT_STAGE, str(tmp_path), str(limit)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (decision,) = result["decisions"]
    assert "not compacted after replay" in decision and f"file-size limit ({limit} bytes" in decision, decision
    assert "compacted_segments" not in result["outputs"]
    assert LocalExperienceStore(tmp_path / "experience").trajectories()["id"].to_list() == ids
