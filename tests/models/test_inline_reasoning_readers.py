"""Every reader of a chat client's answer text, against a model that writes its reasoning inline.

A reasoning model (Qwen3, QwQ, an R1 distill) served without a reasoning parser (vLLM without ``--reasoning-parser``,
llama-server with ``--reasoning-format none``, an older Ollama) answers ``<think>...</think>`` then its answer, in the
content. The server here is a real HTTP server on 127.0.0.1 that answers as such a model would (a scripted stand-in for
it); the clients, the eval loop, the curriculum judge and the experience sandbox are the real ones. Was: each of them
read ``Choice.text`` with the ``<think>`` block in it, so a draft the model wrote while thinking was taken for its answer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.testing.http import ScriptedChatServer


@contextmanager
def reasoning_model(content: str) -> Iterator[str]:
    """A server whose every chat answer is ``content`` (the model list names ``m``); yields its base URL."""
    with ScriptedChatServer([content]) as server:
        yield server.base_url


def test_an_output_the_model_only_considered_while_thinking_is_not_said_in_an_eval_scripted_server() -> None:
    """The tau-style check of required outputs: '42.50' only inside ``<think>`` (the model then said the order is not
    eligible) was found in the reply, a false pass."""
    from ee_middleware.evals.loop import LoopConfig, run_conversation
    from ee_middleware.evals.matching import missing_outputs
    from ee_middleware.evals.tasks import EvalTask

    answer = "<think>\nThe refund would be 42.50 if the order were eligible, but it is past 30 days.\n</think>\n\nSorry, this order is not eligible."
    task = EvalTask(suite="tau", id="t1", category="c", turns=[[{"role": "user", "content": "Refund order 7?"}]], tools=[[]], reference=[])
    with reasoning_model(answer) as url:
        client = OpenAIChatClient(url, "m", retries=0)
        conversation = run_conversation(client, task, None, LoopConfig())
        client.close()
    assert conversation.replies == ["Sorry, this order is not eligible."]
    assert missing_outputs(["42.50"], conversation.replies) == ["42.50"]
    assert "<think>" not in json.dumps(conversation.messages), "the model is not sent its own drafts back as what it said"


def test_the_curriculum_judge_reads_its_final_verdict_not_a_draft_in_its_thinking_scripted_server() -> None:
    from ee_middleware.evals.curriculum import judge
    from ee_middleware.evals.tasks import Conversation

    verdict = (
        '<think>\nIf the booking had gone through I would answer {"reasoning": "booked", "reward": 1}. '
        'But the tool returned an error.\n</think>\n{"reasoning": "the booking tool returned an error", "reward": 0}'
    )
    with reasoning_model(verdict) as url:
        client = OpenAIChatClient(url, "m", retries=0)
        reward, why = judge(client, "book a table", Conversation(messages=[{"role": "user", "content": "book a table"}]))
        client.close()
    assert (reward, why) == (0.0, "the booking tool returned an error")


def test_the_experience_model_s_prediction_is_its_final_answer_not_a_draft_in_its_thinking_scripted_server(bfcl_store_path: Path) -> None:
    from ee_middleware.records import ToolCall
    from ee_middleware.replay.sandboxes.experience import ExperienceSandbox
    from ee_middleware.store.local import LocalExperienceStore

    store = LocalExperienceStore(bfcl_store_path)
    trajectory = next(iter(store.iter_trajectories()))
    store.close()
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    expert = step.action.tool_call
    assert expert is not None
    call = ToolCall(id="alt", name=expert.name, arguments={**expert.arguments, "__alt": 1})
    prediction = (
        '<think>\nA first guess: {"observation": "Table booked for 2", "is_error": false}. No: it is closed on Mondays.\n</think>\n'
        '{"reasoning": "closed on Mondays", "observation": "Error: restaurant closed on Mondays", "is_error": true}'
    )
    with reasoning_model(prediction) as url:
        sandbox = ExperienceSandbox(f"openai:{url}#m", store=str(bfcl_store_path))
        sandbox.reset(trajectory.environment)
        sandbox.at_step(trajectory, step)
        observation = sandbox.execute(call)
        sandbox.close()
    assert (observation.content, observation.is_error) == ("Error: restaurant closed on Mondays", True)
