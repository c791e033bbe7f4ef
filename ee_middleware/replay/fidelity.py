"""Where a replayed observation differs from the recorded one: the first differing position and a short diff.

The replay re-executes the expert's own call at every state and compares what the sandbox answers
with what production recorded. When they differ, "recorded X…, sandbox gave Y…" cut at a fixed
length hides the difference whenever it lies past the cut (an order's status deep inside a JSON
document). :func:`describe_mismatch` says where the texts part, and gives a unified diff of the
lines around it: JSON documents are compared pretty-printed, one field per line; other long lines
are broken after ``, ``, ``; `` and sentence ends, so that the diff shows the clause that changed. Where only the order
of the same items differs, it says so, and names the likely cause (:func:`order_hint`).

An expert call whose exception ended the run is the one exception to comparing texts: no model saw its error, and what
was recorded is capture's record of the exception (``Type: message``), which no tool node's text matches.
:func:`raised_as_recorded` says whether the sandbox's call raised the same exception instead.

Every walk over a JSON document here is iterative: a tool's output nested thousands of levels deep (a tree, a recursive
config, a buggy tool) is described like any other, never a ``RecursionError`` that loses the replay's branch.
"""

from __future__ import annotations

import bisect
import difflib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from itertools import islice, repeat
from json.decoder import scanstring
from json.encoder import encode_basestring
from json.scanner import NUMBER_RE
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ee_middleware.records import Observation, Step, Trajectory

MAX_DIFF_LINES = 12
"""Lines of a diff kept (headers and hunk markers included); the rest is counted in one last line."""
MAX_LINE_CHARS = 160
_BREAK = re.compile(r"(?<=[,;.!?]) (?=\S)")


def first_difference(a: str, b: str) -> int:
    """The index of the first character where ``a`` and ``b`` differ (the shorter length when one is a prefix of the other)."""
    return _common_head(a, b)


def _common_head(a: Sequence[Any], b: Sequence[Any], a_start: int = 0, b_start: int = 0) -> int:
    """How many items ``a`` from ``a_start`` and ``b`` from ``b_start`` share: slices compared a block at a time, the
    blocks doubling up to 4096 items, then item by item in the first block that differs (a Python loop over every
    character of a 1.7 MB text took a tenth of a second)."""
    end = min(len(a) - a_start, len(b) - b_start)
    done, step = 0, 8
    while done < end and a[a_start + done : a_start + done + step] == b[b_start + done : b_start + done + step]:
        done += step
        step = min(2 * step, 4096)
    for i in range(done, min(done + step, end)):
        if a[a_start + i] != b[b_start + i]:
            return i
    return max(0, min(done + step, end))


def describe_mismatch(recorded: str, replayed: str, *, recorded_is_prefix: bool = False) -> dict[str, Any]:
    """Where ``replayed`` parts from ``recorded``, for a fidelity report.

    Returns ``position`` (0-based character index), ``line`` and ``column`` (1-based, in the
    recorded text), both lengths, and ``diff``: a unified diff from ``recorded`` to ``replayed``
    of at most :data:`MAX_DIFF_LINES` lines. With ``recorded_is_prefix`` (the recorded observation
    was cut when it was stored), only the sandbox's first ``len(recorded)`` characters are compared.
    """
    compared = replayed[: len(recorded)] if recorded_is_prefix else replayed
    documents = _json_document(recorded), _json_document(compared)  # parsed once: a big document's parse counts
    position = first_difference(recorded, compared)
    line = recorded.count("\n", 0, position) + 1
    column = position - (recorded.rfind("\n", 0, position) + 1) + 1
    report: dict[str, Any] = {
        "position": position,
        "line": line,
        "column": column,
        "recorded_chars": len(recorded),
        "replayed_chars": len(replayed),
        "diff": _short_diff(recorded, compared, _diff_lines(recorded, documents[0]), _diff_lines(compared, documents[1])),
    }
    hint = None if recorded_is_prefix else _order_hint(recorded, replayed, documents)
    if hint is not None:
        report["hint"] = hint
    return report


def ended_the_run(trajectory: Trajectory, step: Step) -> bool:
    """Whether ``step``'s call raised the exception that ended the run, so that no model saw its error: the trajectory
    ended ``error`` with this call's exception as its error (:func:`_is_exception`: the same type and message), the
    call's recorded observation is an error, and no model decision came after the call's (its turn, parallel calls
    included, is the run's last). Its recorded text is then the record of the exception (capture's ``Type: message``,
    as ``create_agent``'s default tool-error handling re-raises it; another instrumentation's exception event alike),
    not a text any tool node showed. An error a tool node showed the model (``ToolNode(handle_tool_errors=True)``, a
    middleware's answer) is followed by the model's next decision, or, where the model call given it failed (a
    provider's 503, a context overflow), by the run ending on that failure: another error than the call's. Of parallel
    calls that all raised, only the one whose exception the run raised ended it; the others are compared as text."""
    recorded = step.observation
    return (
        trajectory.status == "error"
        and recorded is not None
        and recorded.is_error
        and trajectory.error is not None
        and _is_exception(trajectory.error, recorded)
        and all(other.decision_index <= step.decision_index for other in trajectory.steps)
    )


