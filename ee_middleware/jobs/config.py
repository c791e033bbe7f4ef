"""Configuration of ``ee improve``: one TOML file for the whole nightly job.

The ``[improve]`` table says what to learn from and where things go; the other jobs' own tables in
the same file configure each stage exactly as they configure the stand-alone commands (``[replay]``
for ``ee replay run``, ``[datasets]``, ``[train]``, ``[eval]``, ``[gate]``). The improve job fills in
only what ties the stages together (the store, the app, the base model, the suites, each stage's input and output
folders: :data:`OWNED_KEYS`), and refuses those keys in a stage table::

    [improve]
    store = "/data/experience"            # the experience store (a folder or a store spec)
    app = "support-bot"                   # learn from this app's approved trajectories
    registry = "/data/adapters"           # the adapter registry; the app's alias is `alias` (default: app)
    runs = "/data/runs"                   # one folder per run: manifests, datasets, adapter, evals, report
    base_model = "/models/qwen2.5-1.5b-instruct"
    schedule = "iwm"                      # il, iwm (world modeling then imitation) or sr
    suites = ["traces", "bfcl:multi_turn_base:50"]   # "traces" = the app's held-out trajectories
    gate_on_likelihood = false            # also require a lower held-out action NLL than the live model (off: it breaks task ties)
    allow_partial = false                 # a damaged store part fails the run (true: learn from the rest, the watermark stays)
    keep_runs = 14                        # after a run, remove all but the 14 newest run folders and those still needed (unset: keep all)

    [improve.budgets]                     # keep a night bounded; the run says what each one cut
    max_trajectories = 2000
    max_branches = 50000
    max_train_steps = 1500
    max_minutes = 360

    [improve.serving]                     # where the candidate is evaluated and promoted (optional)
    backend = "vllm"                      # or "local" (ee serve local)
    servers = ["http://vllm-0:8000/v1", "http://vllm-1:8000/v1"]

    [replay]
    sandbox = "support_tools.sandbox:make_sandbox"   # your tools' world: a package.module:factory (docs/sandboxes.md); "bfcl" replays only BFCL worlds
    policy = "openai:http://vllm-0:8000/v1#base"
    k = 8
    [datasets]
    kinds = ["il", "iwm"]
    heldout_share = 0.1
    [train]
    max_length = 4096
    [eval]
    max_steps_per_turn = 10
    [gate]
    min_tasks = 50
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr

from ee_middleware._toml import (
    KNOWN_TABLES,
    build_config,
    finite_seconds,
    layered_values,
    named_path,
    naming_file,
    not_blank,
    read_toml,
    read_toml_table,
    stripped_not_blank,
)
from ee_middleware.errors import ConfigError, EEError, MissingSettingError
from ee_middleware.jobs.runs import same_place, sha256_json
from ee_middleware.store.registry import store_config_value

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ee_middleware.evals.gate import GatePolicy
    from ee_middleware.evals.job import EvalJob
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.trainers.datasets.build import DatasetConfig
    from ee_middleware.trainers.training.config import TrainConfig


def example_config() -> str:
    """The commented ``improve.toml`` of this module's docstring: every table the job reads, as a starting point."""
    lines = __doc__.split("::\n", 1)[1].splitlines()
    body = [line[4:] if line.startswith("    ") else line for line in lines if line.startswith("    ") or not line.strip()]
    return "\n".join(body).strip() + "\n"


STAGE_TABLES = ("replay", "datasets", "train", "eval", "gate")
SCHEDULE_KINDS = {"il": ("il",), "iwm": ("il", "iwm"), "sr": ("il", "sr")}
DEFAULT_HELDOUT_SHARE = 0.2
TRACES_SUITE = "traces"

OWNED_KEYS: dict[str, dict[str, str]] = {
    "replay": {
        "store": "[improve] store (or --store, EE_STORE) sets it",
        "app": "[improve] app (or --app) sets it",
        "trajectory_ids": "the run replays the trajectories its select stage chose ([improve.budgets] limits them)",
    },
    "datasets": {
        "store": "[improve] store (or --store, EE_STORE) sets it",
        "app": "[improve] app (or --app) sets it",
        "out": "each run writes its datasets into its own folder under [improve] runs",
        "replay_id": "the run builds from the rollouts of its own replay (the [replay] table's configuration)",
    },
    "train": {
        "base_model": "[improve] base_model (or --base-model) sets it, and the candidate trains on the live adapter's base "
        "when one is live",
        "schedule": "[improve] schedule (or --schedule) sets it",
        "data": "each run trains on its own datasets, in its folder under [improve] runs",
        "output_dir": "each run writes its adapter into its own folder under [improve] runs (then registers it in [improve] registry)",
        "base_cache_dir": "[improve] base_cache_dir sets it",
    },
    "eval": {
        "suites": "[improve] suites sets them",
        "model": "the run evaluates the live adapter (or the base) and its candidate",
        "out": "each run writes its evaluations into its own folder under [improve] runs",
        "split": "the run evaluates on its own held-out split",
    },
}
"""The stage settings ``ee improve`` sets itself, with what sets them: in a stage table they would be ignored."""

FIRST_READER: dict[str, tuple[str, str]] = {
    "replay": ("select", "finished"),
    "datasets": ("datasets", "finished"),
    "train": ("train", "finished"),
    "eval": ("evaluate", "started"),
    "gate": ("gate", "finished"),
}
"""Each stage table's first reader, and what of it fixes the table for a run: a setting may change between two attempts
of a run until that stage has finished (the select stage chose the replay work under [replay]); the evaluate stage's
folders resume only under the settings they started with, so [eval] is fixed once it has started."""

_UNSET = "(not set)"

RUN_NEUTRAL = ("budgets", "serving", "allow_partial", "keep_runs")
"""[improve] settings that may change between two attempts of a run (they are not in its configuration hash): how long
a night is, where the replicas are, whether a damaged store part may be read around, and how many old runs are kept."""


