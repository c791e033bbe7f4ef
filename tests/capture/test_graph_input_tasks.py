"""The task of each run on a thread is the user message of its turn, whatever the graph's input is: a dict, an instance
of the graph's pydantic or dataclass state schema, or what a Functional API ``@entrypoint`` takes (a string, a list of
messages). Before, only a dict was read: for the others every run of a checkpointed thread got the thread's first
question as its task (the first user message of the history its model saw). Real graphs, real local store."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, AnyMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.func import entrypoint, task
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from pydantic import BaseModel

from ee_middleware import record_experience
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("no_child_left")
THREAD = {"configurable": {"thread_id": "t-1"}}
QUESTIONS = ["Where is order A-1?", "And order B-2?"]


class PydanticState(BaseModel):
    messages: Annotated[list[AnyMessage], add_messages]


@dataclasses.dataclass
class DataclassState:
    messages: Annotated[list[AnyMessage], add_messages]


def chain_graph(state: type, *nodes: tuple[str, Any], **compile_options: Any) -> Any:
    """A graph of ``state`` running ``nodes`` (name, function) one after the other from START to END, compiled with an
    ``InMemorySaver`` and ``compile_options`` (``interrupt_before``); ``input_schema`` goes to the builder."""
    input_schema = compile_options.pop("input_schema", None)
    builder = StateGraph(state, input_schema=input_schema) if input_schema is not None else StateGraph(state)
    previous = START
    for name, node in nodes:
        builder.add_node(name, node)
        builder.add_edge(previous, name)
        previous = name
    builder.add_edge(previous, END)
    return builder.compile(checkpointer=InMemorySaver(), **compile_options)


def _state_graph(schema: type) -> Any:
    model = ScriptedChatModel(script=[AIMessage(content="It ships today.")])
    return chain_graph(schema, ("agent", lambda state: {"messages": [model.invoke(state.messages)]}))


def recorded(agent: Any, store_path: Any) -> list[Trajectory]:
    """Wait until ``agent``'s recorder has written its runs, close it, and return the store's trajectories, oldest first."""
    assert agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    try:
        return sorted(store.iter_trajectories(), key=lambda t: t.started_at)
    finally:
        store.close()


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("schema", [PydanticState, DataclassState])
def test_a_thread_invoked_with_state_instances_has_each_turns_question_as_its_task(schema: type, offload: str, store_path: Any) -> None:
    agent = record_experience(_state_graph(schema), app="shop", store=store_path, offload=offload)
    for question in QUESTIONS:
        agent.invoke(schema(messages=[HumanMessage(question)]), THREAD)
    runs = recorded(agent, store_path)
    assert [t.task for t in runs] == QUESTIONS
    assert [t.status for t in runs] == ["completed", "completed"]
    # the second turn's model saw the whole thread: its state still starts with the first question
    assert runs[1].steps[0].state[0] == {"role": "user", "content": QUESTIONS[0]}


def test_a_thread_invoked_with_a_dict_is_unchanged(store_path: Any) -> None:
    agent = record_experience(_state_graph(PydanticState), app="shop", store=store_path)
    for question in QUESTIONS:
        agent.invoke({"messages": [HumanMessage(question)]}, THREAD)
    assert [t.task for t in recorded(agent, store_path)] == QUESTIONS


def _entrypoint(takes: str) -> Any:
    model = ScriptedChatModel(script=[AIMessage(content="It ships today.")])

    @task
    def call_model(messages: list[BaseMessage]) -> BaseMessage:
        return model.invoke(messages)

    @entrypoint(checkpointer=InMemorySaver())
    def chat(given: Any, previous: list[BaseMessage] | None = None) -> Any:
        new = [HumanMessage(given)] if takes == "string" else given
        messages = add_messages(previous or [], new)
        reply = call_model(messages).result()
        return entrypoint.final(value=reply.content, save=add_messages(messages, [reply]))

    return chat


@pytest.mark.parametrize("takes", ["string", "messages"])
def test_a_functional_api_thread_has_each_turns_question_as_its_task(takes: str, store_path: Any) -> None:
    agent = record_experience(_entrypoint(takes), app="shop", store=store_path)
    for question in QUESTIONS:
        agent.invoke(question if takes == "string" else [HumanMessage(question)], THREAD)
    runs = recorded(agent, store_path)
    assert [t.task for t in runs] == QUESTIONS
    assert [t.final_answer for t in runs] == ["It ships today.", "It ships today."]
    assert [len(t.steps[0].state) for t in runs] == [1, 3]  # the model saw the thread's history on the second turn


THREE_QUESTIONS = ["Where is order A-1?", "And order B-2?", "Can I return C-3?"]


class Ask(BaseModel):
    question: str


@dataclasses.dataclass
class AskDataclass:
    question: str


def _question_graph(field: str, *, input_schema: type | None = None) -> Any:
    """A graph whose input has no messages, only the question (under ``field``) and maybe other fields: its node turns
    the question into the thread's next user message, so the model sees the whole thread's history on later turns."""
    model = ScriptedChatModel(script=[AIMessage(content="It ships today.")])

    class State(TypedDict, total=False):
        question: str
        query: str
        ticket: str
        customer: str
        user_id: str
        max_results: int
        messages: Annotated[list[AnyMessage], add_messages]

    def answer(state: State) -> dict[str, Any]:
        asked = HumanMessage(state[field])  # type: ignore[literal-required]
        return {"messages": [asked, model.invoke([*state.get("messages", []), asked])]}

    return chain_graph(State, ("answer", answer), input_schema=input_schema)


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_thread_of_a_graph_given_only_a_question_has_each_turns_question_as_its_task(offload: str, store_path: Any) -> None:
    """Before, the input ``{"question": q}`` gave no task, so it was read from the first model call's input: on a
    thread that starts with the thread's first question, which became the task of every later run."""
    agent = record_experience(_question_graph("question"), app="shop", store=store_path, offload=offload)
    for question in THREE_QUESTIONS:
        agent.invoke({"question": question}, THREAD)
    runs = recorded(agent, store_path)
    assert [t.task for t in runs] == THREE_QUESTIONS
    assert [len(t.steps[0].state) for t in runs] == [1, 3, 5]  # the model saw the thread's history


