"""The example webhook relay (examples/webhook_relay/relay.py) in front of a real
database: signed events POSTed over HTTP as Stripe does, the outcome mapped to
the HTTP status Stripe acts on, and the relay's role limited to payment_webhook.
Also the PostgREST wrapper (examples/webhook_relay/postgrest_wrapper.sql), called
the way PostgREST calls it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psycopg
import pytest

import stripe_events as ev
from conftest import HOST, PGBIN
from e2e_helpers import OWNER, WEBHOOK, denied

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webhook_relay"
RELAY = EXAMPLE / "relay.py"
WRAPPER_SQL = EXAMPLE / "postgrest_wrapper.sql"
PATH = "/stripe/webhook"
SMALL_LIMIT = 64 * 1024  # MAX_BODY_BYTES of the relays started here
STARTUP_S = 20
HTTP_TIMEOUT_S = 30


# --------------------------------------------------------------------------
# Running the relay


class Relay:
    def __init__(self, proc, log_path):
        self.proc = proc
        self.log_path = log_path
        self.port = None

    @property
    def url(self):
        return f"http://{HOST}:{self.port}{PATH}"

    def log(self):
        return self.log_path.read_text(errors="replace")

    def wait_listening(self):
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            m = re.search(r"listening on http://[\d.]+:(\d+)/", self.log())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                pytest.fail(f"relay exited with {self.proc.returncode}:\n{self.log()}", pytrace=False)
            time.sleep(0.05)
        pytest.fail(f"relay did not start within {STARTUP_S}s:\n{self.log()}", pytrace=False)

    def stop(self, timeout=15):
        """SIGTERM by pid, then SIGKILL; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    # -- HTTP --------------------------------------------------------------

    def request(self, method="POST", body=None, headers=None, path=PATH):
        req = urllib.request.Request(f"http://{HOST}:{self.port}{path}", data=body,
                                     method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                status, hdrs, raw = resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            status, hdrs, raw = e.code, e.headers, e.read()
        return status, hdrs, (json.loads(raw) if raw else None)

    def post(self, body, signature=None, *, secret=ev.WEBHOOK_SECRET, headers=None):
        """POST a body as Stripe does. `body` is an event dict, a str or bytes;
        `signature` defaults to a valid header for it. Returns (status, json)."""
        if isinstance(body, (dict, str)):
            text = ev.payload(body)
            raw = text.encode("utf-8")
        else:
            text, raw = None, body
        h = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Stripe/1.0"}
        if signature is None and text is not None:
            signature = ev.sign(text, secret)
        if signature is not False and signature is not None:
            h["Stripe-Signature"] = signature
        h.update(headers or {})
        status, _, obj = self.request("POST", raw, h)
        return status, obj

    def raw(self, data, read_timeout=10, half_close=False):
        """Send raw bytes (then end the sending side if half_close), read the
        reply until the relay closes. Returns (status, headers dict, json body)."""
        with socket.create_connection((HOST, self.port), timeout=read_timeout) as s:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        reply = b"".join(chunks)
        head, _, body = reply.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if ":" in line)}
        return status, headers, (json.loads(body) if body else None)


@pytest.fixture
def start_relay(cluster, tmp_path):
    """Factory: start relay.py against a database as WEBHOOK (or `user`), on a
    free port of 127.0.0.1 chosen by the relay itself. Stopped at teardown."""
    started = []

    def start(database, user=WEBHOOK, **settings):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "RELAY_"))}
        env.update({
            "DATABASE_URL": psycopg.conninfo.make_conninfo(
                host=HOST, port=cluster.port, dbname=database.name, user=user),
            "RELAY_HOST": HOST,
            "RELAY_PORT": "0",
            "RELAY_PATH": PATH,
            "MAX_BODY_BYTES": str(SMALL_LIMIT),
            "RELAY_STATEMENT_TIMEOUT": "20s",
            "RELAY_SHUTDOWN_GRACE": "10",
            "PYTHONUNBUFFERED": "1",
        })
        env.update({k: str(v) for k, v in settings.items()})
        log_path = tmp_path / f"relay{len(started)}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen([sys.executable, str(RELAY)], env=env, stdin=subprocess.DEVNULL,
                                    stdout=log_file, stderr=subprocess.STDOUT)
        relay = Relay(proc, log_path)
        started.append(relay)
        relay.wait_listening()
        return relay

    yield start
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(shop, start_relay):
    return start_relay(shop)


