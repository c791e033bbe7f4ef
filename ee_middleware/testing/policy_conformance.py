"""A conformance kit for proposal policies: run it against any implementation of the policy protocol.

>>> from ee_middleware.testing import check_policy                           # doctest: +SKIP
>>> check_policy(lambda: MyPolicy(temperature=0.7))                          # doctest: +SKIP

It asks a policy built by ``make_policy`` for alternatives at the decision points of a small recorded trajectory (a
shop's stock room: tools with required and optional arguments, an enum, a nested object, an argument with a default,
and a state offered only some of the tools), built as replay builds them, and checks what replay relies on (see
:mod:`ee_middleware.replay.policies.protocol`):

* the protocol: a non-empty ``name`` (rollout records show it), ``propose(point, k, *, seed)``, ``describe()`` and
  ``close()``;
* ``describe()`` returns the policy's settings as a dict of JSON-able values (replay records keep them; ``ee replay
  run`` refuses a policy whose settings are not), the same each time, after proposing too;
* ``propose`` returns :class:`~ee_middleware.replay.policies.protocol.Proposals` of
  :class:`~ee_middleware.replay.policies.protocol.Candidate` s whose ``call`` is a :class:`~ee_middleware.records.ToolCall`
  and whose ``proposer`` is a :class:`~ee_middleware.records.ProposerInfo` naming the policy (``policy=self.name``:
  rollout records say by it who proposed each alternative; the proposer counts any other answer as a
  ``policy_error``, as it counts a policy that raised);
* usable alternatives (``require_usable``, the default): at most ``k`` candidates, each a call of a tool offered at
  its state, with arguments valid for that tool's schema, none the expert's own action and no two the same (as the tool
  receives them: :meth:`~ee_middleware.replay.policies.schema.ToolSchemas.call_key`, an argument at its schema's
  ``default`` being the argument left out, ``30.0`` being ``30``), and some candidate at some state. The proposer drops
  any other candidate and tops the list up with the mutation policy, so a policy asking a model, which cannot promise
  this, passes ``require_usable=False`` and is checked for the rest;
* determinism: the same point, ``k`` and ``seed`` give the same candidates (replay's records must be reproducible);
* the policy pickles (it may cross to a replay's worker processes), and its unpickled copy proposes what it does;
* ``close()`` returns, for a policy that proposed and for one that never did.

A policy made for tools of its own (one that proposes only calls of the app's tools) passes ``trajectory``: a recorded
trajectory of that app (``store.get(trajectory_id)``), whose tool-call steps are its decision points.

A failure is an ``AssertionError`` naming the broken promise, where (the state, ``k`` and ``seed``), and what the
policy did.
"""

from __future__ import annotations

import datetime as dt
import json
import pickle
from collections.abc import Callable, Sequence
from typing import Any

from ee_middleware.records import Action, Observation, Step, ToolCall, Trajectory
from ee_middleware.replay.policies.proposer import answer_problem
from ee_middleware.replay.policies.protocol import Candidate, DecisionPoint, Policy, Proposals
from ee_middleware.replay.policies.registry import settings_problem
from ee_middleware.replay.policies.schema import tool_schemas_for
from ee_middleware.testing.messages import settings_text

MakePolicy = Callable[[], Any]

AS_RECEIVED = "as the tool receives it: an argument at its schema's default is the argument left out, and 30.0 is 30"


