"""``timeout_s`` of the OpenAI-compatible client must be a finite number of seconds > 0: ``inf`` (what a user types for
"no limit", and valid TOML) passed the old "> 0" check, then failed every request with an ``OverflowError`` from httpx's
deadline. The client is the real one, in front of a real local HTTP server (ScriptedChatServer) with a scripted answer.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from ee_middleware.errors import ModelError, PolicyError
from ee_middleware.models import OpenAIChatClient, Sampling
from ee_middleware.models.spec import build_chat_client
from ee_middleware.replay.policies.chat import OpenAIPolicy
from ee_middleware.testing.http import ScriptedChatServer


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 0, -5, True, "60"])
def test_a_timeout_that_is_not_finite_and_positive_is_refused_naming_it_and_the_fix(value: Any) -> None:
    """Before: inf was accepted (and "60" raised a TypeError from the comparison, True was 1 second)."""
    with pytest.raises(ValueError, match=r"timeout_s must be a finite number of seconds > 0 .*got .*e\.g\. 120, or 3600"):
        OpenAIChatClient("http://127.0.0.1:9/v1", "m", timeout_s=value)


def test_a_large_finite_timeout_still_answers_scripted_server() -> None:
    with ScriptedChatServer(["total 12"], models=["m"]) as server:
        client = OpenAIChatClient(server.base_url, "m", timeout_s=86400.0, retries=0)
        try:
            assert client.complete([{"role": "user", "content": "ls"}], n=1, sampling=Sampling(max_tokens=5))[0].text == "total 12"
        finally:
            client.close()


def test_timeout_s_inf_through_a_spec_and_a_policy_setting_names_timeout_s() -> None:
    """The other roads to the client: ``build_chat_client`` (a teacher's, a judge's ``timeout_s``) and
    ``--policy-setting timeout_s=inf`` (the policy's error is the client's)."""
    with pytest.raises(ModelError, match=r"Bad settings for model client .*timeout_s must be a finite number"):
        build_chat_client("openai:http://127.0.0.1:9/v1#m", timeout_s=math.inf)
    with pytest.raises(PolicyError, match="timeout_s must be a finite number"):
        OpenAIPolicy("http://127.0.0.1:9/v1", "m", timeout_s=math.inf)
