"""Mixed precision with ``torch.amp.GradScaler`` in the SAM family.

A GradScaler's scale is a power of two, so in float64 the scaled backward gives exactly
S times every gradient and the scaled step must equal the unscaled one bit for bit; a
non-finite gradient in either pass must skip the step the way GradScaler skips a plain
optimizer's (parameters and momentum untouched, scale backed off); with float16 autocast
on the CPU the step must match the float32 step to float16 accuracy.
"""
import copy

import pytest
import torch
from torch import nn

from sdesam.optim import EGR, GSAM, SAM, WSAM, EigenSAM
from tests.test_optim import flat, make_data, make_net

pytestmark = pytest.mark.usefixtures("one_thread")     # small tensors: one thread is faster

RHO, LR, MOMENTUM, WD = 0.3, 0.05, 0.9, 5e-3


def loss_fn(net, x, y):
    return nn.functional.cross_entropy(net(x), y)


def scaler(scale=2.0 ** 16):
    return torch.amp.GradScaler("cpu", init_scale=scale)


BUILDERS = {
    "sam": lambda net, **kw: SAM(net.parameters(), **kw),
    "usam": lambda net, **kw: SAM(net.parameters(), rule="usam", **kw),
    "fisher_sam": lambda net, **kw: SAM(net.parameters(), rule="fisher_sam", **kw),
    "gsam": lambda net, **kw: GSAM(net.parameters(), alpha=0.3, rho_min=0.1, **kw),
    "wsam": lambda net, **kw: WSAM(net.parameters(), gamma=0.8, **kw),
    "msam_clip": lambda net, **kw: SAM(net.parameters(), micro_batches=2, clip_grad_norm=0.2, clip_ascent=True, **kw),
    "svag": lambda net, **kw: WSAM(net.parameters(), gamma=0.8, decouple=False, svag=2, **kw),
}


def build(kind, net, **extra):
    return BUILDERS[kind](net, rho=RHO, lr=LR, momentum=MOMENTUM, weight_decay=WD, model=net, **extra)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_scaled_step_equals_the_unscaled_step_bit_for_bit(kind):
    X, Y = make_data(24)
    nets = [make_net(bn=True), make_net(bn=True)]
    amp = scaler()
    opts = [build(kind, nets[0]), build(kind, nets[1], scaler=amp)]
    for k in range(3):
        x, y = X[8 * k:8 * k + 8], Y[8 * k:8 * k + 8]
        for opt, net in zip(opts, nets):
            opt.step(opt.split_closure(lambda xb, yb, net=net: loss_fn(net, xb, yb), x, y))
        amp.update()
        for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()):
            assert torch.equal(a, b), (kind, k)
    assert amp.get_scale() == 2.0 ** 16 and opts[1].steps == 3


def test_explicit_steps_with_a_scaler_equal_the_one_call_step():
    X, Y = make_data(8)
    nets = [make_net(bn=False), make_net(bn=False)]
    amps = [scaler(), scaler()]
    opts = [GSAM(net.parameters(), alpha=0.3, rho=RHO, lr=LR, model=net, scaler=amp) for net, amp in zip(nets, amps)]
    opts[0].step(lambda: loss_fn(nets[0], X, Y))
    amps[1].scale(loss_fn(nets[1], X, Y)).backward()
    opts[1].first_step(zero_grad=True)
    amps[1].scale(loss_fn(nets[1], X, Y)).backward()
    opts[1].second_step(zero_grad=True)
    assert torch.equal(flat(nets[0]), flat(nets[1]))


class Poisoned:
    """The closure of a step whose call number ``bad`` (0-based) overflows."""

    def __init__(self, net, x, y, bad):
        self.net, self.x, self.y, self.bad, self.calls = net, x, y, bad, 0

    def __call__(self, part=None):
        loss = loss_fn(self.net, self.x, self.y)
        self.calls += 1
        return loss * float("inf") if self.calls - 1 == self.bad else loss


