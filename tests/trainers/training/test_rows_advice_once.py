"""The rebuild advice of a broken dataset row reads the build's datasets.json: only for the row that is wrong, never for
every row read (it cost 91 µs a row, six times the row's own parsing, on every ``ee train`` and ``ee datasets show``)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.trainers.training import data
from ee_middleware.trainers.training.errors import TrainDataError


def _frame(prompts: list[str]) -> pl.DataFrame:
    completion = json.dumps([{"role": "assistant", "content": "ok"}])
    n = len(prompts)
    return pl.DataFrame({"id": [f"r{i}" for i in range(n)], "prompt": prompts, "completion": [completion] * n, "tools": ["[]"] * n})


@pytest.fixture
def advice_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = data._rebuild_hint

    def counted(path: Path, kind: str) -> str:
        calls.append(path)
        return real(path, kind)

    monkeypatch.setattr(data, "_rebuild_hint", counted)
    return calls


def test_good_rows_are_read_without_the_advice(tmp_path, advice_calls):
    prompt = json.dumps([{"role": "user", "content": "hi"}])
    rows = data.rows_from_frame(_frame([prompt] * 200), tmp_path / "il.parquet", "il")
    assert len(rows) == 200 and advice_calls == []


def test_a_bad_row_gets_the_advice_once_with_its_position(tmp_path, advice_calls):
    prompt = json.dumps([{"role": "user", "content": "hi"}])
    with pytest.raises(TrainDataError) as caught:
        data.rows_from_frame(_frame([prompt] * 5 + ["not json"] + [prompt] * 5), tmp_path / "il.parquet", "il")
    message = str(caught.value)
    assert "il.parquet row 5 (id 'r5'): prompt is not valid JSON" in message and "ee datasets build" in message
    assert advice_calls == [tmp_path / "il.parquet"]
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_rows_are_checked_without_being_kept_with_the_same_error(tmp_path, advice_calls):
    prompt = json.dumps([{"role": "user", "content": "hi"}])
    assert data.check_rows(_frame([prompt] * 50), tmp_path / "il.parquet", "il") == 50 and advice_calls == []
    bad = _frame([prompt] * 3 + [json.dumps([{"content": "no role"}])])
    with pytest.raises(TrainDataError) as kept:
        data.rows_from_frame(bad, tmp_path / "il.parquet", "il")
    with pytest.raises(TrainDataError) as checked:
        data.check_rows(bad, tmp_path / "il.parquet", "il")
    assert str(checked.value) == str(kept.value) and "row 3" in str(checked.value)


def test_the_build_folder_of_a_held_out_file_given_as_dot_is_the_builds_own(tmp_path, monkeypatch):
    """``ee datasets show .`` run inside OUT/heldout/: the rebuild writes OUT, not a training build into heldout/."""
    from ee_middleware.trainers.training.errors import build_folder

    held_out = tmp_path / "data" / "heldout"
    held_out.mkdir(parents=True)
    monkeypatch.chdir(held_out)
    assert build_folder("il", ".") == tmp_path / "data"
    assert build_folder("il", held_out) == tmp_path / "data"
