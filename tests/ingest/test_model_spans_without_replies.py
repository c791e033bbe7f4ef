"""Model spans that hold each call's prompt but not its reply: OpenLLMetry 0.48.1's LangChain spans with langchain-core
1.x (a real trace, ``fixtures/openllmetry_0_48_no_completions.jsonl``). Each reply is in the history that follows it
(the next call's prompt) and the last one in what the graph returned. Before, every run had no decision and was stored
``stopped`` ("a middleware or graph node ended the run"), with no problem reported."""

from __future__ import annotations

import copy
import json

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


def _with_title_node(request: dict) -> dict:
    """The fixture's weather run with one more node after the agent's last call: a 'title' task whose model call is
    given a prompt of its own (not the conversation), with no reply written either, as every span of that version."""
    request = copy.deepcopy(request)
    spans = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    weather = {s["traceId"] for s in spans if s["name"] == "LangGraph.workflow" and "Fahrenheit" in json.dumps(s)}
    trace = [s for s in spans if s["traceId"] in weather]
    chats = sorted((s for s in trace if s["name"] == "ChatOpenAI.chat"), key=lambda s: int(s["startTimeUnixNano"]))
    last_chat = chats[-1]
    last_task = next(s for s in trace if s["spanId"] == last_chat["parentSpanId"])
    workflow = next(s for s in trace if s["name"] == "LangGraph.workflow")
    end = int(last_task["endTimeUnixNano"])
    task = copy.deepcopy(last_task)
    task.update(spanId="1" * 16, name="title.task", startTimeUnixNano=str(end + 100_000), endTimeUnixNano=str(end + 900_000))
    chat = copy.deepcopy(last_chat)
    chat.update(spanId="2" * 16, parentSpanId="1" * 16, startTimeUnixNano=str(end + 200_000), endTimeUnixNano=str(end + 800_000))
    prompt = "Write a 3-word title for this question: What's the weather in Paris, in Fahrenheit?"
    chat["attributes"] = [a for a in chat["attributes"] if not a["key"].startswith("gen_ai.prompt.")] + [
        {"key": "gen_ai.prompt.0.role", "value": {"stringValue": "user"}},
        {"key": "gen_ai.prompt.0.content", "value": {"stringValue": prompt}},
    ]
    workflow["endTimeUnixNano"] = str(max(int(workflow["endTimeUnixNano"]), end + 1_000_000))
    request["resourceSpans"][0]["scopeSpans"][0]["spans"] = [*trace, task, chat]
    return request


def test_a_node_calling_the_model_with_a_prompt_of_its_own_last_is_not_given_the_runs_answer(tmp_path, store):
    """The graph returned the agent's answer; its last model call is a node's own (a title): that call's reply is not
    the answer, and no later history shows the agent's last reply, so nothing is guessed (found by review: the title
    prompt was stored as the state the answer was decided in)."""
    [request] = [json.loads(line) for line in (FIXTURES / "openllmetry_0_48_no_completions.jsonl").read_text().splitlines()]
    path = tmp_path / "title.jsonl"
    path.write_text(json.dumps(_with_title_node(request)) + "\n")
    report = ingest_files([path], store)
    assert report.problems == 0, report.errors
    [t] = store.iter_trajectories()
    assert [step[0] for step in _steps(t)] == ["get_weather", "convert_temp"]
    assert t.status == "stopped" and "no model call wrote its last message" in t.error
