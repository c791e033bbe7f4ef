"""The retail customer-support agent: a real LangGraph graph over a SQLite database, recorded as experts.

The graph is a hand-built ReAct loop (model node, ``ToolNode(handle_tool_errors=True)``,
``tools_condition``). Its model is an *expert script* (:class:`ee_middleware.scripted.ScriptedChatModel`):
a real LangChain chat model whose replies follow a plan per task, reading the tools' real answers
(a user id found by e-mail is the one it passes on). Every conversation starts from a fresh copy of
the seeded database file; the run's environment reference ``{"dataset": "retail-db", "seed": N}``
is what the replay sandbox rebuilds it from.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import random
import sqlite3
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.messages import AIMessage
from langchain_core.tools import StructuredTool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware.scripted import ScriptedChatModel, tool_call

from .data import DATASET, create_database
from .tools import DB_TOOLS, READ_ONLY_TOOLS, transfer_to_human_agents

APP = "retail-support"

SYSTEM_PROMPT = """You are the customer-support agent of Harbor & Pine Outfitters, an online store for outdoor gear.

Before you act on an account, authenticate the customer: find their user id by e-mail address or by phone
number, even when they tell you their name. Never reveal another customer's details.

Orders move from pending to processed to delivered. Only pending orders can be cancelled; the reason must be
"no longer needed" or "ordered by mistake". A cancelled order's items go back to stock and the refund reaches
the original payment method within 5-7 business days. Processed and delivered orders cannot be cancelled:
offer a return instead (within 30 days of delivery, unused items, free return label).

Address changes update the default shipping address and every pending order. Check the new zip code has five
digits. Quote prices from get_product, and use calculate for totals. If a request is outside this policy
(damaged items, price matching, complaints about staff such as Johnson or Rivera at the Portland warehouse),
transfer the customer to a human agent with transfer_to_human_agents and a one-line summary.
"""


class RetailShop:
    """The production database: a SQLite file, reset to the seeded data before each conversation."""

    def __init__(self, path: Path, seed: int = 0) -> None:
        self.path = Path(path)
        self.seed = seed

    def reset(self, seed: int | None = None) -> None:
        self.seed = self.seed if seed is None else seed
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            create_database(db, self.seed)

    def connect(self) -> contextlib.closing[sqlite3.Connection]:
        return contextlib.closing(sqlite3.connect(self.path))

    def table(self, name: str) -> list[tuple[Any, ...]]:
        with self.connect() as db:
            return db.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()


def build_tools(shop: RetailShop) -> list[StructuredTool]:
    """LangChain tools over the shop's database file (the same functions the sandbox uses)."""
    tools = [_bound(fn, shop) for fn in DB_TOOLS.values()]
    tools += [StructuredTool.from_function(fn) for fn in (*READ_ONLY_TOOLS.values(), transfer_to_human_agents)]
    return tools


def _bound(fn: Callable[..., str], shop: RetailShop) -> StructuredTool:
    """``fn(db, **arguments)`` as a tool taking only the arguments, with a connection per call."""
    signature = inspect.signature(fn, eval_str=True)
    hints = typing.get_type_hints(fn)

    @functools.wraps(fn)
    def call(**arguments: Any) -> str:
        with shop.connect() as db:
            return fn(db, **arguments)

    call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])  # type: ignore[attr-defined]
    call.__annotations__ = {k: v for k, v in hints.items() if k != "db"}
    return StructuredTool.from_function(call, name=fn.__name__, description=fn.__doc__)


# -- tasks and the expert's plans --------------------------------------------------------------------

Step = Callable[[list[str]], Any]
"""Given the observations so far, the next call ``(name, arguments)`` or the final answer (a string)."""


@dataclass(frozen=True)
class Task:
    user: str
    seed: int
    steps: tuple[Step, ...]

    def next_step(self, observations: list[str]) -> tuple[str, dict[str, Any]] | str:
        return self.steps[min(len(observations), len(self.steps) - 1)](observations)


