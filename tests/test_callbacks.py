"""Callbacks, the observers of `fit`: the order of the hooks, early stopping, the gradient-flow
statistics (the same numbers the engine computed before they were a callback) and the progress
report (a bar on a terminal, one line per epoch in a file)."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import chainrule as cr
from conftest import WeightRecorder, blobs, small_mlp


class HookLog(cr.Callback):
    """Writes down every hook call, with the arguments that say where in training it came."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, model, history, epochs, batches):
        self.calls.append(("train_begin", epochs, batches))

    def on_epoch_begin(self, epoch):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_begin(self, batch):
        self.calls.append(("batch_begin", batch))

    def on_batch_end(self, batch, logs):
        self.calls.append(("batch_end", batch, logs["examples"], sorted(logs)))

    def on_epoch_end(self, epoch, logs, model):
        self.calls.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self, model, history):
        self.calls.append(("train_end", len(history)))


def test_hooks_come_in_order_with_the_right_arguments():
    x, y = blobs(n=50)
    log = HookLog()
    model = small_mlp()
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=2, batch_size=16,
           validation_split=0.2, callbacks=[log], verbose=False)
    # 40 training examples in batches of 16: 16, 16, 8
    batch_keys = ["accuracy", "examples", "loss"]
    epoch_keys = sorted(["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds", "samples_per_s"])
    want = [("train_begin", 2, 3)]
    for epoch in range(2):
        want.append(("epoch_begin", epoch))
        for b, seen in enumerate([16, 32, 40]):
            want += [("batch_begin", b), ("batch_end", b, seen, batch_keys)]
        want.append(("epoch_end", epoch, epoch_keys))
    want.append(("train_end", 2))
    assert log.calls == want


def test_a_callback_that_stops_training_still_sees_train_end_and_an_error_does_not():
    class StopAtOnce(HookLog):
        def on_epoch_end(self, epoch, logs, model):
            super().on_epoch_end(epoch, logs, model)
            return True

    x, y = blobs(n=40)
    log = StopAtOnce()
    model = small_mlp()
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=5, batch_size=40,
                     callbacks=[log], verbose=False)
    assert len(history) == 1 and history.stop_reason == "early stopping after epoch 1"
    assert [c[0] for c in log.calls][-2:] == ["epoch_end", "train_end"]

    log = HookLog()
    with np.errstate(all="ignore"), pytest.raises(cr.TrainingDiverged):
        cr.fit(model, x, y, cr.MeanSquaredError(), cr.SGD(model.parameters(), lr=1e12), epochs=5, batch_size=10,
               callbacks=[log], verbose=False)
    assert "train_end" not in [c[0] for c in log.calls]


# -- early stopping ----------------------------------------------------------------------------------


def _overfitting_setup(seed=0):
    """Random labels: the training loss falls, the validation loss soon rises."""
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(40, 20)).astype(np.float32), rng.integers(0, 2, 40)
    xv, yv = rng.normal(size=(40, 20)).astype(np.float32), rng.integers(0, 2, 40)
    model = cr.Sequential([cr.Linear(20, 64), cr.ReLU(), cr.Linear(64, 2)], seed=seed)
    return model, x, y, (xv, yv)


def test_early_stopping_stops_and_restores_the_best_weights():
    model, x, y, val = _overfitting_setup()
    rec = WeightRecorder()
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=200,
                     batch_size=8, validation_data=val, callbacks=[rec], verbose=False,
                     early_stopping=cr.EarlyStopping(patience=3))
    assert history.stop_reason.startswith("early stopping")
    assert len(history) < 200
    val_loss = history["val_loss"]
    assert history.best_epoch == int(np.argmin(val_loss))
    assert len(history) == history.best_epoch + 1 + 3 + 1  # best, then patience + 1 worse epochs
    np.testing.assert_array_equal(model.flat_params, rec.states[history.best_epoch])
    assert not np.array_equal(model.flat_params, rec.states[-1])


