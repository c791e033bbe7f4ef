"""The BFCL world: every ground-truth call of every multi-turn category runs on the real backends."""

from __future__ import annotations

import copy

import pytest

from ee_middleware.bfcl.data import MULTI_TURN_CATEGORIES, load_entries, openai_tool
from ee_middleware.bfcl.world import build_world, execute, parse_call, world_from_environment
from ee_middleware.errors import ConfigError, EnvironmentUnavailableError
from ee_middleware.records import ToolCall


@pytest.mark.parametrize("category", MULTI_TURN_CATEGORIES)
def test_every_ground_truth_call_parses_and_executes_without_error(category: str) -> None:
    entries = load_entries(category)
    assert len(entries) == 200
    calls = 0
    for entry in entries:
        world = build_world(entry.initial_config, entry.involved_classes, long_context=entry.long_context)
        for turn in entry.ground_truth:
            for expression in turn:
                observation = execute(world, parse_call(expression, world))
                assert not observation.is_error, (entry.id, expression, observation.content)
                calls += 1
    assert calls > 900


def test_positional_arguments_are_named_from_the_backend_signature() -> None:
    entry = load_entries("multi_turn_base", ids=["multi_turn_base_0"])[0]
    world = build_world(entry.initial_config, entry.involved_classes)
    assert parse_call("sort('final_report.pdf')", world) == ToolCall(id="", name="sort", arguments={"file_name": "final_report.pdf"})


@pytest.mark.parametrize("expression", ["__import__('os').system('true')", "mv(source=open('x'))", "a; b", "x.y(1)", "mv(**{'a': 1})"])
def test_call_parser_never_evaluates_code(expression: str) -> None:
    entry = load_entries("multi_turn_base", limit=1)[0]
    world = build_world(entry.initial_config, entry.involved_classes)
    with pytest.raises(ValueError):
        parse_call(expression, world)


def test_bad_calls_become_error_observations() -> None:
    entry = load_entries("multi_turn_base", limit=1)[0]
    world = build_world(entry.initial_config, entry.involved_classes)
    assert execute(world, ToolCall(id="", name="no_such_tool")).is_error
    bad = execute(world, ToolCall(id="", name="cd", arguments={"nope": 1}))
    assert bad.is_error and bad.content.startswith("Error during execution:")
    missing = execute(world, ToolCall(id="", name="cd", arguments={"folder": "does-not-exist"}))
    assert missing.is_error and "error" in missing.content


def test_deep_copy_snapshots_the_world_exactly() -> None:
    entry = load_entries("multi_turn_base", limit=1)[0]
    world = build_world(entry.initial_config, entry.involved_classes)
    snapshot = copy.deepcopy(world)
    execute(world, ToolCall(id="", name="cd", arguments={"folder": "document"}))
    execute(world, ToolCall(id="", name="mkdir", arguments={"dir_name": "temp"}))
    assert execute(world, ToolCall(id="", name="ls")).content != execute(snapshot, ToolCall(id="", name="ls")).content
    assert "temp" not in execute(snapshot, ToolCall(id="", name="ls")).content


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        (None, "no environment reference"),
        ({"kind": "sql"}, "not a BFCL environment"),
        ({"kind": "bfcl", "involved_classes": []}, "involved_classes"),
        ({"kind": "bfcl", "involved_classes": ["NoSuchAPI"]}, "NoSuchAPI"),
        ({"kind": "bfcl", "involved_classes": ["GorillaFileSystem"], "initial_config": "x"}, "not an object"),
    ],
)
def test_unrebuildable_environments_name_the_problem(environment: dict | None, message: str) -> None:
    with pytest.raises(EnvironmentUnavailableError, match=message):
        world_from_environment(environment)


def test_tool_schemas_are_standard_json_schema() -> None:
    entry = load_entries("multi_turn_miss_func", limit=1)[0]
    names_at = [{t["function"]["name"] for t in entry.tools_at_turn(turn)} for turn in range(len(entry.turns))]
    held_out = entry.missed_functions
    turn, functions = next(iter(held_out.items()))
    assert not set(functions) & names_at[turn - 1] and set(functions) <= names_at[turn]
    assert not set(entry.excluded_functions) & names_at[-1]
    schema = openai_tool({"name": "f", "parameters": {"type": "dict", "properties": {"x": {"type": "float"}, "y": {"type": "any"}}}})
    assert schema["function"]["parameters"] == {"type": "object", "properties": {"x": {"type": "number"}, "y": {}}}


def test_unknown_category_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="multi_turn_base"):
        load_entries("multi_turn_nope")


