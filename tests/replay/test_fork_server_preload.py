"""A process forked from the job's fork server that ends normally (it inherits the server's exit hook) leaves the
server's listening socket (review: it removed it while the job lived, and no worker could start after); the server's
own exit removes it (a SIGKILLed job: tests/replay/test_processes.py). Real processes, a real Unix socket."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

PROGRAM = textwrap.dedent(
    """
    import os, socket, sys
    folder = sys.argv[1]
    address = os.path.join(folder, "listener-test")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(address)
    listener.listen()
    listener_fd = listener.fileno()  # what multiprocessing.forkserver.main is given
    import ee_middleware.replay.fork_server_preload as preload
    preload._remove_listener_if_orphaned(sys._getframe())
    child = os.fork()
    if child == 0:
        sys.exit(0)  # a process forked from the server (a tool's own fork) ending normally: its exit hooks run
    os.waitpid(child, 0)
    print("kept" if os.path.exists(address) else "removed", flush=True)
    """
)


def test_a_process_forked_from_the_server_leaves_the_listener_of_a_living_job(tmp_path: Path) -> None:
    folder = tmp_path / "pymp-test"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(folder)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "kept", done.stderr  # after the forked process had ended
    assert not folder.exists(), "the server's own exit (its job gone, here: never started) removes the socket and the folder"
