"""The build's privacy guard redacts each distinct message of the prompts once (trainers.datasets.privacy.redact_prompts).

A row's prompt is its state, the whole conversation before its step: redacted whole, a trajectory of n steps had its
first message scanned n times, once per row (a build of one run of 50 steps with 100 KB tool results spent 138 of its
140 s there). The prompts come out byte for byte as redacting each whole gives them: on the seeded corpus of planted
secrets (real ``create_agent`` runs recorded without redaction into a real store, then guarded with the rules a store
gets later), and on a real ReAct run of long tool results built through ``ee datasets build``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.redaction import RedactionRules, Redactor
from ee_middleware.trainers.datasets.privacy import _redact, redact_prompts
from tests.capture import redaction_corpus
from tests.capture.redaction_capture import redact_value_calls


@pytest.fixture(scope="module")
def raw_states(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every stored state of the planted and the clean corpus, recorded with redaction off (the raw values stored)."""
    workdir = tmp_path_factory.mktemp("corpus")
    stores: list[Path] = []

    class Kept:  # the corpus's stores, kept past its run
        def __init__(self, dir: Any = None) -> None:
            self.name = str(workdir)

        def __enter__(self) -> str:
            return self.name

        def __exit__(self, *exc: object) -> None:
            stores.extend([workdir / "planted", workdir / "clean"])

    real = redaction_corpus.tempfile.TemporaryDirectory
    redaction_corpus.tempfile.TemporaryDirectory = Kept  # type: ignore[assignment,misc]
    try:
        redaction_corpus.run_corpus(7, capture_settings={"redact": False})
    finally:
        redaction_corpus.tempfile.TemporaryDirectory = real  # type: ignore[misc]
    states: list[str] = []
    for path in stores:
        store = LocalExperienceStore(path, create=False)
        states += [s for s in store.steps()["state_json"].to_list() if s]
        store.close()
    return states


@pytest.mark.parametrize(
    "redactor",
    [
        Redactor(salt=b"a store's salt!!"),
        Redactor(),
        Redactor(RedactionRules(kinds={"ip_address": True, "phone": False}), salt=b"another salt...."),
    ],
    ids=["pseudonyms", "plain", "other-kinds"],
)
def test_prompts_come_out_as_redacting_each_whole_gives_them(raw_states: list[str], redactor: Redactor) -> None:
    whole = [_redact(redactor, state) for state in raw_states]
    assert sum(a != b for a, b in zip(whole, raw_states, strict=True)) >= 20  # the planted secrets are there to redact
    assert redact_prompts(redactor, raw_states) == whole
    with_action = [state[:-1] + ',{"role":"user","content":"What does the tool answer?"}]' for state in raw_states]
    assert redact_prompts(redactor, with_action) == [_redact(redactor, p) for p in with_action]  # IWM's prompt form


def test_patterns_of_the_stores_own_and_other_layouts_are_redacted_whole(raw_states: list[str]) -> None:
    patterned = Redactor(RedactionRules(patterns={"order": r"ORD-\d+", "across": r'"\},\{"role'}), salt=b"a store's salt!!")
    assert redact_prompts(patterned, raw_states) == [_redact(patterned, state) for state in raw_states]
    redactor = Redactor(salt=b"a store's salt!!")
    spaced = [json.dumps(json.loads(state), indent=2) for state in raw_states[:20]]
    assert redact_prompts(redactor, [*spaced, "not json", None, ""]) == [*[_redact(redactor, p) for p in spaced], "not json", None, ""]


def test_each_message_of_a_long_run_is_redacted_once(tmp_path: Path) -> None:
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    from ee_middleware.scripted import ScriptedChatModel, tool_call

    @tool
    def fetch(page: int) -> str:
        """A page of the manual."""
        return f"page {page}: " + "lorem ipsum dolor " * 200 + ("call +1 415 555 0134" if page == 3 else "")

    script = [AIMessage(content="", tool_calls=[tool_call("fetch", page=i)]) for i in range(12)] + [AIMessage(content="read")]
    agent = record_experience(create_react_agent(ScriptedChatModel(script=script), [fetch]), app="long", store=tmp_path / "s", redact=False)
    agent.invoke({"messages": [("user", "read the manual")]})
    assert agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "s", create=False)
    states = [s for s in store.steps()["state_json"].to_list() if s]
    store.close()
    assert len(states) == 13
    redactor = Redactor(salt=b"a store's salt!!")
    with redact_value_calls() as given:
        redacted = redact_prompts(redactor, states)
    assert redacted == [_redact(redactor, s) for s in states]
    assert "+1 415 555 0134" not in "".join(redacted[5:]) and "[REDACTED:phone:" in redacted[-1]
    assert not {v for v in given if isinstance(v, str)} & set(states), "no prompt is scanned whole"
    walked = [json.dumps(v) for v in given if isinstance(v, dict) and "role" in v]  # (not the walk's calls below a message)
    assert len(walked) == len(set(walked)) == len(json.loads(states[-1]))  # each message of the run once


@pytest.mark.parametrize(
    "arguments",
    [{"password": "Tr0ub4dor&3\n"}, {"api_key": "abc\ndef"}, {"token": "\\"}, {"client_secret": '"'}, {"pin": '{"key": "x"}'}],
    ids=["line-break", "inner-line-break", "backslash", "quote", "json-text"],
)
def test_a_secret_the_text_scan_misses_is_redacted_in_every_row(arguments: dict[str, str]) -> None:
    """(review) Values below secret names that the scan of JSON text passes over (a line break, a lone backslash or
    quote, JSON text) while the walk of the data replaces them: in every row, whichever other message the prompt holds
    (redacted whole, a prompt with nothing else to redact was left as it was)."""
    call = {"id": "c1", "type": "function", "function": {"name": "login", "arguments": arguments}}
    conversation = [
        {"role": "user", "content": "log me in"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
        {"role": "user", "content": "now write to dana@example.org"},
    ]
    prompts = [json.dumps(conversation[:n], ensure_ascii=False, separators=(",", ":")) for n in (2, 3, 4)]
    redactor = Redactor(salt=b"a store's salt!!")
    for prompt in redact_prompts(redactor, prompts):
        assert prompt is not None
        [value] = json.loads(prompt)[1]["tool_calls"][0]["function"]["arguments"].values()
        assert value.startswith("[REDACTED:secret:") and value.endswith("]"), prompt
