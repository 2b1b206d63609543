"""Random streams: every random number of sdesam comes from a generator keyed by a tuple.

A run's randomness is split into independent *streams* (minibatch draws, Brownian
increments, initial vectors, eigen-solver start vectors, rule samples; the trainer's
shuffling and subsets), and each draw is keyed by a tuple of non-negative integers,
typically ``(seed, stream, step)`` or ``(seed, stream, step, substep)``. The key is hashed
(numpy's ``SeedSequence``), so the draw of step k does not depend on whether steps < k
were drawn: a resumed or re-ordered run sees the same randomness, and different keys
give statistically independent streams.

Sub-step keys: sub-step j of the m sub-steps of step k starts at time k + j/m (in units of
η) and is keyed by that time: ``(seed, stream, k)`` for j = 0 and ``(seed, stream, k, p, q)``
with p/q = j/m in lowest terms otherwise. So a one-sub-step run draws exactly what the
discrete step k draws from that stream, and runs with different numbers of sub-steps draw
the same minibatches wherever their sub-steps start at the same time (m = 4's sub-step 1
and m = 8's sub-step 2, …) — the runs are coupled, not only their Brownian paths.

Device independence: minibatches, Brownian increments and start vectors are drawn by CPU
generators and moved to the problem's device, so a run on a GPU draws exactly the numbers
the same run on the CPU draws (their results differ by rounding only). A rule that
samples draws on its gradient's device.

Brownian increments of one step (``brownian_increments``): for m = 2^L sub-steps the m
increments are built by the Lévy (Brownian-bridge) construction from one Gaussian per
node of a dyadic tree, so runs with m = 1, 2, 4, … sub-steps follow the *same* Brownian
path (the increments of m sum pairwise to those of m/2): their differences are Euler
discretisation, not noise. Other m draw i.i.d. increments from the key (seed, noise, k, 0, m).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["STREAM_BATCH", "STREAM_NOISE", "STREAM_INIT", "STREAM_EIGEN", "STREAM_RULE", "STREAM_BRIDGE",
           "STREAM_SHUFFLE", "STREAM_TRAIN_EIGVEC", "STREAM_TRAIN_SUBSET", "STREAM_TEST_SUBSET",
           "STREAM_CONTROL", "STREAM_SKETCH", "derived_seed", "seeded_generator", "substep_key", "draw_batches",
           "brownian_increments", "is_power_of_two"]

# -- the simulation's streams ---------------------------------------------------------------
STREAM_BATCH = 0        #: minibatches of a step / sub-step
STREAM_NOISE = 1        #: Gaussian increments (the coarsest node of a step's Brownian tree)
STREAM_INIT = 2         #: initial vectors (Eigen-SAM's first v̂)
STREAM_EIGEN = 3        #: eigen-solver start vectors
STREAM_RULE = 4         #: samples drawn by a perturbation rule that needs a generator
STREAM_BRIDGE = 5       #: the finer levels of a step's Brownian tree
STREAM_CONTROL = 6      #: extra minibatches of the martingale control variate
STREAM_SKETCH = 7       #: random projections of the moment test's covariance sketch
# -- the trainer's streams: keys (seed, stream) of length 2, which never equal a simulation
# key (seed, stream, step[, substep]) -----------------------------------------------------
STREAM_SHUFFLE = 1          #: epoch permutations of the training data
STREAM_TRAIN_EIGVEC = 2     #: the optimizer's first v̂
STREAM_TRAIN_SUBSET = 3     #: the fixed training subset
STREAM_TEST_SUBSET = 4      #: the fixed test subset


def derived_seed(*key: int) -> int:
    """A 63-bit seed hashed from a tuple of non-negative integers (e.g. (seed, stream, step))."""
    state = np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def seeded_generator(*key: int, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derived_seed(*key)``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derived_seed(*key))
    return gen


def substep_key(seed: int, stream: int, step: int, substep: int = 0, substeps: int = 1) -> tuple[int, ...]:
    """The key of sub-step ``substep`` of the ``substeps`` sub-steps of step ``step``:
    (seed, stream, step) for sub-step 0, else (seed, stream, step, p, q) with
    p/q = substep/substeps in lowest terms (the sub-step's start time within the step)."""
    if substep == 0:
        return (seed, stream, step)
    g = math.gcd(substep, substeps)
    return (seed, stream, step, substep // g, substeps // g)


def draw_batches(problem, seed: int, step: int, num_trajectories: int, per_trajectory: int = 1,
                 substep: int = 0, pairs: int = 1, substeps: int = 1) -> Tensor:
    """Minibatches of one (sub-)step: LongTensor (M, per_trajectory, B).

    ``problem`` is any object with ``sample_batches(num, generator)`` and ``device``.
    With ``pairs`` = 2 (antithetic trajectories), rows 2i and 2i + 1 get the same
    minibatches (M must be even).
    """
    if num_trajectories % pairs:
        raise ValueError(f"{num_trajectories} trajectories cannot be grouped in pairs of {pairs}")
    gen = seeded_generator(*substep_key(seed, STREAM_BATCH, step, substep, substeps))
    n = num_trajectories // pairs
    batches = problem.sample_batches(n * per_trajectory, gen).reshape(n, per_trajectory, -1)
    return batches if pairs == 1 else batches.repeat_interleave(pairs, dim=0)


def is_power_of_two(m: int) -> bool:
    return m >= 1 and m & (m - 1) == 0


def brownian_increments(seed: int, step: int, substeps: int, size: tuple[int, int], dt: float, *,
                        dtype, device, antithetic: bool = False) -> Tensor:
    """The ``substeps`` increments ΔW ~ N(0, Δt I) of one step, shape (substeps, M, k).

    m = 2^L: the Lévy construction on a dyadic tree — W over the whole step from the key
    (seed, STREAM_NOISE, step) (for m = 1 this is the plain increment), each refinement level
    ℓ = 1..L from (seed, STREAM_BRIDGE, step, ℓ): the midpoint of an interval of length h
    with end increment w is split as w/2 ± √(h/4)·z. Other m: i.i.d. increments.
    ``antithetic``: rows 2i + 1 carry the negated increments of rows 2i (M even).
    """
    M, k = size
    if antithetic and M % 2:
        raise ValueError(f"antithetic trajectories come in pairs: M={M} is odd")
    rows = M // 2 if antithetic else M
    eta = dt * substeps

    def normal(*key):
        return torch.randn(rows, k, generator=seeded_generator(*key), dtype=dtype)

    if is_power_of_two(substeps):
        incs = (normal(seed, STREAM_NOISE, step) * math.sqrt(eta))[None]       # (1, rows, k)
        h = eta
        for level in range(1, int(math.log2(substeps)) + 1):
            n = incs.shape[0]
            gen = seeded_generator(seed, STREAM_BRIDGE, step, level)
            z = torch.randn(n, rows, k, generator=gen, dtype=dtype) * math.sqrt(h / 4)
            left = incs / 2 + z
            incs = torch.stack([left, incs - left], dim=1).reshape(2 * n, rows, k)
            h /= 2
    else:
        gen = seeded_generator(seed, STREAM_NOISE, step, 0, substeps)
        incs = torch.randn(substeps, rows, k, generator=gen, dtype=dtype) * math.sqrt(dt)
    if antithetic:
        incs = torch.stack([incs, -incs], dim=2).reshape(substeps, M, k)
    return incs.to(device)
