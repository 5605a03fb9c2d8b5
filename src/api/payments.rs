//! `create_payment` and the currency helpers.

use super::entry;
use super::stripe_call::{self, idempotency_key, metadata};
use crate::callbacks::{while_writing, Writer};
use crate::error::{OrRaise, PaymentError, Result};
use crate::money;
use crate::store::{self, first_value, orders, BOOL, INT8, TEXT};
use pgrx::prelude::*;
use pgrx::AnyNumeric;
use rust_decimal::Decimal;
use std::str::FromStr;

const EARLIER_ATTEMPTS: &str = "\
    SELECT count(*) FROM payment.payments \
     WHERE order_id = $1 AND amount = $2 AND currency = $3 AND recurring_payment_id IS NULL";
const INSERT_PAYMENT: &str = "\
    INSERT INTO payment.payments (order_id, amount, currency, status, stripe_payment_intent_id, \
                                  client_secret, livemode) \
    VALUES ($1, $2, $3, 'pending', $4, $5, $6) RETURNING id";

fn create(order_id: i64, currency: &str, amount: i64) -> Result<i64> {
    if amount <= 0 {
        return Err(PaymentError::invalid(format!(
            "amount must be a positive number of minor units, not {amount}"
        )));
    }
    let currency = money::normalize_currency(currency)?;
    let installation = store::installation_id()?;
    let keys = stripe_call::keys()?;
    let (attempt, _order) = Spi::connect_mut(|client| -> Result<(i64, orders::Order)> {
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
        let stmt = store::plan(client, EARLIER_ATTEMPTS, &[INT8, INT8, TEXT])?;
        let attempt = first_value::<i64>(client.update(
            stmt,
            Some(1),
            &[order_id.into(), amount.into(), currency.as_str().into()],
        )?)?
        .unwrap_or(0);
        Ok((attempt, order))
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
            ("pg_payment_order_id", &order_text),
            ("pg_payment_attempt", &attempt_text),
        ],
    );
    let intent = stripe_call::call(|client, hooks| {
        client.create_payment_intent(amount, &currency, &meta, &key, hooks)
    })?;

    while_writing(Writer::default(), || {
        Spi::connect_mut(|client| -> Result<i64> {
            let stmt = store::plan(
                client,
                INSERT_PAYMENT,
                &[INT8, INT8, TEXT, TEXT, TEXT, BOOL],
            )?;
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
            .ok_or_else(|| PaymentError::invalid("the payment row was not created"))
        })
    })
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
