"""health(): one row per check, in DESIGN.md's order, each moving to warn or fail when
payments go wrong and back to ok when fixed."""

import pytest

import stripe_events as ev
from e2e_helpers import ADMIN, APP, denied

CHECKS = ["keys", "webhook_secret", "failed_events", "stale_pending", "last_event", "callbacks",
          "handler_search_path", "amount_mismatch", "link", "link_currency", "payment_owner"]


def health(db, conn=None):
    return {r["name"]: r for r in db.rows("SELECT * FROM payment.health()", conn=conn)}


def status(db, name):
    return health(db)[name]["status"]


def test_a_healthy_shop_is_ok_in_every_check_in_order(shop):
    rows = shop.rows("SELECT * FROM payment.health()")
    assert [r["name"] for r in rows] == CHECKS
    assert {r["name"]: r["status"] for r in rows if r["status"] != "ok"} == {}
    assert all(r["detail"] for r in rows)


def test_health_is_for_payment_admin(shop):
    assert len(shop.rows("SELECT * FROM payment.health()", conn=shop.connect(ADMIN))) == len(CHECKS)
    denied(shop.connect(APP), "SELECT * FROM payment.health()")


def test_no_keys_and_no_webhook_secret_fail(db):
    h = health(db)
    assert (h["keys"]["status"], h["webhook_secret"]["status"]) == ("fail", "fail")
    assert "configure" in h["keys"]["hint"]
    db.conn.execute("SELECT payment.configure(%s, %s, %s)", (ev.SECRET_KEY, ev.PUBLISHABLE_KEY, ev.WEBHOOK_SECRET))
    assert (status(db, "keys"), status(db, "webhook_secret")) == ("ok", "ok")


def test_a_failed_event_fails_until_it_is_retried(shop):
    shop.add_logging_callback("payment")
    p = shop.payment()
    shop.set_handlers_failing(True)
    assert shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi))["outcome"] == "failed"
    h = health(shop)["failed_events"]
    assert h["status"] == "fail" and "retry_failed_events" in h["hint"]
    shop.set_handlers_failing(False)
    shop.rows("SELECT * FROM payment.retry_failed_events()")
    assert status(shop, "failed_events") == "ok"


def test_a_stale_pending_payment_warns(shop):
    p = shop.payment()
    shop.conn.execute("UPDATE payment.payments SET created_at = now() - interval '2 hours' WHERE id = %s", (p.id,))
    assert status(shop, "stale_pending") == "warn"
    shop.conn.execute("SET pg_payment.pending_warn_after = '3 hours'")
    assert status(shop, "stale_pending") == "ok"
    shop.conn.execute("RESET pg_payment.pending_warn_after")
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi))
    assert status(shop, "stale_pending") == "ok"


def test_no_event_for_a_day_while_payments_are_pending_warns(shop):
    shop.payment()
    assert status(shop, "last_event") == "warn"
    p = shop.payment()
    shop.deliver(ev.pi_event("payment_intent.processing", p.pi))
    assert status(shop, "last_event") == "ok"
    shop.conn.execute("UPDATE payment.events SET received_at = now() - interval '25 hours'")
    assert status(shop, "last_event") == "warn"


def test_a_kind_with_rows_but_no_handler_fails_while_others_have_one(shop):
    shop.add_logging_callback("payment")
    p = shop.paid_payment()
    assert status(shop, "callbacks") == "ok"
    shop.deliver(ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge, amount=100))
    h = health(shop)["callbacks"]
    assert h["status"] == "fail" and "refund" in h["detail"]
    shop.add_logging_callback("refund")
    assert status(shop, "callbacks") == "ok"


def test_a_dropped_handler_fails_until_it_is_removed(shop):
    shop.add_logging_callback("payment")
    oid = shop.value("SELECT handler::oid::int FROM payment.callbacks")
    shop.owner_conn().execute("DROP FUNCTION app.log_payment(jsonb)")
    h = health(shop)["callbacks"]
    assert h["status"] == "fail" and "remove_callback" in (h["hint"] or "")
    shop.conn.execute(f"SELECT payment.remove_callback('payment', {oid}::regprocedure)")  # the hint
    assert status(shop, "callbacks") == "ok"


def test_a_handler_with_a_loose_search_path_warns(shop):
    shop.add_logging_callback("payment")
    # As 0.1.0 let one be registered: the setting changed after registration.
    shop.owner_conn().execute("ALTER FUNCTION app.log_payment(jsonb) SET search_path = app, public")
    assert status(shop, "handler_search_path") == "warn"
    shop.owner_conn().execute("ALTER FUNCTION app.log_payment(jsonb) SET search_path = app, pg_temp")
    assert status(shop, "handler_search_path") == "ok"


def test_a_flagged_amount_warns_until_it_is_refunded(shop):
    p = shop.payment(amount=1000)
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi, amount=10))
    h = health(shop)["amount_mismatch"]
    assert h["status"] == "warn" and "minor units" in h["hint"]
    # The shop refunds the wrong charge in the dashboard; its webhook clears the warning.
    shop.deliver(ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=ev.stripe_id("ch"),
                                 amount=5))
    assert status(shop, "amount_mismatch") == "warn"  # half of it is still held
    shop.deliver(ev.refund_event("refund.created", ev.stripe_id("re"), pi_id=p.pi, ch_id=ev.stripe_id("ch"),
                                 amount=5))
    assert status(shop, "amount_mismatch") == "ok"


