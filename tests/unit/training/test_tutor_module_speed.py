"""TutorModule's speed switches under a real Trainer: packed training takes the padded run's steps with the
same losses and counts the same real tokens and examples; compile and the attention kernel reach the model,
and training steps run their own kernel while generation keeps the loaded one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from conftest import arithmetic_rows, write_jsonl
from src.data.datamodule import TutorDataModule
from src.errors import ConfigurationError
from src.training.tutor_module import TutorModule
from test_tutor_module import make_datamodule, make_module, make_trainer, spy_on_logged

BATCH_SIZE = 4


def fit_two_steps(model_dir: Path, folder: Path, packing: bool) -> tuple[TutorModule, list[float]]:
    folder.mkdir()
    train = write_jsonl(folder / "train.jsonl", arithmetic_rows(40))
    data = TutorDataModule(
        model_name=str(model_dir), train_file=str(train), val_fraction=0.25, batch_size=BATCH_SIZE,
        eval_batch_size=8, math_eval_size=0, packing=packing, cache_dir=str(folder / "cache"),
    )
    L.seed_everything(0)
    module = make_module(model_dir, packing=packing, evaluate_base=False)
    losses = spy_on_logged(module, "train/loss")
    make_trainer(folder, 2).fit(module, datamodule=data)
    return module, losses


def test_packed_training_matches_padded_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    padded, padded_losses = fit_two_steps(tiny_model_dir, tmp_path / "padded", packing=False)
    packed, packed_losses = fit_two_steps(tiny_model_dir, tmp_path / "packed", packing=True)
    assert packed.progress.examples == padded.progress.examples == 2 * BATCH_SIZE  # one row, four examples
    # The padded count is attention_mask.sum(): both count real tokens only, the same ones.
    assert packed.progress.tokens == padded.progress.tokens > 2 * BATCH_SIZE * 20
    # Same examples, same order, same first update: the same losses (the second after one AdamW step).
    assert len(packed_losses) == len(padded_losses) == 2
    torch.testing.assert_close(torch.tensor(packed_losses), torch.tensor(padded_losses), rtol=0, atol=1e-4)


def test_packing_checks_the_model_when_it_is_built(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import src.models.builder as builder

    checked: list[Any] = []
    monkeypatch.setattr(builder, "check_packing_support", checked.append)
    make_module(tiny_model_dir).configure_model()
    assert checked == []
    module = make_module(tiny_model_dir, packing=True)
    module.configure_model()
    assert checked == [module.model]


def test_compile_compiles_each_decoder_layer_in_place(tiny_model_dir: Path) -> None:
    module = make_module(tiny_model_dir, compile=True)
    module.configure_model()
    layers = module.model.get_base_model().model.layers
    assert len(layers) == 2
    # Each layer's forward dispatches to the compiled one in passes with gradient (src/models/compile.py).
    assert all("forward" in vars(layer) and hasattr(layer.forward, "__wrapped__") for layer in layers)
    plain = make_module(tiny_model_dir)
    plain.configure_model()
    assert all("forward" not in vars(layer) for layer in plain.model.get_base_model().model.layers)


def test_attention_kernel_reaches_the_model_and_bad_ones_stop_before_loading(tiny_model_dir: Path) -> None:
    module = make_module(tiny_model_dir, attn_implementation="eager")
    module.configure_model()
    assert module.model.get_base_model().config._attn_implementation == "eager"
    with pytest.raises(ConfigurationError, match="model.attn_implementation='flash'"):
        make_module(tiny_model_dir, attn_implementation="flash").configure_model()


class AttentionKernelLog(L.Callback):
    """Which kernel the first layer's attention ran with (transformers' kernel, whether torch's flash SDPA
    backend was allowed), by phase: training steps or evaluation."""

    def __init__(self) -> None:
        self.used: dict[str, set[tuple[str, bool]]] = {"train": set(), "eval": set()}

    def on_fit_start(self, trainer: L.Trainer, module: TutorModule) -> None:
        attention = module.model.get_base_model().model.layers[0].self_attn
        attention.register_forward_pre_hook(self.record)

    def record(self, attention: torch.nn.Module, args: tuple) -> None:
        kernel = (attention.config._attn_implementation, torch.backends.cuda.flash_sdp_enabled())
        self.used["train" if attention.training else "eval"].add(kernel)


def test_training_steps_run_the_training_kernel_and_validation_the_loaded_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir, attn_implementation="sdpa", train_attn_implementation="sdpa_math",
                         evaluate_base=False)
    log = AttentionKernelLog()
    trainer = make_trainer(tmp_path, -1, [log], max_epochs=1, limit_train_batches=2, precision="bf16-mixed")
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    # Training on SDPA's math backend; validation's loss and generated answers on its flash kernel.
    assert log.used == {"train": {("sdpa", False)}, "eval": {("sdpa", True)}}
    assert module.model.get_base_model().config._attn_implementation == "sdpa"
