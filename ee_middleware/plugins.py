"""One plugin registry for every pluggable part: sandboxes, policies, teachers, stores, model clients.

Every kind of part is named the same three ways on the command line and in configuration files:

* a **built-in name** (``bfcl``, ``mutate``, ``template``, ``local``);
* ``package.module:factory``: an importable callable (a class or a function) that builds the part;
* the **name of an entry point** in the kind's group (``ee_middleware.sandboxes``,
  ``ee_middleware.policies``, ...), for installed plug-ins.

Built-ins go through the same path as third-party plug-ins, so the built-in path is the tested
one. Kinds with forms of their own (``local:DIR[@ADAPTER]`` and ``openai:BASE_URL#MODEL`` for
models, a folder for stores) read those first and hand everything else to their
:class:`PluginKind`. Specs are strings so that worker processes (local or on a Ray cluster) can
build their own parts: a built part never crosses a process boundary.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from ee_middleware.errors import ConfigError, EEError, hide_credentials

FACTORY_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""``package.module:attr.path``: what a user's own factory looks like."""


def _options_not_taken(factory: Callable[..., Any], options: Mapping[str, Any]) -> list[str]:
    """The names in ``options`` that ``factory`` has no keyword parameter for (none when its signature cannot be read
    or it takes ``**kwargs``)."""
    if not options:
        return []
    try:  # the callable's own signature: a decorator's wrapper (functools.wraps) may take other arguments than it wraps
        parameters = inspect.signature(factory, follow_wrapped=False).parameters.values()
    except (TypeError, ValueError):
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        wrapped = getattr(factory, "__wrapped__", None)  # a pass-through wrapper: what it wraps says which options exist
        return _options_not_taken(wrapped, options) if callable(wrapped) and wrapped is not factory else []
    taken = {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return [name for name in options if name not in taken]


def _options_taken(factory: Callable[..., Any], positional: int = 0) -> list[str]:
    """The keyword parameters of ``factory`` (those after the first ``positional``, which ee passes by position); none
    when its signature cannot be read."""
    try:
        parameters = list(inspect.signature(factory, follow_wrapped=False).parameters.values())
    except (TypeError, ValueError):
        return []
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for i, p in enumerate(parameters) if p.kind in keyword and i >= positional]


def _did_you_mean(name: str, names: list[str], *, quoted: bool = False) -> str:
    """`` (did you mean NAME?)`` for an option spelled close to one of ``names`` (``quoted``: ``'NAME'``, for a plug-in's
    name or a factory's); else nothing."""
    from ee_middleware._toml import _closest  # the rule config files' unknown keys are told with

    close = _closest(name, names)
    return f" (did you mean {close!r}?)" if close and quoted else f" (did you mean {close}?)" if close else ""


def _public_callables(target: Any) -> list[str]:
    """The names of ``target``'s public callables (a module's functions and classes): what a factory spec may name."""
    return [name for name in dir(target) if not name.startswith("_") and callable(getattr(target, name, None))]


def _arguments_not_fitting(factory: Callable[..., Any], args: tuple[Any, ...], options: Mapping[str, Any]) -> str | None:
    """Why ``factory`` cannot be called with ``args`` and ``options`` (a required parameter left without a value), or
    None when they fit or its signature cannot be read."""
    try:  # the callable's own signature (see _options_not_taken)
        signature = inspect.signature(factory, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*args, **options)
    except TypeError as exc:
        return str(exc)
    return None


def _call_text(name: str, args: tuple[Any, ...], options: Mapping[str, Any]) -> str:
    """How ee calls a factory, as code: ``make_sandbox(allow_network=True)``."""
    return f"{name}({', '.join([repr(a) for a in args] + [f'{key}={value!r}' for key, value in options.items()])})"


def _example_parameter(value: Any) -> str:
    """The annotation and default to show for a parameter taking ``value`` (the option given): ``float = 0.0`` for
    ``--temperature 0.5``, not always ``bool = False``."""
    if isinstance(value, bool):
        return "bool = False"
    if isinstance(value, (int, float, str)):
        return f"{type(value).__name__} = {type(value)()!r}"
    return "Any = None"


