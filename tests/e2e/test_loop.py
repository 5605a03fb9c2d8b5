"""The whole loop with real third-party parts: localstripe creates and charges the
PaymentIntent and signs its webhook, the example relay (examples/webhook_relay) passes it
to process_stripe_event as a role that only has payment_webhook, the app's callback marks
the order, and a LISTEN connection hears it."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import stripe_events as ev
from e2e_helpers import OWNER, WEBHOOK

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "stripe_servers"))
from localstripe_server import LocalStripe  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def loop(shop, tmp_path):
    """localstripe → relay → the shop database, all on 127.0.0.1, all stopped afterwards."""
    localstripe = LocalStripe.start(tmp_path / "localstripe")
    port = free_port()
    env = dict(os.environ, DATABASE_URL=shop.cluster.conninfo(shop.name, user=WEBHOOK),
               RELAY_HOST="127.0.0.1", RELAY_PORT=str(port))
    log = open(tmp_path / "relay.log", "w")
    relay = subprocess.Popen([sys.executable, str(ROOT / "examples" / "webhook_relay" / "relay.py")],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "relay.log").read_text()
                time.sleep(0.1)
        relay_url = f"http://127.0.0.1:{port}/stripe/webhook"
        localstripe.add_webhook("e2e", relay_url, ev.WEBHOOK_SECRET)
        shop.conn.execute(f"SET pg_payment.stripe_api_base = '{localstripe.url}'")
        shop.conn.execute("""
            CREATE FUNCTION public.mark_order(callback jsonb) RETURNS void LANGUAGE plpgsql AS $$
            BEGIN
                UPDATE public.orders SET status = CASE callback->>'status'
                    WHEN 'succeeded' THEN 'paid' WHEN 'failed' THEN 'payment_failed' ELSE status END
                 WHERE id = (callback->>'order_id')::bigint;
            END $$""")
        # Handlers never run as a superuser: the app's ordinary role owns this one.
        shop.conn.execute(f"ALTER FUNCTION public.mark_order(jsonb) OWNER TO {OWNER}")
        shop.conn.execute(f"GRANT SELECT, UPDATE ON public.orders TO {OWNER}")
        shop.conn.execute("SELECT payment.add_callback('payment', 'public.mark_order(jsonb)')")
        yield {"shop": shop, "localstripe": localstripe, "relay_url": relay_url}
    finally:
        relay.terminate()
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
        log.close()
        localstripe.stop()


def customer_pays(localstripe, pi, card):
    """What Stripe.js does with the client_secret; localstripe wants the card attached first."""
    def post(path, form):
        req = urllib.request.Request(localstripe.url + path, data=urllib.parse.urlencode(form).encode(),
                                     headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code
    assert post(f"/v1/payment_intents/{pi}", {"payment_method": card}) == 200
    return post(f"/v1/payment_intents/{pi}/confirm", {})


def wait_for(shop, sql, params, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = shop.row(sql, params)
        if row:
            return row
        time.sleep(0.1)
    raise AssertionError(f"nothing for {sql} {params} within {timeout}s")


def test_a_payment_travels_from_localstripe_through_the_relay_to_the_order(loop):
    shop, localstripe = loop["shop"], loop["localstripe"]
    listener = shop.connect()
    listener.execute("LISTEN pg_payment")
    order = shop.order(price="25.00")
    payment = shop.row("SELECT * FROM payment.create_payment(%s, 'usd', 2500)", (order,))

    assert customer_pays(localstripe, payment["stripe_payment_intent_id"], "pm_card_visa") == 200
    event = wait_for(shop, "SELECT * FROM payment.events WHERE type = 'payment_intent.succeeded' "
                           "AND payload->'data'->'object'->>'id' = %s", (payment["stripe_payment_intent_id"],))
    assert event["outcome"] == "applied" and event["api_version"] == "2017-08-15"

    row = shop.payment_row(payment["id"])
    assert (row["status"], row["amount_received"]) == ("succeeded", 2500)
    assert row["stripe_charge_id"].startswith("ch_")
    assert shop.value("SELECT payment_id FROM payment.charges WHERE stripe_charge_id = %s", (row["stripe_charge_id"],)) == payment["id"]
    assert shop.value("SELECT status FROM public.orders WHERE id = %s", (order,)) == "paid"
    heard = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    # Each notification carries a change number; the row's changes come in order.
    assert [{k: v for k, v in h.items() if k != "seq"} for h in heard][-1] == {
        "table": "payments", "id": payment["id"], "order_id": order, "status": "succeeded"}
    assert [h["seq"] for h in heard] == sorted({h["seq"] for h in heard})

    # Stripe delivers at least once: the same delivery again changes nothing.
    body = event["payload"]
    raw = json.dumps(body, indent=2, sort_keys=True)
    req = urllib.request.Request(loop["relay_url"], data=raw.encode(),
                                 headers={"Stripe-Signature": ev.sign(raw), "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200 and json.loads(resp.read())["outcome"] == "duplicate"
    assert shop.value("SELECT count(*) FROM payment.events") == 1


def test_a_declined_card_fails_the_payment_and_the_order(loop):
    shop, localstripe = loop["shop"], loop["localstripe"]
    order = shop.order(price="15.00")
    payment = shop.row("SELECT * FROM payment.create_payment(%s, 'usd', 1500)", (order,))
    assert customer_pays(localstripe, payment["stripe_payment_intent_id"], "pm_card_chargeCustomerFail") == 402
    event = wait_for(shop, "SELECT * FROM payment.events WHERE type = 'payment_intent.payment_failed'", ())
    assert event["outcome"] == "applied"
    row = shop.payment_row(payment["id"])
    assert (row["status"], row["failure_code"]) == ("failed", "card_declined")
    assert shop.value("SELECT status FROM public.orders WHERE id = %s", (order,)) == "payment_failed"


def test_a_refund_after_the_loop_is_recorded_from_the_api_answer(loop):
    shop, localstripe = loop["shop"], loop["localstripe"]
    order = shop.order(price="30.00")
    payment = shop.row("SELECT * FROM payment.create_payment(%s, 'usd', 3000)", (order,))
    customer_pays(localstripe, payment["stripe_payment_intent_id"], "pm_card_visa")
    wait_for(shop, "SELECT 1 FROM payment.payments WHERE id = %s AND status = 'succeeded'", (payment["id"],))
    refund = shop.row("SELECT * FROM payment.refund_payment(%s, 1000)", (payment["id"],))
    assert refund["status"] == "succeeded"
    row = shop.payment_row(payment["id"])
    assert (row["status"], row["amount_refunded"]) == ("partially_refunded", 1000)
    assert shop.value("SELECT count(*) FROM payment.api_requests WHERE path = '/v1/refunds'") == 1
