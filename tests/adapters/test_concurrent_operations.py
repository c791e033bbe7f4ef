"""Promote, rollback, retire and switch on one registry from several threads and processes at once: each waits
for the registry's operation lease, so the registry never says one thing while the servers serve another.

The replica is the stand-in of vLLM's runtime LoRA API (tests/adapters/helpers.py: a real HTTP server without a
model) that can hold a smoke chat request, so a promote can be caught between loading an adapter and switching
the alias to it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.errors import InvalidTransitionError
from ee_middleware.adapters.promote import promote, retire, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import VLLMBackend
from ee_middleware.testing.http import serving

from .helpers import StandInVLLM, write_adapter


@pytest.fixture
def replica() -> Iterator[tuple[StandInVLLM, str]]:
    server = StandInVLLM()
    with serving(server) as url:
        yield server, url
        server.release_chat.set()


def _registered(tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    return registry.root, [registry.register(write_adapter(tmp_path / f"src{i}", seed=i), "bot").name for i in range(count)]


def _in_thread(action: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = action()
        except Exception as exc:  # the test looks at what each side got
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _consistent(root: Path, server: StandInVLLM) -> None:
    """Every adapter the registry calls live is loaded on the replica (one replaced or rolled back stays loaded)."""
    for record in LocalAdapterRegistry(root, create=False).list(status="live"):
        assert record.name in server.loaded, f"the registry says {record.name} is live, the replica does not serve it"


def test_a_retire_during_a_promote_waits_for_it_and_then_refuses_the_live_adapter_stand_in_replica(
    replica: tuple[StandInVLLM, str], tmp_path: Path
) -> None:
    """Before: the retire marked the candidate retired and unloaded it while the promote was verifying it; the
    promote then switched the alias to it: the registry said live, the replica no longer had it."""
    server, url = replica
    root, (name,) = _registered(tmp_path, 1)
    server.hold_chat.set()
    promoter, promoted = _in_thread(lambda: promote(LocalAdapterRegistry(root), name, [VLLMBackend(url, timeout_s=60)]))
    assert server.chat_arrived.wait(30), "the promote never reached its smoke request"
    retirer, retired = _in_thread(lambda: retire(LocalAdapterRegistry(root), name, [VLLMBackend(url, timeout_s=60)], by="ops"))
    retirer.join(timeout=1.0)  # before the fix the retire was done by now; with the lease it waits for the promote
    server.hold_chat.clear()
    server.release_chat.set()
    promoter.join(timeout=60)
    retirer.join(timeout=60)
    assert not promoter.is_alive() and not retirer.is_alive()
    assert "error" not in promoted, promoted
    registry = LocalAdapterRegistry(root, create=False)
    assert registry.resolve("bot") == name and registry.get(name).status == "live" and name in server.loaded
    assert isinstance(retired.get("error"), InvalidTransitionError), retired
    _consistent(root, server)


def test_a_rollback_during_a_promote_waits_and_both_apply_in_turn_stand_in_replica(
    replica: tuple[StandInVLLM, str], tmp_path: Path
) -> None:
    """Two promotes and a rollback from three threads: each sees the statuses the previous one left."""
    server, url = replica
    root, (first, second) = _registered(tmp_path, 2)
    promote(LocalAdapterRegistry(root), first, [VLLMBackend(url)])
    server.hold_chat.set()
    promoter, promoted = _in_thread(lambda: promote(LocalAdapterRegistry(root), second, [VLLMBackend(url, timeout_s=60)]))
    assert server.chat_arrived.wait(30)
    waits: list[str] = []
    roller, rolled = _in_thread(
        lambda: rollback(LocalAdapterRegistry(root), "bot", [VLLMBackend(url, timeout_s=60)], progress=waits.append)
    )
    roller.join(timeout=1.0)
    server.hold_chat.clear()
    server.release_chat.set()
    promoter.join(timeout=60)
    roller.join(timeout=60)
    assert "error" not in promoted and "error" not in rolled, (promoted, rolled)
    registry = LocalAdapterRegistry(root, create=False)
    assert rolled["result"].live.name == first and rolled["result"].replaced == second, "the rollback undid the promote it waited for"
    assert registry.resolve("bot") == first and registry.get(second).status == "retired"
    assert [e["action"] for e in registry.history() if e["action"] in ("promote", "rollback")] == ["promote", "promote", "rollback"]
    assert waits and f"promote of {second} by " in waits[0], waits
    _consistent(root, server)


_HOLDER = """
import sys
from ee_middleware.adapters.promote import promote
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import VLLMBackend
promote(LocalAdapterRegistry(sys.argv[1]), sys.argv[2], [VLLMBackend(sys.argv[3], timeout_s=60)], by="pipeline")
print("promoted", flush=True)
"""


def test_a_retire_from_another_process_that_will_not_wait_names_the_promote_holding_the_registry_stand_in_replica(
    replica: tuple[StandInVLLM, str], tmp_path: Path
) -> None:
    """`ee adapters retire` while another process promotes: with EE_REGISTRY_WAIT_S=0 it fails at once, naming the
    holder's pid and what it does; nothing changed. Once the promote is done, the registry is free again."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    server, url = replica
    root, (name,) = _registered(tmp_path, 1)
    server.hold_chat.set()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root), name, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert server.chat_arrived.wait(60), holder.stderr.read() if holder.poll() is not None else "no smoke request"
        refused = CliRunner().invoke(
            app, ["adapters", "retire", name, "-r", str(root), "--server", url], env={"EE_REGISTRY_WAIT_S": "0", "EE_USER": "ops"}
        )
        assert refused.exit_code == 1, refused.output
        assert f"error: The adapter registry at {root} is busy: pid {holder.pid} on " in refused.stderr
        assert f": promote of {name} by pipeline" in refused.stderr and "EE_REGISTRY_WAIT_S" in refused.stderr
        assert LocalAdapterRegistry(root, create=False).get(name).status == "candidate" and name in server.loaded
    finally:
        server.hold_chat.clear()
        server.release_chat.set()
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0 and out.strip() == "promoted", err
    registry = LocalAdapterRegistry(root, create=False, wait_s=0)
    assert registry.get(name).status == "live"
    with pytest.raises(InvalidTransitionError):
        registry.retire(name)  # the lease is free: the registry's own rule answers
    _consistent(root, server)


