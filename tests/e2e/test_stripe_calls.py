"""The SQL functions that call Stripe, against the project's own test server
(tests/stripe_servers/fake_stripe.py: idempotency like Stripe's, fault injection)
and, where it covers the API, against localstripe."""

import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psycopg
import pytest

import stripe_events as ev
from e2e_helpers import ADMIN, APP, INSUFFICIENT_PRIVILEGE, point_at

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stripe_servers"))
from localstripe_server import LocalStripe, WebhookCatcher  # noqa: E402




@pytest.fixture
def api(shop, fake):
    point_at(shop, fake.url)
    return shop


def create_payment(shop, order_id, currency, amount, conn=None):
    return shop.row("SELECT * FROM payment.create_payment(%s, %s, %s)", (order_id, currency, amount), conn=conn)


def sql_error(fn, *args, **kw):
    with pytest.raises(psycopg.Error) as info:
        fn(*args, **kw)
    return info.value


def post(url, form):
    data = urllib.parse.urlencode(form).encode()
    req = urllib.request.Request(url, data=data, headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def paid(api, fake, price="10.00", amount=1000):
    """A payment created through the API, paid with a test card, its webhook applied."""
    oid = api.order(price=price)
    row = create_payment(api, oid, "usd", amount)
    post(f"{fake.url}/v1/payment_intents/{row['stripe_payment_intent_id']}/confirm",
         {"payment_method": "pm_card_visa"})
    sent = fake.event("payment_intent.succeeded", row["stripe_payment_intent_id"])
    result = api.value("SELECT payment.process_stripe_event(%s, %s)", (sent["payload"], sent["signature"]))
    assert result["outcome"] == "applied", result
    assert api.payment_row(row["id"])["status"] == "succeeded"
    return row


# -- create_payment ---------------------------------------------------------------


def test_create_payment_creates_a_payment_intent_and_returns_the_row(api, fake):
    oid = api.order(price="99.99")
    row = create_payment(api, oid, "USD", 9999)
    assert row["order_id"] == oid and row["amount"] == 9999 and row["currency"] == "usd"
    assert row["status"] == "pending"
    assert row["stripe_payment_intent_id"].startswith("pi_")
    assert row["client_secret"].startswith(row["stripe_payment_intent_id"] + "_secret_")

    [request] = fake.requests("/v1/payment_intents", method="POST")
    assert request["form"]["amount"] == "9999" and request["form"]["currency"] == "usd"
    assert request["form"]["metadata"]["pg_payment_order_id"] == str(oid)
    installation = api.value("SELECT id::text FROM payment.installation")
    assert request["form"]["metadata"]["pg_payment_installation"] == installation
    assert "automatic_payment_methods" not in str(request["form"])
    headers = {k.lower(): v for k, v in request["headers"].items()}
    assert headers["authorization"] == f"Bearer {ev.SECRET_KEY}"
    assert headers["stripe-version"] == "2025-03-31.basil"
    assert headers["idempotency-key"].startswith("pgpay-")

    [logged] = api.rows("SELECT * FROM payment.api_requests")
    assert (logged["method"], logged["path"], logged["http_status"]) == ("POST", "/v1/payment_intents", 200)
    assert logged["idempotency_key"] == headers["idempotency-key"]
    assert logged["stripe_request_id"] == request["request_id"]


@pytest.mark.parametrize("price,currency,amount", [
    ("99.99", "usd", 99),        # the x100 forgotten
    ("99.99", "usd", 999900),    # the x100 doubled
    ("500", "jpy", 50000),       # JPY has no minor unit
    ("1.5", "kwd", 150),         # KWD has three decimals
    ("1.5", "kwd", 1501),        # ...and Stripe wants the last digit 0
    ("10.00", "xyz", 1000),      # not a currency
    ("10.00", "usd", 0),
    ("10.00", "usd", -1000),
])
def test_a_wrong_amount_is_refused_before_stripe_is_called(api, fake, price, currency, amount):
    oid = api.order(price=price, currency=currency)
    err = sql_error(create_payment, api, oid, currency, amount)
    assert err.sqlstate == "22023", err
    if amount > 0 and currency == "usd":
        assert str(amount) in str(err) and "9999" in str(err)
    assert fake.requests("/v1/payment_intents") == []
    assert api.value("SELECT count(*) FROM payment.payments") == 0


@pytest.mark.parametrize("price,currency,amount", [
    ("500", "jpy", 500), ("1.5", "kwd", 1500), ("99.99", "eur", 9999), ("1000", "isk", 100000),
])
def test_amounts_follow_each_currencys_exponent(api, fake, price, currency, amount):
    oid = api.order(price=price, currency=currency)
    assert create_payment(api, oid, currency, amount)["amount"] == amount


def test_currency_helpers_are_exact(api):
    assert api.value("SELECT payment.to_minor_units(99.99, 'usd')") == 9999
    assert api.value("SELECT payment.to_minor_units(500, 'JPY')") == 500
    assert str(api.value("SELECT payment.from_minor_units(1500, 'kwd')")) in ("1.5", "1.500")
    err = sql_error(api.value, "SELECT payment.to_minor_units(0.001, 'usd')")
    assert err.sqlstate == "22023"


def test_the_currency_column_must_match(api, fake):
    api.conn.execute("CREATE TABLE public.priced (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                     "user_id text, price numeric NOT NULL, status text DEFAULT 'new', cur text)")
    # One link per database: this database is linked to public.orders already.
    err = sql_error(api.conn.execute, "SELECT payment.link_order_table('public.priced', currency_column => 'cur')")
    assert err.sqlstate == "2BP01"


def test_a_rolled_back_call_replays_to_the_same_payment_intent(api, fake):
    oid = api.order(price="10.00")
    conn = api.connect(autocommit=False)
    first = create_payment(api, oid, "usd", 1000, conn=conn)
    conn.rollback()
    second = create_payment(api, oid, "usd", 1000)
    assert second["stripe_payment_intent_id"] == first["stripe_payment_intent_id"]
    keys = [r["headers"].get("Idempotency-Key") or r["headers"].get("idempotency-key")
            for r in fake.requests("/v1/payment_intents", method="POST")]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert api.value("SELECT count(*) FROM payment.payments") == 1


def test_a_second_attempt_after_a_failed_payment_reuses_its_payment_intent(api, fake):
    """After a decline a PaymentIntent goes back to requires_payment_method and the customer
    retries it (Stripe: one PaymentIntent per order): the same row, no new one at Stripe."""
    oid = api.order(price="10.00")
    first = create_payment(api, oid, "usd", 1000)
    api.deliver(ev.pi_event("payment_intent.payment_failed", first["stripe_payment_intent_id"]))
    assert api.payment_row(first["id"])["status"] == "failed"
    second = create_payment(api, oid, "usd", 1000)
    assert (second["id"], second["stripe_payment_intent_id"], second["client_secret"]) == (
        first["id"], first["stripe_payment_intent_id"], first["client_secret"])
    assert len(fake.requests("/v1/payment_intents", method="POST")) == 1


def test_network_errors_409_and_5xx_are_retried_with_the_same_key(api, fake):
    fake.faults("/v1/payment_intents", [{"status": 500}, {"status": 409}, {"drop": True}])
    api.conn.execute("SET pg_payment.max_network_retries = 3")
    oid = api.order(price="10.00")
    row = create_payment(api, oid, "usd", 1000)
    assert row["stripe_payment_intent_id"].startswith("pi_")
    requests = fake.requests("/v1/payment_intents", method="POST")
    assert len(requests) == 4
    assert len({r["headers"].get("Idempotency-Key") for r in requests}) == 1
    logged = api.rows("SELECT http_status, error_type FROM payment.api_requests ORDER BY id")
    assert [r["http_status"] for r in logged] == [500, 409, None, 200]


@pytest.mark.parametrize("fault,sqlstate", [
    ({"status": 402, "error": {"type": "card_error", "code": "card_declined",
                               "decline_code": "insufficient_funds", "message": "Your card has insufficient funds."}},
     "22023"),
    ({"status": 400, "error": {"type": "invalid_request_error", "param": "amount", "message": "Bad amount."}}, "22023"),
    ({"status": 429, "error": {"type": "rate_limit_error", "message": "Too many requests."}}, "53000"),
    ({"status": 401, "error": {"type": "authentication_error", "message": "Invalid API Key provided."}}, "28000"),
])
def test_other_4xx_are_not_retried_and_become_sql_errors(api, fake, fault, sqlstate):
    fake.faults("/v1/payment_intents", [fault])
    oid = api.order(price="10.00")
    err = sql_error(create_payment, api, oid, "usd", 1000)
    assert err.sqlstate == sqlstate
    assert fault["error"]["message"] in err.diag.message_primary
    detail = err.diag.message_detail or ""
    assert f"type: {fault['error']['type']}" in detail and "request_id: req_" in detail
    if "decline_code" in fault["error"]:
        assert "decline_code: insufficient_funds" in detail
    assert len(fake.requests("/v1/payment_intents", method="POST")) == 1
    assert ev.SECRET_KEY not in str(err) and ev.SECRET_KEY not in detail


def test_broken_json_from_stripe_is_an_error_not_a_crash(api, fake):
    fake.faults("/v1/payment_intents", [{"status": 200, "body": "{not json"}])
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    err = sql_error(create_payment, api, api.order(price="10.00"), "usd", 1000)
    assert err.sqlstate == "58000"


def test_a_hung_stripe_is_ended_by_statement_timeout_within_a_second(api, fake):
    fake.faults("/v1/payment_intents", [{"delay_s": 30}])
    api.conn.execute("SET statement_timeout = '500ms'")
    oid = api.order(price="10.00")
    started = time.monotonic()
    err = sql_error(create_payment, api, oid, "usd", 1000)
    assert err.sqlstate == "57014"
    assert time.monotonic() - started < 2.0


def test_http_timeout_bounds_each_attempt(api, fake):
    fake.faults("/v1/payment_intents", [{"delay_s": 30}])
    api.conn.execute("SET pg_payment.http_timeout_ms = 300")
    api.conn.execute("SET pg_payment.max_network_retries = 0")
    started = time.monotonic()
    err = sql_error(create_payment, api, api.order(price="10.00"), "usd", 1000)
    assert err.sqlstate == "58000"
    assert time.monotonic() - started < 3.0


def test_the_app_role_creates_payments_and_cannot_refund(api, fake):
    app = api.connect(user=APP)
    oid = api.order(price="10.00")
    row = create_payment(api, oid, "usd", 1000, conn=app)
    assert row["stripe_payment_intent_id"].startswith("pi_")
    err = sql_error(app.execute, "SELECT payment.refund_payment(%s)", (row["id"],))
    assert err.sqlstate == INSUFFICIENT_PRIVILEGE


def test_the_api_base_cannot_be_repointed_by_the_app(api, fake):
    app = api.connect(user=APP)
    try:
        # Before the library is loaded in this session Postgres keeps a placeholder; when the
        # library loads, a value an ordinary role set for a superuser-only setting is dropped.
        app.execute("SET pg_payment.stripe_api_base = 'http://127.0.0.1:9'")
    except psycopg.Error as e:
        assert e.sqlstate == INSUFFICIENT_PRIVILEGE
    row = create_payment(api, api.order(price="10.00"), "usd", 1000, conn=app)
    assert row["stripe_payment_intent_id"].startswith("pi_")
    assert len(fake.requests("/v1/payment_intents", method="POST")) == 1
    err = sql_error(app.execute, "SET pg_payment.stripe_api_base = 'http://127.0.0.1:9'")
    assert err.sqlstate == INSUFFICIENT_PRIVILEGE


# -- refund_payment ----------------------------------------------------------------


def test_partial_then_remaining_refunds_and_nothing_more(api, fake):
    row = paid(api, fake)
    first = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (row["id"],))
    assert first["amount"] == 300 and first["stripe_refund_id"].startswith("re_")
    payment = api.payment_row(row["id"])
    assert (payment["amount_refunded"], payment["status"]) == (300, "partially_refunded")

    rest = api.row("SELECT * FROM payment.refund_payment(%s)", (row["id"],))
    assert rest["amount"] == 700
    payment = api.payment_row(row["id"])
    assert (payment["amount_refunded"], payment["status"]) == (1000, "refunded")

    before = len(fake.requests("/v1/refunds"))
    err = sql_error(api.value, "SELECT payment.refund_payment(%s, 1)", (row["id"],))
    assert err.sqlstate == "55000"   # refunded: nothing left to refund
    assert len(fake.requests("/v1/refunds")) == before
    form = fake.requests("/v1/refunds")[0]["form"]
    assert "reason" not in form and form["amount"] == "300"


