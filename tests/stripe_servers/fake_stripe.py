#!/usr/bin/env python3
"""fake_stripe: pg_payment's own small test Stripe server (stdlib only).

Why it exists: localstripe covers the happy paths, but it has no idempotency, no
prices, no refund or renewal events, rejects parameters it does not know, and
cannot inject faults. The SQL functions create_payment / refund_payment /
start_subscription / cancel_subscription reach this server through
`pg_payment.stripe_api_base`, and a test can then see exactly what was sent and
make Stripe misbehave on purpose.

Run it:  python fake_stripe.py --port 0 --state-dir DIR
  Binds 127.0.0.1 only. Writes DIR/<name>.pid and, once listening, DIR/<name>.port
  (written atomically, so a reader never sees half a number). Exits by itself after
  --max-lifetime seconds, or as soon as its parent process goes away, so a crashed
  pytest never leaves it running.

Stripe API (form-encoded, bracket notation: metadata[k]=v, items[0][price]=x,
expand[]=a or expand[0]=a); every request needs `Authorization: Bearer sk_test_...`
(or rk_test_...):
  POST   /v1/payment_intents                amount, currency, metadata, ...
  GET    /v1/payment_intents[/{id}]
  POST   /v1/payment_intents/{id}           metadata, description
  POST   /v1/payment_intents/{id}/confirm   payment_method=pm_card_visa | pm_card_chargeDeclined
  POST   /v1/payment_intents/{id}/cancel
  POST   /v1/refunds                        payment_intent | charge, amount (default: what remains), reason, metadata
  GET    /v1/refunds[/{id}], /v1/charges/{id}, /v1/invoices/{id}, /v1/prices/{id}
  GET    /v1/invoice_payments[/{id}]            (list filter: invoice): API 2025-03-31's link
                                            between an invoice and its PaymentIntent
  GET    /v1/events                         every event built through /__control/events
                                            (unless "record": false), as Stripe lists them:
                                            newest first, 30 days, created, type/types[] (<= 20),
                                            limit <= 100, starting_after, ending_before
  POST   /v1/customers, GET /v1/customers[/{id}]   (list filters: email)
  POST   /v1/subscriptions                  customer, items[0][price], metadata, payment_behavior,
                                            payment_settings[save_default_payment_method], expand[]
  GET    /v1/subscriptions[/{id}]
  POST   /v1/subscriptions/{id}             cancel_at_period_end, metadata
  DELETE /v1/subscriptions/{id}

  Prices: any id starting with `price_` exists (1000 usd / month unless registered
  through POST /__control/prices); other ids give 400 resource_missing.
  Decline magic: a PaymentIntent with amount 402, or metadata[fail]=<decline code>
  (card_declined means generic_decline), answers 402 card_error card_declined.

Like Stripe:
  - Every answer has `Request-Id: req_...` and `Stripe-Version`.
  - Errors are {"error": {"type", "message", and code / decline_code / param when
    they apply}} (absent fields are omitted, as Stripe does).
  - Idempotency-Key on POST: the same key with the same parameters replays the stored
    answer (header `Idempotent-Replayed: true`, `Original-Request: req_...`); the same
    key with other parameters, or on another endpoint, is 400 idempotency_error.
    Validation errors (unknown / missing / invalid parameter) are not stored, every
    other answer (successes, 402 declines, 404s) is, as Stripe documents.
  - Response shapes follow the request's Stripe-Version: 2025-03-31 (basil) and later
    put subscription periods on items and the invoice's subscription under
    parent.subscription_details; before 2022-11-15 PaymentIntents embed `charges` and
    charges embed `refunds`.

Control API (no auth; JSON):
  POST /__control/faults   {"path": "/v1/payment_intents", "method": "POST"?, "responses": [...]}
      Each response is consumed in order by one matching request, before normal
      handling (and before idempotency, so injected faults are never stored under a
      key: a retry with the same key gets the real answer). `path` is exact, or a
      prefix when it ends with "*" ("*" alone matches every /v1 request). Keys:
        delay_s: float   sleep first (interrupted by reset/stop)
        drop: true       close the connection without answering (a network error)
        status: int      >= 300 without body: a Stripe-shaped error for that status
                         (500 api_error, 409 lock_timeout, 429 rate_limit, 402
                         card_declined, 401, 400, 404); "error": {...} overrides fields
        body: str        send this raw body (default status 200): e.g. "not json"
        headers: {...}   extra response headers (e.g. Stripe-Should-Retry: false)
        saved: true      with a status: store that error under the request's
                         Idempotency-Key, as Stripe saves a 500 once it began executing;
                         later requests with the key get it replayed
      With neither status >= 300 nor body nor drop, the request is then handled
      normally and `headers` are added to the real answer; so {"delay_s": 30} alone is
      "Stripe did it, but the client gave up waiting". A reset during a delay
      abandons the sleeping request (its connection is closed, nothing is done).
  GET  /__control/faults       faults not yet consumed
  GET  /__control/requests     the request log (every /v1 request, in arrival order)
  POST /__control/reset        forget objects, log, faults, idempotency keys
  POST /__control/prices       {"id", "unit_amount", "currency", "interval"}
  GET  /__control/objects/{id} an object as the server holds it (newest API shape)
  POST /__control/events       {"type", "object_id", "secret"?, "api_version"?, "created"?,
                                "event_id"?, "previous_attributes"?, "timestamp"?,
                                "overrides"?: {...}, "record"?: bool}
      Moves the held object as the event type implies (payment_intent.succeeded makes
      the PaymentIntent succeed with a charge, refund.failed fails the refund,
      customer.subscription.deleted cancels, invoice.paid for a sub_ bills a new
      subscription_cycle invoice and advances the period ...), deep-merges
      `overrides` into it, and answers {"payload", "signature", "event_id",
      "object_id"}: the pretty-printed event exactly as Stripe would send it and its
      Stripe-Signature header (made by stripe.WebhookSignature when the stripe
      library is importable, else by hand: the same HMAC-SHA256). For *.updated
      events previous_attributes lists the top-level fields that changed since the
      object was created or last sent in an event. Nothing is sent over HTTP; the
      test hands the two strings to payment.process_stripe_event.

Python API for tests: see class FakeStripe at the end of this file.
"""

import argparse
import copy
import hashlib
import hmac
import http.server
import json
import os
import re
import secrets
import signal
import string
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from server_process import ServerProcess

DEFAULT_API_VERSION = "2025-03-31.basil"
# Same value as tests/e2e/stripe_events.WEBHOOK_SECRET, so both builders agree.
DEFAULT_WEBHOOK_SECRET = "whsec_test_secret_e2e"
MONTH = 30 * 24 * 3600
_ALNUM = string.ascii_letters + string.digits
# Stripe's error type for a bad API key is reported as authentication_error here
# (the stripe libraries map any 401 to AuthenticationError).
AUTH_ERROR_TYPE = "authentication_error"


def rand(n):
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def new_id(prefix):
    return f"{prefix}_{rand(24)}"


def now():
    return int(time.time())


def at_least(api_version, date):
    return (api_version or DEFAULT_API_VERSION)[:10] >= date


# --------------------------------------------------------------------------
# Errors


class StripeError(Exception):
    """An error answer in Stripe's shape.

    `stored` says whether an Idempotency-Key remembers it: Stripe does not save
    answers to requests that failed parameter validation.
    """

    def __init__(self, status, message, *, type="invalid_request_error", code=None,
                 param=None, decline_code=None, extra=None, stored=True, headers=None):
        super().__init__(message)
        self.status = status
        self.error = {"type": type, "message": message}
        if code:
            self.error["code"] = code
            self.error["doc_url"] = f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}"
        if decline_code:
            self.error["decline_code"] = decline_code
        if param:
            self.error["param"] = param
        if extra:
            self.error.update(extra)
        self.stored = stored
        self.headers = headers or {}

    def body(self):
        return {"error": self.error}


def invalid(message, param=None, code=None):
    return StripeError(400, message, param=param, code=code, stored=False)


def missing(param):
    return invalid(f"Missing required param: {param}.", param, "parameter_missing")


def no_such(kind, id_, param=None):
    return StripeError(404 if param is None else 400, f"No such {kind}: '{id_}'",
                       code="resource_missing", param=param or "id")


