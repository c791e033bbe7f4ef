"""The improve job's configuration, the replay budgets and the run folder, without running a job."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.jobs.errors import RunNotFoundError
from ee_middleware.jobs.runs import RunsDir
from ee_middleware.jobs.stages import _apply_replay_budgets
from ee_middleware.store import LocalExperienceStore


def _config(tmp_path: Path, body: str = "") -> Path:
    path = tmp_path / "improve.toml"
    path.write_text(f'[improve]\nstore = "s"\napp = "shop"\nregistry = "r"\nruns = "runs"\nbase_model = "m"\n{body}')
    return path


def test_missing_settings_are_named(tmp_path: Path) -> None:
    path = tmp_path / "improve.toml"
    path.write_text('[improve]\nstore = "s"\n')
    with pytest.raises(ConfigError, match="app, registry, runs, base_model"):
        ImproveConfig.load(path)
    with pytest.raises(ConfigError, match=r"budgets\.max_trajectories"):
        ImproveConfig.load(_config(tmp_path, "[improve.budgets]\nmax_trajectories = 0\n"))


def test_the_traces_suite_is_spelled_out_for_the_app_and_stage_tables_are_read(tmp_path: Path) -> None:
    config = ImproveConfig.load(_config(tmp_path, 'suites = ["traces", "traces:5", "bfcl:multi_turn_base:3"]\n[replay]\nk = 3\n'))
    store = Path("s").resolve()  # read from the working directory
    assert config.suite_specs() == [f"traces:{store}:shop", f"traces:{store}:shop:5", "bfcl:multi_turn_base:3"]
    assert config.replay_config().k == 3 and config.replay_config().app == "shop"
    assert config.alias_name == "shop"


def test_datasets_need_a_heldout_rule_and_the_kinds_of_the_schedule(tmp_path: Path) -> None:
    config = ImproveConfig.load(_config(tmp_path))
    data = config.dataset_config(tmp_path / "data", "abc")
    assert data.heldout_share == 0.2 and data.kinds == ("il", "iwm") and data.replay_id == "abc"
    # Was: "set a held-out rule in [datasets] (heldout_share = 0.2, ...)" to a user who had set heldout_share = 0.0.
    with pytest.raises(ConfigError) as zero:
        ImproveConfig.load(_config(tmp_path, "[datasets]\nheldout_share = 0.0\n")).dataset_config(tmp_path, None)
    said = str(zero.value)
    assert said.startswith("[datasets] heldout_share = 0.0 holds out nothing") and "set heldout_share above 0 (e.g. 0.2" in said, said
    assert "set a held-out rule" not in said
    with pytest.raises(ConfigError, match="trains on sr"):
        ImproveConfig.load(_config(tmp_path, 'schedule = "sr"\n[datasets]\nkinds = ["il"]\n')).dataset_config(tmp_path, None)


def test_budgets_are_left_out_of_the_config_hash(tmp_path: Path) -> None:
    plain = ImproveConfig.load(_config(tmp_path)).config_hash()  # the stage tables are read from the file when hashed
    assert ImproveConfig.load(_config(tmp_path, "[improve.budgets]\nmax_minutes = 5\n")).config_hash() == plain
    assert ImproveConfig.load(_config(tmp_path, "[train]\nmax_steps = 5\n")).config_hash() != plain


def test_replay_budgets_cut_trajectories_and_branches_and_say_so(tmp_path: Path) -> None:
    config = ImproveConfig.load(_config(tmp_path, "[improve.budgets]\nmax_trajectories = 3\nmax_branches = 40\n"))
    states = {"a": 4, "b": 4, "c": 4, "d": 4}
    todo, cuts = _apply_replay_budgets(["a", "b", "c", "d"], states, 4, config)
    assert todo == ["a", "b"]  # 3 by count, then 16 + 16 branches fit in 40 and 48 do not
    assert [c["budget"] for c in cuts] == ["max_trajectories", "max_branches"]
    assert "1 of 4" in cuts[0]["cut"] and "1 of 3" in cuts[1]["cut"] and "32 branches" in cuts[1]["cut"]
    todo, cuts = _apply_replay_budgets(["a"], {"a": 100}, 4, config)
    assert todo == ["a"] and cuts == []  # one trajectory always goes, however big


def test_runs_are_found_by_prefix_and_latest(tmp_path: Path) -> None:
    runs = RunsDir(tmp_path / "runs")
    first = runs.create("improve", {}, "h1")
    second = runs.create("improve", {}, "h1")
    assert runs.get("latest").id == second.id and runs.get(first.id).id == first.id
    with pytest.raises(RunNotFoundError, match="several runs match"):
        runs.get(first.id[:8])
    first.update(status="succeeded")
    assert runs.last_successful().id == first.id
    assert runs.resumable("h1").id == second.id


def test_a_run_started_in_the_same_millisecond_as_the_newest_is_still_the_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run id is the start time to the millisecond and a random byte: two runs started in the same millisecond sorted
    by that byte, so `latest` named the first one about half the time (CI saw it once). The second waits for the next
    millisecond instead. The clock and the random bytes are fixed here so that the collision happens every time."""
    import datetime as dt

    from ee_middleware.jobs import runs as runs_module

    clock = [dt.datetime(2026, 12, 1, 5, 35, 53, 916_000, tzinfo=dt.UTC)]  # moves only when create waits

    class FixedClock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return clock[0]

    def wait(seconds: float) -> None:
        clock[0] += dt.timedelta(seconds=seconds)

    byte = iter(["ed", "0c", "0c"])
    monkeypatch.setattr(runs_module, "datetime", FixedClock)
    monkeypatch.setattr(runs_module.secrets, "token_hex", lambda n: next(byte))
    monkeypatch.setattr("time.sleep", wait)
    runs = RunsDir(tmp_path / "runs")
    first = runs.create("improve", {}, "h1")
    second = runs.create("improve", {}, "h1")
    assert first.id == "20261201-053553-916ed" and second.id == "20261201-053553-9170c"
    assert runs.get("latest").id == second.id


