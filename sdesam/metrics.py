"""The training-dynamics metrics of the paper's Figure 2, for a classification problem.

``ClassificationMetrics(problem)(x)`` returns, at parameters x (d,):

| metric            | data                                   | how                                  |
|-------------------|----------------------------------------|--------------------------------------|
| ``train_loss``    | all n training examples                | mean cross-entropy, chunked          |
| ``grad_norm``     | all n training examples                | ‖∇f(x)‖ of the mean training loss     |
| ``test_loss``     | the whole test set                     | mean cross-entropy                   |
| ``test_accuracy`` | the whole test set                     | fraction correct (argmax)            |
| ``param_norm``    | —                                      | ‖x‖ over all trainable parameters     |
| ``top_eigenvalue``| a fixed subset of ``hessian_examples``  | λ₁ of the Hessian of the mean loss   |
|                   | training examples (drawn once, seeded)  | on that subset, by Lanczos           |

The eigenvalue: Lanczos with full reorthogonalisation (``sdesam.curvature.lanczos``)
on Hessian-vector products of the problem's own oracle, from a fixed seeded start
vector, stopped when the top Ritz pair's residual ‖Hy − θy‖ ≤ ``eig_tol``·‖H‖; the
residual bounds the distance from θ to an eigenvalue of H, so the reported λ₁ is
accurate to ``eig_tol`` relative (default 1e-3) or better. The number of products
spent is reported as ``top_eigenvalue_hvps``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_int, check_positive
from .curvature import HessianOperator, lanczos
from .problem import ModuleProblem

__all__ = ["ClassificationMetrics", "FIGURE2_METRICS"]

FIGURE2_METRICS = ("train_loss", "test_loss", "test_accuracy", "param_norm", "grad_norm", "top_eigenvalue")


class ClassificationMetrics:
    """Callable x (d,) → dict of the six Figure 2 metrics (and the eigenvalue's cost).

    Args:
        problem: a ``ModuleProblem`` with test data.
        hessian_examples: size of the fixed training subset for λ₁ (one HVP is one pass
            over the whole subset).
        eig_tol: relative residual tolerance of Lanczos (accuracy of λ₁).
        max_hvps: cap on Lanczos steps.
        seed: seeds the subset and the Lanczos start vector (fixed for the whole run so
            that every recorded step measures the same quantity).
    """

    def __init__(self, problem: ModuleProblem, *, hessian_examples: int = 2048, eig_tol: float = 1e-3,
                 max_hvps: int = 100, seed: int = 0):
        if problem.test is None:
            raise ValueError("ClassificationMetrics needs a problem with test data")
        self.problem = problem
        n_h = min(check_int("hessian_examples", hessian_examples, 1), problem.n_train)
        gen = torch.Generator().manual_seed(seed)
        self.hessian_subset = torch.randperm(problem.n_train, generator=gen)[:n_h]
        self.hessian_problem = problem.subproblem(self.hessian_subset, n_h, name="hessian subset")
        self._all = torch.arange(n_h, device=problem.device)
        self.eig_tol = check_positive("eig_tol", eig_tol)
        self.max_hvps = check_int("max_hvps", max_hvps, 2)
        self._v0 = torch.randn(problem.dim, generator=gen, dtype=torch.float64).to(problem.device)

    def config(self) -> dict:
        return {"hessian_examples": int(self.hessian_subset.numel()), "eig_tol": self.eig_tol,
                "max_hvps": self.max_hvps, "train_examples": self.problem.n_train,
                "test_examples": int(self.problem.test[0].shape[0])}

    def hessian_operator(self, x: Tensor) -> HessianOperator:
        """H of the mean loss over the fixed subset, at x (d,), as a linear operator."""
        return HessianOperator.from_problem(self.hessian_problem, x, self._all)

    def top_eigenvalue(self, x: Tensor):
        """The ``lanczos`` result for λ₁ of the subset Hessian at x."""
        return lanczos(self.hessian_operator(x), k=1, which="LA", tol=self.eig_tol,
                       max_iters=self.max_hvps, v0=self._v0)

    def __call__(self, x: Tensor) -> dict[str, float]:
        train_loss, grad = self.problem.full_loss_and_gradient(x)
        test = self.problem.evaluate(x, "test")
        eig = self.top_eigenvalue(x)
        return {"train_loss": train_loss, "test_loss": test["loss"], "test_accuracy": test["accuracy"],
                "param_norm": float(x.norm()), "grad_norm": float(grad.norm()),
                "top_eigenvalue": float(eig.eigenvalues[0]), "top_eigenvalue_hvps": float(eig.num_matvecs)}
