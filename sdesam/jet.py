"""Taylor-mode (order ≤ 2) oracles for ``nn.Sequential`` stacks of standard layers.

Along the line s ↦ x + s ε the minibatch loss has the expansion
f_γ(x + sε) = ℓ₀ + s ℓ₁ + (s²/2) ℓ₂ + O(s³) with ℓ₁ = D_ε f_γ and ℓ₂ = εᵀ∇²f_γ ε.
This module propagates that second-order jet (value, first and second directional
derivative) layer by layer in one forward sweep, reusing the primal activations of
the pass that produced g_γ, and then takes ONE reverse pass of ρℓ₁ + (ρ²/2)ℓ₂ with
ε held fixed:

    ∇_x[ρ ℓ₁ + (ρ²/2) ℓ₂] = ρ ∇²f_γ ε + (ρ²/2) ∇³f_γ(ε, ε),

so v² = g + that (docs/math.md §2). Every quantity is exact (no finite differences); the
reverse pass is ordinary autograd over the jet formulas below.

Cost, measured on the 784-784-10 GeLU MLP, B = 128, real MNIST, 2 idle CPU cores,
torch 2.13 (``python -m benchmarks.oracles``, ten runs): one v² sample through
``ModuleProblem.taylor`` (g, ε and v² written as flat rows) costs 3.16–3.42 plain
gradients (median 3.29; a noisier batch read 3.18–3.76), against 6.3–6.8 for generic
reverse³ autograd (``sdesam.oracles``) and 14 for nested ``torch.func.jvp``. The floor
is about 2: the big matrix products are the primal forward, the gradient's backward,
the tangent forward and the final backward. Two measures brought it there from 3.73–3.75:

- the elementwise activation jets are fused into one autograd ``Function`` per order,
  with in-place and ``addcmul`` kernels (on a (128, 784) activation each elementwise
  kernel costs ~1% of a gradient): 3.37–3.54;
- for SAM-type rules the tangent of a wide Linear layer is applied in factored form
  (``LowRankWeightTangent``), a third of the dense product's cost.

Stacked mode (``stacked=True``): N independent copies at once, e.g. N (trajectory,
minibatch) pairs — every parameter gets a leading dimension N, the inputs are (N, B, ...),
each Linear layer is one ``bmm``/``baddbmm`` over the N weight matrices (computed as
(W xᵀ)ᵀ so that the reverse pass yields ∂W in W's layout), each Conv2d one grouped
convolution with N·groups groups, and the loss is the sum of the N per-copy means, so
that one reverse pass gives all N gradients (``ModuleProblem``'s batched oracles;
docs/batched_oracles.md).

Supported layers: Linear, Conv2d, Flatten, Identity, AvgPool2d, AdaptiveAvgPool2d and
the activations ReLU, GELU (exact erf form), Tanh, Sigmoid, Softplus, SiLU. Supported
losses: mean cross-entropy with integer targets, mean squared error. Anything else
makes ``SequentialJet.supports`` return False and the caller falls back to autograd.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SequentialJet", "LowRankWeightTangent"]

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


# ---------------------------------------------------------------------------------
# Elementwise activations: σ', σ'', σ''' as functions of the pre-activation z.
# Each returns a tuple (d1, d2, d3) truncated to ``upto`` entries.
# ---------------------------------------------------------------------------------
def _gelu_derivs(z: Tensor, upto: int):
    # in-place and fused (addcmul) where possible: on a (128, 784) activation each
    # elementwise kernel costs about as much as 1% of a gradient of the MNIST MLP
    zz = z * z
    phi = torch.exp(zz * -0.5).mul_(_INV_SQRT2PI)              # standard normal density
    d1 = torch.erf(z * _INV_SQRT2).add_(1.0).mul_(0.5).addcmul_(z, phi)   # Φ(z) + z φ(z)
    if upto == 1:
        return (d1,)
    d2 = torch.sub(2.0, zz).mul_(phi)                          # φ(z)(2 − z²)
    if upto == 2:
        return d1, d2
    return d1, d2, zz.sub_(4.0).mul_(z).mul_(phi)              # φ(z)(z³ − 4z)


def _relu_derivs(z: Tensor, upto: int):
    d1 = (z > 0).to(z.dtype)
    zero = torch.zeros_like(z)
    return (d1, zero, zero)[:upto]


def _tanh_derivs(z: Tensor, upto: int):
    y = torch.tanh(z)
    d1 = 1.0 - y * y
    d2 = -2.0 * y * d1
    return (d1, d2, -2.0 * d1 * d1 - 2.0 * y * d2)[:upto]


def _sigmoid_derivs(z: Tensor, upto: int):
    s = torch.sigmoid(z)
    d1 = s * (1.0 - s)
    d2 = d1 * (1.0 - 2.0 * s)
    return (d1, d2, d2 * (1.0 - 2.0 * s) - 2.0 * d1 * d1)[:upto]


def _silu_derivs(z: Tensor, upto: int):
    s = torch.sigmoid(z)
    a = s * (1.0 - s)
    d1 = s + z * a
    b = 2.0 + z * (1.0 - 2.0 * s)
    d2 = a * b
    d3 = a * (1.0 - 2.0 * s) * b + a * ((1.0 - 2.0 * s) - 2.0 * z * a)
    return (d1, d2, d3)[:upto]


def _softplus_derivs(beta: float) -> Callable:
    def derivs(z: Tensor, upto: int):
        d1 = torch.sigmoid(beta * z)
        a = d1 * (1.0 - d1)
        return (d1, beta * a, beta * beta * a * (1.0 - 2.0 * d1))[:upto]
    return derivs


def _activation_derivs(layer: nn.Module) -> Callable | None:
    if isinstance(layer, nn.GELU):
        return _gelu_derivs if layer.approximate == "none" else None
    if isinstance(layer, nn.ReLU):
        return _relu_derivs
    if isinstance(layer, nn.Tanh):
        return _tanh_derivs
    if isinstance(layer, nn.Sigmoid):
        return _sigmoid_derivs
    if isinstance(layer, nn.SiLU):
        return _silu_derivs
    if isinstance(layer, nn.Softplus):
        # torch's softplus switches to the identity above ``threshold``; the derivative
        # formulas below are those of the smooth function, identical there to float
        # precision for the default threshold of 20.
        return _softplus_derivs(float(layer.beta))
    return None


class _ElementwiseJet(torch.autograd.Function):
    """(z, z₁, z₂) ↦ (y₁, y₂) for y = σ(z): y₁ = σ'z₁, y₂ = σ''z₁² + σ'z₂.

    Fused so that the reverse pass costs a handful of elementwise kernels instead of
    autograd's op-by-op expansion of the derivative formulas. z₂ may be None (zero).
    """

    @staticmethod
    def forward(ctx, z, z1, z2, derivs):
        d1, d2, d3 = derivs(z, 3)
        y1 = d1 * z1
        y2 = (z1 * z1).mul_(d2)
        if z2 is not None:
            y2.addcmul_(d1, z2)
        ctx.save_for_backward(z1, z2, d1, d2, d3)
        return y1, y2

    @staticmethod
    def backward(ctx, gy1, gy2):
        z1, z2, d1, d2, d3 = ctx.saved_tensors
        d2gy2 = d2 * gy2
        # gz = (d2 gy1 + d3 z1 gy2) z1 + d2 z2 gy2
        gz = (d3 * z1).mul_(gy2).addcmul_(d2, gy1).mul_(z1)
        if z2 is not None:
            gz.addcmul_(d2gy2, z2)
        gz1 = (d2gy2 * z1).mul_(2.0).addcmul_(d1, gy1) if ctx.needs_input_grad[1] else None
        gz2 = d1 * gy2 if ctx.needs_input_grad[2] else None
        return gz, gz1, gz2, None


class _ElementwiseJet1(torch.autograd.Function):
    """First-order version: (z, z₁) ↦ y₁ = σ'(z) z₁ (the derivative formulas work in
    place, so autograd must not differentiate through them)."""

    @staticmethod
    def forward(ctx, z, z1, derivs):
        d1, d2 = derivs(z, 2)
        ctx.save_for_backward(z1, d1, d2)
        return d1 * z1

    @staticmethod
    def backward(ctx, gy1):
        z1, d1, d2 = ctx.saved_tensors
        gz = (d2 * z1).mul_(gy1)
        gz1 = d1 * gy1 if ctx.needs_input_grad[1] else None
        return gz, gz1, None


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


# ---------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------
class LowRankWeightTangent:
    """The weight tangent U = scale · δᵀA (out × in) of a Linear layer, kept factored.

    For rules of the form ε = a·g (SAM, USAM, Reverse-SAM) the weight part of ε is a
    times the layer's minibatch gradient, and for a Linear layer that gradient is
    g_W = δᵀA, with A (B, in) the layer's input and δ (B, out) the gradient of the
    minibatch loss with respect to its output. Then v ↦ vUᵀ = scale · (vAᵀ)δ costs
    B²(in + out) multiply-adds instead of B·in·out: a third for the 784 × 784 layer of
    the MNIST MLP at B = 128. ``scale``, ``delta`` and ``inputs`` are constants
    (detached): the jet holds ε fixed.
    """

    def __init__(self, scale: Tensor, delta: Tensor, inputs: Tensor):
        self.scale, self.delta, self.inputs = scale, delta, inputs

    def apply(self, v: Tensor) -> Tensor:
        """v Uᵀ for v of shape (B', in), or (N, B', in) for N stacked tangents (then
        ``scale`` is (N, 1, 1), ``delta`` (N, B, out) and ``inputs`` (N, B, in))."""
        return torch.matmul(torch.matmul(v, self.inputs.transpose(-1, -2)), self.delta).mul_(self.scale)


def _linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """``F.linear``, or its stacked form: x (N, B, in), w (N, out, in), b (N, out) →
    (N, B, out), one batched matrix product for the N weight matrices."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    # computed as (W xᵀ)ᵀ so that the reverse pass gives ∂W = (∂y)ᵀx directly in W's
    # (out, in) layout: x Wᵀ would give it as (in, out), transposed by a copy per block
    xt = x.transpose(1, 2)
    y = torch.bmm(w, xt) if b is None else torch.baddbmm(b.unsqueeze(2), w, xt)
    return y.transpose(1, 2)


