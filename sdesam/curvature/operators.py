"""Curvature as linear operators on flat parameter vectors (in the style of curvlinops).

``HessianOperator`` is the Hessian of the mean loss over a FIXED dataset,

    H = ∇² f(x),   f(x) = (1/N) Σ_b n_b · loss_b(x),

where ``loss_b`` is the mean loss of batch b (n_b examples, N = Σ n_b). It acts on flat
vectors of dimension d = number of trainable parameters: ``H @ v`` or ``H.matvec(v)``
with v of shape (d,) or (d, k) (k columns, one Hessian-vector product each). Each
column costs one HVP per batch of the dataset; ``num_matvecs`` counts columns.

Determinism. The operator is only a matrix if two applications to the same vector
agree. The caller decides the module's mode: dropout left on (train mode) makes every
product use fresh masks, and ``check_deterministic`` (run by default before every
estimate in this subpackage) raises ``NonDeterministicOperatorError``. BatchNorm in
train mode is deterministic for fixed batches but normalises with the statistics of
each batch, so H then depends on how the data are split into batches (and is the
Hessian of a different function than in eval mode); put the model in eval mode unless
that is what you want.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int

__all__ = [
    "LinearOperator", "HessianOperator", "NonDeterministicOperatorError",
    "check_deterministic", "check_symmetric", "flatten_tensors", "unflatten_vector",
]


class NonDeterministicOperatorError(RuntimeError):
    """Two applications of a curvature operator to the same vector disagreed.

    The usual causes: dropout (or another random layer) left in train mode, a data
    pipeline that reshuffles or augments between products, or a non-deterministic
    user-supplied HVP. Put the model in ``eval()`` mode and use a fixed list of batches.
    """


def flatten_tensors(tensors: Iterable[Tensor]) -> Tensor:
    """Concatenate tensors (e.g. parameters or their gradients) into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_vector(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector (d,) into tensors shaped like ``like`` (views where possible).

    Inverse of ``flatten_tensors``: ``unflatten_vector(flatten_tensors(ts), ts)``
    returns tensors equal to ``ts``.
    """
    sizes = [t.numel() for t in like]
    if vec.dim() != 1 or vec.numel() != sum(sizes):
        raise ValueError(f"expected a flat vector of {sum(sizes)} entries, got shape "
                         f"{tuple(vec.shape)}")
    return [chunk.view_as(t) for chunk, t in zip(torch.split(vec, sizes), like)]


class LinearOperator:
    """A symmetric d × d linear operator known only through matrix-vector products.

    Subclasses implement ``_matvec(v)`` for a single vector v of shape (d,) in the
    operator's dtype and device. ``matvec``/``@`` accept (d,) or (d, k), cast the input
    to the operator's dtype/device, and count products in ``num_matvecs`` (one per
    column).
    """

    def __init__(self, dim: int, dtype: torch.dtype, device):
        self.dim = check_int("dim", dim, 1)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.num_matvecs = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def _matvec(self, v: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def matvec(self, v: Tensor) -> Tensor:
        """H v for v of shape (d,) or H V for V of shape (d, k) (column by column)."""
        if not isinstance(v, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(v).__name__}")
        if v.dim() not in (1, 2) or v.shape[0] != self.dim:
            raise ValueError(f"expected a vector of shape ({self.dim},) or a matrix of "
                             f"shape ({self.dim}, k), got {tuple(v.shape)}")
        v = v.to(dtype=self.dtype, device=self.device)
        if v.dim() == 1:
            out = self._apply_one(v)
        elif v.shape[1] == 0:
            out = torch.empty(self.dim, 0, dtype=self.dtype, device=self.device)
        else:
            out = torch.stack([self._apply_one(v[:, j]) for j in range(v.shape[1])], dim=1)
        return out

    def _apply_one(self, v: Tensor) -> Tensor:
        out = self._matvec(v)
        self.num_matvecs += 1
        if not isinstance(out, Tensor) or out.shape != (self.dim,):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the operator's product returned {got}, expected ({self.dim},)")
        return out.to(dtype=self.dtype)

    __matmul__ = matvec

    def to_dense(self) -> Tensor:
        """The d × d matrix, by d products with the unit vectors (tiny problems only)."""
        return self.matvec(torch.eye(self.dim, dtype=self.dtype, device=self.device))

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` view (float64 numpy in and out)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator as _SciPyOp

        def mv(x):
            x = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(self.dim))
            return self.matvec(x).detach().to("cpu", torch.float64).numpy()

        return _SciPyOp(self.shape, matvec=mv, rmatvec=mv, dtype=np.float64)

    def reset_cache(self) -> None:
        """Drop any cached intermediate state (no-op unless a subclass caches)."""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dim={self.dim}, dtype={self.dtype}, "
                f"device={self.device}, num_matvecs={self.num_matvecs})")


def _batch_size(inputs) -> int:
    t = inputs
    while isinstance(t, (tuple, list)):
        if not t:
            raise ValueError("empty input tuple in a batch")
        t = t[0]
    if not isinstance(t, Tensor) or t.dim() == 0:
        raise ValueError("cannot read the batch size: the first input tensor of each batch "
                         "must have the examples along dimension 0")
    return int(t.shape[0])


def _to_device(obj, device):
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to_device(o, device) for o in obj)
    return obj


class HessianOperator(LinearOperator):
    """Hessian of the mean loss over a fixed dataset, as a linear operator on R^d.

    Build it with ``HessianOperator.from_module(model, loss_fn, batches)`` or wrap any
    Hessian-vector product with ``HessianOperator.from_function(hvp_fn, dim, dtype,
    device)``.

    HVP method (``from_module``). The default, ``"double_backward"``, takes the gradient
    of each batch's loss with ``torch.autograd.grad(create_graph=True)`` on the module's
    own parameters and differentiates ⟨g, v⟩ once more (reverse-over-reverse). Measured
    on 2 unloaded CPU cores (torch 2.13, MLP 784-784-10 GeLU, B=128, float32, median
    of 30; script and table in ``docs/results/curvature.md``, and ``python -m
    benchmarks.curvature --timing-only``): plain gradient 1.56–1.73 ms; double backward
    4.4–4.9 ms (2.6–2.9×); the same through ``functional_call`` 4.3–4.5 ms;
    forward-over-reverse ``torch.func.jvp(torch.func.grad(f))`` 6.9–12.4 ms
    (4.3–7.3×); forward-over-reverse with ``torch.autograd.forward_ad`` dual tensors
    7.3 ms. So double backward is the default; ``hvp_method="forward_over_reverse"``
    keeps the ``torch.func`` path for accelerators, where it has not been measured.

    ``cache_graph=True`` keeps every batch's first-order graph alive, so a product costs
    only the second backward pass (measured 2.3–3.1 ms instead of 4.4–4.9 ms above)
    at the price of holding all batches' activations and their gradient graph in
    memory. The cache is built on the first product and dropped by ``reset_cache()``;
    it freezes the parameter values and any randomness (e.g. dropout masks) of that
    first pass, so call ``reset_cache()`` after changing the parameters.
    ``check_deterministic`` drops the cache between its two applications, so dropout
    is still caught.

    The operator reads the module's parameters when it runs (not when it is built):
    changing the parameters changes the operator (except with a live graph cache).

    Attributes:
        dim: d, the number of trainable parameters (those with ``requires_grad``).
        num_matvecs: columns multiplied so far (each = one HVP over the whole dataset).
        num_batches, num_examples: the dataset's size.
        params: the parameter tensors, in flattening order.
    """

    def __init__(self, dim: int, dtype: torch.dtype, device, matvec_fn: Callable[[Tensor], Tensor],
                 *, params: Sequence[Tensor] | None = None, num_batches: int | None = None,
                 num_examples: int | None = None, reset_fn: Callable[[], None] | None = None):
        super().__init__(dim, dtype, device)
        self._matvec_fn = matvec_fn
        self._reset_fn = reset_fn
        self.params = list(params) if params is not None else None
        self.num_batches = num_batches
        self.num_examples = num_examples

    def _matvec(self, v: Tensor) -> Tensor:
        return self._matvec_fn(v)

    def reset_cache(self) -> None:
        if self._reset_fn is not None:
            self._reset_fn()

    # flat-vector helpers -------------------------------------------------------------
    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Parameter-shaped tensors (in ``params`` order) → flat vector (d,)."""
        return flatten_tensors(tensors)

    def unflatten(self, vec: Tensor) -> list[Tensor]:
        """Flat vector (d,) → list of tensors shaped like ``params``."""
        if self.params is None:
            raise ValueError("this operator was built from a function and knows no "
                             "parameter shapes; use unflatten_vector(vec, like)")
        return unflatten_vector(vec, self.params)

    def parameters_vector(self) -> Tensor:
        """The current parameter values as one flat vector (detached copy)."""
        if self.params is None:
            raise ValueError("this operator was built from a function and has no parameters")
        return flatten_tensors([p.detach() for p in self.params]).clone()

    # constructors --------------------------------------------------------------------
    @classmethod
    def from_function(cls, hvp_fn: Callable[[Tensor], Tensor], dim: int,
                      dtype: torch.dtype = torch.float32, device="cpu") -> "HessianOperator":
        """Wrap a Hessian-vector product ``hvp_fn(v: (d,)) -> (d,)``.

        E.g. ``HessianOperator.from_function(lambda v: problem.hvp(x, idx, v), d,
        x.dtype, x.device)``. The function must be deterministic and symmetric in the
        sense ⟨u, Hv⟩ = ⟨Hu, v⟩ (see ``check_deterministic``, ``check_symmetric``).
        """
        if not callable(hvp_fn):
            raise TypeError("hvp_fn must be callable")
        return cls(dim, dtype, device, hvp_fn)

    @classmethod
    def from_problem(cls, problem, x: Tensor, batch: Tensor) -> "HessianOperator":
        """∇²f_γ(x) of a ``sdesam.problem.Problem`` as an operator: v ↦ ``problem.hvp(x, batch, v)``.

        Args:
            problem: a ``Problem`` (anything with ``dim`` and ``hvp_at(x, batch)``).
            x: the point, shape (d,); copied (detached), so later changes to the
                caller's tensor do not move the operator.
            batch: one minibatch γ, a LongTensor (B,) of example indices with
                B = ``problem.batch_size``. For the Hessian of the mean loss over a fixed
                subset S of a ``ModuleProblem``, use ``problem.subproblem(S, len(S))`` and
                ``torch.arange(len(S))``.
        """
        dim = problem.dim
        if not isinstance(x, Tensor) or x.shape != (dim,):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be the flat point of shape ({dim},), got {got}")
        batch = torch.as_tensor(batch, device=x.device)
        if batch.dim() != 1 or batch.dtype != torch.long:
            raise ValueError("batch must be one minibatch: a LongTensor of shape (B,), got "
                             f"{batch.dtype} of shape {tuple(batch.shape)}")
        x = x.detach().clone()
        matvec = problem.hvp_at(x, batch)
        return cls(dim, x.dtype, x.device, lambda v: matvec(v.to(x.dtype)))

    @classmethod
    def from_module(cls, model: nn.Module, loss_fn: Callable, batches, *,
                    params: Sequence[Tensor] | None = None, reduction: str = "mean",
                    hvp_method: str = "double_backward",
                    cache_graph: bool = False) -> "HessianOperator":
        """Hessian of the mean loss of ``model`` over the fixed ``batches``.

        Args:
            model: the network, called as ``model(inputs)`` (or ``model(*inputs)`` when a
                batch's inputs are a tuple/list). Its mode (train/eval) is left as is.
            loss_fn: ``loss_fn(outputs, targets)`` → scalar loss of the batch.
            batches: a sequence (or iterable, materialised once) of ``(inputs, targets)``
                pairs. The batch size is the length of dimension 0 of the first input
                tensor; unequal batch sizes are weighted so that the result is the
                Hessian of the mean over all examples.
            params: the parameters to differentiate, default every parameter of the
                model with ``requires_grad``; they define d and the flattening order.
            reduction: ``"mean"`` if ``loss_fn`` averages over the batch (weights
                n_b / N), ``"sum"`` if it sums (weights 1 / N).
            hvp_method: ``"double_backward"`` (default, fastest measured on CPU) or
                ``"forward_over_reverse"`` (``torch.func.jvp`` of ``torch.func.grad``).
            cache_graph: keep the first-order graphs between products (see class doc).
        """
        check_choice("reduction", reduction, {"mean", "sum"})
        check_choice("hvp_method", hvp_method, {"double_backward", "forward_over_reverse"})
        if cache_graph and hvp_method != "double_backward":
            raise ValueError("cache_graph=True needs hvp_method='double_backward'")
        if params is None:
            params = [p for p in model.parameters() if p.requires_grad]
        params = list(params)
        if not params:
            raise ValueError("the model has no trainable parameters (none with requires_grad)")
        for p in params:
            if not p.requires_grad:
                raise ValueError("every tensor in params must have requires_grad=True")
        dtype, device = params[0].dtype, params[0].device
        if any(p.dtype != dtype or p.device != device for p in params):
            raise ValueError("all parameters must share one dtype and device")
        batches = list(batches)
        if not batches:
            raise ValueError("batches is empty: the operator needs a fixed, non-empty dataset")
        batches = [_to_device((b[0], b[1]), device) for b in batches]
        sizes = [_batch_size(inp) for inp, _ in batches]
        n_total = sum(sizes)
        if reduction == "mean":
            weights = [n / n_total for n in sizes]
        else:
            weights = [1.0 / n_total] * len(sizes)
        dim = sum(p.numel() for p in params)

        def call(inputs):
            return model(*inputs) if isinstance(inputs, (tuple, list)) else model(inputs)

        def batch_loss(inputs, targets):
            return loss_fn(call(inputs), targets)

        def grads_with_graph(inputs, targets):
            loss = batch_loss(inputs, targets)
            return torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)

        def second_backward(grads, v_list, retain):
            pairs = [(g, vi) for g, vi in zip(grads, v_list) if g is not None and g.requires_grad]
            if not pairs:
                return [torch.zeros_like(p) for p in params]
            # H v = ∇⟨g, v⟩: backpropagate v through the gradient graph directly
            hv = torch.autograd.grad([g for g, _ in pairs], params, grad_outputs=[vi for _, vi in pairs],
                                     retain_graph=retain, allow_unused=True)
            return [torch.zeros_like(p) if h is None else h for h, p in zip(hv, params)]

        cache: list = []

        def reset():
            cache.clear()

        if hvp_method == "double_backward":
            def matvec_fn(v: Tensor) -> Tensor:
                v_list = unflatten_vector(v, params)
                out = torch.zeros(dim, dtype=dtype, device=device)
                if cache_graph and not cache:
                    with torch.enable_grad():
                        cache.extend(grads_with_graph(inp, tgt) for inp, tgt in batches)
                for i, ((inp, tgt), w) in enumerate(zip(batches, weights)):
                    with torch.enable_grad():
                        grads = cache[i] if cache_graph else grads_with_graph(inp, tgt)
                        hv = second_backward(grads, v_list, retain=cache_graph)
                    out.add_(flatten_tensors(hv).detach(), alpha=w)
                return out
        else:
            from torch.func import functional_call, grad, jvp

            names_by_id = {id(p): n for n, p in model.named_parameters()}
            names = [names_by_id.get(id(p)) for p in params]
            if any(n is None for n in names):
                raise ValueError("hvp_method='forward_over_reverse' needs params that are "
                                 "parameters of the model")

            def matvec_fn(v: Tensor) -> Tensor:
                primals = {n: p.detach() for n, p in zip(names, params)}
                tangents = dict(zip(names, unflatten_vector(v, params)))
                out = torch.zeros(dim, dtype=dtype, device=device)
                for (inp, tgt), w in zip(batches, weights):
                    def f(pdict):
                        args = tuple(inp) if isinstance(inp, (tuple, list)) else (inp,)
                        return loss_fn(functional_call(model, pdict, args), tgt)
                    _, hv = jvp(grad(f), (primals,), (tangents,))
                    out.add_(flatten_tensors([hv[n] for n in names]).detach(), alpha=w)
                return out

        return cls(dim, dtype, device, matvec_fn, params=params, num_batches=len(batches),
                   num_examples=n_total, reset_fn=reset)


