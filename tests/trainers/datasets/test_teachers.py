"""Teachers: the template teacher's rationales, and a local model teacher's model over a whole dataset build (a real
tiny random Llama saved to a folder, loaded by ``LocalGenerator``; stores recorded from a real LangGraph agent and
replayed: ``tests/trainers/datasets/thread_world.py``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.datasets.source import load_source
from ee_middleware.trainers.datasets.sr import SAME_OUTCOME_ONLY, SROptions, build_sr
from ee_middleware.trainers.datasets.teachers import CallReflection, ReflectionCase, TemplateTeacher, build_teacher, closing_teacher
from tests.trainers.datasets.thread_world import record_requests, record_threads


@pytest.mark.parametrize("outcome", ["", "Error: ValueError: no copies of 1984 left", '{"error": "not found"}', "rainy"])
def test_the_template_never_calls_an_outcome_equal_to_the_chosen_one_worse(outcome: str) -> None:
    """An alternative shown with the chosen call's own outcome (an empty answer, the same error, the same text) is said
    to return the same. Before, the same error 'fails with' it and the same answer 'does not do what the task asks'."""
    single = ReflectionCase(
        task="Reserve 1984.",
        context="user: Reserve 1984.",
        chosen="reserve(isbn='1984')",
        chosen_outcome=outcome,
        alternatives=[("reserve(isbn='1984', notes='x')", outcome), ("search(query='x')", "Error: unknown query")],
    )
    parallel = ReflectionCase(
        task="Reserve 1984.",
        context="user: Reserve 1984.",
        chosen="reserve(isbn='1984'); search(query='1984')",
        chosen_outcome=f"{outcome}; 3 books",
        calls=[
            CallReflection("reserve(isbn='1984')", outcome, "reserve", [("reserve(isbn='1984', notes='x')", outcome)], ["reserve"]),
            CallReflection("search(query='1984')", "3 books", "search", [("search(query='1')", "3 books")], ["search"]),
        ],
    )
    first, second = TemplateTeacher().write([single, parallel])
    assert "Calling reserve(isbn='1984', notes='x') returns the same result." in first
    assert "Calling search(query='x') fails with Error: unknown query." in first, "a different outcome is still contrasted"
    assert "In place of reserve(isbn='1984'), calling reserve(isbn='1984', notes='x') returns the same result." in second
    assert "In place of search(query='1984'), calling search(query='1') returns the same result." in second
    assert first.count("fails with") == 1 and "fails with" not in second
    assert "does not do what the task asks" not in first + second


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    tokenizer = build_test_tokenizer(["You are working on this task: What's the weather in Rome? weather city rainy sunny"] * 4)
    return save_tiny_llama(tmp_path_factory.mktemp("teacher-model"), tokenizer)


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every load of a local model from its folder, by generator (the real load runs)."""
    from ee_middleware.models.local import LocalGenerator

    loaded: list[Any] = []
    load = LocalGenerator._load

    def counted(self: LocalGenerator) -> None:
        loaded.append(self)
        load(self)

    monkeypatch.setattr(LocalGenerator, "_load", counted)
    return loaded


def test_a_local_teacher_loads_its_model_once_for_all_batches(model_dir: Path, tmp_path: Path, loads: list[Any]) -> None:
    """Two states in batches of one: one load (before: the teacher closed its model after each batch, so every batch
    loaded it again). The model stays until the teacher is closed."""
    store = record_threads(tmp_path / "experience")
    teacher = build_teacher(f"local:{model_dir}", max_new_tokens=4)
    with closing_teacher(teacher):
        _, report = build_sr(load_source(LocalExperienceStore(store)), teacher, SROptions(batch_size=1))
        # (a random model's 4 tokens are no prose: its rationales are dropped after it wrote them)
        assert report.states - report.dropped[SAME_OUTCOME_ONLY] == 2, "two states given to the teacher, in two batches"
        assert len(loads) == 1 and loads[0].loaded
    assert not loads[0].loaded, "closed with the teacher"


