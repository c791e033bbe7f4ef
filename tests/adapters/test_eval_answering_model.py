"""An eval records which served model answered each task (the response's ``model``), against a real local server and
a real router: a run through the app's alias resumed after a promote is said to mix two adapters, and the gate refuses
it (unless --allow-mixed-models); ``ee eval gate --adapter NAME`` records a gate on NAME only from a run of NAME, never
from one run against itself, and keeps the runs' absolute paths."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.promote import promote
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.adapters.serving.router import AliasRouter, make_router_server
from ee_middleware.cli.app import app
from ee_middleware.evals.gate import GatePolicy, gate
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval

from .conftest import train_shaped_adapter

SUITE = "bfcl:irrelevance:4"
SETTINGS = {"max_tokens": 8, "max_steps_per_turn": 1}


@dataclass
class Alias:
    registry: LocalAdapterRegistry
    root: Path
    first: str
    second: str
    routed: str
    """The router's API root: the app ``bot`` answers there as its live adapter."""
    server: str
    """The local server's own API root (``tiny-base``, and each loaded adapter by its name)."""
    replicas: list[LocalBackend]


@pytest.fixture(scope="module")
def alias(local_server: Any, tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alias]:
    """App ``bot`` with two registered adapters, ``first`` live, served by the local server behind a real router."""
    root = tmp_path_factory.mktemp("alias")
    registry = LocalAdapterRegistry(root / "reg")
    first = registry.register(train_shaped_adapter(tiny_base, root / "a", seed=91), "bot").name
    second = registry.register(train_shaped_adapter(tiny_base, root / "b", seed=92), "bot").name
    replicas = [LocalBackend(local_server.url)]
    promote(registry, first, replicas)
    router = make_router_server(AliasRouter(registry, [local_server.url]), port=0)
    thread = threading.Thread(target=router.serve_forever, daemon=True)
    thread.start()
    try:
        yield Alias(registry, root, first, second, f"http://127.0.0.1:{router.server_address[1]}/v1", local_server.url, replicas)
    finally:
        router.shutdown()
        router.server_close()
        for name in (first, second):
            if name in replicas[0].list():
                replicas[0].unload(name)


def _live(alias: Alias, name: str) -> None:
    if alias.registry.resolve("bot") != name:
        promote(alias.registry, name, alias.replicas)


def _run(model: str, out: Path) -> list[dict[str, Any]]:
    return run_eval(EvalJob(suites=[SUITE], model=model, out=str(out), **SETTINGS))


def _served(out: Path) -> list[str | None]:
    import polars as pl

    return pl.read_parquet(out / "results.parquet").sort("task_id", "trial")["served_model"].to_list()


def test_a_run_through_the_alias_resumed_after_a_promote_names_both_adapters_and_the_gate_refuses_it(alias: Alias, tmp_path: Path) -> None:
    """Before: the resume exited 0 without a word, every row's model was 'bot', and no file of the run named either
    adapter; the gate compared the run as one model."""
    from ee_middleware.evals.report import mixed_models_warning

    _live(alias, alias.first)
    out = tmp_path / "through-alias"
    [summary] = _run(f"openai:{alias.routed}#bot", out)
    assert set(_served(out)) == {alias.first}, "each row names the adapter that answered, not the alias"
    assert summary["served_models"] == {alias.first: 4} and mixed_models_warning([summary]) == ""
    journal = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(journal[:3]) + "\n")  # stopped after three tasks, as Ctrl-C leaves it
    (out / "results.parquet").unlink()
    _live(alias, alias.second)  # a promote between the run and its resume
    [resumed] = _run(f"openai:{alias.routed}#bot", out)
    assert sorted(set(_served(out))) == sorted({alias.first, alias.second})
    assert resumed["served_models"] == {alias.first: 3, alias.second: 1}
    warning = mixed_models_warning([resumed])
    assert f"come from 2 served models: {alias.first} (3 task trial(s)), {alias.second} (1 task trial(s))" in warning, warning
    assert "ee eval gate` refuses such a run" in warning
    recorded = json.loads((out / "summary.json").read_text())
    assert (
        recorded["served_models"] == {alias.first: 3, alias.second: 1}
        and recorded["suites"][0]["served_models"] == resumed["served_models"]
    )
    report = (out / "report.md").read_text()
    assert f"Answered by: `{alias.first}` (3 task trial(s)), `{alias.second}` (1 task trial(s))" in report and "2 served models" in report
    assert alias.first in (out / "report.html").read_text()

    baseline = tmp_path / "base"
    _run(f"openai:{alias.server}#tiny-base", baseline)
    assert set(_served(baseline)) == {"tiny-base"}
    refused = gate(out, baseline, GatePolicy(min_tasks=1))
    assert any(f"the candidate run's answers come from 2 served models ({alias.first} (3 task trial(s))" in r for r in refused.reasons)
    assert refused.served_models == {"candidate": {alias.first: 3, alias.second: 1}, "baseline": {"tiny-base": 4}}
    allowed = gate(out, baseline, GatePolicy(min_tasks=1), allow_mixed_models=True)
    assert not any("served models" in r for r in allowed.reasons) and any("allowed by --allow-mixed-models" in n for n in allowed.notes)
    args = ["eval", "gate", "--candidate", str(out), "--baseline", str(baseline), "--min-tasks", "1", "--json"]
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 1 and "2 served models" in json.loads(cli.stdout)["reasons"][0], cli.output
    cli_allowed = CliRunner().invoke(app, [*args, "--allow-mixed-models"])
    assert not any("served models" in r for r in json.loads(cli_allowed.stdout)["reasons"]), cli_allowed.output


