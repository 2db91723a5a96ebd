"""Keep the LoRA adapter that scored best on math, and the last one, as loadable PEFT folders.

Lightning's `ModelCheckpoint` writes the whole module (frozen base included) into a `.ckpt` that
only Lightning can read back. A tutor is shipped as a PEFT adapter folder, a few MB that
`PeftModel.from_pretrained(base, folder)` loads, so this callback writes exactly that, chosen by math
accuracy rather than by loss: a lower loss often comes with worse arithmetic.

With a `retention_floor`, only validations whose retention (`retain/kept`: the share of the base
model's right general answers the adapter still gives) reaches the floor may become `best/`; a
validation that would have been best but forgot too much is recorded in `passed_over`, so the run
summary can say that the best-math adapter was passed over for retention.

Layout under `dirpath`::

    best/   adapter_model.safetensors, adapter_config.json, tokenizer files, best.json
    last/   the same, with last.json
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from peft import PeftModel

MODES = ("max", "min")


class AdapterCheckpoint(Callback):
    """Save the best adapter (by `monitor`) to `dirpath/best` and the latest to `dirpath/last`.

    Only validations after training started count (`trainer.global_step > 0`): the step-0
    evaluation measures the untouched base model, whose adapter is the identity.

    Each save goes to a hidden sibling folder that is renamed into place once complete, so a save
    that fails half-way (full disk, killed job) leaves the previous `best/` intact.

    Args:
        dirpath: Folder for `best/` and `last/`. None uses `<trainer.log_dir>/adapters`.
        monitor: Logged metric that decides which adapter is best.
        mode: "max" when a higher `monitor` is better (accuracy), "min" when lower is (loss).
        save_last: Also save the current adapter at each training epoch end and at fit end.
        retention_floor: When set, a validation may become best only if `retention_monitor` >= this
            value (e.g. 0.9: the adapter keeps at least 90% of the base model's right answers).
        retention_monitor: Logged metric compared with `retention_floor`.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        monitor: str = "val/math_acc",
        mode: str = "max",
        save_last: bool = True,
        retention_floor: float | None = None,
        retention_monitor: str = "retain/kept",
    ) -> None:
        if mode not in MODES:
            raise ValueError(
                f"AdapterCheckpoint(mode={mode!r}): expected one of {MODES} ('max' for accuracy, 'min' for loss)."
            )
        if retention_floor is not None and not 0.0 <= retention_floor <= 1.0:
            raise ValueError(
                f"AdapterCheckpoint(retention_floor={retention_floor}): expected a share between 0 and 1 of the base "
                "model's right answers to keep (0.9 = 90%), or null for no floor."
            )
        self._dirpath_arg = dirpath
        self.dirpath: Path | None = Path(dirpath) if dirpath is not None else None
        """The resolved folder, set in `setup` when `dirpath` is None."""
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        self.retention_floor = retention_floor
        self.retention_monitor = retention_monitor
        self.passed_over: list[dict[str, Any]] = []
        """Validations that beat the kept best on `monitor` but fell below the retention floor."""
        self.best_score: float | None = None
        self.best_step: int | None = None
        self.best_epoch: int | None = None
        self.best_path: Path | None = None
        self.last_path: Path | None = None
        self._last_saved_step: int | None = None

    @property
    def state_key(self) -> str:
        # Two instances watching different metrics must not overwrite each other's state.
        return self._generate_state_key(monitor=self.monitor, mode=self.mode)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._dirpath_arg is None:
            self.dirpath = Path(trainer.log_dir or trainer.default_root_dir) / "adapters"
        assert self.dirpath is not None
        for name in ("best", "last"):
            _recover(self.dirpath / name)

    # ----------------------------------------------------------------------------- hooks
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0:
            return
        score = self._read_monitor(trainer)
        if not self._improved(score):
            return
        meta = {"monitor": self.monitor, "score": score, "step": trainer.global_step, "epoch": trainer.current_epoch}
        if self.retention_floor is not None:
            retention = self._read_metric(trainer, self.retention_monitor, "retention_monitor")
            if not retention >= self.retention_floor:  # NaN retention never passes
                self._pass_over(trainer, score, retention)
                return
            meta |= {"retention_monitor": self.retention_monitor, "retention": retention,
                     "retention_floor": self.retention_floor}
        path = self._save(trainer, pl_module, "best", meta)
        # Only after a complete save: a failed one must not claim a best that is not on disk.
        self.best_score, self.best_path = score, path
        self.best_step, self.best_epoch = trainer.global_step, trainer.current_epoch

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save_last(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save_last(trainer, pl_module)

    # ----------------------------------------------------------------------------- helpers
    def _read_monitor(self, trainer: Trainer) -> float:
        return self._read_metric(trainer, self.monitor, "monitor")

    def _read_metric(self, trainer: Trainer, name: str, arg: str) -> float:
        metrics = trainer.callback_metrics
        if name not in metrics:
            logged = sorted(metrics) or ["(none)"]
            hint = (
                "(monitor: val/loss with mode: min when no math items are graded)"
                if arg == "monitor"
                else "(retention is logged when the module evaluates the retention set; or drop retention_floor)"
            )
            raise MisconfigurationException(
                f"AdapterCheckpoint({arg}={name!r}) found no such metric after the validation at step "
                f"{trainer.global_step}. Logged metrics: {', '.join(logged)}. Set the `{arg}` init arg of "
                f"AdapterCheckpoint in the config's `trainer.callbacks` to one of them {hint}, or log {name!r} "
                "from the module's validation."
            )
        value = metrics[name]
        return float(value.item() if isinstance(value, torch.Tensor) else value)

    def _pass_over(self, trainer: Trainer, score: float, retention: float) -> None:
        entry = {"step": trainer.global_step, "epoch": trainer.current_epoch, "score": score, "retention": retention,
                 "kept_step": self.best_step, "kept_score": self.best_score}
        self.passed_over.append(entry)
        kept = f"the adapter of step {self.best_step} stays best" if self.best_step is not None else "no adapter is best yet"
        rank_zero_info(
            f"AdapterCheckpoint: the adapter of step {trainer.global_step} has the best {self.monitor} so far "
            f"({score:.4f}) but {self.retention_monitor} = {retention:.4f} is below the floor {self.retention_floor}; "
            f"{kept}."
        )

    @property
    def best_passed_over(self) -> dict[str, Any] | None:
        """The passed-over validation that beats the kept best by most, or None when the kept adapter is
        also the best on `monitor` alone."""
        better = [e for e in self.passed_over if self.best_score is None or self._better(e["score"], self.best_score)]
        if not better:
            return None
        return max(better, key=lambda e: e["score"] if self.mode == "max" else -e["score"])

    def _improved(self, score: float) -> bool:
        if math.isnan(score):
            return False
        if self.best_score is None:
            return True
        return self._better(score, self.best_score)

    def _better(self, score: float, than: float) -> bool:
        return score > than if self.mode == "max" else score < than

    def _save_last(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Epoch end and fit end often fall on the same step: save once.
        if not self.save_last or trainer.global_step == 0 or self._last_saved_step == trainer.global_step:
            return
        meta = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        self.last_path = self._save(trainer, pl_module, "last", meta)
        self._last_saved_step = trainer.global_step

    def _save(self, trainer: Trainer, pl_module: LightningModule, name: str, meta: dict[str, Any]) -> Path:
        assert self.dirpath is not None, "setup() resolves dirpath before any save"
        target = self.dirpath / name
        _write_atomically(pl_module, target, f"{name}.json", meta, _gathered_state(trainer))
        return target

    # ----------------------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best_score": self.best_score,
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
            "best_path": str(self.best_path) if self.best_path else None,
            "last_path": str(self.last_path) if self.last_path else None,
            "retention_floor": self.retention_floor,
            "passed_over": self.passed_over,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict.get("best_score")
        self.best_step = state_dict.get("best_step")
        self.best_epoch = state_dict.get("best_epoch")
        best_path, last_path = state_dict.get("best_path"), state_dict.get("last_path")
        self.best_path = Path(best_path) if best_path else None
        self.last_path = Path(last_path) if last_path else None
        self.passed_over = list(state_dict.get("passed_over", []))


def _staging(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp")


def _retired(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


@rank_zero_only
def _recover(target: Path) -> None:
    """Finish or undo a swap that a crash interrupted: never leave `target` missing if a copy exists."""
    if not target.exists() and _retired(target).is_dir():
        _retired(target).rename(target)
    for leftover in (_staging(target), _retired(target)):
        shutil.rmtree(leftover, ignore_errors=True)


def _gathered_state(trainer: Trainer) -> dict[str, torch.Tensor] | None:
    """Under FSDP each rank holds a shard of the weights: every rank must join this gather (rank 0
    receives the whole state). None under other strategies, where rank 0 already holds everything."""
    if not isinstance(trainer.strategy, FSDPStrategy):
        return None
    state = trainer.strategy.lightning_module_state_dict()
    return {key.removeprefix("model."): value for key, value in state.items()}


@rank_zero_only
def _write_atomically(
    pl_module: LightningModule,
    target: Path,
    meta_name: str,
    meta: dict[str, Any],
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """Save adapter, tokenizer and `meta_name` into a staging folder, then swap it in for `target`."""
    if not isinstance(pl_module.model, PeftModel):
        raise TypeError(
            f"AdapterCheckpoint saves LoRA adapters, but `pl_module.model` is a {type(pl_module.model).__name__}; "
            "saving it would write the full base weights. Wrap the model with `peft.get_peft_model` in "
            "configure_model()."
        )
    staging, retired = _staging(target), _retired(target)
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        # A PeftModel saves only the adapter (safetensors + adapter_config.json), never the frozen base.
        pl_module.model.save_pretrained(staging, state_dict=state_dict, safe_serialization=True)
        tokenizer = getattr(pl_module, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / meta_name).write_text(json.dumps(meta, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # A directory rename cannot replace a non-empty directory, so retire the old one first;
    # `_recover` restores it if the process dies between the two renames.
    shutil.rmtree(retired, ignore_errors=True)
    if target.exists():
        target.rename(retired)
    staging.rename(target)
    shutil.rmtree(retired, ignore_errors=True)
