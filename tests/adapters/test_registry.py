"""The local adapter registry: names, statuses, refusals with clear errors, crash safety, the history."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ee_middleware.adapters.errors import (
    AdapterFilesError,
    AdapterNotFoundError,
    BaseModelMismatchError,
    InvalidTransitionError,
    RankTooLargeError,
    RegistryCorruptionError,
)
from ee_middleware.adapters.records import check_registered_files
from ee_middleware.adapters.registry import LocalAdapterRegistry, open_registry
from ee_middleware.adapters.testing import check_registry
from ee_middleware.errors import StoreCorruptionWarning
from tests.cli.json_failure import json_failure

from .helpers import write_adapter


def test_the_local_registry_passes_the_conformance_kit(tmp_path: Path) -> None:
    check_registry(lambda: LocalAdapterRegistry(tmp_path / "reg"), tmp_path / "work")


def test_names_are_app_version_and_weight_hash_and_same_weights_keep_their_name(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    manifest = {"base_model": {"path": "/models/base"}, "datasets": {"il": {"sha256": "ab" * 32, "rows": 3}}, "losses": [[1, 2.0]]}
    first = reg.register(write_adapter(tmp_path / "a", manifest=manifest), "support-bot", by="alice")
    assert first.name == f"support-bot-v1-{first.content_hash[:8]}"
    assert (first.status, first.rank, first.base_model, first.created_by) == ("candidate", 8, "/models/base", "alice")
    assert first.manifest == manifest
    assert Path(first.path).parent == reg.root / "adapters" and (Path(first.path) / "adapter_model.safetensors").is_file()
    again = reg.register(tmp_path / "a", "support-bot")
    assert again == first
    second = reg.register(write_adapter(tmp_path / "b", seed=1), "support-bot")
    assert second.name.startswith("support-bot-v2-") and second.content_hash != first.content_hash
    other_app = reg.register(tmp_path / "a", "other-bot")
    assert other_app.name == f"other-bot-v1-{first.content_hash[:8]}"


def test_a_base_model_other_than_the_live_one_is_refused(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    live = reg.register(write_adapter(tmp_path / "a", base="/models/smollm2"), "bot")
    reg.switch_live(live.name)
    with pytest.raises(BaseModelMismatchError, match=r"/models/qwen.*/models/smollm2"):
        reg.register(write_adapter(tmp_path / "b", base="/models/qwen", seed=1), "bot")
    assert [r.name for r in reg.list()] == [live.name]


def test_a_rank_above_max_lora_rank_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    with pytest.raises(RankTooLargeError, match=r"r=32.*--max-lora-rank 16"):
        reg.register(write_adapter(tmp_path / "a", rank=32), "bot")
    monkeypatch.setenv("EE_MAX_LORA_RANK", "8")
    with pytest.raises(RankTooLargeError, match="--max-lora-rank 8"):
        reg.register(write_adapter(tmp_path / "b", rank=16), "bot")
    assert reg.register(tmp_path / "b", "bot", max_lora_rank=16).rank == 16


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("no-config", "adapter_config.json is missing"),
        ("no-weights", "no adapter weights"),
        ("bad-config", "cannot be read as JSON"),
        ("truncated-weights", "not a valid safetensors file"),
        ("no-rank", "no valid LoRA rank"),
    ],
)
def test_missing_or_corrupt_adapter_files_are_refused_and_nothing_is_registered(tmp_path: Path, damage: str, expected: str) -> None:
    folder = write_adapter(tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    if damage == "no-config":
        (folder / "adapter_config.json").unlink()
    elif damage == "no-weights":
        weights.unlink()
    elif damage == "bad-config":
        (folder / "adapter_config.json").write_text("{not json")
    elif damage == "truncated-weights":
        weights.write_bytes(weights.read_bytes()[:-10])
    else:
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/b"}))
    reg = LocalAdapterRegistry(tmp_path / "reg")
    with pytest.raises(AdapterFilesError, match=expected):
        reg.register(folder, "bot")
    assert reg.list() == [] and reg.history() == []


def test_bad_app_names_and_unknown_names_get_clear_errors(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    with pytest.raises(Exception, match="Bad app name 'Support Bot'"):
        reg.register(write_adapter(tmp_path / "a"), "Support Bot")
    with pytest.raises(AdapterNotFoundError, match="No adapter named 'nope'"):
        reg.get("nope")
    with pytest.raises(AdapterNotFoundError, match="No app named 'nope'"):
        reg.rollback_target("nope")


def test_promote_rollback_retire_and_fail_move_statuses_and_the_alias(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    a, b, c = (reg.register(write_adapter(tmp_path / n, seed=i), "bot") for i, n in enumerate("abc"))
    assert reg.resolve("bot") is None
    reg.switch_live(a.name)
    reg.switch_live(b.name)
    assert reg.resolve("bot") == b.name
    assert reg.get(a.name).status == "retired" and reg.get(a.name).reason == f"superseded by {b.name}"
    assert reg.rollback_target("bot").name == a.name
    with pytest.raises(InvalidTransitionError, match="live adapter of bot"):
        reg.retire(b.name)
    reg.mark_failed(c.name, "VerificationError on http://x: no answer")
    with pytest.raises(InvalidTransitionError, match="failed adapter is not served again"):
        reg.switch_live(c.name)
    reg.switch_live(a.name, action="rollback")
    assert reg.resolve("bot") == a.name and reg.get(b.name).reason == f"rolled back to {a.name}"
    with pytest.raises(InvalidTransitionError, match="no earlier live adapter"):
        reg.rollback_target("bot")
    actions = [(e["action"], e["adapter"]) for e in reg.history(app="bot")]
    assert actions[3:] == [("promote", a.name), ("promote", b.name), ("fail", c.name), ("rollback", a.name)]
    assert all(e["applied"] for e in reg.history())


def test_retiring_a_retired_adapter_again_changes_nothing_and_adds_no_event(tmp_path: Path) -> None:
    """Was: a second `retire` event (and its reason over the first) for an adapter retired already; retiring it again is
    for unloading it from more replicas."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    a = reg.register(write_adapter(tmp_path / "a"), "bot").name
    first = reg.retire(a, reason="replaced by the new prompt")
    again = reg.retire(a, reason="clean-up")
    assert again.status == "retired" and again.reason == first.reason == "replaced by the new prompt"
    assert [e["action"] for e in reg.history(adapter=a)] == ["register", "retire"]


