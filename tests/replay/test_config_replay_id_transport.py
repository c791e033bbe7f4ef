"""How a served model is reached (``timeout_s``, ``retries``, ``backoff_s``) is not part of a replay id (sweep V).

A replay that timed out says to raise ``timeout_s`` and re-run the same command to continue; with those settings in the
id, the re-run was a new configuration, which replayed the finished trajectories again (2K alternatives per state in the
datasets, from a sampling model). A store replayed before they left the id is continued under the id it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay, with_attempt
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import ScriptedChatServer
from tests.conftest import BFCL_ENTRIES

A_CALL = '<tool_call>{"name": "pwd", "arguments": {}}</tool_call>'
"""A usable answer at every BFCL state (``pwd``: an offered tool with no arguments)."""
SERVED = "openai:http://127.0.0.1:8000/v1#m"


def _config(policy: str = SERVED, **settings: object) -> ReplayConfig:
    return ReplayConfig.load(store="s", policy=policy, **settings)


pytestmark = pytest.mark.filterwarnings("ignore::ee_middleware.models.openai_compat.FewerChoicesWarning")


@pytest.mark.parametrize("transport", [{"timeout_s": 600}, {"retries": 5}, {"backoff_s": 2.0}, {"timeout_s": 1, "retries": 0}])
def test_a_served_policys_transport_settings_leave_its_replay_id_alone(transport: dict[str, object]) -> None:
    plain = _config()
    assert _config(policy_settings=transport).replay_id == plain.replay_id
    assert _config(policy_settings={**transport, "temperature": 0.3}).replay_id != plain.replay_id, "sampling still counts"
    assert plain.transport_inclusive_id is None and _config(policy_settings=transport).transport_inclusive_id != plain.replay_id


def test_an_experience_sandboxs_time_out_leaves_its_replay_id_alone() -> None:
    sandbox = "experience:openai:http://127.0.0.1:8001/v1#world"
    plain = _config("mutate", sandbox=sandbox, sandbox_settings={"real": "bfcl"})
    timed = _config("mutate", sandbox=sandbox, sandbox_settings={"real": "bfcl", "timeout_s": 900})
    assert timed.replay_id == plain.replay_id and timed.transport_inclusive_id is not None
    assert _config("mutate", sandbox=sandbox, sandbox_settings={"real": "bfcl", "top_k": 2}).replay_id != plain.replay_id


def test_a_plug_in_policys_settings_named_alike_still_count() -> None:
    """A plug-in's ``timeout_s`` may be a setting of its own (a time budget per proposal): it is left in the id."""
    plugin = "my_policies:build"
    assert _config(plugin, policy_settings={"timeout_s": 5}).replay_id != _config(plugin).replay_id


def _replay(store: Path, server: ScriptedChatServer, timeout_s: float, **options: object) -> ReplayConfig:
    settings = {"timeout_s": timeout_s, "backoff_s": 0.01}
    return ReplayConfig.load(store=store, k=2, policy=f"openai:{server.base_url}#m", policy_settings=settings, **options)


def test_raising_timeout_s_continues_the_replay_it_timed_out_in(bfcl_store_path: Path) -> None:
    with ScriptedChatServer([A_CALL]) as server:
        first = run_replay(_replay(bfcl_store_path, server, 5, limit=2))
        asked = len(server.requests)
        again = run_replay(_replay(bfcl_store_path, server, 60))
    assert first.done == 2 and again.replay_id == first.replay_id
    assert again.already_done == 2 and again.done == BFCL_ENTRIES - 2, "the two replayed first were not replayed again"
    replays = LocalExperienceStore(bfcl_store_path).replays()
    assert set(replays["replay_id"].to_list()) == {first.replay_id} and replays.height == BFCL_ENTRIES
    assert asked and len(server.requests) > asked


def test_a_replay_stored_under_the_id_with_transport_settings_is_continued_under_it(bfcl_store_path: Path) -> None:
    """Replays stored before transport settings left the id: the same command continues them (and ``--again`` attempts
    them again) under the id they have, not as a new configuration."""
    with ScriptedChatServer([A_CALL]) as server:
        config = _replay(bfcl_store_path, server, 5, limit=2)
        earlier = config.transport_inclusive_id
        assert earlier is not None and earlier != config.replay_id
        before = run_replay(config.continuing(earlier))
        assert before.replay_id == earlier and before.done == 2
        store = LocalExperienceStore(bfcl_store_path)
        try:
            assert with_attempt(store, _replay(bfcl_store_path, server, 5)).replay_id == earlier
        finally:
            store.close()
        now = run_replay(_replay(bfcl_store_path, server, 5))
        assert now.replay_id == earlier and now.already_done == 2 and now.done == BFCL_ENTRIES - 2
        retried = run_replay(_replay(bfcl_store_path, server, 5, again=True, limit=1))
    assert retried.attempt == 2 and retried.replay_id not in {earlier, config.replay_id}
    ids = set(LocalExperienceStore(bfcl_store_path).replays()["replay_id"].to_list())
    assert ids == {earlier, retried.replay_id}
    with pytest.raises(ValueError, match="is not this configuration's earlier id"):
        config.continuing("0123456789ab")
