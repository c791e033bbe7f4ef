"""Capture's memory on long runs with large tool results: the app's peak against the same app unwrapped.

    .venv/bin/python benchmarks/capture_long_runs.py [--steps 50,100] [--result-kb 100] [--repeats 3]
        [--offload thread,process] [--before-ref REF]

A real LangGraph ReAct agent (``create_react_agent``, a scripted model) calls a tool ``--steps`` times; each result is
``--result-kb`` KB of text, so the conversation grows to steps x result-kb, and a run's record, whose every step holds the
conversation so far (what the model saw), grows with the square of the steps: 50 steps of 100 KB make a spool line of
about 140 MB. Each side runs in a fresh Python process (cold), its rounds interleaved with the other sides':

* ``plain``: the graph unwrapped, the baseline: what the app holds without capture;
* ``ee-thread`` / ``ee-process``: wrapped with ``record_experience(offload=...)``, the run flushed to the store before the
  process measures its peak (capture's work done, as at the end of a busy service's run);
* ``ee@REF-...`` (with ``--before-ref``): the same, from the code at a git revision.

Reported per side, min/median/max over the repeats: the app process's peak RSS (``VmHWM``), the capture process's peak
(``process`` mode: it assembles and writes there; its ``VmHWM`` read after the flush, before it ends), the memory capture added (app peak minus the plain side's median), the
spool line's size and the added memory in lines. Every wrapped side must store the same steps (states, calls,
observations: one digest), or the script fails. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _ee import before_tree, peak_rss_mib, spread

REPO = Path(__file__).resolve().parents[1]


def _one(side: str, steps: int, result_kb: int, store: Path) -> dict[str, Any]:
    """One app in this (fresh) process: run the agent once, wrapped or not; its peaks, line size and stored steps' digest."""
    import random
    import string
    import warnings

    warnings.simplefilter("ignore")
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langgraph.prebuilt import create_react_agent

    from ee_middleware.scripted import ScriptedChatModel

    @tool
    def fetch(url: str) -> str:
        """Fetch a page."""
        rng = random.Random(url)
        words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(result_kb * 1024 // 5)]
        return " ".join(words)[: result_kb * 1024]

    calls = [{"name": "fetch", "args": {"url": f"https://example.com/p{i}"}, "id": f"call_{i}", "type": "tool_call"} for i in range(steps)]
    script = [AIMessage(content="", tool_calls=[call]) for call in calls] + [AIMessage(content="done")]
    graph = create_react_agent(ScriptedChatModel(script=script), [fetch])
    inputs = {"messages": [("user", "read the pages")]}
    config = {"recursion_limit": 10 * steps + 10}
    if side == "plain":
        result = graph.invoke(inputs, config)
        assert len(result["messages"]) == 2 * steps + 2
        return {"app_peak_mib": peak_rss_mib(), "capture_process_peak_mib": 0.0}
    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore

    agent = record_experience(graph, app="long", store=store, offload=side.rsplit("-", 1)[1])
    agent.invoke(inputs, config)
    assert agent.flush(), "the run was not stored"
    app_peak = peak_rss_mib()
    child = getattr(getattr(agent.recorder, "offload", None), "pid", None)  # the capture process (offload="process")
    child_peak = peak_rss_mib(child) if child else 0.0  # read while it runs: it ends with close()
    agent.recorder.close()
    (segment,) = sorted((store / "spool").glob("*.jsonl"))
    line = max(len(line) for line in segment.read_bytes().splitlines())
    (run,) = LocalExperienceStore(store).iter_trajectories()
    stored = [[s.state, s.action.model_dump(mode="json"), s.observation and s.observation.content] for s in run.steps]
    assert len(run.steps) == steps + 1
    return {
        "app_peak_mib": app_peak,
        "capture_process_peak_mib": child_peak,
        "line_mib": line / 2**20,
        "digest": hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="50,100", help="Tool calls per run; a comma-separated list runs several sizes.")
    parser.add_argument("--result-kb", type=int, default=100, help="Size of each tool result in KB.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--offload", default="thread,process", help="Capture modes to run (comma-separated).")
    parser.add_argument("--before-ref", help="Also run the wrapped sides from the code at this git revision.")
    parser.add_argument("--out", type=Path, help="Write the results as JSON here too.")
    parser.add_argument("--one", nargs=4, metavar=("SIDE", "STEPS", "RESULT_KB", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        side, steps, result_kb, store = args.one
        print(json.dumps(_one(side, int(steps), int(result_kb), Path(store))))
        return
    load_before = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, Any] = {"load_average_1_5_15_before": load_before, "result_kb": args.result_kb, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {"plain": os.environ.get("PYTHONPATH", "")}
        for mode in args.offload.split(","):
            sides[f"ee-{mode}"] = os.environ.get("PYTHONPATH", "")
        if args.before_ref:
            tree = before_tree(args.before_ref, Path(tmp))
            for mode in args.offload.split(","):
                sides[f"ee@{args.before_ref}-{mode}"] = str(tree)
        for steps in (int(s) for s in args.steps.split(",")):
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
            for repeat in range(args.repeats):
                order = list(sides)
                order = order[repeat % len(order) :] + order[: repeat % len(order)]
                for side in order:
                    store = Path(tmp) / f"store-{steps}-{repeat}-{side.replace('@', '_')}"
                    env = {**os.environ, "PYTHONPATH": sides[side]} if sides[side] else dict(os.environ)
                    child_side = "plain" if side == "plain" else "ee-" + side.rsplit("-", 1)[1]
                    command = [sys.executable, __file__, "--one", child_side, str(steps), str(args.result_kb), str(store)]
                    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, check=False)
                    if done.returncode != 0:
                        sys.exit(f"{side} ({steps} steps) failed:\n{done.stderr[-3000:]}")
                    runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
            digests = {run["digest"] for side, side_runs in runs.items() if side != "plain" for run in side_runs}
            assert len(digests) == 1, f"the wrapped sides stored different steps ({len(digests)} digests)"
            plain = spread(run["app_peak_mib"] for run in runs["plain"])[1]
            size: dict[str, Any] = {}
            for side, side_runs in runs.items():
                row: dict[str, Any] = {
                    "app_peak_mib_min_median_max": spread((run["app_peak_mib"] for run in side_runs), 1),
                    "capture_process_peak_mib_min_median_max": spread((run["capture_process_peak_mib"] for run in side_runs), 1),
                }
                if side != "plain":
                    line = side_runs[0]["line_mib"]
                    added = [max(run["app_peak_mib"], run["capture_process_peak_mib"]) - plain for run in side_runs]
                    row["spool_line_mib"] = round(line, 1)
                    row["added_mib_min_median_max"] = spread(added, 1)
                    row["added_in_lines_median"] = round(spread(added)[1] / line, 2)
                size[side] = row
            results["sizes"][str(steps)] = size
    results["load_average_1_5_15_after"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
