//! The apply step, one module per system callback family.

mod payments;
mod refunds;
mod subscriptions;

use super::event::{self, Envelope, EventKind};
use super::Outcome;
use crate::error::{PaymentError, Result};
use crate::store;

/// Metadata keys pg_payment puts on every object it creates at Stripe.
pub const META_INSTALLATION: &str = "pg_payment_installation";

pub fn apply(envelope: &Envelope<'_>, kind: EventKind) -> Result<Outcome> {
    match kind {
        EventKind::PaymentIntent(target) => payments::apply_payment_intent(envelope, target),
        EventKind::Refund => refunds::apply_refund_event(envelope),
        EventKind::ChargeRefunded => refunds::apply_charge_refunded(envelope),
        EventKind::Subscription => subscriptions::apply_subscription(envelope),
        EventKind::InvoicePaid => subscriptions::apply_invoice_paid(envelope),
        EventKind::InvoicePaymentFailed => subscriptions::apply_invoice_payment_failed(envelope),
        EventKind::Unhandled => Ok(Outcome::Ignored),
    }
}

fn object<'a, T: serde::Deserialize<'a>>(envelope: &Envelope<'a>) -> Result<T> {
    event::object(envelope).map_err(PaymentError::InvalidPayload)
}

/// An object stamped with another installation's id belongs to another database on the
/// same Stripe account: never apply it here.
fn is_foreign(metadata: &Option<event::Metadata>) -> Result<bool> {
    match event::metadata_str(metadata, META_INSTALLATION) {
        None => Ok(false),
        Some(theirs) => Ok(!store::is_our_installation(theirs)?),
    }
}
