"""Speed benchmark: chainrule against PyTorch and scikit-learn on the CPU (issues 6 and 20).

    python bench/speed.py                          # every workload, this CPU's own kernels
    python bench/speed.py --isa avx2 avx512 native # the same, once per instruction set
    python bench/speed.py --workloads mlp --scenarios busy --repeats 5

What is measured, per workload (`mlp`: MNIST 784-512-512-10, ReLU, dropout 0.2, Adam lr 1e-3,
batch 128, one epoch over the 60,000 training images):

* training samples/s over one epoch (wall clock), and the test accuracy after it; for chainrule
  and PyTorch also the "steady" rate, from the median time between optimizer steps, which first-use
  costs and short bursts of other jobs' load leave out, and the spread of the step times;
* inference: the 10,000 test images in batches of 1,000 (samples/s, fastest of up to 10 passes), and
  single-image latency (batch 1, median of 1,000 calls);
* peak resident memory (RSS) of the whole process, interpreter and library included;
* roofline: the workload's matrix-multiply FLOPs divided by the machine's float32 GEMM throughput
  at exactly the shapes the workload uses (the faster of NumPy's OpenBLAS and PyTorch's MKL),
  i.e. the speed a framework would reach if everything but the matrix products were free.

Instruction sets (`--isa`). `native` lets every library pick its kernels for this CPU; `avx2`
and `avx512` restrict every library to that instruction set through the settings each reads when
it loads: OpenBLAS `OPENBLAS_CORETYPE` (Haswell or SkylakeX kernels), NumPy's own loops
`NPY_DISABLE_CPU_FEATURES`, PyTorch's ATen `ATEN_CPU_CAPABILITY`, MKL `MKL_ENABLE_INSTRUCTIONS`
and oneDNN `ONEDNN_MAX_CPU_ISA`. A probe process with the same settings asks every library what it
runs (OpenBLAS's core name, NumPy's SIMD targets, ATen's capability, MKL's and oneDNN's verbose
output for one training step of each workload); a setting a library ignored is printed as a warning.

Scenarios (`--scenarios`). `idle`: nothing else is started. `busy`: the bench starts one
competing CPU-bound process (a Python busy loop, one thread) just before each run and stops it
right after, so every framework shares the cores with the same load.

How, so that the numbers are honest on a shared machine:

* every framework runs in its own fresh subprocess (so RSS is its own, and no framework inherits
  another's warmed-up caches or thread pools, and the instruction-set settings are read afresh),
  which reports JSON on stdout;
* the runs are interleaved, one of each framework per round (A B C, then B C A, ...), idle runs
  then busy runs, so drift in the machine's load hits every framework alike; the table shows
  medians over the rounds;
* round r uses seed r for every framework (shuffling, initial weights, dropout masks), all with
  the same initialisation scheme (He-normal weights, zero biases);
* the headline epoch is the first one, as a user would run it: no warm-up batches for anybody.

A workload is a `Workload` entry in `WORKLOADS`: how to build the model for each framework (a
framework without a builder is skipped, e.g. scikit-learn for convolutions), its input shape and
its matrix-product shapes. `lenet5` (LeNet-5: conv 6@5x5 pad 2 - max pool - conv 16@5x5 - max pool -
120 - 84 - 10, ReLU) and `cnn` (the digits app's `cnn` preset: three blocks of conv - max pool -
batch norm - ReLU with 32, 64 and 128 channels, then 1152 - 128 with batch norm, ReLU and dropout
0.2, then 10) train with the same Adam, batch and initialisation; their `train_gemms` are their
convolutions' im2col products and their dense layers' products.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
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
SCENARIOS = ("idle", "busy")
BATCH, LR, DROPOUT = 128, 1e-3, 0.2  # and one epoch: the time a first epoch takes is what is timed
INFER_BATCH, INFER_PASSES, INFER_BUDGET_S, LATENCY_CALLS = 1000, 10, 3.0, 1000
COMPETITOR = "while True: pass"  # the busy scenario's load: one CPU-bound Python process


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


def _he_init_pytorch(model):
    """chainrule's init="he" for every conv and dense layer of a torch model: N(0, 2/fan_in)
    weights, zero biases (batch norm keeps torch's γ = 1, β = 0, as chainrule's does)."""
    import torch

    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                torch.nn.init.zeros_(layer.bias)
    return model


def _mlp_pytorch(seed):
    import torch

    torch.manual_seed(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(MLP_SIZES):
        layers.append(torch.nn.Linear(n_in, n_out))
        if i < len(MLP_SIZES) - 1:
            layers += [torch.nn.ReLU(), torch.nn.Dropout(DROPOUT)]
    return _he_init_pytorch(torch.nn.Sequential(*layers))


def _mlp_sklearn(seed):
    from sklearn.neural_network import MLPClassifier

    # sklearn has no dropout; its default L2 penalty (alpha=1e-4) stays. Adam, lr 1e-3 by default.
    return MLPClassifier(hidden_layer_sizes=(512, 512), batch_size=BATCH, max_iter=1,
                         learning_rate_init=LR, shuffle=True, random_state=seed)


def _dense_gemms(sizes, batch, training, first_dx=False):
    """(m, k, n) of every product: forward x·W; backward xᵀ·g (dW) and g·Wᵀ (dx, except for the
    first layer when its input is the data, which needs no gradient in any of the frameworks)."""
    out = [(batch, n_in, n_out, "nn") for n_in, n_out in sizes]
    if training:
        out += [(n_in, batch, n_out, "tn") for n_in, n_out in sizes]
        out += [(batch, n_out, n_in, "nt") for n_in, n_out in (sizes if first_dx else sizes[1:])]
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
    return _he_init_pytorch(nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    ))


def _cnn_chainrule(seed):
    import chainrule as cr
    from chainrule.apps.image_presets import PRESETS

    return cr.Sequential(PRESETS["mnist"]["cnn"].build(10), input_shape=(1, 28, 28), seed=seed)


CNN_BLOCKS = [(1, 32, 5), (32, 64, 3), (64, 128, 3)]  # (in channels, out channels, kernel) per conv


def _cnn_pytorch(seed):
    """The digits `cnn` preset layer for layer: conv (no bias, "same" padding) - max pool - batch
    norm - ReLU, three times, then 1152 - 128 (no bias) - batch norm - ReLU - dropout - 10."""
    import torch

    torch.manual_seed(seed)
    nn = torch.nn
    layers = []
    for c_in, c_out, k in CNN_BLOCKS:
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
                   nn.ReLU()]
    layers += [nn.Flatten(), nn.Linear(128 * 3 * 3, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
               nn.Dropout(DROPOUT), nn.Linear(128, 10)]
    return _he_init_pytorch(nn.Sequential(*layers))


# Convolutions as im2col products: (out channels, in·kh·kw, output pixels per image)
LENET5_CONVS = [(6, 1 * 5 * 5, 28 * 28), (16, 6 * 5 * 5, 10 * 10)]
LENET5_DENSE = [(400, 120), (120, 84), (84, 10)]
CNN_CONVS = [(32, 1 * 5 * 5, 28 * 28), (64, 32 * 3 * 3, 14 * 14), (128, 64 * 3 * 3, 7 * 7)]
CNN_DENSE = [(128 * 3 * 3, 128), (128, 10)]


def _conv_net_gemms(convs, dense, batch, training):
    """Forward W·X_col per conv (m=out, k=in·kh·kw, n=batch·pixels), then the dense layers; in
    training also dW = dY·X_colᵀ for every conv and dX_col = Wᵀ·dY for all but the first (whose
    input is the data), and the dense layers' products, all of whose dx are needed."""
    out = [(o, k, batch * p, "nn") for o, k, p in convs]
    if training:
        out += [(o, batch * p, k, "nt") for o, k, p in convs]
        out += [(k, o, batch * p, "tn") for o, k, p in convs[1:]]
    return out + _dense_gemms(dense, batch, training, first_dx=True)


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
        train_gemms=_conv_net_gemms(LENET5_CONVS, LENET5_DENSE, BATCH, training=True),
        infer_gemms=lambda b: _conv_net_gemms(LENET5_CONVS, LENET5_DENSE, b, training=False),
    ),
    "cnn": Workload(
        name="cnn",
        input_shape=(1, 28, 28),
        build={"chainrule": _cnn_chainrule, "pytorch": _cnn_pytorch},
        train_gemms=_conv_net_gemms(CNN_CONVS, CNN_DENSE, BATCH, training=True),
        infer_gemms=lambda b: _conv_net_gemms(CNN_CONVS, CNN_DENSE, b, training=False),
    ),
}


