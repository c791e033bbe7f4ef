"""Journaled worlds: a restore undoes only what the calls since the snapshot wrote, and stays exact."""

from __future__ import annotations

import copy
import pickle
import random
from typing import Any

from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.runner import ReplaySettings, replay_trajectory
from ee_middleware.replay.sandboxes.journal import _MISSING, JDict, JList, JournalSnapshot
from ee_middleware.replay.sandboxes.python import PythonSandbox, WorldSnapshot
from ee_middleware.testing import check_sandbox
from tests.replay.sandboxes import linked_world as linked
from tests.replay.sandboxes import retail_world as retail


def _plain(value: Any) -> Any:
    """The world as plain dicts and lists (the journaling subclasses compare equal, but type matters here)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_a_database_world_passes_the_conformance_kit_through_the_journal() -> None:
    sandbox = retail.make_sandbox()
    sandbox.reset(retail.SMALL)
    assert isinstance(sandbox.snapshot(), JournalSnapshot) and type(sandbox.world) is JDict
    check_sandbox(
        retail.make_sandbox,
        environment=retail.SMALL,
        mutate=ToolCall(id="m", name="place_order", arguments={"user_id": "u1", "product_id": "p2", "quantity": 1}),
        read=[
            ToolCall(id="r1", name="get_user", arguments={"user_id": "u1"}),
            ToolCall(id="r2", name="get_product", arguments={"product_id": "p2"}),
            ToolCall(id="r3", name="list_orders", arguments={"user_id": "u1"}),
        ],
        require_digest=True,
    )


def test_a_read_only_call_leaves_nothing_to_undo_and_a_write_only_its_own_keys() -> None:
    sandbox = retail.make_sandbox()
    sandbox.reset(retail.ONE_MB)
    snapshot = sandbox.snapshot()
    journal = snapshot.journal
    assert journal is not None
    sandbox.execute(ToolCall(id="r", name="list_orders", arguments={"user_id": "u5"}))
    assert journal.entries == []
    sandbox.execute(ToolCall(id="w", name="update_address", arguments={"user_id": "u5", "street": "s", "city": "c", "zip": "z"}))
    assert len(journal.entries) == 1
    sandbox.restore(snapshot)
    assert journal.entries == [] and _plain(sandbox.world) == _plain(retail.build(retail.ONE_MB))


_OPS = [
    lambda d, r: d.__setitem__(f"k{r.randrange(6)}", r.randrange(9)),
    lambda d, r: d.pop(f"k{r.randrange(6)}", None),
    lambda d, r: d.setdefault(f"k{r.randrange(6)}", []),
    lambda d, r: d.update({f"k{r.randrange(6)}": {"n": r.randrange(3)}}, z=1),
    lambda d, r: d.popitem() if d else None,
    lambda d, r: d.clear() if r.random() < 0.1 else None,
    lambda d, r: d.__delitem__(next(iter(d))) if d else None,
    lambda d, r: d.__ior__({"m": [1, 2]}),
]
_LIST_OPS = [
    lambda xs, r: xs.append({"x": r.randrange(5)}),
    lambda xs, r: xs.extend([r.randrange(5), [r.randrange(5)]]),
    lambda xs, r: xs.insert(0, r.randrange(5)),
    lambda xs, r: xs.pop() if xs else None,
    lambda xs, r: xs.reverse(),
    lambda xs, r: xs.__setitem__(slice(0, 1), [7, 8]),
    lambda xs, r: xs.__delitem__(0) if xs else None,
    lambda xs, r: xs.__iadd__([3]),
    lambda xs, r: xs.__imul__(2) if len(xs) < 20 else None,
    lambda xs, r: xs.remove(xs[-1]) if xs else None,
    lambda xs, r: xs.sort(key=repr),
    lambda xs, r: xs.clear() if r.random() < 0.1 else None,
]


def _scramble(world: dict[str, Any], seed: int) -> str:
    """A tool that makes random writes of every kind, also into containers it inserted itself."""
    rng = random.Random(seed)
    for _ in range(rng.randrange(1, 8)):
        table = world[rng.choice(["a", "b", "shared"])]
        if isinstance(table, dict):
            rng.choice(_OPS)(table, rng)
            nested = [v for v in table.values() if isinstance(v, (dict, list))]
        else:
            rng.choice(_LIST_OPS)(table, rng)
            nested = [v for v in table if isinstance(v, (dict, list))]
        for inner in nested[:1]:
            (rng.choice(_OPS) if isinstance(inner, dict) else rng.choice(_LIST_OPS))(inner, rng)
    return repr(world)


def _scramble_world(environment: dict[str, Any] | None) -> dict[str, Any]:
    shared = {"s": [1, 2]}
    return {"a": {"k1": 1, "k2": {"n": 0}, "sh": shared}, "b": [1, [2, 3], {"x": 1}], "shared": shared}


def test_random_writes_of_every_kind_restore_exactly_in_any_order_and_match_whole_copies() -> None:
    rng = random.Random(11)
    journaled = PythonSandbox(_scramble_world, tools={"scramble": _scramble})
    copied = PythonSandbox(_scramble_world, tools={"scramble": _scramble}, journal=False)
    for sandbox in (journaled, copied):
        sandbox.reset(None)
    snapshots: list[tuple[Any, Any, Any]] = []  # (journaled snapshot, whole-copy snapshot, the world then)
    for i in range(400):
        roll = rng.random()
        if roll < 0.2 or not snapshots:
            snapshots.append((journaled.snapshot(), copied.snapshot(), copy.deepcopy(_plain(copied.world))))
        elif roll < 0.45:
            j, c, expected = rng.choice(snapshots)
            journaled.restore(j)
            copied.restore(c)
            assert _plain(journaled.world) == expected
        else:
            call = ToolCall(id=f"c{i}", name="scramble", arguments={"seed": i})
            assert journaled.execute(call) == copied.execute(call)
        assert _plain(journaled.world) == _plain(copied.world)
        assert journaled.state_digest() == copied.state_digest()
        # aliasing survives: the shared dict is one object in both places
        assert (journaled.world["a"].get("sh") is journaled.world["shared"]) == (copied.world["a"].get("sh") is copied.world["shared"])
    assert type(journaled.world["b"]) is JList


def test_a_world_that_gains_a_set_falls_back_to_whole_copies_and_stays_exact() -> None:
    def add_set(world: dict[str, Any]) -> str:
        world["tags"] = {"a"}
        return "ok"

    def add_tag(world: dict[str, Any], tag: str) -> str:
        world["tags"].add(tag)
        return repr(sorted(world["tags"]))

    sandbox = PythonSandbox(lambda env: {"n": 1}, tools={"add_set": add_set, "add_tag": add_tag})
    sandbox.reset(None)
    start = sandbox.snapshot()
    sandbox.execute(ToolCall(id="1", name="add_set", arguments={}))
    with_set = sandbox.snapshot()
    assert isinstance(with_set, WorldSnapshot)
    sandbox.execute(ToolCall(id="2", name="add_tag", arguments={"tag": "b"}))
    sandbox.restore(with_set)
    assert sandbox.world["tags"] == {"a"}
    sandbox.restore(start)
    assert _plain(sandbox.world) == {"n": 1}


def test_a_journal_snapshot_pickles_as_a_whole_copy_for_the_subprocess_sandbox() -> None:
    sandbox = retail.make_sandbox()
    sandbox.reset(retail.SMALL)
    snapshot = sandbox.snapshot()
    data = pickle.dumps(snapshot)
    sandbox.execute(ToolCall(id="w", name="update_address", arguments={"user_id": "u1", "street": "s", "city": "c", "zip": "z"}))
    other = retail.make_sandbox()
    other.reset(retail.SMALL)
    other.execute(ToolCall(id="w", name="cancel_order", arguments={"order_id": "o3"}))
    other.restore(pickle.loads(data))
    assert _plain(other.world) == _plain(retail.build(retail.SMALL))


def test_replay_gives_the_same_rollouts_with_and_without_the_journal() -> None:
    trajectory = retail.trajectory(retail.SMALL, 12, seed=5)
    settings = ReplaySettings(replay_id="journal", policy="mutate", k=6, seed=3)
    outcomes = [
        replay_trajectory(trajectory, retail.make_sandbox(journal=journal), Proposer(MutationPolicy(), k=6), settings)
        for journal in (True, False)
    ]
    journaled, copied = ([r.model_dump(mode="json", exclude={"created_at", "duration_ms"}) for r in o.rollouts] for o in outcomes)
    assert len(journaled) >= 40 and journaled == copied
    writes = {"place_order", "cancel_order", "update_address", "remove_tag"}
    assert any(not r["observation"]["is_error"] and r["action"]["tool_call"]["name"] in writes for r in journaled), "no branch wrote"
    assert outcomes[0].record.fidelity_mismatches == 0 == outcomes[1].record.fidelity_mismatches


def test_a_world_whose_parts_refer_back_to_each_other_snapshots_restores_and_copies_as_it_is() -> None:
    """A reviewer's inventory world (an order naming its customer, whose list holds the order): with the journal, a
    restore past a newer snapshot, a snapshot pickled for the subprocess sandbox and ``close`` raised "cannot snapshot
    its world ... neither pickled nor deep-copied (RecursionError)", and the conformance kit failed it, though the world
    pickles and deep-copies as plain data: the journaling containers pickled with their items as constructor arguments."""
    sandbox = linked.make_sandbox()
    sandbox.reset({"customers": 2})
    first = sandbox.snapshot()
    sandbox.execute(ToolCall(id="w1", name="cancel_order", arguments={"customer_id": "C0", "order_id": "O00"}))
    second = sandbox.snapshot()
    sandbox.execute(ToolCall(id="w2", name="cancel_order", arguments={"customer_id": "C1", "order_id": "O11"}))
    for snapshot, cancelled in ((first, []), (second, ["O00"]), (first, [])):
        sandbox.restore(snapshot)
        world = sandbox.world
        assert [o["id"] for c in world["customers"].values() for o in c["orders"] if o["status"] == "cancelled"] == cancelled
        assert all(o["customer"] is c for c in world["customers"].values() for o in c["orders"]), "the links kept"
    for copied in (pickle.loads(pickle.dumps(sandbox.world)), copy.deepcopy(sandbox.world)):
        assert all(o["customer"] is c for c in copied["customers"].values() for o in c["orders"])
        assert type(copied["customers"]) is JDict and type(copied["customers"]["C0"]["orders"]) is JList
    other = linked.make_sandbox()
    other.reset({"customers": 2})
    other.restore(pickle.loads(pickle.dumps(second)))
    assert other.execute(ToolCall(id="r", name="get_order", arguments={"customer_id": "C0", "order_id": "O00"})).content == (
        '{"id": "O00", "status": "cancelled", "customer": "C0"}'
    )
    sandbox.close()
    other.close()
    for isolation in (None, True):
        check_sandbox(
            "tests.replay.sandboxes.linked_world:make_sandbox",
            environment={"customers": 2},
            mutate=ToolCall(id="m", name="cancel_order", arguments={"customer_id": "C1", "order_id": "O10"}),
            read=ToolCall(id="r", name="get_order", arguments={"customer_id": "C1", "order_id": "O10"}),
            subprocess_isolation=isolation,
        )


def _job_queue_sandbox(**options: Any) -> PythonSandbox:
    """A scheduler's world: a heap of jobs that ``add_job`` pushes with heapq (C code that writes the list in place, past
    its own methods), and two read-only tools."""
    import heapq

    def add_job(world: dict[str, Any], priority: int, name: str) -> str:
        heapq.heappush(world["queue"], [priority, name])
        return f"queued {name}"

    def list_jobs(world: dict[str, Any]) -> list[Any]:
        return world["queue"]

    def count_jobs(world: dict[str, Any]) -> int:
        return len(world["queue"])

    def build(environment: dict[str, Any] | None) -> dict[str, Any]:
        return {"queue": [[1, "deploy"], [5, "backup"]]}

    return PythonSandbox(build, tools={"add_job": add_job, "list_jobs": list_jobs, "count_jobs": count_jobs}, **options)


def test_writes_made_past_the_lists_own_methods_never_reach_the_next_branch(caplog: Any) -> None:
    """Sweep S5: ``heapq.heappush`` on a journaled list wrote it without the journal seeing it, so every branch after one
    that queued a job saw that job (0 fidelity mismatches); the conformance kit blamed state kept outside the world."""
    sandbox = _job_queue_sandbox()
    sandbox.reset(None)
    start = sandbox.snapshot()
    listed = sandbox.execute(ToolCall(id="r", name="list_jobs", arguments={}))
    assert sandbox._journal is not None, "a tool that writes nothing (or through the containers) keeps the journal"
    for name in ("report", "cleanup", "index"):  # alternatives, each from the same state
        sandbox.restore(start)
        sandbox.execute(ToolCall(id=name, name="add_job", arguments={"priority": 3, "name": name}))
        sandbox.restore(start)
        assert sandbox.execute(ToolCall(id="r", name="list_jobs", arguments={})).content == listed.content
    assert "writes the world past its dicts' and lists' own methods" in caplog.text and "'add_job'" in caplog.text
    check_sandbox(
        _job_queue_sandbox,
        environment=None,
        mutate=ToolCall(id="m", name="add_job", arguments={"priority": 0, "name": "urgent"}),
        read=[ToolCall(id="r", name="list_jobs", arguments={}), ToolCall(id="c", name="count_jobs", arguments={})],
    )


def test_tools_that_write_through_the_containers_keep_the_journal_after_their_check() -> None:
    sandbox = retail.make_sandbox()
    sandbox.reset(retail.SMALL)
    start = sandbox.snapshot()
    for _ in range(3):
        sandbox.restore(start)
        sandbox.execute(ToolCall(id="m", name="place_order", arguments={"user_id": "u1", "product_id": "p2", "quantity": 1}))
    assert sandbox._journal is not None and isinstance(sandbox.snapshot(), JournalSnapshot)


def test_a_large_world_written_past_the_journal_fails_its_trajectory_naming_the_fix(monkeypatch: Any) -> None:
    """Above AUDIT_COPY_CHARS the world is not copied for the check: the write cannot be recovered from, so the call fails
    loudly (never a silently wrong branch), and the sandbox copies whole worlds from its next trajectory on."""
    import pytest

    from ee_middleware.errors import SandboxError
    from ee_middleware.replay.sandboxes import python

    monkeypatch.setattr(python, "AUDIT_COPY_CHARS", 0)
    sandbox = _job_queue_sandbox()
    sandbox.reset(None)
    start = sandbox.snapshot()
    with pytest.raises(SandboxError, match=r"tool 'add_job' writes the world past .*PythonSandbox\(\.\.\., journal=False\)"):
        sandbox.execute(ToolCall(id="a", name="add_job", arguments={"priority": 3, "name": "report"}))
    sandbox.reset(None)
    assert isinstance(sandbox.snapshot(), WorldSnapshot), "whole copies from the next trajectory on"
    for name in ("report", "cleanup"):
        start = sandbox.snapshot()
        sandbox.execute(ToolCall(id=name, name="add_job", arguments={"priority": 3, "name": name}))
        sandbox.restore(start)
        assert sandbox.execute(ToolCall(id="r", name="count_jobs", arguments={})).content == "2"


def test_a_world_tool_given_as_a_langchain_tool_is_checked_too() -> None:
    """Review: the check ran only for world tools given as functions; an ``@tool`` object taking the world was not."""
    import heapq

    from langchain_core.tools import tool

    @tool
    def add_job(world: dict, priority: int, name: str) -> str:
        """Queue a job."""
        heapq.heappush(world["queue"], [priority, name])
        return f"queued {name}"

    def list_jobs(world: dict[str, Any]) -> list[Any]:
        return world["queue"]

    sandbox = PythonSandbox(
        lambda environment: {"queue": [[1, "deploy"], [5, "backup"]]}, tools={"add_job": add_job, "list_jobs": list_jobs}
    )
    sandbox.reset(None)
    start = sandbox.snapshot()
    listed = sandbox.execute(ToolCall(id="r", name="list_jobs", arguments={})).content
    for name in ("a", "b"):
        sandbox.restore(start)
        assert sandbox.execute(ToolCall(id=name, name="add_job", arguments={"priority": 3, "name": name})).content == f"queued {name}"
        sandbox.restore(start)
        assert sandbox.execute(ToolCall(id="r", name="list_jobs", arguments={})).content == listed


def test_a_first_call_that_writes_nothing_does_not_clear_the_tool() -> None:
    """Review: a tool's first call that failed (a duplicate job) counted as its check; its next call wrote past the
    journal unchecked. The world the tool left (keys in its order) is the one replay goes on with."""
    import heapq

    def add_job(world: dict[str, Any], priority: int, name: str) -> str:
        if any(job[1] == name for job in world["queue"]):
            raise ValueError(f"{name} is queued already")
        world["names"][name] = priority  # journaled, a key at the end
        heapq.heappush(world["queue"], [priority, name])
        return f"queued {name}"

    def show(world: dict[str, Any]) -> str:
        return json.dumps(world)

    import json

    sandbox = PythonSandbox(
        lambda environment: {"queue": [[1, "deploy"]], "names": {"deploy": 1}}, tools={"add_job": add_job, "show": show}
    )
    sandbox.reset(None)
    start = sandbox.snapshot()
    shown = sandbox.execute(ToolCall(id="s", name="show", arguments={})).content
    assert sandbox.execute(ToolCall(id="d", name="add_job", arguments={"priority": 1, "name": "deploy"})).is_error
    sandbox.restore(start)
    sandbox.execute(ToolCall(id="a", name="add_job", arguments={"priority": 3, "name": "report"}))
    assert json.loads(sandbox.execute(ToolCall(id="s", name="show", arguments={})).content) == {
        "queue": [[1, "deploy"], [3, "report"]],
        "names": {"deploy": 1, "report": 3},
    }
    sandbox.restore(start)
    assert sandbox.execute(ToolCall(id="s", name="show", arguments={})).content == shown


def test_a_write_past_the_journal_that_json_would_not_show_is_found(caplog: Any) -> None:
    """The check compared the worlds' JSON text, which writes the key ``1`` as ``"1"`` and a tuple as a list: a tool that
    swapped one for the other past the journal left the same text, and every later branch saw its write."""

    def relabel(world: dict[str, Any]) -> str:
        dict.clear(world["stock"])  # past JDict's own methods
        dict.__setitem__(world["stock"], "1", ("apple", 3))
        return "relabelled"

    def show(world: dict[str, Any]) -> str:
        return repr(world)

    sandbox = PythonSandbox(lambda environment: {"stock": {1: ["apple", 3]}}, tools={"relabel": relabel, "show": show})
    sandbox.reset(None)
    start = sandbox.snapshot()
    shown = sandbox.execute(ToolCall(id="s", name="show", arguments={})).content
    sandbox.restore(start)
    sandbox.execute(ToolCall(id="r", name="relabel", arguments={}))
    assert "'relabel' writes the world past its dicts' and lists' own methods" in caplog.text
    sandbox.restore(start)
    assert sandbox.execute(ToolCall(id="s", name="show", arguments={})).content == shown


def test_a_check_from_a_state_already_checked_does_not_write_the_world_again(monkeypatch: Any) -> None:
    """The branches of a step start from the same snapshot: the world's text there, found by the first call checked, is
    the text the next check starts from (writing a 1 MB world's text costs about 20 ms); a state moved on is written anew."""
    from ee_middleware.replay.sandboxes import python

    written: list[int] = []
    world_text = python._world_text
    monkeypatch.setattr(python, "_world_text", lambda world: written.append(1) or world_text(world))
    sandbox = retail.make_sandbox()
    sandbox.reset(retail.SMALL)
    start = sandbox.snapshot()
    sandbox.execute(ToolCall(id="u", name="get_user", arguments={"user_id": "u1"}))
    assert len(written) == 2, "the state before the call and after its writes are undone"
    sandbox.restore(start)
    sandbox.execute(ToolCall(id="p", name="get_product", arguments={"product_id": "p2"}))
    assert len(written) == 3, "the state before the call was known: only the one after the undo"
    sandbox.execute(ToolCall(id="m", name="place_order", arguments={"user_id": "u1", "product_id": "p2", "quantity": 1}))
    assert len(written) == 4, "place_order starts from the state the read-only get_product left, known too"
    sandbox.execute(ToolCall(id="o", name="list_orders", arguments={"user_id": "u1"}))
    assert len(written) == 6, "a state place_order's writes moved on to is written anew"
    sandbox.reset(retail.SMALL)
    sandbox.execute(ToolCall(id="c", name="get_order", arguments={"order_id": "o1"}))
    assert len(written) == 8, "a new trajectory's world is written anew"


def test_a_world_whose_text_does_not_say_all_is_checked_as_copies() -> None:
    """``repr`` writes a part that refers back to a container it is in as ``[...]``/``{...}``, whichever it is: such a
    world's text cannot show a write that swaps one for another, so it is compared as copies, as are worlds ``repr``
    cannot write."""
    from ee_middleware.replay.sandboxes.python import _world_text

    customer: dict[str, Any] = {"id": "C1", "orders": []}
    customer["orders"].append({"id": "O1", "customer": customer})
    assert _world_text({"customers": [customer]}) is None
    assert _world_text({"note": "see [...]"}) is None, "(text holding the marks: copies too, never a wrong answer)"
    assert _world_text({"pin": 10**5000}) is None
    assert _world_text({"stock": {1: ("apple", 3)}}) == "{'stock': {1: ('apple', 3)}}"


def _half_written_world(environment: Any) -> dict[str, Any]:
    return {"items": ["A"], "kv": {"a": 1}, "orders": {1: "pen", 2: "ink", 3: "pad"}}


def _parsed(values: list[str]) -> Any:
    for value in values:
        if value.startswith("!"):
            raise ValueError(f"cannot parse {value!r}")
        yield value


class _Lookup:
    """A mapping that is not a dict (``keys`` and ``__getitem__``), whose lookups fail for a key starting with ``!``."""

    def __init__(self, values: list[str]) -> None:
        self.values = values

    def keys(self) -> list[str]:
        return self.values

    def __getitem__(self, key: str) -> int:
        if key.startswith("!"):
            raise KeyError(key)
        return 1


_HALF_WRITING_TOOLS = {
    # each stops half way with an error it lets through or catches, as a tool in production may: what it wrote before
    # the error stays in the world there (CPython's list.extend and dict.update keep it), and the next call sees it
    "extend": lambda world, values: world["items"].extend(_parsed(values)),
    "iadd": lambda world, values: world["items"].__iadd__(_parsed(values)),
    "update_pairs": lambda world, values: world["kv"].update((v, 1) for v in _parsed(values)),
    "update_mapping": lambda world, values: world["kv"].update(_Lookup(values)),
    "ior_mapping": lambda world, values: world["kv"].__ior__(_Lookup(values)),
    "caught": lambda world, values: _caught(world["items"].extend, _parsed(values)),
    "caught_pairs": lambda world, values: _caught(world["kv"].update, [(v, 1) if v[0] != "!" else (v, 1, 2) for v in values]),
    "caught_items": lambda world, values: _caught(world["kv"].update, [(v, 1) if v[0] != "!" else 7 for v in values]),
    # an int key removed by an equal float (what a tool's number argument arrives as), the dict's last key
    "cancel": lambda world, order: world["orders"].pop(order),
    "cancel_del": lambda world, order: world["orders"].__delitem__(order),
    "show": lambda world: repr(world),
}


def _caught(write: Any, values: Any) -> str:
    try:
        write(values)
    except (ValueError, TypeError) as error:  # what the tool says is CPython's own message, in production as here
        return f"Error: {type(error).__name__}: {error}"
    return "ok"


def test_a_write_stopped_half_way_is_seen_as_production_sees_it_and_undone_whole() -> None:
    """Defect (replay sweep): ``JList.extend`` (and ``+=``) made a list of its values before writing, and ``JDict.update``
    a dict, so a generator that raised half way wrote nothing through the journal, where the world in production (and
    the sandbox with whole copies) keeps what came before the error: the expert's next call then saw another world (a
    fidelity mismatch in every branch). The journal notes the write first and lets ``list``/``dict`` write as they do."""
    names = ("extend", "iadd", "update_pairs", "update_mapping", "ior_mapping", "caught", "caught_pairs", "caught_items")
    calls = [(name, {"values": ["B", "C", "!d", "E"]}) for name in names]
    for name, arguments in calls:
        shown = {}
        for journal in (True, False):
            sandbox = PythonSandbox(_half_written_world, tools=_HALF_WRITING_TOOLS, journal=journal)
            sandbox.reset(None)
            snapshot = sandbox.snapshot()
            said = sandbox.execute(ToolCall(id="c", name=name, arguments=arguments)).content
            after = sandbox.execute(ToolCall(id="s", name="show", arguments={})).content
            sandbox.restore(snapshot)
            restored = sandbox.execute(ToolCall(id="s", name="show", arguments={})).content
            shown[journal] = (said, after, restored)
            sandbox.close()
        assert shown[True] == shown[False], name
        world = _half_written_world(None)
        assert shown[True][2] == repr(world), f"{name}: the restore undid the half write"
        assert shown[True][1] != repr(world), f"{name}: the half write is seen"
    assert "'B': 1, 'C': 1" in shown[True][1] and "'E'" not in shown[True][1]
    assert shown[True][0] == "Error: TypeError: cannot convert dictionary update sequence element #2 to a sequence"


def test_an_update_of_pairs_notes_the_keys_it_writes_not_the_whole_dict() -> None:
    """Review: the first fix noted a whole copy of the dict before an update of pairs or of a mapping that is not a dict
    (a large table's copy for each such call); the keys are written one by one as ``dict.update`` writes them, each noted."""
    sandbox = PythonSandbox(_half_written_world, tools=_HALF_WRITING_TOOLS)
    sandbox.reset(None)
    snapshot = sandbox.snapshot()
    journal = snapshot.journal
    assert journal is not None
    sandbox.execute(ToolCall(id="c", name="update_pairs", arguments={"values": ["B", "a", "!d"]}))
    assert [(key, old) for container, key, old in journal.entries if container is sandbox.world["kv"]] == [("B", _MISSING), ("a", 1)]
    sandbox.restore(snapshot)
    assert sandbox.world["kv"] == {"a": 1} and list(sandbox.world["kv"]) == ["a"]


def test_removing_a_dicts_last_key_by_an_equal_key_of_another_type_restores_the_dicts_own_key() -> None:
    """Defect (replay sweep): undoing a pop or del of a dict's last key put back the key the tool removed it by (3.0),
    not the dict's own (3): the next branch saw ``{3.0: 'pad'}``, JSON ``"3.0"``, where the recorded world had ``3``."""
    for name in ("cancel", "cancel_del"):
        sandbox = PythonSandbox(_half_written_world, tools=_HALF_WRITING_TOOLS)
        sandbox.reset(None)
        snapshot = sandbox.snapshot()
        for order in (1.0, 3.0, 3):  # not the last key (a copy), the last key by a float, by itself
            sandbox.execute(ToolCall(id="c", name=name, arguments={"order": order}))
            sandbox.restore(snapshot)
            orders = sandbox.world["orders"]
            assert list(orders) == [1, 2, 3] and all(type(key) is int for key in orders), (name, order, orders)
        sandbox.close()
