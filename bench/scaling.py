"""Scaling benchmark: data-parallel training over MPI, measured here and modelled for a cluster (issue 19).

    python bench/scaling.py                      # about 15 minutes on 2 cores
    python bench/scaling.py --rounds 1 --lr-epochs 0   # throughput and model only

Measured on this machine, for the `mlp` and `cnn` digits presets (real MNIST, global batch 128, Adam,
dropout, no augmentation so that every framework runs the same step):

* samples/s of chainrule in 1 process x 2 BLAS threads, and in 2 processes x 1 thread under
  `mpirun -np 2` (data-parallel `fit`: gradient buckets summed while backward runs, synchronised
  batch norm); for the latter the time per step a rank spends blocked waiting for communication,
  and the time of one blocking `Allreduce` of the whole flat gradient buffer;
* PyTorch DistributedDataParallel (gloo backend) on the same 2 processes x 1 thread, same
  layers, same global batch, in the same run; rounds interleave the three (A B C, B C A, ...) and
  the table shows medians;
* allreduce latency and bandwidth between the 2 local processes (the time of a 4-byte
  allreduce, and the slope of time over size from 64 KB to 4 MB);
* each preset's compute in one process x 1 thread at per-rank batches 8 to 1,024: forward,
  backward (with the moment each gradient bucket becomes ready) and the optimizer step.

Modelled: step time and scaling efficiency on 8, 32 and 128 nodes (one rank per node, computing
as fast as one core here) on 10, 25 and 100 Gb/s networks. Each bucket is summed by a ring
allreduce, 2(p-1)·alpha + 2·(p-1)/p·M/bandwidth, or recursive doubling, log2(p)·(alpha +
M/bandwidth), whichever is faster; buckets go one after another, each starting when backward has
made it ready and the previous one is done; what outlasts backward is exposed. Batch norm's
synchronised sums are small blocking allreduces on the critical path. Weak scaling keeps 128
examples per rank; strong scaling keeps a global batch of 1,024. The assumptions are printed with
the table, and the model is checked against the measured 2-process step.

And single-process accuracy of the linear learning-rate scaling rule with warm-up (Goyal et al.
2017) for the `mlp` preset at global batch 1,024 and 4,096: lr = 1e-3 · B/128, ramped linearly
from 1e-3 over the first epochs, then cosine-decayed; against batch 128 and against batch 4,096
without scaling.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

import chainrule as cr
from chainrule import distributed
from chainrule.apps import image_presets
from chainrule.apps import images as image_app
from chainrule.data.mnist import load_mnist
from chainrule.distributed import MPIWorld
from chainrule.files import atomic_write_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "scaling.json"
PRESETS = ("mlp", "cnn")
GLOBAL_BATCH = 128
PROFILE_BATCHES = (8, 32, 64, 128, 1024)
NODES = (8, 32, 128)
NETWORKS_GBIT = (10, 25, 100)
ALPHA_NETWORK = 20e-6  # s per message: MPI over TCP on Ethernet (RDMA fabrics reach 1-3 us)
LINK_EFFICIENCY = 0.9  # share of the line rate an allreduce's messages get
STRONG_GLOBAL_BATCH = 1024
WEAK_PER_RANK = 128


# -- the workers: each runs in its own process (or `mpirun -np 2` of them) and prints one JSON line --


def _mnist(n: int, preset: str):

    images, labels = load_mnist("train")
    reps = math.ceil(n / len(images))
    images, labels = np.concatenate([images] * reps)[:n], np.concatenate([labels] * reps)[:n]
    meta = {"preprocessing": image_presets.preprocessing_metadata(image_presets.PRESETS["mnist"][preset])}
    return image_presets.model_inputs(images, meta), labels.astype(np.int64)


def worker_chainrule(preset: str, steps: int, warmup: int) -> dict:
    """Steps of data-parallel `fit` (one process without mpirun): samples/s, communication waits."""

    world = distributed.world()
    if world.size > 1:
        world = TimedWorld(world.comm, world.MPI)
    x, y = _mnist((warmup + steps) * GLOBAL_BATCH, preset)
    model = image_presets.build_model(image_presets.PRESETS["mnist"][preset], 10, seed=0)
    p = image_presets.PRESETS["mnist"][preset]
    timer = StepTimer(warmup, world)
    cr.fit(model, x, y, p.loss(), p.optimizer(model.parameters(), p.lr), epochs=1, batch_size=GLOBAL_BATCH,
           verbose=False, seed=0, world=world, callbacks=[timer])
    result = {"samples_per_s": steps * GLOBAL_BATCH / timer.elapsed, "step_ms": 1e3 * timer.elapsed / steps,
              "processes": world.size, "parameters": model.num_parameters()}
    if world.size > 1:
        result["wait_ms_per_step"] = 1e3 * world.waited / steps
        result["allreduce_flat_ms"] = 1e3 * _allreduce_time(world, model.flat_grads.copy())
        result["allreduce_sweep"] = [(int(n * 4), _allreduce_time(world, np.ones(n, np.float32)))
                                     for n in (1, 64, 1024, 16384, 65536, 262144, 1048576)]
    return result


def _allreduce_time(world, buf: np.ndarray, repeats: int = 20) -> float:
    """Median seconds of one blocking in-place Allreduce of `buf` (each started together)."""
    times = []
    for i in range(repeats + 3):
        world.comm.Barrier()
        t0 = time.perf_counter()
        world.allreduce(buf)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(world.comm.allgather(statistics.median(times)))


class TimedWorld(MPIWorld):
    """MPIWorld that adds up the time spent blocked: in `wait` (the gradient sums that backward did
    not hide) and in blocking allreduces (batch norm's sums, evaluation)."""

    waited = 0.0

    def wait(self, requests):
        t0 = time.perf_counter()
        super().wait(requests)
        self.waited += time.perf_counter() - t0

    def allreduce(self, buf):
        t0 = time.perf_counter()
        super().allreduce(buf)
        self.waited += time.perf_counter() - t0
        return buf


class StepTimer(cr.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch; resets the world's
    waiting time at the same moment."""

    def __init__(self, warmup: int, world):
        self.warmup, self.world, self.start, self.end = warmup, world, None, None

    def on_batch_begin(self, batch):
        if batch == self.warmup:
            self.start = time.perf_counter()
            self.world.waited = 0.0

    def on_batch_end(self, batch, logs):
        self.end = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return self.end - self.start


def _torch_model(preset: str):
    import torch.nn as nn

    if preset == "mlp":
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Dropout(0.2), nn.Linear(512, 512), nn.ReLU(),
                             nn.Dropout(0.2), nn.Linear(512, 10))
    layers = []
    for c_in, c_out, k in ((1, 32, 5), (32, 64, 3), (64, 128, 3)):
        layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out),
                   nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 9, 128, bias=False), nn.BatchNorm1d(128), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(128, 10))


def worker_ddp(preset: str, steps: int, warmup: int) -> dict | None:
    """Steps of PyTorch DDP (gloo) training; RANK, WORLD_SIZE, MASTER_ADDR/PORT from the environment."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    x, y = _mnist((warmup + steps) * GLOBAL_BATCH, preset)
    # torch's SyncBatchNorm runs only on GPUs ("SyncBatchNorm layers only work with GPU modules"), so
    # DDP's batch norm here uses each rank's own statistics: less communication than chainrule's.
    model = _torch_model(preset)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    per = GLOBAL_BATCH // size

    def step(b):
        lo = b * GLOBAL_BATCH + rank * per
        optimizer.zero_grad(set_to_none=True)
        loss_fn(ddp(xs[lo:lo + per]), ys[lo:lo + per]).backward()
        optimizer.step()

    for b in range(warmup):
        step(b)
    dist.barrier()
    t0 = time.perf_counter()
    for b in range(warmup, warmup + steps):
        step(b)
    dist.barrier()
    elapsed = time.perf_counter() - t0
    dist.destroy_process_group()
    if rank:
        return None
    return {"samples_per_s": steps * GLOBAL_BATCH / elapsed, "step_ms": 1e3 * elapsed / steps, "processes": size}


def _stamp(ready: dict, layer: int) -> None:
    ready.setdefault(layer, time.perf_counter())


def worker_profile(preset: str, repeats: int) -> dict:
    """One process: forward, backward (bucket-ready times) and step at each per-rank batch size."""

    p = image_presets.PRESETS["mnist"][preset]
    x, y = _mnist(max(PROFILE_BATCHES), preset)
    model = image_presets.build_model(image_presets.PRESETS["mnist"][preset], 10, seed=0)
    optimizer, loss = p.optimizer(model.parameters(), p.lr), p.loss()
    buckets = distributed.GradientBuckets(model, distributed.World())
    order = sorted(buckets.starts, reverse=True)  # the order backward completes them in
    sizes = [buckets.starts[i][1] - buckets.starts[i][0] for i in order]
    bn = [layer.num_features for layer in model.layers if isinstance(layer, cr.BatchNorm)]
    out = {"parameters": model.num_parameters(), "bucket_values": sizes, "batch_norm_channels": bn, "batches": {}}
    for b in PROFILE_BATCHES:
        runs = []
        for r in range(repeats + 1):
            xb, yb = x[:b], y[:b]
            t0 = time.perf_counter()
            outputs = model.forward(xb, training=True)
            _, grad = loss(outputs, yb)
            t1 = time.perf_counter()
            ready: dict[int, float] = {}
            model.backward(grad, input_grad=False, after_layer=functools.partial(_stamp, ready))
            t2 = time.perf_counter()
            optimizer.step()
            t3 = time.perf_counter()
            if r:  # the first is a warm-up
                runs.append((t1 - t0, t2 - t1, t3 - t2, [ready[i] - t1 for i in order]))
        forward, backward, step, ready_times = zip(*runs, strict=True)
        out["batches"][str(b)] = {"forward": statistics.median(forward), "backward": statistics.median(backward),
                                  "step": statistics.median(step),
                                  "ready": [statistics.median(col) for col in zip(*ready_times, strict=True)]}
    return out


# -- running the workers -------------------------------------------------------------------------------


def _env(threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "src"), env.get("PYTHONPATH")]))
    return env


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_chainrule(preset, processes, threads, steps, warmup) -> dict:
    command = [sys.executable, __file__, "--worker", "chainrule", "--preset", preset, "--steps", str(steps),
               "--warmup", str(warmup)]
    if processes > 1:
        launcher = [shutil.which("mpirun"), "--oversubscribe", "-np", str(processes), "-x", "OMP_NUM_THREADS",
                    "-x", "OPENBLAS_NUM_THREADS", "-x", "PYTHONPATH", "-x", "CHAINRULE_DATA"]
        if os.geteuid() == 0:
            launcher.insert(1, "--allow-run-as-root")
        command = launcher + command
    done = subprocess.run(command, capture_output=True, text=True, env=_env(threads), timeout=900)
    if done.returncode:
        raise RuntimeError(f"chainrule worker failed: {done.stderr[-2000:]}")
    return _last_json(done.stdout)


