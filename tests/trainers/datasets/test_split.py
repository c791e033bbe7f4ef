"""Held-out splits by trajectory: built beside the training files, recorded, stable, and never trained on."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.registry import open_store
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.split import SPLIT_METADATA_KEY, SplitRule, heldout_ids, in_share, nested_runs, split_trajectories

runner = CliRunner()


def trajectory_ids(path: Path) -> set[str]:
    return set(pl.read_parquet(path)["trajectory_id"].to_list())


def test_a_seeded_share_builds_heldout_files_that_share_no_trajectory_with_training(replayed_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    # The recorded trajectories' ids are random, so a 0.4 share of 6 sometimes holds out all or none
    # of them under a given seed: take the first seed that splits them (the rule is what is tested).
    frame = open_store(replayed_store).trajectories(status="approved")
    approved = set(frame["id"].to_list())
    seed = next(s for s in range(100) if 0 < len(heldout_ids(frame, SplitRule(share=0.4, seed=s))) < len(approved))
    args = ["datasets", "build", "--store", str(replayed_store), "--out", str(out), "--kinds", "il,iwm", "--heldout-share", "0.4"]
    result = runner.invoke(app, [*args, "--seed", str(seed), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    split = summary["split"]
    held, train = set(split["heldout_trajectories"]), set(split["train_trajectories"])
    assert held and train and not held & train and held | train == approved
    assert held == heldout_ids(frame, SplitRule(share=0.4, seed=seed))
    assert split["rule"] == {**split["rule"], "share": 0.4, "seed": seed, "unit": "thread_or_task"}
    for kind in ("il", "iwm"):
        assert trajectory_ids(out / f"{kind}.parquet") <= train
        assert trajectory_ids(out / "heldout" / f"{kind}.parquet") <= held
        assert pl.read_parquet_metadata(out / "heldout" / f"{kind}.parquet").get(SPLIT_METADATA_KEY) == "heldout"
        assert SPLIT_METADATA_KEY not in (pl.read_parquet_metadata(out / f"{kind}.parquet") or {})
        assert split["datasets"][kind]["rows"] == pl.read_parquet(out / "heldout" / f"{kind}.parquet").height > 0
    assert json.loads((out / "datasets.json").read_text())["split"] == split
    text = runner.invoke(
        app,
        [
            "datasets",
            "build",
            "--store",
            str(replayed_store),
            "--out",
            str(out),
            "--kinds",
            "il",
            "--heldout-share",
            "0.4",
            "--seed",
            str(seed),
        ],
    )
    assert "heldout/il.parquet" in text.stdout and f"held out: {len(held)} trajectories" in text.stdout


def test_the_share_is_stable_as_the_store_grows() -> None:
    ids = [f"traj-{i:04d}" for i in range(2000)]
    frame = pl.DataFrame(
        {"id": ids, "app": ["a"] * len(ids), "started_at": [None] * len(ids)}, schema_overrides={"started_at": pl.Datetime("us", "UTC")}
    )
    rule = SplitRule(share=0.2, seed=7)
    small, large = heldout_ids(frame.head(500), rule), heldout_ids(frame, rule)
    assert small == {i for i in large if i in set(ids[:500])}, "adding trajectories never moves an old one across the split"
    assert 0.15 < len(large) / len(ids) < 0.25
    assert heldout_ids(frame, SplitRule(share=0.2, seed=8)) != large, "the seed picks another split"
    assert all(in_share(i, 0.2, 7) == (i in large) for i in ids[:50])


def test_ids_app_and_time_rules(replayed_store: Path, tmp_path: Path) -> None:
    frame = open_store(replayed_store).trajectories(status="approved").select("id", "app", "started_at")
    first = sorted(frame["id"].to_list())[0]
    id_file = tmp_path / "ids.txt"
    id_file.write_text(f"# held out for the regression suite\n{first}\n\n")
    assert heldout_ids(frame, SplitRule(ids=(first, "no-such-id"))) == {first}
    apps = set(frame["app"].to_list())
    assert heldout_ids(frame, SplitRule(app=next(iter(apps)))) == set(frame.filter(pl.col("app") == next(iter(apps)))["id"].to_list())
    latest = frame["started_at"].max()
    assert heldout_ids(frame, SplitRule(started_after=latest)) == set(frame.filter(pl.col("started_at") >= latest)["id"].to_list())
    naive_future = datetime(2999, 1, 1)
    assert heldout_ids(frame, SplitRule(started_before=naive_future)) == set(frame["id"].to_list())
    assert heldout_ids(frame, SplitRule(started_after=datetime(2999, 1, 1, tzinfo=UTC))) == set()
    summary = build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / "d", kinds="il", heldout_ids=id_file))
    assert summary["split"]["heldout_trajectories"] == [first]


def test_holding_out_everything_is_refused(replayed_store: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds out all .* nothing is left to train on"):
        build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path, kinds="il", heldout_started_before="2999-01-01"))
    with pytest.raises(ConfigError, match="Cannot read the held-out id list"):
        build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path, kinds="il", heldout_ids=tmp_path / "missing.txt"))


# --- Units: runs of one thread, runs of one task ---------------------------------------------------------------------
# A real create_agent graph on a real checkpointer, recorded with the real OTel SDK into a real store; datasets built by
# `ee datasets build`'s own code. Runs (in this order): 1 t1 "pears"; 2 t5 "kiwis"; 3 t3 "figs"; 4 t1 "plums" (the
# thread's second run: its state holds run 1's messages); 5 t5 "limes"; 6 t2 "pears" again, in other case and spacing.

PEARS = "Do we have pears? If not, order 5."
REQUESTS: dict[str, tuple[str, list[AIMessage]]] = {
    "pears": (
        PEARS,
        [
            AIMessage(content="", tool_calls=[tool_call("look_up", item="pear")]),
            AIMessage(content="", tool_calls=[tool_call("order", item="pear", quantity=5)]),
            AIMessage(content="Pears were out; I ordered 5."),
        ],
    ),
    "kiwis": ("Check the kiwis.", [AIMessage(content="", tool_calls=[tool_call("look_up", item="kiwi")]), AIMessage(content="4 kiwis.")]),
    "figs": (
        "Order 2 figs.",
        [AIMessage(content="", tool_calls=[tool_call("order", item="fig", quantity=2)]), AIMessage(content="2 figs.")],
    ),
    "plums": (
        "How many plums are left?",
        [AIMessage(content="", tool_calls=[tool_call("look_up", item="plum")]), AIMessage(content="7 plums.")],
    ),
    "limes": (
        "Order 3 limes.",
        [AIMessage(content="", tool_calls=[tool_call("order", item="lime", quantity=3)]), AIMessage(content="3 limes.")],
    ),
    "dates": ("Any dates?", [AIMessage(content="", tool_calls=[tool_call("look_up", item="date")]), AIMessage(content="No dates.")]),
}
NIGHT_1 = [("t1", PEARS), ("t5", "Check the kiwis."), ("t3", "Order 2 figs.")]
NIGHT_2 = [("t1", "How many plums are left?"), ("t5", "Order 3 limes."), ("t2", f"  do we have PEARS?\n  {PEARS[18:].upper()}  ")]
KINDS_BUILT = ("il", "iwm")


def _script(messages: list[Any], tools: Any) -> AIMessage:
    """The expert: the reply for the last request (whitespace and case aside) and the model's turn since it."""
    turn = 0
    for message in reversed(messages):
        if message.type == "human":
            request = " ".join(str(message.content).split()).lower()
            break
        turn += message.type == "ai"
    [script] = [s for text, s in REQUESTS.values() if " ".join(text.split()).lower() == request]
    return script[min(turn, len(script) - 1)]


