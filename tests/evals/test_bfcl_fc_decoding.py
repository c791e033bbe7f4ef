"""BFCL's suites read an answer as bfcl-eval's function-calling runner reads it, and say where they read more.

The reference is bfcl-eval's own code, compiled from the installed package (:mod:`.bfcl_reference`): the OpenAI
function-calling handler's ``_parse_query_response_FC`` and ``decode_ast`` (``json.loads`` of each call's arguments),
and ``eval_runner``'s entry scorers. The one reading ee adds: an answer with no ``tool_calls`` that is wholly calls in
text (a local model's chat template writes ``<tool_call>`` blocks; so does a served model without a tool parser) is
read, never one quoted in prose, and each such answer is counted (``text_calls``) and named in the report.

A text-only model (ee's ``local:`` models) is read as bfcl-eval's handlers for local function-calling models read its
completion (Qwen FC's and Phi FC's, also compiled from the installed package): its template's call blocks wherever they
stand in the answer, prose around them ignored; still never a bare call quoted in prose.
"""

from __future__ import annotations

import json
import textwrap
import zlib
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.bfcl.official import call_string
from ee_middleware.evals.bfcl.suite import BFCLSuite
from ee_middleware.evals.clients import OracleClient
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.runner import result_row
from ee_middleware.evals.tasks import EvalTask, TaskResult
from ee_middleware.testing.http import send_json, serving

from .bfcl_reference import bfcl_verdict, local_fc_calls, local_fc_multi_turn_verdict, local_fc_verdict


def _call(name: str, arguments: str) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}


def _answer(content: str = "", calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return message


def _ours(category: str, index: int, message: dict[str, Any]) -> tuple[TaskResult, EvalTask]:
    suite = BFCLSuite(category)
    task = suite.tasks()[index]
    return suite.run(OracleClient(), replace(task, reference=[[message]]), 0, LoopConfig()), task


def _first_name(category: str) -> str:
    return str(BFCLSuite(category).tasks()[0].tools[0][0]["function"]["name"])


TRIANGLE = "calculate_triangle_area"  # simple_python_0
RIGHT = json.dumps({"base": 10, "height": 5})
ARGUMENTS = [
    ("empty text", ""),
    ("null", "null"),
    ("encoded twice", json.dumps(RIGHT)),
    ("NaN", '{"base": NaN, "height": 5}'),
    ("a list", "[10, 5]"),
    ("cut short", '{"base": 10, "height": '),
]


@pytest.mark.parametrize(("kind", "arguments"), ARGUMENTS, ids=[k for k, _ in ARGUMENTS])
@pytest.mark.parametrize("category", ["simple", "irrelevance", "live_irrelevance", "live_relevance"])
def test_structured_arguments_are_decoded_as_bfcl_eval_s_function_calling_handler_decodes_them(
    category: str, kind: str, arguments: str
) -> None:
    """Before (eval sweep): '' and 'null' were read as {} (a call: irrelevance failed, live_relevance passed), a text
    encoded twice was decoded twice (simple passed), and NaN was refused (no call): 11 verdicts the other way round from
    bfcl-eval's, which runs json.loads once on each call's arguments."""
    name = TRIANGLE if category == "simple" else _first_name(category)
    ours, task = _ours(category, 0, _answer(calls=[_call(name, arguments)]))
    assert (ours.success, ours.error_type) == bfcl_verdict(task, _answer(calls=[_call(name, arguments)])), ours.reason


def test_a_function_name_is_taken_as_sent() -> None:
    """Before: ' calculate_triangle_area ' was stripped and passed; bfcl-eval compares the name as sent."""
    message = _answer(calls=[_call(f" {TRIANGLE} ", RIGHT)])
    ours, task = _ours("simple", 0, message)
    assert (ours.success, ours.error_type) == bfcl_verdict(task, message) == (False, "simple_function_checker:wrong_func_name")
    right = _answer(calls=[_call(TRIANGLE, RIGHT)])
    assert _ours("simple", 0, right)[0].success and bfcl_verdict(task, right) == (True, None)


@pytest.mark.parametrize("category", ["simple", "multiple", "parallel", "parallel_multiple", "live_simple", "live_parallel"])
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("prose", _answer("I cannot tell without more details.")),
        ("empty tool_calls", _answer("", [])),
        ("empty content", _answer("")),
    ],
    ids=["prose", "empty tool_calls", "empty content"],
)
def test_an_answer_without_a_call_fails_with_bfcl_eval_s_own_label(category: str, kind: str, message: dict[str, Any]) -> None:
    """Before: 'ast_decoder:decoder_wrong_output_format' for all three, a label BFCL gives a decoded answer of the wrong
    shape: bfcl-eval says decoder_failed for prose and lets its checker fail an empty list (wrong_count)."""
    ours, task = _ours(category, 0, message)
    expected = bfcl_verdict(task, message)
    assert not expected[0] and (ours.success, ours.error_type) == expected, (ours.reason, expected)


