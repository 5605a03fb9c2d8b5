//! `process_stripe_event`: verify, de-duplicate, record and apply one Stripe webhook event.
//!
//! The hot path is: one read of the webhook secrets, an allocation-free HMAC check, one
//! envelope parse that leaves `data.object` raw, and one INSERT into `payment.events`.
//! Event types that need no work stop there. Others are applied in a subtransaction, so
//! a failure rolls back what they changed but keeps the event, marked `failed`.

pub mod event;
pub mod signature;
pub mod sync;

mod apply;

use crate::callbacks::{while_writing, Writer};
use crate::error::{PaymentError, Result};
use crate::gucs;
use crate::store::{self, events::Recorded};
use event::{Envelope, EventKind};
use pgrx::pg_sys;
use serde_json::{json, Value};

/// What applying an event may need to read from Stripe. The SQL layer provides it (with the
/// backend's Stripe client), so the webhook code does not depend on the client.
pub trait StripeReads {
    /// One page of `GET /v1/refunds?charge=...`, as Stripe's JSON list.
    fn refunds_of_charge(&self, charge: &str, starting_after: Option<&str>) -> Result<Value>;
    /// One page of `GET /v1/invoice_payments?invoice=...`, as Stripe's JSON list.
    fn payments_of_invoice(&self, invoice: &str, starting_after: Option<&str>) -> Result<Value>;
    /// One page of `GET /v1/events`, as Stripe's JSON list (sync_events).
    fn events(&self, query: &sync::EventsQuery) -> Result<Value>;
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    Ignored,
    Failed(String),
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::Failed(_) => "failed",
        }
    }

    pub fn to_json(&self, event_id: &str, event_type: &str) -> Value {
        let mut v = json!({"event_id": event_id, "type": event_type, "outcome": self.as_str()});
        if let Outcome::Failed(error) = self {
            v["error"] = Value::String(error.clone());
        }
        v
    }
}

/// Applying events needs READ COMMITTED: a delivery racing another of the same event waits
/// for it and then sees its outcome, which a snapshot taken before the wait would hide.
fn require_read_committed(function: &str) -> Result<()> {
    // SAFETY: a plain read of a backend global.
    // READ UNCOMMITTED runs as READ COMMITTED in PostgreSQL.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return Err(PaymentError::WrongIsolation(format!(
            "{function} must run at READ COMMITTED isolation, so that an event racing another \
             delivery of itself can wait for it and see its outcome"
        )));
    }
    Ok(())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The entry point behind `payment.process_stripe_event(payload, signature)`.
pub fn process(
    payload: Option<&str>,
    signature: Option<&str>,
    stripe: &dyn StripeReads,
) -> Result<Value> {
    require_read_committed("process_stripe_event")?;
    let payload = payload.ok_or(PaymentError::NullArgument("payload"))?;
    let signature = signature.ok_or(PaymentError::NullArgument("signature"))?;
    if payload.len() > event::MAX_PAYLOAD_BYTES {
        return Err(PaymentError::InvalidPayload(format!(
            "the webhook body is {} bytes, more than the {} bytes a Stripe event can be",
            payload.len(),
            event::MAX_PAYLOAD_BYTES
        )));
    }

    let secrets = store::secrets::webhook_secrets()?;
    let now = unix_now();
    signature::verify(
        payload.as_bytes(),
        signature,
        secrets.secrets.iter().map(String::as_str),
        now,
        i64::from(gucs::WEBHOOK_TOLERANCE_S.get()),
    )
    .map_err(|e| PaymentError::SignatureRejected(e.to_string()))?;

    let envelope = event::parse_envelope(payload).map_err(PaymentError::InvalidPayload)?;
    // A signature proves who sent the event, not which of the account's modes it is of: a
    // live event must never move a test payment, nor the other way round.
    if envelope.livemode != secrets.livemode {
        let (event_mode, our_mode) = match envelope.livemode {
            true => ("live", "test"),
            false => ("test", "live"),
        };
        return Err(PaymentError::ModeMismatch(format!(
            "event {} is a {event_mode}-mode event, and this database is configured for {our_mode} mode",
            envelope.id
        )));
    }
    let kind = EventKind::of(&envelope.event_type);
    let outcome = record_and_apply(&envelope, kind, payload, stripe)?;
    Ok(outcome.to_json(&envelope.id, &envelope.event_type))
}

