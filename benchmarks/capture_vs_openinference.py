"""Added CPU per run: ee's capture vs OpenInference's LangChain instrumentation, on the same graph.

    .venv/bin/python benchmarks/capture_vs_openinference.py [--instr-python /tmp/instr-venv/bin/python] [--repeats 5]

OpenInference cannot be installed beside ee's dependencies here, so each side runs in its own
interpreter, alternately (interleaved repeats), each against its own unwrapped baseline of the same
ReAct graph (benchmarks/capture_overhead.py: instant model, trivial tools):

- ee: ``record_experience`` writing a training-ready trajectory to a local store; the work still
  queued at the end of the round is drained and counted. Once per capture mode (``--ee-offload``,
  default ``thread,process``); in process mode the CPU of capture's child process is counted too.
- OpenInference: ``LangChainInstrumentor`` with the OpenTelemetry SDK, a ``BatchSpanProcessor`` and
  an exporter that encodes every span to OTLP protobuf bytes (what an OTLP exporter sends) and
  drops them; ``force_flush`` at the end of the round is counted.

Reported: process CPU per run (ms) for each side's baseline and instrumented graph, the added CPU,
and ee's added CPU as a share of OpenInference's (paired by repeat; min/median/max; target: <= 0.25), with the
load average before and after, each side's versions of langchain-core, langgraph and the OpenTelemetry SDK (a warning
when they differ: the callback machinery's cost is part of both sides), each side's peak memory (``VmHWM``; capture's
child process not counted) and the bytes OpenInference's spans encoded to (a side that recorded nothing is an error).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SECONDS = 5.0


def _rounds(plain: Any, instrumented: Any, drain: Any, rounds: int, seconds: float, child_cpu: Any = None) -> dict[str, float]:
    """``child_cpu``: the CPU seconds of the instrumentation's own child process so far (read after ``drain``)."""
    from capture_overhead import TASK

    def cpu_per_run(graph: Any, extra: Any = None) -> float:
        child0 = child_cpu() if child_cpu is not None and extra is not None else 0.0
        runs, cpu0, start = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - start < seconds:
            graph.invoke(TASK)
            runs += 1
        if extra is not None:
            extra()
        child = child_cpu() - child0 if child_cpu is not None and extra is not None else 0.0
        return (time.process_time() - cpu0 + child) / runs * 1e3

    for _ in range(5):
        plain.invoke(TASK)
        instrumented.invoke(TASK)
    drain()
    base, inst = [], []
    for _ in range(rounds):
        base.append(cpu_per_run(plain))
        inst.append(cpu_per_run(instrumented, drain))
    return {"plain_cpu_ms_per_run": statistics.median(base), "instrumented_cpu_ms_per_run": statistics.median(inst)}


COMPARED_PACKAGES = ("langchain-core", "langgraph", "opentelemetry-sdk")
"""Whose versions each side reports: the callback and graph machinery both sides pay for, which must be the same."""


def _side_facts() -> dict[str, Any]:
    """What each side's interpreter reports beside its timings: its versions of :data:`COMPARED_PACKAGES` and Python, and
    its process's peak memory (``VmHWM``)."""
    from importlib import metadata

    from _ee import peak_rss_mib

    versions: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in COMPARED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "peak_rss_mib": round(peak_rss_mib(), 1)}


def side_ee(rounds: int, seconds: float, offload: str = "thread") -> dict[str, float]:
    from capture_overhead import build_graph

    from ee_middleware import record_experience

    graph = build_graph()
    with tempfile.TemporaryDirectory() as tmp:
        wrapped = record_experience(graph, app="bench", store=Path(tmp) / "experience", offload=offload)
        try:
            return _rounds(graph, wrapped, wrapped.flush, rounds, seconds, child_cpu=lambda: wrapped.recorder.offload_cpu_s)
        finally:
            wrapped.recorder.close()


