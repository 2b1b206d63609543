"""The examples: examples/scripting.py (shown verbatim in the README) and
examples/custom_rule.py, run here."""
import csv
import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(name, tmp_path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / name), run_name="__main__")
    return capsys.readouterr().out


def test_readme_shows_the_scripting_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = (ROOT / "examples" / "scripting.py").read_text()
    body = example.split('"""', 2)[2].lstrip("\n")        # the example without its docstring
    assert any(b.strip() == body.strip() for b in blocks), "README must show examples/scripting.py verbatim"


def test_scripting_example_runs_and_resumes(tmp_path, monkeypatch, capsys):
    out = _run("scripting.py", tmp_path, monkeypatch, capsys)
    rows = re.findall(r"^\s*40\s+([\d.]+) ± ([\d.]+)\s+([\d.]+) ± ([\d.]+)\s+([\d.]+) ± ([\d.]+)", out, re.M)
    assert rows, out
    sam, _, sde2, _, sde3, se3 = map(float, rows[0])
    assert abs(sde3 - sam) < abs(sde2 - sam)            # the third-order SDE is the closer model
    assert 0 < se3 < 0.01
    table = tmp_path / "runs" / "scripting" / "sdes" / "estimates.csv"
    first = table.read_text()
    with open(table) as f:
        keys = [(r["dynamics"], r["step"], r["test"]) for r in csv.DictReader(f)]
    assert len(keys) == len(set(keys)) == 2 * 5 * 2
    assert _run("scripting.py", tmp_path, monkeypatch, capsys) == out      # resumed from the chunks
    assert table.read_text() == first


def test_custom_rule_example_runs(tmp_path, monkeypatch, capsys):
    """A new rule in a few lines: its discrete method and SDE3 named after it."""
    out = _run("custom_rule.py", tmp_path, monkeypatch, capsys)
    found = dict(re.findall(r"^(sign_sam|sign_sam_sde3)\s+E loss at t = 2\.0: (\d\.\d{4})", out, re.M))
    assert set(found) == {"sign_sam", "sign_sam_sde3"}, out
    assert all(float(v) < 0.5 for v in found.values())
