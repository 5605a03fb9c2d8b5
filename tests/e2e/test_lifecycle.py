"""Money across the lifecycle: one live PaymentIntent per order, one live subscription per
order, cancel_payment, and every change of a row (not only of its status) reaching the
callbacks and NOTIFY with the old values in `previous`."""

import json
import threading
import urllib.parse
import urllib.request

import psycopg
import pytest

import stripe_events as ev
from e2e_helpers import APP, point_at

MONTH = 30 * 24 * 3600


@pytest.fixture
def api(shop, fake):
    point_at(shop, fake.url)
    return shop


def create_payment(shop, order_id, currency="usd", amount=1000, conn=None):
    return shop.row("SELECT * FROM payment.create_payment(%s, %s, %s)", (order_id, currency, amount), conn=conn)


def sqlstate_of(fn, *args, **kw):
    with pytest.raises(psycopg.Error) as info:
        fn(*args, **kw)
    return info.value.sqlstate


def intents_created(fake):
    return fake.requests("/v1/payment_intents", method="POST")


def cancels(fake):
    return [r for r in fake.requests(method="POST") if r["path"].endswith("/cancel")]


def pay_at(fake, shop, pi):
    """The customer pays at the fake Stripe; its signed webhook is applied."""
    data = urllib.parse.urlencode({"payment_method": "pm_card_visa"}).encode()
    req = urllib.request.Request(f"{fake.url}/v1/payment_intents/{pi}/confirm", data=data,
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10):
        pass
    sent = fake.event("payment_intent.succeeded", pi)
    result = shop.value("SELECT payment.process_stripe_event(%s, %s)", (sent["payload"], sent["signature"]))
    assert result["outcome"] == "applied", result


def listen(shop):
    c = shop.connect()
    c.execute('LISTEN "pg_payment"')
    return c


def heard(conn, timeout=1.0):
    return [json.loads(n.payload) for n in conn.notifies(timeout=timeout)]


# --------------------------------------------------------------------------
# One order, one live PaymentIntent


def test_a_double_click_on_two_connections_gets_one_payment_intent(api, fake):
    oid = api.order(price="10.00")
    results, errors = [], []

    def click():
        conn = api.connect()
        try:
            results.append(create_payment(api, oid, conn=conn))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len({r["id"] for r in results}) == 1
    assert len({r["client_secret"] for r in results}) == 1
    assert len(intents_created(fake)) == 1
    assert api.value("SELECT count(*) FROM payment.payments WHERE order_id = %s", (oid,)) == 1


def test_a_paid_order_is_refused_before_stripe_is_called(api, fake):
    oid = api.order(price="10.00")
    row = create_payment(api, oid)
    api.deliver(ev.pi_event("payment_intent.succeeded", row["stripe_payment_intent_id"]))
    before = len(fake.requests())
    assert sqlstate_of(create_payment, api, oid) == "55000"
    assert len(fake.requests()) == before


def test_a_changed_amount_cancels_the_old_payment_intent_first(api, fake):
    oid = api.order(price="10.00")
    first = create_payment(api, oid, amount=1000)
    api.conn.execute("UPDATE public.orders SET price = 12.50 WHERE id = %s", (oid,))
    second = create_payment(api, oid, amount=1250)
    assert second["id"] != first["id"]
    assert [r["path"] for r in cancels(fake)] == [f"/v1/payment_intents/{first['stripe_payment_intent_id']}/cancel"]
    assert api.payment_row(first["id"])["status"] == "canceled"
    assert fake.requests("/v1/payment_intents", method="POST")[-1]["form"]["amount"] == "1250"


