"""A conformance kit for tau-style domains (``ee_middleware.evals.tau.testing``): run it against your own domain.

>>> from ee_middleware.evals.tau.testing import check_tau_domain    # doctest: +SKIP
>>> check_tau_domain(my_package.tau.domain)                          # doctest: +SKIP

It lives here, not in ``ee_middleware.testing``: the light core never imports the eval harness. ``make_domain`` is the
factory ``tau:package.module:factory`` (or an ``ee_middleware.tau_domains`` entry point) names. The kit runs the
domain's own checks (:meth:`~ee_middleware.evals.tau.domain.TauDomain.tasks` runs ``check_schemas``, ``check_task``,
``check_category`` and ``check_ground_truth_runs`` on every task, and refuses two tasks with one id; ``fresh_data``
refuses a database that is not JSON), then what the harness (:mod:`~ee_middleware.evals.tau.suite`,
:mod:`~ee_middleware.evals.loop`, :mod:`~ee_middleware.evals.runner`) relies on beyond them:

* the name and split names read back from a spec ``tau:NAME:SPLIT:N``; the policy (the agent's system prompt) is text;
* every schema is an OpenAI function schema whose parameters are a valid JSON schema, and fits its function (the
  arguments it offers are ones the function takes; the ones the function requires are offered and required);
* ``load_data()`` gives the same database every time (worker processes and resumed runs rebuild it and compare task
  digests) and a fresh, independent one (nothing shared with an earlier call);
* the tools read and change the data they are given, not a module global holding the database;
* a tool given bad arguments (missing, unknown, of the wrong type, naming nothing) returns, or raises an ``Exception``
  (an error observation), and one that fails leaves the database as it was;
* a split loads the same tasks every time, each with a text id, its ground truth the same on every run (tau-bench
  checkouts too); each task converts to what the runner sends workers (it pickles);
* the ``oracle`` (each task's own ground truth and replies, replayed through the agent loop as ``ee eval run --model
  oracle`` does) passes every task (a tau-bench checkout's task whose ground truth fails is ``task_error`` by design);
* running every task leaves the next task's world as it was: ``load_data()`` gives the initial database after all runs.

Failures raise ``AssertionError`` naming the domain, the split, task or tool, what was wrong and the fix.
"""

from __future__ import annotations

import inspect
import json
import pickle
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ee_middleware.errors import EEError
from ee_middleware.evals.clients import OracleClient
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.suite import TauSuite
from ee_middleware.records import ToolCall, tool_schema_name
from ee_middleware.testing.messages import Said, broken

__all__ = ["check_tau_domain"]

MakeDomain = Callable[[], TauDomain]
T = TypeVar("T")

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
"""A domain name a spec reads back: no ``:`` (it separates DOMAIN, SPLIT and N), no ``.`` (``tau:NAME:SPLIT`` would read
as the factory ``NAME:SPLIT``), no space."""
SPLIT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
"""A split name a spec reads back (and not all digits: ``tau:DOMAIN:5`` reads 5 as N)."""
_UNKNOWN = "ee_conformance_unknown"
_NOWHERE = "ee-conformance-missing"
_MARK = "ee_conformance_mark"


def check_tau_domain(make_domain: MakeDomain, *, splits: Sequence[str] | None = None, max_tasks: int | None = None) -> None:
    """Check the domain ``make_domain()`` builds (built again for each split, as a worker process builds its own) against
    what the tau harness relies on (the module docstring lists it); raises ``AssertionError`` naming what is wrong and
    the fix.

    ``splits``: the splits to check (default: all). ``max_tasks``: run the oracle on the first N tasks of each only (a
    big checkout: about a second a task on tau-bench's retail); loading a split still replays every task's ground truth,
    as the harness does when it loads one."""
    domain = _built(make_domain)
    _identity(domain, splits)
    _schemas(domain)
    initial = _database(domain)
    _tools_read_their_data(domain)
    _bad_arguments(domain)
    for split in splits if splits is not None else list(domain.splits):
        tasks = _tasks(domain, split)[:max_tasks]
        _world_unchanged_by_runs(domain, initial)  # tasks() replayed every task's ground truth
        _same_on_another_build(make_domain, domain, split, tasks)
        _oracle(domain, split, tasks)
        _world_unchanged_by_runs(domain, initial)


def _where(domain: TauDomain) -> str:
    return f"The tau domain {getattr(domain, 'name', '?')!r}"


def _domain_says(doing: str, check: Callable[[], T]) -> T:
    """``check()``, the domain's own check: its refusal (a :class:`ConfigError` naming the domain, what and the fix) as
    the kit's failure."""
    try:
        return check()
    except EEError as exc:
        raise AssertionError(f"{doing}: {exc}") from exc


