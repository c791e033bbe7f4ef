"""``ee experience eval``'s fidelity metric and held-out split (:mod:`ee_middleware.replay.experience_eval`).

The metric is checked against values computed by hand, then on the real BFCL expert store (trajectories recorded
through a real LangGraph agent against the real bfcl-eval backends) with a scripted experience model behind a real
HTTP server (the ``serve`` fixture)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ConfigError, ModelServerError
from ee_middleware.replay.experience_eval import evaluate, fields_f1, split_store, token_f1, words_f1
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import send_json, serving
from tests.replay.test_experience import ScriptedExperienceModel, _handler, copy_first_example


def test_a_wrong_value_under_the_right_key_scores_nothing() -> None:
    """token_f1 split every snake_case key into its parts, so a key counted 4-5 times and its value once: a wrong
    value scored 0.800-0.889, above the docs' example gates (0.6 for every tool, 0.8 for send_email)."""
    assert token_f1('{"payment_transaction_status": "failed"}', '{"payment_transaction_status": "succeeded"}') == 0.0
    assert token_f1('{"current_working_directory": "/"}', '{"current_working_directory": "temp"}') == 0.0
    assert token_f1('{"current_working_directory": "documents"}', '{"current_working_directory": "document"}') == 0.0
    assert token_f1('{"current_working_directory": "temp"}', '{"current_working_directory": "temp"}') == 1.0
    # not JSON: the words as they appear, no name split into parts (2 shared of 3 + 3 words)
    assert words_f1("payment_status failed today", "payment_status succeeded today") == pytest.approx(2 * 2 / 6)
    assert words_f1("File not found", "file not found") == pytest.approx(2 * 2 / 6), "case is kept"


def test_the_documented_worked_example_computed_by_hand() -> None:
    """docs/experience-model.md's example, leaf by leaf.

    real:      {"status": "declined", "reason": "card expired in March", "codes": [51, 54]}   4 leaves
    predicted: {"status": "approved", "reason": "card expired", "codes": [51]}                3 leaves
    status: approved vs declined, 0; reason: word F1 of 2 shared words in 2 + 4 = 2*2/6 = 2/3; codes: 51 found, 1
    (54 unmatched, 0). C = 5/3, F1 = 2C / (3 + 4) = 10/21 = 0.476.
    """
    real = '{"status": "declined", "reason": "card expired in March", "codes": [51, 54]}'
    predicted = '{"status": "approved", "reason": "card expired", "codes": [51]}'
    assert token_f1(predicted, real) == pytest.approx(10 / 21)
    assert token_f1(real, predicted) == pytest.approx(10 / 21), "symmetric"
    assert fields_f1({"a": 1.0, "b": [True, None]}, {"a": 1, "b": [None, True]}) == 1.0, "numbers by value, arrays in any order"
    assert fields_f1({"a": True}, {"a": 1}) == 0.0 and fields_f1({"a": "1"}, {"a": 1}) == 0.0, "a boolean or a string is no number"
    assert fields_f1({"x": {"y": "ok"}}, {"y": "ok"}) == 0.0, "a value under another path is another field"
    assert token_f1("[]", "{}") == 0.0 and token_f1("{}", " {} ") == 1.0
    # one side JSON, the other prose: word F1 of the texts, the key counting once as a word
    assert token_f1("declined", '{"status": "declined"}') == pytest.approx(2 * 1 / 3)


def wrong_values(messages: list[dict[str, Any]]) -> str:
    """An experience model that writes the best example's fields with every value wrong (keys right)."""

    def spoil(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: spoil(item) for key, item in value.items()}
        if isinstance(value, list):
            return [spoil(item) for item in value]
        return "WRONG"

    demonstrations = [m for m in messages[1:-1] if m["role"] == "assistant"]
    observation = json.loads(demonstrations[-1]["content"])["observation"] if demonstrations else "{}"
    try:
        spoiled = json.dumps(spoil(json.loads(observation)))
    except ValueError:
        spoiled = "WRONG"
    return json.dumps({"reasoning": "same fields as a similar call", "observation": spoiled, "is_error": False})


def _held_out_questions(store_path: Path) -> tuple[Any, dict[str, str]]:
    """The real store's split at 0.34 (seed 0), and each held-out transition's real observation by the question the
    model is asked (a prompt's last message, without retrieved examples)."""
    from ee_middleware.replay.sandboxes.experience import build_prompt

    store = LocalExperienceStore(store_path)
    try:
        split = split_store(store, share=0.34, seed=0)
    finally:
        store.close()
    return split, {build_prompt(t.task, t.state, t.tool, t.arguments, [])[-1]["content"]: t.observation for _, t in split.held_out}


