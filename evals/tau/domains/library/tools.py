"""The library domain's tools: functions over the JSON database ``data`` (see ``db.json``).

Written for this project. Rules the tools enforce themselves (a reference book cannot leave the
building, an overdue loan cannot be renewed...) raise :class:`LibraryError`, which the agent sees
as an error observation; rules that need judgement (authenticate the member first, ask before
changing anything, never waive fines) are the policy's (``policy.md``), not the tools'.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import re
from collections.abc import Callable
from typing import Any

TODAY = dt.date(2025, 3, 3)
LOAN_DAYS = 21
FINE_PER_DAY = 0.25
FINE_LIMIT = 10.0
MAX_RENEWALS = 2
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")


class LibraryError(ValueError):
    """A request the library's rules refuse."""


def _member(data: dict[str, Any], member_id: str) -> dict[str, Any]:
    member = data["members"].get(member_id)
    if member is None:
        raise LibraryError(f"member {member_id!r} not found")
    return member


def _book(data: dict[str, Any], book_id: str) -> dict[str, Any]:
    book = data["books"].get(book_id)
    if book is None:
        raise LibraryError(f"book {book_id!r} not found")
    return book


def _loan(data: dict[str, Any], loan_id: str) -> dict[str, Any]:
    loan = data["loans"].get(loan_id)
    if loan is None:
        raise LibraryError(f"loan {loan_id!r} not found")
    return loan


def _next_id(table: dict[str, Any], prefix: str) -> str:
    return f"{prefix}-{max(int(key.split('-')[1]) for key in table) + 1}"