@dataclass(frozen=True)
class _Kind:
    """A kind of request: which orders it is about, how the customer words it, and the expert's plan."""

    statuses: tuple[str, ...]
    text: Callable[[dict[str, Any], str], str]
    plan: Callable[[dict[str, Any], str], tuple[Step, ...]]


def make_tasks(seeds: tuple[int, ...] = (0, 1), per_kind: int = 2) -> list[Task]:
    """Deterministic tasks over the users and orders of each seeded database."""
    tasks: list[Task] = []
    for seed in seeds:
        db = sqlite3.connect(":memory:")
        create_database(db, seed)
        rng = random.Random(f"tasks:{seed}")
        columns = ("user_id", "first_name", "email", "phone")
        users = {row[0]: dict(zip(columns, row, strict=True)) for row in db.execute(f"SELECT {', '.join(columns)} FROM users")}
        orders = db.execute("SELECT order_id, user_id, status FROM orders ORDER BY order_id").fetchall()
        db.close()
        for kind in KINDS:
            chosen = [o for o in orders if o[2] in kind.statuses]
            for order_id, user_id, _status in rng.sample(chosen, min(per_kind, len(chosen))):
                user = users[user_id]
                tasks.append(Task(kind.text(user, order_id), seed, kind.plan(user, order_id)))
    return tasks


def _street(order_id: str) -> str:
    return f"{int(order_id[2:]) % 990 + 10} Birch Street"


def _new_address(order_id: str) -> dict[str, str]:
    return {"address1": _street(order_id), "address2": "Apt 4", "city": "Boise", "state": "ID", "zip": "83702"}


def _field(observation: str, key: str) -> Any:
    return json.loads(observation)[key]


KINDS = (
    _Kind(  # where is my order
        ("processed", "delivered"),
        lambda u, oid: f"Hi, I'm {u['first_name']} ({u['email']}). Where is my order {oid}?",
        lambda u, oid: (
            lambda o: ("find_user_by_email", {"email": u["email"]}),
            lambda o: ("get_order_details", {"order_id": oid}),
            lambda o: f"Your order {oid} is {_field(o[1], 'status')}, shipping to {_field(o[1], 'ship_to')}.",
        ),
    ),
    _Kind(  # cancel a pending order, authenticated by phone
        ("pending",),
        lambda u, oid: f"Please cancel order {oid}, I ordered it by mistake. My phone number is {u['phone']}.",
        lambda u, oid: (
            lambda o: ("find_user_by_phone", {"phone": u["phone"]}),
            lambda o: ("get_order_details", {"order_id": oid}),
            lambda o: ("cancel_order", {"order_id": oid, "reason": "ordered by mistake"}),
            lambda o: f"Done: order {oid} is cancelled and ${_field(o[2], 'total'):.2f} will be refunded in 5-7 business days.",
        ),
    ),
    _Kind(  # cancel a delivered order: the rule refuses with a *raised* error, the expert offers a return
        ("delivered",),
        lambda u, oid: f"I don't need order {oid} any more, cancel it please. Email: {u['email']}",
        lambda u, oid: (
            lambda o: ("find_user_by_email", {"email": u["email"]}),
            lambda o: ("cancel_order", {"order_id": oid, "reason": "no longer needed"}),
            lambda o: f"Order {oid} was already delivered, so it cannot be cancelled; I can send you a free return label instead.",
        ),
    ),
    _Kind(  # move: change the address, and the pending order follows
        ("pending",),
        lambda u, oid: (
            f"I moved to {_street(oid)}, Apt 4, Boise, ID 83702. Please update my address, "
            f"and order {oid} should go there too. My email is {u['email']}."
        ),
        lambda u, oid: (
            lambda o: ("find_user_by_email", {"email": u["email"]}),
            lambda o: ("get_user_details", {"user_id": o[0]}),
            lambda o: ("modify_user_address", {"user_id": o[0], **_new_address(oid)}),
            lambda o: ("get_order_details", {"order_id": oid}),
            lambda o: f"Updated. Your address is now {_field(o[3], 'ship_to')}, and order {oid} ships there.",
        ),
    ),
    _Kind(  # price of a re-order: product id read from the order, total from calculate
        ("delivered",),
        lambda u, oid: f"How much would 3 more of the first item in my order {oid} cost? I'm {u['email']}.",
        lambda u, oid: (
            lambda o: ("find_user_by_email", {"email": u["email"]}),
            lambda o: ("get_order_details", {"order_id": oid}),
            lambda o: ("get_product", {"product_id": _field(o[1], "items")[0]["product_id"]}),
            lambda o: ("calculate", {"expression": f"3 * {_field(o[2], 'price')}"}),
            lambda o: f"Three more {_field(o[2], 'name')} would cost ${o[3]} ({_field(o[2], 'stock')} in stock).",
        ),
    ),
    _Kind(  # a wrong e-mail first (an error *returned* as text), then the phone number
        ("pending",),
        lambda u, oid: (
            f"Which of my orders are still pending? My email is {u['email'].replace('@', '.old@')}, or try my phone {u['phone']}."
        ),
        lambda u, oid: (
            lambda o: ("find_user_by_email", {"email": u["email"].replace("@", ".old@")}),
            lambda o: ("find_user_by_phone", {"phone": u["phone"]}),
            lambda o: ("list_orders", {"user_id": o[1], "status": "pending"}),
            lambda o: "Pending: " + ", ".join(x["order_id"] for x in json.loads(o[2])) + ".",
        ),
    ),
)