def test_right_keys_with_wrong_values_score_near_zero_on_the_real_store(bfcl_store_path: Path, serve: Any) -> None:
    """On the real BFCL transitions, a model that copies the retrieved example's keys and gets every value wrong scored
    a token F1 of 0.22 here (keys counted in parts, and as often as their values); it now scores only where a real
    value is empty (an empty object or array is the same leaf either way). The real answers written otherwise (keys in another order, indented) score
    1.0, though never an exact match."""
    split, real = _held_out_questions(bfcl_store_path)

    def reformatted(messages: list[dict[str, Any]]) -> str:
        """The real answer (looked up by the question), its JSON keys reversed and indented."""

        def reverse(value: Any) -> Any:
            if isinstance(value, dict):
                return {key: reverse(value[key]) for key in reversed(list(value))}
            return [reverse(item) for item in value] if isinstance(value, list) else value

        observation = real[messages[-1]["content"]]
        try:
            observation = json.dumps(reverse(json.loads(observation)), indent=2)
        except ValueError:
            pass
        return json.dumps({"reasoning": "r", "observation": observation, "is_error": False})

    scores = {}
    for name, answer in (("wrong", wrong_values), ("reformatted", reformatted)):
        sandbox = ExperienceSandbox(serve(answer).spec, index=split.index)
        try:
            report = evaluate(sandbox, split, top_k=3)
        finally:
            sandbox.close()
        scores[name] = report["variants"]["retrieval"]["overall"]
    assert scores["wrong"]["n"] >= 10 and scores["wrong"]["failed"] == 0
    assert scores["wrong"]["token_f1"] < 0.1, scores["wrong"]
    assert scores["reformatted"]["token_f1"] == 1.0 and scores["reformatted"]["exact"] < 1.0, scores["reformatted"]


def test_a_split_that_holds_out_everything_is_refused_and_zero_still_holds_out_one(bfcl_store_path: Path, serve: Any) -> None:
    """--held-out 1.0 left nothing to retrieve, yet the report's 'retrieval' variant (the one a replay's fidelity gate
    reads) was the model without retrieval, with no word of it."""
    from tests.replay.test_experience import copy_first_example

    store = LocalExperienceStore(bfcl_store_path)
    try:
        everything, nothing = split_store(store, share=1.0), split_store(store, share=0.0)
        trajectories = len(list(store.iter_trajectories(status="approved")))
    finally:
        store.close()
    assert len(everything.held_out_ids) == trajectories and len(everything.index) == 0
    sandbox = ExperienceSandbox(serve(copy_first_example).spec, index=everything.index)
    try:
        with pytest.raises(ConfigError, match=r"replay buffer is empty.*Hold out a smaller share"):
            evaluate(sandbox, everything)
    finally:
        sandbox.close()
    assert len(nothing.held_out_ids) == 1 and len(nothing.index) > 0, "at 0, one trajectory is still held out (documented)"


@dataclass
class DyingExperienceModel(ScriptedExperienceModel):
    """The scripted experience model whose server dies at a prediction: see :func:`dies_after`."""

    attempts: int = 0
    """Prediction requests that reached the server, the unanswered one included."""
    waits: list[float] = field(default_factory=list)
    """The client's back-off waits between retries (see the test's ``_sleep``)."""


@contextmanager
def dies_after(answered: int) -> Iterator[DyingExperienceModel]:
    """The scripted experience model (answers with the best retrieved example) behind a real HTTP server that dies at
    prediction ``answered + 1``: it reads that request, stops listening (the client's retries are refused) and closes
    the connection unanswered, as a model server killed mid-request does."""
    model = DyingExperienceModel(copy_first_example)

    class Dying(_handler(model)):  # type: ignore[misc]
        def do_POST(self) -> None:
            model.attempts += 1
            if model.attempts <= answered:
                super().do_POST()
                return
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.server.shutdown()  # (from a handler's thread: the serving thread's loop ends)
            self.server.server_close()  # nothing listens on the port any more
            self.close_connection = True  # and this request's connection closes without an answer

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Dying)) as url:
        model.base_url = url
        yield model


