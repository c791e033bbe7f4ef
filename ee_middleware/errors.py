"""The exception tree of ee-middleware.

Every error the library raises on purpose derives from :class:`EEError`; match on the class, never
on the message text. Each message says what failed and what to do about it.
"""

from __future__ import annotations

import re
from typing import Any


class EEError(Exception):
    """Root of every ee-middleware error."""


class ConfigError(EEError, ValueError):
    """A configuration value is missing, malformed or inconsistent."""


class MissingSettingError(ConfigError):
    """A setting the job needs that neither its flag nor its ``--config`` file gave: on the command line, a usage error
    (exit code 2, with the command's usage line), as a missing option is."""


class RedactFnError(EEError, ValueError):
    """A ``redact_fn`` (a redactor's ``custom`` function) raised. Its message names the function and the exception's type
    and where the function raised it, never the exception's own message, which may quote the text it was given."""


class RecordError(EEError, ValueError):
    """A record (trajectory, step, approval) does not fit the schema."""


class StoreError(EEError):
    """The experience store cannot be opened, read or written."""


class StoreWriteError(StoreError):
    """The store could not be written (a full disk, a read-only file system, missing permissions).

    Nothing half-written is kept: the failed batch is not stored, what was stored before is intact.
    ``errno`` is the operating system's error number, when there was one.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class StoreUnreadableError(StoreError):
    """A file of the store could not be read (no permission, a folder in its place, a link that leads nowhere, a failed
    disk): not damage, nothing is changed. The message names the file and the fix; ``os_error`` is the system's error,
    for a caller that says more (an export: that nothing was written)."""

    def __init__(self, message: str, *, os_error: OSError) -> None:
        super().__init__(message)
        self.os_error = os_error


class StoreDamagedError(StoreError):
    """Part of the store cannot be read, so an answer would be incomplete.

    The message names the damaged files and the fix (``ee store repair``), or how to read the rest
    anyway (``--allow-partial``).
    """


class OutputError(EEError):
    """An output file (an export, a report) cannot be written: the path is a folder, the disk is
    full, the folder is read-only. No partial or temporary file is left behind."""


class ApprovalConflictError(StoreError):
    """A decision would overturn an opposite one (approve a rejected trajectory, or the reverse).

    Pass ``force=True`` (``--force`` on the command line) to override; both decisions are kept.
    """


def as_sentence(text: str) -> str:
    """``text`` ending as a sentence does (a full stop added where it ends otherwise), for a sentence to follow it in a
    message."""
    text = text.rstrip()
    return text if text.endswith((".", "!", "?", ".)")) else f"{text}."


def os_error_advice(exc: OSError, *, output: bool = False) -> str:
    """What to do about a failed file operation, by its error number (one sentence).

    ``output=True``: the path is one the user chose for a command's output (an export, a dataset folder, a tasks
    file), so the advice is to choose another output path or make that one writable; otherwise it is the store's
    (a read-only store is copied somewhere writable)."""
    import errno

    if output:
        advice = {
            errno.ENOSPC: "The disk is full: free space, or choose an output path on another disk, then try again.",
            errno.EDQUOT: "The disk quota is used up: free space or raise the quota, or choose an output path on another disk.",
            errno.EROFS: "The file system is mounted read-only: choose an output path on a writable file system, or remount it read-write.",
            errno.EACCES: "Permission denied: choose an output folder you may write to, or fix that folder's permissions.",
            errno.EPERM: "Operation not permitted: choose an output folder you may write to, or fix that folder's permissions.",
        }
    else:
        advice = {
            errno.ENOSPC: "The disk is full: free space, then try again.",
            errno.EDQUOT: "The disk quota is used up: free space or raise the quota, then try again.",
            errno.EROFS: "The file system is mounted read-only: remount it read-write, or copy the store somewhere writable.",
            errno.EACCES: "Permission denied: run as a user who may write there, or fix the folder's permissions.",
            errno.EPERM: "Operation not permitted: run as a user who may write there, or fix the folder's permissions.",
        }
    # the path itself is wrong, not the disk nor the permissions: advice about either would send the user the wrong way
    advice[errno.EISDIR] = (
        "A folder is where a file is to be written: name a file (a path inside that folder, or another one), not the folder."
        if output
        else "A folder is where a file is expected: move that folder away, or point at the file itself."
    )
    advice[errno.ENOTDIR] = (
        "A part of the path is a file, not a folder: choose a path whose parents are folders."
        if output
        else "A part of the path is a file, not a folder: check the path, or move that file away."
    )
    from ee_middleware._files import NotARegularFileError

    if isinstance(exc, NotARegularFileError):
        return (
            "Name a regular file's path: the output is written to a new file that replaces what is there whole, which "
            "would put a file in the place of a device, pipe or socket (it was left as it is)."
        )
    advice[errno.EFBIG] = (
        "A file-size limit stopped the write (the process's `ulimit -f`, systemd's LimitFSIZE=, or the largest "
        "file the file system holds): raise the limit for this process, then try again."
    )
    if output:
        return advice.get(exc.errno or 0, "Check the output folder's permissions and free space, or choose another output path.")
    return advice.get(exc.errno or 0, "Check the folder's permissions and free space, then try again.")


class StoreCorruptionWarning(UserWarning):
    """A stored record was damaged (for example half-written by a crash) and was skipped."""


class IncompleteReadWarning(StoreCorruptionWarning):
    """Damage hides stored records from a read (an unreadable Parquet part, a damaged whole record):
    the answer is incomplete. Commands exit non-zero on it unless given ``--allow-partial``."""


class LargeSpoolWarning(UserWarning):
    """A store's spool holds more than reads keep decoded: every read decodes it again (``ee store compact`` folds it into
    Parquet parts)."""


class TrajectoryNotFoundError(StoreError, KeyError):
    """No trajectory with the given id exists in the store."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class CaptureError(EEError):
    """Recording a run failed. Raised only in strict mode; otherwise logged and counted."""


