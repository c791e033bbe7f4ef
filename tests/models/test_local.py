"""The local generator on a tiny random Llama (built here, nothing downloaded): sampling, rendering, adapters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ModelLoadError
from ee_middleware.models import ChatClient, LocalGenerator, Sampling, build_chat_client
from ee_middleware.models.chat_template import TOOLS_SUFFIX, probe_template, render_pair
from ee_middleware.models.parsing import ParseProblem

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from ee_middleware.testing.tiny_models import build_test_tokenizer, build_tiny_llama, save_tiny_llama  # noqa: E402

PLAIN_TEMPLATE = """{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
"""A template that ignores tools and tool calls (as SmolLM2's does)."""

CORPUS = [
    "Are apples in stock? check_stock order_item item quantity",
    '<tool_call>{"name": "check_stock", "arguments": {"item": "apple"}}</tool_call>',
    "You may call these tools: system user assistant tool",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "check_stock",
            "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]},
        },
    }
]
STATE = [
    {"role": "user", "content": "Are apples in stock?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "check_stock", "arguments": '{"item": "pear"}'}}],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "0"},
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_test_tokenizer(CORPUS)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """A LoRA adapter with random (not identity) weights, so that it visibly changes the model."""
    base = build_tiny_llama(tokenizer)
    config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(1)
    peft.get_peft_model(base, config).save_pretrained(folder)
    return folder


def test_a_saved_folder_loads_lazily_and_samples_reproducibly(model_dir: Path) -> None:
    generator = LocalGenerator(model_dir, model_name="tiny")
    assert isinstance(generator, ChatClient) and not generator.loaded
    sampling = Sampling(temperature=1.0, top_p=0.95, max_tokens=6, seed=7)
    first = [c.text for c in generator.complete(STATE, tools=TOOLS, n=3, sampling=sampling)]
    assert generator.loaded and len(first) == 3
    assert first == [c.text for c in generator.complete(STATE, tools=TOOLS, n=3, sampling=sampling)], "same seed, same answers"
    assert first != [c.text for c in generator.complete(STATE, tools=TOOLS, n=3, sampling=Sampling(max_tokens=6, seed=8))]
    generator.close()
    assert not generator.loaded
    assert first == [c.text for c in generator.complete(STATE, tools=TOOLS, n=3, sampling=sampling)], "reloads after close"


def test_greedy_gives_one_answer_and_its_tool_calls_are_parsed_from_text(model_dir: Path) -> None:
    generator = LocalGenerator(model_dir)
    [choice] = generator.complete(STATE, n=4, sampling=Sampling(temperature=0, max_tokens=5))
    assert choice.structured is False and choice.raw == choice.text
    assert choice.tool_calls(), "a text answer always parses into calls or a problem"


@pytest.mark.parametrize("template", ["tools", "plain"])
def test_the_prompt_is_the_trainers_prompt_byte_for_byte(tmp_path: Path, tokenizer: Any, template: str) -> None:
    if template == "plain":
        tokenizer = build_test_tokenizer(CORPUS, chat_template=PLAIN_TEMPLATE)
    folder = save_tiny_llama(tmp_path / template, tokenizer)
    generator = LocalGenerator(folder)
    completion = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c2", "type": "function", "function": {"name": "check_stock", "arguments": {"item": "apple"}}}],
        }
    ]
    prompt_text, completion_text, fallback = render_pair(tokenizer, STATE, completion, TOOLS, probe_template(tokenizer))
    assert generator.render(STATE, TOOLS) == prompt_text and not fallback
    assert '"check_stock"' in prompt_text and '"pear"' in prompt_text, "tools and earlier calls reach the model either way"
    assert (TOOLS_SUFFIX in prompt_text) == (template == "plain"), "a template that ignores tools gets them in the system message"
    assert '<tool_call>{"name": "check_stock", "arguments": {"item": "apple"}}</tool_call>' in completion_text


def test_a_long_state_is_cut_from_the_left(tmp_path: Path, tokenizer: Any) -> None:
    folder = save_tiny_llama(tmp_path / "short", tokenizer, max_positions=64)
    generator = LocalGenerator(folder)
    long_state = [{"role": "user", "content": "Are apples in stock? " * 200}]
    ids, new_tokens = generator.prompt_ids(long_state, None, max_new_tokens=16)
    assert new_tokens == 16 and ids.shape[1] == 64 - 16
    assert generator.complete(long_state, sampling=Sampling(max_tokens=16, seed=0))


