"""Fitting a long agent state into a token budget without losing what the model needs most.

Agent states grow with every tool call: a BFCL multi-turn state is thousands of tokens. Cutting
from the left throws away the system message, the tool schemas and the request, so a model learns (and
later emits) calls for tools it cannot see, or for a request it is not shown. :func:`fit_messages` is the one
truncation policy, used wherever ee-middleware renders a prompt (the trainer, the local generator and policy, the
held-out likelihood), so that a state is fitted the same way wherever it is fitted to the same budget. The budgets
differ: the trainer fits to its ``max_length``, the local generator to its model's context, and a server renders what a
client sends whole (and refuses one over its model's context, as vLLM does). A state over the trainer's ``max_length``
is trained fitted and served whole: raise ``max_length`` where memory allows (``ee train`` warns when many rows lose
more than older turns). The policy:

1. keep the leading system messages (and with them the tool schemas), the current request (the latest user
   message that opens a turn: the one the agent is acting on; in a thread's later run, not the thread's first
   request), the thread's first user message (and an assistant's words before it that call no tool, a greeting, while
   they fit: they give way, as turns before it, before tools are listed compactly), the most recent turns and the
   whole completion;
2. drop the oldest turns in between, whole (an assistant tool call is never separated from its tool
   results, nor a call still unanswered from the message after it, such as IWM's question about it): first
   those before the current request, then those after it; say so with a visible marker where they were, at the
   end of the first user message (a user message kept right after it joins it, so that strict-alternation
   templates never see two user turns in a row; at the start of the first message kept when the state opens with
   neither a system message nor a user message, such as a graph's greeting) and, for turns after the current
   request, at the end of that request;
3. when even those and the last turn do not fit, list the tools compactly (one line per tool:
   name and argument names with types) instead of their full JSON schemas;
4. when that is still too long and the first user message is an earlier request (a later one is kept), it goes
   too (the marker stands in its place), and full schemas come back if they then fit;
5. when that is still too long (one oversized message: an 80 KB page a tool fetched, a pasted document), the longest
   tool result or user message of what is kept is shortened in its middle: its head and tail stay, with a visible
   ``[N characters omitted to fit the context]`` marker between them, as much of it as fits (then the next longest,
   if that alone was not enough; the current request last), so that the system message, the tools, the request and the
   call survive; only when that can make the prompt fit (checked first with every such message cut to its marker: a
   system message that alone is over the budget leaves them whole, and the left cut keeps the request);
6. only when that is still too long, the caller cuts tokens from the left, and reports it.

A state whose first user message is its only request is fitted exactly as by steps 1-3, 5 and 6.
What was done is returned as a :class:`Fit`, so trainers and reports can record it per row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ee_middleware.messages import content_to_text
from ee_middleware.models.chat_template import TemplateSupport, render_pair, render_prompt, with_tools_in_system

OMITTED_MARKER = "[{n} earlier messages omitted to fit the context]"
SHORTENED_MARKER = "[{n} characters omitted to fit the context]"
"""Where step 5 of the policy cut the middle of an oversized message."""
SHORTENED_ROLES = ("tool", "user")
"""The messages step 5 may shorten: never the system message (nor the tools in it), nor an assistant's calls."""
SHORTENED_TAIL = 4
"""Of the characters a shortened message keeps, the last one in ``SHORTENED_TAIL`` is its tail (the rest its head)."""
_SHORTEST_CUT = 200
"""A message this short or shorter is not worth shortening (the marker itself is about 45 characters)."""
_HEAD_ROLES = ("system", "developer")