def card_declined(decline_code="generic_decline", extra=None):
    msg = {
        "generic_decline": "Your card was declined.",
        "insufficient_funds": "Your card has insufficient funds.",
        "lost_card": "Your card was declined.",
        "stolen_card": "Your card was declined.",
    }.get(decline_code, "Your card was declined.")
    return StripeError(402, msg, type="card_error", code="card_declined",
                       decline_code=decline_code, extra=extra)


def fault_error(status, overrides=None):
    """The Stripe-shaped error body a fault with this status stands for."""
    base = {
        400: ("invalid_request_error", None, "Bad request (injected fault)."),
        401: (AUTH_ERROR_TYPE, None, "Invalid API Key provided (injected fault)."),
        402: ("card_error", "card_declined", "Your card was declined."),
        404: ("invalid_request_error", "resource_missing", "No such object (injected fault)."),
        409: ("invalid_request_error", "lock_timeout",
              "This object cannot be accessed right now because another API request "
              "or Stripe process is currently accessing it."),
        429: ("invalid_request_error", "rate_limit",
              "Too many requests hit the API too quickly."),
    }.get(status)
    if base is None:
        base = ("api_error", None, "An unknown error occurred (injected fault).")
    err = {"type": base[0], "message": base[2]}
    if base[1]:
        err["code"] = base[1]
    if status == 402:
        err["decline_code"] = "generic_decline"
    err.update(overrides or {})
    return {"error": err}


# --------------------------------------------------------------------------
# Form encoding


def parse_form(raw):
    """Stripe's bracket form encoding -> nested dicts / lists of strings.

    a=1&metadata[k]=v&items[0][price]=p&expand[]=x&expand[]=y ->
    {"a": "1", "metadata": {"k": "v"}, "items": [{"price": "p"}], "expand": ["x", "y"]}
    """
    root = {}
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True):
        m = re.fullmatch(r"([^\[\]]+)((?:\[[^\[\]]*\])*)", key)
        if not m:
            raise invalid(f"Invalid parameter name: {key}", key)
        parts = [m.group(1)] + re.findall(r"\[([^\[\]]*)\]", m.group(2))
        node = root
        for i, part in enumerate(parts):
            if part == "":
                part = str(len(node))  # `x[]` appends: the next free index
            if i == len(parts) - 1:
                if isinstance(node.get(part), dict):
                    raise invalid(f"Invalid parameter: {key} is both a value and a hash", key)
                node[part] = value
            else:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise invalid(f"Invalid parameter: {key} is both a value and a hash", key)
                node = child
    return _lists(root, top=True)


def _lists(node, top=False, key=None):
    # A hash whose keys are all indices is an array (but metadata keys stay keys).
    if not isinstance(node, dict):
        return node
    if key == "metadata":
        return node
    out = {k: _lists(v, key=k) for k, v in node.items()}
    if not top and out and all(k.isdigit() for k in out):
        return [out[k] for k in sorted(out, key=int)]
    return out


def as_int(form, name, *, required=False, minimum=None):
    if name not in form or form[name] == "":
        if required:
            raise missing(name)
        return None
    value = form[name]
    if not isinstance(value, str) or not re.fullmatch(r"-?\d+", value):
        raise invalid(f"Invalid integer: {value}", name, "parameter_invalid_integer")
    n = int(value)
    if minimum is not None and n < minimum:
        raise invalid(f"This value must be greater than or equal to {minimum}.", name,
                      "parameter_invalid_integer")
    return n


def as_bool(form, name):
    if name not in form or form[name] == "":
        return None
    value = form[name]
    if value not in ("true", "false"):
        raise invalid(f"Invalid boolean: {value}", name)
    return value == "true"


def as_str(form, name, *, required=False):
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise missing(name)
        return None
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {name}", name)
    return value


def as_metadata(form, name="metadata"):
    value = form.get(name, {})
    if value == "":
        return {}
    if not isinstance(value, dict) or any(not isinstance(v, str) for v in value.values()):
        raise invalid("Invalid hash", name)
    return {k: v for k, v in value.items() if v != ""}  # "" unsets a key in Stripe


def as_list(form, name):
    value = form.get(name)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        raise invalid(f"Invalid array: {name}", name)
    return value if isinstance(value, list) else list(value.values())


def only(form, allowed):
    for k in form:
        if k not in allowed:
            raise invalid(f"Received unknown parameter: {k}", k, "parameter_unknown")


def deep_merge(dst, src):
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_merge(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)
    return dst


# --------------------------------------------------------------------------
# State: held objects (always in the newest API shape; rendered per version)


class State:
    def __init__(self, default_api_version, webhook_secret):
        self.lock = threading.RLock()
        self.default_api_version = default_api_version
        self.webhook_secret = webhook_secret
        self.reset()

    def reset(self):
        with self.lock:
            old = getattr(self, "wake", None)
            if old is not None:
                old.set()  # interrupt requests sleeping in a delay fault
            self.wake = threading.Event()
            self.objects = {}
            # What each object looked like when last announced (or created): the
            # base of an *.updated event's previous_attributes.
            self.snapshots = {}
            self.prices = {}
            self.idempotency = {}  # (api key, idempotency key) -> stored answer
            self.faults = []  # [{"path", "method", "responses": [...]}]
            self.log = []
            self.events = []  # every event built, as sent: GET /v1/events lists them

    # -- objects

    def put(self, obj):
        self.objects[obj["id"]] = obj
        self.snapshots.setdefault(obj["id"], copy.deepcopy(obj))
        return obj

    def get(self, id_, kind=None, param=None):
        obj = self.objects.get(id_)
        if obj is None or (kind and obj["object"] != kind):
            raise no_such(kind or "object", id_, param)
        return obj

    def price(self, price_id, param="items[0][price]"):
        if price_id in self.prices:
            return self.prices[price_id]
        if not price_id.startswith("price_"):
            raise no_such("price", price_id, param)
        return self.add_price(price_id, 1000, "usd", "month")

    def add_price(self, price_id, unit_amount, currency, interval):
        p = {
            "id": price_id, "object": "price", "active": True, "billing_scheme": "per_unit",
            "created": now() - 90 * 24 * 3600, "currency": currency.lower(),
            "custom_unit_amount": None, "livemode": False, "lookup_key": None,
            "metadata": {}, "nickname": None, "product": "prod_" + rand(14),
            "recurring": {"interval": interval, "interval_count": 1, "meter": None,
                          "trial_period_days": None, "usage_type": "licensed"},
            "tax_behavior": "unspecified", "tiers_mode": None, "transform_quantity": None,
            "type": "recurring", "unit_amount": int(unit_amount),
            "unit_amount_decimal": str(int(unit_amount)),
        }
        self.prices[price_id] = p
        return p

    def refunds_of_charge(self, ch_id):
        return [o for o in self.objects.values()
                if o["object"] == "refund" and o["charge"] == ch_id]

    def refunded(self, ch_id):
        return sum(r["amount"] for r in self.refunds_of_charge(ch_id)
                   if r["status"] not in ("failed", "canceled"))

    # -- rendering

    def render(self, obj, version, expand=()):
        """A held object as Stripe would show it under `version`, with `expand`."""
        version = version or self.default_api_version
        out = {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}
        kind = obj["object"]
        if kind == "charge":
            out["amount_refunded"] = self.refunded(obj["id"])
            out["refunded"] = out["amount_refunded"] >= obj["amount"] > 0
            if not at_least(version, "2022-11-15"):
                refunds = [self.render(r, version) for r in self.refunds_of_charge(obj["id"])]
                out["refunds"] = {"object": "list", "data": refunds, "has_more": False,
                                  "total_count": len(refunds),
                                  "url": f"/v1/charges/{obj['id']}/refunds"}
        elif kind == "payment_intent":
            if not at_least(version, "2022-11-15"):
                ch = out.pop("latest_charge")
                data = [self.render(self.objects[ch], version)] if ch else []
                out["charges"] = {"object": "list", "data": data, "has_more": False,
                                  "total_count": len(data),
                                  "url": f"/v1/charges?payment_intent={obj['id']}"}
                out["invoice"] = obj.get("_invoice")
        elif kind == "subscription":
            item = out["items"]["data"][0]
            if not at_least(version, "2025-03-31"):
                # Before basil: periods at the top, the plan beside the price.
                out["current_period_start"] = item.pop("current_period_start")
                out["current_period_end"] = item.pop("current_period_end")
                plan = _plan_of(item["price"])
                item["plan"] = plan
                out["plan"] = plan
                out["quantity"] = item["quantity"]
        elif kind == "invoice":
            if not at_least(version, "2025-03-31"):
                out.pop("parent", None)
                out.pop("confirmation_secret", None)
                out["subscription"] = obj["_subscription"]
                out["payment_intent"] = obj["_payment_intent"]
                pi = self.objects.get(obj["_payment_intent"])
                out["charge"] = pi["latest_charge"] if pi else None
                out["paid"] = obj["status"] == "paid"
        for path in expand:
            self._expand(out, obj, path.split("."), version)
        return out

    def _expand(self, out, held, parts, version):
        key, rest = parts[0], parts[1:]
        if not isinstance(out, dict):
            return
        if held.get("object") == "invoice" and key == "confirmation_secret":
            # An includable field: null unless asked for.
            pi = self.objects.get(held["_payment_intent"])
            out[key] = ({"client_secret": pi["client_secret"], "type": "payment_intent"}
                        if pi else None)
            return
        value = out.get(key)
        if value is None and ("_" + key) in held:
            value = held["_" + key]  # a field newer versions removed (invoice.payment_intent)
        if isinstance(value, str) and value in self.objects:
            child = self.objects[value]
            out[key] = self.render(child, version)
            if rest:
                self._expand(out[key], child, rest, version)
        elif isinstance(value, dict) and rest and value.get("id") in self.objects:
            self._expand(value, self.objects[value["id"]], rest, version)


