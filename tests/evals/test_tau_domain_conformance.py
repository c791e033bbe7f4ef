"""The tau domain conformance kit (ee_middleware.evals.tau.testing): the built-in library domain passes it, and fake
domains, each the library domain with one thing broken, fail it with a message naming the domain, what and the fix."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import random
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.tau import tau_bench
from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.domains import library
from ee_middleware.evals.tau.domains.library.tools import TOOLS, schema
from ee_middleware.evals.tau.testing import check_tau_domain

LIBRARY = library.domain()


def _library(**changes: Any) -> Callable[[], TauDomain]:
    """A factory of the library domain with ``changes`` (a new TauDomain per call, as a worker process builds its own)."""

    def make() -> TauDomain:
        fields: dict[str, Any] = {
            "name": "library",
            "policy": LIBRARY.policy,
            "tools": dict(TOOLS),
            "schemas": [schema(fn) for fn in TOOLS.values()],
            "load_data": LIBRARY.load_data,
            "splits": dict(LIBRARY.splits),
        }
        fields.update(changes)
        return TauDomain(**fields)

    return make


def _with_tool(fn: Callable[..., Any], **changes: Any) -> Callable[[], TauDomain]:
    """The library with ``fn`` in place of the tool of its name (its schema written from it)."""
    tools = {**TOOLS, fn.__name__: fn}
    return _library(tools=tools, schemas=[schema(f) for f in tools.values()], **changes)


def test_the_builtin_library_domain_passes_the_kit() -> None:
    check_tau_domain(library.domain)
    check_tau_domain(_library())  # a new domain per call, as a worker process builds it


def _silent(task: TauTask) -> TauTask:
    """``task`` with every reply "Done." (a required output then appears in no reply)."""
    return dataclasses.replace(task, turns=tuple(dataclasses.replace(turn, reply="Done.") for turn in task.turns))


def _past_max_steps(task: TauTask) -> TauTask:
    """``task`` with more ground-truth calls in its first turn than a turn's answers (the oracle's turn is cut before its
    reply): a task that loads, and that the oracle fails."""
    first = task.turns[0]
    long = dataclasses.replace(first, actions=(first.actions[0],) * LoopConfig().max_steps_per_turn + first.actions)
    return dataclasses.replace(task, turns=(long, *task.turns[1:]))


def test_max_tasks_and_splits_limit_what_is_checked() -> None:
    tasks = LIBRARY.tasks("test")
    third_fails = _library(splits={"test": lambda: [tasks[0], tasks[1], _past_max_steps(tasks[10])]})
    check_tau_domain(third_fails, splits=["test"], max_tasks=2)
    with pytest.raises(AssertionError, match=r"Task 'due-date-question' .* fails it: missing_output"):
        check_tau_domain(third_fails)
    with pytest.raises(AssertionError, match=r"has no split 'dev'; it has: test"):
        check_tau_domain(library.domain, splits=["dev"])


# load_data: fresh, independent, the same every time

_SHARED = LIBRARY.load_data()


def fake_shared_load_data() -> dict[str, Any]:
    return _SHARED


def fake_shallow_copy_load_data() -> dict[str, Any]:
    return dict(_SHARED)


@pytest.mark.parametrize("load", [fake_shared_load_data, fake_shallow_copy_load_data])
def test_a_fake_domain_whose_load_data_shares_mutable_data_fails(load: Callable[[], dict[str, Any]]) -> None:
    with pytest.raises(
        AssertionError,
        match=r"The tau domain 'library': load_data\(\) returned the same (dict|list) object twice \(the database.*copy\.deepcopy",
    ):
        check_tau_domain(_library(load_data=load))


def test_a_fake_domain_whose_first_load_is_the_module_global_others_copy_fails() -> None:
    calls = itertools.count()
    global_data = LIBRARY.load_data()

    def fake_first_load_is_the_global() -> dict[str, Any]:
        return global_data if next(calls) == 1 else copy.deepcopy(global_data)  # call 0 is fresh_data's

    with pytest.raises(AssertionError, match=r"changing the database one load_data\(\) call returned changed what another returns"):
        check_tau_domain(_library(load_data=fake_first_load_is_the_global))


def test_a_fake_domain_whose_load_data_is_random_fails() -> None:
    def fake_random_load_data() -> dict[str, Any]:
        return {**LIBRARY.load_data(), "seed": random.random()}

    with pytest.raises(AssertionError, match=r"load_data\(\) gave a different database on its second call.*Worker processes"):
        check_tau_domain(_library(load_data=fake_random_load_data))


def test_a_fake_factory_whose_builds_differ_fails() -> None:
    """A worker process builds the domain again: its database and every task's ground-truth outcome must be the same."""
    builds = itertools.count()

    def fake_numbered_builds() -> TauDomain:
        number = next(builds)
        return _library(load_data=lambda: {**LIBRARY.load_data(), "build": number})()

    with pytest.raises(AssertionError, match=r"a second make_domain\(\) built a different database: each worker process builds"):
        check_tau_domain(fake_numbered_builds)


