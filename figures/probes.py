"""Curvature measurements of a network during or after training (Figures 1, 3, 5).

Each measurement is a ``sdesam.training.Callback`` (so it runs inside the project's one
trainer) built on plain functions that also work on any model:

- ``AlignmentProbe`` (Figure 1): at x_k, before step k, on the step's minibatch γ_k,
  Align(ε_k, v₁(∇²f_γk(x_k))) (paper Sec. 4.3, Corollary 4.1.1) and, every few steps,
  λ₁ of the Hessian of the mean loss over a fixed training subset;
- ``SpectrumProbe`` (Figure 3, right): at the end of training, the Hessian spectrum on a
  fixed training subset by stochastic Lanczos quadrature, λ₁ by Lanczos and the trace;
- ``PowerIterationProbe`` (Figure 5): at the end of a chosen epoch, the alignment of the
  q-step power-iteration estimate (paper Algorithm 1) with a converged Lanczos v₁ of the
  same minibatch Hessian, for q = 0 … q_max and many random starts; training stops there.

Conventions.
* Vectors are flat over the trainable parameters in ``model.parameters()`` order — the
  layout of the ``sdesam.optim`` optimizers' ε and v̂ (the trainer builds them with one
  parameter group).
* ``HESSIAN_MODES``: ``"train"`` is the training-mode loss f_γ (BatchNorm normalises with
  the batch's statistics and its running buffers are left untouched) — the function SAM
  perturbs and Algorithm 1 differentiates; ``"eval"`` is the model as evaluated
  (BatchNorm running statistics, no dropout), PyHessian's and the official Eigen-SAM
  code's convention. Without BatchNorm or dropout the two are the same.
* Eigenpairs come from ``sdesam.curvature.lanczos`` stopped at relative Ritz residual
  ‖Hy − θy‖ ≤ tol·‖H‖; the recorded residual bounds |θ − λ| for an exact eigenvalue λ
  (up to the products' rounding), and sin∠(y, v₁) ≤ residual / spectral gap. Every
  estimate runs the operator's determinism check first (2 products, counted in the
  recorded ``hvps``).
* Hessian-vector products cache each batch's first-order graph (``cache_graph=True``):
  valid because the parameters do not move during one measurement.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from sdesam._streams import derived_seed
from sdesam.curvature import HessianOperator, alignment, lanczos, power_iteration, random_unit_vector, slq, unit_vector
from sdesam.experiment import write_json
from sdesam.optim import SAM, EigenSAM, eval_mode, frozen_running_stats
from sdesam.training import Callback

__all__ = ["HESSIAN_MODES", "hessian_mode", "flat_gradient", "hessian_operator", "Eigenpair",
           "top_eigenpair", "fixed_subset", "perturbation", "AlignmentProbe", "SpectrumProbe",
           "spectrum_record", "power_alignment", "PowerIterationProbe", "TrainingStopped"]

HESSIAN_MODES = ("train", "eval")


@contextlib.contextmanager
def hessian_mode(model: nn.Module, mode: str):
    """Within the block the model computes the loss whose Hessian is wanted (see the
    module doc); its mode flags and BatchNorm buffers are as before afterwards."""
    if mode not in HESSIAN_MODES:
        raise ValueError(f"hessian mode must be one of {list(HESSIAN_MODES)}, got {mode!r}")
    if mode == "eval":
        with eval_mode(model):
            yield model
        return
    modules = list(model.modules())
    previous = [m.training for m in modules]
    try:
        model.train()
        with frozen_running_stats(model):
            yield model
    finally:
        for m, flag in zip(modules, previous):
            m.training = flag


def _params(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_gradient(model: nn.Module, loss_fn, batch) -> Tensor:
    """∇ of ``loss_fn(model(x), y)`` over the trainable parameters, flat (d,). Runs in
    the model's current mode: wrap it in ``hessian_mode`` during training."""
    x, y = batch
    params = _params(model)
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(model(x), y), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def hessian_operator(model: nn.Module, loss_fn, batches) -> HessianOperator:
    """Hessian of the mean loss over the fixed ``batches`` [(inputs, labels), …] at the
    current parameters (graph cached: do not move the parameters while using it)."""
    return HessianOperator.from_module(model, loss_fn, batches, cache_graph=True)


@dataclass
class Eigenpair:
    """A Lanczos estimate of (λ₁, v₁).

    Attributes:
        value: the Ritz value θ ≈ λ₁.
        vector: the unit Ritz vector (d,), defined up to sign.
        residual: ‖Hy − θy‖ (absolute, same units as θ).
        hvps: Hessian-vector products spent, the determinism check's 2 included.
        converged: whether the residual tolerance was met within the step cap.
    """

    value: float
    vector: Tensor
    residual: float
    hvps: int
    converged: bool

    def record(self, prefix: str) -> dict:
        """``{prefix}lambda1``, relative residual, products, convergence — for the records."""
        return {f"{prefix}lambda1": self.value,
                f"{prefix}lambda1_rel_residual": self.residual / abs(self.value) if self.value else math.inf,
                f"{prefix}lambda1_hvps": self.hvps, f"{prefix}lambda1_converged": self.converged}


