"""Conventions every ``ee`` command keeps, probed as a new user would: damaged stores, paths that are
files or unwritable, bad configs and unexpected failures give one red ``error:`` line on stderr and
exit code 1, never a Python traceback or a Python warning, and ``--json`` keeps stdout pure JSON."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.cli.json_failure import json_failure
from tests.replay import conftest as replay_fixtures

serve = replay_fixtures.serve  # scripted models behind real local HTTP servers

runner = CliRunner()


def ee(*args: str):
    return runner.invoke(app, list(args))


def _damage_spool(store: Path) -> Path:
    segment = sorted((store / "spool").glob("*.jsonl"))[0]
    with segment.open("ab") as f:
        f.write(b"garbage{{{\n")
    return segment


def _one_error_line(result, *needles: str) -> None:
    assert "Traceback" not in result.output, result.output
    assert "Warning" not in result.stderr, f"a raw Python warning reached the user: {result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


READERS = {
    "replay list": lambda s, tmp: ["replay", "list", "--store", s, "--json"],
    "replay show": lambda s, tmp: ["replay", "show", _first_id(s), "--store", s, "--json"],
    "replay run": lambda s, tmp: ["replay", "run", "--store", s, "--k", "2", "--no-progress", "--json"],
    "datasets build": lambda s, tmp: ["datasets", "build", "--store", s, "--kinds", "il", "--out", str(tmp / "ds"), "--json"],
}


def _first_id(store: str) -> str:
    from ee_middleware.store import LocalExperienceStore

    return LocalExperienceStore(store).trajectories()["id"][0]


@pytest.mark.parametrize("command", list(READERS))
def test_a_damaged_store_fails_every_reading_command_unless_partial_answers_are_allowed(
    command: str, bfcl_store_path: Path, tmp_path: Path
):
    args = READERS[command](str(bfcl_store_path), tmp_path)  # the id is read before the damage
    segment = _damage_spool(bfcl_store_path)
    result = ee(*args)
    assert result.exit_code == 1, result.output
    _one_error_line(result, str(segment), "--allow-partial")
    json_failure(result, "StoreDamagedError")  # no incomplete answer is printed: the error alone, as JSON
    assert not (tmp_path / "ds").exists(), "no dataset is built from an incomplete store"
    partial = ee(*args, "--allow-partial")
    assert partial.exit_code == 0, partial.output
    assert "Warning" not in partial.stderr and f"warning: Skipped a damaged record in {segment}" in partial.stderr
    json.loads(partial.stdout)


def test_a_damaged_store_fails_record_experts_naming_the_repair_not_allow_partial(bfcl_store_path: Path) -> None:
    """record-experts writes: from a store read in part it would record again the entries the damaged part holds (each
    taught twice once the part is restored), so its error names the repair, and --allow-partial is refused."""
    args = ["bfcl", "record-experts", "--store", str(bfcl_store_path), "--limit", "2", "--no-progress", "--json"]
    segment = _damage_spool(bfcl_store_path)
    result = ee(*args)
    assert result.exit_code == 1, result.output
    _one_error_line(result, str(segment), "ee store repair")
    assert "--allow-partial" not in result.stderr, result.stderr
    json_failure(result, "StoreDamagedError")
    assert ee(*args, "--allow-partial").exit_code == 2


def damage_a_steps_part(store_path: Path, ids: list[str], *, where: str = "footer", table: str = "steps") -> tuple[Path, bytes]:
    """Rewrite the store at ``store_path`` as two compacted Parquet parts, the trajectories ``ids`` in the second, and
    damage that second part of ``steps`` as the docs sweep did (four bytes of its footer overwritten), or (``where=
    "data"``) 200 bytes of its data pages, its footer intact (it opens; decoding fails): those trajectories are still
    listed, their steps cannot be read (``table``: that table's part instead). Returns the damaged part and its bytes before
    (a backup to restore)."""
    import shutil

    from ee_middleware.store import LocalExperienceStore

    source = LocalExperienceStore(store_path, create=False)
    trajectories = list(source.iter_trajectories())
    source.close()
    rebuilt = store_path.with_name(store_path.name + "-parts")
    store = LocalExperienceStore(rebuilt)
    if (store_path / "redaction.json").exists():  # its redaction settings and salt travel with the copy
        shutil.copy2(store_path / "redaction.json", rebuilt / "redaction.json")
    for batch in ([t for t in trajectories if t.id not in ids], [t for t in trajectories if t.id in ids]):
        before = set(rebuilt.glob(f"{table}/*.parquet"))
        store.write(batch)
        store.compact()
    [part] = set(rebuilt.glob(f"{table}/*.parquet")) - before
    store.close()
    shutil.rmtree(store_path)
    rebuilt.rename(store_path)
    part = store_path / table / part.name
    backup = part.read_bytes()
    damaged = bytearray(backup)
    if where == "footer":
        damaged[-12:-8] = b"\xff\xff\xff\x7f"
    else:
        damaged[len(damaged) // 3 : len(damaged) // 3 + 200] = b"A" * 200
    part.write_bytes(bytes(damaged))
    return part, backup


def _experience_dataset(store: str, tmp: Path, serve: Any) -> list[str]:
    return ["experience", "dataset", "--store", store, "--out", str(tmp / "out"), "--json"]


def _experience_eval(store: str, tmp: Path, serve: Any) -> list[str]:
    from tests.replay.test_experience import copy_first_example

    model = serve(copy_first_example)
    return ["experience", "eval", "--model", model.spec, "--store", store, "--out", str(tmp / "out"), "--json"]


def _curriculum_propose(store: str, tmp: Path, serve: Any) -> list[str]:
    from ee_middleware.store import LocalExperienceStore

    opened = LocalExperienceStore(store)
    entry = sorted(t.environment["entry_id"] for t in opened.iter_trajectories())[0]
    opened.close()
    results = tmp / "eval-run" / "results.jsonl"
    results.parent.mkdir()
    results.write_text("".join(json.dumps({"suite": "bfcl", "task_id": entry, "trial": i, "success": i % 2 == 0}) + "\n" for i in range(4)))
    writer = serve(lambda messages: json.dumps({"instruction": "Show the current folder.", "tools": ["pwd"]}))
    args = ["curriculum", "propose", "--from", str(results.parent), "--model", f"openai:{writer.base_url}#writer", "--store", store]
    return [*args, "--n", "1", "--out", str(tmp / "out"), "--json"]  # the tasks file


def _eval_traces(store: str, tmp: Path, serve: Any) -> list[str]:
    split = tmp / "split"
    built = ee("datasets", "build", "--store", store, "--kinds", "il", "--heldout-share", "0.5", "--out", str(split), "--json")
    assert built.exit_code == 0, built.output
    return ["eval", "run", "--suite", f"traces:{store}", "--split", str(split), "--model-spec", "noop", "--out", str(tmp / "run")]


STEP_READERS = {
    "experience dataset": _experience_dataset,
    "experience eval": _experience_eval,
    "curriculum propose": _curriculum_propose,
    "eval run traces:": _eval_traces,
}


# as in the ee process, store damage is a warning (this project's pytest settings make it an error)
@pytest.mark.filterwarnings("default::ee_middleware.errors.StoreCorruptionWarning")
@pytest.mark.parametrize("command", list(STEP_READERS))
def test_a_damaged_steps_part_fails_the_commands_that_learn_or_measure_from_the_store(
    command: str, bfcl_store_path: Path, tmp_path: Path, serve: Any
):
    """Before: these commands read around an unreadable Parquet part (a Python warning on stderr) and answered from the
    rest with exit 0: an em.parquet, a fidelity report, variants, an eval run from part of the store. The store is the
    real BFCL expert store; the damaged part holds the steps of two of its six trajectories."""
    from ee_middleware.store import LocalExperienceStore

    opened = LocalExperienceStore(bfcl_store_path)
    ids = sorted(opened.trajectories()["id"].to_list())
    opened.close()
    args = STEP_READERS[command](str(bfcl_store_path), tmp_path, serve)  # what it needs is made before the damage
    part, _ = damage_a_steps_part(bfcl_store_path, ids[-2:])
    result = ee(*args, "--no-progress") if command.startswith("eval") else ee(*args)
    assert result.exit_code == 1, result.output
    _one_error_line(result, f"Skipped unreadable Parquet part {part}", "ee store repair", "--allow-partial")
    # no incomplete answer is printed: the error alone, as JSON when asked for
    assert json_failure(result, "StoreDamagedError") if "--json" in args else result.stdout == "", result.stdout
    assert not (tmp_path / "out").exists(), "nothing is written from an incomplete store"
    partial = ee(*args, "--allow-partial", "--no-progress") if command.startswith("eval") else ee(*args, "--allow-partial")
    assert partial.exit_code == 0, partial.output
    assert "Warning" not in partial.stderr and f"warning: Skipped unreadable Parquet part {part}" in partial.stderr


@pytest.mark.filterwarnings("default::ee_middleware.errors.StoreCorruptionWarning")
@pytest.mark.parametrize("table", ["steps", "trajectories"])
def test_a_part_damaged_in_its_data_fails_the_build_naming_it_unless_partial_answers_are_allowed(
    bfcl_store_path: Path, tmp_path: Path, table: str
):
    """Its footer reads, so the part opens and only decoding its pages fails, in a lazy read that names no file. Before:
    "unexpected ComputeError ... a bug in ee-middleware", also with --allow-partial (found by a reviewer)."""
    from ee_middleware.store import LocalExperienceStore

    opened = LocalExperienceStore(bfcl_store_path)
    ids = sorted(opened.trajectories()["id"].to_list())
    opened.close()
    part, _ = damage_a_steps_part(bfcl_store_path, ids[-2:], where="data", table=table)
    args = ("datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il,iwm", "--out", str(tmp_path / "ds"), "--no-progress")
    result = ee(*args)
    assert result.exit_code == 1, result.output
    _one_error_line(result, f"Skipped unreadable Parquet part {part}", "its data cannot be read", "ee store repair", "--allow-partial")
    assert not (tmp_path / "ds").exists(), "no dataset is built from an incomplete store"
    partial = ee(*args, "--allow-partial")
    assert partial.exit_code == 0, partial.output
    assert f"warning: Skipped unreadable Parquet part {part}" in partial.stderr
    import polars as pl

    taught = set(pl.read_parquet(tmp_path / "ds" / "il.parquet")["trajectory_id"])
    assert taught and taught <= set(ids[:-2]), "the build answers from the other trajectories"


def test_an_output_folder_that_is_a_file_is_one_line(bfcl_store_path: Path, tmp_path: Path):
    a_file = tmp_path / "afile"
    a_file.write_text("hi\n")
    result = ee("datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il", "--out", str(a_file))
    assert result.exit_code == 1, result.output
    _one_error_line(result, str(a_file), "not a folder")
    assert a_file.read_text() == "hi\n"


def test_a_config_that_is_a_folder_is_one_line(bfcl_store_path: Path, tmp_path: Path):
    result = ee("replay", "run", "--store", str(bfcl_store_path), "--config", str(tmp_path))
    assert result.exit_code == 1, result.output
    _one_error_line(result, str(tmp_path))


def test_an_unwritable_output_folder_is_one_line_injected(bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # Injected: these machines run as root, which chmod does not stop; the error is the one mkdir raises.
    target = tmp_path / "locked" / "ds"
    real_mkdir = Path.mkdir

    def mkdir(self: Path, *args, **kwargs):
        if self == target:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    result = ee("datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il", "--out", str(target))
    assert result.exit_code == 1, result.output
    _one_error_line(result, "Permission denied", str(target))


def test_an_unexpected_failure_is_one_line_and_verbose_shows_the_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from ee_middleware.cli import store_cmds

    def broken(spec):
        raise TypeError("'int' object is not iterable")

    monkeypatch.setattr(store_cmds, "open_existing_store", broken)
    result = ee("store", "info", "--store", str(tmp_path), "--json")
    assert result.exit_code == 1 and json_failure(result, "TypeError"), result.output
    _one_error_line(result, "TypeError: 'int' object is not iterable", "--verbose")
    verbose = ee("--verbose", "store", "info", "--store", str(tmp_path))
    assert isinstance(verbose.exception, TypeError), "with --verbose the real exception (and its traceback) comes through"


def test_progress_bars_draw_on_stderr_so_stdout_holds_the_answer_alone(tmp_path: Path):
    # Off a terminal rich draws the bar once, when it stops: that drawing went to stdout, into `> file` or a pipe.
    result = ee("bfcl", "record-experts", "--store", str(tmp_path / "s"), "--limit", "1")
    assert result.exit_code == 0, result.output
    assert "━" not in result.stdout and "recorded 1 expert trajectories" in " ".join(result.stdout.split())
    assert "record multi_turn_base" in result.stderr and "1/1" in result.stderr


def test_runs_in_a_folder_that_does_not_exist_is_an_error_not_an_empty_list(tmp_path: Path):
    # A mistyped --runs printed an empty table (or []) and exit 0, as if no run had ever been made.
    missing = tmp_path / "runz"
    for args in (
        ["runs", "list", "--runs", str(missing), "--json"],
        ["runs", "list", "--runs", str(missing)],
        ["runs", "show", "--runs", str(missing)],
    ):
        result = ee(*args)
        assert result.exit_code == 1 and (json_failure(result) if "--json" in args else result.stdout == ""), result.output
        _one_error_line(result, f"No runs folder at {missing}", "--runs")
    config = tmp_path / "improve.toml"
    config.write_text("[improve]\napp = 'x'\n")
    result = ee("runs", "list", "--config", str(config))
    assert result.exit_code == 1, result.output
    _one_error_line(result, str(config), "runs =")
    (tmp_path / "runs").mkdir()
    empty = ee("runs", "list", "--runs", str(tmp_path / "runs"), "--json")
    assert empty.exit_code == 0 and json.loads(empty.stdout) == [], "an existing folder with no run yet is fine"


def test_an_error_before_any_work_is_the_one_line_on_stderr_without_an_empty_progress_bar(bfcl_store_path: Path, tmp_path: Path):
    # The bar was started before the work, so an early error left an empty bar (or a blank line) above it.
    bad_category = ee("bfcl", "record-experts", "--store", str(tmp_path / "s"), "--category", "nosuch")
    assert bad_category.exit_code == 1, bad_category.output
    _one_error_line(bad_category, "nosuch", "multi_turn_base")
    missing_ids = ee(
        "datasets", "build", "--store", str(bfcl_store_path), "--out", str(tmp_path / "ds"), "--heldout-ids", str(tmp_path / "nope.txt")
    )
    assert missing_ids.exit_code == 1, missing_ids.output
    assert missing_ids.stderr.startswith("error: ") and "nope.txt" in missing_ids.stderr, repr(missing_ids.stderr)


@pytest.mark.parametrize("flag", [["--tool-timeout", "5"], ["--memory-mb", "100"], ["--ray-address", "auto"]], ids=lambda f: f[0])
def test_replay_flags_that_would_be_ignored_are_refused(flag: list[str], bfcl_store_path: Path):
    # --tool-timeout and --memory-mb act only with --isolation subprocess, --ray-address only with --executor ray:
    # they were silently ignored (a user thinking tools had a time limit had none).
    result = ee("replay", "run", "--store", str(bfcl_store_path), "--k", "2", "--json", *flag)
    assert result.exit_code == 1 and json_failure(result), result.output
    _one_error_line(result, flag[0], "--isolation subprocess" if flag[0] != "--ray-address" else "--executor ray")
    from ee_middleware.store import LocalExperienceStore

    assert LocalExperienceStore(bfcl_store_path).rollouts().is_empty(), "nothing was replayed"


@pytest.mark.parametrize("setting", ["tool_timeout_s = 5", "memory_mb = 512", 'ray_address = "auto"'], ids=lambda s: s.split()[0])
def test_replay_settings_in_a_file_that_would_be_ignored_are_refused_as_the_flags_are(setting: str, bfcl_store_path: Path, tmp_path: Path):
    # The same settings in a [replay] table ran, and did nothing (no time limit, no memory limit, no Ray cluster).
    config = tmp_path / "replay.toml"
    config.write_text(f'[replay]\nstore = "{bfcl_store_path}"\nk = 2\n{setting}\n')
    result = ee("replay", "run", "--config", str(config), "--json", "--no-progress")
    assert result.exit_code == 1 and json_failure(result), result.output
    key = setting.split()[0]
    _one_error_line(result, key, "isolation = 'subprocess'" if key != "ray_address" else "executor = 'ray'")
    from ee_middleware.store import LocalExperienceStore

    assert LocalExperienceStore(bfcl_store_path).rollouts().is_empty(), "nothing was replayed"
    if key != "ray_address":  # with isolation the limit acts: accepted (no Ray cluster is started here)
        config.write_text(config.read_text() + 'isolation = "subprocess"\n')
        accepted = ee("replay", "run", "--config", str(config), "--json", "--no-progress", "--limit", "1")
        assert accepted.exit_code == 0, accepted.output


def _leaf_commands(group, path=()):
    for name, command in getattr(group, "commands", {}).items():
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def _leaves():
    import typer.main

    return list(_leaf_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path,command", _leaves(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_command_has_a_working_example_in_its_help(path, command):
    import shlex

    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output, f"`ee {' '.join(path)} --help` shows no example"
    shown = [line.strip() for line in result.output.split("Examples:", 1)[1].splitlines() if line.strip().startswith("ee ")]
    assert shown, result.output
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for example in shown:
        words = shlex.split(example)
        assert words[1 : 1 + len(path)] == list(path), f"example {example!r} is not for `ee {' '.join(path)}`"
        unknown = [w.split("=")[0] for w in words if w.startswith("-") and w.split("=")[0] not in options]
        assert not unknown, f"example {example!r} uses options the command does not have: {unknown}"


def test_a_warning_other_than_store_damage_is_shown_once_after_reading_and_does_not_loop():
    # reading_store re-showed other warnings while still recording them: each one was recorded again and
    # re-shown, forever (memory grew to GBs). Seen when Ctrl-C stopped `ee bfcl record-experts`.
    import subprocess
    import sys

    code = (
        "import warnings\n"
        "from ee_middleware.cli.common import reading_store\n"
        "with reading_store(allow_partial=True):\n"
        "    warnings.warn('a library warning', UserWarning)\n"
        "print('done')\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("reading_store never returned: it re-recorded the warning it was showing")
    assert done.returncode == 0 and done.stdout == "done\n", done.stderr
    assert done.stderr.count("UserWarning: a library warning") == 1, done.stderr


def test_a_full_disk_error_that_names_no_file_says_so_injected(bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A write to an open file on a full disk raises ENOSPC with no file name: the line read 'error: a path: No space left
    on device'. Injected (no full disk here): the build's Parquet write raises it."""
    import polars as pl

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    result = ee("datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il", "--out", str(tmp_path / "ds"))
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "No space left on device (the operation that failed names no file)" in line and "df -h" in line, line
    assert "a path" not in result.output


@pytest.mark.parametrize("command", [["improve"], ["train"]], ids=" ".join)
def test_a_schedule_that_is_not_one_is_a_usage_error(command: list[str], tmp_path: Path):
    # `ee improve --schedule IL` exited 1 (an error from the job's config) where `ee train --schedule IL` exited 2.
    result = ee(*command, "--schedule", "IL", "--config", str(tmp_path / "none.toml"))
    assert result.exit_code == 2, result.output
    message = " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.stderr).split())  # rich's error box, wrapped to the terminal's width
    assert "--schedule" in message and "'il', 'iwm', 'sr'" in message, result.stderr


@pytest.mark.parametrize(
    "args",
    [["traces", "list"], ["replay", "list", "--json"], ["store", "info"], ["--help"]],
    ids=" ".join,
)
def test_a_stdout_its_reader_closed_ends_the_command_quietly_with_141(args: list[str], bfcl_store_path: Path):
    # `ee replay show ID | head -1` exited 1 silently (rich's own handler), a JSON command printed 'error: Broken pipe'.
    # The reader closes its end before the command writes anything, as `head` does once it has its lines.
    import subprocess
    import sys

    store = ["--store", str(bfcl_store_path)] if args != ["--help"] else []
    process = subprocess.Popen(
        [sys.executable, "-m", "ee_middleware.cli", *args, *store], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.stdout.close()
    stderr = process.stderr.read()
    process.stderr.close()
    assert process.wait(timeout=120) == 141, stderr
    assert stderr == ""


def test_user_output_to_stderr_restores_stdout_after_uses_that_overlap_without_nesting(capfd) -> None:
    """Review of 2c29fb4: each use saved and restored the process-wide fd 1 itself, so two commands run in threads of
    one process that overlap without nesting (A enters, B enters, A leaves, B leaves) left fd 1 pointing at stderr for
    good. The redirection is counted: the last use to end restores stdout, whatever order they end in."""
    import os
    import sys
    import threading

    from ee_middleware.cli.common import user_output_to_stderr

    stdout = sys.stdout
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first() -> None:
        with user_output_to_stderr():
            a_in.set()
            b_in.wait(10)
            os.write(1, b"user code A\n")
        a_out.set()

    def second() -> None:
        a_in.wait(10)
        with user_output_to_stderr():
            b_in.set()
            a_out.wait(10)
            os.write(1, b"user code B\n")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(1, b"the answer\n")
    out, err = capfd.readouterr()
    assert out == "the answer\n" and "user code A" in err and "user code B" in err, (out, err)
    assert sys.stdout is stdout


@pytest.mark.parametrize(
    ("command", "needs"),
    [
        (["replay", "run"], "The replay job needs --store"),
        (["datasets", "build", "--store", "s"], "The dataset build needs --out"),
        (["curriculum", "run"], "The curriculum run needs TASKS (the argument)"),
        (["serve", "vllm"], "The serve vllm command needs --base"),
        (["improve"], "The improve job needs store"),
        (["train"], "The train job needs --base-model"),  # (exited 1: a CLI sweep)
    ],
)
def test_a_setting_a_job_needs_and_nobody_gave_is_a_usage_error(command: list[str], needs: str) -> None:
    """Sweep S3: a job command missing a setting exited 1 with an ``error:`` line, while ``ee eval run`` and ``ee runs
    list`` missing theirs exited 2 with the command's usage line, as the README's convention for a usage error says;
    now every one does, ``--json`` too."""
    result = runner.invoke(app, command, env={"EE_STORE": None, "EE_ADAPTER_REGISTRY": None, "EE_RUNS": None})
    assert result.exit_code == 2, result.output
    assert f"Usage: ee {' '.join(c for c in command if not c.startswith('-') and c != 's')} [OPTIONS]" in result.stderr
    assert needs in " ".join(result.stderr.split()) and "Traceback" not in result.output


def test_a_missing_setting_given_json_says_so_as_json_with_the_usage_errors_code() -> None:
    result = runner.invoke(app, ["replay", "run", "--json"], env={"EE_STORE": None})
    assert json_failure(result, "BadParameter")["exit_code"] == 2


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE])
def test_too_many_open_files_says_which_limit_to_raise_injected(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, number: int
):
    """Sweep W: at a low ``ulimit -n`` the error said only "Too many open files (the operation that failed names no
    file)", or blamed the file it named. Injected (the limit's failures land anywhere): the build's Parquet write."""
    import polars as pl

    def out_of_descriptors(self, *args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", out_of_descriptors)
    result = ee("datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il", "--out", str(tmp_path / "ds"))
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert os.strerror(number) in line and "names no file" not in line
    assert ("ulimit -n" in line and "run fewer workers" in line) if number == errno.EMFILE else "fs.file-max" in line, line


def test_a_json_answer_is_written_whole_to_a_stdout_without_buffering(monkeypatch: pytest.MonkeyPatch) -> None:
    """``PYTHONUNBUFFERED`` (as Docker images set it) puts the text layer straight on the pipe: a write that took part of
    the answer dropped the rest (a reader that closed early then got exit 0, not 141; a sweep). Here a raw stdout that
    takes 7 bytes a write."""
    import io
    import sys

    from ee_middleware.cli.common import print_json

    class Trickle(io.RawIOBase):
        def __init__(self) -> None:
            self.received = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            taken = bytes(data[:7])
            self.received += taken
            return len(taken)

    raw = Trickle()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="utf-8", write_through=True))  # type: ignore[arg-type]
    answer = {"rows": [{"id": i, "text": "ünïcödé ✓"} for i in range(500)]}
    print_json(answer)
    assert json.loads(raw.received.decode("utf-8")) == answer