def test_a_rollback_with_nothing_left_says_which_adapters_were_left_and_how_to_serve_one_again(tmp_path: Path) -> None:
    """Promote A, B, A again, roll back (to B), roll back again. Was: 'nothing was promoted before B', untrue (A was) and
    naming no fix; A was rolled back from, and a rollback never returns to an adapter it left."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    a, b = (reg.register(write_adapter(tmp_path / n, seed=i), "app").name for i, n in enumerate("ab"))
    for name in (a, b, a):
        reg.switch_live(name)
    assert reg.rollback_target("app").name == b
    reg.switch_live(b, action="rollback")
    with pytest.raises(InvalidTransitionError) as refused:
        reg.rollback_target("app")
    message = str(refused.value)
    assert "nothing was promoted before" not in message, message
    assert f"{a} (rolled back to {b})" in message and f"To serve one of them again, promote it: ee adapters promote {a} ..." in message


def test_retiring_the_live_adapter_suggests_a_rollback_only_where_one_would_go(tmp_path: Path) -> None:
    """Sweep B, finding 9: the refusal said "promote another one or `ee adapters rollback APP` first" where no earlier
    adapter was left (the one before it retired by hand), and that rollback was then refused too."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    a, b = (reg.register(write_adapter(tmp_path / n, seed=i), "bot").name for i, n in enumerate("ab"))
    reg.switch_live(a)
    with pytest.raises(InvalidTransitionError, match=r"promote another one first \(no earlier adapter of bot is left to roll back to\)"):
        reg.retire(a)
    reg.switch_live(b)
    with pytest.raises(InvalidTransitionError, match=rf"promote another one or `ee adapters rollback bot` \(to {a}\) first\."):
        reg.retire(b)