# -- instruction sets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Isa:
    """An instruction set every library is restricted to: the settings (read when a library loads,
    so they go into the environment of a fresh process) and the CPU flags it needs."""

    name: str
    openblas: str | None  # OPENBLAS_CORETYPE
    aten: str | None  # ATEN_CPU_CAPABILITY
    mkl: str | None  # MKL_ENABLE_INSTRUCTIONS
    onednn: str | None  # ONEDNN_MAX_CPU_ISA
    numpy_off: tuple[str, ...]  # NumPy dispatch targets above this ISA (NPY_DISABLE_CPU_FEATURES)
    needs: tuple[str, ...]  # /proc/cpuinfo flags


ISAS = {
    "native": Isa("native", None, None, None, None, (), ()),
    "avx2": Isa("avx2", "Haswell", "avx2", "AVX2", "AVX2", ("X86_V4", "AVX512"), ("avx2", "fma")),
    # Skylake-X's AVX-512 (F, CD, BW, DQ, VL): what OpenBLAS's SkylakeX kernels and oneDNN's
    # avx512_core use; NumPy's targets for later AVX-512 extensions (VNNI, IFMA/VBMI, Ice Lake's,
    # Sapphire Rapids' FP16) are switched off too, so every library stays at one level.
    "avx512": Isa("avx512", "SkylakeX", "avx512", "AVX512", "AVX512_CORE",
                  ("AVX512_CLX", "AVX512_CNL", "AVX512_ICL", "AVX512_SPR"),
                  ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")),
}
ISA_VARIABLES = ("OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                 "NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "DNNL_MAX_CPU_ISA", "MKL_CBWR")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return set()


def isa_environment(isa: Isa) -> dict[str, str]:
    """This process's environment with `isa`'s settings, and none inherited from elsewhere."""
    from numpy._core._multiarray_umath import __cpu_dispatch__

    env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
    for name, value in (("OPENBLAS_CORETYPE", isa.openblas), ("ATEN_CPU_CAPABILITY", isa.aten),
                        ("MKL_ENABLE_INSTRUCTIONS", isa.mkl), ("ONEDNN_MAX_CPU_ISA", isa.onednn)):
        if value:
            env[name] = value
    # only targets this NumPy build dispatches to can be named (their names change between versions)
    off = [t for t in __cpu_dispatch__ if any(t.startswith(prefix) for prefix in isa.numpy_off)]
    if off:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(off)
    return env


def _numpy_kernels() -> dict:
    """NumPy's BLAS (OpenBLAS's core type, as threadpoolctl reads it from the library) and the SIMD
    targets of NumPy's own loops that are switched on."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    out = {"simd": [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return out
    for info in threadpool_info():
        if info["user_api"] == "blas" and "numpy" in info["filepath"]:
            out.update(blas=info["internal_api"], blas_version=info.get("version"),
                       blas_kernel=info.get("architecture"), blas_threads=info["num_threads"])
    return out


def _captured_stdout(fn) -> str:
    """What `fn()` and the C libraries it calls print on file descriptor 1 (MKL and oneDNN write
    their verbose lines there with printf, out of Python's reach)."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 1)
        try:
            fn()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        return f.read().decode(errors="replace")


def probe_kernels(workloads: list[str]) -> dict:
    """What every library runs with in this process's environment: NumPy's OpenBLAS core and SIMD
    targets; ATen's capability; MKL's ISA and the SGEMMs it ran, and oneDNN's ISA and the
    implementation of each primitive, for one training step and one inference of each workload."""
    import torch

    kernels = {"numpy": _numpy_kernels(), "torch": {"aten": torch.backends.cpu.get_cpu_capability()}}

    def steps():
        for name in workloads:
            work = WORKLOADS[name]
            if "pytorch" not in work.build:
                continue
            model = work.build["pytorch"](0)
            x = torch.rand((8, *work.input_shape))
            torch.nn.functional.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
            model.eval()
            with torch.inference_mode():
                model(x)

    with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON), \
            torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        text = _captured_stdout(steps)
    mkl = re.search(r"MKL_VERBOSE oneMKL.*? architecture (.*?), Lnx", text)
    onednn_isa = re.search(r"onednn_verbose,.*?,info,cpu,isa:(.*)", text)
    primitives = set()
    for line in text.splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose") and len(fields) > 7 and fields[2] == "primitive" \
                and fields[3] == "exec" and fields[5] != "reorder":
            primitives.add(f"{fields[5]} {fields[7]}: {fields[6]}")  # e.g. convolution forward_training: jit:avx2
    kernels["torch"].update(
        mkl=mkl.group(1).strip() if mkl else None,
        mkl_calls=sorted({m.group(1) for m in re.finditer(r"MKL_VERBOSE (\w+)\(", text)}),
        onednn=onednn_isa.group(1).strip() if onednn_isa else None,
        onednn_primitives=sorted(primitives),
    )
    return kernels


def kernel_warnings(isa: Isa, kernels: dict) -> list[str]:
    """Settings of `isa` that a library did not follow, judged by what it reports."""
    warnings = []
    np_k, t_k = kernels["numpy"], kernels["torch"]
    if isa.openblas and (np_k.get("blas_kernel") or "").lower() != isa.openblas.lower():
        warnings.append(f"OpenBLAS runs {np_k.get('blas_kernel')} kernels, not {isa.openblas}")
    if isa.numpy_off and any(t.startswith(p) for t in np_k["simd"] for p in isa.numpy_off):
        warnings.append(f"NumPy's loops still use {np_k['simd']}")
    if isa.aten and (t_k["aten"] or "").lower() != isa.aten:
        warnings.append(f"PyTorch's ATen runs {t_k['aten']}, not {isa.aten.upper()}")
    wanted = {"avx2": "AVX2", "avx512": "AVX-512"}.get(isa.name)
    if wanted and t_k["mkl"] and f"Intel(R) {wanted})" not in t_k["mkl"]:
        warnings.append(f"MKL runs {t_k['mkl']!r}, not {wanted}")
    if wanted and t_k["onednn"] and wanted not in t_k["onednn"]:
        warnings.append(f"oneDNN runs {t_k['onednn']!r}, not {wanted}")
    if isa.name == "avx2" and any("avx512" in p for p in t_k["onednn_primitives"]):
        warnings.append("oneDNN primitives ran AVX-512 code")
    return warnings


def describe_kernels(kernels: dict) -> str:
    """One line: what each library ran with."""
    np_k, t_k = kernels["numpy"], kernels["torch"]
    convs = sorted({p.split(": ")[1] for p in t_k["onednn_primitives"] if p.startswith("convolution")})
    mkl = re.search(r"\(Intel\(R\) ([^)]*)\)", t_k["mkl"] or "")
    onednn = t_k["onednn"] or "not used"
    return (f"chainrule/NumPy: {np_k.get('blas', '?')} {np_k.get('blas_version', '')} {np_k.get('blas_kernel')} "
            f"kernels, NumPy loops up to {np_k['simd'][-1] if np_k['simd'] else 'baseline'}; "
            f"PyTorch: ATen {t_k['aten']}, MKL {mkl.group(1) if mkl else t_k['mkl']} (sgemm), oneDNN {onednn}"
            + (f" (conv {', '.join(convs)})" if convs else ""))


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


def _machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot, from /proc/stat (NaN without it)."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _, _, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    except (OSError, ValueError):
        return float("nan")
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class _Usage:
    """CPU seconds (all threads), context switches and minor page faults of this process over a
    stretch of code: a CPU time well above the wall time means threads spinning while they wait;
    involuntary switches mean the scheduler took the core away. And how many cores every other
    process kept busy meanwhile: about 0 on an idle machine, so a higher figure marks a run that
    other jobs disturbed (in the busy scenario it is the competitor's share)."""

    def __enter__(self):
        self.start = resource.getrusage(resource.RUSAGE_SELF)
        self.start_machine, self.start_wall = _machine_busy_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        end = resource.getrusage(resource.RUSAGE_SELF)
        cpu = end.ru_utime + end.ru_stime - self.start.ru_utime - self.start.ru_stime
        others = _machine_busy_seconds() - self.start_machine - cpu
        self.counts = {
            "cpu_s": cpu,
            "other_processes_cores": max(0.0, others) / (time.perf_counter() - self.start_wall),
            "voluntary_switches": end.ru_nvcsw - self.start.ru_nvcsw,
            "involuntary_switches": end.ru_nivcsw - self.start.ru_nivcsw,
            "minor_faults": end.ru_minflt - self.start.ru_minflt,
        }


def _infer_seconds(predict_all) -> tuple[float, object]:
    """Fastest of `INFER_PASSES` passes of `predict_all()` (or of as many as fit in
    `INFER_BUDGET_S`, at least 3: a `cnn` pass takes seconds), and the predictions. An mlp pass
    takes about 0.1 s, short enough for a burst of load on a shared machine to cover it whole, and
    load only ever slows a pass down: the fastest pass is the framework's own speed (as `timeit`
    argues)."""
    times = []
    start = time.perf_counter()
    while len(times) < INFER_PASSES and (len(times) < 3 or time.perf_counter() - start < INFER_BUDGET_S):
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


def _step_stats(t0: float, stamps: list[float]) -> dict:
    """The steady rate, from the median time between consecutive optimizer steps (a batch's typical
    cost, untouched by first-use costs such as thread pools, allocator growth and kernel selection,
    and by bursts of load that stretch some batches of an epoch but not most), and how the steps
    spread: percentiles, and the seconds the epoch lost to steps slower than the median, net of those
    the faster steps gained (below zero where they gained more)."""
    steps = np.diff([t0, *stamps])
    typical = float(np.median(steps[1:]))
    return {
        "steady_samples_per_s": BATCH / typical,
        "step_ms": {f"p{q}": 1e3 * float(np.percentile(steps[1:], q)) for q in (50, 90, 99)}
        | {"first": 1e3 * float(steps[0]), "max": 1e3 * float(steps[1:].max())},
        "slow_steps": int(np.sum(steps[1:] > 2 * typical)),
        "lost_to_slow_steps_s": float(np.sum(steps) - len(steps) * typical),
    }


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
    with _Usage() as usage:
        t0 = time.perf_counter()
        cr.fit(model, x, y, cr.CrossEntropy(), optimizer, epochs=1, batch_size=BATCH, verbose=False, seed=seed)
        train_s = time.perf_counter() - t0
    infer_s, pred = _infer_seconds(lambda: model.predict(xt, batch_size=INFER_BATCH))
    return {
        "train_s": train_s,
        **_step_stats(t0, stamps),
        "train_usage": usage.counts,
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
    with _Usage() as usage:
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
        **_step_stats(t0, stamps),
        "train_usage": usage.counts,
        "infer_s": infer_s,
        "accuracy": float((pred == yt).double().mean()),  # (in float32, a tie with chainrule read as 0.3000017 points)
        "latency_ms": latency,
        "threads": {"torch": torch.get_num_threads()},
    }


def run_sklearn(work: Workload, seed: int, data) -> dict:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    x, y, xt, yt = data
    model = work.build["sklearn"](seed)
    with _Usage() as usage:
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
        "train_usage": usage.counts,
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


def _kernels_in_use(framework: str) -> dict:
    """What this process ran with, checked in the process itself (the probe looks deeper)."""
    if framework == "pytorch":
        import torch

        return {"aten": torch.backends.cpu.get_cpu_capability()}
    k = _numpy_kernels()
    return {"blas_kernel": k.get("blas_kernel"), "simd": k["simd"][-1] if k["simd"] else None}


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
        "kernels": _kernels_in_use(framework),
    })
    return result


