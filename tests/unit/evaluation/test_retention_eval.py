"""RetentionEvaluator: the base model measured once (from the reply cache the second time), the adapter
graded on what the base got right, with the same numbers as generating every reply would give."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaForCausalLM

import src.evaluation.reply_cache as reply_cache
import src.evaluation.retention_eval as retention_eval
from src.data.chat_format import ChatFormatter
from src.data.retention import CheckableItem
from src.errors import TutorTuneError
from src.evaluation.kl import reply_batches
from src.evaluation.reply_cache import ReplyCache, greedy_replies
from src.evaluation.retention_eval import RetentionEvaluator, RetentionSets
from src.evaluation.settings import RetentionSettings
from src.metrics.retention import is_correct, normalize, repeated_ngram_share

CANDIDATE_QUESTIONS = [f"What is {word}?" for word in
                       ["water", "a cat", "the sun", "a bird", "rain", "a tree", "a river", "snow", "bread", "a city",
                        "a song", "a boat", "salt", "wind", "a house", "a book"]]
CANDIDATE_OPEN = [f"Explain in two sentences {topic}." for topic in
                  ["why the sky is blue", "how rain forms", "what a river is", "why we sleep", "how bread is made",
                   "what wind is", "why snow is white", "how a boat floats", "what salt does", "how trees grow"]]
BUDGET, OPEN_BUDGET = 6, 8


def round_trip_prompts(model, formatter: ChatFormatter, prompts: list[str], budget: int, wanted: int) -> list[str]:
    """The first `wanted` prompts whose greedy reply text tokenizes back to the generated tokens: only
    those can be recognised as reproduced without generating them (see `text_model_dir`)."""
    tokenizer, kept = formatter.tokenizer, []
    for prompt in prompts:
        ids = tokenizer(formatter.prompt_text([{"role": "user", "content": prompt}]), add_special_tokens=False)
        ids = torch.tensor([ids["input_ids"]])
        new = model.generate(input_ids=ids, max_new_tokens=budget, do_sample=False,
                             eos_token_id=sorted(formatter.end_of_turn_ids), pad_token_id=tokenizer.pad_token_id)
        new = [t for t in new[0, ids.shape[1]:].tolist() if t not in formatter.end_of_turn_ids]
        text = tokenizer.decode(new, skip_special_tokens=True)
        if tokenizer(text, add_special_tokens=False)["input_ids"] == new:
            kept.append(prompt)
    assert len(kept) >= wanted, f"only {len(kept)} of the candidate prompts round-trip"
    return kept[:wanted]


def fresh_peft(model_dir: Path) -> PeftModel:
    """LoRA as training starts it: B = 0, so the adapter is the identity."""
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
    torch.manual_seed(0)
    return get_peft_model(LlamaForCausalLM.from_pretrained(model_dir), config)


@pytest.fixture(scope="module")
def formatter(tiny_tokenizer) -> ChatFormatter:
    return ChatFormatter(tiny_tokenizer)


@dataclass
class Case:
    """The tiny random model's retention sets: 8 checkable items (6 it may answer right, 2 it cannot) and
    4 open prompts, all with replies that round-trip (see `round_trip_prompts`)."""

    model_dir: Path
    formatter: ChatFormatter
    items: list[CheckableItem]
    open_prompts: list[str]

    def fresh_model(self) -> PeftModel:
        return fresh_peft(self.model_dir)

    def evaluator(self, items: list[CheckableItem] | None = None, **kwargs: Any) -> RetentionEvaluator:
        return RetentionEvaluator(self.items if items is None else items, self.open_prompts, max_new_tokens=BUDGET,
                                  open_max_new_tokens=OPEN_BUDGET, batch_size=3, **kwargs)


@pytest.fixture(scope="module")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_tokenizer) -> Path:
    """The tiny random Llama, unable to emit tokens that do not decode to text on their own.

    Random weights favour lone UTF-8 continuation bytes, whose decoded text ("\ufffd") tokenizes to other
    tokens: such replies are always generated again (see `RetentionEvaluator._open_replies`), which real models' replies
    rarely need. With those output rows zeroed, their logit is 0 and some real token's is higher."""
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    end_of_turn = ChatFormatter(tiny_tokenizer).end_of_turn_ids
    no_text = [t for t in range(len(tiny_tokenizer)) if "\ufffd" in tiny_tokenizer.decode([t])
               or (t in tiny_tokenizer.all_special_ids and t not in end_of_turn)]
    with torch.no_grad():
        model.lm_head.weight[no_text] = 0.0
    folder = tmp_path_factory.mktemp("text-llama")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def case(text_model_dir: Path, tiny_tokenizer) -> Case:
    formatter = ChatFormatter(tiny_tokenizer)
    model = LlamaForCausalLM.from_pretrained(text_model_dir)
    questions = round_trip_prompts(model, formatter, CANDIDATE_QUESTIONS, BUDGET, 8)
    open_prompts = round_trip_prompts(model, formatter, CANDIDATE_OPEN, OPEN_BUDGET, 4)
    # Right answers are the last word of the model's own reply; the last two items ask for words it never says.
    replies = greedy_replies(model, tiny_tokenizer, formatter, questions, BUDGET)
    answers = [normalize(reply).split()[-1:] or ["never said"] for reply in replies[:-2]]
    answers += [["never said"], ["never said either"]]
    assert sum(a != ["never said"] for a in answers) >= 3, "the case needs base-right items"
    items = [{"id": f"item-{n}", "lang": "en", "kind": "test", "template": "test", "prompt": q, "answers": a,
              "rejects": []} for n, (q, a) in enumerate(zip(questions, answers))]
    return Case(text_model_dir, formatter, items, open_prompts)  # type: ignore[arg-type]