def _record(store: Path, runs: list[tuple[str, str]], *, approve: bool = True, saver: InMemorySaver | None = None) -> list[str]:
    """Record ``runs`` (thread, request) through a real create_agent graph (``saver``: the checkpointer, shared across
    nights so a thread goes on); approve them unless not ``approve``; their ids, in order."""
    stock = {"pear": 0, "kiwi": 4, "plum": 7, "date": 0}

    @tool
    def look_up(item: str) -> str:
        """How many of an item are in stock."""
        return f"{item}: {stock.get(item, 0)} in stock"

    @tool
    def order(item: str, quantity: int) -> str:
        """Order more of an item."""
        stock[item] = stock.get(item, 0) + quantity
        return f"ordered {quantity} {item}; now {stock[item]}"

    graph = create_agent(ScriptedChatModel(policy=_script), [look_up, order], system_prompt="You run a fruit shop.", checkpointer=saver)
    before = set(LocalExperienceStore(store).trajectories()["id"].to_list()) if store.exists() else set()
    agent = record_experience(graph, app="shop", store=store)
    for thread, request in runs:
        agent.invoke({"messages": [("user", request)]}, {"configurable": {"thread_id": thread}})
    agent.flush()
    agent.recorder.close()
    opened = LocalExperienceStore(store)
    try:
        frame = opened.trajectories().sort("started_at").filter(~pl.col("id").is_in(list(before)))
        ids = frame["id"].to_list()
        assert frame.filter(pl.col("id").is_in(ids))["thread_id"].to_list() == [thread for thread, _ in runs]
        if approve:
            opened.approve(ids, by="alice")
    finally:
        opened.close()
    return ids


@pytest.fixture(scope="module")
def six_runs_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("units") / "experience"
    saver = InMemorySaver()
    ids = _record(root, NIGHT_1, saver=saver) + _record(root, NIGHT_2, saver=saver)
    return root, ids


@pytest.fixture
def six_runs(six_runs_template: tuple[Path, list[str]], tmp_path: Path) -> tuple[Path, list[str]]:
    root, ids = six_runs_template
    shutil.copytree(root, tmp_path / "experience")
    return tmp_path / "experience", ids


def _targets(messages: str) -> set[str]:
    """Each message as text, without the call ids (random per run): what a row holds, comparable across runs."""
    found = set()
    for message in json.loads(messages):
        message = {k: v for k, v in message.items() if k != "tool_call_id"}
        calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.pop("tool_calls", None) or []]
        found.add(json.dumps([message, calls], sort_keys=True))
    return found


def assert_no_heldout_target_in_training(out: Path) -> int:
    """No training row (prompt or completion, any kind) holds a held-out row's target (its completion); returns how many
    held-out targets were checked."""
    held = set()
    for kind in KINDS_BUILT:
        for completion in pl.read_parquet(out / "heldout" / f"{kind}.parquet")["completion"]:
            held |= _targets(completion)
    for kind in KINDS_BUILT:
        for row in pl.read_parquet(out / f"{kind}.parquet").iter_rows(named=True):
            leaked = held & (_targets(row["prompt"]) | _targets(row["completion"]))
            assert not leaked, f"training {kind} row {row['id']} of {row['trajectory_id']} holds held-out targets {leaked}"
    return len(held)


