"""Tool calls without ids (the GenAI conventions make ``id`` optional on ``tool_call`` and ``tool_call_response`` parts;
Gemini's and Ollama's calls have none), no tool span traced: each call's observation is the tool response that follows
the reply in the next call's history, paired by position. Before, it was dropped (observation ``None``): the reply's
tool messages were looked up by call id only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import _request, _span, _write

USER = {"role": "user", "parts": [{"type": "text", "content": "Stock of SKU-9 and SKU-4?"}]}


def _call(*skus: str, with_id_key: bool = True) -> dict[str, Any]:
    parts = [{"type": "tool_call", "name": "check_stock", "arguments": {"sku": sku}} for sku in skus]
    if with_id_key:
        parts = [{**part, "id": None} for part in parts]
    return {"role": "assistant", "parts": parts, "finish_reason": "tool_call"}


def _results(*results: Any) -> dict[str, Any]:
    return {"role": "user", "parts": [{"type": "tool_call_response", "id": None, "response": r} for r in results]}


def _model(span_id: str, given: list[Any], reply: dict[str, Any], start: int, **attrs: Any) -> dict[str, Any]:
    return _span(
        span_id,
        "generate_content gemini-2.5-flash",
        {
            "gen_ai.operation.name": "generate_content",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.input.messages": json.dumps(given),
            "gen_ai.output.messages": json.dumps([reply]),
            **attrs,
        },
        parent="c000000000000001",
        start=start,
        end=start + 4,
    )


def _ingest(tmp_path: Path, *models: dict[str, Any]) -> Any:
    agent = _span(
        "c000000000000001", "invoke_agent shop", {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "shop"}, start=0, end=90
    )
    store = LocalExperienceStore(tmp_path / "store")
    report = ingest_files([_write(tmp_path / "spans.json", _request([agent, *models]))], store)
    assert len(report.ingested) == 1 and not report.errors
    [t] = list(store.iter_trajectories())
    return t


def _observations(t: Any) -> list[tuple[Any, ...]]:
    return [
        (s.action.tool_call.arguments["sku"], s.observation.content if s.observation else None)
        for s in t.steps
        if s.action.tool_call is not None
    ]


def test_a_call_without_id_is_observed_by_the_response_after_it(tmp_path: Path) -> None:
    answer = {"role": "assistant", "parts": [{"type": "text", "content": "12 in stock."}], "finish_reason": "stop"}
    for with_id_key in (True, False):
        call = _call("SKU-9", with_id_key=with_id_key)
        t = _ingest(
            tmp_path / str(with_id_key),
            _model("c000000000000002", [USER], call, 1),
            _model("c000000000000003", [USER, call, _results({"result": 12})], answer, 10),
        )
        assert _observations(t) == [("SKU-9", '{"result":12}')]
        assert (t.status, t.final_answer) == ("completed", "12 in stock.")


def test_parallel_calls_without_ids_are_paired_with_the_responses_in_their_order(tmp_path: Path) -> None:
    calls = _call("SKU-9", "SKU-4")
    again = _call("SKU-1")
    answer = {"role": "assistant", "parts": [{"type": "text", "content": "12, 0 and 3 in stock."}], "finish_reason": "stop"}
    first = [USER, calls, _results({"result": 12}, {"result": 0})]
    t = _ingest(
        tmp_path,
        _model("c000000000000002", [USER], calls, 1),
        _model("c000000000000003", first, again, 10),
        _model("c000000000000004", [*first, again, _results({"result": 3})], answer, 20),
    )
    assert _observations(t) == [("SKU-9", '{"result":12}'), ("SKU-4", '{"result":0}'), ("SKU-1", '{"result":3}')]


def test_responses_that_do_not_match_the_calls_in_number_are_not_guessed(tmp_path: Path) -> None:
    """Two calls, one response (a middleware dropped one): which call it answers is not known, so neither is observed."""
    calls = _call("SKU-9", "SKU-4")
    answer = {"role": "assistant", "parts": [{"type": "text", "content": "12 in stock."}], "finish_reason": "stop"}
    t = _ingest(
        tmp_path,
        _model("c000000000000002", [USER], calls, 1),
        _model("c000000000000003", [USER, calls, _results({"result": 12})], answer, 10),
    )
    assert _observations(t) == [("SKU-9", None), ("SKU-4", None)]


def _lookups(*calls: tuple[str | None, str]) -> dict[str, Any]:
    """One reply calling check_stock for each (call id or None, sku)."""
    parts = [{"type": "tool_call", "name": "check_stock", "arguments": {"sku": sku}, **({"id": i} if i else {})} for i, sku in calls]
    return {"role": "assistant", "parts": parts, "finish_reason": "tool_call"}


def _responses(*responses: tuple[str | None, str]) -> list[dict[str, Any]]:
    return [{"role": "tool", "parts": [{"type": "tool_call_response", "response": r, **({"id": i} if i else {})}]} for i, r in responses]


def test_a_call_without_id_is_not_given_the_response_that_names_another_call(tmp_path: Path) -> None:
    """A reply calling SKU-9 with id "x" and SKU-4 without one, answered SKU-4 first: pairing by position gave SKU-4 the
    response whose tool_call_id says it is x's. Responses naming a call of the reply answer that call; the others pair
    with the calls without id in their order; where a call's id is answered by none, nothing is guessed."""
    answer = {"role": "assistant", "parts": [{"type": "text", "content": "done"}], "finish_reason": "stop"}
    calls = _lookups(("x", "SKU-9"), (None, "SKU-4"))
    cases = {
        "id-less first": (_responses((None, "four"), ("x", "nine")), [("SKU-9", "nine"), ("SKU-4", "four")]),
        "id first": (_responses(("x", "nine"), (None, "four")), [("SKU-9", "nine"), ("SKU-4", "four")]),
        # x's response carries no id either: which of the two is SKU-4's is not known
        "no ids answered": (_responses((None, "nine"), (None, "four")), [("SKU-9", None), ("SKU-4", None)]),
    }
    for name, (responses, expected) in cases.items():
        t = _ingest(
            tmp_path / name.replace(" ", "-"),
            _model("c000000000000002", [USER], calls, 1),
            _model("c000000000000003", [USER, calls, *responses], answer, 10),
        )
        assert _observations(t) == expected, name


