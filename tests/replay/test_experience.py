"""The experience-model sandbox (DreamGym), its replay buffer and `ee experience eval`.

The model is either a scripted stand-in for an OpenAI-compatible server (the standard library's
``ThreadingHTTPServer`` on 127.0.0.1, answering ``GET /v1/models`` and ``POST /v1/chat/completions``),
or a tiny randomly initialised local model (garbage output, by design). Transitions are real: BFCL
expert trajectories recorded through a real LangGraph agent against the real bfcl-eval backends.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import SandboxError
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.retrieval import TransitionIndex, state_text, trajectory_transitions
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox, SyntheticObservationError, parse_prediction
from ee_middleware.replay.sandboxes.registry import build_sandbox, refusal_hints
from ee_middleware.store.local import LocalExperienceStore

Answer = Callable[[list[dict[str, Any]]], str]


@dataclass
class ScriptedExperienceModel:
    """A real HTTP server whose chat answers come from ``answer(messages)`` (a stand-in for a served experience model)."""

    answer: Answer
    requests: list[dict[str, Any]] = field(default_factory=list)
    base_url: str = ""

    @property
    def spec(self) -> str:
        return f"openai:{self.base_url}#em"


Reply = Callable[[dict[str, Any]], tuple[str, str]]
"""A chat request's body -> the answer's content and ``finish_reason``."""


def chat_handler(reply: Reply) -> type[BaseHTTPRequestHandler]:
    """A handler answering as an OpenAI-compatible chat server does (``GET /v1/models``, ``POST /v1/chat/completions``),
    its answers from ``reply``: the stand-in behind the scripted experience models of these tests."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send({"object": "list", "data": [{"id": "em"}]})

        def do_POST(self) -> None:
            content, finish_reason = reply(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0)))))
            message = {"role": "assistant", "content": content}
            self._send({"choices": [{"index": 0, "message": message, "finish_reason": finish_reason}]})

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def _handler(model: ScriptedExperienceModel) -> type[BaseHTTPRequestHandler]:
    def reply(body: dict[str, Any]) -> tuple[str, str]:
        model.requests.append(body)
        return model.answer(body["messages"]), "stop"

    return chat_handler(reply)


def copy_first_example(messages: list[dict[str, Any]]) -> str:
    """Answers with the best retrieved example's observation (the last demonstration), or an empty object when none was shown."""
    demonstrations = [m for m in messages[1:-1] if m["role"] == "assistant"]
    if not demonstrations:
        return json.dumps({"reasoning": "no example to go by", "observation": "{}", "is_error": False})
    best = json.loads(demonstrations[-1]["content"])
    return json.dumps({"reasoning": "a similar real call returned this", "observation": best["observation"], "is_error": best["is_error"]})


def _trajectories(path: Path) -> list[Trajectory]:
    store = LocalExperienceStore(path)
    try:
        return list(store.iter_trajectories())
    finally:
        store.close()


def _a_non_expert_call(trajectory: Trajectory) -> tuple[Any, ToolCall]:
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    expert = step.action.tool_call
    assert expert is not None
    return step, ToolCall(id="alt", name=expert.name, arguments={**expert.arguments, "__alt": 1})


# -- the replay buffer -----------------------------------------------------------------------------


