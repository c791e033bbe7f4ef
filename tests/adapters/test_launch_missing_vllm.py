"""``ee serve vllm`` where vLLM's program cannot be run, and the name of the log a launched server writes.

Before: "error: vllm: No such file or directory. Check the path." (the CLI's generic text for a missing file), and the
log of the "vLLM server" was ``ee-vLLM server-XXXX.log``, a name with a space that breaks a pasted ``tail -f``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.errors import ServerStartError
from ee_middleware.adapters.serving.launch import ServerProcess, VLLMOptions, free_port, vllm_command, vllm_env


@pytest.fixture
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder tempfile makes files in, for this test alone (where the launcher puts the logs it makes)."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture
def no_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with no ``vllm`` on it; the fake ``--vllm-python`` it returns has no ``vllm`` beside it either."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return tmp_path / "env" / "bin" / "python"


def test_a_vllm_command_not_on_path_says_how_to_start_vllm_otherwise(no_vllm: Path, temp_dir: Path) -> None:
    options = VLLMOptions(base="/models/base", port=free_port(), python=str(no_vllm))
    server = ServerProcess(vllm_command(options), f"http://127.0.0.1:{options.port}/v1", env=vllm_env(options), name="vLLM server")
    with pytest.raises(ServerStartError) as caught:
        server.start(timeout_s=5)
    message = str(caught.value)
    assert "The `vllm` command is not on PATH" in message, message
    assert "--launcher module --vllm-python ENV/bin/python" in message and "ee serve local" in message, message
    assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert list(temp_dir.iterdir()) == [] and not server.running(), "no log left, nothing running"


def test_a_vllm_python_that_does_not_exist_is_named(tmp_path: Path, temp_dir: Path) -> None:
    options = VLLMOptions(base="/models/base", port=free_port(), launcher="module", python=str(tmp_path / "nowhere" / "python"))
    server = ServerProcess(vllm_command(options), f"http://127.0.0.1:{options.port}/v1", env=vllm_env(options), name="vLLM server")
    with pytest.raises(ServerStartError, match=r"nowhere/python, does not exist\. Pass --vllm-python"):
        server.start(timeout_s=5)


def test_ee_serve_vllm_without_vllm_says_so_in_one_line(no_vllm: Path, tiny_base: Path) -> None:
    from ee_middleware.cli.app import app

    result = CliRunner().invoke(app, ["serve", "vllm", "--base", str(tiny_base), "--port", str(free_port())])
    assert result.exit_code == 1, result.output
    assert "error: The `vllm` command is not on PATH" in result.output, result.output
    assert "No such file or directory" not in result.output and "Check the path" not in result.output, result.output


def test_the_log_a_server_makes_has_a_name_without_spaces(temp_dir: Path) -> None:
    server = ServerProcess([sys.executable, "-c", "raise SystemExit(3)"], f"http://127.0.0.1:{free_port()}/v1", name="vLLM server")
    with pytest.raises(ServerStartError) as caught:
        server.start(timeout_s=10, poll_s=0.05)
    assert server.log_path is not None, "a failed start keeps its log"
    assert server.log_path.parent == temp_dir and server.log_path.name.startswith("ee-vllm-server-"), server.log_path
    assert server.log_path.suffix == ".log" and " " not in str(server.log_path)
    assert str(server.log_path) in str(caught.value)
