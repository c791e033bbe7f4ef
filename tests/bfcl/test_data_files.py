"""A damaged bfcl-eval data file is named, with the reinstall command: it was "unexpected JSONDecodeError ... (a bug in
ee-middleware ...)" and named no file. The real package's files, copied and cut in a folder of the test's own."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ee_middleware.bfcl import data
from ee_middleware.bfcl._package import INSTALL_HINT, package_dir
from ee_middleware.errors import ConfigError


@pytest.mark.parametrize(
    ("damage", "said"), [("cut", "line 1 is not JSON"), ("list", "line 2 is not a JSON object"), ("bytes", "line 1 is not JSON")]
)
def test_a_damaged_data_file_is_named_with_the_reinstall_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str, said: str
) -> None:
    copy = tmp_path / "bfcl_eval"
    shutil.copytree(package_dir() / "data", copy / "data")
    questions = copy / "data" / "BFCL_v4_multi_turn_base.json"
    lines = questions.read_text(encoding="utf-8").splitlines()
    if damage == "bytes":  # bytes that are no UTF-8 inside a task's text: it parsed once read with replacements
        at = lines[0].index('"content": "') + len('"content": "')  # inside the task's text: still JSON read with U+FFFD
        questions.write_bytes(lines[0][:at].encode() + b"\xff\xfe" + lines[0][at:].encode() + b"\n")
    else:
        questions.write_text(lines[0][:70] if damage == "cut" else f"{lines[0]}\n[1, 2]\n", encoding="utf-8")
    monkeypatch.setattr(data, "package_dir", lambda: copy)
    with pytest.raises(ConfigError) as raised:
        data.load_entries("multi_turn_base", limit=1)
    message = str(raised.value)
    assert f"BFCL data file {questions} is damaged: {said}" in message and INSTALL_HINT in message, message
