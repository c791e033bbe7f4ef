"""``open_store(spec)``: every spec form, through the plugin registry, with clear errors."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from ee_middleware.errors import StoreError
from ee_middleware.store import ExperienceStore, LocalExperienceStore, open_store
from ee_middleware.store.registry import store_config_value
from ee_middleware.testing.store_conformance import sample_trajectory

PLUGIN = """
from ee_middleware.store.local import LocalExperienceStore

calls = []


def open_plugin_store(location, *, create=True):
    calls.append((location, create))
    return LocalExperienceStore(location, create=create)


def default_store():
    return LocalExperienceStore({root!r})


def not_a_store():
    return object()
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real installed plug-in: a module plus a dist-info declaring an ``ee_middleware.stores`` entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "conformance_stores.py").write_text(PLUGIN.format(root=str(tmp_path / "default")))
    dist = site / "conformance_stores-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: conformance-stores\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [ee_middleware.stores]
            plugstore = conformance_stores:open_plugin_store
            broken = conformance_stores:missing_attribute
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    sys.modules.pop("conformance_stores", None)
    yield importlib.import_module("conformance_stores")
    sys.modules.pop("conformance_stores", None)


def test_a_path_opens_the_local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for spec, folder in ((str(tmp_path / "a"), "a"), (tmp_path / "b", "b"), ("c", "c"), ("local:d", "d"), ("local://e", "e")):
        store = open_store(spec)
        assert isinstance(store, LocalExperienceStore) and isinstance(store, ExperienceStore)
        assert store.root.resolve() == (tmp_path / folder).resolve(), spec
    assert (tmp_path / "e" / "ee-store.json").exists()


def test_an_open_store_passes_through(tmp_path: Path):
    store = LocalExperienceStore(tmp_path / "s")
    assert open_store(store) is store


def test_create_false_keeps_the_missing_store_message(tmp_path: Path):
    for spec in (tmp_path / "missing", str(tmp_path / "missing"), f"local:{tmp_path / 'missing'}"):
        with pytest.raises(StoreError, match=r"No experience store at .*missing\. Record a run into it first, or check the --store path\."):
            open_store(spec, create=False)
    assert not (tmp_path / "missing").exists()


def test_a_folder_whose_name_has_a_colon_still_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    LocalExperienceStore("runs:v2").write([sample_trajectory("t")])
    assert open_store("runs:v2", create=False).trajectories()["id"].to_list() == ["t"]
    with pytest.raises(StoreError, match="write local:runs:v3"):
        open_store("runs:v3")
    assert open_store("local:runs:v3").trajectories().height == 0


def test_an_entry_point_plug_in_gets_the_location(plugin, tmp_path: Path):
    first = open_store(f"plugstore:{tmp_path / 'p'}", create=True)
    second = open_store(f"plugstore://{tmp_path / 'p'}", create=False)
    assert plugin.calls == [(str(tmp_path / "p"), True), (str(tmp_path / "p"), False)]
    first.write([sample_trajectory("t")])
    assert second.trajectories()["id"].to_list() == ["t"]


def test_a_user_factory_is_called_with_no_arguments(plugin, tmp_path: Path):
    store = open_store("conformance_stores:default_store")
    assert store.root == tmp_path / "default"


def test_bad_specs_name_the_problem_and_every_accepted_form(plugin, tmp_path: Path):
    cases = {
        "": "the spec is empty",
        "s3://bucket/x": "'s3' is neither a built-in store nor an installed 'ee_middleware.stores' entry point; install the plug-in",
        "local:": "names the 'local' store but no location",
        "conformance_stores:not_a_store": "returned object, which is not a ExperienceStore",
        "conformance_stores:nothing_here": "has no attribute 'nothing_here'",
        "broken:x": "plug-in 'broken' .* failed to load",
    }
    for spec, message in cases.items():
        with pytest.raises(StoreError, match=message):
            open_store(spec)
    with pytest.raises(StoreError) as caught:
        open_store("s3://bucket/x")
    text = str(caught.value)
    for form in (
        "a folder path",
        "'local:PATH'",
        "'NAME:LOCATION' or 'NAME://LOCATION'",
        "installed: 'broken', 'plugstore'",
        "package.module:factory",
    ):
        assert form in text
    with pytest.raises(StoreError, match="a path or a string, not int"):
        open_store(3)  # type: ignore[arg-type]


def test_config_values_keep_local_paths_as_paths(plugin):
    assert store_config_value("./runs/") == Path("runs")
    assert store_config_value("local:./runs/") == Path("runs")
    assert store_config_value("plugstore://bucket/x") == "plugstore://bucket/x"
    assert store_config_value("s3://bucket/x") == "s3://bucket/x", "left for open_store to report"
    assert store_config_value(Path("x")) == Path("x")


def test_the_cli_takes_store_specs(plugin, tmp_path: Path):
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    store = LocalExperienceStore(tmp_path / "s")
    store.write([sample_trajectory("t1"), sample_trajectory("t2")])
    runner = CliRunner()
    by_path = runner.invoke(app, ["traces", "list", "--store", str(tmp_path / "s"), "--json"])
    assert by_path.exit_code == 0, by_path.output
    for spec in (f"local:{tmp_path / 's'}", f"plugstore://{tmp_path / 's'}"):
        by_spec = runner.invoke(app, ["traces", "list", "--store", spec, "--json"])
        assert by_spec.exit_code == 0 and by_spec.output == by_path.output, by_spec.output
    missing = runner.invoke(app, ["store", "info", "--store", f"plugstore:{tmp_path / 'nothing'}"])
    assert missing.exit_code == 1 and "No experience store at" in missing.output
    assert not (tmp_path / "nothing").exists(), "a CLI command never creates a store by mistake"