def _is_exception(error: str, recorded: Observation) -> bool:
    """Whether the run's ``error`` is the exception the ``recorded`` observation records: the same type (its module
    aside) and message, or, where the observation was cut when stored, a message that starts with the recorded one."""
    ran, raised = _RECORDED_EXCEPTION.fullmatch(error), _RECORDED_EXCEPTION.fullmatch(recorded.content)
    if ran is None or raised is None or ran.group(1).rpartition(".")[2] != raised.group(1).rpartition(".")[2]:
        return False
    message, said = ran.group(2) or "", raised.group(2) or ""
    return message.startswith(said) if recorded.truncated_chars else message == said


_RECORDED_EXCEPTION = re.compile(r"([A-Za-z_][\w.]*)(?:: (.*))?", re.DOTALL)
"""An exception as capture (and OpenTelemetry's ``exception`` event) records it: its type, maybe qualified (``Outer.Error``,
``httpx.ConnectError``), then ``: `` and its message (``str(exc)``)."""

ERROR_TEXTS = (("", ""), ("Error: ", ""), ("Error: ", "\n Please fix your mistakes."), ("", "\n Please fix your mistakes."))
"""The texts around an exception that a sandbox's error text may add (prefix, suffix) and still be compared as the
exception (:func:`raised_as_recorded`): none (``f"{type(e).__name__}: {e}"``), ``PythonSandbox``'s default
``format_error`` (``Error: RuntimeError: backend down``) and LangGraph's ``ToolNode`` template (``Error: {exc!r}\n Please
fix your mistakes.``, docs/sandboxes.md's ``tool_error_text``)."""


def raised_as_recorded(trajectory: Trajectory, step: Step, replayed: Observation, redact: Callable[[str], Any] | None = None) -> bool:
    """Whether the sandbox's answer to the expert's call at ``step`` is the exception production's call raised, where
    that exception ended the run (:func:`ended_the_run`): no model saw its error, so the fidelity check compares the
    exception, not a text. The sandbox's answer must be an error (not a sandbox failure) whose whole text is an
    exception of the recorded type (its unqualified name) with the recorded message, as Python writes one: ``Type:
    message`` (``str``-form, a traceback's last line) or ``Type('message')`` (``repr``, for an exception whose ``repr``
    is its type and its one string argument, or whose ``str`` is its arguments' ``repr`` as ``KeyError``'s), alone or
    in one of the texts of :data:`ERROR_TEXTS` (``PythonSandbox``'s default ``format_error``, ``ToolNode``'s template).
    Another exception, another message (longer, or with more lines), an exception quoted in another's message
    (``Exception: tool failed: RuntimeError: ...``), a ``format_error`` text of another shape, a result, or a text
    naming no exception is a mismatch still. A recorded message cut when stored (``truncated_chars``) is compared as
    the start of the message.

    ``redact``: the store's current redaction (replay's ``ReplayPrivacy.redact_data``), which the sandbox's text went
    through: a recording made under older rules (a rule added since capture) is compared redacted with it too, as
    replay's text comparison does, only when the plain comparison fails."""
    recorded = step.observation
    if recorded is None or not replayed.is_error or replayed.sandbox_failure or not ended_the_run(trajectory, step):
        return False
    if _written_as(recorded.content, bool(recorded.truncated_chars), replayed.content):
        return True
    current = redact(recorded.content) if redact is not None else recorded.content
    return (
        isinstance(current, str)
        and current != recorded.content
        and _written_as(current, bool(recorded.truncated_chars), text=replayed.content)
    )


def _written_as(recorded: str, cut: bool, text: str) -> bool:
    """Whether ``text`` is the exception ``recorded`` (``Type: message``) in one of the forms :func:`raised_as_recorded`
    accepts; ``cut``: the recorded message is the start of the real one."""
    parsed = _RECORDED_EXCEPTION.fullmatch(recorded)
    if parsed is None:  # a bare message (an instrumentation that wrote no type): nothing says which exception it was
        return False
    name, message = parsed.group(1).rpartition(".")[2], parsed.group(2) or ""
    if cut:  # the text's end is not known: its start must be an exception's, after a known prefix
        starts = (f"{name}: {message}", f"{name}({message!r}"[:-1], f"{name}({message}")
        return any(text.startswith(prefix + start) for prefix in {p for p, _ in ERROR_TEXTS} for start in starts)
    forms = (f"{name}: {message}", f"{name}({message!r})", f"{name}({message})") if message else (name, f"{name}: ", f"{name}()")
    return any(text == prefix + form + suffix for prefix, suffix in ERROR_TEXTS for form in forms)


