"""The run's warning for task trials that got no answer: from the model server, or because their worker process died.

The summary rows are those ``run_eval`` returns (``no_answer`` counts both kinds, ``worker_deaths`` the second); the
warning's words are pinned in full, as the CLI prints them and report.md / report.html show them.
"""

from __future__ import annotations

from typing import Any

from ee_middleware.evals.report import unanswered_warning

SERVER = (
    "Warning: the model server gave no answer on {n} task trial(s) (down or timed out; {where}); they count as failures "
    "here. Run the same `ee eval run` command (with those suites) again once the server is up: it runs only those again."
)
DEATHS = (
    "Warning: the worker process running {n} task trial(s) died ({where}; killed out of memory, or a crash in the model's "
    "library: see each one's reason), which says nothing of the model; they count as failures here. Run the same `ee eval "
    "run` command (with those suites) again, with fewer --workers if memory ran short: it runs only those again, once (a "
    "task whose worker dies again keeps that as its failure)."
)


def _row(suite: str, no_answer: int = 0, worker_deaths: int = 0) -> dict[str, Any]:
    return {"suite": suite, "no_answer": no_answer, "worker_deaths": worker_deaths}


def test_no_warning_when_every_trial_got_an_answer() -> None:
    assert unanswered_warning([_row("bfcl:simple"), {"suite": "tau:retail"}]) == ""


def test_trials_the_server_did_not_answer_are_named_per_suite() -> None:
    summary = [_row("bfcl:simple", 2), _row("bfcl:irrelevance"), _row("tau:retail", 1)]
    assert unanswered_warning(summary) == SERVER.format(n=3, where="bfcl:simple: 2, tau:retail: 1")


def test_trials_whose_worker_died_are_named_per_suite_and_not_blamed_on_the_server() -> None:
    summary = [_row("bfcl:simple", 4, 4), _row("bfcl:irrelevance", 1, 1)]
    assert unanswered_warning(summary) == DEATHS.format(n=5, where="bfcl:simple: 4, bfcl:irrelevance: 1")


def test_both_kinds_give_one_line_each_the_servers_first() -> None:
    summary = [_row("bfcl:simple", 3, 1), _row("tau:retail", 2)]
    assert unanswered_warning(summary) == "\n".join(
        [SERVER.format(n=4, where="bfcl:simple: 2, tau:retail: 2"), DEATHS.format(n=1, where="bfcl:simple: 1")]
    )


def test_a_long_refusal_reason_keeps_its_end() -> None:
    """Review R15: the server_refused reason kept only its first 300 characters, cutting off the template's error at the
    end of a server's long answer."""
    reason = "HTTP 400: " + "x" * 2000 + " jinja2.exceptions.TemplateError: Conversation roles must alternate"
    summary = [{"suite": "bfcl:simple", "runs": 4, "server_refused": 1, "server_refused_reason": reason}]
    warning = unanswered_warning(summary)
    assert "HTTP 400: xxx" in warning and "Conversation roles must alternate" in warning, warning
    assert len(warning) < len(reason)
