"""Scrub secrets and personal data from text and JSON-like values before anything is written.

On by default. :data:`KINDS` lists the built-in kinds and whether each is on by default; switch
one off (or an off-by-default one on) with ``RedactionRules(kinds={"phone": False})`` — in capture,
``record_experience(..., redaction_kinds={"phone": False})`` or a ``[capture.redaction_kinds]``
TOML table. Users add regular expressions (``patterns``, ``{kind: regex}``) or a function
``str -> str`` (``custom``).

A match becomes a placeholder ``[REDACTED:<kind>]``, or with a salt (capture keeps one per store)
a consistent pseudonym ``[REDACTED:<kind>:<tag>]``: ``tag`` is the first 8 hex digits of
HMAC-SHA256(salt, value), so the same value gets the same placeholder everywhere in a store (the
same e-mail in a user turn, a tool argument and a tool result stays recognisably the same), while
different stores, or no salt, give unrelated tags. The value hashed is its :func:`canonical_form` (one tag for every
spelling of an e-mail address, card, IBAN, SSN or phone number), or, for a store recorded before pseudonyms were
canonical, the value as written (:attr:`RedactionRules.canonical_pseudonyms`, kept in the store's ``redaction.json``).

:meth:`Redactor.redact_value` walks JSON-like data: values under secret-named keys (``password``,
``db_password``, ``apiKey``, ``client_secret``, ``pin``, ...) are replaced whole (but a number, a boolean, null or an
ISO date/time under a name for a secret's metadata, ``password_version``, ``password_changed_at``,
``secret_rotation_days``, is ordinary data; any other value there is replaced); an object or a list under a strong
secret name (``password``, ``client_secret``, ``api_key``, ``access_token``, ``authorization``) has every string and
number in it replaced, its keys and shape kept (a JSON Schema there, a tool's ``password`` parameter, is no secret:
only its example, default and constant values are), while one under a weak name (``token``, ``pin``,
``boarding_pass``, ``cookie``) is ordinary data; keys are scanned as any text is, and a string that holds JSON (a tool returning ``'{"password": ...}'`` as text) is parsed,
redacted as data and written back in the same layout (its ``\\uXXXX``, ``\\/`` and ``\\n`` escapes hide nothing from the
rules). An integer a built-in kind takes whole (a card number sent as ``4111111111111111``) becomes its placeholder,
a string, as any redacted value is; a float is never taken by a built-in kind; user patterns run over any number's JSON
text. :meth:`Redactor.redact_text` works on any text, JSON text
included: it never consumes a quote or a backslash escape, and a bare value after a quoted secret name
(``"pin": 4821``) becomes a string, so valid JSON stays valid.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from re import Pattern
from typing import Any

from ee_middleware.messages import dumps, to_jsonable

logger = logging.getLogger("ee_middleware.capture")

PLACEHOLDER = re.compile(r"\[REDACTED:[A-Za-z0-9_.-]+(?::[0-9a-f]{8})?\]")
"""What a placeholder looks like (rules never match inside one, so redacting twice changes nothing)."""

SALT_FILE = "redaction.key"
"""The per-store pseudonym salt, beside the store's own files (owner-only; never exported)."""

# --- validators: cut false positives on numbers -------------------------------------------------


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
"""A digit doubled, its two digits added (Luhn)."""


def _luhn(digits: str) -> bool:
    return (sum(map(int, digits[-1::-2])) + sum(_DOUBLED[int(d)] for d in digits[-2::-2])) % 10 == 0


def _is_card(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and digits[0] in "3456" and _luhn(digits)


def _is_iban(text: str) -> bool:
    compact = text.replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _is_phone(text: str) -> bool:
    return 8 <= sum(c.isdigit() for c in text) <= 15


def _is_basic_credentials(text: str) -> bool:
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return ":" in decoded and decoded.isprintable()


def _is_token(text: str) -> bool:
    """Random-looking: has a digit, or mixes upper and lower case over 20+ characters."""
    return any(c.isdigit() for c in text) or (len(text) >= 20 and any(c.isupper() for c in text) and any(c.islower() for c in text))


def _is_aws_secret(text: str) -> bool:
    return any(c.islower() for c in text) and any(c.isupper() for c in text) and any(c.isdigit() for c in text)


_PROSE_STOP = {"not", "the", "a", "an", "too", "incorrect", "wrong", "invalid", "expired", "required", "set", "missing", "empty"}
_PROSE_STOP |= {"correct", "changed", "reset", "updated", "weak", "strong", "valid", "case", "different", "same", "ok", "fine"}


def _is_prose_password(text: str) -> bool:
    return text.strip("'\"`").lower() not in _PROSE_STOP


# --- secret-named keys --------------------------------------------------------------------------

_STRONG_WORDS = {"password", "passwd", "passphrase", "passcode", "pwd", "pw", "secret", "secrets", "credential", "credentials"}
"""Words that make a name a strong secret name wherever they are in it (``db_password``, ``client_secret``), unless a
word of :data:`_ABOUT_A_SECRET` follows them."""
_ABOUT_A_SECRET = {
    "policy", "policies", "rule", "rules", "requirement", "requirements", "complexity", "strength", "length", "len",
    "min", "max", "minimum", "maximum", "expiry", "expires", "expiration", "expired", "age", "label", "labels",
    "prompt", "required", "enabled", "disabled", "type", "types", "kind", "format",
    "pattern", "regex", "count", "attempts", "retries", "arn", "ref", "refs", "name", "names", "id", "ids", "schema",
    "metadata", "status", "path", "url", "uri", "location",
}  # fmt: skip
"""Words that, after a strong word, make a name describe a secret rather than hold it (``password_policy``,
``secret_arn``, ``credentials_path``): a weak name, whose single values are still replaced (those of a secret's
metadata aside: :func:`_names_secret_metadata`) while an object or a list below it is ordinary data (the secret names
and built-in rules inside it still apply). Words that name a container of secrets or say where one is typed or hinted at
(``password_history``, ``password_reset``, ``secret_versions``, ``password_manager``, ``password_field``,
``password_hint``) are not among them: what is below those is secret, whole."""
_METADATA_WORD = (
    r"(?:version|length|len|changed|updated|created|rotated|rotation|expires|expiry|expiration|expired|age|count|policy"
    r"|strength|attempts|retries|last_(?:changed|change|updated|set|used|rotated|rotation|reset|modified))"
)
_METADATA_TAIL = re.compile(
    rf"(?:key_)?(?:(?:min|max|minimum|maximum|failed)_)?{_METADATA_WORD}(?:_(?:(?:min|max|minimum|maximum|failed)_)?{_METADATA_WORD})*"
    r"(?:_(?:at|on|in|days|hours|minutes|seconds|secs|ms|date|time|timestamp|ts|utc)){0,2}"
)
"""The words after a strong word (``_``-joined) that make a name one for a secret's metadata (``password_version``,
``password_changed_at``, ``secret_rotation_days``, ``pwdLastSet``, ``client_secret_expires_at``): each word a
metadata word (``last`` only before what was last done to it), then at most two units. A name with any other word
there (``password_hint``, ``password_hash``, ``password_last``, ``password_set``, ``secret_key``) is not one."""
_ISO_TIME = re.compile(r"\d{4}-[01]\d-[0-3]\d(?:[T ][0-2]\d:[0-5]\d(?::[0-6]\d(?:[.,]\d{1,9})?)?(?:Z|[+-][0-2]\d(?::?[0-5]\d)?)?)?")
"""An ISO 8601 date, or date and time (``2026-01-01``, ``2026-01-01T08:30:00.123+02:00``, ``2026-01-01 08:30:00``)."""
_STRONG_LAST_WORDS = {"authorization", "apikey", "privatekey", "cvv", "cvc", "ssn"}
_WEAK_LAST_WORDS = {"token", "cookie", "pass", "pin", "dsn", "otp", "totp"}
"""Last words that name a secret when they hold one value (a PIN, a token), but also ordinary objects: a boarding
pass, a currency token, a map pin, a cookie's settings."""
_STRONG_LAST_PAIRS = {
    ("api", "key"),
    ("access", "key"),
    ("private", "key"),
    ("secret", "key"),
    ("signing", "key"),
    ("encryption", "key"),
    ("master", "key"),
    ("client", "key"),
    ("security", "answer"),
    ("security", "answers"),
    ("security", "code"),
    ("verification", "code"),
    ("otp", "code"),
    ("totp", "code"),
}
_WEAK_LAST_PAIRS = {("session", "id")}
_TOKEN_KINDS = {"access", "refresh", "auth", "bearer", "session", "api", "oauth", "oauth2", "id", "csrf", "xsrf", "jwt", "sso", "security"}
"""The words before ``token`` that make it a strong secret name (``access_token``, ``x-auth-token``)."""
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def is_secret_name(name: str) -> bool:
    """Whether a key or variable name says its value is a secret (``DB_PASSWORD``, ``apiKey``,
    ``client_secret``, ``x-auth-token``; not ``max_tokens``, ``primary_key`` or ``token_count``)."""
    return _secret_name_strength(name) > 0


@functools.lru_cache(maxsize=4096)
def _secret_name_strength(name: str) -> int:
    """2 for a strong secret name (``password``, ``client_secret``, ``api_key``, ``access_token``, ``authorization``:
    whatever is below it is secret, an object or a list whole), 1 for a weak one (``token``, ``pin``, ``boarding_pass``,
    ``cookie``: a single value below it is secret, an object or a list is ordinary data), 0 for any other name."""
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    if not words or len(name) > 64:
        return 0
    last, pair = words[-1], tuple(words[-2:])
    strong_at = [at for at, word in enumerate(words) if word in _STRONG_WORDS]
    if strong_at and _ABOUT_A_SECRET.intersection(words[strong_at[-1] + 1 :]):
        return 1  # about a secret (its policy, its ARN, where it is kept), not the secret itself
    if (
        strong_at
        or last in _STRONG_LAST_WORDS
        or pair in _STRONG_LAST_PAIRS
        or words[-3:] == ["one", "time", "code"]  # (one_time_code, oneTimeCode; not a media time_code: 01:00:00:00)
        or (last == "token" and len(words) > 1 and words[-2] in _TOKEN_KINDS)
    ):
        return 2
    return 1 if last in _WEAK_LAST_WORDS or pair in _WEAK_LAST_PAIRS else 0


@functools.lru_cache(maxsize=4096)
def _names_secret_metadata(name: str) -> bool:
    """Whether a secret name (:func:`_secret_name_strength` above 0) is one for a secret's metadata: a strong word
    followed only by metadata words (:data:`_METADATA_TAIL`: ``password_version``, ``password_changed_at``,
    ``secret_rotation_days``). A number, a boolean, null or an ISO date/time below one is ordinary data
    (:func:`_is_metadata_value`); any other value there is still replaced."""
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    strong_at = [at for at, word in enumerate(words) if word in _STRONG_WORDS]
    return bool(strong_at) and _METADATA_TAIL.fullmatch("_".join(words[strong_at[-1] + 1 :])) is not None


def _is_metadata_value(value: Any) -> bool:
    """Whether ``value`` is one a secret's metadata is kept as: a number, a boolean, null or an ISO date/time string.
    Deliberately nothing else: a false negative leaks a secret, and a string under such a name (``password_policy:
    "min 8 chars"``, ``password_version: "v3-hunter2"``) may be the secret itself, put under the wrong name or a name
    that says more than this list knows. A number under a metadata name is a counter, a length, an age or a time (a
    numeric PIN or password goes under its own name: ``pin``, ``password``, ``password_last``, none a metadata name),
    and a date is when something happened to the secret."""
    return value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and _ISO_TIME.fullmatch(value) is not None)


# --- the built-in rules -------------------------------------------------------------------------

_LONG_NUMBER = (re.compile(r"\d(?:[ ().+-]{0,2}\d){6,}"),)
"""Cards, IBANs, SSNs and phone numbers have 7 digits or more, at most two separators apart."""


def _having(pattern: str) -> tuple[Pattern[str], ...]:
    return (re.compile(pattern),)


@dataclass(frozen=True)
class Rule:
    """One kind of secret: a regex, the group that is the secret itself, an optional check."""

    kind: str
    pattern: Pattern[str]
    prefilter: tuple[Pattern[str], ...] = ()
    """Cheap searches in the lower-cased text that must all find something for the rule to run."""
    group: str | int = 0
    check: Callable[[str], bool] | None = None
    """A further test of the matched secret (Luhn, IBAN checksum, ...); False leaves it alone."""
    finder: Callable[[str], Iterator[re.Match[str] | _Found]] | None = None
    """Finds the matches instead of ``pattern.finditer`` (where a plain scan would be slow, or a match needs more than
    a regex can say)."""
    needs: tuple[str, ...] = ()
    """Strings one of which the lower-cased text holds wherever the prefilter finds something:
    looked for first (``in`` is far faster than a regex scan), the prefilter runs only if one is there.
    A last prefilter made of plain words (``"pass|pwd"``) needs those words without saying so."""
    digits: int = 0
    """Digits the text holds at least wherever the prefilter finds something (tested before it)."""

    def __post_init__(self) -> None:
        if not self.needs and self.prefilter and _WORDS.fullmatch(self.prefilter[-1].pattern):
            object.__setattr__(self, "needs", tuple(self.prefilter[-1].pattern.split("|")))


_WORDS = re.compile(r"[^\\^$.|?*+()\[\]{}]+(?:\|[^\\^$.|?*+()\[\]{}]+)*")
"""A regex that is only words or other plain strings, ``|``-separated."""


# (every strong or weak secret name holds one of these, lower-cased: a JSON text's members are found by them)
_NAME_WORD_LIST = (
    *("pass", "pw", "secret", "token", "key", "auth", "cookie", "credential", "pin", "cvv", "cvc", "ssn", "dsn", "session"),
    *("otp", "securit", "verification", "time_code", "timecode", "time-code"),
)
_NAME_WORDS = "(?:" + "|".join(_NAME_WORD_LIST) + ")"
_NAME_WORD = re.compile(_NAME_WORDS)  # searched in lower-cased text
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_NAME_RUN = re.compile(r"[A-Za-z0-9_.-]*+")


@dataclass(frozen=True, slots=True)
class _Found:
    """A secret a rule's finder placed itself: its span, and the quote its placeholder is written in (a bare value
    after a quoted name, ``"pin": 4821``, becomes a string, so that JSON stays JSON)."""

    start: int
    end: int
    quote: str = ""


