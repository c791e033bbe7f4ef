"""The one truncation policy, with a real (test-trained BPE) tokenizer: what a long state keeps and loses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.models.chat_template import COMPACT_TOOLS_PREAMBLE, probe_template, render_prompt
from ee_middleware.models.truncation import OMITTED_MARKER, count_tokens, current_request_turn, fit_messages, split_turns

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from ee_middleware.testing.tiny_models import build_test_tokenizer, save_tiny_llama

PLAIN_TEMPLATE = """{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"{name} does something useful with the file system, described at length. " * 3,
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "recursive": {"type": "boolean"}, "depth": {"type": "integer"}},
                "required": ["path"],
            },
        },
    }
    for name in ("ls", "cd", "cat", "grep", "mv")
]
SYSTEM = {"role": "system", "content": "You are a careful file-system assistant."}
TASK = {"role": "user", "content": "Move every report into the archive folder."}


def call(i: int) -> dict[str, Any]:
    return {"id": f"c{i}", "type": "function", "function": {"name": "ls", "arguments": json.dumps({"path": f"folder_{i}"})}}


def long_state(turns: int) -> list[dict[str, Any]]:
    messages = [SYSTEM, TASK]
    for i in range(turns):
        messages.append({"role": "assistant", "content": "", "tool_calls": [call(i)]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"report_{i}.pdf notes_{i}.txt " * 6})
        if i % 3 == 2:
            messages.append({"role": "user", "content": f"Now the next folder, number {i + 1}."})
    return messages


