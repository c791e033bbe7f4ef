"""``ee curriculum run`` reads the tasks file ``propose`` writes, whatever its tasks hold, and refuses inputs it cannot
use before any rollout, naming the fix: a tasks file that is a folder, empty or not UTF-8, a blank ``--app``, an
``--approve-if`` module that raises while Python imports it. The store is a real local one; nothing is rolled out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.cli.curriculum_cmds import _write_variants
from ee_middleware.evals.curriculum import read_tasks

runner = CliRunner()
TOOLS = [{"type": "function", "function": {"name": "ls", "description": "List.", "parameters": {"type": "object", "properties": {}}}}]
NOWHERE = "openai:http://127.0.0.1:9/v1#m"  # never asked: every refusal comes first


def _flat(text: str) -> str:
    return " ".join(text.split())


def _run(tasks: Path, store: Path, *extra: str) -> object:
    args = ["curriculum", "run", str(tasks), "--policy", NOWHERE, "--sandbox", "bfcl", "--judge", NOWHERE, "--store", str(store)]
    return runner.invoke(app, [*args, *extra])


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_tasks_propose_writes_are_read_back_whole_with_a_line_separator_in_a_string(tmp_path: Path, separator: str) -> None:
    """A variant copies its parent's system prompt and tool descriptions word for word. Was: one holding U+2028 was
    written unescaped and split in two by the reader: "tasks line 1: not JSON (Unterminated string ...)"."""
    variants = [
        {
            "id": "v1",
            "instruction": f"list{separator}the folder",
            "tools": TOOLS,
            "system": [{"role": "system", "content": f"a{separator}b"}],
        },
        {"id": "v2", "instruction": "again", "tools": TOOLS},
    ]
    out = tmp_path / "tasks.jsonl"
    _write_variants(out, variants)
    assert read_tasks(out.read_text(encoding="utf-8")) == variants


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: p.mkdir(), "is a folder: give the path of the tasks.jsonl that 'ee curriculum propose' wrote"),
        (lambda p: p.write_text("\n  \n"), "holds no task (only blank lines): nothing to roll out"),
        (lambda p: p.write_bytes('{"id": "é"}\n'.encode("latin-1")), "is not UTF-8 text (byte 0xe9 at offset 8 is not)"),
    ],
    ids=["folder", "blank", "latin-1"],
)
def test_a_tasks_file_that_holds_no_readable_task_is_a_usage_error_naming_it(tmp_path: Path, make, expected: str) -> None:
    """Was: a folder was told "a file is expected there. Give the path of a file to write"; a blank file ran nothing
    and exited 0; a Latin-1 one ended in "unexpected UnicodeDecodeError ... a bug in ee-middleware"."""
    tasks = tmp_path / "tasks.jsonl"
    make(tasks)
    result = _run(tasks, tmp_path / "store")
    assert result.exit_code == 2 and expected in _flat(result.output), result.output
    assert not (tmp_path / "store").exists(), "refused before the store was opened"


@pytest.mark.parametrize("given", ["", "   "])
def test_a_blank_app_is_refused_before_any_rollout(tmp_path: Path, given: str) -> None:
    """Was: ``--app ""`` failed after the rollouts with "unexpected ValidationError" (the first task's trajectory stored
    already); ``--app "   "`` stored trajectories under the app '   '."""
    tasks = tmp_path / "tasks.jsonl"
    _write_variants(tasks, [{"id": "v1", "instruction": "list", "tools": TOOLS}])
    result = _run(tasks, tmp_path / "store", "--app", given)
    assert result.exit_code == 1 and "--app: Value error" in result.output and "is empty or blank" in result.output, result.output
    assert not (tmp_path / "store").exists()


def test_an_approve_if_module_that_raises_on_import_is_told_as_the_users_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: "unexpected RuntimeError ... (a bug in ee-middleware ... report it)"; the same module as a --sandbox got the
    plug-in's message, which names its line and says the error is there."""
    (tmp_path / "raising_approval.py").write_text('import os\n\nraise RuntimeError("APPROVAL_TABLE is not set")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    tasks = tmp_path / "tasks.jsonl"
    _write_variants(tasks, [{"id": "v1", "instruction": "list", "tools": TOOLS}])
    result = _run(tasks, tmp_path / "store", "--approve-if", "raising_approval:approve")
    flat = _flat(result.output)
    assert result.exit_code == 2 and "Invalid value for --approve-if" in flat, result.output
    assert "RuntimeError: APPROVAL_TABLE is not set (at" in flat and "raising_approval.py:3" in flat, flat
    assert "own module while Python imported it, not by ee-middleware" in flat and "bug in ee-middleware" not in flat
    missing = _run(tasks, tmp_path / "store", "--approve-if", "raising_approval")
    assert missing.exit_code == 2 and "is not of the form package.module:function" in _flat(missing.output), missing.output


def test_a_task_line_keeps_its_number_past_blank_lines(tmp_path: Path) -> None:
    text = json.dumps({"id": "v1", "instruction": "list", "tools": TOOLS}) + "\n\n\n" + "[1]\n"
    with pytest.raises(Exception, match=r"tasks line 4: a JSON list, not a task object"):
        read_tasks(text)
