"""Scrub secrets and e-mail addresses from everything before it is written or exported.

On by default. The built-in rules catch API keys of the common providers, bearer tokens, JWTs,
private-key blocks, ``password=...``-style assignments and e-mail addresses. Users add regular
expressions (``extra_patterns``) or a function ``str -> str`` (``custom``), or turn the defaults off.
Values under keys that name a secret (``password``, ``api_key``, ``token``, ...) are replaced whole.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from re import Pattern
from typing import Any

REPLACEMENT = "[REDACTED:{kind}]"

_SECRET_NAMES = (
    r"password|passwd|pwd|secret|client_secret|api[_-]?key|access[_-]?token|auth[_-]?token"
    r"|authorization|refresh[_-]?token|private[_-]?key"
)

# Applied in this order; each rule leaves the placeholders of the ones before it alone.
DEFAULT_PATTERNS: dict[str, str] = {
    # a JSON member whose name says it is a secret: the whole string value goes
    "secret": rf'(?i)(?P<keep_secret>"(?:{_SECRET_NAMES})"\s*:\s*)"(?:[^"\\]|\\.)*"',
    "private_key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    "bearer_token": r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*",
    "jwt": r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "api_key": (
        r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}"
        r"|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|hf_[A-Za-z0-9]{30,}"
        r"|glpat-[A-Za-z0-9_-]{20,})"
    ),
    "password": (
        # not "authorization": "Authorization: Bearer <token>" is the bearer rule's, whole
        r"(?i)(?P<keep>\b(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|auth[_-]?token)"
        r"\b[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED:)[^\s\"',;}\\]+"
    ),
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
}

SECRET_KEY = re.compile(rf"(?i)^(?:{_SECRET_NAMES})$")


TRIGGERS: dict[str, tuple[str, ...]] = {
    "secret": ("pass", "pwd", "secret", "key", "token", "authorization"),
    "private_key": ("private key",),
    "bearer_token": ("bearer",),
    "jwt": ("eyj",),
    "api_key": ("sk-", "akia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "xox", "aiza", "hf_", "glpat-"),
    "password": ("pass", "pwd", "secret", "key", "token"),
    "email": ("@",),
}
"""A built-in rule runs only when one of its triggers occurs in the lower-cased text: ordinary
agent text has none, and a substring test is far cheaper than a regex scan."""


def _replacer(kind: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        groups = match.groupdict()
        if "keep_secret" in groups:  # keep the JSON member name and quotes: the text stays valid JSON
            return f'{groups["keep_secret"]}"{REPLACEMENT.format(kind=kind)}"'
        return (groups.get("keep") or "") + REPLACEMENT.format(kind=kind)

    return replace


_DEFAULT_RULES = [(re.compile(pattern), TRIGGERS[kind], _replacer(kind)) for kind, pattern in DEFAULT_PATTERNS.items()]


@dataclass
class Redactor:
    """Replaces secrets in strings and in nested JSON data.

    >>> Redactor().redact_text("mail bob@example.com, key sk-abcdefghijklmnopqrstuv")
    'mail [REDACTED:email], key [REDACTED:api_key]'
    """

    defaults: bool = True
    extra_patterns: Mapping[str, str | Pattern[str]] | Iterable[str | Pattern[str]] = ()
    custom: Callable[[str], str] | None = None
    _rules: list[tuple[str, Pattern[str]]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rules: list[tuple[str, Pattern[str]]] = []
        extras = self.extra_patterns
        items = extras.items() if isinstance(extras, Mapping) else (("custom", p) for p in extras)
        for kind, pattern in items:
            try:
                rules.append((kind, re.compile(pattern) if isinstance(pattern, str) else pattern))
            except re.error as exc:
                from ee_middleware.errors import ConfigError

                raise ConfigError(f"Redaction pattern {pattern!r} is not a valid regex: {exc}") from exc
        self._rules = rules

    @property
    def enabled(self) -> bool:
        return self.defaults or bool(self._rules) or self.custom is not None

    @property
    def json_safe(self) -> bool:
        """Whether :meth:`redact_text` keeps JSON text valid (true for the built-in rules only)."""
        return not self._rules and self.custom is None

    def redact_text(self, text: str) -> str:
        """Return ``text`` with every match replaced by ``[REDACTED:<kind>]``.

        The built-in rules keep JSON text valid JSON: none consumes a quote or a backslash escape,
        and a secret-named JSON member keeps its name.
        """
        if self.defaults:
            lowered = text.lower()
            for pattern, triggers, replace in _DEFAULT_RULES:
                if any(t in lowered for t in triggers):
                    text = pattern.sub(replace, text)
        for kind, pattern in self._rules:
            if "keep" in pattern.groupindex:
                text = pattern.sub(lambda m, k=kind: m.group("keep") + REPLACEMENT.format(kind=k), text)
            else:
                text = pattern.sub(REPLACEMENT.format(kind=kind), text)
        if self.custom is not None:
            text = self.custom(text)
        return text

    def redact(self, value: Any) -> Any:
        """Redact every string inside JSON-like data; values under secret-named keys go whole."""
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, Mapping):
            return {k: (REPLACEMENT.format(kind="secret") if _is_secret(k, v) else self.redact(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value


def _is_secret(key: Any, value: Any) -> bool:
    return isinstance(key, str) and isinstance(value, str) and bool(value) and bool(SECRET_KEY.match(key))


NO_REDACTION = Redactor(defaults=False)
"""A redactor that changes nothing (use only for data known to hold no secrets)."""
