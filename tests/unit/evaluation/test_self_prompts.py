"""Self-written replay prompts: the base model continues its own user turn from a question's first
words; what it writes is kept only when it is a complete, digit-free prompt that no retention prompt
nearly repeats, and the writing is done once per model and reused from the reply cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from src.data.chat_format import ChatFormatter
from src.evaluation.reply_cache import ReplyCache
from src.evaluation.self_prompts import keep_general_prompts, sample_user_turns, self_written_prompts, user_turn_prefix

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=2, target_modules="all-linear"))


@pytest.fixture(scope="module")
def formatter(tiny_tokenizer) -> ChatFormatter:
    return ChatFormatter(tiny_tokenizer, chat_template=CHATML)


def test_the_user_turn_prefix_is_what_the_template_puts_before_a_users_words(tiny_tokenizer) -> None:
    assert user_turn_prefix(ChatFormatter(tiny_tokenizer, chat_template=CHATML)) == "<|im_start|>user\n"
    with_system = ChatFormatter(tiny_tokenizer, system_prompt="Be brief.", chat_template=CHATML)
    assert user_turn_prefix(with_system) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"


def test_complete_general_prompts_are_kept_in_order_up_to_the_count() -> None:
    written = ["What is the largest ocean?", "Name a river in Europe.", "Tell me a joke!", "Describe snow."]
    assert keep_general_prompts(written, exclude=[], count=2) == ["What is the largest ocean?", "Name a river in Europe."]
    assert keep_general_prompts(written, exclude=[], count=10) == written[:3]  # "Describe snow." has two words


@pytest.mark.parametrize(
    "prompt, why",
    [
        ("How many legs do 3 spiders have?", "digits: arithmetic, which training corrects"),
        ("What is the colour of the sky on a", "cut off: no closing punctuation"),
        ("Why?", "too short to be a prompt"),
        ("What is the capital of France?", "a retention prompt"),
        ("what is THE capital of france.", "the same words as a retention prompt"),
        ("¿Cuál es la capital de Francia?", "a retention prompt, accents aside"),
    ],
)
def test_a_written_prompt_is_dropped(prompt: str, why: str) -> None:
    exclude = ["What is the capital of France?", "¿Cual es la capital de Francia?"]
    assert keep_general_prompts([prompt], exclude, count=5) == [], why


def test_a_prompt_written_twice_is_kept_once() -> None:
    assert keep_general_prompts(["Name a fruit please.", "name a fruit, please!"], [], count=5) == ["Name a fruit please."]


def test_sampling_is_seeded_and_stops_at_a_line_break(model, formatter) -> None:
    starts = ["What is", "Name a", "Tell me"]
    first = sample_user_turns(model, formatter, starts, seed=3, batch_size=2)
    assert len(first) == len(starts) and not any("\n" in text for text in first)
    assert sample_user_turns(model, formatter, starts, seed=3, batch_size=2) == first
    assert sample_user_turns(model, formatter, starts, seed=4, batch_size=2) != first


def test_the_writing_is_cached_once_per_model(tmp_path: Path, model, formatter) -> None:
    first = self_written_prompts(model, formatter, 4, "32-true", cache=ReplyCache(tmp_path))
    (stored,) = tmp_path.glob("*.json")
    written_at = stored.stat().st_mtime_ns
    again = self_written_prompts(model, formatter, 4, "32-true", cache=ReplyCache(tmp_path))
    assert again == first and list(tmp_path.glob("*.json")) == [stored] and stored.stat().st_mtime_ns == written_at
    assert self_written_prompts(model, formatter, 0, "32-true", cache=ReplyCache(tmp_path)) == []
