"""The engine's command-line tools: `chainrule gradcheck` and `chainrule explain`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import chainrule as cr
from chainrule.apps.gradcheck import GradcheckResult
from chainrule.cli import build_parser, main
from chainrule.cli.engine import gradcheck_table


def test_every_option_of_every_command_says_in_its_help_what_it_does():
    """`spam train --help` listed --dropout, --batch-size and --lr with neither a word nor their defaults."""
    undocumented = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for command, sub in action.choices.items():
                    walk(sub, f"{name} {command}")
            elif action.option_strings and not action.help:
                undocumented.append(f"{name} {action.option_strings[0]}")

    walk(build_parser(), "chainrule")
    assert undocumented == []


@pytest.mark.parametrize("args", [["digits", "train", "--epochs", "1" + "0" * 400],
                                  ["spam", "train", "--seed", str(2**63)],
                                  ["spam", "train", "--hidden", str(2**63 - 1)]])
def test_an_integer_too_large_for_any_use_is_a_usage_error(args, capsys):
    """A 400-digit --epochs was "internal error (OverflowError ...); this is a bug", and a --hidden
    of 2^63 - 1 "internal error (ValueError: array is too big ...)" after the corpus was read."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "below 2^" in err and "internal error" not in err


def test_a_huge_negative_integer_is_refused_as_below_the_option_s_range(capsys):
    with pytest.raises(SystemExit):
        main(["spam", "train", "--seed", "-" + "9" * 30])
    assert "expected an integer >= 0, got '-999" in capsys.readouterr().err


def test_gradcheck_command_passes_on_every_layer_type():
    proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "gradcheck"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "gradcheck: PASS" in proc.stdout
    for layer in ("Linear", "Conv2D", "BatchNorm", "input"):
        assert layer in proc.stdout


