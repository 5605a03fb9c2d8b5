"""Business logic: handlers registered per callback kind run once per change,
in the transaction of the change, as their owner."""

import re

import psycopg
import pytest

import stripe_events as ev
from e2e_helpers import ADMIN, OWNER, point_at

CALLBACK_KEYS = {"kind", "event_id", "event_type", "table", "id", "order_id", "status",
                 "previous_status", "row"}


def table_name(cb):
    return str(cb["table"]).split(".")[-1]


def test_payment_callback_receives_the_change(shop):
    p = shop.payment()
    shop.add_logging_callback("payment")
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    assert shop.deliver(evt)["outcome"] == "applied"
    log = shop.callback_log("payment")
    assert len(log) == 1
    cb = log[0]["cb"]
    assert CALLBACK_KEYS <= set(cb)
    assert cb["kind"] == "payment"
    assert cb["event_id"] == evt["id"]
    assert cb["event_type"] == "payment_intent.succeeded"
    assert table_name(cb) == "payments"
    assert cb["id"] == p.id
    assert cb["order_id"] == p.order_id
    assert cb["status"] == "succeeded"
    assert cb["previous_status"] == "pending"
    assert cb["row"]["id"] == p.id and cb["row"]["status"] == "succeeded"
    assert cb["row"]["stripe_payment_intent_id"] == p.pi


def test_handler_runs_as_its_owner_not_as_payment_owner_or_caller(shop):
    p = shop.payment()
    shop.add_logging_callback("payment")
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi))
    assert [r["who"] for r in shop.callback_log("payment")] == [OWNER]


def test_handler_runs_as_its_owner_when_the_webhook_role_delivers(shop):
    p = shop.payment()
    shop.add_logging_callback("payment")
    hook = shop.connect("e2e_webhook")
    assert shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi), conn=hook)["outcome"] == "applied"
    assert [r["who"] for r in shop.callback_log("payment")] == [OWNER]


def test_refund_callback_receives_the_new_refund(shop):
    p = shop.paid_payment()
    shop.add_logging_callback("refund")
    re_id = ev.stripe_id("re")
    evt = ev.refund_event("refund.created", re_id, pi_id=p.pi, ch_id=p.charge, amount=300)
    shop.deliver(evt)
    log = shop.callback_log("refund")
    assert len(log) == 1
    cb = log[0]["cb"]
    assert CALLBACK_KEYS <= set(cb)
    assert cb["event_type"] == "refund.created" and cb["event_id"] == evt["id"]
    assert table_name(cb) == "refunds"
    refund_id = shop.refunds_of(p.id)[0]["id"]
    assert cb["id"] == refund_id
    assert cb["order_id"] == p.order_id
    assert cb["status"] == "succeeded"
    assert cb["previous_status"] is None
    assert cb["row"]["stripe_refund_id"] == re_id and cb["row"]["payment_id"] == p.id


def test_recurring_management_callback_receives_the_subscription_change(shop):
    s = shop.subscription(status="incomplete")
    shop.add_logging_callback("recurring_management")
    evt = ev.subscription_event("customer.subscription.updated", s.sub, customer=s.customer,
                                price_id=s.price_id, status="active")
    shop.deliver(evt)
    log = shop.callback_log("recurring_management")
    assert len(log) == 1
    cb = log[0]["cb"]
    assert CALLBACK_KEYS <= set(cb)
    assert cb["event_type"] == "customer.subscription.updated"
    assert table_name(cb) == "recurring_payments"
    assert cb["id"] == s.id and cb["order_id"] == s.order_id
    assert (cb["previous_status"], cb["status"]) == ("incomplete", "active")
    assert cb["row"]["stripe_subscription_id"] == s.sub


def test_recurring_deduction_callback_gets_the_new_order(shop):
    s = shop.subscription(status="active")
    shop.add_logging_callback("recurring_deduction")
    evt = ev.invoice_event("invoice.paid", ev.stripe_id("in"), sub_id=s.sub, customer=s.customer,
                           price_id=s.price_id)
    shop.deliver(evt)
    log = shop.callback_log("recurring_deduction")
    assert len(log) == 1
    cb = log[0]["cb"]
    assert CALLBACK_KEYS <= set(cb)
    assert cb["event_type"] == "invoice.paid" and cb["event_id"] == evt["id"]
    new_order = shop.value("SELECT max(id) FROM public.orders")
    assert new_order != s.order_id
    assert cb["order_id"] == new_order
    assert cb["status"] == "succeeded"


def test_handler_can_mark_the_app_order_paid(shop):
    shop.conn.execute(f"GRANT SELECT, UPDATE ON public.orders TO {OWNER}")
    shop.app_schema()
    owner = shop.owner_conn()
    owner.execute("""
        CREATE FUNCTION app.mark_paid(cb jsonb) RETURNS void LANGUAGE plpgsql AS $fn$
        BEGIN
            IF cb->>'status' = 'succeeded' THEN
                UPDATE public.orders SET status = 'paid' WHERE id = (cb->>'order_id')::bigint;
            END IF;
        END
        $fn$
    """)
    owner.execute("SELECT payment.add_callback('payment', 'app.mark_paid(jsonb)'::regprocedure)")
    p = shop.payment()
    shop.deliver(ev.pi_event("payment_intent.processing", p.pi, created=ev.now() - 10))
    assert shop.value("SELECT status FROM public.orders WHERE id = %s", (p.order_id,)) == "new"
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi))
    assert shop.value("SELECT status FROM public.orders WHERE id = %s", (p.order_id,)) == "paid"


