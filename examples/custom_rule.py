"""A perturbation rule of your own, run as a discrete method next to its third-order SDE.

A rule returns the ascent direction ε(x, g, v̂); x̃ = x + ρε is where the gradient is taken.
Defining ``perturbation`` is all it takes: the discrete method, the SDEs (through the
Taylor vectors v² = g + ρ∇²f ε + (ρ²/2)∇³f(ε, ε), ε held constant) and the training
optimizer ``sdesam.optim.SAM(..., rule=...)`` all accept it. See docs/rules.md.

Run by the test suite (tests/test_examples.py).
"""
import torch

import sdesam
from sdesam.rules import PerturbationRule


class SignSAM(PerturbationRule):
    """ε = sign(g)/√d: every coordinate ascends by the same amount (‖ε‖ = 1 when no g_i = 0)."""

    def perturbation(self, g, eigvec=None, x=None):
        return torch.sign(g) / g.shape[-1] ** 0.5


# The toy problem of examples/scripting.py: log-cosh regression, 8 examples in R^3, B = 2.
gen = torch.Generator().manual_seed(0)
A, y = torch.randn(8, 3, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)
problem = sdesam.FunctionProblem(
    lambda x, a, b: torch.log(torch.cosh((a * x[..., None, :]).sum(-1) - b)),
    data=(A, y), batch_size=2, x0=torch.ones(3, dtype=torch.float64), name="logcosh")

eta, rho = 0.05, 0.05 ** (1 / 3)
discrete = sdesam.make_dynamics("sam", problem, eta=eta, rho=rho, rule=SignSAM())   # named "sign_sam"
sde3 = sdesam.make_dynamics("sam_sde3", problem, eta=eta, rho=rho, rule=SignSAM(),  # named "sign_sam_sde3"
                            n_batches="exact", substeps=2)
tests = {"loss": problem.full_loss}
ref = sdesam.estimate(discrete, tests, steps=40, record_every=40, trajectories=2048, seed=1)
est = sdesam.estimate(sde3, tests, steps=40, record_every=40, trajectories=2048, seed=2)
for m, name in ((ref, discrete.name), (est, sde3.name)):
    print(f"{name:14s} E loss at t = {40 * eta:.1f}: {m.mean(name)[-1, 0]:.4f} ± {m.se(name)[-1, 0]:.4f}")
