"""sdesam: discrete SAM / Eigen-SAM next to the SDEs that model them."""
from .errors import NonFiniteStateError
from .perturbations import SAM, USAM, EigenSAM, PerturbationRule, ReverseSAM, get_rule

__version__ = "0.1.0"

__all__ = [
    "NonFiniteStateError",
    "PerturbationRule", "SAM", "USAM", "ReverseSAM", "EigenSAM", "get_rule",
]
