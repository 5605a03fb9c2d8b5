//! `sync_events`: the events Stripe holds that no webhook brought, read from its Events API
//! and applied through the same path as a delivery (record_and_apply), oldest first.
//!
//! Stripe lists events newest first. Paging forward with `starting_after` goes back in time,
//! and `ending_before` walks towards the present, page by page: so a call first finds the
//! oldest page at or after its start (probing time windows of growing width, so a cursor of
//! a few minutes ago costs one request), then walks forward from it. A Stripe error part-way
//! ends the walk with what was applied, and the cursor after it.

use super::event::{self, EventKind, HANDLED_TYPES};
use super::{record_and_apply, require_read_committed, Outcome, StripeReads};
use crate::error::{PaymentError, Result};
use crate::store::sync_state::{self, Cursor};
use serde_json::{json, Value};

/// How far back the first call goes: Stripe's own retry window for a webhook.
pub const FIRST_CALL_LOOKBACK_S: i64 = 3 * 24 * 3600;
/// Each call lists again the last minutes before the cursor: Stripe's list is eventually
/// consistent, so an event may show up there a little after newer ones.
pub const OVERLAP_S: i64 = 5 * 60;
/// What one call may be asked to apply, so one transaction stays of a reasonable size.
pub const MAX_EVENTS_LIMIT: i32 = 10_000;
/// Stripe's largest page.
const PAGE: i64 = 100;
/// The first time window probed for the oldest page; each empty one is followed by one
/// four times as wide.
const FIRST_WINDOW_S: i64 = 3600;

/// One request of `GET /v1/events`: always the handled types, a page of at most 100.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsQuery {
    pub created_gte: i64,
    pub created_lte: Option<i64>,
    pub starting_after: Option<String>,
    pub ending_before: Option<String>,
}

impl EventsQuery {
    pub const TYPES: &'static [&'static str] = &HANDLED_TYPES;
    pub const LIMIT: i64 = PAGE;
}

/// What a call did, as `sync_events` returns it.
#[derive(Debug, Default)]
struct Report {
    seen: i64,
    applied: i64,
    duplicate: i64,
    ignored: i64,
    failed: i64,
    cursor: Option<Cursor>,
    done: bool,
    error: Option<String>,
}

impl Report {
    fn count(&mut self, outcome: &Outcome) {
        self.seen += 1;
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Duplicate => self.duplicate += 1,
            Outcome::Ignored => self.ignored += 1,
            Outcome::Failed(_) => self.failed += 1,
        }
    }

    fn to_json(&self) -> Result<Value> {
        let cursor = match &self.cursor {
            Some(c) => {
                json!({"created": sync_state::created_json(c.created)?, "event_id": c.event_id})
            }
            None => Value::Null,
        };
        let mut v = json!({
            "seen": self.seen, "applied": self.applied, "duplicate": self.duplicate,
            "ignored": self.ignored, "failed": self.failed, "cursor": cursor, "done": self.done,
        });
        if let Some(error) = &self.error {
            v["error"] = Value::String(error.clone());
        }
        Ok(v)
    }
}

/// One page of Stripe's event list, newest first.
struct Page {
    events: Vec<Value>,
    has_more: bool,
}

fn page(stripe: &dyn StripeReads, query: &EventsQuery) -> Result<Page> {
    let list = stripe.events(query)?;
    let events = match list.get("data") {
        Some(Value::Array(data)) => data.clone(),
        _ => {
            return Err(PaymentError::Internal(
                "Stripe's event list has no data array".into(),
            ))
        }
    };
    let has_more = list.get("has_more").and_then(Value::as_bool) == Some(true);
    Ok(Page { events, has_more })
}

/// The oldest page of events created at or after `start`: probe windows
/// [start, start + w] of growing width; the first one holding events holds the oldest, and is
/// paged to its end.
fn oldest_page(stripe: &dyn StripeReads, start: i64, now: i64) -> Result<Option<Vec<Value>>> {
    let mut low = start;
    let mut width = FIRST_WINDOW_S;
    loop {
        let high = low.saturating_add(width);
        let open_ended = high >= now;
        let mut query = EventsQuery {
            created_gte: low,
            created_lte: (!open_ended).then_some(high),
            starting_after: None,
            ending_before: None,
        };
        let mut last = page(stripe, &query)?;
        while last.has_more {
            let Some(oldest) = last.events.last().and_then(event_id) else {
                break;
            };
            query.starting_after = Some(oldest.to_string());
            let next = page(stripe, &query)?;
            if next.events.is_empty() {
                break;
            }
            last = next;
        }
        if !last.events.is_empty() {
            return Ok(Some(last.events));
        }
        if open_ended {
            return Ok(None);
        }
        low = high + 1;
        width = width.saturating_mul(4);
    }
}

