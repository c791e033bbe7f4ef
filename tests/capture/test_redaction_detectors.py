"""Built-in rules find what the README says they find (privacy sweep, defects 1, 3, 8, 9).

A card followed by another group of digits, an IBAN followed by a group or a word, values below a secret-named key
that are objects or lists, provider keys used as JSON object keys and e-mail addresses with non-ASCII characters were
stored raw. Checked in real recordings (a real create_agent graph, ScriptedChatModel, record_experience, the store's
files and the user's exporter) and on the redactor itself, with ordinary values that must stay as they are; and a store
recorded before these fixes stays readable, its placeholders unchanged.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.redaction import KINDS, PLACEHOLDER, RedactionRules, Redactor, _luhn
from tests.capture.redaction_corpus import build_corpus, exporter_texts, store_texts

FIXTURE_STORE = Path(__file__).parent / "fixtures" / "store_before_detector_fixes"

# --- defect 1: a card or an IBAN followed by more digits or a word -----------------------------------------------

CARDS_FOLLOWED = [
    ("charge my card 4539 1488 0343 6467 10 EUR", "charge my card [REDACTED:credit_card] 10 EUR"),
    ("card 4111 1111 1111 1111 123", "card [REDACTED:credit_card] 123"),
    ("4111-1111-1111-1111 12/27", "[REDACTED:credit_card] 12/27"),
    ("card 4111111111111111 123 exp 04/29", "card [REDACTED:credit_card] 123 exp 04/29"),
    ("Amex 3782 822463 10005 2026", "Amex [REDACTED:credit_card] 2026"),
    ("pay 10 4539 1488 0343 6467 now", "pay 10 [REDACTED:credit_card] now"),
    ("qty 2 5555 5555 5555 4444 10 EUR", "qty 2 [REDACTED:credit_card] 10 EUR"),
    ("cards 4111 1111 1111 1111 5500 0000 0000 0004", "cards [REDACTED:credit_card] [REDACTED:credit_card]"),
]

IBANS_FOLLOWED = [
    ("wire to ES91 2100 0418 4502 0005 1332 EUR", "wire to [REDACTED:iban] EUR"),
    ("BE68 5390 0754 7034 2024", "[REDACTED:iban] 2024"),
    ("AT61 1904 3002 3457 3201 1500 EUR", "[REDACTED:iban] 1500 EUR"),
    ("from BE68 5390 0754 7034 BE68 5390 0754 7034", "from [REDACTED:iban] [REDACTED:iban]"),
    ("IBAN DE89 3704 0044 0532 0130 00 12 EUR", "IBAN [REDACTED:iban] 12 EUR"),  # worked before: the control
]


@pytest.mark.parametrize(("text", "expected"), CARDS_FOLLOWED + IBANS_FOLLOWED)
def test_a_card_or_iban_followed_by_more_digits_or_a_word_is_redacted(text, expected):
    assert Redactor().redact_text(text) == expected


def test_the_card_gets_the_same_pseudonym_whatever_follows_it():
    """(Where the card and what follows are together a Luhn-valid 13-19 digit number, that whole number is the card.)"""
    redactor = Redactor(salt=b"store")
    alone = redactor.redact_text("4539 1488 0343 6467")
    assert PLACEHOLDER.fullmatch(alone)
    for text in ("4539 1488 0343 6467 10 EUR", "4539 1488 0343 6467 124", "4539 1488 0343 6467 12/27", "pay 10 4539 1488 0343 6467"):
        assert alone in redactor.redact_text(text)


ORDINARY_NUMBERS = [
    "order 1234 5678 9012 3456 10 units",
    "ref 4000 1234 5678 9011 2026-11-25",
    "timestamps 1764079402 1764079403 1764079404",
    "2026 11 25 14 03 22 99 meter reading",
    "batch 4111 1111 1111 1112 123",
    "DE00 1234 5678 9012 3456 78 fails the IBAN check, BE00 5390 0754 7034 2024 too",
    "serial 0000 1111 2222 3333 4444 5555",
]


@pytest.mark.parametrize("text", ORDINARY_NUMBERS)
def test_ordinary_numbers_next_to_each_other_are_left_alone(text):
    assert Redactor().redact_text(text) == text


def _card_number(rng: random.Random, valid: bool) -> str:
    while True:
        digits = rng.choice("3456") + "".join(rng.choice("0123456789") for _ in range(15))
        if _luhn(digits) is valid:
            return " ".join(digits[i : i + 4] for i in range(0, 16, 4))


def test_only_luhn_valid_numbers_in_a_card_layout_are_taken_out_of_a_longer_run():
    """Seeded: a card in groups of four before an amount, a CVV or an expiry is redacted; a number failing Luhn in the
    same place is not (as alone: the rule adds no false positive of its own). Left out: numbers that with the next
    group are a Luhn-valid number of 13-19 digits, which were and are taken whole."""
    rng = random.Random(11)
    redactor = Redactor()
    checked = 0
    for tail in (" 10 EUR", " 123", " 12/27", " 2026-11-25", " 7"):
        for _ in range(40):
            card, number = _card_number(rng, valid=True), _card_number(rng, valid=False)
            following = tail.split()[0].replace("/", "-").split("-")[0]
            if _luhn(card.replace(" ", "") + following) or _luhn(number.replace(" ", "") + following):
                continue
            assert redactor.redact_text(card + tail) == "[REDACTED:credit_card]" + tail
            assert redactor.redact_text(number + tail) == number + tail
            checked += 1
    assert checked > 120


# --- defect 3: objects and lists below a secret-named key ---------------------------------------------------------

SECRET_SHAPES = [
    {"password": {"old": "hunter2", "new": "Tr0ub4dor&3"}},
    {"api_key": ["9f8e7d6c5b4a3928", "1706f5e4d3c2b1a0"]},
    {"client_secret": {"value": "s3cr3t-value-123"}},
    {"secrets": {"password": {"value": "S3cretDbPass!x"}, "api_key": ["k-1", "k-2"], "pin": 4821, "rotated": True, "note": None}},
    {"user": "ann", "credentials": [{"user": "svc", "pass": "p@ss-1"}, ["nested", 7.5]], "region": "eu"},
]


@pytest.mark.parametrize("data", SECRET_SHAPES)
def test_every_scalar_below_a_secret_named_key_is_replaced_and_the_shape_is_kept(data):
    redacted = Redactor().redact_value(data)

    def same_shape(before: Any, after: Any, secret: bool) -> None:
        if isinstance(before, dict):
            assert list(after) == list(before)  # the keys are labels: kept
            for key in before:
                same_shape(before[key], after[key], secret or key in ("password", "api_key", "client_secret", "secrets", "credentials"))
        elif isinstance(before, list):
            assert len(after) == len(before)
            for b, a in zip(before, after, strict=True):
                same_shape(b, a, secret)
        elif secret and before is not None and not isinstance(before, bool):
            assert after == "[REDACTED:secret]"
        else:
            assert after == before

    same_shape(data, redacted, False)


@pytest.mark.parametrize("data", SECRET_SHAPES)
def test_secret_objects_in_json_text_are_redacted_alike_and_the_text_stays_json(data):
    redactor = Redactor(salt=b"store")
    walked = redactor.redact_value(data)
    for dump in (json.dumps, lambda d: json.dumps(d, indent=2), lambda d: json.dumps(d, separators=(",", ":"))):
        assert json.loads(redactor.redact_text(dump(data))) == walked
        assert json.loads(redactor.redact_text("result: " + dump(data) + " (done)")[len("result: ") : -len(" (done)")]) == walked
        escaped = json.dumps({"content": dump(data)})  # JSON text inside a JSON string
        assert json.loads(json.loads(redactor.redact_text(escaped))["content"]) == walked
    assert json.loads(redactor.redact_json(data)) == walked


def test_a_secret_object_gets_the_pseudonyms_its_values_get_as_plain_secrets():
    redactor = Redactor(salt=b"store")
    nested = redactor.redact_value({"password": {"old": "hunter2", "pin": 4821}})
    assert nested["password"]["old"] == redactor.redact_value({"password": "hunter2"})["password"]
    assert nested["password"]["pin"] == redactor.redact_value({"pin": 4821})["pin"]
    assert redactor.redact_value(nested) == nested  # redacting twice changes nothing


def test_a_bare_secret_in_json_text_becomes_a_json_string():
    redactor = Redactor()
    assert json.loads(redactor.redact_text('{"pin": 4821, "ok": true}')) == {"pin": "[REDACTED:secret]", "ok": True}
    assert redactor.redact_text("PIN=4821 and pin: 4821") == "PIN=[REDACTED:secret] and pin: [REDACTED:secret]"


def test_a_json_schema_under_a_secret_name_is_not_a_secret():
    """A tool's ``password`` parameter described in a prompt or a tool result (a JSON Schema) is kept, as before."""
    schema = {
        "type": "object",
        "properties": {
            "password": {"title": "Password", "type": "string", "description": "The new password", "minLength": 8},
            "api_key": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
            "secrets": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["password"],
    }
    redactor = Redactor()
    assert redactor.redact_value(schema) == schema
    prompt = "Answer with JSON matching this schema: " + json.dumps(schema)
    assert redactor.redact_text(prompt) == prompt
    assert redactor.redact_value({"password": {"type": "bcrypt", "value": "hunter2"}}) == {
        "password": {"type": "[REDACTED:secret]", "value": "[REDACTED:secret]"}
    }


def test_an_object_written_after_a_secret_name_in_plain_text_goes_whole():
    redactor = Redactor()
    assert redactor.redact_text("password={p@ss:w0rd} ok") == "password={[REDACTED:secret]:[REDACTED:secret]} ok"
    assert redactor.redact_text("change_password(user='ann', password={'old': 'hunter2', 'new': 'x1'})") == (
        "change_password(user='ann', password={'old': '[REDACTED:secret]', 'new': '[REDACTED:secret]'})"
    )


def test_words_after_a_secret_name_that_are_not_values_are_left_alone():
    for text in ("The password is incorrect.", '{"password": null, "api_key": [], "secrets": {}}', "max_tokens: [256, 512]"):
        assert Redactor().redact_text(text) == text


# --- defect 8: provider keys used as JSON object keys -------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("AKIAIOSFODNN7EXAMPLE", "api_key"),
        ("ASIAY34FZKBOKMUTVV7A", "api_key"),
        ("sk_live_abcdefghij12", "api_key"),
        ("rk_test_abcdefghijkl", "api_key"),
        ("whsec_abcdefghijklmnop", "api_key"),
        ("DE89370400440532013000", "iban"),
    ],
)
def test_a_provider_key_or_iban_used_as_a_json_key_is_redacted(key, kind):
    redacted = Redactor().redact_value({key: "deploy-bot", "owner": "ops"})
    assert redacted == {f"[REDACTED:{kind}]": "deploy-bot", "owner": "ops"}


