"""``ee improve`` on a tool world and a base model its BFCL tests do not use: the retail example's SQLite agent (a real
LangGraph graph with a scripted expert model, recorded with record_experience), replayed in its own PythonSandbox,
and a tiny random GPT-2 (TEST model: fused c_attn attention, no q_proj/v_proj) whose chat template knows no tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ee_middleware.adapters.errors import AdapterFilesError
from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.improve import run_improve
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import heldout_ids

pytestmark = pytest.mark.heavy  # whole ee improve runs on the retail world: make test-heavy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:  # the retail example imports as retail_db (as tests/examples/conftest.py does)
    sys.path.insert(0, str(EXAMPLES))

APP = "retail-support"
NO_TOOLS_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def retail_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retail_db.agent import record_experts

    folder = tmp_path_factory.mktemp("retail")
    record_experts(folder / "experience", folder, redact=False)
    return folder / "experience"


@pytest.fixture(scope="module")
def gpt2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from retail_db.agent import SYSTEM_PROMPT

    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_model

    tokenizer = build_test_tokenizer([SYSTEM_PROMPT, "find_user_by_email order_id user_id cancel_order"], chat_template=NO_TOOLS_TEMPLATE)
    return save_tiny_model(tmp_path_factory.mktemp("gpt2") / "base", tokenizer, "gpt2", max_positions=512)


def _config(folder: Path, base: Path, datasets: str | None = None) -> Path:
    """The run's improve.toml; ``datasets``: its [datasets] lines (default: three of the store's trajectories held out
    by id: a 0.25 share drawn by the random ids held out fewer than the two the suite evaluates in 0.9% of runs)."""
    if datasets is None:
        datasets = f'heldout_ids = "{heldout_ids(folder)}"'
    path = folder / "improve.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            [improve]
            store = "{folder / "experience"}"
            app = "{APP}"
            registry = "{folder / "registry"}"
            runs = "{folder / "runs"}"
            base_model = "{base}"
            schedule = "iwm"
            suites = ["traces:2"]
            likelihood_states = 4
            [replay]
            sandbox = "retail_db.sandbox:make_sandbox"
            k = 2
            [datasets]
            {datasets}
            [train]
            max_steps = 2
            batch_size = 2
            max_length = 256
            backend = "peft-loop"
            max_lost_context_share = 1.0
            [eval]
            max_tokens = 8
            max_steps_per_turn = 1
            [gate]
            min_tasks = 1
            """
        )
    )
    return path


@pytest.fixture
def workspace(tmp_path: Path, retail_template: Path) -> Path:
    shutil.copytree(retail_template, tmp_path / "experience")
    return tmp_path


