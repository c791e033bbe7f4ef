"""A replay sandbox over the real BFCL multi-turn backends."""

from __future__ import annotations

import copyreg
import io
import pickle
import random
from dataclasses import dataclass, field
from typing import Any

from ee_middleware.bfcl.world import NETWORK_CLASSES, NETWORK_METHODS, World, execute, method_table, network_tools, world_from_environment
from ee_middleware.errors import EnvironmentUnavailableError, SandboxError
from ee_middleware.records import Observation, ToolCall
from ee_middleware.replay.sandboxes.digest import canonical, digest_text


@dataclass(frozen=True, eq=False)
class BFCLSnapshot:
    """The world at one moment: each backend instance pickled on its own."""

    parts: dict[str, bytes]
    randoms: dict[str, tuple[tuple[Any, ...], ...]] = field(default_factory=dict)
    """The states of the ``random.Random`` instances each part holds, kept beside its pickle (see :class:`_Pickler`)."""


class BFCLSandbox:
    """Executes tool calls on BFCL's backend instances (file system, trading bot, travel, ...).

    The environment reference is the entry's ``initial_config`` and ``involved_classes`` (see
    :attr:`ee_middleware.bfcl.data.BFCLEntry.environment`). The backends are deterministic and a
    snapshot holds a pickled copy of each instance, so branching from any recorded state is exact.

    Restores are incremental: a call only ever changes the instance that owns the method, so
    restoring the snapshot the sandbox last started from only unpickles the instances that calls
    touched since (usually one), not the whole world.

    No network by default: the tools that send real requests (``WebSearchAPI.fetch_url_content``
    and ``search_engine_query``, see :data:`~ee_middleware.bfcl.world.NETWORK_METHODS`) are not
    covered, so replay refuses and counts them, and environments with a backend that goes online
    when loaded (:data:`~ee_middleware.bfcl.world.NETWORK_CLASSES`) cannot be reset.
    ``allow_network=True`` (``ee replay run --allow-network``) lifts both.
    """

    kind = "bfcl"
    worker_modules = ("ee_middleware.bfcl.warm",)
    """Imported once by a replay job's fork server for all its workers: the backend classes, loaded (see the protocol)."""

    def __init__(self, *, allow_network: bool = False) -> None:
        if not isinstance(allow_network, bool):  # ("false" is a true value: it let replay reach the network)
            raise ValueError(
                f"allow_network must be true or false, got {type(allow_network).__name__} {allow_network!r:.80}: "
                "write allow_network = true (TOML) or --sandbox-setting allow_network=true."
            )
        self.allow_network = allow_network
        self._world: World | None = None
        self._tools: dict[str, tuple[str, str]] = {}
        self._offline: frozenset[str] = frozenset()
        self._base: BFCLSnapshot | None = None
        self._dirty: set[str] = set()

    @property
    def world(self) -> World:
        if self._world is None:
            raise SandboxError("bfcl sandbox: call reset(environment) first.")
        return self._world

    def covers(self, tool_name: str) -> bool:
        return tool_name in self._tools and tool_name not in self._offline

    def refusal_hint(self, tool_name: str) -> str | None:
        """Why replay refused ``tool_name`` and how to allow it, when that is the network rule."""
        if self.allow_network or not any(tool_name in methods for methods in NETWORK_METHODS.values()):
            return None
        return f"it sends real network requests. {_ALLOW_HINT}"

    def reset(self, environment: dict[str, Any] | None) -> None:
        if not self.allow_network:
            classes = (environment or {}).get("involved_classes")
            online = [name for name in classes if isinstance(name, str) and name in NETWORK_CLASSES] if isinstance(classes, list) else []
            if online:
                raise EnvironmentUnavailableError(
                    f"BFCL backend {online[0]} {NETWORK_CLASSES[online[0]]}, and replay does not reach the network by default. {_ALLOW_HINT}"
                )
        self._world = world_from_environment(environment)
        self._tools = method_table(self._world)
        self._offline = frozenset() if self.allow_network else network_tools(self._tools)
        self._base = None
        self._dirty = set()

    def execute(self, call: ToolCall) -> Observation:
        world = self.world
        if call.name in self._offline:  # replay never gets here (covers() is false); a direct caller might
            return Observation(
                content=f"Error: tool '{call.name}' was not run: it sends real network requests. {_ALLOW_HINT}", is_error=True
            )
        owner = self._tools.get(call.name)
        if owner is not None:
            self._dirty.add(owner[0])
        return execute(world, call, table=self._tools)

    def snapshot(self) -> BFCLSnapshot:
        parts, randoms = {}, {}
        for name, instance in self.world.items():
            parts[name], held = _pickled(instance)
            if held:
                randoms[name] = held
        snapshot = BFCLSnapshot(parts, randoms)
        self._base, self._dirty = snapshot, set()
        return snapshot

    def restore(self, snapshot: BFCLSnapshot) -> None:
        world = self.world
        stale = self._dirty if snapshot is self._base else snapshot.parts.keys()
        for name in stale:
            world[name] = _unpickled(snapshot.parts[name], snapshot.randoms.get(name, ()))
        self._base, self._dirty = snapshot, set()

    def state_digest(self) -> str:
        """A digest of every public attribute of every backend instance: what BFCL's state checker compares
        (private ones, like the file system's current directory, are left out as the checker leaves them)."""
        return digest_text({name: canonical(instance) for name, instance in self.world.items()})

    def close(self) -> None:
        self._world = None
        self._tools = {}
        self._offline = frozenset()
        self._base = None
        self._dirty = set()


