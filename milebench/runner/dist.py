"""Data parallelism over processes (torchrun): each rank runs a disjoint share of the batches.

Batches, not single samples, are dealt out round-robin: a batch holds the same samples
whatever the number of processes, so every prediction is computed with the same padding and
the merged result equals a one-process run exactly. Ranks meet at a barrier after each
dataset; rank 0 then merges through the shared output folder (on several machines the output
dir must be on a shared filesystem, as for any checkpointing job).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    """This process's place in the run; a plain run is rank 0 of 1, so the loop has one code
    path whether torchrun launched it or not."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes shared files (config, merged predictions, scores)."""
        return self.rank == 0

    def owns(self, batch_index: int) -> bool:
        """Round-robin over batch indices: disjoint shares that together cover every batch, decided
        without any communication."""
        return batch_index % self.world == self.rank

    def barrier(self) -> None:
        """Wait for every rank (a no-op alone), so rank 0 merges only once all partial files are
        complete."""
        if self.world > 1:
            import torch.distributed as td

            td.barrier()

    def device_for(self, device: str) -> str:
        """One GPU per local rank when the device is plain `cuda`."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world > 1 else device


def from_env() -> Dist:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (a plain run is rank 0 of 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < world:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return Dist(rank=rank, world=world, local_rank=local)


def init(device: str, timeout_hours: float = 12.0) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA). The
    timeout is long because a rank waits at the dataset barrier while others finish."""
    dist = from_env()
    if dist.world > 1:
        import torch
        import torch.distributed as td

        if not td.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(dist.local_rank)
            td.init_process_group(backend=backend, timeout=datetime.timedelta(hours=timeout_hours))
    return dist


def shutdown() -> None:
    """Leave the process group if one was joined, so torchrun's processes exit cleanly."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        td.destroy_process_group()
