//! Stripe's objects as pg_payment reads them, one model for webhook events and API answers.
//!
//! Typed loosely on purpose: every field but the id is optional and unknown fields are
//! ignored, because Stripe adds fields in new API versions, moves some (a subscription's
//! period went from the top level to its items in 2025-03-31, an invoice's subscription
//! under `parent`), embeds related objects on old versions (a PaymentIntent's `charges`, a
//! charge's `refunds`), and localstripe leaves some out. What a caller needs, it checks.

use serde::{Deserialize, Deserializer};
use std::collections::HashMap;

/// Metadata: Stripe's values are strings; `null`, an absent field, or a value of another
/// type (from a fake or a hand-made payload) reads as no value rather than as a broken object.
pub type Metadata = HashMap<String, String>;

fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<Metadata, D::Error> {
    let raw = Option::<HashMap<String, serde_json::Value>>::deserialize(d)?.unwrap_or_default();
    Ok(raw
        .into_iter()
        .filter_map(|(k, v)| match v {
            serde_json::Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect())
}

/// A field that Stripe sends as an id, or (expanded, or on old versions) as the object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    Id(String),
    Object(Box<T>),
}

impl<T: HasId> Expandable<T> {
    pub fn id(&self) -> &str {
        match self {
            Expandable::Id(id) => id,
            Expandable::Object(obj) => obj.id(),
        }
    }

    pub fn object(&self) -> Option<&T> {
        match self {
            Expandable::Id(_) => None,
            Expandable::Object(obj) => Some(obj),
        }
    }
}

pub trait HasId {
    fn id(&self) -> &str;
}

macro_rules! has_id {
    ($($t:ty),*) => {$(
        impl HasId for $t {
            fn id(&self) -> &str {
                &self.id
            }
        }
    )*};
}

/// Anything with an id, for expandable fields whose object we do not read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ObjectRef {
    pub id: String,
}

/// One page of a Stripe list (newest first).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: Option<String>,
    pub amount: Option<i64>,
    pub amount_received: Option<i64>,
    pub currency: Option<String>,
    pub client_secret: Option<String>,
    pub latest_charge: Option<Expandable<Charge>>,
    /// Before API 2022-11-15 the charges were embedded here.
    pub charges: Option<List<Charge>>,
    pub livemode: Option<bool>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: Metadata,
    pub last_payment_error: Option<LastPaymentError>,
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

/// A PaymentIntent's `last_payment_error`: the part the payments table keeps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LastPaymentError {
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Charge {
    pub id: String,
    pub payment_intent: Option<Expandable<ObjectRef>>,
    /// Embedded before API 2022-11-15.
    pub refunds: Option<List<Refund>>,
    /// What Stripe says has been refunded of the charge, in minor units.
    pub amount_refunded: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Refund {
    pub id: String,
    pub status: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub payment_intent: Option<Expandable<ObjectRef>>,
    pub charge: Option<Expandable<Charge>>,
    pub reason: Option<String>,
    pub failure_reason: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: Metadata,
}

impl Refund {
    /// Its PaymentIntent, named by the refund or (on old versions) by its embedded charge.
    pub fn payment_intent_id(&self) -> Option<&str> {
        if let Some(pi) = &self.payment_intent {
            return Some(pi.id());
        }
        let charge = self.charge.as_ref()?.object()?;
        charge.payment_intent.as_ref().map(Expandable::id)
    }

    pub fn charge_id(&self) -> Option<&str> {
        self.charge.as_ref().map(Expandable::id)
    }
}

/// A Price, as `start_subscription` checks it against the order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Price {
    pub id: String,
    pub currency: String,
    /// None for tiered or customer-chosen prices.
    pub unit_amount: Option<i64>,
    /// Present for recurring prices only.
    pub recurring: Option<serde_json::Value>,
    #[serde(rename = "type")]
    pub price_type: Option<String>,
}

