"""``ee`` whose stdout is not UTF-8 (``PYTHONIOENCODING=ascii``, a Latin-1 terminal): sweep W.

``ee traces list`` (also ``--json``), ``traces show`` and ``replay list`` ended with "unexpected UnicodeEncodeError ... (a
bug in ee-middleware)", even on an ASCII-only store (the tables' own "…"). Tables now write what the encoding lacks as
escapes, and ``--json`` is ASCII JSON with JSON's own escapes, which parses to the same text. Real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ee_middleware import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory

ENTRY = "import sys; from ee_middleware.cli.app import main; sys.argv[0] = 'ee'; main()"


def _ee(encoding: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONIOENCODING": encoding, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, env=env, timeout=120)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    opened = LocalExperienceStore(tmp_path / "store")
    try:
        opened.write([sample_trajectory("t1")])  # its task: "task t1 ✓ 日本"
    finally:
        opened.close()
    return tmp_path / "store"


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_read_commands_print_on_a_stdout_that_is_not_utf8(store: Path, encoding: str) -> None:
    listed = _ee(encoding, "traces", "list", "-s", str(store), "--status", "all", "--json")
    assert listed.returncode == 0, listed.stderr.decode(errors="replace")
    [row] = json.loads(listed.stdout.decode(encoding))
    assert row["task"] == "task t1 ✓ 日本", "JSON's escapes give back the same text"
    for args in (("traces", "list", "-s", str(store), "--status", "all"), ("traces", "show", "t1", "-s", str(store))):
        shown = _ee(encoding, *args)
        assert shown.returncode == 0, shown.stderr.decode(errors="replace")
        text = shown.stdout.decode(encoding)
        assert "task t1 \\u2713 \\u65e5\\u672c" in text and "UnicodeEncodeError" not in shown.stderr.decode(errors="replace")
