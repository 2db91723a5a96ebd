"""KL(base || adapter) on teacher-forced replies: zero for an untouched adapter, reply tokens only."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

from src.data.chat_format import IGNORE_INDEX, ChatFormatter
from src.evaluation.kl import MeanTokenKL, reply_batches, teacher_forced_rows, token_kl_sum
from src.models.lora import attach_lora

PROMPTS = ["Explain why the sky is blue.", "List three fruits."]
REPLIES = ["Light scatters.", "Apples, pears and plums."]


def fresh_peft(model_dir) -> PeftModel:
    """LoRA as training starts it: B = 0, so the adapter is the identity."""
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(LlamaForCausalLM.from_pretrained(model_dir), config)


@pytest.fixture()
def batch(tiny_tokenizer) -> dict[str, torch.Tensor]:
    return next(iter(reply_batches(ChatFormatter(tiny_tokenizer), PROMPTS, REPLIES, batch_size=2)))


def test_batches_label_the_reply_tokens_only(tiny_tokenizer, batch) -> None:
    formatter = ChatFormatter(tiny_tokenizer)
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE_INDEX].tolist()
    assert tiny_tokenizer.decode(labelled).startswith(REPLIES[0])
    prompt_ids = tiny_tokenizer(formatter.prompt_text([{"role": "user", "content": PROMPTS[0]}]),
                                add_special_tokens=False)["input_ids"]
    assert (batch["labels"][0, : len(prompt_ids)] == IGNORE_INDEX).all()


def test_kl_is_zero_for_an_untouched_adapter(tiny_model_dir, batch) -> None:
    total, tokens = token_kl_sum(fresh_peft(tiny_model_dir), **batch)
    assert tokens == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) > 0
    assert total.item() == pytest.approx(0.0, abs=1e-9)


def test_kl_is_positive_after_an_optimizer_step(tiny_model_dir, batch) -> None:
    model = fresh_peft(tiny_model_dir)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    optimizer.step()
    metric = MeanTokenKL()
    metric.update(model, **batch)
    assert metric.compute().item() > 1e-4
    assert model.training  # the measure restores the mode it found


def test_kl_is_zero_for_an_untouched_pissa_adapter(tiny_model_dir, batch) -> None:
    """PiSSA moves the principal part of each weight into the adapter: the base is the residual plus B₀A₀."""
    model = attach_lora(LlamaForCausalLM.from_pretrained(tiny_model_dir), r=4, alpha=8, dropout=0.0,
                        target_modules="all-linear", init_lora_weights="pissa_niter_2")
    total, tokens = token_kl_sum(model, **batch)
    assert tokens > 0 and total.item() / tokens == pytest.approx(0.0, abs=1e-6)


def test_masked_positions_do_not_count(tiny_model_dir, tiny_adapter_dir, batch) -> None:
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir), tiny_adapter_dir)
    total, tokens = token_kl_sum(model, **batch)
    # Labelling the prompt tokens too adds their positions and their divergence.
    everything = {**batch, "labels": torch.where(batch["attention_mask"] == 1, batch["input_ids"], IGNORE_INDEX)}
    all_total, all_tokens = token_kl_sum(model, **everything)
    assert all_tokens > tokens and all_total.item() > total.item()
    # Masking the second row's reply removes exactly its positions and divergence.
    first_only = {**batch, "labels": batch["labels"].clone()}
    first_only["labels"][1] = IGNORE_INDEX
    first_total, first_tokens = token_kl_sum(model, **first_only)
    row = {k: v[:1] for k, v in batch.items()}
    alone_total, alone_tokens = token_kl_sum(model, **row)
    assert first_tokens == alone_tokens < tokens
    assert first_total.item() == pytest.approx(alone_total.item(), rel=1e-4)
    assert total.item() > first_total.item() > 0


def test_rows_split_the_kl_and_tell_which_replies_the_argmax_reproduces(tiny_model_dir, tiny_adapter_dir,
                                                                        tiny_tokenizer, batch) -> None:
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tiny_model_dir), tiny_adapter_dir)
    rows = teacher_forced_rows(model, **batch)
    total, tokens = token_kl_sum(model, **batch)
    assert rows.kl.sum().item() == pytest.approx(total.item()) and int(rows.tokens.sum()) == tokens
    assert rows.tokens.tolist() == (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1).tolist()
    assert not rows.reproduced.any()  # a random model does not say "Light scatters."

    # The model's own argmax continuation is reproduced; cut to fewer tokens than it has, it cannot be.
    formatter = ChatFormatter(tiny_tokenizer)
    prompt = tiny_tokenizer(formatter.prompt_text([{"role": "user", "content": PROMPTS[0]}]),
                            add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt])
    for _ in range(4):
        next_token = model(input_ids=ids).logits[0, -1].argmax()
        ids = torch.cat([ids, next_token.view(1, 1)], dim=1)
    labels = torch.cat([torch.full((1, len(prompt)), IGNORE_INDEX), ids[:, len(prompt):]], dim=1)
    own = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    assert teacher_forced_rows(model, **own, budget=4).reproduced.tolist() == [True]
    assert teacher_forced_rows(model, **own, budget=3).reproduced.tolist() == [False]  # 3 new tokens cannot give 4
    # Ending with an end-of-turn token, the same 4 tokens are a 3-token reply that fits a budget of 3.
    assert teacher_forced_rows(model, **own, budget=3, end_of_turn_ids={int(ids[0, -1])}).reproduced.tolist() == [True]


def test_kl_needs_a_peft_model(tiny_model_dir, batch) -> None:
    with pytest.raises(TypeError, match="peft.get_peft_model"):
        token_kl_sum(LlamaForCausalLM.from_pretrained(tiny_model_dir), **batch)
