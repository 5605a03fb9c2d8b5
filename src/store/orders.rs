//! The application's linked order table.

use super::Statement;
use crate::error::{PaymentError, Result};
use crate::store::{first_value, identity};
use pgrx::pg_sys;
use pgrx::prelude::*;
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
    /// The currency of every order, when the table has no currency column.
    pub currency: Option<String>,
}

const SELECT_LINK: &str = "\
    SELECT order_table::oid, order_table::text, id_column::text, amount_column::text, user_column::text, \
           status_column::text, currency_column::text, paid_status, currency \
      FROM payment.order_link";

pub fn link(client: &SpiClient<'_>) -> Result<Option<OrderLink>> {
    let mut rows = client.select(SELECT_LINK, Some(1), &[])?;
    let Some(row) = rows.next() else {
        return Ok(None);
    };
    Ok(Some(OrderLink {
        table: super::required(row.get(1)?, "order_link.order_table")?,
        table_sql: super::required(row.get(2)?, "order_link.order_table")?,
        id_column: super::required(row.get(3)?, "order_link.id_column")?,
        amount_column: super::required(row.get(4)?, "order_link.amount_column")?,
        user_column: super::required(row.get(5)?, "order_link.user_column")?,
        status_column: super::required(row.get(6)?, "order_link.status_column")?,
        currency_column: row.get(7)?,
        paid_status: super::required(row.get(8)?, "order_link.paid_status")?,
        currency: row.get(9)?,
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
/// left to their defaults, so the copy does not collide with the original). Returns the
/// INSERT, quoted by Postgres: `$1` the order copied, `$2` the paid status.
const RENEWAL_INSERT: &str = "\
    WITH copied AS ( \
        SELECT COALESCE(pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum), '') AS cols \
          FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
           AND a.attgenerated = '' AND a.attidentity = '' \
           AND a.attname::text <> $2 AND a.attname::text <> $3 \
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                            WHERE i.indrelid = a.attrelid AND i.indisunique AND a.attnum = ANY (i.indkey))) \
    SELECT pg_catalog.format('INSERT INTO %s (%s%I) SELECT %s$2 FROM %s WHERE %I = $1 RETURNING %I::int8', \
                             $1::regclass, CASE WHEN cols = '' THEN '' ELSE cols || ', ' END, $3, \
                             CASE WHEN cols = '' THEN '' ELSE cols || ', ' END, $1::regclass, $2, $2) \
      FROM copied";

const TABLE_OWNER: &str = "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1";

/// The linked table's owner, as it is now: the role that the extension reads and writes the
/// table as (see store::identity).
fn table_owner(link: &OrderLink) -> Result<pg_sys::Oid> {
    crate::store::query_value::<pg_sys::Oid>(TABLE_OWNER, &[link.table.into()])?.ok_or_else(|| {
        PaymentError::NotConfigured {
            message: format!("the linked order table {} no longer exists", link.table_sql),
            hint: "Restore the table; the link is permanent.".into(),
        }
    })
}

/// Insert a new order row, a copy of `order_id` with the paid status, as the table's owner;
/// returns its id.
pub fn copy_for_renewal(client: &mut SpiClient<'_>, order_id: i64) -> Result<i64> {
    let link = require_link(client)?;
    let sql = first_value::<String>(client.select(
        RENEWAL_INSERT,
        Some(1),
        &[
            link.table.into(),
            link.id_column.as_str().into(),
            link.status_column.as_str().into(),
        ],
    )?)?
    .ok_or_else(|| PaymentError::Internal("the renewal INSERT came out NULL".into()))?;
    let owner = table_owner(&link)?;
    let new_id = identity::as_table_owner(owner, || {
        Spi::connect_mut(|client| {
            first_value::<i64>(client.update(
                sql.as_str(),
                Some(1),
                &[order_id.into(), link.paid_status.as_str().into()],
            )?)
        })
    });
    new_id.ok_or_else(|| {
        PaymentError::NotFound(format!(
            "order {order_id} of this subscription no longer exists in {}, so its renewal cannot be copied",
            link.table_sql
        ))
    })
}

static INSERT_ORDER_LOCK: Statement = Statement::new(
    "INSERT INTO payment.order_locks (order_id) VALUES ($1) ON CONFLICT DO NOTHING",
    &[crate::store::INT8],
);
static ORDER_LOCK: Statement = Statement::new(
    "SELECT 1 FROM payment.order_locks WHERE order_id = $1 FOR UPDATE",
    &[crate::store::INT8],
);

/// The transaction-long lock that payment actions on one order take: a row lock in a table
/// only payment_owner may write (an advisory lock could be taken by any role that knows
/// the order id, and the app's own order row is the app's to update meanwhile). The INSERT
/// waits for a racing transaction that is inserting the same row. A webhook that cannot
/// place an object of ours takes it too: it then waits for the transaction that is creating
/// the object (Stripe may answer, and send the event, before that transaction commits).
pub fn take_order_lock(client: &mut SpiClient<'_>, order_id: i64) -> Result<()> {
    let insert = crate::store::plan(client, &INSERT_ORDER_LOCK)?;
    client.update(insert, None, &[order_id.into()])?;
    let lock = crate::store::plan(client, &ORDER_LOCK)?;
    client.update(lock, None, &[order_id.into()])?;
    Ok(())
}

/// Price, currency and user of an order, as its SELECT returns them.
type OrderRow = (Option<String>, Option<String>, Option<String>);

/// What a payment needs to know of an order.
#[derive(Debug, Clone)]
pub struct Order {
    /// The price as text, exactly as stored (major units).
    pub price: String,
    pub currency: Option<String>,
    pub user: Option<String>,
}

/// The SELECT of one order, quoted by Postgres: `$1` the table, `$2`..`$5` the id, amount,
/// user and currency columns (the currency may be NULL).
const ORDER_SELECT: &str = "\
    SELECT pg_catalog.format('SELECT %I::numeric::text, %s, %I::text FROM %s WHERE %I = $1', \
                             $3, CASE WHEN $5 IS NULL THEN 'NULL::text' ELSE pg_catalog.format('%I::text', $5) END, $4, \
                             $1::regclass, $2)";

/// Read an order through the link, as the table's owner. Serialises payment actions on the
/// same order (see `take_order_lock`), so two concurrent calls count earlier attempts alike
/// and cannot both create one.
pub fn lock_order(client: &mut SpiClient<'_>, link: &OrderLink, order_id: i64) -> Result<Order> {
    take_order_lock(client, order_id)?;
    let sql = first_value::<String>(client.select(
        ORDER_SELECT,
        Some(1),
        &[
            link.table.into(),
            link.id_column.as_str().into(),
            link.amount_column.as_str().into(),
            link.user_column.as_str().into(),
            link.currency_column.as_deref().into(),
        ],
    )?)?
    .ok_or_else(|| PaymentError::Internal("the order SELECT came out NULL".into()))?;
    let owner = table_owner(link)?;
    let row = identity::as_table_owner(owner, || {
        // `update`, not `select`: a fresh snapshot, taken after the order lock was granted.
        Spi::connect_mut(|client| -> Result<Option<OrderRow>> {
            let mut rows = client.update(sql.as_str(), Some(1), &[order_id.into()])?;
            match rows.next() {
                None => Ok(None),
                Some(row) => Ok(Some((row.get(1)?, row.get(2)?, row.get(3)?))),
            }
        })
    });
    let (price, currency, user) = row.ok_or_else(|| {
        PaymentError::NotFound(format!(
            "order {order_id} does not exist in {}",
            link.table_sql
        ))
    })?;
    Ok(Order {
        price: price
            .ok_or_else(|| PaymentError::invalid(format!("order {order_id} has no price")))?,
        // From the order's own column, or the link's one currency for all orders; None only
        // for a link that 0.1.0 made with neither (health() warns about it).
        currency: currency.or_else(|| link.currency.clone()),
        user,
    })
}
