"""Problems: flat parameters x ∈ R^d and the loss f_γ(x) of one minibatch γ.

A minibatch γ is B distinct example indices drawn uniformly without replacement
from the n training examples; f_γ(x) is the mean loss over γ and f(x) = E_γ f_γ(x) is
the mean training loss (docs/math.md §1).

Shapes. Every oracle takes ``x`` of shape (*Sx, d) and ``batch`` (a LongTensor of
example indices) of shape (*Sb, B); the leading shapes broadcast to S and the result
has shape (*S, d) (or (*S,) for losses). So one call evaluates K minibatches at one
point (x: (d,), batch: (K, B)), M trajectories with a minibatch each (x: (M, d),
batch: (M, B)), or all enumerated minibatches of a toy problem at M points
(x: (M, 1, d), batch: (N, B)).

Two constructors:

* ``FunctionProblem`` — a per-example loss written in torch ops that broadcast over
  leading dimensions (toy problems). Oracles by vectorised autograd: one call for
  all leading indices, fast for 10⁵ trajectories of a few-dimensional problem.
* ``ModuleProblem`` — any ``nn.Module`` + loss + data tensors. The flat vector is
  split into views that play the module's parameters (``torch.func.functional_call``),
  or, for ``nn.Sequential`` stacks of standard layers, the Taylor-mode path of
  ``sdesam.jet``. On that path the N = prod(S) (trajectory, minibatch) pairs of a call
  are evaluated in blocks (parameters stacked, batched matrix products, one autograd
  graph per block, cut to a memory budget); other models loop over the pairs
  (``ModuleProblem(block=...)``, reported by ``config()``).
"""
from __future__ import annotations

import copy
import itertools
import math
from abc import ABC, abstractmethod
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ._checks import check_choice, check_int, check_nonnegative
from .jet import LowRankWeightTangent, SequentialJet
from .oracles import TaylorVectors, autograd_gradient, autograd_hvp, autograd_taylor, check_order
from .rules import PerturbationRule, get_rule

__all__ = ["Problem", "FunctionProblem", "ModuleProblem", "DEFAULT_BLOCK_MEMORY"]

#: default working-memory budget (bytes) of one block of batched oracles on the CPU
DEFAULT_BLOCK_MEMORY = 256 * 2**20


