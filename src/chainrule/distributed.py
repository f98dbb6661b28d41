"""Data parallelism over MPI: the processes of one job, and the gradient sum that keeps them in step.

`mpirun -np N chainrule ...` starts N copies of the same program, the *ranks* 0..N-1. In
data-parallel training every rank holds the whole network, computes the gradient of its own share
(shard) of each global batch, and the ranks add their gradients together, so that every rank then
takes the same optimizer step and the weights stay identical everywhere:

    g = Σ_r g_r,   g_r = (1/B) Σ_{i in shard r} ∇ℓ_i,   B the global batch size

which is exactly the gradient of the global batch's mean loss. Because every parameter gradient
lives in one flat buffer (`parameter.py`), the sum is one in-place `Allreduce` of that buffer.

Communication can also overlap the backward pass, as PyTorch's DistributedDataParallel does:
backward runs last layer first and the flat buffer is in layer order, so the last layers'
gradients, a suffix of the buffer, are final while the first layers are still being worked on.
`GradientBuckets` cuts the buffer into buckets at layer boundaries and starts a non-blocking
allreduce of each bucket as soon as its lowest layer's backward has run; `fit` waits for them
only before the optimizer step.

mpi4py is imported only in a process that an MPI launcher started among others (mpirun, srun, a
Kubernetes MPIJob): importing it initialises MPI. Anywhere else, `mpirun -np 1` included, `world()`
is `World()`, one process alone, whose collective operations do nothing, and mpi4py is never imported.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from chainrule.errors import UserError

# Set in the environment of the processes an MPI launcher starts: Open MPI's mpirun, PMIx
# launchers (Open MPI 5, Slurm's srun --mpi=pmix) and PMI-1/2 ones (MPICH's Hydra, srun --mpi=pmi2).
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE")


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process (read from the environment; imports nothing)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def launcher_rank() -> int:
    """This process's rank as the MPI launcher's environment says (0 when none started it), for
    what must be said before MPI is set up: a usage error, by rank 0 alone."""
    for name in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


class World:
    """The processes of one job; this base class is one process alone: rank 0 of 1.

    Every collective operation must be called by every rank, in the same order. Alone, each is
    the identity, so code written for N ranks runs unchanged in one process.
    """

    rank = 0
    size = 1
    local_size = 1  # ranks on this machine (this one included)

    def cores(self) -> int:
        """The cores this process may use for its own work: the machine's, shared among its ranks."""
        return max(1, (os.cpu_count() or 1) // self.local_size)

    def allreduce(self, buf: np.ndarray) -> np.ndarray:
        """Sum `buf` over the ranks, in place; returns `buf`."""
        return buf

    def iallreduce(self, buf: np.ndarray):
        """Start summing `buf` over the ranks in place, without waiting: a request to `wait()` for."""
        return _Done()

    def progress(self, requests: list) -> None:
        """Let pending non-blocking operations advance (MPI moves them on only inside MPI calls)."""

    def wait(self, requests: list) -> None:
        """Wait until every request of `requests` has completed."""

    def bcast(self, obj, root: int = 0):
        """`root`'s `obj`, on every rank."""
        return obj

    def bcast_array(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite `buf` with `root`'s, in place; returns `buf`."""
        return buf

    def scatter(self, objs: list | None, root: int = 0):
        """Rank r gets `objs[r]` of `root`'s list (`objs` matters on `root` only)."""
        return objs[0]

    def gather(self, obj, root: int = 0) -> list | None:
        """[rank 0's obj, rank 1's, ...] on `root`; None on the other ranks."""
        return [obj]

    def allgather(self, obj) -> list:
        """[rank 0's obj, rank 1's, ...] on every rank."""
        return [obj]

    def abort(self, code: int) -> None:
        """Stop every rank of the job at once with exit status `code` (alone: nothing to stop)."""

    def differences(self, count: int, digest: str) -> str | None:
        """None where every rank holds the same data (`count` items whose content hashes to
        `digest`), else the ranks' counts for an error ("rank 0: 12,000, rank 1: 6,000"). Every
        rank reads a data set itself; ranks that read different ones wait for each other for ever
        (their batch counts differ) or, with as many items, train a mix."""
        read = self.allgather((count, digest))
        if all(r == read[0] for r in read):
            return None
        return ", ".join(f"rank {rank}: {n:,}" for rank, (n, _) in enumerate(read))

    def shard(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """(start, stop) of this rank's (or `rank`'s) share of n items: contiguous, in rank order,
        sizes that differ by at most one. Shard r is [⌊n·r/N⌋, ⌊n·(r+1)/N⌋)."""
        r = self.rank if rank is None else rank
        return n * r // self.size, n * (r + 1) // self.size

    def broadcast_model(self, model) -> None:
        """Give every rank rank 0's weights, layer buffers and random generator (dropout masks)."""
        self.bcast_array(model.flat_params)
        for layer in model.layers:
            for buf in layer.buffers.values():
                self.bcast_array(buf)
        model.rng.bit_generator.state = self.bcast(model.rng.bit_generator.state)


class _Done:
    """The request of an operation that had nothing to wait for."""

    def wait(self) -> None:
        pass


class MPIWorld(World):
    """The ranks of an MPI communicator (`MPI.COMM_WORLD` for a job mpirun started)."""

    def __init__(self, comm, mpi):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.local_size = comm.Split_type(mpi.COMM_TYPE_SHARED).Get_size()  # the ranks sharing memory

    def allreduce(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf)  # the whole buffer, one call
        return buf

    def iallreduce(self, buf):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf)

    def progress(self, requests):
        if requests:
            self.MPI.Request.Testall(requests)

    def wait(self, requests):
        if requests:
            self.MPI.Request.Waitall(requests)

    def bcast(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def bcast_array(self, buf, root=0):
        self.comm.Bcast(buf, root=root)
        return buf

    def scatter(self, objs, root=0):
        return self.comm.scatter(objs, root=root)

    def gather(self, obj, root=0):
        return self.comm.gather(obj, root=root)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def abort(self, code):
        self.comm.Abort(code)


@functools.cache
def world() -> World:
    """The processes of this job: `MPIWorld(COMM_WORLD)` when an MPI launcher started this
    process among others, else `World()` (`mpirun -np 1` too: one process, nothing to share). The
    same object on every call (MPI is initialised once per process).

    Raises:
        UserError: a launcher started several processes but mpi4py is not installed (each would
            otherwise run the whole job on its own and overwrite the others' files).
    """
    if not launched_by_mpi() or (os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE")) == "1":
        return World()
    try:
        # Imported here, not at the top: importing mpi4py initialises MPI, which only a process
        # that a launcher started may do; everywhere else chainrule never imports it.
        from mpi4py import MPI
    except ImportError:
        raise UserError("started by an MPI launcher, but mpi4py is not installed: "
                        "pip install 'chainrule[mpi]'") from None
    return MPIWorld(MPI.COMM_WORLD, MPI)


class GradientBuckets:
    """The flat gradient buffer summed over the ranks in buckets, overlapping the backward pass.

    A bucket is a run of whole layers, contiguous in the flat buffer. Walking the layers from the
    last (where backward starts) to the first, a bucket is closed once it holds `bucket_bytes`;
    its allreduce starts when the backward of its lowest layer has run, since then every gradient
    in it is final. PyTorch's DDP does the same with 25 MB buckets; these networks are far smaller,
    so the buckets are too, or there would be only one.

    Use: `model.backward(grad, after_layer=buckets.layer_done)`, then `buckets.wait()` before the
    optimizer step.
    """

    def __init__(self, model, world: World, bucket_bytes: int = 256 * 1024):
        self.world, self.grads = world, model.flat_grads
        offsets = np.cumsum([0] + [sum(p.size for p in layer.parameters()) for layer in model.layers])
        self.starts: dict[int, tuple[int, int]] = {}  # lowest layer -> (start, stop) in the buffer
        stop = int(offsets[-1])
        limit = max(1, bucket_bytes // self.grads.itemsize)
        for i in range(len(model.layers) - 1, -1, -1):
            if offsets[i] == offsets[i + 1]:
                continue  # no parameters: nothing of this layer's in any bucket
            if stop - offsets[i] >= limit or offsets[i] == 0:
                self.starts[i] = (int(offsets[i]), stop)
                stop = int(offsets[i])
        self.requests: list = []

    def layer_done(self, i: int) -> None:
        """Layer i's backward has run: start the allreduce of the bucket it completes, if any, and
        let those already started advance."""
        if i in self.starts:
            start, stop = self.starts[i]
            self.requests.append(self.world.iallreduce(self.grads[start:stop]))
        self.world.progress(self.requests)

    def wait(self) -> None:
        """Wait until every bucket is summed (all of them must have been started)."""
        self.world.wait(self.requests)
        self.requests = []