class Budgets(BaseModel):
    """Limits that keep one run bounded. ``None``: no limit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_trajectories: int | None = Field(None, ge=1)
    """Trajectories replayed per run (oldest first); the rest wait for the next run."""
    max_branches: int | None = Field(None, ge=1)
    """Alternative actions executed per run (recorded states x k); trajectories past it wait for the next run."""
    max_train_steps: int | None = Field(None, ge=1)
    """Optimizer steps of the training stage (caps [train] max_steps / epochs)."""
    max_minutes: float | None = Field(None, gt=0)
    """Wall-clock minutes of one call: past it the run stops before its next step (or replayed trajectory) and
    the next call continues it."""


class Serving(BaseModel):
    """The model servers the candidate is evaluated on and promoted into (none: evaluated in-process, promoted in the registry)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = "local"
    """``local`` (``ee serve local``), ``vllm``, or a serving-backend plug-in."""
    servers: list[str] = Field(default_factory=list)
    """Every replica's OpenAI API root, e.g. ``http://127.0.0.1:8000/v1``."""
    base_name: str | None = None
    """The base model's served name (default: the first model the server lists that is not a registered adapter)."""
    max_lora_rank: int | None = Field(None, ge=1)
    """The servers' ``--max-lora-rank`` (default: ``EE_MAX_LORA_RANK``, else 16)."""
    timeout_s: Annotated[
        float,
        finite_seconds("how long one request to the servers may take", "600, or 3600 for a model that may take very long"),
    ] = Field(600.0, gt=0)
    """Seconds per request to the servers (evaluation requests included)."""


def absolute_path(value: Any) -> Any:
    """A local path made absolute against the working directory (``~`` expanded); other values (specs such as
    ``NAME:LOCATION``, ``s3://...``) as written. ``local:PATH`` keeps its prefix."""
    if isinstance(value, Path):
        return Path(os.path.abspath(value.expanduser()))
    if not isinstance(value, str) or not value.strip():
        return value
    if value.startswith("local:"):
        return "local:" + os.path.abspath(os.path.expanduser(value.removeprefix("local:").removeprefix("//")))
    if ":" in value:
        return value
    return os.path.abspath(os.path.expanduser(value))


def _absolute_store(value: Any) -> Any:
    spec = store_config_value(not_blank(value))
    return absolute_path(spec) if isinstance(spec, Path) else spec


def _no_heldout_text(table: Mapping[str, Any]) -> str:
    """Why a ``[datasets]`` table holds out nothing, for the improve job that evaluates on the held-out trajectories: the
    settings written that hold out nothing (``heldout_share = 0.0``) are named, with the value to write instead."""
    rules = "name the held-out trajectories with heldout_ids, heldout_app or heldout_started_after/before"
    written = [key for key in table if key.startswith("heldout_")]
    if "heldout_share" in written:
        return (
            f"[datasets] heldout_share = {table['heldout_share']!r} holds out nothing, so the improve job would have no held-out "
            f"trajectories to evaluate the candidate on: set heldout_share above 0 (e.g. {DEFAULT_HELDOUT_SHARE}, a seeded share "
            f"of the app's trajectories), or {rules}."
        )
    if written:
        settings = ", ".join(f"{key} = {table[key]!r}" for key in written)
        return (
            f"[datasets] {settings} {'hold' if len(written) > 1 else 'holds'} out nothing, so the improve job would have no held-out trajectories to evaluate the "
            f"candidate on: set heldout_share above 0 (e.g. {DEFAULT_HELDOUT_SHARE}), or give heldout_ids, heldout_app or "
            "heldout_started_after/before a value."
        )
    return (
        "The improve job evaluates on held-out trajectories: set a held-out rule in [datasets] "
        f"(heldout_share = {DEFAULT_HELDOUT_SHARE}, heldout_ids, heldout_app, heldout_started_after/before)."
    )