class Problem(ABC):
    """A minibatch loss over flat parameters. Subclasses implement ``loss``.

    Attributes:
        x0: initial parameters, shape (d,).
        n_train: number of training examples n.
        batch_size: minibatch size B (1 ≤ B ≤ n).
        name: label used in records.
    """

    def __init__(self, *, x0: Tensor, n_train: int, batch_size: int, name: str):
        if x0.dim() != 1:
            raise ValueError(f"x0 must be a flat vector of shape (d,), got shape {tuple(x0.shape)}")
        self.n_train = check_int("n_train", n_train, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size={batch_size} is larger than the number of training "
                             f"examples n_train={n_train}")
        self.x0 = x0.detach()
        self.name = name

    # -- basic properties -----------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.x0.numel()

    @property
    def dtype(self) -> torch.dtype:
        return self.x0.dtype

    @property
    def device(self) -> torch.device:
        return self.x0.device

    def config(self) -> dict:
        """JSON-serialisable description saved next to results."""
        return {"problem": self.name, "dim": self.dim, "n_train": self.n_train,
                "batch_size": self.batch_size, "dtype": str(self.dtype).replace("torch.", ""),
                "device": str(self.device)}

    # -- minibatches ----------------------------------------------------------------
    def sample_batches(self, num: int, generator: torch.Generator) -> Tensor:
        """``num`` i.i.d. minibatches, each B distinct indices uniform without replacement.

        Returns a LongTensor (num, B) on the problem's device. Each row is a uniformly
        random B-subset (in random order). When B² ≪ n, rows are drawn with
        replacement and rows with a repeat are redrawn (exact rejection sampling,
        O(B) per row); otherwise by a random permutation (O(n) per row).
        """
        num = check_int("num", num, 1)
        n, B = self.n_train, self.batch_size
        gdev = generator.device
        if B * B <= 2 * n:
            idx = torch.randint(n, (num, B), generator=generator, device=gdev)
            while True:
                s = idx.sort(dim=1).values
                bad = (s[:, 1:] == s[:, :-1]).any(dim=1)
                if not bad.any():
                    break
                nbad = int(bad.sum())
                idx[bad] = torch.randint(n, (nbad, B), generator=generator, device=gdev)
        else:
            idx = torch.rand(num, n, generator=generator, device=gdev).argsort(dim=1)[:, :B]
        return idx.to(self.device)

    def num_minibatches(self) -> int:
        """C(n, B): the number of distinct minibatches."""
        return math.comb(self.n_train, self.batch_size)

    def enumerate_batches(self, max_batches: int = 100_000, ordered: bool = False) -> Tensor:
        """All C(n, B) minibatches as a LongTensor (N, B), for exact expectations.

        Each B-subset is equally likely under uniform sampling without replacement,
        so E_γ is the plain mean over the rows. ``ordered=True`` enumerates the
        n!/(n − B)! ordered B-tuples instead (each equally likely; what a split of the
        minibatch into micro-batches by position needs, m-SAM). Raises ValueError when
        N > max_batches.
        """
        n, B = self.n_train, self.batch_size
        N = math.perm(n, B) if ordered else self.num_minibatches()
        if N > max_batches:
            what = f"n!/(n-B)! = {N} ordered" if ordered else f"C(n={n}, B={B}) = {N}"
            raise ValueError(f"cannot enumerate {what} minibatches (max_batches={max_batches}); "
                             "use Monte Carlo (K minibatches)")
        make = itertools.permutations if ordered else itertools.combinations
        rows = list(make(range(n), B))
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def with_batch_size(self, batch_size: int) -> "Problem":
        """The same problem (shared data and model) with minibatches of ``batch_size``
        examples — e.g. the micro-batches of m-SAM."""
        batch_size = check_int("batch_size", batch_size, 1)
        if batch_size > self.n_train:
            raise ValueError(f"batch_size={batch_size} is larger than the number of training "
                             f"examples n_train={self.n_train}")
        other = copy.copy(self)
        other.batch_size = batch_size
        other._on_batch_size_change()
        return other

    def _on_batch_size_change(self) -> None:  # noqa: B027 - a hook; most problems keep nothing per batch size
        """Hook: recompute what depends on the batch size (``ModuleProblem``'s block size)."""

    # -- oracles --------------------------------------------------------------------
    def _broadcast(self, x: Tensor, batch: Tensor):
        if x.shape[-1] != self.dim:
            raise ValueError(f"x has last dimension {x.shape[-1]}, expected d={self.dim}")
        if batch.dim() < 1 or batch.shape[-1] != self.batch_size:
            raise ValueError(f"batch must have shape (..., B={self.batch_size}), got {tuple(batch.shape)}")
        S = torch.broadcast_shapes(x.shape[:-1], batch.shape[:-1])
        return x.expand(*S, self.dim), batch.expand(*S, self.batch_size)

    @abstractmethod
    def loss(self, x: Tensor, batch: Tensor) -> Tensor:
        """f_γ(x): x (*Sx, d), batch (*Sb, B) → (*S,)."""

    def gradient(self, x: Tensor, batch: Tensor) -> Tensor:
        """g_γ = ∇f_γ(x), shape (*S, d)."""
        x, batch = self._broadcast(x, batch)
        return autograd_gradient(lambda z: self.loss(z, batch), x)

    def hvp(self, x: Tensor, batch: Tensor, v: Tensor) -> Tensor:
        """∇²f_γ(x) v, shape (*S, d); v broadcasts against x."""
        x, batch = self._broadcast(x, batch)
        return autograd_hvp(lambda z: self.loss(z, batch), x, v.expand_as(x))

    def hvp_at(self, x: Tensor, batch: Tensor) -> Callable[[Tensor], Tensor]:
        """v ↦ ∇²f_γ(x) v at a fixed point and minibatch, for many products (Lanczos,
        power iteration). Subclasses may reuse work across the products."""
        self._broadcast(x, batch)
        return lambda v: self.hvp(x, batch, v)

    def hvp_rows(self, x: Tensor, batch: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """(V, rows) ↦ (∇²f_{γ_i}(x_i) V_i)_{i ∈ rows} for N fixed pairs, x (N, d) and
        batch (N, B), V (n, d) and rows a LongTensor (n,): many products of many Hessians at
        once (``sdesam.curvature.batched_lanczos``). Subclasses may reuse work across calls."""
        if x.dim() != 2 or batch.dim() != 2 or x.shape[0] != batch.shape[0]:
            raise ValueError(f"hvp_rows takes x (N, d) and batch (N, B), got {tuple(x.shape)} and {tuple(batch.shape)}")
        self._broadcast(x, batch)
        return lambda V, rows: self.hvp(x[rows], batch[rows], V)

    def taylor(self, x: Tensor, batch: Tensor, rule: PerturbationRule | str = "sam",
               rho: float = 0.0, order: int = 2, eigvec: Tensor | None = None,
               components: bool = False, generator: torch.Generator | None = None) -> TaylorVectors:
        """g_γ, ε_γ = rule(g_γ) and the Taylor vector v^order (docs/math.md §2), each (*S, d).

        ``generator`` is passed to a rule that samples (``rule.needs_generator``)."""
        x, batch = self._broadcast(x, batch)
        return autograd_taylor(lambda z: self.loss(z, batch), x, get_rule(rule), rho,
                               order, eigvec, components, generator)

    # -- full data ------------------------------------------------------------------
    @abstractmethod
    def full_loss(self, x: Tensor) -> Tensor:
        """f(x), the mean training loss over all n examples; x (*S, d) → (*S,)."""

    def full_gradient(self, x: Tensor) -> Tensor:
        """∇f(x) over all n training examples, shape (*S, d)."""
        return autograd_gradient(self.full_loss, x)


class FunctionProblem(Problem):
    """A toy problem from a per-example loss written with broadcasting torch ops.

    Args:
        per_example_loss: ``ℓ(x, *examples) -> (*S, b)`` where x has shape (*S, d) and
            each examples tensor has shape (*S, b, ...) (or (b, ...), broadcasting):
            the loss of each of the b examples at each point. Write it so that it
            broadcasts, e.g. ``lambda x, a, y: torch.log(torch.cosh((a *
            x[..., None, :]).sum(-1) - y))``.
        data: tuple of tensors whose first dimension indexes the n examples.
        batch_size: B.
        x0: initial point, shape (d,).
        name: label.
    """

    def __init__(self, per_example_loss: Callable[..., Tensor], data: Sequence[Tensor],
                 batch_size: int, x0: Tensor, name: str = "function"):
        data = tuple(data)
        if not data:
            raise ValueError("data must hold at least one tensor of examples")
        n = data[0].shape[0]
        for i, t in enumerate(data):
            if t.shape[0] != n:
                raise ValueError(f"data[{i}] has {t.shape[0]} examples but data[0] has {n}")
        super().__init__(x0=x0, n_train=n, batch_size=batch_size, name=name)
        self.per_example_loss = per_example_loss
        self.data = tuple(t.to(x0.device) for t in data)

    def loss(self, x, batch):
        x, batch = self._broadcast(x, batch)
        return self.per_example_loss(x, *(t[batch] for t in self.data)).mean(-1)

    def full_loss(self, x):
        return self.per_example_loss(x, *self.data).mean(-1)


class ModuleProblem(Problem):
    """A problem from an ``nn.Module``, a loss and training (and test) tensors.

    Args:
        model: the network; its current parameters are x0 (flattened in
            ``named_parameters`` order, trainable ones only). The module is put in
            eval mode: f_γ must be a deterministic function of (x, γ), so dropout is
            off and BatchNorm uses its running statistics.
        loss: ``"cross_entropy"`` (integer targets), ``"mse"``, or a callable
            ``loss(outputs, targets) -> scalar mean``.
        inputs, targets: training data, first dimension n.
        batch_size: B.
        test: optional (inputs, targets) for test metrics.
        oracle: ``"auto"`` (Taylor-mode jet when the model is a supported Sequential,
            else autograd), ``"jet"`` or ``"autograd"``.
        dtype, device: where the parameters and data live (default: the model's).
        eval_chunk: examples per forward pass in full-data evaluations.
        block: how the minibatch oracles (``loss``, ``gradient``, ``hvp``, ``taylor``)
            treat the N = prod(S) (trajectory, minibatch) pairs of a call.
            ``"batched"``: on the jet path, blocks of pairs at once — each pair's
            parameters stacked along a leading dimension, every Linear layer one
            ``bmm``/``baddbmm`` (Conv2d one grouped convolution), one autograd graph per
            block; a call with a single pair takes the loop. ``"loop"``: one pair at a
            time. ``"auto"`` (default): batched on the jet path, else the loop (the
            generic autograd oracle). ``config()`` reports the choice.
        block_memory: working-memory budget in bytes of one block on the batched path;
            blocks are cut to ``block_size = block_memory // sample_bytes()`` pairs (the
            last one shorter). Default ``DEFAULT_BLOCK_MEMORY`` on the CPU, a quarter of
            the device's memory on CUDA. A given budget below one pair's estimate
            raises ValueError; with the default budget such pairs go one per block.
    """

    def __init__(self, model: nn.Module, loss, inputs: Tensor, targets: Tensor, batch_size: int,
                 *, test: tuple[Tensor, Tensor] | None = None, oracle: str = "auto",
                 dtype: torch.dtype | None = None, device=None, eval_chunk: int = 10_000,
                 name: str | None = None, block: str = "auto", block_memory: int | None = None):
        check_choice("oracle", oracle, {"auto", "jet", "autograd"})
        check_choice("block", block, {"auto", "batched", "loop"})
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"inputs has {inputs.shape[0]} examples but targets has {targets.shape[0]}")
        first = next(model.parameters())
        dtype = dtype or first.dtype
        device = torch.device(device) if device is not None else first.device
        model = model.to(device=device, dtype=dtype).eval()
        self.model = model
        self._names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self._shapes = [params[n].shape for n in self._names]
        self._sizes = [params[n].numel() for n in self._names]
        x0 = torch.cat([params[n].detach().reshape(-1) for n in self._names])
        super().__init__(x0=x0, n_train=inputs.shape[0], batch_size=batch_size,
                         name=name or type(model).__name__)
        self.eval_chunk = check_int("eval_chunk", eval_chunk, 1)
        self.inputs = self._to_device(inputs)
        self.targets = targets.to(device)
        self.test = None if test is None else (self._to_device(test[0]), test[1].to(device))

        self._loss_spec = loss
        if isinstance(loss, str):
            check_choice("loss", loss, {"cross_entropy", "mse"})
            self._loss_fn = {"cross_entropy": nn.functional.cross_entropy,
                             "mse": nn.functional.mse_loss}[loss]
        elif callable(loss):
            self._loss_fn = loss
        else:
            raise ValueError(f"loss must be 'cross_entropy', 'mse' or a callable, got loss={loss!r}")
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        jet_ok = isinstance(loss, str) and SequentialJet.supports(model, loss) and not frozen
        if oracle == "jet" and not jet_ok:
            raise ValueError("oracle='jet' needs an nn.Sequential of supported layers, a string loss and "
                             "every parameter trainable" + (f" (frozen: {frozen})" if frozen else "") +
                             "; use oracle='autograd'")
        self.oracle = "jet" if (oracle == "jet" or (oracle == "auto" and jet_ok)) else "autograd"
        self._jet = SequentialJet(model, loss) if self.oracle == "jet" else None
        if block == "batched" and self._jet is None:
            raise ValueError("block='batched' needs the jet oracle (an nn.Sequential of supported "
                             "layers and a string loss); use block='auto' or 'loop'")
        self.block = "batched" if (self._jet is not None and block != "loop") else "loop"
        self._block_spec = block
        if self._jet is not None:
            with torch.no_grad():
                acts = self._jet.activations(self.unflatten(self.x0), self.inputs[:1])
            self._act_numel = sum(a[0].numel() for a in acts)
        self.block_memory = self._default_block_memory() if block_memory is None else \
            check_int("block_memory", block_memory, 1)
        self._block_memory_arg = block_memory
        self._on_batch_size_change()

    def _on_batch_size_change(self) -> None:
        self.block_size = 1
        if self.block == "batched":
            per = self.sample_bytes()
            if self._block_memory_arg is not None and self.block_memory < per:
                raise ValueError(f"block_memory={self._block_memory_arg} bytes is smaller than the estimated "
                                 f"working memory of one (trajectory, minibatch) pair, {per} bytes "
                                 f"(d={self.dim}, B={self.batch_size}, {self.dtype})")
            # with the default budget, a pair larger than it is evaluated alone
            self.block_size = max(1, self.block_memory // per)
        self._rows = None

    def subproblem(self, indices: Tensor, batch_size: int | None = None, name: str | None = None) -> "ModuleProblem":
        """The same model and loss on the training examples ``indices`` only (no test data).

        E.g. the Hessian of the mean loss over a fixed subset S is
        ``p.subproblem(S, len(S)).hvp(x, torch.arange(len(S)), v)``.
        """
        indices = indices.to(self.device)
        return ModuleProblem(self.model, self._loss_spec, self.inputs[indices], self.targets[indices],
                             batch_size or self.batch_size, oracle=self.oracle, dtype=self.dtype,
                             device=self.device, eval_chunk=self.eval_chunk, name=name or f"{self.name}[subset]",
                             block=self._block_spec, block_memory=self._block_memory_arg)

    def _to_device(self, t: Tensor) -> Tensor:
        t = t.to(self.device)
        return t.to(self.dtype) if t.is_floating_point() else t

    def config(self):
        return {**super().config(), "oracle": self.oracle, "block": self.block,
                "block_memory": self.block_memory, "block_size": self.block_size}

    def _default_block_memory(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory // 4
        return DEFAULT_BLOCK_MEMORY

    def sample_bytes(self) -> int:
        """Estimated working memory of one (trajectory, minibatch) pair in a batched
        Taylor call, in bytes: 4 parameter-sized tensors (the pair's parameters, the
        layer gradients before they are written out, two transient products) and 16
        activation-sized ones per example (primal, two tangents, the activation's three
        derivatives and the reverse passes' gradients) — an upper estimate for the
        order-2 jet."""
        if self._jet is None:
            raise ValueError("sample_bytes is defined for the jet oracle only")
        item = torch.empty((), dtype=self.dtype).element_size()
        return item * (4 * self.dim + 16 * self.batch_size * self._act_numel)

    # -- flat vector <-> parameter views --------------------------------------------
    def unflatten(self, x: Tensor) -> dict[str, Tensor]:
        """Views of the flat vector x (d,) shaped like the module's parameters; for
        stacked rows x (N, d), views (N, *shape)."""
        lead = x.shape[:-1]
        return {n: t.view(*lead, *s)
                for n, t, s in zip(self._names, torch.split(x, self._sizes, dim=-1), self._shapes)}

    def _leaves(self, x: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        params = {n: t.requires_grad_(True) for n, t in self.unflatten(x.detach()).items()}
        return list(params.values()), params

    def _forward(self, params: dict, inputs: Tensor, stacked: bool = False) -> Tensor:
        if self._jet is not None:       # same function, without functional_call's overhead
            return self._jet.activations(params, inputs, stacked)[-1]
        return torch.func.functional_call(self.model, params, (inputs,))

    def _examples(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(inputs, targets) of the examples idx (B,) or (N, B), by ``index_select``."""
        flat = idx.reshape(-1)
        return (self.inputs.index_select(0, flat).view(*idx.shape, *self.inputs.shape[1:]),
                self.targets.index_select(0, flat).view(*idx.shape, *self.targets.shape[1:]))

    def _batch_loss(self, params: dict, idx: Tensor) -> Tensor:
        """f_γ for one minibatch idx (B,), or the (N,) losses of stacked parameters
        (N, *shape) and minibatches idx (N, B) (jet path only)."""
        if idx.dim() == 2:
            inputs, targets = self._examples(idx)
            return self._jet.loss(self._forward(params, inputs, True), targets, True)
        return self._loss_fn(self._forward(params, self.inputs[idx]), self.targets[idx])

    def _blocks(self, x: Tensor, batch: Tensor, *others: Tensor | None):
        """(S, N, blocks) for the N = prod(S) broadcast (trajectory, minibatch) pairs, in
        row-major order. ``blocks`` yields (rows, x, batch, *others): on the batched path
        blocks of at most ``block_size`` pairs (rows a slice, x (n, d), batch (n, B), each
        other (n, ·)), on the loop one pair each (rows an int, x (d,), batch (B,), others (·,)).

        ``others`` (or None) broadcast against S like x (tangents, eigenvectors). Only
        the rows of the current block are gathered: the broadcast (*S, d) is never formed.
        """
        x_b, _ = self._broadcast(x, batch)
        S = x_b.shape[:-1]
        N = math.prod(S)
        sources = []
        for t in (x, batch, *others):
            if t is None:
                sources.append(None)
                continue
            flat = t.reshape(-1, t.shape[-1])
            idx = torch.arange(flat.shape[0], device=t.device).view(t.shape[:-1]).broadcast_to(S).reshape(-1)
            sources.append((flat, idx))
        # a single pair takes the unstacked path (plain matrix products, as fast or faster)
        batched = self.block == "batched" and N > 1
        step = self.block_size if batched else 1

        def blocks():
            buf = self._row_buffer(min(N, step), x) if batched else None
            for s in range(0, N, step):
                if batched:
                    rows = slice(s, min(N, s + step))
                    xr = torch.index_select(sources[0][0], 0, sources[0][1][rows], out=buf[:rows.stop - s])
                    yield (rows, xr, *(None if src is None else src[0].index_select(0, src[1][rows])
                                       for src in sources[1:]))
                else:
                    yield (s, *(None if src is None else src[0][int(src[1][s])] for src in sources))
        return S, N, blocks()

    def _row_buffer(self, n: int, x: Tensor) -> Tensor:
        """A reused (≥ n, d) buffer for a block's parameter rows. Freshly allocated memory
        costs page faults on first touch (measured 3× a copy into reused memory for a
        (8, 623290) float32 block on this machine); the rows only live during one block."""
        buf = self._rows
        if buf is None or buf.shape[0] < n or buf.dtype != x.dtype or buf.device != x.device:
            buf = self._rows = torch.empty(n, self.dim, dtype=x.dtype, device=x.device)
        return buf

    # -- oracles --------------------------------------------------------------------
    def loss(self, x, batch):
        S, N, blocks = self._blocks(x, batch)
        out = x.new_empty(N)
        with torch.no_grad():
            for rows, xi, bi in blocks:
                out[rows] = self._batch_loss(self.unflatten(xi), bi)
        return out.reshape(S)

    def gradient(self, x, batch):
        S, N, blocks = self._blocks(x, batch)
        out = x.new_empty(N, self.dim)
        with torch.enable_grad():
            for rows, xi, bi in blocks:
                leaves, params = self._leaves(xi)
                grads = torch.autograd.grad(self._batch_loss(params, bi).sum(), leaves)
                self._flat(grads, out[rows])
        return out.reshape(*S, self.dim)

    def hvp(self, x, batch, v):
        if v.shape[-1] != self.dim:
            raise ValueError(f"v has last dimension {v.shape[-1]}, expected d={self.dim}")
        S, N, blocks = self._blocks(x, batch, v)
        out = x.new_empty(N, self.dim)
        for rows, xi, bi, vi in blocks:
            if self._jet is not None:
                self._jet_hvp(xi, bi, vi, out[rows])
            else:
                out[rows] = autograd_hvp(lambda z, b=bi: self._batch_loss(self.unflatten(z), b), xi, vi)
        return out.reshape(*S, self.dim)

    def hvp_at(self, x, batch):
        """As ``Problem.hvp_at``; on the jet path for one point x (d,) and one minibatch
        (B,) the primal forward pass is done once and kept for all products."""
        if self._jet is None or x.dim() != 1 or batch.dim() != 1:
            return super().hvp_at(x, batch)
        self._broadcast(x, batch)
        targets = self.targets[batch]
        with torch.enable_grad():
            leaves, params = self._leaves(x)
            _, acts = self._jet.forward(params, self.inputs[batch], targets)
        memo = {}

        def matvec(v: Tensor) -> Tensor:
            with torch.enable_grad():
                l1, _ = self._jet.directional(params, self.unflatten(v.detach()), acts, targets, 1, memo=memo)
                return self._flat(torch.autograd.grad(l1, leaves, retain_graph=True), x.new_empty(self.dim))
        return matvec

    def hvp_rows(self, x, batch):
        """As ``Problem.hvp_rows``; on the jet path, when the rows fit one block, the primal
        forward pass of the rows is done once and kept while the same rows are asked for
        (Lanczos in lockstep asks for the same rows until one of them stops)."""
        generic = super().hvp_rows(x, batch)
        if self._jet is None or self.block != "batched":
            return generic
        cache = {}

        def matvec(V: Tensor, rows: Tensor) -> Tensor:
            n = rows.numel()
            if n > self.block_size or n == 1:
                return generic(V, rows)
            key = tuple(rows.tolist())
            if cache.get("key") != key:
                cache.clear()
                inputs, targets = self._examples(batch[rows])
                with torch.enable_grad():
                    leaves, params = self._leaves(x[rows])
                    _, acts = self._jet.forward(params, inputs, targets, True)
                cache.update(key=key, leaves=leaves, params=params, acts=acts, targets=targets, memo={})
            with torch.enable_grad():
                l1, _ = self._jet.directional(cache["params"], self.unflatten(V.detach()), cache["acts"],
                                              cache["targets"], 1, stacked=True, memo=cache["memo"])
                grads = torch.autograd.grad(l1, cache["leaves"], retain_graph=True)
            return self._flat(grads, V.new_empty(n, self.dim))
        return matvec

    def taylor(self, x, batch, rule="sam", rho=0.0, order=2, eigvec=None, components=False, generator=None):
        """As ``Problem.taylor``; ``eigvec`` (d,) or per pair, broadcasting against S. A rule
        that samples draws from ``generator`` block by block, in row-major pair order."""
        order = check_order(order)
        rho = check_nonnegative("rho", rho)
        rule = get_rule(rule)
        if eigvec is not None and eigvec.shape[-1] != self.dim:
            raise ValueError(f"eigvec has last dimension {eigvec.shape[-1]}, expected d={self.dim}")
        shared_eigvec = eigvec is not None and eigvec.dim() == 1
        S, N, blocks = self._blocks(x, batch, None if shared_eigvec else eigvec)
        names = ["v", "g", "eps"] + (["h"] if components and order >= 1 else []) + \
                (["t"] if components and order == 2 else [])
        # results are written straight into their rows: every extra pass over a vector of
        # d entries costs a noticeable fraction of a gradient on the CPU
        out = {k: x.new_empty(N, self.dim) for k in names}
        for rows, xi, bi, ei in blocks:
            rows = {k: out[k][rows] for k in names}
            ei = eigvec if shared_eigvec else ei
            if self._jet is not None:
                self._jet_taylor(xi, bi, rule, rho, order, ei, rows, generator)
            else:
                tv = autograd_taylor(lambda z, b=bi: self._batch_loss(self.unflatten(z), b),
                                     xi, rule, rho, order, ei, components, generator)
                for k in names:
                    rows[k].copy_(getattr(tv, k))
        shaped = {k: v.reshape(*S, self.dim) for k, v in out.items()}
        return TaylorVectors(order=order, rho=rho, h=shaped.pop("h", None), t=shaped.pop("t", None), **shaped)

    @staticmethod
    def _flat(tensors, out: Tensor) -> Tensor:
        """Concatenate per-parameter tensors into the flat rows ``out``, (d,) or (N, d)."""
        lead = out.shape[:-1]
        return torch.cat([t.reshape(*lead, -1) for t in tensors], dim=-1, out=out)

    def _jet_hvp(self, x: Tensor, idx: Tensor, tangent: Tensor, out: Tensor) -> None:
        """out ← ∇²f_γ(x)·tangent by Taylor mode: ∇ of the directional derivative D_v f_γ
        (one forward, one tangent forward, one reverse pass), for one pair (x (d,),
        idx (B,)) or a stacked block (x (N, d), idx (N, B))."""
        inputs, targets = self._examples(idx)
        stacked = idx.dim() == 2
        with torch.enable_grad():
            leaves, params = self._leaves(x)
            _, acts = self._jet.forward(params, inputs, targets, stacked)
            l1, _ = self._jet.directional(params, self.unflatten(tangent.detach()), acts, targets, 1,
                                          stacked=stacked)
            self._flat(torch.autograd.grad(l1, leaves), out)

    def _jet_taylor(self, x, idx, rule, rho, order, eigvec, rows: dict, generator=None) -> None:
        """Taylor mode (``sdesam.jet``) for one pair (x (d,), idx (B,)) or a stacked block
        (x (N, d), idx (N, B)), written into ``rows`` (v, g, eps[, h, t]), each (d,) or (N, d)."""
        inputs, targets = self._examples(idx)
        stacked = idx.dim() == 2
        coefficient_form = getattr(rule, "has_coefficients", True)
        with torch.enable_grad():
            leaves, params = self._leaves(x)
            loss, acts = self._jet.forward(params, inputs, targets, stacked)
            # the gradients at the outputs of large Linear layers (free in this pass) give
            # their part of ε = a·g in factored form (``jet.LowRankWeightTangent``)
            factorable = self._jet.factorable_layers(idx.shape[-1]) if order > 0 and coefficient_form else []
            grads = torch.autograd.grad(loss, leaves + [acts[k + 1] for k in factorable],
                                        retain_graph=order > 0)
            g = self._flat(grads[:len(leaves)], rows["g"])
            factors = {}
            if coefficient_form:
                a, b = rule.coefficients_for(g, eigvec, generator)
                eps = rule.combine(g, a, b, eigvec, out=rows["eps"])
                if b is None:
                    scale = a.unsqueeze(-1) if stacked else a
                    factors = {k: LowRankWeightTangent(scale, delta, acts[k].detach())
                               for k, delta in zip(factorable, grads[len(leaves):])}
            else:       # a general rule (e.g. one that depends on x elementwise): ε as a plain direction
                eps = rows["eps"].copy_(rule(g, eigvec, x=x, generator=generator))
            if order == 0:
                rows["v"].copy_(g)
                return
            l1, l2 = self._jet.directional(params, self.unflatten(eps), acts, targets, order, factors,
                                           stacked)
            if "h" in rows:
                h = self._flat(torch.autograd.grad(l1, leaves, retain_graph=order > 1), rows["h"])
                torch.add(g, h, alpha=rho, out=rows["v"])
                if order == 2:
                    t = self._flat(torch.autograd.grad(l2, leaves), rows["t"])
                    rows["v"].add_(t, alpha=0.5 * rho * rho)
                return
            # v = ∇[f + ρ ℓ₁ + (ρ²/2) ℓ₂] in one reverse pass through the retained primal graph
            obj = loss + rho * l1 if order == 1 else loss + rho * l1 + (0.5 * rho * rho) * l2
            self._flat(torch.autograd.grad(obj, leaves), rows["v"])

    # -- full data ------------------------------------------------------------------
    def _chunks(self, split: str):
        if split == "train":
            X, Y = self.inputs, self.targets
        elif split == "test":
            if self.test is None:
                raise ValueError("this problem has no test data: pass test=(inputs, targets)")
            X, Y = self.test
        else:
            raise ValueError(f"split must be 'train' or 'test', got split={split!r}")
        n = X.shape[0]
        for s in range(0, n, self.eval_chunk):
            yield X[s:s + self.eval_chunk], Y[s:s + self.eval_chunk], n

    def evaluate(self, x: Tensor, split: str = "train") -> dict[str, float]:
        """Mean loss and (for classification) accuracy over a whole split, x (d,)."""
        params = self.unflatten(x.detach())
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for X, Y, _ in self._chunks(split):
                out = self._forward(params, X)
                total += float(self._loss_fn(out, Y)) * X.shape[0]
                if out.dim() == 2 and not Y.is_floating_point():
                    correct += int((out.argmax(-1) == Y).sum())
                count += X.shape[0]
        res = {"loss": total / count}
        if not self.targets.is_floating_point():
            res["accuracy"] = correct / count
        return res

    def full_loss(self, x):
        if x.dim() != 1:
            return torch.stack([self.full_loss(xi) for xi in x.reshape(-1, self.dim)]).reshape(x.shape[:-1])
        return torch.tensor(self.evaluate(x, "train")["loss"], dtype=self.dtype, device=self.device)

    def full_gradient(self, x):
        """∇f(x) over all training examples (chunked, example-weighted), x (d,) → (d,)."""
        if x.dim() != 1:
            return torch.stack([self.full_gradient(xi) for xi in x.reshape(-1, self.dim)]).reshape(x.shape)
        return self.full_loss_and_gradient(x)[1]

    def full_loss_and_gradient(self, x: Tensor) -> tuple[float, Tensor]:
        """(f(x), ∇f(x)) over all training examples in one chunked pass, x (d,)."""
        grad = torch.zeros_like(x)
        total = 0.0
        with torch.enable_grad():
            leaves, params = self._leaves(x)
            for X, Y, n in self._chunks("train"):
                loss = self._loss_fn(self._forward(params, X), Y) * (X.shape[0] / n)
                grads = torch.autograd.grad(loss, leaves)
                grad += torch.cat([g.reshape(-1) for g in grads])
                total += float(loss.detach())
        return total, grad