def test_a_run_on_a_clock_behind_the_newest_runs_id_still_sorts_after_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a run made on a clock a year ahead (a VM's bad clock) stayed `latest` and the watermark's run: every later
    night selected the same trajectories again; a clock stepped back by NTP sorted the new run before the previous one."""
    import datetime as dt

    from ee_middleware.jobs import runs as runs_module

    clock = [dt.datetime(2027, 12, 1, 5, 0, 0, 999_000, tzinfo=dt.UTC)]

    class FixedClock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return clock[0]

    monkeypatch.setattr(runs_module, "datetime", FixedClock)
    monkeypatch.setattr(runs_module.secrets, "token_hex", lambda n: "ab")
    runs = RunsDir(tmp_path / "runs")
    (runs.root / "notes").mkdir(parents=True)  # a folder of the user's beside the runs: no run id, sorts after them
    ahead = runs.create("improve", {}, "h1")
    ahead.update(status="succeeded")
    clock[0] = dt.datetime(2026, 12, 1, 5, 0, 0, tzinfo=dt.UTC)  # the clock put right
    tonight = runs.create("improve", {}, "h1")
    assert ahead.id == "20271201-050000-999ab" and tonight.id == "20271201-050001-000ab", "the millisecond after it"
    assert tonight.data["started_at"].startswith("2026-12-01T05:00:00"), "run.json keeps the clock's time"
    tonight.update(status="succeeded")
    assert runs.get("latest").id == tonight.id and runs.last_successful().id == tonight.id
    assert [r.id for r in runs.list()] == [ahead.id, tonight.id]


def test_the_traces_suite_runs_in_the_replay_sandbox_unless_eval_names_one(tmp_path: Path) -> None:
    """A user's tool world replayed with [replay] sandbox = "pkg:factory" is where its held-out trajectories are
    evaluated too (was: no sandbox, so every held-out trajectory was excluded and the gate saw 0 tasks)."""
    replay = '[replay]\nsandbox = "retail_db.sandbox:make_sandbox"\n'
    config = ImproveConfig.load(_config(tmp_path, replay))
    assert config.eval_job("noop", tmp_path / "e", tmp_path / "d").sandbox == "retail_db.sandbox:make_sandbox"
    config = ImproveConfig.load(_config(tmp_path, replay + '[eval]\nsandbox = "mine:other"\n'))
    assert config.eval_job("noop", tmp_path / "e", tmp_path / "d").sandbox == "mine:other"
    synthetic = '[replay]\nsandbox = "experience:openai:http://x/v1#m"\n'  # a model of the world is not the world
    assert ImproveConfig.load(_config(tmp_path, synthetic)).eval_job("noop", tmp_path / "e", tmp_path / "d").sandbox is None
    assert ImproveConfig.load(_config(tmp_path)).eval_job("noop", tmp_path / "e", tmp_path / "d").sandbox is None


def _improve_file(tmp_path: Path, base: Path, body: str = "") -> Path:
    path = tmp_path / "improve.toml"
    path.write_text(
        f'[improve]\nstore = "{tmp_path / "s"}"\napp = "shop"\nregistry = "{tmp_path / "r"}"\nruns = "{tmp_path / "runs"}"\n'
        f'base_model = "{base}"\n{body}'
    )
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[train]\nlora_rank = 4\n", r"Invalid train configuration: lora_rank: Extra inputs"),
        ("[gate]\nmin_task = 2\n", r"Invalid gate policy configuration: min_task"),
        ("[eval]\nmax_step_per_turn = 2\n", r"Invalid eval configuration: max_step_per_turn"),
        ("[replay]\nkk = 2\n", r"kk"),
        ('[replay]\nk = "eight"\n', r"Invalid replay configuration: k: Input should be a valid integer.* \(got 'eight'\)"),
        (
            '[replay]\npolicy_settings = "api_key=sk-Hunter2"\n',
            r"policy_settings: Input should be a valid dictionary \(got 'api_key=\*\*\*'\)",
        ),
        ('suites = ["trace:3"]\n', r"Cannot read the suite 'trace:3'"),
        ("[improv]\nx = 1\n", r"a table \[improv\]: did you mean \[improve\]"),
        ('[replay]\nsandbox = "ee_middleware.replay:make_sandbx"\n', r"\[replay\] sandbox = .*has no attribute 'make_sandbx'"),
        ('[replay]\nsandbox = "clinic_nope.sandbox:make"\n', r"\[replay\] sandbox = .*Cannot import 'clinic_nope.sandbox'"),
        ('[replay]\npolicy = "mutat"\n', r"\[replay\] policy = 'mutat': Unknown policy 'mutat'"),
        ('[replay]\npolicy = "local:/no/such/model"\n', r"\[replay\] policy = 'local:/no/such/model': no model folder at /no/such/model"),
        ('[eval]\nsandbox = "ee_middleware.replay:nope"\n', r"\[eval\] sandbox = .*has no attribute 'nope'"),
        ('[replay]\nsandbox = "mcp:/no/such/servers.json"\n', r"\[replay\] sandbox = 'mcp:/no/such/servers.json'"),
        # top-level tables no job reads were dropped without a word (no budget at all; evaluated in-process)
        ("[budgets]\nmax_trajectories = 1\n", r"improve.toml has a table \[budgets\]: did you mean \[improve.budgets\]\?"),
        (
            '[serving]\nbackend = "vllm"\nservers = ["http://127.0.0.1:1/v1"]\n',
            r"improve.toml has a table \[serving\]: did you mean \[improve.serving\]\?",
        ),
    ],
)
def test_a_stage_table_that_cannot_work_stops_the_job_before_a_run_starts(tmp_path: Path, body: str, message: str) -> None:
    """Was: found only by the stage that reads it (train after replay and datasets; a misspelt sandbox or policy at
    replay, an [eval] sandbox at evaluate), leaving a failed run that the corrected file could not continue (another
    config hash: 'pass --new-run')."""
    from ee_middleware.jobs.improve import run_improve

    path = _improve_file(tmp_path, _base_folder(tmp_path), body)
    with pytest.raises(ConfigError, match=message):
        run_improve(ImproveConfig.load(path))
    assert RunsDir(tmp_path / "runs").list() == []


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('[notify]\nslack_webhook = "https://hooks.example/x"\n', "[notify]"),  # the user's cron wrapper reads it
        ('[tool.mycompany]\nowner = "ml-team"\n', "[tool.mycompany]"),
        ("[evaluation]\nmax_tokens = 8\n", "[evaluation]"),
        ("[tool.a]\nx = 1\n[tool.b.c]\ny = 2\n[notify]\nz = 3\n", "[tool.a], [tool.b.c], [notify]"),
    ],
)
def test_a_table_another_tool_reads_is_said_not_refused(tmp_path: Path, body: str, named: str) -> None:
    """Was (455a317): every top-level table no ee job reads was refused, so an improve.toml that also held another tool's
    table ([notify] for the user's cron wrapper, [tool.mycompany]) that ran before stopped with exit 1 after the upgrade,
    and [tool.mycompany] was named [tool]. Only a mistake ([budgets], a near miss of an ee table) is refused; any other
    table is named in full on a warning and the check goes on."""
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), '[replay]\nsandbox = "bfcl"\n' + body)
    with pytest.warns(UserWarning) as caught:
        ImproveConfig.load(path).check()
    said = [str(w.message) for w in caught if "no ee job reads" in str(w.message)]
    assert len(said) == 1
    assert f"improve.toml has {named}, which no ee job reads: ee improve ignores" in said[0]


def test_another_ee_commands_table_in_the_improve_file_is_not_said(tmp_path: Path) -> None:
    """Was: one file holding [experience_eval] or [curriculum] beside the nightly job's tables (as their --config reads
    them) warned that no ee job reads them."""
    import warnings

    LocalExperienceStore(tmp_path / "s").close()
    body = '[replay]\nsandbox = "bfcl"\n[experience_eval]\ntop_k = 3\n[experience_dataset]\nseed = 1\n[curriculum]\nk = 2\n'
    path = _improve_file(tmp_path, _base_folder(tmp_path), body)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ImproveConfig.load(path).check()
    assert not [str(w.message) for w in caught if "no ee job reads" in str(w.message)]


def test_a_mistaken_table_is_still_refused_next_to_another_tools_table(tmp_path: Path) -> None:
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), "[notify]\nx = 1\n[budgets]\nmax_trajectories = 1\n")
    with pytest.raises(ConfigError, match=r"has a table \[budgets\]: did you mean \[improve.budgets\]\?") as raised:
        ImproveConfig.load(path).check()
    assert "notify" not in str(raised.value)


def _base_folder(tmp_path: Path, *, template: bool = True) -> Path:
    """A base-model folder's files as far as the check reads them (config.json and the tokenizer's config; the weights
    and the tokenizer's vocabulary are looked for, not read)."""
    import json

    folder = tmp_path / ("base" if template else "base-no-template")
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"} if template else {}))
    (folder / "model.safetensors").write_bytes(b"")
    (folder / "tokenizer.model").write_bytes(b"")
    return folder


def test_a_missing_base_model_or_store_or_chat_template_stops_the_job_before_a_run_starts(tmp_path: Path) -> None:
    from ee_middleware.jobs.improve import run_improve

    with pytest.raises(ConfigError, match=r"base_model in \[improve\] \(or --base-model\): No base model at .*nope"):
        run_improve(ImproveConfig.load(_improve_file(tmp_path, tmp_path / "nope")))
    with pytest.raises(ConfigError, match=r"has no chat template .*tokenizer.chat_template = "):
        run_improve(ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path, template=False))))
    assert RunsDir(tmp_path / "runs").list() == []
    with pytest.raises(ConfigError, match=r"\[improve\] store = .*No experience store at .*s\b"):
        run_improve(ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path))))
    assert RunsDir(tmp_path / "runs").list() == []
    LocalExperienceStore(tmp_path / "s").close()
    ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path))).check()  # a good file passes