class ImproveConfig(BaseModel):
    """Everything ``ee improve`` needs (see the module docstring).

    Relative paths (``store``, ``registry``, ``runs``, ``base_model``, ``base_cache_dir``) are read from the working
    directory, as every ``ee`` command reads paths (not from the config file's folder), and kept absolute: the run
    records where its store, registry and runs folder were."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: Annotated[Path | str, BeforeValidator(_absolute_store)]
    app: Annotated[str, BeforeValidator(stripped_not_blank)] = Field(min_length=1)
    """Learn from this app's approved trajectories (its name without the blanks around it, as capture stores it)."""
    registry: Annotated[str, BeforeValidator(not_blank), AfterValidator(absolute_path)] = Field(min_length=1)
    runs: Annotated[Path, BeforeValidator(not_blank), AfterValidator(absolute_path)]
    base_model: Annotated[str, BeforeValidator(not_blank), AfterValidator(absolute_path)] = Field(min_length=1)
    """A save_pretrained folder or a .gguf file; must be the base of the app's live adapter, if any."""
    alias: str | None = None
    """The app's name in the registry and at the router (default: ``app``)."""
    schedule: Literal["il", "iwm", "sr"] = "iwm"
    suites: list[str] = Field(default_factory=lambda: [TRACES_SUITE], min_length=1)
    """Eval suites for candidate and live; ``traces`` (or ``traces:N``) is the app's held-out trajectories in ``store``."""
    likelihood: bool = True
    """Also score the held-out expert actions' likelihood (candidate vs live vs base)."""
    likelihood_states: int | None = Field(64, ge=1)
    """Held-out states scored (None: all)."""
    likelihood_decode: int = Field(0, ge=0)
    """Held-out states also decoded greedily (parse rate, name and exact match)."""
    gate_on_likelihood: bool = False
    """The gate also requires the candidate's held-out action NLL to be lower than the live model's. Off, the likelihood
    still breaks a tie on tasks: when no task changed outcome, a candidate whose NLL is higher beyond 2 s.e. fails."""
    allow_partial: bool = False
    """Off, a read of the store that damage made incomplete (an unreadable Parquet part, a damaged record) fails the
    run, which keeps the watermark: once the store is repaired, the next call continues it and learns from everything.
    On (``--allow-partial``), the run learns from what can be read and says what it skipped; its watermark stays where it
    was, so the next run selects those trajectories again. Not part of the run's configuration: a run that failed on
    damage may be continued with it."""
    keep_runs: int | None = Field(None, ge=1)
    """After each run that ends without an error, remove the runs folder's old runs as ``ee runs prune --keep N`` does:
    all but the ``keep_runs`` newest and every run still needed (unfinished, an app's watermark, the live adapter's or the
    one a rollback returns to). At least 1: the run just done is the newest, and stays (its report, ``ee runs show
    latest``). ``None``: nothing is removed."""
    notes: str | None = None
    """Shown at the top of the report (e.g. what the run is for, or that its base model is a test model)."""
    base_cache_dir: Annotated[Path | None, named_path("the folder for converted base models"), AfterValidator(absolute_path)] = None
    """Where a GGUF base is converted once (default: ``RUNS/base-models``)."""
    budgets: Budgets = Field(default_factory=Budgets)
    serving: Serving = Field(default_factory=Serving)
    config_path: Path | None = None
    """The TOML file the stage tables are read from (set by :meth:`load`)."""
    _store_origin: str | None = PrivateAttr(None)  # where store came from, for its error (store_set_by); no setting

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, **overrides: Any) -> ImproveConfig:
        """Defaults <- the file's ``[improve]`` table <- ``overrides`` (``None`` values are ignored)."""
        values = layered_values(path, "improve", overrides, job="improve job")
        if path is not None:  # a misspelt [improv] holds the keys said missing below: named first, as what to fix
            _check_table_names(Path(path).expanduser().resolve(), warn=False)
        # (a setting given as empty text is not missing: it is refused as such, naming where it came from)
        missing = [name for name in ("store", "app", "registry", "runs", "base_model") if values.get(name) is None]
        if missing:
            raise MissingSettingError(
                f"The improve job needs {', '.join(missing)}: set {'it' if len(missing) == 1 else 'them'} in the [improve] table "
                "of --config FILE (or pass the flags)."
            )
        if path is not None:
            values["config_path"] = Path(path).expanduser().resolve()
            _check_sub_table_keys(values["config_path"], getattr(values, "from_file", {}))
        with naming_file("improve", values.get("config_path")):
            return build_config(cls, values, "improve")

    @property
    def alias_name(self) -> str:
        return self.alias or self.app

    def tables(self) -> dict[str, dict[str, Any]]:
        """The stage tables of the config file (empty when there is no file)."""
        if self.config_path is None:
            return {name: {} for name in STAGE_TABLES}
        return {name: read_toml_table(self.config_path, name) for name in STAGE_TABLES}

    def describe(self) -> dict[str, Any]:
        """The whole configuration as JSON: ``[improve]`` and the stage tables, the value of every secret-named setting
        (``api_key``, ``hf_token``, at any depth) as ``***``: it is written to run.json and printed by ``--json``."""
        return _without_secrets({"improve": self.model_dump(mode="json", exclude={"config_path"}), **self.tables()})

    def scope(self) -> dict[str, Any]:
        """What a run learns from (its store and app, as :meth:`describe` writes them): runs of another scope in the same
        runs folder (another app's nightly job) have their own watermark and are not continued by this one."""
        described = self.describe()["improve"]
        return {"store": described["store"], "app": described["app"]}

    def config_hash(self, recorded: Mapping[str, Any] | None = None) -> str:
        """Identifies the configuration: an unfinished run is continued only with the same one.

        :data:`RUN_NEUTRAL` settings are left out: a stopped run may be continued with a longer night, with
        replicas that moved (stages not yet finished use the new values) or with ``allow_partial``. ``recorded``: an earlier run's
        ``[improve]`` table, whose paths are hashed as it wrote them where they name the same place (a
        version before paths were recorded absolute wrote them as the file had them, ``store = "s"``), so
        that its hash is this configuration's when nothing else differs."""
        described = self.describe()
        improve = {k: v for k, v in described["improve"].items() if k not in RUN_NEUTRAL}
        if recorded:
            improve = {k: recorded[k] if k in recorded and same_place(recorded[k], v) else v for k, v in improve.items()}
        described["improve"] = improve
        return sha256_json(described)

    def changed_settings(self, recorded: Mapping[str, Any], *, neutral: bool = False) -> list[tuple[str, str, Any, Any]]:
        """``(table, key, before, after)`` for each setting that differs from ``recorded`` (a run's configuration, as
        :meth:`describe` wrote it); :data:`RUN_NEUTRAL` settings are left out, as :meth:`config_hash` leaves them,
        unless ``neutral`` (what a run records it went on with: a longer night's budget)."""
        now = self.describe()
        changed = []
        for table in ("improve", *STAGE_TABLES):
            before, after = recorded.get(table) or {}, now.get(table) or {}
            for key in sorted(set(before) | set(after)):
                if table == "improve" and key in RUN_NEUTRAL and not neutral:
                    continue
                old, new = before.get(key, _UNSET), after.get(key, _UNSET)
                if not same_place(old, new):
                    changed.append((table, key, old, new))
        return changed

    def refused_changes(self, run: Any) -> str | None:
        """Whether the unfinished ``run``, started with another configuration, may go on with this one: ``None`` when
        every setting that differs belongs to a stage table whose stage has not yet fixed it (:data:`FIRST_READER`, e.g.
        [train] batch_size lowered after the train stage ran out of memory), else which settings differ and why each
        cannot change now."""
        from ee_middleware.jobs.runs import changed_lines

        changed = self.changed_settings(run.data.get("config") or {})
        if not changed:
            return "no setting differs as this version reads them; the file was written by another version."
        described, refused = [], False
        for table, key, old, new in changed:
            shown = "; ".join(changed_lines(table, key, old, new, width=60))  # key by key, secrets as ***
            if table == "improve":
                refused = True
                described.append(f"{shown} (the [improve] table is fixed for a run)")
                continue
            stage, fixed_when = FIRST_READER[table]
            fixed = run.stage_done(stage) if fixed_when == "finished" else run.stage(stage) is not None
            refused |= fixed
            described.append(f"{shown} ({'fixed: its ' + stage + ' stage has ' + fixed_when if fixed else 'may change'})")
        if not refused:
            return None
        return (
            "; ".join(described) + ". A stage table's settings may change between attempts until the stage that reads them "
            "first has finished (the evaluate stage: started)."
        )

    def check(self, *, evaluation_sandbox: bool = True) -> None:
        """Build every stage's configuration now and look at the base model, so that a typo in a stage table, an unknown
        suite or a base model that cannot be trained stops the job before it replays anything (found by the stage that
        reads it, hours later, it left a failed run that the corrected file could not continue).

        ``evaluation_sandbox=False`` leaves out :meth:`check_evaluation_sandbox`, which may build a sandbox: the job
        runs it once it knows that an evaluate stage is still to run (a run continued at its promote stage needs none)."""
        import tempfile

        if self.config_path is not None:
            self.tables()  # a file that is not TOML is named here
            _check_table_names(self.config_path)
        self._check_owned_keys()
        self._check_alias()
        folder = Path(tempfile.gettempdir()) / "ee-improve-check"
        with naming_file("replay", self.config_path):
            replay = self.replay_config()
        with naming_file("datasets", self.config_path):
            data = self.dataset_config(folder / "data", None)
        with naming_file("train", self.config_path):
            train = self.train_config(folder / "data", folder / "adapter", max_steps=None)
        with naming_file("eval", self.config_path):
            job = self.eval_job("noop", folder / "eval", folder / "data" / "datasets.json")
        with naming_file("gate", self.config_path):
            self.gate_policy()
        _check_specs(replay.sandbox, replay.policy, job.sandbox, data.teacher if "sr" in data.kinds else None)
        if self.serving.servers:  # (without servers the candidate is promoted in the registry alone: no backend is used)
            _check_serving_backend(self.serving.backend)
        if evaluation_sandbox:
            self._check_traces_sandbox(job.sandbox)
        from ee_middleware.evals.suites import SuiteSettings, load_suite

        for written, spec in zip(self.suites, self.suite_specs(), strict=True):
            try:
                load_suite(spec, SuiteSettings(split=str(folder / "data")))  # reads the spec only; nothing is loaded yet
            except ConfigError as exc:
                other_harness = written.strip().startswith(("bfcl:", "tau:"))  # the traces hint would point away from it
                hint = "" if other_harness else f" Here, {TRACES_SUITE!r} (or 'traces:N') is this app's own held-out trajectories."
                raise ConfigError(f"[improve] suites = [{written!r}]: {exc}{hint}") from exc
        self._check_base(train.base_model, train.max_length, train.target_modules)
        _check_device(train.device)
        self._check_store(replay.sandbox)

    def _check_alias(self) -> None:
        """The app's name in the registry (``alias``, else ``app``) is one the registry takes. Found by the register stage,
        after replay and training, a bad one failed a run that the corrected file could not continue (the [improve] table
        is fixed for a run). An app name capture took (``SupportBot``) is one to give an alias, not to rename."""
        from ee_middleware.adapters.records import ADAPTER_NAME, app_name_problem

        problem = app_name_problem(self.alias_name)
        if problem is None:
            return
        if self.alias:
            raise ConfigError(f"[improve] alias = {self.alias!r} is not a name the registry takes: {problem}.")
        suggestion = re.sub(r"[^a-z0-9._-]+", "-", self.app.lower()).strip("-._")[:63]
        if (named := ADAPTER_NAME.fullmatch(suggestion)) is not None:
            suggestion = named["app"]
        if app_name_problem(suggestion) is not None:
            suggestion = "my-app"
        raise ConfigError(
            f"The app {self.app!r} is also its name in the registry and at the router when [improve] sets no alias, and it "
            f"cannot be that: {problem}. Keep app as capture stored it and set the served name in [improve]: "
            f"alias = {suggestion!r}."
        )

    def check_evaluation_sandbox(self) -> None:
        """With a ``traces`` suite, that the evaluation's sandbox has ``state_digest()`` (:meth:`_check_traces_sandbox`):
        :meth:`check` does it unless told not to; the job does it before a run whose evaluate stage is still to run."""
        import tempfile

        folder = Path(tempfile.gettempdir()) / "ee-improve-check"
        with naming_file("eval", self.config_path):
            job = self.eval_job("noop", folder / "eval", folder / "data" / "datasets.json")
        self._check_traces_sandbox(job.sandbox)

    def _check_traces_sandbox(self, sandbox: str | None) -> None:
        """A ``traces`` suite scores each held-out trajectory by the sandbox's ``state_digest()`` (the candidate's final
        world against the expert's): in a sandbox without one every task is left out, so the run would replay and train,
        then fail its gate ('no task was scored') and end with exit status 0, every night. Stop before the run instead.

        The sandbox (``sandbox``: the evaluation's, ``[eval] sandbox`` or else ``[replay] sandbox``) is looked at without
        being built where its spec tells its class (a class, a factory whose return annotation names a class with the
        method, ``mcp:``, ``experience:``); otherwise one is built as the suite builds it, looked at and closed."""
        traces = [written for written in self.suites if written.strip().partition(":")[0] == TRACES_SUITE]
        if not traces or sandbox is None:
            return  # None: no sandbox named anywhere, which the store check refuses with its own message
        key = "[eval] sandbox" if "sandbox" in self.tables()["eval"] else "[replay] sandbox (the evaluation's too: [eval] names none)"
        where = f" in {self.config_path}" if self.config_path is not None else ""
        others = [written for written in self.suites if written not in traces]
        drop = (
            f"drop {', '.join(repr(t) for t in traces)} from [improve] suites (suites = {others!r})"
            if others
            else "replace the traces suite in [improve] suites with a suite that needs no digest (bfcl:..., tau:...)"
        )
        if not sandbox or not sandbox.strip():
            from ee_middleware.evals.traces.suite import BFCL_APP_PREFIX, sandbox_spec

            if sandbox_spec(self.app, None):
                return  # the suite's own default: bfcl, for BFCL expert apps
            raise ConfigError(
                f"{key} = {sandbox!r}{where}: the traces suite ([improve] suites = {list(self.suites)!r}) runs each held-out "
                f"trajectory in a sandbox, and only BFCL expert apps ({BFCL_APP_PREFIX}*) have a default one, so for the app "
                f"{self.app!r} every task would be left out: the run would replay and train, then fail its gate with no task "
                "scored. Name the sandbox its tools run in (package.module:factory, the one [replay] sandbox takes; "
                f"docs/sandboxes.md), or {drop}."
            )
        problem = _no_state_digest(sandbox.strip())
        if problem is None:
            return
        raise ConfigError(
            f"{key} = {sandbox!r}{where}: {problem}. The traces suite ([improve] suites = {list(self.suites)!r}) scores each "
            "held-out trajectory by comparing the sandbox's state_digest() after the candidate's run with the expert's, so "
            "every task would be left out: the run would replay and train, then fail its gate with no task scored, every "
            "night. Add a state_digest() -> str method to the sandbox (ee_middleware.replay.sandboxes.digest.digest_of digests "
            f"a world; PythonSandbox has one; docs/sandboxes.md), or {drop}."
        )

    def _check_owned_keys(self) -> None:
        """A stage setting the job sets itself (:data:`OWNED_KEYS`) is an error naming what sets it: the job would drop
        it without a word (a [train] base_model trained nothing on it, while run.json recorded it)."""
        tables = self.tables()
        problems = [
            f"[{table}] {key}: {why}" for table, owned in OWNED_KEYS.items() for key, why in owned.items() if key in tables.get(table, {})
        ]
        if problems:
            where = f" in {self.config_path}" if self.config_path is not None else ""
            raise ConfigError(
                f"ee improve sets these stage settings itself, so the ones{where} would be ignored: {'; '.join(problems)}. "
                "Remove them from the stage tables (the stand-alone commands, ee replay run, ee datasets build, ee train and "
                "ee eval run, read them)."
            )

    def store_set_by(self, origin: str) -> None:
        """Say where :attr:`store` came from (``--store``, ``EE_STORE=VALUE``, ``store in [improve] of FILE``: the CLI's
        :func:`~ee_middleware.cli.common.store_origin`), for the error about a store that is not there."""
        self._store_origin = origin

    def _check_store(self, replay_sandbox: str = "") -> None:
        """The store is there, and records this app if it records any: a misspelt app in a store of other apps would end
        every night as 'nothing-new' (exit status 0) and never learn anything. With the built-in ``bfcl`` replay sandbox
        (``[replay] sandbox``'s default), the app's approved trajectories must hold BFCL worlds (see
        :meth:`_check_bfcl_worlds`)."""
        import difflib

        from ee_middleware.errors import StoreError
        from ee_middleware.store.registry import open_store, recorded_apps, said_where_set

        try:
            store = open_store(self.store, create=False)
        except StoreError as exc:
            if self._store_origin is None:
                raise ConfigError(f"[improve] store = {str(self.store)!r} (or --store, EE_STORE): {exc}") from exc
            raise ConfigError(said_where_set(str(exc), self._store_origin)) from exc
        try:
            apps = recorded_apps(store)
            if replay_sandbox.strip() == "bfcl" and self.app in apps:
                self._check_bfcl_worlds(store)
        finally:
            store.close()
        close = difflib.get_close_matches(self.app, apps, n=1, cutoff=0.6) if apps and self.app not in apps else []
        # a misspelt app: a typo or two away from one recorded; a new app in a shared store (support-bot-v2 beside
        # support-bot) has nothing new yet, as before
        close = [name for name in close if _edits(self.app.lower(), name.lower()) <= 2]
        if close:
            shown = ", ".join(repr(a) for a in apps[:20]) + (f" and {len(apps) - 20} more" if len(apps) > 20 else "")
            raise ConfigError(
                f"[improve] app = {self.app!r} (or --app): the store {self.store} holds no trajectory of it; did you mean "
                f"{close[0]!r}? It records {shown} (`ee traces list --store {self.store} --status all`). Set app to the name "
                "the agent records with (record_experience(..., app=...))."
            )

    def _check_bfcl_worlds(self, store: Any) -> None:
        """Replayed in the built-in ``bfcl`` sandbox (the default of ``[replay] sandbox``), trajectories whose environment
        reference is not a BFCL world (``involved_classes``) are all skipped: a run started from the example file without
        a sandbox line would replay nothing, train anyway and say why only at the gate. Stop before the run instead when
        none of the app's approved trajectories holds one."""
        import polars as pl

        from ee_middleware.store.registry import trajectory_columns

        frame = trajectory_columns(store, ["environment_json", "tools_json"], status="approved", app=self.app)
        if not {"environment_json", "tools_json"} <= set(frame.columns):
            return
        # an agent offered no tool (a chat app) has no state to branch from in any sandbox: skipped, and nothing is wrong
        frame = frame.filter(~pl.col("tools_json").fill_null("").str.strip_chars().is_in(["", "[]", "null"]))
        if not frame.height or frame.get_column("environment_json").fill_null("").str.contains('"involved_classes"', literal=True).any():
            return
        written = self.config_path is not None and "sandbox" in read_toml_table(self.config_path, "replay")
        where = f" in {self.config_path}" if self.config_path is not None else ""
        said = '[replay] sandbox = "bfcl"' if written else f"[replay] sandbox is not set{where}, so replay would use the default 'bfcl'"
        raise ConfigError(
            f"{said}, which rebuilds only BFCL worlds (an environment reference with involved_classes, as ee bfcl "
            f"record-experts records them); none of the {frame.height} approved trajectories of {self.app!r} with tools holds one, so "
            "every one would be skipped and the run would train without a single replayed branch. Set [replay] sandbox to "
            'the sandbox of your tools: sandbox = "package.module:factory", a factory returning it (docs/sandboxes.md).'
        )

    def _check_base(self, base_model: str, max_length: int, target_modules: tuple[str, ...] | None = None) -> None:
        from ee_middleware.adapters.registry import open_registry
        from ee_middleware.trainers.training.model import check_base

        try:  # looked at, never made: a run that starts makes it (a check that fails leaves nothing behind)
            registry = open_registry(self.registry, create=False)
        except Exception as exc:
            if not _registry_missing(exc):
                raise
            registry = None
        live = registry.resolve(self.alias_name) if registry is not None else None
        if live is not None and Path(registry.get(live).base_model).is_dir():
            live_base = registry.get(live).base_model
            if not same_place(live_base, base_model):
                from ee_middleware.trainers.training.errors import BaseModelError
                from ee_middleware.trainers.training.model import resolve_base

                try:  # not trained on while the adapter is live, but used once none is (a rollback to the base)
                    resolve_base(base_model)
                except BaseModelError as exc:
                    raise ConfigError(
                        f"base_model in [improve] (or --base-model), used when no adapter is live (the candidate trains on the "
                        f"base of the live adapter {live}, {live_base}): {exc}"
                    ) from exc
            base_model, where = live_base, f"the base of the live adapter {live}"  # what the candidate trains on
        else:
            where = "base_model in [improve] (or --base-model)"
        try:
            source = check_base(base_model, max_length=max_length)
        except Exception as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if target_modules:
            from ee_middleware.trainers.training.model import check_target_modules

            try:
                check_target_modules(source, target_modules)
            except Exception as exc:
                raise ConfigError(f"[train] target_modules = {list(target_modules)!r} on {where}: {exc}") from exc

    # --- the stages' own configs ------------------------------------------------------------------

    def replay_config(self, *, limit: int | None = None, trajectory_ids: list[str] | None = None) -> ReplayConfig:
        """The replay stage's config, at the newest attempt of its configuration in the store (a sandbox fixed and
        replayed with ``ee replay run --again`` is the one the job continues and builds datasets from)."""
        from ee_middleware.replay.config import ReplayConfig
        from ee_middleware.replay.job import with_attempt
        from ee_middleware.store.registry import open_store

        config = ReplayConfig.load(
            self.config_path, nightly=True, store=self.store, app=self.app, limit=limit, trajectory_ids=trajectory_ids
        )
        try:
            store = open_store(config.store, create=False)
        except EEError:
            return config  # no store yet (a start-up check): its first attempt
        try:
            return with_attempt(store, config)
        finally:
            store.close()

    def dataset_config(self, out: Path, replay_id: str | None) -> DatasetConfig:
        from ee_middleware.trainers.datasets.build import DatasetConfig

        table = self.tables()["datasets"]
        overrides: dict[str, Any] = {"store": self.store, "out": out, "app": self.app, "replay_id": replay_id}
        if "kinds" not in table:
            overrides["kinds"] = SCHEDULE_KINDS[self.schedule]
        if not any(key.startswith("heldout_") for key in table):
            overrides["heldout_share"] = DEFAULT_HELDOUT_SHARE
        config = DatasetConfig.load(self.config_path, nightly=True, **overrides)
        needed = set(SCHEDULE_KINDS[self.schedule]) - set(config.kinds)
        if needed:
            raise ConfigError(f"schedule {self.schedule!r} trains on {', '.join(sorted(needed))}: add it to kinds in [datasets].")
        if not config.split_rule().active:
            raise ConfigError(_no_heldout_text(table))
        return config

    def train_config(self, data: Path, output_dir: Path, *, max_steps: int | None, base_model: str | None = None) -> TrainConfig:
        from ee_middleware.trainers.training.config import TrainConfig

        cache = self.base_cache_dir or Path(self.runs) / "base-models"
        return TrainConfig.load(
            self.config_path,
            nightly=True,
            base_model=base_model or self.base_model,
            data=data,
            schedule=self.schedule,
            output_dir=output_dir,
            max_steps=max_steps,
            base_cache_dir=cache,
        )

    def eval_job(self, model: str, out: Path, split: Path) -> EvalJob:
        from ee_middleware.evals.job import EvalJob

        options: dict[str, Any] = {"suites": self.suite_specs(), "model": model, "out": str(out), "split": str(split)}
        tables = self.tables()
        if model.startswith("openai:") and "timeout_s" not in tables["eval"]:
            options["timeout_s"] = self.serving.timeout_s
        if model.startswith("openai:") and "api_key_env" not in tables["eval"]:
            from ee_middleware.models.openai_compat import SERVE_API_KEY_ENV

            options["api_key_env"] = SERVE_API_KEY_ENV  # (only the replicas of [improve.serving] are evaluated on over HTTP)
        replayed_in = tables["replay"].get("sandbox")
        if "sandbox" not in tables["eval"] and isinstance(replayed_in, str) and not replayed_in.strip().startswith("experience:"):
            # The held-out trajectories run in the world their siblings were replayed in (an experience model is not that world).
            options["sandbox"] = replayed_in
        return EvalJob.load(self.config_path, nightly=True, **options)

    def gate_policy(self) -> GatePolicy:
        from ee_middleware.evals.gate import GatePolicy

        return GatePolicy.load(self.config_path, nightly=True)

    def suite_specs(self) -> list[str]:
        """The suites with ``traces`` / ``traces:N`` spelled out as this app's ``traces:STORE:APP[:N]``."""
        specs = []
        for suite in self.suites:
            name, _, count = suite.partition(":")
            if name == TRACES_SUITE and (not count or count.isdigit()):
                specs.append(f"traces:{self.store}:{self.app}" + (f":{count}" if count else ""))
            else:
                specs.append(suite)
        return specs


