"""Toy problems with closed-form oracles and enumerable minibatches (exact SDE coefficients).

A generalised linear model (GLM) with per-example loss

    f_i(x) = φ(a_iᵀx − y_i) + (λ/2)‖x‖²,        x ∈ R^d, i = 1..n,

and minibatch loss f_γ(x) = mean_{i∈γ} f_i(x). With r_i = a_iᵀx − y_i and ε fixed:

    g_γ          = mean_{i∈γ} φ'(r_i) a_i + λx
    ∇²f_γ ε      = mean_{i∈γ} φ''(r_i) (a_iᵀε) a_i + λε
    ∇³f_γ(ε, ε)  = mean_{i∈γ} φ'''(r_i) (a_iᵀε)² a_i                   (the ridge is quadratic)

so the Taylor vectors v⁰, v¹, v² of docs/math.md §2 (v² = g + ρ∇²f_γ ε + (ρ²/2)∇³f_γ(ε, ε))
cost a few elementwise operations on (*S, B) residuals. ``GLMProblem`` overrides the
generic reverse³-autograd oracles of ``sdesam.problem.Problem`` with these formulas
(tested against ``FunctionProblem``'s autograd path to 1e-12 in float64); the speed-up
is measured by ``python -m benchmarks.toys``.

Links φ: ``"logcosh"`` (log cosh r: robust regression), ``"softplus"`` (log(1 + eʳ):
logistic regression, with a_i ← −y_i a_i and residual offset 0), ``"quadratic"`` (r²/2:
linear least squares, ∇³f = 0; it cannot tell SAM-SDE2 from SAM-SDE3 and serves the
linear-SDE test with a closed-form mean).

The named problems (``TOY_PROBLEMS``; all float64, data from a fixed seed, minibatches
enumerable):

* ``logcosh`` (the default toy of the weak-error experiments): robust regression,
  d = 3, n = 5, B = 3 (C(5, 3) = 10 minibatches), isotropic Gaussian features.
* ``logistic``: logistic regression with a clear top Hessian eigenvector: d = 3, n = 5,
  B = 3, features scaled by (2, 0.6, 0.3) so the Hessian's top eigenvector stays
  close to e₁ with a large eigengap; ridge λ = 0.05 keeps the minimiser finite.
* ``quadratic``: d = 1 least squares (an Ornstein–Uhlenbeck SGD-SDE), for tests.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ._checks import check_choice, check_nonnegative
from .oracles import TaylorVectors, check_order
from .problem import FunctionProblem, Problem
from .rules import get_rule

__all__ = ["GLMProblem", "LINKS", "TOY_PROBLEMS", "make_toy_problem", "logcosh_problem",
           "logistic_problem", "quadratic_problem"]

DTYPE = torch.float64
_LOG2 = math.log(2.0)


# φ and its first three derivatives, elementwise on residuals r ------------------------
def _logcosh(r: Tensor) -> Tensor:
    a = r.abs()                                   # log cosh r = |r| + log(1 + e^{−2|r|}) − log 2
    return a + torch.log1p(torch.exp(-2.0 * a)) - _LOG2


def _logcosh_derivs(r: Tensor, upto: int):
    t = torch.tanh(r)
    s2 = 1.0 - t * t
    return (t, s2, -2.0 * t * s2)[:upto]


def _softplus_derivs(r: Tensor, upto: int):
    s = torch.sigmoid(r)
    d2 = s * (1.0 - s)
    return (s, d2, d2 * (1.0 - 2.0 * s))[:upto]


def _quadratic_derivs(r: Tensor, upto: int):
    return (r, torch.ones_like(r), torch.zeros_like(r))[:upto]


LINKS: dict[str, tuple[Callable[[Tensor], Tensor], Callable]] = {
    "logcosh": (_logcosh, _logcosh_derivs),
    "softplus": (torch.nn.functional.softplus, _softplus_derivs),
    "quadratic": (lambda r: 0.5 * r * r, _quadratic_derivs),
}


class GLMProblem(Problem):
    """f_i(x) = φ(a_iᵀx − y_i) + (λ/2)‖x‖² with closed-form g, Hε and ∇³f(ε, ε).

    Args:
        features: A, shape (n, d) (rows a_i).
        targets: y, shape (n,).
        batch_size: B.
        x0: initial point (d,).
        link: ``"logcosh"``, ``"softplus"`` or ``"quadratic"`` (see ``LINKS``).
        l2: ridge strength λ ≥ 0.
        name: label.

    Oracles take x (*Sx, d) and batch (*Sb, B) broadcasting to S, as every ``Problem``.
    """

    def __init__(self, features: Tensor, targets: Tensor, batch_size: int, x0: Tensor, *,
                 link: str = "logcosh", l2: float = 0.0, name: str | None = None):
        check_choice("link", link, LINKS)
        if features.dim() != 2 or targets.shape != features.shape[:1]:
            raise ValueError(f"features must be (n, d) and targets (n,), got {tuple(features.shape)} "
                             f"and {tuple(targets.shape)}")
        if features.shape[1] != x0.numel():
            raise ValueError(f"features have d={features.shape[1]} columns but x0 has {x0.numel()} entries")
        super().__init__(x0=x0, n_train=features.shape[0], batch_size=batch_size, name=name or f"glm-{link}")
        self.A = features.to(x0)
        self.y = targets.to(x0)
        self.link = link
        self.l2 = check_nonnegative("l2", l2)
        self._phi, self._derivs = LINKS[link]

    def config(self):
        return {**super().config(), "link": self.link, "l2": self.l2}

    def to(self, device=None, dtype=None) -> "GLMProblem":
        """The same problem with its data and x₀ on ``device`` / in ``dtype``."""
        def cast(t):
            return t.to(device=device or t.device, dtype=dtype or t.dtype)
        return GLMProblem(cast(self.A), cast(self.y), self.batch_size, cast(self.x0), link=self.link,
                          l2=self.l2, name=self.name)

    def as_function_problem(self) -> FunctionProblem:
        """The same problem through the generic autograd path (reference for the tests)."""
        phi, l2 = self._phi, self.l2

        def per_example(x, a, y):
            r = (a * x[..., None, :]).sum(-1) - y
            return phi(r) + (0.5 * l2) * (x * x).sum(-1, keepdim=True)

        return FunctionProblem(per_example, (self.A, self.y), self.batch_size, self.x0, name=self.name)

    # -- pieces -----------------------------------------------------------------------
    def _check(self, x: Tensor, batch: Tensor) -> None:
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has last dimension {x.shape[-1]}, expected d={self.dim}")
        if batch.dim() < 1 or batch.shape[-1] != self.batch_size:
            raise ValueError(f"batch must have shape (..., B={self.batch_size}), got {tuple(batch.shape)}")
        torch.broadcast_shapes(x.shape[:-1], batch.shape[:-1])     # raises if incompatible

    @staticmethod
    def _shared(x: Tensor, batch: Tensor) -> bool:
        """Whether N minibatches (N, B) are shared by all points x (M, 1 or N, d): the
        exact-expectation layout, evaluated per example (``_SharedBatches``)."""
        return batch.dim() == 2 and x.dim() == 3 and x.shape[1] in (1, batch.shape[0])

    def _evaluator(self, x: Tensor, batch: Tensor):
        """(r, mean, mean_scaled, dot) for either layout: residuals r, and the maps
        w ↦ mean_{i∈γ} w_i, w ↦ mean_{i∈γ} w_i a_i and v ↦ a_iᵀv on r's shape."""
        self._check(x, batch)
        if self._shared(x, batch):
            sh = _SharedBatches(self, x, batch)
            return sh.r, sh.mean, sh.mean_scaled, sh.dot
        a = self.A[batch]                                  # (*Sb, B, d), never expanded to S
        r = torch.einsum("...bd,...d->...b", a, x) - self.y[batch]
        scaled = a * (1.0 / self.batch_size)
        return (r, lambda w: w.mean(-1), lambda w: torch.einsum("...b,...bd->...d", w, scaled),
                lambda v: torch.einsum("...bd,...d->...b", a, v))

    def _with_shape(self, v: Tensor, x: Tensor, batch: Tensor) -> Tensor:
        S = torch.broadcast_shapes(x.shape[:-1], batch.shape[:-1])
        return v if v.shape[:-1] == S else v.expand(*S, self.dim)

    # -- oracles ----------------------------------------------------------------------
    def loss(self, x, batch):
        r, mean, _, _ = self._evaluator(x, batch)
        out = mean(self._phi(r))
        return out + (0.5 * self.l2) * (x * x).sum(-1) if self.l2 else out

    def full_loss(self, x):
        r = x @ self.A.T - self.y                                 # (*S, n)
        out = self._phi(r).mean(-1)
        return out + (0.5 * self.l2) * (x * x).sum(-1) if self.l2 else out

    def full_gradient(self, x):
        r = x @ self.A.T - self.y
        (d1,) = self._derivs(r, 1)
        g = (d1 @ self.A) / self.n_train
        return g + self.l2 * x if self.l2 else g

    def gradient(self, x, batch):
        r, _, mean_scaled, _ = self._evaluator(x, batch)
        (d1,) = self._derivs(r, 1)
        g = mean_scaled(d1)
        return self._with_shape(g + self.l2 * x if self.l2 else g, x, batch)

    def hvp(self, x, batch, v):
        r, _, mean_scaled, dot = self._evaluator(x, batch)
        _, d2 = self._derivs(r, 2)
        hv = mean_scaled(d2 * dot(v))
        return self._with_shape(hv + self.l2 * v if self.l2 else hv, x, batch)

    def taylor(self, x, batch, rule="sam", rho=0.0, order=2, eigvec=None, components=False, generator=None):
        """g, ε = rule(g) and v^order (docs/math.md §2) in closed form, each (*S, d)."""
        order = check_order(order)
        rho = check_nonnegative("rho", rho)
        rule = get_rule(rule)
        r, _, mean_scaled, dot = self._evaluator(x, batch)
        d1, d2, d3 = self._derivs(r, 3)
        g = mean_scaled(d1)
        if self.l2:
            g = g + self.l2 * x
        g = self._with_shape(g, x, batch)
        eps = rule(g, eigvec, x=x, generator=generator)
        if order == 0:
            return TaylorVectors(v=g, g=g, eps=eps, order=0, rho=rho)
        ae = dot(eps)                                            # a_iᵀε
        if not components:
            # one fused combination: v = g + mean_i w_i a_i, w_i = a_iᵀε (ρφ''(r_i) + ρ²/2 φ'''(r_i) a_iᵀε)
            w = rho * d2
            if order == 2:
                w = torch.addcmul(w, d3, ae, value=0.5 * rho * rho)
            v = g + mean_scaled(w * ae)
            if self.l2:
                v = v + (rho * self.l2) * eps
            return TaylorVectors(v=v, g=g, eps=eps, order=order, rho=rho)
        h = mean_scaled(d2 * ae)
        if self.l2:
            h = h + self.l2 * eps
        if order == 1:
            return TaylorVectors(v=g + rho * h, g=g, eps=eps, order=1, rho=rho, h=h)
        t = mean_scaled(d3 * ae * ae)
        v = g + rho * h + (0.5 * rho * rho) * t
        return TaylorVectors(v=v, g=g, eps=eps, order=2, rho=rho, h=h, t=t)

    # -- diagnostics ------------------------------------------------------------------
    def full_hessian(self, x: Tensor) -> Tensor:
        """∇²f(x) over all n examples, x (*S, d) → (*S, d, d) (small d only)."""
        r = x @ self.A.T - self.y
        _, d2 = self._derivs(r, 2)
        H = torch.einsum("...n,ni,nj->...ij", d2, self.A, self.A) / self.n_train
        return H + self.l2 * torch.eye(self.dim, dtype=x.dtype, device=x.device)

    def hessian(self, x: Tensor, batch: Tensor) -> Tensor:
        """H_γ = ∇²f_γ(x) in closed form, x (*Sx, d) and batch (*Sb, B) → (*S, d, d)
        (used by ``sdesam.eigenpairs``' dense path instead of d Hessian-vector products)."""
        self._check(x, batch)
        a = self.A[batch]
        r = torch.einsum("...bd,...d->...b", a, x) - self.y[batch]
        _, d2 = self._derivs(r, 2)
        H = torch.einsum("...b,...bi,...bj->...ij", d2, a, a) / self.batch_size
        S = torch.broadcast_shapes(x.shape[:-1], batch.shape[:-1])
        H = H.expand(*S, self.dim, self.dim)
        return H + self.l2 * torch.eye(self.dim, dtype=x.dtype, device=x.device) if self.l2 else H


