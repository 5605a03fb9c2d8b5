//! The four system callbacks: the triggers on the payment tables that announce each change
//! of a row (NOTIFY) and run the business logic registered with `payment.add_callback`.
//!
//! The triggers act only on changes the extension itself makes (an event being applied, or
//! an API call): a `pg_dump` restore, or a row an owner inserts by hand, fires nothing.

mod changes;

use crate::error::{PaymentError, Result};
use crate::gucs;
use crate::store::cache::{self, CachedHandler};
use crate::store::Statement;
use crate::store::{self, identity, INT8};
use pgrx::prelude::*;
use pgrx::{pg_sys, JsonB};
use serde_json::json;
use std::cell::RefCell;
use std::ffi::CString;

/// Who is writing to the payment tables right now, in this backend.
#[derive(Debug, Clone, Default)]
pub struct Writer {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
}

thread_local! {
    static WRITER: RefCell<Option<Writer>> = const { RefCell::new(None) };
}

/// Mark the extension as the writer while `f` runs, so the triggers act.
pub fn while_writing<R>(writer: Writer, f: impl FnOnce() -> R) -> R {
    let previous = WRITER.with(|w| w.replace(Some(writer)));
    let previous = std::cell::Cell::new(previous);
    PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .finally(|| WRITER.with(|w| *w.borrow_mut() = previous.take()))
        .execute()
}

fn current_writer() -> Option<Writer> {
    WRITER.with(|w| w.borrow().clone())
}

/// `kind` as the callbacks table names it, for a change to `table`.
fn callback_kind(table: &str, inserted_renewal: bool) -> &'static str {
    match table {
        "refunds" => "refund",
        "recurring_payments" => "recurring_management",
        _ if inserted_renewal => "recurring_deduction",
        _ => "payment",
    }
}

/// AFTER INSERT or UPDATE on payments, refunds and recurring_payments. Its errors are
/// raised through the one error path (a failed event records their message and SQLSTATE).
#[pg_trigger(sql = false)]
fn on_status_change<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> std::result::Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    if let Err(e) = announce(trigger) {
        e.raise();
    }
    Ok(trigger.new())
}

fn announce(trigger: &pgrx::PgTrigger<'_>) -> Result<()> {
    let Some(writer) = current_writer() else {
        return Ok(());
    };
    let table = trigger
        .table_name()
        .map_err(|e| PaymentError::Internal(e.to_string()))?;
    let new = trigger
        .new()
        .ok_or_else(|| PaymentError::Internal("status trigger without a new row".into()))?;
    let id: i64 = store::required(get_i64(&new, "id")?, "id")?;
    let status: String = store::required(get_text(&new, "status")?, "status")?;
    let old = trigger.old();
    let previous_status: Option<String> = match &old {
        Some(old) => get_text(old, "status")?,
        None => None,
    };
    let inserted = old.is_none();
    let (previous, flag) = changes::previous(&table, old.as_ref(), &new)?;
    let order_id: Option<i64> = if table == "refunds" {
        let payment_id: i64 = get_i64(&new, "payment_id")?.unwrap_or_default();
        order_of_payment(payment_id)?
    } else {
        get_i64(&new, "order_id")?
    };
    let renewal =
        table == "payments" && inserted && get_i64(&new, "recurring_payment_id")?.is_some();

    notify(&table, id, order_id, &status, flag)?;

    let kind = callback_kind(&table, renewal);
    let handlers = handlers_for(kind)?;
    if handlers.is_empty() {
        return Ok(());
    }
    let row = row_json(&table, id)?;
    let callback = json!({
        "kind": kind,
        "event_id": writer.event_id,
        "event_type": writer.event_type,
        "table": table,
        "id": id,
        "order_id": order_id,
        "status": status,
        "previous_status": previous_status,
        "previous": previous,
        "row": row,
    });
    let mut callback = callback;
    if let Some(flag) = flag {
        callback["flag"] = flag.into();
    }
    for handler in handlers {
        run_handler(&handler, kind, &callback)?;
    }
    Ok(())
}

