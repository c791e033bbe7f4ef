"""A suite that scored no task (a user's tau domain whose split loads none): its rates are null, not 0.0, in ``--json``
and ``summary.json``, a warning on stderr names it, and every reader of the summary (reports, gate, the improve job's
stage line, chart and results table) takes the null. A real domain module, run through the CLI."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.report import summarize
from ee_middleware.evals.runner import run_eval

DOMAIN_MODULE = '''
from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.evals.tau.domains.library.tools import schema


def check_stock(data, item: str) -> int:
    """How many of an item are in stock.

    Args:
        item: the item's name
    """
    return data["stock"].get(item, 0)


def empty() -> TauDomain:
    return TauDomain(
        name="pantry",
        policy="You run a pantry.",
        tools={"check_stock": check_stock},
        schemas=[schema(check_stock)],
        load_data=lambda: {"stock": {"apple": 3}},
        splits={"test": lambda: []},
    )
'''


@pytest.fixture
def empty_domain(tmp_path: Path) -> Iterator[str]:
    """``tau:PACKAGE.domain:empty``: a domain whose only split loads no task."""
    package = f"empty_pantry_{abs(hash(str(tmp_path)))}"
    root = tmp_path / "src" / package
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "domain.py").write_text(textwrap.dedent(DOMAIN_MODULE))
    sys.path.insert(0, str(tmp_path / "src"))
    try:
        yield f"tau:{package}.domain:empty"
    finally:
        sys.path.remove(str(tmp_path / "src"))
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


def test_a_suite_that_loaded_no_task_has_null_rates_and_a_warning_on_stderr(empty_domain: str, tmp_path: Path) -> None:
    """Before: exit 0, nothing on stderr, and --json and summary.json said success_rate 0.0 and pass_hat_k 0.0 (a model
    that failed every task, to a script) where the table and report.md said 'no task'."""
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["eval", "run", "--suite", empty_domain, "--suite", "bfcl:simple:2", "--model-spec", "oracle", "--out", str(out)]
    result = runner.invoke(app, [*args, "--no-progress", "--json"])
    assert result.exit_code == 0, result.output  # the run is done: running it again scores nothing more (as traces:)
    empty, scored = json.loads(result.stdout)
    assert empty["tasks"] == 0 and empty["success_rate"] is None and empty["pass_hat_k"] is None and empty["pass_hat"] == {}
    assert scored["tasks"] == 2 and scored["success_rate"] == 1.0 and scored["pass_hat_k"] == 1.0
    warning = " ".join(result.stderr.split())
    assert warning.startswith("Warning: 1 suite(s) scored no task") and f"{empty['suite']} loaded no task" in warning, warning
    assert "success_rate and pass_hat_k are null" in warning and "bfcl:simple" not in warning

    written = json.loads((out / "summary.json").read_text())["suites"]
    assert [(s["suite"], s["success_rate"], s["pass_hat_k"]) for s in written] == [
        (empty["suite"], None, None),
        ("bfcl:simple", 1.0, 1.0),
    ]
    report = (out / "report.md").read_text()
    assert f"| {empty['suite']} | 0 | 0 | no task | no task | - |" in report and "loaded no task" in report
    assert "loaded no task" in (out / "report.html").read_text()
    assert (out / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    table = runner.invoke(app, [*args, "--no-progress"], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "no task" in table.stdout and "loaded no task" in " ".join(table.stderr.split()), table.output


def test_the_gate_and_the_improve_jobs_readers_take_a_null_rate(empty_domain: str, tmp_path: Path) -> None:
    """The summaries the improve job keeps (run_eval's, as summary.json writes them) with a null rate: the stage line,
    the run report's table and chart, `ee improve`'s results table and the gate read them without a TypeError."""
    from rich.console import Console

    from ee_middleware.cli.improve_cmds import results_table
    from ee_middleware.evals.gate import GatePolicy, gate
    from ee_middleware.jobs.deploy import _eval_line
    from ee_middleware.jobs.report import build_blocks, chart_figure, to_markdown
    from ee_middleware.jobs.runs import RunsDir

    runs = {}
    for side, model in (("candidate", "oracle"), ("baseline", "noop")):
        folder = tmp_path / "eval" / side
        runs[side] = {"dir": str(folder), "suites": run_eval(EvalJob(suites=[empty_domain, "bfcl:simple:2"], model=model, out=str(folder)))}
    ev = {"baseline": "base", "candidate": "shop-v1", "runs": runs}
    assert [s["success_rate"] for s in runs["candidate"]["suites"]] == [None, 1.0]

    line = _eval_line(ev)
    assert "no task" in line and "bfcl:simple 100%" in line and "bfcl:simple 0%" in line, line
    figure = chart_figure(ev)
    labels = [text.get_text() for text in figure.axes[0].texts]
    assert labels.count("no task") == 2, labels
    console = Console(width=200, record=True)
    console.print(results_table(ev))
    assert "no task" in console.export_text()

    run = RunsDir(tmp_path / "runs").create("improve", {"improve": {"app": "shop"}}, "hash")
    run.write_stage("evaluate", {"stage": "evaluate", "status": "done", "outputs": ev})
    run.update(status="succeeded", stage_order=["evaluate"])
    assert f"| {runs['candidate']['suites'][0]['suite']} | 0 | - | - |" in to_markdown(build_blocks(run))

    outcome = gate(tmp_path / "eval" / "candidate", tmp_path / "eval" / "baseline", GatePolicy(min_tasks=1))
    assert not outcome.passed and any("no task was scored" in reason for reason in outcome.reasons), outcome.reasons


def test_a_suite_that_left_every_task_out_is_named_with_its_reasons() -> None:
    from ee_middleware.evals.report import no_task_warning

    summary = summarize([], ["traces:store"], {"traces:store": {"t1": "no sandbox for app 'shop'", "t2": "no sandbox for app 'shop'"}})
    [suite] = summary
    assert suite["success_rate"] is None and suite["pass_hat_k"] is None and suite["excluded"] == 2
    warning = no_task_warning(summary)
    assert "traces:store left out every one of its 2 task(s) (2: no sandbox for app 'shop')" in warning, warning
    assert no_task_warning(summarize([{"suite": "s", "task_id": "t", "success": False, "error_type": "x"}], ["s"])) == ""