def test_a_rollback_refusal_names_no_adapter_that_was_never_live(tmp_path: Path) -> None:
    """A candidate retired without ever being served (an abandoned improve run's) is not one the app served before."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    served, never = (reg.register(write_adapter(tmp_path / n, seed=i), "app").name for i, n in enumerate("ab"))
    reg.switch_live(served)
    reg.retire(never, reason="abandoned improve run")
    with pytest.raises(InvalidTransitionError, match=rf"no earlier live adapter to roll back to \(nothing was promoted before {served}\)"):
        reg.rollback_target("app")


def test_list_json_from_the_cli_is_one_array_of_records(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    write_adapter(tmp_path / "a")
    runner = CliRunner()
    registered = runner.invoke(app, ["adapters", "register", str(tmp_path / "a"), "--app", "bot", "-r", str(tmp_path / "reg"), "--json"])
    assert registered.exit_code == 0, registered.output
    listed = runner.invoke(app, ["adapters", "list", "-r", str(tmp_path / "reg"), "--json"])
    [record] = json.loads(listed.stdout)
    assert {"name", "app", "status", "base_model", "created_at"} <= set(record)
    assert (record["app"], record["status"]) == ("bot", "candidate")
    refused = runner.invoke(
        app, ["adapters", "register", str(tmp_path / "a"), "--app", "bot", "-r", str(tmp_path / "reg"), "--max-lora-rank", "4"]
    )
    assert refused.exit_code == 1 and "--max-lora-rank 4" in refused.output
    shown = runner.invoke(app, ["adapters", "show", record["name"], "-r", str(tmp_path / "reg"), "--json"])
    assert json.loads(shown.stdout)["history"][0]["action"] == "register"


def test_an_adapters_history_shows_the_events_that_replaced_it(tmp_path: Path) -> None:
    """Promote A, promote B, roll back: B's history ends with the rollback that retired it, A's holds the promote
    that superseded it (history(adapter=) read only the events naming it as `adapter`, not as `replaced`)."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    reg = LocalAdapterRegistry(tmp_path / "reg")
    a, b = (reg.register(write_adapter(tmp_path / n, seed=i), "bot") for i, n in enumerate("ab"))
    reg.switch_live(a.name)
    reg.switch_live(b.name)
    reg.switch_live(a.name, action="rollback")
    events = {n: [(e["action"], e["adapter"], e.get("replaced")) for e in reg.history(adapter=n)] for n in (a.name, b.name)}
    assert events[b.name] == [("register", b.name, None), ("promote", b.name, a.name), ("rollback", a.name, b.name)]
    assert events[a.name] == [
        ("register", a.name, None),
        ("promote", a.name, None),
        ("promote", b.name, a.name),
        ("rollback", a.name, b.name),
    ]
    assert [e["action"] for e in reg.history()] == ["register", "register", "promote", "promote", "rollback"], "each event once"

    runner = CliRunner()
    shown = {n: runner.invoke(app, ["adapters", "show", n, "-r", str(tmp_path / "reg")]) for n in (a.name, b.name)}
    text = {n: " ".join(result.output.split()) for n, result in shown.items()}
    assert f"promote by {b.created_by} (replaced {a.name})" in text[b.name]
    assert f"rollback by {b.created_by} (rolled back to {a.name})" in text[b.name]
    assert f"promote by {a.created_by} (superseded by {b.name})" in text[a.name]
    assert f"rollback by {a.created_by} (replaced {b.name})" in text[a.name]
    as_json = json.loads(runner.invoke(app, ["adapters", "show", b.name, "-r", str(tmp_path / "reg"), "--json"]).stdout)
    assert [(e["action"], e["adapter"]) for e in as_json["history"]][-1] == ("rollback", a.name)


def test_list_status_takes_only_the_statuses_there_are(tmp_path: Path) -> None:
    """Before: a typo (--status Live, --status active) listed nothing, exit 0, as if no adapter had that status."""
    from typer.testing import CliRunner

    from ee_middleware.adapters.records import Status
    from ee_middleware.cli.adapters_cmds import StatusChoice
    from ee_middleware.cli.app import app

    assert [s.value for s in StatusChoice] == [s.value for s in Status]
    LocalAdapterRegistry(tmp_path / "reg").register(write_adapter(tmp_path / "a"), "bot")
    runner = CliRunner()
    typo = runner.invoke(app, ["adapters", "list", "-r", str(tmp_path / "reg"), "--status", "active", "--json"])
    assert typo.exit_code == 2 and json_failure(typo) and "'active' is not one of" in typo.stderr
    listed = runner.invoke(app, ["adapters", "list", "-r", str(tmp_path / "reg"), "--status", "candidate", "--json"])
    assert [r["status"] for r in json.loads(listed.stdout)] == ["candidate"]