@dataclass(frozen=True)
class Fit:
    """A state fitted to a budget: the messages and tools to render, and what was given up."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    text: str
    """The rendered prompt (generation prompt included)."""
    tokens: int
    original_tokens: int
    dropped_messages: int = 0
    compact_tools: bool = False
    shortened_messages: int = 0
    """Messages cut in their middle to fit (step 5 of the policy: one oversized tool result or user message)."""
    omitted_chars: int = 0
    """Characters those messages lost (each says how many where they were)."""

    @property
    def changed(self) -> bool:
        return self.dropped_messages > 0 or self.compact_tools or self.shortened_messages > 0

    def describe(self) -> dict[str, Any]:
        return {
            "original_tokens": self.original_tokens,
            "tokens": self.tokens,
            "dropped_messages": self.dropped_messages,
            "compact_tools": self.compact_tools,
            "shortened_messages": self.shortened_messages,
            "omitted_chars": self.omitted_chars,
        }


@dataclass(frozen=True)
class TokenizedPair:
    """A prompt and its completion as token ids, fitted to a length: what training and scoring see."""

    prompt_ids: list[int]
    completion_ids: list[int]
    fallback: tuple[str, ...]
    """How the row was rendered when not as the served prompt and what the template adds after it (``render_pair``'s
    ``FALLBACK_*`` names); empty when it was."""
    fit: Fit | None = None
    """How the prompt was fitted, when it did not fit whole."""
    left_cut: int = 0
    """Prompt tokens cut from the left after fitting (the last resort)."""
    completion_cut_chars: int = 0
    """Characters cut from the end of the completion's text (``cut_completion``: an IWM target too long to fit)."""
    whole_tokens: int = 0
    """Tokens of the prompt and the completion as rendered before any cut: the ``max_length`` the row needs whole."""
    unlearned_tail: int = 0
    """Completion tokens at its end that carry no loss: where the completion's text is the head of a longer one (cut
    here, or before: ``tokenize_pair``'s ``completion_is_head``), the template's end of turn after it and the text's
    last token (a cut may end inside a word: a token the whole text would not have there). Trained on, they would teach
    the model to end an observation where a budget cut it."""

    @property
    def ids(self) -> list[int]:
        return self.prompt_ids + self.completion_ids


