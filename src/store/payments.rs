//! `payment.payments`: the statements that several parts of the extension share (the row
//! lock of refunds, the lookups by Stripe id, the refunded amount), as typed functions.
//! Statements only one action needs stay beside that action, declared with their types.

use super::{first_value, plan, required, Statement, INT8, TEXT};
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
static AMOUNT_REFUNDED: Statement = Statement::new(
    "SELECT amount_refunded FROM payment.payments WHERE id = $1",
    &[INT8],
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

pub fn amount_refunded(client: &mut SpiClient<'_>, id: i64) -> Result<i64> {
    let refunded = first_value::<i64>(client.update(
        plan(client, &AMOUNT_REFUNDED)?,
        Some(1),
        &[id.into()],
    )?)?;
    required(refunded, "payments.amount_refunded")
}
