"""A tau domain's database must survive the JSON copy every run works on: anything the copy would change for the tools
is refused when the domain loads, naming the place in the database, what JSON makes of it, and the fix; subclasses whose
copy compares equal (OrderedDict, IntEnum, str enums, numpy floats) load as they did."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import enum
import json
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from ee_middleware.evals.suites import load_suite
from ee_middleware.evals.tau.domain import TauDomain
from ee_middleware.evals.tau.domains import library


@dataclasses.dataclass(frozen=True)
class Frozen:
    """A plain value without a JSON form of json's own (a dataclass)."""

    n: int


BANK_MODULE = '''
from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.domains.library.tools import schema


def set_owner(data, account_id: int, owner: str) -> str:
    """Rename an account's owner.

    Args:
        account_id: the account number
        owner: the new owner
    """
    data["accounts"][account_id]["owner"] = owner
    return "ok"


TOOLS = {"set_owner": set_owner}
TASKS = [
    {
        "id": "rename",
        "category": "action",
        "instruction": "Rename account 1 to Bob.",
        "turns": [{"user": "Rename account 1 to Bob", "actions": [{"name": "set_owner", "arguments": {"account_id": 1, "owner": "Bob"}}]}],
    }
]


def domain():
    return TauDomain(
        name="bank",
        policy="Rename accounts when asked.",
        tools=TOOLS,
        schemas=[schema(f) for f in TOOLS.values()],
        load_data=lambda: {"accounts": {1: {"owner": "Ann"}}},
        splits={"test": lambda: [TauTask.from_json(t, "inline") for t in TASKS]},
    )
'''


CLUB_MODULE = '''
import collections
import enum
import json

from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.domains.library.tools import schema


class Tier(enum.IntEnum):
    SILVER = 1
    GOLD = 2


class Status(str, enum.Enum):  # noqa: UP042 - a str-mixin Enum, as written before StrEnum (its str() is not its value)
    ACTIVE = "active"
    LAPSED = "lapsed"


def load_data():
    # the data file read keeping its order (OrderedDict at every level), then typed the way a loader does
    data = json.loads(\'{"members": {"m1": {"name": "Ann", "tier": 1, "status": "active"}}}\', object_pairs_hook=collections.OrderedDict)
    for member in data["members"].values():
        member["tier"], member["status"] = Tier(member["tier"]), Status(member["status"])
    return data


def upgrade(data, member_id: str) -> str:
    """Move an active member up to gold.

    Args:
        member_id: the member's id
    """
    member = data["members"][member_id]
    if member["status"] != Status.ACTIVE or member["tier"] >= Tier.GOLD:
        return "not upgraded"
    member["tier"] = Tier.GOLD
    return "upgraded"


TOOLS = {"upgrade": upgrade}
TASKS = [
    {
        "id": "upgrade",
        "category": "action",
        "instruction": "Upgrade member m1.",
        "turns": [{"user": "Upgrade member m1", "actions": [{"name": "upgrade", "arguments": {"member_id": "m1"}}]}],
    }
]


def domain():
    return TauDomain(
        name="club",
        policy="Upgrade active members when asked.",
        tools=TOOLS,
        schemas=[schema(f) for f in TOOLS.values()],
        load_data=load_data,
        splits={"test": lambda: [TauTask.from_json(t, "inline") for t in TASKS]},
    )
'''


@contextlib.contextmanager
def _package(tmp_path: Path, name: str, source: str) -> Iterator[str]:
    """A package ``<name>_<id>`` on sys.path holding ``dom.py`` with ``source``; yields its module's name."""
    package = f"{name}_{abs(hash(str(tmp_path)))}"
    root = tmp_path / "src" / package
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "dom.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        yield f"{package}.dom"
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for module in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[module]


@pytest.fixture
def bank(tmp_path: Path) -> Iterator[str]:
    """A package ``bank_<id>`` on sys.path whose domain's database is keyed by int account ids."""
    with _package(tmp_path, "bank", BANK_MODULE) as module:
        yield module


@pytest.fixture
def club(tmp_path: Path) -> Iterator[str]:
    """A package ``club_<id>`` on sys.path whose domain's database is OrderedDicts holding IntEnum and str-enum values."""
    with _package(tmp_path, "club", CLUB_MODULE) as module:
        yield module


