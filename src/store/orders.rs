//! The application's linked order table.

use crate::error::{PaymentError, Result};
use crate::store::first_value;
use pgrx::pg_sys;
use pgrx::spi::SpiClient;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLink {
    pub table: pg_sys::Oid,
    /// Qualified, quoted name, as `regclass` prints it with the pinned search_path.
    pub table_sql: String,
    pub id_column: String,
    pub amount_column: String,
    pub user_column: String,
    pub status_column: String,
    pub currency_column: Option<String>,
    pub paid_status: String,
}

const SELECT_LINK: &str = "\
    SELECT order_table::oid, order_table::text, id_column::text, amount_column::text, user_column::text, \
           status_column::text, currency_column::text, paid_status \
      FROM payment.order_link";

pub fn link(client: &SpiClient<'_>) -> Result<Option<OrderLink>> {
    let mut rows = client.select(SELECT_LINK, Some(1), &[])?;
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(OrderLink {
        table: row.get(1)?.unwrap_or(pg_sys::Oid::INVALID),
        table_sql: row.get(2)?.unwrap_or_default(),
        id_column: row.get(3)?.unwrap_or_default(),
        amount_column: row.get(4)?.unwrap_or_default(),
        user_column: row.get(5)?.unwrap_or_default(),
        status_column: row.get(6)?.unwrap_or_default(),
        currency_column: row.get(7)?,
        paid_status: row.get(8)?.unwrap_or_default(),
    }))
}

pub fn require_link(client: &SpiClient<'_>) -> Result<OrderLink> {
    link(client)?.ok_or_else(|| PaymentError::NotConfigured {
        message: "no order table is linked".into(),
        hint: "Run SELECT payment.link_order_table('your_orders_table') as the table's owner."
            .into(),
    })
}

/// Columns a renewal copies from the subscription's order: everything but the id, the
/// status, identity and generated columns, and columns under a unique index (those are
/// left to their defaults, so the copy does not collide with the original).
const COPYABLE_COLUMNS: &str = "\
    SELECT COALESCE(pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum), '') \
      FROM pg_catalog.pg_attribute a \
     WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
       AND a.attgenerated = '' AND a.attidentity = '' \
       AND a.attname::text <> $2 AND a.attname::text <> $3 \
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                        WHERE i.indrelid = a.attrelid AND i.indisunique AND a.attnum = ANY (i.indkey))";

/// Insert a new order row, a copy of `order_id` with the paid status; returns its id.
pub fn copy_for_renewal(client: &mut SpiClient<'_>, order_id: i64) -> Result<i64> {
    let link = require_link(client)?;
    let columns: String = first_value::<String>(client.select(
        COPYABLE_COLUMNS,
        Some(1),
        &[
            link.table.into(),
            link.id_column.as_str().into(),
            link.status_column.as_str().into(),
        ],
    )?)?
    .unwrap_or_default();
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let (id, status) = (quote(&link.id_column), quote(&link.status_column));
    let sep = if columns.is_empty() { "" } else { ", " };
    let sql = format!(
        "INSERT INTO {table} ({columns}{sep}{status}) \
         SELECT {columns}{sep}$2 FROM {table} WHERE {id} = $1 RETURNING {id}::int8",
        table = link.table_sql
    );
    let new_id = first_value::<i64>(client.update(
        sql.as_str(),
        Some(1),
        &[order_id.into(), link.paid_status.as_str().into()],
    )?)?;
    new_id.ok_or_else(|| {
        PaymentError::NotFound(format!(
            "order {order_id} of this subscription no longer exists in {}, so its renewal cannot be copied",
            link.table_sql
        ))
    })
}

const ORDER_LOCK: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock(1885434221, pg_catalog.hashint8($1))";

/// The transaction-long lock that payment actions on one order take. A webhook that cannot
/// place an object of ours takes it too: it then waits for the transaction that is creating
/// the object (Stripe may answer, and send the event, before that transaction commits).
pub fn take_order_lock(client: &mut SpiClient<'_>, order_id: i64) -> Result<()> {
    let stmt = crate::store::plan(client, ORDER_LOCK, &[crate::store::INT8])?;
    client.update(stmt, None, &[order_id.into()])?;
    Ok(())
}

/// What a payment needs to know of an order.
#[derive(Debug, Clone)]
pub struct Order {
    /// The price as text, exactly as stored (major units).
    pub price: String,
    pub currency: Option<String>,
    pub user: Option<String>,
}

/// Read an order through the link. Serialises payment actions on the same order (an
/// advisory lock, not a row lock: the app may keep updating its order meanwhile), so two
/// concurrent calls count earlier attempts alike and cannot both create one.
pub fn lock_order(client: &mut SpiClient<'_>, link: &OrderLink, order_id: i64) -> Result<Order> {
    take_order_lock(client, order_id)?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let currency = match &link.currency_column {
        Some(c) => format!("{}::text", quote(c)),
        None => "NULL::text".into(),
    };
    let sql = format!(
        "SELECT {amount}::numeric::text, {currency}, {user}::text FROM {table} WHERE {id} = $1",
        amount = quote(&link.amount_column),
        user = quote(&link.user_column),
        table = link.table_sql,
        id = quote(&link.id_column),
    );
    let mut rows = client.update(sql.as_str(), Some(1), &[order_id.into()])?;
    let row = rows.next().ok_or_else(|| {
        PaymentError::NotFound(format!(
            "order {order_id} does not exist in {}",
            link.table_sql
        ))
    })?;
    let price: Option<String> = row.get(1)?;
    Ok(Order {
        price: price
            .ok_or_else(|| PaymentError::invalid(format!("order {order_id} has no price")))?,
        currency: row.get(2)?,
        user: row.get(3)?,
    })
}
