"""`chainrule spam daemon`: the spam filter as a spamd-protocol server, on the command line.

The server is `chainrule.apps.spam.daemon`; this module turns its options into `DaemonOptions`
and sets up the log (one line per message, as spamd's).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from pathlib import Path

from chainrule.apps.spam.daemon import DEFAULT_PORT, DaemonOptions, run_daemon
from chainrule.cli.options import add_cutoffs, nonnegative_float, positive_float, positive_int
from chainrule.data.corpora import MAX_BYTES
from chainrule.errors import UserError, printable
from chainrule.open_files import PER_CONNECTION


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
    if not out:  # (an empty list would refuse every TCP client, and spamc would then pass all mail)
        raise argparse.ArgumentTypeError("expected IP addresses or networks such as 192.168.0.0/16, got none")
    return out


def octal_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"expected an octal file mode such as 0660, got {text!r}")
    return mode


def add_command(sub) -> None:
    """`chainrule spam daemon`, among the `spam` subcommands `sub`."""
    p = sub.add_parser("daemon", help="serve the filter over spamd's protocol, for spamc, procmail, Postfix, "
                       "Exim and Dovecot", description="A long-running filter server that speaks SpamAssassin's "
                       "spamc/spamd protocol 1.5: Debian's spamc is its client. See deploy/README-spamd.md.")
    p.set_defaults(func=_cmd_daemon, prints=False, server=True)
    p.add_argument("model", help="model directory written by `chainrule spam train`")
    p.add_argument("--listen", action="append", type=listen_address, metavar="HOST:PORT",
                   help=f"address to listen on, repeatable (default 127.0.0.1:{DEFAULT_PORT}, unless --socket "
                   "is given alone); port 0 picks a free one")
    p.add_argument("--socket", type=Path, metavar="PATH", help="also (or only) listen on this Unix socket")
    p.add_argument("--socket-mode", type=octal_mode, metavar="MODE",
                   help="file mode of the Unix socket (default 0666: every local user, like a TCP port on "
                   "127.0.0.1)")
    p.add_argument("--allowed-ips", "-A", action="append", type=ip_networks, metavar="LIST",
                   help="comma-separated addresses or networks that may connect over TCP, repeatable "
                   "(default 127.0.0.1,::1)")
    p.add_argument("--allow-tell", action="store_true",
                   help="accept TELL (spamc -L spam|ham|forget): learning from what users report")
    p.add_argument("--user-models", type=Path, metavar="DIR",
                   help="per-user models: DIR/USER/ is used for spamc's User (-u), when it exists")
    p.add_argument("--max-size", type=positive_int, default=MAX_BYTES, metavar="BYTES",
                   help=f"larger messages are passed back unchecked (default {MAX_BYTES})")
    p.add_argument("--max-connections", type=positive_int, default=64, metavar="N",
                   help="connections served at once; more wait for a free place (default 64; each needs up to "
                   f"{PER_CONNECTION} open files, and the soft limit on them is raised to the hard one)")
    p.add_argument("--read-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="time a client has to send its whole request (default 30)")
    p.add_argument("--timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="time a connection may take in all (default 300)")
    p.add_argument("--reload-interval", type=nonnegative_float, default=5.0, metavar="SECONDS",
                   help="look for a changed model file this often and reload it (default 5; 0: only on SIGHUP)")
    p.add_argument("--threads", type=positive_int, default=2,
                   help="threads for REPORTs and for messages over 64 KB (smaller ones are classified on the "
                        "event loop; default 2)")
    add_cutoffs(p)


def _daemon_options(args: argparse.Namespace) -> DaemonOptions:
    """The daemon's options, refusing those that would have no effect (a limit silently dropped is
    one a user believes in)."""
    if args.socket_mode is not None and args.socket is None:
        raise UserError("--socket-mode is the mode of the Unix socket: give its --socket PATH")
    if args.allowed_ips and args.socket is not None and not args.listen:
        raise UserError("--allowed-ips limits TCP clients, and with --socket alone the daemon listens on no TCP "
                        "port: add --listen HOST:PORT, or leave --allowed-ips out (the socket's mode limits "
                        "local users)")
    if args.user_models is not None and args.user_models.exists() and not args.user_models.is_dir():
        raise UserError(f"--user-models {printable(str(args.user_models))}: a file, not a folder of users' models")
    allowed = [net for group in args.allowed_ips for net in group] if args.allowed_ips else ["127.0.0.1", "::1"]
    return DaemonOptions(
        model=Path(args.model), listen=args.listen or [], socket=args.socket,
        socket_mode=0o666 if args.socket_mode is None else args.socket_mode,
        allowed_ips=allowed, allow_tell=args.allow_tell, user_models=args.user_models, max_size=args.max_size,
        max_connections=args.max_connections, read_timeout=args.read_timeout, timeout=args.timeout,
        reload_interval=args.reload_interval, threads=args.threads, spam_cutoff=args.spam_cutoff,
        ham_cutoff=args.ham_cutoff)


def _cmd_daemon(args) -> int:
    # a daemon's log lines carry the time and its process id, as spamd's do
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s chainrule-spamd[%(process)d]: %(message)s")
    return run_daemon(_daemon_options(args))
