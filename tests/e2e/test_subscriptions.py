"""Recurring management (customer.subscription.*) and recurring deduction
(invoice.paid / invoice.payment_succeeded / invoice.payment_failed)."""

import datetime as dt

import pytest

import stripe_events as ev

API_SHAPES = [pytest.param(ev.NEW_API, id="new-api"), pytest.param(ev.OLD_API, id="old-api")]


def ts(epoch):
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc)


def sub_event(s, type_, *, status="active", api_version=ev.NEW_API, created=None, **kw):
    return ev.subscription_event(type_, s.sub, customer=s.customer, price_id=s.price_id, status=status,
                                 api_version=api_version, created=created, **kw)


def inv_event(s, type_, *, in_id=None, api_version=ev.NEW_API, billing_reason="subscription_cycle",
              created=None, **kw):
    return ev.invoice_event(type_, in_id or ev.stripe_id("in"), sub_id=s.sub, customer=s.customer,
                            price_id=s.price_id, api_version=api_version,
                            billing_reason=billing_reason, created=created, **kw)


# --------------------------------------------------------------------------
# Recurring management


@pytest.mark.parametrize("api_version", API_SHAPES)
def test_subscription_created_activates_and_records_the_period(shop, api_version):
    s = shop.subscription()
    start = ev.now() - 3600
    end = start + ev.MONTH
    evt = sub_event(s, "customer.subscription.created", api_version=api_version,
                    period_start=start, period_end=end)
    obj = evt["data"]["object"]
    if api_version == ev.OLD_API:
        assert obj["current_period_end"] == end and "current_period_end" not in obj["items"]["data"][0]
    else:
        assert "current_period_end" not in obj and obj["items"]["data"][0]["current_period_end"] == end
    assert shop.deliver(evt)["outcome"] == "applied"
    row = shop.recurring_row(s.id)
    assert row["status"] == "active"
    assert row["current_period_start"] == ts(start)
    assert row["current_period_end"] == ts(end)
    assert row["cancel_at_period_end"] is False


@pytest.mark.parametrize("api_version", API_SHAPES)
def test_subscription_updated_moves_period_and_cancel_at_period_end(shop, api_version):
    s = shop.subscription()
    t = ev.now() - 600
    start = t - 3600
    shop.deliver(sub_event(s, "customer.subscription.created", api_version=api_version, created=t,
                           period_start=start))
    new_start = start + ev.MONTH
    shop.deliver(sub_event(s, "customer.subscription.updated", api_version=api_version, created=t + 10,
                           period_start=new_start, period_end=new_start + ev.MONTH,
                           cancel_at_period_end=True,
                           previous_attributes={"cancel_at_period_end": False}))
    row = shop.recurring_row(s.id)
    assert row["status"] == "active"
    assert row["cancel_at_period_end"] is True
    assert row["current_period_start"] == ts(new_start)
    assert row["current_period_end"] == ts(new_start + ev.MONTH)


@pytest.mark.parametrize("api_version", API_SHAPES)
def test_subscription_deleted_cancels(shop, api_version):
    s = shop.subscription(status="active")
    t = ev.now() - 600
    canceled_at = t - 5
    shop.deliver(sub_event(s, "customer.subscription.deleted", status="canceled", api_version=api_version,
                           created=t, canceled_at=canceled_at))
    row = shop.recurring_row(s.id)
    assert row["status"] == "canceled"
    assert row["canceled_at"] == ts(canceled_at)


@pytest.mark.parametrize("type_,status", [
    ("customer.subscription.paused", "paused"),
    ("customer.subscription.updated", "past_due"),
    ("customer.subscription.updated", "unpaid"),
    ("customer.subscription.updated", "trialing"),
])
def test_subscription_status_follows_stripe(shop, type_, status):
    s = shop.subscription(status="active")
    shop.deliver(sub_event(s, type_, status=status))
    assert shop.recurring_row(s.id)["status"] == status


def test_subscription_resumed_after_pause(shop):
    s = shop.subscription(status="active")
    t = ev.now() - 600
    shop.deliver(sub_event(s, "customer.subscription.paused", status="paused", created=t))
    shop.deliver(sub_event(s, "customer.subscription.resumed", status="active", created=t + 60))
    assert shop.recurring_row(s.id)["status"] == "active"


def test_late_older_subscription_update_does_not_revive_a_canceled_one(shop):
    s = shop.subscription(status="active")
    t = ev.now() - 600
    shop.deliver(sub_event(s, "customer.subscription.deleted", status="canceled", created=t, canceled_at=t))
    shop.deliver(sub_event(s, "customer.subscription.updated", status="active", created=t - 60))
    assert shop.recurring_row(s.id)["status"] == "canceled"


# --------------------------------------------------------------------------
# Recurring deduction


def orders(shop):
    return shop.rows("SELECT * FROM public.orders ORDER BY id")


