//! `payment.events`: every verified Stripe event, with what processing it did. The webhook
//! path (process_stripe_event, sync_events, retry_failed_events) reads and writes it here.

use super::{first_value, plan, Statement, BOOL, INT8, TEXT};
use crate::error::Result;
use pgrx::prelude::*;

/// One event as it is recorded.
pub struct NewEvent<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub livemode: bool,
    pub api_version: Option<&'a str>,
    pub created: i64,
    pub payload: &'a str,
}

/// What is stored of an event already recorded.
pub enum Recorded {
    /// This call recorded it first.
    First,
    /// It was recorded before, with this outcome (`applied`, `ignored` or `failed`); its row
    /// is now locked by this transaction.
    Before(String),
}

static INSERT: Statement = Statement::new(
    "\
    INSERT INTO payment.events (id, type, livemode, api_version, created, payload, outcome, processed_at) \
    VALUES ($1, $2, $3, $4, pg_catalog.to_timestamp($5), $6::jsonb, $7::payment.event_outcome, pg_catalog.now()) \
    ON CONFLICT (id) DO NOTHING RETURNING 1",
    &[TEXT, TEXT, BOOL, TEXT, INT8, TEXT, TEXT],
);
static LOCK: Statement = Statement::new(
    "SELECT outcome::text FROM payment.events WHERE id = $1 FOR UPDATE",
    &[TEXT],
);
static RECORD_OUTCOME: Statement = Statement::new(
    "\
    UPDATE payment.events SET outcome = $2::payment.event_outcome, error = $3, processed_at = pg_catalog.clock_timestamp() \
    WHERE id = $1",
    &[TEXT, TEXT, TEXT],
);
static FAILED: Statement = Statement::new(
    "\
    SELECT id, payload::text FROM payment.events WHERE outcome = 'failed' \
    ORDER BY created, received_at LIMIT $1 FOR UPDATE SKIP LOCKED",
    &[INT8],
);

/// Record the event with outcome `initial`, unless it is recorded already. INSERT ... ON
/// CONFLICT comes first: it takes an xid and waits for a racing delivery's insert, so the row
/// lock that follows sees that delivery's outcome.
pub fn record_first(event: &NewEvent<'_>, initial: &str) -> Result<Recorded> {
    Spi::connect_mut(|client| -> Result<Recorded> {
        let inserted = client.update(
            plan(client, &INSERT)?,
            None,
            &[
                event.id.into(),
                event.event_type.into(),
                event.livemode.into(),
                event.api_version.into(),
                event.created.into(),
                event.payload.into(),
                initial.into(),
            ],
        )?;
        if !inserted.is_empty() {
            return Ok(Recorded::First);
        }
        let outcome = first_value::<String>(client.update(
            plan(client, &LOCK)?,
            Some(1),
            &[event.id.into()],
        )?)?;
        Ok(Recorded::Before(super::required(
            outcome,
            "events.outcome",
        )?))
    })
}

pub fn record_outcome(event_id: &str, outcome: &str, error: Option<&str>) -> Result<()> {
    Spi::connect_mut(|client| -> Result<()> {
        client.update(
            plan(client, &RECORD_OUTCOME)?,
            None,
            &[event_id.into(), outcome.into(), error.into()],
        )?;
        Ok(())
    })
}

/// At most `limit` stored `failed` events, oldest first, as (id, payload), locked; events
/// another transaction is retrying are skipped.
pub fn lock_failed(limit: i64) -> Result<Vec<(String, String)>> {
    Spi::connect_mut(|client| -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for row in client.update(plan(client, &FAILED)?, None, &[limit.into()])? {
            out.push((
                super::required(row.get::<String>(1)?, "events.id")?,
                super::required(row.get::<String>(2)?, "events.payload")?,
            ));
        }
        Ok(out)
    })
}