@pytest.mark.parametrize(("field", "fix"), [("n_positions", 256), ("max_position_embeddings", 512)])
def test_a_max_length_longer_than_the_base_models_context_stops_the_job_before_a_run_starts(tmp_path: Path, field: str, fix: int) -> None:
    """Was: refused only by the train stage, after replay and dataset building (hours into a night), leaving a failed
    run that the corrected file could not continue. Now the start-up check of the base reads its config.json."""
    import json

    from ee_middleware.jobs.improve import run_improve

    base = _base_folder(tmp_path)
    (base / "config.json").write_text(json.dumps({"model_type": "gpt2", field: fix}))
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, base, f"[train]\nmax_length = {fix * 2}\n")
    with pytest.raises(
        ConfigError,
        match=rf"max_length={fix * 2} is longer than the base model's context \({fix} tokens: {field}.*"
        rf"Set max_length .* to {fix} or less",
    ):
        run_improve(ImproveConfig.load(path))
    assert RunsDir(tmp_path / "runs").list() == []
    ImproveConfig.load(_improve_file(tmp_path, base, f"[train]\nmax_length = {fix}\n")).check()  # at the context: fine


def test_the_context_of_the_live_adapters_base_is_checked_when_the_candidate_trains_on_it(tmp_path: Path) -> None:
    """The candidate trains from the live adapter's base (not base_model): its context is the one max_length must fit.
    Was: a live base skipped every start-up check of the base."""
    import json

    from ee_middleware.adapters.registry import open_registry
    from ee_middleware.adapters.testing import _adapter

    live_base = tmp_path / "live-base"
    live_base.mkdir()
    (live_base / "config.json").write_text(json.dumps({"model_type": "llama", "max_position_embeddings": 64}))
    (live_base / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    registry = open_registry(str(tmp_path / "r"), create=True)
    record = registry.register(_adapter(tmp_path / "a1", seed=1, base=str(live_base)), "shop")
    registry.switch_live(record.name)
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), "[train]\nmax_length = 128\n")
    with pytest.raises(ConfigError, match=rf"the base of the live adapter {record.name}: max_length=128 .* \(64 tokens"):
        ImproveConfig.load(path).check()