SET_ORDER_HINT = (
    "only the order of the same items differs: likely a set the tool lists in its own order (list(s), str(s), a loop "
    "over it), which replay does not keep (a restored world's sets are rebuilt, and strings hash differently in every "
    "process); sort them in the tool, e.g. sorted(s) (docs/sandboxes.md, 'The clock, random numbers and state outside "
    "the world')"
)
KEY_ORDER_HINT = "only the order of an object's keys differs (the same keys and values): the tool built it in another order"


def order_hint(recorded: str, replayed: str) -> str | None:
    """What the difference between two observations likely comes from when they hold the same items in another order
    (:data:`SET_ORDER_HINT`, or :data:`KEY_ORDER_HINT` for a JSON object's keys alone); ``None`` when more differs.

    JSON documents are compared as values, with every list's items (and every object's keys) sorted; other texts by the
    items between their commas, semicolons, line ends and brackets, which must stand where they stood (a sentence whose
    words changed places is not a listing in another order)."""
    return _order_hint(recorded, replayed, (_json_document(recorded), _json_document(replayed)))


def _order_hint(recorded: str, replayed: str, documents: tuple[Any, Any]) -> str | None:
    """:func:`order_hint`, given both texts as :func:`_json_document` parses them."""
    if recorded == replayed:
        return None
    if None not in documents and all(_plain_json_spacing(text) for text in (recorded, replayed)):
        old, new = (_dumps(document, sort_keys=True) for document in documents)
        if old == new:  # the same values: only the order of keys (or the spacing) differs
            return KEY_ORDER_HINT if _dumps(documents[0]) != _dumps(documents[1]) else None
        if len(old) != len(new) or Counter(old) != Counter(new):  # items in another order keep every character
            return None
        return SET_ORDER_HINT if _same_unordered(*documents) else None
    old_items = [item.strip() for item in _ITEM.findall(recorded)]
    new_items = [item.strip() for item in _ITEM.findall(replayed)]
    if len(old_items) < 2 or _ITEM.sub("", recorded) != _ITEM.sub("", replayed):
        return None
    return SET_ORDER_HINT if Counter(old_items) == Counter(new_items) else None


_ITEM = re.compile(r"[^,;\n{}\[\]()]+")
"""An item of a listing: what lies between commas, semicolons, line ends and brackets (``{64, 3, 'a'}``)."""


