"""Replay tests of the SAM family beyond the perturbation: GSAM, WSAM, m-SAM, Fisher-SAM, ASAM,
gradient accumulation, SVAG, clipping — each reference algorithm written out step by step
here in plain PyTorch, run next to ``sdesam.optim`` in float64 over several steps with
momentum, weight decay and (where the reference has it) BatchNorm; parameters and BatchNorm
buffers compared after every step.

The references, as written out below:

- kozistr/pytorch_optimizer ``GSAM`` (optimizer/sam.py) with its ``ProportionScheduler``
  (lr_scheduler/proportion.py): ``update_rho_t()`` after ``lr_scheduler.step()``, so ρ_t is
  read from the learning rate of the step that uses it; the perturbation
  x + ρ_t g/(‖g‖ + 1e-12); the perturbed pass with BatchNorm momentum 0
  (``disable_running_stats``); ``gradient_decompose``: p.grad −= α(g − cos·‖g‖·p/(‖p‖ + 1e-12)),
  cos = ⟨g, p⟩/(‖p‖‖g‖ + 1e-12); ``un_perturb`` subtracts e_w; then the base step.
- juntang-zhuang/GSAM ``gsam/gsam.py``: the same step through its own methods
  (``perturb_weights``, ``gradient_decompose``, ``unperturb``), ρ_t from
  ``ProportionScheduler`` (gsam/scheduler.py), whose ``lr`` is the learning rate as a number.
- kozistr/pytorch_optimizer ``WSAM``: ``first_step`` (e_w = ρ g/(‖g‖ + 1e-12), g kept),
  the perturbed pass with BatchNorm momentum 0, ``second_step``: p −= e_w, then
  ``decouple=False``: p.grad.lerp_(g, 1 − α), the base step; ``decouple=True``: the base
  step with g, then x −= lr·α(p − g).
- m-SAM (its definition): per micro-batch i, g_i, ε_i = g_i/‖g_i‖, p_i at x + ρε_i (BatchNorm
  frozen), the base optimizer steps with the mean of Φ(g_i, p_i).
- davda54/sam ``adaptive=True``: e_w = ρ x² g/(‖|x| g‖ + 1e-12).

The 1e-12 guards change nothing at the 1e-12 tolerance.
"""
import copy
import io
import math

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sdesam.discrete import svag_coefficients
from sdesam.optim import GSAM, SAM, WSAM, EigenSAM
from sdesam.rules import FisherSAMRule
from tests.test_optim import Reference, flat, make_data, make_net

pytestmark = pytest.mark.usefixtures("one_thread")     # small tensors: one thread is faster

DTYPE = torch.float64
LR, RHO, MOMENTUM, WD = 0.05, 0.3, 0.9, 5e-3
STEPS, BATCH = 5, 8
TOL = 1e-12
EPS = 1e-12


def loss_fn(net, x, y):
    return nn.functional.cross_entropy(net(x), y)


def batches(steps=STEPS, batch=BATCH, seed=1):
    X, Y = make_data(steps * batch, seed=seed)
    return [(X[k * batch:(k + 1) * batch], Y[k * batch:(k + 1) * batch]) for k in range(steps)]


def state(net):
    """(flat parameters, flat float buffers, num_batches_tracked counters)."""
    buffers = dict(net.named_buffers())
    floats = [b.reshape(-1) for n, b in buffers.items() if b.is_floating_point()]
    counts = [int(b) for n, b in buffers.items() if not b.is_floating_point()]
    return flat(net), torch.cat(floats) if floats else torch.zeros(0, dtype=DTYPE), counts


def assert_same(net_a, net_b, step, tol=TOL):
    (pa, sa, ca), (pb, sb, cb) = state(net_a), state(net_b)
    assert float((pa - pb).norm() / pb.norm()) <= tol, (step, float((pa - pb).norm() / pb.norm()))
    if sb.numel():
        assert float((sa - sb).norm() / sb.norm()) <= tol, step
    assert ca == cb, (step, ca, cb)


def cosine(total):
    return lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total) / total))


def bn_layers(net):
    return [m for m in net.modules() if isinstance(m, _BatchNorm)]