def test_the_watermark_and_the_unfinished_run_are_those_of_the_same_app_in_a_shared_runs_folder(tmp_path: Path) -> None:
    """Two apps' nightly jobs sharing one runs folder (EE_RUNS): app kv's selection starts at kv's own last successful
    run, not at the other app's (was: the other app's watermark, so kv's approvals older than the other app's newest were
    never new: 'nothing new' and no training), and another app's stopped run is neither continued nor in the way."""
    import datetime as dt

    from ee_middleware.jobs.runs import STOPPED, SUCCEEDED
    from ee_middleware.jobs.stages import QuietProgress, StageContext, select
    from ee_middleware.records import Action, Step, Trajectory

    store = LocalExperienceStore(tmp_path / "s")
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    state = [{"role": "user", "content": "hi"}]
    step = Step(trajectory_id="t-kv", index=0, decision_index=0, state=state, action=Action(kind="answer", content="hello"))
    trajectory = Trajectory(
        id="t-kv", app="shop", task="hi", messages=[*state, {"role": "assistant", "content": "hello"}], final_answer="hello",
        started_at=start, ended_at=start, steps=[step],
    )  # fmt: skip
    store.write([trajectory])
    store.approve(["t-kv"], by="test")
    store.close()
    runs = RunsDir(tmp_path / "runs")
    other = ImproveConfig.load(_improve_file(tmp_path, tmp_path / "m"), app="other")
    done = runs.create("improve", other.describe(), other.config_hash())
    done.update(status=SUCCEEDED, watermark={"before": None, "after": "2999-01-01T00:00:00+00:00"})
    stopped = runs.create("improve", other.describe(), other.config_hash())
    stopped.update(status=STOPPED)

    shop = ImproveConfig.load(_improve_file(tmp_path, tmp_path / "m"))
    assert runs.resumable(shop.config_hash(), shop.scope()) is None  # was: RunConfigChangedError, 'pass --new-run'
    run = runs.create("improve", shop.describe(), shop.config_hash())
    result = select(StageContext(shop, run, runs, QuietProgress()))
    assert result.outputs["new"] == 1 and result.inputs["watermark"] is None
    assert runs.abandon_unfinished("--new-run", shop.scope()) == [run.id]  # the other app's stopped run stays continuable
    assert runs.resumable(other.config_hash(), other.scope()).id == stopped.id


