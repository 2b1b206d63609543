"""Random streams: keys, the Brownian tree of a step, antithetic pairs, device independence."""
import math

import pytest
import torch

from sdesam import _streams
from sdesam._streams import brownian_increments, derived_seed, draw_batches, substep_key

from .problems import logcosh_problem


def test_keys_are_hashed_and_substep_zero_is_the_step():
    assert derived_seed(1, 2, 3) == derived_seed(1, 2, 3) != derived_seed(1, 2, 4)
    assert substep_key(5, 0, 7) == substep_key(5, 0, 7, 0) == (5, 0, 7)
    assert substep_key(5, 0, 7, 2, 8) == substep_key(5, 0, 7, 1, 4) == (5, 0, 7, 1, 4)
    assert substep_key(5, 0, 7, 3, 8) == (5, 0, 7, 3, 8)


@pytest.mark.parametrize("m", [2, 4, 8])
def test_dyadic_substeps_follow_one_brownian_path(m):
    """The m increments of a step sum pairwise to the m/2 increments of the same step."""
    kw = dict(size=(5, 3), dtype=torch.float64, device="cpu")
    fine = brownian_increments(11, 4, m, dt=0.1 / m, **kw)
    coarse = brownian_increments(11, 4, m // 2, dt=0.2 / m, **kw)
    assert fine.shape == (m, 5, 3)
    assert torch.allclose(fine.reshape(m // 2, 2, 5, 3).sum(1), coarse, rtol=0, atol=1e-15)
    one = brownian_increments(11, 4, 1, dt=0.1, **kw)[0]
    assert torch.allclose(fine.sum(0), one, rtol=0, atol=1e-14)
    gen = _streams.seeded_generator(11, _streams.STREAM_NOISE, 4)          # m = 1 is the plain increment
    assert torch.equal(one, torch.randn(5, 3, generator=gen, dtype=torch.float64) * math.sqrt(0.1))


def test_tree_increments_have_the_brownian_covariance():
    """Each of the m increments of a step is N(0, Δt I), independent of the others."""
    m, dt = 4, 0.05
    incs = torch.stack([brownian_increments(3, k, m, (2000, 1), dt, dtype=torch.float64, device="cpu")[:, :, 0]
                        for k in range(5)])                  # (steps, m, M)
    z = incs.permute(1, 0, 2).reshape(m, -1)                 # m increments × 10,000 samples
    cov = torch.cov(z) / dt
    assert torch.allclose(cov, torch.eye(m, dtype=torch.float64), atol=0.06)


def test_non_dyadic_substeps_draw_iid_increments():
    incs = brownian_increments(0, 1, 3, (20000, 1), 0.1, dtype=torch.float64, device="cpu")
    assert incs.shape == (3, 20000, 1)
    assert abs(float(incs.var()) / 0.1 - 1) < 0.03


def test_antithetic_pairs_share_minibatches_and_negate_increments():
    p = logcosh_problem(n=8, batch_size=3)
    b = draw_batches(p, 2, 5, 6, 4, pairs=2)
    assert b.shape == (6, 4, 3)
    assert torch.equal(b[0::2], b[1::2]) and not torch.equal(b[0], b[2])
    w = brownian_increments(2, 5, 2, (6, 4), 0.01, dtype=torch.float64, device="cpu", antithetic=True)
    assert torch.equal(w[:, 1::2], -w[:, 0::2])
    with pytest.raises(ValueError, match="odd"):
        brownian_increments(2, 5, 2, (5, 4), 0.01, dtype=torch.float64, device="cpu", antithetic=True)
    with pytest.raises(ValueError, match="pairs"):
        draw_batches(p, 2, 5, 5, 4, pairs=2)


def test_draws_use_cpu_generators_whatever_the_device(monkeypatch):
    """The generators of the minibatch and noise streams are CPU generators (so a GPU run draws
    the numbers the CPU run draws); the result is moved to the device afterwards."""
    devices = []
    real = _streams.seeded_generator

    def spy(*key, device="cpu"):
        devices.append(str(device))
        return real(*key, device=device)
    monkeypatch.setattr(_streams, "seeded_generator", spy)
    p = logcosh_problem()
    draw_batches(p, 0, 0, 2)
    brownian_increments(0, 0, 4, (2, 2), 0.1, dtype=torch.float64, device="cpu")
    assert devices and set(devices) == {"cpu"}


def test_runs_with_different_substeps_draw_the_same_minibatches_at_common_times():
    from sdesam.registry import make_dynamics
    p = logcosh_problem(n=8, batch_size=3)
    sde = {m: make_dynamics("sam_sde3", p, eta=0.1, rho=0.2, n_batches=4, substeps=m, seed=3) for m in (1, 2, 4)}
    # step 5, time 5 + 1/2: sub-step 1 of m = 2 and sub-step 2 of m = 4
    assert torch.equal(sde[2]._batches(6, 5 * 2 + 1), sde[4]._batches(6, 5 * 4 + 2))
    assert torch.equal(sde[1]._batches(6, 5), sde[4]._batches(6, 5 * 4))
    assert not torch.equal(sde[4]._batches(6, 5 * 4 + 1), sde[4]._batches(6, 5 * 4 + 2))