def _built(make_domain: MakeDomain) -> TauDomain:
    domain = make_domain()
    assert isinstance(domain, TauDomain), broken(
        "make_domain()",
        domain,
        Said("a TauDomain"),
        "tau:package.module:factory builds the domain by calling its factory, and refuses anything but a TauDomain",
        "Return ee_middleware.evals.tau.domain.TauDomain(name=..., policy=..., tools=..., schemas=..., load_data=..., splits=...).",
    )
    return domain


def _identity(domain: TauDomain, splits: Sequence[str] | None) -> None:
    """The name and split names read back from ``tau:NAME:SPLIT:N``; the policy is text; the splits asked for exist."""
    where = _where(domain)
    assert isinstance(domain.name, str) and NAME.match(domain.name), (
        f"{where}: its name is {domain.name!r}; write letters, digits, '_' or '-', starting with a letter or '_' (e.g. "
        "'clinic'): the name is what an entry point registers it under and its sandbox's kind tau:NAME; in a spec a ':' "
        "splits it (tau:DOMAIN:SPLIT:N) and a '.' makes tau:NAME:SPLIT read as a package.module:factory."
    )
    assert isinstance(domain.policy, str) and domain.policy.strip(), (
        f"{where}: its policy is {type(domain.policy).__name__} {domain.policy!r:.60}, not a non-empty text: the policy is "
        "the agent's system prompt (what it may and may not do), and without one the agent is never told the rules the "
        "refusal tasks score. Give the policy text (e.g. read from a policy.md beside the domain)."
    )
    assert isinstance(domain.splits, Mapping) and domain.splits, (
        f"{where}: its splits are {domain.splits!r:.80}: give a mapping of split name -> a loader of its tasks, e.g. "
        '{"test": load_test_tasks} (tau:NAME runs the split "test").'
    )
    for split in domain.splits:
        assert isinstance(split, str) and SPLIT.match(split) and not split.isdigit(), (
            f"{where}: its split {split!r} cannot be named in a spec tau:{domain.name}:SPLIT[:N]: write letters, digits, "
            "'_', '.' or '-' (not all digits, which reads as N; no ':', which separates the parts), e.g. 'test'."
        )
    missing = [s for s in splits or [] if s not in domain.splits]
    assert not missing, f"{where} has no split {missing[0]!r}; it has: {', '.join(domain.splits)}."


