"""ee eval gate: paired comparison of two real runs and the policy."""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.gate import UNRECORDED, GatePolicy, gate, mcnemar_exact, newcombe_paired
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from ee_middleware.testing.http import send_json, serving


def test_mcnemar_exact_and_the_paired_interval() -> None:
    assert mcnemar_exact(9, 2) == pytest.approx(2 * (1 + 11 + 55) / 2**11)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0
    low, high = newcombe_paired(12, 9, 2, 21)
    assert low < (9 - 2) / 44 < high and low >= -1 and high <= 1
    symmetric = newcombe_paired(20, 5, 5, 20)
    assert math.isclose(symmetric[0], -symmetric[1])  # no difference: an interval centred on zero
    wide, narrow = newcombe_paired(4, 2, 1, 3), newcombe_paired(40, 20, 10, 30)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # ten times the tasks, a narrower interval


@pytest.mark.parametrize(
    ("cells", "published"),
    [((36, 12, 2, 0), (0.0569, 0.3404)), ((18, 12, 2, 18), (0.0562, 0.3290)), ((12, 9, 2, 21), (0.0112, 0.2954))],
)
def test_the_paired_interval_is_newcombes_method_10_with_its_continuity_corrected_correlation(cells, published) -> None:
    """Newcombe (1998), Table II, examples (a) and (b), and the sweep's case against biostatUZH's
    ``confIntPairedProportion``. Was: the correlation without its correction, [0.0182, 0.2892] for the last, too narrow
    wherever ad > bc."""
    assert newcombe_paired(*cells) == pytest.approx(published, abs=5e-5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gate")
    out = {}
    for model in ("oracle", "noop"):
        out[model] = root / model
        run_eval(EvalJob(suites=["bfcl:multi_turn_base:25", "bfcl:irrelevance:20"], model=model, out=str(out[model])))
    return out


def test_a_better_candidate_passes_and_a_worse_one_fails_with_reasons(runs: dict[str, Path]) -> None:
    better = gate(runs["oracle"], runs["noop"], GatePolicy(min_tasks=20, require_significant=True))
    assert better.passed, better.reasons
    [irrelevance, multi] = better.suites
    assert (multi.suite, multi.tasks, multi.delta, multi.candidate_only) == ("bfcl:multi_turn_base", 25, 1.0, 25)
    assert multi.p_value == pytest.approx(2 / 2**25) and multi.ci_low > 0.8
    assert irrelevance.delta == 0 and irrelevance.p_value == 1.0
    worse = gate(runs["noop"], runs["oracle"], GatePolicy(min_tasks=20))
    assert not worse.passed
    assert any("bfcl:multi_turn_base: regression -1.000" in r for r in worse.reasons)
    assert any(r.startswith("overall: delta") for r in worse.reasons)
    too_few = gate(runs["oracle"], runs["noop"], GatePolicy(min_tasks=21))
    assert too_few.reasons == ["bfcl:irrelevance: 20 paired task(s), fewer than min_tasks = 21"]


def _run_dir(folder: Path, outcomes: dict[str, bool], suite: str = "s") -> Path:
    folder.mkdir()
    rows = [{"suite": suite, "task_id": t, "trial": 0, "success": ok} for t, ok in outcomes.items()]
    pl.DataFrame(rows).write_parquet(folder / "results.parquet")
    return folder


def test_missing_tasks_and_suites_fail_the_gate(tmp_path: Path) -> None:
    base = _run_dir(tmp_path / "b", {f"t{i}": True for i in range(30)})
    cand = _run_dir(tmp_path / "c", {f"t{i}": True for i in range(25)})
    result = gate(cand, base, GatePolicy())
    assert result.reasons == [
        "s: the candidate lacks 5 task(s) the baseline ran (t25, t26, t27, t28, t29); run both on the same tasks "
        "(the same suite specs, task counts included)"
    ]
    other = _run_dir(tmp_path / "o", {f"t{i}": True for i in range(30)}, suite="other")
    assert not gate(other, base).passed


def test_a_candidate_run_on_more_tasks_than_the_baseline_is_refused_naming_them(tmp_path: Path) -> None:
    run_eval(EvalJob(suites=["bfcl:simple:5"], model="oracle", out=str(tmp_path / "cand")))
    run_eval(EvalJob(suites=["bfcl:simple:3"], model="noop", out=str(tmp_path / "live")))
    result = gate(tmp_path / "cand", tmp_path / "live", GatePolicy(min_tasks=1))
    assert not result.passed  # before: PASS on the 3 shared tasks, the candidate's 5-task score beside the baseline's 3
    assert result.reasons == [
        "bfcl:simple: the baseline lacks 2 task(s) the candidate ran (simple_python_3, simple_python_4); run both on the same "
        "tasks (the same suite specs, task counts included)"
    ]
    assert result.suites[0].extra == ["simple_python_3", "simple_python_4"]


def test_a_pass_the_numbers_cannot_back_says_so(tmp_path: Path) -> None:
    for model, spec in (("oracle", "bfcl:simple:1"), ("noop", "bfcl:simple:1")):
        run_eval(EvalJob(suites=[spec], model=model, out=str(tmp_path / model)))
    one_task_win = gate(tmp_path / "oracle", tmp_path / "noop", GatePolicy(min_tasks=1))
    assert one_task_win.passed and one_task_win.reasons == []  # the policy allows it (min_tasks = 1)
    [note] = one_task_win.notes
    assert "+100.0 points (1 task(s) gained, 0 lost, 1 paired) is not significant (McNemar p = 1 >= alpha 0.05" in note
    assert "require_significant = true" in note
    assert gate(tmp_path / "oracle", tmp_path / "noop", GatePolicy(min_tasks=1, require_significant=True)).notes == []  # a reason instead
    tie = gate(tmp_path / "oracle", tmp_path / "oracle", GatePolicy(min_tasks=1))
    assert tie.passed and tie.notes[0].startswith("no task changed outcome: both pass 1 of 1 paired task(s)")
    shown = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(tmp_path / "oracle"), "--baseline", str(tmp_path / "noop"), "--min-tasks", "1"]
    )
    assert shown.exit_code == 0 and "Note: the gain of +100.0 points" in " ".join(shown.output.split())
    data = json.loads(
        CliRunner()
        .invoke(
            app,
            ["eval", "gate", "--candidate", str(tmp_path / "oracle"), "--baseline", str(tmp_path / "noop"), "--min-tasks", "1", "--json"],
        )
        .output
    )
    assert data["notes"] == one_task_win.notes


