//! The apply step, one module per system callback family.

mod invoice_payments;
mod payments;
mod refunds;
mod subscriptions;

use super::event::{self, Envelope, EventKind};
use super::{Outcome, StripeReads};
use crate::error::{PaymentError, Result};
use crate::metadata as meta;
use crate::objects::Metadata;
use crate::store;

pub fn apply(
    envelope: &Envelope<'_>,
    kind: EventKind,
    stripe: &dyn StripeReads,
) -> Result<Outcome> {
    match kind {
        EventKind::PaymentIntent(target) => payments::apply_payment_intent(envelope, target),
        EventKind::Refund => refunds::apply_refund_event(envelope),
        EventKind::ChargeRefunded => refunds::apply_charge_refunded(envelope, stripe),
        EventKind::Subscription => subscriptions::apply_subscription(envelope),
        EventKind::InvoicePaid => subscriptions::apply_invoice_paid(envelope, stripe),
        EventKind::InvoicePaymentPaid => invoice_payments::apply_invoice_payment_paid(envelope),
        EventKind::InvoicePaymentFailed => subscriptions::apply_invoice_payment_failed(envelope),
        EventKind::Unhandled => Ok(Outcome::Ignored),
    }
}

pub fn relink_invoice_payment(
    payment_id: i64,
    invoice: &str,
    stripe: &dyn StripeReads,
) -> Result<()> {
    pgrx::spi::Spi::connect_mut(|client| {
        invoice_payments::paid_with(client, stripe, invoice)?;
        invoice_payments::link(client, payment_id, invoice)
    })
}

fn object<'a, T: serde::Deserialize<'a>>(envelope: &Envelope<'a>) -> Result<T> {
    event::object(envelope).map_err(PaymentError::InvalidPayload)
}

/// A field the objects model leaves optional (API answers and old versions may lack it) but
/// that this event cannot be applied without.
fn required<T>(value: Option<T>, object: &str, id: &str, field: &str) -> Result<T> {
    value.ok_or_else(|| PaymentError::InvalidPayload(format!("{object} {id} has no {field}")))
}

/// The order an object of ours was created for, when its metadata says so.
fn our_order(metadata: &Metadata) -> Result<Option<i64>> {
    let Some(installation) = meta::installation(metadata) else {
        return Ok(None);
    };
    if !store::is_our_installation(installation)? {
        return Ok(None);
    }
    Ok(meta::order_id(metadata))
}

/// An object of ours that its row does not show yet may be in a transaction still creating
/// it: wait for that transaction (it holds the order's lock) before giving up on it.
/// Returns whether it waited, so the caller looks again.
fn waited_for_creator(client: &mut pgrx::spi::SpiClient<'_>, metadata: &Metadata) -> Result<bool> {
    match our_order(metadata)? {
        Some(order_id) => {
            store::orders::take_order_lock(client, order_id)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// An object stamped with another installation's id belongs to another database on the
/// same Stripe account: never apply it here.
fn is_foreign(metadata: &Metadata) -> Result<bool> {
    match meta::installation(metadata) {
        None => Ok(false),
        Some(theirs) => Ok(!store::is_our_installation(theirs)?),
    }
}
