"""IWM targets of tools that returned images: the placeholder says what came back, not how many bytes it took (a real
LangGraph agent recorded with @record_experience into a real store, built by the real dataset build)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from ee_middleware import record_experience
from ee_middleware.messages import media_placeholder
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets

CHART_B64 = base64.b64encode(os.urandom(120_000)).decode("ascii")


def test_an_image_a_tool_returned_is_an_iwm_target_without_its_size(store_path: Path, tmp_path: Path) -> None:
    """Before, the target was 'sales for May:\\n[image: image/png, 117.2 KB]': the model was taught to predict the
    encoded size of a chart, which nothing in the call tells."""

    @tool(response_format="content_and_artifact")
    def plot_sales(month: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Plot a month's sales."""
        return [{"type": "text", "text": f"sales for {month}:"}, {"type": "image", "base64": CHART_B64, "mime_type": "image/png"}], {}

    script = [AIMessage(content="", tool_calls=[tool_call("plot_sales", month="May")]), AIMessage(content="May looks fine.")]
    graph = create_react_agent(ScriptedChatModel(script=script, model_name="scripted-vision"), [plot_sales])
    agent = record_experience(graph, app="charts", store=store_path)
    agent.invoke({"messages": [("user", "How were May's sales?")]})
    agent.flush()
    store = LocalExperienceStore(store_path)
    [t] = list(store.iter_trajectories())
    assert t.steps[0].observation.content == "sales for May:\n[image: image/png, 117.2 KB]"  # what the store keeps
    store.approve([t.id], by="alice")

    summary = build_datasets(DatasetConfig.load(store=store_path, out=tmp_path / "data", kinds="il,iwm"))
    iwm = pl.read_parquet(tmp_path / "data" / "iwm.parquet")
    [row] = iwm.to_dicts()
    assert json.loads(row["completion"]) == [{"role": "assistant", "content": "sales for May:\n[image: image/png]"}]
    assert summary["datasets"]["iwm"]["media_sizes_left_out"] == 1
    il_prompts = pl.read_parquet(tmp_path / "data" / "il.parquet")["prompt"].to_list()
    assert any("[image: image/png, 117.2 KB]" in p for p in il_prompts)  # a state keeps what the model was shown


def test_every_placeholder_with_a_size_loses_only_its_size() -> None:
    from ee_middleware.trainers.datasets.iwm import MEDIA_SIZE

    blocks = {
        "[image: image/png]": {"type": "image", "base64": CHART_B64[:2000], "mime_type": "image/png"},
        "[image]": {"type": "image", "base64": CHART_B64[:2000]},
        "[file: application/pdf, report.pdf]": {
            "type": "file",
            "base64": CHART_B64[:800],
            "mime_type": "application/pdf",
            "filename": "report.pdf",
        },
        "[image: https://example.com/cat.png]": {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    }
    texts = pl.Series([media_placeholder(block) for block in blocks.values()])
    assert texts.str.replace_all(MEDIA_SIZE, "[${kind}${rest}]").to_list() == list(blocks)
