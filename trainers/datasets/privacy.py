"""The store's redaction on every dataset row, and no training on a placeholder as if it were a value.

Every row of every kind (held-out ones too) has its prompt, its completion and its tool schemas redacted with
the store's own rules and salt (:func:`~ee_middleware.capture.store_redaction.store_redactor`) before it is
written, whatever the store holds. Tool schemas carry user data too (a tool built at run time, ``f"Send mail as
{user_email}"``; an ``enum`` of addresses; a ``default``): capture redacts their text and values and keeps their names
and structure (:func:`~ee_middleware.capture.assembler.redact_tool_schemas`), and the rows' ``tools`` go through the
same function with the store's current rules, so a run recorded before capture did, or before a pattern was added,
leaks nothing through them. Then placeholders are dealt with by kind, a placeholder counting as *seen* where the row's
prompt or its tools show it (the model is served those schemas: an ``enum`` of pseudonyms offers the value the
expert's call copies):

* **IL and SR** (the target is the expert's action): a row whose completion holds a placeholder the
  row does not show is **dropped**. With pseudonyms, a target such as
  ``find_user_by_email(email="[REDACTED:email:1a2b3c4d]")`` whose prompt holds the same pseudonym
  (the user gave the address) teaches the model to copy the value it was shown, which is what it
  must do with real values when served; one whose pseudonym appears nowhere in the prompt would
  teach it to write a placeholder out of nothing (the row's tools count: an ``enum`` shows its values). A plain ``[REDACTED:kind]`` names no value, so it
  can never be checked and its rows are dropped too;
* **IWM** (the target is the tool's answer): pseudonyms the row does not show are **rewritten**
  to the plain ``[REDACTED:<kind>]`` (the world model learns that an e-mail address is there, not a
  random tag); pseudonyms the row shows stay, so it learns which value comes back;
* **rollouts the sandbox answered for a placeholder** (``Rollout.unrestored``: replayed without
  the values) are left out of IWM and SR (see :func:`~ee_middleware.trainers.datasets.source.load_source`).

Counts of all three go into ``datasets.json``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import polars as pl

from ee_middleware.capture.assembler import redact_tool_schemas
from ee_middleware.capture.redaction import PLACEHOLDER, Redactor

REDACTION_METADATA_KEY = "ee.redaction"
"""Parquet metadata of a dataset file: the redaction rules it was built with (JSON), for its exports."""

_DECODER = json.JSONDecoder()

_TAGGED = re.compile(r"\[REDACTED:([A-Za-z0-9_.-]+):([0-9a-f]{8})\]")
"""A pseudonym: ``[REDACTED:kind:tag]``, the kind and the value's tag."""


