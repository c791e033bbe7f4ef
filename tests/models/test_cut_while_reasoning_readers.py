"""Every reader of a chat answer's text, against a reasoning model whose answer is cut off at ``max_tokens`` while it is
still thinking: each says so, naming the limit (``Choice.cut_while_reasoning``), instead of reading an empty answer.

A reasoning model (Qwen3, an R1 distill) thinks before it answers; given too few tokens, its answer ends inside its
``<think>`` block (served without a reasoning parser) or holds only ``reasoning_content`` (with one), with
``finish_reason`` ``"length"``. ``Choice.text`` is then ``""`` (what it said: nothing). Was: the BFCL harness reported no
problem for it, the experience model said "the answer is empty", the tau user simulator ended the conversation as if the
customer were done, and the curriculum judge (``max_tokens`` 160, hard-coded) gave "no verdict" for every rollout of a
reasoning judge. The model is a real HTTP server on 127.0.0.1 answering as such a model would (a scripted stand-in that
counts a word as a token and cuts at the request's ``max_tokens``); the clients, BFCL suite, tau suite, experience
sandbox, curriculum judge and CLI are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.models.protocol import Choice, Sampling
from ee_middleware.testing.http import ScriptedChatServer
from tests.evals.test_curriculum import _policy, _tasks
from tests.replay import conftest as replay_fixtures

serve = replay_fixtures.serve  # scripted policies behind real local HTTP servers

THINKING_WORDS = 300
Answer = Callable[[list[dict[str, Any]]], str]


def _thinking(draft: str = "") -> list[str]:
    """What the model thinks before it answers: ``THINKING_WORDS`` words, ``draft`` (e.g. a call it considers) inside."""
    words = ("Let me weigh what the conversation shows before I answer, one point at a time. " * 30).split()[:THINKING_WORDS]
    return words[:20] + draft.split(" ") + words[20:] if draft else words


def _answer_within(thinking: list[str], said: str, max_tokens: int, *, parser: bool) -> tuple[dict[str, Any], str]:
    """The message and finish_reason of a model that thinks ``thinking`` then says ``said``, within ``max_tokens`` words."""
    if len(thinking) + len(said.split()) > max_tokens:
        cut = " ".join(thinking[:max_tokens])
        message = (
            {"role": "assistant", "content": "", "reasoning_content": cut}
            if parser
            else {"role": "assistant", "content": f"<think>\n{cut}"}
        )
        return message, "length"
    if parser:
        return {"role": "assistant", "content": said, "reasoning_content": " ".join(thinking)}, "stop"
    return {"role": "assistant", "content": f"<think>\n{' '.join(thinking)}\n</think>\n\n{said}"}, "stop"


@contextmanager
def reasoning_model(answer: Answer, *, parser: bool = False, draft: str = "") -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A server whose model thinks, then answers ``answer(messages)``; cut at the request's ``max_tokens``. Yields its base
    URL and the request bodies."""

    def reply(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        return _answer_within(_thinking(draft), answer(body["messages"]), int(body.get("max_tokens") or 10**6), parser=parser)

    with ScriptedChatServer(reply) as server:
        yield server.base_url, server.requests


class _TextOnlyReasoningModel:
    """A stand-in for a ``local:`` model (a text-only generator: ``Choice.from_text``) that thinks, then answers ``said``
    (or what ``said(messages)`` gives)."""

    model = "text-only-standin"

    def __init__(self, said: str | Answer, draft: str = "") -> None:
        self.said, self.draft = said, draft
        self.requests = 0

    def complete(
        self, messages: Sequence[dict[str, Any]], *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        self.requests += 1
        said = self.said if isinstance(self.said, str) else self.said(list(messages))
        message, finish = _answer_within(_thinking(self.draft), said, sampling.max_tokens, parser=False)
        return [Choice.from_text(message["content"], finish_reason=finish)]

    def describe(self) -> dict[str, Any]:
        return {"model": self.model}

    def close(self) -> None:
        pass


def _bfcl_task() -> Any:
    from ee_middleware.evals.bfcl.suite import BFCLSuite

    return BFCLSuite("simple").tasks()[0]


def _reference_calls_text(task: Any) -> str:
    """The task's right calls as a text-only model writes them (``<tool_call>`` blocks, Qwen's format)."""
    calls = [c["function"] for c in task.reference[0][0]["tool_calls"]]
    return "\n".join(
        f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': json.loads(c['arguments'])})}\n</tool_call>" for c in calls
    )


CUT_AT_64 = "the answer was cut off at max_tokens while still reasoning: raise max_tokens (now 64)"


@pytest.mark.parametrize("draft", ["", '<tool_call> {"name": "calculate_triangle_area", "arguments": {"base": 10'], ids=["plain", "draft"])
@pytest.mark.parametrize("served", ["text-only model standin", "served without a parser", "served with a parser"])
def test_a_bfcl_answer_cut_while_reasoning_says_so_and_names_max_tokens_scripted_server(served: str, draft: str) -> None:
    """Was: no problem at all (text-only and served alike; before 0c3d9be a text-only model's said 'still reasoning (give
    it more max_tokens)' only when its thinking held a draft call), so the failure's reason did not say why."""
    from ee_middleware.evals.bfcl.suite import BFCLSuite
    from ee_middleware.evals.loop import LoopConfig
    from ee_middleware.evals.runner import result_row

    suite, task = BFCLSuite("simple"), _bfcl_task()
    said = _reference_calls_text(task)
    for max_tokens in (64, 1024):
        if served == "text-only model standin":
            result = suite.run(_TextOnlyReasoningModel(said, draft), task, 0, LoopConfig(max_tokens=max_tokens))
        else:
            with reasoning_model(lambda messages: said, parser=served == "served with a parser", draft=draft) as (url, _):
                client = OpenAIChatClient(url, "m", retries=0)
                result = suite.run(client, task, 0, LoopConfig(max_tokens=max_tokens))
                client.close()
        if max_tokens == 64:
            [step] = result.conversation.turns[0].steps
            assert step.problems == [CUT_AT_64] and not result.success
            # it wrote no call (a draft in its thinking is no call): the reason never says a call could not be read
            assert result_row(result, "m")["reason"] == f"the model made no function call: {CUT_AT_64}"
        else:
            assert result.success, result.reason  # with the tokens it needs, the same model answers right


def _calls_then_a_long_summary(task: Any) -> Answer:
    """What a reasoning model answers on ``task``: the oracle's calls (``<tool_call>`` blocks), and after them a summary
    longer than ``max_tokens`` 512 leaves room for, so that answer is cut off while the model still thinks."""
    from ee_middleware.evals.clients import OracleClient

    oracle = OracleClient().for_task(task)

    def answer(messages: list[dict[str, Any]]) -> str:
        message = oracle.complete(messages)[0].message
        calls = [c["function"] for c in message.get("tool_calls") or []]
        if not calls:
            return "Here is what I did. " + "Each call went through and its result is shown above. " * 60
        return "\n".join(
            f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': json.loads(c['arguments'])})}\n</tool_call>" for c in calls
        )

    return answer


@pytest.mark.parametrize("served", ["text-only model standin", "served without a parser", "served with a parser"])
def test_a_bfcl_multi_turn_answer_cut_while_reasoning_ends_the_turn_and_is_never_fed_back_scripted_server(served: str) -> None:
    """With feed_back_parse_errors (an [eval] key), a turn's closing answer cut off while still reasoning was fed back as a
    call that could not be read ('Write the call again as valid JSON'), 20 times, and the entry force-quit: 0/30 where it
    passed. Now it ends the turn as without feedback, counted as cut, its problem kept."""
    from ee_middleware.evals.bfcl.suite import BFCLSuite
    from ee_middleware.evals.loop import PARSE_ERROR_PROMPT, LoopConfig
    from ee_middleware.evals.runner import result_row

    suite = BFCLSuite("multi_turn_base")
    task = suite.tasks()[0]
    cut = "the answer was cut off at max_tokens while still reasoning: raise max_tokens (now 512)"
    runs = {}
    for feedback in (False, True):
        config = LoopConfig(feed_back_parse_errors=feedback, max_tokens=512)
        if served == "text-only model standin":
            model = _TextOnlyReasoningModel(_calls_then_a_long_summary(task))
            result, requests = suite.run(model, task, 0, config), model.requests
        else:
            with reasoning_model(_calls_then_a_long_summary(task), parser=served == "served with a parser") as (url, seen):
                client = OpenAIChatClient(url, "m", retries=0)
                result, requests = suite.run(client, task, 0, config), len(seen)
                client.close()
        runs[feedback] = (result, requests)
        turns = result.conversation.turns
        assert result.success, result_row(result, "m")["reason"]
        assert [turn.stopped for turn in turns] == ["answer"] * len(task.turns)
        assert [turn.steps[-1].problems for turn in turns] == [[cut]] * len(task.turns), "each closing answer's cause is kept"
        assert result.conversation.cut_answers == len(task.turns)
        prompt_start = PARSE_ERROR_PROMPT.split("(")[0]
        assert not any(prompt_start in str(m.get("content")) for m in result.conversation.messages), "never fed back"
    assert runs[True][1] == runs[False][1], "feedback asks for no more answers"


def test_a_bfcl_entry_whose_every_answer_is_cut_while_reasoning_says_so_not_that_calls_could_not_be_read() -> None:
    """Was: '4 call(s) the model tried could not be read, so they were never made (the answer was cut off ...)' for a
    model that wrote no call; and with feed_back_parse_errors, 21 answers in its first turn and a force-quit."""
    from ee_middleware.evals.bfcl.suite import BFCLSuite
    from ee_middleware.evals.loop import LoopConfig
    from ee_middleware.evals.runner import result_row

    suite = BFCLSuite("multi_turn_base")
    task = suite.tasks()[0]
    model = _TextOnlyReasoningModel(_calls_then_a_long_summary(task))
    result = suite.run(model, task, 0, LoopConfig(feed_back_parse_errors=True, max_tokens=64))
    reason = result_row(result, "m")["reason"]
    assert not result.success and result.error_type != "multi_turn:force_terminated"
    assert model.requests == len(task.turns), "one answer per turn"
    assert f"; {len(task.turns)} model answer(s) held no call and no text: {CUT_AT_64}" in reason
    assert "could not be read" not in reason and "tried" not in reason


@pytest.mark.parametrize("parser", [False, True], ids=["inline think", "reasoning parser"])
def test_a_user_simulator_cut_while_reasoning_fails_the_task_naming_max_tokens_scripted_server(parser: bool) -> None:
    """Was: its empty text ended the conversation as if the customer were done, and the task was scored on it."""
    from ee_middleware.evals.clients import OracleClient
    from ee_middleware.evals.loop import LoopConfig
    from ee_middleware.evals.suites import SuiteSettings, load_suite

    with reasoning_model(lambda messages: "Hi, ada.okafor@example.org here. Please renew my lichen guide.", parser=parser) as (url, seen):
        suite = load_suite("tau:library:test:1", SuiteSettings(user_model=f"openai:{url}#customer"))
        task = next(t for t in suite.tasks() if t.id == "renew-lichens")
        result = suite.run(OracleClient(), task, 0, LoopConfig(max_tokens=64))
    assert (result.success, result.error_type) == (False, "user_model_error")
    assert result.reason == (
        f"the user simulator's model wrote no message: {CUT_AT_64}; the simulator is asked with the eval's --max-tokens, "
        "the agent's limit too"
    ), "the flag to raise, and that it is the agent's budget as well"
    assert [m["role"] for m in result.conversation.messages if m["role"] != "system"] == [], "no turn was run on nothing"
    assert len(seen) == 1


def test_a_user_simulator_that_writes_nothing_ends_the_conversation_and_the_task_is_scored_scripted_server(serve: Any) -> None:
    """The agent makes every right call and only its closing reply is cut off while it still thinks (text ""); the
    simulator's prompt then ends on the customer's own line, and a server that continues a trailing assistant message
    (llama-server, LMDeploy) answers nothing. Was: user_model_error ('its answer is empty ...; it must write ###STOP###'),
    a finished task failed and blamed on the simulator; now the empty answer ends the conversation and the task is scored
    on the database, as before 33f3bbc."""
    from ee_middleware.evals.clients import OracleClient
    from ee_middleware.evals.loop import LoopConfig
    from ee_middleware.evals.suites import SuiteSettings, load_suite

    def customer(messages: list[dict[str, Any]]) -> str:
        if len(messages) == 2:  # the system prompt and the agent's greeting
            return "Hi, ada.okafor@example.org here. Please renew my lichen guide."
        if messages[-1]["role"] == "assistant":  # the agent's reply was empty (left out): continues its own line, with nothing
            return ""
        return "Yes, please renew it." if "Shall I renew" in messages[-1]["content"] else "###STOP###"

    def agent(task: Any) -> Answer:
        oracle = OracleClient().for_task(task)

        def answer(messages: list[dict[str, Any]]) -> str:
            message = oracle.complete(messages)[0].message
            calls = [c["function"] for c in message.get("tool_calls") or []]
            if calls:
                return "\n".join(
                    f"<tool_call>\n{json.dumps({'name': c['name'], 'arguments': json.loads(c['arguments'])})}\n</tool_call>" for c in calls
                )
            if message["content"].startswith("Done"):  # its closing reply: longer than max_tokens leaves after its thinking
                return "All done. " + "The renewal went through and the new due date is on your account. " * 30
            return message["content"]

        return answer

    simulator = serve(customer)
    suite = load_suite("tau:library:test:1", SuiteSettings(user_model=f"openai:{simulator.base_url}#customer"))
    task = next(t for t in suite.tasks() if t.id == "renew-lichens")
    with reasoning_model(agent(task)) as (url, _):
        client = OpenAIChatClient(url, "m", retries=0)
        result = suite.run(client, task, 0, LoopConfig(max_tokens=512))
        client.close()
    calls = [c["function"]["name"] for m in result.conversation.messages for c in m.get("tool_calls") or []]
    assert calls == [name for name, _ in task.payload["actions"]], "the agent made every right call"
    assert result.conversation.cut_answers == 1 and result.conversation.turns[-1].steps[-1].text == ""
    assert simulator.requests[-1]["messages"][-1]["role"] == "assistant", "its prompt ended on the customer's own line"
    assert (result.success, result.error_type, result.reason) == (True, None, None)


def test_the_experience_model_cut_while_reasoning_says_so_and_names_its_max_tokens_scripted_server(bfcl_store_path: Path) -> None:
    """Was: 'the answer is empty', with no raw text, for a model that wrote hundreds of reasoning tokens."""
    from ee_middleware.records import ToolCall
    from ee_middleware.replay.sandboxes.experience import ExperienceSandbox, SyntheticObservationError
    from ee_middleware.store.local import LocalExperienceStore

    store = LocalExperienceStore(bfcl_store_path)
    trajectory = next(iter(store.iter_trajectories()))
    store.close()
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    expert = step.action.tool_call
    assert expert is not None
    call = ToolCall(id="alt", name=expert.name, arguments={**expert.arguments, "__alt": 1})
    prediction = json.dumps({"reasoning": "closed on Mondays", "observation": "Error: closed", "is_error": True})
    with reasoning_model(lambda messages: prediction) as (url, _):
        for max_tokens in (None, 1024):  # the sandbox's default (256), then enough
            sandbox = ExperienceSandbox(f"openai:{url}#m", store=str(bfcl_store_path), **({"max_tokens": max_tokens} if max_tokens else {}))
            sandbox.reset(trajectory.environment)
            sandbox.at_step(trajectory, step)
            try:
                if max_tokens is None:
                    with pytest.raises(SyntheticObservationError) as raised:
                        sandbox.execute(call)
                    assert raised.value.reason == "the answer was cut off at max_tokens while still reasoning: raise max_tokens (now 256)"
                    assert "<think>" in str(raised.value), "the error shows what the model wrote"
                else:
                    assert sandbox.execute(call).content == "Error: closed"
            finally:
                sandbox.close()


def _verdict(messages: list[dict[str, Any]]) -> str:
    return json.dumps({"reasoning": "it listed the folder", "reward": 1})


def test_a_reasoning_judge_gets_tokens_enough_for_its_verdict_and_a_cut_one_says_so_scripted_server() -> None:
    """Was: max_tokens=160, hard-coded: a judge that thinks (300 tokens here) was always cut, 'no verdict'."""
    from ee_middleware.evals import curriculum
    from ee_middleware.evals.curriculum import judge
    from ee_middleware.evals.tasks import Conversation

    conversation = Conversation(messages=[{"role": "user", "content": "List the folder."}])
    with reasoning_model(_verdict) as (url, seen):
        client = OpenAIChatClient(url, "m", retries=0)
        try:
            assert judge(client, "List the folder.", conversation) == (1.0, "it listed the folder")
            assert seen[-1]["max_tokens"] == curriculum.JUDGE_MAX_TOKENS == 1024
            assert judge(client, "List the folder.", conversation, max_tokens=100) == (
                None,
                "the judge gave no verdict: the answer was cut off at max_tokens while still reasoning: raise max_tokens (now 100)",
            )
        finally:
            client.close()


def test_curriculum_run_with_a_judge_cut_while_reasoning_says_to_raise_judge_max_tokens_scripted_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    """Was: no --judge-max-tokens, and the CLI told the user the judge must answer JSON ('Check --judge')."""
    from ee_middleware.cli.app import app

    policy = serve(_policy(["ls"]))
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with reasoning_model(_verdict) as (url, seen):
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        args += ["--judge", f"openai:{url}#j", "--store", str(bfcl_store_path), "--json"]
        cut = CliRunner().invoke(app, [*args, "--judge-max-tokens", "100"])
        assert cut.exit_code == 1, cut.output
        summary = json.loads(cut.stdout)
        reason = "the judge gave no verdict: the answer was cut off at max_tokens while still reasoning: raise max_tokens (now 100)"
        assert summary["kept"] == 0 and summary["dropped"] == {reason: 1}
        assert "cut off at max_tokens while still reasoning. Raise --judge-max-tokens (now 100)." in summary["error"]
        assert "Raise --judge-max-tokens (now 100)" in cut.stderr and "Check --judge" not in cut.stderr
        kept = CliRunner().invoke(app, args)  # the default leaves a reasoning judge room for its verdict
        assert kept.exit_code == 0, kept.output
        assert json.loads(kept.stdout)["kept"] == 1 and seen[-1]["max_tokens"] == 1024
