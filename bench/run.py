#!/usr/bin/env python3
"""process_stripe_event against the cost of merely storing the raw event, measured in the
same run on the same throwaway cluster with pgbench; prints throughput ratios.

    bench/run.py [--clients 2] [--events 40000] [--async-commit]

Three workloads, each against its own baseline run (INSERT of the same payload into a
plain jsonb table): an event type that needs no work (customer.created), a
payment_intent.succeeded that moves a payment, and a duplicate delivery. Signed payloads
are prepared beforehand, so signing costs nothing inside the measured loop.
"""

import argparse
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SECRET = "whsec_bench_" + "b" * 24


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign(body, t):
    return f"t={t},v1=" + hmac.new(SECRET.encode(), f"{t}.{body}".encode(), hashlib.sha256).hexdigest()


def event(n, kind, obj):
    return json.dumps({"id": f"evt_bench_{kind.replace('.', '_')}_{n}", "object": "event", "type": kind,
                       "api_version": "2025-03-31.basil", "created": 1_700_000_000 + n, "livemode": False,
                       "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None},
                       "data": {"object": obj}}, indent=2)


def customer(n):
    return {"id": f"cus_bench{n}", "object": "customer", "email": f"user{n}@example.com", "name": f"User {n}",
            "metadata": {}, "created": 1_700_000_000, "livemode": False, "balance": 0, "currency": "usd",
            "invoice_settings": {"default_payment_method": None, "footer": None}}


def intent(n):
    return {"id": f"pi_bench{n}", "object": "payment_intent", "amount": 1000, "amount_received": 1000,
            "currency": "usd", "status": "succeeded", "latest_charge": f"ch_bench{n}",
            "metadata": {}, "created": 1_700_000_000, "livemode": False,
            "payment_method_types": ["card"], "capture_method": "automatic"}


def pgbench(port, script, transactions, clients):
    """A fixed number of transactions per client: a timed run could use up the prepared
    events and then measure empty transactions."""
    out = subprocess.run([str(PG_BIN / "pgbench"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                          "-n", "-t", str(transactions), "-c", str(clients), "-j", str(clients), "-f", script,
                          "bench"], capture_output=True, text=True, check=True)
    return float(re.search(r"tps = ([0-9.]+)", out.stdout).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--events", type=int, default=40000, help="prepared events of each kind")
    ap.add_argument("--async-commit", action="store_true",
                    help="synchronous_commit = off: measure the CPU cost, not the disk's fsync")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pg_payment_bench."))
    shutil.chown(work, "postgres")
    data, port = work / "data", free_port()
    run = lambda *a: subprocess.run(["runuser", "-u", "postgres", "--", *a], check=True,  # noqa: E731
                                    capture_output=True, text=True)
    run(str(PG_BIN / "initdb"), "-D", str(data), "-E", "UTF8", "--locale=C.UTF-8", "-A", "trust")
    run("env", "-u", "RUST_BACKTRACE", str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(work / "log"), "-w",
        "-o", f"-p {port} -k {work} -c listen_addresses=127.0.0.1", "start")
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        conn = psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=bench", autocommit=True)
        conn.execute("CREATE EXTENSION pg_payment")
        conn.execute("SELECT payment.configure(%s, NULL, %s)", ("sk_test_" + "k" * 24, SECRET))
        conn.execute("ALTER DATABASE bench SET pg_payment.webhook_tolerance_s = 0")
        conn.execute("CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "user_id text, price numeric NOT NULL, status text NOT NULL DEFAULT 'new')")
        conn.execute("SELECT payment.link_order_table('public.orders', currency => 'usd')")
        conn.execute("CREATE TABLE bench_events (kind text, n int, payload text, signature text, "
                     "PRIMARY KEY (kind, n))")
        conn.execute("CREATE TABLE raw_events (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        t = int(time.time())
        with conn.cursor() as cur:
            with cur.copy("COPY bench_events FROM STDIN") as copy:
                for n in range(args.events):
                    for kind, body in (("unhandled", event(n, "customer.created", customer(n))),
                                       ("payment", event(n, "payment_intent.succeeded", intent(n)))):
                        copy.write_row((kind, n, body, sign(body, t)))
        conn.execute("INSERT INTO public.orders (price) SELECT 10 FROM generate_series(1, %s)", (args.events,))
        conn.execute("INSERT INTO payment.payments (order_id, amount, currency, stripe_payment_intent_id) "
                     "SELECT n, 1000, 'usd', 'pi_bench' || (n - 1) FROM generate_series(1, %s) n", (args.events,))
        for name in ("s_base_unhandled", "s_unhandled", "s_base_payment", "s_payment"):
            conn.execute(f"CREATE SEQUENCE {name} MINVALUE 0 START 0")
        conn.execute("VACUUM ANALYZE")

        # The row is picked by a pgbench variable, never by nextval() in a WHERE clause (a
        # volatile function there runs once per row scanned).
        def pick(seq, kind):
            return f"SELECT nextval('{seq}') AS n \\gset\n", f"kind = '{kind}' AND n = :n"

        scripts = {}
        for name, kind in (("unhandled", "unhandled"), ("payment", "payment")):
            get, where = pick(f"s_base_{name}", kind)
            scripts[f"base_{name}"] = get + f"INSERT INTO raw_events (payload) SELECT payload::jsonb FROM bench_events WHERE {where};"
            get, where = pick(f"s_{name}", kind)
            scripts[name] = get + f"SELECT payment.process_stripe_event(payload, signature) FROM bench_events WHERE {where};"
        scripts["duplicate"] = ("SELECT payment.process_stripe_event(payload, signature) FROM bench_events "
                                "WHERE kind = 'unhandled' AND n = 0;")
        paths = {}
        for name, sql in scripts.items():
            paths[name] = work / f"{name}.sql"
            paths[name].write_text(sql + "\n")
        if args.async_commit:
            conn.execute("ALTER DATABASE bench SET synchronous_commit = off")
        per_client = args.events // args.clients
        tps = {name: pgbench(port, str(paths[name]), per_client, args.clients)
               for name in ("base_unhandled", "unhandled", "base_payment", "payment", "duplicate")}
        print(f"{'workload':<28}{'tps':>10}{'baseline tps':>14}{'ratio':>8}")
        for name, base in (("unhandled", "base_unhandled"), ("payment", "base_payment"),
                           ("duplicate", "base_unhandled")):
            print(f"{name:<28}{tps[name]:>10.0f}{tps[base]:>14.0f}{tps[name] / tps[base]:>8.2f}")
        applied = conn.execute("SELECT outcome, count(*) FROM payment.events GROUP BY 1").fetchall()
        print("events by outcome:", dict(applied))
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "-w", "stop"], capture_output=True)
        if not os.environ.get("KEEP_BENCH_DIR"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    main()