def _where_raised(exc: BaseException, module: str | None = None, *, users_only: bool = False, code: bool = True) -> str:
    """Where ``exc`` was raised in the user's code: the last frame of its traceback outside ee_middleware, the standard
    library and installed packages (the first frame below the caller when every frame is theirs), as ``FILE:LINE, in
    FUNCTION: `CODE```; the file relative to the working folder when it is inside it. Empty without a traceback.

    With ``module`` (a plug-in's module that raised while it was imported): a frame in that module's top package counts
    as the user's too (an installed plug-in lives in site-packages), a SyntaxError is told at the line of the file that
    Python could not read (``FILE:LINE: `CODE```), and without a frame of the user's (the module is not found) it is
    empty: the frames left are the import machinery's. ``users_only``: empty, too, where no frame is the user's.
    ``code``: with the frame's line of code (``: `CODE```)."""
    import traceback

    if module is not None and isinstance(exc, SyntaxError) and exc.filename and exc.lineno and not exc.filename.startswith("<"):
        return _frame_text(traceback.FrameSummary(exc.filename, exc.lineno, "", line=(exc.text or "").strip() or None))
    tb = exc.__traceback__
    walked = list(traceback.walk_tb(tb.tb_next)) if tb is not None and tb.tb_next is not None else []
    if not walked:
        return ""
    frames = traceback.StackSummary.extract(walked)
    others = {Path(__file__).resolve().parent, *_library_roots()}
    top = module.partition(".")[0] if module is not None else None

    def users(i: int) -> bool:
        if top is not None and str(walked[i][0].f_globals.get("__name__", "")).partition(".")[0] == top:
            return True
        filename = frames[i].filename
        return not filename.startswith("<") and not any(Path(filename).resolve().is_relative_to(o) for o in others)

    theirs = [frame for i, frame in enumerate(frames) if users(i)]
    if not theirs and (module is not None or users_only):
        return ""
    return _frame_text(theirs[-1] if theirs else frames[0], code=code)


def where_user_code_raised(exc: BaseException, *, code: bool = True) -> str:
    """Where ``exc`` was raised in the user's own code (a plug-in's sandbox, policy or tool: see :func:`_where_raised`),
    as ``FILE:LINE, in FUNCTION: `CODE``` (without the code where ``code`` is false: a ``redact_fn``'s line may spell out
    what it removes); empty where no frame of its traceback is the user's (ee's own errors)."""
    return _where_raised(exc, users_only=True, code=code)


def _frame_text(frame: Any, *, code: bool = True) -> str:
    """A traceback frame (``traceback.FrameSummary``) as ``FILE:LINE, in FUNCTION: `CODE```, the file relative to the
    working folder when it is inside it (without ``, in FUNCTION`` for a frame without a name: a SyntaxError's line;
    without ``: `CODE``` where ``code`` is false)."""
    path = Path(frame.filename)
    try:
        shown = str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        shown = str(path)
    return f"{shown}:{frame.lineno}" + (f", in {frame.name}" if frame.name else "") + (f": `{frame.line}`" if code and frame.line else "")


def _reproduce(module: str, attr: str | None = None, arguments: str = "") -> str:
    """The one-liner that shows the whole traceback of a plug-in's failure: importing ``module``, and calling its ``attr``
    with ``arguments`` (code) when given."""
    call = f" as m; m.{attr}({arguments})" if attr is not None else ""
    return f'python -c "import {module}{call}"'


_LOADED: dict[str, tuple[str, str]] = {}
"""The modules of the plug-ins built in this process (ee's own built-ins left out), by module name: their kind and
spec, so that an error raised later in their code, while they work, is told as theirs (:func:`plugin_that_raised`)."""


def _library_roots(*keys: str) -> list[Path]:
    """The folders of the standard library and of installed packages (site-packages), or those of ``keys`` (sysconfig's
    path names)."""
    import sysconfig

    paths = sysconfig.get_paths()
    return [Path(p).resolve() for key in keys or ("stdlib", "platstdlib", "purelib", "platlib") if (p := paths.get(key))]