def _assignments(text: str, names: Pattern[str] = _NAME_WORD, strength_of: Callable[[str], int] | None = None) -> Iterator[_Found]:
    """The values of ``name = value`` / ``"name": value`` assignments to secret names (the ``secret`` rule), looked for
    only around the words secret names are made of (scanning every word of a long text with the full rule is ten times
    slower). A value written as an object or a list gives each string and number inside it after a strong secret name,
    as :meth:`Redactor.redact_value` replaces every one there (:func:`_structure`); after a weak one (``token``,
    ``pin``), none: it is read as any text is, its own secret names one by one."""
    builtin = strength_of is None  # the built-in secret names (``names`` and ``strength_of`` give RedactionRules.keys)
    strength_of = strength_of or _secret_name_strength
    last = covered = -1
    budget = 4 * len(text) + 10_000  # characters read as objects or lists, at most (where unclosed ones nest)
    run_end = run_start = -1  # the run of name characters the last hit was in, and where its name starts
    for hit in names.finditer(_lower(text)):
        if hit.start() < run_end:  # (another hit in the same run: walking back again is quadratic in a long run)
            start = run_start
        else:
            start = hit.start()
            while start > 0 and text[start - 1] in _NAME_CHARS:
                start -= 1
            while start < hit.start() and not (text[start].isalpha() or text[start] == "_"):
                start += 1
            run_start, run_end = start, _NAME_RUN.match(text, hit.start()).end()
        if start == last or start < covered:  # (inside a value given, or an object or list whose values are all given)
            continue
        last = start
        match = _ASSIGNMENT.match(text, start)
        if match is None:
            continue
        if not (strength := strength_of(match.group("name"))):
            if builtin and (credential := _header_credential(text, match)) is not None:
                yield credential
            continue
        value = match.group("value")
        quote = match.group("quote") if match.group("quote").endswith(("'", '"')) else ""
        read = None
        if value[0] in "{[" and budget > 0:
            read = _structure(text, match.start("value"), quote, min(budget, _STRUCTURE_CHARS))
            budget -= read.end - match.start("value")
        if read is not None and read.values is not None:  # an object or a list
            if strength == 2 and not read.schema:
                yield from read.values
                covered = read.end if read.values else -1
            elif strength == 2:  # a JSON Schema: its examples and defaults (its own secret names are looked at one by one)
                yield from read.schema_values
        elif value[0] in "\"'`\\":
            start, end = _secret_span(match, "value")
            if not (_ISO_TIME.fullmatch(text, start, end) and _names_secret_metadata(match.group("name"))):
                yield _Found(start, end)
        elif (_JSON_NUMBER.fullmatch(value) or _ISO_TIME.fullmatch(value)) and _names_secret_metadata(match.group("name")):
            continue  # a secret's metadata as a number or a date is kept, as :meth:`Redactor.redact_value` keeps it
        elif value[0] in "{[":  # a bracket that opens no JSON-like value: up to a space, a quote or a comma
            yield _Found(*match.span("value"))
        elif (credential := _credential_after_scheme(text, match)) is not None:  # Authorization: Token 9f8e...
            if _DOCS_PLACEHOLDER.fullmatch(text, credential.start, credential.end) is None:  # (Bearer <token>: kept)
                yield credential
        elif match.group("quote"):  # a bare value after a quoted name (JSON, a repr): up to a space, a comma or a bracket
            yield _Found(*match.span("value"), quote)
        else:  # a word in prose or an environment line: its whole token, or a passphrase (:func:`_bare_value_end`)
            covered = _bare_value_end(text, match)
            yield _Found(match.start("value"), covered)


_AUTH_SCHEMES = frozenset(
    {
        *("token", "bearer", "basic", "digest", "negotiate", "ntlm", "kerberos", "apikey", "api-key", "key", "aws"),
        *("aws4-hmac-sha256", "hmac-sha256", "eg1-hmac-sha256", "hoba", "mutual", "scram-sha-1", "scram-sha-256", "vapid"),
        *("oauth", "dpop", "gnap", "privatetoken", "concealed", "sharedkey", "sharedkeylite", "ssws", "hawk", "mac"),
        *("signature", "jwt", "googlelogin", "splunk", "sso", "bot", "client-id"),
    }
)
"""HTTP authentication scheme words (IANA's registry and common vendor ones), lower-cased: in ``Authorization: Token
9f8e...`` the credential is what follows the word, not the word."""
_HEADER_SCHEMES = frozenset(
    {"aws4-hmac-sha256", "scram-sha-256", "scram-sha-1", "privatetoken", "negotiate", "sharedkey", "api-key", "apikey"}
    | {"digest", "token", "oauth", "vapid", "ntlm", "hoba", "dpop", "gnap", "ssws", "hawk"}
)
"""The scheme words that mark a credential after a header name that is no secret name (``X-Custom-Auth: Token
9f8e...``), when it looks like one (:func:`_header_credential`); Bearer and Basic have rules of their own."""
_SCHEME = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9._~+/-]{0,39})[ \t]+")
_DOCS_PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z _.-]{0,39}>|\$\{?[A-Z_][A-Z0-9_]*\}?|\{\{\s*[A-Za-z_][\w.-]*\s*\}\}|base64\([\w:.-]*\)")
"""What documentation writes for a credential after an auth scheme (``Bearer <token>``, ``Bearer $TOKEN``,
``${API_TOKEN}``, ``{{token}}``, ``Basic base64(user:pass)``): no credential, kept."""
_UNKNOWN_SCHEME = re.compile(r"[A-Za-z]{2,24}|[A-Za-z][A-Za-z0-9]{0,15}(?:-[A-Za-z0-9]{1,15}){1,4}")
"""What an auth scheme not in :data:`_AUTH_SCHEMES` looks like after ``Authorization:`` (``Acme-Signed``,
``EG2-HMAC-SHA512``): letters, or parts joined by hyphens; a credential has digits and no hyphenated words."""
_HEX_PART = re.compile(r"[0-9A-Fa-f]+")


def _token_shaped(word: str) -> bool:
    """Whether ``word``, shaped as an unknown auth scheme (:data:`_UNKNOWN_SCHEME`), is rather a credential: 16 or more
    characters with a digit (``f00dbabe12345678``), or hex parts with a digit (a UUID, ``ab12-cd34``)."""
    if not any(c.isdigit() for c in word):
        return False
    return len(word) >= 16 or all(_HEX_PART.fullmatch(part) for part in word.split("-"))


_PARAM = r"""[A-Za-z_][\w.-]*=(?:"(?:[^"\\\n]|\\.)*"|\\"(?:[^"\\]|\\[^"])*\\"|[^\s,"'`\\]+)"""
_CREDENTIAL = re.compile(rf"""(?:{_PARAM}|[^\s,"'`\\]+)(?:,[ \t]*{_PARAM})*""")
"""A credential after a scheme word: a token (``9f8e...``, base64), or ``name=value`` parameters joined by commas (Digest's
``username="Mufasa", response="6629..."``, AWS's ``Credential=..., SignedHeaders=..., Signature=...``), their quotes
written escaped too (in JSON text), up to a space, a quote or a backslash outside them."""
_OPENERS = {")": "(", "]": "[", "}": "{"}


def _trimmed(text: str, start: int, end: int) -> int:
    """``end`` of the value ``text[start:end]`` without the punctuation that ends a clause or closes what the value is
    written in (``,`` ``;`` ``&`` ``|``, and a bracket the value does not open): ``f(password=abc)``, ``pwd=abc, then``."""
    while end > start + 1 and (char := text[end - 1]) in ",;&|)]}":
        if char in _OPENERS and text.count(_OPENERS[char], start, end) >= text.count(char, start, end):
            break
        end -= 1
    return end


def _last_name_word(name: str) -> str:
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    return words[-1] if words else ""


def _credential_after_scheme(text: str, match: re.Match[str]) -> _Found | None:
    """The credential after an auth scheme word that starts the value of secret name ``match`` (``Authorization: Token
    9f8e...``, ``Proxy-Authorization: Negotiate YIIC...``, ``Authorization: Digest username="x", response="..."``), the
    scheme word kept; ``None`` where the value starts with no scheme word followed by a credential on its line. Any word
    in :data:`_AUTH_SCHEMES` counts; after an ``...Authorization`` name, any word shaped as one (:data:`_UNKNOWN_SCHEME`)
    too, but those that say something about the header (``required``, ``missing``). Not after ``password:`` and its
    kin (:data:`_PASSPHRASE_NAMES`): there the value is a passphrase, whose first word may be a scheme's (``key lime``)."""
    last_word = _last_name_word(match.group("name"))
    scheme = None if last_word in _PASSPHRASE_NAMES else _SCHEME.match(text, match.start("value"))
    if scheme is None:  # (after password: a passphrase, whose first word may be one: "key lime pie 42")
        return None
    word = scheme.group("scheme")
    if word.lower() not in _AUTH_SCHEMES and not (
        _UNKNOWN_SCHEME.fullmatch(word) and not _token_shaped(word) and word.lower() not in _PROSE_STOP and last_word == "authorization"
    ):
        return None
    credential = _CREDENTIAL.match(text, scheme.end())
    if credential is None:
        return None
    return _Found(scheme.end(), _trimmed(text, scheme.end(), credential.end()))


_BARE_RUN = re.compile(r"""[^\s"'`\\&,;#]+""")
"""What a bare value's token holds up to a character :func:`_token_end` looks at."""
_NEXT_PARAMETER = re.compile(r"(?:amp;)?[A-Za-z_][\w.\[\]%-]*=")
"""After an ``&``: the next parameter of a URL query or a form body (``&user=bob``, ``&amp;state=x``)."""
_NEXT_FIELD = re.compile(r"[ \t]*[A-Za-z_][\w.-]*[ \t]*[:=]")
"""After a ``,`` or ``;`` (or a space, in a passphrase): the next field (``,user: bob``, ``;Database=shop``)."""
_ESCAPED = frozenset("bfnrtux")


def _token_end(text: str, pos: int, in_query: bool) -> int:
    """Where the whitespace-delimited token of a bare value starting at ``pos`` ends: a space ends it, and so do a
    quote or a backtick that close what it is written in (one followed by no letter or digit: ``'pwd=abc'``,
    ``"DB_PASSWORD=abc",``), a backslash escape (``\\n``, ``\\"``: JSON text), a ``,`` or ``;`` before the next
    field (``;Database=shop``), and an ``&`` before the next parameter (``&user=bob``), or any ``&`` or ``#`` in a URL
    query (``in_query``). Any other character is the value's (``Abcde&123xyz``, ``p@ss;word``, ``ab"cd``)."""
    end = len(text)
    while True:
        run = _BARE_RUN.match(text, pos)
        if run is not None:
            pos = run.end()
        if pos >= end:
            return end
        char, after = text[pos], text[pos + 1 : pos + 2]
        if char.isspace():
            return pos
        if char in "\"'`":
            if not after.isalnum():
                return pos
        elif char == "\\":
            if not after.isalnum() or after in _ESCAPED:
                return pos
        elif char in "&#":
            if in_query or (char == "&" and _NEXT_PARAMETER.match(text, pos + 1)):
                return pos
        elif _NEXT_FIELD.match(text, pos + 1):  # , or ;
            return pos
        pos += 1


_PASSPHRASE_NAMES = frozenset({"password", "passwd", "passphrase", "passcode", "pwd", "pw"})
"""Last words of a name after which ``:`` starts a passphrase that may have several words (``Password: correct horse
battery staple``; YAML's ``db_password: my secret phrase``)."""
_PASSPHRASE_WORDS = 8
_PASSPHRASE_CHARS = 128
_NEXT_WORD = re.compile(r"[ \t]+")
_CLAUSE_END = frozenset(".!?:")


_DIGIT_GROUPS = re.compile(r"(?:[ -]\d{1,8})+(?![\w-])")
"""The further groups of a number written in groups after its first (`` 45 6789``, ``-213``)."""


def _bare_value_end(text: str, match: re.Match[str]) -> int:
    """Where the unquoted value of secret name ``match`` (written unquoted: prose, an environment line, a URL) ends: at
    the end of its token (:func:`_token_end`), less the punctuation that closes a clause or a bracket it does not open
    (:func:`_trimmed`: ``password=hunter2, then``, ``connect(password=hunter2)``). After ``password:`` (a name of
    :data:`_PASSPHRASE_NAMES` and a colon) the value is a passphrase: the next words on its line are taken too, up to
    a clause's end (``,`` ``.`` ``;``), the next field (``user: bob``), a quote that closes the line, or 8 words and 128
    characters (``Password: correct horse battery staple``; ``Password: incorrect, try again`` takes its first word, as
    any value is taken where a name holding a secret is followed by a word)."""
    start, name_start = match.start("value"), match.start("name")
    in_query = name_start > 0 and text[name_start - 1] in "?&"
    end = _token_end(text, start, in_query)
    last = _trimmed(text, start, end)
    if not in_query and last > start and text[start:last].isascii() and text[start:last].isdigit():
        groups = _DIGIT_GROUPS.match(text, last)  # (a number in groups: "SSN: 123 45 6789", "otp: 884 213")
        if groups is not None:
            return groups.end()
    if (
        in_query
        or last != end
        or text[last - 1] in _CLAUSE_END
        or ":" not in text[match.end("name") : start]
        or _last_name_word(match.group("name")) not in _PASSPHRASE_NAMES
    ):
        return last
    for _ in range(_PASSPHRASE_WORDS - 1):
        gap = _NEXT_WORD.match(text, end)
        if gap is None or gap.end() >= len(text):
            break
        word = gap.end()
        if text[word] in "\"'`\\#" or text.startswith("[REDACTED:", word) or _NEXT_FIELD.match(text, word):
            break  # (a "#" after a space starts a comment: "password: hunter2 # rotate monthly")
        word_end = _token_end(text, word, False)
        if word_end == word or word_end - start > _PASSPHRASE_CHARS:
            break
        trimmed = _trimmed(text, start, word_end)
        while trimmed > word and text[trimmed - 1] in _CLAUSE_END:
            trimmed -= 1
        if trimmed > word:  # (a word of punctuation alone, "&" or "-", ends it)
            end = trimmed
        if trimmed != word_end:
            break
    else:  # 8 words of letters and more on the line: prose, no passphrase ("Password: must be at least 8 characters ...")
        gap = _NEXT_WORD.match(text, end)
        more = gap is not None and gap.end() < len(text) and text[gap.end()].isalnum()
        if more and sum(word.isalpha() for word in text[start:end].split()) >= _PASSPHRASE_WORDS - 2:
            return last
    return end


