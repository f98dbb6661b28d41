"""Labelled messages for training and evaluation, read from mail corpora and SMS files
(`labelled_messages`, `collect`), the text messages of SMS files or standard input, a line each
(`sms_lines`), and messages in batches that fit in memory (`batches`)."""

from __future__ import annotations

import contextlib
import hashlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import numpy as np

from chainrule.data.corpora import MAX_BYTES, read_messages, read_sms, readable, stdin_problem, text_lines
from chainrule.data.mime import decode_text
from chainrule.distributed import World
from chainrule.errors import DataError, UserError

T = TypeVar("T")

# `spam classify` and `spam evaluate` score messages in batches of at most BATCH_MESSAGES, closed as
# well once they hold BATCH_BYTES: room for 256 messages of the default --max-bytes (1 MiB), as many
# as `map_chunks` spreads over the cores.
BATCH_MESSAGES = 4096
BATCH_BYTES = 256 << 20

Item = tuple[str, bytes | str]  # ("mail", raw bytes) or ("sms", text), as `featurize` reads them


def labelled_messages(corpora: list[str], sms: list[str] | None = None, labelled: bool = True,
                      max_bytes: int = MAX_BYTES, label: int | None = None,
                      on_problem: Callable[[str, str], None] | None = None) -> Iterator[tuple[Item, str, int]]:
    """(item for `featurize`, source, label) of each message of mail corpora and SMS files, one at
    a time, as they are read.

    A message that cannot be read (a missing file, a damaged archive) is skipped, and
    `on_problem(source, reason)` is called with it if given, so that a run over a large corpus
    goes on and the caller decides how to report it. With `labelled`, a message whose label
    cannot be told from its path is a user error; without, its label is -1.
    """
    for msg in readable(read_messages(corpora, max_bytes=max_bytes, label=label), on_problem):
        if labelled and msg.label is None:
            raise UserError(f"{msg.source}: cannot tell whether it is spam or ham "
                            "(put messages under folders named for what they are, such as spam/ and ham/)")
        yield ("mail", msg.data), msg.source, -1 if msg.label is None else msg.label
    for path in sms or []:
        try:
            texts, labels = read_sms(path, max_bytes)
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        for i, (text, y) in enumerate(zip(texts, labels, strict=True)):
            yield ("sms", text), f"{path}:{i + 1}", y


def collect(corpora: list[str], sms: list[str] | None = None, labelled: bool = True,
            max_bytes: int = MAX_BYTES, label: int | None = None,
            on_problem: Callable[[str, str], None] | None = None) -> tuple[list, list[str], np.ndarray]:
    """(items for `featurize`, sources, labels) of all the messages `labelled_messages` reads."""
    found = list(labelled_messages(corpora, sms, labelled, max_bytes, label, on_problem))
    return ([item for item, _, _ in found], [source for _, source, _ in found],
            np.asarray([y for _, _, y in found], np.int64))


def batches(messages: Iterable[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """`messages` in lists of at most BATCH_MESSAGES, each closed as well by the message that takes
    the bytes it holds (`size` of each) to BATCH_BYTES: scored a batch at a time, a corpus of any
    size is held in memory one batch at a time, whatever the size of its messages."""
    batch: list[T] = []
    held = 0
    for message in messages:
        batch.append(message)
        held += size(message)
        if len(batch) == BATCH_MESSAGES or held >= BATCH_BYTES:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def sms_lines(paths: list[str], max_bytes: int, on_problem: Callable[[str, str], None]) -> Iterator[tuple[str, str]]:
    """(source "path:line", text) of every non-blank line of the SMS files ('-': standard input),
    a text message each; a file that cannot be opened goes to `on_problem(source, reason)`."""
    for path in paths:
        if path == "-" and (problem := stdin_problem()):
            on_problem("-", problem)
            continue
        try:
            stream = contextlib.nullcontext(sys.stdin.buffer) if path == "-" else open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            on_problem(path, exc.strerror or str(exc))
            continue
        with stream as f:  # (read and decoded as `read_sms` reads the collections trained on)
            try:
                for lineno, line in text_lines(f, max_bytes):
                    yield f"{path}:{lineno}", decode_text(line, "utf-8")
            except DataError as exc:  # (not text)
                on_problem(path, str(exc))


def check_same_on_every_rank(items: list, labels: np.ndarray, world: World) -> None:
    """Under mpirun every rank reads the corpus itself, and the ranks hash their shares of it and
    put the rows together in rank 0's order, beside rank 0's labels: raise DataError if they did not
    all read the same messages with the same labels (a Maildir that changed while they started)."""
    if world.size == 1:
        return
    digest = hashlib.sha256()
    for (kind, data), label in zip(items, labels, strict=True):
        data = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
        digest.update(f"{kind} {len(data)} {int(label)}\n".encode())
        digest.update(data)
    counts = world.differences(len(items), digest.hexdigest())
    if counts:
        raise DataError(f"the processes read different messages ({counts}; the same number may differ in what "
                        "they hold): was the corpus changing while they started? Train again")
