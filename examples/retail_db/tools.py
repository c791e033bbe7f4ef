"""The retail agent's tools, written once over a ``sqlite3.Connection`` and used twice.

Every tool takes the database connection first, then its arguments. The agent binds them to the
production database file (:mod:`retail_db.agent`); the replay sandbox binds them to an in-memory
copy rebuilt from the trajectory's environment reference (:mod:`retail_db.sandbox`). One set of
functions is what keeps replay faithful: the sandbox answers exactly as production did.

Two error styles, as real tool sets mix them:

- lookups that find nothing *return* a string starting with ``Error:`` (the model sees it as an
  ordinary result; the sandbox's ``is_error_result`` marks it as an error);
- actions that break a business rule *raise* :class:`RetailError` (the agent's tool node turns it
  into the error message the model sees; the sandbox's ``format_error`` must write the same text).

``calculate`` needs no database (a read-only tool without a world); ``transfer_to_human_agents``
has a side effect outside the database (it opens a ticket with people), so the sandbox does not
provide it and replay never calls it.
"""

from __future__ import annotations

import ast
import json
import operator
import re
import sqlite3
from typing import Any, Literal

ORDER_ID = re.compile(r"^#W\d{7}$")
ZIP = re.compile(r"^\d{5}$")


class RetailError(ValueError):
    """A request the store's rules refuse (cancelling a delivered order, a malformed zip code)."""


def find_user_by_email(db: sqlite3.Connection, email: str) -> str:
    """Find a customer's user id by their e-mail address."""
    row = db.execute("SELECT user_id FROM users WHERE lower(email) = lower(?)", (email.strip(),)).fetchone()
    return row[0] if row else "Error: user not found"


def find_user_by_phone(db: sqlite3.Connection, phone: str) -> str:
    """Find a customer's user id by their phone number (like 415-555-0123)."""
    digits = re.sub(r"\D", "", phone)
    for user_id, stored in db.execute("SELECT user_id, phone FROM users"):
        if re.sub(r"\D", "", stored) == digits:
            return user_id
    return "Error: user not found"


def get_user_details(db: sqlite3.Connection, user_id: str) -> str:
    """A customer's profile: name, e-mail, phone, default address and order ids."""
    row = db.execute("SELECT * FROM users WHERE user_id = ?", (user_id,)).fetchone()
    if row is None:
        return "Error: user not found"
    user = dict(zip(_columns(db, "users"), row, strict=True))
    user["orders"] = [r[0] for r in db.execute("SELECT order_id FROM orders WHERE user_id = ? ORDER BY placed_on", (user_id,))]
    return json.dumps(user)


def list_orders(
    db: sqlite3.Connection, user_id: str, status: Literal["pending", "processed", "delivered", "cancelled"] | None = None
) -> str:
    """A customer's orders (id, status, date), newest first, optionally only those with one status."""
    if db.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
        return "Error: user not found"
    query = "SELECT order_id, status, placed_on FROM orders WHERE user_id = ?" + (" AND status = ?" if status else "")
    rows = db.execute(query + " ORDER BY placed_on DESC", (user_id, status) if status else (user_id,)).fetchall()
    return json.dumps([{"order_id": o, "status": s, "placed_on": d} for o, s, d in rows])


def get_order_details(db: sqlite3.Connection, order_id: str) -> str:
    """An order's status, shipping address and items (product id, name, quantity, price)."""
    row = db.execute("SELECT * FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return "Error: order not found"
    order = dict(zip(_columns(db, "orders"), row, strict=True))
    items = db.execute(
        "SELECT i.product_id, p.name, i.quantity, i.unit_price FROM order_items i JOIN products p USING (product_id) "
        "WHERE i.order_id = ? ORDER BY p.name",
        (order_id,),
    )
    order["items"] = [{"product_id": p, "name": n, "quantity": q, "unit_price": u} for p, n, q, u in items]
    order["total"] = round(sum(i["quantity"] * i["unit_price"] for i in order["items"]), 2)
    return json.dumps(order)


def get_product(db: sqlite3.Connection, product_id: str) -> str:
    """A product's name, category, price and stock by its ten-digit id."""
    row = db.execute("SELECT * FROM products WHERE product_id = ?", (product_id,)).fetchone()
    if row is None:
        raise RetailError(f"unknown product id {product_id!r}; product ids are ten digits, e.g. from get_order_details")
    return json.dumps(dict(zip(_columns(db, "products"), row, strict=True)))


def cancel_order(db: sqlite3.Connection, order_id: str, reason: Literal["no longer needed", "ordered by mistake"]) -> str:
    """Cancel a pending order; items go back to stock. Only pending orders can be cancelled."""
    if not ORDER_ID.match(order_id):
        raise RetailError(f"order ids look like #W1234567, got {order_id!r}")
    row = db.execute("SELECT status FROM orders WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        return "Error: order not found"
    if row[0] != "pending":
        raise RetailError(f"order {order_id} is {row[0]}; only pending orders can be cancelled")
    db.execute("UPDATE orders SET status = 'cancelled', cancel_reason = ? WHERE order_id = ?", (reason, order_id))
    for product_id, quantity in db.execute("SELECT product_id, quantity FROM order_items WHERE order_id = ?", (order_id,)).fetchall():
        db.execute("UPDATE products SET stock = stock + ? WHERE product_id = ?", (quantity, product_id))
    db.commit()
    return get_order_details(db, order_id)


def modify_user_address(db: sqlite3.Connection, user_id: str, address1: str, address2: str, city: str, state: str, zip: str) -> str:
    """Change a customer's default shipping address (address2 may be empty). Pending orders ship there too."""
    if not ZIP.match(zip):
        raise RetailError(f"zip codes have five digits, got {zip!r}")
    if db.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
        return "Error: user not found"
    db.execute(
        "UPDATE users SET address1 = ?, address2 = ?, city = ?, state = ?, zip = ? WHERE user_id = ?",
        (address1, address2, city, state, zip, user_id),
    )
    ship_to = ", ".join(part for part in (address1, address2, city, state, zip) if part)
    db.execute("UPDATE orders SET ship_to = ? WHERE user_id = ? AND status = 'pending'", (ship_to, user_id))
    db.commit()
    return get_user_details(db, user_id)


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv, ast.USub: operator.neg}


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression with + - * / and parentheses, rounded to cents."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](walk(node.operand))
        raise RetailError(f"calculate accepts numbers and + - * / only, got {expression!r}")

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise RetailError(f"not an arithmetic expression: {expression!r}") from exc
    return f"{walk(tree.body):.2f}"


def transfer_to_human_agents(summary: str) -> str:
    """Hand the conversation to a human agent with a summary of the customer's issue."""
    raise RuntimeError("the human support queue is only reachable in production")  # pragma: no cover - production stand-in


DB_TOOLS: dict[str, Any] = {
    f.__name__: f
    for f in (
        find_user_by_email,
        find_user_by_phone,
        get_user_details,
        list_orders,
        get_order_details,
        get_product,
        cancel_order,
        modify_user_address,
    )
}
"""Tools over the database: the sandbox provides them on its in-memory copy."""
READ_ONLY_TOOLS: dict[str, Any] = {"calculate": calculate}
"""Tools that need no database and change nothing."""
MUTATING_TOOLS = frozenset({"cancel_order", "modify_user_address"})


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