impl Price {
    pub fn is_recurring(&self) -> bool {
        self.recurring.is_some() || self.price_type.as_deref() == Some("recurring")
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Customer {
    pub id: String,
    pub email: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub status: Option<String>,
    pub customer: Option<Expandable<ObjectRef>>,
    pub cancel_at_period_end: Option<bool>,
    /// Top level on API versions before 2025-03-31.
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub canceled_at: Option<i64>,
    /// A scheduled cancellation (the customer portal's "cancel on date").
    pub cancel_at: Option<i64>,
    pub trial_end: Option<i64>,
    pub items: Option<List<SubscriptionItem>>,
    pub latest_invoice: Option<Expandable<Invoice>>,
    pub livemode: Option<bool>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubscriptionItem {
    pub id: Option<String>,
    /// On the items from API version 2025-03-31 on.
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub price: Option<ObjectRef>,
    /// The price's older name, on old versions and localstripe.
    pub plan: Option<ObjectRef>,
}

impl Subscription {
    /// The current period as (start, end) in Unix seconds: the top-level fields on API
    /// versions before 2025-03-31; from then on each item has its own, and the
    /// subscription's is the earliest start and the latest end over its items.
    pub fn current_period(&self) -> (Option<i64>, Option<i64>) {
        if self.current_period_start.is_some() || self.current_period_end.is_some() {
            return (self.current_period_start, self.current_period_end);
        }
        let items = self
            .items
            .as_ref()
            .map(|l| l.data.as_slice())
            .unwrap_or(&[]);
        let start = items.iter().filter_map(|i| i.current_period_start).min();
        let end = items.iter().filter_map(|i| i.current_period_end).max();
        (start, end)
    }

    /// The Price of its first item (pg_payment starts one-item subscriptions).
    pub fn price_id(&self) -> Option<&str> {
        let item = self.items.as_ref()?.data.first()?;
        item.price
            .as_ref()
            .or(item.plan.as_ref())
            .map(|p| p.id.as_str())
    }

    pub fn customer_id(&self) -> Option<&str> {
        self.customer.as_ref().map(Expandable::id)
    }

    /// The client secret Stripe.js needs to pay the first invoice, when the latest invoice
    /// was expanded (either API shape).
    pub fn first_payment_client_secret(&self) -> Option<&str> {
        let invoice = self.latest_invoice.as_ref()?.object()?;
        if let Some(secret) = invoice
            .confirmation_secret
            .as_ref()
            .and_then(|c| c.client_secret.as_deref())
        {
            return Some(secret);
        }
        invoice
            .payment_intent
            .as_ref()?
            .object()?
            .client_secret
            .as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Invoice {
    pub id: String,
    pub status: Option<String>,
    pub billing_reason: Option<String>,
    pub amount_paid: Option<i64>,
    pub currency: Option<String>,
    /// Top level before API 2025-03-31.
    pub subscription: Option<Expandable<ObjectRef>>,
    /// From API 2025-03-31: `parent.subscription_details.subscription`.
    pub parent: Option<InvoiceParent>,
    /// Before 2025-03-31; expanded with `latest_invoice.payment_intent`.
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    /// From 2025-03-31; expanded with `latest_invoice.confirmation_secret`.
    pub confirmation_secret: Option<ConfirmationSecret>,
    /// Before API 2025-03-31: the invoice was marked paid outside Stripe.
    pub paid_out_of_band: Option<bool>,
}

impl Invoice {
    /// Top level before API 2025-03-31, under `parent.subscription_details` after.
    pub fn subscription_id(&self) -> Option<&str> {
        if let Some(s) = &self.subscription {
            return Some(s.id());
        }
        let details = self.parent.as_ref()?.subscription_details.as_ref()?;
        details.subscription.as_ref().map(Expandable::id)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InvoiceParent {
    pub subscription_details: Option<SubscriptionDetails>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubscriptionDetails {
    pub subscription: Option<Expandable<ObjectRef>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConfirmationSecret {
    pub client_secret: Option<String>,
}

/// API 2025-03-31+: one payment of an invoice; `payment.type` says whether it is money
/// Stripe received (`payment_intent`, `charge`) or a record of money paid outside Stripe
/// (`payment_record`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InvoicePayment {
    pub id: String,
    pub invoice: Expandable<ObjectRef>,
    pub amount_paid: Option<i64>,
    pub currency: Option<String>,
    pub status: Option<String>,
    pub payment: InvoicePaymentSource,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct InvoicePaymentSource {
    #[serde(rename = "type")]
    pub payment_type: String,
    pub payment_intent: Option<Expandable<ObjectRef>>,
    pub charge: Option<Expandable<ObjectRef>>,
}

has_id!(
    ObjectRef,
    PaymentIntent,
    Charge,
    Refund,
    Customer,
    Subscription,
    Invoice
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payment_intent_reads_with_unknown_fields_and_expanded_charge() {
        let pi: PaymentIntent = serde_json::from_str(
            r#"{"id":"pi_1","object":"payment_intent","amount":9999,"currency":"usd",
                "status":"requires_payment_method","client_secret":"pi_1_secret_x",
                "latest_charge":{"id":"ch_1","object":"charge"},"livemode":false,
                "metadata":{"pgpay_installation":"i1"},"brand_new_field":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(pi.amount, Some(9999));
        assert_eq!(pi.latest_charge.as_ref().map(Expandable::id), Some("ch_1"));
        assert_eq!(pi.metadata["pgpay_installation"], "i1");
        let bare: PaymentIntent =
            serde_json::from_str(r#"{"id":"pi_2","latest_charge":"ch_2","metadata":null}"#)
                .unwrap();
        assert_eq!(bare.latest_charge.unwrap().id(), "ch_2");
        assert_eq!(bare.client_secret, None);
    }

    #[test]
    fn refund_reads_localstripe_and_stripe_shapes() {
        let r: Refund = serde_json::from_str(
            r#"{"id":"re_1","amount":500,"currency":"eur","status":"succeeded",
                "charge":"ch_1","payment_intent":null,"reason":null,"metadata":{}}"#,
        )
        .unwrap();
        assert_eq!(r.charge.unwrap().id(), "ch_1");
        assert!(r.payment_intent.is_none());
        let failed: Refund = serde_json::from_str(
            r#"{"id":"re_2","status":"failed","failure_reason":"expired_or_canceled_card",
                "payment_intent":{"id":"pi_9","object":"payment_intent"}}"#,
        )
        .unwrap();
        assert_eq!(failed.payment_intent.unwrap().id(), "pi_9");
        assert_eq!(
            failed.failure_reason.as_deref(),
            Some("expired_or_canceled_card")
        );
    }

    #[test]
    fn subscription_period_comes_from_the_top_level_on_old_versions() {
        let s: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","status":"active","customer":"cus_1","cancel_at_period_end":false,
                "current_period_start":100,"current_period_end":200,
                "items":{"object":"list","data":[{"id":"si_1"}]}}"#,
        )
        .unwrap();
        assert_eq!(s.current_period(), (Some(100), Some(200)));
        assert_eq!(s.customer_id(), Some("cus_1"));
    }

    #[test]
    fn subscription_period_comes_from_the_items_on_new_versions() {
        let s: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","customer":{"id":"cus_1","object":"customer"},
                "items":{"data":[{"id":"si_1","current_period_start":110,"current_period_end":210},
                                 {"id":"si_2","current_period_start":100,"current_period_end":220}]}}"#,
        )
        .unwrap();
        assert_eq!(s.current_period(), (Some(100), Some(220)));
        assert_eq!(s.customer_id(), Some("cus_1"));
        let none: Subscription = serde_json::from_str(r#"{"id":"sub_2"}"#).unwrap();
        assert_eq!(none.current_period(), (None, None));
    }

    #[test]
    fn first_payment_secret_from_either_invoice_shape() {
        let old: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","latest_invoice":{"id":"in_1",
                "payment_intent":{"id":"pi_1","client_secret":"pi_1_secret_a"}}}"#,
        )
        .unwrap();
        assert_eq!(old.first_payment_client_secret(), Some("pi_1_secret_a"));
        let new: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","latest_invoice":{"id":"in_1",
                "confirmation_secret":{"client_secret":"pi_1_secret_b","type":"payment_intent"}}}"#,
        )
        .unwrap();
        assert_eq!(new.first_payment_client_secret(), Some("pi_1_secret_b"));
        let unexpanded: Subscription =
            serde_json::from_str(r#"{"id":"sub_1","latest_invoice":"in_1"}"#).unwrap();
        assert_eq!(unexpanded.first_payment_client_secret(), None);
        assert_eq!(unexpanded.latest_invoice.unwrap().id(), "in_1");
    }

    #[test]
    fn subscription_periods_come_from_items_on_new_versions_and_top_level_on_old() {
        let new: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","status":"active","items":{"data":[{"current_period_start":10,"current_period_end":20,"price":{"id":"price_1"}}]}}"#,
        )
        .unwrap();
        assert_eq!(new.current_period(), (Some(10), Some(20)));
        assert_eq!(new.price_id(), Some("price_1"));
        let old: Subscription = serde_json::from_str(
            r#"{"id":"sub_1","status":"active","current_period_start":1,"current_period_end":2,"items":{"data":[{"plan":{"id":"plan_1"}}]}}"#,
        )
        .unwrap();
        assert_eq!(old.current_period(), (Some(1), Some(2)));
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