def test_an_adapter_is_applied_and_changes_the_model(model_dir: Path, adapter_dir: Path) -> None:
    base = LocalGenerator(model_dir)
    adapted = build_chat_client(f"local:{model_dir}@{adapter_dir}")
    assert isinstance(adapted, LocalGenerator) and adapted.describe()["adapter"] == str(adapter_dir)
    ids, _ = base.prompt_ids(STATE, TOOLS, max_new_tokens=4)
    adapted.prompt_ids(STATE, TOOLS, max_new_tokens=4)
    with torch.no_grad():
        base_logits = base._model(ids).logits[0, -1]
        adapted_logits = adapted._model(ids).logits[0, -1]
    assert isinstance(adapted._model, peft.PeftModel)
    assert not torch.allclose(base_logits, adapted_logits), "the adapter's weights take effect"


def test_an_adapter_for_another_base_fails_with_the_paths(tmp_path: Path, tokenizer: Any, adapter_dir: Path) -> None:
    other = build_test_tokenizer([*CORPUS, "a different vocabulary entirely zebra quokka"], vocab_size=600)
    wide = tmp_path / "wide"
    wide.mkdir()
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, vocab_size=len(other)
    )
    transformers.LlamaForCausalLM(config).save_pretrained(wide)
    other.save_pretrained(wide)
    generator = LocalGenerator(wide, adapter=adapter_dir)
    with pytest.raises(ModelLoadError, match=r"(?s)Cannot apply the adapter .*adapter.* to .*wide.*trained on this base model"):
        generator.complete(STATE, sampling=Sampling(max_tokens=2, seed=0))


def test_missing_pieces_are_named(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"No model folder at .*nowhere"):
        LocalGenerator(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match=r"No LoRA adapter at .*adapter-missing.*adapter_config\.json"):
        LocalGenerator(model_dir, adapter=tmp_path / "adapter-missing")
    with pytest.raises(ModelLoadError, match=r"No GGUF file 'x\.gguf'"):
        LocalGenerator(model_dir, gguf_file="x.gguf")


def test_the_local_teacher_writes_greedy_deterministic_rationales(model_dir: Path) -> None:
    from ee_middleware.trainers.datasets.teachers import LocalTeacher, ReflectionCase, build_teacher

    teacher = build_teacher(f"local:{model_dir}", max_new_tokens=6)
    assert isinstance(teacher, LocalTeacher) and teacher.name == f"local:{model_dir.name}"
    case = ReflectionCase(task="Are apples in stock?", context="user: apples?", chosen="check_stock(item='apple')", chosen_outcome="3")
    first = teacher.write([case, case])
    assert len(first) == 2 and first[0] == first[1] and all(isinstance(text, str) for text in first)
    assert teacher.write([case]) == first[:1]


def test_context_length_caps_prompt_and_answer(model_dir: Path) -> None:
    long_state = [{"role": "user", "content": "Are apples in stock? " * 200}]
    capped = LocalGenerator(model_dir, context_length=96)
    ids, new_tokens = capped.prompt_ids(long_state, TOOLS, max_new_tokens=32)
    assert new_tokens == 32 and ids.shape[1] <= 96 - 32
    uncapped, _ = LocalGenerator(model_dir).prompt_ids(long_state, TOOLS, max_new_tokens=32)
    assert uncapped.shape[1] > 96, "without a cap the model's own context (1024 here) is the budget"


def test_loading_from_a_folder_that_does_not_exist_names_it(tmp_path: Path) -> None:
    """(transformers read a missing folder as a hub repo id: "Repo id must be in the form 'repo_name'...")."""
    from ee_middleware.models.local import load_pretrained

    with pytest.raises(ModelLoadError, match=r"No model folder at .*nope.*never downloaded"):
        load_pretrained(tmp_path / "nope")


@pytest.mark.parametrize(("eos_bias", "finish"), [(1e4, "stop"), (-1e4, "length")])
def test_an_answer_says_whether_it_ended_or_ran_out_of_tokens(tokenizer: Any, eos_bias: float, finish: str) -> None:
    """A hook on the real model's output layer makes the end-of-sequence token certain or impossible."""
    model = build_tiny_llama(tokenizer)
    eos = tokenizer.eos_token_id

    def bias(module: Any, inputs: Any, logits: Any) -> Any:
        logits[..., eos] += eos_bias
        return logits

    model.lm_head.register_forward_hook(bias)
    generator = LocalGenerator.from_objects(model, tokenizer)
    choices = generator.complete(STATE, tools=TOOLS, n=2, sampling=Sampling(max_tokens=4, seed=3))
    assert [c.finish_reason for c in choices] == [finish, finish]
    if finish == "length":
        problems = [item for choice in choices for item in choice.tool_calls() if isinstance(item, ParseProblem)]
        assert problems and all("cut off at max_tokens" in item.problem for item in problems)


