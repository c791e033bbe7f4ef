"""``ee replay run`` whose experience model gave no usable observation says what to do as the reasons say.

Answers cut off at max_tokens need more tokens, not another model: the error used to append "after fixing the model
behind the same spec, replay them with --again" whatever the reason, which sent a user whose model was fine to replace
it (and --again with the same max_tokens cuts the answers off again). Answers cut off before they began the JSON
object asked for (prose, which runs to any max_tokens) need the model's JSON shape too. The experience model is a scripted one behind a
real local HTTP server (the test names say so) that answers as a served model does: ``finish_reason`` ``"length"``
when the request's max_tokens is too small for a whole prediction. The store holds real BFCL expert trajectories.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.replay.sandboxes.experience import CUT_BEFORE_JSON
from ee_middleware.testing.http import serving
from tests.replay.test_experience import Reply, chat_handler, copy_first_example

ROOM = 200
"""The max_tokens a whole prediction needs from the scripted model."""


@pytest.fixture
def served() -> Iterator[Callable[[Reply], str]]:
    """Start a scripted experience model behind a real local HTTP server; its ``openai:`` spec."""
    with ExitStack() as servers:

        def start(reply: Reply) -> str:
            url = servers.enter_context(serving(ThreadingHTTPServer(("127.0.0.1", 0), chat_handler(reply))))
            return f"openai:{url}#em"

        yield start


def needs_room(body: dict[str, Any]) -> tuple[str, str]:
    """A good model that needs :data:`ROOM` tokens: below that its prediction stops half-way."""
    whole = copy_first_example(body["messages"])
    if int(body.get("max_tokens") or 0) < ROOM:
        return whole[: len(whole) // 2], "length"
    return whole, "stop"


def prose(body: dict[str, Any]) -> tuple[str, str]:
    """A model that answers prose, whatever its room."""
    return "The tool probably works.", "stop"


def _replay(store: Path, tmp_path: Path, spec: str, *flags: str, max_tokens: int) -> Any:
    config = tmp_path / "replay.toml"
    config.write_text(
        f'[replay]\nstore = "{store}"\nsandbox = "experience:{spec}"\nk = 2\n\n[replay.sandbox_settings]\nmax_tokens = {max_tokens}\n'
    )
    flags = ("--limit", "1", "--no-progress", *flags)
    return CliRunner().invoke(app, ["replay", "run", "--config", str(config), *flags])


def _error(result: Any) -> str:
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return error


def test_answers_cut_off_at_max_tokens_get_the_max_tokens_advice_only_fake_server(
    bfcl_store_path: Path, tmp_path: Path, served: Callable[[Reply], str]
) -> None:
    spec = served(needs_room)
    cut = _replay(bfcl_store_path, tmp_path, spec, max_tokens=16)
    assert cut.exit_code == 1, cut.output
    error = _error(cut)
    assert "Every answer was cut off at max_tokens before a whole observation: raise max_tokens" in error, error
    assert "`max_tokens` in [replay.sandbox_settings]" in error and "run the same command again" in error, error
    assert "fixing the model" not in error and "untrained base model" not in error and "--again" not in error, error

    # What it says is so: with room, the same command (no --again) replays the trajectory as a new configuration.
    roomy = _replay(bfcl_store_path, tmp_path, spec, "--json", max_tokens=ROOM)
    assert roomy.exit_code == 0, roomy.output
    summary = json.loads(roomy.stdout)
    assert summary["selected"] == 1 and summary["synthetic_branches"] > 0 and summary["synthetic_failures"] == {}


def test_other_unusable_answers_keep_the_model_advice_fake_server(
    bfcl_store_path: Path, tmp_path: Path, served: Callable[[Reply], str]
) -> None:
    result = _replay(bfcl_store_path, tmp_path, served(prose), max_tokens=ROOM)
    assert result.exit_code == 1, result.output
    error = _error(result)
    assert "It must answer one JSON object with an 'observation' field" in error, error
    assert "after fixing the model behind the same spec, replay them with --again." in error, error
    assert "raise max_tokens" not in error and "cut off" not in error, error


def test_some_answers_cut_off_and_some_prose_get_both_advices_with_their_counts_fake_server(
    bfcl_store_path: Path, tmp_path: Path, served: Callable[[Reply], str]
) -> None:
    asked: list[int] = []

    def every_other_is_prose(body: dict[str, Any]) -> tuple[str, str]:
        asked.append(len(asked))
        return prose(body) if len(asked) % 2 else needs_room(body)

    result = _replay(bfcl_store_path, tmp_path, served(every_other_is_prose), "--json", max_tokens=16)
    assert result.exit_code == 1, result.output
    failures = json.loads(result.stdout)["synthetic_failures"]
    cut = sum(count for reason, count in failures.items() if reason.startswith("the answer was cut off at max_tokens"))
    total = sum(failures.values())
    assert 0 < cut < total == len(asked), failures
    error = _error(result)
    assert f"{cut} of the answers were cut off at max_tokens: raise max_tokens" in error, error
    assert f"The other {total - cut} were unusable for another reason: it must answer one JSON object" in error, error
    assert "after fixing the model behind the same spec, replay them with --again." in error, error


def test_answers_cut_off_while_still_reasoning_get_the_max_tokens_advice_only_fake_server(
    bfcl_store_path: Path, tmp_path: Path, served: Callable[[Reply], str]
) -> None:
    def thinks_past_its_room(body: dict[str, Any]) -> tuple[str, str]:
        return "<think>The call lists the folder, so the observation is", "length"

    result = _replay(bfcl_store_path, tmp_path, served(thinks_past_its_room), "--json", max_tokens=16)
    assert result.exit_code == 1, result.output
    [reason] = json.loads(result.stdout)["synthetic_failures"]
    assert reason == "the answer was cut off at max_tokens while still reasoning: raise max_tokens (now 16)", reason
    error = _error(result)
    assert "Every answer was cut off at max_tokens before a whole observation: raise max_tokens" in error, error
    assert "fixing the model" not in error and "--again" not in error, error


def test_prose_cut_off_at_max_tokens_gets_the_json_shape_advice_too_fake_server(
    bfcl_store_path: Path, tmp_path: Path, served: Callable[[Reply], str]
) -> None:
    # An untrained model's usual answer: prose that runs to whatever max_tokens it is given.
    def rambles(body: dict[str, Any]) -> tuple[str, str]:
        return "Sure! When the agent runs this call, the tool would typically return the files that are there, such as", "length"

    spec = served(rambles)
    for max_tokens in (16, ROOM):  # more tokens alone only give the same error again
        result = _replay(bfcl_store_path, tmp_path, spec, "--json", max_tokens=max_tokens)
        assert result.exit_code == 1, result.output
        [reason] = json.loads(result.stdout)["synthetic_failures"]
        assert reason.startswith(f"{CUT_BEFORE_JSON} (finish_reason 'length'; raise max_tokens, now {max_tokens}"), reason
        error = _error(result)
        assert "Every answer was cut off at max_tokens before a whole observation: raise max_tokens" in error, error
        assert "But none of them had begun the JSON object asked for: the model may not be answering in the required JSON shape" in error
        assert "It must answer one JSON object with an 'observation' field" in error, error
        assert "after fixing the model behind the same spec, replay them with --again." in error, error


@pytest.mark.parametrize(
    "opener", ["", "  \n", "```json\n", "<think>It lists the folder.</think>\n"], ids=["plain", "whitespace", "fence", "reasoning"]
)
def test_answers_cut_off_on_their_way_to_the_json_object_get_the_max_tokens_advice_only_fake_server(
    bfcl_store_path: Path, tmp_path: Path, served: Callable[[Reply], str], opener: str
) -> None:
    def opens_then_needs_room(body: dict[str, Any]) -> tuple[str, str]:
        content, finish_reason = needs_room(body)
        return opener + content, finish_reason

    result = _replay(bfcl_store_path, tmp_path, served(opens_then_needs_room), "--json", max_tokens=16)
    assert result.exit_code == 1, result.output
    [reason] = json.loads(result.stdout)["synthetic_failures"]
    assert reason.startswith("the answer was cut off at max_tokens (finish_reason 'length'"), reason
    error = _error(result)
    assert "Every answer was cut off at max_tokens before a whole observation: raise max_tokens" in error, error
    assert "JSON shape" not in error and "fixing the model" not in error and "--again" not in error, error


def test_some_answers_cut_off_as_prose_and_some_on_their_way_get_both_advices_with_their_counts_fake_server(
    bfcl_store_path: Path, tmp_path: Path, served: Callable[[Reply], str]
) -> None:
    asked: list[int] = []

    def every_other_rambles(body: dict[str, Any]) -> tuple[str, str]:
        asked.append(len(asked))
        return ("The tool would probably list the files, such as", "length") if len(asked) % 2 else needs_room(body)

    result = _replay(bfcl_store_path, tmp_path, served(every_other_rambles), "--json", max_tokens=16)
    assert result.exit_code == 1, result.output
    failures = json.loads(result.stdout)["synthetic_failures"]
    prose = sum(count for reason, count in failures.items() if reason.startswith(CUT_BEFORE_JSON))
    assert 0 < prose < sum(failures.values()) == len(asked), failures
    error = _error(result)
    assert "Every answer was cut off at max_tokens before a whole observation: raise max_tokens" in error, error
    assert f"But {prose} of them had not begun the JSON object asked for: the model may not be answering" in error, error
    assert "after fixing the model behind the same spec, replay them with --again." in error, error
