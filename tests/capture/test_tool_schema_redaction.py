"""Tool schemas are redacted like every other text a run carries (sweep s23, finding 6).

Was: a tool's description and its parameters' descriptions, defaults, examples and enums were stored verbatim: in the
trajectory's ``tools``, ``ee traces show``, both exports, every dataset row's ``tools`` and ``gen_ai.tool.definitions``
on the user's spans. A tool built at run time (``f"Send mail as {user_email}"``) or an MCP server's tool description
carries the user's data and connection details. Now capture redacts them where it encodes the definitions (so the
user's spans, the store and everything read from it get them redacted) and assembly redacts them again for spans of
other instrumentations (ingest), keeping names, types and the schema's structure. Real agents (``create_agent``,
``ScriptedChatModel``), the real OTel SDK, the real store, CLI and export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import jsonschema
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import AssemblyOptions, assemble
from ee_middleware.capture.payloads import PayloadEncoder
from ee_middleware.capture.redaction import Redactor
from ee_middleware.capture.spandata import from_readable_span
from ee_middleware.cli.app import app
from ee_middleware.export import export_jsonl
from ee_middleware.testing import ScriptedChatModel, tool_call

USER = "ops.lead@northwind-bank.example"
KEY = "sk_live_51HxYzAbCdEfGhIjKlMnOp"
EXAMPLE = "support-demo@northwind-bank.example"
DEFAULT_CARD = "4111 1111 1111 1111"
PLANTED = (USER, KEY, EXAMPLE, DEFAULT_CARD, "4111111111111111", "partner-key-7Hq2")


class NotifyArgs(BaseModel):
    """Who to notify. Replies go to ops.lead@northwind-bank.example."""

    to: str = Field(description="Recipient e-mail, e.g. support-demo@northwind-bank.example", examples=[EXAMPLE])
    channel: Literal["email", "sms"] = Field("email", description="How to send it.")
    card: str = Field(DEFAULT_CARD, description="The card on file.")
    api_key: str = Field("partner-key-7Hq2", description="The partner API key.")
    sender: Literal["ops.lead@northwind-bank.example", "noreply@example.org"] = Field("noreply@example.org")


def notify(to: str, channel: str = "email", card: str = "", api_key: str = "", sender: str = "") -> str:
    return f"sent via {channel}"


def _tool() -> StructuredTool:
    # built at run time, with the operator's address and key in its description
    return StructuredTool.from_function(
        notify, name="notify_customer", description=f"Notify a customer. Runs as {USER} with key {KEY}.", args_schema=NotifyArgs
    )


def _agent() -> Any:
    model = ScriptedChatModel(
        script=[AIMessage(content="", tool_calls=[tool_call("notify_customer", to="a@b.example")]), AIMessage(content="Done.")]
    )
    return create_agent(model, [_tool()])


def _leaks(text: str) -> list[str]:
    return [value for value in PLANTED if value in text]


def _check_schema(schema: dict[str, Any]) -> None:
    """Names, types and structure kept: the same tool the model can call."""
    function = schema["function"]
    assert function["name"] == "notify_customer"
    parameters = function["parameters"]
    jsonschema.Draft202012Validator.check_schema(parameters)
    assert list(parameters["properties"]) == ["to", "channel", "card", "api_key", "sender"]
    assert parameters["required"] == ["to"]
    assert {name: p.get("type") for name, p in parameters["properties"].items()} == {
        "to": "string",
        "channel": "string",
        "card": "string",
        "api_key": "string",
        "sender": "string",
    }
    assert parameters["properties"]["channel"]["enum"] == ["email", "sms"]  # ordinary values kept
    assert function["description"].startswith("Notify a customer. Runs as [REDACTED:email")
    jsonschema.validate({"to": "a@b.example", "channel": "sms"}, parameters)


def test_tool_descriptions_defaults_examples_and_enums_are_redacted_everywhere(
    store_path: Path, tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    agent = record_experience(_agent(), app="bank", store=store_path, tracer_provider=tracer_provider, approve_if=lambda t: True)
    agent.invoke({"messages": [("user", "notify them")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    [trajectory] = list(store.iter_trajectories())
    [schema] = trajectory.tools
    assert not _leaks(json.dumps(trajectory.tools)), json.dumps(trajectory.tools)
    _check_schema(schema)
    properties = schema["function"]["parameters"]["properties"]
    assert properties["api_key"]["default"].startswith("[REDACTED:secret:")  # a secret parameter's default: replaced whole
    assert [value[:16] for value in properties["sender"]["enum"]] == ["[REDACTED:email:"] * 2  # an enum of addresses: pseudonyms

    definitions = [s.attributes[sc.TOOL_DEFINITIONS] for s in span_exporter.get_finished_spans() if sc.TOOL_DEFINITIONS in s.attributes]
    assert definitions and not [d for d in definitions if _leaks(d)], definitions

    out = tmp_path / "train.jsonl"
    assert export_jsonl(store, out, status=None) == 1
    assert not _leaks(out.read_text())
    shown = CliRunner().invoke(app, ["traces", "show", trajectory.id, "--store", str(store_path), "--json"])
    assert shown.exit_code == 0 and not _leaks(shown.stdout), shown.stdout
    store.close()


def test_another_instrumentations_tool_definitions_are_redacted_when_assembled(
    span_exporter: Any, tracer_provider: Any, store_path: Path
) -> None:
    """Ingest: spans that carry the definitions in plain text (here capture's own with redaction off, standing for
    another instrumentation's) give a trajectory whose ``tools`` are redacted by the store's rules."""
    agent = record_experience(_agent(), app="bank", store=store_path, tracer_provider=tracer_provider, redact=False)
    agent.invoke({"messages": [("user", "notify them")]})
    agent.flush()
    agent.recorder.close()
    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    assert any(_leaks(str(s.attributes.get(sc.TOOL_DEFINITIONS, ""))) for s in spans)  # in plain text on the spans
    trajectory = assemble(spans, AssemblyOptions(redactor=Redactor(salt=b"store-salt")))
    [schema] = trajectory.tools
    assert not _leaks(json.dumps(trajectory.tools)), json.dumps(trajectory.tools)
    _check_schema(schema)


MCP_TOOL = {
    "name": "crm_lookup",
    "description": "Look up a CRM record (server https://svc:Pa55w0rd-x@crm.internal/mcp).",
    "inputSchema": None,
    "parameters": {
        "type": "object",
        "$comment": "maintained by ops.lead@northwind-bank.example",
        "properties": {
            "query": {"type": "string", "title": "Query", "examples": [EXAMPLE, "order A-10023"]},
            "filters": {
                "type": "object",
                "properties": {
                    "phone": {"anyOf": [{"type": "string", "examples": ["+1 415 555 0134"]}, {"type": "null"}]},
                    "tags": {"type": "array", "items": {"type": "string", "enum": ["vip", EXAMPLE]}},
                    "password": {"type": "string", "const": "hunter2-hunter2", "x-hint": "the vault one"},
                },
            },
            "account": {"$ref": "#/$defs/Account"},
        },
        "$defs": {"Account": {"type": "object", "description": "Owner support-demo@northwind-bank.example", "properties": {}}},
        "required": ["query"],
        "x-origin": "mcp://svc:Pa55w0rd-x@crm.internal",
    },
}


def test_a_dict_schema_is_redacted_at_every_depth_and_stays_a_schema() -> None:
    """An MCP-style dict schema given to the model as is: descriptions, ``$comment``, ``title``, ``examples`` (nested, in
    ``anyOf``, under ``items``), ``enum``, ``const`` below a secret name, ``$defs`` and ``x-`` extensions. Was: the
    ``gen_ai.tool.definitions`` attribute held every one in plain text."""
    tool = {key: value for key, value in MCP_TOOL.items() if value is not None}
    text = PayloadEncoder(Redactor(salt=b"s"), 200_000).tool_definitions([tool])
    assert text is not None
    for planted in (EXAMPLE, USER, "Pa55w0rd-x", "+1 415 555 0134", "hunter2-hunter2"):
        assert planted not in text, planted
    [definition] = json.loads(text)
    assert definition["name"] == "crm_lookup"
    parameters = definition["parameters"]
    jsonschema.Draft202012Validator.check_schema(parameters)
    filters = parameters["properties"]["filters"]["properties"]
    assert filters["password"]["const"].startswith("[REDACTED:secret:") and filters["password"]["x-hint"] == "the vault one"
    assert filters["tags"]["items"]["enum"][0] == "vip" and filters["tags"]["items"]["enum"][1].startswith("[REDACTED:email:")
    assert parameters["properties"]["query"]["examples"][1] == "order A-10023"
    assert parameters["properties"]["account"] == {"$ref": "#/$defs/Account"} and parameters["required"] == ["query"]
    assert list(parameters["properties"]) == ["query", "filters", "account"] and list(filters) == ["phone", "tags", "password"]