def test_cancel_payment_cancels_an_unpaid_payment_and_refuses_a_paid_one(api, fake):
    api.add_logging_callback("payment")
    oid = api.order(price="10.00")
    app = api.connect(APP)
    row = create_payment(api, oid, conn=app)
    canceled = api.row("SELECT * FROM payment.cancel_payment(%s)", (row["id"],), conn=app)
    assert canceled["status"] == "canceled"
    assert len(cancels(fake)) == 1
    assert [c["cb"]["status"] for c in api.callback_log("payment")][-1] == "canceled"
    # A canceled payment is returned as it is; no second call to Stripe.
    again = api.row("SELECT * FROM payment.cancel_payment(%s)", (row["id"],), conn=app)
    assert again["status"] == "canceled" and len(cancels(fake)) == 1
    # The order can be paid with a new PaymentIntent.
    fresh = create_payment(api, oid)
    assert fresh["id"] != row["id"]
    api.deliver(ev.pi_event("payment_intent.succeeded", fresh["stripe_payment_intent_id"]))
    assert sqlstate_of(api.row, "SELECT * FROM payment.cancel_payment(%s)", (fresh["id"],)) == "55000"
    assert sqlstate_of(api.row, "SELECT * FROM payment.cancel_payment(%s)", (999999,)) == "P0002"


# --------------------------------------------------------------------------
# One order, one live subscription


def test_start_subscription_twice_returns_the_incomplete_one(api, fake):
    oid = api.order(price="10.00", user_id="sub_user")
    first = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,))
    second = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,))
    assert second["id"] == first["id"]
    assert len(fake.requests("/v1/subscriptions", method="POST")) == 1
    # Another price while it is incomplete: an admin cancels it first.
    fake._control("POST", "/__control/prices", {"id": "price_other", "unit_amount": 1000, "currency": "usd"})
    assert sqlstate_of(api.row, "SELECT * FROM payment.start_subscription(%s, 'price_other')", (oid,)) == "55000"
    # An active subscription is refused outright.
    api.conn.execute("UPDATE payment.recurring_payments SET status = 'active' WHERE id = %s", (first["id"],))
    assert sqlstate_of(api.row, "SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,)) == "55000"
    assert len(fake.requests("/v1/subscriptions", method="POST")) == 1


# --------------------------------------------------------------------------
# Every change reaches the callbacks and NOTIFY


def test_a_renewal_with_the_same_status_reaches_the_callback_with_the_new_period(shop):
    shop.add_logging_callback("recurring_management")
    s = shop.subscription(status="active")
    start = ev.now() - 2 * MONTH
    first = ev.subscription_event("customer.subscription.updated", s.sub, customer=s.customer,
                                  price_id=s.price_id, period_start=start, created=ev.now() - 120)
    assert shop.deliver(first)["outcome"] == "applied"
    listener = listen(shop)
    logged = len(shop.callback_log("recurring_management"))
    renewed = ev.subscription_event("customer.subscription.updated", s.sub, customer=s.customer,
                                    price_id=s.price_id, period_start=start + MONTH, created=ev.now() - 60)
    assert shop.deliver(renewed)["outcome"] == "applied"
    calls = shop.callback_log("recurring_management")[logged:]
    assert len(calls) == 1
    cb = calls[0]["cb"]
    assert cb["status"] == cb["previous_status"] == "active"
    assert set(cb["previous"]) == {"current_period_start", "current_period_end"}
    row = shop.recurring_row(s.id)
    assert cb["row"]["current_period_end"] == shop.value("SELECT to_jsonb(%s::timestamptz)",
                                                          (row["current_period_end"],))
    assert cb["previous"]["current_period_end"] != cb["row"]["current_period_end"]
    notes = [n for n in heard(listener) if n["table"] == "recurring_payments" and n["id"] == s.id]
    assert len(notes) == 1 and notes[0]["status"] == "active" and isinstance(notes[0]["seq"], int)


def test_a_scheduled_cancellation_reaches_the_callback_and_is_stored(shop):
    shop.add_logging_callback("recurring_management")
    s = shop.subscription(status="active")
    evt = ev.subscription_event("customer.subscription.updated", s.sub, customer=s.customer,
                                price_id=s.price_id, created=ev.now() - 60)
    cancel_at = ev.now() + 10 * 24 * 3600
    evt["data"]["object"].update(cancel_at=cancel_at, trial_end=ev.now() - 3600)
    assert shop.deliver(evt)["outcome"] == "applied"
    later = ev.subscription_event("customer.subscription.updated", s.sub, customer=s.customer,
                                  price_id=s.price_id, cancel_at_period_end=True, created=ev.now() - 30)
    later["data"]["object"].update(period_start=None)
    logged = len(shop.callback_log("recurring_management"))
    assert shop.deliver(later)["outcome"] == "applied"
    row = shop.recurring_row(s.id)
    assert row["cancel_at_period_end"] is True
    cb = shop.callback_log("recurring_management")[logged]["cb"]
    assert cb["previous"]["cancel_at_period_end"] is False
    assert shop.value("SELECT cancel_at IS NOT NULL FROM payment.recurring_payments WHERE id = %s", (s.id,))


def test_an_amount_mismatch_is_passed_to_the_callback_and_notify_with_its_flag(shop):
    shop.add_logging_callback("payment")
    p = shop.payment(amount=1000)
    listener = listen(shop)
    assert shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi, amount=900))["outcome"] == "applied"
    row = shop.payment_row(p.id)
    assert row["status"] == "pending" and row["failure_code"] == "amount_mismatch"
    cb = shop.callback_log("payment")[-1]["cb"]
    assert cb["flag"] == "amount_mismatch" and cb["status"] == "pending"
    assert cb["previous"]["amount_received"] == 0
    notes = [n for n in heard(listener) if n["table"] == "payments" and n["id"] == p.id]
    assert [n.get("flag") for n in notes] == ["amount_mismatch"]


