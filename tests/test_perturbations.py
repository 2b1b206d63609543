import pytest
import torch

from sdesam.rules import EigenSAMRule, ReverseSAMRule, SAMRule, USAMRule, get_rule


def test_rules_by_hand():
    g = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
    u = g / 5.0
    assert torch.allclose(SAMRule()(g), u)
    assert torch.allclose(USAMRule()(g), g)
    assert torch.allclose(ReverseSAMRule()(g), -u)
    # <g, v> = 2.4 > 0; v_perp = v - <v,u> u = v - 0.48 u
    v_perp = v - 0.48 * u
    assert torch.allclose(EigenSAMRule(alpha=0.2)(g, v), u + 0.2 * v_perp)
    # sign rule: -v gives the same perturbation
    assert torch.allclose(EigenSAMRule(alpha=0.2)(g, -v), u + 0.2 * v_perp)
    eps = EigenSAMRule(alpha=0.2, renormalize=True)(g, v)
    assert torch.allclose(eps.norm(), torch.tensor(1.0, dtype=torch.float64))


def test_zero_gradient_gives_zero_direction():
    assert torch.equal(SAMRule()(torch.zeros(4)), torch.zeros(4))


def test_bad_rule_arguments():
    with pytest.raises(ValueError, match="alpha"):
        EigenSAMRule(alpha=-1)
    with pytest.raises(ValueError, match="rule"):
        get_rule("nope")
    with pytest.raises(ValueError, match="eigvec"):
        EigenSAMRule()(torch.ones(3))
