"""``ee adapters list --server``: which adapters each replica still holds (sweep S).

A rollback leaves the adapter it rolls back from retired but loaded (requests naming it are still answered), and nothing
said so or listed what the replicas hold: each such adapter kept a LoRA slot of every replica until someone retired it
again with ``--server``. Against a real ``ee serve local`` process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.cli.app import app

from .conftest import train_shaped_adapter
from .helpers import write_adapter


def _ee(*args: str) -> Any:
    return CliRunner().invoke(app, ["adapters", *args])


def test_list_says_which_replicas_hold_each_adapter_and_warns_of_one_a_rollback_left(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    folder = str(tmp_path / "reg")
    registry = LocalAdapterRegistry(folder)
    names = [registry.register(train_shaped_adapter(tiny_base, tmp_path / f"a{i}", seed=30 + i), "bot").name for i in range(3)]
    serve = ("-r", folder, "--server", local_server.url, "--backend", "local")
    try:
        for name in names:
            promoted = _ee("promote", name, *serve)
            assert promoted.exit_code == 0, promoted.output
        back = _ee("rollback", "bot", *serve)
        assert back.exit_code == 0, back.output
        said = " ".join(back.stderr.split())
        assert f"note: {names[2]} is retired and stays loaded" in said
        assert f"ee adapters retire {names[2]} -r {folder} --server {local_server.url} --backend local unloads it" in said

        rows = json.loads(_ee("list", *serve, "--json").stdout)
        assert {r["name"]: (r["status"], r["loaded_on"]) for r in rows} == {
            names[0]: ("retired", [local_server.url]),  # the rollback target: kept loaded, so that a rollback is a switch
            names[1]: ("live", [local_server.url]),
            names[2]: ("retired", [local_server.url]),
        }
        table = _ee("list", *serve)
        assert table.exit_code == 0, table.output
        warning = " ".join(table.stderr.split())
        assert f"warning: {names[2]} is not served by any app but still loaded" in warning and names[0] not in warning
        # the command to run, with the adapter's name (it said `ee adapters retire NAME`: a serving sweep of 2026-12-07)
        assert f"ee adapters retire {names[2]} -r {folder} --server {local_server.url} --backend local unloads it" in warning
        assert "loaded on" in table.stdout
        assert "loaded_on" not in _ee("list", "-r", folder, "--json").stdout, "no --server: no server asked"

        retired = _ee("retire", names[2], *serve)
        assert retired.exit_code == 0, retired.output
        rows = json.loads(_ee("list", *serve, "--json").stdout)
        assert {r["name"]: r["loaded_on"] for r in rows}[names[2]] == []
        assert "warning" not in _ee("list", *serve).stderr
        bare = local_server.url.removesuffix("/v1") + "/"  # the server as given without its /v1: the same replica
        assert "warning" not in _ee("list", "-r", folder, "--server", bare, "--backend", "local").stderr

        LocalBackend(local_server.url).unload(names[1])  # the replica restarted without the live adapter: said (was not)
        lacking = " ".join(_ee("list", *serve).stderr.split())
        assert f"warning: {names[1]} is live for bot but not loaded on {local_server.url}" in lacking, lacking
        assert f"ee adapters promote {names[1]} -r {folder} --server {local_server.url} --backend local loads it" in lacking
        again = _ee("promote", names[1], *serve)  # what the warning says to run
        assert again.exit_code == 0, again.output
        assert "warning" not in _ee("list", *serve).stderr
    finally:
        for name in names:  # the server is the module's
            LocalBackend(local_server.url).unload(name)


def test_list_with_a_replica_that_does_not_answer_says_which_and_exits_1(tmp_path: Path) -> None:
    from ee_middleware.adapters.serving.launch import free_port

    folder = str(tmp_path / "reg")
    LocalAdapterRegistry(folder).register(write_adapter(tmp_path / "a"), "bot")
    down = f"http://127.0.0.1:{free_port()}/v1"
    result = _ee("list", "-r", folder, "--server", down, "--timeout", "2")
    assert result.exit_code == 1
    assert f"Could not ask {down} which adapters it holds" in " ".join(result.stderr.split())
