"""Scripting with sdesam: a Problem, discrete SAM and SAM-SDE3 side by side, tidy records.

This file is shown in the README and run by the test suite (tests/test_readme_example.py).
"""
import torch

import sdesam

# A toy problem: log-cosh regression on 8 examples in R^3, minibatches of B = 2.
g = torch.Generator().manual_seed(0)
A, y = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
problem = sdesam.FunctionProblem(
    lambda x, a, b: torch.log(torch.cosh((a * x[..., None, :]).sum(-1) - b)),   # per-example loss
    data=(A, y), batch_size=2, x0=torch.ones(3, dtype=torch.float64), name="logcosh")

eta, rho = 0.05, 0.05 ** (1 / 3)                                               # ρ = η^{1/3}
sam = sdesam.make_dynamics("sam", problem, eta=eta, rho=rho)
sde3 = sdesam.make_dynamics("sam_sde3", problem, eta=eta, rho=rho, n_batches="exact", substeps=4)

records = sdesam.simulate(
    [sam, sde3], steps=40, record_every=10, seeds=range(4), progress=False,
    metrics={"train_loss": lambda x: float(problem.full_loss(x)),
             "param_norm": lambda x: float(x.norm())},
    out="runs/scripting/records.csv")                                        # streamed as produced

for name in ["sam", "sam_sde3"]:
    final = [r["value"] for r in records
             if r["dynamics"] == name and r["metric"] == "train_loss" and r["step"] == 40]
    print(f"{name:9s} train loss at t = {40 * eta:.1f}: {sum(final) / len(final):.4f} (mean of {len(final)} seeds)")