def disable_running_stats(net):                    # kozistr / davda54: momentum 0
    for m in bn_layers(net):
        m.backup_momentum = m.momentum
        m.momentum = 0


def enable_running_stats(net):
    for m in bn_layers(net):
        if hasattr(m, "backup_momentum"):
            m.momentum = m.backup_momentum


def global_norm(tensors):
    return torch.norm(torch.stack([t.norm(p=2) for t in tensors]), p=2)


# -- GSAM: kozistr/pytorch_optimizer ------------------------------------------------------------
class ProportionScheduler:
    """kozistr's lr_scheduler/proportion.py (the torch scheduler has no ``last_lr``, so it
    reads ``optimizer.param_groups[0]['lr']``)."""

    def __init__(self, lr_scheduler, max_lr, min_lr, max_value, min_value):
        self.lr_scheduler, self.max_lr, self.min_lr = lr_scheduler, max_lr, min_lr
        self.max_value, self.min_value = max_value, min_value
        self.step()

    def step(self):
        lr = self.lr_scheduler.optimizer.param_groups[0]["lr"]
        if self.max_lr > self.min_lr:
            return self.min_value + (self.max_value - self.min_value) * (lr - self.min_lr) / (self.max_lr - self.min_lr)
        return self.max_value


def kozistr_gsam(net, data, *, alpha, rho_max, rho_min):
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(base, cosine(len(data)))
    rho_scheduler = ProportionScheduler(lr_scheduler, max_lr=LR, min_lr=0.0, max_value=rho_max, min_value=rho_min)
    rho_t = rho_scheduler.step()                       # GSAM.__init__: update_rho_t()
    params = list(net.parameters())
    for x, y in data:
        def get_grad():
            base.zero_grad()
            loss = loss_fn(net, x, y)
            loss.backward()
            return loss.detach()

        get_grad()
        with torch.no_grad():                          # perturb_weights
            scale = rho_t / (global_norm([p.grad for p in params]) + EPS)
            old_g = [p.grad.clone() for p in params]
            e_w = [p.grad * scale.to(p) for p in params]
            for p, e in zip(params, e_w):
                p.add_(e)
        disable_running_stats(net)
        get_grad()
        with torch.no_grad():                          # gradient_decompose
            inner_prod = sum(torch.sum(g * p.grad) for g, p in zip(old_g, params))
            new_grad_norm, old_grad_norm = global_norm([p.grad for p in params]), global_norm(old_g)
            cos = inner_prod / (new_grad_norm * old_grad_norm + EPS)
            for g, p in zip(old_g, params):
                vertical = g - cos * old_grad_norm * p.grad / (new_grad_norm + EPS)
                p.grad.add_(vertical, alpha=-alpha)
            for p, e in zip(params, e_w):              # un_perturb
                p.sub_(e)
        base.step()
        enable_running_stats(net)
        lr_scheduler.step()
        rho_t = rho_scheduler.step()                   # update_rho_t()
        yield


def gsam_sdesam(net, steps, **kwargs):
    opt = GSAM(net.parameters(), torch.optim.SGD, model=net, perturbed_bn="zero_momentum", lr=LR,
               momentum=MOMENTUM, weight_decay=WD, **kwargs)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, cosine(steps))


def replay(reference, opt, scheduler, net_ref, net, data, closure_of=None):
    step = 0
    for _ in reference:
        x, y = data[step]
        closure = closure_of(opt, x, y) if closure_of else (lambda: loss_fn(net, x, y))
        opt.step(closure)
        if scheduler is not None:
            scheduler.step()
        assert_same(net, net_ref, step)
        step += 1
    assert step == len(data)


def test_gsam_replays_kozistr_with_its_rho_schedule():
    data = batches()
    net_ref, net = make_net(bn=True), make_net(bn=True)
    opt, sched = gsam_sdesam(net, len(data), alpha=0.4, rho=RHO, rho_min=0.05)
    replay(kozistr_gsam(net_ref, data, alpha=0.4, rho_max=RHO, rho_min=0.05), opt, sched, net_ref, net, data)
    # the schedule moved ρ: at the last step lr = LR·(1 + cos(4π/5))/2
    group = opt.param_groups[0]
    assert opt.scheduled_rho(group) == pytest.approx(0.05 + (RHO - 0.05) * group["lr"] / LR, rel=1e-15)
    assert int(net.state_dict()["1.num_batches_tracked"]) == 2 * len(data)   # both passes count