class IngestError(EEError):
    """A span or trace file could not be turned into a trajectory."""


class MissingExtraError(EEError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class SandboxError(EEError):
    """A sandbox cannot be built, or failed in a way that is not a tool's own error."""


class EnvironmentUnavailableError(SandboxError):
    """A sandbox cannot rebuild the world from a trajectory's environment reference.

    The replay job skips such a trajectory and reports this message as the reason.
    """


class StateDigestUnavailableError(SandboxError):
    """A sandbox has no ``state_digest()`` (see ``ee_middleware.replay.sandboxes.protocol.StatefulSandbox``),
    which comparing final states (the ``traces:`` eval suite) needs."""


class PolicyError(EEError):
    """A proposal policy cannot be built or reached (bad spec, model missing, server down)."""


class ModelError(EEError):
    """A chat model cannot be built, loaded, reached or understood (see the subclasses)."""


class ModelLoadError(ModelError):
    """A local model (or its adapter) cannot be found or loaded from disk."""


class ModelServerError(ModelError):
    """A model server gave no usable answer: unreachable, timed out, or failing (5xx, 429) after retries.

    ``status`` is the HTTP status of the last answer (``None`` when none came: refused or timed out);
    ``timed_out`` says the last attempt ran out of time; ``retry_after`` the seconds the last answer asked to wait
    before another try (its ``Retry-After``; 0 when none), for a caller that retries itself (the alias router).
    """

    def __init__(self, message: str, *, url: str, status: int | None = None, timed_out: bool = False, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.timed_out = timed_out
        self.retry_after = retry_after


class ModelRequestError(ModelServerError):
    """A model server refused the request (4xx, or a 5xx whose text names a problem with the request, as llama-server's
    ``tools param requires --jinja flag``): wrong model name, API key or request settings; not retried.

    ``refusal`` is what the server said (its status and text, without the advice the message adds);
    ``answer`` its JSON body when it sent one (a proxy relays it as it came); ``setup`` says the refusal is about the
    server's setup or a setting every request carries (llama-server started without ``--jinja``), not this request's
    messages, so every request like it is refused the same way."""

    def __init__(self, message: str, *, url: str, status: int, refusal: str | None = None, answer: Any = None, setup: bool = False) -> None:
        super().__init__(message, url=url, status=status)
        self.refusal = refusal if refusal is not None else message
        self.answer = answer
        self.setup = setup


class ModelResponseError(ModelServerError):
    """A model server answered with something that is not a chat completion (not JSON)."""


class UnreadableAnswerError(ModelResponseError):
    """A model server's answer could not be read at all: a body that is no JSON (cut off, empty, a proxy's page), or a
    stream request answered without an event stream. No model writes that: it is the server's or a proxy's doing (an
    evaluation counts it as no answer), unlike an error the server sent in a readable answer."""


class ChatTemplateError(ModelError):
    """A model's chat template cannot render the given messages."""


_AUTH_SCHEME = r"(?:bearer|basic|token|digest|negotiate|ntlm|apikey|api-key|key|dpop|hawk|mac|oauth|ssws|sso-key|aws4-hmac-sha256)"
"""The words of HTTP auth schemes (RFC 9110's ``Authorization: <scheme> <credentials>``, and those of common APIs)."""
_SECRET_ASSIGNMENT = re.compile(
    r"(?i)(?:\b|(?<=[_-]))((?:api[_-]?key|token|secret|password|passwd|authorization)\s*[=:]\s*"
    rf"(?P<quote>['\"])?(?:{_AUTH_SCHEME}\s+(?=[^\s,;'\"]))?)"
    r"(?(quote)(?:(?!(?P=quote))[^\n])+|[^\s,;'\"]+)"
)
"""``api_key=...``, ``token: ...`` and the like in prose, after a prefix too (``access_token=``, ``hf_token:``,
``client_secret=``), outside URLs: in a URL, :func:`~ee_middleware.models.urls.shown_spec` masks the query parameters.
The value is the word after an auth scheme (``Authorization: Bearer eyJ...``: the token, the scheme kept), and a quoted
value runs to its closing quote (``api_key="sk-..."``, ``password = 'two words'``)."""
_BARE_BEARER = re.compile(r"(?i)(?<![\w-])(bearer:?\s+['\"]?)([A-Za-z0-9][\w.~+/-]*=*)")
"""``Bearer`` with no ``Authorization:`` before it (an error quoting a header's value, ``token Bearer eyJ... expired``,
``Bearer: ...``, ``Bearer "..."``), and the word after it: hidden where :func:`_looks_like_a_token`."""


def _looks_like_a_token(word: str) -> bool:
    """16 or more token characters with a digit or one of ``. ~ + / = -`` among them, or 24 or more letters of both
    cases (base64 without a digit): not prose (``Bearer authentication``), a setting's name (``token_refresh_interval``)
    or a path (``/home/...``: the pattern's word starts with a letter or a digit)."""
    if len(word) < 16:
        return False
    if any(c.isdigit() or c in ".~+/=-" for c in word):
        return True
    return len(word) >= 24 and any(c.islower() for c in word) and any(c.isupper() for c in word[1:])


_URL_REST = re.compile(r"://[^\s'\"<>]*")
"""A URL after its scheme, to its end (a space, a quote or an angle bracket), as :func:`hide_credentials` finds URLs."""


# A quoted key and its value, as a dict's repr or JSON writes them: 'api_key': 'sk-...', "hf_token": "hf_..."
_QUOTED_ITEM = re.compile(
    r"""(?P<key>(?P<kq>['"])(?P<name>[^'"\n]{1,80})(?P=kq)\s*:\s*)"""
    r"""(?P<value>(?P<vq>['"])(?:\\.|(?!(?P=vq)).)*(?P=vq)|[^\s,;{}\[\]'"]+)""",
    re.DOTALL,
)


def hide_credentials(text: str) -> str:
    """``text`` for a message or a log: in every URL in it, the ``user:password@`` part and the value of every
    secret-looking query parameter (``api_key``, ``key``, ``access_token``, ``sig``, ``X-Amz-Signature``, ``code``, ...:
    :func:`~ee_middleware.models.urls.shown_spec`, the one rule for URLs); the value of every
    ``api_key=...``/``access_token: ...``-like assignment, and a token after a bare ``Bearer``; and the value of every quoted secret-named key
    (``'api_key': '...'`` in a dict's repr, ``"hf_token": "..."`` in JSON), replaced by ``***`` (a setting's value quoted
    back to its user may land in a CI log or a run report)."""
    from ee_middleware._toml import _is_secret_name  # the one rule for secret-named settings
    from ee_middleware.models.urls import shown_spec  # the one rule for credentials in URLs (imports only re)

    def quoted(match: re.Match[str]) -> str:
        if not _is_secret_name(match["name"]):
            return match[0]
        mark = match["vq"] or ""
        return f"{match['key']}{mark}***{mark}"

    text = _QUOTED_ITEM.sub(quoted, shown_spec(text))
    parts, at = [], 0
    for url in _URL_REST.finditer(text):  # URLs as shown_spec masks them: a query's secret-named values, not the rest
        parts += [_assignments_hidden(text[at : url.start()]), url[0]]
        at = url.end()
    parts.append(_assignments_hidden(text[at:]))
    return "".join(parts)


def _assignments_hidden(text: str) -> str:
    text = _SECRET_ASSIGNMENT.sub(r"\1***", text)
    return _BARE_BEARER.sub(lambda m: f"{m[1]}***" if _looks_like_a_token(m[2]) else m[0], text)