def _check_table_names(path: Path, *, warn: bool = True) -> None:
    """Refuse a table of ``path`` that is a near miss of one ee improve reads (``[improv]``, ``[Replay]``,
    ``[budgets]`` for ``[improve.budgets]``), naming it and the table meant; with ``warn``, say on stderr which other
    tables no ee job reads (another tool's sharing the file, ``[notify]``: the user's, not refused)."""
    import difflib

    known = ("improve", *STAGE_TABLES, "capture")
    # a mistaken table would be dropped without a word ([budgets] for [improve.budgets]: no budget at all)
    problems, foreign = [], []
    for table, value in read_toml(path).items():  # UTF-8 with a BOM, or UTF-16, as the stages read it
        if table in known or table in KNOWN_TABLES:  # (another ee command's: [experience_eval] beside the nightly job's)
            continue
        meant = SUB_TABLES.get(table) or next(iter(difflib.get_close_matches(table, known, n=1, cutoff=0.75)), None)
        if meant is not None:
            problems.append(f"[{table}]: did you mean [{meant}]? (rename the line [{table}] to [{meant}])")
        else:
            foreign.extend(_table_names(table, value))
    if problems:
        reads = "[improve] (with [improve.budgets] and [improve.serving]), " + ", ".join(f"[{t}]" for t in known[1:])
        raise ConfigError(
            f"{path} has a table {'; and a table '.join(problems)}. Its settings would be ignored without a word. "
            f"(ee improve reads {reads}.)"
        )
    if foreign and warn:
        import warnings

        named = ", ".join(foreign)
        warnings.warn(
            f"{path} has {named}, which no ee job reads: ee improve ignores {'it' if len(foreign) == 1 else 'them'} (fine if "
            f"another tool reads {'it' if len(foreign) == 1 else 'them'}; otherwise move the settings into the ee table that "
            "reads them).",
            UserWarning,
            stacklevel=3,
        )


