"""An exception that is merely *named* like a cancellation is the run's own failure, as capture decides it
(``isinstance(exc, asyncio.CancelledError)``): ``concurrent.futures.CancelledError`` (an ``Exception`` a cancelled
future's ``result()`` raises, after a pool's ``shutdown(cancel_futures=True)``) or an app's own ``CancelledError``
("order A-7 was cancelled by the customer"). Ingest read the bare name (``error.type``, the module stripped) and stored
such a run ``interrupted`` (``cancelled: CancelledError``), the failing call without its observation.

The spans are built as the instrumentations write them (``_failed`` in ``test_cancelled_runs``): OpenInference records
an ``Exception`` with the SDK's ``record_exception`` (``exception.type`` qualified, ``__main__.CancelledError``) and its
status as the ``repr`` then the traceback (whose last line Python qualifies but for builtins and ``__main__``);
OpenLLMetry writes the bare ``error.type`` and the SDK's event.
"""

from __future__ import annotations

from typing import Any

import pytest

from ee_middleware.capture.assembler import _cancellation
from ee_middleware.capture.spandata import SpanData
from tests.ingest.test_cancelled_runs import _cancelled_run, _failed, _one
from tests.ingest.test_instrumentations import _steps

ORDER = "order A-7 was cancelled by the customer"


def _stacktrace(outcome: dict[str, Any], raised: str, message: str) -> dict[str, Any]:
    """``outcome`` with the SDK's ``exception.stacktrace`` on its event (Python's traceback, ``raised`` its last line)."""
    line = f"{raised}: {message}" if message else raised
    trace = f'Traceback (most recent call last):\n  File "app.py", line 3, in fetch\n    raise Error()\n{line}\n'
    for event in outcome.get("events", ()):
        event["attributes"].append({"key": "exception.stacktrace", "value": {"stringValue": trace}})
    return outcome


# (what the event's exception.type says, what the traceback's last line says, the message)
NOT_CANCELLED = {
    "concurrent.futures": ("concurrent.futures._base.CancelledError", "concurrent.futures._base.CancelledError", ""),
    "app's own, __main__": ("__main__.CancelledError", "CancelledError", ORDER),
    "app's own, module": ("shop.orders.CancelledError", "shop.orders.CancelledError", ORDER),
}


@pytest.mark.parametrize("case", list(NOT_CANCELLED))
def test_an_exception_only_named_cancelled_error_fails_the_run_with_its_observation(store, tmp_path, case):
    """OpenInference's spans of a tool raising it, which fails the run: ``error`` with the exception, the failing call
    observed with it (before: ``interrupted``, ``cancelled: CancelledError``, the call without an observation)."""
    kind, raised, message = NOT_CANCELLED[case]
    failure = _stacktrace(_failed(kind, message, raised=raised), raised, message)
    trajectory = _one(
        store, _cancelled_run(tmp_path / "run.jsonl", failure, _stacktrace(_failed(kind, message, raised=raised), raised, message))
    )
    assert trajectory.status == "error"
    assert kind in (trajectory.error or "") and message in (trajectory.error or "")
    (*_, (name, arguments, observation, is_error)) = _steps(trajectory)
    assert (name, arguments, is_error) == ("slow", {"key": "z"}, True)
    assert observation == f"{kind}: {message}"


def test_openllmetrys_bare_error_type_is_read_with_the_events_qualified_one(store, tmp_path):
    """OpenLLMetry: ``error.type = type(e).__name__`` (bare) and the SDK's event with the qualified type. The qualified
    one decides (before: the bare ``error.type`` was read first, and the run was taken for cancelled)."""
    kind = "concurrent.futures._base.CancelledError"
    root = _stacktrace(_failed(kind, "", status=""), kind, "")
    slow = {**_stacktrace(_failed(kind, "", status=""), kind, ""), "attrs": {"error.type": "CancelledError"}}
    trajectory = _one(store, _cancelled_run(tmp_path / "run.jsonl", root, slow, lookup_fails=False))
    assert trajectory.status == "error"
    assert _steps(trajectory)[-1] == ("slow", {"key": "z"}, f"{kind}: ", True)


def _span(status: str = "", events: tuple[tuple[str, dict[str, Any]], ...] = (), **attributes: Any) -> SpanData:
    return SpanData(
        trace_id="t" * 32,
        span_id="s" * 16,
        parent_span_id=None,
        name="LangGraph",
        start_ns=0,
        end_ns=1,
        attributes=attributes,
        status_code="ERROR",
        status_message=status,
        events=events,
    )


@pytest.mark.parametrize(
    ("span", "cancelled"),
    [
        # OpenInference, asyncio's: the event bare (a BaseException), the traceback qualified
        (
            _span(
                "CancelledError()Traceback (most recent call last):\n\n\n  File ...\n\n\nasyncio.exceptions.CancelledError",
                (("exception", {"exception.type": "CancelledError"}),),
            ),
            "CancelledError",
        ),
        # the traceback's last block decides (a KeyboardInterrupt while handling another error)
        (
            _span(
                "Traceback (most recent call last):\n  x\nconcurrent.futures._base.CancelledError\n\nDuring handling of the above "
                "exception, another exception occurred:\n\nTraceback (most recent call last):\n  y\nKeyboardInterrupt\n"
            ),
            "KeyboardInterrupt",
        ),
        # an app's own class written in a traceback from __main__ (Python leaves its module out)
        (_span(f"CancelledError('{ORDER}')Traceback (most recent call last):\n  x\nCancelledError: {ORDER}"), None),
        # a status message naming another module's CancelledError (the old fallback took any dotted prefix)
        (_span("concurrent.futures._base.CancelledError: "), None),
        (_span("asyncio.exceptions.CancelledError: "), "CancelledError"),
        # bare names with nothing qualified anywhere: builtins are named bare by every writer; a bare CancelledError
        # could be any module's, and is none on its own
        (_span("", **{"error.type": "KeyboardInterrupt"}), "KeyboardInterrupt"),
        (_span("GeneratorExit()"), "GeneratorExit"),
        (_span("", **{"error.type": "CancelledError"}), None),
        (_span("", (("exception", {"exception.type": "CancelledError"}),)), None),
        (_span(f"CancelledError('{ORDER}')"), None),
    ],
)
def test_a_cancellation_is_told_by_its_qualified_type(span, cancelled):
    """What ``_cancellation`` reads from a failed span, for each way it is written."""
    assert _cancellation(span) == cancelled


def test_a_bare_cancelled_error_below_a_cancelled_root_is_the_same_cancellation():
    """A tool span with only the bare name (an exporter that dropped its events), below a root cancelled by asyncio's
    ``CancelledError``: the cancellation on its way up, no observation."""
    bare = _span("", **{"error.type": "CancelledError"})
    assert (_cancellation(bare, "CancelledError"), _cancellation(bare, None)) == ("CancelledError", None)
