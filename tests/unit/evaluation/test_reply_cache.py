"""ReplyCache: the base model's greedy replies are generated once per key and reused from disk; any
change to what the replies depend on is another key, and a damaged or half-written file is never
read as replies."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

import src.evaluation.reply_cache as reply_cache
from src.data.chat_format import ChatFormatter
from src.errors import TutorTuneError
from src.evaluation.reply_cache import ReplyCache, base_reply_key, greedy_replies, weights_fingerprint

PROMPTS = ["What is the capital of France?", "Name a colour.", "Say hello."]
MAX_NEW_TOKENS = 4
OTHER_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class CountingGenerate:
    """`greedy_replies` of a model, counting how often the cache had to call it."""

    def __init__(self, model: torch.nn.Module, formatter: ChatFormatter, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.model, self.formatter, self.max_new_tokens = model, formatter, max_new_tokens
        self.calls = 0

    def __call__(self, prompts: list[str]) -> list[str]:
        self.calls += 1
        return greedy_replies(self.model, self.formatter.tokenizer, self.formatter, prompts, self.max_new_tokens)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def formatter(tiny_tokenizer) -> ChatFormatter:
    return ChatFormatter(tiny_tokenizer)


def test_a_miss_generates_and_stores_the_replies(tmp_path: Path, model, formatter) -> None:
    cache, generate = ReplyCache(tmp_path), CountingGenerate(model, formatter)
    key = base_reply_key(model, formatter, MAX_NEW_TOKENS, "32-true")
    replies = cache.get_or_generate(key, PROMPTS, generate)
    assert generate.calls == 1
    assert len(replies) == len(PROMPTS) and all(isinstance(r, str) for r in replies)
    stored = json.loads(cache.path_for(key, PROMPTS).read_text(encoding="utf-8"))
    assert stored == {"key": key, "prompts": PROMPTS, "replies": replies}


def test_a_second_call_is_a_hit_that_never_generates(tmp_path: Path, model, formatter) -> None:
    key = base_reply_key(model, formatter, MAX_NEW_TOKENS, "32-true")
    first = ReplyCache(tmp_path).get_or_generate(key, PROMPTS, CountingGenerate(model, formatter))
    # A new cache object on the same folder: what the next run sees.
    generate = CountingGenerate(model, formatter)
    assert ReplyCache(tmp_path).get_or_generate(key, PROMPTS, generate) == first
    assert generate.calls == 0


def test_replies_are_the_models_greedy_replies(tmp_path: Path, model, formatter) -> None:
    key = base_reply_key(model, formatter, MAX_NEW_TOKENS, "32-true")
    cached = ReplyCache(tmp_path).get_or_generate(key, PROMPTS, CountingGenerate(model, formatter))
    one_by_one = [greedy_replies(model, formatter.tokenizer, formatter, [p], MAX_NEW_TOKENS)[0] for p in PROMPTS]
    assert cached == one_by_one  # the key has no batch size: batching must not change a reply


def test_the_fingerprint_follows_the_weights(tiny_model_dir: Path, model) -> None:
    assert weights_fingerprint(LlamaForCausalLM.from_pretrained(tiny_model_dir)) == weights_fingerprint(model)
    touched = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        touched.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert weights_fingerprint(touched) != weights_fingerprint(model)


@dataclass(frozen=True)
class KeyParts:
    """Everything a cached reply depends on, as the caller gives it to `base_reply_key`."""

    model: LlamaForCausalLM
    formatter: ChatFormatter
    prompts: tuple[str, ...] = tuple(PROMPTS)
    max_new_tokens: int = MAX_NEW_TOKENS
    precision: str = "32-true"
    source: str | None = None
    revision: str | None = None

    def key(self) -> dict[str, Any]:
        return base_reply_key(self.model, self.formatter, self.max_new_tokens, self.precision,
                              model_source=self.source, revision=self.revision)

    def fetch(self, cache: ReplyCache) -> CountingGenerate:
        generate = CountingGenerate(self.model, self.formatter, self.max_new_tokens)
        replies = cache.get_or_generate(self.key(), list(self.prompts), generate)
        assert len(replies) == len(self.prompts)
        return generate


def test_the_fingerprint_ignores_a_fresh_adapter(tiny_model_dir: Path, model) -> None:
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    fingerprints = set()
    for seed in (0, 1):
        torch.manual_seed(seed)  # another random A in every run
        fingerprints.add(weights_fingerprint(get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir), config)))
    assert len(fingerprints) == 1


def test_the_fingerprint_is_the_base_weights_whichever_layers_carry_an_adapter(tiny_model_dir: Path, model) -> None:
    def adapted(**layout: Any) -> str:
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], **layout)
        return weights_fingerprint(get_peft_model(LlamaForCausalLM.from_pretrained(tiny_model_dir), config))

    assert adapted() == adapted(layers_to_transform=[1]) == weights_fingerprint(model)


def touched_copy(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """The same architecture with one weight moved: a fine-tune or another checkpoint."""
    copy = LlamaForCausalLM(model.config)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        copy.lm_head.weight[0, 0] += 0.5
    return copy


# Each case changes exactly one part of one of the two reference entries (keyed by weights, or by source "a").
CHANGES: dict[str, Callable[[KeyParts, KeyParts], KeyParts]] = {
    "weights": lambda by_weights, by_source: replace(by_weights, model=touched_copy(by_weights.model)),
    "model source": lambda by_weights, by_source: replace(by_source, source="b"),
    "revision": lambda by_weights, by_source: replace(by_source, revision="v2"),
    "prompts": lambda by_weights, by_source: replace(by_weights, prompts=(*PROMPTS[:2], "Say goodbye.")),
    "chat template": lambda by_weights, by_source: replace(
        by_weights, formatter=ChatFormatter(by_weights.formatter.tokenizer, chat_template=OTHER_TEMPLATE)),
    "system prompt": lambda by_weights, by_source: replace(
        by_weights, formatter=ChatFormatter(by_weights.formatter.tokenizer, system_prompt="Be brief.")),
    "max_new_tokens": lambda by_weights, by_source: replace(by_weights, max_new_tokens=MAX_NEW_TOKENS + 2),
    "precision": lambda by_weights, by_source: replace(by_weights, precision="bf16-mixed"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_changing_any_key_part_generates_again(tmp_path: Path, model, formatter, change: str) -> None:
    cache = ReplyCache(tmp_path)
    by_weights, by_source = KeyParts(model, formatter), KeyParts(model, formatter, source="a")
    for reference in (by_weights, by_source):
        reference.fetch(cache)
    assert by_weights.fetch(cache).calls == 0 and by_source.fetch(cache).calls == 0
    assert CHANGES[change](by_weights, by_source).fetch(cache).calls == 1
    assert len(list(tmp_path.glob("*.json"))) == 3  # a third entry beside the two reference ones


def test_an_unreadable_cache_file_names_its_path(tmp_path: Path, model, formatter) -> None:
    cache = ReplyCache(tmp_path)
    key = base_reply_key(model, formatter, MAX_NEW_TOKENS, "32-true")
    path = cache.path_for(key, PROMPTS)
    path.write_text('{"key": {}, "prompts": ["What is', encoding="utf-8")  # cut short
    generate = CountingGenerate(model, formatter)
    with pytest.raises(TutorTuneError, match="unreadable") as error:
        cache.get_or_generate(key, PROMPTS, generate)
    assert str(path) in str(error.value) and "delete it" in str(error.value)
    assert generate.calls == 0


def test_a_file_that_does_not_hold_its_prompts_is_refused(tmp_path: Path, model, formatter) -> None:
    cache = ReplyCache(tmp_path)
    key = base_reply_key(model, formatter, MAX_NEW_TOKENS, "32-true")
    path = cache.path_for(key, PROMPTS)
    path.write_text(json.dumps({"key": key, "prompts": PROMPTS, "replies": ["only one"]}), encoding="utf-8")
    with pytest.raises(TutorTuneError, match="does not match its key") as error:
        cache.get_or_generate(key, PROMPTS, CountingGenerate(model, formatter))
    assert str(path) in str(error.value)


def test_a_killed_write_leaves_no_half_file(tmp_path: Path, model, formatter, monkeypatch) -> None:
    cache = ReplyCache(tmp_path)
    key = base_reply_key(model, formatter, MAX_NEW_TOKENS, "32-true")
    real_dump = json.dump

    def dump_half_then_die(content: Any, out: Any, **kwargs: Any) -> None:
        out.write(json.dumps(content)[:20])
        out.flush()
        raise KeyboardInterrupt  # the job is stopped mid-write

    monkeypatch.setattr(reply_cache.json, "dump", dump_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_generate(key, PROMPTS, CountingGenerate(model, formatter))
    assert list(tmp_path.iterdir()) == []  # neither the entry nor its scratch file

    monkeypatch.setattr(reply_cache.json, "dump", real_dump)
    generate = CountingGenerate(model, formatter)
    cache.get_or_generate(key, PROMPTS, generate)
    assert generate.calls == 1  # the next run generates again instead of reading half a file
    assert [p.name for p in tmp_path.iterdir()] == [cache.path_for(key, PROMPTS).name]


def test_generate_must_give_one_reply_per_prompt(tmp_path: Path, model, formatter) -> None:
    key = base_reply_key(model, formatter, MAX_NEW_TOKENS, "32-true")
    with pytest.raises(ValueError, match="2 replies for 3 prompts"):
        ReplyCache(tmp_path).get_or_generate(key, PROMPTS, lambda prompts: ["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_greedy_replies_restore_the_training_mode(model, formatter) -> None:
    model.train()
    greedy_replies(model, formatter.tokenizer, formatter, PROMPTS[:1], MAX_NEW_TOKENS)
    assert model.training
    model.eval()
