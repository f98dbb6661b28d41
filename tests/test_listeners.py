"""The servers' listening sockets (`chainrule.listeners`); the servers refusing an address, as a user
on a port below 1024 among others, are tested in test_spam_daemon.py and test_web_server.py."""

import errno
import socket
from pathlib import Path

import pytest

from chainrule import listeners
from chainrule.errors import UserError
from chainrule.listeners import tcp_listeners


def test_a_port_that_cannot_be_bound_is_one_line_with_the_root_hint_only_for_a_low_port_refused(monkeypatch):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(UserError) as err:
            tcp_listeners("127.0.0.1", port, 8)
    assert str(err.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"

    class Refused(socket.socket):  # (as a user's bind of a port below 1024 is refused)
        def bind(self, address):
            raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(listeners.socket, "socket", Refused)
    for port, hint in ((783, " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"), (8783, "")):
        with pytest.raises(UserError) as err:
            tcp_listeners("127.0.0.1", port, 8)
        assert str(err.value) == f"cannot listen on 127.0.0.1:{port}: Permission denied{hint}"


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_one_socket_on_each_address_or_one_on_the_first(monkeypatch):
    """`spam daemon` listens on each address of its --listen host (both of a "localhost" that has
    two), the IPv6 one on IPv6 only; `serve`, as uvicorn, on the first, as the system makes an IPv6
    socket by default (on Linux, an IPv6 wildcard takes IPv4 as well)."""
    found = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
             (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
    real = socket.getaddrinfo
    monkeypatch.setattr(listeners.socket, "getaddrinfo",
                        lambda host, *args, **kwargs: found if host == "localhost" else real(host, *args, **kwargs))
    both = tcp_listeners("localhost", 0, 8)
    try:
        assert [s.getsockname()[0] for s in both] == ["::1", "127.0.0.1"]
        assert both[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        assert all(not s.getblocking() for s in both)
        with socket.create_connection(("127.0.0.1", both[1].getsockname()[1]), timeout=5):
            pass  # (listening: the connection waits in its queue)
    finally:
        for s in both:
            s.close()
    [first] = tcp_listeners("localhost", 0, 8, every_address=False)
    with first:
        assert first.getsockname()[0] == "::1"
    [wildcard] = tcp_listeners("::", 0, 8, every_address=False)
    with wildcard:
        default = Path("/proc/sys/net/ipv6/bindv6only")
        if default.exists():
            assert wildcard.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == int(default.read_text())
