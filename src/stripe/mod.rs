//! A blocking client for Stripe's v1 API, made for a Postgres backend: one
//! agent per backend with connections reused, every POST idempotent, retries
//! where Stripe's own libraries retry, every attempt reported for the
//! `api_requests` table, and a query cancel honoured within ~100 ms even while
//! a request is in flight. No pgrx here: Postgres comes in through the two
//! hooks the caller lends each call (`Hooks`).
//!
//! ```ignore
//! let client = stripe::Client::new(config); // once per backend
//! let key = stripe::idempotency_key(&installation, "payment", &[&order_ref, "9999", "usd"], 0);
//! let pi = client.create_payment_intent(9999, "usd", &metadata, &key, stripe::Hooks {
//!     check_interrupts: &|| if cancel_pending() { Err(stripe::Interrupted) } else { Ok(()) },
//!     on_attempt: &mut |log| record(log),
//! })?;
//! ```

mod calls;
mod client;
mod error;
mod form;
mod idempotency;
mod retry;
mod transport;

#[cfg(test)]
mod http_tests;

pub use calls::check_id;
pub use client::{Client, Hooks, Method, RequestLog};
pub use error::{scrub_secrets, ErrorClass, Interrupted, StripeError};
pub use form::{Form, Param};
pub use idempotency::idempotency_key;

use std::fmt;

/// Where and how to call Stripe. Built from the GUCs and the stored secret.
#[derive(Clone)]
pub struct Config {
    /// `https://api.stripe.com` (tests point it at a local server).
    pub api_base: String,
    /// Sent as `Stripe-Version` when not empty.
    pub api_version: String,
    pub secret_key: String,
    /// Bound on one attempt, from DNS lookup to the last byte of the answer.
    pub timeout_ms: u64,
    /// Retries after the first attempt, as in Stripe's libraries.
    pub max_network_retries: u32,
}

/// Hand-written so the secret key never reaches a log line through `{:?}`.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("api_base", &self.api_base)
            .field("api_version", &self.api_version)
            .field("secret_key", &"[redacted]")
            .field("timeout_ms", &self.timeout_ms)
            .field("max_network_retries", &self.max_network_retries)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_debug_hides_the_secret_key() {
        let config = Config {
            api_base: "https://api.stripe.com".into(),
            api_version: "2024-06-20".into(),
            secret_key: "sk_test_4eC39HqLyjWDarjtT1zdp7dc".into(),
            timeout_ms: 10_000,
            max_network_retries: 2,
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("4eC39"), "{shown}");
        assert!(shown.contains("[redacted]"));
    }
}
