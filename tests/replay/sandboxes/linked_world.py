"""A world of plain dicts and lists whose parts refer back to each other (each order names its customer, whose list
holds the order), as an application's objects loaded into Python often do: what the journal must copy and restore as
it is (see test_journal.py)."""

from __future__ import annotations

from typing import Any

from ee_middleware.replay.sandboxes.python import PythonSandbox


def build(environment: dict[str, Any] | None) -> dict[str, Any]:
    customers: dict[str, Any] = {}
    for c in range((environment or {}).get("customers", 3)):
        customer: dict[str, Any] = {"id": f"C{c}", "orders": []}
        for o in range(2):
            customer["orders"].append({"id": f"O{c}{o}", "status": "pending", "customer": customer})
        customers[customer["id"]] = customer
    return {"customers": customers}


def get_order(world: dict[str, Any], customer_id: str, order_id: str) -> dict[str, Any]:
    order = next(o for o in world["customers"][customer_id]["orders"] if o["id"] == order_id)
    return {"id": order["id"], "status": order["status"], "customer": order["customer"]["id"]}


def cancel_order(world: dict[str, Any], customer_id: str, order_id: str) -> str:
    order = next(o for o in world["customers"][customer_id]["orders"] if o["id"] == order_id)
    order["status"] = "cancelled"
    order["customer"]["orders"].append({"id": f"{order_id}-refund", "status": "refund", "customer": order["customer"]})
    return "cancelled"


def make_sandbox(journal: bool = True) -> PythonSandbox:
    return PythonSandbox(build, tools={"get_order": get_order, "cancel_order": cancel_order}, kind="linked", journal=journal)
