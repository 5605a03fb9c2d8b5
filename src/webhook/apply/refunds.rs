//! The refund callback: refund.* and charge.refunded move refunds, and the payment's
//! `amount_refunded` is always re-derived from its live refunds, so the two events Stripe
//! sends for one refund count its money once.

use super::{object, required};
use crate::error::{PaymentError, Result};
use crate::lifecycle::RefundStatus;
use crate::objects::{Charge, List, Refund};
use crate::store::refunds::{self, RefundFacts};
use crate::store::Statement;
use crate::store::{self, payments, TEXT};
use crate::webhook::event::Envelope;
use crate::webhook::{Outcome, StripeReads};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

static PAYMENT_OF_REFUND: Statement = Statement::new(
    "SELECT payment_id FROM payment.refunds WHERE stripe_refund_id = $1",
    &[TEXT],
);
static PAYMENT_BY_CHARGE: Statement = Statement::new(
    "SELECT payment_id FROM payment.charges WHERE stripe_charge_id = $1",
    &[TEXT],
);

pub fn apply_refund_event(envelope: &Envelope<'_>) -> Result<Outcome> {
    let refund: Refund = object(envelope)?;
    let forced = (envelope.event_type == "refund.failed").then_some(RefundStatus::Failed);
    Spi::connect_mut(|client| {
        let Some(payment_id) = place_refund(client, &refund)? else {
            return Ok(Outcome::Ignored);
        };
        refunds::record(
            client,
            payment_id,
            &facts(&refund)?,
            forced,
            Some(envelope.created),
        )?;
        Ok(Outcome::Applied)
    })
}

/// On API versions before 2022-11-15 the charge embeds its refunds. From 2022-11-15 it does
/// not, and before 2024-10-28 Stripe sends no refund.* event for a card refund either: when
/// the charge shows more refunded than the payment's recorded refunds add up to, its refunds
/// are listed from Stripe (`GET /v1/refunds?charge=`) and recorded, so a dashboard refund is
/// counted even if it is never updated.
pub fn apply_charge_refunded(envelope: &Envelope<'_>, stripe: &dyn StripeReads) -> Result<Outcome> {
    let charge: Charge = object(envelope)?;
    Spi::connect_mut(|client| {
        let mut payment_id = None;
        if let Some(intent) = &charge.payment_intent {
            payment_id = payments::newest_by_intent(client, intent.id())?;
        }
        if payment_id.is_none() {
            payment_id = lookup(client, &PAYMENT_BY_CHARGE, &charge.id)?;
        }
        let Some(payment_id) = payment_id else {
            return Ok(Outcome::Ignored);
        };
        refunds::remember_charge(client, &charge.id, payment_id)?;
        payments::set_charge_if_unknown(client, payment_id, &charge.id)?;
        for refund in charge.refunds.iter().flat_map(|l| l.data.iter()) {
            refunds::record(
                client,
                payment_id,
                &facts(refund)?,
                None,
                Some(envelope.created),
            )?;
        }
        if let Some(refunded) = charge.amount_refunded {
            if refunded > payments::refunded_of_intent(client, payment_id)? {
                for refund in list_refunds(stripe, &charge.id)? {
                    refunds::record(client, payment_id, &facts(&refund)?, None, None)?;
                }
            }
        }
        Ok(Outcome::Applied)
    })
}

/// A charge has at most a few refunds; the bound keeps a misbehaving answer from looping.
const MAX_REFUND_PAGES: usize = 10;

fn list_refunds(stripe: &dyn StripeReads, charge: &str) -> Result<Vec<Refund>> {
    let mut refunds: Vec<Refund> = Vec::new();
    for _ in 0..MAX_REFUND_PAGES {
        let starting_after = refunds.last().map(|r| r.id.clone());
        let page = stripe.refunds_of_charge(charge, starting_after.as_deref())?;
        let page: List<Refund> = serde_json::from_value(page).map_err(|e| {
            PaymentError::Internal(format!("Stripe's list of refunds could not be read: {e}"))
        })?;
        let more = page.has_more && !page.data.is_empty();
        refunds.extend(page.data);
        if !more {
            break;
        }
    }
    Ok(refunds)
}

/// Which payment a refund belongs to: a refund we know, else its PaymentIntent, else its
/// charge. A refund made in the dashboard, or one whose transaction rolled back after Stripe
/// answered, is placed this way and recorded against the right payment.
fn place_refund(client: &mut SpiClient<'_>, refund: &Refund) -> Result<Option<i64>> {
    if let Some(id) = lookup(client, &PAYMENT_OF_REFUND, &refund.id)? {
        return Ok(Some(id));
    }
    if let Some(intent) = refund.payment_intent_id() {
        if let Some(id) = payments::newest_by_intent(client, intent)? {
            return Ok(Some(id));
        }
    }
    match refund.charge_id() {
        Some(charge) => lookup(client, &PAYMENT_BY_CHARGE, charge),
        None => Ok(None),
    }
}

fn lookup(
    client: &mut SpiClient<'_>,
    statement: &'static Statement,
    key: &str,
) -> Result<Option<i64>> {
    let stmt = store::plan(client, statement)?;
    store::first_value::<i64>(client.update(stmt, Some(1), &[key.into()])?)
}

fn facts(refund: &Refund) -> Result<RefundFacts<'_>> {
    Ok(RefundFacts {
        id: &refund.id,
        amount: required(refund.amount, "refund", &refund.id, "amount")?,
        currency: required(refund.currency.as_deref(), "refund", &refund.id, "currency")?,
        status: refund.status.as_deref(),
        reason: refund.reason.as_deref(),
        failure_reason: refund.failure_reason.as_deref(),
    })
}
