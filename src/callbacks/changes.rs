//! What changed in a row of the payment tables: the fields whose change reaches the
//! callbacks and NOTIFY (DESIGN.md, `previous`), their old values, and the flag being set.
//! Bookkeeping (updated_at, last_event_at...) is never a change.

use crate::error::{PaymentError, Result};
use crate::store::Statement;
use crate::store::{self};
use pgrx::datum::{FromDatum, IntoDatum, TimestampWithTimeZone, UnboxDatum};
use pgrx::prelude::*;
use serde_json::{Map, Value};

/// The kind of value a watched field holds.
#[derive(Clone, Copy)]
enum Field {
    Text(&'static str),
    Int8(&'static str),
    Bool(&'static str),
    Timestamp(&'static str),
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Text(n) | Field::Int8(n) | Field::Bool(n) | Field::Timestamp(n) => n,
        }
    }
}

/// The watched fields of each table; the triggers in sql/api.sql fire on the same list.
fn watched(table: &str) -> &'static [Field] {
    use Field::*;
    match table {
        "payments" => &[
            Text("status"),
            Int8("amount_received"),
            Int8("amount_refunded"),
            Text("failure_code"),
            Text("decline_code"),
        ],
        "recurring_payments" => &[
            Text("status"),
            Timestamp("current_period_start"),
            Timestamp("current_period_end"),
            Bool("cancel_at_period_end"),
            Timestamp("cancel_at"),
            Timestamp("canceled_at"),
            Timestamp("trial_end"),
            Text("price_id"),
        ],
        _ => &[Text("status")],
    }
}

/// A flag that a change sets: a succeeded amount that does not match the payment's.
pub const AMOUNT_MISMATCH: &str = "amount_mismatch";

type Row<'a> = PgHeapTuple<'a, AllocatedByPostgres>;

/// A column's value, or None when it is NULL or when the row has no such column (a row of
/// an older schema, in the upgrade window).
fn value<'r, T>(row: &'r Row<'_>, column: &str) -> Result<Option<T>>
where
    T: FromDatum + IntoDatum + UnboxDatum<As<'r> = T> + 'r,
{
    if row.get_attribute_by_name(column).is_none() {
        return Ok(None);
    }
    row.get_by_name::<T>(column)
        .map_err(|e| PaymentError::Internal(format!("{column}: {e}")))
}

static TIMESTAMP_JSON: Statement = Statement::new(
    "SELECT pg_catalog.to_jsonb($1::timestamptz)",
    &[store::TIMESTAMPTZ],
);

/// A timestamp as `row` (to_jsonb) shows it, so `previous` and `row` agree.
fn timestamp_json(value: Option<TimestampWithTimeZone>) -> Result<Value> {
    let Some(value) = value else {
        return Ok(Value::Null);
    };
    Spi::connect(|client| -> Result<Value> {
        let stmt = store::plan(client, &TIMESTAMP_JSON)?;
        let json =
            store::first_value::<pgrx::JsonB>(client.select(stmt, Some(1), &[value.into()])?)?;
        Ok(json.map(|j| j.0).unwrap_or(Value::Null))
    })
}

/// The old values of the watched fields that changed (`{}` for a new row), and the flag
/// this change sets, if any.
pub fn previous(
    table: &str,
    old: Option<&Row<'_>>,
    new: &Row<'_>,
) -> Result<(Value, Option<&'static str>)> {
    let Some(old) = old else {
        let flag = flag_set(table, None, new)?;
        return Ok((Value::Object(Map::new()), flag));
    };
    let mut changed = Map::new();
    for field in watched(table) {
        let name = field.name();
        let before = match *field {
            Field::Text(_) => {
                let (a, b) = (value::<String>(old, name)?, value::<String>(new, name)?);
                (a != b).then(|| a.map(Value::String).unwrap_or(Value::Null))
            }
            Field::Int8(_) => {
                let (a, b) = (value::<i64>(old, name)?, value::<i64>(new, name)?);
                (a != b).then(|| a.map(Value::from).unwrap_or(Value::Null))
            }
            Field::Bool(_) => {
                let (a, b) = (value::<bool>(old, name)?, value::<bool>(new, name)?);
                (a != b).then(|| a.map(Value::Bool).unwrap_or(Value::Null))
            }
            Field::Timestamp(_) => {
                let a = value::<TimestampWithTimeZone>(old, name)?;
                let b = value::<TimestampWithTimeZone>(new, name)?;
                if a != b {
                    Some(timestamp_json(a)?)
                } else {
                    None
                }
            }
        };
        if let Some(before) = before {
            changed.insert(name.into(), before);
        }
    }
    Ok((Value::Object(changed), flag_set(table, Some(old), new)?))
}

fn flag_set(table: &str, old: Option<&Row<'_>>, new: &Row<'_>) -> Result<Option<&'static str>> {
    if table != "payments" {
        return Ok(None);
    }
    let now = value::<String>(new, "failure_code")?;
    let before = match old {
        Some(old) => value::<String>(old, "failure_code")?,
        None => None,
    };
    Ok(
        (now.as_deref() == Some(AMOUNT_MISMATCH) && before.as_deref() != Some(AMOUNT_MISMATCH))
            .then_some(AMOUNT_MISMATCH),
    )
}
