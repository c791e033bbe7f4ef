"""What a served chat model says about its reply beside the messages (sweep s22, findings 1, 2, 4 and 5): the choices
of a request made with ``n > 1``, the finish reason, the model that answered and the tokens used.

- Only the choice the graph went on with is recorded: LangChain's ``invoke`` returns ``generations[0][0]``'s message
  (``BaseChatModel.invoke``/``ainvoke``), the others never reached the graph. They were recorded as steps (a tool call
  no tool ran, a second answer IL then taught) and as messages.
- A run whose last answer was cut at ``max_tokens`` (``finish_reason == "length"``) is ``stopped``, not ``completed``
  (an ``approve_if`` on completed runs approved the cut answer), and the chat span carries the real finish reason.
- A run whose last model turn wrote only malformed tool calls (``invalid_tool_calls``: no tool ran, no answer) is
  ``stopped``, naming the call; one the model answered after stays ``completed``.
- Chat spans carry ``gen_ai.response.model`` and ``gen_ai.usage.*``, and the trajectory's ``model`` is the model that
  answered (a router answers an alias with the adapter's own name).

Real LangChain agents and graphs, the real OTel SDK and the real local store; the only stand-in is the served chat model
(a ``BaseChatModel`` whose ``ChatResult`` is what an OpenAI-compatible server's answer becomes in ``ChatOpenAI``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from pydantic import Field

from ee_middleware import record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.messages import message_type
from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from tests.capture.test_offload import no_child_left  # noqa: F401 - fixture

OFFLOADS = pytest.mark.parametrize("offload", ["thread", pytest.param("process", marks=pytest.mark.heavy)])
pytestmark = pytest.mark.usefixtures("no_child_left")

ASK = {"messages": [("user", "Which flights go from FRA to JFK?")]}
CUT = "the last answer was cut at max_tokens (finish_reason length)"


def completed(trajectory: Trajectory) -> bool:
    """The README's own approval rule."""
    return trajectory.status == "completed"


@tool
def search_flights(origin: str, dest: str) -> str:
    """Flights from ``origin`` to ``dest``."""
    ran.append((origin, dest))
    return f"LH100 {origin}->{dest} 09:10"


ran: list[tuple[str, str]] = []


def call(call_id: str, origin: str, dest: str = "JFK") -> dict[str, Any]:
    return {"name": "search_flights", "args": {"origin": origin, "dest": dest}, "id": call_id, "type": "tool_call"}


class Turn(dict):
    """One model turn as a server answers it: ``choices`` (each an ``AIMessage``), each choice's ``finish_reason`` (in
    its ``generation_info``, as ``ChatOpenAI`` puts it), the answering model in ``response_metadata`` (``model_name``)
    or only in ``llm_output`` (``ChatOpenAI`` with ``n > 1``), and the usage (``usage_metadata``)."""


def turn(
    *choices: AIMessage,
    finish: Sequence[str] | None = None,
    model: str = "flight-bot",
    usage: tuple[int, int] | None = None,
    model_in_llm_output: bool = False,
    finish_key: str = "finish_reason",
) -> Turn:
    """``finish_key``: where the finish reason goes: ``finish_reason`` in ``generation_info`` (OpenAI's, Mistral's,
    Ollama's through LangChain), or another key of ``response_metadata`` (Anthropic's ``stop_reason``)."""
    return Turn(choices=choices, finish=finish, model=model, usage=usage, model_in_llm_output=model_in_llm_output, finish_key=finish_key)


