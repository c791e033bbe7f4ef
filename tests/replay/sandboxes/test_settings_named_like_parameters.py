"""A sandbox's (or policy's) own setting named like a parameter of ee's registry functions (``tools``, ``spec``) reaches
the factory. Before, ``ee replay run --sandbox-setting tools=...`` replayed and stored every branch, then failed with
"refusal_hints() got multiple values for argument 'tools'": the run's summary lost, told as a bug in ee-middleware."""

from __future__ import annotations

from ee_middleware.replay.sandboxes.registry import build_sandbox, refusal_hints

SPEC = "tests.replay.sandboxes.settings_named_like_parameters:make_sandbox"


def test_settings_named_tools_and_spec_reach_the_sandbox_factory() -> None:
    sandbox = build_sandbox(SPEC, tools="lookup", spec="world-2")
    try:
        assert (sandbox.allowed, sandbox.spec) == ("lookup", "world-2")  # type: ignore[attr-defined]
    finally:
        sandbox.close()
    hints = refusal_hints(SPEC, ["delete_all"], tools="lookup", spec="world-2")
    assert hints == {"delete_all": "only lookup is allowed (world-2)"}, hints
