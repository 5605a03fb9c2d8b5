"""Quick checks of the two test Stripe servers (run: pytest -q tests/stripe_servers).

The official stripe library is the client here, so the servers are known to speak
what a real Stripe client expects before pg_payment's own client is pointed at them.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

import pytest
import stripe

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_stripe import FakeStripe, parse_form  # noqa: E402
from localstripe_server import LocalStripe, WebhookCatcher  # noqa: E402

KEY = "sk_test_" + "x" * 24


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    fs = FakeStripe.start(tmp_path_factory.mktemp("fake_stripe"))
    yield fs
    assert fs.stop() is not None


@pytest.fixture
def fs(fake):
    fake.reset()
    return fake


def client(url, retries=0):
    return stripe.StripeClient(KEY, base_addresses={"api": url}, max_network_retries=retries)


def raw(fs, method, path, body="", headers=None, timeout=5):
    """A bare HTTP call, as pg_payment's client makes them: (status, headers, json|text)."""
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/x-www-form-urlencoded",
         **(headers or {})}
    req = urllib.request.Request(fs.url + path, data=body.encode() if method != "GET" else None,
                                 method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, hdrs, data = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, data = e.code, e.headers, e.read()
    try:
        return status, hdrs, json.loads(data)
    except ValueError:
        return status, hdrs, data.decode()


def listening_on_loopback_only(port):
    # /proc/net/tcp{,6}: local address is hex "ADDR:PORT", state 0A is LISTEN.
    addrs = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(name) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.split(":")
                if state == "0A" and int(p, 16) == port:
                    addrs.append(addr)
    return addrs == ["0100007F"], addrs


# --------------------------------------------------------------------------
# fake_stripe


def test_parse_form_brackets():
    f = parse_form("amount=1999&metadata[order_id]=7&metadata[0]=z&items[0][price]=price_a"
                   "&items[1][price]=price_b&expand[]=a.b&expand[]=c&x=")
    assert f == {"amount": "1999", "metadata": {"order_id": "7", "0": "z"},
                 "items": [{"price": "price_a"}, {"price": "price_b"}],
                 "expand": ["a.b", "c"], "x": ""}
    assert parse_form("expand[0]=a&expand[1]=b") == {"expand": ["a", "b"]}


def test_create_payment_intent_and_request_log(fs):
    assert listening_on_loopback_only(fs.port)[0]
    pi = client(fs.url).v1.payment_intents.create(params={
        "amount": 1999, "currency": "USD", "metadata": {"order_id": "7", "payment_id": "1"}})
    assert pi.id.startswith("pi_") and pi.object == "payment_intent"
    assert pi.status == "requires_payment_method" and pi.livemode is False
    assert pi.client_secret.startswith(pi.id + "_secret_")
    assert (pi.amount, pi.currency, pi.metadata.to_dict()) == (1999, "usd",
                                                               {"order_id": "7", "payment_id": "1"})
    assert pi.last_response.request_id.startswith("req_")

    (entry,) = fs.requests(path="/v1/payment_intents")
    assert entry["method"] == "POST" and entry["status"] == 200
    assert entry["headers"]["Authorization"] == f"Bearer {KEY}"
    assert entry["headers"]["Idempotency-Key"]  # the stripe library sends one on POST
    assert entry["headers"]["Stripe-Version"] == stripe.api_version
    assert entry["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert "metadata[order_id]=7" in entry["body"]
    assert entry["form"]["metadata"] == {"order_id": "7", "payment_id": "1"}

    got = client(fs.url).v1.payment_intents.retrieve(pi.id)
    assert got.client_secret == pi.client_secret


def test_errors_have_stripe_shape(fs):
    status, h, body = raw(fs, "POST", "/v1/payment_intents", "amount=10&currency=usd",
                          headers={"Authorization": ""})
    assert status == 401 and body["error"]["type"] == "authentication_error"
    assert h["Request-Id"].startswith("req_")

    status, _, body = raw(fs, "POST", "/v1/payment_intents", "currency=usd")
    assert status == 400 and body["error"]["code"] == "parameter_missing"
    assert body["error"]["param"] == "amount"

    status, _, body = raw(fs, "POST", "/v1/payment_intents", "amount=10&currency=usd&bogus=1")
    assert status == 400 and body["error"]["code"] == "parameter_unknown"

    with pytest.raises(stripe.CardError) as e:
        client(fs.url).v1.payment_intents.create(params={"amount": 402, "currency": "usd"})
    err = e.value.json_body["error"]
    assert (e.value.http_status, err["type"], err["code"], err["decline_code"]) == (
        402, "card_error", "card_declined", "generic_decline")
    assert e.value.request_id.startswith("req_")

    status, _, body = raw(fs, "POST", "/v1/payment_intents",
                          "amount=1000&currency=usd&metadata[fail]=insufficient_funds")
    assert status == 402 and body["error"]["decline_code"] == "insufficient_funds"


def test_500_then_200_is_retried_with_the_same_key(fs):
    fs.faults("/v1/payment_intents", [{"status": 500}])
    pi = client(fs.url, retries=2).v1.payment_intents.create(
        params={"amount": 500, "currency": "eur"})
    first, second = fs.requests(path="/v1/payment_intents")
    assert (first["status"], second["status"]) == (500, 200)
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"]
    assert first["fault"] == {"status": 500} and second["fault"] is None
    assert fs.object(pi.id)["amount"] == 500
    assert fs.pending_faults() == []


def test_fault_kinds(fs):
    fs.faults("/v1/*", [{"status": 429}, {"status": 409}, {"body": "not json"},
                        {"status": 200, "headers": {"Stripe-Should-Retry": "false"}},
                        {"status": 402, "error": {"decline_code": "lost_card"}}])
    c = client(fs.url)
    params = {"amount": 700, "currency": "usd"}
    with pytest.raises(stripe.RateLimitError) as e:
        c.v1.payment_intents.create(params=params)
    assert e.value.json_body["error"]["code"] == "rate_limit"
    with pytest.raises(stripe.APIError) as e:  # the library has no class of its own for 409
        c.v1.payment_intents.create(params=params)
    assert e.value.http_status == 409 and e.value.json_body["error"]["code"] == "lock_timeout"
    with pytest.raises(stripe.APIError):  # a 200 whose body is not JSON
        c.v1.payment_intents.create(params=params)
    status, h, body = raw(fs, "POST", "/v1/payment_intents", "amount=700&currency=usd")
    assert status == 200 and h["Stripe-Should-Retry"] == "false" and body["amount"] == 700
    status, _, body = raw(fs, "POST", "/v1/payment_intents", "amount=700&currency=usd")
    assert status == 402 and body["error"]["decline_code"] == "lost_card"


def test_delay_does_not_block_the_server_and_reset_wakes_it(fs):
    fs.faults("/v1/payment_intents", [{"delay_s": 30}], method="POST")
    t0 = time.monotonic()
    with pytest.raises(OSError):  # the client gives up, as with http_timeout_ms
        raw(fs, "POST", "/v1/payment_intents", "amount=800&currency=usd",
            headers={"Idempotency-Key": "slow-1"}, timeout=0.5)
    # Other requests are served meanwhile; the same key now gets the real answer.
    status, _, body = raw(fs, "POST", "/v1/payment_intents", "amount=800&currency=usd",
                          headers={"Idempotency-Key": "slow-1"})
    assert status == 200
    fs.reset()  # wakes the sleeping request, which is then abandoned
    time.sleep(0.2)
    assert fs.requests() == []
    assert raw(fs, "GET", "/v1/payment_intents")[2]["data"] == []
    assert time.monotonic() - t0 < 5


def test_drop_is_a_network_error(fs):
    fs.faults("/v1/refunds", [{"drop": True}])
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        raw(fs, "POST", "/v1/refunds", "payment_intent=pi_x")
    assert fs.requests(path="/v1/refunds")[0]["status"] == "dropped"


def test_idempotent_replay(fs):
    key = {"Idempotency-Key": "inst1-order7-usd-1999-0"}
    body = "amount=1999&currency=usd&metadata[order_id]=7"
    s1, h1, pi1 = raw(fs, "POST", "/v1/payment_intents", body, key)
    s2, h2, pi2 = raw(fs, "POST", "/v1/payment_intents", body, key)
    assert s1 == s2 == 200 and pi1 == pi2
    assert h1.get("Idempotent-Replayed") is None and h2["Idempotent-Replayed"] == "true"
    assert h2["Original-Request"] == h1["Request-Id"] != h2["Request-Id"]
    s3, _, err = raw(fs, "POST", "/v1/payment_intents", body.replace("1999", "2000"), key)
    assert s3 == 400 and err["error"]["type"] == "idempotency_error"
    s4, _, err = raw(fs, "POST", "/v1/refunds", "payment_intent=" + pi1["id"], key)
    assert s4 == 400 and err["error"]["type"] == "idempotency_error"
    assert len([o for o in fs.requests() if o["idempotent_replayed"]]) == 1
    # Declines are remembered too, validation errors are not.
    k2 = {"Idempotency-Key": "decline-1"}
    assert raw(fs, "POST", "/v1/payment_intents", "amount=402&currency=usd", k2)[0] == 402
    s, h, _ = raw(fs, "POST", "/v1/payment_intents", "amount=402&currency=usd", k2)
    assert s == 402 and h["Idempotent-Replayed"] == "true"
    k3 = {"Idempotency-Key": "invalid-1"}
    assert raw(fs, "POST", "/v1/payment_intents", "currency=usd", k3)[0] == 400
    assert raw(fs, "POST", "/v1/payment_intents", "amount=5&currency=usd", k3)[0] == 200


def test_refunds_and_payment_events(fs):
    c = client(fs.url)
    pi = c.v1.payment_intents.create(params={"amount": 2000, "currency": "usd",
                                             "metadata": {"payment_id": "3"}})
    with pytest.raises(stripe.InvalidRequestError):  # nothing to refund yet
        c.v1.refunds.create(params={"payment_intent": pi.id})
    ev = fs.event("payment_intent.succeeded", pi.id)
    evt = stripe.Webhook.construct_event(ev["payload"], ev["signature"], fs.webhook_secret)
    assert evt.type == "payment_intent.succeeded" and evt.api_version == "2025-03-31.basil"
    assert evt.data.object.status == "succeeded" and evt.data.object.amount_received == 2000
    assert ev["payload"].startswith('{\n  "id": "evt_')  # pretty-printed, like Stripe

    r1 = c.v1.refunds.create(params={"payment_intent": pi.id, "amount": 500,
                                     "metadata": {"refund_no": "1"}})
    assert r1.id.startswith("re_") and r1.status == "succeeded" and r1.amount == 500
    assert r1.payment_intent == pi.id and r1.charge == evt.data.object.latest_charge
    r2 = c.v1.refunds.create(params={"payment_intent": pi.id})  # what remains
    assert r2.amount == 1500
    with pytest.raises(stripe.InvalidRequestError) as e:
        c.v1.refunds.create(params={"payment_intent": pi.id, "amount": 1})
    assert e.value.code == "charge_already_refunded"

    ev = fs.event("refund.failed", r2.id)
    assert json.loads(ev["payload"])["data"]["object"]["status"] == "failed"
    ev = fs.event("charge.refunded", r1.id)
    ch = json.loads(ev["payload"])["data"]["object"]
    assert ch["amount_refunded"] == 500 and ch["refunded"] is False  # the failed one not counted
    old = fs.event("payment_intent.succeeded", pi.id, api_version="2017-08-15")["event"]
    assert old["data"]["object"]["charges"]["data"][0]["refunds"]["total_count"] == 2


def test_subscriptions_and_their_events(fs):
    c = client(fs.url)
    cus = c.v1.customers.create(params={"email": "buyer@example.com", "metadata": {"user_id": "9"}})
    assert cus.id.startswith("cus_")
    fs.price("price_gold", 2500, "eur")
    raw_body = (f"customer={cus.id}&items[0][price]=price_gold&metadata[order_id]=7"
                "&payment_behavior=default_incomplete"
                "&payment_settings[save_default_payment_method]=on_subscription"
                "&expand[]=latest_invoice.payment_intent&expand[]=latest_invoice.confirmation_secret")
    status, _, sub = raw(fs, "POST", "/v1/subscriptions", raw_body)
    assert status == 200 and sub["id"].startswith("sub_") and sub["status"] == "incomplete"
    item = sub["items"]["data"][0]
    assert item["price"]["id"] == "price_gold" and item["price"]["unit_amount"] == 2500
    assert item["current_period_end"] > item["current_period_start"]
    assert sub["cancel_at_period_end"] is False
    inv = sub["latest_invoice"]
    assert inv["billing_reason"] == "subscription_create" and inv["amount_due"] == 2500
    assert inv["confirmation_secret"]["client_secret"] == inv["payment_intent"]["client_secret"]
    assert fs.requests(path="/v1/subscriptions")[0]["form"]["expand"] == [
        "latest_invoice.payment_intent", "latest_invoice.confirmation_secret"]

    with pytest.raises(stripe.InvalidRequestError) as e:
        c.v1.subscriptions.create(params={"customer": cus.id, "items": [{"price": "gold"}]})
    assert e.value.code == "resource_missing"

    ev = fs.event("invoice.paid", sub["id"])["event"]
    renewal = ev["data"]["object"]
    assert renewal["billing_reason"] == "subscription_cycle" and renewal["status"] == "paid"
    assert renewal["parent"]["subscription_details"]["subscription"] == sub["id"]
    assert renewal["parent"]["subscription_details"]["metadata"] == {"order_id": "7"}
    twin = fs.event("invoice.payment_succeeded", renewal["id"])["event"]
    assert twin["data"]["object"]["id"] == renewal["id"]

    upd = fs.event("customer.subscription.updated", sub["id"])["event"]
    moved = upd["data"]["object"]["items"]["data"][0]
    assert moved["current_period_start"] == item["current_period_end"]
    assert upd["data"]["previous_attributes"]["status"] == "incomplete"
    assert upd["data"]["object"]["status"] == "active"

    s = c.v1.subscriptions.update(sub["id"], params={"cancel_at_period_end": True})
    assert s.cancel_at_period_end is True and s.cancel_at == moved["current_period_end"]
    s = c.v1.subscriptions.cancel(sub["id"])
    assert s.status == "canceled" and s.canceled_at
    gone = fs.event("customer.subscription.deleted", sub["id"])
    evt = stripe.Webhook.construct_event(gone["payload"], gone["signature"], fs.webhook_secret)
    assert evt.data.object.status == "canceled"
    old = fs.event("customer.subscription.updated", sub["id"], api_version="2017-08-15",
                   metadata={"note": "x"})["event"]
    assert "current_period_end" in old["data"]["object"]
    assert old["data"]["previous_attributes"] == {"metadata": {"order_id": "7"}}


# --------------------------------------------------------------------------
# localstripe


@pytest.fixture(scope="module")
def localstripe(tmp_path_factory):
    ls = LocalStripe.start(tmp_path_factory.mktemp("localstripe"))
    yield ls
    assert ls.stop() is not None


def test_localstripe_payment_intent_webhook(localstripe):
    ok, addrs = listening_on_loopback_only(localstripe.port)
    assert ok, addrs
    secret = "whsec_localstripe_test"
    with WebhookCatcher() as catcher:
        assert localstripe.add_webhook("t1", catcher.url, secret,
                                       events=["payment_intent.succeeded"]) == 200
        c = client(localstripe.url)
        pi = c.v1.payment_intents.create(params={
            "amount": 1234, "currency": "usd", "metadata": {"order_id": "7"},
            "payment_method": "pm_card_visa", "confirm": True})
        assert pi.status == "succeeded"
        ((body, sig),) = catcher.wait(type="payment_intent.succeeded", timeout=10)
    evt = stripe.Webhook.construct_event(body.decode("utf-8"), sig, secret)
    assert evt.data.object.id == pi.id and evt.data.object.metadata.order_id == "7"
    assert evt.api_version == "2017-08-15"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.decode("utf-8"), sig, "whsec_other")
    # Its state lives in our directory, not /tmp/localstripe.pickle.
    assert os.path.getsize(localstripe.state_file) > 0
