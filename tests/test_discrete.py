"""Discrete methods against updates computed by hand from the paper's equations."""
import pytest
import torch

from sdesam._streams import STREAM_INIT, draw_batches, seeded_generator
from sdesam.curvature.power import random_unit_vector
from sdesam.discrete import DiscreteEGR, DiscreteEigenSAM, DiscreteSAM, DiscreteSGD

from .problems import DTYPE, LogCoshReference, logcosh_data, logcosh_problem

ETA, RHO, SEED = 0.1, 0.3, 4


def setup():
    problem = logcosh_problem()
    return problem, LogCoshReference(*logcosh_data()), problem.x0.clone()


def minibatch(problem, step):
    return draw_batches(problem, SEED, step, 1)[0, 0]


@pytest.mark.parametrize("method", ["sgd", "sam", "usam", "reverse_sam", "egr"])
def test_one_step_by_hand(method):
    problem, ref, x = setup()
    dyn = {"sgd": lambda: DiscreteSGD(problem, ETA), "egr": lambda: DiscreteEGR(problem, ETA, RHO)}.get(
        method, lambda: DiscreteSAM(problem, ETA, RHO, rule=method))()
    assert dyn.name == method
    state = dyn.init_state(seed=SEED)
    for k in range(3):
        idx = minibatch(problem, k)
        g = ref.grad(x, idx)
        u = g / g.norm()
        if method == "sgd":
            x = x - ETA * g
        elif method == "sam":
            x = x - ETA * ref.grad(x + RHO * u, idx)
        elif method == "usam":
            x = x - ETA * ref.grad(x + RHO * g, idx)
        elif method == "reverse_sam":
            x = x - ETA * ref.grad(x - RHO * u, idx)
        else:                                         # EGR: ∇[f + ρ‖∇f‖] = g + ρ H u
            x = x - ETA * (g + RHO * ref.hess(x, idx) @ u)
        dyn.advance(state, 1)
        assert torch.allclose(state.x[0], x, rtol=0, atol=1e-13), (method, k)


def test_minibatches_are_distinct_indices_and_cover_the_data():
    problem = logcosh_problem()
    seen = torch.cat([minibatch(problem, k) for k in range(200)])
    rows = torch.stack([minibatch(problem, k) for k in range(200)])
    assert (rows[:, 0] != rows[:, 1]).all()
    assert set(seen.tolist()) == set(range(problem.n_train))


@pytest.mark.parametrize("p_counting,first_refresh,expected", [
    ("global", "start", [0, 3, 6]),
    ("global", "after_p", [3, 6]),          # official: k % p == 0 and k > 0
    ("epoch", "start", [0, 3, 4, 7, 8]),    # counter restarts every 4 steps: t₁ = 1 2 3 4 1 2 3 4 1
    ("epoch", "after_p", [3, 7]),           # in-epoch k = 3; epoch 2 starts with epoch 1's v̂
])
def test_eigen_sam_by_hand(p_counting, first_refresh, expected):
    problem, ref, x = setup()
    p, q, alpha = 3, 2, 0.5
    dyn = DiscreteEigenSAM(problem, ETA, RHO, alpha, p, q, p_counting=p_counting, first_refresh=first_refresh,
                   steps_per_epoch=4)
    assert [k for k in range(9) if dyn.refreshes_at(k)] == expected
    state = dyn.init_state(seed=SEED)
    v = random_unit_vector((1, 3), generator=seeded_generator(SEED, STREAM_INIT, 0), dtype=DTYPE)[0]
    have_v = False
    for k in range(9):
        idx = minibatch(problem, k)
        if k in expected:                              # Algorithm 1, warm-started, current minibatch
            H = ref.hess(x, idx)
            for _ in range(q):
                v = H @ v
                v = v / v.norm()
            have_v = True
        g = ref.grad(x, idx)
        if first_refresh == "after_p" and not have_v:
            eps = g                                     # official code: unnormalised ρ·g first
        else:
            u = g / g.norm()
            v_perp = v - (v @ u) * u                    # Eq. 7
            eps = u + alpha * torch.sign(g @ v) * v_perp   # Eq. 8, not renormalised
        x = x - ETA * ref.grad(x + RHO * eps, idx)
        dyn.advance(state, 1)
        assert torch.allclose(state.x[0], x, rtol=0, atol=1e-13), k
        assert torch.allclose(state.extra["eigvec"][0], v, rtol=0, atol=1e-13), k


def test_eigen_sam_with_alpha_zero_is_sam():
    problem, _, _ = setup()
    a, b = DiscreteEigenSAM(problem, ETA, RHO, alpha=0.0, p=2, q=1), DiscreteSAM(problem, ETA, RHO)
    sa, sb = a.init_state(seed=1), b.init_state(seed=1)
    a.advance(sa, 5)
    b.advance(sb, 5)
    assert torch.allclose(sa.x, sb.x, rtol=0, atol=1e-14)


def test_resume_from_state_dict_is_exact():
    from sdesam.dynamics import RunState
    problem, _, _ = setup()
    dyn = DiscreteEigenSAM(problem, ETA, RHO, p=2, q=2)
    full = dyn.init_state(seed=9)
    dyn.advance(full, 6)
    part = dyn.init_state(seed=9)
    dyn.advance(part, 4)
    resumed = RunState.from_state_dict(part.state_dict())
    dyn.advance(resumed, 2)
    assert torch.equal(resumed.x, full.x)