# -- where a training step goes ----------------------------------------------------------------


def profile_chainrule(workload: str, data_dir, batches: int = 300) -> list[tuple[str, float]]:
    """Where one chainrule training step spends its time: each layer's forward and backward, the
    loss, the optimizer, and the batch gather, as (part, milliseconds per step), over `batches`.

    The same calls in the same order as `fit` makes them (the first layer computes no input
    gradient, as `Sequential.backward(grad, input_grad=False)` arranges), with the cores shared out
    as `fit` shares them (`BlasThreads`: BLAS threads, and element-wise passes cut into parts) and
    glibc's malloc set to keep freed memory as `fit` sets it.
    """
    import chainrule as cr
    from chainrule.parallel import BlasThreads
    from chainrule.training import _keep_freed_memory

    _keep_freed_memory()

    work = WORKLOADS[workload]
    x, y, _, _ = load_data(data_dir, work.input_shape)
    model = work.build["chainrule"](0)
    optimizer, loss = cr.Adam(model.parameters(), lr=LR), cr.CrossEntropy()
    order = np.random.default_rng(0).permutation(len(x))
    names = [f"{i}:{type(layer).__name__}" for i, layer in enumerate(model.layers)]
    first = next(i for i, layer in enumerate(model.layers) if layer.parameters())
    for i, layer in enumerate(model.layers):
        layer.needs_input_grad = i > first
    spent: dict[str, float] = {}

    def lap(part, since):
        now = time.perf_counter()
        spent[part] = spent.get(part, 0.0) + now - since
        return now

    def step(b):
        t = time.perf_counter()
        idx = order[(b * BATCH) % len(x):][:BATCH]
        xb, yb = x[idx], y[idx]
        t = lap("gather batch x[idx]", t)
        for name, layer in zip(names, model.layers, strict=True):
            xb = layer.forward(xb, True)
            t = lap(f"forward  {name}", t)
        _, grad = loss(xb, yb)
        t = lap("loss (softmax + cross-entropy)", t)
        for i in range(len(model.layers) - 1, first - 1, -1):
            grad = model.layers[i].backward(grad)
            t = lap(f"backward {names[i]}", t)
        optimizer.step()
        lap("Adam step", t)

    with BlasThreads() as blas:
        for b in range(batches):
            blas.adapt()
            step(b)
    return [(part, 1e3 * s / batches) for part, s in spent.items()]


