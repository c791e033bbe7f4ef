"""matplotlib for the charts ee writes: no warning in a job's log where the home folder cannot be written."""

from __future__ import annotations

import textwrap

from tests.unreadable import needs_held_user, open_folder, python_as_held_user

CHART = textwrap.dedent(
    """
    import os
    os.environ["HOME"] = {home!r}  # a service user's home it may not write (or none: /nonexistent)
    os.environ.pop("XDG_CONFIG_HOME", None); os.environ.pop("XDG_CACHE_HOME", None); os.environ.pop("MPLCONFIGDIR", None)
    {load}
    from matplotlib.figure import Figure
    figure = Figure()
    figure.add_subplot().plot([1, 2], [3, 4])
    figure.savefig({out!r}, format="png")
    print("written")
    """
)


@needs_held_user
def test_a_chart_drawn_where_the_home_folder_cannot_be_written_says_nothing_about_matplotlibs_config() -> None:
    """Before: each nightly run's log held matplotlib's two warnings ("... is not a writable directory ... set
    MPLCONFIGDIR") where the service user's home was read-only or missing."""
    with open_folder("ee-plots-") as folder:
        home = folder / "home"
        home.mkdir(mode=0o555)
        load = "from ee_middleware._plots import matplotlib_for_files; matplotlib_for_files()"
        code = CHART.format(home=str(home), load=load, out=str(folder / "chart.png"))
        status, output = python_as_held_user(code, folder)
        assert status == 0 and "written" in output, output
        assert "MPLCONFIGDIR" not in output and "not a writable directory" not in output, output
        plain = CHART.format(home=str(home), load="import matplotlib; matplotlib.use('Agg')", out=str(folder / "c2.png"))
        status, output = python_as_held_user(plain, folder)
        assert status == 0 and "MPLCONFIGDIR" in output, "the stand-in: matplotlib alone warns there"