def _promote_and_crash_before_the_index_write(reg: LocalAdapterRegistry, name: str) -> None:
    """A child process promotes ``name``: it appends the history event, then dies before writing the index (os._exit in
    the writer)."""
    code = f"""
import os
from ee_middleware.adapters.registry import LocalAdapterRegistry
reg = LocalAdapterRegistry({str(reg.root)!r})
reg._write_index = lambda index: os._exit(9)
reg.switch_live({name!r})
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 9, result.stderr


def test_a_crash_between_the_history_line_and_the_index_write_reads_back_as_not_applied(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    a = reg.register(write_adapter(tmp_path / "a"), "bot")
    _promote_and_crash_before_the_index_write(reg, a.name)
    assert reg.resolve("bot") is None and reg.get(a.name).status == "candidate"
    last = reg.history()[-1]
    assert (last["action"], last["applied"]) == ("promote", False)
    reg.switch_live(a.name)
    assert reg.resolve("bot") == a.name and reg.history()[-1]["applied"] is True
    # the promote that took the crashed one's seq does not make that one read as applied
    assert [e["applied"] for e in reg.history() if e["action"] == "promote"] == [False, True]


def test_a_promote_cut_off_by_a_crash_is_not_named_as_once_served_when_a_rollback_is_refused(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    a = reg.register(write_adapter(tmp_path / "a"), "bot")
    b = reg.register(write_adapter(tmp_path / "b", seed=1), "bot")
    reg.switch_live(a.name)
    _promote_and_crash_before_the_index_write(reg, b.name)
    reg.retire(b.name, reason="not needed")  # takes the crashed promote's seq
    with pytest.raises(InvalidTransitionError) as refused:
        reg.rollback_target("bot")
    assert f"nothing was promoted before {a.name}" in str(refused.value) and b.name not in str(refused.value)


def test_a_half_written_history_line_is_skipped_with_a_warning_and_the_next_one_starts_on_its_own_line(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    a = reg.register(write_adapter(tmp_path / "a"), "bot")
    with open(reg.root / "history.jsonl", "a") as fh:
        fh.write('{"seq": 2, "act')
    reg.switch_live(a.name)
    with pytest.warns(StoreCorruptionWarning, match="damaged history line"):
        events = reg.history()
    assert [e["action"] for e in events] == ["register", "promote"]


def test_a_damaged_index_is_reported_not_overwritten(tmp_path: Path) -> None:
    reg = LocalAdapterRegistry(tmp_path / "reg")
    reg.root.mkdir()  # the registry makes its folder on its first write
    (reg.root / "index.json").write_text("{garbage")
    with pytest.raises(RegistryCorruptionError, match="restore it from a backup"):
        reg.list()
    with pytest.raises(RegistryCorruptionError):
        reg.register(write_adapter(tmp_path / "a"), "bot")
    assert (reg.root / "index.json").read_text() == "{garbage"


def _drop_record(index: dict, live: str) -> None:
    del index["adapters"][live]


def _dangling_previous(index: dict, live: str) -> None:
    index["apps"]["bot"]["previous"].append("bot-v9-deadbeef")


def _record_without_rank(index: dict, live: str) -> None:
    del index["adapters"][live]["rank"]


def _status_typo(index: dict, live: str) -> None:
    index["adapters"][live]["status"] = "LIVE"


def _no_tables(index: dict, live: str) -> None:
    index.pop("adapters")


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (_drop_record, "which has no record under 'adapters'"),
        (_dangling_previous, "apps.bot refers to 'bot-v9-deadbeef'"),
        (_record_without_rank, "lacks rank"),
        (_status_typo, "status 'LIVE'"),
        (_no_tables, "an 'adapters' object"),
    ],
)
def test_an_index_edited_by_hand_into_an_unusable_shape_names_the_entry_and_is_left_alone(tmp_path: Path, edit, named: str) -> None:
    """Before: `ee adapters rollback` and `list` died with "unexpected KeyError/TypeError" (a bug report request)."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    reg = LocalAdapterRegistry(tmp_path / "reg")
    names = [reg.register(write_adapter(tmp_path / f"a{i}", seed=i), "bot").name for i in range(2)]
    for name in names:
        reg.switch_live(name)
    index = json.loads((reg.root / "index.json").read_text())
    edit(index, names[1])
    text = json.dumps(index)
    (reg.root / "index.json").write_text(text)
    for call in (reg.list, lambda: reg.resolve("bot"), lambda: reg.rollback_target("bot"), lambda: reg.retire(names[0])):
        with pytest.raises(RegistryCorruptionError, match=named):
            call()
    for args in (["list"], ["rollback", "bot", "--server", "http://127.0.0.1:9/v1"]):
        result = CliRunner().invoke(app, ["adapters", *args, "-r", str(reg.root), "--json"])
        assert result.exit_code == 1 and json_failure(result)
        assert "unexpected" not in result.stderr and named in result.stderr and "edited or damaged" in result.stderr, result.stderr
    assert (reg.root / "index.json").read_text() == text


