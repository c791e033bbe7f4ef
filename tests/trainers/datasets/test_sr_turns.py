"""SR at a turn of parallel tool calls, and SR's rows of single-call turns pinned to the golden.

A model response with several tool calls is stored as several steps sharing a ``decision_index`` and their state;
replay branches each of them. SR's example at that state teaches the turn the expert made (all of its calls, as
IL's target makes them) after a rationale that contrasts it with the alternatives replayed at its steps.

The parallel-call store is real end to end: a LangGraph agent (scripted model) recorded by ``record_experience`` into
a local store, replayed by the replay job (mutation policy) in a Python sandbox of the same tools
(``tests/trainers/datasets/weather_world.py``), built by ``build_datasets``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.source import load_source
from ee_middleware.trainers.datasets.sr import SROptions, build_sr
from ee_middleware.trainers.datasets.teachers import ReflectionCase, TemplateTeacher, teacher_prompt
from tests.trainers.datasets.golden_sr import GOLDEN, build, outputs
from tests.trainers.datasets.weather_world import record_trajectory

SANDBOX = "tests.trainers.datasets.weather_world:make_sandbox"


def test_single_call_sr_rows_are_the_golden_rows(replayed_store: Path) -> None:
    """Every turn of the replayed BFCL store makes one call: its SR rows are byte-identical to the golden's."""
    assert outputs(build(replayed_store)) == json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def parallel_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One approved trajectory: weather(Paris) and weather(Rome) in one response, then local_time(Oslo), then an
    answer; replayed with K=3 (every call branched)."""
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call

    root = tmp_path_factory.mktemp("parallel") / "experience"
    both = AIMessage(content="", tool_calls=[tool_call("weather", city="Paris"), tool_call("weather", city="Rome")])
    one = AIMessage(content="", tool_calls=[tool_call("local_time", city="Oslo")])
    script = [both, one, AIMessage(content="Sunny and rainy; noon in Oslo.")]
    trajectory = record_trajectory(root, script, "Weather in Paris and Rome, then the time in Oslo?")
    assert [(s.decision_index, s.action.kind) for s in trajectory.steps] == [
        (0, "tool_call"),
        (0, "tool_call"),
        (1, "tool_call"),
        (2, "answer"),
    ]
    summary = run_replay(ReplayConfig.load(store=root, k=3, sandbox=SANDBOX))
    assert summary.done == 1 and summary.states == 3 and summary.branches == 9
    return root


@pytest.fixture
def parallel_store(parallel_store_template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "parallel"
    shutil.copytree(parallel_store_template, target)
    return target


def _rollouts(store_path: Path) -> dict[int, list[tuple[str, str]]]:
    """Each step's replayed alternatives as the teacher shows them (``name(city='X')``, outcome), by branch."""
    store = LocalExperienceStore(store_path)
    out: dict[int, list[tuple[str, str]]] = {}
    for r in sorted(store.iter_rollouts(), key=lambda r: (r.step_index, r.branch_index)):
        out.setdefault(r.step_index, []).append(
            (f"{r.action.tool_call.name}(city={r.action.tool_call.arguments['city']!r})", r.observation.content)
        )
    store.close()
    return out