def test_relative_paths_are_read_from_the_working_directory_and_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A nightly job started elsewhere (cron starts in $HOME) must not learn from, or write to, other folders without
    saying so: the [improve] paths are read from the working directory, as every ee command reads them (README), and
    the run records them absolute (run.json, the scope of the watermark, the report's follow-up commands), so a run
    says where its store, registry and runs were. A run recorded before with the same path written relative still
    gives its watermark when the job runs from the same folder."""
    from ee_middleware.jobs.runs import SUCCEEDED

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = _config(tmp_path, 'base_cache_dir = "cache"\n')  # the file is elsewhere: its folder is not what paths are read from
    config = ImproveConfig.load(path)
    assert config.store == work / "s" and config.registry == str(work / "r") and config.runs == work / "runs"
    assert config.base_model == str(work / "m") and config.base_cache_dir == work / "cache"
    assert config.describe()["improve"]["store"] == str(work / "s") and config.suite_specs() == [f"traces:{work / 's'}:shop"]
    assert ImproveConfig.load(path, registry="local:r2").registry == f"local:{work / 'r2'}"
    assert ImproveConfig.load(path, registry="s3bucket://x/y").registry == "s3bucket://x/y"  # not a path: as written

    runs = RunsDir(config.runs)
    described = config.describe()
    described["improve"]["store"] = "s"  # as a run written before paths were recorded absolute
    earlier = runs.create("improve", described, config.config_hash())
    earlier.update(status=SUCCEEDED)
    assert runs.last_successful(config.scope()).id == earlier.id
    monkeypatch.chdir(tmp_path)  # from another folder, "s" was another store
    assert runs.last_successful(ImproveConfig.load(path, store=str(work / "s")).scope()) is None


def test_an_unfinished_run_recorded_with_relative_paths_is_continued_from_the_same_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run stopped last night by a version that recorded the paths as the file had them (``store = "s"``) has a hash
    of those texts: the next night's job, from the same folder and with the same file, continues it. Before, every call
    refused it ('started with another configuration ... pass --new-run'), which would throw its work away."""
    from ee_middleware.jobs.config import RUN_NEUTRAL
    from ee_middleware.jobs.errors import RunConfigChangedError
    from ee_middleware.jobs.runs import STOPPED, sha256_json

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = _config(tmp_path, 'base_cache_dir = "cache"\n')
    config = ImproveConfig.load(path)
    as_written = {"store": "s", "registry": "r", "runs": "runs", "base_model": "m", "base_cache_dir": "cache"}
    described = config.describe()
    described["improve"].update(as_written)
    old_hash = sha256_json({**described, "improve": {k: v for k, v in described["improve"].items() if k not in RUN_NEUTRAL}})
    runs = RunsDir(config.runs)
    stopped = runs.create("improve", described, old_hash)
    stopped.update(status=STOPPED)

    assert config.config_hash() != old_hash  # the paths are recorded absolute now
    assert (
        runs.resumable(
            config.config_hash(), config.scope(), hash_like=lambda run: config.config_hash(recorded=run.data["config"]["improve"])
        ).id
        == stopped.id
    )
    with pytest.raises(RunConfigChangedError):  # another setting still makes it another configuration
        other = ImproveConfig.load(path, schedule="il")  # the default is iwm
        runs.resumable(other.config_hash(), other.scope(), hash_like=lambda run: other.config_hash(recorded=run.data["config"]["improve"]))


def test_a_misspelt_suite_names_the_improve_shorthand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """suites = ["trace"] was refused with the suite forms of `ee eval run` only (traces:STORE[:APP][:N], ...), not the
    spelling [improve] takes for the app's own held-out trajectories, `traces`."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"\[improve\] suites = \['trace'\].*'traces' \(or 'traces:N'\)"):
        ImproveConfig.load(_config(tmp_path, 'suites = ["trace"]\n')).check()


def test_ee_improve_example_config_is_a_file_the_job_loads(tmp_path: Path) -> None:
    """`ee improve --help` pointed nowhere for the file it needs (the example lived in a module docstring and the
    README); `--example-config` prints it, and what it prints loads, every table of it."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    result = CliRunner().invoke(app, ["improve", "--example-config"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "improve.toml"
    path.write_text(result.output)
    job = ImproveConfig.load(path)
    assert (job.app, job.schedule, str(job.store)) == ("support-bot", "iwm", "/data/experience")
    assert {"replay", "datasets", "train", "eval", "gate"} <= set(tomllib.loads(result.output))
    help_text = CliRunner().invoke(app, ["improve", "--help"], env={"COLUMNS": "200"}).output
    assert "--example-config" in help_text


def test_an_mcp_sandbox_is_checked_by_reading_its_config_file(tmp_path: Path) -> None:
    """[replay] sandbox = "mcp:servers.json" (the app's MCP servers) was refused before a run started: the start-up check
    took it for a package.module:factory. Now the config file is read, as ee replay run reads it."""
    from ee_middleware.jobs.config import _check_specs

    config = tmp_path / "servers.json"
    config.write_text('{"mcpServers": {"notes": {"command": "python", "args": ["notes_server.py"]}}}')
    _check_specs(f"mcp:{config}", "mutate", None)
    config.write_text("{not json")
    with pytest.raises(ConfigError, match=r"\[replay\] sandbox = 'mcp:"):
        _check_specs(f"mcp:{config}", "mutate", None)


def _store_with_app(folder: Path, app: str, *, approve: bool = True) -> None:
    """A real store holding one trajectory of ``app``, approved unless ``approve`` is false (pending review)."""
    import datetime as dt

    from ee_middleware.records import Action, Step, Trajectory

    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    state = [{"role": "user", "content": "hi"}]
    step = Step(trajectory_id=f"t-{app}", index=0, decision_index=0, state=state, action=Action(kind="answer", content="hello"))
    trajectory = Trajectory(
        id=f"t-{app}", app=app, task="hi", messages=[*state, {"role": "assistant", "content": "hello"}], final_answer="hello",
        started_at=start, ended_at=start, steps=[step],
    )  # fmt: skip
    store = LocalExperienceStore(folder)
    try:
        store.write([trajectory])
        if approve:
            store.approve([trajectory.id], by="test")
    finally:
        store.close()


def test_an_app_the_store_never_recorded_stops_the_job_before_a_run_starts(tmp_path: Path) -> None:
    """Was: a misspelt app (`--app inventory-bto`, or in [improve]) in a store that records other apps ran as
    'nothing-new' with exit status 0, night after night, so nothing was ever learned and nothing said why. Now the
    start-up check names the key, the apps the store holds and the closest one; a store that records nothing yet (a
    new set-up) still runs (nothing new)."""
    from ee_middleware.jobs.improve import run_improve

    _store_with_app(tmp_path / "s", "inventory-bot")
    path = _improve_file(tmp_path, _base_folder(tmp_path))
    with pytest.raises(
        ConfigError, match=r"\[improve\] app = 'inventory-bto' \(or --app\): .* no trajectory of it.*did you mean 'inventory-bot'"
    ):
        run_improve(ImproveConfig.load(path, app="inventory-bto"))
    assert RunsDir(tmp_path / "runs").list() == []
    ImproveConfig.load(path, app="inventory-bot").check()  # the app it records passes
    LocalExperienceStore(tmp_path / "empty").close()
    ImproveConfig.load(path, app="inventory-bto", store=str(tmp_path / "empty")).check()  # nothing recorded yet: fine
    # a new app in a store other apps record into, set up before its first run: nothing new yet, not an error (review),
    # also where its name is close to a recorded one but no typo of it
    for new in ("billing-assistant", "inventory-bot-v2", "inventory-bot-staging", "inventory-agent"):
        ImproveConfig.load(path, app=new).check()


def test_a_store_that_is_not_there_names_the_setting_it_came_from(tmp_path: Path) -> None:
    """Was: 'No experience store at /x. Record a run into it first, or check the --store path.' for a store set in the
    file's [improve] table (or EE_STORE): the message named a flag the user had not passed. Now it names the setting."""
    path = _improve_file(tmp_path, _base_folder(tmp_path))
    with pytest.raises(ConfigError, match=r"\[improve\] store = '.*/s' \(or --store, EE_STORE\): No experience store at"):
        ImproveConfig.load(path).check()


def test_a_base_model_that_is_not_there_is_named_also_while_an_adapter_is_live(tmp_path: Path) -> None:
    """The candidate trains from the live adapter's base, so base_model (used when no adapter is live, e.g. after a
    rollback to the base) was not looked at: `--base-model /models/qwen-typo` started and succeeded, to fail only on
    the night no adapter is live. Now it is named at start."""
    from ee_middleware.adapters.registry import open_registry
    from ee_middleware.adapters.testing import _adapter

    live_base = _base_folder(tmp_path)
    registry = open_registry(str(tmp_path / "r"), create=True)
    record = registry.register(_adapter(tmp_path / "a1", seed=1, base=str(live_base)), "shop")
    registry.switch_live(record.name)
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, tmp_path / "no-such-base")
    with pytest.raises(ConfigError, match=r"base_model in \[improve\] \(or --base-model\).*used when no adapter is live.*No base model at"):
        ImproveConfig.load(path).check()
    ImproveConfig.load(path, base_model=str(live_base)).check()


