"""The measurement commands of the causal chain: their probes and tables, on tiny inputs."""
import math

import pytest
import torch

from figures import causal_mlp
from sdesam import make_dynamics
from sdesam._streams import draw_batches
from sdesam.curvature import alignment
from sdesam.toys import logistic_problem
from validation import alignment_sweep

from .problems import DTYPE, flat_batch_loss, tiny_mlp_problem


def test_alignment_probe_measures_the_perturbation_of_the_step_before_the_record():
    p = tiny_mlp_problem()
    dyn = make_dynamics("sam", p, eta=0.1, rho=0.2)
    sub = p.subproblem(torch.arange(6), 6)
    probe = causal_mlp.AlignmentProbe(dyn, [0, 3], tol=1e-10, max_iters=50, subset_problem=sub, extra=2)
    state = dyn.init_state(seed=2)
    dyn.advance(state, 2)
    assert math.isnan(probe.value)                       # steps 0, 1 are not probed
    x = state.x[0].clone()
    dyn.advance(state, 1)                                # step 2 → record at 3
    batch = draw_batches(p, 2, 2, 1)[0, 0]
    g = p.gradient(x, batch)
    H = torch.autograd.functional.hessian(flat_batch_loss(p, batch), x)
    v1 = torch.linalg.eigh(H)[1][:, -1]
    assert abs(probe.value - float(alignment(g / g.norm(), v1))) < 1e-8
    (sample,) = probe.samples                            # Assumption B.2: gaps of H_γ and of the subset Hessian
    lam = torch.linalg.eigvalsh(H)
    assert sample["step"] == 2 and len(sample["relative_gap_minibatch"]) == 3
    assert sample["relative_gap_minibatch"][0] == pytest.approx(float((lam[-1] - lam[-2]) / lam.abs().max()), rel=1e-6)
    Hs = torch.autograd.functional.hessian(flat_batch_loss(sub, torch.arange(6)), x)
    ls, Vs = torch.linalg.eigh(Hs)
    assert sample["relative_gap_full"] == pytest.approx(float((ls[-1] - ls[-2]) / ls.abs().max()), rel=1e-6)
    assert sample["align_minibatch"][0] == pytest.approx(probe.value, abs=1e-8)
    assert sample["align_full"][0] == pytest.approx(float(alignment(g / g.norm(), Vs[:, -1])), abs=1e-6)
    # the probe does not change the trajectory
    plain = make_dynamics("sam", p, eta=0.1, rho=0.2)
    assert torch.equal(plain.advance(plain.init_state(seed=2), 3).x, state.x)


def _records(values: dict) -> list[dict]:
    """Tidy records for metric 'train_loss' and 'top_eigenvalue': values[dyn] = (seeds, steps) array."""
    out = []
    for dyn, arr in values.items():
        for s, row in enumerate(arr):
            for k, v in enumerate(row):
                for metric, val in (("train_loss", v), ("top_eigenvalue", 10 - v)):
                    out.append({"dynamics": dyn, "seed": s, "step": 10 * k, "time": 0.1 * k, "metric": metric,
                                "value": float(val)})
    return out


def test_tables_and_answers_follow_the_measured_numbers():
    base = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.2, 1.2]], dtype=DTYPE)
    recs = _records({"sam": base, "eigen_sam": base + 0.05, "sam_sde3": base + 0.3, "aligned_sde5": base + 0.1})
    tables = causal_mlp.discrepancy_tables(recs)
    assert set(tables) == {"sam", "eigen_sam"}
    rng = float((base + 0.3).mean(0).max() - base.mean(0).min())
    assert abs(tables["sam"]["train_loss"]["aligned_sde5"] - 0.1 / rng) < 1e-9
    assert abs(tables["eigen_sam"]["train_loss"]["aligned_sde5"] - 0.05 / rng) < 1e-9
    drops = causal_mlp.lambda_drop(recs)
    assert abs(drops["sam"]["mean"] - 1.9) < 1e-12          # λ₁ = 10 − loss rises by 2 and 1.8
    ans = causal_mlp.answers(recs)
    q1 = ans["Q1 does SAM-SDE3 track SAM better than Eq. 5?"]["train_loss"]
    assert q1["eq5_minus_sde3"] == pytest.approx((0.1 - 0.3) / rng) and q1["verdict"] == "no: Eq. 5 is closer"
    q2 = ans["Q2 is Eigen-SAM (and ideal Eigen-SAM) closer to Eq. 5 than SAM is?"]["eigen_sam"]["train_loss"]
    assert q2["sam_minus_eigen_sam"] == pytest.approx(0.05 / rng)
    q3 = ans["Q3 does λ1 fall faster under Eq. 5 than under Eq. 4?"]
    assert abs(q3["drop_eq5_minus_drop_eq4"]) < 1e-12