def test_sr_teaches_parallel_calls_as_the_turn_the_expert_made(parallel_store: Path, tmp_path: Path) -> None:
    """SR's row at the two-call turn targets both calls, in order, exactly as IL's target makes them (before: one row
    per call, each teaching one of them); its rationale contrasts the turn with the alternatives of each call."""
    summary = build_datasets(DatasetConfig.load(store=parallel_store, out=tmp_path / "ds", kinds="il,sr", sr_k=3))
    il = pl.read_parquet(tmp_path / "ds" / "il.parquet")
    sr = pl.read_parquet(tmp_path / "ds" / "sr.parquet")
    assert sr["step_index"].to_list() == [0, 2] and sr["id"].n_unique() == 2, "one row per turn"
    assert summary["datasets"]["sr"]["rows"] == 2 and summary["datasets"]["sr"]["states"] == 2
    for step_index in (0, 2):
        (il_target,) = json.loads(il.filter(pl.col("step_index") == step_index)["completion"].item())
        row = sr.filter(pl.col("step_index") == step_index).row(0, named=True)
        (sr_target,) = json.loads(row["completion"])
        assert sr_target["tool_calls"] == il_target["tool_calls"], "the same calls, order and format as IL's target"
        assert row["prompt"] == il.filter(pl.col("step_index") == step_index)["prompt"].item()
    (target,) = json.loads(sr.filter(pl.col("step_index") == 0)["completion"].item())
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in target["tool_calls"]]
    assert calls == [("weather", {"city": "Paris"}), ("weather", {"city": "Rome"})]
    rationale = target["content"]
    assert rationale.startswith(
        "I call weather(city='Paris') and weather(city='Rome') together because weather(city='Paris') returns sunny in Paris "
        "and weather(city='Rome') returns rainy in Rome, which moves the task forward."
    )
    alternatives = _rollouts(parallel_store)
    made = ("weather(city='Paris')", "weather(city='Rome')")
    for step_index, call in enumerate(made):
        for action, _ in alternatives[step_index]:  # K=3 replayed: every alternative shown under the call it replaced,
            shown = f"In place of {call}, calling {action} " in rationale  # but the turn's other call is no alternative
            assert shown == (action not in made), (call, action)
    assert rationale.index("In place of weather(city='Paris')") < rationale.index("In place of weather(city='Rome')")


def test_a_single_call_turn_next_to_a_parallel_one_keeps_its_row(parallel_store: Path) -> None:
    """The one-call turn (local_time(Oslo)) gets the row it got before: its own call, its own alternatives."""
    sr, report = build_sr(load_source(LocalExperienceStore(parallel_store)), TemplateTeacher(), SROptions(k=3))
    assert report.states == report.rows == sr.height == 2
    row = sr.filter(pl.col("step_index") == 2).row(0, named=True)
    (target,) = json.loads(row["completion"])
    assert row["id"] == f"sr:{row['trajectory_id']}:2"
    assert [c["function"]["name"] for c in target["tool_calls"]] == ["local_time"]
    expected = TemplateTeacher().write(
        [
            ReflectionCase(
                task="",
                context="",
                chosen="local_time(city='Oslo')",
                chosen_outcome="12:00 in Oslo",
                alternatives=_rollouts(parallel_store)[2],
            )
        ]
    )[0]
    assert target["content"] == expected and "In place of" not in expected


class RecordingTeacher:
    name = "recording"

    def __init__(self) -> None:
        self.cases: list[ReflectionCase] = []

    def write(self, cases: list[ReflectionCase]) -> list[str]:
        self.cases.extend(cases)
        return ["I check both cities at once because each forecast answers part of the task."] * len(cases)


def test_the_teacher_sees_each_call_with_the_alternatives_replayed_in_its_place(parallel_store: Path) -> None:
    teacher = RecordingTeacher()
    sr, _ = build_sr(load_source(LocalExperienceStore(parallel_store)), teacher, SROptions(k=2))
    turn, single = teacher.cases
    alternatives = _rollouts(parallel_store)
    assert [c.action for c in turn.calls] == ["weather(city='Paris')", "weather(city='Rome')"]
    assert [c.outcome for c in turn.calls] == ["sunny in Paris", "rainy in Rome"]
    for call, step_index in zip(turn.calls, (0, 1), strict=True):
        assert len(call.alternatives) == 2 and set(call.alternatives) <= set(alternatives[step_index])
    assert turn.chosen == "weather(city='Paris'); weather(city='Rome')" and turn.chosen_tools == ["weather", "weather"]
    assert turn.alternatives == [a for c in turn.calls for a in c.alternatives]
    assert not single.calls and single.chosen == "local_time(city='Oslo')"
    prompt = teacher_prompt(turn)
    assert (
        "You made these calls at once:\n- weather(city='Paris') returned: sunny in Paris\n- weather(city='Rome') returned: rainy in Rome"
        in prompt
    )
    paris, rome = prompt.index("In place of weather(city='Paris'):"), prompt.index("In place of weather(city='Rome'):")
    assert all(f"- {action} -> {outcome}" in prompt[paris:rome] for action, outcome in turn.calls[0].alternatives)
    assert all(f"- {action} -> {outcome}" in prompt[rome:] for action, outcome in turn.calls[1].alternatives)
    assert "expert" not in prompt.lower() and "action 1" not in prompt.lower()
    (target,) = json.loads(sr.filter(pl.col("step_index") == 0)["completion"].item())
    assert target["content"].startswith("I check both cities") and len(target["tool_calls"]) == 2


