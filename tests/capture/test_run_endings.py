"""How a recorded run ended, when it did not end on its model's reply: a call limit or a retry policy of LangChain's
``create_agent`` middleware stops the run and writes the last message itself. Real middleware, real LangGraph graphs,
the real OTel SDK and a real local store; a scripted chat model stands in for a served one."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import (
    AgentMiddleware,
    ModelCallLimitMiddleware,
    ModelRetryMiddleware,
    ToolCallLimitMiddleware,
    ToolRetryMiddleware,
    after_model,
)
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import BaseModel, Field
from typer.testing import CliRunner

from ee_middleware import record_experience
from ee_middleware.capture.assembler import AssemblyOptions, assemble
from ee_middleware.capture.spandata import from_readable_span
from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once

TASK = {"messages": [("user", "How many pears and apples do we have?")]}


@tool
def check_stock(item: str) -> str:
    """How many of an item are in stock."""
    return {"pear": "0", "apple": "3"}.get(item, "0")


@tool
def inventory(item: str) -> str:
    """The inventory database (down today)."""
    raise ConnectionError("inventory database did not answer")


def _checks(*items: str) -> list[AIMessage]:
    return [AIMessage(content="", tool_calls=[tool_call("check_stock", item=item)]) for item in items]


class DownModel(ScriptedChatModel):
    """A served model that times out on every call after its first ``works`` calls."""

    works: int = 0

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
        if self.works <= 0:
            raise TimeoutError("model server timed out")
        self.works -= 1
        return super()._generate(messages, *args, **kwargs)


def _no_delay(**kw: Any) -> dict[str, Any]:
    return {"max_retries": 1, "initial_delay": 0, "jitter": False, **kw}


STOPPED_RUNS = {
    # the model wants a third call; the limit ends the run with its own message
    "model call limit": (
        lambda: ScriptedChatModel(script=[*_checks("pear", "apple", "kiwi"), AIMessage(content="0 pears, 3 apples.")]),
        [check_stock],
        lambda: [ModelCallLimitMiddleware(run_limit=2, exit_behavior="end")],
        "Model call limits exceeded",
    ),
    # the model's second call is over the limit: the run ends after its reply, before the tool runs
    "tool call limit": (
        lambda: ScriptedChatModel(script=[*_checks("pear", "apple"), AIMessage(content="0 pears, 3 apples.")]),
        [check_stock],
        lambda: [ToolCallLimitMiddleware(run_limit=1, exit_behavior="end")],
        "Tool call limit reached",
    ),
    # one decision, then the model server goes down: the retry policy gives up and answers for it
    "model retry gives up after a call": (
        lambda: DownModel(script=_checks("pear"), works=1),
        [check_stock],
        lambda: [ModelRetryMiddleware(**_no_delay(on_failure="continue"))],
        "Model call failed after 2 attempts",
    ),
    "model retry gives up at once": (
        lambda: DownModel(script=[]),
        [check_stock],
        lambda: [ModelRetryMiddleware(**_no_delay(on_failure="continue"))],
        "Model call failed after 2 attempts",
    ),
}


@pytest.mark.parametrize("case", list(STOPPED_RUNS))
def test_a_run_a_middleware_ended_is_stopped_and_not_approved_as_completed(tmp_path: Path, case: str) -> None:
    """Before, each of these runs was stored ``completed`` with the middleware's message as its final answer, and the
    README's ``approve_if=lambda t: t.status == "completed"`` approved it: IL learned from a run that failed. The run
    is now ``stopped``, its ``error`` says why and quotes the message (still the final answer: what the user got)."""
    make_model, tools, middleware, message = STOPPED_RUNS[case]
    graph = create_agent(make_model(), tools, middleware=middleware())
    store = tmp_path / "s"
    agent = record_experience(graph, app="shop", store=store, approve_if=lambda t: t.status == "completed")
    trajectory = record_once(agent, store, TASK)
    assert trajectory.status == "stopped"
    assert trajectory.final_answer.startswith(message)
    assert "not the model" in trajectory.error and message in trajectory.error
    assert trajectory.approval.status == "pending"
    opened = LocalExperienceStore(store)
    try:
        assert opened.trajectories()["status"].to_list() == ["stopped"]
    finally:
        opened.close()
    shown = CliRunner().invoke(app, ["traces", "show", trajectory.id, "--store", str(store)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "status=stopped" in shown.output and "why: a middleware or graph node ended the run" in shown.output


def test_runs_the_model_ended_stay_completed(tmp_path: Path) -> None:
    """The model's own reply ends these: a tool that failed after ToolRetryMiddleware's retries (on_failure="continue"
    gives the model the failure, and the model answers), a retried model call that then worked, a limit never reached,
    and a reply an ``after_model`` middleware edited (still the model's answer)."""

    @after_model
    def sign(state: Any, runtime: Any) -> dict[str, Any] | None:
        last = state["messages"][-1]
        if last.tool_calls or last.content.endswith("-- the shop"):
            return None
        return {"messages": [AIMessage(content=f"{last.content} -- the shop", id=last.id)]}

    script = [
        AIMessage(content="", tool_calls=[tool_call("inventory", item="pear")]),
        *_checks("apple"),
        AIMessage(content="No stock data for pears; 3 apples."),
    ]

    class FlakyModel(ScriptedChatModel):
        failures: list[bool] = Field(default_factory=lambda: [False, True])

        def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> Any:
            if self.failures and self.failures.pop(0):
                raise TimeoutError("model server timed out")
            return super()._generate(messages, *args, **kwargs)

    middleware = [
        ToolRetryMiddleware(**_no_delay(on_failure="continue")),
        ModelRetryMiddleware(**_no_delay(on_failure="continue")),
        ModelCallLimitMiddleware(run_limit=5, exit_behavior="end"),
        sign,
    ]
    graph = create_agent(FlakyModel(script=script), [inventory, check_stock], middleware=middleware)
    trajectory = record_once(record_experience(graph, app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    assert (trajectory.status, trajectory.error) == ("completed", None)
    assert trajectory.final_answer == "No stock data for pears; 3 apples. -- the shop"
    assert trajectory.steps[0].observation.is_error and "failed after 2 attempts" in trajectory.steps[0].observation.content
    assert [s.action.kind for s in trajectory.steps] == ["tool_call", "tool_call", "answer"]


class Grade(BaseModel):
    """Grade the draft."""

    score: int


class Answer(BaseModel):
    """The answer to the user."""

    text: str


def _structured_graph(ending: str) -> Any:
    """A graph whose last node reads a model's structured reply itself (no review node after it, no tool runs its call):
    a ``with_structured_output`` grader after a drafting model, a router's forced ``bind_tools`` call read by its node,
    or a node that answers with the structured reply's text."""
    drafter = ScriptedChatModel(script=[AIMessage(content="Your order ships today.")])
    structured = ScriptedChatModel(
        model_name="grader",
        policy=lambda m, t: AIMessage(
            content="",
            tool_calls=[tool_call("Answer", text="It ships today.") if ending == "structured answer" else tool_call("Grade", score=4)],
        ),
    )

    class State(MessagesState):
        score: int

    def last(state: State) -> dict[str, Any]:
        if ending == "router after a draft":
            reply = structured.bind_tools([Grade], tool_choice="Grade").invoke(state["messages"])
            return {"score": reply.tool_calls[0]["args"]["score"]}
        if ending == "structured answer":
            return {"messages": [AIMessage(content=structured.with_structured_output(Answer).invoke(state["messages"]).text)]}
        return {"score": structured.with_structured_output(Grade).invoke(state["messages"]).score}

    builder = StateGraph(State)
    if ending == "structured answer":
        builder.add_edge(START, "last")
    else:
        builder.add_node("draft", lambda state: {"messages": [drafter.invoke(state["messages"])]})
        builder.add_edge(START, "draft")
        builder.add_edge("draft", "last")
    builder.add_node("last", last)
    builder.add_edge("last", END)
    return builder.compile()


STRUCTURED_ENDINGS = {
    "grader after a draft": "Your order ships today.",
    "router after a draft": "Your order ships today.",
    "structured answer": "It ships today.",
}


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("ending", list(STRUCTURED_ENDINGS))
def test_a_run_ending_on_a_structured_reply_is_completed_scripted_model(
    ending: str, offload: str, tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    """Before, these runs were stored ``stopped`` ('a middleware or graph node ended the run'): the last model call that
    acted made a tool call (the structured reply), so the last message was taken for one a node wrote in its place. The
    node read that call itself, and the run ended normally: ``completed``, from capture and from its spans read back."""
    store = tmp_path / "s"
    own = {"tracer_provider": tracer_provider} if offload == "thread" else {"offload": offload}  # process: its own spans
    agent = record_experience(_structured_graph(ending), app="shop", store=store, **own)
    trajectory = record_once(agent, store, TASK)
    assert (trajectory.status, trajectory.error, trajectory.final_answer) == ("completed", None, STRUCTURED_ENDINGS[ending])
    if offload == "process":
        return
    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    assert assemble(spans, AssemblyOptions(app="shop")).status == "completed"


class Verdict(BaseModel):
    """Judge the agent's run."""

    ok: bool


class NextAction(BaseModel):
    """The next action to take."""

    tool: str
    item: str


def _judged_agent(model: Any) -> Any:
    """``create_agent`` with a call limit (``exit_behavior="end"``) and an ``after_agent`` middleware that grades every
    run with ``with_structured_output``: the judge's call is the run's last model call, whoever wrote its last message."""
    judge = ScriptedChatModel(model_name="judge", policy=lambda m, t: AIMessage(content="", tool_calls=[tool_call("Verdict", ok=False)]))

    class Judge(AgentMiddleware):
        def after_agent(self, state: Any, runtime: Any) -> None:
            judge.with_structured_output(Verdict).invoke(state["messages"])

    return create_agent(model, [check_stock], middleware=[ModelCallLimitMiddleware(run_limit=2, exit_behavior="end"), Judge()])


def _planner_loop() -> Any:
    """A custom loop whose planner picks each action with ``with_structured_output``; a guard node ends it after two
    steps with its own message."""
    planner = ScriptedChatModel(
        model_name="planner",
        policy=lambda m, t: AIMessage(content="", tool_calls=[tool_call("NextAction", tool="check_stock", item="pear")]),
    )

    class State(MessagesState):
        steps: int

    def plan(state: State) -> dict[str, Any]:
        action = planner.with_structured_output(NextAction).invoke(state["messages"])
        return {"messages": [AIMessage(content=f"calling {action.tool}({action.item})")], "steps": state.get("steps", 0) + 1}

    builder = StateGraph(State)
    builder.add_node("plan", plan)
    builder.add_node("guard", lambda state: {"messages": [AIMessage(content="Step limit reached, giving up.")]})
    builder.add_edge(START, "plan")
    builder.add_conditional_edges("plan", lambda state: "guard" if state["steps"] >= 2 else "plan")
    builder.add_edge("guard", END)
    return builder.compile()


def completed(trajectory: Any) -> bool:
    """The README's approval rule (at module level: the capture process unpickles it)."""
    return trajectory.status == "completed"


STRUCTURED_LAST_STOPPED = {
    "judge after a call limit": (
        lambda: _judged_agent(ScriptedChatModel(policy=lambda m, t: _checks("pear")[0])),
        "Model call limits exceeded",
    ),
    "planner loop a guard node ended": (_planner_loop, "Step limit reached, giving up."),
}


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("case", list(STRUCTURED_LAST_STOPPED))
def test_a_run_cut_off_before_a_structured_call_stays_stopped(
    case: str, offload: str, tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    """A structured-output call that came last (a judge grading the run, a planner) does not make a run that a call limit
    or a guard node ended ``completed``: its last message is neither that call's answer nor any model's reply. These
    were stored ``completed`` (error None) when the last structured call alone was taken as the run's ending."""
    build, message = STRUCTURED_LAST_STOPPED[case]
    store = tmp_path / "s"
    own = {"tracer_provider": tracer_provider} if offload == "thread" else {"offload": offload}
    agent = record_experience(build(), app="shop", store=store, approve_if=completed, **own)
    trajectory = record_once(agent, store, TASK)
    assert trajectory.status == "stopped" and message in trajectory.error, (trajectory.status, trajectory.error)
    assert trajectory.final_answer.startswith(message)
    assert trajectory.approval.status == "pending"
    if offload == "process":
        return
    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    assert assemble(spans, AssemblyOptions(app="shop")).status == "stopped"


def test_a_judged_run_the_model_answered_stays_completed(tmp_path: Path) -> None:
    """The same judged agent, whose model answers within the limit: the judge's structured call came last, and the
    last message is the model's reply, so the run ended normally."""
    model = ScriptedChatModel(script=[*_checks("pear"), AIMessage(content="No pears today.")])
    trajectory = record_once(record_experience(_judged_agent(model), app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    assert (trajectory.status, trajectory.error, trajectory.final_answer) == ("completed", None, "No pears today.")


def test_a_structured_answer_written_as_json_is_completed(tmp_path: Path) -> None:
    """A node that writes the structured reply out as JSON (``model_dump_json``) answered with the call's arguments."""
    model = ScriptedChatModel(policy=lambda m, t: AIMessage(content="", tool_calls=[tool_call("Answer", text="It ships today.")]))

    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(content=model.with_structured_output(Answer).invoke(state["messages"]).model_dump_json())]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    trajectory = record_once(record_experience(builder.compile(), app="shop", store=tmp_path / "s"), tmp_path / "s", TASK)
    assert (trajectory.status, trajectory.error) == ("completed", None)


class Finding(BaseModel):
    title: str
    severity: str


class Report(BaseModel):
    """A review of the user's contract."""

    summary: str
    findings: list[Finding]


class Quote(BaseModel):
    """A price quote."""

    price: float
    currency: str


class Feedback(BaseModel):
    comment: str
    suggestions: list[str]


class NestedGrade(BaseModel):
    """Grade the draft."""

    score: int
    feedback: Feedback


def _formatting_node(schema: type[BaseModel], args: dict[str, Any], write: Any, *, draft: bool = False) -> Any:
    """A graph whose last node makes a ``with_structured_output`` call and writes a message built from the reply (not
    the reply's text nor one of its strings); with ``draft``, a drafting model's reply comes first (a grader graph)."""
    model = ScriptedChatModel(
        model_name="analyst", policy=lambda m, t: AIMessage(content="", tool_calls=[tool_call(schema.__name__, **args)])
    )
    drafter = ScriptedChatModel(script=[AIMessage(content="Your order ships today.")])

    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(content=write(model.with_structured_output(schema).invoke(state["messages"])))]}

    builder = StateGraph(MessagesState)
    builder.add_node("answer", answer)
    if draft:
        builder.add_node("draft", lambda state: {"messages": [drafter.invoke(state["messages"])]})
        builder.add_edge(START, "draft")
        builder.add_edge("draft", "answer")
    else:
        builder.add_edge(START, "answer")
    builder.add_edge("answer", END)
    return builder.compile()


FORMATTED_ENDINGS = {
    "summary of a nested report": (
        lambda: _formatting_node(
            Report,
            {"summary": "Two clauses need attention.", "findings": [{"title": "Auto-renewal", "severity": "high"}]},
            lambda r: r.summary + "\n" + "\n".join(f"- {f.title} ({f.severity})" for f in r.findings),
        ),
        "Two clauses need attention.\n- Auto-renewal (high)",
    ),
    "price from a float field": (
        lambda: _formatting_node(Quote, {"price": 42.5, "currency": "EUR"}, lambda q: f"{q.price:.2f} {q.currency}"),
        "42.50 EUR",
    ),
    "grader posting its verdict after a draft": (
        lambda: _formatting_node(
            NestedGrade,
            {"score": 8, "feedback": {"comment": "Clear and short.", "suggestions": ["Add the tracking link."]}},
            lambda g: f"Score {g.score}/10. {g.feedback.comment}",
            draft=True,
        ),
        "Score 8/10. Clear and short.",
    ),
}


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("case", list(FORMATTED_ENDINGS))
def test_a_structured_node_writing_a_message_built_from_its_reply_is_completed(
    case: str, offload: str, tmp_path: Path, tracer_provider: Any, span_exporter: Any
) -> None:
    """The node that made the run's last (structured-output) call wrote its last message, built from the reply: the run
    ended normally. These were stored ``stopped`` ('a middleware or graph node ended the run') when only the reply's
    own text or strings counted as its answer; capture now says which node run wrote the last reply."""
    build, answer = FORMATTED_ENDINGS[case]
    store = tmp_path / "s"
    own = {"tracer_provider": tracer_provider} if offload == "thread" else {"offload": offload}
    agent = record_experience(build(), app="shop", store=store, approve_if=completed, **own)
    trajectory = record_once(agent, store, TASK)
    assert (trajectory.status, trajectory.error, trajectory.final_answer) == ("completed", None, answer)
    assert trajectory.approval.status == "approved"
    if offload == "process":
        return
    spans = [from_readable_span(s) for s in span_exporter.get_finished_spans()]
    assert assemble(spans, AssemblyOptions(app="shop")).status == "completed"


class BranchState(TypedDict):
    messages: Annotated[list, operator.add]


def test_a_run_that_raised_after_one_parallel_branch_replied_has_no_final_answer(store_path: Path) -> None:
    """Two Send branches: one's model replies, the other raises a moment later. The caller got the exception, not an
    answer. Before: the run was stored as an error with the replying branch's text as its final answer."""
    import time

    from langgraph.types import Send

    model = ScriptedChatModel(script=[AIMessage(content="Branch A found 3 pears.")])

    def replies(state: BranchState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    def fails(state: BranchState) -> dict[str, Any]:
        time.sleep(0.2)  # after the other branch's reply
        raise ValueError("branch B failed")

    graph = StateGraph(BranchState)
    graph.add_node("replies", replies)
    graph.add_node("fails", fails)
    graph.add_conditional_edges(START, lambda state: [Send("replies", state), Send("fails", state)], ["replies", "fails"])
    graph.add_edge("replies", END)
    graph.add_edge("fails", END)
    agent = record_experience(graph.compile(), app="shop", store=store_path)
    with pytest.raises(ValueError, match="branch B failed"):
        agent.invoke({"messages": [("user", "How many pears?")]})
    agent.flush()
    agent.recorder.close()
    [trajectory] = LocalExperienceStore(store_path).iter_trajectories()
    assert (trajectory.status, trajectory.error, trajectory.final_answer) == ("error", "ValueError: branch B failed", None)
    assert [s.action.content for s in trajectory.steps] == ["Branch A found 3 pears."], "the reply is still its branch's step"