def test_every_short_identifier_a_built_in_rule_matches_in_is_scanned_as_a_key():
    """The shortcut that leaves short identifier keys unscanned (``role``, ``order_id``) must not skip one a rule finds
    something in: checked on the corpus's values and these."""
    from ee_middleware.capture.redaction import _IN_SHORT_KEY

    planted, _ = build_corpus(7)
    values = {p.value for run in planted for p in run.plants} | {"AKIAIOSFODNN7EXAMPLE", "sk_test_abcdefghij", "whsec_abcdefghijklmnop"}
    values |= {"DE89370400440532013000", "GB82WEST12345698765432", "x4111111111111111", "rk_live_0123456789ab"}
    redactor = Redactor(RedactionRules(kinds=dict.fromkeys(KINDS, True)))
    short = [v for v in values if v.isidentifier() and len(v) < 32 and redactor.redact_text(v) != v]
    assert len(short) > 10
    assert [v for v in short if _IN_SHORT_KEY.search(v) is None] == []


def test_ordinary_keys_are_kept():
    data = {"role": "user", "order_id": "A-1", "max_tokens": 5, "item1": 1, "sku_2026": "x", "tool_call_id": "call_1"}
    assert Redactor().redact_value(data) == data


# --- defect 9: e-mail addresses with non-ASCII characters ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to иван@пример.рф", "write to [REDACTED:email]"),
        ("josé.garcía@example.es", "[REDACTED:email]"),
        ("mail alice.o'brien@example.co.uk", "mail [REDACTED:email]"),
        ("{'to': 'bob@example.com'}", "{'to': '[REDACTED:email]'}"),  # quotes stay
        ('"müller@bücher.de"', '"[REDACTED:email]"'),
        ("请发邮件到wangwei@example.com谢谢", "请发邮件到[REDACTED:email]谢谢"),
        ("ivan@xn--e1afmkfd.xn--p1ai", "[REDACTED:email]"),
        ("Grüße, jürgen.groß@firma.de.", "Grüße, [REDACTED:email]."),
        ("mail bob@example.com_or_later", "mail [REDACTED:email]_or_later"),
    ],
)
def test_e_mail_addresses_with_non_ascii_characters_are_redacted(text, expected):
    assert Redactor().redact_text(text) == expected


