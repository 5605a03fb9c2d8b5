//! One Stripe call from SQL: the backend's client, the request log, and interrupts.
//!
//! The client (and its connection pool) lives as long as the backend; it is rebuilt only
//! when the API base, version or secret key change. Every attempt, retries included, becomes
//! a row of `payment.api_requests` in the caller's transaction. A query cancel or statement
//! timeout ends a call in flight within about 100 ms.

use crate::error::{PaymentError, Result};
use crate::gucs;
use crate::store::Statement;
use crate::store::{self, secrets, TEXT};
use crate::stripe::{self, Client, Config, Hooks, Interrupted, RequestLog, StripeError};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::RefCell;

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
}

pub struct Keys {
    pub secret_key: String,
    pub livemode: bool,
}

pub fn keys() -> Result<Keys> {
    let secret_key = secrets::get("secret_key")?.ok_or_else(|| PaymentError::NotConfigured {
        message: "no Stripe secret key is configured".into(),
        hint:
            "Run payment.configure(secret_key, publishable_key, webhook_secret) as payment_admin. \
               Keys are not part of pg_dump: after a restore, configure again."
                .into(),
    })?;
    let livemode = secret_key.starts_with("sk_live_") || secret_key.starts_with("rk_live_");
    Ok(Keys {
        secret_key,
        livemode,
    })
}

static LOG_REQUEST: Statement = Statement::new("\
    INSERT INTO payment.api_requests (method, path, idempotency_key, http_status, stripe_request_id, \
                                      duration_ms, error_type, error_code) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    &[TEXT, TEXT, TEXT, store::INT4, TEXT, store::INT4, TEXT, TEXT],
);

fn log_attempt(attempt: &RequestLog) {
    let http_status = attempt.http_status.map(i32::from);
    let duration_ms = i32::try_from(attempt.duration_ms).unwrap_or(i32::MAX);
    let result = Spi::connect_mut(|client| -> Result<()> {
        let stmt = store::plan(client, &LOG_REQUEST)?;
        client.update(
            stmt,
            None,
            &[
                attempt.method.into(),
                attempt.path.as_str().into(),
                attempt.idempotency_key.as_deref().into(),
                http_status.into(),
                attempt.stripe_request_id.as_deref().into(),
                duration_ms.into(),
                attempt.error_type.as_deref().into(),
                attempt.error_code.as_deref().into(),
            ],
        )?;
        Ok(())
    });
    if let Err(e) = result {
        e.raise();
    }
    // The table row goes if the transaction rolls back; this line stays in the server log.
    if attempt.error_type.is_some() {
        pgrx::log!(
            "pg_payment: Stripe {} {} failed: http_status={:?} error_type={:?} error_code={:?} request_id={:?} idempotency_key={:?}",
            attempt.method,
            attempt.path,
            attempt.http_status,
            attempt.error_type,
            attempt.error_code,
            attempt.stripe_request_id,
            attempt.idempotency_key
        );
    }
}

/// A blocking read does not see Postgres interrupts by itself: the client calls this while
/// it waits, and a pending cancel ends the call.
fn check_interrupts() -> std::result::Result<(), Interrupted> {
    // SAFETY: plain reads of volatile flags set by signal handlers.
    // Only a cancel (query cancel, statement timeout) or a termination ends the call; other
    // interrupts (barriers, memory-context logging) wait for it to finish.
    let pending = unsafe { pg_sys::QueryCancelPending != 0 || pg_sys::ProcDiePending != 0 };
    if pending && unsafe { pg_sys::InterruptHoldoffCount } == 0 {
        Err(Interrupted)
    } else {
        Ok(())
    }
}

/// Run `call` with this backend's client, configured from the GUCs and the stored key.
pub fn call<R>(
    call: impl FnOnce(&Client, Hooks<'_>) -> std::result::Result<R, StripeError>,
) -> Result<R> {
    let keys = keys()?;
    let config = Config {
        api_base: gucs::string_setting(&gucs::STRIPE_API_BASE).unwrap_or_default(),
        api_version: gucs::string_setting(&gucs::STRIPE_API_VERSION).unwrap_or_default(),
        secret_key: keys.secret_key,
        timeout_ms: gucs::HTTP_TIMEOUT_MS.get().max(1) as u64,
        max_network_retries: gucs::MAX_NETWORK_RETRIES.get().max(0) as u32,
    };
    let result = CLIENT.with(|cell| {
        let mut slot = cell.borrow_mut();
        let reusable = slot.as_ref().is_some_and(|c| {
            let current = c.config();
            current.api_base == config.api_base
                && current.api_version == config.api_version
                && current.secret_key == config.secret_key
        });
        if reusable {
            if let Some(client) = slot.as_mut() {
                client.set_limits(config.timeout_ms, config.max_network_retries);
            }
        } else {
            *slot = Some(Client::new(config));
        }
        let client = slot.as_ref().expect("client was just set");
        let mut on_attempt = log_attempt;
        call(
            client,
            Hooks {
                check_interrupts: &check_interrupts,
                on_attempt: &mut on_attempt,
            },
        )
    });
    match result {
        Ok(value) => Ok(value),
        Err(StripeError::Interrupted) => {
            // Raise the cancel (or termination) itself, with its own SQLSTATE.
            pgrx::check_for_interrupts!();
            Err(StripeError::Interrupted.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The metadata pg_payment puts on everything it creates at Stripe.
pub fn metadata<'a>(
    installation: &'a str,
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut m = vec![(crate::metadata::INSTALLATION, installation)];
    m.extend_from_slice(extra);
    m
}

pub fn idempotency_key(installation: &str, kind: &str, parts: &[&str], attempt: i64) -> String {
    stripe::idempotency_key(installation, kind, parts, attempt.max(0) as u64)
}
