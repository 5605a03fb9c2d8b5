use super::entry;
use crate::webhook;
use pgrx::prelude::*;
use pgrx::JsonB;

/// Verify, de-duplicate, record and apply one Stripe webhook delivery.
/// Returns `{"event_id", "type", "outcome", "error"?}`.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn process_stripe_event(payload: Option<&str>, signature: Option<&str>) -> JsonB {
    JsonB(entry(|| webhook::process(payload, signature)))
}

/// Apply the stored `failed` events again (at most 500 per call), after a fix.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn retry_failed_events() -> SetOfIterator<'static, JsonB> {
    let results = entry(webhook::retry_failed);
    SetOfIterator::new(results.into_iter().map(JsonB))
}