def test_the_e_mail_finder_finds_what_its_pattern_finds():
    from ee_middleware.capture.redaction import _EMAIL, _emails

    planted, clean = build_corpus(7)
    texts = [t for run in planted + clean for t in run.texts()] + [json.dumps(run.fields()) for run in planted + clean]
    texts += [
        "a@b.co x@y",
        "mail alice.o'brien@example.co.uk, иван@пример.рф; josé.garcía@example.es.",
        "@" * 5,
        "x" * 300 + "@a.io",
        "y_" * 200 + "@a.io",
    ]
    for text in texts:
        assert [(f.start, f.end) for f in _emails(text)] == [m.span() for m in _EMAIL.finditer(text)], text


@pytest.mark.parametrize(
    "text",
    ["@mention me", "pip install pkg@1.2.3", "it's 5@home", "a@b", "user@localhost", "logo@2x", "@@", "O'Brien's @ desk"],
)
def test_things_with_an_at_sign_that_are_not_addresses_are_left_alone(text):
    assert Redactor().redact_text(text) == text


# --- in a real recording ------------------------------------------------------------------------------------------

PLANTED = {
    "card": "4539 1488 0343 6467",
    "card_compact": "4539148803436467",
    "iban": "ES91 2100 0418 4502 0005 1332",
    "old_password": "hunter2-old",
    "new_password": "Tr0ub4dor&3",
    "db_password": "S3cretDbPass!x",
    "aws_key_id": "AKIAIOSFODNN7EXAMPLE",
    "stripe_key": "sk_live_abcdefghij12",
    "idn_email": "иван@пример.рф",
    "accented_email": "josé.garcía@example.es",
    "apostrophe_email_start": "alice.o'",
}


