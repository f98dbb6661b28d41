"""`chainrule digits`: train -> save -> load round trip, predict on real image files, resume after
SIGKILL, Ctrl-C, models saved by chainrule 0.1, and one-line errors for every kind of bad input.

Training here is deliberately tiny (a few thousand images, 1-2 epochs); the accuracy figures are
checked by bench/digits_accuracy.py on the full data.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import chainrule as cr
from chainrule import load_model, model_files
from chainrule.apps import image_presets, images
from chainrule.cli import main
from chainrule.errors import ModelFileError, UserError
from chainrule.files import locked_directory
from conftest import fill_disk, with_huge_weights

DATA = os.environ.get("CHAINRULE_DATA")
pytestmark = pytest.mark.skipif(not DATA, reason="CHAINRULE_DATA is not set")
# `python -m chainrule.cli` would run the module as __main__, a second copy whose UserError class
# is not the one the apps raise; this runs the real entry point, like the `chainrule` script does.
CLI = [sys.executable, "-c", "import sys; from chainrule.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def mnist_test():
    from chainrule.data.mnist import load_mnist

    return load_mnist("test", DATA)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An mlp trained on 6,000 images for 2 epochs: (output dir, in-memory model, metrics)."""
    out = tmp_path_factory.mktemp("run") / "mlp"
    model, metrics = images.train("mlp", out, epochs=2, seed=3, data=DATA, train_size=6000, verbose=False)
    return out, model, metrics


def run_cli(*args, extra_env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHAINRULE_DATA": DATA, **(extra_env or {})}
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=env, timeout=120, **kwargs)


def assert_one_line_error(proc: subprocess.CompletedProcess | tuple, code: int = 2) -> str:
    rc, err = (proc.returncode, proc.stderr) if hasattr(proc, "returncode") else proc
    assert rc == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chainrule: error: "), err
    assert "Traceback" not in err
    return lines[0]


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- training outputs and the round trip ------------------------------------------------------------


def test_train_writes_model_metrics_history_and_figures(trained):
    out, model, metrics = trained
    for name in ("model.json", "metrics.json", "history.csv", "checkpoint.npz", "run.json",
                 "learning_curves.png", "confusion_matrix.png", "gradient_flow.png"):
        assert (out / name).is_file(), name
    assert list(model_files(out)) == ["model"] and model_files(out)["model"].is_file()
    doc = json.loads((out / "model.json").read_text())
    assert doc["format"] == "chainrule-model" and doc["format_version"] == 2
    meta = doc["metadata"]
    assert meta["task"] == "images" and meta["preset"] == "mlp" and meta["dataset"] == "mnist"
    assert meta["classes"] == [str(k) for k in range(10)]
    # only what model_inputs and preprocess_image read (image_size, ink and digit_box, which nothing
    # read, said what could not be changed)
    assert meta["preprocessing"] == {"scale": 255.0, "mean": 0.0, "std": 1.0, "layout": "flat", "picture": "digit"}
    written = json.loads((out / "metrics.json").read_text())
    assert written["test"]["n"] == 10000 and written["epochs_run"] == 2 and written["dataset"] == "mnist"
    assert written["test"]["classes"] == meta["classes"] and list(written["test"]["per_class"]) == meta["classes"]
    assert written["train_images"] + written["validation_images"] == 6000
    assert len(written["test"]["confusion_matrix"]) == 10
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 and "val_accuracy" in rows[0] and "0:Linear/grad_norm" in rows[0]
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_saved_model_gives_identical_predictions(trained, mnist_test, capsys):
    out, model, metrics = trained
    loaded, metadata = load_model(out)
    x = image_presets.model_inputs(mnist_test[0], metadata)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    report, proba = images.evaluate_images(loaded, metadata, *mnist_test)
    np.testing.assert_array_equal(proba, loaded.predict_proba(x))  # (softmax: already one distribution per row)
    assert set(report) == set(metrics["test"])  # the report alone, as metrics.json holds it
    assert report["accuracy"] == metrics["test"]["accuracy"]
    assert report["confusion_matrix"] == metrics["test"]["confusion_matrix"]
    # and the command line reports the same figure
    code, stdout, _ = cli(capsys, "digits", "evaluate", out, "--data", DATA, "--out", out / "eval")
    assert code == 0
    assert f"test accuracy: {100 * metrics['test']['accuracy']:.2f}%" in stdout
    assert "precision" in stdout and "confusion matrix" in stdout
    for name in ("mistakes.png", "eval_confusion_matrix.png", "eval_metrics.json"):
        assert (out / "eval" / name).is_file()
    # on the test images of the digits 0 and 1 alone, the others have no recall (None, not 0)
    few = np.isin(mnist_test[1], [0, 1])
    per_class = images.evaluate_images(loaded, metadata, mnist_test[0][few], mnist_test[1][few])[0]["per_class"]
    assert per_class["1"]["recall"] > 0.9 and per_class["7"]["recall"] is None and per_class["7"]["support"] == 0
    never = [s for s in per_class.values() if s["support"] == 0 and s["precision"] is None]  # nor predicted
    assert never and all(s["f1"] is None for s in never)
    # F1 = 2TP / (2TP + FP + FN) is 0, not undefined, for a class there but never predicted: ones
    # labelled as a digit the model never calls them
    ones = mnist_test[0][mnist_test[1] == 1]
    called = set(loaded.predict(image_presets.model_inputs(ones, metadata)).tolist())
    k = next(str(d) for d in range(10) if d not in called)
    per_class = images.evaluate_images(loaded, metadata, ones, np.full(len(ones), int(k)))[0]["per_class"]
    assert (per_class[k]["precision"], per_class[k]["f1"]) == (None, 0.0) and per_class[k]["support"] == len(ones)
    assert (per_class["1"]["recall"], per_class["1"]["precision"], per_class["1"]["f1"]) == (None, 0.0, 0.0)