fn get_i64(tuple: &PgHeapTuple<'_, impl WhoAllocated>, column: &str) -> Result<Option<i64>> {
    tuple
        .get_by_name::<i64>(column)
        .map_err(|e| PaymentError::Internal(format!("{column}: {e}")))
}

fn get_text(tuple: &PgHeapTuple<'_, impl WhoAllocated>, column: &str) -> Result<Option<String>> {
    tuple
        .get_by_name::<String>(column)
        .map_err(|e| PaymentError::Internal(format!("{column}: {e}")))
}

extern "C-unwind" {
    /// async.h; what pg_notify() calls, without a query around it.
    fn Async_Notify(channel: *const std::ffi::c_char, payload: *const std::ffi::c_char);
}

static NEXT_CHANGE: Statement =
    Statement::new("SELECT pg_catalog.nextval('payment.change_seq')", &[]);

/// NOTIFY with no amounts, customers or secrets: any role may LISTEN. `seq` numbers the
/// change, so that Postgres never merges two identical notifications of one transaction,
/// and a row's notifications can be told apart in order.
fn notify(
    table: &str,
    id: i64,
    order_id: Option<i64>,
    status: &str,
    flag: Option<&str>,
) -> Result<()> {
    let seq = Spi::connect_mut(|client| -> Result<Option<i64>> {
        let stmt = store::plan(client, &NEXT_CHANGE)?;
        store::first_value::<i64>(client.update(stmt, Some(1), &[])?)
    })?;
    let mut payload =
        json!({"table": table, "id": id, "order_id": order_id, "status": status, "seq": seq});
    if let Some(flag) = flag {
        payload["flag"] = flag.into();
    }
    let payload = payload.to_string();
    let payload = CString::new(payload)
        .map_err(|_| PaymentError::Internal("NOTIFY payload has a NUL".into()))?;
    // The GUC's check hook keeps the channel a valid, NUL-free name.
    let channel = gucs::NOTIFY_CHANNEL
        .get()
        .unwrap_or_else(|| c"pg_payment".to_owned());
    // SAFETY: both strings are NUL-terminated and outlive the call; a Postgres error raised
    // inside becomes a Rust panic at the boundary instead of a longjmp through Rust frames.
    unsafe {
        pg_sys::ffi::pg_guard_ffi_boundary(|| Async_Notify(channel.as_ptr(), payload.as_ptr()))
    };
    Ok(())
}

static ORDER_OF_PAYMENT: Statement = Statement::new(
    "SELECT order_id FROM payment.payments WHERE id = $1",
    &[INT8],
);

fn order_of_payment(payment_id: i64) -> Result<Option<i64>> {
    Spi::connect(|client| -> Result<Option<i64>> {
        let stmt = store::plan(client, &ORDER_OF_PAYMENT)?;
        store::first_value::<i64>(client.select(stmt, Some(1), &[payment_id.into()])?)
    })
}

static ALL_HANDLERS: Statement = Statement::new(
    "\
    SELECT c.kind, c.handler::oid, p.proowner, c.handler::text \
      FROM payment.callbacks c \
      LEFT JOIN pg_catalog.pg_proc p ON p.oid = c.handler \
     ORDER BY c.created_at, c.handler::oid",
    &[],
);

fn load_handlers() -> Result<Vec<CachedHandler>> {
    Spi::connect(|client| -> Result<Vec<CachedHandler>> {
        let stmt = store::plan(client, &ALL_HANDLERS)?;
        let mut handlers = Vec::new();
        for row in client.select(stmt, None, &[])? {
            handlers.push(CachedHandler {
                kind: store::required(row.get(1)?, "callbacks.kind")?,
                oid: store::required(row.get(2)?, "callbacks.handler")?,
                owner: row.get(3)?,
                name: row.get::<String>(4)?.unwrap_or_default(),
            });
        }
        Ok(handlers)
    })
}

/// The handlers of `kind`, in registration order, from this backend's copy (store::cache).
fn handlers_for(kind: &str) -> Result<Vec<CachedHandler>> {
    Ok(cache::callbacks(load_handlers)?
        .into_iter()
        .filter(|h| h.kind == kind)
        .collect())
}

