"""How the ``traces:`` suite matches the candidate's calls of tools the sandbox does not provide (a pager, an e-mail) to the
expert's: free text (prose) by the facts and content words it states, in any case and wording order; short strings
exactly; the calls as a maximum bipartite matching; a call beyond the expert's count of such a tool is a failure of its
own (``uncovered_call_extra``).

The unit tests build a real :class:`EvalTask` with the page tool's schema and real :class:`ToolCall` s; the end-to-end
ones run the helpdesk recording of ``test_traces_uncovered_calls`` (a real create_agent bot recorded into a real store,
a real PythonSandbox without ``page_oncall``), the candidate replaying the expert's answers with the page edited."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.evals.clients import OracleClient
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.tasks import EvalTask
from ee_middleware.evals.traces.suite import answer_facts, missing_facts, uncovered_calls_not_made
from ee_middleware.records import ToolCall
from tests.evals.test_traces_uncovered_calls import _edited_reference, _page, _record, _tasks

PAGE_SCHEMA = {
    "type": "function",
    "function": {
        "name": "page_oncall",
        "description": "Page the on-call engineer of a team.",
        "parameters": {
            "type": "object",
            "properties": {
                "team": {"type": "string"},
                "message": {"type": "string"},
                "subject": {"type": "string"},
                "status": {"type": "string"},
                "severity": {"type": "integer", "default": 2},
                "state": {"type": "string", "enum": ["the vpn is down", "the vpn is up again"]},
            },
            "required": ["team"],
        },
    },
}
EMAIL_SCHEMA = {
    "type": "function",
    "function": {
        "name": "send_email",
        "description": "E-mail a customer.",
        "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "body": {"type": "string"}}, "required": ["to"]},
    },
}
TASK = EvalTask(
    suite="traces:unit",
    id="t",
    category="desk",
    turns=[[{"role": "user", "content": "Help"}]],
    tools=[[PAGE_SCHEMA, EMAIL_SCHEMA]],
    reference=[[]],
)


def _missing(expert: list[dict[str, Any]], candidate: list[dict[str, Any]], tool: str = "page_oncall") -> list[dict[str, Any]]:
    """The expert's calls (``tool`` with these arguments) the candidate's calls lack."""
    uncovered = [{"id": f"e{i}", "name": tool, "arguments": a} for i, a in enumerate(expert)]
    made = [ToolCall(id=f"c{i}", name=tool, arguments=a) for i, a in enumerate(candidate)]
    return uncovered_calls_not_made(TASK, uncovered, made)[0]


@pytest.mark.parametrize(
    ("argument", "expert", "candidate"),
    [
        # Prose whose content is lowercase words: before, it had no "facts" and any message (even "") matched it.
        ("message", "Customer says the vpn is down", "Customer says all is fine, ignore"),
        ("message", "Customer says the vpn is down", "Customer"),
        ("message", "the vpn is down for everyone", ""),
        ("message", "the vpn is down for everyone", "   "),
        ("message", "the vpn is down for everyone", "vpn"),
        ("message", "the refund for the order was approved", "the refund for the order was denied"),
        # A negation turns the same words into their opposite, either way round.
        ("message", "the refund for order 123 was approved today", "the refund for order 123 was not approved today"),
        ("message", "the refund for order 123 wasn't approved today", "the refund for order 123 was approved today"),
        # Short values (fewer than four words) are compared as written: before, "several words" made them free text.
        ("subject", "Refund approved", "Refund denied"),
        ("status", "on hold", "cancelled"),
        ("status", "on hold", "hold on"),
        # An enum's value is compared as written, however many words it has.
        ("state", "the vpn is down", "the vpn is up again"),
        # A text of stop words only states no fact: compared whole, after case and spacing.
        ("message", "it is what it is", "it is not what it was"),
    ],
)
def test_a_candidate_that_states_something_else_does_not_match(argument: str, expert: str, candidate: str) -> None:
    """Before: only digits and capitalized words counted as facts, so lowercase content was never checked and a
    two-word value was free text."""
    missing = _missing([{"team": "network", argument: expert}], [{"team": "network", argument: candidate}])
    assert len(missing) == 1, f"{candidate!r} matched {expert!r}"


@pytest.mark.parametrize(
    ("expert", "candidate"),
    [
        # Capitalisation carries no meaning: before, the sentence-initial "Please" was a fact the candidate must state.
        ("Please check order 123", "Order 123 needs a check"),
        ("Customer says the vpn is down", "the customer says: VPN down"),
        ("VPN down for everyone", "vpn is down for everyone"),
        # Inflections, word order, punctuation, stop words and extra words are the candidate's own.
        ("Order 123 delayed: please page the warehouse team", "Paging warehouse team - order #123 is delaying"),
        ("Refund of $50 for order 123 approved", "approved: $50.00 refund for order 123"),
        ("three users cannot log in", "3 users can't log in"),
        ("it is what it is", "It  is what it is"),
        # A negation inside an identifier negates nothing.
        ("reply to the customer about refund 5", "Reply to the customer about refund 5 from no-reply@example.com"),
    ],
)
def test_a_candidate_that_states_the_same_in_its_own_words_matches(expert: str, candidate: str) -> None:
    assert not _missing([{"team": "network", "message": expert}], [{"team": "network", "message": candidate}])


def test_non_ascii_digits_are_read_as_numbers() -> None:
    """Before: ``١٢٣`` (Arabic-Indic digits) was read digit by digit in the expert's text but as 123 in the candidate's,
    so the identical message failed; in a final answer too."""
    page = {"team": "network", "message": "Order ١٢٣ is late for the customer"}
    assert not _missing([page], [page])
    assert not _missing([page], [{"team": "network", "message": "order 123 is late for the customer"}])
    assert len(_missing([page], [{"team": "network", "message": "order 124 is late for the customer"}])) == 1
    facts = answer_facts("Order ١٢٣ ships on Monday.", ['{"id": 123}'])
    assert facts == ["123"], facts
    assert missing_facts(facts, ["Your order ١٢٣ ships Monday"]) == []
    assert missing_facts(facts, ["Your order ١٢٤ ships Monday"]) == ["123"]


def test_the_calls_are_matched_as_a_maximum_bipartite_matching() -> None:
    """Before: each expert call took the first candidate call that stated its facts, so the longer page (which states
    the shorter one's facts too) was used up by the shorter expert page, and the same two pages in the other order
    failed."""
    short = {"team": "n", "message": "Order 123 is delayed at the warehouse"}
    long = {"team": "n", "message": "Order 123 is delayed at the warehouse, refund 456 issued"}
    assert not _missing([short, long], [long, short])
    assert not _missing([short, long], [short, long])
    assert not _missing([short, long], [long, long])  # the long page states what the short one does
    assert _missing([short, long], [short, short]) == [{"id": "e1", "name": "page_oncall", "arguments": long}]
    assert _missing([short, long], [long]) == [{"id": "e1", "name": "page_oncall", "arguments": long}]  # one call each


def test_a_second_identical_call_of_an_uncovered_tool_is_an_extra_call() -> None:
    """A page (an e-mail) acts outside the world: sending it twice is not undone. Calls of an uncovered tool beyond the
    expert's count are named as extra; calls of another tool are not counted against it."""
    page = {"team": "network", "message": "the vpn is down for everyone"}
    uncovered = [{"id": "e0", "name": "page_oncall", "arguments": page}]
    made = [ToolCall(id="c0", name="page_oncall", arguments=page), ToolCall(id="c1", name="page_oncall", arguments=page)]
    match = uncovered_calls_not_made(TASK, uncovered, made)
    assert match.missing == [] and match.extra == ["page_oncall(team='network', message='the vpn is down for everyone')"]
    email = ToolCall(id="c2", name="send_email", arguments={"to": "bob@example.com", "body": "We are on it, thank you"})
    match = uncovered_calls_not_made(TASK, uncovered, [made[0], email])
    assert match.missing == [] and match.extra == []


@pytest.fixture(scope="module")
def desk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _record(tmp_path_factory.mktemp("traces-free-text"))


def _run_with_page(desk: tuple[Path, Path], expert_message: str, edit: Any) -> Any:
    """The outage task with the expert's page message set to ``expert_message`` (its recorded call and reference), the
    candidate replaying the reference edited by ``edit``."""
    suite, tasks = _tasks(desk)
    task = tasks["outage"]
    calls = [
        {**c, "arguments": {**c["arguments"], "message": expert_message}} if c["name"] == "page_oncall" else c
        for c in task.payload["expert_calls"]
    ]
    task = replace(task, payload={**task.payload, "expert_calls": calls})
    task = replace(task, reference=_edited_reference(task, lambda call: _page(call, message=expert_message)))
    return suite.run(OracleClient(), replace(task, reference=_edited_reference(task, edit)), 0, LoopConfig())


@pytest.mark.parametrize(
    ("message", "passes"),
    [
        (None, True),  # the expert's own page
        ("the customer says: VPN is down", True),
        ("Customer says all is fine, ignore", False),
        ("Customer", False),
        ("", False),
    ],
)
def test_the_page_message_is_matched_by_what_it_says_end_to_end(desk: tuple[Path, Path], message: str | None, passes: bool) -> None:
    """Before: the lowercase message of the expert ("Customer says the vpn is down") had one fact, the sentence-initial
    "Customer", so a page saying all is fine, or just "Customer", passed."""
    edit = (lambda call: call) if message is None else (lambda call: _page(call, message=message))
    result = _run_with_page(desk, "Customer says the vpn is down", edit)
    assert result.success is passes, result.reason
    if not passes:
        assert result.error_type == "uncovered_call_missing", result.reason


def test_a_candidate_that_pages_twice_fails_with_an_extra_call(desk: tuple[Path, Path]) -> None:
    """Before: the second page failed nothing ("multiset" was "at least the expert's calls")."""
    suite, tasks = _tasks(desk)
    task = tasks["outage"]
    result = suite.run(OracleClient(), replace(task, reference=_edited_reference(task, lambda call: [call, call])), 0, LoopConfig())
    assert not result.success and result.error_type == "uncovered_call_extra", result.reason
    assert "page_oncall 2 times" in result.reason and "the expert 1" in result.reason, result.reason
    assert result.details["uncovered_calls_missing"] == [] and len(result.details["uncovered_calls_extra"]) == 1, result.details


@pytest.mark.parametrize("raw", ["not json {", None, [1, 2], {"team": "net"}])
def test_a_candidate_call_the_model_wrote_malformed_counts_as_replay_and_il_count_it(raw: Any) -> None:
    """A candidate's ``{"_raw": ...}`` call reached no tool, whatever ``_raw`` holds (replay's and IL's one rule,
    ee_middleware.replay.malformed): it never counts as the expert's page, nor as an extra one. Before, only a string
    there was malformed, so ``{"_raw": [1, 2]}`` counted as a page made."""
    uncovered = [{"id": "e0", "name": "page_oncall", "arguments": {"team": "net"}}]
    made = [
        ToolCall(id="c0", name="page_oncall", arguments={"team": "net"}),
        ToolCall(id="c1", name="page_oncall", arguments={"_raw": raw}),
    ]
    match = uncovered_calls_not_made(TASK, uncovered, made)
    assert match.missing == [] and match.extra == [], match


NOTE_SCHEMA = {
    "type": "function",
    "function": {
        "name": "store_note",
        "description": "Store a note verbatim.",
        "parameters": {"type": "object", "properties": {"_raw": {"type": "string"}}, "required": ["_raw"]},
    },
}


def _notes_sandbox() -> Any:
    from ee_middleware.replay.sandboxes.python import PythonSandbox

    def store_note(world: dict[str, Any], _raw: str) -> str:
        world["notes"].append(_raw)
        return "stored"

    return PythonSandbox(lambda environment: {"notes": list(environment["notes"])}, tools={"store_note": store_note}, kind="notes")


@pytest.mark.parametrize(("malformed", "stored"), [(True, []), (False, ["hi"]), (None, ["hi"])])
def test_the_expert_world_reads_captures_mark_for_a_tool_that_declares_raw(malformed: bool | None, stored: list[str]) -> None:
    """A tool whose schema declares ``_raw``: the expert's call ``{"_raw": "hi"}`` that capture marked malformed (schema
    1.6: LangChain held it as an invalid call, no tool ran it) is not executed in the expert world, as replay leaves it;
    one marked well formed, or unmarked (an older record: the schema decides), is. Before, every expert call was
    executed, so the expert world held a note production never stored and a candidate that stored none failed."""
    from ee_middleware.evals.traces.suite import expert_digests
    from ee_middleware.replay.sandboxes.protocol import state_digest

    call = ToolCall(id="e0", name="store_note", arguments={"_raw": "hi"}, malformed=malformed)
    task = replace(TASK, tools=[[NOTE_SCHEMA]], payload={"environment": {"notes": []}, "expert_calls": [call.model_dump()]})
    start, end = expert_digests(_notes_sandbox(), task)
    expected = _notes_sandbox()
    expected.reset({"notes": []})
    for note in stored:
        expected.execute(ToolCall(id="x", name="store_note", arguments={"_raw": note}))
    assert end == state_digest(expected) and (end == start) == (not stored)


def test_a_raw_only_call_production_ran_is_matched_by_the_same_candidate_call() -> None:
    """A tool that takes any argument, which production ran with ``_raw`` as its only argument (capture marks that call
    well formed, schema 1.6), acting outside the world: the candidate that makes the same call made the expert's call.
    Before (R7, finding 1), the candidate's call (no mark: a model parser holds no unreadable call) was judged by its
    shape alone, malformed, so even a perfect candidate failed with uncovered_call_missing. A candidate's ``_raw``-only
    call of a tool production never ran so still counts as no call (the test above)."""
    free_note = {"type": "function", "function": {"name": "free_note", "description": "Note anything.", "parameters": {"type": "object"}}}
    expert = {"id": "v1", "name": "free_note", "arguments": {"_raw": "hi"}, "malformed": False}
    task = replace(TASK, tools=[[PAGE_SCHEMA, free_note]], payload={"expert_calls": [expert]})
    match = uncovered_calls_not_made(task, [expert], [ToolCall(id="c0", name="free_note", arguments={"_raw": "hi"})])
    assert match.missing == [] and match.extra == [], match
    page = uncovered_calls_not_made(task, [expert], [ToolCall(id="c0", name="page_oncall", arguments={"_raw": "hi"})])
    assert page.missing == [expert], page
