"""The one-step moment test on a real network (paper Lemma B.3, measured).

    python -m validation.moment_test                        # Figure 2's 784-784-10 MLP on MNIST
    python -m validation.moment_test --problem resnet       # ResNet-18 (width 8, GroupNorm) on Fashion-MNIST
    python -m validation.moment_test --problem resnet --activation gelu    # the same network with GeLU
    python -m validation.moment_test --full                 # more minibatches and points (GPU)

At points x along a discrete SAM trajectory (η, ρ of Figure 2), for each SAM-family
method (rule ε, update map Φ, micro-batches) and each ρ of a grid, ``sdesam.moment_test``
measures how well each SDE's drift and diffusion match the discrete step's mean and
covariance: the paired drift mismatch ‖E_γ[Φ_γ − w_γ]‖ (Φ_γ the discrete direction, w_γ
the model's per-minibatch vector, the same γ and ε_γ on both sides) and the sketched
covariance mismatch ‖Cov Φ_γ − Cov w_γ‖_F, with jackknife standard errors; their slopes
against ρ (theory: 1 for the SGD-SDE, 2 for SAM-SDE2, 3 for SAM-SDE3) with 95% intervals;
and their sizes relative to the discrete moments at the paper's ρ.

Methods: ``sam``, ``asam``, ``fisher_sam``, ``eigen_sam`` (Eigen-SAM's ε with a given v̂: the
top eigenvector of the Hessian over a fixed training subset at x, by Lanczos), ``gsam``,
``wsam``, ``msam`` (m-SAM with ``--micro-batches`` micro-batches), ``usam``, ``reverse_sam``,
or a rule of your own as ``module:ClassName`` (a ``sdesam.rules.PerturbationRule`` subclass
constructible without arguments).

Outputs in ``--out``: ``moments.csv`` (tidy: point, step, method, ρ, model, quantity,
mismatch, SE, relative), ``slopes.csv``, ``moment_test.png``, ``summary.json``
(configuration, every number, versions, wall time), ``points.pt`` (the trajectory points)
and ``parts/`` (one file per finished (point, method): a rerun resumes).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from sdesam import rules as rules_mod
from sdesam.atomic import atomic_open
from sdesam.curvature import HessianOperator, lanczos
from sdesam.experiment import command
from sdesam.moments import THEORY_SLOPES, moment_test
from sdesam.registry import SAM_FAMILY_HYPERPARAMETERS, make_dynamics, sam_family_member
from sdesam.updates import WSAMUpdate

__all__ = ["Config", "main", "run", "METHODS"]

METHODS = ("sam", "usam", "reverse_sam", "asam", "fisher_sam", "eigen_sam", "gsam", "wsam", "msam")
PROBLEMS = ("mlp", "resnet", "logcosh", "logistic")


@dataclass
class Config:
    """Everything that determines the result (config.json; a rerun resumes)."""

    problem: str = "mlp"
    methods: tuple = ("sam", "eigen_sam", "asam", "fisher_sam", "gsam", "wsam", "msam")
    rhos: tuple = (0.05, 0.1, 0.2, 0.4)
    paper_rho: float = 0.2
    points: tuple = (0, 100, 300)
    eta: float = 0.01
    trajectory_rho: float = 0.2
    n_batches: str = "256"
    chunk: int = 16
    projections: int = 16
    groups: int = 8
    seed: int = 0
    alpha: float = 0.2
    xi: float = 0.0
    eta_f: float = 1.0
    gsam_alpha: float = 0.3
    wsam_gamma: float = 0.9
    micro_batches: int = 4
    eig_examples: int = 1024
    eig_tol: float = 1e-3
    hidden: int = 784
    n_train: int | None = None
    batch_size: int = 128
    width: int = 8
    activation: str = "relu"
    dtype: str = "float32"

    @classmethod
    def full(cls) -> "Config":
        return cls(n_batches="4000", rhos=(0.025, 0.05, 0.1, 0.2, 0.4), points=(0, 100, 500, 1500, 3000), chunk=64,
                   groups=20)

    @classmethod
    def defaults(cls, args) -> "Config":
        base = cls.full() if getattr(args, "full", False) else cls()
        if getattr(args, "problem", "mlp") == "resnet":
            import dataclasses
            # around Table 1's ρ = 0.05: at ρ = 0.2 the Taylor series of this network's gradient
            # has not converged (at x₀ SAM-SDE3's drift mismatch is several times the drift)
            full = getattr(args, "full", False)
            return dataclasses.replace(base, problem="resnet", methods=("sam", "asam", "gsam"), n_train=4096,
                                       batch_size=32, points=(0, 100), n_batches=base.n_batches if full else "128",
                                       rhos=(0.0125, 0.025, 0.05, 0.1), paper_rho=0.05, trajectory_rho=0.05, chunk=8)
        if getattr(args, "problem", "mlp") in ("logcosh", "logistic"):
            import dataclasses
            return dataclasses.replace(base, problem=args.problem, n_batches="exact", dtype="float64",
                                       points=(0, 10), micro_batches=3, groups=3, chunk=64)
        return base

    def validate(self) -> "Config":
        from sdesam._checks import check_choice, check_int, check_nonnegative, check_positive
        check_choice("problem", self.problem, PROBLEMS)
        check_choice("dtype", self.dtype, {"float32", "float64"})
        check_choice("activation", self.activation, {"relu", "gelu"})
        if self.activation != "relu" and self.problem != "resnet":
            raise ValueError(f"--activation applies to --problem resnet only (got --problem {self.problem})")
        for m in self.methods:
            if m not in METHODS and ":" not in m:
                raise ValueError(f"--methods: {m!r} is neither one of {list(METHODS)} nor module:ClassName")
        for r in self.rhos:
            check_positive("rho", r)
        if len(self.rhos) < 2:
            raise ValueError("--rhos needs at least 2 values for the slopes")
        if any(p < 0 for p in self.points) or len(set(self.points)) != len(self.points):
            raise ValueError(f"--points must be distinct steps >= 0, got {self.points}")
        if self.n_batches != "exact":
            try:
                check_int("n_batches", int(self.n_batches), 2)
            except ValueError:
                raise ValueError(f"--n-batches must be 'exact' or an integer >= 2, got {self.n_batches!r}") from None
        for name in ("eta", "trajectory_rho", "paper_rho", "eig_tol"):
            check_positive(name, getattr(self, name))
        for name in ("alpha", "xi", "eta_f", "gsam_alpha"):
            check_nonnegative(name, getattr(self, name))
        WSAMUpdate(self.wsam_gamma)
        check_int("groups", self.groups, 2)
        check_int("projections", self.projections, 2)
        if self.problem in ("mlp", "resnet") and self.batch_size % self.micro_batches and "msam" in self.methods:
            raise ValueError(f"--micro-batches {self.micro_batches} must divide --batch-size {self.batch_size}")
        return self


def build_problem(cfg: Config, device, data_dir=None):
    if cfg.problem == "mlp":
        from sdesam.mnist_mlp import mnist_mlp_problem
        return mnist_mlp_problem(hidden=cfg.hidden, n_train=cfg.n_train, batch_size=cfg.batch_size, dtype=cfg.dtype,
                                 device=device, data_dir=data_dir, test=False)
    if cfg.problem == "resnet":
        from sdesam.data import load_dataset
        from sdesam.models import build_model
        from sdesam.problem import ModuleProblem
        train, _ = load_dataset("fashion_mnist", data_dir)
        n = cfg.n_train or train.images.shape[0]
        perm = torch.randperm(train.images.shape[0], generator=torch.Generator().manual_seed(0))[:n]
        x = (train.images[perm].float() / 255.0 - train.mean[0]) / train.std[0]
        torch.manual_seed(0)
        model = build_model("resnet18", 10, 1, width=cfg.width, norm="group", activation=cfg.activation)
        return ModuleProblem(model, "cross_entropy", x, train.labels[perm], cfg.batch_size,
                             dtype=getattr(torch, cfg.dtype), device=device,
                             name=f"resnet18-w{cfg.width}-group-{cfg.activation}")
    from sdesam.toys import make_toy_problem
    return make_toy_problem(cfg.problem).to(device, getattr(torch, cfg.dtype))


def _user_rule(spec: str):
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name, None)
    if not isinstance(cls, type) or not issubclass(cls, rules_mod.PerturbationRule):
        raise ValueError(f"--methods {spec!r}: {name} in {module} is not a sdesam.rules.PerturbationRule subclass")
    return cls()


def method_spec(cfg: Config, name: str) -> dict:
    """The moment_test keyword arguments (rule, update, micro_batches) of a method."""
    if ":" in name:
        return {"rule": _user_rule(name)}
    if name == "eigen_sam":
        return {"rule": rules_mod.EigenSAMRule(cfg.alpha)}
    return sam_family_member(name, **{k: getattr(cfg, k) for k in SAM_FAMILY_HYPERPARAMETERS})


def trajectory_points(cfg: Config, problem, output) -> dict[int, torch.Tensor]:
    """x at the steps ``cfg.points`` of one discrete SAM trajectory (seed ``cfg.seed``)."""
    path = output.file("points.pt")
    if path.exists():
        saved = torch.load(path, weights_only=True)
        return {int(k): v.to(problem.device, problem.dtype) for k, v in saved.items()}
    sam = make_dynamics("sam", problem, eta=cfg.eta, rho=cfg.trajectory_rho)
    state = sam.init_state(seed=cfg.seed)
    points = {}
    for k in sorted(cfg.points):
        sam.advance(state, k - state.step)
        points[k] = state.x[0].clone()
    with atomic_open(path, "wb") as f:
        torch.save({k: v.cpu() for k, v in points.items()}, f)
    return points


def top_eigenvector(cfg: Config, problem, x) -> tuple[torch.Tensor, dict]:
    """v̂ for Eigen-SAM: the top eigenvector of the Hessian over a fixed training subset at x."""
    if problem.dim <= 64:
        from sdesam.eigenpairs import full_hessian_top_eigenvector
        r = full_hessian_top_eigenvector(problem, x[None])
        return r.vector[0], {"eigenvalue": float(r.value[0]), "method": "dense"}
    n = min(cfg.eig_examples, problem.n_train)
    subset = torch.randperm(problem.n_train, generator=torch.Generator().manual_seed(cfg.seed))[:n].to(problem.device)
    sub = problem.subproblem(subset, n)
    op = HessianOperator.from_problem(sub, x, torch.arange(n, device=problem.device))
    res = lanczos(op, k=1, which="LA", tol=cfg.eig_tol, max_iters=100,
                  generator=torch.Generator().manual_seed(cfg.seed))
    return res.eigenvectors[:, 0].to(problem.dtype), {"eigenvalue": float(res.eigenvalues[0]),
                                                      "residual": float(res.residuals[0]),
                                                      "hvps": res.num_matvecs, "examples": n}


def run(cfg: Config, output, opts) -> dict:
    t_start = time.perf_counter()
    problem = build_problem(cfg, opts.device, opts.data_dir)
    points = trajectory_points(cfg, problem, output)
    parts = output.file("parts")
    parts.mkdir(exist_ok=True)
    results, walls = [], {}
    for k, x in sorted(points.items()):
        for name in cfg.methods:
            tag = name.replace(":", "-")
            path = parts / f"{k}-{tag}.json"
            if path.exists():
                import json
                results.append(json.loads(path.read_text()))
                continue
            t0 = time.perf_counter()
            spec = method_spec(cfg, name)
            extra = {}
            if name == "eigen_sam":
                spec["eigvec"], extra["eigenvector"] = top_eigenvector(cfg, problem, x)
            n_batches = cfg.n_batches if cfg.n_batches == "exact" else int(cfg.n_batches)
            res = moment_test(problem, x, cfg.rhos, n_batches=n_batches, chunk=cfg.chunk,
                              projections=cfg.projections, groups=cfg.groups, seed=cfg.seed + 1 + k, **spec)
            entry = {"point": k, "method": name, **res.to_dict(), **extra, "wall_s": time.perf_counter() - t0}
            output.json(f"parts/{k}-{tag}.json", entry)
            results.append(entry)
            walls[f"{k}/{name}"] = entry["wall_s"]
            if opts.progress:
                print(f"moment test: point {k}, {name}: {entry['wall_s']:.0f} s", flush=True)
    rows, slopes = [], []
    for e in results:
        for i, rho in enumerate(e["rhos"]):
            for j, m in enumerate(e["models"]):
                for q in ("drift", "cov"):
                    rows.append({"point": e["point"], "method": e["method"], "rho": rho, "model": m, "quantity": q,
                                 "mismatch": e[q][i][j], "se": e[f"{q}_se"][i][j], "relative": e[f"{q}_rel"][i][j]})
        for m, fits in e["slopes"].items():
            for q, f in fits.items():
                slopes.append({"point": e["point"], "method": e["method"], "model": m, "quantity": q,
                               "slope": None if f is None else f["slope"],
                               "ci_lo": None if not f or not f.get("ci95") else f["ci95"][0],
                               "ci_hi": None if not f or not f.get("ci95") else f["ci95"][1],
                               "theory": THEORY_SLOPES.get(m), "n_points": None if f is None else f["n_points"]})
    output.csv("moments.csv", ("point", "method", "rho", "model", "quantity", "mismatch", "se", "relative"), rows)
    output.csv("slopes.csv", ("point", "method", "model", "quantity", "slope", "ci_lo", "ci_hi", "theory",
                              "n_points"), slopes)
    at_paper = paper_rho_table(results, cfg.paper_rho)
    fig = plot(results, cfg, problem.name)
    output.figure(fig, "moment_test")
    summary = output.summary({"problem": problem.config(), "results": results, "slopes": slopes,
                              "relative_at_paper_rho": at_paper, "wall_s": walls},
                             opts.device, t_start)
    print(format_table(results, at_paper, cfg))
    return summary


def paper_rho_table(results, rho: float) -> list[dict]:
    """Relative mismatches (÷ the discrete moments) at the grid's ρ closest to ``rho``."""
    out = []
    for e in results:
        i = int(np.argmin(np.abs(np.array(e["rhos"]) - rho)))
        for j, m in enumerate(e["models"]):
            out.append({"point": e["point"], "method": e["method"], "rho": e["rhos"][i], "model": m,
                        "drift_rel": e["drift_rel"][i][j], "cov_rel": e["cov_rel"][i][j]})
    return out