def _plan_of(price):
    return {
        "id": price["id"], "object": "plan", "active": True,
        "amount": price["unit_amount"], "amount_decimal": str(price["unit_amount"]),
        "billing_scheme": "per_unit", "created": price["created"],
        "currency": price["currency"], "interval": price["recurring"]["interval"],
        "interval_count": 1, "livemode": False, "metadata": {}, "nickname": None,
        "product": price["product"], "trial_period_days": None, "usage_type": "licensed",
    }


# --------------------------------------------------------------------------
# Object factories (newest shape)


def make_payment_intent(amount, currency, *, metadata=None, description=None, customer=None,
                        payment_method_types=None, capture_method=None, invoice=None,
                        setup_future_usage=None, receipt_email=None):
    pi_id = new_id("pi")
    return {
        "id": pi_id, "object": "payment_intent", "amount": amount,
        "amount_capturable": 0, "amount_details": {"tip": {}}, "amount_received": 0,
        "application": None, "application_fee_amount": None,
        "automatic_payment_methods": (None if payment_method_types
                                      else {"allow_redirects": "always", "enabled": True}),
        "canceled_at": None, "cancellation_reason": None,
        "capture_method": capture_method or "automatic_async",
        "client_secret": f"{pi_id}_secret_{rand(25)}", "confirmation_method": "automatic",
        "created": now(), "currency": currency, "customer": customer,
        "description": description, "last_payment_error": None, "latest_charge": None,
        "livemode": False, "metadata": metadata or {}, "next_action": None,
        "on_behalf_of": None, "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {"card": {"installments": None, "mandate_options": None,
                                            "network": None,
                                            "request_three_d_secure": "automatic"}},
        "payment_method_types": payment_method_types or ["card"], "processing": None,
        "receipt_email": receipt_email, "review": None,
        "setup_future_usage": setup_future_usage, "shipping": None, "source": None,
        "statement_descriptor": None, "statement_descriptor_suffix": None,
        "status": "requires_payment_method", "transfer_data": None, "transfer_group": None,
        "_invoice": invoice,
    }


def make_charge(pi, status):
    ok = status == "succeeded"
    return {
        "id": new_id("ch"), "object": "charge", "amount": pi["amount"],
        "amount_captured": pi["amount"] if ok else 0, "amount_refunded": 0,
        "application": None, "application_fee": None, "application_fee_amount": None,
        "balance_transaction": new_id("txn") if ok else None,
        "billing_details": {"address": {"city": None, "country": None, "line1": None,
                                        "line2": None, "postal_code": "42424",
                                        "state": None},
                            "email": None, "name": None, "phone": None},
        "calculated_statement_descriptor": "PG PAYMENT TEST", "captured": ok,
        "created": now(), "currency": pi["currency"], "customer": pi["customer"],
        "description": pi["description"], "disputed": False,
        "failure_balance_transaction": None, "failure_code": None, "failure_message": None,
        "fraud_details": {}, "livemode": False, "metadata": dict(pi["metadata"]),
        "outcome": None, "paid": ok, "payment_intent": pi["id"],
        "payment_method": pi["payment_method"],
        "payment_method_details": {"card": {"brand": "visa", "country": "US", "exp_month": 12,
                                            "exp_year": 2030, "funding": "credit",
                                            "last4": "4242", "network": "visa"},
                                   "type": "card"},
        "receipt_email": None, "receipt_url": f"https://pay.stripe.com/receipts/payment/{rand(40)}",
        "refunded": False, "review": None, "shipping": None, "source_transfer": None,
        "statement_descriptor": None, "statement_descriptor_suffix": None, "status": status,
        "transfer_data": None, "transfer_group": None,
    }


# PaymentIntent transitions, shared by the API (confirm/cancel) and by events.

def pi_succeed(st, pi):
    pi["payment_method"] = pi["payment_method"] or new_id("pm")
    ch = st.objects.get(pi["latest_charge"])
    if ch is None or ch["status"] == "failed":
        ch = st.put(make_charge(pi, "succeeded"))
        pi["latest_charge"] = ch["id"]
    ch.update(status="succeeded", paid=True, captured=True, amount_captured=pi["amount"],
              balance_transaction=ch["balance_transaction"] or new_id("txn"),
              outcome=_outcome(True))
    pi.update(status="succeeded", amount_received=pi["amount"], amount_capturable=0,
              last_payment_error=None, next_action=None)


def pi_fail(st, pi, decline_code="generic_decline"):
    pi["payment_method"] = pi["payment_method"] or new_id("pm")
    ch = st.put(make_charge(pi, "failed"))
    err = card_declined(decline_code).error
    ch.update(failure_code="card_declined", failure_message=err["message"],
              outcome=_outcome(False, decline_code))
    pi.update(status="requires_payment_method", latest_charge=ch["id"], next_action=None,
              last_payment_error={**err, "charge": ch["id"],
                                  "payment_method": {"id": pi["payment_method"],
                                                     "object": "payment_method",
                                                     "type": "card"}},
              payment_method=None)


def _outcome(ok, reason=None):
    return {
        "network_status": "approved_by_network" if ok else "declined_by_network",
        "reason": None if ok else reason, "risk_level": "normal", "risk_score": 32,
        "seller_message": "Payment complete." if ok else "The bank did not return any further details with this decline.",
        "type": "authorized" if ok else "issuer_declined",
    }


def make_invoice(st, sub, billing_reason, period_start, period_end):
    price = sub["items"]["data"][0]["price"]
    amount = price["unit_amount"] * sub["items"]["data"][0]["quantity"]
    in_id = new_id("in")
    pi = st.put(make_payment_intent(amount, price["currency"], customer=sub["customer"],
                                    description="Subscription creation"
                                    if billing_reason == "subscription_create"
                                    else "Subscription update",
                                    invoice=in_id))
    created = now()
    line = {
        "id": new_id("il"), "object": "line_item", "amount": amount,
        "currency": price["currency"], "description": "1 × Test plan", "discountable": True,
        "invoice": in_id, "livemode": False, "metadata": {},
        "parent": {"invoice_item_details": None,
                   "subscription_item_details": {
                       "invoice_item": None, "proration": False,
                       "proration_details": {"credited_items": None},
                       "subscription": sub["id"],
                       "subscription_item": sub["items"]["data"][0]["id"]},
                   "type": "subscription_item_details"},
        "period": {"end": period_end, "start": period_start},
        "pricing": {"price_details": {"price": price["id"], "product": price["product"]},
                    "type": "price_details", "unit_amount_decimal": str(price["unit_amount"])},
        "quantity": 1,
    }
    # API 2025-03-31+: an InvoicePayment links the invoice to what pays it.
    inpay = st.put({
        "id": new_id("inpay"), "object": "invoice_payment", "amount_paid": None,
        "amount_requested": amount, "created": created, "currency": price["currency"],
        "invoice": in_id, "is_default": True, "livemode": False,
        "payment": {"type": "payment_intent", "payment_intent": pi["id"]},
        "status": "open", "status_transitions": {"canceled_at": None, "paid_at": None},
    })
    return st.put({
        "id": in_id, "object": "invoice", "account_country": "US",
        "account_name": "pg_payment test", "amount_due": amount, "amount_paid": 0,
        "amount_remaining": amount, "attempt_count": 0, "attempted": False,
        "auto_advance": True, "billing_reason": billing_reason,
        "collection_method": "charge_automatically", "confirmation_secret": None,
        "created": created, "currency": price["currency"], "customer": sub["customer"],
        "customer_email": None, "hosted_invoice_url": f"https://invoice.stripe.com/i/{rand(30)}",
        "lines": {"object": "list", "data": [line], "has_more": False, "total_count": 1,
                  "url": f"/v1/invoices/{in_id}/lines"},
        "livemode": False, "metadata": {}, "next_payment_attempt": None,
        "number": f"TEST-{rand(6).upper()}",
        "parent": {"quote_details": None,
                   "subscription_details": {"metadata": dict(sub["metadata"]),
                                            "subscription": sub["id"]},
                   "type": "subscription_details"},
        "period_end": period_end, "period_start": period_start, "status": "open",
        "status_transitions": {"finalized_at": created, "marked_uncollectible_at": None,
                               "paid_at": None, "voided_at": None},
        "subtotal": amount, "total": amount,
        "_subscription": sub["id"], "_payment_intent": pi["id"], "_invoice_payment": inpay["id"],
    })


