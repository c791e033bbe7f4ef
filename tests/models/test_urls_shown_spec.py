"""``shown_spec``: a model spec (or a URL, or a text holding URLs) as it may be printed or stored, its URLs'
``user:password@`` and secret-looking query values masked, everything else (and a spec without credentials) unchanged."""

from __future__ import annotations

import pytest

from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.urls import shown_spec, shown_url


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("openai:http://alice:s3cr3tpw@127.0.0.1:8000/v1#flight-bot", "openai:http://***@127.0.0.1:8000/v1#flight-bot"),
        ("openai:https://sk-only-a-token@api.example.com/v1#m", "openai:https://***@api.example.com/v1#m"),
        ("openai:http://alice:p@ss@host/v1#m", "openai:http://***@host/v1#m"),  # an unencoded '@' in the password
        ("experience:openai:http://u:pw@h:1/v1#em", "experience:openai:http://***@h:1/v1#em"),
        ("mcp:http://svc:pw@10.0.0.8/mcp", "mcp:http://***@10.0.0.8/mcp"),
        ("pg://ee:S3cret@db/exp", "pg://***@db/exp"),
        ("openai:http://h/v1?api_key=sk-1&api-version=2024-06-01#m", "openai:http://h/v1?api_key=***&api-version=2024-06-01#m"),
        (
            "https://h/v1?key=k1&token=t1&access_token=a1&password=p1&client_secret=c1&sig=s1&X-Amz-Signature=x1&code=f1&x=1",
            "https://h/v1?key=***&token=***&access_token=***&password=***&client_secret=***&sig=***&X-Amz-Signature=***&code=***&x=1",
        ),
        ("https://h/v1?API%5FKEY=k1&Api-Key=k2#m", "https://h/v1?API%5FKEY=***&Api-Key=***#m"),
        ("text naming http://a:b@h/v1 and https://c:d@i/v2?token=t", "text naming http://***@h/v1 and https://***@i/v2?token=***"),
    ],
)
def test_credentials_in_a_specs_urls_are_masked(spec: str, shown: str) -> None:
    assert shown_spec(spec) == shown
    assert shown_spec(shown) == shown, "masking twice changes nothing"


@pytest.mark.parametrize(
    "spec",
    [
        "mutate",
        "bfcl",
        "local:/models/org@v2@/adapters/a1",  # a local path's '@' is no URL's userinfo
        "transformers:./tiny",
        "pkg.module:factory",
        "openai:http://127.0.0.1:8000/v1#flight-bot",
        "openai:http://[::1]:8000/v1#m",
        "openai:http://h/v1?api-version=2024-06-01&max_tokens=5&key=#m",  # no secret-named parameter with a value
        "openai:http://h/v1/users/a@b#m",  # an '@' in the path
        "openai:http://h/v1#model@v2",  # an '@' in the served model's name
    ],
)
def test_a_spec_without_credentials_is_unchanged(spec: str) -> None:
    assert shown_spec(spec) == spec


def test_a_client_refusing_its_base_url_names_it_masked() -> None:
    with pytest.raises(ValueError) as refused:
        OpenAIChatClient("http://alice:s3cr3tpw@bad host/v1?api_key=sk-LEAK", "m")
    assert "s3cr3tpw" not in str(refused.value) and "sk-LEAK" not in str(refused.value)
    assert shown_url("http://alice:s3cr3tpw@h/v1?api_key=sk-LEAK") == "http://***@h/v1?api_key=***"


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("https://h.example/cb#access_token=abc123&state=1", "https://h.example/cb#access_token=***&state=1"),
        ("https://h.example/cb#state=1&access_token=abc123", "https://h.example/cb#state=1&access_token=***"),
        ("openai:http://h/v1?api_key=sk-1#m", "openai:http://h/v1?api_key=***#m"),
        ("openai:http://h/v1#model=v2", "openai:http://h/v1#model=v2"),  # nothing secret in the fragment: unchanged
    ],
)
def test_a_secret_parameter_in_a_urls_fragment_is_masked(spec: str, shown: str) -> None:
    # Was: the parameter right after '#' (OAuth's implicit flow: '#access_token=...') was kept.
    assert shown_spec(spec) == shown