def _recorded_agent(store: Path, tracer_provider: Any) -> Any:
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from ee_middleware.testing import ScriptedChatModel, tool_call

    @tool
    def change_password(user: str, password: dict[str, str]) -> str:
        """Change a user's password."""
        return f"password of {user} changed"

    @tool
    def iam_keys(team: str) -> dict[str, Any]:
        """List the access keys of a team and the team's settings."""
        return {
            "AKIAIOSFODNN7EXAMPLE": "deploy-bot",
            "sk_live_abcdefghij12": "billing",
            "owners": ["иван@пример.рф", "josé.garcía@example.es", "alice.o'brien@example.co.uk"],
            "secrets": {"password": {"value": "S3cretDbPass!x"}, "rotated": True},
            "payout": "ES91 2100 0418 4502 0005 1332 EUR",
        }

    script = [
        AIMessage(content="", tool_calls=[tool_call("change_password", user="ann", password={"old": "hunter2-old", "new": "Tr0ub4dor&3"})]),
        AIMessage(content="", tool_calls=[tool_call("iam_keys", team="ops")]),
        AIMessage(content="Charged 4539 1488 0343 6467 10 EUR; owners notified."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [change_password, iam_keys], system_prompt="You are the ops agent.")
    return record_experience(graph, app="ops", store=store, tracer_provider=tracer_provider)


def test_a_real_recording_stores_and_exports_none_of_the_values(store_path, tracer_provider, span_exporter, tmp_path):
    agent = _recorded_agent(store_path, tracer_provider)
    task = "Please charge my card 4539 1488 0343 6467 10 EUR, then rotate the ops keys."
    agent.invoke({"messages": [("user", task)]}, {"configurable": {"thread_id": "t-1"}})
    agent.flush()
    agent.recorder.close()

    stored = "\n".join(store_texts(store_path))
    exported = "\n".join(exporter_texts(span_exporter))
    for blob in (stored, exported):
        leaked = {name for name, value in PLANTED.items() if value in blob or json.dumps(value)[1:-1] in blob}
        assert leaked == set()
        for kind in ("credit_card", "iban", "secret", "api_key", "email"):
            assert f"[REDACTED:{kind}:" in blob
        assert "10 EUR" in blob  # what follows the card stays

    store = LocalExperienceStore(store_path)
    [trajectory] = list(store.iter_trajectories())
    assert trajectory.task.startswith("Please charge my card [REDACTED:credit_card:")
    assert trajectory.task.endswith(" 10 EUR, then rotate the ops keys.")
    password = trajectory.steps[0].action.tool_call.arguments["password"]
    assert set(password) == {"old", "new"} and all(v.startswith("[REDACTED:secret:") for v in password.values())
    result = json.loads(trajectory.steps[1].observation.content)
    assert result["secrets"]["rotated"] is True and result["secrets"]["password"]["value"].startswith("[REDACTED:secret:")
    assert [key.split(":")[1] for key in result if key.startswith("[REDACTED:")] == ["api_key", "api_key"]

    from ee_middleware.export import export_jsonl

    export_jsonl(store, tmp_path / "out.jsonl", status=None)
    text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    assert not {name for name, value in PLANTED.items() if value in text or json.dumps(value)[1:-1] in text}


def test_a_store_recorded_before_these_fixes_stays_readable_and_its_placeholders_stay(tmp_path, store_path):
    """The fixture is what ee-middleware 5e64744 stored (tests/capture/fixtures/make_store_before_detector_fixes.py):
    the card, the IAM key id, the password object and the non-ASCII addresses raw. Reading it works; an export now
    redacts them with the store's salt; the placeholders it already held are unchanged, and a value recorded now gets
    the placeholder the old recording gave it."""
    from ee_middleware.export import export_jsonl

    shutil.copytree(FIXTURE_STORE, store_path)
    (store_path / "redaction.key").chmod(0o600)
    store = LocalExperienceStore(store_path)
    [old] = list(store.iter_trajectories())
    assert old.task == "charge my card 4539 1488 0343 6467 10 EUR, mail [REDACTED:email:050f3988]"
    assert "alice.o'[REDACTED:email:9d034d5a]" in old.steps[0].observation.content

    export_jsonl(store, tmp_path / "out.jsonl", status=None)
    text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    for value in ("4539 1488 0343 6467", "AKIAIOSFODNN7EXAMPLE", "hunter2", "Tr0ub4dor&3", "иван@пример.рф", "josé.garcía@example.es"):
        assert value not in text and json.dumps(value)[1:-1] not in text
    assert "[REDACTED:email:050f3988]" in text and "[REDACTED:email:9d034d5a]" in text
    assert " 10 EUR, mail [REDACTED:email:050f3988]" in text

    # the same value recorded today: the same pseudonym as in the old recording
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from ee_middleware.testing import ScriptedChatModel

    agent = record_experience(create_agent(ScriptedChatModel(script=[AIMessage(content="ok")]), []), app="ops", store=store_path)
    agent.invoke({"messages": [("user", "mail bob@example.com")]})
    agent.flush()
    agent.recorder.close()
    tasks = {t.task for t in LocalExperienceStore(store_path).iter_trajectories()}
    assert "mail [REDACTED:email:050f3988]" in tasks and len(tasks) == 2


# --- review of a50710b: weak secret names, schemas, card windows in rows of figures --------------------------------

ORDINARY_OBJECTS_UNDER_WEAK_NAMES = [
    {"boarding_pass": {"flight": "BA117", "seat": "12A", "gate": "B32", "departs": "2026-12-01T10:40"}},
    {"token": {"symbol": "USDC", "decimals": 6, "chain": "ethereum"}},
    {"pin": {"lat": 48.8584, "lng": 2.2945, "label": "Eiffel Tower"}},
    {"season_pass": ["Zermatt", "Verbier"]},
    {"cookie": {"name": "theme", "value": "dark", "path": "/"}},
    {"map": {"pins": 3, "pin": [{"lat": 1.5, "lng": 2.5}], "nft_token": {"id": 42, "name": "Ape #42"}}},
]


@pytest.mark.parametrize("data", ORDINARY_OBJECTS_UNDER_WEAK_NAMES)
def test_objects_and_lists_under_weak_secret_names_are_walked_as_ordinary_data(data):
    """``token``, ``pin``, a ``pass`` suffix and ``cookie`` name a secret when they hold one value (a PIN, a token), but
    a boarding pass, a currency token, a map pin or a browser cookie's settings are ordinary objects: kept, as before
    a50710b, in values and in JSON text alike."""
    redactor = Redactor(salt=b"store")
    assert redactor.redact_value(data) == data
    for dump in (json.dumps, lambda d: json.dumps(d, indent=2), lambda d: repr(d)):
        assert redactor.redact_text("result: " + dump(data)) == "result: " + dump(data)
    assert redactor.redact_value({"content": json.dumps(data)}) == {"content": json.dumps(data)}
    assert json.loads(redactor.redact_json(data)) == data


def test_under_a_weak_secret_name_an_object_still_gets_the_built_in_rules_and_a_single_value_is_replaced():
    redactor = Redactor()
    data = {
        "token": {"symbol": "USDC", "issuer_contact": "ops@circle.example.com", "api_key": "9f8e7d6c5b4a3928"},
        "cookie": {"name": "sid", "value": "sk_live_abcdefghij12"},
        "pin": 4821,
        "boarding_pass": "BA117-12A-XKQ7",
    }
    expected = {
        "token": {"symbol": "USDC", "issuer_contact": "[REDACTED:email]", "api_key": "[REDACTED:secret]"},
        "cookie": {"name": "sid", "value": "[REDACTED:api_key]"},
        "pin": "[REDACTED:secret]",
        "boarding_pass": "[REDACTED:secret]",
    }
    assert redactor.redact_value(data) == expected
    assert json.loads(redactor.redact_text(json.dumps(data))) == expected


@pytest.mark.parametrize(
    ("name", "strength"),
    [
        *((n, 2) for n in ("password", "db_password", "passwd", "passphrase", "client_secret", "secrets", "credentials", "aws_credential")),
        *((n, 2) for n in ("api_key", "apiKey", "APIKEY", "private_key", "privateKey", "access_key", "signing_key", "authorization")),
        *((n, 2) for n in ("access_token", "refreshToken", "x-auth-token", "id_token", "bearer_token", "csrf_token", "cvv", "ssn")),
        *((n, 1) for n in ("token", "github_token", "pin", "card_pin", "boarding_pass", "SMTP_PASS", "cookie", "session_id", "dsn")),
        *((n, 0) for n in ("max_tokens", "token_count", "primary_key", "order_id", "pins", "cookies", "passenger", "spinner")),
    ],
)
def test_secret_names_are_strong_or_weak(name, strength):
    from ee_middleware.capture.redaction import _secret_name_strength, is_secret_name

    assert _secret_name_strength(name) == strength
    assert is_secret_name(name) is (strength > 0)


@pytest.mark.parametrize("name", ["access_token", "authorization", "private_key", "cvv"])
def test_every_scalar_below_a_strong_secret_name_is_replaced(name):
    data = {name: {"value": "abc-123-xyz", "scopes": ["read", "write"], "expires_in": 3600, "refreshable": True}}
    redacted = Redactor().redact_value(data)
    assert redacted == {
        name: {"value": "[REDACTED:secret]", "scopes": ["[REDACTED:secret]"] * 2, "expires_in": "[REDACTED:secret]", "refreshable": True}
    }
    assert json.loads(Redactor().redact_text(json.dumps(data))) == redacted


CONNECT_TOOL = {
    "type": "function",
    "function": {
        "name": "connect",
        "parameters": {
            "type": "object",
            "required": ["api_key"],
            "properties": {
                "api_key": {"type": "string", "description": "The account's API key", "example": "9f8e7d6c5b4a3928"},
                "password": {"type": "string", "description": "Login password", "x-sensitive": True, "default": "hunter2"},
                "token": {"type": "string", "minLength": 8, "$comment": "from the dashboard", "examples": ["tok_abc"]},
                "credentials": {
                    "type": "object",
                    "$id": "#creds",
                    "properties": {
                        "user": {"type": "string", "examples": ["svc-deploy"]},
                        "default": {"type": "boolean", "description": "use the default account"},
                    },
                    "x-order": 3,
                },
            },
        },
    },
}
CONNECT_PROPERTIES_REDACTED = {
    "api_key": {"type": "string", "description": "The account's API key", "example": "[REDACTED:secret]"},
    "password": {"type": "string", "description": "Login password", "x-sensitive": True, "default": "[REDACTED:secret]"},
    "token": {"type": "string", "minLength": 8, "$comment": "from the dashboard", "examples": ["tok_abc"]},
    "credentials": {
        "type": "object",
        "$id": "#creds",
        "properties": {
            "user": {"type": "string", "examples": ["[REDACTED:secret]"]},
            "default": {"type": "boolean", "description": "use the default account"},
        },
        "x-order": 3,
    },
}


def test_a_json_schema_under_a_secret_name_keeps_its_structure_with_openapi_and_extension_keywords():
    """A tool's parameters described with OpenAPI's ``example``, an ``x-`` extension, ``$comment`` or ``$id`` keep
    their type, description and limits; the example, examples, default (and const) values under a strong secret name
    are still replaced, as they may be a real key (under the weak ``token`` they are ordinary data, the built-in rules
    applying); a property named ``default`` is a property, not a default."""
    redactor = Redactor()
    redacted = redactor.redact_value(CONNECT_TOOL)
    assert redacted["function"]["parameters"]["properties"] == CONNECT_PROPERTIES_REDACTED
    assert redacted["function"]["parameters"]["required"] == ["api_key"]
    for dump in (json.dumps, lambda d: json.dumps(d, indent=2)):
        text = redactor.redact_text("Call the tool per this definition: " + dump(CONNECT_TOOL))
        assert json.loads(text.split(": ", 1)[1]) == redacted
    result = redactor.redact_value({"role": "tool", "content": json.dumps(CONNECT_TOOL)})
    assert json.loads(result["content"]) == redacted


def test_a_strong_secret_object_with_a_type_member_is_no_schema():
    redactor = Redactor()
    for data in (
        {"password": {"type": "bcrypt", "value": "hunter2"}},
        {"api_key": {"type": "string", "value": "9f8e7d6c5b4a3928"}},
        {"credentials": {"type": "object", "user": "svc", "secret": "x1"}},
    ):
        redacted = redactor.redact_value(data)
        [inner] = redacted.values()
        assert set(inner.values()) == {"[REDACTED:secret]"}, redacted
        assert json.loads(redactor.redact_text(json.dumps(data))) == redacted


def _fours_from_the_start(row: str) -> str:
    """What the card rule made of a row of 4-digit figures before a50710b: its figures four by four from the start,
    each four taken as a card if they pass the check, no other window."""
    figures = row.split()
    out = []
    for at in range(0, len(figures), 4):
        number = " ".join(figures[at : at + 4])
        card = len(figures[at : at + 4]) == 4 and _luhn(number.replace(" ", "")) and number[0] in "3456"
        out.append("[REDACTED:credit_card]" if card else number)
    return " ".join(out)


def test_a_card_is_not_looked_for_across_a_row_of_4_digit_figures():
    """Readings, years and stock counts written as a row of 4-digit figures: a Luhn-valid window of four of them that
    starts in the middle of the row is no card (a50710b took them: 419 of 2000 seeded rows of eight changed, 184
    before); four by four from the row's start they are taken as before (two cards one after the other stay found)."""
    rng = random.Random(5)
    redactor = Redactor()
    for size in (5, 6, 8, 12):
        for _ in range(150):
            row = " ".join(str(rng.randint(1000, 9999)) for _ in range(size))
            assert redactor.redact_text(row) == _fours_from_the_start(row), row
    for row in ("figures: 8808 6866 4578 9268 3281 5617 3289 2553", "Readings: 3000 4000 5000 6000 3100 4100 5100 6100 3200 4200"):
        assert redactor.redact_text(row) == row


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("charge 4539 1488 0343 6467 1500 EUR", "charge [REDACTED:credit_card] 1500 EUR"),
        ("pay 10 5555 5555 5555 4444 1500 EUR", "pay 10 [REDACTED:credit_card] 1500 EUR"),
        ("4111 1111 1111 1111 2026-11-25", "[REDACTED:credit_card] 2026-11-25"),
        ("card 3782 822463 10005 2026 7", "card [REDACTED:credit_card] 2026 7"),
    ],
)
def test_a_card_followed_by_one_4_digit_figure_is_still_found(text, expected):
    assert Redactor().redact_text(text) == expected


