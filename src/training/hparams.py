"""`TutorModule`'s hyperparameters: grouped settings typed and checked once, kept as plain dicts.

Plain dicts because `hparams.yaml` and checkpoints must stay plain YAML; the typed settings objects are
rebuilt from them (`settings_of`) where they are read.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from src.evaluation.settings import GenerationSettings, RetentionSettings
from src.models.builder import check_sources
from src.models.loss import check_replay_kl, check_target_masked_kl
from src.models.settings import LoraSettings, OptimizerSettings, settings_dict, settings_of

SETTING_GROUPS = {
    "lora": LoraSettings, "optimizer": OptimizerSettings, "generation": GenerationSettings, "retention": RetentionSettings
}


def check_hparams(hparams: MutableMapping[str, Any]) -> None:
    """Each settings group as a checked plain dict, and the checks that cost nothing (sources, KL weights),
    so a bad value fails when the config is read, before anything is built or written."""
    for name, kind in SETTING_GROUPS.items():
        hparams[name] = settings_dict(settings_of(kind, hparams[name]))
    check_sources(hparams)
    check_replay_kl(hparams["replay_kl"], hparams["packing"])
    check_target_masked_kl(hparams["target_masked_kl"])
