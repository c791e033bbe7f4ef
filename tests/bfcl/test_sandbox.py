"""The BFCL sandbox's snapshots: restored worlds draw the same random numbers, and restoring seeds no generator."""

from __future__ import annotations

import random

import pytest

from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.records import ToolCall

_MESSAGES = {
    "kind": "bfcl",
    "involved_classes": ["MessageAPI", "VehicleControlAPI"],
    "initial_config": {
        "MessageAPI": {
            "user_map": {"ann": "USR001", "bob": "USR002"},
            "current_user": "USR001",
            "random_seed": 1234,
        }
    },
}
_SEND = ToolCall(id="", name="send_message", arguments={"receiver_id": "USR002", "message": "hi"})


def test_a_restored_world_draws_the_same_random_numbers_as_the_snapshot_did() -> None:
    # MessageAPI draws each message id from its own random.Random, VehicleControlAPI holds one too: a branch from a
    # restored snapshot must draw what the world it was taken from draws next.
    sandbox = BFCLSandbox()
    sandbox.reset(_MESSAGES)
    sandbox.execute(_SEND)
    snapshot = sandbox.snapshot()
    expected = sandbox.execute(_SEND).content
    drawn = [instance._random.random() for instance in sandbox.world.values()]
    for _ in range(3):
        branch = BFCLSandbox()  # restores every part of a snapshot it did not take
        branch.reset(_MESSAGES)
        branch.restore(snapshot)
        assert branch.execute(_SEND).content == expected
        assert [instance._random.random() for instance in branch.world.values()] == drawn
        assert all(type(instance._random) is random.Random for instance in branch.world.values())


def test_restoring_a_snapshot_seeds_no_random_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unpickled the default way, each random.Random was built by Random(), seeded from the OS and then overwritten by its
    # state read back as 625 ints: about 80 of the 90 us a restore of MessageAPI took, on every branch that used it.
    sandbox = BFCLSandbox()
    sandbox.reset(_MESSAGES)
    snapshot = sandbox.snapshot()
    seeded = []
    original = random.Random.seed
    monkeypatch.setattr(random.Random, "seed", lambda self, *args, **kwargs: (seeded.append(args), original(self, *args, **kwargs)))
    sandbox.execute(_SEND)
    sandbox.restore(snapshot)
    assert sandbox.execute(_SEND).content.startswith('{"sent_status": true')
    assert seeded == []


class _OwnRandom(random.Random):
    """A subclass of ``random.Random``, pickled its own way (by its class)."""


def test_a_subclass_of_random_keeps_its_own_pickling() -> None:
    sandbox = BFCLSandbox()
    sandbox.reset(_MESSAGES)
    sandbox.world["MessageAPI"]._random = _OwnRandom(7)
    snapshot = sandbox.snapshot()
    expected = sandbox.execute(_SEND).content
    sandbox.restore(snapshot)
    restored = sandbox.world["MessageAPI"]._random
    assert type(restored) is _OwnRandom
    assert sandbox.execute(_SEND).content == expected


@pytest.mark.parametrize("value", ["false", "no", "maybe", 1, None])
def test_allow_network_that_is_no_bool_is_refused(value: object) -> None:
    """Was: stored as given and read by its truth, so ``allow_network = "false"`` (or ``--sandbox-setting
    allow_network=maybe``) let replay call the tools that send real network requests."""
    from ee_middleware.errors import SandboxError
    from ee_middleware.replay.sandboxes.registry import build_sandbox

    with pytest.raises(SandboxError, match=r"Bad settings for sandbox 'bfcl': allow_network must be true or false, got"):
        build_sandbox("bfcl", allow_network=value)
    assert build_sandbox("bfcl", allow_network=False).refusal_hint("fetch_url_content") is not None
