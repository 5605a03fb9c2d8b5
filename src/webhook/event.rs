//! Stripe event payloads, parsed once.
//!
//! The envelope is read with the object left as raw JSON, so event types that need no work
//! cost one validating scan. Object shapes cover every API version a deployment meets:
//! - 2025-03-31 and later: subscription periods on `items.data[]`, an invoice's subscription
//!   under `parent.subscription_details.subscription`, PaymentIntents with `latest_charge`;
//! - older versions: those fields at the top level, `charges.data[]` embedded;
//! - localstripe's 2017-08-15 shapes, where related objects may be embedded, not ids.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A body larger than this is not a Stripe event (Stripe's are a few kB to a few hundred).
pub const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub object: Cow<'a, str>,
    #[serde(rename = "type", borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(default)]
    pub livemode: bool,
    #[serde(default, borrow)]
    pub api_version: Option<Cow<'a, str>>,
    pub created: i64,
    #[serde(borrow)]
    pub data: EventData<'a>,
}

#[derive(Debug, Deserialize)]
pub struct EventData<'a> {
    #[serde(borrow)]
    pub object: &'a RawValue,
}

/// What an event type asks of us; everything else is recorded as `ignored`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// payment_intent.* with the payment status it implies.
    PaymentIntent(crate::lifecycle::PaymentStatus),
    /// refund.created / refund.updated / refund.failed
    Refund,
    /// charge.refunded (the refunds may be embedded, on older API versions)
    ChargeRefunded,
    /// customer.subscription.*
    Subscription,
    /// invoice.paid / invoice.payment_succeeded
    InvoicePaid,
    /// invoice.payment_failed
    InvoicePaymentFailed,
    /// invoice_payment.paid (API 2025-03-31+: what paid an invoice)
    InvoicePaymentPaid,
    Unhandled,
}

impl EventKind {
    pub fn of(event_type: &str) -> EventKind {
        use crate::lifecycle::PaymentStatus as P;
        match event_type {
            "payment_intent.succeeded" => EventKind::PaymentIntent(P::Succeeded),
            "payment_intent.processing" => EventKind::PaymentIntent(P::Processing),
            "payment_intent.requires_action" => EventKind::PaymentIntent(P::RequiresAction),
            "payment_intent.payment_failed" => EventKind::PaymentIntent(P::Failed),
            "payment_intent.canceled" => EventKind::PaymentIntent(P::Canceled),
            // Before API 2024-10-28, refund.* events were sent only for refunds without a charge;
            // a card refund's updates came as charge.refund.updated, with the refund as object.
            "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => {
                EventKind::Refund
            }
            "charge.refunded" => EventKind::ChargeRefunded,
            "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted"
            | "customer.subscription.paused"
            | "customer.subscription.resumed" => EventKind::Subscription,
            "invoice.paid" | "invoice.payment_succeeded" => EventKind::InvoicePaid,
            "invoice.payment_failed" => EventKind::InvoicePaymentFailed,
            "invoice_payment.paid" => EventKind::InvoicePaymentPaid,
            _ => EventKind::Unhandled,
        }
    }
}

/// Every event type `EventKind::of` gives work to: what sync_events asks Stripe's Events API
/// for (`types[]`, which takes at most 20).
pub const HANDLED_TYPES: [&str; 19] = [
    "payment_intent.succeeded",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.payment_failed",
    "payment_intent.canceled",
    "refund.created",
    "refund.updated",
    "refund.failed",
    "charge.refund.updated",
    "charge.refunded",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice_payment.paid",
];

/// Why a body is not a Stripe event; the message goes back to the caller as is.
pub fn parse_envelope(payload: &str) -> Result<Envelope<'_>, String> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(format!(
            "the webhook body is {} bytes, more than the {} bytes a Stripe event can be",
            payload.len(),
            MAX_PAYLOAD_BYTES
        ));
    }
    let envelope: Envelope<'_> = serde_json::from_str(payload).map_err(|e| {
        if e.is_data() {
            format!("the webhook body is JSON but not a Stripe event: {e}")
        } else {
            format!("the webhook body is not valid JSON: {e}")
        }
    })?;
    if envelope.object != "event" {
        return Err(format!(
            "the webhook body is a Stripe \"{}\", not an \"event\"",
            truncate(&envelope.object, 40)
        ));
    }
    if !envelope.id.starts_with("evt_") || envelope.id.len() > 255 {
        return Err("the event id is not a Stripe event id (evt_...)".into());
    }
    if envelope.event_type.is_empty() || envelope.event_type.len() > 255 {
        return Err("the event has no type".into());
    }
    if !envelope.data.object.get().trim_start().starts_with('{') {
        return Err("the event's data.object is not an object".into());
    }
    Ok(envelope)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Read a typed object out of the event's raw `data.object`.
pub fn object<'a, T: Deserialize<'a>>(envelope: &Envelope<'a>) -> Result<T, String> {
    serde_json::from_str(envelope.data.object.get())
        .map_err(|e| format!("{} has an unexpected data.object: {e}", envelope.event_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, object: &str) -> String {
        format!(
            r#"{{"id":"evt_1","object":"event","type":"{kind}","livemode":false,"created":1700000000,"api_version":"2025-03-31.basil","data":{{"object":{object}}}}}"#
        )
    }

    #[test]
    fn envelope_keeps_the_object_raw() {
        let body = event("charge.captured", r#"{"id":"ch_1","nested":{"a":[1,2,3]}}"#);
        let env = parse_envelope(&body).unwrap();
        assert_eq!(env.id, "evt_1");
        assert_eq!(EventKind::of(&env.event_type), EventKind::Unhandled);
        assert!(env.data.object.get().contains("nested"));
    }

    #[test]
    fn handled_types_are_exactly_the_ones_given_work() {
        assert!(
            HANDLED_TYPES.len() <= 20,
            "Stripe's types[] takes at most 20"
        );
        for t in HANDLED_TYPES {
            assert_ne!(EventKind::of(t), EventKind::Unhandled, "{t}");
        }
        // A type missing from the list would never be recovered by sync_events.
        let unique: std::collections::HashSet<_> = HANDLED_TYPES.iter().collect();
        assert_eq!(unique.len(), HANDLED_TYPES.len());
        for t in [
            "charge.succeeded",
            "invoice.created",
            "customer.created",
            "payment_intent.created",
        ] {
            assert_eq!(EventKind::of(t), EventKind::Unhandled, "{t}");
        }
    }

    #[test]
    fn non_events_are_refused() {
        assert!(parse_envelope("not json")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse_envelope(r#"{"id":"evt_1"}"#)
            .unwrap_err()
            .contains("not a Stripe event"));
        let charge = event("x", "{}").replace(r#""object":"event""#, r#""object":"charge""#);
        assert!(parse_envelope(&charge)
            .unwrap_err()
            .contains("not an \"event\""));
        let bad_id = event("x", "{}").replace("evt_1", "ch_1");
        assert!(parse_envelope(&bad_id).is_err());
        assert!(parse_envelope(&event("x", "[1]")).is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_envelope(&event("x", &deep)).is_err());
        let huge = " ".repeat(MAX_PAYLOAD_BYTES + 1);
        assert!(parse_envelope(&huge).unwrap_err().contains("bytes"));
    }
}