def invoice_paid(st, inv):
    t = now()
    inpay = st.objects.get(inv.get("_invoice_payment"))
    if inpay is not None:
        inpay.update(status="paid", amount_paid=inv["amount_due"])
        inpay["status_transitions"]["paid_at"] = t
    if inpay is None or inpay["payment"]["type"] == "payment_intent":
        pi_succeed(st, st.objects[inv["_payment_intent"]])
    inv.update(status="paid", amount_paid=inv["amount_due"], amount_remaining=0,
               attempt_count=max(1, inv["attempt_count"]), attempted=True, auto_advance=False)
    inv["status_transitions"]["paid_at"] = t
    sub = st.objects.get(inv["_subscription"])
    if sub and sub["status"] in ("incomplete", "past_due", "unpaid", "trialing", "active"):
        sub["status"] = "active"


def invoice_failed(st, inv):
    pi = st.objects[inv["_payment_intent"]]
    pi_fail(st, pi, "insufficient_funds")
    inv.update(status="open", attempt_count=inv["attempt_count"] + 1, attempted=True,
               next_payment_attempt=now() + 3 * 24 * 3600)
    sub = st.objects.get(inv["_subscription"])
    if sub and inv["billing_reason"] != "subscription_create" and sub["status"] == "active":
        sub["status"] = "past_due"


# --------------------------------------------------------------------------
# API handlers. Each gets (state, ctx) and returns (status, rendered object).


class Ctx:
    def __init__(self, form, match, version, api_key):
        self.form = form
        self.match = match
        self.version = version
        self.api_key = api_key

    @property
    def expand(self):
        return [e for e in as_list(self.form, "expand") if isinstance(e, str)]


def _currency(form):
    c = as_str(form, "currency", required=True)
    if not re.fullmatch(r"[A-Za-z]{3}", c):
        raise invalid(f"Invalid currency: {c}.", "currency")
    return c.lower()


PI_CREATE_PARAMS = {
    "amount", "currency", "metadata", "description", "customer", "payment_method_types",
    "automatic_payment_methods", "capture_method", "confirm", "payment_method",
    "receipt_email", "setup_future_usage", "statement_descriptor",
    "statement_descriptor_suffix", "expand", "return_url", "off_session",
    "confirmation_method", "shipping", "payment_method_options", "transfer_group",
}


def create_payment_intent(st, ctx):
    f = ctx.form
    only(f, PI_CREATE_PARAMS)
    amount = as_int(f, "amount", required=True)
    currency = _currency(f)
    if amount < 1:
        raise invalid("Amount must be at least 1.", "amount", "amount_too_small")
    metadata = as_metadata(f)
    customer = as_str(f, "customer")
    if customer:
        st.get(customer, "customer", "customer")
    pmt = as_list(f, "payment_method_types") or None
    if pmt and "automatic_payment_methods" in f:
        raise invalid("You may only specify one of these parameters: "
                      "automatic_payment_methods, payment_method_types.",
                      "automatic_payment_methods")
    pi = st.put(make_payment_intent(
        amount, currency, metadata=metadata, description=as_str(f, "description"),
        customer=customer, payment_method_types=pmt,
        capture_method=as_str(f, "capture_method"),
        setup_future_usage=as_str(f, "setup_future_usage"),
        receipt_email=as_str(f, "receipt_email")))
    fail = metadata.get("fail")
    if amount == 402 or fail:
        # Decline magic: the PaymentIntent exists, the answer is a 402 card_error.
        code = "generic_decline" if fail in (None, "card_declined") else fail
        pi_fail(st, pi, code)
        raise card_declined(code, extra={"payment_intent": st.render(pi, ctx.version)})
    if as_bool(f, "confirm") and as_str(f, "payment_method"):
        _confirm(st, pi, as_str(f, "payment_method"), ctx)
    return 200, st.render(pi, ctx.version, ctx.expand)


def _confirm(st, pi, pm, ctx):
    if pi["status"] not in ("requires_payment_method", "requires_confirmation",
                            "requires_action"):
        raise StripeError(400, "This PaymentIntent's status is "
                          f"{pi['status']}, which cannot be confirmed.",
                          code="payment_intent_unexpected_state")
    pi["payment_method"] = new_id("pm")
    if pm in ("pm_card_chargeDeclined", "pm_card_visa_chargeDeclined"):
        pi_fail(st, pi)
        raise card_declined(extra={"payment_intent": st.render(pi, ctx.version)})
    if pm == "pm_card_chargeDeclinedInsufficientFunds":
        pi_fail(st, pi, "insufficient_funds")
        raise card_declined("insufficient_funds",
                            extra={"payment_intent": st.render(pi, ctx.version)})
    pi_succeed(st, pi)


def confirm_payment_intent(st, ctx):
    only(ctx.form, {"payment_method", "return_url", "expand", "off_session"})
    pi = st.get(ctx.match["id"], "payment_intent")
    _confirm(st, pi, as_str(ctx.form, "payment_method", required=True), ctx)
    return 200, st.render(pi, ctx.version, ctx.expand)


def cancel_payment_intent(st, ctx):
    only(ctx.form, {"cancellation_reason", "expand"})
    pi = st.get(ctx.match["id"], "payment_intent")
    if pi["status"] in ("succeeded", "canceled", "processing"):
        raise StripeError(400, "You cannot cancel this PaymentIntent because it has a "
                          f"status of {pi['status']}.",
                          code="payment_intent_unexpected_state")
    pi.update(status="canceled", canceled_at=now(),
              cancellation_reason=as_str(ctx.form, "cancellation_reason")
              or "requested_by_customer")
    return 200, st.render(pi, ctx.version, ctx.expand)


def update_payment_intent(st, ctx):
    only(ctx.form, {"metadata", "description", "expand"})
    pi = st.get(ctx.match["id"], "payment_intent")
    pi["metadata"].update(ctx.form.get("metadata") or {})
    pi["metadata"] = {k: v for k, v in pi["metadata"].items() if v != ""}
    if "description" in ctx.form:
        pi["description"] = as_str(ctx.form, "description")
    return 200, st.render(pi, ctx.version, ctx.expand)


REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")


