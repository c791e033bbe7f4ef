"""The experience model's dataset (em) from real BFCL transitions, and `ee train --schedule experience-model` on a tiny model."""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.replay.experience_eval import split_store
from ee_middleware.replay.sandboxes.experience import build_prompt, parse_prediction
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.trainers.datasets.em import TEACHER_SHOWN, build_em, copies
from ee_middleware.trainers.training.api import train
from tests.replay.test_experience import ScriptedExperienceModel, _handler
from tests.trainers.training.test_train import config


def test_em_rows_are_serving_prompts_with_real_targets_and_leave_the_held_out_set_out(bfcl_store_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    split = split_store(store, share=0.34, seed=0)
    frame = build_em(store, held_out=0.34, seed=0)
    trajectories = {t.id: t for t in store.iter_trajectories()}
    store.close()
    assert frame.height > 0 and set(frame["kind"]) == {"em"} and frame["id"].n_unique() == frame.height
    assert not set(frame["trajectory_id"]) & split.held_out_ids, "held-out trajectories are never trained on"
    for row in frame.head(5).iter_rows(named=True):
        step = next(s for s in trajectories[row["trajectory_id"]].steps if s.index == row["step_index"])
        target = parse_prediction(json.loads(row["completion"])[0]["content"])
        assert target["observation"] == step.observation.content and target["is_error"] == step.observation.is_error
        assert target["reasoning"] and step.observation.content not in target["reasoning"]
        prompt = json.loads(row["prompt"])
        call = step.action.tool_call
        assert prompt[0] == build_prompt("", "", call.name, call.arguments, [])[0], "the sandbox's own system prompt"
        assert json.dumps({"tool": call.name, "arguments": call.arguments}, ensure_ascii=False) in prompt[-1]["content"]
        held_out_observations = {
            o for t in split.held_out_ids for o in (s.observation.content for s in trajectories[t].steps if s.observation)
        }
        demonstrations = [json.loads(m["content"]) for m in prompt[1:-1] if m["role"] == "assistant"]
        assert len(demonstrations) == 3 and len(prompt) == 2 + 2 * 3, "three retrieved examples, each a call and its real answer"
        assert not any(d["observation"] == o[:400] for d in demonstrations for o in held_out_observations), "never a held-out answer"


def test_a_teacher_that_copies_the_observation_is_replaced_and_flagged(bfcl_store_path: Path) -> None:
    from http.server import ThreadingHTTPServer

    from ee_middleware.testing.http import serving

    def teacher(messages: list[dict[str, Any]]) -> str:
        real = messages[-1]["content"].split("The tool returned: ", 1)[1]
        return f"It returned {real}" if len(real) % 2 else "The folder exists, so the listing succeeds."

    model = ScriptedExperienceModel(teacher)
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))) as url:
        from typer.testing import CliRunner

        from ee_middleware.cli.app import app

        out = bfcl_store_path.parent / "em"
        spec = f"openai:{url}#teacher"
        result = CliRunner().invoke(
            app, ["experience", "dataset", "--store", str(bfcl_store_path), "--out", str(out), "--teacher", spec, "--json"]
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        frame = pl.read_parquet(out / "em.parquet")
        assert summary["rows"] == frame.height == len(model.requests)
        copied = frame.filter(pl.col("quality_flags").str.contains("teacher_copied"))
        assert 0 < copied.height == summary["flagged"] < frame.height
        reasons = [json.loads(json.loads(c)[0]["content"])["reasoning"] for c in frame["completion"]]
        assert "The folder exists, so the listing succeeds." in reasons and not any(r.startswith("It returned") for r in reasons)


def _quoting_teacher(shown: str) -> str:
    """A teacher's reasoning for an observation of which it was shown ``shown``, by the observation (so a row's reasoning
    can be told from its target): it quotes all of it but the last two characters, or all of it re-quoted and reflowed,
    or only names one short value from it."""
    kind = zlib.crc32(shown.encode()) % 3
    if kind == 0:
        return f"It returned {shown[:-2]}"
    if kind == 1:
        return "It returned " + " ".join(shown.replace('"', "'").split())
    value = (re.findall(r"\d+|[A-Za-z_]{3,12}", shown) or ["nothing"])[0]
    return f"The call fits the current state, so the tool reports {value}."


def test_a_teacher_that_quotes_the_observation_nearly_whole_is_replaced_and_flagged(bfcl_store_path: Path) -> None:
    """A model teacher quoting the observation it was shown but for its last two characters (or re-quoted, reflowed)
    went into the targets unflagged (0 of 19 rows in the report's run): only an observation found whole and exact in the
    reasoning counted as copied. One that names a single short value from the observation is still kept."""
    from http.server import ThreadingHTTPServer

    from typer.testing import CliRunner

    from ee_middleware.cli.app import app
    from ee_middleware.testing.http import serving

    model = ScriptedExperienceModel(lambda messages: _quoting_teacher(messages[-1]["content"].split("The tool returned: ", 1)[1]))
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))) as url:
        out = bfcl_store_path.parent / "em"
        result = CliRunner().invoke(
            app, ["experience", "dataset", "--store", str(bfcl_store_path), "--out", str(out), "--teacher", f"openai:{url}#t", "--json"]
        )
    assert result.exit_code == 0, result.output
    quoted = named = 0
    for row in pl.read_parquet(out / "em.parquet").iter_rows(named=True):
        target = json.loads(json.loads(row["completion"])[0]["content"])
        shown = target["observation"][:TEACHER_SHOWN]
        answer = _quoting_teacher(shown)
        if not answer.startswith("It returned"):
            named += 1
            assert row["quality_flags"] == "{}" and target["reasoning"] == answer, "naming one value is no copy"
        elif len(shown) >= 100:
            quoted += 1
            assert json.loads(row["quality_flags"]) == {"teacher_copied": True}, f"not caught: {answer[:120]!r}"
            assert not target["reasoning"].startswith("It returned"), "the template's reasoning replaces it"
    assert quoted >= 5 and named >= 5, (quoted, named)


