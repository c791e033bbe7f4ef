"""`ee adapters show` prints what a registry stored (a retire reason, a failure reason, names) as text: rich markup in
it is shown as written, and control characters a terminal would act on are written out (``\\x1b``). Before, the reason
was printed as markup (``[red]`` coloured it, an unknown closing tag crashed the command) and its escape sequences
reached the terminal."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from tests.cli.test_adapters_show_event_times import _adapter

REASON = "gate refused [red]twice[/red] [/bold] \x1b]0;owned\x07\x1b[2J\u202egnp.exe"


def test_show_prints_a_stored_reason_as_text_with_control_characters_written_out(tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "registry")
    record = registry.register(_adapter(tmp_path / "a"), "support-bot", by="alice")
    registry.retire(record.name, by="bob", reason=REASON)

    result = CliRunner().invoke(app, ["adapters", "show", record.name, "-r", str(tmp_path / "registry")])

    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "reason: gate refused [red]twice[/red] [/bold] \\x1b]0;owned\\x07\\x1b[2J\\u202egnp.exe" in flat, result.output
    assert not any(c in result.output for c in "\x1b\x07\u202e"), repr(result.output)
