//! `payment.sync_state`: where the last `sync_events` call stopped in Stripe's event list.
//! One row at most; read by nobody but the extension.

use super::Statement;
use super::{INT8, TEXT};
use crate::error::Result;
use pgrx::prelude::*;

/// The created time (Unix seconds) and id of the last event a sync went through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created: i64,
    pub event_id: String,
}

// Locked, so that two overlapping calls (a cron job and a hand-run one) take turns instead
// of applying the same events side by side.
const READ: &str = "\
    SELECT EXTRACT(EPOCH FROM cursor_created)::bigint, cursor_event_id \
      FROM payment.sync_state FOR UPDATE";
const LOCK_TABLE: &str = "LOCK TABLE payment.sync_state IN SHARE ROW EXCLUSIVE MODE";
// Forward only: a call that started further back (`since`) never moves the cursor back.
static SAVE: Statement = Statement::new("\
    INSERT INTO payment.sync_state (cursor_created, cursor_event_id) VALUES (pg_catalog.to_timestamp($1), $2) \
    ON CONFLICT (singleton) DO UPDATE \
       SET cursor_created = EXCLUDED.cursor_created, cursor_event_id = EXCLUDED.cursor_event_id, \
           updated_at = pg_catalog.now() \
     WHERE payment.sync_state.cursor_created <= EXCLUDED.cursor_created",
    &[INT8, TEXT],
);

/// The kept cursor, taking the lock that serialises sync calls (held to the end of the
/// transaction).
pub fn lock_and_read() -> Result<Option<Cursor>> {
    Spi::connect_mut(|client| -> Result<Option<Cursor>> {
        // The row may not exist yet; the table lock makes the first two calls take turns too.
        client.update(LOCK_TABLE, None, &[])?;
        let mut rows = client.update(READ, Some(1), &[])?;
        let Some(row) = rows.next() else {
            return Ok(None);
        };
        Ok(Some(Cursor {
            created: super::required(row.get::<i64>(1)?, "sync_state.cursor_created")?,
            event_id: super::required(row.get::<String>(2)?, "sync_state.cursor_event_id")?,
        }))
    })
}

/// Keep `cursor` unless the kept one is further on.
pub fn save(cursor: &Cursor) -> Result<()> {
    Spi::connect_mut(|client| -> Result<()> {
        let stmt = super::plan(client, &SAVE)?;
        client.update(
            stmt,
            None,
            &[cursor.created.into(), cursor.event_id.as_str().into()],
        )?;
        Ok(())
    })
}

/// Postgres' timestamptz counts microseconds from 2000-01-01 UTC.
const POSTGRES_EPOCH_UNIX_S: i64 = 946_684_800;

/// Whole Unix seconds of a timestamptz (Stripe's `created` has no fraction).
pub fn timestamptz_to_unix(t: TimestampWithTimeZone) -> i64 {
    let micros: i64 = t.into();
    micros.div_euclid(1_000_000) + POSTGRES_EPOCH_UNIX_S
}

static CREATED_JSON: Statement = Statement::new(
    "SELECT pg_catalog.to_jsonb(pg_catalog.to_timestamp($1))",
    &[INT8],
);

/// An event's `created` as the extension's other JSON shows a time (to_jsonb), which reads
/// back as a timestamptz: what a `since` recovery passes to its next call.
pub fn created_json(created: i64) -> Result<serde_json::Value> {
    Spi::connect(|client| -> Result<serde_json::Value> {
        let stmt = super::plan(client, &CREATED_JSON)?;
        let json =
            super::first_value::<pgrx::JsonB>(client.select(stmt, Some(1), &[created.into()])?)?;
        Ok(json.map(|j| j.0).unwrap_or(serde_json::Value::Null))
    })
}
