"""Ingest: turn trace files written by any GenAI instrumentation into trajectories."""

from ee_middleware.ingest.service import IngestReport, ingest_files, ingest_spans

__all__ = ["IngestReport", "ingest_files", "ingest_spans"]
