"""A run's ``final_answer`` is what the graph returned, also where its output holds no conversation: a Functional API
``@entrypoint``'s string, a state's field named as the answer (a map-reduce's ``answer`` that a reduce node wrote). An
output that says no answer gives none, never the reply of whichever parallel ``Send`` branch ended last (was: the last
model reply's text, in span order). Real LangGraph graphs, the real OTel SDK, the real local store; each in thread mode
and with capture in a child process."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.func import entrypoint
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Send
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.testing import ScriptedChatModel
from tests.capture.test_graph_input_tasks import recorded as _recorded
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])  # process: make test-heavy
pytestmark = pytest.mark.usefixtures("no_child_left")

CITIES = ["Paris", "Rome", "Oslo"]


def _notes_model() -> ScriptedChatModel:
    return ScriptedChatModel(policy=lambda messages, tools: AIMessage(content=f"notes on {messages[-1].content}"))


def _map_reduce(reduce_writes: str = "answer") -> Any:
    """``Send`` fans out to a branch per city, each calling the model; ``reduce`` joins their notes into
    ``reduce_writes``."""
    model = _notes_model()

    class State(TypedDict):
        question: str
        results: Annotated[list, operator.add]
        answer: str
        digest: str

    def research(state: dict[str, Any]) -> dict[str, Any]:
        return {"results": [model.invoke([HumanMessage(state["topic"])]).content]}

    def reduce(state: dict[str, Any]) -> dict[str, Any]:
        return {reduce_writes: " | ".join(sorted(state["results"]))}

    builder = StateGraph(State)
    builder.add_node("research", research)
    builder.add_node("reduce", reduce)
    builder.add_conditional_edges(START, lambda state: [Send("research", {"topic": c}) for c in CITIES], ["research"])
    builder.add_edge("research", "reduce")
    builder.add_edge("reduce", END)
    return builder.compile()


@OFFLOADS
def test_a_map_reduce_answer_is_the_field_its_reduce_node_wrote(offload, store_path):
    agent = record_experience(_map_reduce(), app="research", store=store_path, offload=offload)
    out = agent.invoke({"question": "compare cities", "results": []})
    [t] = _recorded(agent, store_path)
    assert out["answer"] == "notes on Oslo | notes on Paris | notes on Rome"
    assert (t.status, t.task, t.final_answer) == ("completed", "compare cities", out["answer"])
    assert sorted(s.action.content for s in t.steps) == [f"notes on {c}" for c in sorted(CITIES)]  # every branch's decision


@OFFLOADS
def test_an_output_that_names_no_answer_gives_none_not_a_branch_reply(offload, store_path):
    """The reduce node writes ``digest``, no name an answer has: the run has no answer rather than one branch's."""
    agent = record_experience(_map_reduce("digest"), app="research", store=store_path, offload=offload)
    agent.invoke({"question": "compare cities", "results": []})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", None)
    assert len([s for s in t.steps if s.action.kind == "answer"]) == 3


@OFFLOADS
def test_an_entrypoint_answer_is_the_string_it_returned(offload, store_path):
    model = _notes_model()

    @entrypoint()
    def summarize(question: str) -> str:
        reply = model.invoke([HumanMessage(question)])
        return f"Summary: {reply.content.upper()}"

    agent = record_experience(summarize, app="summaries", store=store_path, offload=offload)
    out = agent.invoke("what about pears?")
    [t] = _recorded(agent, store_path)
    assert out == "Summary: NOTES ON WHAT ABOUT PEARS?"
    assert (t.status, t.task, t.final_answer) == ("completed", "what about pears?", out)
    assert [s.action.content for s in t.steps] == ["notes on what about pears?"]  # the model's decision as it made it


@OFFLOADS
def test_an_entrypoint_returning_a_dict_gives_its_answer_field(offload, store_path):
    model = _notes_model()

    @entrypoint()
    def report(question: str) -> dict[str, Any]:
        return {"sources": 2, "final_answer": model.invoke([HumanMessage(question)]).content + "!"}

    agent = record_experience(report, app="reports", store=store_path, offload=offload)
    agent.invoke("how are pears grown?")
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", "notes on how are pears grown?!")