def test_ee_eval_run_json_keeps_its_keys_adds_the_served_models_and_warns_of_a_mix_on_stderr(alias: Alias, tmp_path: Path) -> None:
    _live(alias, alias.first)
    out = tmp_path / "cli"
    args = ["eval", "run", "--suite", SUITE, "--endpoint", alias.routed, "--model", "bot", "--max-tokens", "8"]
    args += ["--max-steps-per-turn", "1", "--out", str(out), "--json", "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert {"suite", "tasks", "trials", "success_rate", "pass_hat_k", "failures"} <= set(data)
    assert data["served_models"] == {alias.first: 4}
    journal = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(journal[:2]) + "\n")
    (out / "results.parquet").unlink()
    _live(alias, alias.second)
    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["served_models"] == {alias.first: 2, alias.second: 2}
    assert "Warning: the answers of this run come from 2 served models" in resumed.stderr


def test_the_gate_of_an_adapter_needs_a_run_of_it_and_another_baseline_and_records_absolute_paths(
    alias: Alias, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `--candidate runs/x --baseline runs/x` (the same folder) and a candidate run of another model were both
    recorded as the adapter's passed gate (which lets its promote through), with the paths left relative."""
    _live(alias, alias.second)
    monkeypatch.chdir(tmp_path)
    _run(f"openai:{alias.routed}#bot", Path("cand"))  # the app's alias: answered by the live adapter, second
    _run(f"openai:{alias.server}#tiny-base", Path("base"))

    def gate_on(name: str, candidate: str, baseline: str) -> Any:
        args = ["eval", "gate", "--candidate", candidate, "--baseline", baseline, "--min-tasks", "1", "--json"]
        return CliRunner().invoke(app, [*args, "--adapter", name, "-r", str(alias.root / "reg")])

    evals_before = {name: len(alias.registry.get(name).evals) for name in (alias.first, alias.second)}
    same = gate_on(alias.second, "base", "./base")
    assert same.exit_code == 1 and "--candidate and --baseline are the same run folder" in same.output, same.output
    other = gate_on(alias.second, "base", "cand")
    message = " ".join(other.output.split())
    assert other.exit_code == 1 and f"did not evaluate {alias.second}: its answers came from tiny-base" in message, other.output
    assert f"--model {alias.second}" in message
    wrong = gate_on(alias.first, "cand", "base")  # a run of second, recorded as first's gate
    assert wrong.exit_code == 1 and f"did not evaluate {alias.first}: its answers came from {alias.second}" in " ".join(
        wrong.output.split()
    )
    after = {name: len(alias.registry.get(name).evals) for name in (alias.first, alias.second)}
    assert after == evals_before, "nothing recorded from runs that did not gate it"

    recorded = gate_on(alias.second, "cand", "base")
    assert recorded.exit_code in (0, 1) and "did not evaluate" not in recorded.output, recorded.output
    evaluation = alias.registry.get(alias.second).evals[-1]
    assert evaluation["kind"] == "gate"
    assert (evaluation["candidate_run"], evaluation["baseline_run"]) == (str(tmp_path / "cand"), str(tmp_path / "base"))
    assert evaluation["served_models"]["candidate"] == {alias.second: 4}


def test_a_run_of_the_adapters_registered_folder_as_a_local_model_is_a_run_of_it(alias: Alias, tiny_base: Path, tmp_path: Path) -> None:
    record = alias.registry.get(alias.first)
    run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model=f"local:{tiny_base}@{record.path}", out=str(tmp_path / "local"), **SETTINGS))
    run_eval(EvalJob(suites=["bfcl:irrelevance:1"], model="noop", out=str(tmp_path / "noop"), **SETTINGS))
    on_first = ["--min-tasks", "1", "--json", "--adapter", alias.first, "-r", str(alias.root / "reg")]
    recorded = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(tmp_path / "local"), "--baseline", str(tmp_path / "noop"), *on_first]
    )
    assert "did not evaluate" not in recorded.output, recorded.output
    assert alias.registry.get(alias.first).evals[-1]["candidate_run"] == str(tmp_path / "local")
    noop = CliRunner().invoke(
        app, ["eval", "gate", "--candidate", str(tmp_path / "noop"), "--baseline", str(tmp_path / "local"), *on_first]
    )
    assert noop.exit_code == 1 and f"did not evaluate {alias.first}: its model is noop" in " ".join(noop.output.split()), noop.output
