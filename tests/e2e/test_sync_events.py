"""sync_events(): the events Stripe holds that no webhook brought, read from the fake
Stripe's /v1/events (newest first, pages of 100, a 30-day window, faults) and applied
oldest first through the same path as a delivery.

A "missed" webhook here is an event the fake Stripe made (so its list holds it) whose
payload nobody handed to process_stripe_event."""

import threading
import time

import psycopg
import pytest

import stripe_events as ev
from e2e_helpers import ADMIN, APP, WEBHOOK, denied, point_at

DAY = 24 * 3600


@pytest.fixture
def api(shop, fake):
    point_at(shop, fake.url)
    return shop


def sync(db, *args, conn=None):
    placeholders = ", ".join(["%s"] * len(args))
    return db.value(f"SELECT payment.sync_events({placeholders})", args, conn=conn)


def open_payment(db, price="10.00"):
    oid = db.order(price=price)
    return db.row("SELECT * FROM payment.create_payment(%s, 'usd', %s)",
                  (oid, int(float(price) * 100)))


def missed_success(db, fake, **kw):
    """A payment paid at Stripe whose payment_intent.succeeded webhook never arrived."""
    row = open_payment(db)
    out = fake.event("payment_intent.succeeded", row["stripe_payment_intent_id"], **kw)
    return row, out


def deliver(db, sent, conn=None):
    """The webhook of an event the fake Stripe made, as a relay hands it over."""
    return db.value("SELECT payment.process_stripe_event(%s, %s)",
                    (sent["payload"], sent["signature"]), conn=conn)


def paid_callbacks(db):
    return [c["cb"]["id"] for c in db.callback_log("payment") if c["cb"]["status"] == "succeeded"]


def event_listings(fake):
    return fake.requests(path="/v1/events", method="GET")


def test_a_missed_success_is_applied_with_its_callback(api, fake):
    api.add_logging_callback("payment")
    row, missed = missed_success(api, fake)
    assert api.payment_row(row["id"])["status"] == "pending"
    result = sync(api, conn=api.connect(ADMIN))
    assert {k: result[k] for k in ("seen", "applied", "duplicate", "ignored", "failed", "done")} == {
        "seen": 1, "applied": 1, "duplicate": 0, "ignored": 0, "failed": 0, "done": True}
    assert "error" not in result
    assert result["cursor"]["event_id"] == missed["event_id"]
    assert api.payment_row(row["id"])["status"] == "succeeded"
    assert api.event_row(missed["event_id"])["outcome"] == "applied"
    assert paid_callbacks(api) == [row["id"]]
    # What it asked Stripe: the handled types (at most 20), pages of 100, a time filter.
    query = event_listings(fake)[0]["form"]
    assert 0 < len(query["types"]) <= 20 and "payment_intent.succeeded" in query["types"]
    assert query["limit"] == "100" and "gte" in query["created"]


def test_a_delivered_event_is_not_applied_again_and_a_synced_one_is_a_duplicate_delivery(api, fake):
    api.add_logging_callback("payment")
    first, delivered = missed_success(api, fake)
    assert deliver(api, delivered)["outcome"] == "applied"
    second, missed = missed_success(api, fake)
    result = sync(api)
    assert (result["applied"], result["duplicate"]) == (1, 1)
    assert paid_callbacks(api) == [first["id"], second["id"]]  # none twice
    # Stripe now delivers the one sync applied: a duplicate, nothing runs again.
    assert deliver(api, missed)["outcome"] == "duplicate"
    assert paid_callbacks(api) == [first["id"], second["id"]]


@pytest.mark.parametrize("first", ["sync", "webhook"])
def test_a_sync_racing_a_delivery_of_the_same_event_applies_it_once(api, fake, first):
    api.add_logging_callback("payment")
    row, missed = missed_success(api, fake)
    holder = api.connect(autocommit=False)
    if first == "sync":
        assert sync(api, conn=holder)["applied"] == 1
    else:
        assert deliver(api, missed, conn=holder)["outcome"] == "applied"
    results = []

    def other():
        if first == "sync":
            results.append(deliver(api, missed, conn=api.connect())["outcome"])
        else:
            results.append(sync(api, conn=api.connect()))

    t = threading.Thread(target=other)
    t.start()
    time.sleep(0.5)
    assert t.is_alive(), "the second one did not wait for the first"
    holder.commit()
    t.join(30)
    assert not t.is_alive()
    if first == "sync":
        assert results == ["duplicate"]
    else:
        assert (results[0]["applied"], results[0]["duplicate"]) == (0, 1)
    assert paid_callbacks(api) == [row["id"]]
    assert api.payment_row(row["id"])["status"] == "succeeded"


