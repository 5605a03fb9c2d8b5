#!/usr/bin/env python3
"""The whole pg_payment loop, from nothing, narrated. Run by scripts/demo.

It starts a throwaway PostgreSQL 15 cluster (as the postgres user, on 127.0.0.1 and a
socket directory of its own), localstripe (a stateful fake Stripe, on 127.0.0.1, state in
the demo's directory) and the webhook relay of examples/webhook_relay, then walks through
what an application does: link its order table, configure keys, register a callback,
charge, let the customer pay, receive the signed webhook, refund, meet a declined card.
Everything it started, it stops.

With STRIPE_SECRET_KEY (sk_test_...) and STRIPE_WEBHOOK_SECRET (whsec_...) in the
environment it talks to Stripe's test mode instead of localstripe; Stripe must then reach
the relay: set RELAY_PORT=8787 and run `stripe listen --forward-to 127.0.0.1:8787/stripe/webhook`
(its printed secret is STRIPE_WEBHOOK_SECRET). That mode is documented, not run here.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "stripe_servers"))
from localstripe_server import LocalStripe  # noqa: E402

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEMO_WEBHOOK_SECRET = "whsec_demo_" + "d" * 24
DEMO_SECRET_KEY = "sk_test_demo_" + "k" * 20
DEMO_PUBLISHABLE_KEY = "pk_test_demo_" + "p" * 20


def say(text):
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def note(text):
    print(f"   {text}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def table(rows):
    if not rows:
        print("   (no rows)")
        return
    cols = list(rows[0].keys())
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [min(max(len(c), *(len(row[i]) for row in cells)), 40) for i, c in enumerate(cols)]
    line = lambda vals: "   " + " | ".join(v[:40].ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    print(line(cols))
    print("   " + "-+-".join("-" * w for w in widths))
    for row in cells:
        print(line(row))


class Cluster:
    """A throwaway cluster owned by postgres (initdb refuses root)."""

    def __init__(self, workdir):
        self.dir = Path(workdir) / "pg"
        self.dir.mkdir(parents=True)
        shutil.chown(self.dir, "postgres")
        self.data = self.dir / "data"
        self.port = free_port()

    def _as_postgres(self, *args, timeout=120):
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                              capture_output=True, text=True, timeout=timeout)

    def start(self):
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-E", "UTF8",
                          "--locale=C.UTF-8", "-A", "trust")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        env_clean = ["env", "-u", "RUST_BACKTRACE"]
        subprocess.run(["runuser", "-u", "postgres", "--", *env_clean, str(PG_BIN / "pg_ctl"), "-D",
                        str(self.data), "-o", opts, "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                        "start"], check=True, capture_output=True, text=True, timeout=90)

    def stop(self):
        try:
            self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30",
                              "stop", timeout=60)
        except Exception:
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)

    def conninfo(self, dbname="shop", user="postgres"):
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user}"

    def connect(self, dbname="shop", user="postgres"):
        return psycopg.connect(self.conninfo(dbname, user), autocommit=True, row_factory=dict_row)


class Relay:
    """examples/webhook_relay/relay.py, as a login role that only has payment_webhook."""

    def __init__(self, conninfo, workdir):
        # RELAY_PORT fixes the port, so `stripe listen --forward-to` can name it beforehand.
        self.port = int(os.environ.get("RELAY_PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}/stripe/webhook"
        env = dict(os.environ, DATABASE_URL=conninfo, RELAY_HOST="127.0.0.1", RELAY_PORT=str(self.port))
        self.log = open(Path(workdir) / "relay.log", "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / "webhook_relay" / "relay.py")],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the relay did not start; see relay.log")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def stripe_post(base, key, path, form):
    req = urllib.request.Request(f"{base}{path}", data=urllib.parse.urlencode(form).encode(),
                                 headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def wait_for_event(db, pi, kind, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute("SELECT id, type, outcome FROM payment.events WHERE type = %s "
                         "AND payload->'data'->'object'->>'id' = %s", (kind, pi)).fetchone()
        if row:
            return row
        time.sleep(0.2)
    raise RuntimeError(f"no {kind} webhook for {pi} arrived within {timeout}s")


def pay(base, key, pi, card, real_stripe):
    """The customer pays: what Stripe.js does with the client_secret, done server-side."""
    if real_stripe:
        stripe_post(base, key, f"/v1/payment_intents/{pi}/confirm",
                    {"payment_method": card, "return_url": "https://example.com/return"})
    else:
        # localstripe confirms only a PaymentIntent that already has its payment method.
        stripe_post(base, key, f"/v1/payment_intents/{pi}", {"payment_method": card})
        try:
            stripe_post(base, key, f"/v1/payment_intents/{pi}/confirm", {})
        except urllib.error.HTTPError as e:   # a declined card answers 402
            note(f"Stripe answered {e.code}: {json.loads(e.read())['error'].get('message')}")


def run(workdir):
    real_stripe = bool(os.environ.get("STRIPE_SECRET_KEY"))
    secret_key = os.environ.get("STRIPE_SECRET_KEY", DEMO_SECRET_KEY)
    webhook_secret = os.environ.get("STRIPE_WEBHOOK_SECRET", DEMO_WEBHOOK_SECRET)
    publishable_key = os.environ.get("STRIPE_PUBLISHABLE_KEY", DEMO_PUBLISHABLE_KEY)
    started = []
    try:
        say("Start a throwaway PostgreSQL 15 cluster")
        cluster = Cluster(workdir)
        cluster.start()
        started.append(cluster)
        note(f"listening on 127.0.0.1:{cluster.port}, data in {cluster.data}")

        if real_stripe:
            say("Use Stripe's test mode (STRIPE_SECRET_KEY is set)")
            api_base = "https://api.stripe.com"
        else:
            say("Start localstripe, a stateful fake Stripe that signs its webhooks")
            localstripe = LocalStripe.start(Path(workdir) / "localstripe")
            started.append(localstripe)
            api_base = localstripe.url
            note(f"listening on {api_base}, state in {localstripe.state_file}")

        admin = psycopg.connect(cluster.conninfo("postgres"), autocommit=True)
        admin.execute("CREATE DATABASE shop")
        db = cluster.connect()

        say("Install the extension (as a superuser)")
        db.execute("CREATE EXTENSION pg_payment")
        db.execute(f"ALTER DATABASE shop SET pg_payment.stripe_api_base = '{api_base}'")
        db.close()
        db = cluster.connect()
        note("schema payment, roles payment_owner/admin/app/webhook; "
             f"pg_payment.stripe_api_base = {api_base}")

        say("The app's own order table, linked once")
        db.execute("CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                   "user_id text, price numeric(12,2) NOT NULL, status text NOT NULL DEFAULT 'new')")
        db.execute("SELECT payment.link_order_table('orders', currency => 'usd')")
        note("SELECT payment.link_order_table('orders', currency => 'usd');")

        say("Configure the keys (passed as bind parameters, never as literals)")
        db.execute("SELECT payment.configure(%s, %s, %s)", (secret_key, publishable_key, webhook_secret))
        note(f"publishable_key() = {db.execute('SELECT payment.publishable_key() AS k').fetchone()['k']}")

        say("Business logic for the payment callback: mark the order paid")
        db.execute("""
            CREATE FUNCTION mark_order_paid(callback jsonb) RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE public.orders SET status = CASE callback->>'status'
                        WHEN 'succeeded' THEN 'paid' WHEN 'failed' THEN 'payment_failed'
                        WHEN 'partially_refunded' THEN 'partially_refunded' ELSE status END
                 WHERE id = (callback->>'order_id')::bigint;
            END $$""")
        # Handlers run as their owner and never as a superuser: an ordinary role owns it.
        db.execute("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'demo_shop') "
                   "THEN CREATE ROLE demo_shop NOLOGIN; END IF; END$$")
        db.execute("ALTER FUNCTION mark_order_paid(jsonb) OWNER TO demo_shop")
        db.execute("GRANT SELECT, UPDATE ON orders TO demo_shop")
        db.execute("SELECT payment.add_callback('payment', 'mark_order_paid(jsonb)')")
        note("ALTER FUNCTION mark_order_paid(jsonb) OWNER TO demo_shop;  -- an ordinary role")
        note("SELECT payment.add_callback('payment', 'mark_order_paid(jsonb)');")

        say("Start the webhook relay (a login role with only payment_webhook)")
        db.execute("CREATE ROLE demo_relay LOGIN")
        db.execute("GRANT payment_webhook TO demo_relay")
        relay = Relay(cluster.conninfo("shop", "demo_relay"), workdir)
        started.append(relay)
        note(f"relay at {relay.url}")
        if not real_stripe:
            localstripe.add_webhook("demo", relay.url, webhook_secret)
            note("localstripe sends its signed webhooks there")

        listener = cluster.connect()
        listener.execute("LISTEN pg_payment")
        note("a second connection LISTENs on channel pg_payment")

        say("An order, and a payment for it (amounts in minor units: 49.90 USD is 4990)")
        order = db.execute("INSERT INTO orders (user_id, price) VALUES ('alice', 49.90) RETURNING id").fetchone()["id"]
        try:
            db.execute("SELECT payment.create_payment(%s, 'usd', 49)", (order,))
        except psycopg.Error as e:
            note(f"create_payment(order, 'usd', 49) is refused before Stripe is called:\n     {e.diag.message_primary}")
        payment = db.execute("SELECT id, order_id, amount, currency, status, stripe_payment_intent_id, "
                             "left(client_secret, 24) || '...' AS client_secret "
                             "FROM payment.create_payment(%s, 'usd', 4990)", (order,)).fetchone()
        table([payment])
        pi = payment["stripe_payment_intent_id"]

        say("The customer pays with a test card (what Stripe.js does with the client_secret)")
        pay(api_base, secret_key, pi, "pm_card_visa", real_stripe)
        event = wait_for_event(db, pi, "payment_intent.succeeded")
        note(f"Stripe's signed webhook reached process_stripe_event through the relay: {event['type']} "
             f"-> {event['outcome']}")
        table(db.execute("SELECT id, status, amount_received FROM payment.payments WHERE id = %s",
                         (payment["id"],)).fetchall())
        table(db.execute("SELECT id, price, status FROM orders WHERE id = %s", (order,)).fetchall())
        heard = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        note(f"the LISTEN connection heard: {heard}")

        say("A partial refund of 10.00 USD (payment_admin)")
        refund = db.execute("SELECT id, payment_id, amount, status, stripe_refund_id "
                            "FROM payment.refund_payment(%s, 1000)", (payment["id"],)).fetchone()
        table([refund])
        table(db.execute("SELECT id, status, amount_received, amount_refunded FROM payment.payments WHERE id = %s",
                         (payment["id"],)).fetchall())
        if not real_stripe:
            note("localstripe sends no refund events: the rows show what its API answer said;"
                 " with Stripe, refund.created and charge.refunded would arrive and count once.")

        say("Another order, paid with a card that is declined")
        order2 = db.execute("INSERT INTO orders (user_id, price) VALUES ('bob', 15.00) RETURNING id").fetchone()["id"]
        declined = db.execute("SELECT id, stripe_payment_intent_id FROM payment.create_payment(%s, 'usd', 1500)",
                              (order2,)).fetchone()
        card = "pm_card_chargeDeclined" if real_stripe else "pm_card_chargeCustomerFail"
        pay(api_base, secret_key, declined["stripe_payment_intent_id"], card, real_stripe)
        event = wait_for_event(db, declined["stripe_payment_intent_id"], "payment_intent.payment_failed")
        note(f"webhook: {event['type']} -> {event['outcome']}")
        table(db.execute("SELECT id, status, failure_code, failure_message FROM payment.payments WHERE id = %s",
                         (declined["id"],)).fetchall())
        table(db.execute("SELECT id, status FROM orders WHERE id = %s", (order2,)).fetchall())

        say("The same webhook delivered again is a duplicate")
        body = db.execute("SELECT payload::text AS p FROM payment.events WHERE type = 'payment_intent.succeeded'").fetchone()["p"]
        t = int(time.time())
        import hashlib
        import hmac
        sig = f"t={t},v1=" + hmac.new(webhook_secret.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()
        req = urllib.request.Request(relay.url, data=body.encode(), headers={"Stripe-Signature": sig,
                                                                         "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            note(f"relay answered {resp.status}: {resp.read().decode()}")

        say("Everything Stripe sent, and everything pg_payment asked of Stripe")
        table(db.execute("SELECT id, type, outcome, error, created FROM payment.events ORDER BY received_at").fetchall())
        table(db.execute("SELECT id, method, path, http_status, duration_ms, error_type "
                         "FROM payment.api_requests ORDER BY id").fetchall())
        say("Done: the order table, the payments and Stripe agree.")
    finally:
        say("Stopping what the demo started")
        for thing in reversed(started):
            try:
                thing.stop()
            except Exception as e:   # keep stopping the rest
                note(f"could not stop {type(thing).__name__}: {e}")
        note("stopped")


def main():
    workdir = tempfile.mkdtemp(prefix="pg_payment_demo.")
    shutil.chown(workdir, "postgres")
    try:
        run(workdir)
    finally:
        if os.environ.get("KEEP_DEMO_DIR"):
            print(f"   demo files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