def profile_pytorch(workload: str, data_dir, threads: int, batches: int = 100) -> list[tuple[str, float]]:
    """Where one PyTorch training step spends its time, by operator (self CPU time, milliseconds
    per step, the 16 largest), from `torch.profiler` over `batches` steps after 20 unrecorded ones."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    work = WORKLOADS[workload]
    x, y, _, _ = (torch.from_numpy(a) for a in load_data(data_dir, work.input_shape))
    model = work.build["pytorch"](0)
    optimizer, loss_fn = torch.optim.Adam(model.parameters(), lr=LR), torch.nn.CrossEntropyLoss()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))

    def step(b):
        idx = order[(b * BATCH) % len(x):][:BATCH]
        loss = loss_fn(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    for b in range(20):
        step(b)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in range(batches):
            step(20 + b)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3 / batches) for e in prof.key_averages()),
                 key=lambda kv: -kv[1])
    return ops[:16]


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


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process, from /proc (NaN where there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def spawn(args: list[str], env: dict[str, str], busy: bool = False) -> dict:
    """Run this script with `args` in a fresh process with environment `env`, and return the JSON
    it prints last. With `busy`, a competing CPU-bound process runs for exactly as long; the share
    of a core it got is added to the result as `competitor_cpu_share`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if busy else None
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    finally:
        if competitor is not None:
            competitor_s = _cpu_seconds(competitor.pid)
            competitor.kill()
            competitor.wait()
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no error output)"]
        sys.exit(f"speed.py: error: `{' '.join(args[:3])}` failed: {lines[-1]}")
    result = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith(("{", "["))))
    if competitor is not None and isinstance(result, dict):
        result["competitor_cpu_share"] = competitor_s / (time.perf_counter() - t0)
    return result