def test_a_fake_factory_whose_later_builds_refuse_a_ground_truth_action_fails() -> None:
    builds = itertools.count()

    def closed_renew_loan(data: dict[str, Any], loan_id: str) -> str:
        raise ValueError("the renewal desk is closed")

    def fake_desk_closes_after_the_first_build() -> TauDomain:
        return _library(tools={**TOOLS, "renew_loan": closed_renew_loan} if next(builds) else dict(TOOLS))()

    with pytest.raises(
        AssertionError,
        match=r"Task 'renew-lichens' .*: its ground truth changes the database with the errors \[\] on one build of the domain, "
        r"and does not change it with \['renew_loan: .*the renewal desk is closed'\] on another",
    ):
        check_tau_domain(fake_desk_closes_after_the_first_build)


# tasks: unique text ids, the same on every load, deterministic ground truth


def test_a_fake_domain_with_duplicate_task_ids_fails() -> None:
    tasks = LIBRARY.tasks("test")
    with pytest.raises(
        AssertionError, match=r"loading the split 'test': .*'library' \(split 'test'\) has two tasks with the id 'renew-lichens'"
    ):
        check_tau_domain(_library(splits={"test": lambda: [*tasks, tasks[0]]}))


def test_a_fake_domain_whose_tasks_change_between_loads_fails() -> None:
    def fake_shuffled_tasks() -> list[TauTask]:
        tasks = list(LIBRARY.tasks("test"))
        random.shuffle(tasks)
        return tasks

    with pytest.raises(AssertionError, match=r"loaded different tasks on a second load .*fixed order"):
        check_tau_domain(_library(splits={"test": fake_shuffled_tasks}))


def renew_loan(data: dict[str, Any], loan_id: str) -> str:
    """Extend a loan by 21 days (fake: also writes a random number into the database).

    loan_id: the loan to renew.
    """
    data["loans"].get(loan_id, {})["stamp"] = random.random()
    return TOOLS["renew_loan"](data, loan_id)


def test_a_fake_domain_with_nondeterministic_ground_truth_fails() -> None:
    with pytest.raises(
        AssertionError, match=r"Task 'renew-lichens' .* left two different databases: they differ from its action renew_loan"
    ):
        check_tau_domain(_with_tool(renew_loan))


def test_a_fake_tau_bench_shaped_domain_with_nondeterministic_ground_truth_fails() -> None:
    """tasks() does not replay a tau-bench checkout's tasks (categories_from_ground_truth): the kit does."""
    with pytest.raises(AssertionError, match=r"Task 'renew-lichens' .* left two different databases"):
        check_tau_domain(_with_tool(renew_loan, categories_from_ground_truth=True))


def test_a_fake_domain_with_a_task_id_that_is_no_text_fails() -> None:
    tasks = [dataclasses.replace(t, id=7) if i == 0 else t for i, t in enumerate(LIBRARY.tasks("test"))]  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match=r"a task's id is 7, not a non-empty text"):
        check_tau_domain(_library(splits={"test": lambda: tasks}))


# tools: their own data, never a global; bad arguments survived


_DB = LIBRARY.load_data()
_MEMBERS = _DB["members"]


def get_member_details(data: dict[str, Any], member_id: str) -> str:
    """A member's record (fake: read from a module global).

    member_id: the member id.
    """
    return json.dumps(_DB["members"][member_id])


def get_book_details(data: dict[str, Any], book_id: str) -> str:
    """A book's record (fake: its helper reads a module global table).

    book_id: the book id.
    """
    return _member_table_helper(book_id)


def _member_table_helper(book_id: str) -> str:
    return json.dumps(_MEMBERS.get(book_id))


