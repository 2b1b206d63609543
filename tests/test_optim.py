"""sdesam.optim against hand computations of Eq. 1, Eq. 7-8 and EGR on small float64 nets.

The references compute derivatives of an independent copy of the network with
``torch.autograd.functional`` on a flat parameter vector; they never call sdesam.optim.
"""
import copy
import io

import pytest
import torch
from torch import nn

from sdesam.optim import EGR, SAM, EigenSAM, eval_mode, frozen_running_stats

DTYPE = torch.float64
ETA, RHO = 0.1, 0.3


def make_net(bn: bool, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 6)]
    if bn:
        layers.append(nn.BatchNorm1d(6))
    layers += [nn.Tanh(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).to(DTYPE)


def make_data(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=DTYPE), torch.randint(3, (n,), generator=g)


class Reference:
    """f(x) of a flat parameter vector on one minibatch, on a private copy of the net."""

    def __init__(self, net: nn.Module, X, Y, train: bool = True):
        self.net = copy.deepcopy(net).train(train)
        self.names = [n for n, _ in net.named_parameters()]
        self.shapes = [p.shape for _, p in net.named_parameters()]
        self.X, self.Y = X, Y

    def f(self, x):
        params = {n: t.reshape(s) for n, t, s in
                  zip(self.names, torch.split(x, [s.numel() for s in self.shapes]), self.shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(self.net, params, (self.X,)), self.Y)

    def grad(self, x):
        return torch.autograd.functional.jacobian(self.f, x)

    def hess(self, x):
        return torch.autograd.functional.hessian(self.f, x, vectorize=True)


def flat(net):
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()])


def closure_for(net, X, Y):
    return lambda: nn.functional.cross_entropy(net(X), Y)


def sgd_kwargs():
    return dict(lr=ETA, momentum=0.0, weight_decay=0.0)


