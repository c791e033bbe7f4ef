"""ReplayConfig: requests in flight only for a policy that a server answers."""

from __future__ import annotations

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.replay.config import DEFAULT_SERVED_REQUESTS, ReplayConfig


@pytest.mark.parametrize("policy", ["mutate", "local:/models/qwen", "transformers:/models/qwen", " local:/models/qwen@/adapters/a"])
def test_more_than_one_request_in_flight_is_refused_for_a_policy_no_server_answers(policy: str) -> None:
    with pytest.raises(ConfigError, match=r"requests_in_flight=4 needs a policy behind a server.*--workers"):
        ReplayConfig.load(store="s", policy=policy, requests_in_flight=4)
    assert ReplayConfig.load(store="s", policy=policy).proposal_requests == 1


def test_a_served_policy_defaults_to_several_requests_and_a_plugin_may_ask_for_them() -> None:
    assert ReplayConfig.load(store="s", policy="openai:http://127.0.0.1:8000/v1#m").proposal_requests == DEFAULT_SERVED_REQUESTS
    assert ReplayConfig.load(store="s", policy="mypkg.policies:make", requests_in_flight=4).proposal_requests == 4
