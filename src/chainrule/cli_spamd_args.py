"""The command line of `chainrule spam daemon MODEL`: its arguments, and the options they make.

`add_daemon_arguments(parser)` fills in an argparse (sub)parser; `options_from_args(args)` turns
the parsed arguments into the daemon's `DaemonOptions`; `main(argv)` runs the daemon on its own,
as `python -m chainrule.cli_spamd_args MODEL [options]`, with the CLI's error boundary (one line,
exit code 2, no traceback) and log lines on standard error.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from chainrule.apps.spamd import DEFAULT_PORT, DaemonOptions, run_daemon
from chainrule.data.mail import MAX_BYTES
from chainrule.errors import UserError


def listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT, or :PORT / PORT (on 127.0.0.1), as spamd's --listen takes them."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port from 0 to 65535, got {text!r}")
    return host, int(port)


def ip_networks(text: str) -> list[str]:
    """A comma-separated list of addresses or networks (127.0.0.1, 192.168.0.0/16, ::1)."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected IP addresses or networks such as 192.168.0.0/16, "
                                             f"got {item!r}") from None
        out.append(item)
    return out


def octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"expected an octal file mode such as 0660, got {text!r}")
    return mode


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value
    return parse


def add_daemon_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model directory written by `chainrule spam train`")
    p.add_argument("--listen", action="append", type=listen_address, metavar="HOST:PORT",
                   help=f"address to listen on, repeatable (default 127.0.0.1:{DEFAULT_PORT}, unless --socket "
                   "is given alone); port 0 picks a free one")
    p.add_argument("--socket", type=Path, metavar="PATH", help="also (or only) listen on this Unix socket")
    p.add_argument("--socket-mode", type=octal_mode, default=0o666, metavar="MODE",
                   help="file mode of the Unix socket (default 0666: every local user, like a TCP port on "
                   "127.0.0.1)")
    p.add_argument("--allowed-ips", "-A", action="append", type=ip_networks, metavar="LIST",
                   help="comma-separated addresses or networks that may connect over TCP, repeatable "
                   "(default 127.0.0.1,::1)")
    p.add_argument("--allow-tell", action="store_true",
                   help="accept TELL (spamc -L spam|ham|forget): learning from what users report")
    p.add_argument("--user-models", type=Path, metavar="DIR",
                   help="per-user models: DIR/USER/ is used for spamc's User (-u), when it exists")
    p.add_argument("--max-size", type=positive(int), default=MAX_BYTES, metavar="BYTES",
                   help=f"larger messages are passed back unchecked (default {MAX_BYTES})")
    p.add_argument("--max-connections", type=positive(int), default=64, metavar="N",
                   help="connections served at once; more wait for a free place (default 64)")
    p.add_argument("--read-timeout", type=positive(float), default=30.0, metavar="SECONDS",
                   help="time a client has to send its whole request (default 30)")
    p.add_argument("--timeout", type=positive(float), default=300.0, metavar="SECONDS",
                   help="time a connection may take in all (default 300)")
    p.add_argument("--reload-interval", type=float, default=5.0, metavar="SECONDS",
                   help="look for a changed model file this often and reload it (default 5; 0: only on SIGHUP)")
    p.add_argument("--threads", type=positive(int), default=2, help="classification threads (default 2)")
    p.add_argument("--spam-cutoff", type=float, help="P(spam) at or above which a message is spam "
                   "(default: the model's)")
    p.add_argument("--ham-cutoff", type=float, help="P(spam) below which a message is ham (default: the model's)")


def options_from_args(args: argparse.Namespace) -> DaemonOptions:
    allowed = [net for group in args.allowed_ips for net in group] if args.allowed_ips else ["127.0.0.1", "::1"]
    return DaemonOptions(
        model=Path(args.model), listen=args.listen or [], socket=args.socket, socket_mode=args.socket_mode,
        allowed_ips=allowed, allow_tell=args.allow_tell, user_models=args.user_models, max_size=args.max_size,
        max_connections=args.max_connections, read_timeout=args.read_timeout, timeout=args.timeout,
        reload_interval=args.reload_interval, threads=args.threads, spam_cutoff=args.spam_cutoff,
        ham_cutoff=args.ham_cutoff)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chainrule spam daemon",
                                     description="serve the spam filter over spamd's protocol, for spamc")
    add_daemon_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s chainrule-spamd[%(process)d]: %(message)s")
    try:
        return run_daemon(options_from_args(args))
    except UserError as exc:
        print(f"chainrule: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
