//! `link_order_table`: the one-time link between the app's order table and the payments.
//!
//! It runs with the caller's rights: the table's owner (a member of `payment_admin`) is
//! checked and creates the row guards on its table; the link row is written as
//! `payment_owner`, which is granted nothing on the table.

use crate::error::{OrRaise, PaymentError, Result};
use crate::store::schema_version::require_current;
use crate::store::{self, identity, orders};
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
    currency: Option<&str>,
) -> Result<()> {
    let currency = match currency {
        Some(c) => Some(crate::money::normalize_currency(c.trim())?),
        None => None,
    };
    if currency.is_some() && currency_column.is_some() {
        return Err(PaymentError::invalid_with_hint(
            "give either currency_column or currency, not both",
            "currency_column names the column holding each order's currency; currency is the one \
             currency of all orders.",
        ));
    }
    let (table_name, relkind, persistence, is_owner) = Spi::connect(|client| -> Result<_> {
        let row = client
            .select(
                "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), c.relkind::text, \
                        c.relpersistence::text, pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') \
                   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  WHERE c.oid = $1",
                Some(1),
                &[order_table.into()],
            )?
            .first();
        Ok((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<String>(3)?.unwrap_or_default(),
            row.get::<bool>(4)?.unwrap_or(false),
        ))
    })?;
    match relkind.as_str() {
        "r" => {}
        "p" => {
            return Err(PaymentError::invalid_with_hint(
                format!("{table_name} is a partitioned table, which pg_payment cannot link"),
                "Link a plain table: renewal orders are inserted into it and its rows are guarded by row triggers.",
            ))
        }
        _ => return Err(PaymentError::invalid(format!("{table_name} is not a table"))),
    }
    // A temporary table vanishes with its session, and the link is permanent.
    if persistence == "t" {
        return Err(PaymentError::invalid_with_hint(
            format!("{table_name} is a temporary table, which cannot be linked"),
            "Link the permanent table that holds the orders.",
        ));
    }
    if !is_owner {
        return Err(PaymentError::PermissionDenied {
            message: format!("only the owner of {table_name} can link it"),
            hint: Some("Call link_order_table as the role that owns the table.".into()),
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
        currency: currency.clone(),
    };
    let linked = identity::as_payment_owner(|| -> Result<bool> {
        if let Some(existing) = Spi::connect(orders::link)? {
            let existing = orders::OrderLink {
                table_sql: String::new(),
                ..existing
            };
            if existing == wanted {
                return Ok(true);
            }
            // A link that 0.1.0 made with no currency is completed, once, by the same call
            // with a currency or a currency column.
            let completes = existing.currency.is_none()
                && existing.currency_column.is_none()
                && (wanted.currency.is_some() || wanted.currency_column.is_some())
                && orders::OrderLink {
                    currency: None,
                    currency_column: None,
                    ..wanted.clone()
                } == existing;
            if completes {
                Spi::run_with_args(
                    "UPDATE payment.order_link SET currency = $1, currency_column = $2, column_signature = $3",
                    &[
                        currency.as_deref().into(),
                        currency_column.into(),
                        signature.as_str().into(),
                    ],
                )?;
                return Ok(true);
            }
            return Err(PaymentError::LinkViolation {
                message: format!(
                    "the order table is already linked ({}), and a link is permanent",
                    existing.table_sql
                ),
                hint: "Payments refer to those orders; call link_order_table again only with the same arguments."
                    .into(),
            });
        }
        // An order's currency is always known: without it, create_payment(order, 'jpy', 10)
        // for an order priced 10.00 (meant as dollars) would charge 10 yen.
        if currency.is_none() && currency_column.is_none() {
            return Err(PaymentError::invalid_with_hint(
                "the link needs the orders' currency",
                "Pass currency => 'usd' (one currency for all orders) or currency_column => 'currency' \
                 (a text column holding each order's currency).",
            ));
        }
        Spi::run_with_args(
            "INSERT INTO payment.order_link (order_table, table_name, id_column, amount_column, user_column, \
                                             status_column, currency_column, paid_status, column_signature, \
                                             currency) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
                currency.as_deref().into(),
            ],
        )?;
        Ok(false)
    })?;
    if linked {
        return Ok(());
    }
    // The row guards, created with the caller's rights (the table's owner, a member of
    // payment_admin, which may execute the guard function). payment_owner is granted
    // nothing on the table: the extension reads and writes it as its owner.
    for statement in GUARD_TRIGGERS {
        let ddl = store::query_value::<String>(statement, &[order_table.into(), id_column.into()])?
            .ok_or_else(|| {
                PaymentError::Internal("the guard trigger's DDL came out NULL".into())
            })?;
        Spi::run(&ddl)?;
    }
    Ok(())
}

/// The DDL of the two row guards on the linked table (`$1` the table, `$2` the id column),
/// quoted by Postgres itself.
const GUARD_TRIGGERS: [&str; 2] = [
    "SELECT pg_catalog.format('CREATE TRIGGER pg_payment_guard_rows BEFORE DELETE OR UPDATE OF %I ON %s \
                               FOR EACH ROW EXECUTE FUNCTION payment.guard_order_rows(%L)', $2, $1::regclass, $2)",
    "SELECT pg_catalog.format('CREATE TRIGGER pg_payment_guard_truncate BEFORE TRUNCATE ON %s \
                               FOR EACH STATEMENT EXECUTE FUNCTION payment.guard_order_rows(%L)', $1::regclass, $2)",
];

fn name<'a>(value: Option<&'a CStr>, what: &'static str) -> Result<&'a str> {
    value
        .ok_or(PaymentError::NullArgument(what))?
        .to_str()
        .map_err(|_| PaymentError::invalid(format!("{what} is not valid UTF-8")))
}

/// Link the application's order table, once. See DESIGN.md for what is validated.
/// Its SQL signature (regclass and name arguments, with defaults) is in sql/api.sql.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn link_order_table_currency(
    order_table: Option<pg_sys::Oid>,
    id_column: Option<&CStr>,
    amount_column: Option<&CStr>,
    user_column: Option<&CStr>,
    status_column: Option<&CStr>,
    currency_column: Option<&CStr>,
    paid_status: Option<&str>,
    currency: Option<&str>,
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
            currency,
        )
    };
    run().or_raise()
}

/// 0.1.0's seven-argument `link_order_table` (its released script binds this symbol): kept
/// for a database still on 0.1.0's schema, where it refuses (55000) until the update.
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
    link_order_table_currency(
        order_table,
        id_column,
        amount_column,
        user_column,
        status_column,
        currency_column,
        paid_status,
        None,
    )
}