def _build(store: Path, out: Path, *flags: str) -> dict[str, Any]:
    result = runner.invoke(app, ["datasets", "build", "--store", str(store), "--out", str(out), "--kinds", ",".join(KINDS_BUILT), *flags])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "datasets.json").read_text())
    assert set(trajectory_ids(out / "il.parquet")) == set(summary["split"]["train_trajectories"])
    assert set(trajectory_ids(out / "heldout" / "il.parquet")) == set(summary["split"]["heldout_trajectories"])
    summary["output"] = result.stdout
    return summary


def test_holding_out_a_run_holds_out_its_task_and_its_threads_later_runs(six_runs: tuple[Path, list[str]], tmp_path: Path) -> None:
    """Was: the split went by trajectory id, so holding out run 1 left run 6 (the same request on another thread: the
    same examples) and run 4 (the thread's next run: every prompt held run 1's calls and answer) in training."""
    store, (pears, kiwis, figs, plums, limes, pears_again) = six_runs
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{pears}\n")
    summary = _build(store, tmp_path / "data", "--heldout-ids", str(ids))
    split = summary["split"]
    assert set(split["heldout_trajectories"]) == {pears, plums, pears_again}
    assert set(split["train_trajectories"]) == {kiwis, figs, limes}
    assert assert_no_heldout_target_in_training(tmp_path / "data") >= 6
    assert split["matched_by_rule"] == 1 and split["rule"]["unit"] == "thread_or_task"
    assert {(a["id"], a["reason"], a["via"]) for a in split["added"]["listed"]} == {
        (plums, "later_in_thread", pears),
        (pears_again, "same_task", pears),
    }
    assert (split["added"]["trajectories"], split["added"]["same_task"], split["added"]["later_in_thread"]) == (2, 1, 1)
    assert split["units"]["total"] == 3 and split["units"]["heldout"] == 1 and split["units"]["largest"]["trajectories"] == 3
    output = " ".join(summary["output"].split())
    assert "held out: 3 trajectories" in output and "2 added to keep held-out targets out of training: 1 ask the task" in output


def test_an_earlier_run_of_a_held_out_runs_thread_stays_in_training(six_runs: tuple[Path, list[str]], tmp_path: Path) -> None:
    """Holding out a thread's later run holds none of its earlier runs out: they hold none of its targets."""
    store, recorded = six_runs
    plums = recorded[3]
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{plums}\n")
    split = _build(store, tmp_path / "data", "--heldout-ids", str(ids))["split"]
    assert split["heldout_trajectories"] == [plums] and split["added"]["trajectories"] == 0
    assert set(split["train_trajectories"]) == set(recorded) - {plums}
    assert split["units"]["partly_heldout"] == 1
    assert assert_no_heldout_target_in_training(tmp_path / "data") >= 2


def test_a_later_run_recorded_on_a_clock_behind_is_held_out_by_what_its_messages_hold_stand_in_skewed_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers: the thread's next run (plums, on t1) recorded where the wall clock reads a day behind, so it started
    "before" the held-out run (pears) it continues. Before: only time told a thread's later runs, so it stayed in
    training and every one of its prompts held the held-out run's calls and answer. Its messages hold pears's question
    and answer: it is held out as the thread's later run. The clock is the stand-in (time.time_ns a day behind)."""
    import time as time_module

    store = tmp_path / "experience"
    saver = InMemorySaver()
    pears, _kiwis, _figs = _record(store, NIGHT_1, saver=saver)
    real = time_module.time_ns
    monkeypatch.setattr(time_module, "time_ns", lambda: real() - 86_400 * 10**9)
    plums, _limes, pears_again = _record(store, NIGHT_2, saver=saver)
    monkeypatch.setattr(time_module, "time_ns", real)
    started = dict(open_store(store).trajectories().select("id", "started_at").iter_rows())
    assert started[plums] < started[pears], "the next run of the thread reads as the earlier one"
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{pears}\n")
    split = _build(store, tmp_path / "data", "--heldout-ids", str(ids))["split"]
    assert set(split["heldout_trajectories"]) == {pears, plums, pears_again}
    assert (plums, "later_in_thread", pears) in {(a["id"], a["reason"], a["via"]) for a in split["added"]["listed"]}
    assert assert_no_heldout_target_in_training(tmp_path / "data") >= 6
    ids.write_text(f"{plums}\n")  # the real earlier run, after it by the clocks, goes with it: more held out, none leaked
    split = _build(store, tmp_path / "later", "--heldout-ids", str(ids))["split"]
    assert {plums, pears} <= set(split["heldout_trajectories"]) and assert_no_heldout_target_in_training(tmp_path / "later")


