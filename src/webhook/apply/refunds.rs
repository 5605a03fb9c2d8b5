//! The refund callback: refund.* and charge.refunded move refunds, and the payment's
//! `amount_refunded` is always re-derived from its live refunds, so the two events Stripe
//! sends for one refund count its money once.

use super::object;
use crate::error::Result;
use crate::store::{self, INT8, TEXT};
use crate::webhook::event::{Charge, Envelope, Refund};
use crate::webhook::transitions::{paid_status, refund_may_move, PaymentStatus, RefundStatus};
use crate::webhook::Outcome;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

const PAYMENT_OF_REFUND: &str =
    "SELECT payment_id FROM payment.refunds WHERE stripe_refund_id = $1";
const PAYMENT_BY_INTENT: &str =
    "SELECT id FROM payment.payments WHERE stripe_payment_intent_id = $1";
const PAYMENT_BY_CHARGE: &str = "SELECT id FROM payment.payments WHERE stripe_charge_id = $1";
const LOCK_PAYMENT: &str = "\
    SELECT status, amount_received, amount_refunded FROM payment.payments WHERE id = $1 FOR UPDATE";
const LOCK_REFUND: &str = "\
    SELECT id, status, EXTRACT(epoch FROM last_event_at)::int8 \
      FROM payment.refunds WHERE stripe_refund_id = $1 FOR UPDATE";
const INSERT_REFUND: &str = "\
    INSERT INTO payment.refunds (payment_id, amount, currency, status, reason, stripe_refund_id, \
                                 failure_reason, last_event_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, pg_catalog.to_timestamp($8))";
const MOVE_REFUND: &str = "\
    UPDATE payment.refunds SET status = $2, failure_reason = COALESCE($3, failure_reason), \
           last_event_at = GREATEST(last_event_at, pg_catalog.to_timestamp($4)), updated_at = pg_catalog.now() \
     WHERE id = $1";
const LIVE_REFUND_TOTAL: &str = "\
    SELECT COALESCE(sum(amount), 0)::int8 FROM payment.refunds \
     WHERE payment_id = $1 AND status NOT IN ('failed', 'canceled')";
const SET_REFUNDED: &str = "\
    UPDATE payment.payments SET amount_refunded = $2, status = $3, updated_at = pg_catalog.now() WHERE id = $1";
const SET_CHARGE: &str = "\
    UPDATE payment.payments SET stripe_charge_id = $2 WHERE id = $1 AND stripe_charge_id IS NULL";

pub fn apply_refund_event(envelope: &Envelope<'_>) -> Result<Outcome> {
    let refund: Refund = object(envelope)?;
    let forced = (envelope.event_type == "refund.failed").then_some(RefundStatus::Failed);
    Spi::connect_mut(|client| {
        let Some(payment_id) = place_refund(client, &refund)? else {
            return Ok(Outcome::Ignored);
        };
        apply_refund(client, payment_id, &refund, forced, envelope.created)?;
        Ok(Outcome::Applied)
    })
}

/// On API versions before 2022-11-15 the charge embeds its refunds; on later ones it does
/// not, and the refund.* events carry them.
pub fn apply_charge_refunded(envelope: &Envelope<'_>) -> Result<Outcome> {
    let charge: Charge = object(envelope)?;
    Spi::connect_mut(|client| {
        let mut payment_id = None;
        if let Some(intent) = &charge.payment_intent {
            payment_id = lookup(client, PAYMENT_BY_INTENT, intent.id())?;
        }
        if payment_id.is_none() {
            payment_id = lookup(client, PAYMENT_BY_CHARGE, &charge.id)?;
        }
        let Some(payment_id) = payment_id else {
            return Ok(Outcome::Ignored);
        };
        let set_charge = store::plan(client, SET_CHARGE, &[INT8, TEXT])?;
        client.update(
            set_charge,
            None,
            &[payment_id.into(), charge.id.as_str().into()],
        )?;
        for refund in charge.refunds.iter().flat_map(|l| l.data.iter()) {
            apply_refund(client, payment_id, refund, None, envelope.created)?;
        }
        Ok(Outcome::Applied)
    })
}

