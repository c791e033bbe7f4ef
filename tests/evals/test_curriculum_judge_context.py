"""The curriculum judge against a server with a small context (vLLM ``--max-model-len 2048``, ``ee serve --max-model-len``).

vLLM refuses (400) a request whose prompt tokens plus ``max_tokens`` exceed the context, and the judge's prompt is up to
~2k tokens (the task, and the conversation clipped at 6000 characters). Was: the judge asked for its 1024 tokens and was
refused on every rollout (with 160, before 33f3bbc, it fitted), and the CLI said to check that the judge's server is up or
to pass another --judge. Now the judge is asked again with what the context leaves, as the refusal says it (the prompt's
length where the server counts it, else half the tokens), and a refusal that leaves no room names --judge-max-tokens.

The judge is a real HTTP server on 127.0.0.1 answering as vLLM does (a scripted stand-in counting four characters as a
token, refusing in the words of three vLLM versions); the policy, sandbox, store, judge and CLI are the real ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.curriculum import JUDGE_CUT, JUDGE_MAX_TOKENS, JUDGE_NO_VERDICT, context_budget, judge
from ee_middleware.evals.tasks import Conversation
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.testing.http import Answer, Reply, ScriptedChatServer
from tests.evals.test_curriculum import _tasks
from tests.replay import conftest as replay_fixtures

serve = replay_fixtures.serve  # scripted policies behind real local HTTP servers

VERDICT = json.dumps({"reasoning": "it listed the folder and said where it is", "reward": 1})


def _refusal(wording: str, window: int, prompt: int, asked: int) -> str:
    """vLLM's 400 text for ``prompt + asked > window``, in the words of the version ``wording`` names."""
    if wording == "vllm<=0.10.1":
        return (
            f"This model's maximum context length is {window} tokens. However, you requested {prompt + asked} tokens "
            f"({prompt} in the messages, {asked} in the completion). Please reduce the length of the messages or completion."
        )
    if wording == "vllm 0.10.2-0.17":
        return (
            f"'max_tokens' or 'max_completion_tokens' is too large: {asked}. This model's maximum context length is {window} "
            f"tokens and your request has {prompt} input tokens ({asked} > {window} - {prompt})."
        )
    bound = window - asked + 1  # vLLM 0.18+: the prompt counted only as far as could fit
    return (
        f"This model's maximum context length is {window} tokens. However, you requested {asked} output tokens and your "
        f"prompt contains at least {bound} input tokens, for a total of at least {bound + asked} tokens. Please reduce the "
        f"length of the input prompt or the number of requested output tokens. (parameter=input_tokens, value={bound})"
    )


WORDINGS = ["vllm<=0.10.1", "vllm 0.10.2-0.17", "vllm>=0.18"]


