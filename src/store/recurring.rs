//! `payment.recurring_payments`: the row lock every change of a subscription takes (its
//! webhooks and cancel_subscription), as one typed function.

use super::{plan, required, Statement, INT8, TEXT};
use crate::error::{PaymentError, Result};
use crate::lifecycle::SubscriptionStatus;
use pgrx::spi::{SpiClient, SpiTupleTable};

/// A recurring payment row, locked FOR UPDATE until the transaction ends.
pub struct LockedRecurring {
    pub id: i64,
    pub status: SubscriptionStatus,
    pub stripe_subscription_id: Option<String>,
    /// The `created` of the event that last moved it (Unix seconds).
    pub last_event_at: Option<i64>,
    pub order_id: i64,
    pub livemode: bool,
    /// When the row last changed, as text: part of cancel_subscription's key, so a cancel
    /// after the subscription changed is a new request.
    pub version: String,
}

static LOCK_BY_ID: Statement = Statement::new(
    "\
    SELECT id, status, stripe_subscription_id, EXTRACT(epoch FROM last_event_at)::int8, order_id, \
           livemode, EXTRACT(epoch FROM updated_at)::text \
      FROM payment.recurring_payments WHERE id = $1 FOR UPDATE",
    &[INT8],
);
static LOCK_BY_SUBSCRIPTION: Statement = Statement::new(
    "\
    SELECT id, status, stripe_subscription_id, EXTRACT(epoch FROM last_event_at)::int8, order_id, \
           livemode, EXTRACT(epoch FROM updated_at)::text \
      FROM payment.recurring_payments WHERE stripe_subscription_id = $1 FOR UPDATE",
    &[TEXT],
);

pub fn lock(client: &mut SpiClient<'_>, id: i64) -> Result<Option<LockedRecurring>> {
    let rows = client.update(plan(client, &LOCK_BY_ID)?, Some(1), &[id.into()])?;
    locked(rows)
}

pub fn lock_by_subscription(
    client: &mut SpiClient<'_>,
    subscription_id: &str,
) -> Result<Option<LockedRecurring>> {
    let rows = client.update(
        plan(client, &LOCK_BY_SUBSCRIPTION)?,
        Some(1),
        &[subscription_id.into()],
    )?;
    locked(rows)
}

fn locked(mut rows: SpiTupleTable<'_>) -> Result<Option<LockedRecurring>> {
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    let status: String = required(row.get(2)?, "recurring_payments.status")?;
    Ok(Some(LockedRecurring {
        id: required(row.get(1)?, "recurring_payments.id")?,
        // The table's CHECK allows Stripe's statuses only: anything else is a broken invariant.
        status: SubscriptionStatus::parse(&status).ok_or_else(|| {
            PaymentError::Internal(format!("recurring_payments.status holds {status:?}"))
        })?,
        stripe_subscription_id: row.get(3)?,
        last_event_at: row.get(4)?,
        order_id: required(row.get(5)?, "recurring_payments.order_id")?,
        livemode: required(row.get(6)?, "recurring_payments.livemode")?,
        version: required(row.get(7)?, "recurring_payments.updated_at")?,
    }))
}