def create_refund(st, ctx):
    f = ctx.form
    only(f, {"payment_intent", "charge", "amount", "reason", "metadata", "expand",
             "instructions_email", "refund_application_fee", "reverse_transfer", "origin"})
    amount = as_int(f, "amount")
    reason = as_str(f, "reason")
    if reason is not None and reason not in REFUND_REASONS:
        raise invalid(f"Invalid reason: must be one of {', '.join(REFUND_REASONS)}", "reason")
    metadata = as_metadata(f)
    pi_id, ch_id = as_str(f, "payment_intent"), as_str(f, "charge")
    if pi_id and ch_id:
        raise invalid("You may only specify one of these parameters: charge, payment_intent.",
                      "charge")
    if pi_id:
        pi = st.get(pi_id, "payment_intent", "payment_intent")
        ch = st.objects.get(pi["latest_charge"])
        if pi["status"] != "succeeded" or ch is None:
            raise StripeError(400, f"This PaymentIntent ({pi_id}) does not have a successful "
                              "charge to refund.", code="charge_not_refundable",
                              param="payment_intent")
    elif ch_id:
        ch = st.get(ch_id, "charge", "charge")
    else:
        raise missing("payment_intent")
    remaining = ch["amount_captured"] - st.refunded(ch["id"])
    if remaining <= 0:
        raise StripeError(400, f"Charge {ch['id']} has already been refunded.",
                          code="charge_already_refunded")
    if amount is None:
        amount = remaining
    if amount < 1:
        raise invalid("Refund amount must be positive.", "amount", "amount_too_small")
    if amount > remaining:
        raise StripeError(400, f"Refund amount ({amount}) is greater than unrefunded amount "
                          f"on charge ({remaining})", code="amount_too_large", param="amount")
    re_ = st.put({
        "id": new_id("re"), "object": "refund", "amount": amount,
        "balance_transaction": new_id("txn"), "charge": ch["id"], "created": now(),
        "currency": ch["currency"],
        "destination_details": {"card": {"reference": None, "reference_status": "pending",
                                         "reference_type": "acquirer_reference_number",
                                         "type": "refund"},
                                "type": "card"},
        "metadata": metadata, "payment_intent": ch["payment_intent"], "reason": reason,
        "receipt_number": None, "source_transfer_reversal": None, "status": "succeeded",
        "transfer_reversal": None,
    })
    return 200, st.render(re_, ctx.version, ctx.expand)


def create_customer(st, ctx):
    f = ctx.form
    only(f, {"email", "name", "description", "metadata", "phone", "expand", "address",
             "payment_method", "invoice_settings", "preferred_locales"})
    cus = st.put({
        "id": new_id("cus"), "object": "customer", "address": None, "balance": 0,
        "created": now(), "currency": None, "default_source": None, "delinquent": False,
        "description": as_str(f, "description"), "discount": None,
        "email": as_str(f, "email"), "invoice_prefix": rand(8).upper(),
        "invoice_settings": {"custom_fields": None, "default_payment_method": None,
                             "footer": None, "rendering_options": None},
        "livemode": False, "metadata": as_metadata(f), "name": as_str(f, "name"),
        "phone": as_str(f, "phone"), "preferred_locales": [], "shipping": None,
        "tax_exempt": "none", "test_clock": None,
    })
    return 200, st.render(cus, ctx.version, ctx.expand)


PAYMENT_BEHAVIORS = ("allow_incomplete", "default_incomplete", "error_if_incomplete",
                     "pending_if_incomplete")


def create_subscription(st, ctx):
    f = ctx.form
    only(f, {"customer", "items", "metadata", "payment_behavior", "payment_settings",
             "expand", "collection_method", "default_payment_method", "description",
             "off_session", "proration_behavior", "trial_period_days", "cancel_at_period_end"})
    customer = as_str(f, "customer", required=True)
    st.get(customer, "customer", "customer")
    items = as_list(f, "items")
    if not items:
        raise missing("items")
    if len(items) != 1 or not isinstance(items[0], dict):
        raise invalid("This test server supports exactly one item.", "items")
    price_id = items[0].get("price")
    if not price_id:
        raise missing("items[0][price]")
    price = st.price(price_id)
    quantity = as_int(items[0], "quantity", minimum=1) or 1
    pb = as_str(f, "payment_behavior") or "allow_incomplete"
    if pb not in PAYMENT_BEHAVIORS:
        raise invalid(f"Invalid payment_behavior: {pb}", "payment_behavior")
    ps = f.get("payment_settings") or {}
    sdpm = ps.get("save_default_payment_method") if isinstance(ps, dict) else None
    if sdpm not in (None, "off", "on_subscription"):
        raise invalid(f"Invalid save_default_payment_method: {sdpm}",
                      "payment_settings[save_default_payment_method]")
    if pb == "error_if_incomplete":
        # The fake never holds a default payment method, so this cannot succeed.
        raise card_declined(extra={"message": "This customer has no attached payment source "
                                              "or default payment method."})
    t = now()
    sub_id = new_id("sub")
    item = {
        "id": new_id("si"), "object": "subscription_item", "billing_thresholds": None,
        "created": t, "current_period_end": t + MONTH, "current_period_start": t,
        "discounts": [], "metadata": {}, "price": copy.deepcopy(price),
        "quantity": quantity, "subscription": sub_id, "tax_rates": [],
    }
    sub = st.put({
        "id": sub_id, "object": "subscription", "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": t, "cancel_at": None, "cancel_at_period_end": False,
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": "charge_automatically", "created": t,
        "currency": price["currency"], "customer": customer, "days_until_due": None,
        "default_payment_method": None, "description": as_str(f, "description"),
        "discounts": [], "ended_at": None,
        "items": {"object": "list", "data": [item], "has_more": False, "total_count": 1,
                  "url": f"/v1/subscription_items?subscription={sub_id}"},
        "latest_invoice": None, "livemode": False, "metadata": as_metadata(f),
        "pause_collection": None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None,
                             "save_default_payment_method": sdpm or "off"},
        "pending_setup_intent": None, "pending_update": None, "start_date": t,
        "status": "incomplete", "test_clock": None, "trial_end": None, "trial_start": None,
    })
    inv = make_invoice(st, sub, "subscription_create", t, t + MONTH)
    sub["latest_invoice"] = inv["id"]
    return 200, st.render(sub, ctx.version, ctx.expand)


def update_subscription(st, ctx):
    f = ctx.form
    only(f, {"cancel_at_period_end", "metadata", "expand", "proration_behavior",
             "cancellation_details", "description"})
    sub = st.get(ctx.match["id"], "subscription")
    cape = as_bool(f, "cancel_at_period_end")
    if sub["status"] in ("canceled", "incomplete_expired") and cape is not None:
        raise StripeError(400, "A canceled subscription can only update its "
                          "cancellation_details and metadata.")
    if cape is True:
        end = sub["items"]["data"][0]["current_period_end"]
        sub.update(cancel_at_period_end=True, cancel_at=end, canceled_at=now())
        sub["cancellation_details"]["reason"] = "cancellation_requested"
    elif cape is False:
        sub.update(cancel_at_period_end=False, cancel_at=None, canceled_at=None)
        sub["cancellation_details"]["reason"] = None
    if "metadata" in f:
        sub["metadata"].update(as_metadata(f))
        for k, v in (f["metadata"] or {}).items():
            if v == "":
                sub["metadata"].pop(k, None)
    return 200, st.render(sub, ctx.version, ctx.expand)


def cancel_subscription(st, ctx):
    only(ctx.form, {"invoice_now", "prorate", "expand", "cancellation_details"})
    sub = st.get(ctx.match["id"], "subscription")
    if sub["status"] in ("canceled", "incomplete_expired"):
        raise StripeError(400, f"This subscription ({sub['id']}) is already canceled.")
    t = now()
    sub.update(status="canceled", canceled_at=t, ended_at=t, cancel_at=None,
               cancel_at_period_end=False)
    sub["cancellation_details"]["reason"] = "cancellation_requested"
    return 200, st.render(sub, ctx.version, ctx.expand)


def retrieve(kind):
    def handler(st, ctx):
        only(ctx.form, {"expand"})
        obj = st.get(ctx.match["id"], kind)
        return 200, st.render(obj, ctx.version, ctx.expand)
    return handler


def retrieve_price(st, ctx):
    only(ctx.form, {"expand"})
    return 200, st.price(ctx.match["id"], param="id")


def list_of(kind, filters):
    def handler(st, ctx):
        only(ctx.form, {"limit", "starting_after", "ending_before", "expand", *filters})
        limit = as_int(ctx.form, "limit", minimum=1) or 10
        objs = [o for o in st.objects.values() if o["object"] == kind
                and all(o.get(k) == ctx.form[k] for k in filters if k in ctx.form)]
        objs.sort(key=lambda o: o["created"], reverse=True)
        return 200, {"object": "list", "url": "/v1/" + kind + "s",
                     "has_more": len(objs) > limit,
                     "data": [st.render(o, ctx.version) for o in objs[:limit]]}
    return handler


EVENT_RETENTION_S = 30 * 24 * 3600
MAX_EVENT_TYPES = 20


def _created_filter(form):
    """created=N or created[gt|gte|lt|lte]=N -> a predicate on an event's created."""
    value = form.get("created")
    if value is None or value == "":
        return lambda c: True
    if isinstance(value, str):
        n = as_int(form, "created")
        return lambda c: c == n
    if not isinstance(value, dict) or not set(value) <= {"gt", "gte", "lt", "lte"}:
        raise invalid("Invalid created: must be an integer or a hash of gt, gte, lt, lte", "created")
    bounds = {op: as_int(value, op) for op in value}
    tests = {"gt": lambda c, n: c > n, "gte": lambda c, n: c >= n,
             "lt": lambda c, n: c < n, "lte": lambda c, n: c <= n}
    return lambda c: all(tests[op](c, n) for op, n in bounds.items() if n is not None)