@pytest.mark.parametrize("kind,bad,calls", [("sam", 1, 2), ("sam", 0, 1), ("wsam", 1, 2), ("gsam", 0, 1),
                                            ("msam_clip", 3, 4)])
def test_a_non_finite_step_is_skipped_as_gradscaler_skips_it(kind, bad, calls):
    """Overflow in the clean pass (bad=0: the perturbed pass does not run) or the perturbed
    pass: parameters, momentum and BatchNorm running statistics (beyond the clean pass) stay,
    the scale halves at update(), and the next step proceeds."""
    X, Y = make_data(16)
    net = make_net(bn=True)
    amp = scaler()
    opt = build(kind, net, scaler=amp, perturbed_bn="zero_momentum")
    opt.step(opt.split_closure(lambda xb, yb: loss_fn(net, xb, yb), X[:8], Y[:8]))
    amp.update()
    before = copy.deepcopy(net.state_dict())
    momentum = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["base"]["state"].items()}
    poisoned = Poisoned(net, X[8:], Y[8:], bad)
    opt.step(poisoned)
    amp.update()
    assert poisoned.calls == calls
    after = net.state_dict()
    for name in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert torch.equal(after[name], before[name]), name
    assert torch.isfinite(after["1.running_mean"]).all() and torch.isfinite(after["1.running_var"]).all()
    for k, v in opt.state_dict()["base"]["state"].items():
        assert torch.equal(v["momentum_buffer"], momentum[k])
    assert amp.get_scale() == 2.0 ** 15 and opt.steps == 2
    opt.step(opt.split_closure(lambda xb, yb: loss_fn(net, xb, yb), X[8:], Y[8:]))
    amp.update()
    assert not torch.equal(net.state_dict()["0.weight"], before["0.weight"])


def test_float16_autocast_step_matches_float32():
    torch.manual_seed(0)
    X, Y = torch.randn(32, 16), torch.randint(4, (32,))
    nets = [nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    x0 = flat(nets[0])
    amp = scaler()
    opts = [SAM(nets[0].parameters(), rho=0.05, lr=0.5, momentum=0.0, model=nets[0]),
            SAM(nets[1].parameters(), rho=0.05, lr=0.5, momentum=0.0, model=nets[1], scaler=amp)]

    def half(xb, yb):
        with torch.autocast("cpu", dtype=torch.float16):
            logits = nets[1](xb)
        assert logits.dtype == torch.float16
        return nn.functional.cross_entropy(logits.float(), yb)

    opts[0].step(lambda: loss_fn(nets[0], X, Y))
    opts[1].step(opts[1].split_closure(half, X, Y))
    amp.update()
    moved = [flat(net) - x0 for net in nets]
    assert float((moved[1] - moved[0]).norm() / moved[0].norm()) < 5e-3


def test_a_scaled_loss_from_the_closure_is_refused():
    """The bug this replaces: a closure returning scaler.scale(loss) made SAM step 65,536×
    too far; now it is refused whether or not the scaler was given."""
    X, Y = make_data(8)
    net = make_net(bn=False)
    amp = scaler()
    for opt in (SAM(net.parameters(), rho=RHO, lr=LR, model=net),
                SAM(net.parameters(), rho=RHO, lr=LR, model=net, scaler=amp),
                EGR(net.parameters(), rho=RHO, lr=LR, model=net)):
        x0 = flat(net)
        with pytest.raises(ValueError, match="GradScaler.scale"):
            opt.step(lambda: amp.scale(loss_fn(net, X, Y)))
        assert torch.equal(flat(net), x0)
    SAM(net.parameters(), rho=RHO, lr=LR, model=net).step(lambda: loss_fn(net, X, Y) * 2.0)   # a plain factor is fine
    with pytest.raises(ValueError, match="EigenSAM does not take scaler"):
        EigenSAM(net.parameters(), lr=LR, scaler=amp)
    with pytest.raises(ValueError, match="EGR does not take scaler"):
        EGR(net.parameters(), lr=LR, scaler=amp)
    with pytest.raises(ValueError, match="GradScaler"):
        SAM(net.parameters(), lr=LR, scaler=object())