class _SharedBatches:
    """Per-example evaluation of N minibatches shared by M points (exact expectations).

    With membership weights S (N, n), S_γi = 1/B when example i is in minibatch γ, every
    minibatch mean is a product over the n examples, mean_{i∈γ} w_i a_i = (w ⊙ S) A, and
    the residuals r = xAᵀ − y (M, 1 or N, n) are computed once per example. Every array is
    a contiguous (M, N, ·) block: far cheaper than gathering (M, N, B) features when n is
    small, as on the toys.
    """

    def __init__(self, problem: GLMProblem, x: Tensor, batch: Tensor):
        self.A = problem.A
        weights = torch.full(batch.shape, 1.0 / problem.batch_size, dtype=x.dtype, device=x.device)
        self.S = torch.zeros(batch.shape[0], problem.n_train, dtype=x.dtype, device=x.device)
        self.S.scatter_add_(1, batch, weights)
        self.r = x @ problem.A.T - problem.y                   # (M, 1 or N, n)

    def mean(self, w: Tensor) -> Tensor:
        """mean_{i∈γ} w_i: w (M, 1 or N, n) → (M, N)."""
        return (w * self.S).sum(-1)

    def mean_scaled(self, w: Tensor) -> Tensor:
        """mean_{i∈γ} w_i a_i: w (M, 1 or N, n) → (M, N, d)."""
        return (w * self.S) @ self.A

    def dot(self, v: Tensor) -> Tensor:
        """a_iᵀv for every example: v (M, 1 or N, d) or (d,) → (M, 1 or N, n)."""
        return v @ self.A.T