def test_a_callback_sees_the_restored_best_weights_when_training_ends():
    """A callback that saves the model at the end of training saves the best epoch's weights, as
    fit returns them (it saw the last epoch's: EarlyStopping restored them after it)."""
    class SaveAtEnd(cr.Callback):
        def on_train_end(self, model, history):
            self.best_epoch, self.weights = history.best_epoch, model.flat_params.copy()

    model, x, y, val = _overfitting_setup()
    saved = SaveAtEnd()
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=200,
                     batch_size=8, validation_data=val, callbacks=[saved], verbose=False,
                     early_stopping=cr.EarlyStopping(patience=3))
    assert history.best_epoch is not None and history.best_epoch < len(history) - 1
    assert saved.best_epoch == history.best_epoch
    np.testing.assert_array_equal(saved.weights, model.flat_params)


@pytest.mark.parametrize("given_as", ["early_stopping", "callbacks"])
def test_an_early_stopping_used_again_starts_afresh(given_as):
    """Its best epoch and weights belong to the training that found them: a second `fit` with the
    same object must not stop on, or restore, the first model's. Passed the Keras way, in
    `callbacks`, it was a plain observer that `fit` never reset (a second `fit` with the same list
    stopped at once and put the first model's weights into the second): it is `early_stopping=`'s."""
    es = cr.EarlyStopping(patience=3)

    def train(model, x, y, val, *observers):
        if given_as == "callbacks":
            return cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=200,
                          batch_size=8, validation_data=val, verbose=False, callbacks=[es, *observers])
        return cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=200,
                      batch_size=8, validation_data=val, verbose=False, callbacks=list(observers), early_stopping=es)

    first, x, y, val = _overfitting_setup()
    train(first, x, y, val)
    second, *_ = _overfitting_setup(1)
    rec = WeightRecorder()
    history = train(second, x, y, val, rec)
    assert history.best_epoch == int(np.argmin(history["val_loss"]))
    assert len(history) == history.best_epoch + 1 + 3 + 1
    np.testing.assert_array_equal(second.flat_params, rec.states[history.best_epoch])


def test_an_early_stopping_among_the_callbacks_is_checked_before_training():
    """Its monitor is checked before the first step, as `early_stopping=`'s is."""
    model, x, y, val = _overfitting_setup()
    with pytest.raises(ValueError, match="EarlyStopping monitors 'val_los'"):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), validation_data=val,
               callbacks=[cr.EarlyStopping(monitor="val_los")], verbose=False)


def test_an_early_stopping_among_the_callbacks_resumes_where_it_was(tmp_path):
    """Its best epoch, weights and patience are in the checkpoint: resumed, the run stops where
    one never interrupted stops, with its best weights (it started again from nothing)."""
    def run(epochs, checkpoint=None, resume=False):
        model, x, y, val = _overfitting_setup()
        history = cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=epochs,
                         batch_size=8, validation_data=val, callbacks=[cr.EarlyStopping(patience=3)],
                         checkpoint=checkpoint, resume=resume, verbose=False)
        return model, history

    straight, straight_history = run(200)
    checkpoint = tmp_path / "run.npz"
    run(straight_history.best_epoch + 2, checkpoint)  # (interrupted 1 epoch past the best)
    resumed, resumed_history = run(200, checkpoint, resume=True)
    assert resumed_history["val_loss"] == straight_history["val_loss"]
    assert resumed_history.best_epoch == straight_history.best_epoch
    np.testing.assert_array_equal(resumed.flat_params, straight.flat_params)


@pytest.mark.parametrize("how", ["both ways", "two in callbacks"])
def test_fit_takes_one_early_stopping(how):
    """Two would each stop the run, restore weights and claim the checkpoint's one place."""
    model, x, y, val = _overfitting_setup()
    es = cr.EarlyStopping()
    kwargs = ({"early_stopping": es, "callbacks": [es]} if how == "both ways" else
              {"callbacks": [es, cr.EarlyStopping(monitor="val_accuracy")]})
    said = ("fit: an EarlyStopping in callbacks and another as early_stopping: give one" if how == "both ways" else
            "fit: callbacks hold 2 EarlyStopping: give one")
    with pytest.raises(ValueError, match=said):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), validation_data=val, verbose=False,
               **kwargs)


