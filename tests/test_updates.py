"""Update maps (GSAM, WSAM) and m-SAM: their discrete steps by hand, their SDEs' drift and
diffusion against enumerated expectations, and the special cases that reduce to SAM."""
import pytest
import torch

from sdesam.discrete import DiscreteSAM
from sdesam.registry import make_dynamics
from sdesam.updates import GSAMUpdate, PerturbedGradient, WSAMUpdate, get_update, method_name

from .problems import DTYPE, LogCoshReference, logcosh_data, logcosh_problem

ETA, RHO = 0.1, 0.3


def _ref():
    return LogCoshReference(*logcosh_data(n=6))


def test_maps_by_hand_and_their_special_cases():
    g, p = torch.tensor([1.0, 2.0, -1.0], dtype=DTYPE), torch.tensor([0.5, 1.0, 2.0], dtype=DTYPE)
    perp = g - (g @ p) / (p @ p) * p
    assert torch.allclose(GSAMUpdate(0.3)(g, p), p - 0.3 * perp, rtol=0, atol=1e-15)
    assert abs(float(perp @ p)) < 1e-14
    assert torch.equal(GSAMUpdate(0.0)(g, p), p)
    assert torch.allclose(WSAMUpdate(0.9)(g, p), g + 9.0 * (p - g), rtol=0, atol=1e-14)
    assert torch.equal(WSAMUpdate(0.5)(g, p), p) and torch.equal(WSAMUpdate(0.0)(g, p), g)
    assert torch.allclose(GSAMUpdate(0.3)(g, torch.zeros(3, dtype=DTYPE)), -0.3 * g)
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        GSAMUpdate(-0.1)
    with pytest.raises(ValueError, match=r"gamma must lie in \[0, 1\)"):
        WSAMUpdate(1.0)
    with pytest.raises(ValueError, match="update must be"):
        get_update("lookahead")
    assert method_name("sam", PerturbedGradient()) == "sam" and method_name("sam", GSAMUpdate(), 4) == "mgsam"


@pytest.mark.parametrize("update", [GSAMUpdate(0.4), WSAMUpdate(0.8)])
def test_discrete_step_by_hand(update):
    problem, ref = logcosh_problem(n=6, batch_size=2), _ref()
    dyn = DiscreteSAM(problem, ETA, RHO, update=update)
    state = dyn.init_state(seed=3)
    x = problem.x0.clone()
    from sdesam._streams import draw_batches
    for k in range(3):
        idx = draw_batches(problem, 3, k, 1)[0, 0]
        g = ref.grad(x, idx)
        p = ref.grad(x + RHO * g / g.norm(), idx)
        x = x - ETA * update(g, p)
        dyn.advance(state, 1)
        assert torch.allclose(state.x[0], x, rtol=0, atol=1e-14), k


def test_msam_step_by_hand_and_m1_is_sam():
    problem, ref = logcosh_problem(n=8, batch_size=4), LogCoshReference(*logcosh_data(n=8))
    dyn = make_dynamics("sam", problem, eta=ETA, rho=RHO, micro_batches=2)
    assert dyn.name == "msam"
    state = dyn.init_state(seed=1)
    x = problem.x0.clone()
    from sdesam._streams import draw_batches
    for k in range(3):
        idx = draw_batches(problem, 1, k, 1)[0, 0]
        ps = []
        for part in (idx[:2], idx[2:]):
            g = ref.grad(x, part)
            ps.append(ref.grad(x + RHO * g / g.norm(), part))
        x = x - ETA * (ps[0] + ps[1]) / 2
        dyn.advance(state, 1)
        assert torch.allclose(state.x[0], x, rtol=0, atol=1e-14), k
    a, b = make_dynamics("sam", problem, eta=ETA, rho=RHO, micro_batches=1), make_dynamics("sam", problem, eta=ETA,
                                                                                          rho=RHO)
    sa, sb = a.init_state(seed=2), b.init_state(seed=2)
    a.advance(sa, 4)
    b.advance(sb, 4)
    assert torch.equal(sa.x, sb.x)
    with pytest.raises(ValueError, match="micro_batches=3 must divide the batch size B=4"):
        make_dynamics("sam", problem, eta=ETA, rho=RHO, micro_batches=3)