def test_a_copy_is_a_long_common_run_of_what_the_teacher_was_shown() -> None:
    """What counts as copying an observation: a long run of it (ignoring case, whitespace and quotes), from the part
    the teacher was shown, that is not also in the task or call; a few short values named from it do not."""
    files = [{"name": f"report_{i:03d}.csv", "size": 1000 + 37 * i, "owner": "alex"} for i in range(40)]
    note = "Quota nearly exhausted: 97% of the 50 GB allowance is used by archived exports."
    observation = json.dumps({"current_directory": "/home/alex/documents/quarterly-reports/2024", "files": files, "note": note}, indent=1)
    assert len(observation) > TEACHER_SHOWN
    shown = observation[:TEACHER_SHOWN]
    middle = shown[700:800]
    assert copies(f"It lists {middle.replace(chr(34), chr(39)).upper()} and more.", shown), "a 100-character stretch, re-quoted"
    assert copies("It returned " + " ".join(shown[:-2].split()), shown), "all but the end, reflowed"
    assert not copies("The folder holds report_007.csv (1259 bytes) among 40 files owned by alex.", shown), "a few values"
    assert note not in shown and not copies(f"It warns: {note}", shown), "nor what the teacher never saw"
    path = "/home/alex/documents/quarterly-reports/2024"
    call = json.dumps({"tool": "cd", "arguments": {"folder": path}})
    restating = f"The agent moved into {path}, which the tool confirms as the current directory."
    assert not copies(restating, shown) and not copies(restating, shown, context=f"Go to {path}\n{call}"), "one value named"
    assert copies(restating + f" It returned {middle}", shown, context=call), "but a copy besides it still counts"
    code = "\n".join(f"def handler_{i}(request, context):\n    return process(request, timeout={i})" for i in range(40))
    echo, write = (
        f"Wrote app/handlers.py:\n{code}",
        json.dumps({"tool": "write_file", "arguments": {"path": "app/handlers.py", "content": code}}),
    )
    assert copies(f"It wrote {code[100:400]}", echo) and not copies(f"It wrote {code[100:400]}", echo, context=write), "the call restated"
    short = '{"error": "No such file: a.txt"}'
    assert copies(f"It returned {short[:-2]}", short) and not copies("No such file, so it fails.", short)
    assert not copies('It returned {"status": "ok"}', '{"status": "ok"}'), "an observation this short never counts as copied"


def test_a_reasoning_naming_one_long_value_from_the_observation_is_no_copy() -> None:
    """The teacher is asked what state the call met, and a state is often one long value: the directory an ``ls``
    reports, a commit's 40-character SHA-1, the path a FileNotFoundError names. Each was flagged as copied (any 40
    characters in common counted); one value named, however long, is no copy, while quoting the values around it is."""
    directory = "/home/alex/documents/quarterly-reports/2024/archive"
    listing = json.dumps({"current_working_directory": directory, "files": ["q1.csv", "q2.csv", "q3.csv", "summary.pdf", "notes.txt"]})
    ls = "List the files here.\n" + json.dumps({"tool": "ls", "arguments": {}})
    assert not copies(f"The agent is in {directory}, so ls lists what that folder holds.", listing, context=ls)
    assert copies(f"It returned current_working_directory: {directory}, files: [q1.csv, q2.csv, q3.csv, summary.pdf]", listing, context=ls)

    sha, sha256 = "9fceb02d0ae598e95dc970b74767f19372d61af8", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    log = f"commit {sha}\nAuthor: Alex <alex@example.com>\nDate:   Mon Mar 4 10:00:00 2024\n\n    Fix the parser\n" * 3
    git = "What is the latest commit?\n" + json.dumps({"tool": "git_log", "arguments": {"n": 3}})
    assert not copies(f"The history starts at commit {sha}, so git log lists the three latest commits.", log, context=git)
    assert not copies(f"The archive's digest is {sha256}.", f"sha256: {sha256}  archive.tar.gz\nsize: 1048576", context=git)
    assert copies(f"It shows commit {sha} Author: Alex <alex@example.com> Date: Mon Mar 4 10:00:00 2024", log, context=git)

    missing = "/srv/app/data/exports/2024-03-04/report_final_v2.xlsx"
    error = f"Error: FileNotFoundError: [Errno 2] No such file or directory: '{missing}'"
    export = "Open the latest export.\n" + json.dumps({"tool": "open_latest_export", "arguments": {}})
    assert not copies(f"The newest export, {missing}, was deleted, so opening it fails.", error, context=export)
    assert copies(f"It failed: FileNotFoundError: [Errno 2] No such file or directory: {missing}", error, context=export)


def test_the_experience_model_schedule_trains_on_em_rows_only(bfcl_store_path: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    store = LocalExperienceStore(bfcl_store_path)
    frame = build_em(store, held_out=0.34)
    store.close()
    data = tmp_path / "data"
    data.mkdir()
    frame.write_parquet(data / "em.parquet")
    result = train(
        config(
            tiny_model_dir,
            data,
            tmp_path / "em-adapter",
            schedule="experience-model",
            max_steps=2,
            max_length=1024,
            max_lost_context_share=1.0,
        ),
        progress=False,
    )
    manifest = json.loads((tmp_path / "em-adapter" / "manifest.json").read_text())
    assert [stage["kinds"] for stage in manifest["schedule"]["stages"]] == [["em"]] and set(manifest["datasets"]) == {"em"}
    assert manifest["datasets"]["em"]["rows"] == frame.height and manifest["losses"] and result is not None
