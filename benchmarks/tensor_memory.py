"""Peak tensor memory of a piece of torch code, counted exactly from its allocations, on any device.

`LiveTensorBytes` is a dispatch mode that sees every tensor an operator returns (forward and backward) and
keeps the bytes of each new storage until that storage is freed (a weak reference to it expires). On the
meta device the code runs at full size without allocating anything, so the peak of a 10 GB loss can be
counted on a laptop; on a real device the same count is the caching allocator's view minus its slack.
Inputs created before the block are not counted: the figure is what the code adds.

    with LiveTensorBytes() as memory:
        loss = f(x); loss.backward()
    memory.peak, memory.largest  # bytes
"""

from __future__ import annotations

from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of the storages alive at once (peak) and of the largest single one, while the mode is on."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.live = 0
        self.peak = 0
        self.largest = 0

    def _collect(self) -> None:
        for key in [key for key, (ref, _) in self._live.items() if ref.expired()]:
            self.live -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self._collect()
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata  # the storage's identity, also on the meta device (no data pointer there)
            if key in self._live:
                continue  # a view of a storage already counted
            size = storage.nbytes()
            self._live[key] = (StorageWeakRef(storage), size)
            self.live += size
            self.largest = max(self.largest, size)
        self.peak = max(self.peak, self.live)
        return out


__all__ = ["LiveTensorBytes"]
