//! `refresh_payment` and `refresh_subscription`: read the object from Stripe and apply its
//! current state through the same forward-only rules as a webhook (webhook::apply_current_state),
//! for a webhook that never arrived.

use super::entry;
use super::stripe_call;
use super::webhooks::StripeApi;
use crate::error::{PaymentError, Result};
use crate::store;
use crate::webhook;
use pgrx::prelude::*;
use serde_json::Value;

const PAYMENT: &str = "\
    SELECT stripe_payment_intent_id, livemode, recurring_payment_id IS NOT NULL, stripe_invoice_id \
      FROM payment.payments WHERE id = $1";
const RECURRING: &str =
    "SELECT stripe_subscription_id, livemode FROM payment.recurring_payments WHERE id = $1";

/// A stored Stripe id, checked as the client checks the ids it puts into URLs.
fn stripe_id<'a>(what: &str, id: &'a str) -> Result<&'a str> {
    crate::stripe::check_id(what, id)?;
    Ok(id)
}

/// The event that a PaymentIntent in this state would have sent; None for the states
/// that move nothing (waiting for a payment method or a confirmation, no failure yet).
fn event_of_intent(intent: &Value) -> Option<&'static str> {
    match intent.get("status").and_then(Value::as_str)? {
        "succeeded" => Some("payment_intent.succeeded"),
        "processing" | "requires_capture" => Some("payment_intent.processing"),
        "requires_action" => Some("payment_intent.requires_action"),
        "canceled" => Some("payment_intent.canceled"),
        "requires_payment_method"
            if intent
                .get("last_payment_error")
                .is_some_and(Value::is_object) =>
        {
            Some("payment_intent.payment_failed")
        }
        _ => None,
    }
}

fn refresh_payment(payment_id: i64) -> Result<i64> {
    type Row = (Option<String>, bool, bool, Option<String>);
    let row = Spi::connect_mut(|client| -> Result<Option<Row>> {
        let mut rows = client.update(PAYMENT, Some(1), &[payment_id.into()])?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        Ok(Some((
            row.get(1)?,
            store::required(row.get(2)?, "payments.livemode")?,
            store::required(row.get(3)?, "payments.recurring_payment_id")?,
            row.get(4)?,
        )))
    })?;
    let (intent, livemode, recurring, invoice) =
        row.ok_or_else(|| PaymentError::NotFound(format!("payment {payment_id} does not exist")))?;
    if recurring {
        // A subscription's payment moves with its invoice; what it needs is its link to
        // the PaymentIntent that paid it.
        if let Some(invoice) = invoice.as_deref() {
            webhook::relink_invoice_payment(
                payment_id,
                stripe_id("invoice", invoice)?,
                &StripeApi,
            )?;
        }
        return Ok(payment_id);
    }
    let intent = intent.ok_or_else(|| PaymentError::PaymentStateForbids {
        message: format!("payment {payment_id} has no PaymentIntent"),
        hint: "Only payments made through Stripe can be refreshed from it.".into(),
    })?;
    let current: Value =
        stripe_call::call(|client, hooks| client.retrieve_payment_intent(&intent, hooks))?;
    if let Some(event_type) = event_of_intent(&current) {
        webhook::apply_current_state(event_type, current, livemode, &StripeApi)?;
    }
    Ok(payment_id)
}

fn refresh_subscription(recurring_payment_id: i64) -> Result<i64> {
    let row = Spi::connect_mut(|client| -> Result<Option<(Option<String>, bool)>> {
        let mut rows = client.update(RECURRING, Some(1), &[recurring_payment_id.into()])?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        Ok(Some((
            row.get(1)?,
            store::required(row.get(2)?, "recurring_payments.livemode")?,
        )))
    })?;
    let (subscription, livemode) = row.ok_or_else(|| {
        PaymentError::NotFound(format!(
            "recurring payment {recurring_payment_id} does not exist"
        ))
    })?;
    let subscription = subscription.ok_or_else(|| PaymentError::PaymentStateForbids {
        message: format!("recurring payment {recurring_payment_id} has no Stripe subscription"),
        hint: "Only subscriptions made through Stripe can be refreshed from it.".into(),
    })?;
    let current: Value =
        stripe_call::call(|client, hooks| client.retrieve_subscription(&subscription, hooks))?;
    webhook::apply_current_state(
        "customer.subscription.updated",
        current,
        livemode,
        &StripeApi,
    )?;
    Ok(recurring_payment_id)
}

/// Internal: `payment.refresh_payment` (sql/api.sql) returns the row.
#[pg_extern(
    schema = "payment",
    name = "refresh_payment_id",
    volatile,
    parallel_unsafe
)]
fn refresh_payment_id(payment_id: Option<i64>) -> i64 {
    entry(|| refresh_payment(payment_id.ok_or(PaymentError::NullArgument("payment_id"))?))
}

/// Internal: `payment.refresh_subscription` (sql/api.sql) returns the row.
#[pg_extern(
    schema = "payment",
    name = "refresh_subscription_id",
    volatile,
    parallel_unsafe
)]
fn refresh_subscription_id(recurring_payment_id: Option<i64>) -> i64 {
    entry(|| {
        refresh_subscription(
            recurring_payment_id.ok_or(PaymentError::NullArgument("recurring_payment_id"))?,
        )
    })
}
