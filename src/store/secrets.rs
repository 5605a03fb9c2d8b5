//! The secrets table: Stripe keys and webhook signing secrets.
//!
//! Only `payment_owner` can read it; nothing here ever formats a secret into a message.

use crate::error::{PaymentError, Result};
use crate::store::{self, cache, plan};
use pgrx::prelude::*;

const SELECT_WEBHOOK_SECRETS: &str =
    "SELECT value FROM payment.secrets WHERE kind = 'webhook_secret' ORDER BY created_at DESC";

/// Every webhook secret currently valid, from this backend's copy (see store::cache).
pub fn webhook_secrets() -> Result<Vec<String>> {
    check_configured(cache::webhook_secrets(load_webhook_secrets)?)
}

fn load_webhook_secrets() -> Result<Vec<String>> {
    Spi::connect(|client| -> Result<Vec<String>> {
        let stmt = plan(client, SELECT_WEBHOOK_SECRETS, &[])?;
        let mut out = Vec::with_capacity(2);
        for row in client.select(stmt, None, &[])? {
            if let Some(value) = row.get::<String>(1)? {
                out.push(value);
            }
        }
        Ok(out)
    })
}

fn check_configured(secrets: Vec<String>) -> Result<Vec<String>> {
    if secrets.is_empty() {
        return Err(PaymentError::NotConfigured {
            message: "no webhook secret is configured, so no event can be verified".into(),
            hint: "Run payment.configure(secret_key, publishable_key, webhook_secret) or \
                   payment.add_webhook_secret('whsec_...'). Secrets are not part of pg_dump: \
                   after a restore, configure again."
                .into(),
        });
    }
    Ok(secrets)
}

pub fn get(kind: &'static str) -> Result<Option<String>> {
    store::query_value::<String>(
        "SELECT value FROM payment.secrets WHERE kind = $1 ORDER BY created_at DESC LIMIT 1",
        &[kind.into()],
    )
}

pub fn replace(kind: &'static str, value: &str, livemode: bool) -> Result<()> {
    Spi::connect_mut(|client| -> Result<()> {
        client.update(
            "DELETE FROM payment.secrets WHERE kind = $1",
            None,
            &[kind.into()],
        )?;
        client.update(
            "INSERT INTO payment.secrets (kind, value, livemode) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            None,
            &[kind.into(), value.into(), livemode.into()],
        )?;
        Ok(())
    })
}

pub fn add(kind: &'static str, value: &str, livemode: bool) -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO payment.secrets (kind, value, livemode) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        &[kind.into(), value.into(), livemode.into()],
    )?;
    Ok(())
}

/// Returns whether the secret was there.
pub fn remove(kind: &'static str, value: &str) -> Result<bool> {
    let removed = Spi::connect_mut(|client| -> Result<usize> {
        Ok(client
            .update(
                "DELETE FROM payment.secrets WHERE kind = $1 AND value = $2",
                None,
                &[kind.into(), value.into()],
            )?
            .len())
    })?;
    Ok(removed > 0)
}

pub fn clear(kind: &'static str) -> Result<()> {
    Spi::run_with_args(
        "DELETE FROM payment.secrets WHERE kind = $1",
        &[kind.into()],
    )?;
    Ok(())
}
