//! `link_order_table`: the one-time link between the app's order table and the payments.
//!
//! It runs with the caller's rights (not SECURITY DEFINER): only the table's owner can grant
//! `payment_owner` what it needs on the table, and `payment_owner` cannot grant it itself.
//! The link row is then written as `payment_owner`.

use crate::error::{OrRaise, PaymentError, Result};
use crate::store::schema_version::require_current;
use crate::store::{self, orders};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

struct Column {
    type_name: String,
    type_oid: pg_sys::Oid,
    has_default: bool,
}

const COLUMN: &str = "\
    SELECT pg_catalog.format_type(a.atttypid, a.atttypmod), \
           CASE WHEN t.typbasetype <> 0 THEN t.typbasetype ELSE t.oid END, \
           (a.atthasdef OR a.attidentity <> '') \
      FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
     WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped";

fn column(table: pg_sys::Oid, table_name: &str, name: &str) -> Result<Column> {
    Spi::connect(|client| -> Result<Column> {
        let mut rows = client.select(COLUMN, Some(1), &[table.into(), name.into()])?;
        let row = rows.next().ok_or_else(|| {
            PaymentError::invalid_with_hint(
                format!("{table_name} has no column \"{name}\""),
                "Name the columns with link_order_table(table, id_column => ..., amount_column => ..., \
                 user_column => ..., status_column => ...).",
            )
        })?;
        Ok(Column {
            type_name: row.get(1)?.unwrap_or_default(),
            type_oid: row.get(2)?.unwrap_or(pg_sys::Oid::INVALID),
            has_default: row.get(3)?.unwrap_or(false),
        })
    })
}

fn is_integer(oid: pg_sys::Oid) -> bool {
    [pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID].contains(&oid)
}

fn is_text(oid: pg_sys::Oid) -> bool {
    [pg_sys::TEXTOID, pg_sys::VARCHAROID, pg_sys::BPCHAROID].contains(&oid)
}

/// Validate the table and its columns; returns the text that the DDL guard compares later.
fn validate(
    table: pg_sys::Oid,
    table_name: &str,
    columns: &[(&str, Option<&str>)],
) -> Result<String> {
    let mut signature = Vec::new();
    for (role, name) in columns {
        let Some(name) = name else { continue };
        let col = column(table, table_name, name)?;
        let ok = match *role {
            "id" => {
                if !is_integer(col.type_oid) {
                    return Err(PaymentError::invalid(format!(
                        "the id column \"{name}\" is {}, not smallint, integer or bigint",
                        col.type_name
                    )));
                }
                if !col.has_default {
                    return Err(PaymentError::invalid_with_hint(
                        format!("the id column \"{name}\" has no default"),
                        "Make it an identity column (GENERATED ALWAYS AS IDENTITY) or a serial: \
                         renewals insert new orders and take their id from the default.",
                    ));
                }
                true
            }
            "amount" => is_integer(col.type_oid) || col.type_oid == pg_sys::NUMERICOID,
            "status" | "currency" => is_text(col.type_oid),
            _ => true,
        };
        if !ok {
            let hint = match *role {
                "amount" => {
                    "Store prices as numeric in major units (99.99): money depends on lc_monetary \
                             and floating point is inexact."
                }
                _ => "Use a text or varchar column.",
            };
            return Err(PaymentError::invalid_with_hint(
                format!(
                    "the {role} column \"{name}\" is {}, which pg_payment cannot use",
                    col.type_name
                ),
                hint,
            ));
        }
        signature.push(format!("{name} {}", col.type_name));
    }
    Ok(signature.join(", "))
}