class _Affine:
    """Linear or Conv2d: y = A(x; W) + b, bilinear in (x, W)."""

    def __init__(self, layer: nn.Module, names: list[str]):
        self.names = names  # parameter names in this layer, in named_parameters order
        self.is_linear = isinstance(layer, nn.Linear)
        if self.is_linear:
            self.op = _linear
            self.features = (layer.in_features, layer.out_features)
        else:
            def conv(x, w, b=None, _l=layer):
                if w.dim() == 4:
                    return F.conv2d(x, w, b, _l.stride, _l.padding, _l.dilation, _l.groups)
                # stacked: x (N, B, C, H, W), w (N, O, C/groups, kh, kw), b (N, O) as one
                # grouped convolution of B examples with N·C channels and N·groups groups
                n, nb = x.shape[:2]
                xs = x.transpose(0, 1).reshape(nb, n * x.shape[2], *x.shape[3:])
                y = F.conv2d(xs, w.reshape(-1, *w.shape[2:]), None if b is None else b.reshape(-1),
                             _l.stride, _l.padding, _l.dilation, _l.groups * n)
                return y.view(nb, n, -1, *y.shape[2:]).transpose(0, 1)
            self.op = conv
        self.has_bias = layer.bias is not None

    def primal(self, p: dict, a: Tensor, stacked: bool = False) -> Tensor:
        return self.op(a, p["weight"], p["bias"] if self.has_bias else None)

    def jet(self, p: dict, e: dict, a, a1, a2, order, stacked: bool = False,
            factor: LowRankWeightTangent | None = None):
        # d/ds (a(s), W + sU, b + sc): y₁ = A(a; U) + c + A(a₁; W),
        # y₂ = A(a₂; W) + 2 A(a₁; U)   (the weights are linear in s).
        W, c = p["weight"], (e["bias"] if self.has_bias else None)
        if factor is None:
            U = e["weight"]
            along_u = lambda v: self.op(v, U)          # noqa: E731
            y1 = self.op(a, U, c)
        else:
            along_u = factor.apply
            y1 = _add(along_u(a), None if c is None else (c.unsqueeze(1) if stacked else c))
        y1 = _add(y1, None if a1 is None else self.op(a1, W))
        if order < 2:
            return y1, None
        y2 = _add(None if a2 is None else self.op(a2, W),
                  None if a1 is None else 2.0 * along_u(a1))
        return y1, y2