def side_openinference(rounds: int, seconds: float) -> dict[str, float]:
    from openinference.instrumentation.langchain import LangChainInstrumentor
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class OTLPBytes(SpanExporter):
        """Encodes spans as an OTLP exporter would, then drops them."""

        def __init__(self) -> None:
            self.bytes = 0

        def export(self, spans: Any) -> SpanExportResult:
            self.bytes += len(encode_spans(spans).SerializeToString())
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            pass

    from capture_overhead import build_graph

    plain = build_graph()
    provider = TracerProvider()
    instrumentor = LangChainInstrumentor()
    # instrumenting is process-wide: time the plain graph with it off, the instrumented one with it on
    instrumented = build_graph()

    class Toggled:
        def __init__(self, graph: Any, on: bool) -> None:
            self.graph, self.on = graph, on

        def invoke(self, task: Any) -> Any:
            if self.on != instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument(tracer_provider=provider) if self.on else instrumentor.uninstrument()
            return self.graph.invoke(task)

    exporter = OTLPBytes()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    try:
        result = _rounds(Toggled(plain, False), Toggled(instrumented, True), provider.force_flush, rounds, seconds)
        return {**result, "exported_otlp_bytes": exporter.bytes}
    finally:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
        provider.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["ee", "openinference"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ee-offload", default="thread,process", help="ee's capture modes to measure (comma-separated)")
    parser.add_argument(
        "--instr-python", default="/tmp/instr-venv/bin/python", help="a Python with openinference-instrumentation-langchain"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats of both sides (min/median/max are reported)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=SECONDS)
    args = parser.parse_args()
    if args.side is not None:
        result = side_ee(args.rounds, args.seconds, args.ee_offload) if args.side == "ee" else side_openinference(args.rounds, args.seconds)
        print(json.dumps({**result, **_side_facts()}))
        return 0
    if not Path(args.instr_python).exists():
        print(
            f"error: {args.instr_python} not found; make a venv with openinference-instrumentation-langchain and pass --instr-python",
            file=sys.stderr,
        )
        return 2
    load_before = [round(x, 2) for x in os.getloadavg()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    ee_sides = [f"ee offload={mode.strip()}" for mode in args.ee_offload.split(",") if mode.strip()]
    added: dict[str, list[float]] = {side: [] for side in [*ee_sides, "openinference"]}
    raw: dict[str, list[dict[str, float]]] = {side: [] for side in added}
    sides = [(side, sys.executable, ["--side", "ee", "--ee-offload", side.split("=")[1]]) for side in ee_sides]
    sides.append(("openinference", args.instr_python, ["--side", "openinference"]))
    for repeat in range(args.repeats):  # interleaved, the order rotated every repeat
        for side, python, flags in sides[repeat % len(sides) :] + sides[: repeat % len(sides)]:
            cmd = [python, str(Path(__file__).resolve()), *flags, "--rounds", str(args.rounds), "--seconds", str(args.seconds)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=600).stdout
            result = json.loads(out.strip().splitlines()[-1])
            if side == "openinference" and not result["exported_otlp_bytes"]:
                print("error: OpenInference's side exported no span: its instrumentation recorded nothing", file=sys.stderr)
                return 1
            raw[side].append(result)
            added[side].append(result["instrumented_cpu_ms_per_run"] - result["plain_cpu_ms_per_run"])

    from _ee import spread

    versions = {side: runs[0]["versions"] for side, runs in raw.items()}
    differing = sorted({name for v in versions.values() for name in COMPARED_PACKAGES if v[name] != versions["openinference"][name]})
    if differing:
        print(
            f"warning: the two interpreters differ in {', '.join(differing)} ({versions}): part of what is compared is "
            "then those libraries' own cost; give --instr-python a venv with the same versions",
            file=sys.stderr,
        )
    report: dict[str, Any] = {
        "load_average_1_5_15_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "repeats": args.repeats,
        "versions": versions,
        "same_versions": not differing,
        "peak_rss_mib_max": {side: max(r["peak_rss_mib"] for r in runs) for side, runs in raw.items()},
        "openinference_exported_otlp_bytes_median": statistics.median(r["exported_otlp_bytes"] for r in raw["openinference"]),
        "openinference_added_cpu_ms_per_run_min_median_max": spread(added["openinference"]),
        "plain_cpu_ms_per_run_openinference_side_median": round(
            statistics.median(r["plain_cpu_ms_per_run"] for r in raw["openinference"]), 3
        ),
        "target_share": 0.25,
    }
    for side in ee_sides:
        shares = [e / o for e, o in zip(added[side], added["openinference"], strict=True)]  # paired by repeat
        report[side] = {
            "added_cpu_ms_per_run_min_median_max": spread(added[side]),
            "share_of_openinference_added_cpu_min_median_max": spread(shares),
            "plain_cpu_ms_per_run_median": round(statistics.median(r["plain_cpu_ms_per_run"] for r in raw[side]), 3),
        }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