class _Pickler(pickle.Pickler):
    """Pickles a backend instance, with each plain ``random.Random`` in it (exactly that class; a subclass keeps its
    own reduction) kept aside as its state (:attr:`randoms`) and pickled as its index there.

    Unpickled the default way, a ``Random`` is built by ``Random()``, which seeds it from the OS, and then gets its
    state from 625 ints read from the pickle: about 80 of the 90 us a restore of MessageAPI (which holds one) took,
    where :class:`_Unpickler` sets the state kept aside (all of it: the generator's words and position and
    ``gauss_next``), so the draws are the same."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.randoms: list[tuple[Any, ...]] = []
        self.dispatch_table = {**copyreg.dispatch_table, random.Random: self._reduce_random}

    def _reduce_random(self, rng: random.Random) -> tuple[Any, ...]:
        self.randoms.append(rng.getstate())  # once per object: pickle memoizes what it reduced
        return _random_at, (len(self.randoms) - 1,)


def _random_at(index: int) -> random.Random:  # pragma: no cover - :class:`_Unpickler` puts its own in its place
    raise pickle.UnpicklingError("a BFCL snapshot part that holds a random.Random is read by bfcl.sandbox._Unpickler")


class _Unpickler(pickle.Unpickler):
    """Reads what :class:`_Pickler` wrote, given the states it kept aside."""

    def __init__(self, data: bytes, randoms: tuple[tuple[Any, ...], ...]) -> None:
        super().__init__(io.BytesIO(data))
        self._randoms = randoms

    def find_class(self, module: str, name: str) -> Any:
        if name == "_random_at" and module == __name__:
            return self._random_at
        return super().find_class(module, name)

    def _random_at(self, index: int) -> random.Random:
        rng = random.Random.__new__(random.Random)  # not seeded: setstate sets all of its state
        rng.setstate(self._randoms[index])
        return rng


def _pickled(instance: Any) -> tuple[bytes, tuple[tuple[Any, ...], ...]]:
    """``instance`` pickled by :class:`_Pickler`, and the states of the ``random.Random`` instances it kept aside."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(instance)
    return buffer.getvalue(), tuple(pickler.randoms)


def _unpickled(data: bytes, randoms: tuple[tuple[Any, ...], ...]) -> Any:
    return _Unpickler(data, randoms).load() if randoms else pickle.loads(data)


_ALLOW_HINT = (
    "To allow it, pass --allow-network to `ee replay run` (allow_network = true under [replay]), or BFCLSandbox(allow_network=True)."
)
