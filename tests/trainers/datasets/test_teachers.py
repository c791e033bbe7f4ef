"""Teachers: the template teacher's rationales."""

from __future__ import annotations

import pytest

from ee_middleware.trainers.datasets.teachers import CallReflection, ReflectionCase, TemplateTeacher


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

