//! The metadata pg_payment puts on what it creates at Stripe, and reads back from webhooks:
//! every key in one place, for the writers (the SQL actions) and the readers (the webhook's
//! "ours, another installation's, or nobody's" check in webhook::apply).

use crate::objects::Metadata;

/// This database's installation id (payment.installation): on every object pg_payment makes.
pub const INSTALLATION: &str = "pg_payment_installation";
/// The order a PaymentIntent, refund or subscription is for.
pub const ORDER_ID: &str = "pg_payment_order_id";
/// The payment a refund is of.
pub const PAYMENT_ID: &str = "pg_payment_payment_id";
/// The order user a customer is for.
pub const USER: &str = "pg_payment_user";
/// Which attempt of its kind an object is (see README, "Idempotency"): the same attempt
/// replays to the same object, and after an error Stripe saved, tells what an earlier key
/// made from a new object.
pub const PAYMENT_ATTEMPT: &str = "pg_payment_attempt";
pub const REFUND_ATTEMPT: &str = "pg_payment_refund_attempt";
pub const SUBSCRIPTION_ATTEMPT: &str = "pg_payment_subscription_attempt";

/// The installation that stamped an object, if any.
pub fn installation(metadata: &Metadata) -> Option<&str> {
    metadata.get(INSTALLATION).map(String::as_str)
}

/// The order an object was made for, when its metadata names one.
pub fn order_id(metadata: &Metadata) -> Option<i64> {
    metadata.get(ORDER_ID)?.parse().ok()
}
