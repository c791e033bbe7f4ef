"""A missing registry's error names a register command that runs as written (it lacked the required -r)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.adapters.helpers import write_adapter


def test_the_missing_registry_hint_registers_an_adapter_when_followed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EE_ADAPTER_REGISTRY", raising=False)  # the hint must not rely on it
    registry = tmp_path / "reg"
    listed = CliRunner().invoke(app, ["adapters", "list", "-r", str(registry)])
    assert listed.exit_code == 1, listed.output
    message = " ".join(listed.stderr.split())
    hint = re.search(r"Register an adapter first: (ee adapters register .*)", message)
    assert hint is not None, message

    command = hint.group(1).replace("PATH", str(write_adapter(tmp_path / "adapter"))).replace("APP", "shop")
    followed = CliRunner().invoke(app, shlex.split(command)[1:])
    assert followed.exit_code == 0, f"{command}: {followed.output}"
    relisted = CliRunner().invoke(app, ["adapters", "list", "-r", str(registry), "--json"])
    assert relisted.exit_code == 0 and "shop" in relisted.stdout, relisted.output
