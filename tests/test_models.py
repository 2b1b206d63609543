"""Convolutional / fully connected models and the registry (ViT: test_models_vit.py)."""
import pytest
import torch
from torch import nn

from sdesam.models import (
    MLP,
    MODEL_NAMES,
    SimpleCNN,
    WideResNet,
    build_model,
    count_parameters,
    resnet18,
    resnet34,
    resnet50,
    wrn28_10,
)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------ MLP

def test_mlp_is_pure_sequential_with_paper_parameter_count():
    m = MLP()
    assert isinstance(m, nn.Sequential)
    kinds = [type(c) for c in m]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear]
    assert m[1].approximate == "none"          # exact erf GeLU
    assert (m[0].in_features, m[0].out_features, m[2].out_features) == (784, 784, 10)
    assert n_params(m) == 784 * 784 + 784 + 784 * 10 + 10 == 623_290
    assert m(torch.randn(5, 784)).shape == (5, 10)


@pytest.mark.parametrize("name,cls", [("gelu", nn.GELU), ("relu", nn.ReLU),
                                      ("tanh", nn.Tanh), ("softplus", nn.Softplus)])
def test_mlp_activation_choice_and_depth(name, cls):
    m = MLP(in_features=6, hidden=(5, 4), num_classes=3, activation=name)
    assert [type(c) for c in m] == [nn.Linear, cls, nn.Linear, cls, nn.Linear]
    assert m(torch.randn(2, 6)).shape == (2, 3)
    assert [type(c) for c in MLP(6, (), 3)] == [nn.Linear]      # linear model


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="swish")
    with pytest.raises(ValueError, match="hidden"):
        MLP(hidden=(0,))


# --------------------------------------------------------------------------- ResNets

def test_resnet_parameter_counts_match_standard_cifar_networks():
    assert n_params(resnet18(10)) == 11_173_962
    assert n_params(resnet50(10)) == 23_520_842
    assert n_params(resnet18(100)) == 11_173_962 + 90 * (512 + 1)


def test_resnet50_full_width_forward():
    m = resnet50(10).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("builder", [resnet18, resnet34, resnet50])
def test_small_resnets_forward_rgb_and_grayscale(builder):
    m = builder(7, width=4)
    assert m(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    g = builder(10, in_channels=1, width=4)
    assert g(torch.randn(2, 1, 28, 28)).shape == (2, 10)       # Fashion-MNIST size


@pytest.mark.parametrize("norm", ["none", None, "group"])
def test_batchnorm_free_resnet(norm):
    torch.manual_seed(0)
    m = resnet18(10, width=8, norm=norm).train()
    assert not any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in m.modules())
    assert list(m.buffers()) == []
    if norm == "group":
        assert any(isinstance(x, nn.GroupNorm) for x in m.modules())
    # per-example model: an example's logits do not depend on the rest of the batch
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(m(x)[:1], m(x[:1]))


def _taylor_remainder_ratio(model, x, y, h):
    """‖∇f(θ + hu) − ∇f(θ) − h∇²f u‖ at h over the same at h/2, for a unit direction u:
    4 where the gradient is smooth (remainder O(h²))."""
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]
    u = [torch.randn_like(p) for p in params]
    norm = sum((d * d).sum() for d in u).sqrt()
    u = [d / norm for d in u]

    def grad_at(h, create_graph=False):
        with torch.no_grad():
            for p, t, d in zip(params, theta, u):
                p.copy_(t + h * d)
        loss = nn.functional.cross_entropy(model(x), y)
        return torch.autograd.grad(loss, params, create_graph=create_graph)

    g0 = grad_at(0.0, create_graph=True)
    hu = torch.autograd.grad(sum((g * d).sum() for g, d in zip(g0, u)), params)
    g0 = [g.detach() for g in g0]

    def remainder(h):
        return sum(((a - b - h * c) ** 2).sum() for a, b, c in zip(grad_at(h), g0, hu)).sqrt().item()
    return remainder(h) / remainder(h / 2)


def test_gelu_resnet_is_the_same_network_with_a_smooth_activation():
    """Same parameters as the ReLU network, different outputs; the GeLU network's gradient
    has an O(h²) Taylor remainder (what the SAM SDEs need), the ReLU network's does not."""
    torch.manual_seed(0)
    relu = resnet18(10, 1, width=4, norm="group").double()
    gelu = resnet18(10, 1, width=4, norm="group", activation="gelu").double()
    gelu.load_state_dict(relu.state_dict())
    x, y = torch.randn(2, 1, 16, 16, dtype=torch.float64), torch.tensor([1, 3])
    assert not torch.allclose(relu(x), gelu(x))
    torch.manual_seed(1)
    assert 3.5 < _taylor_remainder_ratio(gelu, x, y, 1e-2) < 4.5
    torch.manual_seed(1)
    assert _taylor_remainder_ratio(relu, x, y, 1e-2) < 3
    with pytest.raises(ValueError, match="activation must be one of"):
        resnet18(activation="tanh")


