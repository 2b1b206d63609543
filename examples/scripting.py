"""Scripting with sdesam: a Problem, discrete SAM next to SAM-SDE2 and SAM-SDE3, and the
Monte Carlo estimator's mean ± standard error of test functions over time.

This file is shown in the README and run by the test suite (tests/test_examples.py).
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
sdes = [sdesam.make_dynamics(name, problem, eta=eta, rho=rho, n_batches="exact", substeps=4)
        for name in ("sam_sde2", "sam_sde3")]          # exact expectations over all 28 minibatches

tests = {"loss": problem.full_loss, "sqnorm": lambda x: (x * x).sum(-1)}      # x (M, d) -> (M,)
# 2,048 trajectories each, in chunks of 1,024 advanced together; SAM with its own seed,
# the SDEs sharing theirs (common random numbers); resumable files in runs/scripting/.
ref = sdesam.estimate(sam, tests, steps=40, record_every=10, trajectories=2048, seed=1,
                      out="runs/scripting/sam")
est = sdesam.estimate(sdes, tests, steps=40, record_every=10, trajectories=2048, seed=2,
                      out="runs/scripting/sdes")

print("step   E loss: discrete SAM      SAM-SDE2             SAM-SDE3")
for r, step in enumerate(est.steps):
    cells = [f"{m.mean(name)[r, 0]:.4f} ± {m.se(name)[r, 0]:.4f}"
             for m, name in ((ref, "sam"), (est, "sam_sde2"), (est, "sam_sde3"))]
    print(f"{step:4d}   " + "   ".join(cells))
diff, se = est.difference("sam_sde3", "sam_sde2")          # paired: the SDEs share their noise
print(f"E loss(SDE3) − E loss(SDE2) at step 40: {diff[-1, 0]:+.5f} ± {se[-1, 0]:.5f}")