def test_an_earlier_run_that_repeats_a_held_out_runs_answer_or_holds_its_question_in_a_longer_one_stays_in_training(
    tmp_path: Path,
) -> None:
    """A review of the skewed-clock rule: a stock answer ("Done, your order is placed.") that every run of the thread
    gives, or a held-out question that is part of an earlier, longer one, made the thread's earlier runs (and their
    tasks' runs on other threads) held out as "later" runs. Only a run holding the held-out run's question and answer,
    each a whole message, is one."""
    from ee_middleware.testing.store_conformance import sample_trajectory
    from ee_middleware.trainers.datasets.split import recorded_units

    done = "Done, your order is placed."
    start = datetime(2026, 12, 1, 9, tzinfo=UTC)

    def run(name: str, minute: int, thread: str, question: str, history: list[dict[str, str]]) -> Any:
        messages = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": done}]
        when = start + timedelta(minutes=minute)
        return sample_trajectory(name).model_copy(
            update={"thread_id": thread, "task": question, "final_answer": done, "messages": messages, "started_at": when, "ended_at": when}
        )

    kiwis = run("kiwis", 0, "t1", "Order 5 kiwis", [])
    pears = run("pears", 5, "t1", "Order 3 pears", kiwis.messages)
    stock = run("stock", 10, "t2", "How many plums are in stock today? And pears?", [])
    plums = run("plums", 15, "t2", "How many plums are in stock", stock.messages)
    store = LocalExperienceStore(tmp_path / "experience")
    store.write([kiwis, pears, stock, plums])
    recorded = recorded_units(store)
    source = recorded.select("id", "app", "started_at")
    split = split_trajectories(source, SplitRule(ids=("pears", "plums")), recorded, store)
    assert set(split.heldout) == {"pears", "plums"} and set(split.train) == {"kiwis", "stock"}, split.added
    store.close()


def test_time_rules_hold_out_a_threads_future_never_its_past(six_runs: tuple[Path, list[str]], tmp_path: Path) -> None:
    """--heldout-after holds out runs 4-6, and run 1 too (run 6 asks its task); run 2, the earlier run of run 5's thread,
    stays in training. --heldout-before run 2 holds out run 1, and with it run 4 (its thread's next run) and run 6."""
    store, (pears, kiwis, figs, plums, limes, pears_again) = six_runs
    started = dict(open_store(store).trajectories().select("id", "started_at").iter_rows())
    after = _build(store, tmp_path / "after", "--heldout-after", started[plums].isoformat())["split"]
    assert set(after["heldout_trajectories"]) == {plums, limes, pears_again, pears}
    assert set(after["train_trajectories"]) == {kiwis, figs}
    assert [(a["id"], a["reason"], a["via"]) for a in after["added"]["listed"]] == [(pears, "same_task", pears_again)]
    assert assert_no_heldout_target_in_training(tmp_path / "after") >= 8
    before = _build(store, tmp_path / "before", "--heldout-before", started[kiwis].isoformat())["split"]
    assert set(before["heldout_trajectories"]) == {pears, plums, pears_again}
    assert before["matched_by_rule"] == 1 and before["added"]["trajectories"] == 2
    assert assert_no_heldout_target_in_training(tmp_path / "before") >= 6


