"""`ee eval run --timeout` takes a finite number of seconds > 0, as every command's --timeout does: before, inf passed
and the run failed on its first request ('timeout_s must be a finite number ...', exit 1), and 0 or a negative value
reached the client unchecked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-5"])
def test_eval_run_refuses_a_timeout_that_is_not_a_finite_positive_number_naming_the_flag(value: str) -> None:
    result = CliRunner().invoke(app, ["eval", "run", "--timeout", value])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--timeout': must be a finite number of seconds > 0" in flat, result.output


def test_eval_run_leaves_a_timeout_not_given_to_the_configuration() -> None:
    from ee_middleware.cli.common import positive_seconds

    assert positive_seconds(None) is None and positive_seconds(2.5) == 2.5
