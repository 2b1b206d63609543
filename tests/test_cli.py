"""The ``sdesam`` command: every subcommand dispatches to its module's ``main`` (the same
parser as ``python -m <module>``), ``sdesam --help`` lists them, and a user's mistake ends
in one line ``<prog>: error: ...`` with exit status 2 (Ctrl-C: one line, 130)."""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdesam import cli

ROOT = Path(__file__).resolve().parents[1]

#: one bad option per command, refused before any training, simulation or timing
BAD_OPTION = {
    "figure2": (["--steps", "0"], "--steps must be >= 1, got 0"),
    "moment-test": (["--rhos", "0.1"], "--rhos needs at least 2 values"),
    "figure1": (["--seeds", "-1"], "--seeds must be integers >= 0, got [-1]"),
    "figure3": (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    "figure5": (["--minibatches", "0"], "--minibatches must be >= 1, got 0"),
    "table1": (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    "table_p": (["--seeds", "0", "0"], "--seeds lists 0 twice"),
    "appendix_a": (["--train-subset", "0"], "--train-subset must be >= 1, got 0"),
    "weak-error": (["--trajectories", "0"], "--trajectories must be >= 1, got 0"),
    "svag": (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    "train": (["--epochs", "0"], "epochs must be an integer >= 1"),
    "bench oracles": (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "bench eigensam": (["--width", "0"], "--width must be >= 1, got 0"),
    "bench curvature": (["--data", "nope"], "--data must be 'mnist', 'synthetic' or 'npz:PATH'"),
    "causal-mlp": (["--seeds", "-1"], "--seeds must be distinct integers >= 0, got [-1]"),
    "alignment-sweep": (["--n-chunks", "0"], "--n-chunks must be >= 1, got 0"),
    "eigen-weak-error": (["--chunk-size", "0"], "--chunk-size must be >= 1, got 0"),
    "bench causal": (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    "bench gpu": (["--parts", "nope"], "nope"),
}


def _status(call):
    """Exit status of ``call()``: its return value, or the status of the ``SystemExit`` it
    raised (argparse exits by itself after --help and on a syntax error)."""
    try:
        return call()
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code


def test_every_command_has_a_bad_option_test_and_a_module():
    assert set(BAD_OPTION) == set(cli.COMMANDS)
    for command in cli.COMMANDS.values():
        assert callable(importlib.import_module(command.module).main)


def test_help_lists_every_command_with_its_module_and_the_version(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name, command in cli.COMMANDS.items():
        (line,) = [l for l in out.splitlines() if l.startswith(f"  {name} ")]
        assert command.summary in line and f"[python -m {command.module}]" in line
    assert cli.main(["--version"]) == 0
    import sdesam
    assert capsys.readouterr().out.strip() == f"sdesam {sdesam.__version__}"
    assert "--debug" in out and cli.DEBUG_ENV in out


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_subcommand_dispatches_to_the_module_main(name, monkeypatch):
    module = importlib.import_module(cli.COMMANDS[name].module)
    calls = []
    monkeypatch.setattr(module, "main", lambda argv: calls.append((argv, sys.argv[0])) or 7)
    assert cli.main([*name.split(), "--some", "x", "--debug"]) == 7
    assert calls == [(["--some", "x"], f"sdesam {name}")]


def _options(help_text: str) -> set:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text))


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_subcommand_help_is_the_module_help(name, capsys):
    """``sdesam X --help`` and ``python -m <module> --help`` print the same parser's help
    (compared by the options listed: argparse wraps the usage by the program name)."""
    module = importlib.import_module(cli.COMMANDS[name].module)
    assert _status(lambda: cli.main([*name.split(), "--help"])) == 0
    via_sdesam = capsys.readouterr().out
    assert _status(lambda: cli.run_main(module.main, f"python -m {module.__name__}", ["--help"])) == 0
    via_module = capsys.readouterr().out
    assert via_sdesam.startswith(f"usage: sdesam {name}")
    assert _options(via_sdesam) == _options(via_module) and len(_options(via_module)) >= 3


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_a_bad_option_gives_one_line_and_status_2(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                  # default output folders land here, if any
    flags, message = BAD_OPTION[name]
    assert _status(lambda: cli.main([*name.split(), *flags])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"sdesam {name}: error: ") and message in err[-1], err
    assert not any("Traceback" in line for line in err)
    assert not (tmp_path / "runs").exists()      # refused before anything was written


def _one_line_refusal(capsys, argv) -> str:
    """The stderr line of ``sdesam <argv>``, which must end with status 2 and print one line."""
    assert _status(lambda: cli.main(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sdesam {argv[0]}") and ": error: " in err[0], err
    return err[0]




@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_refuses_an_unknown_device_in_one_line(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_line_refusal(capsys, [*name.split(), "--device", "gpu"])
    assert "gpu" in line and "cuda" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_refuses_an_output_directory_that_is_a_file(name, capsys, tmp_path, monkeypatch):
    flag = cli.COMMANDS[name].out_flag
    assert _status(lambda: cli.main([*name.split(), "--help"])) == 0
    if flag not in _options(capsys.readouterr().out):
        pytest.skip(f"{name} writes no output directory")
    monkeypatch.chdir(tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("kept")
    line = _one_line_refusal(capsys, [*name.split(), flag, str(a_file)])
    assert str(a_file) in line
    assert a_file.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["a-file"]


#: the commands that read a data set, with the options that make them read one
READS_DATA = {"figure1": [], "figure3": [], "figure5": [], "table1": ["--quick"], "table_p": [], "appendix_a": [],
              "train": ["--dataset", "fashion_mnist"], "bench oracles": [], "bench causal": [],
              "bench curvature": [], "figure2": [], "causal-mlp": [], "moment-test": [],
              "weak-error": ["--problem", "mlp"], "svag": []}


@pytest.mark.parametrize("name", list(READS_DATA))
def test_commands_that_read_data_refuse_a_missing_data_directory(name, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sdesam.data.mnist.run_tool", lambda *a, **k: "no fetch in the tests")
    monkeypatch.setattr("sdesam.data.fashion_mnist.missing_tools", lambda *names: list(names))
    threads = torch.get_num_threads()
    missing = tmp_path / "does" / "not" / "exist"
    try:
        line = _one_line_refusal(capsys, [*name.split(), *READS_DATA[name], "--data-dir", str(missing)])
    finally:
        torch.set_num_threads(threads)
    assert f"--data-dir '{missing}' does not exist" in line
    assert list(tmp_path.iterdir()) == []                  # nothing written, no directory created


@pytest.mark.parametrize("spelling,name", [("table-p", "table_p"), ("appendix-a", "appendix_a"),
                                           ("weak_error", "weak-error"), ("causal_mlp", "causal-mlp"),
                                           ("table_p", "table_p")])
def test_command_names_take_dash_or_underscore(spelling, name, monkeypatch):
    module = importlib.import_module(cli.COMMANDS[name].module)
    calls = []
    monkeypatch.setattr(module, "main", lambda argv: calls.append((argv, sys.argv[0])) or 0)
    assert cli.main([spelling, "--x"]) == 0
    assert calls == [(["--x"], f"sdesam {name}")]


def test_unknown_command_and_bare_bench(capsys):
    assert cli.main(["figure9"]) == 2
    assert "unknown command 'figure9'" in capsys.readouterr().err
    assert cli.main(["bench"]) == 2 and cli.main(["bench", "nope"]) == 2
    assert cli.main(["figure_9"]) == 2 and cli.main(["bench", "oracles_x"]) == 2
    assert "unknown command 'figure_9'" in capsys.readouterr().err


def _main_raising(exc):
    def main(argv):
        raise exc
    return main


def test_run_main_classifies_errors(capsys, monkeypatch):
    from sdesam.data import DatasetNotFoundError
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    missing = DatasetNotFoundError("fashion_mnist", ["/a", "/b"], "Put the files in /a.")
    assert cli.run_main(_main_raising(missing), "prog", []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: fashion_mnist: no usable copy found.")
    assert cli.run_main(_main_raising(SystemExit("holds another configuration")), "prog", []) == 2
    assert capsys.readouterr().err == "prog: error: holds another configuration\n"
    assert cli.run_main(_main_raising(AssertionError("Torch not compiled with CUDA enabled")), "prog", []) == 2
    assert "use --device cpu" in capsys.readouterr().err
    # a bug is not a user error: its traceback stays
    with pytest.raises(KeyError):
        cli.run_main(_main_raising(KeyError("x")), "prog", [])
    # --debug and SDESAM_DEBUG=1 show the traceback of user errors too
    with pytest.raises(ValueError):
        cli.run_main(_main_raising(ValueError("bad")), "prog", ["--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError):
        cli.run_main(_main_raising(ValueError("bad")), "prog", [])


def test_ctrl_c_says_what_was_kept_and_how_to_resume(capsys, monkeypatch, tmp_path):
    figure2 = importlib.import_module("figures.figure2")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(figure2, "load_problem", interrupted)
    assert cli.main(["figure2", "--out", str(tmp_path / "f2")]) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"sdesam figure2: interrupted (Ctrl-C); what finished is kept in {tmp_path / 'f2'}; "
                   "rerunning the same command resumes from it")
    module = importlib.import_module("benchmarks.oracles")
    monkeypatch.setattr(module, "main", interrupted)
    assert cli.main(["bench", "oracles"]) == 130
    assert "keeps no partial results" in capsys.readouterr().err


def test_python_m_and_sdesam_give_the_same_one_line_error(tmp_path):
    """The ``__main__`` blocks use the same wrapper (real processes, no data needed)."""
    for cmd, prog in ((["-m", "figures.figure5"], "python -m figures.figure5"),
                      (["-m", "sdesam.cli", "figure5"], "sdesam figure5")):
        proc = subprocess.run([sys.executable, *cmd, "--minibatches", "0", "--out", str(tmp_path / "x")],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == f"{prog}: error: --minibatches must be >= 1, got 0\n"
