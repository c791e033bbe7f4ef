"""matplotlib's config folder where the home cannot be written (a service user's ``HOME=/nonexistent``, a read-only
container root): before, every chart ee wrote logged matplotlib's two warnings ("mkdir -p failed", "Matplotlib created a
temporary cache directory ... set MPLCONFIGDIR") into every nightly log. Each case runs in a fresh Python process (the
folder is chosen before matplotlib is first imported), drawing a real chart through ee's own writer (the loss curve)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

DRAW = """
import sys
from pathlib import Path
{before}
from ee_middleware.trainers.training.report import plot_loss
plot_loss(Path(sys.argv[1]), [(1, 2.0), (2, 1.5)], [], "loss")
import os
print("MPLCONFIGDIR=" + os.environ.get("MPLCONFIGDIR", ""))
"""


def _draw(tmp_path: Path, env: dict[str, str], before: str = "") -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "EE_CACHE_DIR")}
    out = tmp_path / "loss.png"
    result = subprocess.run(
        [sys.executable, "-c", DRAW.format(before=before), str(out)], env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    return result


def _unwritable_home(tmp_path: Path) -> str:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return str(blocker / "home")  # under a file: no folder can be made there, whoever runs the test (root too)


def test_a_home_that_cannot_be_written_gives_no_matplotlib_warnings(tmp_path: Path) -> None:
    plain = _draw(tmp_path, {"HOME": _unwritable_home(tmp_path)}, before="import matplotlib")  # (matplotlib first, alone)
    assert "MPLCONFIGDIR" in plain.stderr, "the case must make matplotlib warn without ee's folder"
    quiet = _draw(tmp_path, {"HOME": _unwritable_home(tmp_path)})
    assert quiet.stderr == "", quiet.stderr
    assert quiet.stdout.strip() != "MPLCONFIGDIR="


def test_ee_cache_dir_keeps_the_folder_between_runs(tmp_path: Path) -> None:
    cache = tmp_path / "ee-cache"
    for _ in range(2):
        quiet = _draw(tmp_path, {"HOME": _unwritable_home(tmp_path), "EE_CACHE_DIR": str(cache)})
        assert quiet.stderr == "" and quiet.stdout.strip() == f"MPLCONFIGDIR={cache / 'matplotlib'}", (quiet.stdout, quiet.stderr)


def test_a_writable_home_or_a_set_mplconfigdir_is_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert _draw(tmp_path, {"HOME": str(home)}).stdout.strip() == "MPLCONFIGDIR="
    assert (home / ".config" / "matplotlib").is_dir()
    given = tmp_path / "given"
    assert _draw(tmp_path, {"HOME": _unwritable_home(tmp_path), "MPLCONFIGDIR": str(given)}).stdout.strip() == f"MPLCONFIGDIR={given}"


def test_no_home_at_all_still_draws(tmp_path: Path) -> None:
    """(the review of an earlier attempt) Path.home() raising, or a home in a folder this user cannot enter, must leave
    matplotlib to decide as it does alone, never fail the chart."""
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    result = subprocess.run(
        [sys.executable, "-c", DRAW.format(before="import pathlib; pathlib.Path.home = lambda: (_ for _ in ()).throw(RuntimeError('no home'))"), str(tmp_path / "x.png")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.png").stat().st_size > 0