# -- SAM family: Eq. 1 -------------------------------------------------------------------
RULES = {
    "sam": lambda g: g / g.norm(),
    "usam": lambda g: g,
    "reverse_sam": lambda g: -g / g.norm(),
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("explicit", [False, True])
def test_sam_equals_eq1(rule, explicit):
    net = make_net(bn=False)
    X, Y = make_data()
    opt = SAM(net.parameters(), rho=RHO, rule=rule, model=net, **sgd_kwargs())
    x = flat(net)
    for k in range(3):
        Xb, Yb = X[4 * k:4 * k + 4], Y[4 * k:4 * k + 4]
        ref = Reference(net, Xb, Yb)
        eps = RULES[rule](ref.grad(x))
        x = x - ETA * ref.grad(x + RHO * eps)                    # Eq. 1
        if explicit:
            closure_for(net, Xb, Yb)().backward()
            opt.first_step(zero_grad=True)
            closure_for(net, Xb, Yb)().backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step(closure_for(net, Xb, Yb))
        assert torch.allclose(flat(net), x, rtol=0, atol=1e-14), k
    assert opt.steps == 3


def test_sam_per_group_rho_moves_each_group_by_its_radius():
    net = make_net(bn=False)
    X, Y = make_data()
    first, last = net[0], net[2]
    opt = SAM([{"params": first.parameters(), "rho": 0.0}, {"params": last.parameters()}],
              rho=RHO, model=net, **sgd_kwargs())
    x = flat(net)
    ref = Reference(net, X, Y)
    eps = ref.grad(x) / ref.grad(x).norm()                       # global norm
    n0 = sum(p.numel() for p in first.parameters())
    eps[:n0] = 0.0                                               # ρ = 0 in the first group
    opt.step(closure_for(net, X, Y))
    assert torch.allclose(flat(net), x - ETA * ref.grad(x + RHO * eps), rtol=0, atol=1e-14)


# -- Eigen-SAM: Eq. 7-8 with Algorithm 1 ------------------------------------------------------
class HandEigenSAM:
    """Eigen-SAM steps by hand (global counting): call ``step`` before the optimizer's
    step k, so the reference copies of ``net`` carry the same BatchNorm buffers."""

    def __init__(self, net, v, *, alpha, p, q, first_refresh="start", renormalize=False,
                 hvp_train=True):
        self.x, self.v, self.have_v, self.k = flat(net), v, False, 0
        self.alpha, self.p, self.q, self.first_refresh = alpha, p, q, first_refresh
        self.renormalize, self.hvp_train = renormalize, hvp_train

    def step(self, net, Xb, Yb):
        ref, x, t1 = Reference(net, Xb, Yb), self.x, self.k + 1
        if t1 % self.p == 1 % self.p and (self.first_refresh == "start" or t1 > 1):
            H = Reference(net, Xb, Yb, train=self.hvp_train).hess(x)
            for _ in range(self.q):                             # Algorithm 1, warm start
                self.v = H @ self.v
                self.v = self.v / self.v.norm()
            self.have_v = True
        g = ref.grad(x)
        if not self.have_v:
            eps = g
        else:
            u = g / g.norm()
            v_perp = self.v - (self.v @ u) * u                  # Eq. 7
            eps = u + self.alpha * torch.sign(g @ self.v) * v_perp   # Eq. 8
            if self.renormalize:
                eps = eps / eps.norm()
        self.x = x - ETA * ref.grad(x + RHO * eps)
        self.k += 1


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("explicit", [False, True])
def test_eigen_sam_equals_eq8(bn, explicit):
    net = make_net(bn=bn)
    X, Y = make_data()
    batches = [(X[4 * k:4 * k + 4], Y[4 * k:4 * k + 4]) for k in range(3)]
    opt = EigenSAM(net.parameters(), rho=RHO, alpha=0.5, p=2, q=3, model=net, seed=3, estimator="power", **sgd_kwargs())
    v0 = opt.eigenvector.clone()
    assert torch.allclose(v0.norm(), torch.tensor(1.0, dtype=DTYPE))
    hand = HandEigenSAM(net, v0, alpha=0.5, p=2, q=3)
    for Xb, Yb in batches:
        hand.step(net, Xb, Yb)
        closure = closure_for(net, Xb, Yb)
        if explicit:
            if opt.refresh_due:
                opt.update_eigenvector(closure)
            closure().backward()
            opt.first_step(zero_grad=True)
            with frozen_running_stats(net):
                closure().backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step(closure)
        assert torch.allclose(flat(net), hand.x, rtol=0, atol=1e-13)
        assert torch.allclose(opt.eigenvector, hand.v, rtol=0, atol=1e-12)
    assert opt.steps == 3 and opt.has_estimate
    if bn:                                   # one running-statistics update per step: the clean pass
        assert int(net[1].num_batches_tracked) == 3


def test_batchnorm_statistics_come_from_the_clean_pass_only():
    """With BN: after one Eigen-SAM step (refresh, perturbed pass) the running statistics
    equal one training-mode forward of the clean minibatch at the pre-step parameters."""
    net = make_net(bn=True)
    X, Y = make_data()
    expected = copy.deepcopy(net).train()
    with torch.no_grad():
        expected(X)
    opt = EigenSAM(net.parameters(), rho=RHO, p=1, q=2, model=net, estimator="power", **sgd_kwargs())
    opt.step(closure_for(net, X, Y))
    for name, buf in expected.named_buffers():
        assert torch.equal(dict(net.named_buffers())[name], buf), name
    # the explicit API: update_eigenvector and the frozen perturbed pass do not count either
    net2 = make_net(bn=True)
    opt2 = EigenSAM(net2.parameters(), rho=RHO, p=1, q=2, model=net2, estimator="power", **sgd_kwargs())
    opt2.update_eigenvector(closure_for(net2, X, Y))
    assert int(net2[1].num_batches_tracked) == 0
    closure_for(net2, X, Y)().backward()
    opt2.first_step(zero_grad=True)
    with frozen_running_stats(net2):
        closure_for(net2, X, Y)().backward()
    opt2.second_step()
    for name, buf in expected.named_buffers():
        assert torch.equal(dict(net2.named_buffers())[name], buf), name


def test_eigen_sam_eval_mode_hvps_and_official_switches():
    net = make_net(bn=True)
    X, Y = make_data()
    with torch.no_grad():                   # give BN non-trivial running statistics
        net(X * 2 + 1)
    batches = [(X[4 * k:4 * k + 4], Y[4 * k:4 * k + 4]) for k in range(3)]
    opt = EigenSAM(net.parameters(), rho=RHO, alpha=0.4, p=2, q=2, first_refresh="after_p", estimator="power",
                   hvp_mode="eval", renormalize=True, model=net, seed=5, **sgd_kwargs())
    v0 = opt.eigenvector.clone()
    hand = HandEigenSAM(net, v0, alpha=0.4, p=2, q=2, first_refresh="after_p", renormalize=True,
                        hvp_train=False)
    for k, (Xb, Yb) in enumerate(batches):
        hand.step(net, Xb, Yb)           # eval-mode Hessian with the running stats of step k
        opt.step(closure_for(net, Xb, Yb))
        assert torch.allclose(flat(net), hand.x, rtol=0, atol=1e-13), k
        assert torch.allclose(opt.eigenvector, hand.v, rtol=0, atol=1e-12), k
    assert opt.has_estimate and int(net[1].num_batches_tracked) == 4   # 1 + one per clean pass


def test_eigen_sam_with_alpha_zero_is_sam():
    nets = [make_net(bn=False), make_net(bn=False)]
    X, Y = make_data()
    a = EigenSAM(nets[0].parameters(), rho=RHO, alpha=0.0, p=1, q=1, **sgd_kwargs())
    b = SAM(nets[1].parameters(), rho=RHO, **sgd_kwargs())
    for _ in range(2):
        a.step(closure_for(nets[0], X, Y))
        b.step(closure_for(nets[1], X, Y))
    assert torch.allclose(flat(nets[0]), flat(nets[1]), rtol=0, atol=1e-15)


def test_egr_is_gradient_of_f_plus_rho_gradient_norm():
    net = make_net(bn=False)
    X, Y = make_data()
    opt = EGR(net.parameters(), rho=RHO, **sgd_kwargs())
    x = flat(net)
    ref = Reference(net, X, Y)
    g, H = ref.grad(x), ref.hess(x)
    objective_grad = torch.autograd.functional.jacobian(
        lambda z: ref.f(z) + RHO * torch.autograd.functional.jacobian(ref.f, z, create_graph=True).norm(), x)
    assert torch.allclose(objective_grad, g + RHO * H @ g / g.norm(), atol=1e-13)
    opt.step(closure_for(net, X, Y))
    assert torch.allclose(flat(net), x - ETA * objective_grad, rtol=0, atol=1e-14)


# -- state_dict, resume, schedulers -----------------------------------------------------------
def build(kind, net, steps_per_epoch=3):
    common = dict(lr=0.05, momentum=0.9, weight_decay=5e-3, model=net)
    if kind == "sam":
        return SAM(net.parameters(), rho=RHO, **common)
    if kind == "egr":
        return EGR(net.parameters(), rho=RHO, **common)
    return EigenSAM(net.parameters(), rho=RHO, p=2, q=2, p_counting="epoch",
                    steps_per_epoch=steps_per_epoch, first_refresh="after_p", **common)


@pytest.mark.parametrize("kind", ["sam", "eigen_sam", "egr"])
def test_state_dict_round_trip_resumes_bit_identically(kind):
    X, Y = make_data(24)
    batches = [(X[4 * k:4 * k + 4], Y[4 * k:4 * k + 4]) for k in range(6)]

    def run(net, opt, sched, steps):
        for Xb, Yb in steps:
            opt.step(closure_for(net, Xb, Yb))
            sched.step()

    net = make_net(bn=True)
    opt = build(kind, net)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)
    run(net, opt, sched, batches)

    net1 = make_net(bn=True)
    opt1 = build(kind, net1)
    sched1 = torch.optim.lr_scheduler.CosineAnnealingLR(opt1, T_max=6)
    run(net1, opt1, sched1, batches[:4])
    buffer = io.BytesIO()
    torch.save({"model": net1.state_dict(), "opt": opt1.state_dict(), "sched": sched1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    net2 = make_net(bn=True, seed=99)                            # different init, all overwritten
    opt2 = build(kind, net2)
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=6)
    net2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    run(net2, opt2, sched2, batches[4:])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.steps == 6
    if kind == "eigen_sam":
        assert torch.equal(opt2.eigenvector, opt.eigenvector)
    # without the base optimizer's momentum the resumed run would differ
    assert opt.state_dict()["base"]["state"], "momentum buffers are part of the state"


def test_lr_scheduler_drives_the_base_optimizer(recwarn):
    net = make_net(bn=False)
    X, Y = make_data()
    opt = SAM(net.parameters(), rho=RHO, lr=1.0, momentum=0.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    lrs = []
    for _ in range(3):
        x = flat(net)
        closure_for(net, X, Y)().backward()
        opt.first_step(zero_grad=True)
        closure_for(net, X, Y)().backward()
        lrs.append(opt.base_optimizer.param_groups[0]["lr"])
        opt.second_step(zero_grad=False)
        g = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        assert torch.allclose(flat(net), x - lrs[-1] * g, rtol=0, atol=1e-15)
        opt.zero_grad()
        sched.step()
    assert lrs == [1.0, 0.5, 0.25]
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]


# -- the refresh schedule equals the core's discrete Eigen-SAM ---------------------------------
@pytest.mark.parametrize("p_counting", ["global", "epoch"])
@pytest.mark.parametrize("first_refresh", ["start", "after_p"])
def test_trajectory_equals_core_discrete_eigen_sam(p_counting, first_refresh):
    from sdesam._streams import STREAM_INIT, draw_batches, seeded_generator
    from sdesam.curvature.power import random_unit_vector
    from sdesam.discrete import DiscreteEigenSAM as CoreEigenSAM
    from sdesam.problem import ModuleProblem

    X, Y = make_data(12)
    problem = ModuleProblem(make_net(bn=False), "cross_entropy", X, Y, 3, dtype=DTYPE)
    core = CoreEigenSAM(problem, ETA, RHO, alpha=0.5, p=3, q=2, p_counting=p_counting,
                        first_refresh=first_refresh)
    state = core.init_state(seed=4)
    net = make_net(bn=False)
    opt = EigenSAM(net.parameters(), rho=RHO, alpha=0.5, p=3, q=2, p_counting=p_counting, estimator="power",
                   first_refresh=first_refresh, steps_per_epoch=core.steps_per_epoch, **sgd_kwargs())
    v0 = random_unit_vector((1, problem.dim), generator=seeded_generator(4, STREAM_INIT, 0), dtype=DTYPE)[0]
    sd = opt.state_dict()
    sd["wrapper"]["eigenvector"] = v0
    opt.load_state_dict(sd)
    refreshed_core, refreshed_opt = [], []
    for k in range(9):
        idx = draw_batches(problem, 4, k, 1)[0, 0]
        before_core = state.extra["eigvec"].clone()
        core.advance(state, 1)
        refreshed_core.append(not torch.equal(before_core, state.extra["eigvec"]))
        before = opt.eigenvector.clone()
        opt.step(closure_for(net, X[idx], Y[idx]))
        refreshed_opt.append(not torch.equal(before, opt.eigenvector))
        assert torch.allclose(flat(net), state.x[0], rtol=0, atol=1e-12), k
    assert refreshed_opt == refreshed_core
    assert refreshed_opt == [core.refreshes_at(k) for k in range(9)]


# -- helpers and errors ---------------------------------------------------------------------
def test_frozen_running_stats_and_eval_mode_restore_everything():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, momentum=None), nn.Dropout(0.5)).to(DTYPE)
    net[2].eval()                                                # a deliberately frozen submodule
    X = torch.randn(8, 3, dtype=DTYPE)
    before = {n: b.clone() for n, b in net.named_buffers()}
    with frozen_running_stats(net):
        net(X)
    for n, b in net.named_buffers():
        assert torch.equal(b, before[n]), n
    assert net[1].track_running_stats
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and net[1].training and not net[2].training


