"""Capture's background work per run (issue 11.5: what competes with the agent under sustained load) is done once where
it repeats: the store writer is not woken at every run's end. Each stays exact: the same stored trajectories
(tests/capture/test_golden.py holds the stored rows and exported spans of real graphs)."""

from __future__ import annotations

import threading
import time

from opentelemetry.sdk.trace import TracerProvider

from ee_middleware import LocalExperienceStore
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.assembler import AssemblyOptions
from ee_middleware.capture.processor import ExperienceSpanProcessor


class _CountingCondition(threading.Condition):
    """The processor's own condition, counting the times its writer woke from a wait."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.wakes = 0

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        self.wakes += 1
        return woke


def test_the_store_writer_is_not_woken_at_every_runs_end(tmp_path):
    options = AssemblyOptions(source="record_experience", model_calls_required=False)  # runs that called no model are stored
    processor = ExperienceSpanProcessor(LocalExperienceStore(tmp_path / "written"), options=options, min_write_interval_s=0.6)
    processor._wake = _CountingCondition(processor._lock)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    try:
        processor.force_flush()
        for i in range(40):  # 40 runs ending while the writer waits out its interval (one write for all of them)
            root = tracer.start_span("invoke_agent bench", attributes={sc.OPERATION_NAME: sc.OP_INVOKE_AGENT, sc.EE_TRAJECTORY_ID: f"r{i}"})
            root.end()
            time.sleep(0.005)
        wakes = processor._wake.wakes
        assert processor.force_flush()
        assert LocalExperienceStore(tmp_path / "written").trajectories().height == 40
    finally:
        provider.shutdown()
    # its first wait (an empty queue) ends with the first run; then it waits out min_write_interval_s once (a few more
    # wake-ups where the machine is slow), not once per run
    assert wakes <= 5, f"the writer woke {wakes} times for 40 runs"