def _long_run(n: int, mode: str) -> list[dict[str, Any]]:
    """A run of ``n`` model calls whose calls have no ids and can be paired with nothing: two parallel calls answered by
    one merged response (``merged``), or tool results handed back as user text (``text``)."""
    spans, history = [], [USER]
    for i in range(n):
        skus = [f"SKU-{i}", f"SKU-{-i}"] if mode == "merged" else [f"SKU-{i}"]
        call = _call(*skus, with_id_key=False)
        done = {"role": "assistant", "parts": [{"type": "text", "content": "done"}], "finish_reason": "stop"}
        spans.append(_model(f"c{i + 2:015x}", history, call if i < n - 1 else done, 10 * i + 1))
        merged = {"role": "tool", "parts": [{"type": "tool_call_response", "response": f"r{i}"}]}
        history = [*history, call, merged if mode == "merged" else {"role": "user", "parts": [{"type": "text", "content": f"r{i}"}]}]
    return spans


@pytest.mark.parametrize("mode", ["merged", "text"])
def test_a_long_run_whose_calls_cannot_be_paired_decodes_each_call_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Each call without id rescanned every later history and decoded its calls' arguments again: 120 model calls whose
    merged responses pair with nothing took 14.7 s to ingest (0.14 s before such calls were paired), cubic in the run's
    length. Each message's calls are now decoded once per run."""
    import ee_middleware.capture.assembler as assembler
    import ee_middleware.ingest.service as service

    decoded, assembled = 0, 0
    parse, assemble = assembler.parse_arguments, service.assemble

    def counting(arguments: Any) -> Any:
        nonlocal decoded
        decoded += 1
        return parse(arguments)

    def assembling(*args: Any, **kwargs: Any) -> Any:
        nonlocal assembled
        assembled += 1
        return assemble(*args, **kwargs)

    monkeypatch.setattr(assembler, "parse_arguments", counting)
    monkeypatch.setattr(service, "assemble", assembling)
    n = 80
    t = _ingest(tmp_path, *_long_run(n, mode))
    calls = sum(1 for s in t.steps if s.action.tool_call is not None)
    assert calls == (n - 1) * (2 if mode == "merged" else 1)
    assert all(s.observation is None for s in t.steps), "nothing is guessed"
    # per assembly, a step's own call, its reply, and the reply's copy in the histories (shared by them): 3 per call, where
    # every call decoded every later history's calls (some 20 000 times per assembly here)
    assert assembled and decoded <= 3 * calls * assembled, (decoded, assembled)


def _tool(span_id: str, sku: str, result: str, start: int) -> dict[str, Any]:
    attrs = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "check_stock",
        "gen_ai.tool.call.arguments": json.dumps({"sku": sku}),
        "gen_ai.tool.call.result": result,
    }
    return _span(span_id, "execute_tool check_stock", attrs, parent="c000000000000001", start=start, end=start + 1)


@pytest.mark.parametrize("order", ["as called", "as finished"])
def test_results_given_in_the_order_the_calls_finished_go_to_their_own_calls(tmp_path: Path, order: str) -> None:
    """Parallel calls without ids whose results the app gave the model in the order the calls finished (SKU-4's first):
    paired by position, SKU-9's call got SKU-4's result, though each call's tool span said what it returned (a sweep of
    other instrumentations' traces; the wrong pair reached the IWM dataset). Where the tool spans' results are exactly
    the messages' contents, in another order, each call gets the message holding its own result."""
    answer = {"role": "assistant", "parts": [{"type": "text", "content": "12 and 3."}], "finish_reason": "stop"}
    call = _call("SKU-9", "SKU-4")
    results = ["SKU-9: 12", "SKU-4: 3"] if order == "as called" else ["SKU-4: 3", "SKU-9: 12"]
    t = _ingest(
        tmp_path,
        _model("c000000000000002", [USER], call, 1),
        _tool("c000000000000004", "SKU-4", "SKU-4: 3", 6),
        _tool("c000000000000005", "SKU-9", "SKU-9: 12", 7),
        _model("c000000000000003", [USER, call, _results(*results)], answer, 10),
    )
    assert _observations(t) == [("SKU-9", "SKU-9: 12"), ("SKU-4", "SKU-4: 3")]