#[allow(clippy::too_many_arguments)]
fn link(
    order_table: pg_sys::Oid,
    id_column: &str,
    amount_column: &str,
    user_column: &str,
    status_column: &str,
    currency_column: Option<&str>,
    paid_status: &str,
) -> Result<()> {
    let (table_name, relkind, is_owner, schema_usage) = Spi::connect(|client| -> Result<_> {
        let row = client
            .select(
                "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::text, \
                        pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'), \
                        pg_catalog.has_schema_privilege('payment_owner', n.oid, 'USAGE') \
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid = $1",
                Some(1),
                &[order_table.into()],
            )?
            .first();
        Ok((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<bool>(3)?.unwrap_or(false),
            row.get::<bool>(4)?.unwrap_or(false),
        ))
    })?;
    if !matches!(relkind.as_str(), "r" | "p") {
        return Err(PaymentError::invalid(format!(
            "{table_name} is not a table"
        )));
    }
    if !is_owner {
        return Err(PaymentError::PermissionDenied {
            message: format!("only the owner of {table_name} can link it"),
            hint: Some("Call link_order_table as the role that owns the table.".into()),
        });
    }
    if !schema_usage {
        return Err(PaymentError::PermissionDenied {
            message: format!("payment_owner cannot use the schema of {table_name}"),
            hint: Some(
                "GRANT USAGE ON SCHEMA <its schema> TO payment_owner, then link again.".into(),
            ),
        });
    }
    if paid_status.is_empty() {
        return Err(PaymentError::invalid("paid_status must not be empty"));
    }
    let signature = validate(
        order_table,
        &table_name,
        &[
            ("id", Some(id_column)),
            ("amount", Some(amount_column)),
            ("user", Some(user_column)),
            ("status", Some(status_column)),
            ("currency", currency_column),
        ],
    )?;

    let wanted = orders::OrderLink {
        table: order_table,
        table_sql: String::new(),
        id_column: id_column.into(),
        amount_column: amount_column.into(),
        user_column: user_column.into(),
        status_column: status_column.into(),
        currency_column: currency_column.map(Into::into),
        paid_status: paid_status.into(),
    };
    let owner = store::payment_owner()?;
    let existing = store::as_role(owner, || Spi::connect(orders::link))?;
    if let Some(existing) = existing {
        let same = orders::OrderLink {
            table_sql: String::new(),
            ..existing.clone()
        } == wanted;
        if same {
            return Ok(());
        }
        return Err(PaymentError::LinkViolation {
            message: format!("the order table is already linked ({}), and a link is permanent", existing.table_sql),
            hint: "Payments refer to those orders; call link_order_table again only with the same arguments."
                .into(),
        });
    }

    // Grants with the caller's rights: payment_owner reads orders, inserts renewal orders,
    // and may set their status.
    let quoted = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut ddl = vec![
        format!("GRANT SELECT, INSERT, REFERENCES ON {table_name} TO payment_owner"),
        format!(
            "GRANT UPDATE ({}) ON {table_name} TO payment_owner",
            quoted(status_column)
        ),
    ];
    let sequence = store::query_value::<String>(
        "SELECT pg_catalog.pg_get_serial_sequence($1, $2)",
        &[table_name.as_str().into(), id_column.into()],
    )?;
    if let Some(sequence) = sequence {
        ddl.push(format!(
            "GRANT USAGE ON SEQUENCE {sequence} TO payment_owner"
        ));
    }
    for stmt in &ddl {
        Spi::run(stmt)?;
    }

    store::as_role(owner, || -> Result<()> {
        Spi::run_with_args(
            "INSERT INTO payment.order_link (order_table, table_name, id_column, amount_column, user_column, \
                                             status_column, currency_column, paid_status, column_signature) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                order_table.into(),
                table_name.as_str().into(),
                id_column.into(),
                amount_column.into(),
                user_column.into(),
                status_column.into(),
                currency_column.into(),
                paid_status.into(),
                signature.as_str().into(),
            ],
        )?;
        Ok(())
    })?;
    // The row guard's function is executable by payment_admin, whose member the caller is
    // (or a superuser): the trigger is created with the caller's rights.
    let id = quoted(id_column);
    Spi::run(&format!(
        "CREATE TRIGGER pg_payment_guard_rows BEFORE DELETE OR UPDATE OF {id} ON {table_name} \
         FOR EACH ROW EXECUTE FUNCTION payment.guard_order_rows({lit})",
        lit = quote_literal(id_column)
    ))?;
    Spi::run(&format!(
        "CREATE TRIGGER pg_payment_guard_truncate BEFORE TRUNCATE ON {table_name} \
         FOR EACH STATEMENT EXECUTE FUNCTION payment.guard_order_rows({lit})",
        lit = quote_literal(id_column)
    ))?;
    Ok(())
}

fn name<'a>(value: Option<&'a CStr>, what: &'static str) -> Result<&'a str> {
    value
        .ok_or(PaymentError::NullArgument(what))?
        .to_str()
        .map_err(|_| PaymentError::invalid(format!("{what} is not valid UTF-8")))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Link the application's order table, once. See DESIGN.md for what is validated.
/// Its SQL signature (regclass and name arguments, with defaults) is in sql/api.sql.
#[pg_extern(sql = false)]
fn link_order_table(
    order_table: Option<pg_sys::Oid>,
    id_column: Option<&CStr>,
    amount_column: Option<&CStr>,
    user_column: Option<&CStr>,
    status_column: Option<&CStr>,
    currency_column: Option<&CStr>,
    paid_status: Option<&str>,
) {
    let run = || -> Result<()> {
        require_current()?;
        let currency_column = match currency_column {
            Some(_) => Some(name(currency_column, "currency_column")?),
            None => None,
        };
        link(
            order_table.ok_or(PaymentError::NullArgument("order_table"))?,
            name(id_column, "id_column")?,
            name(amount_column, "amount_column")?,
            name(user_column, "user_column")?,
            name(status_column, "status_column")?,
            currency_column,
            paid_status.ok_or(PaymentError::NullArgument("paid_status"))?,
        )
    };
    run().or_raise()
}
