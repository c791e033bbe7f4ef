"""Every setting of a job's TOML table is findable from its ``--help``: a flag of the same name, or named in the
command's text. ``ee train`` and ``ee replay run`` left out the settings only their table takes (lora_r, target_modules,
packing, iwm_share, top_p, max_new_tokens, ...), which a user then learnt of only from the source."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ee_middleware.cli.app import app

INTERNAL = {"attempt"}
"""Set by the job itself (ee improve, the store), not by a user."""


def _command(*names: str) -> Any:
    command: Any = typer.main.get_command(app)  # (typer's own click: not the click package's classes)
    for name in names:
        command = command.commands[name]
    return command


@pytest.mark.parametrize(
    ("names", "config"),
    [
        (("train",), "ee_middleware.trainers.training.config:TrainConfig"),
        (("replay", "run"), "ee_middleware.replay.config:ReplayConfig"),
        (("datasets", "build"), "ee_middleware.trainers.datasets.build:DatasetConfig"),
        (("eval", "run"), "ee_middleware.evals.job:EvalJob"),
        (("experience", "eval"), "ee_middleware.replay.experience_config:ExperienceEvalConfig"),
        (("experience", "dataset"), "ee_middleware.replay.experience_config:ExperienceDatasetConfig"),
    ],
)
def test_every_setting_of_the_table_is_a_flag_or_named_in_the_help(names: tuple[str, ...], config: str) -> None:
    import importlib

    module, _, attribute = config.partition(":")
    fields = set(getattr(importlib.import_module(module), attribute).model_fields) - INTERNAL
    command = _command(*names)
    flags = {param.name for param in command.params}
    shown = " ".join(CliRunner().invoke(app, [*names, "--help"], env={"COLUMNS": "300"}).output.split())
    # a flag that names the setting in its own words (--tool-timeout for tool_timeout_s, --sandbox-setting KEY=VALUE)
    named_by_flag = {field for field in fields if any(field.startswith(flag) or flag.startswith(field.rstrip("s")) for flag in flags)}
    missing = sorted(field for field in fields - flags - named_by_flag if not re.search(rf"\b{field}\b", shown))
    assert not missing, f"`ee {' '.join(names)} --help` names neither a flag nor the table's setting(s) {missing}"
