"""Step 1 of process_stripe_event: verify the Stripe-Signature header over the
exact bytes, then refuse anything that is not a Stripe event. Every refusal is
an error of SQLSTATE class 22 or 28 (a relay answers 400) and writes nothing."""

import json

import psycopg
import pytest
import stripe

import stripe_events as ev
from e2e_helpers import refused


@pytest.fixture
def paid_later(shop):
    """A pending payment and the signed-able succeeded event for it."""
    p = shop.payment()
    return p, ev.pi_event("payment_intent.succeeded", p.pi)


def assert_nothing_written(shop, before):
    assert shop.snapshot() == before


def test_correctly_signed_event_is_applied_and_recorded(shop, paid_later):
    p, evt = paid_later
    res = shop.deliver(evt)
    assert res["outcome"] == "applied"
    assert res["event_id"] == evt["id"]
    assert res["type"] == "payment_intent.succeeded"
    row = shop.event_row(evt["id"])
    assert row["outcome"] == "applied"
    assert row["type"] == "payment_intent.succeeded"
    assert row["api_version"] == ev.NEW_API
    assert row["livemode"] is False
    assert row["processed_at"] is not None and row["received_at"] is not None
    assert int(row["created"].timestamp()) == evt["created"]
    assert row["payload"]["id"] == evt["id"]
    assert row["error"] is None
    assert shop.payment_row(p.id)["status"] == "succeeded"


def test_header_made_by_the_stripe_library_is_accepted(shop, paid_later):
    p, evt = paid_later
    body = ev.payload(evt)
    header = stripe.WebhookSignature.generate_signature_header(body, ev.WEBHOOK_SECRET)
    # The library's own verifier agrees with the header we send...
    assert stripe.WebhookSignature.verify_header(body, header, ev.WEBHOOK_SECRET, tolerance=300)
    # ...and so must the extension.
    assert shop.deliver(body, header=header)["outcome"] == "applied"
    assert shop.payment_row(p.id)["status"] == "succeeded"


def test_hand_computed_v1_matches_the_stripe_library(shop, paid_later):
    _, evt = paid_later
    body = ev.payload(evt)
    t = ev.now()
    assert f"t={t},v1={ev.v1(body, t=t)}" == ev.sign(body, t=t)
    assert shop.deliver(body, header=f"t={t},v1={ev.v1(body, t=t)}")["outcome"] == "applied"


def test_signature_covers_exact_bytes_including_non_ascii_and_whitespace(shop):
    p = shop.payment()
    evt = ev.pi_event("payment_intent.succeeded", p.pi)
    evt["data"]["object"]["description"] = "Café crème ☕ — ½ off, 日本語"
    evt["data"]["object"]["metadata"] = {"note": "naïve \"quoted\" \\ backslash"}
    pretty = ev.payload(evt)
    compact = json.dumps(evt, separators=(",", ":"), ensure_ascii=False)
    before = shop.snapshot()
    # The same JSON re-serialised is different bytes: the signature no longer holds.
    refused(shop.deliver, compact, header=ev.sign(pretty))
    assert_nothing_written(shop, before)
    assert shop.deliver(pretty)["outcome"] == "applied"
    assert shop.event_row(evt["id"])["payload"]["data"]["object"]["description"] == "Café crème ☕ — ½ off, 日本語"


def test_tampered_body_is_refused_and_nothing_written(shop, paid_later):
    _, evt = paid_later
    body = ev.payload(evt)
    header = ev.sign(body)
    tampered = body.replace('"amount": 1000', '"amount": 1', 1)
    assert tampered != body
    before = shop.snapshot()
    refused(shop.deliver, tampered, header=header)
    assert_nothing_written(shop, before)


def test_wrong_secret_is_refused_and_nothing_written(shop, paid_later):
    _, evt = paid_later
    before = shop.snapshot()
    refused(shop.deliver, evt, secret="whsec_some_other_endpoint")
    assert_nothing_written(shop, before)


def test_stale_timestamp_is_refused_and_nothing_written(shop, paid_later):
    _, evt = paid_later
    before = shop.snapshot()
    refused(shop.deliver, evt, t=ev.now() - 3600)
    assert_nothing_written(shop, before)


def test_timestamp_inside_default_tolerance_is_accepted(shop, paid_later):
    _, evt = paid_later
    assert shop.deliver(evt, t=ev.now() - 120)["outcome"] == "applied"


