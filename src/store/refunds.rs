//! Refund rows, shared by the refund webhook events and `refund_payment`.
//!
//! A payment's `amount_refunded` is always re-derived from its live refunds (not failed or
//! canceled), never added to, so the two events Stripe sends for one refund, or an API answer
//! and its webhook, count the money once.

use super::Statement;
use crate::error::Result;
use crate::lifecycle::{
    paid_status, refund_may_move, refunds_of_shared_intent, PaymentStatus, RefundStatus,
};
use crate::store::payments::SharingRow;
use crate::store::{self, first_value, payments, INT8, TEXT};
use pgrx::spi::SpiClient;

static REMEMBER_CHARGE: Statement = Statement::new("\
    INSERT INTO payment.charges (stripe_charge_id, payment_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    &[TEXT, INT8],
);

/// Remember which payment a charge belongs to, so refunds that name only it can be placed.
pub fn remember_charge(client: &mut SpiClient<'_>, charge_id: &str, payment_id: i64) -> Result<()> {
    let stmt = store::plan(client, &REMEMBER_CHARGE)?;
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

static LOCK_REFUND: Statement = Statement::new(
    "\
    SELECT id, status, EXTRACT(epoch FROM last_event_at)::int8 \
      FROM payment.refunds WHERE stripe_refund_id = $1 FOR UPDATE",
    &[TEXT],
);
static INSERT_REFUND: Statement = Statement::new(
    "\
    INSERT INTO payment.refunds (payment_id, amount, currency, status, reason, stripe_refund_id, \
                                 failure_reason, last_event_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, pg_catalog.to_timestamp($8))",
    &[INT8, INT8, TEXT, TEXT, TEXT, TEXT, TEXT, INT8],
);
static MOVE_REFUND: Statement = Statement::new("\
    UPDATE payment.refunds SET status = $2, failure_reason = COALESCE($3, failure_reason), \
           last_event_at = GREATEST(last_event_at, pg_catalog.to_timestamp($4)), updated_at = pg_catalog.now() \
     WHERE id = $1",
    &[INT8, TEXT, TEXT, INT8],
);
static LIVE_REFUND_TOTAL: Statement = Statement::new(
    "\
    SELECT COALESCE(sum(amount), 0)::int8 FROM payment.refunds \
     WHERE payment_id = $1 AND status NOT IN ('failed', 'canceled')",
    &[INT8],
);
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
    // and the live total below is computed over a stable set. The rows sharing its
    // PaymentIntent come first, newest first, as refund_payment locks them: one lock order.
    let sharing = payments::lock_sharing_intent(client, payment_id)?;
    let payment = payments::lock(client, payment_id)?.ok_or_else(|| {
        crate::error::PaymentError::Internal(format!(
            "payment {payment_id} of a refund does not exist"
        ))
    })?;
    let payment_status = payment.status;
    let amount_received = payment.amount_received;
    let amount_refunded = payment.amount_refunded;

    // Before 2019 refunds were synchronous and carried no status: they had succeeded.
    let target = forced
        .or_else(|| refund.status.and_then(RefundStatus::parse))
        .unwrap_or(RefundStatus::Succeeded);
    let lock_refund = store::plan(client, &LOCK_REFUND)?;
    let mut existing = client.update(lock_refund, Some(1), &[refund.id.into()])?;
    if let Some(row) = existing.next() {
        let Some(created) = created else {
            return refresh_amount_refunded(
                client,
                payment_id,
                &sharing,
                payment_status,
                amount_received,
                amount_refunded,
            );
        };
        let id: i64 = store::required(row.get(1)?, "refunds.id")?;
        let current =
            RefundStatus::parse(&store::required(row.get::<String>(2)?, "refunds.status")?);
        let last: Option<i64> = row.get(3)?;
        if let Some(current) = current {
            if refund_may_move(current, last, target, created) {
                let update = store::plan(client, &MOVE_REFUND)?;
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
        let insert = store::plan(client, &INSERT_REFUND)?;
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
        &sharing,
        payment_status,
        amount_received,
        amount_refunded,
    )
}

/// Each row's live refunds, for the rows sharing one PaymentIntent.
static LIVE_REFUNDS_BY_PAYMENT: Statement = Statement::new(
    "\
    SELECT payment_id, COALESCE(sum(amount), 0)::int8 FROM payment.refunds \
     WHERE payment_id = ANY($1) AND status NOT IN ('failed', 'canceled') GROUP BY payment_id",
    &[pgrx::PgOid::BuiltIn(pgrx::PgBuiltInOids::INT8ARRAYOID)],
);

/// Re-derive the payment's `amount_refunded` and status; for a PaymentIntent that paid
/// several invoices, those of all its rows together (lifecycle's refunds_newest_first).
fn refresh_amount_refunded(
    client: &mut SpiClient<'_>,
    payment_id: i64,
    sharing: &[SharingRow],
    payment_status: Option<PaymentStatus>,
    amount_received: i64,
    amount_refunded: i64,
) -> Result<()> {
    if sharing.len() > 1 {
        return refresh_rows_sharing_intent(client, sharing);
    }
    let total_stmt = store::plan(client, &LIVE_REFUND_TOTAL)?;
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
        payments::set_refunded(client, payment_id, total, new_status)?;
    }
    Ok(())
}

fn refresh_rows_sharing_intent(client: &mut SpiClient<'_>, rows: &[SharingRow]) -> Result<()> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut own: std::collections::HashMap<i64, i64> = std::collections::HashMap::new();
    let stmt = store::plan(client, &LIVE_REFUNDS_BY_PAYMENT)?;
    for row in client.update(stmt, None, &[ids.into()])? {
        own.insert(
            store::required(row.get::<i64>(1)?, "refunds.payment_id")?,
            store::required(row.get::<i64>(2)?, "sum(refunds.amount)")?,
        );
    }
    let rows_refunds: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r.received, own.get(&r.id).copied().unwrap_or(0)))
        .collect();
    for (row, share) in rows.iter().zip(refunds_of_shared_intent(&rows_refunds)) {
        let Some(status) = row.status else { continue };
        let new_status = if status.is_paid() {
            paid_status(row.received, share)
        } else {
            status
        };
        if share != row.refunded || new_status != status {
            payments::set_refunded(client, row.id, share, new_status)?;
        }
    }
    Ok(())
}

