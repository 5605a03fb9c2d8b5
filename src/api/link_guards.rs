//! The guards that keep the order link permanent (DESIGN.md, "Order table").
//!
//! - `guard_order_rows`, a row trigger on the linked table: an order that has payments
//!   cannot be deleted, re-keyed or truncated away. It reads the id attribute alone, never
//!   the whole row (a column type's cast is the app's code).
//! - `guard_order_link_ddl` (ddl_command_end) and `guard_order_link_drop` (sql_drop), event
//!   triggers: a command that really renames or retypes a linked object, drops the table or
//!   a linked column, or drops or disables a guard trigger is refused and rolls back; any
//!   other command goes through, whatever state the link is in.
//!
//! All three run as whoever issued the statement, and read the payment tables after
//! switching to `payment_owner`. Commands of pg_payment's own install and upgrade scripts
//! are not checked (those scripts never touch the app's table).

use crate::error::{OrRaise, PaymentError, Result};
use crate::store::Statement;
use crate::store::{self, identity, INT8};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{PgTrigger, PgTriggerError};

/// The names of the guard triggers that link_order_table creates on the linked table.
pub const GUARD_TRIGGER_NAMES: [&str; 2] = ["pg_payment_guard_rows", "pg_payment_guard_truncate"];

static ORDER_HAS_PAYMENTS: Statement = Statement::new(
    "\
    SELECT EXISTS (SELECT 1 FROM payment.payments WHERE order_id = $1) \
        OR EXISTS (SELECT 1 FROM payment.recurring_payments WHERE order_id = $1)",
    &[INT8],
);
const ANY_PAYMENTS: &str = "\
    SELECT EXISTS (SELECT 1 FROM payment.payments) OR EXISTS (SELECT 1 FROM payment.recurring_payments)";

/// The id of an order row, read by attribute (int2, int4 or int8), never through a cast.
fn order_id(row: &PgHeapTuple<'_, AllocatedByPostgres>, column: &str) -> Result<Option<i64>> {
    let (number, attribute) = row.get_attribute_by_name(column).ok_or_else(|| {
        PaymentError::Internal(format!(
            "the linked id column \"{column}\" is not in the row"
        ))
    })?;
    let bad = |e: pgrx::datum::TryFromDatumError| PaymentError::Internal(e.to_string());
    // link_order_table accepts a domain over an integer type: read the base type's value.
    // SAFETY: a syscache lookup of a type that the row's descriptor names.
    let base = unsafe { pg_sys::getBaseType(attribute.type_oid().value()) };
    Ok(match base {
        pg_sys::INT2OID => row.get_by_index::<i16>(number).map_err(bad)?.map(i64::from),
        pg_sys::INT4OID => row.get_by_index::<i32>(number).map_err(bad)?.map(i64::from),
        _ => row.get_by_index::<i64>(number).map_err(bad)?,
    })
}

fn has_payments(order_id: i64) -> Result<bool> {
    identity::as_payment_owner(|| {
        Ok(Spi::connect(|client| -> Result<Option<bool>> {
            let stmt = store::plan(client, &ORDER_HAS_PAYMENTS)?;
            store::first_value::<bool>(client.select(stmt, Some(1), &[order_id.into()])?)
        })?
        .unwrap_or(false))
    })
}

