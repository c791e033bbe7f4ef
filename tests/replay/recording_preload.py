"""Imported by a replay job's fork server in tests: records every module a process forked from it imports itself.

A finder first on ``sys.meta_path`` (inherited by each worker the server forks) sees every import of a module not yet
loaded, however it is made (an ``import`` statement, ``importlib.import_module``, a plug-in's factory resolved by name),
and a worker appends each such name (one per line) to ``EE_TEST_WORKER_IMPORTS``/``<pid>``, a file it creates as it is
forked. Without that variable it does nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_folder = os.environ.get("EE_TEST_WORKER_IMPORTS")
_server = os.getpid()


class _Recorder:
    """Finds nothing (the next finder does): only notes the name, in a forked worker."""

    @staticmethod
    def find_spec(fullname: str, path: Any = None, target: Any = None) -> None:
        if os.getpid() != _server:
            with open(os.path.join(_folder, str(os.getpid())), "a") as out:  # type: ignore[arg-type]
                out.write(f"{fullname}\n")


def _forked() -> None:
    open(os.path.join(_folder, str(os.getpid())), "a").close()  # type: ignore[arg-type]  # (a worker that imports nothing)


if _folder:
    sys.meta_path.insert(0, _Recorder)  # type: ignore[arg-type]
    os.register_at_fork(after_in_child=_forked)
