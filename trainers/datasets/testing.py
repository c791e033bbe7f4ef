"""A conformance kit for SR teachers (``ee_middleware.trainers.datasets.testing``): run it against any teacher.

>>> from ee_middleware.trainers.datasets.testing import check_teacher               # doctest: +SKIP
>>> check_teacher(lambda: MyTeacher(style="short"), deterministic=True)               # doctest: +SKIP
>>> check_teacher(lambda: build_teacher("my_package.teachers:make_teacher"))          # doctest: +SKIP

It lives here, not in :mod:`ee_middleware.testing`: the light core never imports the trainers package.

It asks teachers built by ``make_teacher`` (a new one each time it is called) to write rationales for the kit's
:class:`~ee_middleware.trainers.datasets.teachers.ReflectionCase` s (:func:`conformance_cases`: one call with
alternatives, a failing one among them; a turn of parallel calls, one of them with no alternative; text in several
scripts with emoji; a long state; an empty context and an empty outcome), in batches as a dataset build sends them, and
checks what :func:`~ee_middleware.trainers.datasets.teachers.write_rationales` and the SR builder rely on:

* a ``name``, a non-empty str, the same before and after writing and closing and for every teacher ``make_teacher``
  builds (every SR row records it in its ``teacher`` column), and a ``write(cases)`` method;
* ``write(cases)`` returns one text (a str; ``None`` or ``""`` for a case it has no rationale for) per case, in the
  order of the cases, as a list or another iterable that is not a str or a mapping (a generator will do: it is read
  once), for a batch of no case (``[]``), of one, of the kit's cases and of ``batch_size`` cases (the builder's batch,
  which holds the same case twice and an equal copy of it); and it writes a rationale for some case;
* ``write`` leaves the cases alone: the list it was given and every case in it (their lists of alternatives and calls)
  are as they were (the builder reads the cases after the teacher wrote: the guards check each rationale against its
  case's tools);
* its answer passes :func:`~ee_middleware.trainers.datasets.teachers.write_rationales` (the check a dataset build makes);
* ``close()``, where the teacher has one (:func:`~ee_middleware.trainers.datasets.teachers.closing_teacher` calls it
  when a build ends, also a build that failed before the teacher wrote): it returns, for a teacher that never wrote and
  for one that did, called twice too; and a ``write`` after it either works (keeping the rules above) or raises an error
  that says so, not the ``AttributeError`` or ``TypeError`` that using what ``close()`` released raises by accident;
* with ``deterministic=True`` (a teacher that draws nothing at random: the template, a local model's greedy decoding),
  the same cases give the same texts: asked again, one at a time, in reverse order, in the builder's batch and after
  ``close()`` (a text belongs to its case, not to its place in a batch or to what was asked before). Without it, whether
  they did is only reported (:attr:`TeacherReport.repeatable`): a model behind a server decodes greedily, yet its
  batching need not give the same text bit for bit.

A failure is an ``AssertionError`` naming the call, what the teacher returned or raised, the rule it broke and how to
fix it. What is no rule is reported: :func:`check_teacher` returns a :class:`TeacherReport` saying how many cases got a
rationale, how many of those the SR guards (:func:`~ee_middleware.trainers.datasets.sr.check_rationale`) keep and why
they dropped the others.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from ee_middleware.errors import EEError
from ee_middleware.testing.messages import Said, broken, shown
from ee_middleware.trainers.datasets.sr import SROptions, check_rationale
from ee_middleware.trainers.datasets.teachers import CallReflection, ReflectionCase, write_rationales

__all__ = ["RULE", "MakeTeacher", "TeacherReport", "check_teacher", "conformance_cases"]

MakeTeacher = Callable[[], Any]

RULE = (
    "write(cases) returns one text (a str; None or '' for a case it has no rationale for) per case, in the order of the "
    "cases, as a list or another iterable that is not a str or a mapping"
)
"""The promise every answer of ``write`` keeps (the failures about what it returned show it)."""

ONE_PER_CASE = "Return [rationale(case) for case in cases]: None for a case you have no rationale for, never a case left out"
"""How to keep :data:`RULE`."""

_ACCIDENTAL = (AttributeError, TypeError, KeyError, IndexError, NameError)
"""What using what ``close()`` released raises by accident (``'NoneType' object has no attribute 'generate'``)."""

_MISSING = object()


@dataclass(frozen=True)
class TeacherReport:
    """What :func:`check_teacher` saw that is no rule (it checked the rules)."""

    name: str
    """The teacher's name."""
    cases: int
    """The cases of the kit's batch."""
    texts: tuple[str | None, ...]
    """What the teacher wrote for them, in their order."""
    rationales: int
    """The cases it wrote a rationale for (a text that is not empty)."""
    kept: int
    """Those rationales the SR guards keep (the others give no row)."""
    dropped: dict[str, int]
    """Why the guards dropped the others: their flag (``label_leak``, ``recommends_alternative``, ``empty``, ``not_prose``), counted."""
    repeatable: bool
    """Whether the same cases gave the same texts each time they were asked (required with ``deterministic=True``)."""
    closes: bool
    """Whether the teacher has a ``close()``."""
    writes_after_close: bool | None
    """Whether it wrote after ``close()`` (``False``: it refused, saying why; ``None``: it has no ``close()``)."""


