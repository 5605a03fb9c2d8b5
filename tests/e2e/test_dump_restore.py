"""pg_dump and a restore into a new database bring back every row, the order
link, the callbacks and the sequences, quietly; secrets stay behind."""

import psycopg
import pytest

import stripe_events as ev
from e2e_helpers import OWNER


def state(d):
    s = d.snapshot()
    s["orders"] = d.rows("SELECT * FROM public.orders ORDER BY id")
    s["callbacks"] = d.rows("SELECT kind, handler::text AS handler FROM payment.callbacks ORDER BY kind, handler::text")
    s["callback_log"] = d.rows("SELECT * FROM app.callback_log ORDER BY id")
    return s


@pytest.fixture
def restored(shop, cluster, new_database, tmp_path):
    """A shop with some history, dumped and restored into a new database."""
    shop.add_logging_callback("refund")
    shop.add_logging_callback("recurring_management")
    p = shop.paid_payment()
    shop.deliver(ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=300))
    s = shop.subscription(status="incomplete")
    shop.deliver(ev.subscription_event("customer.subscription.updated", s.sub, customer=s.customer,
                                       price_id=s.price_id, status="active"))
    shop.deliver(ev.event("customer.created", {"id": ev.stripe_id("cus"), "object": "customer"}))
    before = state(shop)
    assert len(before["callback_log"]) == 2 and len(before["refunds"]) == 1

    dump = tmp_path / "shop.sql"
    r = cluster.pg_dump(shop.name, dump)
    assert r.returncode == 0, r.stderr

    target = new_database()
    listener = target.connect()
    listener.execute("LISTEN pg_payment")
    r = cluster.psql_file(target.name, dump)
    assert r.returncode == 0, f"restore failed:\n{r.stderr[-4000:]}"
    notes = list(listener.notifies(timeout=1.0))
    return {"source": shop, "target": target, "before": before, "dump": dump.read_text(),
            "payment": p, "subscription": s, "restore_notifies": notes, "restore_stderr": r.stderr}


def test_restore_brings_back_every_row_unchanged(restored):
    after = state(restored["target"])
    before = restored["before"]
    for key in ("payments", "refunds", "recurring_payments", "events", "orders", "callbacks"):
        assert after[key] == before[key], f"{key} differs after restore"


def test_restore_sends_no_notification_and_fires_no_callback(restored):
    assert restored["restore_notifies"] == []
    assert state(restored["target"])["callback_log"] == restored["before"]["callback_log"]


def test_secrets_are_not_in_the_dump(restored):
    dump = restored["dump"]
    for secret in (ev.SECRET_KEY, ev.WEBHOOK_SECRET):
        assert secret not in dump


def test_restored_database_says_configure_must_be_run_again(restored):
    target, p = restored["target"], restored["payment"]
    evt = ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=200)
    with pytest.raises(psycopg.Error) as info:
        target.deliver(evt)
    assert "configure" in str(info.value), f"unclear error: {info.value}"
    assert target.value("SELECT count(*) FROM payment.events WHERE id = %s", (evt["id"],)) == 0


def test_restored_database_works_with_fresh_ids_and_its_callbacks(restored):
    target, p, before = restored["target"], restored["payment"], restored["before"]
    target.configure()
    evt = ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=200)
    assert target.deliver(evt)["outcome"] == "applied"
    refunds = target.rows("SELECT * FROM payment.refunds ORDER BY id")
    assert len(refunds) == 2
    assert refunds[-1]["id"] > max(r["id"] for r in before["refunds"])
    assert target.value("SELECT amount_refunded FROM payment.payments WHERE id = %s", (p.id,)) == 500
    log = target.rows("SELECT * FROM app.callback_log ORDER BY id")
    assert len(log) == len(before["callback_log"]) + 1
    assert log[-1]["who"] == OWNER and log[-1]["cb"]["event_id"] == evt["id"]

    order = target.value("INSERT INTO public.orders (user_id, price) VALUES ('late', 5) RETURNING id")
    assert order > max(o["id"] for o in before["orders"])
    pid = target.value(
        "INSERT INTO payment.payments (order_id, amount, currency, status, stripe_payment_intent_id, livemode)"
        " VALUES (%s, 500, 'usd', 'pending', %s, false) RETURNING id", (order, ev.stripe_id("pi")))
    assert pid > max(x["id"] for x in before["payments"])
    rid = target.value(
        "INSERT INTO payment.recurring_payments (order_id, price_id, stripe_customer_id, stripe_subscription_id, status)"
        " VALUES (%s, 'price_x', %s, %s, 'incomplete') RETURNING id", (order, ev.stripe_id("cus"), ev.stripe_id("sub")))
    assert rid > max(x["id"] for x in before["recurring_payments"])


def test_restored_order_link_still_holds_and_renews(restored):
    target, s = restored["target"], restored["subscription"]
    with pytest.raises(psycopg.Error):
        target.conn.execute("DROP TABLE public.orders")
    target.configure()
    n = target.value("SELECT count(*) FROM public.orders")
    evt = ev.invoice_event("invoice.paid", ev.stripe_id("in"), sub_id=s.sub, customer=s.customer,
                           price_id=s.price_id)
    assert target.deliver(evt)["outcome"] == "applied"
    assert target.value("SELECT count(*) FROM public.orders") == n + 1
    assert target.value("SELECT status FROM public.orders ORDER BY id DESC LIMIT 1") == "paid"


def test_restored_database_keeps_its_installation_id(restored):
    """Objects at Stripe carry the installation id: after a restore they must still be ours."""
    source, target = restored["source"], restored["target"]
    original = source.value("SELECT id::text FROM payment.installation ORDER BY created_at LIMIT 1")
    ids = [r["id"] for r in target.rows("SELECT id::text AS id FROM payment.installation ORDER BY created_at, id")]
    assert ids[0] == original
