//! `payment.payments`: the statements that several parts of the extension share (the row
//! lock of refunds, the lookups by Stripe id, the refunded amount), as typed functions.
//! Statements only one action needs stay beside that action, declared with their types.

use super::{first_value, plan, required, Statement, BOOL, INT8, TEXT};
use crate::error::Result;
use crate::lifecycle::PaymentStatus;
use pgrx::spi::SpiClient;

/// A payment row, locked FOR UPDATE until the transaction ends.
pub struct LockedPayment {
    /// None for a status this build does not know (a newer schema's).
    pub status: Option<PaymentStatus>,
    pub amount_received: i64,
    pub amount_refunded: i64,
    pub stripe_payment_intent_id: Option<String>,
    pub currency: String,
    pub order_id: i64,
}

/// The lock concurrent refunds of one payment queue on, so their sum never passes the amount
/// received. The amounts come from the locked row itself: after waiting for a concurrent
/// refund, FOR UPDATE returns that row's newest version, while a subquery would still see the
/// snapshot taken before the wait.
static LOCK: Statement = Statement::new(
    "\
    SELECT status, amount_received, amount_refunded, stripe_payment_intent_id, currency, order_id \
      FROM payment.payments WHERE id = $1 FOR UPDATE",
    &[INT8],
);
static SET_REFUNDED: Statement = Statement::new(
    "\
    UPDATE payment.payments SET amount_refunded = $2, status = $3, updated_at = pg_catalog.now() \
     WHERE id = $1",
    &[INT8, INT8, TEXT],
);
static SET_CHARGE_IF_UNKNOWN: Statement = Statement::new(
    "\
    UPDATE payment.payments SET stripe_charge_id = $2, updated_at = pg_catalog.now() \
     WHERE id = $1 AND stripe_charge_id IS NULL",
    &[INT8, TEXT],
);
/// A PaymentIntent that paid several invoices is named by each of their payment rows.
static NEWEST_BY_INTENT: Statement = Statement::new(
    "SELECT id FROM payment.payments WHERE stripe_payment_intent_id = $1 ORDER BY id DESC LIMIT 1",
    &[TEXT],
);
static BY_INVOICE: Statement = Statement::new(
    "SELECT id FROM payment.payments WHERE stripe_invoice_id = $1",
    &[TEXT],
);

pub fn lock(client: &mut SpiClient<'_>, id: i64) -> Result<Option<LockedPayment>> {
    let mut rows = client.update(plan(client, &LOCK)?, Some(1), &[id.into()])?;
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(LockedPayment {
        status: PaymentStatus::parse(&required(row.get::<String>(1)?, "payments.status")?),
        amount_received: required(row.get(2)?, "payments.amount_received")?,
        amount_refunded: required(row.get(3)?, "payments.amount_refunded")?,
        stripe_payment_intent_id: row.get(4)?,
        currency: required(row.get(5)?, "payments.currency")?,
        order_id: required(row.get(6)?, "payments.order_id")?,
    }))
}

pub fn set_refunded(
    client: &mut SpiClient<'_>,
    id: i64,
    amount_refunded: i64,
    status: PaymentStatus,
) -> Result<()> {
    client.update(
        plan(client, &SET_REFUNDED)?,
        None,
        &[id.into(), amount_refunded.into(), status.as_str().into()],
    )?;
    Ok(())
}

/// Remember the charge of a payment that names none yet.
pub fn set_charge_if_unknown(client: &mut SpiClient<'_>, id: i64, charge: &str) -> Result<()> {
    client.update(
        plan(client, &SET_CHARGE_IF_UNKNOWN)?,
        None,
        &[id.into(), charge.into()],
    )?;
    Ok(())
}

/// The newest payment row naming this PaymentIntent: where its refunds are booked.
pub fn newest_by_intent(client: &mut SpiClient<'_>, intent: &str) -> Result<Option<i64>> {
    first_value::<i64>(client.update(
        plan(client, &NEWEST_BY_INTENT)?,
        Some(1),
        &[intent.into()],
    )?)
}

pub fn by_invoice(client: &mut SpiClient<'_>, invoice: &str) -> Result<Option<i64>> {
    first_value::<i64>(client.update(plan(client, &BY_INVOICE)?, Some(1), &[invoice.into()])?)
}

