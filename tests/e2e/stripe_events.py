"""Builders for Stripe webhook events, modelled on Stripe's API objects.

Two API shapes are covered, because a webhook endpoint keeps the API version it
was created with and an installation can receive either:

- new (2025-03-31.basil and later): a subscription's current_period_* live on
  its items, an invoice names its subscription under
  parent.subscription_details, a PaymentIntent names its charge in
  latest_charge (since 2022-11-15) and a Charge no longer embeds its refunds;
- old (e.g. 2017-08-15, what localstripe sends): current_period_* at the top of
  the subscription, invoice.subscription at the top, charges embedded in
  PaymentIntent.charges.data and refunds in Charge.refunds.data.

Stripe sends pretty-printed JSON and signs the exact bytes it sends, so
`payload()` pretty-prints and the signature is always computed over that string.
"""

import hashlib
import hmac
import json
import secrets
import string
import time
import uuid

import stripe

NEW_API = "2025-03-31.basil"
OLD_API = "2017-08-15"

# Test-looking values only.
SECRET_KEY = "sk_test_" + "x" * 24
PUBLISHABLE_KEY = "pk_test_" + "y" * 24
WEBHOOK_SECRET = "whsec_test_secret_e2e"

_ALNUM = string.ascii_letters + string.digits


def stripe_id(prefix):
    return prefix + "_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def now():
    return int(time.time())


def _at_least(api_version, date):
    return api_version[:10] >= date


def has_latest_charge(api_version):
    # PaymentIntent.charges was replaced by latest_charge, and Charge.refunds
    # stopped being included, in 2022-11-15.
    return _at_least(api_version, "2022-11-15")


def has_item_periods(api_version):
    # basil moved current_period_* to subscription items and the invoice's
    # subscription under parent.subscription_details.
    return _at_least(api_version, "2025-03-31")


# --------------------------------------------------------------------------
# Signing


def sign(payload, secret=WEBHOOK_SECRET, t=None):
    """The Stripe-Signature header, computed by the stripe library itself."""
    return stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=t)


def v1(payload, secret=WEBHOOK_SECRET, t=None):
    """One v1 HMAC, computed by hand, to compose unusual headers."""
    t = now() if t is None else t
    signed = f"{t}.{payload}".encode("utf-8")
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def payload(evt):
    """The exact body Stripe would send: pretty-printed, raw UTF-8."""
    if isinstance(evt, str):
        return evt
    return json.dumps(evt, indent=2, ensure_ascii=False)


# --------------------------------------------------------------------------
# Event envelope


def event(type_, obj, *, api_version=NEW_API, created=None, livemode=False,
          previous_attributes=None, event_id=None):
    data = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return {
        "id": event_id or stripe_id("evt"),
        "object": "event",
        "api_version": api_version,
        "created": now() if created is None else created,
        "data": data,
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": stripe_id("req"), "idempotency_key": str(uuid.uuid4())},
        "type": type_,
    }


# --------------------------------------------------------------------------
# Charges and PaymentIntents


def charge(ch_id, *, pi_id, amount, currency="usd", status="succeeded",
           amount_refunded=0, refunds=(), api_version=NEW_API, livemode=False,
           created=None, failure=None):
    created = now() if created is None else created
    obj = {
        "id": ch_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if status == "succeeded" else 0,
        "amount_refunded": amount_refunded,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": stripe_id("txn") if status == "succeeded" else None,
        "billing_details": {
            "address": {"city": None, "country": None, "line1": None, "line2": None,
                        "postal_code": "42424", "state": None},
            "email": None, "name": None, "phone": None,
        },
        "calculated_statement_descriptor": "E2E SHOP",
        "captured": status == "succeeded",
        "created": created,
        "currency": currency,
        "customer": None,
        "description": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": failure["code"] if failure else None,
        "failure_message": failure["message"] if failure else None,
        "fraud_details": {},
        "livemode": livemode,
        "metadata": {},
        "outcome": {
            "network_status": "approved_by_network" if status == "succeeded" else "declined_by_network",
            "reason": None if status == "succeeded" else "insufficient_funds",
            "risk_level": "normal",
            "risk_score": 32,
            "seller_message": "Payment complete." if status == "succeeded" else "The bank declined the payment.",
            "type": "authorized" if status == "succeeded" else "issuer_declined",
        },
        "paid": status == "succeeded",
        "payment_intent": pi_id,
        "payment_method": stripe_id("pm"),
        "payment_method_details": {
            "card": {"brand": "visa", "country": "US", "exp_month": 8, "exp_year": 2030,
                     "funding": "credit", "last4": "4242", "network": "visa"},
            "type": "card",
        },
        "receipt_email": None,
        "receipt_url": f"https://pay.stripe.com/receipts/payment/{stripe_id('CAcaFwoV')}",
        "refunded": amount_refunded >= amount and amount > 0,
        "review": None,
        "shipping": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }
    if not has_latest_charge(api_version):
        obj["refunds"] = {
            "object": "list",
            "data": list(refunds),
            "has_more": False,
            "total_count": len(refunds),
            "url": f"/v1/charges/{ch_id}/refunds",
        }
    return obj


