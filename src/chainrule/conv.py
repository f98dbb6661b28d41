"""Convolutional layers: Conv2D, and max and average pooling.

Images are batches in NCHW order: (batch, channels, height, width), as in PyTorch.

A convolution slides small filters over the image and takes a dot product at every position.
Written as loops that is six nested loops; written as linear algebra it is *one* matrix product.
"im2col" copies every receptive field (the C·kh·kw input values a filter sees at one output
position) into a column of a matrix X_col, of shape (C·kh·kw, Ho·Wo·N) (positions first, the
image last: see `_im2col`). The filters, each flattened to a row, form W_mat of shape (O, C·kh·kw).
Then

    Y_mat = W_mat · X_col + b        (O, Ho·Wo·N): every filter at every position of every image

and the backward pass is the matrix calculus of that product, exactly as for `Linear`:

    dL/dW_mat = dY_mat · X_colᵀ      (each filter weight: its input values times the errors)
    dL/db     = Σ_positions dY_mat
    dL/dX_col = W_matᵀ · dY_mat      (then "col2im" adds each column back to where it came from)

One big matrix product is what BLAS does best; what costs time around it is the copying, which
Conv2D's private helpers `_im2col` and `_col2im` do in a memory order chosen for speed (explained
next to them).
"""

from __future__ import annotations

import functools

import numpy as np

from chainrule.checks import flag, positive_int
from chainrule.layers import Layer, checked_init, init_std
from chainrule.parallel import blas_controller, by_outer_axis, in_parts
from chainrule.parameter import Parameter