# -- the named toy problems -------------------------------------------------------------
def logcosh_problem(n: int = 5, d: int = 3, batch_size: int = 3, seed: int = 0) -> GLMProblem:
    """Robust regression f_i = log cosh(a_iᵀx − y_i): a_i ~ N(0, I_d), y_i = a_iᵀx* + ξ_i.

    x* = (1, −1, 0.5, …) (cycled), ξ_i ~ N(0, 0.5²), x₀ = 0. Starting at 0 the
    residuals are O(1), where φ'' and φ''' are large (log cosh is quadratic near 0 and
    linear far away), so the third-order drift term ρ²/2 E t is not negligible.
    """
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=gen, dtype=DTYPE)
    xstar = torch.tensor([1.0, -1.0, 0.5], dtype=DTYPE).repeat((d + 2) // 3)[:d]
    y = A @ xstar + 0.5 * torch.randn(n, generator=gen, dtype=DTYPE)
    return GLMProblem(A, y, batch_size, torch.zeros(d, dtype=DTYPE), link="logcosh", name="logcosh")


def logistic_problem(n: int = 5, batch_size: int = 3, seed: int = 1,
                     scales=(2.0, 0.6, 0.3), l2: float = 0.05) -> GLMProblem:
    """Logistic regression with anisotropic features: a clear top Hessian eigenvector ≈ e₁.

    Features z_i ~ N(0, diag(scales)²), labels s_i = sign(z_iᵀw + 0.5 ξ_i) with w = (1, 1, 1),
    loss softplus(−s_i z_iᵀx) + (λ/2)‖x‖²; as a GLM: a_i = −s_i z_i, y_i = 0. x₀ = 0.
    """
    scales = torch.as_tensor(scales, dtype=DTYPE)
    d = scales.numel()
    gen = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, d, generator=gen, dtype=DTYPE) * scales
    s = torch.sign(Z.sum(-1) + 0.5 * torch.randn(n, generator=gen, dtype=DTYPE))
    s[s == 0] = 1.0
    A = -s[:, None] * Z
    return GLMProblem(A, torch.zeros(n, dtype=DTYPE), batch_size, torch.zeros(d, dtype=DTYPE),
                      link="softplus", l2=l2, name="logistic")


