"""A misspelt ``[improve]`` table (``[improv]``, ``[Improve]``) holding every required key is named as the near miss it
is, not answered with "set them in the [improve] table"."""

from __future__ import annotations

from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig


@pytest.mark.parametrize("table", ["improv", "Improve"])
def test_a_misspelt_improve_table_is_named_before_its_keys_are_called_missing(tmp_path: Path, table: str) -> None:
    """Was: "The improve job needs store, app, registry, runs, base_model: set them in the [improve] table of --config
    FILE", which the user had done (under the misspelt name): its [improve.budgets] made an [improve] table, so the
    file's reader did not say "has no [improve] table but has [improv]", and the near-miss check came only after the
    keys were found."""
    path = tmp_path / "improve.toml"
    path.write_text(
        f'[{table}]\nstore = "s"\napp = "a"\nregistry = "r"\nruns = "runs"\nbase_model = "m"\n\n[improve.budgets]\nmax_train_steps = 1\n\n[replay]\nk = 2\n'
    )
    with pytest.raises(ConfigError) as raised:
        ImproveConfig.load(path)
    error = str(raised.value)
    assert f"has a table [{table}]: did you mean [improve]? (rename the line [{table}] to [improve])" in error, error
    assert "set them in the [improve] table" not in error


def test_a_table_of_another_tool_does_not_stop_loading(tmp_path: Path) -> None:
    """The near-miss check that load now runs first refuses only near misses: [notify] (another tool's) still loads."""
    path = tmp_path / "improve.toml"
    path.write_text('[improve]\nstore = "s"\napp = "a"\nregistry = "r"\nruns = "runs"\nbase_model = "m"\n\n[notify]\nto = "x"\n')
    assert ImproveConfig.load(path).app == "a"
