"""TutorModule on a 4-bit base under a real Trainer on CPU: the base model is graded, only LoRA trains with
the configured 8-bit optimizer, and the saved adapter reloads with plain PEFT onto a fresh nf4 base."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import lightning as L
import pytest
import torch
from peft import PeftModel

from src.callbacks.adapter_checkpoint import AdapterCheckpoint
from src.errors import ConfigurationError
from src.models.loading import load_base_model
from test_tutor_module import make_datamodule, make_module, make_trainer, snapshot


@pytest.fixture(scope="module")
def qlora_fit(tiny_nf4_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("qlora")
    L.seed_everything(0)
    module = make_module(tiny_nf4_model_dir, quantization="nf4", optimizer={"name": "paged_adamw_8bit"}, gradient_checkpointing=True)
    module.configure_model()
    before = snapshot(module)
    adapters = AdapterCheckpoint(dirpath=str(folder / "adapters"), monitor="val/loss", mode="min")
    trainer = make_trainer(folder, 2, [adapters])
    trainer.fit(module, datamodule=make_datamodule(tiny_nf4_model_dir, folder))
    return {"module": module, "trainer": trainer, "before": before, "adapters": folder / "adapters"}


def test_the_base_is_4bit_and_the_optimizer_is_bitsandbytes(qlora_fit) -> None:
    module, trainer = qlora_fit["module"], qlora_fit["trainer"]
    base = module.model.get_base_model()
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in base.modules()) == 14
    assert isinstance(trainer.optimizers[0], bnb.optim.PagedAdamW8bit)
    assert base.is_gradient_checkpointing


def test_the_base_model_is_graded_before_training(qlora_fit) -> None:
    metrics = qlora_fit["module"].base_math_metrics
    assert metrics is not None and metrics["val/math_acc_count"] == 2


def test_only_lora_moved(qlora_fit) -> None:
    module, before = qlora_fit["module"], qlora_fit["before"]
    after = snapshot(module)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all("lora_" in n for n in moved)
    assert all("lora_B" in n or "lora_A" in n for n in moved)
    assert torch.isfinite(torch.tensor(float(qlora_fit["trainer"].callback_metrics["train/loss"])))


def test_the_saved_adapter_reloads_onto_a_fresh_nf4_base(qlora_fit, tiny_nf4_model_dir: Path) -> None:
    module = qlora_fit["module"]
    fresh_base = load_base_model(str(tiny_nf4_model_dir), quantization="nf4")
    reloaded = PeftModel.from_pretrained(fresh_base, qlora_fit["adapters"] / "last")
    trained = {n.replace(".default", ""): p for n, p in module.model.named_parameters() if "lora_" in n}
    loaded = {n.replace(".default", ""): p for n, p in reloaded.named_parameters() if "lora_" in n}
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[n].cpu(), loaded[n]) for n in trained)


def test_an_impossible_setting_stops_before_the_model_loads(tiny_nf4_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import src.models.quantization as quantization
    import src.models.builder as builder

    monkeypatch.setattr(quantization, "bitsandbytes_installed", lambda: False)
    monkeypatch.setattr(builder, "load_base_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigurationError, match=r"^model.quantization: int8 needs the bitsandbytes package"):
        make_trainer(tmp_path, 1).fit(make_module(tiny_nf4_model_dir, quantization="int8"),
                                      datamodule=make_datamodule(tiny_nf4_model_dir, tmp_path))
