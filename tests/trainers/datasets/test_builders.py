"""IL, IWM and SR builders on a real replayed BFCL store."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.il import build_il
from ee_middleware.trainers.datasets.iwm import IWMOptions, build_iwm
from ee_middleware.trainers.datasets.rows import DATASET_SCHEMA, IWM_INSTRUCTION
from ee_middleware.trainers.datasets.source import load_source
from ee_middleware.trainers.datasets.sr import SROptions, build_sr, check_rationale
from ee_middleware.trainers.datasets.teachers import ReflectionCase, TemplateTeacher, teacher_prompt


def _source(path: Path):
    return load_source(LocalExperienceStore(path))


def test_il_has_one_row_per_expert_step_with_the_state_as_prompt_and_the_action_as_target(replayed_store: Path) -> None:
    store = LocalExperienceStore(replayed_store)
    il = build_il(_source(replayed_store))
    steps = store.steps()
    assert il.height == steps.height and dict(il.schema) == DATASET_SCHEMA
    assert il["id"].n_unique() == il.height and set(il["kind"]) == {"il"} and set(il["proposer"]) == {"expert"}
    trajectory = next(store.iter_trajectories())
    for step in trajectory.steps:
        row = il.filter((pl.col("trajectory_id") == trajectory.id) & (pl.col("step_index") == step.index)).row(0, named=True)
        assert json.loads(row["prompt"]) == step.state
        (target,) = json.loads(row["completion"])
        if step.action.tool_call:
            call = target["tool_calls"][0]
            assert call["function"]["name"] == step.action.tool_call.name
            assert json.loads(call["function"]["arguments"]) == step.action.tool_call.arguments
        else:
            assert target == {"role": "assistant", "content": step.action.content}
        assert {t["function"]["name"] for t in json.loads(row["tools"])} == {t["function"]["name"] for t in trajectory.tools}


def test_iwm_rows_predict_the_real_observation_of_each_rollout_and_expert_step(replayed_store: Path) -> None:
    store = LocalExperienceStore(replayed_store)
    rollouts = store.rollouts()
    iwm = build_iwm(_source(replayed_store), IWMOptions(max_error_share=1.0))
    expert_steps = store.steps().filter(pl.col("action_kind") == "tool_call").height
    assert iwm.height == rollouts.height + expert_steps
    rollout = rollouts.row(0, named=True)
    row = iwm.filter(
        (pl.col("trajectory_id") == rollout["trajectory_id"])
        & (pl.col("branch_index") == rollout["branch_index"])
        & (pl.col("step_index") == rollout["step_index"])
    ).row(0, named=True)
    prompt = json.loads(row["prompt"])
    assert prompt[-1] == {"role": "user", "content": IWM_INSTRUCTION}
    assert prompt[-2]["tool_calls"][0]["function"]["name"] == rollout["tool_name"]
    step = store.get(rollout["trajectory_id"]).steps[rollout["step_index"]]
    assert prompt[:-2] == step.state
    assert json.loads(row["completion"]) == [{"role": "assistant", "content": rollout["observation"]}]
    assert row["proposer"] == "mutate" and row["replay_id"] == rollout["replay_id"] and row["is_error"] == rollout["is_error"]


def test_iwm_caps_the_error_share_and_records_truncation(replayed_store: Path) -> None:
    source = _source(replayed_store)
    uncapped = build_iwm(source, IWMOptions(max_error_share=1.0))
    assert uncapped["is_error"].mean() > 0.2
    capped = build_iwm(source, IWMOptions(max_error_share=0.2))
    assert capped["is_error"].mean() <= 0.2 + 1e-9
    assert capped.filter(~pl.col("is_error")).height == uncapped.filter(~pl.col("is_error")).height
    assert build_iwm(source, IWMOptions(max_error_share=0.2))["id"].to_list() == capped["id"].to_list()  # seeded
    tiny = build_iwm(source, IWMOptions(max_observation_tokens=8, max_error_share=1.0))
    for row in tiny.iter_rows(named=True):
        observation = json.loads(row["completion"])[0]["content"]
        assert len(observation) <= 32
    full = {r["id"]: len(json.loads(r["completion"])[0]["content"]) for r in uncapped.iter_rows(named=True)}
    cut = tiny.filter(pl.col("observation_truncated_chars") > 0)
    kept = {r["id"]: len(json.loads(r["completion"])[0]["content"]) for r in cut.iter_rows(named=True)}
    assert cut.height > 0 and all(full[r["id"]] - kept[r["id"]] == r["observation_truncated_chars"] for r in cut.iter_rows(named=True))


def test_synthetic_rollouts_never_feed_iwm(replayed_store: Path) -> None:
    store = LocalExperienceStore(replayed_store)
    real = next(store.iter_rollouts())
    fake = real.model_copy(update={"id": "synthetic-1", "branch_index": 99, "synthetic": True})
    record = store.replays().row(0, named=True)
    from ee_middleware.records import ReplayRecord

    store.write_replay(
        ReplayRecord(replay_id="dream", trajectory_id=record["trajectory_id"], status="done", policy="x", sandbox="y", k=1, seed=0), [fake]
    )
    assert 99 not in build_iwm(_source(replayed_store), IWMOptions(max_error_share=1.0))["branch_index"].to_list()


def test_sr_rows_give_a_rationale_then_the_expert_action(replayed_store: Path) -> None:
    sr, report = build_sr(_source(replayed_store), TemplateTeacher(), SROptions(k=3))
    assert report.states == sr.height + sum(report.dropped.values()) > 0
    row = sr.row(0, named=True)
    (target,) = json.loads(row["completion"])
    assert target["content"].startswith("I call ") and len(target["tool_calls"]) == 1
    step = LocalExperienceStore(replayed_store).get(row["trajectory_id"]).steps[row["step_index"]]
    assert target["tool_calls"][0]["function"]["name"] == step.action.tool_call.name
    assert json.loads(row["prompt"]) == step.state
    assert row["teacher"] == "template" and isinstance(json.loads(row["quality_flags"]), dict)


class RecordingTeacher:
    """Returns scripted rationales and keeps the prompts it was shown."""

    name = "recording"

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.cases: list[ReflectionCase] = []

    def write(self, cases: list[ReflectionCase]) -> list[str]:
        self.cases.extend(cases)
        return [self.answers[i % len(self.answers)] for i in range(len(cases))]


def test_sr_teacher_prompts_never_leak_labels_and_bad_rationales_are_dropped(replayed_store: Path) -> None:
    teacher = RecordingTeacher(["The expert would do this.", "", "I call it because it works. I call it because it works."])
    sr, report = build_sr(_source(replayed_store), teacher, SROptions(k=3))
    for case in teacher.cases:
        prompt = teacher_prompt(case).lower()
        assert "expert" not in prompt and "action 1" not in prompt and "option 1" not in prompt
        assert 1 <= len(case.alternatives) <= 3
    assert report.dropped["label_leak"] > 0 and report.dropped["empty"] > 0
    assert all(json.loads(f) == {"repeated_text": True} for f in sr["quality_flags"].to_list())
    assert all(json.loads(c)[0]["content"] == "I call it because it works." for c in sr["completion"].to_list())


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("", "empty"),
        ("As the expert action shows, cd is right.", "label_leak"),
        ("Action 2 is worse.", "label_leak"),
        ("I should use rm here instead.", "recommends_alternative"),
        # sweep B, finding 5: a local teacher's garbled output was kept as a training target
        ("\ufffd\n\ufffd\n\ufffd\ufffd", "not_prose"),
        ("cd opens it \x00\ufffd\x00 and works", "not_prose"),
        ("!! ?? -- 42 ...", "not_prose"),
    ],
)
def test_rationale_guards(text: str, flag: str) -> None:
    cleaned, flags = check_rationale(text, "cd", ["rm", "ls"])
    assert cleaned is None and flags.get(flag)


def test_a_rationale_that_argues_against_an_alternative_is_kept() -> None:
    cleaned, flags = check_rationale("I call cd because it opens the folder. Calling rm instead would fail with an error.", "cd", ["rm"])
    assert cleaned and not flags
    written, flags = check_rationale("cd で先にフォルダを開くと、次の操作ができる。", "cd", ["rm"])  # letters of any script
    assert written and not flags


@pytest.mark.parametrize("share", [0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("errors", [0, 1, 7, 40])
def test_the_error_cap_keeps_what_a_seeded_sample_of_the_error_rows_kept(share: float, errors: int) -> None:
    """The whole-frame cap and the chunked build's choice (kept_errors, from counts) are one rule: the
    rows without an error, then a seeded, order-keeping sample of max_share / (1 - max_share) error
    rows per other row; written out here as it was before both used share_cap."""
    from ee_middleware.trainers.datasets.caps import share_cap
    from ee_middleware.trainers.datasets.iwm import _cap_errors, kept_errors

    flags = [i % 3 == 0 for i in range(3 * errors)] + [False] * 11 + [None]
    rows = pl.DataFrame({"n": list(range(len(flags))), "is_error": flags}, schema={"n": pl.Int64, "is_error": pl.Boolean})
    error_rows, fine_rows = rows.filter(pl.col("is_error")), rows.filter(~pl.col("is_error"))
    allowed = int(share / (1.0 - share) * fine_rows.height) if share < 1.0 else None
    assert share_cap(fine_rows.height, share) == allowed
    if allowed is None or error_rows.height <= allowed:
        expected = rows
    else:
        expected = pl.concat([fine_rows, error_rows.sample(n=allowed, seed=5, shuffle=False) if allowed else error_rows.head(0)])
    assert _cap_errors(rows, share, 5).equals(expected)
    keep = kept_errors(fine_rows.height, error_rows.height, share, 5)
    assert (keep is None) == (expected is rows)
    if keep is not None:
        assert error_rows[keep]["n"].to_list() == expected.filter(pl.col("is_error"))["n"].to_list()


def test_il_leaves_out_an_expert_call_whose_arguments_were_not_json(tmp_path: Path) -> None:
    """A model's malformed tool call is recorded as the step's action (its text under ``arguments["_raw"]``); imitating
    it would teach the malformed call, so IL leaves it out and says how many."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware import record_experience
    from ee_middleware.testing import ScriptedChatModel, tool_call
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

    @tool
    def refund(order_id: str) -> str:
        """Refund an order."""
        return f"refunded {order_id}"

    malformed = {"type": "invalid_tool_call", "id": "call_bad", "name": "refund", "args": '{"order_id": "A-1"', "error": None}
    scripts = {
        "malformed": [AIMessage(content="", invalid_tool_calls=[malformed])],  # the agent stops on it: no valid call
        "valid": [AIMessage(content="", tool_calls=[tool_call("refund", order_id="A-1")]), AIMessage(content="Refunded.")],
    }
    store_path = tmp_path / "experience"
    for name, script in scripts.items():
        agent = record_experience(create_agent(ScriptedChatModel(script=script), [refund]), app="shop", store=store_path)
        agent.invoke({"messages": [("user", f"refund A-1 ({name})")]})
        agent.flush()
    store = LocalExperienceStore(store_path)
    calls = {t.task: [s.action.tool_call.arguments for s in t.steps if s.action.tool_call] for t in store.iter_trajectories()}
    assert calls == {"refund A-1 (malformed)": [{"_raw": '{"order_id": "A-1"'}], "refund A-1 (valid)": [{"order_id": "A-1"}]}
    store.approve(store.trajectories()["id"].to_list(), by="test")
    store.close()

    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "ds", kinds="il", heldout_share=0))
    assert summary["datasets"]["il"]["malformed_calls_left_out"] == 1
    rows = pl.read_parquet(tmp_path / "ds" / "il.parquet")
    assert rows.height == 2, "the valid call and its answer"
    assert "_raw" not in "".join(rows["completion"].to_list())
    assert "order_id" in rows["completion"][0] and "Refunded." in rows["completion"][1]


