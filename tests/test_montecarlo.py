"""sdesam.estimate: means and standard errors against direct loops, resumption, refusals,
common random numbers and antithetic pairs."""
import json

import numpy as np
import pytest
import torch

import sdesam
from sdesam.montecarlo import ChunkPlan, standard_tests
from sdesam.registry import make_dynamics
from sdesam.toys import make_toy_problem


def _toy():
    return make_toy_problem("logcosh")


def _tests(p):
    return {"loss": p.full_loss, "x0": lambda x: x[:, 0]}


def test_means_and_errors_equal_a_direct_loop_over_the_chunks():
    p = _toy()
    dyn = make_dynamics("sam", p, eta=0.05, rho=0.3)
    est = sdesam.estimate(dyn, _tests(p), steps=6, record_every=3, trajectories=48, chunk_size=16,
                          blocks_per_chunk=4, seed=(3, 1))
    values = []
    for c in range(3):
        s = dyn.init_state(p.x0.expand(16, 3), sdesam.montecarlo.chunk_seed((3, 1), c))
        rows = []
        for k in (0, 3, 6):
            dyn.advance(s, k - s.step)
            rows.append(torch.stack([p.full_loss(s.x), s.x[:, 0]], -1))
        values.append(torch.stack(rows, 1))
    v = torch.cat(values).numpy()                                   # (48, 3 records, 2 tests)
    assert np.allclose(est.mean("sam"), v.mean(0), rtol=0, atol=1e-14)
    blocks = v.reshape(12, 4, 3, 2).mean(1)
    assert np.allclose(est.se("sam"), blocks.std(0, ddof=1) / np.sqrt(12), rtol=1e-10)
    assert est.steps == (0, 3, 6) and est.tests == ("loss", "x0") and est.trajectories == 48
    rows = est.rows()
    assert len(rows) == 3 * 2 and {r["test"] for r in rows} == {"loss", "x0"}
    assert rows[-1]["time"] == pytest.approx(0.3)


def test_files_resume_and_refuse_another_configuration(tmp_path):
    p = _toy()
    dyn = make_dynamics("sam_sde3", p, eta=0.05, rho=0.3, n_batches="exact", substeps=2)
    kw = dict(steps=4, record_every=2, trajectories=32, chunk_size=8, seed=5, out=tmp_path / "e")
    calls = []
    a = sdesam.estimate(dyn, _tests(p), on_chunk=lambda *c: calls.append(c), **kw)
    assert len(calls) == 4
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    assert cfg["dynamics"]["sam_sde3"]["substeps"] == 2 and cfg["plan"]["trajectories"] == 32
    table = (tmp_path / "e" / "estimates.csv").read_text().splitlines()
    assert table[0] == "dynamics,step,time,test,mean,se,trajectories" and len(table) == 1 + 3 * 2
    b = sdesam.estimate(dyn, _tests(p), on_chunk=lambda *c: calls.append(c), **kw)
    assert len(calls) == 4                                          # nothing recomputed
    assert np.array_equal(a.stats["sam_sde3"].sums, b.stats["sam_sde3"].sums)
    other = make_dynamics("sam_sde3", p, eta=0.05, rho=0.4, n_batches="exact", substeps=2)
    with pytest.raises(ValueError, match=r"config.json holds an estimate of another configuration \(differs in "
                                         r"dynamics\)"):
        sdesam.estimate(other, _tests(p), **kw)
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        sdesam.estimate(dyn, _tests(p), **{**kw, "out": tmp_path / "f"})


