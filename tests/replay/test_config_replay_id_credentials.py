"""The replay id leaves out the policy's and sandbox's settings that are credentials, and only those (r9b finding 6).

e3f38ce left out every setting the display-masking rule (``_toml._is_secret_name``) calls secret, a rule broad on
purpose (it masks whatever might be one): ``token_budget``, ``eos_token``, ``auth_mode``, ``key``, ``cache_key`` shape
rollouts, yet two replays differing only in them got one id, so the second "resumed" the first and added nothing."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from ee_middleware.replay.config import ReplayConfig

PLUGIN = "mypkg.policy:factory"
SERVED = "openai:http://127.0.0.1:8000/v1#flight-bot"


def _config(policy: str = PLUGIN, **settings: Any) -> ReplayConfig:
    return ReplayConfig(store="/tmp/x", sandbox="mailsandbox:make_sandbox", policy=policy, k=3, **settings)


def _keys(value: Any) -> set[str]:
    """Every key of ``value``'s dicts, at any depth."""
    if isinstance(value, dict):
        return set(value).union(*(_keys(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(item) for item in value))
    return set()


SHAPING = [
    ("token_budget", 256, 4096),
    ("token_limit", 256, 4096),
    ("eos_token", "</s>", "<|eot|>"),
    ("pad_token", "<pad>", "<|endoftext|>"),
    ("bos_token", "<s>", "<|begin_of_text|>"),
    ("stop_token", "</s>", "<|im_end|>"),
    ("auth_mode", "strict", "lenient"),
    ("key", "orders", "refunds"),
    ("cache_key", "a", "b"),
    ("sort_key", "date", "amount"),
    ("max_tokens", 256, 4096),
    ("secret_word", "apple", "pear"),  # a guessing game's word: it shapes every rollout
    ("password_policy", "strict", "none"),
    ("tokenizer", "a", "b"),
]


@pytest.mark.parametrize(("name", "one", "other"), SHAPING, ids=[s[0] for s in SHAPING])
@pytest.mark.parametrize("where", ["policy_settings", "sandbox_settings", "nested"])
def test_a_setting_that_shapes_rollouts_changes_the_replay_id(name: str, one: Any, other: Any, where: str) -> None:
    def config(value: Any) -> ReplayConfig:
        if where == "nested":
            return _config(policy_settings={"generation": {name: value}})
        return _config(**{where: {name: value}})

    assert config(one).replay_id != config(other).replay_id, f"{name} shapes rollouts: another value is another replay"
    assert config(one).replay_id != _config().replay_id, f"{name} given is not {name} left out"


CREDENTIALS = [
    "api_key",
    "openai_api_key",
    "OPENAI_API_KEY",
    "apikey",
    "apiKey",
    "X-Api-Key",
    "Ocp-Apim-Subscription-Key",
    "password",
    "passwd",
    "db_password",
    "secret",
    "client_secret",
    "webhook_secret",
    "secret_key",
    "private_key",
    "aws_secret_access_key",
    "authorization",
    "Authorization",
    "Proxy-Authorization",
    "auth",
    "access_token",
    "refresh_token",
    "id_token",
    "hf_token",
    "HF_TOKEN",
    "hfToken",
    "HFToken",
    "huggingface_hub_token",
    "api_token",
    "auth_token",
    "X-Auth-Token",
    "bearer_token",
    "github_token",
    "token",
    "credentials",
    "cookie",
]
KEY, ROTATED = "sk-proj-FIRSTKEY0001-abcdef", "sk-proj-ROTATED0002-ghijkl"
PLAIN_KEY, PLAIN_ROTATED = "hunter2-first", "correct-horse-rotated"  # credentials with no recognizable form


@pytest.mark.parametrize("name", CREDENTIALS)
@pytest.mark.parametrize("where", ["policy_settings", "sandbox_settings", "nested"])
def test_a_credential_setting_is_neither_in_the_replay_id_nor_an_input_of_it(name: str, where: str) -> None:
    def config(value: str | None) -> ReplayConfig:
        given = {} if value is None else {name: value}
        if where == "nested":
            return _config(policy_settings={"temperature_hint": 1, "extra_headers": {"X-Org": "o", **given}})
        return _config(**{where: {"top_k": 2, **given}})

    ids = {config(value).replay_id for value in (KEY, ROTATED, PLAIN_KEY, PLAIN_ROTATED, None)}
    assert len(ids) == 1, f"a rotated {name} resumes the replay; one given resumes the replay without it"
    for value in (KEY, ROTATED, PLAIN_KEY, PLAIN_ROTATED):
        shaping = config(value).rollout_shaping
        assert value not in json.dumps(shaping) and value not in config(value).replay_id
        assert name not in _keys(shaping), "left out, name and all"


def test_the_replay_id_hashes_rollout_shaping() -> None:
    config = _config(policy_settings={"token_budget": 256, "api_key": KEY})
    shaping = config.rollout_shaping
    assert shaping["token_budget"] == 256 and "api_key" not in shaping
    assert config.replay_id == hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("value", "rotated"),
    [
        (KEY, ROTATED),
        ("hf_" + "A" * 34, "hf_" + "B" * 34),
        ("ghp_" + "a1" * 18, "ghp_" + "b2" * 18),
        ("Bearer abcDEF123456ghiJKL", "Bearer zyxWVU987654tsrQPO"),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            "eyJ" + "x" * 20 + ".eyJ" + "y" * 20 + ".zzzzzzzzzz",
        ),
    ],
    ids=["openai", "hf", "github", "bearer", "jwt"],
)
@pytest.mark.parametrize("name", ["key", "upstream_token", "header_value"])
def test_a_credential_under_a_setting_name_that_shapes_rollouts_is_masked_and_the_setting_kept(name: str, value: str, rotated: str) -> None:
    # the setting counts (another key name's value, "orders" against "refunds", is another replay) but a value with a
    # credential's form is replaced by a marker: a rotated key keeps the id and is no input of it
    assert _config(policy_settings={name: value}).replay_id == _config(policy_settings={name: rotated}).replay_id
    assert _config(policy_settings={name: value}).replay_id != _config().replay_id
    for given in (value, rotated):
        shaping = _config(policy_settings={name: given}).rollout_shaping
        assert given.split()[-1] not in json.dumps(shaping) and name in _keys(shaping)


def test_ids_of_settings_without_credentials_and_of_e3f38ce_credentials_are_unchanged() -> None:
    # e3f38ce's own cases: the ids stores made since then keep resuming
    shaping = {"sandbox": "bfcl", "policy": SERVED, "k": 3, "seed": 0, "temperature": 1.0, "top_p": None, "max_tokens": 160}
    old_id = hashlib.sha256(
        json.dumps({**shaping, "stop": ["</s>"], "extra_headers": {"X-Org": "o"}}, sort_keys=True).encode()
    ).hexdigest()[:12]
    given = {"stop": ["</s>"], "api_key": "sk-2", "hf_token": "hf_1", "client_secret": "c", "Authorization": "Bearer x"}
    config = ReplayConfig(store="s", policy=SERVED, k=3, policy_settings={**given, "extra_headers": {"X-Api-Key": "k", "X-Org": "o"}})
    assert config.replay_id == old_id