def run_ddp(preset, processes, threads, steps, warmup) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(processes):
        env = {**_env(threads), "RANK": str(rank), "WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", "ddp", "--preset", preset, "--steps",
                                       str(steps), "--warmup", str(warmup)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=900) for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"DDP worker failed: {[e[-1500:] for _, e in outs]}")
    return _last_json(outs[0][0])


def run_profile(preset, repeats) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", "profile", "--preset", preset, "--steps",
                           str(repeats)], capture_output=True, text=True, env=_env(1), timeout=1800)
    if done.returncode:
        raise RuntimeError(f"profile failed: {done.stderr[-2000:]}")
    return _last_json(done.stdout)


# -- the model -------------------------------------------------------------------------------------------


def allreduce_seconds(nbytes: float, p: int, alpha: float, byte_time: float, log_latency: bool = False) -> float:
    """A ring allreduce or recursive doubling of `nbytes` over p ranks, whichever is faster.

    `log_latency`: the ring's bandwidth term with 2·log2(p) messages instead of 2(p-1), as
    Rabenseifner's reduce-scatter + allgather by recursive halving and doubling sends."""
    if p <= 1:
        return 0.0
    messages = 2 * math.ceil(math.log2(p)) if log_latency else 2 * (p - 1)
    ring = messages * alpha + 2 * (p - 1) / p * nbytes * byte_time
    doubling = math.ceil(math.log2(p)) * (alpha + nbytes * byte_time)
    return min(ring, doubling)