def top_eigenpair(op: HessianOperator, *, tol: float, max_iters: int, seed: int) -> Eigenpair:
    """λ₁ and v₁ by Lanczos (``which="LA"``), start vector from a CPU generator seeded
    with ``seed`` (so the result does not depend on the device's random stream)."""
    before = op.num_matvecs
    res = lanczos(op, k=1, which="LA", tol=tol, max_iters=max_iters,
                  generator=torch.Generator().manual_seed(seed))
    return Eigenpair(float(res.eigenvalues[0]), res.eigenvectors[:, 0], float(res.residuals[0]),
                     op.num_matvecs - before, bool(res.converged))


def fixed_subset(ctx, examples: int, seed: int, batch_size: int) -> list:
    """Model-ready, unaugmented batches of a fixed random subset of the run's training
    data (``examples`` images drawn with ``seed``, the same for every method and seed)."""
    data = ctx.train_data
    if examples > len(data):
        raise ValueError(f"the Hessian subset needs {examples} examples, the run trains on {len(data)}")
    subset = data.subset(examples, torch.Generator().manual_seed(seed))
    return list(ctx.model_inputs(subset, batch_size))


def perturbation(optimizer, g: Tensor) -> Tensor:
    """The ε a step at gradient g perturbs along (before ρ): the SAM family's own rule
    (SAM g/‖g‖, Reverse-SAM −g/‖g‖, Eigen-SAM Eq. 8 with its current v̂); for other
    optimizers (SGD) SAM's g/‖g‖ — the perturbation SAM would take at that point."""
    if isinstance(optimizer, SAM):
        return optimizer.perturbation(g)
    return unit_vector(g)


# -- Figure 1 ---------------------------------------------------------------------------------
class AlignmentProbe(Callback):
    """Alignment of the perturbation with the top Hessian eigenvector, and λ₁ (Figure 1).

    Before step k, at steps k ≡ 0 (mod ``every_steps``), at parameters x_k:

    * with ``align=True``: g_k = ∇f_γk(x_k) on the step's own minibatch γ_k (the
      trainer's augmented batch), ε_k = ``perturbation(optimizer, g_k)``, and
      v₁(∇²f_γk(x_k)) by Lanczos (training-mode loss, ``hessian_mode`` "train") →
      ``align_minibatch`` = Align(ε_k, v₁) (Corollary 4.1.1 uses this minibatch
      Hessian) and ``minibatch_lambda1`` (+ residual, products). For Eigen-SAM also
      ``align_vhat`` = Align(v̂_k, v₁), the quality of the estimate the step uses. When
      step k is an Eigen-SAM refresh step, the probe first runs that refresh itself
      (``EigenSAM.update_eigenvector`` on the step's minibatch: the same Algorithm 1
      the step would run, which then skips it), so ε_k is the one the step uses.
    * at steps k ≡ 0 (mod ``subset_every``) and after the last step: λ₁ of the Hessian of
      the mean loss over the fixed subset (``subset_examples`` training images,
      ``subset_mode``) → ``subset_lambda1`` (+ residual, products) and, with
      ``align=True``, ``align_subset`` = Align(ε_k, v₁ of that Hessian).

    Records go to the run's ``steps.jsonl``; the last-step one to ``final.json`` under
    ``"final_sharpness"``. Lanczos start vectors are seeded by (seed, step).
    """

    def __init__(self, *, every_steps: int, subset_every: int, subset_examples: int,
                 subset_batch_size: int, subset_seed: int = 0, subset_mode: str = "eval",
                 align: bool = True, tol: float = 1e-3, max_iters: int = 100, seed: int = 0):
        if every_steps < 1 or subset_every < 1 or subset_every % every_steps:
            raise ValueError(f"subset_every ({subset_every}) must be a positive multiple of "
                             f"every_steps ({every_steps})")
        if subset_mode not in HESSIAN_MODES:
            raise ValueError(f"subset_mode must be one of {list(HESSIAN_MODES)}, got {subset_mode!r}")
        self.every_steps, self.subset_every = every_steps, subset_every
        self.subset_examples, self.subset_batch_size = subset_examples, subset_batch_size
        self.subset_seed, self.subset_mode, self.align = subset_seed, subset_mode, align
        self.tol, self.max_iters, self.seed = tol, max_iters, seed
        self._subset = None

    def _subset_eigenpair(self, ctx) -> Eigenpair:
        if self._subset is None:
            self._subset = fixed_subset(ctx, self.subset_examples, self.subset_seed, self.subset_batch_size)
        with hessian_mode(ctx.model, self.subset_mode):
            op = hessian_operator(ctx.model, ctx.loss_fn, self._subset)
            return top_eigenpair(op, tol=self.tol, max_iters=self.max_iters,
                                 seed=derived_seed(self.seed, 1, ctx.step))

    def on_step(self, ctx) -> dict | None:
        t0 = time.perf_counter()
        record = {}
        eps = None
        if self.align:
            model, opt = ctx.model, ctx.optimizer
            x, y = ctx.batch
            if isinstance(opt, EigenSAM) and opt.refresh_due:
                opt.update_eigenvector(lambda: ctx.loss_fn(model(x), y))
            with hessian_mode(model, "train"):
                eps = perturbation(opt, flat_gradient(model, ctx.loss_fn, ctx.batch))
                op = hessian_operator(model, ctx.loss_fn, [ctx.batch])
                top = top_eigenpair(op, tol=self.tol, max_iters=self.max_iters,
                                    seed=derived_seed(self.seed, 0, ctx.step))
            record["align_minibatch"] = alignment(eps, top.vector).item()
            record.update(top.record("minibatch_"))
            if isinstance(opt, EigenSAM):
                record["align_vhat"] = alignment(opt.eigenvector, top.vector).item()
        if ctx.step % self.subset_every == 0:
            sub = self._subset_eigenpair(ctx)
            record.update(sub.record("subset_"))
            if eps is not None:
                record["align_subset"] = alignment(eps, sub.vector).item()
        if not record:
            return None             # nothing due at this step (align=False, not a subset step)
        record["probe_seconds"] = time.perf_counter() - t0
        return record

    def on_train_end(self, ctx) -> dict:
        t0 = time.perf_counter()
        record = {"step": ctx.step, **self._subset_eigenpair(ctx).record("subset_")}
        record["probe_seconds"] = time.perf_counter() - t0
        return {"final_sharpness": record}


