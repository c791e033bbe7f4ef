"""Fixtures for the training tests: a tiny random Llama saved as a real base-model folder, a test
tokenizer whose chat template renders tools, and dataset files written like the builders write them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from ee_middleware.testing.tiny_models import TOOL_CHAT_TEMPLATE, build_test_tokenizer, save_tiny_llama  # noqa: E402

# SmolLM2's template: it ignores tools and tool_calls.
PLAIN_CHAT_TEMPLATE = """{% for message in messages %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}"""

FILE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "cd",
            "description": "Change the current folder.",
            "parameters": {"type": "object", "properties": {"folder": {"type": "string"}}, "required": ["folder"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "cat",
            "description": "Show a file.",
            "parameters": {"type": "object", "properties": {"file_name": {"type": "string"}}, "required": ["file_name"]},
        },
    },
]
FOLDERS = ["temp", "docs", "reports", "music", "photos", "src", "notes", "backup"]


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": "c1", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


def state(folder: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You manage files."},
        {"role": "user", "content": f"Go into {folder} and show notes.txt"},
    ]


def il_row(i: int, folder: str) -> dict[str, Any]:
    completion = [{"role": "assistant", "content": "", "tool_calls": [tool_call("cd", folder=folder)]}]
    return _row(f"il-{i}", "il", state(folder), completion, step=0, branch=None)


def iwm_row(i: int, folder: str) -> dict[str, Any]:
    prompt = [*state(folder), {"role": "assistant", "content": "", "tool_calls": [tool_call("cd", folder=folder + "x")]}]
    completion = [{"role": "assistant", "content": f'{{"error": "cd: {folder}x: No such folder"}}'}]
    return _row(f"iwm-{i}", "iwm", prompt, completion, step=0, branch=i % 3)


def sr_row(i: int, folder: str) -> dict[str, Any]:
    completion = [
        {
            "role": "assistant",
            "content": f"Going into {folder} first works; the alternative folder does not exist.",
            "tool_calls": [tool_call("cd", folder=folder)],
        }
    ]
    return _row(f"sr-{i}", "sr", state(folder), completion, step=0, branch=i % 2)


def _row(row_id: str, kind: str, prompt: Any, completion: Any, *, step: int, branch: int | None) -> dict[str, Any]:
    return {
        "id": row_id,
        "kind": kind,
        "prompt": json.dumps(prompt),
        "completion": json.dumps(completion),
        "tools": json.dumps(FILE_TOOLS),
        "trajectory_id": f"traj-{row_id}",
        "step_index": step,
        "branch_index": branch,
        "proposer": None if branch is None else "mutate",
        "source_hash": "abc123",
    }


def write_dataset(folder: Path, kind: str, rows: list[dict[str, Any]]) -> Path:
    """Write rows as the builders do: one Parquet file per dataset kind."""
    import polars as pl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}.parquet"
    schema = {
        "id": pl.String,
        "kind": pl.String,
        "prompt": pl.String,
        "completion": pl.String,
        "tools": pl.String,
        "trajectory_id": pl.String,
        "step_index": pl.Int64,
        "branch_index": pl.Int64,
        "proposer": pl.String,
        "source_hash": pl.String,
    }
    pl.DataFrame(rows, schema=schema).write_parquet(path)
    return path


def write_datasets(folder: Path, *, il: int = 16, iwm: int = 24, sr: int = 8) -> Path:
    write_dataset(folder, "il", [il_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(il)])
    write_dataset(folder, "iwm", [iwm_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(iwm)])
    write_dataset(folder, "sr", [sr_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(sr)])
    return folder


def build_tokenizer(chat_template: str) -> Any:
    """A TEST tokenizer trained on the file-tool vocabulary of these tests."""
    corpus = [TOOL_CHAT_TEMPLATE, json.dumps(FILE_TOOLS), "You manage files. Go into and show notes.txt", *FOLDERS] * 3
    return build_test_tokenizer(corpus, chat_template=chat_template, vocab_size=500)


@pytest.fixture(scope="session")
def tool_tokenizer() -> Any:
    return build_tokenizer(TOOL_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tool_tokenizer: Any) -> Path:
    """A tiny random Llama with the tool-rendering tokenizer, saved like a real base model."""
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama", tool_tokenizer)


@pytest.fixture(scope="session")
def plain_template_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny Llama with a SmolLM2-style template that ignores tools and tool calls."""
    return save_tiny_llama(tmp_path_factory.mktemp("base") / "tiny-llama-plain", build_tokenizer(PLAIN_CHAT_TEMPLATE))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_datasets(tmp_path_factory.mktemp("data"))