def test_early_stopping_restores_the_best_weights_at_the_epoch_limit_too():
    model, x, y, val = _overfitting_setup(1)
    rec = WeightRecorder()
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.Adam(model.parameters(), lr=0.01), epochs=25,
                     batch_size=8, validation_data=val, callbacks=[rec], verbose=False,
                     early_stopping=cr.EarlyStopping(patience=1000))
    assert history.stop_reason == "reached the epoch limit (25)"
    assert history.best_epoch == int(np.argmin(history["val_loss"])) < 24
    np.testing.assert_array_equal(model.flat_params, rec.states[history.best_epoch])


def test_early_stopping_on_accuracy_maximises_and_min_delta_counts():
    es = cr.EarlyStopping(monitor="val_accuracy", patience=0, min_delta=0.05)
    model = small_mlp()
    assert not es.on_epoch_end(0, {"val_accuracy": 0.5}, model)
    assert es.on_epoch_end(1, {"val_accuracy": 0.53}, model)  # better, but by less than min_delta
    with pytest.raises(ValueError, match="needs validation_split or validation_data"):
        x, y = blobs()
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), early_stopping=cr.EarlyStopping(),
               verbose=False)


# -- gradient flow -----------------------------------------------------------------------------------


def _gradient_flow_reference(model, x, y, loss, optimizer, epochs, batch_size, seed):
    """The statistics as the engine computed them before `GradientFlow` was a callback (commit
    d58a61f), written out as a plain loop: fit's shuffling, norms sampled every `batches // 20`
    batches around `optimizer.step()`, and each ReLU's running max output tracked in its forward
    pass."""
    rng = np.random.default_rng([seed, 1])
    n = len(x)
    batches = math.ceil(n / batch_size)
    every = max(1, batches // 20)
    weighted = {f"{i}:{type(l).__name__}": l for i, l in enumerate(model.layers) if "weight" in l.params}
    relus = {f"{i}:{type(l).__name__}": i for i, l in enumerate(model.layers) if isinstance(l, cr.ReLU)}
    record = []
    for _ in range(epochs):
        order = rng.permutation(n)
        sums = {name: [0.0, 0.0, 0] for name in weighted}
        max_output = {}
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            h = np.asarray(x[idx], model.dtype)
            for i, layer in enumerate(model.layers):
                h = layer.forward(h, training=True)
                for name, j in relus.items():
                    if j == i:
                        m = h.reshape(h.shape[0], -1).max(axis=0)
                        max_output[name] = m if name not in max_output else np.maximum(max_output[name], m)
            _, grad = loss(h, y[idx])
            model.backward(grad, input_grad=False)
            before = None
            if b % every == 0:
                before = {name: l.params["weight"].data.copy() for name, l in weighted.items()}
            optimizer.step()
            if before is not None:
                for name, layer in weighted.items():
                    w = layer.params["weight"]
                    w_norm = float(np.linalg.norm(before[name]))
                    update = float(np.linalg.norm(w.data - before[name]))
                    s = sums[name]
                    s[0] += float(np.linalg.norm(w.grad))
                    s[1] += update / w_norm if w_norm > 0 else 0.0
                    s[2] += 1
        stats = {name: {"grad_norm": g / max(k, 1), "update_ratio": r / max(k, 1)} for name, (g, r, k) in sums.items()}
        stats.update({name: {"dead_fraction": float(np.mean(m <= 0))} for name, m in max_output.items()})
        record.append(dict(sorted(stats.items(), key=lambda item: int(item[0].split(":")[0]))))
    return record


@pytest.mark.parametrize("net", ["dense", "conv"])
def test_gradient_flow_statistics_are_the_ones_the_engine_always_computed(net):
    rng = np.random.default_rng(4)
    if net == "dense":
        def build():
            model = cr.Sequential([cr.Linear(10, 16), cr.ReLU(), cr.Dropout(0.3), cr.Linear(16, 16),
                                   cr.LeakyReLU(0.1), cr.Linear(16, 3)], seed=2)
            model.layers[0].bias.data[:6] = -20  # six units that never fire: dead from the start
            return model
        x = rng.normal(size=(300, 10)).astype(np.float32)
    else:
        def build():
            model = cr.Sequential([cr.Conv2D(1, 4, 3, padding=1, bias=False), cr.MaxPool2D(2), cr.BatchNorm(4),
                                   cr.ReLU(), cr.Flatten(), cr.Linear(4 * 4 * 4, 3)], input_shape=(1, 8, 8), seed=2)
            model.layers[2].bias.data[:2] = -20  # batch norm's shift: two channels that never fire
            return model
        x = rng.normal(size=(300, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    # many batches (43 an epoch), so that sampling every other batch is exercised too
    ours, theirs = build(), build()
    history = cr.fit(ours, x, y, cr.CrossEntropy(), cr.Adam(ours.parameters(), lr=0.01), epochs=3, batch_size=7,
                     verbose=False, seed=5)
    want = _gradient_flow_reference(theirs, x, y, cr.CrossEntropy(), cr.Adam(theirs.parameters(), lr=0.01), 3, 7, 5)
    np.testing.assert_array_equal(ours.flat_params, theirs.flat_params)
    assert history.gradient_flow == want  # exactly: same numbers, same layers, same order
    dead = [s["dead_fraction"] for epoch in want for s in epoch.values() if "dead_fraction" in s]
    assert dead and any(0 < d < 1 for d in dead)  # not a trivial all-alive or all-dead case


def test_gradient_flow_counts_dead_units_over_training_batches_only():
    """A unit is dead if no training example of the epoch made it positive; evaluation passes
    in between (validation) do not count, and each epoch starts afresh."""
    relu = cr.ReLU()
    model = cr.Sequential([cr.Linear(2, 2), relu], seed=0)
    flow = cr.GradientFlow()
    history = cr.History()
    flow.on_train_begin(model, history, epochs=2, batches=2)
    flow.on_epoch_begin(0)
    for b, batch in enumerate([[[-1.0, 2.0, -1.0], [-3.0, 0.5, 0.0]], [[-2.0, 0.0, -5.0]]]):
        flow.on_batch_begin(b)
        relu.forward(np.array(batch), training=True)
        flow.on_batch_end(b, {})
    relu.forward(np.array([[5.0, 5.0, 5.0]]))  # evaluation, after the last batch
    flow.on_epoch_end(0, {}, model)
    assert history.gradient_flow[-1]["1:ReLU"] == {"dead_fraction": 2 / 3}
    flow.on_epoch_begin(1)
    flow.on_batch_begin(0)
    relu.forward(np.array([[1.0, -1.0, 1.0]]), training=True)
    flow.on_batch_end(0, {})
    flow.on_epoch_end(1, {}, model)
    assert history.gradient_flow[-1]["1:ReLU"] == {"dead_fraction": 1 / 3}
    assert list(history.gradient_flow[-1]) == ["0:Linear", "1:ReLU"]


def test_layers_carry_no_monitoring_state():
    """Training leaves nothing on the layers beyond what backward needs."""
    x, y = blobs()
    model = small_mlp()
    before = {i: set(vars(layer)) for i, layer in enumerate(model.layers)}
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=1, verbose=False)
    for i, layer in enumerate(model.layers):
        assert set(vars(layer)) - before[i] <= {"needs_input_grad"}, type(layer).__name__


def test_gradient_report_flags_exploding_and_dead_layers():
    x, y = blobs()
    model = small_mlp(dtype=np.float64)
    model.layers[0].bias.data[...] = -1e3  # every hidden unit negative: all ReLUs dead
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=1e-3), epochs=1,
                     batch_size=50, verbose=False)
    assert history.gradient_flow[0]["1:ReLU"]["dead_fraction"] == 1.0
    assert "MOSTLY DEAD" in history.gradient_report()

    model = small_mlp(dtype=np.float64)
    history = cr.fit(model, x * 100, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=5.0), epochs=1,
                     batch_size=50, verbose=False)
    assert history.gradient_flow[0]["0:Linear"]["update_ratio"] > 0.1
    assert "EXPLODING" in history.gradient_report()


