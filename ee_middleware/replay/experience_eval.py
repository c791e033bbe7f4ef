"""How far an experience model can be trusted: predict held-out real transitions and compare.

The store's real transitions (expert steps with a recorded observation, of approved trajectories) are split by trajectory:
a deterministic share of trajectories (by a hash of the id and the seed) is held out; the replay
buffer is built from the others only, and every query also excludes the held-out trajectories, so
retrieval never returns the transition being predicted or anything else held out.

Each held-out transition is predicted once per variant and scored per tool. The variants, all on
the same held-out set and the same replay buffer:

* ``no-retrieval``: the model alone (top-k 0);
* ``retrieval``: the model with the top-k retrieved real transitions in its prompt;
* ``retrieval+trained``: a trained experience model (the ``em`` LoRA: ``--trained local:BASE@ADAPTER``
  or a served adapter) with the same retrieval; only when one is given.

The metrics:

* ``exact``: the predicted observation equals the real one (whitespace at the ends ignored);
* ``token_f1``: how much of the real observation the prediction got right, in [0, 1]: where both are JSON (an object or
  an array), F1 over their fields, each leaf value under its path counting once (:func:`fields_f1`: a wrong value under
  the right key scores 0 for that field); otherwise the word F1 of the two texts, words as they appear, no name split
  into parts (:func:`words_f1`). ``docs/experience-model.md`` works an example;
* where the real observation was cut when recorded (``truncated_chars``), it is the real answer's start, as replay
  compares it: a prediction that starts with it is exact, and ``token_f1`` reads the prediction's start of the same
  length;
* ``error_agreement``: the predicted ``is_error`` equals the real one;
* ``reward_agreement``: on a trajectory's last step, whether a predicted reward (>= 0.5 is success)
  agrees with the real outcome (``None`` where no prediction had a reward);
* ``failed``: predictions that gave no usable observation, with their ``failure_reasons``: an answer that is not
  one (scored 0 on every metric above), or a model error that fails this prediction alone (a request the server
  refuses, such as a prompt longer than its context; an answer that is not a chat completion; or a request the server
  keeps failing or timing out on after the client's retries while it still answers ``GET /models``, such as a
  per-input crash in its tokenizer or chat template: counted in ``model_errors``, and left out of the metrics, which
  are over the ``answered`` predictions). The report's ``model_errors`` totals them.

A model that cannot answer at all (its server unreachable, failing or timing out after the client's retries and not
answering ``GET /models`` either (:func:`~ee_middleware.models.spec.endpoint_problem`), refusing the key or the model's
name, a local model that does not load: :func:`~ee_middleware.replay.executors.model_unusable`, what a replay stops
on) stops :func:`evaluate` at that prediction with its error (a :class:`~ee_middleware.errors.ModelServerError`
naming the server's URL): the predictions left would all fail alike, and a report of them would measure nothing. So
does a run of :data:`~ee_middleware.replay.executors.SERVER_FAILURES_IN_A_ROW` predictions failed in a row by a server
that still lists its models (its generation is down behind a live listing). A replay follows the same rule
(:func:`~ee_middleware.replay.executors.fails_alone`, :class:`~ee_middleware.replay.executors.ServerFailuresInARow`).

Each variant records the ``model`` it ran; the report records the ``retriever`` (its name) and the
``retriever_settings`` it was built with (a credential among them left out, as a replay id leaves it out), so that
two evaluations with different retriever options are told apart. A replay config's fidelity gate reads the retrieval
variant of the model it replays with (:func:`ee_middleware.replay.sandboxes.experience.load_fidelity`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ee_middleware.errors import ConfigError, ModelError
from ee_middleware.records import ToolCall, Trajectory
from ee_middleware.replay.curriculum import CURRICULUM_SOURCE, parent_trajectory_id
from ee_middleware.replay.executors import SERVER_FAILURES_IN_A_ROW as SERVER_FAILURES_IN_A_ROW  # (the rule is shared)
from ee_middleware.replay.executors import ServerFailuresInARow, fails_alone, model_unusable
from ee_middleware.replay.retrieval import (
    DEFAULT_TOP_K,
    Retriever,
    Transition,
    TransitionIndex,
    approved_trajectories,
    buffer_transitions,
    expert_transitions,
    words,
)
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox, SyntheticObservationError

TRAINED = "retrieval+trained"
METRICS = ("exact", "token_f1", "error_agreement")


def token_f1(predicted: str, real: str) -> float:
    """How close a predicted observation is to the real one, in [0, 1] (the ``token_f1`` metric, the one ``min_fidelity``
    gates on). Where both texts parse as JSON and one is an object or an array, field by field (:func:`fields_f1`);
    otherwise the word F1 of the two texts (:func:`words_f1`)."""
    p, r = _json(predicted), _json(real)
    if p is not _NOT_JSON and r is not _NOT_JSON and (isinstance(p, (dict, list)) or isinstance(r, (dict, list))):
        return fields_f1(p, r)
    return words_f1(predicted, real)


def words_f1(predicted: str, real: str) -> float:
    """Bag-of-words F1 between two texts, over their words as they appear (:func:`~ee_middleware.replay.retrieval.words`:
    case kept, names not split, each Chinese or Japanese character a word); texts without a word (empty, ``[]``, ``/``)
    score 1.0 only when equal, whitespace at the ends ignored."""
    p, r = Counter(words(predicted)), Counter(words(real))
    if not p and not r:
        return float(predicted.strip() == real.strip())
    common = sum((p & r).values())
    return 2 * common / (sum(p.values()) + sum(r.values()))


def fields_f1(predicted: Any, real: Any) -> float:
    """F1 between two JSON values over their fields: each value is cut into its leaves (a string, number, boolean,
    null or empty object/array) under their path from the root (object keys; the items of an array share the array's
    path, in any order). Every leaf counts once: a predicted leaf scores 1 for a real leaf of the same path and the same
    value (numbers by value, strings with the whitespace at their ends ignored), a string leaf left unmatched scores the
    :func:`words_f1` of the next unmatched real string of its path, and anything else 0. With C the summed scores, P the
    predicted and R the real leaves: F1 = 2C / (P + R). A key name thus counts with its value, never on its own: a wrong
    value under the right key scores 0."""
    p, r = _leaves(predicted), _leaves(real)
    credit = 0.0
    for path in p.keys() & r.keys():
        exact = Counter(p[path]) & Counter(r[path])
        credit += sum(exact.values())
        p_rest, r_rest = _unmatched(p[path], exact), _unmatched(r[path], exact)
        p_text = [value for kind, value in p_rest if kind == "str"]
        r_text = [value for kind, value in r_rest if kind == "str"]
        credit += sum(words_f1(a, b) for a, b in zip(p_text, r_text, strict=False))
    return 2 * credit / (sum(map(len, p.values())) + sum(map(len, r.values())))


_NOT_JSON = object()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return _NOT_JSON


def _leaves(
    value: Any, path: tuple[str, ...] = (), out: dict[tuple[str, ...], list[tuple[str, str]]] | None = None
) -> dict[tuple[str, ...], list[tuple[str, str]]]:
    """The leaves of a JSON value by path, each as (kind, canonical text)."""
    out = {} if out is None else out
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _leaves(item, (*path, str(key)), out)
    elif isinstance(value, list) and value:
        for item in value:
            _leaves(item, (*path, "[]"), out)
    elif isinstance(value, str):
        out.setdefault(path, []).append(("str", value.strip()))
    else:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 1.0 and 1 are the same number
        out.setdefault(path, []).append(("json", json.dumps(value)))
    return out


def _unmatched(values: list[tuple[str, str]], matched: Counter[tuple[str, str]]) -> list[tuple[str, str]]:
    left, out = Counter(matched), []
    for value in values:
        if left[value]:
            left[value] -= 1
        else:
            out.append(value)
    return out


def is_held_out(trajectory_id: str, share: float, seed: int = 0) -> bool:
    """Whether ``trajectory_id`` is in the held-out share (deterministic for a seed)."""
    return held_out_draw(trajectory_id, seed) < share


def task_units(trajectories: list[Trajectory]) -> dict[str, str]:
    """Each trajectory's unit of the held-out draw: the trajectory its curriculum task descends from (the one its task is
    a variant of, that one's, ...: :func:`~ee_middleware.replay.curriculum.parent_trajectory_id`), else itself. A
    trajectory without a curriculum parent is its own unit, so a store without curriculum trajectories is split as
    before, id by id."""
    parents = {
        t.id: parent
        for t in trajectories
        if t.source == CURRICULUM_SOURCE and (parent := parent_trajectory_id(t.environment)) is not None and parent != t.id
    }

    def unit(trajectory_id: str) -> str:
        seen = {trajectory_id}
        while (parent := parents.get(trajectory_id)) is not None and parent not in seen:
            trajectory_id = parent
            seen.add(parent)
        return trajectory_id

    return {t.id: unit(t.id) for t in trajectories}


def held_out_draw(trajectory_id: str, seed: int = 0) -> float:
    """Where ``trajectory_id`` falls in [0, 1) for ``seed``: it is held out by every share above this."""
    digest = hashlib.blake2b(f"{seed}:{trajectory_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class HeldOutSplit:
    """The held-out trajectories and transitions, and the replay buffer built from the rest."""

    held_out: list[tuple[Trajectory, Transition]]
    held_out_ids: set[str]
    index: TransitionIndex
    retriever_settings: dict[str, Any] = field(default_factory=dict)
    """The keyword options the index's retriever was built with (``retriever_settings``)."""

    @property
    def shown_retriever_settings(self) -> dict[str, Any]:
        """:attr:`retriever_settings` as a report records them: a credential left out and a credential's form masked
        (:func:`~ee_middleware.replay.config.shaping_settings`, as a replay id counts a sandbox's settings), the rest kept,
        so that two evaluations with different retriever options are told apart."""
        from ee_middleware.replay.config import shaping_settings

        return shaping_settings(self.retriever_settings)


