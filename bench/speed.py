"""Speed benchmark: chainrule against PyTorch and scikit-learn on the CPU (issue 6).

    python bench/speed.py                 # 3 interleaved rounds, about 2-3 minutes on 2 cores
    python bench/speed.py --repeats 5 --data /path/to/data

What is measured, per workload (`mlp`: MNIST 784-512-512-10, ReLU, dropout 0.2, Adam lr 1e-3,
batch 128, one epoch over the 60,000 training images):

* training samples/s over one epoch (wall clock), and the test accuracy after it; for chainrule
  and PyTorch also the "steady" rate, from the median time between optimizer steps, which first-use
  costs and short bursts of other jobs' load leave out;
* inference: the 10,000 test images in batches of 1,000 (samples/s, fastest of 10 passes), and
  single-image latency (batch 1, median of 1,000 calls);
* peak resident memory (RSS) of the whole process, interpreter and library included;
* roofline: the workload's matrix-multiply FLOPs divided by the machine's float32 GEMM throughput
  at exactly the shapes the workload uses (the faster of NumPy's OpenBLAS and PyTorch's MKL),
  i.e. the speed a framework would reach if everything but the matrix products were free.

How, so that the numbers are honest on a shared machine:

* every framework runs in its own fresh subprocess (so RSS is its own, and no framework inherits
  another's warmed-up caches or thread pools), which reports JSON on stdout;
* the runs are interleaved, one of each framework per round (A B C, then B C A, ...), so drift in
  the machine's load hits every framework alike; the table shows medians over the rounds;
* round r uses seed r for every framework (shuffling, initial weights, dropout masks), all with
  the same initialisation scheme (He-normal weights, zero biases);
* the headline epoch is the first one, as a user would run it: no warm-up batches for anybody.

A workload is a `Workload` entry in `WORKLOADS`: how to build the model for each framework (a
framework without a builder is skipped, e.g. scikit-learn for convolutions), its input shape and
its matrix-product shapes. `lenet5` (LeNet-5: conv 6@5x5 pad 2 - max pool - conv 16@5x5 - max pool -
120 - 84 - 10, ReLU, same Adam, batch and initialisation) is such an entry; its `train_gemms` are
its convolutions' im2col products.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from chainrule.files import atomic_write_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "speed.json"
FRAMEWORKS = ("chainrule", "pytorch", "sklearn")
BATCH, LR, DROPOUT = 128, 1e-3, 0.2  # and one epoch: the time a first epoch takes is what is timed
INFER_BATCH, INFER_PASSES, LATENCY_CALLS = 1000, 10, 1000


# -- workloads ---------------------------------------------------------------------------------


@dataclass
class Workload:
    """One benchmark task. `train_gemms` lists the matrix products (m, k, n, layout) of one
    training step on a batch of `BATCH`; `infer_gemms(b)` the forward products for a batch of b."""

    name: str
    input_shape: tuple[int, ...]
    build: dict  # framework -> callable(seed) -> model
    train_gemms: list[tuple[int, int, int, str]]
    infer_gemms: Callable[[int], list[tuple[int, int, int, str]]]


MLP_SIZES = [(784, 512), (512, 512), (512, 10)]  # (in, out) of each Linear layer


def _mlp_chainrule(seed):
    import chainrule as cr

    layers = []
    for i, (n_in, n_out) in enumerate(MLP_SIZES):
        layers.append(cr.Linear(n_in, n_out, init="he"))
        if i < len(MLP_SIZES) - 1:
            layers += [cr.ReLU(), cr.Dropout(DROPOUT)]
    return cr.Sequential(layers, seed=seed)


def _mlp_pytorch(seed):
    import torch

    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(MLP_SIZES):
        linear = torch.nn.Linear(n_in, n_out)
        # the same scheme as chainrule's init="he": N(0, 2/fan_in) weights, zero biases
        torch.nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
        torch.nn.init.zeros_(linear.bias)
        layers.append(linear)
        if i < len(MLP_SIZES) - 1:
            layers += [torch.nn.ReLU(), torch.nn.Dropout(DROPOUT)]
    return torch.nn.Sequential(*layers)


def _mlp_sklearn(seed):
    from sklearn.neural_network import MLPClassifier

    # sklearn has no dropout; its default L2 penalty (alpha=1e-4) stays. Adam, lr 1e-3 by default.
    return MLPClassifier(hidden_layer_sizes=(512, 512), batch_size=BATCH, max_iter=1,
                         learning_rate_init=LR, shuffle=True, random_state=seed)


def _dense_gemms(sizes, batch, training):
    """(m, k, n) of every product: forward x·W; backward xᵀ·g (dW) and g·Wᵀ (dx, except for the
    first layer, whose input is the data and needs no gradient in any of the frameworks)."""
    out = [(batch, n_in, n_out, "nn") for n_in, n_out in sizes]
    if training:
        out += [(n_in, batch, n_out, "tn") for n_in, n_out in sizes]
        out += [(batch, n_out, n_in, "nt") for n_in, n_out in sizes[1:]]
    return out


def _lenet5_chainrule(seed):
    import chainrule as cr

    return cr.Sequential(
        [cr.Conv2D(1, 6, 5, padding=2), cr.ReLU(), cr.MaxPool2D(2), cr.Conv2D(6, 16, 5), cr.ReLU(), cr.MaxPool2D(2),
         cr.Flatten(), cr.Linear(400, 120), cr.ReLU(), cr.Linear(120, 84), cr.ReLU(), cr.Linear(84, 10)],
        input_shape=(1, 28, 28), seed=seed,
    )


def _lenet5_pytorch(seed):
    import torch

    torch.manual_seed(seed)
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )
    for layer in model:  # chainrule's init="he" for every conv and dense layer, zero biases
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model


# LeNet-5's convolutions as im2col products: (out channels, in·kh·kw, output pixels per image)
LENET5_CONVS = [(6, 1 * 5 * 5, 28 * 28), (16, 6 * 5 * 5, 10 * 10)]
LENET5_DENSE = [(400, 120), (120, 84), (84, 10)]


def _lenet5_gemms(batch, training):
    """Forward W·X_col per conv (m=out, k=in·kh·kw, n=batch·pixels), then the dense layers; in
    training also dW = dY·X_colᵀ for both convs and dX_col = Wᵀ·dY for the second (the first
    conv's input is the data), and the dense layers' products, all of whose dx are needed."""
    out = [(o, k, batch * p, "nn") for o, k, p in LENET5_CONVS]
    out += [(batch, n_in, n_out, "nn") for n_in, n_out in LENET5_DENSE]
    if training:
        out += [(o, batch * p, k, "nt") for o, k, p in LENET5_CONVS]
        out += [(k, o, batch * p, "tn") for o, k, p in LENET5_CONVS[1:]]
        out += [(n_in, batch, n_out, "tn") for n_in, n_out in LENET5_DENSE]
        out += [(batch, n_out, n_in, "nt") for n_in, n_out in LENET5_DENSE]
    return out


WORKLOADS: dict[str, Workload] = {
    "mlp": Workload(
        name="mlp",
        input_shape=(784,),
        build={"chainrule": _mlp_chainrule, "pytorch": _mlp_pytorch, "sklearn": _mlp_sklearn},
        train_gemms=_dense_gemms(MLP_SIZES, BATCH, training=True),
        infer_gemms=lambda b: _dense_gemms(MLP_SIZES, b, training=False),
    ),
    "lenet5": Workload(
        name="lenet5",
        input_shape=(1, 28, 28),
        build={"chainrule": _lenet5_chainrule, "pytorch": _lenet5_pytorch},
        train_gemms=_lenet5_gemms(BATCH, training=True),
        infer_gemms=lambda b: _lenet5_gemms(b, training=False),
    ),
}


# -- data --------------------------------------------------------------------------------------


def load_data(data_dir, shape):
    """MNIST as float32 in [0, 1], shaped (n, *shape), with int64 labels: train x, y, test x, y."""
    from chainrule.data.mnist import load_mnist

    out = []
    for split in ("train", "test"):
        images, labels = load_mnist(split, data_dir)  # uint8 (n, 28, 28), uint8 (n,)
        x = images.reshape((len(images),) + shape).astype(np.float32)
        x /= 255  # in place: one float copy of the data set in memory, not two
        out += [x, labels.astype(np.int64)]
    return out


# -- one framework, in its own process ---------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _infer_seconds(predict_all) -> tuple[float, object]:
    """Fastest of `INFER_PASSES` passes of `predict_all()`, and the predictions. A pass takes about
    0.1 s, short enough for a burst of load on a shared machine to cover it whole, and load only
    ever slows a pass down: the fastest pass is the framework's own speed (as `timeit` argues)."""
    times = []
    for _ in range(INFER_PASSES):
        t0 = time.perf_counter()
        pred = predict_all()
        times.append(time.perf_counter() - t0)
    return min(times), pred


def _latency_ms(predict_one, x) -> float:
    """Median wall time of `LATENCY_CALLS` single-image predictions, cycling through images."""
    times = []
    for i in range(LATENCY_CALLS):
        xi = x[i % len(x)][None]
        t0 = time.perf_counter()
        predict_one(xi)
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _steady_rate(stamps: list[float]) -> float:
    """Examples/s from the median time between consecutive optimizer steps: a batch's typical
    cost, untouched by first-use costs (thread pools, allocator growth, kernel selection) and by
    bursts of other jobs' load that stretch some batches of an epoch but not most of them."""
    return BATCH / statistics.median(np.diff(stamps))


def run_chainrule(work: Workload, seed: int, data) -> dict:
    import chainrule as cr

    x, y, xt, yt = data
    model = work.build["chainrule"](seed)
    optimizer = cr.Adam(model.parameters(), lr=LR)
    stamps = []
    step = optimizer.step

    def timed_step():
        step()
        stamps.append(time.perf_counter())

    optimizer.step = timed_step
    t0 = time.perf_counter()
    cr.fit(model, x, y, cr.CrossEntropy(), optimizer, epochs=1, batch_size=BATCH, verbose=False, seed=seed)
    train_s = time.perf_counter() - t0
    infer_s, pred = _infer_seconds(lambda: model.predict(xt, batch_size=INFER_BATCH))
    return {
        "train_s": train_s,
        "steady_samples_per_s": _steady_rate(stamps),
        "infer_s": infer_s,
        "accuracy": float(np.mean(pred == yt)),
        "latency_ms": _latency_ms(model.predict, xt),
        "threads": _blas_threads(),
    }


def run_pytorch(work: Workload, seed: int, data, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    x, y, xt, yt = (torch.from_numpy(a) for a in data)  # shares memory with the NumPy arrays
    model = work.build["pytorch"](seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    stamps = []
    t0 = time.perf_counter()
    model.train()
    order = torch.randperm(len(x), generator=gen)
    for start in range(0, len(x), BATCH):
        idx = order[start : start + BATCH]
        loss = loss_fn(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        stamps.append(time.perf_counter())
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
        infer_s, pred = _infer_seconds(
            lambda: torch.cat([model(xt[i : i + INFER_BATCH]).argmax(1) for i in range(0, len(xt), INFER_BATCH)])
        )
        latency = _latency_ms(lambda xi: model(xi).argmax(1), xt)
    return {
        "train_s": train_s,
        "steady_samples_per_s": _steady_rate(stamps),
        "infer_s": infer_s,
        "accuracy": float((pred == yt).float().mean()),
        "latency_ms": latency,
        "threads": {"torch": torch.get_num_threads()},
    }


def run_sklearn(work: Workload, seed: int, data) -> dict:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    x, y, xt, yt = data
    model = work.build["sklearn"](seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter=1 is the point
        model.fit(x.reshape(len(x), -1), y)
    train_s = time.perf_counter() - t0
    xt2 = xt.reshape(len(xt), -1)
    infer_s, pred = _infer_seconds(
        lambda: np.concatenate([model.predict(xt2[i : i + INFER_BATCH]) for i in range(0, len(xt2), INFER_BATCH)])
    )
    return {
        "train_s": train_s,
        "infer_s": infer_s,
        "accuracy": float(np.mean(pred == yt)),
        "latency_ms": _latency_ms(model.predict, xt2),
        "threads": _blas_threads(),
    }


def _blas_threads() -> dict:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    return {f"{i['internal_api']}": i["num_threads"] for i in threadpool_info()}


def child(framework: str, workload: str, seed: int, data_dir, threads: int) -> dict:
    """Run one framework on one workload in this (fresh) process; report timings and memory."""
    work = WORKLOADS[workload]
    data = load_data(data_dir, work.input_shape)
    rss_loaded = _rss_mb()
    if framework == "chainrule":
        result = run_chainrule(work, seed, data)
    elif framework == "pytorch":
        result = run_pytorch(work, seed, data, threads)
    else:
        result = run_sklearn(work, seed, data)
    n_train, n_test = len(data[0]), len(data[2])
    result.update({
        "train_samples_per_s": n_train / result["train_s"],
        "infer_samples_per_s": n_test / result["infer_s"],
        "rss_after_data_mb": rss_loaded,
        "peak_rss_mb": _peak_rss_mb(),
    })
    return result


def profile_chainrule(workload: str, data_dir, batches: int = 300) -> list[tuple[str, float]]:
    """Where one chainrule training step spends its time: each layer's forward and backward, the
    loss, the optimizer, and the batch gather, as (part, milliseconds per step), over `batches`.

    The same calls in the same order as `fit` makes them (the first layer computes no input
    gradient, as `Sequential.backward(grad, input_grad=False)` arranges).
    """
    import chainrule as cr

    work = WORKLOADS[workload]
    x, y, _, _ = load_data(data_dir, work.input_shape)
    model = work.build["chainrule"](0)
    optimizer, loss = cr.Adam(model.parameters(), lr=LR), cr.CrossEntropy()
    order = np.random.default_rng(0).permutation(len(x))
    names = [f"{i}:{type(layer).__name__}" for i, layer in enumerate(model.layers)]
    for i, layer in enumerate(model.layers):
        layer.needs_input_grad = i > 0
    spent: dict[str, float] = {}

    def lap(part, since):
        now = time.perf_counter()
        spent[part] = spent.get(part, 0.0) + now - since
        return now

    for b in range(batches):
        t = time.perf_counter()
        idx = order[(b * BATCH) % len(x):][:BATCH]
        xb, yb = x[idx], y[idx]
        t = lap("gather batch x[idx]", t)
        for name, layer in zip(names, model.layers, strict=True):
            xb = layer.forward(xb, True)
            t = lap(f"forward  {name}", t)
        _, grad = loss(xb, yb)
        t = lap("loss (softmax + cross-entropy)", t)
        for name, layer in zip(reversed(names), reversed(model.layers), strict=True):
            grad = layer.backward(grad)
            t = lap(f"backward {name}", t)
        optimizer.step()
        lap("Adam step", t)
    return [(part, 1e3 * s / batches) for part, s in spent.items()]


# -- the matrix-multiply bound -----------------------------------------------------------------


def _operands(rng, m, k, n, layout):
    """Random float32 A (m, k) and B (k, n), stored the way the workload stores them: "tn" is the
    weight gradient xᵀ·g (A a transposed view), "nt" the input gradient g·Wᵀ (B transposed)."""
    a = rng.random((k, m), np.float32).T if layout[0] == "t" else rng.random((m, k), np.float32)
    b = rng.random((n, k), np.float32).T if layout[1] == "t" else rng.random((k, n), np.float32)
    return a, b


def _best_seconds(step, flops: float) -> float:
    """Fastest of 5 timings of `step`, each repeated to about 2 GFLOP so that it is stable."""
    reps = max(5, int(2e9 / flops))
    step()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        times.append((time.perf_counter() - t0) / reps)
    return min(times)


def gemm_child(workload: str, threads: int) -> dict:
    """Seconds per workload step spent in nothing but its matrix products, in NumPy and torch."""
    import torch

    torch.set_num_threads(threads)
    work = WORKLOADS[workload]
    rng = np.random.default_rng(0)
    out = {}
    for kind, shapes in (("train", work.train_gemms), ("infer", work.infer_gemms(INFER_BATCH)),
                         ("latency", work.infer_gemms(1))):
        flops = sum(2 * m * k * n for m, k, n, _ in shapes)
        mats = [_operands(rng, *shape) for shape in shapes]
        outs = [np.empty((a.shape[0], b.shape[1]), np.float32) for a, b in mats]
        tmats = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in mats]

        def numpy_step(mats=mats, outs=outs):
            for (a, b), o in zip(mats, outs, strict=True):
                np.matmul(a, b, out=o)

        def torch_step(tmats=tmats):
            for a, b in tmats:
                torch.mm(a, b)

        best = {"numpy": _best_seconds(numpy_step, flops), "torch": _best_seconds(torch_step, flops)}
        out[kind] = {"flops": flops, "seconds": best, "gflops": {k: flops / v / 1e9 for k, v in best.items()}}
    return out


# -- the parent: interleave, summarise, write ---------------------------------------------------


def spawn(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no error output)"]
        sys.exit(f"speed.py: error: `{' '.join(args[:3])}` failed: {lines[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median(values):
    return statistics.median(values) if values else float("nan")


def summarise(work: Workload, runs: dict[str, list[dict]], gemm: list[dict]) -> dict:
    """Medians per framework, ratios to PyTorch, and the fraction of the GEMM bound reached."""
    bounds = {}
    for kind in ("train", "infer", "latency"):
        secs = [min(g[kind]["seconds"].values()) for g in gemm]  # the faster library, per round
        batch = BATCH if kind == "train" else (INFER_BATCH if kind == "infer" else 1)
        bounds[kind] = {
            "flops_per_sample": gemm[0][kind]["flops"] / batch,
            "gemm_gflops": {lib: median([g[kind]["gflops"][lib] for g in gemm]) for lib in ("numpy", "torch")},
            "bound_samples_per_s": batch / median(secs),
        }
    table = {}
    for fw, rs in runs.items():
        row = {k: median([r[k] for r in rs if k in r]) for k in
               ("train_samples_per_s", "steady_samples_per_s", "accuracy", "infer_samples_per_s",
                "latency_ms", "peak_rss_mb", "rss_after_data_mb")}
        row["runs"] = rs
        row["train_fraction_of_bound"] = row["train_samples_per_s"] / bounds["train"]["bound_samples_per_s"]
        row["steady_fraction_of_bound"] = row["steady_samples_per_s"] / bounds["train"]["bound_samples_per_s"]
        row["infer_fraction_of_bound"] = row["infer_samples_per_s"] / bounds["infer"]["bound_samples_per_s"]
        table[fw] = row
    if "pytorch" in table:
        ref = table["pytorch"]
        for row in table.values():
            row["train_vs_pytorch"] = row["train_samples_per_s"] / ref["train_samples_per_s"]
            row["steady_vs_pytorch"] = row["steady_samples_per_s"] / ref["steady_samples_per_s"]
            row["infer_vs_pytorch"] = row["infer_samples_per_s"] / ref["infer_samples_per_s"]
            row["latency_vs_pytorch"] = row["latency_ms"] / ref["latency_ms"]
            row["accuracy_minus_pytorch_points"] = 100 * (row["accuracy"] - ref["accuracy"])
    return {"frameworks": table, "roofline": bounds}


def format_table(name: str, summary: dict) -> str:
    t, roof = summary["frameworks"], summary["roofline"]
    head = ("framework", "train ex/s", "vs torch", "of bound", "steady ex/s", "vs torch", "test acc",
            "infer ex/s", "vs torch", "latency ms", "peak RSS MB")
    rows = [head]
    def cell(value, spec, unit=""):
        return "-" if value is None or value != value else format(value, spec) + unit  # NaN: not measured

    for fw, r in t.items():
        rows.append((
            fw, cell(r["train_samples_per_s"], ",.0f"), cell(r.get("train_vs_pytorch"), ".2f", "x"),
            cell(100 * r["train_fraction_of_bound"], ".0f", "%"), cell(r["steady_samples_per_s"], ",.0f"),
            cell(r.get("steady_vs_pytorch"), ".2f", "x"), cell(100 * r["accuracy"], ".2f", "%"),
            cell(r["infer_samples_per_s"], ",.0f"), cell(r.get("infer_vs_pytorch"), ".2f", "x"),
            cell(r["latency_ms"], ".3f"), cell(r["peak_rss_mb"], ",.0f"),
        ))
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    lines = [f"workload {name}:"]
    for j, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(row, widths, strict=True))) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    tr = roof["train"]
    lines.append(
        f"GEMM bound, training: {tr['flops_per_sample'] / 1e6:.2f} MFLOP/example at "
        f"{tr['gemm_gflops']['numpy']:.0f} GFLOP/s (NumPy/OpenBLAS) or {tr['gemm_gflops']['torch']:.0f} "
        f"(torch/MKL) -> at most {tr['bound_samples_per_s']:,.0f} ex/s; inference at most "
        f"{roof['infer']['bound_samples_per_s']:,.0f} ex/s"
    )
    for goal, met in summary.get("goals", {}).items():
        lines.append(f"goal {'met    ' if met else 'NOT MET'}  {goal}")
    return "\n".join(lines)


def goals(summary: dict) -> dict[str, bool]:
    """Issue 6's targets for chainrule against PyTorch, each with whether the medians meet it."""
    t = summary["frameworks"]
    if "chainrule" not in t or "pytorch" not in t:
        return {}
    c, p = t["chainrule"], t["pytorch"]
    return {
        f"training >= 1.25x PyTorch: {c['train_vs_pytorch']:.2f}x": c["train_vs_pytorch"] >= 1.25,
        f"(steady rate) >= 1.25x PyTorch: {c['steady_vs_pytorch']:.2f}x": c["steady_vs_pytorch"] >= 1.25,
        f"test accuracy within 0.3 points: {c['accuracy_minus_pytorch_points']:+.2f}":
            abs(c["accuracy_minus_pytorch_points"]) <= 0.3,
        f"inference >= 1.0x PyTorch: {c['infer_vs_pytorch']:.2f}x": c["infer_vs_pytorch"] >= 1.0,
        f"latency <= PyTorch's: {c['latency_ms']:.3f} vs {p['latency_ms']:.3f} ms":
            c["latency_ms"] <= p["latency_ms"],
        f"peak RSS <= PyTorch's: {c['peak_rss_mb']:.0f} vs {p['peak_rss_mb']:.0f} MB":
            c["peak_rss_mb"] <= p["peak_rss_mb"],
    }


def format_profile(name: str, parts: list[tuple[str, float]]) -> str:
    total = sum(ms for _, ms in parts)
    lines = [f"chainrule {name}, where a training step of {BATCH} examples goes ({total:.2f} ms, "
             f"{BATCH / total * 1e3:,.0f} ex/s before the fit loop's bookkeeping):"]
    lines += [f"  {part:<34} {ms:6.3f} ms  {100 * ms / total:5.1f}%" for part, ms in parts]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, {system}, Python {platform.python_version()}"


def versions() -> dict:
    import sklearn
    import torch

    import chainrule

    return {"chainrule": chainrule.__version__, "numpy": np.__version__, "torch": torch.__version__,
            "scikit-learn": sklearn.__version__}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--workloads", nargs="+", default=None, help=f"subset of {sorted(WORKLOADS)}")
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    p.add_argument("--data", default=None, help="data directory (default: $CHAINRULE_DATA, then the cache)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results file")
    p.add_argument("--profile", action="store_true", help="time each part of a chainrule training step")
    p.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "WORKLOAD", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--gemm", metavar="WORKLOAD", help=argparse.SUPPRESS)
    p.add_argument("--profile-child", metavar="WORKLOAD", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        fw, wl, seed = args.child
        print(json.dumps(child(fw, wl, int(seed), args.data, args.threads)))
        return 0
    if args.gemm:
        print(json.dumps(gemm_child(args.gemm, args.threads)))
        return 0
    if args.profile_child:
        print(json.dumps(profile_chainrule(args.profile_child, args.data)))
        return 0
    if args.profile:
        for name in args.workloads or list(WORKLOADS):
            print(format_profile(name, profile_chainrule(name, args.data)))
        return 0

    names = args.workloads or list(WORKLOADS)
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}")
    from chainrule.data.mnist import DataError, load_mnist

    # Fail now, in one line, rather than in every child; this also downloads MNIST once if it is
    # nowhere to be found (and no --data was given).
    for split in ("test", "train"):
        try:
            load_mnist(split, args.data)
        except DataError as exc:
            sys.exit(f"speed.py: error: {exc}")
    common = ["--threads", str(args.threads)] + (["--data", args.data] if args.data else [])
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "versions": versions(),
        "settings": {"repeats": args.repeats, "torch_threads": args.threads, "batch": BATCH, "epochs": 1,
                     "lr": LR, "dropout": DROPOUT, "inference_batch": INFER_BATCH,
                     "inference_passes": INFER_PASSES, "latency_calls": LATENCY_CALLS},
        "workloads": {},
    }
    t_start = time.perf_counter()
    for name in names:
        work = WORKLOADS[name]
        frameworks = [f for f in args.frameworks if f in work.build]
        runs = {f: [] for f in frameworks}
        gemm = []
        for r in range(args.repeats):
            order = frameworks[r % len(frameworks):] + frameworks[: r % len(frameworks)]
            for fw in order + ["gemm"]:
                if fw == "gemm":
                    gemm.append(spawn(["--gemm", name] + common))
                    continue
                result = spawn(["--child", fw, name, str(r)] + common)
                runs[fw].append(result)
                print(f"  [{name} round {r + 1}/{args.repeats}] {fw:9s} {result['train_samples_per_s']:8,.0f} ex/s "
                      f"train, acc {100 * result['accuracy']:.2f}%, {result['infer_samples_per_s']:9,.0f} ex/s "
                      f"infer, {result['latency_ms']:.3f} ms, {result['peak_rss_mb']:.0f} MB", flush=True)
        report["workloads"][name] = summarise(work, runs, gemm)
        report["workloads"][name]["goals"] = goals(report["workloads"][name])
        report["workloads"][name].update({"date": report["date"], "repeats": args.repeats})
        print(format_table(name, report["workloads"][name]), flush=True)
        if "chainrule" in frameworks:
            profile = spawn(["--profile-child", name] + common)
            report["workloads"][name]["chainrule_profile_ms"] = dict(profile)
            print(format_profile(name, profile), flush=True)
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # `--workloads mlp` refreshes mlp and keeps the other workloads' last results (each entry
    # carries its own date), so one workload can be re-measured without re-running them all.
    try:
        earlier = json.loads(out.read_text()).get("workloads", {})
    except (OSError, ValueError, AttributeError):
        earlier = {}
    for name, entry in earlier.items():
        if name not in report["workloads"] and name in WORKLOADS and isinstance(entry, dict):
            report["workloads"][name] = entry
    atomic_write_bytes(out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {out} ({report['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
