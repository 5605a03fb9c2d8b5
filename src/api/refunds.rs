//! `refund_payment`: refund what remains of a payment, or part of it.

use super::entry;
use super::stripe_call::{self, idempotency_key, metadata};
use crate::callbacks::{while_writing, Writer};
use crate::error::{PaymentError, Result};
use crate::lifecycle::PaymentStatus;
use crate::metadata as meta;
use crate::store::refunds::{self, RefundFacts};
use crate::store::{self, first_value, INT8, TEXT};
use pgrx::prelude::*;

/// The row lock on the payment is held until the transaction ends: concurrent refunds of one
/// payment queue here, so their sum can never pass the amount received.
/// `amount_refunded` comes from the locked row itself: after waiting for a concurrent refund,
/// FOR UPDATE returns that row's newest version, while a subquery would still see the
/// snapshot taken before the wait.
const LOCK_PAYMENT: &str = "\
    SELECT status, amount_received, stripe_payment_intent_id, currency, order_id, amount_refunded \
      FROM payment.payments WHERE id = $1 FOR UPDATE";
/// Attempts are refunds that refund_payment asked for and committed: a refund recorded only
/// by its webhook (the dashboard's, or one whose call rolled back) is not an attempt, so the
/// call that rolled back replays to it instead of refunding a second time.
const EARLIER_ATTEMPTS: &str = "\
    SELECT count(*) FROM payment.refunds \
     WHERE payment_id = $1 AND amount = $2 AND idempotency_key IS NOT NULL";
const MARK_ATTEMPT: &str = "\
    UPDATE payment.refunds SET idempotency_key = $2 WHERE stripe_refund_id = $1 AND idempotency_key IS NULL";
const REFUND_ID: &str = "SELECT id FROM payment.refunds WHERE stripe_refund_id = $1";

struct Payment {
    status: Option<PaymentStatus>,
    amount_received: i64,
    intent: Option<String>,
    currency: String,
    order_id: i64,
    refunded: i64,
}

fn lock_payment(payment_id: i64) -> Result<Payment> {
    Spi::connect_mut(|client| -> Result<Payment> {
        let stmt = store::plan(client, LOCK_PAYMENT, &[INT8])?;
        let mut rows = client.update(stmt, Some(1), &[payment_id.into()])?;
        let row = rows.next().ok_or_else(|| {
            PaymentError::NotFound(format!("payment {payment_id} does not exist"))
        })?;
        Ok(Payment {
            status: row.get::<String>(1)?.and_then(|s| PaymentStatus::parse(&s)),
            amount_received: row.get(2)?.unwrap_or(0),
            intent: row.get(3)?,
            currency: row.get(4)?.unwrap_or_default(),
            order_id: row.get(5)?.unwrap_or(0),
            refunded: row.get(6)?.unwrap_or(0),
        })
    })
}

fn refund(payment_id: i64, requested: Option<i64>) -> Result<i64> {
    let installation = store::installation_id()?;
    let payment = lock_payment(payment_id)?;
    let status = payment
        .status
        .map(PaymentStatus::as_str)
        .unwrap_or("unknown");
    if !matches!(
        payment.status,
        Some(PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded)
    ) {
        return Err(PaymentError::PaymentStateForbids {
            message: format!(
                "payment {payment_id} is {status}: only a succeeded payment can be refunded"
            ),
            hint: "Wait for payment_intent.succeeded to be applied, or cancel an unpaid payment \
                   with payment.cancel_payment() instead."
                .into(),
        });
    }
    let intent = payment.intent.clone().ok_or_else(|| {
        PaymentError::invalid(format!("payment {payment_id} has no PaymentIntent"))
    })?;
    let remaining = payment.amount_received - payment.refunded;
    let amount = requested.unwrap_or(remaining);
    if let Some(requested) = requested {
        crate::money::check_on_step(requested, &payment.currency)?;
    }
    if amount <= 0 || amount > remaining {
        return Err(PaymentError::invalid_with_hint(
            format!(
                "cannot refund {amount} {cur} of payment {payment_id}: {remaining} {cur} remains \
                 ({} received, {} already refunded)",
                payment.amount_received,
                payment.refunded,
                cur = payment.currency
            ),
            "Amounts are in minor units; pass NULL to refund what remains.",
        ));
    }

    // Attempts of this kind: refunds of this payment with this amount that exist. A call whose
    // transaction rolled back left none, so its retry sends the same key and gets the same
    // refund back; a genuinely new refund of the same amount gets a new key.
    let attempt = Spi::connect_mut(|client| -> Result<i64> {
        let stmt = store::plan(client, EARLIER_ATTEMPTS, &[INT8, INT8])?;
        Ok(first_value::<i64>(client.update(
            stmt,
            Some(1),
            &[payment_id.into(), amount.into()],
        )?)?
        .unwrap_or(0))
    })?;
    let amount_text = amount.to_string();
    let payment_text = payment_id.to_string();
    let order_text = payment.order_id.to_string();
    let attempt_text = attempt.to_string();
    let key = idempotency_key(
        &installation,
        "refund",
        &[&intent, &amount_text, &payment.currency],
        attempt,
    );
    let meta = metadata(
        &installation,
        &[
            (meta::PAYMENT_ID, &payment_text),
            (meta::ORDER_ID, &order_text),
            // Which attempt this is: what tells a refund an earlier key made (after an error
            // Stripe saved) from a new refund of the same amount.
            (meta::REFUND_ATTEMPT, &attempt_text),
        ],
    );
    let created = stripe_call::call(|client, hooks| {
        client.create_refund(&intent, Some(amount), &meta, &key, hooks)
    })?;

    let currency = created.currency.clone().unwrap_or(payment.currency.clone());
    let facts = RefundFacts {
        id: &created.id,
        amount: created.amount.unwrap_or(amount),
        currency: &currency,
        status: created.status.as_deref(),
        reason: created.reason.as_deref(),
        failure_reason: created.failure_reason.as_deref(),
    };
    while_writing(Writer::default(), || {
        Spi::connect_mut(|client| -> Result<i64> {
            refunds::record(client, payment_id, &facts, None, None)?;
            let mark = store::plan(client, MARK_ATTEMPT, &[TEXT, TEXT])?;
            client.update(
                mark,
                None,
                &[created.id.as_str().into(), key.as_str().into()],
            )?;
            let stmt = store::plan(client, REFUND_ID, &[TEXT])?;
            first_value::<i64>(client.update(stmt, Some(1), &[created.id.as_str().into()])?)?
                .ok_or_else(|| PaymentError::invalid("the refund row was not created"))
        })
    })
}

/// Internal: refund and return the refund's id; `payment.refund_payment` returns the row.
#[pg_extern(
    schema = "payment",
    name = "refund_payment_id",
    volatile,
    parallel_unsafe
)]
fn refund_payment_id(payment_id: Option<i64>, refund_amount: Option<i64>) -> i64 {
    entry(|| {
        refund(
            payment_id.ok_or(PaymentError::NullArgument("payment_id"))?,
            refund_amount,
        )
    })
}
