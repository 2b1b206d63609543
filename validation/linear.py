"""Closed-form moments for the linear case: SGD and its Euler–Maruyama SDE on a quadratic.

On the d = 1 least-squares problem f_i(x) = (λ/2)(x − y_i)² (``sdesam.toys.quadratic_problem``)
with exact minibatch expectations, write z = x − ȳ and s² = Var_γ(ȳ_γ) (population
variance over the C(n, B) minibatches). Then g_γ = λ(z − (ȳ_γ − ȳ)) and

    discrete SGD          z_{k+1} = (1 − ηλ) z_k + ηλ(ȳ_γ − ȳ):
                          μ_{k+1} = (1 − ηλ) μ_k,   V_{k+1} = (1 − ηλ)² V_k + η²λ²s²;
    SGD-SDE, Euler–Maruyama with m sub-steps Δt = η/m (dX = −λ(X − ȳ)dt + √η λ s dW):
                          μ ← (1 − λΔt) μ,          V ← (1 − λΔt)² V + ηΔt λ² s²,

with μ = E z, V = Var z. The test functions of the experiment follow:
E x = ȳ + μ, E x² = (ȳ + μ)² + V, E f(x) = (λ/2)(μ² + V + Var_i y_i).
So the weak error of the SDE scheme against SGD is known exactly for every η — a
known answer for the estimation machinery (tests/test_weak_error_machinery.py).
"""
from __future__ import annotations

import numpy as np

from sdesam.toys import GLMProblem

__all__ = ["quadratic_moments", "exact_weak_errors"]


def _constants(problem: GLMProblem):
    if problem.link != "quadratic" or problem.dim != 1 or problem.l2:
        raise ValueError("closed forms need the d = 1 quadratic GLM of sdesam.toys.quadratic_problem")
    a = problem.A[:, 0]
    if not bool((a == a[0]).all()):
        raise ValueError("closed forms need equal features (f_i = (λ/2)(x − y_i)²)")
    lam = float(a[0]) ** 2
    y = (problem.y / a).double()                       # the targets y_i
    batches = problem.enumerate_batches()
    ybar_g = y[batches].mean(-1)
    return lam, float(y.mean()), float(ybar_g.var(unbiased=False)), float(y.var(unbiased=False))


def quadratic_moments(problem: GLMProblem, eta: float, n_steps: int, substeps: int | None = None) -> dict:
    """E g at steps 0..n_steps for g ∈ {coord, sqnorm, loss}: arrays (n_steps + 1,).

    ``substeps=None``: discrete SGD; an integer m: Euler–Maruyama of the SGD SDE.
    """
    lam, ybar, s2, vy = _constants(problem)
    mu, V = float(problem.x0[0]) - ybar, 0.0
    mus, Vs = [mu], [V]
    for _ in range(n_steps):
        if substeps is None:
            mu, V = (1 - eta * lam) * mu, (1 - eta * lam) ** 2 * V + (eta * lam) ** 2 * s2
        else:
            dt = eta / substeps
            for _ in range(substeps):
                mu, V = (1 - lam * dt) * mu, (1 - lam * dt) ** 2 * V + eta * dt * lam * lam * s2
        mus.append(mu)
        Vs.append(V)
    mu, V = np.array(mus), np.array(Vs)
    return {"coord": ybar + mu, "sqnorm": (ybar + mu) ** 2 + V, "loss": 0.5 * lam * (mu * mu + V + vy)}


def exact_weak_errors(problem: GLMProblem, eta: float, horizon: float, substeps: int) -> dict:
    """max_k |E g(x_k) − E g(X_kη)| of the SGD-SDE scheme against SGD, per test function."""
    n = int(round(horizon / eta))
    a, b = quadratic_moments(problem, eta, n), quadratic_moments(problem, eta, n, substeps)
    return {t: float(np.abs(a[t] - b[t]).max()) for t in a}
