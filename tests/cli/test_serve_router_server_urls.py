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
    def started(router: Any, host: str, port: int, **options: Any) -> None:
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


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ("http://[::1", "an unclosed '['"),
        ("http://[::1:8000/v1", "an unclosed '['"),
        ("http://[::1]x:8000/v1", "'x:8000' after the ']'"),
        ("http://[zz]:8000/v1", "'zz' is not an IPv6 address"),
        ("http://exa mple.com/v1", "a space"),
        ("http://127.0.0.1:8000/v1 http://127.0.0.2:8000/v1", "separate several with commas"),
        ("http://exa\tmple.com/v1", "'\\t'"),
        ("http://exa^mple.com/v1", "'^' in its host 'exa^mple.com'"),
        ("http://exa%20mple.com/v1", "a space in its host 'exa%20mple.com'"),
        ("http://exa%2mple.com/v1", "a '%' not followed by two hex digits"),
        ("http://::1:8000/v1", "an IPv6 address without brackets"),
        ("http://host:8000:9000/v1", "its port '8000:9000' is not a number"),
        ("http://host:99999/v1", "its port 99999 is out of range"),
        ("http://host:0/v1", "its port 0 is out of range"),
        ("http:///v1", "no host"),
        ("http://user@/v1", "no host"),
        ("http:/host/v1", "no '//' after 'http:'"),
        ("ftp://127.0.0.1:8000/v1", "'ftp' is not http or https"),
        ("localhost:8000", "http://localhost:8000"),
    ],
)
def test_a_malformed_server_url_is_a_usage_error_saying_what_is_wrong(registry: Path, bad: str, named: str) -> None:
    result = CliRunner().invoke(app, ["serve", "router", "-r", str(registry), "--server", bad])
    assert result.exit_code == 2 and "_Started" not in result.output and "unexpected" not in result.output, result.output
    said = " ".join(result.stderr.split())  # (click wraps the message)
    from ee_middleware.models.urls import shown_url

    # as it may be shown: a user:password@ part masked (http://user@/v1 is said as http://***@/v1)
    assert repr(shown_url(bad)) in said and named in said and "--server" in said, said


@pytest.mark.parametrize("command", ["serve router", "adapters promote", "adapters rollback", "adapters retire"])
@pytest.mark.parametrize("bad", ["http://[::1", "http://exa mple.com/v1"])
def test_every_command_taking_server_refuses_a_malformed_url_as_a_usage_error(registry: Path, command: str, bad: str) -> None:
    name = LocalAdapterRegistry(registry).list()[0].name
    target = {"serve router": [], "adapters rollback": ["bot"]}.get(command, [name])
    for how in ("flag", "environment"):
        given = ["--server", bad] if how == "flag" else []
        result = CliRunner().invoke(
            app, [*command.split(), *target, "-r", str(registry), *given], env={"EE_SERVER_URLS": bad if how == "environment" else None}
        )
        said = " ".join(result.stderr.split())
        # (click splits a multiple option's environment variable at blanks: there the part after the space is refused)
        assert result.exit_code == 2 and (repr(bad) if how == "flag" else "is not a model server's URL") in said, (how, said)
    assert LocalAdapterRegistry(registry).get(name).status == "candidate", "nothing was done"


def test_every_legal_form_of_server_url_starts_the_router(registry: Path) -> None:
    good = [
        "http://127.0.0.1:8000/v1",
        "https://models.example.com/v1",
        "http://[::1]:8000/v1",
        "http://[::1]/v1",
        "http://[fe80::1%eth0]:8000/v1",
        "http://localhost",
        "http://localhost/v1/",
        "http://127.0.0.1:8000/v1/",
        "HTTP://LOCALHOST:8000/v1",
        "http://user:pw@my_host.internal:8000/v1",
        "http://host:/v1",
        "https://host:443/openai/v1?api-version=1",
        "http://modèles.example/v1",
    ]
    result = CliRunner().invoke(app, ["serve", "router", "-r", str(registry), *(a for url in good for a in ("--server", url))])
    assert "_Started" in result.output, result.output
    assert result.output.split("_Started: ", 1)[1].count(", ") == len(good) - 1, result.output
