"""Redaction at the sandbox boundary: real values in, redacted observations out.

A trajectory's arguments hold redaction pseudonyms (``find_user_by_email(email="[REDACTED:email:
1a2b3c4d]")``). Replay keeps the store's redaction on both sides of the sandbox:

- **in**: each call about to be executed (the expert's and every proposed alternative) has its
  placeholders swapped for the real values from the store's redaction vault, when capture kept
  one (:mod:`ee_middleware.capture.vault`). What is stored keeps the placeholders. A placeholder
  that cannot be restored (no vault, a value missing from it, an ambiguous tag, or a plain
  ``[REDACTED:kind]``) reaches the sandbox as it is, and is reported: an expert step becomes
  *unrestorable* (counted, listed, its observation not checked), a rollout carries the placeholders
  in ``Rollout.unrestored`` (and dataset builders leave it out);
- **the world**: the trajectory's environment reference (what the sandbox rebuilds its world from) is restored the
  same way before ``sandbox.reset`` (:meth:`ReplayPrivacy.restore_environment`); a placeholder it keeps reaches the
  world builder as it is, and every expert step is then unrestorable (its world is not the recorded one) and every
  rollout carries it in ``Rollout.unrestored``;
- placeholders in the *keys* of arguments and of the environment (``tags={"[REDACTED:email:...]": "vip"}``) are
  restored and flagged as those in values are;
- **out**: every observation is redacted with the store's own rules and salt before anything
  compares or stores it, so a plain sandbox answer equals the redacted recording, and the same
  value gets the same pseudonym as at capture.

:class:`ReplayPrivacy` is plain data (the rules, the salt, the vault's path) so that it crosses to
worker processes and Ray workers; each worker reads the vault once.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ee_middleware.capture.redaction import PLACEHOLDER, RedactionRules, Redactor, store_salt
from ee_middleware.capture.store_redaction import is_pseudonym, load_custom_function, read_store_redaction
from ee_middleware.capture.vault import AMBIGUOUS, Vault, read_vault, vault_in_force
from ee_middleware.records import Observation, ToolCall
from ee_middleware.store.metadata import keeps_metadata

logger = logging.getLogger("ee_middleware.replay")


@dataclass(frozen=True)
class Unrestored:
    """A placeholder the sandbox received as it is, and why."""

    placeholder: str
    reason: str


@dataclass(frozen=True)
class ReplayPrivacy:
    """A store's redaction, for replay workers (see the module docstring)."""

    rules: str | None = None
    """The store's :class:`~ee_middleware.capture.redaction.RedactionRules` as JSON; ``None``: redact nothing."""
    salt: str | None = None
    """The store's pseudonym salt (hex)."""
    vault: str | None = None
    """The redaction vault's path, when there is one to restore from."""
    custom_function: str | tuple[str, ...] | None = None
    """The qualified name of the ``redact_fn`` capture applied (``redaction.json``; several when apps with different ones
    share the store): applied after the rules, as capture did, so that what it removed never comes back in an observation,
    a replay record or a diff."""

    @classmethod
    def of_store(cls, store: Any) -> ReplayPrivacy:
        """The redaction ``store`` was recorded with (``redaction.json``), its salt and its vault: kept through the
        store's ``read_meta``/``write_meta`` or in its folder (:mod:`ee_middleware.store.metadata`).

        ``EE_VAULT`` names another vault file, or is ``off`` (0, false, no) to replay without one (``on``: the recorded
        one); a misspelt switch is refused (:func:`~ee_middleware.capture.config.env_flag`). A vault that is
        recorded but missing is left out with a warning; one that cannot be read (a wrong key,
        loose permissions) raises :class:`~ee_middleware.errors.ConfigError` before any work starts.
        """
        if not keeps_metadata(store):
            logger.warning(
                "%r keeps no redaction settings or salt (it has no read_meta()/write_meta() methods and no local root folder): "
                "replay redacts what the sandbox says with the default rules and no pseudonyms, so an observation capture "
                "redacted otherwise counts as a fidelity mismatch. Give the store the two methods "
                "(ee_middleware.store.protocol.KeepsMetadata).",
                store,
            )
        settings = read_store_redaction(store, tagged_before=True)  # (its re-redacted observations compare with the stored tags)
        if settings.custom_function:
            load_custom_function(settings.custom_function)  # one that cannot be imported fails here, before any work starts
        redacts = bool(settings.rules.enabled_kinds() or settings.rules.patterns or settings.custom_function)
        salt = store_salt(store) if redacts and settings.pseudonyms else None
        vault = vault_in_force(settings.vault)
        if vault and not Path(vault).expanduser().exists():
            logger.warning("The redaction vault %s is missing: redacted arguments are replayed as placeholders (and flagged).", vault)
            vault = None
        rules = json.dumps(settings.rules.to_dict(), sort_keys=True) if redacts else None
        privacy = cls(rules, salt.hex() if salt else None, vault, settings.custom_function)
        privacy.open_vault()  # a vault that cannot be read fails here, with its reason
        return privacy

    @property
    def redactor(self) -> Redactor | None:
        return _redactor(self.rules, self.salt, self.custom_function) if self.rules is not None else None

    def open_vault(self) -> Vault | None:
        return read_vault(self.vault) if self.vault else None

    # --- in: real values for the sandbox ---

    def restore(self, call: ToolCall) -> tuple[ToolCall, list[Unrestored]]:
        """``call`` with every placeholder the vault knows replaced by its value, and those it could not restore."""
        if not _mentions_placeholder(call.arguments):
            return call, []
        vault = self.open_vault()
        missing: list[Unrestored] = []
        arguments = _restore(call.arguments, vault, missing)
        return call.model_copy(update={"arguments": arguments}), missing

    def restore_environment(self, environment: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[Unrestored]]:
        """The environment reference a sandbox rebuilds its world from, with every placeholder the vault knows (in a value
        or a key) replaced by its value, and those it could not restore (as :meth:`restore` does for a call's arguments).
        """
        if not _mentions_placeholder(environment):
            return environment, []
        vault = self.open_vault()
        missing: list[Unrestored] = []
        return _restore(environment, vault, missing), missing

    # --- out: the store's redaction on what the sandbox says ---

    def redact_observation(self, observation: Observation) -> Observation:
        redactor = self.redactor
        if redactor is None:
            return observation
        content = redactor.redact_value(observation.content)
        return observation if content == observation.content else observation.model_copy(update={"content": content})

    def redact_call(self, call: ToolCall) -> ToolCall:
        redactor = self.redactor
        if redactor is None:
            return call
        arguments = redactor.redact_value(call.arguments)
        return call if arguments == call.arguments else call.model_copy(update={"arguments": arguments})

    def redact_data(self, data: Any) -> Any:
        redactor = self.redactor
        return redactor.redact_value(data) if redactor is not None else data