def test_il_teaches_parallel_tool_calls_as_the_one_turn_the_expert_made(tmp_path: Path) -> None:
    """A model response with two tool calls is recorded as two steps with one ``decision_index`` and the same state.
    IL's target is the whole turn (both calls, in order): one row per call would show the model the same prompt with
    two different answers, and never the turn it is to make."""
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
    from tests.trainers.datasets.weather_world import record_trajectory

    both = AIMessage(content="", tool_calls=[tool_call("weather", city="Paris"), tool_call("weather", city="Rome")])
    one = AIMessage(content="", tool_calls=[tool_call("weather", city="Oslo")])
    store_path = tmp_path / "experience"
    trajectory = record_trajectory(store_path, [both, one, AIMessage(content="Sunny.")], "Weather in Paris, Rome, then Oslo?")
    assert [(s.decision_index, s.action.kind) for s in trajectory.steps] == [
        (0, "tool_call"),
        (0, "tool_call"),
        (1, "tool_call"),
        (2, "answer"),
    ]

    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "ds", kinds="il,iwm", iwm_max_error_share=1.0))
    il = pl.read_parquet(tmp_path / "ds" / "il.parquet")
    assert summary["datasets"]["il"]["rows"] == il.height == 3, "one row per turn: both calls, then Oslo, then the answer"
    targets = [json.loads(c)[0] for c in il["completion"]]
    assert [[json.loads(c["function"]["arguments"])["city"] for c in t.get("tool_calls", [])] for t in targets] == [
        ["Paris", "Rome"],
        ["Oslo"],
        [],
    ]
    assert targets[0]["tool_calls"][0]["id"] != targets[0]["tool_calls"][1]["id"]
    assert il["step_index"].to_list() == [0, 2, 3] and il["id"].n_unique() == 3
    assert json.loads(il["prompt"][0]) == trajectory.steps[0].state
    iwm = pl.read_parquet(tmp_path / "ds" / "iwm.parquet")
    assert iwm.height == 3, "IWM predicts each call's own result"


