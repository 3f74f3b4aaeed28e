"""Data parallelism against torchrun's environment contract: on several nodes RANK is the
global rank (unique in the job), LOCAL_RANK the process's index on its own node (it picks
the GPU), WORLD_SIZE the number of processes of the whole job. Rank 0 alone writes shared
files; every other process owns a disjoint share of the batches."""
from __future__ import annotations

import datetime

import pytest

from milebench.runner import dist as dist_mod
from milebench.runner.dist import Dist, from_env

NODES, PER_NODE = 2, 8


def torchrun_env(monkeypatch, node: int, local: int) -> None:
    """What torchrun sets for process `local` of node `node` in a NODES x PER_NODE job."""
    env = {"RANK": node * PER_NODE + local, "LOCAL_RANK": local, "WORLD_SIZE": NODES * PER_NODE,
           "LOCAL_WORLD_SIZE": PER_NODE, "GROUP_RANK": node, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29500}
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))


def test_second_node_process_reads_global_and_local_rank(monkeypatch) -> None:
    torchrun_env(monkeypatch, node=1, local=3)
    d = from_env()
    assert (d.rank, d.local_rank, d.world) == (11, 3, 16)
    assert d.device_for("cuda") == "cuda:3"  # its node has GPUs 0..7: the local rank picks one
    assert d.device_for("cpu") == "cpu" and d.device_for("cuda:0") == "cuda:0"  # an explicit device stays
    assert not d.is_main
    assert [i for i in range(40) if d.owns(i)] == [11, 27]  # round-robin by the global rank


def test_only_global_rank_zero_is_main(monkeypatch) -> None:
    # the first process of the second node has LOCAL_RANK 0 but must not merge or write config
    torchrun_env(monkeypatch, node=1, local=0)
    assert from_env().local_rank == 0 and not from_env().is_main
    torchrun_env(monkeypatch, node=0, local=0)
    assert from_env().is_main


def test_every_batch_is_owned_by_exactly_one_process_of_the_job(monkeypatch) -> None:
    owners: dict[int, list[int]] = {}
    for node in range(NODES):
        for local in range(PER_NODE):
            torchrun_env(monkeypatch, node, local)
            d = from_env()
            for i in range(100):
                if d.owns(i):
                    owners.setdefault(i, []).append(d.rank)
    assert sorted(owners) == list(range(100)) and all(len(v) == 1 for v in owners.values())


def test_a_plain_run_is_rank_zero_of_one(monkeypatch) -> None:
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert from_env() == Dist(rank=0, world=1, local_rank=0)


def test_a_rank_outside_the_world_is_refused(monkeypatch) -> None:
    torchrun_env(monkeypatch, node=1, local=3)
    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(RuntimeError, match="RANK=11 is outside WORLD_SIZE=8"):
        from_env()


@pytest.mark.parametrize("device, backend, gpu", [("cpu", "gloo", None), ("cuda", "nccl", 5)])
def test_init_joins_the_group_on_the_local_gpu(monkeypatch, device, backend, gpu) -> None:
    import torch
    import torch.distributed as td

    calls: dict[str, object] = {}
    monkeypatch.setattr(td, "is_initialized", lambda: False)
    monkeypatch.setattr(td, "init_process_group", lambda backend, timeout: calls.update(backend=backend,
                                                                                        timeout=timeout))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.update(gpu=i))
    torchrun_env(monkeypatch, node=1, local=5)
    d = dist_mod.init(device)
    assert d == Dist(rank=13, world=16, local_rank=5)
    assert calls.get("backend") == backend and calls.get("gpu") == gpu
    assert calls["timeout"] >= datetime.timedelta(hours=1)  # ranks wait at the dataset barrier