# -- GSAM: juntang-zhuang/GSAM ------------------------------------------------------------------
class JuntangProportionScheduler:
    """gsam/scheduler.py ``ProportionScheduler.step`` (lr: the learning rate as a number)."""

    def __init__(self, optimizer, max_lr, min_lr, max_value, min_value):
        self.optimizer, self.max_lr, self.min_lr = optimizer, max_lr, min_lr
        self.max_value, self.min_value, self.t = max_value, min_value, 0

    def step(self):
        self.t += 1
        lr = self.optimizer.param_groups[0]["lr"]
        if self.max_lr > self.min_lr:
            return self.min_value + (self.max_value - self.min_value) * (lr - self.min_lr) / (self.max_lr - self.min_lr)
        return self.max_value


class JuntangGSAM:
    """gsam/gsam.py's GSAM, its methods written out (adaptive=False, one process)."""

    def __init__(self, params, base_optimizer, model, gsam_alpha, rho_scheduler, perturb_eps=1e-12):
        self.params, self.base_optimizer, self.model = list(params), base_optimizer, model
        self.alpha, self.rho_scheduler, self.perturb_eps = gsam_alpha, rho_scheduler, perturb_eps
        self.state = {p: {} for p in self.params}
        self.update_rho_t()

    def update_rho_t(self):
        self.rho_t = self.rho_scheduler.step()

    @torch.no_grad()
    def perturb_weights(self, rho):
        grad_norm = self._grad_norm()
        scale = rho / (grad_norm + self.perturb_eps)
        for p in self.params:
            self.state[p]["old_g"] = p.grad.data.clone()
            e_w = p.grad * scale.to(p)
            p.add_(e_w)
            self.state[p]["e_w"] = e_w

    @torch.no_grad()
    def unperturb(self):
        for p in self.params:
            p.data.sub_(self.state[p]["e_w"])

    @torch.no_grad()
    def gradient_decompose(self, alpha):
        inner_prod = 0.0
        for p in self.params:
            inner_prod += torch.sum(self.state[p]["old_g"] * p.grad.data)
        new_grad_norm = self._grad_norm()
        old_grad_norm = self._grad_norm(by="old_g")
        cos = inner_prod / (new_grad_norm * old_grad_norm + self.perturb_eps)
        for p in self.params:
            vertical = self.state[p]["old_g"] - cos * old_grad_norm * p.grad.data / (new_grad_norm + self.perturb_eps)
            p.grad.data.add_(vertical, alpha=-alpha)

    def _grad_norm(self, by=None):
        return torch.norm(torch.stack([(p.grad if by is None else self.state[p][by]).norm(p=2)
                                       for p in self.params]), p=2)

    def step(self, get_grad):
        get_grad()
        self.perturb_weights(rho=self.rho_t)
        disable_running_stats(self.model)
        get_grad()
        self.gradient_decompose(self.alpha)
        self.unperturb()
        self.base_optimizer.step()
        enable_running_stats(self.model)


def juntang_gsam(net, data, *, alpha, rho_max, rho_min):
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(base, cosine(len(data)))
    rho_scheduler = JuntangProportionScheduler(base, max_lr=LR, min_lr=0.0, max_value=rho_max, min_value=rho_min)
    gsam = JuntangGSAM(net.parameters(), base, net, alpha, rho_scheduler)
    for x, y in data:
        def get_grad():
            base.zero_grad()
            loss_fn(net, x, y).backward()

        gsam.step(get_grad)
        lr_scheduler.step()
        gsam.update_rho_t()
        yield


def test_gsam_replays_juntang_zhuang():
    data = batches()
    net_ref, net = make_net(bn=True), make_net(bn=True)
    opt, sched = gsam_sdesam(net, len(data), alpha=0.2, rho=RHO, rho_min=0.1)
    replay(juntang_gsam(net_ref, data, alpha=0.2, rho_max=RHO, rho_min=0.1), opt, sched, net_ref, net, data)


