"""Measured peak of tensor memory on CPU, where PyTorch keeps no allocator statistics.

torch's own `MemTracker` (torch.distributed._tools) would do this, but it hooks every parameter's
gradient and refuses models with frozen parameters, i.e. every LoRA model. This counts the storage of
every tensor an operator creates, from creation until Python frees it, plus the storages alive at the
start (weights, optimizer state, the batch).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
    """`with PeakTensorMemory(existing) as m: ...` then `m.peak` (bytes)."""

    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        super().__init__()
        self._live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.current = 0
        self.peak = 0
        for tensor in existing:
            self._track(tensor)

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = size
        self.current += size
        self.peak = max(self.peak, self.current)

        def freed(_: object, key: int = key) -> None:
            self.current -= self._live.pop(key, 0)
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, freed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                self._track(tensor)
        return out


def tensors_of(*objects: torch.nn.Module | torch.optim.Optimizer | dict) -> list[torch.Tensor]:
    """Every tensor already held by modules (parameters, buffers), optimizers (state) and batches."""
    found: list[torch.Tensor] = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            found += [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            found += [t for state in obj.state.values() for t in state.values() if isinstance(t, torch.Tensor)]
        else:
            found += [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]
    return found
