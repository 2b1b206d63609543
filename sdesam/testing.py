"""Helpers for tests and checks: a tiny float64 classifier, its data, and a data-parallel run.

- ``tiny_classifier(batch_norm, seed)``: Linear(4, 6) [→ BatchNorm1d(6)] → Tanh →
  Linear(6, 3) in float64, the same weights for the same seed on every machine.
- ``tiny_classification_data(n, seed)``: n standard-normal inputs in R⁴ (float64) with
  uniform labels in {0, 1, 2}.
- ``flat_parameters(module)``: the parameters as one detached flat vector.
- ``ddp_optimizer(kind, net, model)`` and ``ddp_equivalence_run(kind, ...)``: ``DDP_STEPS``
  optimizer steps on ``DDP_BATCH``-example batches, on one process with the whole batch or
  on one rank of a data-parallel group with its share of it. Data-parallel SAM,
  Eigen-SAM and EGR with a synchronised perturbation give the same parameters as one
  process with the combined batch (up to rounding), which is what a caller compares.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .optim import EGR, SAM, EigenSAM

__all__ = ["DTYPE", "LR", "RHO", "DDP_OPTIMIZERS", "DDP_STEPS", "DDP_BATCH", "tiny_classifier",
           "tiny_classification_data", "flat_parameters", "ddp_optimizer", "ddp_equivalence_run"]

DTYPE = torch.float64       #: the dtype of the classifier and its inputs
LR, RHO = 0.1, 0.3          #: step size and perturbation radius of ``ddp_optimizer``
#: the optimizers of ``ddp_optimizer``: SAM, Eigen-SAM and EGR, and SAM with a perturbation per replica
DDP_OPTIMIZERS = ("sam", "eigen_sam", "egr", "sam_per_replica")
DDP_STEPS, DDP_BATCH = 3, 8  #: steps of ``ddp_equivalence_run`` and the combined batch size of each


def tiny_classifier(batch_norm: bool = False, seed: int = 0) -> nn.Module:
    """Linear(4, 6) [→ BatchNorm1d(6)] → Tanh → Linear(6, 3), float64, initialised by
    ``torch.manual_seed(seed)`` inside a forked random state (the caller's global
    random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Linear(4, 6)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(6))
        layers += [nn.Tanh(), nn.Linear(6, 3)]
        return nn.Sequential(*layers).to(DTYPE)


def tiny_classification_data(n: int = 12, seed: int = 1) -> tuple[Tensor, Tensor]:
    """(X, Y): X (n, 4) standard normal in float64, Y (n,) uniform labels in {0, 1, 2}."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=DTYPE), torch.randint(3, (n,), generator=g)


def flat_parameters(module: nn.Module) -> Tensor:
    """The parameters of ``module`` concatenated into one detached flat vector."""
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def ddp_optimizer(kind: str, net: nn.Module, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``kind`` (one of ``DDP_OPTIMIZERS``) on ``net``'s parameters, ``model``
    being ``net`` or its ``DistributedDataParallel`` wrapper.

    ``sam``, ``eigen_sam`` (α = 0.5, p = q = 2) and ``egr``: lr ``LR``, momentum 0.9,
    weight decay 1e-3, radius ``RHO``. ``sam_per_replica``: SAM without momentum or
    weight decay whose perturbation uses each process's own minibatch gradient
    (``sync_perturbation=False``, m-sharpness).
    """
    kw = dict(lr=LR, momentum=0.9, weight_decay=1e-3, model=model)
    if kind == "sam":
        return SAM(net.parameters(), rho=RHO, **kw)
    if kind == "eigen_sam":
        return EigenSAM(net.parameters(), rho=RHO, alpha=0.5, p=2, q=2, **kw)
    if kind == "egr":
        return EGR(net.parameters(), rho=RHO, **kw)
    if kind == "sam_per_replica":
        return SAM(net.parameters(), rho=RHO, lr=LR, momentum=0.0, model=model, sync_perturbation=False)
    raise ValueError(f"kind must be one of {list(DDP_OPTIMIZERS)}, got {kind!r}")


def ddp_equivalence_run(kind: str, rank: int = 0, world: int = 1, ddp: bool = False, device="cpu") -> Tensor:
    """``DDP_STEPS`` steps of ``ddp_optimizer(kind, ...)`` on ``tiny_classifier()`` with the
    cross-entropy loss; returns the final flat parameters on the CPU.

    Step k uses examples k·B … (k + 1)·B − 1 (B = ``DDP_BATCH``) of
    ``tiny_classification_data(DDP_STEPS · B)``, of which this process takes the share of
    ``rank`` among ``world`` (B/world consecutive rows). ``ddp``: wrap the net in
    ``DistributedDataParallel`` (the process group must be initialised; on CUDA the
    device's index is its ``device_ids``). With ``rank=0, world=1, ddp=False``: one process
    with the combined batch.
    """
    device = torch.device(device)
    X, Y = tiny_classification_data(DDP_STEPS * DDP_BATCH)
    X, Y = X.to(device), Y.to(device)
    net = tiny_classifier().to(device)
    if ddp:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(net, device_ids=ids)
    else:
        model = net
    opt = ddp_optimizer(kind, net, model)
    share = DDP_BATCH // world
    for k in range(DDP_STEPS):
        rows = slice(k * DDP_BATCH + rank * share, k * DDP_BATCH + (rank + 1) * share)
        opt.step(lambda: nn.functional.cross_entropy(model(X[rows]), Y[rows]))
    return flat_parameters(net).cpu()