def test_tolerance_setting_is_honoured(shop, paid_later):
    _, evt = paid_later
    shop.conn.execute("SET pg_payment.webhook_tolerance_s = 10")
    before = shop.snapshot()
    refused(shop.deliver, evt, t=ev.now() - 60)
    assert_nothing_written(shop, before)
    shop.conn.execute("RESET pg_payment.webhook_tolerance_s")
    assert shop.deliver(evt, t=ev.now() - 60)["outcome"] == "applied"


@pytest.mark.parametrize("make_header", [
    pytest.param(lambda body, t: f"v1={ev.v1(body, t=t)}", id="no-t"),
    pytest.param(lambda body, t: f"t={t}", id="no-v1"),
    pytest.param(lambda body, t: "", id="empty"),
    pytest.param(lambda body, t: f"t=yesterday,v1={ev.v1(body, t=t)}", id="t-not-a-number"),
    pytest.param(lambda body, t: f"t={t},v1=", id="empty-v1"),
    pytest.param(lambda body, t: f"t={t},v1={ev.v1(body, t=t)[:-2]}", id="truncated-v1"),
    pytest.param(lambda body, t: f"t={t},v1={ev.v1(body, t=t).upper()}zz", id="garbage-v1"),
    pytest.param(lambda body, t: f"t={t},v0={ev.v1(body, t=t)}", id="only-v0"),
    pytest.param(lambda body, t: f"t={t + 1},v1={ev.v1(body, t=t)}", id="t-does-not-match-mac"),
    pytest.param(lambda body, t: "garbage without any structure", id="garbage"),
])
def test_malformed_signature_header_is_refused_and_nothing_written(shop, paid_later, make_header):
    _, evt = paid_later
    body = ev.payload(evt)
    before = shop.snapshot()
    refused(shop.deliver, body, header=make_header(body, ev.now()))
    assert_nothing_written(shop, before)


def test_one_matching_v1_among_several_is_enough(shop, paid_later):
    _, evt = paid_later
    body = ev.payload(evt)
    t = ev.now()
    good = ev.v1(body, t=t)
    wrong = ev.v1(body, secret="whsec_old_secret", t=t)
    header = f"t={t},v1={wrong},v1={'0' * 64},v1={good}"
    assert shop.deliver(body, header=header)["outcome"] == "applied"


def test_v0_scheme_is_ignored_next_to_a_valid_v1(shop, paid_later):
    _, evt = paid_later
    body = ev.payload(evt)
    t = ev.now()
    header = f"t={t},v1={ev.v1(body, t=t)},v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39"
    assert shop.deliver(body, header=header)["outcome"] == "applied"


def test_two_webhook_secrets_are_valid_during_rotation(shop):
    new_secret = "whsec_test_rotated_e2e"
    shop.conn.execute("SELECT payment.add_webhook_secret(%s::text)", (new_secret,))
    p1, p2, p3, p4 = (shop.payment() for _ in range(4))
    assert shop.deliver(ev.pi_event("payment_intent.succeeded", p1.pi), secret=ev.WEBHOOK_SECRET)["outcome"] == "applied"
    assert shop.deliver(ev.pi_event("payment_intent.succeeded", p2.pi), secret=new_secret)["outcome"] == "applied"

    # Stripe signs with both while an endpoint's secret is rolled.
    evt = ev.pi_event("payment_intent.succeeded", p3.pi)
    body, t = ev.payload(evt), ev.now()
    header = f"t={t},v1={ev.v1(body, new_secret, t)},v1={ev.v1(body, ev.WEBHOOK_SECRET, t)}"
    assert shop.deliver(body, header=header)["outcome"] == "applied"

    shop.conn.execute("SELECT payment.remove_webhook_secret(%s::text)", (ev.WEBHOOK_SECRET,))
    evt4 = ev.pi_event("payment_intent.succeeded", p4.pi)
    before = shop.snapshot()
    refused(shop.deliver, evt4, secret=ev.WEBHOOK_SECRET)
    assert_nothing_written(shop, before)
    assert shop.deliver(evt4, secret=new_secret)["outcome"] == "applied"


