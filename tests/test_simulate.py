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


def test_a_rerun_into_the_same_file_resumes_by_key_and_another_configuration_is_refused(tmp_path):
    problem = logcosh_problem()
    out = tmp_path / "records.csv"
    dyns = [make_dynamics("sam", problem, eta=0.1, rho=0.2)]
    first = simulate(dyns, steps=4, record_every=2, metrics=metrics_of(problem), seeds=[0], out=out, progress=False)
    cfg = (tmp_path / "records.csv.json").read_text()
    assert '"rho": 0.2' in cfg and '"rule": "sam"' in cfg
    again = simulate(dyns, steps=4, record_every=2, metrics=metrics_of(problem), seeds=[0, 1], out=out,
                     progress=False)
    rows = read_records(out)
    keys = [(r["dynamics"], r["seed"], r["step"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 3 * 2                # seed 0 not written twice
    assert [r for r in again if r["seed"] == 0] == first
    other = [make_dynamics("sam", problem, eta=0.05, rho=0.2)]
    with pytest.raises(ValueError, match=r"records.csv holds records of another configuration \(see "
                                         r"records.csv.json; differs in dynamics\)"):
        simulate(other, steps=4, record_every=2, metrics=metrics_of(problem), out=out, progress=False)
    with pytest.raises(ValueError, match="seeds must be distinct"):
        simulate(dyns, steps=4, record_every=2, metrics=metrics_of(problem), seeds=[1, 1], progress=False)


def test_two_dynamics_of_one_name_need_labels():
    problem = logcosh_problem()
    a = make_dynamics("asam", problem, eta=0.1, rho=0.2, xi=0.0)
    b = make_dynamics("asam", problem, eta=0.1, rho=0.2, xi=0.1)
    with pytest.raises(ValueError, match=r"two dynamics are both named 'asam' .* pass a mapping"):
        simulate([a, b], steps=2, record_every=1, metrics=metrics_of(problem), progress=False)
    recs = simulate({"asam_xi0": a, "asam_xi0.1": b}, steps=2, record_every=1, metrics=metrics_of(problem),
                    progress=False)
    assert {r["dynamics"] for r in recs} == {"asam_xi0", "asam_xi0.1"}
