use super::entry;
use super::stripe_call;
use crate::error::{PaymentError, Result};
use crate::store::sync_state::timestamptz_to_unix;
use crate::stripe::{Form, Method, Param};
use crate::webhook;
use crate::webhook::sync::EventsQuery;
use pgrx::prelude::*;
use pgrx::JsonB;

/// Verify, de-duplicate, record and apply one Stripe webhook delivery.
/// Returns `{"event_id", "type", "outcome", "error"?}`.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn process_stripe_event(payload: Option<&str>, signature: Option<&str>) -> JsonB {
    JsonB(entry(|| webhook::process(payload, signature, &StripeApi)))
}

/// Apply the events Stripe holds that no webhook brought (at most `max_events`), oldest
/// first, from `since` or from where the previous call stopped. One transaction per call.
#[pg_extern(schema = "payment", volatile, parallel_unsafe)]
fn sync_events(
    since: default!(Option<TimestampWithTimeZone>, "NULL"),
    max_events: default!(Option<i32>, 1000),
) -> JsonB {
    JsonB(entry(|| {
        let max_events = max_events.ok_or(PaymentError::NullArgument("max_events"))?;
        let since = match since {
            Some(t) if t.is_infinity() || t.is_neg_infinity() => {
                return Err(PaymentError::invalid("since must be a finite time"))
            }
            Some(t) => Some(timestamptz_to_unix(t)),
            None => None,
        };
        webhook::sync::sync(since, max_events, &StripeApi)
    }))
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

    fn events(&self, query: &EventsQuery) -> Result<serde_json::Value> {
        let types = Param::List(EventsQuery::TYPES.iter().map(|t| Param::from(*t)).collect());
        let mut created = vec![("gte".to_string(), Param::from(query.created_gte))];
        if let Some(lte) = query.created_lte {
            created.push(("lte".to_string(), Param::from(lte)));
        }
        let form = Form::new()
            .push("created", Param::Map(created))
            .push("types", types)
            .push("limit", EventsQuery::LIMIT)
            .push_opt("starting_after", query.starting_after.as_deref())
            .push_opt("ending_before", query.ending_before.as_deref());
        stripe_call::call(|client, hooks| {
            client.request(Method::Get, "/v1/events", &form, None, hooks)
        })
    }
}
