"""TutorModule under a real Lightning Trainer on the tiny model: only LoRA trains, the logged gradient
norm is the trainable gradients' norm before clipping, non-finite training stops with a message that
names the fix, checkpoints hold only the adapter and resume at the same step, and the base model is
graded before the first step."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

import src.models.compile as compile_module
import src.models.loss as loss_module
import src.training.tutor_module as tutor_module
from conftest import arithmetic_rows, write_jsonl
from src.callbacks.adapter_checkpoint import AdapterCheckpoint
from src.data.datamodule import TutorDataModule
from src.errors import ConfigurationError
from src.training.divergence import NonFiniteTrainingError
from src.training.tutor_module import TutorModule

CLIP = 1e-3  # far below the gradient norm of a random model, so clipping always acts
MATH_EVAL_SIZE = 2
BATCH_SIZE = 4



TINY_SETTINGS = {
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
    "optimizer": {"learning_rate": 1e-2, "warmup_ratio": 0.0},
    "generation": {"max_new_tokens": 4},
}


def make_module(model_dir: Path, **kwargs: Any) -> TutorModule:
    """A module on the tiny model; a grouped setting given here (e.g. `lora={"use_dora": True}`) adds to the group."""
    groups = {name: values | kwargs.pop(name, {}) for name, values in TINY_SETTINGS.items()}
    return TutorModule(model_name=str(model_dir), **groups, **kwargs)


def make_datamodule(model_dir: Path, folder: Path) -> TutorDataModule:
    train = folder / "train.jsonl"
    if not train.exists():
        write_jsonl(train, arithmetic_rows(40))
    return TutorDataModule(
        model_name=str(model_dir),
        train_file=str(train),
        val_fraction=0.25,
        batch_size=BATCH_SIZE,
        eval_batch_size=8,
        math_eval_size=MATH_EVAL_SIZE,
        cache_dir=str(folder / "cache"),  # module-scoped fixtures run outside the autouse cache fixture
    )


def make_trainer(folder: Path, max_steps: int, callbacks: list[Callback] = (), **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=str(folder),
        callbacks=list(callbacks),
        **kwargs,
    )


def snapshot(module: TutorModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def trainable_names(module: TutorModule) -> set[str]:
    return {name for name, p in module.named_parameters() if p.requires_grad}


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


class Recorder(Callback):
    """What the module looked like at each point of a run."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.hand_norms: list[float] = []
        self.clipped_norms: list[float] = []
        self.base_metrics_at_first_step: dict[str, float] | None = None
        self.lora_at_start: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _trainable_grad_norm(module: TutorModule) -> float:
        grads = [p.grad.double() for p in module.parameters() if p.requires_grad and p.grad is not None]
        return math.sqrt(sum(float(g.pow(2).sum()) for g in grads))

    def on_train_start(self, trainer: L.Trainer, module: TutorModule) -> None:
        self.lora_at_start = {n: p for n, p in snapshot(module).items() if "lora_" in n}

    def on_train_batch_start(self, trainer: L.Trainer, module: TutorModule, batch: Any, batch_idx: int) -> None:
        if not self.steps:
            self.base_metrics_at_first_step = dict(module.base_math_metrics or {})
        self.steps.append(trainer.global_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, module: TutorModule, optimizer: Any) -> None:
        # Callbacks run before the module's own hook; both come before gradient clipping.
        self.hand_norms.append(self._trainable_grad_norm(module))

    def on_train_batch_end(self, trainer: L.Trainer, module: TutorModule, *args: Any) -> None:
        self.clipped_norms.append(self._trainable_grad_norm(module))


def spy_on_logged(module: TutorModule, name: str) -> list[float]:
    values: list[float] = []
    log = module.log

    def spy(key: str, value: Any, *args: Any, **kwargs: Any) -> None:
        if key == name:
            values.append(float(value))
        log(key, value, *args, **kwargs)

    module.log = spy
    return values


