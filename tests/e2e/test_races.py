"""Different events about one fact, or about one payment, delivered at the same
time from different connections (Stripe sends in parallel). Money is counted
once per fact, no update is lost, and no event ends 'failed' for racing.

Each test holds the first delivery's transaction open, starts the second in a
thread, lets it run into the first (or finish, if it does not wait), then
commits the first: the interleaving that loses updates, made deterministic."""

import threading
import time

import stripe_events as ev


def race(shop, first_evt, second_evt, timeout=30):
    """Deliver first_evt in an open transaction, second_evt from another
    connection meanwhile, then commit the first. Returns both results."""
    first = shop.connect(autocommit=False)
    res1 = shop.deliver(first_evt, conn=first)
    other = shop.connect()
    box = {}

    def run():
        try:
            box["res"] = shop.deliver(second_evt, conn=other)
        except Exception as e:  # reported below
            box["res"] = e

    th = threading.Thread(target=run, daemon=True)
    th.start()
    # Give the second delivery time to reach the first one's locks (or finish).
    deadline = time.monotonic() + 3
    while th.is_alive() and time.monotonic() < deadline:
        waiting = shop.value("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND wait_event_type = 'Lock'")
        if waiting:
            break
        time.sleep(0.05)
    first.commit()
    th.join(timeout)
    assert not th.is_alive(), "the second delivery never returned"
    res2 = box["res"]
    assert not isinstance(res2, Exception), f"the second delivery raised: {res2!r}"
    return res1, res2


def test_two_refunds_of_one_payment_at_once_lose_no_update(shop):
    p = shop.paid_payment()
    t = ev.now() - 100
    r1 = ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=300, created=t)
    r2 = ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=500, created=t)
    res1, res2 = race(shop, r1, r2)
    assert (res1["outcome"], res2["outcome"]) == ("applied", "applied")
    assert len(shop.refunds_of(p.id)) == 2
    row = shop.payment_row(p.id)
    assert row["amount_refunded"] == 800
    assert row["status"] == "partially_refunded"


def test_refunds_completing_a_payment_at_once_mark_it_refunded(shop):
    p = shop.paid_payment()
    t = ev.now() - 100
    r1 = ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=400, created=t)
    r2 = ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=600, created=t)
    race(shop, r1, r2)
    row = shop.payment_row(p.id)
    assert (row["amount_refunded"], row["status"]) == (1000, "refunded")


def test_refund_created_and_charge_refunded_at_once_count_the_refund_once(shop):
    p = shop.paid_payment(api_version=ev.OLD_API)
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    created = ev.refund_event("refund.created", re_id, pi_id=p.pi, ch_id=p.charge, amount=300,
                              created=t, api_version=ev.OLD_API)
    refunded = ev.charge_refunded_event(p.charge, pi_id=p.pi, amount=1000, created=t, api_version=ev.OLD_API,
                                        refunds=[created["data"]["object"]])
    res1, res2 = race(shop, created, refunded)
    assert res1["outcome"] != "failed" and res2["outcome"] != "failed", (res1, res2)
    assert [r["stripe_refund_id"] for r in shop.refunds_of(p.id)] == [re_id]
    assert shop.payment_row(p.id)["amount_refunded"] == 300


def test_invoice_paid_and_payment_succeeded_at_once_renew_once(shop):
    s = shop.subscription(status="active")
    in_id = ev.stripe_id("in")
    t = ev.now() - 60
    n_orders = shop.value("SELECT count(*) FROM public.orders")
    paid = ev.invoice_event("invoice.paid", in_id, sub_id=s.sub, customer=s.customer, price_id=s.price_id, created=t)
    succeeded = ev.invoice_event("invoice.payment_succeeded", in_id, sub_id=s.sub, customer=s.customer,
                                 price_id=s.price_id, created=t)
    res1, res2 = race(shop, paid, succeeded)
    assert res1["outcome"] != "failed" and res2["outcome"] != "failed", (res1, res2)
    assert shop.value("SELECT count(*) FROM public.orders") == n_orders + 1
    assert shop.value("SELECT count(*) FROM payment.payments WHERE recurring_payment_id = %s", (s.id,)) == 1


def test_succeeded_and_a_refund_at_once_end_partially_refunded(shop):
    # Stripe may deliver refund.created before the payment_intent.succeeded it follows.
    p = shop.payment()
    p.charge = ev.stripe_id("ch")
    t = ev.now() - 100
    succeeded = ev.pi_event("payment_intent.succeeded", p.pi, created=t, charge_id=p.charge)
    refund = ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=300,
                             created=t + 5)
    res1, res2 = race(shop, succeeded, refund)
    assert res1["outcome"] != "failed" and res2["outcome"] != "failed", (res1, res2)
    row = shop.payment_row(p.id)
    assert row["amount_refunded"] == 300
    assert row["status"] == "partially_refunded"