/// A one-time payment found by its PaymentIntent, locked.
pub struct IntentPayment {
    pub id: i64,
    pub status: Option<PaymentStatus>,
    /// The `created` of the event that last moved it (Unix seconds).
    pub last_event_at: Option<i64>,
    pub amount: i64,
    pub currency: String,
    pub amount_refunded: i64,
}

/// What a PaymentIntent event writes to its payment.
pub struct PaymentMove<'a> {
    pub status: PaymentStatus,
    pub amount_received: Option<i64>,
    pub charge_id: Option<&'a str>,
    pub failure_code: Option<&'a str>,
    pub failure_message: Option<&'a str>,
    pub decline_code: Option<&'a str>,
    pub event_created: i64,
}

static LOCK_ONE_TIME_BY_INTENT: Statement = Statement::new(
    "\
    SELECT id, status, EXTRACT(epoch FROM last_event_at)::int8, amount, currency, amount_refunded \
      FROM payment.payments WHERE stripe_payment_intent_id = $1 AND recurring_payment_id IS NULL FOR UPDATE",
    &[TEXT],
);
static MOVE_BY_EVENT: Statement = Statement::new(
    "\
    UPDATE payment.payments SET status = $2, amount_received = COALESCE($3, amount_received), \
           stripe_charge_id = COALESCE($4, stripe_charge_id), failure_code = $5, failure_message = $6, \
           last_event_at = GREATEST(last_event_at, pg_catalog.to_timestamp($7)), updated_at = pg_catalog.now(), \
           decline_code = $8 \
     WHERE id = $1",
    &[INT8, TEXT, INT8, TEXT, TEXT, TEXT, INT8, TEXT],
);
static FLAG_AMOUNT_MISMATCH: Statement = Statement::new(
    "\
    UPDATE payment.payments SET amount_received = $2, failure_code = 'amount_mismatch', \
           failure_message = $3, stripe_charge_id = COALESCE($4, stripe_charge_id), updated_at = pg_catalog.now() \
     WHERE id = $1",
    &[INT8, INT8, TEXT, TEXT],
);

pub fn lock_one_time_by_intent(
    client: &mut SpiClient<'_>,
    intent: &str,
) -> Result<Option<IntentPayment>> {
    let mut rows = client.update(
        plan(client, &LOCK_ONE_TIME_BY_INTENT)?,
        Some(1),
        &[intent.into()],
    )?;
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(IntentPayment {
        id: required(row.get(1)?, "payments.id")?,
        status: PaymentStatus::parse(&required(row.get::<String>(2)?, "payments.status")?),
        last_event_at: row.get(3)?,
        amount: required(row.get(4)?, "payments.amount")?,
        currency: required(row.get(5)?, "payments.currency")?,
        amount_refunded: required(row.get(6)?, "payments.amount_refunded")?,
    }))
}

pub fn move_by_event(client: &mut SpiClient<'_>, id: i64, change: &PaymentMove<'_>) -> Result<()> {
    client.update(
        plan(client, &MOVE_BY_EVENT)?,
        None,
        &[
            id.into(),
            change.status.as_str().into(),
            change.amount_received.into(),
            change.charge_id.into(),
            change.failure_code.into(),
            change.failure_message.into(),
            change.event_created.into(),
            change.decline_code.into(),
        ],
    )?;
    Ok(())
}

/// Stripe says paid, but not what the order costs: keep what it received, and say so.
pub fn flag_amount_mismatch(
    client: &mut SpiClient<'_>,
    id: i64,
    received: i64,
    message: &str,
    charge_id: Option<&str>,
) -> Result<()> {
    client.update(
        plan(client, &FLAG_AMOUNT_MISMATCH)?,
        None,
        &[id.into(), received.into(), message.into(), charge_id.into()],
    )?;
    Ok(())
}

/// A paid invoice of a subscription, as its payment row records it.
pub struct PaidInvoice<'a> {
    pub order_id: i64,
    pub recurring_payment_id: i64,
    pub amount: i64,
    pub currency: &'a str,
    /// None from API 2025-03-31 until its InvoicePayment links it.
    pub stripe_payment_intent_id: Option<&'a str>,
    pub stripe_invoice_id: &'a str,
    pub livemode: bool,
    pub event_created: i64,
}