def step_seconds(profile: dict, batch: int, p: int, alpha: float, byte_time: float, value_bytes: int = 4,
                 log_latency: bool = False) -> dict:
    """The modelled step at a per-rank batch on p ranks: compute, exposed communication, total.
    `value_bytes`: the size of a gradient value on the wire (4: float32; 2: sent as 16-bit floats)."""
    prof = profile["batches"][str(batch)]
    compute = prof["forward"] + prof["backward"] + prof["step"]
    # synchronised batch norm: forward sums C+1 then C values, backward 2C, each a blocking allreduce
    bn = sum(allreduce_seconds(4 * n, p, alpha, byte_time) for c in profile["batch_norm_channels"]
             for n in (c + 1, c, 2 * c))
    end = 0.0
    for ready, values in zip(prof["ready"], profile["bucket_values"], strict=True):
        end = max(end, ready) + allreduce_seconds(value_bytes * values, p, alpha, byte_time, log_latency)
    exposed = max(0.0, end - prof["backward"])
    return {"compute": compute, "exposed": exposed, "batch_norm": bn, "total": compute + exposed + bn,
            "allreduce_all": sum(allreduce_seconds(4 * v, p, alpha, byte_time) for v in profile["bucket_values"])}


def model_tables(profiles: dict) -> dict:
    out = {}
    for preset, profile in profiles.items():
        one_weak = step_seconds(profile, WEAK_PER_RANK, 1, 0, 0)["total"]
        one_strong = step_seconds(profile, STRONG_GLOBAL_BATCH, 1, 0, 0)["total"]
        rows = []
        for gbit in NETWORKS_GBIT:
            byte_time = 8 / (gbit * 1e9 * LINK_EFFICIENCY)
            for p in NODES:
                weak = step_seconds(profile, WEAK_PER_RANK, p, ALPHA_NETWORK, byte_time)
                per_rank = STRONG_GLOBAL_BATCH // p
                strong = step_seconds(profile, per_rank, p, ALPHA_NETWORK, byte_time)
                rows.append({"gbit": gbit, "nodes": p, "weak_step_ms": 1e3 * weak["total"],
                             "weak_exposed_ms": 1e3 * (weak["exposed"] + weak["batch_norm"]),
                             "weak_efficiency": one_weak / weak["total"],
                             "strong_per_rank": per_rank, "strong_step_ms": 1e3 * strong["total"],
                             "strong_efficiency": one_strong / (p * strong["total"]),
                             "allreduce_ms": 1e3 * weak["allreduce_all"]})
        out[preset] = {"one_rank_step_ms_at_128": 1e3 * one_weak, "one_rank_step_ms_at_1024": 1e3 * one_strong,
                       "rows": rows, "levers": levers(profile)}
    return out