def test_ee_eval_gate_cli_json_policy_file_and_exit_code(runs: dict[str, Path], tmp_path: Path) -> None:
    policy = tmp_path / "gate.toml"
    policy.write_text("[gate]\nmin_tasks = 20\nmax_regression = 0.0\n")
    ok = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(runs["oracle"]), "--baseline", str(runs["noop"]), "--policy", str(policy), "--json"]
    )
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["passed"] and "McNemar exact" in data["test"] and data["policy"]["max_regression"] == 0.0
    bad = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(runs["noop"]), "--baseline", str(runs["oracle"]), "--policy", str(policy)]
    )
    assert bad.exit_code == 1 and "FAIL" in bad.output
    policy.write_text("[gate]\nmin_taks = 3\n")
    typo = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(runs["noop"]), "--baseline", str(runs["oracle"]), "--policy", str(policy)]
    )
    assert typo.exit_code == 1 and "min_taks" in typo.output


def test_the_gate_result_is_recorded_on_the_adapter_only_from_a_run_of_it(runs: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from ee_middleware.adapters.registry import open_registry
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama
    from tests.adapters.conftest import train_shaped_adapter

    base = save_tiny_llama(tmp_path / "base", build_test_tokenizer(["a tiny corpus for a tiny model"]))
    registry = open_registry(tmp_path / "registry")
    record = registry.register(train_shaped_adapter(base, tmp_path / "adapter"), app="support-bot")
    args = ["eval", "gate", "--candidate", str(runs["oracle"]), "--baseline", str(runs["noop"]), "--min-tasks", "20"]
    # the oracle's run is no run of the adapter: recorded, its pass would let the adapter's promote through
    # (a run of it is recorded: tests/adapters/test_eval_answering_model.py)
    refused = CliRunner().invoke(app, [*args, "--adapter", record.name, "-r", str(tmp_path / "registry"), "--json"])
    assert refused.exit_code == 1 and f"did not evaluate {record.name}: its model is oracle" in " ".join(refused.output.split())
    assert open_registry(tmp_path / "registry").get(record.name).evals == []
    alone = CliRunner().invoke(app, [*args, "--adapter", record.name])
    assert alone.exit_code == 2 and "--adapter and --registry go together" in alone.output


def test_runs_with_different_trials_per_task_are_not_gated_against_each_other(tmp_path: Path) -> None:
    base = _run_dir(tmp_path / "b", {f"t{i}": i % 2 == 0 for i in range(30)})
    three = tmp_path / "c"
    three.mkdir()
    rows = [{"suite": "s", "task_id": f"t{i}", "trial": k, "success": True} for i in range(30) for k in range(3)]
    pl.DataFrame(rows).write_parquet(three / "results.parquet")
    result = gate(three, base, GatePolicy())
    assert not result.passed
    assert result.reasons == [
        "s: the candidate ran 3 trial(s) per task and the baseline 1, so their pass^k are not comparable; run both with the same --trials"
    ]


def _trials_dir(folder: Path, rows: list[tuple[str, int, bool, str | None]], append: bool = False) -> None:
    folder.mkdir(exist_ok=True)
    frame = pl.DataFrame([{"suite": "s", "task_id": t, "trial": k, "success": ok, "reason": why} for t, k, ok, why in rows])
    if append:
        frame = pl.concat([pl.read_parquet(folder / "results.parquet"), frame])
    frame.write_parquet(folder / "results.parquet")


def test_the_gate_names_the_tasks_that_regressed_with_the_candidates_reason_and_those_that_improved(tmp_path: Path) -> None:
    """Before: only counts (baseline_only: 2), so a person could not tell which tasks regressed, nor why."""
    base, cand = tmp_path / "b", tmp_path / "c"
    _trials_dir(base, [("t1", 0, True, None), ("t2", 0, True, None), ("t3", 0, False, "wrong file"), ("t4", 0, True, None)])
    _trials_dir(cand, [("t1", 0, True, None), ("t1", 1, False, "late"), ("t2", 0, False, "state_mismatch: no mv"), ("t2", 1, False, "x")])
    _trials_dir(cand, [("t3", 0, True, None)], append=True)
    result = gate(cand, base, GatePolicy(min_tasks=1))
    [suite] = result.suites
    assert suite.regressed == [
        {"task_id": "t1", "reason": "failed 1 of 2 trials: late"},
        {"task_id": "t2", "reason": "failed 2 of 2 trials: state_mismatch: no mv"},
    ]
    assert suite.improved == ["t3"] and suite.missing == ["t4"]
    assert any(r.startswith("s: the candidate lacks 1 task(s) the baseline ran (t4);") for r in result.reasons)
    out = CliRunner().invoke(app, ["eval", "gate", "--candidate", str(cand), "--baseline", str(base), "--min-tasks", "1"])
    assert out.exit_code == 1 and "t2: failed 2 of 2 trials: state_mismatch: no mv" in out.output and "improved" in out.output, out.output
    listed = json.loads(CliRunner().invoke(app, ["eval", "gate", "--candidate", str(cand), "--baseline", str(base), "--json"]).output)
    assert [r["task_id"] for r in listed["suites"][0]["regressed"]] == ["t1", "t2"]


def test_a_tie_with_offsetting_changes_gets_a_note(tmp_path: Path) -> None:
    """Before: one task gained and one lost passed with notes: [] (a note came only where no task changed outcome),
    though the README promises a note on a tie."""
    base = _run_dir(tmp_path / "b", {"t0": True, "t1": False, "t2": True})
    cand = _run_dir(tmp_path / "c", {"t0": False, "t1": True, "t2": True})
    result = gate(cand, base, GatePolicy(min_tasks=1, max_regression=0.5))
    assert result.passed and result.reasons == [], result.reasons
    [note] = [n for n in result.notes if not n.startswith(UNRECORDED)]  # (run folders written here, no run.json)
    assert note.startswith("a tie: the candidate gained 1 task(s) and lost as many (3 paired; McNemar p = 1)"), note
    assert "cannot tell the models apart" in note and "a tie passes while min_improvement is 0" in note
    shown = CliRunner().invoke(app, ["eval", "gate", "--candidate", str(cand), "--baseline", str(base), "--min-tasks", "1"])
    assert shown.exit_code == 0 and "Note: a tie: the candidate gained 1 task(s)" in " ".join(shown.output.split()), shown.output


def test_require_significant_on_a_significant_regression_says_it_regressed_with_p(runs: dict[str, Path], tmp_path: Path) -> None:
    """Before: 'overall: the improvement is not significant (McNemar p = 5.96e-08, alpha 0.05)' where the candidate lost
    25 tasks and gained none (p < alpha)."""
    worse = gate(runs["noop"], runs["oracle"], GatePolicy(min_tasks=20, require_significant=True))
    [overall] = [r for r in worse.reasons if r.startswith("overall: a")]
    assert overall == (
        "overall: a significant regression, delta -0.556 (0 task(s) gained, 25 lost, 45 paired; McNemar p = 5.96e-08 < alpha "
        "0.05), where require_significant asks for a significant improvement"
    ), overall
    assert not any("improvement is not significant" in r for r in worse.reasons)
    tie_dir = _run_dir(tmp_path / "tie", {"t0": True})
    [tie] = [r for r in gate(tie_dir, tie_dir, GatePolicy(min_tasks=1, require_significant=True)).reasons if r.startswith("overall")]
    assert (
        tie
        == "overall: no improvement, delta +0.000 (0 task(s) gained, 0 lost, 1 paired), where require_significant asks for a significant improvement"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_number_in_a_gate_policy_is_refused_as_such(value: str, runs: dict[str, Path], tmp_path: Path) -> None:
    """Before: 'min_improvement: Input should be less than or equal to 1 (got nan)', as if the value were too large."""
    policy = tmp_path / "gate.toml"
    policy.write_text(f"[gate]\nmin_improvement = {value}\nalpha = {value}\n")
    with pytest.raises(ConfigError, match=r"min_improvement: Input should be a finite number.*alpha: Input should be a finite number"):
        GatePolicy.load(policy)
    out = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(runs["oracle"]), "--baseline", str(runs["noop"]), "--policy", str(policy)]
    )
    assert out.exit_code == 1 and "min_improvement: Input should be a finite number" in out.output, out.output


