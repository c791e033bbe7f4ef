"""An ingested trajectory's model is the one that answered (``gen_ai.response.model``) where its first decision's span
names one, as capture records it since cdc489c: a router serving an alias answers with the adapter's own name, a provider
with the dated version of the model asked for. Before, ingest kept the requested model (``gen_ai.request.model``) though
the span carried both. A placeholder (OpenLLMetry's ``unknown``) keeps the requested one."""

from __future__ import annotations

import json
from pathlib import Path

from ee_middleware.ingest import ingest_files
from ee_middleware.store import LocalExperienceStore
from tests.ingest.otlp_builders import GENAI_FILE, _request, _write

FIXTURES = Path(__file__).parent / "fixtures"
ANSWERED = "scripted-shop-model-2025-06-01"


def _models(store: LocalExperienceStore) -> list[str | None]:
    return [t.model for t in sorted(store.iter_trajectories(), key=lambda t: t.started_at)]


def test_the_answering_model_of_real_openai_v2_spans_is_the_trajectorys_model(tmp_path: Path, store: LocalExperienceStore) -> None:
    """``opentelemetry-instrumentation-openai-v2``'s spans (the fixture of test_instrumentations), the server answering
    with a dated model name where the graph asked for ``scripted-shop-model``."""
    text = (FIXTURES / "openai_v2_langgraph.jsonl").read_text()
    said = '{"key": "gen_ai.response.model", "value": {"stringValue": "scripted-shop-model"}}'
    assert said in text
    path = tmp_path / "spans.jsonl"
    path.write_text(text.replace(said, said.replace("scripted-shop-model", ANSWERED)))
    report = ingest_files([path], store)
    assert (len(report.ingested), report.problems) == (2, 0), report.errors
    assert _models(store) == [ANSWERED, ANSWERED]


def test_the_first_calls_answering_model_is_the_trajectorys_model(tmp_path: Path, store: LocalExperienceStore) -> None:
    """GenAI spans (``otlp_builders``): the first call asked ``gpt-x`` and was answered by ``gpt-x-2025-06-01``; a
    placeholder in a later call changes nothing."""
    spans = json.loads(json.dumps(GENAI_FILE))
    for span, answered in ((spans[1], "gpt-x-2025-06-01"), (spans[3], "unknown")):
        span["attributes"].append({"key": "gen_ai.response.model", "value": {"stringValue": answered}})
    report = ingest_files([_write(tmp_path / "run.jsonl", _request(spans))], store)
    assert (len(report.ingested), report.problems) == (1, 0), report.errors
    assert _models(store) == ["gpt-x-2025-06-01"]


def test_a_placeholder_answering_model_keeps_the_requested_one(store: LocalExperienceStore) -> None:
    """OpenLLMetry writes ``gen_ai.response.model = unknown`` where the reply named no model (its real fixture)."""
    report = ingest_files([FIXTURES / "openllmetry_langgraph.jsonl"], store)
    assert (len(report.ingested), report.problems) == (2, 0), report.errors
    assert _models(store) == ["scripted-shop-model", "scripted-shop-model"]
