"""The dynamics by name: ``make_dynamics(name, problem, **hyperparameters)``.

One table (``REGISTRY``) lists every dynamics with its class, the arguments its name
fixes, the hyperparameters it takes and one line of description; ``DYNAMICS`` and the
help of ``make_dynamics`` are derived from it.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import discrete, rules, sde, updates
from .dynamics import Dynamics
from .problem import Problem

__all__ = ["REGISTRY", "DYNAMICS", "DynamicsEntry", "make_dynamics", "SAM_FAMILY", "SAM_FAMILY_HYPERPARAMETERS",
           "sam_family_member"]

_SDE_OPTIONS = ("n_batches", "substeps", "correct_drift_noise", "diffusion", "antithetic", "solver", "seed")
_RULE_OPTIONS = ("rule", "update", "micro_batches")
_EIG_OPTIONS = ("eig_method", "eig_tol", "eig_max_iters", "max_dense_dim")


@dataclass(frozen=True)
class DynamicsEntry:
    """One named dynamics.

    Attributes:
        build: the ``Dynamics`` class, or a function ``build(problem, **hyperparameters)``.
        summary: one line for the help.
        hyperparameters: the keyword arguments it accepts (``eta`` always).
        kind: ``"discrete"`` or ``"sde"``.
    """

    build: object
    summary: str
    hyperparameters: tuple[str, ...]
    kind: str

    @property
    def takes_rule(self) -> bool:
        return "rule" in self.hyperparameters


def _asam(problem, eta, rho, xi=0.0, update=None, micro_batches=1):
    return discrete.DiscreteSAM(problem, eta, rho, rules.ASAMRule(xi), update, micro_batches)


def _fisher_sam(problem, eta, rho, eta_f=1.0, update=None, micro_batches=1):
    return discrete.DiscreteSAM(problem, eta, rho, rules.FisherSAMRule(eta_f), update, micro_batches)


def _usam(problem, eta, rho, update=None, micro_batches=1):
    return discrete.DiscreteSAM(problem, eta, rho, rules.USAMRule(), update, micro_batches)


def _reverse_sam(problem, eta, rho, update=None, micro_batches=1):
    return discrete.DiscreteSAM(problem, eta, rho, rules.ReverseSAMRule(), update, micro_batches)


def _gsam(problem, eta, rho, alpha=0.1, rule="sam", micro_batches=1):
    return discrete.DiscreteSAM(problem, eta, rho, rule, updates.GSAMUpdate(alpha), micro_batches)


def _wsam(problem, eta, rho, gamma=0.9, rule="sam", micro_batches=1):
    return discrete.DiscreteSAM(problem, eta, rho, rule, updates.WSAMUpdate(gamma), micro_batches)


def _discrete(build, summary, hyperparameters):
    return DynamicsEntry(build, summary, hyperparameters, "discrete")


def _sde(cls, summary, extra=(), rule=True, rho=True):
    return DynamicsEntry(cls, summary, ("eta",) + (("rho",) if rho else ()) + (_RULE_OPTIONS if rule else ())
                         + tuple(extra) + _SDE_OPTIONS, "sde")


REGISTRY: dict[str, DynamicsEntry] = {
    "sgd": DynamicsEntry(discrete.DiscreteSGD, "SGD, x ← x − η g_γ", ("eta",), "discrete"),
    "sam": DynamicsEntry(discrete.DiscreteSAM, "SAM (paper Eq. 1); any rule=, update=, and m-SAM with micro_batches=m",
                         ("eta", "rho") + _RULE_OPTIONS, "discrete"),
    "usam": _discrete(_usam, "unnormalised SAM, ε = g", ("eta", "rho", "update", "micro_batches")),
    "reverse_sam": _discrete(_reverse_sam, "Reverse-SAM, ε = −g/‖g‖ (Appendix A)",
                             ("eta", "rho", "update", "micro_batches")),
    "asam": _discrete(_asam, "ASAM (Kwon et al. 2021), ε = T²g/‖Tg‖, T = |x| + ξ",
                      ("eta", "rho", "xi", "update", "micro_batches")),
    "fisher_sam": _discrete(_fisher_sam, "Fisher-SAM (Kim et al. 2022), ε = F⁻¹g/√(gᵀF⁻¹g), F = 1 + η_F g²",
                            ("eta", "rho", "eta_f", "update", "micro_batches")),
    "gsam": _discrete(_gsam, "GSAM (Zhuang et al. 2022), Φ = p − α g⊥", ("eta", "rho", "alpha", "rule",
                                                                          "micro_batches")),
    "wsam": _discrete(_wsam, "WSAM, Φ = g + γ/(1 − γ)(p − g)", ("eta", "rho", "gamma", "rule", "micro_batches")),
    "egr": DynamicsEntry(discrete.DiscreteEGR, "EGR, x ← x − η ∇[f_γ + ρ‖∇f_γ‖] (Appendix A)",
                         ("eta", "rho"), "discrete"),
    "eigen_sam": DynamicsEntry(discrete.DiscreteEigenSAM, "Eigen-SAM, Algorithms 1–2 with Eq. 7–8",
                               ("eta", "rho", "alpha", "p", "q", "p_counting", "first_refresh", "renormalize",
                                "steps_per_epoch"), "discrete"),
    "ideal_eigen_sam": DynamicsEntry(discrete.IdealEigenSAM, "Eigen-SAM with an exact top eigenvector every step",
                                     ("eta", "rho", "alpha", "eigvec_source", "hessian_subset") + _EIG_OPTIONS,
                                     "discrete"),
    "sam_svag": DynamicsEntry(discrete.SAMSVAG, "SAM-SVAG: l steps of η/l per η with two minibatches (l = 1: SAM)",
                              ("eta", "rho", "l") + _RULE_OPTIONS, "discrete"),
    "sgd_sde": _sde(sde.SGDSDE, "the SGD SDE (Li et al. 2017)", rule=False, rho=False),
    "sam_sde2": _sde(sde.SAMSDE2, "second-order SAM SDE (Compagnoni et al. 2023, paper Eq. 3)"),
    "sam_sde3": _sde(sde.SAMSDE3, "third-order SAM SDE (paper Eq. 4)"),
    "untruncated_sam_sde": _sde(sde.UntruncatedSAMSDE, "the untruncated SAM SDE (SAM-SVAG's limit)"),
    "aligned_sde5": _sde(sde.AlignedSDE5, "Corollary 4.1.1, Eq. 5 (∇λ₁ drift, Σ^SAM)", rule=False,
                         extra=_EIG_OPTIONS + ("gap_rtol",)),
    "aligned_sde6": _sde(sde.AlignedSDE6, "Corollary 4.1.1, Eq. 6 (s*λ₁v₁ and ∇λ₁ drift, Σ^SAM)", rule=False,
                         extra=_EIG_OPTIONS + ("gap_rtol",)),
    "eigen_sam_sde": _sde(sde.EigenSAMSDE, "the third-order SDE of ideal Eigen-SAM", rule=False,
                          extra=("alpha", "eigvec_source", "hessian_subset") + _EIG_OPTIONS),
}

#: every dynamics name, in the registry's order
DYNAMICS = tuple(REGISTRY)


def make_dynamics(name: str, problem: Problem, **hyperparameters) -> Dynamics:
    if name not in REGISTRY:
        raise ValueError(f"dynamics must be one of {list(DYNAMICS)}, got {name!r}")
    entry = REGISTRY[name]
    unknown = sorted(set(hyperparameters) - set(entry.hyperparameters))
    if unknown:
        raise ValueError(f"{name!r} takes no {', '.join(unknown)}; it accepts {', '.join(entry.hyperparameters)}")
    for required in ("eta", "rho"):
        if required in entry.hyperparameters and required not in hyperparameters:
            raise ValueError(f"{name!r} needs {required}")
    return entry.build(problem, **hyperparameters)


#: The SAM-family methods that ``sam_family_member`` turns into keyword arguments.
SAM_FAMILY = ("sam", "usam", "reverse_sam", "asam", "fisher_sam", "gsam", "wsam", "msam")
#: Its hyperparameters (the keyword arguments of ``sam_family_member`` after the name).
SAM_FAMILY_HYPERPARAMETERS = ("xi", "eta_f", "gsam_alpha", "wsam_gamma", "micro_batches")


def sam_family_member(name: str, *, xi: float = 0.0, eta_f: float = 1.0, gsam_alpha: float = 0.1,
                      wsam_gamma: float = 0.9, micro_batches: int = 2) -> dict:
    """The keyword arguments (``rule``, ``update``, ``micro_batches``) that make discrete
    ``sam`` and every dynamics taking a rule (``sam_sde2``, ``sam_sde3``,
    ``untruncated_sam_sde``, ``sam_svag``) the SAM-family method ``name``: one definition for
    the discrete method and its SDEs. ``name`` is one of ``SAM_FAMILY``; the keyword
    arguments are the hyperparameters of the methods that have one (ASAM's ξ, Fisher-SAM's
    η_F, GSAM's α, WSAM's γ, m-SAM's number of micro-batches)."""
    members = {"sam": lambda: {"rule": "sam"}, "usam": lambda: {"rule": "usam"},
               "reverse_sam": lambda: {"rule": "reverse_sam"},
               "asam": lambda: {"rule": rules.ASAMRule(xi)},
               "fisher_sam": lambda: {"rule": rules.FisherSAMRule(eta_f)},
               "gsam": lambda: {"rule": "sam", "update": updates.GSAMUpdate(gsam_alpha)},
               "wsam": lambda: {"rule": "sam", "update": updates.WSAMUpdate(wsam_gamma)},
               "msam": lambda: {"rule": "sam", "micro_batches": micro_batches}}
    if name not in members:
        raise ValueError(f"{name!r} is not a SAM-family method; one of {', '.join(SAM_FAMILY)}")
    return members[name]()


def _help() -> str:
    width = max(map(len, REGISTRY))
    lines = []
    for kind, title in (("discrete", "Discrete methods"), ("sde", "SDEs")):
        lines.append(f"{title}:")
        for name, e in REGISTRY.items():
            if e.kind == kind:
                lines.append(f"    {name:<{width}}  {e.summary}")
                lines.append(f"    {'':<{width}}  takes: {', '.join(e.hyperparameters)}")
    return "\n".join(lines)


make_dynamics.__doc__ = f"""Build a dynamics by name with its hyperparameters.

    make_dynamics("sam_sde3", problem, eta=0.01, rho=0.2, n_batches=8, substeps=2)

Args:
    name: one of ``DYNAMICS`` (below).
    problem: the ``Problem`` it runs on.
    **hyperparameters: the keyword arguments the dynamics takes (below); ``eta`` always.
        Every class's docstring describes its own (``help(sdesam.discrete.DiscreteSAM)``,
        ``help(sdesam.sde.SAMFamilySDE)``). ``rule=`` is a ``PerturbationRule`` or a rule name,
        ``update=`` an ``UpdateMap`` or an update name.

Raises:
    ValueError: an unknown name, a keyword the dynamics does not take (the message lists
        the ones it accepts), or a bad value (named with its value).

{_help()}
"""