fn event_id(event: &Value) -> Option<&str> {
    event.get("id").and_then(Value::as_str)
}

/// Apply one listed event as a delivery would be applied; no signature (it came from Stripe
/// over TLS, with the secret key). An event that cannot be read ends the walk before it
/// (the cursor stays before it, so it is never skipped).
fn apply_listed(event: &Value, stripe: &dyn StripeReads) -> Result<(Outcome, Cursor)> {
    let text = event.to_string();
    let envelope = event::parse_envelope(&text).map_err(|error| {
        PaymentError::Internal(format!(
            "Stripe listed an event pg_payment cannot read ({error}); the sync stopped before it"
        ))
    })?;
    let cursor = Cursor {
        created: envelope.created,
        event_id: envelope.id.to_string(),
    };
    let kind = EventKind::of(&envelope.event_type);
    match record_and_apply(&envelope, kind, &text, stripe) {
        Ok(outcome) => Ok((outcome, cursor)),
        // Not the event's own failure (that is stored `failed` by record_and_apply): the
        // database refused to record it. Raise: the call's work is rolled back together.
        Err(e) => e.raise(),
    }
}

/// Events met again (delivered already) cost no budget, but a call meets at most this many
/// per event of its budget: a call over a period webhooks covered stays one bounded
/// transaction, and the next goes on from its cursor.
const SEEN_PER_BUDGETED_EVENT: i64 = 10;

/// The entry point behind `payment.sync_events(since, max_events)`.
pub fn sync(since: Option<i64>, max_events: i32, stripe: &dyn StripeReads) -> Result<Value> {
    require_read_committed("sync_events")?;
    if !(1..=MAX_EVENTS_LIMIT).contains(&max_events) {
        return Err(PaymentError::invalid(format!(
            "max_events must be between 1 and {MAX_EVENTS_LIMIT}, not {max_events}"
        )));
    }
    let now = super::unix_now();
    let kept = sync_state::lock_and_read()?;
    let start = match (since, &kept) {
        (Some(since), _) => since,
        (None, Some(cursor)) => cursor.created - OVERLAP_S,
        (None, None) => now - FIRST_CALL_LOOKBACK_S,
    };

    // Where this call stands: for a call without `since`, the kept cursor until it applies
    // something; a call with `since` reports only where it got to (the kept cursor may be
    // further on, and a `since` recovery goes on from this call's cursor).
    let mut report = Report {
        cursor: if since.is_none() { kept.clone() } else { None },
        ..Report::default()
    };
    let mut budget = i64::from(max_events);
    let seen_cap = budget * SEEN_PER_BUDGETED_EVENT;
    let mut walk = || -> Result<()> {
        let Some(mut events) = oldest_page(stripe, start, now)? else {
            report.done = true;
            return Ok(());
        };
        loop {
            // Stripe's page is newest first; apply it oldest first.
            let newest = events.first().and_then(event_id).map(str::to_string);
            for event in events.iter().rev() {
                if budget == 0 || report.seen >= seen_cap {
                    return Ok(());
                }
                let (outcome, cursor) = apply_listed(event, stripe)?;
                // Met again (the overlap, or delivered already): counted, but no work.
                if outcome != Outcome::Duplicate {
                    budget -= 1;
                }
                report.count(&outcome);
                report.cursor = Some(cursor);
            }
            let Some(newest) = newest else {
                report.done = true;
                return Ok(());
            };
            let next = page(
                stripe,
                &EventsQuery {
                    created_gte: start,
                    created_lte: None,
                    starting_after: None,
                    ending_before: Some(newest),
                },
            )?;
            if next.events.is_empty() {
                report.done = true;
                return Ok(());
            }
            events = next.events;
        }
    };
    if let Err(error) = walk() {
        match error {
            // A cancel rolls the call back, its cursor with it.
            error if error.is_cancel() => return Err(error),
            // Stripe (or the way to it) failed: keep what was applied, say why it stopped.
            PaymentError::Stripe { .. } | PaymentError::Internal(_) => {
                report.error = Some(error.to_string())
            }
            other => return Err(other),
        }
    }
    // Kept only forward: a call with an older `since` does not move it back.
    if let Some(cursor) = &report.cursor {
        if kept.as_ref() != Some(cursor) {
            sync_state::save(cursor)?;
        }
    }
    report.to_json()
}