def test_model_inputs_layouts():
    batch = np.full((3, 28, 28), 255, np.uint8)
    flat = image_presets.model_inputs(batch, {"preprocessing": {"layout": "flat", "scale": 255.0}})
    assert flat.shape == (3, 784) and flat.dtype == np.float32 and flat.max() == 1.0
    for wider in (np.int64, np.uint16):  # (the same levels in a wider integer type: scaled too, not taken as 255.0)
        assert image_presets.model_inputs(batch.astype(wider), {"preprocessing": {"scale": 255.0}}).max() == 1.0
    with pytest.raises(ValueError, match="integer pixels must be from 0 to 255, got 0..65535"):  # (a 16-bit scan)
        image_presets.model_inputs(np.full((28, 28), 65535, np.uint16) * (np.arange(28) > 0), {})
    img = image_presets.model_inputs(batch[0].astype(np.float32) / 255, {"preprocessing": {"layout": "image"}})
    assert img.shape == (1, 1, 28, 28)
    with pytest.raises(ValueError, match="28x28"):
        image_presets.model_inputs(np.zeros((2, 20, 20)), {})
    # an empty batch (a process's share of too few images) is an empty batch, not an IndexError
    assert image_presets.model_inputs(batch[:0], {"preprocessing": {"layout": "image"}}).shape == (0, 1, 28, 28)


def test_a_model_saved_by_chainrule_0_1_still_loads_and_gives_the_same_answers(trained, mnist_test, tmp_path,
                                                                                capsys):
    """0.1's `digits train` saved task "digits", no data set and no `picture`: such a model is an
    MNIST model, read photos as digits, and evaluates and predicts exactly as before."""
    out = trained[0]
    old = tmp_path / "old"
    old.mkdir()
    weights = model_files(out)["model"]
    (old / weights.name).write_bytes(weights.read_bytes())
    doc = json.loads((out / "model.json").read_text())
    meta = doc["metadata"]
    meta["task"] = "digits"
    del meta["dataset"], meta["preprocessing"]["picture"]
    meta["preprocessing"].update({"image_size": [28, 28], "ink": "high", "digit_box": 20})  # (as 0.1 wrote them)
    (old / "model.json").write_text(json.dumps(doc))
    model, metadata = images.load_image_model(old)
    assert metadata["dataset"] == "mnist" and metadata["preprocessing"]["picture"] == "digit"
    assert metadata["classes"] == [str(k) for k in range(10)]
    page = tmp_path / "seven.png"
    Image.fromarray(255 - mnist_test[0][0]).save(page)  # test image 0 is a 7
    answers = []
    for model_dir in (out, old):
        code, stdout, _ = cli(capsys, "digits", "predict", model_dir, page, "--json")
        assert code == 0
        answers.append(json.loads(stdout)[0])
        code, stdout, _ = cli(capsys, "digits", "evaluate", model_dir, "--out", tmp_path / model_dir.name)
        assert code == 0
        answers.append(stdout.split("\n\nwrote")[0])
    assert answers[0] == answers[2] and answers[0]["digit"] == answers[0]["index"] and answers[0]["label"] == "7"
    assert answers[1] == answers[3] and answers[1].startswith("test accuracy: ")
    assert "digit  precision   recall       f1  support" in answers[1]


# -- predicting from image files -------------------------------------------------------------------


def test_predict_on_redrawn_test_digits_keeps_the_accuracy(trained, mnist_test, tmp_path, capsys):
    """MNIST test digits saved as PNGs the way a person might: dark on white, 3x larger, off-centre."""
    out, model, metrics = trained
    digit_images, labels = mnist_test[0][:150], mnist_test[1][:150]
    rng = np.random.default_rng(0)
    paths = []
    for i, digit in enumerate(digit_images):
        big = Image.fromarray(255 - digit).resize((84, 84), Image.Resampling.BICUBIC)
        page = Image.new("L", (200, 160), 255)
        page.paste(big, (int(rng.integers(0, 116)), int(rng.integers(0, 76))))
        path = tmp_path / f"digit{i:03d}.png"
        page.save(path)
        paths.append(path)
    code, stdout, stderr = cli(capsys, "digits", "predict", out, *paths, "--json")
    assert code == 0, stderr
    results = json.loads(stdout)
    assert [r["source"] for r in results] == [str(p) for p in paths]
    for r in results:
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
        assert r["digit"] == int(np.argmax(r["probabilities"]))
    png_accuracy = np.mean([r["digit"] == y for r, y in zip(results, labels, strict=True)])
    raw_accuracy = np.mean(model.predict(image_presets.model_inputs(digit_images, {"preprocessing": {}})) == labels)
    assert png_accuracy >= raw_accuracy - 0.04, (png_accuracy, raw_accuracy)


def test_predict_reports_bad_files_and_still_does_the_rest(trained, mnist_test, tmp_path, capsys):
    out = trained[0]
    good = tmp_path / "seven.png"
    Image.fromarray(255 - mnist_test[0][0]).save(good)  # test image 0 is a 7
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, stdout, stderr = cli(capsys, "digits", "predict", out, empty, good, text, tmp_path / "missing.png")
    assert code == 1
    errors = stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("chainrule: error: ") for e in errors)
    assert "empty file" in errors[0] and "not an image" in errors[1] and "no such file" in errors[2]
    lines = stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{good}: ")
    assert "[0:" in lines[0] and "9:" in lines[0]
    # --json: an entry per image, in the order given, failures included (as they are on stderr)
    code, stdout, _ = cli(capsys, "digits", "predict", out, empty, good, "--json")
    doc = json.loads(stdout)
    assert code == 1 and [d["source"] for d in doc] == [str(empty), str(good)]
    assert "empty file" in doc[0]["error"] and "error" not in doc[1] and len(doc[1]["probabilities"]) == 10


def test_names_with_line_breaks_or_control_characters_are_printed_escaped(trained, mnist_test, tmp_path, capsys):
    """A file named with a line break or a terminal's escape sequence was printed as it is: its
    result took two lines, and ESC [ 2 J reached the terminal (it clears the screen); an error
    about one was cut at the line break. They are shown as Python writes them in a string
    (\\n, \\x1b); spaces, accents and other scripts as they are. --json was right already."""
    out = trained[0]
    odd = tmp_path / "new\nline \x1b[2J été.png"
    Image.fromarray(255 - mnist_test[0][0]).save(odd)  # test image 0 is a 7
    missing = tmp_path / "no\nsuch\r.png"
    code, stdout, stderr = cli(capsys, "digits", "predict", out, odd, missing)
    assert code == 1
    assert stdout.startswith(f"{tmp_path}/new\\nline \\x1b[2J été.png: 7 (") and stdout.count("\n") == 1
    assert stderr == f"chainrule: error: {tmp_path}/no\\nsuch\\r.png: no such file\n"
    code, stdout, _ = cli(capsys, "digits", "predict", out, odd, missing, "--json")
    assert [r["source"] for r in json.loads(stdout)] == [str(odd), str(missing)]
    # an error the command line reports (one_line), about a model folder named so
    code, _, stderr = cli(capsys, "digits", "evaluate", tmp_path / "no\nmodel\x1b]0;title\x07")
    assert code == 2 and stderr == (f"chainrule: error: {tmp_path}/no\\nmodel\\x1b]0;title\\x07/model.json: "
                                    "not found (a model directory holds model.json and the weights it names)\n")


