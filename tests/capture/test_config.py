from __future__ import annotations

import json
from pathlib import Path

import pytest

from ee_middleware.capture.config import CaptureConfig
from ee_middleware.errors import ConfigError


def test_toml_then_environment_then_arguments(tmp_path, monkeypatch):
    path = tmp_path / "ee.toml"
    path.write_text(
        '[capture]\napp = "from-toml"\nstore = "/data/exp"\nmax_observation_chars = 500\n[capture.redaction_patterns]\nticket = "T-\\\\d+"\n'
    )
    config = CaptureConfig.load(path)
    assert (config.app, config.store, config.max_observation_chars, dict(config.redaction_patterns)) == (
        "from-toml",
        "/data/exp",
        500,
        {"ticket": "T-\\d+"},
    )
    monkeypatch.setenv("EE_APP", "from-env")
    monkeypatch.setenv("EE_REDACT", "0")
    assert (CaptureConfig.load(path).app, CaptureConfig.load(path).redact) == ("from-env", False)
    assert CaptureConfig.load(path, app="from-code").app == "from-code"
    # before: stored as typed, so `ee traces list --app shop` and ee improve's app = "shop" never found its runs
    monkeypatch.setenv("EE_APP", "  shop  ")
    assert CaptureConfig.load(path).app == "shop" and CaptureConfig.load(app=" shop\n").app == "shop"
    monkeypatch.setenv("EE_APP", "   ")  # blanks alone are no setting, as an empty value is not: the file's app
    assert CaptureConfig.load(path).app == "from-toml"
    monkeypatch.setenv("EE_APP", '"shop"')  # an env file whose quotes were kept
    with pytest.raises(ConfigError, match="is written in quotes, which would be part of its name"):
        CaptureConfig.load(path)