def test_held_out_ids_as_ee_traces_list_prints_them_in_a_file_with_a_bom_are_held_out(
    six_runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Was: the ids were matched exactly, so a 12-character id copied from ``ee traces list`` (which ``ee traces approve``
    takes) held out nothing, nor did the first id of a file saved with a byte-order mark (Notepad, PowerShell): exit 0,
    and those trajectories were trained on."""
    store, (pears, kiwis, figs, plums, limes, pears_again) = six_runs
    ids = tmp_path / "ids.txt"
    ids.write_bytes(b"\xef\xbb\xbf" + f"{pears[:12]}\r\n# figs too\r\n{figs}\r\n".encode())
    split = _build(store, tmp_path / "data", "--heldout-ids", str(ids))["split"]
    assert set(split["heldout_trajectories"]) == {pears, plums, pears_again, figs}
    assert set(split["train_trajectories"]) == {kiwis, limes}
    assert split["matched_by_rule"] == 2 and split["rule"]["ids"] == 2
    assert assert_no_heldout_target_in_training(tmp_path / "data") >= 6


def test_a_held_out_id_list_without_an_id_is_refused_and_a_comment_after_an_id_is_one(
    six_runs: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """Was (a sweep): a list of comments only built with no split at all, exit 0, and removed the previous build's
    heldout/ files (every trajectory held out before was trained on); an id followed by a comment was refused as an id
    that matches nothing."""
    store, (_, kiwis, figs, _, limes, _) = six_runs
    first = tmp_path / "first.txt"
    first.write_text(f"{kiwis}\n")
    held = _build(store, tmp_path / "data", "--heldout-ids", str(first))["split"]
    assert kiwis in held["heldout_trajectories"]
    ids = tmp_path / "ids.txt"
    ids.write_text("# ids to hold out\n\n   \n")
    result = runner.invoke(app, ["datasets", "build", "--store", str(store), "--out", str(tmp_path / "data"), "--heldout-ids", str(ids)])
    assert result.exit_code == 1, result.output
    assert f"The held-out id list {ids} holds no trajectory id" in " ".join(result.output.split())
    assert json.loads((tmp_path / "data" / "datasets.json").read_text())["split"] == held  # the last build stands

    ids.write_text(f"{figs[:12]}  # the figs order\n{limes}\t# and limes\n")
    split = _build(store, tmp_path / "data", "--heldout-ids", str(ids))["split"]
    assert {figs, limes} <= set(split["heldout_trajectories"]) and split["rule"]["ids"] == 2


def test_held_out_ids_that_match_no_trajectory_or_several_are_refused_naming_each(tmp_path: Path) -> None:
    """Was: an id not in the store (a typo, another store's id) or a prefix of several ids held out nothing, silently
    (exit 0). Now the build stops before writing anything, naming each such id and the file. 17 recorded runs: two of
    their ids start with the same character."""
    store = tmp_path / "experience"
    recorded = _record(store, [(f"t{n}", "Any dates?") for n in range(17)])
    shared = Counter(i[0] for i in recorded).most_common(1)[0][0]
    unique = next(i for i in recorded if not i.startswith(shared))
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{unique[:12]}\nno-such-trajectory\n{shared}\n")
    out = tmp_path / "data"
    result = runner.invoke(app, ["datasets", "build", "--store", str(store), "--out", str(out), "--kinds", "il", "--heldout-ids", str(ids)])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    starting = sum(i.startswith(shared) for i in recorded)
    assert str(ids) in message
    assert "'no-such-trajectory' matches no trajectory" in message
    assert f"'{shared}' is the start of {starting} trajectory ids" in message
    assert unique[:12] not in message, "the unique prefix resolves"
    assert not (out / "datasets.json").exists() and not (out / "il.parquet").exists()


def test_the_heldout_share_keeps_each_unit_on_one_side_and_in_place_as_the_store_grows(tmp_path: Path) -> None:
    """Night 1: a run on thread t7 that still awaits review, runs 1-3, t7's next run (asking run 3's task). Night 2: runs
    4-6 (t1's and t5's next runs, the pears task again), a new thread asking the kiwis task, and t7's first run approved.
    Under every seed, no night-1 trajectory changes side, each unit is on one side, and no training row holds a held-out
    target. Was: the share hashed each trajectory id, so a thread's runs and a task's runs fell on both sides."""
    store, night_1 = tmp_path / "experience", tmp_path / "night-1"
    saver = InMemorySaver()
    [pending] = _record(store, [("t7", "Any dates?")], approve=False, saver=saver)
    first = _record(store, [*NIGHT_1, ("t7", "Order 2 figs.")], saver=saver)
    shutil.copytree(store, night_1)
    second = _record(store, [*NIGHT_2, ("t6", "Check the kiwis.")], saver=saver)
    opened = LocalExperienceStore(store)
    opened.approve([pending], by="alice")
    opened.close()
    pears, kiwis, figs, t7_figs = first
    plums, limes, pears_again, t6_kiwis = second
    units = [{pears, plums, pears_again}, {kiwis, limes, t6_kiwis}, {pending, figs, t7_figs}]
    splits = set()
    for seed in range(8):
        before = _heldout_of(night_1, tmp_path / f"n1-{seed}", seed)
        after = _heldout_of(store, tmp_path / f"n2-{seed}", seed)
        splits.add(before)
        if before is None or after is None:  # the share held out every unit: refused, on both nights
            assert before is after is None, f"seed {seed}: night 1 held out {before}, night 2 {after}"
            continue
        assert {i: i in after for i in first} == {i: i in before for i in first}, f"seed {seed}: a night-1 trajectory moved"
        for unit in units:
            assert len({i in after for i in unit}) == 1, f"seed {seed}: a unit on both sides"
        if after:
            assert_no_heldout_target_in_training(tmp_path / f"n2-{seed}")
    assert len(splits) > 2, "the seeds split the units several ways (the test checks something)"


def _heldout_of(store: Path, out: Path, seed: int) -> frozenset[str] | None:
    """The held-out ids of a build with --heldout-share 0.5 and ``seed`` (``None``: refused, everything held out)."""
    args = ["datasets", "build", "--store", str(store), "--out", str(out), "--kinds", ",".join(KINDS_BUILT), "--heldout-share", "0.5"]
    result = runner.invoke(app, [*args, "--seed", str(seed), "--json"])
    if result.exit_code != 0 and "nothing is left to train on" in result.output:
        return None
    assert result.exit_code == 0, result.output
    return frozenset(json.loads(result.stdout)["split"]["heldout_trajectories"])


def _frame(rows: list[tuple[str, str | None, str | None, int]]) -> pl.DataFrame:
    """Trajectories as (id, thread, task, start in minutes)."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "id": [r[0] for r in rows],
            "app": ["shop"] * len(rows),
            "thread_id": [r[1] for r in rows],
            "task": [r[2] for r in rows],
            "started_at": [start + timedelta(minutes=r[3]) for r in rows],
        }
    )


def test_a_run_linking_two_units_puts_the_later_unit_on_the_earlier_ones_side() -> None:
    """The one way new runs move old ones (besides a backfilled run older than its whole unit): a run on one unit's
    thread asking the other unit's task merges them, and the merged unit has its earliest trajectory's side."""
    night_1 = _frame([("a1", "ta", "apples", 0), ("a2", "ta", "more apples", 5), ("b1", "tb", "bananas", 2)])
    night_2 = pl.concat([night_1, _frame([("link", "ta", "BANANAS ", 9)])])
    moved = 0
    for seed in range(40):
        rule = SplitRule(share=0.5, seed=seed)
        before, after = split_trajectories(night_1, rule), split_trajectories(night_2, rule)
        assert {"a1", "a2"} <= before.heldout or not {"a1", "a2"} & before.heldout
        side = "a1" in before.heldout
        assert {i: i in after.heldout for i in ("a1", "a2", "b1", "link")} == dict.fromkeys(("a1", "a2", "b1", "link"), side)
        moved += ("b1" in before.heldout) != side
    assert moved, "some seed put the two units on different sides before they were linked"