def conformance_cases() -> list[ReflectionCase]:
    """The kit's cases: one call with alternatives, a failing one among them; a turn of parallel calls, one of them with
    no alternative; text in several scripts with emoji; a long state (a long request, context and outcomes, beyond the
    builder's default clipping); an empty context and an empty outcome."""
    order = CallReflection(
        action="order_item(item='pear', quantity=5)",
        outcome="order O-1017 placed: 5 pear",
        tool="order_item",
        alternatives=[("order_item(item='pear', quantity=500)", "Error: quantity must be at most 100")],
        alternative_tools=["order_item"],
    )
    ship = CallReflection(action="ship(order_id='O-1016')", outcome="O-1016 shipped to 12 Elm Street, Springfield", tool="ship")
    long_request = "Reconcile the March invoices with the ledger and list every mismatch. " * 9
    ledger = "\n".join(f"ledger row {i}: invoice INV-{3000 + i}, amount {17 * i % 900}.{i % 100:02d} EUR, status open" for i in range(40))
    return [
        ReflectionCase(
            task="Are pears in stock? If not, order 5.",
            context="system: You run the stock room of a fruit shop.\nuser: Are pears in stock? If not, order 5.",
            chosen="check_stock(item='pear')",
            chosen_outcome="0 pear in stock; apple: 3, banana: 12",
            alternatives=[
                ("search_catalog(query='pear')", "pear (Conference), pear (Williams)"),
                ("check_stock(item='')", "Error: item must not be empty"),
            ],
            chosen_tool="check_stock",
            alternative_tools=["search_catalog", "check_stock"],
        ),
        ReflectionCase(
            task="Order 5 pears and ship order O-1016.",
            context="user: Order 5 pears and ship order O-1016.",
            chosen=f"{order.action}; {ship.action}",
            chosen_outcome=f"{order.outcome}; {ship.outcome}",
            alternatives=[*order.alternatives, *ship.alternatives],
            chosen_tool="order_item",
            alternative_tools=[*order.alternative_tools, *ship.alternative_tools],
            calls=[order, ship],
        ),
        ReflectionCase(
            task="Réserve une table pour 2 à 東京 ce soir 🍣 (مطعم هادئ, कृपया)",
            context="user: Réserve une table pour 2 à 東京 ce soir 🍣\nassistant: Je cherche…",
            chosen="reserve(city='東京', guests=2)",
            chosen_outcome='{"réservation": "R-42", "note": "table près de la fenêtre ✅"}',
            alternatives=[
                ("reserve(city='Tokyo', guests=2)", '{"error": "ville inconnue: Tokyo"}'),
                ("search_restaurants(query='sushi 東京')", "3 résultats: Ñandú, Zürich-Grill, Café ☕"),
            ],
            chosen_tool="reserve",
            alternative_tools=["reserve", "search_restaurants"],
        ),
        ReflectionCase(
            task=long_request.strip(),
            context="\n".join(f"tool: {ledger[i * 300 : (i + 1) * 300]}" for i in range(12)),
            chosen="compare_ledger(month='2024-03')",
            chosen_outcome=ledger,
            alternatives=[("list_invoices(month='2024-03')", ledger.replace("open", "paid"))],
            chosen_tool="compare_ledger",
            alternative_tools=["list_invoices"],
        ),
        ReflectionCase(
            task="Make a folder named reports.",
            context="",
            chosen="mkdir(name='reports')",
            chosen_outcome="",
            alternatives=[("ls(path='.')", "notes.txt")],
            chosen_tool="mkdir",
            alternative_tools=["ls"],
        ),
    ]


