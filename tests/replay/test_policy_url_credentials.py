"""A served policy's ``user:password@`` (and secret query values) in its spec reach the server but nothing printed or
stored: ``ee replay run``'s summary, the replay records (spool and Parquet), ``ee replay show``, ``ee datasets build``'s
``datasets.json`` and every other file it writes show the spec with ``***`` (S22 finding 3).

The replay id is derived from the spec as shown: a spec without credentials keeps the id it always had (existing
stores resume), and specs differing only in their credentials (a rotated password) are the same configuration.

Against a real HTTP server (:class:`~ee_middleware.testing.http.ScriptedChatServer`, its handler wrapped to keep each
request's ``Authorization`` header, which the server does not keep) and the BFCL expert store."""

from __future__ import annotations

import base64
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.models.openai_compat import FewerChoicesWarning
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import ScriptedChatServer
from tests.capture.redaction_capture import files_text
from tests.conftest import BFCL_ENTRIES

K = 2
USER, PASSWORD = "alice", "s3cr3tpw"
A_CALL = '<tool_call>{"name": "pwd", "arguments": {}}</tool_call>'
"""A usable answer at every BFCL state (``pwd``: an offered tool with no arguments)."""


def _ee(*args: str) -> Any:
    from ee_middleware.cli.app import app

    return CliRunner().invoke(app, list(args), terminal_width=400)


def _leaks(text: str) -> list[str]:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return [secret for secret in (PASSWORD, basic) if secret in text]


def test_a_policy_url_with_credentials_is_used_for_requests_and_shown_masked_everywhere(bfcl_store_path: Path, tmp_path: Path) -> None:
    store = str(bfcl_store_path)
    with ScriptedChatServer([A_CALL], models=["flight-bot"]) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        host = server.base_url.removeprefix("http://")
        spec = f"openai:http://{USER}:{PASSWORD}@{host}#flight-bot"
        result = _ee("replay", "run", "--store", store, "--policy", spec, "--k", str(K), "--workers", "2", "--no-progress")
        assert result.exit_code == 0, result.output
        as_json = _ee("replay", "run", "--store", store, "--policy", spec, "--k", str(K), "--json", "--no-progress")
        assert as_json.exit_code == 0, as_json.output
    assert server.requests, "the policy asked the server"
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authorization = [h.get("authorization") for h in server.request_headers]
    assert authorization and set(authorization) == {expected}, "every request carried the spec's credentials"

    shown = f"openai:http://***@{host}#flight-bot"
    assert f"policy={shown}" in result.stdout, result.stdout
    assert not _leaks(result.stdout + result.stderr) and not _leaks(as_json.stdout + as_json.stderr)
    summary = json.loads(as_json.stdout)
    assert summary["policy"] == shown and summary["already_done"] == BFCL_ENTRIES, "the second run resumed the first's replay"

    assert not _leaks(files_text(bfcl_store_path)), "no spool file of the store holds the password"
    compacted = _ee("store", "compact", "--store", store)
    assert compacted.exit_code == 0, compacted.output
    assert any(bfcl_store_path.rglob("*.parquet"))
    assert not _leaks(files_text(bfcl_store_path)), "no Parquet file of the store holds the password"
    replays = LocalExperienceStore(store).replays()
    assert set(replays["policy"].to_list()) == {shown}
    trajectory_id = replays["trajectory_id"][0]
    show = _ee("replay", "show", trajectory_id, "--store", store)
    assert show.exit_code == 0, show.output
    assert not _leaks(show.stdout + show.stderr)

    out = tmp_path / "ds"
    built = _ee("datasets", "build", "--store", store, "--out", str(out))
    assert built.exit_code == 0, built.output
    assert not _leaks(built.stdout + built.stderr)
    manifest = json.loads((out / "datasets.json").read_text())
    assert [replay["policy"] for replay in manifest["replays"]["used"]] == [shown]
    assert not _leaks(files_text(out)), "no file of the build holds the password"


def test_the_replay_id_of_a_spec_without_credentials_is_the_one_it_always_had() -> None:
    spec = "openai:http://127.0.0.1:8000/v1?api-version=2024-06-01#flight-bot"
    config = ReplayConfig(store="s", policy=spec, k=3)
    shaping = {"sandbox": "bfcl", "policy": spec, "k": 3, "seed": 0, **config.policy_options()}
    assert config.replay_id == hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]


def test_specs_differing_only_in_their_credentials_are_one_replay_configuration() -> None:
    ids = {
        ReplayConfig(store="s", policy=spec, k=3).replay_id
        for spec in (
            "openai:http://alice:old@127.0.0.1:8000/v1#flight-bot",
            "openai:http://alice:rotated@127.0.0.1:8000/v1#flight-bot",
            "openai:http://bob:x@127.0.0.1:8000/v1#flight-bot",
        )
    }
    assert len(ids) == 1
    plain = ReplayConfig(store="s", policy="openai:http://127.0.0.1:8000/v1#flight-bot", k=3).replay_id
    assert plain not in ids, "a server asked without credentials is told apart from one asked with them"


