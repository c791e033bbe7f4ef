"""Text files a user gives (a config, a tasks or results file): read with errors that name the file and the fix, and
JSON Lines split where their writers end lines."""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import AnyStr

from ee_middleware.errors import ConfigError

__all__ = ["json_lines", "numbered_lines", "read_user_text"]

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
"""Byte-order marks of the encodings read besides UTF-8 (UTF-32's first: its little-endian mark starts with UTF-16's)."""


def read_user_text(path: Path, what: str, give: str, utf8_rule: str) -> str:
    """The text of the file at ``path`` that the user gave: UTF-8 (a byte-order mark, as Windows editors write it, is
    skipped), or UTF-16/UTF-32 with a byte-order mark (PowerShell 5 writes ``command > file`` as UTF-16). Anything else
    is a :class:`ConfigError` naming the file (``what``: how messages call it, "Config file"), what to give instead
    where it is a folder (``give``: "the TOML file") and how to save it as UTF-8 (``utf8_rule``: "TOML files are
    UTF-8.")."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist.") from None
    except IsADirectoryError:  # (the generic message for a folder where a file is expected is about writing one)
        raise ConfigError(f"{what} {path} is a folder: give the path of {give}.") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} cannot be read: permission denied.") from None
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), "utf-8-sig")
    utf8 = path.with_name(f"{path.stem}-utf8{path.suffix}")
    resave = f"Save it as UTF-8 (an editor's 'Save with encoding'; in PowerShell: Get-Content {path} | Out-File -Encoding utf8 {utf8})."
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} {path} is not {'UTF-8' if encoding == 'utf-8-sig' else encoding.upper()} text (byte "
            f"0x{data[exc.start]:02x} at offset {exc.start} is not): {utf8_rule} {resave}"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"{what} {path} holds NUL characters: is it UTF-16 without a byte-order mark? {resave}")
    return text


def numbered_lines(lines: Iterable[AnyStr]) -> Iterator[tuple[int, AnyStr]]:
    """The non-blank ones of ``lines`` with their numbers (from 1): a binary file's lines as iterating it gives them
    (ended at ``b"\\n"`` only, as JSON Lines are), or :func:`json_lines`'."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            yield number, line


def json_lines(text: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of JSON Lines ``text`` with their numbers (from 1). Lines end at ``"\\n"`` only (a ``"\\r"``
    before it is dropped): ``str.splitlines`` also ends one at U+2028, U+2029 and U+0085, which ``json.dumps(...,
    ensure_ascii=False)`` leaves unescaped inside strings, so a task or a result holding one would be cut in two."""
    for number, line in numbered_lines(text.split("\n")):
        yield number, line.removesuffix("\r")