def format_table(results, at_paper, cfg) -> str:
    lines = ["\n== one-step moment test: slopes against ρ (95% jackknife CI), theory 1 / 2 / 3 ==",
             f"{'point':>6} {'method':>12} {'model':>9}  {'drift slope':>22}  {'cov slope':>22}"]
    for e in results:
        for m, fits in e["slopes"].items():
            cells = []
            for q in ("drift", "cov"):
                f = fits[q]
                if f is None:
                    cells.append("(unresolved)".rjust(22))
                else:
                    ci = f.get("ci95")
                    cells.append((f"{f['slope']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")).rjust(22))
            lines.append(f"{e['point']:>6} {e['method'][:12]:>12} {m:>9}  " + "  ".join(cells))
    lines.append(f"\n== relative mismatch at ρ = {cfg.paper_rho:g} (drift ÷ ‖E Φ‖, cov ÷ ‖Cov Φ‖_F) ==")
    for r in at_paper:
        lines.append(f"{r['point']:>6} {r['method'][:12]:>12} {r['model']:>9}  drift {r['drift_rel']:.3e}  "
                     f"cov {r['cov_rel']:.3e}")
    return "\n".join(lines)


def plot(results, cfg: Config, problem_name: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    methods = list(dict.fromkeys(e["method"] for e in results))
    fig, axes = plt.subplots(2, len(methods), figsize=(3.3 * len(methods), 6.2), squeeze=False)
    colors = {"sgd_sde": "tab:gray", "sam_sde2": "tab:blue", "sam_sde3": "tab:red"}
    styles = ["-", "--", ":", "-."]
    for col, method in enumerate(methods):
        for row, q in enumerate(("drift", "cov")):
            ax = axes[row, col]
            for pi, e in enumerate(e for e in results if e["method"] == method):
                rhos = np.array(e["rhos"])
                for j, m in enumerate(e["models"]):
                    y, se = np.array(e[q])[:, j], np.array(e[f"{q}_se"])[:, j]
                    ax.errorbar(rhos, y, yerr=se, fmt="o", ls=styles[pi % 4], color=colors.get(m), ms=3, capsize=2,
                                label=f"{m} (x at step {e['point']})" if col == 0 and row == 0 else None)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("ρ")
            ax.set_title(f"{method}: {'‖E(Φ − w)‖' if q == 'drift' else '‖Cov Φ − Cov w‖_F (sketch)'}", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(f"{problem_name}: one-step mismatch of each SDE model against the discrete step; "
                 f"N = {cfg.n_batches} minibatches, bars ±1 jackknife SE", fontsize=9)
    fig.tight_layout()
    return fig


main = command("validation.moment_test", __doc__, Config, run, default_device="auto",
               choices={"problem": list(PROBLEMS), "dtype": ["float32", "float64"], "activation": ["relu", "gelu"]})


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("validation.moment_test")
