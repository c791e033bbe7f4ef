"""A rollback with a replica that cannot be reached says that alone, as a promote does: no chat-template notes first
(they blamed the server's setup for what it never got to say), and nothing loaded on the replicas that answer before
the one that is down was found. Before, the rollback loaded the target on every replica in turn and met the dead one
last, after its notes.

The replicas are real HTTP servers (vLLM's runtime LoRA API stand-in); the one that is down is a port nobody listens on."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.errors import ServerUnavailableError
from ee_middleware.adapters.promote import rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.launch import free_port

from .helpers import good_and_down_replicas, write_adapter


def _rolled_twice(tmp_path: Path) -> tuple[LocalAdapterRegistry, str, str]:
    """A registry where ``first`` was live before ``second``: a rollback makes ``first`` live again."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    first = registry.register(write_adapter(tmp_path / "one", seed=1), "bot").name
    second = registry.register(write_adapter(tmp_path / "two", seed=2), "bot").name
    registry.switch_live(first)
    registry.switch_live(second)
    return registry, first, second


def test_a_rollback_with_a_replica_that_is_down_says_only_that_and_loads_nothing(tmp_path: Path) -> None:
    registry, first, second = _rolled_twice(tmp_path)
    said: list[str] = []
    with good_and_down_replicas() as (good, replicas), pytest.raises(ServerUnavailableError, match="Connection refused") as caught:
        rollback(registry, "bot", replicas, progress=said.append)
    assert f"Rolling bot back to {first} stopped at {replicas[1].url}" in str(caught.value)
    assert f"Nothing was switched: bot still serves {second}" in str(caught.value)
    assert said == [], said
    assert good.loaded == {} and not any(r.startswith("POST") for r in good.requests), good.requests
    assert registry.resolve("bot") == second


def test_ee_adapters_rollback_with_a_stopped_server_prints_the_connection_error_alone(tmp_path: Path) -> None:
    from ee_middleware.cli.app import app

    registry, _, _ = _rolled_twice(tmp_path)
    down = f"http://127.0.0.1:{free_port()}/v1"
    result = CliRunner().invoke(app, ["adapters", "rollback", "bot", "-r", str(registry.root), "--server", down, "--backend", "local"])
    assert result.exit_code == 1, result.output
    assert "note:" not in result.output and "warning:" not in result.output, result.output
    assert result.stderr.lstrip().startswith("error: Rolling bot back") and "Connection refused" in result.stderr, result.stderr