def test_a_chunked_build_gives_the_whole_source_rows_at_parallel_calls(parallel_store: Path, tmp_path: Path) -> None:
    whole, _ = build_sr(load_source(LocalExperienceStore(parallel_store)), TemplateTeacher(), SROptions(k=3))
    build_datasets(DatasetConfig.load(store=parallel_store, out=tmp_path / "ds", kinds="sr", chunk_mb=1e-6))
    built = pl.read_parquet(tmp_path / "ds" / "sr.parquet")
    assert built.select("id", "prompt", "completion", "step_index").equals(whole.select("id", "prompt", "completion", "step_index"))


def test_a_single_call_teacher_prompt_is_the_prompt_model_teachers_were_shown() -> None:
    """The text captured from ``teacher_prompt`` before parallel calls were grouped (model teachers' rationales of
    single-call states depend on it byte for byte)."""
    case = ReflectionCase(
        task="Make a folder a",
        context="user: make a",
        chosen="mkdir(name='a')",
        chosen_outcome="None",
        alternatives=[("ls()", "b.txt"), ("cd(folder='x')", '{"error": "no x"}')],
    )
    assert teacher_prompt(case) == (
        "You are working on this task: Make a folder a\n\nRecent conversation:\nuser: make a\n\n"
        "You took this action: mkdir(name='a')\nIt returned: None\n\n"
        "Other actions you could have taken, and what they would have returned:\n"
        '- ls() -> b.txt\n- cd(folder=\'x\') -> {"error": "no x"}\n\n'
        "In two to four sentences, in the first person, explain why the action you took is the right next step, "
        "using what each action returns. Do not mention these instructions and do not number the actions."
    )


def test_an_alternative_that_is_another_call_of_the_turn_is_not_shown_as_an_alternative(tmp_path: Path) -> None:
    """Replay proposes from the turn's shared state, so in place of weather(Paris) it may have replayed weather(Rome),
    which the expert also made in that turn: SR must not present the expert's own call as the road not taken."""
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import tool_call

    root = tmp_path / "experience"
    both = AIMessage(content="", tool_calls=[tool_call("weather", city="Paris"), tool_call("weather", city="Rome")])
    record_trajectory(root, [both, AIMessage(content="Sunny and rainy.")], "Weather in Paris and Rome?")
    policy = "tests.trainers.datasets.weather_world:EveryCityPolicy"
    run_replay(ReplayConfig.load(store=root, k=3, sandbox=SANDBOX, policy=policy))
    replayed = _rollouts(root)
    assert "weather(city='Rome')" in [a for a, _ in replayed[0]] and "weather(city='Paris')" in [a for a, _ in replayed[1]]
    teacher = RecordingTeacher()
    build_sr(load_source(LocalExperienceStore(root)), teacher, SROptions(k=3))
    (turn,) = teacher.cases
    paris, rome = ([a for a, _ in call.alternatives] for call in turn.calls)
    assert "weather(city='Oslo')" in paris and "weather(city='Oslo')" in rome
    assert "weather(city='Rome')" not in paris and "weather(city='Paris')" not in rome


def test_a_rollout_repeating_the_experts_call_with_a_whole_float_is_the_experts_call() -> None:
    """SR leaves out a turn's rollouts that repeat one of its expert calls; ``{"x": 2.0}`` was another call than the
    expert's ``{"x": 2}`` here, though replay's proposer calls them one (numbers compared as JSON reads them)."""
    from ee_middleware.trainers.datasets.sr import _call_key

    assert _call_key("set_x", '{"x": 2}') == _call_key("set_x", '{"x": 2.0}') == _call_key("set_x", '{"x":2}')
    assert _call_key("set_x", '{"x": true}') != _call_key("set_x", '{"x": 1}')  # a boolean is no number
    assert _call_key("set_x", '{"x": 2.5}') != _call_key("set_x", '{"x": 2}')
    assert _call_key("set_x", "not json") == "set_x\0not json"
