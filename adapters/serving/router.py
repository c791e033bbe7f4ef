"""The alias router: an OpenAI-compatible proxy that maps an app's alias to its live adapter.

Applications (a LangGraph agent with ``ChatOpenAI(base_url=ROUTER/v1, model="support-bot")``) ask
for one stable name, the app's name. For each request the router reads the registry
(:meth:`~ee_middleware.adapters.registry.AdapterRegistry.resolve`), replaces ``model`` with the live
adapter's immutable name (or the served base model when the app has no live adapter yet) and
forwards the request to the next replica (round robin), trying the others when one does not
answer or answers 404 (it does not hold the model: a replica restarted since the promote starts with the base
alone). A registry that cannot be read once the router has read it (an index edited by hand into something the
registry refuses, a permission taken away) is said once in the log, and requests are routed by its last good read until
it can be read again: the replicas still serve the live adapters. ``timeout_s`` bounds a replica's answer (a stream's start and each next part); one that did not answer in
time is not asked again for that request, one that failed otherwise (refused or broke the connection, a 5xx) is asked
again up to ``retries`` times before the next replica. Passive health: a replica that timed out or could not be reached
is passed over for ``cooldown_s`` (the log says so once, and when it answers again), then tried again by one request;
the others go first meanwhile, and it is still tried when every other replica failed too. The log says once which replica lacks an app's live adapter and how to load it there again
(``ee adapters promote LIVE_NAME ...`` loads the live adapter wherever it is missing), and once again when it
serves it. The router itself never loads adapters: it holds no registry lease (a load from here could race a
promote, rollback or retire), several routers may front the same replicas, and a load must be checked and verified
as a promote does. ``GET /v1/models`` lists the apps and the served base model. A replica's HTTP 200 answer to a
completion request (``/v1/chat/completions``, ``/v1/completions``) that is not one (not JSON, or no ``choices`` list: a
misconfigured replica or ingress answering ``{"hello": "world"}`` or an HTML page) is a failure like an unreachable
replica's: the next replica is asked, it is passed over for ``cooldown_s`` (the log says so), and when every replica
failed the answer is a 502 naming each one's reason. ``"stream": true`` answers are relayed as the replica sends them
(server-sent events), not checked (a stream is relayed byte for byte as it comes, keep-alive comments and all; reading
ahead to its first event would hold back its start); a replica that fails before it answers (its status line), or answers
without an event stream (its ``Content-Type``), is skipped, one that breaks mid-stream ends the stream with
an error event after the last whole event (a stream already started is never sent again elsewhere). A promote or rollback is one atomic write of the registry index: the next request goes to
the new adapter, requests in flight finish on the old one (it stays loaded), and no request fails
or waits for a restart. Answers keep the adapter's name in ``model``, so recorded traces say which
adapter answered.

Why a router rather than vLLM's LoRA resolver plugins or client-side resolution: the app's code
and config never change (any OpenAI client works), the switch is one registry write with no
cache to invalidate in every app process, it fronts several replicas, and it works the same for
vLLM and the local server. Run it with ``ee serve router --registry DIR --server URL ...``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

from ee_middleware.adapters.errors import RegistryError
from ee_middleware.adapters.registry import AdapterRegistry
from ee_middleware.adapters.serving.http import (
    LOCAL_SERVER_OWNER,
    EventStream,
    JSONHandler,
    RequestError,
    error_body,
    make_server,
    wants_stream,
)
from ee_middleware.errors import ModelError, ModelRequestError, ModelResponseError, ModelServerError
from ee_middleware.models.openai_compat import OpenAIChatClient, serving_api_key
from ee_middleware.models.urls import api_root, shown_url

FORWARDED = ("/v1/chat/completions", "/v1/completions", "/tokenize")
_ERROR_TYPES = {401: "AuthenticationError", 403: "PermissionDeniedError", 404: "NotFoundError", 422: "UnprocessableEntityError"}

DEFAULT_TIMEOUT_S = 120.0
"""How long the router waits for a replica's answer (``ee serve router --timeout``): the whole answer, or a stream's
start and each next part."""
DEFAULT_RETRIES = 1
"""How many more times a replica that failed a request (refused or broke the connection, a 5xx or 429; not a time-out) is
asked again before the next one (``ee serve router --retries``)."""
DEFAULT_COOLDOWN_S = 30.0
"""How long a replica that timed out or could not be reached is passed over (``ee serve router --cooldown``)."""
RETRY_BACKOFF_S = 0.05
"""The wait before asking a replica again (doubled for each further attempt)."""


@dataclass
class _Down:
    """A replica passed over until ``until`` (``time.monotonic``) because of ``why``; ``probing`` while one request tries
    it again."""

    until: float
    why: str
    probing: bool = False


def _log_to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class AliasRouter:
    """Resolves aliases through ``registry`` and forwards requests to ``upstreams`` (OpenAI API roots).

    ``timeout_s``, ``retries`` and ``cooldown_s`` are described in the module docstring (``cooldown_s=0``: never pass a
    replica over). ``log`` hears what the operator should know (a replica that lacks an app's live adapter, one passed
    over, and when either serves again); by default it goes to stderr."""

    def __init__(
        self,
        registry: AdapterRegistry,
        upstreams: Sequence[str],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        cooldown_s: float = DEFAULT_COOLDOWN_S,
        log: Callable[[str], None] = _log_to_stderr,
        upstream_api_key: str | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("the router needs at least one upstream server (--server URL)")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s < math.inf:
            raise ValueError(f"timeout_s must be a finite number of seconds > 0 (--timeout), got {timeout_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0 (--retries), got {retries!r}")
        if isinstance(cooldown_s, bool) or not isinstance(cooldown_s, (int, float)) or not 0 <= cooldown_s < math.inf:
            raise ValueError(f"cooldown_s must be a finite number of seconds >= 0 (--cooldown), got {cooldown_s!r}")
        self.registry = registry
        self.upstreams = [api_root(u) for u in upstreams]
        self.timeout_s = timeout_s
        self.retries = retries
        self.cooldown_s = cooldown_s
        self.log = log
        self._upstream_api_key = serving_api_key() if upstream_api_key is None else upstream_api_key
        """The key sent to the replicas (default: ``EE_SERVE_API_KEY``; ``""``: none)."""
        self._refused_key: set[str] = set()
        """Replicas that refused the router's key (said once in the log)."""
        self._down: dict[str, _Down] = {}
        """The replicas passed over for now (timed out or could not be reached), by URL."""
        self._next = itertools.cycle(range(len(self.upstreams)))
        self._ready_next = itertools.count()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._base: str | None = None
        self._local_servers: dict[str, bool] = {}
        """Whether each replica asked so far is an ``ee serve local`` server (for the re-load command's ``--backend``)."""
        self._lacking: set[tuple[str, str]] = set()
        """(replica, live adapter) pairs the replica answered 404 for, said once in the log until it serves it again."""
        self._last_apps: dict[str, dict[str, Any]] | None = None
        """The registry's apps as last read whole (what the router routes by while the registry cannot be read)."""
        self._registry_problem: str | None = None
        """Why the registry cannot be read now (said once in the log until it can be again), or None."""
        self._registry_lock = threading.Lock()  # (the two above: requests are served on threads of their own)
        # read once now: a registry that cannot be read at start has no last good read to route by, and the router would
        # answer every request with its error; its error is raised here instead (ee serve router exits 1 naming it)
        self._apps()

    def resolve(self, model: str | None) -> str | None:
        """The model name to send upstream for ``model``: the live adapter for an alias, else ``model`` itself."""
        return self._route(model)[0]

    def _route(self, model: str | None) -> tuple[str | None, str | None]:
        """``(name sent upstream, the app whose live adapter it is)``; the app is None when ``model`` is no alias with a
        live adapter."""
        if model is not None and not isinstance(model, str):
            raise RequestError(400, f"model must be a string (an app's name or a served model's), got {json.dumps(model)[:200]}")
        if not model:
            return model, None
        app = self._apps().get(model)
        if app is None:
            return model, None
        live = app.get("live")
        if live:
            return live, model
        base = self.base_model()
        if base is None:  # (it forwarded "model": null, which a replica answers with its own puzzling error)
            raise RequestError(
                502,
                f"The app {model!r} has no live adapter, so its requests go to the base model, and no replica listed one "
                f"(GET /v1/models of each answered none, or could not be reached): {', '.join(map(shown_url, self.upstreams))}. "
                "Check that the replicas serve the base model, or promote an adapter for the app.",
                "BadGatewayError",
            )
        return base, None

    def _apps(self) -> dict[str, dict[str, Any]]:
        """The registry's apps; while the registry cannot be read (an index edited by hand into something it refuses, a
        permission taken away), the apps as last read whole, said once in the log: a damaged registry must not turn
        every request into an error while the replicas still serve the live adapters. Raises the registry's error when
        it was never read."""
        try:
            apps = self.registry.apps()
        except (RegistryError, OSError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            with self._registry_lock:
                last, said = self._last_apps, problem == self._registry_problem
                if last is not None:
                    self._registry_problem = problem
            if last is None:
                raise
            if not said:
                self.log(
                    f"ee router: the registry cannot be read ({problem}); routing by its last good read until it can "
                    "be read again. Fix it (ee adapters list -r REGISTRY says what is wrong) before the next promote."
                )
            return last
        with self._registry_lock:
            mended = self._registry_problem is not None
            self._registry_problem, self._last_apps = None, apps
        if mended:
            self.log("ee router: the registry can be read again; routing by it")
        return apps

    def base_model(self) -> str | None:
        """The served base model's name (the upstream's first model without a parent)."""
        if self._base is None:
            for url in self._order():
                try:
                    self._base = self._client(url).list_models()[0]
                except ModelRequestError as exc:
                    if exc.status not in (401, 403):
                        self._failed(url, exc)
                    else:  # the router's key: not a replica to pass over, one to say
                        self._key_refused(url, exc.status)
                    continue
                except ModelError as exc:
                    self._failed(url, exc)
                    continue
                except IndexError:
                    continue
                finally:
                    self._release(url)
                self._answered(url)
                break
        return self._base

    def models(self) -> dict[str, Any]:
        """The apps (each with its live adapter) and the served base model, which requests may name too."""
        now = int(time.time())  # (every model card of vLLM's list has its "created", and clients read it)
        data = [
            {"id": app, "object": "model", "created": now, "owned_by": "ee-router", "live": info.get("live")}
            for app, info in self._apps().items()
        ]
        base = self.base_model()
        if base is not None and all(entry["id"] != base for entry in data):
            data.append({"id": base, "object": "model", "created": now, "owned_by": "ee-router"})
        return {"object": "list", "data": data}

    def forward(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        """Send ``body`` (model resolved) to the replicas in turn; ``(status, answer)``. A replica that does not answer,
        answers 404 (it does not hold the model), or answers a completion request with HTTP 200 and no completion
        (:func:`_checked_answer`), is passed over for the next; when every one answered 404, the first
        404 is relayed as the replica sent it (for an app's live adapter, the router's own saying which replicas lack it)."""
        model, app = self._route(body.get("model"))
        body = {**body, "model": model}
        problems: list[str] = []
        missing: list[str] = []
        refused: tuple[int, Any] | None = None
        order = self._order()
        # (a replica, whether a Retry-After may pass it over for the next, how long it asked to wait before it is asked again)
        attempts: list[tuple[str, bool, float]] = [(url, True, 0.0) for url in order]
        for index, (url, passable, wait) in enumerate(attempts):
            # passed over only for a replica after it that is up: one cooling down is tried last, and may well fail
            others = passable and any(later not in self._down for later, _, _ in attempts[index + 1 :])
            if wait:
                time.sleep(min(wait, self.timeout_s))
            try:
                answer = self._ask(url, path, body, others=others)
            except ModelRequestError as exc:  # the replica's own answer, as it sent it (not the client's advice for the router)
                self._answered(url)
                if exc.status in (401, 403):  # the router's key, not the app's: the app sent the router the right one
                    problems.append(self._key_refused(url, exc.status))
                    continue
                relayed = exc.answer if isinstance(exc.answer, dict) and exc.answer.get("error") else None
                answered = (exc.status, relayed or error_body(exc.status, exc.refusal, _ERROR_TYPES.get(exc.status, "BadRequestError")))
                if exc.status != 404 or _route_missing(exc, model):
                    return answered
                refused = refused or answered  # this replica does not hold the model: another one may
                missing.append(url)
                if app is not None and isinstance(model, str):
                    self._lacks(url, model, app)
                continue
            except ModelError as exc:
                self._failed(url, exc)
                if getattr(exc, "passed_over", False):  # busy now: asked again, waiting as it asked, if no other answers
                    attempts.append((url, False, exc.retry_after))
                    continue
                problems.append(f"{shown_url(url)}: {exc}")
                continue
            finally:
                self._release(url)
            self._answered(url)
            if app is not None and self._lacking and (url, model) in self._lacking:
                self._serves_again(url, str(model))
            return 200, answer
        if refused is not None:
            if app is None:
                return refused
            down = f" ({'; '.join(problems)} did not answer)" if problems else ""
            message = (
                f"No replica holds {model}, the live adapter of {app}: {', '.join(map(shown_url, missing))} answered that it does not exist{down}. "
                f"Load it again on every replica: {self._reload_command(str(model))}"
            )
            return 404, error_body(404, message, "NotFoundError")
        return 502, error_body(502, "No replica answered with a usable answer: " + " | ".join(problems), "BadGatewayError")

    def _key_refused(self, url: str, status: int) -> str:
        """What to say of a replica that refused the router's key (``status`` 401 or 403), logged once per replica."""
        why = (
            f"{shown_url(url)} refused the router's API key (HTTP {status}): start the router with that replica's key "
            "(--upstream-api-key or EE_UPSTREAM_API_KEY; by default the router sends its own --api-key / EE_SERVE_API_KEY)"
        )
        with self._lock:
            first = url not in self._refused_key
            self._refused_key.add(url)
        if first:
            self.log(f"ee router: {why}")
        return why

    def _ask(self, url: str, path: str, body: dict[str, Any], *, others: bool = False) -> Any:
        """The replica's answer to ``body`` (an :class:`EventStream` once a stream has started); a replica that refused
        or broke the connection, or answered 5xx or 429, is asked again up to ``retries`` times, one that timed out is
        not (its last error is raised). One that asks to be asked again later (``Retry-After`` on a 429 or a 503) is not
        waited for while ``others``, replicas after it, may answer now (its error is raised for the next one); the last
        one is waited for at most the router's time-out."""
        suffix = path.removeprefix("/v1") if path.startswith("/v1/") else path
        base, mark, query = url.partition("?")  # (a query, ?api_key=..., goes with every request to the replica)
        if not path.startswith("/v1/"):
            base = base.removesuffix("/v1")
        root = base + mark + query
        wait = 0.0
        for attempt in range(self.retries + 1):
            if attempt:  # the back-off, or longer where the replica's Retry-After asked for it (a 429, a 503)
                time.sleep(max(RETRY_BACKOFF_S * 2 ** (attempt - 1), wait))
            try:
                if wants_stream(body):
                    return self._open_stream(url, root, suffix, body)
                return _checked_answer(f"{base}{suffix}", path, self._client(root).post(suffix, body))
            except ModelRequestError:
                raise
            except ModelServerError as exc:
                looped = exc.status == LOOP_STATUS  # a router as a replica: it answers so every time
                later = others and exc.retry_after > RETRY_BACKOFF_S * 2**attempt  # busy: another replica may answer now
                if exc.timed_out or attempt == self.retries or isinstance(exc, ModelResponseError) or looped or later:
                    if attempt:  # the client's message counts its own attempt alone
                        exc.args = (f"{exc} (asked {attempt + 1} times by the router)",)
                    exc.passed_over = later and not (exc.timed_out or looped or isinstance(exc, ModelResponseError))  # type: ignore[attr-defined]
                    raise
                wait = min(exc.retry_after, self.timeout_s)
        raise AssertionError("unreachable")  # pragma: no cover - the last attempt returns or raises

    # --- passive health: replicas that timed out or could not be reached are passed over for cooldown_s ---------------

    def _order(self) -> list[str]:
        """The replicas to try for one request, the first of them tried at once: round robin over those not passed over
        (one whose cool-down is over is tried first when its turn comes, unless another request is trying it already),
        then those passed over, the soonest back first."""
        with self._lock:
            own = self.upstreams[next(self._next)]  # the replica whose turn this is, healthy or not
            now = time.monotonic()
            ready = [url for url in self.upstreams if url not in self._down]
            if ready:  # round robin over the healthy ones alone: a replica passed over leaves its turns to all of them
                start = next(self._ready_next) % len(ready)
                ready = ready[start:] + ready[:start]
            down = self._down.get(own)
            self._local.probing = None
            if down is not None and down.until <= now and not down.probing:
                down.probing = True  # this request tries it again (released by _release); the others pass it over
                self._local.probing = own
                ready.insert(0, own)
            resting = sorted((url for url in self.upstreams if url not in ready), key=lambda url: self._down[url].until)
        return ready + resting

    def _failed(self, url: str, exc: ModelError) -> None:
        """``url`` failed a request: passed over for ``cooldown_s`` when it timed out or could not be reached (no answer
        at all), or answered with something that is no answer of the API (HTTP 200 with a body that is not JSON, or not a
        completion: a misconfigured replica or ingress, which answers so every time); one that answered a 5xx is up, and
        keeps its turn."""
        if not isinstance(exc, ModelServerError) or not self.cooldown_s:
            return
        if isinstance(exc, ModelResponseError):
            why = f"an unusable answer: {exc}"
        elif exc.status == LOOP_STATUS:
            why = "it is an ee router, not a model server (its --server is a router: give the routers the model servers' URLs)"
        elif exc.status is not None:
            return
        else:
            why = f"no answer within {self.timeout_s:g} s" if exc.timed_out else "could not be reached or broke the connection"
        with self._lock:
            new = url not in self._down
            self._down[url] = _Down(time.monotonic() + self.cooldown_s, why)
        if new:
            self.log(
                f"ee router: {shown_url(url)} is passed over for {self.cooldown_s:g} s ({why}); the other replicas take its requests, "
                "and it is tried again after that (or before, when every other replica fails too)"
            )

    def _answered(self, url: str) -> None:
        with self._lock:
            was = self._down.pop(url, None)
        if was is not None:
            self.log(f"ee router: {shown_url(url)} answers again; it takes its turn of the requests")

    def _release(self, url: str) -> None:
        """A request done with ``url`` (whatever came of it): another may try it again once its cool-down is over, when
        this request was the one trying it (a request that fell back to a resting replica leaves another's try alone)."""
        if getattr(self._local, "probing", None) != url:
            return
        self._local.probing = None
        with self._lock:
            if url in self._down:
                self._down[url].probing = False

    def _reload_command(self, model: str) -> str:
        """The command that loads the live adapter ``model`` again wherever it is missing (with ``--backend local`` where
        the replicas are ``ee serve local`` servers: a promote speaking vLLM's API to them would fail)."""
        registry = getattr(self.registry, "root", None) or "REGISTRY"
        command = f"ee adapters promote {model} -r {registry} " + " ".join(f"--server {shown_url(url)}" for url in self.upstreams)
        return command + (" --backend local" if any(self._is_local_server(url) for url in self.upstreams) else "")

    def _is_local_server(self, url: str) -> bool:
        """Whether the replica at ``url`` is an ``ee serve local`` server (its models are ``owned_by`` ``ee``); asked once,
        and False where it does not answer (then asked again next time)."""
        known = self._local_servers.get(url)
        if known is None:
            try:
                entries = self._client(url).model_entries()
            except ModelError:
                return False
            known = self._local_servers[url] = any(entry.get("owned_by") == LOCAL_SERVER_OWNER for entry in entries)
        return known

    def _lacks(self, url: str, model: str, app: str) -> None:
        with self._lock:
            if (url, model) in self._lacking:
                return
            self._lacking.add((url, model))
        self.log(
            f"ee router: {shown_url(url)} does not hold {model}, the live adapter of {app} (HTTP 404: restarted since the promote?); "
            f"{app}'s requests go to the other replicas. To load it there again: {self._reload_command(model)}"
        )

    def _serves_again(self, url: str, model: str) -> None:
        with self._lock:
            if (url, model) not in self._lacking:
                return
            self._lacking.discard((url, model))
        self.log(f"ee router: {shown_url(url)} serves {model} again")

    def _open_stream(self, url: str, root: str, path: str, body: dict[str, Any]) -> EventStream:
        """The replica's event stream, relayed piece by piece; a replica that fails before it starts
        answering is skipped like any other (the caller tries the next). One that stalls mid-stream for ``timeout_s``
        ends that stream with an error event, and is passed over for ``cooldown_s``."""
        opened = contextlib.ExitStack()
        try:
            chunks = opened.enter_context(self._client(root).stream(path, body))
        except BaseException:
            opened.close()
            raise

        def watched() -> Iterator[bytes]:
            try:
                yield from chunks
            except ModelServerError as exc:
                if exc.timed_out:
                    self._failed(url, exc)
                raise

        return EventStream(watched(), opened.close)

    def _client(self, root: str) -> OpenAIChatClient:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if root not in clients:
            clients[root] = OpenAIChatClient(
                root,
                "ee-router",
                retries=0,
                timeout_s=self.timeout_s,
                api_key=self._upstream_api_key,
                timeout_knob="ee serve router --timeout SECONDS",
                headers={ROUTED_HEADER: "1"},
            )
        return clients[root]


LOOP_STATUS = 508
"""What a router answers a request another router forwarded (:data:`ROUTED_HEADER`): never asked again, and the replica
that answered it is passed over (it is a router)."""

ROUTED_HEADER = "X-EE-Routed"
"""Sent with every request a router forwards: a router that gets one was given a router as a replica (itself, or one that
forwards back), and refuses it (508) rather than forward it again, in a loop."""

COMPLETION_PATHS = ("/v1/chat/completions", "/v1/completions")
"""The forwarded paths whose answer is a completion: an HTTP 200 body without a ``choices`` list is a replica's failure."""


def _route_missing(exc: ModelRequestError, model: Any) -> bool:
    """Whether a replica's 404 says that what it lacks is the route (``/v1/completions`` on an ``ee serve local``
    replica; FastAPI's ``{"detail": "Not Found"}``), not the model: the answer does not name ``model``, as vLLM's and ee's
    "The model `NAME` does not exist." do. Relayed as it is, rather than taken for a replica without the adapter."""
    if not isinstance(model, str) or not model:
        return False
    return model not in str(exc.refusal) and model not in json.dumps(exc.answer, ensure_ascii=False, default=str)


def _checked_answer(url: str, path: str, answer: Any) -> Any:
    """``answer``, the JSON a replica sent with HTTP 200 for ``path``; :class:`ModelResponseError` when ``path`` asks
    for a completion and the answer is none (not an object with a non-empty ``choices`` list: a request asks for at
    least one), so the router passes the replica over rather than relay it as the app's answer."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if path not in COMPLETION_PATHS or (isinstance(choices, list) and choices):
        return answer
    kind = "chat completion" if path == "/v1/chat/completions" else "completion"
    shown = json.dumps(answer, ensure_ascii=False)
    shown = shown if len(shown) <= 200 else shown[:200] + "..."
    lacking = "an empty 'choices' list" if isinstance(choices, list) else "no 'choices' list"
    raise ModelResponseError(f"{shown_url(url)} answered HTTP 200 with something that is not a {kind} ({lacking}): {shown}", url=url)


class _Handler(JSONHandler):
    server_version = "ee-router"
    router: AliasRouter

    def models(self) -> Any:
        self._refuse_routed()
        return self.router.models()

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        self._refuse_routed()
        if path not in FORWARDED:
            raise RequestError(404, f"No route {self.path} (the router forwards {', '.join(FORWARDED)})", "NotFoundError")
        return self.router.forward(path, body)

    def _refuse_routed(self) -> None:
        if self.headers.get(ROUTED_HEADER):
            raise RequestError(
                LOOP_STATUS,
                "This request was forwarded by an ee router: a router's --server names a router (this one, or one that "
                "forwards back to it), which would forward it again and again. Give the routers the model servers' URLs.",
                "LoopDetectedError",
            )


def make_router_server(
    router: AliasRouter, host: str = "127.0.0.1", port: int = 8080, *, api_key: str | None = None
) -> ThreadingHTTPServer:
    """A threading HTTP server for ``router`` (call ``serve_forever``); port 0 picks a free one. ``api_key``: the key
    every request but ``GET /health`` must carry (``Authorization: Bearer KEY``); none for ``None`` or ``""``."""
    return make_server(_Handler, {"router": router, "api_key": api_key or None}, host, port)
