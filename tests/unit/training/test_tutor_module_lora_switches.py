"""The learning-per-FLOP switches reach PEFT through the module's own arguments: each builds the model
PEFT documents for it and trains a tiny model for a step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.errors import ConfigurationError
from test_tutor_module import make_datamodule, make_module, make_trainer, snapshot


def fit_two_steps(module, model_dir: Path, folder: Path) -> None:
    make_trainer(folder, 2).fit(module, datamodule=make_datamodule(model_dir, folder))


def test_rslora_scales_the_update_by_alpha_over_root_r(tiny_model_dir: Path) -> None:
    module = make_module(tiny_model_dir, lora={"r": 4, "alpha": 8, "use_rslora": True})
    module.configure_model()
    layer = next(m for m in module.model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict))
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)


def test_dora_adds_magnitude_vectors_and_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir, lora={"use_dora": True})
    module.configure_model()
    magnitudes = [n for n, p in module.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert magnitudes
    before = snapshot(module)
    fit_two_steps(module, tiny_model_dir, tmp_path)
    after = snapshot(module)
    assert any(not torch.equal(before[n], after[n]) for n in magnitudes)


def test_pissa_initialisation_moves_the_principal_part_into_the_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir, lora={"init": "pissa_niter_2"})
    module.configure_model()
    lora_b = [p for n, p in module.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # PiSSA's B is not zero, unlike the default init
    fit_two_steps(module, tiny_model_dir, tmp_path)


def test_loraplus_gives_b_its_ratio_of_the_learning_rate(tiny_model_dir: Path, tmp_path: Path) -> None:
    module = make_module(tiny_model_dir, optimizer={"learning_rate": 1e-3, "loraplus_lr_ratio": 16.0})
    trainer = make_trainer(tmp_path, 1)
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    names = {id(p): n for n, p in module.named_parameters()}
    rates = {
        "B" if any("lora_B" in names[id(p)] for p in g["params"]) else "A": g["initial_lr"]
        for g in trainer.optimizers[0].param_groups
        if g["params"] and any("lora_A" in names[id(p)] or "lora_B" in names[id(p)] for p in g["params"])
    }
    assert rates == {"A": pytest.approx(1e-3), "B": pytest.approx(16e-3)}


def test_pissa_with_dora_is_refused_before_the_model_loads(tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="model.lora.init: pissa_niter_4 with model.lora.use_dora: true"):
        make_module(tiny_model_dir, lora={"init": "pissa_niter_4", "use_dora": True}).configure_model()
