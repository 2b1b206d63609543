"""The paper's training settings as ``TrainConfig`` presets (docs/math.md §9, paper Sec. 6.2–6.3,
Appendix E). Every field can still be overridden.

``table1(dataset, model, method)`` — Table 1, training from scratch:
    batch 256, 200 epochs (SGD 400: SAM-type methods cost two passes per step), SGD base
    with momentum 0.9, per-step cosine schedule from lr = 0.1 (0.01 for SVHN), weight
    decay 5e-5, pad-4 random crop + horizontal flip; ρ = 0.05 (CIFAR-10, Fashion-MNIST),
    0.1 (CIFAR-100), 0.01 (SVHN); Eigen-SAM α = 0.2, p = 100, q = 5 power iterations
    (``estimator="power"``, the paper's Algorithm 1, set explicitly).

``table2(dataset, method, weights_path=...)`` — Table 2, ViT-B/16 (ImageNet-1k weights,
    torchvision's ``vit_b_16-c867db91.pth``, a local file) fine-tuned on CIFAR-10/100:
    lr 0.01, 4k steps (SGD 8k), momentum 0.9, cosine. Not stated by the paper, chosen
    here: batch 128, weight decay 0, inputs resized 32 → 224 (bilinear) and normalised with
    ImageNet's mean/std, the same crop + flip at 32×32 before resizing, ρ as in Table 1
    (0.05 CIFAR-10, 0.1 CIFAR-100).

``table1_quick(method)`` — a small real Table 1 grid cell that runs on 2 CPU cores: see
    ``QUICK`` below and docs/training.md.

``official(dataset, model, method="eigen_sam")`` — the official code's algorithm
    (RitianLuo/EigenSAM) in one switch: Table 1's cell with the official optimizer
    settings ``OFFICIAL`` — p counted within each epoch and refreshed at in-epoch steps
    k = p, 2p, … (ε = g before the first estimate), eval-mode Hessian-vector products,
    a momentum-0 BatchNorm perturbed pass, weight decay 5e-4 (tests/test_official_replay.py
    replays that loop). The rest of the run (schedule, augmentation, epochs) is Table 1's.
"""
from __future__ import annotations

from .._checks import check_choice
from .config import TrainConfig

__all__ = ["table1", "table2", "table1_quick", "official", "OFFICIAL", "PRESETS", "TABLE1_DATASETS", "TABLE1_MODELS",
           "TABLE1_METHODS", "TABLE1_RHO", "TABLE1_LR", "TABLE2_DATASETS", "QUICK"]

TABLE1_DATASETS = ("cifar10", "cifar100", "fashion_mnist", "svhn")
TABLE1_MODELS = ("resnet18", "resnet50", "wrn28_10")
TABLE1_METHODS = ("sgd", "sam", "eigen_sam")
TABLE1_RHO = {"cifar10": 0.05, "fashion_mnist": 0.05, "cifar100": 0.1, "svhn": 0.01}
TABLE1_LR = {"cifar10": 0.1, "fashion_mnist": 0.1, "cifar100": 0.1, "svhn": 0.01}
TABLE2_DATASETS = ("cifar10", "cifar100")

#: the ``--quick`` grid: Fashion-MNIST, a width-8 ResNet-18 (176k parameters instead of
#: 11.2M) on a fixed 3,000-image training subset and 1,000 test images, batch 128,
#: 6 epochs (SGD 12) — 23 steps per epoch — and Eigen-SAM's p = 20 so that a short run
#: still refreshes v̂ several times. Everything else is Table 1's.
QUICK = dict(dataset="fashion_mnist", model="resnet18", model_kwargs={"width": 8},
             train_subset=3000, test_subset=1000, batch_size=128, epochs=6, p=20,
             eval_batch_size=1000)


def table1(dataset: str, model: str, method: str, seed: int = 0, **overrides) -> TrainConfig:
    """Table 1's configuration for one cell (any method of ``METHODS`` is accepted; SGD
    gets twice the epochs). ``overrides`` replace any field."""
    check_choice("dataset", dataset, TABLE1_DATASETS)
    settings = dict(dataset=dataset, model=model, method=method, seed=seed,
                    epochs=400 if method == "sgd" else 200, steps=None, batch_size=256,
                    lr=TABLE1_LR[dataset], momentum=0.9, nesterov=False, weight_decay=5e-5,
                    schedule="cosine", augment=True, normalization="dataset",
                    rho=TABLE1_RHO[dataset], alpha=0.2, p=100, q=5, estimator="power",
                    out_dir=f"runs/table1/{dataset}-{model}-{method}-s{seed}")
    settings.update(overrides)
    return TrainConfig(**settings)


def table2(dataset: str, method: str, seed: int = 0, weights_path: str | None = None,
           **overrides) -> TrainConfig:
    """Table 2's configuration (ViT-B/16 fine-tuning). ``weights_path``: the local
    torchvision ImageNet-1k checkpoint; required unless ``model_kwargs`` is overridden."""
    check_choice("dataset", dataset, TABLE2_DATASETS)
    if weights_path is None and "model_kwargs" not in overrides:
        raise ValueError("table2 needs weights_path= (torchvision's vit_b_16-c867db91.pth, a "
                         "local file; see docs/models.md)")
    settings = dict(dataset=dataset, model="vit_b16", method=method, seed=seed,
                    model_kwargs={"weights_path": weights_path}, input_size=224,
                    normalization="imagenet", steps=8000 if method == "sgd" else 4000, epochs=None,
                    batch_size=128, lr=0.01, momentum=0.9, weight_decay=0.0, schedule="cosine",
                    augment=True, rho=TABLE1_RHO[dataset], alpha=0.2, p=100, q=5, estimator="power",
                    eval_batch_size=256, out_dir=f"runs/table2/{dataset}-vit_b16-{method}-s{seed}")
    settings.update(overrides)
    return TrainConfig(**settings)


def table1_quick(method: str, seed: int = 0, **overrides) -> TrainConfig:
    """The ``--quick`` Table 1 cell (``QUICK``) for one method and seed."""
    settings = dict(QUICK, out_dir=f"runs/table1-quick/fashion_mnist-resnet18-{method}-s{seed}")
    settings["epochs"] = 2 * QUICK["epochs"] if method == "sgd" else QUICK["epochs"]
    settings.update(overrides)
    return table1(settings.pop("dataset"), settings.pop("model"), method, seed, **settings)


#: the official code's optimizer settings (``sdesam.optim.EigenSAM.official`` plus its
#: weight decay); the BatchNorm setting applies to SAM too (davda54/sam's convention)
OFFICIAL = dict(p_counting="epoch", first_refresh="after_p", hvp_mode="eval", renormalize=False,
                perturbed_bn="zero_momentum", weight_decay=5e-4, estimator="power", q=5)


def official(dataset: str, model: str, seed: int = 0, *, method: str = "eigen_sam",
             **overrides) -> TrainConfig:
    """Table 1's cell for ``method`` (one of ``TABLE1_METHODS``) with the official code's
    optimizer settings ``OFFICIAL``; ``overrides`` replace any field."""
    check_choice("method", method, TABLE1_METHODS)
    settings = dict(OFFICIAL, out_dir=f"runs/official/{dataset}-{model}-{method}-s{seed}")
    settings.update(overrides)
    return table1(dataset, model, method, seed, **settings)


#: name → preset function, for the command line
PRESETS = {"table1": table1, "table2": table2, "table1_quick": table1_quick, "official": official}