class _Linear:
    """A parameter-free linear map (Flatten, Identity, average pooling)."""

    names: list[str] = []

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def _map(self, a: Tensor, stacked: bool) -> Tensor:
        if not stacked:
            return self.layer(a)
        # (N, B, ...): the layer sees N·B examples
        y = self.layer(a.flatten(0, 1))
        return y.unflatten(0, a.shape[:2])

    def primal(self, p, a, stacked=False):
        return self._map(a, stacked)

    def jet(self, p, e, a, a1, a2, order, stacked=False):
        return ((None if a1 is None else self._map(a1, stacked)),
                (None if a2 is None or order < 2 else self._map(a2, stacked)))


class _Activation:
    names: list[str] = []

    def __init__(self, layer: nn.Module, derivs: Callable):
        self.layer, self.derivs = layer, derivs

    def primal(self, p, a, stacked=False):
        return self.layer(a)

    def jet(self, p, e, a, a1, a2, order, stacked=False, memo: list | None = None):
        if a1 is None:          # no tangent reaches this layer: the jet is zero
            return None, None
        derivs = self.derivs
        if memo is not None:    # the derivatives at these primal inputs, kept by the caller
            need = 2 if order < 2 else 3
            if len(memo) < need:
                memo[:] = self.derivs(a, need)
            derivs = lambda z, upto: tuple(memo[:upto])     # noqa: E731
        if order < 2:
            return _ElementwiseJet1.apply(a, a1, derivs), None
        return _ElementwiseJet.apply(a, a1, a2, derivs)


