"""TutorDataModule with `packing=True`: the same examples in the same steps as the padded batches, each
training batch one row with no padding at all (measured on the bundled data sets); validation stays padded."""

from __future__ import annotations

from pathlib import Path

import pytest

from src.data.collate import count_tokens_and_examples
from src.data.datamodule import TutorDataModule

DATA = Path(__file__).resolve().parents[3] / "data"


def datamodule(model_dir: Path, tmp_path: Path, train_file: Path, batch_size: int, packing: bool) -> TutorDataModule:
    dm = TutorDataModule(
        model_name=str(model_dir),
        train_file=str(train_file),
        batch_size=batch_size,
        eval_batch_size=8,
        max_length=384,
        packing=packing,
        cache_dir=str(tmp_path / "cache"),
    )
    dm.setup("fit")
    return dm


def real_token_fraction(dm: TutorDataModule) -> tuple[float, int, list[int]]:
    """(real tokens / computed positions, real tokens, examples per step) over one training epoch."""
    real = computed = 0
    per_step = []
    for batch in dm.train_dataloader():
        tokens, examples = count_tokens_and_examples(batch)
        real += tokens
        computed += batch["input_ids"].numel()
        per_step.append(examples)
    return real / computed, real, per_step


# The batch sizes of the configs that train on these files (smollm2.yaml, phi2.yaml).
@pytest.mark.parametrize(
    "train_file, batch_size",
    [(DATA / "arithmetic" / "train.jsonl", 4), (DATA / "math_tutor" / "math_tutor.jsonl", 2)],
    ids=["arithmetic", "math_tutor"],
)
def test_packing_computes_only_real_tokens_in_the_same_steps(
    tiny_model_dir: Path, tmp_path: Path, train_file: Path, batch_size: int
) -> None:
    padded_fraction, padded_real, padded_steps = real_token_fraction(
        datamodule(tiny_model_dir, tmp_path, train_file, batch_size, packing=False)
    )
    packed_fraction, packed_real, packed_steps = real_token_fraction(
        datamodule(tiny_model_dir, tmp_path, train_file, batch_size, packing=True)
    )
    print(f"{train_file.name}: real-token fraction padded {padded_fraction:.3f}, packed {packed_fraction:.3f}")
    assert packed_steps == padded_steps  # same examples per step, so the same step count and lr schedule
    assert packed_real == padded_real  # no token lost or added
    assert packed_fraction == 1.0 > padded_fraction


def test_validation_batches_stay_padded(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A packed row of eval_batch_size examples would cost its whole length squared in sdpa/eager attention.
    dm = datamodule(tiny_model_dir, tmp_path, DATA / "math_tutor" / "math_tutor.jsonl", 2, packing=True)
    batches = list(dm.loss_dataloader())
    assert all("attention_mask" in batch and "position_ids" not in batch for batch in batches)
    assert [len(batch["input_ids"]) for batch in batches[:-1]] == [8] * (len(batches) - 1)
