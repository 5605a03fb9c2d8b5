//! Keys and webhook secrets. Nothing here ever puts a key's text into a message.

use super::{entry, entry_with_key};
use crate::error::{PaymentError, Result};
use crate::store::secrets;
use pgrx::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Test,
    Live,
}

/// `sk_`/`rk_` keys and `pk_` keys carry their mode in their prefix.
fn key_mode(key: &str, prefixes: &[&str], what: &str) -> Result<Mode> {
    for prefix in prefixes {
        if let Some(rest) = key.strip_prefix(prefix) {
            let mode = if rest.starts_with("test_") {
                Mode::Test
            } else if rest.starts_with("live_") {
                Mode::Live
            } else {
                break;
            };
            let body = &rest[5..];
            if body.len() < 8 || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                break;
            }
            return Ok(mode);
        }
    }
    let expected: Vec<String> = prefixes
        .iter()
        .flat_map(|p| [format!("{p}test_"), format!("{p}live_")])
        .collect();
    Err(PaymentError::invalid_with_hint(
        format!(
            "{what} does not look like a Stripe key: it must start with {}",
            expected.join(", ")
        ),
        "Copy the key from the Stripe dashboard (Developers > API keys).",
    ))
}

fn check_webhook_secret(secret: &str) -> Result<()> {
    let valid = secret.strip_prefix("whsec_").is_some_and(|rest| {
        rest.len() >= 8 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    });
    if valid {
        Ok(())
    } else {
        Err(PaymentError::invalid_with_hint(
            "webhook_secret does not look like a Stripe signing secret: it must start with whsec_",
            "Copy the endpoint's signing secret from the Stripe dashboard, or from `stripe listen`.",
        ))
    }
}

fn configure_keys(
    secret_key: Option<&str>,
    publishable_key: Option<&str>,
    webhook_secret: Option<&str>,
) -> Result<()> {
    let secret_key = secret_key.ok_or(PaymentError::NullArgument("secret_key"))?;
    let mode = key_mode(secret_key, &["sk_", "rk_"], "secret_key")?;
    if let Some(publishable) = publishable_key {
        if key_mode(publishable, &["pk_"], "publishable_key")? != mode {
            return Err(PaymentError::invalid_with_hint(
                "secret_key and publishable_key are of different modes (one test, one live)",
                "Use both keys from the same mode of the Stripe dashboard.",
            ));
        }
    }
    if let Some(webhook_secret) = webhook_secret {
        check_webhook_secret(webhook_secret)?;
    }
    let live = mode == Mode::Live;
    // The old mode's endpoint secrets cannot verify the new mode's events.
    secrets::drop_webhook_secrets_not_of(live)?;
    secrets::replace("secret_key", secret_key, live)?;
    match publishable_key {
        Some(publishable) => secrets::replace("publishable_key", publishable, live)?,
        None => secrets::clear("publishable_key")?,
    }
    if let Some(webhook_secret) = webhook_secret {
        secrets::replace("webhook_secret", webhook_secret, live)?;
    }
    Ok(())
}

/// Set the Stripe keys. A given webhook secret replaces all others; to roll one, use
/// add_webhook_secret and remove_webhook_secret. Pass keys as bind parameters.
#[pg_extern(schema = "payment", volatile)]
fn configure(
    secret_key: Option<&str>,
    publishable_key: default!(Option<&str>, "NULL"),
    webhook_secret: default!(Option<&str>, "NULL"),
) {
    entry_with_key(|| configure_keys(secret_key, publishable_key, webhook_secret))
}

/// Add a webhook signing secret; every configured secret is accepted while one is rolled.
#[pg_extern(schema = "payment", volatile)]
fn add_webhook_secret(secret: Option<&str>) {
    entry_with_key(|| {
        let secret = secret.ok_or(PaymentError::NullArgument("secret"))?;
        check_webhook_secret(secret)?;
        // A webhook secret belongs to the mode of the configured secret key.
        let live = secrets::secret_key_mode()?.ok_or_else(|| PaymentError::NotConfigured {
            message: "no Stripe secret key is configured, so the webhook secret has no mode".into(),
            hint: "Run payment.configure(secret_key, publishable_key, webhook_secret) first."
                .into(),
        })?;
        secrets::add("webhook_secret", secret, live)
    })
}

#[pg_extern(schema = "payment", volatile)]
fn remove_webhook_secret(secret: Option<&str>) {
    entry_with_key(|| {
        let secret = secret.ok_or(PaymentError::NullArgument("secret"))?;
        if secrets::remove("webhook_secret", secret)? {
            Ok(())
        } else {
            Err(PaymentError::NotFound(
                "that webhook secret is not configured".into(),
            ))
        }
    })
}

/// The publishable key, for Stripe.js in a frontend. NULL until configured.
#[pg_extern(schema = "payment", stable)]
fn publishable_key() -> Option<String> {
    entry(|| secrets::get("publishable_key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_prefixes_give_the_mode() {
        assert_eq!(
            key_mode("sk_test_abcdefgh123", &["sk_", "rk_"], "k"),
            Ok(Mode::Test)
        );
        assert_eq!(
            key_mode("rk_live_abcdefgh123", &["sk_", "rk_"], "k"),
            Ok(Mode::Live)
        );
        assert!(key_mode("pk_test_abcdefgh123", &["sk_", "rk_"], "k").is_err());
        assert!(key_mode("sk_prod_abcdefgh123", &["sk_", "rk_"], "k").is_err());
        assert!(key_mode("sk_test_", &["sk_", "rk_"], "k").is_err());
    }

    #[test]
    fn errors_never_echo_the_key() {
        let err = key_mode("sk_bogus_SECRETVALUE", &["sk_", "rk_"], "secret_key").unwrap_err();
        assert!(!err.message().contains("SECRETVALUE"));
        let err = check_webhook_secret("whsec_x SECRETVALUE").unwrap_err();
        assert!(!err.message().contains("SECRETVALUE"));
    }
}
