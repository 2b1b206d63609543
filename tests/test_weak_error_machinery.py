"""The weak-error estimation machinery on cases with known answers.

* Power-law fits on exact power laws.
* The bootstrap standard error of a single-step error equals the analytic one.
* Block statistics equal the raw per-trajectory values they summarise.
* A small version of the experiment with exact expectations: SGD against the
  Euler–Maruyama SGD-SDE on a quadratic (a linear SDE), where the weak error is known
  in closed form (``validation.linear``) for every η.
"""
import numpy as np
import pytest
import torch

from sdesam.montecarlo import BlockStats, ChunkPlan, chunk_seed, estimate, run_chunk
from sdesam.parallel import Comm
from sdesam.registry import make_dynamics
from sdesam.toys import make_toy_problem, quadratic_problem
from validation.experiment import check_geometric, num_steps, sweep_eta
from validation.linear import exact_weak_errors, quadratic_moments
from validation.stats import fit_power_law, weak_errors

pytestmark = pytest.mark.usefixtures("one_thread")


def test_power_law_fit_recovers_exact_power_laws():
    x = np.geomspace(0.01, 0.1, 5)
    for p in (1 / 3, 2 / 3, 1.0, 2.0):
        fit = fit_power_law(x, 3.0 * x ** p)
        assert fit.slope == pytest.approx(p, abs=1e-12)
        assert fit.intercept == pytest.approx(np.log(3.0), abs=1e-10)
        assert fit.ci_regression[0] == pytest.approx(p, abs=1e-6)
        assert fit.ci_regression[1] == pytest.approx(p, abs=1e-6)
    rng = np.random.default_rng(0)
    reps = 3.0 * x ** 1.0 * np.exp(0.05 * rng.standard_normal((2000, x.size)))
    fit = fit_power_law(x, 3.0 * x, reps)
    lo, hi = fit.ci_bootstrap
    assert lo < 1.0 < hi and hi - lo < 0.2
    with pytest.raises(ValueError, match="positive"):
        fit_power_law(x, -x)