@pytest.mark.parametrize("reader", ["this gguf", "an older gguf without ReaderField.contents"])
def test_a_gguf_models_context_is_read_from_its_metadata(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    """pyproject allows gguf>=0.10; a version without ``ReaderField.contents`` made the check skip itself silently."""
    import gguf

    from ee_middleware.models.local import model_context
    from ee_middleware.testing.tiny_models import save_metadata_gguf

    save_metadata_gguf(tmp_path / "m.gguf", context_length=2048, architecture="llama")
    if reader != "this gguf":
        monkeypatch.delattr(gguf.gguf_reader.ReaderField, "contents")
    assert model_context(tmp_path, "m.gguf") == (2048, f"llama.context_length in {tmp_path / 'm.gguf'}")


def test_a_model_that_needs_its_own_code_is_refused_without_asking_on_the_terminal(tmp_path: Path, tokenizer: Any) -> None:
    """Before: transformers asked "Do you wish to run the custom code? [y/N]" on stdin (a terminal waited there; a job
    read EOF), then the error said the folder needed config.json, weights and tokenizer files, which it had. Now nothing
    is asked and the error names the folder's own code and the ways out."""
    import json
    import subprocess
    import sys

    folder = save_tiny_llama(tmp_path / "custom", tokenizer)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "custom-thing"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom-thing'\n"
    )
    (folder / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_custom import CustomConfig\n\n\nclass CustomModel(LlamaForCausalLM):\n"
        "    config_class = CustomConfig\n"
    )
    script = (
        "import sys\nfrom pathlib import Path\nfrom ee_middleware.models.local import load_pretrained\n"
        "try:\n    load_pretrained(Path(sys.argv[1]))\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    # stdin holds "y": an answer to a question transformers should not ask
    done = subprocess.run([sys.executable, "-c", script, str(folder)], input="y\n", capture_output=True, text=True, timeout=120)
    assert "Do you wish to run the custom code" not in done.stdout + done.stderr
    assert done.stdout.startswith("ModelLoadError"), done.stdout + done.stderr
    assert "configuration_custom.CustomConfig, modeling_custom.CustomModel" in done.stdout
    assert "trust_remote_code" in done.stdout and "vLLM --trust-remote-code" in done.stdout
    assert "The folder needs config.json" not in done.stdout


def test_a_folder_naming_its_own_code_gets_the_message_of_what_really_failed(tmp_path: Path, tokenizer: Any) -> None:
    """A folder whose config names its own code (auto_map) but whose model_type transformers implements loads without it;
    when it fails for another reason (its weights missing), the message names that, not the code. Code named only in
    tokenizer_config.json (a custom tokenizer class) is named as the model's code is."""
    import json

    native = save_tiny_llama(tmp_path / "native", tokenizer)
    config = json.loads((native / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}
    (native / "config.json").write_text(json.dumps(config))
    from ee_middleware.models.local import load_pretrained

    load_pretrained(native, require_chat_template=False)  # llama: transformers' own class, no code run
    for weights in native.glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(ModelLoadError, match=r"needs config\.json, the weights") as missing:
        load_pretrained(native, require_chat_template=False)
    assert "its own code" not in str(missing.value)

    custom_tokenizer = save_tiny_llama(tmp_path / "custom-tokenizer", tokenizer)
    settings = json.loads((custom_tokenizer / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "XTokenizer"
    settings["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    (custom_tokenizer / "tokenizer_config.json").write_text(json.dumps(settings))
    (custom_tokenizer / "tokenization_x.py").write_text("from transformers import PreTrainedTokenizerFast as XTokenizer\n")
    with pytest.raises(ModelLoadError, match=r"needs its own code \(tokenization_x\.XTokenizer, named by auto_map"):
        load_pretrained(custom_tokenizer, require_chat_template=False)


def test_generation_stops_once_cancelled_says_so(tokenizer: Any) -> None:
    """``cancelled`` (a server's client that went away) is asked after every token; the answer ends there, a prefix of
    the one generated without it."""
    generator = LocalGenerator.from_objects(build_tiny_llama(tokenizer), tokenizer)
    prompt = tokenizer("Are apples in stock?", return_tensors="pt")["input_ids"]
    greedy = Sampling(temperature=0.0, max_tokens=30)
    whole = generator.generate(prompt, n=1, sampling=greedy)[0]
    asked: list[int] = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) >= 4

    cut = generator.generate(prompt, n=1, sampling=greedy, cancelled=cancelled)[0]
    assert len(whole.token_ids) == 30 and len(cut.token_ids) == 4 and cut.token_ids == whole.token_ids[:4]
