"""TutorDataModule on the tiny model's tokenizer: splits, statistics, padded batches without labels on
padding, length grouping, math items as generation prompts, and the tokenised-dataset cache."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import arithmetic_rows, write_jsonl
from src.data.chat_format import IGNORE_INDEX, ChatFormatter
from src.data.datamodule import TutorDataModule

GENERATION_PROMPT = "<|im_start|>assistant\n"


def long_answer_rows(count: int) -> list[dict]:
    """Ungraded rows whose answers are ~45 tokens longer than an arithmetic row's."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"Suma los números del {n}"},
                {"role": "assistant", "content": " + ".join(str(n % 10) for _ in range(25))},
            ]
        }
        for n in range(count)
    ]


def answerless_row() -> dict:
    """A row whose prompt alone is longer than max_length=100, so truncation leaves no answer."""
    return {
        "messages": [
            {"role": "user", "content": "¿Cuánto es " + "1 + " * 40 + "1?"},
            {"role": "assistant", "content": "Respuesta: 41"},
        ]
    }


def datamodule(model_dir: Path, tmp_path: Path, **kwargs) -> TutorDataModule:
    kwargs.setdefault("cache_dir", str(tmp_path / "cache"))
    kwargs.setdefault("batch_size", 4)
    kwargs.setdefault("eval_batch_size", 4)
    return TutorDataModule(model_name=str(model_dir), **kwargs)


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(40))


@pytest.fixture
def fitted(tiny_model_dir: Path, tmp_path: Path, train_file: Path) -> TutorDataModule:
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, math_eval_size=None)
    dm.setup("fit")
    return dm


def test_split_counts(fitted: TutorDataModule) -> None:
    assert (len(fitted.train_dataset), len(fitted.val_dataset)) == (30, 10)
    assert fitted.tokenizer.pad_token_id == 2


def test_tokenised_columns_agree_with_the_formatter(fitted: TutorDataModule, tiny_tokenizer) -> None:
    row = fitted.train_dataset[0]
    assert row["length"] == len(row["input_ids"]) == len(row["labels"])
    assert row["label_tokens"] == sum(label != IGNORE_INDEX for label in row["labels"])
    assert row["truncated"] is False
    labelled = tiny_tokenizer.decode([label for label in row["labels"] if label != IGNORE_INDEX])
    assert re.fullmatch(r"(\d) \+ (\d) = (\d+)\.\nRespuesta: \3<\|im_end\|>", labelled), labelled


def test_statistics_of_the_training_split(fitted: TutorDataModule) -> None:
    stats = fitted.statistics
    assert stats["examples"] == 30
    assert (stats["truncated"], stats["truncated_fraction"], stats["max_length"]) == (0, 0.0, 256)
    assert stats["kinds"] == {"add_1d": 30}
    assert stats["mean_turns"] == 2.0
    assert 0.0 < stats["label_fraction"] < 1.0


def test_statistics_count_truncated_and_answerless_examples(tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", arithmetic_rows(20) + long_answer_rows(3) + [answerless_row()])
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(4, start=100))
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train), val_file=str(val), max_length=100)
    dm.setup("fit")
    # Statistics describe the data as given; the answerless example is then skipped from training.
    assert dm.statistics["examples"] == 24
    assert dm.statistics["truncated"] == 4
    # Lengths before truncation, so the percentiles show how much max_length cuts.
    longest = len(dm.formatter.tokenize(answerless_row()["messages"]).input_ids)
    assert dm.statistics["tokens"]["max"] == longest > 100
    assert len(dm.train_dataset) == 23
    assert sum(dm.train_dataset["truncated"]) == 3
    assert max(dm.train_dataset["length"]) == 100
    assert min(dm.train_dataset["label_tokens"]) > 0


