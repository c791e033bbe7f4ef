"""The teacher conformance kit (``ee_middleware.trainers.datasets.testing``): the built-in teachers pass it (the template
through the registry, ``openai:`` against a real HTTP server answering from a script, ``local:`` with a tiny random
Llama, heavy), and fake teachers that each break one promise fail it with a message naming that promise."""

from __future__ import annotations

import io
import itertools
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.testing import ScriptedChatServer
from ee_middleware.trainers.datasets.teachers import ReflectionCase, TemplateTeacher, build_teacher, teacher_prompt
from ee_middleware.trainers.datasets.testing import check_teacher, conformance_cases


def test_the_template_teacher_passes_through_the_registry() -> None:
    report = check_teacher(lambda: build_teacher("template"), deterministic=True)
    assert report.name == "template" and report.cases == len(conformance_cases())
    assert report.rationales == report.kept == report.cases and report.dropped == {}, report.texts
    assert report.repeatable and not report.closes and report.writes_after_close is None


def _scripted_rationale(body: dict[str, Any]) -> str:
    """A rationale made from the prompt's own action (so the same case gets the same text, and another case another)."""
    prompt = body["messages"][0]["content"]
    action = re.search(r"^You took this action: (.*)$|^You made these calls at once:\n- (.*?) returned:", prompt, re.MULTILINE)
    assert action, prompt
    return f"I call {action[1] or action[2]} because what it returns is what the task needs."


def test_the_openai_teacher_passes_against_a_scripted_server() -> None:
    """A real HTTP server; the teacher's client closes and opens its connections again after close()."""
    with ScriptedChatServer(_scripted_rationale) as server:
        report = check_teacher(lambda: build_teacher(f"openai:{server.base_url}#m"), deterministic=True)
    assert report.name == "openai:m" and report.closes and report.writes_after_close is True
    assert report.rationales == report.kept == report.cases and report.repeatable
    prompts = [request["messages"][0]["content"] for request in server.requests]
    assert {teacher_prompt(case) for case in conformance_cases()} <= set(prompts), "every kit case reached the server"
    assert all(request["temperature"] == 0 for request in server.requests)


def test_an_openai_teacher_whose_model_only_reasons_writes_no_rationale_and_fails() -> None:
    """Every answer stopped at max_tokens while reasoning: the teacher writes '' for each case (no row), which the kit
    names, with the fix."""
    cut = ({"role": "assistant", "content": "<think>Let me compare", "reasoning_content": "Let me compare"}, "length")
    with ScriptedChatServer([cut]) as server, pytest.raises(AssertionError) as failed:
        check_teacher(lambda: build_teacher(f"openai:{server.base_url}#m"))
    message = str(failed.value)
    assert "a rationale (a text that is not empty) for some case" in message and "max_tokens" in message, message


class FakeTeacher:
    """A fake teacher that writes as the template does; the fakes below each break one promise."""

    name = "fake-teacher"

    def write(self, cases: list[ReflectionCase]) -> Any:
        return TemplateTeacher().write(cases)


class ShortFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return super().write(cases)[:-1]


class NoEmptyBatchFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        first = cases[0]  # a batch of none was not thought of
        return [f"I call {first.chosen} first." if case is first else f"I call {case.chosen}." for case in cases]


class JoinedFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return "\n\n".join(super().write(cases))


class KeyedFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return dict(enumerate(super().write(cases)))


class AnswerObjectsFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return [{"text": text} for text in super().write(cases)]


class RaisingFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        raise ConnectionError("rationale service at http://rationale.internal returned 503")


class SilentFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return [None for _ in cases]


class SortingFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        cases.sort(key=lambda case: case.chosen)  # sorts the caller's list
        return super().write(cases)


class PoppingFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        texts = []
        while cases:
            texts += super().write([cases.pop(0)])
        return texts


class MutatingFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        for case in cases:
            case.alternatives.sort()  # the case's own list
        return super().write(cases)


class NamelessFakeTeacher:
    def write(self, cases: list[ReflectionCase]) -> Any:
        return TemplateTeacher().write(cases)


class NoneNameFakeTeacher(FakeTeacher):
    name = None  # type: ignore[assignment]


class WriteLessFakeTeacher:
    name = "fake-teacher"


_made = itertools.count()


class NumberedFakeTeacher(FakeTeacher):
    def __init__(self) -> None:
        self.name = f"fake-teacher-{next(_made)}"


class CountingNameFakeTeacher(FakeTeacher):
    writes = 0

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"fake-teacher-{self.writes}"

    def write(self, cases: list[ReflectionCase]) -> Any:
        self.writes += 1
        return super().write(cases)


class RandomFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return [f"{text} I am {random.random():.6f} sure." for text in super().write(cases)]


class CountingFakeTeacher(FakeTeacher):
    calls = 0

    def write(self, cases: list[ReflectionCase]) -> Any:
        self.calls += 1
        return [f"{text} (batch {self.calls})" for text in super().write(cases)]


class SortedTextsFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return sorted(super().write(cases))  # the same texts each time, but not in the cases' order


class UnusableAfterCloseFakeTeacher(FakeTeacher):
    """A fake teacher holding a resource (a log, in memory) that close() releases, and using it after: AttributeError."""

    def __init__(self) -> None:
        self._log: io.StringIO | None = io.StringIO()

    def write(self, cases: list[ReflectionCase]) -> Any:
        for case in cases:
            self._log.write(case.chosen + "\n")  # type: ignore[union-attr]
        return super().write(cases)

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class CloseTwiceFakeTeacher(UnusableAfterCloseFakeTeacher):
    def close(self) -> None:
        self._log.close()  # type: ignore[union-attr]
        self._log = None


class LazyCloseFakeTeacher(FakeTeacher):
    """Opens its log on first write; close() assumes it did."""

    _log: io.StringIO | None = None

    def write(self, cases: list[ReflectionCase]) -> Any:
        self._log = self._log or io.StringIO()
        return super().write(cases)

    def close(self) -> None:
        self._log.close()  # type: ignore[union-attr]
        self._log = None


