"""Whether a server renders prompts as an adapter's training rows were rendered, and where a server says what it renders.

An adapter's manifest records its ``rendering`` (:meth:`~ee_middleware.models.chat_template.TemplateSupport.describe`:
per part of a conversation, ``chat template`` or the trainer's fallback for a base whose template drops it; and whether
the messages' text or the calls' ids were given to the template changed, for a template refusing them as sent). A server
renders requests with one chat template (:class:`~ee_middleware.adapters.templates.ServedTemplate` says how that
compares with the trainer). An adapter loaded into a server that renders a part otherwise sees prompts unlike its
training rows: no error, only worse answers. :func:`check_rendering` compares the two.

**Where a server's template is recorded.** ``ee serve vllm`` and the local server write a small state file once the
server answers: ``$EE_CACHE_DIR/servers/PORT.json`` (default ``~/.cache/ee-middleware/servers``; ``PORT@HOST.json`` for a
second server on the port, bound to another address while the first runs) with its URL, process,
base model, ``--max-lora-rank`` and :class:`~ee_middleware.adapters.templates.ServedTemplate`. :func:`server_record` finds it by the URL a
promote is given (a server on this machine, or on the host the file names when the cache folder is shared); a file
whose process is gone is ignored. A server started otherwise (``vllm serve`` by hand, on another machine) has none: it
is then asked (``POST /tokenize`` of a few requests, compared token for token with the trainer's rendering for the
adapter's base: :func:`~ee_middleware.adapters.templates.asked_template`), and where it cannot be (no such route, no
tokenizer for the base here) the check says it could not tell.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ee_middleware._files import atomic_write_text
from ee_middleware.adapters.records import MANIFEST_FILE, normalize_base
from ee_middleware.adapters.templates import ServedTemplate, cache_folder

STATE_SCHEMA_VERSION = 1
AS_TEMPLATE = "chat template"
PARTS = ("tools", "tool_calls", "tool_results", "system")
"""The parts of a conversation :meth:`TemplateSupport.describe` names."""
AS_SENT = {"content": "each message's text as a string, as sent", "call_ids": "each call's id as sent"}
"""What the template is given, per entry :meth:`TemplateSupport.describe` adds only where the trainer changes it:
``content`` (each message's text as a list of one text part, for a template that shows no string content) and
``call_ids`` (each call's id made into the one format the template accepts). An adapter trained so and served without
it is shown prompts without their text, or has its requests refused (and the other way round, ids or text it never saw
in training)."""
_LOCAL_NAMES = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", ""}  # names a URL gives this machine by


def servers_folder() -> Path:
    """Where running servers' state files are: ``$EE_CACHE_DIR/servers``."""
    return cache_folder() / "servers"


def record_server(
    url: str,
    *,
    pid: int,
    base: str,
    served_model_name: str,
    template: ServedTemplate,
    max_lora_rank: int | None = None,
    renderer: str = "vllm",
) -> Path:
    """Write the state file of the server at ``url`` (process ``pid``), replacing one left by a server gone from that port.

    ``renderer``: who renders its requests with ``template``, ``vllm`` or ``local`` (the local server, the trainer's own
    functions): vLLM gives a template that loops over a message's content that content as text parts, whatever
    ``template`` says, so :func:`check_rendering` does not compare ``content`` for a template vLLM is given as it is.
    ``max_lora_rank``: the largest LoRA rank the server loads (its ``--max-lora-rank``), so that a promote refuses a
    larger adapter before asking it."""
    parts = urlsplit(url)
    path = servers_folder() / f"{parts.port}.json"
    other = _state(path)
    if (
        other is not None
        and other.get("pid") != pid
        and other.get("hostname") == socket.gethostname()
        and _alive(other.get("pid"))
        and str(other.get("host", "")).lower() != (parts.hostname or "").lower()
    ):  # another server runs on this port, bound to another address: each keeps its own file
        path = path.with_name(f"{parts.port}@{_file_safe(parts.hostname or '')}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "schema_version": STATE_SCHEMA_VERSION,
        "url": url,
        "host": parts.hostname or "",
        "port": parts.port,
        "hostname": socket.gethostname(),
        "pid": pid,
        "base": base,
        "served_model_name": served_model_name,
        "max_lora_rank": max_lora_rank,
        "renderer": renderer,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "chat_template": template.to_json(),
    }
    atomic_write_text(path, json.dumps(state, indent=2) + "\n")
    return path


def forget_server(path: Path, pid: int) -> None:
    """Remove the state file at ``path`` if it is still the one of process ``pid`` (a server stopping)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == pid:
            path.unlink()


def server_record(url: str) -> dict[str, Any] | None:
    """The state file of the running server at ``url`` (see the module docstring), or ``None``."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.port is None:
        return None
    host = (parts.hostname or "").lower()
    folder = servers_folder()
    own = _state(folder / f"{parts.port}@{_file_safe(host)}.json")  # a second server on the port, bound to this address
    if own is not None and str(own.get("host", "")).lower() == host and _alive(own.get("pid")):
        return own
    state = _state(folder / f"{parts.port}.json")
    if host in _LOCAL_NAMES and (state is None or str(state.get("host", "")).lower() not in _LOCAL_NAMES):
        for path in sorted(folder.glob(f"{parts.port}@*.json")):  # the port's first server is bound to another address
            other = _state(path)
            if other is not None and str(other.get("host", "")).lower() in _LOCAL_NAMES and _alive(other.get("pid")):
                return other
    if state is None:
        return None
    here = socket.gethostname()
    if state.get("hostname") == here:
        local = host in _LOCAL_NAMES or host in {here.lower(), socket.getfqdn().lower(), str(state.get("host", "")).lower()}
        return state if local and _alive(state.get("pid")) else None
    return state if host and host in {str(state.get("hostname", "")).lower(), str(state.get("host", "")).lower()} else None


def _state(path: Path) -> dict[str, Any] | None:
    """The server state file at ``path``, or ``None`` where there is none (or it is not one: no chat template)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("chat_template"), dict) else None


def _file_safe(host: str) -> str:
    """``host`` as a part of a file name (an IPv6 address's colons left out)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", host)


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def adapter_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The training manifest in an adapter folder (``manifest.json``, written by ``ee train``), or ``None``."""
    try:
        manifest = json.loads((Path(folder).expanduser() / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


# --- the check ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderingCheck:
    """An adapter's training rendering against a server's: ``same``, ``differs`` (certainly wrong) or ``unknown``."""

    adapter: str
    server: str
    status: str
    message: str
    differences: list[dict[str, str]] = field(default_factory=list)
    """Per part that differs: ``part``, ``trained`` (how the training rows had it), ``served`` (how the server renders it)."""

    @property
    def differs(self) -> bool:
        return self.status == "differs"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def trained_rendering(manifest: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The rendering an adapter's manifest records, every part named: a part a manifest from before its fallback existed
    leaves out was rendered by the chat template (that trainer had no other way); :data:`AS_SENT`'s entries where it
    records them. ``None`` when none is recorded."""
    recorded = manifest.get("rendering") if isinstance(manifest, Mapping) else None
    if not isinstance(recorded, Mapping) or not recorded:
        return None
    given = {part: str(recorded[part]) for part in AS_SENT if recorded.get(part) is not None}
    return {**{part: str(recorded.get(part, AS_TEMPLATE)) for part in PARTS}, **given}


def check_rendering(
    adapter: str, manifest: Mapping[str, Any] | None, server: str, state: Mapping[str, Any] | None, *, base_model: str | None = None
) -> RenderingCheck:
    """Compare the rendering ``adapter`` was trained with (its ``manifest``) with what the server at ``server`` renders
    (its state file, :func:`server_record`; ``None`` when it has none). Parts compare by whether the chat template or a
    fallback renders them, so the wording of a manifest from an older version does not count as a difference; the text
    and call ids the template is given (:data:`AS_SENT`) by whether each is changed for it.

    ``base_model``: the base the adapter was trained on. A server of another base is compared only when ``base_model``
    is a copy of it (the same model by the promote's base check, and the same tokenizer and chat template files, byte for
    byte: the message says so); otherwise the check is ``unknown``, saying why."""
    trained = trained_rendering(manifest)
    if trained is None:
        return RenderingCheck(
            adapter,
            server,
            "unknown",
            f"{adapter}'s manifest records no rendering (it was trained before ee-middleware recorded how it rendered the "
            f"training rows, or not by `ee train`), so whether {server} shows it prompts like its training rows was not "
            "checked. Train it again with `ee train` to have it checked.",
        )
    template = state.get("chat_template") if isinstance(state, Mapping) else None
    served = template.get("rendering") if isinstance(template, Mapping) else None
    if not isinstance(served, Mapping):
        why = (
            f"its chat template ({template.get('path') or template.get('kind')}) {template.get('note') or 'could not be compared'}"
            if isinstance(template, Mapping)
            else "it was not started by `ee serve vllm` or `ee serve local` on this machine, so nothing says which chat template it uses"
        )
        return RenderingCheck(
            adapter,
            server,
            "unknown",
            f"Not checked whether {server} renders prompts as {adapter} was trained ({_summary(trained)}): {why}. "
            "Serve with `ee serve vllm --base BASE` (no --chat-template: it renders as the trainer does) to have it checked.",
        )
    served_base = str(state.get("base") or "") if isinstance(state, Mapping) else ""
    copy = ""
    if base_model and served_base and normalize_base(served_base) != normalize_base(base_model):
        unlike = _unlike_for_rendering(base_model, served_base)
        if unlike is not None:
            return RenderingCheck(
                adapter,
                server,
                "unknown",
                f"Not compared: {server} serves the base {served_base}, {adapter} was trained on {base_model}{unlike}.",
            )
        copy = (
            f" {base_model}, which {adapter} was trained on, is a copy of {served_base}, the base {server} serves (the same "
            "weights, tokenizer and chat template files): compared as that base."
        )
    differences = [
        {"part": part, "trained": trained[part], "served": str(served.get(part, AS_TEMPLATE))}
        for part in PARTS
        if (trained[part] == AS_TEMPLATE) != (str(served.get(part, AS_TEMPLATE)) == AS_TEMPLATE)
    ]
    parts_by_vllm = (
        isinstance(template, Mapping)
        and template.get("kind") in ("own", "file")
        and not (isinstance(state, Mapping) and state.get("renderer") == "local")  # files before `renderer`: vLLM's mostly
    )
    differences += _given_differences(trained, served, parts_by_vllm=parts_by_vllm)
    if not differences:
        return RenderingCheck(adapter, server, "same", f"{server} renders prompts as {adapter} was trained ({_summary(trained)}).{copy}")
    said = "; ".join(f"{d['part']}: trained with {_how(d['trained'])}, served with {_how(d['served'])}" for d in differences)
    if isinstance(template, Mapping) and template.get("as_trainer"):  # the server renders as ee train does today
        fix = (
            f"{server} renders as the trainer does now, so {adapter} was trained with another rendering (before the trainer's "
            "fallbacks for this base existed, or with another template): train it again on this base"
        )
    else:
        fix = (
            f"Restart {server} with the template derived for its base (`ee serve vllm --base BASE` without --chat-template: "
            f"it renders requests as the trainer rendered the rows), or train {adapter} again on what this server renders"
        )
    return RenderingCheck(
        adapter,
        server,
        "differs",
        f"{adapter} would see prompts unlike its training rows on {server} ({said}): it answers worse there, with no error "
        f"to say why. {fix}.{copy}",
        differences,
    )


_TOKENIZER_FILE = re.compile(
    r"(tokenizer.*|chat_template.*|special_tokens_map\.json|added_tokens\.json|vocab\..*|merges\.txt|.*\.model|"
    r"(pre)?processor_config\.json)"
)
"""The files of a model folder its tokenizer and chat template are read from (Hugging Face's names; ``*.model``: a
sentencepiece model), and the folder ``additional_chat_templates``."""


def _unlike_for_rendering(trained_on: str, served: str) -> str | None:
    """Why an adapter's training rendering, made with the base ``trained_on``, cannot be compared with what a server of
    the base ``served`` (another name) renders: ``None`` when it can, ``trained_on`` being a copy of ``served``. A copy is
    what the promote's base check takes for the same model
    (:func:`~ee_middleware.adapters.promote.same_base`: the same config and weight files) whose tokenizer and chat
    template files (:data:`_TOKENIZER_FILE`) are the same too, byte for byte; the base check compares no tokenizer, and
    the manifest's rendering is in the terms of the template the adapter was trained with."""
    from ee_middleware.adapters.promote import same_base  # the promote's own rule (it imports this module)

    same = same_base(trained_on, served)
    if same is not True:
        return "" if same is False else " (whether they are the same model cannot be told from the names)"
    ours, theirs = Path(normalize_base(trained_on)), Path(normalize_base(served))
    if not (ours.is_dir() and theirs.is_dir()):
        return (
            " (the same model, but not both folders on this machine, so whether they have the same tokenizer and chat "
            "template cannot be told)"
        )
    try:
        mine, its = _tokenizer_files(ours), _tokenizer_files(theirs)
    except OSError as exc:
        return f" (the same weights, but their tokenizer and chat template files could not be read: {exc})"
    differ = sorted(name for name in mine.keys() | its.keys() if mine.get(name) != its.get(name))
    if not differ:
        return None
    return (
        f" (the same weights, but other tokenizer or chat template files: {', '.join(differ)} differ), so the rendering it "
        f"was trained with, made with {trained_on}'s template, says nothing of what the server renders with {served}'s. "
        f"Train it on {served}, or serve {trained_on}, to have it checked"
    )


def _tokenizer_files(folder: Path) -> dict[str, str]:
    """The sha256 of each of ``folder``'s tokenizer and chat template files (:data:`_TOKENIZER_FILE`), by its path in it."""
    paths = [p for p in folder.iterdir() if p.is_file() and _TOKENIZER_FILE.fullmatch(p.name)]
    extra = folder / "additional_chat_templates"
    paths += sorted(p for p in extra.rglob("*") if p.is_file()) if extra.is_dir() else []
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def _given_differences(trained: Mapping[str, str], served: Mapping[str, Any], *, parts_by_vllm: bool) -> list[dict[str, str]]:
    """Per :data:`AS_SENT` entry given to the template otherwise in training than by the server: ``part``, ``trained``
    and ``served`` (the entry, or how the text or id is sent). With ``parts_by_vllm`` (vLLM renders with the base's own
    template or a ``--chat-template`` file as it is) ``content`` is not compared: vLLM gives a template that loops over a
    message's content that content as text parts, as the trainer did, though ``served`` (rendered here with strings)
    says the text is sent as it is."""
    differences = []
    for part, as_sent in AS_SENT.items():
        trained_how, served_how = trained.get(part), served.get(part)
        if (trained_how is None) != (served_how is None) and not (parts_by_vllm and part == "content"):
            differences.append({"part": part, "trained": str(trained_how or as_sent), "served": str(served_how or as_sent)})
    return differences


def _how(value: str) -> str:
    if value in AS_SENT.values():
        return value
    return "the chat template" if value == AS_TEMPLATE else f"the fallback ({value})"


def _summary(rendering: Mapping[str, str]) -> str:
    fallbacks = [part for part in (*PARTS, *AS_SENT) if rendering.get(part, AS_TEMPLATE) != AS_TEMPLATE]
    return f"fallbacks for {', '.join(fallbacks)}" if fallbacks else "the chat template for every part"
