"""``ee improve``'s start-up base check never asks to run, nor runs, a base's custom code (``auto_map`` in config.json).

It measured a tokenizer that reaches past ``vocab_size`` against the table built from the config by transformers'
Auto classes, which, for custom code of an architecture transformers does not know, asked "Do you wish to run the custom
code? [y/N]" on the terminal and imported the folder's Python on "y"; with no terminal (or "n") the base went on
unrefused. Such a base is now judged by ``vocab_size`` from its files, as before the table was measured.

A tiny base folder written here, whose custom code leaves a marker file when it is imported; the real ``check_base``
and ``check_target_modules``, in this process (stdin closed) and in a child process whose stdin answers "y"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ee_middleware.trainers.training import BaseModelError
from ee_middleware.trainers.training.model import check_base, check_target_modules, resolve_base

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[3]
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _custom_base(folder: Path, *, model_type: str = "my_custom_arch", vocab_size: int = 10, tokens: int = 20) -> Path:
    """A base whose config.json names custom code (``auto_map``) that writes ``folder/custom_code_ran`` when imported,
    with a fast tokenizer of ``tokens`` ids; the marker's path."""
    folder.mkdir()
    marker = folder / "custom_code_ran"
    config = {
        "model_type": model_type,
        "architectures": ["MyModel"],
        "auto_map": {"AutoConfig": "configuration_my.MyConfig", "AutoModelForCausalLM": "modeling_my.MyModel"},
        "vocab_size": vocab_size,
    }
    (folder / "config.json").write_text(json.dumps(config))
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (folder / "configuration_my.py").write_text(
        code + f"from transformers import PretrainedConfig\n\n\nclass MyConfig(PretrainedConfig):\n    model_type = {model_type!r}\n"
    )
    (folder / "modeling_my.py").write_text(code)
    vocab = {f"t{i}": i for i in range(tokens)}
    (folder / "tokenizer.json").write_text(
        json.dumps({"version": "1.0", "added_tokens": [], "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}})
    )
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE}))
    (folder / "model.safetensors").write_bytes(b"")  # (looked for, not read)
    return marker


def test_a_custom_code_base_past_vocab_size_is_refused_from_its_files_without_running_its_code(tmp_path: Path) -> None:
    base = tmp_path / "custom"
    marker = _custom_base(base)

    with pytest.raises(BaseModelError) as caught:
        check_base(str(base))

    message = str(caught.value)
    assert f"only 10 rows (vocab_size in {base.resolve() / 'config.json'})" in message and "has 20 token ids" in message, message
    assert not marker.exists()


def test_a_custom_code_base_whose_tokenizer_fits_passes_and_its_code_is_not_run(tmp_path: Path) -> None:
    base = tmp_path / "custom"
    marker = _custom_base(base, vocab_size=20)

    assert check_base(str(base)).folder == base.resolve()
    assert not marker.exists()


def test_a_known_model_type_with_custom_code_is_judged_by_vocab_size_not_by_the_built_in_class(tmp_path: Path) -> None:
    """auto_map on a llama config: the built-in Llama class is not the model the folder's code builds."""
    base = tmp_path / "custom"
    marker = _custom_base(base, model_type="llama")

    with pytest.raises(BaseModelError, match=r"only 10 rows \(vocab_size in "):
        check_base(str(base))
    check_target_modules(resolve_base(str(base)), ["not_a_module"])  # not built from the built-in class: left to load time
    assert not marker.exists()


def test_the_check_neither_prompts_nor_runs_custom_code_when_the_terminal_would_answer_yes(tmp_path: Path) -> None:
    """A child process whose stdin answers "y", as a user at the terminal would to transformers' question."""
    base = tmp_path / "custom"
    marker = _custom_base(base)
    script = (
        "import sys\n"
        "from ee_middleware.trainers.training import BaseModelError\n"
        "from ee_middleware.trainers.training.model import check_base, check_target_modules, resolve_base\n"
        "try:\n"
        "    check_base(sys.argv[1])\n"
        "    print('NOT REFUSED')\n"
        "except BaseModelError as exc:\n"
        "    print('REFUSED', exc)\n"
        "check_target_modules(resolve_base(sys.argv[1]), ['q_proj'])\n"
        "print('TARGETS LEFT TO LOAD TIME')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(base)], input="y\ny\n", capture_output=True, text=True, cwd=REPO, timeout=300)

    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert "custom code" not in said and "[y/N]" not in said, said
    assert "REFUSED" in done.stdout and "NOT REFUSED" not in done.stdout and "TARGETS LEFT TO LOAD TIME" in done.stdout, said
    assert not marker.exists()