def test_two_identical_changes_in_one_transaction_are_two_notifications(shop):
    p = shop.payment()
    listener = listen(shop)
    conn = shop.connect(autocommit=False)
    base = ev.now() - 60
    for step, status in enumerate(("processing", "requires_action", "processing")):
        body = ev.payload(ev.pi_event(f"payment_intent.{status}", p.pi, created=base + step))
        conn.execute("SELECT payment.process_stripe_event(%s, %s)", (body, ev.sign(body)))
    conn.commit()
    notes = [n for n in heard(listener) if n["table"] == "payments" and n["id"] == p.id]
    assert [n["status"] for n in notes] == ["processing", "requires_action", "processing"]
    seqs = [n["seq"] for n in notes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_a_decline_keeps_the_issuers_reason_beside_stripes_code(shop):
    p = shop.payment()
    shop.deliver(ev.pi_event("payment_intent.payment_failed", p.pi))
    row = shop.payment_row(p.id)
    assert (row["status"], row["failure_code"], row["decline_code"]) == (
        "failed", "card_declined", "insufficient_funds")


# --------------------------------------------------------------------------
# A failed proration invoice does not cut access


@pytest.mark.parametrize("billing_reason,status", [
    ("subscription_update", "active"),
    ("subscription_cycle", "past_due"),
])
def test_only_a_failed_renewal_invoice_makes_the_subscription_past_due(shop, billing_reason, status):
    s = shop.subscription(status="active")
    evt = ev.invoice_event("invoice.payment_failed", ev.stripe_id("in"), sub_id=s.sub, customer=s.customer,
                           price_id=s.price_id, billing_reason=billing_reason)
    assert shop.deliver(evt)["outcome"] == "applied"
    assert shop.recurring_row(s.id)["status"] == status


# --------------------------------------------------------------------------
# Currencies


def test_an_order_priced_in_dollars_cannot_be_charged_in_yen(api, fake):
    oid = api.order(price="10.00")
    assert sqlstate_of(create_payment, api, oid, "jpy", 10) == "22023"
    assert fake.requests("/v1/payment_intents") == []


def test_a_refund_off_the_currencys_step_is_refused_before_stripe_is_called(api, fake):
    oid = api.order(price="1.500", currency="kwd")
    row = create_payment(api, oid, "kwd", 1500)
    pay_at(fake, api, row["stripe_payment_intent_id"])
    assert sqlstate_of(api.row, "SELECT * FROM payment.refund_payment(%s, 125)", (row["id"],)) == "22023"
    assert fake.requests("/v1/refunds") == []
    refund = api.row("SELECT * FROM payment.refund_payment(%s, 120)", (row["id"],))
    assert refund["amount"] == 120


# --------------------------------------------------------------------------
# Idempotency keys and Stripe's saved errors


def test_a_500_saved_under_the_key_does_not_lock_the_order_out(api, fake):
    """Stripe keeps the first answer to a key for at least 24 hours, 500s included. The next
    call sends the same key, gets the saved 500 back marked Idempotent-Replayed, and moves on
    to the next key of its sequence, within the same call."""
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    oid = api.order(price="10.00")
    fake.faults("/v1/payment_intents", [{"status": 500, "saved": True}])
    assert sqlstate_of(create_payment, api, oid) == "58000"
    assert api.value("SELECT count(*) FROM payment.payments") == 0  # nothing survives the rollback
    row = create_payment(api, oid)
    sent = intents_created(fake)
    keys = [r["headers"].get("Idempotency-Key") for r in sent]
    assert len(keys) == 3 and keys[0] == keys[1] and keys[2] == keys[0] + "-r1"
    assert [r["status"] for r in sent] == [500, 500, 200]
    assert [r["idempotent_replayed"] for r in sent] == [False, True, False]
    # A rollback after the success walks the same keys and gets the same PaymentIntent back.
    conn = api.connect(autocommit=False)
    conn.execute("DELETE FROM payment.payments WHERE id = %s", (row["id"],))
    again = create_payment(api, oid, conn=conn)
    conn.rollback()
    assert again["stripe_payment_intent_id"] == row["stripe_payment_intent_id"]
    assert len({r["form"]["amount"] for r in intents_created(fake)}) == 1


def refund(shop, payment_id, amount):
    return shop.row("SELECT * FROM payment.refund_payment(%s, %s)", (payment_id, amount))


def refund_posts(fake):
    return fake.requests("/v1/refunds", method="POST")


def test_a_refunds_saved_500_moves_on_once_stripe_shows_no_refund_of_that_attempt(api, fake):
    """A saved 500 may hide a refund Stripe did make, so before a refund goes out under the
    next key, the PaymentIntent's refunds are listed: none carries this attempt, so the call
    moves on and refunds once."""
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    row = create_payment(api, api.order(price="10.00"))
    pay_at(fake, api, row["stripe_payment_intent_id"])
    fake.faults("/v1/refunds", [{"status": 500, "saved": True}], method="POST")
    assert sqlstate_of(refund, api, row["id"], 300) == "58000"
    assert api.refunds_of(row["id"]) == []  # nothing survives the rollback
    made = refund(api, row["id"], 300)
    sent = refund_posts(fake)
    keys = [r["headers"].get("Idempotency-Key") for r in sent]
    assert len(keys) == 3 and keys[0] == keys[1] and keys[2] == keys[0] + "-r1"
    assert [(r["status"], r["idempotent_replayed"]) for r in sent] == [(500, False), (500, True), (200, False)]
    # Between the replayed error and the new key: the PaymentIntent's refunds, listed.
    listing = [r for r in fake.requests("/v1/refunds", method="GET")
               if r["form"].get("payment_intent") == row["stripe_payment_intent_id"]]
    assert listing and sent[1]["time"] <= listing[0]["time"] <= sent[2]["time"]
    assert sent[2]["form"]["metadata"]["pg_payment_refund_attempt"] == "0"
    assert [(r["amount"], r["stripe_refund_id"]) for r in api.refunds_of(row["id"])] == [(300, made["stripe_refund_id"])]
    assert api.payment_row(row["id"])["amount_refunded"] == 300


def test_a_refund_stripe_made_despite_its_saved_error_is_recorded_not_made_twice(api, fake):
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    row = create_payment(api, api.order(price="10.00"))
    pay_at(fake, api, row["stripe_payment_intent_id"])
    fake.faults("/v1/refunds", [{"status": 500, "saved": True}], method="POST")
    assert sqlstate_of(refund, api, row["id"], 300) == "58000"
    # Stripe did make it, with the metadata that call sent, and saved the 500 all the same.
    first = refund_posts(fake)[0]["form"]
    assert first["metadata"]["pg_payment_refund_attempt"] == "0"
    form = {"payment_intent": row["stripe_payment_intent_id"], "amount": 300,
            **{f"metadata[{k}]": v for k, v in first["metadata"].items()}}
    req = urllib.request.Request(f"{fake.url}/v1/refunds", data=urllib.parse.urlencode(form).encode(),
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}",
                                          "Idempotency-Key": "made-by-stripe-" + ev.stripe_id("k")})
    with urllib.request.urlopen(req, timeout=10) as r:
        made_at_stripe = json.loads(r.read())
    got = refund(api, row["id"], 300)
    assert got["stripe_refund_id"] == made_at_stripe["id"]
    # No refund went out under a new key: the second call stopped at what it found.
    keys = [r["headers"].get("Idempotency-Key") for r in refund_posts(fake)]
    assert len([k for k in keys if not k.startswith("made-by-stripe-")]) == 2
    assert not any(k.endswith("-r1") for k in keys)
    assert api.payment_row(row["id"])["amount_refunded"] == 300
    # A second refund of the same amount is a new attempt, and a new refund.
    again = refund(api, row["id"], 300)
    assert again["stripe_refund_id"] != got["stripe_refund_id"]
    assert refund_posts(fake)[-1]["form"]["metadata"]["pg_payment_refund_attempt"] == "1"
    assert api.payment_row(row["id"])["amount_refunded"] == 600


