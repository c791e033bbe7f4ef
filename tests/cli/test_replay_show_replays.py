"""``ee replay show TRAJECTORY`` of a trajectory replayed by several configurations says which replay each row is of.

After a second replay (another --seed, an --again, ee improve after a manual run) each state listed "#0 mutate, #0
mutate, #1 mutate, #1 mutate" with nothing saying which replay proposed what, nor that more than one was shown. Real
parts: BFCL expert trajectories, the real ``ee replay run`` in the real BFCL sandbox, the real local store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()


def _run(*args: str) -> Any:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result


def _replay(store: Path, *flags: str) -> dict[str, Any]:
    run = _run("replay", "run", "--store", str(store), "--sandbox", "bfcl", "--k", "2", "--limit", "1", "--no-progress", "--json", *flags)
    return json.loads(run.stdout)


def test_rows_of_several_replays_each_name_their_replay_and_the_header_counts_them(bfcl_store_path: Path) -> None:
    store = bfcl_store_path
    first = _replay(store)
    second = _replay(store, "--seed", "1")
    again = _replay(store, "--again")  # the first configuration's attempt 2: the same settings, another id
    ids = [first["replay_id"], second["replay_id"], again["replay_id"]]
    assert len(set(ids)) == 3 and first["done"] == second["done"] == again["done"] == 1
    rollouts = json.loads(_run("replay", "list", "--store", str(store), "--json").stdout)
    trajectory = rollouts[0]["trajectory_id"]

    text = _run("replay", "show", trajectory, "--store", str(store)).stdout
    assert "3 replays shown, each row names its replay; --replay-id ID shows one (e.g. --replay-id " in text, text
    for replay_id, seed in zip(ids, (0, 1, 0), strict=True):
        line = next(line for line in text.splitlines() if line.startswith(f"  replay {replay_id}: "))
        assert f"policy mutate, k=2, seed {seed}, sandbox bfcl" in line and "rollout(s) of this trajectory" in line, line
    assert f"attempt 2 of replay {first['replay_id']}" in text, "an --again says whose attempt it is"
    step0 = [r for r in rollouts if r["trajectory_id"] == trajectory and r["step_index"] == 0]
    # every row of step 0 carries its replay's label, a start of its id, and the rows come replay by replay
    labels = re.findall(r"replay ([0-9a-f]{6,12})\b(?!:)", text.split("step 0", 1)[1].split("step 1", 1)[0])
    assert len(labels) == len(step0), (labels, text)
    owners = [next(i for i in ids if i.startswith(label)) for label in labels]
    assert owners == sorted(owners, key=ids.index), "one replay's rows, then the next's"
    assert sorted(owners) == sorted(r["replay_id"] for r in step0)

    # One replay's rollouts: the rows and the header as they always were
    one = _run("replay", "show", trajectory, "--store", str(store), "--replay-id", second["replay_id"]).stdout
    assert "replays shown" not in one and not re.search(r"replay [0-9a-f]{6}", one.split("step 0", 1)[1]), one
    assert "#0 mutate" in one and "#1 mutate" in one

    # --json stays a list of rollouts, each with the replay_id it always had
    shown = json.loads(_run("replay", "show", trajectory, "--store", str(store), "--json").stdout)
    assert {r["replay_id"] for r in shown} == set(ids) and {r["trajectory_id"] for r in shown} == {trajectory}


def test_one_rollout_shown_by_its_id_has_no_replay_label(bfcl_store_path: Path) -> None:
    _replay(bfcl_store_path)
    _replay(bfcl_store_path, "--seed", "1")
    rollout = json.loads(_run("replay", "list", "--store", str(bfcl_store_path), "--json").stdout)[0]
    text = _run("replay", "show", rollout["id"], "--store", str(bfcl_store_path)).stdout
    assert "replays shown" not in text and f"#{rollout['branch_index']} mutate" in text


def test_replay_list_of_a_replay_id_the_store_has_not_is_an_error_naming_those_it_has(bfcl_store_path: Path) -> None:
    """A typo'd --replay-id listed nothing and exited 0 ("0 rollouts", `[]` with --json; `replay show` too): a script
    read that as a replay that stored nothing. Now exit 1, naming the store's replays and the near miss, as `ee datasets
    build --replay-id` says it (one check_replay_id)."""
    store = bfcl_store_path
    replayed = _replay(store)["replay_id"]
    typo = replayed[:-1] + ("0" if replayed[-1] != "0" else "1")
    result = runner.invoke(app, ["replay", "list", "--store", str(store), "--replay-id", typo, "--json"])
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "ConfigError" and f"--replay-id {typo}: {store} holds no replay of that id." in error["message"]
    assert f"Did you mean {replayed}?" in error["message"] and f"Its replays: {replayed} (policy mutate" in error["message"], error
    trajectory = json.loads(_run("replay", "list", "--store", str(store), "--json").stdout)[0]["trajectory_id"]
    shown = runner.invoke(app, ["replay", "show", trajectory, "--store", str(store), "--replay-id", typo])
    assert shown.exit_code == 1 and "holds no replay of that id" in shown.output, shown.output  # was: nothing listed, exit 0
    listed = json.loads(_run("replay", "list", "--store", str(store), "--replay-id", replayed, "--json").stdout)
    assert listed and {r["replay_id"] for r in listed} == {replayed}
