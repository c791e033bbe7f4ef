"""Every file of the package folders that is not a module ships in the wheel (``setup.py``'s ``package_data``): a
wheel built before lacked ``py.typed`` (users' type checkers saw every ee_middleware name as ``Any``) and the chat
template ``ee serve --chat-template smollm2-tools`` names (it failed for anyone who installed from the wheel)."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "ee_middleware": "ee_middleware",
    "trainers": "ee_middleware.trainers",
    "adapters": "ee_middleware.adapters",
    "evals": "ee_middleware.evals",
}
"""Each folder of the repository and the package it is installed as (setup.py's ``package_dir``)."""


def _package_data() -> dict[str, list[str]]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    [value] = [node.value for node in tree.body if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "package_data"]
    return ast.literal_eval(value)


def _data_files() -> list[tuple[str, str]]:
    """(package, file name) of every file in the package folders that is not a module."""
    found = []
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix not in {".py", ".pyc"} and "__pycache__" not in path.parts:
                inside = path.parent.relative_to(ROOT / folder).parts
                found.append((".".join([package, *inside]), path.name))
    return found


def test_every_file_that_is_no_module_is_in_package_data() -> None:
    data = _package_data()
    files = _data_files()
    assert ("ee_middleware", "py.typed") in files
    assert ("ee_middleware.adapters.templates", "smollm2-tools.jinja") in files
    left_out = [f"{package}: {name}" for package, name in files if not any(fnmatch.fnmatch(name, p) for p in data.get(package, []))]
    assert not left_out, f"not shipped in the wheel (add them to setup.py's package_data): {left_out}"
