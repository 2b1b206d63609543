"""sdesam: discrete SAM-family methods next to the SDEs that model them.

The public surface, by layer (each layer imports only the ones above it):

==================  ======================================================================
problems            ``Problem``, ``FunctionProblem`` (toy losses), ``ModuleProblem`` (any
                    ``nn.Module``); ``TaylorVectors`` (``sdesam.oracles``)
rules               ``sdesam.rules``: ``SAMRule``, ``USAMRule``, ``ReverseSAMRule``,
                    ``EigenSAMRule``, ``ASAMRule``, ``FisherSAMRule``, ``PerturbationRule``
                    (write your own)
update maps         ``sdesam.updates``: ``PerturbedGradient`` (SAM), ``GSAMUpdate``,
                    ``WSAMUpdate``, ``UpdateMap``
dynamics            ``make_dynamics(name, problem, **hyperparameters)`` and ``DYNAMICS``;
                    the classes in ``sdesam.discrete`` (``DiscreteSAM``, ``DiscreteEigenSAM``,
                    ``SAMSVAG``, …) and ``sdesam.sde`` (``SAMSDE3``, ``UntruncatedSAMSDE``, …);
                    ``Dynamics`` and ``RunState`` (``sdesam.dynamics``)
Monte Carlo         ``estimate`` (M trajectories, mean ± SE of test functions over time,
                    resumable files), ``Estimate`` (``sdesam.montecarlo``)
one-step moments    ``moment_test`` (``sdesam.moments``): discrete increment vs SDE drift and
                    diffusion, per ρ
single trajectories ``simulate``, ``run_trajectory``, ``read_records`` (``sdesam.simulate``)
curvature           ``sdesam.curvature`` (Hessian operators, Lanczos, SLQ, Hutchinson,
                    alignment), ``sdesam.eigenpairs`` (batched minibatch eigenpairs)
training            ``sdesam.optim`` (SAM, EigenSAM, GSAM, WSAM, EGR optimizers),
                    ``sdesam.training`` (the trainer), ``sdesam.models``, ``sdesam.data``
errors              ``NonFiniteStateError``
==================  ======================================================================

The mathematics each object implements: docs/math.md in the repository.
"""
from . import rules, updates
from .dynamics import Dynamics, RunState
from .errors import NonFiniteStateError
from .moments import moment_test
from .montecarlo import Estimate, estimate
from .oracles import TaylorVectors
from .problem import FunctionProblem, ModuleProblem, Problem
from .registry import DYNAMICS, make_dynamics
from .simulate import read_records, run_trajectory, simulate

__version__ = "0.2.0"

__all__ = [
    "Problem", "FunctionProblem", "ModuleProblem", "TaylorVectors",
    "rules", "updates",
    "Dynamics", "RunState", "DYNAMICS", "make_dynamics",
    "estimate", "Estimate", "moment_test",
    "simulate", "run_trajectory", "read_records",
    "NonFiniteStateError",
]