fn guard_rows(trigger: &PgTrigger<'_>) -> Result<()> {
    let table = trigger
        .table_name()
        .map_err(|e| PaymentError::Internal(e.to_string()))?;
    let op = trigger
        .op()
        .map_err(|e| PaymentError::Internal(e.to_string()))?;
    if matches!(op, pgrx::PgTriggerOperation::Truncate) {
        let any = identity::as_payment_owner(|| {
            Ok(store::query_value::<bool>(ANY_PAYMENTS, &[])?.unwrap_or(false))
        })?;
        if any {
            return Err(PaymentError::LinkViolation {
                message: format!("{table} is linked to payments and cannot be truncated"),
                hint: "Payments refer to its orders; delete only orders that have none.".into(),
            });
        }
        return Ok(());
    }
    let args = trigger
        .extra_args()
        .map_err(|e| PaymentError::Internal(e.to_string()))?;
    let column = args
        .first()
        .ok_or_else(|| PaymentError::Internal("the row guard has no id column argument".into()))?;
    let old = trigger
        .old()
        .ok_or_else(|| PaymentError::Internal("the row guard fired without an old row".into()))?;
    let Some(old_id) = order_id(&old, column)? else {
        return Ok(());
    };
    if let Some(new) = trigger.new() {
        if order_id(&new, column)? == Some(old_id) {
            return Ok(());
        }
    }
    if has_payments(old_id)? {
        let what = if trigger.new().is_some() {
            "given another id"
        } else {
            "deleted"
        };
        return Err(PaymentError::OrderHasPayments(format!(
            "order {old_id} has payments and cannot be {what}"
        )));
    }
    Ok(())
}

/// BEFORE DELETE OR UPDATE OF the id, and BEFORE TRUNCATE, on the linked table.
#[pg_trigger(sql = false)]
fn guard_order_rows<'a>(
    trigger: &'a PgTrigger<'a>,
) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, PgTriggerError> {
    if let Err(e) = guard_rows(trigger) {
        e.raise();
    }
    Ok(trigger.new().or_else(|| trigger.old()))
}

fn in_own_script() -> bool {
    // SAFETY: plain reads of backend globals set while an extension script runs.
    unsafe {
        pg_sys::creating_extension
            && pg_sys::CurrentExtensionObject
                == pg_sys::get_extension_oid(c"pg_payment".as_ptr(), true)
    }
}

/// Did this command touch the linked table (the table, the schema holding it, or a trigger on
/// it), and if so, does it still have its name, its linked columns' types, and its guard
/// triggers: none of them renamed away, replaced by another function, or disabled (a state
/// check, so that link_order_table creating them one after the other is not refused)?
const CHECK_AFTER_DDL: &str = "\
    WITH link AS (SELECT * FROM payment.order_link), \
    touched AS ( \
        SELECT 1 FROM pg_catalog.pg_event_trigger_ddl_commands() d, link l, pg_catalog.pg_class c \
         WHERE c.oid = l.order_table \
           AND ((d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = l.order_table) \
             OR (d.classid = 'pg_catalog.pg_namespace'::regclass AND d.objid = c.relnamespace) \
             OR (d.classid = 'pg_catalog.pg_trigger'::regclass \
                 AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                              WHERE t.oid = d.objid AND t.tgrelid = l.order_table)))) \
    SELECT l.table_name, \
           (SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) \
              FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = l.order_table), \
           l.column_signature, \
           (SELECT pg_catalog.string_agg(a.attname || ' ' || pg_catalog.format_type(a.atttypid, a.atttypmod), ', ' \
                                         ORDER BY pg_catalog.array_position(k.cols, a.attname::text)) \
              FROM (SELECT ARRAY[l.id_column::text, l.amount_column::text, l.user_column::text, \
                                 l.status_column::text, l.currency_column::text] AS cols) k \
              JOIN pg_catalog.pg_attribute a \
                ON a.attrelid = l.order_table AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attname::text = ANY (k.cols)), \
           EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t \
                    WHERE t.tgrelid = l.order_table \
                      AND ((t.tgfoid = 'payment.guard_order_rows()'::pg_catalog.regprocedure \
                            AND (t.tgname <> ALL ($1) OR t.tgenabled NOT IN ('O', 'A'))) \
                        OR (t.tgname = ANY ($1) \
                            AND t.tgfoid <> 'payment.guard_order_rows()'::pg_catalog.regprocedure))) \
      FROM link l WHERE EXISTS (SELECT 1 FROM touched)";