def test_bad_configuration_names_the_problem(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        CaptureConfig.load(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[capture\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        CaptureConfig.load(tmp_path / "bad.toml")
    monkeypatch.setenv("EE_MAX_OBSERVATION_CHARS", "lots")
    with pytest.raises(ConfigError, match="EE_MAX_OBSERVATION_CHARS='lots' is not an integer"):
        CaptureConfig.load()
    monkeypatch.delenv("EE_MAX_OBSERVATION_CHARS")
    with pytest.raises(ConfigError, match="non-empty string"):
        CaptureConfig(app="")


# --- EE_* on/off variables: the usual spellings, anything else refused (never read as off) ------------------------------

MAIL_TASK = {"messages": [("user", "Do we have pears? If not, order 5. My email is alice@example.com")]}


def _record_mail(graph, store_path):
    from ee_middleware import LocalExperienceStore, record_experience

    agent = record_experience(graph, app="shop", store=store_path)
    agent.invoke(MAIL_TASK)
    agent.flush()
    return json.dumps([t.model_dump(mode="json") for t in LocalExperienceStore(store_path).iter_trajectories()])


@pytest.mark.parametrize("typo", ["ture", "flase", "2", "enabled", "y es"])
def test_a_misspelt_ee_redact_refuses_to_record_instead_of_storing_plain_text(react_graph, store_path, monkeypatch, typo):
    from ee_middleware import record_experience

    monkeypatch.setenv("EE_REDACT", typo)
    with pytest.raises(ConfigError) as caught:
        record_experience(react_graph, app="shop", store=store_path)
    message = str(caught.value)
    assert f"EE_REDACT={typo!r}" in message
    assert all(word in message for word in ("1", "true", "yes", "on", "0", "false", "no", "off"))
    stored = [p for p in store_path.rglob("*") if p.is_file()] if store_path.exists() else []
    assert not any(b"alice@example.com" in p.read_bytes() for p in stored)
    assert not any(p.suffix == ".parquet" or p.name.endswith(".jsonl") for p in stored)


@pytest.mark.parametrize(
    ("spelling", "redacted"),
    [(" TRUE ", True), ("Yes", True), ("on", True), ("1", True), ("0", False), ("Off", False), (" no", False), ("FALSE", False)],
)
def test_ee_redact_takes_the_usual_spellings(react_graph, store_path, monkeypatch, spelling, redacted):
    monkeypatch.setenv("EE_REDACT", spelling)
    stored = _record_mail(react_graph, store_path)
    assert ("alice@example.com" not in stored) is redacted
    assert ("[REDACTED:email" in stored) is redacted


@pytest.mark.parametrize("var", ["EE_CAPTURE_STRICT", "EE_REDACTION_PSEUDONYMS"])
def test_the_other_capture_switches_refuse_a_typo_too(react_graph, store_path, monkeypatch, var):
    from ee_middleware import record_experience

    monkeypatch.setenv(var, "ture")
    with pytest.raises(ConfigError, match=f"{var}='ture'"):
        record_experience(react_graph, app="shop", store=store_path)
    monkeypatch.setenv(var, " Off ")
    config = CaptureConfig.load()
    assert getattr(config, {"EE_CAPTURE_STRICT": "strict", "EE_REDACTION_PSEUDONYMS": "redaction_pseudonyms"}[var]) is False


def test_strict_capture_from_the_environment_reads_on_like_the_config(monkeypatch):
    from ee_middleware.capture.processor import strict_default

    monkeypatch.setenv("EE_CAPTURE_STRICT", "on")
    assert strict_default() is True and CaptureConfig.load().strict is True
    monkeypatch.setenv("EE_CAPTURE_STRICT", "ture")
    with pytest.raises(ConfigError, match="EE_CAPTURE_STRICT='ture'"):
        strict_default()


def test_ee_vault_takes_on_off_or_a_path_and_refuses_a_misspelt_switch(tmp_path, monkeypatch):
    for spelling, expected in [
        ("1", True),
        (" yes", True),
        ("OFF", False),
        ("no", False),
        (str(tmp_path / "v.vault"), str(tmp_path / "v.vault")),
    ]:
        monkeypatch.setenv("EE_VAULT", spelling)
        assert CaptureConfig.load().vault == expected
    for typo in ("ture", "flase", "of"):
        monkeypatch.setenv("EE_VAULT", typo)
        with pytest.raises(ConfigError, match=f"EE_VAULT={typo!r}.*a path"):
            CaptureConfig.load()
    monkeypatch.setenv("EE_VAULT", "./ture")
    assert CaptureConfig.load().vault == "./ture"


# --- [capture] values have their setting's type ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('max_observation_chars = "100000"', "max_observation_chars: Input should be a valid integer (got '100000')"),
        ("max_observation_chars = 10.5", "max_observation_chars: Input should be a valid integer (got 10.5)"),
        ('strict = "no"', "strict: Input should be a valid boolean (got 'no')"),
        ('redact = "false"', "redact: Input should be a valid boolean (got 'false')"),
        ('redaction_patterns = "x"', "redaction_patterns: Input should be a valid dictionary (got 'x')"),
        ("app = 7", "app: Input should be a valid string (got 7)"),
        ('offload = ["process"]', "offload: Input should be a valid string"),
        ("vault = 1", "vault: Input should be a valid boolean or a valid string (got 1)"),
        ('redaction_kinds = { email = "no" }', "redaction_kinds.email: Input should be a valid boolean (got 'no')"),
        ('redact_fn = "str.upper"', "redact_fn: Input should be a function"),
    ],
)
def test_a_capture_file_value_of_the_wrong_type_names_the_file_the_key_and_the_type(react_graph, tmp_path, monkeypatch, line, expected):
    from ee_middleware import record_experience

    monkeypatch.delenv("EE_CAPTURE_STRICT", raising=False)  # the suite's EE_CAPTURE_STRICT=1 would be used instead of strict
    path = tmp_path / "capture.toml"
    path.write_text(f'[capture]\nstore = "{(tmp_path / "experience").as_posix()}"\n{line}\n')
    with pytest.raises(ConfigError) as caught:
        record_experience(react_graph, config=str(path))
    message = str(caught.value)
    assert expected in message and str(path) in message, message
    assert not (tmp_path / "experience").exists()


def test_a_typed_capture_file_records_with_its_settings(react_graph, tmp_path):
    from ee_middleware import LocalExperienceStore, record_experience

    path = tmp_path / "capture.toml"
    store = tmp_path / "experience"
    path.write_text(
        f'[capture]\nstore = "{store.as_posix()}"\nstrict = false\nmax_observation_chars = 3\nvault = false\n'
        "[capture.redaction_kinds]\nemail = false\n"
    )
    agent = record_experience(react_graph, app="shop", config=str(path))
    agent.invoke(MAIL_TASK)
    agent.flush()
    (t,) = LocalExperienceStore(store).iter_trajectories()
    assert "alice@example.com" in t.task  # email switched off by the file
    assert t.steps[1].observation.content.startswith("ord") and "now 5" not in t.steps[1].observation.content  # cut at 3


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"max_observation_chars": "100000"}, "CaptureConfig.max_observation_chars: Input should be a valid integer (got '100000')"),
        ({"max_observation_chars": True}, "CaptureConfig.max_observation_chars: Input should be a valid integer (got True)"),
        ({"strict": "no"}, "CaptureConfig.strict: Input should be a valid boolean (got 'no')"),
        ({"redaction_patterns": "x"}, "CaptureConfig.redaction_patterns: Input should be a valid dictionary (got 'x')"),
        ({"redaction_kinds": {"phone": "no"}}, "CaptureConfig.redaction_kinds.phone: Input should be a valid boolean (got 'no')"),
        ({"redact_fn": "upper"}, "CaptureConfig.redact_fn: Input should be a function"),
        ({"environment": 3}, "CaptureConfig.environment: Input should be a valid dictionary or a function"),
    ],
)
def test_keyword_settings_of_the_wrong_type_name_the_setting(react_graph, tmp_path, settings, expected):
    from ee_middleware import record_experience

    with pytest.raises(ConfigError) as caught:
        record_experience(react_graph, app="shop", store=str(tmp_path / "experience"), **settings)
    assert expected in str(caught.value)


