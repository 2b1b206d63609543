"""The README's scripting example is this repository's examples/scripting.py, run here."""
import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_the_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    example = (ROOT / "examples" / "scripting.py").read_text()
    body = example.split('"""', 2)[2].lstrip("\n")        # the example without its docstring
    assert any(b.strip() == body.strip() for b in blocks), "README must show examples/scripting.py verbatim"


def test_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(ROOT / "examples" / "scripting.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert re.search(r"sam\s+train loss at t = 2.0: \d\.\d{4}", out)
    assert re.search(r"sam_sde3\s+train loss at t = 2.0: \d\.\d{4}", out)
    assert (tmp_path / "runs" / "scripting" / "records.csv").stat().st_size > 0
