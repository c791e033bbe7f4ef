"""Ingest spans into an experience store: group by trace, split into runs, assemble, write."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ee_middleware.capture.assembler import AssemblyOptions, assemble, split_runs
from ee_middleware.capture.redaction import Redactor
from ee_middleware.capture.spandata import SpanData
from ee_middleware.errors import IngestError
from ee_middleware.ingest.otlp_json import read_otlp_json
from ee_middleware.records import Approval, Trajectory, utcnow
from ee_middleware.store.protocol import ExperienceStore


@dataclass
class IngestReport:
    """What an ingest did: counts, the ids written, and one message per problem."""

    files: int = 0
    spans: int = 0
    runs: int = 0
    ingested: list[str] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "spans": self.spans,
            "runs": self.runs,
            "ingested": len(self.ingested),
            "already_stored": len(self.already_stored),
            "errors": self.errors,
            "trajectory_ids": self.ingested,
        }


def ingest_spans(
    spans: Iterable[SpanData],
    store: ExperienceStore,
    *,
    app: str | None = None,
    approve_by: str | None = None,
    redactor: Redactor | None = None,
    report: IngestReport | None = None,
) -> IngestReport:
    """Assemble spans into trajectories and write the new ones (ingest is idempotent by id)."""
    report = report or IngestReport()
    options = AssemblyOptions(app=app, redactor=redactor or Redactor(), source="otlp-ingest")
    by_trace: dict[str, list[SpanData]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
        report.spans += 1
    known = set(store.trajectories()["id"].to_list())
    new: list[Trajectory] = []
    for trace_id, trace_spans in by_trace.items():
        runs = split_runs(trace_spans)
        if not runs:
            report.errors.append(
                f"trace {trace_id}: no agent run found (no 'chat' or 'invoke_agent' spans among {len(trace_spans)}); skipped."
            )
        for run in runs:
            report.runs += 1
            try:
                trajectory = assemble(run, options)
            except IngestError as exc:
                report.errors.append(str(exc))
                continue
            if trajectory.id in known:
                report.already_stored.append(trajectory.id)
                continue
            if approve_by:
                trajectory.approval = Approval(status="approved", by=approve_by, at=utcnow(), reason="approved at ingest")
            known.add(trajectory.id)
            new.append(trajectory)
    store.write(new)
    report.ingested.extend(t.id for t in new)
    return report


def ingest_files(paths: Sequence[str | Path], store: ExperienceStore, **kwargs: object) -> IngestReport:
    """Read OTLP JSON files and ingest their spans; problems are collected, never raised."""
    report = IngestReport()
    spans: list[SpanData] = []
    for path in paths:
        parsed = read_otlp_json(path)
        report.files += 1
        report.errors.extend(parsed.errors)
        spans.extend(parsed.spans)
    return ingest_spans(spans, store, report=report, **kwargs)  # type: ignore[arg-type]
