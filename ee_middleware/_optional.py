"""Import optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

from ee_middleware.errors import MissingExtraError

_LIBRARY_WARNINGS: dict[str, tuple[tuple[type[Warning], str], ...]] = {
    # peft reads model.is_gradient_checkpointing, which transformers 5 deprecates, on every adapter it wraps or loads:
    # a warning about peft's code, which nobody running `ee train` or `ee serve local` can act on.
    "peft": ((FutureWarning, r"`?is_gradient_checkpointing`? is deprecated"),),
}
"""Warnings one optional library's use of another raises on every call, hidden once that library is imported here."""


def import_optional(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming ``extra``. A Ctrl-C or SIGTERM while it is imported
    is raised once the import is done (:func:`~ee_middleware._lifetime.interrupts_held`)."""
    from ee_middleware._lifetime import interrupts_held

    try:
        with interrupts_held():  # (torch's first import runs native code that calls back into Python)
            imported = importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(f"{module!r} is needed to {purpose}. Install: pip install 'ee-middleware[{extra}]'") from exc
    for category, message in _LIBRARY_WARNINGS.get(module, ()):
        warnings.filterwarnings("ignore", message=message, category=category)  # added once: an equal filter is not added again
    return imported
