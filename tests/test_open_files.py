"""A server's open-file limit (`chainrule.open_files`); the servers themselves under a low limit are
tested in test_spam_daemon.py and test_web_server.py."""

import errno
import logging
import os

from chainrule import open_files
from chainrule.open_files import AcceptFailures


def test_accept_failures_are_one_line_a_minute_with_their_count(caplog, monkeypatch):
    """asyncio logged a traceback for every accept that failed for want of a descriptor, hundreds a
    second, and uvloop nothing: here the first is one line, and the rest of each minute one more."""
    now = [1000.0]
    monkeypatch.setattr(open_files.time, "monotonic", lambda: now[0])
    failures = AcceptFailures(logging.getLogger("chainrule.test"), prefix="server: ")
    exc = OSError(errno.ENFILE, os.strerror(errno.ENFILE))
    with caplog.at_level(logging.WARNING, logger="chainrule.test"):
        for _ in range(560):  # eight a second for 70 s
            failures.failed(exc)
            now[0] += 0.125
    assert caplog.messages == [
        "server: cannot accept connections: Too many open files in system; clients wait until connections end",
        "server: cannot accept connections: Too many open files in system; clients wait until connections end; "
        "480 failed tries in the last 60 s",
    ]