# --- names about a secret, enums under secret names, addresses in scripts written without spaces -------------------


@pytest.mark.parametrize(
    ("name", "strength"),
    [
        *((n, 1) for n in ("password_policy", "passwordPolicy", "password_min_length", "secret_arn", "credentials_path")),
        *((n, 1) for n in ("secret_key_ref", "password_reset_url", "password_expires_at", "secret_version_id")),
        *((n, 2) for n in ("password_history", "password_reset", "password_rotation", "password_manager", "secrets_manager")),
        *((n, 2) for n in ("secret_versions", "password_field", "pwd_hint", "credentials_file", "password_last_changed")),
        *((n, 2) for n in ("password_hash", "new_password", "password_confirmation", "aws_secret_access_key", "secret_value")),
        *((n, 2) for n in ("secret_string", "credentials_json", "db_password", "client_secret")),
    ],
)
def test_a_name_about_a_secret_is_weak_and_a_name_holding_one_stays_strong(name, strength):
    from ee_middleware.capture.redaction import _secret_name_strength

    assert _secret_name_strength(name) == strength


def test_an_object_describing_a_secret_is_kept_and_a_secret_inside_it_is_still_replaced():
    """``password_policy``, a Kubernetes ``secretKeyRef`` or an AWS ``secret_arn`` describe a secret: their objects are
    ordinary data (they were replaced whole), their single values are still replaced, and a secret named inside them
    still goes."""
    redactor = Redactor()
    data = {
        "password_policy": {"min_length": 12, "require_digit": True, "max_age_days": 90},
        "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "password"}}}],
        "secret_arn": "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod-db",
        "credentials_location": {"vault": "prod", "current_password": "hunter2-hunter2"},
    }
    expected = {
        "password_policy": {"min_length": 12, "require_digit": True, "max_age_days": 90},
        "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db-creds", "key": "password"}}}],
        "secret_arn": "[REDACTED:secret]",
        "credentials_location": {"vault": "prod", "current_password": "[REDACTED:secret]"},
    }
    assert redactor.redact_value(data) == expected
    assert json.loads(redactor.redact_text(json.dumps(data))) == expected


