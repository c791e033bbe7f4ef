"""Chat templates shipped with ee-middleware, for servers that must render prompts as the trainer did.

``smollm2-tools.jinja``: SmolLM2-Instruct's ChatML template plus the trainer's fallback for
templates that ignore tools (:mod:`ee_middleware.models.chat_template`): the tool schemas in the
system message, tool calls as ``<tool_call>{...}</tool_call>`` text. Give it to vLLM with
``--chat-template`` and ``--tool-call-parser hermes`` (``ee serve vllm --chat-template smollm2-tools``)
and to the local server, and both see the prompts the adapter was trained on, token for token.

Any other base whose own template needs one of the trainer's fallbacks gets such a template made for it
(:func:`training_rendering`): ``ee serve vllm`` does so when it is given no ``--chat-template``.

:func:`served_template` says how a server's template renders requests compared with the trainer, in the terms of the
``rendering`` an adapter's manifest records (:meth:`~ee_middleware.models.chat_template.TemplateSupport.describe`), so
an adapter can be checked against the server it is loaded into (:mod:`ee_middleware.adapters.serving.rendering`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ee_middleware._files import cache_folder as cache_folder  # (rendering's import)
from ee_middleware.errors import ConfigError

if TYPE_CHECKING:
    from ee_middleware.models.chat_template import TemplateShowsNoTextError

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
    return cache_folder() / "chat-templates"


def _base_tokenizer(base: str | os.PathLike[str]) -> tuple[Path, Any, str] | None:
    """The local base folder, its tokenizer and its own chat template; ``None`` for a model id the server resolves itself,
    a folder without a tokenizer of its own, or a tokenizer without a template. :class:`ConfigError` for an unreadable one."""
    folder = Path(base).expanduser()
    if not folder.is_dir() or not any((folder / name).is_file() for name in ("tokenizer_config.json", "tokenizer.json")):
        return None
    from ee_middleware._optional import import_optional

    transformers = import_optional("transformers", extra="serve", purpose="read the base model's chat template")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ConfigError(
            f"Cannot read the tokenizer in {folder} to check its chat template: {type(exc).__name__}: {exc}. "
            "Give the template to serve with --chat-template FILE."
        ) from exc
    own = getattr(tokenizer, "chat_template", None)
    if not isinstance(own, str) or not own:
        return None
    return folder, tokenizer, own


def training_rendering(base: str | os.PathLike[str]) -> DerivedTemplate | None:
    """For a local base model folder whose chat template ignores tools or tool calls, drops the text beside a call,
    skips tool messages or has no system role: a template file that renders requests as the trainer rendered the
    adapter's rows (:func:`ee_middleware.models.chat_template.serving_template`), written once under
    :func:`derived_templates_folder` (named by its content). ``None`` when the base's template needs no fallback, when
    ``base`` is not a local folder with a tokenizer (a model id the server resolves itself), or when its tokenizer has
    no template."""
    read = _base_tokenizer(base)
    if read is None:
        return None
    from ee_middleware.models.chat_template import TemplateShowsNoTextError, probe_template

    folder, tokenizer, own = read
    try:
        support = probe_template(tokenizer)
    except TemplateShowsNoTextError as exc:
        raise refusal_to_serve(exc, base=folder, template=None, server="vLLM") from exc
    return _derived(folder, own, support)


def refusal_to_serve(
    exc: TemplateShowsNoTextError, *, base: str | os.PathLike[str], template: str | os.PathLike[str] | None, server: str
) -> TemplateShowsNoTextError:
    """The error refusing to serve ``base`` with a chat template that shows no message text (``exc``:
    :func:`~ee_middleware.models.chat_template.probe_template`'s
    :class:`~ee_middleware.models.chat_template.TemplateShowsNoTextError` for it): ``template`` is the file given with
    ``--chat-template`` and is named; ``None``, the base's own, and the fix is to give one."""
    from ee_middleware.models.chat_template import TemplateShowsNoTextError

    if template is None:
        named = f"of {base}"
        fix = "Serve it with a template that renders role/content messages: --chat-template FILE"
        trained = ", and `ee train` refuses this base for the same reason"
    else:
        named, fix, trained = str(template), "Give --chat-template a template that renders role/content messages", ""
    return TemplateShowsNoTextError(
        f"The chat template {named} {exc.shows_no_text}. {server} would render every request without its messages"
        f"{trained}; not served. {fix} (a Jinja file, e.g. the chat_template.jinja of a Qwen or SmolLM2 instruct model "
        "for a ChatML base).",
        missing=exc.missing,
    )


def _derived(folder: Path, own: str, support: Any) -> DerivedTemplate | None:
    from ee_middleware._files import atomic_write_text
    from ee_middleware.models.chat_template import serving_template

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


# --- what a server renders, compared with the trainer ------------------------------------------------------