/// De-duplicate by event id (store::events::record_first waits for a racing delivery and
/// sees its outcome), then apply.
fn record_and_apply(
    envelope: &Envelope<'_>,
    kind: EventKind,
    payload: &str,
    stripe: &dyn StripeReads,
) -> Result<Outcome> {
    let initial = if kind == EventKind::Unhandled {
        "ignored"
    } else {
        "applied"
    };
    let recorded = store::events::record_first(
        &store::events::NewEvent {
            id: &envelope.id,
            event_type: &envelope.event_type,
            livemode: envelope.livemode,
            api_version: envelope.api_version.as_deref(),
            created: envelope.created,
            payload,
        },
        initial,
    )?;
    let first_delivery = match recorded {
        Recorded::First => None,
        Recorded::Before(outcome) => Some(outcome),
    };

    match first_delivery.as_deref() {
        None if kind == EventKind::Unhandled => return Ok(Outcome::Ignored),
        None => {}
        Some("failed") => {}
        Some(_) => return Ok(Outcome::Duplicate),
    }
    // A redelivered `failed` event is applied again; we hold its row lock meanwhile.
    let outcome = apply_guarded(envelope, kind, stripe);
    let record = match (&outcome, first_delivery.is_none()) {
        (Outcome::Applied, true) => None,
        (Outcome::Applied, false) => Some(("applied", None)),
        (Outcome::Ignored, _) => Some(("ignored", None)),
        (Outcome::Failed(error), _) => Some(("failed", Some(error.as_str()))),
        (Outcome::Duplicate, _) => None,
    };
    if let Some((outcome_text, error)) = record {
        store::events::record_outcome(&envelope.id, outcome_text, error)?;
    }
    Ok(outcome)
}

/// Apply in a subtransaction with the triggers told which event is writing.
fn apply_guarded(envelope: &Envelope<'_>, kind: EventKind, stripe: &dyn StripeReads) -> Outcome {
    let writer = Writer {
        event_id: Some(envelope.id.to_string()),
        event_type: Some(envelope.event_type.to_string()),
    };
    let result = store::in_subtransaction(|| {
        while_writing(writer, || match apply::apply(envelope, kind, stripe) {
            Ok(outcome) => outcome,
            // Raise so the subtransaction rolls back whatever was half done.
            Err(e) => e.raise(),
        })
    });
    match result {
        Ok(outcome) => outcome,
        Err(failure) => Outcome::Failed(failure.to_string()),
    }
}

/// Apply the current state of an object read from Stripe (refresh_payment,
/// refresh_subscription) as an event of `event_type` created now would bring it: the same
/// forward-only rules and the same callbacks (an older state never overwrites a newer one,
/// a final state stays final). Nothing is recorded in payment.events.
pub fn apply_current_state(
    event_type: &str,
    object: Value,
    livemode: bool,
    stripe: &dyn StripeReads,
) -> Result<Outcome> {
    let now = unix_now();
    let text = json!({
        "id": format!("evt_refresh{now}"),
        "object": "event",
        "type": event_type,
        "livemode": livemode,
        "created": now,
        "data": {"object": object},
    })
    .to_string();
    let envelope = event::parse_envelope(&text).map_err(PaymentError::Internal)?;
    let kind = EventKind::of(&envelope.event_type);
    let writer = Writer {
        event_id: None,
        event_type: Some(event_type.to_string()),
    };
    while_writing(writer, || apply::apply(&envelope, kind, stripe))
}

/// Link a subscription's payment row to what paid its invoice, asking Stripe when nothing
/// is stored yet (refresh_payment of a renewal payment).
pub fn relink_invoice_payment(
    payment_id: i64,
    invoice: &str,
    stripe: &dyn StripeReads,
) -> Result<()> {
    apply::relink_invoice_payment(payment_id, invoice, stripe)
}

/// `payment.retry_failed_events()`: apply stored failed events again, oldest first.
/// Batched: each call takes at most `RETRY_BATCH` events, so subtransaction bookkeeping in
/// one transaction stays small; call it again while it returns rows.
pub const RETRY_BATCH: i64 = 500;

pub fn retry_failed(stripe: &dyn StripeReads) -> Result<Vec<Value>> {
    require_read_committed("retry_failed_events")?;
    let failed = store::events::lock_failed(RETRY_BATCH)?;
    let mut results = Vec::with_capacity(failed.len());
    for (id, payload) in failed {
        let envelope = match event::parse_envelope(&payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                results.push(Outcome::Failed(error).to_json(&id, ""));
                continue;
            }
        };
        let kind = EventKind::of(&envelope.event_type);
        let outcome = if kind == EventKind::Unhandled {
            Outcome::Ignored
        } else {
            apply_guarded(&envelope, kind, stripe)
        };
        let (text, error) = match &outcome {
            Outcome::Failed(e) => ("failed", Some(e.as_str())),
            Outcome::Ignored => ("ignored", None),
            _ => ("applied", None),
        };
        store::events::record_outcome(&id, text, error)?;
        results.push(outcome.to_json(&id, &envelope.event_type));
    }
    Ok(results)
}
