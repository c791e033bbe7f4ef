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
different stores, or no salt, give unrelated tags.

:meth:`Redactor.redact_value` walks JSON-like data: values under secret-named keys (``password``,
``db_password``, ``apiKey``, ``client_secret``, ...) are replaced whole, and a string that holds
JSON (a tool returning ``'{"password": ...}'`` as text) is parsed, redacted as data and written
back in the same layout. :meth:`Redactor.redact_text` works on any text, JSON text included: it
never consumes a quote or a backslash escape, so valid JSON stays valid.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from re import Pattern
from typing import Any

from ee_middleware.messages import dumps, to_jsonable

logger = logging.getLogger("ee_middleware.capture")

PLACEHOLDER = re.compile(r"\[REDACTED:[A-Za-z0-9_.-]+(?::[0-9a-f]{8})?\]")
"""What a placeholder looks like (rules never match inside one, so redacting twice changes nothing)."""

SALT_FILE = "redaction.key"
"""The per-store pseudonym salt, beside the store's own files (owner-only; never exported)."""

# --- validators: cut false positives on numbers -------------------------------------------------


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2 == 1:
            n = n * 2 - 9 if n * 2 > 9 else n * 2
        total += n
    return total % 10 == 0


def _is_card(text: str) -> bool:
    digits = re.sub(r"[ -]", "", text)
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

_STRONG_WORDS = {"password", "passwd", "passphrase", "passcode", "pwd", "secret", "secrets", "credential", "credentials"}
_LAST_WORDS = {"token", "authorization", "cookie", "apikey", "pass", "pin", "cvv", "cvc", "ssn", "privatekey", "dsn"}
_LAST_PAIRS = {
    ("api", "key"),
    ("access", "key"),
    ("private", "key"),
    ("secret", "key"),
    ("signing", "key"),
    ("encryption", "key"),
    ("master", "key"),
    ("client", "key"),
    ("session", "id"),
}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a key or variable name says its value is a secret (``DB_PASSWORD``, ``apiKey``,
    ``client_secret``, ``x-auth-token``; not ``max_tokens``, ``primary_key`` or ``token_count``)."""
    words = [w for w in re.split(r"[^a-z0-9]+", _CAMEL.sub("_", name).lower()) if w]
    if not words or len(name) > 64:
        return False
    if _STRONG_WORDS.intersection(words):
        return True
    return words[-1] in _LAST_WORDS or tuple(words[-2:]) in _LAST_PAIRS


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
    name_group: str | None = None
    """A group holding a name that must be secret-named (:func:`is_secret_name`)."""
    finder: Callable[[str], Iterator[re.Match[str]]] | None = None
    """Finds the matches instead of ``pattern.finditer`` (where a plain scan would be slow)."""
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


_NAME_WORD_LIST = ("pass", "pwd", "secret", "token", "key", "auth", "cookie", "credential", "pin", "cvv", "cvc", "ssn", "dsn", "session")
_NAME_WORDS = "(?:" + "|".join(_NAME_WORD_LIST) + ")"
_NAME_WORD = re.compile(_NAME_WORDS)  # searched in lower-cased text
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _assignments(text: str) -> Iterator[re.Match[str]]:
    """``name = value`` / ``"name": value`` matches of the ``secret`` rule, looked for only around
    the words secret names are made of (scanning every word of a long text with the full rule is
    ten times slower)."""
    last = -1
    for hit in _NAME_WORD.finditer(_lower(text)):
        start = hit.start()
        while start > 0 and text[start - 1] in _NAME_CHARS:
            start -= 1
        while start < hit.start() and not (text[start].isalpha() or text[start] == "_"):
            start += 1
        if start == last:
            continue
        last = start
        match = _ASSIGNMENT.match(text, start)
        if match is not None:
            yield match


_VALUE = r"""(?P<value>\\"(?:[^"\\]|\\[^"])*\\"|"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s"'`,;&|}\])\\]+)"""

_ASSIGNMENT = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_.-]{0,63}+)\\?[\"']?\s*[:=]\s*(?=" + _VALUE + ")")

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
        re.compile(r"(?<![A-Za-z0-9/+=])(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),
        _having(r"[a-z0-9/+]{40}"),
        "value",
        _is_aws_secret,
    ),
    Rule(
        "secret",
        # the value is matched in a lookahead, so that "Note: password: x" is tried at "password" too
        _ASSIGNMENT,
        _having(_NAME_WORDS + r"[a-z0-9_.-]*+\\?[\"']?\s*[:=]"),
        "value",
        lambda v: v.strip("\\\"'").lower() not in ("bearer", "basic", "", "null", "none", "true", "false"),
        name_group="name",
        finder=lambda text: _assignments(text),
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
    Rule("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), _having("@")),
    Rule("credit_card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _LONG_NUMBER, check=_is_card, digits=7),
    Rule("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"), _LONG_NUMBER, check=_is_iban, digits=7),
    Rule("us_ssn", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), _LONG_NUMBER, digits=7),
    Rule(
        "phone",
        re.compile(
            r"(?:(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\d])"
            r"|(?<![\w+(])(?:\(\d{3}\)\s?|\d{3}[-. ])\d{3}[-.]\d{4}(?![\d-]))"
        ),
        _LONG_NUMBER,
        check=_is_phone,
        digits=7,
    ),
    Rule(
        "ip_address",
        re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])"),
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
    "secret": (True, "values under secret-named keys: JSON fields, key=value, DB_PASSWORD=... environment lines"),
    "password": (True, 'passwords in prose ("my password is ...")'),
    "email": (True, "e-mail addresses"),
    "credit_card": (True, "payment card numbers (Luhn-checked)"),
    "iban": (True, "IBANs (checksum-checked)"),
    "us_ssn": (True, "US social security numbers (123-45-6789)"),
    "phone": (True, "phone numbers (+ international, or US (415) 555-0134 / 415-555-0134)"),
    "ip_address": (False, "IPv4 addresses"),
}
"""Every built-in kind: (on by default, what it catches)."""

