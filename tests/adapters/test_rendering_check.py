"""An adapter is checked against the chat template of the server it is promoted into: a REAL local server process (tiny
random Llama with SmolLM2's template, served with the shipped smollm2-tools template), real peft adapters with the
manifest ``ee train`` writes, a real registry."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.errors import ChatTemplateMismatchError
from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend
from ee_middleware.adapters.serving.rendering import check_rendering, forget_server, record_server, server_record, servers_folder
from ee_middleware.adapters.templates import AS_IS, ServedTemplate

from .conftest import train_shaped_adapter

TOOLS_AS_TEXT = {
    "tools": "system message (template ignores tools)",
    "tool_calls": "<tool_call> text (template ignores tool_calls, renders one per message, or drops the text beside them)",
    "tool_results": "chat template",
    "system": "chat template",
}
"""What `ee train` records for a base with SmolLM2's template (it ignores tools and tool calls)."""
BEFORE_FALLBACKS = {"tools": "chat template", "tool_calls": "chat template"}
"""A manifest of a trainer from before that base's fallbacks: its template rendered tools and calls (so it believed)."""


def _adapter(base: Path, folder: Path, seed: int, rendering: dict[str, str] | None) -> Path:
    train_shaped_adapter(base, folder, seed=seed)
    if rendering is not None:
        (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "rendering": rendering}))
    return folder


def test_the_local_server_records_the_template_it_renders_with(local_server: Any) -> None:
    """Given smollm2-tools on a SmolLM2-template base, it renders as the trainer does: tools in the system message,
    calls as <tool_call> text."""
    state = LocalBackend(local_server.url).served_template()
    assert state is not None and state["pid"] == local_server.pid
    assert state["chat_template"]["kind"] == "file" and state["chat_template"]["rendering"] == TOOLS_AS_TEXT


