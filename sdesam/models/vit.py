"""Vision Transformer (Dosovitskiy et al. 2020) for the paper's Table 2 (ViT-B/16 fine-tuning).

``VisionTransformer`` is a self-written ViT whose module tree — and therefore every
``state_dict`` key and tensor shape — is that of ``torchvision.models.VisionTransformer``:

    class_token                                         (1, 1, D)
    conv_proj.weight / .bias                            (D, C, P, P) / (D,)
    encoder.pos_embedding                               (1, 1 + (S/P)², D)
    encoder.layers.encoder_layer_{i}.ln_1.weight/.bias  (D,)
    encoder.layers.encoder_layer_{i}.self_attention.in_proj_weight   (3D, D)  [q; k; v]
    encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias     (3D,)
    encoder.layers.encoder_layer_{i}.self_attention.out_proj.weight/.bias  (D, D) / (D,)
    encoder.layers.encoder_layer_{i}.ln_2.weight/.bias  (D,)
    encoder.layers.encoder_layer_{i}.mlp.0.weight/.bias (M, D) / (M,)
    encoder.layers.encoder_layer_{i}.mlp.3.weight/.bias (D, M) / (D,)
    encoder.ln.weight / .bias                           (D,)
    heads.head.weight / .bias                           (num_classes, D) / (num_classes,)

(torchvision ``torchvision/models/vision_transformer.py``; checkpoints written before
torchvision PR 6053, such as ``vit_b_16-c867db91.pth``, name the MLP layers
``mlp.linear_1`` / ``mlp.linear_2``: ``convert_torchvision_state_dict`` maps both.)
The forward computation is the same too: pre-LayerNorm blocks (eps 1e-6), exact GeLU,
class token first, logits from the class token after the final LayerNorm.

Why not ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer``: on CPU (torch 2.13)
they run ``scaled_dot_product_attention``'s flash kernel, which has no double backward,
so Hessian-vector products (power iteration, Eigen-SAM) fail. ``SelfAttention`` here
writes the attention out (matmul, softmax) and supports any order of autograd and
forward-mode AD; ``fused=True`` switches to ``F.scaled_dot_product_attention`` for
first-order-only speed. A test checks it equals ``nn.MultiheadAttention``.

Inputs must already be ``image_size``×``image_size``: resizing CIFAR 32→224 (and the
ImageNet normalisation the pretrained weights expect, mean (0.485, 0.456, 0.406), std
(0.229, 0.224, 0.225), bilinear resize) is the data pipeline's job.

torchvision is optional: ``build_vit_b16(..., backend="torchvision")`` imports it lazily
and raises ``ImportError`` with an explanation when it is missing; nothing else needs it.
"""
from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_int, check_nonnegative

__all__ = [
    "SelfAttention", "EncoderBlock", "Encoder", "VisionTransformer",
    "VIT_B16", "VIT_TINY", "vit_b16", "vit_tiny", "build_vit_b16",
    "convert_torchvision_state_dict", "interpolate_pos_embedding",
    "load_state_dict_file", "load_torchvision_weights", "LoadReport",
]

#: ViT-B/16 hyper-parameters (torchvision ``vit_b_16``); 86,567,656 parameters at 1000 classes.
VIT_B16 = dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
#: a small ViT for CIFAR-sized inputs on a CPU: 32×32, 4×4 patches (65 tokens).
VIT_TINY = dict(image_size=32, patch_size=4, num_layers=6, num_heads=3, hidden_dim=192,
                mlp_dim=768)