def test_gradcheck_command_on_a_saved_model(tmp_path, capsys):
    model = cr.Sequential([cr.Linear(6, 5), cr.Tanh(), cr.Linear(5, 3)], seed=0)
    model.save(tmp_path / "m")
    code = main(["gradcheck", str(tmp_path / "m")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "PASS" in out.out and "random inputs" in out.out


def test_gradcheck_command_reports_a_missing_model_in_one_line(tmp_path, capsys):
    code = main(["gradcheck", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("chainrule: error:") and err.count("\n") == 1 and "Traceback" not in err


def test_gradcheck_command_reports_missing_data_in_one_line(tmp_path, capsys):
    """A digits model checked against a --data folder without MNIST: one line naming what to put where."""
    model = cr.Sequential([cr.Linear(784, 10)], seed=0)
    model.save(tmp_path / "m", metadata={"task": "digits"})
    (tmp_path / "empty").mkdir()
    code = main(["gradcheck", str(tmp_path / "m"), "--data", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"chainrule: error: {tmp_path / 'empty'} test files not found: put ") and err.count("\n") == 1
    assert "t10k-images-idx3-ubyte[.gz]" in err and f"in {tmp_path / 'empty' / 'mnist'} or {tmp_path / 'empty'}" in err
    code = main(["gradcheck", str(tmp_path / "m"), "--data", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"chainrule: error: {tmp_path / 'nowhere'}: no such folder, and not a known data set " \
        "(mnist, fashion)\n"


def test_gradcheck_command_checks_a_saved_model_with_the_loss_it_was_trained_with(tmp_path, capsys):
    """The `small` preset (the textbook sigmoid network) learns on MSE; its saturated outputs make
    gradients small beside the loss, which a step of 1e-6 cannot resolve from rounding noise."""
    if not os.environ.get("CHAINRULE_DATA"):
        pytest.skip("CHAINRULE_DATA is not set")
    assert main(["digits", "train", "--model", "small", "--train-size", "1000", "--epochs", "2", "--quiet",
                 "--out", str(tmp_path / "small")]) == 0
    capsys.readouterr()
    assert main(["gradcheck", str(tmp_path / "small")]) == 0
    out = capsys.readouterr().out
    assert "with its MeanSquaredError" in out and "gradcheck: PASS" in out


def test_gradcheck_says_what_it_could_not_judge_and_what_options_need_a_model(capsys):
    result = GradcheckResult("t", {"0:Linear": 2e-9, "input": float("nan")})
    assert result.passed and not result.failed
    assert "input  " in gradcheck_table(result) and "not judged (every entry tried crossed a kink)" in \
        gradcheck_table(result)
    assert not GradcheckResult("t", {"input": float("nan")}).passed
    assert GradcheckResult("t", {"0:Linear": 2e-6, "input": float("nan")}).failed
    assert main(["gradcheck", "--samples", "5"]) == 2
    assert "--samples is for a saved model" in capsys.readouterr().err


def test_explain_command_runs(capsys):
    assert main(["explain", "--epochs", "300"]) == 0
    out = capsys.readouterr().out
    assert "Step 6." in out and "Final predictions" in out
    assert np.isfinite(float(out.split("    L = ")[1].split()[0]))


def test_explain_command_shows_the_walk_through_before_training(monkeypatch, capsys):
    # The six steps are printed before `fit` runs (a long --epochs used to print nothing until the
    # end); a training that fails right away still leaves them on the screen.
    import chainrule.explain as E

    def no_training(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(E, "fit", no_training)
    assert main(["explain"]) == 130  # (Ctrl-C's status)
    out = capsys.readouterr().out
    assert "Step 6." in out and "2000 epochs." in out and "Final predictions" not in out


def test_explain_command_refuses_more_epochs_than_it_can_keep(capsys):
    with pytest.raises(SystemExit) as exc_info:
        main(["explain", "--epochs", "1000001"])
    assert exc_info.value.code == 2
    assert "expected an integer from 1 to 1,000,000, got '1000001'" in capsys.readouterr().err


def test_explain_says_when_xor_is_not_solved(capsys):
    assert main(["explain", "--seed", "47"]) == 0  # a start that gets stuck (2/4)
    out = capsys.readouterr().out
    assert "2/4 correct.\n  Not solved: " in out
    assert main(["explain", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "SGD lr 0.5, 1 epoch.\n" in out
    # too few epochs is not a start that got stuck (it said so)
    assert "  Not solved yet: the loss was still falling after 1 epoch; try more --epochs.\n" in out
    assert main(["explain", "--epochs", "30"]) == 0
    out = capsys.readouterr().out
    assert "  Not solved yet: the loss was still falling after 30 epochs; try more --epochs.\n" in out


def test_output_an_ascii_terminal_cannot_show_is_escaped_and_a_closed_pipe_is_sigpipes_status():
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "explain", "--epochs", "10"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0 and "z1 = x \\xb7 W1 + b1" in proc.stdout, proc.stderr
    # a reader that stops early (`| head -1`, `| true`): the status a program stopped by SIGPIPE
    # gives, not 0; also where the output waited in the buffer until the end (gradcheck's does)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with subprocess.Popen([sys.executable, "-m", "chainrule.cli", "gradcheck"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        proc.stdout.close()
        assert proc.wait() == 141 and proc.stderr.read() == b""
    with subprocess.Popen([sys.executable, "-m", "chainrule.cli", "explain"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        proc.stdout.readline()
        proc.stdout.close()
        assert proc.wait() == 141 and proc.stderr.read() == b""


def test_output_a_c_locale_cannot_show_is_escaped():
    """In the C locale with Python's UTF-8 mode off, standard output is ASCII with
    surrogateescape, not "strict", and was left so: the first "·", "ü" of a class name or token
    stopped the command part-way with "internal error (UnicodeEncodeError ...)"."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "PYTHONUTF8")}
    env.update(PYTHONUTF8="0", LANG="C", LC_ALL="C")
    proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "explain", "--epochs", "10"], capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 0 and "z1 = x \\xb7 W1 + b1" in proc.stdout, proc.stderr


def test_other_libraries_info_lines_stay_out_of_the_output(mnist_dir, tmp_path):
    """The command line showed every library's INFO log lines with its own: matplotlib, building its
    font cache (a first run, or one whose home folder cannot be written), printed "generated new
    fontManager" between a training run's lines. Their warnings still show; chainrule's lines too."""
    env = {**os.environ, "CHAINRULE_DATA": str(mnist_dir.parent), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "digits", "train", "--model", "small", "--epochs",
                           "1", "--train-size", "600", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "fontManager" not in proc.stderr and "epoch 1/1" in proc.stderr, proc.stderr


@pytest.mark.parametrize("unbuffered", [False, True], ids=["buffered", "PYTHONUNBUFFERED=1"])
def test_a_full_disk_under_standard_output_is_named_as_such(unbuffered):
    """`> /dev/full` said "chainrule: error: [Errno 28] No space left on device": not which file.
    It still did where the failed write left nothing in the buffer (PYTHONUNBUFFERED=1, which
    containers often set; output longer than the buffer, tests/test_spam_cli.py): standard output
    was told by flushing it again, which then succeeded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env.update({"PYTHONUNBUFFERED": "1"} if unbuffered else {})
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "gradcheck"], stdout=full,
                              stderr=subprocess.PIPE, text=True, env=env)
    assert (proc.returncode, proc.stderr) == (2, "chainrule: error: standard output: No space left on device\n")



def test_a_standard_error_that_cannot_be_written_changes_no_result_and_no_exit_code(mnist_dir, tmp_path):
    """`2>/dev/full` (a log on a full disk): the first progress line's failed write stopped the
    training with exit 1 and no model, since the error's own line failed too; a usage error left
    its line in the buffer for Python's exit to fail on, exit 120. Lines that cannot be written
    are dropped now: the results and the exit codes are those of a working standard error."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    env["CHAINRULE_DATA"] = str(mnist_dir.parent)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "digits", "train", "--model", "small",
                               "--epochs", "1", "--train-size", "600", "--out", str(tmp_path / "run")],
                              stdout=subprocess.PIPE, stderr=full, text=True, env=env)
    assert proc.returncode == 0 and f"wrote {tmp_path / 'run'}/" in proc.stdout
    assert (tmp_path / "run" / "model.json").is_file()
    for buffering in (env, {**env, "PYTHONUNBUFFERED": "1"}):
        with open("/dev/full", "w") as full:
            proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "gradcheck", "--samples", "0"],
                                  stderr=full, env=buffering)
        assert proc.returncode == 2


def test_a_closed_standard_error_sends_nothing_into_standard_output(mnist_dir, tmp_path):
    """`2>&-`: Python has no sys.stderr then, and print(..., file=None) writes to standard output:
    the lines meant for standard error went in among the results, and a training died after its
    first epoch with "internal error (AttributeError: 'NoneType' object has no attribute 'flush')".
    They go nowhere now."""
    env = {**os.environ, "CHAINRULE_DATA": str(mnist_dir.parent)}
    proc = subprocess.run([sys.executable, "-m", "chainrule.cli", "digits", "train", "--model", "small", "--epochs",
                           "1", "--train-size", "600", "--out", str(tmp_path / "run")],
                          stdout=subprocess.PIPE, text=True, env=env, preexec_fn=lambda: os.close(2))
    assert proc.returncode == 0 and (tmp_path / "run" / "model.json").is_file()
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("small: 1 epoch (best 1)") and lines[1].startswith("wrote ")


def test_a_closed_standard_output_is_an_error_before_the_work(mnist_dir, tmp_path):
    """`>&-`: Python has no sys.stdout then, and print() to None writes nothing: a command's results
    were lost with exit 0. It is refused, as `ls` refuses it, and before the work: no training. (The
    servers, which print nothing there, run: tests/test_spam_daemon.py.)"""
    env = {**os.environ, "CHAINRULE_DATA": str(mnist_dir.parent)}
    for command in (["explain"], ["digits", "train", "--epochs", "1", "--out", str(tmp_path / "run")], ["--help"]):
        proc = subprocess.run([sys.executable, "-m", "chainrule.cli", *command], stderr=subprocess.PIPE, text=True,
                              env=env, preexec_fn=lambda: os.close(1))
        assert proc.returncode == 2 and proc.stderr == "chainrule: error: standard output: Bad file descriptor\n"
    assert not (tmp_path / "run").exists()


def test_help_into_a_reader_gone_or_a_full_disk_is_reported_as_other_output_is():
    """argparse lets a failed write of the help pass: with the help still in the buffer, Python's
    exit failed on it ("Exception ignored in: <_io.TextIOWrapper name='<stdout>' ...>" and a
    BrokenPipeError, exit 120), and a help longer than the buffer (spam train's) was lost with exit
    0. A reader gone is SIGPIPE's quiet 141 now, and a full disk a one-line error, as for any output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with subprocess.Popen([sys.executable, "-m", "chainrule.cli", "--help"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=env) as proc:
        proc.stdout.close()
        assert proc.wait() == 141 and proc.stderr.read() == b""
    for command in (["--help"], ["digits", "train", "--help"], ["spam", "train", "--help"]):
        with open("/dev/full", "wb") as full:
            proc = subprocess.run([sys.executable, "-m", "chainrule.cli", *command], stdout=full,
                                  stderr=subprocess.PIPE, text=True, env=env)
        assert proc.returncode == 2 and proc.stderr == "chainrule: error: standard output: No space left on device\n", \
            (command, proc.stderr)


def test_readme_python_example_runs(capsys):
    """The README's build-fit-evaluate example, run exactly as written."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "```python" in readme, "the README lost its Python example"
    code = readme.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Total parameters" in out and "'accuracy'" in out
    model, history = namespace["model"], namespace["history"]
    assert len(history) >= 1 and model.num_parameters() == 82
