//! The secrets table: Stripe keys and webhook signing secrets.
//!
//! Only `payment_owner` can read it; nothing here ever formats a secret into a message.

use super::Statement;
use crate::error::{PaymentError, Result};
use crate::store::{self, cache, plan};
use pgrx::prelude::*;

/// The webhook secrets of the configured secret key's mode (every secret carries the mode
/// of the key it was configured with), and that mode.
static SELECT_WEBHOOK_SECRETS: Statement = Statement::new(
    "\
    WITH key AS (SELECT livemode FROM payment.secrets WHERE kind = 'secret_key' \
                  ORDER BY created_at DESC LIMIT 1) \
    SELECT s.value, s.livemode FROM payment.secrets s \
     WHERE s.kind = 'webhook_secret' AND s.livemode IS NOT DISTINCT FROM \
           COALESCE((SELECT livemode FROM key), s.livemode) \
     ORDER BY s.created_at DESC",
    &[],
);

/// The secrets that verify a webhook, and the mode (live or test) of the events they may
/// verify.
#[derive(Debug, Clone)]
pub struct WebhookSecrets {
    pub secrets: Vec<String>,
    pub livemode: bool,
}

/// Every webhook secret currently valid, from this backend's copy (see store::cache).
pub fn webhook_secrets() -> Result<WebhookSecrets> {
    check_configured(cache::webhook_secrets(load_webhook_secrets)?)
}

fn load_webhook_secrets() -> Result<WebhookSecrets> {
    Spi::connect(|client| -> Result<WebhookSecrets> {
        let stmt = plan(client, &SELECT_WEBHOOK_SECRETS)?;
        let mut out = WebhookSecrets {
            secrets: Vec::with_capacity(2),
            livemode: false,
        };
        for row in client.select(stmt, None, &[])? {
            if let (Some(value), Some(livemode)) = (row.get::<String>(1)?, row.get::<bool>(2)?) {
                out.secrets.push(value);
                out.livemode = livemode;
            }
        }
        Ok(out)
    })
}

fn check_configured(secrets: WebhookSecrets) -> Result<WebhookSecrets> {
    if secrets.secrets.is_empty() {
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

/// The mode of the configured secret key (true: live), if one is configured.
pub fn secret_key_mode() -> Result<Option<bool>> {
    store::query_value::<bool>(
        "SELECT livemode FROM payment.secrets WHERE kind = 'secret_key' ORDER BY created_at DESC LIMIT 1",
        &[],
    )
}

/// Drop the webhook secrets of the other mode than `livemode` (a key of a new mode was
/// configured: the old endpoint's secrets cannot verify its events).
pub fn drop_webhook_secrets_not_of(livemode: bool) -> Result<()> {
    Spi::run_with_args(
        "DELETE FROM payment.secrets WHERE kind = 'webhook_secret' AND livemode <> $1",
        &[livemode.into()],
    )?;
    Ok(())
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
