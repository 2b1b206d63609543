"""Figure 3: test accuracy against α, and the Hessian spectrum at the end of training.

    python -m figures.figure3                  # quick default (CPU, minutes)
    python -m figures.figure3 --full           # the paper-scale configuration (GPUs)

Left (paper Sec. 6.4): Eigen-SAM trained with each α of ``alphas`` — α = 0 is SAM, run
as ``method="sam"`` (``EigenSAM`` with α = 0 computes the same steps, tested in
``tests/test_optim.py``, and would only add power iterations) — by the project's
trainer, one run per seed of ``seeds``; the final test accuracy's mean over seeds with a
Student-t 95% confidence band, and every seed's value.

Right (Sec. 6.5): for α ∈ ``spectrum_alphas`` (SAM and Eigen-SAM α = 0.2) and the seeds
of ``spectrum_seeds`` (among ``seeds``), ``figures.probes.SpectrumProbe`` at the end of training: the
Hessian of the mean loss over a fixed subset of ``hessian_examples`` training images
(``hessian_mode``, default eval: BatchNorm running statistics) by stochastic Lanczos
quadrature with ``slq_probes`` Rademacher probes × ``slq_steps`` Lanczos steps, drawn as
a Gaussian-smoothed density (σ = ``density_sigma`` × the width of the spectrum's support,
on a log scale), with λ₁ (Lanczos to relative residual ``eig_tol``) and the trace
(Hutchinson samples from the same probes, ± standard error) in the legend.

Quick (a CPU, minutes; not the paper's setting): Fashion-MNIST, ResNet-18 of width 8,
a fixed 2,000-image training subset, 1,000 test images, batch 128, 4 epochs (60 steps),
Eigen-SAM p = 20, α ∈ {0, 0.1, 0.2, 0.4}, seeds 0, 1; spectrum (seed 0) on 128 images,
2 probes × 20 steps. Full: ResNet-18 on CIFAR-100 with Table 1's preset (200 epochs,
batch 256, ρ = 0.1, p = 100, q = 5), α ∈ {0, 0.05, 0.1, 0.2, 0.3, 0.5}, seeds 0, 1, 2;
spectrum (seed 0) on 2,048 images, 10 probes × 100 steps. The paper does not list its α
grid or SLQ settings.

Outputs in ``--out`` (default ``runs/figure3``): ``figure3_{dataset}.png``/``.pdf``,
``accuracy.csv`` (alpha, method, seed, metric, value), ``spectrum.csv`` (alpha, seed,
probe, node, weight: the raw quadrature), ``density.csv`` (alpha, eigenvalue, density),
``summary.json``, and ``runs/alpha{α}-s{seed}`` (trainer run directories; rerunning
resumes or collects them).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from sdesam._progress import progress as progress_bar
from sdesam.curvature import SLQResult, spectral_density
from sdesam.experiment import command

from .probes import HESSIAN_MODES, SpectrumProbe
from .runs import TrainingSettings, run_or_collect, t_band, training_caption

PAPER = ("cifar100", "resnet18")


@dataclass
class Config(TrainingSettings):
    """Everything that determines the result (saved in config.json and summary.json)."""

    dataset: str = "fashion_mnist"
    model: str = "resnet18"
    model_kwargs: dict = field(default_factory=lambda: {"width": 8})
    seeds: tuple = (0, 1)
    epochs: int | None = 4
    batch_size: int = 128
    train_subset: int | None = 2000
    test_subset: int | None = 1000
    alphas: tuple = (0.0, 0.1, 0.2, 0.4)
    p: int = 20
    q: int = 5
    spectrum_alphas: tuple = (0.0, 0.2)
    spectrum_seeds: tuple = (0,)
    hessian_examples: int = 128
    hessian_batch_size: int = 128
    hessian_mode: str = "eval"
    slq_probes: int = 2
    slq_steps: int = 20
    eig_tol: float = 1e-3
    eig_max_iters: int = 100
    density_sigma: float = 0.01

    @classmethod
    def full(cls) -> "Config":
        return cls(dataset="cifar100", model_kwargs={}, seeds=(0, 1, 2), epochs=None, batch_size=256,
                   train_subset=None, test_subset=None, alphas=(0.0, 0.05, 0.1, 0.2, 0.3, 0.5), p=100,
                   hessian_examples=2048, hessian_batch_size=256, slq_probes=10, slq_steps=100)

    def validate(self) -> "Config":
        if any(a < 0 for a in self.alphas) or len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas must be distinct and >= 0, got {self.alphas}")
        if not set(self.spectrum_alphas) <= set(self.alphas):
            raise ValueError(f"spectrum_alphas {self.spectrum_alphas} must be among alphas {self.alphas}")
        if not set(self.spectrum_seeds) <= set(self.seeds):
            raise ValueError(f"spectrum_seeds {list(self.spectrum_seeds)} must be among seeds {list(self.seeds)}")
        if self.hessian_mode not in HESSIAN_MODES:
            raise ValueError(f"hessian_mode must be one of {list(HESSIAN_MODES)}")
        if self.density_sigma <= 0:
            raise ValueError("density_sigma must be > 0")
        self.check_training([(self.dataset, self.model, method_for(a), {"alpha": a, "p": self.p, "q": self.q})
                             for a in self.alphas], {"method": "--alphas (0: SAM)", "alpha": "--alphas"},
                            examples=self.hessian_examples)
        return self


def method_for(alpha: float) -> str:
    return "sam" if alpha == 0 else "eigen_sam"


def alpha_label(alpha: float) -> str:
    return "SAM (α = 0)" if alpha == 0 else f"Eigen-SAM (α = {alpha:g})"


def slq_result(record: dict) -> SLQResult:
    nodes = torch.tensor([[math.nan if v is None else v for v in row] for row in record["nodes"]],
                         dtype=torch.float64)
    return SLQResult(nodes=nodes, weights=torch.tensor(record["weights"], dtype=torch.float64),
                     num_matvecs=record["slq_hvps"], dim=record["dim"])


def densities(spectra: dict, sigma_frac: float, points: int = 1000):
    """Common grid and the mean density over seeds for each α: (grid, {α: density}, σ)."""
    results = {key: slq_result(rec) for key, rec in spectra.items()}
    lo = min(r.support()[0] for r in results.values())
    hi = max(r.support()[1] for r in results.values())
    sigma = sigma_frac * max(hi - lo, 1e-12)
    grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, points, dtype=torch.float64)
    by_alpha: dict = {}
    for (alpha, _seed), res in results.items():
        by_alpha.setdefault(alpha, []).append(spectral_density(res, grid, sigma))
    return grid.numpy(), {a: torch.stack(d).mean(0).numpy() for a, d in by_alpha.items()}, sigma


def accuracy_bands(rows, alphas) -> dict:
    out = {}
    for alpha in alphas:
        vals = [r["value"] for r in rows if r["alpha"] == alpha and r["metric"] == "test_accuracy"]
        mean, half = t_band(vals)
        out[alpha] = {"mean": mean, "ci95": half, "n": len(vals), "values": vals}
    return out


def plot(cfg: Config, bands: dict, spectra: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    a = np.array(cfg.alphas)
    m = np.array([100 * bands[x]["mean"] for x in cfg.alphas])
    h = np.nan_to_num(np.array([100 * bands[x]["ci95"] for x in cfg.alphas]))
    ax1.plot(a, m, "-o", color="tab:red", label="mean over seeds")
    ax1.fill_between(a, np.clip(m - h, 0, 100), np.clip(m + h, 0, 100), color="tab:blue", alpha=0.2, lw=0,
                     label="95% CI (Student t), clipped to [0, 100]")
    for x in cfg.alphas:
        vals = bands[x]["values"]
        ax1.scatter([x] * len(vals), [100 * v for v in vals], s=10, color="k", alpha=0.5, zorder=3)
    ax1.set_xlabel(r"$\alpha$ ($\alpha = 0$: SAM)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title(f"sensitivity to α ({len(cfg.seeds)} seeds)")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    if spectra:
        grid, dens, sigma = densities(spectra, cfg.density_sigma)
        for alpha, d in dens.items():
            recs = [r for (al, _), r in spectra.items() if al == alpha]
            lam = np.mean([r["lambda1"] for r in recs])
            tr = np.mean([r["trace"] for r in recs])
            se = np.sqrt(np.sum([r["trace_stderr"] ** 2 for r in recs])) / len(recs)
            ax2.semilogy(grid, np.maximum(d, 1e-12),
                         label=f"{alpha_label(alpha)}: λ₁ = {lam:.3g}, trace ≈ {tr:.3g} ± {se:.2g}",
                         color="tab:blue" if alpha == 0 else "tab:red")
        ax2.set_ylim(bottom=max(1e-8, min(float(np.max(d)) for d in dens.values()) * 1e-7))
        ax2.set_xlabel("eigenvalue")
        ax2.set_ylabel("density (Gaussian-smoothed SLQ)")
        ax2.set_title(f"Hessian spectrum after training ({cfg.hessian_examples} training images, "
                      f"{cfg.slq_probes} probes × {cfg.slq_steps} steps, σ = {sigma:.2g})", fontsize=9)
        ax2.legend(fontsize=8)
        ax2.grid(alpha=0.3)
    fig.suptitle(f"{training_caption(cfg, PAPER)}, {cfg.epochs or 'preset'} epochs, p = {cfg.p}, q = {cfg.q}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def run(cfg: Config, output, opts) -> dict:
    """Train (or resume / collect) every (α, seed) run and write the outputs."""
    t_start = time.perf_counter()
    out = output.path
    cells = [(a, s) for a in cfg.alphas for s in cfg.seeds]
    acc_rows, spectra, walls = [], {}, {}
    bar = progress_bar(len(cells), desc="figure3 runs", unit="run", enabled=opts.progress)
    try:
        for alpha, seed in cells:
            name = f"alpha{alpha:g}-s{seed}"
            method = method_for(alpha)
            tc = cfg.train_config(cfg.dataset, cfg.model, method, seed, out / "runs" / name, alpha=alpha,
                                  p=cfg.p, q=cfg.q, data_dir=opts.data_dir, device=str(opts.device),
                                  threads=opts.threads, progress=opts.progress)
            callbacks = []
            if alpha in cfg.spectrum_alphas and seed in cfg.spectrum_seeds:
                callbacks.append(SpectrumProbe(examples=cfg.hessian_examples, batch_size=cfg.hessian_batch_size,
                                               mode=cfg.hessian_mode, probes=cfg.slq_probes, steps=cfg.slq_steps,
                                               tol=cfg.eig_tol, max_iters=cfg.eig_max_iters))
            result = run_or_collect(name, tc, callbacks)
            if callbacks and "spectrum" not in result.final:
                raise ValueError(f"{tc.out_dir} finished without a spectrum; use another --out")
            walls[name] = result.final["wall_time_s"] + result.final.get("spectrum", {}).get("probe_seconds", 0)
            for metric in ("test_accuracy", "test_loss", "train_loss"):
                acc_rows.append({"alpha": alpha, "method": method, "seed": seed, "metric": metric,
                                 "value": result.final[metric]})
            if callbacks:
                spectra[(alpha, seed)] = result.final["spectrum"]
            bar.update(1)
    finally:
        bar.close()
    output.csv("accuracy.csv", ["alpha", "method", "seed", "metric", "value"], acc_rows)
    output.csv("spectrum.csv", ["alpha", "seed", "probe", "node", "weight"],
               [{"alpha": a, "seed": s, "probe": i, "node": n, "weight": w}
                for (a, s), rec in spectra.items() for i, (nr, wr) in enumerate(zip(rec["nodes"], rec["weights"]))
                for n, w in zip(nr, wr) if n is not None])
    summary_spectra = {}
    if spectra:
        grid, dens, sigma = densities(spectra, cfg.density_sigma)
        output.csv("density.csv", ["alpha", "eigenvalue", "density"],
                   [{"alpha": a, "eigenvalue": float(x), "density": float(y)} for a, d in dens.items()
                    for x, y in zip(grid, d)])
        for (a, s), rec in spectra.items():
            summary_spectra[f"alpha{a:g}-s{s}"] = {k: v for k, v in rec.items() if k not in ("nodes", "weights")}
        summary_spectra["density_sigma_absolute"] = sigma
    bands = accuracy_bands(acc_rows, cfg.alphas)
    stem = f"figure3_{cfg.dataset}"
    output.figure(plot(cfg, bands, spectra), stem)
    best = max(cfg.alphas, key=lambda a: bands[a]["mean"])
    summary = output.summary({
        "figure": "Figure 3", "config": asdict(cfg), "dataset": cfg.dataset, "model": cfg.model,
        "paper_setting": {"dataset": PAPER[0], "model": PAPER[1]},
        "is_paper_setting": (cfg.dataset, cfg.model) == PAPER and not cfg.model_kwargs,
        "test_accuracy_by_alpha": {f"{a:g}": b for a, b in bands.items()},
        "best_alpha_by_mean": best,
        "gain_of_best_over_sam_pct": 100 * (bands[best]["mean"] - bands[0.0]["mean"]) if 0.0 in bands else None,
        "spectra": summary_spectra,
        "measurements": {
            "accuracy": "final test accuracy (whole test split or test_subset, eval mode); band = Student-t "
                        "95% CI of the mean over seeds",
            "spectrum": f"Hessian of the mean loss over a fixed subset of {cfg.hessian_examples} training images "
                        f"({cfg.hessian_mode} mode) after the last step; SLQ {cfg.slq_probes} Rademacher probes x "
                        f"{cfg.slq_steps} Lanczos steps; density smoothed with sigma = {cfg.density_sigma} x support "
                        f"width; lambda1 by Lanczos (relative residual <= {cfg.eig_tol}); trace = mean of the probes' "
                        "Hutchinson samples +- standard error",
        },
        "files": {"figure": f"{stem}.png", "accuracy": "accuracy.csv", "spectrum": "spectrum.csv",
                  "density": "density.csv" if spectra else None},
        "run_wall_seconds": walls,
    }, opts.device, t_start)
    print(f"wrote {out}/{summary['files']['figure']} (+ .pdf), accuracy.csv, spectrum.csv, summary.json "
          f"({summary['wall_seconds_this_invocation']:.0f} s)")
    for a, b in summary["test_accuracy_by_alpha"].items():
        half = "n/a" if math.isnan(b["ci95"]) else f"{100 * b['ci95']:.2f}"
        print(f"  alpha = {a}: test accuracy {100 * b['mean']:.2f} ± {half} % (n = {b['n']})")
    for key, s in summary["spectra"].items():
        if isinstance(s, dict):
            print(f"  {key}: lambda1 = {s['lambda1']:.4g}, trace = {s['trace']:.4g} ± {s['trace_stderr']:.2g}")
    return summary


main = command("figures.figure3", __doc__, Config, run)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.figure3")
