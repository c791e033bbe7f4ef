"""Processes that make a store's redaction vault at once (a server's workers starting together, each with
``record_experience(..., vault=True)``) each open it whole (a multi-process sweep: one in four workers failed to start in
half the trials, its vault "not a redaction vault (its first line says format=None)", read between another's creating
the file and writing its first line). A vault file left empty (its maker killed in between, by an older version) is
refused saying so and how to go on, not as another program's file."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import pytest

from ee_middleware.capture.vault import Vault
from ee_middleware.errors import ConfigError


def _open_at_once(path: str, barrier: multiprocessing.synchronize.Barrier, failures: multiprocessing.Queue) -> None:
    barrier.wait(30)
    try:
        Vault(path, create=True).close()
    except Exception as exc:  # the test counts them
        failures.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("trial", range(3))
def test_four_processes_making_one_vault_at_once_each_open_it(tmp_path: Path, trial: int) -> None:
    context = multiprocessing.get_context("fork")
    barrier, failures = context.Barrier(4), context.Queue()
    path = str(tmp_path / f"store-{trial}.vault")
    processes = [context.Process(target=_open_at_once, args=(path, barrier, failures)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0] * 4
    found = []
    while not failures.empty():
        found.append(failures.get())
    assert found == []
    assert Path(path).read_text().count("\n") == 1, "one first line, by one of them"


def test_an_empty_vault_file_is_waited_for_a_moment_then_refused_saying_how_to_go_on(tmp_path: Path) -> None:
    path = tmp_path / "s.vault"
    path.touch(mode=0o600)
    with pytest.raises(ConfigError, match=r"is empty: the process that made it was stopped before it wrote its first line") as refused:
        Vault(path, create=True)
    assert f"rm {path}" in str(refused.value) and "not a redaction vault" not in str(refused.value)

    path.write_text("")  # made by another process, which writes its first line a moment later (no hard links)
    header = Path(tmp_path / "whole.vault")
    Vault(header, create=True).close()
    writer = threading.Timer(0.3, lambda: path.write_text(header.read_text()))
    writer.start()
    try:
        Vault(path).close()
    finally:
        writer.join()