PROSE_WITH_JSON = (
    'Sorry, none of these functions computes that. For reference, a call would look like {"name": "NAME", "arguments": '
    '{"weight": 70, "height": 1.8}} but that computes something else.'
)


@pytest.mark.parametrize("category", ["irrelevance", "live_irrelevance", "simple", "live_relevance"])
@pytest.mark.parametrize(
    "text",
    [
        PROSE_WITH_JSON,
        f'I will compute it with {{"name": "NAME", "arguments": {RIGHT}}} - the area is 25.',
        "Let me look first.\nNAME(base=10, height=5)\nThen decide.",
        f'Here it is:\n```json\n{{"name": "NAME", "arguments": {RIGHT}}}\n```\nDone.',
        f'Calling it now: <tool_call>{{"name": "NAME", "arguments": {RIGHT}}}</tool_call> and the area is 25.',
    ],
    ids=["json quoted", "json mid-sentence", "python line", "fenced in prose", "tag in prose"],
)
def test_a_call_quoted_in_prose_is_no_call(category: str, text: str) -> None:
    """Before: ee pulled the JSON call out of the middle of the prose: a refusal quoting a call failed irrelevance and
    'I will compute it with {call} - the area is 25.' passed simple; bfcl-eval reads no call in either."""
    name = TRIANGLE if category == "simple" else _first_name(category)
    message = _answer(text.replace("NAME", name))
    ours, task = _ours(category, 0, message)
    assert (ours.success, ours.error_type) == bfcl_verdict(task, message), ours.reason
    assert result_row(ours, "m")["text_calls"] == 0


WHOLE = [
    f'<tool_call>{{"name": "{TRIANGLE}", "arguments": {RIGHT}}}</tool_call>',
    f'\n<tool_call>\n{{"name": "{TRIANGLE}", "arguments": {RIGHT}}}\n</tool_call>\n',
    f'{{"name": "{TRIANGLE}", "arguments": {RIGHT}}}',
    f'[{{"name": "{TRIANGLE}", "arguments": {RIGHT}}}]',
    f"[{TRIANGLE}(base=10, height=5)]",
    f'```json\n{{"name": "{TRIANGLE}", "arguments": {RIGHT}}}\n```',  # a sweep: scored 0 ('not JSON and not a Python call')
    f'<|python_tag|>{{"name": "{TRIANGLE}", "parameters": {RIGHT}}}',
]


@pytest.mark.parametrize("text", WHOLE, ids=["tag", "tag and newlines", "json", "json list", "python list", "fenced", "llama tag"])
def test_an_answer_that_is_wholly_calls_in_text_is_read_and_counted(text: str) -> None:
    """A model without structured tool calls (a local model, a server with no tool parser) still scores its calls, and
    the row says they came from text (bfcl-eval's function-calling runner would fail the answer: decoder_failed)."""
    ours, task = _ours("simple", 0, _answer(text))
    assert ours.success, ours.reason
    assert result_row(ours, "m")["text_calls"] == 1 and bfcl_verdict(task, _answer(text)) == (False, "ast_decoder:decoder_failed")
    structured = _ours("simple", 0, _answer(calls=[_call(TRIANGLE, RIGHT)]))[0]
    assert structured.success and result_row(structured, "m")["text_calls"] == 0


def test_an_answer_in_call_markup_that_cannot_be_read_says_why() -> None:
    """Was (a sweep): 'the model answered in text and made no function call' (markup other than <tool_call> was not taken
    for a try), which told an engineer their model does not call tools."""
    for text in (
        f'<|python_tag|>{{"name": "{TRIANGLE}", "parameters": {{"base": 10,',
        f'```JSON\n{{"name": "{TRIANGLE}", "arguments": {{"base"',
    ):
        ours, _ = _ours("simple", 0, _answer(text))
        assert not ours.success and ours.error_type == "ast_decoder:decoder_failed"
        assert ours.reason.startswith("the answer holds a call that could not be read ("), ours.reason