def test_int_keys_are_refused_when_the_domain_loads_naming_the_path_and_the_fix_not_the_tasks_actions(bank: str, tmp_path: Path) -> None:
    """Before: the JSON copy turned the key 1 into "1", the ground truth set_owner(account_id=1) failed with KeyError: 1,
    and the run stopped saying "Fix its actions" of a task that was right."""
    expected = r"tau domain 'bank'.*at accounts -> 1, the key 1 \(an int\) becomes the string \"1\".*Make the keys strings.*look them up as strings"
    with pytest.raises(ConfigError, match=expected) as caught:
        load_suite(f"tau:{bank}:domain").tasks()
    assert "Fix its actions" not in str(caught.value)
    with pytest.raises(ConfigError, match=expected):
        run_eval(EvalJob(suites=[f"tau:{bank}:domain"], model="oracle", out=str(tmp_path / "r")))
    assert not (tmp_path / "r" / "results.jsonl").exists()

    from ee_middleware.cli.app import app

    result = CliRunner().invoke(
        app, ["eval", "run", "--suite", f"tau:{bank}:domain", "--model-spec", "oracle", "--out", str(tmp_path / "c")]
    )
    assert result.exit_code != 0 and "accounts -> 1" in result.output and "Fix its actions" not in result.output, result.output


class Shelf(enum.IntEnum):
    TOP = 1


class Colour(enum.Enum):  # no str or int mixin: JSON has no form for it
    RED = "red"


class Status(str, enum.Enum):  # noqa: UP042 - a str-mixin Enum, as written before StrEnum (its str() is not its value)
    ACTIVE = "active"