class CountingGreedy:
    """Counts the prompts `RetentionEvaluator` generates replies for."""

    def __init__(self) -> None:
        self.prompts = 0

    def __call__(self, model, tokenizer, formatter, prompts, max_new_tokens, batch_size=16):
        self.prompts += len(prompts)
        return greedy_replies(model, tokenizer, formatter, prompts, max_new_tokens, batch_size)


@pytest.fixture()
def generated(monkeypatch: pytest.MonkeyPatch) -> CountingGreedy:
    counter = CountingGreedy()
    monkeypatch.setattr(retention_eval, "greedy_replies", counter)  # the adapter's replies
    monkeypatch.setattr(reply_cache, "greedy_replies", counter)  # the base model's replies
    return counter


def trained_one_step(model: PeftModel, formatter: ChatFormatter) -> PeftModel:
    """One AdamW step towards replying "One two three." to everything: some replies change, others do not."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    replies = ["One two three."] * len(CANDIDATE_OPEN)
    batch = next(iter(reply_batches(formatter, CANDIDATE_OPEN, replies, batch_size=len(CANDIDATE_OPEN))))
    model(**batch).loss.backward()
    optimizer.step()
    return model


def test_the_base_is_graded_on_every_item(case: Case) -> None:
    measure = case.evaluator()
    base = measure.measure_base(case.fresh_model(), case.formatter, "32-true")
    right = [is_correct(r, i["answers"]) for r, i in zip(measure.base_replies, case.items)]
    assert base["retain/count"] == len(case.items) and base["retain/acc"] == pytest.approx(sum(right) / len(right))
    assert measure.graded == [n for n, ok in enumerate(right) if ok] and measure.graded[-1] < len(case.items) - 2
    repeats = [repeated_ngram_share(r) for r in measure.base_open_replies]
    assert base["retain/repeat"] == pytest.approx(sum(repeats) / len(repeats))


def test_an_untouched_adapter_keeps_everything_and_generates_no_open_reply(case: Case,
                                                                          generated: CountingGreedy) -> None:
    model, measure = case.fresh_model(), case.evaluator()
    measure.measure_base(model, case.formatter, "32-true")
    generated.prompts = 0
    adapter = measure.measure_adapter(model, case.formatter)
    assert adapter["retain/kept"] == 1.0 and adapter["retain/acc"] == 1.0 and adapter["retain/same"] == 1.0
    assert adapter["retain/kl"] == pytest.approx(0.0, abs=1e-9)
    assert adapter["retain/count"] == len(measure.graded)
    # The short checkable replies are generated; every open reply came back token for token from the KL's pass.
    assert generated.prompts == len(measure.graded)


def test_a_changed_adapter_is_measured_as_generating_every_reply_would(case: Case) -> None:
    model, measure = case.fresh_model(), case.evaluator()
    measure.measure_base(model, case.formatter, "32-true")
    trained_one_step(model, case.formatter)
    adapter = measure.measure_adapter(model, case.formatter)
    assert adapter["retain/kl"] > 1e-6
    assert 0 < adapter["retain/same"] < 1, "the step should change some replies and leave others: both paths run"

    tokenizer, graded = case.formatter.tokenizer, [case.items[i] for i in measure.graded]
    replies = greedy_replies(model, tokenizer, case.formatter, [i["prompt"] for i in graded], BUDGET)
    kept = [is_correct(r, i["answers"]) for r, i in zip(replies, graded)]
    same = [r == measure.base_replies[i] for r, i in zip(replies, measure.graded)]
    repeats = [repeated_ngram_share(r)
               for r in greedy_replies(model, tokenizer, case.formatter, case.open_prompts, OPEN_BUDGET)]
    assert adapter["retain/kept"] == pytest.approx(sum(kept) / len(kept))
    assert adapter["retain/same"] == pytest.approx(sum(same) / len(same))
    assert adapter["retain/repeat"] == pytest.approx(sum(repeats) / len(repeats))


def test_the_second_base_measurement_comes_from_the_cache(tmp_path: Path, case: Case,
                                                          generated: CountingGreedy) -> None:
    every_prompt = len(case.items) + len(case.open_prompts)
    first = case.evaluator(cache=ReplyCache(tmp_path))
    first_base = first.measure_base(case.fresh_model(), case.formatter, "32-true")
    assert generated.prompts == every_prompt
    second = case.evaluator(cache=ReplyCache(tmp_path))
    assert second.measure_base(case.fresh_model(), case.formatter, "32-true") == first_base
    assert generated.prompts == every_prompt  # nothing generated the second time
    assert (second.base_replies, second.base_open_replies) == (first.base_replies, first.base_open_replies)
    case.evaluator(cache=ReplyCache(tmp_path)).measure_base(case.fresh_model(), case.formatter, "bf16-mixed")
    assert generated.prompts == 2 * every_prompt  # another precision is another key


def test_state_dict_round_trip(case: Case, generated: CountingGreedy) -> None:
    model, source = case.fresh_model(), case.evaluator()
    source.measure_base(model, case.formatter, "32-true")
    trained_one_step(model, case.formatter)
    restored = case.evaluator()
    restored.load_state_dict(source.state_dict())
    assert torch.equal(restored.base_correct, source.base_correct) and restored.graded == source.graded
    generated.prompts = 0
    assert restored.measure_adapter(model, case.formatter) == source.measure_adapter(model, case.formatter)
    assert generated.prompts > 0  # the trained adapter's replies were generated, compared with restored ones


def test_a_state_from_other_items_is_refused(case: Case) -> None:
    source = case.evaluator()
    source.measure_base(case.fresh_model(), case.formatter, "32-true")
    with pytest.raises(TutorTuneError, match="same retention settings"):
        case.evaluator(items=case.items[:-1]).load_state_dict(source.state_dict())


def test_a_further_set_reports_under_its_own_name_beside_the_main_set(case: Case) -> None:
    sets = RetentionSets(case.evaluator(), {"indep": case.evaluator(items=case.items[:4], prefix="retain/indep")})
    model = case.fresh_model()
    base = sets.measure_base(model, case.formatter, "32-true")
    assert base["retain/count"] == len(case.items) and base["retain/indep/count"] == 4
    assert sets.measured
    adapter = sets.measure_adapter(model, case.formatter)
    assert adapter["retain/kept"] == 1.0 and adapter["retain/indep/kept"] == 1.0  # an untouched adapter
    assert {key for key in adapter if key.startswith("retain/indep/")} == {
        f"retain/indep/{name}" for name in ("acc", "kept", "kl", "repeat", "same", "count")}


def test_a_checkpoint_from_before_the_further_set_restores_the_main_set_and_measures_the_new_one(case: Case) -> None:
    alone = RetentionSets(case.evaluator(), {})
    alone.measure_base(case.fresh_model(), case.formatter, "32-true")
    state = alone.state_dict()
    del state["sets"]  # as a checkpoint written with one retention set holds it
    both = RetentionSets(case.evaluator(), {"indep": case.evaluator(prefix="retain/indep")})
    both.load_state_dict(state)
    assert both.main.measured and not both.extra["indep"].measured and not both.measured


def test_a_further_set_name_must_be_a_plain_word() -> None:
    with pytest.raises(TutorTuneError, match="extra_dirs has the set name 'a/b'"):
        RetentionSets.from_settings(RetentionSettings(dir=None, extra_dirs={"a/b": "data/retention"}), seed=0)
    assert RetentionSets.from_settings(RetentionSettings(dir=None), seed=0) is None  # nothing to measure


def test_eval_size_grades_a_seeded_subset_of_the_base_right_items(case: Case) -> None:
    model = case.fresh_model()
    everything = case.evaluator()
    everything.measure_base(model, case.formatter, "32-true")
    subsets = []
    for _ in range(2):
        measure = case.evaluator(eval_size=2, open_eval_size=2, seed=5)
        measure.measure_base(model, case.formatter, "32-true")
        subsets.append((measure.graded, measure.open_prompts))
        assert measure.measure_adapter(model, case.formatter)["retain/count"] == 2
    assert subsets[0] == subsets[1]  # the same seed grades the same items at every validation
    graded, prompts = subsets[0]
    assert len(graded) == 2 and set(graded) <= set(everything.graded) and graded == sorted(graded)
    assert len(prompts) == 2 and set(prompts) <= set(case.open_prompts)


def test_checkable_size_has_the_base_answer_a_seeded_subset(case: Case, generated: CountingGreedy) -> None:
    measure = case.evaluator(checkable_size=5, seed=3)
    base = measure.measure_base(case.fresh_model(), case.formatter, "32-true")
    assert base["retain/count"] == 5 and generated.prompts == 5 + len(case.open_prompts)
    ids = [item["id"] for item in measure.checkable]
    assert ids == [item["id"] for item in case.evaluator(checkable_size=5, seed=3).checkable]
    assert set(ids) <= {item["id"] for item in case.items} and ids == sorted(ids, key=lambda i: int(i.split("-")[1]))


def test_the_adapter_needs_the_base_first(case: Case) -> None:
    with pytest.raises(RuntimeError, match="before measure_base"):
        case.evaluator().measure_adapter(case.fresh_model(), case.formatter)
