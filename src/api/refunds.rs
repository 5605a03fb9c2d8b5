//! `refund_payment`: refund what remains of a payment, or part of it.

use super::entry;
use super::stripe_call::{self, idempotency_key, metadata};
use crate::callbacks::{while_writing, Writer};
use crate::error::{PaymentError, Result};
use crate::lifecycle::PaymentStatus;
use crate::metadata as meta;
use crate::store;
use crate::store::payments::{self, LockedPayment};
use crate::store::refunds::{self, RefundFacts};
use pgrx::prelude::*;

/// The payment's row lock is held until the transaction ends (store::payments::lock):
/// concurrent refunds of one payment queue there, so their sum never passes what it received.
fn lock_payment(payment_id: i64) -> Result<LockedPayment> {
    Spi::connect_mut(|client| {
        // The rows sharing its PaymentIntent first, newest first, as the refund webhooks do.
        payments::lock_sharing_intent(client, payment_id)?;
        payments::lock(client, payment_id)
    })?
    .ok_or_else(|| PaymentError::NotFound(format!("payment {payment_id} does not exist")))
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
    let intent = payment.stripe_payment_intent_id.clone().ok_or_else(|| {
        PaymentError::invalid(format!("payment {payment_id} has no PaymentIntent"))
    })?;
    let remaining = payment.amount_received - payment.amount_refunded;
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
                payment.amount_refunded,
                cur = payment.currency
            ),
            "Amounts are in minor units; pass NULL to refund what remains.",
        ));
    }

    // Attempts of this kind: refunds of this payment with this amount that exist. A call whose
    // transaction rolled back left none, so its retry sends the same key and gets the same
    // refund back; a genuinely new refund of the same amount gets a new key.
    let attempt = Spi::connect_mut(|client| refunds::attempts(client, &intent, amount))?;
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
            refunds::mark_attempt(client, &created.id, &key)?;
            refunds::id_of(client, &created.id)?.ok_or_else(|| {
                PaymentError::Internal(format!("the refund row of {} was not created", created.id))
            })
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
