"""Building policies from spec strings: every accepted form, and clear errors for the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import PolicyError
from ee_middleware.replay.policies.chat import OpenAIPolicy
from ee_middleware.replay.policies.mutate import MutationPolicy
from ee_middleware.replay.policies.protocol import DecisionPoint, Policy, Proposals
from ee_middleware.replay.policies.registry import build_policy


class EchoPolicy:
    """A user policy (built by the factory below through the ``module:factory`` spec)."""

    def __init__(self, label: str) -> None:
        self.name = f"echo-{label}"

    def propose(self, point: DecisionPoint, k: int, *, seed: int) -> Proposals:
        return Proposals()

    def describe(self) -> dict[str, Any]:
        return {"policy": self.name}

    def close(self) -> None:
        pass


def make_echo(label: str = "default") -> EchoPolicy:
    return EchoPolicy(label)


def make_not_a_policy() -> object:
    return object()


NOT_CALLABLE = 42


def test_mutate_with_options() -> None:
    policy = build_policy("mutate", same_tool_share=0.2)
    assert isinstance(policy, MutationPolicy) and policy.same_tool_share == 0.2


def test_openai_spec_splits_url_and_model_at_the_last_hash() -> None:
    policy = build_policy("openai:http://127.0.0.1:8000/v1#support-bot", temperature=0.5, retries=0)
    assert isinstance(policy, OpenAIPolicy)
    assert (policy.base_url, policy.model, policy.temperature, policy.retries) == ("http://127.0.0.1:8000/v1", "support-bot", 0.5, 0)
    assert policy.describe()["base_url"] == "http://127.0.0.1:8000/v1"


def test_local_and_transformers_specs_are_the_same_policy(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "config.json").write_text("{}")
    for prefix in ("local", "transformers"):
        policy = build_policy(f"{prefix}:{tmp_path}", temperature=0.3)
        assert type(policy).__name__ == "TransformersPolicy" and policy.describe()["temperature"] == 0.3


def test_user_factory_spec() -> None:
    policy = build_policy(f"{__name__}:make_echo", label="x")
    assert isinstance(policy, Policy) and policy.name == "echo-x"
    assert build_policy(f"{__name__}:EchoPolicy", label="y").name == "echo-y", "a class is a factory too"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "the spec is empty"),
        ("random", "matches none of the accepted forms"),
        ("local:", "the model folder is missing"),
        ("openai:http://127.0.0.1:8000/v1", "separated by '#'"),
        ("openai:#model", "separated by '#'"),
        ("ftp://example.com/model", "matches none of the accepted forms"),
    ],
)
def test_bad_specs_list_the_accepted_forms(spec: str, message: str) -> None:
    with pytest.raises(PolicyError, match=r"Accepted forms: a built-in name \('mutate'\); 'local:DIR\[@ADAPTER\]'") as info:
        build_policy(spec)
    assert message in str(info.value)
    assert "'openai:BASE_URL#MODEL'" in str(info.value) and "'package.module:factory'" in str(info.value)
    assert "'ee_middleware.policies' entry point" in str(info.value)


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("no_such_package_xyz.policies:make", {}, "Cannot import 'no_such_package_xyz.policies'"),
        (f"{__name__}:missing_factory", {}, "has no attribute 'missing_factory'"),
        (f"{__name__}:NOT_CALLABLE", {}, "names int, not a callable"),
        (f"{__name__}:make_not_a_policy", {}, "returned object, which is neither a Policy nor a ChatClient"),
        (f"{__name__}:make_echo", {"colour": "red"}, "Bad options for policy"),
        ("mutate", {"temperature": 0.7}, "Bad options for policy 'mutate'"),
        ("mutate", {"same_tool_share": 3}, "Bad settings for policy 'mutate'"),
        ("openai:localhost:8000#m", {}, "must be an http(s) URL"),
    ],
)
def test_bad_user_policies_and_options(spec: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as info:
        build_policy(spec, **options)
    assert message in str(info.value)


def test_building_policies_imports_no_model_stack() -> None:
    code = (
        "import sys\n"
        "from ee_middleware.replay.policies import build_policy\n"
        "build_policy('mutate'); build_policy('openai:http://127.0.0.1:9/v1#m')\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert out.strip() == "[]"