def test_a_server_that_dies_stops_the_evaluation_at_that_prediction(bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model error after the client's retries (the server died) was counted as a failed prediction and the evaluation
    went on: every prediction left was tried 3 times against a dead server (38 predictions, 90 requests, 41 s in the
    report's run), then made a report whose retrieval variant answered nothing. It now raises the server's
    ModelServerError at the first prediction that got no answer, as a replay stops, and makes no report."""
    from ee_middleware.models import openai_compat

    store = LocalExperienceStore(bfcl_store_path)
    try:
        split = split_store(store, share=0.34, seed=0)
    finally:
        store.close()
    assert len(split.held_out) > 5
    with dies_after(5) as dying:
        monkeypatch.setattr(openai_compat, "_sleep", dying.waits.append)  # the back-off between retries, counted
        sandbox = ExperienceSandbox(dying.spec, index=split.index)
        made: list[int] = []
        try:
            with pytest.raises(ModelServerError, match=r"^No usable answer from .* after 3 attempt\(s\)") as raised:
                evaluate(sandbox, split, top_k=3, progress=made.append)
        finally:
            sandbox.close()
    assert raised.value.url == f"{dying.base_url}/chat/completions"
    assert sum(made) == 5, "the predictions before the one that got no answer"
    assert dying.attempts == 6, "one prediction (its retries refused), then no other prediction"
    assert len(dying.waits) == 2, (
        "the back-off of its retries; the GET /models check after them is one attempt (unanswered: the server is gone)"
    )


@dataclass
class OnePromptCrashes(ScriptedExperienceModel):
    """The scripted experience model whose server fails on one prompt: see :func:`crashes_on`."""

    crashes: int = 0
    """Requests answered with HTTP 500 (the one prompt's, retries included)."""
    listings: int = 0
    """``GET /models`` requests (each answered)."""


@contextmanager
def crashes_on(prompt: str) -> Iterator[OnePromptCrashes]:
    """The scripted experience model (answers with the best retrieved example) behind a real HTTP server that answers
    HTTP 500 to every request whose last message is ``prompt``, as a server whose tokenizer or chat template throws on
    one input does (vLLM sends its exception as a 500), and answers every other request, ``GET /models`` included."""
    model = OnePromptCrashes(copy_first_example)

    class Crashing(_handler(model)):  # type: ignore[misc]
        def do_GET(self) -> None:
            model.listings += 1
            super().do_GET()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if json.loads(body)["messages"][-1]["content"] == prompt:
                model.crashes += 1
                crash = {"object": "error", "message": "'NoneType' object is not subscriptable", "type": "InternalServerError", "code": 500}
                send_json(self, crash, status=500)
                return
            self.rfile = io.BytesIO(body)
            super().do_POST()

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Crashing)) as url:
        model.base_url = url
        yield model


def one_held_out_prompt(split: Any) -> tuple[str, int]:
    """The last message of a held-out transition's prompt (the same in every variant: the examples come before it) and
    how many held-out transitions share it."""
    from ee_middleware.replay.sandboxes.experience import build_prompt

    prompts = [build_prompt(t.task, t.state, t.tool, t.arguments, [])[-1]["content"] for _, t in split.held_out]
    return prompts[len(prompts) // 2], prompts.count(prompts[len(prompts) // 2])


def test_a_prompt_the_server_always_fails_on_fails_that_prediction_alone(bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers HTTP 500 to one held-out prompt (every attempt) and every other request stopped the whole
    evaluation at that prediction with no report, and a re-run stopped at the same one. The server still answers GET
    /models, so the failure is that prediction's: counted in model_errors with its reason, and the evaluation goes on."""
    from ee_middleware.models import openai_compat

    store = LocalExperienceStore(bfcl_store_path)
    try:
        split = split_store(store, share=0.34, seed=0)
    finally:
        store.close()
    prompt, sharing = one_held_out_prompt(split)
    waits: list[float] = []
    monkeypatch.setattr(openai_compat, "_sleep", waits.append)
    with crashes_on(prompt) as crashing:
        sandbox = ExperienceSandbox(crashing.spec, index=split.index)
        made: list[int] = []
        try:
            report = evaluate(sandbox, split, top_k=3, progress=made.append)
        finally:
            sandbox.close()
    assert sum(made) == 2 * len(split.held_out), "every prediction of both variants was made"
    assert report["model_errors"] == 2 * sharing, "that prompt's prediction in each variant, and no other"
    assert crashing.crashes == 3 * 2 * sharing, "each of its predictions retried by the client (3 attempts)"
    assert crashing.listings == 1 + 2 * sharing, "the check before any prediction, then one after each failure"
    for data in report["variants"].values():
        overall = data["overall"]
        assert overall["model_errors"] == sharing and overall["answered"] == len(split.held_out) - sharing
        [reason] = [r for r in overall["failure_reasons"] if r.startswith("the model failed")]
        assert "after 3 attempt(s): HTTP 500" in reason and "'NoneType' object is not subscriptable" in reason, reason


def test_a_server_whose_generation_is_dead_behind_a_live_listing_stops_the_evaluation(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM with a dead engine (or a gateway listing models itself) answers GET /models and fails every completion: the
    evaluation stops after a few predictions in a row fail so, instead of retrying and backing off on every one left."""
    from ee_middleware.models import openai_compat
    from ee_middleware.replay.experience_eval import SERVER_FAILURES_IN_A_ROW

    store = LocalExperienceStore(bfcl_store_path)
    try:
        split = split_store(store, share=0.34, seed=0)
    finally:
        store.close()
    assert len(split.held_out) > SERVER_FAILURES_IN_A_ROW
    monkeypatch.setattr(openai_compat, "_sleep", lambda _s: None)
    model = OnePromptCrashes(copy_first_example)

    class DeadEngine(_handler(model)):  # type: ignore[misc]
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            model.crashes += 1
            dead = {"object": "error", "message": "Background loop has errored already.", "type": "InternalServerError", "code": 500}
            send_json(self, dead, status=500)

    made: list[int] = []
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), DeadEngine)) as url:
        model.base_url = url
        sandbox = ExperienceSandbox(model.spec, index=split.index)
        try:
            with pytest.raises(ModelServerError, match="failed the last 3 predictions in a row") as stopped:
                evaluate(sandbox, split, top_k=3, progress=made.append)
        finally:
            sandbox.close()
    assert sum(made) == SERVER_FAILURES_IN_A_ROW - 1 and model.crashes == 3 * SERVER_FAILURES_IN_A_ROW
    assert "Background loop has errored already" in str(stopped.value) and stopped.value.url.startswith(url)


def test_a_model_answering_the_whole_observation_of_a_recording_cut_when_stored_scores_in_full(bfcl_store_path: Path, serve: Any) -> None:
    """Was (sweep S2): a model answering the real tool's whole answer scored exact 0 and a token F1 below 1 where the
    stored observation had been cut to its first characters (Observation.truncated_chars), which replay compares as the
    real answer's start. A real BFCL split whose held-out observations are cut in half, scripted models behind a real
    HTTP server answering the whole observation (full marks) and a wrong one (none)."""
    import dataclasses

    split, whole = _held_out_questions(bfcl_store_path)
    split.held_out = [
        (
            trajectory,
            dataclasses.replace(
                t, observation=t.observation[: len(t.observation) // 2], truncated_chars=len(t.observation) - len(t.observation) // 2
            ),
        )
        for trajectory, t in split.held_out
    ]

    def answer_whole(messages: list[dict[str, Any]]) -> str:
        return json.dumps({"reasoning": "r", "observation": whole[messages[-1]["content"]], "is_error": False})

    def answer_other(messages: list[dict[str, Any]]) -> str:
        return json.dumps({"reasoning": "r", "observation": "something else entirely", "is_error": False})

    scores = {}
    for name, answer in (("whole", answer_whole), ("other", answer_other)):
        sandbox = ExperienceSandbox(serve(answer).spec)
        try:
            report = evaluate(sandbox, split, top_k=0)
        finally:
            sandbox.close()
        scores[name] = report["variants"]["no-retrieval"]["overall"]
    assert scores["whole"]["n"] >= 10 and scores["whole"]["exact"] == scores["whole"]["token_f1"] == 1.0, scores["whole"]
    assert scores["other"]["exact"] == 0.0 and scores["other"]["token_f1"] < 0.2, scores["other"]


@pytest.mark.parametrize("with_a_plain_answer", [False, True])
def test_a_small_store_drawn_all_into_the_share_keeps_one_trajectory_to_retrieve(bfcl_store_path: Path, with_a_plain_answer: bool) -> None:
    """A store of 5 trajectories at the default 0.2 had every one held out about once in 3,125 seeds or id sets (a flaky
    benchmark test found it): the buffer was empty and `ee experience eval` refused. Below a share of 1, one of two or more
    now stays in the buffer: the one a smaller share would release first; also beside an approved trajectory that called
    no tool (it gives the buffer nothing: a review)."""
    from ee_middleware.replay.experience_eval import held_out_draw, is_held_out
    from ee_middleware.testing.store_conformance import sample_trajectory

    store = LocalExperienceStore(bfcl_store_path)
    try:
        ids = [t.id for t in store.iter_trajectories(status="approved")]
        if with_a_plain_answer:
            store.write([sample_trajectory("a-plain-answer", steps=0, app=store.get(ids[0]).app)])
            store.approve(["a-plain-answer"], by="test")
        assert len(ids) >= 2
        share = 0.5
        seed = next(s for s in range(100_000) if all(is_held_out(tid, share, s) for tid in ids))
        split = split_store(store, share=share, seed=seed)
        smaller = split_store(store, share=max(held_out_draw(tid, seed) for tid in ids) - 1e-12, seed=seed)
    finally:
        store.close()
    assert len(split.held_out_ids) == len(ids) - 1 and len(split.index) > 0
    assert split.held_out_ids == smaller.held_out_ids, "the one indexed is the one the next smaller share releases"
    assert {t.id for t, _ in split.held_out} == split.held_out_ids
