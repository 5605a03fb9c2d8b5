//! The SQL-facing functions: thin wrappers that check arguments, call the domain and turn
//! its errors into Postgres errors. All live in the schema `payment`.

pub mod callbacks;
pub mod config;
pub mod health;
pub mod link_guards;
pub mod order_link;
pub mod payments;
pub mod refresh;
pub mod refunds;
mod stripe_call;
pub mod subscriptions;
pub mod webhooks;

use crate::error::{OrRaise, Result};
use crate::store::identity;
use crate::store::schema_version::require_current;

/// The frame of an entry point: the schema must be of this library's version, and the work
/// runs as `payment_owner` (see store::identity). Errors are raised inside the frame.
pub(crate) fn entry<R>(f: impl FnOnce() -> Result<R>) -> R {
    identity::as_payment_owner(|| {
        require_current()?;
        f()
    })
    .or_raise()
}

/// `entry` for the functions that take a key: a failing call's statement (which may hold
/// the key as a literal) is kept out of the server log.
pub(crate) fn entry_with_key<R>(f: impl FnOnce() -> Result<R>) -> R {
    identity::as_payment_owner_quietly(|| {
        require_current()?;
        f()
    })
    .or_raise()
}
