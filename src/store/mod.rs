//! Database access shared by the domain: statements prepared once per backend,
//! subtransactions, and running code as another role.

use crate::error::{PaymentError, Result};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::CaughtError;
use pgrx::pg_sys::{self, PgBuiltInOids, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

pub mod cache;
pub mod events;
pub mod identity;
pub mod orders;
pub mod payments;
pub mod recurring;
pub mod refunds;
pub mod schema_version;
pub mod secrets;
pub mod sync_state;

pub const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
pub const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
pub const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
pub const BOOL: PgOid = PgOid::BuiltIn(PgBuiltInOids::BOOLOID);
pub const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID);

/// One SQL statement of the extension, declared with its parameter types, so the two can
/// never drift apart. Declared `static`: its address is its identity in the plan cache.
pub struct Statement {
    pub sql: &'static str,
    pub types: &'static [PgOid],
}

impl Statement {
    pub const fn new(sql: &'static str, types: &'static [PgOid]) -> Statement {
        Statement { sql, types }
    }
}

thread_local! {
    /// Plans live as long as the backend; Postgres re-plans them itself after DDL.
    static PLANS: RefCell<HashMap<usize, &'static OwnedPreparedStatement>> = RefCell::new(HashMap::new());
}

/// A statement prepared on first use in this backend and kept. Keyed by the `Statement`'s
/// address, so each call site costs one hash lookup.
pub fn plan(
    client: &SpiClient<'_>,
    statement: &'static Statement,
) -> Result<&'static OwnedPreparedStatement> {
    let key = std::ptr::from_ref(statement) as usize;
    if let Some(plan) = PLANS.with(|p| p.borrow().get(&key).copied()) {
        return Ok(plan);
    }
    let plan: &'static OwnedPreparedStatement = Box::leak(Box::new(
        client.prepare_mut(statement.sql, statement.types)?.keep(),
    ));
    PLANS.with(|p| p.borrow_mut().insert(key, plan));
    Ok(plan)
}

/// The first column of the first row, or None when there is no row (pgrx's `get_one`
/// treats an empty result as an error).
pub fn first_value<T: FromDatum + IntoDatum>(table: SpiTupleTable<'_>) -> Result<Option<T>> {
    if table.is_empty() {
        return Ok(None);
    }
    Ok(table.first().get_one::<T>()?)
}

/// A NOT NULL column's value: NULL there is a broken invariant, never a default.
pub fn required<T>(value: Option<T>, column: &str) -> Result<T> {
    value.ok_or_else(|| PaymentError::Internal(format!("{column} is NULL")))
}

/// One value from a one-off query (not for the hot path).
pub fn query_value<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[DatumWithOid<'_>],
) -> Result<Option<T>> {
    Spi::connect_mut(|client| first_value(client.update(sql, Some(1), args)?))
}

/// What a failed subtransaction raised, kept to record it.
#[derive(Debug, Clone)]
pub struct Failure {
    pub sqlstate: String,
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.sqlstate)
    }
}

/// Run `f` in a subtransaction: on success its work stays, on error it is rolled back and
/// the error returned. A query cancel or statement timeout is not a failure of the work:
/// it is raised again, so a cancel never gets recorded as a failed event.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> std::result::Result<R, Failure> {
    // SAFETY: the same dance as PL/pgSQL's exception blocks (pl_exec.c): keep the caller's
    // memory context and resource owner, and restore them whichever way the block ends.
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    unsafe {
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
    }
    let outcome = PgTryBuilder::new(AssertUnwindSafe(|| Ok::<R, Box<CaughtError>>(f())))
        .catch_others(|caught| Err(Box::new(caught)))
        .execute();
    match outcome {
        Ok(value) => {
            unsafe {
                pg_sys::ReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
            }
            Ok(value)
        }
        Err(caught) => {
            unsafe {
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
                pg_sys::MemoryContextSwitchTo(context);
                pg_sys::CurrentResourceOwner = owner;
            }
            let report = match caught.as_ref() {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            let code = report.sql_error_code();
            if matches!(
                code,
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED | PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN
            ) {
                (*caught).rethrow();
            }
            Err(Failure {
                sqlstate: sqlstate_text(code),
                message: report.message().to_string(),
            })
        }
    }
}

fn sqlstate_text(code: PgSqlErrorCode) -> String {
    // MAKE_SQLSTATE packs five 6-bit characters, lowest first.
    let mut v = code as i32;
    let mut s = String::with_capacity(5);
    for _ in 0..5 {
        s.push((((v & 0x3F) as u8) + b'0') as char);
        v >>= 6;
    }
    s
}

const INSTALLATION_IDS: &str = "SELECT id::text FROM payment.installation ORDER BY created_at, id";

thread_local! {
    static INSTALLATION: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// This database's installation ids, oldest (the one new objects carry) first; read once
/// per backend. There are more than one only after a restore (see sql/tables.sql).
fn installation_ids() -> Result<Vec<String>> {
    if let Some(ids) = INSTALLATION.with(|i| i.borrow().clone()) {
        return Ok(ids);
    }
    let ids = Spi::connect(|client| -> Result<Vec<String>> {
        let mut ids = Vec::with_capacity(1);
        for row in client.select(INSTALLATION_IDS, None, &[])? {
            if let Some(id) = row.get::<String>(1)? {
                ids.push(id);
            }
        }
        Ok(ids)
    })?;
    INSTALLATION.with(|i| *i.borrow_mut() = Some(ids.clone()));
    Ok(ids)
}

/// The id new Stripe objects carry in their metadata and idempotency keys.
pub fn installation_id() -> Result<String> {
    installation_ids()?.into_iter().next().ok_or_else(|| {
        PaymentError::NotFound("payment.installation is empty; reinstall pg_payment".into())
    })
}

/// Is `id` one of this database's installation ids?
pub fn is_our_installation(id: &str) -> Result<bool> {
    Ok(installation_ids()?.iter().any(|ours| ours == id))
}