def _table_names(name: str, value: Any) -> list[str]:
    """How a top-level entry of a TOML file is written, for a message: ``[tool.mycompany]`` (its full dotted name, each
    sub-table that holds keys of its own), ``[notify]``, or ``the key name`` for a key outside any table."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [f"[[{name}]]"]
    if not isinstance(value, dict):
        return [f"the key {name}"]
    own = any(not isinstance(v, dict) for v in value.values()) or not value
    names = [f"[{name}]"] if own else []
    for key, sub in value.items():
        if isinstance(sub, dict):
            names.extend(_table_names(f"{name}.{key}", sub))
    return names


SUB_TABLES = {"budgets": "improve.budgets", "budget": "improve.budgets", "serving": "improve.serving", "servers": "improve.serving"}
"""Top-level tables written for a sub-table of ``[improve]``, and the sub-table meant."""


def _check_sub_table_keys(path: Path, table: Mapping[str, Any]) -> None:
    """A key of ``[improve]`` (``table``, as the file at ``path`` has it) that is a setting of ``[improve.budgets]`` or
    ``[improve.serving]`` is an error naming the file and the sub-table it belongs in (pydantic said only 'Extra inputs
    are not permitted')."""
    own = set(ImproveConfig.model_fields)
    misplaced: dict[str, list[str]] = {}
    for name, model in (("improve.budgets", Budgets), ("improve.serving", Serving)):
        keys = [key for key in table if key not in own and key in model.model_fields]
        if keys:
            misplaced[name] = keys
    if misplaced:
        moves = "; ".join(f"{', '.join(keys)} belong{'s' if len(keys) == 1 else ''} in [{name}]" for name, keys in misplaced.items())
        lines = " and ".join(f"an [{name}] line" for name in misplaced)
        raise ConfigError(
            f"{path}: {moves}, not directly in [improve]. Move {'it' if sum(map(len, misplaced.values())) == 1 else 'them'} "
            f"below {lines} (after the [improve] keys), e.g.\n[{next(iter(misplaced))}]\n{next(iter(misplaced.values()))[0]} = ..."
        )


def _registry_missing(exc: BaseException) -> bool:
    """``exc``, raised opening the registry without ``create``, says it is not there yet (a first night: the run makes
    it): :class:`RegistryNotFoundError`, or the plain :class:`RegistryError` a plug-in written before that class existed
    raises (as the local registry did). A busy or corrupt registry, and a plug-in that ee could not build (its spec, its
    options, its factory failing otherwise), are errors of their own."""
    import traceback

    from ee_middleware.adapters.errors import RegistryError, RegistryNotFoundError

    if isinstance(exc, RegistryNotFoundError):
        return True
    if type(exc) is not RegistryError:
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).name != "plugins.py"  # raised by the registry, not by ee's loader