# -- Figure 3 ---------------------------------------------------------------------------------
def spectrum_record(op: HessianOperator, *, probes: int, steps: int, tol: float, max_iters: int,
                    seed: int) -> dict:
    """SLQ nodes/weights, λ₁ by Lanczos and the trace of one Hessian operator.

    The trace is estimated from the SLQ probes themselves: for a Rademacher probe z
    (‖z‖² = d) the quadrature's first moment times d equals zᵀHz, Hutchinson's
    unbiased sample; ``trace_stderr`` is their standard error over probes.
    """
    top = top_eigenpair(op, tol=tol, max_iters=max_iters, seed=derived_seed(seed, 0))
    before = op.num_matvecs
    spec = slq(op, num_probes=probes, num_steps=steps, generator=torch.Generator().manual_seed(
        derived_seed(seed, 1)))
    nodes = torch.nan_to_num(spec.nodes, nan=0.0)
    samples = op.dim * (spec.weights * nodes).sum(1)
    stderr = samples.std(correction=1).item() / math.sqrt(probes) if probes > 1 else math.nan
    return {"dim": op.dim, **top.record(""), "trace": samples.mean().item(), "trace_stderr": stderr,
            "slq_probes": probes, "slq_steps": steps, "slq_hvps": op.num_matvecs - before,
            "nodes": [[None if math.isnan(v) else v for v in row] for row in spec.nodes.tolist()],
            "weights": spec.weights.tolist()}


class SpectrumProbe(Callback):
    """Hessian spectrum of the trained model (Figure 3, right), at the end of training.

    The Hessian of the mean loss over a fixed subset of ``examples`` training images
    (``mode``, default eval) → ``final.json["spectrum"]`` = ``spectrum_record``: SLQ with
    ``probes`` Rademacher probes × ``steps`` Lanczos steps (nodes and weights, to be
    smoothed when plotted), λ₁ by Lanczos (``tol``), the trace ± standard error.
    """

    def __init__(self, *, examples: int, batch_size: int, seed: int = 0, mode: str = "eval",
                 probes: int = 10, steps: int = 80, tol: float = 1e-3, max_iters: int = 100):
        if mode not in HESSIAN_MODES:
            raise ValueError(f"mode must be one of {list(HESSIAN_MODES)}, got {mode!r}")
        self.examples, self.batch_size, self.seed, self.mode = examples, batch_size, seed, mode
        self.probes, self.steps, self.tol, self.max_iters = probes, steps, tol, max_iters

    def on_train_end(self, ctx) -> dict:
        t0 = time.perf_counter()
        batches = fixed_subset(ctx, self.examples, self.seed, self.batch_size)
        with hessian_mode(ctx.model, self.mode):
            record = spectrum_record(hessian_operator(ctx.model, ctx.loss_fn, batches),
                                     probes=self.probes, steps=self.steps, tol=self.tol,
                                     max_iters=self.max_iters, seed=self.seed)
        record.update(examples=self.examples, mode=self.mode, probe_seconds=time.perf_counter() - t0)
        return {"spectrum": record}


