"""The examples are scripts and packages under examples/, not installed: put that folder on the path
(worker processes started with spawn inherit it), so that tests import ``retail_db`` as a user who
runs ``PYTHONPATH=examples ee replay run --sandbox retail_db.sandbox:make_sandbox`` would."""

from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))