_LN_EPS = 1e-6


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameters and semantics.

    Input (B, N, D) -> output (B, N, D). Parameters: ``in_proj_weight`` (3D, D) packing the
    query, key and value projections in that order, ``in_proj_bias`` (3D,), ``out_proj``
    (Linear D -> D). Queries are scaled by 1/√(D/heads); dropout acts on the attention
    weights in training mode. ``fused=True`` uses ``F.scaled_dot_product_attention``
    (faster, but its CPU flash kernel cannot be differentiated twice).
    """

    def __init__(self, hidden_dim: int, num_heads: int, dropout: float = 0.0,
                 fused: bool = False):
        super().__init__()
        if hidden_dim % num_heads != 0:
            raise ValueError(f"hidden_dim must be divisible by num_heads, got "
                             f"hidden_dim={hidden_dim}, num_heads={num_heads}")
        self.hidden_dim, self.num_heads, self.dropout, self.fused = (
            hidden_dim, num_heads, dropout, fused)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * hidden_dim, hidden_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * hidden_dim))
        self.out_proj = nn.Linear(hidden_dim, hidden_dim)
        # nn.MultiheadAttention's initialisation
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)      # (B, N, 3D)
        qkv = qkv.reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)    # (3, B, H, N, d/H)
        q, k, v = qkv[0], qkv[1], qkv[2]
        p = self.dropout if self.training else 0.0
        if self.fused:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        else:
            attn = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)          # (B, H, N, N)
            attn = attn.softmax(dim=-1)
            if p > 0:
                attn = F.dropout(attn, p=p)
            out = attn @ v                                               # (B, H, N, d/H)
        out = out.transpose(1, 2).reshape(b, n, d)                       # (B, N, D)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return (f"hidden_dim={self.hidden_dim}, num_heads={self.num_heads}, "
                f"dropout={self.dropout}, fused={self.fused}")


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then + MLP(LN(·)). (B, N, D) -> (B, N, D)."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float = 0.0,
                 attention_dropout: float = 0.0, fused: bool = False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim, eps=_LN_EPS)
        self.self_attention = SelfAttention(hidden_dim, num_heads, attention_dropout, fused)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(hidden_dim, eps=_LN_EPS)
        # indices 0..4 as torchvision's MLPBlock (Linear, GELU, Dropout, Linear, Dropout)
        self.mlp = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mlp_dim, hidden_dim), nn.Dropout(dropout))
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.dropout(self.self_attention(self.ln_1(x)))
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    """Adds ``pos_embedding`` (1, N, D), runs the blocks, final LayerNorm. (B, N, D) -> (B, N, D)."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int,
                 mlp_dim: int, dropout: float = 0.0, attention_dropout: float = 0.0,
                 fused: bool = False):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}",
             EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, fused))
            for i in range(num_layers)))
        self.ln = nn.LayerNorm(hidden_dim, eps=_LN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """ViT classifier. Input (B, in_channels, image_size, image_size) -> logits (B, num_classes).

    Args:
        image_size: input height = width; must be divisible by ``patch_size``.
        patch_size: P; the image becomes (image_size/P)² tokens plus a class token.
        num_layers, num_heads, hidden_dim (D), mlp_dim (M): transformer sizes.
        num_classes: number of logits.
        in_channels: image channels (3 for pretrained weights).
        dropout, attention_dropout: dropout probabilities (0 by default, as torchvision).
        fused: use ``F.scaled_dot_product_attention`` (no double backward on CPU).

    Initialisation follows torchvision: patch projection truncated-normal with std
    √(1/fan_in), positional embedding N(0, 0.02²), class token 0, MLP Xavier-uniform with
    N(0, 1e-12) biases, attention as ``nn.MultiheadAttention``, and a zero head.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12,
                 num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072,
                 num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0,
                 attention_dropout: float = 0.0, fused: bool = False):
        super().__init__()
        image_size = check_int("image_size", image_size)
        patch_size = check_int("patch_size", patch_size)
        if image_size % patch_size != 0:
            raise ValueError(f"image_size must be divisible by patch_size, got "
                             f"image_size={image_size}, patch_size={patch_size}")
        num_layers = check_int("num_layers", num_layers)
        num_heads = check_int("num_heads", num_heads)
        hidden_dim = check_int("hidden_dim", hidden_dim)
        mlp_dim = check_int("mlp_dim", mlp_dim)
        num_classes = check_int("num_classes", num_classes)
        in_channels = check_int("in_channels", in_channels)
        dropout = check_nonnegative("dropout", dropout)
        attention_dropout = check_nonnegative("attention_dropout", attention_dropout)
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.num_classes, self.in_channels = num_classes, in_channels

        self.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
        self.seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(self.seq_length, num_layers, num_heads, hidden_dim, mlp_dim,
                               dropout, attention_dropout, fused)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"expected {self.image_size}x{self.image_size} images, got "
                             f"{h}x{w}; resize the inputs first (e.g. CIFAR 32 -> 224)")
        x = self.conv_proj(x)                                   # (B, D, S/P, S/P)
        x = x.flatten(2).transpose(1, 2)                        # (B, N-1, D)
        x = torch.cat([self.class_token.expand(b, -1, -1), x], dim=1)   # (B, N, D)
        x = self.encoder(x)                                     # (B, N, D)
        return self.heads(x[:, 0])                              # (B, num_classes)

    def reset_head(self, num_classes: int) -> None:
        """Replace the head with a zero-initialised ``Linear(D, num_classes)``."""
        num_classes = check_int("num_classes", num_classes)
        ref = self.heads.head.weight
        head = nn.Linear(self.hidden_dim, num_classes, device=ref.device, dtype=ref.dtype)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.heads.head = head
        self.num_classes = num_classes


def vit_b16(num_classes: int = 1000, image_size: int = 224, in_channels: int = 3,
            **kwargs) -> VisionTransformer:
    """Randomly initialised ViT-B/16 (patch 16, D 768, 12 layers, 12 heads, M 3072)."""
    return VisionTransformer(image_size=image_size, num_classes=num_classes,
                             in_channels=in_channels, **{**VIT_B16, **kwargs})


def vit_tiny(num_classes: int = 10, in_channels: int = 3, **kwargs) -> VisionTransformer:
    """A small ViT (``VIT_TINY``: 32×32 input, 4×4 patches, D 192, 6 layers, 3 heads,
    M 768) of the same family; override any size with keyword arguments."""
    return VisionTransformer(num_classes=num_classes, in_channels=in_channels,
                             **{**VIT_TINY, **kwargs})


# ----------------------------------------------------------------------------- weights

_LEGACY_MLP = re.compile(r"^(encoder\.layers\.encoder_layer_\d+\.mlp\.)linear_([12])\.(weight|bias)$")
_HEAD_KEYS = ("heads.head.weight", "heads.head.bias")


def interpolate_pos_embedding(pos_embedding: Tensor, seq_length: int) -> Tensor:
    """Resize a (1, 1 + g², D) positional embedding to (1, seq_length, D).

    The class-token entry is kept; the g×g patch grid is resized bicubically
    (align_corners=True) to the new square grid, as torchvision's
    ``interpolate_embeddings``. Returns the input unchanged when the length already fits.
    """
    n, old_len, d = pos_embedding.shape
    if n != 1:
        raise ValueError(f"pos_embedding must have shape (1, N, D), got {tuple(pos_embedding.shape)}")
    if old_len == seq_length:
        return pos_embedding
    g_old, g_new = math.isqrt(old_len - 1), math.isqrt(seq_length - 1)
    if g_old * g_old != old_len - 1 or g_new * g_new != seq_length - 1:
        raise ValueError(f"cannot interpolate pos_embedding of length {old_len} to "
                         f"{seq_length}: both must be 1 + a square number of patches")
    cls_tok, grid = pos_embedding[:, :1], pos_embedding[:, 1:]
    grid = grid.reshape(1, g_old, g_old, d).permute(0, 3, 1, 2)          # (1, D, g, g)
    grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", align_corners=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, g_new * g_new, d)
    return torch.cat([cls_tok, grid], dim=1)


@dataclass
class LoadReport:
    """What ``load_torchvision_weights`` did.

    Attributes:
        loaded: keys copied from the checkpoint into the model.
        renamed: legacy keys renamed (old -> new), e.g. ``mlp.linear_1`` -> ``mlp.0``.
        head: ``"kept"`` (checkpoint head had the model's shape) or ``"reset"`` (dropped;
            the model's head is a fresh zero ``Linear``).
        pos_embedding: ``"kept"`` or ``"interpolated a→b tokens"``.
    """
    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    head: str = "kept"
    pos_embedding: str = "kept"


def convert_torchvision_state_dict(state_dict: Mapping[str, Tensor], model: nn.Module,
                                   ) -> tuple[dict[str, Tensor], LoadReport]:
    """Map a torchvision ViT state dict onto ``model`` (a ``VisionTransformer`` here or
    torchvision's own): rename legacy MLP keys, interpolate the positional embedding to the
    model's token count, and drop the head when its shape differs from the model's.

    Every other key must exist in ``model`` with the same shape, and every model key must
    be provided: otherwise ``ValueError`` lists the offending keys. Returns the converted
    dict (loadable with ``strict=True`` after a head reset) and a ``LoadReport``.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (mapping of str to Tensor), got {type(state_dict).__name__}")
    report = LoadReport()
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"state dict entry {key!r} is a {type(value).__name__}, not a Tensor")
        m = _LEGACY_MLP.match(key)
        if m:
            new = f"{m.group(1)}{3 * (int(m.group(2)) - 1)}.{m.group(3)}"
            report.renamed[key] = new
            key = new
        if key in out:
            raise ValueError(f"state dict holds {key!r} twice (legacy and current names)")
        out[key] = value

    unexpected = sorted(set(out) - set(target))
    missing = sorted(set(target) - set(out) - set(_HEAD_KEYS))
    if unexpected or missing:
        raise ValueError(f"state dict does not fit the model: unexpected keys {unexpected}, "
                         f"missing keys {missing}")

    pe = "encoder.pos_embedding"
    if out[pe].shape != target[pe].shape:
        old = out[pe].shape[1]
        out[pe] = interpolate_pos_embedding(out[pe], target[pe].shape[1])
        if out[pe].shape != target[pe].shape:
            raise ValueError(f"pos_embedding shape {tuple(out[pe].shape)} does not fit the "
                             f"model's {tuple(target[pe].shape)}")
        report.pos_embedding = f"interpolated {old}->{target[pe].shape[1]} tokens"

    head_fits = all(k in out and out[k].shape == target[k].shape for k in _HEAD_KEYS)
    if not head_fits:
        for k in _HEAD_KEYS:
            out.pop(k, None)
        report.head = "reset"

    wrong = [f"{k}: {tuple(v.shape)} vs model {tuple(target[k].shape)}"
             for k, v in out.items() if v.shape != target[k].shape]
    if wrong:
        raise ValueError("state dict shapes do not fit the model: " + "; ".join(wrong))
    report.loaded = sorted(out)
    return out, report


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a checkpoint with ``torch.load(path, map_location="cpu", weights_only=True)``.

    ``weights_only=True`` refuses arbitrary pickled objects (``pickle.UnpicklingError``),
    so a checkpoint cannot run code. A ``{"model": sd}`` or ``{"state_dict": sd}`` wrapper
    is unwrapped. Nothing is ever downloaded.
    """
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and len(obj) == 1:
        (only_key, inner), = obj.items()
        if only_key in ("model", "state_dict") and isinstance(inner, Mapping):
            obj = inner
    if not isinstance(obj, Mapping):
        raise TypeError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def load_torchvision_weights(model: nn.Module, source) -> LoadReport:
    """Load torchvision ViT weights (a file path or a state dict) into ``model`` in place.

    The head is kept if its shape fits, else reset to zeros (``reset_head``); see
    ``convert_torchvision_state_dict`` for the checks. Returns a ``LoadReport``.
    """
    sd = source if isinstance(source, Mapping) else load_state_dict_file(source)
    converted, report = convert_torchvision_state_dict(sd, model)
    if report.head == "reset":
        head = model.heads.head
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        missing, unexpected = model.load_state_dict(converted, strict=False)
        if unexpected or set(missing) != set(_HEAD_KEYS):
            raise RuntimeError(f"loading left missing={missing} unexpected={unexpected}")
    else:
        model.load_state_dict(converted, strict=True)
    return report


def _torchvision_vit_b_16(num_classes: int, image_size: int, **kwargs) -> nn.Module:
    try:
        from torchvision.models import vit_b_16
    except Exception as exc:  # ImportError, or a torchvision built for another torch
        raise ImportError(
            "backend='torchvision' needs a torchvision that imports beside this torch "
            f"(import failed: {exc!r}); install the matching version (pip install "
            "'sdesam[vit]') or use the default backend='sdesam', which needs no torchvision"
        ) from exc
    return vit_b_16(weights=None, image_size=image_size, num_classes=num_classes, **kwargs)


def build_vit_b16(num_classes: int, weights_path: str | os.PathLike | None = None,
                  image_size: int = 224, *, backend: str = "sdesam", dropout: float = 0.0,
                  attention_dropout: float = 0.0, fused: bool = False) -> nn.Module:
    """ViT-B/16 for fine-tuning (paper Table 2): input (B, 3, S, S), S = ``image_size``.

    Args:
        num_classes: classes of the new head (10 for CIFAR-10, 100 for CIFAR-100).
        weights_path: local torchvision ImageNet-1k checkpoint (``vit_b_16-c867db91.pth``,
            ``IMAGENET1K_V1``), read with ``weights_only=True``; never downloaded. ``None``
            leaves the random initialisation.
        image_size: S; the positional embedding is interpolated when S ≠ 224.
        backend: ``"sdesam"`` (this module's ``VisionTransformer``, no torchvision needed,
            supports Hessian-vector products) or ``"torchvision"``
            (``torchvision.models.vit_b_16(weights=None)``, imported lazily).
        dropout, attention_dropout: as in torchvision (0 by default).
        fused: ``sdesam`` backend only, see ``SelfAttention``.

    The 1000-class ImageNet head is replaced by a zero-initialised
    ``Linear(768, num_classes)`` (kept only when ``num_classes == 1000``); the
    ``LoadReport`` is left on ``model.weights_report``. The caller resizes inputs to S×S
    and normalises them with the ImageNet mean and std.
    """
    num_classes = check_int("num_classes", num_classes)
    image_size = check_int("image_size", image_size)
    check_choice("backend", backend, ("sdesam", "torchvision"))
    if backend == "torchvision":
        if fused:
            raise ValueError("fused=True applies to backend='sdesam' only")
        model = _torchvision_vit_b_16(num_classes, image_size, dropout=dropout,
                                      attention_dropout=attention_dropout)
    else:
        model = vit_b16(num_classes=num_classes, image_size=image_size, dropout=dropout,
                        attention_dropout=attention_dropout, fused=fused)
    if weights_path is not None:
        model.weights_report = load_torchvision_weights(model, weights_path)
    return model
