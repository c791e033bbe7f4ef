"""One model-spec grammar: ``local:DIR[@ADAPTER]``, ``openai:BASE_URL#MODEL``, ``package.module:factory``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ModelError, ModelLoadError
from ee_middleware.models import ChatClient, Choice, OpenAIChatClient, Sampling, build_chat_client, parse_model_spec
from ee_middleware.models.spec import is_model_spec


class EchoClient:
    """A user's own chat client, built through ``tests.models.test_spec:make_echo``."""

    def __init__(self, prefix: str = "echo") -> None:
        self.model = f"{prefix}-model"
        self.closed = False

    def complete(
        self, messages: Sequence[dict[str, Any]], *, tools: Any = None, n: int = 1, sampling: Sampling = Sampling()
    ) -> list[Choice]:
        return [Choice.from_text(f"{self.model}: {messages[-1]['content']}") for _ in range(n)]

    def describe(self) -> dict[str, Any]:
        return {"model": self.model}

    def close(self) -> None:
        self.closed = True


def make_echo(prefix: str = "echo") -> EchoClient:
    return EchoClient(prefix)


def make_nothing() -> object:
    return object()


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        ("local:/models/base", {"kind": "local", "path": "/models/base", "adapter": None}),
        ("transformers:/models/base", {"kind": "local", "path": "/models/base", "adapter": None}),
        ("local:/models/base@/adapters/v3", {"kind": "local", "path": "/models/base", "adapter": "/adapters/v3"}),
        ("openai:http://127.0.0.1:8000/v1#support-bot", {"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "support-bot"}),
        ("openai:http://h/v1#a#b", {"kind": "openai", "base_url": "http://h/v1#a", "model": "b"}),
        ("tests.models.test_spec:make_echo", {"kind": "plugin"}),
    ],
)
def test_parse_every_form(spec: str, fields: dict[str, Any]) -> None:
    parsed = parse_model_spec(spec)
    assert {name: getattr(parsed, name) for name in fields} == fields and parsed.spec == spec


def test_a_folder_whose_name_has_an_at_sign_is_not_split(tmp_path: Path) -> None:
    folder = tmp_path / "smollm2@v2"
    folder.mkdir()
    assert (parse_model_spec(f"local:{folder}").path, parse_model_spec(f"local:{folder}").adapter) == (str(folder), None)


def test_a_model_and_an_adapter_whose_names_have_at_signs_are_split_where_both_exist(tmp_path: Path) -> None:
    """The split used to be at the last '@', inside the adapter's name: model '.../org@v2@.../ad', adapter 'v1'."""
    model, adapter = tmp_path / "org@v2", tmp_path / "ad@v1"
    model.mkdir()
    adapter.mkdir()
    (tmp_path / "org").mkdir()  # a folder named by the text before the first '@' too: the reading where both exist wins
    parsed = parse_model_spec(f"local:{model}@{adapter}")
    assert (parsed.path, parsed.adapter) == (str(model), str(adapter))


def test_a_spec_none_of_whose_readings_exists_names_them_all(tmp_path: Path) -> None:
    """It used to be split at the last '@' and reported as 'No model folder at .../org': a folder the user never named."""
    spec = f"local:{tmp_path}/org@v2/"
    with pytest.raises(ModelLoadError) as caught:
        build_chat_client(spec)
    message = str(caught.value)
    assert f"model '{tmp_path}/org@v2/' (a folder whose name has '@')" in message
    assert f"model '{tmp_path}/org' with adapter 'v2/'" in message and "none of its readings exists" in message


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "the spec is empty"),
        ("local:", "the model folder is missing"),
        ("local:/m@", "with both folders"),
        ("local:@/adapter", "with both folders"),
        ("openai:http://127.0.0.1:8000/v1", "separated by '#'"),
        ("openai:#m", "separated by '#'"),
    ],
)
def test_bad_specs_say_why_and_list_the_forms(spec: str, why: str) -> None:
    with pytest.raises(ModelError, match="Accepted forms") as info:
        parse_model_spec(spec)
    assert why in str(info.value) and "'local:DIR[@ADAPTER]'" in str(info.value) and "'openai:BASE_URL#MODEL'" in str(info.value)


