"""A perturbation rule of your own, run as discrete SAM next to its third-order SDE.

A rule returns the ascent direction ε(x, g, v̂); x̃ = x + ρε is where the gradient is taken.
Defining ``perturbation`` is all it takes: the discrete integrator, the SDEs (through the
Taylor vectors v² = g + ρ∇²f ε + (ρ²/2)∇³f(ε, ε), ε held constant) and the training
optimizer ``sdesam.optim.SAM(..., rule=...)`` all accept it. See docs/rules.md.

Run by the test suite (tests/test_rules.py).
"""
import torch

import sdesam
from sdesam.integrators import Perturbed
from sdesam.perturbations import PerturbationRule
from sdesam.sde import SAMSDE3


class SignSAM(PerturbationRule):
    """ε = sign(g)/√d: every coordinate ascends by the same amount (‖ε‖ = 1 when no g_i = 0)."""

    name = "sign_sam"

    def perturbation(self, g, eigvec=None, x=None):
        return torch.sign(g) / g.shape[-1] ** 0.5


# The toy problem of examples/scripting.py: log-cosh regression, 8 examples in R^3, B = 2.
gen = torch.Generator().manual_seed(0)
A, y = torch.randn(8, 3, generator=gen, dtype=torch.float64), torch.randn(8, generator=gen, dtype=torch.float64)
problem = sdesam.FunctionProblem(
    lambda x, a, b: torch.log(torch.cosh((a * x[..., None, :]).sum(-1) - b)),
    data=(A, y), batch_size=2, x0=torch.ones(3, dtype=torch.float64), name="logcosh")

eta, rho = 0.05, 0.05 ** (1 / 3)
rule = SignSAM()
discrete = Perturbed(problem, eta, rho, rule=rule)                  # x ← x − η ∇f_γ(x + ρ ε_γ)
sde3 = SAMSDE3(problem, eta, rho, rule=rule, n_batches="exact", substeps=2)   # drift −E v², Cov v²

records = sdesam.simulate([discrete, sde3], steps=40, record_every=10, seeds=range(4), progress=False,
                          metrics={"train_loss": lambda x: float(problem.full_loss(x))})
for name in ["perturbed", "sam_sde3"]:
    for step in (0, 40):
        vals = [r["value"] for r in records if r["dynamics"] == name and r["step"] == step]
        print(f"{rule.name} {name:9s} train loss at t = {step * eta:.1f}: {sum(vals) / len(vals):.4f} "
              f"(mean of {len(vals)} seeds)")
