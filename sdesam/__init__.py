"""sdesam: discrete SAM / Eigen-SAM next to the SDEs that model them.

The small public surface (everything else lives in the submodules named below):

* problems:  ``FunctionProblem`` (toy losses), ``ModuleProblem`` (any ``nn.Module``)
* dynamics:  ``make_dynamics(name, problem, **hyperparameters)`` with ``DYNAMICS``
  (``sgd``, ``sam``, ``usam``, ``reverse_sam``, ``egr``, ``eigen_sam``, ``sgd_sde``,
  ``sam_sde2``, ``sam_sde3``; the paper's causal chain: ``aligned_sde5`` and
  ``aligned_sde6`` (Corollary 4.1.1, Eq. 5–6), ``eigen_sam_sde`` (an Eigen-SAM SDE) and
  ``ideal_eigen_sam`` (Eigen-SAM with an exact eigenvector every step)); classes in
  ``sdesam.integrators`` and ``sdesam.sde``, minibatch eigenpairs in ``sdesam.eigenpairs``
* running:   ``simulate``, ``run_trajectory``, ``read_records``
* rules:     ``sdesam.perturbations`` (SAM, USAM, ReverseSAM, EigenSAM)
* errors:    ``NonFiniteStateError``
"""
from . import perturbations
from .dynamics import DYNAMICS, Dynamics, RunState, make_dynamics
from .errors import NonFiniteStateError
from .oracles import TaylorVectors
from .problem import FunctionProblem, ModuleProblem, Problem
from .simulate import RecordWriter, read_records, run_trajectory, simulate

__version__ = "0.1.0"

__all__ = [
    "Problem", "FunctionProblem", "ModuleProblem", "TaylorVectors",
    "Dynamics", "RunState", "DYNAMICS", "make_dynamics",
    "simulate", "run_trajectory", "read_records", "RecordWriter",
    "perturbations", "NonFiniteStateError",
]