def test_a_night_with_nothing_approved_says_how_many_trajectories_await_review(tmp_path: Path) -> None:
    """A new set-up whose agent records without approve_if: every night ended 'nothing-new' with '0 new approved
    trajectories, 0 to replay' and the reason 'no trajectory approved since the last successful run', never saying
    that the store held the app's runs waiting for a reviewer. The select stage now counts them and says how to see them."""
    from ee_middleware.jobs.improve import run_improve

    _store_with_app(tmp_path / "s", "shop", approve=False)
    run = run_improve(ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path))))
    assert run.status == "nothing-new"
    select = run.stage("select")
    assert select["outputs"]["pending_review"] == 1
    hint = f"1 trajectory of shop awaits review (`ee traces list --store {tmp_path / 's'} --status pending --app shop`)"
    assert hint in select["summary"] and hint in run.data["outcome"]["reason"]
    assert hint in (run.folder / "report.md").read_text()
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    shown = CliRunner().invoke(app, ["runs", "show", "latest", "--runs", str(tmp_path / "runs")], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and hint in shown.stdout, shown.output  # in full, not cut by the table


def test_a_suite_of_another_harness_that_cannot_load_is_not_told_about_traces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """suites = ["traces", "tau:my_shop.nodomain:make"] (a tau domain that does not import) was refused with the import
    error and then 'Here, 'traces' (or 'traces:N') is this app's own held-out trajectories.', a hint about a suite that
    was fine. The hint now follows only a suite that is not another harness's (bfcl:, tau:)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"suites = \['tau:my_shop_nope.domain:make'\]: Cannot import") as raised:
        ImproveConfig.load(_config(tmp_path, 'suites = ["traces", "tau:my_shop_nope.domain:make"]\n')).check()
    assert "'traces' (or 'traces:N')" not in str(raised.value)


def test_the_configuration_a_run_records_shows_no_secret(tmp_path: Path) -> None:
    """describe() is written to run.json and printed by `ee improve --json`: an api_key in [replay.policy_settings] (the
    openai: policy takes one) was there in plain text (found by review). Secret-named values read ***, the rest as set."""
    config = ImproveConfig.load(_config(tmp_path, '[replay.policy_settings]\napi_key = "sk-proj-LEAKME"\ntemperature = 0.7\n'))
    described = config.describe()
    assert described["replay"]["policy_settings"] == {"api_key": "***", "temperature": 0.7}
    assert "LEAKME" not in json.dumps(described)


def test_credentials_in_the_urls_a_run_records_are_hidden(tmp_path: Path) -> None:
    """A password in a URL (``user:password@``, ``?api_key=``) of [replay] policy or [improve.serving] servers was written
    to run.json (0644) and printed by `ee improve --json` and `ee runs show --json` in plain text (sweep S 3), though
    the README says such credentials are shown and stored as ***."""
    body = (
        '[improve.serving]\nservers = ["http://bob:SrvPassw0rd@127.0.0.1:8000/v1?api_key=sk-QUERYabcdef"]\n'
        '[replay]\npolicy = "openai:http://carol:PolPassw0rd@127.0.0.1:8001/v1#m"\n'
    )
    described = ImproveConfig.load(_config(tmp_path, body)).describe()
    shown = json.dumps(described)
    assert not any(secret in shown for secret in ("SrvPassw0rd", "PolPassw0rd", "sk-QUERYabcdef")), shown
    assert described["improve"]["serving"]["servers"] == ["http://***@127.0.0.1:8000/v1?api_key=***"]
    assert described["replay"]["policy"] == "openai:http://***@127.0.0.1:8001/v1#m"


def test_a_registry_a_run_records_as_a_plug_in_factory_is_never_imported_from_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ee runs prune` (also --dry-run, also ee improve's keep_runs) and --new-run's retiring opened the registry a run's
    records name, and a `module:factory` one imports that module: whoever can write a runs folder made them run code
    (review of the redact_fn trust gate, F2). Such a registry is built only where the job's own configuration names it;
    else the run is kept (prune) or its candidate left (--new-run), saying why."""
    from ee_middleware.jobs.deploy import retire_abandoned

    (tmp_path / "planted_registry.py").write_text(
        "from pathlib import Path\n\ndef make(*args, **kwargs):\n    Path('MARKER').write_text('ran')\n    raise RuntimeError('ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "MARKER"
    monkeypatch.chdir(tmp_path)
    runs = RunsDir(tmp_path / "runs")
    run = runs.create("improve", {"improve": {"store": "s", "app": "shop", "registry": "r"}}, "hash")
    run.write_stage(
        "register", {"stage": "register", "status": "done", "outputs": {"candidate": "c1", "registry": "planted_registry:make"}}
    )
    run.update(status="succeeded")
    result = runs.prune(0, dry_run=True, registry=str(tmp_path / "r"))
    [kept] = result["kept"]
    assert kept["id"] == run.id and "plug-in factory" in kept["why"]
    assert not marker.exists(), "the registry factory the run recorded was imported"
    config = ImproveConfig.load(_config(tmp_path))
    retired = retire_abandoned(run, "--new-run", config)
    assert retired["candidates"] == [] and "plug-in factory" in retired["unload_problems"][0]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("key", "table"),
    [
        ("max_trajectories = 1", "improve.budgets"),
        ("max_minutes = 30", "improve.budgets"),
        ('servers = ["http://h:8000/v1"]', "improve.serving"),
    ],
)
def test_a_budget_or_serving_key_written_in_improve_names_the_file_and_its_sub_table(tmp_path: Path, key: str, table: str) -> None:
    """Was: 'Invalid improve configuration: max_trajectories: Extra inputs are not permitted', naming neither the file
    nor the table the key belongs in."""
    path = _config(tmp_path, key + "\n")
    name = key.split(" ")[0]
    with pytest.raises(ConfigError, match=rf"{path}: {name} belongs in \[{table}\], not directly in \[improve\]") as raised:
        ImproveConfig.load(path)
    assert f"[{table}]\n{name} = " in str(raised.value)
    moved = _config(tmp_path, f"[{table}]\n{key}\n")
    assert ImproveConfig.load(moved).model_dump()[table.split(".")[1]][name] is not None  # where it belongs, it is read


def test_a_run_continued_with_the_same_private_config_keeps_its_copy_private(tmp_path: Path) -> None:
    """A run an earlier version started (its config.toml copy 0644), continued with the same 0600 improve.toml: the copy is
    written again at 0600 (a review of 95bbf5fc: an atomic write that kept the replaced file's mode made it 0644)."""
    import os
    import stat

    from ee_middleware._files import atomic_write_text
    from ee_middleware.jobs.improve import CONFIG_COPY, JOB, STAGES, run_improve

    _store_with_app(tmp_path / "s", "shop", approve=False)
    path = _improve_file(tmp_path, _base_folder(tmp_path), '[replay.sandbox_settings]\ndb_password = "hunter2-STAGING"\n')
    path.chmod(0o600)
    old_umask = os.umask(0o022)
    try:
        config = ImproveConfig.load(path)
        failed = RunsDir(tmp_path / "runs").create(JOB, config.describe(), config.config_hash())
        atomic_write_text(failed.folder / CONFIG_COPY, path.read_text())  # as an earlier version left it: 0644
        failed.update(stage_order=list(STAGES), force=False, status="failed", error="OSError")
        failed.write_stage("select", {"stage": "select", "status": "failed", "attempt": 1, "error": "OSError"})
        continued = run_improve(ImproveConfig.load(path))  # the same settings: continued
    finally:
        os.umask(old_umask)
    assert continued.id == failed.id
    assert stat.S_IMODE((continued.folder / CONFIG_COPY).stat().st_mode) == 0o600


def test_the_run_folders_copies_of_a_private_config_file_are_private(tmp_path: Path) -> None:
    """A 0600 improve.toml (a staging password in [replay.sandbox_settings]) was copied into the run folder as
    config.toml, and on a continued run as config.attempt-N.toml, at 0644 (the umask's mode): the secret that run.json
    shows as *** was readable by anyone who can read the runs folder. The copies now have the source's permissions, 0600
    at most for a private file (a copy an earlier version left world-readable is made private when it is kept)."""
    import os
    import stat

    from ee_middleware._files import atomic_write_text
    from ee_middleware.jobs.improve import CONFIG_COPY, JOB, STAGES, run_improve

    _store_with_app(tmp_path / "s", "shop", approve=False)
    path = _improve_file(tmp_path, _base_folder(tmp_path), '[replay.sandbox_settings]\ndb_password = "hunter2-STAGING"\n')
    path.chmod(0o600)
    old_umask = os.umask(0o022)
    try:
        run = run_improve(ImproveConfig.load(path))
        assert run.status == "nothing-new"
        copy = run.folder / CONFIG_COPY
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert copy.read_text() == path.read_text()  # verbatim: the run is reproduced from it

        # a run an earlier version started (its copy 0644) fails at select and goes on with a [datasets] setting changed
        config = ImproveConfig.load(path)
        failed = RunsDir(tmp_path / "runs").create(JOB, config.describe(), config.config_hash())
        atomic_write_text(failed.folder / CONFIG_COPY, path.read_text())
        assert stat.S_IMODE((failed.folder / CONFIG_COPY).stat().st_mode) == 0o644
        failed.update(stage_order=list(STAGES), force=False, status="failed", error="OSError")
        failed.write_stage("select", {"stage": "select", "status": "failed", "attempt": 1, "error": "OSError"})
        path.write_text(path.read_text() + "[datasets]\nheldout_share = 0.3\n")
        continued = run_improve(ImproveConfig.load(path))
    finally:
        os.umask(old_umask)
    assert continued.id == failed.id and continued.data["config_changes"]
    kept = continued.folder / continued.data["config_changes"][0]["config_file_before"]
    assert "hunter2-STAGING" in kept.read_text() and stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert stat.S_IMODE((continued.folder / CONFIG_COPY).stat().st_mode) == 0o600
    assert "heldout_share = 0.3" in (continued.folder / CONFIG_COPY).read_text()

    shared = _improve_file(tmp_path, _base_folder(tmp_path), "[datasets]\nheldout_share = 0.4\n")
    shared.chmod(0o640)
    run = run_improve(ImproveConfig.load(shared))
    assert stat.S_IMODE((run.folder / CONFIG_COPY).stat().st_mode) == 0o640  # the source's own permissions


def test_a_base_model_other_than_the_live_adapters_is_said_not_to_be_trained_on(tmp_path: Path, monkeypatch) -> None:
    """Before: `ee improve --base-model OTHER` while an adapter was live trained on the live adapter's base without a word
    (run.json recording OTHER). The train stage now says, on the progress and in its decisions, that it is not trained on
    and why. (Stopped right after, where the training would start.)"""
    import json

    from ee_middleware.adapters.registry import open_registry
    from ee_middleware.adapters.testing import _adapter
    from ee_middleware.jobs.runs import RunsDir
    from ee_middleware.jobs.stages import QuietProgress, StageContext, train

    live_base = tmp_path / "live-base"
    live_base.mkdir()
    (live_base / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (live_base / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    registry = open_registry(str(tmp_path / "r"), create=True)
    record = registry.register(_adapter(tmp_path / "a1", seed=1, base=str(live_base)), "shop")
    registry.switch_live(record.name)
    config = ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path)))

    class Training(Exception):
        pass

    def stop(*args: object, **kwargs: object) -> None:
        raise Training

    said: list[str] = []

    class Said(QuietProgress):
        def info(self, text: str) -> None:
            said.append(text)

    monkeypatch.setattr(ImproveConfig, "train_config", stop)
    runs = RunsDir(tmp_path / "runs")
    ctx = StageContext(config=config, run=runs.create("improve", {"improve": {"app": "shop"}}, "hash"), runs=runs, progress=Said())
    with pytest.raises(Training):
        train(ctx)
    [warning] = said
    assert warning.startswith(f"warning: base_model {tmp_path / 'base'} is not trained on: shop's live adapter {record.name} runs on")
    assert str(live_base) in warning and "base_model is used when no adapter is live" in warning


