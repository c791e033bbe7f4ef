"""The line ``ee replay run`` prints when a signal stopped it says what is stored, per executor."""

from __future__ import annotations

from types import SimpleNamespace

from ee_middleware.cli.replay_cmds import _interrupted_text


def test_with_ray_actors_the_line_says_the_trajectories_they_were_on_are_stored() -> None:
    # A Ray actor is only cancelled between trajectories: it finishes and stores the one it is on (3-4 were stored after
    # the line said "those it was replaying are not stored").
    line = _interrupted_text(SimpleNamespace(workers=2, executor="ray", again=False), "SIGTERM", [12, 2])
    assert "(SIGTERM) with 2 of 12 trajectories replayed and stored" in line, line
    assert "not stored" not in line, line
    assert "each Ray actor stores the trajectory it was replaying" in line, line


def test_local_workers_drop_the_trajectories_they_were_replaying() -> None:
    line = _interrupted_text(SimpleNamespace(workers=2, executor="local", again=False), "SIGINT (Ctrl-C)", [12, 2])
    assert "those it was replaying are not stored" in line