CANARY_DOMAIN = '''
from dataclasses import replace

from ee_middleware.evals.tau.domains.library import domain as library


def with_canary():
    """The library domain plus a 'canary' split that holds no task yet."""
    shipped = library()
    return replace(shipped, splits={**shipped.splits, "canary": lambda: []})
'''


@pytest.fixture
def canary_suite(tmp_path: Path) -> Iterator[str]:
    """``tau:PACKAGE.domain:with_canary:canary``: a user's tau split with no task (a package on sys.path)."""
    package = f"canary_{abs(hash(str(tmp_path)))}"
    root = tmp_path / "src" / package
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "domain.py").write_text(CANARY_DOMAIN)
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        yield f"tau:{package}.domain:with_canary:canary"
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def test_a_suite_that_scored_no_task_beside_a_scored_one_is_a_reason_not_a_crash(canary_suite: str, tmp_path: Path) -> None:
    """Both runs hold a suite with no task next to bfcl:simple. Before: AttributeError ('str' object has no attribute
    'get'), from `ee eval gate` and from ee improve's gate stage alike (the loop over unscored suites rebound the
    candidate's failure reasons), and no decision."""
    from ee_middleware.jobs.deploy import likelihood_reasons, metrics_moved

    for model in ("oracle", "noop"):
        run_eval(EvalJob(suites=[canary_suite, "bfcl:simple:3"], model=model, out=str(tmp_path / model)))
    suite = canary_suite.rsplit(":", 1)[0] + ":canary"
    expected = f"{suite}: no task was scored (the suite has no task)"
    policy_file = tmp_path / "improve.toml"
    policy_file.write_text("[gate]\nmin_tasks = 1\n")
    # As ee improve's gate stage calls it: the run folders as recorded (text) and the nightly file's policy.
    outcome = gate(str(tmp_path / "oracle"), str(tmp_path / "noop"), GatePolicy.load(policy_file, nightly=True))
    assert outcome.reasons == [expected], outcome.reasons
    [simple] = outcome.suites
    assert (simple.suite, simple.tasks, simple.candidate_only) == ("bfcl:simple", 3, 3)
    assert simple.regressed == [] and simple.improved == ["simple_python_0", "simple_python_1", "simple_python_2"]
    assert likelihood_reasons(outcome.to_dict(), None, required=False) == [] and metrics_moved(outcome.to_dict(), None)
    worse = gate(str(tmp_path / "noop"), str(tmp_path / "oracle"), GatePolicy(min_tasks=1))
    assert expected in worse.reasons and [r["task_id"] for r in worse.suites[0].regressed] == [
        "simple_python_0",
        "simple_python_1",
        "simple_python_2",
    ]
    shown = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(tmp_path / "oracle"), "--baseline", str(tmp_path / "noop"), "--min-tasks", "1"]
    )
    assert shown.exit_code == 1 and "no task was scored (the suite has no task)" in " ".join(shown.output.split()), shown.output
    assert "AttributeError" not in shown.output