def check_teacher(
    make_teacher: MakeTeacher,
    *,
    deterministic: bool = False,
    cases: Sequence[ReflectionCase] | None = None,
    batch_size: int = SROptions().batch_size,
) -> TeacherReport:
    """Run every check on teachers built by ``make_teacher`` (a new one each time it is called); raises ``AssertionError``.

    ``deterministic``: require the same texts for the same cases (see the module's docstring), else only report whether
    they were; ``cases``: the cases to write (:func:`conformance_cases` by default: pass ``[*conformance_cases(), *mine]``
    to add your own); ``batch_size``: the size of the largest batch asked for (the builder's, ``SROptions.batch_size``:
    pass yours when you build with another)."""
    assert batch_size >= 1, f"batch_size must be 1 or more, got {batch_size}"
    cases = list(conformance_cases() if cases is None else cases)
    assert cases, "cases names at least one case"
    assert all(isinstance(case, ReflectionCase) for case in cases), "cases are ReflectionCase objects"
    unused = make_teacher()
    name = _name(unused, "of a new teacher")
    closes = _close(unused, "a teacher that never wrote")
    teacher = make_teacher()
    _same_name(teacher, name, "of a second teacher make_teacher built")
    _check_write_method(teacher)
    _texts(teacher, [], "write([])")
    first = _texts(teacher, cases, f"write(cases) of {_count(cases)}")
    _check_some_rationale(first, cases)
    asked = _ask_again(teacher, cases, batch_size)
    _same_name(teacher, name, "after write(cases)")
    _check_write_rationales(teacher, cases)
    after: bool | None = None
    if _close(teacher, "a teacher that wrote"):
        _same_name(teacher, name, "after close()")
        texts = _write_after_close(teacher, cases)
        after = texts is not None
        if texts is not None:
            asked.append(("after close()", list(enumerate(texts))))
    differences = [_difference(cases, first, when, answers) for when, answers in asked]
    difference = next((d for d in differences if d is not None), None)
    assert difference is None or not deterministic, (
        f"write(cases) is deterministic (checked with deterministic=True): the same cases give the same texts, whatever "
        f"else is in the batch and whatever was asked before. {difference}. Draw nothing at random (greedy decoding, "
        "temperature 0, a fixed seed), keep nothing from one write to the next (a counter, earlier batches) and give each "
        "case the text written for it, wherever it stands in the batch. A teacher that samples is checked with "
        "deterministic=False"
    )
    return _report(name, cases, first, repeatable=difference is None, closes=closes, after=after)


def _count(cases: Sequence[ReflectionCase]) -> str:
    return f"{len(cases)} case" + ("" if len(cases) == 1 else "s")


def _name(teacher: Any, when: str) -> str:
    """``teacher.name``, checked to be a non-empty str (``when``: when it was read, as a failure says)."""
    kind = type(teacher).__name__
    try:
        name = getattr(teacher, "name", _MISSING)
    except Exception as exc:
        raise AssertionError(f"reading {kind}.name {when} raised {type(exc).__name__}: {exc}. Make 'name' a plain attribute") from exc
    if name is _MISSING:
        raise AssertionError(
            f"{kind} has no 'name' attribute: a teacher has a name, a non-empty str (every SR row records it in its 'teacher' "
            "column; errors about the teacher name it). Set one, from the teacher's settings: name = 'my-teacher' on the "
            "class, or self.name = f'my-teacher:{model}' in __init__"
        )
    if not isinstance(name, str) or not name.strip():
        raise AssertionError(
            broken(
                f"{kind}.name {when}",
                name,
                Said("a non-empty str"),
                "every SR row records a teacher's name in its 'teacher' column (a column of text)",
                "Set name to a str that says which teacher wrote the rationales, e.g. 'my-teacher:gpt-4o'.",
            )
        )
    return name


def _same_name(teacher: Any, name: str, when: str) -> None:
    again = _name(teacher, when)
    if again != name:
        raise AssertionError(
            broken(
                f"{type(teacher).__name__}.name {when}",
                again,
                name,
                "a teacher's name is stable: the same all along and for every teacher make_teacher builds (the builder reads "
                "it for every row, and a dataset's rows name the teacher that wrote them)",
                "Set it once, from the teacher's settings, not from a counter, the clock or a random id.",
            )
        )


def _check_write_method(teacher: Any) -> None:
    assert callable(getattr(teacher, "write", None)), (
        f"{type(teacher).__name__} has no write(cases) method: a teacher has a 'name' and 'write(cases)', which returns one "
        "rationale per case (see ee_middleware.trainers.datasets.teachers.Teacher)"
    )


class _WriteRaised(AssertionError):
    """``write`` raised ``error`` (the message names the call)."""

    def __init__(self, message: str, error: Exception) -> None:
        super().__init__(message)
        self.error = error