def levers(profile: dict, p: int = 32, gbit: float = 25) -> dict:
    """Weak-scaling efficiency at p nodes on `gbit` with one thing changed at a time: what would lift it."""
    byte_time = 8 / (gbit * 1e9 * LINK_EFFICIENCY)

    def efficiency(batch=WEAK_PER_RANK, alpha=ALPHA_NETWORK, bt=byte_time, value_bytes=4, log_latency=False):
        alone = step_seconds(profile, batch, 1, 0, 0)["total"]
        return alone / step_seconds(profile, batch, p, alpha, bt, value_bytes, log_latency)["total"]

    return {
        "as modelled": efficiency(),
        "Rabenseifner's allreduce (2 log2 p messages)": efficiency(log_latency=True),
        "latency 2 us (RDMA: InfiniBand, RoCE)": efficiency(alpha=2e-6),
        "gradients sent as 16-bit floats": efficiency(value_bytes=2),
        "100 Gb/s": efficiency(bt=8 / (100e9 * LINK_EFFICIENCY)),
        "1,024 examples per rank": efficiency(batch=1024),
        "RDMA latency and 16-bit gradients": efficiency(alpha=2e-6, value_bytes=2),
        "Rabenseifner's allreduce and 16-bit gradients": efficiency(value_bytes=2, log_latency=True),
    }