PI_STATUS_OF_EVENT = {
    "payment_intent.created": "requires_payment_method",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.processing": "processing",
    "payment_intent.succeeded": "succeeded",
    "payment_intent.payment_failed": "requires_payment_method",
    "payment_intent.canceled": "canceled",
}

CARD_DECLINED = {
    "code": "card_declined",
    "decline_code": "insufficient_funds",
    "message": "Your card has insufficient funds.",
}


def payment_intent(pi_id, *, amount=1000, currency="usd", status="succeeded",
                   api_version=NEW_API, charge_id=None, metadata=None, livemode=False,
                   created=None, failure=None, customer=None):
    created = now() if created is None else created
    charge_status = {"succeeded": "succeeded", "processing": "pending"}.get(status)
    if failure is not None:
        charge_status = "failed"
    if charge_status and charge_id is None:
        charge_id = stripe_id("ch")
    ch = None
    if charge_status:
        ch = charge(charge_id, pi_id=pi_id, amount=amount, currency=currency,
                    status=charge_status, api_version=api_version, livemode=livemode,
                    created=created, failure=failure)
    obj = {
        "id": pi_id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": amount if status == "succeeded" else 0,
        "application": None,
        "application_fee_amount": None,
        "canceled_at": created if status == "canceled" else None,
        "cancellation_reason": "requested_by_customer" if status == "canceled" else None,
        "capture_method": "automatic_async" if has_item_periods(api_version) else "automatic",
        "client_secret": f"{pi_id}_secret_{stripe_id('s')[2:]}",
        "confirmation_method": "automatic",
        "created": created,
        "currency": currency,
        "customer": customer,
        "description": None,
        "last_payment_error": None,
        "livemode": livemode,
        "metadata": metadata or {},
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": stripe_id("pm") if status != "requires_payment_method" else None,
        "payment_method_options": {
            "card": {"installments": None, "mandate_options": None, "network": None,
                     "request_three_d_secure": "automatic"},
        },
        "payment_method_types": ["card"],
        "processing": None,
        "receipt_email": None,
        "review": None,
        "setup_future_usage": None,
        "shipping": None,
        "source": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": status,
        "transfer_data": None,
        "transfer_group": None,
    }
    if has_latest_charge(api_version):
        obj["automatic_payment_methods"] = {"allow_redirects": "always", "enabled": True}
        obj["latest_charge"] = charge_id if ch else None
    else:
        obj["charges"] = {
            "object": "list",
            "data": [ch] if ch else [],
            "has_more": False,
            "total_count": 1 if ch else 0,
            "url": f"/v1/charges?payment_intent={pi_id}",
        }
    if status == "requires_action":
        obj["next_action"] = {
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": "https://hooks.stripe.com/3d_secure_2/hosted"},
        }
    if failure is not None:
        obj["last_payment_error"] = {
            "charge": charge_id,
            "code": failure["code"],
            "decline_code": failure.get("decline_code"),
            "doc_url": f"https://stripe.com/docs/error-codes/{failure['code'].replace('_', '-')}",
            "message": failure["message"],
            "payment_method": {"id": stripe_id("pm"), "object": "payment_method", "type": "card"},
            "type": "card_error",
        }
    return obj


def pi_event(type_, pi_id, *, amount=1000, currency="usd", api_version=NEW_API,
             created=None, livemode=False, metadata=None, charge_id=None, event_id=None):
    """A payment_intent.* event whose object has the status that type implies."""
    status = PI_STATUS_OF_EVENT[type_]
    failure = CARD_DECLINED if type_ == "payment_intent.payment_failed" else None
    obj = payment_intent(pi_id, amount=amount, currency=currency, status=status,
                         api_version=api_version, created=created, livemode=livemode,
                         metadata=metadata, failure=failure, charge_id=charge_id)
    return event(type_, obj, api_version=api_version, created=created, livemode=livemode,
                 event_id=event_id)


# --------------------------------------------------------------------------
# Refunds