@pytest.fixture(scope="module", params=["tools-template", "plain-template"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    corpus = ["report notes folder archive move every file system assistant", json.dumps(TOOLS), json.dumps(long_state(3))]
    if request.param == "plain-template":
        return build_test_tokenizer(corpus, chat_template=PLAIN_TEMPLATE)
    return build_test_tokenizer(corpus)


def test_a_state_that_fits_is_untouched(tokenizer: Any) -> None:
    support = probe_template(tokenizer)
    state = long_state(2)
    fit = fit_messages(tokenizer, state, TOOLS, support, budget=100_000)
    assert fit.messages == state and fit.tools == TOOLS and not fit.changed
    assert fit.text == render_prompt(tokenizer, state, TOOLS, support) and fit.tokens == fit.original_tokens


def test_a_long_state_keeps_system_tools_task_and_latest_turns_and_drops_whole_middle_turns(tokenizer: Any) -> None:
    support = probe_template(tokenizer)
    state = long_state(30)
    full = count_tokens(tokenizer, render_prompt(tokenizer, state, TOOLS, support))
    budget = full // 3
    fit = fit_messages(tokenizer, state, TOOLS, support, budget)
    assert fit.tokens <= budget < fit.original_tokens == full
    assert fit.dropped_messages > 0 and not fit.compact_tools
    assert fit.messages[0] == SYSTEM and fit.tools == TOOLS
    assert all(f'"{tool["function"]["name"]}"' in fit.text for tool in TOOLS), "every tool schema is still rendered"
    assert fit.messages[1]["content"].startswith(TASK["content"]) and OMITTED_MARKER.format(n=fit.dropped_messages) in fit.text
    assert fit.messages[-1] == state[-1] and fit.messages[-2] == state[-2], "the latest turn is kept whole"
    kept_ids = [m.get("tool_call_id") for m in fit.messages if m.get("role") == "tool"]
    called_ids = [c["id"] for m in fit.messages for c in m.get("tool_calls") or []]
    assert kept_ids == called_ids, "no tool result without its call, no call without its result"
    assert len(fit.messages) - 2 + fit.dropped_messages == len(state) - 2
    one_less = fit_messages(tokenizer, state, TOOLS, support, budget=fit.tokens - 1)
    assert one_less.dropped_messages > fit.dropped_messages, "the fewest turns are dropped that fit the budget"


@pytest.mark.parametrize("opening", ["greeting-then-task", "no-user-message"])
def test_a_state_that_opens_with_neither_system_nor_user_message_still_says_what_was_dropped(tokenizer: Any, opening: str) -> None:
    """A graph that greets before the task (or a state of calls alone) has no head to carry the marker: the first message
    kept carries it, at its start, and the markers add up to the messages dropped."""
    import re

    support = probe_template(tokenizer)
    greeting = {"role": "assistant", "content": "Hi! How can I help?"}
    body = long_state(30)[2:]  # the calls and results, no system message, no task
    state = [greeting, TASK, *body] if opening == "greeting-then-task" else [greeting, *body]
    full = count_tokens(tokenizer, render_prompt(tokenizer, state, TOOLS, support))
    fit = fit_messages(tokenizer, state, TOOLS, support, full // 3)
    assert fit.tokens <= full // 3 and fit.dropped_messages > 0
    said = sum(int(n) for n in re.findall(r"\[(\d+) earlier messages omitted to fit the context\]", fit.text))
    assert said == fit.dropped_messages, (said, fit.dropped_messages)
    assert len(fit.messages) + fit.dropped_messages == len(state)
    kept_ids = [m.get("tool_call_id") for m in fit.messages if m.get("role") == "tool"]
    assert kept_ids == [c["id"] for m in fit.messages for c in m.get("tool_calls") or []]
    if opening == "greeting-then-task":
        assert TASK["content"] in fit.text, "the task (the first user message) is kept"


def test_words_before_the_task_give_way_before_the_system_message_is_cut(tokenizer: Any) -> None:
    """An assistant's words before the task stay with it, unless they alone keep the prompt too long: then they are
    dropped (and said), not the system message and tools cut from the left."""
    import re

    support = probe_template(tokenizer)
    status = [{"role": "assistant", "content": f"Status update {i}: still indexing the archive folder and its reports."} for i in range(20)]
    state = [SYSTEM, *status, TASK]
    without = count_tokens(tokenizer, render_prompt(tokenizer, [SYSTEM, TASK], TOOLS, support))
    budget = without + 80  # the task and the marker saying what went (the test tokenizer spends many tokens on it)
    fit = fit_messages(tokenizer, state, TOOLS, support, budget)
    assert fit.tokens <= budget < fit.original_tokens and fit.dropped_messages == 20 and not fit.compact_tools
    assert fit.messages[0] == SYSTEM and fit.tools == TOOLS and fit.messages[-1]["content"].startswith(TASK["content"])
    assert [int(n) for n in re.findall(r"\[(\d+) earlier messages omitted", fit.text)] == [20]
    roomy = fit_messages(tokenizer, [SYSTEM, status[0], TASK, *long_state(30)[2:]], TOOLS, support, without + 400)
    assert status[0] in roomy.messages and roomy.dropped_messages > 0, "a greeting that fits stays with the task"


def test_shortening_a_message_keeps_the_markers_of_what_was_dropped(tokenizer: Any) -> None:
    """Step 5 cuts the middle of the longest message; the marker of dropped messages at its end (the task's, after a
    greeting or older turns went) or joined into it stays whole, so the markers still add up to what was dropped
    (was: cut out with the message's middle, 1 dropped and none said)."""
    import re

    support = probe_template(tokenizer)
    greeting = {"role": "assistant", "content": "Status update: still indexing the archive folder and its reports. " * 10}
    task = {"role": "user", "content": TASK["content"] + " notes report folder" * 400}
    states = [[SYSTEM, greeting, task], [SYSTEM, task, *long_state(4)[2:]], [SYSTEM, greeting, task, *long_state(7)[2:]]]
    shortened = 0
    for state in states:
        full = count_tokens(tokenizer, render_prompt(tokenizer, state, TOOLS, support))
        for budget in range(full // 12, full, max(1, full // 40)):
            fit = fit_messages(tokenizer, state, TOOLS, support, budget)
            said = sum(int(n) for n in re.findall(r"\[(\d+) earlier messages omitted to fit the context\]", fit.text))
            assert said == fit.dropped_messages, (budget, said, fit.describe())
            shortened += fit.shortened_messages > 0 and fit.dropped_messages > 0
    assert shortened, "some fits both dropped and shortened messages"


def test_when_turns_are_not_enough_tools_are_listed_compactly(tokenizer: Any) -> None:
    support = probe_template(tokenizer)
    state = long_state(6)
    head, turns = split_turns(state)
    only_last = head + turns[-1]
    smallest_full = count_tokens(tokenizer, render_prompt(tokenizer, only_last, TOOLS, support))
    fit = fit_messages(tokenizer, state, TOOLS, support, budget=smallest_full - 1)
    assert fit.compact_tools and fit.tools is None and fit.tokens <= smallest_full - 1
    assert COMPACT_TOOLS_PREAMBLE in fit.text and "mv(path: string, recursive?: boolean, depth?: integer)" in fit.text
    assert TASK["content"] in fit.text and SYSTEM["content"] in fit.text


def test_when_nothing_fits_the_best_effort_exceeds_the_budget_for_the_caller_to_cut(tokenizer: Any) -> None:
    fit = fit_messages(tokenizer, long_state(4), TOOLS, probe_template(tokenizer), budget=5)
    assert fit.tokens > 5 and fit.changed


def test_split_turns_groups_tool_results_with_their_call() -> None:
    head, turns = split_turns(long_state(3))
    assert head == [SYSTEM, TASK]
    assert [[m["role"] for m in turn] for turn in turns] == [["assistant", "tool"], ["assistant", "tool"], ["assistant", "tool"], ["user"]]
    assert split_turns([{"role": "assistant", "content": "hi"}]) == ([], [[{"role": "assistant", "content": "hi"}]])


def test_trainer_and_local_generator_render_the_same_truncated_prompt(tokenizer: Any, tmp_path: Path) -> None:
    """Byte-identical after truncation: the generator's prompt ids for a state equal the trainer's for a row with that state."""
    from ee_middleware.models.local import LocalGenerator
    from ee_middleware.trainers.training.data import ChatRow
    from ee_middleware.trainers.training.render import render_texts, tokenize_rows

    positions, new_tokens = 1024, 64
    generator = LocalGenerator(save_tiny_llama(tmp_path / "model", tokenizer, max_positions=positions))
    state = long_state(20)
    completion = [{"role": "assistant", "content": "", "tool_calls": [call(99)]}]
    support = probe_template(tokenizer)
    row = ChatRow("row-1", "il", state, completion, TOOLS)
    completion_tokens = count_tokens(tokenizer, render_texts(tokenizer, row, support)[1])
    [example], stats = tokenize_rows(tokenizer, [row], positions - new_tokens + completion_tokens, support)
    generator_ids, _ = generator.prompt_ids(state, TOOLS, max_new_tokens=new_tokens)
    trainer_prompt_ids = [i for i, label in zip(example.input_ids, example.labels, strict=True) if label == -100]
    assert generator_ids[0].tolist() == trainer_prompt_ids
    assert stats.truncated == 1 and stats.middle_dropped == 1 and stats.left_cut == 0
    [cut] = stats.cuts
    assert cut["id"] == "row-1" and cut["dropped_messages"] > 0 and cut["tokens"] <= positions - new_tokens


def test_an_iwm_state_keeps_the_call_its_question_asks_about(tokenizer: Any) -> None:
    """An IWM prompt ends with the call to predict and the question about it ("Predict exactly what the tool call above
    returns."): fitting it drops older turns, never the call (the target is that call's observation)."""
    from ee_middleware.trainers.datasets.rows import IWM_INSTRUCTION

    support = probe_template(tokenizer)
    asked = {"role": "assistant", "content": "", "tool_calls": [call(77)]}
    state = [*long_state(6), asked, {"role": "user", "content": IWM_INSTRUCTION}]
    _head, turns = split_turns(state)
    assert turns[-1] == state[-2:], "the call and the question about it are one turn"
    marked_task = {**TASK, "content": TASK["content"] + "\n\n" + OMITTED_MARKER.format(n=len(state) - 4)}
    question_only = count_tokens(tokenizer, render_prompt(tokenizer, [SYSTEM, marked_task, state[-1]], TOOLS, support))
    fit = fit_messages(tokenizer, state, TOOLS, support, budget=question_only + 2)  # room for the question, not the call
    assert fit.dropped_messages > 0 and fit.messages[-2:] == state[-2:]
    assert "folder_77" in fit.text and IWM_INSTRUCTION in fit.text


REQUEST = {"role": "user", "content": "Now list what is left in every archive folder, folder by folder."}
"""A thread's later request: the run acting on it sees the thread's first request (TASK) first."""


def thread_state(before: int, after: int, *, task: dict[str, Any] = TASK) -> list[dict[str, Any]]:
    """A thread's later run: the first request and ``before`` tool turns answering it, the assistant's answer, then the
    request this run acts on and ``after`` tool turns for it."""
    messages = [SYSTEM, task]
    for i in range(before):
        messages.append({"role": "assistant", "content": "", "tool_calls": [call(i)]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"report_{i}.pdf notes_{i}.txt " * 6})
    messages.append({"role": "assistant", "content": "Every report is in the archive folder now."})
    messages.append(REQUEST)
    for i in range(100, 100 + after):
        messages.append({"role": "assistant", "content": "", "tool_calls": [call(i)]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"archive_{i}.pdf notes_{i}.txt " * 6})
    return messages


def _user_texts(fit: Any) -> list[str]:
    return [m["content"] for m in fit.messages if m.get("role") == "user"]


def test_a_later_request_of_a_thread_is_kept_when_turns_after_it_are_dropped(tokenizer: Any) -> None:
    """A thread's later run acts on its latest request, not the thread's first one. Fitting dropped the oldest turns
    after the first user message, so once the budget reached past the turns between the two requests, the request the
    run was acting on went and the model was trained (and served) to act on the earlier request only."""
    support = probe_template(tokenizer)
    state = thread_state(before=6, after=12)
    request_at = state.index(REQUEST)
    # room for the first request, the current one and about half of the turns after it
    smallest = [SYSTEM, TASK, REQUEST, *state[-2:]]
    half = [SYSTEM, TASK, REQUEST, *state[request_at + 1 + 12 :]]
    budget = (
        count_tokens(tokenizer, render_prompt(tokenizer, smallest, TOOLS, support))
        + count_tokens(tokenizer, render_prompt(tokenizer, half, TOOLS, support))
    ) // 2
    fit = fit_messages(tokenizer, state, TOOLS, support, budget)
    assert fit.tokens <= budget and not fit.compact_tools and fit.tools == TOOLS
    before, after = request_at - 2, fit.dropped_messages - (request_at - 2)
    assert after > 0, "the budget reaches past the turns between the two requests"
    [user] = _user_texts(fit)  # one user turn: strict-alternation templates never see two in a row
    marked_request = f"{REQUEST['content']}\n\n{OMITTED_MARKER.format(n=after)}"
    assert user == f"{TASK['content']}\n\n{OMITTED_MARKER.format(n=before)}\n\n{marked_request}"
    assert REQUEST["content"] in fit.text and TASK["content"] in fit.text
    assert fit.messages[-2:] == state[-2:], "the latest turn is kept whole"
    assert fit.messages[2:] == state[request_at + 1 + after :], "the turns after the request go oldest first"
    kept_ids = [m.get("tool_call_id") for m in fit.messages if m.get("role") == "tool"]
    assert kept_ids == [c["id"] for m in fit.messages for c in m.get("tool_calls") or []]
    one_less = fit_messages(tokenizer, state, TOOLS, support, budget=fit.tokens - 1)
    assert one_less.dropped_messages > fit.dropped_messages and REQUEST["content"] in one_less.text


def test_a_fit_that_keeps_the_later_request_is_the_one_it_always_was(tokenizer: Any) -> None:
    """Byte for byte: dropping only turns older than the current request gives what the policy always gave (the first
    request marked, then the turns kept), so rows that never lost their request are unchanged."""
    support = probe_template(tokenizer)
    state = thread_state(before=8, after=3)
    marked = {**TASK, "content": f"{TASK['content']}\n\n{OMITTED_MARKER.format(n=6)}"}
    expected = [SYSTEM, marked, *state[2 + 6 :]]  # three tool turns (six messages) dropped, the request still after them
    budget = count_tokens(tokenizer, render_prompt(tokenizer, expected, TOOLS, support))
    fit = fit_messages(tokenizer, state, TOOLS, support, budget)
    assert fit.messages == expected and fit.dropped_messages == 6 and fit.tools == TOOLS
    assert fit.text == render_prompt(tokenizer, expected, TOOLS, support)


def test_an_iwm_state_of_a_later_request_keeps_that_request_and_the_call_it_asks_about(tokenizer: Any) -> None:
    from ee_middleware.trainers.datasets.rows import IWM_INSTRUCTION

    support = probe_template(tokenizer)
    asked = {"role": "assistant", "content": "", "tool_calls": [call(77)]}
    state = [*thread_state(before=4, after=10), asked, {"role": "user", "content": IWM_INSTRUCTION}]
    smallest = [SYSTEM, TASK, REQUEST, *state[-2:]]
    budget = count_tokens(tokenizer, render_prompt(tokenizer, smallest, TOOLS, support)) + 40
    fit = fit_messages(tokenizer, state, TOOLS, support, budget)
    assert fit.tokens <= budget and fit.messages[-2:] == state[-2:]
    assert REQUEST["content"] in fit.text and TASK["content"] in fit.text and "folder_77" in fit.text


def test_the_first_request_goes_before_anything_is_cut_from_the_left(tokenizer: Any) -> None:
    """When the first request, the current one and the last turn do not fit even with compact tools, the first request
    (an earlier one: the run acts on the later) gives way, not the system message and tools a left cut would take."""
    support = probe_template(tokenizer)
    long_task = {"role": "user", "content": "Move every report into the archive folder, reading them first: " + "report notes " * 1500}
    state = thread_state(before=3, after=4, task=long_task)
    marked = f"{OMITTED_MARKER.format(n=1 + 7)}\n\n{REQUEST['content']}\n\n{OMITTED_MARKER.format(n=6)}"
    expected = [SYSTEM, {"role": "user", "content": marked}, *state[-2:]]  # the first request, then six turns, dropped
    budget = count_tokens(tokenizer, render_prompt(tokenizer, expected, TOOLS, support))
    assert count_tokens(tokenizer, render_prompt(tokenizer, [SYSTEM, long_task, REQUEST, *state[-2:]], None, support)) > budget
    fit = fit_messages(tokenizer, state, TOOLS, support, budget)
    assert fit.tokens <= budget, "nothing is left for the caller to cut from the left"
    assert fit.messages == expected and fit.dropped_messages == 1 + 7 + 6
    assert fit.tools == TOOLS and not fit.compact_tools, "full schemas come back once the first request is gone"


def test_a_first_request_in_content_parts_keeps_its_text_beside_the_marker(tokenizer: Any) -> None:
    """The marker was written over a first request whose content is a list of parts (an OpenAI-style message): the
    state kept the marker and lost the request."""
    support = probe_template(tokenizer)
    state = [SYSTEM, {"role": "user", "content": [{"type": "text", "text": TASK["content"]}]}, *long_state(30)[2:]]
    full = count_tokens(tokenizer, render_prompt(tokenizer, state, TOOLS, support))
    fit = fit_messages(tokenizer, state, TOOLS, support, full // 2)
    assert fit.dropped_messages > 0 and TASK["content"] in fit.text
    assert fit.messages[1]["content"].startswith(TASK["content"] + "\n\n" + OMITTED_MARKER.format(n=fit.dropped_messages))


def test_a_strict_alternation_template_renders_a_fitted_later_request() -> None:
    """Gemma 2 (strict user/assistant alternation, no system role): the request kept beside the marked first request
    is one user turn, and so is the marker standing in for a first request that gave way."""
    from tests.models.family_templates import FAMILIES

    tokenizer = build_test_tokenizer([FAMILIES["gemma-2"], json.dumps(thread_state(3, 3))], chat_template=FAMILIES["gemma-2"])
    support = probe_template(tokenizer)
    long_task = {"role": "user", "content": "Move every report into the archive folder: " + "report notes " * 1500}
    for task, first_kept in ((TASK, True), (long_task, False)):
        state = thread_state(before=3, after=8, task=task)
        smallest = [SYSTEM, {"role": "user", "content": REQUEST["content"]}, *state[-2:]]
        budget = count_tokens(tokenizer, render_prompt(tokenizer, smallest, TOOLS, support)) + 60
        fit = fit_messages(tokenizer, state, TOOLS, support, budget)
        assert fit.tokens <= budget and REQUEST["content"] in fit.text and fit.messages[-2:] == state[-2:]
        assert (task["content"] in fit.text) is first_kept and "earlier messages omitted to fit the context]" in fit.text


def test_a_state_ending_on_its_request_pins_no_earlier_one() -> None:
    """A state that ends on the user's request (the run's first model call) acts on that request, which is the last turn
    and always kept: an earlier request is an older turn like any other."""
    state = [
        *thread_state(before=2, after=3),
        {"role": "assistant", "content": "Listed."},
        {"role": "user", "content": "Thanks, now stop."},
    ]
    _head, turns = split_turns(state)
    assert current_request_turn(turns) is None
    assert current_request_turn(split_turns(thread_state(before=2, after=3))[1]) == 2 + 1


PAGE = " ".join(f"line {i} of the fetched page, report_{i}.pdf" for i in range(3000))
"""One oversized tool result (about 120,000 characters: a fetched page, well under capture's cap)."""


def test_one_oversized_tool_result_is_shortened_in_its_middle_instead_of_a_left_cut(tokenizer: Any) -> None:
    """Before, a state whose last turn holds one huge tool result dropped every earlier turn and compacted the tools,
    which gained nothing, and the caller then cut from the left through the system message, the tools, the request and
    the call itself: the row trained on ~1,000 tokens from the middle of one page. Now that result keeps its head and
    tail with a visible marker, so that all of those survive without a left cut."""
    from ee_middleware.models.truncation import tokenize_pair

    support = probe_template(tokenizer)
    state = [
        *long_state(2),
        {"role": "assistant", "content": "", "tool_calls": [call(42)]},
        {"role": "tool", "tool_call_id": "c42", "content": PAGE},
    ]
    completion = [{"role": "assistant", "content": "The archive holds report_0.pdf."}]
    pair = tokenize_pair(tokenizer, state, completion, TOOLS, support, 1024)
    assert pair.left_cut == 0 and len(pair.ids) <= 1024
    from ee_middleware.models.truncation import SHORTENED_MARKER

    fit = pair.fit
    assert fit is not None and fit.shortened_messages == 1 and fit.omitted_chars > 100_000 and fit.changed
    assert fit.describe()["shortened_messages"] == 1 and fit.describe()["omitted_chars"] == fit.omitted_chars
    text = tokenizer.decode(pair.prompt_ids)
    assert SYSTEM["content"] in text and TASK["content"] in text and "folder_42" in text, "system, request and call survive"
    shortened = fit.messages[-1]["content"]
    marker = SHORTENED_MARKER.format(n=fit.omitted_chars)
    head, tail = shortened.split(f"\n{marker}\n")
    assert PAGE.startswith(head) and PAGE.endswith(tail) and head and tail and marker in text
    served = fit_messages(tokenizer, state, TOOLS, support, 1024 - len(pair.completion_ids))
    assert served.text == fit.text, "the local policy and server fit the state as the trainer does"


def test_a_shortened_message_is_the_longest_and_short_ones_are_left_alone(tokenizer: Any) -> None:
    """Only the longest tool result or user message is shortened while that is enough; the system message is never."""
    support = probe_template(tokenizer)
    state = [
        SYSTEM,
        {"role": "user", "content": "Summarise this page: " + PAGE[:20_000]},
        {"role": "assistant", "content": "", "tool_calls": [call(1)]},
        {"role": "tool", "tool_call_id": "c1", "content": PAGE},
    ]
    full = count_tokens(tokenizer, render_prompt(tokenizer, state, TOOLS, support))
    fit = fit_messages(tokenizer, state, TOOLS, support, full // 3)
    assert fit.tokens <= full // 3 and fit.shortened_messages == 1
    assert fit.messages[1] == state[1] and fit.messages[0]["content"].startswith(SYSTEM["content"])
    from ee_middleware.models.truncation import SHORTENED_MARKER

    head, tail = fit.messages[-1]["content"].split(f"\n{SHORTENED_MARKER.format(n=fit.omitted_chars)}\n")
    assert PAGE.startswith(head) and PAGE.endswith(tail) and len(head) + len(tail) + fit.omitted_chars == len(PAGE)


def test_a_system_message_alone_over_the_budget_leaves_the_request_whole_for_the_left_cut(tokenizer: Any) -> None:
    """Before, a system message that alone did not fit (a long policy or retrieved context) made step 5 cut the request
    down to its marker, which could not make the prompt fit, and the left cut ran anyway: the row trained on
    ``user\\n[652 characters omitted to fit the context]`` instead of the task. Shortening now runs only where it can make
    the prompt fit, so the left cut keeps the end of the system message and the whole request, as before step 5."""
    from ee_middleware.models.truncation import tokenize_pair

    support = probe_template(tokenizer)
    system = {"role": "system", "content": " ".join(f"Rule {i}: keep every report in folder_{i}." for i in range(400))}
    request = "Move every report into the archive folder. " + " ".join(f"Keep notes_{i}.txt where it is." for i in range(20))
    state = [system, {"role": "user", "content": request}]
    completion = [{"role": "assistant", "content": "", "tool_calls": [call(7)]}]
    pair = tokenize_pair(tokenizer, state, completion, None, support, 512)
    assert pair.fit is not None and pair.left_cut > 0 and len(pair.ids) <= 512
    assert pair.fit.shortened_messages == 0 and pair.fit.omitted_chars == 0
    assert request in tokenizer.decode(pair.prompt_ids), "the request survives the left cut"
    served = fit_messages(tokenizer, state, None, support, 512 - len(pair.completion_ids))
    assert served.text == pair.fit.text, "the local policy and server fit the state as the trainer does"


def test_the_current_request_is_shortened_after_the_tool_results(tokenizer: Any) -> None:
    """A request longer than a tool result is still shortened last: cutting the tool result enough keeps the task whole
    (before, the longest message went first, however much the request mattered)."""
    support = probe_template(tokenizer)
    request = "Move every report into the archive folder. " + " ".join(f"Keep notes_{i}.txt where it is." for i in range(60))
    listing = PAGE[:1_200]
    state = [
        SYSTEM,
        {"role": "user", "content": request},
        {"role": "assistant", "content": "", "tool_calls": [call(1)]},
        {"role": "tool", "tool_call_id": "c1", "content": listing},
    ]
    assert len(request) > len(listing)
    full = count_tokens(tokenizer, render_prompt(tokenizer, state, None, support))
    without_listing = count_tokens(tokenizer, render_prompt(tokenizer, state[:-1], None, support))
    budget = (full + without_listing) // 2 + 20  # cutting most of the listing is enough
    fit = fit_messages(tokenizer, state, None, support, budget)
    assert fit.tokens <= budget and fit.shortened_messages == 1
    assert fit.messages[1]["content"] == request and fit.messages[-1]["content"] != listing
    assert "characters omitted to fit the context" in fit.messages[-1]["content"]


def test_an_iwm_target_gives_way_before_the_system_message_and_tools_are_cut(tokenizer: Any) -> None:
    """A long state whose fitted prompt (system message, tools, the request, the call asked about) needs more than half
    of max_length, and a long observation to predict: the target kept half of max_length, so the prompt was cut from the
    left, losing the system message and the first tools (39% of a tester's IWM rows). Now the target is cut further
    (down to MIN_TARGET_SHARE of max_length) and the prompt starts whole."""
    from ee_middleware.models.truncation import MIN_TARGET_SHARE, tokenize_pair
    from ee_middleware.trainers.datasets.rows import IWM_INSTRUCTION

    support = probe_template(tokenizer)
    state = [*long_state(8), {"role": "assistant", "content": "", "tool_calls": [call(77)]}, {"role": "user", "content": IWM_INSTRUCTION}]
    target = [{"role": "assistant", "content": "report_77.pdf notes_77.txt archive " * 80}]
    minimal = fit_messages(tokenizer, state, TOOLS, support, budget=1).tokens  # everything droppable dropped
    max_length = int(minimal * 1.5)  # the fitted prompt needs about two thirds: more than the half the target kept
    assert minimal > max_length // 2 and max_length - minimal > max_length * MIN_TARGET_SHARE
    pair = tokenize_pair(tokenizer, state, target, TOOLS, support, max_length, cut_completion=True)
    assert pair.left_cut == 0 and len(pair.ids) <= max_length
    assert tokenizer.decode(pair.prompt_ids).count(SYSTEM["content"]) == 1 and pair.completion_cut_chars > 0
    assert len(pair.completion_ids) >= max_length * MIN_TARGET_SHARE

    # a prompt that needs nearly all of max_length still leaves the target its least share, and is cut from the left
    tight = tokenize_pair(tokenizer, state, target, TOOLS, support, int(minimal * 1.05), cut_completion=True)
    assert tight.left_cut > 0 and len(tight.completion_ids) >= int(int(minimal * 1.05) * MIN_TARGET_SHARE) - 2
