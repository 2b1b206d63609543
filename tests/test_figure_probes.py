"""figures.probes against dense linear algebra on tiny float64 networks and matrices."""
import json
import math

import pytest
import torch
from torch import nn

from figures.probes import (
    AlignmentProbe,
    PowerIterationProbe,
    SpectrumProbe,
    TrainingStopped,
    flat_gradient,
    hessian_mode,
    perturbation,
    power_alignment,
    spectrum_record,
)
from sdesam.curvature import HessianOperator, alignment, flatten_tensors
from sdesam.data import ImageDataset
from sdesam.optim import SAM, EigenSAM
from sdesam.training import CallbackContext

DT = torch.float64


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)


def batch(seed, n=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 12, generator=g, dtype=DT), torch.randint(0, 3, (n,), generator=g)


def dense_hessian_and_grad(model, x, y):
    """Independent reference: a function of one flat vector, torch.autograd.functional."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]

    def f(flat):
        chunks = torch.split(flat, [p.numel() for p in params])
        pd = {n: c.view_as(p) for n, c, p in zip(names, chunks, params)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, pd, (x,)), y)

    flat = flatten_tensors(params)
    return torch.autograd.functional.hessian(f, flat), torch.autograd.functional.jacobian(f, flat)


def images(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageDataset("toy", "train", torch.randint(0, 256, (n, 1, 3, 4), generator=g, dtype=torch.uint8),
                        torch.randint(0, 3, (n,), generator=g), 3, (0.5,), (0.25,))


def model_inputs(dataset, batch_size=None):
    x = ((dataset.images.to(DT) / 255 - 0.5) / 0.25).flatten(1)
    bs = batch_size or len(dataset)
    for i in range(0, len(dataset), bs):
        yield x[i:i + bs], dataset.labels[i:i + bs]


def context(model, optimizer, step=0, epoch=0, batch_=None, metrics=None):
    return CallbackContext(config=None, model=model, optimizer=optimizer, step=step, epoch=epoch,
                           loss_fn=nn.functional.cross_entropy, device=torch.device("cpu"), out_dir=None,
                           rank=0, world_size=1, model_inputs=model_inputs, train_data=images(),
                           test_data=None, batch=batch_, metrics=metrics)


def spd(evals, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(evals), len(evals), generator=g, dtype=DT))
    return (Q * torch.tensor(evals, dtype=DT)) @ Q.T


def test_alignment_probe_matches_dense_eigenvector_for_sam_and_sgd():
    model = tiny_net()
    x, y = batch(1)
    H, g = dense_hessian_and_grad(model, x, y)
    evals, evecs = torch.linalg.eigh(H)
    expected = alignment(g, evecs[:, -1]).item()
    probe = AlignmentProbe(every_steps=1, subset_every=1000, subset_examples=8, subset_batch_size=8,
                           tol=1e-10, max_iters=200)
    for opt in (SAM(model.parameters(), rho=0.05, lr=0.1), torch.optim.SGD(model.parameters(), lr=0.1)):
        rec = probe.on_step(context(model, opt, step=3, batch_=(x, y)))
        assert rec["align_minibatch"] == pytest.approx(expected, abs=1e-7)
        assert rec["minibatch_lambda1"] == pytest.approx(evals[-1].item(), rel=1e-9)
        assert rec["minibatch_lambda1_converged"] and "subset_lambda1" not in rec
    # Reverse-SAM perturbs along −g: the alignment is sign-blind, the ε is not
    rev = SAM(model.parameters(), rho=0.05, rule="reverse_sam", lr=0.1)
    assert torch.allclose(perturbation(rev, g), -g / g.norm())


def test_alignment_probe_subset_lambda1_and_final_record():
    model = tiny_net()
    probe = AlignmentProbe(every_steps=2, subset_every=4, subset_examples=16, subset_batch_size=5,
                           subset_seed=3, align=False, tol=1e-10, max_iters=200)
    ctx = context(model, torch.optim.SGD(model.parameters(), lr=0.1), step=8, batch_=batch(2))
    rec = probe.on_step(ctx)
    subset = images().subset(16, torch.Generator().manual_seed(3))
    xs, ys = next(model_inputs(subset))
    H, _ = dense_hessian_and_grad(model, xs, ys)            # mean over the 16 examples, batches of 5
    assert rec["subset_lambda1"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-9)
    assert "align_minibatch" not in rec
    final = probe.on_train_end(ctx)["final_sharpness"]
    assert final["step"] == 8 and final["subset_lambda1"] == pytest.approx(rec["subset_lambda1"], rel=1e-9)
    with pytest.raises(ValueError, match="multiple"):
        AlignmentProbe(every_steps=3, subset_every=4, subset_examples=8, subset_batch_size=8)


def test_eigen_sam_probe_uses_the_steps_vhat_and_leaves_the_trajectory_alone():
    """At a refresh step the probe runs the step's own Algorithm 1; the run with the probe
    equals the run without it, and ε is measured with the v̂ that the step then uses."""
    runs = []
    for with_probe in (True, False):
        model = tiny_net()
        opt = EigenSAM(model.parameters(), rho=0.1, alpha=0.5, p=2, q=3, seed=0, lr=0.1, model=model)
        probe = AlignmentProbe(every_steps=1, subset_every=1000, subset_examples=8, subset_batch_size=8,
                               tol=1e-10, max_iters=200)
        records, vhats = [], []
        for k in range(4):
            x, y = batch(10 + k)
            if with_probe:
                records.append(probe.on_step(context(model, opt, step=k + 1, batch_=(x, y))))
            opt.step(lambda model=model, x=x, y=y: nn.functional.cross_entropy(model(x), y))
            vhats.append(opt.eigenvector.clone())
        runs.append((flatten_tensors([p.detach() for p in model.parameters()]), vhats, records))
    (params_a, vhats_a, records), (params_b, vhats_b, _) = runs
    assert torch.allclose(params_a, params_b, rtol=0, atol=1e-13)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-13) for a, b in zip(vhats_a, vhats_b))
    # recompute the first record by hand with the v̂ the first step used
    model = tiny_net()
    x, y = batch(10)
    H, g = dense_hessian_and_grad(model, x, y)
    v1 = torch.linalg.eigh(H)[1][:, -1]
    opt = EigenSAM(model.parameters(), rho=0.1, alpha=0.5, p=2, q=3, seed=0, lr=0.1)
    opt.eigenvector = vhats_b[0]
    opt.has_estimate = True
    assert records[0]["align_minibatch"] == pytest.approx(alignment(opt.perturbation(g), v1).item(), abs=1e-7)
    assert records[0]["align_vhat"] == pytest.approx(alignment(vhats_b[0], v1).item(), abs=1e-7)


def test_hessian_mode_freezes_batchnorm_and_restores_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).to(DT)
    model.eval()
    x = torch.randn(6, 4, dtype=DT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with hessian_mode(model, "train"):
        assert model.training
        train_out = model(x)
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.allclose(train_out, model.train()(x))          # batch statistics were used
    with hessian_mode(model, "eval"):
        assert not model[1].training
    assert model.training
    with pytest.raises(ValueError, match="hessian mode"):
        with hessian_mode(model, "test"):
            pass
    g = flat_gradient(model, nn.functional.cross_entropy, (x, torch.tensor([0, 1, 0, 1, 1, 0])))
    assert g.shape == (sum(p.numel() for p in model.parameters()),)


def test_power_alignment_is_algorithm_1():
    A = spd([6.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    evecs = torch.linalg.eigh(A)[1]
    op = HessianOperator.from_function(lambda v: A @ v, 6, DT)
    v0 = torch.randn(6, generator=torch.Generator().manual_seed(1), dtype=DT)
    rows = power_alignment(op, evecs[:, -1], {"a": v0}, q_max=5)
    assert [r["q"] for r in rows] == list(range(6)) and rows[0]["eigenvalue_estimate"] is None
    v = v0 / v0.norm()
    for r in rows[1:]:
        assert r["eigenvalue_estimate"] == pytest.approx((v @ A @ v).item(), rel=1e-12)
        v = A @ v
        v = v / v.norm()
        assert r["alignment"] == pytest.approx(alignment(v, evecs[:, -1]).item(), abs=1e-12)
    assert rows[-1]["alignment"] > rows[1]["alignment"]       # gap 2: the estimate improves


def test_spectrum_record_against_dense_spectrum():
    evals = torch.linspace(-1.0, 4.0, 30, dtype=DT)
    A = spd(evals.tolist(), seed=2)
    op = HessianOperator.from_function(lambda v: A @ v, 30, DT)
    rec = spectrum_record(op, probes=40, steps=30, tol=1e-10, max_iters=60, seed=0)
    assert rec["lambda1"] == pytest.approx(4.0, rel=1e-9)
    assert abs(rec["trace"] - evals.sum().item()) <= 4 * rec["trace_stderr"]
    assert rec["trace_stderr"] > 0 and rec["slq_probes"] == 40 and rec["dim"] == 30
    weights = torch.tensor(rec["weights"], dtype=DT)
    assert torch.allclose(weights.sum(1), torch.ones(40, dtype=DT))
    nodes = torch.tensor([[math.nan if v is None else v for v in r] for r in rec["nodes"]])
    assert nodes[torch.isfinite(nodes)].max().item() <= 4.0 + 1e-9
    json.dumps(rec)                                              # stored in final.json


def test_spectrum_probe_on_a_network():
    model = tiny_net()
    probe = SpectrumProbe(examples=16, batch_size=8, seed=1, probes=3, steps=10, tol=1e-10, max_iters=100)
    rec = probe.on_train_end(context(model, None))["spectrum"]
    xs, ys = next(model_inputs(images().subset(16, torch.Generator().manual_seed(1))))
    H, _ = dense_hessian_and_grad(model, xs, ys)
    assert rec["lambda1"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-9)
    assert rec["examples"] == 16 and rec["mode"] == "eval" and len(rec["nodes"]) == 3


def test_power_iteration_probe_measures_then_stops(tmp_path):
    model = tiny_net()
    opt = EigenSAM(model.parameters(), rho=0.1, p=1, seed=0, lr=0.1)
    path = tmp_path / "probe.json"
    probe = PowerIterationProbe(at_epoch=2, path=path, minibatches=2, batch_size=6, starts=3, q_max=4,
                                ref_tol=1e-10)
    assert probe.on_epoch_end(context(model, opt, epoch=0, metrics={"test_accuracy": 0.5})) is None
    assert not path.exists()
    with pytest.raises(TrainingStopped):
        probe.on_epoch_end(context(model, opt, epoch=1, metrics={"test_accuracy": 0.5}))
    result = json.loads(path.read_text())
    assert result["epoch"] == 2 and len(result["minibatches"]) == 2
    mb = result["minibatches"][0]
    assert {r["start"] for r in mb["rows"]} == {"random0", "random1", "random2", "warm"}
    assert len(mb["rows"]) == 4 * 5
    xs, ys = next(model_inputs(images().subset(12, torch.Generator().manual_seed(0)), 6))
    H, _ = dense_hessian_and_grad(model, xs, ys)
    assert mb["reference"]["lambda1"] == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-9)
    warm0 = next(r for r in mb["rows"] if r["start"] == "warm" and r["q"] == 0)
    assert warm0["alignment"] == pytest.approx(
        alignment(opt.eigenvector, torch.linalg.eigh(H)[1][:, -1]).item(), abs=1e-7)