def _header_credential(text: str, match: re.Match[str]) -> _Found | None:
    """The credential in a ``Name: Scheme credential`` line whose name is no secret name but holds a word secret names
    are made of (``X-Custom-Auth: Token 9f8e...``, ``X-Session: Digest ...``; :func:`_assignments` reads it there): after
    a scheme word of :data:`_HEADER_SCHEMES`, where it looks like a credential (8 characters or more, with a digit or
    mixed case over 20: :func:`_is_token`), so ``X-Auth-Mode: Token exchange`` is left alone."""
    if match.group("quote") or ":" not in text[match.end("name") : match.start("value")]:
        return None
    scheme = _SCHEME.match(text, match.start("value"))
    if scheme is None or scheme.group("scheme").lower() not in _HEADER_SCHEMES:
        return None
    credential = _CREDENTIAL.match(text, scheme.end())
    if credential is None:
        return None
    end = _trimmed(text, scheme.end(), credential.end())
    return _Found(scheme.end(), end) if end - scheme.end() >= 8 and _is_token(text[scheme.end() : end]) else None


_VALUE = r"""(?P<value>\\"(?:[^"\\]|\\[^"])*\\"|"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s"'`,;&|}\])\\]+)"""

_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]{0,63}+)(?P<quote>\\?[\"']?)\s*[:=]\s*(?=" + _VALUE + ")")

_SPACE = r"(?:\s|\\[nrt])*+"
"""White space in JSON text, also written inside a JSON string (``\\n``)."""

_TOKEN = re.compile(
    _SPACE + r"""(?:(?P<open>[\[{])|(?P<close>[\]}])|[,:]|(?P<string>\\"(?:[^"\\]|\\[^"])*+\\"|"(?:[^"\\\n]|\\.)*+"|'[^'\n]*+')"""
    r"""|(?P<bare>[^\s,:\[\]{}"'\\]++))"""
)
"""One token of a JSON-like value written as text (JSON, JSON inside a JSON string, a Python repr)."""

_KEY_END = re.compile(_SPACE + ":")

_STRUCTURE_CHARS = 1_000_000
"""How far a value written as an object or a list is read at most."""


@dataclass(slots=True)
class _Read:
    """What :func:`_structure` read."""

    values: list[_Found] | None
    """Each string (its content) and bare value (a number) in the object or list, quoted keys left out; ``None`` if it
    is not JSON-like."""
    schema: bool
    """Whether it is a JSON Schema (:func:`_looks_like_schema`)."""
    schema_values: list[_Found]
    """Those of ``values`` that are example, default or constant values (:data:`_SCHEMA_VALUES`) at any depth."""
    end: int
    """Where it ends (or where the text, the limit or what reads as JSON-like data end: a value cut off)."""


def _structure(text: str, pos: int, quote: str, limit: int) -> _Read:
    """The object or list that starts at ``pos``: its values (a bare one written in ``quote``), whether it is a JSON
    Schema (a tool's ``password`` parameter described in a prompt) and which values a schema there gives as examples,
    a default or a constant, as :meth:`Redactor.redact_value` reads one (values ``None`` if it is not JSON-like: two
    values with no comma or colon between them, as words in prose)."""
    found: list[_Found] = []
    schema_values: list[_Found] = []
    keys: set[str] = set()
    types: set[str] = set()
    member = None
    # for each object or list open: its member being read, and whether its keys are names (a schema's properties)
    members: list[str | None] = [None]
    names: list[bool] = [True]
    inside = 0  # the depth of the example, default or constant value being read (0: none)
    depth, end, first, after_value = 0, min(len(text), pos + limit), text[pos], False
    while (token := _TOKEN.match(text, pos, end)) is not None:
        pos = token.end()
        kind = token.lastgroup
        if kind is None:  # a comma or a colon
            after_value = False
            continue
        if after_value and kind != "close":
            return _Read(None, False, [], pos)
        after_value = kind != "open"
        if kind == "open":
            depth += 1
            keywords = not names[-1]
            if keywords and not inside and members[-1] in _SCHEMA_VALUES:
                inside = depth
            names.append(keywords and members[-1] in _SCHEMA_NAME_MAPS and token.group(kind) == "{")
            members.append(None)
        elif kind == "close":
            if inside == depth:
                inside = 0
            depth -= 1
            names.pop()
            members.pop()
            if depth <= 0:
                break
        else:
            start, stop = token.span(kind)
            width = 0 if kind == "bare" else 2 if text[start] == "\\" else 1
            is_key = _KEY_END.match(text, pos, end) is not None
            if is_key:
                members[-1] = text[start + width : stop - width]
                if depth == 1:
                    member = members[-1]
                    keys.add(member)
            elif member == "type":
                types.add(text[start + width : stop - width])
            if kind == "bare" or (not is_key and stop - start > 2 * width):
                found.append(_Found(start + width, stop - width, quote if kind == "bare" else ""))
                if not is_key and (inside or (not names[-1] and members[-1] in _SCHEMA_VALUES)):
                    schema_values.append(found[-1])
    schema = first == "{" and _looks_like_schema(keys, types)
    return _Read(found, schema, schema_values, pos)


_SCHEMA_KEYWORDS = frozenset(
    {
        *("type", "description", "title", "default", "examples", "enum", "const", "format", "pattern", "nullable"),
        *("items", "prefixItems", "properties", "required", "additionalProperties", "patternProperties", "propertyNames"),
        *("anyOf", "oneOf", "allOf", "not", "$ref", "$defs", "definitions", "discriminator", "deprecated"),
        *("minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
        *("minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties", "readOnly", "writeOnly"),
        *("contentEncoding", "contentMediaType", "contentSchema", "example", "$comment", "$id", "$schema", "$anchor"),
        *("$dynamicRef", "$dynamicAnchor", "$vocabulary", "contains", "minContains", "maxContains", "if", "then", "else"),
        *("dependentRequired", "dependentSchemas", "dependencies", "unevaluatedProperties", "unevaluatedItems"),
        *("additionalItems", "externalDocs", "xml"),
    }
)
"""JSON Schema keywords (2020-12 and earlier drafts) and OpenAPI's; ``x-`` extensions are allowed too."""
_SCHEMA_VALUES = frozenset({"example", "examples", "default", "const", "enum"})
"""Schema keywords whose value is a value of the described data, not a schema: below a strong secret name (an
``api_key`` parameter's example), secret."""
_SCHEMA_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependentRequired"})
"""Schema keywords whose value maps names (a property named ``default``) to schemas."""
_SCHEMA_TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})


def _looks_like_schema(keys: set[str], types: set[str]) -> bool:
    """Whether an object with these keys (its ``type`` these) is a JSON Schema: only schema keywords and ``x-``
    extensions, and a schema type or a reference or combination."""
    if not keys or not all(key in _SCHEMA_KEYWORDS or key.startswith("x-") for key in keys):
        return False
    return bool(keys & {"$ref", "anyOf", "oneOf", "allOf"}) or ("type" in keys and bool(types) and types <= _SCHEMA_TYPES)


def _is_schema(value: Any) -> bool:
    """:func:`_looks_like_schema` of JSON-like ``value``."""
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        return False
    kind = value.get("type")
    types = {kind} if isinstance(kind, str) else set(kind) if isinstance(kind, list) and all(isinstance(t, str) for t in kind) else set()
    return _looks_like_schema(set(value), types)


# --- the context of a number: an id word before it --------------------------------------------------------------------

_ID_WORDS = frozenset(
    {"order", "orders", "invoice", "invoices", "ticket", "tickets", "ref", "refs", "reference", "references", "ean", "upc"}
    | {"isbn", "sku", "skus", "part", "parts", "tracking", "gtin"}
)
"""Words that say the number after them (or under a key made of them: ``order_id``, ``part_no``) is an id: an order
number, an invoice, an EAN, a part number, not a card, a phone number or an SSN."""
_ID_MARKERS = frozenset({"no", "nr", "num", "number", "id", "ids", "#"})
"""Words between a name and its number (``order no.``, ``ticket #``, ``orderNumber``, ``order_id``). None of them
marks an id without an id word (:data:`_ID_WORDS`) before it: ``Contact No.``, ``Home #``, ``SS#``, ``Telefon-Nr.``,
``No. 4111 ...``, a "No" cell before a phone, ``your number: 4111 ...``, a card object's ``"number"`` are no ids."""
_NAMES_PERSONAL_NUMBERS = frozenset(
    {"card", "cards", "credit", "debit", "visa", "mastercard", "amex", "pan", "cc", "account", "acct", "iban", "phone"}
    | {"phones", "telephone", "tel", "mobile", "cell", "fax", "whatsapp", "ssn", "social", "security", "passport", "tax"}
    | {"tin", "sin", "routing", "contact", "home", "cellphone", "handphone", "landline", "mob", "mobil", "ph", "telefon"}
    | {"telefono", "handy", "celular", "ss", "soc", "sec", "karte", "karten", "kreditkarte", "kreditkarten", "tarjeta"}
    | {"mc", "discover", "jcb", "maestro", "diners", "unionpay"}
)
_CONTEXT_CHARS = 64
_CONTEXT_SEPARATORS = frozenset(" \"'`:=._-\\")
_NAME_PARTS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")


def _words_before(text: str, start: int) -> list[str]:
    """The words (lower-cased, ``#`` one of them) before ``start`` on its line, nearest first, up to 6, through spaces,
    quotes and ``: = . _ -`` only (``order no. ``, ``"order_id": ``, ``\\"orderNumber\\":``); any other character ends
    them (a bracket, a comma, a tab: a table's previous cell, a line break)."""
    window = text[max(0, start - _CONTEXT_CHARS) : start]
    words: list[str] = []
    end = len(window)
    while end > 0 and len(words) < 6:
        while end > 0 and window[end - 1] in _CONTEXT_SEPARATORS:
            end -= 1
        if end > 0 and window[end - 1] == "#":
            words.append("#")
            end -= 1
            continue
        begin = end
        while begin > 0 and window[begin - 1].isascii() and window[begin - 1].isalnum():
            begin -= 1
        if begin == end:
            break
        words.extend(part.lower() for part in reversed(_NAME_PARTS.findall(window[begin:end])))
        end = begin
    return words


def _names_an_id(words: list[str]) -> bool:
    """Whether ``words`` (nearest first, :func:`_words_before`) say the number after them is an id: the first word that
    is no marker (``no``, ``#``, ``id``: :data:`_ID_MARKERS`) is an id word (:data:`_ID_WORDS`), and no word near it
    names a card, a phone number or an SSN (``card ref``, ``Visa order no.``, ``Phone ticket``)."""
    first = next((at for at, word in enumerate(words) if word not in _ID_MARKERS), len(words))
    if _NAMES_PERSONAL_NUMBERS.intersection(words[first : first + 3]):
        return False
    return first < len(words) and words[first] in _ID_WORDS


def _after_an_id_word(text: str, start: int, end: int) -> bool:
    """Whether the number at ``start:end`` directly follows a word saying it is an id (:func:`_names_an_id`): ``order
    no. 5890820148538237``, ``EAN 3816941836104``, ``"order_id": 5890...``, ``ticket 191-453-6524``, ``part
    539-12-2211``; in a quoted string (``"ticket": "191-453-6524"``) only where it is the whole string, as
    :meth:`Redactor.redact_value` keeps only a whole value under an id key (``"ticket": "+1 415 555 0134 called"`` is
    free text, its phone number redacted)."""
    if start == 0 or not _names_an_id(_words_before(text, start)):
        return False
    return text[start - 1] != '"' or text.startswith('"', end) or text.startswith('\\"', end)


@functools.lru_cache(maxsize=4096)
def _key_names_an_id(key: str) -> bool:
    """:func:`_names_an_id` of a JSON key's words (``order_id``, ``orderNumber``, ``ean``, ``tracking_number``)."""
    words = [part.lower() for part in reversed(_NAME_PARTS.findall(key))]
    return len(key) <= 64 and _names_an_id(words)


# --- numbers with a check: a card or an IBAN inside a longer run ----------------------------------------------------

_CARD = re.compile(r"(?<![\d-])(?<!\d\.)\d(?:[ -]?\d){12,18}(?![\d-])")
_DIGIT_GROUP = re.compile(r"\d+")
_CARD_LAYOUTS = ((4, 4, 4, 4, 3), (4, 4, 4, 4), (4, 6, 5), (4, 6, 4))
"""How cards are written in groups, longest first: 19 digits in fours and a three, 16 in fours, 15 as 4-6-5 (Amex),
14 as 4-6-4 (Diners)."""


def _cards(text: str) -> Iterator[re.Match[str] | _Found]:
    """The ``credit_card`` rule's candidates: each number of 13-19 digits :data:`_CARD` finds that passes the check,
    or where one fails it because more digits are next to the card ("4539 1488 0343 6467 10 EUR", a CVV, an expiry,
    "qty 2 4111 ..."), the card inside that run of digit groups (:func:`_card_within`); none right after an id word
    (``order no. 5890820148538237``, ``EAN 3816941836104``: :func:`_after_an_id_word`)."""
    pos = 0
    while (match := _CARD.search(text, pos)) is not None:
        pos = match.end()
        if _is_card(match.group()):
            if not _after_an_id_word(text, match.start(), match.end()):
                yield match
        elif (card := _card_within(text, match)) is not None:
            if not _after_an_id_word(text, card.start, card.end):
                yield card
            pos = card.end


