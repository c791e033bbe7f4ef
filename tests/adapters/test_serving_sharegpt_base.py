"""Serving a base whose own chat template shows no message text (a ShareGPT-style template reads ``from``/``value``):
a template given with --chat-template replaces it and is what is judged; only the template a server would render with
is refused, named, and without --chat-template the refusal names that fix. REAL tiny Llama bases, real local server
processes, real peft adapters and registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.promote import promote
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import LocalBackend

from .conftest import CORPUS, train_shaped_adapter

SHAREGPT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + (message['from'] or '') + '\n' + (message['value'] or '') + "
    "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>gpt\n' }}{% endif %}"
)
"""A ShareGPT-keyed community template (axolotl fine-tunes): it reads message['from'] and message['value']."""
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A role/content ChatML template, the one a user gives such a base to serve it."""


@pytest.fixture(scope="module")
def sharegpt_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved with a tokenizer whose own chat template is ShareGPT-keyed."""
    pytest.importorskip("peft")
    from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("sharegpt-base"), build_test_tokenizer(CORPUS, chat_template=SHAREGPT_TEMPLATE))


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("templates")
    (folder / "chatml.jinja").write_text(CHATML_TEMPLATE)
    (folder / "sharegpt.jinja").write_text(SHAREGPT_TEMPLATE)
    return {"chatml": folder / "chatml.jinja", "sharegpt": folder / "sharegpt.jinja"}


@pytest.fixture(scope="module")
def chatml_server(sharegpt_base: Path, templates: dict[str, Path]) -> Iterator[Any]:
    """A real local server process serving the ShareGPT base with the ChatML template given."""
    from ee_middleware.adapters.serving.launch import ServerProcess, free_port, local_command

    port = free_port()
    command = local_command(
        str(sharegpt_base), port=port, served_model_name="sharegpt", max_lora_rank=8, chat_template=str(templates["chatml"])
    )
    server = ServerProcess(command, f"http://127.0.0.1:{port}/v1", name="local server", end_with_parent=True)
    with server:
        yield server


def _serve_local(*args: str) -> Any:
    from typer.testing import CliRunner

    from ee_middleware.adapters.serving.launch import free_port
    from ee_middleware.cli.app import app

    return CliRunner().invoke(app, ["serve", "local", *args, "--port", str(free_port())])


def test_ee_serve_local_refuses_only_the_template_it_would_render_with_naming_it_and_the_fix(
    sharegpt_base: Path, tiny_base: Path, templates: dict[str, Path]
) -> None:
    """The refusal said every prompt would be trained on without its task and to change the tokenizer's template; it
    named neither the template nor --chat-template. The base's own template: named, with --chat-template FILE as the
    fix. A file given: named as the one refused."""
    own = _serve_local("--base", str(sharegpt_base))
    assert own.exit_code == 1
    message = " ".join(own.output.split())
    assert f"The chat template of {sharegpt_base} renders no text of a user and an assistant message" in message
    assert "The local server would render every request without its messages" in message and "--chat-template FILE" in message
    given = _serve_local("--base", str(tiny_base), "--chat-template", str(templates["sharegpt"]))
    assert given.exit_code == 1
    message = " ".join(given.output.split())
    assert f"The chat template {templates['sharegpt']} renders no text" in message and "Give --chat-template a template" in message
    assert f"of {tiny_base}" not in message  # the base's own template is fine: not the one refused


def test_a_base_whose_template_shows_no_text_is_served_with_the_template_given_and_promotes_say_unchecked(
    chatml_server: Any, sharegpt_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ee serve local --chat-template chatml.jinja` on such a base exited at start (the comparison with the trainer
    probed the base's own template and raised), and a promote into a server started by hand failed the same way. The
    server starts, records that its template was not compared (ee train refuses the base), and a promote into it, asked
    what it renders, goes live with the check unknown."""
    state = LocalBackend(chatml_server.url).served_template()
    assert state is not None
    template = state["chat_template"]
    assert template["kind"] == "file" and template["rendering"] is None
    assert "`ee train` refuses this base" in template["note"] and "message['from']" in template["note"]

    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "another-machine-cache"))  # a server started by hand: nothing recorded
    replicas = [LocalBackend(chatml_server.url)]
    assert replicas[0].served_template() is None
    asked = replicas[0].probe_template(str(sharegpt_base))["chat_template"]
    assert asked["rendering"] is None and "`ee train` refuses this base" in asked["note"]

    adapter = train_shaped_adapter(sharegpt_base, tmp_path / "adapter", seed=5)
    (adapter / "manifest.json").write_text(json.dumps({"schema_version": 1, "rendering": {"tools": "chat template"}}))
    registry = LocalAdapterRegistry(tmp_path / "registry")
    record = registry.register(adapter, "support-bot")
    result = promote(registry, record.name, replicas)
    [check] = result.rendering
    assert result.live.name == record.name and check.status == "unknown" and "`ee train` refuses this base" in check.message
    replicas[0].unload(record.name)
