"""The CLI's options bounded by the store's 64-bit range take it from ``ee_middleware._limits.INT64_MAX`` (one place,
dependency-free) rather than each module writing ``2**63 - 1`` again; the bound still holds at the command line."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware._limits import INT64_MAX
from ee_middleware.cli import datasets_cmds, replay_cmds, traces
from ee_middleware.cli.app import app

BOUNDED = [("traces", "list", "--limit"), ("replay", "list", "--limit"), ("datasets", "show", "--examples")]


@pytest.mark.parametrize("module", [traces, datasets_cmds, replay_cmds], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_no_module_writes_the_64_bit_bound_itself(module: object) -> None:
    source = inspect.getsource(module)  # type: ignore[arg-type]
    assert not re.search(r"2\s*\*\*\s*63", source), f"{module.__name__} writes 2**63 itself; use ee_middleware._limits.INT64_MAX"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("group", "command", "option"), BOUNDED)
def test_int64_max_is_taken_and_one_more_is_a_usage_error(group: str, command: str, option: str, tmp_path: Path) -> None:
    where = [str(tmp_path / "nothing")] if group == "datasets" else ["--store", str(tmp_path / "nothing")]
    taken = CliRunner().invoke(app, [group, command, *where, option, str(INT64_MAX)])
    assert taken.exit_code == 1 and option not in taken.stderr, taken.output  # past the option: nothing is there
    refused = CliRunner().invoke(app, [group, command, *where, option, str(INT64_MAX + 1)])
    assert refused.exit_code == 2 and option in refused.stderr, refused.output
