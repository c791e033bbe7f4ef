"""What the registry knows about one adapter, and how it reads an adapter folder.

An adapter folder is what ``ee train`` (or peft's ``save_pretrained``) writes:
``adapter_config.json`` (rank ``r``, ``base_model_name_or_path``), the weights
(``adapter_model.safetensors`` or ``adapter_model.bin``) and, from ``ee train``, ``manifest.json``
(base model, datasets with their hashes, config, losses). :func:`inspect_adapter` reads it and
checks it; the content hash covers the config and the weights, so one name never stands for two
different sets of weights.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from ee_middleware.adapters.errors import AdapterFilesError, RegistryError
from ee_middleware.models.bases import normalize_base as normalize_base  # (the registry's and promote's import)

RECORD_SCHEMA_VERSION = 1
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
CONFIG_FILE = "adapter_config.json"
MANIFEST_FILE = "manifest.json"
HASH_CHARS = 8
APP_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ADAPTER_NAME = re.compile(rf"(?P<app>.+)-v(?P<version>[0-9]+)-(?P<hash>[0-9a-f]{{{HASH_CHARS}}})")
"""The form of every adapter's name (:func:`adapter_name`): an app's name of this form is refused, the served name of
the app would be that of an adapter (a request for it routed to the app's live adapter)."""


class Status(StrEnum):
    """An adapter's life: registered (``candidate``), serving the app's alias (``live``), withdrawn
    (``retired``: superseded, rolled back or retired by hand), or refused by a promote (``failed``)."""

    candidate = "candidate"
    live = "live"
    retired = "retired"
    failed = "failed"


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter folder as read from disk: its rank, base model, content hash and manifest."""

    path: Path
    rank: int
    base_model: str
    content_hash: str
    weights_file: str
    manifest: dict[str, Any] | None
    adapter_config: dict[str, Any]


@dataclass(frozen=True)
class AdapterRecord:
    """One registered adapter (a row of ``ee adapters list --json``)."""

    name: str
    app: str
    version: int
    content_hash: str
    status: str
    base_model: str
    rank: int
    path: str
    """The registry's own copy of the adapter folder (what servers load): an absolute path (or a URL the servers read).
    The local registry hands out its own folder's copy (``adapters/NAME`` in the registry's folder, wherever that is
    now)."""
    source_path: str
    created_at: str
    created_by: str
    updated_at: str
    reason: str | None = None
    """Why the status is what it is (a failed promote's error, "superseded by ...", a retire note)."""
    manifest: dict[str, Any] | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = RECORD_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def record_field_problem(record: dict[str, Any]) -> str | None:
    """The first field of a stored record (a registry index's ``adapters.NAME``) whose value is not of
    :class:`AdapterRecord`'s type for it (a hand edit such as ``"created_at": 5``), said; None when all are."""
    for name, allowed in _field_types().items():
        if name in record and not _is_of(record[name], allowed):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            return f"{name} should be {expected}, got {record[name]!r}"
    return None


@functools.cache
def _field_types() -> dict[str, tuple[type, ...]]:
    """Each :class:`AdapterRecord` field's types (``str | None``: str and NoneType; ``list[dict]``: list), worked out once:
    every record of an index is checked on every read of it."""
    hints = typing.get_type_hints(AdapterRecord)
    found = {}
    for f in fields(AdapterRecord):
        hint = hints[f.name]
        parts = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        found[f.name] = tuple(typing.get_origin(p) or p for p in parts)
    return found


def _is_of(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in allowed:  # JSON true is no version or rank
        return False
    return isinstance(value, allowed)


def adapter_name(app: str, version: int, content_hash: str) -> str:
    """The immutable versioned name: ``support-bot-v7-3f2a9c1e``."""
    return f"{app}-v{version}-{content_hash[:HASH_CHARS]}"


def check_app_name(app: str) -> str:
    problem = app_name_problem(app, flag="--app")
    if problem is not None:
        raise RegistryError(f"Bad app name {app!r}: {problem}.")
    return app


def app_name_problem(app: object, *, flag: str | None = None) -> str | None:
    """Why ``app`` cannot be an app's name in the registry (and the alias it is served under), or ``None``; ``flag``:
    the option that gives the name, for the example."""
    if not isinstance(app, str) or not APP_NAME.match(app):
        return (
            "use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit (it becomes part of "
            "every adapter name and of the served model name)" + (f", e.g. {flag} support-bot" if flag else "")
        )
    named = ADAPTER_NAME.fullmatch(app)
    if named is not None:  # the app's served name (its alias) would be an adapter's: requests for one reach the other
        return (
            "it has the form of an adapter's name (APP-vN-HASH), and the app's served name would be taken for that "
            "adapter's, so requests naming the adapter would reach the app's live adapter. Is it an adapter's name pasted "
            f"as the app? Then its app is {named['app']!r}" + (f" ({flag} {named['app']})" if flag else "") + "; else name the "
            "app another way"
        )
    return None


def inspect_adapter(folder: str | Path) -> AdapterFiles:
    """Read and check an adapter folder; :class:`AdapterFilesError` names what is missing or broken."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise AdapterFilesError(f"No adapter folder at {path}. Pass the folder `ee train` wrote (it holds {CONFIG_FILE}).")
    config = _read_json(path / CONFIG_FILE, what="the adapter config (written by peft's save_pretrained)")
    weights = next((name for name in WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise AdapterFilesError(
            f"{path} has no adapter weights ({' or '.join(WEIGHT_FILES)}). Was the training run interrupted? Train again."
        )
    rank = adapter_rank(path, config)
    _check_targets(path, config, _check_weights(path / weights))
    manifest = _read_json(path / MANIFEST_FILE, what="the training manifest") if (path / MANIFEST_FILE).is_file() else None
    base = _base_model(config, manifest)
    if not base:
        raise AdapterFilesError(
            f"{path / CONFIG_FILE} names no base model (base_model_name_or_path is empty) and there is no {MANIFEST_FILE} naming one. "
            "Set base_model_name_or_path to the base model's folder."
        )
    return AdapterFiles(path.resolve(), rank, base, content_hash(path, weights), weights, manifest, config)


def check_registered_files(record: AdapterRecord, registry: str, *, fix: str | None = None) -> None:
    """The registry's copy of ``record`` is still what was registered (same content hash); otherwise
    :class:`AdapterFilesError` names the adapter and what to do (``fix``, else the general advice). A server
    refusing damaged weights says only that it cannot read them; this says which adapter and how to get past it.

    A missing folder is most often a registry moved or copied without its ``adapters/`` folder, or a copy deleted
    by hand: the message says where the folder was looked for and how to restore it before any other ``fix``."""
    default = (
        f"Registered adapters are never edited: register the same weights again (ee adapters register {record.source_path} "
        f"--app {record.app} -r {registry}: the registry restores its copy when their content hash matches), or restore the "
        f"folder from a backup; else roll {record.app} back to an intact version (ee adapters rollback {record.app} -r "
        f"{registry}) when {record.name} is live, and retire it otherwise (ee adapters retire {record.name} -r {registry})."
    )
    if not Path(record.path).is_dir():  # inspect_adapter's advice (pass the folder ee train wrote) is for registering
        raise AdapterFilesError(f"{missing_copy_message(record, registry)} {fix or _without_restore(record, registry)}")
    fix = fix or default
    try:
        files = inspect_adapter(record.path)
    except AdapterFilesError as exc:
        raise AdapterFilesError(f"The registered adapter {record.name} is damaged: {exc} {fix}") from exc
    if files.content_hash != record.content_hash:
        raise AdapterFilesError(
            f"The files of the registered adapter {record.name} in {record.path} changed since it was registered (content hash "
            f"{files.content_hash[:12]}, registered {record.content_hash[:12]}). {fix}"
        )


def missing_copy_message(record: AdapterRecord, registry: str) -> str:
    """What :func:`check_registered_files` says first of a registered adapter whose folder is not there: where it was
    looked for, and the two usual causes with their fixes (a registry moved or copied without its ``adapters/`` folder;
    a copy deleted: the same weights registered again restore it, their content hash checked)."""
    return (
        f"The registered adapter {record.name} has no copy in the registry: its folder {record.path} is gone. If the registry "
        f"was moved or copied from another folder, copy its adapters/{record.name} folder along (it was registered from "
        f"{record.source_path}). Otherwise restore the folder from a backup, or register the same weights again (ee adapters "
        f"register {record.source_path} --app {record.app} -r {registry}: the registry restores its copy when their content "
        "hash matches)."
    )


def _without_restore(record: AdapterRecord, registry: str) -> str:
    return (
        f"Only if it cannot be restored: roll {record.app} back (ee adapters rollback {record.app} -r {registry}) when {record.name} is live, retire it "
        f"otherwise (ee adapters retire {record.name} -r {registry})."
    )


def copy_problem(record: AdapterRecord, *, verify: bool) -> str | None:
    """What is wrong with the registry's copy of ``record`` (None: nothing found; also for a path that is a URL, which
    only the servers can read). ``verify=False``: only whether the folder, its config and a weights file are there (a
    few ``stat`` calls, for listing every adapter); ``verify=True``: read the files and compare their content hash with
    the registered one (reads every byte of the weights, about 1 s per GB)."""
    if "://" in record.path:
        return None
    folder = Path(record.path)
    if not folder.is_dir():
        return f"its folder {folder} is missing"
    if not verify:
        missing = [] if (folder / CONFIG_FILE).is_file() else [CONFIG_FILE]
        missing += [] if any((folder / name).is_file() for name in WEIGHT_FILES) else [" or ".join(WEIGHT_FILES)]
        return f"{folder} lacks {', '.join(missing)}" if missing else None
    try:
        files = inspect_adapter(folder)
    except AdapterFilesError as exc:
        return str(exc).split(". ")[0]  # the finding, without inspect_adapter's advice to train again
    if files.content_hash != record.content_hash:
        return f"its files in {folder} changed since it was registered (content hash {files.content_hash[:12]}, registered {record.content_hash[:12]})"
    return None


def content_hash(folder: Path, weights_file: str) -> str:
    """sha256 over the adapter config and the weights (the files that decide what the adapter does)."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, weights_file):
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _base_model(config: dict[str, Any], manifest: dict[str, Any] | None) -> str:
    base = manifest.get("base_model") if isinstance(manifest, dict) else None
    if isinstance(base, dict) and isinstance(base.get("path"), str) and base["path"]:
        return normalize_base(base["path"])
    value = config.get("base_model_name_or_path")
    return normalize_base(value) if isinstance(value, str) and value else ""


def _read_json(path: Path, *, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise AdapterFilesError(f"{path} is missing: it should hold {what}. Point at the folder `ee train` wrote.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AdapterFilesError(f"{path} ({what}) cannot be read as JSON: {exc}. The folder is damaged: train the adapter again.") from exc
    if not isinstance(data, dict):
        raise AdapterFilesError(f"{path} ({what}) is not a JSON object. The folder is damaged: train the adapter again.")
    return data


def adapter_rank(folder: str | Path, config: dict[str, Any] | None = None) -> int:
    """The adapter's LoRA rank as a server's ``--max-lora-rank`` limits it: the largest rank of its modules, and never
    below ``r`` (vLLM checks ``r``). Where ``adapter_model.safetensors`` has a readable header, the modules' ranks are
    the rows of its ``lora_A`` matrices (what peft's ``rank_pattern`` really applied); otherwise (``.bin`` weights,
    none yet) they are the ``rank_pattern`` entries that match a target module (peft's rule: the key, a regex, matches
    the end of the module's dotted name), since peft saves entries that matched no module unchanged.

    ``config``: the folder's ``adapter_config.json`` when read already. :class:`AdapterFilesError` for a config that
    cannot be read or has no valid ``r``, or a ``rank_pattern`` that is not module names mapped to ranks."""
    path = Path(folder)
    if config is None:
        config = _read_json(path / CONFIG_FILE, what="the adapter config (written by peft's save_pretrained)")
    rank = config.get("r")
    if not _is_rank(rank):
        raise AdapterFilesError(f"{path / CONFIG_FILE} has no valid LoRA rank 'r' (got {rank!r}); is this a LoRA adapter?")
    pattern = config.get("rank_pattern") or {}
    if not isinstance(pattern, dict) or not all(_is_rank(value) for value in pattern.values()):
        raise AdapterFilesError(
            f"{path / CONFIG_FILE} has a rank_pattern that is not module names mapped to ranks (got {pattern!r}); "
            "save the adapter again with peft's save_pretrained."
        )
    rows = _lora_a_rows(path / WEIGHT_FILES[0])
    if rows:
        return max([rank, *rows])
    targets = config.get("target_modules")
    return max([rank, *(value for key, value in pattern.items() if _may_target(key, targets))])


def _may_target(key: str, targets: Any) -> bool:
    """Whether peft could have applied the ``rank_pattern`` entry ``key`` to a module named by ``target_modules``.

    peft matches ``key`` as ``re.match(rf"(.*\\.)?({key})$", module_name)`` on full dotted names that end with a target
    name; without the base model those full names are unknown, so an entry counts when it ends with a target's name (``q_proj``,
    ``layers.0.self_attn.q_proj``, ``layers\\.0\\..*q_proj``) or as a regex matches the end of a target name. A ``target_modules`` regex string,
    ``all-linear``, or none: every entry counts (it cannot be ruled out)."""
    if not isinstance(targets, list) or not targets or not all(isinstance(target, str) for target in targets):
        return True
    for target in targets:
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(target)}$", key):
            return True
        try:
            if re.match(rf"(.*\.)?({key})$", target):
                return True
        except re.error:
            return True
    return False


_LORA_A = re.compile(r"\.lora_(?:embedding_)?A(?:\.|$)")
"""A LoRA ``A`` matrix's tensor name in peft's saved weights (``...q_proj.lora_A.weight``, ``...embed_tokens.lora_embedding_A``):
its first dimension is the module's rank."""


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _lora_a_rows(weights: Path) -> list[int]:
    """The row counts (ranks) of the ``lora_A`` (and ``lora_embedding_A``) tensors in a safetensors file's header; none
    where the file is missing or unreadable (:func:`_check_weights` says so where it matters)."""
    try:
        with open(weights, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size)) if 0 < size <= weights.stat().st_size - 8 else {}
    except (OSError, ValueError):
        return []
    rows = []
    for name, tensor in header.items() if isinstance(header, dict) else ():
        shape = tensor.get("shape") if isinstance(tensor, dict) else None
        if _LORA_A.search(name) and isinstance(shape, list) and shape and _is_rank(shape[0]):
            rows.append(shape[0])
    return rows


def _check_targets(path: Path, config: dict[str, Any], tensors: list[str]) -> None:
    """Every LoRA weight must be of a module the config targets: peft loads only the weights of the modules its
    ``target_modules`` name, and drops the others without a word (an adapter edited or assembled by hand), so the
    served adapter would not be the one trained. (A target with no weights is not a problem: peft saves the names it
    was given, of which a model may lack some.)"""
    targets = config.get("target_modules")
    if not isinstance(targets, list) or not targets:
        return  # a regular expression, "all-linear", or none named: peft decides when it loads
    modules = {name.split(".lora_", 1)[0].rsplit(".", 1)[-1] for name in tensors if ".lora_" in name}
    untargeted = sorted(modules - {str(t).rsplit(".", 1)[-1] for t in targets})
    if untargeted:
        raise AdapterFilesError(
            f"{path} holds LoRA weights for {', '.join(untargeted)}, which its {CONFIG_FILE} does not target (target_modules: "
            f"{', '.join(map(str, targets))}): peft would load the adapter without them, a different one from the one "
            f"trained. Add them to target_modules, or register the folder the training wrote, unedited."
        )


def _check_weights(path: Path) -> list[str]:
    """A safetensors file must have a readable header (a truncated or garbled file fails here, not on a server), and
    every weight must be a finite number: a NaN or an infinity (a training run that diverged) loads, answers greedy
    requests with nothing and fails every sampled one (the probabilities are NaN), so it is refused here, at
    registration, and a registered copy is checked again before a promote. Returns the names of its tensors (none for
    a file of another format, which is not read)."""
    if path.suffix != ".safetensors":
        return []
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            total = path.stat().st_size
            if size <= 0 or size > total - 8:
                raise ValueError(f"header length {size} does not fit a {total}-byte file")
            header = json.loads(fh.read(size))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            if not tensors:
                raise ValueError("it holds no tensors")
            _check_layout(tensors, total - 8 - size)
            not_finite = [name for name, info in tensors.items() if _holds_non_finite(fh, 8 + size, info)]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise AdapterFilesError(f"{path} is not a valid safetensors file ({exc}). The adapter is damaged: train it again.") from exc
    if not_finite:
        shown = ", ".join(sorted(not_finite)[:3]) + (f" and {len(not_finite) - 3} more" if len(not_finite) > 3 else "")
        raise AdapterFilesError(
            f"{path} holds weights that are not finite numbers (NaN or infinity) in {len(not_finite)} of its {len(tensors)} "
            f"tensors ({shown}): the training diverged (a learning rate too high, an fp16 overflow). Served, it would answer "
            "greedy requests with nothing and fail every sampled one. Train it again (a lower learning rate, bf16 or fp32)."
        )
    return list(tensors)


_DTYPE_BITS = {
    **dict.fromkeys(("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "F8_E4M3FNUZ", "F8_E5M2FNUZ"), 8),
    **dict.fromkeys(("U16", "I16", "F16", "BF16"), 16),
    **dict.fromkeys(("U32", "I32", "F32"), 32),
    **dict.fromkeys(("U64", "I64", "F64", "C64"), 64),
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}
"""Bits per element of each dtype a safetensors header may name (the format's own list)."""


def _check_layout(tensors: dict[str, Any], data_bytes: int) -> None:
    """The tensors of a safetensors header as the format requires them, which safetensors checks when a server loads
    the file: each a known dtype, a shape of sizes, and a byte range that holds exactly its elements; the ranges one
    after another from the start of the data to its end (``data_bytes``), with no gap, overlap or byte left over. A
    ``ValueError`` naming the first tensor that breaks it (its server load would fail, the adapter marked failed)."""
    spans = []
    for name, info in tensors.items():
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        bits = _DTYPE_BITS.get(dtype) if isinstance(dtype, str) else None
        if bits is None:
            raise ValueError(f"tensor {name!r} has dtype {dtype!r}, which is not a safetensors dtype")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"tensor {name!r} has shape {shape!r}, not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"tensor {name!r} has data_offsets {offsets!r}, not [start, end] with start <= end")
        elements = math.prod(shape)
        if elements * bits != (offsets[1] - offsets[0]) * 8:
            raise ValueError(
                f"tensor {name!r} of shape {shape} and dtype {dtype} takes {elements * bits / 8:g} bytes, but its data_offsets "
                f"{offsets} give it {offsets[1] - offsets[0]}"
            )
        spans.append((offsets[0], offsets[1], name))
    at = 0
    for start, end, name in sorted(spans):
        if start != at:
            raise ValueError(f"tensor {name!r} starts at byte {start} of the data, not at {at}, where the one before it ends")
        at = end
    if at != data_bytes:
        raise ValueError(f"the tensors it lists end at byte {at} of the data, but the file holds {data_bytes} bytes of data")


def _all_set(mask: int) -> bytes:
    """A ``bytes.translate`` table mapping each byte to 1 where every bit of ``mask`` is set in it, else to 0."""
    return bytes(1 if value & mask == mask else 0 for value in range(256))


# Where a float's exponent bits lie, by safetensors dtype: (element size, [(byte offset in the element, its
# :func:`_all_set` table)]). A value is NaN or infinite exactly when its exponent bits are all set.
_EXPONENT_BYTES: dict[str, tuple[int, tuple[tuple[int, bytes], ...]]] = {
    "F64": (8, ((7, _all_set(0x7F)), (6, _all_set(0xF0)))),
    "F32": (4, ((3, _all_set(0x7F)), (2, _all_set(0x80)))),
    "BF16": (2, ((1, _all_set(0x7F)), (0, _all_set(0x80)))),
    "F16": (2, ((1, _all_set(0x7C)),)),
}
_CHUNK_BYTES = 64 * 1024 * 1024


def _holds_non_finite(fh: Any, data_start: int, info: dict[str, Any]) -> bool:
    """Whether the tensor ``info`` (a safetensors header entry) of the open file ``fh`` holds a NaN or an infinity; read
    in chunks (little-endian, as safetensors stores them), each byte of the exponent compared at C speed: the bytes at
    one offset of every element (a strided slice) mapped to 1 where their exponent bits are all set, the maps of the
    element's exponent bytes ANDed as integers. Other dtypes (integers) are never non-finite."""
    layout = _EXPONENT_BYTES.get(str(info.get("dtype")))
    if layout is None:
        return False
    width, parts = layout
    start, stop = (int(offset) for offset in info["data_offsets"])
    chunk = _CHUNK_BYTES - _CHUNK_BYTES % width
    fh.seek(data_start + start)
    left = stop - start
    while left > 0:
        data = memoryview(fh.read(min(chunk, left)))
        if not data:
            raise ValueError("the file ended inside a tensor")
        left -= len(data)
        full = data[: len(data) - len(data) % width]
        found = -1
        for offset, table in parts:
            hits = int.from_bytes(bytes(full[offset::width]).translate(table), "little")
            found &= hits
            if not found:
                break
        if found:
            return True
    return False