def list_events(st, ctx):
    """GET /v1/events as Stripe has it: newest first, the last 30 days only, each event as it
    was sent (in its own API version); type or types[] (at most 20), created, limit (1..100),
    starting_after (older) or ending_before (newer: the page just before the cursor)."""
    only(ctx.form, {"limit", "starting_after", "ending_before", "created", "type", "types",
                    "delivery_success", "expand"})
    limit = as_int(ctx.form, "limit", minimum=1) or 10
    if limit > 100:
        raise invalid("This value must be less than or equal to 100.", "limit",
                      "parameter_invalid_integer")
    types = as_list(ctx.form, "types")
    if len(types) > MAX_EVENT_TYPES:
        raise invalid(f"You may only specify up to {MAX_EVENT_TYPES} types.", "types")
    one_type = as_str(ctx.form, "type")
    if one_type and types:
        raise invalid("You may only specify one of these parameters: type, types.", "type")
    created_ok = _created_filter(ctx.form)
    oldest_kept = now() - EVENT_RETENTION_S
    # Stripe's order: newest first; of two events of one second, the later one first.
    events = [e for e in reversed(st.events)
              if e["created"] >= oldest_kept and created_ok(e["created"])
              and (not types or e["type"] in types) and (not one_type or e["type"] == one_type)]
    events.sort(key=lambda e: e["created"], reverse=True)  # stable: arrival order kept
    ids = [e["id"] for e in events]
    after, before = as_str(ctx.form, "starting_after"), as_str(ctx.form, "ending_before")
    if after and before:
        raise invalid("You may only specify one of these parameters: ending_before, starting_after.",
                      "starting_after")
    cursor = after or before
    if cursor and cursor not in ids:
        if not any(e["id"] == cursor for e in st.events):
            raise no_such("event", cursor, "starting_after" if after else "ending_before")
        raise invalid(f"The event {cursor} does not match the list's filters.",
                      "starting_after" if after else "ending_before")
    if after:
        i = ids.index(after)
        page, has_more = events[i + 1:i + 1 + limit], len(events) > i + 1 + limit
    elif before:
        i = ids.index(before)
        page, has_more = events[max(0, i - limit):i], i - limit > 0
    else:
        page, has_more = events[:limit], len(events) > limit
    return 200, {"object": "list", "url": "/v1/events", "has_more": has_more,
                 "data": copy.deepcopy(page)}


ID = r"(?P<id>[A-Za-z0-9_]+)"
ROUTES = [
    ("POST", "/v1/payment_intents", create_payment_intent),
    ("GET", "/v1/payment_intents", list_of("payment_intent", ["customer"])),
    ("GET", f"/v1/payment_intents/{ID}", retrieve("payment_intent")),
    ("POST", f"/v1/payment_intents/{ID}", update_payment_intent),
    ("POST", f"/v1/payment_intents/{ID}/confirm", confirm_payment_intent),
    ("POST", f"/v1/payment_intents/{ID}/cancel", cancel_payment_intent),
    ("POST", "/v1/refunds", create_refund),
    ("GET", "/v1/refunds", list_of("refund", ["payment_intent", "charge"])),
    ("GET", f"/v1/refunds/{ID}", retrieve("refund")),
    ("GET", f"/v1/charges/{ID}", retrieve("charge")),
    ("POST", "/v1/customers", create_customer),
    ("GET", "/v1/customers", list_of("customer", ["email"])),
    ("GET", f"/v1/customers/{ID}", retrieve("customer")),
    ("POST", "/v1/subscriptions", create_subscription),
    ("GET", "/v1/subscriptions", list_of("subscription", ["customer", "status"])),
    ("GET", f"/v1/subscriptions/{ID}", retrieve("subscription")),
    ("POST", f"/v1/subscriptions/{ID}", update_subscription),
    ("DELETE", f"/v1/subscriptions/{ID}", cancel_subscription),
    ("GET", f"/v1/invoices/{ID}", retrieve("invoice")),
    ("GET", f"/v1/prices/{ID}", retrieve_price),
    ("GET", "/v1/invoice_payments", list_of("invoice_payment", ["invoice"])),
    ("GET", f"/v1/invoice_payments/{ID}", retrieve("invoice_payment")),
    ("GET", "/v1/events", list_events),
]


# --------------------------------------------------------------------------
# Events


def sign_payload(payload, secret, timestamp=None):
    """The Stripe-Signature header: the stripe library's own when it has one."""
    try:
        import stripe  # the venv has it; the server itself does not need it
        return stripe.WebhookSignature.generate_signature_header(payload, secret,
                                                                 timestamp=timestamp)
    except (ImportError, AttributeError):
        t = now() if timestamp is None else int(timestamp)
        mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256)
        return f"t={t},v1={mac.hexdigest()}"


PI_EVENT_STATUS = {
    "payment_intent.created": None,
    "payment_intent.succeeded": "succeeded",
    "payment_intent.processing": "processing",
    "payment_intent.requires_action": "requires_action",
    "payment_intent.payment_failed": "failed",
    "payment_intent.canceled": "canceled",
    "payment_intent.amount_capturable_updated": "requires_capture",
}


def _apply_pi_event(st, pi, type_):
    status = PI_EVENT_STATUS.get(type_, None)
    if type_ in ("charge.succeeded", "charge.captured"):
        status = "succeeded"
    elif type_ == "charge.failed":
        status = "failed"
    elif type_ == "charge.pending":
        status = "processing"
    if status == "succeeded":
        pi_succeed(st, pi)
    elif status == "failed":
        pi_fail(st, pi, "insufficient_funds")
    elif status == "canceled":
        pi.update(status="canceled", canceled_at=now(),
                  cancellation_reason="requested_by_customer")
    elif status == "processing":
        pi["payment_method"] = pi["payment_method"] or new_id("pm")
        if not st.objects.get(pi["latest_charge"]):
            pi["latest_charge"] = st.put(make_charge(pi, "pending"))["id"]
        pi["status"] = "processing"
    elif status == "requires_action":
        pi["payment_method"] = pi["payment_method"] or new_id("pm")
        pi.update(status="requires_action", next_action={
            "type": "use_stripe_sdk",
            "use_stripe_sdk": {"type": "three_d_secure_redirect",
                               "stripe_js": "https://hooks.stripe.com/3d_secure_2/hosted"}})
    elif status == "requires_capture":
        pi["payment_method"] = pi["payment_method"] or new_id("pm")
        if not st.objects.get(pi["latest_charge"]):
            ch = st.put(make_charge(pi, "succeeded"))
            ch.update(captured=False, amount_captured=0)
            pi["latest_charge"] = ch["id"]
        pi.update(status="requires_capture", amount_capturable=pi["amount"])