def test_verdicts_need_three_standard_errors():
    """Five seeds whose differences are resolved give verdicts; noise gives none."""
    steps = (0, 10, 20)
    recs = []
    g = torch.Generator().manual_seed(0)
    for s in range(5):
        for k, step in enumerate(steps):
            base = 3.0 - k + 0.01 * float(torch.randn(1, generator=g))
            for dyn, off in (("sam", 0.0), ("sam_sde3", 0.02), ("aligned_sde5", 0.3)):
                recs.append({"dynamics": dyn, "seed": s, "step": step, "time": step / 10, "metric": "train_loss",
                             "value": base + (off if k else 0.0) + 0.001 * s * (dyn == "aligned_sde5")})
    q1 = causal_mlp.answers(recs)["Q1 does SAM-SDE3 track SAM better than Eq. 5?"]["train_loss"]
    assert q1["eq5_minus_sde3"] > 3 * q1["se"] and q1["verdict"] == "yes: SAM-SDE3 is closer"
    assert causal_mlp._verdict(1.0, 0.5, "yes", "no") == "not resolved (+2.0 SE)"
    assert causal_mlp._verdict(-2.0, 0.5, "yes", "no") == "no"


def test_alignment_sweep_diagnostics_on_the_toy():
    cfg = alignment_sweep.Config(align_trajectories=8, horizon=0.2)
    aligned = alignment_sweep.alignment_and_gaps(logistic_problem(scales=(4.8, 0.6, 0.3)), cfg)
    loose = alignment_sweep.alignment_and_gaps(logistic_problem(scales=(0.6, 0.6, 0.3)), cfg)
    for d in (aligned, loose):
        assert 1 - math.sqrt(2) <= d["align"] <= 1 and 0 <= d["abs_cos"] <= 1
        assert d["gap_rho"] >= 0 and d["gap_rho2"] >= 0 and d["relative_gap_min"] > 0
    assert aligned["align"] > loose["align"]                 # conditioning sets the alignment
    assert aligned["gap_rho"] / aligned["sam_rho_term"] < loose["gap_rho"] / loose["sam_rho_term"]


def test_a_run_read_back_from_disk_aggregates_like_the_one_in_memory(tmp_path):
    # a second process aggregates the runs the first wrote: NaN records (the alignment
    # of step 0) must come back as floats, not as the strings JSON holds them in
    import numpy as np

    from figures import figure2
    from sdesam.experiment import read_json, write_json
    recs = _records({"sam": torch.tensor([[3.0, 2.0, 1.0]], dtype=DTYPE)})
    recs += [{"dynamics": "sam", "seed": 0, "step": 10 * k, "time": 0.1 * k, "metric": "alignment",
              "value": math.nan if k == 0 else -0.3} for k in range(3)]
    write_json(tmp_path / "run.json", {"records": recs, "config": {"eig_method": "lanczos"}})
    back = read_json(tmp_path / "run.json")
    assert back["config"] == {"eig_method": "lanczos"}
    mine, theirs = figure2.curves(recs), figure2.curves(back["records"])
    assert mine.keys() == theirs.keys()
    for key, (steps, vals) in mine.items():
        assert theirs[key][1].dtype == np.float64
        np.testing.assert_array_equal(theirs[key][1], vals)
        np.testing.assert_array_equal(theirs[key][0], steps)
