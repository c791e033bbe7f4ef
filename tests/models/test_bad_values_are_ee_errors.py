"""A bad value given to the model layer's public constructors is an ``EEError`` (``ConfigError``, still a ``ValueError``),
so an app catching the library's errors (``except EEError``) catches these too: before, ``Sampling(temperature=-1)``,
``OpenAIChatClient("ftp://...")`` and ``MutationPolicy(invalid_share=2)`` raised a bare ``ValueError``. Through a plug-in
spec the message still names the spec ("Bad settings for model client 'openai:...'")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ee_middleware.errors import ConfigError, EEError, ModelError
from ee_middleware.models import OpenAIChatClient, Sampling
from ee_middleware.models.spec import build_chat_client
from ee_middleware.replay.policies.mutate import MutationPolicy


@pytest.mark.parametrize(
    ("build", "said"),
    [
        (lambda: Sampling(temperature=-1), "temperature must be >= 0"),
        (lambda: Sampling(top_p=0), "top_p must be in (0, 1]"),
        (lambda: Sampling(max_tokens=0), "max_tokens must be >= 1"),
        (lambda: OpenAIChatClient("ftp://127.0.0.1:8000/v1", "m"), "base_url must be an http(s) URL"),
        (lambda: OpenAIChatClient("http://127.0.0.1:8000/v1", ""), "needs a model name"),
        (lambda: OpenAIChatClient("http://127.0.0.1:8000/v1/chat/completions", "m"), "the API root, not an endpoint"),
        (lambda: MutationPolicy(invalid_share=2), "invalid_share must be a number between 0 and 1"),
    ],
)
def test_a_bad_value_is_a_config_error(build: Callable[[], Any], said: str) -> None:
    with pytest.raises(ConfigError) as raised:
        build()
    assert said in str(raised.value)
    assert isinstance(raised.value, EEError) and isinstance(raised.value, ValueError)


def test_through_a_spec_the_error_still_names_the_spec_and_the_setting() -> None:
    with pytest.raises(ModelError, match=r"Bad settings for model client 'openai:http://127.0.0.1:9/v1#m': timeout_s must be"):
        build_chat_client("openai:http://127.0.0.1:9/v1#m", timeout_s=-1)


def test_the_specs_credentials_stay_out_of_the_message() -> None:
    spec = "openai:http://alice:pw-123@127.0.0.1:9/v1?api_key=sk-SECRET#m"
    with pytest.raises(ModelError) as raised:
        build_chat_client(spec, timeout_s=-1)
    assert "pw-123" not in str(raised.value) and "sk-SECRET" not in str(raised.value) and "Bad settings" in str(raised.value)