# -- WSAM: kozistr/pytorch_optimizer ------------------------------------------------------------
def kozistr_wsam(net, data, *, gamma, decouple):
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(base, cosine(len(data)))
    alpha = gamma / (1.0 - gamma)
    params = list(net.parameters())
    for x, y in data:
        def closure():
            base.zero_grad()
            loss = loss_fn(net, x, y)
            loss.backward()
            return loss

        enable_running_stats(net)
        closure()
        with torch.no_grad():                           # first_step
            scale = RHO / (global_norm([p.grad for p in params]) + EPS)
            e_w = [p.grad * scale.to(p) for p in params]
            for p, e in zip(params, e_w):
                p.add_(e)
            grad = [p.grad.clone() for p in params]
        base.zero_grad()
        disable_running_stats(net)
        closure()
        with torch.no_grad():                           # second_step
            for p, e in zip(params, e_w):
                p.add_(e, alpha=-1.0)
            sharpness = []
            for p, g in zip(params, grad):
                if not decouple:
                    p.grad.lerp_(g, weight=1.0 - alpha)
                else:
                    sharpness.append(p.grad.clone() - g)
                    p.grad.mul_(0.0).add_(g, alpha=1.0)
            base.step()
            if decouple:
                for p, s in zip(params, sharpness):
                    p.add_(s, alpha=-base.param_groups[0]["lr"] * alpha)
        lr_scheduler.step()
        yield


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_replays_kozistr(decouple):
    data = batches()
    net_ref, net = make_net(bn=True), make_net(bn=True)
    opt = WSAM(net.parameters(), torch.optim.SGD, rho=RHO, gamma=0.8, decouple=decouple, model=net,
               perturbed_bn="zero_momentum", lr=LR, momentum=MOMENTUM, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(len(data)))
    replay(kozistr_wsam(net_ref, data, gamma=0.8, decouple=decouple), opt, sched, net_ref, net, data)


def test_wsam_forms_differ_with_momentum_and_agree_without():
    data = batches(steps=3)

    def run(decouple, momentum):
        net = make_net(bn=False)
        opt = WSAM(net.parameters(), rho=RHO, gamma=0.8, decouple=decouple, model=net, lr=LR,
                   momentum=momentum, weight_decay=WD)
        for x, y in data:
            opt.step(lambda: loss_fn(net, x, y))
        return flat(net)

    assert torch.allclose(run(True, 0.0), run(False, 0.0), rtol=0, atol=1e-14)
    assert not torch.allclose(run(True, MOMENTUM), run(False, MOMENTUM), rtol=0, atol=1e-6)


# -- m-SAM: the definition --------------------------------------------------------------------------
def gsam_phi(alpha):
    """GSAM's map written out: p − α(g − ⟨g, p⟩/‖p‖² p)."""
    return lambda g, p: p - alpha * (g - (g @ p) / (p @ p) * p)


def msam_definition(net, data, m, phi=None):
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    params = list(net.parameters())
    for x, y in data:
        size = len(y) // m
        x0 = [p.detach().clone() for p in params]
        total = 0.0
        for i in range(m):
            xi, yi = x[i * size:(i + 1) * size], y[i * size:(i + 1) * size]
            base.zero_grad()
            loss_fn(net, xi, yi).backward()                # clean pass: BatchNorm statistics update
            g = torch.cat([p.grad.reshape(-1) for p in params])
            eps = g / g.norm()
            with torch.no_grad():
                offset = 0
                for p in params:
                    p.add_(RHO * eps[offset:offset + p.numel()].view_as(p))
                    offset += p.numel()
            for layer in bn_layers(net):                    # perturbed pass: statistics frozen
                layer.track_running_stats = False
            base.zero_grad()
            loss_fn(net, xi, yi).backward()
            for layer in bn_layers(net):
                layer.track_running_stats = True
            p_i = torch.cat([p.grad.reshape(-1) for p in params])
            with torch.no_grad():
                for p, saved in zip(params, x0):
                    p.copy_(saved)
            total = total + (p_i if phi is None else phi(g, p_i))
        mean = total / m
        offset = 0
        for p in params:
            p.grad = mean[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        base.step()
        yield


@pytest.mark.parametrize("update", [None, "gsam"])
def test_msam_replays_the_definition(update):
    data = batches(batch=12)
    net_ref, net = make_net(bn=True), make_net(bn=True)
    phi = None if update is None else gsam_phi(0.3)
    if update is None:
        opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, micro_batches=3, model=net, lr=LR,
                  momentum=MOMENTUM, weight_decay=WD)
    else:
        opt = GSAM(net.parameters(), torch.optim.SGD, rho=RHO, alpha=0.3, micro_batches=3, model=net, lr=LR,
                   momentum=MOMENTUM, weight_decay=WD)
    replay(msam_definition(net_ref, data, 3, phi), opt, None, net_ref, net, data,
           closure_of=lambda opt, x, y: opt.split_closure(lambda xb, yb: loss_fn(net, xb, yb), x, y))
    assert int(net.state_dict()["1.num_batches_tracked"]) == 3 * len(data)   # one per micro-batch clean pass