# -- the learning-rate scaling rule --------------------------------------------------------------------


def lr_scaling(epochs: int, warmup_epochs: int) -> list[dict]:

    p = image_presets.PRESETS["mnist"]["mlp"]
    meta = {"preprocessing": image_presets.preprocessing_metadata(p)}
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    x, y = image_presets.model_inputs(images, meta), labels.astype(np.int64)
    rows = []
    for batch, scaled in ((128, True), (1024, True), (4096, True), (4096, False)):
        peak = p.lr * batch / GLOBAL_BATCH if scaled else p.lr
        decay = cr.cosine(peak, epochs - warmup_epochs, min_lr=peak / 100)

        def schedule(e, peak=peak, decay=decay):  # Goyal et al.: linear warm-up from the base rate
            return p.lr + (peak - p.lr) * e / warmup_epochs if e < warmup_epochs else decay(e - warmup_epochs)

        model = image_presets.build_model(image_presets.PRESETS["mnist"]["mlp"], 10, seed=0)
        t0 = time.perf_counter()
        history = cr.fit(model, x, y, p.loss(), p.optimizer(model.parameters(), p.lr), epochs=epochs,
                         batch_size=batch, validation_split=image_app.VALIDATION_IMAGES / len(y), lr_schedule=schedule,
                         augment=p.augment, verbose=False, seed=0)
        test = float((model.predict(image_presets.model_inputs(test_images, meta)) == test_labels).mean())
        rows.append({"batch": batch, "peak_lr": peak, "scaled": scaled, "epochs": epochs,
                     "warmup_epochs": warmup_epochs if scaled else 0, "steps": epochs * math.ceil(55000 / batch),
                     "val_accuracy": history["val_accuracy"][-1], "test_accuracy": test,
                     "train_loss": history["loss"][-1], "seconds": time.perf_counter() - t0})
        print(f"  lr scaling: batch {batch}, peak lr {peak:g}: test {100 * test:.2f}%", file=sys.stderr)
    return rows


# -- the report ---------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()
    return f"{name}, {os.cpu_count()} CPUs, {isa}"