static INSERT_PAID_INVOICE: Statement = Statement::new(
    "\
    INSERT INTO payment.payments (order_id, recurring_payment_id, amount, currency, status, amount_received, \
                                  stripe_payment_intent_id, stripe_invoice_id, livemode, last_event_at) \
    VALUES ($1, $2, $3, $4, 'succeeded', $3, $5, $6, $7, pg_catalog.to_timestamp($8))",
    &[INT8, INT8, INT8, TEXT, TEXT, TEXT, BOOL, INT8],
);

pub fn insert_paid_invoice(client: &mut SpiClient<'_>, paid: &PaidInvoice<'_>) -> Result<()> {
    client.update(
        plan(client, &INSERT_PAID_INVOICE)?,
        None,
        &[
            paid.order_id.into(),
            paid.recurring_payment_id.into(),
            paid.amount.into(),
            paid.currency.into(),
            paid.stripe_payment_intent_id.into(),
            paid.stripe_invoice_id.into(),
            paid.livemode.into(),
            paid.event_created.into(),
        ],
    )?;
    Ok(())
}

/// A payment as the actions on it (create_payment, cancel_payment) need it.
pub struct PaymentRow {
    pub id: i64,
    pub order_id: i64,
    pub status: String,
    pub amount: i64,
    pub currency: String,
    pub stripe_payment_intent_id: Option<String>,
    pub recurring: bool,
}

/// What create_payment must know of an order's one-time payments (DESIGN.md: one order, one
/// live PaymentIntent).
pub struct OrderPayments {
    /// One of them is paid, or being paid.
    pub paid: bool,
    /// The newest that can still be paid.
    pub open: Option<i64>,
}

/// A one-time payment that create_payment has just made at Stripe.
pub struct PendingPayment<'a> {
    pub order_id: i64,
    pub amount: i64,
    pub currency: &'a str,
    pub stripe_payment_intent_id: &'a str,
    pub client_secret: Option<&'a str>,
    pub livemode: bool,
}

static READ: Statement = Statement::new(
    "\
    SELECT order_id, status, amount, currency, stripe_payment_intent_id, recurring_payment_id \
      FROM payment.payments WHERE id = $1",
    &[INT8],
);
/// A subscription's invoice payments do not count.
static OF_ORDER: Statement = Statement::new(
    "\
    SELECT pg_catalog.bool_or(status IN ('processing', 'succeeded', 'partially_refunded', 'refunded')), \
           (pg_catalog.array_agg(id ORDER BY id DESC) \
              FILTER (WHERE status IN ('pending', 'requires_action', 'failed')))[1] \
      FROM payment.payments WHERE order_id = $1 AND recurring_payment_id IS NULL",
    &[INT8],
);
static ONE_TIME_ATTEMPTS: Statement = Statement::new(
    "\
    SELECT count(*) FROM payment.payments \
     WHERE order_id = $1 AND amount = $2 AND currency = $3 AND recurring_payment_id IS NULL",
    &[INT8, INT8, TEXT],
);
static INSERT_PENDING: Statement = Statement::new(
    "\
    INSERT INTO payment.payments (order_id, amount, currency, status, stripe_payment_intent_id, \
                                  client_secret, livemode) \
    VALUES ($1, $2, $3, 'pending', $4, $5, $6) RETURNING id",
    &[INT8, INT8, TEXT, TEXT, TEXT, BOOL],
);
static MARK_CANCELED: Statement = Statement::new(
    "\
    UPDATE payment.payments SET status = 'canceled', updated_at = pg_catalog.now() \
     WHERE id = $1 AND status <> 'canceled'",
    &[INT8],
);

/// Read with `update`, not `select`: a read-only SPI query keeps the calling statement's
/// snapshot, taken before the order lock was granted, and would miss what the transaction
/// that held the lock just committed.
pub fn read(client: &mut SpiClient<'_>, id: i64) -> Result<Option<PaymentRow>> {
    let mut rows = client.update(plan(client, &READ)?, Some(1), &[id.into()])?;
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(PaymentRow {
        id,
        order_id: required(row.get(1)?, "payments.order_id")?,
        status: required(row.get(2)?, "payments.status")?,
        amount: required(row.get(3)?, "payments.amount")?,
        currency: required(row.get(4)?, "payments.currency")?,
        stripe_payment_intent_id: row.get(5)?,
        recurring: row.get::<i64>(6)?.is_some(),
    }))
}