def _default_rtol(dtype: torch.dtype) -> float:
    return 1e3 * torch.finfo(dtype).eps if dtype.is_floating_point else 1e-6


def _probe_generator(device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(0x5DE5A1)
    return g


def check_deterministic(op: LinearOperator, num_probes: int = 1, rtol: float | None = None) -> float:
    """Apply ``op`` twice to the same random vector(s); raise if the results differ.

    Costs 2 · ``num_probes`` products (counted in ``op.num_matvecs``). Any cached state
    of the operator is dropped before each application, so a graph cache cannot hide
    randomness. The probes come from a private generator with a fixed seed, so running
    the check does not change the caller's random streams.

    Args:
        op: the operator.
        num_probes: how many random Gaussian vectors to try.
        rtol: allowed ‖Hv − H'v‖ / ‖Hv‖; default 1000 · machine epsilon of the
            operator's dtype (1.2e-4 for float32, 2.2e-13 for float64), far above the
            rounding noise of a deterministic pass and far below what dropout causes.

    Returns:
        the largest relative difference seen.

    Raises:
        NonDeterministicOperatorError: when a difference exceeds ``rtol`` (or a product
            is not finite).
    """
    num_probes = check_int("num_probes", num_probes, 1)
    rtol = _default_rtol(op.dtype) if rtol is None else float(rtol)
    gen = _probe_generator(op.device)
    worst = 0.0
    for _ in range(num_probes):
        v = torch.randn(op.dim, generator=gen, dtype=op.dtype, device=op.device)
        op.reset_cache()
        a = op.matvec(v)
        op.reset_cache()
        b = op.matvec(v)
        op.reset_cache()
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise NonDeterministicOperatorError(
                "the operator returned non-finite values (NaN/Inf) for a random vector")
        scale = torch.linalg.vector_norm(a).item()
        diff = torch.linalg.vector_norm(a - b).item()
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        worst = max(worst, rel)
        if rel > rtol:
            raise NonDeterministicOperatorError(
                f"two applications of the operator to the same vector differ by "
                f"{rel:.3g} (relative, allowed rtol={rtol:.3g}); the curvature estimate "
                f"would be meaningless. Is dropout (or another random layer) in train mode? "
                f"Call model.eval(), keep the batches fixed, or pass "
                f"check_determinism=False if you know what you are doing.")
    return worst


def check_symmetric(op: LinearOperator, num_probes: int = 1, rtol: float | None = None) -> float:
    """Check ⟨u, Hv⟩ = ⟨Hu, v⟩ on random u, v (2 products per probe); raise ValueError.

    Lanczos, SLQ and Hutchinson assume a symmetric operator; a wrong user-supplied HVP
    often fails this. Returns the largest relative asymmetry |⟨u,Hv⟩−⟨Hu,v⟩| / (‖u‖‖Hv‖).
    """
    num_probes = check_int("num_probes", num_probes, 1)
    rtol = _default_rtol(op.dtype) if rtol is None else float(rtol)
    gen = _probe_generator(op.device)
    worst = 0.0
    for _ in range(num_probes):
        u = torch.randn(op.dim, generator=gen, dtype=op.dtype, device=op.device)
        v = torch.randn(op.dim, generator=gen, dtype=op.dtype, device=op.device)
        hu, hv = op.matvec(u), op.matvec(v)
        scale = max(torch.linalg.vector_norm(u).item() * torch.linalg.vector_norm(hv).item(),
                    torch.linalg.vector_norm(v).item() * torch.linalg.vector_norm(hu).item())
        asym = abs((u @ hv).item() - (hu @ v).item())
        rel = asym / scale if scale > 0 else 0.0
        worst = max(worst, rel)
        if rel > rtol:
            raise ValueError(f"the operator is not symmetric: |<u,Hv> - <Hu,v>| is {rel:.3g} "
                             f"relative (allowed {rtol:.3g})")
    return worst