def refund(re_id, *, pi_id, ch_id, amount, currency="usd", status="succeeded",
           reason="requested_by_customer", created=None, api_version=NEW_API,
           metadata=None):
    created = now() if created is None else created
    obj = {
        "id": re_id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": stripe_id("txn"),
        "charge": ch_id,
        "created": created,
        "currency": currency,
        "metadata": metadata or {},
        "payment_intent": pi_id,
        "reason": reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": status,
        "transfer_reversal": None,
    }
    if has_latest_charge(api_version):
        obj["destination_details"] = {
            "card": {"reference": None, "reference_status": "pending",
                     "reference_type": "acquirer_reference_number", "type": "refund"},
            "type": "card",
        }
    if status == "failed":
        obj["failure_balance_transaction"] = stripe_id("txn")
        obj["failure_reason"] = "expired_or_canceled_card"
    return obj


def refund_event(type_, re_id, *, pi_id, ch_id, amount, currency="usd", status=None,
                 created=None, api_version=NEW_API, event_id=None):
    """refund.created / refund.updated / refund.failed."""
    if status is None:
        status = "failed" if type_ == "refund.failed" else "succeeded"
    obj = refund(re_id, pi_id=pi_id, ch_id=ch_id, amount=amount, currency=currency,
                 status=status, created=created, api_version=api_version)
    prev = {
        "refund.created": None,
        "refund.updated": {"status": "pending"},
        "refund.failed": {"status": "succeeded"},
    }[type_]
    return event(type_, obj, api_version=api_version, created=created,
                 previous_attributes=prev, event_id=event_id)


def charge_refunded_event(ch_id, *, pi_id, amount, refunds, currency="usd",
                          created=None, api_version=NEW_API, event_id=None):
    """charge.refunded: the charge after its refunds.

    `refunds` are refund objects (see `refund`). On old API versions they are
    embedded in charge.refunds.data; on new ones only amount_refunded says it.
    """
    live = [r for r in refunds if r["status"] not in ("failed", "canceled")]
    refunded = sum(r["amount"] for r in live)
    obj = charge(ch_id, pi_id=pi_id, amount=amount, currency=currency,
                 amount_refunded=refunded, refunds=refunds, api_version=api_version,
                 created=created)
    prev = {"amount_refunded": refunded - (live[-1]["amount"] if live else 0)}
    return event("charge.refunded", obj, api_version=api_version, created=created,
                 previous_attributes=prev, event_id=event_id)


# --------------------------------------------------------------------------
# Subscriptions and invoices

MONTH = 30 * 24 * 3600


def price_or_plan(price_id, *, amount, currency, api_version, livemode=False):
    product = "prod_" + price_id.split("_", 1)[-1][:14]
    if has_latest_charge(api_version):
        return {
            "id": price_id,
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": now() - 90 * 24 * 3600,
            "currency": currency,
            "custom_unit_amount": None,
            "livemode": livemode,
            "lookup_key": None,
            "metadata": {},
            "nickname": None,
            "product": product,
            "recurring": {"interval": "month", "interval_count": 1, "meter": None,
                          "trial_period_days": None, "usage_type": "licensed"},
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": amount,
            "unit_amount_decimal": str(amount),
        }
    return {
        "id": price_id,
        "object": "plan",
        "amount": amount,
        "created": now() - 90 * 24 * 3600,
        "currency": currency,
        "interval": "month",
        "interval_count": 1,
        "livemode": livemode,
        "metadata": {},
        "nickname": None,
        "product": product,
        "trial_period_days": None,
    }


def subscription(sub_id, *, customer, price_id, status="active", api_version=NEW_API,
                 period_start=None, period_end=None, cancel_at_period_end=False,
                 canceled_at=None, created=None, livemode=False, amount=1000,
                 currency="usd", metadata=None, item_id=None):
    created = now() - 3600 if created is None else created
    period_start = created if period_start is None else period_start
    period_end = period_start + MONTH if period_end is None else period_end
    item_id = item_id or stripe_id("si")
    plan = price_or_plan(price_id, amount=amount, currency=currency,
                         api_version=api_version, livemode=livemode)
    item = {
        "id": item_id,
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": created,
        "metadata": {},
        "quantity": 1,
        "subscription": sub_id,
        "tax_rates": [],
    }
    obj = {
        "id": sub_id,
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "billing_cycle_anchor": period_start,
        "cancel_at": period_end if cancel_at_period_end else None,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": canceled_at,
        "collection_method": "charge_automatically",
        "created": created,
        "customer": customer,
        "days_until_due": None,
        "default_payment_method": stripe_id("pm"),
        "ended_at": canceled_at if status == "canceled" else None,
        "items": {
            "object": "list",
            "data": [item],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/subscription_items?subscription={sub_id}",
        },
        "latest_invoice": stripe_id("in"),
        "livemode": livemode,
        "metadata": metadata or {},
        "pause_collection": None,
        "start_date": created,
        "status": status,
        "trial_end": None,
        "trial_start": None,
    }
    if has_item_periods(api_version):
        item["price"] = plan
        item["discounts"] = []
        item["current_period_start"] = period_start
        item["current_period_end"] = period_end
        obj["automatic_tax"] = {"disabled_reason": None, "enabled": False, "liability": None}
        obj["cancellation_details"] = {"comment": None, "feedback": None,
                                       "reason": "cancellation_requested" if status == "canceled" else None}
        obj["currency"] = currency
        obj["discounts"] = []
    else:
        item["plan"] = plan
        obj["billing"] = "charge_automatically"
        obj["current_period_start"] = period_start
        obj["current_period_end"] = period_end
        obj["discount"] = None
        obj["plan"] = plan
        obj["quantity"] = 1
        obj["tax_percent"] = None
    return obj


