//! Per-backend copies of two tiny tables the hot path reads on every event: the webhook
//! secrets and the registered callbacks. They stay coherent through Postgres's own
//! invalidation messages: statement triggers on both tables send a relcache invalidation
//! at commit (and on rollback the backend replays its own), every backend drops its copies
//! when one arrives, and a change to any function (a dropped or re-owned handler) drops the
//! callbacks too. A copy is only ever rebuilt from committed data, by a query.

use super::secrets::WebhookSecrets;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

thread_local! {
    static WEBHOOK_SECRETS: RefCell<Option<WebhookSecrets>> = const { RefCell::new(None) };
    static CALLBACKS: RefCell<Option<Vec<CachedHandler>>> = const { RefCell::new(None) };
}

/// One registered handler; `owner` is None when the function is gone.
#[derive(Debug, Clone)]
pub struct CachedHandler {
    pub kind: String,
    pub oid: pg_sys::Oid,
    pub owner: Option<pg_sys::Oid>,
    /// Its qualified name, for messages.
    pub name: String,
}

/// Called from `_PG_init`.
pub fn register_invalidation_callbacks() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        );
        // Handlers are called by OID; a re-owned or dropped function drops the copy.
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::PROCOID as i32,
            Some(on_function_invalidation),
            pg_sys::Datum::from(0),
        );
    }
}

/// Any relcache invalidation drops both copies: they are refilled by one small query, and
/// the callback may not look anything up to be more selective.
#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    WEBHOOK_SECRETS.with(|c| c.borrow_mut().take());
    CALLBACKS.with(|c| c.borrow_mut().take());
}

#[pg_guard]
unsafe extern "C-unwind" fn on_function_invalidation(
    _arg: pg_sys::Datum,
    _cacheid: i32,
    _hash: u32,
) {
    CALLBACKS.with(|c| c.borrow_mut().take());
}

pub fn webhook_secrets<E>(
    load: impl FnOnce() -> Result<WebhookSecrets, E>,
) -> Result<WebhookSecrets, E> {
    if let Some(secrets) = WEBHOOK_SECRETS.with(|c| c.borrow().clone()) {
        return Ok(secrets);
    }
    let secrets = load()?;
    WEBHOOK_SECRETS.with(|c| *c.borrow_mut() = Some(secrets.clone()));
    Ok(secrets)
}

pub fn callbacks<E>(
    load: impl FnOnce() -> Result<Vec<CachedHandler>, E>,
) -> Result<Vec<CachedHandler>, E> {
    if let Some(handlers) = CALLBACKS.with(|c| c.borrow().clone()) {
        return Ok(handlers);
    }
    let handlers = load()?;
    CALLBACKS.with(|c| *c.borrow_mut() = Some(handlers.clone()));
    Ok(handlers)
}

/// Statement trigger on payment.secrets and payment.callbacks: tell every backend.
#[pg_trigger(sql = false)]
fn invalidate_payment_caches<'a>(
    trigger: &'a pgrx::PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, pgrx::PgTriggerError> {
    let relid = trigger.relation()?.oid();
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(None)
}
