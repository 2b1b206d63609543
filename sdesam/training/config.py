"""``TrainConfig``: every setting of one training run, validated, JSON round-trippable.

A run is fully described by its ``TrainConfig`` (saved as ``config.json`` next to the
results): the data, the model, the method and its hyperparameters, the schedule, the
seed, and how it runs (device, precision, output directory).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from .._checks import check_choice, check_int, check_nonnegative, check_positive
from ..data import DATASET_NAMES
from ..models import MODEL_NAMES
from ..optim import ESTIMATORS, HVP_METHODS, HVP_MODES, PERTURBED_BN
from ..refresh import FIRST_REFRESHES, P_COUNTINGS

__all__ = ["TrainConfig", "METHODS", "SAM_FAMILY", "SCHEDULES", "NORMALIZATIONS", "AMP_MODES",
           "RESUME_MUTABLE_FIELDS"]

#: training methods: plain SGD, the SAM family (Eq. 1, Appendix A; ASAM, Fisher-SAM, GSAM, WSAM,
#: m-SAM) and Eigen-SAM (Eq. 8).
METHODS = ("sgd", "sam", "usam", "reverse_sam", "asam", "fisher_sam", "gsam", "wsam", "msam", "egr",
           "eigen_sam")
#: the methods built on ``sdesam.optim.SAM`` (they take micro_batches, accumulate, svag, clipping)
SAM_FAMILY = ("sam", "usam", "reverse_sam", "asam", "fisher_sam", "gsam", "wsam", "msam")
#: learning-rate schedules: cosine from ``lr`` to 0 over all steps, or constant.
SCHEDULES = ("cosine", "constant")
#: input normalisation: the training split's per-channel mean/std, or ImageNet's (for
#: pretrained weights, Table 2).
NORMALIZATIONS = ("dataset", "imagenet")
#: mixed precision: ``"auto"`` = bf16 autocast on CUDA, none on CPU; ``"fp16"`` = float16
#: autocast with a ``torch.amp.GradScaler`` (SGD and the SAM family).
AMP_MODES = ("auto", "bf16", "fp16", "none")
#: fields that may differ between a checkpoint and the configuration resuming it: they do
#: not change what is computed (a different thread count can change float summation
#: order, so bit-identical resumes need the same ``threads``).
RESUME_MUTABLE_FIELDS = ("data_dir", "out_dir", "progress", "log_every", "resume", "threads")
#: device names a configuration may hold (whether this machine has the device is checked
#: when a run starts, ``sdesam.parallel.check_device``)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
#: datasets of grey-scale images (no ImageNet normalisation)
_GREY = ("mnist", "fashion_mnist")


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's Table 1 settings (docs/math.md §9) for SAM.

    Data:
        dataset: one of ``sdesam.data.DATASET_NAMES``.
        data_dir: data directory (default ``$SDESAM_DATA`` or ``~/.cache/sdesam``).
        train_subset, test_subset: use only this many examples (uniform without
            replacement, drawn with ``subset_seed``); None = all.
        subset_seed: seed of the subsets (kept fixed across ``seed``s so that seeds vary
            initialisation and shuffling only).
        augment: the paper's pad-4 random crop + horizontal flip on training batches.
        normalization: one of ``NORMALIZATIONS``.
        input_size: resize (bilinear) batches to input_size² pixels on the device, e.g.
            224 for ViT-B/16; None keeps the dataset's size.
    Model:
        model: one of ``sdesam.models.MODEL_NAMES``.
        model_kwargs: passed to ``build_model`` (e.g. ``{"width": 16}``,
            ``{"weights_path": ".../vit_b_16-c867db91.pth"}``).
    Optimisation:
        method: one of ``METHODS``.
        epochs / steps: length of the run; give exactly one. With ``steps`` the last
            epoch may be partial.
        batch_size: the global minibatch size B (split evenly over DDP processes).
        lr, momentum, nesterov, weight_decay: the SGD base optimizer.
        schedule: one of ``SCHEDULES`` (cosine is applied per step).
        rho: SAM radius ρ (also EGR's coefficient, GSAM's ρ_max; unused by SGD).
        alpha, p, q, p_counting, first_refresh, hvp_mode, renormalize, estimator,
            hvp_method: Eigen-SAM (see ``sdesam.optim.EigenSAM``; q None = the estimator's
            default); unused by other methods.
        xi: ASAM's ξ (``sdesam.rules.ASAMRule``). eta_f: Fisher-SAM's η_F
            (``sdesam.rules.FisherSAMRule``).
        gsam_alpha: GSAM's α (named so as not to clash with Eigen-SAM's ``alpha``).
        rho_min: GSAM's ρ schedule ρ_t = ρ_min + (rho − ρ_min)·lr_t/lr_0 (cosine: ρ_min at the
            end); None keeps ρ = rho. Only for ``method="gsam"``.
        gamma: WSAM's γ ∈ [0, 1). wsam_decouple: WSAM's decoupled form (see
            ``sdesam.optim.WSAM``).
        micro_batches: m-SAM's m (``method="msam"`` needs m ≥ 2; the other SAM-family
            methods take it too); must divide each process's share of the batch.
        accumulate: gradient accumulation over this many pieces of each minibatch (SAM
            family; not with micro_batches > 1).
        svag: SVAG's l ≥ 1 (SGD and the SAM family): each step draws two minibatches and
            combines their (perturbed) gradients with c₁,₂ = (1 ± √(2l − 1))/2, the
            learning rate is lr/l and the run takes l times the steps (``epochs`` and
            ``steps`` count effective time: steps / l); l = 1 is the plain method.
        clip_grad_norm: clip the gradient the base optimizer receives to this norm (SGD
            and the SAM family); None: no clipping.
        perturbed_bn: how the perturbed pass of the SAM family and Eigen-SAM
            treats BatchNorm buffers, one of ``sdesam.optim.PERTURBED_BN`` (see
            ``sdesam.optim.SAM``; the ``official`` preset sets ``"zero_momentum"``).
        sync_perturbation: under DDP, perturb with the globally averaged gradient (True)
            or per process (False, m-sharpness: m-SAM with m = the number of processes).
        drop_last: drop the last incomplete training batch of each epoch (required with
            more than one process).
    Reproducibility and running:
        seed: initialisation, shuffling/augmentation and Eigen-SAM's first v̂.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
        amp: one of ``AMP_MODES``. channels_last: None = on for CUDA and image models.
        threads: CPU threads (``torch.set_num_threads``); None = torch's default.
        eval_batch_size: batch size of the test evaluation.
        out_dir: run directory (config.json, metrics.jsonl, checkpoint.pt, final.json).
        resume: continue from ``out_dir/checkpoint.pt`` if it exists.
        checkpoint: write ``checkpoint.pt`` after every epoch.
        progress: show a progress bar (rank 0 only). log_every: steps between loss
            checks (NaN/Inf) and progress-bar updates.
    """

    dataset: str = "cifar10"
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    subset_seed: int = 0
    augment: bool = True
    normalization: str = "dataset"
    input_size: int | None = None
    model: str = "resnet18"
    model_kwargs: dict = field(default_factory=dict)
    method: str = "sam"
    epochs: int | None = 200
    steps: int | None = None
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-5
    schedule: str = "cosine"
    rho: float = 0.05
    alpha: float = 0.2
    p: int = 100
    q: int | None = None
    p_counting: str = "global"
    first_refresh: str = "start"
    hvp_mode: str = "train"
    renormalize: bool = False
    perturbed_bn: str = "frozen"
    xi: float = 0.0
    eta_f: float = 1.0
    gsam_alpha: float = 0.1
    rho_min: float | None = None
    gamma: float = 0.9
    wsam_decouple: bool = True
    micro_batches: int = 1
    accumulate: int = 1
    svag: int = 1
    clip_grad_norm: float | None = None
    estimator: str = "power"
    hvp_method: str = "double_backward"
    sync_perturbation: bool = True
    drop_last: bool = True
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None
    threads: int | None = None
    eval_batch_size: int = 1000
    out_dir: str = "runs/train"
    resume: bool = False
    checkpoint: bool = True
    progress: bool = True
    log_every: int = 20

    def __post_init__(self):
        self.validate()

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the first bad field; return self."""
        check_choice("dataset", self.dataset, DATASET_NAMES)
        check_choice("model", self.model, MODEL_NAMES)
        check_choice("method", self.method, METHODS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_choice("amp", self.amp, AMP_MODES)
        check_choice("p_counting", self.p_counting, P_COUNTINGS)
        check_choice("first_refresh", self.first_refresh, FIRST_REFRESHES)
        check_choice("hvp_mode", self.hvp_mode, HVP_MODES)
        check_choice("perturbed_bn", self.perturbed_bn, PERTURBED_BN)
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("hvp_method", self.hvp_method, HVP_METHODS)
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"model_kwargs must be a dict, got model_kwargs={self.model_kwargs!r}")
        if (self.epochs is None) == (self.steps is None):
            raise ValueError("give exactly one of epochs and steps, got "
                             f"epochs={self.epochs!r}, steps={self.steps!r}")
        for name in ("epochs", "steps", "train_subset", "test_subset", "input_size", "threads", "q"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        for name in ("batch_size", "eval_batch_size", "p", "log_every", "micro_batches", "accumulate", "svag"):
            check_int(name, getattr(self, name), 1)
        for name in ("subset_seed", "seed"):
            check_int(name, getattr(self, name), 0)
        check_positive("lr", self.lr)
        for name in ("momentum", "weight_decay", "rho", "alpha", "xi", "eta_f", "gsam_alpha", "gamma"):
            check_nonnegative(name, getattr(self, name))
        self._check_family()
        if self.momentum >= 1:
            raise ValueError(f"momentum must be < 1, got momentum={self.momentum!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got device={self.device!r}")
        if not self.out_dir:
            raise ValueError("out_dir must be a directory path, got out_dir=''")
        if self.data_dir == "":
            raise ValueError("data_dir must be a directory path or None, got data_dir=''")
        if self.normalization == "imagenet" and self.dataset in _GREY:
            raise ValueError(f"normalization='imagenet' needs RGB images, {self.dataset} is grey-scale")
        needed = self.batch_size * (2 if self.svag > 1 else 1)
        if self.drop_last and self.train_subset is not None and self.train_subset < needed:
            raise ValueError(f"train_subset={self.train_subset} gives no complete step: it needs {needed} examples "
                             f"(batch_size={self.batch_size}{', two minibatches with svag' if self.svag > 1 else ''})")
        return self

    def _check_family(self) -> None:
        """The SAM-family options against the method, one ValueError per mistake."""
        family = self.method in SAM_FAMILY
        if self.gamma >= 1:
            raise ValueError(f"gamma must lie in [0, 1) (WSAM's weight γ/(1 − γ)), got gamma={self.gamma!r}")
        if self.rho_min is not None:
            check_nonnegative("rho_min", self.rho_min)
            if self.method != "gsam":
                raise ValueError(f"rho_min is GSAM's ρ schedule: it needs method='gsam', got method={self.method!r}")
            if self.rho_min > self.rho:
                raise ValueError(f"rho_min={self.rho_min!r} must not exceed rho={self.rho!r}")
        if self.clip_grad_norm is not None:
            check_positive("clip_grad_norm", self.clip_grad_norm)
        if self.method == "msam" and self.micro_batches < 2:
            raise ValueError(f"method='msam' needs micro_batches >= 2, got micro_batches={self.micro_batches}")
        for name, default in (("micro_batches", 1), ("accumulate", 1)):
            if getattr(self, name) != default and not family:
                raise ValueError(f"{name}={getattr(self, name)} needs a SAM-family method ({', '.join(SAM_FAMILY)}), "
                                 f"got method={self.method!r}")
        if self.micro_batches > 1 and self.accumulate > 1:
            raise ValueError(f"micro_batches={self.micro_batches} and accumulate={self.accumulate}: use one of the two")
        pieces = self.micro_batches * self.accumulate
        if self.batch_size % pieces:
            name = "micro_batches" if self.micro_batches > 1 else "accumulate"
            raise ValueError(f"{name}={pieces} must divide batch_size={self.batch_size}")
        plain = family or self.method == "sgd"
        for name, off in (("svag", self.svag == 1), ("clip_grad_norm", self.clip_grad_norm is None),
                          ("amp='fp16'", self.amp != "fp16")):
            if not off and not plain:
                raise ValueError(f"{name} needs SGD or a SAM-family method, got method={self.method!r}")

    # -- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        """Build from ``to_dict()`` output; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def differences(self, other: "TrainConfig", ignore=RESUME_MUTABLE_FIELDS) -> dict:
        """``{field: (self's, other's)}`` for fields that differ, except ``ignore``."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the run, given the loader's batches per epoch: ``steps``, or
        ``epochs`` × batches per epoch, times ``svag`` (SVAG's l steps per unit of time)."""
        steps = self.steps if self.steps is not None else self.epochs * batches_per_epoch
        return self.svag * steps