_LINEAR_MAPS = (nn.Flatten, nn.Identity, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


# ---------------------------------------------------------------------------------
# Losses (mean over the minibatch). With ``stacked`` the outputs are (N, B, ...) for N
# independent minibatches and each function returns the N per-minibatch means.
# ---------------------------------------------------------------------------------
def _mean(t: Tensor, stacked: bool) -> Tensor:
    return t.flatten(1).mean(1) if stacked else t.mean()


def _cross_entropy(o, y, stacked=False):
    if not stacked:
        return F.cross_entropy(o, y)
    return F.cross_entropy(o.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)


def _mse(o, y, stacked=False):
    return F.mse_loss(o, y) if not stacked else _mean(F.mse_loss(o, y, reduction="none"), True)


def _cross_entropy_jet(o, o1, o2, y, order, stacked=False):
    p = torch.softmax(o, dim=-1)
    po1 = (p * o1).sum(-1)
    y = y.unsqueeze(-1)
    l1 = _mean(po1 - o1.gather(-1, y).squeeze(-1), stacked)
    if order < 2:
        return l1, None
    l2 = (p * o1 * o1).sum(-1) - po1 * po1
    if o2 is not None:
        l2 = l2 + (p * o2).sum(-1) - o2.gather(-1, y).squeeze(-1)
    return l1, _mean(l2, stacked)


def _mse_jet(o, o1, o2, y, order, stacked=False):
    r = o - y
    l1 = _mean(2.0 * r * o1, stacked)
    if order < 2:
        return l1, None
    l2 = 2.0 * o1 * o1
    if o2 is not None:
        l2 = l2 + 2.0 * r * o2
    return l1, _mean(l2, stacked)


_LOSSES = {
    "cross_entropy": (_cross_entropy, _cross_entropy_jet),
    "mse": (_mse, _mse_jet),
}


class SequentialJet:
    """Second-order Taylor-mode propagation through an ``nn.Sequential``.

    Args:
        model: the Sequential; only its structure is used (parameters come as a dict
            name → tensor, e.g. views into a flat vector).
        loss: ``"cross_entropy"`` (integer targets) or ``"mse"``; mean over the batch.
    """

    def __init__(self, model: nn.Sequential, loss: str):
        if not self.supports(model, loss):
            raise ValueError(f"SequentialJet does not support this model/loss ({loss!r}); "
                             "use the autograd oracles instead")
        self._loss, self._loss_jet = _LOSSES[loss]
        self.layers = []
        for name, layer in model.named_children():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                self.layers.append(_Affine(layer, [f"{name}.{p}" for p, _ in layer.named_parameters()]))
            elif isinstance(layer, _LINEAR_MAPS):
                self.layers.append(_Linear(layer))
            else:
                self.layers.append(_Activation(layer, _activation_derivs(layer)))

    @staticmethod
    def supports(model: nn.Module, loss) -> bool:
        """True when every child is a supported layer and the loss is supported."""
        if not isinstance(model, nn.Sequential) or loss not in _LOSSES:
            return False
        for layer in model.children():
            if isinstance(layer, nn.Linear):
                continue
            if isinstance(layer, nn.Conv2d):
                if layer.padding_mode != "zeros":
                    return False
                continue
            if isinstance(layer, _LINEAR_MAPS) or _activation_derivs(layer) is not None:
                continue
            return False
        return True

    @staticmethod
    def _layer_params(layer, params: dict) -> dict:
        return {n.rsplit(".", 1)[1]: params[n] for n in layer.names}

    def activations(self, params: dict, inputs: Tensor, stacked: bool = False) -> list[Tensor]:
        """Primal pass: [inputs, output of layer 1, …, model output].

        ``stacked``: N independent copies at once — every parameter has a leading
        dimension N (one parameter set per copy) and ``inputs`` is (N, B, ...)."""
        acts = [inputs]
        for layer in self.layers:
            acts.append(layer.primal(self._layer_params(layer, params), acts[-1], stacked))
        return acts

    def loss(self, outputs: Tensor, targets: Tensor, stacked: bool = False) -> Tensor:
        """Mean loss over the minibatch; (N,) per-copy means when ``stacked``."""
        return self._loss(outputs, targets, stacked)

    def forward(self, params: dict, inputs: Tensor, targets: Tensor, stacked: bool = False):
        """Primal pass. Returns (mean loss, activations) with the autograd graph kept;
        when ``stacked`` the loss is the sum of the N per-copy mean losses, so its
        gradient with respect to the stacked parameters is the stack of the N gradients."""
        acts = self.activations(params, inputs, stacked)
        loss = self._loss(acts[-1], targets, stacked)
        return (loss.sum() if stacked else loss), acts

    def input_linear(self) -> int | None:
        """Index of the first layer that has parameters when it is a Linear layer and every
        layer before it is parameter-free (its input is then a fixed function of the data),
        else None."""
        for k, layer in enumerate(self.layers):
            if layer.names:
                return k if isinstance(layer, _Affine) and layer.is_linear else None
        return None

    def tail(self, start: int) -> "SequentialJet":
        """The same jet from layer ``start`` on (its inputs are layer ``start``'s inputs)."""
        tail = copy.copy(self)
        tail.layers = self.layers[start:]
        return tail

    def factorable_layers(self, batch_size: int) -> list[int]:
        """Indices of the Linear layers whose weight tangent is cheaper factored
        (``LowRankWeightTangent``) at this batch size: B·(in + out) < in·out."""
        return [k for k, layer in enumerate(self.layers)
                if isinstance(layer, _Affine) and layer.is_linear
                and batch_size * sum(layer.features) < layer.features[0] * layer.features[1]]

    def directional(self, params: dict, tangents: dict, acts: list, targets: Tensor, order: int,
                    factors: dict[int, LowRankWeightTangent] | None = None, stacked: bool = False,
                    memo: dict | None = None):
        """(ℓ₁, ℓ₂): first and second derivative of the loss along the tangent.

        ``acts`` are the primal activations from ``forward`` (reused, not recomputed);
        ℓ₂ is None when order < 2. Both are differentiable with respect to ``params``.
        ``factors`` maps a layer index (see ``factorable_layers``) to the factored form
        of that layer's weight tangent, used instead of ``tangents``' dense weight.
        With ``stacked`` (as in ``forward``) ℓ₁ and ℓ₂ are sums over the N copies.
        ``memo``: a dict the caller keeps with ``acts`` across calls (e.g. the products of
        a Lanczos run); the activations' derivatives at the primal inputs are stored in
        it on the first call and reused after.
        """
        factors = factors or {}
        a1 = a2 = None
        for k, (layer, a) in enumerate(zip(self.layers, acts[:-1])):
            extra = {"factor": factors[k]} if k in factors else {}
            if memo is not None and isinstance(layer, _Activation):
                extra["memo"] = memo.setdefault(k, [])
            a1, a2 = layer.jet(self._layer_params(layer, params), self._layer_params(layer, tangents),
                               a, a1, a2, order, stacked, **extra)
        if a1 is None:
            raise ValueError("the model has no trainable layer for the tangent to enter")
        l1, l2 = self._loss_jet(acts[-1], a1, a2, targets, order, stacked)
        if stacked:
            l1, l2 = l1.sum(), (None if l2 is None else l2.sum())
        return l1, l2