def _card_within(text: str, match: re.Match[str]) -> _Found | None:
    """A card inside the run of digit groups (one space or dash apart) that ``match`` starts: one group of 13-19
    digits or groups in a usual layout (:data:`_CARD_LAYOUTS`), starting in ``match``, with a space or the run's end
    on both sides, passing the check (the leftmost, then the longest); ``None`` if there is none. Four groups of four
    in a row of more 4-digit figures (readings, years, counts) are figures, not a card: taken only where the row has no
    other figure before them and at most one after (an amount: "pay 10 4539 1488 0343 6467 1500 EUR"). (Where the
    first four of such a row, or the next four, pass the check, :data:`_CARD` has taken them already.)"""
    groups: list[tuple[int, int]] = []
    for group in _DIGIT_GROUP.finditer(text, match.start()):
        if group.start() > match.end() + 40 or (groups and not (group.start() == groups[-1][1] + 1 and text[group.start() - 1] in " -")):
            break
        groups.append(group.span())
    lengths = [e - s for s, e in groups]
    for i, (start, _) in enumerate(groups):
        if start >= match.end():
            break
        if i and text[start - 1] != " ":
            continue
        for layout in ((lengths[i],),) if 13 <= lengths[i] <= 19 else _CARD_LAYOUTS if lengths[i] == 4 else ():
            if tuple(lengths[i : i + len(layout)]) != layout:
                continue
            end = groups[i + len(layout) - 1][1]
            if text[end : end + 1] == "-" or not _is_card(text[start:end]):
                continue
            if layout[:4] != (4, 4, 4, 4) or ((fours := _fours_around(text, groups, i, i + 3))[0] == 0 and fours[1] <= 1):
                return _Found(start, end)
    return None


def _fours_around(text: str, groups: list[tuple[int, int]], first: int, last: int) -> tuple[int, int]:
    """How many 4-digit groups, one space apart, come before ``groups[first]`` and after ``groups[last]`` in a row."""
    before = first
    while before > 0 and groups[before - 1][1] - groups[before - 1][0] == 4 and text[groups[before][0] - 1] == " ":
        before -= 1
    after = last
    while after + 1 < len(groups) and groups[after + 1][1] - groups[after + 1][0] == 4 and text[groups[after + 1][0] - 1] == " ":
        after += 1
    return first - before, after - last


_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")


def _ibans(text: str) -> Iterator[re.Match[str]]:
    """The ``iban`` rule's candidates: each IBAN-shaped run :data:`_IBAN` finds that passes the check, or where one
    fails it because a group or a short word follows the IBAN ("BE68 5390 0754 7034 2024", "... 1332 EUR"), its
    longest part ending at a space that passes it (:func:`_iban_within`)."""
    pos = 0
    while (match := _IBAN.search(text, pos)) is not None:
        pos = match.end()
        if _is_iban(match.group()):
            yield match
        elif (iban := _iban_within(text, match)) is not None:
            yield iban
            pos = iban.end()


def _iban_within(text: str, match: re.Match[str]) -> re.Match[str] | None:
    """The longest IBAN that starts ``match`` and ends at a space inside it, passing the check; ``None`` if none does."""
    end = match.end()
    while (end := text.rfind(" ", match.start(), end)) > match.start():
        shorter = _IBAN.fullmatch(text, match.start(), end)
        if shorter is not None and _is_iban(shorter.group()):
            return shorter
    return None


_IBAN_ANY_CASE = re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b")
_IBAN_LENGTHS = {
    **dict(AD=24, AE=23, AL=28, AT=20, AZ=28, BA=20, BE=16, BG=22, BH=22, BI=27, BR=29, BY=28, CH=21, CR=22, CY=28, CZ=24),
    **dict(DE=22, DJ=27, DK=18, DO=28, EE=20, EG=29, ES=24, FI=18, FK=18, FO=18, FR=27, GB=22, GE=22, GI=23, GL=18, GR=27),
    **dict(GT=28, HR=21, HU=28, IE=22, IL=23, IQ=23, IS=26, IT=27, JO=30, KW=30, KZ=20, LB=28, LC=32, LI=21, LT=20, LU=20),
    **dict(LV=21, LY=25, MC=27, MD=24, ME=22, MK=19, MN=20, MR=27, MT=31, MU=30, NI=28, NL=18, NO=15, OM=23, PK=24, PL=28),
    **dict(PS=29, PT=25, QA=29, RO=24, RS=22, RU=33, SA=24, SC=31, SD=18, SE=24, SI=19, SK=24, SM=27, SO=23, ST=25, SV=28),
    **dict(TL=23, TN=24, TR=26, UA=29, VA=22, VG=24, XK=20, YE=30),
}
"""Each country's IBAN length (the SWIFT IBAN registry): an IBAN not written in capitals (``de89 3704 ...``) is taken only
with its country's length, since lower-case ids (hex digests, session ids) are many and 1 in 97 passes the checksum."""


