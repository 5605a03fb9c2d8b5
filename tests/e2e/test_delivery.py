"""Steps 2 and 4 of process_stripe_event: de-duplication by event id (also under
concurrent deliveries), failed events kept and tried again, events that are
not ours recorded as ignored, and NOTIFY on every status change."""

import json
import threading
import time

import psycopg
import pytest

import stripe_events as ev


def deliver_in_threads(shop, evt, n, *, start_barrier=True, timeout=60):
    """Deliver the same event from n connections at once. Returns results in
    thread order (an exception object where a call raised)."""
    conns = [shop.connect() for _ in range(n)]
    body = ev.payload(evt)
    barrier = threading.Barrier(n) if start_barrier else None
    results = [None] * n

    def run(i):
        try:
            if barrier:
                barrier.wait(timeout=timeout)
            results[i] = shop.deliver(body, conn=conns[i])
        except Exception as e:  # reported by the caller's assertions
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for th in threads:
        th.start()
    return threads, results


def join_all(threads, timeout=60):
    deadline = time.monotonic() + timeout
    for th in threads:
        th.join(max(0.1, deadline - time.monotonic()))
    assert not any(th.is_alive() for th in threads), "a delivery never returned"


def wait_for_blocked(shop, n, timeout=15):
    """Wait until n backends wait on a lock inside process_stripe_event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = shop.value(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%%process_stripe_event%%'")
        if waiting >= n:
            return True
        time.sleep(0.05)
    return False


def outcomes(results):
    out = []
    for r in results:
        assert not isinstance(r, Exception), f"a delivery raised: {r!r}"
        out.append(r["outcome"])
    return sorted(out)


# --------------------------------------------------------------------------
# De-duplication


def test_duplicate_delivery_changes_nothing(shop):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    assert shop.deliver(evt)["outcome"] == "applied"
    before = shop.snapshot()
    time.sleep(0.01)
    res = shop.deliver(evt)  # Stripe redelivers with a fresh signature timestamp
    assert res["outcome"] == "duplicate"
    assert res["event_id"] == evt["id"]
    assert shop.snapshot() == before


def test_duplicate_of_an_ignored_event_is_duplicate(shop):
    evt = ev.event("customer.created", {"id": ev.stripe_id("cus"), "object": "customer", "email": "a@example.com"})
    assert shop.deliver(evt)["outcome"] == "ignored"
    before = shop.snapshot()
    assert shop.deliver(evt)["outcome"] == "duplicate"
    assert shop.snapshot() == before


def test_concurrent_deliveries_of_one_event_apply_it_exactly_once(shop):
    shop.add_logging_callback("payment")
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    threads, results = deliver_in_threads(shop, evt, 4)
    join_all(threads)
    assert outcomes(results) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert shop.payment_row(p.id)["status"] == "succeeded"
    assert shop.value("SELECT count(*) FROM payment.events WHERE id = %s", (evt["id"],)) == 1
    assert len([c for c in shop.callback_log("payment") if c["cb"]["event_id"] == evt["id"]]) == 1


def test_delivery_racing_an_uncommitted_one_waits_and_is_duplicate(shop):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    first = shop.connect(autocommit=False)
    assert shop.deliver(evt, conn=first)["outcome"] == "applied"  # not committed yet
    threads, results = deliver_in_threads(shop, evt, 2, start_barrier=False)
    blocked = wait_for_blocked(shop, 2)
    first.commit()
    join_all(threads)
    assert blocked, "racing deliveries did not wait for the first one"
    assert outcomes(results) == ["duplicate", "duplicate"]
    assert shop.payment_row(p.id)["status"] == "succeeded"


def test_delivery_racing_one_that_rolls_back_applies_the_event_itself(shop):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    first = shop.connect(autocommit=False)
    assert shop.deliver(evt, conn=first)["outcome"] == "applied"
    threads, results = deliver_in_threads(shop, evt, 2, start_barrier=False)
    blocked = wait_for_blocked(shop, 2)
    first.rollback()  # the relay died before committing
    join_all(threads)
    assert blocked, "racing deliveries did not wait for the first one"
    assert outcomes(results) == ["applied", "duplicate"]
    assert shop.payment_row(p.id)["status"] == "succeeded"
    assert shop.event_row(evt["id"])["outcome"] == "applied"


def test_delivery_racing_one_that_fails_applies_the_event_itself(shop):
    shop.add_logging_callback("payment")
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    shop.set_handlers_failing(True)
    first = shop.connect(autocommit=False)
    assert shop.deliver(evt, conn=first)["outcome"] == "failed"
    shop.set_handlers_failing(False)  # fixed while the first is still open
    threads, results = deliver_in_threads(shop, evt, 1, start_barrier=False)
    blocked = wait_for_blocked(shop, 1)
    first.commit()
    join_all(threads)
    assert blocked, "the racing delivery did not wait for the first one"
    assert outcomes(results) == ["applied"]
    assert shop.payment_row(p.id)["status"] == "succeeded"
    assert shop.event_row(evt["id"])["outcome"] == "applied"


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
def test_process_stripe_event_refuses_isolation_above_read_committed(shop, level):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    c = shop.connect(autocommit=False)
    c.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
    with pytest.raises(psycopg.Error) as info:
        shop.deliver(evt, conn=c)
    c.rollback()
    assert "read committed" in str(info.value).lower()
    assert shop.event_count() == 0
    assert shop.payment_row(p.id)["status"] == "pending"


# --------------------------------------------------------------------------
# Failures and retries


def test_failing_handler_keeps_event_failed_and_applies_nothing(shop):
    shop.add_logging_callback("payment")
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    shop.set_handlers_failing(True)
    res = shop.deliver(evt)
    assert res["outcome"] == "failed"
    assert "e2e handler refuses event" in res.get("error", "")
    row = shop.event_row(evt["id"])
    assert row["outcome"] == "failed"
    assert "e2e handler refuses event" in row["error"]
    # nothing half-applied
    pay = shop.payment_row(p.id)
    assert pay["status"] == "pending" and pay["amount_received"] in (0, None)
    assert shop.callback_log() == []


def test_redelivery_after_fix_applies_a_failed_event(shop):
    shop.add_logging_callback("payment")
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    shop.set_handlers_failing(True)
    assert shop.deliver(evt)["outcome"] == "failed"
    shop.set_handlers_failing(False)
    res = shop.deliver(evt)
    assert res["outcome"] == "applied"
    assert shop.payment_row(p.id)["status"] == "succeeded"
    row = shop.event_row(evt["id"])
    assert row["outcome"] == "applied" and row["error"] is None
    assert len(shop.callback_log("payment")) == 1
    assert shop.deliver(evt)["outcome"] == "duplicate"


def test_retry_failed_events_applies_them_after_a_fix(shop):
    shop.add_logging_callback("payment")
    payments = [shop.payment() for _ in range(3)]
    events = [ev.pi_event("payment_intent.succeeded", p.pi) for p in payments]
    shop.set_handlers_failing(True)
    for e in events:
        assert shop.deliver(e)["outcome"] == "failed"
    shop.set_handlers_failing(False)
    results = [r[0] for r in shop.conn.execute("SELECT * FROM payment.retry_failed_events()").fetchall()]
    assert sorted(r["event_id"] for r in results) == sorted(e["id"] for e in events)
    assert all(r["outcome"] == "applied" for r in results), results
    assert [shop.payment_row(p.id)["status"] for p in payments] == ["succeeded"] * 3
    assert shop.value("SELECT count(*) FROM payment.events WHERE outcome = 'failed'") == 0
    assert shop.conn.execute("SELECT count(*) FROM payment.retry_failed_events()").fetchone()[0] == 0


def test_retry_failed_events_keeps_still_failing_events_failed(shop):
    shop.add_logging_callback("payment")
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    shop.set_handlers_failing(True)
    assert shop.deliver(evt)["outcome"] == "failed"
    results = [r[0] for r in shop.conn.execute("SELECT * FROM payment.retry_failed_events()").fetchall()]
    assert [r["outcome"] for r in results] == ["failed"]
    assert shop.event_row(evt["id"])["outcome"] == "failed"
    assert shop.payment_row(p.id)["status"] == "pending"


# --------------------------------------------------------------------------
# Events that are not ours


@pytest.mark.parametrize("type_,obj", [
    ("customer.created", {"id": "cus_NffrFeUfNV2Hib", "object": "customer", "email": "jenny@example.com"}),
    ("payout.paid", {"id": "po_1OaFDbEcg9tTZuTgNYmX9PKB", "object": "payout", "amount": 1100, "currency": "usd"}),
    ("checkout.session.completed", {"id": "cs_test_a1", "object": "checkout.session", "payment_intent": None}),
    ("v2.core.event_destination.ping", {"id": "ed_test_1", "object": "v2.core.event_destination"}),
])
def test_event_types_we_do_not_handle_are_recorded_as_ignored(shop, type_, obj):
    evt = ev.event(type_, obj)
    res = shop.deliver(evt)
    assert res["outcome"] == "ignored"
    assert shop.event_row(evt["id"])["outcome"] == "ignored"


@pytest.mark.parametrize("evt", [
    pytest.param(lambda: ev.pi_event("payment_intent.succeeded", ev.stripe_id("pi")), id="payment-intent"),
    pytest.param(lambda: ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=ev.stripe_id("pi"),
                                         ch_id=ev.stripe_id("ch"), amount=500), id="refund"),
    pytest.param(lambda: ev.subscription_event("customer.subscription.updated", ev.stripe_id("sub"),
                                               customer=ev.stripe_id("cus"), price_id="price_other"), id="subscription"),
    pytest.param(lambda: ev.invoice_event("invoice.paid", ev.stripe_id("in"), sub_id=ev.stripe_id("sub"),
                                          customer=ev.stripe_id("cus"), price_id="price_other"), id="invoice"),
])
def test_events_for_objects_this_database_never_created_are_ignored(shop, evt):
    shop.payment()  # something of ours exists, but not this
    e = evt()
    before = shop.snapshot()
    assert shop.deliver(e)["outcome"] == "ignored"
    after = shop.snapshot()
    assert shop.event_row(e["id"])["outcome"] == "ignored"
    for table in ("payments", "refunds", "recurring_payments"):
        assert after[table] == before[table]
    assert shop.value("SELECT count(*) FROM public.orders") == 1


# The metadata key create_payment stamps on Stripe objects. DESIGN.md only says
# "this installation's id"; the key's name is the extension's.
INSTALLATION_KEY = "pg_payment_installation"


def test_object_stamped_with_another_installation_is_never_applied(shop):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi,
                      metadata={INSTALLATION_KEY: "0b6f3c1e-4d7a-4f55-9a51-3c1d2e9f7a10"})
    before = shop.snapshot()
    assert shop.deliver(evt)["outcome"] == "ignored"
    assert shop.snapshot()["payments"] == before["payments"]


# --------------------------------------------------------------------------
# NOTIFY


def listen(shop, channel="pg_payment"):
    c = shop.connect()
    c.execute(f'LISTEN "{channel}"')
    return c


def drain(conn, timeout=2.0):
    return [n for n in conn.notifies(timeout=timeout)]


def test_status_change_is_notified_with_a_small_payload(shop):
    listener = listen(shop)
    p = shop.payment()
    drain(listener, 0.5)  # anything the direct insert may have sent
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi))
    notes = [json.loads(n.payload) for n in drain(listener)]
    mine = [n for n in notes if str(n.get("table", "")).split(".")[-1] == "payments" and n.get("id") == p.id]
    assert mine, f"no notification for payment {p.id}: {notes}"
    n = mine[-1]
    assert n["status"] == "succeeded"
    assert n["order_id"] == p.order_id
    assert {"table", "id", "order_id", "status"} <= set(n)
    text = json.dumps(n)
    for secret_or_money in ("amount", "client_secret", "customer", "sk_test", "whsec_"):
        assert secret_or_money not in text, f"{secret_or_money!r} leaked into NOTIFY payload {text}"


def test_notifications_are_sent_only_on_commit_and_not_for_duplicates(shop):
    listener = listen(shop)
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    drain(listener, 0.5)
    c = shop.connect(autocommit=False)
    shop.deliver(evt, conn=c)
    assert drain(listener, 0.5) == []
    c.rollback()
    assert drain(listener, 0.5) == []
    shop.deliver(evt)
    assert len(drain(listener)) >= 1
    shop.deliver(evt)  # duplicate
    assert drain(listener, 0.5) == []


def test_refund_and_subscription_status_changes_are_notified(shop):
    listener = listen(shop)
    p = shop.paid_payment()
    s = shop.subscription()
    drain(listener, 0.5)
    shop.deliver(ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=300))
    shop.deliver(ev.subscription_event("customer.subscription.updated", s.sub, customer=s.customer,
                                       price_id=s.price_id, status="active"))
    tables = {str(json.loads(n.payload)["table"]).split(".")[-1] for n in drain(listener)}
    assert {"refunds", "recurring_payments"} <= tables


def test_notify_channel_setting_is_used(shop):
    listener = listen(shop, "shop_payments")
    p = shop.payment()
    shop.conn.execute("SET pg_payment.notify_channel = 'shop_payments'")
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi))
    notes = drain(listener)
    assert any(json.loads(n.payload).get("id") == p.id for n in notes)
    assert all(n.channel == "shop_payments" for n in notes)
