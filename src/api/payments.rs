//! `create_payment` and the currency helpers.

use super::entry;
use super::stripe_call::{self, idempotency_key, metadata};
use crate::callbacks::{while_writing, Writer};
use crate::error::{OrRaise, PaymentError, Result};
use crate::metadata as meta;
use crate::money;
use crate::store::Statement;
use crate::store::{self, first_value, orders, BOOL, INT8, TEXT};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use pgrx::AnyNumeric;
use rust_decimal::Decimal;
use std::str::FromStr;

static EARLIER_ATTEMPTS: Statement = Statement::new(
    "\
    SELECT count(*) FROM payment.payments \
     WHERE order_id = $1 AND amount = $2 AND currency = $3 AND recurring_payment_id IS NULL",
    &[INT8, INT8, TEXT],
);
static INSERT_PAYMENT: Statement = Statement::new(
    "\
    INSERT INTO payment.payments (order_id, amount, currency, status, stripe_payment_intent_id, \
                                  client_secret, livemode) \
    VALUES ($1, $2, $3, 'pending', $4, $5, $6) RETURNING id",
    &[INT8, INT8, TEXT, TEXT, TEXT, BOOL],
);

/// The order's one-time payments that decide what `create_payment` does (DESIGN.md: one
/// order, one live PaymentIntent): is any of them paid or being paid, and the newest that
/// can still be paid. A subscription's invoice payments do not count.
static ORDER_PAYMENTS: Statement = Statement::new("\
    SELECT pg_catalog.bool_or(status IN ('processing', 'succeeded', 'partially_refunded', 'refunded')), \
           (pg_catalog.array_agg(id ORDER BY id DESC) \
              FILTER (WHERE status IN ('pending', 'requires_action', 'failed')))[1] \
      FROM payment.payments WHERE order_id = $1 AND recurring_payment_id IS NULL",
    &[INT8],
);
static PAYMENT: Statement = Statement::new(
    "\
    SELECT order_id, status, amount, currency, stripe_payment_intent_id, recurring_payment_id \
      FROM payment.payments WHERE id = $1",
    &[INT8],
);
static MARK_CANCELED: Statement = Statement::new(
    "\
    UPDATE payment.payments SET status = 'canceled', updated_at = pg_catalog.now() \
     WHERE id = $1 AND status <> 'canceled'",
    &[INT8],
);

/// A payment as the actions on it need it.
struct PaymentRow {
    id: i64,
    order_id: i64,
    status: String,
    amount: i64,
    currency: String,
    payment_intent: Option<String>,
    recurring: bool,
}

/// Read with `update`, not `select`: a read-only SPI query keeps the calling statement's
/// snapshot, taken before the order lock was granted, and would miss what the transaction
/// that held the lock just committed.
fn payment_row(client: &mut SpiClient<'_>, id: i64) -> Result<Option<PaymentRow>> {
    let stmt = store::plan(client, &PAYMENT)?;
    let mut rows = client.update(stmt, Some(1), &[id.into()])?;
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(PaymentRow {
        id,
        order_id: store::required(row.get(1)?, "payments.order_id")?,
        status: store::required(row.get(2)?, "payments.status")?,
        amount: store::required(row.get(3)?, "payments.amount")?,
        currency: store::required(row.get(4)?, "payments.currency")?,
        payment_intent: row.get(5)?,
        recurring: row.get::<i64>(6)?.is_some(),
    }))
}

/// Cancel the PaymentIntent of an unpaid payment at Stripe, then the row (its callback and
/// NOTIFY follow). The key is the PaymentIntent's: canceling twice is one cancellation.
fn cancel_at_stripe(payment: &PaymentRow) -> Result<()> {
    if let Some(intent) = payment.payment_intent.as_deref() {
        let installation = store::installation_id()?;
        let key = idempotency_key(&installation, "cancel", &[intent], 0);
        stripe_call::call(|client, hooks| client.cancel_payment_intent(intent, &key, hooks))?;
    }
    while_writing(Writer::default(), || {
        Spi::connect_mut(|client| -> Result<()> {
            let stmt = store::plan(client, &MARK_CANCELED)?;
            client.update(stmt, None, &[payment.id.into()])?;
            Ok(())
        })
    })
}

