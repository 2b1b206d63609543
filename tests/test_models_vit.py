"""ViT: torchvision key mapping, reference semantics, weights_only loading, HVPs."""
import importlib.util
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdesam.models import vit as vit_mod
from sdesam.models.vit import (
    SelfAttention,
    VisionTransformer,
    build_vit_b16,
    convert_torchvision_state_dict,
    interpolate_pos_embedding,
    load_state_dict_file,
    load_torchvision_weights,
)

# a tiny configuration of the ViT-B/16 family
CFG = dict(image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16)
D, M, L, N = 8, 16, 2, 1 + (8 // 4) ** 2


def torchvision_style_state_dict(num_classes=5, legacy=False, seed=0, n_tokens=N):
    """Random weights under torchvision's ``vit_b_16`` key names (written out here from
    torchvision/models/vision_transformer.py, independently of sdesam's module tree)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * 0.3  # noqa: E731
    sd = {"class_token": r(1, 1, D), "conv_proj.weight": r(D, 3, 4, 4), "conv_proj.bias": r(D),
          "encoder.pos_embedding": r(1, n_tokens, D)}
    fc1, fc2 = ("linear_1", "linear_2") if legacy else ("0", "3")
    for i in range(L):
        p = f"encoder.layers.encoder_layer_{i}."
        sd.update({
            p + "ln_1.weight": 1 + r(D), p + "ln_1.bias": r(D),
            p + "self_attention.in_proj_weight": r(3 * D, D),
            p + "self_attention.in_proj_bias": r(3 * D),
            p + "self_attention.out_proj.weight": r(D, D),
            p + "self_attention.out_proj.bias": r(D),
            p + "ln_2.weight": 1 + r(D), p + "ln_2.bias": r(D),
            p + f"mlp.{fc1}.weight": r(M, D), p + f"mlp.{fc1}.bias": r(M),
            p + f"mlp.{fc2}.weight": r(D, M), p + f"mlp.{fc2}.bias": r(D),
        })
    sd.update({"encoder.ln.weight": 1 + r(D), "encoder.ln.bias": r(D),
               "heads.head.weight": r(num_classes, D), "heads.head.bias": r(num_classes)})
    return sd


def reference_forward(sd, x):
    """torchvision's ViT forward written with nn.MultiheadAttention and functional ops."""
    b = x.shape[0]
    h = F.conv2d(x, sd["conv_proj.weight"], sd["conv_proj.bias"], stride=4)
    h = h.reshape(b, D, -1).permute(0, 2, 1)
    h = torch.cat([sd["class_token"].expand(b, -1, -1), h], dim=1) + sd["encoder.pos_embedding"]
    for i in range(L):
        p = f"encoder.layers.encoder_layer_{i}."
        mha = nn.MultiheadAttention(D, 2, batch_first=True).double().eval()
        mha.in_proj_weight.data.copy_(sd[p + "self_attention.in_proj_weight"])
        mha.in_proj_bias.data.copy_(sd[p + "self_attention.in_proj_bias"])
        mha.out_proj.weight.data.copy_(sd[p + "self_attention.out_proj.weight"])
        mha.out_proj.bias.data.copy_(sd[p + "self_attention.out_proj.bias"])
        y = F.layer_norm(h, (D,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps=1e-6)
        h = h + mha(y, y, y, need_weights=False)[0]
        y = F.layer_norm(h, (D,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps=1e-6)
        y = F.gelu(F.linear(y, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"]))
        h = h + F.linear(y, sd[p + "mlp.3.weight"], sd[p + "mlp.3.bias"])
    h = F.layer_norm(h, (D,), sd["encoder.ln.weight"], sd["encoder.ln.bias"], eps=1e-6)
    return F.linear(h[:, 0], sd["heads.head.weight"], sd["heads.head.bias"])


def tiny(num_classes=5, **kw):
    return VisionTransformer(num_classes=num_classes, **{**CFG, **kw}).double()


def test_state_dict_keys_are_torchvisions():
    sd = torchvision_style_state_dict()
    model_sd = tiny().state_dict()
    assert set(model_sd) == set(sd)
    assert all(model_sd[k].shape == v.shape for k, v in sd.items())


def test_load_consumes_every_key_round_trips_and_matches_reference():
    sd = torchvision_style_state_dict()
    model = tiny().eval()
    report = load_torchvision_weights(model, sd)
    assert report.loaded == sorted(sd) and report.head == "kept" and not report.renamed
    out = model.state_dict()
    assert all(torch.equal(out[k], v) for k, v in sd.items())      # load then save = identity
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_forward(sd, x), rtol=1e-10, atol=1e-10)


def test_legacy_mlp_names_are_mapped():
    new, old = torchvision_style_state_dict(), torchvision_style_state_dict(legacy=True)
    assert any("linear_1" in k for k in old)
    model = tiny()
    report = load_torchvision_weights(model, old)
    assert len(report.renamed) == 4 * L
    assert all(torch.equal(model.state_dict()[k], v) for k, v in new.items())


def test_imagenet_head_is_replaced_by_a_zero_head():
    sd = torchvision_style_state_dict(num_classes=1000)
    model = tiny(num_classes=10)
    nn.init.ones_(model.heads.head.weight)
    report = load_torchvision_weights(model, sd)
    assert report.head == "reset"
    assert model.heads.head.weight.shape == (10, D)
    assert torch.all(model.heads.head.weight == 0) and torch.all(model.heads.head.bias == 0)
    assert torch.equal(model.state_dict()["conv_proj.weight"], sd["conv_proj.weight"])


def test_mismatched_state_dicts_are_refused():
    model = tiny()
    sd = torchvision_style_state_dict()
    sd.pop("encoder.ln.bias")
    with pytest.raises(ValueError, match="missing keys.*encoder.ln.bias"):
        convert_torchvision_state_dict(sd, model)
    sd = torchvision_style_state_dict()
    sd["encoder.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected keys.*encoder.extra"):
        convert_torchvision_state_dict(sd, model)
    sd = torchvision_style_state_dict()
    sd["conv_proj.weight"] = torch.zeros(D, 1, 4, 4)
    with pytest.raises(ValueError, match="conv_proj.weight"):
        convert_torchvision_state_dict(sd, model)


def test_pos_embedding_interpolation():
    pe = torch.randn(1, 1 + 16, 3)
    assert interpolate_pos_embedding(pe, 17) is pe
    const = torch.cat([torch.zeros(1, 1, 3), torch.full((1, 16, 3), 2.0)], dim=1)
    small = interpolate_pos_embedding(const, 1 + 4)
    assert small.shape == (1, 5, 3)
    torch.testing.assert_close(small[:, 1:], torch.full((1, 4, 3), 2.0))
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embedding(pe, 7)
    # a 16x16-image checkpoint (17 tokens) loads into the 8x8 model (5 tokens)
    report = load_torchvision_weights(tiny(), torchvision_style_state_dict(n_tokens=17))
    assert report.pos_embedding == "interpolated 17->5 tokens"


class NotATensor:
    """Any non-tensor object: weights_only=True must refuse to unpickle it."""


def test_weights_file_is_loaded_with_weights_only(tmp_path):
    good = tmp_path / "good.pth"
    torch.save(torchvision_style_state_dict(), good)
    assert load_torchvision_weights(tiny(), good).head == "kept"
    torch.save({"model": torchvision_style_state_dict()}, tmp_path / "wrapped.pth")
    assert set(load_state_dict_file(tmp_path / "wrapped.pth")) == set(tiny().state_dict())
    evil = tmp_path / "evil.pth"
    torch.save({"conv_proj.weight": torch.zeros(1), "payload": NotATensor()}, evil)
    with pytest.raises(pickle.UnpicklingError):
        load_state_dict_file(evil)
    with pytest.raises(pickle.UnpicklingError):
        load_torchvision_weights(tiny(), evil)


def test_build_vit_b16_from_a_local_file(tmp_path, monkeypatch):
    # shrink the B/16 configuration so the whole build-and-load path runs in milliseconds
    monkeypatch.setitem(vit_mod.VIT_B16, "patch_size", 4)
    for k in ("num_layers", "num_heads", "hidden_dim", "mlp_dim"):
        monkeypatch.setitem(vit_mod.VIT_B16, k, CFG[k])
    sd = {k: v.float() for k, v in torchvision_style_state_dict(num_classes=1000).items()}
    path = tmp_path / "vit_b_16.pth"
    torch.save(sd, path)
    model = build_vit_b16(10, weights_path=path, image_size=8)
    assert model.weights_report.head == "reset"
    assert torch.equal(model.encoder.ln.weight, sd["encoder.ln.weight"])
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="resize"):
        model(torch.randn(2, 3, 32, 32))


def test_self_attention_equals_multihead_attention_and_fused_path():
    torch.manual_seed(0)
    ours = SelfAttention(12, 3).double()
    ref = nn.MultiheadAttention(12, 3, batch_first=True).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0])
    fused = SelfAttention(12, 3, fused=True).double()
    fused.load_state_dict(ours.state_dict())
    torch.testing.assert_close(fused(x), ours(x))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_hessian_vector_products_through_the_vit():
    """Double backward and forward-over-reverse both work (nn.MultiheadAttention's CPU
    flash kernel supports neither) and agree with central finite differences."""
    torch.manual_seed(0)
    model = tiny()
    model.heads.head.weight.data.normal_()
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    names, params = zip(*model.named_parameters())
    v = [torch.randn_like(p) for p in params]
    flat = lambda ts: torch.cat([t.detach().flatten() for t in ts])  # noqa: E731

    def grads():
        return torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)

    hv = flat(torch.autograd.grad(sum((a * b).sum() for a, b in zip(grads(), v)), params))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    g_plus = flat(grads())
    with torch.no_grad():
        for p, d in zip(params, v):
            p.sub_(2 * eps * d)
    g_minus = flat(grads())
    with torch.no_grad():
        for p, d in zip(params, v):
            p.add_(eps * d)
    fd = (g_plus - g_minus) / (2 * eps)         # truncation error O(eps^2)
    assert (hv - fd).norm() <= 1e-6 * hv.norm()

    from torch.func import functional_call, grad, jvp
    loss = lambda P: F.cross_entropy(functional_call(model, P, (x,)), y)  # noqa: E731
    _, fwd = jvp(grad(loss), ({n: p.detach() for n, p in zip(names, params)},),
                 (dict(zip(names, v)),))
    torch.testing.assert_close(flat(fwd[n] for n in names), hv, rtol=1e-9, atol=1e-9)