def test_more_than_a_page_is_applied_oldest_first(api, fake):
    api.add_logging_callback("payment")
    missed = [missed_success(api, fake) for _ in range(105)]
    result = sync(api)
    assert (result["seen"], result["applied"], result["done"]) == (105, 105, True)
    assert result["cursor"]["event_id"] == missed[-1][1]["event_id"]
    statuses = api.rows("SELECT status, count(*) AS n FROM payment.payments GROUP BY status")
    assert [(s["status"], s["n"]) for s in statuses] == [("succeeded", 105)]
    # Oldest first: the callbacks ran in the order Stripe made the events.
    assert paid_callbacks(api) == [row["id"] for row, _ in missed]
    assert any(r["form"].get("ending_before") for r in event_listings(fake))


def test_max_events_stops_early_and_the_next_call_goes_on_from_the_cursor(api, fake):
    missed = [missed_success(api, fake) for _ in range(5)]
    first = sync(api, None, 2)
    assert (first["applied"], first["done"]) == (2, False)
    assert first["cursor"]["event_id"] == missed[1][1]["event_id"]
    assert [api.payment_row(r["id"])["status"] for r, _ in missed] == ["succeeded"] * 2 + ["pending"] * 3
    second = sync(api)
    # The overlap lists the first two again: counted as duplicates, not applied.
    assert (second["applied"], second["duplicate"], second["done"]) == (3, 2, True)
    assert second["cursor"]["event_id"] == missed[-1][1]["event_id"]
    assert all(api.payment_row(r["id"])["status"] == "succeeded" for r, _ in missed)
    assert sync(api)["applied"] == 0


def test_a_missed_event_older_than_newer_deliveries_is_still_found(api, fake):
    sync(api)  # a first call: the cursor is now
    row, missed = missed_success(api, fake)  # lost
    for _ in range(3):  # newer ones that did arrive
        _, delivered = missed_success(api, fake)
        assert deliver(api, delivered)["outcome"] == "applied"
    result = sync(api)
    assert (result["applied"], result["duplicate"]) == (1, 3)
    assert api.payment_row(row["id"])["status"] == "succeeded"


def test_a_stripe_error_part_way_returns_what_was_applied_and_the_next_call_goes_on(api, fake):
    missed = [missed_success(api, fake) for _ in range(105)]
    since = api.value("SELECT now() - interval '10 minutes'")
    # The first listing (the newest 100) and the next (the 5 oldest) answer; then the walk
    # towards the present fails, retries included.
    fake.faults("/v1/events", [{}, {}] + [{"status": 500}] * 3, method="GET")
    result = sync(api, since)
    assert (result["applied"], result["done"]) == (5, False)
    assert "Stripe" in result["error"], result["error"]
    assert result["cursor"]["event_id"] == missed[4][1]["event_id"]
    assert api.value("SELECT count(*) FROM payment.payments WHERE status = 'succeeded'") == 5
    # The error is in the request log, like every Stripe call's.
    assert api.value("SELECT count(*) FROM payment.api_requests WHERE path = '/v1/events'"
                     " AND http_status = 500") == 3
    again = sync(api)
    assert (again["applied"], again["done"]) == (100, True)
    assert "error" not in again
    assert api.value("SELECT count(*) FROM payment.payments WHERE status = 'succeeded'") == 105


def test_a_stripe_error_on_the_first_listing_applies_nothing_and_keeps_the_cursor(api, fake):
    missed_success(api, fake)
    fake.faults("/v1/events", [{"status": 401}], method="GET")
    result = sync(api)
    assert (result["applied"], result["seen"], result["done"], result["cursor"]) == (0, 0, False, None)
    assert result["error"]
    assert sync(api)["applied"] == 1


def test_a_cancelled_call_loses_its_work_and_its_cursor_together(api, fake):
    row, missed = missed_success(api, fake)
    c = api.connect(autocommit=False)
    assert sync(api, conn=c)["applied"] == 1
    c.rollback()
    assert api.payment_row(row["id"])["status"] == "pending"
    assert api.value("SELECT count(*) FROM payment.sync_state") == 0
    assert sync(api)["applied"] == 1
    assert api.payment_row(row["id"])["status"] == "succeeded"


def test_the_first_call_looks_three_days_back_and_since_goes_further(api, fake):
    now = int(time.time())
    old_row, old = missed_success(api, fake, created=now - 5 * DAY)
    new_row, new = missed_success(api, fake, created=now - 2 * DAY)
    first = sync(api)
    assert first["applied"] == 1
    assert api.payment_row(new_row["id"])["status"] == "succeeded"
    assert api.payment_row(old_row["id"])["status"] == "pending"
    kept = api.value("SELECT cursor_event_id FROM payment.sync_state")
    assert kept == new["event_id"]
    back = sync(api, api.value("SELECT now() - interval '6 days'"))
    assert (back["applied"], back["duplicate"]) == (1, 1)
    assert api.payment_row(old_row["id"])["status"] == "succeeded"
    # A call with an older `since` never moves the kept cursor back.
    assert api.value("SELECT cursor_event_id FROM payment.sync_state") == new["event_id"]
    assert back["cursor"]["event_id"] == new["event_id"]


