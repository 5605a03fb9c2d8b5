//! `create_payment` and the currency helpers.

use super::entry;
use super::stripe_call::{self, idempotency_key, metadata};
use crate::callbacks::{while_writing, Writer};
use crate::error::{OrRaise, PaymentError, Result};
use crate::metadata as meta;
use crate::money;
use crate::store::payments::{self, OrderPayments, PaymentRow, PendingPayment};
use crate::store::{self, orders};
use pgrx::prelude::*;
use pgrx::AnyNumeric;
use rust_decimal::Decimal;
use std::str::FromStr;

/// Cancel the PaymentIntent of an unpaid payment at Stripe, then the row (its callback and
/// NOTIFY follow). The key is the PaymentIntent's: canceling twice is one cancellation.
fn cancel_at_stripe(payment: &PaymentRow) -> Result<()> {
    if let Some(intent) = payment.stripe_payment_intent_id.as_deref() {
        let installation = store::installation_id()?;
        let key = idempotency_key(&installation, "cancel", &[intent], 0);
        stripe_call::call(|client, hooks| client.cancel_payment_intent(intent, &key, hooks))?;
    }
    while_writing(Writer::default(), || {
        Spi::connect_mut(|client| -> Result<()> { payments::mark_canceled(client, payment.id) })
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
    // Under the order lock, with a fresh snapshot (see store::payments::read).
    let open = Spi::connect_mut(|client| -> Result<Option<PaymentRow>> {
        let OrderPayments { paid, open } = payments::of_order(client, order_id)?;
        if paid {
            return Err(PaymentError::PaymentStateForbids {
                message: format!("order {order_id} is already paid, or its payment is processing"),
                hint:
                    "A paid order is not charged again: refund its payment, or create a new order."
                        .into(),
            });
        }
        match open {
            Some(id) => payments::read(client, id),
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

    let attempt = Spi::connect_mut(|client| {
        payments::one_time_attempts(client, order_id, amount, &currency)
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
            payments::insert_pending(
                client,
                &PendingPayment {
                    order_id,
                    amount,
                    currency: &currency,
                    stripe_payment_intent_id: &intent.id,
                    client_secret: intent.client_secret.as_deref(),
                    livemode: keys.livemode,
                },
            )
        })
    })
}

fn cancel(payment_id: i64) -> Result<i64> {
    let payment = Spi::connect_mut(|client| payments::read(client, payment_id))?
        .ok_or_else(|| PaymentError::NotFound(format!("payment {payment_id} does not exist")))?;
    // Serialised with create_payment on the same order.
    Spi::connect_mut(|client| orders::take_order_lock(client, payment.order_id))?;
    let payment = Spi::connect_mut(|client| payments::read(client, payment_id))?
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