def test_every_training_batch_has_unlabelled_padding(fitted: TutorDataModule) -> None:
    rows = 0
    for batch in fitted.train_dataloader():
        padding = batch["attention_mask"] == 0
        assert batch["input_ids"].shape[1] % 8 == 0
        assert padding.any()  # lengths 67-70 are never a multiple of 8 in every row
        assert (batch["labels"][padding] == IGNORE_INDEX).all()
        assert (batch["input_ids"][padding] == fitted.tokenizer.pad_token_id).all()
        # Right padding: once a row is padded it stays padded.
        assert (batch["attention_mask"].diff(dim=1) <= 0).all()
        # The learned end-of-turn token shares the pad id and keeps its label.
        assert ((batch["labels"] == fitted.tokenizer.eos_token_id) & ~padding).sum() == len(batch["input_ids"])
        rows += len(batch["input_ids"])
    assert rows == 30


def padding_tokens(dm: TutorDataModule) -> tuple[int, list[int]]:
    pads, seen = 0, []
    for batch in dm.train_dataloader():
        pads += int((batch["attention_mask"] == 0).sum())
        seen += batch["attention_mask"].sum(dim=1).tolist()
    return pads, sorted(seen)


def test_length_grouped_batches_pad_less_than_file_order(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Short and long examples alternate in the file, so every file-order batch mixes both. The
    # sampler sorts within megabatches of min(n // (4 * batch_size), 50) batches: 12 batches here.
    rows = [row for pair in zip(arithmetic_rows(100), long_answer_rows(100)) for row in pair]
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(4, start=100))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    grouped = datamodule(tiny_model_dir, tmp_path, train_file=str(train), val_file=str(val), order="length_grouped")
    sequential = datamodule(tiny_model_dir, tmp_path, train_file=str(train), val_file=str(val), order="sequential")
    grouped.setup("fit")
    sequential.setup("fit")
    grouped_pads, grouped_lengths = padding_tokens(grouped)
    sequential_pads, sequential_lengths = padding_tokens(sequential)
    assert grouped_lengths == sequential_lengths  # the same 200 examples, each once
    # File order pads every short row up to a long one (~45 tokens); grouped batches pad mostly
    # to the next multiple of 8.
    assert sequential_pads >= 100 * 40
    assert grouped_pads < sequential_pads / 3


def test_sequential_order_is_file_order(tiny_model_dir: Path, tmp_path: Path, train_file: Path) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(4, start=100))
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_file=str(val), order="sequential")
    dm.setup("fit")
    first = next(iter(dm.train_dataloader()))
    expected = dm.formatter.tokenize(arithmetic_rows(1)[0]["messages"], 256).input_ids
    assert first["input_ids"][0, : len(expected)].tolist() == expected


def test_explicit_val_file_drops_overlapping_training_examples(
    tiny_model_dir: Path, tmp_path: Path, train_file: Path
) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(10, start=35))  # rows 35-39 are in train too
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_file=str(val))
    dm.setup("fit")
    assert (len(dm.train_dataset), len(dm.val_dataset)) == (35, 10)
    val_inputs = {tuple(ids) for ids in dm.val_dataset["input_ids"]}
    assert not val_inputs & {tuple(ids) for ids in dm.train_dataset["input_ids"]}


def test_split_validation_never_repeats_a_training_example(fitted: TutorDataModule) -> None:
    train_inputs = {tuple(ids) for ids in fitted.train_dataset["input_ids"]}
    assert not train_inputs & {tuple(ids) for ids in fitted.val_dataset["input_ids"]}


def test_math_items_are_the_graded_validation_prompts(fitted: TutorDataModule, tiny_tokenizer) -> None:
    items = fitted.math_items
    assert len(items) == 10
    questions = {row["messages"][0]["content"]: row for row in arithmetic_rows(40)}
    formatter = ChatFormatter(tiny_tokenizer)
    for item in items:
        row = questions[item["question"]]
        assert (item["expected"], item["kind"]) == (row["expected"], row["kind"])
        text = tiny_tokenizer.decode(item["prompt_ids"])
        assert text == formatter.prompt_text(row["messages"][:1])
        assert text.endswith(GENERATION_PROMPT)
    # Each math prompt opens a validation example, exactly as it was tokenised for the loss.
    val_ids = list(fitted.val_dataset["input_ids"])
    assert all(any(ids[: len(item["prompt_ids"])] == item["prompt_ids"] for ids in val_ids) for item in items)
    assert fitted.math_kinds == ["add_1d"]