def test_the_nightly_evaluation_on_its_replicas_sends_the_fleets_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its candidate and baseline are served by the [improve.serving] replicas (an openai: spec): their client sends
    EE_SERVE_API_KEY, not OPENAI_API_KEY (which a teacher or user model may need, and which would be refused there);
    a local: spec has no key to send; [eval] api_key_env wins."""
    monkeypatch.setenv("EE_SERVE_API_KEY", "fleet")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    config = ImproveConfig.load(_config(tmp_path))
    served = config.eval_job("openai:http://127.0.0.1:8000/v1#bot-v1", tmp_path / "e", tmp_path / "d")
    assert served.api_key_env == "EE_SERVE_API_KEY" and served.client_options()["api_key"] == "fleet"
    assert "api_key" not in config.eval_job("local:/models/base", tmp_path / "e", tmp_path / "d").client_options()
    own = ImproveConfig.load(_config(tmp_path, '[eval]\napi_key_env = "MY_KEY"\n'))
    monkeypatch.setenv("MY_KEY", "mine")
    assert own.eval_job("openai:http://127.0.0.1:8000/v1#bot-v1", tmp_path / "e", tmp_path / "d").client_options()["api_key"] == "mine"


def test_a_night_for_an_app_the_store_does_not_record_says_so(tmp_path: Path) -> None:
    """An app no typo away from a recorded one (a new app, or a wrong name: `--app support-bot` for a store of
    `bfcl.multi_turn_base`) runs, as a new app must; but every night ended 'nothing-new' saying only that nothing was
    approved since the last run (a CLI/config sweep). The select stage and the run's reason now say the store holds
    none of its trajectories, which apps it does record, and what to set."""
    from ee_middleware.jobs.improve import run_improve

    _store_with_app(tmp_path / "s", "inventory-bot")
    run = run_improve(ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path)), app="billing-assistant"))
    assert run.status == "nothing-new"
    said = "the store holds no trajectory of app 'billing-assistant' (it records 'inventory-bot')"
    assert said in run.stage("select")["summary"] and said in run.data["outcome"]["reason"]
    assert "set [improve] app (or --app)" in run.data["outcome"]["reason"]
    _store_with_app(tmp_path / "s2", "shop", approve=False)  # it records the app, awaiting review: not said
    quiet = run_improve(ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path)), store=str(tmp_path / "s2"), app="shop"))
    assert quiet.status == "nothing-new" and "holds no trajectory" not in quiet.data["outcome"]["reason"]


def test_a_registry_that_is_a_file_stops_the_job_before_a_run_starts(tmp_path: Path) -> None:
    """A registry path naming a file was taken for a registry not made yet (a first night): the run replayed, built
    datasets and failed at training with NotADirectoryError, left to be continued; `ee adapters list -r FILE` said to
    register an adapter first (a CLI/config sweep). Both now say it is a file, not a folder."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.jobs.improve import run_improve

    _store_with_app(tmp_path / "s", "shop")
    (tmp_path / "r").write_text("not a registry\n")
    with pytest.raises(ConfigError, match=r"adapter registry .*/r is a file, not a folder"):
        run_improve(ImproveConfig.load(_improve_file(tmp_path, _base_folder(tmp_path))))
    assert RunsDir(tmp_path / "runs").list() == []
    listed = CliRunner().invoke(app, ["adapters", "list", "-r", str(tmp_path / "r")])
    assert listed.exit_code == 1 and "is a file, not a folder" in listed.output and "Register an adapter first" not in listed.output


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "[improve.budgets]\nmax_minutes = 0\n",
            r"budgets.max_minutes: Input should be greater than 0 \(got 0\): in \[improve.budgets\] of ",
        ),
        (
            "[improve.serving]\ntimeout_s = -1\n",
            r"serving.timeout_s: Input should be greater than 0 \(got -1\): in \[improve.serving\] of ",
        ),
    ],
)
def test_a_bad_value_in_a_sub_table_is_named_in_that_sub_table(tmp_path: Path, body: str, expected: str) -> None:
    """Sweep: reported "in [improve] of bad.toml", a table that does not hold the key."""
    with pytest.raises(ConfigError, match=expected):
        ImproveConfig.load(_config(tmp_path, body))


