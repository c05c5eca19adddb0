"""``topk serve``: an HTTP API over a topk output directory (FastAPI).

Endpoints (JSON; times RFC 3339 UTC with ``Z``; errors ``{"error": "one
line"}`` with a 4xx/5xx status):

- ``GET /v1/topk?k&start&end&event_type&method``: ``topk.query.topk`` /
  ``topk_approx`` of the range;
- ``GET /v1/windows/latest?spec&k&event_type&method[&window_start]``: the
  latest pane of the latest window of a spec (``topk.query.latest``);
- ``GET /v1/items/{item_id}/series?start&end&step&event_type``: an item's
  counts per step (``topk.query.series``);
- ``GET /v1/coverage``: what the output holds (``topk.query.coverage``);
- ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/docs``
  (OpenAPI), ``/`` and ``/static`` (the browser page).

Every answer carries ``freshness``: the manifest ``seq`` of the committed
snapshot it was computed from, its ``committed_at`` and age.

How it stays fast (the target: p99 <= 100 ms for a 30-day top-K at 50
concurrent clients while the stream commits every second; an uncached
30-day question costs 150-500 ms of DuckDB):

- the manifest head is read by a background thread every ``refresh_s``
  seconds (about 6-15 ms a read), never on a request's path;
- one ``topk.query.duckdb.Committed`` per manifest seq: the Delta tables
  are opened once per snapshot and registered once per worker thread;
- answers are cached per ``(endpoint, normalised parameters)`` in a
  bounded LRU, tagged with their snapshot seq, as the JSON text of the
  answer: a hit costs a dictionary lookup and a string join;
- when a newer snapshot is committed, the first request for a cached
  question starts one background recomputation (single flight; not sooner
  than 3 times its last cost after the previous one, so an expensive
  coverage scan does not run back to back) and is answered from the
  previous snapshot meanwhile (its ``freshness`` says so), for at most
  ``max_stale_s`` seconds after that snapshot was superseded; later than
  that, or with ``max_stale_s=0``, requests wait for the answer of the
  newest snapshot. Identical concurrent misses share one computation;
- a repeated request (the same path and query string as an earlier valid
  one) is answered by ``FastPath``, an ASGI middleware, straight from the
  cache: no routing, no parameter parsing;
- endpoints are ``async``: hits never leave the event loop; DuckDB work
  runs on a small thread pool (one DuckDB thread per query, so the event
  loop keeps a core; DuckDB releases the GIL).

Measured with bench/serve_latency.py (30 days, 11.7M slice rows, a stream
commit every second, 50 keep-alive clients on the same 2-core machine):
/v1/topk over 30 days p50 8 ms, p99 27 ms, about 5,000 requests/s.
"""
import asyncio
import bisect
import collections
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (FileResponse, HTMLResponse, JSONResponse,
                               Response)
from starlette.exceptions import HTTPException as StarletteHTTPException

from topk.core.windows import format_time
from topk.query import contract, coverage as coverage_q, latest as latest_q
from topk.query import series as series_q
from topk.query.contract import MAX_K, QueryError
from topk.query.duckdb import Committed
from topk.serve.metrics import Metrics, MetricsMiddleware

log = logging.getLogger("topk.serve")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          "static")
#: Longest accepted query or path parameter, in characters.
MAX_PARAM_LENGTH = 256
#: ``k`` with more digits than this cannot be valid (not echoed whole).
_K_DIGITS = 12
METHODS = ("exact", "cms", "frequent_items")

_PLACEHOLDER = """<!doctype html><html><head><meta charset="utf-8">
<title>topk</title></head><body><h1>topk serve</h1>
<p>The browser page is not installed. The API is documented at
<a href="/docs">/docs</a>.</p></body></html>"""


