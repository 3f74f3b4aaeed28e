"""Peak extra memory of a block of tensor code, on any device.

CUDA has `max_memory_allocated`; the CPU has no allocator statistics, so this counts the
bytes of every storage that tensor ops create inside the block and that are still alive,
and records the peak. Storages that existed before the block (the model, the cache) are
not counted: the figure is what the block itself adds.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """`with PeakMemory() as pm: ...; pm.peak_bytes` — peak live bytes allocated in the block."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak_bytes = 0
        self._refs: dict[int, int] = {}  # storage address -> tensors alive on it
        self._sizes: dict[int, int] = {}
        self._known: set[int] = set()

    def __enter__(self):
        self.live = self.peak_bytes = 0
        return super().__enter__()

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key]
            self.live -= self._sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage().data_ptr()
            if key in inputs and key not in self._refs:
                continue  # an in-place op or a view of something allocated before the block
            if key not in self._refs:
                self._refs[key] = 0
                self._sizes[key] = t.untyped_storage().nbytes()
                self.live += self._sizes[key]
                self.peak_bytes = max(self.peak_bytes, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._release, key)
        return out