def build_event(st, type_, object_id, *, api_version=None, created=None, event_id=None,
                previous_attributes=None, overrides=None, secret=None, timestamp=None,
                record=True):
    """Move the held object as `type_` implies and return the signed event."""
    version = api_version or st.default_api_version
    obj = st.objects.get(object_id)
    if obj is None:
        raise KeyError(f"no object {object_id!r} held by the fake server")
    kind = obj["object"]
    family = type_.split(".")[0]
    target = obj  # the object the event carries

    if family == "payment_intent" and kind == "payment_intent":
        _apply_pi_event(st, obj, type_)
    elif family == "charge":
        if kind == "payment_intent":
            if type_ != "charge.refunded":
                _apply_pi_event(st, obj, type_)
            target = st.objects.get(obj["latest_charge"])
        elif kind == "refund":
            target = st.objects[obj["charge"]]
        if target is None or target["object"] != "charge":
            raise KeyError(f"{object_id!r} has no charge yet")
    elif family == "refund" and kind == "refund":
        if type_ == "refund.failed":
            obj.update(status="failed", failure_reason="expired_or_canceled_card",
                       failure_balance_transaction=new_id("txn"))
    elif family == "customer" and type_.startswith("customer.subscription.") \
            and kind == "subscription":
        t = now()
        if type_ == "customer.subscription.deleted":
            obj.update(status="canceled", canceled_at=obj["canceled_at"] or t, ended_at=t,
                       cancel_at_period_end=False)
            obj["cancellation_details"]["reason"] = (
                obj["cancellation_details"]["reason"] or "cancellation_requested")
        elif type_ == "customer.subscription.paused":
            obj["status"] = "paused"
        elif type_ == "customer.subscription.resumed":
            obj["status"] = "active"
    elif family == "customer" and kind == "customer":
        pass
    elif family == "invoice_payment" and kind == "invoice_payment":
        # overrides (say {"payment": {"type": "payment_record", ...}}) first: an invoice paid
        # out of band is paid by a payment record, not by its PaymentIntent.
        if overrides:
            deep_merge(obj, overrides)
            overrides = None
        inv = st.objects[obj["invoice"]]
        if type_ == "invoice_payment.paid" and inv["status"] != "paid":
            invoice_paid(st, inv)
    elif family == "invoice" and kind in ("subscription", "invoice"):
        if kind == "subscription":
            # A new billing cycle: the period moves on and a new invoice is billed.
            item = obj["items"]["data"][0]
            start = item["current_period_end"]
            item["current_period_start"], item["current_period_end"] = start, start + MONTH
            target = make_invoice(st, obj, "subscription_cycle", start, start + MONTH)
            obj["latest_invoice"] = target["id"]
        if type_ in ("invoice.paid", "invoice.payment_succeeded"):
            invoice_paid(st, target)
        elif type_ == "invoice.payment_failed":
            invoice_failed(st, target)
        elif type_ == "invoice.voided":
            target["status"] = "void"
    else:
        raise KeyError(f"cannot send {type_} for {object_id!r} (a {kind})")

    if overrides:
        deep_merge(target, overrides)
    before = st.render(st.snapshots.get(target["id"], target), version)
    after = st.render(target, version)
    st.snapshots[target["id"]] = copy.deepcopy(target)
    data = {"object": after}
    if previous_attributes is None and type_.endswith(".updated"):
        previous_attributes = {k: v for k, v in before.items() if after.get(k) != v}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    evt = {
        "id": event_id or new_id("evt"),
        "object": "event",
        "api_version": version,
        "created": now() if created is None else int(created),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": "req_" + rand(14), "idempotency_key": None},
        "type": type_,
    }
    if record:
        st.events.append(copy.deepcopy(evt))
    # Stripe pretty-prints and signs exactly the bytes it sends.
    payload = json.dumps(evt, indent=2, ensure_ascii=False)
    signature = sign_payload(payload, secret or st.webhook_secret, timestamp)
    return {"payload": payload, "signature": signature, "event_id": evt["id"],
            "object_id": target["id"]}


# --------------------------------------------------------------------------
# HTTP


LOGGED_HEADERS = ("Authorization", "Idempotency-Key", "Stripe-Version", "Content-Type",
                  "Stripe-Account", "User-Agent")


