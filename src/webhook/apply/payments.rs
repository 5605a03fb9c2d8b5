//! The payment callback: payment_intent.* events move a payment forward.

use super::{is_foreign, object, required, waited_for_creator};
use crate::error::Result;
use crate::lifecycle::{paid_status, payment_may_move, PaymentStatus};
use crate::objects::PaymentIntent;
use crate::store::Statement;
use crate::store::{self, refunds, INT8, TEXT};
use crate::webhook::event::Envelope;
use crate::webhook::Outcome;
use pgrx::prelude::*;

static LOCK_PAYMENT_BY_INTENT: Statement = Statement::new("\
    SELECT id, status, EXTRACT(epoch FROM last_event_at)::int8, amount, currency, amount_refunded \
      FROM payment.payments WHERE stripe_payment_intent_id = $1 AND recurring_payment_id IS NULL FOR UPDATE",
    &[TEXT],
);

static MOVE_PAYMENT: Statement = Statement::new("\
    UPDATE payment.payments SET status = $2, amount_received = COALESCE($3, amount_received), \
           stripe_charge_id = COALESCE($4, stripe_charge_id), failure_code = $5, failure_message = $6, \
           last_event_at = GREATEST(last_event_at, pg_catalog.to_timestamp($7)), updated_at = pg_catalog.now(), \
           decline_code = $8 \
     WHERE id = $1",
    &[INT8, TEXT, INT8, TEXT, TEXT, TEXT, INT8, TEXT],
);

static FLAG_AMOUNT_MISMATCH: Statement = Statement::new("\
    UPDATE payment.payments SET amount_received = $2, failure_code = 'amount_mismatch', \
           failure_message = $3, stripe_charge_id = COALESCE($4, stripe_charge_id), updated_at = pg_catalog.now() \
     WHERE id = $1",
    &[INT8, INT8, TEXT, TEXT],
);

pub fn apply_payment_intent(envelope: &Envelope<'_>, target: PaymentStatus) -> Result<Outcome> {
    let intent: PaymentIntent = object(envelope)?;
    if is_foreign(&intent.metadata)? {
        return Ok(Outcome::Ignored);
    }
    Spi::connect_mut(|client| -> Result<Outcome> {
        let lock = store::plan(client, &LOCK_PAYMENT_BY_INTENT)?;
        let mut rows = client.update(lock, Some(1), &[intent.id.as_str().into()])?;
        if rows.is_empty() && waited_for_creator(client, &intent.metadata)? {
            rows = client.update(lock, Some(1), &[intent.id.as_str().into()])?;
        }
        let Some(row) = rows.next() else {
            // A PaymentIntent this database did not create (or whose transaction rolled back).
            return Ok(Outcome::Ignored);
        };
        let id: i64 = store::required(row.get(1)?, "payments.id")?;
        let current =
            PaymentStatus::parse(&store::required(row.get::<String>(2)?, "payments.status")?);
        let last_event_at: Option<i64> = row.get(3)?;
        let amount: i64 = store::required(row.get(4)?, "payments.amount")?;
        let currency: String = store::required(row.get(5)?, "payments.currency")?;
        let amount_refunded: i64 = store::required(row.get(6)?, "payments.amount_refunded")?;
        let Some(current) = current else {
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
            let flag = store::plan(client, &FLAG_AMOUNT_MISMATCH)?;
            client.update(
                flag,
                None,
                &[id.into(), received.into(), message.into(), charge_id.into()],
            )?;
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
        let update = store::plan(client, &MOVE_PAYMENT)?;
        client.update(
            update,
            None,
            &[
                id.into(),
                status.as_str().into(),
                amount_received.into(),
                charge_id.into(),
                failure_code.into(),
                failure_message.into(),
                envelope.created.into(),
                decline_code.into(),
            ],
        )?;
        Ok(Outcome::Applied)
    })
}