def test_events_older_than_stripe_keeps_are_not_listed(api, fake):
    row, _ = missed_success(api, fake, created=int(time.time()) - 31 * DAY)
    result = sync(api, api.value("SELECT now() - interval '40 days'"))
    assert (result["seen"], result["done"]) == (0, True)
    assert api.payment_row(row["id"])["status"] == "pending"


def test_a_failing_apply_is_stored_failed_and_the_call_goes_on(api, fake):
    api.add_logging_callback("payment")
    rows = [missed_success(api, fake) for _ in range(2)]
    api.set_handlers_failing(True)
    result = sync(api)
    assert (result["failed"], result["applied"], result["done"]) == (2, 0, True)
    assert [api.event_row(m["event_id"])["outcome"] for _, m in rows] == ["failed", "failed"]
    api.set_handlers_failing(False)
    # A stored failed event met again is applied again.
    again = sync(api, api.value("SELECT now() - interval '1 hour'"))
    assert again["applied"] == 2
    assert all(api.payment_row(r["id"])["status"] == "succeeded" for r, _ in rows)


def test_events_of_other_kinds_apply_too(api, fake):
    api.add_logging_callback("refund")
    api.add_logging_callback("recurring_management")
    paid = open_payment(api)
    fake.event("payment_intent.succeeded", paid["stripe_payment_intent_id"])
    assert sync(api)["applied"] == 1
    refund = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (paid["id"],))
    fake.event("refund.updated", refund["stripe_refund_id"], status="succeeded")
    sub = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')",
                  (api.order(price="10.00", user_id="syncer"),))
    fake.event("customer.subscription.updated", sub["stripe_subscription_id"], status="active")
    result = sync(api)
    assert result["failed"] == 0 and result["applied"] >= 2, result
    assert api.payment_row(paid["id"])["status"] == "partially_refunded"
    assert api.recurring_row(sub["id"])["status"] == "active"
    assert api.callback_log("recurring_management")[-1]["cb"]["status"] == "active"


def test_sync_is_for_payment_admin_at_read_committed_with_checked_arguments(api, fake):
    denied(api.connect(APP), "SELECT payment.sync_events()")
    denied(api.connect(WEBHOOK), "SELECT payment.sync_events()")
    c = api.connect(autocommit=False)
    c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    with pytest.raises(psycopg.Error) as info:
        c.execute("SELECT payment.sync_events()")
    assert info.value.sqlstate == "25001"
    c.rollback()
    for bad, state in (("0", "22023"), ("100001", "22023"), ("NULL", "22004")):
        with pytest.raises(psycopg.Error) as info:
            api.conn.execute(f"SELECT payment.sync_events(NULL, {bad})")
        assert info.value.sqlstate == state, bad
    with pytest.raises(psycopg.Error) as info:
        api.conn.execute("SELECT payment.sync_events('infinity')")
    assert info.value.sqlstate == "22023"
    assert event_listings(fake) == []  # nothing refused reached Stripe


def test_no_keys_is_a_configuration_error_not_a_listing_error(db):
    with pytest.raises(psycopg.Error) as info:
        db.conn.execute("SELECT payment.sync_events()")
    assert info.value.sqlstate == "55000" and "configure" in str(info.value)


def test_a_call_with_since_that_stops_early_reports_where_it_stopped_and_goes_on_from_there(api, fake):
    now = int(time.time())
    missed_success(api, fake)
    assert sync(api)["applied"] == 1  # the kept cursor is now
    kept = api.value("SELECT cursor_event_id FROM payment.sync_state")
    missed = [missed_success(api, fake, created=now - 4 * DAY + i) for i in range(3)]
    first = sync(api, api.value("SELECT now() - interval '5 days'"), 2)
    assert (first["applied"], first["done"]) == (2, False)
    # Where this call got to, not the kept cursor further on (which stays).
    assert first["cursor"]["event_id"] == missed[1][1]["event_id"]
    assert api.value("SELECT cursor_event_id FROM payment.sync_state") == kept
    rest = sync(api, first["cursor"]["created"])
    assert (rest["applied"], rest["done"]) == (1, True)
    assert all(api.payment_row(r["id"])["status"] == "succeeded" for r, _ in missed)


def test_events_delivered_already_are_met_at_most_ten_per_budgeted_event(api, fake):
    now = int(time.time())
    delivered = [missed_success(api, fake, created=now - 100 + i)[1] for i in range(12)]
    for sent in delivered:
        assert deliver(api, sent)["outcome"] == "applied"
    since = api.value("SELECT now() - interval '1 hour'")
    first = sync(api, since, 1)
    assert (first["seen"], first["duplicate"], first["applied"], first["done"]) == (10, 10, 0, False)
    rest = sync(api, first["cursor"]["created"], 1)
    assert (rest["done"], rest["applied"]) == (True, 0) and rest["duplicate"] >= 2, rest
