"""ee-middleware: make LangGraph agents learn from their own production tool-use traces.

The top-level names are loaded lazily so that ``import ee_middleware`` stays fast and imports no
model stack (torch, transformers, vllm) and not even LangChain until a name that needs it is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ee_middleware._lazy import lazy_exports
from ee_middleware._version import __version__

if TYPE_CHECKING:
    from ee_middleware.capture.config import CaptureConfig
    from ee_middleware.capture.processor import ExperienceSpanProcessor
    from ee_middleware.capture.recorder import RecordedGraph, record_experience
    from ee_middleware.capture.redaction import Redactor
    from ee_middleware.errors import CaptureError, ConfigError, EEError, StoreError
    from ee_middleware.records import Action, Approval, ApprovalEvent, Observation, Step, ToolCall, Trajectory
    from ee_middleware.store import ExperienceStore, LocalExperienceStore, open_store

_LAZY = {
    "record_experience": "ee_middleware.capture.recorder",
    "RecordedGraph": "ee_middleware.capture.recorder",
    "CaptureConfig": "ee_middleware.capture.config",
    "ExperienceSpanProcessor": "ee_middleware.capture.processor",
    "Redactor": "ee_middleware.capture.redaction",
    "ExperienceStore": "ee_middleware.store",
    "LocalExperienceStore": "ee_middleware.store",
    "open_store": "ee_middleware.store",
    "Trajectory": "ee_middleware.records",
    "Step": "ee_middleware.records",
    "Action": "ee_middleware.records",
    "ToolCall": "ee_middleware.records",
    "Observation": "ee_middleware.records",
    "Approval": "ee_middleware.records",
    "ApprovalEvent": "ee_middleware.records",
    # the errors a user's code catches (every error of ee's is an EEError)
    "EEError": "ee_middleware.errors",
    "ConfigError": "ee_middleware.errors",
    "CaptureError": "ee_middleware.errors",
    "StoreError": "ee_middleware.errors",
}

__all__ = [
    "Action",
    "Approval",
    "ApprovalEvent",
    "CaptureConfig",
    "CaptureError",
    "ConfigError",
    "EEError",
    "ExperienceSpanProcessor",
    "ExperienceStore",
    "LocalExperienceStore",
    "Observation",
    "RecordedGraph",
    "Redactor",
    "Step",
    "StoreError",
    "ToolCall",
    "Trajectory",
    "__version__",
    "open_store",
    "record_experience",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