def test_what_the_expert_said_beside_its_calls_is_kept_and_taught(tmp_path: Path) -> None:
    """A model that writes text next to its tool calls ("Let me check both.") made that text part of its turn: capture
    keeps it with the turn's first call, and IL's target says it before the calls (it was dropped from both)."""
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call
    from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
    from tests.trainers.datasets.weather_world import record_trajectory

    both = AIMessage(content="Let me check both.", tool_calls=[tool_call("weather", city="Paris"), tool_call("weather", city="Rome")])
    store_path = tmp_path / "experience"
    trajectory = record_trajectory(store_path, [both, AIMessage(content="Sunny.")], "Weather in Paris and Rome?")
    assert [s.action.content for s in trajectory.steps] == ["Let me check both.", None, "Sunny."]

    build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "ds", kinds="il"))
    targets = [json.loads(c)[0] for c in pl.read_parquet(tmp_path / "ds" / "il.parquet")["completion"]]
    assert targets[0]["content"] == "Let me check both." and len(targets[0]["tool_calls"]) == 2
    assert targets[1] == {"role": "assistant", "content": "Sunny."}


def test_the_template_teacher_quotes_a_garbled_answer_as_prose() -> None:
    """A result with control characters or U+FFFD (binary, a broken decode) made the whole rationale no prose, and the
    SR guards dropped the state's row (a sweep: 6 of 8 rows of such a store)."""
    from ee_middleware.trainers.datasets.sr import check_rationale

    case = ReflectionCase(
        task="t", context="c", chosen="read(path='a')", chosen_outcome="PK\x03\x04\x00 data \ufffd", alternatives=[("ls()", "a\x1bb")]
    )
    (rationale,) = TemplateTeacher().write([case])
    assert rationale == (
        "I call read(path='a') because it returns PK data, which moves the task forward. "
        "Calling ls() returns a b, which does not do what the task asks."
    )
    assert check_rationale(rationale, "read", ["ls"])[0] == rationale
    only_garbled = ReflectionCase(task="t", context="c", chosen="read(path='b')", chosen_outcome="\x00\x01\ufffd", alternatives=[])
    assert TemplateTeacher().write([only_garbled])[0].startswith("I call read(path='b') because it returns a result that is no text,")


def test_the_template_teacher_names_an_empty_answer() -> None:
    case = ReflectionCase(task="t", context="c", chosen="mkdir(name='a')", chosen_outcome="", alternatives=[("ls()", "  ")])
    (rationale,) = TemplateTeacher().write([case])
    assert rationale == (
        "I call mkdir(name='a') because it returns an empty result, which moves the task forward. "
        "Calling ls() returns an empty result, which does not do what the task asks."
    )  # was: "because it returns , which moves"