@pytest.mark.parametrize(
    ("tool", "read"),
    [(get_member_details, r"_DB, which holds the database"), (get_book_details, r"_MEMBERS, which holds its table 'members'")],
)
def test_a_fake_domain_whose_tool_reads_a_global_fails(tool: Callable[..., Any], read: str) -> None:
    with pytest.raises(
        AssertionError, match=rf"The tau domain 'library''s tool '{tool.__name__}' reads the module global \S+{read}.*data\[\.\.\.\]"
    ):
        check_tau_domain(_with_tool(tool))


def test_a_fake_domain_whose_runs_change_the_next_runs_world_fails() -> None:
    store = {"db": LIBRARY.load_data()}  # held in a closure: no module global names it

    def pay_fines(data: dict[str, Any], member_id: str, amount: float) -> str:
        """Record a payment towards a member's fines (fake: also writes the database load_data copies).

        member_id: the paying member.
        amount: the amount paid.
        """
        result = TOOLS["pay_fines"](data, member_id, amount)
        store["db"]["members"][member_id]["fines_due"] = data["members"][member_id]["fines_due"]
        return result

    with pytest.raises(AssertionError, match=r"after its tasks ran, load_data\(\) gives another database than before"):
        check_tau_domain(_with_tool(pay_fines, load_data=lambda: copy.deepcopy(store["db"])))


def update_email(data: dict[str, Any], member_id: str, email: str) -> str:
    """Change a member's e-mail (fake: logs the request into the database before checking it).

    member_id: the member.
    email: the new address.
    """
    data.setdefault("requests", []).append(member_id)
    return TOOLS["update_email"](data, member_id, email)


def test_a_fake_domain_whose_tool_changes_the_database_then_fails_fails() -> None:
    with pytest.raises(
        AssertionError,
        match=r"tool 'update_email', called with an object for every argument \(update_email\(member_id=\{.*\), changed the database and then failed",
    ):
        check_tau_domain(_with_tool(update_email))


class _Stop(BaseException):
    """Fake: not an Exception, so no error observation."""


def search_catalog(data: dict[str, Any], query: str) -> str:
    """Books whose title or author contains the query (fake: a bad query escapes the sandbox).

    query: words of the title or the author's name.
    """
    if not isinstance(query, str):
        raise _Stop("bad query")
    return TOOLS["search_catalog"](data, query)


def test_a_fake_domain_whose_tool_raises_a_base_exception_on_bad_arguments_fails() -> None:
    with pytest.raises(
        AssertionError,
        match=r"tool 'search_catalog', called with an object for every argument .* raised _Stop: bad query.*Raise an Exception",
    ):
        check_tau_domain(_with_tool(search_catalog))


# schemas


