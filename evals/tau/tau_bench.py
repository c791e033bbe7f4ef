"""A user's local tau-bench checkout (github.com/sierra-research/tau-bench) as tau-style domains.

tau-bench is not on PyPI and its code is not copied here: point ``EE_TAU_BENCH_DIR`` (or
``tau_bench_dir`` under ``[eval]``, or ``ee eval run --tau-bench-dir``) at a checkout, and its
``retail`` and ``airline`` domains become ``tau:retail[:SPLIT][:N]`` and ``tau:airline[:SPLIT][:N]``.

What is read from the checkout, by import from its path at run time (its layout as of 2025):

* ``tau_bench/envs/<domain>/data``: ``load_data()``, the database as a dict of JSON objects;
* ``tau_bench/envs/<domain>/tools``: ``ALL_TOOLS``, classes with ``get_info()`` (an OpenAI tool
  schema) and ``invoke(data, **arguments) -> str``;
* ``tau_bench/envs/<domain>/wiki``: ``WIKI``, the policy the agent follows;
* ``tau_bench/envs/<domain>/tasks_<split>``: ``TASKS_<SPLIT>`` or ``TASKS``, pydantic ``Task`` items
  (``instruction``, ``actions`` as ``Action(name, kwargs)``, ``outputs``).

Only those modules run. The package's own ``__init__`` files (which import ``litellm`` and the
agents) are skipped: ``tau_bench``, ``tau_bench.envs`` and ``tau_bench.envs.<domain>`` are set up as
bare packages over the checkout's folders, so a checkout works without tau-bench's dependencies
(pydantic is enough). A ``tau_bench`` already imported from elsewhere is refused.

The scripted user of a tau-bench task says the task's instruction in one turn (tau-bench writes it
for a simulated customer); ``--user-model`` gives the simulated customer tau-bench intends.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path
from typing import Any

from ee_middleware.errors import ConfigError
from ee_middleware.evals.tau.domain import RESPOND, TauAction, TauDomain, TauTask, TauTurn, respond_text

ENV_VAR = "EE_TAU_BENCH_DIR"
DOMAINS = ("retail", "airline")
PACKAGE = "tau_bench"


def checkout_dir(setting: str | None = None) -> Path | None:
    """The configured checkout (the setting, else ``EE_TAU_BENCH_DIR``), or None when neither is set."""
    value = setting or os.environ.get(ENV_VAR)
    return Path(value).expanduser() if value else None


def load_domain(name: str, root: Path) -> TauDomain:
    """The domain ``name`` of the checkout at ``root`` (its splits load lazily)."""
    folder = root / PACKAGE / "envs" / name
    if not (folder / "tools").is_dir() or not (folder / "data").is_dir():
        raise ConfigError(
            f"{root} is not a tau-bench checkout with a {name!r} domain (no {folder}/tools or data). Set {ENV_VAR} "
            "(or --tau-bench-dir) to the folder that holds the tau_bench package: git clone https://github.com/sierra-research/tau-bench."
        )
    _bare_packages(root, name)
    tools_module = _import(f"{PACKAGE}.envs.{name}.tools", root)
    data_module = _import(f"{PACKAGE}.envs.{name}.data", root)
    wiki = _import(f"{PACKAGE}.envs.{name}.wiki", root).WIKI
    tools = {cls.get_info()["function"]["name"]: _Invoke(cls) for cls in tools_module.ALL_TOOLS}
    splits = {path.stem.removeprefix("tasks_"): _SplitLoader(name, path.stem, root) for path in sorted(folder.glob("tasks_*.py"))}
    return TauDomain(
        name=name,
        policy=wiki,
        tools=tools,
        schemas=[cls.get_info() for cls in tools_module.ALL_TOOLS],
        load_data=data_module.load_data,
        splits=splits,
        source=str(root),
        categories_from_ground_truth=True,
    )


class _Invoke:
    """A tau-bench tool class as a ``tool(data, **arguments)`` function."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls

    def __call__(self, data: dict[str, Any], **arguments: Any) -> Any:
        return self.cls.invoke(data=data, **arguments)


class _SplitLoader:
    def __init__(self, domain: str, module: str, root: Path) -> None:
        self.domain, self.module, self.root = domain, module, root

    def __call__(self) -> list[TauTask]:
        module = _import(f"{PACKAGE}.envs.{self.domain}.{self.module}", self.root)
        split = self.module.removeprefix("tasks_")
        items = getattr(module, f"TASKS_{split.upper()}", None) or getattr(module, "TASKS", None)
        if not isinstance(items, list):
            raise ConfigError(f"{self.module}.py of the tau-bench {self.domain!r} domain has no TASKS_{split.upper()} or TASKS list.")
        return [_task(i, item) for i, item in enumerate(items)]


def _task(index: int, item: Any) -> TauTask:
    actions = tuple(TauAction(a.name, dict(a.kwargs)) for a in item.actions if a.name != RESPOND)
    outputs = tuple(item.outputs)
    turn = TauTurn(user=item.instruction, actions=actions, reply=respond_text(outputs))
    # tau-bench names no category: the domain gives each task the one its ground truth shows (categories_from_ground_truth)
    return TauTask(id=str(index), turns=(turn,), instruction=item.instruction, outputs=outputs)


def _bare_packages(root: Path, domain: str) -> None:
    base = (root / PACKAGE).resolve()
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None:
        paths = [Path(p).resolve() for p in getattr(loaded, "__path__", [])]
        if base not in paths:
            raise ConfigError(
                f"A tau_bench package is already imported from {', '.join(map(str, paths)) or '?'}, not from {root}; "
                f"run with one checkout ({ENV_VAR})."
            )
    for name, folder in ((PACKAGE, base), (f"{PACKAGE}.envs", base / "envs"), (f"{PACKAGE}.envs.{domain}", base / "envs" / domain)):
        if name not in sys.modules:
            module = types.ModuleType(name, f"tau-bench's {name} package from {folder} (its __init__ not run)")
            module.__path__ = [str(folder)]
            module.__file__ = None
            sys.modules[name] = module


def _import(module: str, root: Path) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(
            f"Cannot import {module} from the tau-bench checkout at {root}: {exc}. The tau-bench harness needs its domain "
            "modules (data, tools, wiki, tasks_*) and pydantic; check the checkout is complete."
        ) from exc