def expert_policy(tasks: list[Task]) -> Callable[..., AIMessage]:
    """The scripted model's policy: follow the plan of the task in the last user message."""
    by_text = {task.user: task for task in tasks}

    def reply(messages: Any, tools: Any) -> AIMessage:
        user_index = max(i for i, m in enumerate(messages) if m.type == "human")
        observations = [str(m.content) for m in messages[user_index + 1 :] if m.type == "tool"]
        step = by_text[messages[user_index].content].next_step(observations)
        if isinstance(step, tuple):
            name, arguments = step
            return AIMessage(content="", tool_calls=[tool_call(name, **arguments)])
        return AIMessage(content=step)

    return reply


def build_graph(shop: RetailShop, tasks: list[Task]) -> Any:
    """A hand-built ReAct graph: model node -> ToolNode -> model node ... -> END."""
    tools = build_tools(shop)
    model = ScriptedChatModel(policy=expert_policy(tasks), model_name="retail-expert").bind_tools(tools)

    def call_model(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", call_model)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


def environment_of(graph_input: Any, config: Any) -> dict[str, Any]:
    """The environment reference of a run: which seeded database it started from."""
    return {"dataset": DATASET, "seed": config["configurable"]["db_seed"]}


def record_experts(store: Any, workdir: Path, *, tasks: list[Task] | None = None, redact: bool | None = None, **capture: Any) -> list[str]:
    """Run every task once on a fresh copy of its database and record the runs (approved when completed).

    ``redact`` and other ``capture`` settings (``vault=True``, ...) are passed to
    :func:`~ee_middleware.record_experience` (``redact=None``: its default, on).
    Returns the final answers, in task order.
    """
    from ee_middleware import record_experience

    tasks = make_tasks() if tasks is None else tasks
    shop = RetailShop(Path(workdir) / "retail.sqlite")
    settings: dict[str, Any] = dict(capture) if redact is None else {**capture, "redact": redact}
    agent = record_experience(
        build_graph(shop, tasks),
        app=APP,
        app_version="1.0",
        store=store,
        environment=environment_of,
        approve_if=lambda t: t.status == "completed",
        **settings,
    )
    answers = []
    for i, task in enumerate(tasks):
        shop.reset(task.seed)
        config = {"configurable": {"thread_id": f"retail-{i}", "db_seed": task.seed}}
        result = agent.invoke({"messages": [("system", SYSTEM_PROMPT), ("user", task.user)]}, config)
        answers.append(result["messages"][-1].content)
    agent.flush()
    return answers