def test_a_bounded_wait_for_a_held_registry_ends_with_the_holder_named_and_nothing_changed(tmp_path: Path) -> None:
    """A direct switch_live (library use) honours the lease as the CLI commands do: it waits wait_s, then gives up."""
    from ee_middleware.adapters.errors import RegistryBusyError

    root, (name,) = _registered(tmp_path, 1)
    code = (
        "import sys; from ee_middleware.adapters.registry import LocalAdapterRegistry\n"
        "with LocalAdapterRegistry(sys.argv[1]).operation('promote of X', by='someone'):\n"
        "    print('held', flush=True); sys.stdin.readline()"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiting = LocalAdapterRegistry(root, create=False, wait_s=0.3)
        with pytest.raises(RegistryBusyError, match=r"busy: pid \d+ on .*: promote of X by someone\. Waited 0\.3 s") as caught:
            waiting.switch_live(name, by="me")
        assert caught.value.holder.startswith(f"pid {holder.pid} ")
        assert waiting.resolve("bot") is None and [e["action"] for e in waiting.history()] == ["register"]
    finally:
        holder.kill()
        holder.wait()
    assert LocalAdapterRegistry(root, create=False, wait_s=0).switch_live(name) is None, "a killed holder released the lease"
    assert LocalAdapterRegistry(root, create=False).resolve("bot") == name


def test_the_wait_comes_from_ee_registry_wait_s_and_a_bad_value_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.adapters.errors import RegistryError

    monkeypatch.setenv("EE_REGISTRY_WAIT_S", "7.5")
    assert LocalAdapterRegistry(tmp_path / "r").wait_s == 7.5
    monkeypatch.setenv("EE_REGISTRY_WAIT_S", "soon")
    registry = LocalAdapterRegistry(tmp_path / "r")
    assert registry.list() == [] and registry.resolve("bot") is None, "readers (the router) do not need it"
    with pytest.raises(RegistryError, match="EE_REGISTRY_WAIT_S='soon' is not a number of seconds"):
        registry.retire("bot-v1-00000000")
    assert os.environ["EE_REGISTRY_WAIT_S"] == "soon"
