"""Minibatch Hessians in the span of the first layer's inputs: an exact change of coordinates.

Let the network's first layer with parameters be Linear, y = W a + b with W (out, in),
and let its input a be a fixed function of the data (every layer before it is
parameter-free). Then f_γ depends on W only through the products W a_i of the examples
i ∈ γ, and for every direction V:

* H_γ V depends on V's W-block only through V_W U_γ U_γᵀ, and
* the W-block of H_γ V lies in {M U_γᵀ : M (out, r)},

where U_γ (in, r) is an orthonormal basis of span{a_i : i ∈ γ}, r = B (a Householder QR
of the B inputs: its B columns span the inputs even when they are linearly dependent).
The coordinates z = (V_W U_γ, the other blocks) map that subspace isometrically onto
R^{d̃}, d̃ = d − out·(in − r), and in them H_γ is the Hessian of the *same network* with
inputs c_i = U_γᵀ a_i and first weight W U_γ (out, r) — because W a_i = (W U_γ) c_i
exactly. The remaining out·(in − r) directions are eigenvectors of H_γ with eigenvalue 0.

So the top eigenpairs of H_γ are found in d̃ coordinates with products through an
r-input first layer: on the 784-784-10 MLP at B = 128, d̃ = 108,986 instead of
d = 623,290, and the first layer's products (the bulk of a Hessian-vector product) are
784/128 ≈ 6× smaller (``python -m benchmarks.causal`` measures both). Nothing is
approximated: a vector's W-block outside span(U_γ) is in the null space of H_γ.
Useful when B < in (else r = in and nothing is gained).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .problem import ModuleProblem

__all__ = ["InputSpanRows"]


class InputSpanRows:
    """N minibatch Hessians H_{γ_i}(x_i) in input-span coordinates (module docstring).

    Args:
        problem: a ``ModuleProblem`` on the batched jet path whose network qualifies
            (``applies``).
        x: points (N, d); batch: minibatches (N, B) with B < the first layer's inputs.

    Attributes:
        dim: d̃, the reduced dimension.
        null_dim: out·(in − B), the zero eigenvalues of each H_γ outside the span.
    """

    def __init__(self, problem: ModuleProblem, x: Tensor, batch: Tensor):
        if not self.applies(problem, batch.shape[-1]):
            raise ValueError("input-span coordinates need a ModuleProblem on the batched jet path whose first "
                             "layer with parameters is a Linear layer with more inputs than the "
                             f"batch size {batch.shape[-1]}")
        if x.dim() != 2 or batch.dim() != 2 or x.shape[0] != batch.shape[0]:
            raise ValueError(f"InputSpanRows takes x (N, d) and batch (N, B), got {tuple(x.shape)} "
                             f"and {tuple(batch.shape)}")
        problem._broadcast(x, batch)
        self.problem = problem
        k = problem._jet.input_linear()
        self._jet = problem._jet.tail(k)
        names = problem._names
        self._w = names.index(problem._jet.layers[k].names[0])          # the first weight's flat block
        out, n_in = problem._shapes[self._w]
        B = batch.shape[-1]
        self._full_sizes = list(problem._sizes)
        self._shapes = list(problem._shapes)
        self._shapes[self._w] = torch.Size([out, B])
        self._sizes = [s.numel() for s in self._shapes]
        self.dim = sum(self._sizes)
        self.null_dim = out * (n_in - B)
        self._out, self._in = out, n_in
        inputs, self._targets = problem._examples(batch)
        with torch.no_grad():
            for layer in problem._jet.layers[:k]:                       # parameter-free
                inputs = layer.primal({}, inputs, True)
            if inputs.dim() != 3 or inputs.shape[-1] != n_in:
                raise ValueError(f"the first Linear layer's inputs have shape {tuple(inputs.shape)}, expected "
                                 f"(N, B, {n_in})")
            self._basis, _ = torch.linalg.qr(inputs.transpose(1, 2))      # U_γ (N, in, B), orthonormal
            self._coords = torch.bmm(inputs, self._basis)                 # c_i = U_γᵀ a_i, (N, B, B)
            self._x = self.reduce(x)
        self._cache: dict = {}

    @staticmethod
    def applies(problem, batch_size: int) -> bool:
        """Whether ``problem`` has input-span coordinates at this batch size."""
        if not isinstance(problem, ModuleProblem) or problem._jet is None or problem.block != "batched":
            return False
        k = problem._jet.input_linear()
        if k is None:
            return False
        weight = problem._jet.layers[k].names[0]            # the jet path has every parameter trainable
        return batch_size < problem._shapes[problem._names.index(weight)][1]

    # -- coordinates -----------------------------------------------------------------
    def _map(self, V: Tensor, sizes, shape_in, basis) -> Tensor:
        parts = list(torch.split(V, sizes, dim=-1))
        n = V.shape[0]
        parts[self._w] = torch.bmm(parts[self._w].reshape(n, *shape_in), basis).reshape(n, -1)
        return torch.cat(parts, dim=-1)

    def reduce(self, V: Tensor, rows: Tensor | None = None) -> Tensor:
        """Coordinates (n, d̃) of V (n, d) for the minibatches ``rows`` (default all N): the
        orthogonal projection onto the span followed by the isometry."""
        basis = self._basis if rows is None else self._basis[rows]
        return self._map(V, self._full_sizes, (self._out, self._in), basis)

    def expand(self, Z: Tensor, rows: Tensor | None = None) -> Tensor:
        """The vectors (n, d) with coordinates Z (n, d̃) (the inverse of ``reduce`` on the span)."""
        basis = self._basis if rows is None else self._basis[rows]
        return self._map(Z, self._sizes, (self._out, self._basis.shape[-1]), basis.transpose(1, 2))

    def _unflatten(self, z: Tensor) -> dict[str, Tensor]:
        lead = z.shape[:-1]
        return {n: t.view(*lead, *s)
                for n, t, s in zip(self.problem._names, torch.split(z, self._sizes, dim=-1), self._shapes)}

    # -- products --------------------------------------------------------------------
    def _primal(self, rows: Tensor):
        key = tuple(rows.tolist())
        if key not in self._cache:
            with torch.enable_grad():
                params = {n: t.requires_grad_(True) for n, t in self._unflatten(self._x[rows].clone()).items()}
                _, acts = self._jet.forward(params, self._coords[rows], self._targets[rows], True)
            self._cache[key] = (list(params.values()), params, acts, self._targets[rows], {})
        return self._cache[key]

    def matvec(self, Z: Tensor, rows: Tensor) -> Tensor:
        """(H̃_{γ_i} Z_i)_{i ∈ rows}: Z (n, d̃), rows a LongTensor (n,) into 0..N−1. The
        primal pass of a set of rows is kept while the same rows are asked for (Lanczos in
        lockstep asks for the same rows until one of them stops); blocks of at most the
        problem's ``block_size`` rows."""
        if Z.shape != (rows.numel(), self.dim):
            raise ValueError(f"Z must have shape ({rows.numel()}, {self.dim}), got {tuple(Z.shape)}")
        rows = rows.to(self._x.device)
        keys = set()
        out = Z.new_empty(Z.shape)
        size = self.problem.block_size
        for start in range(0, rows.numel(), size):
            block = rows[start:start + size]
            keys.add(tuple(block.tolist()))
            leaves, params, acts, targets, memo = self._primal(block)
            with torch.enable_grad():
                l1, _ = self._jet.directional(params, self._unflatten(Z[start:start + size].detach()), acts,
                                              targets, 1, stacked=True, memo=memo)
                grads = torch.autograd.grad(l1, leaves, retain_graph=True)
            self.problem._flat(grads, out[start:start + size])
        for key in [k for k in self._cache if k not in keys]:
            del self._cache[key]
        return out

    def eigen_derivatives(self, Z: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(H̃_γ Z (N, d̃) in span coordinates, ∇³f_γ[E, E] (N, d)) for the directions
        E = expand(Z) given by their span coordinates Z (N, d̃) — at a top eigenvector v₁
        the second is ∇λ₁(H_γ) — from one order-2 jet per block in span coordinates
        (exact: f_γ(x) = f̃_γ(reduce(x)) for every x, so the gradient of Eᵀ H_γ(x) E is
        the expansion of the reduced one).
        Rows where the bool mask ``keep`` (N,) is False get zeros: the derivatives of a
        direction in the null space (``top_pairs``' v₁ when θ₁ ≤ 0)."""
        if Z.shape != (self._x.shape[0], self.dim):
            raise ValueError(f"Z must have shape ({self._x.shape[0]}, {self.dim}), got {tuple(Z.shape)}")
        if keep is not None:
            Z = Z * keep.to(Z.device, Z.dtype)[:, None]
        h, t = torch.empty_like(Z), torch.empty_like(Z)
        rows = torch.arange(Z.shape[0], device=Z.device)
        size = self.problem.block_size
        for start in range(0, rows.numel(), size):
            block = slice(start, start + size)
            leaves, params, acts, targets, memo = self._primal(rows[block])
            with torch.enable_grad():
                l1, l2 = self._jet.directional(params, self._unflatten(Z[block].detach()), acts, targets, 2,
                                               stacked=True, memo=memo)
                self.problem._flat(torch.autograd.grad(l1, leaves, retain_graph=True), h[block])
                self.problem._flat(torch.autograd.grad(l2, leaves, retain_graph=True), t[block])
        self._cache.clear()
        return h, self.expand(t)

    # -- eigenpairs back in the full space -------------------------------------------
    def top_pairs(self, vectors: Tensor, lam1: Tensor, lam2: Tensor, residual: Tensor,
                  generator: torch.Generator | None = None, derivatives: bool = False):
        """(λ₁, v₁ (N, d), λ₂, residual, ∇λ₁ (N, d) or None) of H_γ from the top-2 Ritz pairs
        in the span: vectors (N, d̃), lam1/lam2/residual (N,). H_γ's spectrum is the span's
        plus ``null_dim`` ≥ 1 zeros, so λ₂ = max(θ₂, 0); a row whose θ₁ ≤ 0 has λ₁ = 0, v₁ a
        unit vector of the null space (a Gaussian W-block minus its projection on the span),
        residual 0, ∇λ₁ = 0, and λ₂ = 0 (or θ₁ when the null space is one-dimensional).
        ``derivatives``: ∇λ₁ = ∇³f_γ[v₁, v₁] from ``eigen_derivatives``, and the residual
        recomputed from its product H̃v₁ (in span coordinates: an isometry)."""
        positive = lam1 > 0
        t = None
        if derivatives:
            h, t = self.eigen_derivatives(vectors, positive)
            lam = lam1.to(vectors.device, vectors.dtype)[:, None]
            residual = torch.linalg.vector_norm(h - lam * vectors, dim=-1).double().cpu()
        v = self.expand(vectors)
        zero = torch.zeros_like(lam1)
        lam2 = torch.maximum(lam2, zero)
        nonpositive = ~positive
        if bool(nonpositive.any()):
            rows = torch.nonzero(nonpositive.to(v.device)).flatten()
            gdev = generator.device if generator is not None else v.device
            w = torch.randn(rows.numel(), self._out, self._in, generator=generator, dtype=v.dtype,
                            device=gdev).to(v.device)
            basis = self._basis[rows]
            w = w - torch.bmm(torch.bmm(w, basis), basis.transpose(1, 2))
            null = torch.zeros(rows.numel(), v.shape[-1], dtype=v.dtype, device=v.device)
            offset = sum(self._full_sizes[:self._w])
            null[:, offset:offset + self._out * self._in] = w.reshape(rows.numel(), -1)
            v[rows] = null / torch.linalg.vector_norm(null, dim=-1, keepdim=True)
            lam2 = torch.where(nonpositive, zero if self.null_dim > 1 else lam1, lam2)
            lam1 = torch.where(nonpositive, zero, lam1)
            residual = torch.where(nonpositive, torch.zeros_like(residual), residual)
        return lam1, v, lam2, residual, t