def test_more_than_remains_is_refused_before_stripe_is_called(api, fake):
    row = paid(api, fake)
    err = sql_error(api.value, "SELECT payment.refund_payment(%s, 1001)", (row["id"],))
    assert err.sqlstate == "22023" and "1000" in str(err)
    assert fake.requests("/v1/refunds") == []


def test_a_rolled_back_refund_replays_and_a_new_one_of_the_same_amount_does_not(api, fake):
    row = paid(api, fake)
    conn = api.connect(autocommit=False)
    first = api.row("SELECT * FROM payment.refund_payment(%s, 200)", (row["id"],), conn=conn)
    conn.rollback()
    again = api.row("SELECT * FROM payment.refund_payment(%s, 200)", (row["id"],))
    assert again["stripe_refund_id"] == first["stripe_refund_id"]
    another = api.row("SELECT * FROM payment.refund_payment(%s, 200)", (row["id"],))
    assert another["stripe_refund_id"] != first["stripe_refund_id"]
    assert api.payment_row(row["id"])["amount_refunded"] == 400


def test_concurrent_refunds_never_exceed_what_was_received(api, fake):
    row = paid(api, fake)
    fake.faults("/v1/refunds", [{"delay_s": 1.0}])   # hold the first call in flight
    results = []

    def refund():
        conn = api.connect(user=ADMIN)
        try:
            results.append(api.value("SELECT (payment.refund_payment(%s, 600)).amount", (row["id"],), conn=conn))
        except psycopg.Error as e:
            results.append(e.sqlstate)

    threads = [threading.Thread(target=refund) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(map(str, results)) == ["22023", "22023", "600"]
    assert api.payment_row(row["id"])["amount_refunded"] == 600


def test_a_refund_webhook_after_the_api_answer_counts_the_money_once(api, fake):
    row = paid(api, fake)
    refund = api.row("SELECT * FROM payment.refund_payment(%s, 250)", (row["id"],))
    for kind in ("refund.created", "charge.refunded"):
        target = refund["stripe_refund_id"] if kind.startswith("refund") else None
        if target is None:
            target = fake.object(refund["stripe_refund_id"])["charge"]
        sent = fake.event(kind, target)
        result = api.value("SELECT payment.process_stripe_event(%s, %s)", (sent["payload"], sent["signature"]))
        assert result["outcome"] == "applied", result
    assert api.payment_row(row["id"])["amount_refunded"] == 250
    assert len(api.refunds_of(row["id"])) == 1


# -- subscriptions ------------------------------------------------------------------


def test_start_subscription_reuses_one_customer_per_user_and_cancels(api, fake):
    first_order = api.order(price="10.00", user_id="subscriber_9")
    second_order = api.order(price="10.00", user_id="subscriber_9")
    first = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (first_order,))
    second = api.row("SELECT * FROM payment.start_subscription(%s, 'price_yearly')", (second_order,))
    assert first["status"] == "incomplete" and first["stripe_subscription_id"].startswith("sub_")
    assert first["client_secret"]
    assert first["current_period_end"] is not None
    assert first["stripe_customer_id"] == second["stripe_customer_id"]
    assert len(fake.requests("/v1/customers", method="POST")) == 1
    form = fake.requests("/v1/subscriptions", method="POST")[0]["form"]
    assert form["items"][0]["price"] == "price_monthly"
    assert form["metadata"]["pg_payment_order_id"] == str(first_order)

    later = api.row("SELECT * FROM payment.cancel_subscription(%s, true)", (first["id"],))
    assert later["cancel_at_period_end"] is True and later["status"] != "canceled"
    now = api.row("SELECT * FROM payment.cancel_subscription(%s)", (first["id"],))
    assert now["status"] == "canceled" and now["canceled_at"] is not None
    again = api.row("SELECT * FROM payment.cancel_subscription(%s)", (first["id"],))
    assert again["status"] == "canceled"
    assert len(fake.requests(f"/v1/subscriptions/{first['stripe_subscription_id']}", method="DELETE")) == 1