fn create(order_id: i64, currency: &str, amount: i64) -> Result<i64> {
    if amount <= 0 {
        return Err(PaymentError::invalid(format!(
            "amount must be a positive number of minor units, not {amount}"
        )));
    }
    let currency = money::normalize_currency(currency)?;
    let installation = store::installation_id()?;
    let keys = stripe_call::keys()?;
    Spi::connect_mut(|client| -> Result<()> {
        let link = orders::require_link(client)?;
        let order = orders::lock_order(client, &link, order_id)?;
        if let Some(order_currency) = &order.currency {
            if !order_currency.trim().eq_ignore_ascii_case(&currency) {
                return Err(PaymentError::invalid(format!(
                    "order {order_id} is priced in {}, not {currency}",
                    order_currency.trim().to_lowercase()
                )));
            }
        }
        let price = Decimal::from_str(&order.price).map_err(|_| {
            PaymentError::invalid(format!("order {order_id} has a price that is not a number"))
        })?;
        money::check_charge_matches_order(price, &currency, amount)?;
        Ok(())
    })?;

    // One order, one live PaymentIntent: a double click or a reloaded checkout page gets
    // the open payment back; a paid order is refused before Stripe is called.
    // Under the order lock, with a fresh snapshot (see payment_row).
    let open = Spi::connect_mut(|client| -> Result<Option<PaymentRow>> {
        let stmt = store::plan(client, &ORDER_PAYMENTS)?;
        let mut rows = client.update(stmt, Some(1), &[order_id.into()])?;
        let (paid, open) = match rows.next() {
            Some(row) => (row.get::<bool>(1)?.unwrap_or(false), row.get::<i64>(2)?),
            None => (false, None),
        };
        if paid {
            return Err(PaymentError::PaymentStateForbids {
                message: format!("order {order_id} is already paid, or its payment is processing"),
                hint:
                    "A paid order is not charged again: refund its payment, or create a new order."
                        .into(),
            });
        }
        match open {
            Some(id) => payment_row(client, id),
            None => Ok(None),
        }
    })?;
    if let Some(open) = open {
        if open.amount == amount && open.currency == currency {
            return Ok(open.id);
        }
        // The amount or currency changed: the old PaymentIntent must not stay payable.
        cancel_at_stripe(&open)?;
    }

    let attempt = Spi::connect_mut(|client| -> Result<i64> {
        let stmt = store::plan(client, &EARLIER_ATTEMPTS)?;
        let attempt = first_value::<i64>(client.update(
            stmt,
            Some(1),
            &[order_id.into(), amount.into(), currency.as_str().into()],
        )?)?
        .unwrap_or(0);
        Ok(attempt)
    })?;

    // The key says what the call means: a rolled-back transaction that runs again sends the
    // same key and gets the same PaymentIntent back. The metadata must then be identical too
    // (Stripe refuses a replayed key with other parameters), so it names the order and the
    // attempt, not the payment row, whose id is not reused after a rollback.
    let order_text = order_id.to_string();
    let amount_text = amount.to_string();
    let attempt_text = attempt.to_string();
    let key = idempotency_key(
        &installation,
        "payment",
        &[&order_text, &amount_text, &currency],
        attempt,
    );
    let meta = metadata(
        &installation,
        &[
            (meta::ORDER_ID, &order_text),
            (meta::PAYMENT_ATTEMPT, &attempt_text),
        ],
    );
    let intent = stripe_call::call(|client, hooks| {
        client.create_payment_intent(amount, &currency, &meta, &key, hooks)
    })?;

    while_writing(Writer::default(), || {
        Spi::connect_mut(|client| -> Result<i64> {
            let stmt = store::plan(client, &INSERT_PAYMENT)?;
            first_value::<i64>(client.update(
                stmt,
                Some(1),
                &[
                    order_id.into(),
                    amount.into(),
                    currency.as_str().into(),
                    intent.id.as_str().into(),
                    intent.client_secret.as_deref().into(),
                    keys.livemode.into(),
                ],
            )?)?
            .ok_or_else(|| PaymentError::Internal("the payment row was not created".into()))
        })
    })
}