def subscription_event(type_, sub_id, *, customer, price_id, status="active",
                       api_version=NEW_API, created=None, previous_attributes=None,
                       event_id=None, **kw):
    obj = subscription(sub_id, customer=customer, price_id=price_id, status=status,
                       api_version=api_version, **kw)
    return event(type_, obj, api_version=api_version, created=created,
                 previous_attributes=previous_attributes, event_id=event_id)


def invoice(in_id, *, sub_id, customer, price_id, amount=1000, currency="usd",
            billing_reason="subscription_cycle", paid=True, api_version=NEW_API,
            period_start=None, period_end=None, pi_id=None, created=None, livemode=False):
    created = now() if created is None else created
    period_start = created if period_start is None else period_start
    period_end = period_start + MONTH if period_end is None else period_end
    pi_id = pi_id or stripe_id("pi")
    plan = price_or_plan(price_id, amount=amount, currency=currency,
                         api_version=api_version, livemode=livemode)
    si_id = stripe_id("si")
    line = {
        "id": stripe_id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": currency,
        "description": "1 × E2E plan (at $10.00 / month)",
        "discountable": True,
        "livemode": livemode,
        "metadata": {},
        "period": {"end": period_end, "start": period_start},
        "quantity": 1,
    }
    obj = {
        "id": in_id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "E2E Shop",
        "amount_due": amount,
        "amount_paid": amount if paid else 0,
        "amount_remaining": 0 if paid else amount,
        "attempt_count": 1,
        "attempted": True,
        "auto_advance": not paid,
        "billing_reason": billing_reason,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": currency,
        "customer": customer,
        "customer_email": "buyer@example.com",
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{stripe_id('acct')}",
        "lines": {
            "object": "list",
            "data": [line],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{in_id}/lines",
        },
        "livemode": livemode,
        "metadata": {},
        "next_payment_attempt": None if paid else created + 3 * 24 * 3600,
        "number": "E2E-" + str(created)[-6:],
        "period_end": period_end,
        "period_start": period_start,
        "status": "paid" if paid else "open",
        "status_transitions": {
            "finalized_at": created,
            "marked_uncollectible_at": None,
            "paid_at": created if paid else None,
            "voided_at": None,
        },
        "subtotal": amount,
        "total": amount,
    }
    if has_item_periods(api_version):
        obj["parent"] = {
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": sub_id},
            "type": "subscription_details",
        }
        line["parent"] = {
            "invoice_item_details": None,
            "subscription_item_details": {"invoice_item": None, "proration": False,
                                          "proration_details": {"credited_items": None},
                                          "subscription": sub_id, "subscription_item": si_id},
            "type": "subscription_item_details",
        }
        line["pricing"] = {"price_details": {"price": price_id, "product": plan["product"]},
                           "type": "price_details", "unit_amount_decimal": str(amount)}
        obj["confirmation_secret"] = None
    else:
        obj["subscription"] = sub_id
        obj["payment_intent"] = pi_id
        obj["charge"] = stripe_id("ch")
        obj["paid"] = paid
        obj["closed"] = paid
        obj["forgiven"] = False
        line.update({"plan": plan, "subscription": sub_id, "subscription_item": si_id,
                     "type": "subscription"})
    return obj


def invoice_event(type_, in_id, *, sub_id, customer, price_id, api_version=NEW_API,
                  created=None, event_id=None, **kw):
    paid = type_ in ("invoice.paid", "invoice.payment_succeeded")
    obj = invoice(in_id, sub_id=sub_id, customer=customer, price_id=price_id,
                  paid=paid, api_version=api_version, created=created, **kw)
    return event(type_, obj, api_version=api_version, created=created, event_id=event_id)
