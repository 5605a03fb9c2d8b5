"""End-to-end fixtures: a throwaway PostgreSQL 15 cluster, a fresh database per
test with pg_payment created in it, and small helpers to make orders, payments
and subscriptions and to deliver signed Stripe events the way a relay would.

The extension must already be installed into the system PostgreSQL 15
(`cargo pgrx install`); these tests never build it.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

import stripe_events as ev
import sys as _sys

_sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stripe_servers"))
from fake_stripe import FakeStripe  # noqa: E402
from e2e_helpers import ADMIN, APP, LOGIN_ROLES, OWNER, RELEASED, WEBHOOK, require_extension

PGBIN = Path(os.environ.get("PG_PAYMENT_PGBIN", "/usr/lib/postgresql/15/bin"))
HOST = "127.0.0.1"


# Every test connection is bounded: a hung lock wait fails the test instead of
# hanging the suite.
CONN_OPTIONS = "-c statement_timeout=120000"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, pgbin=PGBIN):
        self.pgbin = Path(pgbin)
        self.base = Path(tempfile.mkdtemp(prefix="pg_payment_e2e_"))
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        self.port = None
        self.admin = None
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base, 0o700)

    def _cmd(self, *args):
        cmd = [str(a) for a in args]
        return ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else cmd

    def _run(self, *args, timeout=120):
        return subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)

    def start(self):
        r = self._run(self.pgbin / "initdb", "-D", self.data, "-E", "UTF8", "--locale=C.UTF-8",
                      "-A", "trust", "-U", "postgres", "--no-sync", timeout=180)
        if r.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")
        last = None
        for _ in range(3):  # the free port may be taken between probe and bind
            port = _free_port()
            opts = (f"-p {port} -k {self.base} -c listen_addresses={HOST} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                    "-c max_connections=60 -c lc_messages=C")
            r = self._run(self.pgbin / "pg_ctl", "-D", self.data, "-l", self.log_path, "-w",
                          "-t", "60", "-o", opts, "start", timeout=90)
            if r.returncode == 0:
                self.port = port
                break
            last = r
        else:
            tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
            raise RuntimeError(f"pg_ctl start failed:\n{last.stdout}\n{last.stderr}\n{tail}")
        self.admin = self.connect("postgres")
        for role in LOGIN_ROLES:
            self.admin.execute(f"CREATE ROLE {role} LOGIN NOSUPERUSER")

    def stop(self):
        if self.admin is not None:
            try:
                self.admin.close()
            except Exception:
                pass
        stopped = False
        if self.data.exists():
            try:
                r = self._run(self.pgbin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30",
                              "stop", timeout=45)
                stopped = r.returncode == 0
            except subprocess.TimeoutExpired:
                stopped = False
            if not stopped:
                self._kill_postmaster()
        # For a post-mortem: PG_PAYMENT_KEEP_LOG=path keeps the server log of the run.
        keep = os.environ.get("PG_PAYMENT_KEEP_LOG")
        if keep and self.log_path.exists():
            shutil.copy(self.log_path, keep)
        shutil.rmtree(self.base, ignore_errors=True)

    def _kill_postmaster(self):
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return
        for sig, wait in ((signal.SIGQUIT, 10), (signal.SIGKILL, 5)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.1)

    def conninfo(self, dbname, user="postgres"):
        return psycopg.conninfo.make_conninfo(host=HOST, port=self.port, dbname=dbname,
                                              user=user, options=CONN_OPTIONS,
                                              connect_timeout=10)

    def connect(self, dbname, user="postgres", autocommit=True):
        return psycopg.connect(self.conninfo(dbname, user), autocommit=autocommit)

    def client_env(self):
        env = dict(os.environ)
        env.update(PGHOST=HOST, PGPORT=str(self.port), PGUSER="postgres",
                   PGOPTIONS="-c statement_timeout=120000")
        return env

    def pg_dump(self, dbname, path):
        return subprocess.run([str(self.pgbin / "pg_dump"), "-f", str(path), dbname],
                              env=self.client_env(), capture_output=True, text=True, timeout=120)

    def psql_file(self, dbname, path):
        return subprocess.run([str(self.pgbin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                               "-d", dbname, "-f", str(path)],
                              env=self.client_env(), capture_output=True, text=True, timeout=120)

    def server_log(self):
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def cluster():
    c = Cluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


# --------------------------------------------------------------------------
# A database with the extension


@dataclass
class Payment:
    id: int
    order_id: int
    pi: str
    amount: int
    currency: str
    charge: str | None = None


@dataclass
class Subscription:
    id: int
    order_id: int
    sub: str
    customer: str
    price_id: str


class Database:
    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self._conns = []
        self.conn = self.connect()
        self._app_schema = False

    # -- connections and queries ------------------------------------------

    def connect(self, user="postgres", autocommit=True):
        c = self.cluster.connect(self.name, user=user, autocommit=autocommit)
        self._conns.append(c)
        return c

    def close(self):
        for c in self._conns:
            try:
                c.close()
            except Exception:
                pass

    def rows(self, sql, params=None, conn=None):
        with (conn or self.conn).cursor(row_factory=dict_row) as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def row(self, sql, params=None, conn=None):
        r = self.rows(sql, params, conn)
        return r[0] if r else None

    def value(self, sql, params=None, conn=None):
        with (conn or self.conn).cursor() as cur:
            cur.execute(sql, params)
            r = cur.fetchone()
            return None if r is None else r[0]

    # -- the extension -----------------------------------------------------

    def configure(self, secret_key=ev.SECRET_KEY, publishable_key=ev.PUBLISHABLE_KEY,
                  webhook_secret=ev.WEBHOOK_SECRET, conn=None):
        (conn or self.conn).execute("SELECT payment.configure(%s::text, %s::text, %s::text)",
                                    (secret_key, publishable_key, webhook_secret))

    def deliver(self, evt, *, secret=ev.WEBHOOK_SECRET, t=None, header=None, conn=None):
        """Pass a body and its Stripe-Signature header to process_stripe_event,
        as a relay does. Returns the jsonb result as a dict."""
        body = ev.payload(evt)
        sig = header if header is not None else ev.sign(body, secret, t)
        with (conn or self.conn).cursor() as cur:
            cur.execute("SELECT payment.process_stripe_event(%s::text, %s::text)", (body, sig))
            return cur.fetchone()[0]

    def event_count(self):
        return self.value("SELECT count(*) FROM payment.events")

    def event_row(self, event_id):
        return self.row("SELECT * FROM payment.events WHERE id = %s", (event_id,))

    def snapshot(self):
        """Everything the extension writes, to compare before and after."""
        return {
            t: self.rows(f"SELECT * FROM payment.{t} ORDER BY id")
            for t in ("payments", "refunds", "recurring_payments", "events")
        }

    # -- the app's own schema and business logic ---------------------------

    def app_schema(self):
        """Schema `app`, owned by the non-superuser OWNER, with a log the
        handlers write to and a switch that makes them raise."""
        if self._app_schema:
            return
        self.conn.execute(f"CREATE SCHEMA app AUTHORIZATION {OWNER}")
        owner = self.owner_conn()
        owner.execute("""
            CREATE TABLE app.callback_log (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                kind text, who text, cb jsonb, logged_at timestamptz DEFAULT clock_timestamp())
        """)
        owner.execute("CREATE TABLE app.flags (fail boolean NOT NULL)")
        owner.execute("INSERT INTO app.flags VALUES (false)")
        self._app_schema = True

    def owner_conn(self):
        if not hasattr(self, "_owner"):
            self._owner = self.connect(OWNER)
        return self._owner

    def add_logging_callback(self, kind, name=None):
        """A handler owned by OWNER that logs what it is given and who runs it,
        registered for `kind`. Returns its regprocedure text."""
        self.app_schema()
        name = name or f"log_{kind}"
        owner = self.owner_conn()
        owner.execute(f"""
            CREATE FUNCTION app.{name}(cb jsonb) RETURNS void LANGUAGE plpgsql AS $fn$
            BEGIN
                IF (SELECT fail FROM app.flags) THEN
                    RAISE EXCEPTION 'e2e handler refuses event %', cb->>'event_id';
                END IF;
                INSERT INTO app.callback_log (kind, who, cb) VALUES (cb->>'kind', current_user, cb);
            END
            $fn$
        """)
        sig = f"app.{name}(jsonb)"
        owner.execute("SELECT payment.add_callback(%s::text, %s::regprocedure)", (kind, sig))
        return sig

    def set_handlers_failing(self, fail):
        self.owner_conn().execute("UPDATE app.flags SET fail = %s", (fail,))

    def callback_log(self, kind=None):
        if kind is None:
            return self.rows("SELECT * FROM app.callback_log ORDER BY id")
        return self.rows("SELECT * FROM app.callback_log WHERE kind = %s ORDER BY id", (kind,))


class Shop(Database):
    """A configured database whose order table `public.orders` is linked."""

    def create_orders(self):
        self.conn.execute("""
            CREATE TABLE public.orders (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                user_id text,
                price numeric(12,2) NOT NULL,
                status text NOT NULL DEFAULT 'new',
                currency text NOT NULL DEFAULT 'usd')
        """)
        self.conn.execute("SELECT payment.link_order_table('public.orders', currency_column => 'currency')")

    def order(self, price="10.00", user_id="user_1", status="new", currency="usd"):
        return self.value("INSERT INTO public.orders (user_id, price, status, currency) VALUES (%s, %s, %s, %s)"
                          " RETURNING id", (user_id, price, status, currency))

    def payment(self, order_id=None, amount=1000, currency="usd", status="pending", pi=None,
                livemode=False):
        if order_id is None:
            order_id = self.order(price=f"{amount / 100:.2f}")
        pi = pi or ev.stripe_id("pi")
        pid = self.value(
            "INSERT INTO payment.payments (order_id, amount, currency, status, stripe_payment_intent_id, livemode)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (order_id, amount, currency, status, pi, livemode))
        return Payment(pid, order_id, pi, amount, currency)

    def paid_payment(self, amount=1000, currency="usd", api_version=ev.NEW_API, created=None):
        """A payment moved to succeeded by its payment_intent.succeeded event."""
        p = self.payment(amount=amount, currency=currency)
        p.charge = ev.stripe_id("ch")
        created = ev.now() - 600 if created is None else created
        res = self.deliver(ev.pi_event("payment_intent.succeeded", p.pi, amount=amount,
                                       currency=currency, api_version=api_version,
                                       created=created, charge_id=p.charge))
        assert res["outcome"] == "applied", res
        return p

    def subscription(self, order_id=None, price_id="price_e2eMonthly", status="incomplete"):
        if order_id is None:
            order_id = self.order(price="10.00", user_id="subscriber_1")
        customer, sub = ev.stripe_id("cus"), ev.stripe_id("sub")
        rid = self.value(
            "INSERT INTO payment.recurring_payments (order_id, price_id, stripe_customer_id, stripe_subscription_id, status)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (order_id, price_id, customer, sub, status))
        return Subscription(rid, order_id, sub, customer, price_id)

    def payment_row(self, pid):
        return self.row("SELECT * FROM payment.payments WHERE id = %s", (pid,))

    def recurring_row(self, rid):
        return self.row("SELECT * FROM payment.recurring_payments WHERE id = %s", (rid,))

    def refunds_of(self, pid):
        return self.rows("SELECT * FROM payment.refunds WHERE payment_id = %s ORDER BY id", (pid,))


def _grant_memberships(conn):
    conn.execute(f"GRANT payment_admin TO {OWNER}, {ADMIN}")
    conn.execute(f"GRANT payment_app TO {APP}")
    conn.execute(f"GRANT payment_webhook TO {WEBHOOK}")


def _new_database(cluster, cls):
    require_extension()
    name = "e2e_" + uuid.uuid4().hex[:12]
    cluster.admin.execute(f'CREATE DATABASE "{name}"')
    return cls(cluster, name)


@pytest.fixture(scope="session")
def default_stripe(tmp_path_factory):
    """A fake Stripe every test database calls unless the test points it elsewhere, so no
    test ever reaches past this machine (the default API base is Stripe's own). It knows
    none of the tests' hand-made objects: listing an invoice's payments there finds none."""
    server = FakeStripe.start(tmp_path_factory.mktemp("default_stripe"), webhook_secret=ev.WEBHOOK_SECRET)
    try:
        yield server
    finally:
        server.stop()


def _call_stripe_at(d, url):
    d.conn.execute(f'ALTER DATABASE "{d.name}" SET pg_payment.stripe_api_base = \'{url}\'')
    d.conn.execute(f"SET pg_payment.stripe_api_base = '{url}'")


@pytest.fixture
def fake(tmp_path):
    """The project's own fake Stripe (tests/stripe_servers/fake_stripe.py), on 127.0.0.1,
    stopped by PID after the test."""
    server = FakeStripe.start(tmp_path / "fake_stripe", webhook_secret=ev.WEBHOOK_SECRET)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def install_mode():
    """How `db` and `shop` get the extension: "fresh" (CREATE EXTENSION) or "upgraded"
    (0.1.0's released script, then ALTER EXTENSION UPDATE). A test module overrides
    this fixture with both params to run its tests on both."""
    return "fresh"


def create_extension(conn, install_mode):
    if install_mode == "upgraded":
        conn.execute(f"CREATE EXTENSION pg_payment VERSION '{RELEASED[0]}'")
        conn.execute("ALTER EXTENSION pg_payment UPDATE")
    else:
        conn.execute("CREATE EXTENSION pg_payment")


def _drop_database(cluster, d):
    d.close()
    cluster.admin.execute(f'DROP DATABASE IF EXISTS "{d.name}" WITH (FORCE)')


@pytest.fixture
def new_database(cluster, default_stripe):
    """Factory for extra empty databases (dropped after the test), calling the local fake
    Stripe like every test database."""
    made = []

    def make(create_sql_suffix=""):
        name = "e2e_" + uuid.uuid4().hex[:12]
        cluster.admin.execute(f'CREATE DATABASE "{name}" {create_sql_suffix}')
        cluster.admin.execute(f'ALTER DATABASE "{name}" SET pg_payment.stripe_api_base = '
                              f"'{default_stripe.url}'")
        d = Database(cluster, name)
        made.append(d)
        return d

    yield make
    for d in made:
        _drop_database(cluster, d)


@pytest.fixture
def db(cluster, install_mode, default_stripe):
    """A fresh database with pg_payment created and the test roles granted."""
    d = _new_database(cluster, Database)
    try:
        create_extension(d.conn, install_mode)
        _call_stripe_at(d, default_stripe.url)
        _grant_memberships(d.conn)
        yield d
    finally:
        _drop_database(cluster, d)


@pytest.fixture
def shop(cluster, install_mode, default_stripe):
    """A fresh database with pg_payment configured (test keys) and public.orders linked."""
    d = _new_database(cluster, Shop)
    try:
        create_extension(d.conn, install_mode)
        _call_stripe_at(d, default_stripe.url)
        _grant_memberships(d.conn)
        d.configure()
        d.create_orders()
        yield d
    finally:
        _drop_database(cluster, d)