def guard_rows(kind: str, frame: pl.DataFrame, redactor: Redactor) -> tuple[pl.DataFrame, dict[str, int]]:
    """``frame`` redacted with ``redactor`` (prompts, completions and tool schemas), IL/SR rows with placeholders they do
    not show (in their prompt or their tools) dropped, IWM ones rewritten."""
    counts: Counter[str] = Counter()
    if frame.is_empty():
        return frame, {}
    prompts = redact_prompts(redactor, frame["prompt"].to_list())
    completions = [_redact(redactor, c) for c in frame["completion"].to_list()]
    redacted_tools: dict[str | None, str | None] = {}  # rows of a trajectory share its tools: each text redacted once
    tools = frame["tools"].to_list() if "tools" in frame.columns else [None] * frame.height
    for text in set(tools):
        redacted_tools[text] = redact_tools_text(redactor, text)
    tools = [redacted_tools[text] for text in tools]
    keep = [True] * len(prompts)
    for i, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if "[REDACTED:" not in completion:
            continue
        shown = f"{prompt}\n{tools[i] or ''}"  # what the model is given: the conversation and the tools offered
        # one value is one tag whichever rule named its kind ("my password is X" -> password, {"password": X} -> secret):
        # a target's pseudonym shown under another kind is that value, written as the row shows it (copied, not renamed)
        as_shown = {m.group(2): m.group(0) for m in reversed(list(_TAGGED.finditer(shown)))}
        aligned = _TAGGED.sub(
            lambda m, seen=shown, kinds=as_shown: m.group(0) if m.group(0) in seen else kinds.get(m.group(2), m.group(0)), completion
        )
        written_as_shown = aligned != completion
        if written_as_shown:
            completions[i] = completion = aligned
        unseen = [p for p in PLACEHOLDER.findall(completion) if p.count(":") < 2 or p not in shown]
        if written_as_shown and (kind == "iwm" or not unseen):  # (a row dropped below counts once, as dropped)
            counts["placeholders_written_as_the_prompt_shows"] += 1
        if not unseen:
            counts["rows_with_placeholders_seen_in_prompt"] += 1
        elif kind == "iwm":
            rewritten = _TAGGED.sub(lambda m, seen=shown: m.group(0) if m.group(0) in seen else f"[REDACTED:{m.group(1)}]", completion)
            if rewritten != completion:
                completions[i] = rewritten
                counts["rows_with_unseen_pseudonyms_rewritten"] += 1
        else:
            keep[i] = False
            counts["dropped_placeholder_not_in_prompt"] += 1
    columns = [pl.Series("prompt", prompts, dtype=pl.String), pl.Series("completion", completions, dtype=pl.String)]
    if "tools" in frame.columns:
        columns.append(pl.Series("tools", tools, dtype=pl.String))
    frame = frame.with_columns(columns)
    return frame.filter(pl.Series(keep)), dict(counts)


def _redact(redactor: Redactor, text: str | None) -> str | None:
    return redactor.redact_value(text) if text and redactor.enabled else text


def redact_prompts(redactor: Redactor, prompts: list[str | None]) -> list[str | None]:
    """``prompts`` (JSON lists of messages) each redacted as :meth:`~ee_middleware.capture.redaction.Redactor.redact_value`
    redacts it walked as data, each distinct message once.

    The rows of a trajectory hold its states, each the whole conversation before its step: redacted whole, a run of n
    steps had its first message scanned n times (a build of 50 steps of 100 KB tool results spent 138 of its 140 s
    here). A JSON list walked as data is walked one value at a time (the rules see one string at a time), so here each
    message is walked alone and the list written back around them, as the walk writes it back: the same text as a
    whole prompt walked; where the whole prompt's text scan calls it clean and the walk of a message finds a secret the
    scan misses, that secret is redacted too. That holds where the list is written as the store writes JSON (compact,
    as ``json.dumps`` writes it back) and only the built-in rules apply; a prompt of any other form or nested too deep
    to walk, and every prompt where the store has patterns of its own or a ``redact_fn`` (its patterns read the JSON
    text itself, across messages), is redacted whole, as before."""
    if not redactor.enabled:
        return prompts
    if not redactor.builtin_only:
        return [_redact(redactor, p) for p in prompts]
    # a message's JSON text -> its redacted text, None where the walk changed nothing (the rows of a trajectory share
    # their earlier messages)
    done: dict[str, str | None] = {}
    out: list[str | None] = []
    for prompt in prompts:
        split = _compact_messages(prompt) if prompt else None
        redacted: list[str | None] | None = None
        if split is not None:
            messages, texts, ensure_ascii = split
            try:
                redacted = [_walked(redactor, m, t, ensure_ascii, done) for m, t in zip(messages, texts, strict=True)]
            except RecursionError:  # (nested too deep to walk: the whole prompt is read as text, as before)
                redacted = None
        if redacted is None:
            out.append(_redact(redactor, prompt))
        elif all(r is None for r in redacted):
            out.append(prompt)
        else:
            out.append(f"[{','.join(t if r is None else r for r, t in zip(redacted, texts, strict=True))}]")
    return out


