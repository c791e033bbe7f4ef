"""A tau task whose required outputs appear in no reply of its turns is refused when its domain's tasks load (the
domain's ``check_task``; the conformance kit says the same refusal). Before: it loaded, and the oracle, which must
score 100%, failed it with only ``missing_output`` (a user's own domain: 66.7%, every model scored wrong on it).
tau-bench checkouts load through the same check: their tasks state outputs in ``respond`` actions, turned into a reply
that says them, so they still load."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.tau import tau_bench
from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.testing import check_tau_domain

HELPDESK = '''
from ee_middleware.evals.tau.domain import TauDomain, TauTask


def get_user(data, user_id: str) -> str:
    """Look up a user by id."""
    return str(data["users"][user_id])


SCHEMAS = [{"type": "function", "function": {"name": "get_user", "description": "Look up a user by id.", "parameters": {
    "type": "object", "properties": {"user_id": {"type": "string"}}, "required": ["user_id"]}}}]
LOOKUP = [{"name": "get_user", "arguments": {"user_id": "u1"}}]
TASKS = [
    {"id": "who-u1", "category": "answer", "instruction": "Ask u1's team.", "outputs": ["Platform"],
     "turns": [{"user": "Which team is u1 on?", "actions": LOOKUP}]},
]


def domain():
    return TauDomain(name="helpdesk", policy="You are an IT helpdesk agent.", tools={"get_user": get_user}, schemas=SCHEMAS,
                     load_data=lambda: {"users": {"u1": {"team": "Platform"}}},
                     splits={"test": lambda: [TauTask.from_json(t, "helpdesk") for t in TASKS]})
'''


@pytest.fixture
def helpdesk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A user's own domain package (its answer task's turn has no reply: 'Done.'), as ``tau:PACKAGE.helpdesk:domain``."""
    package = f"desk_{abs(hash(str(tmp_path)))}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "helpdesk.py").write_text(textwrap.dedent(HELPDESK))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield f"{package}.helpdesk"


def test_an_answer_task_whose_reply_never_says_its_output_is_refused_at_load(helpdesk: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["eval", "run", "--suite", f"tau:{helpdesk}:domain", "--model-spec", "oracle", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert (
        "Task 'who-u1' of the tau domain 'helpdesk' (split 'test'): its required output 'Platform' appears in no reply of "
        "its turns ('Done.')"
    ) in said, said
    assert "write the outputs into the reply (ee_middleware.evals.tau.domain.respond_text(outputs) writes one)" in said
    assert not out.exists()


def test_the_kit_says_the_domains_own_refusal(helpdesk: str) -> None:
    import importlib

    factory = importlib.import_module(helpdesk).domain
    with pytest.raises(AssertionError, match=r"loading the split 'test': Task 'who-u1' .*'Platform' appears in no reply"):
        check_tau_domain(factory)


def _domain(*tasks: TauTask, **options: Any) -> TauDomain:
    def stock(data: dict[str, Any], item: str) -> str:
        return str(data["stock"][item])

    schema = {
        "type": "function",
        "function": {
            "name": "stock",
            "description": "How many.",
            "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]},
        },
    }
    return TauDomain(
        name="shop",
        policy="Sell.",
        tools={"stock": stock},
        schemas=[schema],
        load_data=lambda: {"stock": {"pen": 1250}},
        splits={"test": lambda: list(tasks)},
        **options,
    )


def _task(outputs: list[str], *replies: str, category: str = "answer") -> TauTask:
    turns = [
        {"user": f"Question {i}?", "actions": [{"name": "stock", "arguments": {"item": "pen"}}], "reply": r} for i, r in enumerate(replies)
    ]
    return TauTask.from_json({"id": "t", "category": category, "instruction": "Ask.", "outputs": outputs, "turns": turns}, "shop")


def test_every_output_must_be_said_in_some_turns_reply() -> None:
    with pytest.raises(ConfigError, match=r"its required output '1,250' appears in no reply of its turns \('There are many.'\)"):
        _domain(_task(["1,250"], "There are many.")).tasks("test")
    with pytest.raises(ConfigError, match=r"its required output 'pens' appears in no reply .*'1250 left.' / 'Anything else\?'"):
        _domain(_task(["1250", "pens"], "1250 left.", "Anything else?")).tasks("test")
    # said in another turn, in other case, with the thousands separator the scoring ignores: loads
    assert _domain(_task(["1,250", "PENS"], "We have pens.", "1250 left.")).tasks("test")


def test_a_tau_bench_checkouts_outputs_stated_in_respond_actions_still_load() -> None:
    """tau-bench writes outputs as it likes (in a respond action's content, or nowhere); the checkout's reply says them."""
    items = [
        SimpleNamespace(instruction="How many pens?", actions=[SimpleNamespace(name="stock", kwargs={"item": "pen"})], outputs=["1,250"]),
        SimpleNamespace(
            instruction="What do you sell?",
            actions=[SimpleNamespace(name="respond", kwargs={"content": "We sell Pens and ink"})],
            outputs=["pens", "Ink"],
        ),
        SimpleNamespace(instruction="Anything?", actions=[], outputs=[]),
    ]
    tasks = [tau_bench._task(i, item) for i, item in enumerate(items)]
    loaded = _domain(*tasks, categories_from_ground_truth=True).tasks("test")
    assert [t.category for t in loaded] == ["answer", "answer", "refusal"]