def split_store(
    store: Any,
    *,
    share: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    retriever: str | Retriever | None = None,
    app: str | None = None,
    retriever_settings: Mapping[str, Any] | None = None,
) -> HeldOutSplit:
    """Hold out ``share`` of the store's approved trajectories (at least one) and index the real transitions of the rest
    (searched by ``retriever``, built with the keyword options ``retriever_settings``: see
    :data:`ee_middleware.replay.retrieval.RETRIEVERS`; an option its factory takes no parameter for is refused there).
    Below a share of 1, at least one trajectory of two or more stays in the buffer (a small store whose every id fell
    in the share would leave nothing to retrieve). Pending and rejected trajectories are neither held out nor indexed:
    only what was approved for training is. A curriculum trajectory is drawn with the trajectory its task is a variant
    of (:func:`task_units`), as ``ee datasets build`` splits them. ``app``: only that app's trajectories are held out or
    indexed (a store holding several apps)."""
    settings = dict(retriever_settings or {})
    index = TransitionIndex.of(retriever, **settings)  # an unknown retriever or option fails here, before reading the store
    approved = approved_trajectories(store, app)
    # the expert steps a build teaches: none a paused run's resumed run holds too, nor after its call awaiting review
    taught = expert_transitions(approved)
    trajectories = [t for t in approved if taught[t.id]]  # held out only where there is something to predict
    # drawn by unit: a curriculum trajectory goes with the trajectory its task is a variant of (the same calls and
    # observations, often): one held out while its variant trained it, or was retrieved for it, scored too well
    unit_of = task_units(approved)
    units = sorted({unit_of[t.id] for t in trajectories})
    held_units = {unit for unit in units if is_held_out(unit, share, seed)}
    if not held_units and units:  # also the only one: a dataset built now must not train on what a later eval holds out
        held_units = {min(units, key=lambda unit: hashlib.blake2b(f"{seed}:{unit}".encode()).hexdigest())}
    elif share < 1 and len(held_units) > 1 and len(held_units) == len(units):
        # a small store drawn all into the share (5 trajectories at 0.2: 1 in 3,125) would leave the buffer empty: the
        # last one in the same order (the one a smaller share releases first) is indexed instead
        held_units.discard(max(held_units, key=lambda unit: held_out_draw(unit, seed)))
    held = {t.id for t in approved if unit_of[t.id] in held_units}
    # every approved trajectory not held out, as IWM and the live buffer: a paused run none of whose calls is taught
    # still gives its rollouts at states before the pause
    index.add(buffer_transitions(store, approved, leave_out=held, taught=taught))
    pairs = [(t, tr) for t in trajectories if t.id in held for tr in taught[t.id]]
    return HeldOutSplit(pairs[:limit] if limit else pairs, held, index, settings)