class _Score(BaseModel):
    score: int
    why: str


def test_output_text_reads_the_answer_as_input_text_reads_the_task():
    from ee_middleware.capture.payloads import output_text

    assert output_text("It rains.") == "It rains."
    assert output_text({"question": "Weather?", "answer": "It rains."}) == "It rains."
    assert output_text({"final_output": "short", "answer": "long"}) == "long"  # the most telling name first
    assert output_text({"question": "Weather?", "answer": "", "final_answer": "It rains."}) == "It rains."  # an empty one says none
    assert output_text({"answer": AIMessage(content="It rains.")}) == "It rains."
    assert output_text({"final_output": _Score(score=8, why="clear")}) == '{"score":8,"why":"clear"}'
    # names that often hold something beside the answer (an SQL agent's rows in result, a digest in summary) say none
    for output in ({"result": "[(42,)]"}, {"output": "x"}, {"response": "y"}, {"summary": "z"}, {"report": "r"}):
        assert output_text(output) is None
    assert output_text({"answer": {"city": "Oslo", "rain": True}}) == '{"city":"Oslo","rain":true}'
    # no field named as the answer: none (its only text field may be the question, a note or a parameter)
    for output in ({"question": "Weather?"}, {"notes": ["a", "b"]}, {"city": "Oslo", "digest": "rain"}, "  ", None, 42, {"answer": None}):
        assert output_text(output) is None


@OFFLOADS
def test_a_conversation_holding_only_the_question_gives_the_answer_field(offload, store_path):
    """A graph whose state has ``messages`` (the user's question) and an ``answer`` its node writes from the reply it
    post-processed: the conversation says no answer, the field does."""
    model = _notes_model()

    class State(MessagesState):
        answer: str

    def answer(state: dict[str, Any]) -> dict[str, Any]:
        return {"answer": model.invoke(state["messages"]).content.capitalize() + "."}

    builder = StateGraph(State)
    builder.add_node("answer", answer)
    builder.add_edge(START, "answer")
    agent = record_experience(builder.compile(), app="notes", store=store_path, offload=offload)
    out = agent.invoke({"messages": [("user", "pears")]})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.task, t.final_answer) == ("completed", "pears", out["answer"]) and out["answer"] == "Notes on pears."


@OFFLOADS
def test_a_prompt_chain_answers_with_its_last_nodes_reply(offload, store_path):
    """After review R4 #1 of b4347b8: each node prompts the model afresh with the last node's draft (LangGraph's
    prompt-chaining workflow), in fields no answer name says: the last reply is the answer, as before b4347b8 (the
    replies of other nodes are drafts, not parallel answers)."""
    model = ScriptedChatModel(policy=lambda messages, tools: AIMessage(content="v(" + messages[-1].content[-30:] + ")"))

    class Chain(TypedDict, total=False):
        topic: str
        joke: str
        improved_joke: str

    def write(state: Chain) -> Chain:
        return {"joke": model.invoke([HumanMessage(f"Write a joke about {state['topic']}")]).content}

    def improve(state: Chain) -> Chain:  # (the draft reworded: not in this prompt verbatim)
        return {"improved_joke": model.invoke([HumanMessage(f"Make it funnier: {state['joke'].upper()}")]).content}

    graph = StateGraph(Chain)
    graph.add_node("write", write)
    graph.add_node("improve", improve)
    graph.add_edge(START, "write")
    graph.add_edge("write", "improve")
    graph.add_edge("improve", END)
    agent = record_experience(graph.compile(), app="jokes", store=store_path, offload=offload)
    out = agent.invoke({"topic": "cats"})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", out["improved_joke"])