DEFAULT_KINDS = tuple(kind for kind, (on, _) in KINDS.items() if on)


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RedactionRules:
    """What to redact, as plain data (so it can be stored with a store and reused by every writer).

    ``defaults`` turns the built-in kinds on as a group; ``kinds`` switches single built-in kinds
    on or off (``{"phone": False, "ip_address": True}``); ``patterns`` adds ``{kind: regex}``
    rules (a group named ``value`` marks the part to replace; the rest of the match is kept).
    """

    defaults: bool = True
    kinds: Mapping[str, bool] = field(default_factory=dict)
    patterns: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            from ee_middleware.errors import ConfigError

            raise ConfigError(f"Unknown redaction kind(s) {', '.join(unknown)}. Built-in kinds: {', '.join(KINDS)}.")

    def enabled_kinds(self) -> list[str]:
        """The built-in kinds this configuration applies."""
        return [k for k, (on, _) in KINDS.items() if self.kinds.get(k, on and self.defaults)]

    def to_dict(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "kinds": dict(self.kinds), "patterns": {k: str(v) for k, v in self.patterns.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RedactionRules:
        return cls(
            defaults=bool(data.get("defaults", True)), kinds=dict(data.get("kinds") or {}), patterns=dict(data.get("patterns") or {})
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
    string. ``defaults=`` and ``extra_patterns=`` are shorthands for the same fields of ``rules``.
    ``on_replace(pseudonym, value)`` is told of every pseudonym made (with a salt only): capture's
    redaction vault (:mod:`ee_middleware.capture.vault`) is fed this way.
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
    ) -> None:
        rules = rules or RedactionRules()
        if defaults is not None:
            rules = RedactionRules(defaults=defaults, kinds=rules.kinds, patterns=rules.patterns)
        self.rules = rules
        self.custom = custom
        self.salt = salt.encode() if isinstance(salt, str) else salt
        self.on_replace = on_replace if self.salt is not None else None
        enabled = set(rules.enabled_kinds())
        self._builtin = [r for r in BUILTIN_RULES if r.kind in enabled]
        self._secret_keys = "secret" in enabled
        extras = extra_patterns.items() if isinstance(extra_patterns, Mapping) else (("custom", p) for p in extra_patterns)
        self._user = [_user_rule(kind, pattern) for kind, pattern in [*rules.patterns.items(), *extras]]
        self._rules = self._builtin + self._user
        # the built-in prefilters find nothing in most strings: then no built-in rule can match
        self._gates = _gates(self._builtin)
        # texts seen lately in which no rule matched (a system prompt, the tool list, a repeated
        # tool result or task): not scanned again; bounded by _CLEAN_MEMO_CHARS in all
        self._clean_texts: dict[str, None] = {}
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

    def placeholder(self, kind: str, value: str) -> str:
        """``[REDACTED:<kind>]``, or ``[REDACTED:<kind>:<tag>]`` with a salt (same value, same tag)."""
        if self.salt is None:
            return f"[REDACTED:{kind}]"
        tag = hmac.new(self.salt, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:8]
        placeholder = f"[REDACTED:{kind}:{tag}]"
        if self.on_replace is not None:
            self.on_replace(placeholder, value)
        return placeholder

    def redact_text(self, text: str) -> str:
        """Return ``text`` with every secret replaced by its placeholder."""
        if self._rules and text:
            text = self._apply_rules(text)
        if self.custom is not None:
            text = self.custom(text)
        return text

    def redact_value(self, value: Any) -> Any:
        """Redact every string inside JSON-like data (keys included); values under secret-named keys
        go whole, and strings that hold JSON are redacted as JSON and written back in their layout."""
        if isinstance(value, str):
            return self._redact_string(value)
        if isinstance(value, Mapping):
            return {self._redact_key(k): self._redact_member(k, v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_value(v) for v in value]
        return value

    redact = redact_value
    """Alias of :meth:`redact_value`."""

    # --- internals ---

    def _redact_key(self, key: Any) -> Any:
        if not isinstance(key, str) or (key.isidentifier() and len(key) < 32 and not self._user and self.custom is None):
            return key  # "role", "content", "order_id": no built-in kind is a short identifier
        return self.redact_text(key)

    def _redact_member(self, key: Any, value: Any) -> Any:
        scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != ""
        if scalar and self._secret_keys and isinstance(key, str) and is_secret_name(key):
            text = str(value)
            return text if PLACEHOLDER.fullmatch(text) else self.placeholder("secret", text)
        return self.redact_value(value)

    def _matches(self, text: str) -> Iterator[tuple[int, int, str]]:
        """(start, end, kind) of each secret in ``text``; earlier rules win where matches overlap."""
        rules = self._rules
        lowered = _lower(text)
        seen: dict[Any, Any] = {}  # each prefilter's verdict: searched once, by the gate or the first rule that needs it
        if not self._could_match(lowered, seen):
            rules = self._user
        taken: list[tuple[int, int]] = [m.span() for m in PLACEHOLDER.finditer(text)] if "[REDACTED:" in text else []
        for rule in rules:
            if rule.prefilter and not all(
                _found(seen, p, lowered, rule.needs, rule.digits) if p is rule.prefilter[-1] else _found(seen, p, lowered)
                for p in rule.prefilter
            ):
                continue
            for match in rule.finder(text) if rule.finder is not None else rule.pattern.finditer(text):
                start, end = _secret_span(match, rule.group)
                if start == end or any(s < end and start < e for s, e in taken):
                    continue
                if rule.check is not None and not rule.check(text[start:end]):
                    continue
                if rule.name_group is not None and not is_secret_name(match.group(rule.name_group)):
                    continue
                taken.append((start, end))
                yield start, end, rule.kind

    def _find(self, text: str, *, first_only: bool = False) -> list[tuple[int, int, str]]:
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

    def _remember_clean(self, text: str) -> None:
        if len(text) > _CLEAN_MEMO_CHARS // 64:
            return
        if self._clean_chars + len(text) > _CLEAN_MEMO_CHARS:
            self._clean_texts.clear()  # simpler than an LRU, and rare: the memo holds hundreds of texts
            self._clean_chars = 0
        self._clean_texts[text] = None
        self._clean_chars += len(text)

    def _could_match(self, lowered: str, seen: dict[Any, Any] | None = None) -> bool:
        """Whether a built-in prefilter finds something in ``lowered`` (each tried after its cheap
        tests); the verdicts go into ``seen``, for the rules."""
        seen = {} if seen is None else seen
        return any(_found(seen, pattern, lowered, needs, min_digits) for pattern, needs, min_digits in self._gates)

    def _clean_json(self, text: str) -> bool:
        """Whether JSON ``text`` surely holds nothing to redact: no rule matches in it (secret-named
        members included: the ``secret`` rule sees ``"password": ...``), and no JSON text sits two
        strings deep, where escaping would hide a member name from the rules."""
        return self.custom is None and '\\\\\\"' not in text and self._no_match(text)

    def redact_json(self, value: Any) -> str:
        """Redacted JSON text of JSON-like ``value`` (compact, UTF-8).

        Clean data, the common case, costs one scan of its JSON text; data with something to
        redact is walked as :meth:`redact_value` does.
        """
        text = dumps(value)
        if not self.enabled or self._clean_json(text):
            return text
        return dumps(self.redact_value(to_jsonable(value)))

    def _redact_string(self, text: str) -> str:
        stripped = text.strip()
        if len(stripped) > 1 and stripped[0] in "{[" and stripped[-1] in "}]":
            if self._clean_json(stripped):
                return text
            try:
                data = json.loads(stripped)
            except ValueError:
                data = None
            if isinstance(data, (dict, list)):
                redacted = self.redact_value(data)
                if redacted == data:
                    return text
                start = text.index(stripped[0])
                return text[:start] + _dump_like(redacted, data, stripped) + text[start + len(stripped) :]
        return self.redact_text(text)

    def _apply_rules(self, text: str) -> str:
        replacements = [(start, end, self.placeholder(kind, text[start:end])) for start, end, kind in self._find(text)]
        if not replacements:
            return text
        out, last = [], 0
        for start, end, placeholder in sorted(replacements):
            out.append(text[last:start])
            out.append(placeholder)
            last = end
        out.append(text[last:])
        return "".join(out)


_CLEAN_MEMO_CHARS = 4_000_000
"""Characters of clean text a redactor remembers at most (texts over 1/64 of it are not kept)."""


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


def _dump_like(value: Any, original: Any, text: str) -> str:
    """``value`` as JSON in the layout ``text`` (the JSON of ``original``) was written in."""
    for options in ({"separators": (",", ":")}, {}, {"indent": 2}, {"indent": 4}):
        for ensure_ascii in (False, True):
            if json.dumps(original, ensure_ascii=ensure_ascii, **options) == text:
                return json.dumps(value, ensure_ascii=ensure_ascii, **options)
    return json.dumps(value, ensure_ascii=False)


# --- the per-store salt -------------------------------------------------------------------------


def store_salt(store: Any) -> bytes | None:
    """The pseudonym salt kept in a local store's folder (created on first use, owner-only);
    ``None`` for a store without a local folder."""
    root = getattr(store, "root", None)
    if root is None:
        return None
    path = Path(root) / SALT_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{SALT_FILE}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive: two processes starting at once agree on one salt
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


NO_REDACTION = Redactor(defaults=False)
"""A redactor that changes nothing (use only for data known to hold no secrets)."""
