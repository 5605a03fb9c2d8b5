//! The Stripe objects pg_payment reads, typed loosely on purpose: every field
//! but the id is optional and unknown fields are ignored, because Stripe adds
//! fields in new API versions, moves some (a subscription's period went from
//! the top level to its items in 2025-03-31), and localstripe leaves some out.

use serde::{Deserialize, Deserializer};
use std::collections::HashMap;

/// Metadata is `{}` from Stripe but may be `null` or absent from fakes.
fn metadata<'de, D: Deserializer<'de>>(d: D) -> Result<HashMap<String, String>, D::Error> {
    Ok(Option::<HashMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

/// A field that Stripe sends as an id, or as the object when expanded.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Expandable<T> {
    Id(String),
    Object(Box<T>),
}

/// Anything with an id, for expandable fields whose object we do not read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ObjectRef {
    pub id: String,
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

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub status: Option<String>,
    pub amount: Option<i64>,
    pub amount_received: Option<i64>,
    pub currency: Option<String>,
    pub client_secret: Option<String>,
    pub latest_charge: Option<Expandable<ObjectRef>>,
    pub livemode: Option<bool>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: HashMap<String, String>,
    pub last_payment_error: Option<PaymentError>,
}

/// The part of `last_payment_error` that the payments table keeps.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PaymentError {
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Refund {
    pub id: String,
    pub status: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub payment_intent: Option<Expandable<ObjectRef>>,
    pub charge: Option<Expandable<ObjectRef>>,
    pub reason: Option<String>,
    pub failure_reason: Option<String>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: HashMap<String, String>,
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
    pub metadata: HashMap<String, String>,
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
    pub items: Option<List<SubscriptionItem>>,
    pub latest_invoice: Option<Expandable<Invoice>>,
    pub livemode: Option<bool>,
    #[serde(default, deserialize_with = "metadata")]
    pub metadata: HashMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SubscriptionItem {
    pub id: Option<String>,
    /// On the items from API version 2025-03-31 on.
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Invoice {
    pub id: String,
    pub status: Option<String>,
    pub billing_reason: Option<String>,
    /// Before 2025-03-31; expanded with `latest_invoice.payment_intent`.
    pub payment_intent: Option<Expandable<PaymentIntent>>,
    /// From 2025-03-31; expanded with `latest_invoice.confirmation_secret`.
    pub confirmation_secret: Option<ConfirmationSecret>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ConfirmationSecret {
    pub client_secret: Option<String>,
}

has_id!(
    ObjectRef,
    PaymentIntent,
    Refund,
    Customer,
    Subscription,
    Invoice
);

impl Subscription {
    /// The current period as (start, end) in Unix seconds: the top-level
    /// fields on old API versions, else the items' (the earliest start and the
    /// latest end, which for the usual one-item subscription are its own).
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

    pub fn customer_id(&self) -> Option<&str> {
        self.customer.as_ref().map(Expandable::id)
    }

    /// The client secret Stripe.js needs to pay the first invoice, when the
    /// latest invoice was expanded (either API shape).
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
}
