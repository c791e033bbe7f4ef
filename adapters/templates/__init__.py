"""Chat templates shipped with ee-middleware, for servers that must render prompts as the trainer did.

``smollm2-tools.jinja``: SmolLM2-Instruct's ChatML template plus the trainer's fallback for
templates that ignore tools (:mod:`ee_middleware.models.chat_template`): the tool schemas in the
system message, tool calls as ``<tool_call>{...}</tool_call>`` text. Give it to vLLM with
``--chat-template`` and ``--tool-call-parser hermes`` (``ee serve vllm --chat-template smollm2-tools``)
and to the local server, and both see the prompts the adapter was trained on, token for token.
"""

from __future__ import annotations

from pathlib import Path

from ee_middleware.errors import ConfigError

FOLDER = Path(__file__).parent


def shipped() -> dict[str, Path]:
    """The shipped templates by name."""
    return {path.stem: path for path in sorted(FOLDER.glob("*.jinja"))}


def template_path(name_or_path: str) -> Path:
    """A shipped template's file by name, or a file path as given."""
    templates = shipped()
    if name_or_path in templates:
        return templates[name_or_path]
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"No chat template {name_or_path!r}: give a Jinja file, or one of the shipped templates ({', '.join(templates) or 'none'})."
        )
    return path.resolve()
