#!/usr/bin/env python3
"""Run localstripe (PyPI, 1.15.10) safely for tests, and catch its webhooks.

Why a wrapper: localstripe's own command (`localstripe --port N`) listens on every
interface (it binds `::`), and its state is a pickle at the fixed path
/tmp/localstripe.pickle (shared by every run on the machine, and reloaded at start
unless --from-scratch). Here, this file run as a script is the launcher: it
imports localstripe, points the Store's load/dump at <state-dir>/localstripe.pickle,
binds 127.0.0.1 only on a free port (or the one given), writes
<state-dir>/localstripe.pid and .port, and runs localstripe's own aiohttp `app`. It
exits after --max-lifetime seconds or when its parent process goes away.

    ls = LocalStripe.start(tmp_path)       # url, pid, port, state_file
    ls.add_webhook("e2e", catcher.url, "whsec_...", events=["payment_intent.succeeded"])
    ...
    ls.stop()                              # SIGTERM by PID, SIGKILL after a bounded wait

How localstripe sends webhooks (read in localstripe/server.py and webhooks.py):
  - POST /_config/webhooks/{name} with {"url", "secret", "events"?} (JSON or form;
    no API key needed under /_config/) registers an endpoint; `url` must start
    with "http" and `events`, when given, must be a list of event types (None =
    all). Registering the same name again replaces it. Registrations live in a
    module-level dict, NOT in the pickle: they are lost on restart.
  - DELETE /_config/data empties the store (objects), keeping the webhooks.
  - When an object changes, localstripe schedules a coroutine that sleeps 1 s and then
    POSTs the event to every matching endpoint, one attempt, no retry, result only
    logged. Body: json.dumps(event, indent=2, sort_keys=True), UTF-8;
    headers `Content-Type: application/json; charset=utf-8` and
    `Stripe-Signature: t=<event.created>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`:
    Stripe's scheme, so stripe.Webhook.construct_event verifies it. The secret is
    used as given (any string; whsec_ is not required).
  - Events carry api_version "2017-08-15" and localstripe's own object shapes: a
    PaymentIntent has both `charges` (a list) and `latest_charge`, and
    `latest_charge` is an expanded Charge object, not an id as at Stripe.

What it does and does not do (verified in the 1.15.10 source):
  - Does: customers, payment methods (pm_card_visa, pm_card_visa_chargeDeclined,
    pm_card_chargeCustomerFail, or card details), PaymentIntents (create with
    payment_method + confirm=true, or /confirm without parameters; 3-D Secure via
    /_authenticate), charges, refunds (by charge or payment_intent), plans,
    products, subscriptions with `items[0][plan]`, invoices. The only events it
    emits: payment_intent.succeeded / payment_failed, customer.created / updated /
    deleted / source.created, customer.subscription.created / deleted (no
    .updated), invoice.created / payment_succeeded / payment_failed,
    balance.available, plan.created, product.created, payout.*.
  - Does not: Prices (subscription items need `plan`; items[0][price] is a 400
    "Bad request"), `payment_behavior=default_incomplete` (only allow_incomplete and
    error_if_incomplete), Checkout, idempotency (Idempotency-Key is ignored: a
    replay creates a second object), any refund.* or charge.refunded event,
    invoice.paid, renewals (invoices always have billing_reason null; nothing
    bills a new period),
    Request-Id headers, confirm with a `payment_method` parameter (500 Not
    implemented). Every parameter it does not know is a 400 ("Unexpected ..."), e.g.
    `automatic_payment_methods` or a refund's `reason`. Errors are
    {"error": {"type": "invalid_request_error", "message"}}, even a 402 decline
    (code card_declined, but type invalid_request_error, no decline_code), and 401
    "Unauthorized" for a missing or non-sk_ key. No charge.* or setup_intent.* events.
"""

import argparse
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time

from server_process import ServerProcess
import urllib.request

PICKLE_NAME = "localstripe.pickle"


# --------------------------------------------------------------------------
# Launcher (runs in the child process)


def _patch_store_path(path):
    # localstripe hard-codes /tmp/localstripe.pickle inside Store's two methods;
    # replacing the methods on the class also moves the already-created `store`.
    import pickle

    from localstripe import resources

    def try_load_from_disk(self):
        try:
            with open(path, "rb") as f:
                old = pickle.load(f)
        except FileNotFoundError:
            return
        self.clear()
        self.update(old)

    def dump_to_disk(self):
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)

    resources.Store.try_load_from_disk = try_load_from_disk
    resources.Store.dump_to_disk = dump_to_disk
    return resources.store


def _watchdog(max_lifetime, parent_pid):
    deadline = time.monotonic() + max_lifetime
    while time.monotonic() < deadline:
        if parent_pid and os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(0.5)
    os._exit(0)


