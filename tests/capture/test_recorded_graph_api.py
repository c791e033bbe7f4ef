"""The recorded agent as user code meets it: the graph's ``copy(update=...)`` and ``validate()`` give a recorded agent
(before, the bare graph: its runs were silently not recorded), ``copy.deepcopy`` gives one sharing the recorder (before,
``TypeError: cannot pickle '_thread.lock' object``), ``dir()`` lists the graph's attributes, and a misspelled keyword of
``record_experience`` is refused with the setting it is close to, also when its value is ``None`` (before, accepted
silently). Real ``create_agent`` graphs, a real local store."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage

from ee_middleware import record_experience
from ee_middleware.capture.config import CaptureConfig
from ee_middleware.capture.recorder import RecordedGraph
from ee_middleware.errors import ConfigError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel


def _graph() -> Any:
    return create_agent(ScriptedChatModel(script=[AIMessage(content="Hello.")] * 4), [])


def test_copy_and_validate_keep_recording(tmp_path: Path) -> None:
    agent = record_experience(_graph(), app="greeter", store=tmp_path)
    renamed = agent.copy(update={"name": "greeter-2"})
    assert isinstance(renamed, RecordedGraph) and renamed.recorder is agent.recorder
    assert renamed.name == "greeter-2" and agent.name != "greeter-2"
    assert agent.validate() is agent
    renamed.invoke({"messages": [("user", "Hi")]})
    agent.validate().invoke({"messages": [("user", "Hi again")]})
    assert agent.flush()
    assert sorted(LocalExperienceStore(tmp_path).trajectories()["task"].to_list()) == ["Hi", "Hi again"]


def test_deepcopy_shares_the_recorder_and_dir_lists_the_graphs_attributes(tmp_path: Path) -> None:
    agent = record_experience(_graph(), app="greeter", store=tmp_path)
    copied = copy.deepcopy(agent)
    assert isinstance(copied, RecordedGraph) and copied.recorder is agent.recorder
    assert copied.unwrap() is not agent.unwrap()
    assert {"get_state", "get_graph", "nodes", "unwrap", "recorder"} <= set(dir(agent))


@pytest.mark.parametrize(
    ("given", "meant"),
    [({"tracer_providr": None}, "tracer_provider"), ({"approv_if": bool}, "approve_if"), ({"app_verison": "1"}, "app_version")],
)
def test_a_misspelled_keyword_is_refused_with_the_setting_it_is_close_to(tmp_path: Path, given: dict, meant: str) -> None:
    [name] = given
    with pytest.raises(ConfigError, match=rf"Unknown capture setting\(s\) {name} \(did you mean {meant}\?\)"):
        record_experience(_graph(), app="greeter", store=tmp_path, **given)


def test_a_misspelled_key_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "capture.toml"
    path.write_text('[capture]\napp = "greeter"\nredaction_patern = { ticket = "TCK-\\\\d+" }\n')
    with pytest.raises(ConfigError, match=rf"redaction_patern \(in \[capture\] of {path}\) \(did you mean redaction_patterns\?\)"):
        CaptureConfig.load(path)


def test_the_keywords_type_checkers_are_told_are_every_keyword_record_experience_takes() -> None:
    """``record_experience`` was typed ``-> Any`` (sweep A 4): overloads now give a graph's caller a ``RecordedGraph`` and
    a decorated factory a factory of one (an async one a coroutine of one), and ``RecordingOptions`` lists its keywords,
    so a misspelled one is a type error. The list must stay every keyword the call takes: its own and every
    ``CaptureConfig`` setting (checked with mypy --strict on a user's file when the overloads were written)."""
    import dataclasses
    import inspect
    import typing

    from ee_middleware.capture.recorder import RecordingOptions, record_experience

    own = [name for name, p in inspect.signature(record_experience).parameters.items() if p.kind is p.KEYWORD_ONLY]
    settings = [f.name for f in dataclasses.fields(CaptureConfig)]
    assert set(RecordingOptions.__annotations__) == set(own) | set(settings)
    assert len(typing.get_overloads(record_experience)) == 4


@pytest.mark.parametrize("approve_if", ["shopapp:approve", True])
def test_an_approve_if_that_is_no_function_is_refused_when_the_recorder_is_built(tmp_path: Path, approve_if: object) -> None:
    """Before: accepted; then every run logged "'str' object is not callable" and stayed pending."""
    with pytest.raises(ConfigError, match="approve_if must be a function trajectory -> bool"):
        record_experience(_graph(), app="greeter", store=tmp_path / "s", approve_if=approve_if)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["approve_if", "tracer_provider"])
def test_a_keyword_given_in_code_only_is_told_so_when_a_config_file_sets_it(tmp_path: Path, key: str) -> None:
    """Before: "Unknown capture setting(s) approve_if (did you mean approve_if?). Known: ..., approve_if, ..."."""
    path = tmp_path / "capture.toml"
    path.write_text(f'[capture]\napp = "greeter"\n{key} = "shopapp:approve"\n')
    with pytest.raises(ConfigError) as raised:
        CaptureConfig.load(path)
    assert f"Not a capture setting: {key} (in [capture] of {path})" in str(raised.value)
    assert "did you mean" not in str(raised.value) and "Unknown" not in str(raised.value), raised.value