def test_the_allowed_values_of_a_schema_under_a_strong_secret_name_are_replaced():
    """An ``enum`` lists the values a parameter may take: under ``api_key`` they may be the real keys, as an example
    or a default may; the schema's structure stays."""
    redactor = Redactor()
    schema = {"api_key": {"type": "string", "description": "Which key", "enum": ["k-7f3a9c2e", "k-1b8d4e6f"]}}
    expected = {"api_key": {"type": "string", "description": "Which key", "enum": ["[REDACTED:secret]"] * 2}}
    assert redactor.redact_value(schema) == expected
    assert json.loads(redactor.redact_text(json.dumps(schema))) == expected
    plain = {"unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}  # not below a secret name: kept
    assert redactor.redact_value(plain) == plain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("联系 张伟@example.com 谢谢", "联系 [REDACTED:email] 谢谢"),
        ("メール：田中@example.jp です", "メール：[REDACTED:email] です"),  # noqa: RUF001 - the full-width colon is the point
        ("email: 김민수@example.kr", "email: [REDACTED:email]"),
        ("zhang张伟@a.io", "[REDACTED:email]"),
        ("用户邮箱是张伟@example.com。", "[REDACTED:email]。"),  # where the address starts is not known: the run goes
    ],
)
def test_an_address_whose_local_part_is_written_in_han_kana_or_hangul_is_redacted(text, expected):
    assert Redactor().redact_text(text) == expected
    assert Redactor().redact_value({"to": text}) == {"to": expected}