def test_retrieval_finds_same_tool_transitions_and_never_returns_excluded_ones(bfcl_store_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    index = TransitionIndex()
    added = index.refresh(store)
    trajectories = list(store.iter_trajectories())
    assert added == sum(len(trajectory_transitions(t)) for t in trajectories) > 0
    assert index.refresh(store) == 0, "a second refresh indexes nothing new"

    probe = trajectory_transitions(trajectories[0])[0]
    hits = index.search(probe.tool, probe.arguments, probe.state, k=3)
    assert hits[0].id == probe.id, "the transition itself is the best match when not excluded"
    held_out = {trajectories[0].id, trajectories[1].id}
    hits = index.search(probe.tool, probe.arguments, probe.state, k=50, exclude_ids={probe.id}, exclude_trajectories=held_out)
    assert hits and all(h.id != probe.id and h.trajectory_id not in held_out for h in hits)
    same_tool = [h.tool == probe.tool for h in hits]
    assert same_tool == sorted(same_tool, reverse=True), "transitions of the same tool rank first"
    store.close()


def test_the_buffer_grows_with_real_rollouts_only(bfcl_store_path: Path, serve: Any) -> None:
    from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout

    store = LocalExperienceStore(bfcl_store_path)
    index = TransitionIndex()
    index.refresh(store)
    trajectory = next(iter(store.iter_trajectories()))
    step, call = _a_non_expert_call(trajectory)

    def rollout(rid: str, synthetic: bool) -> Rollout:
        return Rollout(
            id=rid, replay_id="r", trajectory_id=trajectory.id, step_index=step.index, branch_index=int(synthetic),
            action=Action(kind="tool_call", tool_call=call), proposer=ProposerInfo(policy="test"),
            observation=Observation(content="real" if not synthetic else "guess"), synthetic=synthetic, sandbox="bfcl", duration_ms=1.0,
        )  # fmt: skip

    record = ReplayRecord(replay_id="r", trajectory_id=trajectory.id, status="done", policy="test", sandbox="bfcl", k=2, seed=0)
    store.write_replay(record, [rollout("real-1", False), rollout("synthetic-1", True)])
    assert index.refresh(store) == 1
    assert [t.id for t in index.transitions[-1:]] == ["rollout:real-1"]
    store.close()


# -- the sandbox ------------------------------------------------------------------------------------


def test_parse_prediction_accepts_json_and_rejects_garbage() -> None:
    assert (
        parse_prediction('thinking...\n```json\n{"reasoning": "r", "observation": {"a": 1}, "is_error": true}\n```')["observation"]
        == '{"a": 1}'
    )
    for garbage in (
        "",
        "   ",
        "Sure! The tool returns 42.",
        '{"reasoning": "no observation"}',
        '{"observation": "x", "is_error": "maybe"}',
    ):
        with pytest.raises(SyntheticObservationError):
            parse_prediction(garbage)


def test_a_prediction_carries_the_model_the_retrieved_ids_and_the_reasoning(bfcl_store_path: Path, serve: Any) -> None:
    model = serve(copy_first_example)
    sandbox = build_sandbox(f"experience:{model.spec}", store=str(bfcl_store_path))
    assert isinstance(sandbox, ExperienceSandbox) and sandbox.kind == "experience"
    trajectory = _trajectories(bfcl_store_path)[0]
    step, call = _a_non_expert_call(trajectory)
    sandbox.reset(trajectory.environment)
    sandbox.at_step(trajectory, step)
    observation = sandbox.execute(call)
    lineage = sandbox.provenance()
    assert lineage is not None and lineage["model"] == model.spec and lineage["reasoning"] == "a similar real call returned this"
    assert len(lineage["retrieved"]) == 3 and not any(f":{trajectory.id}:" in r for r in lineage["retrieved"]), "never its own trajectory"
    assert observation.content and model.requests[-1]["temperature"] == 0.0

    expert = step.action.tool_call
    assert sandbox.execute(expert) == step.observation and sandbox.provenance() is None, "the expert's call keeps its recorded observation"
    requests = len(model.requests)
    snap = sandbox.snapshot()
    sandbox.restore(snap)
    assert len(model.requests) == requests
    sandbox.close()
    with pytest.raises(SandboxError):
        sandbox.execute(call)


def test_garbage_from_the_model_is_an_error_never_an_observation(bfcl_store_path: Path, serve: Any) -> None:
    model = serve(lambda messages: "I am not sure what the tool would say.")
    sandbox = ExperienceSandbox(model.spec, store=str(bfcl_store_path))
    trajectory = _trajectories(bfcl_store_path)[0]
    step, call = _a_non_expert_call(trajectory)
    sandbox.reset(None)
    sandbox.at_step(trajectory, step)
    with pytest.raises(SyntheticObservationError, match="no JSON object"):
        sandbox.execute(call)
    assert sandbox.provenance() is None
    sandbox.close()


def test_an_endpoint_that_is_down_fails_before_any_work() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SandboxError, match="cannot be reached"):
        build_sandbox(f"experience:openai:http://127.0.0.1:{port}/v1#em")
    with pytest.raises(SandboxError, match="experience:MODEL_SPEC"):
        build_sandbox("experience:")