def test_is_model_spec() -> None:
    assert is_model_spec("local:/m") and is_model_spec("openai:http://h/v1#m") and is_model_spec(" transformers:/m")
    assert not is_model_spec("mutate") and not is_model_spec("pkg.mod:factory") and not is_model_spec("local")


def test_build_every_kind(tmp_path: Path) -> None:
    client = build_chat_client("openai:http://127.0.0.1:9/v1#m", retries=0)
    assert isinstance(client, OpenAIChatClient) and client.retries == 0 and client.model == "m"
    user = build_chat_client("tests.models.test_spec:make_echo", prefix="mine")
    assert isinstance(user, ChatClient) and user.complete([{"role": "user", "content": "hi"}])[0].text == "mine-model: hi"
    with pytest.raises(ModelLoadError, match="No model folder"):
        build_chat_client(f"local:{tmp_path / 'missing'}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="No LoRA adapter at"):
        build_chat_client(f"local:{tmp_path}@{tmp_path / 'no-adapter'}")


def test_build_errors_name_the_spec() -> None:
    with pytest.raises(ModelError, match="returned object, which is not a ChatClient: it needs a 'model' attribute"):
        build_chat_client("tests.models.test_spec:make_nothing")
    with pytest.raises(ModelError, match="Bad options for model client"):
        build_chat_client("tests.models.test_spec:make_echo", colour="red")
    with pytest.raises(ModelError, match="Bad settings for model client"):
        build_chat_client("openai:localhost#m")


def test_a_users_chat_client_is_a_policy_and_a_teacher_by_factory_and_by_models_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README names models one way for everything that asks one (replay policies, SR teachers): a user's own
    ChatClient as `package.module:factory` or an `ee_middleware.models` entry point. build_chat_client took it, but
    --policy and --teacher refused it ('returned EchoClient, which is not a Policy', 'Unknown policy')."""
    import importlib

    from ee_middleware.errors import ConfigError, PolicyError
    from ee_middleware.replay.policies.chat import ChatPolicy
    from ee_middleware.replay.policies.registry import build_policy
    from ee_middleware.trainers.datasets.teachers import ModelTeacher, build_teacher

    dist = tmp_path / "my_gateway-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-gateway\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ee_middleware.models]\nmy-gateway = tests.models.test_spec:make_echo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    try:
        spec = "tests.models.test_spec:make_echo"
        policy = build_policy(spec, temperature=0.2, top_p=0.9, max_new_tokens=32)  # the client's factory takes none of them
        assert isinstance(policy, ChatPolicy) and isinstance(policy.client, EchoClient) and policy.name == spec
        assert (policy.temperature, policy.top_p, policy.max_tokens) == (0.2, 0.9, 32)
        gateway = build_policy("my-gateway", prefix="gw")
        assert isinstance(gateway, ChatPolicy) and gateway.client.model == "gw-model" and gateway.name == "my-gateway"

        teacher = build_teacher(spec)
        assert isinstance(teacher, ModelTeacher) and isinstance(teacher.client, EchoClient) and teacher.name == spec
        named = build_teacher("my-gateway", prefix="gw")
        assert isinstance(named, ModelTeacher) and named.client.model == "gw-model"

        with pytest.raises(PolicyError, match="returned object, which is neither a Policy nor a ChatClient"):
            build_policy("tests.models.test_spec:make_nothing")
        with pytest.raises(ConfigError, match="returned object, which is neither a Teacher nor a ChatClient"):
            build_teacher("tests.models.test_spec:make_nothing")
        with pytest.raises(PolicyError, match=r"Unknown policy 'no-such-gateway'.*'ee_middleware\.models' entry point"):
            build_policy("no-such-gateway")
    finally:
        importlib.invalidate_caches()
