"""Capture: record LangGraph runs as OpenTelemetry GenAI spans and write them to the store."""
