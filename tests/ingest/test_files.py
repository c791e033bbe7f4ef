"""How trace files are read: compressed files, and memory that does not grow with the input.

Before: a gzip'd file was "not a text file ... Binary OTLP (protobuf) is not read", and a Collector's
zstd output got the same line (neither said what to do); and ingest held every file's text and every
span and trajectory at once, so its peak memory grew with the input (1091 MB for a 200 MB file).
"""

from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from ee_middleware.ingest import ingest_files
from tests.ingest.otlp_builders import GENAI_FILE, _request


def test_a_gzipped_file_is_read(tmp_path, store):
    path = tmp_path / "spans.json.gz"
    path.write_bytes(gzip.compress((json.dumps(_request(GENAI_FILE)) + "\n").encode()))
    report = ingest_files([path], store)
    assert (report.problems, len(report.ingested)) == (0, 1), report.errors
    assert next(store.iter_trajectories()).final_answer == "Done: invoice 7 refunded."


def test_a_truncated_gzip_file_keeps_the_spans_before_the_cut_and_says_so(tmp_path, store):
    other = copy.deepcopy(GENAI_FILE)
    for span in other:
        span["traceId"] = "6" * 32
    data = gzip.compress((json.dumps(_request(GENAI_FILE)) + "\n" + json.dumps(_request(other)) * 50 + "\n").encode())
    path = tmp_path / "cut.json.gz"
    path.write_bytes(data[: len(data) - 40])
    report = ingest_files([path], store)
    assert len(report.ingested) == 1 and report.problems == 1
    assert "cut.json.gz" in report.errors[0] and "gzip" in report.errors[0]


def test_zstd_and_protobuf_files_name_the_collector_setting_that_writes_json(tmp_path, store):
    zstd = tmp_path / "spans.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(64))
    proto = tmp_path / "spans.pb"
    proto.write_bytes(b"\x00\x00\x01\x0a\x0a\xfe\x02" + bytes(64))
    report = ingest_files([zstd, proto], store)
    assert report.problems == 2
    assert "zstd" in report.errors[0] and "format: json" in report.errors[0]
    assert "format: json" in report.errors[1]


def _big_file(path: Path, megabytes: int) -> Path:
    pad = "x" * 2000
    with path.open("w") as out:
        n = written = 0
        while written < megabytes * 1_000_000:
            spans = copy.deepcopy(GENAI_FILE)
            for span in spans:
                span["traceId"] = f"{n + 1:032x}"
                span["attributes"].append({"key": "pad", "value": {"stringValue": pad}})
            line = json.dumps(_request(spans)) + "\n"
            out.write(line)
            written += len(line)
            n += 1
    return path


_PEAK = textwrap.dedent(
    """
    import resource, sys
    from ee_middleware.ingest import ingest_files
    from ee_middleware.store.registry import open_store
    report = ingest_files(sys.argv[2:], open_store(sys.argv[1]))
    assert report.problems == 0, report.errors
    print(len(report.ingested), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


def _peak_mb(store: Path, *files: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(store), *map(str, files)], capture_output=True, text=True, check=True)
    ingested, peak = out.stdout.split()
    return int(ingested), int(peak)


def test_peak_memory_does_not_grow_with_the_input(tmp_path):
    small = _big_file(tmp_path / "small.jsonl", 2)
    big = _big_file(tmp_path / "big.jsonl", 40)
    small_runs, small_peak = _peak_mb(tmp_path / "s1", small)
    big_runs, big_peak = _peak_mb(tmp_path / "s2", big)
    assert big_runs > 15 * small_runs
    assert big_peak - small_peak < 40, f"peak RSS {small_peak} MB for 2 MB of spans, {big_peak} MB for 40 MB"


def test_a_run_of_ee_capture_that_called_no_model_is_not_blamed_on_the_instrumentation(tmp_path, store):
    """ee-middleware's own spans (exported over OTLP) of a run that called no model (resumed after a review, ended by a
    node): the skip said 'the instrumentation traced the agent but not its model calls; instrument the model client',
    advice that does not apply."""
    from ee_middleware.capture import semconv as sc
    from tests.ingest.otlp_builders import _request, _span, _write

    spans = [
        _span("b000000000000001", "invoke_agent shop", {sc.OPERATION_NAME: "invoke_agent", sc.EE_RECORDER: "r1", sc.EE_APP: "shop"}),
        _span(
            "b000000000000002",
            "execute_tool refund",
            {sc.OPERATION_NAME: "execute_tool", sc.EE_RECORDER: "r1", "gen_ai.tool.name": "refund"},
            parent="b000000000000001",
        ),
    ]
    report = ingest_files([_write(tmp_path / "ee.jsonl", _request(spans))], store)
    [error] = report.errors
    assert "recorded by ee-middleware that called no model" in error and "instrument the model client" not in error, error
