use crate::error::OrRaise;
use crate::store::schema_version::require_current;
use crate::webhook;
use pgrx::prelude::*;
use pgrx::JsonB;

/// Verify, de-duplicate, record and apply one Stripe webhook delivery.
/// Returns `{"event_id", "type", "outcome", "error"?}`.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn process_stripe_event(payload: Option<&str>, signature: Option<&str>) -> JsonB {
    let run = || {
        require_current()?;
        webhook::process(payload, signature)
    };
    JsonB(run().or_raise())
}

/// Apply the stored `failed` events again (at most 500 per call), after a fix.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn retry_failed_events() -> SetOfIterator<'static, JsonB> {
    let run = || {
        require_current()?;
        webhook::retry_failed()
    };
    let results = run().or_raise();
    SetOfIterator::new(results.into_iter().map(JsonB))
}
