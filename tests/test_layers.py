"""Importing any module of the light core loads no model stack and none of the heavy folders.

`make lint` checks the import graph statically (import-linter, [tool.importlinter] in pyproject.toml).
This test checks what happens at import time, which also covers what that graph cannot see: imports
made by third-party packages, names loaded through a module ``__getattr__`` (lazy exports), and the
CLI, which may import the heavy folders inside its command functions but not at module level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ee_middleware

HEAVY_PACKAGES = ("torch", "transformers", "peft", "trl", "vllm", "accelerate")
# The folders setup.py maps into the package (the heavy layer of pyproject.toml's layers contract).
HEAVY_LAYERS = ("ee_middleware.trainers", "ee_middleware.adapters", "ee_middleware.evals")

# Run in a fresh interpreter, with a JSON list of module names on stdin. Prints, for each heavy package
# or folder that got loaded, the first of those modules whose import (or lazy exports) loaded it.
_IMPORT_ALL = f"""
import importlib, json, sys
heavy = {HEAVY_PACKAGES + HEAVY_LAYERS!r}
def heavy_root(name):
    return next((root for root in heavy if name == root or name.startswith(root + ".")), None)
first_loaded_by = {{}}
for name in json.load(sys.stdin):
    module = importlib.import_module(name)
    for attribute in getattr(module, "__all__", ()):
        getattr(module, attribute)
    for root in {{heavy_root(loaded) for loaded in list(sys.modules)}} - {{None, *first_loaded_by}}:
        first_loaded_by[root] = name
print(json.dumps(first_loaded_by))
"""


def _is_heavy_layer(name: str) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in HEAVY_LAYERS)


def core_modules() -> list[str]:
    """Every module in the folder ``ee_middleware`` is imported from, the mapped heavy folders left out.

    ``__main__`` modules are left out too: importing one runs the CLI.
    """
    root = Path(ee_middleware.__file__).parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(("ee_middleware", *parts)).removesuffix(".__init__")
        if "__pycache__" not in parts and parts[-1] != "__main__" and not _is_heavy_layer(name):
            names.append(name)
    return names


def test_core_modules_lists_the_core_and_leaves_out_the_heavy_folders():
    names = core_modules()
    assert {"ee_middleware", "ee_middleware.capture", "ee_middleware.store", "ee_middleware.cli.app", "ee_middleware.records"} <= set(names)
    assert not [name for name in names if _is_heavy_layer(name)]


def test_importing_every_core_module_loads_no_model_stack_and_no_heavy_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL],
        input=json.dumps(core_modules()),
        capture_output=True,
        text=True,
        # from the folder above the package, so the child imports the same ee_middleware as this process
        cwd=Path(ee_middleware.__file__).parent.parent,
        env={**os.environ, "BFCL_PROJECT_ROOT": str(tmp_path / "bfcl")},
    )
    assert out.returncode == 0, out.stderr
    first_loaded_by = json.loads(out.stdout.splitlines()[-1])
    assert first_loaded_by == {}, "\n".join(
        f"{loaded} was loaded by importing {by} (or by its lazy exports)" for loaded, by in first_loaded_by.items()
    )
