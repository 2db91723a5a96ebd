"""What the module and the evaluator rely on in a data module, as `Protocol`s.

`TutorDataModule` satisfies them; a plain `LightningDataModule` does not, and then gets plain behaviour
(one prompt loader graded as `val`, no replay). Checked with `isinstance` (runtime-checkable).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch.utils.data import DataLoader


@runtime_checkable
class HoldsMathSets(Protocol):
    """A data module with held-out math sets that the module answers by generation and grades."""

    math_set_names: list[str]
    math_kinds: list[str]
    longest_reference_answer: dict[str, Any] | None

    def math_dataloader(self, name: str = "val") -> DataLoader: ...


@runtime_checkable
class AcceptsReplay(Protocol):
    """A data module that mixes the base model's own replies to its `replay_prompts`, and to the
    `replay_self_prompts` prompts the base model writes itself, into training."""

    replay_prompts: list[str]
    replay_self_prompts: int

    def add_replay(self, prompts: list[str], replies: list[str]) -> None: ...
