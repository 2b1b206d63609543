"""Eigen-SAM's refresh variants: the warm-started Lanczos estimator and the
forward-over-reverse Hessian-vector product, against dense float64 references."""
import copy
import io

import pytest
import torch
from torch import nn

from sdesam.curvature.short_lanczos import lanczos_iteration
from sdesam.optim import EigenSAM
from tests.test_optim import Reference, flat

DTYPE = torch.float64


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                        nn.Linear(2 * 16, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))
    return net.to(DTYPE)


def data(n: int = 10, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g, dtype=DTYPE), torch.randint(3, (n,), generator=g)


def warm_bn(net, X):
    with torch.no_grad():                      # non-trivial running statistics
        net(2 * X + 1)


def buffers(net):
    return {n: b.clone() for n, b in net.named_buffers()}


def test_lanczos_iteration_is_rayleigh_ritz_on_the_krylov_space():
    torch.manual_seed(0)
    A = torch.randn(30, 30, dtype=DTYPE)
    H = A @ A.T / 30 - 0.5 * torch.eye(30, dtype=DTYPE)
    v0 = torch.randn(30, dtype=DTYPE)
    for k in (1, 2, 4):
        result = lanczos_iteration(lambda v: H @ v, v0, k)
        Q, _ = torch.linalg.qr(torch.stack([torch.linalg.matrix_power(H, i) @ v0 for i in range(k)], 1))
        theta, S = torch.linalg.eigh(Q.T @ H @ Q)
        y = Q @ S[:, -1]
        assert abs(float(result.eigenvalue) - float(theta[-1])) < 1e-12
        assert abs(abs(float(y @ result.vector)) - 1) < 1e-12 and float(result.vector @ v0) >= 0
    # an invariant Krylov space stops early with the exact pair
    D = torch.diag(torch.arange(1.0, 31.0, dtype=DTYPE))
    e = torch.zeros(30, dtype=DTYPE)
    e[[3, 29]] = 1.0
    result = lanczos_iteration(lambda v: D @ v, e, 6)
    assert result.num_hvps == 2 and abs(float(result.eigenvalue) - 30) < 1e-12


@pytest.mark.parametrize("hvp_mode", ["train", "eval"])
def test_lanczos_refresh_equals_dense_top_eigenvector(hvp_mode):
    """With k large, EigenSAM's Lanczos refresh returns eigh's top eigenvector of the dense
    float64 Hessian of the minibatch loss (training mode with batch statistics, or eval
    mode), and leaves every BatchNorm buffer untouched."""
    net = bn_net()
    X, Y = data()
    warm_bn(net, X)
    opt = EigenSAM(net.parameters(), lr=0.1, model=net, estimator="lanczos", q=net_dim(net),
                   hvp_mode=hvp_mode, seed=2)
    before = buffers(net)
    lam = opt.update_eigenvector(lambda: nn.functional.cross_entropy(net(X), Y))
    for name, b in before.items():
        assert torch.equal(dict(net.named_buffers())[name], b), name
    H = Reference(net, X, Y, train=hvp_mode == "train").hess(flat(net))
    w, V = torch.linalg.eigh(H)
    assert abs(lam - float(w[-1])) < 1e-10 * float(w.abs().max())
    assert abs(abs(float(opt.eigenvector @ V[:, -1])) - 1) < 1e-10


def net_dim(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("hvp_mode", ["train", "eval"])
def test_forward_over_reverse_equals_double_backward(hvp_mode):
    """The products in float64 agree to 1e-10 (BatchNorm in training and eval mode), and so
    do whole Eigen-SAM runs with the two methods; the refresh moves no BN buffer."""
    X, Y = data()
    nets = [bn_net(), bn_net()]
    for net in nets:
        warm_bn(net, X)
    kwargs = dict(lr=0.1, rho=0.2, alpha=0.5, p=2, q=3, hvp_mode=hvp_mode, estimator="power", seed=1)
    a = EigenSAM(nets[0].parameters(), model=nets[0], **kwargs)
    b = EigenSAM(nets[1].parameters(), model=nets[1], hvp_method="forward_over_reverse", **kwargs)
    v = torch.randn(a.dim, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    before = buffers(nets[1])
    with a._hvp_context():
        _, grads = a._gradient_graph(lambda: nn.functional.cross_entropy(nets[0](X), Y))
        h_db = a._hvp_function(grads, False)(v)
    with b._hvp_context():
        h_fr = b._jvp_hvp_function(lambda: nn.functional.cross_entropy(nets[1](X), Y))(v)
    assert float((h_db - h_fr).norm()) <= 1e-10 * float(h_db.norm())
    assert all(torch.equal(dict(nets[1].named_buffers())[n], t) for n, t in before.items())
    for k in range(4):
        Xb, Yb = X[2 * k:2 * k + 6], Y[2 * k:2 * k + 6]
        a.step(lambda: nn.functional.cross_entropy(nets[0](Xb), Yb))
        b.step(lambda: nn.functional.cross_entropy(nets[1](Xb), Yb))
        assert torch.allclose(flat(nets[0]), flat(nets[1]), rtol=0, atol=1e-12), k
        assert torch.allclose(a.eigenvector, b.eigenvector, rtol=0, atol=1e-10), k
    for (n, ta), tb in zip(nets[0].named_buffers(), nets[1].buffers()):
        assert torch.allclose(ta.double(), tb.double(), rtol=0, atol=1e-12), n


@pytest.mark.parametrize("estimator", ["lanczos", "power"])
def test_lanczos_state_dict_resumes_bit_identically(estimator):
    X, Y = data(12)
    net = bn_net()
    opt = EigenSAM(net.parameters(), lr=0.1, rho=0.1, p=2, weight_decay=5e-4, model=net,
                   estimator=estimator)
    assert opt.q == {"lanczos": 4, "power": 5}[estimator]

    def batch(k):
        return X[k % 3 * 4:k % 3 * 4 + 4], Y[k % 3 * 4:k % 3 * 4 + 4]

    for k in range(3):
        Xb, Yb = batch(k)
        opt.step(lambda: nn.functional.cross_entropy(net(Xb), Yb))
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    twin = copy.deepcopy(net)
    twin_opt = EigenSAM(twin.parameters(), lr=0.1, rho=0.1, p=2, weight_decay=5e-4, model=twin,
                        estimator=estimator)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    twin.load_state_dict(saved["model"])
    twin_opt.load_state_dict(saved["opt"])
    for k in range(3, 7):
        Xb, Yb = batch(k)
        opt.step(lambda: nn.functional.cross_entropy(net(Xb), Yb))
        twin_opt.step(lambda: nn.functional.cross_entropy(twin(Xb), Yb))
        assert torch.equal(flat(net), flat(twin)) and torch.equal(opt.eigenvector, twin_opt.eigenvector)


def test_refresh_options_are_checked():
    net = bn_net()
    with pytest.raises(ValueError, match="estimator"):
        EigenSAM(net.parameters(), lr=0.1, estimator="arnoldi")
    with pytest.raises(ValueError, match="hvp_method"):
        EigenSAM(net.parameters(), lr=0.1, hvp_method="finite_difference")
    with pytest.raises(ValueError, match="model"):
        EigenSAM(net.parameters(), lr=0.1, hvp_method="forward_over_reverse")
    with pytest.raises(ValueError, match="num_iters"):
        lanczos_iteration(lambda v: v, torch.ones(3), 0)