def keys_holding(mapping: dict[str, Any] | None, unrestored: list[Unrestored]) -> list[str]:
    """The keys of ``mapping`` (a call's arguments, an environment reference) whose key or value holds one of the
    placeholders of ``unrestored``, sorted."""
    placeholders = {u.placeholder for u in unrestored}
    return sorted(k for k, v in (mapping or {}).items() if any(p in str(k) or p in json.dumps(v, ensure_ascii=False) for p in placeholders))


NO_PRIVACY = ReplayPrivacy()
"""Redacts nothing and restores nothing (placeholders still reach the sandbox flagged)."""


@functools.lru_cache(maxsize=8)
def _redactor(rules: str, salt: str | None, custom_function: str | tuple[str, ...] | None = None) -> Redactor:
    custom = load_custom_function(custom_function) if custom_function else None
    return Redactor(RedactionRules.from_dict(json.loads(rules)), salt=bytes.fromhex(salt) if salt else None, custom=custom)


def _mentions_placeholder(value: Any) -> bool:
    """Whether ``"[REDACTED:"`` is in ``json.dumps(value)``: in a string or a key (JSON escapes none of its characters),
    found without encoding the arguments of every branch."""
    if isinstance(value, str):
        return "[REDACTED:" in value
    if isinstance(value, dict):
        return any(_mentions_placeholder(k) or _mentions_placeholder(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_mentions_placeholder(v) for v in value)
    if value is None or isinstance(value, (bool, int, float)):
        return False
    return "[REDACTED:" in json.dumps(value, ensure_ascii=False)  # anything else as before (json.dumps says what it cannot encode)


def _restore(value: Any, vault: Vault | None, missing: list[Unrestored]) -> Any:
    if isinstance(value, str):
        if "[REDACTED:" not in value:
            return value
        if PLACEHOLDER.fullmatch(value):  # a value replaced whole: the original, of its JSON type (a number stays one)
            return _value_of(value, vault, missing)
        return PLACEHOLDER.sub(lambda m: _as_text(_value_of(m.group(0), vault, missing)), value)
    if isinstance(value, dict):  # a key holds placeholders as a value does (tag_contacts(tags={"[REDACTED:email:...]": "vip"}))
        return {_as_text(_restore(k, vault, missing)): _restore(v, vault, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v, vault, missing) for v in value]
    return value


def _as_text(value: Any) -> str:
    """A restored value as it reads in text: a number as its JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def _value_of(placeholder: str, vault: Vault | None, missing: list[Unrestored]) -> str | int | float:
    if not is_pseudonym(placeholder):
        reason = "a placeholder without a pseudonym tag names no value (record with redaction_pseudonyms=True)"
    elif vault is None:
        reason = "no redaction vault (record with vault=True to replay real values)"
    else:
        value = vault.lookup(placeholder)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return value
        reason = "two values share this tag in the vault" if value is AMBIGUOUS else "not in the redaction vault"
    missing.append(Unrestored(placeholder, reason))
    return placeholder