def test_special_cases_reduce_to_sam():
    """m = 1 and l = 1 are SAM bit for bit; GSAM α = 0 too; WSAM γ = 1/2 (α = 1) coupled,
    or decoupled without momentum, to rounding."""
    data = batches(steps=3)

    def run(make):
        net = make_net(bn=True)
        opt = make(net)
        for x, y in data:
            opt.step(opt.split_closure(lambda xb, yb: loss_fn(net, xb, yb), x, y))
        return state(net)

    kw = dict(rho=RHO, lr=LR, weight_decay=WD)
    sam = run(lambda net: SAM(net.parameters(), model=net, momentum=MOMENTUM, **kw))
    for make in (lambda net: SAM(net.parameters(), model=net, momentum=MOMENTUM, micro_batches=1, **kw),
                 lambda net: SAM(net.parameters(), model=net, momentum=MOMENTUM, svag=1, **kw),
                 lambda net: GSAM(net.parameters(), model=net, momentum=MOMENTUM, alpha=0.0, **kw)):
        other = run(make)
        assert torch.equal(other[0], sam[0]) and torch.equal(other[1], sam[1]) and other[2] == sam[2]
    wsam = run(lambda net: WSAM(net.parameters(), model=net, momentum=MOMENTUM, gamma=0.5, decouple=False, **kw))
    assert torch.allclose(wsam[0], sam[0], rtol=0, atol=1e-14) and wsam[2] == sam[2]
    plain = run(lambda net: SAM(net.parameters(), model=net, momentum=0.0, **kw))
    decoupled = run(lambda net: WSAM(net.parameters(), model=net, momentum=0.0, gamma=0.5, **kw))
    assert torch.allclose(decoupled[0], plain[0], rtol=0, atol=1e-14)
    # and the options do something: m = 2, α > 0, γ ≠ 1/2 move elsewhere
    for make in (lambda net: SAM(net.parameters(), model=net, momentum=MOMENTUM, micro_batches=2, **kw),
                 lambda net: GSAM(net.parameters(), model=net, momentum=MOMENTUM, alpha=0.3, **kw),
                 lambda net: WSAM(net.parameters(), model=net, momentum=MOMENTUM, gamma=0.7, decouple=False, **kw)):
        assert not torch.allclose(run(make)[0], sam[0], rtol=0, atol=1e-8)