def test_a_subscriptions_saved_500_moves_on_once_stripe_shows_none_of_that_attempt(api, fake):
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    oid = api.order(price="10.00", user_id="saved_500")
    fake.faults("/v1/subscriptions", [{"status": 500, "saved": True}], method="POST")
    start = "SELECT * FROM payment.start_subscription(%s, 'price_monthly')"
    assert sqlstate_of(api.row, start, (oid,)) == "58000"
    sub = api.row(start, (oid,))
    assert sub["stripe_subscription_id"] and sub["client_secret"]
    sent = fake.requests("/v1/subscriptions", method="POST")
    keys = [r["headers"].get("Idempotency-Key") for r in sent]
    assert len(keys) == 3 and keys[0] == keys[1] and keys[2] == keys[0] + "-r1"
    assert sent[2]["form"]["metadata"]["pg_payment_subscription_attempt"] == "0"
    assert len(fake.requests("/v1/subscriptions", method="GET")) >= 1
    assert api.value("SELECT count(*) FROM payment.recurring_payments") == 1


# --------------------------------------------------------------------------
# Refunds on API versions that embed none in charge.refunded


def test_a_dashboard_refund_on_api_2023_10_16_is_listed_from_stripe_and_counted(api, fake):
    """From 2022-11-15 charge.refunded embeds no refunds, and before 2024-10-28 Stripe sends
    no refund.* event for a card refund: the charge's refunds are listed from Stripe."""
    oid = api.order(price="10.00")
    row = create_payment(api, oid)
    pay_at(fake, api, row["stripe_payment_intent_id"])
    charge = api.payment_row(row["id"])["stripe_charge_id"]
    assert charge
    # A refund of 700 made in the dashboard: at Stripe, not through pg_payment.
    data = urllib.parse.urlencode({"charge": charge, "amount": 700}).encode()
    req = urllib.request.Request(f"{fake.url}/v1/refunds", data=data,
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        made = json.loads(resp.read())
    sent = fake.event("charge.refunded", charge, api_version="2023-10-16")
    body = json.loads(sent["payload"])["data"]["object"]
    assert "refunds" not in body or not body["refunds"].get("data"), "the fixture must embed no refunds"
    result = api.value("SELECT payment.process_stripe_event(%s, %s)", (sent["payload"], sent["signature"]))
    assert result["outcome"] == "applied", result
    paid = api.payment_row(row["id"])
    assert (paid["amount_refunded"], paid["status"]) == (700, "partially_refunded")
    assert [r["stripe_refund_id"] for r in api.refunds_of(row["id"])] == [made["id"]]
    listed = [r for r in fake.requests("/v1/refunds", method="GET")]
    assert len(listed) == 1 and f"charge={charge}" in listed[0]["query"]
    # Delivered again, nothing more is listed or counted.
    again = fake.event("charge.refunded", charge, api_version="2023-10-16")
    api.value("SELECT payment.process_stripe_event(%s, %s)", (again["payload"], again["signature"]))
    assert api.payment_row(row["id"])["amount_refunded"] == 700
    assert len(fake.requests("/v1/refunds", method="GET")) == 1


# --------------------------------------------------------------------------
# API 2025-03-31+: renewal payments linked through InvoicePayments


def stripe_get(fake, path):
    req = urllib.request.Request(f"{fake.url}{path}", headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def apply(shop, sent):
    return shop.value("SELECT payment.process_stripe_event(%s, %s)", (sent["payload"], sent["signature"]))


def active_subscription(api, fake, user):
    oid = api.order(price="10.00", user_id=user)
    sub = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,))
    assert apply(api, fake.event("customer.subscription.updated", sub["stripe_subscription_id"],
                                 status="active"))["outcome"] == "applied"
    return sub