def test_no_webhook_secret_configured_refuses_every_event(db):
    db.conn.execute("SELECT payment.configure(%s::text, %s::text)", (ev.SECRET_KEY, ev.PUBLISHABLE_KEY))
    evt = ev.pi_event("payment_intent.succeeded", ev.stripe_id("pi"))
    with pytest.raises(psycopg.Error):
        db.deliver(evt)
    assert db.event_count() == 0


@pytest.mark.parametrize("which", ["payload", "signature", "both"])
def test_null_payload_or_signature_is_refused(shop, paid_later, which):
    _, evt = paid_later
    body = ev.payload(evt)
    args = {
        "payload": (None, ev.sign(body)),
        "signature": (body, None),
        "both": (None, None),
    }[which]
    before = shop.snapshot()

    def call():
        # A STRICT function would quietly return NULL here; a relay needs an error.
        r = shop.conn.execute("SELECT payment.process_stripe_event(%s::text, %s::text)", args).fetchone()[0]
        raise AssertionError(f"no error for NULL {which}, result {r!r}")

    refused(call)
    assert_nothing_written(shop, before)


@pytest.mark.parametrize("body", [
    pytest.param("this is not json", id="not-json"),
    pytest.param('{"id": "evt_1", "type": "payment_intent.succeeded", ', id="truncated-json"),
    pytest.param("", id="empty"),
    pytest.param("[1, 2, 3]", id="json-array"),
    pytest.param('"evt_1"', id="json-string"),
    pytest.param("null", id="json-null"),
    pytest.param('{"hello": "world"}', id="object-not-an-event"),
    pytest.param('{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "charge", "type": "charge.refunded", "data": {"object": {}}}', id="object-field-not-event"),
    pytest.param('{"object": "event", "type": "payment_intent.succeeded", "created": 1700000000, "data": {"object": {"id": "pi_x", "object": "payment_intent"}}}', id="event-without-id"),
    pytest.param('{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "created": 1700000000, "data": {"object": {}}}', id="event-without-type"),
    pytest.param('{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "payment_intent.succeeded", "created": 1700000000}', id="event-without-data"),
    pytest.param('{"id": 42, "object": "event", "type": "payment_intent.succeeded", "created": 1700000000, "data": {"object": {}}}', id="id-not-a-string"),
])
def test_signed_body_that_is_not_a_stripe_event_is_refused(shop, body):
    before = shop.snapshot()
    refused(shop.deliver, body)
    assert_nothing_written(shop, before)


def test_body_with_trailing_newline_is_verified_over_its_exact_bytes(shop, paid_later):
    _, evt = paid_later
    body = ev.payload(evt) + "\n"
    before = shop.snapshot()
    refused(shop.deliver, body.rstrip("\n"), header=ev.sign(body))
    assert_nothing_written(shop, before)
    assert shop.deliver(body, header=ev.sign(body))["outcome"] == "applied"


def test_large_but_realistic_event_is_accepted(shop, paid_later):
    # An invoice with long line descriptions, or a PaymentIntent with full metadata
    # and a long description, runs to a few hundred kilobytes.
    p, evt = paid_later
    evt["data"]["object"]["description"] = "Order notes. " * 20_000
    evt["data"]["object"]["metadata"] = {f"key_{i}": "v" * 500 for i in range(50)}
    assert 250_000 < len(ev.payload(evt).encode()) < 1_000_000
    assert shop.deliver(evt)["outcome"] == "applied"
    assert shop.payment_row(p.id)["status"] == "succeeded"


def test_huge_signed_body_is_refused_and_nothing_written(shop, paid_later):
    _, evt = paid_later
    evt["data"]["object"]["metadata"] = {"blob": "x" * (10 * 1024 * 1024)}
    before = shop.snapshot()
    refused(shop.deliver, evt)
    assert_nothing_written(shop, before)
    assert shop.value("SELECT 1") == 1


def test_absurdly_nested_signed_body_is_refused_and_backend_survives(shop):
    depth = 100_000
    body = ('{"id": "evt_deep", "object": "event", "type": "payment_intent.succeeded", '
            '"created": 1700000000, "data": {"object": ' + "[" * depth + "]" * depth + "}}")
    before = shop.snapshot()
    refused(shop.deliver, body)
    # The backend did not crash: the same connection still answers.
    assert shop.value("SELECT 1") == 1
    assert_nothing_written(shop, before)
