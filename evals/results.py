"""Reading an eval run's results from outside the run: ``ee curriculum --from RUN`` scores tasks from them.

The rows are those the run's own outputs count (its ``results.parquet``), also where its journal is named; an unfinished
run is refused as ``ee eval gate`` refuses it (:func:`~ee_middleware.evals.runner.unfinished`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ee_middleware._text import json_lines, read_user_text
from ee_middleware.errors import ConfigError
from ee_middleware.evals.runner import JOURNAL, RESULTS, RUN_FILE, unfinished


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """An eval run's rows: ``results.parquet`` or ``results.jsonl`` (a run folder holding either, or the file).

    In an ``ee eval run`` folder (its ``run.json`` is that command's run record) the rows are those the run's own
    outputs count, its ``results.parquet``, also when its ``results.jsonl`` is named: that file is the run's journal,
    which keeps rows the run leaves out (tasks a smaller suite no longer has, kept for a later command naming them;
    trials the model server gave no answer to, run again by a later command). An unfinished run (stopped before writing
    ``results.parquet``, or before writing it anew after a resume) is refused as ``ee eval gate`` refuses it, saying
    how to finish the run. Any other folder's files (outcomes from another harness, whatever else it holds) are read as
    they are."""
    path = Path(path).expanduser()
    if path.is_dir():
        found = next((path / name for name in (RESULTS, JOURNAL) if (path / name).exists()), None)
        if found is None:
            raise ConfigError(f"{path} holds neither {RESULTS} nor {JOURNAL}: pass an eval run's folder (ee eval run --out).")
        path = found
    if not path.exists():
        raise ConfigError(f"No results at {path}: pass an eval run's folder or its {JOURNAL} / {RESULTS}.")
    run = path.parent
    if path.name in (JOURNAL, RESULTS) and _is_eval_run(run):
        why = unfinished(run)  # the gate's own test (a stale results.parquet included)
        if why:
            raise ConfigError(
                f"The eval run in {run} is unfinished: {why}. Its {JOURNAL} is the run's journal, not its results "
                "(it keeps rows the run leaves out: tasks a smaller suite no longer has, trials the model server gave no "
                f"answer to, which run again), and a {RESULTS} there is an earlier command's. Run the same "
                f"`ee eval run ... --out {run}` command again to finish it (it resumes where it stopped), then pass that folder."
            )
        path = run / RESULTS  # the run's results: its journal holds rows the run leaves out
    if path.suffix == ".parquet":
        import polars as pl

        try:
            return pl.read_parquet(path).to_dicts()
        except (OSError, pl.exceptions.PolarsError) as exc:  # (a damaged file: polars' ComputeError names no file)
            raise ConfigError(
                f"Cannot read the results {path}: {exc}. Pass an eval run's folder (ee eval run --out) whose results are whole, "
                f"or run that eval again to write them anew."
            ) from None
    rows = []
    text = read_user_text(path, "The results file", f"an eval run's folder or its {RESULTS}", "Results files are UTF-8 JSON lines.")
    for number, line in json_lines(text):
        try:
            rows.append(json.loads(line))
        except ValueError as exc:
            raise ConfigError(f"{path}, line {number}: not JSON ({exc}).") from None
    return rows


def _is_eval_run(folder: Path) -> bool:
    """Whether ``folder`` is an ``ee eval run`` folder: its ``run.json`` is that command's run record (a ``job`` object
    and a ``run_key``, written by every version), not merely a file of that common name (another harness's)."""
    try:
        record = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get("job"), dict) and "run_key" in record