def test_identity_update_is_sam_sde3_bit_for_bit():
    problem = logcosh_problem(n=6, batch_size=2)
    a = make_dynamics("sam_sde3", problem, eta=ETA, rho=RHO, n_batches=4, update=PerturbedGradient())
    b = make_dynamics("sam_sde3", problem, eta=ETA, rho=RHO, n_batches=4)
    gsam0 = make_dynamics("sam_sde3", problem, eta=ETA, rho=RHO, n_batches=4, update=GSAMUpdate(0.0))
    runs = []
    for dyn in (a, b, gsam0):
        s = dyn.init_state(problem.x0.expand(3, -1), seed=5)
        dyn.advance(s, 3)
        runs.append(s.x)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2])


@pytest.mark.parametrize("update", [GSAMUpdate(0.4), WSAMUpdate(0.8)])
def test_sde_drift_and_diffusion_of_an_update_map_by_enumeration(update):
    """drift −E Φ(g, v²), diffusion Cov Φ(g, v²), from closed-form derivatives over all minibatches."""
    problem, ref = logcosh_problem(n=6, batch_size=2), _ref()
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    sde = make_dynamics("sam_sde3", problem, eta=ETA, rho=RHO, n_batches="exact", update=update)
    assert sde.name == update.name + "_sde3"
    ws = []
    for idx in problem.enumerate_batches():
        g = ref.grad(x, idx)
        u = g / g.norm()
        v = g + RHO * ref.hess(x, idx) @ u + 0.5 * RHO ** 2 * ref.third(x, idx, u, u)
        ws.append(update(g, v))
    W = torch.stack(ws)
    drift, factor = sde.drift_and_factor(0.0, x[None])
    assert torch.allclose(drift[0], -W.mean(0), rtol=0, atol=1e-13)
    cov = (W - W.mean(0)).T @ (W - W.mean(0)) / W.shape[0]
    assert torch.allclose(factor[0] @ factor[0].T, ETA * cov, rtol=0, atol=1e-13)


def test_msam_sde_drift_and_diffusion_by_enumeration_of_ordered_minibatches():
    """m-SAM's SDE: w_γ = mean over the micro-batches of their Taylor vectors; exact
    expectations over the ordered B-tuples (each micro-batch a block of positions)."""
    problem = logcosh_problem(n=5, batch_size=2)
    ref = LogCoshReference(*logcosh_data(n=5))
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    sde = make_dynamics("sam_sde3", problem, eta=ETA, rho=RHO, n_batches="exact", micro_batches=2)
    assert sde.name == "msam_sde3" and sde.n_batches == 20
    ws = []
    for i in range(5):
        for j in range(5):
            if i == j:
                continue
            parts = []
            for part in (torch.tensor([i]), torch.tensor([j])):
                g = ref.grad(x, part)
                u = g / g.norm()
                parts.append(g + RHO * ref.hess(x, part) @ u + 0.5 * RHO ** 2 * ref.third(x, part, u, u))
            ws.append((parts[0] + parts[1]) / 2)
    W = torch.stack(ws)
    drift, factor = sde.drift_and_factor(0.0, x[None])
    assert torch.allclose(drift[0], -W.mean(0), rtol=0, atol=1e-13)
    cov = (W - W.mean(0)).T @ (W - W.mean(0)) / W.shape[0]
    assert torch.allclose(factor[0] @ factor[0].T, ETA * cov, rtol=0, atol=1e-13)


def test_the_truncation_of_an_update_map_is_third_order_in_rho():
    """‖Φ(g, ∇f(x + ρu)) − Φ(g, v²)‖ = O(ρ³) on a toy, for GSAM and WSAM."""
    ref = _ref()
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    idx = torch.tensor([1, 4])
    for update in (GSAMUpdate(0.4), WSAMUpdate(0.8)):
        errs = []
        for rho in (0.02, 0.01, 0.005):
            g = ref.grad(x, idx)
            u = g / g.norm()
            v = g + rho * ref.hess(x, idx) @ u + 0.5 * rho ** 2 * ref.third(x, idx, u, u)
            errs.append(float((update(g, ref.grad(x + rho * u, idx)) - update(g, v)).norm()))
        slopes = [torch.log(torch.tensor(errs[i] / errs[i + 1])) / torch.log(torch.tensor(2.0)) for i in range(2)]
        assert all(abs(float(s) - 3) < 0.1 for s in slopes), (update, slopes)
