"""Experience stores: the protocol and the embedded local Parquet store."""

from ee_middleware.store.local import LocalExperienceStore, open_store
from ee_middleware.store.protocol import ExperienceStore

__all__ = ["ExperienceStore", "LocalExperienceStore", "open_store"]
