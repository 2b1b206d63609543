"""The readable summary of a GPU-check report: ``format_summary(report) -> summary.md``.

The summary starts with OK or FAILURES, the machine and versions, a table of the parts
(status, wall time, limit), then a section of key numbers per part, each built by the
part's summary function in ``SUMMARIES`` from that part's ``results``. A summary
function that fails on unexpected results gives a one-line note instead: the summary
itself never fails.
"""
from __future__ import annotations

__all__ = ["format_summary", "SUMMARIES"]


def _fmt(v, spec=".3g") -> str:
    """A number in ``spec`` format; ``-`` for None; anything else as text."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return "-" if v is None else str(v)


def _hours(s) -> str:
    """Seconds as ``N s``, or ``N.N h`` from one hour on; ``-`` for None."""
    return "-" if s is None else (f"{s / 3600:.1f} h" if s >= 3600 else f"{s:.0f} s")


def format_summary(report: dict) -> str:
    """report.json → summary.md (the key numbers of each part)."""
    parts = report["parts"]
    env = parts.get("env", {}).get("results", {}).get("env", {})
    gpus = ", ".join(f"{g['name']} ({g['memory_GiB']} GiB)" for g in env.get("gpus", [])) or "none"
    lines = [f"# sdesam GPU check — {'OK' if report.get('ok') else 'FAILURES'}", "",
             f"- date: {report['date_utc']}; host: {report['hostname']}; commit: {report['git_commit']}",
             f"- device: {report['device']}{' (--small)' if report['small'] else ''}; GPU: {gpus}",
             f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda_runtime', '-')}, cuDNN {env.get('cudnn', '-')}, "
             f"NCCL {env.get('nccl', '-')}, Python {report['python']}, {report['cpu_count']} CPUs",
             f"- total wall time {report.get('total_wall_s', 0):.0f} s; load average before "
             f"{report['load_average_before']}, after {report.get('load_average_after')}", "",
             "| part | status | wall s | limit s |", "|---|---|---|---|"]
    for name, p in parts.items():
        lines.append(f"| {name} | {p['status'][:160]} | {_fmt(p['wall_s'])} | {p['limit_s']:g} |")
    for name, p in parts.items():
        r = p.get("results", {})
        try:
            body = SUMMARIES.get(name, lambda r: [])(r) if r else []
        except Exception as exc:                       # noqa: BLE001 — the summary must not fail
            body = [f"- (summary not available: {type(exc).__name__}: {exc}; see report.json)"]
        if body:
            lines += ["", f"## {name}", "", *body]
    return "\n".join(lines) + "\n"


def _sum_compare(r):
    out = []
    for dtype in ("float64", "float32"):
        e = r.get(f"max_rel_err_{dtype}")
        if not e:
            continue
        o = e.get("oracles", {})
        tol = r.get("setup", {}).get("tolerance", {}).get(dtype)
        out.append(f"- {dtype} (tolerance {_fmt(tol, 'g')}): oracles "
                   + ", ".join(f"{k} {_fmt(v, '.1e')}" for k, v in o.items())
                   + "; one step: " + ", ".join(f"{k} {_fmt(v, '.1e')}" for k, v in e.get("steps", {}).items()))
    return out


def _sum_oracles(r):
    keys = ("gradient_ms", "v2_over_gradient", "v2_generic_autograd_over_gradient", "sam_step_over_gradient",
            "sde3_step_over_gradient")
    out = []
    for label, v in r.items():
        if isinstance(v, dict) and "gradient_ms" in v:
            out.append(f"- {label}: " + ", ".join(f"{k} {_fmt(v.get(k))}" for k in keys))
    return out


def _sum_figure2(r):
    out = []
    if "seconds_per_step" in r:
        out.append("- seconds per step: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["seconds_per_step"].items()))
    if "metrics" in r:
        out.append(f"- one evaluation of the six metrics: {_fmt(r['metrics']['seconds'])} s")
    if "extrapolated" in r:
        out.append(f"- extrapolated `figures.figure2 --full`: {_hours(r['extrapolated']['total_s'])}")
    return out


def _sum_weak(r):
    out = [f"- {k}: {_fmt(v['trajectory_steps_per_s'])} trajectory-steps/s; "
           + "; ".join(f"{_fmt(x)} {n.replace('_per_s', '/s')}" for n, x in v.items() if n.startswith("trajectories"))
           for k, v in r.get("runs", {}).items()]
    if "extrapolated" in r:
        out.append(f"- extrapolated `weak_error --problem mlp --full`: {_hours(r['extrapolated']['mode_eta_total_s'])}")
    return out


def _sum_training(r):
    out = []
    for k, v in r.get("trainer", {}).items():
        mem = v.get("peak_memory_GiB")
        out.append(f"- {k}: {_fmt(v['images_per_s'], '.0f')} images/s, {_fmt(v['seconds_per_step'])} s/step"
                   + (f", peak {mem:.2f} GiB" if mem is not None else ""))
    ratio = r.get("eigen_sam_over_sam_step_time", {})
    if ratio:
        out.append(f"- Eigen-SAM / SAM step time (p={ratio.get('p')}, q={ratio.get('q')}): "
                   f"fp32 {_fmt(ratio.get('fp32'), '.4f')}, bf16 {_fmt(ratio.get('bf16'), '.4f')} "
                   f"(paper {_fmt(ratio.get('paper_estimate'), '.3f')})")
    for k, v in r.get("plain_pytorch_sgd", {}).items():
        out.append(f"- plain PyTorch SGD {k}: {_fmt(v['images_per_s'], '.0f')} images/s; trainer SGD / plain "
                   f"{_fmt(v.get('trainer_sgd_over_plain_images_per_s'))}")
    ex = r.get("extrapolated")
    if ex:
        out.append(f"- extrapolated Table 1 cell (CIFAR-10, ResNet-18, Eigen-SAM, {ex['precision']}): "
                   f"{_hours(ex['cell_cifar10_resnet18_eigen_sam_s'])}; grid ({', '.join(ex['grid_models'])}; "
                   f"{ex['seeds']} seeds): {_hours(ex['grid_s'])} on one GPU")
    return out


def _sum_ddp(r):
    if "max_abs_diff_vs_combined_batch" not in r:
        return []
    return [f"- {r.get('setup', {}).get('nproc')} process(es), backend {r.get('backend')}: max |DDP − combined batch| "
            + ", ".join(f"{k} {_fmt(v, '.1e')}" for k, v in r["max_abs_diff_vs_combined_batch"].items())]


def _sum_env(r):
    return [f"- {k}: {v}" for k, v in r.get("env", {}).items() if k in ("gpus", "tf32_matmul", "tf32_cudnn",
                                                                       "torchsde_installed", "driver_smi")]


def _sum_cuda_tests(r):
    return [f"- `{r['pytest']['command']}`: {r['pytest']['outcomes']}"] if "pytest" in r else []


#: part name → function(results) -> lines of its section
SUMMARIES = {"env": _sum_env, "cuda_tests": _sum_cuda_tests, "compare": _sum_compare, "oracles": _sum_oracles,
              "figure2": _sum_figure2, "weak_error": _sum_weak, "training": _sum_training, "ddp": _sum_ddp}