def test_keyword_settings_keep_taking_paths_and_mappings(tmp_path):
    from pathlib import Path
    from types import MappingProxyType

    config = CaptureConfig(store=Path(tmp_path), vault=Path(tmp_path / "v.vault"), redaction_kinds=MappingProxyType({"phone": False}))
    assert config.redaction_rules().enabled_kinds().count("phone") == 0


@pytest.mark.parametrize("given", ["keyword", "file"])
def test_an_app_version_written_as_a_number_is_recorded_as_its_text(react_graph, tmp_path, given):
    """app_version=7 (and app_version = 7 in a [capture] table) was recorded as "7"; the type checks of bc9c23b made it a
    ConfigError when the recorder was built, so a service with a numeric version failed to start (found by review)."""
    from ee_middleware import LocalExperienceStore, record_experience

    store = tmp_path / "experience"
    if given == "keyword":
        agent = record_experience(react_graph, app="shop", store=str(store), app_version=7)
    else:
        path = tmp_path / "capture.toml"
        path.write_text(f'[capture]\nstore = "{store.as_posix()}"\napp_version = 7\n')
        agent = record_experience(react_graph, app="shop", config=str(path))
    agent.invoke(MAIL_TASK)
    agent.flush()
    (t,) = LocalExperienceStore(store).iter_trajectories()
    assert t.app_version == "7"


@pytest.mark.parametrize("given", ["PROCESS", "process ", " Auto", " THREAD "])
def test_ee_capture_offload_is_read_in_any_case_with_spaces_around(monkeypatch, given):
    """Defect (deploy sweep 8): EE_CAPTURE_OFFLOAD=PROCESS, 'process ' (a .env's trailing space) or Auto stopped the app at
    import with an error naming CaptureConfig.offload, not the variable, while the on/off EE_* variables take any case
    and spaces around. Read alike now."""
    monkeypatch.setenv("EE_CAPTURE_OFFLOAD", given)
    assert CaptureConfig.load().offload == given.strip().lower()


def test_a_real_agent_records_with_ee_capture_offload_in_capitals(react_graph, store_path, monkeypatch):
    from ee_middleware import record_experience
    from tests.conftest import record_once

    monkeypatch.setenv("EE_CAPTURE_OFFLOAD", " THREAD ")
    agent = record_experience(react_graph, app="shop", store=store_path)
    assert agent.recorder.config.offload == "thread"
    assert record_once(agent, store_path, {"messages": [("user", "Do we have pears? If not, order 5.")]}).app == "shop"


def test_a_wrong_ee_capture_offload_names_the_variable(monkeypatch):
    monkeypatch.setenv("EE_CAPTURE_OFFLOAD", "proces")
    with pytest.raises(ConfigError, match=r"EE_CAPTURE_OFFLOAD='proces' is not an offload mode: use one of thread, process, auto"):
        CaptureConfig.load()
    monkeypatch.setenv("EE_CAPTURE_OFFLOAD", "  ")
    assert CaptureConfig.load().offload == "thread", "blank is unset, as for the other EE_* variables"


def test_an_app_name_read_from_utf8_bytes_in_an_ascii_locale_is_that_text_and_one_that_is_no_text_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweep W: ``EE_APP=应用`` in an ASCII-locale Python (or ``app\\xff`` in any) gave an app name holding lone
    surrogates; it was accepted, and every run then failed its record (a pydantic error in the log, flush() False, the
    store empty)."""
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage

    from ee_middleware import record_experience
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing import ScriptedChatModel

    as_ascii_python_reads_it = "应用".encode().decode("ascii", "surrogateescape")
    monkeypatch.setenv("EE_APP", as_ascii_python_reads_it)
    assert CaptureConfig.load().app == "应用"
    model = ScriptedChatModel(policy=lambda messages, tools: AIMessage("Noted."), model_name="m")
    agent = record_experience(create_agent(model, []), store=tmp_path / "store", app_version="v\udce2\udc9c\udc93")
    agent.invoke({"messages": [("user", "hi")]})
    assert agent.flush()
    (stored,) = LocalExperienceStore(tmp_path / "store").iter_trajectories(status=None)
    assert (stored.app, stored.app_version) == ("应用", "v✓")

    monkeypatch.setenv("EE_APP", "app\udcff")  # a latin-1 byte: no UTF-8 text
    with pytest.raises(ConfigError, match=r"CaptureConfig.app 'app\\udcff' holds bytes that are not UTF-8 text"):
        CaptureConfig.load()


@pytest.mark.parametrize("value", ["-5", "0"])
def test_a_max_observation_chars_below_one_from_the_environment_names_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EE_MAX_OBSERVATION_CHARS", value)
    with pytest.raises(
        ConfigError, match=f"EE_MAX_OBSERVATION_CHARS='{value}': the most characters of a tool result kept must be positive"
    ):
        CaptureConfig.load()