def test_bad_arguments_are_refused_up_front():
    p = _toy()
    sam = make_dynamics("sam", p, eta=0.05, rho=0.3)
    twin = make_dynamics("sam", p, eta=0.05, rho=0.4)
    with pytest.raises(ValueError, match="two dynamics are both named 'sam'"):
        sdesam.estimate([sam, twin], _tests(p), steps=2)
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        sdesam.estimate(sam, _tests(p), steps=2, trajectories=10, chunk_size=4)
    with pytest.raises(ValueError, match="no standard error"):
        sdesam.estimate(sam, _tests(p), steps=2, trajectories=4, chunk_size=4, blocks_per_chunk=1)
    with pytest.raises(ValueError, match=r"must return a tensor of shape \(M,\)"):
        sdesam.estimate(sam, {"bad": lambda x: x}, steps=2, trajectories=8)
    with pytest.raises(ValueError, match="non-empty mapping"):
        sdesam.estimate(sam, {}, steps=2)
    with pytest.raises(ValueError, match="x0 must have shape"):
        sdesam.estimate(sam, _tests(p), steps=2, trajectories=8, x0=torch.zeros(2))
    anti = make_dynamics("sam_sde3", p, eta=0.05, rho=0.3, n_batches="exact", antithetic=True)
    with pytest.raises(ValueError, match="block size 3 must be even"):
        sdesam.estimate(anti, _tests(p), steps=2, trajectories=12, chunk_size=12, blocks_per_chunk=4)
    with pytest.raises(ValueError, match="multiple of blocks_per_chunk"):
        ChunkPlan(2, 10, 3)


def test_common_random_numbers_make_paired_differences_precise():
    """SDE2 and SDE3 share their Brownian increments: the SE of their difference is far
    below either SE alone (and the difference is the plain difference of the means)."""
    p = _toy()
    sdes = [make_dynamics(n, p, eta=0.05, rho=0.3, n_batches="exact", substeps=2) for n in ("sam_sde2", "sam_sde3")]
    est = sdesam.estimate(sdes, _tests(p), steps=10, record_every=10, trajectories=512, chunk_size=256)
    diff, se = est.difference("sam_sde3", "sam_sde2")
    assert np.allclose(diff, est.mean("sam_sde3") - est.mean("sam_sde2"), rtol=0, atol=1e-12)
    assert (se[-1] < 0.2 * est.se("sam_sde3")[-1]).all()


def test_antithetic_pairs_are_unbiased_and_reduce_the_variance():
    p = _toy()
    kw = dict(eta=0.05, rho=0.3, n_batches="exact", substeps=1)
    plain = make_dynamics("sam_sde3", p, **kw)
    anti = make_dynamics("sam_sde3", p, antithetic=True, **kw)
    est_kw = dict(steps=8, record_every=8, trajectories=4096, chunk_size=1024, blocks_per_chunk=64)
    a = sdesam.estimate(plain, {"x0": lambda x: x[:, 0]}, seed=1, **est_kw)
    b = sdesam.estimate(anti, {"x0": lambda x: x[:, 0]}, seed=2, **est_kw)
    se = np.sqrt(a.se("sam_sde3")[-1, 0] ** 2 + b.se("sam_sde3")[-1, 0] ** 2)
    assert abs(a.mean("sam_sde3")[-1, 0] - b.mean("sam_sde3")[-1, 0]) < 4 * se
    assert b.se("sam_sde3")[-1, 0] < 0.7 * a.se("sam_sde3")[-1, 0]
    s = anti.init_state(p.x0.expand(4, 3), 0)
    anti.advance(s, 1)
    mid = p.x0 + anti.eta * anti.f(0.0, p.x0[None])[0]
    assert torch.allclose((s.x[0] + s.x[1]) / 2, mid, atol=1e-12)  # one step: pairs mirror the drift step


def test_standard_tests_batch_the_loss_of_a_module_problem():
    from .problems import tiny_mlp_problem
    p = tiny_mlp_problem()
    tests = standard_tests(p, coordinate=-1, eval_examples=torch.arange(4))
    x = p.x0 + 0.01 * torch.randn(5, p.dim, dtype=p.dtype, generator=torch.Generator().manual_seed(0))
    sub = p.subproblem(torch.arange(4), 4)
    looped = torch.stack([sub.loss(xi, torch.arange(4)) for xi in x])
    assert torch.allclose(tests["loss"](x), looped, rtol=1e-12, atol=0)
    assert torch.equal(tests["coord"](x), x[:, -1]) and torch.allclose(tests["sqnorm"](x), (x * x).sum(-1))
    with pytest.raises(ValueError, match="coordinate must index"):
        standard_tests(p, coordinate=p.dim)