def test_predict_reads_an_image_from_standard_input_and_options_anywhere(trained, mnist_test, tmp_path):
    """`-` reads the image from stdin, as everywhere else images or messages are read; `--json`
    may come after the positionals, as people type it."""
    buf = tmp_path / "seven.png"
    Image.fromarray(255 - mnist_test[0][0]).save(buf)  # test image 0 is a 7
    with open(buf, "rb") as stdin:
        proc = run_cli("digits", "predict", trained[0], "-", "--json", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert result["source"] == "-" and result["digit"] == 7


def test_predict_from_an_empty_or_closed_stdin_is_one_line(trained):
    proc = run_cli("digits", "predict", trained[0], "-", stdin=subprocess.DEVNULL)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr == "chainrule: error: -: empty file\n"  # (names '-', as a file's errors name it)
    proc = run_cli("digits", "predict", trained[0], "-", preexec_fn=lambda: os.close(0))  # like `<&-`
    assert_one_line_error(proc)


def test_an_image_on_standard_input_too_large_to_read_is_one_image_that_failed(trained, mnist_test, tmp_path):
    seven = tmp_path / "seven.png"
    Image.fromarray(255 - mnist_test[0][0]).save(seven)
    with open(tmp_path / "huge", "wb") as f:
        f.truncate((64 << 20) + 1)
    with open(tmp_path / "huge", "rb") as stdin:
        proc = run_cli("digits", "predict", trained[0], "-", seven, stdin=stdin)
    assert proc.returncode == 1 and proc.stderr == "chainrule: error: -: larger than 64 MB\n"
    assert proc.stdout.startswith(f"{seven}: 7 ")  # the other images are read all the same


def test_a_model_whose_weights_overflow_its_outputs_is_a_one_line_model_error(trained, mnist_test, tmp_path):
    """Weights that are finite but huge (x1e30 in the .npz) load, and overflow the network's
    outputs to NaN: predict and evaluate ended in "internal error (ValueError: ...); this is a
    bug", after NumPy's warnings. It is the model's fault, said in one line."""
    model = with_huge_weights(trained[0], tmp_path / "huge")
    seven = tmp_path / "seven.png"
    Image.fromarray(255 - mnist_test[0][0]).save(seven)
    for args in (["digits", "predict", model, seven], ["images", "predict", "--json", model, seven],
                 ["digits", "evaluate", model, "--out", tmp_path / "eval"]):
        line = assert_one_line_error(run_cli(*args))
        assert line == ("chainrule: error: the model's outputs overflowed to NaN or infinity: its weights, or its "
                        "inputs, are too large for float32"), (args, line)


def test_show_draws_first_layer_weights(trained, tmp_path, capsys):
    target = tmp_path / "w.png"
    code, stdout, _ = cli(capsys, "digits", "show", trained[0], "--units", "30", "--out", target)
    assert code == 0 and "30 of 512" in stdout
    with Image.open(target) as im:
        assert im.format == "PNG"
    code, _, _ = cli(capsys, "digits", "show", trained[0], "--units", "30", "--out", tmp_path / "w.jpg")
    with Image.open(tmp_path / "w.jpg") as im:  # the format its name says
        assert code == 0 and im.format == "JPEG"


# -- checkpoints: SIGKILL and Ctrl-C --------------------------------------------------------------


TINY = ("--model", "mlp", "--train-size", "3000", "--epochs", "4", "--seed", "7", "--quiet")


def _epochs_done(checkpoint: Path) -> int:
    with np.load(checkpoint, allow_pickle=False) as npz:
        return json.loads(npz["json"].tobytes())["epochs_done"]


# One BLAS thread for runs compared bit for bit: `fit` gives BLAS fewer threads while another process
# keeps a core busy, and OpenBLAS rounds some products differently on one thread than on two, so two
# runs of the same seed match exactly only at the same thread count (README, "Digits").
ONE_BLAS_THREAD = {"OPENBLAS_NUM_THREADS": "1"}


def _start(*args, extra_env: dict | None = None) -> subprocess.Popen:
    """`chainrule ARGS` started, as a terminal's Ctrl-C and a `kill` would find it."""
    env = {**os.environ, "CHAINRULE_DATA": DATA, **(extra_env or {})}
    # A shell starts a background job with Ctrl-C (SIGINT) ignored, and a child inherits that (Python
    # then keeps ignoring it): the run gets the disposition a terminal's Ctrl-C would find, whatever
    # this process was started with (a handler set here is reset to the default in the child).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([*CLI, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)


def _wait_for(proc: subprocess.Popen, appeared, what: str) -> None:
    """Wait until `appeared()`, while `proc` runs."""
    deadline = time.monotonic() + 120
    while not appeared():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {what} appeared"
        time.sleep(0.005)


def _start_and_wait_for_checkpoint(out: Path, options=TINY, extra_env: dict | None = None) -> subprocess.Popen:
    proc = _start("digits", "train", *options, "--out", out, extra_env=extra_env)
    _wait_for(proc, (out / "checkpoint.npz").exists, "checkpoint")
    return proc


def _arrays(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    full = run_cli("digits", "train", *TINY, "--out", tmp_path / "full", extra_env=ONE_BLAS_THREAD)
    assert full.returncode == 0, full.stderr

    killed = tmp_path / "killed"
    proc = _start_and_wait_for_checkpoint(killed, extra_env=ONE_BLAS_THREAD)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = _epochs_done(killed / "checkpoint.npz")
    assert 1 <= done < 4  # killed mid-run: after a checkpoint, before the end
    assert not (killed / "model.json").exists()

    resumed = run_cli("digits", "train", "--out", killed, "--resume", "--quiet",  # options come from run.json
                      extra_env=ONE_BLAS_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _arrays(model_files(tmp_path / "full")["model"]), _arrays(model_files(killed)["model"])
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    ma = json.loads((tmp_path / "full" / "metrics.json").read_text())
    mb = json.loads((killed / "metrics.json").read_text())
    assert ma["test"] == mb["test"] and ma["epochs_run"] == mb["epochs_run"] == 4


def test_ctrl_c_stops_cleanly_and_the_run_can_be_resumed(tmp_path):
    out = tmp_path / "interrupted"
    # 12 epochs (~3 s after the first checkpoint on 2 cores): the interrupt lands mid-run even when
    # this process, polling for the checkpoint, waits for a core behind the training's threads
    proc = _start_and_wait_for_checkpoint(out, (*TINY[:4], "--epochs", "12", *TINY[6:]))
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "interrupted" in last and "--resume" in last
    done = _epochs_done(out / "checkpoint.npz")
    assert done >= 1
    # without --resume the unfinished run is not thrown away (it was, before the new run began)
    forgot = run_cli("digits", "train", "--out", out, "--quiet")
    assert forgot.returncode == 2 and "--resume" in forgot.stderr and "Traceback" not in forgot.stderr
    assert _epochs_done(out / "checkpoint.npz") == done
    resumed = run_cli("digits", "train", "--out", out, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 12
    assert not images.unfinished_run(out / "checkpoint.npz")  # a finished run's: a new run may replace it


def _contents(folder: Path) -> dict[str, str]:
    """What `folder` holds: {name: its bytes' SHA-256, or "a folder"}."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "a folder" for p in folder.iterdir()}


def _finished_run(out: Path) -> dict[str, str]:
    """A finished one-epoch run trained into `out`; returns what its folder holds (`_contents`)."""
    assert run_cli("digits", "train", *TINY[:4], "--epochs", "1", "--quiet", "--out", out).returncode == 0
    return _contents(out)


def _nothing_to_resume(out: Path) -> None:
    """`--resume` (what deploy/slurm-train.sh passes) finds the run in `out` finished."""
    r = run_cli("digits", "train", "--out", out, "--resume", "--quiet")
    assert (r.returncode, r.stderr) == (0, f"digits: the run in {out} is finished: nothing to resume\n")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda sig: sig.name)
def test_a_new_run_stopped_in_its_first_epoch_leaves_the_finished_run_it_was_replacing(tmp_path, sig):
    """A new run into the folder of a finished one sets that run's checkpoint aside; stopped before
    its first checkpoint, it deleted it, and left the finished model beside its own run.json: --resume
    (deploy/slurm-train.sh's) said "no checkpoint; starting a new run" and replaced the finished
    model, where it had said the run was finished. Ctrl-C and SIGTERM put the earlier run back as
    the run stops (SIGTERM ended the process at once, without a word, leaving what it had set
    aside); after SIGKILL, the next command to look at the folder does."""
    out = tmp_path / "run"
    before = _finished_run(out)
    # (30,000 images: a first epoch of several seconds, for the signal to come in)
    proc = _start("digits", "train", "--model", "mlp", "--train-size", "30000", "--epochs", "1", "--quiet",
                  "--out", out)
    _wait_for(proc, (out / ".checkpoint.npz.earlier.tmp").exists, "checkpoint set aside")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -sig
    else:
        assert (proc.returncode, stderr.splitlines()[-1]) == (128 + sig, "chainrule: interrupted before the run's "
                                                              "first epoch was saved; nothing to continue: start "
                                                              "it again"), stderr
        assert _contents(out) == before
    _nothing_to_resume(out)
    assert _contents(out) == before


def test_a_new_run_that_finds_the_disk_full_leaves_the_finished_run_it_was_replacing(small_disk):
    """As it failed to write its run.json ("No space left on device"), a new run into the folder of a
    finished one deleted that run's checkpoint: --resume then trained the finished run again."""
    out = small_disk / "run"
    small = ("--model", "small", "--train-size", "600", "--quiet", "--out", out)
    assert run_cli("digits", "train", *small, "--epochs", "1").returncode == 0
    before = _contents(out)
    filler = fill_disk(small_disk)
    r = run_cli("digits", "train", *small, "--epochs", "2")
    assert r.returncode == 2 and r.stderr.endswith(f"error: {out / 'run.json'}: No space left on device\n"), r.stderr
    assert _contents(out) == before
    filler.unlink()
    _nothing_to_resume(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda sig: sig.name)
def test_sigterm_stops_an_evaluation_as_ctrl_c_does(trained, tmp_path, sig):
    """SIGTERM (kill, systemd's stop, a batch system's time limit) ended the process at once, without
    a word: the folder its figures were drawn in stayed hidden in the model's (`.writing-*`, removed by
    a later command only once an hour old). It stops as Ctrl-C does: what it was writing removed,
    one line, exit 128 + the signal's number."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    proc = _start("digits", "evaluate", run)
    _wait_for(proc, lambda: any(run.glob(".writing-*")), "staging folder")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert (proc.returncode, stderr) == (128 + sig, "chainrule: interrupted\n")
    assert not [name for name in _contents(run) if name.startswith(".")]


def test_resume_of_a_finished_run_says_so_and_leaves_its_folder_alone(trained, tmp_path, capsys):
    """--resume on a run that had ended trained nothing and wrote everything again, deleting what
    evaluate and show had written beside its model. As `make` with nothing to do: a line saying so,
    exit 0 (a job that always passes --resume, rerun, succeeds)."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    assert cli(capsys, "digits", "evaluate", run)[0] == 0 and cli(capsys, "digits", "show", run)[0] == 0
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    assert {"eval_metrics.json", "mistakes.png", "first_layer.png"} <= set(before)
    assert cli(capsys, "digits", "train", "--out", run, "--resume", "--quiet") == \
        (0, "", f"digits: the run in {run} is finished: nothing to resume\n")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()} == before


def test_a_run_stopped_after_its_last_epoch_before_its_model_is_saved_is_unfinished(trained, tmp_path):
    """Ctrl-C as the figures are drawn: the last checkpoint (written after the last epoch) says the
    run ended, no model was saved, and a plain rerun threw the whole run away and started over,
    though the message had said --resume."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    assert not images.unfinished_run(run / "checkpoint.npz")  # its model was saved after its last checkpoint
    os.utime(run / "checkpoint.npz", ns=(time.time_ns(), (run / "model.json").stat().st_mtime_ns + 1))
    assert images.unfinished_run(run / "checkpoint.npz")  # a model of an earlier run is there, not this one's
    (run / "model.json").unlink()
    assert images.unfinished_run(run / "checkpoint.npz")
    with pytest.raises(UserError, match="holds the checkpoint of an unfinished run: continue it with --resume"):
        images.resolve_run_options({}, run)
    # a run writing there now: its checkpoint is not to be resumed, nor deleted
    with open(run / "model.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(UserError, match="another run is writing to this folder"):
            images.resolve_run_options({}, run)


def test_partial_files_that_killed_writers_left_are_removed_by_the_next_run(tmp_path, capsys):
    """A `kill -9` as show drew first_layer.png, or as train wrote run.json, left their temporary
    files for good: nothing removed them."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".first_layer.png.k2x8.tmp", out / ".run.json.b_33.tmp", out / ".metrics.json.q1.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    (out / "notes.tmp").write_text("mine")
    assert main(["digits", "train", *TINY[:4], "--epochs", "1", *TINY[6:], "--out", str(out)]) == 0
    assert not any(path.exists() for path in stale) and (out / "notes.tmp").read_text() == "mine"


@pytest.mark.parametrize("command", [["evaluate"], ["show"]])
def test_evaluate_and_show_refuse_a_folder_that_a_run_is_writing(trained, tmp_path, capsys, command):
    """They wrote beside the model unlocked: a train that saved a new model meanwhile was left with
    the evaluation, or the first-layer picture, of the model it replaced."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    before = sorted(p.name for p in run.iterdir())
    with open(run / "model.lock", "a") as lock:  # (another process's hold: this one's lock is re-entrant)
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert main(["digits", *command, str(run)]) == 2
        err = capsys.readouterr().err
    assert f"{run}: another run is writing to this folder" in err and err.count("\n") == 1, err
    assert sorted(p.name for p in run.iterdir()) == before
    elsewhere = tmp_path / ("x" if command == ["evaluate"] else "x.png")
    assert main(["digits", *command, str(run), "--out", str(elsewhere)]) == 0  # (written elsewhere: no lock needed)


def test_evaluate_and_show_into_the_models_folder_by_out_refuse_a_run_writing_it(trained, tmp_path, capsys):
    """`--out` naming the model's own folder (as it is, or through a link) skipped its lock: a
    train over the model, ending meanwhile, was left with the evaluation, or the first-layer
    picture, of the model it replaced (eval_metrics.json at 36% beside its metrics.json's 92%)."""
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    (run / "checkpoint.npz").unlink()  # (the new run's first one then says that it is under way)
    (tmp_path / "link").symlink_to(run)
    train = _start_and_wait_for_checkpoint(run, (*TINY[:4], "--epochs", "100", *TINY[6:]))
    try:
        for command in (["evaluate", "--out", run], ["evaluate", "--out", tmp_path / "link"],
                        ["show", "--out", run / "first_layer.png"], ["show", "--out", tmp_path / "link" / "w.png"]):
            code, _, err = cli(capsys, "digits", command[0], run, *command[1:])
            assert code == 2 and f"{run}: another run is writing to this folder" in err, (command, err)
        assert train.poll() is None  # (the run held the lock throughout)
    finally:
        train.kill()
        train.communicate()
    assert not {"eval_metrics.json", "first_layer.png", "w.png"} & {p.name for p in run.iterdir()}


@pytest.mark.parametrize("command", [[group, action] for group in ("digits", "images")
                                     for action in ("evaluate", "show", "predict")] + [["gradcheck"]])
def test_commands_reading_a_model_leave_a_folder_that_holds_none_as_it_was(tmp_path, capsys, command):
    """evaluate and show, pointed at an empty folder (a wrong path), said there was no model in it,
    and left their lock file, model.lock, there: a command that only reads a model wrote into a
    folder that is none. So did they in one holding another program's model.json."""
    empty, missing, foreign = tmp_path / "empty", tmp_path / "missing", tmp_path / "foreign"
    empty.mkdir()
    foreign.mkdir()
    (foreign / "model.json").write_text('{"name": "a model of another program"}')
    picture = tmp_path / "seven.png"
    Image.new("L", (28, 28)).save(picture)
    for folder in (empty, missing, foreign):
        before = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
        assert cli(capsys, *command, folder, *([picture] if command[-1] == "predict" else []))[0] == 2
        assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == before, folder


# `digits evaluate MODEL` (argv[1]) that pauses once it has read the model, until the file argv[2]
# appears (having made argv[2].reading): an evaluation still running when others start.
PAUSED_EVALUATE = """
import sys, time
from pathlib import Path
from chainrule.apps import images
from chainrule.cli import main
evaluate_saved, go = images.evaluate_saved, Path(sys.argv[2])
def paused(*args, **kwargs):
    Path(f"{go}.reading").touch()
    while not go.exists():
        time.sleep(0.05)
    return evaluate_saved(*args, **kwargs)
images.evaluate_saved = paused
sys.exit(main(["digits", "evaluate", sys.argv[1]]))
"""


def test_evaluate_and_show_run_while_another_evaluate_runs(trained, tmp_path):
    """A second evaluate, or a show, started while one ran failed: "another run is writing to this
    folder (it holds model.lock)", though none was. They only read the model (a run saving one
    there still refuses them: above), so they share the lock. A run refused meanwhile is told that
    they read the model: it was told too that another run was writing."""
    run, go = tmp_path / "run", tmp_path / "go"
    shutil.copytree(trained[0], run)
    env = {**os.environ, "CHAINRULE_DATA": DATA}
    first = subprocess.Popen([sys.executable, "-c", PAUSED_EVALUATE, str(run), str(go)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not Path(f"{go}.reading").exists():
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second, show = run_cli("digits", "evaluate", run), run_cli("digits", "show", run)
        assert (second.returncode, show.returncode) == (0, 0), second.stderr + show.stderr
        refused = run_cli("digits", "train", *TINY, "--out", run)  # (a run may not replace it meanwhile)
        assert refused.returncode == 2 and f"{run}: a command is reading the model in this folder (evaluate or " \
            f"show: it holds {run / 'model.lock'} shared); try again when it ends" in refused.stderr, refused.stderr
    finally:
        go.touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and out.startswith("test accuracy"), err
    assert (run / "first_layer.png").is_file() and (run / "eval_metrics.json").is_file()


def test_evaluate_and_show_of_a_model_on_a_read_only_file_system_say_so(trained, read_only_copy, capsys):
    """They said "m/model.lock: Read-only file system" (opening their lock's file to write failed
    first), not that evaluate writes its report beside the model and may be given --out, as they
    said of a folder they may not write. Without a lock file there, the folder is named."""
    run = read_only_copy(trained[0])
    code, _, err = cli(capsys, "digits", "evaluate", run)
    assert (code, err) == (2, f"chainrule: error: {run} cannot be written to (evaluate writes its report beside "
                              "the model: give --out DIR)\n")
    assert cli(capsys, "digits", "show", run)[::2] == (2, f"chainrule: error: {run}: cannot be written to "
                                                       "(Read-only file system)\n")
    bare = read_only_copy(trained[0], leave_out=("model.lock",))
    assert cli(capsys, "digits", "evaluate", bare)[::2] == (2, f"chainrule: error: {bare}: cannot be written to "
                                                           "(Read-only file system)\n")


def _limit_file_size(limit: int):
    """For a child process: files may not grow beyond `limit` bytes, as on a nearly full disk
    (Python ignores SIGXFSZ, so a write past it fails with EFBIG, 'File too large')."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.parametrize(("epochs", "failed_write"), [(3, r"checkpoint\.npz"), (2, r"model-[0-9a-f]{16}\.npz")])
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint_and_model(trained, tmp_path, epochs, failed_write):
    # the finished 2-epoch run resumed on a disk with room for 1 MB per file: for a third epoch, whose
    # checkpoint (~10 MB) cannot be written; or, stopped after its last epoch before its model was
    # saved (the checkpoint newer than model.json), as it saves the model's weights (2.7 MB)
    run = tmp_path / "run"
    shutil.copytree(trained[0], run)
    doc = json.loads((run / "run.json").read_text())
    doc["options"]["epochs"] = epochs
    (run / "run.json").write_text(json.dumps(doc))
    os.utime(run / "checkpoint.npz", ns=(time.time_ns(), (run / "model.json").stat().st_mtime_ns + 1))
    kept = {p.name: p.read_bytes() for p in (run / "checkpoint.npz", run / "model.json", model_files(run)["model"])}
    env = {**os.environ, "CHAINRULE_DATA": DATA}
    proc = subprocess.run([*CLI, "digits", "train", "--out", str(run), "--resume", "--quiet"], capture_output=True,
                          text=True, env=env, timeout=120, preexec_fn=_limit_file_size(1 << 20))
    line = assert_one_line_error(proc, 2)
    assert re.search(failed_write + ": File too large", line), line
    assert {name: (run / name).read_bytes() for name in kept} == kept
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert load_model(run)[0].num_parameters() == trained[1].num_parameters()


@pytest.mark.parametrize(("change", "said"), [
    ({"preprocessing": "flat"}, "preprocessing must be an object, got str"),
    ({"preprocessing.std": 1e-300}, "preprocessing.std must be a number in [1e-6, 1e6], got 1e-300"),
    ({"preprocessing.mean": 1e300}, "preprocessing.mean must be a number in [-1e6, 1e6], got 1e+300"),
    ({"preprocessing.scale": 0}, "preprocessing.scale must be a number in [1e-6, 1e6], got 0"),
    ({"preprocessing.scale": 1e-300}, "preprocessing.scale must be a number in [1e-6, 1e6], got 1e-300"),
    ({"preprocessing.scale": "255"}, "preprocessing.scale must be a number in [1e-6, 1e6], got '255'"),
    ({"preprocessing.layout": "image"}, "the network cannot read a image 28x28 image"),
    ({"preprocessing.picture": "face"}, "preprocessing.picture must be one of"),
    ({"classes": ["0", "1"]}, "classes must be a list of 10 distinct names"),
    ({"classes": ["a"] * 10}, "classes must be a list of 10 distinct names"),
    ({"classes": ["0\n1 (99.9%)", *"123456789"]}, r"class 0 ('0\n1 (99.9%)') holds a control character"),
    # (a lone surrogate, no character at all: `images evaluate` failed inside matplotlib, serve's JSON)
    ({"classes": ["\udcff", *"123456789"]}, r"class 0 ('\udcff') holds a control character"),
    ({"dataset": ""}, "dataset must be a data set's name or folder"),
    ({"recognised_as": "kmnist"}, "recognised_as must be one of mnist, fashion, got 'kmnist'"),
    ({"data_folder": 5}, "data_folder must be a folder's absolute path, got '5'"),
    ({"data_folder": "data/mnist"}, "data_folder must be a folder's absolute path, got 'data/mnist'"),
])
def test_damaged_image_model_metadata_is_refused_naming_the_problem(trained, tmp_path, change, said):
    out = tmp_path / "m"
    shutil.copytree(trained[0], out)
    doc = json.loads((out / "model.json").read_text())
    for key, value in change.items():
        where, _, leaf = key.rpartition(".")
        (doc["metadata"][where] if where else doc["metadata"])[leaf] = value
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelFileError) as caught:
        images.load_image_model(out)
    assert "invalid image model metadata" in str(caught.value) and said in str(caught.value)


# -- bad input: one line on stderr, non-zero exit, no traceback ---------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(trained, tmp_path_factory) -> dict[str, Path]:
    """Things a user might hand the CLI by mistake, next to the trained model ("out")."""
    out = trained[0]
    root = tmp_path_factory.mktemp("bad")
    paths = {"out": out, "root": root, "empty_dir": root / "empty", "corrupt": root / "corrupt",
             "broken_model": root / "broken", "other_task": root / "other", "bomb": root / "bomb.png"}
    paths["empty_dir"].mkdir()
    paths["picture_dir"] = root / "picture.png"
    paths["picture_dir"].mkdir()
    paths["corrupt"].mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (paths["corrupt"] / f"{name}.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    paths["broken_model"].mkdir()
    (paths["broken_model"] / "model.json").write_text((out / "model.json").read_text())
    (paths["broken_model"] / model_files(out)["model"].name).write_bytes(b"PK\x03\x04 not really a zip")
    paths["other_task"].mkdir()
    doc = json.loads((out / "model.json").read_text())
    doc["metadata"]["task"] = "spam"
    (paths["other_task"] / "model.json").write_text(json.dumps(doc))
    weights = model_files(out)["model"]
    (paths["other_task"] / weights.name).write_bytes(weights.read_bytes())
    for name, damage in (("bad_checkpoint", lambda d: (d / "checkpoint.npz").write_bytes(b"PK\x03\x04 cut short")),
                         ("bad_run", lambda d: (d / "run.json").write_text('{"options": ' + "[" * 100_000)),
                         ("bad_run_types", lambda d: (d / "run.json").write_text('{"options": {"epochs": "2"}}'))):
        paths[name] = root / name
        shutil.copytree(out, paths[name])
        damage(paths[name])
    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 0, 0, 0, 0)  # a PNG claiming 60,000 x 60,000 pixels
    chunks = [(b"IHDR", ihdr), (b"IDAT", zlib.compress(bytes(64))), (b"IEND", b"")]
    paths["bomb"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        for kind, data in chunks))
    return paths


# (arguments with {placeholders} from `bad_inputs`, exit code, what the one line must say)
BAD_INPUTS = {
    "missing model": (["digits", "evaluate", "{root}/no-such-model"], 2, "not found"),
    "corrupt weights": (["digits", "evaluate", "{broken_model}"], 2, "not a readable .npz"),
    "spam model": (["digits", "evaluate", "{other_task}"], 2, "not an image model"),
    "no data": (["digits", "evaluate", "{out}", "--data", "{empty_dir}"], 2,  # (the test files alone)
                "put t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (gzipped or not) in"),
    "corrupt data": (["digits", "evaluate", "{out}", "--data", "{corrupt}"], 2, "corrupt gzip"),
    "train on corrupt data": (["digits", "train", "--data", "{corrupt}", "--out", "{root}/r1", "--quiet"], 2,
                              "corrupt gzip"),
    "resume with other seed": (["digits", "train", "--out", "{out}", "--resume", "--seed", "99"], 2, "used seed=3"),
    "negative lr": (["digits", "train", "--lr", "-1", "--out", "{root}/r2"], 2, "--lr must be a finite number > 0"),
    "show into a folder": (["digits", "show", "{out}", "--out", "{empty_dir}"], 2,
                           "is a folder: name a figure file, ending in .png, .svg, .pdf"),
    "show into a folder named like a picture": (["digits", "show", "{out}", "--out", "{picture_dir}"], 2,
                                                "picture.png is a folder: name a figure file"),
    "image bomb": (["digits", "predict", "{out}", "{bomb}"], 1, "too large"),
    "predict with corrupt model": (["digits", "predict", "{broken_model}", "{bomb}"], 2, "not a readable .npz"),
    "show missing model": (["digits", "show", "{root}/no-such-model"], 2, "not found"),
    "train over a spam model": (["digits", "train", "--out", "{other_task}", "--quiet"], 2,
                                "holds a spam model; training would replace it"),
    "gradcheck --data without a model": (["gradcheck", "--data", "{empty_dir}"], 2, "give the model too"),
    "resume from a corrupt checkpoint": (["digits", "train", "--out", "{bad_checkpoint}", "--resume", "--quiet"], 2,
                                         "checkpoint.npz: not a readable .npz file"),
    "resume with a corrupt run.json": (["digits", "train", "--out", "{bad_run}", "--resume", "--quiet"], 2,
                                       "run.json: not a readable run description"),
    "resume with a run.json of bad types": (["digits", "train", "--out", "{bad_run_types}", "--resume"], 2,
                                            "run.json: not a readable run description (epochs is '2')"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_exit_nonzero_with_one_line(case, bad_inputs):
    args, code, expected = BAD_INPUTS[case]
    proc = run_cli(*(a.format(**bad_inputs) for a in args), cwd=Path(__file__).parent)
    line = assert_one_line_error(proc, code)
    assert expected in line, (args, line)
    assert not (bad_inputs["root"] / "r1" / "model.json").exists()


@pytest.mark.parametrize("group", ["digits", "images"])
def test_batch_size_1_with_batch_norm_is_refused_before_the_run_folder_is_made(tmp_path, capsys, group):
    """The cnn preset's batch norm cannot train on a batch of one example (its variance is 0): that
    was an internal error ("BatchNorm: training needs more than one value per feature") after the
    run folder was made, leaving only run.json and model.lock in it."""
    code, _, err = cli(capsys, group, "train", "--data", "mnist", "--model", "cnn", "--batch-size", "1",
                       "--train-size", "600", "--epochs", "1", "--quiet", "--out", tmp_path / "run")
    assert (code, err) == (2, "chainrule: error: --batch-size must be at least 2 for the cnn preset: batch "
                              "normalisation needs two examples per batch\n")
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_is_one_line_that_says_nothing_was_saved(tmp_path):
    """NumPy's overflow warnings came first (from the threads that run parts of Adam's update, which
    did not share the command's error state), then a line saying the last good weights were kept,
    of a run that saves nothing."""
    r = run_cli("digits", "train", *TINY, "--lr", "1e10", "--out", tmp_path / "run")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "training diverged" in r.stderr and "no model was saved" in r.stderr and "Warning" not in r.stderr
    assert not (tmp_path / "run" / "model.json").exists()


def test_a_run_that_diverges_over_an_earlier_one_leaves_that_runs_files_as_they_were(tmp_path, capsys,
                                                                                    monkeypatch):
    """A new run into the folder of a finished one deleted that run's checkpoint and wrote its own
    run.json, then diverged: the folder held the earlier model beside the options of a run that
    saved nothing, and --resume refused the earlier run's ("used batch_size=128, not 64") or started
    the diverging run again. Diverging at its first epoch or later, it leaves the folder as it was."""
    out = tmp_path / "run"
    assert cli(capsys, "digits", "train", *TINY[:4], "--epochs", "1", "--batch-size", "64", "--quiet",
               "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli("digits", "train", *TINY[:4], "--epochs", "1", "--lr", "1e308", "--quiet", "--out", out)
    assert r.returncode == 2 and "training diverged" in r.stderr, r.stderr
    assert r.stderr.endswith(f"no model was saved, the earlier run in {out} is as it was — try a smaller --lr\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    class DivergesInItsSecondEpoch(cr.Callback):  # (after its first epoch's checkpoint was written)
        def on_epoch_end(self, epoch, logs, model):
            if epoch == 1:
                raise cr.TrainingDiverged(float("nan"), 2, 3, 1e-3)

    real_fit = images.fit
    monkeypatch.setattr(images, "fit", lambda *a, **kw: real_fit(*a, callbacks=[DivergesInItsSecondEpoch()], **kw))
    code, _, err = cli(capsys, "digits", "train", *TINY[:4], "--epochs", "3", "--quiet", "--out", out)
    assert code == 2 and "training diverged: the loss became nan at epoch 2, batch 3" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_second_run_into_a_folder_another_run_is_writing_is_refused(tmp_path):
    """Two trainings into one --out both reported success and left one's run.json beside the
    other's model and checkpoint. A run holds the folder's writer lock (held here by this test)."""
    out = tmp_path / "run"
    out.mkdir()
    with locked_directory(out):
        r = run_cli("digits", "train", *TINY, "--out", out)
    assert r.returncode == 2 and "another run is writing to this folder" in r.stderr, r.stderr
    assert not (out / "run.json").exists() and not (out / "model.json").exists()


def test_resume_without_the_runs_options_is_refused(tmp_path):
    """With run.json gone, --resume took whatever options were given (or the preset's: 30 epochs
    of a 4-epoch run, another seed and so another validation split)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"an interrupted run's")
    with pytest.raises(UserError, match="run.json is missing"):
        images.resolve_run_options({"epochs": 1, "seed": 3}, out, resume=True)


def test_a_run_stopped_while_it_draws_its_figures_leaves_the_earlier_model_with_its_own(tmp_path, capsys,
                                                                                         monkeypatch):
    """The model was saved first, then its metrics and figures: Ctrl-C in between left the new
    model beside the earlier run's metrics.json, history.csv and figures."""
    out = tmp_path / "run"
    assert cli(capsys, "digits", "train", *TINY[:4], "--epochs", "1", "--quiet", "--out", out)[0] == 0
    assert cli(capsys, "digits", "evaluate", out)[0] == 0  # (its evaluation stays with it too: it was deleted)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.name not in ("checkpoint.npz", "run.json")}
    assert "eval_metrics.json" in before

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # stopped before its first epoch, over that finished run: nothing of it to continue (the advice
    # was to --resume, which finished the earlier run once more)
    with monkeypatch.context() as patched:
        patched.setattr(images.idx, "load_image_set", interrupted)
        code, _, err = cli(capsys, "digits", "train", *TINY[:4], "--epochs", "2", "--quiet", "--out", out)
    assert (code, err) == (130, "chainrule: interrupted before the run's first epoch was saved; nothing to "
                                "continue: start it again\n")
    monkeypatch.setattr(images.plots, "gradient_flow", interrupted)  # the last figure drawn
    code, _, err = cli(capsys, "digits", "train", *TINY[:4], "--epochs", "2", "--quiet", "--out", out)
    assert code != 0 and "interrupted" in err and "--resume" in err
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name not in ("checkpoint.npz", "run.json")}
    assert after == before  # (no staging folder left either)
    # its epochs are done, its model is not saved: a plain run does not throw them away
    code, _, err = cli(capsys, "digits", "train", *TINY[:4], "--epochs", "2", "--quiet", "--out", out)
    assert code == 2 and "holds the checkpoint of an unfinished run: continue it with --resume" in err


def test_ctrl_c_as_a_run_saves_its_model_waits_for_its_files_and_says_the_run_ended(tmp_path, capsys,
                                                                                     monkeypatch):
    """Ctrl-C between the model's save and its files' renames left a new model beside the earlier
    run's history (a signal mask held nothing once BLAS's threads ran)."""
    out = tmp_path / "run"
    save = cr.Sequential.save

    def save_then_ctrl_c(model, *args, **kwargs):
        files = save(model, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # (to the process: the kernel may hand it to a BLAS thread)
        time.sleep(0.1)
        return files

    monkeypatch.setattr(cr.Sequential, "save", save_then_ctrl_c)
    code, _, err = cli(capsys, "digits", "train", *TINY[:4], "--epochs", "2", "--quiet", "--out", out)
    assert (code, err) == (130, f"chainrule: interrupted as the run ended; its model and files are saved in {out}\n")
    monkeypatch.undo()
    metrics, history = json.loads((out / "metrics.json").read_text()), (out / "history.csv").read_text()
    assert metrics["epochs_run"] == 2 and len(history.strip().splitlines()) == 3  # (a header, two epochs)
    assert load_model(out)[0] is not None


def test_a_new_run_over_an_old_one_leaves_nothing_of_the_old_models_evaluation(tmp_path):
    """eval_metrics.json, mistakes.png and first_layer.png of the earlier model stayed beside the
    new one, and a killed run's partial checkpoint file stayed for good."""
    out = tmp_path / "run"
    assert run_cli("digits", "train", *TINY[:4], "--epochs", "1", "--quiet", "--out", out).returncode == 0
    stale = [out / name for name in images.DERIVED_FILES] + [out / ".checkpoint.npz.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"of the earlier run")
    r = run_cli("digits", "train", *TINY[:4], "--epochs", "1", "--quiet", "--out", out)
    assert (r.returncode, r.stderr) == (0, f"chainrule: warning: replacing the earlier run in {out}\n")
    assert not any(path.exists() for path in stale) and (out / "model.json").is_file()


def test_a_run_without_figures_over_an_old_one_leaves_none_of_the_old_runs_figures(tmp_path):
    """figures=False (the benchmarks, the web tests) over a run that drew them kept its learning
    curves, confusion matrix and gradient flow, titled with the earlier preset, beside the new model."""
    out = tmp_path / "run"
    images.train("small", out, epochs=1, data=DATA, train_size=600, verbose=False)
    figures = ("learning_curves.png", "confusion_matrix.png", "gradient_flow.png")
    assert all((out / name).is_file() for name in figures)
    images.train("mlp", out, epochs=1, data=DATA, train_size=600, verbose=False, figures=False)
    assert json.loads((out / "model.json").read_text())["metadata"]["preset"] == "mlp"
    assert json.loads((out / "metrics.json").read_text())["model"] == "mlp"
    assert [name for name in figures if (out / name).exists()] == []
