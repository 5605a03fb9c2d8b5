//! Who the extension's code runs as: the trust boundary (DESIGN.md) in one place.
//!
//! Every function of the extension is SECURITY INVOKER and owned by the extension's owner;
//! its work runs as `payment_owner`, which owns nothing and holds only the privileges the
//! extension's own statements need. What the application wrote runs as the role that wrote
//! it, never as `payment_owner`:
//! - the linked order table is read and written as the table's owner, in a restricted
//!   security context with a pinned search_path, as PostgreSQL's own maintenance commands
//!   touch a user's table (its triggers, defaults, policies and casts run with its owner's
//!   rights, and cannot create temporary objects, SET ROLE, LISTEN, PREPARE or hold cursors);
//! - a callback handler runs as its owner, in a restricted security context and a settings
//!   frame of its own, so its `SET LOCAL` and temporary objects never reach the next handler
//!   or the caller.
//!
//! Each frame saves and restores the user id and security context however it ends. Its
//! settings frame is closed on success, undoing every setting made in it; on an error it is
//! left to the (sub)transaction abort,
//! as fmgr does for a function's SET clauses, so the settings still hold when the error is
//! logged (this is what keeps `log_min_error_statement = panic` in force for an error raised
//! by a function that takes a key).

use crate::error::{PaymentError, Result};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;

/// The search_path every frame of the extension's own code and of the app's table pins.
const PINNED_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// How a frame runs.
#[derive(Clone, Copy)]
pub struct Frame {
    pub role: pg_sys::Oid,
    /// SECURITY_RESTRICTED_OPERATION: for code the app's roles wrote.
    pub restricted: bool,
    /// Pin the search_path (for the app's table); a handler instead inherits the pinned
    /// path of the function that fires it, unless it has a `SET search_path` of its own.
    pub pin_search_path: bool,
    /// Settings made after the switch, so the privilege to set them is the frame role's.
    pub settings: &'static [(&'static CStr, &'static CStr)],
}

/// Run `f` in `frame`; an error of `f` is raised inside the frame.
pub fn run_in<R>(frame: Frame, f: impl FnOnce() -> Result<R>) -> R {
    let mut saved_user = pg_sys::Oid::INVALID;
    let mut saved_context = 0;
    // SAFETY: plain calls into the backend's own identity and GUC bookkeeping, in the order
    // fmgr_security_definer uses them.
    let nest_level = unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        let nest_level = pg_sys::NewGUCNestLevel();
        let mut context = saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32;
        if frame.restricted {
            context |= pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
        }
        pg_sys::SetUserIdAndSecContext(frame.role, context);
        nest_level
    };
    let result = PgTryBuilder::new(AssertUnwindSafe(|| {
        if frame.pin_search_path {
            set(c"search_path", PINNED_SEARCH_PATH);
        }
        for (name, value) in frame.settings {
            set(name, value);
        }
        match f() {
            Ok(value) => value,
            Err(e) => e.raise(),
        }
    }))
    .finally(|| unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) })
    .execute();
    // Every setting made in the frame ends with it, a `SET LOCAL` too (as after a
    // maintenance command's index or vacuum functions).
    unsafe { pg_sys::AtEOXact_GUC(false, nest_level) };
    result
}

fn set(name: &CStr, value: &CStr) {
    // SAFETY: NUL-terminated strings; an error is raised by Postgres (and caught by pgrx).
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
    }
}

/// The extension's own work, as `payment_owner`.
pub fn as_payment_owner<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let frame = Frame {
        role: payment_owner()?,
        restricted: false,
        pin_search_path: false,
        settings: &[],
    };
    Ok(run_in(frame, f))
}

/// The extension's own work on a key: as `payment_owner`, with a failing statement kept out
/// of the server log (`payment_owner` holds SET on that one superuser setting).
pub fn as_payment_owner_quietly<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let frame = Frame {
        role: payment_owner()?,
        restricted: false,
        pin_search_path: false,
        settings: &[(c"log_min_error_statement", c"panic")],
    };
    Ok(run_in(frame, f))
}

/// A statement on the app's table, as the table's owner.
pub fn as_table_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> Result<R>) -> R {
    let frame = Frame {
        role: owner,
        restricted: true,
        pin_search_path: true,
        settings: &[],
    };
    run_in(frame, f)
}

/// A callback handler, as its owner.
pub fn as_handler_owner<R>(owner: pg_sys::Oid, f: impl FnOnce() -> Result<R>) -> R {
    let frame = Frame {
        role: owner,
        restricted: true,
        pin_search_path: false,
        settings: &[],
    };
    run_in(frame, f)
}

/// The role the extension's code runs as, found once per backend.
pub fn payment_owner() -> Result<pg_sys::Oid> {
    thread_local!(static OWNER: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) });
    if let Some(oid) = OWNER.with(|o| o.get()) {
        return Ok(oid);
    }
    let oid = super::query_value::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = 'payment_owner'",
        &[],
    )?
    .ok_or_else(|| PaymentError::Internal("role payment_owner does not exist".into()))?;
    OWNER.with(|o| o.set(Some(oid)));
    Ok(oid)
}

/// Is `role` a superuser?
pub fn is_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup.
    unsafe { pg_sys::superuser_arg(role) }
}
