"""What ``ee replay run`` says when a signal stops it (sweep of a store at 100k trajectories, L3): with ``--limit``, "the
same command continues where it stopped" read as if it replayed the rest of that batch; it replays up to --limit more
(the limit counts each run's trajectories), those left first. The line now says so."""

from __future__ import annotations

from types import SimpleNamespace

from ee_middleware.cli.replay_cmds import _interrupted_text


def _config(**settings: object) -> SimpleNamespace:
    return SimpleNamespace(**{"executor": "local", "workers": 1, "again": False, "limit": None, **settings})


def test_without_a_limit_the_same_command_continues() -> None:
    said = _interrupted_text(_config(), "SIGINT", [3000, 2770])
    assert said.endswith(
        "with 2770 of 3000 trajectories replayed and stored; those it was replaying are not stored. The same command continues where it stopped."
    )


def test_with_a_limit_it_says_the_next_run_takes_up_to_the_limit_those_left_first() -> None:
    said = _interrupted_text(_config(limit=3000), "SIGINT", [3000, 2770])
    assert said.endswith(
        "The same command continues where it stopped: --limit counts each run's trajectories, so it replays the 230 left "
        "first, then more up to 3000."
    ), said
    assert _interrupted_text(_config(limit=3000), "SIGINT", []).endswith("continues where it stopped.")


def test_an_again_stopped_before_storing_anything_says_to_run_it_with_again() -> None:
    """Its new attempt is made by its first stored trajectory: "the same command without --again continues" replayed
    nothing (the previous attempt was complete) and the asked-for replay never happened (a sweep)."""
    for counted in ([], [40, 0]):
        said = _interrupted_text(_config(again=True), "SIGINT", counted)
        assert said.endswith("so its new attempt holds nothing yet. The same command, with --again, starts it."), said
    said = _interrupted_text(_config(again=True), "SIGINT", [40, 12])
    assert said.endswith("The same command without --again continues where it stopped."), said
