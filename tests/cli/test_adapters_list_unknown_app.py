"""`ee adapters list --app APP` for an app the registry has never held says so on stderr, with the app it probably
means, and exits 1; ``--json`` prints the ``{"error": ...}`` every failed command prints. Before, a typo (``--app warhouse``) printed
an empty table ("0 adapters") with exit 0, while ``rollback`` and ``show`` of an unknown app said "No app named ...".
A REAL local registry with adapters registered through it, the REAL CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from tests.cli.test_adapters_show_event_times import _adapter


def _registry(tmp_path: Path) -> Path:
    registry = LocalAdapterRegistry(tmp_path / "registry")
    registry.register(_adapter(tmp_path / "a"), "warehouse", by="alice")
    return registry.root


def test_list_of_an_app_never_registered_says_so_with_did_you_mean_and_exits_1(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    result = CliRunner().invoke(app, ["adapters", "list", "-r", str(root), "--app", "warhouse"])
    assert result.exit_code == 1, result.output
    assert "No app named 'warhouse' in the registry" in result.stderr and "(did you mean 'warehouse'?)" in result.stderr
    assert "0 adapters" not in result.output


def test_list_json_of_an_unknown_app_is_the_json_error_and_exit_1(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    result = CliRunner().invoke(app, ["adapters", "list", "-r", str(root), "--app", "warhouse", "--json"])
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "AdapterNotFoundError" and error["exit_code"] == 1, error
    assert "(did you mean 'warehouse'?)" in error["message"] and "(did you mean 'warehouse'?)" in result.stderr


def test_list_of_a_known_app_with_no_adapter_of_that_status_is_an_empty_answer_exit_0(tmp_path: Path) -> None:
    """An app the registry holds, filtered to a status none of its adapters has: nothing to list, no error."""
    root = _registry(tmp_path)
    result = CliRunner().invoke(app, ["adapters", "list", "-r", str(root), "--app", "warehouse", "--status", "live", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []
    listed = CliRunner().invoke(app, ["adapters", "list", "-r", str(root), "--app", "warehouse", "--json"])
    assert listed.exit_code == 0 and [r["app"] for r in json.loads(listed.stdout)] == ["warehouse"]


def test_rollback_of_an_unknown_app_names_the_app_it_probably_means(tmp_path: Path) -> None:
    root = _registry(tmp_path)
    result = CliRunner().invoke(app, ["adapters", "rollback", "warehouse_typo", "-r", str(root), "--registry-only"])
    assert result.exit_code == 1, result.output
    assert "No app named 'warehouse_typo' in the registry (did you mean 'warehouse'?)" in result.stderr