def test_a_promote_into_a_server_rendering_otherwise_is_refused_and_loads_nothing(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """An adapter trained before the fallbacks existed (its manifest: tools and calls by the template) would see tool
    schemas in the system message and calls as text on this server: refused, nothing loaded, still a candidate; with
    ignore_rendering it goes live and the history records the override. Before, it was promoted silently."""
    registry = LocalAdapterRegistry(tmp_path / "registry")
    record = registry.register(_adapter(tiny_base, tmp_path / "old", 11, BEFORE_FALLBACKS), "support-bot")
    replicas = [LocalBackend(local_server.url)]
    with pytest.raises(ChatTemplateMismatchError) as caught:
        promote(registry, record.name, replicas)
    message = str(caught.value)
    assert record.name in message and local_server.url in message
    assert "tools: trained with the chat template, served with the fallback" in message
    assert "tool_calls" in message and "train it again" in message and "--ignore-rendering" in message
    assert record.name not in replicas[0].list()
    assert registry.get(record.name).status == "candidate"

    said: list[str] = []
    result = promote(registry, record.name, replicas, ignore_rendering=True, progress=said.append)
    assert result.live.name == record.name and registry.get(record.name).status == "live"
    assert [check.status for check in result.rendering] == ["differs"]
    assert result.to_json()["rendering"][0]["differences"][0]["part"] == "tools"
    assert any(line.startswith("ignored: ") for line in said)
    started = [e for e in registry.history(adapter=record.name) if e["action"] == "promote-started"][-1]
    assert [d["part"] for d in started["ignored_rendering"][0]] == ["tools", "tool_calls"]
    replicas[0].unload(record.name)


def test_a_matching_adapter_is_promoted_and_an_old_manifest_gets_a_note(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    registry = LocalAdapterRegistry(tmp_path / "registry")
    matching = registry.register(_adapter(tiny_base, tmp_path / "new", 12, TOOLS_AS_TEXT), "support-bot")
    unrecorded = registry.register(_adapter(tiny_base, tmp_path / "unrecorded", 13, None), "support-bot")
    replicas = [LocalBackend(local_server.url)]
    result = promote(registry, matching.name, replicas)
    assert [(c.status, c.server) for c in result.rendering] == [("same", local_server.url)]

    said: list[str] = []
    result = promote(registry, unrecorded.name, replicas, progress=said.append)
    assert result.live.name == unrecorded.name
    [check] = result.rendering
    assert check.status == "unknown" and "records no rendering" in check.message and unrecorded.name in check.message
    assert any("records no rendering" in line for line in said)

    back = rollback(registry, "support-bot", replicas)  # the same check; a rollback only says what it found
    assert back.live.name == matching.name and [c.status for c in back.rendering] == ["same"]
    for name in (matching.name, unrecorded.name):
        replicas[0].unload(name)


def test_the_cli_refuses_a_mismatched_adapter_until_ignore_rendering(local_server: Any, tiny_base: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    registry = LocalAdapterRegistry(tmp_path / "registry")
    record = registry.register(_adapter(tiny_base, tmp_path / "old", 14, BEFORE_FALLBACKS), "support-bot")
    common = ["-r", str(tmp_path / "registry"), "--server", local_server.url, "--backend", "local"]
    runner = CliRunner()
    refused = runner.invoke(app, ["adapters", "promote", record.name, *common])
    assert refused.exit_code == 1 and "would see prompts unlike its training rows" in refused.output
    forced = runner.invoke(app, ["adapters", "promote", record.name, *common, "--ignore-rendering", "--json"])
    assert forced.exit_code == 0, forced.output
    out = json.loads(forced.stdout)
    assert out["live"] == record.name and out["rendering"][0]["status"] == "differs"
    assert {"live", "app", "replaced", "seconds", "loaded_on", "verified_on"} <= set(out)  # the keys it always had
    LocalBackend(local_server.url).unload(record.name)


def test_a_state_file_of_a_server_gone_or_on_another_host_is_not_taken_for_the_server(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record_server("http://127.0.0.1:59871/v1", pid=gone.pid, base="/b", served_model_name="b", template=ServedTemplate("own", None, AS_IS))
    assert (servers_folder() / "59871.json").is_file()
    assert server_record("http://127.0.0.1:59871/v1") is None
    record_server(
        "http://127.0.0.1:59872/v1", pid=os.getpid(), base="/b", served_model_name="b", template=ServedTemplate("own", None, AS_IS)
    )
    assert server_record("http://localhost:59872/v1") is not None
    assert server_record("http://gpu-box.example:59872/v1") is None  # another machine's server on that port


def test_two_servers_on_one_port_bound_to_other_addresses_keep_their_own_state_files(tmp_path: Path) -> None:
    # The second overwrote the first's PORT.json, and stopping it removed the file while the first still served: a
    # promote into the first then checked nothing of its rank or template.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        template = ServedTemplate("own", None, AS_IS)
        first = record_server(
            "http://127.0.0.1:59873/v1", pid=os.getpid(), base="/a", served_model_name="a", template=template, max_lora_rank=8
        )
        second = record_server(
            "http://127.0.0.2:59873/v1", pid=other.pid, base="/b", served_model_name="b", template=template, max_lora_rank=64
        )
        assert first != second and first.is_file() and second.is_file()
        assert [server_record(f"http://{host}:59873/v1")["max_lora_rank"] for host in ("127.0.0.1", "localhost", "127.0.0.2")] == [8, 8, 64]
        forget_server(second, other.pid)
        assert not second.exists() and server_record("http://localhost:59873/v1")["max_lora_rank"] == 8
        # the other way round: the first bound to another address than the one a local name gives
        third = record_server(
            "http://127.0.0.2:59874/v1", pid=other.pid, base="/b", served_model_name="b", template=template, max_lora_rank=64
        )
        fourth = record_server(
            "http://127.0.0.1:59874/v1", pid=os.getpid(), base="/a", served_model_name="a", template=template, max_lora_rank=8
        )
        assert third != fourth
        assert [server_record(f"http://{host}:59874/v1")["max_lora_rank"] for host in ("localhost", "127.0.0.1", "127.0.0.2")] == [8, 8, 64]
    finally:
        other.kill()
        other.wait()
    assert server_record("http://127.0.0.2:59873/v1") is None  # gone


def test_the_comparison_goes_by_template_or_fallback_not_by_wording() -> None:
    """A manifest written by an older version words the fallback otherwise; a part it leaves out was the template's."""
    state = {"chat_template": ServedTemplate("derived", "/t.jinja", TOOLS_AS_TEXT).to_json()}
    older = {
        "rendering": {"tools": "system message (template ignores tools)", "tool_calls": "<tool_call> text (template ignores tool_calls)"}
    }
    assert check_rendering("a", older, "http://s/v1", state).status == "same"
    phi = {**TOOLS_AS_TEXT, "tool_results": "<tool_response> blocks in a user turn (template skips or refuses tool messages)"}
    check = check_rendering(
        "a", {"rendering": TOOLS_AS_TEXT}, "http://s/v1", {"chat_template": ServedTemplate("derived", "/t", phi).to_json()}
    )
    assert check.differs and [d["part"] for d in check.differences] == ["tool_results"]
    unknown = check_rendering("a", {"rendering": TOOLS_AS_TEXT}, "http://s/v1", None)
    assert unknown.status == "unknown" and "not started by `ee serve vllm`" in unknown.message


def test_a_server_that_recorded_nothing_is_asked_what_it_renders(
    local_server: Any, tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server started by hand (`vllm serve` on a GPU box) records no state file, and the check said only that it could
    not tell: an adapter trained before the fallbacks was promoted silently into a server rendering tool schemas into
    the system message. Now the server is asked (POST /tokenize, vLLM's and the local server's) to render the check
    requests, compared token for token with the trainer's rendering for the adapter's base: the same refusal, and a
    matching adapter goes live as "same"."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "another-machine-cache"))  # the server's state file is not here
    replicas = [LocalBackend(local_server.url)]
    assert replicas[0].served_template() is None
    asked = replicas[0].probe_template(str(tiny_base))
    assert asked is not None and asked["chat_template"]["kind"] == "server"
    assert asked["chat_template"]["rendering"] == TOOLS_AS_TEXT and asked["chat_template"]["as_trainer"] is True

    registry = LocalAdapterRegistry(tmp_path / "registry")
    old = registry.register(_adapter(tiny_base, tmp_path / "old", 21, BEFORE_FALLBACKS), "support-bot")
    with pytest.raises(ChatTemplateMismatchError, match="tools: trained with the chat template, served with the fallback"):
        promote(registry, old.name, replicas)
    assert old.name not in replicas[0].list()
    matching = registry.register(_adapter(tiny_base, tmp_path / "new", 22, TOOLS_AS_TEXT), "support-bot")
    result = promote(registry, matching.name, replicas)
    assert [c.status for c in result.rendering] == ["same"]
    replicas[0].unload(matching.name)


@contextlib.contextmanager
def _json_server(answers: Callable[[int], tuple[int, Any]]) -> Iterator[str]:
    """A real HTTP server (``ee_middleware.testing.http.serving``) answering the n-th POST (from 0) with ``answers(n)``
    (status, JSON body); its ``/v1`` URL."""
    import http.server

    from ee_middleware.testing.http import send_json, serving

    asked: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status, body = answers(len(asked))
            asked.append(1)
            send_json(self, body, status)

        def log_message(self, *args: Any) -> None:
            pass

    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as url:
        yield url


def test_a_server_that_cannot_be_asked_leaves_the_check_unknown(tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real HTTP server without POST /tokenize (another OpenAI-compatible server): the check says it could not ask, and
    why; nothing is refused on a guess."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    with _json_server(lambda n: (404, {"detail": "Not Found"})) as url:
        asked = LocalBackend(url).probe_template(str(tiny_base))
        assert asked is not None and asked["chat_template"]["rendering"] is None
        assert "/tokenize" in asked["chat_template"]["note"] and "404" in asked["chat_template"]["note"]
        assert "ee-adapters-admin" not in asked["chat_template"]["note"], "(was: the client's advice on its placeholder model)"
        check = check_rendering("a", {"rendering": TOOLS_AS_TEXT}, url, asked)
        assert check.status == "unknown" and "/tokenize" in check.message


def test_a_server_failing_part_way_through_the_questions_is_no_answer(
    tiny_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real HTTP server that answers the first /tokenize and then fails (a 503 of an overloaded server): the check is
    unknown and says the server failed, not that it "renders unlike both" (found by review)."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    with _json_server(lambda n: (200, {"tokens": [1, 2], "count": 2}) if n == 0 else (503, {"detail": "overloaded"})) as url:
        template = LocalBackend(url).probe_template(str(tiny_base))["chat_template"]
        assert template["rendering"] is None and "failed part-way" in template["note"] and "unlike both" not in template["note"]


def _copy_of(base: Path, folder: Path) -> Path:
    """A byte-identical copy of the base model folder ``base`` at another path (what `cp -r` makes)."""
    shutil.copytree(base, folder)
    return folder


def test_an_adapter_trained_on_a_copy_of_the_served_base_is_compared_as_on_the_base_itself(
    local_server: Any, tiny_base: Path, tmp_path: Path
) -> None:
    """The server serves tiny_base; the adapters were trained on a byte-identical copy at another path. The base check
    (same_base) takes the copy for the same model and lets the promote go ahead, but the rendering check said only "Not
    compared: ... serves the base A, ... was trained on B", so an adapter trained before the fallbacks was promoted
    into a server rendering otherwise without a word. Now the two are compared as for the same path: the copy holds
    the same weights and the same tokenizer and chat template files."""
    copy = _copy_of(tiny_base, tmp_path / "copy-of-base")
    registry = LocalAdapterRegistry(tmp_path / "registry")
    old = registry.register(_adapter(copy, tmp_path / "old", 31, BEFORE_FALLBACKS), "support-bot")
    assert Path(old.base_model).resolve() == copy.resolve()
    replicas = [LocalBackend(local_server.url)]
    with pytest.raises(ChatTemplateMismatchError, match="tools: trained with the chat template, served with the fallback") as caught:
        promote(registry, old.name, replicas)
    assert f"{copy}, which {old.name} was trained on, is a copy of {tiny_base}" in " ".join(str(caught.value).split())
    assert old.name not in replicas[0].list()

    matching = registry.register(_adapter(copy, tmp_path / "new", 32, TOOLS_AS_TEXT), "support-bot")
    result = promote(registry, matching.name, replicas)
    [check] = result.rendering
    assert check.status == "same", check.message
    assert f"{copy}, which {matching.name} was trained on, is a copy of {tiny_base}" in " ".join(check.message.split()), check.message
    replicas[0].unload(matching.name)


def test_a_copy_of_the_served_base_with_another_chat_template_is_not_compared(tiny_base: Path, tmp_path: Path) -> None:
    """Same weights and config (same_base: the same model), but the copy's chat template was edited: the manifest's
    rendering was made with that template, so it says nothing of what the server renders with its own. The check says
    so, naming the file that differs, instead of calling the rendering the same."""
    copy = _copy_of(tiny_base, tmp_path / "edited-copy")
    template = copy / "chat_template.jinja"
    assert template.is_file()
    template.write_text(template.read_text() + "{# edited #}")
    state = {"base": str(tiny_base), "chat_template": ServedTemplate("file", "/t.jinja", TOOLS_AS_TEXT).to_json()}
    check = check_rendering("a", {"rendering": TOOLS_AS_TEXT}, "http://s/v1", state, base_model=str(copy))
    assert check.status == "unknown", check.message
    flat = " ".join(check.message.split())
    assert "same weights" in flat and "chat_template.jinja" in flat and str(copy) in flat and str(tiny_base) in flat, flat


def test_an_adapter_trained_on_another_model_is_still_not_compared(tiny_base: Path, tmp_path: Path) -> None:
    """A base with other weights (another seed) and the same tokenizer: not the same model, not compared."""
    import transformers

    from ee_middleware.testing.tiny_models import save_tiny_llama

    other = save_tiny_llama(tmp_path / "other", transformers.AutoTokenizer.from_pretrained(tiny_base), seed=5)
    state = {"base": str(tiny_base), "chat_template": ServedTemplate("file", "/t.jinja", TOOLS_AS_TEXT).to_json()}
    check = check_rendering("a", {"rendering": TOOLS_AS_TEXT}, "http://s/v1", state, base_model=str(other))
    assert check.status == "unknown" and check.message.startswith("Not compared"), check.message