def tokenize_pair(
    tokenizer: Any,
    prompt: Sequence[dict[str, Any]],
    completion: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    support: TemplateSupport,
    max_length: int,
    *,
    cut_completion: bool = False,
    completion_is_head: bool = False,
) -> TokenizedPair:
    """Token ids of ``prompt`` and ``completion`` within ``max_length``: the prompt is fitted by
    :func:`fit_messages` (then cut from the left if still too long); the completion is never cut, but with
    ``cut_completion`` (IWM rows, whose target is an observation the builder already cut to a budget that is an
    estimate) a completion that is one assistant message's text and leaves the prompt neither its own length nor half of
    ``max_length`` keeps its head, as the builder cuts (``completion_cut_chars`` records the rest), and gives way further,
    down to :data:`MIN_TARGET_SHARE` of ``max_length``, where the fitted prompt needs more than that half (so that its
    system message and tools are not cut from the left). ``completion_is_head``: the completion's text is already the
    head of a longer text (an observation the builder or the capture cut). A cut text's end of turn is counted in
    ``unlearned_tail``, for the caller to leave out of the loss.
    A completion that alone reaches ``max_length`` otherwise comes back as it is, for the caller to drop."""
    prompt_text, completion_text, fallback = render_pair(tokenizer, prompt, completion, tools, support)
    prompt_ids = _ids(tokenizer, prompt_text)
    completion_ids = _ids(tokenizer, completion_text)
    whole = len(prompt_ids) + len(completion_ids)
    cut_chars = 0
    if cut_completion and len(prompt_ids) + len(completion_ids) > max_length:
        room = max(max_length - len(prompt_ids), max_length // 2)
        if len(completion_ids) > room and (text := _answer_text(completion)) is not None:
            completion, completion_ids, fallback, cut_chars = _cut_answer(tokenizer, prompt, completion[0], text, tools, support, room)
    if not completion_ids or len(completion_ids) >= max_length or len(prompt_ids) + len(completion_ids) <= max_length:
        tail = _unlearned_tail(tokenizer, prompt, completion, tools, support, completion_ids, completion_is_head or cut_chars > 0)
        return TokenizedPair(prompt_ids, completion_ids, fallback, completion_cut_chars=cut_chars, whole_tokens=whole, unlearned_tail=tail)
    budget = max_length - len(completion_ids)
    fit = fit_messages(tokenizer, prompt, tools, support, budget)
    prompt_text, completion_text, fallback = render_pair(tokenizer, fit.messages, completion, fit.tools, support)
    prompt_ids, completion_ids = _ids(tokenizer, prompt_text), _ids(tokenizer, completion_text)
    if cut_completion and len(prompt_ids) > budget and (text := _answer_text(completion)) is not None:
        # the fitted prompt (system message, tools, the request and the call asked about) needs more than the half the
        # target kept: the target gives way, down to MIN_TARGET_SHARE of max_length, before the prompt loses its start
        room = max(max_length - len(prompt_ids), int(max_length * MIN_TARGET_SHARE))
        if room < len(completion_ids):
            completion, completion_ids, fallback, more = _cut_answer(tokenizer, fit.messages, completion[0], text, fit.tools, support, room)
            cut_chars += more
            budget = max_length - len(completion_ids)
    left_cut = max(0, len(prompt_ids) - budget)
    tail = _unlearned_tail(tokenizer, fit.messages, completion, fit.tools, support, completion_ids, completion_is_head or cut_chars > 0)
    return TokenizedPair(prompt_ids[left_cut:], completion_ids, fallback, fit, left_cut, cut_chars, whole, tail)


def _unlearned_tail(
    tokenizer: Any,
    prompt: Sequence[dict[str, Any]],
    completion: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    support: TemplateSupport,
    completion_ids: list[int],
    is_head: bool,
) -> int:
    """:attr:`TokenizedPair.unlearned_tail` of ``completion_ids`` (0 unless ``is_head`` and the completion is one answer's
    text): the tokens the template adds after an empty text (the longest end they share: the end of turn as tokenized
    within the completion) and the text's last token before them, when it has one."""
    if not is_head or not completion_ids or _answer_text(completion) is None:
        return 0
    _, empty_text, _ = render_pair(tokenizer, prompt, [{**completion[0], "content": ""}], tools, support)
    empty_ids = _ids(tokenizer, empty_text)
    shared = 0
    while shared < min(len(empty_ids), len(completion_ids)) and empty_ids[-1 - shared] == completion_ids[-1 - shared]:
        shared += 1
    return min(len(completion_ids), shared + (len(completion_ids) > shared))


MIN_TARGET_SHARE = 0.125
"""The least share of ``max_length`` an IWM target (an observation) keeps when the fitted prompt needs the rest: below
it, the prompt is cut from the left instead (a target of a few tokens teaches nothing)."""


def _answer_text(completion: Sequence[dict[str, Any]]) -> str | None:
    """The text of a completion that is one assistant message with text only (an IWM target); else ``None``."""
    if len(completion) != 1:
        return None
    message = completion[0]
    if message.get("role") != "assistant" or message.get("tool_calls") or not isinstance(message.get("content"), str):
        return None
    return message["content"]


def _cut_answer(
    tokenizer: Any,
    prompt: Sequence[dict[str, Any]],
    message: dict[str, Any],
    text: str,
    tools: Sequence[dict[str, Any]] | None,
    support: TemplateSupport,
    room: int,
) -> tuple[list[dict[str, Any]], list[int], tuple[str, ...], int]:
    """``(completion, its ids, fallback, characters cut)``: ``message`` with the longest head of ``text`` whose rendered
    completion (end of turn included) takes at most ``room`` tokens (found by binary search; the empty text when none)."""

    def rendered(keep: int) -> tuple[list[dict[str, Any]], list[int], tuple[str, ...]]:
        completion = [{**message, "content": text[:keep]}]
        _, completion_text, fallback = render_pair(tokenizer, prompt, completion, tools, support)
        return completion, _ids(tokenizer, completion_text), fallback

    low, high = 0, len(text) - 1  # the head of "low" characters is the longest known to fit; none past "high" does
    best = rendered(low)
    while low < high:
        middle = (low + high + 1) // 2
        attempt = rendered(middle)
        if len(attempt[1]) <= room:
            low, best = middle, attempt
        else:
            high = middle - 1
    return best[0], best[1], best[2], len(text) - low


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def count_tokens(tokenizer: Any, text: str) -> int:
    """Tokens in ``text`` as the model sees it (no special tokens added: the template has them)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_messages(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    support: TemplateSupport,
    budget: int,
) -> Fit:
    """``messages`` and ``tools`` fitted to ``budget`` prompt tokens by the policy in the module docstring.

    The returned :class:`Fit` may still exceed ``budget`` when not even the system message, the
    current request, the last turn and compact tool listings fit with their tool results and user messages
    shortened; the caller then cuts from the left.
    """
    messages, tool_list = [dict(m) for m in messages], list(tools) if tools else None
    text = render_prompt(tokenizer, messages, tool_list, support)
    original = count_tokens(tokenizer, text)
    if original <= budget:
        return Fit(messages, tool_list, text, original, original)
    head, turns = split_turns(messages)
    request = current_request_turn(turns)
    # the words an assistant said before the task (a greeting) stay with it, unless they alone keep the prompt too long
    system = [m for m in head if m.get("role") in _HEAD_ROLES]
    heads = [(head, 0)]
    if len(head) > len(system) + 1:
        heads.append(([*system, head[-1]], len(head) - len(system) - 1))
    stages = [heads]
    if head and head[-1].get("role") == "user" and any(turn[0].get("role") == "user" for turn in turns):
        # the first user message is an earlier request (a later one is kept): it goes before anything is cut from the left
        stages.append([([*kept[:-1], {**kept[-1], "content": ""}], gone + 1) for kept, gone in heads])
    tried = []
    for stage in stages:
        for compact in (False, True) if tool_list else (False,):
            for kept_head, gone in stage:
                tried.append(
                    _fewest_dropped(
                        tokenizer, kept_head, turns, request, tool_list, support, budget, original, compact=compact, head_dropped=gone
                    )
                )
                if tried[-1].tokens <= budget:
                    return tried[-1]
    # the first of the shortest (the least for the caller to cut), an oversized message in it shortened
    return _shortened(tokenizer, min(tried, key=lambda fit: fit.tokens), support, budget)


def split_turns(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[list[dict[str, Any]]]]:
    """``(head, turns)``: the leading system messages and the first user message (with the assistant's words before it
    that call no tool: a graph's greeting); then the rest in whole turns, each a user or assistant message with the
    tool results that answer it (an assistant's calls that no result answers keep what follows them: a question about
    those calls)."""
    index = 0
    while index < len(messages) and messages[index].get("role") in _HEAD_ROLES:
        index += 1
    first_user = index
    while first_user < len(messages) and messages[first_user].get("role") == "assistant" and not messages[first_user].get("tool_calls"):
        first_user += 1
    if first_user < len(messages) and messages[first_user].get("role") == "user":
        index = first_user + 1
    head, turns = list(messages[:index]), []
    for message in messages[index:]:
        if turns and (message.get("role") == "tool" or _awaits_results(turns[-1])):
            turns[-1].append(message)
        else:
            turns.append([message])
    return head, turns


def current_request_turn(turns: Sequence[Sequence[dict[str, Any]]]) -> int | None:
    """The index in ``turns`` (of :func:`split_turns`) of the request the agent is working on, the latest turn that a
    user message opens, when dropping older turns could drop it: ``None`` when it is the last turn (always kept) or
    there is none after the head (the first user message is the request)."""
    for index in range(len(turns) - 1, -1, -1):
        if turns[index][0].get("role") == "user":
            return index if index < len(turns) - 1 else None
    return None


def _awaits_results(turn: list[dict[str, Any]]) -> bool:
    """A turn that is an assistant's tool calls with no result yet: what follows belongs to it (an IWM
    prompt's question about the call above, whose answer is the row's target)."""
    return len(turn) == 1 and turn[0].get("role") == "assistant" and bool(turn[0].get("tool_calls"))


def _fewest_dropped(
    tokenizer: Any,
    head: list[dict[str, Any]],
    turns: list[list[dict[str, Any]]],
    request: int | None,
    tools: list[dict[str, Any]] | None,
    support: TemplateSupport,
    budget: int,
    original: int,
    *,
    compact: bool,
    head_dropped: int = 0,
) -> Fit:
    """The fit that drops the fewest oldest turns (never the last one, nor the ``request`` turn: those before it go
    first, then those after it) and fits, else the one that drops most. ``head_dropped``: messages of the head already
    left out (an assistant's greeting before the task; the task, emptied, when it is an earlier request), counted as
    dropped before the turns."""
    order = [index for index in range(len(turns) - 1) if index != request]  # the turns in the order they are dropped

    def build(drop: int) -> Fit:
        gone = set(order[:drop])
        before = sum(len(turns[i]) for i in gone if request is None or i < request) + head_dropped
        after = sum(len(turns[i]) for i in gone if request is not None and i > request)
        kept = [
            message
            for index, turn in enumerate(turns)
            if index not in gone
            for message in (_with_marker(turn, after) if index == request else turn)
        ]
        # with no system message nor task before the turns (a state of calls alone), the first message kept says it
        marked = _joined(_with_marker(head, before), kept) if head else _with_marker(kept, before, at_start=True)
        rendered_tools = tools
        if compact and tools:
            marked, rendered_tools = with_tools_in_system(marked, tools, compact=True), None
        text = render_prompt(tokenizer, marked, rendered_tools, support)
        dropped = before + after
        return Fit(marked, rendered_tools, text, count_tokens(tokenizer, text), original, dropped, compact and bool(tools))

    built: dict[int, Fit] = {}

    def fit_after_dropping(drop: int) -> Fit:
        if drop not in built:
            built[drop] = build(drop)
        return built[drop]

    low, high = 0, len(order)
    if fit_after_dropping(high).tokens > budget:
        return built[high]
    while low < high:  # the fewest dropped turns that fit (dropping more never makes the prompt longer)
        middle = (low + high) // 2
        if fit_after_dropping(middle).tokens <= budget:
            high = middle
        else:
            low = middle + 1
    return fit_after_dropping(high)


def _joined(head: list[dict[str, Any]], kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``head + kept``, where a kept user message right after the (marked) task joins it: dropping the turns between
    two user messages (the assistant's answer to the first among them) would leave two user turns in a row, which
    strict-alternation templates (Gemma, Mistral) refuse."""
    if not (head and kept and head[-1].get("role") == kept[0].get("role") == "user"):
        return head + kept
    first, second = head[-1].get("content"), kept[0].get("content")
    if not (isinstance(first, str) and isinstance(second, str)):
        return head + kept
    return [*head[:-1], {**head[-1], "content": f"{first}\n\n{second}" if first else second}, *kept[1:]]


def _with_marker(messages: list[dict[str, Any]], dropped: int, *, at_start: bool = False) -> list[dict[str, Any]]:
    """``messages`` with the :data:`OMITTED_MARKER` for ``dropped`` messages at the end of the last one's text (content
    parts become their text, which is how templates render them: the message is never replaced by the marker); with
    ``at_start``, for messages dropped before them, at the start of the first one's text (where they were, when nothing
    is kept before them to say it)."""
    if not dropped or not messages:
        return list(messages)
    marker = OMITTED_MARKER.format(n=dropped)
    position = 0 if at_start else len(messages) - 1
    message = dict(messages[position])
    content = message.get("content")
    text = content if isinstance(content, str) else content_to_text(content)
    message["content"] = (f"{marker}\n\n{text}" if at_start else f"{text}\n\n{marker}") if text else marker
    return [*messages[:position], message, *messages[position + 1 :]]


def _shortened(tokenizer: Any, fit: Fit, support: TemplateSupport, budget: int) -> Fit:
    """``fit`` with its longest tool result or user message (:data:`SHORTENED_ROLES`) cut in its middle to the most
    characters that fit ``budget`` (found by binary search), then the next longest while that was not enough, the
    current request last (step 5 of the policy); ``fit`` itself when it fits, has no such message longer than
    ``_SHORTEST_CUT`` characters, or would not fit even with every one of them cut to its marker (then shortening cannot
    spare the left cut, which keeps those messages whole where it stops short of them: a system message that alone is
    over the budget keeps its end and the whole request)."""
    if fit.tokens <= budget:
        return fit
    lengths = {
        index: len(_without_markers(_text(message.get("content")))[1])
        for index, message in enumerate(fit.messages)
        if message.get("role") in SHORTENED_ROLES
    }
    request = _request_index(fit.messages)
    # the longest first (of equals, the latest), the current request last
    order = sorted((i for i, n in lengths.items() if n > _SHORTEST_CUT), key=lambda i: (i != request, lengths[i], i), reverse=True)
    if not order or _with_messages_cut(tokenizer, fit, dict.fromkeys(order, 0), support).tokens > budget:
        return fit
    current = fit
    for done, index in enumerate(order, start=1):
        before = current
        low, high = 0, lengths[index] - 1  # keeping "low" characters fits (once checked); keeping more than "high" does not
        current = _with_messages_cut(tokenizer, before, {index: low}, support, done)
        if current.tokens <= budget:
            while low < high:
                middle = (low + high + 1) // 2
                attempt = _with_messages_cut(tokenizer, before, {index: middle}, support, done)
                if attempt.tokens <= budget:
                    low, current = middle, attempt
                else:
                    high = middle - 1
            break
    return current


def _request_index(messages: Sequence[dict[str, Any]]) -> int | None:
    """The index in fitted ``messages`` of the current request (the latest user message that opens a turn, else the
    first user message), or ``None`` when there is none."""
    head, turns = split_turns(messages)
    index = len(messages)
    for turn in reversed(turns):
        index -= len(turn)
        if turn[0].get("role") == "user":
            return index
    return len(head) - 1 if head and head[-1].get("role") == "user" else None


def _with_messages_cut(tokenizer: Any, fit: Fit, keep: dict[int, int], support: TemplateSupport, shortened: int | None = None) -> Fit:
    """``fit`` with each message ``index`` of ``keep`` cut to ``keep[index]`` characters by :func:`_cut_middle`, rendered
    and counted (``shortened``: the fit's ``shortened_messages``, else the number of messages cut)."""
    messages, omitted = list(fit.messages), 0
    for index, kept in keep.items():
        before, text, after = _without_markers(_text(messages[index].get("content")))
        messages[index] = {**messages[index], "content": before + _cut_middle(text, kept) + after}
        omitted += len(text) - kept
    rendered = render_prompt(tokenizer, messages, fit.tools, support)
    return replace(
        fit,
        messages=messages,
        text=rendered,
        tokens=count_tokens(tokenizer, rendered),
        shortened_messages=len(keep) if shortened is None else shortened,
        omitted_chars=fit.omitted_chars + omitted,
    )


_OMITTED = re.compile(re.escape(OMITTED_MARKER).replace(re.escape("{n}"), r"\d+"))
_LEADING_MARKER = re.compile(rf"\A{_OMITTED.pattern}(?:\n\n|\Z)")
_TRAILING_MARKER = re.compile(rf"(?:\A|\n\n){_OMITTED.pattern}\Z")


def _without_markers(text: str) -> tuple[str, str, str]:
    """``(leading marker, the message's own text, trailing marker)``: the :data:`OMITTED_MARKER` s the policy put at the
    start or end of a message, which shortening the message keeps whole (its count stays what was dropped)."""
    lead = _LEADING_MARKER.match(text)
    before = lead.group(0) if lead else ""
    rest = text[len(before) :]
    trail = _TRAILING_MARKER.search(rest) if rest else None
    after = trail.group(0) if trail else ""
    return before, rest[: len(rest) - len(after)], after


def _cut_middle(text: str, keep: int) -> str:
    """``text`` with ``keep`` of its characters, its head and its tail (the last ``keep // SHORTENED_TAIL``), and the
    :data:`SHORTENED_MARKER` for the others between them on a line of its own."""
    marker = SHORTENED_MARKER.format(n=len(text) - keep)
    tail = keep // SHORTENED_TAIL
    head = text[: keep - tail]
    # the policy's own markers in the part that goes (a later request joined to the task) stay: they say what was dropped
    kept_markers = _OMITTED.findall(text[keep - tail : len(text) - tail])
    return "\n".join(part for part in (head, marker, *kept_markers, text[len(text) - tail :] if tail else "") if part)


def _text(content: Any) -> str:
    """A message's content as the text templates render (content parts joined)."""
    if content is None:
        return ""
    return content if isinstance(content, str) else content_to_text(content)