def _is_library(module: str, *, installed: bool = True) -> bool:
    """Whether ``module`` is the standard library's (``abc``, ``contextlib``; a built-in or frozen one too) or, with
    ``installed``, an installed package's (in site-packages), by where its file is."""
    file = getattr(sys.modules.get(module), "__file__", None)
    if not file:
        return module.partition(".")[0] in sys.stdlib_module_names
    where = Path(file).resolve()
    if any(where.is_relative_to(root) for root in _library_roots("purelib", "platlib")):  # under platstdlib in a venv
        return installed
    return any(where.is_relative_to(root) for root in _library_roots("stdlib", "platstdlib"))


def _remember(module: str | None, kind: str, spec: str) -> None:
    if module and module.partition(".")[0] not in ("ee_middleware", "builtins") and not _is_library(module, installed=False):
        _LOADED[module] = (kind, spec)


def plugin_that_raised(exc: BaseException) -> tuple[str, str, str] | None:
    """The plug-in in whose code ``exc`` was raised, as ``(kind, spec, where)``: the plug-in is the one whose module holds
    the deepest frame of the traceback that is in a plug-in's module built in this process, and ``where`` the deepest
    frame at or below it in that module's top package (a helper module of the plug-in), as ``FILE:LINE, in FUNCTION:
    `CODE```. None when no frame is in a plug-in's module (ee's own code, or a library's), and when a frame of
    ee_middleware is deeper than the plug-in's last one (the plug-in called into ee's code, through ``super()`` or a
    helper, and ee's code raised it: an ee error, not the plug-in's)."""
    import traceback

    frames = [(frame, line, frame.f_globals.get("__name__")) for frame, line in traceback.walk_tb(exc.__traceback__)]
    owned = [i for i, (_, _, module) in enumerate(frames) if isinstance(module, str) and module in _LOADED]
    if not owned:
        return None
    kind, spec = _LOADED[frames[owned[-1]][2]]
    top = frames[owned[-1]][2].partition(".")[0]
    deepest = max(
        i for i, (_, _, module) in enumerate(frames) if i >= owned[-1] and isinstance(module, str) and module.partition(".")[0] == top
    )
    # ee's own code below the plug-in's last frame (a store subclass's super() call into ee's store) raised it: ee's error
    if any(isinstance(module, str) and module.partition(".")[0] == "ee_middleware" for _, _, module in frames[deepest + 1 :]):
        return None
    frame, line, _ = frames[deepest]
    [summary] = traceback.StackSummary.extract([(frame, line)])
    return kind, spec, _frame_text(summary)


_FILE_SPEC = re.compile(r"^(?P<path>(?:[A-Za-z]:)?[^:]*?(?:[/\\][^:]*?|\.py))(?::(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*))?$")
"""A file path where a ``package.module:factory`` spec belongs: ``helpdesk/replay_sandbox.py:make_sandbox``."""


def _module_form_of_path(spec: str, kind: str) -> str | None:
    """For a spec that is a file path (``helpdesk/replay_sandbox.py:make_sandbox``), the module form to use instead and the
    folder to run from (the one holding the top package: the file's folders up to the first without ``__init__.py``
    when the file is there); None for any other spec."""
    match = _FILE_SPEC.match(spec)
    if match is None:
        return None
    given = Path(match["path"])
    file = given if given.suffix == ".py" else given.with_suffix(".py")
    if file.is_file():
        root = file.resolve().parent
        while (root / "__init__.py").is_file() and root.parent != root:
            root = root.parent
        parts = file.resolve().with_suffix("").relative_to(root).parts
    else:  # not there: the path as given, from its last '..' or its root
        parts = tuple(p for p in given.with_suffix("").parts if p not in (".", given.anchor))
        if ".." in parts:
            parts = parts[len(parts) - parts[::-1].index("..") :]
        root = (Path.cwd() / given).parent.joinpath(*[".."] * (len(parts) - 1)).resolve()
    if not parts:
        return None
    module = ".".join(parts)
    holds = f"'{parts[0]}/'" if len(parts) > 1 else f"'{parts[0]}.py'"
    here = "" if root == Path.cwd().resolve() else f" ({root})"
    factory = match["attr"] or "FACTORY"
    text = f"it is a file path, not a module: name the module instead, '{module}:{factory}', run from the folder that holds {holds}{here}"
    if not match["attr"]:
        text += f", FACTORY being the function in it that returns the {kind}"
    invalid = [p for p in parts if not p.isidentifier()]
    if invalid:
        text += f"; rename {', '.join(repr(p) for p in invalid)}: a module's name has only letters, digits and underscores"
    return text