def test_an_experience_models_url_with_credentials_is_used_for_requests_and_stored_masked(bfcl_store_path: Path) -> None:
    from ee_middleware.replay.job import run_replay

    prediction = json.dumps({"reasoning": "a listing", "observation": "notes.txt", "is_error": False})
    with ScriptedChatServer([prediction], models=["em"]) as server:
        host = server.base_url.removeprefix("http://")
        sandbox = f"experience:openai:http://{USER}:{PASSWORD}@{host}#em"
        config = ReplayConfig.load(store=bfcl_store_path, sandbox=sandbox, sandbox_settings={"top_k": 0}, k=K, limit=1)
        summary = run_replay(config)
    assert server.requests and summary.synthetic_branches, "the experience model predicted observations"
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authorization = [h.get("authorization") for h in server.request_headers]
    assert authorization and set(authorization) == {expected}, "every request carried the spec's credentials"

    shown = f"experience:openai:http://***@{host}#em"
    assert summary.sandbox == shown and not _leaks(json.dumps(summary.to_dict()))
    synthetic = [r for r in LocalExperienceStore(bfcl_store_path).iter_rollouts() if r.synthetic_source is not None]
    assert synthetic and {r.synthetic_source.model for r in synthetic} == {f"openai:http://***@{host}#em"}
    assert not _leaks(files_text(bfcl_store_path)), "no file of the store holds the password"


API_KEY, ROTATED = "sk-proj-FIRSTKEY0001", "sk-proj-ROTATED0002"


def test_a_secret_named_policy_setting_reaches_the_server_and_is_neither_in_the_replay_id_nor_printed(
    bfcl_store_path: Path,
) -> None:
    """``--policy-setting api_key=...`` counted in the replay id: a rotated key made a new configuration, so the next run
    replayed everything again, and the key was an input of the id. Now it is left out of the id (as a spec's
    credentials are masked) and shown nowhere."""
    store = str(bfcl_store_path)
    with ScriptedChatServer([A_CALL], models=["flight-bot"]) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        spec = f"openai:{server.base_url}#flight-bot"
        run = ("replay", "run", "--store", store, "--policy", spec, "--k", str(K), "--no-progress")
        first = _ee(*run, "--policy-setting", f"api_key={API_KEY}")
        assert first.exit_code == 0, first.output
        asked = len(server.requests)
        rotated = _ee(*run, "--policy-setting", f"api_key={ROTATED}", "--json")
        assert rotated.exit_code == 0, rotated.output
    authorization = {h.get("authorization") for h in server.request_headers}
    assert authorization == {f"Bearer {API_KEY}"}, "the first run's requests carried its key"
    summary = json.loads(rotated.stdout)
    assert (summary["already_done"], summary["selected"], len(server.requests)) == (BFCL_ENTRIES, 0, asked), "the rotated key resumed"
    assert summary["replay_id"] == ReplayConfig(store=store, policy=spec, k=K).replay_id, "the same id as without a key"
    for result in (first, rotated):
        assert API_KEY not in result.output and ROTATED not in result.output
        assert API_KEY not in result.stderr and ROTATED not in result.stderr
    assert API_KEY not in files_text(bfcl_store_path) and ROTATED not in files_text(bfcl_store_path)


def test_secret_named_settings_anywhere_in_the_settings_are_left_out_of_the_replay_id() -> None:
    spec = "openai:http://127.0.0.1:8000/v1#flight-bot"
    for given, counted in (
        ({"api_key": "sk-1"}, {}),
        ({"api_key": "sk-2", "hf_token": "hf_1"}, {}),
        (
            {"client_secret": "c", "Authorization": "Bearer x", "extra_headers": {"X-Api-Key": "k", "X-Org": "o"}},
            {"extra_headers": {"X-Org": "o"}},
        ),
    ):
        config = ReplayConfig(store="s", policy=spec, k=3, policy_settings={"stop": ["</s>"], **given})
        assert config.replay_id == ReplayConfig(store="s", policy=spec, k=3, policy_settings={"stop": ["</s>"], **counted}).replay_id
    # a setting holding a URL with credentials counts as shown (masked), as the spec does
    url = ReplayConfig(store="s", policy=spec, k=3, policy_settings={"base": "http://alice:pw@h/v1?api_key=a"}).replay_id
    assert url == ReplayConfig(store="s", policy=spec, k=3, policy_settings={"base": "http://bob:x@h/v1?api_key=b"}).replay_id
    # sandbox settings: the same rule; a sandbox given only a key is the configuration without settings
    assert ReplayConfig(store="s", sandbox_settings={"api_key": "a"}).replay_id == ReplayConfig(store="s").replay_id
    assert (
        ReplayConfig(store="s", sandbox_settings={"top_k": 2, "api_key": "a"}).replay_id
        == ReplayConfig(store="s", sandbox_settings={"top_k": 2}).replay_id
    )
    # mutate given only a secret-named setting is plain mutate
    assert ReplayConfig(store="s", policy_settings={"api_key": "a"}).replay_id == ReplayConfig(store="s").replay_id


def test_the_replay_id_of_settings_without_secrets_is_the_one_they_always_had() -> None:
    settings = {"stop": ["</s>"], "max_tokens_hint": 5, "nested": {"a": [1, "x"]}, "base": "http://h/v1?api-version=1"}
    config = ReplayConfig(store="s", policy="mutate", k=3, policy_settings=settings, sandbox_settings={"top_k": 2})
    shaping = {"sandbox": "bfcl", "policy": "mutate", "k": 3, "seed": 0, "sandbox_settings": {"top_k": 2}, **settings}
    assert config.replay_id == hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