def _fault_matches(rule, method, path):
    if rule.get("method") and rule["method"].upper() != method:
        return False
    p = rule["path"]
    if p.endswith("*"):
        return path.startswith(p[:-1])
    return path == p


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as ureq and the stripe library use it
    server_version = "fake_stripe/1"
    sys_version = ""

    @property
    def st(self):
        return self.server.state

    def log_message(self, fmt, *args):  # quiet: the request log is the record
        pass

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status, body, headers=None, content_type="application/json"):
        data = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else
            (json.dumps(body, indent=2) + "\n").encode())
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, str(v))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (e.g. its timeout)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def _dispatch(self, method):
        url = urllib.parse.urlsplit(self.path)
        raw = self._body()
        if url.path.startswith("/__control/"):
            return self._control(method, url.path, raw)
        self._api(method, url, raw)

    # -- control

    def _control(self, method, path, raw):
        st = self.st
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, {"error": "body must be JSON"})
        with st.lock:
            if method == "GET" and path == "/__control/health":
                return self._send(200, {"ok": True, "pid": os.getpid()})
            if method == "GET" and path == "/__control/requests":
                return self._send(200, copy.deepcopy(st.log))
            if method == "GET" and path == "/__control/faults":
                return self._send(200, st.faults)
            if method == "POST" and path == "/__control/faults":
                responses = data.get("responses") or []
                if "path" not in data or not isinstance(responses, list):
                    return self._send(400, {"error": "need path and responses"})
                st.faults.append({"path": data["path"], "method": data.get("method"),
                                  "responses": list(responses)})
                return self._send(200, {"queued": len(responses)})
            if method == "POST" and path == "/__control/reset":
                st.reset()
                return self._send(200, {"ok": True})
            if method == "POST" and path == "/__control/prices":
                p = st.add_price(data["id"], data.get("unit_amount", 1000),
                                 data.get("currency", "usd"), data.get("interval", "month"))
                return self._send(200, p)
            m = re.fullmatch(r"/__control/objects/([A-Za-z0-9_]+)", path)
            if method == "GET" and m:
                obj = st.objects.get(m.group(1))
                if obj is None:
                    return self._send(404, {"error": "no such object"})
                return self._send(200, st.render(obj, None))
            if method == "POST" and path == "/__control/events":
                try:
                    out = build_event(
                        st, data["type"], data["object_id"],
                        api_version=data.get("api_version"), created=data.get("created"),
                        event_id=data.get("event_id"),
                        previous_attributes=data.get("previous_attributes"),
                        overrides=data.get("overrides"), secret=data.get("secret"),
                        timestamp=data.get("timestamp"), record=data.get("record", True))
                except KeyError as e:
                    return self._send(404, {"error": str(e)})
                return self._send(200, out)
        self._send(404, {"error": f"unknown control endpoint {method} {path}"})

    # -- Stripe API

    def _api(self, method, url, raw):
        st = self.st
        request_id = "req_" + rand(14)
        headers = {"Request-Id": request_id}
        text = raw.decode("utf-8", errors="replace")
        entry = {
            "time": time.time(), "method": method, "path": url.path, "query": url.query,
            "headers": {h: self.headers.get(h) for h in LOGGED_HEADERS if h in self.headers},
            "body": text, "form": None, "status": None, "request_id": request_id,
            "idempotent_replayed": False, "fault": None,
        }
        with st.lock:
            st.log.append(entry)  # logged on arrival, so a hung request is visible
        version = self.headers.get("Stripe-Version") or st.default_api_version
        headers["Stripe-Version"] = version

        def finish(status, body, extra=None, **kw):
            entry["status"] = status
            self._send(status, body, {**headers, **(extra or {})}, **kw)

        try:
            form = parse_form(text if method != "GET" else url.query)
            if method == "DELETE" and url.query:
                form.update(parse_form(url.query))
            entry["form"] = form
        except StripeError as e:
            return finish(e.status, e.body())

        # Authentication comes first, as at Stripe.
        auth = self.headers.get("Authorization", "")
        m = re.fullmatch(r"Bearer ((?:sk|rk)_test_\S+)", auth)
        if not m:
            msg = ("You did not provide an API key." if not auth else
                   "Invalid API Key provided: this test server takes sk_test_/rk_test_ keys "
                   "as Bearer tokens.")
            return finish(401, {"error": {"type": AUTH_ERROR_TYPE, "message": msg}})
        api_key = m.group(1)

        # Injected faults, before normal handling (taken only by authenticated
        # requests, so a test's own bad-key probe does not eat them).
        with st.lock:
            wake = st.wake
            fault = None
            for rule in st.faults:
                if rule["responses"] and _fault_matches(rule, method, url.path):
                    fault = rule["responses"].pop(0)
                    break
            st.faults = [r for r in st.faults if r["responses"]]
        extra_headers = {}
        if fault is not None:
            entry["fault"] = fault
            extra_headers = dict(fault.get("headers") or {})
            # A reset (or stop) during the delay abandons the request, so a woken
            # sleeper never writes into the next test's fresh state.
            interrupted = bool(fault.get("delay_s")) and wake.wait(float(fault["delay_s"]))
            if fault.get("drop") or interrupted:
                entry["status"] = "dropped"
                self.close_connection = True
                try:
                    self.connection.shutdown(2)
                except OSError:
                    pass
                return
            if "body" in fault:
                return finish(int(fault.get("status", 200)), fault["body"], extra_headers)
            status = int(fault.get("status", 200))
            if status >= 300:
                body = fault_error(status, fault.get("error"))
                saved_key = self.headers.get("Idempotency-Key") if method == "POST" else None
                if fault.get("saved") and saved_key:
                    # As Stripe saves an error once the endpoint began executing: every
                    # later request with this key gets it back, marked as a replay.
                    with st.lock:
                        st.idempotency[(api_key, saved_key)] = {
                            "fingerprint": json.dumps([method, url.path, form], sort_keys=True),
                            "status": status, "body": body, "request_id": request_id}
                return finish(status, body, extra_headers)

        # Idempotency (POST only, as at Stripe), scoped to the API key.
        idem = self.headers.get("Idempotency-Key") if method == "POST" else None
        fingerprint = json.dumps([method, url.path, form], sort_keys=True)

        def replay(saved):
            # The stored answer, or idempotency_error if the request is not the same.
            if saved["fingerprint"] == fingerprint:
                entry["idempotent_replayed"] = True
                return saved["status"], saved["body"], {
                    **extra_headers, "Idempotent-Replayed": "true",
                    "Original-Request": saved["request_id"]}
            msg = ("Keys for idempotent requests can only be used with the same "
                   "parameters they were first used with. Try using a key other "
                   f"than '{idem}' if you meant to execute a different request.")
            if json.loads(saved["fingerprint"])[:2] != [method, url.path]:
                msg = ("Keys for idempotent requests can only be used for the same "
                       "endpoint they were first used for.")
            return 400, {"error": {"type": "idempotency_error", "message": msg}}, extra_headers

        if idem is not None:
            headers["Idempotency-Key"] = idem
            if len(idem) > 255:
                return finish(400, invalid("Idempotency-Key must be at most 255 characters.",
                                           "Idempotency-Key").body())
            with st.lock:
                saved = st.idempotency.get((api_key, idem))
            if saved is not None:
                return finish(*replay(saved))

        for route_method, pattern, fn in ROUTES:
            match = re.fullmatch(pattern, url.path)
            if match and route_method == method:
                break
        else:
            return finish(404, {"error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({method}: {url.path}). Please see "
                           "https://stripe.com/docs or we can help at https://support.stripe.com/."}})

        # One request at a time inside the state (simple and race-free); the answer
        # is sent after the lock is released, so a slow client holds nothing.
        with st.lock:
            saved = st.idempotency.get((api_key, idem)) if idem is not None else None
            if saved is not None:  # a concurrent twin with this key finished first
                result = replay(saved)
            else:
                try:
                    status, body = fn(st, Ctx(form, match.groupdict(), version, api_key))
                    store = True
                except StripeError as e:
                    status, body, store = e.status, e.body(), e.stored
                    extra_headers.update(e.headers)
                if idem is not None and store:
                    st.idempotency[(api_key, idem)] = {
                        "fingerprint": fingerprint, "status": status, "body": body,
                        "request_id": request_id}
                result = (status, body, extra_headers)
        finish(*result)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _watchdog(max_lifetime, parent_pid):
    # Bounded in time: exit after max_lifetime, or when the parent is gone.
    deadline = time.monotonic() + max_lifetime
    while time.monotonic() < deadline:
        if parent_pid and os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(0.5)
    os._exit(0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--name", default="fake_stripe")
    ap.add_argument("--api-version", default=DEFAULT_API_VERSION)
    ap.add_argument("--webhook-secret", default=DEFAULT_WEBHOOK_SECRET)
    ap.add_argument("--max-lifetime", type=float, default=3600.0)
    ap.add_argument("--parent-pid", type=int, default=0,
                    help="exit when this process is no longer our parent")
    args = ap.parse_args(argv)

    os.makedirs(args.state_dir, exist_ok=True)
    srv = Server(("127.0.0.1", args.port), Handler)  # 127.0.0.1 only
    srv.state = State(args.api_version, args.webhook_secret)
    base = os.path.join(args.state_dir, args.name)
    with open(base + ".pid", "w") as f:
        f.write(f"{os.getpid()}\n")
    tmp = base + ".port.tmp"
    with open(tmp, "w") as f:
        f.write(f"{srv.server_address[1]}\n")
    os.replace(tmp, base + ".port")  # atomic: readers see the whole number or nothing

    threading.Thread(target=_watchdog, args=(args.max_lifetime, args.parent_pid),
                     daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        srv.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass


# --------------------------------------------------------------------------
# Python API for tests


class FakeStripe(ServerProcess):
    """A running fake_stripe subprocess.

        fs = FakeStripe.start(tmp_path)          # 127.0.0.1, free port, own process
        fs.url                                    # http://127.0.0.1:PORT (stripe_api_base)
        fs.faults("/v1/refunds", [{"status": 500}, {"delay_s": 5}])
        fs.requests(path="/v1/payment_intents")   # the request log
        ev = fs.event("payment_intent.succeeded", pi_id)   # {"payload", "signature", ...}
        fs.reset(); fs.stop()

    A subprocess, so a deliberately slow or hung answer can never block pytest.
    """

    def __init__(self, proc, state_dir, name, port, webhook_secret):
        self.proc = proc
        self.pid = proc.pid
        self.state_dir = str(state_dir)
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.webhook_secret = webhook_secret

    @classmethod
    def start(cls, state_dir, *, name="fake_stripe", webhook_secret=DEFAULT_WEBHOOK_SECRET,
              api_version=DEFAULT_API_VERSION, max_lifetime=3600.0, startup_timeout=10.0,
              python=None):
        state_dir = str(state_dir)
        os.makedirs(state_dir, exist_ok=True)
        base = os.path.join(state_dir, name)
        for suffix in (".port", ".pid"):
            if os.path.exists(base + suffix):
                os.unlink(base + suffix)
        log = open(base + ".log", "ab")
        proc = subprocess.Popen(
            [python or sys.executable, os.path.abspath(__file__), "--port", "0",
             "--state-dir", state_dir, "--name", name, "--api-version", api_version,
             "--webhook-secret", webhook_secret, "--max-lifetime", str(max_lifetime),
             "--parent-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + startup_timeout
        port = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"fake_stripe exited with {proc.returncode}; see {base}.log")
            try:
                with open(base + ".port") as f:
                    port = int(f.read())
                break
            except (FileNotFoundError, ValueError):
                time.sleep(0.05)
        inst = cls(proc, state_dir, name, port or 0, webhook_secret)
        if port is None:
            inst.stop()
            raise RuntimeError(f"fake_stripe did not start within {startup_timeout}s")
        while True:
            try:
                inst._control("GET", "/__control/health", timeout=1)
                return inst
            except OSError:
                if time.monotonic() > deadline:
                    inst.stop()
                    raise RuntimeError("fake_stripe does not answer")
                time.sleep(0.05)

    def _control(self, method, path, data=None, timeout=10):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{method} {path}: {e.code} {e.read().decode()}") from None

    def requests(self, path=None, method=None):
        """The request log: dicts with method, path, query, headers, body, form,
        status, request_id, idempotent_replayed, fault, time."""
        log = self._control("GET", "/__control/requests")
        return [r for r in log if (path is None or r["path"] == path)
                and (method is None or r["method"] == method.upper())]

    def faults(self, path, responses, method=None):
        """Queue fault responses for requests to `path` (see the module docstring)."""
        return self._control("POST", "/__control/faults",
                             {"path": path, "method": method, "responses": list(responses)})

    def pending_faults(self):
        return self._control("GET", "/__control/faults")

    def reset(self):
        self._control("POST", "/__control/reset", {})

    def price(self, price_id, unit_amount, currency="usd", interval="month"):
        return self._control("POST", "/__control/prices",
                             {"id": price_id, "unit_amount": unit_amount,
                              "currency": currency, "interval": interval})

    def object(self, object_id):
        """An object as the server holds it, without going through the API log."""
        return self._control("GET", f"/__control/objects/{object_id}")

    def event(self, type, object_id, *, secret=None, api_version=None, created=None,
              event_id=None, previous_attributes=None, timestamp=None, record=True, **overrides):
        """A signed webhook event for an object the server holds.

        Returns {"payload": str, "signature": str, "event_id", "object_id", "event"}:
        hand payload and signature to payment.process_stripe_event. Keyword
        `overrides` are deep-merged into the object (and kept by the server).
        """
        out = self._control("POST", "/__control/events", {
            "type": type, "object_id": object_id, "secret": secret,
            "api_version": api_version, "created": created, "event_id": event_id,
            "previous_attributes": previous_attributes, "timestamp": timestamp,
            "overrides": overrides or None, "record": record})
        out["event"] = json.loads(out["payload"])
        return out


if __name__ == "__main__":
    main()
