"""``topk serve``: the HTTP API and browser page over an output directory
(``topk.serve``), on uvicorn, until SIGINT or SIGTERM."""
import errno
import signal
import socket

from topk.cli.common import CliError, port_number


def add_serve(sub) -> None:
    from topk.connectors.bigquery import client as bigquery_client
    p = sub.add_parser(
        "serve", help="Serve the top-K API and browser page over HTTP.",
        description="Answer top-K questions over HTTP (JSON): /v1/topk (the "
        "same answers as `topk query`), /v1/windows/latest, "
        "/v1/items/ITEM/series, /v1/coverage, plus /healthz, /readyz, "
        "/metrics (Prometheus) and the API documentation at /docs. Answers "
        "come from the committed snapshot of --output, cached per snapshot; "
        "a commit of a batch run or the stream is picked up within "
        "--refresh-s seconds. Runs until interrupted (SIGINT or SIGTERM).")
    p.add_argument("--output",
                   help="Output directory of `topk batch` / `topk stream` "
                   "(required with --backend duckdb).")
    p.add_argument("--host", default="127.0.0.1",
                   help="Address to listen on (default 127.0.0.1; 0.0.0.0 "
                   "for every interface).")
    p.add_argument("--port", type=port_number, default=8080,
                   help="TCP port (default 8080; 0: a free port, printed).")
    p.add_argument("--backend", choices=("duckdb", "bigquery"),
                   default="duckdb",
                   help="duckdb (default): the tables under --output; "
                   "bigquery: the data endpoints answer from the tables "
                   "of --bq-dataset (uncached; null freshness).")
    bigquery_client.add_arguments(p)
    p.add_argument("--refresh-s", type=_seconds, default=0.5,
                   help="Seconds between checks for a newer committed "
                   "snapshot (default 0.5; 0: check on every request).")
    p.add_argument("--max-stale-s", type=_seconds, default=5.0,
                   help="After a newer snapshot is committed, answers of the "
                   "previous one may be served this many seconds more while "
                   "they are recomputed in the background (default 5; 0: "
                   "always wait for the newest); every answer says its "
                   "snapshot in its freshness field.")
    p.add_argument("--cache-size", type=_positive, default=1024,
                   help="Answers kept in memory (default 1024).")
    p.set_defaults(func=cmd_serve)


def _seconds(text: str) -> float:
    import argparse
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds from 0 to 3600: {text[:20]!r}")
    return value


def _positive(text: str) -> int:
    import argparse
    if not text.strip().isdigit() or not 0 < int(text) <= 10_000_000:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to 10000000: {text[:20]!r}")
    return int(text)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket (``port`` 0: a free one); ``CliError`` when the
    address cannot be used."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CliError(f"cannot listen on {host!r}: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets
    # only when their proto says TCP (with proto 0, Nagle's algorithm and
    # delayed ACKs add 40 ms to every response written in two parts).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        reason = ("is in use" if e.errno == errno.EADDRINUSE
                  else f"cannot be used: {e.strerror}")
        raise CliError(f"address {host}:{port} {reason}") from None
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that SIGINT / SIGTERM end ``topk
        serve`` with status 0 after the graceful shutdown (uvicorn would
        raise the signal again: a traceback for SIGINT)."""

        def handle_exit(self, sig, frame):
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True

    return Server


def cmd_serve(args) -> int:
    import os

    from topk.connectors.bigquery import client as bigquery_client
    bq = None
    if args.backend == "duckdb":
        if not args.output:
            raise CliError("--output is required with --backend duckdb")
        if not os.path.isdir(args.output):
            raise CliError(f"output directory {args.output!r} does not exist")
    else:
        try:
            bq = bigquery_client.connect(
                args.bq_project, args.bq_dataset, args.bq_table_prefix,
                args.bq_endpoint, args.bq_location)
        except bigquery_client.BigQueryError as e:
            raise CliError(str(e)) from None
    return serve(args.output or "", args.host, args.port, backend=args.backend,
                 bq=bq, refresh_s=args.refresh_s,
                 max_stale_s=args.max_stale_s, cache_size=args.cache_size)


def serve(output: str, host: str = "127.0.0.1", port: int = 8080, *,
          backend: str = "duckdb", bq=None, **app_options) -> int:
    """Serve ``output`` until SIGINT or SIGTERM (``topk serve``, and
    ``topk demo --serve``); prints the URL first."""
    import uvicorn

    from topk.serve.app import create_app
    app = create_app(output, backend, bq, **app_options)
    sock = _bind(host, port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5)
    server = _server_class()(config)
    print(f"serving http://{shown}:{port}/ (API docs at /docs)", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