/// Under the order lock, with a fresh snapshot (see `read`).
pub fn of_order(client: &mut SpiClient<'_>, order_id: i64) -> Result<OrderPayments> {
    let mut rows = client.update(plan(client, &OF_ORDER)?, Some(1), &[order_id.into()])?;
    Ok(match rows.next() {
        Some(row) => OrderPayments {
            paid: row.get::<bool>(1)?.unwrap_or(false),
            open: row.get::<i64>(2)?,
        },
        None => OrderPayments {
            paid: false,
            open: None,
        },
    })
}

/// How many one-time payments of this amount and currency the order has: the attempt
/// number of the next one's Idempotency-Key.
pub fn one_time_attempts(
    client: &mut SpiClient<'_>,
    order_id: i64,
    amount: i64,
    currency: &str,
) -> Result<i64> {
    let n = first_value::<i64>(client.update(
        plan(client, &ONE_TIME_ATTEMPTS)?,
        Some(1),
        &[order_id.into(), amount.into(), currency.into()],
    )?)?;
    Ok(n.unwrap_or(0))
}

pub fn insert_pending(client: &mut SpiClient<'_>, payment: &PendingPayment<'_>) -> Result<i64> {
    let id = first_value::<i64>(client.update(
        plan(client, &INSERT_PENDING)?,
        Some(1),
        &[
            payment.order_id.into(),
            payment.amount.into(),
            payment.currency.into(),
            payment.stripe_payment_intent_id.into(),
            payment.client_secret.into(),
            payment.livemode.into(),
        ],
    )?)?;
    id.ok_or_else(|| crate::error::PaymentError::Internal("the payment row was not created".into()))
}

pub fn mark_canceled(client: &mut SpiClient<'_>, id: i64) -> Result<()> {
    client.update(plan(client, &MARK_CANCELED)?, None, &[id.into()])?;
    Ok(())
}

/// One of the subscription payment rows that share a PaymentIntent (one PaymentIntent that
/// paid several invoices).
pub struct SharingRow {
    pub id: i64,
    pub status: Option<PaymentStatus>,
    pub received: i64,
    pub refunded: i64,
}

static LOCK_SHARING_INTENT: Statement = Statement::new(
    "\
    SELECT p.id, p.status, p.amount_received, p.amount_refunded FROM payment.payments p \
     WHERE p.recurring_payment_id IS NOT NULL \
       AND p.stripe_payment_intent_id = (SELECT s.stripe_payment_intent_id FROM payment.payments s \
                                          WHERE s.id = $1 AND s.recurring_payment_id IS NOT NULL) \
     ORDER BY p.id DESC FOR UPDATE",
    &[INT8],
);
static REFUNDED_OF_INTENT: Statement = Statement::new(
    "\
    SELECT COALESCE(pg_catalog.sum(p.amount_refunded), 0)::int8 FROM payment.payments p \
     WHERE p.id = $1 \
        OR (p.recurring_payment_id IS NOT NULL \
            AND p.stripe_payment_intent_id = (SELECT s.stripe_payment_intent_id FROM payment.payments s \
                                               WHERE s.id = $1 AND s.recurring_payment_id IS NOT NULL))",
    &[INT8],
);

/// The rows sharing this subscription payment's PaymentIntent, newest first, locked in that
/// order (every refund of them takes its locks in this order, so two never deadlock); empty
/// for a one-time payment or one without a PaymentIntent.
pub fn lock_sharing_intent(client: &mut SpiClient<'_>, id: i64) -> Result<Vec<SharingRow>> {
    let mut out = Vec::new();
    for row in client.update(plan(client, &LOCK_SHARING_INTENT)?, None, &[id.into()])? {
        out.push(SharingRow {
            id: required(row.get::<i64>(1)?, "payments.id")?,
            status: PaymentStatus::parse(&required(row.get::<String>(2)?, "payments.status")?),
            received: required(row.get::<i64>(3)?, "payments.amount_received")?,
            refunded: required(row.get::<i64>(4)?, "payments.amount_refunded")?,
        });
    }
    Ok(out)
}

/// What is recorded as refunded of this payment's PaymentIntent: its own `amount_refunded`,
/// or that of all the rows sharing it.
pub fn refunded_of_intent(client: &mut SpiClient<'_>, id: i64) -> Result<i64> {
    let n = first_value::<i64>(client.update(
        plan(client, &REFUNDED_OF_INTENT)?,
        Some(1),
        &[id.into()],
    )?)?;
    Ok(n.unwrap_or(0))
}
