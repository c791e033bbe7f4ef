"""`ee curriculum run` stopped part way (Ctrl-C, SIGTERM): it says how far it got and what it stored, exits 130, and a
second run does not store the same rollout twice. Before, it ended with the bare ``interrupted:`` line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import ScriptedChatServer
from tests.cli.test_experience_timeout import _policy
from tests.evals.test_curriculum import _tasks

VERDICT = json.dumps({"reasoning": "it listed the folder", "reward": 1})

# approve_if runs after the first kept rollout is stored: it stops the run as a Ctrl-C (or a supervisor's SIGTERM) would
_STOPPING_RULE = """
import os, signal

def stop(trajectory):
    os.kill(os.getpid(), signal.{signal})
    return False
"""


@pytest.mark.parametrize(("signal_name", "as_json"), [("SIGINT", False), ("SIGTERM", True)])
def test_a_stopped_curriculum_run_says_what_it_stored_and_a_rerun_stores_nothing_twice(
    bfcl_store_path: Path, tmp_path: Path, signal_name: str, as_json: bool
) -> None:
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    (tmp_path / "stopping_rule.py").write_text(_STOPPING_RULE.format(signal=signal_name))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    with (
        ScriptedChatServer(lambda body: _policy(body["messages"]), models=["p"]) as policy,
        ScriptedChatServer(lambda body: VERDICT, models=["j"]) as judge,
    ):
        args = [sys.executable, "-m", "ee_middleware.cli", "curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p"]
        args += ["--sandbox", "bfcl", "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--k", "3"]
        stopped = subprocess.run(
            [*args, "--approve-if", "stopping_rule:stop", *(["--json"] if as_json else [])],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        again = subprocess.run([*args, "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr, stopped.stderr
    line = " ".join(stopped.stderr.split())
    said = "SIGINT (Ctrl-C)" if signal_name == "SIGINT" else signal_name
    assert f"interrupted: the curriculum run stopped ({said}) in rollout 1 of its 3, with 1 trajectories stored" in line, line
    if as_json:
        partial = json.loads(stopped.stdout)
        assert (partial["rollouts"], partial["stored"], partial["error"]["exit_code"]) == (1, 1, 130), partial
    store = LocalExperienceStore(bfcl_store_path)
    curriculum = store.trajectories().filter(source="curriculum")
    store.close()
    assert curriculum.height == 1 and curriculum["approval"].to_list() == ["pending"]
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["stored"], summary["already_stored"], summary["repeats"]) == (0, 1, 2), summary