class ServedModelStandIn(BaseChatModel):
    """Stand-in for a chat model served over an OpenAI-compatible API: answers turn k (the model's turns since the last
    user message) with ``script[k]``, as ``ChatOpenAI`` builds its ``ChatResult``: one generation per choice, the finish
    reason in each generation's ``generation_info``, usage on each message, the answering model in ``llm_output`` (and,
    since ``BaseChatModel`` merges ``llm_output`` into a single generation's ``response_metadata``, in the message's)."""

    script: list[Turn] = Field(default_factory=list)
    model_name: str = "flight-bot"

    @property
    def _llm_type(self) -> str:
        return "served-stand-in"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        from langchain_core.utils.function_calling import convert_to_openai_tool

        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any) -> ChatResult:
        k = 0
        for message in reversed(messages):
            if message_type(message) == "human":
                break
            k += message_type(message) == "ai"
        spec = self.script[min(k, len(self.script) - 1)]
        finish = spec["finish"] or ["tool_calls" if c.tool_calls else "stop" for c in spec["choices"]]
        generations = []
        for choice, reason in zip(spec["choices"], finish, strict=True):
            update: dict[str, Any] = {}
            if spec["usage"] is not None:
                i, o = spec["usage"]
                update["usage_metadata"] = {"input_tokens": i, "output_tokens": o, "total_tokens": i + o}
            metadata = {} if spec["model_in_llm_output"] else {"model_name": spec["model"]}
            info = {"finish_reason": reason} if spec["finish_key"] == "finish_reason" else None
            if info is None:
                metadata[spec["finish_key"]] = reason
            update["response_metadata"] = metadata
            generations.append(ChatGeneration(message=choice.model_copy(update=update), generation_info=info))
        llm_output = {"model_name": spec["model"]}
        if spec["usage"] is not None:
            llm_output["token_usage"] = {"prompt_tokens": spec["usage"][0], "completion_tokens": spec["usage"][1]}
        return ChatResult(generations=generations, llm_output=llm_output)


def _record(graph: Any, store_path: Any, offload: str = "thread", **options: Any) -> tuple[Any, Trajectory, Any]:
    ran.clear()
    agent = record_experience(graph, app="flightdesk", store=store_path, offload=offload, approve_if=completed, **options)
    out = agent.invoke(ASK)
    agent.flush()
    stats = agent.recorder.stats
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    try:
        [trajectory] = list(store.iter_trajectories())
    finally:
        store.close()
    return out, trajectory, stats


def _agent(*script: Turn, model: str = "flight-bot") -> Any:
    return create_agent(ServedModelStandIn(script=list(script), model_name=model), [search_flights], system_prompt="You book flights.")


def _chat_spans(exporter: Any) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.attributes.get(sc.OPERATION_NAME) == sc.OP_CHAT]


# --- 1: n > 1 --------------------------------------------------------------------------------------


TWO_CHOICES = (
    turn(
        AIMessage(content="", tool_calls=[call("c0", "FRA")]),
        AIMessage(content="", tool_calls=[call("c1", "LHR")]),
        model_in_llm_output=True,
    ),
    turn(AIMessage(content="Choice zero answer."), AIMessage(content="Choice one answer."), model_in_llm_output=True),
)