class Caseless(str):
    """A key that a lookup finds in any case: its JSON copy, a plain string, compares equal to it but is found only in
    the case written."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and self.casefold() == other.casefold()

    def __hash__(self) -> int:
        return hash(self.casefold())


class Versioned(dict[str, Any]):
    """A dict that equals only dicts of its own version: its plain JSON copy does not compare equal to it."""

    version = 2

    def __eq__(self, other: object) -> bool:
        return getattr(other, "version", None) == self.version and dict.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]


class Shelves(list[Any]):
    pass


def _circular() -> dict[str, Any]:
    data: dict[str, Any] = {"rooms": [{}]}
    data["rooms"][0]["self"] = data["rooms"]
    return data


@pytest.mark.parametrize(
    ("database", "message"),
    [
        (
            {"shelves": [{"books": {7: {}}}]},
            r'at shelves -> \[0\] -> books -> 7, the key 7 \(an int\) becomes the string "7".*look them up as strings',
        ),
        ({"prices": {1.5: "x"}}, r'at prices -> 1.5, the key 1.5 \(a float\) becomes the string "1.5"'),
        ({"flags": {True: "x"}}, r'at flags -> True, the key True \(a bool\) becomes the string "true"'),
        ({"owners": {None: "x"}}, r'at owners -> None, the key None \(a NoneType\) becomes the string "null"'),
        ({"grid": {(1, 2): "x"}}, r"at grid -> \(1, 2\), the key \(1, 2\) \(a tuple\) is no JSON key"),
        ({"loan": {"dates": (3, 4)}}, r"at loan -> dates, the tuple \(3, 4\) becomes the list \[3, 4\].*lists instead of tuples"),
        ({"fines": [1.0, float("nan")]}, r"at fines -> \[1\], the number nan is not JSON \(json.dumps writes NaN.*null"),
        ({"limit": float("inf")}, r"at limit, the number inf is not JSON \(json.dumps writes Infinity"),
        ({"tags": {"a": {"x", "y"}}}, r"at tags -> a, a set has no JSON form.*sets.*lists"),
        ({"opened": datetime.date(2024, 5, 1)}, r"at opened, the date datetime.date\(2024, 5, 1\) has no JSON form"),
        ({"shelf": Colour.RED}, r"at shelf, the Colour <Colour.RED: 'red'> has no JSON form.*enums.*\.value"),
        (
            {"shelves": {Shelf.TOP: "x"}},
            r'at shelves -> <Shelf.TOP: 1>, the key <Shelf.TOP: 1> \(a Shelf\) becomes the string "1"',
        ),
        (
            {"holds": collections.defaultdict(list)},
            r"at holds, the defaultdict becomes a plain dict, which has no default for missing keys.*setdefault",
        ),
        (
            collections.Counter(a=1),
            r"at the top level, the Counter becomes a plain dict, which has no default for missing keys",
        ),
        ({"users": {Caseless("Ann"): {}}}, r"at users -> Ann, the key 'Ann' \(a Caseless\) becomes the string \"Ann\""),
        ({"meta": Versioned(a=1)}, r"at meta, the Versioned becomes a plain dict, which does not compare equal to it"),
        (_circular(), r"at rooms -> \[0\] -> self, the list holds itself \(a circular reference\)"),
        (  # a user-journey sweep: the advice was about dates, sets and enums
            {"db": sqlite3.connect(":memory:")},
            r"at db, the Connection .* has no JSON form.*A live object \(a database connection.*rows as dicts keyed by id",
        ),
        (  # a value with a JSON form is no live object (a review)
            {"meta": Frozen(1)},
            r"at meta, the Frozen Frozen\(n=1\) has no JSON form \(Frozen is not JSON serializable\)\. Write dates, sets, enums",
        ),
    ],
)
def test_anything_the_json_copy_would_change_is_refused_naming_the_place_and_what_json_makes_of_it(
    database: dict[str, Any], message: str
) -> None:
    """Before: int, float, bool and None keys, tuples, NaN, infinities, enums and dict subclasses were converted
    silently; sets, dates, tuple keys and cycles were refused without saying where in the database they were."""
    domain = TauDomain(name="desk", policy="", tools={}, schemas=[], load_data=lambda: database, splits={})
    with pytest.raises(ConfigError, match=r"The database of the tau domain 'desk' is not JSON as load_data\(\) returns it.*" + message):
        domain.fresh_data()


def _numpy_prices() -> dict[str, Any]:
    numpy = pytest.importorskip("numpy")
    return {"items": {"i1": {"price": numpy.float64(9.5), "total": numpy.float64(3.0) * 2}}}


@pytest.mark.parametrize(
    "build",
    [
        lambda: collections.OrderedDict(users=collections.OrderedDict(u1={"name": "Ann"})),
        lambda: json.loads('{"users": {"u1": {"name": "Ann", "tags": []}}}', object_pairs_hook=collections.OrderedDict),
        lambda: {"users": {"u1": {"tier": Shelf.TOP, "flags": [Shelf.TOP]}}},
        lambda: {"users": {"u1": {"status": Status.ACTIVE}}},
        lambda: {"by_status": {Status.ACTIVE: ["u1"]}},
        lambda: {"shelves": Shelves([{"a": 1}, Shelves(["x"])])},
        _numpy_prices,
    ],
    ids=["OrderedDict", "json_object_pairs_hook", "IntEnum", "str_Enum_value", "str_Enum_key", "list_subclass", "numpy_float64"],
)
def test_subclasses_whose_json_copy_compares_equal_load_as_before(build: Any) -> None:
    """Before (173ccdf): each was refused ("the OrderedDict becomes a plain dict", "the Shelf <Shelf.TOP: 1> becomes the
    plain int 1"...) though its copy compares equal to it and the tools cannot tell them apart."""
    database = build()
    domain = TauDomain(name="desk", policy="", tools={}, schemas=[], load_data=build, splits={})
    copy = domain.fresh_data()
    assert copy == database and json.loads(json.dumps(database)) == copy


def test_a_domain_of_ordered_dicts_and_enums_runs_and_its_tools_see_the_same_values(club: str, tmp_path: Path) -> None:
    """Before (173ccdf): load_suite and ee eval run stopped with "the OrderedDict becomes a plain dict"; the tool's
    comparisons with the enum members (status != Status.ACTIVE, tier >= Tier.GOLD) work the same on the JSON copy."""
    [oracle] = run_eval(EvalJob(suites=[f"tau:{club}:domain"], model="oracle", out=str(tmp_path / "o")))
    assert (oracle["tasks"], oracle["success_rate"]) == (1, 1.0)
    [noop] = run_eval(EvalJob(suites=[f"tau:{club}:domain"], model="noop", out=str(tmp_path / "n")))
    assert noop["success_rate"] == 0.0  # the upgrade really changes the database: doing nothing is not scored a success


def test_many_places_are_counted_and_the_first_three_shown() -> None:
    database = {"accounts": {i: {"owner": "Ann"} for i in range(1000)}}
    domain = TauDomain(name="desk", policy="", tools={}, schemas=[], load_data=lambda: database, splits={})
    with pytest.raises(ConfigError, match=r"accounts -> 0,.*accounts -> 1,.*accounts -> 2,.*\(and 997 more such places\)") as caught:
        domain.fresh_data()
    assert "accounts -> 3," not in str(caught.value)


def test_a_plain_json_database_and_the_library_domain_load_unchanged() -> None:
    shared = ["x"]  # the same list twice is no cycle: each copy gets its own
    database = {"a": [1, -0.0, 2.5, 10**30, True, None, "é\ud800", {"": []}], "b": shared, "c": {"d": shared}}
    domain = TauDomain(name="desk", policy="", tools={}, schemas=[], load_data=lambda: database, splits={})
    assert domain.fresh_data() == json.loads(json.dumps(database)) == database
    built = library.domain()
    assert built.fresh_data() == built.load_data()
    assert built.tasks("test")
