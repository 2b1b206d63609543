"""The Figure 2 problem for the weak-error experiment: a GeLU MLP on MNIST.

``sdesam.models.MLP`` (784-h-10, exact GeLU) wrapped in ``sdesam.problem.ModuleProblem``
(cross-entropy, Taylor-mode oracles), with Monte Carlo SDE expectations over K
minibatches per Euler sub-step. Two documented configurations (``MLP_CONFIGS``):

* ``quick-cpu``: hidden width 32 (d = 25,450), a fixed random subset of 2,048
  training images, B = 32, K = 4, T = 0.16, one Euler sub-step (m = 1, which
  understates the SDE error: docs/weak_error.md, ablation), M = 8,192 trajectories
  (128 chunks of 64, 1,024 bootstrap blocks of 8: what resolves SAM-SDE3's ‖x‖² error at
  η ≤ 0.04 at ≥ 3 SEs in about 15 min on 2 cores). Each SDE sub-step of a chunk is one
  batched oracle call of 64 × 4 (trajectory, minibatch) pairs (``ModuleProblem``'s
  block path); run time and what it resolves: docs/weak_error.md, section 6.
* ``gpu``: the paper's 784-784-10 network (d = 623,290) on all 60,000 training
  images, B = 128, K = 8, m = 4, η grid 0.04 … 0.005 around the paper's η = 0.01,
  T = 0.64, M = 256. Not run here (no GPU was lent to this task).

Data: ``--dataset mnist`` loads MNIST with ``sdesam.data.load_mnist`` (pixels/255,
flattened); ``--dataset synthetic`` uses random MNIST-shaped tensors (uniform pixels,
uniform labels) for development and tests — results on it are labelled
``mlp-synthetic`` and are not MNIST results.

Test functions: the mean cross-entropy on a fixed evaluation subset of the training
images (``eval_examples``; the full 60k set per trajectory and step would dominate the
cost), ‖x‖², and one coordinate of x.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor

from sdesam._checks import check_choice
from sdesam.data import load_mnist
from sdesam.models import MLP
from sdesam.problem import ModuleProblem

from sdesam.montecarlo import standard_tests

__all__ = ["MLPConfig", "MLP_CONFIGS", "mlp_problem", "mlp_test_functions", "load_images"]


@dataclass(frozen=True)
class MLPConfig:
    """Everything that defines the MLP experiment besides the sweep grids."""

    hidden: int = 784
    n_train: int | None = None        # None: all training images
    batch_size: int = 128
    n_batches: int = 8                # K
    eval_examples: int = 1024
    etas: tuple[float, ...] = (0.04, 0.02, 0.01, 0.005)
    horizon: float = 0.64
    c: float = 0.93                   # ρ = 0.2 at η = 0.01 (the paper's Figure 2)
    substeps: int = 4                 # Euler–Maruyama sub-steps m per η
    record_every: int = 4
    n_chunks: int = 8
    chunk_size: int = 32
    blocks_per_chunk: int = 4
    dtype: str = "float32"
    model_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


MLP_CONFIGS = {
    "quick-cpu": MLPConfig(hidden=32, n_train=2048, batch_size=32, n_batches=4, eval_examples=512,
                           etas=(0.08, 0.04, 0.02, 0.01), horizon=0.16, record_every=2, substeps=1,
                           n_chunks=128, chunk_size=64, blocks_per_chunk=8),
    "gpu": MLPConfig(),
}


def load_images(dataset: str, data_dir=None, synthetic_n: int = 4096, seed: int = 0):
    """(train_inputs (n, 784) float in [0, 1], train_labels (n,) int64, source label)."""
    check_choice("dataset", dataset, {"mnist", "synthetic"})
    if dataset == "synthetic":
        gen = torch.Generator().manual_seed(seed)
        images = torch.randint(0, 256, (synthetic_n, 28, 28), generator=gen, dtype=torch.uint8)
        labels = torch.randint(0, 10, (synthetic_n,), generator=gen)
        return images.reshape(synthetic_n, -1).float() / 255.0, labels, "synthetic (random MNIST-shaped tensors)"
    splits = load_mnist(data_dir)
    X = splits.train_images.reshape(splits.train_images.shape[0], -1).float() / 255.0
    return X, splits.train_labels.long(), "MNIST training set (sdesam.data.load_mnist)"


def mlp_problem(config: MLPConfig, dataset: str = "synthetic", *, data_dir=None, device="cpu",
                subset_seed: int = 0) -> tuple[ModuleProblem, Tensor, Tensor, str]:
    """The problem, the evaluation inputs/targets for the loss test function, and the data source.

    The training set is the first ``n_train`` images of a fixed permutation (seed
    ``subset_seed``) of the full set; the evaluation subset is the first
    ``eval_examples`` of those.
    """
    dtype = getattr(torch, config.dtype)
    X, Y, source = load_images(dataset, data_dir, synthetic_n=config.n_train or 4096, seed=subset_seed)
    n = X.shape[0] if config.n_train is None else min(config.n_train, X.shape[0])
    perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(subset_seed))[:n]
    X, Y = X[perm], Y[perm]
    torch.manual_seed(config.model_seed)
    model = MLP(784, (config.hidden,), 10, activation="gelu")
    problem = ModuleProblem(model, "cross_entropy", X, Y, config.batch_size, dtype=dtype, device=device,
                            name=f"mlp-{dataset}")
    ev = min(config.eval_examples, n)
    return problem, problem.inputs[:ev], problem.targets[:ev], source


def mlp_test_functions(problem: ModuleProblem, eval_inputs: Tensor, eval_targets: Tensor,
                       coordinate: int = -1) -> dict:
    """{"loss", "sqnorm", "coord"}: functions of x (M, d) → (M,) (``standard_tests``); the loss
    over the evaluation examples (the first ``len(eval_inputs)`` training examples)."""
    n = eval_inputs.shape[0]
    if not (torch.equal(problem.inputs[:n], eval_inputs) and torch.equal(problem.targets[:n], eval_targets)):
        raise ValueError("the evaluation examples must be the first training examples of the problem")
    return standard_tests(problem, coordinate, eval_examples=torch.arange(n, device=problem.device))


def with_overrides(config: MLPConfig, **overrides) -> MLPConfig:
    """``config`` with the non-None overrides applied."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