@pytest.fixture(scope="module")
def two_steps(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One 2-step fit, recorded: parameters before/after, gradient norms, checkpoint and adapter."""
    folder = tmp_path_factory.mktemp("two-steps")
    L.seed_everything(0)
    module = make_module(tiny_model_dir)
    module.configure_model()  # Trainer.fit calls it again: a no-op
    before = snapshot(module)
    logged_norms = spy_on_logged(module, "train/grad_norm")
    recorder = Recorder()
    checkpoint = ModelCheckpoint(dirpath=folder / "ckpt", filename="{step}", every_n_train_steps=2, save_top_k=-1)
    trainer = make_trainer(
        folder, 2, [recorder, checkpoint, AdapterCheckpoint(dirpath=str(folder / "adapters"))], gradient_clip_val=CLIP
    )
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, folder))
    return {
        "folder": folder,
        "module": module,
        "trainer": trainer,
        "before": before,
        "after": snapshot(module),
        "recorder": recorder,
        "logged_norms": logged_norms,
        "checkpoint": folder / "ckpt" / "step=2.ckpt",
        "adapter": folder / "adapters" / "last",
    }


# ------------------------------------------------------------------------------------ building
@pytest.mark.parametrize("max_new_tokens, warned", [(4, True), (64, False)])
def test_a_generation_budget_shorter_than_a_reference_answer_is_warned_about(
    tiny_model_dir: Path, tmp_path: Path, max_new_tokens: int, warned: bool
) -> None:
    # The reference answers ("3 + 1 = 4.\nRespuesta: 4") take more than 4 tokens and fewer than 64.
    module = make_module(tiny_model_dir, generation={"max_new_tokens": max_new_tokens})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, 1).validate(module, datamodule=make_datamodule(tiny_model_dir, tmp_path), verbose=False)
    cut = [str(w.message) for w in caught if "model.generation.max_new_tokens" in str(w.message)]
    if warned:
        assert len(cut) == 1
        assert f"model.generation.max_new_tokens is {max_new_tokens}" in cut[0] and "train.jsonl" in cut[0]
        assert "Set model.generation.max_new_tokens to at least" in cut[0]
    else:
        assert cut == []


def test_only_lora_parameters_are_trainable(tiny_model_dir: Path) -> None:
    module = make_module(tiny_model_dir)
    assert module.model is None  # nothing heavy before configure_model
    module.configure_model()
    names = trainable_names(module)
    assert names
    assert all("lora_" in name for name in names)
    assert all(p.requires_grad == ("lora_" in n) for n, p in module.named_parameters())
    # r=4 on the 7 linear layers of each of the 2 blocks (hidden 32, kv 16, mlp 64).
    per_block = 4 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 2 + (64 + 32))
    assert sum(p.numel() for p in module.parameters() if p.requires_grad) == 2 * per_block


def test_configure_model_is_idempotent(tiny_model_dir: Path) -> None:
    module = make_module(tiny_model_dir)
    module.configure_model()
    model, tokenizer, formatter = module.model, module.tokenizer, module.formatter
    names = [name for name, _ in module.named_parameters()]
    module.configure_model()
    assert (module.model, module.tokenizer, module.formatter) == (model, tokenizer, formatter)
    assert [name for name, _ in module.named_parameters()] == names


def test_optimizer_receives_only_trainable_parameters(two_steps: dict[str, Any]) -> None:
    module, trainer = two_steps["module"], two_steps["trainer"]
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.parameters() if p.requires_grad}


# ------------------------------------------------------------------------------------ training
def test_fit_changes_only_lora_weights(two_steps: dict[str, Any]) -> None:
    before, after = two_steps["before"], two_steps["after"]
    assert before.keys() == after.keys()
    frozen = [name for name in before if "lora_" not in name]
    assert frozen
    assert all(torch.equal(before[name], after[name]) for name in frozen)
    lora_b = [name for name in before if "lora_B" in name]
    assert all(not before[name].any() for name in lora_b)  # a fresh adapter starts as the identity
    assert all(not torch.equal(before[name], after[name]) for name in lora_b)


def test_trainer_stops_at_max_steps(two_steps: dict[str, Any]) -> None:
    assert two_steps["trainer"].global_step == 2
    assert two_steps["recorder"].steps == [0, 1]
    assert two_steps["module"].progress.examples == 2 * BATCH_SIZE


def test_logged_grad_norm_is_the_trainable_gradient_norm_before_clipping(two_steps: dict[str, Any]) -> None:
    recorder, logged = two_steps["recorder"], two_steps["logged_norms"]
    assert len(logged) == len(recorder.hand_norms) == 2
    for logged_norm, hand_norm, clipped_norm in zip(logged, recorder.hand_norms, recorder.clipped_norms):
        assert logged_norm == pytest.approx(hand_norm, rel=1e-5)
        assert hand_norm > 10 * CLIP
        assert clipped_norm == pytest.approx(CLIP, rel=1e-3)  # clipping happened after the log
    assert float(two_steps["trainer"].callback_metrics["train/grad_norm"]) == pytest.approx(logged[-1], rel=1e-6)


def test_base_model_is_graded_before_the_first_step(two_steps: dict[str, Any]) -> None:
    metrics = two_steps["recorder"].base_metrics_at_first_step
    assert {"val/math_acc", "val/math_acc_strict"} <= metrics.keys()
    assert metrics["val/math_acc_count"] == MATH_EVAL_SIZE
    assert all(0.0 <= metrics[key] <= 1.0 for key in ("val/math_acc", "val/math_acc_strict"))
    assert two_steps["module"].base_math_metrics == metrics


# ------------------------------------------------------------------------------- non-finite guard
@pytest.fixture
def saved_adapter(two_steps: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the adapter folder a previous run saved, as a new run would find it."""
    folder = tmp_path / "adapters"
    shutil.copytree(two_steps["folder"] / "adapters", folder)
    assert (folder / "last" / "adapter_model.safetensors").is_file()
    return folder


def test_nan_loss_stops_training_and_leaves_saved_adapters(
    tiny_model_dir: Path, tmp_path: Path, saved_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss = loss_module.causal_lm_loss
    monkeypatch.setattr(loss_module, "causal_lm_loss", lambda model, batch: real_loss(model, batch) * math.nan)
    saved = folder_bytes(saved_adapter)
    trainer = make_trainer(tmp_path, 2, [AdapterCheckpoint(dirpath=str(saved_adapter))])
    with pytest.raises(NonFiniteTrainingError) as error:
        module = make_module(tiny_model_dir, evaluate_base=False)
        trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    message = str(error.value)
    assert "Training stopped at step 0: the training loss is nan" in message
    assert "model.optimizer.learning_rate=0.01" in message
    assert folder_bytes(saved_adapter) == saved


def test_huge_learning_rate_stops_training_and_leaves_saved_adapters(
    tiny_model_dir: Path, tmp_path: Path, saved_adapter: Path
) -> None:
    saved = folder_bytes(saved_adapter)
    L.seed_everything(0)
    trainer = make_trainer(tmp_path, 5, [AdapterCheckpoint(dirpath=str(saved_adapter))])
    module = make_module(tiny_model_dir, optimizer={"learning_rate": 1e6}, evaluate_base=False)
    with pytest.raises(NonFiniteTrainingError, match=r"Training stopped at step [1-4]: the .* is (nan|inf)") as error:
        trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert "model.optimizer.learning_rate=1000000.0" in str(error.value)
    assert folder_bytes(saved_adapter) == saved


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_holds_only_the_trainable_weights(two_steps: dict[str, Any]) -> None:
    module, path = two_steps["module"], two_steps["checkpoint"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["step=2.ckpt"]
    checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    state = checkpoint["state_dict"]
    assert set(state) == trainable_names(module)
    assert all("lora_" in key for key in state)
    for key, tensor in state.items():
        assert torch.equal(tensor, two_steps["after"][key])
    assert checkpoint["base_math_metrics"] == module.base_math_metrics
    progress = checkpoint["train_progress"]
    assert {k: progress[k] for k in ("tokens", "examples")} == {
        "tokens": module.progress.tokens,
        "examples": 2 * BATCH_SIZE,
    }
    # Written from the last batch's end hooks, before that batch's time is added.
    assert 0 < progress["seconds"] <= module.progress.seconds
    # Smaller than the frozen base alone: no base weight was written.
    base_bytes = sum(p.numel() * p.element_size() for n, p in module.named_parameters() if "lora_" not in n)
    assert path.stat().st_size < base_bytes


def test_resume_continues_at_the_same_step(
    tiny_model_dir: Path, tmp_path: Path, two_steps: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = two_steps["module"]
    module = make_module(tiny_model_dir)
    base_evaluations = []
    monkeypatch.setattr(tutor_module, "measure_base_model", lambda module: base_evaluations.append(1))
    recorder = Recorder()
    trainer = make_trainer(tmp_path, 4, [recorder])
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path), ckpt_path=str(two_steps["checkpoint"]))
    assert recorder.steps == [2, 3]
    assert trainer.global_step == 4
    # The adapter, the base-model score and the progress counters come back from the checkpoint.
    trained = {n: p for n, p in two_steps["after"].items() if "lora_" in n}
    assert recorder.lora_at_start.keys() == trained.keys()
    assert all(torch.equal(recorder.lora_at_start[n], trained[n]) for n in trained)
    assert base_evaluations == []
    assert module.base_math_metrics == first.base_math_metrics
    # Steps 3 and 4 take the epoch's next batches in the same seeded order, not its first ones again.
    order = make_datamodule(tiny_model_dir, tmp_path)
    order.setup("fit")
    first_four = list(order.train_dataloader().batch_sampler)[:4]
    assert module.progress.examples == sum(len(batch) for batch in first_four)


# ------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize(("precision", "base_dtype"), [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_base_weights_take_the_compute_dtype_and_lora_stays_float32(
    tiny_model_dir: Path, tmp_path: Path, precision: str, base_dtype: torch.dtype
) -> None:
    L.seed_everything(0)
    module = make_module(tiny_model_dir)
    trainer = make_trainer(tmp_path, 2, precision=precision)
    before = None

    class Capture(Callback):
        def on_train_start(self, trainer: L.Trainer, module: TutorModule) -> None:
            nonlocal before
            before = snapshot(module)

    trainer.callbacks.append(Capture())
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    frozen = {p.dtype for n, p in module.named_parameters() if not p.requires_grad}
    trainable = {p.dtype for p in module.parameters() if p.requires_grad}
    assert frozen == {base_dtype}
    assert trainable == {torch.float32}
    state = trainer.optimizers[0].state.values()
    assert {s["exp_avg"].dtype for s in state} == {torch.float32}
    lora_b = [n for n in before if "lora_B" in n]
    after = snapshot(module)
    assert all(not torch.equal(before[n], after[n]) for n in lora_b)  # small fp32 updates are not rounded away
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


def test_float32_base_weights_keep_the_stream_in_float32_while_autocast_multiplies_in_bf16(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    L.seed_everything(0)
    module = make_module(tiny_model_dir, base_weights="float32")
    trainer = make_trainer(tmp_path, 2, precision="bf16-mixed")
    seen: dict[str, torch.dtype] = {}

    def record(name: str) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, out: Any) -> None:  # returns None: the output stays
            seen.setdefault(name, (out[0] if isinstance(out, tuple) else out).dtype)
        return hook

    class Capture(Callback):
        def on_train_start(self, trainer: L.Trainer, module: TutorModule) -> None:
            first = module.model.get_base_model().get_decoder().layers[0]
            first.mlp.down_proj.register_forward_hook(record("product"))  # a LoRA-wrapped matrix product
            first.register_forward_hook(record("stream"))  # the residual stream leaving the block

    trainer.callbacks.append(Capture())
    trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert {p.dtype for p in module.parameters() if not p.requires_grad} == {torch.float32}
    assert seen == {"product": torch.bfloat16, "stream": torch.float32}
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())


