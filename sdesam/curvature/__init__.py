"""Curvature tools: Hessian operators, power iteration, Lanczos, spectra, alignment.

Everything acts on flat vectors of the d trainable parameters:

- ``HessianOperator`` (``from_module`` / ``from_function``): H @ v over a fixed dataset;
  ``check_deterministic`` guards every estimate against dropout left on & co.
- ``lanczos`` (top-k eigenpairs of one operator), ``batched_lanczos`` (of N operators in
  lockstep: the minibatch Hessians of ``sdesam.eigenpairs``), ``power_method`` /
  ``power_iteration`` (Algorithm 1).
- ``slq`` + ``spectral_density`` (spectrum), ``hutchinson_trace`` (trace).
- ``alignment`` (paper Sec. 4.3), ``dense_hessian`` (tiny-network reference).
"""
from .alignment import alignment
from .batched_lanczos import BatchedLanczosResult, batched_lanczos
from .dense import dense_hessian
from .hutchinson import TraceEstimate, hutchinson_trace
from .lanczos import LanczosResult, PowerMethodResult, lanczos, power_method
from .operators import (
                        HessianOperator,
                        LinearOperator,
                        NonDeterministicOperatorError,
                        check_deterministic,
                        check_symmetric,
                        flatten_tensors,
                        unflatten_vector,
)
from .power import PowerIterationResult, accurate_norm, power_iteration, random_unit_vector, unit_vector
from .slq import SLQResult, random_probe, slq, spectral_density

__all__ = [
    "batched_lanczos", "BatchedLanczosResult",
    "PowerIterationResult", "power_iteration", "random_unit_vector", "unit_vector", "accurate_norm",
    "LinearOperator", "HessianOperator", "NonDeterministicOperatorError",
    "check_deterministic", "check_symmetric", "flatten_tensors", "unflatten_vector",
    "LanczosResult", "lanczos", "PowerMethodResult", "power_method",
    "SLQResult", "slq", "spectral_density", "random_probe",
    "TraceEstimate", "hutchinson_trace",
    "alignment", "dense_hessian",
]