def test_mutable_default_arguments_do_not_carry_state_between_worlds() -> None:
    # TwitterAPI.post_tweet(..., mentions=[]) stores its default list in the world; `mention`
    # then appends to it. Found by the replay's fidelity check on the 200-entry benchmark.
    config = {"TwitterAPI": {"username": "ann", "password": "pw", "authenticated": True, "tweets": {}, "tweet_counter": 0}}
    first = build_world(config, ["TwitterAPI"])
    execute(first, ToolCall(id="", name="post_tweet", arguments={"content": "hi"}))
    execute(first, ToolCall(id="", name="mention", arguments={"tweet_id": 0, "mentioned_usernames": ["bob"]}))
    second = build_world(config, ["TwitterAPI"])
    posted = execute(second, ToolCall(id="", name="post_tweet", arguments={"content": "hello"}))
    assert '"mentions": []' in posted.content, posted.content


def test_the_world_never_shares_lists_with_the_call_record() -> None:
    config = {"TwitterAPI": {"username": "ann", "password": "pw", "authenticated": True, "tweets": {}, "tweet_counter": 0}}
    world = build_world(config, ["TwitterAPI"])
    call = ToolCall(id="", name="post_tweet", arguments={"content": "hi", "mentions": ["@a"]})
    execute(world, call)
    execute(world, ToolCall(id="", name="mention", arguments={"tweet_id": 0, "mentioned_usernames": ["bob"]}))
    assert call.arguments["mentions"] == ["@a"]


def test_math_precision_set_by_one_call_does_not_leak_into_the_next() -> None:
    import mpmath

    world = build_world({}, ["MathAPI"])
    before = mpmath.mp.dps
    execute(world, ToolCall(id="", name="logarithm", arguments={"value": 8.0, "base": 2.0, "precision": 60}))
    assert mpmath.mp.dps == before


_INVALID_CLASS_SCRIPT = """
import json
from ee_middleware.bfcl.world import build_world, execute
from ee_middleware.records import ToolCall
world = build_world(
    {"TravelAPI": {"access_token": "tok", "token_expires_in": 3, "credit_card_list": {"card_1": {"balance": 900.0}}}},
    ["TravelAPI"],
)
arguments = {"access_token": "tok", "card_id": "card_1", "travel_date": "2026-12-01", "travel_from": "SFO",
             "travel_to": "LAX", "travel_class": "steerage"}
print(json.dumps(execute(world, ToolCall(id="", name="book_flight", arguments=arguments)).content))
"""


def test_observations_are_the_same_text_in_every_process_whatever_its_hash_seed() -> None:
    # bfcl-eval formats a Python set into TravelAPI's error; its order follows PYTHONHASHSEED.
    import json
    import os
    import subprocess
    import sys

    texts = set()
    for seed in range(6):
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        out = subprocess.run([sys.executable, "-c", _INVALID_CLASS_SCRIPT], env=env, capture_output=True, text=True, check=True)
        texts.add(json.loads(out.stdout.strip().splitlines()[-1]))
    assert len(texts) == 1, texts
    assert "{'business', 'economy', 'first'}" in texts.pop()


def test_a_call_of_strings_and_numbers_gets_its_own_arguments_without_a_deep_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # copy.deepcopy took about 10 us of every replayed call (its memo and dispatch per value), for arguments that are
    # almost always strings and numbers: a new dict holds the same objects deepcopy would give.
    import ee_middleware.bfcl.world as world_module

    config = {"TwitterAPI": {"username": "ann", "password": "pw", "authenticated": True, "tweets": {}, "tweet_counter": 0}}
    world = build_world(config, ["TwitterAPI"])
    deep_copies = []
    deepcopy = world_module.copy.deepcopy
    monkeypatch.setattr(world_module.copy, "deepcopy", lambda value, *args: (deep_copies.append(value), deepcopy(value, *args))[1])
    call = ToolCall(id="", name="post_tweet", arguments={"content": "hi", "tags": ["#a"]})
    plain = ToolCall(id="", name="retweet", arguments={"tweet_id": 0})
    assert '"tags": ["#a"]' in execute(world, call).content
    assert deep_copies[0] is call.arguments  # a list inside: copied deeply
    deep_copies.clear()
    assert execute(world, plain).content == '{"retweet_status": "Successfully retweeted"}'
    assert deep_copies == []
    assert plain.arguments == {"tweet_id": 0}
    # plain values still get a dict of their own: post_tweet's defaults (tags, mentions) must not land in the call
    only_text = ToolCall(id="", name="post_tweet", arguments={"content": "hi"})
    assert '"content": "hi"' in execute(world, only_text).content
    assert only_text.arguments == {"content": "hi"}