def median(values):
    return statistics.median(values) if values else float("nan")


def summarise(runs: dict[str, list[dict]], gemm: list[dict]) -> dict:
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
                "latency_ms", "peak_rss_mb", "rss_after_data_mb", "lost_to_slow_steps_s", "competitor_cpu_share")}
        row["train_cpu_per_wall"] = median([r["train_usage"]["cpu_s"] / r["train_s"] for r in rs])
        row["other_processes_cores"] = median([r["train_usage"].get("other_processes_cores", float("nan")) for r in rs])
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


def _cell(value, spec, unit=""):
    return "-" if value is None or value != value else format(value, spec) + unit  # NaN: not measured


def _markdown(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                       for i, (c, w) in enumerate(zip(row, widths, strict=True))) + " |")
        if j == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def format_table(title: str, summary: dict) -> str:
    t, roof = summary["frameworks"], summary["roofline"]
    rows = [("framework", "train ex/s", "vs torch", "of bound", "steady ex/s", "vs torch", "lost s", "CPU/wall",
             "test acc", "infer ex/s", "vs torch", "latency ms", "peak RSS MB")]
    for fw, r in t.items():
        rows.append((
            fw, _cell(r["train_samples_per_s"], ",.0f"), _cell(r.get("train_vs_pytorch"), ".2f", "x"),
            _cell(100 * r["train_fraction_of_bound"], ".0f", "%"), _cell(r["steady_samples_per_s"], ",.0f"),
            _cell(r.get("steady_vs_pytorch"), ".2f", "x"), _cell(r["lost_to_slow_steps_s"], ".2f"),
            _cell(r["train_cpu_per_wall"], ".2f"), _cell(100 * r["accuracy"], ".2f", "%"),
            _cell(r["infer_samples_per_s"], ",.0f"), _cell(r.get("infer_vs_pytorch"), ".2f", "x"),
            _cell(r["latency_ms"], ".3f"), _cell(r["peak_rss_mb"], ",.0f"),
        ))
    lines = [f"{title}:", *_markdown(rows)]
    shares = [r["competitor_cpu_share"] for r in t.values()]
    share = median([s for s in shares if s == s])  # NaN (idle runs) left out
    if share == share:
        lines.append(f"the competing process got {share:.2f} of a core during the runs (median)")
    loads = [r["other_processes_cores"] for r in t.values()]
    others = max((x for x in loads if x == x), default=float("nan"))  # NaN: not measured
    lines.append(f"other processes kept up to {others:.2f} cores busy during training (median per framework)"
                 + ("" if share == share or others < 0.2 else ": the machine was not idle"))
    tr = roof["train"]
    lines.append(
        f"GEMM bound, training: {tr['flops_per_sample'] / 1e6:.2f} MFLOP/example at "
        f"{tr['gemm_gflops']['numpy']:.0f} GFLOP/s (NumPy/OpenBLAS) or {tr['gemm_gflops']['torch']:.0f} "
        f"(torch/MKL) -> at most {tr['bound_samples_per_s']:,.0f} ex/s; inference at most "
        f"{roof['infer']['bound_samples_per_s']:,.0f} ex/s"
    )
    return "\n".join(lines)