def test_a_missing_link_or_guard_fails_and_a_link_without_currency_warns(db):
    assert status(db, "link") == "fail"
    db.conn.execute("CREATE TABLE public.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                    " user_id text, price numeric NOT NULL, status text)")
    db.conn.execute("SELECT payment.link_order_table('public.orders', currency => 'usd')")
    assert (status(db, "link"), status(db, "link_currency")) == ("ok", "ok")
    db.conn.execute("UPDATE payment.order_link SET currency = NULL")  # as 0.1.0 linked it
    assert status(db, "link_currency") == "warn"
    db.conn.execute("SELECT payment.link_order_table('public.orders', currency => 'usd')")  # the hint
    assert status(db, "link_currency") == "ok"
    db.conn.execute("SET session_replication_role = replica")  # a superuser can still disable...
    db.conn.execute("UPDATE pg_trigger SET tgenabled = 'D' WHERE tgname = 'pg_payment_guard_rows'")
    db.conn.execute("RESET session_replication_role")
    assert status(db, "link") == "fail"


def test_a_member_of_payment_owner_fails(db):
    db.conn.execute("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'e2e_sneaky') "
                    "THEN CREATE ROLE e2e_sneaky; END IF; END$$")
    db.conn.execute("GRANT payment_owner TO e2e_sneaky")
    try:
        h = health(db)["payment_owner"]
        assert h["status"] == "fail" and "e2e_sneaky" in h["detail"]
    finally:
        db.conn.execute("REVOKE payment_owner FROM e2e_sneaky")
    assert status(db, "payment_owner") == "ok"


# --------------------------------------------------------------------------
# refresh_payment and refresh_subscription: a webhook that never arrived

import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402

from e2e_helpers import point_at  # noqa: E402


@pytest.fixture
def api(shop, fake):
    point_at(shop, fake.url)
    return shop


def confirm_at(fake, pi):
    data = urllib.parse.urlencode({"payment_method": "pm_card_visa"}).encode()
    req = urllib.request.Request(f"{fake.url}/v1/payment_intents/{pi}/confirm", data=data,
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10):
        pass


def test_refresh_payment_applies_a_missed_success_with_its_callback(api, fake):
    api.add_logging_callback("payment")
    oid = api.order(price="10.00")
    row = api.row("SELECT * FROM payment.create_payment(%s, 'usd', 1000)", (oid,))
    confirm_at(fake, row["stripe_payment_intent_id"])  # paid at Stripe; the webhook is lost
    assert api.payment_row(row["id"])["status"] == "pending"
    refreshed = api.row("SELECT * FROM payment.refresh_payment(%s)", (row["id"],), conn=api.connect(ADMIN))
    assert (refreshed["status"], refreshed["amount_received"]) == ("succeeded", 1000)
    assert [c["cb"]["status"] for c in api.callback_log("payment")][-1] == "succeeded"
    assert api.value("SELECT count(*) FROM payment.events") == 0  # nothing pretends to be an event


def test_refresh_never_moves_a_payment_back(api, fake):
    oid = api.order(price="10.00")
    row = api.row("SELECT * FROM payment.create_payment(%s, 'usd', 1000)", (oid,))
    confirm_at(fake, row["stripe_payment_intent_id"])
    api.row("SELECT * FROM payment.refresh_payment(%s)", (row["id"],))
    api.row("SELECT * FROM payment.refund_payment(%s, 300)", (row["id"],))
    assert api.payment_row(row["id"])["status"] == "partially_refunded"
    # Stripe's PaymentIntent still says succeeded: the refund state is newer and stays.
    assert api.row("SELECT * FROM payment.refresh_payment(%s)", (row["id"],))["status"] == "partially_refunded"


def test_refresh_subscription_applies_a_missed_update(api, fake):
    api.add_logging_callback("recurring_management")
    oid = api.order(price="10.00", user_id="refresher")
    sub = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,))
    assert sub["status"] == "incomplete"
    fake.event("customer.subscription.updated", sub["stripe_subscription_id"], status="active")  # lost
    refreshed = api.row("SELECT * FROM payment.refresh_subscription(%s)", (sub["id"],))
    assert refreshed["status"] == "active"
    assert api.callback_log("recurring_management")[-1]["cb"]["previous"]["status"] == "incomplete"


def test_refresh_is_for_payment_admin_and_names_unknown_rows(api):
    denied(api.connect(APP), "SELECT * FROM payment.refresh_payment(1)")
    with pytest.raises(Exception) as info:
        api.row("SELECT * FROM payment.refresh_payment(424242)")
    assert getattr(info.value, "sqlstate", None) == "P0002"
    with pytest.raises(Exception) as info:
        api.row("SELECT * FROM payment.refresh_subscription(424242)")
    assert getattr(info.value, "sqlstate", None) == "P0002"
