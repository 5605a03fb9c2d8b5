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
use std::collections::HashMap;

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
    PaymentIntent(super::transitions::PaymentStatus),
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
        use super::transitions::PaymentStatus as P;
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

/// A field that Stripe sends as an id, or (expanded, or on old versions) as the object itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    Id(String),
    Object(T),
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdOnly {
    pub id: String,
}

pub trait HasId {
    fn id(&self) -> &str;
}

impl HasId for IdOnly {
    fn id(&self) -> &str {
        &self.id
    }
}

impl<T: HasId> Expandable<T> {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) => id,
            Expandable::Object(o) => o.id(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

pub type Metadata = HashMap<String, serde_json::Value>;

pub fn metadata_str<'m>(metadata: &'m Option<Metadata>, key: &str) -> Option<&'m str> {
    metadata.as_ref()?.get(key)?.as_str()
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    #[serde(default)]
    pub amount_received: Option<i64>,
    pub currency: String,
    #[serde(default)]
    pub metadata: Option<Metadata>,
    #[serde(default)]
    pub latest_charge: Option<Expandable<Charge>>,
    /// Before API 2022-11-15 the charges were embedded here.
    #[serde(default)]
    pub charges: Option<List<Charge>>,
    #[serde(default)]
    pub last_payment_error: Option<PaymentError>,
}

