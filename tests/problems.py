"""Small float64 problems and independent dense references for the tests.

The references never call the code under test: derivatives come from
``torch.autograd.functional`` on plain functions of a flat vector, or from closed
forms, and expectations from explicit loops over the enumerated minibatches.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from sdesam.problem import FunctionProblem, ModuleProblem

DTYPE = torch.float64


# -- a log-cosh regression with closed-form derivatives ------------------------------
def logcosh_data(n=6, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=DTYPE)
    y = torch.randn(n, generator=g, dtype=DTYPE)
    return A, y


def logcosh_loss(x, a, y):
    """Per-example loss log cosh(aᵀx − y), broadcasting over leading dimensions."""
    return torch.log(torch.cosh((a * x[..., None, :]).sum(-1) - y))


def logcosh_problem(n=6, d=3, batch_size=2, seed=0) -> FunctionProblem:
    A, y = logcosh_data(n, d, seed)
    x0 = torch.linspace(0.5, 1.5, d, dtype=DTYPE)
    return FunctionProblem(logcosh_loss, (A, y), batch_size, x0, name="logcosh")


class LogCoshReference:
    """Closed-form g, H·v, ∇³f(u, v) of f_γ(x) = mean_{i∈γ} log cosh(a_iᵀx − y_i)."""

    def __init__(self, A, y):
        self.A, self.y = A, y

    def _r(self, x, idx):
        return self.A[idx] @ x - self.y[idx]

    def grad(self, x, idx):
        return (torch.tanh(self._r(x, idx))[:, None] * self.A[idx]).mean(0)

    def hess(self, x, idx):
        s2 = 1 / torch.cosh(self._r(x, idx)) ** 2
        a = self.A[idx]
        return (s2[:, None, None] * a[:, :, None] * a[:, None, :]).mean(0)

    def third(self, x, idx, u, v):
        r = self._r(x, idx)
        d3 = -2 * torch.tanh(r) / torch.cosh(r) ** 2
        a = self.A[idx]
        return ((d3 * (a @ u) * (a @ v))[:, None] * a).mean(0)


# -- a tiny GeLU MLP -------------------------------------------------------------------
def tiny_mlp(seed=0, activation=nn.GELU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), activation(), nn.Linear(4, 2)).to(DTYPE)


def tiny_mlp_problem(oracle="auto", n=10, batch_size=3, seed=0, activation=nn.GELU) -> ModuleProblem:
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 3, generator=g, dtype=DTYPE)
    Y = torch.randint(2, (n,), generator=g)
    return ModuleProblem(tiny_mlp(seed, activation), "cross_entropy", X, Y, batch_size, oracle=oracle,
                         dtype=DTYPE)


def wide_mlp_problem(n=14, batch_size=3, seed=0, flatten=False, **kwargs) -> ModuleProblem:
    """A GeLU MLP 7-5-3 whose first layer has more inputs than B (input-span coordinates
    apply); ``flatten``: inputs (n, 1, 7) through an ``nn.Flatten`` first."""
    torch.manual_seed(seed)
    layers = [nn.Linear(7, 5), nn.GELU(), nn.Linear(5, 3)]
    model = nn.Sequential(*([nn.Flatten()] if flatten else []), *layers).to(DTYPE)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 7, generator=g, dtype=DTYPE)
    Y = torch.randint(3, (n,), generator=g)
    return ModuleProblem(model, "cross_entropy", X[:, None, :] if flatten else X, Y, batch_size, dtype=DTYPE,
                         **kwargs)


def flat_batch_loss(problem: ModuleProblem, idx):
    """x ↦ f_γ(x) rebuilt independently with ``functional_call`` (no oracle code)."""
    names = [n for n, _ in problem.model.named_parameters()]
    shapes = [p.shape for _, p in problem.model.named_parameters()]
    sizes = [s.numel() for s in shapes]
    X, Y = problem.inputs[idx], problem.targets[idx]

    def f(x):
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(x, sizes), shapes)}
        out = torch.func.functional_call(problem.model, params, (X,))
        return nn.functional.cross_entropy(out, Y)
    return f


def dense_derivatives(f, x):
    """(g, H, T) of a scalar function of a flat vector, by torch.autograd.functional."""
    g = torch.autograd.functional.jacobian(f, x)
    H = torch.autograd.functional.hessian(f, x, vectorize=True)
    T = torch.autograd.functional.jacobian(
        lambda z: torch.autograd.functional.hessian(f, z, create_graph=True, vectorize=True), x, vectorize=True)
    return g, H, T


def all_batches(n, B):
    return [list(c) for c in itertools.combinations(range(n), B)]


def dense_hessian_of_concatenated(model, loss_fn, batches):
    """Independent dense Hessian of the mean loss over the CONCATENATED data of
    ``batches`` (so an operator's batch weighting is checked, not reused)."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])

    def f(flat):
        chunks = torch.split(flat, [p.numel() for p in params])
        pd = {n: c.view_as(p) for n, c, p in zip(names, chunks, params)}
        return loss_fn(torch.func.functional_call(model, pd, (x,)), y)

    return torch.autograd.functional.hessian(f, torch.cat([p.reshape(-1) for p in params]))


# -- toys whose minibatch gradients are exact top eigenvectors (Corollary 4.1.1) ---------
def aligned_problem(delta=0.0, n=4, d=3, seed=3) -> FunctionProblem:
    """B = 1, f_i(x) = ¼‖x − c_i‖⁴ + δ·bᵀx (a radial quartic per example).

    With z = x − c_i: ∇f_i = ‖z‖²z and ∇²f_i = ‖z‖²I + 2zzᵀ, whose top eigenvector is ẑ
    (λ₁ = 3‖z‖², gap 2‖z‖²): with δ = 0 every u_γ is v₁ exactly. δ tilts the gradient
    by O(δ) without moving H, and ∇³f_i[v₁, a] = 2‖z‖a ≠ 0 for a ⊥ v₁, so Eq. 5/6 leave
    SAM-SDE3 at first order in δ."""
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(n, d, generator=g, dtype=DTYPE)
    b = torch.randn(d, generator=g, dtype=DTYPE)

    def loss(x, c):
        z = x[..., None, :] - c
        return 0.25 * (z * z).sum(-1) ** 2 + delta * (b * x).sum(-1, keepdim=True)
    x0 = torch.linspace(0.4, -0.6, d, dtype=DTYPE)
    return FunctionProblem(loss, (C,), 1, x0, name=f"radial-quartic(delta={delta})")


def rank_one_problem(delta=0.0, n=4, d=3, seed=3) -> FunctionProblem:
    """B = 1, f_i(x) = softplus(w_iᵀx) + (δ/2) xᵀCx with C = diag(1, 2, …, d).

    With δ = 0 the gradient softplus'(w_iᵀx)·w_i and the rank-one Hessian
    softplus''(w_iᵀx)·w_iw_iᵀ both lie along w_i: every u_γ is ±v₁. Here the first-order
    effect of δ on Eq. 5/6 − SAM-SDE3 cancels (unit vectors tilted by θ change w_iᵀv by
    O(θ²), and H₀ annihilates the tilt), so the differences are O(δ²)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=DTYPE)
    c = torch.arange(1, d + 1, dtype=DTYPE)

    def loss(x, w):
        return (torch.nn.functional.softplus((w * x[..., None, :]).sum(-1))
                + (0.5 * delta) * (c * x * x).sum(-1, keepdim=True))
    x0 = torch.linspace(0.4, -0.6, d, dtype=DTYPE)
    return FunctionProblem(loss, (W,), 1, x0, name=f"rank-one(delta={delta})")