def main(argv=None):
    ap = argparse.ArgumentParser(description="localstripe on 127.0.0.1 with a private state file")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--keep-state", action="store_true",
                    help="load the pickle left by an earlier run in --state-dir")
    ap.add_argument("--max-lifetime", type=float, default=3600.0)
    ap.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args(argv)

    os.makedirs(args.state_dir, exist_ok=True)
    store = _patch_store_path(os.path.join(args.state_dir, PICKLE_NAME))
    if args.keep_state:
        store.try_load_from_disk()

    import logging

    from aiohttp import web
    from localstripe.server import app  # routes are registered at import

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))  # loopback only
    base = os.path.join(args.state_dir, "localstripe")
    with open(base + ".pid", "w") as f:
        f.write(f"{os.getpid()}\n")
    with open(base + ".port.tmp", "w") as f:
        f.write(f"{sock.getsockname()[1]}\n")
    os.replace(base + ".port.tmp", base + ".port")

    threading.Thread(target=_watchdog, args=(args.max_lifetime, args.parent_pid),
                     daemon=True).start()
    access = logging.getLogger("aiohttp.access")  # also logs webhook deliveries
    access.setLevel(logging.INFO)
    access.addHandler(logging.StreamHandler())
    web.run_app(app, sock=sock, print=None, access_log=access, shutdown_timeout=1.0)


# --------------------------------------------------------------------------
# Test-side API


def _http(method, url, data=None, headers=None, timeout=10):
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class LocalStripe(ServerProcess):
    """A running localstripe subprocess bound to 127.0.0.1."""

    def __init__(self, proc, state_dir, port):
        self.proc = proc
        self.pid = proc.pid
        self.state_dir = str(state_dir)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.state_file = os.path.join(self.state_dir, PICKLE_NAME)

    @classmethod
    def start(cls, state_dir, *, keep_state=False, max_lifetime=3600.0,
              startup_timeout=20.0, python=None):
        state_dir = str(state_dir)
        os.makedirs(state_dir, exist_ok=True)
        base = os.path.join(state_dir, "localstripe")
        for suffix in (".port", ".pid"):
            if os.path.exists(base + suffix):
                os.unlink(base + suffix)
        log = open(base + ".log", "ab")
        cmd = [python or sys.executable, os.path.abspath(__file__), "--port", "0",
               "--state-dir", state_dir, "--max-lifetime", str(max_lifetime),
               "--parent-pid", str(os.getpid())]
        if keep_state:
            cmd.append("--keep-state")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        log.close()
        deadline = time.monotonic() + startup_timeout
        inst = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"localstripe exited with {proc.returncode}; see {base}.log")
            if inst is None:
                try:
                    with open(base + ".port") as f:
                        inst = cls(proc, state_dir, int(f.read()))
                except (FileNotFoundError, ValueError):
                    time.sleep(0.05)
                    continue
            try:  # answers only once the aiohttp app is really serving
                _http("GET", inst.url + "/v1/customers?limit=1",
                      headers={"Authorization": "Bearer sk_test_ready"}, timeout=1)
                return inst
            except OSError:
                time.sleep(0.1)
        if inst is None:
            inst = cls(proc, state_dir, 0)
        inst.stop()
        raise RuntimeError(f"localstripe did not answer within {startup_timeout}s; see {base}.log")

    def add_webhook(self, name, url, secret, events=None):
        """POST /_config/webhooks/{name}: localstripe will POST signed events to url."""
        data = {"url": url, "secret": secret}
        if events is not None:
            data["events"] = list(events)
        status, _ = _http("POST", f"{self.url}/_config/webhooks/{name}", data)
        return status

    def flush(self):
        """DELETE /_config/data: forget every object (webhooks stay)."""
        return _http("DELETE", f"{self.url}/_config/data")[0]


class WebhookCatcher:
    """A tiny threaded HTTP receiver on 127.0.0.1 that keeps what it is POSTed.

        with WebhookCatcher() as catcher:
            ls.add_webhook("t", catcher.url, secret)
            body, sig = catcher.wait(type="payment_intent.succeeded")[0]

    `received` holds (raw body bytes, Stripe-Signature header or None) in arrival
    order; `status` is what it answers (200 unless a test wants Stripe's retry path).
    """

    def __init__(self, status=200):
        self.status = status
        self.received = []
        self._cond = threading.Condition()
        catcher = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                with catcher._cond:
                    catcher.received.append((body, self.headers.get("Stripe-Signature")))
                    catcher._cond.notify_all()
                self.send_response(catcher.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._srv.daemon_threads = True
        self.port = self._srv.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/webhook"
        self._thread = threading.Thread(target=self._srv.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def wait(self, count=1, timeout=10.0, type=None):
        """The first `count` deliveries (of event `type`, if given); waits at most
        `timeout` seconds and raises TimeoutError otherwise."""
        def matching():
            if type is None:
                return list(self.received)
            return [r for r in self.received if _event_type(r[0]) == type]

        deadline = time.monotonic() + timeout
        with self._cond:
            while len(matching()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [_event_type(b) for b, _ in self.received]
                    raise TimeoutError(f"wanted {count} x {type or 'any'}, got {got}")
                self._cond.wait(left)
            return matching()[:count]

    def stop(self):
        self._srv.shutdown()
        self._srv.server_close()
        self._thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _event_type(body):
    try:
        return json.loads(body).get("type")
    except ValueError:
        return None


if __name__ == "__main__":
    main()
