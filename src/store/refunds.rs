//! Refund rows, shared by the refund webhook events and `refund_payment`.
//!
//! A payment's `amount_refunded` is always re-derived from its live refunds (not failed or
//! canceled), never added to, so the two events Stripe sends for one refund, or an API answer
//! and its webhook, count the money once.

use crate::error::Result;
use crate::lifecycle::{
    paid_status, refund_may_move, refunds_newest_first, PaymentStatus, RefundStatus,
};
use crate::store::{self, first_value, INT8, TEXT};
use pgrx::spi::SpiClient;

const REMEMBER_CHARGE: &str = "\
    INSERT INTO payment.charges (stripe_charge_id, payment_id) VALUES ($1, $2) ON CONFLICT DO NOTHING";

/// Remember which payment a charge belongs to, so refunds that name only it can be placed.
pub fn remember_charge(client: &mut SpiClient<'_>, charge_id: &str, payment_id: i64) -> Result<()> {
    let stmt = store::plan(client, REMEMBER_CHARGE, &[TEXT, INT8])?;
    client.update(stmt, None, &[charge_id.into(), payment_id.into()])?;
    Ok(())
}

/// What Stripe says of one refund, from an event or an API answer.
pub struct RefundFacts<'a> {
    pub id: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub status: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub failure_reason: Option<&'a str>,
}

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

/// Record what Stripe says of one refund of `payment_id`, then re-derive the payment's
/// `amount_refunded` and status from its live refunds. `created` is the event's time, or
/// None for an API answer (which inserts a refund but never moves one a webhook moved).
pub fn record(
    client: &mut SpiClient<'_>,
    payment_id: i64,
    refund: &RefundFacts<'_>,
    forced: Option<RefundStatus>,
    created: Option<i64>,
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
        .or_else(|| refund.status.and_then(RefundStatus::parse))
        .unwrap_or(RefundStatus::Succeeded);
    let lock_refund = store::plan(client, LOCK_REFUND, &[TEXT])?;
    let mut existing = client.update(lock_refund, Some(1), &[refund.id.into()])?;
    if let Some(row) = existing.next() {
        let Some(created) = created else {
            return refresh_amount_refunded(
                client,
                payment_id,
                payment_status,
                amount_received,
                amount_refunded,
            );
        };
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
                        refund.failure_reason.into(),
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
                refund.reason.into(),
                refund.id.into(),
                refund.failure_reason.into(),
                created.into(),
            ],
        )?;
    }
    refresh_amount_refunded(
        client,
        payment_id,
        payment_status,
        amount_received,
        amount_refunded,
    )
}

/// The subscription payment rows that share this row's PaymentIntent (one PaymentIntent that
/// paid several invoices), newest first, locked in that order; empty for any other payment.
const ROWS_SHARING_INTENT: &str = "\
    SELECT p.id, p.status, p.amount_received, p.amount_refunded FROM payment.payments p \
     WHERE p.recurring_payment_id IS NOT NULL \
       AND p.stripe_payment_intent_id = (SELECT s.stripe_payment_intent_id FROM payment.payments s \
                                          WHERE s.id = $1 AND s.recurring_payment_id IS NOT NULL) \
     ORDER BY p.id DESC FOR UPDATE";
const LIVE_REFUND_TOTAL_OF_ROWS: &str = "\
    SELECT COALESCE(sum(amount), 0)::int8 FROM payment.refunds \
     WHERE payment_id = ANY($1) AND status NOT IN ('failed', 'canceled')";

struct SharingRow {
    id: i64,
    status: Option<PaymentStatus>,
    received: i64,
    refunded: i64,
}

/// Re-derive the payment's `amount_refunded` and status; for a PaymentIntent that paid
/// several invoices, those of all its rows together (lifecycle's refunds_newest_first).
fn refresh_amount_refunded(
    client: &mut SpiClient<'_>,
    payment_id: i64,
    payment_status: Option<PaymentStatus>,
    amount_received: i64,
    amount_refunded: i64,
) -> Result<()> {
    let sharing_stmt = store::plan(client, ROWS_SHARING_INTENT, &[INT8])?;
    let mut sharing = Vec::new();
    for row in client.update(sharing_stmt, None, &[payment_id.into()])? {
        sharing.push(SharingRow {
            id: store::required(row.get::<i64>(1)?, "payments.id")?,
            status: row.get::<String>(2)?.and_then(|s| PaymentStatus::parse(&s)),
            received: store::required(row.get::<i64>(3)?, "payments.amount_received")?,
            refunded: store::required(row.get::<i64>(4)?, "payments.amount_refunded")?,
        });
    }
    if sharing.len() > 1 {
        return refresh_rows_sharing_intent(client, &sharing);
    }
    let total_stmt = store::plan(client, LIVE_REFUND_TOTAL, &[INT8])?;
    let total: i64 =
        first_value::<i64>(client.update(total_stmt, Some(1), &[payment_id.into()])?)?.unwrap_or(0);
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

fn refresh_rows_sharing_intent(client: &mut SpiClient<'_>, rows: &[SharingRow]) -> Result<()> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let total_stmt = store::plan(
        client,
        LIVE_REFUND_TOTAL_OF_ROWS,
        &[pgrx::PgOid::BuiltIn(pgrx::PgBuiltInOids::INT8ARRAYOID)],
    )?;
    let total: i64 =
        first_value::<i64>(client.update(total_stmt, Some(1), &[ids.into()])?)?.unwrap_or(0);
    let received: Vec<i64> = rows.iter().map(|r| r.received).collect();
    for (row, share) in rows.iter().zip(refunds_newest_first(total, &received)) {
        let Some(status) = row.status else { continue };
        let new_status = if status.is_paid() {
            paid_status(row.received, share)
        } else {
            status
        };
        if share != row.refunded || new_status != status {
            let set = store::plan(client, SET_REFUNDED, &[INT8, INT8, TEXT])?;
            client.update(
                set,
                None,
                &[row.id.into(), share.into(), new_status.as_str().into()],
            )?;
        }
    }
    Ok(())
}
