"""Each backend keeps copies of the webhook secrets and the registered callbacks (the hot
path reads them on every event). A change made on another connection must reach a backend
whose copies are warm, at the change's commit, and never before."""

import psycopg
import pytest

import stripe_events as ev

NEW_SECRET = "whsec_rolled_secret_e2e_2"


def warm(shop, conn):
    """Deliver one event on `conn` so its backend has loaded its copies."""
    p = shop.payment()
    assert shop.deliver(ev.pi_event("payment_intent.processing", p.pi), conn=conn)["outcome"] == "applied"
    return p


def test_a_secret_added_elsewhere_is_accepted_by_a_warm_backend(shop):
    relay = shop.connect()
    warm(shop, relay)
    shop.conn.execute("SELECT payment.add_webhook_secret(%s::text)", (NEW_SECRET,))
    p = shop.payment()
    result = shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), secret=NEW_SECRET, conn=relay)
    assert result["outcome"] == "applied"


def test_a_secret_removed_elsewhere_is_refused_by_a_warm_backend(shop):
    relay = shop.connect()
    warm(shop, relay)
    shop.conn.execute("SELECT payment.add_webhook_secret(%s::text)", (NEW_SECRET,))
    shop.conn.execute("SELECT payment.remove_webhook_secret(%s::text)", (ev.WEBHOOK_SECRET,))
    p = shop.payment()
    with pytest.raises(psycopg.Error) as info:
        shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), conn=relay)
    assert info.value.sqlstate == "28000"
    assert shop.payment_row(p.id)["status"] == "pending"


def test_an_uncommitted_secret_is_not_seen_and_a_rolled_back_one_is_forgotten(shop):
    relay = shop.connect()
    warm(shop, relay)
    admin = shop.connect(autocommit=False)
    admin.execute("SELECT payment.add_webhook_secret(%s::text)", (NEW_SECRET,))
    p = shop.payment()
    with pytest.raises(psycopg.Error) as info:
        shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), secret=NEW_SECRET, conn=relay)
    assert info.value.sqlstate == "28000"
    # The same backend that added it, then rolled back, must not keep it either.
    shop.deliver(ev.pi_event("payment_intent.processing", shop.payment().pi), conn=admin)
    admin.rollback()
    admin.autocommit = True
    with pytest.raises(psycopg.Error) as info:
        shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), secret=NEW_SECRET, conn=admin)
    assert info.value.sqlstate == "28000"


def test_a_callback_registered_elsewhere_runs_in_a_warm_backend(shop):
    relay = shop.connect()
    warm(shop, relay)
    shop.add_logging_callback("payment")
    p = shop.payment()
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), conn=relay)
    assert [r["cb"]["id"] for r in shop.callback_log("payment")] == [p.id]


def test_a_handler_dropped_elsewhere_fails_the_event_in_a_warm_backend(shop):
    shop.add_logging_callback("payment")
    relay = shop.connect()
    warm(shop, relay)
    shop.owner_conn().execute("DROP FUNCTION app.log_payment(jsonb)")
    p = shop.payment()
    result = shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), conn=relay)
    assert result["outcome"] == "failed" and "no longer exists" in result["error"]
    assert shop.payment_row(p.id)["status"] == "pending"