@contextmanager
def vllm_like(window: int, *, wording: str = "vllm<=0.10.1", thinking: int = 0) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A judge served with ``window`` tokens of context: it refuses as vLLM does, else thinks ``thinking`` tokens (cut off
    at ``max_tokens``, inline ``<think>``) and gives its verdict. Yields its base URL and the requests it answered or
    refused, each with its prompt's length (``prompt_tokens``)."""
    seen: list[dict[str, Any]] = []

    def answer(body: dict[str, Any]) -> Answer:
        prompt = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4 + 8 * len(body["messages"])
        asked = int(body.get("max_tokens") or 0)
        seen.append({"prompt_tokens": prompt, "max_tokens": asked})
        if prompt + asked > window:
            return Reply(
                {"object": "error", "message": _refusal(wording, window, prompt, asked), "type": "BadRequestError", "code": 400}, 400
            )
        if thinking > asked:
            return {"role": "assistant", "content": "<think>\n" + "Let me weigh it. " * (asked // 4)}, "length"
        return VERDICT

    with ScriptedChatServer(answer, models=[{"id": "j", "object": "model", "max_model_len": window}]) as server:
        yield server.base_url, seen


def _long_conversation() -> Conversation:
    """A rollout whose JSON runs past the 6000 characters the judge is shown: its prompt is ~1.6k tokens."""
    summary = "The folder holds the files listed above, and the current directory is the workspace. " * 80
    return Conversation(messages=[{"role": "user", "content": "List the folder."}, {"role": "assistant", "content": summary}])


@pytest.mark.parametrize("wording", WORDINGS)
def test_a_judge_refused_for_its_context_is_asked_again_with_what_the_context_leaves_scripted_server(wording: str) -> None:
    """Was: the refusal raised (the rollout dropped as 'the judge failed'), on every rollout, where 160 tokens fitted."""
    with vllm_like(2048, wording=wording) as (url, seen):
        client = OpenAIChatClient(url, "j", retries=0)
        try:
            assert judge(client, "List the folder.", _long_conversation()) == (1.0, "it listed the folder and said where it is")
        finally:
            client.close()
    prompt = seen[0]["prompt_tokens"]
    assert prompt + JUDGE_MAX_TOKENS > 2048 > prompt + 160, "the default does not fit, 160 did"
    asked = [request["max_tokens"] for request in seen]
    if wording == "vllm>=0.18":  # only a bound on the prompt: halved until it fits
        assert asked == [1024, 512, 256]
    else:  # the prompt's length: all the context leaves, at once
        assert asked == [1024, 2048 - prompt]


def test_context_budget_reads_the_refusals_of_the_servers_that_refuse_for_the_context() -> None:
    sglang = (
        "Requested token count exceeds the model's maximum context length of 2048 tokens. You requested a total of 2840 "
        "tokens: 1816 tokens from the input messages and 1024 tokens for the completion."
    )
    tgi = (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 1816 `inputs` tokens and 1024 `max_new_tokens`"
    )
    assert context_budget(sglang, 1024) == context_budget(tgi, 1024) == 232
    assert context_budget(_refusal("vllm<=0.10.1", 2048, 1816, 1024), 1024) == 232
    prompt_alone = "This model's maximum context length is 2048 tokens. However, your request has 2100 input tokens. Please reduce the length of the input messages."
    assert context_budget(prompt_alone, 1024) is None, "no room for any answer"
    assert context_budget("The model `j` does not exist.", 1024) is None


def _run(store: Path, tmp_path: Path, serve: Any, url: str, *extra: str) -> Any:
    def policy(messages: list[dict[str, Any]]) -> str:  # calls ls, then reports at length (a real agent's summary)
        if messages[-1]["role"] == "tool":
            return "Here is what I found. " + "The folder holds the files listed above, and the current directory is the workspace. " * 80
        return '<tool_call>{"name": "ls", "arguments": {}}</tool_call>'

    tasks, _ = _tasks(store, tmp_path)
    args = ["curriculum", "run", str(tasks), "--policy", f"openai:{serve(policy).base_url}#p", "--sandbox", "bfcl"]
    return CliRunner().invoke(app, [*args, "--judge", f"openai:{url}#j", "--store", str(store), "--json", *extra])


def test_curriculum_run_keeps_a_rollout_judged_on_a_2048_token_context_scripted_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    """Was: exit 1, kept 0, every verdict refused ('you requested 2840 tokens'), and 'check that its server is up'."""
    with vllm_like(2048) as (url, seen):
        result = _run(bfcl_store_path, tmp_path, serve, url)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["kept"], summary["dropped"], summary["error"]) == (1, {}, None)
    assert [request["max_tokens"] for request in seen] == [1024, 2048 - seen[0]["prompt_tokens"]]


def test_a_judge_whose_prompt_alone_fills_its_context_is_told_to_lower_judge_max_tokens_or_take_a_longer_context_scripted_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    """Was: 'check that its server is up and answers in time, or pass another --judge'."""
    with vllm_like(1024, wording="vllm>=0.18") as (url, seen):
        result = _run(bfcl_store_path, tmp_path, serve, url)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    [reason] = summary["dropped"]
    assert reason.startswith("the judge failed: ") and "maximum context length is 1024 tokens" in reason
    error = summary["error"]
    assert (
        "refused the request as longer than the model's context (the prompt and the tokens for the verdict)" in error
        and "Lower --judge-max-tokens (now 1024)" in error
    )
    assert "serve the judge with a longer context" in error and "answers in time" not in error
    assert [request["max_tokens"] for request in seen] == [1024, 512, 256, 128, 64, 32], "asked down to the fewest a verdict needs"


def test_a_reasoning_judge_cut_off_within_what_its_context_leaves_is_told_to_take_a_longer_context_scripted_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    """Raising --judge-max-tokens cannot help a judge whose context leaves it fewer: the advice says what can."""
    with vllm_like(2048, thinking=600) as (url, seen):
        result = _run(bfcl_store_path, tmp_path, serve, url)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    left = 2048 - seen[0]["prompt_tokens"]
    reason = (
        "the judge gave no verdict: the answer was cut off at max_tokens while still reasoning: its context left room for "
        f"{left} of its 1024 max_tokens after the prompt: serve it with a longer context"
    )
    assert summary["dropped"] == {reason: 1}
    assert "Serve the judge with a longer context" in summary["error"] and "Raise --judge-max-tokens" not in summary["error"]


def test_a_judge_served_by_ee_serve_local_with_a_short_context_answers_within_it(local_server: Any) -> None:
    """ee's own server (the tiny random Llama, 512 positions) refuses prompt + max_tokens past its context in vLLM's
    words. Was: the judge's 1024 tokens were refused (ModelRequestError, the rollout dropped as 'the judge failed'); now
    it is asked for what the context leaves, and answers (a random model: no verdict, but an answer, which stops at the
    tokens the context left: said so, with the fix)."""
    conversation = Conversation(messages=[{"role": "user", "content": "List the folder."}, {"role": "assistant", "content": "ls pwd"}])
    client = OpenAIChatClient(local_server.base_url, local_server.model, retries=0, api_key="")
    try:
        reward, why = judge(client, "List the folder.", conversation)
    finally:
        client.close()
    assert reward is None and why.startswith(f"{JUDGE_NO_VERDICT}: {JUDGE_CUT}: its context left room for "), why