/// Attempts are refunds that refund_payment asked for and committed: a refund recorded only
/// by its webhook (the dashboard's, or one whose call rolled back) is not an attempt, so the
/// call that rolled back replays to it instead of refunding a second time. Counted over the
/// PaymentIntent's rows, so two invoices it paid never send the same key.
static ATTEMPTS: Statement = Statement::new(
    "\
    SELECT count(*) FROM payment.refunds r JOIN payment.payments p ON p.id = r.payment_id \
     WHERE p.stripe_payment_intent_id = $1 AND r.amount = $2 AND r.idempotency_key IS NOT NULL",
    &[TEXT, INT8],
);
static MARK_ATTEMPT: Statement = Statement::new(
    "\
    UPDATE payment.refunds SET idempotency_key = $2, updated_at = pg_catalog.now() \
     WHERE stripe_refund_id = $1 AND idempotency_key IS NULL",
    &[TEXT, TEXT],
);
static ID_OF: Statement = Statement::new(
    "SELECT id FROM payment.refunds WHERE stripe_refund_id = $1",
    &[TEXT],
);

/// How many refunds of this amount refund_payment has made of the PaymentIntent.
pub fn attempts(client: &mut SpiClient<'_>, intent: &str, amount: i64) -> Result<i64> {
    let stmt = store::plan(client, &ATTEMPTS)?;
    let n = first_value::<i64>(client.update(stmt, Some(1), &[intent.into(), amount.into()])?)?;
    Ok(n.unwrap_or(0))
}

/// Mark a refund as refund_payment's attempt, made with `key`.
pub fn mark_attempt(client: &mut SpiClient<'_>, stripe_refund_id: &str, key: &str) -> Result<()> {
    let stmt = store::plan(client, &MARK_ATTEMPT)?;
    client.update(stmt, None, &[stripe_refund_id.into(), key.into()])?;
    Ok(())
}

pub fn id_of(client: &mut SpiClient<'_>, stripe_refund_id: &str) -> Result<Option<i64>> {
    let stmt = store::plan(client, &ID_OF)?;
    first_value::<i64>(client.update(stmt, Some(1), &[stripe_refund_id.into()])?)
}