# issue 20's goals for chainrule against PyTorch: (workload, scenario) -> minimum training ratio
TRAIN_GOALS = {("mlp", "idle"): 1.25, ("lenet5", "idle"): 1.0, ("cnn", "idle"): 1.0, ("mlp", "busy"): 1.0}


def goals(workload: str, scenario: str, summary: dict) -> dict[str, bool]:
    """The issue's targets for chainrule against PyTorch, each with whether the medians meet it."""
    t = summary["frameworks"]
    if "chainrule" not in t or "pytorch" not in t or (workload, scenario) not in TRAIN_GOALS:
        return {}
    c, p = t["chainrule"], t["pytorch"]
    need = TRAIN_GOALS[workload, scenario]
    out = {
        f"training >= {need:.2f}x PyTorch: {c['train_vs_pytorch']:.2f}x": c["train_vs_pytorch"] >= need,
        f"(steady rate) >= {need:.2f}x PyTorch: {c['steady_vs_pytorch']:.2f}x": c["steady_vs_pytorch"] >= need,
    }
    if scenario == "idle":
        out.update({
            f"test accuracy within 0.3 points: {c['accuracy_minus_pytorch_points']:+.2f}":
                abs(c["accuracy_minus_pytorch_points"]) <= 0.3,
            f"inference >= 1.0x PyTorch: {c['infer_vs_pytorch']:.2f}x": c["infer_vs_pytorch"] >= 1.0,
            f"latency <= PyTorch's: {c['latency_ms']:.3f} vs {p['latency_ms']:.3f} ms":
                c["latency_ms"] <= p["latency_ms"],
            f"peak RSS <= PyTorch's: {c['peak_rss_mb']:.0f} vs {p['peak_rss_mb']:.0f} MB":
                c["peak_rss_mb"] <= p["peak_rss_mb"],
        })
    return out


def format_goals(found: dict[str, bool]) -> str:
    return "\n".join(f"goal {'met    ' if met else 'NOT MET'}  {goal}" for goal, met in found.items())


def format_profile(title: str, parts: list[tuple[str, float]], total_label: str = "") -> str:
    total = sum(ms for _, ms in parts)
    lines = [f"{title} ({total:.2f} ms{total_label}):"]
    lines += [f"  {part:<40} {ms:7.3f} ms  {100 * ms / total:5.1f}%" for part, ms in parts]
    return "\n".join(lines)


def format_summary(isa_runs: dict) -> str:
    """One table over every instruction set and workload: chainrule against PyTorch."""
    rows = [("ISA", "workload", "train vs torch (steady)", "busy train vs torch (steady)", "infer vs torch",
             "latency ms (torch)", "peak RSS MB (torch)")]
    for isa, entry in isa_runs.items():
        for name, w in entry["workloads"].items():
            idle, busy = w.get("idle", {}).get("frameworks", {}), w.get("busy", {}).get("frameworks", {})
            c, p = idle.get("chainrule", {}), idle.get("pytorch", {})
            cb = busy.get("chainrule", {})

            def ratio(row, key):
                return _cell(row.get(key), ".2f", "x")

            rows.append((
                isa, name,
                f"{ratio(c, 'train_vs_pytorch')} ({ratio(c, 'steady_vs_pytorch')})" if c else "-",
                f"{ratio(cb, 'train_vs_pytorch')} ({ratio(cb, 'steady_vs_pytorch')})" if cb else "-",
                ratio(c, "infer_vs_pytorch"),
                f"{_cell(c.get('latency_ms'), '.3f')} ({_cell(p.get('latency_ms'), '.3f')})" if c else "-",
                f"{_cell(c.get('peak_rss_mb'), ',.0f')} ({_cell(p.get('peak_rss_mb'), ',.0f')})" if c else "-",
            ))
    return "\n".join(_markdown(rows))