# -- progress ----------------------------------------------------------------------------------------

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  loss \d+\.\d{4}  accuracy \d\.\d{4}  val_loss \d+\.\d{4}  "
                        r"val_accuracy \d\.\d{4}  \(\d+\.\ds, [\d,]+ ex/s\)$")

FIT_SCRIPT = textwrap.dedent("""
    import numpy as np
    import chainrule as cr
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(3000, 8)).astype(np.float32), rng.integers(0, 2, 3000)
    model = cr.Sequential([cr.Linear(8, 16), cr.ReLU(), cr.Linear(16, 2)], seed=0)
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.01), epochs=30, batch_size=10,
           validation_split=0.1)
""")


def test_progress_in_a_file_is_one_plain_line_per_epoch(tmp_path):
    """A real 30-epoch `fit` (270 batches an epoch) with standard error going to a file, as in a CI
    log: no carriage-return frames, one line per epoch, then the gradient-flow report."""
    log = tmp_path / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-c", FIT_SCRIPT], stdout=subprocess.PIPE, stderr=err, text=True,
                              timeout=300)
    assert proc.returncode == 0, log.read_text()
    assert proc.stdout == ""  # progress is diagnostics: standard error only
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert len(epoch_lines) == 30
    for i, line in enumerate(epoch_lines):
        match = EPOCH_LINE.match(line)
        assert match and match.groups() == (str(i + 1), "30"), line
    assert lines[:30] == epoch_lines  # nothing else between the epochs
    assert lines[30] == "gradient flow (last epoch):" and len(lines) == 30 + 1 + 3
    assert len(text) < 6000  # where the bar's frames left about 130 KB


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_on_a_terminal_draws_a_bar_and_keeps_the_epoch_lines():
    x, y = blobs(n=400)
    model = small_mlp()
    screen = Terminal()
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=2, batch_size=16,
           validation_split=0.1, callbacks=[cr.ProgressLogger(screen)], verbose=False)
    text = screen.getvalue()
    assert "\r" in text and "ex/s" in text and "batch" in text  # the bar, redrawn in place
    lines = [line.split("\r")[-1] for line in text.split("\n")]
    assert sum(bool(EPOCH_LINE.match(line)) for line in lines) == 2
    assert "gradient flow (last epoch):" in text



