"""The perturbation rules' coefficient form ε = a·g + b·v̂ against Eq. 2 and Eq. 7-8 written out."""
import pytest
import torch

from sdesam.rules import EigenSAMRule, ReverseSAMRule, SAMRule, USAMRule


def eq8(g, v, alpha, renormalize):
    u = g / g.norm(dim=-1, keepdim=True)
    v_perp = v - (v * u).sum(-1, keepdim=True) * u                      # Eq. 7
    eps = u + alpha * torch.sign((g * v).sum(-1, keepdim=True)) * v_perp  # Eq. 8
    return eps / eps.norm(dim=-1, keepdim=True) if renormalize else eps


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("batched_v", [False, True])
def test_eigen_sam_coefficients_equal_eq8(renormalize, batched_v):
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5, 7, generator=gen, dtype=torch.float64)
    v = torch.randn(5 if batched_v else 1, 7, generator=gen, dtype=torch.float64)
    v = (v / v.norm(dim=-1, keepdim=True)).squeeze(0)
    v[..., 0] *= -1.0                                                   # mixed signs of <g, v>
    rule = EigenSAMRule(alpha=0.7, renormalize=renormalize)
    expected = eq8(g, v, 0.7, renormalize)
    assert torch.allclose(rule(g, v), expected, rtol=0, atol=1e-14)
    a, b = rule.coefficients(g, v)
    assert a.shape == b.shape == (5, 1)
    assert torch.allclose(a * g + b * v, expected, rtol=0, atol=1e-14)


def test_sam_family_coefficients():
    g = torch.tensor([[3.0, 4.0], [0.0, -2.0]], dtype=torch.float64)
    assert torch.allclose(SAMRule()(g), g / g.norm(dim=-1, keepdim=True))
    assert torch.allclose(ReverseSAMRule()(g), -g / g.norm(dim=-1, keepdim=True))
    assert torch.equal(USAMRule()(g), g)
    assert SAMRule().coefficients(g)[1] is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_gradient_gives_zero_without_nan(dtype):
    g = torch.zeros(2, 4, dtype=dtype)
    v = torch.tensor([0.5, 0.5, 0.5, 0.5], dtype=dtype)
    for rule in (SAMRule(), ReverseSAMRule(), USAMRule(), EigenSAMRule(0.2), EigenSAMRule(0.2, renormalize=True)):
        assert torch.equal(rule(g, v), torch.zeros_like(g)), rule
