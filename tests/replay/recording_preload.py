"""Imported by a replay job's fork server in tests: records every module a process forked from it imports itself.

The server's audit hook is inherited by each worker it forks; a worker appends the name of every module it imports
that the server had not (one per line) to ``EE_TEST_WORKER_IMPORTS``/``<pid>``, a file it creates as it is forked. Without that variable it does nothing.
"""

from __future__ import annotations

import os
import sys

_folder = os.environ.get("EE_TEST_WORKER_IMPORTS")
_server = os.getpid()


def _record(event: str, args: tuple[object, ...]) -> None:
    if event != "import" or os.getpid() == _server or args[0] in sys.modules:
        return
    with open(os.path.join(_folder, str(os.getpid())), "a") as out:  # type: ignore[arg-type]
        out.write(f"{args[0]}\n")


def _forked() -> None:
    open(os.path.join(_folder, str(os.getpid())), "a").close()  # type: ignore[arg-type]  # (a worker that imports nothing)


if _folder:
    sys.addaudithook(_record)
    os.register_at_fork(after_in_child=_forked)
