use super::entry;
use super::stripe_call;
use crate::error::Result;
use crate::stripe::{Form, Method};
use crate::webhook;
use pgrx::prelude::*;
use pgrx::JsonB;

/// Verify, de-duplicate, record and apply one Stripe webhook delivery.
/// Returns `{"event_id", "type", "outcome", "error"?}`.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn process_stripe_event(payload: Option<&str>, signature: Option<&str>) -> JsonB {
    JsonB(entry(|| webhook::process(payload, signature, &StripeApi)))
}

/// Apply the stored `failed` events again (at most 500 per call), after a fix.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn retry_failed_events() -> SetOfIterator<'static, JsonB> {
    let results = entry(|| webhook::retry_failed(&StripeApi));
    SetOfIterator::new(results.into_iter().map(JsonB))
}

/// The reads an event's apply step may make, with this backend's Stripe client.
pub struct StripeApi;

impl webhook::StripeReads for StripeApi {
    fn refunds_of_charge(
        &self,
        charge: &str,
        starting_after: Option<&str>,
    ) -> Result<serde_json::Value> {
        let form = Form::new()
            .push("charge", charge)
            .push("limit", 100)
            .push_opt("starting_after", starting_after);
        stripe_call::call(|client, hooks| {
            client.request(Method::Get, "/v1/refunds", &form, None, hooks)
        })
    }

    fn payments_of_invoice(
        &self,
        invoice: &str,
        starting_after: Option<&str>,
    ) -> Result<serde_json::Value> {
        let form = Form::new()
            .push("invoice", invoice)
            .push("limit", 100)
            .push_opt("starting_after", starting_after);
        stripe_call::call(|client, hooks| {
            client.request(Method::Get, "/v1/invoice_payments", &form, None, hooks)
        })
    }
}