def _tool(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": required}
    return {"type": "function", "function": {"name": name, "description": description, "parameters": parameters}}


TOOLS = [
    _tool("check_stock", "How many of an item are in stock.", {"item": {"type": "string"}}, ["item"]),
    _tool(
        "order_item",
        "Order more of an item.",
        {
            "item": {"type": "string", "minLength": 2},
            "quantity": {"type": "integer", "minimum": 1, "maximum": 100},
            "note": {"type": "string"},
        },
        ["item", "quantity"],
    ),
    _tool(
        "set_priority",
        "Set the priority of an order.",
        {"order_id": {"type": "string"}, "level": {"type": "string", "enum": ["low", "normal", "high"]}},
        ["order_id", "level"],
    ),
    _tool(
        "ship",
        "Ship an order to an address.",
        {
            "order_id": {"type": "string"},
            "address": {
                "type": "object",
                "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                "required": ["street", "city"],
            },
            "express": {"type": "boolean"},
        },
        ["order_id", "address"],
    ),
    _tool(
        "search_catalog",
        "Search the catalog.",
        {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 50, "default": 10}},
        ["query"],
    ),
]
"""The kit's tools: a required and an optional argument, bounds, an enum, a nested object, an argument with a default."""

_STEPS: list[tuple[ToolCall, str, list[str] | None]] = [
    (ToolCall(id="c0", name="check_stock", arguments={"item": "pear"}), "0 pear in stock; apple: 3, banana: 12", None),
    (ToolCall(id="c1", name="order_item", arguments={"item": "pear", "quantity": 5}), "order O-1017 placed: 5 pear", None),
    (
        ToolCall(id="c2", name="ship", arguments={"order_id": "O-1017", "address": {"street": "12 Elm Street", "city": "Springfield"}}),
        "O-1017 shipped to 12 Elm Street, Springfield",
        ["ship", "set_priority"],  # offered only these two here (a middleware choosing tools per call)
    ),
    (
        ToolCall(id="c3", name="search_catalog", arguments={"query": "pear", "limit": 10}),  # its default, written out
        "pear (Conference), pear (Williams)",
        None,
    ),
]


def conformance_trajectory() -> Trajectory:
    """The kit's recorded trajectory: four tool calls of a shop's stock room, then the answer."""
    at = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You run the stock room of a fruit shop."},
        {"role": "user", "content": "Are pears in stock? If not, order 5, ship order O-1017 to 12 Elm Street, Springfield."},
    ]
    steps = []
    for index, (call, observation, offered) in enumerate(_STEPS):
        steps.append(
            Step(
                trajectory_id="policy-conformance",
                index=index,
                decision_index=index,
                state=list(messages),
                action=Action(kind="tool_call", tool_call=call),
                observation=Observation(content=observation),
                tools=offered,
            )
        )
        messages += [
            {"role": "assistant", "content": None, "tool_calls": [call.to_openai()]},
            {"role": "tool", "tool_call_id": call.id, "content": observation},
        ]
    answer = "Pears were out of stock: I ordered 5 and shipped order O-1017."
    steps.append(
        Step(
            trajectory_id="policy-conformance",
            index=len(_STEPS),
            decision_index=len(_STEPS),
            state=list(messages),
            action=Action(kind="answer", content=answer),
        )
    )
    return Trajectory(
        id="policy-conformance",
        app="policy-conformance",
        task=messages[1]["content"],
        tools=TOOLS,
        messages=[*messages, {"role": "assistant", "content": answer}],
        final_answer=answer,
        started_at=at,
        ended_at=at + dt.timedelta(seconds=5),
        steps=steps,
    )


def decision_points(trajectory: Trajectory) -> list[DecisionPoint]:
    """The decision points replay proposes at in ``trajectory``: one per tool-call step, with the tools offered there."""
    return [
        DecisionPoint(trajectory.id, step.index, step.state, trajectory.step_tools(step), step.action.tool_call)
        for step in trajectory.steps
        if step.action.tool_call is not None
    ]


