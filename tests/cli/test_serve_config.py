"""``ee serve vllm`` and ``ee serve local`` read their settings from ``--config`` (``[serve]``, with ``[serve.vllm]`` and
``[serve.local]``), flags override the file, and the file's mistakes are refused naming the file, the table and the key.

Before, neither command had ``--config``. No vLLM is started: ``ee serve vllm --print-command`` prints the command it
would run; ``ee serve local`` is given a port another socket holds, which it refuses before loading any model, and one
``slow`` test serves a tiny random model for real (a subprocess, stopped at the end).
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.cli.test_experience_config import help_entries

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _config(tmp_path: Path, text: str) -> Path:
    config = tmp_path / "serve.toml"
    config.write_text(text)
    return config


@pytest.fixture
def taken_ports() -> Iterator[tuple[int, int]]:
    """Two ports other sockets listen on."""
    with socket.socket() as one, socket.socket() as two:
        for listener in (one, two):
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
        yield one.getsockname()[1], two.getsockname()[1]


def test_vllm_reads_serve_and_its_sub_table_and_flags_override_them(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    config = _config(
        tmp_path,
        f'[serve]\nbase_model = "{base}"\nport = 8123\nbase_name = "tiny"\nmax_lora_rank = 32\nchat_template = "own"\n'
        '[serve.vllm]\nmax_loras = 3\ntool_call_parser = ""\nlauncher = "module"\nvllm_python = "/opt/vllm/bin/python"\n'
        'vllm_args = ["--enforce-eager"]\n'
        "[serve.local]\nnum_threads = 2\n",  # the other server's sub-table: checked, not used
    )
    from_file = runner.invoke(app, ["serve", "vllm", "-c", str(config), "--print-command"], env={"EE_MAX_LORA_RANK": None})
    assert from_file.exit_code == 0, from_file.output
    command = from_file.stdout
    assert f"/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server --model {base} --served-model-name tiny" in command, command
    assert "--port 8123 --enable-lora --max-lora-rank 32 --max-loras 3 --enforce-eager" in command, command
    assert "--tool-call-parser" not in command, "tool_call_parser = '' serves without one"

    flagged = runner.invoke(
        app,
        ["serve", "vllm", "--config", str(config), "--print-command", "--port", "9001", "--max-loras", "5", "--vllm-arg=--seed=1"],
        env={"EE_MAX_LORA_RANK": "64"},
    )
    assert flagged.exit_code == 0, flagged.output
    assert "--port 9001 --enable-lora --max-lora-rank 64 --max-loras 5 --seed=1" in flagged.stdout, flagged.stdout
    assert "--enforce-eager" not in flagged.stdout, "--vllm-arg replaces the file's vllm_args"
    assert f"note: EE_MAX_LORA_RANK=64 overrides max_lora_rank = 32 in [serve] of {config}" in _flat(flagged.stderr), flagged.stderr


def test_local_reads_its_port_from_the_file_and_the_flag_overrides_it(tmp_path: Path, taken_ports: tuple[int, int]) -> None:
    """The local server checks its port before it loads the model: the port it refuses is the one it was configured with."""
    in_file, by_flag = taken_ports
    config = _config(tmp_path, f'[serve]\nbase_model = "{tmp_path / "no-model"}"\nport = {in_file}\n[serve.local]\nnum_threads = 2\n')
    from_file = runner.invoke(app, ["serve", "local", "-c", str(config)])
    assert from_file.exit_code == 1, from_file.output
    assert f"Cannot listen on 127.0.0.1:{in_file}: another process" in from_file.stderr, from_file.stderr
    flagged = runner.invoke(app, ["serve", "local", "-c", str(config), "--port", str(by_flag)])
    assert flagged.exit_code == 1 and f"Cannot listen on 127.0.0.1:{by_flag}: another process" in flagged.stderr, flagged.output


@pytest.mark.slow  # loads a model in a server process: tens of seconds on a busy CPU
def test_local_serves_a_tiny_model_as_its_file_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """base_name (the name requests give, as in [improve.serving]) and max_lora_rank come from the file; the recorded
    server state says so."""
    pytest.importorskip("peft")
    import json

    import httpx

    from ee_middleware.adapters.serving.launch import ServerProcess, free_port
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    base = save_tiny_llama(tmp_path / "tiny", build_test_tokenizer(["hello there", "a tool call"]))
    port = free_port()
    config = _config(tmp_path, f'[serve]\nbase_model = "{base}"\nport = {port}\nbase_name = "from-the-file"\nmax_lora_rank = 4\n')
    command = [sys.executable, "-m", "ee_middleware.cli", "serve", "local", "-c", str(config)]
    with ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="local server", end_with_parent=True) as server:
        listed = httpx.get(f"{server.url}/models", timeout=30).json()
        assert [model["id"] for model in listed["data"]] == ["from-the-file"], listed
        state = json.loads((tmp_path / "cache" / "servers" / f"{port}.json").read_text())
        assert state["max_lora_rank"] == 4, state
    assert not server.running()


@pytest.mark.parametrize("command", ["vllm", "local"])
@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ('base_nam = "x"', "base_nam: Extra inputs are not permitted (did you mean base_name?): in [serve] of CONFIG"),
        ('served_model_name = "x"', "served_model_name: Extra inputs are not permitted (did you mean base_name?)"),
        (
            "[serve.vllm]\nmax_lora = 2",
            "vllm.max_lora: Extra inputs are not permitted (did you mean max_loras?): in [serve.vllm] of CONFIG",
        ),
        ('port = "8000"', "port: Input should be a valid integer (got '8000'): in [serve] of CONFIG, TOML is typed: \"8000\" is a string"),
        ("[serve.local]\nnum_threads = 1.5", "local.num_threads: Input should be a valid integer (got 1.5): in [serve.local] of CONFIG"),
        ("num_threads = 2", "num_threads is in [serve] of CONFIG: write it in [serve.local] (read by ee serve local only)"),
        ("[serve.vllm]\nport = 2", "port is in [serve.vllm] of CONFIG: write it in [serve] (both servers read it)"),
    ],
    ids=["unknown-key", "flag-name", "unknown-sub-key", "wrong-type", "wrong-sub-type", "misplaced-key", "misplaced-shared-key"],
)
def test_a_files_mistake_is_refused_naming_the_file_the_table_and_the_key(command: str, lines: str, expected: str, tmp_path: Path) -> None:
    config = _config(tmp_path, f'[serve]\nbase_model = "{tmp_path}"\n{lines}\n')
    print_command = ["--print-command"] if command == "vllm" else []  # (the local server fails on the file before serving)
    result = runner.invoke(app, ["serve", command, "--config", str(config), *print_command])
    assert result.exit_code == 1, result.output
    error = _flat(result.stderr)
    assert error.startswith(f"error: Invalid serve {command} configuration:"), error
    assert expected.replace("CONFIG", str(config)) in error, error


def test_a_sub_table_mistake_is_named_whatever_flag_is_given(tmp_path: Path) -> None:
    """A flag for [serve.vllm] merges into the file's sub-table; the file's own values are still checked as written."""
    config = _config(tmp_path, f'[serve]\nbase_model = "{tmp_path}"\n[serve.vllm]\nmax_num_seqs = "2"\n')
    result = runner.invoke(app, ["serve", "vllm", "-c", str(config), "--max-loras", "2", "--print-command"])
    assert result.exit_code == 1, result.output
    assert f"vllm.max_num_seqs: Input should be a valid integer (got '2'): in [serve.vllm] of {config}" in _flat(result.stderr)


def test_a_rank_vllm_refuses_in_the_file_is_named_with_the_file(tmp_path: Path) -> None:
    config = _config(tmp_path, f'[serve]\nbase_model = "{tmp_path}"\nmax_lora_rank = 3\n')
    result = runner.invoke(app, ["serve", "vllm", "-c", str(config), "--print-command"], env={"EE_MAX_LORA_RANK": None})
    assert result.exit_code == 1, result.output
    assert f"max_lora_rank = 3 in [serve] of {config}: vLLM accepts --max-lora-rank 1, 8, 16" in _flat(result.stderr), result.stderr


@pytest.mark.parametrize("command", ["vllm", "local"])
def test_without_a_base_the_flag_and_the_key_are_named(command: str, tmp_path: Path) -> None:
    config = _config(tmp_path, "[serve]\nport = 8001\n")
    for args in (["-c", str(config)], []):
        result = runner.invoke(app, ["serve", command, *args])
        assert result.exit_code == 2, result.output
        assert f"The serve {command} command needs --base (or base_model in the [serve] table of the --config file)." in _flat(
            result.stderr
        ), result.stderr


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("vllm", ("--host", "--port", "--max-lora-rank", "--tool-call-parser", "--launcher", "--vllm-python", "--timeout")),
        ("local", ("--host", "--port", "--max-lora-rank", "--num-threads", "--chat-template")),
    ],
)
def test_help_names_the_config_table_and_the_defaults(command: str, flags: tuple[str, ...]) -> None:
    from ee_middleware.adapters.serving import config as serve_config
    from ee_middleware.cli import serve_cmds

    result = runner.invoke(app, ["serve", command, "--help"], env={"COLUMNS": "2000", "TERMINAL_WIDTH": "2000"})
    assert result.exit_code == 0, result.output
    assert "TOML file with a [serve] table (and [serve.local] / [serve.vllm]); flags override it." in _flat(result.output)
    entries = help_entries(result.output)
    missing = [flag for flag in flags if "[default:" not in entries.get(flag, "")]
    assert not missing, missing
    # the defaults --help shows are the config's
    for name in ("DEFAULT_PORT", "DEFAULT_MAX_LORA_RANK", "DEFAULT_START_TIMEOUT_S", "DEFAULT_TOOL_CALL_PARSER", "MAX_THREADS"):
        assert getattr(serve_cmds, name) == getattr(serve_config, name), name


def test_serve_is_ee_s_own_table(tmp_path: Path) -> None:
    """A [serve] file given to another job names who reads it; ee improve does not warn about it beside its own tables."""
    import warnings

    from ee_middleware.jobs.config import ImproveConfig
    from ee_middleware.store import LocalExperienceStore
    from tests.jobs.test_config import _base_folder, _improve_file

    config = _config(tmp_path, f'[serve]\nbase_model = "{tmp_path}"\n')
    result = runner.invoke(app, ["train", "-c", str(config)])
    assert result.exit_code == 1, result.output
    assert "it has [serve] (read by ee serve local and ee serve vllm)" in _flat(result.stderr), result.stderr

    LocalExperienceStore(tmp_path / "s").close()
    body = "[serve]\nport = 8001\n[serve.vllm]\nmax_loras = 2\n[likelihood]\nlimit = 3\n[curriculum_propose]\nn = 2\n"
    path = _improve_file(tmp_path, _base_folder(tmp_path), body)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ImproveConfig.load(path).check()
    assert not [str(w.message) for w in caught if "no ee job reads" in str(w.message)]


def test_an_api_key_for_vllm_is_not_logged() -> None:
    """vllm_args may now come from a file kept beside others; the 'starting:' line ee logs hides vLLM's --api-key."""
    from ee_middleware.cli.serve_cmds import _shown_command

    shown = _shown_command(["vllm", "serve", "/m", "--api-key", "sk-one", "--port", "8000", "--api-key=sk-two"])
    assert shown == "vllm serve /m --api-key *** --port 8000 --api-key=***", shown


def test_the_printed_vllm_command_runs_as_printed_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--print-command joined the words with spaces, so a base model folder with a space in its name broke the command
    pasted into a shell, a relative base read like a hub id from any other folder, and vLLM's --api-key was printed in
    clear (a CLI sweep). The words are shell-quoted, the base is its absolute folder (served under the name given), and
    the key is read from VLLM_API_KEY where the command runs."""
    import shlex

    (tmp_path / "my models" / "tiny base").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "my models")
    printed = runner.invoke(
        app,
        ["serve", "vllm", "--base", "tiny base", "--print-command", "--chat-template", "own", "--vllm-arg=--api-key=sk-fleet-1234"],
        env={"EE_MAX_LORA_RANK": None},
    )
    assert printed.exit_code == 0, printed.output
    line = printed.stdout.strip()
    assert "sk-fleet-1234" not in line and "VLLM_API_KEY" in printed.stderr
    words = shlex.split(line)
    assert words[words.index("serve") + 1] == str(tmp_path / "my models" / "tiny base"), words
    assert words[words.index("--served-model-name") + 1] == "tiny base" and "--api-key=$VLLM_API_KEY" in words, words
