"""DDP with the gloo backend on two CPU processes runs one surrogate and one generator step."""

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from ulmed.segmentation.config import UnsegConfig
        from ulmed.segmentation.train import BilevelTrainer, build_models

        cfg = UnsegConfig(img_size=32, batch_size=2, rounds=1, backbone_epochs=0, split=None)
        torch.manual_seed(0)  # same initial weights on both ranks
        t = BilevelTrainer(*build_models(cfg), cfg, seed=0, distributed=True)
        g = torch.Generator().manual_seed(rank)  # different data per rank
        images = torch.rand(4, 3, 32, 32, generator=g)
        masks = (torch.rand(4, 1, 32, 32, generator=g) > 0.5).float()
        t.epoch("surrogate", images, masks)
        t.epoch("generator", images, masks)
        torch.save({"surrogate": t.surrogate.state_dict(), "head": t.generator.head.state_dict(), "steps": t.steps},
                   os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gloo_two_processes_one_step(tmp_path):
    ctx = mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 90
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in 90 s")
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert a["steps"] == {"backbone": 0, "surrogate": 1, "generator": 1} == b["steps"]
    for part in ("surrogate", "head"):  # gradients were averaged: the replicas agree
        for k, v in a[part].items():
            assert torch.allclose(v, b[part][k], atol=1e-6), (part, k)