@pytest.mark.parametrize(
    ("field", "given"),
    [
        ("query", lambda q: {"query": q, "max_results": 3}),  # the only text field, named as a question
        ("ticket", lambda q: {"ticket": q}),  # the only field, not named as one but reading as a question
        ("question", lambda q: {"question": q, "user_id": "u-7"}),  # of several text fields, the one named as a question
        ("question", lambda q: Ask(question=q)),  # an input schema's pydantic instance
        ("question", lambda q: AskDataclass(question=q)),  # or dataclass instance
        ("ticket", lambda q: {"ticket": q, "customer": "Ann Lee"}),  # none says which: the turn's user message
    ],
    ids=["only-text-field", "lone-field", "named-field", "pydantic-input", "dataclass-input", "ambiguous-fields"],
)
def test_a_thread_of_a_graph_given_other_fields_has_each_turns_question_as_its_task(field: str, given: Any, store_path: Any) -> None:
    schema = type(given("?")) if not isinstance(given("?"), dict) else None
    agent = record_experience(_question_graph(field, input_schema=schema), app="shop", store=store_path)
    for question in THREE_QUESTIONS:
        agent.invoke(given(question), THREAD)
    assert [t.task for t in recorded(agent, store_path)] == THREE_QUESTIONS


class Ticket(TypedDict, total=False):
    ticket_id: str
    ticketId: str
    url: str
    file_path: str
    repo: str
    customer_name: str
    messages: Annotated[list[AnyMessage], add_messages]


def _looked_up_graph(field: str) -> Any:
    """A graph given only an identifier (under ``field``): its node asks the model the question the identifier names."""
    model = ScriptedChatModel(script=[AIMessage(content="Refund issued.")])

    def answer(state: Ticket) -> dict[str, Any]:
        asked = HumanMessage(f"Customer writes about {state[field]}: my blender arrived broken, can I get a refund?")  # type: ignore[literal-required]
        return {"messages": [asked, model.invoke([asked])]}

    return chain_graph(Ticket, ("answer", answer)).copy(update={"checkpointer": None})