def test_vit_b16_configuration_and_determinism():
    torch.manual_seed(1)
    a = vit_mod.vit_tiny(10, num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=16)
    torch.manual_seed(1)
    b = vit_mod.vit_tiny(10, num_layers=1, hidden_dim=16, num_heads=2, mlp_dim=16)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    m = build_vit_b16(1000)
    assert sum(p.numel() for p in m.parameters()) == 86_567_656      # torchvision's figure
    assert m.encoder.pos_embedding.shape == (1, 197, 768)


HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None


def _torchvision_imports():
    try:
        import torchvision.models  # noqa: F401
        return True
    except Exception:
        return False


@pytest.mark.skipif(HAVE_TORCHVISION and _torchvision_imports(), reason="torchvision present")
def test_torchvision_backend_reports_missing_torchvision():
    with pytest.raises(ImportError, match="backend='sdesam'"):
        build_vit_b16(10, backend="torchvision")


@pytest.mark.skipif(not (HAVE_TORCHVISION and _torchvision_imports()),
                    reason="optional cross-check: torchvision not importable here")
def test_matches_torchvision_vit():
    from torchvision.models import VisionTransformer as TVViT
    sd = {k: v.float() for k, v in torchvision_style_state_dict().items()}
    theirs = TVViT(num_classes=5, **CFG).eval()
    theirs.load_state_dict(sd)
    ours = VisionTransformer(num_classes=5, **CFG).eval()
    load_torchvision_weights(ours, sd)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
