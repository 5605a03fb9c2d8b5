#!/usr/bin/env python3
"""Stripe webhook relay for pg_payment.

Receives Stripe's webhook POSTs and hands the raw body and the Stripe-Signature
header to ``payment.process_stripe_event(payload, signature)``, which verifies,
de-duplicates, records and applies the event inside PostgreSQL. The relay only
moves bytes and maps the outcome to an HTTP status:

    applied | duplicate | ignored       200, the function's JSON result
    failed (your callback raised)       500, so Stripe delivers it again
    SQLSTATE class 22 or 28             400 (bad signature, stale timestamp,
                                        a body that is not a Stripe event)
    55000 (no webhook secret), 57014    500 (anything else, connection errors
    (statement timeout), 40001, ...     included; Stripe delivers again)
    not UTF-8, no Stripe-Signature      400
    no Content-Length / chunked         411
    body over MAX_BODY_BYTES            413 (refused before it is read)
    GET/HEAD/PUT/... on the path        405
    any other path                      404

Needs Python 3.9+ and psycopg 3 (``pip install "psycopg[binary]"``); nothing else.

Run it
------
    export DATABASE_URL='host=db.internal dbname=shop user=stripe_relay password=... sslmode=verify-full'
    python3 relay.py                      # listens on 127.0.0.1:8787, path /stripe/webhook

Stripe only delivers to HTTPS endpoints, so put it behind your TLS-terminating
proxy (nginx, Caddy, a load balancer) and register
``https://<your host>/stripe/webhook`` in the Stripe dashboard (or
``stripe listen --forward-to localhost:8787/stripe/webhook`` while developing).
The proxy must pass the body through unchanged (no re-encoding, no
decompression tricks): the signature is over the exact bytes.

Settings (environment; the flags of ``--help`` override all but DATABASE_URL,
which stays out of the process list):

    DATABASE_URL              libpq conninfo or URI (required)
    RELAY_HOST                127.0.0.1
    RELAY_PORT                8787 (0: any free port, printed at start)
    RELAY_PATH                /stripe/webhook
    MAX_BODY_BYTES            2097152 (2 MiB, as the extension's own limit)
    RELAY_STATEMENT_TIMEOUT   10s (per connection, any PostgreSQL duration)
    RELAY_POOL_SIZE           4 database connections at most
    RELAY_POOL_TIMEOUT        5 (seconds to wait for a free connection, then 500)
    RELAY_READ_TIMEOUT        15 (seconds a client may take to send its request)
    RELAY_SHUTDOWN_GRACE      20 (seconds SIGTERM waits for requests in flight)

Database role
-------------
Give the relay a login role that is a member of ``payment_webhook`` and of
nothing else: it can call ``process_stripe_event`` and cannot read a single
payment table or secret. As a superuser (roles are cluster-wide; membership
applies in every database where pg_payment is installed)::

    CREATE ROLE stripe_relay LOGIN PASSWORD 'choose-a-long-random-one';
    GRANT payment_webhook TO stripe_relay;

The relay runs each call in autocommit (its own READ COMMITTED transaction, as
the extension requires), with ``statement_timeout`` set on every connection.
process_stripe_event is idempotent per event id, so when a connection turns
out to be broken the relay opens a new one and calls it once more.

Logs: one line per request on stderr (event id, type, outcome, HTTP status,
duration). Never the body, never the signature, never DATABASE_URL.
SIGTERM/SIGINT stop accepting, let requests in flight finish (up to
RELAY_SHUTDOWN_GRACE), close the database connections and exit 0.

PostgREST and Supabase
----------------------
No relay process is needed with PostgREST: a function with a single unnamed
parameter receives the raw body (``json`` for Stripe's ``application/json``,
``text`` for ``text/plain``), and the header is read in SQL with
``current_setting('request.headers', true)::json->>'stripe-signature'``. See
``postgrest_wrapper.sql`` and README.md next to this file, which also shows a
Supabase Edge Function doing what this relay does.
"""

import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

try:
    import psycopg
    from psycopg import conninfo as pg_conninfo
    from psycopg.pq import TransactionStatus
except ImportError:  # pragma: no cover - explained to whoever runs it
    sys.stderr.write("relay.py needs psycopg 3: pip install 'psycopg[binary]'\n")
    raise SystemExit(2)

PROCESS_SQL = "SELECT payment.process_stripe_event(%s::text, %s::text)"
ACCEPTED_OUTCOMES = ("applied", "duplicate", "ignored")
# Only these shapes of claimed (unverified) ids and types are ever logged.
_EVENT_ID_RE = re.compile(r"^evt_[A-Za-z0-9_]{1,120}$")
_EVENT_TYPE_RE = re.compile(r"^[a-z0-9_.]{1,120}$")
_DURATION_RE = re.compile(r"^\s*\d+\s*(us|ms|s|min|h|d)?\s*$")


