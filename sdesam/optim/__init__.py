"""Training optimizers of the SAM family, ``torch.optim`` style (docs/training.md; the methods: docs/math.md §3, §6).

- ``SAM`` — SAM (Eq. 1), and through ``rule=``: USAM, Reverse-SAM (Appendix A), ASAM,
  Fisher-SAM; through ``update=``: any update map Φ(g, p); ``micro_batches=`` (m-SAM),
  ``accumulate=`` (gradient accumulation), ``svag=`` (SVAG), ``scaler=`` (float16 with a
  GradScaler), ``clip_grad_norm=``;
- ``GSAM`` — GSAM (Zhuang et al. 2022) with its ρ schedule; ``WSAM`` — WSAM (Yue et al.
  2023), decoupled or not (kozistr/pytorch_optimizer, juntang-zhuang/GSAM replayed);
- ``EigenSAM`` — Eigen-SAM (Eq. 7–8, Algorithms 1–2); ``EigenSAM.official(...)`` is the
  official code's algorithm (RitianLuo/EigenSAM), proved by a replay test;
- ``EGR`` — explicit gradient regularisation, ∇[f + ρ‖∇f‖] (Appendix A);
- ``frozen_running_stats``, ``zero_momentum``, ``eval_mode`` — module-mode helpers for
  the extra passes.

All wrap a base optimizer (SGD with momentum 0.9 by default), share its param groups
(LR schedulers work), save its state in ``state_dict()``, and take a closure that
*returns* the minibatch loss (no backward). They share the perturbation rules
(``sdesam.rules``), the update maps (``sdesam.updates``), the power iteration
(``sdesam.curvature.power``) and the refresh schedule (``sdesam.refresh``) with the
simulation core.
"""
from .base import MODEL_NOT_GIVEN, Closure, WrappedOptimizer
from .egr import EGR
from .eigen_sam import ESTIMATORS, HVP_METHODS, HVP_MODES, EigenSAM
from .family import GSAM, WSAM
from .norm_stats import PERTURBED_BN, eval_mode, frozen_running_stats, zero_momentum
from .sam import SAM

__all__ = ["SAM", "GSAM", "WSAM", "EigenSAM", "EGR", "HVP_MODES", "ESTIMATORS", "HVP_METHODS", "PERTURBED_BN",
           "WrappedOptimizer", "Closure", "MODEL_NOT_GIVEN", "frozen_running_stats", "zero_momentum", "eval_mode"]
