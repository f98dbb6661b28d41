"""`chainrule serve`: the web page and its JSON API."""

from __future__ import annotations


def _cmd_serve(args) -> int:
    # Imported when the command runs, not when the parser is built: FastAPI and uvicorn cost
    # ~0.5 s of start-up that every other command (`spam classify` runs once per delivered
    # message) would pay for nothing.
    from chainrule.web.app import serve

    return serve(digits=args.digits, spam=args.spam, host=args.host, port=args.port, runs=args.runs,
                 max_body_mb=args.max_body_mb, read_timeout=args.timeout, images=args.images,
                 reload_interval=args.reload_interval)


def add_commands(subparsers) -> None:
    """Add `chainrule serve`."""
    p = subparsers.add_parser(
        "serve",
        help="start the web app: draw a digit, classify a picture, check a message, look inside the network",
        description="Serve one page and a JSON API (OpenAPI docs at /docs). Without --images/--spam the most "
        "recent models of each kind under --runs are used: the newest image model of each data set, and the "
        "newest spam filter.",
    )
    p.add_argument("--images", metavar="[NAME=]MODEL", action="append", default=[],
                   help="an image model directory, served at /api/images/NAME/predict (NAME defaults to its "
                   "data set's: mnist, fashion, ...); repeat for more (default: the newest of each data set "
                   "under --runs)")
    p.add_argument("--digits", metavar="MODEL",
                   help="the image model /api/digits/predict uses (default: the newest MNIST model)")
    p.add_argument("--spam", metavar="MODEL", help="spam model directory (default: the newest under --runs)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--runs", default="runs", metavar="DIR",
                   help="where to look for the most recent models (default runs)")
    p.add_argument("--max-body-mb", type=float, default=5.0, metavar="MB",
                   help="largest request body accepted, in MB of 2^20 bytes (default 5, at most 1024); larger "
                   "ones get 413")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="longest wait for a request's headers, and for each part of its body (default 30)")
    p.add_argument("--reload-interval", type=float, default=5.0, metavar="SECONDS",
                   help="look for a changed model file at most this often, at a request that uses the model, and "
                   "reload it (default 5; 0: never)")
    p.set_defaults(func=_cmd_serve, prints=False, server=True)
