"""Replay tests: the official Eigen-SAM training loop (RitianLuo/EigenSAM) and the
davda54/sam two-pass loop, written out step by step in plain PyTorch, against
``sdesam.optim.EigenSAM.official`` and ``sdesam.optim.SAM`` — two epochs of a small
BatchNorm CNN in float64, parameters *and* BatchNorm buffers compared after every step.

The official Eigen-SAM branch, as replayed here:

- v̂ is re-estimated before the step whose 0-based index k *within the epoch* has
  ``k % p == 0 and k > 0`` (k = p, 2p, …), and it persists across epochs;
- the power iteration runs with the model in eval mode on the current minibatch:
  ``loss.backward(create_graph=True)``, then q times
  ``autograd.grad(grads, params, grad_outputs=v)`` with each product normalised as
  v ← Hv / sqrt(‖Hv‖² + 1e-12); warm start from the previous v̂, a Gaussian the first time;
- the clean pass (training mode) gives g; before the first estimate of the run the SAM
  first step gets g itself with normalisation off (ε = g); afterwards the gradient is
  replaced in place by ĝ + α·sign⟨g, v̂⟩·(v̂ − ⟨ĝ, v̂⟩ĝ), ĝ = g/(‖g‖ + 1e-12), and the first
  step again does not normalise (x + ρ·that);
- the perturbed pass runs with every BatchNorm's momentum set to 0 (the running
  statistics stay, ``num_batches_tracked`` still counts); then the parameters go back
  to x and SGD (momentum 0.9, weight decay 5e-4) steps with the perturbed gradient.

The 1e-12 guards are the official code's; they change nothing at the 1e-12 tolerance.
"""
import pytest
import torch
from torch import nn

from sdesam.optim import SAM, EigenSAM, zero_momentum
from sdesam.refresh import RefreshSchedule

pytestmark = pytest.mark.filterwarnings("ignore:Using backward.. with create_graph=True:UserWarning")

DTYPE = torch.float64
LR, RHO, ALPHA, WD, MOMENTUM = 0.05, 0.1, 0.3, 5e-4, 0.9
N, BATCH, P, Q, EPOCHS, SEED = 48, 8, 2, 3, 2, 7       # 6 steps per epoch, refreshes at k = 2, 4
TOL = 1e-12


def make_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Flatten(), nn.Linear(16, 3))
    return net.to(DTYPE)