impl PaymentIntent {
    pub fn charge_id(&self) -> Option<&str> {
        if let Some(latest) = &self.latest_charge {
            return Some(latest.id());
        }
        // Stripe lists are newest first: the first charge is the latest attempt.
        self.charges.as_ref()?.data.first().map(|c| c.id.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Charge {
    pub id: String,
    #[serde(default)]
    pub payment_intent: Option<Expandable<IdOnly>>,
    #[serde(default)]
    pub refunds: Option<List<Refund>>,
    /// What Stripe says has been refunded of the charge, in minor units.
    #[serde(default)]
    pub amount_refunded: Option<i64>,
}

impl HasId for Charge {
    fn id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Refund {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub charge: Option<Expandable<Charge>>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<IdOnly>>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

impl Refund {
    pub fn payment_intent_id(&self) -> Option<&str> {
        if let Some(pi) = &self.payment_intent {
            return Some(pi.id());
        }
        match &self.charge {
            Some(Expandable::Object(charge)) => charge.payment_intent.as_ref().map(|p| p.id()),
            _ => None,
        }
    }

    pub fn charge_id(&self) -> Option<&str> {
        self.charge.as_ref().map(|c| c.id())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub status: String,
    #[serde(default)]
    pub customer: Option<Expandable<IdOnly>>,
    #[serde(default)]
    pub cancel_at_period_end: bool,
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub canceled_at: Option<i64>,
    /// A scheduled cancellation (the customer portal's "cancel on date").
    #[serde(default)]
    pub cancel_at: Option<i64>,
    #[serde(default)]
    pub trial_end: Option<i64>,
    #[serde(default)]
    pub items: Option<List<SubscriptionItem>>,
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub price: Option<IdOnly>,
    #[serde(default)]
    pub plan: Option<IdOnly>,
}

impl Subscription {
    /// Periods moved from the subscription to its items in API 2025-03-31.
    pub fn period(&self) -> (Option<i64>, Option<i64>) {
        let item = self.items.as_ref().and_then(|l| l.data.first());
        let start = self
            .current_period_start
            .or(item.and_then(|i| i.current_period_start));
        let end = self
            .current_period_end
            .or(item.and_then(|i| i.current_period_end));
        (start, end)
    }

    pub fn price_id(&self) -> Option<&str> {
        let item = self.items.as_ref()?.data.first()?;
        item.price
            .as_ref()
            .or(item.plan.as_ref())
            .map(|p| p.id.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Invoice {
    pub id: String,
    #[serde(default)]
    pub billing_reason: Option<String>,
    #[serde(default)]
    pub amount_paid: i64,
    pub currency: String,
    #[serde(default)]
    pub subscription: Option<Expandable<IdOnly>>,
    #[serde(default)]
    pub parent: Option<InvoiceParent>,
    #[serde(default)]
    pub payment_intent: Option<Expandable<IdOnly>>,
    /// Before API 2025-03-31: the invoice was marked paid outside Stripe.
    #[serde(default)]
    pub paid_out_of_band: Option<bool>,
}

/// API 2025-03-31+: one payment of an invoice; `payment.type` says whether it is money
/// Stripe received (`payment_intent`, `charge`) or a record of money paid outside Stripe
/// (`payment_record`).
#[derive(Debug, Clone, Deserialize)]
pub struct InvoicePayment {
    pub id: String,
    pub invoice: Expandable<IdOnly>,
    #[serde(default)]
    pub amount_paid: Option<i64>,
    pub currency: String,
    pub status: String,
    pub payment: InvoicePaymentSource,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InvoicePaymentSource {
    #[serde(rename = "type")]
    pub payment_type: String,
    #[serde(default)]
    pub payment_intent: Option<Expandable<IdOnly>>,
    #[serde(default)]
    pub charge: Option<Expandable<IdOnly>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InvoiceParent {
    #[serde(default)]
    pub subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionDetails {
    #[serde(default)]
    pub subscription: Option<Expandable<IdOnly>>,
}

impl Invoice {
    /// Top level before API 2025-03-31, under `parent.subscription_details` after.
    pub fn subscription_id(&self) -> Option<&str> {
        if let Some(s) = &self.subscription {
            return Some(s.id());
        }
        let details = self.parent.as_ref()?.subscription_details.as_ref()?;
        details.subscription.as_ref().map(|s| s.id())
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

    #[test]
    fn subscription_periods_come_from_items_on_new_versions_and_top_level_on_old() {
        let new: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","status":"active","items":{"data":[{"current_period_start":10,"current_period_end":20,"price":{"id":"price_1"}}]}}"#,
        )
        .unwrap();
        assert_eq!(new.period(), (Some(10), Some(20)));
        assert_eq!(new.price_id(), Some("price_1"));
        let old: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","status":"active","current_period_start":1,"current_period_end":2,"items":{"data":[{"plan":{"id":"plan_1"}}]}}"#,
        )
        .unwrap();
        assert_eq!(old.period(), (Some(1), Some(2)));
        assert_eq!(old.price_id(), Some("plan_1"));
    }

    #[test]
    fn invoice_subscription_is_found_in_both_shapes() {
        let new: Invoice = serde_json::from_str(
            r#"{"id":"in_1","currency":"usd","amount_paid":5,"parent":{"type":"subscription_details","subscription_details":{"subscription":"sub_9"}}}"#,
        )
        .unwrap();
        assert_eq!(new.subscription_id(), Some("sub_9"));
        let old: Invoice = serde_json::from_str(
            r#"{"id":"in_1","currency":"usd","amount_paid":5,"subscription":"sub_8"}"#,
        )
        .unwrap();
        assert_eq!(old.subscription_id(), Some("sub_8"));
    }

    #[test]
    fn embedded_charges_and_refunds_of_old_versions_are_read() {
        let pi: PaymentIntent = serde_json::from_str(
            r#"{"id":"pi_1","amount":100,"currency":"usd","charges":{"object":"list","data":[{"id":"ch_1","object":"charge"}]}}"#,
        )
        .unwrap();
        assert_eq!(pi.charge_id(), Some("ch_1"));
        let refund: Refund = serde_json::from_str(
            r#"{"id":"re_1","amount":5,"currency":"usd","charge":{"id":"ch_1","payment_intent":"pi_1"}}"#,
        )
        .unwrap();
        assert_eq!(refund.payment_intent_id(), Some("pi_1"));
        assert_eq!(refund.charge_id(), Some("ch_1"));
        let new_pi: PaymentIntent = serde_json::from_str(
            r#"{"id":"pi_2","amount":100,"currency":"usd","latest_charge":"ch_2"}"#,
        )
        .unwrap();
        assert_eq!(new_pi.charge_id(), Some("ch_2"));
    }
}
