"""A long run's spool line is written from its pieces: its steps encoded one by one and never copied into one line.

A run's steps each hold the conversation so far, so a long run with large tool results makes a line far larger than its
conversation (50 steps of 100 KB results: 141 MB). Encoded whole, that line was held three times over while it was
written (pydantic's JSON, the framed line, the batch joined for its write) besides the buffer pydantic grows it in; now
its pieces are held once. The bytes written are the same (``test_local_store``'s byte-for-byte test covers long runs)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.testing.store_conformance import sample_trajectory


def _long_run(steps: int, result_chars: int):
    """A run of ``steps`` tool calls whose results are ``result_chars`` long, each step's state the conversation so far."""
    run = sample_trajectory("long", steps=steps)
    page = "lorem ipsum dolor sit amet " * (result_chars // 27)
    states, history = [], list(run.steps[0].state)
    for step in run.steps:
        states.append(step.model_copy(update={"state": list(history)}))
        if step.action.tool_call is not None:
            history += [
                {"role": "assistant", "content": "", "tool_calls": [step.action.tool_call.to_openai()]},
                {"role": "tool", "tool_call_id": step.action.tool_call.id, "content": page},
            ]
    return run.model_copy(update={"steps": states, "messages": history})


def test_a_long_runs_steps_are_pieces_of_its_line_and_short_runs_stay_whole() -> None:
    long_run, short_run = _long_run(12, 100), sample_trajectory("short", steps=3)
    (pieces,) = spool.model_line_pieces("trajectory", [long_run], piecewise=(Trajectory, "steps"))
    step_pieces = [p for p in pieces if p.startswith(b'{"trajectory_id"')]
    assert len(step_pieces) == len(long_run.steps) == 13
    assert b"".join(pieces) == spool.encode_line({"kind": "trajectory", "data": long_run.model_dump(mode="json")})
    (whole,) = spool.model_line_pieces("trajectory", [short_run], piecewise=(Trajectory, "steps"))
    assert len(whole) == 4, "checksum, head, the run's JSON, end"
    (unsplit,) = spool.model_line_pieces("trajectory", [long_run])
    assert len(unsplit) == 4 and b"".join(unsplit) == b"".join(pieces), "not piecewise: one piece, the same line"


def test_writing_a_long_run_holds_its_line_once_not_three_times(tmp_path: Path) -> None:
    """Python's allocations while the store writes a run whose line is about 9 MB, in steps of 300 KB at most: at most about
    one line more than before the write (its pieces, and writes of up to 1 MiB joined; a write of the line whole held two
    lines at its peak, pydantic's JSON and the framed line, then the framed line and the batch joined)."""
    run = _long_run(60, 5_000)
    line_size = len(spool.model_lines("trajectory", [run])[0])
    assert line_size > 8_000_000 and max(len(s.model_dump_json()) for s in run.steps) < 1 << 20
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("first")])  # the segment is open: its set-up is not counted
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert store.write([run]) == 1
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    store.close()
    assert peak < 1.4 * line_size, f"peak {peak} bytes for a line of {line_size}"
    assert LocalExperienceStore(store.root).get("long") == run


def test_pieces_of_a_long_runs_line_are_written_without_being_joined(tmp_path: Path) -> None:
    """Pieces of 64 KiB or more (a long run's steps) are written as they are: joined into writes of 1 MiB they were each
    copied once more, memory the heap then kept (a run of 1,000 steps of 1 KB results: 150 MB more while written)."""
    step = b'{"state":"' + b"x" * 200_000 + b'"}'
    line = (b"00000000 ", b'{"kind":"t","data":{"steps":[', *([step, b","] * 19), step, b"]}}\n")
    writer = spool.SpoolWriter(tmp_path / "spool", fsync=False)
    writer.append_lines([spool.encode_line({"first": 1})])
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        writer.append_lines([line, spool.encode_line({"after": 2})])
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    segment = writer.seal()
    assert segment is not None and segment.read_bytes().endswith(b"".join(line) + spool.encode_line({"after": 2}))
    assert peak < 100_000, f"{peak} bytes allocated writing a line of {sum(map(len, line))}"