class ApiError(Exception):
    """An answer that is an error: HTTP ``status`` and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status)


# --- Snapshots and answers ---------------------------------------------------

@dataclasses.dataclass
class _Entry:
    head: coverage_q.Head
    body: bytes | None  # the answer's JSON without its closing brace
    error: ApiError | None
    rows: int
    meta: dict  # the answer's ``_``-keys: per-response fields derive from them
    computed_at: float
    cost: float


class Store:
    """The output's newest committed snapshot and the answer cache
    (module docstring)."""

    def __init__(self, output: str, refresh_s: float = 0.5,
                 max_stale_s: float = 5.0, cache_size: int = 1024,
                 workers: int = 4, metrics: Metrics | None = None,
                 query_threads: int = 1):
        self.output = output
        self.query_threads = query_threads
        self.refresh_s = refresh_s
        self.max_stale_s = max_stale_s
        self.cache_size = cache_size
        self.metrics = metrics
        self.pool = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="topk-serve")
        self._lock = threading.Lock()
        self._head: coverage_q.Head | None = None
        self._head_error: str | None = None
        self._seen_seqs: list[int] = []  # seqs observed, increasing
        self._seen_at: list[float] = []  # when each was first observed
        self._committed: collections.OrderedDict = collections.OrderedDict()
        self._answers: collections.OrderedDict = collections.OrderedDict()
        self._inflight: dict = {}
        self._raw: dict = {}
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()

    # The manifest head.

    def read_head(self) -> coverage_q.Head | None:
        """Read the manifest now; keep the last good head on an error."""
        try:
            head = coverage_q.manifest_head(self.output)
        except Exception as e:  # noqa: BLE001 - reported by /readyz
            with self._lock:
                self._head_error = one_line(str(e))
                if not isinstance(e, QueryError):
                    log.exception("reading the manifest of %s failed",
                                  self.output)
                return self._head
        with self._lock:
            self._head_error = None
            if self._head is None or head.seq > self._head.seq:
                self._head = head
                if not self._seen_seqs or head.seq > self._seen_seqs[-1]:
                    self._seen_seqs.append(head.seq)
                    self._seen_at.append(time.monotonic())
                    del self._seen_seqs[:-4096], self._seen_at[:-4096]
            if self.metrics is not None and self._head is not None:
                self.metrics.snapshot_seq.set(self._head.seq)
                if self._head.committed_at is not None:
                    self.metrics.snapshot_age.set(
                        time.time() - self._head.committed_at / 1000)
            return self._head

    def _poll(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.read_head()

    async def head(self) -> coverage_q.Head | None:
        """The newest committed head: read by the poller thread every
        ``refresh_s`` (``refresh_s=0``: read now, for every request)."""
        if self.refresh_s <= 0 or self._head is None:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self.read_head)
        if self._poller is None:
            with self._lock:
                if self._poller is None:
                    self._poller = threading.Thread(
                        target=self._poll, name="topk-serve-manifest",
                        daemon=True)
                    self._poller.start()
        return self._head

    def head_error(self) -> str | None:
        return self._head_error

    def close(self) -> None:
        self._stop.set()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def committed(self, head: coverage_q.Head) -> Committed:
        """The ``Committed`` snapshot of ``head`` (kept for the 3 newest
        seqs)."""
        with self._lock:
            snap = self._committed.get(head.seq)
            if snap is None:
                snap = Committed(self.output, head.snap)
                self._committed[head.seq] = snap
                while len(self._committed) > 3:
                    self._committed.popitem(last=False)
            return snap

    # Answers.

    def _superseded_for(self, seq: int, now: float) -> float:
        """Seconds since a snapshot newer than ``seq`` was first seen."""
        i = bisect.bisect_right(self._seen_seqs, seq)
        if i >= len(self._seen_at):
            return 0.0
        return now - self._seen_at[i]

    def lookup(self, key: tuple, head: coverage_q.Head, compute
               ) -> _Entry | None:
        """The cached answer of ``key`` if it may be served now: of
        ``head``'s snapshot, or of an older one superseded at most
        ``max_stale_s`` ago (then one background recomputation starts;
        see the pause below). ``None``: wait for ``answer``."""
        now = time.monotonic()
        with self._lock:
            entry = self._answers.get(key)
            if entry is None:
                return None
            self._answers.move_to_end(key)
            if entry.head.seq >= head.seq:
                self._count("hit")
                return entry
            if self._superseded_for(entry.head.seq, now) <= self.max_stale_s:
                self._count("stale")
                # At most one recomputation per key at a time, and an
                # expensive one (a coverage scan) not back to back: it
                # waits 3 times its last cost, within the staleness bound.
                pause = min(3 * entry.cost, self.max_stale_s / 2)
                if (key not in self._inflight
                        and now >= entry.computed_at + pause):
                    self._start(key, head, compute)
                return entry
            return None

    async def answer(self, key: tuple, head: coverage_q.Head, compute
                     ) -> _Entry:
        """The answer of ``key`` (module docstring); ``compute`` turns a
        ``Committed`` snapshot into ``(answer dict, rows)`` or raises
        ``ApiError`` / ``QueryError``."""
        entry = self.lookup(key, head, compute)
        if entry is not None:
            return entry
        with self._lock:
            self._count("miss")
            future = self._inflight.get(key)
            if future is None or future.head.seq < head.seq:
                future = self._start(key, head, compute)
        return await asyncio.wrap_future(future)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.cache.labels(outcome).inc()

    def _start(self, key, head, compute) -> concurrent.futures.Future:
        """Compute ``key`` at ``head`` on the pool (call under the lock)."""
        future = self.pool.submit(self._compute, key, head, compute)
        future.head = head
        self._inflight[key] = future
        return future

    def remember(self, raw: tuple, how: tuple) -> None:
        """Map a raw request (path, query string) to the normalised key,
        computation, route and per-response fields of its answer, for the
        fast path (``FastPath``)."""
        with self._lock:
            self._raw[raw] = how
            if len(self._raw) > 4 * self.cache_size:
                self._raw.pop(next(iter(self._raw)))

    def fast(self, raw: tuple) -> tuple | None:
        """``(entry, route, extra)`` of a raw request answerable from the
        cache right now, else ``None``."""
        how = self._raw.get(raw)
        head = self._head
        if how is None or head is None or self.refresh_s <= 0:
            return None
        key, compute, route, extra = how
        entry = self.lookup(key, head, compute)
        if entry is None or entry.error is not None:
            return None
        return entry, route, extra

    def _compute(self, key, head, compute) -> _Entry:
        start = time.perf_counter()
        if getattr(_threads_set, "done", None) != self.query_threads:
            # This pool's threads leave cores to the event loop.
            from topk.core.local_duckdb import connection
            connection().execute(f"SET threads = {int(self.query_threads)}")
            _threads_set.done = self.query_threads
        try:
            try:
                value, rows = compute(self.committed(head))
                meta = {k: value.pop(k) for k in list(value)
                        if k.startswith("_")}
                body = json.dumps(value, ensure_ascii=False,
                                  separators=(",", ":"))[:-1].encode()
                error = None
            except latest_q.NotFound as e:
                body, rows, error, meta = None, 0, ApiError(404, str(e)), {}
            except QueryError as e:
                body, rows, error, meta = None, 0, ApiError(400, str(e)), {}
            except ApiError as e:
                body, rows, error, meta = None, 0, e, {}
            entry = _Entry(head, body, error, rows, meta, time.monotonic(),
                           time.perf_counter() - start)
            with self._lock:
                old = self._answers.get(key)
                if old is None or old.head.seq <= head.seq:
                    self._answers[key] = entry
                    self._answers.move_to_end(key)
                    while len(self._answers) > self.cache_size:
                        self._answers.popitem(last=False)
            return entry
        finally:
            with self._lock:
                if getattr(self._inflight.get(key), "head", None) is head:
                    del self._inflight[key]


_threads_set = threading.local()


class FastPath:
    """ASGI middleware answering a repeated question (the same path and
    query string as an earlier valid request) straight from the answer
    cache, without routing or parameter parsing; anything else goes to the
    app."""

    def __init__(self, app, store: Store, metrics: Metrics):
        self.app, self.store, self.metrics = app, store, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            found = self.store.fast((scope["path"], scope["query_string"]))
            if found is not None:
                entry, route, extra = found
                scope["route"] = route
                body = _body(entry, self.metrics, route.path,
                             extra(entry) if extra else None)
                await send({"type": "http.response.start", "status": 200,
                            "headers": [
                                (b"content-type", b"application/json"),
                                (b"content-length",
                                 str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def freshness(head: coverage_q.Head | None) -> dict:
    if head is None or head.committed_at is None:
        return {"snapshot_seq": None if head is None else head.seq,
                "committed_at": None, "age_s": None}
    return {"snapshot_seq": head.seq,
            "committed_at": format_time(head.committed_at),
            "age_s": round(time.time() - head.committed_at / 1000, 3)}


def _respond(entry: _Entry, metrics: Metrics, route: str,
             extra: dict | None = None) -> Response:
    """The cached answer, with the fields that depend on the clock
    (``extra``, ``freshness``) appended."""
    if entry.error is not None:
        return _error(entry.error.status, entry.error.message)
    return Response(_body(entry, metrics, route, extra),
                    media_type="application/json")


def _body(entry: _Entry, metrics: Metrics, route: str,
          extra: dict | None) -> bytes:
    metrics.rows.labels(route).inc(entry.rows)
    tail = dict(extra or {}, freshness=freshness(entry.head))
    return entry.body + b"," + json.dumps(
        tail, separators=(",", ":")).encode()[1:]


# --- Parameters --------------------------------------------------------------

def _check_lengths(request: Request) -> None:
    for name, value in [*request.query_params.multi_items(),
                        *request.path_params.items()]:
        if len(name) > MAX_PARAM_LENGTH:
            raise ApiError(400, f"parameter name too long ({len(name)} "
                           f"characters; at most {MAX_PARAM_LENGTH})")
        if len(value) > MAX_PARAM_LENGTH:
            raise ApiError(400, f"parameter {name!r} is too long "
                           f"({len(value)} characters; at most "
                           f"{MAX_PARAM_LENGTH})")


def _k(text: str | None, default: int | None = None) -> int:
    if text is None:
        if default is None:
            raise ApiError(400, "k is required: a whole number from 1 to "
                           f"{MAX_K}")
        return default
    digits = text.strip()
    if not digits.lstrip("+-").isdigit():
        raise ApiError(400, f"k must be a whole number from 1 to {MAX_K}, "
                       f"got {text[:40]!r}")
    if len(digits.lstrip("+-").lstrip("0")) > _K_DIGITS:
        raise ApiError(400, f"k must be at most {MAX_K}")
    return contract.check_k(int(digits))


def _required(name: str, value: str | None) -> str:
    if value is None or not value.strip():
        raise ApiError(400, f"{name} is required (RFC 3339, e.g. "
                       "2024-05-01T00:00:00Z)")
    return value


def _method(method: str | None) -> str:
    method = "exact" if method is None else method
    if method not in METHODS:
        raise ApiError(400, f"unknown method {method[:40]!r}; choose from "
                       f"{', '.join(METHODS)}")
    return method


def _item_rows(rows, approximate: bool) -> list[dict]:
    if approximate:
        return [{"rank": r.rank, "item_id": r.item_id, "count": r.count,
                 "lower_bound": r.lower_bound, "upper_bound": r.upper_bound,
                 "guaranteed": r.guaranteed} for r in rows]
    return [{"rank": r.rank, "item_id": r.item_id, "count": r.count}
            for r in rows]


# --- The app -----------------------------------------------------------------

def create_app(output: str, backend: str = "duckdb", bq=None, *,
               refresh_s: float = 0.5, max_stale_s: float = 5.0,
               cache_size: int = 1024, workers: int = 4) -> FastAPI:
    """The API over ``output`` (module docstring). ``backend="bigquery"``
    answers the data endpoints from BigQuery through ``bq = (client,
    target)`` (``topk.connectors.bigquery.client.connect``;
    ``topk.query.bigquery`` and ``topk.query.bigquery_views``), uncached,
    with null ``freshness`` fields. ``refresh_s``: seconds between
    manifest reads (0: every request reads it); ``max_stale_s``: how long
    after a newer snapshot was committed an answer of the previous one may
    still be served while its recomputation runs (0: never);
    ``cache_size``: answers kept; ``workers``: threads running queries."""
    if backend not in ("duckdb", "bigquery"):
        raise ValueError(f"unknown backend {backend!r}")
    if backend == "bigquery" and bq is None:
        raise ValueError("backend 'bigquery' needs bq=(client, target)")
    metrics = Metrics()
    store = Store(output, refresh_s, max_stale_s, cache_size, workers,
                  metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            store.close()

    app = FastAPI(
        title="topk", summary="Top-K heavy hitters over the committed "
        "output tables.", version=_version(), lifespan=lifespan)
    app.state.store, app.state.metrics = store, metrics
    if backend == "duckdb":
        app.add_middleware(FastPath, store=store, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    bigquery = backend == "bigquery"

    # Errors: always {"error": "one line"}.

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(400, "bad request: " + ("; ".join(parts) or "invalid"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):
        log.error("unexpected error answering %s", request.url.path,
                  exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}")

    async def guarded(route: str, request: Request, answer):
        """Run an endpoint: ``ApiError``/``QueryError`` become their
        status, anything else a logged 500; the server stays up."""
        try:
            _check_lengths(request)
            return await answer()
        except ApiError as e:
            return _error(e.status, e.message)
        except latest_q.NotFound as e:
            return _error(404, str(e))
        except QueryError as e:
            return _error(400, str(e))
        except Exception as e:  # noqa: BLE001 - never take the server down
            log.exception("unexpected error answering %s", route)
            return _error(500, f"internal error: {type(e).__name__}")

    async def snapshot_head():
        head = await store.head()
        if head is None or head.seq == 0:
            raise ApiError(503, store.head_error() or
                           f"{output!r} holds no committed snapshot yet")
        return head

    async def cached(request: Request, route: str, key: tuple, compute,
                     extra=None) -> Response:
        """The answer of ``key`` at the newest snapshot (``Store``); the
        raw request is remembered for ``FastPath``."""
        head = await snapshot_head()
        entry = await store.answer(key, head, compute)
        if entry.error is not None:
            return _respond(entry, metrics, route)
        store.remember((request.scope["path"], request.scope["query_string"]),
                       (key, compute, request.scope["route"], extra))
        return _respond(entry, metrics, route,
                        extra(entry) if extra else None)

    async def from_bigquery(route: str, function: str, *args,
                            extra=None) -> Response:
        """The answer of ``topk.query.bigquery_views.<function>(client,
        target, *args)``, computed on the pool, uncached (as ``/v1/topk``
        on BigQuery); ``extra(meta)`` adds the fields that depend on the
        clock; ``freshness`` fields are null (no manifest)."""
        value, rows = await asyncio.get_running_loop().run_in_executor(
            store.pool, _bigquery_view, bq, function, *args)
        meta = {k: value.pop(k) for k in list(value) if k.startswith("_")}
        metrics.rows.labels(route).inc(rows)
        return JSONResponse({**value, **(extra(meta) if extra else {}),
                             "freshness": freshness(None)})

    # Pages and probes.

    @app.get("/", include_in_schema=False)
    async def index():
        page = os.path.join(STATIC_DIR, "index.html")
        if os.path.isfile(page):
            return FileResponse(page)
        return HTMLResponse(_PLACEHOLDER)

    if os.path.isdir(STATIC_DIR):
        from fastapi.staticfiles import StaticFiles
        app.mount("/static", StaticFiles(directory=STATIC_DIR),
                  name="static")

    @app.get("/healthz", summary="Liveness: always ok.")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once the output has a "
             "committed snapshot, else 503.")
    async def readyz(request: Request):
        if bigquery:
            return {"status": "ready", "snapshot_seq": None}
        try:
            head = await snapshot_head()
        except ApiError as e:
            return _error(503, e.message)
        except Exception as e:  # noqa: BLE001
            log.exception("readiness check failed")
            return _error(503, f"internal error: {type(e).__name__}")
        return {"status": "ready", "snapshot_seq": head.seq}

    @app.get("/metrics", summary="Prometheus metrics.")
    async def prometheus():
        return Response(metrics.render(), media_type=metrics.content_type)

    # The questions.

    @app.get("/v1/topk", summary="The top k items of [start, end).",
             description="Exact (method=exact, the slices table) or "
             "approximate (cms, frequent_items: merged sketches, with "
             "bounds). start/end: RFC 3339 UTC on whole minutes, at most 30 "
             "days apart. The same answers as `topk query`.")
    async def topk_endpoint(request: Request, k: str | None = None,
                            start: str | None = None, end: str | None = None,
                            event_type: str | None = None,
                            method: str | None = None):
        async def answer():
            k_ = _k(k)
            m = _method(method)
            s_, e_ = _required("start", start), _required("end", end)
            if m == "exact":
                q = contract.exact_query(k_, s_, e_, event_type)
            else:
                q = contract.approx_query(k_, s_, e_, m, event_type)
            value = {"k": q.k, "start": format_time(q.start_ms),
                     "end": format_time(q.end_ms),
                     "event_type": q.event_type or "*", "method": m}
            approximate = m != "exact"
            if bigquery:
                rows = await asyncio.get_running_loop().run_in_executor(
                    store.pool, _bigquery_topk, bq, q)
                metrics.rows.labels("/v1/topk").inc(len(rows))
                return JSONResponse({**value,
                                     "rows": _item_rows(rows, approximate),
                                     "freshness": freshness(None)})

            def compute(snap: Committed):
                rows = (snap.topk(q) if m == "exact"
                        else snap.topk_approx(q))
                return ({**value, "rows": _item_rows(rows, approximate)},
                        len(rows))
            return await cached(
                request, "/v1/topk",
                ("topk", q.k, q.start_ms, q.end_ms, q.event_type, m),
                compute)
        return await guarded("/v1/topk", request, answer)

    @app.get("/v1/windows/latest",
             summary="The latest pane of the latest window of a spec.",
             description="spec: 1m, 1h, 1d, 30d, 1h/1m, 1d/1h or 30d/1d. The "
             "latest window (largest window_start; or window_start=) having "
             "rows of the method and event type, at its latest pane; batch "
             "rows win over stream rows of the same window.")
    async def latest_endpoint(request: Request, spec: str | None = None,
                              k: str | None = None,
                              event_type: str | None = None,
                              method: str | None = None,
                              window_start: str | None = None):
        async def answer():
            if spec is None:
                raise ApiError(400, "spec is required, e.g. 1h/1m")
            k_ = _k(k, 10)
            parsed = latest_q.check_spec(spec)
            m = latest_q.check_method(_method(method))
            etype = contract.check_event_type(event_type) or "*"
            start_ms = (None if window_start is None
                        else contract.to_ms(window_start))

            if bigquery:
                return await from_bigquery(
                    "/v1/windows/latest", "latest", parsed.name, k_, etype,
                    m, start_ms, extra=_pane_clock)

            def compute(snap: Committed):
                return _pane_answer(latest_q.latest(snap, parsed.name, k_,
                                                    etype, m, start_ms))
            return await cached(
                request, "/v1/windows/latest",
                ("latest", parsed.name, k_, etype, m, start_ms), compute,
                _pane_age)
        return await guarded("/v1/windows/latest", request, answer)

    @app.get("/v1/items/{item_id}/series",
             summary="An item's count per step of [start, end), "
             "zero-filled.",
             description="step: 1m, 1h or 1d; start/end aligned to it; at "
             f"most {series_q.MAX_POINTS} points.")
    async def series_endpoint(request: Request, item_id: str,
                              start: str | None = None,
                              end: str | None = None, step: str = "1h",
                              event_type: str | None = None):
        async def answer():
            item, start_ms, end_ms, _ = series_q.check_series(
                item_id, _required("start", start), _required("end", end),
                step)
            etype = contract.check_event_type(event_type)

            if bigquery:
                return await from_bigquery(
                    "/v1/items/{item_id}/series", "series", item, start_ms,
                    end_ms, step, etype)

            def compute(snap: Committed):
                return _series_answer(series_q.series(
                    snap, item, start_ms, end_ms, step, etype))
            return await cached(
                request, "/v1/items/{item_id}/series",
                ("series", item, start_ms, end_ms, step, etype), compute)
        return await guarded("/v1/items/{item_id}/series", request, answer)

    @app.get("/v1/coverage", summary="What the output holds.")
    async def coverage_endpoint(request: Request):
        async def answer():
            if bigquery:
                return await from_bigquery("/v1/coverage", "coverage",
                                           extra=_coverage_clock_of)

            def compute(snap: Committed):
                return _coverage_answer(coverage_q.coverage(snap))
            return await cached(request, "/v1/coverage", ("coverage",),
                                compute, _coverage_clock)
        return await guarded("/v1/coverage", request, answer)

    return app


def _pane_answer(pane: latest_q.LatestPane) -> tuple[dict, int]:
    return ({
        "spec": pane.spec, "method": pane.method,
        "event_type": pane.event_type,
        "window_start": format_time(pane.window_start),
        "window_end": format_time(pane.window_end),
        "pane_timing": pane.pane_timing,
        "pane_index": pane.pane_index, "source": pane.source,
        "emitted_at": format_time(pane.emitted_at),
        "input_watermark": (None if pane.input_watermark is None
                            else format_time(pane.input_watermark)),
        "window_total": pane.window_total,
        "rows": _item_rows(pane.rows, True),
        "_emitted_at": pane.emitted_at}, len(pane.rows))


def _series_answer(s: series_q.Series) -> tuple[dict, int]:
    return ({"item_id": s.item_id, "step": s.step,
             "event_type": s.event_type,
             "start": format_time(s.start_ms),
             "end": format_time(s.end_ms),
             "points": [{"t": format_time(t), "count": c}
                        for t, c in s.points]}, len(s.points))


def _coverage_answer(cov: coverage_q.Coverage) -> tuple[dict, int]:
    """A coverage answer; ``snapshot_seq`` is ``None`` on BigQuery."""
    return ({
        "snapshot_seq": cov.seq,
        "specs": [{
            "spec": s.spec, "methods": s.methods,
            "event_types": s.event_types,
            "first_window_start": format_time(s.first_window_start),
            "last_window_end": format_time(s.last_window_end),
            "newest_emitted_at": format_time(s.newest_emitted_at),
        } for s in cov.specs],
        "slices": None if cov.slices is None else {
            "first": format_time(cov.slices[0]),
            "last": format_time(cov.slices[1])},
        "methods": cov.methods, "event_types": cov.event_types,
        "newest_event_time": (
            None if cov.newest_event_time is None
            else format_time(cov.newest_event_time)),
        "stream_watermark": (
            None if cov.stream_watermark is None
            else format_time(cov.stream_watermark)),
        "_newest_stream_at": cov.newest_stream_at,
    }, len(cov.specs))


def _pane_clock(meta: dict) -> dict:
    """``age_s`` of a latest pane: depends on the clock."""
    return {"age_s": round(time.time() - meta["_emitted_at"] / 1000, 3)}


def _pane_age(entry: _Entry) -> dict:
    return _pane_clock(entry.meta)


def _coverage_clock_of(meta: dict, head: coverage_q.Head | None = None
                       ) -> dict:
    """The fields of a coverage answer that depend on the clock
    (``committed_at`` null without a manifest ``head``)."""
    stream_at = meta["_newest_stream_at"]
    return {"committed_at": freshness(head)["committed_at"],
            "stream_lag_s": None if stream_at is None else round(
                time.time() - stream_at / 1000, 3)}


def _coverage_clock(entry: _Entry) -> dict:
    return _coverage_clock_of(entry.meta, entry.head)


def _bigquery_topk(bq, q: contract.Query):
    from topk.connectors.bigquery.client import BigQueryError
    from topk.query import bigquery as backend
    client, target = bq
    try:
        if q.method is None:
            return backend.topk(client, target, q.k, q.start_ms, q.end_ms,
                                q.event_type)
        return backend.topk_approx(client, target, q.k, q.start_ms,
                                   q.end_ms, q.method, q.event_type)
    except BigQueryError as e:
        raise ApiError(502, f"BigQuery: {e}") from None


_BIGQUERY_ANSWERS = {"latest": _pane_answer, "series": _series_answer,
                     "coverage": _coverage_answer}


def _bigquery_view(bq, function: str, *args) -> tuple[dict, int]:
    """The answer of ``topk.query.bigquery_views.<function>`` as the DuckDB
    endpoints shape it; ``BigQueryError`` -> 502."""
    from topk.connectors.bigquery.client import BigQueryError
    from topk.query import bigquery_views
    client, target = bq
    try:
        result = getattr(bigquery_views, function)(client, target, *args)
    except BigQueryError as e:
        raise ApiError(502, f"BigQuery: {e}") from None
    return _BIGQUERY_ANSWERS[function](result)


def _version() -> str:
    import topk
    return getattr(topk, "__version__", "0")
