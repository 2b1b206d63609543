"""Corollary 4.1.1's aligned SDEs (Eq. 5–6), the Eigen-SAM SDE and the ideal Eigen-SAM,
against independent references (dense float64 Hessians, finite differences, hand-written
updates)."""
import warnings

import pytest
import torch

from sdesam import make_dynamics
from sdesam._streams import draw_batches
from sdesam.eigenpairs import full_hessian_top_eigenvector, minibatch_top_eigenpairs
from sdesam.rules import DirectionRule
from sdesam.sde import AlignedSDE5, EigenSAMSDE, SAMFamilySDE

from .problems import (
    DTYPE,
    LogCoshReference,
    aligned_problem,
    all_batches,
    dense_derivatives,
    flat_batch_loss,
    logcosh_data,
    logcosh_problem,
    rank_one_problem,
    tiny_mlp_problem,
)


def _lambda1(H):
    return torch.linalg.eigvalsh(0.5 * (H + H.T))[-1]


# -- eigenpairs ---------------------------------------------------------------------------
@pytest.mark.parametrize("oracle", ["jet", "autograd"])
def test_minibatch_eigenpairs_match_dense_reference(oracle):
    p = tiny_mlp_problem(oracle)
    x = p.x0 + 0.1 * torch.randn(p.dim, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    batches = torch.tensor(all_batches(p.n_train, p.batch_size)[:4])
    dense = minibatch_top_eigenpairs(p, x, batches, method="dense")
    lz = minibatch_top_eigenpairs(p, x, batches, method="lanczos", tol=1e-10)
    for k, idx in enumerate(batches):
        H = torch.autograd.functional.hessian(flat_batch_loss(p, idx), x)
        lam = torch.linalg.eigvalsh(H)
        assert abs(dense.value[k] - lam[-1]) <= 1e-12 * lam.abs().max()
        assert abs(dense.gap[k] - (lam[-1] - lam[-2])) <= 1e-12 * lam.abs().max()
        assert abs(lz.value[k] - lam[-1]) <= 1e-9 * lam.abs().max()
        assert abs(lz.gap[k] - (lam[-1] - lam[-2])) <= 1e-8 * lam.abs().max()
        for r in (dense, lz):
            assert torch.linalg.vector_norm(H @ r.vector[k] - lam[-1] * r.vector[k]) <= 1e-8 * lam.abs().max()
    assert dense.residual.max() < 1e-12 and lz.residual.max() < 1e-9


def test_full_hessian_eigenvector_is_exact():
    p = logcosh_problem(n=6, d=3, batch_size=2)
    A, y = logcosh_data()
    ref = LogCoshReference(A, y)
    x = torch.stack([p.x0, -p.x0 + 0.3])
    for method in ("dense", "lanczos"):
        r = full_hessian_top_eigenvector(p, x, method=method, tol=1e-12)
        for m in range(2):
            H = ref.hess(x[m], torch.arange(6))          # mean over all n examples = E_γ H_γ
            lam, V = torch.linalg.eigh(H)
            assert abs(r.value[m] - lam[-1]) < 1e-12
            assert abs(abs(r.vector[m] @ V[:, -1]) - 1) < 1e-10


def test_dense_path_refuses_a_large_problem():
    p = tiny_mlp_problem()
    with pytest.raises(ValueError, match="max_dense_dim"):
        minibatch_top_eigenpairs(p, p.x0, torch.tensor([0, 1, 2]), method="dense", max_dense_dim=10)
    with pytest.raises(ValueError, match="max_dense_dim"):
        make_dynamics("aligned_sde5", p, eta=0.1, rho=0.1, eig_method="dense", max_dense_dim=10)
    with pytest.raises(ValueError, match="method"):
        minibatch_top_eigenpairs(p, p.x0, torch.tensor([0, 1, 2]), method="eigh")


# -- ∇λ₁ = ∇³f[v₁, v₁] against finite differences of dense eigenvalues -------------------
@pytest.mark.parametrize("oracle", ["jet", "autograd", "function"])
def test_grad_lambda1_is_third_derivative_along_v1(oracle):
    if oracle == "function":
        p = logcosh_problem(n=6, d=3, batch_size=2)
        idx = torch.tensor([1, 4])
        A, y = logcosh_data()
        hess = lambda z: LogCoshReference(A, y).hess(z, idx)          # noqa: E731
        x = p.x0.clone()
    else:
        p = tiny_mlp_problem(oracle)
        idx = torch.tensor([0, 3, 7])
        f = flat_batch_loss(p, idx)
        hess = lambda z: torch.autograd.functional.hessian(f, z)     # noqa: E731
        x = p.x0.clone()
    eig = minibatch_top_eigenpairs(p, x, idx, method="dense")
    grad = p.taylor(x, idx, DirectionRule(), 0.0, 2, eigvec=eig.vector, components=True).t
    h = 1e-4
    fd = torch.stack([(_lambda1(hess(x + h * e)) - _lambda1(hess(x - h * e))) / (2 * h)
                      for e in torch.eye(p.dim, dtype=DTYPE)])
    assert torch.linalg.vector_norm(grad - fd) <= 1e-6 * torch.linalg.vector_norm(fd)


# -- the aligned toy: Eq. 5 = Eq. 6 = SAM-SDE3, then O(δ) differences ------------------------
def _drifts(problem, x, names=("sam_sde3", "aligned_sde5", "aligned_sde6"), **kw):
    out = {}
    for name in names:
        dyn = make_dynamics(name, problem, eta=0.1, rho=0.3, n_batches="exact", **kw)
        out[name] = dyn.drift_and_factor(0.0, x)
    return out


@pytest.mark.parametrize("make", [aligned_problem, rank_one_problem])
def test_aligned_toy_drifts_equal_sam_sde3(make):
    p = make(0.0)
    x = torch.stack([p.x0, 0.5 * p.x0 + 0.2, -p.x0])
    d = _drifts(p, x)
    ref, F = d["sam_sde3"]
    for name in ("aligned_sde5", "aligned_sde6"):
        assert torch.allclose(d[name][0], ref, rtol=0, atol=1e-10)
        assert torch.equal(d[name][1], F)                    # the same Σ^SAM diffusion
    assert ref.abs().max() > 1e-2


def _slopes(make, power):
    """|drift(Eq. 5/6) − drift(SAM-SDE3)| / δ^power for δ = 1e-2, 1e-3, 1e-4."""
    x = torch.stack([torch.tensor([0.4, -0.1, -0.6], dtype=DTYPE), torch.tensor([-0.3, 0.5, 0.2], dtype=DTYPE)])
    out = []
    for delta in (1e-2, 1e-3, 1e-4):
        d = _drifts(make(delta), x)
        out.append([float((d[n][0] - d["sam_sde3"][0]).abs().max()) / delta ** power
                    for n in ("aligned_sde5", "aligned_sde6")])
    return torch.tensor(out)                                  # (3 deltas, 2 forms)


def test_broken_alignment_differences_grow_linearly_in_delta():
    s = _slopes(aligned_problem, 1)
    assert (s[2] > 1e-2).all()                                # a real O(δ) difference, not rounding
    assert ((s[1] / s[2] - 1).abs() < 0.02).all() and ((s[0] / s[2] - 1).abs() < 0.2).all()


def test_rank_one_toy_differences_are_second_order():
    s = _slopes(rank_one_problem, 2)
    assert (s[2] > 1e-3).all()
    assert ((s[1] / s[2] - 1).abs() < 0.05).all() and ((s[0] / s[2] - 1).abs() < 0.5).all()


def test_drift_is_invariant_under_the_sign_of_v1(monkeypatch):
    from sdesam import eigenpairs
    p = logcosh_problem(n=6, d=3, batch_size=2)
    x = torch.stack([p.x0, -0.5 * p.x0])
    base = _drifts(p, x, names=("aligned_sde5", "aligned_sde6"))
    orig = eigenpairs.minibatch_top_eigenpairs
    seen = {}

    def flipped(*a, **k):
        r = orig(*a, **k)
        seen["v"] = r.vector
        r.vector = -r.vector
        return r
    monkeypatch.setattr(eigenpairs, "minibatch_top_eigenpairs", flipped)
    flip = _drifts(p, x, names=("aligned_sde5", "aligned_sde6"))
    g = p.gradient(x[:, None, :], p.enumerate_batches())
    s = torch.einsum("mkd,mkd->mk", g, seen["v"]).sign()
    assert (s != 0).all() and torch.equal(torch.einsum("mkd,mkd->mk", g, -seen["v"]).sign(), -s)   # s* flips
    for name in base:
        assert torch.allclose(flip[name][0], base[name][0], rtol=0, atol=1e-14)


def test_eq5_eq6_drifts_by_hand():
    """Eq. 5/6 drifts from closed-form derivatives and a dense eigendecomposition."""
    p = logcosh_problem(n=6, d=3, batch_size=2)
    A, y = logcosh_data()
    ref = LogCoshReference(A, y)
    x = p.x0 + 0.2
    rho = 0.3
    w5, w6 = [], []
    for idx in all_batches(6, 2):
        idx = torch.tensor(idx)
        g, H = ref.grad(x, idx), ref.hess(x, idx)
        lam, V = torch.linalg.eigh(H)
        v = V[:, -1]
        u = g / g.norm()
        t = ref.third(x, idx, v, v)
        w5.append(g + rho * H @ u + 0.5 * rho ** 2 * t)
        w6.append(g + rho * torch.sign(g @ v) * lam[-1] * v + 0.5 * rho ** 2 * t)
    for name, w in (("aligned_sde5", w5), ("aligned_sde6", w6)):
        dyn = make_dynamics(name, p, eta=0.1, rho=rho, n_batches="exact")
        drift, _ = dyn.drift_and_factor(0.0, x[None])
        assert torch.allclose(drift[0], -torch.stack(w).mean(0), rtol=0, atol=1e-13)


def test_gap_warning_names_the_step_and_history_is_recorded():
    from sdesam.problem import FunctionProblem
    data = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    p = FunctionProblem(lambda x, a: 0.5 * (x * x).sum(-1, keepdim=True) + (a * x[..., None, :]).sum(-1),
                        (data,), 2, torch.ones(3, dtype=DTYPE))    # H = I: λ₁ = λ₂
    dyn = make_dynamics("aligned_sde5", p, eta=0.1, rho=0.1, n_batches=2)
    st = dyn.init_state(seed=0)
    with pytest.warns(RuntimeWarning, match=r"sub-step 0 \(step 0\).*Assumption B.2"):
        dyn.advance(st, 2)
    assert len(dyn.eigen_history) == 2 and dyn.eigen_history[0]["gap_min"] < 1e-12
    q = logcosh_problem()
    dyn = make_dynamics("aligned_sde6", q, eta=0.1, rho=0.1, n_batches="exact")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dyn.advance(dyn.init_state(seed=0), 3)
    h = dyn.eigen_history
    assert [r["substep"] for r in h] == [0, 1, 2] and max(r["residual_max"] for r in h) < 1e-12
    assert min(r["relative_gap_min"] for r in h) > 1e-3


def test_lanczos_warm_start_resumes_exactly():
    p = tiny_mlp_problem()
    kw = dict(eta=0.05, rho=0.2, n_batches=3, eig_method="lanczos", eig_tol=1e-4)
    a = make_dynamics("aligned_sde5", p, **kw)
    full = a.advance(a.init_state(seed=4), 3)
    b = make_dynamics("aligned_sde5", p, **kw)
    half = b.advance(b.init_state(seed=4), 2)
    from sdesam.dynamics import RunState
    c = make_dynamics("aligned_sde5", p, **kw)
    resumed = c.advance(RunState.from_state_dict(half.state_dict()), 1)
    assert "eig_warm" in half.extra and half.extra["eig_warm"].shape == (1, 3, p.dim)
    assert torch.equal(resumed.x, full.x)


# -- Eigen-SAM SDE and ideal Eigen-SAM --------------------------------------------------------
@pytest.mark.parametrize("n_batches", ["exact", 3])
def test_eigen_sam_sde_with_alpha_zero_is_sam_sde3(n_batches):
    p = logcosh_problem(n=6, d=3, batch_size=2)
    x0 = p.x0.expand(4, -1)
    runs = {}
    for name, kw in (("sam_sde3", {}), ("eigen_sam_sde", {"alpha": 0.0}),
                     ("eigen_sam_sde", {"alpha": 0.0, "eigvec_source": "minibatch"})):
        dyn = make_dynamics(name, p, eta=0.05, rho=0.3, n_batches=n_batches, substeps=2, **kw)
        runs[name + str(kw)] = dyn.advance(dyn.init_state(x0, seed=2), 4).x
    ref = runs.pop("sam_sde3{}")
    for x in runs.values():
        assert torch.equal(x, ref)
    dyn = make_dynamics("eigen_sam_sde", p, eta=0.05, rho=0.3, n_batches=n_batches, substeps=2, alpha=0.3)
    assert not torch.allclose(dyn.advance(dyn.init_state(x0, seed=2), 4).x, ref)


def test_eigen_sam_sde_drift_by_hand():
    p = logcosh_problem(n=6, d=3, batch_size=2)
    A, y = logcosh_data()
    ref = LogCoshReference(A, y)
    x, rho, alpha = p.x0 - 0.1, 0.3, 0.4
    for source in ("full", "minibatch"):
        w = []
        for idx in all_batches(6, 2):
            idx = torch.tensor(idx)
            g = ref.grad(x, idx)
            H_v = ref.hess(x, torch.arange(6)) if source == "full" else ref.hess(x, idx)
            v = torch.linalg.eigh(H_v)[1][:, -1]
            u = g / g.norm()
            eps = u + alpha * torch.sign(g @ v) * (v - (v @ u) * u)
            w.append(g + rho * ref.hess(x, idx) @ eps + 0.5 * rho ** 2 * ref.third(x, idx, eps, eps))
        w = torch.stack(w)
        dyn = make_dynamics("eigen_sam_sde", p, eta=0.1, rho=rho, alpha=alpha, n_batches="exact",
                            eigvec_source=source)
        drift, F = dyn.drift_and_factor(0.0, x[None])
        assert torch.allclose(drift[0], -w.mean(0), rtol=0, atol=1e-13)
        cov = (w - w.mean(0)).T @ (w - w.mean(0)) / w.shape[0] * 0.1        # η Cov of the same vectors
        assert torch.allclose(F[0] @ F[0].T, cov, rtol=0, atol=1e-13)


@pytest.mark.parametrize("source", ["full", "minibatch"])
def test_ideal_eigen_sam_is_eq1_with_eq7_8_by_hand(source):
    p = logcosh_problem(n=6, d=3, batch_size=2)
    A, y = logcosh_data()
    ref = LogCoshReference(A, y)
    eta, rho, alpha, seed = 0.1, 0.3, 0.25, 5
    x = torch.stack([p.x0, 0.3 - p.x0])
    dyn = make_dynamics("ideal_eigen_sam", p, eta=eta, rho=rho, alpha=alpha, eigvec_source=source)
    st = dyn.init_state(x, seed=seed)
    xs = x.clone()
    for k in range(3):
        batch = draw_batches(p, seed, k, 2)[:, 0]
        new = []
        for m in range(2):
            g = ref.grad(xs[m], batch[m])
            H = ref.hess(xs[m], torch.arange(6)) if source == "full" else ref.hess(xs[m], batch[m])
            v = torch.linalg.eigh(H)[1][:, -1]
            u = g / g.norm()
            eps = u + alpha * torch.sign(g @ v) * (v - (v @ u) * u)                 # Eq. 7–8
            new.append(xs[m] - eta * ref.grad(xs[m] + rho * eps, batch[m]))      # Eq. 1
        xs = torch.stack(new)
        dyn.advance(st, 1)
        assert torch.allclose(st.x, xs, rtol=0, atol=1e-13)
    sam = make_dynamics("sam", p, eta=eta, rho=rho)
    zero = make_dynamics("ideal_eigen_sam", p, eta=eta, rho=rho, alpha=0.0, eigvec_source=source)
    assert torch.equal(zero.advance(zero.init_state(x, seed=1), 3).x, sam.advance(sam.init_state(x, seed=1), 3).x)


def test_ideal_eigen_sam_on_a_module_problem_with_a_hessian_subset():
    p = tiny_mlp_problem()
    sub = torch.tensor([0, 2, 5, 7])
    dyn = make_dynamics("ideal_eigen_sam", p, eta=0.1, rho=0.2, hessian_subset=sub, eig_method="lanczos",
                        eig_tol=1e-10)
    st = dyn.init_state(seed=0)
    x = st.x[0].clone()
    dyn.advance(st, 1)
    X, Y = p.inputs[sub], p.targets[sub]
    H = dense_derivatives(lambda z: torch.nn.functional.cross_entropy(
        torch.func.functional_call(p.model, p.unflatten(z), (X,)), Y), x)[1]
    v = torch.linalg.eigh(H)[1][:, -1]
    assert abs(abs(dyn.last_eigenpairs.vector[0] @ v) - 1) < 1e-8
    assert dyn.config()["hessian_subset_size"] == 4


def test_bad_configurations_raise():
    p = logcosh_problem()
    with pytest.raises(ValueError, match="alpha"):
        make_dynamics("eigen_sam_sde", p, eta=0.1, rho=0.1, alpha=-0.1, n_batches="exact")
    with pytest.raises(ValueError, match="alpha"):
        make_dynamics("ideal_eigen_sam", p, eta=0.1, rho=0.1, alpha=-1.0)
    with pytest.raises(ValueError, match="eigenvector"):
        SAMFamilySDE(p, 0.1, 0.1, rule="eigen_sam")          # needs v̂, nobody supplies it
    with pytest.raises(ValueError, match="eigvec=None"):
        DirectionRule()(torch.ones(3))
    with pytest.raises(ValueError, match="hessian_subset"):
        EigenSAMSDE(p, 0.1, 0.1, hessian_subset=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="eigvec_source"):
        make_dynamics("ideal_eigen_sam", p, eta=0.1, rho=0.1, eigvec_source="power")
    with pytest.raises(ValueError, match="rule"):
        EigenSAMSDE(p, 0.1, 0.1, rule="sam")
    with pytest.raises(ValueError, match="eig_tol"):
        AlignedSDE5(p, 0.1, 0.1, eig_tol=0.0)
    with pytest.raises(ValueError, match="hessian_subset"):
        make_dynamics("eigen_sam_sde", tiny_mlp_problem(), eta=0.1, rho=0.1, hessian_subset=torch.tensor([0, 99]))


@pytest.mark.parametrize("name", ["aligned_sde5", "eigen_sam_sde"])
def test_own_euler_loop_equals_torchsde_for_the_same_increments(name):
    import torchsde
    p = logcosh_problem()
    eta, m, steps = 2.0 ** -4, 2, 4                           # dyadic: exact time grid
    sde = make_dynamics(name, p, eta=eta, rho=0.3, n_batches=3, substeps=m, seed=11)
    x0 = p.x0.expand(4, 3).clone()
    T = steps * eta
    bm = torchsde.BrownianInterval(t0=0.0, t1=T, size=(4, sde.brownian_size), dtype=DTYPE, entropy=7)
    ys = torchsde.sdeint(sde, x0, torch.tensor([0.0, T], dtype=DTYPE), bm=bm, dt=sde.dt, method="euler")
    state = sde.init_state(x0, seed=11)
    for i in range(steps * m):
        sde.euler_substep(state, i, bm(i * sde.dt, (i + 1) * sde.dt))
    assert torch.allclose(ys[-1], state.x, rtol=0, atol=1e-12)
    assert not torch.allclose(state.x, x0)