def renewal_payment(api, sub):
    return api.row("SELECT * FROM payment.payments WHERE recurring_payment_id = %s ORDER BY id DESC LIMIT 1",
                   (sub["id"],))


def invoice_payment_of(fake, invoice):
    return stripe_get(fake, f"/v1/invoice_payments?invoice={invoice}")["data"][0]


def listings(fake):
    return [r for r in fake.requests("/v1/invoice_payments", method="GET")]


def test_a_renewal_invoice_first_lists_its_payments_and_is_refundable(api, fake):
    sub = active_subscription(api, fake, "renewer_1")
    sent = fake.event("invoice.paid", sub["stripe_subscription_id"])
    invoice = sent["object_id"]
    assert "payment_intent" not in json.loads(sent["payload"])["data"]["object"]  # basil
    assert apply(api, sent)["outcome"] == "applied"
    ours = listings(fake)
    assert len(ours) == 1 and f"invoice={invoice}" in ours[0]["query"]
    pay = renewal_payment(api, sub)
    inpay = invoice_payment_of(fake, invoice)
    assert pay["stripe_payment_intent_id"] == inpay["payment"]["payment_intent"]
    row = api.row("SELECT * FROM payment.invoice_payments WHERE stripe_invoice_payment_id = %s", (inpay["id"],))
    assert (row["payment_id"], row["status"], row["payment_type"]) == (pay["id"], "paid", "payment_intent")
    # The renewal payment is refundable, and a dashboard refund of it is counted.
    refund = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (pay["id"],))
    assert refund["amount"] == 300
    data = urllib.parse.urlencode({"payment_intent": pay["stripe_payment_intent_id"], "amount": 200}).encode()
    req = urllib.request.Request(f"{fake.url}/v1/refunds", data=data,
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        dashboard = json.loads(resp.read())
    assert apply(api, fake.event("refund.created", dashboard["id"]))["outcome"] == "applied"
    assert api.payment_row(pay["id"])["amount_refunded"] == 500


def test_either_order_of_the_invoice_pair_gives_the_same_rows(api, fake):
    sub = active_subscription(api, fake, "renewer_2")
    sent_invoice = fake.event("invoice.paid", sub["stripe_subscription_id"])
    inpay = invoice_payment_of(fake, sent_invoice["object_id"])
    # Before its invoice is known here, an InvoicePayment may be another installation's:
    # it is not recorded, and the invoice event lists the invoice's payments itself.
    assert apply(api, fake.event("invoice_payment.paid", inpay["id"]))["outcome"] == "ignored"
    assert apply(api, sent_invoice)["outcome"] == "applied"
    pay = renewal_payment(api, sub)
    assert pay["stripe_payment_intent_id"] == inpay["payment"]["payment_intent"]
    row = api.row("SELECT * FROM payment.invoice_payments WHERE stripe_invoice_payment_id = %s", (inpay["id"],))
    assert (row["payment_id"], row["status"]) == (pay["id"], "paid")
    # Delivered again once the invoice is known, it changes nothing.
    assert apply(api, fake.event("invoice_payment.paid", inpay["id"]))["outcome"] == "applied"
    assert api.value("SELECT count(*) FROM payment.invoice_payments WHERE stripe_invoice_id = %s",
                     (sent_invoice["object_id"],)) == 1
    assert renewal_payment(api, sub)["stripe_payment_intent_id"] == pay["stripe_payment_intent_id"]


def test_an_invoice_paid_out_of_band_is_not_stripe_money(api, fake):
    """A payment_record is money paid outside Stripe: no payment row, no renewal order."""
    sub = active_subscription(api, fake, "renewer_3")
    orders_before = api.value("SELECT count(*) FROM public.orders")
    sent_invoice = fake.event("invoice.paid", sub["stripe_subscription_id"])
    inpay = invoice_payment_of(fake, sent_invoice["object_id"])
    fake.event("invoice_payment.paid", inpay["id"],
               payment={"type": "payment_record", "payment_intent": None,
                        "payment_record": "pr_e2eOutOfBand"})
    assert apply(api, sent_invoice)["outcome"] == "ignored"
    assert api.value("SELECT count(*) FROM public.orders") == orders_before
    assert api.value("SELECT count(*) FROM payment.payments WHERE stripe_invoice_id = %s",
                     (sent_invoice["object_id"],)) == 0


def two_invoices_paid_by_one_intent(api, fake, user):
    """A subscription's two invoices, both paid by the first one's PaymentIntent: two payment
    rows naming it, older first."""
    sub = active_subscription(api, fake, user)
    first_invoice = fake.event("invoice.paid", sub["stripe_subscription_id"])
    assert apply(api, first_invoice)["outcome"] == "applied"
    older = renewal_payment(api, sub)
    second_invoice = fake.event("invoice.paid", sub["stripe_subscription_id"])
    inpay = invoice_payment_of(fake, second_invoice["object_id"])
    fake.event("invoice_payment.paid", inpay["id"],
               payment={"type": "payment_intent", "payment_intent": older["stripe_payment_intent_id"]})
    assert apply(api, second_invoice)["outcome"] == "applied"
    newer = renewal_payment(api, sub)
    assert newer["id"] != older["id"]
    assert newer["stripe_payment_intent_id"] == older["stripe_payment_intent_id"]
    assert (older["amount_received"], newer["amount_received"]) == (1000, 1000)
    return older, newer


def test_a_refund_of_an_intent_that_paid_two_invoices_counts_newest_first(api, fake):
    """One PaymentIntent may pay several invoices (DESIGN.md): each invoice's payment row
    names it, and a refund nothing places (the dashboard's) counts against the rows newest
    first, each up to what it received, so no row shows more refunded than it was paid."""
    older, newer = two_invoices_paid_by_one_intent(api, fake, "renewer_4")
    pi = older["stripe_payment_intent_id"]
    assert api.deliver(ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=pi,
                                       ch_id=ev.stripe_id("ch"), amount=1500))["outcome"] == "applied"
    rows = {r["id"]: r for r in api.rows("SELECT * FROM payment.payments WHERE id IN (%s, %s)",
                                         (older["id"], newer["id"]))}
    assert (rows[newer["id"]]["amount_refunded"], rows[newer["id"]]["status"]) == (1000, "refunded")
    assert (rows[older["id"]]["amount_refunded"], rows[older["id"]]["status"]) == (500, "partially_refunded")
    # The newer row is fully refunded; what remains is refunded from the older one.
    assert sqlstate_of(api.row, "SELECT * FROM payment.refund_payment(%s, 100)", (newer["id"],)) == "55000"
    assert sqlstate_of(api.row, "SELECT * FROM payment.refund_payment(%s, 600)", (older["id"],)) == "22023"