def _texts(teacher: Any, cases: Sequence[ReflectionCase], call: str) -> list[str | None]:
    """``teacher.write(cases)`` (a new list of ``cases``) as a list, checked against :data:`RULE` and for cases left
    as they were (``call``: the call, as failures name it)."""
    given = list(cases)
    before = [(id(case), copy.deepcopy(case)) for case in given]
    try:
        answer = teacher.write(given)
        texts = list(answer) if _is_texts_iterable(answer) else None  # a generator's own code runs here
    except Exception as exc:
        raise _WriteRaised(
            f"{call} raised {type(exc).__name__}: {exc} (see the traceback above). A teacher writes a rationale per case and "
            f"raises only when it cannot write at all: {RULE}",
            exc,
        ) from exc
    _check_untouched(given, before, call)
    if texts is None:
        raise AssertionError(broken(call, answer, Said(f"a list of {len(cases)} texts"), RULE, _shape_fix(answer)))
    if len(texts) != len(cases):
        got = Said(f"{len(texts)} text" + ("" if len(texts) == 1 else "s"))
        raise AssertionError(broken(call, got, Said(f"{len(cases)}, one per case"), RULE, f"{ONE_PER_CASE}; and none extra."))
    for index, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise AssertionError(
                broken(
                    f"{call}, its text {index}",
                    text,
                    Said("a str, or None"),
                    RULE,
                    f"Return each rationale as a str (a model answer's text, not the answer); {type(text).__name__} is no text.",
                )
            )
    return texts


def _is_texts_iterable(answer: Any) -> bool:
    """Whether ``answer`` is read as texts, one per item, as :func:`write_rationales` reads it."""
    return isinstance(answer, Iterable) and not isinstance(answer, str | bytes | Mapping)


def _shape_fix(answer: Any) -> str:
    if isinstance(answer, str | bytes):
        return f"A {type(answer).__name__} is one text, not one per case: return a list ([text] for one case). {ONE_PER_CASE}."
    if isinstance(answer, Mapping):
        return f"Return the texts in the order of the cases, not keyed (a case holds lists: it is no key). {ONE_PER_CASE}."
    return f"{ONE_PER_CASE}."


def _check_untouched(given: list[ReflectionCase], before: list[tuple[int, ReflectionCase]], call: str) -> None:
    """Fail unless ``given`` holds the same cases as ``before`` (in order, by identity), each as it was."""
    if [id(case) for case in given] != [identity for identity, _ in before]:
        raise AssertionError(
            broken(
                f"{call}, then the list of cases it was given",
                Said(f"{_count(given)}, not the ones it was given in their order"),
                Said(f"the {_count(before)} it was given, in their order"),
                "write(cases) leaves the list it was given as it was (the caller pairs each text with the case at its place)",
                "Read the list without changing it: iterate over it, or copy it (list(cases)) before sorting or popping.",
            )
        )
    for index, (case, (_, was)) in enumerate(zip(given, before, strict=True)):
        changed = [f.name for f in fields(ReflectionCase) if getattr(case, f.name) != getattr(was, f.name)]
        if changed:
            field = changed[0]
            raise AssertionError(
                broken(
                    f"{call}, then case {index}'s {field}",
                    getattr(case, field),
                    getattr(was, field),
                    f"write(cases) leaves every case as it was (it changed {', '.join(changed)}): the builder reads the "
                    "cases after the teacher wrote (the guards check each rationale against its case's tools)",
                    "Copy what you change (sorted(case.alternatives), list(case.calls)) instead of changing the case's own lists.",
                )
            )


def _check_some_rationale(texts: list[str | None], cases: list[ReflectionCase]) -> None:
    if not any(text and text.strip() for text in texts):
        raise AssertionError(
            broken(
                f"write(cases) of {_count(cases)}",
                texts,
                Said("a rationale (a text that is not empty) for some case"),
                "a teacher writes rationales: a case with none gives no SR row, so a teacher that writes none gives an empty SR dataset",
                "Return the rationale written for each case. A model teacher answering with empty texts may need more "
                "max_tokens (a reasoning model spends them on its reasoning).",
            )
        )