def _check_specs(replay_sandbox: str, policy: str, eval_sandbox: str | None, teacher: str | None = None) -> None:
    """The replay's sandbox and policy, the evaluation's sandbox and the SR teacher (``None``: no sr dataset is built)
    name something that imports (a factory is looked up, not called; a ``local:`` model's folder must exist), so that a
    misspelt name stops the job before a run starts rather than failing it at the replay, datasets or evaluate stage."""
    from ee_middleware.errors import EEError
    from ee_middleware.models.spec import is_model_spec, parse_model_spec
    from ee_middleware.replay.policies.registry import POLICIES
    from ee_middleware.replay.sandboxes.registry import SANDBOXES, check_sandbox_spec
    from ee_middleware.trainers.datasets.teachers import TEACHERS

    for key, kind, spec in (
        ("[replay] sandbox", SANDBOXES, replay_sandbox),
        ("[replay] policy", POLICIES, policy),
        ("[eval] sandbox", SANDBOXES, eval_sandbox),
        ("[datasets] teacher", TEACHERS, teacher),
    ):
        if not spec or spec.strip().startswith("experience:"):  # an experience model is built from a model spec when it runs
            continue
        try:
            if kind is SANDBOXES:
                check_sandbox_spec(spec)  # as ee replay run checks it: an MCP config file read, a factory imported
                continue
            if not is_model_spec(spec):
                kind.resolve(spec)
                continue
            parsed = parse_model_spec(spec, registry=kind)
            if parsed.kind == "local" and not Path(parsed.path or "").expanduser().exists():
                raise ConfigError(
                    f"no model folder at {parsed.path}: write the folder (or .gguf file) of a model saved with save_pretrained"
                )
        except EEError as exc:
            raise ConfigError(f"{key} = {spec!r}: {exc}") from exc


