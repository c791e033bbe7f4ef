"""A retriever takes options: ``retriever_settings``, a setting of the experience sandbox (so ``[replay.sandbox_settings]``
of ``experience:MODEL`` carries it, and a replay's id counts it), handed to the retriever's factory.

Before, a retriever was built with no options wherever a user picked one (``retriever = "..."`` in the sandbox's settings,
``--retriever`` of the experience commands): ``retriever_settings`` was an unknown sandbox option. The retriever here is a
user's own class with options; the model is a scripted stand-in behind a real local HTTP server; the store holds real
BFCL expert trajectories.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.retrieval import BM25Retriever, build_retriever, tokenize
from ee_middleware.replay.sandboxes.registry import build_sandbox
from ee_middleware.store.local import LocalExperienceStore
from tests.replay.test_experience import copy_first_example

SPEC = "tests.replay.sandboxes.test_experience_retriever_settings:SharedWords"


class SharedWords:
    """A user's retriever with options: a text scores the words it shares with the query, times ``weight``; a text sharing
    fewer than ``min_shared`` words scores 0 (no match). (``api_key``: as a retriever behind a search service takes one.)"""

    def __init__(self, min_shared: int = 1, weight: float = 1.0, api_key: str | None = None) -> None:
        self.min_shared, self.weight, self.api_key = min_shared, weight, api_key
        self.name = f"shared-words(min_shared={min_shared}, weight={weight:g})"
        self.docs: list[set[str]] = []

    def add(self, texts: Sequence[str]) -> None:
        self.docs.extend(set(tokenize(text)) for text in texts)

    def scores(self, query: str) -> list[float]:
        words = set(tokenize(query))
        return [self.weight * len(words & doc) if len(words & doc) >= self.min_shared else 0.0 for doc in self.docs]


def _first_call(store: Path) -> tuple[Any, Any, ToolCall]:
    opened = LocalExperienceStore(store)
    trajectory = next(t for t in opened.iter_trajectories() if any(s.action.tool_call for s in t.steps))
    opened.close()
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    call = step.action.tool_call
    return trajectory, step, ToolCall(id="alt", name=call.name, arguments={**call.arguments, "extra": "x"})


def test_retriever_settings_reach_a_users_retriever_and_shape_what_is_retrieved(serve: Any, bfcl_store_path: Path) -> None:
    model = serve(copy_first_example)
    trajectory, step, call = _first_call(bfcl_store_path)
    shown: dict[int, int] = {}
    for min_shared in (1, 10_000):  # 10,000 shared words: no transition matches, nothing is retrieved
        sandbox = build_sandbox(
            f"experience:{model.spec}",
            store=str(bfcl_store_path),
            retriever=SPEC,
            retriever_settings={"min_shared": min_shared, "weight": 2},
        )
        try:
            retriever = sandbox.index.retriever
            assert isinstance(retriever, SharedWords) and (retriever.min_shared, retriever.weight) == (min_shared, 2)
            sandbox.at_step(trajectory, step)
            _, examples = sandbox.prompt(call)
            shown[min_shared] = len(examples)
        finally:
            sandbox.close()
    assert shown[1] > 0 and shown[10_000] == 0, shown


def test_a_built_in_retriever_takes_its_own_options(serve: Any, bfcl_store_path: Path) -> None:
    model = serve(copy_first_example)
    sandbox = build_sandbox(f"experience:{model.spec}", store=str(bfcl_store_path), retriever_settings={"k1": 1.2, "b": 0.5})
    try:
        retriever = sandbox.index.retriever
        assert isinstance(retriever, BM25Retriever) and (retriever.k1, retriever.b) == (1.2, 0.5)
    finally:
        sandbox.close()


def test_an_option_the_retriever_does_not_take_is_the_registrys_error_naming_it(serve: Any) -> None:
    model = serve(copy_first_example)
    with pytest.raises(SandboxError) as users:
        build_sandbox(f"experience:{model.spec}", retriever=SPEC, retriever_settings={"min_share": 2})
    message = str(users.value)
    assert f"Bad options for retriever {SPEC!r}" in message and "takes no option min_share (did you mean min_shared?)" in message
    with pytest.raises(SandboxError) as built_in:
        build_sandbox(f"experience:{model.spec}", retriever_settings={"k3": 1})
    assert "Bad options for retriever 'bm25'" in str(built_in.value) and "Its options are k1, b" in str(built_in.value)
    assert not model.requests, "refused before any prediction"


def test_retriever_settings_that_are_no_table_are_bad_settings(serve: Any) -> None:
    model = serve(copy_first_example)
    with pytest.raises(SandboxError, match=r"Bad settings for sandbox .*retriever_settings must be a table of the retriever's"):
        build_sandbox(f"experience:{model.spec}", retriever_settings=1.2)


def test_options_for_a_retriever_built_already_are_refused_not_dropped() -> None:
    with pytest.raises(SandboxError, match=r"Retriever options \(k1\) were given with a retriever already built"):
        build_retriever(BM25Retriever(), k1=1.2)
    assert isinstance(build_retriever("bm25", k1=1.2), BM25Retriever)


def _replay_config(tmp_path: Path, store: Path, sandbox: str, settings: str) -> Path:
    config = tmp_path / "replay.toml"
    config.write_text(
        f'[replay]\nstore = "{store}"\nsandbox = "{sandbox}"\nk = 1\n\n[replay.sandbox_settings]\nretriever = "{SPEC}"\n\n'
        f"[replay.sandbox_settings.retriever_settings]\n{settings}\n"
    )
    return config


def test_replay_sandbox_settings_carry_retriever_settings_into_the_sandbox_and_the_replay_id(
    serve: Any, bfcl_store_path: Path, tmp_path: Path
) -> None:
    model = serve(copy_first_example)
    sandbox = f"experience:{model.spec}"
    one = ReplayConfig.load(_replay_config(tmp_path, bfcl_store_path, sandbox, "min_shared = 1"))
    two = ReplayConfig.load(_replay_config(tmp_path, bfcl_store_path, sandbox, "min_shared = 2"))
    assert one.sandbox_factory_options()["retriever_settings"] == {"min_shared": 1}
    assert one.replay_id != two.replay_id, "two replays with different retriever options are two configurations"
    secret = ReplayConfig.load(_replay_config(tmp_path, bfcl_store_path, sandbox, 'min_shared = 1\napi_key = "sk-proj-abc"'))
    assert secret.replay_id == one.replay_id, "a credential among the retriever's options shapes no rollout"

    ids = []
    for min_shared in (1, 3):
        config = _replay_config(tmp_path, bfcl_store_path, sandbox, f"min_shared = {min_shared}\nweight = 0.5")
        result = CliRunner().invoke(app, ["replay", "run", "--config", str(config), "--limit", "1", "--no-progress", "--json"])
        assert result.exit_code == 0, result.output
        ids.append(json.loads(result.stdout)["replay_id"])
    assert ids[0] != ids[1] and model.requests, ids

    bad = _replay_config(tmp_path, bfcl_store_path, sandbox, "min_share = 1")
    result = CliRunner().invoke(app, ["replay", "run", "--config", str(bad), "--limit", "1", "--no-progress"])
    assert result.exit_code == 1 and f"Bad options for retriever {SPEC!r}" in result.output, result.output
    assert "min_share (did you mean min_shared?)" in " ".join(result.output.split()), result.output
