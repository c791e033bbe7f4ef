"""``ee serve router --server``: a value that is not an http(s)://host:port URL is a usage error before the router starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from tests.adapters.helpers import write_adapter


class _Started(Exception):
    """The router got as far as making its HTTP server (the CLI reports it as an unexpected error, with its text)."""


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    def started(router: Any, host: str, port: int) -> None:
        raise _Started(", ".join(router.upstreams))

    monkeypatch.setattr("ee_middleware.adapters.serving.router.make_router_server", started)
    LocalAdapterRegistry(tmp_path / "registry").register(write_adapter(tmp_path / "adapter"), "bot")
    return tmp_path / "registry"


@pytest.mark.parametrize("bad", ["notaurl", "ftp://127.0.0.1:8000/v1", "http://", "http://127.0.0.1:port/v1", "127.0.0.1:8000"])
def test_a_server_that_is_not_an_http_url_is_a_usage_error_naming_it(registry: Path, bad: str) -> None:
    result = CliRunner().invoke(app, ["serve", "router", "-r", str(registry), "--server", f"http://127.0.0.1:8000/v1,{bad}"])
    assert result.exit_code == 2 and "_Started" not in result.output, result.output
    assert repr(bad) in result.stderr and "http(s)://host:port" in result.stderr and "--server" in result.stderr, result.stderr


def test_http_and_https_urls_with_or_without_a_port_start_the_router(registry: Path) -> None:
    servers = ["http://127.0.0.1:8000", "https://models.example.com/v1"]
    result = CliRunner().invoke(app, ["serve", "router", "-r", str(registry), *(a for s in servers for a in ("--server", s))])
    assert "_Started: http://127.0.0.1:8000/v1, https://models.example.com/v1 " in result.output, result.output


@pytest.mark.parametrize("command", ["promote", "rollback"])
def test_adapters_promote_and_rollback_refuse_a_server_that_is_not_an_http_url(registry: Path, command: str) -> None:
    target = LocalAdapterRegistry(registry).list()[0].name if command == "promote" else "bot"
    result = CliRunner().invoke(app, ["adapters", command, target, "-r", str(registry), "--server", "notaurl"])
    assert result.exit_code == 2 and "'notaurl'" in result.stderr and "http(s)://host:port" in result.stderr, result.output


@pytest.mark.parametrize("by", ["", "   "])
def test_adapters_by_an_empty_name_is_a_usage_error(registry: Path, by: str) -> None:
    name = LocalAdapterRegistry(registry).list()[0].name
    result = CliRunner().invoke(app, ["adapters", "promote", name, "-r", str(registry), "--registry-only", "--by", by])
    assert result.exit_code == 2 and "an empty name" in result.stderr, result.output
    assert LocalAdapterRegistry(registry).resolve("bot") is None
