"""Two-process DDP on CPU (gloo) equals one process with the combined batch (BN-free
nets) — for the optimizers alone and for the whole trainer — and the m-sharpness option
perturbs each process with its own minibatch gradient. One spawn serves all tests."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sdesam.testing import (
    DDP_BATCH,
    DDP_OPTIMIZERS,
    DDP_STEPS,
    LR,
    RHO,
    ddp_equivalence_run,
    flat_parameters,
    tiny_classification_data,
    tiny_classifier,
)
from sdesam.training import TrainConfig, train
from tests.test_data_idx import write_mnist_style
from tests.test_optim import Reference

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

def trainer_config(data_dir, out_dir) -> TrainConfig:
    """Eigen-SAM on a BatchNorm-free ResNet-18 (width 2), global batch 16."""
    return TrainConfig(dataset="fashion_mnist", data_dir=str(data_dir), model="resnet18",
                       model_kwargs={"width": 2, "norm": "none"}, method="eigen_sam", epochs=2,
                       batch_size=16, lr=0.05, p=3, q=2, eval_batch_size=16, threads=1, device="cpu",
                       out_dir=str(out_dir), progress=False)


def _worker(rank, world, init_file, out, data_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        results = {kind: ddp_equivalence_run(kind, rank, world, ddp=True) for kind in DDP_OPTIMIZERS}
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
    mp.spawn(_worker, args=(2, os.fspath(tmp / "init"), out, os.fspath(data_dir)), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("kind", ["sam", "eigen_sam", "egr"])
def test_two_processes_equal_one_with_the_combined_batch(ddp_results, kind):
    single = ddp_equivalence_run(kind)
    for rank in range(2):
        assert torch.allclose(ddp_results[rank][kind], single, rtol=0, atol=1e-12), rank


def test_per_replica_perturbation_is_m_sharpness(ddp_results):
    X, Y = tiny_classification_data(DDP_STEPS * DDP_BATCH)
    net = tiny_classifier()
    x = flat_parameters(net)
    for k in range(DDP_STEPS):
        grads = []
        for r in range(2):                      # each process: its own half's gradient
            rows = slice(k * DDP_BATCH + 4 * r, k * DDP_BATCH + 4 * r + 4)
            ref = Reference(net, X[rows], Y[rows])
            g = ref.grad(x)
            grads.append(ref.grad(x + RHO * g / g.norm()))
        x = x - LR * (grads[0] + grads[1]) / 2  # perturbed gradients averaged
    for rank in range(2):
        assert torch.allclose(ddp_results[rank]["sam_per_replica"], x, rtol=0, atol=1e-12)
    # one process with the combined batch (= synchronised perturbation) is different
    assert not torch.allclose(ddp_equivalence_run("sam_per_replica"), x, rtol=0, atol=1e-6)


def test_trainer_two_processes_equal_one(ddp_results, data_dir, tmp_path):
    threads = torch.get_num_threads()
    try:
        single = train(trainer_config(data_dir, tmp_path / "single"))
    finally:
        torch.set_num_threads(threads)
    params = torch.cat([p.detach().reshape(-1) for p in single.model.parameters()])
    for rank in range(2):
        assert torch.allclose(ddp_results[rank]["trainer"], params, rtol=0, atol=2e-5), rank
        for a, b in zip(ddp_results[rank]["history"], single.history):
            assert a["step"] == b["step"] == 4 * a["epoch"]
            for key in ("train_loss", "test_loss", "test_accuracy"):
                assert a[key] == pytest.approx(b[key], abs=1e-5), key
