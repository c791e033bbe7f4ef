"""Which app an ingested run is stored under, whichever instrumentation wrote it (sweep s17, unranked note): the app
its root span names (``ee.app``, capture's own), else its agent's name on the root (``gen_ai.agent.name``,
OpenLLMetry's workflow name ``traceloop.entity.name``, ``agent.name``), else the resource's ``service.name``, else
``--app``. So OpenLLMetry's runs are stored under their workflow's name, OpenInference's LangGraph runs (a graph span
naming no agent) under the service's; ``ee traces list --app`` takes that name."""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.ingest import ingest_files
from tests.ingest.otlp_builders import GENAI_FILE, _request, _span, _write


def _genai(root: dict[str, Any]) -> list[dict[str, Any]]:
    spans = json.loads(json.dumps(GENAI_FILE))
    spans[0] = _span("a000000000000001", "invoke_agent", root, start=0, end=10)
    return spans


def _ingested_app(tmp_path, store, spans: list[dict[str, Any]], service: str | None = "travel-service") -> str:
    request = _request(spans, service=service or "")
    if service is None:
        request["resourceSpans"][0]["resource"]["attributes"] = []
    report = ingest_files([_write(tmp_path / "run.jsonl", request)], store, app="from-cli")
    assert report.problems == 0, report.errors
    [trajectory] = list(store.iter_trajectories())
    return trajectory.app


def test_the_agent_name_on_the_root_wins_over_the_service(tmp_path, store):
    root = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "travel_agent"}
    assert _ingested_app(tmp_path, store, _genai(root)) == "travel_agent"


def test_openllmetry_runs_take_their_workflow_name(tmp_path, store):
    root = {"traceloop.span.kind": "workflow", "traceloop.entity.name": "travel_agent", "traceloop.workflow.name": "travel_agent"}
    assert _ingested_app(tmp_path, store, _genai(root)) == "travel_agent"


def test_a_root_naming_no_agent_takes_the_service_name(tmp_path, store):
    assert _ingested_app(tmp_path, store, _genai({"gen_ai.operation.name": "invoke_agent"})) == "travel-service"


def test_without_either_the_app_given_to_ingest_names_it(tmp_path, store):
    assert _ingested_app(tmp_path, store, _genai({"gen_ai.operation.name": "invoke_agent"}), service=None) == "from-cli"


def test_the_cli_help_says_how_the_app_is_chosen():
    result = CliRunner().invoke(app, ["traces", "ingest", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "service.name" in result.output and "agent" in result.output


def test_names_are_stripped_and_a_blank_one_passed_over(tmp_path, store):
    """Before, an instrumentation's ``"travel_agent "`` was stored as a second app that ``--app travel_agent`` never
    found, and a blank agent name (``" "``) was the app, over the service's name."""
    padded = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": " travel_agent\t"}
    assert _ingested_app(tmp_path, store, _genai(padded)) == "travel_agent"


def test_a_blank_agent_name_leaves_the_service_name(tmp_path, store):
    blank = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "  "}
    assert _ingested_app(tmp_path, store, _genai(blank), service=" travel-service ") == "travel-service"