class _ServedOracle(BaseHTTPRequestHandler):
    """A real OpenAI-compatible server answering each bfcl:simple question with its oracle call, cut in half (finish
    reason 'length') when the request's max_tokens is under 100, as a served model cut at its limit would be."""

    answers: dict[str, dict[str, Any]]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        question = next(m["content"] for m in body["messages"] if m["role"] == "user")
        message, finish = json.loads(json.dumps(self.answers[question])), "tool_calls"
        if body["max_tokens"] < 100:
            function = message["tool_calls"][0]["function"]
            function["arguments"], finish = function["arguments"][: len(function["arguments"]) // 2], "length"
        send_json(self, {"object": "chat.completion", "choices": [{"index": 0, "message": message, "finish_reason": finish}]})


def test_runs_made_with_other_answer_settings_are_refused_naming_them_and_their_cut_answers(tmp_path: Path) -> None:
    """The same served model, the baseline run with --max-tokens 30 (every answer cut), the candidate with the default 512.
    Before: PASS, a significant improvement (+100 points, no reason, no note) that only measured the token limit; the
    gate never read the runs' recorded settings, nor their answers cut at max_tokens."""
    from ee_middleware.evals.bfcl.suite import BFCLSuite

    tasks = BFCLSuite("simple", 20).tasks()
    handler = type("Handler", (_ServedOracle,), {"answers": {t.turns[0][-1]["content"]: t.reference[0][0] for t in tasks}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    with serving(server) as url:
        for side, extra in (("base", ["--max-tokens", "30"]), ("cand", [])):
            args = ["eval", "run", "--suite", "bfcl:simple:20", "--endpoint", url, "--model", "m", "--out", str(tmp_path / side)]
            assert CliRunner().invoke(app, [*args, "--no-progress", *extra]).exit_code == 0
    result = gate(tmp_path / "cand", tmp_path / "base", GatePolicy())
    assert not result.passed
    [reason] = result.reasons
    assert reason.startswith("the runs were made with other settings ([eval] max_tokens: 30 -> 512: the baseline's -> the candidate's)")
    assert "run both with the same settings" in reason, reason
    [simple] = result.suites
    assert (simple.candidate_rate, simple.baseline_rate) == (1.0, 0.0)  # the numbers are shown, the decision refused
    assert (simple.candidate_cut_answers, simple.baseline_cut_answers) == (0, 20)
    assert any("the baseline run has 20 answer(s) cut off at max_tokens" in note for note in result.notes), result.notes
    shown = CliRunner().invoke(app, ["eval", "gate", "--candidate", str(tmp_path / "cand"), "--baseline", str(tmp_path / "base")])
    text = " ".join(shown.output.split())
    assert (
        shown.exit_code == 1
        and "[eval] max_tokens: 30 -> 512" in text
        and "cut off at max_tokens (candidate / baseline): bfcl:simple 0 / 20" in text
    ), shown.output
    data = json.loads(
        CliRunner()
        .invoke(app, ["eval", "gate", "--candidate", str(tmp_path / "cand"), "--baseline", str(tmp_path / "base"), "--json"])
        .output
    )
    assert data["suites"][0]["baseline_cut_answers"] == 20 and data["overall"]["baseline_cut_answers"] == 20


def test_runs_that_differ_only_in_the_model_are_gated_as_ee_improve_gates_them(tmp_path: Path) -> None:
    """ee improve evaluates the live adapter and the candidate with one [eval] table, only the model spec differing: their
    runs are compared (the settings check names no setting), whatever other settings that table chose."""
    for model in ("oracle", "noop"):
        run_eval(EvalJob(suites=["bfcl:simple:3"], model=model, out=str(tmp_path / model), max_tokens=64, seed=7, temperature=0.5))
    result = gate(str(tmp_path / "oracle"), str(tmp_path / "noop"), GatePolicy(min_tasks=1))
    assert result.passed and result.reasons == [], result.reasons
    run_eval(EvalJob(suites=["bfcl:simple:3"], model="noop", out=str(tmp_path / "seeded"), max_tokens=64, seed=8, temperature=0.5))
    assert gate(tmp_path / "oracle", tmp_path / "seeded", GatePolicy(min_tasks=1)).reasons == [
        "the runs were made with other settings ([eval] seed: 8 -> 7: the baseline's -> the candidate's), so their scores "
        "would measure the settings, not the model; run both with the same settings (all but the model)"
    ]


def test_a_suite_an_older_version_recorded_without_running_it_fails_the_gate_naming_the_rerun_that_drops_it(tmp_path: Path) -> None:
    """An older version's command with a typo'd suite (`--suite traces:stor`) recorded it in run.json before its tasks
    failed to load, and its corrected command then finished the run listing it with no task (the record is written here
    as that version wrote it). Before: the gate failed with 'traces:stor: no task was scored (the suite has no task)' and
    nothing said that running the same `ee eval run` again leaves it out."""
    from ee_middleware.evals.runner import RUN_FILE

    job = EvalJob(suites=["bfcl:simple:3"], model="oracle", out=str(tmp_path / "cand"))
    run_eval(job)
    run_eval(job.model_copy(update={"model": "noop", "out": str(tmp_path / "base")}))
    record = json.loads((tmp_path / "cand" / RUN_FILE).read_text())
    record["suite_names"].insert(0, "traces:stor")
    (tmp_path / "cand" / RUN_FILE).write_text(json.dumps(record))
    summary = json.loads((tmp_path / "cand" / "summary.json").read_text())
    summary["suites"].insert(0, {"suite": "traces:stor", "tasks": 0, "trials": 0, "runs": 0, "success_rate": 0.0, "failures": {}})
    (tmp_path / "cand" / "summary.json").write_text(json.dumps(summary))

    [reason] = gate(tmp_path / "cand", tmp_path / "base", GatePolicy(min_tasks=1)).reasons
    assert reason.startswith("traces:stor: no task was scored (the suite has no task): the run records it from a command that")
    assert reason.endswith(f"run the same `ee eval run ... --out {tmp_path / 'cand'}` command again, which leaves it out")
    run_eval(job)  # that command
    assert gate(tmp_path / "cand", tmp_path / "base", GatePolicy(min_tasks=1)).passed


def test_a_run_folder_without_its_run_json_gets_a_note_that_the_settings_were_not_compared(runs: dict[str, Path], tmp_path: Path) -> None:
    """Was (a sweep): a folder copied without run.json passed where the same pair with it failed for another max_tokens,
    without a word that nothing was compared."""
    copied = tmp_path / "copied"
    shutil.copytree(runs["oracle"], copied)
    (copied / "run.json").unlink()
    result = gate(copied, runs["oracle"], GatePolicy(min_tasks=1))
    [note] = [n for n in result.notes if n.startswith(UNRECORDED)]
    assert f"no readable run.json with the job in candidate ({copied})" in note and "baseline" not in note, note
    assert not [n for n in gate(runs["oracle"], runs["oracle"], GatePolicy(min_tasks=1)).notes if n.startswith(UNRECORDED)]


def test_a_damaged_results_file_is_named_and_the_same_command_writes_it_again(tmp_path: Path) -> None:
    """Was (a sweep): "unexpected ComputeError: parquet: File out of specification ... (a bug in ee-middleware ...)"."""
    job = EvalJob(suites=["bfcl:simple:3"], model="oracle", out=str(tmp_path / "run"))
    run_eval(job)
    results = tmp_path / "run" / "results.parquet"
    whole = results.read_bytes()
    results.write_bytes(whole[:500])
    with pytest.raises(ConfigError, match=r"results\.parquet cannot be read .*it is damaged\. .*run the same `ee eval run \.\.\. --out"):
        gate(tmp_path / "run", tmp_path / "run")
    run_eval(job)  # the same command: nothing to run, the file written again from results.jsonl
    assert gate(tmp_path / "run", tmp_path / "run", GatePolicy(min_tasks=1)).passed
