//! The payment callback: payment_intent.* events move a payment forward.

use super::{is_foreign, object, required, waited_for_creator};
use crate::error::Result;
use crate::lifecycle::{paid_status, payment_may_move, PaymentStatus};
use crate::objects::PaymentIntent;
use crate::store::payments::{self, IntentPayment, PaymentMove};
use crate::store::refunds;
use crate::webhook::event::Envelope;
use crate::webhook::Outcome;
use pgrx::prelude::*;

pub fn apply_payment_intent(envelope: &Envelope<'_>, target: PaymentStatus) -> Result<Outcome> {
    let intent: PaymentIntent = object(envelope)?;
    if is_foreign(&intent.metadata)? {
        return Ok(Outcome::Ignored);
    }
    Spi::connect_mut(|client| -> Result<Outcome> {
        let mut locked = payments::lock_one_time_by_intent(client, &intent.id)?;
        if locked.is_none() && waited_for_creator(client, &intent.metadata)? {
            locked = payments::lock_one_time_by_intent(client, &intent.id)?;
        }
        // None: a PaymentIntent this database did not create (or whose transaction rolled
        // back), or a payment of a status this build does not know.
        let Some(IntentPayment {
            id,
            status: Some(current),
            last_event_at,
            amount,
            currency,
            amount_refunded,
        }) = locked
        else {
            return Ok(Outcome::Ignored);
        };

        let charge_id = intent.charge_id();
        if let Some(charge) = charge_id {
            refunds::remember_charge(client, charge, id)?;
        }
        if !payment_may_move(current, last_event_at, target, envelope.created) {
            return Ok(Outcome::Applied);
        }
        let intent_amount = required(intent.amount, "payment intent", &intent.id, "amount")?;
        let intent_currency = required(
            intent.currency.as_deref(),
            "payment intent",
            &intent.id,
            "currency",
        )?;
        let received = intent.amount_received.unwrap_or(intent_amount);
        if target == PaymentStatus::Succeeded
            && (received != amount || !intent_currency.eq_ignore_ascii_case(&currency))
        {
            // Stripe says paid, but not what the order costs: record it, do not trust it.
            let message = format!(
                "Stripe reported {received} {} received, but the payment is for {amount} {currency}",
                intent_currency.to_lowercase()
            );
            payments::flag_amount_mismatch(client, id, received, &message, charge_id)?;
            return Ok(Outcome::Applied);
        }

        // Stripe's error code (card_declined) and, apart, the issuer's reason
        // (insufficient_funds), which the code alone hides.
        let (status, amount_received, failure_code, failure_message, decline_code) = match target {
            PaymentStatus::Succeeded => (
                paid_status(received, amount_refunded),
                Some(received),
                None,
                None,
                None,
            ),
            PaymentStatus::Failed => {
                let error = intent.last_payment_error.as_ref();
                (
                    PaymentStatus::Failed,
                    None,
                    error.and_then(|e| e.code.clone().or(e.decline_code.clone())),
                    error.and_then(|e| e.message.clone()),
                    error.and_then(|e| e.decline_code.clone()),
                )
            }
            other => (other, None, None, None, None),
        };
        payments::move_by_event(
            client,
            id,
            &PaymentMove {
                status,
                amount_received,
                charge_id,
                failure_code: failure_code.as_deref(),
                failure_message: failure_message.as_deref(),
                decline_code: decline_code.as_deref(),
                event_created: envelope.created,
            },
        )?;
        Ok(Outcome::Applied)
    })
}