class ShadowedPluginWarning(UserWarning):
    """An installed entry point named as a built-in part is not used (said once, by the process that checks the job's
    parts: the workers that build them again leave it unsaid)."""


@dataclass(frozen=True)
class PluginKind:
    """One kind of pluggable part and how its specs resolve.

    ``builtins`` maps built-in names to ``module:attr`` paths (imported only when chosen);
    ``protocol`` is a runtime-checkable protocol every built object must satisfy, described to
    users by ``requires``; ``forms`` lists accepted spec forms the kind reads itself (shown in
    errors); ``error`` is the exception class raised for every problem.
    """

    kind: str
    group: str
    error: type[EEError]
    builtins: Mapping[str, str] = field(default_factory=dict)
    protocol: type | None = None
    requires: str = ""
    forms: tuple[str, ...] = ()
    options_from: str = ""
    """Where a user gives the factory's keyword options (its jobs' flags and config tables), for the error that says a
    factory needs some; empty where ee passes them itself."""

    def installed(self) -> dict[str, EntryPoint]:
        """The entry points installed in this kind's group, by name."""
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def accepted_forms(self) -> list[str]:
        """Every accepted spec form, for error messages and ``--help``."""
        forms = [f"a built-in name ({', '.join(repr(n) for n in sorted(self.builtins))})"] if self.builtins else []
        forms += list(self.forms)
        forms.append(f"'package.module:factory' (a callable that returns a {self.kind})")
        installed = sorted(self.installed())
        shown = [f"{name!r} (unused: the built-in has that name)" if name in self.builtins else repr(name) for name in installed]
        where = f"installed: {', '.join(shown)}" if installed else "none installed"
        forms.append(f"the name of a '{self.group}' entry point ({where})")
        return forms

    def unknown(self, spec: Any, why: str) -> EEError:
        """The error for a spec that names nothing: what is wrong, the built-in or installed name it is spelled close to
        (its ``NAME`` before ``:LOCATION`` too: ``jsonstor:/data``), and every form that would work."""
        shown = hide_credentials(repr(spec))  # a spec may be a URL with user:password@
        return self.error(
            f"Unknown {self.kind} {shown} ({hide_credentials(why)}){self._near_name(spec)}. Accepted forms: "
            + "; ".join(self.accepted_forms())
            + "."
        )

    def _near_name(self, spec: Any) -> str:
        """`` (did you mean 'NAME'?)`` for a spec whose name (before any ``:``) is spelled close to a built-in name or an
        installed entry point's of this kind; else nothing (a name that is one of them, a path, a spec that is no name)."""
        name = spec.strip().partition(":")[0] if isinstance(spec, str) else ""
        names = sorted({*self.builtins, *self.installed()})
        if not re.fullmatch(r"[A-Za-z_][\w.+-]*", name) or name in names:
            return ""
        return _did_you_mean(name, names, quoted=True)

    def resolve(self, spec: str) -> Callable[..., Any]:
        """The factory ``spec`` names (imported now), without calling it."""
        if not isinstance(spec, str) or not spec.strip():
            raise self.unknown(spec, "the spec is empty")
        spec = spec.strip()
        if spec in self.builtins:
            self._warn_shadowed(spec)
            return self._load(self.builtins[spec], spec)
        if FACTORY_SPEC.match(spec):
            return self._load(spec, spec)
        entry_point = self.installed().get(spec)
        if entry_point is not None:
            factory = self._load(f"{entry_point.module}:{entry_point.attr or ''}", spec, entry_point=entry_point)
            _remember(entry_point.module, self.kind, spec)
            return factory
        raise self.unknown(spec, _module_form_of_path(spec, self.kind) or "it matches none of the accepted forms")

    def _warn_shadowed(self, name: str) -> None:
        """Warn (once per entry point) that an installed entry point named ``name``, a built-in name, is not used: the
        built-in is (a plug-in's author may not know the name is taken, and its user would get the built-in unawares)."""
        entry_point = self.installed().get(name)
        if entry_point is None or (self.group, name, entry_point.value) in _SHADOWED_WARNED:
            return
        _SHADOWED_WARNED.add((self.group, name, entry_point.value))
        distribution = getattr(getattr(entry_point, "dist", None), "name", None)
        origin = f" of the distribution {distribution!r}" if distribution else ""
        warnings.warn(
            f"The '{self.group}' entry point {name!r}{origin} ({entry_point.value}) is not used: {name!r} is the built-in "
            f"{self.kind}, which takes its place. Name that entry point another way, or give its factory "
            f"({entry_point.value}) as the spec.",
            ShadowedPluginWarning,
            stacklevel=3,
        )

    def build(self, spec: str, /, *args: Any, **options: Any) -> Any:
        """The part ``spec`` names, built with ``args`` and ``options``, checked against the protocol."""
        return self.construct(spec, self.resolve(spec), *args, **options)

    def check_call(self, spec: str, factory: Callable[..., Any], /, *args: Any, **options: Any) -> None:
        """Whether ``factory`` can be called for ``spec`` with ``args`` and ``options``, by its signature, without calling
        it (the checks :meth:`construct` makes first): an option it takes no parameter for ('Bad options ... did you
        mean'), or arguments that do not fit it, is this kind's error. A factory taking ``**kwargs`` accepts every option."""
        if not callable(factory):
            raise self.error(f"{spec!r} names {type(factory).__name__}, not a callable that builds a {self.kind}")
        _remember(getattr(factory, "__module__", None), self.kind, spec)
        if FACTORY_SPEC.match(spec.strip()):
            _remember(spec.strip().partition(":")[0], self.kind, spec)
        unknown = _options_not_taken(factory, options)
        if unknown:
            taken = _options_taken(factory, len(args))
            names = ", ".join(name + _did_you_mean(name, taken) for name in unknown)
            if getattr(factory, "__module__", "").partition(".")[0] == "ee_middleware":  # ee's own: the setting is wrong
                fix = f"Its options are {', '.join(taken) or 'none'}: correct the setting's name, or leave it out."
            else:
                example = f"{unknown[0]}: {_example_parameter(options[unknown[0]])}"
                fix = (
                    f"Add a keyword parameter with a default for it to the factory (e.g. `{example}`), or leave out the setting "
                    "that passes it."
                )
                if any(_did_you_mean(name, taken) for name in unknown):  # a misspelt setting: the name it means first
                    fix = f"Correct the setting's name, or leave it out. {fix}"
            raise self.error(
                f"Bad options for {self.kind} {spec!r}: its factory {getattr(factory, '__qualname__', factory)!r} takes no "
                f"option {names}. {fix}"
            )
        mismatch = _arguments_not_fitting(factory, args, options)
        if mismatch is not None:
            raise self._cannot_call(spec, factory, args, options, mismatch)

    def construct(self, spec: str, factory: Callable[..., Any], /, *args: Any, **options: Any) -> Any:
        """Call ``factory`` for ``spec`` and check what it returns; every failure is this kind's error."""
        from ee_middleware.models.urls import shown_spec  # (credentials in a spec's URL stay out of its messages)

        self.check_call(spec, factory, *args, **options)
        try:
            part = factory(*args, **options)
        except ConfigError as exc:
            if type(exc) is not ConfigError:  # a more specific one (a missing setting, say) says what to do itself
                raise
            raise self.error(f"Bad settings for {self.kind} {shown_spec(spec)!r}: {exc}") from exc
        except EEError:
            raise
        except TypeError as exc:
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                # raised by the call itself, no frame of the factory's own: the arguments do not fit a callable whose
                # signature could not be read (a C type)
                raise self._cannot_call(spec, factory, args, options, str(exc)) from exc
            raise self._failed(spec, factory, args, options, exc) from exc
        except ValueError as exc:
            if not args and not options:  # no settings to blame: the factory's own code failed (a file it reads, say)
                raise self._failed(spec, factory, args, options, exc) from exc
            where = _where_raised(exc, users_only=True)
            raise self.error(
                f"Bad settings for {self.kind} {shown_spec(spec)!r}: {exc}" + (f" (raised at {where})" if where else "")
            ) from exc
        except Exception as exc:
            raise self._failed(spec, factory, args, options, exc) from exc
        # a method it inherits from a class of the user's, in another module; not a library's class (abc, contextlib, an
        # installed package's), unless it is the plug-in's own installed package
        own = {m.partition(".")[0] for m in (getattr(factory, "__module__", None), spec.strip().partition(":")[0]) if m}
        for cls in type(part).__mro__:
            if cls.__module__.partition(".")[0] in own or not _is_library(cls.__module__):
                _remember(cls.__module__, self.kind, spec)
        if self.protocol is not None and not isinstance(part, self.protocol):
            raise self.error(
                f"{spec!r} returned {type(part).__name__}, which is not a {self.protocol.__name__}"
                + (f": it needs {self.requires}" if self.requires else "")
            )
        return part

    def _cannot_call(self, spec: str, factory: Callable[..., Any], args: tuple[Any, ...], options: Mapping[str, Any], why: str) -> EEError:
        """The error for a factory that cannot be called with what ee passes it (a parameter without a default)."""
        name = getattr(factory, "__name__", None) or type(factory).__name__
        how = f"as {_call_text(name, args, options)}" if args or options else "with no arguments"
        given = f", give its options with {self.options_from}" if self.options_from else ""
        return self.error(
            f"Cannot build {self.kind} {spec!r}: its factory {name!r} cannot be called as ee calls it: {why}. ee calls it {how}. "
            f"Give each of its parameters a default{given}, or name a function that takes none and returns the {self.kind} "
            "(reading what it needs from environment variables or a file)."
        )

    def _failed(
        self, spec: str, factory: Callable[..., Any], args: tuple[Any, ...], options: Mapping[str, Any], exc: BaseException
    ) -> EEError:
        """The error for a factory that raised: its own error, where in the user's code, and what to do (a TypeError raised
        inside it is a mistake in its code, not in what ee passed it)."""
        where = _where_raised(exc)
        text = f"The factory of {self.kind} {spec!r} failed: {type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")
        if isinstance(exc, TypeError):
            name = getattr(factory, "__name__", None) or type(factory).__name__
            text += (
                f". ee called {_call_text(name, args, options)}, which fits its parameters: the error is in the factory's own "
                "code. Fix that line"
            )
        if FACTORY_SPEC.match(spec.strip()) and not args:
            module, _, attr = spec.strip().partition(":")
            arguments = ", ".join(f"{key}={value!r}" for key, value in options.items())
            text += f"{'; to' if isinstance(exc, TypeError) else '. To'} see the whole traceback, run: "
            text += _reproduce(module, attr, arguments)
        return self.error(text + ".")

    def failed_at_work(self, spec: str, call: str, exc: BaseException) -> EEError:
        """The error for a built part that raised while working (``call``: what ee called, as ``write(cases)``): its own
        error and where in its code, as :meth:`_failed` tells it for a factory. Raise it ``from exc``."""
        where = _where_raised(exc)
        return self.error(
            f"The {self.kind} {spec!r} failed in {call}: {type(exc).__name__}: {exc}" + (f" (at {where})" if where else "") + ". "
            f"The error was raised by the {self.kind}, not by ee-middleware: fix it there (`ee --verbose ...` shows the whole "
            "traceback)."
        )

    def _load(self, path: str, spec: str, *, entry_point: EntryPoint | None = None) -> Any:
        """What ``path`` (``module:attr.path``) names, imported now for ``spec`` (a built-in name, a factory spec, or the
        name of ``entry_point``, whose module is imported as an installed one). Both forms of a plug-in fail alike: a
        module that cannot be found, or raises while Python imports it (its error and the user's line), and a name it
        does not have (with the public callable spelled close to it)."""
        module_name, _, attr_path = path.partition(":")
        head = (
            f"The {self.kind} plug-in {spec!r} ({entry_point.value}) failed to load"
            if entry_point is not None
            else f"Cannot import {module_name!r} for {self.kind} {spec!r}"
        )
        try:
            target: Any = (
                importlib.import_module(module_name) if entry_point is not None else _import_from_installed_or_working_folder(module_name)
            )
        except ImportError as exc:
            raised = f"{type(exc).__name__}: " if entry_point is not None else ""
            raise self.error(f"{head}: {raised}{exc}. Is the package installed in this environment (and on PYTHONPATH)?") from exc
        except Exception as exc:
            if module_name.partition(".")[0] == "ee_middleware":
                raise  # ee's own module (a built-in's): a bug in ee-middleware, told as one
            raise self._import_failed(head, module_name, exc) from exc
        for attr in filter(None, attr_path.split(".")):
            try:
                target = getattr(target, attr)
            except AttributeError:
                near = _did_you_mean(attr, _public_callables(target), quoted=True)
                missing = f"{module_name!r} has no attribute {attr_path!r}{near}"
                text = f"{head}: {missing}" if entry_point is not None else f"{missing} ({self.kind} spec {spec!r})"
                raise self.error(text) from None
        return target

    def _import_failed(self, head: str, module: str, exc: BaseException) -> EEError:
        """The error for a plug-in's module that raised while Python imported it (anything but ImportError: a
        SyntaxError, a KeyError from ``os.environ[...]``): ``head`` (which plug-in), its error, where in the user's code,
        and what to do; as :meth:`_failed` tells a factory that raised."""
        where = _where_raised(exc, module)
        message = exc.msg if isinstance(exc, SyntaxError) and where else str(exc)  # its str repeats the file and line
        return self.error(
            f"{head}: {type(exc).__name__}: {message}" + (f" (at {where})" if where else "") + ". "
            f"The error was raised by the {self.kind}'s own module while Python imported it, not by ee-middleware: fix it "
            f"there; to see the whole traceback, run: {_reproduce(module)}."
        )