def check_policy(
    make_policy: MakePolicy,
    *,
    k: int = 3,
    seeds: Sequence[int] = (0, 1),
    trajectory: Trajectory | None = None,
    require_usable: bool = True,
) -> None:
    """Run every check on policies built by ``make_policy`` (a new one each time it is called); raises ``AssertionError``.

    ``k``: how many alternatives to ask for at each state (``k=1`` is asked too); ``seeds``: the seeds asked with;
    ``trajectory``: the recorded trajectory whose tool-call steps are the decision points (the kit's own by default);
    ``require_usable``: whether every candidate must be a usable alternative (see the module's docstring)."""
    assert k >= 1, f"k must be 1 or more, got {k}"
    assert seeds, "seeds names at least one seed"
    points = decision_points(trajectory if trajectory is not None else conformance_trajectory())
    assert points, "the trajectory has no tool-call step: no decision point to propose at"
    policy = make_policy()
    _check_protocol(policy)
    described = _check_describe(policy)
    proposed: dict[tuple[int, int, int], list[tuple[str, str]]] = {}
    for point in points:
        for seed in seeds:
            for asked in dict.fromkeys((k, 1)):
                proposed[point.step_index, asked, seed] = _check_answer(policy, point, asked, seed, require_usable)
    after = _call(policy.describe, "describe()")
    assert settings_text(after) == settings_text(described), (
        "describe() returns the same settings after the policy proposed (a replay records them once, for all its "
        f"proposals; what the policy counts or learns while proposing is no setting): {described!r} before, {after!r} after"
    )
    if require_usable:
        assert any(proposed.values()), (
            f"a policy proposes alternatives: {policy.name!r} proposed no candidate at any of the {len(points)} states "
            f"(k={k}, seeds {list(seeds)}). If it proposes only calls of your app's tools, pass trajectory= a recorded "
            "trajectory of your app"
        )
    _check_pickles(make_policy, points[0], k, seeds[0], proposed[points[0].step_index, k, seeds[0]])
    try:
        policy.close()
    except Exception as exc:
        raise AssertionError(f"close() returns (it releases what the policy holds): it raised {type(exc).__name__}: {exc}") from exc


def _check_protocol(policy: Any) -> None:
    assert isinstance(policy, Policy), (
        f"{type(policy).__name__} is no policy: a policy has a 'name' attribute and 'propose(point, k, *, seed)', "
        "'describe()' and 'close()' methods"
    )
    assert isinstance(policy.name, str) and policy.name, (
        f"a policy has a non-empty name, a string (rollout records show it as proposer.policy): got {policy.name!r}"
    )


def _check_describe(policy: Any) -> dict[str, Any]:
    described = _call(policy.describe, "describe()")
    problem = settings_problem(described)
    assert problem is None, (
        f"describe() returns the policy's settings as a dict of JSON-able values (replay records keep them; ee replay run "
        f"refuses the policy otherwise): {problem}"
    )
    again = _call(policy.describe, "describe()")
    assert settings_text(again) == settings_text(described), (
        f"describe() returns the same settings each time (they name what shaped the proposals): {described!r}, then {again!r}"
    )
    return described


def _check_answer(policy: Any, point: DecisionPoint, k: int, seed: int, require_usable: bool) -> list[tuple[str, str]]:
    """What ``policy`` proposed at ``point`` (each call's name and canonical arguments), its answer checked."""
    where = f"state {point.step_index} (the expert called {point.expert.name}; k={k}, seed={seed})"
    answer = _proposals(policy, point, k, seed, where)
    calls = _calls(answer.candidates)
    if require_usable:
        _check_usable(answer.candidates, point, k, where)
    again = _calls(_proposals(policy, point, k, seed, f"{where}, asked again").candidates)
    assert again == calls, (
        f"propose() is deterministic: the same point, k and seed give the same candidates (replay's records must be "
        f"reproducible; draw from a random.Random(seed), not the module's random, the clock or the policy's own counters). At "
        f"{where} it proposed {_shown(calls)}, then {_shown(again)}"
    )
    return calls


def _proposals(policy: Any, point: DecisionPoint, k: int, seed: int, where: str) -> Proposals:
    """``policy.propose(point, k, seed=seed)``, its answer checked to keep the protocol (``where``: the state and the
    asking, as failures name them)."""
    answer = _call(lambda: policy.propose(point, k, seed=seed), f"propose() at {where}")
    problem = answer_problem(answer, policy.name)
    assert problem is None, (
        "propose() returns Proposals of Candidates whose call is a ToolCall (and whose proposer is a ProposerInfo naming the "
        f"policy): at {where}, {problem}"
    )
    assert isinstance(answer, Proposals)
    return answer


