"""make_dynamics: every name, its accepted keywords, the help, and the names in records."""
import inspect

import pytest
import torch

import sdesam
from sdesam.registry import DYNAMICS, REGISTRY, make_dynamics
from sdesam.rules import ASAMRule, PerturbationRule

from .problems import DTYPE, logcosh_problem


class SignSAM(PerturbationRule):
    def perturbation(self, g, eigvec=None, x=None):
        return torch.sign(g)


class ScaledSign(PerturbationRule):
    name = "scaled_sign"

    def __init__(self, scale=0.5):
        self.scale = scale

    def perturbation(self, g, eigvec=None, x=None):
        return self.scale * torch.sign(g)


def _accepted(build):
    """(the keyword arguments a registry builder takes by its own signature, those its
    classes' constructors take along the MRO when it passes **kwargs on)."""
    def own(fn):
        params = inspect.signature(fn).parameters
        return ({n for n, p in params.items() if n not in ("self", "problem") and p.kind != p.VAR_KEYWORD},
                any(p.kind == p.VAR_KEYWORD for p in params.values()))
    named, var_kw = own(build)
    chain = set(named)
    if var_kw and isinstance(build, type):
        for cls in build.__mro__[1:]:
            if "__init__" in vars(cls) and cls.__module__.startswith("sdesam"):
                more, go_on = own(cls.__init__)
                chain |= more
                if not go_on:
                    break
    return named, chain - {"order", "form"}


@pytest.mark.parametrize("name", DYNAMICS)
def test_each_entry_lists_exactly_what_its_constructor_takes(name):
    entry = REGISTRY[name]
    named, chain = _accepted(entry.build)
    listed = set(entry.hyperparameters)
    if isinstance(entry.build, type) and chain != named:      # an SDE passing **kwargs on
        chain -= set(entry.build.fixed_keywords)
        assert listed == chain, (name, listed ^ chain)
    else:
        assert listed == named, (name, listed ^ named)
    p = logcosh_problem(n=6, batch_size=2)
    kw = {"eta": 0.1}
    if "rho" in listed:
        kw["rho"] = 0.2
    if entry.kind == "sde":
        kw["n_batches"] = "exact"
    dyn = make_dynamics(name, p, **kw)
    assert dyn.config()["dynamics"] == dyn.name


def test_unknown_or_misspelt_keywords_are_a_value_error_listing_the_accepted_ones():
    p = logcosh_problem()
    with pytest.raises(ValueError, match=r"'sam_sde3' takes no substep; it accepts eta, rho, rule, .*substeps"):
        make_dynamics("sam_sde3", p, eta=0.1, rho=0.2, substep=2)
    with pytest.raises(ValueError, match="'sgd' takes no rho"):
        make_dynamics("sgd", p, eta=0.1, rho=0.2)
    with pytest.raises(ValueError, match="'usam' takes no rule"):
        make_dynamics("usam", p, eta=0.1, rho=0.2, rule="sam")
    with pytest.raises(ValueError, match="needs rho"):
        make_dynamics("sam", p, eta=0.1)
    with pytest.raises(ValueError, match="dynamics must be one of"):
        make_dynamics("sam_sde4", p, eta=0.1)


def test_the_help_lists_every_dynamics_with_its_hyperparameters():
    doc = sdesam.make_dynamics.__doc__
    for name, entry in REGISTRY.items():
        assert f"    {name} " in doc, name
        assert "takes: " + ", ".join(entry.hyperparameters) in doc, name


def test_rule_accepted_by_every_dynamics_that_takes_one_and_named_after_it():
    p = logcosh_problem(n=6, batch_size=2)
    takes = [n for n, e in REGISTRY.items() if e.takes_rule]
    assert set(takes) >= {"sam", "gsam", "wsam", "sam_svag", "sam_sde2", "sam_sde3", "untruncated_sam_sde"}
    names = {}
    for n in takes:
        kw = {"n_batches": "exact"} if REGISTRY[n].kind == "sde" else {}
        names[n] = make_dynamics(n, p, eta=0.1, rho=0.2, rule=SignSAM(), **kw).name
    assert names["sam"] == "sign_sam" and names["sam_sde3"] == "sign_sam_sde3"
    assert names["sam_sde2"] == "sign_sam_sde2" and names["untruncated_sam_sde"] == "sign_sam_sde"
    assert names["gsam"] == "gsam_sign_sam" and names["sam_svag"] == "sign_sam_svag"
    plain = make_dynamics("sam_sde3", p, eta=0.1, rho=0.2, n_batches="exact")
    assert plain.name == "sam_sde3" and plain.config()["rule"] == "sam"


def test_configs_carry_the_rules_hyperparameters():
    p = logcosh_problem(n=6, batch_size=2)
    a = make_dynamics("sam", p, eta=0.1, rho=0.2, rule=ScaledSign(0.25))
    b = make_dynamics("sam_sde3", p, eta=0.1, rho=0.2, rule=ScaledSign(0.75), n_batches="exact")
    assert a.config()["rule"] == "scaled_sign" and a.config()["scale"] == 0.25
    assert b.config()["scale"] == 0.75
    asam = make_dynamics("asam", p, eta=0.1, rho=0.2, xi=0.01)
    assert asam.name == "asam" and asam.config()["xi"] == 0.01
    assert make_dynamics("sam_sde3", p, eta=0.1, rho=0.2, rule=ASAMRule(0.02), n_batches="exact").config()["xi"] == 0.02
    assert make_dynamics("sgd_sde", p, eta=0.1, n_batches="exact").config().get("rule") is None


def test_random_rules_get_a_generator_from_the_seed_and_step():
    class RandomSign(PerturbationRule):
        needs_generator = True

        def perturbation(self, g, eigvec=None, x=None, generator=None):
            return torch.randint(0, 2, g.shape, generator=generator, device=g.device).to(g.dtype) * 2 - 1

    p = logcosh_problem(n=6, batch_size=2)
    runs = []
    for name, kw in (("sam", {}), ("sam_sde3", {"n_batches": 4})):
        dyn = make_dynamics(name, p, eta=0.1, rho=0.2, rule=RandomSign(), **kw)
        ends = []
        for _ in range(2):
            s = dyn.init_state(p.x0.expand(3, -1), seed=7)
            dyn.advance(s, 4)
            ends.append(s.x.clone())
        assert torch.equal(ends[0], ends[1]), name               # same seed, same samples
        other = dyn.init_state(p.x0.expand(3, -1), seed=8)
        dyn.advance(other, 4)
        assert not torch.equal(other.x, ends[0]), name
        runs.append(ends[0])
    with pytest.raises(ValueError, match="samples .*generator"):
        RandomSign()(torch.ones(3, dtype=DTYPE))
