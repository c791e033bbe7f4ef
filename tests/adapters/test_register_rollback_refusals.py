"""Registering, promoting and rolling back refuse what a server would fail on or a later request would be misrouted by,
and a register killed half way leaves nothing behind for good (a black-box sweep's findings, on the real local registry
and real safetensors files)."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from ee_middleware.adapters.errors import AdapterFilesError, RegistryError
from ee_middleware.adapters.promote import promote, rollback
from ee_middleware.adapters.registry import LocalAdapterRegistry, open_registry
from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError

from .helpers import write_adapter

WEIGHT = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"


def test_an_app_named_like_an_adapter_is_refused_naming_the_app_it_probably_is(tmp_path: Path) -> None:
    """Was: ``--app bot-v1-3ef499f3`` (an adapter's name pasted as the app) was registered, and the router then sent
    requests naming the adapter bot-v1-3ef499f3 to the new app's live adapter (other weights) or the base model."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    first = reg.register(write_adapter(tmp_path / "a"), "bot")
    with pytest.raises(
        RegistryError, match=rf"Bad app name '{first.name}': it has the form of an adapter's name .*its app is 'bot' \(--app bot\)"
    ):
        reg.register(write_adapter(tmp_path / "b", seed=1), first.name)
    assert [r.name for r in reg.list()] == [first.name]
    assert reg.register(tmp_path / "b", "bot-v2").app == "bot-v2", "a version-like suffix alone is a name like any other"


def _header_file(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize(
    ("header", "data", "expected"),
    [
        (
            {WEIGHT: {"dtype": "F32", "shape": [8, 4], "data_offsets": [0, 64]}},
            bytes(64),
            r"of shape \[8, 4\] and dtype F32 takes 128 bytes, but",
        ),
        ({WEIGHT: {"dtype": "XX", "shape": [8, 4], "data_offsets": [0, 128]}}, bytes(128), r"dtype 'XX', which is not a safetensors dtype"),
        ({WEIGHT: {"dtype": "F32", "shape": [8, 4], "data_offsets": [128, 0]}}, bytes(128), r"not \[start, end\] with start <= end"),
        (
            {WEIGHT: {"dtype": "F32", "shape": [8, 4], "data_offsets": [0, 128]}},
            bytes(136),
            r"end at byte 128 of the data, but the file holds 136",
        ),
        (
            {
                WEIGHT: {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]},
                "b.lora_B.weight": {"dtype": "F32", "shape": [2, 4], "data_offsets": [40, 72]},
            },
            bytes(72),
            r"'b.lora_B.weight' starts at byte 40 of the data, not at 32",
        ),
        ({WEIGHT: {"dtype": "F32", "shape": [-8, 4], "data_offsets": [0, 128]}}, bytes(128), r"shape \[-8, 4\], not a list of sizes"),
    ],
    ids=["shape-size", "dtype", "reversed-offsets", "bytes-left-over", "gap", "negative-shape"],
)
def test_a_safetensors_file_safetensors_would_refuse_is_refused_at_registration(
    tmp_path: Path, header: dict, data: bytes, expected: str
) -> None:
    """Was: registered as a candidate; the promote's load then failed on the server (400, SafetensorError) and marked the
    adapter failed, where the register promises "a truncated or garbled file fails here, not on a server"."""
    folder = write_adapter(tmp_path / "a")
    _header_file(folder / "adapter_model.safetensors", header, data)
    from safetensors.numpy import load_file

    with pytest.raises(Exception):  # noqa: B017 - safetensors' own error type (SafetensorError): the format's check
        load_file(str(folder / "adapter_model.safetensors"))
    reg = LocalAdapterRegistry(tmp_path / "reg")
    with pytest.raises(AdapterFilesError, match=rf"is not a valid safetensors file \(.*{expected}"):
        reg.register(folder, "bot")
    assert reg.list() == []


def test_a_file_safetensors_loads_is_registered_whatever_its_tensor_order(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a")
    rng = np.random.default_rng(0)
    save_file(
        {
            "z.lora_B.weight": rng.standard_normal((4, 8)).astype(np.float16),
            WEIGHT: rng.standard_normal((8, 4)).astype(np.float32),
            "empty": np.zeros((0, 4), np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj", "z", "empty"]}))
    assert LocalAdapterRegistry(tmp_path / "reg").register(folder, "bot").status == "candidate"


def test_a_base_the_names_cannot_compare_is_refused_saying_so_and_how_to_say_it_is_the_same(tmp_path: Path) -> None:
    """The live adapter names a hub id, the new one a local folder (a download of that model, or another one): ``same_base``
    cannot tell, and the servers hold one base. Was: refused as "was trained on base model X, but ... runs on Y. Train on
    Y", as if the two were known to differ, with no way past it. Now the refusal says the names cannot be compared and
    how to name the live base in the adapter's config; registered so, it is taken."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    live = reg.register(write_adapter(tmp_path / "a", base="HuggingFaceTB/SmolLM2-135M-Instruct"), "bot")
    reg.switch_live(live.name)
    local = tmp_path / "models" / "smollm2"
    local.mkdir(parents=True)
    folder = write_adapter(tmp_path / "b", base=str(local), seed=1)
    with pytest.raises(
        Exception,
        match=r"whether they are the same model cannot be told from the names .*set base_model_name_or_path in the adapter's adapter_config.json to HuggingFaceTB/SmolLM2-135M-Instruct",
    ):
        reg.register(folder, "bot")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    assert reg.register(folder, "bot").base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.mark.parametrize("spec", ["", "   ", "local:"])
def test_an_empty_registry_spec_is_refused_not_made_in_the_working_folder(
    tmp_path: Path, spec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: ``-r ""`` (an unset variable) or ``-r local:`` made index.json, history.jsonl and adapters/ in the working
    folder (a repository checkout) and exited 0."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="is empty or blank: name the registry's folder"):
        open_registry(spec)
    result = CliRunner().invoke(app, ["adapters", "list", "-r", spec])
    assert result.exit_code == 1 and "is empty or blank" in result.output, result.output
    assert os.listdir(tmp_path) == []


def test_a_registry_only_rollback_to_an_adapter_whose_copy_is_gone_is_refused(tmp_path: Path) -> None:
    """Was: exit 0 without a word, the rollback target live with its files missing: a server that starts cannot load
    the live alias. A promote of such an adapter was refused already."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    first = reg.register(write_adapter(tmp_path / "a"), "bot")
    second = reg.register(write_adapter(tmp_path / "b", seed=1), "bot")
    promote(reg, first.name, [])
    promote(reg, second.name, [])
    shutil.rmtree(first.path)
    with pytest.raises(Exception, match=rf"{first.name} has no copy in the registry.*Nothing was switched: bot still serves {second.name}"):
        rollback(reg, "bot", [])
    assert reg.resolve("bot") == second.name


def test_what_a_register_killed_half_way_left_is_removed_by_the_next_register_and_listed_meanwhile(tmp_path: Path) -> None:
    """A register killed while copying leaves ``.NAME.partial-PID``; one killed between its copy and its index entry a
    whole copy of a version the index never counted. Was: both stayed for good (a partial of each killed attempt, a
    full-size copy beside the later register's copy of that version), and ``ee adapters list`` said nothing."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    first = reg.register(write_adapter(tmp_path / "a"), "bot")
    copies = reg.root / "adapters"
    partial = copies / ".bot-v2-0123abcd.partial-4242"
    uncounted = copies / "bot-v2-0123abcd"
    by_hand = copies / "kept-by-hand"
    hand_made = [copies / ".git", copies / ".snapshots", copies / "support-v2-1234abcd"]  # (review: all removed at first)
    for folder in (partial, uncounted, by_hand, *hand_made):
        shutil.copytree(first.path, folder)
    live_partial = copies / f".bot-v3-89abcdef.partial-{os.getpid()}"  # a register copying now (its process runs)
    shutil.copytree(first.path, live_partial)
    listed = CliRunner().invoke(app, ["adapters", "list", "-r", str(reg.root)])
    assert listed.exit_code == 0 and all(
        f"warning: {folder} is a copy no adapter of the registry names" in " ".join(listed.output.split())
        for folder in (partial, uncounted, by_hand)
    ), listed.output
    second = reg.register(write_adapter(tmp_path / "b", seed=1), "bot")
    assert second.name.startswith("bot-v2-") and second.name != uncounted.name
    assert "bot-v3-89abcdef.partial" not in listed.output, "a copy being made now is not told to be removed"
    kept = [by_hand, *hand_made]
    assert sorted(p.name for p in copies.iterdir()) == sorted([first.name, second.name, *(p.name for p in kept)]), (
        "folders put there by hand stay"
    )
    assert reg.leftover_copies() == sorted(kept)


def test_a_float8_fnuz_tensor_safetensors_loads_is_registered(tmp_path: Path) -> None:
    """Review: F8_E4M3FNUZ and F8_E5M2FNUZ (ROCm's float8s), which safetensors loads, were refused as "not a safetensors dtype"."""
    folder = write_adapter(tmp_path / "a")
    _header_file(
        folder / "adapter_model.safetensors",
        {
            WEIGHT: {"dtype": "F8_E4M3FNUZ", "shape": [8, 4], "data_offsets": [0, 32]},
            "b.lora_B.weight": {"dtype": "F8_E5M2FNUZ", "shape": [4, 8], "data_offsets": [32, 64]},
        },
        bytes(64),
    )
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), "np") as fh:  # (the format's own reader takes it)
        assert sorted(fh.keys()) == sorted([WEIGHT, "b.lora_B.weight"])
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj", "b"]}))
    assert LocalAdapterRegistry(tmp_path / "reg").register(folder, "bot").status == "candidate"


def test_a_registry_below_a_file_is_refused_before_anything_is_made(tmp_path: Path) -> None:
    """Sweep: ``--registry $PWD/improve.toml/sub`` passed ``ee improve``'s checks; the run failed at its train stage,
    hours in, and the corrected file could not continue it ([improve] is fixed for a run)."""
    (tmp_path / "improve.toml").write_text("[improve]\n")
    with pytest.raises(ConfigError, match=r"can never be made: .*improve.toml above it is a file"):
        LocalAdapterRegistry(tmp_path / "improve.toml" / "sub")
