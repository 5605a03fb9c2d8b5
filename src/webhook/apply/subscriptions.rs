//! The recurring callbacks: customer.subscription.* move the recurring payment
//! (management); a paid renewal invoice creates a new order and its payment (deduction).

use super::invoice_payments::{self, PaidWith};
use super::{object, required, waited_for_creator};
use crate::error::{PaymentError, Result};
use crate::lifecycle::{subscription_may_move, SubscriptionStatus};
use crate::objects::{Invoice, Subscription};
use crate::store::orders;
use crate::store::payments::{self, PaidInvoice};
use crate::store::recurring::{self, SubscriptionMove};
use crate::webhook::event::Envelope;
use crate::webhook::{Outcome, StripeReads};
use pgrx::prelude::*;

pub fn apply_subscription(envelope: &Envelope<'_>) -> Result<Outcome> {
    let subscription: Subscription = object(envelope)?;
    let stripe_status = required(
        subscription.status.as_deref(),
        "subscription",
        &subscription.id,
        "status",
    )?;
    let Some(status) = SubscriptionStatus::parse(stripe_status) else {
        return Err(PaymentError::InvalidPayload(format!(
            "subscription {} has a status pg_payment does not know: {stripe_status}",
            subscription.id
        )));
    };
    Spi::connect_mut(|client| {
        let mut recurring = recurring::lock_by_subscription(client, &subscription.id)?;
        if recurring.is_none() && waited_for_creator(client, &subscription.metadata)? {
            recurring = recurring::lock_by_subscription(client, &subscription.id)?;
        }
        let Some(recurring) = recurring else {
            return Ok(Outcome::Ignored);
        };
        if !subscription_may_move(
            recurring.status,
            status,
            recurring.last_event_at,
            envelope.created,
        ) {
            return Ok(Outcome::Applied);
        }
        let (start, end) = subscription.current_period();
        recurring::move_by_event(
            client,
            recurring.id,
            &SubscriptionMove {
                status,
                cancel_at_period_end: subscription.cancel_at_period_end.unwrap_or(false),
                current_period_start: start,
                current_period_end: end,
                canceled_at: subscription.canceled_at,
                cancel_at: subscription.cancel_at,
                trial_end: subscription.trial_end,
                stripe_customer_id: subscription.customer_id(),
                price_id: subscription.price_id(),
                event_created: envelope.created,
            },
        )?;
        Ok(Outcome::Applied)
    })
}

/// Stripe sends invoice.paid and invoice.payment_succeeded for the same invoice: the invoice
/// id is unique on payments, and the subscription row is locked first, so the renewal order
/// is created once per invoice, never once per event.
///
/// Every paid invoice of a subscription is one payment row. A renewal (`subscription_cycle`)
/// is paid by a NEW order, a copy of the subscription's; any other invoice (the first one,
/// a proration) is a payment of the subscription's own order. An invoice that took no money
/// (a trial's first one) records nothing.
pub fn apply_invoice_paid(envelope: &Envelope<'_>, stripe: &dyn StripeReads) -> Result<Outcome> {
    let invoice: Invoice = object(envelope)?;
    let amount_paid = invoice.amount_paid.unwrap_or(0);
    // Marked paid outside Stripe (before API 2025-03-31): no money Stripe received.
    if invoice.paid_out_of_band == Some(true) {
        return Ok(Outcome::Ignored);
    }
    let renewal = invoice.billing_reason.as_deref() == Some("subscription_cycle");
    let Some(subscription_id) = invoice.subscription_id() else {
        return Ok(Outcome::Ignored);
    };
    Spi::connect_mut(|client| {
        let Some(recurring) = recurring::lock_by_subscription(client, subscription_id)? else {
            return Ok(Outcome::Ignored);
        };
        if payments::by_invoice(client, &invoice.id)?.is_some() {
            return Ok(Outcome::Applied);
        }
        // Before API 2025-03-31 the invoice names its PaymentIntent; from then on its
        // InvoicePayments say what paid it, and a payment record is not money Stripe holds.
        let intent = match invoice.payment_intent.as_ref().map(|p| p.id().to_string()) {
            Some(intent) => Some(intent),
            None if amount_paid > 0 => {
                match invoice_payments::paid_with(client, stripe, &invoice.id)? {
                    PaidWith::Stripe(intent) => intent,
                    PaidWith::OutOfBand => return Ok(Outcome::Ignored),
                    PaidWith::Nothing => None,
                }
            }
            None => None,
        };
        let order_id = if renewal {
            orders::copy_for_renewal(client, recurring.order_id)?
        } else if amount_paid > 0 {
            recurring.order_id
        } else {
            return Ok(Outcome::Applied);
        };
        let currency = required(
            invoice.currency.as_deref(),
            "invoice",
            &invoice.id,
            "currency",
        )?;
        payments::insert_paid_invoice(
            client,
            &PaidInvoice {
                order_id,
                recurring_payment_id: recurring.id,
                amount: amount_paid,
                currency: &currency.to_lowercase(),
                stripe_payment_intent_id: intent.as_deref(),
                stripe_invoice_id: &invoice.id,
                livemode: recurring.livemode || envelope.livemode,
                event_created: envelope.created,
            },
        )?;
        let payment_id = payments::by_invoice(client, &invoice.id)?;
        if let Some(payment_id) = payment_id {
            invoice_payments::link(client, payment_id, &invoice.id)?;
        }
        Ok(Outcome::Applied)
    })
}

/// A failed renewal makes an active subscription past due; Stripe's own subscription
/// events say where it goes from there. Only a renewal's (`subscription_cycle`) invoice: a
/// failed proration or update invoice leaves the subscription active at Stripe (the update
/// waits in `pending_update`), so it must not cut access here either.
pub fn apply_invoice_payment_failed(envelope: &Envelope<'_>) -> Result<Outcome> {
    let invoice: Invoice = object(envelope)?;
    if invoice.billing_reason.as_deref() != Some("subscription_cycle") {
        return Ok(Outcome::Applied);
    }
    let Some(subscription_id) = invoice.subscription_id() else {
        return Ok(Outcome::Ignored);
    };
    Spi::connect_mut(|client| {
        let Some(recurring) = recurring::lock_by_subscription(client, subscription_id)? else {
            return Ok(Outcome::Ignored);
        };
        let eligible = matches!(
            recurring.status,
            SubscriptionStatus::Active | SubscriptionStatus::Trialing
        );
        if eligible
            && subscription_may_move(
                recurring.status,
                SubscriptionStatus::PastDue,
                recurring.last_event_at,
                envelope.created,
            )
        {
            recurring::mark_past_due(client, recurring.id, envelope.created)?;
        }
        Ok(Outcome::Applied)
    })
}