@pytest.mark.parametrize("text", ["中文@提及", "价格@100元", "见@home", "我@2x"])
def test_an_at_sign_after_han_that_is_no_address_is_left_alone(text):
    assert Redactor().redact_text(text) == text


@pytest.mark.parametrize(
    "data",
    [
        {"password_history": ["Tr0ub4dor&3", "Summer2024!"]},
        {"password_reset": {"new": "N3w-Pa55word!", "confirm": "N3w-Pa55word!"}},
        {"password_rotation": {"previous": "0ld-Pa55word!", "current": "Cur-Pa55word!"}},
        {"password_manager": {"entries": [{"site": "bank", "login": "alice", "value": "B4nk-Pa55word!"}]}},
        {"secret_versions": [{"version": 3, "value": "v3-s3cr3t-value"}]},
        {"password_field": {"selector": "#pw", "value": "hunter2-hunter2"}},
        {"password_hints": ["my dog's name", "born 1990"]},
    ],
)
def test_what_is_below_a_name_for_a_container_of_secrets_is_secret_whole(data):
    """A password's history, a reset's new/confirm pair, a rotation, a password manager's entries, a secret's versions,
    a form's password field and hints hold secrets under plain names: replaced whole (as before 21aba05), in values and
    in JSON text."""
    redactor = Redactor()
    [value] = data.values()
    flat = json.dumps(value)
    redacted = redactor.redact_value(data)
    assert not any(secret in json.dumps(redacted) for secret in _strings(value) if len(secret) > 6), redacted
    assert not any(secret in redactor.redact_text(json.dumps(data)) for secret in _strings(value) if len(secret) > 6), flat


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    "text",
    [
        # a store's spool segment in a capture error message: 40 characters of a path between "tmp39_" and "-633..."
        "Could not write to spool segment /tmp/tmp39_hiwwc/t/experience/spool/20261204T192310-633972326-vm-994-a6c9d43d.jsonl",
        "reports/q3_Data2024/summary/v2/final/Report1Q.pdf-old",
        "build-x7Kd9/artifacts/linux/amd64/Release2024v1.tar.gz",
    ],
)
def test_forty_characters_within_a_longer_file_name_are_no_aws_secret_key(text):
    assert Redactor().redact_text(text) == text


@pytest.mark.parametrize(
    "text",
    [
        f"aws_secret_access_key = {AWS_SECRET}",
        f"The key is {AWS_SECRET}.",
        f"key:{AWS_SECRET}, next",
        f'"SecretAccessKey": "{AWS_SECRET}"',
        f"({AWS_SECRET})",
        f"{AWS_SECRET}-",
    ],
)
def test_an_aws_secret_key_standing_alone_is_still_redacted(text):
    assert AWS_SECRET not in Redactor().redact_text(text)
