"""A refused ``ee adapters register`` (not an adapter, a bad app name, a rank too large) leaves the filesystem as it was."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app

from .helpers import write_adapter


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("what", "args", "expected"),
    [
        ("not an adapter", ["--app", "bot"], "adapter_config.json is missing"),
        ("bad app name", ["--app", "Bad Name!"], "Bad app name"),
        ("rank too large", ["--app", "bot", "--max-lora-rank", "4"], "--max-lora-rank 4"),
    ],
)
def test_a_refused_register_creates_no_registry_folder(tmp_path: Path, what: str, args: list[str], expected: str) -> None:
    adapter = tmp_path / "plain" if what == "not an adapter" else write_adapter(tmp_path / "adapter")
    adapter.mkdir(exist_ok=True)
    before = _tree(tmp_path)
    registry = tmp_path / "nested" / "registry"
    result = CliRunner().invoke(app, ["adapters", "register", str(adapter), *args, "-r", str(registry)])
    assert result.exit_code == 1 and expected in result.output, result.output
    assert _tree(tmp_path) == before


def test_a_refused_register_into_an_empty_folder_leaves_it_empty_and_a_good_one_then_creates_the_registry(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    refused = CliRunner().invoke(app, ["adapters", "register", str(tmp_path), "--app", "bot", "-r", str(registry)])
    assert refused.exit_code == 1 and list(registry.iterdir()) == []
    adapter = write_adapter(tmp_path / "adapter")
    registered = CliRunner().invoke(app, ["adapters", "register", str(adapter), "--app", "bot", "-r", str(registry)])
    assert registered.exit_code == 0, registered.output
    assert {"index.json", "history.jsonl", "adapters"} <= {p.name for p in registry.iterdir()}
    assert [r.app for r in LocalAdapterRegistry(registry, create=False).list()] == ["bot"]


def test_an_opened_registry_that_is_not_there_yet_reads_as_empty_until_its_first_write(tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "registry")
    assert (registry.list(), registry.apps(), registry.history(), registry.resolve("bot")) == ([], {}, [], None)
    assert not (tmp_path / "registry").exists()
    registry.note("check", app="bot")
    assert [e["action"] for e in LocalAdapterRegistry(tmp_path / "registry", create=False).history()] == ["check"]