def _json_document(text: str) -> Any:
    """``text`` parsed, when it is a JSON object or array (spacing around it aside), else ``None``. What ``json.loads``
    gives, also for documents nested deeper than it can recurse (:func:`_loads_deep`)."""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            try:
                return json.loads(stripped)
            except RecursionError:
                return _loads_deep(stripped)
        except ValueError:
            pass
    return None


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_CONSTANTS = {"null": None, "true": True, "false": False, "NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


def _loads_deep(text: str) -> Any:
    """``json.loads(text)`` without recursion, for documents nested deeper than ``json``'s parser recurses (about a
    thousand levels): the same values (a repeated key keeps its first place and its last value), ``ValueError`` where
    ``json.loads`` refuses the text."""
    space = _JSON_SPACE.match
    open_containers: list[Any] = []  # from the outermost: each container still being filled
    keys: list[Any] = []  # per open container: the key of the value being read (None in an array)
    i = space(text, 0).end()
    while True:
        char = text[i : i + 1]
        if char in ("{", "["):
            i = space(text, i + 1).end()
            if text[i : i + 1] == ("}" if char == "{" else "]"):
                value: Any = {} if char == "{" else []
                i += 1
            else:
                open_containers.append({} if char == "{" else [])
                key = None
                if char == "{":
                    key, i = _object_key(text, i)
                keys.append(key)
                continue
        elif char == '"':
            value, i = scanstring(text, i + 1, True)
        else:
            number = NUMBER_RE.match(text, i)
            if number is not None:
                integer, fraction, exponent = number.groups()
                value = float(integer + (fraction or "") + (exponent or "")) if fraction or exponent else int(integer)
                i = number.end()
            else:
                word = next((word for word in _CONSTANTS if text.startswith(word, i)), None)
                if word is None:
                    raise ValueError(f"no JSON value at character {i}")
                value, i = _CONSTANTS[word], i + len(word)
        while True:  # the value read ends its container's field; closing containers end their own
            i = space(text, i).end()
            if not open_containers:
                if i != len(text):
                    raise ValueError(f"extra data at character {i}")
                return value
            container = open_containers[-1]
            if isinstance(container, dict):
                container[keys[-1]] = value
            else:
                container.append(value)
            char = text[i : i + 1]
            if char == ",":
                i = space(text, i + 1).end()
                if isinstance(container, dict):
                    keys[-1], i = _object_key(text, i)
                break
            if char != ("}" if isinstance(container, dict) else "]"):
                raise ValueError(f"expected ',' or a closing bracket at character {i}")
            value, i = open_containers.pop(), i + 1
            keys.pop()


def _object_key(text: str, i: int) -> tuple[str, int]:
    """The key of an object's field at ``text[i]``, and where its value starts (after the colon and spaces)."""
    if text[i : i + 1] != '"':
        raise ValueError(f"expected a key in double quotes at character {i}")
    key, i = scanstring(text, i + 1, True)
    i = _JSON_SPACE.match(text, i).end()
    if text[i : i + 1] != ":":
        raise ValueError(f"expected ':' at character {i}")
    return key, _JSON_SPACE.match(text, i + 1).end()


def _plain_json_spacing(text: str) -> bool:
    """Whether ``text`` is framed by JSON's own whitespace alone (``json.loads`` refuses other spaces around it)."""
    return len(text.strip()) == len(text.strip(" \t\n\r"))


def _same_unordered(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same values once every list's items are taken in any order (and every object's
    keys): whether ``json.dumps(value, sort_keys=True)`` with every list's items sorted by their own such JSON is the
    same text for both. Each distinct value is numbered once (:func:`_unordered_number`): sorting by ``json.dumps`` of
    each item at every level wrote a deep document's leaves once per level above them, and writing each list's text
    once still copied a document nested ``d`` levels deep ``d`` times."""
    numbers: dict[Any, int] = {}
    return _unordered_number(a, numbers) == _unordered_number(b, numbers)


def _unordered_number(value: Any, numbers: dict[Any, int]) -> int:
    """The number of ``value`` in ``numbers``, where the values :func:`_same_unordered` takes as the same have the same
    number (and are given one when it has none): a scalar is numbered by its JSON, a list by the sorted numbers of its
    items, an object by its keys, sorted, and their values' numbers. Without recursion."""
    if not isinstance(value, _CONTAINERS):
        return numbers.setdefault(json.dumps(value), len(numbers))
    # per open container, from the outermost: its keys (None for a list), its items still to number, their numbers
    open_containers = [_container(value, sort_keys=True)]
    while True:
        keys, items, numbered = open_containers[-1]
        item = next(items, _END)
        if item is _END:
            open_containers.pop()
            shape = ("[", *sorted(numbered)) if keys is None else ("{", *zip(keys, numbered, strict=True))
            number = numbers.setdefault(shape, len(numbers))
            if not open_containers:
                return number
            open_containers[-1][2].append(number)
        elif isinstance(item, _CONTAINERS):
            open_containers.append(_container(item, sort_keys=True))
        else:
            numbered.append(numbers.setdefault(json.dumps(item), len(numbers)))


def _dumps(value: Any, *, sort_keys: bool = False) -> str:
    """``json.dumps(value, sort_keys=sort_keys)``, also for documents nested deeper than its encoder recurses (written
    then by :func:`_dumps_deep`)."""
    try:
        return json.dumps(value, sort_keys=sort_keys)
    except RecursionError:
        return _dumps_deep(value, sort_keys=sort_keys)


def _dumps_deep(value: Any, *, sort_keys: bool) -> str:
    """``json.dumps(value, sort_keys=sort_keys)`` without recursion."""
    parts: list[str] = []
    add = parts.append
    # per open container, from the outermost: its keys (None for a list), its items still to write, and (in the list
    # written) the items written so far
    open_containers = [_container(value, sort_keys)] if isinstance(value, _CONTAINERS) else []
    if not open_containers:
        return json.dumps(value)
    add("[" if open_containers[0][0] is None else "{")
    while open_containers:
        keys, items, written = open_containers[-1]
        item = next(items, _END)
        if item is _END:
            open_containers.pop()
            add("]" if keys is None else "}")
            continue
        if written:
            add(", ")
        if keys is not None:
            add(json.dumps(keys[len(written)]) + ": ")
        written.append(0)
        if isinstance(item, _CONTAINERS):
            container = _container(item, sort_keys)
            open_containers.append(container)
            add("[" if container[0] is None else "{")
        else:
            add(json.dumps(item))
    return "".join(parts)


_END = object()


def _container(value: dict[str, Any] | list[Any], sort_keys: bool) -> tuple[list[str] | None, Iterator[Any], list[Any]]:
    """A container as :func:`_dumps` and :func:`_unordered_number` keep it while they walk its items: its keys
    (``None`` for a list), its items, and what was done with each so far."""
    if isinstance(value, list):
        return None, iter(value), []
    fields = sorted(value.items(), key=_key) if sort_keys else list(value.items())
    return [key for key, _ in fields], (item for _, item in fields), []


def _key(item: tuple[str, Any]) -> str:
    return item[0]


def unified_diff(recorded: str, replayed: str, *, max_lines: int = MAX_DIFF_LINES, context: int = 1) -> str:
    """A short unified diff (``--- recorded`` / ``+++ sandbox``) of the two observations.

    Lines are matched by :class:`difflib.SequenceMatcher` (what :func:`difflib.unified_diff` gives) while that is cheap
    (:data:`DIFFLIB_BUDGET`, :data:`WORK_BUDGET`), else as :func:`_matching_blocks` says, in time about linear in the
    texts' lengths."""
    return _short_diff(recorded, replayed, _diff_lines(recorded), _diff_lines(replayed), max_lines, context)


def _short_diff(recorded: str, replayed: str, old: list[str], new: list[str], max_lines: int = MAX_DIFF_LINES, context: int = 1) -> str:
    """:func:`unified_diff` of the two texts, given their lines (:func:`_diff_lines`)."""
    diff = (line.rstrip("\n") for line in _unified_lines(old, new, _matching_blocks(old, new), context))
    lines = list(islice(diff, max_lines))
    if not lines:  # the texts differ only in what the splitting hides (trailing whitespace, line ends)
        lines = ["--- recorded", "+++ sandbox", f"-{recorded!r}"[:MAX_LINE_CHARS], f"+{replayed!r}"[:MAX_LINE_CHARS]]
    total = len(lines) + sum(1 for _ in diff)  # the lines past those kept are counted, not kept
    lines = [_clip(line) for line in lines]
    if total > max_lines:
        rest = total - (max_lines - 1)
        lines = [*lines[: max_lines - 1], f"… {rest} more diff line{'s' if rest != 1 else ''}"]
    return "\n".join(lines)


DIFFLIB_BUDGET = 100_000
"""While both texts' lines and their pairs of equal lines (a line of one text with each equal line of the other, those
difflib counts as popular left out) number at most this many, lines are first matched by
:class:`difflib.SequenceMatcher`, whose every search for the longest match visits every such pair: documents of many
repeated lines (a list of small numbers, records sharing fields) made it quadratic, 30 s for a 0.2 MB JSON list."""

WORK_BUDGET = 2_000_000
"""The steps all the searches of one diff may take together (difflib's searches, each counted as the lines it scans
and its share of the pairs, and the steps of every shortest edit script): difflib makes one search per matching run,
so a text whose every record differs in one line (a clock the sandbox does not freeze) cost lines x records, 22 s for
0.33 MB, and one allowance per stretch between anchors added up to 19 s over 1.2 MB of reordered lists. Past it, the
remaining stretches are matched cheaply (:func:`_cheap_blocks`): a correct diff, which may show a record removed and
another added as values changed. Texts of a few thousand lines may go past it and still get difflib's report."""

CHEAP_BUDGET = 500_000
"""The places :func:`_cheap_blocks` may try, in all, to find where two stretches meet again after a difference."""

Block = tuple[int, int, int]
"""``(i, j, n)``: ``old[i:i + n] == new[j:j + n]``, as :meth:`difflib.SequenceMatcher.get_matching_blocks` gives."""


class _Spent(Exception):
    """The diff's :data:`WORK_BUDGET` ran out during a search."""


class _Work:
    """What is left of one diff's :data:`WORK_BUDGET`, and of :data:`CHEAP_BUDGET`."""

    def __init__(self, left: int) -> None:
        self.left = left
        self.cheap_left = CHEAP_BUDGET

    def charge(self, steps: int) -> None:
        """Count ``steps``; :class:`_Spent` when they are more than what is left (nothing is counted then)."""
        if steps > self.left:
            raise _Spent
        self.left -= steps


class _CountedMatcher(difflib.SequenceMatcher):
    """difflib's matcher, each search for the longest match counted against ``work`` before it runs: the lines of
    ``old`` it scans, and their share of the pairs of equal lines it visits (``pairs`` over all of ``old``)."""

    def __init__(self, old: list[str], new: list[str], work: _Work, pairs: int) -> None:
        self._work, self._pairs_per_line = work, pairs / max(1, len(old))
        super().__init__(None, old, new, autojunk=True)

    def find_longest_match(self, alo: int = 0, ahi: int | None = None, blo: int = 0, bhi: int | None = None) -> Any:
        lines = (len(self.a) if ahi is None else ahi) - alo
        self._work.charge(1 + lines + int(lines * self._pairs_per_line))
        return super().find_longest_match(alo, ahi, blo, bhi)


def _counted_difflib(old: list[str], new: list[str], work: _Work) -> list[Block] | None:
    """difflib's matching blocks of ``old`` and ``new`` (the closing empty one left out), or ``None`` where ``work``
    runs out first (what was spent stays spent)."""
    pairs = _difflib_work(old, new) - len(old) - len(new)
    if pairs > min(DIFFLIB_BUDGET, work.left):
        return None
    try:
        return _CountedMatcher(old, new, work, pairs).get_matching_blocks()[:-1]
    except _Spent:
        return None


def _matching_blocks(old: list[str], new: list[str]) -> list[Block]:
    """The lines of ``old`` and ``new`` that match, ending with ``(len(old), len(new), 0)``.

    Within :data:`DIFFLIB_BUDGET` and half of :data:`WORK_BUDGET`, difflib's own. Else, in time about linear in the
    lines: the lines both texts begin and end with match; between them, the lines found once in each text anchor the
    match where their order agrees (the longest run of them in the same order, as patience diff does), and the lines
    between anchors are matched by :func:`_gap_blocks`, all of them within what is left of :data:`WORK_BUDGET`."""
    work = _Work(WORK_BUDGET // 2)
    if _difflib_work(old, new) <= DIFFLIB_BUDGET:
        blocks = _counted_difflib(old, new, work)
        if blocks is not None:
            return [*blocks, (len(old), len(new), 0)]
    work.left += WORK_BUDGET - WORK_BUDGET // 2
    head = _common_head(old, new)
    tail = _common_head(old[head:][::-1], new[head:][::-1])
    old_end, new_end = len(old) - tail, len(new) - tail
    blocks = [(0, 0, head)]
    i0 = j0 = head
    for i, j in [*_anchors(old, new, head, old_end, new_end), (old_end, new_end)]:
        blocks += [(i0 + gi, j0 + gj, n) for gi, gj, n in _gap_blocks(old[i0:i], new[j0:j], work)]
        blocks.append((i, j, 1 if i < old_end else tail))
        i0, j0 = i + 1, j + 1
    return [*_joined(blocks), (len(old), len(new), 0)]


def _difflib_work(old: Sequence[str], new: Sequence[str]) -> int:
    """The lines of ``old`` and ``new`` and how many ``(i, j)`` with ``old[i] == new[j]`` one
    :meth:`difflib.SequenceMatcher.find_longest_match` over both whole visits (lines ``new`` repeats so often that
    difflib leaves them out, autojunk's popular lines, count none)."""
    counts = Counter(new)
    popular = len(new) // 100 + 1 if len(new) >= 200 else len(new)
    return len(old) + len(new) + sum(n for n in map(counts.get, old) if n is not None and n <= popular)


def _anchors(old: list[str], new: list[str], start: int, old_end: int, new_end: int) -> list[tuple[int, int]]:
    """``(i, j)`` of lines found once in ``old[start:old_end]`` and once in ``new[start:new_end]``, the longest list of
    them in the same order in both (by patience sorting)."""
    old_counts, new_counts = Counter(old[start:old_end]), Counter(new[start:new_end])
    in_new = {new[j]: j for j in range(start, new_end) if new_counts[new[j]] == 1}
    pairs = [(i, in_new[old[i]]) for i in range(start, old_end) if old_counts[old[i]] == 1 and old[i] in in_new]
    tops: list[int] = []  # per pile, the j of its top card
    top_pair: list[int] = []  # per pile, the index in pairs of its top card
    below = [-1] * len(pairs)  # per pair, the index of the card on the pile before when it was placed
    for n, (_, j) in enumerate(pairs):
        pile = bisect.bisect_left(tops, j)
        below[n] = top_pair[pile - 1] if pile else -1
        if pile == len(tops):
            tops.append(j)
            top_pair.append(n)
        else:
            tops[pile], top_pair[pile] = j, n
    chain: list[tuple[int, int]] = []
    n = top_pair[-1] if top_pair else -1
    while n >= 0:
        chain.append(pairs[n])
        n = below[n]
    return chain[::-1]


def _gap_blocks(old: list[str], new: list[str], work: _Work) -> list[Block]:
    """The matching lines of two stretches between anchors: a shortest edit script (:func:`_myers_blocks`) where they
    differ in few lines, else difflib's, while ``work`` allows; else :func:`_cheap_blocks`."""
    if not old or not new:
        return []
    if len(old) + len(new) <= 64:  # most gaps, between lines found once: a few lines of a record that changed
        blocks = _myers_blocks(old, new, 4096, work)
        return _cheap_blocks(old, new, work) if blocks is None else blocks
    old_counts, new_counts = Counter(old), Counter(new)
    shared = sum(min(n, new_counts[line]) for line, n in old_counts.items() if line in new_counts)
    if not shared:
        return []
    budget = 50_000 + len(old) + len(new)
    fewest_edits = len(old) + len(new) - 2 * shared
    blocks = _myers_blocks(old, new, budget, work) if fewest_edits**2 <= 2 * min(budget, work.left) else None
    if blocks is None:
        blocks = _counted_difflib(old, new, work)
    return _cheap_blocks(old, new, work) if blocks is None else blocks


def _cheap_blocks(old: list[str], new: list[str], work: _Work, window: int = 16) -> list[Block]:
    """The matching lines of two stretches too costly to search, in time linear in their lines, so that the first lines
    that differ show as they are. Where both have as many lines (values changed in place, the common case), matched by
    position, if that matches most of them. Else read side by side: each run of equal lines matched, and after a
    difference, the nearest place within ``window`` lines of each side where a few lines agree again taken as where
    they meet (one equal line is often a repeated value met by chance); both sides skip ``window`` lines where there
    is none. Where both have as many lines, whichever of the two matches more lines."""
    if len(old) == len(new):
        in_place = [(i, i, n) for i, n in _equal_runs(old, new)]
        if 4 * sum(n for _, _, n in in_place) >= 3 * len(old):
            return in_place
        side_by_side = _side_by_side_blocks(old, new, window, work)  # as many lines inserted as deleted
        return max(side_by_side, in_place, key=lambda blocks: sum(n for _, _, n in blocks))
    return _side_by_side_blocks(old, new, window, work)


def _side_by_side_blocks(old: list[str], new: list[str], window: int, work: _Work) -> list[Block]:
    """:func:`_cheap_blocks` by reading both stretches side by side, each place tried counted in ``work.cheap_left``:
    where that is spent, the rest of the stretches differ as a whole (the first lines that differ are shown by then)."""
    blocks: list[Block] = []
    i = j = 0
    while i < len(old) and j < len(new):
        n = _common_head(old, new, i, j)
        if n:
            blocks.append((i, j, n))
            i, j = i + n, j + n
            continue
        if work.cheap_left <= 0:
            break
        meet, tried = None, 0
        for d in range(1, 2 * window - 1):
            for a in range(max(0, d - window + 1), min(d, window - 1) + 1):
                x, y = i + a, j + d - a
                tried += 1
                if x < len(old) and y < len(new) and old[x] == new[y] and _meet(old, new, x, y):
                    meet = x, y
                    break
            if meet is not None:
                break
        work.cheap_left -= tried
        i, j = meet if meet is not None else (i + window, j + window)
    return blocks


def _meet(old: list[str], new: list[str], i: int, j: int, run: int = 3) -> bool:
    """Whether ``old`` from ``i`` and ``new`` from ``j`` agree in ``run`` lines, or up to the end of either (one equal
    line is often a repeated value met by chance, which would set the rest of the stretch off by some lines)."""
    return old[i : i + run] == new[j : j + run] or _common_head(old, new, i, j) >= min(len(old) - i, len(new) - j)


def _equal_runs(old: list[str], new: list[str]) -> Iterator[tuple[int, int]]:
    """``(i, n)`` of each run of positions where ``old[i:i + n] == new[i:i + n]`` (both as long)."""
    start = None
    for i, (a, b) in enumerate(zip(old, new, strict=True)):
        if a == b:
            if start is None:
                start = i
        elif start is not None:
            yield start, i - start
            start = None
    if start is not None:
        yield start, len(old) - start


def _myers_blocks(old: Sequence[str], new: Sequence[str], budget: int, work: _Work) -> list[Block] | None:
    """The matching lines of a shortest edit script from ``old`` to ``new`` (Myers' greedy algorithm: with ``d`` edits,
    about ``d * d / 2`` steps, each following a diagonal of equal lines), or ``None`` past ``budget`` steps or what is
    left of ``work`` (the steps taken are counted there either way)."""
    n, m = len(old), len(new)
    limit = min(budget, work.left)
    furthest = {1: 0}  # per diagonal k = x - y: the furthest x reached with d edits
    trace: list[dict[int, int]] = []
    steps = 0
    for d in range(n + m + 1):
        trace.append(dict(furthest))
        steps += d + 1
        if steps > limit:
            work.left -= steps - d - 1
            return None
        for k in range(-d, d + 1, 2):
            inserted = k == -d or (k != d and furthest[k - 1] < furthest[k + 1])  # a line of new, else one of old deleted
            x = furthest[k + 1] if inserted else furthest[k - 1] + 1
            y = x - k
            if x < n and y < m and old[x] == new[y]:
                x += _common_head(old, new, x, y)
            furthest[k] = x
            if x >= n and x - k >= m:
                work.left -= steps
                return _myers_path(trace, n, m)
    return None  # not reached: n + m edits always reach the end


def _myers_path(trace: list[dict[int, int]], x: int, y: int) -> list[Block]:
    """The runs of matching lines on the path :func:`_myers_blocks` found to ``(x, y)``, read back through ``trace`` (the
    furthest points before each number of edits)."""
    blocks: list[Block] = []
    for d in range(len(trace) - 1, -1, -1):
        furthest, k = trace[d], x - y
        if d == 0:
            start_x = 0
        else:
            down = k == -d or (k != d and furthest[k - 1] < furthest[k + 1])
            previous_k = k + 1 if down else k - 1
            start_x = furthest[previous_k] if down else furthest[previous_k] + 1
        start_y = start_x - k
        if x > start_x:
            blocks.append((start_x, start_y, x - start_x))
        if d:
            x, y = (furthest[previous_k], furthest[previous_k] - previous_k)
    return blocks[::-1]


def _joined(blocks: list[Block]) -> Iterator[Block]:
    """``blocks`` with adjacent ones merged, as difflib gives them."""
    current: Block | None = None
    for i, j, n in blocks:
        if not n:
            continue
        if current is not None and current[0] + current[2] == i and current[1] + current[2] == j:
            current = (current[0], current[1], current[2] + n)
            continue
        if current is not None:
            yield current
        current = (i, j, n)
    if current is not None:
        yield current


class _Matched(difflib.SequenceMatcher):
    """difflib's opcodes and their grouping from matching blocks found elsewhere (:func:`_matching_blocks`)."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__(None, "", "")
        self._blocks = blocks

    def get_matching_blocks(self) -> list[Block]:  # type: ignore[override]
        return self._blocks


def _unified_lines(old: list[str], new: list[str], blocks: list[Block], context: int) -> Iterator[str]:
    """The lines :func:`difflib.unified_diff` (``recorded`` to ``sandbox``, ``lineterm=""``) gives for these matches."""
    started = False
    for group in _Matched(blocks).get_grouped_opcodes(context):
        if not started:
            started = True
            yield "--- recorded"
            yield "+++ sandbox"
        first, last = group[0], group[-1]
        yield f"@@ -{_range(first[1], last[2])} +{_range(first[3], last[4])} @@"
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                yield from (" " + line for line in old[i1:i2])
                continue
            if tag in {"replace", "delete"}:
                yield from ("-" + line for line in old[i1:i2])
            if tag in {"replace", "insert"}:
                yield from ("+" + line for line in new[j1:j2])


def _range(start: int, stop: int) -> str:
    """A hunk's range as a unified diff writes it (difflib's ``_format_range_unified``)."""
    beginning, length = start + 1, stop - start
    if length == 1:
        return str(beginning)
    if not length:
        beginning -= 1  # an empty range begins at the line before
    return f"{beginning},{length}"


_HUNK = re.compile(r"@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")
_HEADERS = ("--- recorded", "+++ sandbox")


def redact_diff(diff: str, redact: Callable[[str], str]) -> str:
    """``diff`` (a :func:`unified_diff`) with each line's text redacted by ``redact`` without its ``-``/``+``/space marker,
    the headers and hunk markers kept: redacted whole, a marker and the text after it read as one value (``+2026-12-01``
    as a phone number) and the line lost its text. Redacting a diff of redacted texts again changes nothing."""
    out = []
    for n, line in enumerate(diff.split("\n")):
        if (n < 2 and line == _HEADERS[n]) or _HUNK.fullmatch(line):
            out.append(line)
        elif line[:1] in ("-", "+", " "):
            out.append(line[0] + redact(line[1:]))
        else:  # the count of diff lines left out, or a line of another shape
            out.append(redact(line))
    return "\n".join(out)


_UNPARSED = object()


def _diff_lines(text: str, document: Any = _UNPARSED) -> list[str]:
    """The units a diff compares: one JSON field per line for JSON documents, else lines broken at clause ends.
    ``document``: ``text`` as :func:`_json_document` parses it, where that was done already."""
    if document is _UNPARSED:
        document = _json_document(text)
    if document is not None:
        return _json_lines(document)
    out: list[str] = []
    for line in text.splitlines() or [""]:
        out.extend(_BREAK.split(line) if len(line) > MAX_LINE_CHARS // 2 else [line])
    return out


_INFINITY = float("inf")

_CONTAINERS = (dict, list)

MAX_INDENT = 64
"""The deepest indent of a JSON document's lines in a diff: fields nested deeper are indented as much (a line of a
document nested hundreds of levels deep would otherwise be its indent alone once cut at :data:`MAX_LINE_CHARS`)."""


def _json_lines(document: Any) -> list[str]:
    """``json.dumps(document, indent=1, ensure_ascii=False).splitlines()``, written here in a third of the time a deep
    document takes ``json``'s indenting encoder (pure Python, a generator per level), without recursion, and indented
    at most :data:`MAX_INDENT` spaces."""
    lines: list[str] = []
    add = lines.append
    # per open container, from the outermost: its fields' (head, value, tail) still to write, its closing line, the
    # indent of its fields; the document is the one field of a container without brackets
    open_containers: list[tuple[Iterator[tuple[str, Any, str]], str | None, str]] = [(iter([("", document, "")]), None, "")]
    while open_containers:
        fields, closing, pad = open_containers[-1]
        for head, value, tail in fields:
            if isinstance(value, _CONTAINERS) and value:
                inner = pad + " " if len(pad) < MAX_INDENT else pad
                tails = [","] * len(value)
                tails[-1] = ""
                if isinstance(value, dict):
                    add(head + "{")
                    heads = [f"{inner}{encode_basestring(key)}: " for key in value]
                    open_containers.append((zip(heads, value.values(), tails, strict=True), pad + "}" + tail, inner))
                else:
                    add(head + "[")
                    open_containers.append((zip(repeat(inner), value, tails), pad + "]" + tail, inner))
                break  # the container's fields first, then the rest of this one's
            add(head + _json_scalar(value) + tail)
        else:
            open_containers.pop()
            if closing is not None:
                add(closing)
    text = "\n".join(lines)
    if "\x85" in text or "\u2028" in text or "\u2029" in text:  # line ends to splitlines, which JSON leaves in strings
        return text.splitlines()
    return lines


def _json_scalar(value: Any) -> str:
    """A value ``json.loads`` gives as ``json.dumps`` writes it (empty objects and arrays included)."""
    if isinstance(value, str):
        return encode_basestring(value)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, float):
        if value != value:
            return "NaN"
        return "Infinity" if value == _INFINITY else "-Infinity" if value == -_INFINITY else float.__repr__(value)
    if isinstance(value, int):
        return int.__repr__(value)
    return "{}" if isinstance(value, dict) else "[]"


def _clip(line: str) -> str:
    return line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…"