@OFFLOADS
def test_only_the_choice_the_graph_went_on_with_is_recorded(offload, store_path):
    """n=2: create_agent acts on choice 0 (the message ``invoke`` returns). Was: 4 steps (choice 1's call of LHR that no
    tool ran, and its answer "Choice one answer." after the real one), and both answers at the end of ``messages``."""
    out, t, stats = _record(_agent(*TWO_CHOICES), store_path, offload)
    assert ran == [("FRA", "JFK")] and out["messages"][-1].content == "Choice zero answer."
    assert [(s.action.kind, s.action.tool_call and s.action.tool_call.arguments, s.action.content) for s in t.steps] == [
        ("tool_call", {"origin": "FRA", "dest": "JFK"}, None),
        ("answer", None, "Choice zero answer."),
    ]
    assert t.steps[0].observation is not None and "FRA->JFK" in t.steps[0].observation.content
    assert [m["role"] for m in t.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert t.messages[-1]["content"] == "Choice zero answer." and "Choice one answer." not in t.model_dump_json()
    assert (t.status, t.final_answer, t.approval.status) == ("completed", "Choice zero answer.", "approved")
    assert stats.choices_dropped == 2  # one unused choice per model call, counted where capture's counters are


def test_a_chat_span_names_how_many_choices_it_left_out(store_path, tracer_provider, span_exporter):
    _record(_agent(*TWO_CHOICES), store_path, tracer_provider=tracer_provider)
    spans = _chat_spans(span_exporter)
    assert [s.attributes.get(sc.EE_CHOICES_DROPPED) for s in spans] == [1, 1]
    assert [tuple(s.attributes[sc.RESPONSE_FINISH_REASONS]) for s in spans] == [("tool_call",), ("stop",)]


async def test_only_the_first_choice_is_recorded_for_ainvoke_too(store_path):
    ran.clear()
    agent = record_experience(_agent(*TWO_CHOICES), app="flightdesk", store=store_path)
    out = await agent.ainvoke(ASK)
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(store_path)
    [t] = list(store.iter_trajectories())
    store.close()
    assert out["messages"][-1].content == "Choice zero answer."
    assert [s.action.kind for s in t.steps] == ["tool_call", "answer"] and t.final_answer == "Choice zero answer."


# --- 4: finish_reason "length" ---------------------------------------------------------------------


@OFFLOADS
def test_an_answer_cut_at_max_tokens_is_stopped_not_completed(offload, store_path):
    """Was: ``completed``, approved by ``approve_if=status == "completed"``, with the cut answer as final answer."""
    cut = turn(AIMessage(content="Your flight LH100 is booked, booking number B"), finish=["length"])
    out, t, _ = _record(_agent(cut), store_path, offload)
    assert out["messages"][-1].response_metadata["finish_reason"] == "length"
    assert (t.status, t.error, t.approval.status) == ("stopped", CUT, "pending")
    assert t.final_answer == "Your flight LH100 is booked, booking number B"  # kept, for a reviewer to see


def test_a_chat_span_carries_the_real_finish_reason(store_path, tracer_provider, span_exporter):
    """Was: ``stop`` for every reply without calls (``tool_call`` for one with), whatever the model said. Providers'
    words are written as the GenAI conventions' (Anthropic's ``end_turn`` is ``stop``)."""
    script = (
        turn(AIMessage(content="", tool_calls=[call("c0", "FRA")]), finish=["length"]),
        turn(AIMessage(content="LH100 leaves at 09:10."), finish=["end_turn"], finish_key="stop_reason"),
    )
    _, t, _ = _record(_agent(*script), store_path, tracer_provider=tracer_provider)
    spans = _chat_spans(span_exporter)
    assert [tuple(s.attributes[sc.RESPONSE_FINISH_REASONS]) for s in spans] == [("length",), ("stop",)]
    assert '"finish_reason":"length"' in spans[0].attributes[sc.OUTPUT_MESSAGES]
    assert t.status == "completed"  # a turn cut earlier that the graph went on from is not the run's end


def test_a_cut_answer_of_a_state_graph_node_is_stopped(store_path):
    """A custom graph (a node that calls the model itself), with the provider's own words for it: Anthropic's
    ``stop_reason`` ``max_tokens`` in ``response_metadata``."""
    model = ServedModelStandIn(script=[turn(AIMessage(content="The cheapest fare is"), finish=["max_tokens"], finish_key="stop_reason")])

    def answer(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("answer", answer)
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)
    _, t, _ = _record(graph.compile(), store_path)
    assert (t.status, t.error, t.approval.status) == ("stopped", CUT, "pending")


# --- 5: a last turn of malformed calls only ---------------------------------------------------------

BAD_ARGS = '{"origin": "FRA", "dest": '


def _malformed(call_id: str = "call_m") -> AIMessage:
    bad = {"type": "invalid_tool_call", "id": call_id, "name": "search_flights", "args": BAD_ARGS, "error": "not valid JSON"}
    return AIMessage(content="", invalid_tool_calls=[bad])


@OFFLOADS
def test_a_run_that_ends_on_a_malformed_call_is_stopped_not_completed(offload, store_path):
    """create_agent ends a run whose reply holds only ``invalid_tool_calls`` (no call to run): the user got no answer.
    Was: ``completed`` and approved, ``final_answer`` None."""
    out, t, _ = _record(_agent(turn(_malformed())), store_path, offload)
    assert ran == [] and out["messages"][-1].invalid_tool_calls and not out["messages"][-1].content
    [step] = t.steps
    assert step.action.tool_call is not None and step.action.tool_call.malformed is True
    assert (t.status, t.final_answer, t.approval.status) == ("stopped", None, "pending")
    assert t.error == (
        "the run ended on a model turn whose only tool call was malformed, with no answer: search_flights "
        '(call call_m), arguments \'{"origin": "FRA", "dest": \' (no tool ran it)'
    )


def test_a_run_the_model_answered_after_a_malformed_call_stays_completed(store_path):
    """A malformed call beside a valid one: create_agent answers the malformed one with an error, runs the valid one,
    and the model answers: the run ended on that answer."""
    script = (
        turn(AIMessage(content="", tool_calls=[call("c0", "FRA")], invalid_tool_calls=_malformed("call_m").invalid_tool_calls)),
        turn(AIMessage(content="LH100 leaves at 09:10.")),
    )
    _, t, _ = _record(_agent(*script), store_path)
    assert [s.action.tool_call.malformed if s.action.tool_call else None for s in t.steps] == [None, True, None]
    assert (t.status, t.error, t.final_answer, t.approval.status) == ("completed", None, "LH100 leaves at 09:10.", "approved")


# --- 2: the model that answered, and the tokens ----------------------------------------------------


def test_chat_spans_carry_the_answering_model_and_token_usage(store_path, tracer_provider, span_exporter):
    """A router serves the alias ``flight-bot`` with the live adapter, naming it in its answers. Was: no
    ``gen_ai.response.model`` nor ``gen_ai.usage.*`` on the spans, and the trajectory's model the alias only."""
    script = (
        turn(AIMessage(content="", tool_calls=[call("c0", "FRA")]), model="flight-bot-v7-3f2a9c1e", usage=(398, 24)),
        turn(AIMessage(content="LH100 leaves at 09:10."), model="flight-bot-v7-3f2a9c1e", usage=(431, 9)),
    )
    _, t, _ = _record(_agent(*script, model="flight-bot"), store_path, tracer_provider=tracer_provider)
    spans = _chat_spans(span_exporter)
    assert [
        (
            s.attributes[sc.REQUEST_MODEL],
            s.attributes[sc.RESPONSE_MODEL],
            s.attributes[sc.USAGE_INPUT_TOKENS],
            s.attributes[sc.USAGE_OUTPUT_TOKENS],
        )
        for s in spans
    ] == [("flight-bot", "flight-bot-v7-3f2a9c1e", 398, 24), ("flight-bot", "flight-bot-v7-3f2a9c1e", 431, 9)]
    assert t.model == "flight-bot-v7-3f2a9c1e"  # which adapter answered: a trace before and after a promote tells


@OFFLOADS
def test_the_trajectory_keeps_the_answering_model_named_only_in_llm_output(offload, store_path):
    """With n > 1, BaseChatModel does not merge ``llm_output`` into the messages: the answering model is read there."""
    script = [turn(*c["choices"], model="flight-bot-v8-0d1e2f3a", model_in_llm_output=True) for c in TWO_CHOICES]
    _, t, _ = _record(_agent(*script, model="flight-bot"), store_path, offload)
    assert t.model == "flight-bot-v8-0d1e2f3a"


def test_a_model_that_names_no_answering_model_keeps_the_one_asked_for(store_path, tracer_provider, span_exporter):
    model = ServedModelStandIn(script=[turn(AIMessage(content="Hi."), model="")], model_name="flight-bot")
    _, t, _ = _record(create_agent(model, [search_flights]), store_path, tracer_provider=tracer_provider)
    [span] = _chat_spans(span_exporter)
    assert sc.RESPONSE_MODEL not in span.attributes and sc.USAGE_INPUT_TOKENS not in span.attributes
    assert t.model == "flight-bot"
