"""Model spans that hold each call's prompt but not its reply: OpenLLMetry 0.48.1's LangChain spans with langchain-core
1.x (a real trace, ``fixtures/openllmetry_0_48_no_completions.jsonl``). Each reply is in the history that follows it
(the next call's prompt) and the last one in what the graph returned. Before, every run had no decision and was stored
``stopped`` ("a middleware or graph node ended the run"), with no problem reported."""

from __future__ import annotations

from ee_middleware.ingest import ingest_files
from tests.ingest.test_instrumentations import FIXTURES, _steps


def test_each_reply_is_read_from_the_history_after_it(store):
    report = ingest_files([FIXTURES / "openllmetry_0_48_no_completions.jsonl"], store)
    assert (report.problems, report.runs) == (0, 3), report.errors
    by_task = {t.task: t for t in store.iter_trajectories()}
    weather = by_task["What's the weather in Paris, in Fahrenheit?"]
    assert (weather.status, weather.error) == ("completed", None)
    assert _steps(weather) == [
        ("get_weather", {"city": "Paris"}, "20C and sunny in Paris", False),
        ("convert_temp", {"celsius": 20}, "68F", False),
        ("answer", "It is 20C (68F) and sunny in Paris."),
    ]
    assert [s.decision_index for s in weather.steps] == [0, 1, 2]
    parallel = by_task["parallel: weather in Paris and Rome?"]
    assert parallel.status == "completed"
    assert _steps(parallel) == [
        ("get_weather", {"city": "Paris"}, "20C and sunny in Paris", False),
        ("get_weather", {"city": "Rome"}, "20C and sunny in Rome", False),
        ("answer", "Paris 20C, Rome 25C."),
    ]
    assert [s.decision_index for s in parallel.steps] == [0, 0, 1]
    failed = by_task["Weather in Atlantis?"]
    assert (failed.status, failed.error) == ("error", "ValueError: no such city: Atlantis")