def test_a_unit_holding_much_of_the_store_is_warned_of() -> None:
    """A greeting many conversations open with links them all into one unit: the split says so, naming the task."""
    rows = [(f"hi-{i}", f"t{i}", "Hi!", i) for i in range(12)] + [(f"next-{i}", f"t{i}", f"question {i}", 20 + i) for i in range(12)]
    rows += [(f"solo-{i}", f"s{i}", f"other {i}", 40 + i) for i in range(4)]
    split = split_trajectories(_frame(rows), SplitRule(ids=("solo-0",)))
    units = split.describe()["units"]
    assert {k: units["largest"][k] for k in ("trajectories", "earliest")} == {"trajectories": 24, "earliest": "hi-0"}
    assert units["total"] == 5
    assert "one unit holds 24 of the 28 trajectories (its earliest: hi-0)" in units["warning"]
    assert "asked by 12 trajectories (e.g. hi-0" in units["warning"]
    assert "warning" not in split_trajectories(_frame(rows[12:]), SplitRule(ids=("solo-0",))).describe()["units"]


def _add_variants(store_path: Path, variants: dict[str, str]) -> dict[str, str]:
    """Curriculum trajectories as 'ee curriculum run' stores them (source=curriculum, the parent trajectory named in the
    environment under PARENT_KEY), each a reworded copy of a stored expert, rolled out after it: variant id -> parent id
    (``variants``: variant id -> the id, or ``entry:ENTRY``, of its parent)."""
    from ee_middleware.replay.curriculum import with_parent

    store = LocalExperienceStore(store_path)
    experts = {t.environment["entry_id"]: t for t in store.iter_trajectories()}
    written: dict[str, Any] = {}
    parents = {}
    for variant_id, parent_ref in variants.items():
        parent = experts[parent_ref[len("entry:") :]] if parent_ref.startswith("entry:") else written[parent_ref]
        steps = [s.model_copy(update={"trajectory_id": variant_id}) for s in parent.steps]
        environment = with_parent(parent.environment, {"trajectory_id": parent.id, "task_id": "t", "suite": "bfcl"})
        written[variant_id] = parent.model_copy(
            update={
                "id": variant_id,
                "app": "curriculum",
                "source": "curriculum",
                "thread_id": None,  # a rollout of its own, as the curriculum run stores it
                "trace_id": None,
                "task": f"{parent.task} (reworded as {variant_id})",
                "started_at": parent.started_at + timedelta(days=1),
                "environment": environment,
                "steps": steps,
            }
        )
        parents[variant_id] = parent.id
    store.write(list(written.values()))
    store.approve(list(written), by="test")
    store.close()
    return parents


def test_a_curriculum_variant_is_on_its_parent_tasks_side_and_a_held_out_parent_holds_it_out(bfcl_store_path: Path) -> None:
    """A curriculum trajectory is a rollout on a task a model wrote from a stored one (same world and tools, the request
    reworded): it is part of its parent's unit. Before: nothing linked them, so the variants of a held-out task (the
    documented workflow writes them from eval tasks) trained, and a share split a task from its variants."""
    from ee_middleware.trainers.datasets.split import recorded_units

    parents = _add_variants(bfcl_store_path, {"v-a": "entry:multi_turn_base_0", "v-of-v": "v-a", "v-b": "entry:multi_turn_base_1"})
    store = LocalExperienceStore(bfcl_store_path)
    frame, units = store.trajectories(status="approved"), recorded_units(store)
    store.close()
    parent_a, parent_b = parents["v-a"], parents["v-b"]

    split = split_trajectories(frame, SplitRule(ids=(parent_a,)), units)
    assert split.heldout == {parent_a, "v-a", "v-of-v"} and "v-b" in split.train
    assert split.added == {"v-a": ("variant_of_task", parent_a), "v-of-v": ("variant_of_task", "v-a")}
    assert split.describe()["added"]["variant_of_task"] == 2

    # a variant named alone: its own variants follow it, its parent (which holds none of its targets) stays in training
    split = split_trajectories(frame, SplitRule(ids=("v-a",)), units)
    assert split.heldout == {"v-a", "v-of-v"} and parent_a in split.train

    sides = set()
    for seed in range(30):  # a share keeps each task with its variants
        split = split_trajectories(frame, SplitRule(share=0.5, seed=seed), units)
        for parent, variants in ((parent_a, {"v-a", "v-of-v"}), (parent_b, {"v-b"})):
            side = parent in split.heldout
            assert all((v in split.heldout) == side for v in variants), (seed, parent)
            sides.add(side)
    assert sides == {True, False}


def _traced(rows: list[tuple[str, str | None, str, float, float, str | None]]) -> pl.DataFrame:
    """Trajectories as (id, trace, task, start, end in seconds, answer), each on a thread of its own."""
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return pl.DataFrame(
        {
            "id": [r[0] for r in rows],
            "app": ["shop"] * len(rows),
            "thread_id": [f"thread-{r[0]}" for r in rows],
            "task": [r[2] for r in rows],
            "started_at": [start + timedelta(seconds=r[3]) for r in rows],
            "ended_at": [start + timedelta(seconds=r[4]) for r in rows],
            "trace_id": [r[1] for r in rows],
            "final_answer": [r[5] for r in rows],
        }
    )


class _Messages:
    """A store as :func:`nested_runs` reads one: the trajectories' messages."""

    def __init__(self, messages: dict[str, list[dict[str, Any]]]) -> None:
        self.frame = pl.DataFrame({"id": list(messages), "messages_json": [json.dumps(m) for m in messages.values()]})

    def trajectories(self) -> pl.DataFrame:
        return self.frame