def _is_iban_any_case(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    return _IBAN_LENGTHS.get(compact[:2]) == len(compact) and _is_iban(compact)


def _ibans_any_case(text: str) -> Iterator[re.Match[str]]:
    """IBANs not written in capitals (``de89370400440532013000``, ``gb29 nwbk ...``) that pass the check and have their
    country's length (:data:`_IBAN_LENGTHS`), the longest part ending at a space if the whole run does not (as
    :func:`_ibans` reads capitals)."""
    pos = 0
    while (match := _IBAN_ANY_CASE.search(text, pos)) is not None:
        pos = match.end()
        if match.group().isupper():
            continue  # (:func:`_ibans` reads those)
        if _is_iban_any_case(match.group()):
            yield match
            continue
        end = match.end()
        while (end := text.rfind(" ", match.start(), end)) > match.start():
            shorter = _IBAN_ANY_CASE.fullmatch(text, match.start(), end)
            if shorter is not None and _is_iban_any_case(shorter.group()):
                yield shorter
                pos = shorter.end()
                break


_LETTER = r"[^\W\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]"
"""A letter, digit or ``_`` of any script but those written without spaces (CJK, where an address stops at them)."""

_EMAIL_LOCAL = rf"(?<!{_LETTER}){_LETTER}++(?:[.%+'-]++{_LETTER}++)*+"
"""An address's local part: alice.o'brien, josé.garcía, иван (a quote or dot around it is not part of it)."""

_EMAIL_DOMAIN = r"@(?:[^\W_][\w-]*+\.)+(?:xn--[A-Za-z0-9-]+|[A-Za-z]{2,}(?![A-Za-z0-9])|[^\W\d_]{2,})"
"""``@`` and an address's domain: example.co.uk, пример.рф, xn--e1afmkfd.xn--p1ai."""

_EMAIL = re.compile(_EMAIL_LOCAL + _EMAIL_DOMAIN)
"""E-mail addresses, non-ASCII ones included (RFC 6531); found by :func:`_emails`, which also takes those whose local
part ends in a letter of a script written without spaces (:data:`_UNSPACED_LOCAL_BEFORE`)."""

_LOCAL_BEFORE = re.compile(_EMAIL_LOCAL + r"\Z")
_ONE_LETTER = re.compile(_LETTER)
_UNSPACED_LOCAL_BEFORE = re.compile(r"\w++(?:[.%+'-]++\w++)*+\Z")
"""A local part that ends in a letter of a script written without spaces (张伟@example.com): where it starts is not
known, so it is taken back to the nearest space or punctuation, at most :data:`_UNSPACED_LOCAL_CHARS` characters
(the words before it in the same run go with it: more is replaced than the address, never less)."""
_UNSPACED_LOCAL_CHARS = 64  # an address's local part is 64 characters at most (RFC 5321)
_DOMAIN = re.compile(_EMAIL_DOMAIN.removeprefix("@"))
_ENCODED_AT = re.compile(r"%(?:25)*40", re.IGNORECASE)
"""An ``@`` URL-encoded once or more (``%40``, ``%2540``): ``maria.lopez%40example.org`` in a query string."""


def _emails(text: str) -> Iterator[_Found]:
    """What :data:`_EMAIL` finds, looked for only around each ``@`` or ``%40`` (scanning all of a long text with it is
    slow); a URL-encoded address is replaced whole, the URL around it kept."""
    for at, after in _ats(text):
        domain = _DOMAIN.match(text, after)
        if domain is None:
            continue
        back = 256
        while (local := _LOCAL_BEFORE.search(text, max(0, at - back), at)) is None and back < at and _ONE_LETTER.match(text, at - 1):
            back *= 8  # a local part longer than that: looked for further back
        if local is None and at > 0 and text[at - 1].isalnum():  # (a letter _LETTER leaves out: CJK, Hangul)
            local = _UNSPACED_LOCAL_BEFORE.search(text, max(0, at - _UNSPACED_LOCAL_CHARS), at)
        if local is not None:
            yield _Found(local.start(), domain.end())


def _ats(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each ``@`` and URL-encoded ``@`` in ``text``, in order (``str.find`` for the ``@``: fast)."""
    encoded = [(m.start(), m.end()) for m in _ENCODED_AT.finditer(text)] if "%" in text else []
    at = text.find("@")
    while at != -1:
        encoded.append((at, at + 1))
        at = text.find("@", at + 1)
    yield from sorted(encoded) if "%" in text else encoded


_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_PHONE = re.compile(
    r"(?:(?<![\w+])\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,5}(?![\d])"
    r"|(?<![\w+])(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-.]\d{4}(?![\d-]))"
)
"""Phone numbers: ``+`` and a country code then 2-5 groups (a group in parentheses only with both of them: the ``)`` of
``(phone +1 415 555 0134)`` is the text's), or a US number (``(415) 555-0134``, ``415-555-0134``, also right after a
``(``: ``Jane (415-555-0134)``)."""

_PIN_OR_SSN = _having(r"\bpin\b|passcode|ssn|social[ -]security")
_PIN_OR_SSN_WORDS = ("pin", "passcode", "ssn", "social")
"""The one prefilter of the PIN-in-prose and SSN-after-its-name rules (one gate for both: fewer scans of clean text)."""


def _ssns(text: str) -> Iterator[re.Match[str]]:
    """What :data:`_SSN` finds, but right after an id word (``part 539-12-2211``, ``SKU 310-42-1187``)."""
    return (match for match in _SSN.finditer(text) if not _after_an_id_word(text, match.start(), match.end()))


def _phones(text: str) -> Iterator[re.Match[str]]:
    """What :data:`_PHONE` finds, but right after an id word (``ticket 191-453-6524``). Next to a currency it is still
    a phone number: every number :data:`_PHONE` finds has a phone's shape (a ``+`` prefix, ``(415) 555-0134``,
    ``415-555-0134``), and a price list or a report puts phones next to amounts (``+1 415 555 0134 $5/min``)."""
    return (match for match in _PHONE.finditer(text) if not _after_an_id_word(text, match.start(), match.end()))


BUILTIN_RULES: tuple[Rule, ...] = (
    Rule(
        "private_key",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"),
        _having("private key"),
    ),
    Rule("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"), _having("eyj")),
    Rule(
        "url_credentials",
        re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,20}://(?P<value>[^\s:/?#@\"'\\]*:[^\s/@\"'\\]+)@"),
        _having("://"),
        group="value",
    ),
    Rule(
        "basic_auth",
        re.compile(r"(?i)\bbasic\s+(?P<value>[A-Za-z0-9+/]{8,}={0,2})"),
        _having("basic"),
        "value",
        _is_basic_credentials,
    ),
    Rule(
        "bearer_token",
        re.compile(r"(?i)\bbearer\s+(?P<value>[A-Za-z0-9\-._~+/]{8,}=*)"),
        _having("bearer"),
        "value",
        _is_token,
    ),
    Rule(
        "api_key",
        re.compile(
            r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{16,}"
            r"|(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}|xox[abposr]-[A-Za-z0-9-]{10,}"
            r"|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,}|glpat-[A-Za-z0-9_-]{20,}|npm_[A-Za-z0-9]{36}"
            r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,})"
        ),
        _having(r"sk-|[sr]k_|whsec_|akia|asia|gh[pousr]_|github_pat_|xox|aiza|hf_|glpat-|npm_|sg\."),
        needs=(
            *("sk-", "sk_", "rk_", "whsec_", "akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
            *("xox", "aiza", "hf_", "glpat-", "npm_", "sg."),
        ),
    ),
    Rule(
        "aws_secret_key",
        # 40 characters that stand alone: not within a longer name (a file's, a folder's: "tmp39_ab/t/experience/spool/
        # 20261204T192310-6339.jsonl" holds 40), where an underscore, a hyphen or a dot joins them to more of it
        re.compile(r"(?<![A-Za-z0-9/+=])(?<![A-Za-z0-9][-_.])(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])(?![-_.][A-Za-z0-9])"),
        _having(r"[a-z0-9/+]{40}"),
        "value",
        _is_aws_secret,
    ),
    Rule(
        "secret",
        # the value is matched in a lookahead, so that "Note: password: x" is tried at "password" too
        _ASSIGNMENT,
        _having(r"(?<![a-z0-9_.-])(?=[a-z0-9_.-]*?" + _NAME_WORDS + r")[a-z0-9_.-]*+\\?[\"']?\s*[:=]"),
        "value",
        lambda v: v.strip("\\\"'").lower() not in ("bearer", "basic", "", "null", "none", "true", "false"),
        finder=_assignments,
        needs=_NAME_WORD_LIST,
    ),
    Rule(
        "password",
        re.compile(
            r"(?i)\b(?:password|passwd|passphrase|passcode|pwd)\b(?:\s+(?!is\b|was\b)[\w'-]+){0,4}?\s+(?:is|was)(?:\s+now)?\s+"
            r"(?P<value>'[^'\n]+'|\"[^\"\n]+\"|`[^`\n]+`|[^\s'\"`]+?)(?=[.,;!?)]*(?:\s|$|\"|\\))"
        ),
        _having("pass|pwd"),
        "value",
        _is_prose_password,
    ),
    Rule(
        "password",
        re.compile(
            r"(?i)(?:\b(?:pin(?:[ -]?(?:code|number|no\.?))?|passcode)"
            r"(?:\s*+[:=#]\s*+|\s+(?:(?!is\b|was\b)[\w'-]+\s+){0,4}?(?:is|was)(?:\s+now)?\s*+(?::\s*+)?)"
            # a number right after the word: "PIN 4821", "my pin 4821", "pin code 4821", not a header's "pin 8080"
            r"|\b(?:(?-i:PIN|Pin)|(?<=\bmy )pin|(?<=\byour )pin|pin[ -]?(?:code|number|no\.?)|passcode)\s+)"
            r"(?P<value>\d{4,8})(?![\d-]|[.,]\d)"
        ),
        _PIN_OR_SSN,
        "value",
        needs=_PIN_OR_SSN_WORDS,
        digits=4,
    ),
    Rule("email", _EMAIL, _having("@|%40|%2540"), finder=_emails),
    Rule("credit_card", _CARD, _LONG_NUMBER, check=_is_card, finder=_cards, digits=7),
    Rule("iban", _IBAN, _LONG_NUMBER, check=_is_iban, finder=_ibans, digits=7),
    Rule("iban", _IBAN_ANY_CASE, _LONG_NUMBER, check=_is_iban_any_case, finder=_ibans_any_case, digits=7),
    Rule("us_ssn", _SSN, _LONG_NUMBER, finder=_ssns, digits=7),
    Rule(
        "us_ssn",
        re.compile(
            r"(?i)\b(?:ssn|social[ -]security(?:[ -](?:number|no\.?|#))?)"
            r"(?:\s*+(?:[:=#]|is\b|was\b|number\b|no\.))*+\s*+"
            r"(?P<value>(?!000|666|9\d\d)\d{3}(?P<gap> ?)(?!00)\d{2}(?P=gap)(?!0000)\d{4})(?![\d-])"
        ),
        _PIN_OR_SSN,
        "value",
        needs=_PIN_OR_SSN_WORDS,
        digits=4,
    ),
    Rule("phone", _PHONE, _LONG_NUMBER, check=_is_phone, finder=_phones, digits=7),
    Rule(
        "ip_address",
        # not followed by a digit, nor by a period and a digit (10.20.30.40.5 is no address; "from 10.20.30.40." is one)
        re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\.?\d)"),
        _having(r"\d\.\d+\.\d"),
        needs=(".",),
        digits=3,
    ),
)

KINDS: dict[str, tuple[bool, str]] = {
    "private_key": (True, "PEM private-key blocks"),
    "jwt": (True, "JSON Web Tokens (eyJ...)"),
    "url_credentials": (True, "user:password in URLs (https://user:pass@host, postgres://...)"),
    "basic_auth": (True, "HTTP Basic credentials (Basic <base64 of user:password>)"),
    "bearer_token": (True, "Bearer tokens"),
    "api_key": (True, "provider keys: OpenAI/Anthropic sk-, Stripe sk_live_/rk_live_, AWS AKIA, GitHub, Slack, Google, HF, GitLab, npm"),
    "aws_secret_key": (True, "AWS secret access keys (40 characters of base64)"),
    "secret": (
        True,
        "values under secret-named keys (every string and number of an object or a list under a strong name: password, "
        "client_secret, api_key, access_token, security_answer, one_time_code, ...; otp, pin, token: single values): JSON "
        "fields, key=value, DB_PASSWORD=... environment lines (the whole token), Password: <passphrase>, the credential "
        "after an auth scheme (Authorization: Token ...)",
    ),
    "password": (True, 'passwords and PINs in prose ("my password is ...", "my PIN is 4821")'),
    "email": (True, "e-mail addresses, non-ASCII and URL-encoded (%40) ones too"),
    "credit_card": (True, "payment card numbers (Luhn-checked; also followed by an amount, a CVV or an expiry)"),
    "iban": (True, "IBANs (checksum-checked; also followed by a number or a word; lower-case ones of their country's length)"),
    "us_ssn": (True, "US social security numbers (123-45-6789; 123456789 after SSN or social security)"),
    "phone": (True, "phone numbers (+ international, or US (415) 555-0134 / 415-555-0134)"),
    "ip_address": (False, "IPv4 addresses"),
}
"""Every built-in kind: (on by default, what it catches)."""

DEFAULT_KINDS = tuple(kind for kind, (on, _) in KINDS.items() if on)


# --- pseudonyms ---------------------------------------------------------------------------------

_NOT_A_NUMBER_CHAR = re.compile(r"[^0-9 \t().+/-]")
"""A character that is neither a digit nor a separator a number is written with."""
_COMPACT_IBAN = re.compile(r"[A-Za-z]{2}[0-9]{2}[A-Za-z0-9 ]+")


def canonical_form(kind: str, value: str | int | float) -> str:
    """The text a value's pseudonym tag is the keyed hash of (:meth:`Redactor.placeholder`, with canonical pseudonyms,
    :attr:`RedactionRules.canonical_pseudonyms`; else :func:`written_form`): for an e-mail address the
    address lower-cased (a URL-encoded ``@``, ``%40`` or ``%2540``, read as one), for a card number or an SSN its
    digits, for an IBAN its compact upper-case form, for a phone number its digits after a leading ``+`` if it has one
    (``+442079460958``); each also a working value for the thing it names. Any other value, and one of those kinds that
    is not written as such (a user pattern named ``phone`` matching ``EXT-A1``), is its text as written; a number is
    its digits as text (a whole-number float card, ``4111111111111111.0``, those of its integer)."""
    if isinstance(value, float) and kind in ("credit_card", "us_ssn", "phone") and value.is_integer():
        value = int(value)
    text = value if isinstance(value, str) else str(value)
    if kind == "email":
        text = _ENCODED_AT.sub("@", text) if "%" in text else text
        return text.lower() if "@" in text else text
    if kind in ("credit_card", "us_ssn", "phone") and _NOT_A_NUMBER_CHAR.search(text) is None and any(c.isdigit() for c in text):
        digits = "".join(c for c in text if c.isdigit())
        return "+" + digits if kind == "phone" and text.lstrip().startswith("+") else digits
    if kind == "iban" and _COMPACT_IBAN.fullmatch(text):
        return text.replace(" ", "").upper()
    return text


def written_form(value: str | int | float) -> str:
    """The text a value's pseudonym tag is the keyed hash of in a store recorded before pseudonyms were canonical
    (``canonical_pseudonyms=False``): the value as written, a number as its text (``str(value)``)."""
    return value if isinstance(value, str) else str(value)


@functools.lru_cache(maxsize=4096)
def key_form(name: str) -> str:
    """A key name as :attr:`RedactionRules.keys` compares it: its words, lower-cased, joined by ``_`` (``nationalId``,
    ``National-ID`` and ``national_id`` are one name)."""
    return "_".join(w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w)


def _keys_rule(forms: frozenset[str]) -> Rule:
    """The ``secret`` rule for the key names of :attr:`RedactionRules.keys` (``forms``, as :func:`key_form` gives them)
    in text: ``"dob": "1985-07-14"`` in JSON text, ``dob=...``, ``dob: ...``, found as the built-in secret names are."""
    first_words = sorted({re.escape(form.split("_")[0]) for form in forms}, key=len, reverse=True)
    return Rule(
        "secret",
        _ASSIGNMENT,
        group="value",
        check=lambda v: v.strip("\\\"'").lower() not in ("", "null", "none", "true", "false"),
        finder=functools.partial(
            _assignments, names=re.compile("|".join(first_words)), strength_of=lambda name: 2 if key_form(name) in forms else 0
        ),
    )


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedactionRules:
    """What to redact, as plain data (so it can be stored with a store and reused by every writer).

    ``defaults`` turns the built-in kinds on as a group; ``kinds`` switches single built-in kinds
    on or off (``{"phone": False, "ip_address": True}``); ``patterns`` adds ``{kind: regex}``
    rules (a group named ``value`` marks the part to replace; the rest of the match is kept); ``keys`` names keys
    whose values are always secrets (``{"dob", "national_id"}``); ``canonical_pseudonyms`` says which text of a value
    its pseudonym tag is made of.
    """

    defaults: bool = True
    kinds: Mapping[str, bool] = field(default_factory=dict)
    patterns: Mapping[str, str] = field(default_factory=dict)
    keys: frozenset[str] = frozenset()
    """Extra key names whose values are replaced whole as secrets wherever they are a key of JSON-like data (or a name
    of ``name: value`` / ``name=value`` in text), whatever the built-in kinds say; compared by :func:`key_form`
    (case, camelCase, ``-`` and ``_`` alike)."""
    canonical_pseudonyms: bool = True
    """True: a pseudonym's tag is that of the value's :func:`canonical_form` (one tag for every spelling of an e-mail
    address, card, IBAN, SSN or phone number). False: that of the value as written (:func:`written_form`), the tags of
    a store recorded before pseudonyms were canonical; its ``redaction.json`` keeps this, so that every later writer
    gives a value the tag its older runs have (:mod:`~ee_middleware.capture.store_redaction`)."""

    def __post_init__(self) -> None:
        from ee_middleware.errors import ConfigError

        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ConfigError(f"Unknown redaction kind(s) {', '.join(unknown)}. Built-in kinds: {', '.join(KINDS)}.")
        keys = self.keys
        if isinstance(keys, str) or not all(isinstance(k, str) and key_form(k) for k in keys):
            raise ConfigError(f"Redaction keys must be a list of key names (letters or digits in each), got {keys!r}.")
        object.__setattr__(self, "keys", frozenset(keys))
        for kind, pattern in self.patterns.items():  # a bad one fails here, before any store keeps it in redaction.json
            if not isinstance(pattern, (str, re.Pattern)):
                raise ConfigError(f"Redaction pattern for kind {kind!r} must be a regular expression (a string), got {pattern!r}.")
            _user_rule(kind, pattern)

    def enabled_kinds(self) -> list[str]:
        """The built-in kinds this configuration applies."""
        return [k for k, (on, _) in KINDS.items() if self.kinds.get(k, on and self.defaults)]

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "defaults": self.defaults,
            "kinds": dict(self.kinds),
            "patterns": {k: str(v) for k, v in self.patterns.items()},
        }
        if self.keys:  # (written only when given: a file without them reads as it did)
            data["keys"] = sorted(self.keys)
        if not self.canonical_pseudonyms:  # (likewise: rules written without it read as canonical)
            data["canonical_pseudonyms"] = False
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RedactionRules:
        return cls(
            defaults=bool(data.get("defaults", True)),
            kinds=dict(data.get("kinds") or {}),
            patterns=dict(data.get("patterns") or {}),
            keys=frozenset(data.get("keys") or ()),
            canonical_pseudonyms=data.get("canonical_pseudonyms", True) is not False,
        )


# --- the redactor -------------------------------------------------------------------------------


class Redactor:
    """Replaces secrets in text and in JSON-like data.

    >>> Redactor().redact_text("mail bob@example.com, key sk-abcdefghijklmnopqrstuv")
    'mail [REDACTED:email], key [REDACTED:api_key]'
    >>> r = Redactor(salt=b"store-salt")
    >>> r.redact_text("bob@example.com") == r.redact_value({"to": "bob@example.com"})["to"]
    True

    ``rules`` says what to redact (default: the built-in kinds that are on by default); ``salt``
    makes placeholders consistent pseudonyms; ``custom`` is a last ``str -> str`` pass over every
    string. ``defaults=``, ``extra_patterns=`` and ``canonical_pseudonyms=`` are shorthands for the same fields of
    ``rules`` (:attr:`RedactionRules.canonical_pseudonyms`: ``False`` makes the tags of the value as written, those of a
    store recorded before pseudonyms were canonical). ``on_replace(pseudonym, value)`` is told of every pseudonym made
    (with a salt only): capture's redaction vault (:mod:`ee_middleware.capture.vault`) is fed this way.
    """

    def __init__(
        self,
        rules: RedactionRules | None = None,
        *,
        salt: bytes | str | None = None,
        custom: Callable[[str], str] | None = None,
        defaults: bool | None = None,
        extra_patterns: Mapping[str, str | Pattern[str]] | Iterable[str | Pattern[str]] = (),
        on_replace: Callable[[str, str], None] | None = None,
        canonical_pseudonyms: bool | None = None,
    ) -> None:
        rules = rules or RedactionRules()
        if defaults is not None:
            rules = replace(rules, defaults=defaults)
        if canonical_pseudonyms is not None:
            rules = replace(rules, canonical_pseudonyms=canonical_pseudonyms)
        self.rules = rules
        self.canonical_pseudonyms = rules.canonical_pseudonyms
        """Whether a tag is that of the value's :func:`canonical_form` (else that of the value as written)."""
        self.custom = custom
        self.salt = salt.encode() if isinstance(salt, str) else salt
        self.on_replace = on_replace if self.salt is not None else None
        enabled = set(rules.enabled_kinds())
        self._builtin = [r for r in BUILTIN_RULES if r.kind in enabled]
        self._secret_keys = "secret" in enabled
        self._int_kinds = enabled
        extras = extra_patterns.items() if isinstance(extra_patterns, Mapping) else (("custom", p) for p in extra_patterns)
        self._user = [_user_rule(kind, pattern) for kind, pattern in [*rules.patterns.items(), *extras]]
        self._extra_keys = frozenset(key_form(k) for k in rules.keys)
        if self._extra_keys:
            self._user.append(_keys_rule(self._extra_keys))
        self._rules = self._builtin + self._user
        # the built-in prefilters find nothing in most strings: then no built-in rule can match
        self._gates = _gates(self._builtin)
        # texts seen lately in which no rule matched (a system prompt, the tool list, a repeated
        # tool result or task): not scanned again; bounded by _CLEAN_MEMO_CHARS in all
        self._clean_texts: dict[str, None] = {}
        # JSON texts holding escapes that _clean_json found clean with them decoded (the raw-scan memo above says
        # nothing about what escapes hide)
        self._clean_json_texts: dict[str, None] = {}
        self._clean_chars = 0

    @property
    def enabled(self) -> bool:
        return bool(self._rules) or self.custom is not None

    @property
    def builtin_only(self) -> bool:
        """Whether only built-in rules apply (no user patterns, no ``custom`` function)."""
        return not self._user and self.custom is None

    @property
    def json_safe(self) -> bool:
        """Whether :meth:`redact_text` keeps JSON text valid (true without a ``custom`` function)."""
        return self.custom is None

    def placeholder(self, kind: str, value: str | int | float) -> str:
        """``[REDACTED:<kind>]``, or ``[REDACTED:<kind>:<tag>]`` with a salt (same value, same tag).

        The tag is that of the value's :func:`canonical_form`: every spelling of one e-mail address, card, IBAN, SSN or
        phone number gets one pseudonym (``Jane.Doe@Gmail.com`` and ``jane.doe@gmail.com``, ``4111 1111 1111 1111``
        and ``4111111111111111``), while ``on_replace`` gets the value as written; with ``canonical_pseudonyms=False``
        (a store recorded before pseudonyms were canonical) the tag is that of the value as written. A number (a JSON number replaced
        whole) gets the tag of its digits as text (the pseudonym recorded for it before
        numbers were typed, so replaying an older store compares equal); ``on_replace`` gets the number itself, and
        the vault restores it as a number unless the same tag was also seen as a string (:mod:`~.vault`)."""
        if self.salt is None:
            return f"[REDACTED:{kind}]"
        text = canonical_form(kind, value) if self.canonical_pseudonyms else written_form(value)
        tag = hmac.new(self.salt, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:8]
        placeholder = f"[REDACTED:{kind}:{tag}]"
        if self.on_replace is not None:
            self.on_replace(placeholder, value)
        return placeholder

    def redact_text(self, text: str) -> str:
        """Return ``text`` with every secret replaced by its placeholder. A text that parses as a JSON object or array is
        redacted as data and written back in its layout, as :meth:`redact_value` redacts a string holding one (what
        capture stores for a tool result): it stays JSON, an integer card number becoming a quoted placeholder. JSON
        objects and arrays written inside other text with backslash escapes (an error ``API error 422: {"email":
        "m\\u00fcller@..."}``) are read through their escapes, as :meth:`redact_value` reads a string holding JSON."""
        if self.enabled and (redacted := self._redact_json_text(text)) is not None:
            return redacted
        return self._redact_plain(text)

    def _redact_plain(self, text: str) -> str:
        """:meth:`redact_text` of a text that is no JSON object or array: the rules over it, then ``custom``."""
        if self._rules and text:
            if "\\" in text and _HIDING_ESCAPE.search(text) and _EMBEDDED_START.search(text):
                text = self._redact_embedded_json(text)
            text = self._apply_rules(text)
        if self.custom is not None:
            text = self._custom(text)
        return text

    def _custom(self, text: str) -> str:
        """``custom`` over ``text``; what it raises is raised as :class:`~ee_middleware.errors.RedactFnError` (its cause),
        without its message: a function that quotes the text it failed on (``ValueError(f"cannot scrub {text!r}")``) would otherwise put
        the value it was to remove in a report, a log or stderr."""
        try:
            result = self.custom(text)  # type: ignore[misc]
        except Exception as exc:  # whatever the user's function raises: told without its message
            from ee_middleware.capture.store_redaction import function_name
            from ee_middleware.errors import RedactFnError
            from ee_middleware.plugins import where_user_code_raised

            where = where_user_code_raised(exc, code=False)
            raise RedactFnError(
                f"the redact_fn {function_name(self.custom)} raised {type(exc).__module__}.{type(exc).__qualname__}"
                + (f" at {where}" if where else "")
                + " (its message is not shown: it may quote the text it was given). Make it return the text it cannot "
                "redact otherwise, redacted whole if need be, rather than raise."
            ) from exc  # (its own exception stays its cause, for a traceback: strict mode's CaptureError, a debugger)
        if not isinstance(result, str):
            # None, bytes or a result object (presidio's AnonymizerEngine.anonymize gives an EngineResult, whose repr
            # quotes the values it replaced) would be stored in the text's place, unredacted or as garbage
            from ee_middleware.capture.store_redaction import function_name
            from ee_middleware.errors import RedactFnError

            kind = f"{type(result).__module__}.{type(result).__qualname__}" if result is not None else "None"
            hint = " (presidio's AnonymizerEngine.anonymize gives an EngineResult: return its .text)" if hasattr(result, "text") else ""
            raise RedactFnError(
                f"the redact_fn {function_name(self.custom)} returned {kind}, not the text: it must return a str, the text "
                f"it was given with what it hides replaced{hint}. The value is not shown: it may quote that text."
            )
        return result

    def redact_value(self, value: Any) -> Any:
        """Redact every string inside JSON-like data (keys included); values under secret-named keys
        go whole, and strings that hold JSON are redacted as JSON and written back in their layout."""
        if isinstance(value, str):
            return self._redact_string(value)
        if isinstance(value, Mapping):
            if len(value) == 2 and value.get("type") == "bytes" and isinstance(value.get("base64"), str):
                return self._redact_bytes_form(value)
            return {self._redact_key(k): self._redact_member(k, v) for k, v in value.items()}
        if isinstance(value, (bytes, bytearray)):
            return self._redact_bytes_form(to_jsonable(value))
        if isinstance(value, (list, tuple)):
            return [self.redact_value(v) for v in value]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and self._rules:
            return self._redact_number(value)
        return value

    redact = redact_value
    """Alias of :meth:`redact_value`."""

    def _redact_bytes_form(self, value: Mapping[str, Any]) -> Any:
        """Bytes as :func:`~ee_middleware.messages.to_jsonable` writes them (``{"type": "bytes", "base64": ...}``): those
        that are UTF-8 text are redacted as text (base64 hid a value from every rule: an environment's
        ``b"jane@example.com"`` was stored decodable); other bytes as they are."""
        try:
            text = base64.b64decode(value["base64"], validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return dict(value)
        redacted = self._redact_string(text)
        if redacted == text:
            return dict(value)
        return {"type": "bytes", "base64": base64.b64encode(redacted.encode("utf-8")).decode("ascii")}

    # --- internals ---

    def _redact_key(self, key: Any) -> Any:
        if not isinstance(key, str) or (
            key.isidentifier() and len(key) < 32 and not self._user and self.custom is None and _IN_SHORT_KEY.search(key) is None
        ):
            return key  # "role", "content", "order_id": no built-in kind matches in them
        if key in ENCODING_WORDS:
            return self._encoding_word(key)
        return self.redact_text(key)

    def _encoding_word(self, word: str) -> str:
        """A member name of the message encoding, or a fixed value of one (``role``, ``type``, ``finish_reason``:
        :data:`ENCODING_WORDS`): the rules over it, not ``custom`` (such a word holds no user data; a scrubber called on
        every one spent most of its calls there)."""
        return self._apply_rules(word) if self._user else word  # (no built-in kind matches in such a word)

    def _key_strength(self, key: Any) -> int:
        """How secret a key's name says its value is (:func:`_secret_name_strength`, where the ``secret`` kind is on); 2
        for a name of :attr:`RedactionRules.keys`, whatever the kinds."""
        if not isinstance(key, str):
            return 0
        if self._extra_keys and key_form(key) in self._extra_keys:
            return 2
        return _secret_name_strength(key) if self._secret_keys else 0

    def _redact_member(self, key: Any, value: Any) -> Any:
        if (
            self.custom is not None
            and isinstance(value, str)  # (a schema's "type": ["string", "null"], a result's "type": {...}: data, walked)
            and key in _ENCODING_VALUE_KEYS
            and value in ENCODING_WORDS
            and not self._key_strength(key)  # (a key the store's rules name a secret: replaced, as without a redact_fn)
        ):
            return self._encoding_word(value)  # "role": "assistant", "type": "tool_call", "finish_reason": "stop"
        strength = self._key_strength(key)
        if strength and not isinstance(value, (Mapping, list, tuple)):
            return self._redact_single(key, value)
        if strength == 2:
            return self._redact_schema(value) if _is_schema(value) else self._redact_secret(value)
        if isinstance(key, str) and not isinstance(value, (bool, list, tuple)) and _key_names_an_id(key):
            if isinstance(value, Mapping):  # {"orders": {"5890820148538237": {...}}}: keyed by ids
                return {self._redact_id(k) if isinstance(k, str) else k: self._redact_member(k, v) for k, v in value.items()}
            if isinstance(value, (str, int, float)):
                return self._redact_id(value)
        return self.redact_value(value)  # (an object or a list below a weak secret name is ordinary data)

    def _redact_id(self, value: str | int | float) -> Any:
        """A value below a key that names an id (``order_id``, ``ean``, ``part_no``: :func:`_key_names_an_id`), or a key of
        an object there (``{"orders": {"5890820148538237": ...}}``): a number, or a number that starts a string, is not a
        card, a phone number or an SSN, as a number right after such a word in text is not (:func:`_after_an_id_word`:
        the same in JSON text, but for the keys of such an object, which text leaves redacted); anything else in it is
        redacted as anywhere."""
        if not isinstance(value, str):
            return self._redact_number(value, an_id=True) if self._rules else value
        first = len(value) - len(value.lstrip())
        if first == len(value) or value[first] in '{["' or "\\" in value:  # (JSON in it, escapes: read as any string is)
            return self.redact_value(value)
        last = len(value.rstrip())  # (only a whole value is an id: a number starting free text is not)
        found = [f for f in self._find(value) if not (f[2] in _NUMBER_KINDS and f[0] == first and f[1] == last)] if self._rules else []
        text = self._apply_found(value, found)
        return self._custom(text) if self.custom is not None else text

    def _redact_schema(self, value: Any, names: bool = False) -> Any:
        """A JSON Schema below a strong secret name (a tool's ``api_key`` parameter), or a part of it (``names``: a
        mapping of property names to schemas): walked as any value is, but the values it gives as examples, a default
        or a constant (:data:`_SCHEMA_VALUES`) replaced as secrets, at any depth (they may be a real key)."""
        if isinstance(value, Mapping):
            out = {}
            for key, item in value.items():
                if not names and key in _SCHEMA_VALUES:
                    out[self._redact_key(key)] = self._redact_secret(item)
                    continue
                strength = self._key_strength(key)
                if strength and not isinstance(item, (Mapping, list, tuple)):
                    item = self._redact_single(key, item)  # (as _redact_member does)
                elif strength == 2 and not _is_schema(item):
                    item = self._redact_secret(item)
                else:  # a schema's part, a schema below a strong secret name, an object or a list below a weak one
                    item = self._redact_schema(item, names=not names and key in _SCHEMA_NAME_MAPS and isinstance(item, Mapping))
                out[self._redact_key(key)] = item
            return out
        if isinstance(value, (list, tuple)):
            return [self._redact_schema(item) for item in value]
        return self.redact_value(value)

    def _redact_number(self, value: int | float, *, an_id: bool = False) -> int | float | str:
        """A JSON number (``{"card_number": 4111111111111111}``): an integer a built-in kind takes whole (a card number)
        becomes its placeholder, a string, and so does a whole-number float whose integer one takes
        (``4111111111111111.0``: a card column of a pandas frame with a missing value is float64); any other float is
        never a card, a phone number or an id, so no built-in kind applies to one. User patterns run over the number's
        JSON text, an integer's or a float's: one that takes it whole makes it the placeholder, one that takes part of
        it makes it its text with the placeholder in it. Any other number is kept as it is (and not remembered: a long
        list of numbers would fill the clean-text memo). Below a key that names an id (``an_id``) no built-in kind
        takes it (an order number is no card)."""
        if an_id:
            kind = None
        elif isinstance(value, int):
            kind = self._whole_int_kind(value)
        elif 1e12 <= value < 1e20 and value.is_integer():  # (no card has 20 digits; NaN and inf fail the first test)
            kind = self._whole_int_kind(int(value))
        else:
            kind = None
        if kind is not None:
            return self.placeholder(kind, value)
        if not self._user:
            return value
        text = json.dumps(value)
        found = list(self._matches(text, self._user))
        if not found:
            return value
        if len(found) == 1 and found[0][:2] == (0, len(text)):
            return self.placeholder(found[0][2], value)
        return self._apply_found(text, found)

    def _whole_int_kind(self, value: int) -> str | None:
        """The built-in kind that takes integer ``value`` whole, if one does. Of the built-in rules only the card rule
        matches a run of digits with no separator, letter or sign (:data:`_INT_KINDS`): tested in plain Python, with
        no regex, since a JSON payload can hold thousands of numbers."""
        if value < 10**12:  # (fewer than 13 digits, or negative: "-4111..." is no card in text either)
            return None
        text = str(value)
        for kind, check in _INT_KINDS:
            if kind in self._int_kinds and check(text):
                return kind
        return None

    def _redact_single(self, key: str, value: Any) -> Any:
        """A single value (no object or list) below secret name ``key``: replaced, unless it is a secret's metadata (a
        number, a boolean, null or an ISO date/time below ``password_version``, ``password_changed_at``: checked only
        here, below secret names), which is ordinary data (:func:`_names_secret_metadata`)."""
        if _is_metadata_value(value) and _names_secret_metadata(key):
            return self.redact_value(value)
        return self._redact_secret(value)

    def _redact_secret(self, value: Any) -> Any:
        """``value`` below a secret-named key: every string and number in it replaced (placeholders kept), objects and
        lists kept in shape, their keys redacted as keys are."""
        if isinstance(value, Mapping):
            return {self._redact_key(k): self._redact_secret(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._redact_secret(v) for v in value]
        if isinstance(value, str) and value:
            return value if PLACEHOLDER.fullmatch(value) else self.placeholder("secret", value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return self.placeholder("secret", value)
        return value

    def _matches(self, text: str, only: list[Rule] | None = None) -> Iterator[tuple[int, int, str, str]]:
        """(start, end, kind, quote) of each secret in ``text`` (found by the rules ``only``, else by all), its
        placeholder to be written in ``quote``; earlier rules win where matches overlap."""
        rules = self._rules if only is None else only
        lowered = _lower(text)
        seen: dict[Any, Any] = {}  # each prefilter's verdict: searched once, by the gate or the first rule that needs it
        if only is None and not self._could_match(lowered, seen):
            rules = self._user
        # the spans taken so far (placeholders already there, then matches), sorted and apart: a structure under a
        # secret name can hold thousands of values, each tested against the others
        starts: list[int] = []
        ends: list[int] = []
        placeholders: set[int] = set()  # the starts of those already there
        if "[REDACTED:" in text:
            for placeholder in PLACEHOLDER.finditer(text):
                starts.append(placeholder.start())
                ends.append(placeholder.end())
                placeholders.add(placeholder.start())
        for rule in rules:
            if rule.prefilter and not all(
                _found(seen, p, lowered, rule.needs, rule.digits) if p is rule.prefilter[-1] else _found(seen, p, lowered)
                for p in rule.prefilter
            ):
                continue
            for match in rule.finder(text) if rule.finder is not None else rule.pattern.finditer(text):
                if isinstance(match, _Found):
                    start, end, quote = match.start, match.end, match.quote
                else:
                    (start, end), quote = _secret_span(match, rule.group), ""
                at = bisect.bisect_right(starts, start)
                if start == end or (rule.check is not None and not rule.check(text[start:end])):
                    continue
                first = at - 1 if at and ends[at - 1] > start else at
                if first == len(starts) or starts[first] >= end:  # (overlaps nothing taken)
                    starts.insert(at, start)
                    ends.insert(at, end)
                    yield start, end, rule.kind, quote
                    continue
                # it overlaps matches of earlier rules: its parts outside them are redacted too (a password before an
                # API key in its passphrase window, an AWS4 signature after the access key id); next to a placeholder
                # already in the text, nothing (redacting a redacted text again changes nothing)
                # (but for an e-mail address whose user part another rule took, ``https://bob:pw@host``: the host left)
                if rule.kind != "email":
                    yield from self._parts_outside(text, start, end, first, rule.kind, starts, ends, placeholders)

    @staticmethod
    def _parts_outside(
        text: str, start: int, end: int, first: int, kind: str, starts: list[int], ends: list[int], placeholders: set[int]
    ) -> Iterator[tuple[int, int, str, str]]:
        """The parts of the match ``start:end`` outside the spans taken (``starts``/``ends`` from index ``first`` on),
        without white space around them, those with a letter or a digit, as :meth:`_matches` gives them (and takes
        them); none where the match overlaps a placeholder already in the text (``placeholders``)."""
        parts, pos, at = [], start, first
        while at < len(starts) and starts[at] < end:
            if starts[at] in placeholders:
                return
            if starts[at] > pos:
                parts.append((pos, starts[at]))
            pos = max(pos, ends[at])
            at += 1
        if pos < end:
            parts.append((pos, end))
        for part_start, part_end in parts:
            while part_start < part_end and text[part_start].isspace():
                part_start += 1
            while part_end > part_start and text[part_end - 1].isspace():
                part_end -= 1
            if not any(c.isalnum() for c in text[part_start:part_end]):
                continue
            at = bisect.bisect_right(starts, part_start)
            starts.insert(at, part_start)
            ends.insert(at, part_end)
            yield part_start, part_end, kind, ""

    def _find(self, text: str, *, first_only: bool = False) -> list[tuple[int, int, str, str]]:
        """:meth:`_matches` in ``text`` (only the first with ``first_only``); none for a text
        remembered clean, and a clean text is remembered."""
        if text in self._clean_texts:
            return []
        found = list(itertools.islice(self._matches(text), 1) if first_only else self._matches(text))
        if not found:
            self._remember_clean(text)
        return found

    def _no_match(self, text: str) -> bool:
        """Whether no rule matches in ``text`` (remembered for recent clean texts)."""
        return not self._find(text, first_only=True)

    def _remember_clean(self, text: str, memo: dict[str, None] | None = None) -> None:
        """Remember ``text`` as clean in ``memo`` (the raw-scan memo by default); both memos share one budget."""
        if len(text) > _CLEAN_MEMO_CHARS // 64:
            return
        if self._clean_chars + len(text) > _CLEAN_MEMO_CHARS:
            self._clean_texts.clear()  # simpler than an LRU, and rare: the memo holds hundreds of texts
            self._clean_json_texts.clear()
            self._clean_chars = 0
        (self._clean_texts if memo is None else memo)[text] = None
        self._clean_chars += len(text)

    def _could_match(self, lowered: str, seen: dict[Any, Any] | None = None) -> bool:
        """Whether a built-in prefilter finds something in ``lowered`` (each tried after its cheap
        tests); the verdicts go into ``seen``, for the rules."""
        seen = {} if seen is None else seen
        return any(_found(seen, pattern, lowered, needs, min_digits) for pattern, needs, min_digits in self._gates)

    def _secret_spaced_key(self, text: str) -> bool:
        """Whether JSON ``text`` has a member whose key is no identifier (``"Security Code"``, ``"Date of Birth"``,
        ``"API Key"``) but names a secret to the walk (:meth:`_key_strength`): the text rules find names without
        spaces or punctuation only, so such a text is walked, not scanned."""
        if not (self._secret_keys or self._extra_keys):
            return False
        return any(self._key_strength(key.group(1)) for key in _SPACED_KEY.finditer(text))

    def _clean_json(self, text: str) -> bool:
        """Whether JSON ``text`` surely holds nothing to redact: no rule matches in it (secret-named
        members included: the ``secret`` rule sees ``"password": ...``), and no JSON text sits two
        strings deep, where escaping would hide a member name from the rules.

        Escapes other than ``\\"`` and ``\\\\`` (``\\u0438``, ``\\/``, ``\\n``) would hide what they stand for from
        the rules (an address in Cyrillic, ``postgres:\\/\\/user:pw@``, a password after a line break): in a text
        holding them the rules run over it with those escapes decoded (and once more with those one string deeper
        decoded, where there are any)."""
        if self.custom is not None or '\\\\\\"' in text or self._secret_spaced_key(text):
            return False
        if "\\" not in text:
            return self._no_match(text)
        # (not the raw-text memo: a text holding escapes whose raw scan found nothing may hide a secret behind them)
        if text in self._clean_json_texts:
            return True
        view = _decode_escapes(text)  # what the strings say
        if self._secret_spaced_key(view) or not self._no_match(view):
            return False
        # a value read from a file or a form keeps its line break ("password": "Tr0ub4dor&3\n"): the view's line break ends
        # the quoted value the rules look for there, the escape in the text does not
        if ("\\n" in text or "\\r" in text) and not self._no_match(text):
            return False
        if "\\\\" in view:  # and the JSON texts in them
            deeper = _decode_escapes(view, deeper=True)
            if deeper != view and not self._no_match(deeper):
                return False
        self._remember_clean(text, self._clean_json_texts)
        return True

    def redact_json(self, value: Any) -> str:
        """Redacted JSON text of JSON-like ``value`` (compact, UTF-8).

        Clean data, the common case, costs one scan of its JSON text; data with something to
        redact is walked as :meth:`redact_value` does.
        """
        text = dumps(value)
        if not self.enabled or (self._clean_json(text) and '"type":"bytes"' not in text):  # (base64 hides what it holds)
            return text
        return dumps(self.redact_value(to_jsonable(value)))

    def _redact_string(self, text: str) -> str:
        stripped = text.strip()
        if len(stripped) > 1 and stripped[0] == stripped[-1] == '"' and "\\" in stripped:  # json.dumps("<a string>")
            try:
                inner = json.loads(stripped)
            except ValueError:
                inner = None
            if isinstance(inner, str):
                redacted = self._redact_string(inner)
                if redacted == inner:
                    return text
                start = text.index('"')
                return text[:start] + _dump_like(redacted, inner, stripped) + text[start + len(stripped) :]
        if (redacted := self._redact_json_text(text)) is not None:
            return redacted
        return self._redact_plain(text)

    def _redact_json_text(self, text: str) -> str | None:
        """``text`` redacted as the JSON object or array it holds (surrounding white space kept): walked as data
        (:meth:`redact_value`) and written back in its layout (:func:`_dump_like`), ``text`` itself when nothing in it
        is secret; ``None`` if it holds no JSON object or array (then the rules read it as text)."""
        stripped = text.strip()
        if not (len(stripped) > 1 and stripped[0] in "{[" and stripped[-1] in "}]"):
            return None
        if self._clean_json(stripped):
            return text
        if self._user and next(self._matches(stripped, self._user), None) is not None:
            return None  # (a user pattern matches the JSON text itself, "dob": "..."; the walk shows it single strings)
        try:
            data = _DECODER.decode(stripped)
        except (ValueError, RecursionError):  # (not JSON, or a key twice: read as text)
            return None
        if not isinstance(data, (dict, list)):
            return None
        start = text.index(stripped[0])
        try:
            redacted = self.redact_value(data)
            if redacted == data:
                return text
            if _dump_like(data, data, stripped) != stripped:  # (a layout or a number it cannot write back: 1e400, indent 3)
                return None
            return text[:start] + _dump_like(redacted, data, stripped) + text[start + len(stripped) :]
        except RecursionError:  # nested too deep to walk (hundreds of levels): read as text (see _unescaped)
            return text[:start] + self._redact_plain(_unescaped(data)) + text[start + len(stripped) :]

    def _redact_embedded_json(self, text: str) -> str:
        """``text`` with each JSON object or array inside it that holds an escape (or a JSON string holding one, read
        as :meth:`redact_value` reads a string) redacted as data and written back in its layout. A value that parses
        is read once, as a whole: the search goes on after its end (JSON lines, a nested object already walked).
        Parses that fail are bounded by the text's length (:data:`_EMBEDDED_WORK`)."""
        out, last, resume, failed = [], 0, 0, 0
        budget = _EMBEDDED_WORK * len(text) + 4096
        for start in _EMBEDDED_START.finditer(text):
            begin = start.start()
            if begin < resume:
                continue
            try:
                data, end = _DECODER.raw_decode(text, begin)
            except (ValueError, RecursionError) as exc:  # (RecursionError: '[' * 10_000, nested deeper than the decoder goes)
                # A failure costs more than what it read: an unclosed string reads to the text's end, and the error's
                # line number counts the text's newlines up to it; so failures are also counted (a log of Python reprs
                # fails at every '{'), keeping the work linear in the text.
                failed += 1
                budget -= max(getattr(exc, "pos", len(text)) - begin, 1)
                if budget < 0 or failed > _EMBEDDED_FAILURES:
                    break
                continue
            segment = text[begin:end]
            if isinstance(data, (dict, list)):
                resume = end  # read once, as a whole: its nested values are not tried again
            elif not isinstance(data, str):
                continue
            if not _HIDING_ESCAPE.search(segment):
                continue
            try:
                redacted = self._redact_string(data) if isinstance(data, str) else self.redact_value(data)
            except RecursionError:  # nested too deep to walk: its text with the escapes read, for the rules after this
                out += [text[last:begin], _unescaped(data)]
                last = resume = end
                continue
            if redacted != data:
                out += [text[last:begin], _dump_like(redacted, data, segment)]
                last = resume = end
        return "".join(out) + text[last:] if out else text

    def _apply_rules(self, text: str) -> str:
        return self._apply_found(text, self._find(text))

    def _apply_found(self, text: str, found: list[tuple[int, int, str, str]]) -> str:
        """``text`` with each of ``found`` (:meth:`_matches`) replaced by its placeholder."""
        replacements = [
            (start, end, quote + self.placeholder(kind, _bare_number(text[start:end]) if quote else text[start:end]) + quote)
            for start, end, kind, quote in found
        ]
        if not replacements:
            return text
        out, last = [], 0
        for start, end, placeholder in sorted(replacements):
            out.append(text[last:start])
            out.append(placeholder)
            last = end
        out.append(text[last:])
        return "".join(out)


def _unescaped(data: Any) -> str:
    """JSON ``data`` too deeply nested for the redaction's walk, as JSON text whose escapes are read (no ``\\u0040`` is
    left to hide an ``@`` from the rules, which then read it, secret-named keys included), in ``json.dumps``' layout. Too
    deep even for that, the ``RecursionError`` goes on: the value is not stored (a run fails whole rather than keep a
    secret)."""
    return json.dumps(data, ensure_ascii=False)


_SPACED_KEY = re.compile(r'\\?"([^"\\\n]{0,64}?[^\w"\\\n][^"\\\n]{0,64}?)\\?"\s*:')
"""A JSON member's key (up to 129 characters, no escapes; its quotes escaped too, a JSON text in a string) holding a
character no identifier has (a space, ``#``)."""

ENCODING_WORDS = frozenset(
    {
        # the member names of the messages capture stores (OpenTelemetry GenAI) and of OpenAI chat messages
        *("role", "parts", "type", "content", "id", "name", "arguments", "response", "finish_reason", "tool_calls"),
        *("tool_call_id", "function", "mime_type", "modality", "uri", "file_id"),
        # their fixed values: roles, part types, finish reasons
        *("system", "user", "assistant", "tool", "developer", "text", "tool_call", "tool_call_response", "reasoning"),
        *("blob", "file", "image", "audio", "video", "stop", "length", "content_filter", "error"),
    }
)
"""The member names and the fixed values of the message encoding capture stores, which hold no user data: a
``redact_fn`` is not called on a key that is one of them, nor on one of them as the value of ``role``, ``type`` or
``finish_reason`` (the same word anywhere else, a tool's result ``"error"``, is the run's data and given to it). A
function called on every string of a run (a model-based scrubber costs milliseconds a call) spent 120 of its 157 calls on
them in a run of three tool calls (``role`` 13 times, ``parts``, ``type``, ``assistant``, ...)."""
_ENCODING_VALUE_KEYS = frozenset({"role", "type", "finish_reason"})
"""The members whose value may be a fixed word of :data:`ENCODING_WORDS`."""

_IN_SHORT_KEY = re.compile(r"\d|[sr]k_|whsec_|AKIA|ASIA")
"""Found in every short identifier (under 32 characters) a built-in rule matches in: the provider keys that are
identifiers (``AKIA...``, ``sk_live_...``, ``whsec_...``) start so, and the other kinds that fit (an IBAN without
spaces) have digits. Other short identifiers (``role``, ``order_id``) are JSON keys not scanned."""

_NUMBER_KINDS = frozenset({"credit_card", "phone", "us_ssn"})
"""The kinds of numbers an id word before them rules out (:func:`_after_an_id_word`)."""

_INT_KINDS: tuple[tuple[str, Callable[[str], bool]], ...] = (("credit_card", _is_card),)
"""The built-in kinds whose rule matches a JSON integer's text whole (digits alone, 13 or more), with the test that
says so. No other does: an IBAN starts with letters, an SSN, a phone number or an IP address needs a separator, a
``+`` or a dot, the key and token kinds need letters (tests/capture/test_redaction_numbers_whole.py checks this)."""

_EMBEDDED_START = re.compile(r"[{\[](?=\s*[\"{\[\]}])|\"(?=[{\[](?:\s|\\[nrt])*(?:\\\"|[{\[\]}]))")
"""Where a JSON value may start inside text: a ``{`` or ``[`` before a quote or a bracket, whitespace between them
allowed (``json.dumps(body, indent=2)``), or a JSON string that holds such JSON (``"{\\n  \\"email\\": ...}"``)."""
_EMBEDDED_WORK = 16
"""Characters that failed parses of :meth:`Redactor._redact_embedded_json` may read, per character of the text (a
parse that succeeds is read once and skipped, so it costs its length). Each object or array still open where a cut-off
JSON text ends fails after reading to the end: this many levels of them are read through before the rest is given up."""
_EMBEDDED_FAILURES = 64
"""Failed parses :meth:`Redactor._redact_embedded_json` makes at most in one text (then the rest of the text is read by
the rules alone, as a text without escapes is): each costs up to the text's length (see there)."""
_HIDING_ESCAPE = re.compile(r"\\[u/nrtbf]")
"""An escape that hides what it stands for from the rules (:data:`_SIMPLE_ESCAPES`, ``\\uXXXX``)."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members as a dict, or ``ValueError`` where a key repeats: ``json`` keeps the last value only, and
    the walk would not see (and the text written back would lose) the first; such a text is read as text."""
    data = dict(pairs)
    if len(data) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return data


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys)

_CLEAN_MEMO_CHARS = 4_000_000
"""Characters of clean text a redactor remembers at most (texts over 1/64 of it are not kept)."""


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
"""A JSON number's text."""


def _bare_number(value: str) -> str | int | float:
    """A bare value written as a string (``"pin": 4821`` in JSON text): the number it is, if it is one, so that its
    pseudonym is the one :meth:`Redactor.redact_value` gives the number."""
    if _JSON_NUMBER.fullmatch(value) is None:
        return value
    number = json.loads(value)
    return number if json.dumps(number) == value else value  # (1.50 or 1e3: the text, its only spelling)


def _lower(text: str) -> str:
    """``text.lower()`` where that keeps every position (it does for ASCII); else ``text`` itself,
    searched with the lower-case prefilters after an ASCII-only lowering."""
    lowered = text.lower()
    if len(lowered) == len(text):
        return lowered
    return "".join(c.lower() if c.isascii() else c for c in text)


def _gates(rules: Iterable[Rule]) -> list[tuple[Pattern[str], tuple[str, ...], int]]:
    """Each distinct last prefilter of ``rules`` with its cheap tests; those with a string to look for first."""
    gates: dict[str, tuple[Pattern[str], tuple[str, ...], int]] = {}
    for rule in rules:
        gates.setdefault(rule.prefilter[-1].pattern, (rule.prefilter[-1], rule.needs, rule.digits))
    return sorted(gates.values(), key=lambda gate: (not gate[1], not gate[2]))


_DIGITS = object()
"""``seen``'s key for the number of digits in the text."""


def _found(seen: dict[Any, Any], pattern: Pattern[str], text: str, needs: tuple[str, ...] = (), min_digits: int = 0) -> bool:
    """Whether ``pattern`` finds something in ``text``, searched once per text (``seen``), and not
    at all when a cheap test says it cannot: none of the strings it ``needs`` is there, or fewer
    than ``min_digits`` digits are."""
    found = seen.get(pattern)
    if found is None:
        cannot = (needs and not any(word in text for word in needs)) or (min_digits and _digit_count(seen, text) < min_digits)
        found = not cannot and pattern.search(text) is not None
        seen[pattern] = found
    return found


def _digit_count(seen: dict[Any, Any], text: str) -> int:
    digits = seen.get(_DIGITS)
    if digits is None:  # \d also matches other scripts' digits: count only in ASCII text
        digits = seen[_DIGITS] = sum(map(text.count, "0123456789")) if text.isascii() else len(text)
    return digits


def _secret_span(match: re.Match[str], group: str | int) -> tuple[int, int]:
    """The span of the secret itself: the rule's group, without surrounding quotes."""
    if group == "keep":
        return match.end("keep"), match.end()
    start, end = match.span(group)
    value = match.group(group) or ""
    for quote in ('\\"', '"', "'", "`"):
        if len(value) >= 2 * len(quote) and value.startswith(quote) and value.endswith(quote):
            return start + len(quote), end - len(quote)
    return start, end


def _user_rule(kind: str, pattern: str | Pattern[str]) -> Rule:
    try:
        compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    except re.error as exc:
        from ee_middleware.errors import ConfigError

        raise ConfigError(f"Redaction pattern {pattern!r} for kind {kind!r} is not a valid regex: {exc}") from exc
    if "value" in compiled.groupindex:
        return Rule(kind, compiled, group="value")
    if "keep" in compiled.groupindex:  # the older form: a leading group that stays, the rest replaced
        return Rule(kind, compiled, group="keep")
    return Rule(kind, compiled)


_SIMPLE_ESCAPES = (("\\n", "\n"), ("\\t", "\t"), ("\\r", "\r"), ("\\/", "/"), ("\\b", "\b"), ("\\f", "\f"))
"""The JSON escapes other than ``\\uXXXX`` that hide what a rule sees (``postgres:\\/\\/``, a line break); not ``\\"``,
which the rules handle where it is."""
_UNICODE_ESCAPES = re.compile(r"(?:\\u[0-9a-fA-F]{4})+")
_BACKSLASHES = "\ue000"
"""Stands for an escaped backslash while the other escapes are decoded (a text holding it is decoded by a slower way)."""


def _decode_escapes(text: str, *, deeper: bool = False) -> str:
    """JSON ``text`` with the escapes of :data:`_SIMPLE_ESCAPES` and ``\\uXXXX`` decoded (a ``"`` or ``\\`` written
    ``\\"``, ``\\\\``), for the rules to scan: what its strings say, in its layout. With ``deeper``, those after any run
    of backslashes, run dropped: what the JSON texts held in its strings say too (the rules may find more than there
    is, a backslash before a letter taken for an escape, and the value is then walked: never less)."""
    if deeper:
        while "\\\\" in text:
            text = text.replace("\\\\", "\\")
        return _decode_escapes(text)
    escaped = "\\\\" in text
    if escaped:
        if _BACKSLASHES in text:
            return "\\\\".join(_decode_escapes(part) for part in text.split("\\\\"))
        text = text.replace("\\\\", _BACKSLASHES)
    for escape, char in _SIMPLE_ESCAPES:  # str.replace: far faster than a regex with a function
        if escape in text:
            text = text.replace(escape, char)
    if "\\u" in text:
        text = _UNICODE_ESCAPES.sub(_decoded_unicode, text)
    return text.replace(_BACKSLASHES, "\\\\") if escaped else text


def _decoded_unicode(match: re.Match[str]) -> str:
    """A run of ``\\uXXXX`` escapes decoded (surrogate pairs joined), a ``"`` or ``\\`` in it written escaped."""
    try:
        chars = json.loads(f'"{match.group()}"')
    except ValueError:
        return match.group()
    return chars.replace("\\", "\\\\").replace('"', '\\"')


def _dump_like(value: Any, original: Any, text: str) -> str:
    """``value`` as JSON in the layout ``text`` (the JSON of ``original``) was written in."""
    for options in ({"separators": (",", ":")}, {}, {"indent": 2}, {"indent": 4}):
        for ensure_ascii in (False, True):
            if json.dumps(original, ensure_ascii=ensure_ascii, **options) == text:
                return json.dumps(value, ensure_ascii=ensure_ascii, **options)
    return json.dumps(value, ensure_ascii=False)


# --- the per-store salt -------------------------------------------------------------------------


SALT_BYTES = 32
MIN_KEY_BYTES = 8
"""The shortest ``redaction.key`` ee reads: ee makes 32 bytes, but ingest kept a caller's salt as it was before it
refused short ones (the Redactor's own example has 10), and those stores must stay readable; a key of 1-7 bytes is
guessed by trying them all."""
"""How long a pseudonym key ee makes is (``redaction.key``: this many random bytes, written as twice as many hex digits);
a shorter one is refused (:func:`store_salt`)."""

NEW_KEY_ENV = "EE_NEW_REDACTION_KEY"
"""Set to 1 to have a new pseudonym key made for a store that already holds runs but lost its ``redaction.key``
(:func:`store_salt`): the values in the runs from then on get other tags than in those already stored."""


def store_salt(store: Any) -> bytes | None:
    """The pseudonym salt kept with a store (``redaction.key``, created on first use: owner-only in a local folder);
    ``None`` for a store that keeps no metadata (neither ``read_meta``/``write_meta`` nor a local folder,
    :mod:`ee_middleware.store.metadata`).

    Created with an exclusive write, and read back: writers in many processes starting at once agree on one salt.

    Raises :class:`~ee_middleware.errors.ConfigError` naming the file and the fix for a key that is empty, not hex or
    shorter than the :data:`SALT_BYTES` ee makes (a partial copy or restore: with an empty key anyone could recompute a
    value's tag), and for a missing key in a store that already holds runs recorded with pseudonyms (a new one would
    give every value another tag than in those runs, silently), unless :data:`NEW_KEY_ENV` asks for a new one."""
    from ee_middleware.store.metadata import keeps_metadata, read_meta, write_meta

    if not keeps_metadata(store):
        return None
    kept = read_meta(store, SALT_FILE)
    if kept is None:
        from ee_middleware.errors import ConfigError

        try:
            _refuse_new_key_for_stored_runs(store)
        except ConfigError:
            kept = read_meta(store, SALT_FILE)  # another writer made the key (and stored a run) since it was read
            if kept is None:
                raise
    if kept is None:
        write_meta(store, SALT_FILE, (secrets.token_hex(SALT_BYTES) + "\n").encode(), exclusive=True)
        kept = read_meta(store, SALT_FILE)
        if kept is None:
            from ee_middleware.errors import StoreError

            raise StoreError(f"{store!r} did not keep the pseudonym salt: read_meta({SALT_FILE!r}) is None right after write_meta.")
    return _checked_salt(store, kept)


def _checked_salt(store: Any, kept: bytes) -> bytes:
    """The key ``kept`` (``redaction.key``'s bytes: hex digits, a line end after them) as bytes; a
    :class:`~ee_middleware.errors.ConfigError` naming the file and the fix when it is not a key ee made."""
    text = kept.strip()
    salt = None
    try:
        salt = bytes.fromhex(text.decode("ascii"))
    except ValueError:  # (UnicodeDecodeError is one)
        pass
    if salt is not None and len(salt) >= MIN_KEY_BYTES:
        return salt
    if not text:
        what = "is empty (a partial copy or restore of the store?)"
    elif salt is None:
        what = f"does not hold a key of hex digits (its {len(text)} byte(s) are not all hex digits)"
    else:
        what = f"holds a key of {len(salt)} byte(s), shorter than the {MIN_KEY_BYTES} ee reads (it makes {SALT_BYTES})"
    from ee_middleware.errors import ConfigError
    from ee_middleware.store.metadata import meta_where

    raise ConfigError(
        f"{meta_where(store, SALT_FILE)} {what}. It is the secret key of this store's pseudonym tags "
        "([REDACTED:<kind>:<tag>]); a key that is empty or short lets anyone who guesses a value recompute its tag, so "
        f"ee does not record, replay or read with it. Restore the file from a backup of the store (ee writes it as "
        f"{2 * SALT_BYTES} hex digits). Or, if the tags of the runs recorded from now on need not match those already "
        f"stored, delete it and set {NEW_KEY_ENV}=1 for one run: a new key is made, and every value then gets another "
        "tag than in the stored runs (datasets no longer link them, and replay's re-redacted observations of the stored "
        "runs no longer equal the recorded ones)."
    )


def _refuse_new_key_for_stored_runs(store: Any) -> None:
    """Refuse to make a new pseudonym key for a store whose stored runs hold tags (``[REDACTED:<kind>:<tag>]``) made
    with the one it lost: a new one would give every value another tag, silently. Unless :data:`NEW_KEY_ENV` is set
    (then warned about). A store whose runs hold no tags (written before any rule or pseudonym) gets its key as before."""
    from ee_middleware.capture.config import env_flag
    from ee_middleware.errors import ConfigError
    from ee_middleware.store.metadata import meta_where

    held = _tagged_runs(store)
    if not held:
        return
    where = meta_where(store, SALT_FILE)
    if env_flag(NEW_KEY_ENV):
        logger.warning(
            "ee-middleware: %s was missing in a store whose runs hold pseudonym tags (%s); %s=1 is set, so a new pseudonym "
            "key is made: values get other tags from now on than in the runs already stored.",
            where,
            held,
            NEW_KEY_ENV,
        )
        return
    raise ConfigError(
        f"{where} is missing, but this store already holds runs ({held}) whose pseudonym tags ([REDACTED:<kind>:<tag>]) "
        "were made with it. A new key would give every value another tag than in those runs, silently: datasets would no "
        "longer link them, and replay's re-redacted observations of the stored runs would no longer equal the recorded "
        f"ones. Restore the file from a backup of the store. Or, if the tags from now on need not match the stored ones, "
        f"start new pseudonyms: set {NEW_KEY_ENV}=1 for one run, which makes a new key."
    )


_TAG = r"\[REDACTED:[A-Za-z0-9_.-]+:[0-9a-f]{8}\]"
"""A placeholder with a pseudonym tag (:data:`PLACEHOLDER`, the tag required), as a polars regex."""


def _tagged_runs(store: Any) -> str:
    """The runs of ``store`` described (``3 trajectories``) when a text of them holds a pseudonym tag; empty when none
    does (or the store holds none). Read through the store's API (trajectories, then steps): only when a key is to be
    made for a store that holds something. A store that cannot be read counts as tagged when it has a store's files."""
    import polars as pl

    from ee_middleware.store.metadata import meta_folder

    folder = meta_folder(store)
    files = ""
    if folder is not None and folder.is_dir():
        from ee_middleware.store.local import _store_files

        files = ", ".join(_store_files(folder))
        if not files:
            return ""
    reader, opened = store, False
    try:
        if not callable(getattr(store, "trajectories", None)) and folder is not None:
            # a writer of the store that reads nothing itself (a replay job's spool): read its folder as a store
            from ee_middleware.store.local import LocalExperienceStore

            reader, opened = LocalExperienceStore(folder), True
        trajectories = reader.trajectories()
        if trajectories.height == 0:
            return ""
        held = f"{trajectories.height} trajectories"
        for table in (trajectories, reader.steps()):
            if table.height and table.select(pl.any_horizontal(pl.col(pl.String).str.contains(_TAG)).any()).item():
                return held
    except Exception:  # noqa: BLE001 - a store that cannot be read now: what it holds may be tagged
        return files
    finally:
        if opened:
            reader.close()
    return ""


NO_REDACTION = Redactor(defaults=False)
"""A redactor that changes nothing (use only for data known to hold no secrets)."""