/// Which payment a refund belongs to: a refund we know, else its PaymentIntent, else its
/// charge. A refund made in the dashboard, or one whose transaction rolled back after Stripe
/// answered, is placed this way and recorded against the right payment.
fn place_refund(client: &mut SpiClient<'_>, refund: &Refund) -> Result<Option<i64>> {
    if let Some(id) = lookup(client, PAYMENT_OF_REFUND, &refund.id)? {
        return Ok(Some(id));
    }
    if let Some(intent) = refund.payment_intent_id() {
        if let Some(id) = lookup(client, PAYMENT_BY_INTENT, intent)? {
            return Ok(Some(id));
        }
    }
    match refund.charge_id() {
        Some(charge) => lookup(client, PAYMENT_BY_CHARGE, charge),
        None => Ok(None),
    }
}

fn lookup(client: &mut SpiClient<'_>, sql: &'static str, key: &str) -> Result<Option<i64>> {
    let stmt = store::plan(client, sql, &[TEXT])?;
    store::first_value::<i64>(client.update(stmt, Some(1), &[key.into()])?)
}

fn apply_refund(
    client: &mut SpiClient<'_>,
    payment_id: i64,
    refund: &Refund,
    forced: Option<RefundStatus>,
    created: i64,
) -> Result<()> {
    // Lock the payment first, always: concurrent events for its refunds then queue here,
    // and the live total below is computed over a stable set.
    let lock_payment = store::plan(client, LOCK_PAYMENT, &[INT8])?;
    let payment = client
        .update(lock_payment, Some(1), &[payment_id.into()])?
        .first();
    let payment_status = payment
        .get::<String>(1)?
        .and_then(|s| PaymentStatus::parse(&s));
    let amount_received: i64 = payment.get(2)?.unwrap_or_default();
    let amount_refunded: i64 = payment.get(3)?.unwrap_or_default();

    // Before 2019 refunds were synchronous and carried no status: they had succeeded.
    let target = forced
        .or_else(|| refund.status.as_deref().and_then(RefundStatus::parse))
        .unwrap_or(RefundStatus::Succeeded);
    let lock_refund = store::plan(client, LOCK_REFUND, &[TEXT])?;
    let mut existing = client.update(lock_refund, Some(1), &[refund.id.as_str().into()])?;
    if let Some(row) = existing.next() {
        let id: i64 = row.get(1)?.unwrap_or_default();
        let current = row.get::<String>(2)?.and_then(|s| RefundStatus::parse(&s));
        let last: Option<i64> = row.get(3)?;
        if let Some(current) = current {
            if refund_may_move(current, last, target, created) {
                let update = store::plan(client, MOVE_REFUND, &[INT8, TEXT, TEXT, INT8])?;
                client.update(
                    update,
                    None,
                    &[
                        id.into(),
                        target.as_str().into(),
                        refund.failure_reason.as_deref().into(),
                        created.into(),
                    ],
                )?;
            }
        }
    } else {
        let insert = store::plan(
            client,
            INSERT_REFUND,
            &[INT8, INT8, TEXT, TEXT, TEXT, TEXT, TEXT, INT8],
        )?;
        client.update(
            insert,
            None,
            &[
                payment_id.into(),
                refund.amount.into(),
                refund.currency.to_lowercase().into(),
                target.as_str().into(),
                refund.reason.as_deref().into(),
                refund.id.as_str().into(),
                refund.failure_reason.as_deref().into(),
                created.into(),
            ],
        )?;
    }

    let total_stmt = store::plan(client, LIVE_REFUND_TOTAL, &[INT8])?;
    let total: i64 =
        store::first_value::<i64>(client.update(total_stmt, Some(1), &[payment_id.into()])?)?
            .unwrap_or(0);
    let Some(status) = payment_status else {
        return Ok(());
    };
    let new_status = if status.is_paid() {
        paid_status(amount_received, total)
    } else {
        status
    };
    if total != amount_refunded || new_status != status {
        let set = store::plan(client, SET_REFUNDED, &[INT8, INT8, TEXT])?;
        client.update(
            set,
            None,
            &[payment_id.into(), total.into(), new_status.as_str().into()],
        )?;
    }
    Ok(())
}