def evaluate(
    sandbox: ExperienceSandbox,
    split: HeldOutSplit,
    *,
    top_k: int = DEFAULT_TOP_K,
    trained: ExperienceSandbox | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Predict every held-out transition under each variant; the report (see the module docstring). A split whose
    replay buffer is empty (every trajectory held out) is a :class:`~ee_middleware.errors.ConfigError`: its
    ``retrieval`` variant would retrieve nothing. A model that cannot answer (see the module docstring) raises its
    :class:`~ee_middleware.errors.ModelError` at the first prediction it gives no answer to, and no report is made.

    ``sandbox`` runs ``no-retrieval`` and ``retrieval``; ``trained`` (optional) runs ``retrieval+trained``.
    """
    plan = variant_plan(sandbox, trained, top_k)
    if not len(split.index):
        raise ConfigError(
            f"The replay buffer is empty: all {len(split.held_out_ids)} trajectories are held out, so the 'retrieval' variant "
            "would measure the model without retrieval. Hold out a smaller share."
        )
    for _, variant_sandbox, _ in plan:
        variant_sandbox._index = split.index  # the buffer built without the held-out set
        variant_sandbox.exclude_trajectories = set(split.held_out_ids)
    report: dict[str, Any] = {
        "model": sandbox.model,
        "trained": trained.model if trained is not None else None,
        "held_out_trajectories": len(split.held_out_ids),
        "held_out_transitions": len(split.held_out),
        "indexed_transitions": len(split.index),
        "retriever": split.index.retriever_name,
        "retriever_settings": split.shown_retriever_settings,
        "top_k": top_k,
        "variants": {},
        "model_errors": 0,
    }
    for variant, variant_sandbox, k in plan:
        variant_sandbox.top_k = k
        rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        in_a_row = ServerFailuresInARow("predictions")
        for trajectory, transition in split.held_out:
            step = next(s for s in trajectory.steps if s.index == transition.step_index)
            variant_sandbox.at_step(trajectory, step)
            call = ToolCall(id="eval", name=transition.tool, arguments=transition.arguments)
            row = _score(variant_sandbox, call, transition)
            rows[transition.tool].append(row)
            in_a_row.note(row.pop("server_failure", None))  # a run of server failures: its generation is down
            if progress is not None:
                progress(1)
        report["variants"][variant] = {
            "model": variant_sandbox.model,
            "top_k": k,
            "tools": {tool: _summarise(r) for tool, r in sorted(rows.items())},
            "overall": _summarise([r for tool_rows in rows.values() for r in tool_rows]),
        }
        report["model_errors"] += report["variants"][variant]["overall"]["model_errors"]
    return report


def unanswered(report: dict[str, Any]) -> str | None:
    """Why ``report`` (of :func:`evaluate`) measures nothing for a model, or ``None``: a variant of which no prediction
    got an answer (each request refused or failed, or each answer no chat completion) scores 0 on every tool. Such a
    report is not written (an earlier one, which a replay's fidelity gate may read, is kept)."""
    down = next((data for data in report["variants"].values() if data["overall"]["n"] and not data["overall"]["answered"]), None)
    if down is None:
        return None
    reason = next(iter(down["overall"].get("failure_reasons") or {"": 0}))
    return f"every prediction of {down['model']} failed ({reason})"


def variant_plan(sandbox: ExperienceSandbox, trained: ExperienceSandbox | None, top_k: int) -> list[tuple[str, ExperienceSandbox, int]]:
    """(variant, the sandbox that runs it, its top-k), in report order."""
    plan = [("no-retrieval", sandbox, 0), ("retrieval", sandbox, top_k)]
    if trained is not None:
        plan.append((TRAINED, trained, top_k))
    return plan


def _score(sandbox: ExperienceSandbox, call: ToolCall, real: Transition) -> dict[str, Any]:
    try:
        prediction, examples = sandbox.predict(call, exclude_ids=(real.id,))
    except SyntheticObservationError as exc:
        return {"failed": True, "reason": exc.reason, "exact": 0.0, "token_f1": 0.0, "error_agreement": 0.0, "reward": None}
    except ModelError as exc:
        unusable = model_unusable(exc)
        if unusable and not fails_alone(exc, [sandbox._client]):
            raise  # the server is down or refuses every request: each prediction left would fail the same way, retried
        # this prediction got no answer (the request refused or failed, the answer not a completion): not the model's
        # fidelity, so left out of the metrics
        row = {"failed": True, "model_error": True, "reason": f"the model failed: {exc}", "reward": None}
        if unusable:  # a server failure the server's listing outlived: counted, and a run of them stops the eval
            row["server_failure"] = exc
        return row
    assert all(e.trajectory_id not in sandbox.exclude_trajectories and e.id != real.id for e in examples)
    reward = None
    if real.reward is not None and prediction["reward"] is not None:
        reward = float((prediction["reward"] >= 0.5) == (real.reward >= 0.5))
    predicted = prediction["observation"]
    if real.truncated_chars:  # the recording was cut: it is the real observation's start, compared as such (as replay does)
        exact = predicted.startswith(real.observation) or predicted.strip() == real.observation.strip()
        predicted = predicted[: len(real.observation)]
    else:
        exact = predicted.strip() == real.observation.strip()
    return {
        "failed": False,
        "exact": float(exact),
        "token_f1": token_f1(predicted, real.observation),
        "error_agreement": float(prediction["is_error"] == real.is_error),
        "reward": reward,
    }


def _summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    answered = [r for r in rows if not r.get("model_error")]
    out: dict[str, Any] = {"n": len(rows), "failed": sum(r["failed"] for r in rows)}
    out["model_errors"], out["answered"] = len(rows) - len(answered), len(answered)
    for metric in METRICS:
        out[metric] = sum(r[metric] for r in answered) / len(answered) if answered else 0.0
    rewards = [r["reward"] for r in rows if r["reward"] is not None]
    out["reward_agreement"] = sum(rewards) / len(rewards) if rewards else None
    reasons = Counter(r["reason"] for r in rows if r["failed"])
    if reasons:
        out["failure_reasons"] = dict(reasons.most_common(3))
    return out


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """A PNG of token F1 per tool, one bar per variant; ``False`` when matplotlib is not installed."""
    from ee_middleware._plots import quiet_matplotlib_config

    quiet_matplotlib_config()  # a home it cannot write: no warnings in every log
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.figure import Figure
    except ImportError:
        return False
    from ee_middleware._files import atomic_path

    variants = list(report["variants"])
    tools = [*sorted({tool for v in variants for tool in report["variants"][v]["tools"]}), "(all)"]
    figure = Figure(figsize=(max(5, 0.9 * len(tools) + 2), 3.8), dpi=100)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        data = report["variants"][variant]
        values = [data["tools"].get(t, {}).get("token_f1", 0.0) for t in tools[:-1]] + [data["overall"]["token_f1"]]
        bars = axes.bar([x + (i - (len(variants) - 1) / 2) * width for x in range(len(tools))], values, width, label=variant)
        axes.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=7)
    axes.set_xticks(range(len(tools)), [t[:18] for t in tools], fontsize=7, rotation=30, ha="right")
    axes.set_ylim(0, 1.1)
    axes.set_ylabel("token F1 vs the real observation")
    axes.set_title(f"experience-model fidelity on {report['held_out_transitions']} held-out transitions", fontsize=10)
    axes.legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return True