static ROW_JSON_PAYMENTS: Statement = Statement::new(
    "SELECT pg_catalog.to_jsonb(t) FROM payment.payments t WHERE id = $1",
    &[INT8],
);
static ROW_JSON_REFUNDS: Statement = Statement::new(
    "SELECT pg_catalog.to_jsonb(t) FROM payment.refunds t WHERE id = $1",
    &[INT8],
);
static ROW_JSON_RECURRING: Statement = Statement::new(
    "SELECT pg_catalog.to_jsonb(t) FROM payment.recurring_payments t WHERE id = $1",
    &[INT8],
);

fn row_json(table: &str, id: i64) -> Result<serde_json::Value> {
    let statement = match table {
        "refunds" => &ROW_JSON_REFUNDS,
        "recurring_payments" => &ROW_JSON_RECURRING,
        _ => &ROW_JSON_PAYMENTS,
    };
    Spi::connect(|client| -> Result<serde_json::Value> {
        let stmt = store::plan(client, statement)?;
        let row = store::first_value::<JsonB>(client.select(stmt, Some(1), &[id.into()])?)?;
        Ok(row.map(|j| j.0).unwrap_or(serde_json::Value::Null))
    })
}

/// Call the handler as its owner, not as payment_owner: it can then update the app's own
/// tables and cannot read the secrets. It runs in the transaction of the change, by OID
/// (a function of the same name elsewhere never stands in), in a restricted security
/// context and a settings frame of its own (store::identity).
fn run_handler(handler: &CachedHandler, kind: &str, callback: &serde_json::Value) -> Result<()> {
    // A regprocedure records no dependency: a dropped handler must fail loudly, never be
    // skipped, or the business logic silently stops running.
    let Some(owner) = handler.owner else {
        return Err(PaymentError::NotFound(format!(
            "the {kind} callback handler with oid {} no longer exists",
            handler.oid.to_u32()
        )));
    };
    // Running a superuser's function from an event would hand the relay superuser rights.
    if identity::is_superuser(owner) {
        return Err(PaymentError::PermissionDenied {
            message: format!(
                "the {kind} callback handler {} is owned by a superuser, and handlers never run as one",
                handler.name
            ),
            hint: Some(
                "ALTER FUNCTION ... OWNER TO the ordinary role that owns the app's tables, then \
                 retry_failed_events()."
                    .into(),
            ),
        });
    }
    let argument = JsonB(callback.clone());
    identity::as_handler_owner(owner, || {
        call_by_oid(handler.oid, argument);
        Ok(())
    });
    Ok(())
}

/// `handler(callback jsonb) → void` through fmgr, ignoring its (void) result.
fn call_by_oid(handler: pg_sys::Oid, argument: JsonB) {
    let datum = argument.into_datum();
    // SAFETY: the fmgr calling convention: a zeroed FunctionCallInfo with room for one
    // argument, filled as InitFunctionCallInfoData does, and the function looked up by
    // fmgr_info in the current memory context. Errors raised inside become Rust panics at
    // the pg_sys boundary and propagate as Postgres errors.
    unsafe {
        let mut flinfo: pg_sys::FmgrInfo = std::mem::zeroed();
        pg_sys::fmgr_info(handler, &mut flinfo);
        let size = std::mem::size_of::<pg_sys::FunctionCallInfoBaseData>()
            + std::mem::size_of::<pg_sys::NullableDatum>();
        let fcinfo = pg_sys::palloc0(size) as pg_sys::FunctionCallInfo;
        (*fcinfo).flinfo = &mut flinfo;
        (*fcinfo).fncollation = pg_sys::InvalidOid;
        (*fcinfo).nargs = 1;
        let args = (*fcinfo).args.as_mut_slice(1);
        args[0] = pg_sys::NullableDatum {
            value: datum.unwrap_or(pg_sys::Datum::from(0)),
            isnull: datum.is_none(),
        };
        let function = flinfo.fn_addr.expect("fmgr_info sets fn_addr");
        pg_sys::ffi::pg_guard_ffi_boundary(|| function(fcinfo));
        pg_sys::pfree(fcinfo.cast());
    }
}
