"""The eval job's one config (:class:`EvalJob`): TOML ``[eval]`` table, flags on top."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ee_middleware._limits import MAX_EVAL_TRIALS
from ee_middleware._toml import build_config, finite_seconds, layered_values, named_path
from ee_middleware.errors import ConfigError
from ee_middleware.evals.loop import LoopConfig
from ee_middleware.evals.suites import SuiteSettings

MAX_TRIALS = MAX_EVAL_TRIALS
"""The most trials per task an eval job takes (:data:`~ee_middleware._limits.MAX_EVAL_TRIALS`, ``ee eval run --trials``'s
bound too)."""


class EvalJob(BaseModel):
    """What to evaluate, with which model, how often, and where the results go.

    ``model`` is ``oracle``, ``noop`` or a model spec (``openai:BASE_URL#MODEL``,
    ``local:DIR[@ADAPTER]``, ``package.module:factory``). ``user_model`` (tau suites) is an
    OpenAI-compatible model spec for the LLM user simulator (at most ``max_user_turns`` messages);
    without it the user is scripted. ``tau_bench_dir``: a tau-bench checkout for ``tau:retail`` and
    ``tau:airline`` (default: the ``EE_TAU_BENCH_DIR`` environment variable). ``split``: the
    ``datasets.json`` whose held-out trajectories ``traces:`` suites evaluate; ``sandbox``: their
    sandbox spec (default ``bfcl`` for BFCL expert apps).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    suites: list[str] = Field(min_length=1)
    model: str = Field(min_length=1)
    out: Annotated[str, named_path("the run folder")]
    trials: int = Field(1, ge=1, le=MAX_TRIALS)
    workers: int = Field(1, ge=1)
    seed: int = 0
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_tokens: int = Field(512, ge=1)
    max_steps_per_turn: int = Field(20, ge=1)
    feed_back_parse_errors: bool = False
    timeout_s: Annotated[
        float, finite_seconds("how long one model request may take", "120, or 3600 for a model that may take very long")
    ] = Field(60.0, gt=0)
    retries: int = Field(2, ge=0)
    user_model: str | None = None
    max_user_turns: int = Field(10, ge=1)
    tau_bench_dir: str | None = None
    split: str | None = None
    sandbox: str | None = None
    api_key_env: str | None = Field(None, min_length=1)
    """The environment variable whose value the model's client sends as its API key (default: ``EE_OPENAI_API_KEY``,
    then ``OPENAI_API_KEY``); ``ee improve`` sets ``EE_SERVE_API_KEY`` when it evaluates on its own replicas."""

    @field_validator("suites")
    @classmethod
    def _no_duplicates(cls, suites: list[str]) -> list[str]:
        if len(set(suites)) != len(suites):
            raise ValueError(f"a suite is listed twice: {suites}")
        return suites

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *, nightly: bool = False, **overrides: Any) -> EvalJob:
        """Defaults <- TOML ``[eval]`` table <- ``overrides``. ``nightly``: ``path`` is ee improve's file, read for its
        evaluate stage, so it may leave ``[eval]`` out.

        An ``endpoint`` key (the ``--endpoint`` flag has no key of its own) is an error that names the key it and
        ``--model`` make, ``model = "openai:URL#NAME"`` (:func:`served_model_hint`), besides the table's other problems."""
        values = layered_values(path, "eval", overrides, job="eval job", nightly=nightly)
        endpoint = ""
        if "endpoint" in values:
            endpoint = f"endpoint: not an [eval] key: {served_model_hint(values.pop('endpoint'), values.get('model'))}"
        try:
            job = build_config(cls, values, "eval")
        except ConfigError as exc:
            if not endpoint:
                raise
            raise ConfigError(f"{INVALID}{endpoint}; {str(exc).removeprefix(INVALID)}") from None
        if endpoint:
            raise ConfigError(INVALID + endpoint)
        return job

    def loop_config(self) -> LoopConfig:
        return LoopConfig(
            max_steps_per_turn=self.max_steps_per_turn,
            feed_back_parse_errors=self.feed_back_parse_errors,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )

    def suite_settings(self) -> SuiteSettings:
        """What the suites need from this job (hashable: suites are cached per spec and settings)."""
        tau_bench_dir = self.tau_bench_dir or os.environ.get("EE_TAU_BENCH_DIR") or None
        return SuiteSettings(tau_bench_dir, self.user_model, self.max_user_turns, self.split, self.sandbox)

    def client_options(self) -> dict[str, Any]:
        """Options for the model client (only an OpenAI-compatible client takes them)."""
        if not self.model.startswith("openai:"):
            return {}
        options: dict[str, Any] = {"timeout_s": self.timeout_s, "retries": self.retries}
        if self.api_key_env:
            options["api_key"] = os.environ.get(self.api_key_env, "")
            options["api_key_knob"] = self.api_key_env
        return options

    def run_settings(self) -> dict[str, Any]:
        """The settings that make the run (two runs with the same ones give the same answers), credentials hidden.

        All but ``out``, ``suites`` (a run may grow by suites), ``workers``, ``timeout_s`` and ``retries`` (how long and
        how often the client waits for the server: a resumed run may change them). ``split`` is what the split is
        (:func:`split_identity`: its ``datasets.json`` resolved and a digest of its ids), not the text it was given as;
        ``tau_bench_dir`` an absolute path."""
        settings = _run_settings(self.model_dump())
        settings["split"] = split_identity(self.split)
        if self.tau_bench_dir:
            settings["tau_bench_dir"] = _absolute(self.tau_bench_dir)
        return settings

    @classmethod
    def recorded_settings(cls, recorded: dict[str, Any], settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """:meth:`run_settings` of a job recorded in a ``run.json`` (``recorded``: its ``job``; ``settings``: its
        ``settings``, the run settings as they were resolved when it ran, where it has them).

        An older version's record lacks ``settings``: its settings are the job's, as given (a relative split or
        tau-bench folder is read from the current folder when compared: :func:`settings_changes`), and the settings added
        since were at their defaults."""
        known = {name: recorded.get(name, None if field.is_required() else field.default) for name, field in cls.model_fields.items()}
        values = _run_settings(known)
        if isinstance(settings, dict):
            values.update({name: settings[name] for name in values if name in settings})
        return values

    def changed_settings(
        self, recorded: dict[str, Any], settings: dict[str, Any] | None = None, *, ignore: tuple[str, ...] = ()
    ) -> list[str]:
        """``[eval] SETTING: RECORDED -> THIS`` for each run setting that differs from a recorded job's (the shape of
        ``ee improve``'s changed settings), but ``ignore``; ``settings``: the record's resolved ones (see
        :meth:`recorded_settings`)."""
        return settings_changes(self.recorded_settings(recorded, settings), self.run_settings(), ignore=ignore)

    def record(self) -> dict[str, Any]:
        """The job as ``run.json`` holds it: every setting, the credentials of URLs (``user:password@``) hidden."""
        return {name: _hidden(value) for name, value in self.model_dump().items()}

    def run_key(self) -> str:
        """A digest of :meth:`run_settings` (recorded in ``run.json``; holds no credential, not even hashed)."""
        return hashlib.sha256(json.dumps(self.run_settings(), sort_keys=True).encode()).hexdigest()[:16]


INVALID = "Invalid eval configuration: "
"""How an [eval] table's problems begin (:func:`~ee_middleware._toml.build_config`'s, for the ``eval`` job)."""


def served_model_hint(endpoint: Any = None, name: Any = None) -> str:
    """What the ``model`` key holds for a model an OpenAI-compatible server serves, which the flags give as ``--endpoint
    URL --model NAME``: ``model = "openai:URL#NAME"``, and the file's own values in it where they are these (``endpoint``: the
    URL; ``name``: a served model's bare name, not a model spec)."""
    url = endpoint if isinstance(endpoint, str) and endpoint.strip() else "URL"
    served = name if is_bare_model_name(name) else "NAME"
    text = '--endpoint URL with --model NAME is model = "openai:URL#NAME"'
    return text if (url, served) == ("URL", "NAME") else f'{text}, here model = "openai:{url}#{served}"'


def is_bare_model_name(model: Any) -> bool:
    """Whether ``model`` reads as a served model's name (``base``, ``my-adapter``), which no model spec is but an installed
    ``ee_middleware.models`` entry point's, ``oracle`` and ``noop``: no ``:``, no path."""
    if not isinstance(model, str) or not model.strip() or model.strip() in ("oracle", "noop"):
        return False
    if any(mark in model for mark in (":", "/", "\\")) or model.startswith("."):
        return False
    from ee_middleware.models.spec import CHAT_CLIENTS

    return model.strip() not in CHAT_CLIENTS.installed()


def settings_changes(
    before: dict[str, Any], after: dict[str, Any], *, ignore: tuple[str, ...] = (), tasks_paired: bool = False
) -> list[str]:
    """``[eval] SETTING: BEFORE -> AFTER`` for each of two :meth:`EvalJob.run_settings` that differs, but ``ignore``.

    Two splits differ when their ids do (:func:`same_split`), whatever path names them. ``tasks_paired``: the caller
    compares the two runs' tasks by id (the gate), so an older record's split text may be taken by what it names
    (:func:`same_split`'s ``tasks_paired``)."""
    return [
        f"[eval] {name}: {_shown(before.get(name))} -> {_shown(after[name])}"
        for name in after
        if name not in ignore and not _same(name, before.get(name), after[name], tasks_paired)
    ]


def adapter_identity(model: str) -> dict[str, Any] | None:
    """What the LoRA adapter of a ``local:BASE@ADAPTER`` model spec is: ``path`` (its folder, resolved) and
    ``content_hash`` (:func:`~ee_middleware.adapters.records.content_hash` of its config and weights: what ``ee adapters
    register`` records as that folder's ``content_hash``), or ``content_hash`` None and ``unknown`` saying why (the
    folder has no config or weights to hash). None for a model without a local adapter (an ``openai:`` model is
    identified by its served name).

    Hashing reads the adapter's files once (a LoRA adapter's few to some hundred MB: well under a second or a few)."""
    from ee_middleware.adapters.records import CONFIG_FILE, WEIGHT_FILES, content_hash
    from ee_middleware.models.spec import parse_model_spec

    try:
        parsed = parse_model_spec(model)
    except Exception:  # noqa: BLE001 - oracle, noop, a factory: no adapter folder
        return None
    if parsed.kind != "local" or not parsed.adapter:
        return None
    folder = Path(parsed.adapter).expanduser().resolve()
    identity: dict[str, Any] = {"path": str(folder), "content_hash": None}
    weights = next((name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None or not (folder / CONFIG_FILE).is_file():
        missing = CONFIG_FILE if weights else " or ".join(WEIGHT_FILES)
        identity["unknown"] = f"{folder} has no {missing} to hash"
        return identity
    try:
        identity["content_hash"] = content_hash(folder, weights)
    except OSError as exc:
        identity["unknown"] = f"{folder / weights} could not be read ({exc})"
    return identity


SPLIT_FILE = "datasets.json"


def split_identity(split: str | None) -> dict[str, Any] | None:
    """What a ``split`` setting (a ``datasets.json``, or the folder holding one) is: ``path`` (the file, resolved),
    ``digest`` (of its held-out and trained trajectory ids: the same for a copy, another for a rebuild with other ids;
    None when the file cannot be read as a split), ``heldout`` and ``trained`` (how many ids). None when not set."""
    if not split:
        return None
    file = Path(split).expanduser()
    if file.is_dir():  # as the traces: suite reads it
        file = file / SPLIT_FILE
    file = file.resolve()
    identity: dict[str, Any] = {"path": str(file), "digest": None, "heldout": None, "trained": None}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        ids = data["split"]
        heldout, trained = sorted(set(map(str, ids["heldout_trajectories"]))), sorted(set(map(str, ids.get("train_trajectories") or [])))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return identity  # the traces: suite names what is wrong with it; a run of other suites does not read it
    text = json.dumps({"heldout": heldout, "trained": trained}, ensure_ascii=False)
    identity.update(digest=hashlib.sha256(text.encode()).hexdigest()[:16], heldout=len(heldout), trained=len(trained))
    return identity


def same_split(before: Any, after: Any, *, tasks_paired: bool = False) -> bool:
    """Whether two recorded ``split`` settings (:func:`split_identity`, or an older record's text) are one split: the
    same ids when both have a digest, else the same resolved file. An older record's text is read as
    :func:`split_identity` reads it now (a relative one from the current folder: where its run was made is not recorded),
    so a relative one naming nothing from the current folder (:func:`unresolved_split_text`) is another split.

    ``tasks_paired``: the caller pairs the two runs' tasks by id and refuses two different sets of them (the gate, whose
    ``traces:`` tasks are the held-out trajectories), so that text is the other's split when it names that split's folder
    or file by its tail (``data`` or ``data/datasets.json`` for ``/work/data/datasets.json``), as two older records of one
    text are. ``datasets.json`` alone names no folder (every split's file is called so) and is another split there too.
    A resume checks no task of the suites its command does not name, so it never passes ``tasks_paired``."""
    if before == after:
        return True
    for text, other in ((before, after), (after, before)):
        if isinstance(text, str) and isinstance(other, dict) and other.get("path") and unresolved_split_text(text):
            return tasks_paired and _names_tail(text, str(other["path"]))
    before, after = (split_identity(v) if isinstance(v, str) else v for v in (before, after))
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return False
    if before.get("digest") and after.get("digest"):
        return bool(before["digest"] == after["digest"])
    return bool(before.get("path") == after.get("path"))


def unresolved_split_text(split: Any) -> bool:
    """Whether a recorded split is an older run record's text (as typed) that is relative and names nothing from the
    current folder: what it named depended on the folder its run was made in, which that record does not hold."""
    if not isinstance(split, str) or not split:
        return False
    path = Path(split).expanduser()
    return not path.is_absolute() and not path.exists()


def _names_tail(text: str, path: str) -> bool:
    """Whether the relative ``text`` names the split file ``path`` (resolved) from some folder: its tail, or its folder's,
    with at least one folder or a file name of its own (``datasets.json`` alone is the tail of every split)."""
    parts = Path(os.path.normpath(text)).parts
    if ".." in parts or not (parts[:-1] if parts[-1:] == (SPLIT_FILE,) else parts):
        return False
    file = Path(path)
    tails = [file.parts] + ([file.parent.parts] if file.name == SPLIT_FILE else [])
    return any(tail[-len(parts) :] == parts for tail in tails if len(tail) > len(parts))


def _same(name: str, before: Any, after: Any, tasks_paired: bool = False) -> bool:
    if name == "split":
        return same_split(before, after, tasks_paired=tasks_paired)
    if name == "tau_bench_dir" and isinstance(before, str) and isinstance(after, str):  # an older record's, as typed
        return _absolute(before) == _absolute(after)
    return bool(before == after)


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


ANSWER_NEUTRAL = ("out", "suites", "workers", "timeout_s", "retries", "api_key_env")
"""Settings that do not change the answers: a run resumed with other values of them is the same run."""


def _run_settings(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _hidden(value) for name, value in values.items() if name not in ANSWER_NEUTRAL}


def _shown(value: Any) -> str:
    if isinstance(value, dict) and "path" in value:  # a split_identity
        if not value.get("digest"):
            return f"{value['path']} (not readable as a split)"
        return f"{value['path']} ({value['heldout']} held out, {value['trained']} trained; ids digest {value['digest']})"
    return "(not set)" if value is None else str(value)


def _hidden(value: Any) -> Any:
    from ee_middleware.errors import hide_credentials

    if isinstance(value, str):
        return hide_credentials(value)
    if isinstance(value, list):
        return [_hidden(v) for v in value]
    return value