def quadratic_problem(targets=(-1.0, 0.0, 0.5, 2.5), batch_size: int = 2, x0: float = 3.0,
                      curvature: float = 1.0) -> GLMProblem:
    """d = 1 least squares f_i = (c/2)(x − y_i)²: SGD is linear and its SDE an OU process.

    With ȳ the mean target and s² = Var_γ(ȳ_γ) over the C(n, B) minibatches, the SGD
    SDE is dX = −c(X − ȳ) dt + √η c s dW, with closed-form mean and variance.
    """
    y = torch.as_tensor(targets, dtype=DTYPE)
    c = math.sqrt(check_nonnegative("curvature", curvature))
    A = torch.full((y.numel(), 1), c, dtype=DTYPE)
    return GLMProblem(A, c * y, batch_size, torch.tensor([x0], dtype=DTYPE), link="quadratic",
                      name="quadratic")


TOY_PROBLEMS: dict[str, Callable[[], GLMProblem]] = {
    "logcosh": logcosh_problem,
    "logistic": logistic_problem,
    "quadratic": quadratic_problem,
}


def make_toy_problem(name: str) -> GLMProblem:
    """A named toy problem (see ``TOY_PROBLEMS``)."""
    check_choice("problem", name, TOY_PROBLEMS)
    return TOY_PROBLEMS[name]()