def test_an_unknown_key_in_a_sub_table_is_placed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep: "... in [improve.budgets] of bad.toml (remove the key, ...): in [improve.budgets] of /abs/bad.toml (...)":
    the file named as the command line gave it (relative), then again by its absolute path."""
    from ee_middleware._toml import naming_file

    path = _config(tmp_path, "[improve.budgets]\nmax_minute = 10\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as raised, naming_file("improve", path):
        ImproveConfig.load(Path(path.name))
    assert str(raised.value).count("[improve.budgets] of") == 1, str(raised.value)
    assert "(did you mean max_minutes?)" in str(raised.value)


def test_a_sub_tables_key_near_missed_in_the_table_itself_is_told_with_its_sub_table(tmp_path: Path) -> None:
    """Sweep: ``max_minute = 10`` in [improve] got no "did you mean" (``max_minutes`` is [improve.budgets]')."""
    with pytest.raises(
        ConfigError, match=r"max_minute: Extra inputs are not permitted \(did you mean max_minutes, a setting of its budgets sub-table\?\)"
    ):
        ImproveConfig.load(_config(tmp_path, "max_minute = 10\n"))
    with pytest.raises(ConfigError) as raised:  # review: [train]'s lora_r is no serving.max_lora_rank
        ImproveConfig.load(_config(tmp_path, "lora_rank = 16\n"))
    assert "max_lora_rank" not in str(raised.value), str(raised.value)


def test_an_alias_the_registry_refuses_stops_the_job_before_a_run_starts(tmp_path: Path) -> None:
    """Was: found by the register stage, after replay, datasets and training; the corrected file could not continue the
    failed run ("[improve] alias: Bad Alias -> good (the [improve] table is fixed for a run)"), so every stage ran again.
    An app name capture took (``SupportBot``) is the alias when none is set: the message says to set one."""
    from ee_middleware.jobs.improve import run_improve

    LocalExperienceStore(tmp_path / "s").close()
    base = _base_folder(tmp_path)
    with pytest.raises(ConfigError, match=r"\[improve\] alias = 'Bad Alias' is not a name the registry takes: use 1-63 lower-case"):
        run_improve(ImproveConfig.load(_improve_file(tmp_path, base, 'alias = "Bad Alias"\n')))
    assert RunsDir(tmp_path / "runs").list() == []
    path = _improve_file(tmp_path, base)
    path.write_text(path.read_text().replace('app = "shop"', 'app = "Support Bot"'))
    with pytest.raises(ConfigError) as raised:
        ImproveConfig.load(path).check()
    message = str(raised.value)
    assert "The app 'Support Bot' is also its name in the registry and at the router when [improve] sets no alias" in message
    assert "set the served name in [improve]: alias = 'support-bot'" in message and "--app" not in message, message
    # an adapter's name given as the app: the alias suggested is one the registry takes (its app)
    path.write_text(path.read_text().replace('app = "Support Bot"', 'app = "bot-v3-aaaaaaaa"'))
    with pytest.raises(ConfigError, match=r"it has the form of an adapter's name .* alias = 'bot'\.$"):
        ImproveConfig.load(path).check()
    path.write_text(path.read_text() + 'alias = "support-bot"\n')
    ImproveConfig.load(path).check()  # the app as capture stored it, served as its alias
