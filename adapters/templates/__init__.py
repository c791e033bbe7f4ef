"""Chat templates shipped with ee-middleware, for servers that must render prompts as the trainer did.

``smollm2-tools.jinja``: SmolLM2-Instruct's ChatML template plus the trainer's fallback for
templates that ignore tools (:mod:`ee_middleware.models.chat_template`): the tool schemas in the
system message, tool calls as ``<tool_call>{...}</tool_call>`` text. Give it to vLLM with
``--chat-template`` and ``--tool-call-parser hermes`` (``ee serve vllm --chat-template smollm2-tools``)
and to the local server, and both see the prompts the adapter was trained on, token for token.

Any other base whose own template needs one of the trainer's fallbacks gets such a template made for it
(:func:`training_rendering`): ``ee serve vllm`` does so when it is given no ``--chat-template``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DerivedTemplate:
    """A chat template made for a base whose own template needs the trainer's fallbacks (see :func:`training_rendering`)."""

    path: Path
    fallbacks: dict[str, str]
    """What is rendered by a fallback rather than the model's own template (:meth:`TemplateSupport.describe`)."""
    calls_as_text: bool
    """Tool calls are ``<tool_call>`` text: the server must parse answers with the ``hermes`` tool-call parser."""


def derived_templates_folder() -> Path:
    """Where derived templates are written: ``$EE_CACHE_DIR/chat-templates`` (default ``~/.cache/ee-middleware``)."""
    root = os.environ.get("EE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ee-middleware"
    return Path(root).expanduser() / "chat-templates"


def training_rendering(base: str | os.PathLike[str]) -> DerivedTemplate | None:
    """For a local base model folder whose chat template ignores tools or tool calls, drops the text beside a call,
    skips tool messages or has no system role: a template file that renders requests as the trainer rendered the
    adapter's rows (:func:`ee_middleware.models.chat_template.serving_template`), written once under
    :func:`derived_templates_folder` (named by its content). ``None`` when the base's template needs no fallback, when
    ``base`` is not a local folder with a tokenizer (a model id the server resolves itself), or when its tokenizer has
    no template."""
    folder = Path(base).expanduser()
    if not folder.is_dir() or not any((folder / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")):
        return None  # a model id the server resolves itself, or a folder without a tokenizer of its own
    from ee_middleware._files import atomic_write_text
    from ee_middleware._optional import import_optional
    from ee_middleware.models.chat_template import probe_template, serving_template

    transformers = import_optional("transformers", extra="serve", purpose="read the base model's chat template")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ConfigError(
            f"Cannot read the tokenizer in {folder} to check its chat template: {type(exc).__name__}: {exc}. "
            "Give the template to serve with --chat-template FILE."
        ) from exc
    own = getattr(tokenizer, "chat_template", None)
    if not isinstance(own, str) or not own:
        return None
    support = probe_template(tokenizer)
    text = serving_template(own, support)
    if text is None:
        return None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = derived_templates_folder() / f"{folder.resolve().name}-{digest}.jinja"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    fallbacks = {key: how for key, how in support.describe().items() if how != "chat template"}
    return DerivedTemplate(path=path, fallbacks=fallbacks, calls_as_text=not support.tool_calls)
