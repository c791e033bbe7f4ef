"""Images, audio and files in a recorded run: the store keeps a short placeholder saying what was there
(kind, mime type, size, URL or file id), never the inline bytes (a real LangGraph agent, the real OTel
SDK, a real store)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call

PHOTO = os.urandom(300_000)  # random bytes do not compress: a stored copy would show in the files' size
PHOTO_B64 = base64.b64encode(PHOTO).decode("ascii")
CHART_B64 = base64.b64encode(os.urandom(120_000)).decode("ascii")
PHOTO_TEXT = "[image: image/jpeg, 293.0 KB]"
CHART_TEXT = "[image: image/png, 117.2 KB]"


def _stored_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_an_image_the_user_sends_and_one_a_tool_returns_are_stored_as_placeholders(store_path: Path):
    @tool(response_format="content_and_artifact")
    def plot_sales(month: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Plot a month's sales."""
        blocks = [{"type": "text", "text": f"sales for {month}:"}, {"type": "image", "base64": CHART_B64, "mime_type": "image/png"}]
        return blocks, {"points": [1, 2, 3]}

    script = [
        AIMessage(content="", tool_calls=[tool_call("plot_sales", month="May")]),
        AIMessage(content="The receipt matches May's sales."),
    ]
    graph = create_react_agent(ScriptedChatModel(script=script, model_name="scripted-vision"), [plot_sales])
    agent = record_experience(graph, app="receipts", store=store_path)
    question = HumanMessage(
        content=[
            {"type": "text", "text": "Does this receipt match May's sales?"},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PHOTO_B64}"}},
        ]
    )
    result = agent.invoke({"messages": [question]})
    agent.flush()
    assert result["messages"][0].content[1]["image_url"]["url"].endswith(PHOTO_B64[-40:])  # the agent saw the real image

    store = LocalExperienceStore(store_path)
    store.compact()
    [t] = list(store.iter_trajectories())
    user = {"role": "user", "content": f"Does this receipt match May's sales?\n{PHOTO_TEXT}"}
    assert t.task == user["content"]
    first, answer = t.steps
    assert first.state == [user]
    assert first.observation.content == f"sales for May:\n{CHART_TEXT}" and first.observation.truncated_chars == 0
    assert answer.state[0] == user and answer.state[-1]["content"] == first.observation.content
    assert t.final_answer == "The receipt matches May's sales."
    stored = t.model_dump_json()
    assert PHOTO_B64[1000:1100] not in stored and CHART_B64[1000:1100] not in stored
    assert _stored_bytes(store_path) < len(PHOTO) // 2, "the image's bytes are not in the store"