# -- rules without a coefficient form: Fisher-SAM, ASAM -------------------------------------------
def two_pass(net, data, perturbation, perturbed_bn=True):
    """A SAM loop around torch SGD with ε = perturbation(g, x) (flat), written out."""
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    params = list(net.parameters())
    for x, y in data:
        base.zero_grad()
        loss_fn(net, x, y).backward()
        g = torch.cat([p.grad.reshape(-1) for p in params])
        x0 = [p.detach().clone() for p in params]
        eps = perturbation(g, torch.cat([t.reshape(-1) for t in x0]))
        with torch.no_grad():
            offset = 0
            for p in params:
                p.add_(eps[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        disable_running_stats(net)
        base.zero_grad()
        loss_fn(net, x, y).backward()
        enable_running_stats(net)
        with torch.no_grad():
            for p, saved in zip(params, x0):
                p.copy_(saved)
        base.step()
        yield


@pytest.mark.parametrize("eta_f", [1.0, 40.0])
def test_fisher_sam_equals_its_formula(eta_f):
    """Kim et al. 2022: ε = ρ F⁻¹g/√(gᵀF⁻¹g), F = diag(1 + η_F g²)."""
    def fisher(g, x):
        f_inv_g = g / (1.0 + eta_f * g * g)
        return RHO * f_inv_g / torch.sqrt(g @ f_inv_g)

    data = batches()
    net_ref, net = make_net(bn=True), make_net(bn=True)
    rule = "fisher_sam" if eta_f == 1.0 else FisherSAMRule(eta_f=eta_f)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, rule=rule, model=net, perturbed_bn="zero_momentum",
              lr=LR, momentum=MOMENTUM, weight_decay=WD)
    replay(two_pass(net_ref, data, fisher), opt, None, net_ref, net, data)


def test_asam_replays_davda54_adaptive():
    def adaptive(g, x):
        return RHO * x * x * g / ((x.abs() * g).norm() + EPS)

    data = batches()
    net_ref, net = make_net(bn=True), make_net(bn=True)
    opt = SAM(net.parameters(), torch.optim.SGD, rho=RHO, rule="asam", model=net, perturbed_bn="zero_momentum",
              lr=LR, momentum=MOMENTUM, weight_decay=WD)
    replay(two_pass(net_ref, data, adaptive), opt, None, net_ref, net, data)


# -- gradient accumulation, SVAG, clipping ------------------------------------------------------------
@pytest.mark.parametrize("make", ["sam", "usam", "gsam", "wsam"])
def test_accumulated_micro_batches_equal_one_big_batch(make):
    """k = 3 pieces of 4 examples accumulate to the step one pass over all 12 takes (BN-free:
    BatchNorm's batch statistics would be per piece)."""
    data = batches(batch=12)

    def build(net, k):
        kw = dict(rho=RHO, lr=LR, momentum=MOMENTUM, weight_decay=WD, model=net, accumulate=k)
        if make in ("sam", "usam"):
            return SAM(net.parameters(), rule=make, **kw)
        return GSAM(net.parameters(), alpha=0.3, **kw) if make == "gsam" else WSAM(net.parameters(), gamma=0.8, **kw)

    nets = [make_net(bn=False), make_net(bn=False)]
    opts = [build(nets[0], 1), build(nets[1], 3)]
    for x, y in data:
        losses = [opt.step(opt.split_closure(lambda xb, yb, net=net: loss_fn(net, xb, yb), x, y))
                  for opt, net in zip(opts, nets)]
        assert abs(float(losses[0] - losses[1])) < 1e-14
        assert torch.allclose(flat(nets[1]), flat(nets[0]), rtol=0, atol=1e-12)
    assert not torch.equal(flat(nets[0]), flat(make_net(bn=False)))


@pytest.mark.parametrize("ell", [2, 5])
@pytest.mark.parametrize("update", [None, "gsam"])
def test_one_svag_step_equals_the_formula(ell, update):
    """x ← x − (η/l)[c₁Φ_{γ₁} + c₂Φ_{γ₂}], each Φ from its own minibatch's perturbation, with
    plain SGD at lr = η/l; the data are γ₁ then γ₂."""
    eta = 0.4
    X, Y = make_data(16)
    net = make_net(bn=False)
    x0 = flat(net)
    c1, c2 = svag_coefficients(ell)
    assert c1 + c2 == pytest.approx(1) and c1 ** 2 + c2 ** 2 == pytest.approx(ell)
    phis = []
    for rows in (slice(0, 8), slice(8, 16)):
        ref = Reference(net, X[rows], Y[rows])
        g = ref.grad(x0)
        p = ref.grad(x0 + RHO * g / g.norm())
        phis.append(p if update is None else gsam_phi(0.3)(g, p))
    expected = x0 - (eta / ell) * (c1 * phis[0] + c2 * phis[1])
    kw = dict(rho=RHO, lr=eta / ell, momentum=0.0, model=net, svag=ell)
    opt = SAM(net.parameters(), **kw) if update is None else GSAM(net.parameters(), alpha=0.3, **kw)
    assert opt.parts == 2
    loss = opt.step(opt.split_closure(lambda xb, yb: loss_fn(net, xb, yb), X, Y))
    assert torch.allclose(flat(net), expected, rtol=0, atol=1e-13)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(loss_fn(make_net(bn=False), X, Y)), abs=1e-14)