def test_a_run_invoked_in_another_runs_tool_is_found_by_its_answer_in_that_runs_messages() -> None:
    """An agent invoked inside a tool is a run of its own on a thread of its own: its answer is the outer run's tool
    result (found by a reviewer: holding out the inner run left the outer one, whose rows hold its targets, in
    training). Runs of one trace at the same time whose answers are not each other's messages (a batch of concurrent
    conversations under one span: found by review of the first version, which linked them by time alone) are not."""
    units = _traced(
        [
            ("outer", "t1", "ask the expert about A-1", 0, 10, "Shipped, says the expert."),
            ("inner", "t1", "status of A-1?", 0, 10.5, "Order A-1 is shipped."),  # same start, ends a bit after: clocks
            ("other", "t1", "hello", 2, 5, "Hi!"),  # concurrent, contained, unrelated
            ("batch-1", "t2", "first", 20, 25, "one"),
            ("batch-2", "t2", "second", 26, 30, "two"),
        ]
    )
    outer_said = [
        {"role": "user", "content": "ask the expert about A-1"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "ask_expert", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c", "content": "Order A-1 is shipped."},
        {"role": "assistant", "content": "Shipped, says the expert."},
    ]
    store = _Messages({"outer": outer_said, "inner": [], "other": [], "batch-1": [], "batch-2": []})
    assert nested_runs(store, units).rows() == [("inner", "outer")]
    recorded = units.join(nested_runs(store, units), on="id", how="left")
    split = split_trajectories(units, SplitRule(ids=("inner",)), recorded)
    assert split.heldout == {"inner", "outer"} and split.added == {"outer": ("nested_run", "inner")}
    assert split_trajectories(units, SplitRule(ids=("outer",)), recorded).heldout == {"inner", "outer"}
    assert split_trajectories(units, SplitRule(ids=("other",)), recorded).heldout == {"other"}
    assert split_trajectories(units, SplitRule(ids=("batch-1",)), recorded).heldout == {"batch-1"}
    assert split.describe()["added"]["nested_run"] == 1


def test_holding_out_an_agent_invoked_inside_a_tool_keeps_its_answer_out_of_training(tmp_path: Path) -> None:
    """Real runs: an outer agent whose tool invokes an inner agent (a thread of its own), both recorded; the inner run
    held out by id. No training row holds its answer, which is the outer run's tool result."""
    from langchain_core.messages import HumanMessage

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        asked = next(m.content for m in reversed(messages) if m.type == "human")
        answered = any(m.type == "tool" for m in messages)
        if asked == "Hello":
            return AIMessage("Hi! How can I help?")
        if asked.startswith("Ask the expert"):
            return (
                AIMessage("Shipped, says the expert.")
                if answered
                else AIMessage("", tool_calls=[tool_call("ask_expert", question="Status of A-1?")])
            )
        return AIMessage("Order A-1 is shipped.") if answered else AIMessage("", tool_calls=[tool_call("lookup", order_id="A-1")])

    @tool
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return f"{order_id}: shipped"

    model = ScriptedChatModel(policy=policy)
    inner = create_agent(model, [lookup])

    @tool
    def ask_expert(question: str) -> str:
        """Ask the order expert."""
        return inner.invoke({"messages": [HumanMessage(question)]}, {"configurable": {"thread_id": "expert"}})["messages"][-1].content

    store_path = tmp_path / "store"
    agent = record_experience(create_agent(model, [ask_expert]), app="shop", store=store_path, approve_if=lambda t: True)
    agent.invoke({"messages": [("user", "Ask the expert about A-1")]}, {"configurable": {"thread_id": "customer"}})
    agent.invoke({"messages": [("user", "Hello")]}, {"configurable": {"thread_id": "another"}})
    agent.flush()
    store = LocalExperienceStore(store_path)
    by_task = {t.task: t for t in store.iter_trajectories()}
    assert set(by_task) == {"Ask the expert about A-1", "Status of A-1?", "Hello"}
    listed = tmp_path / "heldout.txt"
    listed.write_text(by_task["Status of A-1?"].id + "\n")
    out = tmp_path / "ds"
    result = CliRunner().invoke(
        app,
        ["datasets", "build", "--store", str(store_path), "--kinds", "il,iwm", "--out", str(out), "--heldout-ids", str(listed), "--json"],
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["split"]["heldout_trajectories"]) == {
        by_task[t].id for t in ("Ask the expert about A-1", "Status of A-1?")
    }
    training = [pl.read_parquet(out / f"{kind}.parquet") for kind in ("il", "iwm") if (out / f"{kind}.parquet").exists()]
    assert all(
        "Order A-1 is shipped." not in text
        for frame in training
        for column in ("prompt", "completion")
        for text in frame[column].cast(pl.String)
    )


def test_a_held_out_app_no_trajectory_is_of_is_refused_and_a_rule_holding_out_nothing_warns(replayed_store: Path, tmp_path: Path) -> None:
    """Sweep B, finding 4: ``--heldout-app`` misspelt (or naming an app ``--app`` leaves out) and ``--heldout-after`` a
    future date built with 0 held out, exit 0 and no word (an id list naming no trajectory was refused): the first is
    now refused, the second warns on stderr, also with ``--json`` (whose warnings went nowhere)."""
    args = ["datasets", "build", "--store", str(replayed_store), "--kinds", "il", "--no-progress"]
    typo = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--heldout-app", "no-such-app"])
    assert typo.exit_code == 1 and "--heldout-app no-such-app (heldout_app) names no app of the trajectories" in typo.stderr
    assert not (tmp_path / "a").exists()
    for extra in ([], ["--json"]):
        later = runner.invoke(app, [*args, "--out", str(tmp_path / f"b{len(extra)}"), "--heldout-after", "2100-01-01", *extra])
        assert later.exit_code == 0, later.output
        assert "warning: the held-out rule (--heldout-after 2100-01-01T00:00:00) holds out none of the" in later.stderr
        if extra:
            assert "nothing_held_out" in json.loads(later.stdout)["split"]


def test_a_held_out_file_is_exported_only_when_asked(replayed_store: Path, tmp_path: Path) -> None:
    """Sweep B, finding 6: ``ee datasets export`` wrote a held-out file's examples to JSONL (or a Hugging Face dataset)
    with no word, and the export has no mark a trainer would refuse: ``--heldout`` says it is meant."""
    out = tmp_path / "data"
    first = sorted(open_store(replayed_store).trajectories(status="approved")["id"].to_list())[0]
    (tmp_path / "ids.txt").write_text(first)
    _build(replayed_store, out, "--heldout-ids", str(tmp_path / "ids.txt"))
    held = out / "heldout" / "il.parquet"
    for fmt in ("jsonl", "hf"):
        refused = runner.invoke(app, ["datasets", "export", str(held), "--out", str(tmp_path / f"h.{fmt}"), "--format", fmt])
        assert refused.exit_code == 2 and "is a held-out file" in refused.stderr and "pass --heldout" in refused.stderr
        assert not (tmp_path / f"h.{fmt}").exists()
    asked = runner.invoke(app, ["datasets", "export", str(held), "--out", str(tmp_path / "h.jsonl"), "--heldout"])
    assert asked.exit_code == 0 and len((tmp_path / "h.jsonl").read_text().splitlines()) == pl.read_parquet(held).height
    assert runner.invoke(app, ["datasets", "export", str(out / "il.parquet"), "--out", str(tmp_path / "t.jsonl")]).exit_code == 0


def test_a_rebuild_that_trains_on_what_the_earlier_build_held_out_says_so(replayed_store: Path, tmp_path: Path) -> None:
    """(the upgrades sweep) A rebuild into the same folder whose split moved earlier held-out trajectories into training
    (another rule, another seed, or an upgrade that draws units by thread or task) did so silently: an adapter trained on
    the new files then scored "held-out" runs it had seen against a baseline that had not."""
    out = tmp_path / "data"
    frame = open_store(replayed_store).trajectories(status="approved")
    approved = set(frame["id"].to_list())
    seeds = [s for s in range(200) if 0 < len(heldout_ids(frame, SplitRule(share=0.4, seed=s))) < len(approved)]
    first = seeds[0]
    second = next(
        s for s in seeds if heldout_ids(frame, SplitRule(share=0.4, seed=first)) - heldout_ids(frame, SplitRule(share=0.4, seed=s))
    )
    args = ["datasets", "build", "--store", str(replayed_store), "--out", str(out), "--kinds", "il", "--heldout-share", "0.4"]
    built = runner.invoke(app, [*args, "--seed", str(first), "--json"])
    assert built.exit_code == 0, built.output
    assert "heldout_moved_to_training" not in json.loads(built.stdout)
    earlier = set(json.loads(built.stdout)["split"]["heldout_trajectories"])
    rebuilt = runner.invoke(app, [*args, "--seed", str(second)])
    assert rebuilt.exit_code == 0, rebuilt.output
    summary = json.loads((out / "datasets.json").read_text())
    moved = summary["heldout_moved_to_training"]
    assert (
        set(moved["ids_sample"]) == earlier & set(summary["split"]["train_trajectories"]) and moved["count"] == len(moved["ids_sample"]) > 0
    )
    said = " ".join(rebuilt.output.split())
    assert "warning:" in said and f"{moved['count']} trajectories the earlier build in" in said and "held out are trained on now" in said
    # (review) a rebuild without a held-out rule trains on everything: every trajectory the last build held out
    held_last = set(summary["split"]["heldout_trajectories"])
    plain = runner.invoke(app, ["datasets", "build", "--store", str(replayed_store), "--out", str(out), "--kinds", "il"])
    assert plain.exit_code == 0, plain.output
    moved = json.loads((out / "datasets.json").read_text())["heldout_moved_to_training"]
    assert moved["count"] == len(held_last) and "held out are trained on now" in " ".join(plain.output.split())


@pytest.mark.parametrize("given", ["", "  "])
def test_a_blank_heldout_ids_is_refused_not_read_as_the_working_folder(tmp_path: Path, given: str) -> None:
    """Sweep: ``[datasets] heldout_ids = ""`` was read as ``.``: "Cannot read the held-out id list .: Is a directory"."""
    from ee_middleware.trainers.datasets.build import DatasetConfig

    config = tmp_path / "ds.toml"
    config.write_text(f'[datasets]\nstore = "{tmp_path}"\nout = "{tmp_path / "out"}"\nheldout_ids = "{given}"\n')
    with pytest.raises(ConfigError, match=r"heldout_ids: Value error, is empty or blank: name the held-out id list"):
        DatasetConfig.load(config)