def test_callback_runs_once_per_change_not_per_event(shop):
    p = shop.payment()
    shop.add_logging_callback("payment")
    t = ev.now() - 300
    evt = ev.pi_event("payment_intent.succeeded", p.pi, created=t)
    shop.deliver(evt)
    shop.deliver(evt)  # duplicate
    shop.deliver(ev.pi_event("payment_intent.processing", p.pi, created=t - 10))  # late, no change
    assert len(shop.callback_log("payment")) == 1


def test_several_handlers_for_one_kind_all_run(shop):
    p = shop.payment()
    shop.add_logging_callback("payment", name="first_logger")
    shop.add_logging_callback("payment", name="second_logger")
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi))
    assert len(shop.callback_log("payment")) == 2


def test_removed_callback_is_no_longer_called(shop):
    a, b = shop.payment(), shop.payment()
    sig = shop.add_logging_callback("payment")
    shop.deliver(ev.pi_event("payment_intent.succeeded", a.pi))
    shop.owner_conn().execute("SELECT payment.remove_callback('payment', %s::regprocedure)", (sig,))
    shop.deliver(ev.pi_event("payment_intent.succeeded", b.pi))
    assert [r["cb"]["id"] for r in shop.callback_log("payment")] == [a.id]
    assert shop.value("SELECT count(*) FROM payment.callbacks") == 0


def test_dropped_handler_fails_the_event_with_a_clear_error(shop):
    p = shop.payment()
    shop.add_logging_callback("payment")
    shop.owner_conn().execute("DROP FUNCTION app.log_payment(jsonb)")
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    res = shop.deliver(evt)
    assert res["outcome"] == "failed"
    assert re.search(r"callback|handler", res.get("error") or "", re.I), res
    assert shop.event_row(evt["id"])["outcome"] == "failed"
    assert shop.payment_row(p.id)["status"] == "pending"


def test_an_error_in_the_status_trigger_reaches_the_caller_with_its_sqlstate_and_message(shop, fake):
    """The trigger raises through the one error path: the caller sees pg_payment's message
    and SQLSTATE (P0002: the handler is gone), not a wrapped panic with XX000; a failed event
    records the same text."""
    shop.add_logging_callback("payment")
    paid_later = shop.payment()
    oid = shop.value("SELECT oid::int FROM pg_proc WHERE proname = 'log_payment'")
    shop.owner_conn().execute("DROP FUNCTION app.log_payment(jsonb)")
    message = f"pg_payment: the payment callback handler with oid {oid} no longer exists"
    point_at(shop, fake.url)
    with pytest.raises(psycopg.Error) as info:  # the new payment's row fires the trigger
        shop.conn.execute("SELECT payment.create_payment(%s, 'usd', 1000)", (shop.order(),))
    assert (info.value.sqlstate, info.value.diag.message_primary) == ("P0002", message)
    assert "panic" not in str(info.value).lower()
    res = shop.deliver(ev.pi_event("payment_intent.succeeded", paid_later.pi))
    assert res["outcome"] == "failed" and res["error"].startswith(message), res
    assert "panic" not in res["error"].lower()


def test_callbacks_are_listed_in_the_callbacks_table(shop):
    sig = shop.add_logging_callback("refund")
    rows = shop.rows("SELECT kind, handler::text AS handler FROM payment.callbacks")
    assert rows == [{"kind": "refund", "handler": sig}]


def test_add_callback_refuses_an_unknown_kind(shop):
    shop.app_schema()
    owner = shop.owner_conn()
    owner.execute("CREATE FUNCTION app.h(cb jsonb) RETURNS void LANGUAGE sql AS 'SELECT'")
    with pytest.raises(psycopg.Error):
        owner.execute("SELECT payment.add_callback('checkout', 'app.h(jsonb)'::regprocedure)")
    assert shop.value("SELECT count(*) FROM payment.callbacks") == 0


@pytest.mark.parametrize("definition", [
    "app.h(cb text) RETURNS void LANGUAGE sql AS 'SELECT'",
    "app.h(cb jsonb) RETURNS integer LANGUAGE sql AS 'SELECT 1'",
    "app.h(cb jsonb, extra int) RETURNS void LANGUAGE sql AS 'SELECT'",
])
def test_add_callback_refuses_a_handler_of_the_wrong_shape(shop, definition):
    shop.app_schema()
    owner = shop.owner_conn()
    owner.execute(f"CREATE FUNCTION {definition}")
    sig = owner.execute("SELECT oid::regprocedure::text FROM pg_proc WHERE proname = 'h'").fetchone()[0]
    with pytest.raises(psycopg.Error):
        owner.execute("SELECT payment.add_callback('payment', %s::regprocedure)", (sig,))
    assert shop.value("SELECT count(*) FROM payment.callbacks") == 0


def test_add_callback_refuses_a_handler_the_caller_does_not_own(shop):
    shop.app_schema()
    owner = shop.owner_conn()
    owner.execute("CREATE FUNCTION app.h(cb jsonb) RETURNS void LANGUAGE sql AS 'SELECT'")
    owner.execute(f"GRANT USAGE ON SCHEMA app TO {ADMIN}")  # so only ownership is missing
    admin = shop.connect(ADMIN)
    with pytest.raises(psycopg.Error):
        admin.execute("SELECT payment.add_callback('payment', 'app.h(jsonb)'::regprocedure)")
    assert shop.value("SELECT count(*) FROM payment.callbacks") == 0
