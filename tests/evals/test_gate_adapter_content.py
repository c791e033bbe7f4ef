"""``ee eval gate --adapter NAME`` records a gate on NAME only from a run of NAME's weights, not of its folder.

Before, a ``local:BASE@DIR`` run counted as a run of NAME when DIR was NAME's registered source folder: an adapter
retrained into the same folder and registered as v2 was gated (and its promote unblocked) with the run of v1's weights
made there the night before. A run now records what it evaluated (``run.json``'s ``adapter``: the folder and its
content hash as the registry computes it), the gate compares it with NAME's registered ``content_hash``, and a run is
not resumed with other weights. REAL registry, REAL tiny Llama with REAL peft adapters, REAL eval runs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.records import AdapterRecord
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.job import EvalJob
from ee_middleware.evals.runner import run_eval
from tests.adapters.conftest import train_shaped_adapter

pytest.importorskip("peft")  # the adapters are real peft ones

SUITE = "bfcl:irrelevance:2"
SETTINGS: dict[str, Any] = {"max_tokens": 8, "max_steps_per_turn": 1}


@dataclass(frozen=True)
class Nights:
    """Night 1: v1 trained into ``folder``, registered, evaluated (``cand``) with the base (``base``). Night 2: v2
    retrained into the same folder, registered; ``cand2`` evaluated v2 from its registered copy."""

    root: Path
    base_model: Path
    folder: Path
    registry: LocalAdapterRegistry
    v1: AdapterRecord
    v2: AdapterRecord

    def job(self, model: str, out: str) -> EvalJob:
        return EvalJob(suites=[SUITE], model=model, out=str(self.root / out), **SETTINGS)

    def gate(self, candidate: Path, baseline: Path, name: str) -> Any:
        args = ["eval", "gate", "--candidate", str(candidate), "--baseline", str(baseline), "--min-tasks", "1", "--json"]
        return CliRunner().invoke(app, [*args, "--adapter", name, "-r", str(self.registry.root)])

    def copy(self, run: str, to: str, *, drop_adapter: bool = False) -> Path:
        """A copy of the run ``run`` (as an older version wrote it, without ``adapter``, with ``drop_adapter``)."""
        shutil.copytree(self.root / run, self.root / to)
        if drop_adapter:
            record = json.loads((self.root / to / "run.json").read_text())
            record.pop("adapter", None)
            (self.root / to / "run.json").write_text(json.dumps(record))
        return self.root / to


@pytest.fixture(scope="module")
def nights(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Nights:
    root = tmp_path_factory.mktemp("nights")
    registry = LocalAdapterRegistry(root / "reg")
    folder = train_shaped_adapter(tiny_model_dir, root / "out" / "adapter", seed=1)
    v1 = registry.register(folder, "bot")
    made = Nights(root, tiny_model_dir, folder, registry, v1, v1)
    run_eval(made.job(f"local:{tiny_model_dir}@{folder}", "cand"))
    run_eval(made.job(f"local:{tiny_model_dir}", "base"))
    train_shaped_adapter(tiny_model_dir, folder, seed=2)  # night 2: retrained into the same folder
    v2 = registry.register(folder, "bot")
    assert v2.name != v1.name and v2.content_hash != v1.content_hash
    made = Nights(root, tiny_model_dir, folder, registry, v1, v2)
    run_eval(made.job(f"local:{tiny_model_dir}@{v2.path}", "cand2"))
    return made


def _message(result: Any) -> str:
    return " ".join(result.output.split())


def test_a_run_records_the_content_hash_of_its_adapter_as_the_registry_computes_it(nights: Nights) -> None:
    cand = json.loads((nights.root / "cand" / "run.json").read_text())
    assert cand["adapter"] == {"path": str(nights.folder.resolve()), "content_hash": nights.v1.content_hash}
    cand2 = json.loads((nights.root / "cand2" / "run.json").read_text())
    assert cand2["adapter"] == {"path": str(Path(nights.v2.path).resolve()), "content_hash": nights.v2.content_hash}
    assert json.loads((nights.root / "base" / "run.json").read_text())["adapter"] is None  # no adapter: nothing to hash


def test_a_gate_on_the_retrained_version_refuses_the_run_of_the_old_weights_in_its_folder(nights: Nights) -> None:
    v1, v2 = nights.v1, nights.v2
    refused = nights.gate(nights.root / "cand", nights.root / "base", v2.name)
    message = _message(refused)
    assert refused.exit_code == 1, refused.output
    assert f"The candidate run {(nights.root / 'cand').resolve()} did not evaluate {v2.name}" in message, message
    assert f"content hash {v1.content_hash[:12]} ({v1.name} in the registry), while {v2.name} is content {v2.content_hash[:12]}" in message
    assert f"local:{nights.base_model}@{v2.path} into a new --out" in message, message
    assert f"pass --adapter {v1.name}" in message, message
    assert nights.registry.get(v2.name).evals == [], "no gate recorded on v2 from a run of v1's weights"

    recorded = nights.gate(nights.root / "cand", nights.root / "base", v1.name)  # the version that run evaluated
    assert "did not evaluate" not in recorded.output and json.loads(recorded.stdout)["suites"], recorded.output
    assert [e["kind"] for e in nights.registry.get(v1.name).evals] == ["gate"]


def test_the_run_of_the_new_version_is_gated_against_the_run_of_the_old_one_from_the_same_folder(nights: Nights) -> None:
    """The night-2 gate as it should be: v2 (from its registered copy) against v1, the live one, evaluated from the
    training folder that is v2's source too: the baseline is a run of other weights, not of v2 itself."""
    gated = nights.gate(nights.root / "cand2", nights.root / "cand", nights.v2.name)
    assert "did not evaluate" not in gated.output and "itself" not in gated.output, gated.output
    assert json.loads(gated.stdout)["suites"], gated.output
    recorded = nights.registry.get(nights.v2.name).evals[-1]
    assert recorded["candidate_run"] == str((nights.root / "cand2").resolve())
    again = nights.copy("cand2", "cand2_copy")  # a run of v2's weights as the baseline: v2 against itself
    refused = nights.gate(again, nights.root / "cand2", nights.v2.name)
    assert refused.exit_code == 1, refused.output
    assert f"evaluated {nights.v2.name} itself (its model is local:" in _message(refused), refused.output