def versions() -> dict:
    """The versions of what is measured, and the commit of chainrule's code."""
    found = {}
    for name in ("numpy", "torch", "mpi4py", "openmpi"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    git = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    found["chainrule_commit"] = git.stdout.strip() or None
    return found


def fit_alpha_beta(sweep: list) -> tuple[float, float]:
    """(latency, seconds per byte) from (bytes, seconds) pairs: the latency is the median time of
    the smallest message; the time per byte the least-squares slope over messages of 64 KB and more."""
    smallest = min(b for b, _ in sweep)
    alpha = statistics.median(s for b, s in sweep if b == smallest)
    large = [(b, s) for b, s in sweep if b >= 65536]
    beta = np.polyfit([b for b, _ in large], [s for _, s in large], 1)[0]
    return alpha, beta


def print_report(res: dict) -> None:
    print(f"\nMeasured ({res['machine']}; global batch {GLOBAL_BATCH}, {res['rounds']} rounds, medians)")
    if "versions" in res:
        print(", ".join(f"{k} {v}" for k, v in res["versions"].items()))
    print()
    print("| preset | setup | samples/s | vs DDP | step ms | comm wait ms/step | allreduce of all gradients ms |")
    print("|---|---|---|---|---|---|---|")
    for preset, m in res["measured"].items():
        ddp = m["ddp_2x1"]["samples_per_s"]
        for key, label in (("chainrule_1x2", "chainrule 1 process x 2 threads"),
                           ("chainrule_2x1", "chainrule 2 processes x 1 thread"),
                           ("ddp_2x1", "PyTorch DDP (gloo) 2 processes x 1 thread")):
            r = m[key]
            vs = f"{r['samples_per_s'] / ddp:.2f}x"
            wait = f"{r['wait_ms_per_step']:.2f}" if "wait_ms_per_step" in r else "-"
            flat = f"{r['allreduce_flat_ms']:.2f}" if "allreduce_flat_ms" in r else "-"
            print(f"| {preset} | {label} | {r['samples_per_s']:,.0f} | {vs} | {r['step_ms']:.2f} | {wait} | {flat} |")
    a, b = res["local_alpha_s"], res["local_byte_s"]
    print(f"\nLocal allreduce (2 processes, shared memory): latency {1e6 * a:.1f} us, "
          f"bandwidth {1 / b / 1e9:.2f} GB/s (a 4-byte allreduce; the slope over 64 KB to 4 MB)")
    for preset, check in res["model_check"].items():
        print(f"Model check, {preset}: predicted 2-process step {check['predicted_ms']:.2f} ms from the 1-thread "
              f"compute and the local allreduce; measured {check['measured_ms']:.2f} ms")

    print("\nModelled (assumptions below)\n")
    print("| preset | network | nodes | weak: step ms | weak: exposed comm ms | weak: efficiency | "
          "strong: per rank | strong: step ms | strong: efficiency |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset, m in res["model"].items():
        for r in m["rows"]:
            print(f"| {preset} | {r['gbit']} Gb/s | {r['nodes']} | {r['weak_step_ms']:.2f} | "
                  f"{r['weak_exposed_ms']:.2f} | {100 * r['weak_efficiency']:.0f}% | {r['strong_per_rank']} | "
                  f"{r['strong_step_ms']:.2f} | {100 * r['strong_efficiency']:.0f}% |")
    print("\nAssumptions: " + " ".join(res["assumptions"]))
    goal = next(r for r in res["model"]["mlp"]["rows"] if r["gbit"] == 25 and r["nodes"] == 32)
    verdict = "met" if goal["weak_efficiency"] >= 0.9 else "NOT MET"
    print(f"\nGoal (mlp, weak, 128 per rank, 32 nodes, 25 Gb/s >= 90%): {100 * goal['weak_efficiency']:.1f}% "
          f"-> {verdict}")
    print("mlp, weak, 32 nodes, 25 Gb/s, changing one thing: " + "; ".join(
        f"{name} {100 * e:.0f}%" for name, e in res["model"]["mlp"]["levers"].items()))
    for preset, m in res["measured"].items():
        ratio = m["chainrule_2x1"]["samples_per_s"] / m["ddp_2x1"]["samples_per_s"]
        verdict = "met" if ratio >= 1 else "NOT MET"
        print(f"Goal ({preset}: chainrule 2 processes >= DDP): {ratio:.2f}x -> {verdict}")
    if res.get("lr_scaling"):
        print("\nLinear learning-rate scaling with warm-up (mlp, one process)\n")
        print("| global batch | peak lr | warm-up epochs | epochs | steps | val acc | test acc |")
        print("|---|---|---|---|---|---|---|")
        for r in res["lr_scaling"]:
            print(f"| {r['batch']:,} | {r['peak_lr']:g}{'' if r['scaled'] else ' (not scaled)'} | "
                  f"{r['warmup_epochs']} | {r['epochs']} | {r['steps']:,} | {100 * r['val_accuracy']:.2f}% | "
                  f"{100 * r['test_accuracy']:.2f}% |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", choices=("chainrule", "ddp", "profile"), help=argparse.SUPPRESS)
    ap.add_argument("--preset", choices=PRESETS, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=5, help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput runs")
    ap.add_argument("--mlp-steps", type=int, default=150)
    ap.add_argument("--cnn-steps", type=int, default=25)
    ap.add_argument("--profile-repeats", type=int, default=5)
    ap.add_argument("--lr-epochs", type=int, default=10, help="epochs of each learning-rate run (0: skip them)")
    ap.add_argument("--lr-warmup-epochs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--model-only", action="store_true",
                    help="measure nothing: recompute the model from the profiles in --out and print the report")
    args = ap.parse_args()

    if args.model_only:
        res = json.loads(args.out.read_text())
        res["model"] = model_tables(res["profiles"])
        atomic_write_bytes(args.out, json.dumps(res, indent=2).encode())
        print_report(res)
        return 0

    if args.worker == "chainrule":
        result = worker_chainrule(args.preset, args.steps, args.warmup)
        if distributed.world().rank == 0:
            print(json.dumps(result))
        return 0
    if args.worker == "ddp":
        result = worker_ddp(args.preset, args.steps, args.warmup)
        if result is not None:
            print(json.dumps(result))
        return 0
    if args.worker == "profile":
        print(json.dumps(worker_profile(args.preset, args.steps)))
        return 0

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    profiles = {preset: run_profile(preset, args.profile_repeats) for preset in PRESETS}
    print("profiled compute", file=sys.stderr)
    setups = (("chainrule_1x2", run_chainrule, 1, 2), ("chainrule_2x1", run_chainrule, 2, 1),
              ("ddp_2x1", run_ddp, 2, 1))
    runs = {preset: {name: [] for name, *_ in setups} for preset in PRESETS}
    for r in range(args.rounds):
        for preset in PRESETS:
            steps = args.mlp_steps if preset == "mlp" else args.cnn_steps
            for k in range(len(setups)):
                name, fn, processes, threads = setups[(k + r) % len(setups)]
                runs[preset][name].append(fn(preset, processes, threads, steps, 5 if preset == "mlp" else 3))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)

    def median_run(results: list[dict]) -> dict:
        middle = sorted(results, key=lambda x: x["samples_per_s"])[len(results) // 2]
        return {**middle, "samples_per_s": statistics.median(x["samples_per_s"] for x in results),
                "step_ms": statistics.median(x["step_ms"] for x in results),
                "all_samples_per_s": [round(x["samples_per_s"], 1) for x in results]}

    measured = {preset: {name: median_run(res) for name, res in by.items()} for preset, by in runs.items()}
    sweep = [pt for preset in PRESETS for run in runs[preset]["chainrule_2x1"] for pt in run["allreduce_sweep"]]
    alpha, byte_time = fit_alpha_beta(sweep)
    check = {}
    for preset in PRESETS:
        predicted = step_seconds(profiles[preset], GLOBAL_BATCH // 2, 2, alpha, byte_time)["total"]
        check[preset] = {"predicted_ms": 1e3 * predicted, "measured_ms": measured[preset]["chainrule_2x1"]["step_ms"]}
    res = {
        "machine": cpu_model(), "python": platform.python_version(), "versions": versions(), "started": started,
        "rounds": args.rounds,
        "global_batch": GLOBAL_BATCH, "measured": measured, "profiles": profiles,
        "local_alpha_s": alpha, "local_byte_s": byte_time, "model_check": check, "model": model_tables(profiles),
        "assumptions": [
            "One rank per node, computing as one core of this machine does (the measured 1-thread profile).",
            f"Latency alpha = {1e6 * ALPHA_NETWORK:.0f} us per message (MPI over TCP);",
            f"{100 * LINK_EFFICIENCY:.0f}% of the line rate for the data.",
            "Each gradient bucket (256 KB or more, whole layers) is summed by a ring allreduce or by recursive",
            "doubling, whichever is faster, one bucket after another, each starting once backward has made it",
            "ready; only what outlasts backward adds to the step. Batch norm's sums (cnn) are blocking, on the",
            "critical path. No stragglers, no contention with other jobs, compute unchanged by communication.",
            f"Weak scaling: {WEAK_PER_RANK} examples per rank; strong scaling: a global batch of",
            f"{STRONG_GLOBAL_BATCH} (efficiency against one rank doing all of it).",
        ],
    }
    if args.lr_epochs:
        res["lr_scaling"] = lr_scaling(args.lr_epochs, args.lr_warmup_epochs)
    atomic_write_bytes(args.out, json.dumps(res, indent=2).encode())
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
