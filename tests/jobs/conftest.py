"""Fixtures for the improve job: real BFCL expert trajectories in a real store, a tiny random Llama as the base."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.adapters.conftest import SMOLLM2_TEMPLATE

APP = "bfcl.multi_turn_base"
CORPUS = [
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    '<tool_call>{"name": "mv", "arguments": {"source": "a", "destination": "b"}}</tool_call>',
    "You may call these tools: system user assistant tool function parameters type object string folder file",
]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (TEST model: random weights) with SmolLM2's chat template, saved as a base-model folder."""
    from ee_middleware.bfcl._package import package_dir
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    # Trained on BFCL's tool documentation too, so that the long BFCL prompts take fewer tokens (faster tests).
    docs = [path.read_text() for path in sorted((package_dir() / "data" / "multi_turn_func_doc").glob("*.json"))]
    tokenizer = build_test_tokenizer(CORPUS + docs, chat_template=SMOLLM2_TEMPLATE, vocab_size=2000)
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-base"), tokenizer, max_positions=16384)


@pytest.fixture(scope="session")
def expert_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight BFCL multi_turn_base expert trajectories, recorded by the real LangGraph expert agent (copied per test)."""
    from ee_middleware.bfcl.experts import record_experts

    store = tmp_path_factory.mktemp("experts") / "experience"
    report = record_experts(store, "multi_turn_base", limit=8)
    assert len(report.recorded) == 8, report.failed
    return store


@pytest.fixture
def workspace(tmp_path: Path, expert_store_template: Path, tiny_base: Path) -> Path:
    shutil.copytree(expert_store_template, tmp_path / "experience")
    return tmp_path


def write_config(
    folder: Path,
    base: Path,
    *,
    improve: str = "",
    gate: str = "min_tasks = 1",
    train: str = "",
    schedule: str = "il",
    k: int = 1,
    tasks: int = 1,
) -> Path:
    """An improve.toml for a small, fast run on the tiny base (no servers: evaluated in-process)."""
    path = folder / "improve.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [improve]
            store = "{folder / "experience"}"
            app = "{APP}"
            registry = "{folder / "registry"}"
            runs = "{folder / "runs"}"
            base_model = "{base}"
            schedule = "{schedule}"
            suites = ["traces:{tasks}"]
            likelihood_states = 4
            """
        )
        + textwrap.dedent(improve)
        + textwrap.dedent(
            f"""
            [replay]
            k = {k}
            [datasets]
            heldout_ids = "{heldout_ids(folder)}"
            [train]
            max_steps = 4
            batch_size = 2
            max_length = 128
            backend = "peft-loop"
            max_lost_context_share = 1.0
            {train}
            [eval]
            max_tokens = 8
            max_steps_per_turn = 1
            [gate]
            {gate}
            """
        )
    )
    return path


def heldout_ids(folder: Path, count: int = 3) -> Path:
    """A file with the ids of the store's first ``count`` trajectories: a held-out split that does not depend on
    the random trajectory ids (a seeded share of 8 ids may hold out none)."""
    from ee_middleware.store.registry import open_store

    store = open_store(folder / "experience", create=False)
    try:
        ids = store.trajectories()["id"].to_list()[:count]
    finally:
        store.close()
    path = folder / "heldout-ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def stage_times(run: Any) -> dict[str, tuple[str, str]]:
    """(started_at, finished_at) of every stage manifest: equal before and after means not redone."""
    return {m["stage"]: (m.get("started_at"), m.get("finished_at")) for m in run.stages()}