def make_epochs():
    """The minibatches of every epoch (a fresh shuffle per epoch), shared by both runs."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(N, 1, 6, 6, generator=g, dtype=DTYPE)
    Y = torch.randint(3, (N,), generator=g)
    epochs = []
    for _ in range(EPOCHS):
        perm = torch.randperm(N, generator=g)
        epochs.append([(X[perm[i:i + BATCH]], Y[perm[i:i + BATCH]]) for i in range(0, N, BATCH)])
    return epochs


def loss_fn(net, x, y):
    return nn.functional.cross_entropy(net(x), y)


def snapshot(net):
    """(flat parameters, flat float BN buffers, the num_batches_tracked counters)."""
    params = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    buffers = dict(net.named_buffers())
    stats = torch.cat([b.reshape(-1) for n, b in buffers.items() if not n.endswith("num_batches_tracked")])
    counts = [int(b) for n, b in buffers.items() if n.endswith("num_batches_tracked")]
    return params, stats.clone(), counts


def relative(a, b):
    return float((a - b).norm() / b.norm())


# -- the official loop, written out ----------------------------------------------------------
def official_power_iteration(net, x, y, v, q):
    """estimate_largest_eigenvector: eval mode, create_graph backward, q normalised products."""
    params = [p for p in net.parameters() if p.requires_grad]
    net.eval()
    loss_fn(net, x, y).backward(create_graph=True)
    grads = [p.grad.clone() for p in params]
    for _ in range(q):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        norm = torch.sqrt(sum((t ** 2).sum() for t in hv) + 1e-12)
        v = tuple(t / norm for t in hv)
    net.zero_grad(set_to_none=True)
    net.train()
    return tuple(t.detach() for t in v)


def project_gradient(params, v, alpha):
    """modify_gradient_with_projection: .grad ← ĝ + α sign⟨g, v̂⟩ (v̂ − ⟨ĝ, v̂⟩ĝ), in place."""
    with torch.no_grad():
        g = torch.cat([p.grad.reshape(-1) for p in params])
        v_flat = torch.cat([t.reshape(-1) for t in v])
        sign = torch.sign(g.dot(v_flat))
        g /= g.norm() + 1e-12
        g += alpha * sign * (v_flat - g.dot(v_flat) * g)
        offset = 0
        for p in params:
            p.grad.copy_(g[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def two_pass_step(net, base, x, y, rho, normalize):
    """davda54/sam: first_step (x + ρ·grad, normalised by ‖grad‖ + 1e-12 or not), the
    perturbed pass with BatchNorm momentum 0, second_step (back to x, base step)."""
    params = [p for p in net.parameters() if p.grad is not None]
    with torch.no_grad():
        scale = rho / (torch.stack([p.grad.norm() for p in params]).norm() + 1e-12) if normalize else rho
        old = [p.clone() for p in params]
        for p in params:
            p.add_(p.grad * scale)
    net.zero_grad(set_to_none=True)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0
    loss_fn(net, x, y).backward()
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    with torch.no_grad():
        for p, x_old in zip(params, old):
            p.copy_(x_old)
    base.step()
    base.zero_grad(set_to_none=True)


def official_eigen_sam(net, epochs, v0):
    """The official Eigen-SAM training loop; yields after every step."""
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    params = list(net.parameters())
    v = None
    for batches in epochs:
        for k, (x, y) in enumerate(batches):
            if k % P == 0 and k > 0:
                start = v if v is not None else tuple(t.view_as(p) for t, p in
                                                      zip(v0.split([p.numel() for p in params]), params))
                v = official_power_iteration(net, x, y, start, Q)
            loss_fn(net, x, y).backward()
            if v is not None:
                project_gradient(params, v, ALPHA)
            two_pass_step(net, base, x, y, RHO, normalize=False)
            yield


def davda54_sam(net, epochs):
    base = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    for batches in epochs:
        for x, y in batches:
            loss_fn(net, x, y).backward()
            two_pass_step(net, base, x, y, RHO, normalize=True)
            yield


# -- the comparisons -------------------------------------------------------------------------
def official_sdesam(net, steps_per_epoch):
    return EigenSAM.official(net.parameters(), model=net, steps_per_epoch=steps_per_epoch, lr=LR,
                             rho=RHO, alpha=ALPHA, p=P, q=Q, seed=SEED)


def replay(reference, optimizer, net_ref, net, epochs):
    """Run both, compare after every step; returns the worst relative differences."""
    worst = [0.0, 0.0]
    step = 0
    for _ in reference:
        x, y = epochs[step // len(epochs[0])][step % len(epochs[0])]
        optimizer.step(lambda: loss_fn(net, x, y))
        (pa, sa, ca), (pb, sb, cb) = snapshot(net), snapshot(net_ref)
        worst = [max(worst[0], relative(pa, pb)), max(worst[1], relative(sa, sb))]
        assert ca == cb, (step, ca, cb)
        assert worst[0] <= TOL and worst[1] <= TOL, (step, worst)
        step += 1
    assert step == EPOCHS * len(epochs[0])
    return worst


def test_official_eigen_sam_replays_the_official_loop(one_thread):
    epochs = make_epochs()
    net_ref, net = make_net(), make_net()
    opt = official_sdesam(net, len(epochs[0]))
    # the Gaussian first start: the same draw the optimizer makes from its seed
    v0 = torch.randn(opt.dim, generator=torch.Generator().manual_seed(SEED), dtype=DTYPE)
    replay(official_eigen_sam(net_ref, epochs, v0), opt, net_ref, net, epochs)
    # the refresh steps the optimizer took: k = 2, 4 of each epoch (global 2, 4, 8, 10)
    refreshes = [k for k in range(EPOCHS * len(epochs[0])) if opt.schedule.refreshes_at(k)]
    assert refreshes == [2, 4, 8, 10]
    assert opt.has_estimate and opt.steps == EPOCHS * len(epochs[0])


def test_sam_replays_davda54_sam(one_thread):
    epochs = make_epochs()
    net_ref, net = make_net(), make_net()
    opt = SAM(net.parameters(), model=net, lr=LR, rho=RHO, momentum=MOMENTUM, weight_decay=WD,
              perturbed_bn="zero_momentum")
    replay(davda54_sam(net_ref, epochs), opt, net_ref, net, epochs)


def test_official_schedule_is_the_official_condition():
    """first_refresh="after_p" with epoch counting refreshes exactly where the official
    loop's ``k % p == 0 and k > 0`` holds (k the in-epoch index), for small p and epochs."""
    for p in range(1, 6):
        for spe in range(1, 8):
            s = RefreshSchedule(p, "epoch", "after_p", spe)
            got = [s.refreshes_at(step) for step in range(3 * spe)]
            assert got == [k % spe % p == 0 and k % spe > 0 for k in range(3 * spe)], (p, spe)
            paper = RefreshSchedule(p)                      # Algorithm 2: t₁ mod p = 1, global
            assert [paper.refreshes_at(k) for k in range(3 * spe)] == [(k + 1) % p == 1 % p
                                                                        for k in range(3 * spe)]


def test_official_sets_every_official_setting_and_zero_momentum_counts():
    net = make_net()
    opt = official_sdesam(net, 6)
    s = opt.schedule
    assert (s.p_counting, s.first_refresh, s.steps_per_epoch, opt.hvp_mode, opt.perturbed_bn) == (
        "epoch", "after_p", 6, "eval", "zero_momentum")
    assert not opt.rule.renormalize and isinstance(opt.base_optimizer, torch.optim.SGD)
    assert (opt.param_groups[0]["momentum"], opt.param_groups[0]["weight_decay"]) == (MOMENTUM, WD)
    bn = net[1]
    bn.momentum = None                                      # restored as it was, even None
    before = bn.running_mean.clone()
    with zero_momentum(net):
        assert bn.momentum == 0
        net(torch.randn(4, 1, 6, 6, dtype=DTYPE))
    assert bn.momentum is None and int(bn.num_batches_tracked) == 1
    assert torch.equal(bn.running_mean, before)
    with pytest.raises(ValueError, match="perturbed_bn"):
        SAM(net.parameters(), lr=LR, perturbed_bn="momentum0")
