"""`chainrule images`: the image app on Fashion-MNIST and on a folder with its own classes.txt,
through the command line, with the class names in every output; presets per data set.

Training is tiny (1,200 images, one epoch); accuracy is bench/digits_accuracy.py's business.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from chainrule.apps import image_presets, images
from chainrule.cli import main
from chainrule.data.idx import KNOWN_SETS, load_image_set
from chainrule.errors import UserError

DATA = os.environ.get("CHAINRULE_DATA")
pytestmark = pytest.mark.skipif(not DATA, reason="CHAINRULE_DATA is not set")
CLI = [sys.executable, "-c", "import sys; from chainrule.cli import main; sys.exit(main())"]
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TINY = ("--train-size", "1200", "--epochs", "1", "--quiet")


def run_cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env={**os.environ, "CHAINRULE_DATA": DATA})


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def fashion_run(fashion_dir, tmp_path_factory):
    """`chainrule images train --data fashion` (the mlp preset) on 1,200 images for one epoch."""
    out = tmp_path_factory.mktemp("fashion") / "mlp"
    proc = run_cli("images", "train", "--data", "fashion", *TINY, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout
    return out


@pytest.fixture(scope="module")
def photos(fashion_dir, tmp_path_factory):
    """Fashion-MNIST test items 0-3 as photos: dark on white, 4x larger, on a larger page."""
    folder = tmp_path_factory.mktemp("photos")
    items = load_image_set("fashion", "test").images[:4]
    paths = []
    for i, item in enumerate(items):
        page = Image.new("L", (150, 130), 255)
        page.paste(Image.fromarray(255 - item).resize((112, 112), Image.Resampling.BICUBIC), (20, 9))
        paths.append(folder / f"item{i}.png")
        page.save(paths[-1])
    return paths


def test_fashion_model_records_its_data_set_classes_and_preprocessing(fashion_run):
    meta = json.loads((fashion_run / "model.json").read_text())["metadata"]
    assert meta["task"] == "images" and meta["dataset"] == "fashion" and meta["preset"] == "mlp"
    assert meta["classes"] == FASHION
    assert meta["preprocessing"]["picture"] == "object" and "digit_box" not in meta["preprocessing"]
    metrics = json.loads((fashion_run / "metrics.json").read_text())
    assert metrics["dataset"] == "fashion" and metrics["test"]["n"] == 10000
    assert metrics["test"]["classes"] == FASHION and list(metrics["test"]["per_class"]) == FASHION
    assert json.loads((fashion_run / "run.json").read_text())["options"]["data"] == "fashion"
    for name in ("learning_curves.png", "confusion_matrix.png", "gradient_flow.png"):
        assert (fashion_run / name).is_file()


def test_evaluate_and_show_given_the_models_json_write_into_its_folder(fashion_run, capsys):
    """MODEL may name the model.json or weights file (predict took it): evaluate and show did all
    their work, then failed to write into "model.json/" ("File exists")."""
    for name in ("eval_metrics.json", "first_layer.png"):
        (fashion_run / name).unlink(missing_ok=True)
    assert cli(capsys, "images", "evaluate", fashion_run / "model.json")[0] == 0
    assert cli(capsys, "images", "show", fashion_run / "model.json")[0] == 0
    assert (fashion_run / "eval_metrics.json").is_file() and (fashion_run / "first_layer.png").is_file()


def test_an_evaluate_that_stops_part_way_leaves_the_earlier_files_whole(fashion_run, tmp_path, capsys, monkeypatch):
    """Its three files appear together: stopped after the confusion matrix, or refused for a folder
    where mistakes.png goes, it left a new matrix beside the old metrics and mistakes."""
    assert cli(capsys, "images", "evaluate", fashion_run, "--out", tmp_path / "ev")[0] == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()}
    assert set(before) == {"eval_metrics.json", "eval_confusion_matrix.png", "mistakes.png"}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "save_mistakes_grid", interrupted)
    code, _, err = cli(capsys, "images", "evaluate", fashion_run, "--out", tmp_path / "ev", "--top", "7")
    assert code != 0 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "ev").iterdir()} == before  # (no staging folder left)
    monkeypatch.undo()
    (tmp_path / "half" / "mistakes.png").mkdir(parents=True)
    code, _, err = cli(capsys, "images", "evaluate", fashion_run, "--out", tmp_path / "half")
    assert code == 2 and err == f"chainrule: error: {tmp_path / 'half' / 'mistakes.png'}: a folder is in the way\n"
    assert [p.name for p in (tmp_path / "half").iterdir()] == ["mistakes.png"]


def test_evaluate_of_a_model_folder_it_may_not_write_says_to_give_out(fashion_run, tmp_path, capsys, monkeypatch):
    """A read-only model folder: evaluate said "models/img: Permission denied", after the evaluation,
    and not that it writes its report beside the model. (Root writes any folder: os.access says no
    here as it says to another user.)"""
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != fashion_run.absolute() and
                        access(path, mode, **kw))
    code, _, err = cli(capsys, "images", "evaluate", fashion_run)
    assert code == 2 and err == (f"chainrule: error: {fashion_run.absolute()} cannot be written to (evaluate writes "
                                 "its report beside the model: give --out DIR)\n")
    code, _, err = cli(capsys, "images", "evaluate", fashion_run, "--out", fashion_run)
    assert code == 2
    assert err == f"chainrule: error: --out {fashion_run}: {fashion_run.absolute()} cannot be written to\n"
    assert cli(capsys, "images", "evaluate", fashion_run, "--out", tmp_path / "ev")[0] == 0


def test_evaluate_and_predict_name_the_classes(fashion_run, photos, tmp_path, capsys):
    # evaluate: on the set the model was trained on, without being told
    code, stdout, _ = cli(capsys, "images", "evaluate", fashion_run, "--out", tmp_path)
    assert code == 0
    assert stdout.startswith("test accuracy: ") and "class        precision   recall" in stdout
    for name in FASHION:
        assert f"\n{name:>11}  " in stdout  # a row of the per-class table
    assert "0 T-shirt/top" in stdout and "9 Ankle boot" in stdout  # rows of the confusion matrix
    report = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert report["dataset"] == "fashion" and report["classes"] == FASHION and list(report["per_class"]) == FASHION
    for name in ("eval_confusion_matrix.png", "mistakes.png"):
        assert (tmp_path / name).is_file()
    # predict: text names the class and lists every class's probability; JSON has label and index
    code, stdout, _ = cli(capsys, "images", "predict", fashion_run, *photos)
    assert code == 0
    lines = stdout.strip().splitlines()
    assert len(lines) == len(photos)
    for line, path in zip(lines, photos, strict=True):
        label = line.split(": ", 1)[1].split(" (")[0]
        assert line.startswith(f"{path}: ") and label in FASHION
        assert "[T-shirt/top:" in line and " Ankle boot:" in line
    code, stdout, _ = cli(capsys, "images", "predict", fashion_run, *photos, "--json")
    results = json.loads(stdout)
    model, metadata = images.load_image_model(fashion_run)
    for r, path in zip(results, photos, strict=True):
        assert set(r) == {"source", "label", "index", "probabilities"}  # no "digit": these are clothes
        assert r["label"] == FASHION[r["index"]] and r["index"] == int(np.argmax(r["probabilities"]))
        assert r == images.predict_images(model, metadata, [path])[0]
    code, stdout, _ = cli(capsys, "images", "show", fashion_run, "--units", "10", "--out", tmp_path / "w.png")
    assert code == 0 and "10 of 1024" in stdout  # the wide mlp of Fashion-MNIST's presets


def test_gradcheck_takes_a_fashion_models_inputs_from_its_own_data_set(fashion_run, capsys):
    code, stdout, _ = cli(capsys, "gradcheck", fashion_run, "--samples", "5")
    assert code == 0 and "on 4 Fashion-MNIST test images, scored" in stdout and "PASS" in stdout
    code, stdout, _ = cli(capsys, "gradcheck", fashion_run, "--samples", "5", "--data", "mnist")  # said so
    assert code == 0 and "on 4 MNIST test images (it was trained on Fashion-MNIST)" in stdout


def test_a_fashion_model_is_not_scored_on_digits(fashion_run):
    proc = run_cli("images", "evaluate", fashion_run, "--data", "mnist")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "was trained on Fashion-MNIST (T-shirt/top, " in proc.stderr and "not on MNIST (0, 1," in proc.stderr


def test_a_folder_with_classes_txt_trains_a_model_of_its_own_classes(fashion_dir, tmp_path, capsys):
    """Three of Fashion-MNIST's classes, relabelled 0-2 and named in classes.txt: a model with three
    outputs, whose names appear in evaluate's table and predict's answers."""
    folder = tmp_path / "footwear-and-tops"
    folder.mkdir()
    keep = np.array([0, 5, 7])  # T-shirt/top, Sandal, Sneaker
    for split, n in (("train", 1500), ("test", 300)):
        s = load_image_set("fashion", split)
        chosen = np.nonzero(np.isin(s.labels, keep))[0][:n]
        relabelled = np.searchsorted(keep, s.labels[chosen]).astype(np.uint8)
        for name, array in zip(("train-images-idx3-ubyte", "train-labels-idx1-ubyte") if split == "train"
                               else ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                               (s.images[chosen], relabelled), strict=True):
            header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
            (folder / name).write_bytes(header + array.tobytes())
    (folder / "classes.txt").write_text("top\nsandal\nsneaker\n")
    code, stdout, stderr = cli(capsys, "images", "train", "--data", folder, *TINY, "--out", tmp_path / "run")
    assert code == 0, stderr
    model, meta = images.load_image_model(tmp_path / "run")
    assert meta["classes"] == ["top", "sandal", "sneaker"] and model.output_shape == (3,)
    assert meta["dataset"] == str(folder.resolve()) and meta["preprocessing"]["picture"] == "digit"
    code, stdout, _ = cli(capsys, "images", "evaluate", tmp_path / "run")  # the folder, from the metadata
    assert code == 0 and "/300)" in stdout
    assert "\n    top  " in stdout and "\nsneaker  " in stdout and "2 sneaker" in stdout
    page = tmp_path / "shoe.png"
    Image.fromarray(255 - load_image_set(folder, "test").images[0]).save(page)
    code, stdout, _ = cli(capsys, "images", "predict", tmp_path / "run", page)
    assert code == 0 and "[top:" in stdout and " sneaker:" in stdout


def test_a_folder_of_a_known_sets_files_with_test_files_or_names_of_its_own_is_evaluated_as_itself(
        mnist_dir, fashion_dir, tmp_path, capsys, monkeypatch):
    """A folder of MNIST's training files and test files of its own was recorded as MNIST: train
    scored the folder's test images, `evaluate` (no --data) the published 10,000 ("73.10%", then
    "77.68%"); Fashion-MNIST's four files with a classes.txt of French names trained a model that
    its own evaluate refused ("trained on Fashion-MNIST (T-shirt, Pantalon, ...), not on
    Fashion-MNIST (T-shirt/top, ...)"). The model records the folder, trained with the presets of
    the set its images are; the run is named for the folder, as other folders' are."""
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "own-test"
    own.mkdir()
    for f in mnist_dir.glob("train-*"):
        (own / f.name).symlink_to(f)
    published = load_image_set("mnist", "test")
    _write_idx(own, "test", published.images[:500], published.labels[:500])
    code, _, stderr = cli(capsys, "images", "train", "--data", own, *TINY)
    assert code == 0, stderr
    run = tmp_path / "runs" / "own-test-mlp"
    meta = json.loads((run / "model.json").read_text())["metadata"]
    assert (meta["dataset"], meta["recognised_as"]) == (str(own.resolve()), "mnist")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["test"]["n"]) == (str(own.resolve()), 500)
    code, stdout, stderr = cli(capsys, "images", "evaluate", run)
    assert code == 0, stderr
    assert stdout.startswith(f"test accuracy: {100 * metrics['test']['accuracy']:.2f}% (") and "/500)" in stdout

    french = ["T-shirt", "Pantalon", "Pull", "Robe", "Manteau", "Sandale", "Chemise", "Basket", "Sac", "Bottine"]
    renamed = tmp_path / "vetements"
    renamed.mkdir()
    for f in fashion_dir.iterdir():
        (renamed / f.name).symlink_to(f)
    (renamed / "classes.txt").write_text("\n".join(french) + "\n")
    code, _, stderr = cli(capsys, "images", "train", "--data", renamed, *TINY)
    assert code == 0, stderr
    run = tmp_path / "runs" / "vetements-mlp"
    model, meta = images.load_image_model(run)
    assert (meta["dataset"], meta["recognised_as"], meta["classes"]) == (str(renamed.resolve()), "fashion", french)
    assert meta["preprocessing"]["picture"] == "object" and model.layers[0].params["weight"].shape == (784, 1024)
    code, stdout, stderr = cli(capsys, "images", "evaluate", run)
    assert code == 0, stderr
    assert "/10000)" in stdout and "\nPantalon  " in stdout and "9 Bottine" in stdout