def _check_usable(candidates: list[Candidate], point: DecisionPoint, k: int, where: str) -> None:
    assert len(candidates) <= k, f"propose() returns at most k candidates: {len(candidates)} at {where}"
    schemas = tool_schemas_for(point.tools)
    expert = schemas.call_key(point.expert.name, point.expert.arguments)
    seen: dict[str, int] = {}
    for index, candidate in enumerate(candidates):
        call = candidate.call
        assert call is not None, (
            f"every candidate is a tool call: candidate {index} at {where} has none ({candidate.problem or 'no problem given'}"
            f"{'; raw: ' + repr(candidate.raw)[:200] if candidate.raw else ''})"
        )
        shown = _shown([_calls([candidate])[0]])
        assert call.name in schemas, (
            f"every candidate calls a tool offered at its state: candidate {index} at {where} calls {call.name!r}, and that "
            f"state offers {', '.join(schemas.names)}"
        )
        problem = schemas.validate(call)
        assert problem is None, f"every candidate's arguments fit its tool's schema: candidate {index} at {where}, {shown}: {problem}"
        key = schemas.call_key(call.name, call.arguments)
        assert key != expert, (
            f"no candidate is the expert's own action ({AS_RECEIVED}): candidate {index} at {where}, {shown}, is the expert's "
            f"{_shown(_calls([Candidate(point.expert, candidate.proposer)]))}"
        )
        assert key not in seen, (
            f"candidates are distinct ({AS_RECEIVED}): candidates {seen.get(key)} and {index} at {where} are both {shown}"
        )
        seen[key] = index


def _check_pickles(make_policy: MakePolicy, point: DecisionPoint, k: int, seed: int, proposed: list[tuple[str, str]]) -> None:
    fresh = make_policy()
    try:
        copy = pickle.loads(pickle.dumps(fresh))
    except Exception as exc:
        raise AssertionError(
            f"the policy pickles (it may cross to a replay's worker processes): {type(exc).__name__}: {exc}. Keep what does "
            "not pickle (a client, a lock, a loaded model) out of its state: make it on first use, or leave it out in "
            "__getstate__ and make it again in __setstate__"
        ) from exc
    where = f"state {point.step_index} (k={k}, seed={seed})"
    copied = _calls(_proposals(copy, point, k, seed, f"{where}, asked of the unpickled copy").candidates)
    assert copied == proposed, (
        f"an unpickled copy of the policy proposes what the policy does (same point, k and seed): at {where} the policy "
        f"proposed {_shown(proposed)}, its copy {_shown(copied)}"
    )
    for what, part in (("the unpickled copy", copy), ("a policy that never proposed", fresh)):
        try:
            part.close()
        except Exception as exc:
            raise AssertionError(f"close() returns, for {what} too: it raised {type(exc).__name__}: {exc}") from exc


def _call(function: Callable[[], Any], what: str) -> Any:
    try:
        return function()
    except Exception as exc:
        raise AssertionError(f"{what} raised {type(exc).__name__}: {exc}") from exc


def _calls(candidates: Sequence[Candidate]) -> list[tuple[str, str]]:
    """Each candidate's call as name and arguments in JSON (sorted keys), ``("", problem)`` for one without a call."""
    return [
        (c.call.name, json.dumps(c.call.arguments, sort_keys=True, default=repr)) if c.call is not None else ("", c.problem or "")
        for c in candidates
    ]


def _shown(calls: list[tuple[str, str]]) -> str:
    if not calls:
        return "no candidate"
    text = ", ".join(f"{name}({arguments})" if name else f"(no call: {arguments})" for name, arguments in calls)
    return text if len(text) <= 600 else text[:599] + "…"
