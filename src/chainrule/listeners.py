"""The servers' listening TCP sockets (`spam daemon`, `serve`), bound before either serves, so that a
taken port, an unknown host or a port below 1024 refused to this user is a one-line UserError."""

from __future__ import annotations

import errno
import os
import socket

from chainrule.errors import UserError


def tcp_listeners(host: str, port: int, backlog: int, every_address: bool = True) -> list[socket.socket]:
    """Non-blocking sockets listening on `host`:`port` (port 0: a free one, picked by the system).

    One on each address `host` has, as asyncio.start_server binds them (both of "localhost"'s
    where it has two), an IPv6 one taking IPv6 only beside its IPv4 twin; or, with `every_address`
    False, one on its first, as uvicorn binds its --host, taking what the system's default lets an
    IPv6 socket take (on Linux, an IPv6 wildcard takes IPv4 connections too).
    """
    listeners = []
    try:
        found = list(dict.fromkeys(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)))
        for family, kind, proto, _, address in found if every_address else found[:1]:
            sock = socket.socket(family, kind, proto)
            listeners.append(sock)
            if os.name != "nt":  # (on Windows, SO_REUSEADDR lets another process take the port)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if every_address and family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError as exc:  # (a getaddrinfo error too: "Name or service not known")
        for sock in listeners:
            sock.close()
        denied = exc.errno in (errno.EACCES, errno.EPERM) and 0 < port < 1024
        hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)" if denied else ""
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    for sock in listeners:
        sock.setblocking(False)
    return listeners
