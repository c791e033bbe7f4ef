"""Capture overhead on the worst case: a ReAct graph with an instant model and trivial tools.

    .venv/bin/python benchmarks/capture_overhead.py [--runs 50] [--rounds 9]

The same compiled graph runs unwrapped and wrapped with ``record_experience``, alternating in
rounds so that both see the same machine state; the reported ratio is the median over rounds of
wrapped/unwrapped wall time on the agent's thread. Background work (span finishing, assembly,
Parquet-spool writes) is drained after each wrapped round and reported separately: it runs off the
agent's thread, which is the point of the design, and deferred while runs are in flight (see
ee_middleware/capture/worker.py). ``ratio_including_drain`` adds that work back: the total CPU a
process pays when its agent never waits on a model. Target: ratio <= 1.10. Which side runs first alternates by round;
the wrapped graph must return what the plain one does, and every stored trajectory must hold the run's steps with the
observations the tools gave (both modes), or the script fails. The load average is printed before and after, and
``start_up`` (both modes): ``record_experience`` itself and the first wrapped run against a warm plain run (capture's
threads or child process starting, its first imports: the first mode measured pays those).

    .venv/bin/python benchmarks/capture_overhead.py --sustained-s 5 [--rounds 5] [--offload thread,process]

Sustained mode: each round runs the graph back to back for longer than the finisher's deferral
bound (2 s), unwrapped, with a do-nothing callback handler (``callback_floor``: what a
callback-based recorder costs before it records anything), and wrapped once per capture mode (``offload="thread"``: background threads
of the agent's process; ``"process"``: capture's child process), the order rotated every round, so
background work lands inside the timed window and competes with the agent, for the interpreter
lock (threads) or for the CPUs (the child), as it does in a busy service. Each mode is reported
against the same rounds' unwrapped runs, and its CPU includes its child process's. Reported as min/median/max over rounds, with the load average before and after:
the agent-thread ratio (wrapped / unwrapped wall seconds per run: what the agent feels), the
agent-thread CPU ratio (capture's own work on the agent's thread), the process CPU ratio with the
work still queued at the end of the round drained and counted, the added and the background CPU per
run (background: CPU off the agent's thread beyond the plain graph's), and the share of the
background work that ran inside the timed window. Target: agent-thread ratio <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from ee_middleware.scripted import ScriptedChatModel, tool_call


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


SCRIPT = [
    AIMessage(content="", tool_calls=[tool_call("add", a=1, b=2)]),
    AIMessage(content="", tool_calls=[tool_call("echo", text="hello")]),
    AIMessage(content="", tool_calls=[tool_call("add", a=3, b=4)]),
    AIMessage(content="1+2=3 and 3+4=7."),
]
STEPS_PER_RUN = len(SCRIPT)  # 3 tool calls + the answer
TASK = {"messages": [("user", "add some numbers and echo hello")]}


def build_graph() -> Any:
    model = ScriptedChatModel(script=SCRIPT).bind_tools([add, echo])

    def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("agent", agent)
    graph.add_node("tools", ToolNode([add, echo]))
    graph.add_edge(START, "agent")
    graph.add_conditional_edges("agent", tools_condition)
    graph.add_edge("tools", "agent")
    return graph.compile()


class FloorHandler(BaseCallbackHandler):
    """A callback handler that takes the same events as capture's (``RunCapture``) and does nothing:
    what any callback-based recorder costs the agent's thread before it records anything."""

    run_inline = True
    ignore_chain = True
    ignore_retriever = True
    ignore_custom_event = True

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_llm_error(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_tool_start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_tool_end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def on_tool_error(self, *args: Any, **kwargs: Any) -> None:
        pass


class WithFloorHandler:
    """The plain graph run with a new :class:`FloorHandler` per run (as capture adds its own)."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph

    def invoke(self, task: Any) -> Any:
        return self.graph.invoke(task, {"callbacks": [FloorHandler()]})


def answer_of(graph: Any) -> list[tuple[str, str, list[tuple[str, dict]]]]:
    """One run's returned messages as (type, text, calls): what the wrapped graph must return as the plain one does."""
    messages = graph.invoke(TASK)["messages"]
    return [(m.type, str(m.content), [(c["name"], c["args"]) for c in getattr(m, "tool_calls", None) or []]) for m in messages]


def stored_steps_problem(store_path: Path, runs: int) -> str | None:
    """Why the store at ``store_path`` does not hold ``runs`` trajectories of :data:`STEPS_PER_RUN` steps each, every
    tool call answered as the plain graph answers it; ``None`` when it does."""
    from ee_middleware import LocalExperienceStore

    trajectories = list(LocalExperienceStore(store_path).iter_trajectories())
    if len(trajectories) != runs:
        return f"{len(trajectories)} trajectories stored, {runs} runs"
    expected = [("add", "3"), ("echo", "hello"), ("add", "7")]
    for t in trajectories:
        calls = [(s.action.tool_call.name, s.observation.content if s.observation else None) for s in t.steps if s.action.tool_call]
        if len(t.steps) != STEPS_PER_RUN or calls != expected:
            return f"trajectory {t.id} holds {len(t.steps)} steps, calls and observations {calls} (expected {expected})"
    return None


def _timed_call(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``function(*args, **kwargs)`` and the wall seconds it took."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _start_up(wrap_s: float, first_s: float, warm_plain_s: float) -> dict[str, float]:
    """What capture costs before its first run ends: ``record_experience`` itself, and its first run against a warm
    plain run (its workers or child process start, its first imports)."""
    return {
        "record_experience_ms": round(wrap_s * 1e3, 2),
        "first_wrapped_run_ms": round(first_s * 1e3, 2),
        "warm_plain_run_ms": round(warm_plain_s * 1e3, 2),
    }


def timed(graph: Any, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        graph.invoke(TASK)
    return time.perf_counter() - start


def sustained_round(graph: Any, seconds: float) -> dict[str, float]:
    """Back-to-back runs for ``seconds``: runs, wall seconds, and CPU seconds of the process and of
    this (the agent's) thread."""
    runs = 0
    cpu0, thread0, start = time.process_time(), time.thread_time(), time.perf_counter()
    while (wall := time.perf_counter() - start) < seconds:
        graph.invoke(TASK)
        runs += 1
    return {"runs": runs, "wall": wall, "cpu": time.process_time() - cpu0, "thread": time.thread_time() - thread0}


def sustained(args: argparse.Namespace) -> dict[str, Any]:
    from _ee import peak_rss_mib, spread

    from ee_middleware import LocalExperienceStore, record_experience

    load_before = [round(x, 2) for x in os.getloadavg()]
    modes = [m.strip() for m in args.offload.split(",") if m.strip()]
    graph = build_graph()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        plain_answer = answer_of(graph)
        timed(graph, 10)
        warm_plain_s = timed(graph, 10) / 10
        wrapped, start_up = {}, {}
        for mode in modes:  # the first mode also pays capture's first imports
            wrapped[mode], wrap_s = _timed_call(record_experience, graph, app="bench", store=Path(tmp) / mode, offload=mode)
            answer, first_s = _timed_call(answer_of, wrapped[mode])
            if answer != plain_answer:
                raise SystemExit(f"error: the graph wrapped with offload={mode} returned something else than the plain one")
            start_up[mode] = _start_up(wrap_s, first_s, warm_plain_s)
            timed(wrapped[mode], 10)
            wrapped[mode].flush()
        total_runs = dict.fromkeys(modes, 11)  # the answer check and the warm-up
        measures: dict[str, dict[str, list[float]]] = {m: {} for m in modes}
        plain_ms: list[float] = []
        floor = WithFloorHandler(graph)
        floor_ratios: dict[str, list[float]] = {"agent_wall": [], "agent_cpu": []}
        variants = ["plain", "floor", *modes]
        for i in range(args.rounds):
            rounds: dict[str, dict[str, float]] = {}
            # rotate the order every round, so that no variant always follows the same one
            for variant in variants[i % len(variants) :] + variants[: i % len(variants)]:
                if variant in ("plain", "floor"):
                    rounds[variant] = sustained_round(graph if variant == "plain" else floor, args.sustained_s)
                    continue
                agent = wrapped[variant]
                child0 = agent.recorder.offload_cpu_s  # the capture process's CPU, as of the last flush
                rounds[variant] = sustained_round(agent, args.sustained_s)
                cpu0 = time.process_time()
                agent.flush()  # what is still queued: counted, not left to the next round
                rounds[variant]["drain"] = time.process_time() - cpu0
                rounds[variant]["child"] = agent.recorder.offload_cpu_s - child0
            p = rounds["plain"]
            pp = {m: p[m] / p["runs"] for m in ("wall", "cpu", "thread")}
            plain_ms.append(pp["cpu"] * 1e3)
            f = rounds["floor"]
            floor_ratios["agent_wall"].append(f["wall"] / f["runs"] / pp["wall"])
            floor_ratios["agent_cpu"].append(f["thread"] / f["runs"] / pp["thread"])
            for mode in modes:
                w = rounds[mode]
                total_runs[mode] += int(w["runs"])
                pw = {m: w[m] / w["runs"] for m in ("wall", "cpu", "thread")}
                w_cpu = (w["cpu"] + w["drain"] + w["child"]) / w["runs"]
                # background: CPU off the agent's thread (span finishing, assembly, store writes; the child's), beyond the plain graph's
                background = (w_cpu - pw["thread"]) - (pp["cpu"] - pp["thread"])
                m = measures[mode]
                m.setdefault("agent_wall", []).append(pw["wall"] / pp["wall"])
                m.setdefault("agent_cpu", []).append(pw["thread"] / pp["thread"])
                m.setdefault("process_cpu", []).append(w_cpu / pp["cpu"])
                m.setdefault("added_cpu_ms", []).append((w_cpu - pp["cpu"]) * 1e3)
                m.setdefault("background_ms", []).append(background * 1e3)
                m.setdefault("child_ms", []).append(w["child"] / w["runs"] * 1e3)
                if not w["child"]:  # thread mode: how much of the background work ran inside the timed window
                    in_window = (w["cpu"] - w["thread"]) / w["runs"] - (pp["cpu"] - pp["thread"])
                    m.setdefault("background_in_window", []).append(in_window / background if background > 0 else 0.0)
        for mode in modes:
            agent, m = wrapped[mode], measures[mode]
            stats = agent.recorder.stats
            agent.recorder.close()
            problem = stored_steps_problem(Path(tmp) / mode, total_runs[mode])
            results[mode] = {
                "capture_process": agent.recorder.offload is not None,
                "agent_thread_ratio_min_median_max": spread(m["agent_wall"]),
                "agent_thread_cpu_ratio_min_median_max": spread(m["agent_cpu"]),
                "process_cpu_ratio_with_drain_and_child_min_median_max": spread(m["process_cpu"]),
                "added_cpu_ms_per_run_min_median_max": spread(m["added_cpu_ms"]),
                "background_cpu_ms_per_run_min_median_max": spread(m["background_ms"]),
                "child_process_cpu_ms_per_run_min_median_max": spread(m["child_ms"]),
                **(
                    {"background_share_inside_window_median": round(statistics.median(m["background_in_window"]), 3)}
                    if m.get("background_in_window")
                    else {}
                ),
                "trajectories_stored": LocalExperienceStore(Path(tmp) / mode).trajectories().height,
                "expected_trajectories": total_runs[mode],
                "capture_failures": stats.runs_failed,
                "stored_steps_problem": problem,
                "start_up": start_up[mode],
            }
    return {
        "mode": f"sustained {args.sustained_s:g} s rounds: plain and one wrapped graph per capture mode, order rotated every round",
        "rounds": args.rounds,
        "load_average_1_5_15_before_after": [load_before, [round(x, 2) for x in os.getloadavg()]],
        "peak_rss_mib_this_process": round(peak_rss_mib(), 1),  # the agent's process (capture's child not counted)
        "plain_cpu_ms_per_run_min_median_max": spread(plain_ms),
        "target_agent_thread_ratio": 1.10,
        "callback_floor": {
            "what": "the plain graph with a callback handler that takes capture's events and does nothing",
            "agent_thread_ratio_min_median_max": spread(floor_ratios["agent_wall"]),
            "agent_thread_cpu_ratio_min_median_max": spread(floor_ratios["agent_cpu"]),
        },
        **{f"offload={mode}": result for mode, result in results.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="agent runs per round and variant")
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds (min/median/max are reported)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--sustained-s", type=float, default=None, help="sustained mode: seconds per round (> the 2 s deferral bound)")
    parser.add_argument("--offload", default="thread,process", help="sustained mode: the capture modes to measure (comma-separated)")
    args = parser.parse_args(argv)
    # imported here so that benchmarks/capture_vs_openinference.py can build the graph in a venv without ee's store
    from ee_middleware import LocalExperienceStore, record_experience

    if args.sustained_s is not None:
        result = sustained(args)
        print(json.dumps(result, indent=2))
        modes = [v for k, v in result.items() if k.startswith("offload=")]
        if any(m["trajectories_stored"] != m["expected_trajectories"] or m["capture_failures"] or m["stored_steps_problem"] for m in modes):
            print("error: not every run was stored", file=sys.stderr)
            return 1
        return 0

    from _ee import peak_rss_mib

    load_before = [round(x, 2) for x in os.getloadavg()]
    graph = build_graph()
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "experience"
        plain_answer = answer_of(graph)
        timed(graph, 10)
        warm_plain_s = timed(graph, 10) / 10
        wrapped, wrap_s = _timed_call(record_experience, graph, app="bench", store=store_path)
        answer, first_s = _timed_call(answer_of, wrapped)
        if answer != plain_answer:
            print("error: the wrapped graph returned something else than the plain one", file=sys.stderr)
            return 1
        timed(graph, 10)  # warm-up both paths
        timed(wrapped, 10)
        wrapped.flush()
        plain_s, wrapped_s, drain_s = [], [], []
        for repeat in range(args.rounds):  # which side runs first alternates
            if repeat % 2:
                wrapped_s.append(timed(wrapped, args.runs))
                plain_s.append(timed(graph, args.runs))
            else:
                plain_s.append(timed(graph, args.runs))
                wrapped_s.append(timed(wrapped, args.runs))
            start = time.perf_counter()
            wrapped.flush()
            drain_s.append(time.perf_counter() - start)
        stats = wrapped.recorder.stats
        stored = LocalExperienceStore(store_path).trajectories().height
        problem = stored_steps_problem(store_path, (args.rounds * args.runs) + 11)

    ratios = [w / p for w, p in zip(wrapped_s, plain_s, strict=True)]
    plain_run = statistics.median(plain_s) / args.runs
    wrapped_run = statistics.median(wrapped_s) / args.runs
    result = {
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
        "runs_per_round": args.runs,
        "rounds": args.rounds,
        "steps_per_run": STEPS_PER_RUN,
        "unwrapped_ms_per_run": round(plain_run * 1e3, 3),
        "wrapped_ms_per_run": round(wrapped_run * 1e3, 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "added_us_per_step": round((wrapped_run - plain_run) / STEPS_PER_RUN * 1e6, 1),
        "background_drain_ms_per_run": round(statistics.median(drain_s) / args.runs * 1e3, 3),
        # the whole cost, background work included: what a CPU-bound process pays in total
        "ratio_including_drain": round(statistics.median((w + d) / p for w, d, p in zip(wrapped_s, drain_s, plain_s, strict=True)), 3),
        "trajectories_stored": stored,
        "capture_failures": stats.runs_failed,
        "identical_answers_and_stored_steps": problem is None,
        "start_up": _start_up(wrap_s, first_s, warm_plain_s),
        "peak_rss_mib_this_process": round(peak_rss_mib(), 1),
        "target_ratio": 1.10,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Capture overhead: ReAct graph, instant model, trivial tools")
        table.add_column("measure")
        table.add_column("value", justify="right")
        for key, value in result.items():
            table.add_row(key.replace("_", " "), str(value))
        Console().print(table)
    expected = (args.rounds * args.runs) + 11  # the rounds, the warm-up and the answer check
    if stored != expected or stats.runs_failed or problem:
        print(
            f"error: expected {expected} stored trajectories and no failures, got {stored} and {stats.runs_failed}"
            + (f"; {problem}" if problem else ""),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