def test_fidelity_gating_refuses_tools_below_their_threshold(serve: Any, tmp_path: Path) -> None:
    model = serve(copy_first_example)
    report = {"variants": {"retrieval": {"tools": {"ls": {"token_f1": 0.9}, "cd": {"token_f1": 0.2}}}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    options = {"min_fidelity": {"*": 0.5, "cd": 0.1, "mkdir": 0.95}, "fidelity": str(tmp_path / "report.json")}
    sandbox = build_sandbox(f"experience:{model.spec}", **options)
    assert [sandbox.covers(t) for t in ("ls", "cd", "mkdir", "rm")] == [True, True, False, False]
    sandbox.close()
    hints = refusal_hints(f"experience:{model.spec}", ["ls", "mkdir", "rm"], **options)
    assert set(hints) == {"mkdir", "rm"}
    assert "low fidelity" in hints["mkdir"] and "0.200" not in hints["mkdir"] and "never measured" in hints["rm"]


def test_the_tiny_random_model_answers_garbage_which_is_refused(bfcl_store_path: Path, tmp_path: Path) -> None:
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    folder = save_tiny_llama(tmp_path / "tiny", build_test_tokenizer(["ls cd mkdir observation reasoning {}"]), max_positions=4096)
    sandbox = build_sandbox(f"experience:local:{folder}", store=str(bfcl_store_path), max_tokens=12)
    trajectory = _trajectories(bfcl_store_path)[0]
    step, call = _a_non_expert_call(trajectory)
    sandbox.reset(None)
    sandbox.at_step(trajectory, step)
    with pytest.raises(SyntheticObservationError):
        sandbox.execute(call)
    sandbox.close()


# -- ee experience eval -----------------------------------------------------------------------------


def test_experience_eval_compares_no_retrieval_with_retrieval_on_the_same_held_out_set(
    bfcl_store_path: Path, serve: Any, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    model = serve(copy_first_example)
    out = tmp_path / "eval"
    args = ["experience", "eval", "--model", model.spec, "--store", str(bfcl_store_path), "--held-out", "0.34", "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    none, retrieval = report["variants"]["no-retrieval"], report["variants"]["retrieval"]
    assert none["overall"]["n"] == retrieval["overall"]["n"] == report["held_out_transitions"] > 0
    assert retrieval["overall"]["token_f1"] > none["overall"]["token_f1"]
    assert set(retrieval["tools"]) == set(none["tools"]) and all(
        "exact" in row and "error_agreement" in row for row in retrieval["tools"].values()
    )
    assert (out / "fidelity.png").read_bytes()[:4] == b"\x89PNG" and json.loads((out / "report.json").read_text())["top_k"] == 3

    # the report gates a replay: tools at or above the threshold are covered, the others refused
    fidelity = {tool: row["token_f1"] for tool, row in retrieval["tools"].items()}
    threshold = sorted(fidelity.values())[len(fidelity) // 2]
    sandbox = build_sandbox(f"experience:{model.spec}", min_fidelity={"*": threshold}, fidelity=str(out / "report.json"))
    assert {t for t in fidelity if sandbox.covers(t)} == {t for t, v in fidelity.items() if v >= threshold}
    sandbox.close()

    table = CliRunner().invoke(app, args[:-1], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "token F1" in table.stdout and "no-retrieval" in table.stdout


def _serve_failing_some(
    failing: Callable[[int], bool],
    answer: Answer = copy_first_example,
    *,
    refusal: tuple[int, str] = (500, "the model server is overloaded"),
) -> Any:
    """A fake server: the scripted experience model, except that chat requests numbered in ``failing`` (0-based,
    retries included) get ``refusal`` (status, message): by default HTTP 500, as from an intermittent model server (a
    timeout after the client's retries is the same ModelServerError)."""
    from contextlib import contextmanager
    from http.server import ThreadingHTTPServer

    from ee_middleware.testing.http import send_json, serving

    model = ScriptedExperienceModel(answer)
    attempts = iter(range(1 << 30))

    class Handler(_handler(model)):  # type: ignore[misc]
        def do_POST(self) -> None:
            if failing(next(attempts)):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                send_json(self, {"error": {"message": refusal[1]}}, status=refusal[0])
                return
            super().do_POST()

    @contextmanager
    def started() -> Any:
        with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
            model.base_url = url
            yield model

    return started()


def test_experience_eval_counts_a_refused_prediction_and_writes_no_report_that_measures_nothing_fake_server(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A prediction the server refuses (HTTP 400: a prompt longer than the model's context) in the middle of the
    evaluation fails alone, with its reason, as an unusable answer does; the tools' fidelity is measured over the
    answered predictions (before, the first model error ended the command with a traceback and no report). A model
    that answered no prediction writes no report: one from an earlier run is kept (it was replaced by one measuring
    nothing). A server that stops answering stops the eval instead (tests/cli/test_experience_cli.py)."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.models import openai_compat

    monkeypatch.setattr(openai_compat, "_sleep", lambda s: None)  # the client's back-off between retries
    out = tmp_path / "eval"
    too_long = (400, "This model's maximum context length is 2048 tokens. However, you requested 2311 tokens.")
    with _serve_failing_some(lambda attempt: attempt == 1, refusal=too_long) as model:  # the second prediction, not retried
        args = ["experience", "eval", "--model", model.spec, "--store", str(bfcl_store_path), "--held-out", "0.34", "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--json"])
        written = json.loads((out / "report.json").read_text())
        table = CliRunner().invoke(app, args, env={"COLUMNS": "200"})  # a second run, with no model error: no such column
    assert table.exit_code == 0 and "model err." not in table.stdout
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == written | {"chart": report["chart"], "report": report["report"], "error": None}
    none, retrieval = report["variants"]["no-retrieval"], report["variants"]["retrieval"]
    n = report["held_out_transitions"]
    assert report["model_errors"] == 1 and none["overall"]["model_errors"] == 1 and retrieval["overall"]["model_errors"] == 0
    assert none["overall"]["n"] == retrieval["overall"]["n"] == n and none["overall"]["answered"] == n - 1
    assert none["overall"]["failed"] >= 1 and any(r.startswith("the model failed: ") for r in none["overall"]["failure_reasons"])
    assert len(model.requests) == 2 * n - 1 + 2 * n, "every other prediction was made (then the second run's)"
    assert retrieval["overall"]["token_f1"] > none["overall"]["token_f1"]
    tool = next(t for t, row in none["tools"].items() if row["model_errors"])
    assert none["tools"][tool]["answered"] == none["tools"][tool]["n"] - 1

    kept = (out / "report.json").read_bytes()
    with _serve_failing_some(lambda attempt: True, refusal=too_long) as down:  # up for the endpoint check, then refusing all
        args = ["experience", "eval", "--model", down.spec, "--store", str(bfcl_store_path), "--held-out", "0.34", "--out", str(out)]
        for as_json in (["--json"], []):
            result = CliRunner().invoke(app, [*args, *as_json], env={"COLUMNS": "200"})
            assert result.exit_code == 1, result.output
            error = " ".join(result.stderr.split())
            assert f"every prediction of {down.spec} failed" in error and "HTTP 400" in error, error
            assert f"no report was written, and {out / 'report.json'} from an earlier run is kept" in error
            assert (out / "report.json").read_bytes() == kept
            if as_json:
                shown = json.loads(result.stdout)
                assert shown["error"].startswith(f"every prediction of {down.spec} failed") and shown["report"] is None
                assert shown["model_errors"] == 2 * n, "every prediction was made: a refusal fails its own alone"
            else:
                assert "model err." in result.stdout and "report:" not in result.stdout


# -- replay through the experience model -----------------------------------------------------------


class _ScriptedPolicy:
    """Proposes fixed calls at every state."""

    name = "scripted"

    def __init__(self, calls: list[ToolCall]) -> None:
        self.calls = calls

    def propose(self, point: Any, k: int, *, seed: int) -> Any:
        from ee_middleware.records import ProposerInfo
        from ee_middleware.replay.policies.protocol import Candidate, Proposals

        return Proposals([Candidate(call=c, proposer=ProposerInfo(policy=self.name)) for c in self.calls])

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _replay(store_path: Path, sandbox: ExperienceSandbox) -> tuple[Trajectory, Any]:
    from ee_middleware.replay.policies.proposer import Proposer
    from ee_middleware.replay.runner import ReplaySettings, replay_trajectory

    trajectory = next(t for t in _trajectories(store_path) if t.environment["entry_id"] == "multi_turn_base_0")
    policy = _ScriptedPolicy(
        [ToolCall(id="a", name="ls", arguments={"a": True}), ToolCall(id="b", name="mkdir", arguments={"dir_name": "x"})]
    )
    outcome = replay_trajectory(trajectory, sandbox, Proposer(policy, k=2, refill=None), ReplaySettings("dream", "scripted", k=2))
    sandbox.close()
    return trajectory, outcome


def test_replay_through_the_experience_model_stores_synthetic_rollouts_with_their_lineage(bfcl_store_path: Path, serve: Any) -> None:
    model = serve(copy_first_example)
    trajectory, outcome = _replay(bfcl_store_path, ExperienceSandbox(model.spec, store=str(bfcl_store_path)))
    tool_steps = [s for s in trajectory.steps if s.action.tool_call is not None]
    assert outcome.record.status == "done" and outcome.record.fidelity_mismatches == 0, "expert steps keep their recorded observations"
    assert len(outcome.rollouts) == 2 * len(tool_steps) == len(model.requests), "only the alternatives were predicted"
    store = LocalExperienceStore(bfcl_store_path)
    store.write_replay(outcome.record, outcome.rollouts)
    stored = list(store.iter_rollouts(replay_id="dream"))
    assert len(stored) == len(outcome.rollouts)
    for rollout in stored:
        lineage = rollout.synthetic_source.model_dump()
        assert "experience" not in rollout.proposer.settings, "the lineage has its own typed field"
        assert rollout.synthetic and rollout.sandbox == "experience" and rollout.proposer.policy == "scripted"
        assert lineage["model"] == model.spec and lineage["reasoning"] and len(lineage["retrieved"]) == 3
        assert not any(f":{trajectory.id}:" in r for r in lineage["retrieved"])
    index = TransitionIndex()
    index.refresh(store)
    assert not any(t.id.startswith("rollout:") for t in index.transitions), "synthetic rollouts never enter the replay buffer"
    store.close()


def test_a_rollout_the_real_sandbox_answered_is_stored_under_its_kind(bfcl_store_path: Path, serve: Any) -> None:
    """With ``real = "bfcl"`` the branches BFCL's backends ran were stored as ``sandbox="experience"`` (``synthetic``
    told them apart, the sandbox kind did not)."""
    model = serve(copy_first_example)
    _, outcome = _replay(bfcl_store_path, ExperienceSandbox(model.spec, store=str(bfcl_store_path), real="bfcl"))
    assert outcome.rollouts and not model.requests, "the real sandbox covers every BFCL tool: nothing predicted"
    assert {(r.sandbox, r.synthetic) for r in outcome.rollouts} == {("bfcl", False)}
    assert outcome.record.sandbox == "experience", "the replay's record keeps the sandbox the job was given"


def test_each_observation_says_who_answered_it(bfcl_store_path: Path, serve: Any) -> None:
    """The expert's own call is answered by its recorded observation (``recorded``, real), a covered tool by the real
    sandbox (its kind), any other call by the model (``None``: the lineage says which, under ``experience``). Before, the
    recorded observation of an experience sandbox with ``real`` was labelled with the real sandbox's kind."""
    model = serve(copy_first_example)
    trajectory = next(t for t in _trajectories(bfcl_store_path) if t.environment["entry_id"] == "multi_turn_base_0")
    step = next(s for s in trajectory.steps if s.action.tool_call is not None)
    expert = step.action.tool_call
    other = ToolCall(id="o", name="ls", arguments={"a": True})
    assert (other.name, other.arguments) != (expert.name, expert.arguments)
    for real, covered in ((None, None), ("bfcl", "bfcl")):
        sandbox = ExperienceSandbox(model.spec, store=str(bfcl_store_path), **({"real": real} if real else {}))
        try:
            sandbox.reset(trajectory.environment)
            sandbox.at_step(trajectory, step)
            if real is None:
                assert sandbox.execute(expert) == step.observation and sandbox.answered_kind == "recorded"
                assert sandbox.provenance() is None
            sandbox.execute(other)
            assert sandbox.answered_kind == covered
            assert (sandbox.provenance() is None) is (covered is not None)
        finally:
            sandbox.close()


def test_replay_never_stores_garbage_predictions_and_says_why(bfcl_store_path: Path, serve: Any) -> None:
    model = serve(lambda messages: "The tool probably works." if len(messages) else "")
    _, outcome = _replay(bfcl_store_path, ExperienceSandbox(model.spec, store=str(bfcl_store_path)))
    assert outcome.record.status == "done" and outcome.rollouts == [] and outcome.record.branches == 0
    failures = outcome.record.details["synthetic_failures"]
    assert failures == {"no JSON object with an 'observation' field in the answer": len(model.requests)} and model.requests


class LsAndMkdirPolicy(_ScriptedPolicy):
    """The scripted policy as a job's policy spec (``tests.replay.test_experience:LsAndMkdirPolicy``)."""

    def __init__(self, **sampling: Any) -> None:
        super().__init__([ToolCall(id="a", name="ls", arguments={"a": True}), ToolCall(id="b", name="mkdir", arguments={"dir_name": "x"})])


def test_a_replay_job_refuses_tools_below_their_fidelity_and_says_which(bfcl_store_path: Path, serve: Any, tmp_path: Path) -> None:
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay

    model = serve(copy_first_example)
    settings = {"min_fidelity": {"mkdir": 0.9}, "fidelity": {"mkdir": 0.25}}
    config = ReplayConfig(
        store=bfcl_store_path,
        sandbox=f"experience:{model.spec}",
        sandbox_settings=settings,
        policy="tests.replay.test_experience:LsAndMkdirPolicy",
        k=2,
        limit=2,
    )
    assert config.replay_id != config.model_copy(update={"sandbox_settings": {}}).replay_id
    summary = run_replay(config)
    assert summary.refused_tools.get("mkdir", 0) > 0 and set(summary.refused_tools) == {"mkdir"}
    assert "low fidelity" in summary.refused_hints["mkdir"] and "0.250" in summary.refused_hints["mkdir"]
    store = LocalExperienceStore(bfcl_store_path)
    stored = list(store.iter_rollouts(replay_id=config.replay_id))
    store.close()
    assert stored and "ls" in {r.action.tool_call.name for r in stored} and all(r.synthetic for r in stored)
    # the refused mkdir proposals topped up by the refill, with tools the sandbox provides
    others = [r for r in stored if r.action.tool_call.name != "ls"]
    assert all(r.action.tool_call.name != "mkdir" and r.proposer.settings.get("refill_for") for r in others), others


@pytest.mark.parametrize("retriever", ["bm25", "bm25s"])
def test_the_sandbox_indexes_what_the_store_gained_on_reset(bfcl_store_path: Path, serve: Any, retriever: str) -> None:
    from ee_middleware.records import Action, Observation, ProposerInfo, ReplayRecord, Rollout

    model = serve(copy_first_example)
    sandbox = ExperienceSandbox(model.spec, store=str(bfcl_store_path), refresh_s=0.0, retriever=retriever)
    before = len(sandbox.index)
    assert sandbox.index.retriever_name == retriever
    trajectory = _trajectories(bfcl_store_path)[0]
    step, call = _a_non_expert_call(trajectory)
    store = LocalExperienceStore(bfcl_store_path)
    rollout = Rollout(
        id="real-2", replay_id="r", trajectory_id=trajectory.id, step_index=step.index, branch_index=0,
        action=Action(kind="tool_call", tool_call=call), proposer=ProposerInfo(policy="test"),
        observation=Observation(content="real"), sandbox="bfcl", duration_ms=1.0,
    )  # fmt: skip
    store.write_replay(
        ReplayRecord(replay_id="r", trajectory_id=trajectory.id, status="done", policy="t", sandbox="bfcl", k=1, seed=0), [rollout]
    )
    store.close()
    sandbox.index.search(call.name, call.arguments)  # queried before the store grew
    sandbox.reset(None)
    assert len(sandbox.index) == before + 1 and sandbox.index.transitions[-1].id == "rollout:real-2"
    assert sandbox.index.search(call.name, call.arguments, state_text(step.state), k=1)[0].id == "rollout:real-2", "found at once"
    sandbox.close()


def test_experience_eval_adds_the_trained_variant_on_the_same_held_out_set_and_its_report_gates_the_trained_model(
    bfcl_store_path: Path, serve: Any, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    base = serve(copy_first_example)
    trained = serve(lambda messages: json.dumps({"reasoning": "r", "observation": "trained guess", "is_error": False}))
    trained_spec = f"openai:{trained.base_url}#em-v1"
    out = tmp_path / "eval"
    args = ["experience", "eval", "--model", base.spec, "--trained", trained_spec, "--store", str(bfcl_store_path)]
    result = CliRunner().invoke(app, [*args, "--held-out", "0.34", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    variants = report["variants"]
    assert list(variants) == ["no-retrieval", "retrieval", "retrieval+trained"] and report["trained"] == trained_spec
    assert [v["model"] for v in variants.values()] == [base.spec, base.spec, trained_spec]
    assert [v["top_k"] for v in variants.values()] == [0, 3, 3]
    n = report["held_out_transitions"]
    assert all(v["overall"]["n"] == n for v in variants.values()) and len(trained.requests) == n == len(base.requests) // 2
    assert all(len(r["messages"]) == 2 + 2 * 3 for r in trained.requests), "with retrieval: three demonstrations"
    assert variants["retrieval+trained"]["overall"]["token_f1"] < variants["retrieval"]["overall"]["token_f1"]

    # the fidelity gate reads the variant that measured the model it replays with
    from ee_middleware.replay.sandboxes.experience import load_fidelity

    report_path = out / "report.json"
    assert load_fidelity(report_path, model=trained_spec) == {t: r["token_f1"] for t, r in variants["retrieval+trained"]["tools"].items()}
    assert load_fidelity(report_path, model=base.spec) == {t: r["token_f1"] for t, r in variants["retrieval"]["tools"].items()}
    with pytest.raises(SandboxError, match="fidelity_variant"):
        load_fidelity(report_path, model="openai:http://elsewhere/v1#other")
    assert load_fidelity(report_path, "retrieval+trained", model="openai:http://elsewhere/v1#other")

    table = CliRunner().invoke(app, [*args, "--held-out", "0.34", "--out", str(out)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "retrieval+trained" in table.stdout and "em-v1" in table.stdout
    assert (out / "fidelity.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unreachable_trained_model_fails_before_any_prediction(bfcl_store_path: Path, serve: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    base = serve(copy_first_example)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["experience", "eval", "--model", base.spec, "--trained", f"openai:http://127.0.0.1:{port}/v1#em", "--store"]
    result = CliRunner().invoke(app, [*args, str(bfcl_store_path), "--held-out", "0.34", "--out", str(tmp_path / "e")])
    assert result.exit_code != 0 and "cannot be reached" in result.output
    assert base.requests == [] and not (tmp_path / "e" / "report.json").exists()


def test_a_reward_outside_0_1_or_not_a_number_is_dropped_and_the_observation_kept() -> None:
    for raw in ("7", "-0.5", "NaN", "Infinity", '"yes"', "true", "null"):
        prediction = parse_prediction(f'{{"observation": "done", "is_error": false, "reward": {raw}}}')
        assert prediction["observation"] == "done" and prediction["reward"] is None, raw
    assert parse_prediction('{"observation": "done", "reward": 1}')["reward"] == 1.0
    assert parse_prediction('{"observation": "done", "reward": 0.25}')["reward"] == 0.25


def test_a_fidelity_report_that_is_not_an_experience_eval_report_is_refused_with_the_fix(tmp_path: Path) -> None:
    from ee_middleware.replay.sandboxes.experience import load_fidelity

    for report in (
        {"variants": {"retrieval": {"tools": {"ls": {"n": 1}}}}},  # no token_f1
        {"variants": {"retrieval": "x"}},
        {"variants": {"retrieval": {"model": "m"}}},  # no tools
        # a score that is no F1 (NaN compared false with every min_fidelity: the tool passed any threshold)
        {"variants": {"retrieval": {"tools": {"ls": {"token_f1": float("nan")}}}}},
        {"variants": {"retrieval": {"tools": {"ls": {"token_f1": 5}}}}},
        {"variants": {"retrieval": {"tools": {"ls": {"token_f1": -0.1}}}}},
        {"variants": {"retrieval": {"tools": {"ls": {"token_f1": True}}}}},
    ):
        path = tmp_path / "report.json"
        path.write_text(json.dumps(report))
        with pytest.raises(SandboxError, match="ee experience eval --json"):
            load_fidelity(path)
    path.write_text(json.dumps({"variants": {"retrieval": {"model": "m", "top_k": 3, "tools": {"ls": {"token_f1": 0.5}}}}}))
    assert load_fidelity(path) == {"ls": 0.5}
    for inline in ({"cd": float("nan")}, {"cd": 1.5}, {"cd": -1}):  # ([replay.sandbox_settings] fidelity = { cd = nan })
        with pytest.raises(SandboxError, match=r"fidelity\['cd'\] = .* is not a token_f1 score: give a number from 0 to 1"):
            load_fidelity(inline)
    assert load_fidelity({"cd": 1, "ls": 0.0}) == {"cd": 1.0, "ls": 0.0}
