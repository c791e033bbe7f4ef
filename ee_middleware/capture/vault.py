"""The redaction vault: an opt-in file that maps each pseudonym back to the value it replaced.

Capture with ``record_experience(..., vault=True)`` writes every pseudonym it makes
(``[REDACTED:email:1a2b3c4d]``) with the real value into the vault; replay reads it to give the
sandbox the real argument values (the stored trajectory, rollouts and datasets keep the
pseudonyms). Nothing else ever reads it: it is not exported, copied into datasets or shown.

Where: ``<store>.vault`` beside the store folder (so that copying or sharing the store folder does
not carry it), or the path given as ``vault=PATH``. The store's ``redaction.json`` names it.

Format (JSON lines, owner-only ``0600``, append-only)::

    {"format": "ee-redaction-vault", "version": 2, "encryption": null}
    {"p": "[REDACTED:email:1a2b3c4d]", "v": "emma.kim21@example.com"}
    {"p": "[REDACTED:secret:5e6f7a8b]", "v": 4821}

``"v"`` keeps the value's JSON type: a number replaced whole (a ``pin`` of 4821, a card number sent as a JSON number)
is written as a number and restored as one. Its pseudonym is that of its digits as text (the one stores recorded before
numbers were typed hold): where one pseudonym was written both as a string and as a number, the string is restored, as
it was before. Version 1 vaults (strings only) are read as they are; a vault of a newer version than this code reads is
refused with a message saying so. A version 1 vault (one an older ee created) keeps getting strings only: a number is
written as the digits its pseudonym was made of and restored as that text, as before numbers were typed. Its header is
not rewritten, since other processes may be appending to the file; so an older ee replaying it still reads every entry.

With ``EE_VAULT_KEY`` set (a Fernet key: ``python -c "from ee_middleware.capture.vault import
new_key; print(new_key())"``) values are encrypted (``"c"`` instead of ``"v"``; the header has
``"encryption": "fernet"`` and a ``key_check`` token, so a wrong key is refused at once; a number is encrypted as its
JSON text, under ``"n"``). Encryption
needs ``cryptography``: ``pip install 'ee-middleware[vault]'``.

A pseudonym's tag is that of its value's canonical form (:func:`~ee_middleware.capture.redaction.canonical_form`), so
spellings of one value share it: ``Jane.Doe@Gmail.com`` and ``jane.doe@gmail.com``, a card sent as the number
``4111111111111111`` and as the text ``4111 1111 1111 1111``, an IBAN spaced and compact, ``+44 20 7946 0958`` and
``+442079460958``. Where one pseudonym was recorded with two such spellings the vault keeps their canonical form, a
string that works for both (the lower-cased address, the card's digits, the compact IBAN, the phone number's digits
after its ``+``), in memory as when the file is read back (the file keeps every spelling as it was seen); a LangChain
tool's ``int`` parameter gets the card's digits as an ``int`` still (its argument schema converts them). Two numbers
that are the same integer (``4111111111111111`` and ``4111111111111111.0``) keep the integer. A number and its own
digits as text keep the string, as before (above).

A vault whose file is readable by group or others is refused (``chmod 600 PATH``). A placeholder
that maps to two different values (two values whose 8-hex-digit tags collide, or a vault shared by stores of
different salts) is *ambiguous*: replay does not restore it and says so.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

from ee_middleware._files import create_exclusive
from ee_middleware.capture.redaction import canonical_form
from ee_middleware.errors import ConfigError

FORMAT = "ee-redaction-vault"
KEY_ENV = "EE_VAULT_KEY"
VERSION = 2
"""The vault format this code writes and reads: 2 holds numbers as numbers (``"v": 4821``, encrypted ``"n"``); 1, the
older one, only strings (read as they are)."""
_KEY_CHECK = b"ee-redaction-vault"
AMBIGUOUS = object()
"""What :meth:`Vault.lookup` returns for a placeholder recorded with two different values."""


VAULT_ENV = "EE_VAULT"
"""Another vault file than the one a store's ``redaction.json`` names, or ``off`` (0, false, no) to go without it:
read by replay and by ingest alike (:func:`vault_in_force`)."""


def vault_in_force(named: str | None) -> str | None:
    """The vault to use for a store whose ``redaction.json`` names ``named``: that one, the path ``EE_VAULT`` gives
    instead, or none with ``EE_VAULT=off`` (a misspelt switch is refused:
    :func:`~ee_middleware.capture.config.env_flag`)."""
    from ee_middleware.capture.config import env_flag

    given = env_flag(VAULT_ENV, or_path=True)
    return named if given is None or given is True else given or None


def new_key() -> str:
    """A new Fernet key for ``EE_VAULT_KEY`` (needs ``cryptography``)."""
    return _fernet_module().Fernet.generate_key().decode()


def _fernet_module() -> Any:
    from ee_middleware._optional import import_optional

    return import_optional("cryptography.fernet", extra="vault", purpose=f"encrypt the redaction vault ({KEY_ENV} is set)")


def _cipher(key: str) -> Any:
    fernet = _fernet_module()
    try:
        return fernet.Fernet(key.strip().encode())
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{KEY_ENV} is not a Fernet key ({exc}). Make one with: python -c 'from ee_middleware.capture.vault import new_key; print(new_key())'"
        ) from None


EMPTY_WAIT_S = 2.0
"""How long an empty vault file is waited for to get its first line before it is refused (see :meth:`Vault._written_stat`)."""


class Vault:
    """One vault file: append pseudonym -> value pairs (capture), look them up (replay)."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False, key: str | None = None) -> None:
        self.path = Path(path).expanduser()
        key = key if key is not None else os.environ.get(KEY_ENV) or None
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {}
        self._fd: int | None = None
        self._version = VERSION
        if create:
            self._create(key)
        self._cipher = self._open(key)
        self._load()

    def __repr__(self) -> str:
        return f"Vault({str(self.path)!r}, entries={len(self._values)})"

    # --- opening ---

    def _written_stat(self) -> os.stat_result:
        """The vault file's ``stat``, once it holds its first line: an empty file is waited for a moment (up to
        :data:`EMPTY_WAIT_S`: another process made it on a file system without hard links and writes it now)."""
        deadline = time.monotonic() + EMPTY_WAIT_S
        while (info := self.path.stat()).st_size == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return info

    def _create(self, key: str | None) -> None:
        """Make the vault file with its first line, unless it exists. Written whole and linked into place
        (:func:`~ee_middleware._files.create_exclusive`): processes starting at once (a server's workers) each find
        the file whole; created empty and then written, the file was read empty by the ones that lost the race, which
        refused it as no vault."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "encryption": None}
        if key:
            header.update(encryption="fernet", key_check=_cipher(key).encrypt(_KEY_CHECK).decode())
        line = (json.dumps(header) + "\n").encode()
        try:
            create_exclusive(self.path, line, mode=0o600)
            return
        except FileNotFoundError:
            pass  # (its temporary file removed by another program's sweep): made as below
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
        try:  # a file system without hard links: created, then written (_open waits for its first line)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except FileExistsError:
            return
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open(self, key: str | None) -> Any:
        try:
            info = self._written_stat()
            with open(self.path, encoding="utf-8") as fh:
                header = json.loads(fh.readline() or "{}")
        except FileNotFoundError:
            raise ConfigError(
                f"No redaction vault at {self.path}. It is written by capture with record_experience(..., vault=True); "
                "without it, replay cannot restore redacted arguments."
            ) from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"The redaction vault {self.path} is unreadable ({exc}).") from exc
        if info.st_size == 0:
            raise ConfigError(
                f"The redaction vault {self.path} is empty: the process that made it was stopped before it wrote its first "
                f"line, so it holds no value. Delete it (rm {self.path}); capture makes it again."
            )
        if header.get("format") != FORMAT:
            raise ConfigError(f"{self.path} is not a redaction vault (its first line says format={header.get('format')!r}).")
        version = header.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version > VERSION:
            raise ConfigError(
                f"The redaction vault {self.path} has format version {version!r}, newer than this ee-middleware reads "
                f"(version {VERSION} at most). Upgrade ee-middleware to replay with it."
            )
        self._version = version
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or (hasattr(os, "getuid") and info.st_uid != os.getuid()):
            raise ConfigError(
                f"The redaction vault {self.path} is readable by others (mode {stat.filemode(info.st_mode)}) or not yours; "
                f"it holds real values. Make it owner-only: chmod 600 {self.path}"
            )
        if header.get("encryption") is None:
            if key:
                raise ConfigError(
                    f"{KEY_ENV} is set but the vault {self.path} was written without encryption. Unset {KEY_ENV} to use it, "
                    "or move it away to start an encrypted one."
                )
            return None
        if not key:
            raise ConfigError(f"The redaction vault {self.path} is encrypted: set {KEY_ENV} to the key it was written with.")
        cipher = _cipher(key)
        try:
            ok = cipher.decrypt(str(header.get("key_check", "")).encode()) == _KEY_CHECK
        except Exception:  # noqa: BLE001 - cryptography raises InvalidToken for a wrong key
            ok = False
        if not ok:
            raise ConfigError(f"{KEY_ENV} is not the key the redaction vault {self.path} was written with.")
        return cipher

    def _load(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            next(fh, None)
            for line in fh:
                try:
                    entry = json.loads(line)
                    placeholder = entry["p"]
                    if self._cipher is None:
                        value = entry["v"]
                    elif "n" in entry:
                        value = json.loads(self._cipher.decrypt(entry["n"].encode()))
                    else:
                        value = self._cipher.decrypt(entry["c"].encode()).decode()
                    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                        continue
                except Exception:  # noqa: BLE001 - a half-written last line (a crash) or a foreign line: skip it
                    continue
                self._remember(placeholder, value)

    def _remember(self, placeholder: str, value: str | int | float) -> bool:
        """Record ``value`` for ``placeholder``; whether that changed what it stands for. A number and its digits as
        text share a pseudonym (``pin=4821`` and ``"pin is 4821"``): where both were seen the string is kept, what
        replay gave before numbers were typed. Two spellings of one canonical form (the placeholder's kind says which:
        ``Jane@X.com`` and ``jane@x.com``) share one too: their canonical form is kept, or the integer where both were
        numbers. Only values of different canonical forms make it :data:`AMBIGUOUS`. :meth:`_load` replays this for
        every line of the file, so a vault read back holds what the live one did."""
        known = self._values.get(placeholder)
        if known is None:
            self._values[placeholder] = value
            return True
        if known is AMBIGUOUS or (known == value and type(known) is type(value)):
            return False
        if isinstance(known, str) != isinstance(value, str) and _text(known) == _text(value):
            if isinstance(known, str):
                return False
            self._values[placeholder] = value
            return True
        kept = _one_value(placeholder, known, value)
        if kept is None:
            self._values[placeholder] = AMBIGUOUS
            return True
        if kept == known and type(kept) is type(known):
            return False
        self._values[placeholder] = kept
        return True

    # --- use ---

    def add(self, placeholder: str, value: str | int | float) -> None:
        """Record that ``placeholder`` stands for ``value`` (appended once per new pair): a string, or a number that
        was replaced whole (kept a number, so that replay restores it as one; its text in a version 1 vault)."""
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"A vault value is a string or a number, not {type(value).__name__} ({placeholder}).")
        if self._version < 2:  # (an older ee reads only strings from it: see the module's docstring)
            value = _text(value)
        with self._lock:
            if not self._remember(placeholder, value):
                return
            if self._cipher is None:
                entry = {"p": placeholder, "v": value}
            elif isinstance(value, str):
                entry = {"p": placeholder, "c": self._cipher.encrypt(value.encode()).decode()}
            else:
                entry = {"p": placeholder, "n": self._cipher.encrypt(json.dumps(value).encode()).decode()}
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            os.write(self._fd, (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8", "surrogatepass"))

    def lookup(self, placeholder: str) -> Any:
        """The value ``placeholder`` stands for (a string, or a number replaced whole); ``None`` when unknown,
        :data:`AMBIGUOUS` when two values share it."""
        return self._values.get(placeholder)

    def __len__(self) -> int:
        return len(self._values)

    def forget_after_fork(self) -> None:
        """In a process forked from this one's: a lock of its own (the parent's may have been held, in the middle of a
        write or a sync, by a thread that does not exist here). Both append whole lines to the same file."""
        self._lock = threading.Lock()

    def flush(self) -> None:
        """Make what was added durable."""
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None


def _text(value: str | int | float) -> str:
    """A vault value as text: a number as the digits its pseudonym was made of (:meth:`Redactor.placeholder`)."""
    return value if isinstance(value, str) else str(value)


_TAGGED = re.compile(r"\[REDACTED:([A-Za-z0-9_.-]+):[0-9a-f]{8}\]")
"""A pseudonym, its kind (the group): ``[REDACTED:email:1a2b3c4d]``."""


def _one_value(placeholder: str, known: str | int | float, value: str | int | float) -> str | int | None:
    """The value that stands for both ``known`` and ``value`` under ``placeholder`` when they are spellings of one
    canonical form of its kind (:func:`~ee_middleware.capture.redaction.canonical_form`): that form, or the integer where
    both are numbers of the same integer value; ``None`` when they are different values."""
    match = _TAGGED.fullmatch(placeholder)
    if match is None:
        return None
    kind = match.group(1)
    canonical = canonical_form(kind, value)
    if canonical_form(kind, known) != canonical:
        return None
    if not isinstance(known, str) and not isinstance(value, str) and known == value and float(value).is_integer():
        return int(value)
    return canonical


_OPEN: dict[tuple[str, int, int, str | None], Vault] = {}


def read_vault(path: str | os.PathLike[str]) -> Vault:
    """The vault at ``path`` for lookups, read once per process while the file is unchanged."""
    resolved = Path(path).expanduser().resolve()
    try:
        info = resolved.stat()
    except FileNotFoundError:
        return Vault(resolved)  # raises the clear error
    cache_key = (str(resolved), info.st_mtime_ns, info.st_size, os.environ.get(KEY_ENV))
    vault = _OPEN.get(cache_key)
    if vault is None:
        _OPEN.clear()
        vault = _OPEN[cache_key] = Vault(resolved)
    return vault