# --------------------------------------------------------------------------
# Configuration


@dataclass
class Config:
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8787
    path: str = "/stripe/webhook"
    max_body_bytes: int = 2 * 1024 * 1024
    statement_timeout: str = "10s"
    pool_size: int = 4
    pool_timeout: float = 5.0
    read_timeout: float = 15.0
    shutdown_grace: float = 20.0


def _env(name, default):
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def parse_config(argv=None):
    parser = argparse.ArgumentParser(
        prog="relay.py",
        description="Stripe webhook relay for pg_payment: POST the raw body and the "
                    "Stripe-Signature header to payment.process_stripe_event() and map "
                    "the outcome to an HTTP status (200 applied/duplicate/ignored, "
                    "500 failed, 400 bad signature or payload).",
        epilog="DATABASE_URL (required) is read from the environment only: a libpq "
               "conninfo or URI for a login role that is a member of payment_webhook "
               "and nothing else. The other settings default to the environment "
               "variables named in brackets. See the module docstring and README.md.",
    )
    parser.add_argument("--host", default=_env("RELAY_HOST", "127.0.0.1"),
                        help="address to listen on [RELAY_HOST, default 127.0.0.1]")
    parser.add_argument("--port", type=int, default=_env("RELAY_PORT", "8787"),
                        help="port; 0 picks a free one [RELAY_PORT, default 8787]")
    parser.add_argument("--path", default=_env("RELAY_PATH", "/stripe/webhook"),
                        help="the webhook path [RELAY_PATH, default /stripe/webhook]")
    parser.add_argument("--max-body-bytes", type=int,
                        default=_env("MAX_BODY_BYTES", str(2 * 1024 * 1024)),
                        help="larger bodies get 413 unread [MAX_BODY_BYTES, default 2 MiB]")
    parser.add_argument("--statement-timeout",
                        default=_env("RELAY_STATEMENT_TIMEOUT", "10s"),
                        help="statement_timeout of the database call "
                             "[RELAY_STATEMENT_TIMEOUT, default 10s]")
    parser.add_argument("--pool-size", type=int, default=_env("RELAY_POOL_SIZE", "4"),
                        help="database connections at most [RELAY_POOL_SIZE, default 4]")
    parser.add_argument("--pool-timeout", type=float,
                        default=_env("RELAY_POOL_TIMEOUT", "5"),
                        help="seconds to wait for a free connection [RELAY_POOL_TIMEOUT, default 5]")
    parser.add_argument("--read-timeout", type=float,
                        default=_env("RELAY_READ_TIMEOUT", "15"),
                        help="seconds a client may take to send a request "
                             "[RELAY_READ_TIMEOUT, default 15]")
    parser.add_argument("--shutdown-grace", type=float,
                        default=_env("RELAY_SHUTDOWN_GRACE", "20"),
                        help="seconds SIGTERM waits for requests in flight "
                             "[RELAY_SHUTDOWN_GRACE, default 20]")
    args = parser.parse_args(argv)

    database_url = os.environ.get("DATABASE_URL", "").strip()
    if not database_url:
        parser.error("DATABASE_URL is not set (a libpq conninfo or URI for the relay's role)")
    if not args.path.startswith("/"):
        parser.error("--path must start with /")
    if not 0 <= args.port <= 65535:
        parser.error("--port must be 0..65535")
    if args.max_body_bytes < 1:
        parser.error("--max-body-bytes must be positive")
    if args.pool_size < 1:
        parser.error("--pool-size must be at least 1")
    if not _DURATION_RE.match(args.statement_timeout):
        parser.error("--statement-timeout must be a PostgreSQL duration such as 10s or 5000ms")
    for name in ("pool_timeout", "read_timeout", "shutdown_grace"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    try:
        pg_conninfo.conninfo_to_dict(database_url)
    except psycopg.ProgrammingError:
        # The message may quote the conninfo, password included: say less.
        parser.error("DATABASE_URL is not a valid libpq conninfo or URI")
    return Config(database_url=database_url, host=args.host, port=args.port,
                  path=args.path, max_body_bytes=args.max_body_bytes,
                  statement_timeout=args.statement_timeout.strip(),
                  pool_size=args.pool_size, pool_timeout=args.pool_timeout,
                  read_timeout=args.read_timeout, shutdown_grace=args.shutdown_grace)


# --------------------------------------------------------------------------
# Logging: one logfmt line per request on stderr

_log_lock = threading.Lock()


def _fmt_value(value):
    text = str(value)
    if text and re.fullmatch(r"[A-Za-z0-9_.:/@+\-]+", text):
        return text
    return json.dumps(text, ensure_ascii=True)


def log(msg, **fields):
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
    parts = [stamp, msg]
    parts += [f"{k}={_fmt_value(v)}" for k, v in fields.items() if v is not None]
    line = " ".join(parts) + "\n"
    with _log_lock:
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def _short(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------
# A small connection pool (psycopg_pool is deliberately not required)


class PoolTimeout(Exception):
    pass


class ConnectionPool:
    """At most `size` connections, created lazily, reused LIFO. Broken ones
    are dropped; every connection is autocommit with statement_timeout set."""

    def __init__(self, config):
        params = pg_conninfo.conninfo_to_dict(config.database_url)
        params.setdefault("connect_timeout", "5")
        params.setdefault("application_name", "pg_payment_webhook_relay")
        self._conninfo = pg_conninfo.make_conninfo(**params)
        self._statement_timeout = config.statement_timeout
        self._acquire_timeout = config.pool_timeout
        self._slots = threading.BoundedSemaphore(config.pool_size)
        self._idle = []
        self._lock = threading.Lock()
        self._closed = False
        self._role_checked = False

    def _connect(self):
        conn = psycopg.connect(self._conninfo, autocommit=True)
        try:
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false),"
                " set_config('default_transaction_isolation', 'read committed', false)",
                (self._statement_timeout,))
            if not self._role_checked:
                self._role_checked = True
                self._check_role(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _check_role(conn):
        """Warn (once) when the relay's role can do more, or less, than it should."""
        try:
            row = conn.execute("""
                SELECT r.rolsuper,
                       has_function_privilege('payment.process_stripe_event(text,text)', 'EXECUTE'),
                       pg_has_role('payment_admin', 'USAGE') OR pg_has_role('payment_app', 'USAGE'),
                       has_table_privilege('payment.payments', 'SELECT')
                  FROM pg_roles r WHERE r.rolname = current_user""").fetchone()
        except psycopg.Error as e:
            log("relay: could not check the database role", sqlstate=e.sqlstate,
                error=_short(e.diag.message_primary or type(e).__name__))
            return
        if row is None:
            return
        superuser, can_call, broader, reads_payments = row
        if not can_call:
            log("relay: WARNING the role cannot execute payment.process_stripe_event; "
                "GRANT payment_webhook TO it")
        if superuser or broader or reads_payments:
            log("relay: WARNING the role can do more than call process_stripe_event; "
                "use a login role that is a member of payment_webhook only")

    def _take_idle(self):
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not (conn.closed or conn.broken):
                    return conn
                conn.close()
        return None

    def _give_back(self, conn):
        reusable = (not conn.closed and not conn.broken
                    and conn.info.transaction_status == TransactionStatus.IDLE)
        with self._lock:
            if reusable and not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def discard_idle(self):
        """After one broken connection the idle ones are likely dead too
        (a server restart, a failover): close them all."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    @contextmanager
    def connection(self, fresh=False):
        if not self._slots.acquire(timeout=self._acquire_timeout):
            raise PoolTimeout()
        conn = None
        try:
            conn = None if fresh else self._take_idle()
            if conn is None:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None:
                self._give_back(conn)
            self._slots.release()

    def close(self):
        with self._lock:
            self._closed = True
        self.discard_idle()

    def process_stripe_event(self, payload, signature):
        """Call the extension; one retry on a fresh connection when the
        connection broke (safe: the function de-duplicates by event id)."""
        for attempt in (1, 2):
            with self.connection(fresh=attempt == 2) as conn:
                try:
                    row = conn.execute(PROCESS_SQL, (payload, signature)).fetchone()
                    return row[0]
                except psycopg.OperationalError as e:
                    if attempt == 1 and conn.broken:
                        log("relay: database connection broken, reconnecting",
                            sqlstate=e.sqlstate)
                        self.discard_idle()
                        continue
                    raise
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------
# HTTP


class RequestRejected(Exception):
    def __init__(self, status, error, headers=()):
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = tuple(headers)


def _claimed_event(payload):
    """Id and type the body claims (unverified, only for the log line)."""
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(obj, dict):
        return None, None
    eid, etype = obj.get("id"), obj.get("type")
    eid = eid if isinstance(eid, str) and _EVENT_ID_RE.match(eid) else None
    etype = etype if isinstance(etype, str) and _EVENT_TYPE_RE.match(etype) else None
    return eid, etype


def map_db_error(err):
    """(status, short public error) for an error raised by the database call."""
    state = getattr(err, "sqlstate", None) or ""
    if state.startswith("28"):
        return 400, "signature verification failed"
    if state.startswith("22"):
        return 400, "invalid payload"
    if state == "55000":
        return 500, "webhook endpoint is not configured"
    if state == "57014":
        return 500, "timed out"
    if isinstance(err, psycopg.OperationalError):
        return 500, "database unavailable"
    return 500, "internal error"


class RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # one request per connection: every reply says close
    server_version = "pg-payment-webhook-relay"
    sys_version = ""
    config = None  # set by make_server
    pool = None

    # -- plumbing ----------------------------------------------------------

    def setup(self):
        self.timeout = self.config.read_timeout
        super().setup()
        self._started = time.monotonic()
        self._logged = False
        self._unread_body = False
        self._fields = {}

    def log_request(self, code="-", size="-"):
        pass  # one line per request, written by _reply

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        log("relay: " + _short(format % args))

    def send_error(self, code, message=None, explain=None):
        # Malformed requests found by http.server itself: answer JSON and close.
        self._unread_body = self._declares_body()
        self._reply(code, {"error": _short(message or self.responses.get(code, ("error",))[0], 80)})

    def _request_path(self):
        raw = getattr(self, "path", None)
        if not raw:
            return None
        if raw.startswith("/"):  # origin-form; urlsplit would read //x/... as a host
            return raw.split("?", 1)[0].split("#", 1)[0]
        return urlsplit(raw).path  # absolute-form, from some proxies

    def _reply(self, status, obj, headers=()):
        body = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        self.close_connection = True
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            if getattr(self, "command", None) != "HEAD":
                self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            self._fields["reply"] = "client gone"
        if not self._logged:
            self._logged = True
            path = self._request_path()
            log("relay",
                method=getattr(self, "command", None) or "-",
                path=_short(path, 120) if path else "-",
                status=status,
                outcome=self._fields.pop("outcome", None),
                event=self._fields.pop("event", None),
                type=self._fields.pop("type", None),
                duration_ms=f"{(time.monotonic() - self._started) * 1000:.1f}",
                bytes=self._fields.pop("bytes", None),
                client=self.client_address[0] if self.client_address else None,
                **self._fields)

    def finish(self):
        try:
            super().finish()
        finally:
            if self._unread_body:
                self._linger()

    def _linger(self):
        """The client may still be sending a body we refused: half-close, then
        discard what arrives for a moment, so the reply is not lost to a TCP
        reset. Bounded in bytes and time; never reads a refused body whole."""
        sock = self.connection
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(0.5)
            deadline = time.monotonic() + 1.0
            budget = 256 * 1024
            while budget > 0 and time.monotonic() < deadline:
                chunk = sock.recv(min(65536, budget))
                if not chunk:
                    break
                budget -= len(chunk)
        except OSError:
            pass

    # -- request checks ------------------------------------------------------

    def _check_target(self):
        if self._request_path() != self.config.path:
            raise RequestRejected(404, "not found")
        if self.command != "POST":
            raise RequestRejected(405, "method not allowed", [("Allow", "POST")])

    def _body_length(self):
        if self.headers.get("Transfer-Encoding") is not None:
            raise RequestRejected(411, "chunked bodies are not accepted; send Content-Length")
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise RequestRejected(411, "Content-Length required")
        if len(values) != 1 or not values[0].strip().isdigit():
            raise RequestRejected(400, "invalid Content-Length")
        length = int(values[0].strip())
        if length > self.config.max_body_bytes:
            raise RequestRejected(413, "body too large")
        return length

    def handle_expect_100(self):
        # Refuse before the client sends the body (curl sends Expect for large bodies).
        try:
            self._check_target()
            self._body_length()
        except RequestRejected as r:
            self._unread_body = self._declares_body()
            self._reply(r.status, {"error": r.error}, r.headers)
            return False
        return super().handle_expect_100()

    def _read_body(self, length):
        chunks, remaining = [], length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                raise RequestRejected(400, "incomplete body")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    # -- methods -------------------------------------------------------------

    def _declares_body(self):
        headers = getattr(self, "headers", None)
        if headers is None:
            return True  # malformed request: assume the worst
        length = (headers.get("Content-Length") or "").strip()
        return headers.get("Transfer-Encoding") is not None or (length not in ("", "0"))

    def _refuse_method(self):
        self._unread_body = self._declares_body()
        try:
            self._check_target()
            raise RequestRejected(405, "method not allowed", [("Allow", "POST")])
        except RequestRejected as r:
            self._reply(r.status, {"error": r.error}, r.headers)

    do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def do_POST(self):
        try:
            status, obj = self._handle_post()
            self._reply(status, obj)
        except RequestRejected as r:
            self._reply(r.status, {"error": r.error}, r.headers)
        except Exception as e:  # a bug here must still answer 500 (and be seen)
            self._fields["error"] = f"{type(e).__name__}: {_short(e, 120)}"
            self._reply(500, {"error": "internal error"})

    def _handle_post(self):
        self._unread_body = True
        self._check_target()
        length = self._body_length()
        try:
            raw = self._read_body(length)
        except (TimeoutError, socket.timeout):
            raise RequestRejected(408, "request timeout")
        self._unread_body = False
        self._fields["bytes"] = len(raw)

        signatures = self.headers.get_all("Stripe-Signature") or []
        if len(signatures) != 1 or not signatures[0].strip():
            raise RequestRejected(400, "exactly one Stripe-Signature header required")
        signature = signatures[0]
        try:
            payload = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected(400, "body is not UTF-8")
        if "\x00" in payload or "\x00" in signature:
            # PostgreSQL text cannot hold NUL; a Stripe event never contains one.
            raise RequestRejected(400, "invalid payload")

        try:
            result = self.pool.process_stripe_event(payload, signature)
        except PoolTimeout:
            self._fields["error"] = "no free database connection"
            return 500, {"error": "busy"}
        except psycopg.Error as e:
            status, public = map_db_error(e)
            self._fields["event"], self._fields["type"] = _claimed_event(payload)
            self._fields["sqlstate"] = e.sqlstate
            self._fields["error"] = _short(e.diag.message_primary or type(e).__name__, 160)
            obj = {"error": public}
            if e.sqlstate:
                obj["sqlstate"] = e.sqlstate
            return status, obj

        if not isinstance(result, dict):
            self._fields["error"] = "unexpected result from process_stripe_event"
            return 500, {"error": "internal error"}
        outcome = result.get("outcome")
        self._fields["outcome"] = outcome
        self._fields["event"] = result.get("event_id")
        self._fields["type"] = result.get("type")
        if outcome in ACCEPTED_OUTCOMES:
            return 200, result
        if outcome == "failed":
            # The error stays in payment.events (and this log); Stripe sees no details.
            self._fields["error"] = _short(result.get("error") or "", 160) or None
            return 500, {"event_id": result.get("event_id"), "type": result.get("type"),
                         "outcome": "failed"}
        self._fields["error"] = "unexpected outcome"
        return 500, {"error": "internal error"}


class RelayServer(ThreadingHTTPServer):
    daemon_threads = True  # shutdown waits for requests itself, with a deadline

    def __init__(self, address, handler):
        super().__init__(address, handler)
        self._active = 0
        self._idle_cv = threading.Condition()

    def process_request_thread(self, request, client_address):
        with self._idle_cv:
            self._active += 1
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._idle_cv:
                self._active -= 1
                self._idle_cv.notify_all()

    def wait_idle(self, timeout):
        with self._idle_cv:
            return self._idle_cv.wait_for(lambda: self._active == 0, timeout)


def make_server(config, pool):
    handler = type("ConfiguredRelayHandler", (RelayHandler,), {"config": config, "pool": pool})
    return RelayServer((config.host, config.port), handler)


def main(argv=None):
    config = parse_config(argv)
    pool = ConnectionPool(config)
    try:
        server = make_server(config, pool)
    except OSError as e:
        log("relay: cannot listen", host=config.host, port=config.port, error=_short(e))
        return 2

    stopping = threading.Event()

    def on_signal(signum, _frame):
        if stopping.is_set():
            return
        stopping.set()
        log("relay: stopping", signal=signal.Signals(signum).name)
        # shutdown() blocks until serve_forever returns: not from this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    host, port = server.server_address[:2]
    log(f"relay: listening on http://{host}:{port}{config.path}",
        pool_size=config.pool_size, statement_timeout=config.statement_timeout,
        max_body_bytes=config.max_body_bytes)

    def probe():  # connect once now, so a wrong DATABASE_URL shows at start
        try:
            with pool.connection():
                pass
        except PoolTimeout:
            pass
        except psycopg.Error as e:
            log("relay: WARNING database not reachable yet; requests get 500 until it is",
                error=_short(str(e).splitlines()[0] if str(e) else type(e).__name__))

    threading.Thread(target=probe, name="db-probe", daemon=True).start()

    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()  # stop accepting
        if not server.wait_idle(config.shutdown_grace):
            log("relay: requests still in flight at the end of the grace period")
        pool.close()
    log("relay: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