def test_a_renewal_webhook_for_an_api_created_subscription_creates_the_new_order(api, fake):
    oid = api.order(price="10.00", user_id="subscriber_10")
    sub = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,))
    for kind in ("customer.subscription.updated",):
        sent = fake.event(kind, sub["stripe_subscription_id"], status="active")
        assert api.value("SELECT payment.process_stripe_event(%s, %s)",
                         (sent["payload"], sent["signature"]))["outcome"] == "applied"
    sent = fake.event("invoice.paid", sub["stripe_subscription_id"])
    assert api.value("SELECT payment.process_stripe_event(%s, %s)",
                     (sent["payload"], sent["signature"]))["outcome"] == "applied"
    orders = api.rows("SELECT id, status FROM public.orders WHERE user_id = 'subscriber_10' ORDER BY id")
    assert [o["status"] for o in orders] == ["new", "paid"]


# -- localstripe: a real, stateful peer ------------------------------------------


@pytest.fixture
def localstripe(tmp_path):
    server = LocalStripe.start(tmp_path / "localstripe")
    try:
        yield server
    finally:
        server.stop()


def test_payment_refund_and_webhook_against_localstripe(shop, localstripe):
    point_at(shop, localstripe.url)
    with WebhookCatcher() as catcher:
        localstripe.add_webhook("e2e", catcher.url, ev.WEBHOOK_SECRET)
        oid = shop.order(price="12.34")
        row = create_payment(shop, oid, "usd", 1234)
        assert row["stripe_payment_intent_id"].startswith("pi_")
        # The customer pays: attach a test card and confirm, as Stripe.js would.
        pi = row["stripe_payment_intent_id"]
        post(f"{localstripe.url}/v1/payment_intents/{pi}", {"payment_method": "pm_card_visa"})
        post(f"{localstripe.url}/v1/payment_intents/{pi}/confirm", {})
        [(body, signature)] = catcher.wait(1, timeout=15, type="payment_intent.succeeded")
        result = shop.value("SELECT payment.process_stripe_event(%s, %s)", (body.decode(), signature))
        assert result["outcome"] == "applied", result
        assert shop.payment_row(row["id"])["status"] == "succeeded"

        refund = shop.row("SELECT * FROM payment.refund_payment(%s, 234)", (row["id"],))
        assert refund["stripe_refund_id"].startswith("re_") and refund["status"] == "succeeded"
        payment = shop.payment_row(row["id"])
        assert (payment["amount_refunded"], payment["status"]) == (234, "partially_refunded")


