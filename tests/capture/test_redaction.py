"""Secrets and e-mail addresses are scrubbed before anything is written or exported."""

from __future__ import annotations

import json

import pytest

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.redaction import Redactor
from ee_middleware.errors import ConfigError

SECRETS = [
    ("my key is sk-proj-abcdefghijklmnopqrstuvwx1234", "api_key"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "api_key"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "api_key"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payloadpayload.signaturesig", "bearer_token"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "jwt"),
    ("login with password=hunter2 please", "password"),
    ('{"api_key": "abc123secret"}', "secret"),
    ("api_key: abc123secret", "password"),
    ("write to jane.doe+test@example.co.uk", "email"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "private_key"),
]


@pytest.mark.parametrize(("text", "kind"), SECRETS)
def test_default_rules_catch_common_secrets(text, kind):
    redacted = Redactor().redact_text(text)
    assert f"[REDACTED:{kind}]" in redacted
    for needle in ("abcdefghijklmnop", "AKIAIOSFODNN7", "hunter2", "abc123secret", "jane.doe", "MIIEow", "payloadpayload"):
        assert needle not in redacted


def test_redacted_json_stays_valid_json():
    data = {"password": 'a "quoted" pass', "note": "pwd=abc\\def mail bob@x.io", "token": "Bearer abcdefghijklmnop"}
    redacted = json.loads(Redactor().redact_text(json.dumps(data)))
    assert redacted["password"] == "[REDACTED:secret]"
    assert "bob@x.io" not in redacted["note"] and "abc" not in redacted["note"]
    assert redacted["token"] == "[REDACTED:bearer_token]"


def test_plain_text_is_left_alone():
    text = "Order A-1001 ships on 2026-11-25; call 555-0100."
    assert Redactor().redact_text(text) == text


def test_structured_values_under_secret_keys_are_replaced_whole():
    data = {"user": "bob", "password": "correct horse", "nested": [{"client_secret": "s3"}, "ok"]}
    assert Redactor().redact(data) == {
        "user": "bob",
        "password": "[REDACTED:secret]",
        "nested": [{"client_secret": "[REDACTED:secret]"}, "ok"],
    }


def test_user_patterns_and_functions_and_disabling():
    redactor = Redactor(extra_patterns={"ticket": r"TICKET-\d+"}, custom=lambda s: s.replace("Acme", "[COMPANY]"))
    assert redactor.redact_text("Acme TICKET-42 bob@x.io") == "[COMPANY] [REDACTED:ticket] [REDACTED:email]"
    assert Redactor(defaults=False).redact_text("bob@x.io") == "bob@x.io"
    with pytest.raises(ConfigError, match="not a valid regex"):
        Redactor(extra_patterns=["(unclosed"])


def test_nothing_secret_reaches_the_store_or_the_users_exporter(expert_model, tools, store_path, tracer_provider, span_exporter):
    from langgraph.prebuilt import create_react_agent

    agent = record_experience(
        create_react_agent(expert_model, tools),
        app="shop",
        store=store_path,
        tracer_provider=tracer_provider,
        redaction_patterns={"customer": r"CUST-\d{4}"},
    )
    agent.invoke({"messages": [("user", "I am CUST-1234, mail me at eve@example.com, key sk-abcdefghijklmnopqrstuvwxyz")]})
    agent.flush()
    stored = json.dumps(next(LocalExperienceStore(store_path).iter_trajectories()).model_dump(mode="json"))
    exported = json.dumps([dict(s.attributes) for s in span_exporter.get_finished_spans()])
    for blob in (stored, exported):
        assert "eve@example.com" not in blob and "sk-abcdefghijkl" not in blob and "CUST-1234" not in blob
        assert "[REDACTED:email]" in blob and "[REDACTED:customer]" in blob
    root = next(s for s in span_exporter.get_finished_spans() if s.name.startswith("invoke_agent"))
    assert root.attributes[sc.EE_TASK].startswith("I am [REDACTED:customer]")