def test_a_gpt2_base_learns_from_the_retail_agent_and_is_evaluated_in_its_sandbox(workspace: Path, gpt2_base: Path) -> None:
    run = run_improve(ImproveConfig.load(_config(workspace, gpt2_base)))
    assert run.status == "succeeded", run.data.get("error")
    adapter = json.loads((Path(run.outputs("train")["adapter_dir"]) / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["c_attn"]
    [suite] = run.outputs("evaluate")["runs"]["candidate"]["suites"]
    assert suite["tasks"] == 2, suite  # the held-out retail trajectories ran in the retail sandbox
    assert run.outputs("evaluate")["likelihood"]["states"] == 4
    assert run.outputs("gate")["task_success"]["overall"]["tasks"] == 2
    assert run.outputs("promote")["promoted"], run.outputs("gate")["reasons"]

    # The live adapter's weights get damaged on disk: the next run names it and the fix before any server or peft
    # reads it (was: a SafetensorError from deep inside loading, with advice about model names).
    live = Path(run.outputs("register")["path"]) / "adapter_model.safetensors"
    live.write_bytes(live.read_bytes()[:100])
    # other weights, evaluated against the live adapter (the same weights trained again would restore the registry's copy
    # when registered, and end the run unchanged)
    path = _config(workspace, gpt2_base)
    path.write_text(path.read_text().replace("max_steps = 2", "max_steps = 1"))
    with pytest.raises(AdapterFilesError, match=r"registered adapter retail-support-v1-\w+ .*ee adapters rollback retail-support"):
        run_improve(ImproveConfig.load(path), force=True)


def test_held_out_ids_that_match_nothing_name_the_file_not_heldout_share(workspace: Path, gpt2_base: Path) -> None:
    (workspace / "ids.txt").write_text("not-a-trajectory\n")
    config = ImproveConfig.load(_config(workspace, gpt2_base, f'heldout_ids = "{workspace / "ids.txt"}"'))
    with pytest.raises(
        ConfigError, match=r"ids.txt \(--heldout-ids, heldout_ids\) names 1 id\(s\) .*'not-a-trajectory' matches no trajectory"
    ):
        run_improve(config)
    [run] = RunsDir(workspace / "runs").list()
    assert run.status == "failed" and "heldout_share" not in run.data["error"]


def test_a_suite_that_scored_no_task_reads_as_such_in_the_report_and_the_gate(workspace: Path, gpt2_base: Path) -> None:
    """An evaluation sandbox that cannot rebuild any held-out world: the report's table shows no rate for the suite
    (was: 0.0% against 0.0%) and says why its tasks were left out; the gate names the suite (was: 'no suite was run by
    both runs'). (No sandbox at all for a non-BFCL app is refused before the run: test_improve_refuses_no_sandbox...)"""
    path = _config(workspace, gpt2_base)
    sandbox = "tests.jobs.test_improve_retail:sandbox_of_another_database"
    path.write_text(path.read_text().replace("[eval]\n", f'[eval]\nsandbox = "{sandbox}"\n'))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "ee_middleware.cli", "improve", "--config", str(path), "--json"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)  # stdout is the run's JSON only (was: the trainer's summary table came first)
    [run] = RunsDir(workspace / "runs").list()
    assert printed["id"] == run.id and run.status == "succeeded" and not run.outputs("gate")["passed"]
    [reason] = run.outputs("gate")["reasons"]
    assert "no task was scored" in reason and "its world cannot be rebuilt in the" in reason, reason
    report = (run.folder / "report.md").read_text()
    suite = f"traces:{workspace / 'experience'}:{APP}"
    assert f"| {suite} | 0 | - | - |" in report, report
    assert f"- {suite}: " in report and "task(s) left out: its world cannot be rebuilt in the" in report, report
    assert (run.folder / "eval.png").stat().st_size > 0


def sandbox_of_another_database() -> object:
    """A real PythonSandbox of the retail tools whose world is built from another dataset than the one these
    trajectories were recorded on (a user's sandbox that cannot rebuild their worlds): every trajectory is skipped."""
    import functools

    from retail_db.sandbox import _on_world, is_error_text, tool_error_text
    from retail_db.tools import DB_TOOLS

    from ee_middleware.errors import EnvironmentUnavailableError
    from ee_middleware.replay import PythonSandbox

    def world(environment: dict | None) -> object:
        raise EnvironmentUnavailableError(f"this sandbox rebuilds the 'retail-v1' database only, got {environment!r}")

    tools = {name: functools.partial(_on_world, tool) for name, tool in DB_TOOLS.items()}
    return PythonSandbox(world, tools=tools, kind="retail-v1", is_error_result=is_error_text, format_error=tool_error_text)


def sandbox_without_get_product() -> object:
    """The retail sandbox as it was before the product catalog tool: the re-order trajectories call get_product."""
    import functools

    from retail_db.sandbox import RetailWorld, _on_world, is_error_text, tool_error_text
    from retail_db.tools import DB_TOOLS, READ_ONLY_TOOLS

    from ee_middleware.replay import PythonSandbox

    tools = {name: functools.partial(_on_world, tool) for name, tool in DB_TOOLS.items() if name != "get_product"}
    return PythonSandbox(
        RetailWorld.from_environment,
        tools=tools,
        read_only_tools=READ_ONLY_TOOLS,
        kind="retail-db",
        is_error_result=is_error_text,
        format_error=tool_error_text,
    )


def test_without_a_replay_sandbox_the_job_stops_before_a_run_starts(workspace: Path, gpt2_base: Path) -> None:
    """The example file had no [replay] sandbox line, so the retail agent was replayed in the default 'bfcl' sandbox:
    every trajectory skipped without a word, the night trained anyway and said why only at the gate, exit 0."""
    path = _config(workspace, gpt2_base)
    path.write_text(path.read_text().replace('sandbox = "retail_db.sandbox:make_sandbox"\n', ""))
    with pytest.raises(
        ConfigError, match=r"\[replay\] sandbox is not set in .*improve.toml, so replay would use the default 'bfcl'"
    ) as raised:
        run_improve(ImproveConfig.load(path))
    assert re.search(rf"none of the \d+ approved trajectories of .{APP}. with tools holds one", str(raised.value))
    assert 'sandbox = "package.module:factory"' in str(raised.value)
    assert RunsDir(workspace / "runs").list() == []


def test_a_replay_that_skipped_every_trajectory_fails_its_stage_naming_why(workspace: Path, gpt2_base: Path) -> None:
    """Was: the replay stage 'done' with statuses {'skipped': N}, no decision, the reasons thrown away; the run trained,
    registered and evaluated, and ended 'succeeded' with its watermark moved."""
    from ee_middleware.jobs.errors import JobError

    path = _config(workspace, gpt2_base)
    path.write_text(
        path.read_text().replace("retail_db.sandbox:make_sandbox", "tests.jobs.test_improve_retail:sandbox_of_another_database")
    )
    for attempt in (1, 2):  # a continued run reads the stored records and fails alike
        with pytest.raises(JobError, match=r"The replay skipped every one of the \d+ selected trajectories of retail-support") as raised:
            run_improve(ImproveConfig.load(path))
        error = " ".join(str(raised.value).split())
        assert "environment cannot be rebuilt: this sandbox rebuilds the 'retail-v1' database only" in error, error
        assert "ee replay run --again" in error and "--new-run" in error
        [run] = RunsDir(workspace / "runs").list()
        assert run.status == "failed" and run.stage("replay")["status"] == "failed" and run.stage("replay")["attempt"] == attempt
        assert run.stage("train") is None and "watermark" not in run.data


def test_trajectories_the_sandbox_skipped_are_counted_with_their_reasons(workspace: Path, gpt2_base: Path) -> None:
    """Some trajectories skipped (their expert calls a tool the sandbox lacks): the stage goes on, and its outputs,
    decisions, summary and the report say how many and why (were: a 'skipped' count among the statuses, nothing more)."""
    path = _config(workspace, gpt2_base)
    path.write_text(
        path.read_text().replace("retail_db.sandbox:make_sandbox", "tests.jobs.test_improve_retail:sandbox_without_get_product")
    )
    run = run_improve(ImproveConfig.load(path))
    assert run.status == "succeeded", run.data.get("error")
    replay = run.stage("replay")
    outputs = replay["outputs"]
    assert outputs["skipped"] == outputs["statuses"]["skipped"] > 0 and outputs["statuses"].get("done", 0) > 0
    [(reason, count)] = outputs["skip_reasons"].items()
    assert count == outputs["skipped"] and "the expert calls get_product, which sandbox 'retail-db' does not provide" in reason
    assert f"{count} trajectories skipped" in replay["summary"]
    assert any(
        f"{count} of {outputs['trajectories']} selected trajectories were skipped" in d and "get_product" in d for d in replay["decisions"]
    )
    assert "get_product, which sandbox 'retail-db' does not provide" in (run.folder / "report.md").read_text()
    assert outputs["failed"] == 0 and outputs["failure_reasons"] == {}
