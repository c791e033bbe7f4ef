"""Numeric limits shared by the store, ingest, replay's configuration and the CLI's options.

Dependency-free, so that the CLI can bound its options without importing the store's tables (pyarrow).
"""

from __future__ import annotations

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of the store's ``Int64`` columns: a seed, a limit or a count outside it cannot be stored or read back."""

INT32_MAX = 2**31 - 1
"""The largest count a C ``int`` holds: what a training setting counted in steps, rows, tokens or threads may be (torch,
the tokenizers and ``itertools.islice`` take such counts; a larger one failed deep inside them instead of as a setting)."""

MAX_EVAL_TRIALS = 1000
"""The most trials per task an eval takes (``ee eval run --trials``, ``[eval] trials``): a run lists every task's trials
before the first one runs (10**23 of them never started)."""

MAX_ALTERNATIVES = 256
"""The most alternatives per recorded state: a replay's ``k`` (``ee replay run --k``), and so the most an SR row can show
its teacher (``[datasets] sr_k``)."""