def _ask_again(teacher: Any, cases: list[ReflectionCase], batch_size: int) -> list[tuple[str, list[tuple[int, str | None]]]]:
    """The texts of ``cases`` asked again in other batches: for each asking, which case each text is for, and the text."""
    asked = [("asked again", list(enumerate(_texts(teacher, cases, f"write(cases) of {_count(cases)}, asked again"))))]
    alone = [(index, _texts(teacher, [case], f"write([case {index}])")[0]) for index, case in enumerate(cases)]
    asked.append(("written alone (write([case]))", alone))
    backwards = _texts(teacher, cases[::-1], f"write(cases) of {_count(cases)} in reverse order")
    asked.append(("in a batch in reverse order", [(len(cases) - 1 - at, text) for at, text in enumerate(backwards)]))
    full = [(at % len(cases), _copy(cases[at % len(cases)], at // len(cases))) for at in range(batch_size)]
    texts = _texts(teacher, [case for _, case in full], f"write(cases) of a batch of {batch_size} (the builder's, with repeated cases)")
    asked.append((f"in a batch of {batch_size}", [(index, text) for (index, _), text in zip(full, texts, strict=True)]))
    return asked


def _copy(case: ReflectionCase, round_: int) -> ReflectionCase:
    """``case`` itself on even rounds, an equal copy on odd ones (a batch holds the same case twice, and equal cases)."""
    return case if round_ % 2 == 0 else copy.deepcopy(case)


def _check_write_rationales(teacher: Any, cases: list[ReflectionCase]) -> None:
    try:
        write_rationales(teacher, cases)
    except EEError as exc:
        raise AssertionError(f"write_rationales, the check a dataset build makes of write(cases), refused it: {exc}") from exc


def _close(teacher: Any, what: str) -> bool:
    """Close ``teacher`` twice where it has a ``close()`` (whether it has one)."""
    close = getattr(teacher, "close", None)
    if not callable(close):
        return False
    for when in ("", ", called again"):
        try:
            close()
        except Exception as exc:
            raise AssertionError(
                f"close() of {what}{when} raised {type(exc).__name__}: {exc}. close() returns, called once or more, whether "
                "the teacher wrote or not: closing_teacher closes it when a build ends, also a build that failed before it "
                "wrote, and its caller may close it too. Release only what is still held, and forget it: "
                "if self._client is not None: self._client.close(); self._client = None"
            ) from exc
    return True


def _write_after_close(teacher: Any, cases: list[ReflectionCase]) -> list[str | None] | None:
    """What ``teacher`` wrote after ``close()``, or ``None`` where it refused with an error that says why."""
    try:
        return _texts(teacher, cases, f"write(cases) of {_count(cases)} after close()")
    except _WriteRaised as raised:
        error = raised.error
        if isinstance(error, EEError) or (not isinstance(error, _ACCIDENTAL) and str(error).strip()):
            return None
        raise AssertionError(
            f"write(cases) after close() raised {type(error).__name__}: {shown(str(error))}. After close(), write either "
            f"works (the teacher opens what it needs again, as ee's model teachers do) or raises an error that says the "
            f"teacher is closed; {type(error).__name__} is what using what close() released raises by accident. Open it "
            "again on use (make the client again when it is None), or raise RuntimeError(f'{self.name} is closed: make a "
            "new teacher') at the top of write()"
        ) from error


def _difference(cases: list[ReflectionCase], first: list[str | None], when: str, answers: list[tuple[int, str | None]]) -> str | None:
    """Where ``answers`` (case index, text) differ from ``first``, the texts of the kit's batch, as a failure says it."""
    for index, text in answers:
        if text != first[index]:
            before, after = _from_divergence(first[index], text)
            return f"Case {index} ({shown(cases[index].chosen, 60)}) got {before} in the kit's batch, then {after} {when}"
    return None


def _from_divergence(first: str | None, then: str | None, lead: int = 40) -> tuple[str, str]:
    """Two texts as a failure shows them: where both are texts, from a little before where they part (``…`` for what
    is left out), so that a difference past the first 160 characters shows."""
    if not (isinstance(first, str) and isinstance(then, str)):
        return shown(first), shown(then)
    common = next((at for at, (a, b) in enumerate(zip(first, then, strict=False)) if a != b), min(len(first), len(then)))
    start = max(0, common - lead)
    return tuple(("…" if start else "") + shown(text[start:]) for text in (first, then))  # type: ignore[return-value]


def _report(
    name: str, cases: list[ReflectionCase], texts: list[str | None], *, repeatable: bool, closes: bool, after: bool | None
) -> TeacherReport:
    dropped: Counter[str] = Counter()
    kept = rationales = 0
    for case, text in zip(cases, texts, strict=True):
        if not (text and text.strip()):
            continue
        rationales += 1
        cleaned, flags = check_rationale(text, case.chosen_tools, case.alternative_tools)
        if cleaned is None:
            dropped.update(flags)
        else:
            kept += 1
    return TeacherReport(
        name=name,
        cases=len(cases),
        texts=tuple(texts),
        rationales=rationales,
        kept=kept,
        dropped=dict(dropped),
        repeatable=repeatable,
        closes=closes,
        writes_after_close=after,
    )
