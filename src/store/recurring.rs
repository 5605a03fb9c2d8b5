//! `payment.recurring_payments`: the row lock every change of a subscription takes (its
//! webhooks and cancel_subscription), as one typed function.

use super::{first_value, plan, required, Statement, BOOL, INT8, TEXT};
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

/// The table's CHECK allows Stripe's statuses only: anything else is a broken invariant.
fn stored_status(status: Option<String>) -> Result<SubscriptionStatus> {
    let status = required(status, "recurring_payments.status")?;
    SubscriptionStatus::parse(&status).ok_or_else(|| {
        PaymentError::Internal(format!("recurring_payments.status holds {status:?}"))
    })
}

fn locked(mut rows: SpiTupleTable<'_>) -> Result<Option<LockedRecurring>> {
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(LockedRecurring {
        id: required(row.get(1)?, "recurring_payments.id")?,
        status: stored_status(row.get(2)?)?,
        stripe_subscription_id: row.get(3)?,
        last_event_at: row.get(4)?,
        order_id: required(row.get(5)?, "recurring_payments.order_id")?,
        livemode: required(row.get(6)?, "recurring_payments.livemode")?,
        version: required(row.get(7)?, "recurring_payments.updated_at")?,
    }))
}

/// What a customer.subscription.* event writes to its recurring payment.
pub struct SubscriptionMove<'a> {
    pub status: SubscriptionStatus,
    pub cancel_at_period_end: bool,
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub canceled_at: Option<i64>,
    pub cancel_at: Option<i64>,
    pub trial_end: Option<i64>,
    pub stripe_customer_id: Option<&'a str>,
    pub price_id: Option<&'a str>,
    pub event_created: i64,
}

static MOVE_BY_EVENT: Statement = Statement::new(
    "\
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
static MARK_PAST_DUE: Statement = Statement::new(
    "\
    UPDATE payment.recurring_payments SET status = 'past_due', \
           last_event_at = GREATEST(last_event_at, pg_catalog.to_timestamp($2)), updated_at = pg_catalog.now() \
     WHERE id = $1",
    &[INT8, INT8],
);

pub fn move_by_event(
    client: &mut SpiClient<'_>,
    id: i64,
    change: &SubscriptionMove<'_>,
) -> Result<()> {
    client.update(
        plan(client, &MOVE_BY_EVENT)?,
        None,
        &[
            id.into(),
            change.status.as_str().into(),
            change.cancel_at_period_end.into(),
            change.current_period_start.into(),
            change.current_period_end.into(),
            change.canceled_at.into(),
            change.stripe_customer_id.into(),
            change.price_id.into(),
            change.event_created.into(),
            change.cancel_at.into(),
            change.trial_end.into(),
        ],
    )?;
    Ok(())
}

/// A failed renewal invoice: the subscription is past due, as Stripe will say too.
pub fn mark_past_due(client: &mut SpiClient<'_>, id: i64, event_created: i64) -> Result<()> {
    client.update(
        plan(client, &MARK_PAST_DUE)?,
        None,
        &[id.into(), event_created.into()],
    )?;
    Ok(())
}

/// The order's subscription that is not over, if any (DESIGN.md: one live per order).
pub struct LiveRecurring {
    pub id: i64,
    pub status: SubscriptionStatus,
    pub price_id: Option<String>,
}

/// A subscription start_subscription has just made at Stripe.
pub struct NewRecurring<'a> {
    pub order_id: i64,
    pub price_id: &'a str,
    pub stripe_customer_id: &'a str,
    pub stripe_subscription_id: &'a str,
    pub status: SubscriptionStatus,
    pub cancel_at_period_end: bool,
    pub current_period_start: Option<i64>,
    pub current_period_end: Option<i64>,
    pub client_secret: Option<&'a str>,
    pub livemode: bool,
}

static LIVE_OF_ORDER: Statement = Statement::new(
    "\
    SELECT id, status, price_id FROM payment.recurring_payments \
     WHERE order_id = $1 AND status NOT IN ('canceled', 'incomplete_expired') \
     ORDER BY id DESC LIMIT 1",
    &[INT8],
);
static ATTEMPTS: Statement = Statement::new(
    "SELECT count(*) FROM payment.recurring_payments WHERE order_id = $1 AND price_id = $2",
    &[INT8, TEXT],
);
static INSERT: Statement = Statement::new(
    "\
    INSERT INTO payment.recurring_payments (order_id, price_id, stripe_customer_id, stripe_subscription_id, \
                                            status, cancel_at_period_end, current_period_start, \
                                            current_period_end, client_secret, livemode) \
    VALUES ($1, $2, $3, $4, $5, $6, pg_catalog.to_timestamp($7), pg_catalog.to_timestamp($8), $9, $10) \
    RETURNING id",
    &[INT8, TEXT, TEXT, TEXT, TEXT, BOOL, INT8, INT8, TEXT, BOOL],
);
static SET_CANCELED: Statement = Statement::new(
    "\
    UPDATE payment.recurring_payments SET status = $2, cancel_at_period_end = $3, \
           canceled_at = COALESCE(pg_catalog.to_timestamp($4), canceled_at), updated_at = pg_catalog.now() \
     WHERE id = $1",
    &[INT8, TEXT, BOOL, INT8],
);

/// Under the order lock; `update`, not `select`, for a snapshot taken after it was granted.
pub fn live_of_order(client: &mut SpiClient<'_>, order_id: i64) -> Result<Option<LiveRecurring>> {
    let mut rows = client.update(plan(client, &LIVE_OF_ORDER)?, Some(1), &[order_id.into()])?;
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(LiveRecurring {
        id: required(row.get(1)?, "recurring_payments.id")?,
        status: stored_status(row.get(2)?)?,
        price_id: row.get(3)?,
    }))
}

/// How many subscriptions of this price the order has had: the attempt number of the next
/// one's Idempotency-Key.
pub fn attempts(client: &mut SpiClient<'_>, order_id: i64, price_id: &str) -> Result<i64> {
    let n = first_value::<i64>(client.update(
        plan(client, &ATTEMPTS)?,
        Some(1),
        &[order_id.into(), price_id.into()],
    )?)?;
    Ok(n.unwrap_or(0))
}

pub fn insert(client: &mut SpiClient<'_>, new: &NewRecurring<'_>) -> Result<i64> {
    let id = first_value::<i64>(client.update(
        plan(client, &INSERT)?,
        Some(1),
        &[
            new.order_id.into(),
            new.price_id.into(),
            new.stripe_customer_id.into(),
            new.stripe_subscription_id.into(),
            new.status.as_str().into(),
            new.cancel_at_period_end.into(),
            new.current_period_start.into(),
            new.current_period_end.into(),
            new.client_secret.into(),
            new.livemode.into(),
        ],
    )?)?;
    id.ok_or_else(|| PaymentError::Internal("the recurring payment row was not created".into()))
}

/// What Stripe answered to cancel_subscription.
pub fn set_canceled(
    client: &mut SpiClient<'_>,
    id: i64,
    status: SubscriptionStatus,
    cancel_at_period_end: bool,
    canceled_at: Option<i64>,
) -> Result<()> {
    client.update(
        plan(client, &SET_CANCELED)?,
        None,
        &[
            id.into(),
            status.as_str().into(),
            cancel_at_period_end.into(),
            canceled_at.into(),
        ],
    )?;
    Ok(())
}