@OFFLOADS
def test_an_sql_agents_rows_in_result_are_not_its_answer(offload, store_path):
    """After review R4 #2 of b4347b8: ``result`` held the query's raw rows beside the model's ``generation``; the rows
    were stored as the answer (2.47 MB for 20,000 rows). The model's last reply is the answer again."""
    model = ScriptedChatModel(
        policy=lambda messages, tools: AIMessage(
            content="SELECT count(*) FROM users" if "SQL" in messages[-1].content else "There are 42 users."
        )
    )

    class Sql(TypedDict, total=False):
        question: str
        query: str
        result: str
        generation: str

    def write_query(state: Sql) -> Sql:
        return {"query": model.invoke([HumanMessage(f"SQL for: {state['question']}")]).content}

    def run_query(state: Sql) -> Sql:
        return {"result": str([(42,)] * 50)}

    def answer(state: Sql) -> Sql:
        return {"generation": model.invoke([HumanMessage(f"Answer {state['question']} from {state['result'][:20]}")]).content}

    graph = StateGraph(Sql)
    for name, node in (("write_query", write_query), ("run_query", run_query), ("answer", answer)):
        graph.add_node(name, node)
    graph.add_edge(START, "write_query")
    graph.add_edge("write_query", "run_query")
    graph.add_edge("run_query", "answer")
    graph.add_edge("answer", END)
    agent = record_experience(graph.compile(), app="sql", store=store_path, offload=offload)
    agent.invoke({"question": "How many users?"})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", "There are 42 users.")


@OFFLOADS
def test_a_node_run_again_later_answers_with_its_last_reply(offload, store_path):
    """After review R5 #1 of 32c6bf9: a node re-prompted afresh after a grader rejected its draft (Self-RAG, LangGraph's
    evaluator-optimizer) ran in another task of the same node, as parallel Send branches do, and the run stored no
    answer; it ran in a later graph step, which parallel branches do not."""
    drafts = iter(["draft 1: Lyon.", "draft 2: Paris."])
    model = ScriptedChatModel(policy=lambda messages, tools: AIMessage(content=next(drafts)))

    class Rag(TypedDict, total=False):
        question: str
        generation: str
        tries: int

    def generate(state: Rag) -> Rag:
        reply = model.invoke([HumanMessage(f"Context: France's capital is Paris. Question: {state['question']}")])
        return {"generation": reply.content, "tries": state.get("tries", 0) + 1}

    graph = StateGraph(Rag)
    graph.add_node("generate", generate)
    graph.add_edge(START, "generate")
    graph.add_conditional_edges("generate", lambda state: "generate" if state["tries"] < 2 else END, ["generate", END])
    agent = record_experience(graph.compile(), app="rag", store=store_path, offload=offload)
    out = agent.invoke({"question": "What is the capital of France?"})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", out["generation"]) == ("completed", "draft 2: Paris.")


@OFFLOADS
def test_a_node_delegating_to_an_agent_run_again_later_answers_with_its_last_reply(offload, store_path):
    """After review R6 #1 of 6216cf7: the generator of a retry loop invokes an agent with a fresh prompt; its calls run
    inside the agent's own graph, whose steps cannot tell a branch beside another from a run later, and were taken as
    parallel branches: no answer. Calls inside subgraphs are never taken as parallel now (the last reply answers)."""
    drafts = iter(["draft 1: Lyon.", "draft 2: Paris."])
    writer = create_agent(ScriptedChatModel(policy=lambda messages, tools: AIMessage(content=next(drafts))), tools=[])

    class Rag(TypedDict, total=False):
        question: str
        generation: str
        tries: int

    def generate(state: Rag) -> Rag:
        reply = writer.invoke({"messages": [HumanMessage(f"Context: France's capital is Paris. Question: {state['question']}")]})
        return {"generation": reply["messages"][-1].content, "tries": state.get("tries", 0) + 1}

    graph = StateGraph(Rag)
    graph.add_node("generate", generate)
    graph.add_edge(START, "generate")
    graph.add_conditional_edges("generate", lambda state: "generate" if state["tries"] < 2 else END, ["generate", END])
    agent = record_experience(graph.compile(), app="rag", store=store_path, offload=offload)
    agent.invoke({"question": "What is the capital of France?"})
    [t] = _recorded(agent, store_path)
    assert (t.status, t.final_answer) == ("completed", "draft 2: Paris.")