@pytest.mark.parametrize(
    "given",
    [
        {"ticket_id": "T-1042"},
        {"ticketId": "T-1042"},
        {"url": "https://shop.example/orders/1042"},
        {"file_path": "/data/tickets/1042 broken blender.txt"},
        {"repo": "acme/shop"},
        {"customer_name": "Ann Lee"},
    ],
    ids=lambda given: next(iter(given)),
)
def test_an_input_whose_only_field_is_an_identifier_has_the_models_question_as_its_task(given: dict[str, str], store_path: Any) -> None:
    """Before, the only text field was the task whatever it held: ``{"ticket_id": "T-1042"}`` recorded the task
    "T-1042". An identifier, a URL, a path or a name is no question: the task is the question the model was asked."""
    [(field, value)] = given.items()
    agent = record_experience(_looked_up_graph(field), app="shop", store=store_path)
    agent.invoke(given)
    [run] = recorded(agent, store_path)
    assert run.task == f"Customer writes about {value}: my blender arrived broken, can I get a refund?"


def test_a_model_shown_a_worked_example_before_the_question_has_the_question_as_its_task(store_path: Any) -> None:
    """A graph given only an identifier whose node shows the model an example exchange (a user message and its reply)
    before the question: the example is no turn of this run, the question after its reply is the task (was: the
    example's question, the first user message the model was given)."""
    model = ScriptedChatModel(script=[AIMessage(content="Refund issued.")])

    def answer(state: Ticket) -> dict[str, Any]:
        asked = HumanMessage(f"Customer writes about {state['ticket_id']}: my blender arrived broken, can I get a refund?")
        example = [HumanMessage("Customer writes about T-1: where is my parcel?"), AIMessage("It ships today.")]
        return {"messages": [asked, model.invoke([*example, asked])]}

    agent = record_experience(chain_graph(Ticket, ("answer", answer)).copy(update={"checkpointer": None}), app="shop", store=store_path)
    agent.invoke({"ticket_id": "T-1042"})
    [run] = recorded(agent, store_path)
    assert run.task == "Customer writes about T-1042: my blender arrived broken, can I get a refund?"
    assert run.steps[0].state[0]["content"] == "Customer writes about T-1: where is my parcel?"


def _question_with_context_graph(*, checkpointer: bool) -> Any:
    """A graph given ``{"ticket": q, "customer": name}`` (no field named as the question) whose node sends the question,
    then a message of context about the customer, as the turn's user messages."""
    model = ScriptedChatModel(script=[AIMessage(content="Refund approved.")])

    class State(TypedDict, total=False):
        ticket: str
        customer: str
        messages: Annotated[list[AnyMessage], add_messages]

    def answer(state: State) -> dict[str, Any]:
        asked = [HumanMessage(state["ticket"]), HumanMessage(f"Customer record: {state['customer']}, gold tier, 3 orders")]
        return {"messages": [*asked, model.invoke([*state.get("messages", []), *asked])]}

    graph = chain_graph(State, ("answer", answer))
    return graph if checkpointer else graph.copy(update={"checkpointer": None})


@pytest.mark.parametrize("offload", ["thread", "process"])
@pytest.mark.parametrize("on_thread", [True, False], ids=["thread", "no-thread"])
def test_a_turn_that_sends_context_after_its_question_has_the_question_as_its_task(on_thread: bool, offload: str, store_path: Any) -> None:
    """Before, a run on a thread took the last user message of its model's first input: the context message
    ('Customer record: ...'), where the same run without a thread took the question."""
    agent = record_experience(_question_with_context_graph(checkpointer=on_thread), app="shop", store=store_path, offload=offload)
    for question in THREE_QUESTIONS:
        agent.invoke({"ticket": question, "customer": "Ann Lee"}, THREAD if on_thread else None)
    runs = recorded(agent, store_path)
    assert [t.task for t in runs] == THREE_QUESTIONS
    if on_thread:
        assert [len(t.steps[0].state) for t in runs] == [2, 5, 8]  # the model saw the thread's history


