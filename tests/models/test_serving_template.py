"""Serving an adapter with the rendering it was trained on: ``serving_template`` (a Jinja preamble applying the trainer's
fallbacks, then the model's own template) must render every request exactly as ``render_prompt`` renders it, for the
chat templates of real model families (tests/models/family_templates.py), as vLLM hands requests to the template:
tool-call arguments decoded to objects, assistant content ``None`` beside calls, tool schemas with null fields added."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from ee_middleware.errors import ChatTemplateError
from ee_middleware.models.chat_template import TemplateSupport, probe_template, render_prompt, serving_template

pytest.importorskip("transformers")

from ee_middleware.testing.tiny_models import build_test_tokenizer

from .family_templates import FAMILIES
from .test_family_templates import ROWS, STATE, TOOLS, call

CONVERSATIONS = {
    "state": STATE,
    "sr_target": [*ROWS["sr"][0], *ROWS["sr"][1]],
    "iwm_question": ROWS["iwm"][0],
    "no_system": STATE[1:],
    "two_systems_and_text_parts": [
        {"role": "system", "content": "First rule."},
        {"role": "system", "content": [{"type": "text", "text": "Second rule."}]},
        {"role": "user", "content": [{"type": "text", "text": "Do we have pears?"}]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call("c1", "check_stock", fruit="pears")]},
        {"role": "tool", "tool_call_id": "c1", "content": "3 pears"},
        {"role": "assistant", "content": "Yes, 3 pears."},
        {"role": "user", "content": "Thanks; and plums?"},
    ],
    "several_text_parts": [  # a UI's text part and a pasted one; an Anthropic reply's text around its call
        {"role": "user", "content": [{"type": "text", "text": "Do we have pears?"}, {"type": "text", "text": "Be brief."}]},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Checking."}, {"type": "text", "text": "One moment."}],
            "tool_calls": [call("c1", "check_stock", fruit="pears")],
        },
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "3 pears"}, {"type": "text", "text": "2 ripe"}]},
    ],
    "empty_tool_result": [
        STATE[1],
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "list_fruits")]},
        {"role": "tool", "tool_call_id": "c1", "content": ""},
    ],
}


def as_vllm_sends(messages: list[dict[str, Any]], *, parts_as_text: bool) -> list[dict[str, Any]]:
    """What vLLM hands a chat template: arguments decoded from their JSON text, no content beside calls as None, and
    content parts joined into text for a template that reads content as a string (vLLM's "string" content format)."""
    out = copy.deepcopy(messages)
    for message in out:
        for item in message.get("tool_calls") or []:
            item["function"]["arguments"] = json.loads(item["function"]["arguments"] or "{}")
        if message.get("tool_calls") and not message.get("content"):
            message["content"] = None
        if parts_as_text and isinstance(message.get("content"), list):
            message["content"] = "\n".join(part["text"] for part in message["content"])
    return out


def vllm_tools(tools: list[dict[str, Any]], *, nulls: bool) -> list[dict[str, Any]]:
    """The tool list as vLLM dumps its request model; ``nulls``: with the optional fields older versions add as null
    (vLLM 0.32 leaves ``strict`` out when unset), which the derived template leaves out as the trainer's rows do."""
    return [{**tool, "function": {**tool["function"], "strict": None}} for tool in tools] if nulls else tools


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> tuple[str, Any, TemplateSupport]:
    corpus = [FAMILIES[request.param], json.dumps(TOOLS), json.dumps(CONVERSATIONS)] * 2
    tokenizer = build_test_tokenizer(corpus, chat_template=FAMILIES[request.param], vocab_size=600)
    return request.param, tokenizer, probe_template(tokenizer)


@pytest.mark.parametrize("with_tools", [True, False], ids=["tools", "no_tools"])
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_the_serving_template_renders_requests_as_the_trainer_does(
    family: tuple[str, Any, TemplateSupport], conversation: str, with_tools: bool
) -> None:
    name, tokenizer, support = family
    # None: the family's own template needs no fallback, and serving it as it is must give the trainer's prompts
    template = serving_template(tokenizer.chat_template, support) or tokenizer.chat_template
    messages = CONVERSATIONS[conversation]
    try:
        expected = render_prompt(tokenizer, messages, TOOLS if with_tools else None, support)
    except ChatTemplateError as exc:  # a conversation the template refuses even after the fallbacks (strict alternation)
        pytest.skip(f"{name} refuses {conversation}: {exc}")
    derived = template is not tokenizer.chat_template
    served = tokenizer.apply_chat_template(
        as_vllm_sends(messages, parts_as_text=not derived),
        tools=vllm_tools(TOOLS, nulls=derived) if with_tools else None,
        chat_template=template,
        add_generation_prompt=True,
        tokenize=False,
    )
    assert served == expected


def test_templates_without_limits_are_served_as_they_are() -> None:
    support = TemplateSupport(tools=True, tool_calls=True, tool_role=True, system_role=True)
    assert serving_template("{{ messages }}", support) is None


def test_the_preamble_says_what_it_does_and_how_to_serve_it() -> None:
    tokenizer = build_test_tokenizer([FAMILIES["llama-3-2"], json.dumps(TOOLS)], chat_template=FAMILIES["llama-3-2"])
    template = serving_template(tokenizer.chat_template, probe_template(tokenizer))
    assert template is not None and template.endswith(FAMILIES["llama-3-2"])
    assert "--tool-call-parser hermes" in template and "<tool_call> text" in template


def _base_folder(tmp_path: Any, family: str) -> Any:
    """A base model folder as ``ee serve vllm --base`` reads it: here only its tokenizer, with the family's template."""
    folder = tmp_path / family
    build_test_tokenizer([FAMILIES[family], json.dumps(TOOLS)], chat_template=FAMILIES[family]).save_pretrained(folder)
    return folder


def _serve_vllm(*args: str) -> Any:
    from typer.testing import CliRunner

    from ee_middleware.cli.app import app

    return CliRunner().invoke(app, ["serve", "vllm", *args, "--print-command", "--max-lora-rank", "8"])


def test_ee_serve_vllm_serves_a_base_with_the_rendering_its_adapters_were_trained_on(tmp_path: Any, monkeypatch: Any) -> None:
    """Given no --chat-template, a base whose own template drops what the trainer renders (Llama 3.x: the text beside a
    call, parallel calls) is served with the derived template, so vLLM shows an adapter the prompts of its training rows
    and parses the <tool_call> text it learned (hermes). Before, vLLM used the model's own template: other prompts, and
    answers in a format its Llama parser does not read."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    result = _serve_vllm("--base", str(_base_folder(tmp_path, "llama-3-2")))
    assert result.exit_code == 0, result.output
    [written] = (tmp_path / "cache" / "chat-templates").glob("llama-3-2-*.jinja")
    assert f"--chat-template {written} --enable-auto-tool-choice --tool-call-parser hermes" in result.stdout
    assert "needs the trainer's fallbacks" in result.stderr and "<tool_call> text" in result.stderr
    assert written.read_text().endswith(FAMILIES["llama-3-2"])

    again = _serve_vllm("--base", str(_base_folder(tmp_path, "llama-3-2")))
    assert str(written) in again.stdout  # named by its content: the same file
    assert "--chat-template" not in _serve_vllm("--base", str(_base_folder(tmp_path, "llama-3-2")), "--chat-template", "own").stdout
    parser_warning = _serve_vllm("--base", str(_base_folder(tmp_path, "llama-3-2")), "--tool-call-parser", "llama3_json")
    assert "need --tool-call-parser hermes" in parser_warning.stderr


def test_ee_serve_vllm_keeps_a_template_that_needs_no_fallback_and_a_model_id(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    result = _serve_vllm("--base", str(_base_folder(tmp_path, "qwen-2-5")))
    assert result.exit_code == 0, result.output
    assert "--chat-template" not in result.stdout and not (tmp_path / "cache").exists()
    assert "--chat-template" not in _serve_vllm("--base", "org/some-model-id").stdout


def test_ee_serve_vllm_without_transformers_serves_the_base_template_and_says_so(tmp_path: Any, monkeypatch: Any) -> None:
    """vLLM runs in its own environment; the one running ``ee`` may lack transformers (no [serve] extra): the check is
    skipped with a note instead of failing the command."""
    import sys

    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    folder = _base_folder(tmp_path, "llama-3-2")
    monkeypatch.setitem(sys.modules, "transformers", None)  # what `import transformers` finds: not installed
    result = _serve_vllm("--base", str(folder))
    assert result.exit_code == 0, result.output
    assert "--chat-template" not in result.stdout and "ee-middleware[serve]" in result.stderr
    assert not (tmp_path / "cache").exists()


def test_ee_serve_vllm_on_a_folder_it_cannot_read_a_tokenizer_from_serves_as_it_is(tmp_path: Any, monkeypatch: Any) -> None:
    """A folder without tokenizer files (vLLM's business) or with a broken one: no derived template, no failure."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "--chat-template" not in _serve_vllm("--base", str(empty)).stdout
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer_config.json").write_text("{not json")
    result = _serve_vllm("--base", str(broken))
    assert result.exit_code == 0, result.output
    assert "--chat-template" not in result.stdout and "Not checked whether the chat template" in result.stderr


def test_ee_serve_vllm_judges_the_template_it_serves_not_the_one_a_file_replaces(tmp_path: Any, monkeypatch: Any) -> None:
    """A base whose own template is ShareGPT-keyed (it shows no message text) was refused even with a role/content
    template given to serve it (--chat-template chatml.jinja: exit 1, an error about training). It is served with the
    file, noting that it was not compared with the trainer; without --chat-template the refusal names the base's template
    and the fix, and a file that shows no text is refused by its name."""
    from .test_chat_template import SHAREGPT_TEMPLATE, SMOLLM2_TEMPLATE

    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    sharegpt = tmp_path / "sharegpt-base"
    build_test_tokenizer([SHAREGPT_TEMPLATE, json.dumps(TOOLS)], chat_template=SHAREGPT_TEMPLATE).save_pretrained(sharegpt)
    chatml = tmp_path / "chatml.jinja"
    chatml.write_text(SMOLLM2_TEMPLATE)
    served = _serve_vllm("--base", str(sharegpt), "--chat-template", str(chatml))
    assert served.exit_code == 0, served.output
    assert f"--chat-template {chatml}" in served.stdout and "`ee train` refuses this base" in served.stderr

    refused = _serve_vllm("--base", str(sharegpt))
    assert refused.exit_code == 1
    message = " ".join(refused.output.split())
    assert f"The chat template of {sharegpt} renders no text of a user and an assistant message" in message
    assert "vLLM would render every request without its messages" in message and "--chat-template FILE" in message

    shows_nothing = tmp_path / "sharegpt.jinja"
    shows_nothing.write_text(SHAREGPT_TEMPLATE)
    named = _serve_vllm("--base", str(_base_folder(tmp_path, "qwen-2-5")), "--chat-template", str(shows_nothing))
    assert named.exit_code == 1
    assert f"The chat template {shows_nothing} renders no text" in " ".join(named.output.split())


# --- which rendering a server's template gives, and adapters given at start ------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_served_template_says_what_each_template_choice_renders_like(family: str, tmp_path: Any, monkeypatch: Any) -> None:
    """The derived template renders like the trainer (the base's fallbacks), the base's own file like the template as it
    is, and a template made for another family like neither (so nothing claims it matches)."""
    from ee_middleware.adapters.templates import AS_IS, served_template, template_path, training_rendering

    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    folder = _base_folder(tmp_path, family)
    trainer = probe_template(build_test_tokenizer([FAMILIES[family]], chat_template=FAMILIES[family])).describe()
    derived = training_rendering(folder)
    if derived is not None:
        served = served_template(folder, derived.path)
        assert (served.kind, served.rendering, served.as_trainer) == ("derived", trainer, True)
    own_file = tmp_path / "own.jinja"
    own_file.write_text(FAMILIES[family])
    assert served_template(folder, own_file).rendering == AS_IS
    assert served_template(folder, None).rendering == AS_IS
    other = served_template(folder, template_path("smollm2-tools"))
    assert other.rendering is None and "unlike both" in (other.note or "")


def _adapter_folder(tmp_path: Any, name: str, rendering: dict[str, str] | None) -> Any:
    folder = tmp_path / name
    folder.mkdir()
    if rendering is not None:
        (folder / "manifest.json").write_text(json.dumps({"rendering": rendering}))
    return folder


def test_ee_serve_vllm_refuses_an_adapter_given_at_start_that_was_trained_on_other_prompts(tmp_path: Any, monkeypatch: Any) -> None:
    """Llama 3.2's derived template writes calls as <tool_call> text; an adapter trained before that fallback (calls by the
    template) is refused at start, naming it, the part and the fix, unless --ignore-rendering. One trained with today's
    rendering starts; one without a recorded rendering gets a note. Before, vLLM started and served it silently."""
    monkeypatch.setenv("EE_CACHE_DIR", str(tmp_path / "cache"))
    base = str(_base_folder(tmp_path, "llama-3-2"))
    tokenizer = build_test_tokenizer([FAMILIES["llama-3-2"]], chat_template=FAMILIES["llama-3-2"])
    today = probe_template(tokenizer).describe()
    old = _adapter_folder(tmp_path, "old", {"tools": "chat template", "tool_calls": "chat template"})
    new = _adapter_folder(tmp_path, "new", today)
    bare = _adapter_folder(tmp_path, "bare", None)

    refused = _serve_vllm("--base", base, "--vllm-arg", "--lora-modules", "--vllm-arg", f"old-one={old}", "--vllm-arg", f"new-one={new}")
    assert refused.exit_code == 1
    assert "old-one would see prompts unlike its training rows" in refused.output and "new-one" not in refused.output
    assert "tool_calls: trained with the chat template" in refused.output and "train it again" in refused.output
    forced = _serve_vllm("--base", base, "--vllm-arg", f"--lora-modules=old-one={old}", "--ignore-rendering")
    assert forced.exit_code == 0 and "ignored: old-one would see prompts" in forced.stderr

    fine = _serve_vllm("--base", base, "--vllm-arg", "--lora-modules", "--vllm-arg", json.dumps({"name": "new-one", "path": str(new)}))
    assert fine.exit_code == 0, fine.output
    noted = _serve_vllm("--base", base, "--vllm-arg", "--lora-modules", "--vllm-arg", f"bare-one={bare}")
    assert noted.exit_code == 0 and "bare-one's manifest records no rendering" in noted.stderr

    own = _serve_vllm("--base", base, "--chat-template", "own", "--vllm-arg", "--lora-modules", "--vllm-arg", f"new-one={new}")
    assert own.exit_code == 1 and "without --chat-template" in own.output  # the fix: serve the derived template


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
def test_stored_tool_schemas_with_null_fields_train_as_they_are_served(family: tuple[str, Any, TemplateSupport], conversation: str) -> None:
    """Capture stores a tool's unset fields as nulls (``"strict": null``); the trainer wrote them into the prompt it
    trained on while the serving template leaves them out (``ee_json_without_nulls``), so the adapter met at serving
    other tool listings than it was trained on. Both leave them out now."""
    name, tokenizer, support = family
    template = serving_template(tokenizer.chat_template, support) or tokenizer.chat_template
    stored = vllm_tools(TOOLS, nulls=True)
    messages = CONVERSATIONS[conversation]
    try:
        expected = render_prompt(tokenizer, messages, stored, support)
    except ChatTemplateError as exc:
        pytest.skip(f"{name} refuses {conversation}: {exc}")
    derived = template is not tokenizer.chat_template
    served = tokenizer.apply_chat_template(
        as_vllm_sends(messages, parts_as_text=not derived), tools=stored, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    assert served == expected
