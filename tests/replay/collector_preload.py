"""Imported by a replay job's fork server in tests: each worker forked from it writes, as it is forked (before its own
set-up), how many objects the server had frozen out of the collector and whether the collector is on, to
``EE_TEST_COLLECTOR_AT_FORK``/``<pid>``. Without that variable it does nothing."""

from __future__ import annotations

import gc
import os

_folder = os.environ.get("EE_TEST_COLLECTOR_AT_FORK")


def _forked() -> None:
    with open(os.path.join(_folder, str(os.getpid())), "w") as out:  # type: ignore[arg-type]
        out.write(f"{gc.get_freeze_count()} {gc.isenabled()}")


if _folder:
    os.register_at_fork(after_in_child=_forked)
