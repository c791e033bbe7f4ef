"""A store argument that is no store is refused where it is given, and a span processor's ``force_flush`` says when runs
were lost. Before: ``record_experience(graph, store=123)`` and ``ExperienceSpanProcessor(None)`` were taken, every run
recorded was then lost ("'int' object has no attribute 'write'"), and the processor's ``force_flush()`` answered
``True`` all the same (a recorder's ``flush()`` answered ``False``). REAL graphs, OpenTelemetry SDK and stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from ee_middleware import LocalExperienceStore, record_experience
from ee_middleware.capture.processor import ExperienceSpanProcessor
from ee_middleware.errors import ConfigError


@pytest.mark.parametrize("store", [123, 4.5, b"/tmp/store", object(), ["a"]])
def test_record_experience_refuses_a_store_that_is_no_store(react_graph: Any, store: object) -> None:
    with pytest.raises(ConfigError, match=r"record_experience\(store=\.\.\.\) must be a store: a folder path, a store spec"):
        record_experience(react_graph, app="shop", store=store)


@pytest.mark.parametrize("store", [None, 123, "/tmp/a-folder"])
def test_a_span_processor_refuses_a_store_that_is_no_store_object(store: object) -> None:
    with pytest.raises(ConfigError, match=r"ExperienceSpanProcessor's store must be an ExperienceStore object .*open_store"):
        ExperienceSpanProcessor(store)  # type: ignore[arg-type]


class _RefusingStore(LocalExperienceStore):
    """A real local store whose writes fail while ``full`` (a full disk)."""

    full = True

    def write(self, trajectories: Any) -> None:
        if self.full:
            raise OSError(28, "No space left on device")
        super().write(trajectories)


def test_force_flush_answers_false_when_runs_were_lost_since_the_last_flush(tmp_path: Path) -> None:
    from tests.capture.test_processor import _genai_run

    store = _RefusingStore(tmp_path / "s")
    processor = ExperienceSpanProcessor(store, strict=False)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("someone-elses-instrumentation")
    _genai_run(tracer, "plan a trip")
    assert processor.force_flush() is False and processor.stats.runs_failed == 1
    assert provider.force_flush() is True, "said once: nothing failed since"
    store.full = False
    _genai_run(tracer, "plan a party")
    assert processor.force_flush() is True
    assert store.trajectories()["task"].to_list() == ["plan a party"]
    provider.shutdown()
