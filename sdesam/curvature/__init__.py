"""Curvature tools: Hessian operators, power iteration, Lanczos, spectra, alignment."""
from .power import PowerIterationResult, power_iteration, random_unit_vector, unit_vector

__all__ = ["PowerIterationResult", "power_iteration", "random_unit_vector", "unit_vector"]