def test_math_eval_size_picks_a_fixed_subset(tiny_model_dir: Path, tmp_path: Path, train_file: Path) -> None:
    def questions(size: int | None) -> list[str]:
        dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, math_eval_size=size)
        dm.setup("fit")
        return [item["question"] for item in dm.math_items]

    everything = questions(None)
    subset = questions(3)
    assert len(subset) == 3
    assert subset == questions(3)
    assert set(subset) < set(everything)


def test_loss_eval_size_picks_a_fixed_subset_of_the_validation_examples(
    tiny_model_dir: Path, tmp_path: Path, train_file: Path
) -> None:
    def validation_inputs(size: int | None) -> list[list[int]]:
        dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, loss_eval_size=size)
        dm.setup("fit")
        return dm.val_dataset["input_ids"]

    everything = validation_inputs(None)
    subset = validation_inputs(4)
    assert len(subset) == 4 and subset == validation_inputs(4)
    assert all(ids in everything for ids in subset)


def test_math_loader_yields_left_padded_prompts(tiny_model_dir: Path, tmp_path: Path, train_file: Path) -> None:
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, math_eval_size=4)
    dm.setup("fit")
    loss_loader, math_loader = dm.val_dataloader()
    batch = next(iter(math_loader))
    assert batch["input_ids"].shape[0] == 4
    assert (batch["attention_mask"][:, -1] == 1).all()  # every prompt ends at the last position
    assert sorted(batch["expected"]) == sorted(item["expected"] for item in dm.math_items)


def test_math_eval_size_zero_has_no_generation_loader(tiny_model_dir: Path, tmp_path: Path, train_file: Path) -> None:
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, math_eval_size=0)
    dm.setup("fit")
    assert dm.math_items == []
    assert len(dm.val_dataloader()) == 1


def test_validate_with_only_a_val_file(tiny_model_dir: Path, tmp_path: Path) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(6))
    dm = datamodule(tiny_model_dir, tmp_path, train_file=None, val_file=str(val))
    dm.setup("validate")
    assert dm.train_dataset is None
    assert len(dm.val_dataset) == 6
    assert len(dm.math_items) == 6
    assert dm.statistics["examples"] == 6


def test_fit_without_a_train_file_names_the_setting(tiny_model_dir: Path, tmp_path: Path) -> None:
    val = write_jsonl(tmp_path / "val.jsonl", arithmetic_rows(6))
    dm = datamodule(tiny_model_dir, tmp_path, train_file=None, val_file=str(val))
    with pytest.raises(ValueError, match=r"data\.train_file is required to fit"):
        dm.setup("fit")


def test_tokenised_datasets_are_cached(
    tiny_model_dir: Path, tmp_path: Path, train_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = dict(train_file=str(train_file), val_fraction=0.25)
    first = datamodule(tiny_model_dir, tmp_path, **args)
    first.setup("fit")
    cache = tmp_path / "cache"
    files = sorted(path.name for path in cache.iterdir())
    assert [name.split("-")[0] for name in files] == ["train", "val"]

    # A second data module with the same arguments must not tokenise anything.
    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenised again instead of reading the cache")

    monkeypatch.setattr(ChatFormatter, "tokenize", no_tokenizing)
    second = datamodule(tiny_model_dir, tmp_path, **args)
    second.setup("fit")
    assert second.train_dataset.cache_files == first.train_dataset.cache_files
    assert second.val_dataset.cache_files == first.val_dataset.cache_files
    assert second.train_dataset["input_ids"] == first.train_dataset["input_ids"]
    assert sorted(path.name for path in cache.iterdir()) == files


def test_a_different_max_length_is_a_different_cache_entry(
    tiny_model_dir: Path, tmp_path: Path, train_file: Path
) -> None:
    a = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), max_length=256)
    b = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), max_length=64)
    a.setup("fit")
    b.setup("fit")
    assert a.train_dataset.cache_files != b.train_dataset.cache_files
    assert max(b.train_dataset["length"]) == 64
    assert max(a.train_dataset["length"]) > 64


