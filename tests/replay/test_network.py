"""Replay sends no network request unless asked: BFCL's web tools are refused and counted by default.

The requests go to a real HTTP server on 127.0.0.1 that counts them, and through BFCL's real
``WebSearchAPI`` backend (``requests.get``). That backend's module also imports three packages
it uses only for search and for the markdown/truncate modes (``serpapi``, ``bs4``, ``html2text``),
which the project does not install: where one is missing, a stand-in module that only satisfies
the import is put on the path (``stand_ins_for_web_search_imports``); the raw mode used here never
touches them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.bfcl import world as bfcl_world
from ee_middleware.bfcl.data import function_docs, openai_tool
from ee_middleware.bfcl.sandbox import BFCLSandbox
from ee_middleware.errors import EnvironmentUnavailableError
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore

PAGE = "<html><body>served by the test's own server</body></html>"
FETCH_POLICY = "tests.replay.sandboxes_for_tests:FetchPolicy"
WEB = {"WebSearchAPI": {"show_snippet": True}}
STAND_INS = {
    "serpapi": "class GoogleSearch:\n    def __init__(self, *a, **k):\n        raise RuntimeError('stand-in: serpapi is not installed')\n",
    "bs4": "class BeautifulSoup:\n    def __init__(self, *a, **k):\n        raise RuntimeError('stand-in: bs4 is not installed')\n",
    "html2text": "class HTML2Text:\n    def __init__(self, *a, **k):\n        raise RuntimeError('stand-in: html2text is not installed')\n",
}


class Server:
    """A real HTTP server on 127.0.0.1 that answers every GET with PAGE and counts them."""

    def __init__(self) -> None:
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/page"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    running = Server()
    monkeypatch.setenv("EE_TEST_URL", running.url)
    yield running
    running.close()


@pytest.fixture
def stand_ins_for_web_search_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Stand-in modules for WebSearchAPI's search/markdown imports that are not installed (also seen by spawned children)."""
    import importlib.util

    folder = tmp_path / "stand-ins"
    folder.mkdir()
    for name, source in STAND_INS.items():
        if importlib.util.find_spec(name) is None:
            (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(folder), str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])
    )
    yield
    # The backend module and class were imported against the stand-ins: forget them.
    bfcl_world._backend_class.cache_clear()
    for name in [*STAND_INS, "bfcl_eval.eval_checker.multi_turn_eval.func_source_code.web_search"]:
        sys.modules.pop(name, None)


def fetch(url: str) -> ToolCall:
    return ToolCall(id="fetch", name="fetch_url_content", arguments={"url": url, "mode": "raw"})


@pytest.mark.usefixtures("stand_ins_for_web_search_imports")
def test_the_bfcl_sandbox_refuses_network_tools_unless_allowed(server: Server) -> None:
    environment = {"involved_classes": ["WebSearchAPI"], "initial_config": WEB}
    offline = BFCLSandbox()
    offline.reset(environment)
    assert not offline.covers("fetch_url_content") and not offline.covers("search_engine_query")
    refused = offline.execute(fetch(server.url))
    assert refused.is_error and "--allow-network" in refused.content
    assert "network" in (offline.refusal_hint("fetch_url_content") or "") and offline.refusal_hint("ls") is None
    assert server.requests == 0

    online = BFCLSandbox(allow_network=True)
    online.reset(environment)
    assert online.covers("fetch_url_content") and online.refusal_hint("fetch_url_content") is None
    observation = online.execute(fetch(server.url))
    assert not observation.is_error and "served by the test's own server" in observation.content
    assert server.requests == 1


def test_a_backend_that_goes_online_when_loaded_is_not_loaded_offline() -> None:
    with pytest.raises(EnvironmentUnavailableError, match=r"MemoryAPI_vector downloads .* --allow-network"):
        BFCLSandbox().reset({"involved_classes": ["MemoryAPI_vector"], "initial_config": {}})


@pytest.fixture
def online_store(bfcl_store_path: Path, tmp_path: Path) -> Path:
    """One recorded BFCL trajectory whose world also has the WebSearchAPI backend and its tools."""
    source = LocalExperienceStore(bfcl_store_path)
    original = next(t for t in source.iter_trajectories(status="approved") if t.environment["entry_id"] == "multi_turn_base_0")
    source.close()
    data = original.model_dump()
    environment = data["environment"]
    environment["involved_classes"] = [*environment["involved_classes"], "WebSearchAPI"]
    environment["initial_config"] = {**environment["initial_config"], **WEB}
    data["tools"] = [*data["tools"], *(openai_tool(doc) for doc in function_docs(("WebSearchAPI",)))]
    trajectory = Trajectory.model_validate(data)
    path = tmp_path / "online"
    store = LocalExperienceStore(path)
    store.write([trajectory])
    store.approve([trajectory.id], by="test")
    store.close()
    return path


@pytest.mark.usefixtures("stand_ins_for_web_search_imports")
def test_a_replay_job_counts_refused_network_calls_and_makes_them_only_when_allowed(online_store: Path, server: Server) -> None:
    offline = run_replay(ReplayConfig.load(store=online_store, policy=FETCH_POLICY, k=1))
    assert offline.done == 1 and offline.states > 0
    assert offline.refused_tools == {"fetch_url_content": offline.states}
    assert "--allow-network" in offline.refused_hints["fetch_url_content"]
    assert server.requests == 0
    refills = LocalExperienceStore(online_store).rollouts(replay_id=offline.replay_id)  # each refused fetch topped up (refill)
    assert offline.branches == refills.height == offline.states and "fetch_url_content" not in refills["tool_name"].to_list()

    online = run_replay(ReplayConfig.load(store=online_store, policy=FETCH_POLICY, k=1, allow_network=True, isolation="subprocess"))
    assert online.replay_id != offline.replay_id  # a different configuration, stored apart
    assert online.done == 1 and not online.refused_tools and online.branches == online.states
    assert server.requests == online.states
    rollouts = LocalExperienceStore(online_store).rollouts(replay_id=online.replay_id)
    assert rollouts.height == online.states


@pytest.mark.usefixtures("stand_ins_for_web_search_imports")
def test_ee_replay_run_says_how_to_allow_the_network(online_store: Path, server: Server) -> None:
    from ee_middleware.cli.app import app

    args = ["replay", "run", "--store", str(online_store), "--policy", FETCH_POLICY, "--k", "1", "--no-progress"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert "of fetch_url_content: it sends real network requests. To allow it, pass --allow-network" in result.output
    assert server.requests == 0
    result = CliRunner().invoke(app, [*args, "--allow-network"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    assert server.requests > 0 and "call(s) of fetch_url_content" not in result.output