def _history_graph(*, checkpointer: bool) -> Any:
    """LangChain's AgentExecutor input shape: ``{"input": q, "chat_history": [...]}``, the history sent by the caller."""
    model = ScriptedChatModel(script=[AIMessage(content="Sure.")])

    class State(TypedDict, total=False):
        input: str
        chat_history: list[AnyMessage]
        output: str

    def answer(state: State) -> dict[str, Any]:
        return {"output": model.invoke([*state.get("chat_history", []), HumanMessage(state["input"])]).content}

    graph = chain_graph(State, ("answer", answer))
    return graph if checkpointer else graph.copy(update={"checkpointer": None})


@pytest.mark.parametrize("on_thread", [True, False], ids=["thread", "no-thread"])
def test_an_input_with_a_chat_history_has_its_question_as_its_task(on_thread: bool, store_path: Any) -> None:
    """Before, the history's first user message was the task of every turn ('Where is order A-1?' three times): the
    history was read as the run's input messages, and the question next to it ignored."""
    agent = record_experience(_history_graph(checkpointer=on_thread), app="shop", store=store_path)
    history: list[BaseMessage] = []
    for question in THREE_QUESTIONS:
        agent.invoke({"input": question, "chat_history": history}, THREAD if on_thread else None)
        history = [*history, HumanMessage(question), AIMessage("Sure.")]
    runs = recorded(agent, store_path)
    assert [t.task for t in runs] == THREE_QUESTIONS
    assert [len(t.steps[0].state) for t in runs] == [1, 3, 5]


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_an_app_that_sends_the_whole_conversation_has_each_turns_question_as_its_task(offload: str, store_path: Any) -> None:
    """A stateless app that sends the conversation so far with each turn (no checkpointer): the earlier turns are
    history given in the input, the turn's question the user message after them (was: the first question every turn)."""
    model = ScriptedChatModel(script=[AIMessage(content="Sure.")])
    graph = chain_graph(PydanticState, ("agent", lambda state: {"messages": [model.invoke(state.messages)]}))
    agent = record_experience(graph.copy(update={"checkpointer": None}), app="shop", store=store_path, offload=offload)
    history: list[BaseMessage] = []
    for question in THREE_QUESTIONS:
        history = [*history, HumanMessage(question)]
        agent.invoke({"messages": history})
        history = [*history, AIMessage("Sure.")]
    runs = recorded(agent, store_path)
    assert [t.task for t in runs] == THREE_QUESTIONS
    assert [len(t.steps[0].state) for t in runs] == [1, 3, 5]


@pytest.mark.parametrize("offload", ["thread", "process"])
def test_a_recorded_agent_run_as_a_node_of_a_checkpointed_graph_has_each_turns_question_as_its_task(offload: str, tmp_path: Any) -> None:
    """The node is given the graph's state, the thread's earlier turns included: the inner agent's second run took the
    thread's first question as its task while its steps answered the second (the outer run's task was right)."""
    from langchain.agents import create_agent
    from langgraph.graph import MessagesState

    model = ScriptedChatModel(script=[AIMessage(content="Sure.")])
    inner = record_experience(create_agent(model, []), app="inner", store=tmp_path / "inner", offload=offload)
    outer = record_experience(chain_graph(MessagesState, ("agent", inner)), app="outer", store=tmp_path / "outer", offload=offload)
    for question in QUESTIONS:
        outer.invoke({"messages": [HumanMessage(question)]}, THREAD)
    assert [t.task for t in recorded(inner, tmp_path / "inner")] == QUESTIONS
    assert [t.task for t in recorded(outer, tmp_path / "outer")] == QUESTIONS


def _wrapping_graph(field: str) -> Any:
    """A graph given one text field ``field`` (not named as a question) that wraps it in a RAG-style prompt for its model."""
    model = ScriptedChatModel(script=[AIMessage(content="Done.")])
    state = TypedDict("state", {field: str, "answer": str}, total=False)  # type: ignore[misc]

    def answer(given: Any) -> dict[str, Any]:
        asked = HumanMessage(f"Context:\n- Returns within 30 days.\n\nCustomer asks: {given[field]}")
        return {"answer": model.invoke([asked]).content}

    return chain_graph(state, ("answer", answer)).copy(update={"checkpointer": None})