def _date(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def find_member_by_email(data: dict[str, Any], email: str) -> str:
    """Find a member's id by e-mail address.

    email: the member's e-mail address.
    """
    for member_id, member in data["members"].items():
        if member["email"].lower() == email.strip().lower():
            return member_id
    raise LibraryError("no member has that e-mail address")


def find_member_by_card(data: dict[str, Any], card_number: str) -> str:
    """Find a member's id by library card number (like 2201-4410).

    card_number: the number printed on the library card.
    """
    for member_id, member in data["members"].items():
        if member["card_number"] == card_number.strip():
            return member_id
    raise LibraryError("no member has that card number")


def get_member_details(data: dict[str, Any], member_id: str) -> str:
    """A member's record: name, e-mail, status, fines due, loan ids, hold ids.

    member_id: the member id, like M-1001.
    """
    return json.dumps(_member(data, member_id))


def search_catalog(data: dict[str, Any], query: str) -> str:
    """Books whose title or author contains the query (case-insensitive), with copies available.

    query: words of the title or the author's name.
    """
    words = query.lower()
    found = [
        {k: book[k] for k in ("book_id", "title", "author", "available_copies", "reference")}
        for book in data["books"].values()
        if words in book["title"].lower() or words in book["author"].lower()
    ]
    return json.dumps(found)


def get_book_details(data: dict[str, Any], book_id: str) -> str:
    """A book's record: title, author, copies, whether it is reference-only, its hold queue.

    book_id: the book id, like B-101.
    """
    return json.dumps(_book(data, book_id))


def get_loan_details(data: dict[str, Any], loan_id: str) -> str:
    """A loan's record: member, book, due date, renewals so far, status.

    loan_id: the loan id, like L-5001.
    """
    return json.dumps(_loan(data, loan_id))


def checkout_book(data: dict[str, Any], member_id: str, book_id: str) -> str:
    """Lend an available copy of a book to a member for 21 days; returns the new loan.

    member_id: the borrowing member's id.
    book_id: the book to lend.
    """
    member, book = _member(data, member_id), _book(data, book_id)
    if member["status"] != "active":
        raise LibraryError(f"member {member_id} is {member['status']} and cannot borrow")
    if member["fines_due"] > FINE_LIMIT:
        raise LibraryError(f"member {member_id} owes {member['fines_due']:.2f} in fines (more than {FINE_LIMIT:.2f})")
    if len(member["loans"]) >= member["max_loans"]:
        raise LibraryError(f"member {member_id} already has {len(member['loans'])} loans, the most allowed")
    if book["reference"]:
        raise LibraryError(f"{book['title']!r} is a reference book and cannot be borrowed")
    if book["available_copies"] < 1:
        raise LibraryError(f"no copy of {book['title']!r} is available; place a hold instead")
    loan_id = _next_id(data["loans"], "L")
    loan = {
        "loan_id": loan_id,
        "member_id": member_id,
        "book_id": book_id,
        "due_date": (TODAY + dt.timedelta(days=LOAN_DAYS)).isoformat(),
        "renewals": 0,
        "status": "active",
    }
    data["loans"][loan_id] = loan
    member["loans"].append(loan_id)
    book["available_copies"] -= 1
    return json.dumps(loan)


def return_book(data: dict[str, Any], loan_id: str) -> str:
    """Check a borrowed book back in; a late return adds 0.25 per day late to the member's fines.

    loan_id: the loan being returned.
    """
    loan = _loan(data, loan_id)
    if loan["status"] != "active":
        raise LibraryError(f"loan {loan_id} was already returned")
    member, book = _member(data, loan["member_id"]), _book(data, loan["book_id"])
    late_days = max((TODAY - _date(loan["due_date"])).days, 0)
    fine = round(late_days * FINE_PER_DAY, 2)
    loan["status"] = "returned"
    loan["returned_on"] = TODAY.isoformat()
    member["loans"].remove(loan_id)
    member["fines_due"] = round(member["fines_due"] + fine, 2)
    book["available_copies"] += 1
    return json.dumps({"loan_id": loan_id, "late_days": late_days, "fine_added": fine, "fines_due": member["fines_due"]})


def renew_loan(data: dict[str, Any], loan_id: str) -> str:
    """Extend a loan by 21 days from its current due date (at most twice; not when overdue or held).

    loan_id: the loan to renew.
    """
    loan = _loan(data, loan_id)
    book = _book(data, loan["book_id"])
    if loan["status"] != "active":
        raise LibraryError(f"loan {loan_id} is not active")
    if _date(loan["due_date"]) < TODAY:
        raise LibraryError(f"loan {loan_id} is overdue and cannot be renewed; the book must be returned")
    if loan["renewals"] >= MAX_RENEWALS:
        raise LibraryError(f"loan {loan_id} was already renewed {MAX_RENEWALS} times")
    waiting = [h for h in book["holds_queue"] if data["holds"][h]["member_id"] != loan["member_id"]]
    if waiting:
        raise LibraryError(f"another member is waiting for {book['title']!r}; the loan cannot be renewed")
    loan["due_date"] = (_date(loan["due_date"]) + dt.timedelta(days=LOAN_DAYS)).isoformat()
    loan["renewals"] += 1
    return json.dumps(loan)


def place_hold(data: dict[str, Any], member_id: str, book_id: str) -> str:
    """Put a member in the queue for a book that has no copy available.

    member_id: the member who wants the book.
    book_id: the book to hold.
    """
    member, book = _member(data, member_id), _book(data, book_id)
    if book["available_copies"] > 0:
        raise LibraryError(f"{book['title']!r} has a copy available: check it out instead")
    if book["reference"]:
        raise LibraryError(f"{book['title']!r} is a reference book and cannot be held")
    if any(data["holds"][h]["member_id"] == member_id for h in book["holds_queue"]):
        raise LibraryError(f"member {member_id} already holds {book['title']!r}")
    hold_id = _next_id(data["holds"], "H")
    data["holds"][hold_id] = {"hold_id": hold_id, "member_id": member_id, "book_id": book_id, "placed_on": TODAY.isoformat()}
    book["holds_queue"].append(hold_id)
    member["holds"].append(hold_id)
    return json.dumps({"hold_id": hold_id, "position": len(book["holds_queue"])})


def cancel_hold(data: dict[str, Any], hold_id: str) -> str:
    """Take a member out of a book's hold queue.

    hold_id: the hold to cancel, like H-7001.
    """
    hold = data["holds"].get(hold_id)
    if hold is None or hold_id not in data["books"][hold["book_id"]]["holds_queue"]:
        raise LibraryError(f"hold {hold_id!r} not found or already cancelled")
    data["books"][hold["book_id"]]["holds_queue"].remove(hold_id)
    data["members"][hold["member_id"]]["holds"].remove(hold_id)
    return json.dumps({"hold_id": hold_id, "cancelled": True})


def pay_fines(data: dict[str, Any], member_id: str, amount: float) -> str:
    """Record a payment towards a member's fines (never more than is due).

    member_id: the paying member.
    amount: the amount paid, in dollars.
    """
    member = _member(data, member_id)
    if amount <= 0 or round(amount, 2) > member["fines_due"]:
        raise LibraryError(f"the amount must be positive and at most the {member['fines_due']:.2f} due")
    member["fines_due"] = round(member["fines_due"] - amount, 2)
    data["payments"].append({"member_id": member_id, "amount": round(amount, 2), "on": TODAY.isoformat()})
    return json.dumps({"member_id": member_id, "paid": round(amount, 2), "fines_due": member["fines_due"]})


def update_email(data: dict[str, Any], member_id: str, new_email: str) -> str:
    """Change a member's e-mail address.

    member_id: the member's id.
    new_email: the new address.
    """
    member = _member(data, member_id)
    if not EMAIL.match(new_email.strip()):
        raise LibraryError(f"{new_email!r} is not an e-mail address")
    member["email"] = new_email.strip()
    return json.dumps({"member_id": member_id, "email": member["email"]})


def transfer_to_librarian(data: dict[str, Any], summary: str) -> str:
    """Hand the conversation to a human librarian, for what the policy does not cover.

    summary: one line on what the member needs.
    """
    return "Transferred to a librarian."


TOOLS: dict[str, Callable[..., str]] = {
    fn.__name__: fn
    for fn in (
        find_member_by_email,
        find_member_by_card,
        get_member_details,
        search_catalog,
        get_book_details,
        get_loan_details,
        checkout_book,
        return_book,
        renew_loan,
        place_hold,
        cancel_hold,
        pay_fines,
        update_email,
        transfer_to_librarian,
    )
}

_JSON_TYPES = {str: "string", float: "number", int: "integer", bool: "boolean"}


def schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """The OpenAI tool schema of a tool: its docstring's first paragraph, and ``name: text`` lines for parameters."""
    doc = inspect.getdoc(fn) or ""
    summary, _, rest = doc.partition("\n\n")
    described = dict(line.split(": ", 1) for line in rest.splitlines() if ": " in line)
    hints = {k: v for k, v in inspect.get_annotations(fn, eval_str=True).items() if k not in ("data", "return")}
    properties = {name: {"type": _JSON_TYPES[hint], "description": described.get(name, "")} for name, hint in hints.items()}
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    return {"type": "function", "function": {"name": fn.__name__, "description": " ".join(summary.split()), "parameters": parameters}}