/// ddl_command_end: a rename, a move to another schema, a retyped linked column, or a
/// disabled guard trigger.
#[pg_extern(sql = false)]
fn guard_order_link_ddl() {
    if in_own_script() {
        return;
    }
    let check = || -> Result<()> {
        let names: Vec<&str> = GUARD_TRIGGER_NAMES.to_vec();
        let row = Spi::connect(|client| -> Result<Option<_>> {
            let mut rows = client.select(CHECK_AFTER_DDL, Some(1), &[names.into()])?;
            let Some(row) = rows.next() else {
                return Ok(None);
            };
            Ok(Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?,
                row.get::<String>(3)?.unwrap_or_default(),
                row.get::<String>(4)?,
                row.get::<bool>(5)?.unwrap_or(false),
            )))
        })?;
        let Some((linked_name, current_name, linked_columns, current_columns, disabled)) = row
        else {
            return Ok(());
        };
        if current_name.as_deref() != Some(linked_name.as_str()) {
            return Err(PaymentError::LinkViolation {
                message: format!(
                    "{linked_name} is the linked order table and cannot be renamed or moved"
                ),
                hint:
                    "Payments refer to it by name after a dump and restore; the link is permanent."
                        .into(),
            });
        }
        if current_columns.as_deref() != Some(linked_columns.as_str()) {
            return Err(PaymentError::LinkViolation {
                message: format!(
                    "the linked columns of {linked_name} cannot be dropped, renamed or retyped \
                     (linked: {linked_columns}; now: {})",
                    current_columns.as_deref().unwrap_or("none")
                ),
                hint: "The link is permanent; add new columns instead of changing these.".into(),
            });
        }
        if disabled {
            return Err(guard_trigger_violation(
                &linked_name,
                "renamed, replaced or disabled",
            ));
        }
        Ok(())
    };
    identity::as_payment_owner(check).or_raise()
}

fn guard_trigger_violation(table: &str, what: &str) -> PaymentError {
    PaymentError::LinkViolation {
        message: format!("the guard triggers on {table}, the linked order table, cannot be {what}"),
        hint: "They keep orders that have payments from being deleted; only DROP EXTENSION \
               pg_payment CASCADE removes them."
            .into(),
    }
}

/// What this command drops of the link: the table, a linked column, or a guard trigger.
const DROPPED_LINKED: &str = "\
    SELECT l.table_name, \
           pg_catalog.bool_or(d.object_type = 'table' AND d.objid = l.order_table), \
           pg_catalog.bool_or(d.object_type = 'table column' AND d.objid = l.order_table \
                              AND d.address_names[3] = ANY (ARRAY[l.id_column, l.amount_column, l.user_column, \
                                                                  l.status_column, l.currency_column]::text[])), \
           pg_catalog.bool_or(d.object_type = 'trigger' AND d.address_names[3] = ANY ($1) \
                              AND pg_catalog.format('%I.%I', d.address_names[1], d.address_names[2]) = l.table_name) \
      FROM payment.order_link l, pg_catalog.pg_event_trigger_dropped_objects() d \
     GROUP BY l.table_name";

/// sql_drop: the linked table, a linked column, or a guard trigger.
#[pg_extern(sql = false)]
fn guard_order_link_drop() {
    if in_own_script() {
        return;
    }
    let check = || -> Result<()> {
        let names: Vec<&str> = GUARD_TRIGGER_NAMES.to_vec();
        let row = Spi::connect(|client| -> Result<Option<(String, bool, bool, bool)>> {
            let mut rows = client.select(DROPPED_LINKED, Some(1), &[names.into()])?;
            let Some(row) = rows.next() else {
                return Ok(None);
            };
            Ok(Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<bool>(2)?.unwrap_or(false),
                row.get::<bool>(3)?.unwrap_or(false),
                row.get::<bool>(4)?.unwrap_or(false),
            )))
        })?;
        match row {
            Some((table, true, _, _)) => Err(PaymentError::LinkViolation {
                message: format!("{table} is the linked order table and cannot be dropped"),
                hint: "Payments refer to its orders; the link is permanent.".into(),
            }),
            Some((table, _, true, _)) => Err(PaymentError::LinkViolation {
                message: format!("the linked columns of {table} cannot be dropped"),
                hint: "The link is permanent; add new columns instead of changing these.".into(),
            }),
            Some((table, _, _, true)) => Err(guard_trigger_violation(&table, "dropped")),
            _ => Ok(()),
        }
    };
    identity::as_payment_owner(check).or_raise()
}
