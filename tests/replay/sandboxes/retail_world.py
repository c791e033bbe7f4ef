"""A retail database as plain Python data (users, products, orders; about 1 MB pickled) and its tools.

Generated deterministically from ``{"seed": S, "users": U, "products": P, "orders": O}``; used by
the journal tests and by ``benchmarks/replay_throughput.py --world retail``. Tools read and write
rows by key, as a database-backed app's tools do.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import pickle
import random
from typing import Any

from ee_middleware.records import Observation, ToolCall, Trajectory
from ee_middleware.replay.sandboxes.python import PythonSandbox

ONE_MB = {"seed": 7, "users": 3000, "products": 800, "orders": 6000}
SMALL = {"seed": 3, "users": 30, "products": 12, "orders": 40}


@functools.lru_cache(maxsize=4)
def _pristine(seed: int, users: int, products: int, orders: int) -> bytes:
    rng = random.Random(seed)
    db: dict[str, Any] = {"users": {}, "products": {}, "orders": {}, "next_order": orders}
    for p in range(products):
        db["products"][f"p{p}"] = {
            "id": f"p{p}",
            "name": f"product {p}",
            "price_cents": rng.randint(100, 50_000),
            "stock": rng.randint(0, 40),
            "tags": rng.sample(["home", "garden", "toys", "books", "audio", "sport", "food"], 2),
        }
    for u in range(users):
        db["users"][f"u{u}"] = {
            "id": f"u{u}",
            "name": f"User {u}",
            "email": f"user{u}@example.com",
            "address": {
                "street": f"{rng.randint(1, 999)} Main St",
                "city": rng.choice(["Lyon", "Oslo", "Lima", "Pune"]),
                "zip": f"{rng.randint(10000, 99999)}",
            },
            "balance_cents": rng.randint(0, 200_000),
            "orders": [],
        }
    for o in range(orders):
        user = f"u{rng.randrange(users)}"
        items = [{"product": f"p{rng.randrange(products)}", "quantity": rng.randint(1, 3)} for _ in range(rng.randint(1, 4))]
        db["orders"][f"o{o}"] = {"id": f"o{o}", "user": user, "items": items, "status": rng.choice(["pending", "shipped", "delivered"])}
        db["users"][user]["orders"].append(f"o{o}")
    return pickle.dumps(db, protocol=pickle.HIGHEST_PROTOCOL)


def build(environment: dict[str, Any] | None) -> dict[str, Any]:
    env = environment or {}
    return pickle.loads(_pristine(env["seed"], env["users"], env["products"], env["orders"]))


def get_user(db: dict[str, Any], user_id: str) -> dict[str, Any]:
    return db["users"][user_id]


def get_order(db: dict[str, Any], order_id: str) -> dict[str, Any]:
    return db["orders"][order_id]


def get_product(db: dict[str, Any], product_id: str) -> dict[str, Any]:
    return db["products"][product_id]


def list_orders(db: dict[str, Any], user_id: str) -> list[dict[str, Any]]:
    return [db["orders"][o] for o in db["users"][user_id]["orders"]]


def place_order(db: dict[str, Any], user_id: str, product_id: str, quantity: int = 1) -> dict[str, Any]:
    user, product = db["users"][user_id], db["products"][product_id]
    if product["stock"] < quantity:
        raise ValueError(f"only {product['stock']} of {product_id} left")
    cost = product["price_cents"] * quantity
    if user["balance_cents"] < cost:
        raise ValueError(f"balance {user['balance_cents']} is below {cost}")
    order_id = f"o{db['next_order']}"
    db["next_order"] += 1
    order = {"id": order_id, "user": user_id, "items": [], "status": "pending"}
    db["orders"][order_id] = order
    order["items"].append({"product": product_id, "quantity": quantity})  # changed after it is in the world
    product["stock"] -= quantity
    user["balance_cents"] -= cost
    user["orders"].append(order_id)
    return order


def cancel_order(db: dict[str, Any], order_id: str) -> str:
    order = db["orders"][order_id]
    if order["status"] != "pending":
        raise ValueError(f"order {order_id} is {order['status']}, only pending orders can be cancelled")
    for item in order["items"]:
        db["products"][item["product"]]["stock"] += item["quantity"]
        db["users"][order["user"]]["balance_cents"] += db["products"][item["product"]]["price_cents"] * item["quantity"]
    order["status"] = "cancelled"
    return f"cancelled {order_id}"


def update_address(db: dict[str, Any], user_id: str, street: str, city: str, zip: str) -> dict[str, Any]:
    db["users"][user_id]["address"] = {"street": street, "city": city, "zip": zip}
    return db["users"][user_id]["address"]


def remove_tag(db: dict[str, Any], product_id: str, tag: str) -> list[str]:
    db["products"][product_id]["tags"].remove(tag)
    return db["products"][product_id]["tags"]


TOOLS = {
    "get_user": get_user,
    "get_order": get_order,
    "get_product": get_product,
    "list_orders": list_orders,
    "place_order": place_order,
    "cancel_order": cancel_order,
    "update_address": update_address,
    "remove_tag": remove_tag,
}


def make_sandbox(journal: bool = True) -> PythonSandbox:
    return PythonSandbox(build, tools=TOOLS, kind="retail", journal=journal)


def _schema(name: str, **properties: str) -> dict[str, Any]:
    props = {k: {"type": v} for k, v in properties.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} in the shop database.",
            "parameters": {"type": "object", "properties": props, "required": list(properties)},
        },
    }


TOOL_SCHEMAS = [
    _schema("get_user", user_id="string"),
    _schema("get_order", order_id="string"),
    _schema("get_product", product_id="string"),
    _schema("list_orders", user_id="string"),
    _schema("place_order", user_id="string", product_id="string", quantity="integer"),
    _schema("cancel_order", order_id="string"),
    _schema("update_address", user_id="string", street="string", city="string", zip="string"),
    _schema("remove_tag", product_id="string", tag="string"),
]


def expert_calls(environment: dict[str, Any], n: int, seed: int) -> list[ToolCall]:
    """``n`` plausible calls (reads and writes by key) on the database of ``environment``."""
    rng = random.Random(seed)
    users, products, orders = environment["users"], environment["products"], environment["orders"]
    calls = []
    for i in range(n):
        u, p, o = f"u{rng.randrange(users)}", f"p{rng.randrange(products)}", f"o{rng.randrange(orders)}"
        name, args = rng.choice(
            [
                ("get_user", {"user_id": u}),
                ("get_order", {"order_id": o}),
                ("get_product", {"product_id": p}),
                ("list_orders", {"user_id": u}),
                ("place_order", {"user_id": u, "product_id": p, "quantity": rng.randint(1, 2)}),
                ("cancel_order", {"order_id": o}),
                ("update_address", {"user_id": u, "street": "1 New St", "city": "Oslo", "zip": "00150"}),
                ("remove_tag", {"product_id": p, "tag": "home"}),
            ]
        )
        calls.append(ToolCall(id=f"c{i}", name=name, arguments=args))
    return calls


def trajectory(environment: dict[str, Any], n: int, seed: int, trajectory_id: str = "retail-1") -> Trajectory:
    """An expert trajectory of ``n`` calls whose observations are what the sandbox gives them."""
    sandbox = make_sandbox(journal=False)
    sandbox.reset(environment)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Sort out my orders, please."}]
    steps = []
    for i, call in enumerate(expert_calls(environment, n, seed)):
        observation: Observation = sandbox.execute(call)
        state = list(messages)
        steps.append(
            {
                "trajectory_id": trajectory_id,
                "index": i,
                "decision_index": i,
                "state": state,
                "action": {"kind": "tool_call", "tool_call": call.model_dump()},
                "observation": observation.model_dump(),
            }
        )
        wire = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [wire]},
            {"role": "tool", "tool_call_id": call.id, "content": observation.content},
        ]
    sandbox.close()
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return Trajectory.parse(
        {
            "id": trajectory_id,
            "app": "retail",
            "tools": TOOL_SCHEMAS,
            "started_at": when,
            "ended_at": when,
            "environment": environment,
            "messages": messages,
            "steps": steps,
        }
    )
