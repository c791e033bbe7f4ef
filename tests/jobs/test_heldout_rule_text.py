"""The datasets stage says a held-out rule that held out nothing by its [datasets] settings (sweep B, finding 8d: it was
printed as a Python dict, ``{'share': 0.01, 'seed': 0, ...}``)."""

from __future__ import annotations

from ee_middleware.jobs.stages import _rule_settings
from ee_middleware.trainers.datasets.split import SplitRule


def test_a_rule_is_said_by_its_settings() -> None:
    assert _rule_settings(SplitRule(share=0.01).describe()) == "heldout_share = 0.01, seed = 0"
    assert _rule_settings(SplitRule(ids=("a", "b"), app="shop").describe()) == "heldout_ids: 2 ids; heldout_app = 'shop'"
    assert "{" not in _rule_settings(SplitRule(share=0.2, seed=3).describe())