def test_concurrent_registrations_from_processes_get_distinct_versions(tmp_path: Path) -> None:
    folders = [write_adapter(tmp_path / f"a{i}", seed=i) for i in range(4)]
    LocalAdapterRegistry(tmp_path / "reg")
    code = "import sys; from ee_middleware.adapters.registry import LocalAdapterRegistry as R; R(sys.argv[1]).register(sys.argv[2], 'bot')"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "reg"), str(f)], env=os.environ.copy()) for f in folders]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert sorted(r.version for r in open_registry(tmp_path / "reg").list()) == [1, 2, 3, 4]


def test_resolving_an_alias_reads_the_index_again_only_when_it_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The router resolves per request; the index holds every record with its manifest (losses included), so a
    year of nightly adapters took ~0.5 s per request to parse. Every change is still seen at the next request."""
    router_view = LocalAdapterRegistry(tmp_path / "reg")
    writer = LocalAdapterRegistry(tmp_path / "reg")  # another process: the CLI's promote
    first, second = (writer.register(write_adapter(tmp_path / f"a{i}", seed=i), "bot").name for i in range(2))
    writer.switch_live(first)
    reads = []
    original = LocalAdapterRegistry._read_index
    monkeypatch.setattr(LocalAdapterRegistry, "_read_index", lambda self: reads.append(1) or original(self))
    assert [router_view.resolve("bot") for _ in range(50)] == [first] * 50
    assert len(reads) == 1
    router_view.apps()["bot"]["live"] = "mutated by a caller"
    assert router_view.resolve("bot") == first, "callers get a copy of the apps table"
    writer.switch_live(second)
    assert router_view.resolve("bot") == second and len(reads) == 3  # the writer's own read, then the router's
    index = router_view.root / "index.json"
    stamp = index.stat()
    edited = json.loads(index.read_text())  # a hand edit in place, of the same length: first live again
    edited["apps"]["bot"].update(live=first, previous=[second])
    edited["adapters"][first]["status"], edited["adapters"][second]["status"] = "live", "retired"
    text = json.dumps(edited, ensure_ascii=False, indent=1, sort_keys=True)
    assert len(text.encode()) == stamp.st_size
    with open(index, "r+") as fh:
        fh.write(text)
    os.utime(index, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert router_view.resolve("bot") == first


def test_list_keeps_every_adapter_name_whole_at_80_columns(tmp_path: Path) -> None:
    """The name is what show, promote and rollback take; at 80 columns eight bordered columns cut it to 'booking…'
    and folded short values into pieces. Now the name and short values stay whole and the long ones fold."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    reg = LocalAdapterRegistry(tmp_path / "reg")
    names = [reg.register(write_adapter(tmp_path / n, seed=i), "booking-assistant").name for i, n in enumerate("ab")]
    result = CliRunner().invoke(app, ["adapters", "list", "-r", str(tmp_path / "reg")], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in names:
        assert any(line.strip().startswith(name + " ") for line in lines), (name, result.output)
    assert "app booking-assistant" in " ".join(result.output.split()), "what all share is said once, in the title"
    assert "candidate" in result.output and "…" not in result.output


def test_an_evaluation_holding_nan_is_written_as_null(tmp_path: Path) -> None:
    # The gate's likelihood with one held-out state has se = NaN; promote records the gate's result in the registry,
    # and index.json and history.jsonl held 'NaN' (not JSON: a strict parser refuses the registry's index).
    reg = LocalAdapterRegistry(tmp_path / "reg")
    record = reg.register(write_adapter(tmp_path / "a"), "support-bot")
    reg.add_eval(record.name, {"passed": True, "likelihood": {"diff": -0.1, "se": float("nan")}})

    def strict(text: str) -> object:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))

    index = strict((reg.root / "index.json").read_text())
    assert isinstance(index, dict)
    for line in (reg.root / "history.jsonl").read_text().splitlines():
        strict(line)
    assert LocalAdapterRegistry(tmp_path / "reg").get(record.name).name == record.name


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_weights_that_are_not_finite_are_refused_at_registration_and_before_a_promote(tmp_path: Path, dtype: str, value: float) -> None:
    """Sweep S: an adapter whose weights were NaN (a diverged training run) was registered and promoted; served, it
    answered greedy requests with nothing and every sampled request with a 502 until someone rolled back."""
    import torch
    from safetensors.torch import save_file as save_torch

    torch_dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    folder = write_adapter(tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    good = torch.randn(8, 4, dtype=torch_dtype)
    save_torch({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": good}, str(weights))
    reg = LocalAdapterRegistry(tmp_path / "reg")
    record = reg.register(folder, "bot")  # finite weights of each dtype: registered
    bad = good.clone()
    bad[5, 3] = value
    save_torch({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": bad}, str(weights))
    with pytest.raises(
        AdapterFilesError,
        match=r"not finite numbers \(NaN or infinity\) in 1 of its 1 tensors \(.*q_proj.lora_A.weight\): the training diverged",
    ):
        reg.register(folder, "bot")
    assert [r.name for r in reg.list()] == [record.name]
    save_torch({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": bad}, str(Path(record.path) / "adapter_model.safetensors"))
    with pytest.raises(AdapterFilesError, match=r"is damaged: .*not finite numbers"):  # the registry's copy, edited since
        check_registered_files(record, str(tmp_path / "reg"))


def test_weights_of_modules_the_config_does_not_target_are_refused(tmp_path: Path) -> None:
    """Sweep S: an adapter whose config targeted q_proj and a module the model lacks, its weights holding q_proj and
    v_proj, was registered and promoted; peft loaded it without its v_proj weights, silently, so another adapter than
    the one trained answered."""
    from safetensors.numpy import save_file

    folder = write_adapter(tmp_path / "a")
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "zz_proj"]}))
    weights = {
        f"base_model.model.layers.0.self_attn.{m}.lora_{ab}.weight": np.zeros((8, 4), np.float32)
        for m in ("q_proj", "v_proj")
        for ab in "AB"
    }
    save_file(weights, str(folder / "adapter_model.safetensors"))
    reg = LocalAdapterRegistry(tmp_path / "reg")
    with pytest.raises(
        AdapterFilesError,
        match=r"holds LoRA weights for v_proj, which its adapter_config.json does not target \(target_modules: q_proj, zz_proj\)",
    ):
        reg.register(folder, "bot")
    (folder / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["q_proj", "v_proj", "gate_proj"]}))
    assert reg.register(folder, "bot").rank == 8  # a target without weights (a module the model lacks) is no problem


def test_show_says_why_a_promote_was_aborted_and_which_promote_has_no_outcome(tmp_path: Path) -> None:
    """Sweep S: `ee adapters show` listed promote-aborted without the reason history.jsonl records, and a promote killed
    with SIGKILL (a lone promote-started) as if nothing were amiss, though it had left the adapter loaded."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    reg = LocalAdapterRegistry(tmp_path / "reg")
    a = reg.register(write_adapter(tmp_path / "a"), "bot")
    reg.note("promote-started", app="bot", adapter=a.name, replicas=["http://r1/v1"])
    reg.note("promote-aborted", app="bot", adapter=a.name, reason="interrupted (KeyboardInterrupt: SIGTERM) while loading")
    reg.note("promote-started", app="bot", adapter=a.name, replicas=["http://r1/v1", "http://r2/v1"])  # then killed
    text = " ".join(CliRunner().invoke(app, ["adapters", "show", a.name, "-r", str(tmp_path / "reg")]).output.split())
    assert "reason: interrupted (KeyboardInterrupt: SIGTERM) while loading" in text
    assert text.count("no outcome recorded") == 1, text  # the first promote-started was ended by its promote-aborted
    assert "left the adapter loaded on http://r1/v1, http://r2/v1" in text


def test_a_registry_that_lost_its_index_is_not_started_over(tmp_path: Path) -> None:
    """index.json deleted (or left out of a copy) beside the registry's history and adapter copies: the next register
    started a new registry there, numbering versions from 1 again (the same weights were 'bot-v2-...', now 'bot-v1-...'),
    the old records orphaned and the history mixing both (a serving sweep). It is refused as the damage it is."""
    reg = LocalAdapterRegistry(tmp_path / "reg")
    reg.register(write_adapter(tmp_path / "a", seed=1), "bot")
    second = reg.register(write_adapter(tmp_path / "b", seed=2), "bot")
    (tmp_path / "reg" / "index.json").unlink()
    again = LocalAdapterRegistry(tmp_path / "reg")
    for act in (lambda: again.register(tmp_path / "b", "bot"), lambda: again.list()):
        with pytest.raises(RegistryCorruptionError, match=r"has no index.json, but holds a history of 2 actions .* 2 adapter copies"):
            act()
    assert not (tmp_path / "reg" / "index.json").exists() and second.name.startswith("bot-v2-")
    with pytest.raises(RegistryCorruptionError, match=r"Restore index\.json from a backup"):
        open_registry(str(tmp_path / "reg"), create=False).list()


def test_a_registry_that_lost_its_index_after_one_register_is_not_started_over(tmp_path: Path) -> None:
    """The index is written before the first history line (a new registry's empty one), so one action and no index is
    a lost index too (a review: it was taken for a first register cut by a crash, and started over at v1)."""
    LocalAdapterRegistry(tmp_path / "reg").register(write_adapter(tmp_path / "a", seed=1), "bot")
    (tmp_path / "reg" / "index.json").unlink()
    with pytest.raises(RegistryCorruptionError, match=r"holds a history of 1 action \(history.jsonl\) and 1 adapter copy"):
        LocalAdapterRegistry(tmp_path / "reg").register(write_adapter(tmp_path / "b", seed=2), "bot")


def test_a_history_event_holding_a_line_separator_reads_back_whole(tmp_path: Path) -> None:
    """A server's refusal kept as the reason of a failed adapter may hold U+2028 (written unescaped, as JSON Lines
    allow). Was: ``str.splitlines`` cut its line in two, both halves skipped as damaged, the event lost."""
    import warnings

    reg = LocalAdapterRegistry(tmp_path / "reg")
    record = reg.register(write_adapter(tmp_path / "a"), "bot")
    reg.mark_failed(record.name, "the server said:\u2028load failed\x85twice")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreCorruptionWarning)
        events = reg.history(adapter=record.name)
    assert [e["action"] for e in events] == ["register", "fail"]
    assert events[-1]["reason"] == "the server said:\u2028load failed\x85twice"


def test_show_gives_each_training_stages_loss_to_four_decimals(tmp_path: Path) -> None:
    """`ee adapters show` printed 'final loss 7.641341209411621', the last IL batch's alone."""
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    stages = [
        {"name": "iwm", "steps": 2, "first_loss": 7.61512345, "final_loss": 7.62934},
        {"name": "il", "steps": 2, "first_loss": 7.6501, "final_loss": 7.641341209411621},
    ]
    manifest = {
        "schedule": {"name": "iwm-then-il"},
        "metrics": {"steps": 4, "first_loss": 7.61512345, "final_loss": 7.641341209411621, "stages": stages},
    }
    reg = LocalAdapterRegistry(tmp_path / "reg")
    record = reg.register(write_adapter(tmp_path / "a", manifest=manifest), "bot")
    text = " ".join(CliRunner().invoke(app, ["adapters", "show", record.name, "-r", str(tmp_path / "reg")]).output.split())
    assert "trained: schedule iwm-then-il, 4 steps, loss iwm 7.6151 -> 7.6293, il 7.6501 -> 7.6413" in text, text
