"""The payment callback: payment_intent.* events move payments, forward only."""

import pytest

import stripe_events as ev


@pytest.mark.parametrize("type_,status", [
    ("payment_intent.requires_action", "requires_action"),
    ("payment_intent.processing", "processing"),
    ("payment_intent.succeeded", "succeeded"),
    ("payment_intent.payment_failed", "failed"),
    ("payment_intent.canceled", "canceled"),
])
def test_payment_intent_event_moves_payment_to_mapped_status(shop, type_, status):
    p = shop.payment()
    res = shop.deliver(ev.pi_event(type_, p.pi))
    assert res["outcome"] == "applied"
    assert shop.payment_row(p.id)["status"] == status


@pytest.mark.parametrize("api_version", [ev.NEW_API, "2024-06-20", ev.OLD_API])
def test_succeeded_records_amount_received_on_every_api_shape(shop, api_version):
    p = shop.payment(amount=2599)
    evt = ev.pi_event("payment_intent.succeeded", p.pi, amount=2599, api_version=api_version)
    if api_version == ev.OLD_API:
        assert "charges" in evt["data"]["object"] and "latest_charge" not in evt["data"]["object"]
    else:
        assert "latest_charge" in evt["data"]["object"]
    assert shop.deliver(evt)["outcome"] == "applied"
    row = shop.payment_row(p.id)
    assert row["status"] == "succeeded"
    assert row["amount_received"] == 2599
    assert row["amount_refunded"] in (0, None)


def test_payment_failed_records_failure_code_and_message(shop):
    p = shop.payment()
    shop.deliver(ev.pi_event("payment_intent.payment_failed", p.pi))
    row = shop.payment_row(p.id)
    assert row["status"] == "failed"
    # failure_code holds Stripe's error code, as a Charge's failure_code does.
    assert row["failure_code"] == "card_declined"
    assert row["failure_message"] == "Your card has insufficient funds."


def test_status_change_moves_updated_at(shop):
    p = shop.payment()
    before = shop.payment_row(p.id)["updated_at"]
    shop.deliver(ev.pi_event("payment_intent.processing", p.pi))
    assert shop.payment_row(p.id)["updated_at"] > before


def test_late_older_processing_never_overwrites_succeeded(shop):
    p = shop.payment()
    t = ev.now() - 300
    assert shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi, created=t))["outcome"] == "applied"
    late = ev.pi_event("payment_intent.processing", p.pi, created=t - 60)
    res = shop.deliver(late)
    assert res["outcome"] in ("applied", "ignored")
    row = shop.payment_row(p.id)
    assert row["status"] == "succeeded"
    assert row["amount_received"] == 1000
    assert shop.event_row(late["id"])["outcome"] in ("applied", "ignored")


def test_late_older_requires_action_never_overwrites_processing(shop):
    p = shop.payment()
    t = ev.now() - 300
    shop.deliver(ev.pi_event("payment_intent.processing", p.pi, created=t))
    shop.deliver(ev.pi_event("payment_intent.requires_action", p.pi, created=t - 30))
    assert shop.payment_row(p.id)["status"] == "processing"


def test_events_arriving_in_order_walk_the_whole_path(shop):
    p = shop.payment()
    t = ev.now() - 300
    seen = []
    for i, type_ in enumerate(["payment_intent.requires_action", "payment_intent.processing",
                               "payment_intent.succeeded"]):
        shop.deliver(ev.pi_event(type_, p.pi, created=t + i))
        seen.append(shop.payment_row(p.id)["status"])
    assert seen == ["requires_action", "processing", "succeeded"]


def test_failed_payment_may_still_succeed_when_the_customer_retries(shop):
    p = shop.payment()
    t = ev.now() - 300
    shop.deliver(ev.pi_event("payment_intent.payment_failed", p.pi, created=t))
    assert shop.payment_row(p.id)["status"] == "failed"
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi, created=t + 30))
    row = shop.payment_row(p.id)
    assert row["status"] == "succeeded"
    assert row["amount_received"] == 1000


@pytest.mark.parametrize("later", ["payment_intent.processing", "payment_intent.succeeded",
                                   "payment_intent.requires_action", "payment_intent.payment_failed"])
def test_canceled_is_final(shop, later):
    p = shop.payment()
    t = ev.now() - 300
    shop.deliver(ev.pi_event("payment_intent.canceled", p.pi, created=t))
    res = shop.deliver(ev.pi_event(later, p.pi, created=t + 30))
    assert res["outcome"] != "failed"
    assert shop.payment_row(p.id)["status"] == "canceled"


@pytest.mark.parametrize("later", ["payment_intent.processing", "payment_intent.payment_failed",
                                   "payment_intent.canceled", "payment_intent.requires_action"])
def test_succeeded_is_left_only_for_refund_states(shop, later):
    p = shop.payment()
    t = ev.now() - 300
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi, created=t))
    shop.deliver(ev.pi_event(later, p.pi, created=t + 30))
    assert shop.payment_row(p.id)["status"] == "succeeded"


def test_each_payment_only_moves_with_its_own_payment_intent(shop):
    a, b = shop.payment(), shop.payment()
    shop.deliver(ev.pi_event("payment_intent.succeeded", a.pi))
    assert shop.payment_row(a.id)["status"] == "succeeded"
    assert shop.payment_row(b.id)["status"] == "pending"


def test_processing_in_the_same_second_as_succeeded_does_not_undo_it(shop):
    # Event times have one-second resolution; two events of one PaymentIntent often
    # share a second and may arrive in either order.
    p = shop.payment()
    t = ev.now() - 300
    shop.deliver(ev.pi_event("payment_intent.succeeded", p.pi, created=t))
    shop.deliver(ev.pi_event("payment_intent.processing", p.pi, created=t))
    assert shop.payment_row(p.id)["status"] == "succeeded"
