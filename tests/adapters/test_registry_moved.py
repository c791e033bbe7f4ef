"""A local registry's adapter copies are found from where the registry is now (sweep_serve findings 1, 5, 7 and 6).

Before: index.json held each copy's absolute path, so a moved registry called every adapter "damaged ... retire it",
and a copied one read, hashed and handed the servers the original's files. Registering the same weights again did not
bring back a deleted copy, and ``ee adapters show``/``list`` showed such an adapter as fine. An index edited so that
two adapters of one app were live was accepted. ``list`` did not say which retired adapter a rollback goes back to.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.adapters.errors import AdapterFilesError, RegistryCorruptionError
from ee_middleware.adapters.records import AdapterRecord, check_registered_files
from ee_middleware.adapters.registry import LocalAdapterRegistry
from ee_middleware.adapters.testing import check_registry
from ee_middleware.cli.app import app
from tests.adapters.helpers import write_adapter


def _registry(tmp_path: Path, count: int = 2) -> tuple[LocalAdapterRegistry, list[str]]:
    registry = LocalAdapterRegistry(tmp_path / "reg")
    names = [registry.register(write_adapter(tmp_path / f"src{i}", seed=i), "bot").name for i in range(count)]
    return registry, names


def _cli(*args: str) -> object:
    return CliRunner().invoke(app, ["adapters", *args])


def test_a_moved_registry_serves_its_adapters_from_where_it_is_now(tmp_path: Path) -> None:
    registry, (first, second) = _registry(tmp_path)
    registry.switch_live(first)
    stored = json.loads((registry.root / "index.json").read_text())["adapters"]
    # absolute, as an older ee reads it (a rollback of the package after an upgrade: written relative, an older ee called
    # every adapter damaged, or sent the servers a relative path), read as this folder's copy wherever it is now
    assert {n: r["path"] for n, r in stored.items()} == {n: str(registry.root / "adapters" / n) for n in (first, second)}
    moved = tmp_path / "elsewhere" / "reg"
    moved.parent.mkdir()
    shutil.move(registry.root, moved)
    there = LocalAdapterRegistry(moved)
    for name in (first, second):
        record = there.get(name)
        assert record.path == str(moved / "adapters" / name) and Path(record.path).is_absolute()
        check_registered_files(record, str(moved))  # before: "damaged: its folder .../reg/adapters/NAME is gone"
    promoted = _cli("promote", second, "-r", str(moved), "--registry-only")
    assert promoted.exit_code == 0, promoted.output
    assert there.resolve("bot") == second and there.rollback_target("bot").path == str(moved / "adapters" / first)


def test_a_copied_registry_never_reads_the_originals_files(tmp_path: Path) -> None:
    registry, (first, _) = _registry(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(registry.root, copy)
    shutil.rmtree(copy / "adapters")  # a copy that holds no adapter files at all
    record = LocalAdapterRegistry(copy).get(first)
    assert record.path == str(copy / "adapters" / first)
    assert json.loads(_cli("list", "-r", str(copy), "--json").stdout)[0]["path"].startswith(str(copy))
    refused = _cli("promote", first, "-r", str(copy), "--registry-only")
    assert refused.exit_code == 1, refused.output  # before: verified and switched with the original's files
    with pytest.raises(AdapterFilesError) as missing:
        check_registered_files(record, str(copy))
    message = str(missing.value)
    assert f"its folder {copy / 'adapters' / first} is gone" in message and "moved or copied" in message
    assert message.index("register the same weights again") < message.index("ee adapters retire"), "restoring comes first"
    assert LocalAdapterRegistry(copy).resolve("bot") is None


def test_an_index_written_elsewhere_reads_as_this_folders_copies_and_is_rewritten_with_this_folders_paths(tmp_path: Path) -> None:
    registry, (first, second) = _registry(tmp_path)
    index_file = registry.root / "index.json"
    index = json.loads(index_file.read_text())
    index["adapters"][first]["path"] = f"/old/mount/reg/adapters/{first}"  # the folder the registry was registered in
    index["adapters"][second]["path"] = "/somewhere/else/by-hand"  # not a registry copy's path: kept as it is
    index_file.write_text(json.dumps(index))
    assert registry.get(first).path == str(registry.root / "adapters" / first)
    assert registry.get(second).path == "/somewhere/else/by-hand"
    registry.add_eval(first, {"suite": "s", "score": 1.0})  # any write
    stored = json.loads(index_file.read_text())["adapters"]
    assert stored[first]["path"] == str(registry.root / "adapters" / first) and stored[second]["path"] == "/somewhere/else/by-hand"
    index = json.loads(index_file.read_text())
    index["adapters"][first]["path"] = f"adapters/{first}"  # relative, as some versions wrote it
    index_file.write_text(json.dumps(index))
    assert registry.get(first).path == str(registry.root / "adapters" / first)
    registry.add_eval(first, {"suite": "s", "score": 0.5})
    assert json.loads(index_file.read_text())["adapters"][first]["path"] == str(registry.root / "adapters" / first)


def test_the_kit_refuses_a_registry_whose_record_path_is_relative(tmp_path: Path) -> None:
    class Relative(LocalAdapterRegistry):  # hands out the path as index.json holds it
        def _public(self, data: dict) -> AdapterRecord:
            return AdapterRecord.from_json({**data, "path": f"adapters/{data['name']}"})

        def register(self, *args: object, **kwargs: object) -> AdapterRecord:
            return self.get(super().register(*args, **kwargs).name)  # type: ignore[arg-type]

    check_registry(lambda: LocalAdapterRegistry(tmp_path / "ok"), tmp_path / "ok-work")
    with pytest.raises(AssertionError, match="absolute path"):
        check_registry(lambda: Relative(tmp_path / "reg"), tmp_path / "work")


@pytest.mark.parametrize("damage", ["deleted", "altered"])
def test_registering_the_same_weights_again_restores_the_registry_copy(tmp_path: Path, damage: str) -> None:
    registry, (first, _) = _registry(tmp_path)
    copy = Path(registry.get(first).path)
    if damage == "deleted":
        shutil.rmtree(copy)
    else:
        (copy / "adapter_model.safetensors").write_bytes((tmp_path / "src1" / "adapter_model.safetensors").read_bytes())
    events = len(registry.history())
    result = _cli("register", str(tmp_path / "src0"), "--app", "bot", "-r", str(registry.root))
    assert result.exit_code == 0, result.output
    assert f"restored the registry's copy of {first}" in " ".join(result.stderr.split())
    check_registered_files(registry.get(first), str(registry.root))  # before: still missing (or altered)
    [event] = registry.history()[events:]
    assert (event["action"], event["adapter"], event["applied"]) == ("restore", first, True)
    said = []
    assert registry.register(tmp_path / "src0", "bot", on_restore=said.append) == registry.get(first)
    assert said == [] and len(registry.history()) == events + 1, "an intact copy: nothing to restore, no event"


def test_list_and_show_flag_an_adapter_whose_registry_copy_is_missing_or_altered(tmp_path: Path) -> None:
    registry, (first, second) = _registry(tmp_path)
    root = str(registry.root)
    shutil.rmtree(registry.get(first).path)
    listed = _cli("list", "-r", root, "--json")
    problems = {r["name"]: r["files_problem"] for r in json.loads(listed.stdout)}
    assert listed.exit_code == 0 and "is missing" in problems[first] and problems[second] is None
    table = _cli("list", "-r", root)
    assert "files missing" in table.stdout and f"warning: {first}" in table.stderr
    shown = _cli("show", first, "-r", root)
    assert "is gone" in " ".join(shown.stderr.split()) and "register the same weights again" in " ".join(shown.stderr.split())
    assert "is missing" in json.loads(_cli("show", first, "-r", root, "--json").stdout)["files_problem"]
    (Path(registry.get(second).path) / "adapter_model.safetensors").write_bytes(
        (tmp_path / "src0" / "adapter_model.safetensors").read_bytes()
    )
    assert "changed since it was registered" in json.loads(_cli("show", second, "-r", root, "--json").stdout)["files_problem"]
    assert json.loads(_cli("show", first, "-r", root, "--json").stdout)["history"], "the rest of show is unchanged"


def test_two_live_adapters_of_one_app_are_refused_as_an_outside_edit(tmp_path: Path) -> None:
    registry, (first, second) = _registry(tmp_path)
    registry.switch_live(first)
    index_file = registry.root / "index.json"
    for edit in ("two live", "live names a candidate"):
        index = json.loads(index_file.read_text())
        if edit == "two live":
            index["adapters"][second]["status"] = "live"
        else:
            index["adapters"][first]["status"] = "candidate"
        text = json.dumps(index, indent=1)
        index_file.write_text(text)
        with pytest.raises(RegistryCorruptionError, match=r"edited or damaged outside ee-middleware: apps\.bot\.live names") as refused:
            registry.list()
        assert "nothing was changed" in str(refused.value)
        result = _cli("list", "-r", str(registry.root), "--status", "live")
        assert result.exit_code == 1 and "status 'live' are" in " ".join(result.stderr.split())
        assert index_file.read_text() == text
        index["adapters"][second]["status"], index["adapters"][first]["status"] = "candidate", "live"
        index_file.write_text(json.dumps(index, indent=1))
    assert registry.resolve("bot") == first


def test_list_marks_the_retired_adapter_a_rollback_makes_live_again(tmp_path: Path) -> None:
    registry, names = _registry(tmp_path, count=3)
    for name in names:
        registry.switch_live(name)
    registry.retire(names[1])  # retired by hand: out of the rollback stack
    rows = json.loads(_cli("list", "-r", str(registry.root), "--json").stdout)
    assert {r["name"]: (r["status"], r["rollback_target"]) for r in rows} == {
        names[0]: ("retired", True),
        names[1]: ("retired", False),
        names[2]: ("live", False),
    }
    assert registry.rollback_target("bot").name == names[0]
    table = _cli("list", "-r", str(registry.root), "--status", "retired")
    lines = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip().startswith("bot-")}
    assert "retired *" in lines[names[0]] and "*" not in lines[names[1]]
    assert "* the rollback target: ee adapters rollback bot" in " ".join(table.stdout.split())


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("created_at", 5, "created_at should be str, got 5"),
        ("version", "2", "version should be int"),
        ("rank", True, "rank should be int"),
        ("reason", 3, "reason should be str or null"),
    ],
)
def test_a_record_field_of_the_wrong_type_is_refused_as_an_outside_edit(tmp_path: Path, field: str, value: object, said: str) -> None:
    registry, (first, _) = _registry(tmp_path)
    index_file = registry.root / "index.json"
    index = json.loads(index_file.read_text())
    index["adapters"][first][field] = value
    index_file.write_text(json.dumps(index, indent=1))
    with pytest.raises(RegistryCorruptionError, match=rf"edited or damaged outside ee-middleware: adapters\.{first}\.{said}"):
        registry.list()
    for args in (("list",), ("list", "--json")):
        result = _cli(*args, "-r", str(registry.root))
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert said in " ".join(result.stderr.split())
    assert json.loads(_cli("list", "-r", str(registry.root), "--json").stdout)["error"]["type"] == "RegistryCorruptionError"


@pytest.mark.parametrize(("key", "value"), [("live", ["x"]), ("previous", [{"a": 1}]), ("versions", True), ("live", 5)])
def test_an_app_entry_of_the_wrong_type_is_refused_as_an_outside_edit(tmp_path: Path, key: str, value: object) -> None:
    """An unhashable live or previous name was a TypeError (a traceback from ee adapters list, a 500 from the router)."""
    registry, (first, _) = _registry(tmp_path)
    registry.switch_live(first)
    index_file = registry.root / "index.json"
    index = json.loads(index_file.read_text())
    index["apps"]["bot"][key] = value
    index_file.write_text(json.dumps(index, indent=1))
    with pytest.raises(RegistryCorruptionError, match=r"apps\.bot should be an object with 'live' \(an adapter's name or null\)"):
        registry.list()
    result = _cli("list", "-r", str(registry.root))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