def test_a_run_is_not_resumed_once_its_adapter_folder_holds_other_weights(nights: Nights) -> None:
    before = (nights.root / "cand" / "results.parquet").read_bytes()
    with pytest.raises(ConfigError) as refused:
        run_eval(nights.job(f"local:{nights.base_model}@{nights.folder}", "cand"))
    message = str(refused.value)
    assert f"adapter content hash: {nights.v1.content_hash[:12]} -> {nights.v2.content_hash[:12]}" in message, message
    assert "cannot be resumed" in message and "into another --out" in message
    assert (nights.root / "cand" / "results.parquet").read_bytes() == before
    assert json.loads((nights.root / "cand" / "run.json").read_text())["adapter"]["content_hash"] == nights.v1.content_hash


def test_an_older_run_without_the_hash_counts_only_from_the_registrys_own_copy(nights: Nights) -> None:
    """A run.json written before the hash was recorded: its source folder may have been retrained since (it was,
    here), so the gate refuses it for either version; a run of the registry's copy (never changed) still counts."""
    old = nights.copy("cand", "old_cand", drop_adapter=True)
    recorded = len(nights.registry.get(nights.v2.name).evals)
    for name in (nights.v2.name, nights.v1.name):
        refused = nights.gate(old, nights.root / "base", name)
        message = _message(refused)
        assert refused.exit_code == 1 and f"did not evaluate {name}" in message, refused.output
        assert "made by an older version of ee, which did not record the content of the adapter" in message, message
        assert f"into a new --out (not {old}: it holds that run's results)" in message, message
    assert len(nights.registry.get(nights.v2.name).evals) == recorded

    old_copy = nights.copy("cand2", "old_cand2", drop_adapter=True)
    accepted = nights.gate(old_copy, nights.root / "base", nights.v2.name)
    assert "did not evaluate" not in accepted.output and json.loads(accepted.stdout)["suites"], accepted.output