def test_refund_payment_of_one_invoice_of_a_shared_intent_counts_on_that_invoice(api, fake):
    older, newer = two_invoices_paid_by_one_intent(api, fake, "renewer_5")
    api.add_logging_callback("payment")
    refund = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (older["id"],))
    assert refund["payment_id"] == older["id"]
    assert (api.payment_row(older["id"])["amount_refunded"], api.payment_row(newer["id"])["amount_refunded"]) == (300, 0)
    # The payment callback tells the older order, whose invoice was refunded.
    assert [c["cb"]["order_id"] for c in api.callback_log("payment")] == [older["order_id"]]
    # The same amount of the sibling is a new refund under its own key, not a replay.
    again = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (newer["id"],))
    assert again["stripe_refund_id"] != refund["stripe_refund_id"]
    keys = [r["headers"].get("Idempotency-Key") for r in refund_posts(fake)]
    assert len(keys) == len(set(keys)) == 2
    assert (api.payment_row(older["id"])["amount_refunded"], api.payment_row(newer["id"])["amount_refunded"]) == (300, 300)
    # Each row refunds at most what it received.
    assert sqlstate_of(api.row, "SELECT * FROM payment.refund_payment(%s, 800)", (older["id"],)) == "22023"


def test_a_subscription_found_after_a_saved_500_must_be_of_the_calls_price(api, fake):
    """Attempts count per order and price: an expired subscription of another price, made
    under the same attempt number, is not what the earlier key made."""
    oid = api.order(price="10.00", user_id="saved_500_price")
    start = "SELECT * FROM payment.start_subscription(%s, %s)"
    old = api.row(start, (oid, "price_first"))
    expired = fake.event("customer.subscription.updated", old["stripe_subscription_id"], status="incomplete_expired")
    assert apply(api, expired)["outcome"] == "applied"
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    fake.faults("/v1/subscriptions", [{"status": 500, "saved": True}], method="POST")
    assert sqlstate_of(api.row, start, (oid, "price_second")) == "58000"
    new = api.row(start, (oid, "price_second"))
    assert new["stripe_subscription_id"] != old["stripe_subscription_id"]
    assert new["price_id"] == "price_second"
    assert fake.requests("/v1/subscriptions", method="POST")[-1]["headers"]["Idempotency-Key"].endswith("-r1")


