"""Which base model a LoRA adapter was trained on, and whether it is the one it is about to run on.

A LoRA adapter works only on the base it was trained on: on another base of the same shapes it loads without an error
and answers, measured or served, as a model nobody trained. Promotion (``ee adapters promote``), the likelihood
evaluation (``ee eval likelihood``) and ``local:BASE@ADAPTER`` model specs all ask :func:`same_base`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any


def normalize_base(value: str) -> str:
    """A base model's identity for comparisons: a local folder as its resolved path, anything else as given."""
    path = Path(value).expanduser()
    try:
        return str(path.resolve()) if path.exists() else value.rstrip("/")
    except OSError:
        return value


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_CACHE = re.compile(r"(?:^|/)models--([^/]+?)--([^/]+)(?:/|$)")


def same_base(trained_on: str, served: str) -> bool | None:
    """Whether an adapter trained on ``trained_on`` runs on a server's base ``served``: True for the same name (a folder
    as its resolved path) or two folders here holding the same model (a copy: same config, same weight files' sizes and
    first and last MiB); False for two different folders here, or two different hub ids (a Hugging Face cache folder
    counts as its hub id); None when the names cannot tell (a hub id against a folder, a folder on another machine)."""
    ours, theirs = normalize_base(trained_on), normalize_base(served)
    if ours == theirs:
        return True
    if os.path.isabs(ours) and os.path.isabs(theirs) and Path(ours).is_dir() and Path(theirs).is_dir():
        try:
            return _model_fingerprint(Path(ours)) == _model_fingerprint(Path(theirs))
        except OSError:  # a folder this process may not read: the names alone cannot tell
            return None
    hub_ours, hub_theirs = _hub_id(ours), _hub_id(theirs)
    if hub_ours and hub_theirs:
        return hub_ours.lower() == hub_theirs.lower()
    return None


def _hub_id(base: str) -> str | None:
    """The Hugging Face hub id ``base`` names: ``ORG/NAME`` itself (not a folder here), or the one of a hub cache folder
    (``.../models--ORG--NAME/snapshots/...``)."""
    cached = _HUB_CACHE.search(base)
    if cached:
        return f"{cached[1]}/{cached[2]}"
    if _HUB_ID.match(base) and not Path(base).exists():
        return base
    return None


def _model_fingerprint(folder: Path) -> tuple[Any, ...]:
    """What tells a model folder's model apart cheaply: its config, and per weight file its name, size and a hash of its
    first and last MiB (copies of one model agree; two trainings of one architecture differ in their weights)."""
    config = (folder / "config.json").read_bytes() if (folder / "config.json").is_file() else b""
    parts = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".safetensors", ".bin", ".pt", ".gguf") or not path.is_file():
            continue
        size = path.stat().st_size
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(size - (1 << 20))
                digest.update(handle.read(1 << 20))
        parts.append((path.name, size, digest.hexdigest()))
    return config, tuple(parts)


def adapter_base(adapter: str | os.PathLike[str]) -> str | None:
    """The base model an adapter folder says it was trained on (``base_model_name_or_path`` of its
    ``adapter_config.json``), or None where it says none (or the file cannot be read: loading it says why)."""
    try:
        config = json.loads((Path(adapter).expanduser() / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    return base if isinstance(base, str) and base else None


def other_base_problem(adapter: str | os.PathLike[str], base: str | os.PathLike[str]) -> str | None:
    """Why ``adapter`` must not run on ``base``: it was trained on another model (:func:`same_base` is False: two folders
    here holding other weights or config, or two other hub ids), naming both; None where it is the same model or the
    names cannot tell (a hub id against a folder, a GGUF file against its dequantized copy)."""
    trained_on = adapter_base(adapter)
    if trained_on is None or same_base(trained_on, str(base)) is not False:
        return None
    return (
        f"the adapter {adapter} was trained on base model {trained_on}, not on {base}: a LoRA adapter works only on the base "
        f"it was trained on (on another of the same shapes it loads and answers as a model nobody trained). Run it on "
        f"{trained_on} or a copy of it (ee eval likelihood's --base, the BASE of local:BASE@ADAPTER), or use an adapter "
        f"trained on {base}"
    )