@dataclass(frozen=True)
class ServedTemplate:
    """The chat template a server renders requests with, and how that compares with the trainer's rendering."""

    kind: str
    """``derived`` (the base's template with the trainer's fallbacks in front: ``ee serve vllm``'s default),
    ``own`` (the base's template as it is), ``trainer`` (the local server's own rendering: the trainer's functions),
    ``file`` (a template file given with ``--chat-template``) or ``server`` (told by the running server's own answers:
    :func:`asked_template`)."""
    path: str | None
    """The template file the server was given; ``None`` when it uses the base's own."""
    rendering: dict[str, str] | None
    """What the server's requests look like, in the terms of an adapter manifest's ``rendering`` (per part,
    ``chat template`` or the trainer's fallback); ``None`` when that cannot be told (``note`` says why)."""
    note: str | None = None
    as_trainer: bool | None = None
    """It renders requests as ``ee train`` renders rows for this base today (with the fallbacks its template needs);
    ``None`` when not known (the base's own template, taken without reading it)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_CHECK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_order",
            "description": "Find an order",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
        },
    }
]
_CHECK_CALLS = [
    {"id": f"c{i}", "type": "function", "function": {"name": "lookup_order", "arguments": f'{{"order_id": "A-{i}"}}'}} for i in (1, 2)
]
_CHECK_CONVERSATIONS: tuple[tuple[list[dict[str, Any]], list[dict[str, Any]] | None], ...] = (
    (
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Where are orders A-1 and A-2?"},
            {"role": "assistant", "content": "Looking both up.", "tool_calls": _CHECK_CALLS},
            {"role": "tool", "tool_call_id": "c1", "content": "A-1 shipped"},
            {"role": "tool", "tool_call_id": "c2", "content": "A-2 packed"},
        ],
        _CHECK_TOOLS,
    ),
    (
        [
            {"role": "user", "content": "Where is order A-1?"},
            {"role": "assistant", "content": "", "tool_calls": _CHECK_CALLS[:1]},
            {"role": "tool", "tool_call_id": "c1", "content": "A-1 shipped"},
        ],
        _CHECK_TOOLS,
    ),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}], None),
    ([{"role": "user", "content": "Hello"}], None),
)
"""Requests rendered both ways to tell what a template file renders like: a system message, tools, two calls with text
beside them, tool results, and plain turns (each part a fallback changes; the last one every template takes)."""

Render = Callable[[Sequence[dict[str, Any]], Sequence[dict[str, Any]] | None], Any]
"""Renders a request (messages, tools) as a server would: its prompt text, or (a server asked) its token ids."""


def _renders_like(tokenizer: Any, support: Any, served: Render, encode: Callable[[str], Any] | None = None) -> bool:
    """Whether ``served`` renders the check requests exactly as the trainer's :func:`render_prompt` with ``support``
    (``encode``: the trainer's text as ``served`` gives it, such as token ids; refusing a request counts as rendering it
    alike only when both refuse it)."""
    from ee_middleware.models.chat_template import render_prompt

    def attempt(render: Callable[[], Any]) -> Any:
        try:
            return render()
        except Exception:  # noqa: BLE001 - a template that refuses a request: compared as a refusal
            return None

    for messages, tools in _CHECK_CONVERSATIONS:
        expected = attempt(lambda messages=messages, tools=tools: render_prompt(tokenizer, messages, tools, support))
        if expected is not None and encode is not None:
            expected = encode(expected)
        if attempt(lambda messages=messages, tools=tools: served(messages, tools)) != expected:
            return False
    return True


_UNLIKE = "renders requests unlike both the trainer (with the base's fallbacks) and the base's own template"


def _rendering_like(
    tokenizer: Any, served: Render, encode: Callable[[str], Any] | None = None
) -> tuple[dict[str, str] | None, bool, str | None]:
    """The rendering ``served`` matches (the trainer's, with the base's fallbacks; or the base's template as it is),
    whether that is the trainer's, and, where it matches neither or was not compared, a note saying so."""
    from ee_middleware.models.chat_template import TemplateShowsNoTextError, TemplateSupport, probe_template

    try:
        trainer = probe_template(tokenizer)
    except TemplateShowsNoTextError as exc:  # the trainer has no rendering for this base to compare with
        return (
            None,
            False,
            f"not compared with the trainer's rendering: `ee train` refuses this base, whose own chat template {exc.shows_no_text}",
        )
    for support in dict.fromkeys((trainer, TemplateSupport(tools=True, tool_calls=True))):
        if _renders_like(tokenizer, support, served, encode):
            return support.describe(), support == trainer, None
    return None, False, _UNLIKE


def asked_template(base: str | os.PathLike[str], tokenize: Render) -> ServedTemplate:
    """How a running server renders requests, told by the server itself: ``tokenize`` has it tokenize the check requests
    (vLLM's and the local server's ``POST /tokenize``: the token ids of the prompt its chat template renders, raising for
    a request it refuses), compared token for token with the trainer's rendering for ``base`` tokenized here. For a
    server that recorded nothing about its template (started by hand, on another machine); ``rendering`` is ``None``
    when ``base`` has no tokenizer here or the server renders unlike both the trainer and the base's own template."""
    try:
        read = _base_tokenizer(base)
    except (ConfigError, ImportError) as exc:  # ImportError: no transformers here (MissingExtraError)
        return ServedTemplate("server", None, None, f"not compared with the trainer's rendering: {exc}")
    if read is None:
        return ServedTemplate(
            "server", None, None, f"not compared with the trainer's rendering: no tokenizer with a chat template in {base} on this machine"
        )
    tokenizer = read[1]

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    rendering, as_trainer, note = _rendering_like(tokenizer, lambda messages, tools: list(tokenize(messages, tools)), encode)
    return ServedTemplate("server", None, rendering, note, as_trainer)


AS_IS = {"tools": "chat template", "tool_calls": "chat template", "tool_results": "chat template", "system": "chat template"}
"""The rendering of a server that uses the base's chat template as it is (no fallback)."""


def served_template(base: str | os.PathLike[str], chat_template: str | os.PathLike[str] | None) -> ServedTemplate:
    """How vLLM started with ``--chat-template chat_template`` renders requests for ``base`` (``None``: the base's own),
    compared with the trainer (see :class:`ServedTemplate`). A file is compared by rendering a few requests both ways;
    the base's own template renders everything with the template (:data:`AS_IS`), with no tokenizer to read.

    A file that shows no message text (:class:`~ee_middleware.models.chat_template.TemplateShowsNoTextError`, raised
    naming it) is refused; the base's own template is not judged here, as the file replaces it."""
    if chat_template is None:
        return ServedTemplate("own", None, dict(AS_IS))
    path = Path(chat_template)
    derived_folder = derived_templates_folder()
    kind = "derived" if path.resolve().parent == derived_folder.resolve() else "file"
    try:
        text = path.read_text(encoding="utf-8")
        read = _base_tokenizer(base)
    except (OSError, UnicodeDecodeError, ConfigError, ImportError) as exc:  # ImportError: no transformers here (MissingExtraError)
        return ServedTemplate(kind, str(path), None, f"not compared with the trainer's rendering: {exc}")
    if read is None:
        return ServedTemplate(
            kind, str(path), None, f"not compared with the trainer's rendering: no tokenizer with a chat template in {base}"
        )
    tokenizer = read[1]
    from ee_middleware.models.chat_template import TemplateShowsNoTextError, TemplateSupport, probe_template, template_messages

    try:
        probe_template(_WithTemplate(tokenizer, text))
    except TemplateShowsNoTextError as exc:
        raise refusal_to_serve(exc, base=base, template=path, server="vLLM") from exc
    as_sent = TemplateSupport(tools=True, tool_calls=True)

    def served(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> str:
        return tokenizer.apply_chat_template(
            template_messages(messages, as_sent),
            tools=list(tools) if tools else None,
            add_generation_prompt=True,
            tokenize=False,
            chat_template=text,
        )

    rendering, as_trainer, note = _rendering_like(tokenizer, served)
    return ServedTemplate(kind, str(path), rendering, note, as_trainer)


class _WithTemplate:
    """A tokenizer whose ``apply_chat_template`` renders with ``template`` instead of its own (what vLLM given the file
    renders with), for :func:`~ee_middleware.models.chat_template.probe_template`."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self._tokenizer = tokenizer
        self._template = template

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer.apply_chat_template(*args, chat_template=self._template, **kwargs)


def local_served_template(
    base: str | os.PathLike[str], tokenizer: Any, support: Any, chat_template: str | os.PathLike[str] | None
) -> ServedTemplate:
    """How the local server renders requests: the trainer's own functions with ``tokenizer`` (its template replaced by
    ``chat_template`` when given) and ``support``. Without a file that is the trainer's rendering itself; with one, it is
    compared with the trainer's by rendering a few requests both ways."""
    if chat_template is None:
        return ServedTemplate("trainer", None, support.describe(), as_trainer=True)
    from ee_middleware.models.chat_template import render_prompt

    try:
        read = _base_tokenizer(base)
    except (ConfigError, ImportError) as exc:
        return ServedTemplate("file", str(chat_template), None, f"not compared with the trainer's rendering: {exc}")
    if read is None:
        return ServedTemplate("file", str(chat_template), None, f"not compared with the trainer's rendering: no chat template in {base}")
    rendering, as_trainer, note = _rendering_like(read[1], lambda messages, tools: render_prompt(tokenizer, messages, tools, support))
    return ServedTemplate("file", str(chat_template), rendering, note, as_trainer)