def test_extra_math_files_add_one_prompt_loader_each_after_the_validation_set(
    tiny_model_dir: Path, tmp_path: Path, train_file: Path
) -> None:
    independent = write_jsonl(tmp_path / "independent.jsonl", arithmetic_rows(5, start=100))
    dm = datamodule(
        tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, extra_math_files={"indep": str(independent)}
    )
    dm.setup("fit")
    assert dm.math_set_names == ["val", "indep"]
    loss_loader, val_loader, indep_loader = dm.val_dataloader()
    questions = sorted(q for batch in indep_loader for q in batch["question"])
    assert questions == sorted(row["messages"][0]["content"] for row in arithmetic_rows(5, start=100))
    assert len(dm.val_dataset) == 10, "the extra set is answered, never added to the validation loss"
    assert dm.math_kinds == ["add_1d", "add_2d"]


def test_extra_math_files_are_skipped_with_math_eval_size_zero(tiny_model_dir: Path, tmp_path: Path, train_file: Path) -> None:
    independent = write_jsonl(tmp_path / "independent.jsonl", arithmetic_rows(5, start=100))
    dm = datamodule(
        tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, math_eval_size=0,
        extra_math_files={"indep": str(independent)},
    )
    dm.setup("fit")
    assert dm.math_set_names == [] and len(dm.val_dataloader()) == 1


@pytest.mark.parametrize("name", ["val", "base", "two words"])
def test_an_extra_math_file_cannot_take_a_reserved_or_invalid_prefix(tiny_model_dir: Path, tmp_path: Path, name) -> None:
    from src.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"data\.extra_math_files"):
        datamodule(tiny_model_dir, tmp_path, extra_math_files={name: "x.jsonl"})


def test_the_longest_reference_answer_is_counted_with_its_end_of_turn(
    fitted: TutorDataModule, tiny_tokenizer, train_file: Path
) -> None:
    answers = {row["messages"][0]["content"]: row["messages"][1]["content"] for row in arithmetic_rows(40)}
    lengths = {item["question"]: len(tiny_tokenizer(answers[item["question"]], add_special_tokens=False)["input_ids"]) + 1
               for item in fitted.math_items}
    longest = fitted.longest_reference_answer
    assert longest["tokens"] == max(lengths.values())
    assert lengths[longest["question"]] == longest["tokens"]
    assert longest["set"] == "val" and str(train_file) in longest["source"]


def test_no_graded_items_means_no_longest_reference_answer(tiny_model_dir: Path, tmp_path: Path, train_file: Path) -> None:
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25, math_eval_size=0)
    dm.setup("fit")
    assert dm.longest_reference_answer is None


def test_a_task_system_turn_opens_every_task_example_and_math_prompt(
    tiny_model_dir: Path, tmp_path: Path, train_file: Path, tiny_tokenizer
) -> None:
    extra = write_jsonl(tmp_path / "extra.jsonl", arithmetic_rows(6))
    dm = datamodule(tiny_model_dir, tmp_path, train_file=str(train_file), val_fraction=0.25,
                    task_system_prompt="Math tutor.", extra_math_files={"indep": str(extra)})
    dm.setup("fit")
    formatter = ChatFormatter(tiny_tokenizer)
    for item in [*dm.math_items, *dm.extra_math_items["indep"]]:
        marked = [{"role": "system", "content": "Math tutor."}, {"role": "user", "content": item["question"]}]
        assert tiny_tokenizer.decode(item["prompt_ids"]) == formatter.prompt_text(marked)
    for ids in [*dm.train_dataset["input_ids"], *dm.val_dataset["input_ids"]]:
        assert "Math tutor." in tiny_tokenizer.decode(ids)