fn cancel(payment_id: i64) -> Result<i64> {
    let payment = Spi::connect_mut(|client| payment_row(client, payment_id))?
        .ok_or_else(|| PaymentError::NotFound(format!("payment {payment_id} does not exist")))?;
    // Serialised with create_payment on the same order.
    Spi::connect_mut(|client| orders::take_order_lock(client, payment.order_id))?;
    let payment = Spi::connect_mut(|client| payment_row(client, payment_id))?
        .ok_or_else(|| PaymentError::NotFound(format!("payment {payment_id} does not exist")))?;
    if payment.recurring {
        return Err(PaymentError::PaymentStateForbids {
            message: format!("payment {payment_id} is a subscription's invoice payment"),
            hint: "Cancel the subscription with payment.cancel_subscription() instead.".into(),
        });
    }
    match payment.status.as_str() {
        "canceled" => Ok(payment_id),
        "pending" | "requires_action" | "failed" => {
            cancel_at_stripe(&payment)?;
            Ok(payment_id)
        }
        other => Err(PaymentError::PaymentStateForbids {
            message: format!("payment {payment_id} is {other} and cannot be canceled"),
            hint: "Only a payment that is not paid yet can be canceled; refund a paid one.".into(),
        }),
    }
}

/// Internal: cancel an unpaid payment; `payment.cancel_payment` (sql/api.sql) returns the row.
#[pg_extern(
    schema = "payment",
    name = "cancel_payment_id",
    volatile,
    parallel_unsafe
)]
fn cancel_payment_id(payment_id: Option<i64>) -> i64 {
    entry(|| cancel(payment_id.ok_or(PaymentError::NullArgument("payment_id"))?))
}

/// Internal: create the payment and its PaymentIntent; `payment.create_payment` (sql/api.sql)
/// returns the row.
#[pg_extern(
    schema = "payment",
    name = "create_payment_id",
    volatile,
    parallel_unsafe
)]
fn create_payment_id(order_id: Option<i64>, currency: Option<&str>, amount: Option<i64>) -> i64 {
    entry(|| {
        create(
            order_id.ok_or(PaymentError::NullArgument("order_id"))?,
            currency.ok_or(PaymentError::NullArgument("currency"))?,
            amount.ok_or(PaymentError::NullArgument("amount"))?,
        )
    })
}

fn decimal(value: &AnyNumeric) -> Result<Decimal> {
    Decimal::from_str(&value.to_string())
        .map_err(|_| PaymentError::invalid(format!("{value} is out of range for an amount")))
}

/// `99.99, 'usd'` → 9999; `500, 'jpy'` → 500; refuses what Stripe cannot charge exactly.
#[pg_extern(schema = "payment", immutable, parallel_safe, strict)]
fn to_minor_units(amount: AnyNumeric, currency: &str) -> i64 {
    let run = || -> Result<i64> { Ok(money::to_minor_units(decimal(&amount)?, currency)?) };
    run().or_raise()
}

/// `9999, 'usd'` → 99.99.
#[pg_extern(schema = "payment", immutable, parallel_safe, strict)]
fn from_minor_units(amount: i64, currency: &str) -> AnyNumeric {
    let run = || -> Result<AnyNumeric> {
        let value = money::from_minor_units(amount, currency)?;
        AnyNumeric::from_str(&value.to_string()).map_err(|e| PaymentError::invalid(e.to_string()))
    };
    run().or_raise()
}