def test_a_dataset_build_loads_the_teacher_model_once_and_releases_it(model_dir: Path, tmp_path: Path, loads: list[Any]) -> None:
    """``ee datasets build --teacher local:DIR`` on 17 states (two batches of the build's 16): the model is loaded once
    (before: twice) and released when the build ends."""
    store = record_requests(tmp_path / "experience", 17)
    batches: list[int] = []
    summary = build_datasets(
        DatasetConfig.load(store=store, out=tmp_path / "ds", kinds="sr", teacher=f"local:{model_dir}"),
        on_sr_progress=lambda done, total: batches.append(done),
    )
    assert summary["datasets"]["sr"]["states"] == 17 and batches == [16, 17]
    assert len(loads) == 1 and not loads[0].loaded


def test_a_failed_build_releases_the_teacher_model(model_dir: Path, tmp_path: Path, loads: list[Any]) -> None:
    """A build stopped after the teacher's first batch (here by its progress callback raising, as a Ctrl-C there would)
    still closes the teacher: its model is not left in memory."""
    store = record_threads(tmp_path / "experience")

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_datasets(DatasetConfig.load(store=store, out=tmp_path / "ds", kinds="sr", teacher=f"local:{model_dir}"), on_sr_progress=stop)
    assert len(loads) == 1 and not loads[0].loaded


def test_a_local_teachers_own_error_is_not_blamed_on_the_user(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was (713b4f2): write_rationales wrapped every teacher's error, built-ins' too, so a ``local:`` teacher's CUDA
    out-of-memory error while generating read 'The teacher 'local:...' failed in write(cases) ... raised by the teacher,
    not by ee-middleware: fix it there'. Now it passes as it is (a plug-in teacher's error is still named:
    test_teacher_plugins.py). Injected: the real tiny model's generate raises torch's real OutOfMemoryError (no GPU
    here); the build, the teacher and its LocalGenerator are real."""
    torch = pytest.importorskip("torch")
    import transformers

    def out_of_memory(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(transformers.LlamaForCausalLM, "generate", out_of_memory)
    store = record_threads(tmp_path / "experience")
    with pytest.raises(torch.cuda.OutOfMemoryError, match="CUDA out of memory") as raised:
        build_datasets(DatasetConfig.load(store=store, out=tmp_path / "ds", kinds="sr", teacher=f"local:{model_dir}"))
    assert type(raised.value) is torch.cuda.OutOfMemoryError


RATIONALE = "I call weather for Rome because it returns the forecast the task asks about."
THINKING_TEACHER = [  # (content, finish_reason, reasoning_content), one per request, in the build's order
    (f"<think>\nOkay, the user wants Rome's weather. Maybe London?\n</think>\n\n{RATIONALE}", "stop", None),
    ("<think>\nOkay, let me look at what each call returns. The task asks about the weather, so", "length", None),
    ("<think>\nOkay, Rome it is.\n</think>\n\nI call weather for Rome because it", "length", None),
    (RATIONALE, "stop", "Okay, the server's reasoning parser kept this apart."),
]


@contextmanager
def thinking_teacher_server() -> Iterator[str]:
    """A real HTTP server answering as a reasoning model served without a reasoning parser (a scripted stand-in):
    :data:`THINKING_TEACHER`'s answers, in turn."""
    from ee_middleware.testing.http import ScriptedChatServer

    answers = [
        ({"role": "assistant", "content": content} | ({"reasoning_content": reasoning} if reasoning else {}), finish_reason)
        for content, finish_reason, reasoning in THINKING_TEACHER
    ]
    with ScriptedChatServer(answers) as server:
        yield server.base_url


def test_a_reasoning_teacher_s_thinking_never_becomes_a_rationale_scripted_server(tmp_path: Path) -> None:
    """Was: a teacher writing its reasoning inline (no reasoning parser on its server) had its ``<think>`` block stored as
    the SR target, and an answer cut at its ``max_tokens`` while still thinking became a rationale of half a thought.
    Now the rationale is what it said; an answer cut at ``max_tokens`` by a teacher that reasons gives no row (the guards
    drop it as empty), whether it was cut inside its reasoning or after it."""
    store = record_requests(tmp_path / "experience", len(THINKING_TEACHER))
    with thinking_teacher_server() as url, closing_teacher(build_teacher(f"openai:{url}#qwen3")) as teacher:
        assert teacher is not None
        frame, report = build_sr(load_source(LocalExperienceStore(store)), teacher, SROptions())
    rationales = [json.loads(completion)[0]["content"] for completion in frame["completion"]]
    assert rationales == [RATIONALE, RATIONALE]
    assert report.dropped["empty"] == 2 and report.states == len(THINKING_TEACHER)