def test_batchnorm_resnet_has_running_stats_and_momentum():
    m = resnet18(10, width=4, bn_momentum=0.2)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    assert len(bns) == 1 + 8 * 2 + 3          # stem + 2 per block + 3 projection shortcuts
    assert all(b.momentum == 0.2 for b in bns)
    with pytest.raises(ValueError, match="norm"):
        resnet18(norm="layer")


# ------------------------------------------------------------------------ WideResNet

def test_wrn28_10_parameter_count():
    assert n_params(wrn28_10(10)) == 36_479_194


def test_small_wrn_forward_and_options():
    m = WideResNet(depth=10, widen_factor=1, num_classes=5, dropout=0.3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert all(b.momentum == 0.1 for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    free = WideResNet(10, 1, 5, in_channels=1, norm="none")
    assert list(free.buffers()) == []
    assert free(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=27)


# ------------------------------------------------------------------------- SimpleCNN

def test_simple_cnn_is_six_weight_layers_of_the_reference():
    m = SimpleCNN()
    weights = [c for c in m if isinstance(c, (nn.Conv2d, nn.Linear))]
    assert [type(c) for c in weights] == [nn.Conv2d] * 4 + [nn.Linear] * 2
    assert [c.out_channels for c in weights[:4]] == [32, 32, 64, 64]
    assert [c.padding for c in weights[:4]] == [(1, 1), (0, 0), (1, 1), (0, 0)]
    assert (weights[4].in_features, weights[4].out_features) == (64 * 6 * 6, 128)
    assert n_params(m) == 361_898
    assert all(torch.all(c.bias == 0) for c in weights)        # Keras init: zero biases
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_simple_cnn_options():
    fm = SimpleCNN(num_classes=10, in_channels=1, image_size=28)
    assert fm(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    bn = SimpleCNN(5, bn=True, dropout=0.5, kernel_size=5, n_filters=8)
    assert sum(isinstance(c, (nn.BatchNorm2d, nn.BatchNorm1d)) for c in bn) == 5
    assert bn(torch.randn(3, 3, 32, 32)).shape == (3, 5)
    with pytest.raises(ValueError, match="kernel_size"):
        SimpleCNN(kernel_size=4)
    with pytest.raises(ValueError, match="image_size"):
        SimpleCNN(image_size=8, kernel_size=5)


# -------------------------------------------------------------------------- registry

SMALL = {
    "mlp": dict(in_features=12, hidden=(6,)),
    "resnet18": dict(width=4), "resnet34": dict(width=4), "resnet50": dict(width=4),
    "wrn": dict(depth=10, widen_factor=1),
    "simple_cnn": dict(n_filters=4, n_dense=8),
    "vit_tiny": dict(num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=16, patch_size=8),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_registry_builds_deterministically(name):
    torch.manual_seed(3)
    a = build_model(name, 4, **SMALL[name])
    torch.manual_seed(3)
    b = build_model(name, 4, **SMALL[name])
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 12) if name == "mlp" else torch.randn(2, 3, 32, 32)
    assert a.eval()(x).shape == (2, 4)


def test_registry_covers_every_name_and_rejects_unknown():
    assert set(MODEL_NAMES) == {"mlp", "resnet18", "resnet34", "resnet50", "wrn28_10", "wrn",
                                "simple_cnn", "vit_b16", "vit_tiny"}
    with pytest.raises(ValueError, match="resnet18"):      # the message lists the choices
        build_model("resnet19", 10)
    with pytest.raises(ValueError, match="in_features"):
        build_model("mlp", 10, in_channels=1)
    with pytest.raises(TypeError):
        build_model("resnet18", 10, widht=4)
    g = build_model("simple_cnn", 10, in_channels=1, image_size=28)
    assert g(torch.randn(1, 1, 28, 28)).shape == (1, 10)


def test_registry_standard_sizes():
    assert count_parameters(build_model("mlp", 10)) == 623_290
    assert count_parameters(build_model("wrn28_10", 10)) == 36_479_194
    m = build_model("vit_b16", 10)
    assert count_parameters(m) == 86_567_656 - 990 * 769        # 1000 -> 10 classes
