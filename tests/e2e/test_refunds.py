"""The refund callback: refund.* and charge.refunded move refunds; a payment's
amount_refunded is the sum of its live refunds, counted once per refund, and
its status follows."""

import pytest

import stripe_events as ev


def refund_created(p, amount, *, re_id=None, status="succeeded", created=None, api_version=ev.NEW_API):
    return ev.refund_event("refund.created", re_id or ev.stripe_id("re"), pi_id=p.pi, ch_id=p.charge,
                           amount=amount, status=status, created=created, api_version=api_version)


def test_refund_made_in_the_dashboard_is_recorded_against_its_payment(shop):
    p = shop.paid_payment()
    re_id = ev.stripe_id("re")
    assert shop.deliver(refund_created(p, 400, re_id=re_id))["outcome"] == "applied"
    refunds = shop.refunds_of(p.id)
    assert len(refunds) == 1
    r = refunds[0]
    assert r["stripe_refund_id"] == re_id
    assert r["amount"] == 400 and r["currency"] == "usd"
    assert r["status"] == "succeeded"
    assert r["reason"] == "requested_by_customer"
    row = shop.payment_row(p.id)
    assert row["amount_refunded"] == 400
    assert row["status"] == "partially_refunded"


def test_full_refund_marks_payment_refunded(shop):
    p = shop.paid_payment()
    shop.deliver(refund_created(p, 1000))
    row = shop.payment_row(p.id)
    assert row["amount_refunded"] == 1000
    assert row["status"] == "refunded"


@pytest.mark.parametrize("api_version", [ev.NEW_API, ev.OLD_API])
def test_refund_created_and_charge_refunded_for_one_refund_count_once(shop, api_version):
    p = shop.paid_payment(api_version=api_version)
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    created = refund_created(p, 300, re_id=re_id, created=t, api_version=api_version)
    refunded = ev.charge_refunded_event(p.charge, pi_id=p.pi, amount=1000, created=t,
                                        refunds=[created["data"]["object"]], api_version=api_version)
    assert shop.deliver(created)["outcome"] == "applied"
    assert shop.deliver(refunded)["outcome"] in ("applied", "ignored")
    assert [r["stripe_refund_id"] for r in shop.refunds_of(p.id)] == [re_id]
    row = shop.payment_row(p.id)
    assert row["amount_refunded"] == 300
    assert row["status"] == "partially_refunded"


def test_charge_refunded_first_then_refund_created_count_once(shop):
    # Old API shape: the charge embeds its refunds, so charge.refunded alone
    # tells which refund it is.
    p = shop.paid_payment(api_version=ev.OLD_API)
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    created = refund_created(p, 250, re_id=re_id, created=t, api_version=ev.OLD_API)
    refunded = ev.charge_refunded_event(p.charge, pi_id=p.pi, amount=1000, created=t,
                                        refunds=[created["data"]["object"]], api_version=ev.OLD_API)
    assert shop.deliver(refunded)["outcome"] == "applied"
    assert shop.deliver(created)["outcome"] in ("applied", "ignored")
    assert [r["stripe_refund_id"] for r in shop.refunds_of(p.id)] == [re_id]
    assert shop.payment_row(p.id)["amount_refunded"] == 250


def test_amount_refunded_is_the_sum_of_live_refunds(shop):
    p = shop.paid_payment()
    t = ev.now() - 500
    r1, r2, r3 = (ev.stripe_id("re") for _ in range(3))
    shop.deliver(refund_created(p, 500, re_id=r1, created=t))
    shop.deliver(refund_created(p, 300, re_id=r2, created=t + 1))
    row = shop.payment_row(p.id)
    assert (row["amount_refunded"], row["status"]) == (800, "partially_refunded")

    shop.deliver(refund_created(p, 200, re_id=r3, created=t + 2))
    row = shop.payment_row(p.id)
    assert (row["amount_refunded"], row["status"]) == (1000, "refunded")

    shop.deliver(ev.refund_event("refund.failed", r2, pi_id=p.pi, ch_id=p.charge, amount=300, created=t + 3))
    row = shop.payment_row(p.id)
    assert (row["amount_refunded"], row["status"]) == (700, "partially_refunded")
    statuses = {r["stripe_refund_id"]: r["status"] for r in shop.refunds_of(p.id)}
    assert statuses == {r1: "succeeded", r2: "failed", r3: "succeeded"}


def test_failed_only_refund_puts_payment_back_to_succeeded(shop):
    p = shop.paid_payment()
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    shop.deliver(refund_created(p, 1000, re_id=re_id, created=t))
    assert shop.payment_row(p.id)["status"] == "refunded"
    shop.deliver(ev.refund_event("refund.failed", re_id, pi_id=p.pi, ch_id=p.charge, amount=1000, created=t + 5))
    row = shop.payment_row(p.id)
    assert row["amount_refunded"] == 0
    assert row["status"] == "succeeded"
    r = shop.refunds_of(p.id)[0]
    assert r["status"] == "failed"
    assert r["failure_reason"] == "expired_or_canceled_card"