@pytest.mark.parametrize("api_version,type_", [
    pytest.param(ev.NEW_API, "invoice.paid", id="new-api-invoice.paid"),
    pytest.param(ev.NEW_API, "invoice.payment_succeeded", id="new-api-invoice.payment_succeeded"),
    pytest.param(ev.OLD_API, "invoice.payment_succeeded", id="old-api-invoice.payment_succeeded"),
])
def test_renewal_invoice_creates_a_paid_order_and_a_succeeded_payment(shop, api_version, type_):
    s = shop.subscription(status="active")
    evt = inv_event(s, type_, api_version=api_version)
    inv = evt["data"]["object"]
    if api_version == ev.OLD_API:
        assert inv["subscription"] == s.sub and "parent" not in inv
    else:
        assert inv["parent"]["subscription_details"]["subscription"] == s.sub and "subscription" not in inv
    before = orders(shop)
    assert shop.deliver(evt)["outcome"] == "applied"
    after = orders(shop)
    assert len(after) == len(before) + 1
    original = next(o for o in after if o["id"] == s.order_id)
    new = after[-1]
    assert new["id"] != s.order_id and new["id"] > max(o["id"] for o in before)
    assert new["status"] == "paid"
    assert new["user_id"] == original["user_id"]
    assert new["price"] == original["price"]
    assert original["status"] == next(o for o in before if o["id"] == s.order_id)["status"]

    pays = shop.rows("SELECT * FROM payment.payments WHERE recurring_payment_id = %s", (s.id,))
    assert len(pays) == 1
    pay = pays[0]
    assert pay["order_id"] == new["id"]
    assert pay["status"] == "succeeded"
    assert pay["amount"] == 1000 and pay["currency"] == "usd"
    assert pay["amount_received"] == 1000


def test_invoice_paid_and_payment_succeeded_for_one_invoice_renew_once(shop):
    s = shop.subscription(status="active")
    in_id = ev.stripe_id("in")
    t = ev.now() - 60
    n_orders = len(orders(shop))
    assert shop.deliver(inv_event(s, "invoice.paid", in_id=in_id, created=t))["outcome"] == "applied"
    assert shop.deliver(inv_event(s, "invoice.payment_succeeded", in_id=in_id, created=t))["outcome"] in ("applied", "ignored")
    assert len(orders(shop)) == n_orders + 1
    assert shop.value("SELECT count(*) FROM payment.payments WHERE recurring_payment_id = %s", (s.id,)) == 1


def test_each_renewal_invoice_creates_its_own_order(shop):
    s = shop.subscription(status="active")
    n_orders = len(orders(shop))
    t = ev.now() - 600
    shop.deliver(inv_event(s, "invoice.paid", created=t))
    shop.deliver(inv_event(s, "invoice.paid", created=t + 60))
    assert len(orders(shop)) == n_orders + 2
    pays = shop.rows("SELECT order_id FROM payment.payments WHERE recurring_payment_id = %s", (s.id,))
    assert len({p["order_id"] for p in pays}) == 2


def test_first_invoice_of_a_subscription_creates_no_extra_order(shop):
    s = shop.subscription(status="incomplete")
    n_orders = len(orders(shop))
    res = shop.deliver(inv_event(s, "invoice.paid", billing_reason="subscription_create"))
    assert res["outcome"] in ("applied", "ignored")
    assert len(orders(shop)) == n_orders


@pytest.mark.parametrize("api_version", API_SHAPES)
def test_invoice_payment_failed_marks_subscription_past_due(shop, api_version):
    s = shop.subscription(status="active")
    n_orders = len(orders(shop))
    assert shop.deliver(inv_event(s, "invoice.payment_failed", api_version=api_version))["outcome"] == "applied"
    assert shop.recurring_row(s.id)["status"] == "past_due"
    assert len(orders(shop)) == n_orders


def test_renewal_copies_the_order_with_custom_paid_status_and_fresh_unique_values(db):
    db.configure()
    db.conn.execute("""
        CREATE TABLE public.memberships (
            id bigserial PRIMARY KEY,
            user_id text NOT NULL,
            price numeric(10,2) NOT NULL,
            state text NOT NULL DEFAULT 'open',
            reference uuid NOT NULL UNIQUE DEFAULT gen_random_uuid())
    """)
    db.conn.execute("SELECT payment.link_order_table('public.memberships', status_column => 'state',"
                    " paid_status => 'settled', currency => 'usd')")
    oid = db.value("INSERT INTO public.memberships (user_id, price) VALUES ('member_7', 19.99) RETURNING id")
    customer, sub = ev.stripe_id("cus"), ev.stripe_id("sub")
    rid = db.value("INSERT INTO payment.recurring_payments (order_id, price_id, stripe_customer_id,"
                   " stripe_subscription_id, status) VALUES (%s, 'price_gold', %s, %s, 'active') RETURNING id",
                   (oid, customer, sub))
    evt = ev.invoice_event("invoice.paid", ev.stripe_id("in"), sub_id=sub, customer=customer,
                           price_id="price_gold", amount=1999)
    assert db.deliver(evt)["outcome"] == "applied"
    rows = db.rows("SELECT * FROM public.memberships ORDER BY id")
    assert len(rows) == 2
    old, new = rows
    assert new["state"] == "settled"
    assert new["user_id"] == "member_7" and new["price"] == old["price"]
    assert new["reference"] != old["reference"]
    pay = db.row("SELECT * FROM payment.payments WHERE recurring_payment_id = %s", (rid,))
    assert pay["order_id"] == new["id"] and pay["amount"] == 1999 and pay["status"] == "succeeded"


def test_the_first_invoice_is_a_payment_of_the_subscriptions_own_order(shop):
    s = shop.subscription(status="incomplete")
    n_orders = len(orders(shop))
    in_id = ev.stripe_id("in")
    for type_ in ("invoice.paid", "invoice.payment_succeeded"):
        res = shop.deliver(inv_event(s, type_, in_id=in_id, billing_reason="subscription_create"))
        assert res["outcome"] == "applied"
    assert len(orders(shop)) == n_orders
    [payment] = shop.rows("SELECT * FROM payment.payments WHERE recurring_payment_id = %s", (s.id,))
    assert (payment["order_id"], payment["status"], payment["amount"]) == (s.order_id, "succeeded", 1000)