def test_progress_with_no_standard_error_shows_nothing_and_the_training_goes_on(monkeypatch):
    """Started with standard error closed (`2>&-`), Python has sys.stderr None: the epoch line went
    to standard output (tqdm.write's default for None), then flush() on None stopped the training."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", None)
    x, y = blobs()
    model = small_mlp()
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=2, verbose=True)
    assert len(history) == 2 and out.getvalue() == ""

def test_verbose_false_prints_nothing(capsys):
    x, y = blobs()
    model = small_mlp()
    cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters()), epochs=2, verbose=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_a_history_iterates_over_its_epochs_and_refuses_a_key_no_epoch_has():
    """It had __getitem__ and __len__ but no __iter__: `list(history)` asked for history[0], [1], ...
    for ever (each a list of None), and a misspelt key was a list of None."""
    history = cr.History()
    assert list(history) == [] and "loss" not in history  # (both hung)
    history.epochs = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    assert [e["loss"] for e in history] == [0.5, 0.25] and history[-1] == {"epoch": 2, "loss": 0.25}
    assert "loss" in history and "val_loss" not in history and history[np.int64(0)]["epoch"] == 1
    assert history["loss"] == [0.5, 0.25] and history["val_loss"] == [None, None]  # (no validation data)
    with pytest.raises(KeyError, match="'los': no epoch measured it"):
        history["los"]
    with pytest.raises(IndexError):
        history[2]


@pytest.mark.parametrize("min_delta", [float("nan"), -1.0, float("inf"), "0.1", None])
def test_early_stopping_min_delta_is_a_number_from_zero(min_delta):
    """NaN counted no epoch as an improvement (the run stopped with no best weights), -1 every one
    (the last epoch's weights were kept as the best)."""
    with pytest.raises(ValueError, match="EarlyStopping: min_delta must be a finite number >= 0"):
        cr.EarlyStopping(min_delta=min_delta)


@pytest.mark.parametrize("patience", [-1, 2.7, True, "3"])
def test_early_stopping_patience_is_a_whole_number_of_epochs(patience):
    with pytest.raises(ValueError, match="patience must be an integer >= 0"):  # (2.7 was cut to 2)
        cr.EarlyStopping(patience=patience)


@pytest.mark.parametrize(("kwargs", "said"), [({"monitor": None}, "monitor must be the name of an epoch log"),
                                              ({"monitor": ["val_loss"]}, "monitor must be the name of an epoch log"),
                                              ({"restore_best_weights": "no"}, "restore_best_weights must be True")])
def test_early_stopping_refuses_a_monitor_that_is_no_name_and_a_flag_that_is_no_flag(kwargs, said):
    """A list monitor got as far as fit and failed inside it; the string "no" restored the best weights."""
    with pytest.raises(ValueError, match=said):
        cr.EarlyStopping(**kwargs)


@pytest.mark.parametrize(("monitor", "mode", "better"), [("val_f1", "auto", 0.7), ("val_roc_auc", "auto", 0.7),
                                                        ("val_mae", "auto", 0.3), ("val_f1", "min", 0.3),
                                                        ("val_score", "max", 0.7)])
def test_early_stopping_keeps_the_better_epoch_of_any_metric(monitor, mode, better):
    """Only a name holding "accuracy" was maximised: a caller's val_f1 rising each epoch stopped the
    run after its first, and restore_best_weights put back the weights with the worst F1."""
    es = cr.EarlyStopping(monitor=monitor, patience=0, mode=mode)
    model = small_mlp()
    assert not es.on_epoch_end(0, {monitor: 0.5}, model)
    assert not es.on_epoch_end(1, {monitor: better}, model) and es.best_epoch == 1


def test_early_stopping_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max', got 'maximise'"):
        cr.EarlyStopping(mode="maximise")


def test_early_stopping_shows_its_settings():
    """It showed as <chainrule.callbacks.EarlyStopping object at 0x...>."""
    assert repr(cr.EarlyStopping(monitor="val_accuracy", patience=3)) == \
        "EarlyStopping(monitor='val_accuracy', patience=3, min_delta=0.0, restore_best_weights=True, mode='max')"


@pytest.mark.parametrize(("monitor", "validated"), [("val_los", True), ("val_acc", True), ("accuracy ", False),
                                                     ("val_accuracy", False)])
def test_early_stopping_on_a_key_no_epoch_reports_is_refused_before_training(monitor, validated):
    model, x, y, val = _overfitting_setup()
    before = model.flat_params.copy()
    said = "needs validation" if monitor.startswith("val_") and not validated else re.escape(repr(monitor))
    with pytest.raises(ValueError, match=said):
        cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.1), epochs=3, batch_size=8,
               validation_data=val if validated else None, early_stopping=cr.EarlyStopping(monitor=monitor),
               verbose=False)
    assert np.array_equal(model.flat_params, before)  # not one step taken


def test_early_stopping_may_watch_any_key_an_epoch_reports():
    for monitor in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        model, x, y, val = _overfitting_setup()
        history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.1), epochs=2,
                         batch_size=8, validation_data=val, early_stopping=cr.EarlyStopping(monitor=monitor),
                         verbose=False)
        assert monitor in history.epochs[-1]


def test_early_stopping_may_watch_a_key_a_callback_adds():
    """A callback of the caller's runs before early stopping and may add to the epoch's logs."""

    class HalfLoss(cr.Callback):
        def on_epoch_end(self, epoch, logs, model):
            logs["val_half_loss"] = logs["val_loss"] / 2

    model, x, y, val = _overfitting_setup()
    history = cr.fit(model, x, y, cr.CrossEntropy(), cr.SGD(model.parameters(), lr=0.1), epochs=3, batch_size=8,
                     validation_data=val, callbacks=[HalfLoss()],
                     early_stopping=cr.EarlyStopping(monitor="val_half_loss"), verbose=False)
    assert "val_half_loss" in history.epochs[-1]
