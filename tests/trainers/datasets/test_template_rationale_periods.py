"""The template teacher ends each sentence with one period (S14: "... Please fix your mistakes.." where an
alternative's outcome, LangGraph's ToolNode error template, already ended in one)."""

from __future__ import annotations

import re

from ee_middleware.trainers.datasets.teachers import CallReflection, ReflectionCase, TemplateTeacher

TOOL_NODE_ERROR = "Error: KeyError(8)\n Please fix your mistakes."


def test_an_alternative_whose_outcome_ends_a_sentence_gets_no_second_period() -> None:
    single = ReflectionCase(
        task="page on-call",
        context="",
        chosen="sla_deadline(priority=2)",
        chosen_outcome='{"deadline": "2026-03-01T12:00:00"}',
        alternatives=[
            ("sla_deadline(priority=8)", TOOL_NODE_ERROR),
            ("sla_deadline(priority=9)", "Error: is it 9?"),
            ("sla_deadline(priority=3)", '{"deadline": "2026-03-02T12:00:00"}'),
        ],
    )
    parallel = ReflectionCase(
        task="two tickets",
        context="",
        chosen="get(a); get(b)",
        chosen_outcome="A; B",
        calls=[
            CallReflection("get(a)", "A", "get", alternatives=[("get(x)", "Error: no such ticket x.")]),
            CallReflection("get(b)", "B", "get", alternatives=[("get(y)", "returned y")]),
        ],
    )
    first, second = TemplateTeacher().write([single, parallel])
    assert "fails with Error: KeyError(8) Please fix your mistakes. Calling" in first, first
    assert "fails with Error: is it 9? Calling" in first, first
    assert first.endswith("which does not do what the task asks."), first
    assert "fails with Error: no such ticket x. In place of get(b)" in second, second
    for text in (first, second):
        assert not re.search(r"[.!?]\.", text), text
