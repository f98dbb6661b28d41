"""The errors chainrule raises on purpose, low in the house so that every module can use them.

Two families. A `UserError` is a problem with what the user asked for or gave us: a missing file,
a corrupt model, a bad option. The command line reports it in one line, with no traceback, and a
non-zero exit code; the web app answers it with a 4xx. Anything else that escapes is a bug.
`TrainingDiverged` is not the user's fault nor a bug: the maths blew up (a learning rate too large).
"""

from __future__ import annotations

import threading
import unicodedata

# `warnings.catch_warnings` swaps the process's warning filters and puts them back: two threads
# doing so at once (the web app decodes images on several) could leave one's filters in place.
# Ours take turns on this lock (Pillow's warnings as an image is decoded, matplotlib's as a figure
# is drawn).
WARNING_FILTERS = threading.Lock()


class UserError(Exception):
    """A problem with what the user asked for or gave us: reported in one line, no traceback."""


class DataError(UserError, ValueError):
    """A data set (MNIST files, a mail corpus, an image) is missing, corrupt or of the wrong kind."""


class ModelFileError(UserError, ValueError):
    """A model file is missing, corrupt, or not a chainrule model of the expected kind; or its
    weights, finite, are so large that the network's outputs overflow (`Sequential.checked_outputs`)."""


class TrainingDiverged(ArithmeticError):
    """The loss (`what`) became NaN or infinite, or, found at the end of an epoch (`batch` None),
    the gradients did (in the optimizer's moments), the weights, or the validation loss; the model
    holds the last weights that gave a finite loss.
    `loss` (the value), `epoch` and `batch` (counted from 1) and `lr` say where."""

    def __init__(self, loss: float, epoch: int, batch: int | None, lr: float, what: str = "the loss"):
        self.loss, self.epoch, self.batch, self.lr, self.what = loss, epoch, batch, lr, what
        super().__init__(f"{self.where()} (lr={lr:g}); kept the last weights with a finite loss — try a smaller "
                         "learning rate")

    def where(self) -> str:
        """E.g. "the loss became nan at epoch 2, batch 17"."""
        return f"{self.what} became {self.loss} at epoch {self.epoch}" + (
            f", batch {self.batch}" if self.batch is not None else "")

    def __reduce__(self):  # (pickled with its own arguments, not the message)
        return type(self), (self.loss, self.epoch, self.batch, self.lr, self.what)


def one_line(exc: BaseException) -> str:
    """An error in one line, as the command line and the daemon's log report it: an OS error with
    the file it names, else the message (or the exception's type), `printable`. Of another
    library's error, the first line of its message; ours are written as one line, so that a line
    break in one is in a name or a value it quotes, and cut there the message lost the rest."""
    if isinstance(exc, OSError) and exc.filename:
        return printable(f"{exc.filename}: {exc.strerror or exc}")
    if isinstance(exc, OSError) and exc.strerror:  # (str() would start with "[Errno 28]")
        return printable(exc.strerror)
    text = str(exc).strip()
    if text and not isinstance(exc, UserError):
        text = text.splitlines()[0]
    return printable(text) if text else type(exc).__name__


def printable(text: str) -> str:
    """`text` with what a terminal acts on or does not show written as Python writes it in a string
    (a line break as \\n, ESC as \\x1b, a right-to-left mark as \\u200f): a file name printed on a
    line keeps to it, and cannot clear the screen or colour what follows. Spaces, accents and
    other scripts stay as they are, and so does a backslash, so that a message printed within
    another is not escaped twice."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or unicodedata.category(c) == "Zs" else repr(c)[1:-1] for c in text)


def without_surrogates(text: str) -> str:
    """`text` as UTF-8 can carry it (JSON, a figure's title): a name Python read from bytes that are
    not UTF-8 (a folder's, in Latin-1: "donn\\xe9es") holds lone surrogates, which no UTF-8 has and
    matplotlib refuses; they are shown as U+FFFD where those bytes were."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # (a lone surrogate that no byte made: JSON's "\ud800", say)
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")