def test_an_older_run_resumed_now_records_that_it_cannot_tell_its_weights(nights: Nights) -> None:
    """Resuming an older version's run (no hash) keeps its results, which may be of other weights: the record says
    the content is unknown rather than the folder's content now, and the gate refuses it."""
    old = nights.copy("cand", "resumed", drop_adapter=True)
    run_eval(nights.job(f"local:{nights.base_model}@{nights.folder}", "resumed"))
    adapter = json.loads((old / "run.json").read_text()).get("adapter")
    assert adapter is not None and adapter["content_hash"] is None and "did not record the adapter's content" in adapter["unknown"], adapter
    refused = nights.gate(old, nights.root / "base", nights.v2.name)
    message = _message(refused)
    assert refused.exit_code == 1 and "the run cannot tell which weights it evaluated" in message, refused.output


def test_a_run_of_a_copy_of_the_registered_weights_elsewhere_is_a_run_of_them(nights: Nights) -> None:
    """What counts is the content: a run of v2's weights copied to another folder gates v2."""
    elsewhere = shutil.copytree(nights.v2.path, nights.root / "deployed" / "adapter")
    run_eval(nights.job(f"local:{nights.base_model}@{elsewhere}", "cand_elsewhere"))
    gated = nights.gate(nights.root / "cand_elsewhere", nights.root / "base", nights.v2.name)
    assert "did not evaluate" not in gated.output and json.loads(gated.stdout)["suites"], gated.output
    assert nights.registry.get(nights.v2.name).evals[-1]["candidate_run"] == str((nights.root / "cand_elsewhere").resolve())


def test_an_adapter_written_into_while_the_run_evaluates_it_leaves_the_run_unable_to_tell_its_weights(nights: Nights) -> None:
    """Training writing into the folder while a run evaluates it: the content at the end is not the one at the start,
    so the run records neither (its answers may be of both) and the gate refuses it for either version."""
    folder = shutil.copytree(nights.v1.path, nights.root / "busy" / "adapter")

    def retrain_after_the_first_task(suite: str, done: int, total: int) -> None:
        if done == 1:
            shutil.copy(Path(nights.v2.path) / "adapter_model.safetensors", folder / "adapter_model.safetensors")

    run_eval(nights.job(f"local:{nights.base_model}@{folder}", "busy_run"), progress=retrain_after_the_first_task)
    adapter = json.loads((nights.root / "busy_run" / "run.json").read_text())["adapter"]
    assert adapter["content_hash"] is None, adapter
    assert f"changed while the run evaluated it (content hash {nights.v1.content_hash[:12]} at its start" in adapter["unknown"]
    for name in (nights.v1.name, nights.v2.name):
        refused = nights.gate(nights.root / "busy_run", nights.root / "base", name)
        assert refused.exit_code == 1 and "the run cannot tell which weights it evaluated" in _message(refused), refused.output


def test_a_baseline_that_cannot_tell_its_weights_is_refused_with_the_fix_that_works(nights) -> None:
    """After review R4 #5 of e37598c: the live v1's run made by an older version from the training folder (v2's source
    folder, no content hash) was refused as having "evaluated v2 itself", with the advice to give a run of the live
    model, which it was. It is refused for not telling its weights, naming the registered copy to evaluate from."""
    old_live = nights.copy("cand", "old_live_v1", drop_adapter=True)
    refused = nights.gate(nights.root / "cand2", old_live, nights.v2.name)
    message = _message(refused)
    assert refused.exit_code == 1
    assert "cannot tell which weights it evaluated" in message and "registered copy" in message, message
    assert f"evaluated {nights.v2.name} itself" not in message, message