def test_a_subscription_stripe_made_despite_its_saved_error_is_recorded_not_made_twice(api, fake):
    oid = api.order(price="10.00", user_id="saved_500_made")
    start = "SELECT * FROM payment.start_subscription(%s, 'price_monthly')"
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    fake.faults("/v1/subscriptions", [{"status": 500, "saved": True}], method="POST")
    assert sqlstate_of(api.row, start, (oid,)) == "58000"
    first = fake.requests("/v1/subscriptions", method="POST")[0]["form"]
    assert first["metadata"]["pg_payment_subscription_attempt"] == "0"
    # Stripe did make it, with that call's parameters, and saved the 500 all the same.
    form = {"customer": first["customer"], "items[0][price]": "price_monthly",
            **{f"metadata[{k}]": v for k, v in first["metadata"].items()}}
    req = urllib.request.Request(f"{fake.url}/v1/subscriptions", data=urllib.parse.urlencode(form).encode(),
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}",
                                          "Idempotency-Key": "made-by-stripe-" + ev.stripe_id("k")})
    with urllib.request.urlopen(req, timeout=10) as r:
        made_at_stripe = json.loads(r.read())
    sub = api.row(start, (oid,))
    assert sub["stripe_subscription_id"] == made_at_stripe["id"]
    assert sub["client_secret"]  # read again with the first invoice expanded
    keys = [r["headers"].get("Idempotency-Key") for r in fake.requests("/v1/subscriptions", method="POST")]
    assert not any(k.endswith("-r1") for k in keys), keys
    assert api.value("SELECT count(*) FROM payment.recurring_payments") == 1