def _stats_from_values(values: np.ndarray, block_size: int) -> BlockStats:
    """values (M, R, T) → BlockStats with blocks of consecutive trajectories."""
    M, R, T = values.shape
    v = values.reshape(M // block_size, block_size, R, T)
    return BlockStats(v.sum(1), (v * v).sum(1), block_size, tuple(range(R)), tuple(f"t{j}" for j in range(T)))


def test_bootstrap_se_of_a_single_step_error_matches_the_analytic_se():
    rng = np.random.default_rng(1)
    ref = _stats_from_values(rng.normal(0.0, 1.0, (20_000, 1, 1)), 100)
    mod = _stats_from_values(rng.normal(0.5, 2.0, (20_000, 1, 1)), 100)
    summary, reps = weak_errors(ref, {"m": mod}, n_boot=2000, rng=np.random.default_rng(2))
    s = summary["m"]["t0"]
    analytic = np.sqrt(1.0 / 20_000 + 4.0 / 20_000)
    assert s["se_at_argmax"] == pytest.approx(analytic, rel=0.03)
    assert s["se"] == pytest.approx(analytic, rel=0.1)
    assert abs(s["error"] - 0.5) < 4 * analytic
    assert reps["m"].shape == (2000, 1)


def test_block_statistics_equal_the_raw_values():
    problem = make_toy_problem("logcosh")
    dyn = make_dynamics("sam", problem, eta=0.05, rho=0.3)
    tests = {"loss": problem.full_loss, "x0": lambda x: x[:, 0]}
    st = run_chunk(dyn, problem.x0, 123, chunk_size=12, blocks_per_chunk=3, record_steps=[0, 2, 5], tests=tests)
    state = dyn.init_state(problem.x0.expand(12, 3), 123)
    raw = []
    for k in (0, 2, 5):
        dyn.advance(state, k - state.step)
        raw.append(torch.stack([problem.full_loss(state.x), state.x[:, 0]], -1).numpy())
    raw = np.stack(raw, 1)                                          # (12, 3 records, 2 tests)
    assert np.allclose(st.sums, raw.reshape(3, 4, 3, 2).sum(1), rtol=0, atol=1e-13)
    assert np.allclose(st.mean(), raw.mean(0), rtol=0, atol=1e-13)
    assert np.allclose(st.naive_standard_error(), raw.std(0, ddof=1) / np.sqrt(12), rtol=1e-10)
    block_means = raw.reshape(3, 4, 3, 2).mean(1)
    assert np.allclose(st.standard_error(), block_means.std(0, ddof=1) / np.sqrt(3), rtol=1e-10)
    assert st.steps == (0, 2, 5) and st.tests == ("loss", "x0")


def test_a_chunk_does_not_depend_on_which_other_chunks_run(tmp_path):
    problem = make_toy_problem("logcosh")
    dyn = make_dynamics("sam_sde3", problem, eta=0.05, rho=0.3, n_batches="exact", substeps=2)
    kw = dict(record_at=[0, 1, 3], tests={"x0": lambda x: x[:, 0]}, trajectories=24, chunk_size=8,
              blocks_per_chunk=2, seed=(5, 6))
    full = estimate(dyn, out=tmp_path, **kw)
    for c in (0, 1):                                            # chunk 2 alone, the others from files
        assert (tmp_path / "chunks" / "sam_sde3" / f"{c}.npz").exists()
    (tmp_path / "chunks" / "sam_sde3" / "2.npz").unlink()
    again = estimate(dyn, out=tmp_path, **kw)
    assert np.array_equal(full.stats["sam_sde3"].sums, again.stats["sam_sde3"].sums)
    alone = run_chunk(dyn, problem.x0, chunk_seed((5, 6), 2), chunk_size=8, blocks_per_chunk=2,
                      record_steps=[0, 1, 3], tests=kw["tests"])
    assert np.array_equal(full.stats["sam_sde3"].sums[4:], alone.sums)
    sums = full.stats["sam_sde3"].sums
    assert not np.array_equal(sums[:2], sums[2:4])              # chunks get their own seeds


def test_chunks_are_round_robin_and_seeds_depend_only_on_key_and_chunk():
    assert Comm(1, 3).my_chunks(8) == [1, 4, 7]
    assert Comm().my_chunks(3) == [0, 1, 2]
    assert chunk_seed((0, 1, 2), 3) == chunk_seed((0, 1, 2), 3) != chunk_seed((0, 1, 2), 4)
    assert Comm().gather({1: "b", 0: "a"}) == {0: "a", 1: "b"}
    with pytest.raises(ValueError, match="multiple"):
        ChunkPlan(2, 10, 3)


def test_grid_and_horizon_checks():
    assert check_geometric("etas", [0.1, 0.05, 0.025, 0.0125], 4) == [0.1, 0.05, 0.025, 0.0125]
    with pytest.raises(ValueError, match="geometric"):
        check_geometric("etas", [0.1, 0.05, 0.02, 0.01], 4)
    with pytest.raises(ValueError, match="at least 4"):
        check_geometric("etas", [0.1, 0.05, 0.025], 4)
    assert num_steps(1.0, 0.0125) == 80
    with pytest.raises(ValueError, match="multiple"):
        num_steps(1.0, 0.03)


def test_closed_form_moments_match_a_direct_simulation_of_sgd():
    problem = make_toy_problem("quadratic")
    eta, n = 0.1, 6
    dyn = make_dynamics("sgd", problem, eta=eta)
    state = dyn.init_state(problem.x0.expand(100_000, 1), 0)
    dyn.advance(state, n)
    mom = quadratic_moments(problem, eta, n)
    x = state.x[:, 0].numpy()
    assert x.mean() == pytest.approx(mom["coord"][-1], abs=4 * x.std() / np.sqrt(x.size))
    assert (x * x).mean() == pytest.approx(mom["sqnorm"][-1], abs=4 * (x * x).std() / np.sqrt(x.size))


def test_small_experiment_recovers_the_known_weak_error_of_a_linear_sde():
    """SGD vs Euler–Maruyama (m = 2) of the SGD-SDE on a quadratic, exact expectations.

    The estimated E(η) must agree with the closed form within 4 bootstrap SEs (plus
    the upward noise bias of a max, bounded by its bootstrap excess), and the
    bootstrap interval of the fitted slope must contain the closed-form slope (≈ 1).
    """
    problem = quadratic_problem(targets=(-0.5, 0.0, 0.25, 1.25), x0=3.0)
    etas, T, m = [0.2, 0.1, 0.05, 0.025], 1.0, 2
    tests = {"coord": lambda x: x[:, 0], "sqnorm": lambda x: (x * x).sum(-1), "loss": problem.full_loss}
    plan = ChunkPlan(n_chunks=4, chunk_size=2000, blocks_per_chunk=10)
    res = sweep_eta(problem, etas=etas, c=1.0, horizon=T, seed=3, tests=tests, plan=plan, comm=Comm(),
                    n_boot=400, discrete="sgd",
                    models={"sgd_sde": ("sgd_sde", {"n_batches": "exact", "substeps": m})})
    for eta, e in zip(etas, res["settings"]):
        n = num_steps(T, eta)
        curves = e["curves"]
        assert curves["steps"] == list(range(n + 1))              # every step, the last included
        sgd, em = quadratic_moments(problem, eta, n), quadratic_moments(problem, eta, n, m)
        for j, t in enumerate(tests):                             # the mean curves, step by step
            for exact, mean, se in ((sgd[t], curves["discrete_mean"], curves["discrete_se"]),
                                    (em[t], curves["model_mean"]["sgd_sde"], curves["model_se"]["sgd_sde"])):
                mean, se = np.array(mean)[:, j], np.array(se)[:, j]
                assert (np.abs(mean - exact)[1:] < 5 * se[1:]).all(), (eta, t)
                assert mean[0] == exact[0]
    for t in tests:
        exact = [exact_weak_errors(problem, eta, T, m)[t] for eta in etas]
        est = [e["errors"]["sgd_sde"][t] for e in res["settings"]]
        for ex, es in zip(exact, est):
            assert abs(es["error"] - ex) < 4 * es["se"] + max(0.0, es["boot_mean"] - es["error"]), (t, ex, es)
        exact_slope = fit_power_law(etas, exact).slope
        assert abs(exact_slope - 1.0) < 0.15, exact_slope
        lo, hi = res["fits"]["sgd_sde"][t]["ci_bootstrap"]
        assert lo <= exact_slope <= hi, (t, exact_slope, lo, hi)
        assert hi - lo < 0.5
