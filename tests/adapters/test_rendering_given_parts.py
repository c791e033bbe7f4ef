"""An adapter's manifest against a server: the messages' text and the calls' ids as the template is given them.

``ee train`` records in an adapter's ``rendering`` two entries beyond the four parts (tools, tool calls, tool results,
system): ``content`` where each message's text went to the template as a list of one text part (SmolVLM's template shows
no string), ``call_ids`` where each call's id was made into 9 alphanumerics (Mistral's templates refuse other ids).
The check compared only the four parts, so a server giving the template the text or the ids otherwise passed as "same".
Real tokenizers with those templates, the trainer's probe (what ``ee train`` records), the servers' real
:func:`served_template` / :func:`local_served_template` and the derived template ``ee serve vllm`` makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.adapters.serving.rendering import check_rendering, record_server
from ee_middleware.adapters.templates import local_served_template, served_template, training_rendering
from ee_middleware.models.chat_template import probe_template
from tests.models.test_chat_template import CONTENT_PARTS_TEMPLATE, NINE_CHARACTER_IDS_TEMPLATE, _tokenizer

pytest.importorskip("transformers")


def _base(folder: Path, template: str) -> tuple[Path, Any]:
    """A base folder holding a tokenizer with ``template`` (what a server and the trainer read), and that tokenizer."""
    tokenizer = _tokenizer(template)
    tokenizer.save_pretrained(folder)
    return folder, tokenizer


def _manifest(tokenizer: Any) -> dict[str, Any]:
    """The manifest ``ee train`` writes for this base: ``rendering`` is its probe's ``describe()``."""
    return {"schema_version": 1, "rendering": probe_template(tokenizer).describe()}


def _state(template: Any, base: Path) -> dict[str, Any]:
    return {"base": str(base), "chat_template": template.to_json()}


def test_an_adapter_trained_with_nine_character_ids_is_refused_by_a_server_sending_the_ids_as_they_are(tmp_path: Path) -> None:
    """Trained on a Mistral-rule base (ids made into 9 alphanumerics); `ee serve vllm --chat-template own` gives the
    template the request's ids ('call_85d9d18cd977'), which it refuses: was "same"."""
    base, tokenizer = _base(tmp_path / "mistral-like", NINE_CHARACTER_IDS_TEMPLATE)
    manifest = _manifest(tokenizer)
    assert "call_ids" in manifest["rendering"]

    own = check_rendering("ids-bot", manifest, "http://gpu:8000/v1", _state(served_template(base, None), base), base_model=str(base))
    assert own.differs and [d["part"] for d in own.differences] == ["call_ids"], own
    assert "call_ids: trained with the fallback (9 alphanumerics made from each call's id" in own.message
    assert "served with each call's id as sent" in own.message and "--chat-template" in own.message

    derived = training_rendering(base)  # what `ee serve vllm` serves this base with by default
    assert derived is not None
    served = served_template(base, derived.path)
    assert check_rendering("ids-bot", manifest, "http://gpu:8000/v1", _state(served, base)).status == "same"
    local = local_served_template(base, tokenizer, probe_template(tokenizer), None)  # `ee serve local`, no template file
    assert check_rendering("ids-bot", manifest, "http://127.0.0.1:8000/v1", _state(local, base)).status == "same"


def test_an_adapter_trained_before_text_parts_existed_is_refused_by_a_server_giving_them(tmp_path: Path) -> None:
    """On SmolVLM's template an older trainer rendered every message's text as a string, which the template shows as
    nothing (its manifest has no ``content``): the rows had no task and no target. `ee serve vllm` gives the text as
    parts now, so the adapter would see prompts it never saw: refused, where it was "same". An adapter trained with
    parts is "same" on that server; on one serving the base's own template, to which vLLM gives text as parts too, only
    the tools and calls that template ignores differ."""
    base, tokenizer = _base(tmp_path / "smolvlm-like", CONTENT_PARTS_TEMPLATE)
    manifest = _manifest(tokenizer)
    older = {"schema_version": 1, "rendering": {k: v for k, v in manifest["rendering"].items() if k != "content"}}
    derived = training_rendering(base)
    assert derived is not None
    state = _state(served_template(base, derived.path), base)

    check = check_rendering("vlm-bot", older, "http://gpu:8000/v1", state)
    assert check.differs and [d["part"] for d in check.differences] == ["content"], check
    assert (
        "content: trained with each message's text as a string, as sent, served with the fallback (a list of one text part" in check.message
    )
    assert check_rendering("vlm-bot", manifest, "http://gpu:8000/v1", state).status == "same"
    own = check_rendering("vlm-bot", manifest, "http://gpu:8000/v1", _state(served_template(base, None), base))
    assert [d["part"] for d in own.differences] == ["tools", "tool_calls"], own  # that template ignores them: not content


def _recorded_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, template: Any, base: Path, **renderer: str) -> dict[str, Any]:
    """The state file the server writes, read back: ``record_server`` called as ``ee serve vllm`` calls it (no
    ``renderer``) or as the local server does (``renderer="local"``)."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    path = record_server("http://127.0.0.1:8000/v1", pid=1, base=str(base), served_model_name="b", template=template, **renderer)
    return json.loads(path.read_text())


def test_a_template_file_given_to_vllm_gets_text_parts_as_the_base_template_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ee serve vllm --chat-template FILE`, FILE a copy of SmolVLM's own template: vLLM gives it each message's text as
    parts, as it does the base's template, so an adapter trained with parts is not said to differ in ``content`` (it
    was: "content: ... served with each message's text as a string, as sent"); only the tools and calls differ, as
    against `own`. The local server given the same file renders it itself, with the trainer's functions: its text
    is compared, and an adapter trained before parts existed differs there in ``content``."""
    base, tokenizer = _base(tmp_path / "smolvlm-like", CONTENT_PARTS_TEMPLATE)
    manifest = _manifest(tokenizer)
    assert "content" in manifest["rendering"]
    file = tmp_path / "own.jinja"
    file.write_text(CONTENT_PARTS_TEMPLATE)

    vllm = check_rendering(
        "vlm-bot", manifest, "http://gpu:8000/v1", _recorded_state(monkeypatch, tmp_path, served_template(base, file), base)
    )
    own = check_rendering("vlm-bot", manifest, "http://gpu:8000/v1", _state(served_template(base, None), base))
    assert [d["part"] for d in vllm.differences] == [d["part"] for d in own.differences] == ["tools", "tool_calls"], vllm
    assert "content:" not in vllm.message and "as a string, as sent" not in vllm.message, vllm.message

    local = local_served_template(base, tokenizer, probe_template(tokenizer), file)
    state = _recorded_state(monkeypatch, tmp_path, local, base, renderer="local")
    assert check_rendering("vlm-bot", manifest, "http://127.0.0.1:8000/v1", state).status == "same"
    older = {"schema_version": 1, "rendering": {k: v for k, v in manifest["rendering"].items() if k != "content"}}
    check = check_rendering("vlm-bot", older, "http://127.0.0.1:8000/v1", state)
    assert [d["part"] for d in check.differences] == ["content"], check
