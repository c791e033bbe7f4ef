"""hide_credentials on the text messages quote: a dict's repr and JSON, as well as assignments and URLs."""

from __future__ import annotations

from ee_middleware.errors import hide_credentials


def test_a_quoted_secret_named_key_has_its_value_hidden_in_a_repr_and_in_json() -> None:
    # Was: "{'api_key': 'sk-proj-...'}" came back whole (only api_key=... and URL passwords were hidden).
    shown = hide_credentials(str({"api_key": "sk-proj-LEAK1", "temperature": 0.7, "max_tokens": 64, "x": {"hf_token": "hf_LEAK2"}}))
    assert shown == "{'api_key': '***', 'temperature': 0.7, 'max_tokens': 64, 'x': {'hf_token': '***'}}"
    assert hide_credentials('{"client_secret": "a\\"LEAK3", "password": 1234}') == '{"client_secret": "***", "password": ***}'
    assert hide_credentials("pg://ee:S3cret@db/exp api_key=abc") == "pg://***@db/exp api_key=***"
