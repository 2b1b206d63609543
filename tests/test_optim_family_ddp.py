"""The SAM family under DDP on CPU (gloo, two processes, one spawn), BN-free nets in float64:

- ``sync_perturbation=False`` on N processes is m-SAM with m = N on one process (each
  process's share is one micro-batch) — for SAM and for GSAM, whose Φ is formed per
  process before the average;
- synchronised m-SAM and SVAG equal one process with the combined data (each process
  draws its share of every micro-batch / of both minibatches);
- the trainer with ``svag=2`` on two processes equals one process.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sdesam.optim import GSAM, SAM, WSAM
from sdesam.training import TrainConfig, train
from tests.test_data_idx import write_mnist_style
from tests.test_optim import flat, make_data, make_net

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORLD, STEPS, BATCH, RHO = 2, 3, 8, 0.3
KINDS = ("sam_local", "gsam_local", "msam_sync", "wsam_svag")


def build(kind, net, model, single):
    kw = dict(rho=RHO, lr=0.05, momentum=0.9, weight_decay=1e-3, model=model)
    if kind == "sam_local":
        return SAM(net.parameters(), micro_batches=WORLD, **kw) if single else \
            SAM(net.parameters(), sync_perturbation=False, **kw)
    if kind == "gsam_local":
        return GSAM(net.parameters(), alpha=0.3, micro_batches=WORLD, **kw) if single else \
            GSAM(net.parameters(), alpha=0.3, sync_perturbation=False, **kw)
    if kind == "msam_sync":
        return SAM(net.parameters(), micro_batches=2, **kw)
    return WSAM(net.parameters(), gamma=0.8, svag=2, **kw)


def rows_of(kind, step, rank, world):
    """The rows of the step's data a process holds, in its closure's order: its share of
    every minibatch (two with SVAG), each share cut into its parts."""
    per_step = 2 * BATCH if kind == "wsam_svag" else BATCH
    start = step * per_step
    if kind == "wsam_svag":                     # share of γ₁, then share of γ₂
        share = BATCH // world
        return torch.cat([torch.arange(start + j * BATCH + rank * share, start + j * BATCH + (rank + 1) * share)
                          for j in range(2)])
    share = BATCH // world
    return torch.arange(start + rank * share, start + (rank + 1) * share)


def single_rows(kind, step):
    """One process: the same parts, each the union of the processes' parts."""
    if kind in ("sam_local", "gsam_local"):     # micro-batch r = process r's share
        return torch.cat([rows_of(kind, step, r, WORLD) for r in range(WORLD)])
    per_rank = [rows_of(kind, step, r, WORLD) for r in range(WORLD)]
    parts = 2
    pieces = [torch.cat([rows.chunk(parts)[i] for rows in per_rank]) for i in range(parts)]
    return torch.cat(pieces)


def run(kind, rank=0, world=1):
    X, Y = make_data(STEPS * 2 * BATCH)
    net = make_net(bn=False)
    model = nn.parallel.DistributedDataParallel(net) if world > 1 else net
    opt = build(kind, net, model, single=world == 1)
    for k in range(STEPS):
        rows = rows_of(kind, k, rank, world) if world > 1 else single_rows(kind, k)
        opt.step(opt.split_closure(lambda xb, yb: nn.functional.cross_entropy(model(xb), yb), X[rows], Y[rows]))
    return flat(net)


def trainer_config(data_dir, out_dir) -> TrainConfig:
    return TrainConfig(dataset="fashion_mnist", data_dir=str(data_dir), model="mlp", model_kwargs={"hidden": [8]},
                       method="gsam", svag=2, rho_min=0.01, epochs=1, batch_size=16, lr=0.05, eval_batch_size=16,
                       threads=1, device="cpu", out_dir=str(out_dir), progress=False, augment=False)


def _worker(rank, world, init_file, out, data_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {kind: run(kind, rank, world) for kind in KINDS}
        trained = train(trainer_config(data_dir, f"{out}-run"))
        results["trainer"] = torch.cat([p.detach().reshape(-1) for p in trained.model.parameters()])
        results["history"] = trained.history
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist_style(root / "FashionMNIST" / "raw", n_train=64, n_test=24, seed=5)
    return root


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("ddp")
    out = os.fspath(tmp / "result")
    mp.spawn(_worker, args=(WORLD, os.fspath(tmp / "init"), out, os.fspath(data_dir)), nprocs=WORLD, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("kind", KINDS)
def test_data_parallel_family_equals_one_process(ddp_results, kind):
    single = run(kind)
    for rank in range(WORLD):
        assert torch.allclose(ddp_results[rank][kind], single, rtol=0, atol=1e-12), (kind, rank)
    if kind.endswith("_local"):                 # per-process ε is not the combined batch's
        synced = make_net(bn=False)
        X, Y = make_data(STEPS * 2 * BATCH)
        opt = (SAM if kind == "sam_local" else GSAM)(synced.parameters(), rho=RHO, lr=0.05, momentum=0.9,
                                                    weight_decay=1e-3, model=synced)
        for k in range(STEPS):
            rows = single_rows(kind, k)
            opt.step(lambda: nn.functional.cross_entropy(synced(X[rows]), Y[rows]))
        assert not torch.allclose(flat(synced), single, rtol=0, atol=1e-6)


def test_trainer_svag_two_processes_equal_one(ddp_results, data_dir, tmp_path):
    threads = torch.get_num_threads()
    try:
        single = train(trainer_config(data_dir, tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    params = torch.cat([p.detach().reshape(-1) for p in single.model.parameters()])
    assert single.final["steps"] == 8 and [h["effective_step"] for h in single.history] == [1.0, 2.0, 3.0, 4.0]
    for rank in range(WORLD):
        assert torch.allclose(ddp_results[rank]["trainer"], params, rtol=0, atol=1e-5), rank
        for a, b in zip(ddp_results[rank]["history"], single.history):
            assert a["step"] == b["step"] and a["effective_step"] == b["effective_step"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
