"""Dense Hessians for tiny networks (test references, sanity checks)."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from .._checks import check_choice
from .operators import _batch_size

__all__ = ["dense_hessian"]


def _cast_floats(obj, dtype):
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cast_floats(o, dtype) for o in obj)
    return obj


def dense_hessian(model: nn.Module, loss_fn: Callable, batches, *,
                  param_names: list[str] | None = None, reduction: str = "mean",
                  dtype: torch.dtype = torch.float64) -> Tensor:
    """The d × d Hessian of the mean loss over ``batches``, formed densely.

    Independent of ``HessianOperator``: it differentiates a function of ONE flat
    parameter vector with ``torch.autograd.functional.hessian`` (through
    ``torch.func.functional_call`` on a copy of the model cast to ``dtype``, float64
    by default; floating inputs and targets are cast too). The batch weighting is the
    same as the operator's (n_b / N for ``reduction="mean"``). Costs O(d) backward
    passes and d² memory: tiny networks only.

    Args:
        model, loss_fn, batches: as for ``HessianOperator.from_module``; the model's mode
            is kept (use eval mode for a well-defined Hessian).
        param_names: names (from ``named_parameters``) of the parameters to
            differentiate, default those with ``requires_grad``, in ``parameters()``
            order — the same flattening order as the operator.
    """
    check_choice("reduction", reduction, {"mean", "sum"})
    net = copy.deepcopy(model).to(dtype)
    named = dict(net.named_parameters())
    if param_names is None:
        param_names = [n for n, p in model.named_parameters() if p.requires_grad]
    fixed = {n: p.detach() for n, p in named.items() if n not in param_names}
    shapes = [named[n].shape for n in param_names]
    sizes = [named[n].numel() for n in param_names]
    x0 = torch.cat([named[n].detach().reshape(-1) for n in param_names])
    batches = [(_cast_floats(b[0], dtype), _cast_floats(b[1], dtype)) for b in batches]
    ns = [_batch_size(inp) for inp, _ in batches]
    total = sum(ns)

    def f(x: Tensor) -> Tensor:
        pieces = torch.split(x, sizes)
        pdict = {n: t.view(s) for n, t, s in zip(param_names, pieces, shapes)}
        pdict.update(fixed)
        out = x.new_zeros(())
        for (inp, tgt), n in zip(batches, ns):
            args = tuple(inp) if isinstance(inp, (tuple, list)) else (inp,)
            loss = loss_fn(torch.func.functional_call(net, pdict, args), tgt)
            out = out + loss * (n / total if reduction == "mean" else 1.0 / total)
        return out

    return torch.autograd.functional.hessian(f, x0)
