"""With a retention set, a run measures what the adapter keeps of the base model's general answers: the base
before training (logged at step 0, kept in the checkpoint), the adapter at every validation (`retain/*`),
and the run summary says both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from src.callbacks.run_report import RunReport
from src.evaluation.reply_cache import greedy_replies
from src.metrics.retention import normalize
from test_tutor_module import make_datamodule, make_module, make_trainer

PROMPTS = ["What is the capital of France?", "Name a colour.", "¿Cuál es el contrario de «frío»?"]
OPEN = ["Explain in two sentences why the sky is blue.", "Describe a cat."]


def write_retention_folder(folder: Path, tiny_model_dir: Path) -> Path:
    """Checkable items whose accepted answer is the first word the base model replies, so the base is right
    on each, plus one item it cannot answer (its answer is a word no reply holds)."""
    module = make_module(tiny_model_dir)
    module.configure_model()
    with torch.no_grad(), module.model.disable_adapter():
        replies = greedy_replies(module.model, module.tokenizer, module.formatter, PROMPTS, 24)
    words = [normalize(reply).split()[:1] for reply in replies]
    rows = [{"id": f"item-{i}", "lang": "en", "kind": "test", "template": "t", "prompt": p, "answers": w or ["zzz"],
             "rejects": []} for i, (p, w) in enumerate(zip(PROMPTS, words))]
    rows.append({"id": "never", "lang": "en", "kind": "test", "template": "t", "prompt": "Say nothing.",
                 "answers": ["xylophonequartz"], "rejects": []})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkable.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "open.jsonl").write_text("".join(json.dumps({"id": f"o{i}", "lang": "en", "kind": "explain",
                                                            "template": "o", "prompt": p}) + "\n"
                                               for i, p in enumerate(OPEN)), encoding="utf-8")
    return folder


def test_a_run_measures_retention_for_base_and_adapter_and_reports_both(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = write_retention_folder(tmp_path / "retention", tiny_model_dir)
    module = make_module(tiny_model_dir, retention={"dir": str(folder), "eval_size": None})
    report = RunReport(dirpath=str(tmp_path / "report"), sample_questions=[])
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = make_trainer(tmp_path, 3, [report, checkpoints], val_check_interval=3)
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))

    base = module.base_math_metrics
    assert base["retain/acc"] == 0.75 and base["retain/count"] == 4  # three of four items, by construction
    logged = trainer.callback_metrics
    assert {"retain/kept", "retain/kl", "retain/repeat", "retain/acc"} <= set(logged)
    assert float(logged["retain/count"]) == 3  # only the base's right answers are graded
    assert 0.0 <= float(logged["retain/kept"]) <= 1.0 and float(logged["retain/kl"]) >= 0.0

    retention = report.summary["retention"]
    assert retention["base_acc"] == 0.75 and retention["kept"] == float(logged["retain/kept"])
    assert retention["graded"] == 3
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["retention"]
    assert state["base_correct"] == [True, True, True, False]


def test_validate_measures_the_base_from_the_reply_cache_when_no_training_ran(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = write_retention_folder(tmp_path / "retention", tiny_model_dir)
    module = make_module(tiny_model_dir, retention={"dir": str(folder)})
    trainer = make_trainer(tmp_path, 1)
    trainer.validate(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    # A fresh adapter is the base model: it keeps every right answer and is zero KL away.
    assert float(trainer.callback_metrics["retain/kept"]) == 1.0
    assert float(trainer.callback_metrics["retain/kl"]) == 0.0


def test_a_further_retention_set_is_measured_and_reported_under_its_name(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_retention_folder(tmp_path / "retention", tiny_model_dir)
    module = make_module(tiny_model_dir, retention={"dir": str(folder), "eval_size": None,
                                                    "extra_dirs": {"indep": str(folder)}})
    report = RunReport(dirpath=str(tmp_path / "report"), sample_questions=[])
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer = make_trainer(tmp_path, 3, [report, checkpoints], val_check_interval=3)
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))

    assert module.base_math_metrics["retain/indep/acc"] == 0.75
    logged = trainer.callback_metrics
    assert float(logged["retain/indep/count"]) == 3 and float(logged["retain/indep/kept"]) == float(logged["retain/kept"])
    further = report.summary["retention_sets"]["indep"]
    assert further["base_acc"] == 0.75 and further["graded"] == 3
    assert report.summary["retention"]["graded"] == 3  # the main set keeps its own row
    assert "General ability (retention set indep, never trained on): base answers 75.0% of 4 right" in capsys.readouterr().out
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["retention"]
    assert state["sets"]["indep"]["base_correct"] == [True, True, True, False]


def test_the_run_reports_what_measuring_general_ability_cost(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write_retention_folder(tmp_path / "retention", tiny_model_dir)
    module = make_module(tiny_model_dir, retention={"dir": str(folder)})
    report = RunReport(dirpath=str(tmp_path / "report"), sample_questions=[])
    trainer = make_trainer(tmp_path, 4, [report], val_check_interval=2)
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))

    cost = report.summary["retention_cost"]
    assert cost["validations"] == 2  # the adapter at steps 2 and 4, the base model once before
    assert cost["base_s"] > 0 and cost["adapter_s"] > 0
    assert cost["total_s"] == pytest.approx(cost["base_s"] + cost["adapter_s"])
    assert cost["share_of_run"] == pytest.approx(cost["total_s"] / report.summary["duration_s"])
    assert 0 < cost["share_of_run"] < 1
    assert "General-ability measurement: " in capsys.readouterr().out