# -- Figure 5 ---------------------------------------------------------------------------------
def power_alignment(op: HessianOperator, reference: Tensor, starts: dict, q_max: int) -> list[dict]:
    """Alignment of Algorithm 1's iterate with ``reference`` after q = 0 … q_max products.

    Args:
        op: the Hessian operator (one minibatch).
        reference: v₁ (d,), e.g. a converged Lanczos vector of the same operator.
        starts: {label: start vector (d,)} — random unit vectors, a warm start, …
        q_max: the largest number of power iterations.
    Returns:
        rows ``{"start": label, "q": q, "alignment": Align(v_q, v₁), "eigenvalue_estimate"}``
        where v_q is the normalised q-th iterate (v_0 the start) and the estimate is
        ⟨v_{q−1}, H v_{q−1}⟩, what ``power_iteration`` reports after q products (None at q = 0).
    """
    rows = []
    for label, v in starts.items():
        v = v.to(dtype=op.dtype, device=op.device)
        rows.append({"start": label, "q": 0, "alignment": alignment(v, reference).item(),
                     "eigenvalue_estimate": None})
        for q in range(1, q_max + 1):
            res = power_iteration(op.matvec, v, 1)
            v = res.vector
            rows.append({"start": label, "q": q, "alignment": alignment(v, reference).item(),
                         "eigenvalue_estimate": float(res.eigenvalue)})
    return rows


class TrainingStopped(Exception):
    """Raised by ``PowerIterationProbe`` after its measurement to end the run there (the
    rest of the schedule is not needed); the caller catches it."""


class PowerIterationProbe(Callback):
    """Convergence of Algorithm 1 at mid-training (Figure 5).

    At the end of epoch ``at_epoch``, for each of ``minibatches`` fixed minibatches of
    ``batch_size`` unaugmented training images: the Hessian ∇²f_γ (``mode``, default
    "train" as in Algorithm 1), a reference v₁ by Lanczos to relative residual ``ref_tol``,
    and ``power_alignment`` for ``starts`` random unit start vectors (Algorithm 1's
    initialisation) and, for an Eigen-SAM run, the optimizer's current v̂ as a warm start
    ("warm"). The result is written to ``path`` (JSON) and ``TrainingStopped`` is raised:
    the run ends after that epoch (its checkpoint holds the epoch before).
    """

    def __init__(self, *, at_epoch: int, path: Path, minibatches: int, batch_size: int,
                 starts: int, q_max: int, seed: int = 0, mode: str = "train",
                 ref_tol: float = 1e-5, ref_max_iters: int = 200):
        if mode not in HESSIAN_MODES:
            raise ValueError(f"mode must be one of {list(HESSIAN_MODES)}, got {mode!r}")
        self.at_epoch, self.path, self.minibatches, self.batch_size = at_epoch, Path(path), minibatches, batch_size
        self.starts, self.q_max, self.seed, self.mode = starts, q_max, seed, mode
        self.ref_tol, self.ref_max_iters = ref_tol, ref_max_iters

    def on_epoch_end(self, ctx):
        if ctx.epoch + 1 != self.at_epoch:
            return None
        t0 = time.perf_counter()
        batches = fixed_subset(ctx, self.minibatches * self.batch_size, self.seed, self.batch_size)
        warm = ctx.optimizer.eigenvector if isinstance(ctx.optimizer, EigenSAM) else None
        result = {"epoch": ctx.epoch + 1, "step": ctx.step, "metrics": ctx.metrics, "minibatches": []}
        for b, batch in enumerate(batches):
            with hessian_mode(ctx.model, self.mode):
                op = hessian_operator(ctx.model, ctx.loss_fn, [batch])
                ref = top_eigenpair(op, tol=self.ref_tol, max_iters=self.ref_max_iters,
                                    seed=derived_seed(self.seed, b, 0))
                gen = torch.Generator().manual_seed(derived_seed(self.seed, b, 1))
                starts = {f"random{r}": random_unit_vector((op.dim,), generator=gen, dtype=torch.float64)
                          for r in range(self.starts)}
                if warm is not None:
                    starts["warm"] = warm
                rows = power_alignment(op, ref.vector, starts, self.q_max)
            result["minibatches"].append({"index": b, "reference": ref.record(""), "rows": rows})
        result["probe_seconds"] = time.perf_counter() - t0
        write_json(self.path, result)
        raise TrainingStopped(f"measured at the end of epoch {self.at_epoch}")