def machine() -> dict:
    """The CPU (model name, family/model, the vector extensions that matter here), cores, system."""
    cpu, family, model = platform.processor() or "", "?", "?"
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
        info = {k.strip(): v.strip() for k, v in info.items()}
        cpu, family, model = info.get("model name", cpu), info.get("cpu family", "?"), info.get("model", "?")
    except OSError:
        pass
    flags = cpu_flags()
    extensions = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile")
                  if f in flags]
    return {
        "cpu": cpu, "family": family, "model": model, "extensions": extensions, "cores": os.cpu_count(),
        "system": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
    }


def describe_machine(m: dict) -> str:
    return (f"{m['cpu']} (family {m['family']} model {m['model']}; {' '.join(m['extensions'])}), "
            f"{m['cores']} cores, {m['system']}, Python {m['python']}")


def git_commit() -> str | None:
    """The commit measured, "-dirty" with uncommitted changes (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=HERE, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def versions() -> dict:
    import sklearn
    import torch

    import chainrule

    return {"chainrule": chainrule.__version__, "commit": git_commit(), "numpy": np.__version__,
            "torch": torch.__version__, "scikit-learn": sklearn.__version__}


def run_isa(isa: Isa, names: list[str], args, common: list[str], report: dict, save: Callable[[], None]) -> None:
    """Every workload and scenario on one instruction set, into `report["isa"][isa.name]`: the
    rounds, the tables, the profiles; `save()` after each workload, so an interrupted run keeps
    what it finished."""
    stamp = {k: report[k] for k in ("date", "machine", "versions")}
    env = isa_environment(isa)
    kernels = spawn(["--probe", *names], env)
    warnings = kernel_warnings(isa, kernels)
    print(f"== ISA {isa.name}: " + describe_kernels(kernels), flush=True)
    for w in warnings:
        print(f"warning: {isa.name}: {w}", flush=True)
    report["isa"][isa.name] = entry = {**stamp, "env": {k: env[k] for k in ISA_VARIABLES if k in env},
                                       "kernels": kernels, "warnings": warnings, "workloads": {}}
    for name in names:
        work = WORKLOADS[name]
        frameworks = [f for f in args.frameworks if f in work.build]
        runs = {s: {f: [] for f in frameworks} for s in args.scenarios}
        gemm = []
        for r in range(args.repeats):
            order = frameworks[r % len(frameworks):] + frameworks[: r % len(frameworks)]
            for scenario in args.scenarios:
                for fw in order:
                    result = spawn(["--child", fw, name, str(r)] + common, env, busy=scenario == "busy")
                    runs[scenario][fw].append(result)
                    print(f"  [{isa.name} {name} {scenario} round {r + 1}/{args.repeats}] {fw:9s} "
                          f"{result['train_samples_per_s']:8,.0f} ex/s train, acc {100 * result['accuracy']:.2f}%, "
                          f"{result['infer_samples_per_s']:9,.0f} ex/s infer, {result['latency_ms']:.3f} ms, "
                          f"{result['peak_rss_mb']:.0f} MB", flush=True)
            gemm.append(spawn(["--gemm", name] + common, env))
        entry["workloads"][name] = w_entry = {}
        for scenario in args.scenarios:
            w_entry[scenario] = summary = {**stamp, "kernels": kernels, "warnings": warnings, "repeats": args.repeats,
                                           **summarise(runs[scenario], gemm)}
            summary["goals"] = goals(name, scenario, summary)
            title = f"workload {name}, ISA {isa.name}, " + (
                "idle machine" if scenario == "idle" else "busy machine (one competing CPU-bound process)")
            print(format_table(title, summary), flush=True)
            if summary["goals"]:
                print(format_goals(summary["goals"]), flush=True)
        if args.with_profile and "chainrule" in frameworks:
            mine = spawn(["--profile-child", name] + common, env)
            theirs = spawn(["--profile-torch", name] + common, env)
            w_entry["profile"] = {**stamp, "kernels": kernels, "warnings": warnings, "chainrule_ms": dict(mine),
                                  "pytorch_ms": dict(theirs)}
            print(format_profile(f"chainrule {name} ({isa.name}), where a training step of {BATCH} examples goes",
                                 mine), flush=True)
            print(format_profile(f"PyTorch {name} ({isa.name}), the largest operators of a training step", theirs,
                                 " in these"), flush=True)
        save()


def main(argv=None) -> int:
    # Stopped by a signal (kill, a batch system's time limit), unwind as for Ctrl-C: the `finally`
    # in `spawn` then stops the busy scenario's competitor, which would otherwise spin on.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians are reported)")
    p.add_argument("--workloads", nargs="+", default=None, help=f"subset of {sorted(WORKLOADS)}")
    p.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    p.add_argument("--isa", nargs="+", default=["native"], choices=list(ISAS),
                   help="instruction sets to restrict every library to, one after the other (default: native)")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                   help="idle machine, and/or one competing CPU-bound process (default: both)")
    p.add_argument("--no-profile", dest="with_profile", action="store_false",
                   help="skip the per-layer (chainrule) and per-operator (PyTorch) profiles")
    p.add_argument("--data", default=None, help="data directory (default: $CHAINRULE_DATA, then the cache)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    p.add_argument("--out", default=str(RESULTS), help="JSON results file")
    p.add_argument("--profile", action="store_true", help="only time each part of a training step, and exit")
    p.add_argument("--child", nargs=3, metavar=("FRAMEWORK", "WORKLOAD", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--gemm", metavar="WORKLOAD", help=argparse.SUPPRESS)
    p.add_argument("--probe", nargs="+", metavar="WORKLOAD", help=argparse.SUPPRESS)
    p.add_argument("--profile-child", metavar="WORKLOAD", help=argparse.SUPPRESS)
    p.add_argument("--profile-torch", metavar="WORKLOAD", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        fw, wl, seed = args.child
        print(json.dumps(child(fw, wl, int(seed), args.data, args.threads)))
        return 0
    if args.gemm:
        print(json.dumps(gemm_child(args.gemm, args.threads)))
        return 0
    if args.probe:
        print(json.dumps(probe_kernels(args.probe)))
        return 0
    if args.profile_child:
        print(json.dumps(profile_chainrule(args.profile_child, args.data)))
        return 0
    if args.profile_torch:
        print(json.dumps(profile_pytorch(args.profile_torch, args.data, args.threads)))
        return 0

    names = args.workloads or list(WORKLOADS)
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        p.error(f"unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}")
    flags = cpu_flags()
    for isa in args.isa:
        missing = [f for f in ISAS[isa].needs if f not in flags]
        if missing:
            p.error(f"--isa {isa}: this CPU lacks {' '.join(missing)}")
    from chainrule.data.mnist import load_mnist
    from chainrule.errors import DataError

    # Fail now, in one line, rather than in every child; this also downloads MNIST once if it is
    # nowhere to be found (and no --data was given).
    for split in ("test", "train"):
        try:
            load_mnist(split, args.data)
        except DataError as exc:
            sys.exit(f"speed.py: error: {exc}")
    common = ["--threads", str(args.threads)] + (["--data", args.data] if args.data else [])
    if args.profile:  # profiles only, in this CPU's own kernels or each ISA's
        for isa in args.isa:
            env = isa_environment(ISAS[isa])
            for name in names:
                print(format_profile(f"chainrule {name} ({isa})", spawn(["--profile-child", name] + common, env)))
                print(format_profile(f"PyTorch {name} ({isa}), largest operators",
                                     spawn(["--profile-torch", name] + common, env), " in these"))
        return 0

    m = machine()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{date} on {describe_machine(m)}", flush=True)
    report = {
        "date": date,
        "machine": m,
        "versions": versions(),
        "settings": {"repeats": args.repeats, "torch_threads": args.threads, "batch": BATCH, "epochs": 1,
                     "lr": LR, "dropout": DROPOUT, "inference_batch": INFER_BATCH,
                     "inference_passes": INFER_PASSES, "inference_budget_s": INFER_BUDGET_S,
                     "latency_calls": LATENCY_CALLS,
                     "busy_competitor": f"python -c {COMPETITOR!r}"},
        "isa": {},
    }
    out = Path(args.out)
    t_start = time.perf_counter()

    def save():
        report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, (json.dumps(merged(report, out), indent=2) + "\n").encode())

    for isa in args.isa:
        run_isa(ISAS[isa], names, args, common, report, save)
    save()
    print(format_summary(merged(report, out)["isa"]), flush=True)
    print(f"wrote {out} ({report['wall_seconds']:.0f} s)")
    return 0


def merged(report: dict, out: Path) -> dict:
    """`report` on top of the results already in `out`: `--isa avx2 --workloads mlp --scenarios
    busy` refreshes that one table and keeps every other ISA's, workload's and scenario's last
    results, so one can be re-measured alone. Each table carries its own date, machine, versions
    and the kernels the libraries ran with; an ISA's own keys of those names are its latest run's."""
    try:
        earlier = json.loads(out.read_text()).get("isa", {})
    except (OSError, ValueError, AttributeError):
        earlier = {}
    isas = {isa: entry for isa, entry in earlier.items() if isa in ISAS and isinstance(entry, dict)}
    for isa, entry in report["isa"].items():
        old = isas.get(isa, {})
        workloads = {name: dict(w) for name, w in old.get("workloads", {}).items() if name in WORKLOADS}
        for name, w in entry["workloads"].items():
            workloads[name] = workloads.get(name, {}) | w
        isas[isa] = entry | {"workloads": workloads}
    return report | {"isa": isas}


if __name__ == "__main__":
    sys.exit(main())