def _check_serving_backend(spec: str) -> None:
    """``[improve.serving] backend`` names a serving backend (a built-in, a factory that imports, an installed entry
    point): a typo stopped the job at its promote stage, after hours of replay and training."""
    from ee_middleware.adapters.serving.backend import BACKENDS
    from ee_middleware.errors import EEError

    try:
        BACKENDS.resolve(spec)
    except EEError as exc:
        raise ConfigError(f"[improve.serving] backend = {spec!r}: {exc}") from exc


def _no_state_digest(spec: str) -> str | None:
    """Why the sandbox ``spec`` names has no ``state_digest()``, or None when it has one (or may: a class that hands
    attributes on with ``__getattr__``). Its class is read where the spec tells it; otherwise one sandbox is built
    as the traces suite builds it (no options), looked at and closed. A sandbox that cannot be built is named with
    what it raised: the suite could not build it either."""
    from ee_middleware.errors import EEError
    from ee_middleware.replay.sandboxes.registry import SANDBOXES, build_sandbox

    try:
        if spec.startswith("mcp:"):
            from ee_middleware.replay.sandboxes.mcp import McpSandbox

            known: type | None = McpSandbox
        elif spec.startswith("experience:"):
            from ee_middleware.replay.sandboxes.experience import ExperienceSandbox

            known = ExperienceSandbox
        else:
            known = _sandbox_class(SANDBOXES.resolve(spec))
    except EEError as exc:
        raise ConfigError(f"sandbox {spec!r}: {exc}") from exc
    if known is not None and (has := _has_state_digest(known)) is not None:
        return None if has else f"its class {known.__module__}.{known.__qualname__} has no state_digest() method"
    try:
        sandbox = build_sandbox(spec)
    except Exception as exc:
        raise ConfigError(
            f"sandbox {spec!r}: building one to look for its state_digest() (the traces suite builds one per task the same "
            f"way, without options) failed: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        if callable(getattr(sandbox, "state_digest", None)):
            return None
        kind = type(sandbox)
        return f"the sandbox its factory returns ({kind.__module__}.{kind.__qualname__}) has no state_digest() method"
    finally:
        close = getattr(sandbox, "close", None)
        if callable(close):
            close()


def _sandbox_class(factory: Any) -> type | None:
    """The class of the sandboxes ``factory`` returns, where it tells it without being called: the factory itself when it
    is a class, else its return annotation when that names a concrete class with ``state_digest`` (one without it may
    still return a subclass that has it: then None, and a sandbox is built to see)."""
    import typing

    if isinstance(factory, type):
        return factory
    try:
        returned = typing.get_type_hints(factory).get("return")
    except Exception:  # noqa: BLE001 - an annotation that does not resolve (a TYPE_CHECKING import): not known
        return None
    if isinstance(returned, type) and _has_state_digest(returned):
        return returned
    return None


def _has_state_digest(cls: type) -> bool | None:
    """Whether instances of ``cls`` have ``state_digest()``; None when the class cannot tell (a protocol, or a class that
    hands attributes on with ``__getattr__``, such as a wrapper around another sandbox)."""
    if callable(getattr(cls, "state_digest", None)):
        return True
    if getattr(cls, "_is_protocol", False) or getattr(cls, "__getattr__", None) is not None:
        return None
    return False


def _check_device(device: str) -> None:
    """``[train] device = "cuda"`` on a machine where torch sees no GPU fails the train stage, hours in: stop now. Asked
    only where torch is installed (the job without it fails at its own check of the train extra)."""
    if device != "cuda":
        return
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            '[train] device = "cuda", but torch sees no CUDA GPU on this machine (torch.cuda.is_available() is False; '
            f'torch {torch.__version__}, built for CUDA {torch.version.cuda or "none"}): set device = "auto" (a GPU where there '
            'is one) or "cpu", or run the job where the GPU is.'
        )


def _edits(a: str, b: str) -> int:
    """The Levenshtein distance of two names (insertions, deletions and substitutions)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _without_secrets(value: Any) -> Any:
    """``value`` with the value of every secret-named key (:func:`~ee_middleware._toml._is_secret_name`) as ``***``, and
    the credentials of every URL in a string (``user:password@``, a secret-looking query parameter:
    :func:`~ee_middleware.models.urls.shown_spec`) as ``***``."""
    from collections.abc import Mapping

    from ee_middleware._toml import _is_secret_name
    from ee_middleware.models.urls import shown_spec

    if isinstance(value, Mapping):
        return {
            k: "***" if isinstance(k, str) and _is_secret_name(k) and v not in (None, "") else _without_secrets(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return shown_spec(value) if isinstance(value, str) else value
