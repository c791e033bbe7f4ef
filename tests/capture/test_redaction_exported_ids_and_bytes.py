"""Two paths a privacy sweep found raw values on: a tool call's id (made from the customer) on the span a user's own
exporter receives, and bytes (an environment's ``b"jane@..."``) stored as base64 of the raw text."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.redaction import Redactor
from ee_middleware.testing import ScriptedChatModel, tool_call

EMAIL = "jane.doe@example.com"


@tool
def find_user(email: str) -> str:
    """Find a user by e-mail."""
    return "found"


def test_a_call_id_made_from_the_customer_reaches_the_users_exporter_redacted_and_still_pairs_its_result(tmp_path: Path) -> None:
    call = {**tool_call("find_user", email=EMAIL), "id": f"lookup-{EMAIL}"}
    model = ScriptedChatModel(script=[AIMessage(content="", tool_calls=[call]), AIMessage(content="done")])
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    agent = record_experience(create_agent(model, [find_user]), app="shop", store=tmp_path / "store", tracer_provider=provider)
    agent.invoke({"messages": [("user", f"find {EMAIL}")]})
    assert agent.flush()
    agent.recorder.close()
    spans = exporter.get_finished_spans()
    assert spans and not [s.name for s in spans if EMAIL in json.dumps(dict(s.attributes or {}), default=str)]
    [executed] = [s for s in spans if s.name.startswith("execute_tool")]
    store = LocalExperienceStore(tmp_path / "store")
    try:
        [trajectory] = store.iter_trajectories()
    finally:
        store.close()
    step = trajectory.steps[0]
    # the id the exporter got is the one stored, and the tool's result is still the step's observation
    assert executed.attributes["gen_ai.tool.call.id"] == step.action.tool_call.id and "[REDACTED:email" in step.action.tool_call.id
    assert step.observation is not None and step.observation.content == "found"


def test_bytes_that_are_text_are_redacted_as_text_and_other_bytes_are_kept() -> None:
    redactor = Redactor()
    encoded = json.loads(
        redactor.redact_json({"blob": f"{EMAIL} card 4111 1111 1111 1111".encode(), "binary": b"\xff\xfe\x00", "plain": b"hi"})
    )
    text = base64.b64decode(encoded["blob"]["base64"]).decode()
    assert EMAIL not in text and "4111" not in text and "[REDACTED:email" in text and "[REDACTED:credit_card" in text
    assert encoded["binary"] == {"type": "bytes", "base64": "//4A"} and base64.b64decode(encoded["plain"]["base64"]) == b"hi"
    assert EMAIL not in base64.b64decode(redactor.redact_value({"b": f"mail {EMAIL}".encode()})["b"]["base64"]).decode()


def test_an_environment_of_bytes_is_stored_without_the_value(tmp_path: Path) -> None:
    agent = record_experience(
        create_agent(ScriptedChatModel(script=[AIMessage(content="hi")]), [find_user]),
        app="shop",
        store=tmp_path / "store",
        environment={"customer_blob": f"{EMAIL} card 4111111111111111".encode()},
    )
    agent.invoke({"messages": [("user", "hello")]})
    assert agent.flush()
    agent.recorder.close()
    stored = "".join(
        path.read_text(errors="replace") for path in (tmp_path / "store").rglob("*") if path.is_file() and path.suffix == ".jsonl"
    )
    blobs = [base64.b64decode(b) for b in __import__("re").findall(r'"base64":"([A-Za-z0-9+/=]+)"', stored)]
    assert blobs and all(EMAIL.encode() not in blob and b"4111111111111111" not in blob for blob in blobs), blobs
