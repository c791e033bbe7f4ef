"""What benchmark scripts share: running the ``ee`` CLI (the one installed beside this interpreter), whether the
project's modules load from bytecode, a process's own peak memory, and the project's code at an earlier revision."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def ee(*args: Any) -> str:
    """Run ``ee ARGS...`` and return its standard output; exit with its stderr's tail if it fails."""
    command = [str(Path(sys.executable).with_name("ee")), *(str(a) for a in args)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def json_child(command: list[str], what: str) -> Any:
    """Run ``command`` (a benchmark's own child: a cold, fresh Python process) from the repository root and return the
    JSON its last line of standard output holds; exit naming ``what`` with its stderr's tail if it fails."""
    import json

    done = subprocess.run(command, check=False, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def project_bytecode() -> str:
    """Whether the project's modules load from current bytecode (as from an installed wheel) or compile from source in
    every new process (an editable install where ``PYTHONDONTWRITEBYTECODE`` is set: `make install` compiles them):
    a fork server or worker then spends more of its start-up importing. ``"compiled"``, ``"source"`` or ``"mixed (N of
    M compiled)"``."""
    import importlib.util
    import os

    import ee_middleware

    sources = sorted(Path(ee_middleware.__file__).parent.rglob("*.py"))
    compiled = 0
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        compiled += cached.exists() and os.stat(cached).st_mtime >= os.stat(source).st_mtime
    if compiled == len(sources):
        return "compiled"
    return "source" if not compiled else f"mixed ({compiled} of {len(sources)} compiled)"


def peak_rss_mib(pid: int | None = None) -> float:
    """The peak resident memory in MiB of this process (or of process ``pid``: 0 when it is gone). Linux's ``VmHWM``
    belongs to the process image, so it starts again at ``exec``; ``ru_maxrss`` (also ``wait4``'s) keeps the high-water
    mark of the image before ``exec``, i.e. of the parent that forked this process, and over-reports a small child
    (``ru_maxrss`` is this process's fallback off Linux)."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    if pid is not None:
        return 0.0
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spread(values: Iterable[float], digits: int = 3) -> list[float]:
    """``[min, median, max]`` of ``values``, each rounded to ``digits``: how every benchmark reports its repeats."""
    import statistics

    values = list(values)
    return [round(min(values), digits), round(statistics.median(values), digits), round(max(values), digits)]


def before_tree(ref: str, root: Path) -> Path:
    """The code at git revision ``ref`` as an importable tree under ``root`` (``ee_middleware`` with its mapped folders
    ``trainers``, ``evals`` and ``adapters`` inside it, as the installed package maps them): put it first on
    ``PYTHONPATH`` to run a benchmark's side from that code (``--before-ref``)."""
    repo = Path(__file__).resolve().parents[1]
    target = root / "before"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", ref, "ee_middleware", "trainers", "evals", "adapters"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    for folder in ("trainers", "evals", "adapters"):
        (target / folder).rename(target / "ee_middleware" / folder)
    return target
