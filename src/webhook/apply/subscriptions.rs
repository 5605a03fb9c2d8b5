//! The recurring callbacks: customer.subscription.* move the recurring payment
//! (management); a paid renewal invoice creates a new order and its payment (deduction).

use super::invoice_payments::{self, PaidWith};
use super::{object, required, waited_for_creator};
use crate::error::{PaymentError, Result};
use crate::lifecycle::{subscription_may_move, SubscriptionStatus};
use crate::objects::{Invoice, Subscription};
use crate::store::Statement;
use crate::store::{self, orders, payments, recurring, BOOL, INT8, TEXT};
use crate::webhook::event::Envelope;
use crate::webhook::{Outcome, StripeReads};
use pgrx::prelude::*;

static MOVE_RECURRING: Statement = Statement::new("\
    UPDATE payment.recurring_payments SET status = $2, cancel_at_period_end = $3, \
           current_period_start = COALESCE(pg_catalog.to_timestamp($4), current_period_start), \
           current_period_end = COALESCE(pg_catalog.to_timestamp($5), current_period_end), \
           canceled_at = pg_catalog.to_timestamp($6), \
           stripe_customer_id = COALESCE($7, stripe_customer_id), price_id = COALESCE($8, price_id), \
           last_event_at = GREATEST(last_event_at, pg_catalog.to_timestamp($9)), updated_at = pg_catalog.now(), \
           cancel_at = pg_catalog.to_timestamp($10), trial_end = pg_catalog.to_timestamp($11) \
     WHERE id = $1",
    &[INT8, TEXT, BOOL, INT8, INT8, INT8, TEXT, TEXT, INT8, INT8, INT8],
);
static MARK_PAST_DUE: Statement = Statement::new("\
    UPDATE payment.recurring_payments SET status = 'past_due', \
           last_event_at = GREATEST(last_event_at, pg_catalog.to_timestamp($2)), updated_at = pg_catalog.now() \
     WHERE id = $1",
    &[INT8, INT8],
);
static INSERT_RENEWAL_PAYMENT: Statement = Statement::new("\
    INSERT INTO payment.payments (order_id, recurring_payment_id, amount, currency, status, amount_received, \
                                  stripe_payment_intent_id, stripe_invoice_id, livemode, last_event_at) \
    VALUES ($1, $2, $3, $4, 'succeeded', $3, $5, $6, $7, pg_catalog.to_timestamp($8))",
    &[INT8, INT8, INT8, TEXT, TEXT, TEXT, BOOL, INT8],
);

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
        let stmt = store::plan(client, &MOVE_RECURRING)?;
        client.update(
            stmt,
            None,
            &[
                recurring.id.into(),
                status.as_str().into(),
                subscription.cancel_at_period_end.unwrap_or(false).into(),
                start.into(),
                end.into(),
                subscription.canceled_at.into(),
                subscription.customer_id().into(),
                subscription.price_id().into(),
                envelope.created.into(),
                subscription.cancel_at.into(),
                subscription.trial_end.into(),
            ],
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
        let insert = store::plan(client, &INSERT_RENEWAL_PAYMENT)?;
        client.update(
            insert,
            None,
            &[
                order_id.into(),
                recurring.id.into(),
                amount_paid.into(),
                required(
                    invoice.currency.as_deref(),
                    "invoice",
                    &invoice.id,
                    "currency",
                )?
                .to_lowercase()
                .into(),
                intent.as_deref().into(),
                invoice.id.as_str().into(),
                (recurring.livemode || envelope.livemode).into(),
                envelope.created.into(),
            ],
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
            let stmt = store::plan(client, &MARK_PAST_DUE)?;
            client.update(stmt, None, &[recurring.id.into(), envelope.created.into()])?;
        }
        Ok(Outcome::Applied)
    })
}
