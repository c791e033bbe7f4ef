"""Fidelity reports of big observations: as fast as the texts are long, and for small ones what difflib gave before.

A diff of a 1.7 MB JSON observation took 41 s and more (difflib's matcher visits, in each of its searches, every pair of
equal lines, and a document of repeated values has many), once per mismatch of a replay. Lines are now matched by
difflib while that is cheap, else by a matcher linear in the lines (``fidelity.DIFFLIB_BUDGET``)."""

from __future__ import annotations

import difflib
import json
import random
import re
import time
from typing import Any

import pytest

from ee_middleware.replay import fidelity
from ee_middleware.replay.fidelity import MAX_LINE_CHARS, describe_mismatch, unified_diff

# --- the reports before: difflib over every line, each list's items sorted by the JSON of each at every level --------


def _old_diff_lines(text: str) -> list[str]:
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(json.loads(stripped), indent=1, ensure_ascii=False).splitlines()
        except ValueError:
            pass
    out: list[str] = []
    for line in text.splitlines() or [""]:
        out.extend(fidelity._BREAK.split(line) if len(line) > MAX_LINE_CHARS // 2 else [line])
    return out


def _old_unified_diff(recorded: str, replayed: str, max_lines: int = fidelity.MAX_DIFF_LINES) -> str:
    old, new = _old_diff_lines(recorded), _old_diff_lines(replayed)
    lines = [line.rstrip("\n") for line in difflib.unified_diff(old, new, "recorded", "sandbox", n=1, lineterm="")]
    if not lines:
        lines = ["--- recorded", "+++ sandbox", f"-{recorded!r}"[:MAX_LINE_CHARS], f"+{replayed!r}"[:MAX_LINE_CHARS]]
    lines = [line if len(line) <= MAX_LINE_CHARS else line[: MAX_LINE_CHARS - 1] + "…" for line in lines]
    if len(lines) > max_lines:
        rest = len(lines) - (max_lines - 1)
        lines = [*lines[: max_lines - 1], f"… {rest} more diff line{'s' if rest != 1 else ''}"]
    return "\n".join(lines)


def _old_unordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _old_unordered(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted((_old_unordered(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
    return value


def _old_order_hint(recorded: str, replayed: str) -> str | None:
    if recorded == replayed:
        return None
    try:
        documents = (
            (json.loads(recorded), json.loads(replayed))
            if recorded.strip()[:1] in ("{", "[") and replayed.strip()[:1] in ("{", "[")
            else None
        )
    except ValueError:
        documents = None
    if documents is not None:
        old, new = (json.dumps(document, sort_keys=True) for document in documents)
        if old == new:
            return fidelity.KEY_ORDER_HINT if json.dumps(documents[0]) != json.dumps(documents[1]) else None
        old, new = (json.dumps(_old_unordered(document), sort_keys=True) for document in documents)
        return fidelity.SET_ORDER_HINT if old == new else None
    return fidelity.order_hint(recorded, replayed)  # texts other than JSON documents: unchanged


def _old_describe_mismatch(recorded: str, replayed: str, *, recorded_is_prefix: bool = False) -> dict[str, Any]:
    compared = replayed[: len(recorded)] if recorded_is_prefix else replayed
    position = next((i for i, (x, y) in enumerate(zip(recorded, compared, strict=False)) if x != y), min(len(recorded), len(compared)))
    report: dict[str, Any] = {
        "position": position,
        "line": recorded.count("\n", 0, position) + 1,
        "column": position - (recorded.rfind("\n", 0, position) + 1) + 1,
        "recorded_chars": len(recorded),
        "replayed_chars": len(replayed),
        "diff": _old_unified_diff(recorded, compared),
    }
    hint = None if recorded_is_prefix else _old_order_hint(recorded, replayed)
    if hint is not None:
        report["hint"] = hint
    return report


# --- generated observations -----------------------------------------------------------------------------------------


def _records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """Records sharing most of their values, as tool outputs do (statuses, flags, small numbers)."""
    return [
        {
            "id": rng.randrange(max(1, n // 3)),
            "status": rng.choice(["pending", "shipped", "cancelled", "é\u2028x"]),
            "price": rng.choice([1, 2.5, float("nan"), None, True, 10**20]),
            "tags": [rng.randrange(4) for _ in range(rng.randrange(4))],
            "extra": rng.choice([{}, [], {"k": {"v": [1, {}]}}]),
        }
        for _ in range(n)
    ]


def _changed(rng: random.Random, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = json.loads(json.dumps(records))
    for _ in range(rng.randrange(1, 5)):
        if not out:
            out.append({"new": 1})
            continue
        i = rng.randrange(len(out))
        match rng.randrange(5):
            case 0:
                out[i]["status"] = "returned"
            case 1:
                out.insert(i, {"new": rng.randrange(3)})
            case 2:
                del out[i]
            case 3:
                out[i], out[-1] = out[-1], out[i]
            case _:
                out[i] = {"note": "added key", **out[i]}
    return out


def _prose(rng: random.Random, n: int) -> str:
    clauses = ["item 1 is fine", "the parcel left Portland", "3 files", "notes.txt", "ok", "a, b; c."]
    return "\n".join(", ".join(rng.choice(clauses) for _ in range(rng.randrange(1, 12))) for _ in range(n))


def _pairs(seed: int, sizes: tuple[int, ...]) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for n in sizes:
        records = _records(rng, n)
        recorded = json.dumps(records, ensure_ascii=rng.random() < 0.5)
        pairs.append((recorded, json.dumps(_changed(rng, records))))
        pairs.append((recorded, recorded[: rng.randrange(len(recorded) + 1)]))  # a sandbox's output cut short
        shuffled = list(records)
        rng.shuffle(shuffled)
        pairs.append((recorded, json.dumps(shuffled)))
        text = _prose(rng, n)
        lines = text.split("\n")
        lines.insert(rng.randrange(len(lines) + 1), "a line more")
        pairs.append((text, "\n".join(lines)))
        pairs.append((text, text.replace("Portland", "Denver", 1) + " "))
    return pairs


@pytest.mark.parametrize("seed", range(6))
def test_reports_are_those_difflib_gave_for_small_and_medium_observations(seed: int) -> None:
    """Every field of the report, diff and hint included, as before, over records of repeated values, prose, cut and
    reordered outputs, from empty to a few thousand lines (within ``DIFFLIB_BUDGET``, where difflib still matches)."""
    for recorded, replayed in _pairs(seed, (0, 1, 2, 5, 20, 60, 300)):
        for prefix in (False, True):
            assert describe_mismatch(recorded, replayed, recorded_is_prefix=prefix) == _old_describe_mismatch(
                recorded, replayed, recorded_is_prefix=prefix
            ), (recorded[:200], replayed[:200], prefix)


def test_a_json_document_is_written_one_field_per_line_as_json_dumps_indents_it() -> None:
    """The diff's lines of a JSON document are ``json.dumps(indent=1, ensure_ascii=False)``'s, written here faster:
    escapes, non-ASCII, NaN and infinities, big numbers, empty containers, and line separators JSON keeps in strings."""
    odd = [
        {"a": [], "b": {}, "c": [1.5, float("nan"), float("-inf"), float("inf"), 10**30, -0.0, True, False, None]},
        {'é\n"q\\': "x\u2028y\x85z\u2029", "": [[[]], [{}]], "\x1f": "\t"},
        [],
        {},
    ]
    for document in odd:
        text = json.dumps(document)
        assert fidelity._diff_lines(text) == json.dumps(json.loads(text), indent=1, ensure_ascii=False).splitlines()


def _apply(old: list[str], diff: str) -> list[str]:
    """``old`` with a ``context=0`` unified diff applied."""
    out, at = [], 0
    for hunk in re.split(r"(?m)^(?=@@ )", diff)[1:]:
        header, *body = hunk.rstrip("\n").split("\n")
        start, length = re.match(r"@@ -(\d+)(?:,(\d+))?", header).groups()  # type: ignore[union-attr]
        start = int(start) - (1 if length != "0" else 0)
        out += old[at:start]
        removed = [line[1:] for line in body if line.startswith("-")]
        assert old[start : start + len(removed)] == removed, header
        out += [line[1:] for line in body if line.startswith("+")]
        at = start + len(removed)
    return out + old[at:]


@pytest.mark.parametrize("vocabulary", [3, 150, 1000, 10**6])
def test_diffs_of_long_texts_are_correct_and_as_short_as_the_changes(vocabulary: int) -> None:
    """Past ``DIFFLIB_BUDGET``: applying the whole diff to the recorded text gives the sandbox's, and a few changes in
    60 000 lines of repeated values (the shape that made difflib quadratic) make a diff of a few lines, not one that
    replaces everything between them."""
    rng = random.Random(vocabulary)
    old = [f"value {rng.randrange(vocabulary)}" for _ in range(60_000)]
    new = list(old)
    for _ in range(8):
        at = rng.randrange(len(new))
        match rng.randrange(3):
            case 0:
                new.insert(at, "inserted")
            case 1:
                del new[at]
            case _:
                new[at] = "changed"
    diff = unified_diff("\n".join(old), "\n".join(new), max_lines=10**9, context=0)
    assert _apply(old, diff.split("\n", 2)[2]) == new
    assert sum(line[:1] in "-+" for line in diff.splitlines()[2:]) <= 16
    different = [f"other {rng.randrange(vocabulary)}" for _ in range(20_000)]  # texts unlike each other throughout
    diff = unified_diff("\n".join(old), "\n".join(different), max_lines=10**9, context=0)
    assert _apply(old, diff.split("\n", 2)[2]) == different


def _big_observations(size: int) -> tuple[str, dict[str, str]]:
    """A JSON list of records of repeated values about ``size`` characters long, and a sandbox's outputs differing from
    it in a few values, in one key more, and cut at three quarters."""
    rng = random.Random(size)
    records = []
    while len(json.dumps(records)) < size:
        records += [
            {"sku": rng.randrange(300), "history": [rng.randrange(100) for _ in range(10)], "state": rng.choice(["ok", "low"])}
            for _ in range(500)
        ]
    recorded = json.dumps(records)
    changed = json.loads(recorded)
    for _ in range(5):
        changed[rng.randrange(len(changed))]["state"] = "out"
    added = json.loads(recorded)
    added[len(added) // 2]["note"] = "restocked"
    return recorded, {"changed": json.dumps(changed), "added": json.dumps(added), "cut": recorded[: len(recorded) * 3 // 4]}


@pytest.mark.timeout(90)
def test_a_mismatch_of_a_1_7_mb_document_is_described_in_time_linear_in_its_length() -> None:
    """A 1.7 MB JSON list of records sharing values, differing in 5 values, a key or cut short: each report in about a
    second (difflib took minutes on a 1.7 MB list of small numbers: its work grows with the square of the lines), and
    the diff starts at the first line that differs."""
    recorded, outputs = _big_observations(1_700_000)
    lines = fidelity._diff_lines(recorded)
    for name, replayed in outputs.items():
        report = describe_mismatch(recorded, replayed, recorded_is_prefix=name == "cut")
        compared = fidelity._diff_lines(replayed[: len(recorded)] if name == "cut" else replayed)
        first = next(i for i, (a, b) in enumerate(zip(lines, compared, strict=False)) if a != b)
        diff, start = report["diff"].splitlines(), max(first, 1)  # one line of context before it, where there is one
        assert re.fullmatch(rf"@@ -{start}(,\d+)? \+{start}(,\d+)? @@", diff[2]), (name, diff[:4], first)
        assert diff[3:5] == ([" " + lines[first - 1]] if first else []) + ["-" + lines[first]] + ([] if first else [diff[4]]), diff
        assert re.fullmatch(r"… \d+ more diff lines", diff[-1]) or name == "added", (name, diff)


def _timestamped(n: int, clock: int) -> list[dict[str, Any]]:
    """Records with a unique id and a timestamp from ``clock`` on: a clock the sandbox does not freeze changes each."""
    return [{"id": f"order-{i}", "ts": clock + i, "state": "ok"} for i in range(n)]


def _reordered_histories(n: int, length: int) -> tuple[str, str]:
    """Records with a unique id and a list of small numbers, and the same with every list sorted (a set listed in the
    sandbox's order): every record a stretch of reordered lines between two lines found once."""
    rng = random.Random(1)
    records = [{"id": f"r{i}", "history": [rng.randrange(100) for _ in range(length)]} for i in range(n)]
    return json.dumps(records), json.dumps([{"id": r["id"], "history": sorted(r["history"])} for r in records])


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "shape",
    [
        "every timestamp changed, 0.33 MB",
        "every timestamp changed, 0.49 MB",
        "records listed twice, 0.55 MB",
        "every list reordered, 0.84 MB",
    ],
)
def test_the_work_of_all_searches_together_is_bounded(shape: str) -> None:
    """The budget counts every search of a diff together: difflib makes one search per matching run, and a stretch
    between anchors had its own allowance each, so these shapes took 22 s, 51 s, 35 s and 9 s (CPU); now a few
    seconds at most on a loaded machine (about half a second unloaded), and the diff still starts at the first change."""
    match shape:
        case "every timestamp changed, 0.33 MB" | "every timestamp changed, 0.49 MB":
            n = 6_000 if "0.33" in shape else 9_000
            recorded, replayed = json.dumps(_timestamped(n, 1_700_000_000)), json.dumps(_timestamped(n, 1_800_000_000))
        case "records listed twice, 0.55 MB":
            old, new = _timestamped(5_000, 1_700_000_000), _timestamped(5_000, 1_800_000_000)
            recorded, replayed = json.dumps(old + old), json.dumps(new + new)
        case _:
            recorded, replayed = _reordered_histories(2_000, 100)
    started = time.process_time()
    report = describe_mismatch(recorded, replayed)
    took = time.process_time() - started
    assert took < 6, (shape, took)
    lines = report["diff"].splitlines()
    assert lines[2].startswith("@@ -3,") or lines[2].startswith("@@ -4,"), lines  # the first record's second or third line
    if "reordered" not in shape:  # a sorted list's diff begins with the recorded numbers that moved
        assert any(line.startswith("+") and not line.startswith("+++") for line in lines), lines


def test_a_stretch_too_costly_to_search_still_shows_the_values_that_changed() -> None:
    """Records of repeated values (no line found once) with 300 values changed in place over 0.4 MB: the stretch is too
    costly to search, and was reported replaced whole (7 unchanged recorded lines as ``-``, none of the sandbox's);
    its lines are now compared by position, and the diff shows what difflib showed (in 8 s): the values that changed."""
    rng = random.Random(9)
    records = [{"sku": rng.randrange(300), "qty": rng.randrange(20), "state": rng.choice(["ok", "low"])} for _ in range(10_000)]
    changed = json.loads(json.dumps(records))
    for _ in range(300):
        changed[rng.randrange(len(changed))]["qty"] = rng.randrange(20)
    diff = describe_mismatch(json.dumps(records), json.dumps(changed))["diff"].splitlines()
    assert diff[:8] == [
        "--- recorded",
        "+++ sandbox",
        "@@ -403,3 +403,3 @@",
        '   "sku": 13,',
        '-  "qty": 2,',
        '+  "qty": 14,',
        '   "state": "low"',
        "@@ -493,3 +493,3 @@",
    ], diff
    assert re.fullmatch(r"… \d+ more diff lines", diff[-1]) and int(diff[-1].split()[1]) < 3_000, diff[-1]


@pytest.mark.parametrize("seed", range(20))
def test_stretches_with_lines_inserted_and_deleted_past_the_budget_show_their_first_differences_as_they_are(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the whole budget spent (``WORK_BUDGET`` 0), stretches of repeated lines with lines inserted, deleted and
    changed are matched by reading them side by side: the diff applies back, starts at the first line that differs,
    and marks about as many lines as were edited (unchanged lines are not shown as removed)."""
    rng = random.Random(seed)
    old = [f"value {rng.randrange(40)}" for _ in range(3_000)]
    new = list(old)
    edits = rng.randrange(1, 30)
    for _ in range(edits):
        at = rng.randrange(len(new))
        match rng.randrange(3):
            case 0:
                new.insert(at, f"inserted {rng.randrange(5)}")
            case 1:
                del new[at]
            case _:
                new[at] = f"changed {rng.randrange(5)}"
    new.append("one more")
    monkeypatch.setattr(fidelity, "WORK_BUDGET", 0)
    diff = unified_diff("\n".join(old), "\n".join(new), max_lines=10**9, context=0)
    assert _apply(old, diff.split("\n", 2)[2]) == new
    first = fidelity._common_head(old, new)
    assert re.match(rf"@@ -{first}(,0)? |@@ -{first + 1}[ ,]", diff.splitlines()[2]), (first, diff.splitlines()[2])
    assert sum(line[:1] in "-+" for line in diff.splitlines()[2:]) <= 4 * (edits + 1), diff[:2000]