def load_named(spec: str, what: str, error: type[EEError] = ConfigError) -> Any:
    """What ``spec`` (``package.module:name``, a function the user names: ``--approve-if``'s) names, imported now, with
    the errors a plug-in's import gets: a module not found, one that raises while Python imports it (its error and the
    user's line, said to be theirs), a name it lacks (with one spelled close to it). ``what`` names it in the errors
    ("approval function")."""
    text = spec.strip() if isinstance(spec, str) else spec
    if not isinstance(text, str) or not FACTORY_SPEC.match(text):
        why = _module_form_of_path(text, what) if isinstance(text, str) else None
        raise error(f"The {what} {spec!r} is not of the form package.module:function" + (f" ({why})" if why else "") + ".")
    return PluginKind(kind=what, group="", error=error)._load(text, text)


_SHADOWED_WARNED: set[tuple[str, str, str]] = set()
"""The entry points :meth:`PluginKind._warn_shadowed` has warned of (group, name, value): once per process."""


def _import_from_installed_or_working_folder(module_name: str) -> Any:
    """``importlib.import_module(module_name)``; a module found nowhere on the import path but in the working folder
    (``my_app/replay_sandbox.py`` beside where the command runs) is imported from there, as ``python -m`` and
    uvicorn would: the ``ee`` console script, unlike ``python``, does not put the working folder on the import path.
    The folder goes last on the path, so it never hides an installed package; worker processes inherit it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.partition(".")[0]
        here = Path.cwd()
        if exc.name != top or str(here) in sys.path or not ((here / top).is_dir() or (here / f"{top}.py").is_file()):
            raise
        sys.path.append(str(here))
        importlib.invalidate_caches()
        return importlib.import_module(module_name)
