"""How ``ee`` reports an error raised in a plug-in's own code while it works (not in its factory), and which OSErrors
it calls file errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()
PLUGINS = "tests.cli.store_plugins"


def ee(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _error_line(result: Any) -> str:
    [line] = [line for line in result.output.splitlines() if line.startswith("error:")]
    return line


@pytest.mark.parametrize(
    ("factory", "raised", "module"),
    [
        ("locked", "OperationalError: database is locked", "store_plugins.py:"),
        ("unreachable", "ConnectionRefusedError: [Errno 111] Connection refused by store.internal:5432", "store_plugins.py:"),
        ("inheriting", "OperationalError: disk I/O error", "store_plugin_base.py:"),  # a method of its base class
    ],
)
def test_an_error_a_store_plugin_raises_while_reading_names_the_store_and_its_line(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str, raised: str, module: str
) -> None:
    """Was: 'error: unexpected OperationalError: database is locked (a bug in ee-middleware ...)', and for the connection
    error 'error: Connection refused by store.internal:5432 (the operation that failed names no file).' (no type, no
    store, called a file error)."""
    monkeypatch.setenv("EE_TEST_STORE_ROOT", str(bfcl_store_path))
    spec = f"{PLUGINS}:{factory}"
    result = ee("traces", "list", "--store", spec)
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert f"The store '{spec}' failed: {raised} (at " in line, line
    assert module in line and ", in trajectories: `raise " in line, line
    assert "not in ee-middleware" in line and "bug in ee-middleware" not in line and "names no file" not in line, line
    assert "Traceback" not in result.output


def test_verbose_lets_an_oserror_through_with_its_traceback(bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Was: every OSError became the one file-error line, --verbose or not."""
    monkeypatch.setenv("EE_TEST_STORE_ROOT", str(bfcl_store_path))
    result = ee("--verbose", "traces", "list", "--store", f"{PLUGINS}:unreachable")
    assert isinstance(result.exception, ConnectionRefusedError), result.output


@pytest.mark.parametrize(
    ("error", "file_error"),
    [
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), True),  # a full disk, no file named: still the disk's
        (PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/x"), True),
        (FileNotFoundError("no model.bin in the folder"), True),  # a file's by its class
        (OSError("the GPU driver is gone"), False),  # no errno, no file name: nothing says it is a file's
        (ConnectionResetError(errno.ECONNRESET, os.strerror(errno.ECONNRESET)), False),
        (TimeoutError("the service did not answer in 30 s"), False),
    ],
)
def test_an_oserror_is_a_file_error_only_when_it_names_a_file_or_has_a_file_systems_errno(
    error: OSError, file_error: bool, bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected (ee's own code raising it): no plug-in to name, so an OSError that is no file's is an unexpected error,
    with its type."""
    from ee_middleware.cli import store_cmds

    def failing(spec: Any) -> Any:
        raise error

    monkeypatch.setattr(store_cmds, "open_existing_store", failing)
    result = ee("store", "info", "--store", str(bfcl_store_path))
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert ("unexpected " in line) is not file_error, line
    if not file_error:
        assert f"unexpected {type(error).__name__}: " in line, line


@pytest.mark.parametrize("factory", ["audited", "closing"])
def test_an_error_raised_in_ees_own_code_under_a_store_plugin_is_not_blamed_on_the_store(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str
) -> None:
    """Was (713b4f2): a store subclass whose read adds an audit line and calls super() was named for an error raised
    inside ee's own reading code under that call ('The store ... failed: KeyError: ... The error was raised in the
    store's own code, not in ee-middleware: fix it there'), sending the user to debug correct code; the same error with
    the plain local store is ee's. Injected: ee's reading gets a decisions table without its columns, so ee's own code
    fails in polars (standing for a bug in ee); the stores and ee's reading code are real."""
    import polars as pl

    from ee_middleware.store import local

    monkeypatch.setattr(local, "_decisions", lambda trajectories, approvals: pl.DataFrame({"trajectory_id": [], "status": []}))
    monkeypatch.setenv("EE_TEST_STORE_ROOT", str(bfcl_store_path))
    for spec in (str(bfcl_store_path), f"{PLUGINS}:{factory}"):
        result = ee("traces", "list", "--store", spec)
        assert result.exit_code == 1, result.output
        line = _error_line(result)
        assert "unexpected ColumnNotFoundError: " in line and "(a bug in ee-middleware" in line, (spec, line)
        assert "The store" not in line, (spec, line)


def test_an_error_a_store_plugin_raises_when_ees_code_calls_back_into_it_names_the_store(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plug-in's read goes through super() into ee's code, which calls the plug-in's own method, which raises: its
    last frame is deeper than ee's, so the error is the store's."""
    monkeypatch.setenv("EE_TEST_STORE_ROOT", str(bfcl_store_path))
    spec = f"{PLUGINS}:audited_loading"
    line = _error_line(ee("traces", "list", "--store", spec))
    assert f"The store '{spec}' failed: OperationalError: audit log is locked (at " in line, line
    assert "store_plugins.py:" in line and ", in _load: `raise " in line, line


def test_the_standard_librarys_classes_a_plugin_inherits_from_are_not_taken_for_the_plugins_code(
    bfcl_store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: building a store with a contextlib.AbstractContextManager mixin recorded abc and contextlib as the plug-in's
    modules, so an error raised in them could be told as the store's."""
    from ee_middleware import plugins
    from ee_middleware.store.registry import STORES

    monkeypatch.setenv("EE_TEST_STORE_ROOT", str(bfcl_store_path))
    monkeypatch.setattr(plugins, "_LOADED", {})
    STORES.build(f"{PLUGINS}:closing").close()
    assert sorted(plugins._LOADED) == [PLUGINS]


def test_a_store_plugin_whose_module_raises_while_imported_is_named_not_called_a_bug_in_ee(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was: 'error: unexpected KeyError: 'LIBRARY_DB' (a bug in ee-middleware ... report it)' for a store module that reads
    its configuration from the environment when imported, naming neither the store nor its file."""
    import sys

    package = tmp_path / "importfail_store"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "store.py").write_text("import os\n\nDATABASE = os.environ['EE_TEST_LIBRARY_DB_UNSET']\n\n\ndef make():\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    spec = "importfail_store.store:make"
    try:
        result = ee("traces", "list", "--store", spec)
    finally:
        for name in [n for n in sys.modules if n.partition(".")[0] == "importfail_store"]:
            del sys.modules[name]
    assert result.exit_code == 1, result.output
    line = _error_line(result)
    assert f"Cannot import 'importfail_store.store' for store '{spec}': KeyError: 'EE_TEST_LIBRARY_DB_UNSET' (at " in line, line
    assert f"{Path('importfail_store', 'store.py')}:3, in <module>: `DATABASE = os.environ[" in line, line
    assert 'python -c "import importfail_store.store"' in line, line
    assert "unexpected" not in line and "report it" not in line and "bug in ee-middleware" not in line, line
    assert "folder whose name has a colon" not in line, line  # the module exists: no folder is meant (a missing one keeps the hint)
