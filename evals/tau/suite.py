"""The tau-style suite ``tau:DOMAIN[:SPLIT][:N]``: run the agent on a fresh database, score what it left.

Per task and trial:

1. the agent (any client, through the one agent loop) talks with the user, scripted from the task's
   turns by default or simulated by a model (``user_model``: :mod:`~ee_middleware.evals.tau.user`; a spec that names
   no model client is refused when the suite loads, before any task runs or anything is written),
   with the domain's policy as its system prompt and its tools executing on a fresh copy of the
   database (a :class:`~ee_middleware.replay.sandboxes.python.PythonSandbox`);
2. the ground-truth actions are replayed on another fresh copy;
3. reward 1 when both databases have the same state digest (JSON-canonical SHA-256, as tau-bench
   hashes its data) **and** every required output appears in the agent's replies (case-insensitive,
   commas ignored, as tau-bench compares); else 0, with the reason: where the databases differ
   (``database_mismatch``) or which outputs are missing (``missing_output``). A task whose ground truth does not
   show its category (an ``action`` task's changing nothing, an ``answer`` or ``refusal`` task's changing the
   database, an ``answer`` task without outputs) is refused when the domain's tasks load; a tau-bench task (which names
   no category) whose ground truth fails on a fresh database is the task's fault (``task_error``).

Over ``--trials k`` the summary's ``pass_hat_k`` is tau-bench's pass^k (every trial of a task succeeds).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ee_middleware.errors import ConfigError, ModelError
from ee_middleware.evals.clients import bind
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.evals.matching import differences, missing_outputs
from ee_middleware.evals.tasks import Conversation, EvalTask, Message, TaskResult
from ee_middleware.evals.tau import tau_bench
from ee_middleware.evals.tau.domain import TauDomain, TauTask
from ee_middleware.models.protocol import ChatClient
from ee_middleware.plugins import FACTORY_SPEC, PluginKind
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.protocol import check_offered_tools

BUILTIN_DOMAINS: Mapping[str, str] = {"library": "ee_middleware.evals.tau.domains.library"}
DEFAULT_SPLIT = "test"
TAU_DOMAINS = PluginKind(
    kind="tau domain",
    group="ee_middleware.tau_domains",
    error=ConfigError,
    builtins={name: f"{module}:domain" for name, module in BUILTIN_DOMAINS.items()},
    forms=tuple(f"{name!r} (with a tau-bench checkout)" for name in tau_bench.DOMAINS),
)
"""Where ``tau:DOMAIN`` finds its domain: a built-in, ``package.module:factory`` (a callable returning a
:class:`TauDomain`: a user's own tools, database, policy and tasks) or an installed entry point. Check a factory with
``ee_middleware.evals.tau.testing.check_tau_domain(factory)`` before registering it (the built-in library passes it)."""


def resolve_domain(name: str, tau_bench_dir: str | None = None, *, split: str | None = None) -> TauDomain:
    """A built-in domain, one of a tau-bench checkout's (``retail``, ``airline``), or a user's own
    (``package.module:factory`` or an ``ee_middleware.tau_domains`` entry point). ``split``, the split the spec
    named, only shapes the error for a name that is none of these (how the spec was read)."""
    if name in TAU_DOMAINS.builtins or FACTORY_SPEC.match(name) or name in TAU_DOMAINS.installed():
        domain = TAU_DOMAINS.build(name)
        if not isinstance(domain, TauDomain):
            raise ConfigError(
                f"The tau domain factory {name!r} returned {type(domain).__name__}, not a TauDomain "
                "(ee_middleware.evals.tau.domain.TauDomain: name, policy, tools, schemas, load_data, splits)."
            )
        return domain
    if name in tau_bench.DOMAINS:
        root = tau_bench.checkout_dir(tau_bench_dir)
        if root is None:
            raise ConfigError(
                f"tau:{name} is a tau-bench domain, and no checkout is set. Clone https://github.com/sierra-research/tau-bench and "
                f"set {tau_bench.ENV_VAR}=PATH (or --tau-bench-dir PATH, or tau_bench_dir under [eval])."
            )
        return tau_bench.load_domain(name, root)
    raise TAU_DOMAINS.unknown(name, _unknown_reading(name, split))


def _unknown_reading(name: str, split: str | None) -> str:
    """Why ``name`` names no domain, with how the spec was read: a ``module:factory`` whose module is not dotted is
    read as the domain ``module`` and the split ``factory``."""
    why = "no domain has this name"
    if split is None:
        return why
    why += f"; tau:{name}:{split} was read as tau:DOMAIN:SPLIT, the domain {name!r} and the split {split!r}"
    if "." in name or not FACTORY_SPEC.match(f"{name}:{split}"):
        return why
    try:
        importable = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        importable = False
    if not importable:
        return f"{why} (a factory, package.module:factory, is read only with a dotted module path)"
    return (
        f"{why}. {name!r} is an importable module, but a factory is read only with a dotted module path, "
        f"package.module:factory: put the module in a package and write tau:PACKAGE.{name}:{split}, or register the "
        f"factory as an {TAU_DOMAINS.group} entry point"
    )


@dataclass(frozen=True)
class Verdict:
    success: bool
    error_type: str | None = None
    reason: str | None = None


class TauSuite:
    """One domain and split as an eval suite (``limit``: its first N tasks)."""

    def __init__(
        self,
        domain: str,
        split: str | None = None,
        limit: int | None = None,
        *,
        tau_bench_dir: str | None = None,
        user_model: str | None = None,
        max_user_turns: int = 10,
    ) -> None:
        self.domain = resolve_domain(domain, tau_bench_dir, split=split)
        self.split = split or DEFAULT_SPLIT
        if self.split not in self.domain.splits:
            raise ConfigError(f"The tau domain {domain!r} has no split {self.split!r}; it has: {', '.join(self.domain.splits)}.")
        self.domain.fresh_data()  # a database that cannot be built stops the run here, not every task alike
        self.limit = limit
        self.user_model = user_model
        self.max_user_turns = max_user_turns
        self.name = f"tau:{domain}:{self.split}"
        if user_model:  # so does a user simulator that cannot be built (as a model spec: the runner builds it first)
            user_client(user_model, self.name).close()

    def tasks(self) -> list[EvalTask]:
        database = self.database_digest()
        return [self.eval_task(task, database) for task in self.domain.tasks(self.split)[: self.limit]]

    def database_digest(self) -> str:
        """A digest of the domain's initial database (its JSON text, keys sorted): the world every task's tools read and
        its actions are scored on, so it is part of what each task is (a resumed run re-scores the tasks of a domain
        whose data was edited). Computed once per suite, not per task."""
        text = json.dumps(self.domain.fresh_data(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def eval_task(self, task: TauTask, database: str | None = None) -> EvalTask:
        """``task`` as an eval task; ``database``: :meth:`database_digest` (computed here when not given)."""
        reference: list[list[Message]] = []
        for t, turn in enumerate(task.turns):
            steps: list[Message] = [_call_message(f"call_{t}_{i}", a.name, a.arguments) for i, a in enumerate(turn.actions)]
            reference.append([*steps, {"role": "assistant", "content": turn.reply}])
        return EvalTask(
            suite=self.name,
            id=task.id,
            category=task.category,
            turns=[[{"role": "user", "content": turn.user}] for turn in task.turns],
            tools=[self.domain.schemas] * len(task.turns),
            reference=reference,
            payload={
                "actions": [[a.name, a.arguments] for a in task.actions],
                "outputs": list(task.outputs),
                "instruction": task.instruction,
                "database": database or self.database_digest(),  # what the task's tools start from
            },
            system=self.domain.policy,
        )

    def run(self, client: ChatClient, task: EvalTask, trial: int, config: LoopConfig) -> TaskResult:
        started = time.perf_counter()
        sandbox = self.domain.sandbox()
        user, user_client = self._user(task, config, trial)
        try:
            sandbox.reset(None)
            check_offered_tools(sandbox, [schema for turn in task.tools for schema in turn])  # before the model's first call
            conversation = run_conversation(bind(client, task), task, sandbox, config, trial=trial, user=user)
            verdict, details = self.score(sandbox, task, conversation, user_error=getattr(user, "error", None))
        finally:
            sandbox.close()
            if user_client is not None:
                user_client.close()
        return TaskResult(
            suite=self.name,
            category=task.category,
            task_id=task.id,
            trial=trial,
            success=verdict.success,
            reason=verdict.reason,
            error_type=verdict.error_type,
            conversation=conversation,
            duration_s=time.perf_counter() - started,
            details=details,
        )

    def _user(self, task: EvalTask, config: LoopConfig, trial: int) -> tuple[Any, ChatClient | None]:
        if not self.user_model:
            return None, None
        from ee_middleware.evals.tau.user import SimulatedUser

        client = user_client(self.user_model, self.name)
        return SimulatedUser(client, task.payload["instruction"], sampling=config.sampling(trial), max_turns=self.max_user_turns), client

    def score(
        self, sandbox: Any, task: EvalTask, conversation: Conversation, *, user_error: str | None = None
    ) -> tuple[Verdict, dict[str, Any]]:
        """Compare the sandbox's database (after the agent's run) with a ground-truth replay on a fresh copy."""
        if conversation.error is not None:
            return Verdict(False, conversation.error_type, conversation.error), {}
        if user_error is not None:
            return Verdict(False, "user_model_error", user_error), {}
        actual, actual_digest = sandbox.world, sandbox.state_digest()
        sandbox.reset(None)
        fresh_digest = sandbox.state_digest()
        ground_truth_errors = []
        for i, (name, arguments) in enumerate(task.payload["actions"]):
            observation = sandbox.execute(ToolCall(id=f"gt_{i}", name=name, arguments=arguments))
            if observation.is_error:
                ground_truth_errors.append(f"{name}: {observation.content[:200]}")
        expected, expected_digest = sandbox.world, sandbox.state_digest()
        missing = missing_outputs(task.payload["outputs"], conversation.replies)
        details = {
            "database_ok": actual_digest == expected_digest,
            "missing_outputs": missing,
            "digest": actual_digest,
            "expected_digest": expected_digest,
            "ground_truth_errors": ground_truth_errors,
        }
        if ground_truth_errors and expected_digest == fresh_digest and task.category == "action":
            return Verdict(
                False,
                "task_error",
                f"the task's ground truth fails on a fresh database ({'; '.join(ground_truth_errors[:2])}), so it changes "
                "nothing and an agent that does nothing would pass: fix the task's actions or the domain's data",
            ), details
        problems = []
        if actual_digest != expected_digest:
            where = "; ".join(differences(actual, expected))
            problems.append(("database_mismatch", f"the database after the run differs from the ground truth's: {where}"))
        if missing:
            listed = ", ".join(repr(m) for m in missing)
            problems.append(("missing_output", f"required output {listed} appears in none of the agent's replies"))
        if not problems:
            return Verdict(True), details
        return Verdict(False, problems[0][0], "; and ".join(text for _, text in problems)), details


def user_client(spec: str, suite: str) -> ChatClient:
    """A new client of the user simulator ``spec`` (``user_model``) for ``suite``, built as ``ee eval run`` builds the
    model's (no request is made); a spec that names no client is a :class:`ConfigError` naming the setting and the forms
    it takes."""
    from ee_middleware.models.spec import MODEL_FORMS, build_chat_client

    try:
        return build_chat_client(spec)
    except ModelError as exc:
        why = str(exc).rstrip()
        why += "" if why.endswith((".", "?", "!")) else "."
        if "Accepted forms" not in why:  # the registry lists them only for a spec of no form
            why += f" Accepted forms: {'; '.join(MODEL_FORMS)}."
        raise ConfigError(
            f"The tau user simulator {spec!r} (--user-model, or user_model under [eval]) cannot be built, so every task of "
            f"{suite} would fail: {why} Fix it, or leave it out for the scripted user."
        ) from exc


def _call_message(call_id: str, name: str, arguments: dict[str, Any]) -> Message:
    return {"role": "assistant", "content": "", "tool_calls": [ToolCall(id=call_id, name=name, arguments=arguments).to_openai()]}