def _pair(layer: str, name: str, value, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints -> (height, width), each checked to be >= `minimum`."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(values) != 2:
        raise ValueError(f"{layer}: {name} must be an integer or a pair of integers, got {value!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{layer}: {name} must be an integer >= {minimum} (or a pair), got {value!r}")
    return int(values[0]), int(values[1])


def _plain(pair: tuple[int, int]):
    """A pair written back for `config()`: an int when both sides agree, else a list (JSON-able)."""
    return pair[0] if pair[0] == pair[1] else list(pair)


def _out_size(size: int, kernel: int, stride: int, padding: int, layer: str) -> int:
    out = (size + 2 * padding - kernel) // stride + 1
    if out < 1:
        raise ValueError(f"{layer}: a {kernel}-wide kernel does not fit an input of size {size} "
                         f"(padding {padding})")
    return out


def _check_images(layer: str, x: np.ndarray, channels: int | None = None) -> None:
    if x.ndim != 4:
        raise ValueError(f"{layer}: expected a 4-D batch (N, C, H, W), got shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{layer}: expected {channels} input channels, got shape {x.shape}")


class Conv2D(Layer):
    """2-D convolution (strictly, cross-correlation, as in every deep-learning library).

    y[n, o, r, c] = b[o] + Σ_{ch, i, j} W[o, ch, i, j] · x_pad[n, ch, r·s + i, c·s + j]

    Each of the `out_channels` filters is a small (in_channels, kh, kw) pattern detector applied at
    every position; its output channel is a map of where the pattern occurs. Sharing one filter
    over the whole image is what makes the layer cheap in parameters and tolerant to shifts.

    Args:
        in_channels: channels of the input (1 for grey-scale digits).
        out_channels: number of filters.
        kernel_size: filter height and width (an int, or a pair).
        stride: step between output positions (an int or a pair).
        padding: zeros added on every side (an int or a pair); kernel_size // 2 with stride 1
            keeps the height and width ("same" padding for odd kernels).
        bias: learn one additive bias per filter.
        init: "he" (Var(W) = 2 / fan_in, for ReLU networks) or "glorot" (2 / (fan_in + fan_out)),
            with fan_in = in_channels·kh·kw and fan_out = out_channels·kh·kw.

    Shape: x (N, in_channels, H, W) -> y (N, out_channels, Ho, Wo), with
    Ho = (H + 2·padding - kh) // stride + 1 (likewise Wo). The weight has PyTorch's layout
    (out_channels, in_channels, kh, kw), so `weight.data[:, 0]` are the first-layer filters as images.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, init: str = "he"):
        super().__init__()
        self.in_channels = positive_int("Conv2D", "in_channels", in_channels)
        self.out_channels = positive_int("Conv2D", "out_channels", out_channels)
        self.kernel_size = _pair("Conv2D", "kernel_size", kernel_size)
        self.stride = _pair("Conv2D", "stride", stride)
        self.padding = _pair("Conv2D", "padding", padding, minimum=0)
        self.init = checked_init("Conv2D", init)
        bias = flag("Conv2D", "bias", bias)
        kh, kw = self.kernel_size
        self.weight = Parameter(np.zeros((self.out_channels, self.in_channels, kh, kw), np.float32))
        self.params["weight"] = self.weight
        self.bias = None
        if bias:
            self.bias = Parameter(np.zeros(self.out_channels, np.float32))
            self.params["bias"] = self.bias
        self.initialize(np.random.default_rng())
        self._scratch: dict[str, np.ndarray] = {}
        self._cols = self._x_shape = None

    @classmethod
    def array_shapes(cls, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, init="he"):
        c_in = positive_int("Conv2D", "in_channels", in_channels)
        c_out = positive_int("Conv2D", "out_channels", out_channels)
        kh, kw = _pair("Conv2D", "kernel_size", kernel_size)
        weight = (c_out, c_in, kh, kw)
        return ({"weight": weight, "bias": (c_out,)} if bias else {"weight": weight}), {}

    def initialize(self, rng):
        kh, kw = self.kernel_size
        std = init_std(self.init, self.in_channels * kh * kw, self.out_channels * kh * kw)
        self.weight.data[...] = rng.normal(0.0, std, self.weight.shape)
        if self.bias is not None:
            self.bias.data[...] = 0.0

    def forward(self, x, training=False):
        _check_images("Conv2D", x, self.in_channels)
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = _out_size(h, kh, sh, ph, "Conv2D"), _out_size(w, kw, sw, pw, "Conv2D")
        # X_col, and with a bias one more row of X_col, all ones, and one more column of W_mat, b:
        # then the product adds the bias, and in backward dY_mat · X_colᵀ yields dL/db as its last
        # column, which saves a pass over the output in each direction.
        cols = self._im2col(x, ho, wo)
        weight = self.weight.data.reshape(self.out_channels, c * kh * kw)
        if self.bias is not None:
            weight = np.concatenate([weight, self.bias.data[:, None]], axis=1)
        y = _times(weight, cols)  # Y_mat = W_mat · X_col + b, (O, Ho·Wo·N): the one product
        self._cols, self._x_shape = cols, x.shape
        # Y_mat's columns run (row, column, image): an NCHW view of it needs no copy (see _im2col)
        return y.reshape(self.out_channels, ho, wo, n).transpose(3, 0, 1, 2)

    def backward(self, grad_out):
        n, c, h, w = self._cached(self._x_shape)
        kh, kw = self.kernel_size
        _, o, ho, wo = grad_out.shape
        # dY_mat (O, Ho·Wo·N); a free view when grad_out has this layer's own memory order
        g = grad_out.transpose(1, 2, 3, 0).reshape(o, ho * wo * n)
        # dL/dW_mat = dY_mat · X_colᵀ ; dL/db = Σ_positions dY_mat (the ones row's column, see forward)
        both = _times_transposed(g, self._cols)
        if self.bias is None:
            self.weight.grad.reshape(o, -1)[...] = both
        else:
            self.weight.grad.reshape(o, -1)[...] = both[:, :-1]
            self.bias.grad[...] = both[:, -1]
        if not self.needs_input_grad:
            return None
        # dL/dX_col = W_matᵀ · dY_mat, then col2im adds each column back to where it came from
        dcols = self._buffer("dcols", (c * kh * kw, ho * wo * n), g.dtype)
        np.matmul(self.weight.data.reshape(o, -1).T, g, out=dcols)
        return self._col2im(dcols, ho, wo)

    # Memory layout. X_col is built with one copy per kernel offset (i, j), each a whole-batch
    # strided view, and col2im is the same loop with `+=` (much faster than scattering with
    # `np.add.at`). NumPy runs such a copy one innermost stretch of contiguous memory at a time, and
    # pays a fixed cost per stretch. In NCHW memory a stretch is one output row, Wo values (10 in
    # LeNet-5's second layer), and that overhead, not the bytes, is most of the work. So internally
    # the batch axis comes *last*: images are held as (C, H, W, N). A kernel offset then shifts whole
    # (W, N) planes, and each stretch is Wo·N values long (1,280 there, for a batch of 128). X_col's
    # columns come out ordered (row, column, image), so the product's output (O, Ho·Wo·N) is already
    # a (C, H, W, N) array: the layer returns it as an NCHW view without a copy
    # (`y.transpose(3, 0, 1, 2)`), element-wise layers keep that memory order, and the next
    # convolution or pooling layer finds its batch innermost again.

    def _im2col(self, x: np.ndarray, ho: int, wo: int) -> np.ndarray:
        """X_col of the batch `x`: cols[ch, i, j, r, q, n] = x_pad[n, ch, r·sh + i, q·sw + j] as a
        (C·kh·kw, Ho·Wo·N) matrix, plus the row of ones when there is a bias (a reused buffer)."""
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dtype = np.result_type(x.dtype, self.weight.data.dtype)
        # (C, Hp, Wp, N): the batch innermost. The border of this buffer is zeroed once and never
        # written: only the middle changes.
        xp = self._buffer("padded", (c, h + 2 * ph, w + 2 * pw, n), dtype, zero=True)
        k = c * kh * kw
        buf = self._buffer("cols", (k + (self.bias is not None), ho * wo * n), dtype)
        cols = buf[:k].reshape(c, kh, kw, ho, wo, n)

        # both copies a range at a time, on every core (see in_parts): of channels, then of offsets
        def pad(_, lo, hi):
            xp[lo:hi, ph : ph + h, pw : pw + w] = x[:, lo:hi].transpose(1, 2, 3, 0)

        def copy_offsets(_, lo, hi):
            for i, j in (divmod(offset, kw) for offset in range(lo, hi)):
                cols[:, i, j] = _planes(xp, i, j, ho, wo, sh, sw)

        in_parts(pad, c, x.size)
        in_parts(copy_offsets, kh * kw, k * ho * wo * n)
        if self.bias is not None:
            buf[k] = 1
        return buf

    def _col2im(self, dcols: np.ndarray, ho: int, wo: int) -> np.ndarray:
        """dL/dx from dL/dX_col: every column entry is added back onto the input pixel it was copied
        from (pixels seen by several kernel offsets collect several terms). Returns NCHW."""
        n, c, h, w = self._x_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dcols = dcols.reshape(c, kh, kw, ho, wo, n)
        dxp = np.zeros((c, h + 2 * ph, w + 2 * pw, n), dcols.dtype)  # fresh: its middle is returned

        # a range of channels at a time, on every core (see in_parts); not of offsets, whose
        # windows overlap: two threads would add to one pixel at once
        def add_back(_, lo, hi):
            for i in range(kh):
                for j in range(kw):
                    _planes(dxp[lo:hi], i, j, ho, wo, sh, sw)[...] += dcols[lo:hi, i, j]

        in_parts(add_back, c, dcols.size)
        return dxp[:, ph : ph + h, pw : pw + w].transpose(3, 0, 1, 2)

    def _buffer(self, name: str, shape: tuple[int, ...], dtype, zero: bool = False) -> np.ndarray:
        """A scratch array reused from batch to batch (allocating and page-faulting a fresh
        multi-megabyte array every call costs about as much as filling it)."""
        buf = self._scratch.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.zeros(shape, dtype) if zero else np.empty(shape, dtype)
            self._scratch[name] = buf
        return buf

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D: expects examples of shape ({self.in_channels}, H, W), "
                             f"but receives shape {tuple(input_shape)}")
        _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (self.out_channels, _out_size(h, kh, sh, ph, "Conv2D"), _out_size(w, kw, sw, pw, "Conv2D"))

    def scratch_size(self, input_shape):
        _, ho, wo = self.output_shape(input_shape)
        kh, kw = self.kernel_size
        return (self.in_channels * kh * kw + (self.bias is not None)) * ho * wo  # X_col's columns

    def config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": _plain(self.kernel_size),
            "stride": _plain(self.stride),
            "padding": _plain(self.padding),
            "bias": self.bias is not None,
            "init": self.init,
        }

    def __getstate__(self):
        # deepcopy/pickle need not carry the scratch buffers (megabytes of stale data)
        state = self.__dict__.copy()
        state["_scratch"], state["_cols"] = {}, None  # _cols is a view of a scratch buffer
        return state


# Products with few rows, in pieces. On SkylakeX-family cores (AVX-512) NumPy's OpenBLAS has a
# "direct" kernel for products of up to about 2²⁰ multiply-adds, which skips packing the operands;
# larger ones go to its general kernel, whose blocking suits operands with few rows badly. A long
# product with few rows is then faster cut into pieces of at most that size. Other kernels (AVX2's
# Haswell, for one) have no such path: there the pieces only add calls, and products stay whole.
_DIRECT_KERNEL_CORES = {"skylakex", "cooperlake", "sapphirerapids"}
_DIRECT_KERNEL_MACS = 1 << 20


@functools.cache
def _direct_kernel() -> bool:
    """Whether NumPy's BLAS is OpenBLAS running SkylakeX-family kernels (asked once, of threadpoolctl)."""
    blas = blas_controller()
    return blas is not None and any(
        lib.internal_api == "openblas" and str(getattr(lib, "architecture", "")).lower() in _DIRECT_KERNEL_CORES
        for lib in blas.lib_controllers)


def _piece(macs_per_column: int) -> int:
    """Columns per piece: the largest power of 2 whose product stays within the direct kernel's
    reach, at least 1,024."""
    return 1 << max(10, (_DIRECT_KERNEL_MACS // macs_per_column).bit_length() - 1)


def _times(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a · b for a (m, k) with few rows and b (k, N) with many columns: a convolution's W_mat · X_col.

    Equivalent to `a @ b`, a piece of columns at a time where the direct kernel exists and a has
    fewer rows than the general kernel's 16-row blocks: LeNet-5's first layer, (6, 26) · (26,
    100,352) for a batch of 128, takes ~1.7 ms whole and ~0.8 ms in pieces of 4,096 columns.
    """
    m, k = a.shape
    n = b.shape[1]
    piece = _piece(m * k)
    if m >= 16 or n < 4 * piece or not _direct_kernel():
        return a @ b
    out = np.empty((m, n), np.result_type(a, b))
    for start in range(0, n, piece):
        np.matmul(a, b[:, start : start + piece], out=out[:, start : start + piece])
    return out


def _times_transposed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a · bᵀ for a (m, K) and b (n, K) whose shared axis K is long: a convolution's dY_mat · X_colᵀ.

    Equivalent to `a @ b.T`, summed over K in pieces where m and n are small and the direct kernel
    exists: LeNet-5's first layer, (6, 100,352) · (100,352, 26) for a batch of 128, takes ~3 ms as
    one product and ~1 ms as 25 products of 4,096 columns added up (the `cnn` preset's first layer:
    4.3 -> 2.8 ms).

    A product taken whole has the longer of its two short sides first: (b · aᵀ)ᵀ when b has more
    rows. The result is the same, and OpenBLAS partitions and packs the work better that way round:
    LeNet-5's second layer, (16, 12,800) · (12,800, 151), takes 0.5 ms instead of 1.0, the `cnn`
    preset's second, (64, 25,088) · (25,088, 288), 4.0 ms instead of 5.5.
    """
    m, k = a.shape
    n = b.shape[0]
    piece = _piece(m * n)
    if m * n > 2048 or k < 4 * piece or not _direct_kernel():  # (where the one product was as fast or faster)
        return (b @ a.T).T if n > m else a @ b.T
    out = a[:, :piece] @ b[:, :piece].T
    for start in range(piece, k, piece):
        out += a[:, start : start + piece] @ b[:, start : start + piece].T
    return out


def _planes(a: np.ndarray, i: int, j: int, n_h: int, n_w: int, sh: int, sw: int) -> np.ndarray:
    """For a batch-last (C, H, W, N) array, the view a[:, i + sh·r, j + sw·c, :] for r < n_h,
    c < n_w: what kernel offset (i, j) sees at every output position of every image. With stride 1
    across, each row of it is one contiguous stretch of n_w·N values."""
    return a[:, i : i + sh * (n_h - 1) + 1 : sh, j : j + sw * (n_w - 1) + 1 : sw]


def _window(a: np.ndarray, i: int, j: int, n_h: int, n_w: int, sh: int, sw: int) -> np.ndarray:
    """The view a[..., i + sh·r, j + sw·c] for r < n_h, c < n_w: what kernel offset (i, j) sees
    at every output position (a strided view, no copy)."""
    return a[..., i : i + sh * (n_h - 1) + 1 : sh, j : j + sw * (n_w - 1) + 1 : sw]


def _running_max(x: np.ndarray, k: int, axis: int, best: np.ndarray, won: np.ndarray) -> None:
    """best ← the max over each run of k neighbours along `axis` (2 or 3) of x, won ← which of the
    k won (`won`'s dtype: uint8 up to 256 neighbours; the first one on ties: a later neighbour must be
    strictly greater to take over).

    Works on strided views x[..., j::k], so it keeps x's memory order; the first comparison's
    boolean result is already the winner index (0 or 1), so no index array needs zeroing.
    """
    def nth(j):
        return x[:, :, j::k] if axis == 2 else x[..., j::k]

    if k == 1:
        best[...] = x
        won[...] = 0
        return
    np.greater(nth(1), nth(0), out=won.view(bool) if won.itemsize == 1 else won)  # strict: an earlier one keeps a tie
    np.maximum(nth(0), nth(1), out=best)
    for j in range(2, k):
        _take_greater(best, won, nth(j), j)


def _take_greater(best: np.ndarray, won: np.ndarray, view: np.ndarray, index: int,
                  better: np.ndarray | None = None) -> None:
    """A step of an arg-max over candidates taken in turn: where `view` is greater than `best`
    (strictly: an earlier candidate keeps a tie), best ← view and won ← `index`; `better`, if
    given, is scratch space, a bool array of best's shape. Equivalent to won[view > best] = index,
    then best ← max(best, view): as `index` exceeds every earlier one, won ← max(won, index·better),
    and arithmetic on the mask runs many times faster than a masked assignment."""
    better = np.greater(view, best, out=better)
    np.maximum(best, view, out=best)
    np.maximum(won, better * won.dtype.type(index), out=won)


def _index_dtype(k: int) -> type:
    """The smallest integer type for the index of one of k neighbours: uint8 for k <= 256."""
    return np.uint8 if k <= 256 else np.intp


class _Pool2D(Layer):
    """Shared by the pooling layers: a kernel_size window moved by `stride`, no padding.

    Both pools loop over the kh·kw offsets inside the window, each a whole-batch strided view,
    instead of materialising the (N, C, Ho, Wo, kh, kw) windows.
    """

    name = "Pool2D"

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = _pair(self.name, "kernel_size", kernel_size)
        self.stride = self.kernel_size if stride is None else _pair(self.name, "stride", stride)
        self._x = self._x_shape = None  # (the last input, MaxPool2D's, or its shape, AvgPool2D's)

    def _sizes(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        return _out_size(h, kh, sh, 0, self.name), _out_size(w, kw, sw, 0, self.name)

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expects examples of shape (C, H, W), "
                             f"but receives shape {tuple(input_shape)}")
        c, h, w = input_shape
        return (c, *self._sizes(h, w))

    def config(self):
        return {"kernel_size": _plain(self.kernel_size), "stride": _plain(self.stride)}


class MaxPool2D(_Pool2D):
    """Max pooling: each output is the largest value in its kh×kw window.

    y[n, c, r, q] = max_{i, j} x[n, c, r·s + i, q·s + j]

    It shrinks the feature maps and keeps only whether a feature occurred nearby, not exactly where.
    The max passes its gradient to the one input that won (the first, on ties, as PyTorch does);
    every other input of the window gets zero.

    Args:
        kernel_size: window height and width (an int or a pair).
        stride: step between windows; defaults to kernel_size (non-overlapping windows).

    Shape: (N, C, H, W) -> (N, C, (H - kh) // s + 1, (W - kw) // s + 1).
    """

    name = "MaxPool2D"

    def forward(self, x, training=False):
        _check_images(self.name, x)
        ho, wo = self._sizes(x.shape[2], x.shape[3])
        self._x = x
        if self.stride == self.kernel_size:
            return self._forward_non_overlapping(x, ho, wo)  # equivalent to the loop below, faster
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        # y = the max over the kh·kw offsets (i, j) of the window; `arg` remembers which one won
        out = _window(x, 0, 0, ho, wo, sh, sw).copy(order="K")
        arg = np.zeros_like(out, _index_dtype(kh * kw))
        better = np.empty_like(out, bool)
        for k in range(1, kh * kw):
            _take_greater(out, arg, _window(x, k // kw, k % kw, ho, wo, sh, sw), k, better)
        self._arg = arg
        return out

    def backward(self, grad_out):
        self._cached(self._x)
        if self.stride == self.kernel_size:
            return self._backward_non_overlapping(grad_out)  # equivalent to the loop below, faster
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        _, _, ho, wo = grad_out.shape
        # each window's gradient goes to the input at its winning offset, the others get 0
        dx = np.zeros_like(self._x, grad_out.dtype)  # zeros_like keeps the input's memory order
        for k in range(kh * kw):
            view = _window(dx, k // kw, k % kw, ho, wo, sh, sw)
            # overlapping windows share inputs, which then collect several gradients
            view += grad_out * (self._arg == k)
        return dx

    def winners(self) -> list[np.ndarray]:
        """Which input won each window in the last forward pass (as the arrays backward reads):
        what a gradient check watches to see whether a nudge moved a window's maximum."""
        return [self._row, self._col] if self.stride == self.kernel_size else [self._arg]

    def _forward_non_overlapping(self, x, ho, wo):
        """Non-overlapping windows: the max over a kh×kw block is the max over its rows of the
        max within each row, so take the max across each row's kw columns first, then across the
        kh rows: kh + kw whole-array passes instead of kh·kw, the second of them on contiguous rows.
        Remembering the winning column of every row and the winning row of every window, each the
        first on ties, picks the same input as PyTorch's row-major scan."""
        (kh, kw) = self.kernel_size
        x = x[:, :, : ho * kh, : wo * kw]
        # (N, C, ho·kh, wo): the max of each row's window part, then (N, C, ho, wo), each in x's
        # memory order; computed a range of images or channels at a time, on every core
        rows = np.empty_like(x[..., ::kw])
        out = np.empty_like(rows[:, :, ::kh])
        self._col = np.empty_like(rows, _index_dtype(kw))
        self._row = np.empty_like(out, _index_dtype(kh))

        def pool(x, rows, col, out, row):
            _running_max(x, kw, 3, rows, col)
            _running_max(rows, kh, 2, out, row)

        by_outer_axis(pool, x, rows, self._col, out, self._row, shared=2)  # images and channels
        return out

    def _backward_non_overlapping(self, grad_out):
        """The backward pass of `_forward_non_overlapping`: each window's gradient, spread over its
        kh×kw inputs, times a mask that is True at the window's winner (its winning row, and that
        row's winning column). Equivalent to
        dx[n, c, r·kh + i, q·kw + j] = grad_out[n, c, r, q] · (row[n, c, r, q] == i and col[n, c, r·kh + i, q] == j)."""
        kh, kw = self.kernel_size
        _, _, ho, wo = grad_out.shape
        # winner[n, c, r, i, q, j]: input (r·kh + i, q·kw + j) won window (r, q); a bool array in the
        # input's memory order, viewed with each window's rows and columns as axes of their own
        winner = _split_windows(np.empty_like(self._x[:, :, : ho * kh, : wo * kw], bool), kh, kw)
        col = self._col.reshape(*self._col.shape[:2], ho, kh, wo)  # winning column, per window row
        # `empty_like` keeps the input's memory order (batch-last after a Conv2D), and the gradient
        # is copied into that order too where it differs (after a Flatten): element-wise passes over
        # arrays of one layout run over long contiguous stretches, over mixed layouts element by
        # element. Non-overlapping windows write every input that lies in a window; only the rows and
        # columns left over at the bottom and right need zeros.
        dx = np.empty_like(self._x, grad_out.dtype)
        dx[:, :, ho * kh :] = 0
        dx[:, :, :, wo * kw :] = 0
        g = np.empty_like(self._row, grad_out.dtype)
        relayout = g.strides != grad_out.strides
        if not relayout:
            g = grad_out

        def spread(row, col, winner, grad_out, g, windows):  # a range of images or channels
            for i in range(kh):
                row_won = row == i
                for j in range(kw):
                    np.logical_and(row_won, col[:, :, :, i] == j, out=winner[:, :, :, i, :, j])
            if relayout:
                g[...] = grad_out
            # each window's gradient, broadcast over its kh rows and kw columns, where it won
            np.multiply(winner, g[:, :, :, None, :, None], out=windows)

        by_outer_axis(spread, self._row, col, winner, grad_out, g,
                      _split_windows(dx[:, :, : ho * kh, : wo * kw], kh, kw), shared=2)
        return dx


def _split_windows(a: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """The view of a (N, C, ho·kh, wo·kw) array as (N, C, ho, kh, wo, kw): splitting an axis never
    copies, whatever the strides."""
    n, c, h, w = a.shape
    return a.reshape(n, c, h // kh, kh, w // kw, kw)


class AvgPool2D(_Pool2D):
    """Average pooling: each output is the mean of its kh×kw window.

    y[n, c, r, q] = (1 / (kh·kw)) Σ_{i, j} x[n, c, r·s + i, q·s + j]

    Its gradient is shared equally: every input of a window receives dL/dy / (kh·kw).

    Args:
        kernel_size: window height and width (an int or a pair).
        stride: step between windows; defaults to kernel_size.

    Shape: (N, C, H, W) -> (N, C, (H - kh) // s + 1, (W - kw) // s + 1).
    """

    name = "AvgPool2D"

    def forward(self, x, training=False):
        _check_images(self.name, x)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ho, wo = self._sizes(x.shape[2], x.shape[3])
        # (an integer input's sums in floats: they would wrap round, and 1/(kh·kw) as an integer is 0)
        out = _window(x, 0, 0, ho, wo, sh, sw).astype(np.result_type(x.dtype, np.float32), order="K")
        for k in range(1, kh * kw):
            out += _window(x, k // kw, k % kw, ho, wo, sh, sw)
        out *= np.asarray(1.0 / (kh * kw), out.dtype)
        self._x_shape = x.shape
        return out

    def backward(self, grad_out):
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        _, _, ho, wo = grad_out.shape
        share = grad_out * np.asarray(1.0 / (kh * kw), grad_out.dtype)
        dx = np.zeros(self._cached(self._x_shape), grad_out.dtype)
        for k in range(kh * kw):
            _window(dx, k // kw, k % kw, ho, wo, sh, sw)[...] += share
        return dx
