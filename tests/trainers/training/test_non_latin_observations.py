"""IWM's observation budget is in tokens, whatever the script: a long Chinese observation is cut to fit it as an
English one is, so that training keeps the row (a real create_agent run recorded into a real store, the real build,
the trainer's own tokenization with a real byte-level BPE tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.models.chat_template import probe_template
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.training.data import load_dataset
from ee_middleware.trainers.training.render import tokenize_rows

ENGLISH = "The returns policy allows a refund within 30 days of delivery. " * 400
CHINESE = "退货政策收货后三十天内可以退款请保留发票。" * 400


def _record(store: Path) -> None:
    @tool
    def manual(language: str) -> str:
        """Read the returns manual in a language (en or zh)."""
        return ENGLISH if language == "en" else CHINESE

    script = [
        AIMessage(content="", tool_calls=[tool_call("manual", language="en")]),
        AIMessage(content="", tool_calls=[tool_call("manual", language="zh")]),
        AIMessage(content="三十天内可以退款。"),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [manual]), app="returns", store=store)
    agent.invoke({"messages": [("user", "退货政策是什么")]})
    agent.flush()
    agent.recorder.close()


def test_a_long_chinese_observation_is_cut_to_the_token_budget_and_training_keeps_its_row(tmp_path: Path, tool_tokenizer: Any) -> None:
    """Before, the budget became characters at 4 per token, as for English: the Chinese observation kept 2,048
    characters, several thousand tokens, and the trainer dropped the row at max_length 1024 (its completion alone
    was too long)."""
    from ee_middleware.store import LocalExperienceStore

    _record(tmp_path / "store")
    store = LocalExperienceStore(tmp_path / "store")
    store.approve(store.trajectories()["id"].to_list(), by="test")
    store.close()
    summary = build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="iwm"))
    assert summary["datasets"]["iwm"]["truncated_rows"] == 2
    rows = pl.read_parquet(tmp_path / "data" / "iwm.parquet").sort("step_index")
    english, chinese = (json.loads(c)[0]["content"] for c in rows["completion"])
    assert ENGLISH.startswith(english) and 1536 <= len(english) <= 2048, "English prose keeps about 4 characters a token"
    assert CHINESE.startswith(chinese) and 0 < len(chinese) <= 512 // 2
    cut = rows["observation_truncated_chars"].to_list()
    assert cut[0] >= len(ENGLISH) - len(english) and cut[1] >= len(CHINESE) - len(chinese)

    chinese_row = [r for r in load_dataset(tmp_path / "data", "iwm").rows if r.completion[0]["content"] == chinese]
    examples, stats = tokenize_rows(tool_tokenizer, chinese_row, 1024, probe_template(tool_tokenizer))
    assert stats.dropped_too_long == 0 and len(examples) == 1, stats.describe()