def test_fused_adamw_with_clipping_under_bf16_stops_before_the_first_step(tiny_model_dir: Path, tmp_path: Path) -> None:
    # Lightning itself would stop at the first step's clipping, with a RuntimeError about unscaling.
    module = make_module(tiny_model_dir, optimizer={"name": "adamw_fused"}, evaluate_base=False)
    trainer = make_trainer(tmp_path, 2, precision="bf16-mixed", gradient_clip_val=1.0)
    with pytest.raises(ConfigurationError, match="adamw_fused with trainer.precision=bf16-mixed"):
        trainer.fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert module.global_step == 0


def test_compiled_training_without_a_cpp_compiler_stops_before_the_base_model_is_evaluated(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compile_module, "cpp_compiler", lambda: None)
    module = make_module(tiny_model_dir, compile=True)
    with torch._dynamo.config.patch(disable=False):  # the suite runs compiled blocks eagerly (tests/conftest.py)
        with pytest.raises(ConfigurationError, match=r"model\.compile=true on the CPU needs a C\+\+ compiler"):
            make_trainer(tmp_path, 2).fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    assert module.base_math_metrics is None and module.global_step == 0
    # Answering runs the blocks eagerly: validating the same module needs no compiler.
    make_trainer(tmp_path, 2).validate(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))


@pytest.mark.parametrize(("precision", "compiled"), [("32-true", False), ("bf16-mixed", True)])
def test_compile_auto_compiles_the_cpu_training_steps_in_bf16_only(
    tiny_model_dir: Path, tmp_path: Path, precision: str, compiled: bool
) -> None:
    module = make_module(tiny_model_dir, compile="auto", evaluate_base=False)
    make_trainer(tmp_path, 1, precision=precision).fit(module, datamodule=make_datamodule(tiny_model_dir, tmp_path))
    layers = module.model.get_base_model().model.layers
    # A compiled layer's forward is the dispatch of src/models/compile.py, set on the instance.
    assert all(("forward" in vars(layer)) is compiled for layer in layers)