def test_start_subscription_reads_the_price_first_and_localstripe_has_none(shop, localstripe):
    """start_subscription reads the Price before anything else (DESIGN: the Price must fit
    the order before any subscription is made). localstripe serves no Prices, so the call
    fails there with Stripe's error, and no customer and no subscription are created."""
    point_at(shop, localstripe.url)
    oid = shop.order(price="10.00", user_id="ls_user_1")
    err = sql_error(shop.row, "SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,))
    assert err.sqlstate in ("22023", "58000") and "Stripe" in err.diag.message_primary, err
    req = urllib.request.Request(f"{localstripe.url}/v1/customers?limit=100",
                                 headers={"Authorization": f"Bearer {ev.SECRET_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        customers = json.loads(resp.read())["data"]
    assert [c for c in customers if (c.get("metadata") or {}).get("pg_payment_user") == "ls_user_1"] == []
    assert shop.value("SELECT count(*) FROM payment.recurring_payments") == 0


def test_a_refund_whose_call_rolled_back_and_whose_webhook_arrived_is_not_made_twice(api, fake):
    row = paid(api, fake)
    conn = api.connect(autocommit=False)
    first = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (row["id"],), conn=conn)
    conn.rollback()
    # Stripe made the refund; its webhook records it against the payment.
    sent = fake.event("refund.created", first["stripe_refund_id"])
    assert api.value("SELECT payment.process_stripe_event(%s, %s)",
                     (sent["payload"], sent["signature"]))["outcome"] == "applied"
    again = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (row["id"],))
    assert again["stripe_refund_id"] == first["stripe_refund_id"]
    assert api.payment_row(row["id"])["amount_refunded"] == 300
    assert len(api.refunds_of(row["id"])) == 1
    # A genuinely new refund of the same amount is a new refund.
    another = api.row("SELECT * FROM payment.refund_payment(%s, 300)", (row["id"],))
    assert another["stripe_refund_id"] != first["stripe_refund_id"]
    assert api.payment_row(row["id"])["amount_refunded"] == 600


def test_a_webhook_waits_for_the_transaction_creating_its_subscription(api, fake):
    oid = api.order(price="10.00", user_id="subscriber_race")
    creator = api.connect(autocommit=False)
    sub = api.row("SELECT * FROM payment.start_subscription(%s, 'price_monthly')", (oid,), conn=creator)
    sent = fake.event("customer.subscription.updated", sub["stripe_subscription_id"], status="active")
    results = []
    relay = threading.Thread(target=lambda: results.append(api.value(
        "SELECT payment.process_stripe_event(%s, %s)", (sent["payload"], sent["signature"]),
        conn=api.connect())))
    relay.start()
    time.sleep(0.5)
    assert relay.is_alive(), "the webhook did not wait for the creating transaction"
    creator.commit()
    relay.join(10)
    assert results and results[0]["outcome"] == "applied"
    assert api.recurring_row(sub["id"])["status"] == "active"
