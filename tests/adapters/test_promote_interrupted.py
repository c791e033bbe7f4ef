"""A promote stopped by Ctrl-C or SIGTERM (the CLI turns both into ``KeyboardInterrupt``) before its switch is undone as a
failed one is: unloaded from the replicas it reached, ``promote-aborted`` in the history with why, the live adapter
unchanged, and a line saying what is left where. Was: the adapter stayed loaded on the replicas it reached, and the
history ended at ``promote-started``.

The replicas are real HTTP servers speaking vLLM's runtime LoRA API (the stand-in of tests/adapters/helpers.py); the
interruption is raised by a backend at a chosen call, where a signal would land."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.promote import promote
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import VLLMBackend
from ee_middleware.testing.http import serving

from .helpers import StandInVLLM, write_adapter


class InterruptedAt(VLLMBackend):
    """A real backend that is interrupted (as by Ctrl-C) when the promote reaches ``call`` on it (``list``: its second
    listing, the one before the load; ``check``: its first, the check that every replica answers, before anything is
    loaded: a stuck replica stops a promote there)."""

    def __init__(self, url: str, call: str) -> None:
        super().__init__(url, timeout_s=5)
        self.call = call
        self.listings = 0

    def list(self) -> Any:
        self.listings += 1
        if (self.call, self.listings) in (("list", 2), ("check", 1)):
            raise KeyboardInterrupt
        return super().list()

    def load(self, name: str, path: str) -> None:
        if self.call == "load":
            raise KeyboardInterrupt
        super().load(name, path)

    def verify(self, name: str) -> Any:
        if self.call == "verify":
            raise KeyboardInterrupt
        return super().verify(name)


@pytest.fixture
def two_stand_ins() -> Iterator[tuple[list[StandInVLLM], list[str]]]:
    servers = [StandInVLLM(), StandInVLLM()]
    with ExitStack() as stack:
        urls = [stack.enter_context(serving(server)) for server in servers]
        yield servers, urls


def _interrupted_promote(tmp_path: Path, urls: list[str], call: str) -> tuple[LocalAdapterRegistry, str, str, list[str]]:
    """A live adapter promoted on both replicas, then a candidate's promote interrupted at ``call`` on the second (see
    :class:`InterruptedAt`): the registry, the live adapter, the candidate, and what the promote said."""
    registry = LocalAdapterRegistry(tmp_path / "reg")
    live, candidate = (registry.register(write_adapter(tmp_path / f"src{i}", seed=i), "bot").name for i in range(2))
    first = VLLMBackend(urls[0], timeout_s=5)
    promote(registry, live, [first, VLLMBackend(urls[1], timeout_s=5)])
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        promote(registry, candidate, [first, InterruptedAt(urls[1], call)], progress=said.append)
    return registry, live, candidate, said


@pytest.mark.parametrize("call", ["list", "load", "verify"])
def test_a_promote_interrupted_before_its_switch_is_undone_and_noted(
    tmp_path: Path, two_stand_ins: tuple[list[StandInVLLM], list[str]], call: str
) -> None:
    servers, urls = two_stand_ins
    registry, live, candidate, said = _interrupted_promote(tmp_path, urls, call)
    assert candidate not in servers[0].loaded, "unloaded from the replica it reached"
    assert candidate not in servers[1].loaded, "unloaded where its load went through, never loaded where it did not"
    assert registry.resolve("bot") == live and registry.get(candidate).status == "candidate"
    events = registry.history(adapter=candidate)
    assert [e["action"] for e in events] == ["register", "promote-started", "promote-aborted"]
    reason = events[-1]["reason"]
    assert reason.startswith("interrupted (KeyboardInterrupt) before the switch") and f"unloaded from {urls[0]}" in reason, reason
    assert (f"{urls[1]} had not answered its load" in reason) == (call == "load"), reason
    assert said[-1].startswith(f"interrupted: promoting {candidate} stopped before the switch"), said
    assert said[-1].endswith(f"It stays a candidate; bot still serves {live}."), said


class FailingAt(VLLMBackend):
    """A real backend whose smoke request names a problem with the adapter (``verify``), whose load answers too late
    although it went through (``timeout``), or that is interrupted right after an unload went through (``unload``)."""

    def __init__(self, url: str, mode: str | None = None) -> None:
        super().__init__(url, timeout_s=5)
        self.mode = mode

    def unload(self, name: str) -> None:
        super().unload(name)
        if self.mode == "unload":
            raise KeyboardInterrupt

    def load(self, name: str, path: str) -> None:
        super().load(name, path)
        if self.mode == "timeout":
            from ee_middleware.adapters.errors import ServerTimeoutError

            raise ServerTimeoutError("the load timed out", url=self.url)

    def verify(self, name: str) -> Any:
        if self.mode == "verify":
            from ee_middleware.adapters.errors import VerificationError

            raise VerificationError("the smoke request names a problem with the adapter", url=self.url)
        return super().verify(name)


def test_a_failed_promote_interrupted_while_undoing_still_records_its_failure(
    tmp_path: Path, two_stand_ins: tuple[list[StandInVLLM], list[str]]
) -> None:
    """The second replica's smoke request fails as for the adapter's own fault; Ctrl-C lands after the first unload. Was:
    the history ended at promote-started, the adapter a candidate, loaded on the failing replica, nothing said. The first
    replica served it in the same promote, so the failure is recorded as that replica's (promote-aborted), and the
    adapter stays a candidate."""
    servers, urls = two_stand_ins
    registry = LocalAdapterRegistry(tmp_path / "reg")
    live, candidate = (registry.register(write_adapter(tmp_path / f"src{i}", seed=i), "bot").name for i in range(2))
    promote(registry, live, [VLLMBackend(urls[0], timeout_s=5), VLLMBackend(urls[1], timeout_s=5)])
    with pytest.raises(KeyboardInterrupt):
        promote(registry, candidate, [FailingAt(urls[0], "unload"), FailingAt(urls[1], "verify")])
    record = registry.get(candidate)
    assert record.status == "candidate" and registry.resolve("bot") == live
    [aborted] = [e for e in registry.history(adapter=candidate) if e["action"] == "promote-aborted"]
    assert "VerificationError" in aborted["reason"]
    assert f"Then interrupted while unloading it from {urls[0]}: still loaded on {urls[1]}." in aborted["reason"], aborted
    assert f"Not the adapter's fault: it served a smoke request on {urls[0]} in this promote." in aborted["reason"]
    assert [candidate in server.loaded for server in servers] == [False, True]


def test_a_load_that_timed_out_is_said_to_have_perhaps_gone_through(
    tmp_path: Path, two_stand_ins: tuple[list[StandInVLLM], list[str]]
) -> None:
    from ee_middleware.adapters.errors import PromotionError

    _, urls = two_stand_ins
    registry = LocalAdapterRegistry(tmp_path / "reg")
    candidate = registry.register(write_adapter(tmp_path / "src"), "bot").name
    with pytest.raises(PromotionError, match=rf"{urls[1]} did not answer its load in time: it holds {candidate} if that load went"):
        promote(registry, candidate, [FailingAt(urls[0]), FailingAt(urls[1], "timeout")])
    assert "did not answer its load in time" in registry.history(adapter=candidate)[-1]["reason"]


def test_a_promote_interrupted_while_checking_the_replicas_is_noted_and_said(
    tmp_path: Path, two_stand_ins: tuple[list[StandInVLLM], list[str]]
) -> None:
    """Stopped while the first check waits on a replica's model listing (a stuck replica: SIGTERM to a hung promote).
    Was: nothing said, nothing recorded (exit 130 with an empty stderr), where a --timeout there records promote-aborted."""
    servers, urls = two_stand_ins
    registry, live, candidate, said = _interrupted_promote(tmp_path, urls, "check")
    assert not any(candidate in server.loaded for server in servers)
    assert registry.resolve("bot") == live and registry.get(candidate).status == "candidate"
    events = registry.history(adapter=candidate)
    assert [e["action"] for e in events] == ["register", "promote-aborted"]
    assert events[-1]["reason"] == (
        f"interrupted (KeyboardInterrupt) before the switch; while checking the replicas, before any load; {urls[1]} had not "
        "answered its model listing"
    )
    assert said[-1] == (
        f"interrupted: promoting {candidate} stopped before the switch; while checking the replicas, before any load; "
        f"{urls[1]} had not answered its model listing. It stays a candidate; bot still serves {live}."
    )