def test_svag_with_micro_batches_orders_the_parts():
    """svag=2, micro_batches=2: parts 0, 1 are γ₁'s micro-batches, 2, 3 γ₂'s."""
    X, Y = make_data(16)
    net = make_net(bn=False)
    x0 = flat(net)
    c1, c2 = svag_coefficients(3)
    phis = []
    for j in range(2):
        p_mean = 0
        for i in range(2):
            ref = Reference(net, X[8 * j + 4 * i:8 * j + 4 * i + 4], Y[8 * j + 4 * i:8 * j + 4 * i + 4])
            g = ref.grad(x0)
            p_mean = p_mean + ref.grad(x0 + RHO * g / g.norm()) / 2
        phis.append(p_mean)
    opt = SAM(net.parameters(), rho=RHO, lr=0.1, momentum=0.0, model=net, svag=3, micro_batches=2)
    calls = []
    closure = opt.split_closure(lambda xb, yb: loss_fn(net, xb, yb), X, Y)
    opt.step(lambda part: calls.append(part) or closure(part))
    assert calls == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.allclose(flat(net), x0 - 0.1 * (c1 * phis[0] + c2 * phis[1]), rtol=0, atol=1e-13)


@pytest.mark.parametrize("ascent", [False, True])
def test_clip_grad_norm(ascent):
    """The base optimizer's gradient is clipped to norm c (factor c/(‖·‖ + 1e-6)); with
    clip_ascent also the clean gradient before ε (USAM: ε = g, so it matters)."""
    X, Y = make_data(8)
    net = make_net(bn=False)
    x0 = flat(net)
    ref = Reference(net, X, Y)

    def clip(v, c):
        return v * min(1.0, c / (float(v.norm()) + 1e-6))

    g = ref.grad(x0)
    eps = clip(g, 0.05) if ascent else g
    p = ref.grad(x0 + RHO * eps)
    assert float(p.norm()) > 0.05 and float(g.norm()) > 0.05
    opt = SAM(net.parameters(), rho=RHO, rule="usam", lr=LR, momentum=0.0, model=net, clip_grad_norm=0.05,
              clip_ascent=ascent)
    opt.step(lambda: loss_fn(net, X, Y))
    assert torch.allclose(flat(net), x0 - LR * clip(p, 0.05), rtol=0, atol=1e-14)


# -- BatchNorm guard ---------------------------------------------------------------------------------
def test_batchnorm_statistics_are_guarded_without_model():
    X, Y = make_data(8)
    net = make_net(bn=True)
    before = copy.deepcopy(net.state_dict())
    opt = SAM(net.parameters(), rho=RHO, lr=LR)
    with pytest.raises(ValueError, match="perturbed pass ran BatchNorm1d.*model="):
        opt.step(lambda: loss_fn(net, X, Y))
    after = net.state_dict()
    assert torch.equal(after["0.weight"], before["0.weight"])               # back at x, no step taken
    assert torch.equal(after["1.running_mean"], dict(net.named_buffers())["1.running_mean"])
    assert int(after["1.num_batches_tracked"]) == 1                          # the clean pass only
    assert opt.steps == 0 and opt._backup is None and all(p.grad is None for p in net.parameters())
    eig = EigenSAM(net.parameters(), rho=RHO, lr=LR, p=1, q=1, hvp_mode="train")
    with pytest.raises(ValueError, match="Hessian-vector products ran BatchNorm1d"):
        eig.update_eigenvector(lambda: loss_fn(net, X, Y))
    # opt-outs: model=None (both passes update), or statistics frozen by the closure
    free = SAM(net.parameters(), rho=RHO, lr=LR, model=None)
    free.step(lambda: loss_fn(net, X, Y))
    assert int(net.state_dict()["1.num_batches_tracked"]) == 3
    for layer in bn_layers(net):
        layer.momentum = 0.0
    opt.step(lambda: loss_fn(net, X, Y))                                    # momentum 0: nothing to guard
    net.eval()
    opt.step(lambda: loss_fn(net, X, Y))                                    # eval mode: nothing to guard