def _schemas(domain: TauDomain) -> None:
    """The domain's check_schemas, then each schema is JSON, an OpenAI function schema with a valid JSON schema of its
    parameters, fitting its function."""
    _domain_says("check_tau_domain: the domain's schemas", domain.check_schemas)
    import jsonschema

    for schema in domain.schemas:
        name = tool_schema_name(schema)
        where = f"{_where(domain)}'s schema of the tool {name!r}"
        try:
            json.dumps(schema, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise AssertionError(
                f"{where} is not JSON ({exc}): it is sent to the model server as JSON. Write it with dicts, lists, strings and numbers."
            ) from exc
        function = schema.get("function")
        assert schema.get("type") == "function" and isinstance(function, dict), (
            f"{where} is {schema!r:.100}: write it as an OpenAI tool schema, "
            '{"type": "function", "function": {"name": ..., "description": ..., "parameters": {"type": "object", ...}}}.'
        )
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        try:
            jsonschema.Draft202012Validator.check_schema(parameters)
        except jsonschema.SchemaError as exc:
            raise AssertionError(
                f"{where}: its parameters are no valid JSON schema ({exc.message}): model servers refuse it or the model "
                'misreads it. Write {"type": "object", "properties": {ARG: {"type": "string", "description": ...}}, "required": [...]}.'
            ) from exc
        assert isinstance(parameters, dict) and parameters.get("type") == "object", (
            f"{where}: its parameters' type is {parameters.get('type') if isinstance(parameters, dict) else parameters!r}, "
            'not "object": a tool\'s arguments are a JSON object (the tool is called tool(data, **arguments)).'
        )
        _fits_function(domain, str(name), parameters)


def _fits_function(domain: TauDomain, name: str, parameters: dict[str, Any]) -> None:
    """The arguments the schema offers are the function's (after ``data``), and the ones it requires are offered and
    required (a function taking ``**arguments`` is not checked)."""
    try:
        params = list(inspect.signature(domain.tools[name]).parameters.values())[1:]
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    where = f"{_where(domain)}'s tool {name!r}"
    offered = dict(parameters.get("properties") or {})
    required = set(parameters.get("required") or [])
    taken = {p.name: p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for argument in offered:
        assert argument in taken, (
            f"{where}: its schema offers the argument {argument!r}, which its function does not take (it takes "
            f"{', '.join(taken) or 'no argument'} after data), so every call the model makes with it fails. Rename the "
            "schema's property or the function's parameter so they match."
        )
    for p in taken.values():
        if p.default is p.empty:
            assert p.name in offered and p.name in required, (
                f"{where}: its function requires the argument {p.name!r}, which its schema "
                f"{'does not list as required' if p.name in offered else 'does not offer'}, so a model following the schema "
                f"may leave it out and the call fails. Add {p.name!r} to the schema's properties and its 'required' list "
                "(or give the parameter a default)."
            )


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, default=repr)


def _database(domain: TauDomain) -> str:
    """The domain's fresh_data (a JSON object), then load_data() gives the same database every time, each call an
    independent one. Returns the initial database's canonical JSON."""
    where = _where(domain)
    initial = _canonical(_domain_says("check_tau_domain: the domain's database", domain.fresh_data))
    first = domain.load_data()
    assert _canonical(first) == initial, (
        f"{where}: load_data() gave a different database on its second call: it must give the same one every time. "
        "Worker processes (ee eval run --workers) rebuild it and must run the tasks on the world the parent scored them "
        "against, and a resumed run compares each task's database digest. Build it from fixed data: no random values, "
        "clock times or fresh ids (seed a random.Random with a constant if you generate it)."
    )
    second = domain.load_data()
    shared = _shared_container(first, second)
    assert shared is None, (
        f"{where}: load_data() returned {shared}: each call must build a fresh, independent database (json.load of "
        "the file, or copy.deepcopy of a module-level one), so that what a caller or a tool changes in one never shows "
        "in the next; a domain built again (each suite, each worker) reads load_data() again."
    )
    _mark_every_container(first)
    assert _canonical(second) == initial and _canonical(domain.load_data()) == initial, (
        f"{where}: changing the database one load_data() call returned changed what another returns: the calls share "
        "mutable data (a module-level dict or list put into each). Return copy.deepcopy(...) of it, or read the file each time."
    )
    return initial


def _containers(data: Any) -> Iterator[tuple[str, Any]]:
    """Every dict and list in ``data`` with its path (``the database -> members -> M-1``)."""
    stack: list[tuple[str, Any]] = [("the database", data)]
    seen: set[int] = set()
    while stack:
        path, value = stack.pop()
        if not isinstance(value, (dict, list)) or id(value) in seen:
            continue
        seen.add(id(value))
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend((f"{path} -> {key}", item) for key, item in items)


def _shared_container(first: Any, second: Any) -> str | None:
    """Where two databases share a dict or list object (a description), or None."""
    ids = {id(value): path for path, value in _containers(first)}
    for path, value in _containers(second):
        if id(value) in ids:
            return f"the same {type(value).__name__} object twice ({path})"
    return None


def _mark_every_container(data: Any) -> None:
    for _, value in list(_containers(data)):
        if isinstance(value, dict):
            value[_MARK] = True
        else:
            value.append(_MARK)


def _unwrapped(tool: Any) -> Any:
    """The function behind a tool (a partial's, a bound method's, a callable object's ``__call__``)."""
    while hasattr(tool, "func"):
        tool = tool.func
    tool = inspect.unwrap(tool) if callable(tool) else tool
    if inspect.ismethod(tool):
        return tool.__func__
    if not inspect.isfunction(tool) and callable(tool):
        return type(tool).__call__
    return tool


def _names(code: Any) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if inspect.iscode(const):
            yield from _names(const)


def _globals_read(tool: Any) -> dict[str, Any]:
    """``module.NAME`` -> value of the dicts and lists of module globals the tool's code names, and the code of the
    functions of its module it calls (helpers), at any depth."""
    found: dict[str, Any] = {}
    stack, seen = [_unwrapped(tool)], set()
    while stack:
        fn = stack.pop()
        code, names = getattr(fn, "__code__", None), getattr(fn, "__globals__", None)
        if code is None or names is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        for name in _names(code):
            value = names.get(name)
            if inspect.isfunction(value) and value.__module__ == fn.__module__:
                stack.append(value)
            elif isinstance(value, (dict, list)) and value:
                found[f"{names.get('__name__', '?')}.{name}"] = value
    return found


def _tools_read_their_data(domain: TauDomain) -> None:
    """No tool names a module global that is the database or one of its tables (by content, or the very object
    load_data() returned)."""
    data = domain.fresh_data()
    loaded = domain.load_data()
    tables = {f"its table {key!r}": value for key, value in data.items() if isinstance(value, (dict, list)) and value}
    for name, tool in domain.tools.items():
        for global_name, value in _globals_read(tool).items():
            if value == data or any(value is part for part in (loaded, *loaded.values())):
                what = "the database"
            else:
                what = next((table for table, part in tables.items() if value == part), None)
            assert what is None, (
                f"{_where(domain)}'s tool {name!r} reads the module global {global_name}, which holds {what}: a tool must "
                "read and change the data it is given (its first argument, the run's own fresh copy of the database). "
                "The global is one object for every run: a change a task makes is never seen in that run's database (the "
                "one scored) and shows in every later task's. Use data[...] instead of the global."
            )


def _bad_calls(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Calls a model may make that its tool must survive: no arguments, an unknown one, each of the wrong type, values
    of the right type that name nothing in the database."""
    properties = dict((schema.get("function") or {}).get("parameters", {}).get("properties") or {})
    yield "no arguments", {}
    yield f"an unknown argument {_UNKNOWN!r}", {**{k: _NOWHERE for k in properties}, _UNKNOWN: 1}
    yield "an object for every argument", {k: {_UNKNOWN: [1]} for k in properties}
    nowhere = {"string": _NOWHERE, "integer": 987654321, "number": -987654.5, "boolean": True, "array": [_NOWHERE], "object": {}}
    yield "values naming nothing", {k: nowhere.get(str(v.get("type")), _NOWHERE) for k, v in properties.items() if isinstance(v, dict)}


def _bad_arguments(domain: TauDomain) -> None:
    """Each offered tool, given bad arguments on a fresh database, returns or raises an Exception (an error observation
    the agent reads), never something the agent loop lets through; one that fails leaves the database as it was."""
    fresh = domain.fresh_data()  # compared by ==: a big database's state_digest (and a reset) take a fifth of a second
    sandbox = domain.sandbox()
    try:
        sandbox.reset(None)
        for schema in domain.schemas:
            name = str(tool_schema_name(schema))
            for what, arguments in _bad_calls(schema):
                call = f"{name}({', '.join(f'{k}={v!r}' for k, v in arguments.items())})"
                try:
                    observation = sandbox.execute(ToolCall(id="kit_0", name=name, arguments=arguments))
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # what the agent loop would not survive, named
                    raise AssertionError(
                        f"{_where(domain)}'s tool {name!r}, called with {what} ({call}), raised {type(exc).__name__}: {exc}, "
                        "which the sandbox does not turn into an error observation, so the agent loop stops the task (or "
                        "the run). Raise an Exception (ValueError('...')) for arguments the tool refuses."
                    ) from exc
                if sandbox.world == fresh:
                    continue
                assert not observation.is_error, (
                    f"{_where(domain)}'s tool {name!r}, called with {what} ({call}), changed the database and then failed "
                    f"({observation.content[:160]}): the agent is told the call failed, but the change stays in the database "
                    "the run is scored by. Check the arguments before changing anything."
                )
                sandbox.reset(None)  # the call changed the database (a value naming nothing may be a valid one)
    finally:
        sandbox.close()


def _tasks(domain: TauDomain, split: str) -> list[TauTask]:
    """The domain's own checks (its tasks(split)), then: ids are texts, the split loads the same every time, the ground
    truth is the same on every run (for a tau-bench checkout too, whose tasks tasks() does not replay)."""
    where = f"{_where(domain)} (split {split!r})"
    tasks = _domain_says(f"check_tau_domain: loading the split {split!r}", lambda: domain.tasks(split))
    assert tasks, f"{where} has no tasks: a suite of it would score nothing. Add tasks (or remove the split)."
    for task in tasks:
        assert isinstance(task.id, str) and task.id.strip(), (
            f"{where}: a task's id is {task.id!r}, not a non-empty text: results, resumed runs and the gate pair runs by "
            "task id, written as JSON text. Give every task a text id (str(...))."
        )
        if domain.categories_from_ground_truth and domain.ground_truth(task).differs_from is not None:
            _domain_says("check_tau_domain", lambda task=task: domain.check_ground_truth_runs(task, split))
    again = domain.tasks(split)
    if again != tasks:
        ids, other = [t.id for t in tasks], [t.id for t in again]
        first = next((i for i, (a, b) in enumerate(zip(tasks, again, strict=False)) if a != b), min(len(ids), len(other)))
        raise AssertionError(
            f"{where} loaded different tasks on a second load ({len(ids)} then {len(other)} tasks; the first difference at "
            f"task {first + 1}, {ids[first] if first < len(ids) else None!r} then {other[first] if first < len(other) else None!r}): "
            "worker processes and resumed runs load the split again and pair results by task id and content. Load the "
            "tasks from fixed data, in a fixed order (sorted(...) over files or sets)."
        )
    return tasks


OTHER_BUILD_TASKS = 5
"""How many tasks of each split :func:`_same_on_another_build` replays on the second build (their ground truth, twice)."""


def _same_on_another_build(make_domain: MakeDomain, domain: TauDomain, split: str, tasks: list[TauTask]) -> None:
    """A domain built again (as a worker process builds its own) has the same database and the same ground-truth outcome
    of its first :data:`OTHER_BUILD_TASKS` tasks (each runs its tools on a fresh database: the two runs of
    check_ground_truth_runs, on the other build)."""
    other = _built(make_domain)
    assert _canonical(other.fresh_data()) == _canonical(domain.fresh_data()), (
        f"{_where(domain)}: a second make_domain() built a different database: each worker process builds the domain "
        "again and must run tasks on the same world. Build the database from fixed data."
    )
    for task in tasks[:OTHER_BUILD_TASKS]:
        mine, theirs = domain.ground_truth(task), other.ground_truth(task)
        assert (mine.changes, mine.errors) == (theirs.changes, theirs.errors), (
            f"Task {task.id!r} of the tau domain {domain.name!r} (split {split!r}): its ground truth "
            f"{'changes' if mine.changes else 'does not change'} the database with the errors {list(mine.errors)} on one "
            f"build of the domain, and {'changes' if theirs.changes else 'does not change'} it with {list(theirs.errors)} on "
            "another (make_domain() called again, as each worker process does). Keep no state outside the database: "
            "module globals, caches or class attributes that the tools read and write."
        )


_ORACLE_FIXES = {  # (a required output said in no reply of the task's: check_task refuses it when the split loads)
    "database_mismatch": (
        "the same calls left another database when the agent made them than when the ground truth was replayed: the "
        "tools must depend only on the data and the arguments they are given (no module globals, caches or clock)"
    ),
    "tool_error": "a tool raised something the sandbox does not turn into an error observation: raise an Exception",
}


def _oracle(domain: TauDomain, split: str, tasks: list[TauTask]) -> None:
    """The ``oracle`` passes every task through the harness's own suite, loop and scoring; each task pickles."""
    suite = _Suite(domain, split)
    database = suite.database_digest()
    for task in tasks:
        where = f"Task {task.id!r} of the tau domain {domain.name!r} (split {split!r})"
        eval_task = suite.eval_task(task, database)
        try:
            pickle.loads(pickle.dumps(eval_task))
        except Exception as exc:  # any failure to pickle is the finding
            raise AssertionError(
                f"{where} cannot be pickled ({type(exc).__name__}: {exc}): ee eval run --workers sends each task to a worker "
                "process pickled. Keep its actions' arguments and outputs to JSON values."
            ) from exc
        result = suite.run(OracleClient(), eval_task, 0, LoopConfig())
        if result.success or (domain.categories_from_ground_truth and result.error_type == "task_error"):
            continue
        fix = _ORACLE_FIXES.get(str(result.error_type), "fix the task or the tools so that its own ground truth passes")
        raise AssertionError(
            f"{where}: the oracle (its own ground-truth calls and replies, replayed through the agent loop as ee eval run "
            f"--model oracle does) fails it: {result.error_type}: {result.reason}. A task its ground truth fails scores every "
            f"model wrong; {fix}."
        )


class _Suite(TauSuite):
    """The harness's suite over a domain object (TauSuite resolves its domain from a spec; the kit has the factory)."""

    def __init__(self, domain: TauDomain, split: str) -> None:
        self.domain, self.split, self.limit = domain, split, None
        self.user_model, self.max_user_turns = None, 10
        self.name = f"tau:{domain.name}:{split}"


def _world_unchanged_by_runs(domain: TauDomain, initial: str) -> None:
    """After every task ran (the oracle's runs and the ground truth's replays), load_data() still gives the initial
    database: no run changed the next one's world."""
    assert _canonical(domain.load_data()) == initial, (
        f"{_where(domain)}: after its tasks ran, load_data() gives another database than before: running a task changed "
        "the next task's world (each suite, each worker process and each resumed run builds it from load_data() again). "
        "The tools change the data they are given, the run's own copy; something else they write (the object load_data() "
        "returns, a module global) outlives the run. Have load_data() return a fresh database each call and the tools "
        "change only their data argument."
    )
