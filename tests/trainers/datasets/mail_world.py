"""A real LangChain agent whose tool's schema carries user data: an ``enum`` of sender addresses (which capture's
redaction makes pseudonyms), and a billing account in the description and a parameter's ``default``. The expert sends
from one of the enum's addresses, which the conversation never writes. Recorded with ``record_experience`` into a real
store, every run approved."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import StructuredTool
from pydantic import BaseModel, Field

from ee_middleware import record_experience
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call

SENDERS = ("support@northwind-bank.example", "billing@northwind-bank.example")
ACCOUNT = "NW-ACCT-12345"
"""A value the store's rules do not redact when the runs are recorded (a pattern added later does: :data:`ACCOUNT_RULE`)."""
ACCOUNT_RULE = {"account": r"NW-ACCT-\d+"}


class SendArgs(BaseModel):
    sender: Literal["support@northwind-bank.example", "billing@northwind-bank.example"] = Field(description="Mailbox to send from")
    to: str = Field(description="Recipient address")
    body: str
    account: str = Field(default=ACCOUNT, description="Billing account")


def send_mail(sender: str, to: str, body: str, account: str = "") -> str:
    """Send an e-mail."""
    return f"sent from {sender}"


def record_mail_runs(store_path: Path, runs: int = 2, **capture: Any) -> LocalExperienceStore:
    """``runs`` runs of the mail agent: the user asks for an invoice to be mailed 'from billing'; the expert calls
    ``send_mail(sender='billing@northwind-bank.example', to=<the user's address>, ...)``, then answers."""
    mail = StructuredTool.from_function(
        send_mail, name="send_mail", args_schema=SendArgs, description=f"Send an e-mail. Runs as account {ACCOUNT}."
    )
    script = [
        AIMessage(content="", tool_calls=[tool_call("send_mail", sender=SENDERS[1], to="jane.doe@gmail.com", body="Your invoice")]),
        AIMessage(content="Sent."),
    ]
    graph = create_agent(ScriptedChatModel(script=script), [mail], system_prompt="You are support.")
    agent = record_experience(graph, app="mail", store=store_path, **capture)
    for i in range(runs):
        agent.invoke({"messages": [("user", f"[{i}] Mail my invoice to jane.doe@gmail.com from billing")]})
    assert agent.flush()
    store = LocalExperienceStore(store_path)
    store.approve(store.trajectories()["id"].to_list(), by="alice")
    return store