@pytest.mark.parametrize(
    "given",
    [
        {"goal": "退货流程是怎样的？我的订单号是A-1"},  # noqa: RUF001 - a full-width question mark, as typed
        {"objective": "注文した商品はいつ届きますか？"},  # noqa: RUF001
        {"problem": "Summarize https://shop.example/returns for me please"},
        {"goal": "~/orders.csv shows a refund twice, why?"},
        {"ask": "Cancel my subscription today please"},
    ],
    ids=["chinese", "japanese", "url-inside", "path-first", "four-words"],
)
def test_a_lone_field_that_reads_as_a_question_is_the_task(given: dict[str, str], store_path: Any) -> None:
    """Before, a lone field counted only with three words (or two and a '?') and no URL or path anywhere: Chinese and
    Japanese questions (no spaces), a sentence holding a URL or starting with a path got the whole prompt the node built
    as their task."""
    [(field, value)] = given.items()
    agent = record_experience(_wrapping_graph(field), app="shop", store=store_path)
    agent.invoke(given)
    [run] = recorded(agent, store_path)
    assert run.task == value


@pytest.mark.parametrize(
    "given",
    [{"ticket": "T-1042"}, {"order": "ord_123"}, {"order": "#W1234"}, {"source": "https://shop.example/returns"},
     {"attachment": "~/orders.csv"}, {"attachment": "C:\\data\\in.csv"}, {"release": "v2.4.1"},
     {"status": "open"}, {"lang": "en"}, {"mode": "fast"}, {"city": "Paris"}, {"ticker": "AAPL"}, {"customer": "Ann Lee"},
     {"region": "EMEA"}, {"topic": "refund"}, {"city": "巴黎"}],
    ids=["dashed-id", "underscored-id", "hash-id", "bare-url", "home-path", "windows-path", "dotted-code",
         "status", "lang", "mode", "city", "ticker", "two-words", "region", "one-word", "two-cjk-characters"],
)  # fmt: skip
def test_a_lone_field_holding_a_parameter_identifier_url_or_path_is_not_the_task(given: dict[str, str], store_path: Any) -> None:
    """One token that is an identifier, a code, a URL or a path, or a parameter of the run (a status, a language, a
    city, a name: a word or two), under a name that does not say so: the task is the question the model was asked.
    92794bd had taken such words as the task ('open', 'en'): the curriculum and the tool simulator read 'Task: en'."""
    [(field, value)] = given.items()
    agent = record_experience(_wrapping_graph(field), app="shop", store=store_path)
    agent.invoke(given)
    [run] = recorded(agent, store_path)
    assert run.task == f"Context:\n- Returns within 30 days.\n\nCustomer asks: {value}"


def test_a_conversation_next_to_an_instructions_field_has_its_question_as_its_task(store_path: Any) -> None:
    """Before, a conversation under another key than ``messages`` next to any field named in TASK_FIELDS took that
    field as the task: ``{"chat": [q], "instructions": "Answer in one short sentence."}`` recorded the instructions. A
    list that ends on the user's question is the turn, not a history of earlier turns."""
    model = ScriptedChatModel(script=[AIMessage(content="It ships today.")])

    class State(TypedDict, total=False):
        chat: Annotated[list[AnyMessage], add_messages]
        instructions: str

    def answer(state: State) -> dict[str, Any]:
        return {"chat": [model.invoke([HumanMessage(state["instructions"]), *state["chat"]])]}

    agent = record_experience(chain_graph(State, ("answer", answer)).copy(update={"checkpointer": None}), app="shop", store=store_path)
    agent.invoke({"chat": [HumanMessage("Where is order A-1?")], "instructions": "Answer in one short sentence."})
    [run] = recorded(agent, store_path)
    assert run.task == "Where is order A-1?"