def request_lines(relay, expected=1):
    """The relay's request lines, once `expected` of them are written: it
    writes each line after its reply, so the client may see the reply first."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in relay.log().splitlines() if " relay method=" in line]
        if len(lines) >= expected or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def slow_handler(shop, seconds, kind="payment"):
    """A payment handler owned by OWNER that sleeps."""
    shop.app_schema()
    shop.owner_conn().execute(f"""
        CREATE FUNCTION app.slow(cb jsonb) RETURNS void LANGUAGE sql
        AS $$ SELECT pg_catalog.pg_sleep({float(seconds)}) $$""")
    shop.owner_conn().execute("SELECT payment.add_callback(%s::text, 'app.slow(jsonb)'::regprocedure)",
                              (kind,))


# --------------------------------------------------------------------------
# Outcomes and statuses


def test_applied_event_is_200_and_moves_the_payment(shop, relay):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    status, res = relay.post(evt)
    assert status == 200, res
    assert res == {"event_id": evt["id"], "type": "payment_intent.succeeded", "outcome": "applied"}
    assert shop.payment_row(p.id)["status"] == "succeeded"
    assert shop.event_row(evt["id"])["outcome"] == "applied"


def test_redelivery_is_200_duplicate_and_changes_nothing(shop, relay):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    assert relay.post(evt)[0] == 200
    before = shop.snapshot()
    status, res = relay.post(evt)  # a fresh signature, as Stripe redelivers
    assert (status, res["outcome"], res["event_id"]) == (200, "duplicate", evt["id"])
    assert shop.snapshot() == before


def test_event_of_another_type_is_200_ignored(shop, relay):
    evt = ev.event("customer.created", {"id": ev.stripe_id("cus"), "object": "customer"})
    status, res = relay.post(evt)
    assert (status, res["outcome"]) == (200, "ignored")


def test_concurrent_deliveries_through_the_relay_apply_once(shop, relay):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    results = [None] * 4
    barrier = threading.Barrier(4)

    def run(i):
        barrier.wait(timeout=10)
        results[i] = relay.post(evt)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(HTTP_TIMEOUT_S)
    assert all(r is not None for r in results), "a delivery never returned"
    assert [s for s, _ in results] == [200] * 4
    assert sorted(r["outcome"] for _, r in results) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert shop.payment_row(p.id)["status"] == "succeeded"


def test_bad_signature_is_400_and_writes_nothing(shop, relay):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    body = ev.payload(evt)
    before = shop.snapshot()
    for header in (ev.sign(body, "whsec_not_the_endpoint_secret"),  # wrong secret
                   ev.sign(body, t=ev.now() - 3600),  # stale
                   ev.sign(body + " "),  # signed other bytes
                   "t=abc,v1=zz"):  # garbage
        status, res = relay.post(body, header)
        assert status == 400, (header, res)
        assert res["error"] in ("signature verification failed", "invalid payload")
        assert res["sqlstate"][:2] in ("22", "28")
        assert set(res) == {"error", "sqlstate"}  # a short error, no details
    assert shop.snapshot() == before
    assert shop.payment_row(p.id)["status"] == "pending"


def test_non_json_body_is_400(shop, relay):
    before = shop.snapshot()
    status, res = relay.post("this is not json")  # correctly signed
    assert (status, res["error"], res["sqlstate"][:2]) == (400, "invalid payload", "22")
    status, res = relay.post('{"object": "list", "data": []}')  # JSON, not an event
    assert status == 400 and res["sqlstate"][:2] == "22"
    assert shop.snapshot() == before


def test_body_that_is_not_utf8_is_400(shop, relay):
    before = shop.snapshot()
    status, res = relay.post(b'{"id": "evt_\xff\xfe"}', "t=1,v1=00")
    assert (status, res) == (400, {"error": "body is not UTF-8"})
    status, res = relay.post(b'{"id": "evt_\x00"}', "t=1,v1=00")
    assert status == 400
    assert shop.snapshot() == before


def test_missing_signature_header_is_400(shop, relay):
    evt = ev.pi_event("payment_intent.succeeded", shop.payment().pi)
    before = shop.snapshot()
    status, res = relay.post(evt, signature=False)
    assert status == 400 and "Stripe-Signature" in res["error"]
    status, res = relay.post(evt, signature="   ")
    assert status == 400
    assert shop.snapshot() == before


def test_failed_handler_is_500_recorded_failed_then_redelivery_applies(shop, relay):
    shop.add_logging_callback("payment")
    shop.set_handlers_failing(True)
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    status, res = relay.post(evt)
    assert status == 500
    # Stripe sees the outcome, not the handler's error text.
    assert res == {"event_id": evt["id"], "type": "payment_intent.succeeded", "outcome": "failed"}
    row = shop.event_row(evt["id"])
    assert row["outcome"] == "failed" and "e2e handler refuses" in row["error"]
    assert shop.payment_row(p.id)["status"] == "pending"  # rolled back
    line = [ln for ln in request_lines(relay, expected=1) if evt["id"] in ln][-1]
    assert "status=500" in line and "outcome=failed" in line and "e2e handler refuses" in line

    shop.set_handlers_failing(False)  # the fix; Stripe redelivers
    status, res = relay.post(evt)
    assert (status, res["outcome"]) == (200, "applied")
    assert shop.payment_row(p.id)["status"] == "succeeded"
    assert shop.event_row(evt["id"])["outcome"] == "applied"


def test_no_webhook_secret_configured_is_500(db, start_relay):
    relay = start_relay(db)  # the extension is installed but never configured
    evt = ev.event("customer.created", {"id": ev.stripe_id("cus"), "object": "customer"})
    status, res = relay.post(evt)
    assert (status, res) == (500, {"error": "webhook endpoint is not configured", "sqlstate": "55000"})
    assert db.event_count() == 0


def test_statement_timeout_is_500_and_the_event_is_not_recorded(shop, start_relay):
    relay = start_relay(shop, RELAY_STATEMENT_TIMEOUT="500ms")
    slow_handler(shop, 5)
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    started = time.monotonic()
    status, res = relay.post(evt)
    assert time.monotonic() - started < 4
    assert (status, res) == (500, {"error": "timed out", "sqlstate": "57014"})
    # A cancel is not an outcome: nothing kept, Stripe redelivers.
    assert shop.event_row(evt["id"]) is None
    assert shop.payment_row(p.id)["status"] == "pending"


# --------------------------------------------------------------------------
# HTTP edges


def test_oversized_body_is_413(shop, relay):
    before = shop.snapshot()
    status, res = relay.post(b"{" + b" " * SMALL_LIMIT + b"}", "t=1,v1=00")
    assert (status, res) == (413, {"error": "body too large"})
    # A declared length far over the limit is refused at once, without waiting for the body.
    started = time.monotonic()
    status, hdrs, res = relay.raw(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: t=1,v1=00\r\nContent-Length: {50 * 1024 * 1024}\r\n\r\n".encode())
    assert (status, res) == (413, {"error": "body too large"})
    assert time.monotonic() - started < 5
    assert hdrs["connection"] == "close"
    # With Expect: 100-continue the client is told before it sends anything.
    status, hdrs, res = relay.raw(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        f"Stripe-Signature: t=1,v1=00\r\nContent-Length: {SMALL_LIMIT + 1}\r\n\r\n".encode())
    assert status == 413
    assert shop.snapshot() == before


def test_chunked_or_missing_length_is_refused(shop, relay):
    status, _, res = relay.raw(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n".encode())
    assert status == 411 and "Content-Length" in res["error"]
    status, _, res = relay.raw(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n\r\n".encode())
    assert status == 411
    status, _, res = relay.raw(
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n".encode())
    assert status == 400
    status, _, res = relay.raw(  # the client stops before the body it announced
        f"POST {PATH} HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,v1=00\r\n"
        "Content-Length: 100\r\n\r\n{\"id\"".encode(), half_close=True)
    assert (status, res) == (400, {"error": "incomplete body"})
    assert shop.event_count() == 0


def test_other_methods_are_405_and_other_paths_404(relay):
    status, hdrs, res = relay.request("GET")
    assert (status, res) == (405, {"error": "method not allowed"})
    assert hdrs["Allow"] == "POST"
    for method in ("HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"):
        assert relay.request(method)[0] == 405, method
    assert relay.request("POST", b"{}", {"Stripe-Signature": "t=1,v1=00"}, path="/other")[0] == 404
    assert relay.request("GET", path="/")[0] == 404
    assert relay.request("POST", b"{}", {"Stripe-Signature": "t=1,v1=00"}, path=PATH + "/x")[0] == 404
    # A query string does not change the path.
    assert relay.request("GET", path=PATH + "?x=1")[0] == 405


# --------------------------------------------------------------------------
# Logs, role, connection, shutdown


def test_one_log_line_per_request_without_body_or_signature(shop, relay):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    marker = "relay-log-marker-" + ev.stripe_id("x")
    evt["data"]["object"]["description"] = marker
    body = ev.payload(evt)
    signature = ev.sign(body)
    assert relay.post(body, signature)[0] == 200
    assert relay.post(body, ev.sign(body, "whsec_wrong"))[0] == 400
    assert relay.request("GET")[0] == 405
    lines = request_lines(relay, expected=3)
    assert len(lines) == 3, lines
    applied, refused, get = lines
    for field in (f"event={evt['id']}", "type=payment_intent.succeeded", "outcome=applied",
                  "status=200", "method=POST", f"path={PATH}"):
        assert field in applied, (field, applied)
    assert re.search(r"duration_ms=\d+\.\d", applied)
    assert "status=400" in refused and "sqlstate=28" in refused
    assert "status=405" in get and "method=GET" in get
    log_text = relay.log()
    assert marker not in log_text
    v1 = signature.split("v1=")[1]
    assert v1 not in log_text and "v1=" not in log_text
    assert "password" not in log_text.lower()


def test_relay_role_is_only_payment_webhook_and_cannot_read_payment_tables(shop, relay):
    memberships = shop.rows("SELECT m.roleid::regrole::text AS role FROM pg_auth_members m"
                            " WHERE m.member = %s::regrole", (WEBHOOK,))
    assert [m["role"] for m in memberships] == ["payment_webhook"]
    assert "WARNING" not in relay.log()  # the relay's own check of its role
    conn = shop.connect(WEBHOOK)
    tables = [r["relname"] for r in shop.rows(
        "SELECT relname FROM pg_class WHERE relnamespace = 'payment'::regnamespace AND relkind = 'r'"
        " ORDER BY relname")]
    assert {"payments", "refunds", "recurring_payments", "events", "callbacks"} <= set(tables)
    for table in tables:
        denied(conn, f"SELECT * FROM payment.{table} LIMIT 1")
    denied(conn, "SELECT payment.retry_failed_events()")
    # ... and what it may do, it does through the relay.
    p = shop.payment()
    assert relay.post(ev.pi_event("payment_intent.succeeded", p.pi))[0] == 200


def test_relay_warns_when_its_role_can_do_more(shop, start_relay):
    relay = start_relay(shop, user="postgres")
    deadline = time.monotonic() + 10
    while "WARNING" not in relay.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "can do more than call process_stripe_event" in relay.log()


def test_relay_reconnects_after_its_connection_is_killed(shop, cluster, relay):
    p1, p2 = shop.payment(), shop.payment()
    assert relay.post(ev.pi_event("payment_intent.succeeded", p1.pi))[0] == 200
    killed = cluster.admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE usename = %s AND datname = %s", (WEBHOOK, shop.name)).fetchone()[0]
    assert killed >= 1
    deadline = time.monotonic() + 10
    while shop.value("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = %s",
                     (WEBHOOK, shop.name)) and time.monotonic() < deadline:
        time.sleep(0.05)
    status, res = relay.post(ev.pi_event("payment_intent.succeeded", p2.pi))
    assert (status, res["outcome"]) == (200, "applied")
    assert shop.payment_row(p2.id)["status"] == "succeeded"
    assert "reconnecting" in relay.log()


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(shop, relay):
    slow_handler(shop, 1.5)
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", relay.post(evt)), daemon=True)
    th.start()
    deadline = time.monotonic() + 10  # wait until the call is in the database
    while not shop.value("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND datname = %s"
                         " AND state = 'active'", (WEBHOOK, shop.name)):
        assert time.monotonic() < deadline, "the delivery never reached the database"
        time.sleep(0.02)
    relay.proc.send_signal(signal.SIGTERM)
    th.join(HTTP_TIMEOUT_S)
    assert result["r"][0] == 200 and result["r"][1]["outcome"] == "applied"
    assert relay.proc.wait(15) == 0
    log_text = relay.log()
    assert "stopping signal=SIGTERM" in log_text and "relay: stopped" in log_text
    with pytest.raises(OSError):
        socket.create_connection((HOST, relay.port), timeout=2).close()


def test_help_and_missing_database_url():
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    r = subprocess.run([sys.executable, str(RELAY), "--help"], env=env, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and "DATABASE_URL" in r.stdout and "payment_webhook" in r.stdout
    r = subprocess.run([sys.executable, str(RELAY)], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "DATABASE_URL is not set" in r.stderr


# --------------------------------------------------------------------------
# The PostgREST wrapper, called as PostgREST calls it

PGRST_ANON = "e2e_pgrst_anon"


@pytest.fixture
def pgrst(shop, cluster):
    cluster.admin.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{PGRST_ANON}') THEN
                CREATE ROLE {PGRST_ANON} NOLOGIN;
            END IF;
        END $$""")
    for _ in range(2):  # idempotent
        r = subprocess.run([str(PGBIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                            "-v", "api_schema=api", "-v", f"webhook_caller={PGRST_ANON}",
                            "-d", shop.name, "-f", str(WRAPPER_SQL)],
                           env=cluster.client_env(), capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    return shop


def pgrst_call(shop, function, body, headers, arg_type):
    """What PostgREST does for POST /rpc/<function>: a transaction, the
    anonymous role, request.headers as JSON with lower-cased names, the raw
    body bound as the single unnamed argument; then response.status."""
    conn = shop.connect(autocommit=False)
    try:
        conn.execute("SELECT set_config('role', %s, true)", (PGRST_ANON,))
        conn.execute("SELECT set_config('request.headers', %s, true)",
                     (json.dumps({k.lower(): v for k, v in headers.items()}),))
        result = conn.execute(f"SELECT api.{function}(%s::{arg_type})", (body,)).fetchone()[0]
        status = conn.execute("SELECT nullif(current_setting('response.status', true), '')").fetchone()[0]
        conn.commit()
        return int(status or 200), result
    except psycopg.Error:
        conn.rollback()
        raise
    finally:
        conn.close()


def test_postgrest_wrapper_json_body_keeps_the_exact_bytes(pgrst):
    shop = pgrst
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    evt["data"]["object"]["description"] = "Café crème ☕ — ½ off,   spaced\t\"quoted\""
    body = ev.payload(evt)  # pretty-printed, non-ASCII: any re-encoding breaks the signature
    status, res = pgrst_call(shop, "stripe_webhook", body,
                             {"Content-Type": "application/json; charset=utf-8",
                              "Stripe-Signature": ev.sign(body)}, "json")
    assert (status, res["outcome"]) == (200, "applied")
    assert shop.payment_row(p.id)["status"] == "succeeded"
    status, res = pgrst_call(shop, "stripe_webhook", body, {"Stripe-Signature": ev.sign(body)}, "text")
    assert (status, res["outcome"]) == (200, "duplicate")


def test_postgrest_wrapper_maps_refusals_to_pt400_and_failed_to_500(pgrst):
    shop = pgrst
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    body = ev.payload(evt)
    before = shop.snapshot()
    for headers in ({"Stripe-Signature": ev.sign(body, "whsec_wrong")}, {}):
        with pytest.raises(psycopg.Error) as info:
            pgrst_call(shop, "stripe_webhook", body, headers, "json")
        assert info.value.sqlstate == "PT400"
    assert shop.snapshot() == before

    shop.add_logging_callback("payment")
    shop.set_handlers_failing(True)
    status, res = pgrst_call(shop, "stripe_webhook", body, {"Stripe-Signature": ev.sign(body)}, "json")
    assert (status, res) == (500, {"event_id": evt["id"], "type": evt["type"], "outcome": "failed"})
    assert shop.event_row(evt["id"])["outcome"] == "failed"  # committed despite the 500


def test_postgrest_wrapper_named_function_and_its_grants(pgrst):
    shop = pgrst
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    body = ev.payload(evt)
    conn = shop.connect(autocommit=False)
    conn.execute(f"SET LOCAL ROLE {PGRST_ANON}")
    res = conn.execute("SELECT api.process_stripe_event(payload => %s, signature => %s)",
                       (body, ev.sign(body))).fetchone()[0]
    assert res["outcome"] == "applied"
    denied(conn, "SELECT 1 FROM payment.payments")
    conn.rollback()
    # The caller got EXECUTE on the wrappers, not membership of payment_webhook;
    # nobody else got anything.
    assert not shop.value("SELECT pg_has_role(%s, 'payment_webhook', 'MEMBER')", (PGRST_ANON,))
    acl = shop.rows("SELECT p.oid::regprocedure::text AS fn, p.proowner::regrole::text AS owner,"
                    " array(SELECT coalesce(r.rolname, 'PUBLIC') FROM aclexplode(p.proacl) a"
                    "       LEFT JOIN pg_roles r ON r.oid = a.grantee ORDER BY 1) AS grantees"
                    " FROM pg_proc p WHERE p.pronamespace = 'api'::regnamespace ORDER BY 1")
    assert len(acl) == 3
    for row in acl:
        assert row["owner"] == "stripe_webhook_api"
        assert set(row["grantees"]) == {PGRST_ANON, "stripe_webhook_api"}, row
    denied(shop.connect(OWNER), "SELECT api.stripe_webhook('{}'::json)")
