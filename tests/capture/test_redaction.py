"""Secrets and personal data are scrubbed before anything is written or exported."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading

import pytest

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.redaction import KINDS, PLACEHOLDER, SALT_FILE, RedactionRules, Redactor, is_secret_name, store_salt
from ee_middleware.errors import ConfigError
from tests.capture.redaction_corpus import parts_left

BASIC = base64.b64encode(b"ann:Pa55-word").decode()

SECRETS = [
    ("my key is sk-proj-abcdefghijklmnopqrstuvwx1234", "api_key", "abcdefghijklmnop"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "api_key", "AKIAIOSFODNN7"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "aws_secret_key", "wJalrXUtnFEMI"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc and rk_live_51HqLyjWDarjtT1zdp7dc", "api_key", "4eC39HqLyjW"),
    ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "api_key", "ghp_abcdef"),
    ("Authorization: Bearer abcdefghij0123456789klmnop", "bearer_token", "abcdefghij0123"),
    (f"Authorization: Basic {BASIC}", "basic_auth", BASIC),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N", "jwt", "dozjgNryP4J3"),
    ("login with password=hunter2 please", "secret", "hunter2"),
    ("DB_PASSWORD=s3cr3t! REDIS_HOST=cache", "secret", "s3cr3t!"),
    ('{"api_key": "abc123secret"}', "secret", "abc123secret"),
    ("api_key: abc123secret", "secret", "abc123secret"),
    ("my password is Tr0ub4dor&3.", "password", "Tr0ub4dor&3"),
    ("The password for the VPN is 'correct horse'", "password", "correct horse"),
    ("connect to postgres://admin:Pa55w0rd@db.internal:5432/shop", "url_credentials", "Pa55w0rd"),
    ("write to jane.doe+test@example.co.uk", "email", "jane.doe"),
    ("card 4111 1111 1111 1111 exp 04/29", "credit_card", "4111 1111"),
    ("IBAN DE89 3704 0044 0532 0130 00", "iban", "3704 0044"),
    ("SSN 123-45-6789", "us_ssn", "123-45-6789"),
    ("call +1 (415) 555-0134", "phone", "555-0134"),
    ("call 415-555-0134", "phone", "555-0134"),
    # a US number right after a "(" was left in plain text (a privacy sweep): in prose, in JSON, after a name
    ("call Jane (415-555-0134) today", "phone", "555-0134"),
    ('{"phone": "(415-555-0134)"}', "phone", "555-0134"),
    ("Jane(415.555.0134)", "phone", "555.0134"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "private_key", "MIIEow"),
]


@pytest.mark.parametrize(("text", "kind", "needle"), SECRETS)
def test_default_rules_catch_common_secrets(text, kind, needle):
    redacted = Redactor().redact_text(text)
    assert f"[REDACTED:{kind}]" in redacted
    assert needle not in redacted


def test_a_phone_number_in_parentheses_leaves_the_closing_one_in_the_text():
    """The international form took a ``)`` it had no ``(`` for: ``(phone +1 415 555 0134) ok`` lost its ``)``, and the
    vault kept ``+1 415 555 0134)`` as a spelling of the number."""
    assert Redactor().redact_text("(phone +1 415 555 0134) ok") == "(phone [REDACTED:phone]) ok"
    assert Redactor().redact_text("+44 (20) 7946 0958, then") == "[REDACTED:phone], then"


@pytest.mark.parametrize(
    "text",
    [
        "Order A-1001 ships on 2026-11-25; call 555-0100.",
        "max_tokens=256, token count: 1532, primary_key: order_id",
        "2026-11-25T14:03:22.123+01:00, zip 94103-1234, unix time 1764079402, $1,299.00",
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8, id 3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "1234 5678 9012 3456 fails Luhn; DE00 1234 5678 9012 3456 78 fails the IBAN check",
        "The password is incorrect. Basic plan: $9/month. Reset your password from the account page.",
        "server at 10.0.0.1",  # ip_address is off by default
    ],
)
def test_ordinary_text_is_left_alone(text):
    assert Redactor().redact_text(text) == text


def test_redacted_json_text_stays_valid_json():
    data = {"password": 'a "quoted" pass', "note": "pwd=abc\\def mail bob@x.io", "auth": "Bearer abcdefghijklmnop123"}
    redacted = json.loads(Redactor().redact_text(json.dumps(data)))
    assert redacted["password"] == "[REDACTED:secret]"
    assert "bob@x.io" not in redacted["note"] and "abc" not in redacted["note"]
    assert redacted["auth"] == "Bearer [REDACTED:bearer_token]"


def test_values_under_secret_named_keys_are_replaced_whole():
    data = {"user": "bob", "password": "correct horse", "nested": [{"client_secret": "s3", "dbPassword": 1234}, "ok"], "max_tokens": 5}
    assert Redactor().redact_value(data) == {
        "user": "bob",
        "password": "[REDACTED:secret]",
        "nested": [{"client_secret": "[REDACTED:secret]", "dbPassword": "[REDACTED:secret]"}, "ok"],
        "max_tokens": 5,
    }


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("DB_PASSWORD", True),
        ("apiKey", True),
        ("x-auth-token", True),
        ("aws_secret_access_key", True),
        ("SMTP_PASS", True),
        ("max_tokens", False),
        ("token_count", False),
        ("primary_key", False),
        ("order_id", False),
    ],
)
def test_secret_names(name, secret):
    assert is_secret_name(name) is secret


def test_json_inside_a_string_is_redacted_as_json_and_keeps_its_layout():
    redactor = Redactor()
    compact = json.dumps({"user": "ann", "password": "hunter2", "mail": "ann@x.io"}, separators=(",", ":"))
    out = redactor.redact_value({"content": compact})["content"]
    assert out == '{"user":"ann","password":"[REDACTED:secret]","mail":"[REDACTED:email]"}'
    indented = json.dumps({"db": {"db_password": "q1"}}, indent=2)
    assert json.loads(redactor.redact_value(indented)) == {"db": {"db_password": "[REDACTED:secret]"}}
    assert redactor.redact_value(indented).count("\n") == indented.count("\n")
    clean = '{"order":  "A-1",   "total": 12.5}'  # odd spacing: nothing to redact, so not rewritten
    assert redactor.redact_value(clean) == clean
    escaped = json.dumps(json.dumps({"password": "hunter2"}))  # JSON text inside a JSON string
    assert "hunter2" not in redactor.redact_text(escaped)


def test_pseudonyms_are_consistent_within_a_salt_and_unrelated_across_salts():
    a, b = Redactor(salt=b"store-a"), Redactor(salt=b"store-b")
    first = a.redact_text("mail bob@example.com")
    assert PLACEHOLDER.search(first) and first.startswith("mail [REDACTED:email:")
    assert a.redact_value({"to": "bob@example.com"})["to"] == first.removeprefix("mail ")
    assert a.redact_text("alice@example.com") != first.removeprefix("mail ")
    assert b.redact_text("bob@example.com") != first.removeprefix("mail ")
    assert a.redact_text(first) == first  # redacting twice changes nothing
    assert a.redact_value({"password": first.removeprefix("mail ")}) == {"password": first.removeprefix("mail ")}


def test_kinds_switch_on_and_off():
    text = "call +1 (415) 555-0134 from 203.0.113.9, mail bob@x.io"
    redactor = Redactor(RedactionRules(kinds={"phone": False, "ip_address": True}))
    assert redactor.redact_text(text) == "call +1 (415) 555-0134 from [REDACTED:ip_address], mail [REDACTED:email]"
    assert "ip_address" not in RedactionRules().enabled_kinds() and "phone" in RedactionRules().enabled_kinds()
    assert RedactionRules(defaults=False, kinds={"email": True}).enabled_kinds() == ["email"]
    assert RedactionRules.from_dict(RedactionRules(kinds={"phone": False}).to_dict()) == RedactionRules(kinds={"phone": False})
    with pytest.raises(ConfigError, match=r"Unknown redaction kind.*phones.*Built-in kinds: private_key"):
        RedactionRules(kinds={"phones": False})
    assert set(KINDS) >= {"email", "phone", "credit_card", "iban", "us_ssn", "secret", "password", "url_credentials"}


def test_user_patterns_and_functions_and_disabling():
    redactor = Redactor(extra_patterns={"ticket": r"TICKET-\d+"}, custom=lambda s: s.replace("Acme", "[COMPANY]"))
    assert redactor.redact_text("Acme TICKET-42 bob@x.io") == "[COMPANY] [REDACTED:ticket] [REDACTED:email]"
    assert Redactor(RedactionRules(patterns={"customer": r"customer (?P<value>\d+)"})).redact_text("customer 42") == (
        "customer [REDACTED:customer]"
    )
    assert Redactor(defaults=False).redact_text("bob@x.io") == "bob@x.io"
    assert not Redactor(defaults=False).enabled
    with pytest.raises(ConfigError, match="not a valid regex"):
        Redactor(extra_patterns=["(unclosed"])


def test_store_salt_is_created_once_owner_only_and_shared(tmp_path):
    store = LocalExperienceStore(tmp_path / "experience")
    salts: list[bytes | None] = []
    threads = [threading.Thread(target=lambda: salts.append(store_salt(store))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(salts)) == 1 and len(salts[0]) == 32
    path = store.root / SALT_FILE
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in store.root.iterdir() if p.name.endswith(".tmp")]
    assert store_salt(object()) is None  # a store without a local folder


def test_capture_config_switches(tmp_path, monkeypatch):
    toml = tmp_path / "ee.toml"
    toml.write_text('[capture]\napp = "shop"\n[capture.redaction_kinds]\nphone = false\nip_address = true\n')
    config = CaptureConfig.load(toml)
    assert config.redaction_rules().enabled_kinds().count("phone") == 0 and "ip_address" in config.redaction_rules().enabled_kinds()
    with pytest.raises(ConfigError, match="Unknown redaction kind"):
        CaptureConfig(redaction_kinds={"telephone": False})
    with pytest.raises(ConfigError, match=r"redaction_kinds\.phone: Input should be a valid boolean"):
        CaptureConfig(redaction_kinds={"phone": "no"})
    monkeypatch.setenv("EE_REDACTION_PSEUDONYMS", "0")
    assert CaptureConfig.load().redaction_pseudonyms is False


def test_nothing_secret_reaches_the_store_or_the_users_exporter(expert_model, tools, store_path, tracer_provider, span_exporter):
    from langchain.agents import create_agent

    agent = record_experience(
        create_agent(expert_model, tools),
        app="shop",
        store=store_path,
        tracer_provider=tracer_provider,
        redaction_patterns={"customer": r"CUST-\d{4}"},
        environment={"db_password": "pw-9876", "owner": "eve@example.com"},
    )
    agent.invoke(
        {"messages": [("user", "I am CUST-1234, mail me at eve@example.com, key sk-abcdefghijklmnopqrstuvwxyz")]},
        {"configurable": {"thread_id": "whatsapp:+14155550134"}},
    )
    agent.flush()
    t = next(LocalExperienceStore(store_path).iter_trajectories())
    stored = json.dumps(t.model_dump(mode="json"))
    exported = json.dumps([dict(s.attributes) for s in span_exporter.get_finished_spans()])
    for blob in (stored, exported):
        for secret in ("eve@example.com", "sk-abcdefghijkl", "CUST-1234", "pw-9876", "4155550134"):
            assert secret not in blob
        assert "[REDACTED:email:" in blob and "[REDACTED:customer:" in blob
    email = t.task.split("mail me at ")[1].split(",")[0]
    assert email.startswith("[REDACTED:email:") and t.environment["owner"] == email  # the same pseudonym in both places
    assert t.environment["db_password"].startswith("[REDACTED:secret:")
    assert t.thread_id.startswith("whatsapp:[REDACTED:phone:")
    root = next(s for s in span_exporter.get_finished_spans() if s.name.startswith("invoke_agent"))
    assert root.attributes[sc.EE_TASK].startswith("I am [REDACTED:customer:")
    assert (store_path / SALT_FILE).exists()


def test_placeholders_without_pseudonyms(expert_model, tools, store_path):
    from langchain.agents import create_agent

    agent = record_experience(create_agent(expert_model, tools), app="shop", store=store_path, redaction_pseudonyms=False)
    agent.invoke({"messages": [("user", "mail me at eve@example.com")]})
    agent.flush()
    assert next(LocalExperienceStore(store_path).iter_trajectories()).task == "mail me at [REDACTED:email]"
    assert not (store_path / SALT_FILE).exists()


def test_error_messages_and_exception_events_are_redacted(store_path, tracer_provider, span_exporter):
    from langchain.agents import create_agent
    from langchain.agents.middleware import ToolErrorMiddleware
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool
    def charge(order_id: str) -> str:
        """Charge an order."""
        if order_id == "A-1":
            raise ValueError("card 4111 1111 1111 1111 declined for eve@example.com")
        raise RuntimeError("gateway down, retry with key sk_live_abcdefghijklmnopqrstuvwx")

    script = [
        AIMessage(content="", tool_calls=[tool_call("charge", order_id="A-1")]),
        AIMessage(content="", tool_calls=[tool_call("charge", order_id="A-2")]),
    ]
    middleware = ToolErrorMiddleware(on_error=lambda exc, request: f"Error: {exc}" if isinstance(exc, ValueError) else None)
    graph = create_agent(ScriptedChatModel(script=script), [charge], middleware=[middleware])
    agent = record_experience(graph, app="shop", store=store_path, tracer_provider=tracer_provider)
    with pytest.raises(RuntimeError, match="gateway down"):
        agent.invoke({"messages": [("user", "charge my orders")]})
    agent.flush()
    t = next(LocalExperienceStore(store_path).iter_trajectories())
    assert t.status == "error" and t.error.startswith("RuntimeError: gateway down, retry with key [REDACTED:api_key:")
    assert t.steps[0].observation.is_error and "[REDACTED:credit_card:" in t.steps[0].observation.content
    events = [e for s in span_exporter.get_finished_spans() for e in s.events if e.name == "exception"]
    assert len(events) >= 2
    text = json.dumps([dict(e.attributes) for e in events])
    assert not parts_left(("4111", "eve@example.com", "sk_live_abcdef"), text), text
    assert all(e.attributes["exception.stacktrace"].startswith("Traceback") for e in events)


def test_json_nested_too_deep_to_walk_is_redacted_as_text_not_a_lost_run() -> None:
    """A tool result of JSON nested hundreds of levels deep (Python's json and LangChain take it) raised RecursionError
    in the walk, and capture dropped the whole run. It is read as text then: the rules, secret-named keys included."""
    deep = {"name": "intern", "email": "ada@example.com", "password": "hunter2"}
    for _ in range(450):
        deep = {"reports_to": deep}
    text = json.dumps(deep)
    redacted = Redactor().redact_text(text)
    assert "ada@example.com" not in redacted and "hunter2" not in redacted
    assert '"email": "[REDACTED:email]"' in redacted and '"password": "[REDACTED:secret]"' in redacted
    assert redacted.count('{"reports_to": ') == 450 and json.loads(redacted) is not None  # still the same JSON
    # json.dumps' default escapes (a non-ASCII name), and an escape hiding the '@' from the rules: read, then redacted
    escaped = json.dumps(deep).replace("intern", "M\\u00fcller").replace("ada@", "ada\\u0040")
    assert json.loads(escaped) is not None and "Müller" not in escaped
    for text in (escaped, f"tool said: {escaped} (end)"):
        redacted = Redactor().redact_text(text)
        assert "ada@example.com" not in redacted and "ada\\u0040example.com" not in redacted and "hunter2" not in redacted, text[:80]
        assert "Müller" in redacted and "[REDACTED:email]" in redacted