# -- errors and state ------------------------------------------------------------------------------------
def test_bad_hyperparameters_are_named():
    net = make_net(bn=False)
    X, Y = make_data(10)
    with pytest.raises(ValueError, match="alpha"):
        GSAM(net.parameters(), alpha=-0.1, lr=0.1)
    for gamma in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            WSAM(net.parameters(), gamma=gamma, lr=0.1)
    with pytest.raises(ValueError, match="rho_min"):
        GSAM(net.parameters(), rho=0.05, rho_min=0.1, lr=0.1)
    with pytest.raises(ValueError, match="micro_batches"):
        SAM(net.parameters(), micro_batches=0, lr=0.1)
    with pytest.raises(ValueError, match="svag"):
        SAM(net.parameters(), svag=0, lr=0.1)
    with pytest.raises(ValueError, match="micro_batches=2 and accumulate=2"):
        SAM(net.parameters(), micro_batches=2, accumulate=2, lr=0.1)
    with pytest.raises(ValueError, match="micro_batches=3"):
        SAM(net.parameters(), micro_batches=3, lr=0.1).split_closure(lambda x, y: x.sum(), X, Y)
    with pytest.raises(ValueError, match="calls closure.part.: build the closure with split_closure"):
        SAM(net.parameters(), micro_batches=2, lr=0.1).step(lambda: loss_fn(net, X, Y))
    with pytest.raises(ValueError, match="clip_grad_norm"):
        SAM(net.parameters(), clip_grad_norm=0.0, lr=0.1)
    with pytest.raises(ValueError, match="clip_ascent"):
        SAM(net.parameters(), clip_ascent=True, lr=0.1)
    with pytest.raises(ValueError, match="update"):
        SAM(net.parameters(), update="lookahead", lr=0.1)
    with pytest.raises(ValueError, match="sets update"):
        GSAM(net.parameters(), update="wsam", lr=0.1)
    with pytest.raises(ValueError, match="EigenSAM does not take micro_batches"):
        EigenSAM(net.parameters(), micro_batches=2, lr=0.1)
    opt = SAM(net.parameters(), micro_batches=2, lr=0.1)
    with pytest.raises(ValueError, match="saved with other options.*micro_batches"):
        opt.load_state_dict(SAM(net.parameters(), lr=0.1).state_dict())


def build_resumable(kind, net):
    kw = dict(rho=RHO, lr=LR, momentum=MOMENTUM, weight_decay=WD, model=net)
    return {"gsam": lambda: GSAM(net.parameters(), alpha=0.3, rho_min=0.05, **kw),
            "wsam": lambda: WSAM(net.parameters(), gamma=0.8, **kw),
            "msam": lambda: SAM(net.parameters(), micro_batches=2, **kw),
            "svag": lambda: WSAM(net.parameters(), gamma=0.8, svag=3, **kw),
            "accumulate": lambda: GSAM(net.parameters(), accumulate=2, rule="fisher_sam", **kw),
            "clip": lambda: SAM(net.parameters(), rule="asam", clip_grad_norm=0.1, clip_ascent=True, **kw)}[kind]()


@pytest.mark.parametrize("kind", ["gsam", "wsam", "msam", "svag", "accumulate", "clip"])
def test_state_dict_resumes_bit_identically(kind):
    data = batches(steps=6)

    def run(net, opt, sched, steps):
        for x, y in steps:
            opt.step(opt.split_closure(lambda xb, yb: loss_fn(net, xb, yb), x, y))
            sched.step()

    net = make_net(bn=True)
    opt = build_resumable(kind, net)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine(6))
    run(net, opt, sched, data)
    net1 = make_net(bn=True)
    opt1 = build_resumable(kind, net1)
    sched1 = torch.optim.lr_scheduler.LambdaLR(opt1, cosine(6))
    run(net1, opt1, sched1, data[:3])
    buffer = io.BytesIO()
    torch.save({"model": net1.state_dict(), "opt": opt1.state_dict(), "sched": sched1.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    net2 = make_net(bn=True, seed=5)
    opt2 = build_resumable(kind, net2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, cosine(6))
    net2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    run(net2, opt2, sched2, data[3:])
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)
    assert opt2.steps == 6 and opt.state_dict()["base"]["state"]