def _schemas_with(name: str, change: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    schemas = [schema(fn) for fn in TOOLS.values()]
    for item in schemas:
        if item["function"]["name"] == name:
            change(item["function"]["parameters"])
    return schemas


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: p["properties"].update(loan={"type": "string"}),
            r"'renew_loan': its schema offers the argument 'loan', which its function does not take",
        ),
        (
            lambda p: p.update(required=[]),
            r"'renew_loan': its function requires the argument 'loan_id', which its schema does not list as required",
        ),
        (
            lambda p: p["properties"].pop("loan_id"),
            r"'renew_loan': its function requires the argument 'loan_id', which its schema does not offer",
        ),
        (
            lambda p: p["properties"]["loan_id"].update(type="strng"),
            r"schema of the tool 'renew_loan': its parameters are no valid JSON schema",
        ),
        (lambda p: p.update(type="array"), r"schema of the tool 'renew_loan': its parameters' type is 'array', not \"object\""),
    ],
)
def test_a_fake_domain_whose_schema_does_not_fit_its_tool_fails(change: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(AssertionError, match=message):
        check_tau_domain(_library(schemas=_schemas_with("renew_loan", change)))


def test_a_fake_domain_with_a_schema_of_no_tool_fails_by_the_domains_own_check() -> None:
    schemas = [*(schema(fn) for fn in TOOLS.values()), {"type": "function", "function": {"name": "fly", "parameters": {"type": "object"}}}]
    with pytest.raises(AssertionError, match=r"the domain's schemas: The tau domain 'library' offers the agent the tool 'fly'"):
        check_tau_domain(_library(schemas=schemas))


# policy, names, the oracle


@pytest.mark.parametrize("policy", ["", "  \n", None])
def test_a_fake_domain_with_an_empty_policy_fails(policy: Any) -> None:
    with pytest.raises(
        AssertionError,
        match=r"The tau domain 'library': its policy is \w+ .*, not a non-empty text: the policy is the agent's system prompt",
    ):
        check_tau_domain(_library(policy=policy))


@pytest.mark.parametrize("name", ["my:domain", "my.domain", "", "two words"])
def test_a_fake_domain_whose_name_a_spec_cannot_read_back_fails(name: str) -> None:
    with pytest.raises(AssertionError, match=rf"The tau domain {name!r}: its name is {name!r}; write letters"):
        check_tau_domain(_library(name=name))


@pytest.mark.parametrize("split", ["5", "a:b", ""])
def test_a_fake_domain_whose_split_a_spec_cannot_read_back_fails(split: str) -> None:
    with pytest.raises(AssertionError, match=rf"its split {split!r} cannot be named in a spec tau:library:SPLIT"):
        check_tau_domain(_library(splits={split: LIBRARY.splits["test"]}))


def test_a_fake_domain_whose_task_reply_lacks_its_required_output_is_refused_by_the_domains_own_check() -> None:
    """The kit says the domain's load-time refusal (TauDomain.check_task), not a copy of its own after the oracle ran."""

    def fake_silent_replies() -> list[TauTask]:
        return [_silent(t) if t.id == "due-date-question" else t for t in LIBRARY.tasks("test")]

    with pytest.raises(
        AssertionError,
        match=r"loading the split 'test': Task 'due-date-question' .*output '2025-03-09' appears in no reply .*write the "
        r"outputs into the reply",
    ):
        check_tau_domain(_library(splits={"test": fake_silent_replies}))


def test_a_factory_that_builds_no_domain_fails() -> None:
    with pytest.raises(AssertionError, match=r"make_domain\(\) returned \{'name': 'library'\} where the protocol requires a TauDomain"):
        check_tau_domain(lambda: {"name": "library"})  # type: ignore[arg-type, return-value]


# tau-bench checkouts: the same kit through the checkout loader


@pytest.fixture
def fake_checkout(tmp_path: Path) -> Iterator[Path]:
    """tests/evals/test_tau.py's stand-in for a tau-bench checkout (tau-bench is not on PyPI), written to ``tmp_path``."""
    from tests.evals.test_tau import FAKE_CHECKOUT

    for name, text in FAKE_CHECKOUT.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    saved = {k: v for k, v in sys.modules.items() if k == "tau_bench" or k.startswith("tau_bench.")}
    for key in saved:
        del sys.modules[key]
    try:
        yield tmp_path
    finally:
        for key in [k for k in sys.modules if k == "tau_bench" or k.startswith("tau_bench.")]:
            del sys.modules[key]
        sys.modules.update(saved)


def test_a_fake_tau_bench_checkout_passes_its_failing_task_being_task_error_by_design(fake_checkout: Path) -> None:
    """Its task selling a quill fails on a fresh database: a checkout's task at fault is scored task_error, not refused."""
    check_tau_domain(lambda: tau_bench.load_domain("shop", fake_checkout))


def test_a_fake_tau_bench_checkout_whose_load_data_returns_a_module_global_fails(fake_checkout: Path) -> None:
    data = fake_checkout / "tau_bench/envs/shop/data/__init__.py"
    data.write_text('STOCK = {"stock": {"pen": 3, "ink": 1}}\n\ndef load_data():\n    return STOCK\n')
    with pytest.raises(AssertionError, match=r"The tau domain 'shop': load_data\(\) returned the same dict object twice \(the database\)"):
        check_tau_domain(lambda: tau_bench.load_domain("shop", fake_checkout))


@pytest.mark.timeout(900)  # loading a split replays every task's ground truth on a large database (as the harness does)
@pytest.mark.parametrize("domain", ["retail", "airline"])
def test_a_real_tau_bench_checkout_passes_the_kit(domain: str) -> None:
    if not os.environ.get(tau_bench.ENV_VAR):
        pytest.skip("no tau-bench checkout: set EE_TAU_BENCH_DIR to run the tau-bench domains (not on PyPI)")
    check_tau_domain(lambda: tau_bench.load_domain(domain, Path(os.environ[tau_bench.ENV_VAR])), splits=["test"], max_tasks=5)
