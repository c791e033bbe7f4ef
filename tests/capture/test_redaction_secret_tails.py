"""Unquoted secret values in ``key=value`` / ``key: value`` form are redacted whole (privacy sweep s23, finding 3).

Before, the value stopped at ``& , ; ) "`` or a space, so its tail was stored in plain text: ``DB_PASSWORD=Abcde&123xyz``
became ``DB_PASSWORD=[REDACTED:secret]&123xyz`` and ``Password: correct horse battery staple`` kept 3 of its 4 words. In
prose and environment lines a value now runs to the end of its whitespace-delimited token (``&`` splits values only in a
URL query or a form body, before the next ``name=``), and after ``password:`` (``passphrase``, ``passcode``, ``pwd``) a
passphrase of several words is taken up to the end of its line or clause, 8 words at most. Quotes and escapes that
close what the value is written in are never taken, so JSON text stays JSON."""

from __future__ import annotations

import json

import pytest

from ee_middleware.capture.redaction import Redactor

WHOLE = [
    ("DB_PASSWORD=Abcde&123xyz", "DB_PASSWORD=[REDACTED:secret]"),
    ("export STRIPE_SECRET_KEY=NfngA&723iAD", "export STRIPE_SECRET_KEY=[REDACTED:secret]"),
    ("pwd: GrMMp&749Zni", "pwd: [REDACTED:secret]"),
    ("password=JJjav&659bPF", "password=[REDACTED:secret]"),
    ("My password: Tr0ub4dor&3, my PIN is due", "My password: [REDACTED:secret], my PIN is due"),
    ("the new password: Tr0ub4dor&3", "the new password: [REDACTED:secret]"),
    ("pwd=Tr0ub4dor,x1", "pwd=[REDACTED:secret]"),
    ("pwd=Tr0ub;4dor", "pwd=[REDACTED:secret]"),
    ("pwd=Tr0ub)4dor", "pwd=[REDACTED:secret]"),
    ('pwd=Tr0ub"4dor', "pwd=[REDACTED:secret]"),
    ("api_key=ab12|cd34 rest", "api_key=[REDACTED:secret] rest"),
    ("REDIS_AUTH_TOKEN=ab&cd1234 REDIS_HOST=cache", "REDIS_AUTH_TOKEN=[REDACTED:secret] REDIS_HOST=cache"),
    # what closes the value is kept: a clause's comma, a call's bracket, a quote around the line
    ("login with password=hunter2, then", "login with password=[REDACTED:secret], then"),
    ("connect(password=hunter2)", "connect(password=[REDACTED:secret])"),
    ("connect(host='db', password=get(x))", "connect(host='db', password=[REDACTED:secret])"),
    ("{password: hunter2, user: bob}", "{password: [REDACTED:secret], user: bob}"),
    ("{password:hunter2,user:bob}", "{password:[REDACTED:secret],user:bob}"),
    ("Server=db;Password=p@ss;word;Database=shop", "Server=db;Password=[REDACTED:secret];Database=shop"),
    ("curl -H 'x-api-key: abc123def456' https://x", "curl -H 'x-api-key: [REDACTED:secret]' https://x"),
    ("`DB_PASSWORD=Abcde&123xyz`", "`DB_PASSWORD=[REDACTED:secret]`"),
    # a URL query or a form body: & starts the next parameter
    ("https://x.io/v1?user=ops&password=Hunter2&x&remember=1#top", "https://x.io/v1?user=ops&password=[REDACTED:secret]&x&remember=1#top"),
    ("password=Tr0ub4dor&3&user=bob", "password=[REDACTED:secret]&user=bob"),
    ("https://x.io/cb?access_token=ab12cd34&amp;state=xyz", "https://x.io/cb?access_token=[REDACTED:secret]&amp;state=xyz"),
]

PASSPHRASES = [
    ("Password: correct horse battery staple", "Password: [REDACTED:secret]"),
    ("vault passphrase: correct horse battery staple\nnext: line", "vault passphrase: [REDACTED:secret]\nnext: line"),
    ("Password: correct horse battery staple. Then open settings.", "Password: [REDACTED:secret]. Then open settings."),
    ("password: hunter two, user: bob", "password: [REDACTED:secret], user: bob"),
    ("password: hunter two user: bob", "password: [REDACTED:secret] user: bob"),
    ("db_password: my secret phrase", "db_password: [REDACTED:secret]"),
    ("Passcode: blue 42 moon (new)", "Passcode: [REDACTED:secret]"),
    ("Password: key lime pie 42", "Password: [REDACTED:secret]"),  # (its first word an auth scheme's)
    # bounded: 8 words at most
    ("Password: a1 b2 c3 d4 e5 f6 g7 h8 i9 j10 k11", "Password: [REDACTED:secret] i9 j10 k11"),
    # after '=' a space ends the value, as in a shell
    ("PASSWORD=abc123 make deploy", "PASSWORD=[REDACTED:secret] make deploy"),
    # a clause ends the passphrase
    ("Password: incorrect, try again", "Password: [REDACTED:secret], try again"),
]


@pytest.mark.parametrize(("text", "expected"), WHOLE + PASSPHRASES)
def test_an_unquoted_secret_value_is_redacted_whole(text, expected):
    assert Redactor().redact_text(text) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("DB_PASSWORD=Abcde&123xyz", "Abcde&123xyz"),
        ("Password: correct horse battery staple", "correct horse battery staple"),
        ("login with password=hunter2, then", "hunter2"),
        ("connect(password=hunter2)", "hunter2"),
    ],
)
def test_the_pseudonym_is_that_of_the_whole_value(text, value):
    redactor = Redactor(salt=b"store")
    placeholder = redactor.redact_value({"password": value})["password"]
    assert placeholder in redactor.redact_text(text)


@pytest.mark.parametrize(
    "data",
    [
        {"env": ["DB_PASSWORD=Abcde&123xyz", "X=1"]},
        {"note": "Password: correct horse battery staple", "ok": True},
        {"cmd": "export API_TOKEN=ab&cd12\nrun"},
        {"a": "pwd=abc\\def mail bob@x.io"},
        {"url": "https://x.io/?token=ab12&b=2"},
    ],
)
def test_json_text_holding_such_lines_stays_json_and_holds_no_tail(data):
    redactor = Redactor()
    for dump in (json.dumps, lambda d: json.dumps(d, indent=2), lambda d: json.dumps(json.dumps(d))):
        redacted = redactor.redact_text(dump(data))
        loaded = json.loads(redacted)
        text = json.dumps(loaded)
        for tail in ("&123xyz", "horse", "battery", "&cd12", "abc"):
            assert tail not in text, (tail, redacted)
    assert "&b=2" in redactor.redact_text(json.dumps(data)) if "url" in data else True


def test_repr_text_keeps_its_quotes():
    text = "{'env': 'DB_PASSWORD=Abcde&123xyz', 'x': 'pwd: hunter two'}"
    assert Redactor().redact_text(text) == "{'env': 'DB_PASSWORD=[REDACTED:secret]', 'x': 'pwd: [REDACTED:secret]'}"


ORDINARY = [
    "a=1&b=2&c=3",
    "https://shop.example.com/orders?page=2&sort=desc",
    "max_tokens=256, token count: 1532, primary_key: order_id",
    "The password is incorrect. Reset your password from the account page.",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_assignments_are_left_alone(text):
    assert Redactor().redact_text(text) == text
