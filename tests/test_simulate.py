"""The simulation driver: tidy records, streaming to disk, exact resume."""
import pytest

from sdesam.registry import make_dynamics
from sdesam.simulate import RECORD_FIELDS, RecordWriter, read_records, record_steps, run_trajectory, simulate

from .problems import logcosh_problem


def metrics_of(problem):
    return {"loss": lambda x: float(problem.full_loss(x)), "x0": lambda x: float(x[0])}


def test_simulate_writes_tidy_records(tmp_path):
    problem = logcosh_problem()
    dyns = [make_dynamics("sam", problem, eta=0.1, rho=0.2),
            make_dynamics("sam_sde3", problem, eta=0.1, rho=0.2, n_batches="exact")]
    out = tmp_path / "records.csv"
    recs = simulate(dyns, steps=7, record_every=3, metrics=metrics_of(problem), seeds=[0, 1], out=out,
                    progress=False)
    assert len(recs) == 2 * 2 * 4 * 2                     # dynamics × seeds × steps {0,3,6,7} × metrics
    back = read_records(out)
    assert [tuple(r[k] for k in RECORD_FIELDS) for r in back] == [tuple(r[k] for k in RECORD_FIELDS) for r in recs]
    assert {r["step"] for r in recs} == {0, 3, 6, 7}
    assert all(r["time"] == pytest.approx(0.1 * r["step"]) for r in recs)
    assert {r["dynamics"] for r in recs} == {"sam", "sam_sde3"}
    first = [r["value"] for r in recs if r["step"] == 0 and r["metric"] == "loss"]
    assert len(set(first)) == 1                           # every run starts from the same x₀
    assert record_steps(7, 3) == [0, 3, 6, 7]


def test_records_stream_as_they_are_produced(tmp_path):
    problem = logcosh_problem()
    out = tmp_path / "r.csv"
    seen = []
    with RecordWriter(out) as w:
        run_trajectory(make_dynamics("sgd", problem, eta=0.1), steps=[0, 1, 2], metrics=metrics_of(problem),
                       writer=w, on_record=lambda k: seen.append(len(read_records(out))))
    assert seen == [2, 4, 6]


def test_checkpointed_run_resumes_exactly(tmp_path):
    problem = logcosh_problem()
    dyn = make_dynamics("eigen_sam", problem, eta=0.1, rho=0.2, p=2, q=2)
    full = run_trajectory(dyn, steps=range(0, 9, 2), metrics=metrics_of(problem), seed=3)
    ckpt = tmp_path / "run.pt"

    class Interrupt(Exception):
        pass

    def stop_at_4(k):
        if k == 4:
            raise Interrupt
    with pytest.raises(Interrupt):
        run_trajectory(dyn, steps=range(0, 9, 2), metrics=metrics_of(problem), seed=3, checkpoint=ckpt,
                       on_record=stop_at_4)
    resumed = run_trajectory(dyn, steps=range(0, 9, 2), metrics=metrics_of(problem), seed=3, checkpoint=ckpt)
    assert resumed == full
    other = make_dynamics("eigen_sam", problem, eta=0.1, rho=0.3, p=2, q=2)
    with pytest.raises(ValueError, match="another configuration"):
        run_trajectory(other, steps=[0, 2], metrics=metrics_of(problem), seed=3, checkpoint=ckpt)