def _walked(redactor: Redactor, message: dict[str, Any], text: str, ensure_ascii: bool, done: dict[str, str | None]) -> str | None:
    """``message`` (written as ``text``) walked as data by ``redactor`` and written back as ``text`` is written; ``None``
    where the walk changed nothing. Remembered in ``done``."""
    if text not in done:
        redacted = redactor.redact_value(message)
        done[text] = None if redacted == message else json.dumps(redacted, ensure_ascii=ensure_ascii, separators=(",", ":"))
    return done[text]


def _compact_messages(prompt: str) -> tuple[list[dict[str, Any]], list[str], bool] | None:
    """The objects of ``prompt``, a JSON list of objects written compact (as ``json.dumps`` with ``separators=(",",
    ":")`` writes it back, the non-ASCII characters either way), with their JSON texts in it and whether it escapes
    non-ASCII characters; ``None`` for any other text."""
    if not (prompt.startswith("[{") and prompt.endswith("}]")):
        return None
    try:
        first, end = _DECODER.raw_decode(prompt, 1)
    except (ValueError, RecursionError):
        return None
    # the form of the first message says the whole list's (a list written otherwise costs no more than this to pass by)
    text = prompt[1:end]
    modes = [mode for mode in (False, True) if json.dumps(first, ensure_ascii=mode, separators=(",", ":")) == text]
    if not modes:
        return None
    try:
        messages = json.loads(prompt)
    except (ValueError, RecursionError):
        return None
    if not all(isinstance(m, dict) for m in messages):
        return None
    for ensure_ascii in modes:
        texts = [json.dumps(m, ensure_ascii=ensure_ascii, separators=(",", ":")) for m in messages]
        if f"[{','.join(texts)}]" == prompt:
            return messages, texts, ensure_ascii
    return None


def redact_tools_text(redactor: Redactor, text: str | None) -> str | None:
    """A row's ``tools`` (tool schemas as JSON text) redacted as capture redacts tool schemas
    (:func:`~ee_middleware.capture.assembler.redact_tool_schemas`: descriptions, enum/default/example values; names and
    structure kept); the text as it was where nothing changed. A text that is no JSON list is redacted as text."""
    if not text or not redactor.enabled:
        return text
    try:
        tools = json.loads(text)
    except ValueError:
        tools = None
    if not isinstance(tools, list):
        return redactor.redact_text(text)
    redacted = redact_tool_schemas(tools, redactor)
    return text if redacted == tools else json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))


def redaction_metadata(redactor: Redactor) -> dict[str, str]:
    """What a dataset file records of the redaction it was built with (the rules; never the salt)."""
    return {REDACTION_METADATA_KEY: json.dumps({"rules": redactor.rules.to_dict(), "pseudonyms": redactor.salt is not None})}


def dataset_redactor(path: Any) -> Redactor:
    """The redaction a dataset file was built with (its Parquet metadata), for exporting it; the
    default kinds for a file without it. Values already redacted stay as they are; anything left is
    redacted without a salt (plain ``[REDACTED:<kind>]``)."""
    from ee_middleware.capture.redaction import RedactionRules

    try:
        metadata = pl.read_parquet_metadata(path)
    except Exception:  # noqa: BLE001 - read_dataset reports unreadable files
        metadata = {}
    saved = metadata.get(REDACTION_METADATA_KEY)
    if not saved:
        return Redactor()
    return Redactor(RedactionRules.from_dict(json.loads(saved)["rules"]))


def redact_messages(redactor: Redactor, example: dict[str, Any]) -> dict[str, Any]:
    """One exported example's ``messages`` and ``tools`` through ``redactor`` (the tools as capture redacts tool schemas,
    :func:`~ee_middleware.capture.assembler.redact_tool_schemas`)."""
    if not redactor.enabled:
        return example
    redacted = {**example, "messages": redactor.redact_value(example["messages"])}
    if example.get("tools"):
        redacted["tools"] = redact_tool_schemas(example["tools"], redactor)
    return redacted