def test_pending_refund_counts_and_updated_moves_it_to_succeeded(shop):
    p = shop.paid_payment()
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    shop.deliver(refund_created(p, 600, re_id=re_id, status="pending", created=t))
    assert shop.refunds_of(p.id)[0]["status"] == "pending"
    assert shop.payment_row(p.id)["amount_refunded"] == 600
    shop.deliver(ev.refund_event("refund.updated", re_id, pi_id=p.pi, ch_id=p.charge, amount=600,
                                 status="succeeded", created=t + 10))
    assert shop.refunds_of(p.id)[0]["status"] == "succeeded"
    assert shop.payment_row(p.id)["amount_refunded"] == 600


def test_canceled_refund_does_not_count(shop):
    p = shop.paid_payment()
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    shop.deliver(refund_created(p, 400, re_id=re_id, status="requires_action", created=t))
    shop.deliver(ev.refund_event("refund.updated", re_id, pi_id=p.pi, ch_id=p.charge, amount=400,
                                 status="canceled", created=t + 10))
    assert shop.refunds_of(p.id)[0]["status"] == "canceled"
    row = shop.payment_row(p.id)
    assert row["amount_refunded"] == 0
    assert row["status"] == "succeeded"


def test_late_older_refund_update_does_not_undo_failure(shop):
    p = shop.paid_payment()
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    shop.deliver(refund_created(p, 500, re_id=re_id, status="pending", created=t))
    shop.deliver(ev.refund_event("refund.failed", re_id, pi_id=p.pi, ch_id=p.charge, amount=500, created=t + 20))
    shop.deliver(ev.refund_event("refund.updated", re_id, pi_id=p.pi, ch_id=p.charge, amount=500,
                                 status="succeeded", created=t + 10))
    assert shop.refunds_of(p.id)[0]["status"] == "failed"
    assert shop.payment_row(p.id)["amount_refunded"] == 0


def test_same_refund_delivered_as_two_events_is_counted_once(shop):
    p = shop.paid_payment()
    re_id = ev.stripe_id("re")
    t = ev.now() - 100
    shop.deliver(refund_created(p, 300, re_id=re_id, created=t))
    # refund.updated for the same refund, same amount (e.g. metadata changed)
    shop.deliver(ev.refund_event("refund.updated", re_id, pi_id=p.pi, ch_id=p.charge, amount=300,
                                 status="succeeded", created=t + 5))
    assert len(shop.refunds_of(p.id)) == 1
    assert shop.payment_row(p.id)["amount_refunded"] == 300


def test_refund_events_for_different_payments_stay_apart(shop):
    a, b = shop.paid_payment(), shop.paid_payment()
    shop.deliver(refund_created(a, 100))
    shop.deliver(refund_created(b, 1000))
    assert shop.payment_row(a.id)["amount_refunded"] == 100
    assert shop.payment_row(a.id)["status"] == "partially_refunded"
    assert shop.payment_row(b.id)["status"] == "refunded"


def test_refund_arriving_before_the_payment_succeeded_is_kept_and_counted(shop):
    # Stripe does not guarantee delivery order: the refund may come first.
    p = shop.payment()
    p.charge = ev.stripe_id("ch")
    t = ev.now() - 100
    assert shop.deliver(refund_created(p, 300, created=t + 5))["outcome"] == "applied"
    assert len(shop.refunds_of(p.id)) == 1
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi, created=t, charge_id=p.charge))
    row = shop.payment_row(p.id)
    assert row["amount_received"] == 1000
    assert row["amount_refunded"] == 300
    assert row["status"] == "partially_refunded"


def test_charge_refund_updated_moves_a_card_refund_on_api_versions_before_acacia(shop):
    """Before 2024-10-28 a card refund's updates came only as charge.refund.updated."""
    p = shop.paid_payment()
    re_id = ev.stripe_id("re")
    old = "2023-10-16"
    shop.deliver(ev.refund_event("refund.created", re_id, pi_id=p.pi, ch_id=p.charge, amount=400,
                                 status="pending", api_version=old, created=ev.now() - 60))
    updated = ev.refund_event("refund.updated", re_id, pi_id=p.pi, ch_id=p.charge, amount=400,
                              status="failed", api_version=old, created=ev.now())
    updated["type"] = "charge.refund.updated"
    assert shop.deliver(updated)["outcome"] == "applied"
    [refund] = shop.refunds_of(p.id)
    assert refund["status"] == "failed"
    payment = shop.payment_row(p.id)
    assert (payment["amount_refunded"], payment["status"]) == (0, "succeeded")