@pytest.fixture()
def nowhere_else(tmp_path, monkeypatch) -> Path:
    """No $CHAINRULE_DATA, an empty home and user cache, and MNIST downloaded from an address that
    refuses: MNIST looked for by name is found nowhere. Returns the user cache's folder."""
    monkeypatch.delenv("CHAINRULE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setitem(KNOWN_SETS, "mnist", dataclasses.replace(KNOWN_SETS["mnist"], url="http://127.0.0.1:9/"))
    return tmp_path / "cache" / "chainrule"


def test_a_model_trained_from_a_folder_holding_mnist_is_evaluated_and_gradchecked_on_that_folder(
        nowhere_else, tmp_path, capsys, monkeypatch):
    """`digits train --data DIR`, DIR holding MNIST as published, recorded the set's name alone
    ("dataset": "mnist"), so `evaluate` and `gradcheck` of the model looked for MNIST by name in
    the standard places and, found nowhere, downloaded it (here: "MNIST not found and the download
    failed"). The model records the folder; it is looked in first while it holds the set's test
    files, and the set is looked for by name otherwise, as a model without the record is."""
    folder = tmp_path / "my mnist"
    folder.mkdir()
    for name in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        shutil.copy(next((Path(DATA) / "mnist").glob(f"{name}-*")), folder)
    run = tmp_path / "run"
    code, _, stderr = cli(capsys, "digits", "train", "--data", folder, "--model", "small", "--epochs", "1",
                          "--train-size", "600", "--out", run, "--quiet")
    assert code == 0, stderr
    code, stdout, stderr = cli(capsys, "digits", "evaluate", run)
    assert code == 0, stderr
    assert "/10000)" in stdout
    assert json.loads((run / "eval_metrics.json").read_text())["dataset"] == "mnist"
    code, stdout, stderr = cli(capsys, "gradcheck", run, "--samples", "2")
    assert code == 0, stderr
    assert "on 4 MNIST test images, scored" in stdout
    meta = json.loads((run / "model.json").read_text())["metadata"]
    assert (meta["dataset"], meta["data_folder"]) == ("mnist", str(folder.resolve()))

    # the folder no longer holds the test files: MNIST by name, --data first
    kept = tmp_path / "kept"
    kept.mkdir()
    for test_file in folder.glob("t10k-*"):
        test_file.rename(kept / test_file.name)
    code, _, stderr = cli(capsys, "digits", "evaluate", run)
    assert code == 2 and "MNIST not found and the download failed" in stderr
    assert cli(capsys, "digits", "evaluate", run, "--data", kept)[0] == 0
    monkeypatch.setenv("CHAINRULE_DATA", DATA)
    assert cli(capsys, "digits", "evaluate", run)[0] == 0
    assert cli(capsys, "gradcheck", run, "--samples", "2")[0] == 0

    # a model file without the record (an older one) looks for MNIST by name, as before
    monkeypatch.delenv("CHAINRULE_DATA")
    for test_file in kept.iterdir():
        test_file.rename(folder / test_file.name)
    assert cli(capsys, "digits", "evaluate", run)[0] == 0
    doc = json.loads((run / "model.json").read_text())
    del doc["metadata"]["data_folder"]
    (run / "model.json").write_text(json.dumps(doc))
    code, _, stderr = cli(capsys, "digits", "evaluate", run)
    assert code == 2 and "MNIST not found and the download failed" in stderr


def test_class_names_are_printed_escaped_and_figures_of_any_script_draw_without_warnings(tmp_path, capsys):
    """A classes.txt with an ESC sequence or a TAB trained a model whose names predict and evaluate
    printed as they are (a coloured terminal, a forged line), and matplotlib warned on stderr of
    every glyph its font lacks (ESC, TAB, each character of a CJK name, a multi-line warning each).
    Control characters are refused where names come in, what else a terminal acts on is printed
    escaped, and the figures say nothing of glyphs they cannot draw."""
    folder = tmp_path / "three"
    folder.mkdir()
    for split, n in (("train", 2000), ("test", 300)):
        s = load_image_set("mnist", split)
        first = s.labels[:n] < 3
        _write_idx(folder, split, s.images[:n][first], s.labels[:n][first])
    (folder / "classes.txt").write_text("zero\x1b[31mRED\none\ttab\ntwo\n")
    code, _, stderr = cli(capsys, "images", "train", "--data", folder, "--epochs", "1", "--quiet", "--out",
                          tmp_path / "run")
    assert (code, stderr) == (2, f"chainrule: error: {folder / 'classes.txt'}: line 1: the class name "
                                 "'zero\\x1b[31mRED' holds a control character\n")
    assert not (tmp_path / "run").exists()
    (folder / "classes.txt").write_text("\u96f6\n\u4e00\n\u4e8c\u2028forged (99.9%)\n")  # zero, one, two
    proc = run_cli("images", "train", "--data", folder, "--epochs", "1", "--quiet", "--out", tmp_path / "run")
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = run_cli("images", "evaluate", tmp_path / "run")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "\u2028" not in proc.stdout
    assert "\n0 \u96f6" in proc.stdout and "2 \u4e8c\\u2028forged (99.9%)" in proc.stdout
    page = tmp_path / "two.png"
    Image.fromarray(255 - load_image_set(folder, "test").images[0]).save(page)
    code, stdout, _ = cli(capsys, "images", "predict", tmp_path / "run", page)
    assert code == 0 and stdout.count("\n") == 1 and "\u2028" not in stdout
    assert " \u4e8c\\u2028forged (99.9%):" in stdout


def test_digits_is_images_with_mnist_as_the_data_set(tmp_path, fashion_dir, capsys):
    resolve = images.resolve_run_options
    assert resolve({}, None)["out"] == "runs/digits-mlp" and resolve({}, None)["data"] == "mnist"
    assert resolve({"data": "fashion", "model": "cnn"}, None, default_data=None)["out"] == "runs/fashion-cnn"
    assert resolve({"data": fashion_dir}, None, default_data=None)["out"] == "runs/fashion-mlp"  # recognised
    assert resolve({"data": "fashion"}, None)["epochs"] == image_presets.PRESETS["fashion"]["mlp"].epochs
    assert list(image_presets.PRESETS["mnist"]) == ["mlp", "small", "lenet5", "cnn"]
    assert list(image_presets.PRESETS["fashion"]) == ["mlp", "cnn"]
    for args, expected in (
        (["images", "train"], "no data set given: --data mnist or --data fashion or --data DIR"),
        (["images", "train", "--data", "fashion", "--model", "lenet5"],
         "Fashion-MNIST has no preset 'lenet5'; choose from mlp, cnn"),
        (["digits", "train", "--data", "fashon"], "fashon: no such folder, and not a known data set"),
    ):
        code, _, stderr = cli(capsys, *args, "--out", tmp_path / "never")
        assert code == 2 and stderr.startswith("chainrule: error: ") and stderr.count("\n") == 1
        assert expected in stderr, stderr
    assert not (tmp_path / "never").exists()


def test_digits_commands_refuse_a_model_that_does_not_read_digits(fashion_run, photos, capsys):
    for command in (["evaluate", fashion_run], ["predict", fashion_run, photos[0]], ["show", fashion_run]):
        code, _, stderr = cli(capsys, "digits", *command)
        assert (code, stderr) == (2, f"chainrule: error: {fashion_run}: a model of Fashion-MNIST, not of digits: "
                                     "use `chainrule images` for it\n")


def test_digits_train_refuses_a_data_set_that_is_not_digits(fashion_dir, tmp_path, capsys):
    """It trained a Fashion-MNIST model that every other `digits` command then refused."""
    code, _, stderr = cli(capsys, "digits", "train", "--data", "fashion", *TINY, "--out", tmp_path / "run")
    assert (code, stderr) == (2, "chainrule: error: Fashion-MNIST: its classes are T-shirt/top, Trouser, Pullover, "
                                 "Dress, ..., Ankle boot, not 0, 1, 2, 3, ..., 9\n")
    assert not (tmp_path / "run").exists()


def test_resume_continues_on_the_data_set_the_run_started_with(fashion_run):
    opts = images.resolve_run_options({}, fashion_run, resume=True)  # `chainrule digits train --resume`
    assert opts["data"] == "fashion" and opts["train_size"] == 1200
    with pytest.raises(UserError, match="used data='fashion', not 'mnist'"):
        images.resolve_run_options({"data": "mnist"}, fashion_run, resume=True)


def test_clothes_are_mirrored_and_shifted_never_rotated(fashion_dir):
    """Fashion-MNIST's presets augment with whole-pixel shifts of the item or of its mirror image,
    nothing else; MNIST's never mirror (a mirrored 2 is not a 2)."""
    item = load_image_set("fashion", "test").images[0].astype(np.float32) / 255  # an ankle boot: not symmetric
    batch = np.repeat(item.reshape(1, 784), 200, axis=0)
    rng = np.random.default_rng(0)

    def shifted(img, dy, dx):
        out = np.zeros_like(img)
        out[max(dy, 0):28 + min(dy, 0), max(dx, 0):28 + min(dx, 0)] = \
            img[max(-dy, 0):28 + min(-dy, 0), max(-dx, 0):28 + min(-dx, 0)]
        return out

    variants = {(m, dy, dx): shifted(np.fliplr(item) if m else item, dy, dx)
                for m in (0, 1) for dy in range(-2, 3) for dx in range(-2, 3)}
    for name, preset in image_presets.PRESETS["fashion"].items():
        seen = set()
        for out in preset.augment(batch, rng).reshape(-1, 28, 28):
            match = [k for k, v in variants.items() if np.array_equal(out, v)]
            assert match, f"{name}: an augmented image is not a shift of the item or of its mirror"
            seen.update(k[0] for k in match)
        assert seen == {0, 1}, name
    for preset in image_presets.PRESETS["mnist"].values():
        if preset.augment is not None:
            out = preset.augment(batch, rng).reshape(-1, 28, 28)
            assert not any(np.abs(o - np.fliplr(item)).mean() < np.abs(o - item).mean() for o in out)


def _write_idx(folder, split: str, images_: np.ndarray, labels: np.ndarray) -> None:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte") if split == "train" else \
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for name, array in zip(names, (images_, labels.astype(np.uint8)), strict=True):
        header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
        (folder / name).write_bytes(header + array.tobytes())


def test_labels_with_gaps_are_refused_before_anything_is_written(fashion_dir, tmp_path, capsys):
    """Labels 0, 1 and 5 without a classes.txt: classes 2-4 would be outputs no image teaches (one
    stray label of 200 made a 201-class model). Refused in one line, and no run folder is left."""
    folder = tmp_path / "gaps"
    folder.mkdir()
    for split in ("train", "test"):
        s = load_image_set("fashion", split)
        chosen = np.nonzero(np.isin(s.labels, [0, 1, 5]))[0][:600]
        _write_idx(folder, split, s.images[chosen], s.labels[chosen])
    code, _, stderr = cli(capsys, "images", "train", "--data", folder, *TINY, "--out", tmp_path / "run")
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.endswith(": no training image of class 2, 3, 4 (of 6); labels must "
                                                       "number the classes 0, 1, ... without gaps\n")
    assert not (tmp_path / "run").exists()
    (folder / "t10k-images-idx3-ubyte").unlink()  # a set without its test images: refused, nothing left
    s = load_image_set("fashion", "train")
    _write_idx(folder, "train", s.images[:600], s.labels[:600])
    code, _, stderr = cli(capsys, "images", "train", "--data", folder, *TINY, "--train-size", "600",
                          "--out", tmp_path / "run")
    assert code == 2 and "t10k-images" in stderr and not (tmp_path / "run").exists()


def test_batch_norm_trains_on_batches_of_two_when_one_example_is_left_over(tmp_path, capsys):
    """The cnn preset with --batch-size 2 on 23 training images (25, 2 held out): the example
    left over at each epoch's end joins the batch before it, as batch norm needs two."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for split, n in (("train", 25), ("test", 40)):
        s = load_image_set("mnist", split)
        _write_idx(folder, split, s.images[:n], s.labels[:n])
    code, stdout, stderr = cli(capsys, "images", "train", "--data", folder, "--model", "cnn", "--batch-size", "2",
                               "--epochs", "1", "--quiet", "--out", tmp_path / "run")
    assert code == 0, stderr
    assert "/40)" in stdout and json.loads((tmp_path / "run" / "metrics.json").read_text())["train_images"] == 23


def test_a_set_too_small_to_hold_out_validation_images_is_refused_in_one_line(tmp_path, capsys):
    """11 training images: the twelfth of them held out to choose the epoch was none, and `fit`'s
    own complaint came out as an internal error ("early stopping on a validation metric needs
    validation_split or validation_data"). 12 train on 11 and choose the epoch on one."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for split, n in (("train", 11), ("test", 50)):
        s = load_image_set("mnist", split)
        chosen = np.nonzero(s.labels < 2)[0][:n]
        _write_idx(folder, split, s.images[chosen], s.labels[chosen])
    code, _, stderr = cli(capsys, "images", "train", "--data", folder, "--epochs", "1", "--quiet",
                          "--out", tmp_path / "run")
    assert (code, stderr) == (2, "chainrule: error: tiny: 11 training images; a model needs at least 12, a twelfth "
                                 "of them held out to choose the epoch\n")
    assert not (tmp_path / "run").exists()
    s = load_image_set("mnist", "train")
    chosen = np.nonzero(s.labels < 2)[0][:12]
    _write_idx(folder, "train", s.images[chosen], s.labels[chosen])
    code, _, stderr = cli(capsys, "images", "train", "--data", folder, "--epochs", "1", "--quiet",
                          "--out", tmp_path / "run")
    assert code == 0, stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["validation_images"] == 1


def test_a_folder_of_one_sets_training_files_and_anothers_test_files_is_refused(fashion_dir, mnist_dir, tmp_path,
                                                                                  capsys):
    """Fashion-MNIST's training files beside MNIST's test files: the model would be scored on digits
    it never learned (it was: "test accuracy 9.91%", exit 0, while `evaluate` refused the same
    test files). Refused before anything is written, as `evaluate` refuses it."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (mixed / name).symlink_to(fashion_dir / name)
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (mixed / name).symlink_to(mnist_dir / name)
    code, _, stderr = cli(capsys, "images", "train", "--data", mixed, *TINY, "--out", tmp_path / "run")
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert "training images are Fashion-MNIST (T-shirt/top, " in stderr and "test images are MNIST (0, 1," in stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("option", "said"), [(("--lr", "0"), "--lr must be a finite number > 0, got 0.0"),
                                              (("--lr", "inf"), "--lr must be a finite number > 0, got inf"),
                                              (("--seed", "-1"), "--seed must be an integer >= 0, got -1"),
                                              (("--train-size", "500"), "--train-size must be above 500, got 500"),
                                              (("--train-size", "60001"), "--train-size 60,001 is more than the "
                                                                          "60,000 training images of Fashion-MNIST")])
def test_bad_training_options_are_refused_before_anything_is_written(fashion_dir, tmp_path, capsys, option, said):
    """--lr 0 was taken as 'not given' (the preset's rate trained), --lr inf and --seed -1 failed
    later as internal errors, each leaving a run.json behind; a --train-size above the set's size
    trained on the whole set without a word."""
    code, _, stderr = cli(capsys, "images", "train", "--data", "fashion", *TINY, *option, "--out", tmp_path / "run")
    assert (code, stderr) == (2, f"chainrule: error: {said}\n")
    assert not (tmp_path / "run").exists()


def test_an_out_that_cannot_be_a_folder_is_refused_before_training(fashion_dir, tmp_path, capsys):
    """`--out afile` said "afile: File exists", after the data was read."""
    (tmp_path / "afile").write_text("notes")
    for out, said in ((tmp_path / "afile", "exists and is not a folder"),
                      (tmp_path / "afile" / "run", f"{tmp_path / 'afile'} is a file, not a folder")):
        code, _, stderr = cli(capsys, "images", "train", "--data", "fashion", *TINY, "--out", out)
        assert (code, stderr) == (2, f"chainrule: error: --out {out}: {said}\n")
    assert (tmp_path / "afile").read_text() == "notes"


@pytest.mark.parametrize("args", [("images", "train", "--out", ""), ("images", "train", "--out="),
                                  ("images", "train", "--data", ""), ("images", "evaluate", "runs/x", "--data", ""),
                                  ("digits", "predict", "runs/x", ""),
                                  ("spam", "daemon", "runs/x", "--user-models", "")])
def test_an_empty_argument_is_a_usage_error_not_the_current_folder(args, tmp_path, capsys, monkeypatch):
    """`--out "$DIR"` with DIR unset wrote a whole run into the current folder; `--data ""` looked
    for data sets there, and `spam daemon --user-models ""` for users' models."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        cli(capsys, *args)
    assert stopped.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.endswith(("argument --out: an empty value (an unset shell variable?)",
                          f"an empty argument after {args[-2]} (an unset shell variable?)",
                          ": an empty argument (an unset shell variable?)")), said
    assert not list(tmp_path.iterdir())


def test_a_sigmoid_networks_class_scores_are_shown_as_one_distribution():
    """The `small` preset ends in a Sigmoid per class (trained on MSE): its scores need not sum to 1,
    and what predict, evaluate and the web page show as probabilities must."""
    model = image_presets.build_model(image_presets.PRESETS["mnist"]["small"], 10, seed=0)
    x = np.random.default_rng(0).random((50, 784), np.float32)
    scores = model.predict_proba(x)
    assert not np.allclose(scores.sum(axis=1), 1)
    p = images.class_distribution(model, scores)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-6)
    assert np.array_equal(p.argmax(axis=1), scores.argmax(axis=1))
    softmax = image_presets.build_model(image_presets.PRESETS["mnist"]["mlp"], 10, seed=0)
    q = softmax.predict_proba(x)
    np.testing.assert_array_equal(images.class_distribution(softmax, q), q)  # softmax's: as they are


def test_the_per_class_table_keeps_its_columns_at_100_percent():
    from chainrule.cli.images import report_text

    per_class = {"0": {"precision": 0.9054, "recall": 1.0, "f1": 0.9504, "support": 10},
                 "1": {"precision": 1.0, "recall": 0.8, "f1": 0.8889, "support": 10}}
    report = {"accuracy": 0.9, "n": 20, "errors": 2, "classes": ["0", "1"], "per_class": per_class,
              "confusion_matrix": [[10, 0], [2, 8]]}
    header, *rows = report_text(report).split("\n\n")[1].splitlines()
    assert rows == ["    0     90.54%  100.00%   95.04%       10", "    1    100.00%   80.00%   88.89%       10"]
    assert all(len(row) == len(header) for row in rows)
    # a class not in the test set has no recall, one never predicted no precision: n/a, not 0.00%
    report["per_class"]["1"] = {"precision": None, "recall": None, "f1": None, "support": 0}
    header, *rows = report_text(report).split("\n\n")[1].splitlines()
    assert rows[1] == "    1        n/a      n/a      n/a        0" and len(rows[1]) == len(header)


def test_numbered_classes_label_the_confusion_matrix_rows_once():
    """Classes numbered 0-2 (a folder without classes.txt) labelled its rows "0 0", "1 1", "2 2":
    the number and a name that is the number again."""
    from chainrule.cli.images import report_text

    per_class = {str(k): {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 5} for k in range(3)}
    report = {"accuracy": 1.0, "n": 15, "errors": 0, "classes": ["0", "1", "2"], "per_class": per_class,
              "confusion_matrix": [[5, 0, 0], [0, 5, 0], [0, 0, 5]]}
    matrix = report_text(report).split("\n\n")[2].splitlines()
    assert matrix == ["confusion matrix (rows: true class, columns: predicted)",
                      "           0     1     2",
                      "     0     5     0     0",
                      "     1     0     5     0",
                      "     2     0     0     5"]


def test_a_data_folder_whose_name_is_not_utf8_trains_and_evaluates_with_its_figures(tmp_path, capsys):
    """A folder named in Latin-1 ("donn\\xe9es": a byte no UTF-8 has, a lone surrogate to Python) went
    into the figures' titles as it was: matplotlib refused it once the model was trained ("internal
    error (TypeError: set_text() ...)"), which left no model, nor could --resume or evaluate get past it."""
    folder = tmp_path / os.fsdecode(b"donn\xe9es")
    folder.mkdir()
    for split, n in (("train", 300), ("test", 60)):
        s = load_image_set("mnist", split)
        _write_idx(folder, split, s.images[:n], s.labels[:n])
    code, _, stderr = cli(capsys, "images", "train", "--data", folder, "--epochs", "1", "--quiet", "--out",
                          tmp_path / "run")
    assert code == 0, stderr
    assert (tmp_path / "run" / "model.json").is_file() and (tmp_path / "run" / "learning_curves.png").is_file()
    code, _, stderr = cli(capsys, "images", "evaluate", tmp_path / "run")
    assert code == 0, stderr
    assert (tmp_path / "run" / "eval_confusion_matrix.png").is_file()
    assert image_presets.run_name(str(folder)) == "donn\ufffdes"