def test_errors_name_the_problem():
    net = make_net(bn=False)
    X, Y = make_data()
    with pytest.raises(ValueError, match="rho"):
        SAM(net.parameters(), rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        SAM([{"params": net.parameters(), "rho": float("nan")}], lr=0.1)
    with pytest.raises(ValueError, match="EigenSAM"):
        SAM(net.parameters(), rule="eigen_sam", lr=0.1)
    with pytest.raises(ValueError, match="q must"):
        EigenSAM(net.parameters(), q=0, lr=0.1)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        EigenSAM(net.parameters(), p_counting="epoch", lr=0.1)
    with pytest.raises(ValueError, match="hvp_mode"):
        EigenSAM(net.parameters(), hvp_mode="eval", lr=0.1)
    opt = SAM(net.parameters(), lr=0.1)

    def backward_closure():
        loss = closure_for(net, X, Y)()
        loss.backward()
        return loss
    with pytest.raises(ValueError, match="must not call backward"):
        opt.step(backward_closure)
    with pytest.raises(ValueError, match="does not require grad"):
        opt.step(lambda: closure_for(net, X, Y)().detach())
    closure_for(net, X, Y)().backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="second_step"):
        opt.state_dict()
    with pytest.raises(RuntimeError, match="twice"):
        opt.first_step()
    opt.second_step()
    eig = EigenSAM(net.parameters(), lr=0.1, p=2)
    closure_for(net, X, Y)().backward()
    with pytest.raises(RuntimeError, match="update_eigenvector"):
        eig.first_step()
    with pytest.raises(ValueError, match="'sam' optimizer"):
        eig.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="add_param_group"):
        eig.add_param_group({"params": [nn.Parameter(torch.zeros(2, dtype=DTYPE))]})