class _TextCalls(BaseHTTPRequestHandler):
    """A real OpenAI-compatible server with no tool parser: each bfcl:simple answer is the oracle's calls as
    ``<tool_call>`` blocks in ``content`` (no ``tool_calls``); an irrelevance answer is a refusal quoting a call."""

    answers: dict[str, str]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = next(m["content"] for m in body["messages"] if m["role"] == "user")
        message = {"role": "assistant", "content": self.answers[question]}
        send_json(self, {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})


def _blocks(reference: dict[str, Any]) -> str:
    return "\n".join(
        f'<tool_call>{{"name": "{c["function"]["name"]}", "arguments": {c["function"]["arguments"]}}}</tool_call>'
        for c in reference["tool_calls"]
    )


def test_a_served_model_without_a_tool_parser_is_scored_and_its_text_calls_are_counted_and_named(tmp_path: Path) -> None:
    """Before (eval sweep, the same server): 100% on bfcl:simple with nothing saying that every call was read from text,
    where bfcl-eval's FC pipeline fails each answer; and a refusal quoting a call failed bfcl:irrelevance."""
    simple, irrelevance = BFCLSuite("simple", 5).tasks(), BFCLSuite("irrelevance", 2).tasks()
    answers = {t.turns[0][-1]["content"]: _blocks(t.reference[0][0]) for t in simple}
    answers |= {t.turns[0][-1]["content"]: PROSE_WITH_JSON.replace("NAME", t.tools[0][0]["function"]["name"]) for t in irrelevance}
    handler = type("Handler", (_TextCalls,), {"answers": answers})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    out = tmp_path / "run"
    with serving(server) as url:
        args = ["eval", "run", "--suite", "bfcl:simple:5", "--suite", "bfcl:irrelevance:2", "--endpoint", url, "--model", "m"]
        result = CliRunner().invoke(app, [*args, "--out", str(out), "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)
    assert (first["suite"], first["success_rate"], first["text_calls"]) == ("bfcl:simple", 1.0, 5)
    assert (second["suite"], second["success_rate"], second["text_calls"]) == ("bfcl:irrelevance", 1.0, 0)
    note = "Note: 5 answers' calls were read from text, not tool_calls (5 in bfcl:simple)"
    assert note in result.stderr and "ast_decoder:decoder_failed" in result.stderr, result.stderr
    assert note in (out / "report.md").read_text() and json.loads((out / "summary.json").read_text())["text_calls"] == 5
    rows = pl.read_parquet(out / "results.parquet")
    assert rows.filter(pl.col("suite") == "bfcl:simple")["text_calls"].to_list() == [1] * 5


LOCAL_FACTORY = """
from ee_middleware.models.local import LocalGenerator
from ee_middleware.testing.tiny_models import build_test_tokenizer, build_tiny_llama, force_answers

ANSWER = {answer!r}


def client():
    tokenizer = build_test_tokenizer([ANSWER, "Find the area of a triangle with a base of 10 units and height of 5 units."])
    model = build_tiny_llama(tokenizer)
    force_answers(model, [tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    return LocalGenerator.from_objects(model, tokenizer, model_name="tiny")
"""


BLOCK = f'<tool_call>\n{{"name": "{TRIANGLE}", "arguments": {RIGHT}}}\n</tool_call>'


@pytest.mark.parametrize(
    "answer",
    [BLOCK, f"I will compute the area with the formula tool.\n{BLOCK}", f"{BLOCK}\nThe area is 25 square units."],
    ids=["block", "a sentence before", "a sentence after"],
)
def test_a_local_text_model_s_tool_call_block_is_still_scored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str) -> None:
    """The project's local models answer in text through their chat template's <tool_call> blocks: a real (tiny) model
    behind LocalGenerator writing the right call scores it, counted as read from text, with a sentence besides the block
    too (as bfcl-eval's Qwen FC handler reads it; before, such an answer made no call)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from ee_middleware.evals.job import EvalJob
    from ee_middleware.evals.runner import run_eval

    assert local_fc_verdict(BFCLSuite("simple", 1).tasks()[0], answer) == (True, None)
    module = f"text_model_client_{zlib.crc32(answer.encode())}"  # one module per answer (a module is imported once)
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(LOCAL_FACTORY.format(answer=answer)))
    monkeypatch.syspath_prepend(str(tmp_path))
    [summary] = run_eval(EvalJob(suites=["bfcl:simple:1"], model=f"{module}:client", out=str(tmp_path / "run"), max_tokens=64))
    rows = pl.read_parquet(tmp_path / "run" / "results.parquet")
    assert (summary["success_rate"], summary["text_calls"]) == (1.0, 1), rows["reason"].to_list()


# --- a text-only model's answers, as bfcl-eval's handlers for local models read them ---------------------------------


class _ScriptedLocalModel:
    """A real tiny model behind LocalGenerator (real tokenizer and chat template, real generation) whose output layer is
    forced to write ``answers`` in order: each prompt it is given gets the next one (the transformers' forward pass is
    the only thing scripted)."""

    def __init__(self, answers: list[str]) -> None:
        from ee_middleware.models.local import LocalGenerator
        from ee_middleware.testing.tiny_models import build_test_tokenizer, build_tiny_llama, force_answers

        tokenizer = build_test_tokenizer(answers, vocab_size=800)
        model = build_tiny_llama(tokenizer)
        scripts = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
        assert [tokenizer.decode(ids, skip_special_tokens=True) for ids in scripts] == answers  # the text comes back as written
        self.state = force_answers(model, scripts)
        self.client = LocalGenerator.from_objects(model, tokenizer, model_name="tiny")


def _ee_calls(result: TaskResult) -> list[str]:
    return [call_string(c.name, c.arguments) for c in result.conversation.calls]


LOCAL_BLOCK = BLOCK.replace(TRIANGLE, "NAME")
PARALLEL_BLOCKS = f"{LOCAL_BLOCK}\nThen the second one.\n{LOCAL_BLOCK.replace('10', '12')}"
LOCAL_ANSWERS = {
    "a sentence before": f"I will compute the area first.\n{LOCAL_BLOCK}",
    "a sentence after": f"{LOCAL_BLOCK}\nThe area is 25.",
    "prose between blocks": PARALLEL_BLOCKS,
    "reasoning then prose": f"<think>Which tool fits?</think>\nLet me compute it.\n{LOCAL_BLOCK}",
    "an unreadable block skipped": f'Here:\n<tool_call>\n{{"name": "NAME", "arguments": {{"base": 10,\n</tool_call>\n{LOCAL_BLOCK}',
    "a block of another shape": LOCAL_BLOCK.replace('"arguments"', '"parameters"'),
    "a list in a block": LOCAL_BLOCK.replace("{", "[{", 1).replace("}\n</tool_call>", "}]\n</tool_call>"),
    "arguments as JSON text": LOCAL_BLOCK.replace(RIGHT, json.dumps(RIGHT)),
    "a tag inline in prose": f'Calling it now: <tool_call>{{"name": "NAME", "arguments": {RIGHT}}}</tool_call> and the area is 25.',
    "json quoted in prose": f'I will compute it with {{"name": "NAME", "arguments": {RIGHT}}} - the area is 25.',
    "python line in prose": "Let me look first.\nNAME(base=10, height=5)\nThen decide.",
    "fenced in prose": f'Here it is:\n```json\n{{"name": "NAME", "arguments": {RIGHT}}}\n```\nDone.',
    "prose only": "I cannot tell without more details.",
}


@pytest.mark.parametrize("category", ["simple", "irrelevance", "live_relevance"])
def test_a_local_text_model_s_answers_are_read_as_bfcl_eval_s_qwen_fc_handler_reads_them(category: str) -> None:
    """A real tiny model behind LocalGenerator answering in text: ee reads the calls bfcl-eval's Qwen FC handler reads
    (``decode_ast``) and its verdict is bfcl-eval's (with the entry scorer), whatever prose surrounds the
    blocks; a call quoted in prose is still no call. Before: a sentence besides the <tool_call> blocks left the answer
    with no call (simple failed, where bfcl-eval passes it)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    suite = BFCLSuite(category)
    task = suite.tasks()[0]
    name = TRIANGLE if category == "simple" else _first_name(category)
    answers = {kind: text.replace("NAME", name) for kind, text in LOCAL_ANSWERS.items()}
    model = _ScriptedLocalModel(list(answers.values()))
    for kind, text in answers.items():
        ours = suite.run(model.client, task, 0, LoopConfig())
        assert _ee_calls(ours) == (local_fc_calls(text, executed=False) or []), (kind, ours.reason)
        assert ours.success == local_fc_verdict(task, text)[0], (kind, ours.reason, local_fc_verdict(task, text))
        assert result_row(ours, "m")["text_calls"] == (1 if ours.conversation.calls else 0), kind
    if category == "simple":  # the sentences that broke it: bfcl-eval passes these
        assert all(local_fc_verdict(task, answers[kind]) == (True, None) for kind in ("a sentence before", "a sentence after"))


def test_a_local_text_model_s_phi_style_blocks_are_read_as_bfcl_eval_s_phi_fc_handler_reads_them() -> None:
    """Phi's ``<|tool_call|>[...]<|/tool_call|>`` blocks (the closing tag may be missing) are read wherever they stand,
    items exactly ``{"name", "arguments"}``, as bfcl-eval's Phi FC handler reads them."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    suite = BFCLSuite("simple")
    task = suite.tasks()[0]
    call = f'{{"name": "{TRIANGLE}", "arguments": {RIGHT}}}'
    answers = [
        f"I will compute it.\n<|tool_call|>[{call}]<|/tool_call|>",
        f"I will compute it.\n<|tool_call|>{call}",
        f'Sure.\n<|tool_call|>[{call[:-1]}, "id": "1"}}]<|/tool_call|>',
        f"Sure.\n<|tool_call|>[{call}, oops]<|/tool_call|>",
    ]
    model = _ScriptedLocalModel(answers)
    verdicts = []
    for text in answers:
        ours = suite.run(model.client, task, 0, LoopConfig())
        assert _ee_calls(ours) == (local_fc_calls(text, "phi", executed=False) or []), (text, ours.reason)
        verdicts.append(ours.success)
        assert ours.success == local_fc_verdict(task, text, "phi")[0], (text, ours.reason)
    assert verdicts == [True, True, False, False]


def _local_turns(task: EvalTask, *, arguments_as_text: bool = False) -> list[list[str]]:
    """Per user turn, a text-only model's answers: the ground truth's calls as <tool_call> blocks, with a sentence
    before them and another between each two, then a closing sentence (``arguments_as_text``: each call's arguments
    written as the JSON text of the object)."""
    turns = []
    for index, turn in enumerate(task.reference):
        encode = json.dumps if arguments_as_text else str
        blocks = [
            f'<tool_call>\n{{"name": "{c["function"]["name"]}", "arguments": {encode(c["function"]["arguments"])}}}\n</tool_call>'
            for message in turn
            for c in message.get("tool_calls") or []
        ]
        turns.append([f"For step {index}, I will run these.\n" + "\nNext, this one.\n".join(blocks), "Done, that is all."])
    return turns


def test_a_local_text_model_s_multi_turn_answers_with_prose_score_as_bfcl_eval_s_qwen_fc_runner_scores_them() -> None:
    """multi_turn_base_0 answered by a real tiny model behind LocalGenerator writing each turn's ground-truth calls as
    <tool_call> blocks among sentences: the calls are run and the entry passes, as bfcl-eval's Qwen FC handler and
    multi-turn runner score the same completions. Before: every such answer made no call (the turn ended at once) and
    the entry failed (multi_turn:empty_turn_model_response). Arguments written as JSON text are run too, as bfcl-eval's
    decode_execute loads them (single-turn categories refuse them, as its decode_ast does); a bare JSON call in prose
    still makes none."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    suite = BFCLSuite("multi_turn_base")
    task = suite.tasks()[0]
    turns = _local_turns(task)
    model = _ScriptedLocalModel([text for turn in turns for text in turn])
    ours = suite.run(model.client, task, 0, LoopConfig())
    assert (ours.success, ours.error_type) == local_fc_multi_turn_verdict(task, turns) == (True, None), ours.reason
    assert len(ours.conversation.calls) == sum(len(t) for t in task.payload["ground_truth"])
    assert result_row(ours, "m")["text_calls"] == len(turns)

    as_text = _local_turns(task, arguments_as_text=True)  # decode_execute loads arguments given as JSON text
    model = _ScriptedLocalModel([text for turn in as_text for text in turn])
    ours = suite.run(model.client, task, 0, LoopConfig())
    assert (ours.success, ours.error_type) == local_fc_multi_turn_verdict(task, as_text) == (True, None), ours.reason

    quoted = [[turn[0].replace("<tool_call>\n", "I would call ").replace("\n</tool_call>", " here.")] for turn in turns]
    model = _ScriptedLocalModel([turn[0] for turn in quoted])
    ours = suite.run(model.client, task, 0, LoopConfig())
    assert (ours.success, ours.error_type) == local_fc_multi_turn_verdict(task, quoted), ours.reason
    assert not ours.success and not ours.conversation.calls
