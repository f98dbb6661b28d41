"""Trainable parameters, and the one flat buffer they all live in.

A network with a million weights could store them as a few dozen separate arrays, and an optimizer
would then loop over them in Python. Instead we copy every parameter into *one* contiguous array and
let each layer keep a view (a window) into it. The same is done for the gradients. An optimizer step
is then a handful of whole-array NumPy operations, however many layers there are.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class Parameter:
    """A trainable array (`data`) and the gradient of the loss with respect to it (`grad`).

    Both are NumPy arrays of the same shape. After `pack`, they are views into flat buffers.
    """

    def __init__(self, data: np.ndarray):
        self.data = np.asarray(data)
        self.grad = np.zeros_like(self.data)
        self.packed = False  # views of a flat buffer (`bind`): then it belongs to that buffer's model

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.packed = False  # (unpickled, its arrays are its own; a model unpickled binds them again)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def size(self) -> int:
        return self.data.size

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.data.dtype})"


def pack(params: Sequence[Parameter], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Copy `params` into one flat data buffer and one flat gradient buffer; rebind them as views.

    Returns `(flat_data, flat_grad)`. Writing into `flat_data` changes every parameter at once,
    which is what lets an optimizer update the whole network with a few vector operations.
    """
    total = sum(p.size for p in params)
    flat_data = np.empty(total, dtype=dtype)
    flat_grad = np.empty(total, dtype=dtype)
    bind(params, flat_data, flat_grad)
    return flat_data, flat_grad


def bind(params: Sequence[Parameter], flat_data: np.ndarray, flat_grad: np.ndarray) -> None:
    """Copy the values and gradients of `params`, in order, into the flat buffers, and rebind them
    as views of those (a model coming back from pickle has its buffers and its parameters as
    separate arrays: its own buffers stay, and whatever else holds them, an optimizer, say)."""
    offset = 0
    for p in params:
        n = p.size
        flat_data[offset : offset + n] = p.data.ravel()
        flat_grad[offset : offset + n] = p.grad.ravel()
        p.data = flat_data[offset : offset + n].reshape(p.shape)
        p.grad = flat_grad[offset : offset + n].reshape(p.shape)
        p.packed = True
        offset += n


def same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two flat arrays are the same memory (the same array, or another array object over
    it, as a model unpickled with pickle protocol 5 has)."""
    return a.size == b.size and a.dtype == b.dtype and _address(a) == _address(b)


def flat_buffers(params: Sequence[Parameter]) -> tuple[np.ndarray, np.ndarray]:
    """The flat (data, grad) buffers behind `params`, packing them first if they are not packed yet.

    Parameters that a `Sequential` packed are views of one buffer, in order; we recover it from
    the first view's base, or the stretch of it they fill (one layer's parameters, or consecutive
    layers'). Loose parameters (a layer of no model, a user's own list) get packed here. Packing
    parameters that already live in a model's buffer would move them out of it (the model would
    save, checkpoint and restore values its layers no longer use), so that is refused.
    """
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if not any(p.packed for p in params):
        return pack(params, dtype=params[0].data.dtype)
    base, grad_base = params[0].data.base, params[0].grad.base
    if base is not None and grad_base is not None and base.ndim == 1 and grad_base.ndim == 1 \
            and all(p.data.base is base and p.grad.base is grad_base for p in params):
        start, grad_start = _offset(params[0].data, base), _offset(params[0].grad, grad_base)
        offset = 0
        for p in params:
            if _offset(p.data, base) != start + offset or _offset(p.grad, grad_base) != grad_start + offset:
                break
            offset += p.size
        else:  # (a view of the whole buffer is the buffer itself)
            if offset == base.size and offset == grad_base.size:
                return base, grad_base
            return base[start : start + offset], grad_base[grad_start : grad_start + offset]
    raise ValueError("optimizer: these parameters are part of a model's flat buffer but are not one stretch of it "
                     "(give the parameters of one layer or of consecutive layers, in order, or all of them: "
                     "model.parameters())")


def _offset(view: np.ndarray, base: np.ndarray) -> int:
    """Where `view` starts in `base`, in elements."""
    return (_address(view) - _address(base)) // base.itemsize


def _address(a: np.ndarray) -> int:
    """Where `a`'s first element is in memory."""
    return a.__array_interface__["data"][0]
