"""A sandbox factory whose module sends SIGINT to the process importing it, except in the process named by
``EE_TEST_QUIET_PID``: a child process started to build it gets the signal in its start-up, as a Ctrl-C to the job's
process group while the sandbox children import does. An importable module: spawned children import factories by name."""

from __future__ import annotations

import os
import signal

from tests.replay.sandboxes.counter_world import make_counter_sandbox

if os.environ.get("EE_TEST_QUIET_PID") not in (None, str(os.getpid())):
    os.kill(os.getpid(), signal.SIGINT)


def make_sandbox() -> object:
    return make_counter_sandbox()
