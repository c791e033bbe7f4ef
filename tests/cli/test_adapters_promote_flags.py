"""`ee adapters promote` and `rollback` with --registry-only (the alias switched in the registry alone, as ee improve
promotes without [improve.serving] servers) and --backend naming a serving-backend plug-in; a real local registry and
the real CLI. (The commands ee improve's refusals name, run as written: tests/jobs/test_promote_registry_history.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from tests.jobs.test_promote_live_changed import _adapter

APP = "support-bot"


def _registry(tmp_path: Path) -> tuple[Path, list[str]]:
    folder = tmp_path / "registry"
    registry = LocalAdapterRegistry(folder)
    names = [registry.register(_adapter(tmp_path / key, seed), APP, by="test").name for seed, key in enumerate(("v1", "v2"), 1)]
    return folder, names


@pytest.fixture(autouse=True)
def no_servers_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EE_SERVER_URLS", raising=False)


def test_registry_only_promotes_and_rolls_back_in_the_registry_alone(tmp_path: Path) -> None:
    folder, (v1, v2) = _registry(tmp_path)
    runner = CliRunner()

    first = runner.invoke(app, ["adapters", "promote", v1, "-r", str(folder), "--registry-only", "--json"])
    second = runner.invoke(app, ["adapters", "promote", v2, "-r", str(folder), "--registry-only"])

    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert (out["live"], out["replaced"], out["loaded_on"], out["verified_on"]) == (v1, None, [], [])
    assert second.exit_code == 0, second.output
    assert f"{APP} -> {v2} (was {v1})" in second.stdout
    assert LocalAdapterRegistry(folder).resolve(APP) == v2

    back = runner.invoke(app, ["adapters", "rollback", APP, "-r", str(folder), "--registry-only"])

    assert back.exit_code == 0, back.output
    assert LocalAdapterRegistry(folder).resolve(APP) == v1

    # sweep S3: promoting the live one again said "every replica holds it", though no server was asked
    live = runner.invoke(app, ["adapters", "promote", v1, "-r", str(folder), "--registry-only"])
    assert live.exit_code == 0, live.output
    assert f"{APP} -> {v1} (already live; no server asked (--registry-only))" in live.stdout
    assert "replica" not in live.output and "already live in the registry: nothing to switch" in live.stderr


def test_without_a_server_or_registry_only_the_usage_error_names_both(tmp_path: Path) -> None:
    folder, (v1, _) = _registry(tmp_path)

    result = CliRunner().invoke(app, ["adapters", "promote", v1, "-r", str(folder)])

    assert result.exit_code == 2
    assert "--server URL" in result.output and "--registry-only" in result.output
    assert LocalAdapterRegistry(folder).resolve(APP) is None


def test_registry_only_with_a_server_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    folder, (v1, _) = _registry(tmp_path)

    result = CliRunner().invoke(app, ["adapters", "promote", v1, "-r", str(folder), "--registry-only", "--server", "http://127.0.0.1:9/v1"])

    assert result.exit_code == 2
    assert "--registry-only loads the adapter on no server, but --server names http://127.0.0.1:9/v1" in result.output
    assert LocalAdapterRegistry(folder).resolve(APP) is None


def test_registry_only_leaves_the_servers_of_ee_server_urls_alone_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, (v1, _) = _registry(tmp_path)
    monkeypatch.setenv("EE_SERVER_URLS", "http://127.0.0.1:9/v1")

    result = CliRunner().invoke(app, ["adapters", "promote", v1, "-r", str(folder), "--registry-only"])

    assert result.exit_code == 0, result.output
    assert "the servers in EE_SERVER_URLS (http://127.0.0.1:9/v1) are left alone" in result.stderr
    assert LocalAdapterRegistry(folder).resolve(APP) == v1


def test_an_unknown_backend_is_a_usage_error_listing_the_accepted_forms(tmp_path: Path) -> None:
    folder, (v1, _) = _registry(tmp_path)

    result = CliRunner().invoke(
        app, ["adapters", "promote", v1, "-r", str(folder), "--server", "http://127.0.0.1:9/v1", "--backend", "vlm"]
    )

    assert result.exit_code == 2
    assert "Unknown serving backend 'vlm'" in result.output
    assert "'package.module:factory'" in result.output and "ee_middleware.serving_backends" in result.output