class RefusingAfterCloseFakeTeacher(UnusableAfterCloseFakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        if self._log is None:
            raise RuntimeError(f"{self.name} is closed: make a new teacher")
        return super().write(cases)


class GeneratorFakeTeacher(FakeTeacher):
    def write(self, cases: list[ReflectionCase]) -> Any:
        return (text for text in super().write(cases))


@pytest.mark.parametrize(
    ("fake", "deterministic", "expected"),
    [
        (ShortFakeTeacher, False, "write(cases) of 5 cases returned 4 texts where the protocol requires 5, one per case"),
        (NoEmptyBatchFakeTeacher, False, "write([]) raised IndexError: list index out of range"),
        (JoinedFakeTeacher, False, "write([]) returned '' where the protocol requires a list of 0 texts"),
        (JoinedFakeTeacher, False, "A str is one text, not one per case"),
        (KeyedFakeTeacher, False, "not keyed"),
        (AnswerObjectsFakeTeacher, False, "write(cases) of 5 cases, its text 0 returned {'text': "),
        (RaisingFakeTeacher, False, "write([]) raised ConnectionError: rationale service at http://rationale.internal returned 503"),
        (SilentFakeTeacher, False, "a teacher that writes none gives an empty SR dataset"),
        (SortingFakeTeacher, False, "write(cases) leaves the list it was given as it was"),
        (PoppingFakeTeacher, False, "then the list of cases it was given returned 0 cases, not the ones it was given"),
        (MutatingFakeTeacher, False, "then case 0's alternatives returned [(\"check_stock(item='')\""),
        (MutatingFakeTeacher, False, "write(cases) leaves every case as it was (it changed alternatives)"),
        (NamelessFakeTeacher, False, "NamelessFakeTeacher has no 'name' attribute"),
        (NoneNameFakeTeacher, False, "NoneNameFakeTeacher.name of a new teacher returned None where the protocol requires a non-empty str"),
        (WriteLessFakeTeacher, False, "WriteLessFakeTeacher has no write(cases) method"),
        (NumberedFakeTeacher, False, "of a second teacher make_teacher built returned 'fake-teacher-"),
        (CountingNameFakeTeacher, False, "CountingNameFakeTeacher.name after write(cases) returned 'fake-teacher-"),
        (RandomFakeTeacher, True, "write(cases) is deterministic (checked with deterministic=True)"),
        (CountingFakeTeacher, True, "empty. (batch 2)' in the kit's batch, then …'h Error: item must not be empty. (batch 3)' asked again"),
        (
            SortedTextsFakeTeacher,
            True,
            "Case 1 (\"order_item(item='pear', quantity=5); ship(order_id='O-10...) got \"I call compare_ledger",
        ),
        (SortedTextsFakeTeacher, True, "written alone (write([case]))"),
        (CloseTwiceFakeTeacher, False, "close() of a teacher that never wrote, called again raised AttributeError"),
        (LazyCloseFakeTeacher, False, "close() of a teacher that never wrote raised AttributeError"),
        (
            UnusableAfterCloseFakeTeacher,
            False,
            "write(cases) after close() raised AttributeError: \"'NoneType' object has no attribute 'write'\"",
        ),
    ],
)
def test_a_fake_teacher_breaking_a_promise_fails_naming_it(fake: type, deterministic: bool, expected: str) -> None:
    with pytest.raises(AssertionError) as failed:
        check_teacher(fake, deterministic=deterministic)
    assert expected in str(failed.value), str(failed.value)


def test_a_failure_says_how_to_fix_it() -> None:
    """Each kind of failure ends with a fix (a few, in full)."""
    fixes = {
        ShortFakeTeacher: "Return [rationale(case) for case in cases]: None for a case you have no rationale for",
        MutatingFakeTeacher: "Copy what you change (sorted(case.alternatives), list(case.calls))",
        CountingNameFakeTeacher: "Set it once, from the teacher's settings, not from a counter",
        CloseTwiceFakeTeacher: "if self._client is not None: self._client.close(); self._client = None",
        UnusableAfterCloseFakeTeacher: "raise RuntimeError(f'{self.name} is closed: make a new teacher') at the top of write()",
    }
    for fake, fix in fixes.items():
        with pytest.raises(AssertionError) as failed:
            check_teacher(fake)
        assert fix in str(failed.value), (fake.__name__, str(failed.value))


def test_a_fake_teacher_that_refuses_to_write_after_close_saying_so_passes() -> None:
    report = check_teacher(RefusingAfterCloseFakeTeacher, deterministic=True)
    assert report.closes and report.writes_after_close is False


def test_a_fake_teacher_returning_a_generator_passes() -> None:
    """write_rationales reads any iterable that is not a str or a mapping, once: so does the kit."""
    report = check_teacher(GeneratorFakeTeacher, deterministic=True)
    assert report.rationales == report.cases and report.repeatable


def test_a_random_fake_teacher_passes_without_deterministic_and_is_reported() -> None:
    report = check_teacher(RandomFakeTeacher)
    assert not report.repeatable and report.rationales == report.cases
    assert check_teacher(FakeTeacher).repeatable


def test_the_guards_verdicts_are_reported() -> None:
    """Rationales the SR guards drop are reported, not failed: here one names a label, one recommends an alternative."""

    class LeakyFakeTeacher(FakeTeacher):
        def write(self, cases: list[ReflectionCase]) -> Any:
            texts = super().write(cases)
            return ["As the expert, I call it.", "I should call search_catalog instead.", *texts[2:]] if len(cases) > 2 else texts

    report = check_teacher(LeakyFakeTeacher, cases=conformance_cases()[:1] * 2 + conformance_cases()[1:])
    assert report.dropped == {"label_leak": 1, "recommends_alternative": 1} and report.kept == report.cases - 2


def test_the_kit_writes_the_cases_it_is_given_in_batches_of_the_batch_size() -> None:
    seen: list[list[ReflectionCase]] = []

    class RecordingFakeTeacher(FakeTeacher):
        def write(self, cases: list[ReflectionCase]) -> Any:
            seen.append(list(cases))
            return super().write(cases)

    mine = ReflectionCase(
        task="Say hi.", context="user: hi", chosen="greet(name='Ada')", chosen_outcome="Hi Ada", alternatives=[("greet()", "Hi")]
    )
    report = check_teacher(RecordingFakeTeacher, cases=[mine], batch_size=3)
    assert report.cases == 1 and report.texts == tuple(TemplateTeacher().write([mine]))
    assert [len(batch) for batch in seen] == [0, 1, 1, 1, 1, 3, 1], (
        "[], the cases, again, alone, reversed, the batch of 3, write_rationales"
    )
    assert all(case == mine for batch in seen for case in batch)
    assert [case is mine for case in seen[5]] == [True, False, True], "the batch holds the case itself twice and an equal copy"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    tokenizer = build_test_tokenizer(["You are working on this task: Are pears in stock? I call check_stock because"] * 4)
    yield save_tiny_llama(tmp_path_factory.mktemp("teacher-model"), tokenizer)


@pytest.mark.heavy
def test_the_local_teacher_passes_with_a_tiny_model(model_dir: Path) -> None:
    """Greedy decoding is deterministic; after close() the model is loaded again on the next write."""
    report = check_teacher(lambda: build_teacher(f"local:{model_dir}", max_new_tokens=4), deterministic=True)
    assert report.name == f"local:{model_dir.name}" and report.closes and report.writes_after_close is True
