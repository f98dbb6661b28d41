"""Started by test_distributed.py, under mpirun or alone: one epoch of `fit` on a slice of real MNIST
with a digits preset (its layers, optimizer, augmentation), as many processes as mpirun gives.

    python tests/mpi_fit_worker.py PRESET TRAIN_IMAGES BATCH OPTIMIZER OUT.npz

OPTIMIZER is "preset" (the preset's own, Adam), "sgd" (SGD with momentum 0.9, lr 0.05) or
"sgd-weighted" (that SGD, and a CrossEntropy whose class weights go from 0.1 for 0 to 1.0 for 9).

Rank 0 writes OUT.npz: the weights and layer buffers, the epoch's logs, and whether every rank
ended with exactly the same weights.
"""

from __future__ import annotations

import json
import sys
import zlib

import numpy as np

import chainrule as cr
from chainrule.apps import image_presets
from chainrule.data.mnist import load_mnist
from chainrule.distributed import world


def main(preset_name: str, train_images: int, batch_size: int, optimizer_name: str, out: str) -> None:
    w = world()
    images, labels = load_mnist("train")
    preset = image_presets.PRESETS["mnist"][preset_name]
    metadata = {"preprocessing": image_presets.preprocessing_metadata(preset)}
    x, y = image_presets.model_inputs(images[:train_images], metadata), labels[:train_images].astype(np.int64)
    model = image_presets.build_model(image_presets.PRESETS["mnist"][preset_name], 10, seed=0)
    if optimizer_name.startswith("sgd"):
        optimizer = cr.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        optimizer = preset.optimizer(model.parameters(), preset.lr)
    loss = cr.CrossEntropy(np.linspace(0.1, 1.0, 10)) if optimizer_name == "sgd-weighted" else preset.loss()
    history = cr.fit(model, x, y, loss, optimizer, epochs=1, batch_size=batch_size, validation_split=1 / 12,
                     augment=preset.augment, verbose=False, seed=0, world=w)
    checksums = w.allgather(zlib.crc32(model.flat_params.tobytes()))
    if w.rank == 0:
        state = model.state()
        np.savez(out, **state, logs=np.frombuffer(json.dumps(history.epochs[-1]).encode(), np.uint8),
                 same_on_every_rank=np.array(len(set(checksums)) == 1), ranks=np.array(w.size))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
